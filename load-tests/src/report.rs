//! Results: JSON, a Markdown summary, and an SVG plot of p99 latency against offered rate.

use crate::engine::{LatencySummary, PhaseResult};
use crate::pgbench::PgbenchResult;
use crate::scenarios::{Check, SeedInfo};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One scenario of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    /// `constant` or `step`.
    pub mode: String,
    pub seed: BTreeMap<String, SeedInfo>,
    pub phases: Vec<PhaseResult>,
    /// Step mode: the highest offered rate whose p99 and error rate met the targets.
    pub highest_sustainable_rate: Option<f64>,
    /// Step mode: why the steps stopped.
    pub step_stop_reason: Option<String>,
    /// Service time of each RPC (send → answer), all phases together.
    pub rpc_service_time: BTreeMap<String, LatencySummary>,
    /// Messaging: message stored → received on a Subscribe stream.
    pub stream_delivery: Option<LatencySummary>,
    /// Messaging: message stored → received on a practice's WatchInbox stream.
    pub inbox_delivery: Option<LatencySummary>,
    /// Messaging: changes received on the WatchInbox streams, by kind.
    pub inbox_changes: BTreeMap<String, u64>,
    pub counters: BTreeMap<String, u64>,
    pub checks: Vec<Check>,
    /// Why the database checks did not run, if they did not.
    pub checks_skipped: Option<String>,
}

impl ScenarioReport {
    /// A line for each check that failed: `scenario: check (detail)`.
    pub fn failed_checks(&self) -> impl Iterator<Item = String> + '_ {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {} ({})", self.scenario, c.name, c.detail))
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub tool: String,
    pub started_at: String,
    pub command: String,
    pub target: String,
    pub backend: String,
    /// `release` or `debug` build of the generator (and of an in-process server).
    pub build: String,
    pub cores: usize,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub connections: usize,
    pub p99_target_ms: f64,
    pub max_error_rate: f64,
    pub scenarios: Vec<ScenarioReport>,
    pub pgbench: Option<PgbenchResult>,
    pub passed: bool,
    pub failures: Vec<String>,
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        "–".into()
    } else {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The Markdown summary.
pub fn markdown(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# econsult load test: {}", r.target);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- started {} · target `{}` (database: {}) · {} build · {} cores · {} HTTP/2 connections",
        r.started_at, r.target, r.backend, r.build, r.cores, r.connections
    );
    let _ = writeln!(s, "- command: `{}`", r.command);
    let _ = writeln!(
        s,
        "- /proc/loadavg at start: `{}`, at end: `{}`",
        r.loadavg_start, r.loadavg_end
    );
    let _ = writeln!(
        s,
        "- latency is measured from each flow's intended start (open loop); a step is sustainable when p99 ≤ {} ms and errors ≤ {} %",
        r.p99_target_ms,
        r.max_error_rate * 100.0
    );
    let _ = writeln!(
        s,
        "- columns: *flows* scheduled (refused by the concurrency cap included); *expected* = outcomes of contention that are not errors (a lost race for a slot); *max lag* = how late the generator started a flow; CPU columns are % of one core over the phase: *server* = the in-process server's threads (or `--server-pid`), *process* = the whole load-test process (generator + in-process server), *PG+Redis* = every `postgres` and `redis-server` process on the machine; *requests per flow* = data segments sent to PostgreSQL's and Redis's ports (from `ss`), per completed flow: their round trips; *SQLite txns/commit* = write transactions per SQLite commit (fsync) of an in-process SQLite server: the mean group of group commit"
    );
    let _ = writeln!(
        s,
        "- result: {}",
        if r.passed {
            "passed".to_owned()
        } else {
            format!("FAILED: {}", r.failures.join("; "))
        }
    );
    for sc in &r.scenarios {
        let _ = writeln!(s);
        let _ = writeln!(s, "## {} ({})", sc.scenario, sc.mode);
        let _ = writeln!(s);
        for (what, seed) in &sc.seed {
            let _ = writeln!(
                s,
                "Seeded ({what}): {} practices, {} GPs, {} patients, {} slots, {} streams, in {:.1} s.",
                seed.practices, seed.gps, seed.patients, seed.slots, seed.subscribers, seed.seconds
            );
        }
        if let Some(rate) = sc.highest_sustainable_rate {
            let _ = writeln!(s);
            let _ = writeln!(s, "**Highest sustainable rate: {rate:.0} flows/s.**");
        } else if sc.mode == "step" {
            let _ = writeln!(s);
            let _ = writeln!(s, "**No step met the targets.**");
        }
        if let Some(reason) = &sc.step_stop_reason {
            let _ = writeln!(s, "Steps stopped: {reason}.");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| offered/s | achieved/s | OK/s | flows | OK | expected | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | max lag ms | server CPU | process CPU | PG+Redis CPU | PG / Redis requests per flow | server RSS MiB | SQLite txns/commit | load avg | pass |"
        );
        let _ = writeln!(
            s,
            "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
        );
        for p in &sc.phases {
            let res = p.resources.as_ref();
            let _ = writeln!(
                s,
                "| {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.offered_rate,
                p.achieved_rate,
                p.ok_rate,
                p.scheduled,
                p.ok,
                counts(&p.expected),
                if p.error_count == 0 {
                    "0".to_owned()
                } else {
                    format!(
                        "{} ({:.2} %): {}",
                        p.error_count,
                        p.error_rate * 100.0,
                        counts(&p.errors)
                    )
                },
                ms(p.latency.p50_ms),
                ms(p.latency.p90_ms),
                ms(p.latency.p99_ms),
                ms(p.latency.p999_ms),
                ms(p.latency.max_ms),
                ms(p.max_schedule_lag_ms),
                res.and_then(|u| u.server_cpu_percent)
                    .map_or("–".into(), |c| format!("{c:.0} %")),
                res.map_or("–".into(), |u| format!(
                    "{:.0} %",
                    100.0 * u.process_cpu_s / u.wall_s.max(1e-3)
                )),
                res.and_then(|u| u.db_cpu_percent)
                    .map_or("–".into(), |c| format!("{c:.0} %")),
                p.requests_per_flow("postgres")
                    .zip(p.requests_per_flow("redis"))
                    .map_or("–".into(), |(pg, redis)| format!("{pg:.1} / {redis:.1}")),
                res.and_then(|u| u.server_rss_mib)
                    .map_or("–".into(), |m| format!("{m:.0}")),
                res.and_then(|u| u.sqlite_commits.zip(u.sqlite_write_transactions))
                    .filter(|(c, _)| *c > 0)
                    .map_or("–".into(), |(c, t)| format!("{:.2}", t as f64 / c as f64)),
                res.map_or("–".into(), |u| u
                    .loadavg
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")),
                match p.passed {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "",
                }
            );
        }
        let samples: BTreeMap<&String, &String> = sc
            .phases
            .iter()
            .flat_map(|p| p.error_samples.iter())
            .collect();
        if !samples.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "Errors by code (one example each):");
            for (code, msg) in samples {
                let _ = writeln!(s, "- `{code}`: {msg}");
            }
        }
        if !sc.rpc_service_time.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "Service time per RPC (send → answer, all phases):");
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| RPC | calls | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
            for (rpc, l) in &sc.rpc_service_time {
                let _ = writeln!(
                    s,
                    "| {rpc} | {} | {} | {} | {} | {} | {} |",
                    l.count,
                    ms(l.p50_ms),
                    ms(l.p90_ms),
                    ms(l.p99_ms),
                    ms(l.p999_ms),
                    ms(l.max_ms)
                );
            }
        }
        if let Some(d) = &sc.stream_delivery {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "Subscribe delivery (stored → received): {} messages, p50 {} ms, p99 {} ms, max {} ms.",
                d.count,
                ms(d.p50_ms),
                ms(d.p99_ms),
                ms(d.max_ms)
            );
        }
        if let Some(d) = &sc.inbox_delivery {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "WatchInbox delivery (stored → received): {} messages, p50 {} ms, p99 {} ms, max {} ms; changes received: {}.",
                d.count,
                ms(d.p50_ms),
                ms(d.p99_ms),
                ms(d.max_ms),
                counts(&sc.inbox_changes)
            );
        }
        if !sc.counters.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "Counters: {}.", counts(&sc.counters));
        }
        let _ = writeln!(s);
        if let Some(why) = &sc.checks_skipped {
            let _ = writeln!(s, "Database checks skipped: {why}.");
        }
        for c in &sc.checks {
            let _ = writeln!(
                s,
                "- [{}] {}: {}",
                if c.passed { "x" } else { " " },
                c.name,
                c.detail
            );
        }
    }
    if let Some(pg) = &r.pgbench {
        let _ = writeln!(s);
        let _ = writeln!(s, "## pgbench baseline");
        let _ = writeln!(s);
        match pg.tps {
            Some(tps) => {
                let _ = writeln!(
                    s,
                    "Raw booking transaction (conditional UPDATE of a slot + INSERT of the appointment, `load-tests/pgbench/booking.sql`): **{tps:.0} TPS** with {} clients for {} s ({}).",
                    pg.clients, pg.seconds, pg.note
                );
                let best: Option<f64> = r
                    .scenarios
                    .iter()
                    .filter(|sc| sc.scenario == "rush")
                    .filter_map(|sc| sc.highest_sustainable_rate)
                    .reduce(f64::max);
                if let Some(b) = best {
                    let _ = writeln!(
                        s,
                        "Sustainable booking flows/s of this run: {b:.0} = {:.1} % of the raw pgbench rate.",
                        100.0 * b / tps
                    );
                }
            }
            None => {
                let _ = writeln!(s, "Not run: {}.", pg.note);
            }
        }
        let _ = writeln!(s, "Command: `{}`", pg.command);
    }
    s
}

/// An SVG of p99 latency (log scale) against offered rate (log₂ scale), one line per step
/// scenario, with the p99 target as a dashed line. None when no scenario ran in step mode.
pub fn svg(r: &RunReport) -> Option<String> {
    type Point = (f64, f64, Option<bool>);
    let series: Vec<(&str, Vec<Point>)> = r
        .scenarios
        .iter()
        .filter(|sc| sc.mode == "step" && !sc.phases.is_empty())
        .map(|sc| {
            (
                sc.scenario.as_str(),
                sc.phases
                    .iter()
                    .map(|p| (p.offered_rate, p.latency.p99_ms.max(0.01), p.passed))
                    .collect(),
            )
        })
        .collect();
    if series.is_empty() {
        return None;
    }
    let (w, h) = (760.0, 460.0);
    let (left, right, top, bottom) = (80.0, 30.0, 50.0, 70.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .chain([r.p99_target_ms])
        .collect();
    let xmin = xs
        .iter()
        .cloned()
        .fold(f64::MAX, f64::min)
        .max(1.0)
        .log2()
        .floor();
    let mut xmax = xs
        .iter()
        .cloned()
        .fold(0.0, f64::max)
        .max(1.0)
        .log2()
        .ceil();
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let ymin = ys
        .iter()
        .cloned()
        .fold(f64::MAX, f64::min)
        .log10()
        .floor()
        .min(0.0);
    let mut ymax = ys.iter().cloned().fold(0.0, f64::max).log10().ceil();
    if ymax <= ymin {
        ymax = ymin + 1.0;
    }
    let px = |x: f64| left + (x.log2() - xmin) / (xmax - xmin) * pw;
    let py = |y: f64| top + ph - (y.log10() - ymin) / (ymax - ymin) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">p99 latency vs offered rate — {} ({} build, {} cores)</text>"#,
        w / 2.0,
        r.target,
        r.build,
        r.cores
    );
    // Grid and tick labels.
    let mut e = xmin;
    while e <= xmax + 1e-9 {
        let x = px(2f64.powf(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"##,
            top + ph,
            top + ph + 18.0,
            2f64.powf(e)
        );
        e += 1.0;
    }
    let mut e = ymin;
    while e <= ymax + 1e-9 {
        let y = py(10f64.powf(e));
        let label = 10f64.powf(e);
        let label = if label < 1.0 {
            format!("{label}")
        } else {
            format!("{label:.0}")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered rate (flows/s, log scale)</text>"#,
        left + pw / 2.0,
        h - 25.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">p99 latency (ms, log scale)</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let ty = py(r.p99_target_ms);
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#c00" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#c00" text-anchor="end">p99 target {} ms</text>"##,
        left + pw,
        left + pw - 4.0,
        ty - 5.0,
        r.p99_target_ms
    );
    let colors = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y, _)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y, passed) in pts {
            let fill = if passed == &Some(false) {
                "white"
            } else {
                color
            };
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{color}" stroke-width="2"><title>{name}: {x:.0}/s → p99 {y:.2} ms</title></circle>"#,
                px(*x),
                py(*y)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{color}">● {name} (hollow: step missed the targets)</text>"#,
            left + 10.0,
            top + 18.0 + 16.0 * i as f64
        );
    }
    let _ = writeln!(s, "</svg>");
    Some(s)
}
