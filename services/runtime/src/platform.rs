//! What every service gets from the process: database, event bus, clock, authenticator, the
//! outbox relay, and a shutdown signal.

use crate::auth::{AuthInterceptor, Authenticator};
use crate::bus::{DbBus, EventBus, RedisBus};
use crate::clock::Clock;
use crate::db::Db;
use crate::outbox::Relay;
use crate::pseudonym::Pseudonymizer;
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

/// How to build a [`Platform`].
pub struct PlatformConfig {
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Redis for events across replicas; `None` uses the embedded database bus.
    pub redis_url: Option<String>,
    /// Prefix of Redis keys (tests use a unique one).
    pub redis_namespace: String,
    /// Apply migrations on start.
    pub migrate: bool,
    /// Most database connections (PostgreSQL pool; SQLite read pool, one writer besides).
    pub db_max_connections: u32,
    /// Token validation.
    pub auth: Arc<Authenticator>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// This process among the replicas (consumer name on the bus, presence owner).
    pub instance_id: String,
    /// Patients' pseudonymous event keys (the same key on every replica).
    pub pseudonyms: Arc<Pseudonymizer>,
}

/// Shared handles of one process.
#[derive(Clone)]
pub struct Platform {
    /// The database.
    pub db: Db,
    /// The event bus.
    pub bus: Arc<dyn EventBus>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Token validation.
    pub auth: Arc<Authenticator>,
    /// Highest outbox `seq` known to be sequenced (wakes change streams).
    pub sequenced: watch::Receiver<u64>,
    /// Turns true when the process is shutting down: long streams end themselves.
    pub shutdown: watch::Receiver<bool>,
    /// This process among the replicas.
    pub instance_id: String,
    /// Redis, when the replicas share one (services with Redis state of their own connect to
    /// it: signalling's presence); `None` on the embedded defaults.
    pub redis_url: Option<String>,
    /// Prefix of this deployment's Redis keys.
    pub redis_namespace: String,
    /// Patients' pseudonymous event keys: the outbox `route_key` of events about a patient
    /// (events carry no identity number).
    pub pseudonyms: Arc<Pseudonymizer>,
}

impl Platform {
    /// The resolver of `x-on-behalf-of`: the patient a patient call is about.
    pub fn proxies(&self) -> crate::proxy::Resolver {
        crate::proxy::Resolver::new(self.db.clone(), self.clock.clone())
    }

    /// Connects storage and bus and starts the outbox relay.
    pub async fn start(cfg: PlatformConfig) -> anyhow::Result<(Platform, PlatformHandle)> {
        let db = Db::connect_with(&cfg.database_url, cfg.db_max_connections).await?;
        if cfg.migrate {
            db.migrate().await?;
        }
        for warning in db.maintenance_warnings().await? {
            tracing::warn!(%warning, "database maintenance is off");
        }
        let (seq_tx, seq_rx) = watch::channel(0u64);
        let bus: Arc<dyn EventBus> = match &cfg.redis_url {
            Some(url) => {
                Arc::new(RedisBus::connect(url, &cfg.redis_namespace, seq_tx.clone()).await?)
            }
            None => Arc::new(DbBus::new(db.clone(), seq_rx.clone())),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let relay = Relay::new(db.clone(), bus.clone(), seq_tx);
        let relay_task = tokio::spawn(relay.run(stop_rx.clone()));
        let platform = Platform {
            db,
            bus,
            clock: cfg.clock,
            auth: cfg.auth,
            sequenced: seq_rx,
            shutdown: stop_rx,
            instance_id: cfg.instance_id,
            redis_url: cfg.redis_url,
            redis_namespace: cfg.redis_namespace,
            pseudonyms: cfg.pseudonyms,
        };
        Ok((
            platform,
            PlatformHandle {
                stop: stop_tx,
                tasks: vec![relay_task],
            },
        ))
    }

    /// A ticker for periodic work that should also follow new events soon (gauges).
    pub fn ticker(&self, every: Duration) -> Ticker {
        let mut events = self.sequenced.clone();
        events.mark_unchanged();
        Ticker {
            events,
            stop: self.shutdown.clone(),
            every,
        }
    }
}

/// Ticks every `every`, or a second after new events were sequenced, until shutdown.
pub struct Ticker {
    events: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    every: Duration,
}

impl Ticker {
    /// Waits for the next tick; `false` when the process is shutting down.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.every) => {}
            _ = self.events.changed() => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.stop.changed() => return false,
                }
                self.events.mark_unchanged();
            }
            _ = self.stop.changed() => return false,
        }
        !*self.stop.borrow()
    }
}

/// Owner of the background tasks; stops them on [`PlatformHandle::shutdown`].
pub struct PlatformHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl PlatformHandle {
    /// Adds a background task to stop and await at shutdown.
    pub fn track(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Signals shutdown to streams and tasks.
    pub fn signal(&self) {
        let _ = self.stop.send(true);
    }

    /// Signals shutdown and waits up to `deadline` for the tasks (the relay flushes once more).
    pub async fn shutdown(self, deadline: Duration) {
        self.signal();
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("background tasks did not stop within the shutdown deadline");
        }
    }
}

/// Where a service crate mounts itself (its `mount` function): its gRPC server, behind the
/// caller check, and its background tasks, stopped with the platform.
pub struct Mount<'a> {
    routes: &'a mut tonic::service::RoutesBuilder,
    interceptor: AuthInterceptor,
    handle: &'a mut PlatformHandle,
}

impl<'a> Mount<'a> {
    /// Mounts into `routes`, checking callers with `interceptor`, tracking tasks in `handle`.
    pub fn new(
        routes: &'a mut tonic::service::RoutesBuilder,
        interceptor: AuthInterceptor,
        handle: &'a mut PlatformHandle,
    ) -> Self {
        Self {
            routes,
            interceptor,
            handle,
        }
    }

    /// Serves `server` (a generated `…ServiceServer`), every call through the caller check.
    pub fn serve<S>(&mut self, server: S)
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes
            .add_service(InterceptedService::new(server, self.interceptor.clone()));
    }

    /// Runs `task` in the background until shutdown (it watches [`Platform::shutdown`]).
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.handle.track(tokio::spawn(task));
    }
}
