//! The reference web client (`web/`, built into `web/dist` and committed) served at `/` from
//! the binary, and, only while the server trusts its development key, `GET /dev/token` for the
//! client's development sign-in. Everything else goes on to the gRPC routes.

use bytes::Bytes;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use futures::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The built client: (path, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../../web/dist/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../web/dist/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/dist/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web/dist/app.css"),
    ),
];

/// Lifetime of a development token (seconds).
const DEV_TOKEN_TTL: i64 = 3600;

/// Serves the client; `dev_keys` (only when the server trusts its development key) enables
/// `/dev/token`.
#[derive(Clone)]
pub struct WebLayer {
    dev: Option<Arc<DevKeys>>,
}

impl WebLayer {
    /// See [`WebLayer`].
    pub fn new(dev_keys: Option<DevKeys>) -> Self {
        Self {
            dev: dev_keys.map(Arc::new),
        }
    }
}

impl<S> tower::Layer<S> for WebLayer {
    type Service = Web<S>;
    fn layer(&self, inner: S) -> Web<S> {
        Web {
            inner,
            dev: self.dev.clone(),
        }
    }
}

/// See [`WebLayer`].
#[derive(Clone)]
pub struct Web<S> {
    inner: S,
    dev: Option<Arc<DevKeys>>,
}

fn respond(status: StatusCode, content_type: &str, body: Bytes) -> Response<tonic::body::Body> {
    let mut resp = Response::new(tonic::body::Body::new(http_body_util::Full::new(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `role=patient[&nin=…]` or `role=clinician&hpr=…&org=…` to a token, as JSON.
fn dev_token(keys: &DevKeys, query: &str) -> Result<String, String> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let spec = match param("role").as_deref() {
        Some("patient") => {
            let nin = param("nin").ok_or("nin is required (econsult dev-nin prints one)")?;
            econsult_runtime::nin::NationalId::parse(&nin).map_err(|e| format!("nin: {e}"))?;
            TokenSpec::Patient {
                nin,
                acr: REQUIRED_ACR.to_owned(),
            }
        }
        Some("clinician") => TokenSpec::Clinician {
            hpr_number: param("hpr").ok_or("hpr is required")?,
            org_number: param("org").ok_or("org is required")?,
            scopes: [
                "econsult:booking.read",
                "econsult:booking.write",
                "econsult:consultation.read",
                "econsult:consultation.write",
                "econsult:stats.read",
            ]
            .map(String::from)
            .to_vec(),
        },
        _ => return Err("role must be patient or clinician".into()),
    };
    let mut claims = spec.claims(chrono::Utc::now().timestamp(), DEV_TOKEN_TTL);
    if let TokenSpec::Clinician { hpr_number, .. } = &spec {
        // The name the patient's access log shows (HelseID's `name` claim).
        claims.name = Some(format!("Dev-lege {hpr_number}"));
    }
    let token = keys.sign(&claims).map_err(|e| format!("mint: {e}"))?;
    Ok(serde_json::json!({ "token": token }).to_string())
}

impl<S> tower::Service<Request<tonic::body::Body>> for Web<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        if req.method() == Method::GET {
            let path = req.uri().path();
            if let Some((_, ct, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) {
                let resp = respond(StatusCode::OK, ct, Bytes::from_static(bytes));
                return Box::pin(async move { Ok(resp) });
            }
            if path == "/dev/token" {
                let resp = match &self.dev {
                    Some(keys) => match dev_token(keys, req.uri().query().unwrap_or("")) {
                        Ok(json) => respond(StatusCode::OK, "application/json", json.into()),
                        Err(e) => respond(StatusCode::BAD_REQUEST, "text/plain", e.into()),
                    },
                    None => respond(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        Bytes::from_static(
                            b"development tokens are only handed out by a server that trusts its development key",
                        ),
                    ),
                };
                return Box::pin(async move { Ok(resp) });
            }
        }
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        Box::pin(inner.call(req))
    }
}
