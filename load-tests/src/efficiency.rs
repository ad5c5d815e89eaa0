//! The `--efficiency` run: per scenario a sweep to saturation, fixed-rate runs at 40 % and
//! 60 % of it and empty calls at the 40 % run's RPC rate, against the floor measured first
//! ([`crate::floor`]); the ratio table with the verdicts of issue 28's targets.

use crate::engine::{self, Limits};
use crate::floor;
use crate::report::{self, RunReport, ScenarioReport};
use crate::target::Target;
use crate::{Args, ScenarioKind, TargetKind, procstat, run_report, run_scenario, spec, stop};
use anyhow::Context as _;
use std::time::Duration;

/// One scenario's line of the efficiency table (`--efficiency`).
#[derive(Debug, Clone, serde::Serialize)]
struct EfficiencyRow {
    scenario: String,
    backend: String,
    /// The sweep's highest rate of answered flows (OK or an expected refusal) per second of
    /// wall time.
    saturation: f64,
    /// The fixed-rate run at 40 % of saturation.
    rate_40: f64,
    /// CPU ms per completed flow at 40 %: the server's threads, PostgreSQL + Redis (zero on
    /// SQLite, whose work runs on the server's threads), and their sum.
    server_ms: f64,
    db_ms: f64,
    product_ms: f64,
    parts: floor::FlowParts,
    /// Server CPU ms of one empty call at the 40 % run's RPC rate.
    rpc_ms: f64,
    floor_ms: f64,
    /// The floor with its booking pairs and message writes as the product commits them, with
    /// the guarantees' rows ([`floor::FlowParts::guaranteed_ms`]).
    guaranteed_ms: Option<f64>,
    ratio: f64,
    target_ratio: Option<f64>,
    /// Flow p99 at 40 % and 60 % of saturation.
    p99_40_ms: f64,
    p99_60_ms: f64,
    /// Messaging: SendMessage's service time and delivery to a subscriber at 60 %.
    send_p99_60_ms: Option<f64>,
    delivery_p99_60_ms: Option<f64>,
    /// Requests per flow to PostgreSQL and Redis at 40 %, counted on the wire.
    pg_requests_per_flow: Option<f64>,
    redis_requests_per_flow: Option<f64>,
    /// One round trip to PostgreSQL at the 40 % run's rate of requests to it.
    round_trip: Option<floor::RoundTrip>,
    checks_passed: bool,
    verdict: String,
}

impl EfficiencyRow {
    /// CPU ms per flow that its round trips to PostgreSQL would cost at the least a round trip
    /// costs (`SELECT 1`, both ends), and that as a share of the product.
    fn round_trips_ms(&self) -> Option<(f64, f64)> {
        let rt = self.round_trip.as_ref()?;
        let ms = self.pg_requests_per_flow? * (rt.client_cpu_ms + rt.db_cpu_ms);
        Some((ms, ms / self.product_ms.max(1e-9)))
    }
}

/// The whole `--efficiency` result.
#[derive(Debug, Clone, serde::Serialize)]
struct EfficiencyReport {
    started_at: String,
    command: String,
    loadavg_start: String,
    loadavg_end: String,
    floor: floor::DbFloor,
    rows: Vec<EfficiencyRow>,
    /// Every phase run (sweeps, fixed rates, empty calls), with its checks.
    run: RunReport,
}

fn cpu_of(p: &engine::PhaseResult, with_db: bool) -> (f64, f64) {
    let Some(u) = &p.resources else {
        return (0.0, 0.0);
    };
    let flows = p.completed.max(1) as f64;
    let server = u.server_cpu_s.unwrap_or(0.0) * 1000.0 / flows;
    let db = if with_db {
        u.db_cpu_percent.unwrap_or(0.0) / 100.0 * u.wall_s * 1000.0 / flows
    } else {
        0.0
    };
    (server, db)
}

pub async fn run(args: Args, server: tokio::runtime::Handle) -> anyhow::Result<bool> {
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let loadavg_start = procstat::loadavg();
    let plan = floor::Plan {
        seconds: args.floor_seconds,
        repeats: args.floor_repeats,
        clients: args.pgbench_clients,
    };
    let floor = match args.target {
        TargetKind::EmbeddedPostgres => {
            let url = args
                .database_url
                .clone()
                .context("--target embedded-postgres needs --database-url")?;
            floor::postgres(&url, plan).await?
        }
        TargetKind::EmbeddedSqlite => floor::sqlite(plan).await?,
        TargetKind::External => anyhow::bail!("--efficiency needs an in-process target"),
    };
    for u in [&floor.booking_write, &floor.message_write, &floor.read]
        .into_iter()
        .chain(&floor.booking_guaranteed)
        .chain(&floor.message_guaranteed)
    {
        eprintln!(
            "econsult-load: floor: {} {:.0}/s, {:.3} ms of database CPU each (median of {})",
            u.name,
            u.per_second,
            u.cpu_ms,
            runs_text(&u.cpu_ms_runs)
        );
    }
    let runtime = server.clone();
    let target = Target::start(
        spec(&args)?,
        server,
        args.db_max_connections,
        &args.services,
    )
    .await?;
    eprintln!("econsult-load: target {} at {}", target.label, target.addr);
    let channels = target.channels(args.connections).await?;
    let limits = Limits {
        max_in_flight: args.max_in_flight.max(1),
        timeout: args.request_timeout,
    };
    let mut reports = Vec::new();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut outcome = Ok(());
    for kind in args.scenario.clone() {
        let parts = match kind {
            ScenarioKind::Rush => floor::FlowParts::rush(args.cancel_ratio),
            ScenarioKind::Messaging => floor::FlowParts::messaging(args.retry_ratio),
            ScenarioKind::Mixed => floor::FlowParts::mix(
                floor::FlowParts::rush(args.cancel_ratio),
                args.mixed_rush_share.clamp(0.0, 1.0),
                floor::FlowParts::messaging(args.retry_ratio),
            ),
            ScenarioKind::Signalling => floor::FlowParts::signalling(),
            ScenarioKind::Baseline => continue,
        };
        let result =
            efficiency_scenario(kind, parts, &args, (&target, &runtime), &channels, &limits).await;
        match result {
            Ok((row, runs)) => {
                failures.extend(runs.iter().flat_map(ScenarioReport::failed_checks));
                reports.extend(runs);
                let mut row = row;
                row.backend = target.backend.clone();
                row.floor_ms = parts.floor_ms(&floor, row.rpc_ms);
                row.guaranteed_ms = parts.guaranteed_ms(&floor, row.rpc_ms);
                row.ratio = row.product_ms / row.floor_ms.max(1e-9);
                row.verdict = verdict(&row, args.p99_target_ms);
                eprintln!(
                    "econsult-load: {}: saturation {:.0}/s; at {:.0}/s {:.2} ms/flow against a floor of {:.2}: {:.2}×; {}",
                    row.scenario,
                    row.saturation,
                    row.rate_40,
                    row.product_ms,
                    row.floor_ms,
                    row.ratio,
                    row.verdict
                );
                rows.push(row);
            }
            Err(e) => {
                outcome = Err(e.context(format!("scenario {}", kind.name())));
                break;
            }
        }
    }
    let (target_label, backend) = stop(target, channels, !failures.is_empty()).await;
    outcome?;
    let run = run_report(
        &args,
        started_at.clone(),
        loadavg_start.clone(),
        (target_label, backend),
        reports,
        None,
        failures,
    );
    let report = EfficiencyReport {
        started_at,
        command: run.command.clone(),
        loadavg_start,
        loadavg_end: run.loadavg_end.clone(),
        floor,
        rows,
        run,
    };
    let md = efficiency_markdown(&report);
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", out.display()))?;
        let md_path = args
            .summary
            .clone()
            .unwrap_or_else(|| out.with_extension("md"));
        std::fs::write(&md_path, &md).with_context(|| format!("write {}", md_path.display()))?;
        if let Some(svg) = report::svg(&report.run) {
            let p = args
                .svg
                .clone()
                .unwrap_or_else(|| out.with_extension("svg"));
            std::fs::write(&p, svg).with_context(|| format!("write {}", p.display()))?;
        }
    }
    if !report.run.passed {
        eprintln!("econsult-load: FAILED");
        for f in &report.run.failures {
            eprintln!("  - {f}");
        }
    }
    Ok(report.run.passed)
}

/// The sweep, the runs at 40 % and 60 % and the empty calls of one scenario.
async fn efficiency_scenario(
    kind: ScenarioKind,
    parts: floor::FlowParts,
    args: &Args,
    (target, runtime): (&Target, &tokio::runtime::Handle),
    channels: &[tonic::transport::Channel],
    limits: &Limits,
) -> anyhow::Result<(EfficiencyRow, Vec<ScenarioReport>)> {
    let with_db = target.backend == "postgres";
    let mut sweep_args = args.clone();
    sweep_args.step = true;
    sweep_args.step_stop_p99_ms = Some(args.step_stop_p99_ms.unwrap_or(1000.0));
    eprintln!("econsult-load: {}: sweep", kind.name());
    let sweep = run_scenario(kind, &sweep_args, target, channels, limits).await?;
    let saturation = sweep
        .phases
        .iter()
        .map(|p| (p.completed - p.error_count.min(p.completed)) as f64 / p.wall_s.max(1e-3))
        .fold(0.0, f64::max);
    anyhow::ensure!(saturation > 0.0, "the sweep completed no flow");
    let fixed = |share: f64| {
        let mut a = args.clone();
        a.step = false;
        a.rate = (saturation * share).max(1.0);
        a.duration = args.run_duration;
        a
    };
    let at40_args = fixed(0.4);
    eprintln!(
        "econsult-load: {}: {:.0}/s (40 % of {saturation:.0})",
        kind.name(),
        at40_args.rate
    );
    let at40 = run_scenario(kind, &at40_args, target, channels, limits).await?;
    let at60_args = fixed(0.6);
    eprintln!(
        "econsult-load: {}: {:.0}/s (60 % of {saturation:.0})",
        kind.name(),
        at60_args.rate
    );
    let at60 = run_scenario(kind, &at60_args, target, channels, limits).await?;
    let mut empty_args = args.clone();
    empty_args.step = false;
    empty_args.rate = (at40_args.rate * parts.rpcs).max(10.0);
    empty_args.duration = args.run_duration.min(Duration::from_secs(8));
    eprintln!(
        "econsult-load: {}: empty calls at {:.0}/s",
        kind.name(),
        empty_args.rate
    );
    let empty = run_scenario(
        ScenarioKind::Baseline,
        &empty_args,
        target,
        channels,
        limits,
    )
    .await?;
    let p40 = at40.phases.first().context("no 40 % phase")?;
    let p60 = at60.phases.first().context("no 60 % phase")?;
    let (server_ms, db_ms) = cpu_of(p40, with_db);
    let (rpc_ms, _) = cpu_of(empty.phases.first().context("no empty-call phase")?, false);
    let pg_requests_per_flow = p40.requests_per_flow("postgres");
    let round_trip = match (&args.database_url, pg_requests_per_flow) {
        (Some(url), Some(n)) if with_db && n > 0.0 => {
            let rate = n * p40.completed as f64 / p40.wall_s.max(1e-3);
            eprintln!(
                "econsult-load: {}: round trips to PostgreSQL at {rate:.0}/s ({n:.1} a flow)",
                kind.name()
            );
            let seconds = args
                .run_duration
                .min(Duration::from_secs(8))
                .as_secs()
                .max(1);
            Some(floor::round_trip(url, runtime, rate, seconds, args.pgbench_clients).await?)
        }
        _ => None,
    };
    let messaging = kind == ScenarioKind::Messaging;
    let row = EfficiencyRow {
        scenario: kind.name().into(),
        backend: String::new(),
        saturation,
        rate_40: at40_args.rate,
        server_ms,
        db_ms,
        product_ms: server_ms + db_ms,
        parts,
        rpc_ms,
        floor_ms: 0.0,
        guaranteed_ms: None,
        ratio: 0.0,
        target_ratio: match kind {
            ScenarioKind::Rush => Some(2.0),
            ScenarioKind::Messaging | ScenarioKind::Mixed => Some(2.5),
            _ => None,
        },
        p99_40_ms: p40.latency.p99_ms,
        p99_60_ms: p60.latency.p99_ms,
        send_p99_60_ms: messaging
            .then(|| at60.rpc_service_time.get("consultation.SendMessage"))
            .flatten()
            .map(|l| l.p99_ms),
        delivery_p99_60_ms: at60
            .stream_delivery
            .as_ref()
            .filter(|_| messaging)
            .map(|l| l.p99_ms),
        pg_requests_per_flow,
        redis_requests_per_flow: p40.requests_per_flow("redis"),
        round_trip,
        checks_passed: [&sweep, &at40, &at60, &empty]
            .iter()
            .all(|r| r.checks.iter().all(|c| c.passed)),
        verdict: String::new(),
    };
    Ok((row, vec![sweep, at40, at60, empty]))
}

/// Met or not, and why, against issue 28's targets.
fn verdict(r: &EfficiencyRow, p99_target_ms: f64) -> String {
    let mut missed = Vec::new();
    if let Some(t) = r.target_ratio
        && r.ratio > t
    {
        missed.push(format!("ratio {:.2}× > {t}×", r.ratio));
    }
    match r.scenario.as_str() {
        "signalling" => {
            if r.p99_40_ms >= 5.0 {
                missed.push(format!("relay p99 {:.1} ms ≥ 5 ms", r.p99_40_ms));
            }
        }
        "mixed" => {
            if r.p99_40_ms >= p99_target_ms {
                missed.push(format!("p99 at 40 % {:.1} ms", r.p99_40_ms));
            }
        }
        "messaging" => {
            for (what, v) in [
                ("SendMessage p99 at 60 %", r.send_p99_60_ms),
                ("delivery p99 at 60 %", r.delivery_p99_60_ms),
            ] {
                match v {
                    Some(v) if v < p99_target_ms => {}
                    Some(v) => missed.push(format!("{what} {v:.1} ms")),
                    None => missed.push(format!("{what} not measured")),
                }
            }
        }
        _ => {
            for (what, v) in [("p99 at 40 %", r.p99_40_ms), ("p99 at 60 %", r.p99_60_ms)] {
                if v >= p99_target_ms {
                    missed.push(format!("{what} {v:.1} ms"));
                }
            }
        }
    }
    if !r.checks_passed {
        missed.push("a correctness check failed".into());
    }
    if missed.is_empty() {
        "met".into()
    } else {
        format!("not met: {}", missed.join("; "))
    }
}

/// A part's measurements, as `0.412, 0.398, 0.455`.
fn runs_text(runs: &[f64]) -> String {
    runs.iter()
        .map(|ms| format!("{ms:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn efficiency_markdown(r: &EfficiencyReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Efficiency against the floor ({}, {})\n\nStarted {}; load average {} → {}.\nCommand: `{}`\n",
        r.run.backend, r.run.build, r.started_at, r.loadavg_start, r.loadavg_end, r.command
    );
    let _ = writeln!(
        s,
        "## The floor's database parts\n\nEach part was measured in rounds; the ratio uses the median measurement (its transactions and rate are shown).\n\n| part | transactions | per second | database CPU ms each (median) | every measurement (ms) | how |\n|---|---:|---:|---:|---|---|"
    );
    for u in [
        &r.floor.booking_write,
        &r.floor.message_write,
        &r.floor.read,
    ]
    .into_iter()
    .chain(&r.floor.booking_guaranteed)
    .chain(&r.floor.message_guaranteed)
    {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.3} | {} | `{}` |",
            u.name,
            u.transactions,
            u.per_second,
            u.cpu_ms,
            runs_text(&u.cpu_ms_runs),
            u.command
        );
    }
    let _ = writeln!(
        s,
        "\n## Per scenario\n\n| scenario | saturation (flows/s) | at 40 % (flows/s) | CPU ms/flow: server + DB = product | floor ms/flow (writes, reads, RPCs × ms) | ratio | target | p99 at 40 % / 60 % (ms) | verdict |\n|---|---:|---:|---|---|---:|---:|---|---|"
    );
    for row in &r.rows {
        let p = &row.parts;
        let extra = match (row.send_p99_60_ms, row.delivery_p99_60_ms) {
            (Some(a), Some(b)) => format!("; SendMessage {a:.1}, delivery {b:.1} at 60 %"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2} + {:.2} = **{:.2}** | {:.2} ({:.2} booking + {:.2} message writes, {:.2} reads, {:.2} RPCs × {:.3}) | **{:.2}×** | {} | {:.1} / {:.1}{} | {} |",
            row.scenario,
            row.saturation,
            row.rate_40,
            row.server_ms,
            row.db_ms,
            row.product_ms,
            row.floor_ms,
            p.booking_writes,
            p.message_writes,
            p.reads,
            p.rpcs,
            row.rpc_ms,
            row.ratio,
            row.target_ratio.map_or("—".into(), |t| format!("≤ {t}×")),
            row.p99_40_ms,
            row.p99_60_ms,
            extra,
            row.verdict
        );
    }
    let rows: Vec<_> = r
        .rows
        .iter()
        .filter(|row| row.round_trip.is_some())
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(
            s,
            "\n## Round trips\n\nRequests per flow at 40 %, counted on the wire (data segments the clients sent); the least one round trip to PostgreSQL costs at that run's rate of them (`SELECT 1` on a held connection through the service's pool, CPU of the server's runtime threads and of PostgreSQL + Redis); and what the flow's round trips would cost at that price.\n\n| scenario | PostgreSQL requests/flow | Redis requests/flow | round trips/s measured (wire requests each) | one round trip: client + database CPU µs | round trips' least cost ms/flow | share of product |\n|---|---:|---:|---|---|---:|---:|"
        );
        for row in rows {
            let (Some(rt), Some((ms, share))) = (&row.round_trip, row.round_trips_ms()) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {} | {:.1} | {} | {:.0} of {:.0} ({}) | {:.0} + {:.0} = {:.0} | {:.2} | {:.0} % |",
                row.scenario,
                row.pg_requests_per_flow.unwrap_or(0.0),
                row.redis_requests_per_flow
                    .map_or("–".into(), |n| format!("{n:.1}")),
                rt.per_second,
                rt.offered_per_second,
                rt.wire_per_round_trip
                    .map_or("–".into(), |w| format!("{w:.2}")),
                1000.0 * rt.client_cpu_ms,
                1000.0 * rt.db_cpu_ms,
                1000.0 * (rt.client_cpu_ms + rt.db_cpu_ms),
                ms,
                100.0 * share
            );
        }
    }
    guarantees_markdown(&mut s, r);
    let _ = writeln!(s, "\n## Every phase\n\n{}", report::markdown(&r.run));
    s
}

/// The table of what the guarantees cost: per scenario with writes, the floor, the floor with
/// its writes as the product commits them, and the product, each split into the database's part
/// and the server's.
fn guarantees_markdown(s: &mut String, r: &EfficiencyReport) {
    use std::fmt::Write as _;
    let rows: Vec<_> = r
        .rows
        .iter()
        .filter(|row| row.parts.booking_pairs + row.parts.message_writes > 0.0)
        .filter_map(|row| Some((row, row.guaranteed_ms?)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let f = &r.floor;
    let cost = |u: &Option<floor::Unit>| {
        u.as_ref()
            .map_or("–".into(), |u| format!("{:.3}", u.cpu_ms))
    };
    let _ = writeln!(
        s,
        "\n## What the guarantees cost\n\nThe writes as the product commits them, with the guarantees' rows, in database CPU ms each: a rush flow's HoldSlot and Book {} (the least booking write: {:.3} each); a message write {} (the least: {:.3}). Per flow, in CPU ms (database \\| server = total; the server's part of a floor is its empty calls):\n\n| scenario | floor | floor with the guarantees' rows | product | guarantees: with − floor | the rest: product − with | product / with |\n|---|---|---|---|---:|---:|---:|",
        cost(&f.booking_guaranteed),
        f.booking_write.cpu_ms,
        cost(&f.message_guaranteed),
        f.message_write.cpu_ms
    );
    for (row, with) in rows {
        let rpcs = row.parts.rpcs * row.rpc_ms;
        let split = |total: f64| format!("{:.2} \\| {:.2} = {:.2}", total - rpcs, rpcs, total);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} \\| {:.2} = {:.2} | {:.2} | {:.2} | {:.2}× |",
            row.scenario,
            split(row.floor_ms),
            split(with),
            row.db_ms,
            row.server_ms,
            row.product_ms,
            with - row.floor_ms,
            row.product_ms - with,
            row.product_ms / with.max(1e-9)
        );
    }
}

/// Waits until what seeding set off (the relay publishing its events, the consumers applying
/// them) is done: until the server and PostgreSQL + Redis together use under 10 % of a core for
/// two half-second windows in a row, at most 20 s (open video sessions keep it busier).
pub async fn settle(what: &str) {
    let started = std::time::Instant::now();
    let mut quiet = 0;
    let mut last = 0.0;
    while started.elapsed() < Duration::from_secs(20) && quiet < 2 {
        let Some(snap) = procstat::Snapshot::take() else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let u = snap.usage_until_now();
        last = u.server_cpu_percent.unwrap_or(0.0) + u.db_cpu_percent.unwrap_or(0.0);
        quiet = if last < 10.0 { quiet + 1 } else { 0 };
    }
    eprintln!(
        "econsult-load: {what}: settled after seeding in {:.1} s (server + database at {last:.1} % of a core)",
        started.elapsed().as_secs_f64()
    );
}
