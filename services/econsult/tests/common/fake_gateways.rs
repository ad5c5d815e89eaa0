//! Loopback servers the notify tests start: an SMTP server speaking real SMTP (EHLO, STARTTLS
//! when given a certificate, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that keeps
//! what it received, a test CA to give it a certificate, and an SMS
//! gateway speaking HTTP/1.1 that keeps each request and answers from a script.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

/// A mail as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// RCPT TO addresses.
    pub to: Vec<String>,
    /// The DATA (headers and body, dot-unstuffed).
    pub data: String,
    /// Whether it came over a connection upgraded with STARTTLS.
    pub tls: bool,
}

/// The SMTP server.
#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    /// Decoded AUTH PLAIN credentials seen ("\0user\0password").
    pub auths: Arc<Mutex<Vec<String>>>,
    /// Offers STARTTLS with this server configuration (`None`: plain only).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A test CA and a certificate for `localhost` / 127.0.0.1 it signed, made with rcgen.
pub struct TestPki {
    /// The CA certificate (PEM): what a client is told to trust.
    pub ca_pem: String,
    /// The server's TLS configuration (its certificate and key).
    pub server: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl TestPki {
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use tokio_rustls::rustls;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "econsult test CA");
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
            )
            .expect("server config");
        TestPki {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

impl SmtpServer {
    /// A plain SMTP server (no STARTTLS).
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// An SMTP server that offers STARTTLS with `tls` (its certificate and key).
    pub async fn start_tls(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let port = listener.local_addr().expect("addr").port();
        let server = SmtpServer {
            port,
            mails: Arc::default(),
            auths: Arc::default(),
            tls,
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    // STARTTLS: the same session goes on over TLS (the client says EHLO again).
                    if let Ok(Some(plain)) = s.session(stream, false).await
                        && let Some(acceptor) = &s.tls
                        && let Ok(secure) = acceptor.accept(plain).await
                    {
                        let _ = s.session(secure, true).await;
                    }
                });
            }
        });
        server
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("mails").clone()
    }

    /// One SMTP session on `stream` (`tls`: already upgraded, no greeting). Returns the stream
    /// when the client asked for STARTTLS, to go on over TLS.
    async fn session<S>(&self, stream: S, tls: bool) -> std::io::Result<Option<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use base64::Engine as _;
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        if !tls {
            w.write_all(b"220 localhost ESMTP econsult-test\r\n")
                .await?;
        }
        let mut to = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Ok(None);
            }
            let cmd = line.trim_end().to_owned();
            let upper = cmd.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                if self.tls.is_some() && !tls {
                    b"250-localhost\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
                } else {
                    b"250-localhost\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
                }
            } else if upper == "STARTTLS" && self.tls.is_some() && !tls {
                w.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                w.flush().await?;
                return Ok(Some(r.into_inner().unsplit(w)));
            } else if let Some(b64) = cmd.get(11..).filter(|_| upper.starts_with("AUTH PLAIN ")) {
                let plain = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .unwrap_or_default();
                self.auths
                    .lock()
                    .expect("auths")
                    .push(String::from_utf8_lossy(&plain).into_owned());
                b"235 2.7.0 Authentication successful\r\n"
            } else if upper.starts_with("MAIL FROM") {
                to.clear();
                b"250 2.1.0 Ok\r\n"
            } else if upper.starts_with("RCPT TO") {
                let addr = cmd
                    .split_once(':')
                    .map(|(_, a)| {
                        a.trim()
                            .trim_start_matches('<')
                            .trim_end_matches('>')
                            .to_owned()
                    })
                    .unwrap_or_default();
                to.push(addr);
                b"250 2.1.5 Ok\r\n"
            } else if upper == "DATA" {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).await? == 0 {
                        return Ok(None);
                    }
                    if l == ".\r\n" {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                self.mails.lock().expect("mails").push(Mail {
                    to: std::mem::take(&mut to),
                    data,
                    tls,
                });
                b"250 2.0.0 Ok: queued\r\n"
            } else if upper == "QUIT" {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                w.flush().await?;
                return Ok(None);
            } else if upper == "RSET" || upper == "NOOP" {
                b"250 2.0.0 Ok\r\n"
            } else {
                b"502 5.5.2 Command not recognized\r\n"
            };
            w.write_all(reply).await?;
            w.flush().await?;
        }
    }
}

/// A request the gateway received.
#[derive(Debug, Clone)]
pub struct GatewayRequest {
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl GatewayRequest {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("json body")
    }
}

/// The SMS gateway.
#[derive(Clone)]
pub struct SmsGateway {
    pub url: String,
    pub requests: Arc<Mutex<Vec<GatewayRequest>>>,
    /// Answers to give, in order; 200 when empty.
    pub script: Arc<Mutex<VecDeque<(u16, &'static str)>>>,
}

impl SmsGateway {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let port = listener.local_addr().expect("addr").port();
        let gw = SmsGateway {
            url: format!("http://127.0.0.1:{port}/sms"),
            requests: Arc::default(),
            script: Arc::default(),
        };
        let g = gw.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let g = g.clone();
                tokio::spawn(async move {
                    let _ = g.connection(stream).await;
                });
            }
        });
        gw
    }

    pub fn answer(&self, status: u16, body: &'static str) {
        self.script
            .lock()
            .expect("script")
            .push_back((status, body));
    }

    pub fn requests(&self) -> Vec<GatewayRequest> {
        self.requests.lock().expect("requests").clone()
    }

    /// The texts of the SMS received for `to`.
    pub fn texts_to(&self, to: &str) -> Vec<String> {
        self.requests()
            .iter()
            .map(GatewayRequest::json)
            .filter(|j| j["to"] == to)
            .map(|j| j["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn connection(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        loop {
            let mut headers = BTreeMap::new();
            let mut request_line = String::new();
            if r.read_line(&mut request_line).await? == 0 {
                return Ok(());
            }
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                let l = l.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            r.read_exact(&mut body).await?;
            self.requests
                .lock()
                .expect("requests")
                .push(GatewayRequest {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            let (status, text) = self
                .script
                .lock()
                .expect("script")
                .pop_front()
                .unwrap_or((200, "{\"status\":\"queued\"}"));
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            w.write_all(answer.as_bytes()).await?;
        }
    }
}
