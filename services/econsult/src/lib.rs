//! The composition root: builds the platform and the selected services and serves them on one
//! port (gRPC, gRPC-Web, health, reflection v1 and v1alpha, the web client at `/`), plus a
//! Prometheus endpoint. `main`
//! and the integration tests start the system the same way, through [`Application::start`].

use anyhow::Context as _;
use econsult_booking::BookingConfig;
use econsult_runtime::auth::{AuthInterceptor, Authenticator, DevKeys};
use econsult_runtime::clock::Clock;
use econsult_runtime::platform::{Mount, Platform, PlatformConfig, PlatformHandle};
use econsult_runtime::pseudonym::Pseudonymizer;
use econsult_runtime::telemetry::RpcMetricsLayer;
use std::{net::SocketAddr, path::PathBuf, str::FromStr, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

pub mod connections;
pub mod cors;
pub mod demo;
pub mod walkthrough;
pub mod walkthrough_guarantee;
pub mod web;

/// Open client connections allowed by default (each holds a file descriptor).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Server reflection over every service a tool may call: ours, gRPC health and both versions
/// of reflection itself. Served as `grpc.reflection.v1` and as `v1alpha`, which many clients
/// (Python's grpcio-reflection, older grpcurl) still speak.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(econsult_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// The services one process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// econsult.booking.v1.
    Booking,
    /// econsult.consultation.v1.
    Consultation,
    /// econsult.signalling.v1.
    Signalling,
    /// econsult.stats.v1.
    Stats,
    /// econsult.notify.v1.
    Notify,
}

impl ServiceKind {
    /// All services.
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::Booking,
        ServiceKind::Consultation,
        ServiceKind::Signalling,
        ServiceKind::Stats,
        ServiceKind::Notify,
    ];

    /// Full gRPC service name.
    pub fn grpc_name(self) -> &'static str {
        match self {
            ServiceKind::Booking => "econsult.booking.v1.BookingService",
            ServiceKind::Consultation => "econsult.consultation.v1.ConsultationService",
            ServiceKind::Signalling => "econsult.signalling.v1.SignallingService",
            ServiceKind::Stats => "econsult.stats.v1.StatsService",
            ServiceKind::Notify => "econsult.notify.v1.NotifyService",
        }
    }
}

impl FromStr for ServiceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "booking" => Ok(ServiceKind::Booking),
            "consultation" => Ok(ServiceKind::Consultation),
            "signalling" => Ok(ServiceKind::Signalling),
            "stats" => Ok(ServiceKind::Stats),
            "notify" => Ok(ServiceKind::Notify),
            other => Err(format!(
                "unknown service {other:?}: expected booking, consultation, signalling, stats or notify"
            )),
        }
    }
}

/// Everything [`Application::start`] needs.
#[derive(Clone)]
pub struct Config {
    /// gRPC address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address; `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// Holds the SQLite file and the dev signing key.
    pub data_dir: PathBuf,
    /// Database; default `sqlite://<data_dir>/econsult.db`.
    pub database_url: Option<String>,
    /// Redis for events across replicas.
    pub redis_url: Option<String>,
    /// Prefix of Redis keys.
    pub redis_namespace: String,
    /// Which services to run.
    pub services: Vec<ServiceKind>,
    /// The trusted issuers, each with its own JWKS and the roles it may grant (`--issuer`).
    /// With none of these and neither `jwks_file` nor `jwks_url`, the local dev key is trusted.
    pub trusted_issuers: Vec<econsult_runtime::auth::IssuerConfig>,
    /// The JWKS file of the one issuer in `issuers` (the form before `trusted_issuers`; that
    /// issuer grants every role).
    pub jwks_file: Option<PathBuf>,
    /// The JWKS URL of the one issuer in `issuers`, like `jwks_file`.
    pub jwks_url: Option<String>,
    /// How often to re-fetch JWKS URLs (key rotation).
    pub jwks_refresh: Duration,
    /// The one issuer of `jwks_file` / `jwks_url`.
    pub issuers: Vec<String>,
    /// Required audience.
    pub audience: String,
    /// Booking tunables.
    pub booking: BookingConfig,
    /// Batches a consultation change stream may fall behind the process's event feed before
    /// it catches up from the database instead.
    pub consultation_feed_capacity: usize,
    /// What one patient may store in the consultation service.
    pub consultation_quotas: econsult_consultation::Quotas,
    /// How long idempotent answers and published outbox events are kept.
    pub retention: econsult_runtime::retention::Retention,
    /// Per-caller rate limits.
    pub rate_limits: econsult_runtime::ratelimit::RateLimits,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_streams_per_connection: u32,
    /// Most open client connections; beyond it a new connection is closed at once.
    pub max_connections: usize,
    /// How long a new connection may take to send the HTTP/2 preface (or an HTTP/1 request)
    /// before it is closed.
    pub handshake_timeout: Duration,
    /// Age after which a connection is asked to go (HTTP/2 GOAWAY): it closes once its open
    /// calls and streams have ended, and the client reconnects. Bounds idle connections.
    pub max_connection_age: Duration,
    /// Most streaming calls (Subscribe, WatchInbox, Signal, …) one caller (token subject) may
    /// have open at once; 0 = no cap.
    pub max_streams_per_caller: u32,
    /// Serve gRPC server reflection (it needs no token); `None`: only on a loopback address.
    pub reflection: Option<bool>,
    /// Origins whose pages may call the API from a browser (CORS); empty: same-origin only.
    /// A wildcard is refused (see [`cors`]).
    pub cors_origins: Vec<String>,
    /// Most database connections of the process (see `Db::connect_with`).
    pub db_max_connections: u32,
    /// Signalling tunables (join window, STUN/TURN, limits).
    pub signalling: econsult_signalling::SignallingConfig,
    /// Notify: SMTP, SMS gateway, login link, retries.
    pub notify: econsult_notify::NotifyConfig,
    /// Key sealing patients' contact details (base64 of 32 bytes); `None`: a key kept in the
    /// data directory (`notify-contact.key`).
    pub notify_contact_key: Option<String>,
    /// File with the key of patients' pseudonymous event keys (base64 of at least 32 bytes;
    /// every replica the same); `None`: a key kept in the data directory (`event.key`).
    pub event_key_file: Option<PathBuf>,
    /// How long to drain calls and streams on shutdown.
    pub shutdown_grace: Duration,
    /// Name of this instance (consumer name on the bus).
    pub instance_id: String,
    /// Prometheus registry to serve (from `Telemetry`).
    pub registry: Option<prometheus::Registry>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Accept synthetic identity numbers (test environments, whose identity providers issue
    /// them) although an identity provider is configured; with the development key they are
    /// always accepted, and a production server refuses them.
    pub allow_synthetic_nins: bool,
    /// Apply the migrations on start (the default). Off where a separate owner role migrates
    /// (`econsult migrate --grant-to <role>`) and the server connects as that restricted role.
    pub migrate: bool,
}

impl Config {
    /// Embedded defaults: all services, SQLite under `data_dir`, dev key, loopback, no metrics.
    pub fn embedded(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            data_dir,
            database_url: None,
            redis_url: None,
            redis_namespace: "econsult".into(),
            services: ServiceKind::ALL.to_vec(),
            trusted_issuers: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(600),
            issuers: Vec::new(),
            audience: econsult_runtime::auth::DEFAULT_AUDIENCE.into(),
            booking: BookingConfig::default(),
            consultation_feed_capacity: econsult_consultation::feed::DEFAULT_CAPACITY,
            consultation_quotas: Default::default(),
            retention: Default::default(),
            rate_limits: Default::default(),
            max_streams_per_connection: 256,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(30 * 60),
            max_streams_per_caller: econsult_runtime::streams::DEFAULT_MAX_STREAMS_PER_CALLER,
            reflection: None,
            cors_origins: Vec::new(),
            db_max_connections: econsult_runtime::db::DEFAULT_MAX_CONNECTIONS,
            signalling: econsult_signalling::SignallingConfig::default(),
            notify: econsult_notify::NotifyConfig::default(),
            notify_contact_key: None,
            event_key_file: None,
            shutdown_grace: Duration::from_secs(20),
            instance_id: default_instance_id(),
            registry: None,
            clock: Arc::new(econsult_runtime::clock::SystemClock),
            allow_synthetic_nins: false,
            migrate: true,
        }
    }

    /// Whether reflection is served: as configured, else only on a loopback address.
    pub fn reflection_enabled(&self) -> bool {
        self.reflection
            .unwrap_or_else(|| self.listen.ip().is_loopback())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("econsult.db").display()))
    }

    /// The trusted issuers in effect: `None` when the dev key is trusted. The older form
    /// (`jwks_file`/`jwks_url` with `issuers`) names exactly one issuer, which then grants every
    /// role: one key set shared by several issuers would let one issuer's key sign tokens of
    /// another.
    pub fn issuer_configs(
        &self,
    ) -> anyhow::Result<Option<Vec<econsult_runtime::auth::IssuerConfig>>> {
        use econsult_runtime::auth::{IssuerConfig, JwksSource, Roles};
        let legacy = self.jwks_file.is_some() || self.jwks_url.is_some();
        if !self.trusted_issuers.is_empty() {
            anyhow::ensure!(
                !legacy && self.issuers.is_empty(),
                "give issuers with --issuer, or one with --jwks-file/--jwks-url and \
                 --trusted-issuer, not both"
            );
            return Ok(Some(self.trusted_issuers.clone()));
        }
        let jwks = match (&self.jwks_file, &self.jwks_url) {
            (Some(_), Some(_)) => anyhow::bail!("give a JWKS file or a JWKS URL, not both"),
            (Some(path), None) => JwksSource::File(path.clone()),
            (None, Some(url)) => JwksSource::parse(url)?,
            (None, None) => {
                anyhow::ensure!(
                    self.issuers.is_empty(),
                    "--trusted-issuer needs --jwks-file or --jwks-url (or use --issuer)"
                );
                return Ok(None);
            }
        };
        match self.issuers.as_slice() {
            [issuer] => Ok(Some(vec![IssuerConfig {
                issuer: issuer.clone(),
                jwks,
                roles: Roles::ALL,
            }])),
            [] => anyhow::bail!("--trusted-issuer is required with --jwks-file or --jwks-url"),
            _ => anyhow::bail!(
                "--jwks-file/--jwks-url serve one issuer: one key set for several issuers lets \
                 each issuer's key sign the others' tokens; give each issuer its own JWKS and \
                 roles with --issuer"
            ),
        }
    }

    async fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let Some(configs) = self.issuer_configs()? else {
            check_dev_key_address(self.listen)?;
            tracing::warn!(
                listen = %self.listen,
                "no identity provider configured: tokens signed by the development key in the data \
                 directory are trusted; this is for a developer's machine only (loopback)"
            );
            return DevKeys::load_or_create(&self.data_dir)?.authenticator(&self.audience);
        };
        let mut trusted = Vec::with_capacity(configs.len());
        for c in configs {
            let jwks = c
                .jwks
                .load()
                .await
                .with_context(|| format!("JWKS of the issuer {}", c.issuer))?;
            trusted.push(econsult_runtime::auth::TrustedIssuer {
                issuer: c.issuer,
                roles: c.roles,
                jwks_url: match c.jwks {
                    econsult_runtime::auth::JwksSource::Url(u) => Some(u),
                    econsult_runtime::auth::JwksSource::File(_) => None,
                },
                jwks,
            });
        }
        Ok(Authenticator::new(trusted, self.audience.clone())?
            .accept_synthetic(self.allow_synthetic_nins))
    }
}

/// The development key is trusted only by a server listening on a loopback address: anyone who
/// can read the data directory (or guess that a default is in force) could otherwise mint tokens
/// for a server reachable from elsewhere (the container image listens on 0.0.0.0).
pub fn check_dev_key_address(listen: SocketAddr) -> anyhow::Result<()> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "no identity provider is configured (--issuer, or --jwks-file/--jwks-url with \
         --trusted-issuer) and the server listens on {listen}: the development key is trusted only \
         on a loopback address. Configure the identity providers, or for a local container stack \
         trust the development key's JWKS explicitly, e.g. \
         --issuer 'iss=econsult-dev,jwks=<data dir>/dev-jwks.json,roles=patient+clinician+ehr+ops' \
         (deploy/compose does)"
    )
}

/// The server's start line: where it listens and what it stands on, in words, without
/// credentials (a URL's user and password are left out).
pub struct StartLine {
    services: String,
    database: String,
    bus: String,
    tokens: String,
    dev_key_trusted: bool,
    reflection: bool,
}

/// `host:port/path` of a URL, without scheme, credentials or query.
fn without_credentials(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path = path.split('?').next().unwrap_or_default();
    format!("{host}{path}")
}

impl StartLine {
    /// Describes `config` (call before it is moved into [`Application::start`]).
    pub fn new(config: &Config) -> Self {
        let url = config.database_url();
        let database = match url.strip_prefix("sqlite:") {
            Some(path) => {
                let path = path.trim_start_matches("//");
                format!("SQLite file {}", path.split('?').next().unwrap_or_default())
            }
            None => format!("PostgreSQL {}", without_credentials(&url)),
        };
        let bus = match &config.redis_url {
            Some(url) => format!(
                "Redis Streams at {} (keys {}:*)",
                without_credentials(url),
                config.redis_namespace
            ),
            None => "in-process, from the database's outbox".to_owned(),
        };
        let issuers = config.issuer_configs();
        let dev_key_trusted = matches!(issuers, Ok(None));
        let tokens = match issuers {
            Ok(Some(list)) => {
                let each: Vec<_> = list
                    .iter()
                    .map(|c| {
                        let jwks = match &c.jwks {
                            econsult_runtime::auth::JwksSource::File(f) => {
                                format!("JWKS file {}", f.display())
                            }
                            econsult_runtime::auth::JwksSource::Url(u) => {
                                format!("JWKS at {}", without_credentials(u))
                            }
                        };
                        format!("{} for {} ({jwks})", c.issuer, c.roles)
                    })
                    .collect();
                format!("checked against the issuers {}", each.join(", "))
            }
            Err(e) => format!("misconfigured: {e}"),
            Ok(None) => format!(
                "signed by the development key in {} are trusted (no --issuer, --jwks-file or --jwks-url): \
                 not for production",
                config.data_dir.display()
            ),
        };
        let services = config
            .services
            .iter()
            .map(|k| k.grpc_name().split('.').nth(1).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            services,
            database,
            bus,
            tokens,
            dev_key_trusted,
            reflection: config.reflection_enabled(),
        }
    }

    /// The line in words.
    pub fn sentence(&self, grpc: SocketAddr, metrics: Option<SocketAddr>) -> String {
        let metrics = match metrics {
            Some(m) => format!("metrics at http://{m}/metrics"),
            None => "no metrics endpoint".to_owned(),
        };
        format!(
            "econsult {} serving {} on {grpc} (gRPC, gRPC-Web, health{}); {metrics}; \
             database: {}; event bus: {}; tokens {}",
            env!("CARGO_PKG_VERSION"),
            self.services,
            if self.reflection { ", reflection" } else { "" },
            self.database,
            self.bus,
            self.tokens
        )
    }

    /// Logs the line (info); `fields` adds the same facts as fields for machines (JSON logs).
    pub fn log(&self, grpc: SocketAddr, metrics: Option<SocketAddr>, fields: bool) {
        if !fields {
            tracing::info!("{}", self.sentence(grpc, metrics));
            return;
        }
        tracing::info!(
            grpc = %grpc,
            metrics = %metrics.map_or_else(|| "off".to_owned(), |m| m.to_string()),
            database = %self.database,
            bus = %self.bus,
            dev_key_trusted = self.dev_key_trusted,
            "{}",
            self.sentence(grpc, metrics)
        );
    }
}

/// `<host name>-<process id>`: unique per process across machines and containers.
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "econsult".into());
    format!("{host}-{}", std::process::id())
}

/// A running system.
pub struct Application {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    platform: Platform,
    consultation_feed: Option<econsult_consultation::feed::Feed>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Application {
    /// Connects, migrates, binds and starts serving in the background.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create {}", config.data_dir.display()))?;
        // The ports first: a port in use is the error reported, before anything has started
        // (not a background task cancelled on the way out).
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {} (is another server using it?)", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("bind metrics {a} (is another server using it?)"))?,
            ),
            None => None,
        };
        let cors_origins = cors::parse_origins(&config.cors_origins)?;
        // The web client's development sign-in exists only where the dev key is trusted.
        let dev_keys = match config.issuer_configs()? {
            None => Some(DevKeys::load_or_create(&config.data_dir)?),
            Some(_) => None,
        };
        let auth = Arc::new(config.authenticator().await?);
        let (platform, mut handle) = Platform::start(PlatformConfig {
            database_url: config.database_url(),
            redis_url: config.redis_url.clone(),
            redis_namespace: config.redis_namespace.clone(),
            migrate: config.migrate,
            db_max_connections: config.db_max_connections,
            auth: auth.clone(),
            clock: config.clock.clone(),
            instance_id: config.instance_id.clone(),
            pseudonyms: Arc::new(match &config.event_key_file {
                Some(path) => Pseudonymizer::from_file(path).context("--event-key-file")?,
                None => {
                    if config.redis_url.is_some() {
                        // Replicas sharing Redis must key events alike; a per-instance data
                        // directory (a pod's emptyDir) would give each its own key.
                        tracing::warn!(
                            data_dir = %config.data_dir.display(),
                            "no --event-key-file: events are keyed with the data directory's key; \
                             every replica must share it (set --event-key-file to one secret)"
                        );
                    }
                    Pseudonymizer::load_or_create(&config.data_dir)?
                }
            }),
        })
        .await?;

        if !auth.jwks_urls().is_empty() {
            let refresh = econsult_runtime::auth::refresh_jwks(
                auth.clone(),
                config.jwks_refresh,
                platform.shutdown.clone(),
            );
            handle.track(tokio::spawn(refresh));
        }
        let interceptor =
            AuthInterceptor::new(auth, config.rate_limits, config.max_streams_per_caller);
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = tonic::service::Routes::builder();
        let mut consultation_feed = None;
        routes.add_service(health_service);
        if config.reflection_enabled() {
            routes
                .add_service(reflection().build_v1()?)
                .add_service(reflection().build_v1alpha()?);
        }
        econsult_runtime::audit::mount(
            &platform,
            &mut Mount::new(&mut routes, interceptor.clone(), &mut handle),
        );
        handle.track(tokio::spawn(econsult_runtime::retention::task(
            platform.db.clone(),
            platform.clock.clone(),
            config.retention,
            platform.shutdown.clone(),
        )));
        for kind in &config.services {
            let m = &mut Mount::new(&mut routes, interceptor.clone(), &mut handle);
            match kind {
                ServiceKind::Booking => econsult_booking::mount(&platform, &config.booking, m),
                ServiceKind::Consultation => {
                    consultation_feed = Some(econsult_consultation::mount(
                        &platform,
                        config.consultation_quotas,
                        config.consultation_feed_capacity,
                        m,
                    ));
                }
                ServiceKind::Signalling => {
                    let turn_secret = match &config.signalling.turn_secret {
                        Some(s) => s.clone(),
                        None => econsult_signalling::dev_turn_secret(&config.data_dir)?,
                    };
                    econsult_signalling::mount(&platform, &config.signalling, turn_secret, m)
                        .await?
                }
                ServiceKind::Stats => econsult_stats::mount(&platform, m),
                ServiceKind::Notify => {
                    let sealer = match &config.notify_contact_key {
                        Some(k) => econsult_notify::Sealer::from_base64(k)
                            .context("--notify-contact-key")?,
                        None => econsult_notify::seal::dev_key(&config.data_dir)?,
                    };
                    econsult_notify::mount(&platform, &config.notify, sealer, m)?;
                }
            }
            health
                .set_service_status(kind.grpc_name(), ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;

        let addr = listener.local_addr()?;
        let metrics_addr = match (metrics_listener, config.registry.clone()) {
            (Some(l), Some(registry)) => Some(serve_metrics(
                l,
                registry,
                platform.shutdown.clone(),
                &mut handle,
            )?),
            _ => None,
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let services = config.services.clone();
        let grace = config.shutdown_grace;
        let max_streams = config.max_streams_per_connection;
        let incoming =
            connections::bounded(listener, config.max_connections, config.handshake_timeout);
        let max_age = config.max_connection_age;
        let routes = routes.routes();
        let task = tokio::spawn(async move {
            let (drain_tx, drain_rx) = oneshot::channel::<()>();
            let server = tonic::transport::Server::builder()
                .accept_http1(true)
                // A peer that stops answering pings is closed; an idle one is asked to go once
                // the connection reaches its age.
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .max_connection_age(max_age)
                .max_concurrent_streams(Some(max_streams))
                .layer(RpcMetricsLayer::default())
                .layer(tower::util::option_layer(
                    (!cors_origins.is_empty()).then(|| cors::CorsLayer::new(cors_origins)),
                ))
                .layer(web::WebLayer::new(dev_keys))
                .layer(econsult_runtime::streams::StreamLimitLayer)
                .layer(tonic_web::GrpcWebLayer::new())
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = drain_rx.await;
                });
            tokio::pin!(server);
            tokio::select! {
                r = &mut server => { r?; }
                _ = stop_rx => {
                    // Shutdown: NOT_SERVING first (load balancers stop sending), streams told to
                    // end, then drain in-flight calls with a deadline, then flush the outbox.
                    tracing::info!("shutting down");
                    for kind in &services {
                        health.set_service_status(kind.grpc_name(), ServingStatus::NotServing).await;
                    }
                    health.set_service_status("", ServingStatus::NotServing).await;
                    handle.signal();
                    let _ = drain_tx.send(());
                    if tokio::time::timeout(grace, &mut server).await.is_err() {
                        tracing::warn!("calls still running after the shutdown deadline; closing");
                    }
                    handle.shutdown(grace).await;
                    return Ok(());
                }
            }
            handle.shutdown(grace).await;
            Ok(())
        });
        tracing::debug!(%addr, "econsult serving");
        Ok(Self {
            addr,
            metrics_addr,
            platform,
            consultation_feed,
            stop: Some(stop_tx),
            task,
        })
    }

    /// The consultation service's event feed, when it runs here (its counters).
    pub fn consultation_feed(&self) -> Option<&econsult_consultation::feed::Feed> {
        self.consultation_feed.as_ref()
    }

    /// The gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics address, when serving metrics.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The platform handles (tests inspect the database through it).
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Runs until `signal` completes, then shuts down cleanly.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.task => return r?,
            _ = signal => {}
        }
        self.stop().await
    }

    /// Shuts down cleanly and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let result = (&mut self.task).await?;
        self.platform.db.close().await;
        result
    }
}

fn serve_metrics(
    listener: TcpListener,
    registry: prometheus::Registry,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handle: &mut PlatformHandle,
) -> anyhow::Result<SocketAddr> {
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { econsult_runtime::telemetry::prometheus_text(&registry) }
        }),
    );
    handle.track(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint failed");
        }
    }));
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_key_is_trusted_only_on_a_loopback_address() {
        for ok in ["127.0.0.1:50051", "[::1]:50051", "127.0.0.2:0"] {
            check_dev_key_address(ok.parse().expect("addr")).expect(ok);
        }
        for refused in ["0.0.0.0:50051", "[::]:50051", "192.0.2.10:50051"] {
            let err = check_dev_key_address(refused.parse().expect("addr")).unwrap_err();
            assert!(err.to_string().contains("loopback"), "{refused}: {err}");
        }
    }

    /// The container image listens on 0.0.0.0: without an identity provider it must not start
    /// (it used to trust the development key in its data directory).
    #[tokio::test]
    async fn a_server_on_all_interfaces_without_an_identity_provider_does_not_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::embedded(dir.path().to_path_buf());
        config.listen = "0.0.0.0:0".parse().expect("addr");
        let err = match Application::start(config).await {
            Ok(_) => panic!("started with the development key on 0.0.0.0"),
            Err(e) => e,
        };
        assert!(format!("{err:#}").contains("loopback"), "{err:#}");
    }

    #[test]
    fn the_start_line_says_where_and_on_what_in_words() {
        let mut config = Config::embedded(PathBuf::from("data"));
        let line = StartLine::new(&config).sentence(
            "127.0.0.1:50051".parse().expect("addr"),
            Some("127.0.0.1:9464".parse().expect("addr")),
        );
        assert!(
            line.contains(
                "serving booking, consultation, signalling, stats, notify on 127.0.0.1:50051"
            ),
            "{line}"
        );
        assert!(
            line.contains("metrics at http://127.0.0.1:9464/metrics"),
            "{line}"
        );
        assert!(
            line.contains("database: SQLite file data/econsult.db"),
            "{line}"
        );
        assert!(line.contains("event bus: in-process"), "{line}");
        assert!(
            line.contains("development key in data are trusted"),
            "{line}"
        );
        assert!(!line.contains("Some("), "{line}");

        config.database_url = Some("postgres://app:s3cret@db:5432/econsult?sslmode=require".into());
        config.redis_url = Some("redis://:hunter2@cache:6379/0".into());
        config.jwks_file = Some(PathBuf::from("/etc/econsult/jwks.json"));
        config.issuers = vec!["https://helseid-sts.nhn.no".into()];
        config.services = vec![ServiceKind::Booking];
        let line = StartLine::new(&config).sentence("10.0.0.5:50051".parse().expect("addr"), None);
        assert!(line.contains("serving booking on"), "{line}");
        assert!(
            line.contains("database: PostgreSQL db:5432/econsult;"),
            "{line}"
        );
        assert!(
            line.contains("event bus: Redis Streams at cache:6379/0 (keys econsult:*)"),
            "{line}"
        );
        assert!(line.contains("JWKS file /etc/econsult/jwks.json"), "{line}");
        assert!(line.contains("no metrics endpoint"), "{line}");
        assert!(
            !line.contains("s3cret")
                && !line.contains("hunter2")
                && !line.contains("development key"),
            "{line}"
        );
    }

    #[test]
    fn reflection_is_served_by_default_only_on_a_loopback_address() {
        let mut config = Config::embedded(PathBuf::from("data"));
        assert!(config.reflection_enabled());
        config.listen = "0.0.0.0:50051".parse().expect("addr");
        assert!(!config.reflection_enabled());
        config.reflection = Some(true);
        assert!(config.reflection_enabled());
        config.listen = "127.0.0.1:50051".parse().expect("addr");
        config.reflection = Some(false);
        assert!(!config.reflection_enabled());
    }

    #[test]
    fn issuers_are_bound_to_their_own_jwks_and_http_is_for_loopback_only() {
        let mut config = Config::embedded(PathBuf::from("data"));
        assert!(config.issuer_configs().expect("dev").is_none());
        config.jwks_url = Some("http://idp.example/jwks.json".into());
        config.issuers = vec!["https://idp.example".into()];
        let err = config.issuer_configs().unwrap_err().to_string();
        assert!(err.contains("https"), "{err}");
        config.jwks_url = Some("http://127.0.0.1:8080/jwks.json".into());
        let one = config.issuer_configs().expect("loopback").expect("issuers");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].roles, econsult_runtime::auth::Roles::ALL);
        // One key set for two issuers is the hole this closes: refused.
        config.issuers.push("https://other.example".into());
        assert!(config.issuer_configs().is_err());
        config.jwks_url = None;
        config.issuers.clear();
        config.trusted_issuers = vec![
            "iss=https://idporten.no,jwks=/etc/idporten.json,roles=patient"
                .parse()
                .expect("issuer"),
        ];
        assert_eq!(config.issuer_configs().expect("ok").expect("some").len(), 1);
        config.jwks_file = Some(PathBuf::from("/etc/jwks.json"));
        assert!(config.issuer_configs().is_err(), "not both forms");
    }
}
