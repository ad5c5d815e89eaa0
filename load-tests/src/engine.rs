//! The open-loop generator.
//!
//! Flows start on a fixed schedule (`start + k / rate`) whatever the server does: a slow answer
//! never delays the next start, and a generator that falls behind catches up in a burst (the
//! schedule is the intended time of every start, so nothing is skipped). Latency is measured
//! from the intended start, so time a flow spent waiting for a late generator or a full
//! connection counts (no coordinated omission). Flows run on N HTTP/2 connections round-robin.
//! A flow that would exceed the concurrency cap is not started and counts as an error, as does a
//! flow that does not finish within the request timeout.

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Histogram bounds: 1 µs to 10 minutes, 3 significant digits.
pub const HIST_MAX_US: u64 = 600_000_000;

/// A fresh latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Records `d` into `h` (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, HIST_MAX_US);
    h.saturating_record(us);
}

/// How one flow ended.
#[derive(Debug)]
pub enum Outcome {
    /// Everything the flow asked for was done.
    Ok,
    /// An outcome the scenario expects under contention (e.g. a lost race for a slot): not an
    /// error, counted separately.
    Expected(&'static str),
    /// An error: the gRPC code (or a generator reason) and a message.
    Error(String, String),
}

/// The canonical name of a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error outcome from a gRPC status; `rpc` names the call that failed.
pub fn status_error(rpc: &str, s: &tonic::Status) -> Outcome {
    Outcome::Error(
        code_name(s.code()).to_owned(),
        format!("{rpc}: {}", s.message()),
    )
}

/// True when a failed mutating call may still have committed on the server (its outcome is
/// unknown to the client), so the database checks allow for it.
pub fn uncertain(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

/// A scenario: something that runs one flow (one or more RPCs) per arrival.
pub trait Scenario: Send + Sync + 'static {
    /// Runs flow number `n` over `channel`.
    fn flow(self: Arc<Self>, n: u64, channel: Channel) -> BoxFuture<'static, Outcome>;
}

/// Service time of each RPC (from send to answer, not from the intended start), shared by the
/// scenarios of a run.
#[derive(Default)]
pub struct RpcTimes {
    hists: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
}

impl RpcTimes {
    /// Records one call of `rpc` that took `d`.
    pub fn record(&self, rpc: &'static str, d: Duration) {
        let mut m = self.hists.lock().unwrap_or_else(|e| e.into_inner());
        record(m.entry(rpc).or_insert_with(histogram), d);
    }

    /// Summaries by RPC.
    pub fn summaries(&self) -> BTreeMap<String, LatencySummary> {
        let m = self.hists.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|(k, h)| ((*k).to_owned(), LatencySummary::of(h)))
            .collect()
    }
}

/// Times `fut` as one call of `rpc`.
pub async fn timed<T>(
    times: &RpcTimes,
    rpc: &'static str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let t0 = std::time::Instant::now();
    let r = fut.await;
    times.record(rpc, t0.elapsed());
    r.map(tonic::Response::into_inner)
}

/// Percentiles of a histogram in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summary of `h` (µs).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

struct PhaseInner {
    hist: Histogram<u64>,
    ok: u64,
    expected: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
    max_lag: Duration,
}

/// The live state of one phase (one rate).
pub struct Phase {
    inner: Mutex<PhaseInner>,
    in_flight: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    drained: tokio::sync::Notify,
}

impl Phase {
    fn new() -> Self {
        Self {
            inner: Mutex::new(PhaseInner {
                hist: histogram(),
                ok: 0,
                expected: BTreeMap::new(),
                errors: BTreeMap::new(),
                error_samples: BTreeMap::new(),
                max_lag: Duration::ZERO,
            }),
            in_flight: AtomicU64::new(0),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            drained: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PhaseInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, outcome: Outcome, latency: Option<Duration>) {
        let mut g = self.lock();
        if let Some(l) = latency {
            record(&mut g.hist, l);
        }
        match outcome {
            Outcome::Ok => g.ok += 1,
            Outcome::Expected(what) => *g.expected.entry(what.to_owned()).or_default() += 1,
            Outcome::Error(code, msg) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                g.error_samples.entry(code.clone()).or_insert(msg);
                *g.errors.entry(code).or_default() += 1;
            }
        }
        drop(g);
        if latency.is_some() {
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn p99_ms(&self) -> f64 {
        let g = self.lock();
        if g.hist.is_empty() {
            0.0
        } else {
            g.hist.value_at_quantile(0.99) as f64 / 1000.0
        }
    }
}

/// The result of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Arrival rate asked for (flows/s).
    pub offered_rate: f64,
    /// Wall time of the phase from the first scheduled start until the last flow finished.
    pub wall_s: f64,
    /// Length of the arrival schedule.
    pub schedule_s: f64,
    /// Flows scheduled (including those refused by the concurrency cap).
    pub scheduled: u64,
    /// Flows that finished (ok, expected or error).
    pub completed: u64,
    pub ok: u64,
    /// Completed flows per second of schedule.
    pub achieved_rate: f64,
    /// OK flows per second of schedule.
    pub ok_rate: f64,
    pub expected: BTreeMap<String, u64>,
    /// Errors by gRPC code (or CONCURRENCY_CAP / CLIENT_TIMEOUT).
    pub errors: BTreeMap<String, u64>,
    /// One message per error code, to tell what happened.
    pub error_samples: BTreeMap<String, String>,
    pub error_count: u64,
    /// errors / scheduled.
    pub error_rate: f64,
    /// Latency of every completed flow from its intended start.
    pub latency: LatencySummary,
    /// The largest delay of a start behind its schedule (generator saturation shows here).
    pub max_schedule_lag_ms: f64,
    /// Flows abandoned by the client timeout (their effect on the server is unknown).
    pub client_timeouts: u64,
    /// Step mode: whether p99 and error rate were within the targets.
    pub passed: Option<bool>,
    /// Resource use during the phase.
    pub resources: Option<crate::procstat::Usage>,
}

impl PhaseResult {
    /// Requests sent to `peer` per completed flow, counted on the wire (see `procstat`).
    pub fn requests_per_flow(&self, peer: &str) -> Option<f64> {
        let requests = self.resources.as_ref()?.requests_to(peer)?;
        Some(requests as f64 / self.completed.max(1) as f64)
    }
}

/// Limits every phase obeys.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most flows in flight; one more is refused as a CONCURRENCY_CAP error.
    pub max_in_flight: u64,
    /// A flow still running after this is abandoned as a CLIENT_TIMEOUT error.
    pub timeout: Duration,
}

/// Bounds of a whole run: a deadline and a number of flows, shared by its phases.
pub struct Budget {
    pub deadline: Instant,
    remaining: AtomicU64,
}

impl Budget {
    /// A budget of `duration` from now and `max_requests` flows.
    pub fn new(duration: Duration, max_requests: u64) -> Self {
        Self {
            deadline: Instant::now() + duration,
            remaining: AtomicU64::new(max_requests),
        }
    }

    fn take(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
            .is_ok()
    }

    /// Flows left.
    pub fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Relaxed)
    }
}

/// Runs `scenario` at `rate` flows/s for `duration` (cut short by the budget), then waits for
/// the flows in flight. `label` names the phase on the progress lines (stderr, once a second).
#[allow(clippy::too_many_arguments)]
pub async fn run_phase(
    label: &str,
    scenario: Arc<dyn Scenario>,
    channels: &[Channel],
    rate: f64,
    duration: Duration,
    limits: &Limits,
    budget: &Budget,
    flow_counter: &AtomicU64,
) -> PhaseResult {
    assert!(rate > 0.0, "rate must be positive");
    let phase = Arc::new(Phase::new());
    let start = Instant::now() + Duration::from_millis(5);
    let end = (start + duration).min(budget.deadline);
    let usage0 = crate::procstat::Snapshot::take();

    // Progress: one line a second on stderr.
    let progress = {
        let phase = phase.clone();
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            let mut last_completed = 0;
            loop {
                tick.tick().await;
                let completed = phase.completed.load(Ordering::Relaxed);
                eprintln!(
                    "[{label} {rate:.0}/s] t={:>3.0}s started={} completed={} ({}/s) errors={} in_flight={} p99_so_far={:.1}ms",
                    start.elapsed().as_secs_f64(),
                    phase.started.load(Ordering::Relaxed),
                    completed,
                    completed - last_completed,
                    phase.errors.load(Ordering::Relaxed),
                    phase.in_flight.load(Ordering::Relaxed),
                    phase.p99_ms(),
                );
                last_completed = completed;
            }
        })
    };

    let mut k: u64 = 0;
    loop {
        let intended = start + Duration::from_secs_f64(k as f64 / rate);
        if intended >= end || !budget.take() {
            break;
        }
        tokio::time::sleep_until(intended).await;
        k += 1;
        phase.started.fetch_add(1, Ordering::Relaxed);
        let lag = Instant::now().saturating_duration_since(intended);
        {
            let mut g = phase.lock();
            g.max_lag = g.max_lag.max(lag);
        }
        if phase.in_flight.load(Ordering::Relaxed) >= limits.max_in_flight {
            phase.record(
                Outcome::Error(
                    "CONCURRENCY_CAP".into(),
                    format!("more than {} flows in flight", limits.max_in_flight),
                ),
                None,
            );
            continue;
        }
        phase.in_flight.fetch_add(1, Ordering::Relaxed);
        let n = flow_counter.fetch_add(1, Ordering::Relaxed);
        let channel = channels[(n % channels.len() as u64) as usize].clone();
        let fut = scenario.clone().flow(n, channel);
        let phase = phase.clone();
        let timeout = limits.timeout;
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout_at(intended + timeout, fut).await {
                Ok(o) => o,
                Err(_) => {
                    phase.timeouts.fetch_add(1, Ordering::Relaxed);
                    Outcome::Error(
                        "CLIENT_TIMEOUT".into(),
                        format!("flow not finished within {timeout:?}"),
                    )
                }
            };
            phase.record(outcome, Some(intended.elapsed()));
            if phase.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                phase.drained.notify_waiters();
            }
        });
    }
    let schedule_s = (Instant::now().min(end) - start).as_secs_f64().max(1e-3);
    // Drain: every flow ends by its timeout, so this terminates.
    while phase.in_flight.load(Ordering::Acquire) > 0 {
        tokio::select! {
            _ = phase.drained.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    progress.abort();
    let usage = usage0.map(|u0| u0.usage_until_now());

    let scheduled = phase.started.load(Ordering::Relaxed);
    let completed = phase.completed.load(Ordering::Relaxed);
    let g = phase.lock();
    let error_count: u64 = g.errors.values().sum();
    PhaseResult {
        offered_rate: rate,
        wall_s,
        schedule_s,
        scheduled,
        completed,
        ok: g.ok,
        achieved_rate: completed as f64 / schedule_s,
        ok_rate: g.ok as f64 / schedule_s,
        expected: g.expected.clone(),
        errors: g.errors.clone(),
        error_samples: g.error_samples.clone(),
        error_count,
        error_rate: if scheduled == 0 {
            0.0
        } else {
            error_count as f64 / scheduled as f64
        },
        latency: LatencySummary::of(&g.hist),
        max_schedule_lag_ms: g.max_lag.as_secs_f64() * 1000.0,
        client_timeouts: phase.timeouts.load(Ordering::Relaxed),
        passed: None,
        resources: usage,
    }
}
