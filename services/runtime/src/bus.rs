//! The event bus between services: at-least-once delivery to durable consumer groups.
//!
//! Two implementations behind one trait, with one contract test suite:
//! - [`DbBus`] (embedded default): the outbox table *is* the log; a consumer group's position is
//!   a row in `bus_offsets`, advanced on ack. Nothing to install, survives restarts.
//! - [`RedisBus`]: events go to a Redis Stream (`XADD`), consumer groups read with `XREADGROUP`
//!   and `XACK`; entries left pending by a dead consumer are claimed after [`CLAIM_IDLE`]
//!   (`XAUTOCLAIM`, looked for every [`CLAIM_EVERY`]). A consumer's connection waits for a reply
//!   longer than any `BLOCK` it sends. The newest sequence number is also sent by pub/sub so
//!   that replicas wake up their change streams at once.
//!
//! Consumers must be idempotent (deduplicate by `event_id`): a redelivery after a crash, or a
//! relay that publishes again after dying before it marked an event published, is normal.

use crate::db::Db;
use async_trait::async_trait;
use redis::AsyncCommands as _;
use sqlx::Row as _;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument as _;

/// A sequenced event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Gap-free position in the outbox, assigned by the relay.
    pub seq: u64,
    /// Unique id (UUIDv7), the deduplication key.
    pub event_id: String,
    /// e.g. `booking.created`.
    pub topic: String,
    /// Organisation the event belongs to.
    pub org_number: String,
    /// JSON body.
    pub payload: String,
    /// When the change committed (ms since the epoch).
    pub created_at: i64,
    /// The W3C traceparent of the call that wrote it ("" if untraced): consumers link to it.
    pub trace_parent: String,
}

/// An event handed to a consumer, to be acknowledged when processed.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// Bus-specific receipt (Redis entry id, or the seq for the database bus).
    pub receipt: String,
}

/// Publishes events and hands them to consumer groups.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes sequenced events (at least once; order of `seq` within one call).
    async fn publish(&self, events: &[Event]) -> anyhow::Result<()>;
    /// Joins consumer group `group` as `consumer`. Unacknowledged deliveries of the group are
    /// delivered again to the next subscription.
    async fn subscribe(&self, group: &str, consumer: &str)
    -> anyhow::Result<Box<dyn Subscription>>;
}

/// A consumer's view of its group.
#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` deliveries, waiting at most `wait` when none is ready.
    async fn fetch(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>>;
    /// Acknowledges processed deliveries; they are not delivered to this group again.
    async fn ack(&mut self, deliveries: &[Delivery]) -> anyhow::Result<()>;
}

/// The embedded bus: reads the outbox table directly.
pub struct DbBus {
    db: Db,
    sequenced: watch::Receiver<u64>,
}

impl DbBus {
    /// A bus over the outbox of `db`; `sequenced` wakes waiting consumers.
    pub fn new(db: Db, sequenced: watch::Receiver<u64>) -> Self {
        Self { db, sequenced }
    }
}

#[async_trait]
impl EventBus for DbBus {
    async fn publish(&self, _events: &[Event]) -> anyhow::Result<()> {
        // The events are already in the log (the outbox); consumers are woken by `sequenced`.
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        _consumer: &str,
    ) -> anyhow::Result<Box<dyn Subscription>> {
        let row = sqlx::query("SELECT seq FROM bus_offsets WHERE consumer_group = $1")
            .bind(group)
            .fetch_optional(self.db.read())
            .await?;
        let position = match row {
            Some(r) => r.try_get::<i64, _>("seq")? as u64,
            None => 0,
        };
        Ok(Box::new(DbSubscription {
            db: self.db.clone(),
            group: group.to_owned(),
            position,
            sequenced: self.sequenced.clone(),
        }))
    }
}

struct DbSubscription {
    db: Db,
    group: String,
    position: u64,
    sequenced: watch::Receiver<u64>,
}

#[async_trait]
impl Subscription for DbSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let events = crate::outbox::read_after(
                &self.db,
                self.position,
                u64::MAX,
                crate::outbox::EventFilter::default(),
                max as i64,
            )
            .await?;
            if let Some(last) = events.last() {
                self.position = last.seq;
                return Ok(events
                    .into_iter()
                    .map(|e| Delivery {
                        receipt: e.seq.to_string(),
                        event: e,
                    })
                    .collect());
            }
            // Poll at least every 250 ms: another process may sequence (PostgreSQL).
            let step = deadline.min(tokio::time::Instant::now() + Duration::from_millis(250));
            tokio::select! {
                _ = self.sequenced.changed() => {}
                _ = tokio::time::sleep_until(step) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> anyhow::Result<()> {
        let Some(max) = deliveries.iter().map(|d| d.event.seq).max() else {
            return Ok(());
        };
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO bus_offsets (consumer_group, seq) VALUES ($1, $2) \
             ON CONFLICT (consumer_group) DO UPDATE SET seq = CASE WHEN excluded.seq > bus_offsets.seq THEN excluded.seq ELSE bus_offsets.seq END",
        )
        .bind(&self.group)
        .bind(max as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The longest a Redis consumer's `XREADGROUP … BLOCK` waits: a longer `wait` is cut to this
/// (the caller fetches again).
pub const MAX_BLOCK: Duration = Duration::from_secs(5);

/// Response timeout of a consumer's connection: longer than any `BLOCK` it sends. The client's
/// default (500 ms) failed every idle `BLOCK 500` with "timed out" on the client side, while
/// Redis went on to deliver entries to the consumer that nobody read (they sat pending until
/// claimed, and the stats catch-up applied them first).
const CONSUMER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an entry stays pending with a consumer before another one claims it
/// (`XAUTOCLAIM` min-idle-time): far above the time a live consumer takes to apply and ack a
/// batch (milliseconds), short enough that a killed instance's entries are acked by a survivor
/// within seconds. A claim of an entry still being processed only repeats idempotent work.
pub const CLAIM_IDLE: Duration = Duration::from_secs(10);

/// How often a consumer looks for entries to claim (`XAUTOCLAIM`) once a look found none. An
/// entry becomes claimable only `CLAIM_IDLE` after its consumer took it; looking before every
/// read, as it was, found it at most this much sooner, for one more round trip per read under
/// load. A killed instance's entries are acked by a survivor within `CLAIM_IDLE` + this + one
/// read's wait.
pub const CLAIM_EVERY: Duration = Duration::from_secs(1);

/// Redis Streams bus.
pub struct RedisBus {
    client: redis::Client,
    publisher: redis::aio::ConnectionManager,
    stream: String,
    channel: String,
}

impl RedisBus {
    /// Connects to `url`; `namespace` prefixes the stream and channel names (tests use a unique
    /// one each). Forwards sequence numbers announced by other replicas into `sequenced`.
    pub async fn connect(
        url: &str,
        namespace: &str,
        sequenced: watch::Sender<u64>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let publisher = redis::aio::ConnectionManager::new(client.clone()).await?;
        let stream = format!("{namespace}:events");
        let channel = format!("{namespace}:sequenced");
        let listener = client.clone();
        let ch = channel.clone();
        tokio::spawn(async move { forward_sequenced(listener, ch, sequenced).await });
        Ok(Self {
            client,
            publisher,
            stream,
            channel,
        })
    }
}

async fn forward_sequenced(client: redis::Client, channel: String, sequenced: watch::Sender<u64>) {
    use futures::StreamExt as _;
    loop {
        let result: anyhow::Result<()> = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                if let Ok(seq) = msg.get_payload::<u64>() {
                    sequenced.send_if_modified(|v| {
                        let changed = *v < seq;
                        *v = (*v).max(seq);
                        changed
                    });
                }
            }
            Ok(())
        }
        .await;
        if sequenced.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "redis pub/sub listener failed, reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, events: &[Event]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in events {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(1_000_000)
                .arg("*")
                .arg("seq")
                .arg(e.seq)
                .arg("event_id")
                .arg(&e.event_id)
                .arg("topic")
                .arg(&e.topic)
                .arg("org")
                .arg(&e.org_number)
                .arg("payload")
                .arg(&e.payload)
                .arg("created_at")
                .arg(e.created_at)
                .arg("trace_parent")
                .arg(&e.trace_parent)
                .ignore();
        }
        let last = events.iter().map(|e| e.seq).max().unwrap_or_default();
        pipe.cmd("PUBLISH").arg(&self.channel).arg(last).ignore();
        let mut con = self.publisher.clone();
        pipe.query_async::<()>(&mut con)
            .instrument(tracing::info_span!(
                "redis",
                otel.name = "redis XADD",
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = "XADD",
                messaging.batch.message_count = events.len(),
            ))
            .await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        consumer: &str,
    ) -> anyhow::Result<Box<dyn Subscription>> {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(CONSUMER_RESPONSE_TIMEOUT));
        let mut con = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        Ok(Box::new(RedisSubscription {
            con,
            stream: self.stream.clone(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            pending_done: false,
            claim_cursor: "0-0".to_owned(),
            claim_at: std::time::Instant::now(),
        }))
    }
}

struct RedisSubscription {
    con: redis::aio::MultiplexedConnection,
    stream: String,
    group: String,
    consumer: String,
    pending_done: bool,
    claim_cursor: String,
    /// When the next `XAUTOCLAIM` is due ([`CLAIM_EVERY`]).
    claim_at: std::time::Instant,
}

fn delivery_from(id: &redis::streams::StreamId) -> Option<Delivery> {
    Some(Delivery {
        event: Event {
            seq: id.get("seq")?,
            event_id: id.get("event_id")?,
            topic: id.get("topic")?,
            org_number: id.get("org")?,
            payload: id.get("payload")?,
            created_at: id.get("created_at")?,
            // Entries written before the field existed have none.
            trace_parent: id.get("trace_parent").unwrap_or_default(),
        },
        receipt: id.id.clone(),
    })
}

impl RedisSubscription {
    async fn read(
        &mut self,
        from: &str,
        max: usize,
        block: Option<Duration>,
    ) -> anyhow::Result<Vec<Delivery>> {
        let mut opts = redis::streams::StreamReadOptions::default()
            .group(&self.group, &self.consumer)
            .count(max);
        if let Some(b) = block {
            opts = opts.block(b.min(MAX_BLOCK).as_millis().max(1) as usize);
        }
        let reply: Option<redis::streams::StreamReadReply> = self
            .con
            .xread_options(&[&self.stream], &[from], &opts)
            .await?;
        Ok(reply
            .map(|r| {
                r.keys
                    .iter()
                    .flat_map(|k| k.ids.iter().filter_map(delivery_from))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        // First what this consumer left pending before a restart, then entries other consumers
        // left pending for over `CLAIM_IDLE`, then new entries.
        if !self.pending_done {
            let pending = self.read("0", max, None).await?;
            if !pending.is_empty() {
                return Ok(pending);
            }
            self.pending_done = true;
        }
        if std::time::Instant::now() >= self.claim_at {
            let claimed: redis::Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(CLAIM_IDLE.as_millis() as u64)
                .arg(&self.claim_cursor)
                .arg("COUNT")
                .arg(max)
                .query_async(&mut self.con)
                .await?;
            let claimed = parse_autoclaim(claimed, &mut self.claim_cursor);
            // Claimed entries, or a scan not at its end (`0-0`): look again at the next fetch.
            if claimed.is_empty() && self.claim_cursor == "0-0" {
                self.claim_at = std::time::Instant::now() + CLAIM_EVERY;
            }
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        self.read(">", max, Some(wait)).await
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> anyhow::Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = deliveries.iter().map(|d| d.receipt.as_str()).collect();
        let _: i64 = self.con.xack(&self.stream, &self.group, &ids).await?;
        Ok(())
    }
}

/// Parses an `XAUTOCLAIM` reply: `[next-cursor, [[id, [k, v, …]], …], …]`.
fn parse_autoclaim(v: redis::Value, cursor: &mut String) -> Vec<Delivery> {
    use redis::Value;
    let Value::Array(parts) = v else {
        return Vec::new();
    };
    let mut parts = parts.into_iter();
    if let Some(Value::BulkString(c)) = parts.next() {
        *cursor = String::from_utf8_lossy(&c).into_owned();
    }
    let Some(Value::Array(entries)) = parts.next() else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(pair) = entry else {
                return None;
            };
            let mut pair = pair.into_iter();
            let Some(Value::BulkString(id)) = pair.next() else {
                return None;
            };
            let Some(Value::Array(kv)) = pair.next() else {
                return None;
            };
            let mut map = std::collections::HashMap::new();
            let mut kv = kv.into_iter();
            while let (Some(Value::BulkString(k)), Some(v)) = (kv.next(), kv.next()) {
                map.insert(String::from_utf8_lossy(&k).into_owned(), v);
            }
            delivery_from(&redis::streams::StreamId {
                id: String::from_utf8_lossy(&id).into_owned(),
                map,
                ..Default::default()
            })
        })
        .collect()
}
