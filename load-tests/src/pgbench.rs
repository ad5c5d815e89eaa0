//! Optional raw-database baseline: pgbench runs the SQL of a booking transaction
//! (`load-tests/pgbench/booking.sql`) against a scratch database that has the real schema (the
//! embedded migrations) and many free slots. Skipped with a note when pgbench is missing.

use crate::target::{require_loopback, url_host, url_port};
use anyhow::Context as _;
use serde::Serialize;
use std::time::Duration;

/// The script, shipped with the crate.
pub const SCRIPT: &str = include_str!("../pgbench/booking.sql");

/// What pgbench measured.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchResult {
    pub tps: Option<f64>,
    pub transactions: Option<u64>,
    pub clients: u32,
    pub seconds: u64,
    pub slots: u64,
    /// Appointments the run inserted, and whether any slot got two.
    pub appointments: Option<i64>,
    pub double_booked_slots: Option<i64>,
    pub note: String,
    pub command: String,
}

/// pgbench on PATH.
pub fn find_pgbench() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("pgbench"))
        .find(|p| p.is_file())
}

/// One pgbench run of `script`: the command and the script's temporary file, which lives as
/// long as this does.
pub struct Invocation {
    pub cmd: tokio::process::Command,
    _script: tempfile::TempPath,
}

/// pgbench (`pgbench`, from [`find_pgbench`]) running `script` against `database` on the
/// server of `admin_url`: prepared statements, no vacuum, the run's `options` (clients,
/// duration, `-D` variables), then the connection's options; its password, if any, in the
/// environment.
pub fn command(
    pgbench: &std::path::Path,
    script: &str,
    admin_url: &str,
    database: &str,
    options: &[String],
) -> std::io::Result<Invocation> {
    use std::io::Write as _;
    let mut file = tempfile::Builder::new().suffix(".sql").tempfile()?;
    file.write_all(script.as_bytes())?;
    let path = file.into_temp_path();
    let (host, port, user, password) = connection(admin_url);
    let mut cmd = tokio::process::Command::new(pgbench);
    cmd.args(["-n", "-M", "prepared"])
        .args(options)
        .arg("-f")
        .arg(&path)
        .args(["-p", &port, "-U", &user]);
    if !host.is_empty() {
        cmd.args(["-h", &host]);
    }
    cmd.arg(database);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    Ok(Invocation { cmd, _script: path })
}

/// (host, port, user, password) of a PostgreSQL URL, for pgbench's options.
pub fn connection(url: &str) -> (String, String, String, Option<String>) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let userinfo = authority.rsplit_once('@').map_or("", |(u, _)| u);
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
        None => (userinfo.to_owned(), None),
    };
    let port = url_port(url).unwrap_or(5432).to_string();
    let user = if user.is_empty() {
        "postgres".into()
    } else {
        user
    };
    (url_host(url), port, user, password)
}

/// (tps, transactions processed) from pgbench's report.
pub fn parse_output(stdout: &str) -> (Option<f64>, Option<u64>) {
    let tps = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("tps = "))
        .and_then(|l| {
            l.trim_start()
                .trim_start_matches("tps = ")
                .split_whitespace()
                .next()
        })
        .and_then(|v| v.parse().ok());
    let transactions = stdout
        .lines()
        .find(|l| l.contains("number of transactions actually processed"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().split('/').next())
        .and_then(|v| v.trim().parse().ok());
    (tps, transactions)
}

/// Runs the baseline against a fresh database next to `admin_url`'s.
pub async fn run(admin_url: &str, seconds: u64, clients: u32) -> anyhow::Result<PgbenchResult> {
    require_loopback("--pgbench-url", admin_url)?;
    let slots: u64 = 1_000_000;
    let mut result = PgbenchResult {
        tps: None,
        transactions: None,
        clients,
        seconds,
        slots,
        appointments: None,
        double_booked_slots: None,
        note: String::new(),
        command: String::new(),
    };
    let Some(pgbench) = find_pgbench() else {
        result.note = "pgbench is not installed (Debian: apt-get install postgresql-contrib or postgresql-client)".into();
        return Ok(result);
    };
    let name = format!(
        "econsult_pgbench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let url = econsult_runtime::db::create_database(admin_url, &name)
        .await
        .context("create the pgbench database")?;
    let outcome = async {
        let db = econsult_runtime::db::Db::connect(&url).await?;
        db.migrate().await?;
        let pool = db.read().clone();
        sqlx::query(
            "INSERT INTO booking_gps (gp_uid, org_number, gp_id, hpr_number, display_name, municipality_number, list_capacity, list_status, updated_at) \
             VALUES ('pgb-gp', '999999999', 'pgb', '1', 'pgbench', '0301', 2500, 1, 0)",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "INSERT INTO booking_slots (slot_id, gp_uid, start_at, end_at, modality, acute_reserve, status, created_at) \
             SELECT 'pgb-' || i, 'pgb-gp', 4000000000000 + i * 60000, 4000000000000 + i * 60000 + 60000, 1, 0, 1, 0 \
             FROM generate_series(1, $1::bigint) AS i",
        )
        .bind(slots as i64)
        .execute(&pool)
        .await?;
        sqlx::query("ANALYZE").execute(&pool).await?;
        let mut run = command(
            &pgbench,
            SCRIPT,
            admin_url,
            &name,
            &[
                format!("-c{clients}"),
                "-j2".into(),
                format!("-T{seconds}"),
                format!("-Dnslots={slots}"),
            ],
        )?;
        let (host, port, user, _) = connection(admin_url);
        result.command = format!(
            "pgbench -n -M prepared -c {clients} -j 2 -T {seconds} -D nslots={slots} -f load-tests/pgbench/booking.sql -h {host} -p {port} -U {user} <scratch db>"
        );
        let out = tokio::time::timeout(
            Duration::from_secs(seconds + 60),
            run.cmd.kill_on_drop(true).output(),
        )
        .await
        .context("pgbench did not finish")??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            anyhow::bail!(
                "pgbench failed: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (result.tps, result.transactions) = parse_output(&stdout);
        use sqlx::Row as _;
        let row = sqlx::query("SELECT COUNT(*) FROM booking_appointments")
            .fetch_one(&pool)
            .await?;
        result.appointments = Some(row.try_get(0)?);
        let row = sqlx::query(
            "SELECT COUNT(*) FROM (SELECT slot_id FROM booking_appointments WHERE status <> 4 GROUP BY slot_id HAVING COUNT(*) > 1) d",
        )
        .fetch_one(&pool)
        .await?;
        result.double_booked_slots = Some(row.try_get(0)?);
        db.close().await;
        result.note = format!(
            "prepared statements, {} slots, scratch database with the real schema",
            slots
        );
        anyhow::Ok(())
    }
    .await;
    econsult_runtime::db::drop_database(admin_url, &name).await;
    outcome?;
    Ok(result)
}
