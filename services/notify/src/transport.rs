//! The channels' transports: e-mail over SMTP (lettre; STARTTLS, implicit TLS or, only for a
//! loopback relay, plain), SMS through an HTTP gateway (a JSON POST with an HMAC-SHA256-signed
//! body), and the log. A transport tells a temporary failure (5xx, a timeout, a refused
//! connection: retried) from a permanent one (4xx: failed with its reason, no retry).

use async_trait::async_trait;
use hmac::{Hmac, Mac as _};
use lettre::AsyncTransport as _;
use sha2::Sha256;
use std::time::Duration;

/// One message to hand over.
#[derive(Clone)]
pub struct Outgoing {
    /// The message id: the gateway's idempotency key, the e-mail's Message-ID.
    pub message_id: String,
    /// Address: an E.164 number or an e-mail address (empty for the log).
    pub to: String,
    /// E-mail subject.
    pub subject: String,
    /// The text.
    pub body: String,
    /// `booked`, `reminder`, … (the log says it).
    pub kind: &'static str,
}

/// Why a hand-over failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try again later: a 5xx, a timeout, no connection.
    Temporary(String),
    /// Will not work however often tried: a 4xx with its reason.
    Permanent(String),
}

/// A way to hand a message over.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Hands `m` over.
    async fn send(&self, m: &Outgoing) -> Result<(), SendError>;
}

/// Writes the message to the log (target `econsult::notify`): the embedded default, and where
/// messages to patients without contact details go. The address is never logged.
pub struct LogTransport;

#[async_trait]
impl Transport for LogTransport {
    async fn send(&self, m: &Outgoing) -> Result<(), SendError> {
        tracing::info!(
            target: "econsult::notify",
            message_id = %m.message_id,
            kind = m.kind,
            text = %m.body,
            "notification (log channel)"
        );
        Ok(())
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (required), e.g. port 587.
    StartTls,
    /// TLS from the first byte (SMTPS), e.g. port 465.
    Tls,
    /// No encryption: only to a relay on a loopback address.
    None,
}

/// SMTP settings.
#[derive(Clone)]
pub struct SmtpConfig {
    /// Server host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Security.
    pub security: SmtpSecurity,
    /// User name and password (AUTH PLAIN/LOGIN after TLS).
    pub credentials: Option<(String, String)>,
    /// The From address.
    pub from: String,
    /// A PEM CA certificate to trust besides the web PKI roots (a private relay's CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Connection and command timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("from", &self.from)
            .finish()
    }
}

/// E-mail over SMTP.
pub struct SmtpTransport {
    mailer: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl SmtpTransport {
    /// Builds the client (connections are made per send, pooled).
    pub fn new(c: &SmtpConfig) -> anyhow::Result<Self> {
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        let tls = |c: &SmtpConfig| -> anyhow::Result<TlsParameters> {
            let mut b = TlsParameters::builder(c.host.clone());
            if let Some(pem) = &c.ca_pem {
                b = b.add_root_certificate(Certificate::from_pem(pem)?);
            }
            Ok(b.build_rustls()?)
        };
        let tls = match c.security {
            SmtpSecurity::StartTls => Tls::Required(tls(c)?),
            SmtpSecurity::Tls => Tls::Wrapper(tls(c)?),
            SmtpSecurity::None => {
                let loopback = c.host == "localhost"
                    || c.host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                anyhow::ensure!(
                    loopback,
                    "SMTP without TLS is only allowed to a relay on a loopback address, not {}",
                    c.host
                );
                Tls::None
            }
        };
        let mut b =
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(c.host.clone())
                .port(c.port)
                .tls(tls)
                .timeout(Some(c.timeout));
        if let Some((user, password)) = &c.credentials {
            b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                user.clone(),
                password.clone(),
            ));
        }
        Ok(Self {
            mailer: b.build(),
            from: c.from.parse()?,
        })
    }
}

#[async_trait]
impl Transport for SmtpTransport {
    async fn send(&self, m: &Outgoing) -> Result<(), SendError> {
        let to: lettre::message::Mailbox =
            m.to.parse()
                .map_err(|e| SendError::Permanent(format!("bad address: {e}")))?;
        let domain = self.from.email.domain().to_owned();
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone())
            .message_id(Some(format!("<{}@{domain}>", m.message_id)))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(m.body.clone())
            .map_err(|e| SendError::Permanent(format!("message: {e}")))?;
        match self.mailer.send(email).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("smtp: {e}"))),
            Err(e) => Err(SendError::Temporary(format!("smtp: {e}"))),
        }
    }
}

/// SMS gateway settings.
#[derive(Clone)]
pub struct SmsConfig {
    /// The gateway's URL (https; http only to a loopback host).
    pub url: String,
    /// Secret of the HMAC-SHA256 signature of the body.
    pub secret: String,
    /// Sender name or number shown to the patient.
    pub sender: String,
    /// Request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for SmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsConfig")
            .field("url", &self.url)
            .field("sender", &self.sender)
            .finish()
    }
}

/// Header carrying the signature: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-econsult-signature";
/// Header carrying the message id: a gateway that has seen it may answer 2xx without sending.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The signature header's value for `body`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// SMS through an HTTP gateway: `POST <url>` with
/// `{"message_id","to","from","text","sent_at_ms"}` as JSON, the headers
/// [`SIGNATURE_HEADER`] and [`IDEMPOTENCY_HEADER`]. 2xx: sent; 4xx: failed with the
/// answer's first 200 characters as the reason; anything else or a timeout: retried.
pub struct SmsTransport {
    cfg: SmsConfig,
    agent: ureq::Agent,
}

impl SmsTransport {
    /// Checks the URL (https, or http to a loopback host) and builds the client.
    pub fn new(cfg: &SmsConfig) -> anyhow::Result<Self> {
        let rest = cfg.url.strip_prefix("http://");
        if let Some(rest) = rest {
            let host = rest.split(['/', '?']).next().unwrap_or_default();
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(
                loopback,
                "the SMS gateway URL must be https (plain http only to a loopback host)"
            );
        } else {
            anyhow::ensure!(
                cfg.url.starts_with("https://"),
                "the SMS gateway URL must be https (plain http only to a loopback host)"
            );
        }
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(cfg.timeout))
                .http_status_as_error(false)
                .build(),
        );
        Ok(Self {
            cfg: cfg.clone(),
            agent,
        })
    }
}

#[async_trait]
impl Transport for SmsTransport {
    async fn send(&self, m: &Outgoing) -> Result<(), SendError> {
        let body = serde_json::json!({
            "message_id": m.message_id,
            "to": m.to,
            "from": self.cfg.sender,
            "text": m.body,
            "sent_at_ms": chrono::Utc::now().timestamp_millis(),
        })
        .to_string();
        let signature = sign(&self.cfg.secret, body.as_bytes());
        let (agent, url, id) = (
            self.agent.clone(),
            self.cfg.url.clone(),
            m.message_id.clone(),
        );
        let answer = tokio::task::spawn_blocking(move || {
            let mut r = agent
                .post(&url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header(IDEMPOTENCY_HEADER, &id)
                .send(body.as_bytes())?;
            let status = r.status().as_u16();
            let text = r
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            Ok::<_, ureq::Error>((status, text))
        })
        .await
        .map_err(|e| SendError::Temporary(format!("sms: {e}")))?;
        match answer {
            Ok((s, _)) if (200..300).contains(&s) => Ok(()),
            Ok((s, text)) if (400..500).contains(&s) && s != 408 && s != 429 => {
                let reason: String = text.chars().take(200).collect();
                Err(SendError::Permanent(format!(
                    "gateway answered {s}: {}",
                    reason.trim()
                )))
            }
            Ok((s, _)) => Err(SendError::Temporary(format!("gateway answered {s}"))),
            Err(e) => Err(SendError::Temporary(format!("sms gateway: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        let cfg = |url: &str| SmsConfig {
            url: url.into(),
            secret: "s".into(),
            sender: "Legekontoret".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(SmsTransport::new(&cfg("http://127.0.0.1:8080/sms")).is_ok());
        assert!(SmsTransport::new(&cfg("http://localhost/sms")).is_ok());
        assert!(SmsTransport::new(&cfg("https://sms.example.no/send")).is_ok());
        assert!(SmsTransport::new(&cfg("http://sms.example.no/send")).is_err());
        assert!(SmsTransport::new(&cfg("ftp://x")).is_err());
    }
}
