//! Logs, traces and metrics.
//!
//! - `tracing` with JSON logs (or pretty ones for a terminal, colours only on a terminal) on
//!   stderr, filtered by `RUST_LOG`.
//! - OpenTelemetry traces and metrics, exported by OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` or a
//!   signal's own `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT` is set; the other standard
//!   variables apply (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//!   `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`). Which spans are recorded is
//!   `ECONSULT_TRACE_FILTER` (default [`DEFAULT_TRACE_FILTER`]), never `RUST_LOG`. Metrics are
//!   always scrapeable in Prometheus format at `/metrics` on the metrics port.
//! - One SERVER span per gRPC call and RED metrics by [`RpcMetricsLayer`] ([`rpc`]); a CLIENT
//!   span per SQL statement ([`db`]); spans of our own for the pool, the idempotency claim, the
//!   commit, the relay, the consumers and Redis calls. Domain ids go on spans as `econsult.*`
//!   attributes ([`record_id`]).
//!
//! Never log or trace message bodies, identity numbers, SDP or bound SQL values: log ids.

pub mod db;
mod rpc;

pub use rpc::{RpcMetricsLayer, RpcMetricsService};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::{Arc, OnceLock};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Which spans reach the trace exporter unless `ECONSULT_TRACE_FILTER` says otherwise: ours at
/// info (every RPC, the database, the outbox, the consumers), no transport internals.
pub const DEFAULT_TRACE_FILTER: &str = "info,h2=off,hyper=off,tower=off,sqlx=off";

/// Handles of the installed telemetry; call [`Telemetry::shutdown`] before exit to flush.
pub struct Telemetry {
    registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracers: SdkTracerProvider,
}

/// Whether an OTLP endpoint is configured for a signal (`TRACES` or `METRICS`).
fn otlp_endpoint_set(signal: &str) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
}

/// The process's resource: the standard variables first (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), then `default_service` as the name where they give none,
/// `service.version` and `service.instance.id`.
fn resource(default_service: &str, instance_id: &str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .map(|v| v.as_str().into_owned())
        .filter(|n| !n.is_empty() && !n.starts_with("unknown_service"));
    let mut b = Resource::builder()
        .with_service_name(named.unwrap_or_else(|| default_service.to_owned()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if detected
        .get(&opentelemetry::Key::from_static_str("service.instance.id"))
        .is_none()
    {
        b = b.with_attribute(KeyValue::new("service.instance.id", instance_id.to_owned()));
    }
    b.build()
}

impl Telemetry {
    /// Installs the global subscriber, tracer and meter providers for the process
    /// `instance_id`, named `service_name` unless `OTEL_SERVICE_NAME` names it. `json` selects
    /// JSON logs; otherwise they are for people, with colours only when stderr is a terminal.
    pub fn init(service_name: &str, instance_id: &str, json: bool) -> anyhow::Result<Self> {
        let resource = resource(service_name, instance_id);
        let registry = prometheus::Registry::new();
        let prom = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prom);
        // The builder's default sampler is OTEL_TRACES_SAMPLER's (parent-based always-on).
        let mut tracers = SdkTracerProvider::builder().with_resource(resource);
        if otlp_endpoint_set("METRICS") {
            let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()?;
            meters = meters.with_reader(
                opentelemetry_sdk::metrics::PeriodicReader::builder(metric_exporter).build(),
            );
        }
        let export_traces = otlp_endpoint_set("TRACES");
        if export_traces {
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

        // Three filters: RUST_LOG for the log lines only, ECONSULT_TRACE_FILTER for spans, and
        // sqlx's per-statement events for the statement spans.
        let log_filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
        let trace_filter = std::env::var("ECONSULT_TRACE_FILTER")
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new(DEFAULT_TRACE_FILTER));
        let tracer = tracers.tracer("econsult");
        let otel_layer = tracing_opentelemetry::layer()
            .with_tracer(tracer.clone())
            .with_location(false)
            .with_threads(false)
            .with_filter(trace_filter);
        // Statement spans only when traces go somewhere: sqlx formats each statement's event
        // only when a layer wants it.
        let statements = export_traces.then(|| {
            db::StatementSpans::new(tracer)
                .with_filter(Targets::new().with_target("sqlx::query", tracing::Level::DEBUG))
        });
        let subscriber = tracing_subscriber::registry()
            .with(otel_layer)
            .with(statements);
        if json {
            subscriber
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_span_list(false)
                        .with_writer(std::io::stderr)
                        .with_filter(log_filter),
                )
                .try_init()?;
        } else {
            use std::io::IsTerminal as _;
            subscriber
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_writer(std::io::stderr)
                        .with_filter(log_filter),
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

/// Puts a domain id on the current span as the attribute `econsult.<name>` (`slot_id`,
/// `gp_id`, `org_number`, `thread_id`, `appointment_id`, `session_id`, `request_id`, ...): ids
/// only. A value that could be an identity number (11 digits) or is not id-shaped (empty, over
/// 64 characters, anything but letters, digits, `-`, `_`, `.`) is not recorded.
pub fn record_id(name: &str, id: &str) {
    let id_shaped = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let nin_shaped = id.len() == 11 && id.bytes().all(|b| b.is_ascii_digit());
    if id_shaped && !nin_shaped {
        tracing::Span::current().set_attribute(format!("econsult.{name}"), id.to_owned());
    }
}

/// The current span's context as a W3C `traceparent` (empty outside a sampled trace): stored
/// with an outbox event so that its consumers can link to the call that wrote it.
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    } else {
        String::new()
    }
}

/// Adds a link from the current span to the call whose `traceparent`
/// ([`current_traceparent`]) an event carried; an empty or malformed one is skipped.
pub fn link_to(traceparent: &str) {
    if let Some(sc) = parse_traceparent(traceparent) {
        tracing::Span::current().add_link(sc);
    }
}

/// A span named `name` of OpenTelemetry kind `kind` (`producer` for the relay, `consumer` for
/// a consumer) for the handling of a batch of events, linked to the calls that wrote them
/// (their `trace_parent`s): the batch's work is a trace of its own, and the links lead from it
/// to the requests and back.
pub fn event_batch_span<'a>(
    name: &str,
    kind: &'static str,
    trace_parents: impl IntoIterator<Item = &'a str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "event_batch",
        otel.name = %name,
        otel.kind = kind,
        messaging.batch.message_count = tracing::field::Empty,
    );
    let mut n = 0_u64;
    span.in_scope(|| {
        for tp in trace_parents {
            link_to(tp);
            n += 1;
        }
    });
    span.record("messaging.batch.message_count", n);
    span
}

fn parse_traceparent(tp: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let mut parts = tp.split('-');
    let (_v, t, s, f) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = TraceId::from_hex(t).ok()?;
    let span = SpanId::from_hex(s).ok()?;
    let flags = u8::from_str_radix(f, 16).ok()?;
    let sc = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_traceparent_reads_back_and_garbage_does_not() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = super::parse_traceparent(tp).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled());
        for bad in [
            "",
            "00-zz-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ] {
            assert!(super::parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
