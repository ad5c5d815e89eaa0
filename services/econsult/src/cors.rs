//! Cross-origin calls from browsers (CORS) for an allow-list of origins. Without one the
//! server answers same-origin pages only: a browser refuses to let another origin's page read
//! an answer that carries no `Access-Control-Allow-Origin`.
//!
//! A wildcard is refused at start-up: every call carries a patient's or clinician's bearer
//! token, and which pages may send those is a decision to write down origin by origin.

use anyhow::bail;
use futures::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Request headers a gRPC-Web client sends (answered in a preflight): the protocol's, the
/// trace's, and every header the server reads a caller's intent from (`econsult_runtime::auth`:
/// the purpose, the person a patient acts for, the person an EHR system acts for). A header
/// left out here is one a browser will not send cross-origin: a page could not act for a child
/// though the server allows it. A test checks the list against those constants.
const ALLOW_HEADERS: &str = "authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout, \
     grpc-accept-encoding, grpc-encoding, connect-protocol-version, connect-timeout-ms, \
     traceparent, tracestate, x-request-id, x-purpose, x-on-behalf-of, x-acting-name, \
     x-acting-name-bin, x-acting-hpr";

/// Response headers a page may read: the gRPC status and trailers-in-headers of gRPC-Web.
const EXPOSE_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, \
     grpc-encoding, grpc-accept-encoding, x-request-id, content-type";

/// How long a browser may cache a preflight answer (seconds).
const MAX_AGE: &str = "600";

/// Checks and normalises the allowed origins (`scheme://host[:port]`, http or https).
pub fn parse_origins(origins: &[String]) -> anyhow::Result<Vec<HeaderValue>> {
    let mut out = Vec::new();
    for raw in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        if raw.contains('*') {
            bail!(
                "CORS origin {raw:?} refused: every call carries a bearer token, so a wildcard \
                 would let any web page use a patient's session; list each origin \
                 (scheme://host[:port])"
            );
        }
        let lower = raw.to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            bail!("CORS origin {raw:?} is not scheme://host[:port]");
        };
        if !matches!(scheme, "http" | "https")
            || rest.is_empty()
            || rest.contains(['/', '?', '#', '@', ' '])
        {
            bail!("CORS origin {raw:?} is not http(s)://host[:port] (no path, no trailing slash)");
        }
        out.push(HeaderValue::from_str(&lower)?);
    }
    Ok(out)
}

/// The CORS layer over the server's routes.
#[derive(Clone)]
pub struct CorsLayer {
    origins: Arc<[HeaderValue]>,
}

impl CorsLayer {
    /// Allows `origins` (see [`parse_origins`]).
    pub fn new(origins: Vec<HeaderValue>) -> Self {
        Self {
            origins: origins.into(),
        }
    }
}

impl<S> tower::Layer<S> for CorsLayer {
    type Service = Cors<S>;
    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            origins: self.origins.clone(),
        }
    }
}

/// See [`CorsLayer`].
#[derive(Clone)]
pub struct Cors<S> {
    inner: S,
    origins: Arc<[HeaderValue]>,
}

impl<S, B, R> tower::Service<Request<B>> for Cors<S>
where
    S: tower::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let allowed = origin
            .as_ref()
            .filter(|o| {
                self.origins
                    .iter()
                    .any(|a| a.as_bytes().eq_ignore_ascii_case(o.as_bytes()))
            })
            .cloned();
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight && origin.is_some() {
            let mut resp = Response::new(R::default());
            *resp.status_mut() = if allowed.is_some() {
                StatusCode::NO_CONTENT
            } else {
                // Not on the list: no Allow-Origin, so the browser refuses the call.
                StatusCode::FORBIDDEN
            };
            let h = resp.headers_mut();
            h.insert(header::VARY, HeaderValue::from_static("origin"));
            if let Some(origin) = allowed {
                {
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        HeaderValue::from_static("POST, GET, OPTIONS"),
                    );
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        HeaderValue::from_static(ALLOW_HEADERS),
                    );
                    h.insert(
                        header::ACCESS_CONTROL_MAX_AGE,
                        HeaderValue::from_static(MAX_AGE),
                    );
                }
            }
            return Box::pin(async move { Ok(resp) });
        }
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            if origin.is_some() {
                let h = resp.headers_mut();
                h.append(header::VARY, HeaderValue::from_static("origin"));
                if let Some(origin) = allowed {
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                    h.insert(
                        header::ACCESS_CONTROL_EXPOSE_HEADERS,
                        HeaderValue::from_static(EXPOSE_HEADERS),
                    );
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ALLOW_HEADERS, parse_origins};
    use econsult_runtime::auth;

    /// Every header the server reads a caller's intent from is one a browser may send: a
    /// preflight that leaves one out makes the page's call fail before it reaches the server.
    #[test]
    fn a_preflight_allows_every_header_the_server_reads() {
        let allowed: Vec<&str> = ALLOW_HEADERS.split(',').map(str::trim).collect();
        for header in [
            auth::PURPOSE_HEADER,
            auth::ON_BEHALF_OF_HEADER,
            auth::ACTING_NAME_HEADER,
            auth::ACTING_NAME_BIN_HEADER,
            auth::ACTING_HPR_HEADER,
            "authorization",
            "x-grpc-web",
            "traceparent",
        ] {
            assert!(allowed.contains(&header), "{header} not in {ALLOW_HEADERS}");
        }
    }

    #[test]
    fn a_wildcard_or_a_malformed_origin_is_refused() {
        for bad in [
            "*",
            "https://*.example.no",
            "example.no",
            "ftp://x",
            "https://x/",
            "https://x/app",
        ] {
            assert!(parse_origins(&[bad.to_string()]).is_err(), "{bad}");
        }
        let ok = parse_origins(&[
            "HTTPS://Portal.Example.no".into(),
            "http://127.0.0.1:8080".into(),
        ])
        .expect("valid");
        assert_eq!(ok[0], "https://portal.example.no");
        assert_eq!(ok[1], "http://127.0.0.1:8080");
    }
}
