//! Wake-ups and presence across replicas.
//!
//! Events themselves live in the database (`signalling_messages`); the hub only tells the
//! streams of a session's side that there is something new, and remembers which participants
//! have a live stream.
//!
//! - Embedded (no Redis): in-process channels, one per session with a live stream, and an
//!   in-memory presence table.
//! - With Redis: a wake-up goes to this process's streams at once and is published as
//!   `PUBLISH <ns>:signalling:wake:<session_id> "<side> <origin>"`; every replica
//!   pattern-subscribes to `<ns>:signalling:wake:*` and forwards into the session's local channel
//!   the wake-ups whose origin is another hub (its own were delivered already: forwarding them
//!   again made every stream of the publishing replica read the database twice per signal).
//!   Presence is a key `<ns>:signalling:presence:<session_id>:<side>` with an expiry that the
//!   stream refreshes; a replica that crashed stops refreshing, the key expires, and the sweeper
//!   of any replica turns the participant into "disconnected" and tells the peer.
//!
//! Wake-ups may be lost (Redis reconnecting): streams also poll the database now and then.

use crate::domain::Side;
use futures::StreamExt as _;
use redis::AsyncCommands as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tracing::Instrument as _;

/// "Something new for `side` of `session_id`" (`side` `None`: both sides). On Redis the side
/// travels as its code, 0 for both, followed by the publishing hub's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    /// The session ("" for every session).
    pub session_id: Arc<str>,
    /// The side, or `None` for both.
    pub side: Option<Side>,
}

impl Wake {
    /// Whether a stream of `side` in `session_id` should look for new events.
    pub fn concerns(&self, session_id: &str, side: Side) -> bool {
        (self.session_id.is_empty() || *self.session_id == *session_id)
            && self.side.is_none_or(|s| s == side)
    }
}

/// Wake-ups and presence.
#[derive(Clone)]
pub struct Hub {
    local: Arc<Local>,
    redis: Option<RedisHub>,
    presence: Arc<Mutex<HashMap<(String, Side), Instant>>>,
    presence_ttl: Duration,
}

#[derive(Clone)]
struct RedisHub {
    client: redis::Client,
    con: redis::aio::ConnectionManager,
    prefix: String,
    /// This hub's tag on what it publishes, so its listener can skip its own wake-ups.
    origin: String,
}

/// The in-process side of wake-ups: one channel per session with a live stream, so a wake-up
/// reaches only that session's streams (a process with 1 000 streams used to wake all of them
/// for every signal), plus one channel for wake-ups of every stream (after a Redis reconnect).
struct Local {
    all: broadcast::Sender<Wake>,
    sessions: Mutex<HashMap<Arc<str>, broadcast::Sender<Wake>>>,
}

impl Local {
    fn send(&self, wake: Wake) {
        if wake.session_id.is_empty() {
            let _ = self.all.send(wake);
            return;
        }
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = sessions.get(&wake.session_id) {
            let _ = tx.send(wake);
        }
    }
}

/// The wake-ups of one stream: its session's and the ones for every stream.
pub struct Wakes {
    session_id: Arc<str>,
    own: broadcast::Receiver<Wake>,
    all: broadcast::Receiver<Wake>,
    local: Arc<Local>,
}

impl Wakes {
    /// The next wake-up (cancel-safe). `Lagged` means some were missed: re-read.
    pub async fn recv(&mut self) -> Result<Wake, broadcast::error::RecvError> {
        tokio::select! {
            w = self.own.recv() => w,
            w = self.all.recv() => w,
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        let mut sessions = self
            .local
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The last stream of the session (this one, still counted) removes its channel.
        if sessions
            .get(&self.session_id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            sessions.remove(&self.session_id);
        }
    }
}

impl Hub {
    /// An in-process hub (embedded, single replica).
    pub fn local(presence_ttl: Duration) -> Self {
        let (all, _) = broadcast::channel(64);
        let local = Arc::new(Local {
            all,
            sessions: Mutex::default(),
        });
        Self {
            local,
            redis: None,
            presence: Arc::default(),
            presence_ttl,
        }
    }

    /// A hub over Redis at `url`, keys prefixed with `namespace`.
    pub async fn redis(url: &str, namespace: &str, presence_ttl: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let con = redis::aio::ConnectionManager::new(client.clone()).await?;
        let mut hub = Self::local(presence_ttl);
        hub.redis = Some(RedisHub {
            client,
            con,
            prefix: format!("{namespace}:signalling"),
            origin: uuid::Uuid::new_v4().simple().to_string(),
        });
        Ok(hub)
    }

    /// Subscribes to Redis wake-ups (when on Redis) and returns the task that forwards them into
    /// the local broadcast until `stop`. The subscription is in place when this returns.
    pub async fn listener(
        &self,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Option<impl std::future::Future<Output = ()> + Send + 'static>> {
        let Some(r) = self.redis.clone() else {
            return Ok(None);
        };
        let pattern = format!("{}:wake:*", r.prefix);
        let first = subscribe(&r.client, &pattern).await?;
        let local = self.local.clone();
        Ok(Some(async move {
            let mut pubsub = Some(first);
            loop {
                let ps = match pubsub.take() {
                    Some(ps) => ps,
                    None => match subscribe(&r.client, &pattern).await {
                        Ok(ps) => {
                            // Anything published while we were away: streams re-read.
                            local.send(Wake {
                                session_id: Arc::from(""),
                                side: None,
                            });
                            ps
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "signalling wake-up subscription failed");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                                _ = crate::hub::stopped(&mut stop) => return,
                            }
                        }
                    },
                };
                let mut messages = ps.into_on_message();
                let skip = r.prefix.len() + ":wake:".len();
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(msg) => {
                                let payload: String = msg.get_payload().unwrap_or_default();
                                let (side, origin) = parse_wake(&payload);
                                if origin == Some(r.origin.as_str()) {
                                    continue;
                                }
                                if let Some(session) = msg.get_channel_name().get(skip..) {
                                    local.send(Wake { session_id: Arc::from(session), side });
                                }
                            }
                            None => break,
                        },
                        _ = crate::hub::stopped(&mut stop) => return,
                    }
                }
                tracing::warn!("signalling wake-up subscription lost, reconnecting");
            }
        }))
    }

    /// Wakes the streams of `side` (`None`: both) of `session_id`, on every replica.
    pub async fn wake(&self, session_id: &str, side: Option<Side>) {
        self.local.send(Wake {
            session_id: Arc::from(session_id),
            side,
        });
        if let Some(r) = &self.redis {
            let mut con = r.con.clone();
            let channel = format!("{}:wake:{session_id}", r.prefix);
            let payload = format!("{} {}", side.map_or(0, Side::code), r.origin);
            if let Err(e) = con
                .publish::<_, _, i64>(channel, payload)
                .instrument(redis_span("PUBLISH"))
                .await
            {
                // The other replica's stream still polls the database.
                tracing::warn!(error = %e, "publish signalling wake-up");
            }
        }
    }

    /// The wake-ups of a stream of `session_id` (the stream still filters by side).
    pub fn subscribe(&self, session_id: &str) -> Wakes {
        let key: Arc<str> = Arc::from(session_id);
        let own = {
            let mut sessions = self
                .local
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            sessions
                .entry(key.clone())
                .or_insert_with(|| broadcast::channel(256).0)
                .subscribe()
        };
        Wakes {
            session_id: key,
            own,
            all: self.local.all.subscribe(),
            local: self.local.clone(),
        }
    }

    /// Marks the participant as online for the presence TTL.
    pub async fn refresh_presence(&self, session_id: &str, side: Side) -> anyhow::Result<()> {
        match &self.redis {
            Some(r) => {
                let mut con = r.con.clone();
                let key = format!("{}:presence:{session_id}:{}", r.prefix, side.code());
                let ttl = self.presence_ttl.as_millis().max(1) as u64;
                let _: () = redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut con)
                    .instrument(redis_span("SET"))
                    .await?;
            }
            None => {
                let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                p.retain(|_, exp| *exp > now);
                p.insert((session_id.to_owned(), side), now + self.presence_ttl);
            }
        }
        Ok(())
    }

    /// Whether the participant's presence is still fresh.
    pub async fn alive(&self, session_id: &str, side: Side) -> anyhow::Result<bool> {
        match &self.redis {
            Some(r) => {
                let mut con = r.con.clone();
                let key = format!("{}:presence:{session_id}:{}", r.prefix, side.code());
                Ok(con.exists(key).instrument(redis_span("EXISTS")).await?)
            }
            None => {
                let p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
                Ok(p.get(&(session_id.to_owned(), side))
                    .is_some_and(|exp| *exp > Instant::now()))
            }
        }
    }
}

/// The side and the publishing hub's origin of a wake-up's payload. A payload without an
/// origin (a replica from before origins) is another hub's; one that does not parse wakes both
/// sides.
fn parse_wake(payload: &str) -> (Option<Side>, Option<&str>) {
    let (code, origin) = match payload.split_once(' ') {
        Some((code, origin)) => (code, Some(origin)),
        None => (payload, None),
    };
    (Side::from_code(code.parse().unwrap_or(0)), origin)
}

async fn subscribe(client: &redis::Client, pattern: &str) -> anyhow::Result<redis::aio::PubSub> {
    let mut ps = client.get_async_pubsub().await?;
    ps.psubscribe(pattern).await?;
    Ok(ps)
}

/// Completes when `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A CLIENT span for one Redis command.
fn redis_span(command: &'static str) -> tracing::Span {
    tracing::info_span!(
        "redis",
        otel.name = format!("redis {command}"),
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = command,
    )
}
