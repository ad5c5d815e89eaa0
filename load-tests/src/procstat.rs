//! CPU time and memory of the server from /proc (Linux).
//!
//! In-process targets run the server on its own tokio runtime whose threads are named `srv-*`
//! (SQLite's connection threads are `sqlx-sqlite-worker-*`), and the generator on `gen-*`
//! threads, so the server's CPU time is the sum over its threads in /proc/self/task. A thread
//! that exited during the phase (an idle blocking-pool thread) takes its time with it, so the
//! server figure is a lower bound; the process figure (generator + server) is exact. RSS is the
//! whole process's. With `--server-pid`, the external server's /proc/<pid> is read instead.
//!
//! Round trips are counted on the wire: `ss` reports each TCP connection's data segments, and
//! the segments the clients of PostgreSQL and Redis sent (every connection whose peer is their
//! port) are their requests. A request is one segment on loopback (64 KiB MSS) unless a client
//! pipelines several into one write; a connection that closed between two snapshots takes its
//! count with it, so the figure is a lower bound, as the server's CPU is.

use serde::Serialize;
use std::sync::OnceLock;
use std::time::Instant;

/// Clock ticks per second of /proc times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// Where the server runs.
#[derive(Debug, Clone, Copy)]
pub enum ServerProc {
    /// In this process, on threads named `srv-*` / `sqlx-sqlite-*`.
    InProcess,
    /// Another process.
    Pid(u32),
    /// Unknown: no server figures.
    Unknown,
}

static SERVER: OnceLock<ServerProc> = OnceLock::new();

/// Sets where the server runs (once, before the first phase).
pub fn set_server(p: ServerProc) {
    let _ = SERVER.set(p);
}

type CommitCounts = Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;
static COMMIT_COUNTS: OnceLock<CommitCounts> = OnceLock::new();

/// Sets where an in-process SQLite server's commit counts come from (see
/// `econsult_runtime::db::Db::commit_counts`).
pub fn set_commit_counts(f: CommitCounts) {
    let _ = COMMIT_COUNTS.set(f);
}

fn commit_counts() -> Option<(u64, u64)> {
    COMMIT_COUNTS.get().and_then(|f| f())
}

/// A peer whose requests are counted on the wire: its name and its TCP port.
#[derive(Debug, Clone)]
pub struct WirePeer {
    pub name: &'static str,
    pub port: u16,
}

static WIRE_PEERS: OnceLock<Vec<WirePeer>> = OnceLock::new();

/// Sets the peers whose requests every snapshot counts (once, before the first phase).
pub fn set_wire_peers(peers: Vec<WirePeer>) {
    let _ = WIRE_PEERS.set(peers);
}

/// (peer port, data segments sent) of every established TCP connection, from `ss -tinH`: each
/// connection is a line with its addresses and a line with its counters.
pub fn parse_ss(out: &str) -> Vec<(u16, u64)> {
    let mut conns = Vec::new();
    let mut peer = None;
    for line in out.lines() {
        if !line.starts_with([' ', '\t']) {
            // `Recv-Q Send-Q Local:Port Peer:Port`; an IPv6 address is bracketed.
            peer = line
                .split_whitespace()
                .nth(3)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, port)| port.parse::<u16>().ok());
            continue;
        }
        let Some(port) = peer.take() else { continue };
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        conns.push((port, field("data_segs_out:")));
    }
    conns
}

/// Requests (data segments sent by clients) per peer, in the order of `set_wire_peers`.
fn wire_counts() -> Option<Vec<u64>> {
    let peers = WIRE_PEERS.get().filter(|p| !p.is_empty())?;
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let conns = parse_ss(&String::from_utf8_lossy(&out.stdout));
    Some(
        peers
            .iter()
            .map(|p| {
                conns
                    .iter()
                    .filter(|(port, _)| *port == p.port)
                    .map(|(_, out)| out)
                    .sum()
            })
            .collect(),
    )
}

fn server() -> ServerProc {
    *SERVER.get().unwrap_or(&ServerProc::Unknown)
}

/// Thread-name prefixes of the in-process server.
pub fn is_server_thread(comm: &str) -> bool {
    comm.starts_with("srv-") || comm.starts_with("sqlx-sqlite")
}

/// (comm, utime + stime ticks) of a /proc stat file.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_owned();
    // Fields after the comm start with field 3 (state); utime is field 14, stime 15.
    let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// As [`stat_ticks`], plus the time of the process's children that exited and were waited for
/// (cutime + cstime, fields 16 and 17): PostgreSQL's postmaster collects the time of every
/// backend that ended, such as a pgbench client's.
fn stat_ticks_with_children(path: &str) -> Option<(String, u64)> {
    let (comm, own) = stat_ticks(path)?;
    let s = std::fs::read_to_string(path).ok()?;
    let rest: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    let cutime: u64 = rest.get(13)?.parse().ok()?;
    let cstime: u64 = rest.get(14)?.parse().ok()?;
    Some((comm, own + cutime + cstime))
}

/// CPU ticks of this process's threads whose name `keep` accepts.
fn threads_ticks(keep: impl Fn(&str) -> bool) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let entry = entry.ok()?;
        let path = format!("{}/stat", entry.path().display());
        if let Some((comm, ticks)) = stat_ticks(&path)
            && keep(&comm)
        {
            total += ticks;
        }
    }
    Some(total)
}

fn server_threads_ticks() -> Option<u64> {
    threads_ticks(is_server_thread)
}

/// CPU seconds so far of this process's threads whose name starts with `prefix` (living ones:
/// a thread that exited takes its time with it).
pub fn threads_cpu_s(prefix: &str) -> Option<f64> {
    threads_ticks(|comm| comm.starts_with(prefix)).map(|t| t as f64 / TICKS)
}

/// CPU ticks of every process on the machine named `postgres` or `redis-server` (the database
/// and event bus of a PostgreSQL target; other users of the same servers are included), with
/// those of their children that ended (connections closed during the phase).
fn db_ticks() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some((comm, ticks)) = stat_ticks_with_children(&format!("/proc/{name}/stat"))
            && (comm == "postgres" || comm == "redis-server")
        {
            total += ticks;
        }
    }
    Some(total)
}

/// (VmRSS, VmHWM) in MiB of `/proc/<who>/status`.
pub fn memory_mib(who: &str) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The 1-minute load average and the whole /proc/loadavg line.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Counters at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    process_ticks: u64,
    server_ticks: Option<u64>,
    db_ticks: Option<u64>,
    commits: Option<(u64, u64)>,
    wire: Option<Vec<u64>>,
}

/// Requests sent to one peer during a phase, counted on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct WireRequests {
    pub peer: String,
    pub requests: u64,
}

/// Resource use between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// CPU seconds of the load generator's process (with an in-process server: both).
    pub process_cpu_s: f64,
    /// CPU seconds of the server (in-process: its threads; external: its process).
    pub server_cpu_s: Option<f64>,
    /// Server CPU as a percentage of one core.
    pub server_cpu_percent: Option<f64>,
    /// CPU of all `postgres` and `redis-server` processes on the machine, as a percentage of one
    /// core (other users of the same servers included).
    pub db_cpu_percent: Option<f64>,
    /// Resident memory of the server's process at the end (MiB).
    pub server_rss_mib: Option<f64>,
    /// Peak resident memory of the server's process so far (MiB).
    pub server_rss_peak_mib: Option<f64>,
    /// /proc/loadavg at the end of the phase.
    pub loadavg: String,
    /// In-process SQLite: commits (fsyncs) during the phase.
    pub sqlite_commits: Option<u64>,
    /// In-process SQLite: write transactions those commits made durable (group commit).
    pub sqlite_write_transactions: Option<u64>,
    /// Requests sent to PostgreSQL and Redis (see the module's doc), when `ss` is there.
    pub wire: Vec<WireRequests>,
}

impl Usage {
    /// Requests sent to `peer` during the phase.
    pub fn requests_to(&self, peer: &str) -> Option<u64> {
        self.wire
            .iter()
            .find(|w| w.peer == peer)
            .map(|w| w.requests)
    }
}

impl Snapshot {
    /// Reads the counters now (None off Linux).
    pub fn take() -> Option<Self> {
        let (_, process_ticks) = stat_ticks("/proc/self/stat")?;
        let server_ticks = match server() {
            ServerProc::InProcess => server_threads_ticks(),
            ServerProc::Pid(pid) => stat_ticks(&format!("/proc/{pid}/stat")).map(|(_, t)| t),
            ServerProc::Unknown => None,
        };
        Some(Self {
            at: Instant::now(),
            process_ticks,
            server_ticks,
            db_ticks: db_ticks(),
            commits: commit_counts(),
            wire: wire_counts(),
        })
    }

    /// Usage from this snapshot until now.
    pub fn usage_until_now(&self) -> Usage {
        let now = Snapshot::take().unwrap_or_else(|| self.clone());
        let wall_s = now.at.duration_since(self.at).as_secs_f64();
        let server_cpu_s = match (self.server_ticks, now.server_ticks) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / TICKS),
            _ => None,
        };
        let mem = match server() {
            ServerProc::InProcess => memory_mib("self"),
            ServerProc::Pid(pid) => memory_mib(&pid.to_string()),
            ServerProc::Unknown => None,
        };
        Usage {
            wall_s,
            process_cpu_s: now.process_ticks.saturating_sub(self.process_ticks) as f64 / TICKS,
            server_cpu_s,
            server_cpu_percent: server_cpu_s.map(|c| 100.0 * c / wall_s.max(1e-3)),
            db_cpu_percent: match (self.db_ticks, now.db_ticks) {
                (Some(a), Some(b)) if b > a => {
                    Some(100.0 * (b - a) as f64 / TICKS / wall_s.max(1e-3))
                }
                _ => None,
            },
            server_rss_mib: mem.map(|m| m.0),
            server_rss_peak_mib: mem.map(|m| m.1),
            loadavg: loadavg(),
            sqlite_commits: self.commits.zip(now.commits).map(|(a, b)| b.0 - a.0),
            sqlite_write_transactions: self.commits.zip(now.commits).map(|(a, b)| b.1 - a.1),
            wire: match (&self.wire, &now.wire, WIRE_PEERS.get()) {
                (Some(a), Some(b), Some(peers)) => peers
                    .iter()
                    .zip(a.iter().zip(b))
                    .map(|(p, (a, b))| WireRequests {
                        peer: p.name.into(),
                        requests: b.saturating_sub(*a),
                    })
                    .collect(),
                _ => Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_lines_give_each_connections_peer_port_and_segments() {
        let out = "0      0      127.0.0.1:52450 127.0.0.1:5432\n\t bbr wscale:10,10 segs_out:9 segs_in:8 data_segs_out:6 data_segs_in:4 send 8bps\n\
                   0      0      [::1]:41000 [::1]:6379\n\t cubic data_segs_out:17 data_segs_in:15\n\
                   0      0      127.0.0.1:5432 127.0.0.1:52450\n\t cubic data_segs_in:6\n";
        assert_eq!(parse_ss(out), vec![(5432, 6), (6379, 17), (52450, 0)]);
    }
}
