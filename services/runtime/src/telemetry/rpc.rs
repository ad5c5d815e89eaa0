//! The server side of every gRPC call: a SERVER span per the OpenTelemetry RPC conventions
//! that lasts until the response body's end (a stream's whole life), a child span of its wait
//! for the request, RED metrics and the request log line.

use super::{CallerKind, current_trace_id};
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::{KeyValue, global};
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The name of a numeric gRPC status code as the gRPC docs spell it (`UNAUTHENTICATED`).
fn status_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        "transport" => "TRANSPORT_ERROR",
        _ => "OTHER",
    }
}

struct RpcInstruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
}

/// Tower layer recording RED metrics, a SERVER span (continuing an incoming W3C `traceparent`)
/// and one log line (target `econsult::request`, level info) for every gRPC call. The line holds
/// the method, status, duration until response headers, caller kind and trace id, never the
/// caller's identity or the message.
///
/// The span is named `package.Service/Method`, carries `rpc.system`, `rpc.service`,
/// `rpc.method` and the integer `rpc.grpc.status_code` (from the trailers when the status comes
/// at the end of a stream), ends with the response body, and has status Error for the codes
/// that are the server's fault ([`server_fault`]).
#[derive(Clone)]
pub struct RpcMetricsLayer(Arc<RpcInstruments>);

impl Default for RpcMetricsLayer {
    fn default() -> Self {
        let meter = global::meter("econsult");
        Self(Arc::new(RpcInstruments {
            requests: meter
                .u64_counter("rpc_server_requests")
                .with_description("gRPC calls handled, by method and status code")
                .build(),
            duration: meter
                .f64_histogram("rpc_server_duration")
                .with_unit("s")
                .with_description(
                    "gRPC call duration until response headers, by method and status code",
                )
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .build(),
        }))
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            instruments: self.0.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    instruments: Arc<RpcInstruments>,
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The gRPC paths this server can answer: every method of the econsult protos' descriptor set,
/// health and both reflection versions.
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        use prost::Message as _;
        let mut known: std::collections::HashSet<String> = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        // The descriptor set is compiled into the binary; a decode failure would leave only
        // the fixed paths above labelled, which is safe.
        if let Ok(set) = prost_types::FileDescriptorSet::decode(econsult_proto::FILE_DESCRIPTOR_SET)
        {
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        known
    });

/// The metric and span label of a request path: the path of a method this server has, else
/// `other`, so unauthenticated callers inventing paths cannot grow the label set (3 000 made-up
/// `/econsult.…` paths once grew `/metrics` from 137 KB to 9.5 MB and pushed real series into
/// the SDK's overflow).
fn method_label(path: &str) -> String {
    if KNOWN_METHODS.contains(path) {
        path.to_owned()
    } else {
        "other".to_owned()
    }
}

/// Whether a status code is the server's fault, per the OpenTelemetry RPC conventions for
/// servers: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. The
/// others are the caller's (bad input, no permission, rate limited) and leave the span unset.
pub fn server_fault(code: i64) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for RpcMetricsService<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let method = method_label(req.uri().path());
        let caller = CallerKind::default();
        req.extensions_mut().insert(caller.clone());
        let parent =
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        let name = method.trim_start_matches('/');
        let (service, rpc_method) = name.split_once('/').unwrap_or((name, ""));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        let receiving = Receiving::new(&span);
        let req = req.map(|body| {
            tonic::body::Body::new(ReceivingBody {
                body,
                receiving: Some(receiving.clone()),
            })
        });
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let instruments = self.instruments.clone();
        let start = Instant::now();
        let body_span = span.clone();
        Box::pin(
            async move {
                let result = inner.call(req).await;
                receiving.end();
                // Trailers-only responses (errors) carry grpc-status in the headers; a normal
                // response carries it in the trailers, after a successful start: count it as 0
                // here (the span takes the trailers' code when they come).
                let headers_code = match &result {
                    Ok(res) => res
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    Err(_) => None,
                };
                let code = match (&result, &headers_code) {
                    (Err(_), _) => "transport".to_owned(),
                    (Ok(_), Some(c)) => c.clone(),
                    (Ok(_), None) => "0".to_owned(),
                };
                if let Some(c) = headers_code.as_deref().and_then(|c| c.parse().ok()) {
                    record_status(&body_span, c);
                }
                let elapsed = start.elapsed().as_secs_f64();
                tracing::info!(
                    target: "econsult::request",
                    method = %method,
                    code = %code,
                    status = status_name(&code),
                    duration_ms = (elapsed * 1e6).round() / 1e3,
                    caller = caller.get(),
                    trace_id = %current_trace_id(),
                    "request"
                );
                let attrs = [
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.grpc.status_code", code),
                ];
                instruments.requests.add(1, &attrs);
                instruments.duration.record(elapsed, &attrs);
                let done = headers_code.is_some();
                result.map(|res| {
                    res.map(|body| {
                        tonic::body::Body::new(TracedBody {
                            body,
                            span: body_span,
                            done,
                        })
                    })
                })
            }
            .instrument(span),
        )
    }
}

/// The call's wait for its request: a span `receive request` under the call's span, from the
/// call's start until the first frame of the request body, its end or an error (a unary call's
/// message is in), or until the handler answers, whichever is first (a stream's handler answers
/// before its client sends). Under load, a unary call's headers can come well before its
/// message, on a busy connection or to a busy process; without it that time was covered by no
/// span of the call.
#[derive(Clone)]
struct Receiving(Arc<std::sync::Mutex<Option<tracing::Span>>>);

impl Receiving {
    fn new(call: &tracing::Span) -> Self {
        let span = tracing::info_span!(parent: call, "rpc.receive", otel.name = "receive request");
        Self(Arc::new(std::sync::Mutex::new(Some(span))))
    }

    /// Ends the span (when the last handle of it goes), once.
    fn end(&self) {
        let span = self.0.lock().map(|mut s| s.take()).unwrap_or_default();
        drop(span);
    }
}

/// A request body that ends its call's [`Receiving`] span at its first frame.
struct ReceivingBody {
    body: tonic::body::Body,
    /// Until the first frame.
    receiving: Option<Receiving>,
}

impl http_body::Body for ReceivingBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if polled.is_ready()
            && let Some(r) = self.receiving.take()
        {
            r.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Records a call's final gRPC status on its span.
fn record_status(span: &tracing::Span, code: i64) {
    span.record("rpc.grpc.status_code", code);
    if server_fault(code) {
        span.record("otel.status_code", "ERROR");
    }
}

/// A response body that keeps its call's span open until the body ends (so a stream's span
/// covers the stream), enters it while the body is polled, and records the status code the
/// trailers carry.
struct TracedBody {
    body: tonic::body::Body,
    span: tracing::Span,
    /// The status is recorded (trailers-only response, or trailers seen).
    done: bool,
}

impl http_body::Body for TracedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && !this.done
        {
            let code = trailers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(2);
            record_status(&this.span, code);
            this.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the status was sent: CANCELLED, not the server's fault.
            self.span.record("rpc.grpc.status_code", 1_i64);
        }
    }
}

#[cfg(test)]
mod method_label_tests {
    use super::method_label;

    #[test]
    fn only_methods_the_server_has_are_labelled_by_path() {
        for known in [
            "/econsult.booking.v1.BookingService/FindSlots",
            "/econsult.stats.v1.StatsService/GetBookingAccessibility",
            "/grpc.health.v1.Health/Check",
        ] {
            assert_eq!(method_label(known), known);
        }
        for made_up in [
            "/econsult.booking.v1.BookingService/Nope",
            "/econsult.x1/y",
            "/grpc.made.Up/Call",
            "/",
        ] {
            assert_eq!(method_label(made_up), "other", "{made_up}");
        }
    }
}
