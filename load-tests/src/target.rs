//! The system under test: started in this process (SQLite, or PostgreSQL + Redis with a fresh
//! database per run) or an external server on a loopback address.

use anyhow::{Context as _, bail};
use econsult::{Application, Config};
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use sqlx::AnyPool;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::runtime::Handle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// True for `localhost`, 127.0.0.0/8 and ::1 (with or without brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host of a URL like `scheme://user:pass@host:port/path?query` (empty for a Unix socket).
pub fn url_host(url: &str) -> String {
    let hostport = url_host_port(url);
    if let Some(stripped) = hostport.strip_prefix('[') {
        return stripped.split(']').next().unwrap_or("").to_owned();
    }
    hostport.split(':').next().unwrap_or("").to_owned()
}

/// The `host:port` of a URL (`[v6]:port` for IPv6): what follows the scheme and the user,
/// before the path and the query.
fn url_host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// The port a URL names, if it names one.
pub fn url_port(url: &str) -> Option<u16> {
    let hostport = url_host_port(url);
    let after_host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => hostport,
    };
    after_host.rsplit_once(':')?.1.parse().ok()
}

/// Refuses a URL whose host is not a loopback address (an empty host is a local socket).
pub fn require_loopback(what: &str, url: &str) -> anyhow::Result<()> {
    let host = url_host(url);
    if host.is_empty() || is_loopback_host(&host) {
        Ok(())
    } else {
        bail!(
            "{what} {url:?}: only loopback addresses (127.0.0.0/8, ::1, localhost) may be load-tested"
        )
    }
}

/// How to reach the system.
pub enum Spec {
    EmbeddedSqlite,
    EmbeddedPostgres {
        admin_url: String,
        redis_url: String,
        keep_database: bool,
    },
    External {
        addr: String,
        data_dir: PathBuf,
        check_database_url: Option<String>,
    },
}

/// A running system under test.
pub struct Target {
    /// `embedded-sqlite`, `embedded-postgres` or `external`.
    pub label: String,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    pub keys: DevKeys,
    app: Option<Application>,
    server: Option<Handle>,
    _dir: Option<tempfile::TempDir>,
    check_pool: Option<AnyPool>,
    /// Database of the run (PostgreSQL: created for it) and how to drop it.
    pg: Option<(String, String, bool)>,
    redis: Option<(String, String)>,
    /// Backend of the checked database (`sqlite` / `postgres`).
    pub backend: String,
}

impl Target {
    /// Starts or connects. In-process servers are started on `server` (their own runtime).
    pub async fn start(
        spec: Spec,
        server: Handle,
        db_max_connections: u32,
        services: &[econsult::ServiceKind],
    ) -> anyhow::Result<Self> {
        let setup = (db_max_connections, services);
        match spec {
            Spec::EmbeddedSqlite => Self::in_process(None, None, false, server, setup).await,
            Spec::EmbeddedPostgres {
                admin_url,
                redis_url,
                keep_database,
            } => {
                require_loopback("--database-url", &admin_url)?;
                require_loopback("--redis-url", &redis_url)?;
                Self::in_process(
                    Some(admin_url),
                    Some(redis_url),
                    keep_database,
                    server,
                    setup,
                )
                .await
            }
            Spec::External {
                addr,
                data_dir,
                check_database_url,
            } => {
                let uri: tonic::transport::Uri = addr.parse().context("--addr")?;
                let host = uri.host().unwrap_or("");
                if !is_loopback_host(host) {
                    bail!("--addr {addr}: only loopback addresses may be load-tested");
                }
                let key = data_dir.join("dev-signing-key.b64");
                if !key.exists() {
                    bail!(
                        "{} not found: --data-dir must be the server's data directory (its dev key signs the tokens)",
                        key.display()
                    );
                }
                let keys = DevKeys::load_or_create(&data_dir)?;
                let sqlite = data_dir.join("econsult.db");
                let check_url = match check_database_url {
                    Some(u) => Some(u),
                    None if sqlite.exists() => {
                        Some(format!("sqlite://{}?mode=ro", sqlite.display()))
                    }
                    None => None,
                };
                let (check_pool, backend) = match check_url {
                    Some(u) => {
                        require_loopback("--check-database-url", &u)?;
                        sqlx::any::install_default_drivers();
                        let pool = sqlx::any::AnyPoolOptions::new()
                            .max_connections(2)
                            .connect(&u)
                            .await
                            .with_context(|| format!("connect to {u} for the checks"))?;
                        let backend = if u.starts_with("sqlite") {
                            "sqlite"
                        } else {
                            "postgres"
                        };
                        (Some(pool), backend.to_owned())
                    }
                    None => (None, "unknown".to_owned()),
                };
                Ok(Self {
                    label: "external".into(),
                    addr,
                    keys,
                    app: None,
                    server: None,
                    _dir: None,
                    check_pool,
                    pg: None,
                    redis: None,
                    backend,
                })
            }
        }
    }

    async fn in_process(
        admin_url: Option<String>,
        redis_url: Option<String>,
        keep_database: bool,
        server: Handle,
        (db_max_connections, services): (u32, &[econsult::ServiceKind]),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("econsult-load-")
            .tempdir()
            .context("temp data dir")?;
        let keys = DevKeys::load_or_create(dir.path())?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let mut config = Config::embedded(dir.path().to_path_buf());
        config.shutdown_grace = Duration::from_secs(5);
        config.db_max_connections = db_max_connections;
        config.services = services.to_vec();
        config.instance_id = format!("econsult-load-{}", &run[..8]);
        let mut pg = None;
        let mut redis = None;
        if let Some(admin) = &admin_url {
            let name = format!("econsult_load_{}", &run[..16]);
            config.database_url = Some(
                econsult_runtime::db::create_database(admin, &name)
                    .await
                    .context("create the run's database")?,
            );
            pg = Some((admin.clone(), name, keep_database));
        }
        if let Some(r) = &redis_url {
            let ns = format!("econsult-load-{}", &run[..16]);
            config.redis_url = Some(r.clone());
            config.redis_namespace = ns.clone();
            redis = Some((r.clone(), ns));
        }
        let label = if admin_url.is_some() {
            "embedded-postgres"
        } else {
            "embedded-sqlite"
        };
        let backend = if admin_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        };
        let app = server
            .spawn(async move { Application::start(config).await })
            .await
            .context("server task")?
            .context("start the application")?;
        crate::procstat::set_server(crate::procstat::ServerProc::InProcess);
        let db = app.platform().db.clone();
        crate::procstat::set_commit_counts(Box::new(move || db.commit_counts()));
        let addr = format!("http://{}", app.local_addr());
        let check_pool = Some(app.platform().db.read().clone());
        Ok(Self {
            label: label.into(),
            addr,
            keys,
            app: Some(app),
            server: Some(server),
            _dir: Some(dir),
            check_pool,
            pg,
            redis,
            backend: backend.into(),
        })
    }

    /// `n` HTTP/2 connections to the server.
    pub async fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let ch = Channel::from_shared(self.addr.clone())?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connect to {}", self.addr))?;
            out.push(ch);
        }
        Ok(out)
    }

    fn bearer(&self, spec: &TokenSpec) -> anyhow::Result<MetadataValue<Ascii>> {
        let now = chrono::Utc::now().timestamp();
        let token = self.keys.mint(spec, now - 5, 4 * 3600)?;
        Ok(format!("Bearer {token}").parse()?)
    }

    /// An `authorization` value for a patient.
    pub fn patient(&self, nin: &str) -> anyhow::Result<MetadataValue<Ascii>> {
        self.bearer(&TokenSpec::Patient {
            nin: nin.into(),
            acr: REQUIRED_ACR.into(),
        })
    }

    /// An `authorization` value for the EHR of `org` (booking and consultation scopes).
    pub fn ehr(&self, org: &str) -> anyhow::Result<MetadataValue<Ascii>> {
        self.bearer(&TokenSpec::Ehr {
            client_id: format!("load-epj-{org}"),
            org_number: org.into(),
            scopes: vec![
                "econsult:booking.read".into(),
                "econsult:booking.write".into(),
                "econsult:consultation.read".into(),
                "econsult:consultation.write".into(),
            ],
        })
    }

    /// An `authorization` value for a clinician (HelseID-style) of `org`.
    pub fn clinician(&self, hpr: &str, org: &str) -> anyhow::Result<MetadataValue<Ascii>> {
        self.bearer(&TokenSpec::Clinician {
            hpr_number: hpr.into(),
            org_number: org.into(),
            scopes: vec![],
        })
    }

    /// True when the correctness checks can read the database.
    pub fn can_check(&self) -> bool {
        self.check_pool.is_some()
    }

    /// Runs `sql` and returns the first column of each row as a string (COUNT(*) as a number).
    pub async fn query_strings(&self, sql: &str) -> anyhow::Result<Vec<String>> {
        let Some(pool) = self.check_pool.clone() else {
            bail!("no database to check");
        };
        let sql = sql.to_owned();
        let work = async move {
            use sqlx::Row as _;
            let rows = sqlx::query(&sql).fetch_all(&pool).await?;
            rows.iter()
                .map(|r| {
                    r.try_get::<String, _>(0)
                        .or_else(|_| r.try_get::<i64, _>(0).map(|v| v.to_string()))
                        .map_err(anyhow::Error::from)
                })
                .collect::<anyhow::Result<Vec<String>>>()
        };
        match &self.server {
            // The pool belongs to the server's runtime: query there.
            Some(h) => h.spawn(work).await?,
            None => work.await,
        }
    }

    /// Gathers the planner's statistics of an in-process server's database (`ANALYZE`), as
    /// autovacuum (PostgreSQL) would have long before a real Monday rush; without them the first
    /// plans, generic ones included, are made on guesses. False when there is nothing to analyze
    /// (an external server).
    pub async fn analyze(&self) -> anyhow::Result<bool> {
        let (Some(app), Some(h)) = (&self.app, &self.server) else {
            return Ok(false);
        };
        // SQLite: the writer (the read pool is read-only); PostgreSQL: the one pool.
        let pool = app.platform().db.writer().clone();
        h.spawn(async move { sqlx::query("ANALYZE").execute(&pool).await })
            .await??;
        Ok(true)
    }

    /// `SELECT COUNT(*) …` as a number.
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let rows = self.query_strings(sql).await?;
        rows.first()
            .context("no row")?
            .parse()
            .context("count is not a number")
    }

    /// Keeps the run's database at [`Target::shutdown`] (a check failed: what it counted can
    /// then be looked at): PostgreSQL's (the shutdown prints its name), or the in-process
    /// server's data directory with its SQLite file (printed here).
    pub fn keep_database(&mut self) {
        if let Some((_, _, keep)) = &mut self.pg {
            *keep = true;
        } else if let Some(dir) = self._dir.take() {
            eprintln!(
                "econsult-load: kept the data directory {} (remove it when done)",
                dir.keep().display()
            );
        }
    }

    /// Stops an in-process server and drops the run's database (unless kept) and Redis keys.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.check_pool = None;
        if let (Some(app), Some(h)) = (self.app.take(), &self.server) {
            h.spawn(async move { app.stop().await }).await??;
        }
        if let Some((admin, name, keep)) = self.pg.take() {
            if keep {
                eprintln!("econsult-load: kept database {name} (drop it when done)");
            } else {
                econsult_runtime::db::drop_database(&admin, &name).await;
            }
        }
        if let Some((url, ns)) = self.redis.take()
            && let Err(e) = drop_redis_namespace(&url, &ns).await
        {
            eprintln!("could not remove the Redis keys {ns}:*: {e:#}");
        }
        Ok(())
    }
}

async fn drop_redis_namespace(url: &str, ns: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*"))
        .query_async(&mut con)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut con)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_port_is_read_after_its_host() {
        assert_eq!(
            url_port("postgres://postgres@127.0.0.1:5433/postgres"),
            Some(5433)
        );
        assert_eq!(url_port("redis://127.0.0.1:6379"), Some(6379));
        assert_eq!(url_port("redis://[::1]:6380/0"), Some(6380));
        assert_eq!(url_port("postgres://u:secret@localhost/db"), None);
        assert_eq!(url_port("redis://[::1]"), None);
    }

    #[test]
    fn loopback_only() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("127.3.2.1"));
        assert!(is_loopback_host("[::1]"));
        assert!(is_loopback_host("localhost"));
        assert!(!is_loopback_host("10.0.0.1"));
        assert!(!is_loopback_host("example.org"));
        assert_eq!(
            url_host("postgres://postgres@127.0.0.1:5432/postgres"),
            "127.0.0.1"
        );
        assert_eq!(
            url_host("postgres://u:p@db.example:5432/x?sslmode=disable"),
            "db.example"
        );
        assert_eq!(url_host("redis://[::1]:6379"), "::1");
        assert_eq!(url_host("postgres:///postgres"), "");
        assert!(require_loopback("x", "postgres://postgres@192.168.1.2/postgres").is_err());
        assert!(require_loopback("x", "redis://127.0.0.1:6379").is_ok());
    }
}
