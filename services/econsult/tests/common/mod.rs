//! Test harness: a real server on 127.0.0.1:0 talking gRPC, a fresh database per test (a temp
//! SQLite file, or a uniquely named PostgreSQL database), optional Redis with a unique namespace.
//!
//! PostgreSQL/Redis variants need `TEST_DATABASE_URL` / `TEST_REDIS_URL`. Locally they are
//! skipped when unset; under `CI=true` a missing variable fails the test.
//!
//! With `TEST_SERVICE_DATABASE_URL` also set (a role without ownership or CREATEDB, as in
//! production; CI sets it), each PostgreSQL test database is migrated by the
//! `TEST_DATABASE_URL` role, which owns the schema, and the server runs as the service role
//! with only what `econsult migrate --grant-to` gives it.
#![allow(dead_code)]

pub mod process;
pub mod sig;

use chrono::{DateTime, Utc};
use econsult::{Application, Config};
use econsult_proto::booking::v1 as bpb;
use econsult_proto::booking::v1::booking_service_client::BookingServiceClient;
use econsult_proto::consultation::v1::consultation_service_client::ConsultationServiceClient;
use econsult_proto::stats::v1::stats_service_client::StatsServiceClient;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use econsult_runtime::clock::{Clock, ManualClock};
use std::sync::Arc;
use tonic::transport::Channel;

/// Which storage and bus a test runs on.
pub struct Env {
    pub name: &'static str,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    admin_url: Option<String>,
    db_name: Option<String>,
    /// The server connects as a restricted service role; the schema was migrated by its owner.
    pub service_role: bool,
}

impl Drop for Env {
    /// Drops the test's PostgreSQL database, also when the test ends without `shutdown`
    /// (a failed assertion, or a test that never calls it).
    fn drop(&mut self) {
        if let (Some(admin), Some(name)) = (self.admin_url.clone(), self.db_name.take()) {
            econsult_runtime::db::drop_database_blocking(admin, name);
        }
    }
}

fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{var} must be set in CI"),
        _ => {
            eprintln!("skipped: {var} is not set");
            None
        }
    }
}

impl Env {
    /// Embedded: SQLite file and the database-backed bus.
    pub async fn sqlite() -> Self {
        Self {
            name: "sqlite",
            database_url: None,
            redis_url: None,
            admin_url: None,
            db_name: None,
            service_role: false,
        }
    }

    /// Production-like: a fresh PostgreSQL database and Redis Streams.
    pub async fn postgres() -> Option<Self> {
        let admin = required("TEST_DATABASE_URL")?;
        let redis = required("TEST_REDIS_URL")?;
        let name = format!("econsult_t_{}", uuid::Uuid::new_v4().simple());
        let url = econsult_runtime::db::create_database(&admin, &name)
            .await
            .expect("create db");
        let service = std::env::var("TEST_SERVICE_DATABASE_URL")
            .ok()
            .filter(|v| !v.is_empty());
        let database_url = match &service {
            Some(service) => {
                let owner = econsult_runtime::db::Db::connect(&url)
                    .await
                    .expect("connect as owner");
                owner.migrate().await.expect("migrate as owner");
                owner
                    .grant_service_role(&url_user(service))
                    .await
                    .expect("grant the service role");
                owner.close().await;
                econsult_runtime::db::with_database(service, &name)
            }
            None => url,
        };
        Some(Self {
            name: "postgres",
            database_url: Some(database_url),
            redis_url: Some(redis),
            admin_url: Some(admin),
            db_name: Some(name),
            service_role: service.is_some(),
        })
    }

    /// A connection with the schema owner's rights (tests that play a privileged attacker):
    /// the `TEST_DATABASE_URL` role on PostgreSQL, the one file on SQLite.
    pub async fn owner_db(&self, app: &TestApp) -> econsult_runtime::db::Db {
        match (&self.admin_url, &self.db_name) {
            (Some(admin), Some(name)) => {
                econsult_runtime::db::Db::connect(&econsult_runtime::db::with_database(admin, name))
                    .await
                    .expect("connect as owner")
            }
            _ => app.platform().db.clone(),
        }
    }
}

/// The user name of a `postgres://user[:password]@host/…` URL.
fn url_user(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split_once('@').map_or("", |(a, _)| a);
    auth.split(':').next().unwrap_or_default().to_owned()
}

/// A started system plus what tests need to talk to it.
/// Adjusts the configuration of a test server.
pub type Tweak = Arc<dyn Fn(&mut Config) + Send + Sync>;

pub struct TestApp {
    pub app: Option<Application>,
    tweak: Option<Tweak>,
    pub addr: std::net::SocketAddr,
    pub keys: DevKeys,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
    pub env: Env,
    pub namespace: String,
}

/// 2026-03-02 08:00 Oslo (Monday) as the default test time.
pub fn monday_0800() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T07:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

impl TestApp {
    pub async fn start(env: Env) -> Self {
        Self::start_at(env, monday_0800()).await
    }

    pub async fn start_at(env: Env, now: DateTime<Utc>) -> Self {
        Self::start_configured(env, now, None).await
    }

    /// Starts with `tweak` applied to the configuration (also on restarts).
    pub async fn start_configured(env: Env, now: DateTime<Utc>, tweak: Option<Tweak>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(now);
        let namespace = format!("econsult-test-{}", uuid::Uuid::new_v4().simple());
        // The dev key exists before the server starts, so a tweak can serve its JWKS.
        let keys = DevKeys::load_or_create(dir.path()).expect("dev keys");
        let app = Self::boot(&env, &dir, &clock, &namespace, tweak.as_ref()).await;
        Self {
            addr: app.local_addr(),
            app: Some(app),
            tweak,
            keys,
            clock,
            dir,
            env,
            namespace,
        }
    }

    async fn boot(
        env: &Env,
        dir: &tempfile::TempDir,
        clock: &ManualClock,
        namespace: &str,
        tweak: Option<&Tweak>,
    ) -> Application {
        let mut config = Config::embedded(dir.path().to_path_buf());
        config.database_url = env.database_url.clone();
        config.redis_url = env.redis_url.clone();
        config.redis_namespace = namespace.to_owned();
        config.clock = Arc::new(clock.clone()) as Arc<dyn Clock>;
        config.shutdown_grace = std::time::Duration::from_secs(5);
        config.migrate = !env.service_role;
        if let Some(t) = tweak {
            t(&mut config);
        }
        Application::start(config).await.expect("start application")
    }

    /// Stops and starts the server on the same data (a restart).
    pub async fn restart(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.expect("stop");
        }
        let app = Self::boot(
            &self.env,
            &self.dir,
            &self.clock,
            &self.namespace,
            self.tweak.as_ref(),
        )
        .await;
        self.addr = app.local_addr();
        self.app = Some(app);
    }

    pub fn platform(&self) -> &econsult_runtime::platform::Platform {
        self.app.as_ref().expect("running").platform()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn booking(&self) -> BookingServiceClient<Channel> {
        BookingServiceClient::new(self.channel().await)
    }

    pub async fn consultation(&self) -> ConsultationServiceClient<Channel> {
        ConsultationServiceClient::new(self.channel().await)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }

    pub async fn stats(&self) -> StatsServiceClient<Channel> {
        StatsServiceClient::new(self.channel().await)
    }

    fn mint(&self, spec: TokenSpec) -> String {
        self.keys
            .mint(&spec, Utc::now().timestamp(), 3600)
            .expect("mint")
    }

    pub fn patient_token(&self, nin: &str) -> String {
        self.mint(TokenSpec::Patient {
            nin: nin.into(),
            acr: REQUIRED_ACR.into(),
        })
    }

    /// An EHR system's token of `org`, with the client name [`ehr_system_name`]`(org)`.
    pub fn ehr_token(&self, org: &str) -> String {
        self.mint_with(
            TokenSpec::Ehr {
                client_id: format!("epj-{org}"),
                org_number: org.into(),
                scopes: vec![
                    "econsult:booking.read".into(),
                    "econsult:booking.write".into(),
                    "econsult:stats.read".into(),
                    "econsult:consultation.read".into(),
                    "econsult:consultation.write".into(),
                ],
            },
            |c| c.client_name = Some(ehr_system_name(org)),
        )
    }

    /// A token of `spec` whose claims `edit` changed (e.g. HelseID's name claims).
    pub fn mint_with(
        &self,
        spec: TokenSpec,
        edit: impl FnOnce(&mut econsult_runtime::auth::Claims),
    ) -> String {
        let mut claims = spec.claims(Utc::now().timestamp(), 3600);
        edit(&mut claims);
        self.keys.sign(&claims).expect("sign")
    }

    pub fn ops_token(&self) -> String {
        self.mint(TokenSpec::Ops {
            subject: "ops-1".into(),
        })
    }

    pub fn token(&self, spec: TokenSpec) -> String {
        self.mint(spec)
    }

    /// Stops the server; the test's PostgreSQL database goes with the `Env`.
    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.expect("stop");
        }
    }
}

/// A request carrying a bearer token and what the access log needs from its caller
/// ([`econsult_runtime::auth::dev_call_headers`]: a practice's purpose, an EHR system's
/// acting person).
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = authed_bare(msg, token);
    for (name, value) in econsult_runtime::auth::dev_call_headers(token) {
        req.metadata_mut()
            .insert(name, value.parse().expect("header"));
    }
    req
}

/// A request carrying only a bearer token.
pub fn authed_bare<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
}

pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

pub fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The client name of the test EHR system of `org`.
pub fn ehr_system_name(org: &str) -> String {
    format!("Test EPJ {org}")
}

/// The name a test clinician token with `hpr` carries.
pub fn clinician_name(hpr: &str) -> String {
    format!("Lege Nr{hpr}")
}

pub const ORG_A: &str = "910000001";
pub const ORG_B: &str = "920000002";

/// Creates a GP of `org` with `patients` on the list (synthetic identity numbers from `seed`).
pub async fn seed_gp(
    app: &TestApp,
    org: &str,
    gp_id: &str,
    seed: u64,
    patients: usize,
) -> Vec<String> {
    seed_gp_with(app, org, gp_id, seed, patients, bpb::ListStatus::Staffed).await
}

pub async fn seed_gp_with(
    app: &TestApp,
    org: &str,
    gp_id: &str,
    seed: u64,
    patients: usize,
    status: bpb::ListStatus,
) -> Vec<String> {
    seed_gp_in(app, org, gp_id, "0301", seed, patients, status).await
}

/// A GP of `org` in `municipality` with `patients` on the list (synthetic identity numbers
/// from `seed`), added at most 2 500 per call.
pub async fn seed_gp_in(
    app: &TestApp,
    org: &str,
    gp_id: &str,
    municipality: &str,
    seed: u64,
    patients: usize,
    status: bpb::ListStatus,
) -> Vec<String> {
    let mut c = app.booking().await;
    let token = app.ehr_token(org);
    c.upsert_gp(authed(
        bpb::UpsertGpRequest {
            gp: Some(bpb::Gp {
                gp_id: gp_id.into(),
                hpr_number: if status == bpb::ListStatus::Vacant {
                    String::new()
                } else {
                    format!("{}", 1_000_000 + seed)
                },
                display_name: format!("Dr {gp_id}"),
                org_number: String::new(),
                municipality_number: municipality.into(),
                list_capacity: 2500,
                list_status: status as i32,
                list_size: 0,
                practice_name: String::new(),
            }),
        },
        &token,
    ))
    .await
    .expect("upsert gp");
    let nins: Vec<String> = (0..patients)
        .map(|i| {
            econsult_runtime::nin::synthetic(seed * 100_000 + i as u64)
                .as_str()
                .to_owned()
        })
        .collect();
    for chunk in nins.chunks(2500) {
        c.update_list(authed(
            bpb::UpdateListRequest {
                gp_id: gp_id.into(),
                add: chunk.to_vec(),
                remove: vec![],
                idempotency_key: key(),
            },
            &token,
        ))
        .await
        .expect("update list");
    }
    nins
}

/// The § 22 figures of `org` for requests with day 0 in `from..=to`, read with the practice's
/// EHR token (exact; ops get small cells suppressed), once `want(figures)` holds: requests are
/// written within a second, so this polls for up to 20 s.
pub async fn accessibility_when(
    app: &TestApp,
    org: &str,
    from: &str,
    to: &str,
    want: impl Fn(&econsult_proto::stats::v1::GetBookingAccessibilityResponse) -> bool,
) -> econsult_proto::stats::v1::GetBookingAccessibilityResponse {
    use econsult_proto::stats::v1 as spb;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut s = app.stats().await;
    loop {
        let a = s
            .get_booking_accessibility(authed(
                spb::GetBookingAccessibilityRequest {
                    filter: Some(spb::Filter {
                        from_date: from.into(),
                        to_date: to.into(),
                        org_number: org.into(),
                        ..Default::default()
                    }),
                },
                &app.ehr_token(org),
            ))
            .await
            .expect("accessibility")
            .into_inner();
        if want(&a) {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "figures never as wanted: {a:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Publishes slots of `minutes` length for `gp_id` at the given starts.
pub async fn publish(
    app: &TestApp,
    org: &str,
    gp_id: &str,
    starts: &[DateTime<Utc>],
    modality: bpb::Modality,
) -> Vec<bpb::Slot> {
    let mut c = app.booking().await;
    let slots = starts
        .iter()
        .map(|s| bpb::NewSlot {
            start: Some(ts(*s)),
            duration_minutes: 15,
            modality: modality as i32,
            acute_reserve: false,
        })
        .collect();
    c.publish_slots(authed(
        bpb::PublishSlotsRequest {
            gp_id: gp_id.into(),
            slots,
            idempotency_key: key(),
        },
        &app.ehr_token(org),
    ))
    .await
    .expect("publish")
    .into_inner()
    .slots
}

/// Runs each named async test fn `fn(Env)` on SQLite and on PostgreSQL + Redis.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Env::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[cfg_attr(no_test_backends, ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL")]
                async fn $name() {
                    if let Some(env) = $crate::common::Env::postgres().await {
                        super::$name(env).await
                    }
                }
            )*
        }
    };
}

impl TestApp {
    /// A second instance of the service on the same database, Redis namespace, signing key and
    /// clock (another replica behind the load balancer). Stop it before `shutdown`.
    pub async fn start_replica(&self) -> Application {
        let mut config = Config::embedded(self.dir.path().to_path_buf());
        config.database_url = self.env.database_url.clone();
        config.redis_url = self.env.redis_url.clone();
        config.redis_namespace = self.namespace.clone();
        config.clock = Arc::new(self.clock.clone()) as Arc<dyn Clock>;
        config.shutdown_grace = std::time::Duration::from_secs(5);
        config.migrate = !self.env.service_role;
        if let Some(t) = &self.tweak {
            t(&mut config);
        }
        config.instance_id = format!("{}-replica", config.instance_id);
        Application::start(config).await.expect("start replica")
    }

    /// A clinician (HelseID) token of `org` with `hpr`, named [`clinician_name`]`(hpr)` (the
    /// `given_name` and `family_name` claims).
    pub fn clinician_token(&self, hpr: &str, org: &str) -> String {
        self.mint_with(
            TokenSpec::Clinician {
                hpr_number: hpr.into(),
                org_number: org.into(),
                scopes: vec![],
            },
            |c| {
                c.given_name = Some("Lege".into());
                c.family_name = Some(format!("Nr{hpr}"));
            },
        )
    }
}

/// A gRPC channel to an application.
pub async fn channel_to(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// A free TCP port on the loopback interface (for servers the test starts).
///
/// The port is free when asked, not reserved: the probe socket closes before the server binds
/// it, so the kernel may hand the same number out again. A test that starts several servers at
/// once (eight processes in `scaleout`) got one port twice in CI: a stats call reached another
/// service's process (UNIMPLEMENTED). So a port is never handed out twice per test binary.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("free_port lock");
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no unused loopback port after 1000 tries");
}

/// Deletes the keys of a test's Redis namespace (`<namespace>:*`), so test runs leave nothing
/// behind in a shared Redis. Best effort: a Redis that went away is left alone.
pub fn delete_redis_namespace(redis_url: &str, namespace: &str) {
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(std::time::Duration::from_secs(2)) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query(&mut conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(url) = &self.env.redis_url {
            delete_redis_namespace(url, &self.namespace);
        }
    }
}

/// Runs `statements` (each binding `$1` = `id`) on the access log as a privileged connection
/// could: its triggers out of the way (the table's owner may switch them off on PostgreSQL;
/// on SQLite the update trigger is dropped), in one transaction.
pub async fn owner_rewrite(db: &econsult_runtime::db::Db, statements: &[&str], id: i64) {
    use econsult_runtime::db::Backend;
    let mut tx = db.begin().await.expect("begin");
    let off = match db.backend() {
        Backend::Postgres => "ALTER TABLE audit_log DISABLE TRIGGER USER",
        Backend::Sqlite => "DROP TRIGGER audit_log_no_update",
    };
    sqlx::query(off)
        .execute(&mut *tx)
        .await
        .expect("triggers out of the way");
    for sql in statements {
        sqlx::query(sql)
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    if db.backend() == Backend::Postgres {
        sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER")
            .execute(&mut *tx)
            .await
            .expect("enable triggers");
    }
    tx.commit().await.expect("commit");
}

/// Rewrites row `id` as someone with the owner's rights who knows the chain would: changes it,
/// unseals it and every row after it, and lets the sealer chain them again.
pub async fn rewrite_and_rechain(db: &econsult_runtime::db::Db, id: i64) {
    owner_rewrite(
        db,
        &[
            "UPDATE audit_log SET subject = 'someone-else' WHERE id = $1",
            "UPDATE audit_log SET chain_seq = NULL, hash = NULL \
             WHERE chain_seq >= (SELECT chain_seq FROM audit_log WHERE id = $1)",
        ],
        id,
    )
    .await;
    econsult_runtime::audit::seal(db, 1000)
        .await
        .expect("rechain");
}
