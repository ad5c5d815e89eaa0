//! Logs, traces and metrics.
//!
//! - `tracing` with JSON logs (or pretty ones for a terminal, colours only on a terminal) on
//!   stderr, filtered by `RUST_LOG`.
//! - OpenTelemetry traces and metrics; exported by OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set (the standard `OTEL_*` variables apply), and metrics always scrapeable in Prometheus
//!   format at `/metrics` on the metrics port.
//! - RED metrics of every RPC by [`RpcMetricsLayer`]: `rpc_server_requests_total` and
//!   `rpc_server_duration_seconds` by method and gRPC status code, and one log line per call
//!   (target `econsult::request`: method, status, duration, caller kind, trace id).
//!
//! Never log message bodies, identity numbers or SDP: log ids.

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Handles of the installed telemetry; call [`Telemetry::shutdown`] before exit to flush.
pub struct Telemetry {
    registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracers: SdkTracerProvider,
}

impl Telemetry {
    /// Installs the global subscriber, tracer and meter providers. `json` selects JSON logs;
    /// otherwise they are for people, with colours only when stderr is a terminal.
    pub fn init(service_name: &str, json: bool) -> anyhow::Result<Self> {
        let resource = Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        let otlp = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();

        let registry = prometheus::Registry::new();
        let prom = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prom);
        let mut tracers = SdkTracerProvider::builder().with_resource(resource);
        if otlp {
            let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()?;
            meters = meters.with_reader(
                opentelemetry_sdk::metrics::PeriodicReader::builder(metric_exporter).build(),
            );
            let span_exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            tracers = tracers.with_batch_exporter(span_exporter);
        }
        let meters = meters.build();
        let tracers = tracers.build();
        global::set_meter_provider(meters.clone());
        global::set_tracer_provider(tracers.clone());
        global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );

        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
        let otel_layer = tracing_opentelemetry::layer().with_tracer(tracers.tracer("econsult"));
        let registry_layer = tracing_subscriber::registry().with(filter).with(otel_layer);
        if json {
            registry_layer
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_span_list(false)
                        .with_writer(std::io::stderr),
                )
                .try_init()?;
        } else {
            use std::io::IsTerminal as _;
            registry_layer
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_writer(std::io::stderr),
                )
                .try_init()?;
        }
        Ok(Self {
            registry,
            meters,
            tracers,
        })
    }

    /// The metrics in Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        prometheus_text(&self.registry)
    }

    /// The Prometheus registry (for a scrape endpoint).
    pub fn registry(&self) -> prometheus::Registry {
        self.registry.clone()
    }

    /// Flushes and stops exporters.
    pub fn shutdown(&self) {
        if let Err(e) = self.meters.shutdown() {
            tracing::debug!(error = %e, "meter provider shutdown");
        }
        if let Err(e) = self.tracers.shutdown() {
            tracing::debug!(error = %e, "tracer provider shutdown");
        }
    }
}

/// Renders a registry in Prometheus text format.
pub fn prometheus_text(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The W3C trace id of the current span, or an empty string outside a traced request.
pub fn current_trace_id() -> String {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Who made a call, for the request log line: [`RpcMetricsLayer`] puts an empty one in the
/// request's extensions and the auth interceptor fills in the caller's role. Calls without an
/// accepted token (health, reflection, refused tokens) stay `none`.
#[derive(Clone, Default)]
pub struct CallerKind(Arc<OnceLock<&'static str>>);

impl CallerKind {
    /// Records the kind (the first one recorded stays).
    pub fn set(&self, kind: &'static str) {
        let _ = self.0.set(kind);
    }
    /// The recorded kind, or `none`.
    pub fn get(&self) -> &'static str {
        self.0.get().copied().unwrap_or("none")
    }
}

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

/// Tower layer recording RED metrics, a tracing span (continuing an incoming W3C `traceparent`)
/// and one log line (target `econsult::request`, level info) for every gRPC call. The line holds
/// the method, status, duration until response headers, caller kind and trace id, never the
/// caller's identity or the message.
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

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let caller = CallerKind::default();
        req.extensions_mut().insert(caller.clone());
        let parent =
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        let span = tracing::info_span!("rpc", otel.name = %method, rpc.system = "grpc", rpc.grpc.status_code = tracing::field::Empty);
        let _ = span.set_parent(parent);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let instruments = self.instruments.clone();
        let start = Instant::now();
        Box::pin(
            async move {
                let result = inner.call(req).await;
                // Trailers-only responses (errors) carry grpc-status in the headers; a normal
                // response carries it in the trailers, after a successful start: count it as 0.
                let code = match &result {
                    Ok(res) => res
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_owned(),
                    Err(_) => "transport".to_owned(),
                };
                let elapsed = start.elapsed().as_secs_f64();
                tracing::Span::current().record("rpc.grpc.status_code", code.as_str());
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
                result
            }
            .instrument(span),
        )
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
