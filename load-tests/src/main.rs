//! `econsult-load`: an open-loop load generator for econsult.
//!
//! It starts the whole system in this process (SQLite, or PostgreSQL + Redis with a fresh
//! database per run) or talks to an external server on a loopback address, seeds synthetic
//! data through the public gRPC API, sends flows at a constant or stepped arrival rate, and
//! checks the database afterwards (no double booking, every accepted message stored once).
//! See `load-tests/README.md`.

mod efficiency;
mod engine;
mod floor;
mod pgbench;
mod procstat;
mod report;
mod scenarios;
mod signalling;
mod target;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use engine::{Budget, Limits, RpcTimes, Scenario};
use report::{RunReport, ScenarioReport};
use scenarios::{Baseline, Messaging, Mixed, Rush, Shape};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use target::{Spec, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// The whole system in this process on a temporary SQLite file.
    EmbeddedSqlite,
    /// The whole system in this process on PostgreSQL + Redis (a fresh database per run).
    EmbeddedPostgres,
    /// A running server (`--addr`, `--data-dir`).
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioKind {
    /// FindSlots → HoldSlot → Book (→ 5 % Cancel), skewed towards hot GPs.
    Rush,
    /// StartConsultation → SendMessage → Reply, with Subscribe streams.
    Messaging,
    /// The gRPC health Check (an empty call).
    Baseline,
    /// Rush and messaging in national proportions (`--mixed-rush-share`).
    Mixed,
    /// `--sessions` live video sessions; one flow = one MediaState signal relayed to the peer.
    Signalling,
}

impl ScenarioKind {
    fn name(self) -> &'static str {
        match self {
            ScenarioKind::Rush => "rush",
            ScenarioKind::Messaging => "messaging",
            ScenarioKind::Baseline => "baseline",
            ScenarioKind::Mixed => "mixed",
            ScenarioKind::Signalling => "signalling",
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 10s or 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Open-loop load generator for econsult (loopback targets only).
#[derive(Parser, Debug, Clone)]
#[command(name = "econsult-load", version)]
struct Args {
    /// Where the system runs. `--addr` implies `external`.
    #[arg(long, value_enum, default_value_t = TargetKind::EmbeddedSqlite)]
    target: TargetKind,
    /// embedded-postgres: PostgreSQL URL of an existing database to connect to; the run creates
    /// (and afterwards drops) a fresh database next to it. Loopback only.
    #[arg(long, env = "ECONSULT_LOAD_DATABASE_URL")]
    database_url: Option<String>,
    /// embedded-postgres: Redis URL (a fresh key namespace per run). Loopback only.
    #[arg(long, env = "ECONSULT_LOAD_REDIS_URL")]
    redis_url: Option<String>,
    /// Keep the run's PostgreSQL database instead of dropping it (kept anyway when a check
    /// fails, for inspection).
    #[arg(long)]
    keep_database: bool,
    /// ANALYZE the seeded database before the run (in-process servers), as autovacuum would
    /// have long before a real Monday rush. Off by default, as in every run recorded so far:
    /// the PostgreSQL of these machines runs with autovacuum off, so without it plans are made on
    /// the planner's guesses (see results/HISTORY.md, 2026-12-01, on what changes with it).
    #[arg(long)]
    analyze: bool,
    /// External server, e.g. http://127.0.0.1:50051 (loopback only).
    #[arg(long)]
    addr: Option<String>,
    /// Data directory of the external server: its dev signing key mints the tokens, and its
    /// econsult.db (SQLite) is read for the checks.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database of the external server for the checks (default: DATA_DIR/econsult.db if present).
    #[arg(long)]
    check_database_url: Option<String>,
    /// PID of the external server, for its CPU time and RSS (/proc/<pid>).
    #[arg(long)]
    server_pid: Option<u32>,

    /// Scenarios, run one after the other (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "rush")]
    scenario: Vec<ScenarioKind>,
    /// Constant arrival rate in flows per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Bound of each scenario's load (all steps together in step mode), e.g. 30s, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Bound of each scenario's number of flows.
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// Concurrency cap: a flow that would exceed it is not sent and counts as an error.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: u64,
    /// A flow not finished this long after its intended start is abandoned (an error).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// HTTP/2 connections, used round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Step mode: raise the rate step by step until p99 or the error rate misses the target.
    #[arg(long)]
    step: bool,
    /// Step rates (comma-separated); default: --step-start doubling up to --step-max.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    #[arg(long, default_value_t = 50.0)]
    step_start: f64,
    #[arg(long, default_value_t = 3200.0)]
    step_max: f64,
    /// Length of each step.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    step_duration: Duration,
    /// A step is sustainable when its p99 is at most this.
    #[arg(long, default_value_t = 50.0)]
    p99_target_ms: f64,
    /// … and its error rate at most this (percent).
    #[arg(long, default_value_t = 0.1)]
    max_error_percent: f64,
    /// Keep stepping after a step missed the p99 target while its p99 stays below this (to see
    /// the whole curve); default: stop at the first step that misses a target. Steps always stop
    /// when the error rate is missed.
    #[arg(long)]
    step_stop_p99_ms: Option<f64>,

    /// GPs of the rush scenario.
    #[arg(long, default_value_t = 200)]
    gps: usize,
    #[arg(long, default_value_t = 10)]
    gps_per_practice: usize,
    #[arg(long, default_value_t = 40)]
    patients_per_gp: usize,
    /// Skew of the draw of GPs (weight of the GP of rank k is 1/k^s; 0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Share of booked appointments cancelled at once.
    #[arg(long, default_value_t = 0.05)]
    cancel_ratio: f64,
    /// Patients of the messaging scenario.
    #[arg(long, default_value_t = 500)]
    messaging_patients: usize,
    /// Messaging patients holding a Subscribe stream.
    #[arg(long, default_value_t = 50)]
    subscribers: usize,
    /// Live video sessions of the signalling scenario (two Signal streams each).
    #[arg(long, default_value_t = 500)]
    sessions: usize,
    /// Share of SendMessage calls retried with the same idempotency key.
    #[arg(long, default_value_t = 0.05)]
    retry_ratio: f64,

    /// CI smoke test: baseline, rush, messaging and mixed for a few seconds each at a small
    /// rate on embedded SQLite; fails on any error or violation.
    #[arg(long)]
    smoke: bool,

    /// Write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the Markdown summary here (default: next to --out, .md).
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Write the SVG plot of a step run here (default: next to --out, .svg).
    #[arg(long)]
    svg: Option<PathBuf>,

    /// Also run the pgbench baseline of the booking transaction.
    #[arg(long)]
    pgbench: bool,
    /// PostgreSQL for pgbench (default: --database-url, else postgres://postgres@127.0.0.1:5432/postgres).
    #[arg(long)]
    pgbench_url: Option<String>,
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
    #[arg(long, default_value_t = 8)]
    pgbench_clients: u32,

    /// Efficiency against the floor: measure the floor's database parts now (pgbench, or the
    /// same SQL on SQLite), then per scenario a step sweep to saturation (`--rates`/`--step-*`,
    /// going on while p99 ≤ `--step-stop-p99-ms`, default 1000), a run of `--run-duration` at
    /// 40 % and one at 60 % of it, and an empty-call run at the 40 % run's RPC rate; writes the
    /// ratio table (`--out`). In-process targets only.
    #[arg(long)]
    efficiency: bool,
    /// Length of each fixed-rate run of `--efficiency`.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    run_duration: Duration,
    /// Seconds of each floor measurement of `--efficiency`.
    #[arg(long, default_value_t = 8)]
    floor_seconds: u64,
    /// Measurements of each floor part (in rounds); the ratio uses the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    floor_repeats: u32,
    /// Share of rush flows in the mixed scenario, the rest messaging. National proportions:
    /// ~68 000 consultations a working day, about one in four booked online (~17 000 bookings)
    /// and 21 % of them e-consultations (~14 300 threads): 54 : 46.
    #[arg(long, default_value_t = 0.54)]
    mixed_rush_share: f64,

    /// Worker threads of the in-process server's runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Database connections of the in-process server (its `--db-max-connections`).
    #[arg(long, default_value_t = econsult_runtime::db::DEFAULT_MAX_CONNECTIONS)]
    db_max_connections: u32,
    /// Services of the in-process server (its `--services`): leaving out `stats,notify`
    /// measures what their consumers cost. The scenarios need booking, consultation and
    /// signalling.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "booking,consultation,signalling,stats,notify"
    )]
    services: Vec<econsult::ServiceKind>,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 2)]
    generator_threads: usize,
}

impl Args {
    fn apply_smoke(&mut self) {
        if !self.smoke {
            return;
        }
        self.scenario = vec![
            ScenarioKind::Baseline,
            ScenarioKind::Rush,
            ScenarioKind::Messaging,
            ScenarioKind::Mixed,
            ScenarioKind::Signalling,
        ];
        self.rate = self.rate.min(20.0);
        self.duration = self.duration.min(Duration::from_secs(3));
        self.step = false;
        self.connections = self.connections.min(2);
        self.gps = self.gps.min(20);
        self.patients_per_gp = self.patients_per_gp.min(10);
        self.messaging_patients = self.messaging_patients.min(50);
        self.subscribers = self.subscribers.min(10);
        self.sessions = self.sessions.min(10);
    }

    fn step_rates(&self) -> Vec<f64> {
        if !self.rates.is_empty() {
            return self.rates.iter().copied().filter(|r| *r > 0.0).collect();
        }
        let mut out = Vec::new();
        let mut r = self.step_start.max(1.0);
        while r <= self.step_max + 1e-9 {
            out.push(r);
            r *= 2.0;
        }
        out
    }

    /// Flows a scenario will send at most (for sizing the seed data).
    fn planned_flows(&self) -> u64 {
        let flows = if self.step {
            let fit = (self.duration.as_secs_f64() / self.step_duration.as_secs_f64())
                .floor()
                .max(1.0) as usize;
            self.step_rates()
                .iter()
                .take(fit)
                .map(|r| r * self.step_duration.as_secs_f64())
                .sum::<f64>()
        } else {
            self.rate * self.duration.as_secs_f64()
        };
        (flows.ceil() as u64).min(self.max_requests).max(1)
    }

    fn shape(&self) -> Shape {
        Shape {
            gps: self.gps,
            gps_per_practice: self.gps_per_practice,
            patients_per_gp: self.patients_per_gp,
            zipf_s: self.zipf_s,
            cancel_ratio: self.cancel_ratio,
            messaging_patients: self.messaging_patients,
            subscribers: self.subscribers,
            retry_ratio: self.retry_ratio,
        }
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.addr.is_some() {
        args.target = TargetKind::External;
    }
    args.apply_smoke();
    static SRV: AtomicUsize = AtomicUsize::new(0);
    static GEN: AtomicUsize = AtomicUsize::new(0);
    let runtimes = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads.max(1))
        .thread_name_fn(|| format!("srv-{}", SRV.fetch_add(1, Ordering::Relaxed)))
        .enable_all()
        .build()
        .and_then(|server| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.generator_threads.max(1))
                .thread_name_fn(|| format!("gen-{}", GEN.fetch_add(1, Ordering::Relaxed)))
                .enable_all()
                .build()
                .map(|generator| (server, generator))
        });
    let (server, generator) = match runtimes {
        Ok(r) => r,
        Err(e) => {
            eprintln!("econsult-load: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = generator.block_on(run(args, server.handle().clone()));
    generator.shutdown_timeout(Duration::from_secs(2));
    server.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("econsult-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What `--target` and its options say to start.
fn spec(args: &Args) -> anyhow::Result<Spec> {
    Ok(match args.target {
        TargetKind::EmbeddedSqlite => Spec::EmbeddedSqlite,
        TargetKind::EmbeddedPostgres => {
            let port = |url: &Option<String>, default: u16| {
                url.as_deref().and_then(target::url_port).unwrap_or(default)
            };
            procstat::set_wire_peers(vec![
                procstat::WirePeer {
                    name: "postgres",
                    port: port(&args.database_url, 5432),
                },
                procstat::WirePeer {
                    name: "redis",
                    port: port(&args.redis_url, 6379),
                },
            ]);
            Spec::EmbeddedPostgres {
                admin_url: args
                    .database_url
                    .clone()
                    .context("--target embedded-postgres needs --database-url")?,
                redis_url: args
                    .redis_url
                    .clone()
                    .context("--target embedded-postgres needs --redis-url")?,
                keep_database: args.keep_database,
            }
        }
        TargetKind::External => {
            if let Some(pid) = args.server_pid {
                procstat::set_server(procstat::ServerProc::Pid(pid));
            }
            Spec::External {
                addr: args
                    .addr
                    .clone()
                    .context("--target external needs --addr")?,
                data_dir: args
                    .data_dir
                    .clone()
                    .context("--addr needs --data-dir (the server's dev signing key)")?,
                check_database_url: args.check_database_url.clone(),
            }
        }
    })
}

async fn run(args: Args, server: tokio::runtime::Handle) -> anyhow::Result<bool> {
    if args.efficiency {
        return efficiency::run(args, server).await;
    }
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let loadavg_start = procstat::loadavg();
    let spec = spec(&args)?;
    if args.step && args.step_rates().is_empty() {
        anyhow::bail!("no step rates");
    }
    if !args.step && args.rate <= 0.0 {
        anyhow::bail!("--rate must be positive");
    }
    let target = Target::start(spec, server, args.db_max_connections, &args.services).await?;
    eprintln!("econsult-load: target {} at {}", target.label, target.addr);
    let channels = target.channels(args.connections).await?;
    let limits = Limits {
        max_in_flight: args.max_in_flight.max(1),
        timeout: args.request_timeout,
    };
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    let mut outcome = Ok(());
    for kind in args.scenario.clone() {
        match run_scenario(kind, &args, &target, &channels, &limits).await {
            Ok(rep) => {
                failures.extend(rep.failed_checks());
                if args.smoke {
                    for p in &rep.phases {
                        if p.error_count > 0 {
                            failures.push(format!(
                                "{}: {} errors at {}/s ({:?})",
                                rep.scenario, p.error_count, p.offered_rate, p.error_samples
                            ));
                        }
                    }
                }
                reports.push(rep);
            }
            Err(e) => {
                outcome = Err(e.context(format!("scenario {}", kind.name())));
                break;
            }
        }
    }
    let (target_label, backend) = stop(target, channels, !failures.is_empty()).await;
    outcome?;

    let pg = if args.pgbench {
        let url = args
            .pgbench_url
            .clone()
            .or_else(|| args.database_url.clone())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        eprintln!(
            "econsult-load: pgbench baseline ({} s)",
            args.pgbench_seconds
        );
        match pgbench::run(&url, args.pgbench_seconds, args.pgbench_clients).await {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("econsult-load: pgbench: {e:#}");
                None
            }
        }
    } else {
        None
    };
    if let Some(n) = pg.as_ref().and_then(|p| p.double_booked_slots)
        && n > 0
    {
        failures.push(format!("pgbench: {n} double-booked slots"));
    }

    let report = run_report(
        &args,
        started_at,
        loadavg_start,
        (target_label, backend),
        reports,
        pg,
        failures,
    );
    let md = report::markdown(&report);
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", out.display()))?;
    }
    let summary = args
        .summary
        .clone()
        .or_else(|| args.out.as_ref().map(|o| o.with_extension("md")));
    if let Some(p) = summary {
        std::fs::write(&p, &md).with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(svg) = report::svg(&report) {
        let path = args
            .svg
            .clone()
            .or_else(|| args.out.as_ref().map(|o| o.with_extension("svg")));
        if let Some(p) = path {
            std::fs::write(&p, svg).with_context(|| format!("write {}", p.display()))?;
        }
    }
    if !report.passed {
        eprintln!("econsult-load: FAILED");
        for f in &report.failures {
            eprintln!("  - {f}");
        }
    }
    Ok(report.passed)
}

/// Shuts the target down (after the channels); its label and backend, for the report. `failed`
/// (a check failed) keeps a PostgreSQL run's database for inspection.
async fn stop(
    mut target: Target,
    channels: Vec<tonic::transport::Channel>,
    failed: bool,
) -> (String, String) {
    if failed {
        target.keep_database();
    }
    let named = (target.label.clone(), target.backend.clone());
    drop(channels);
    if let Err(e) = target.shutdown().await {
        eprintln!("econsult-load: shutdown: {e:#}");
    }
    named
}

/// The run's report: what ran where, every scenario's phases and checks, and the verdict.
fn run_report(
    args: &Args,
    started_at: String,
    loadavg_start: String,
    (target, backend): (String, String),
    scenarios: Vec<ScenarioReport>,
    pgbench: Option<pgbench::PgbenchResult>,
    failures: Vec<String>,
) -> RunReport {
    RunReport {
        tool: format!("econsult-load {}", env!("CARGO_PKG_VERSION")),
        started_at,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        target,
        backend,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_start,
        loadavg_end: procstat::loadavg(),
        connections: args.connections,
        p99_target_ms: args.p99_target_ms,
        max_error_rate: args.max_error_percent / 100.0,
        scenarios,
        pgbench,
        passed: failures.is_empty(),
        failures,
    }
}

async fn run_scenario(
    kind: ScenarioKind,
    args: &Args,
    target: &Target,
    channels: &[tonic::transport::Channel],
    limits: &Limits,
) -> anyhow::Result<ScenarioReport> {
    let times = Arc::new(RpcTimes::default());
    let shape = args.shape();
    let planned = args.planned_flows();
    eprintln!("econsult-load: preparing {} …", kind.name());
    type Prepared = (Arc<dyn Scenario>, Option<Arc<Rush>>, Option<Arc<Messaging>>);
    let (flow, rush, messaging): Prepared = match kind {
        ScenarioKind::Baseline | ScenarioKind::Signalling => (
            Arc::new(Baseline {
                times: times.clone(),
            }),
            None,
            None,
        ),
        ScenarioKind::Rush => {
            let r = Rush::seed(target, channels, times.clone(), &shape, planned).await?;
            (r.clone(), Some(r), None)
        }
        ScenarioKind::Messaging => {
            let m = Messaging::seed(target, channels, times.clone(), &shape).await?;
            (m.clone(), None, Some(m))
        }
        ScenarioKind::Mixed => {
            let share = args.mixed_rush_share.clamp(0.0, 1.0);
            let rush_flows = (planned as f64 * share).ceil() as u64;
            let r = Rush::seed(target, channels, times.clone(), &shape, rush_flows.max(1)).await?;
            let m = Messaging::seed(target, channels, times.clone(), &shape).await?;
            (
                Arc::new(Mixed {
                    rush: r.clone(),
                    messaging: m.clone(),
                    rush_share: share,
                }),
                Some(r),
                Some(m),
            )
        }
    };
    let mut video = None;
    let flow: Arc<dyn Scenario> = if kind == ScenarioKind::Signalling {
        let s =
            signalling::Signalling::seed(target, channels, times.clone(), args.sessions).await?;
        video = Some(s.clone());
        s
    } else {
        flow
    };
    if args.analyze && target.analyze().await? {
        eprintln!("econsult-load: analyzed the seeded database");
    }
    if args.efficiency {
        efficiency::settle(kind.name()).await;
    }
    let mut seed = BTreeMap::new();
    if let Some(s) = &video {
        seed.insert("signalling".to_owned(), s.seed.clone());
    }
    if let Some(r) = &rush {
        seed.insert("rush".to_owned(), r.seed.clone());
    }
    if let Some(m) = &messaging {
        seed.insert("messaging".to_owned(), m.seed.clone());
    }

    let budget = Budget::new(args.duration, args.max_requests);
    let counter = AtomicU64::new(0);
    let mut phases = Vec::new();
    let mut sustainable = None;
    let mut stop_reason = None;
    if args.step {
        for rate in args.step_rates() {
            let left = budget
                .deadline
                .saturating_duration_since(tokio::time::Instant::now());
            if left < args.step_duration || budget.remaining() == 0 {
                stop_reason = Some(format!(
                    "the --duration/--max-requests budget does not fit a step of {rate:.0}/s"
                ));
                break;
            }
            let label = format!("{} step", kind.name());
            let mut p = engine::run_phase(
                &label,
                flow.clone(),
                channels,
                rate,
                args.step_duration,
                limits,
                &budget,
                &counter,
            )
            .await;
            let ok = p.latency.p99_ms <= args.p99_target_ms
                && p.error_rate <= args.max_error_percent / 100.0
                && p.latency.count > 0;
            p.passed = Some(ok);
            eprintln!(
                "econsult-load: step {rate:.0}/s: achieved {:.1}/s, p99 {:.2} ms, errors {:.3} % → {}",
                p.achieved_rate,
                p.latency.p99_ms,
                p.error_rate * 100.0,
                if ok { "sustainable" } else { "not sustainable" }
            );
            let go_on = p.error_rate <= args.max_error_percent / 100.0
                && p.latency.p99_ms <= args.step_stop_p99_ms.unwrap_or(args.p99_target_ms)
                && p.latency.count > 0;
            let p99 = p.latency.p99_ms;
            phases.push(p);
            if ok {
                sustainable = Some(sustainable.map_or(rate, |s: f64| s.max(rate)));
            }
            if !go_on {
                stop_reason = Some(format!(
                    "{rate:.0}/s: p99 {p99:.1} ms (stop threshold {} ms) or errors above {} %",
                    args.step_stop_p99_ms.unwrap_or(args.p99_target_ms),
                    args.max_error_percent
                ));
                break;
            }
        }
        if stop_reason.is_none() {
            stop_reason = Some("the highest step rate was reached".into());
        }
    } else {
        let p = engine::run_phase(
            kind.name(),
            flow.clone(),
            channels,
            args.rate,
            args.duration,
            limits,
            &budget,
            &counter,
        )
        .await;
        phases.push(p);
    }

    let abandoned: u64 = phases.iter().map(|p| p.client_timeouts).sum();
    let mut checks = Vec::new();
    let mut counters = BTreeMap::new();
    let mut stream_delivery = None;
    let mut inbox_delivery = None;
    let mut inbox_changes = BTreeMap::new();
    let checks_skipped = if target.can_check() {
        None
    } else {
        Some(
            "no database access (give --check-database-url for an external PostgreSQL server)"
                .to_owned(),
        )
    };
    if let Some(m) = &messaging {
        m.drain_streams(Duration::from_secs(15)).await;
        counters.extend(m.counters());
        stream_delivery = Some(m.delivery());
        inbox_delivery = Some(m.inbox_delivery());
        inbox_changes = m.inbox_changes();
        checks.extend(m.checks(target, abandoned).await);
    }
    if let Some(s) = &video {
        s.close().await;
        counters.extend(s.counters());
        checks.extend(s.checks());
    }
    if let Some(r) = &rush {
        counters.extend(r.counters());
        if target.can_check() {
            checks.extend(r.checks(target, abandoned).await);
        }
    }
    for c in &checks {
        eprintln!(
            "econsult-load: check [{}] {}: {}",
            if c.passed { "ok" } else { "FAILED" },
            c.name,
            c.detail
        );
    }
    Ok(ScenarioReport {
        scenario: kind.name().into(),
        mode: if args.step { "step" } else { "constant" }.into(),
        seed,
        phases,
        highest_sustainable_rate: sustainable,
        step_stop_reason: if args.step { stop_reason } else { None },
        rpc_service_time: times.summaries(),
        stream_delivery,
        inbox_delivery,
        inbox_changes,
        counters,
        checks,
        checks_skipped,
    })
}
