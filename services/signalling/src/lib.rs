//! WebRTC signalling for video consultations, across replicas.
//!
//! - [`Signalling`] holds the logic: who may join a session and when, the waiting room, the
//!   per-participant event queues, SDP/ICE validation and the negotiation order, the session
//!   record and the `signalling.session_ended` event for the statistics; on the types of
//!   [`domain`], failing with a [`SignallingError`].
//! - `store` holds every SQL statement of the service.
//! - [`grpc`] is the tonic adapter (`econsult.signalling.v1.SignallingService`), including the
//!   bidirectional `Signal` stream and the stored (wire) form of queued events, which the logic
//!   is given as an [`EventCodec`] when it starts.
//! - [`hub`] wakes streams when an event for them was stored and tracks which participants are
//!   online: in-process (embedded) or through Redis pub/sub and expiring presence keys, so two
//!   participants on different replicas reach each other.
//! - [`turn`] mints coturn REST API credentials.
//!
//! The database is the source of truth: every relayed signal is stored in the recipient's queue
//! with a gap-free sequence number in the transaction that checks it; the hub only says "look
//! again". A stream that dropped resumes from the last sequence number it saw, on any replica.

pub mod domain;
pub mod error;
pub mod grpc;
pub mod hub;
mod sdp;
mod service;
mod store;
pub mod turn;

pub use error::SignallingError;
pub use grpc::SignallingGrpc;
pub use service::{Delivered, EventCodec, Signalling};

use std::time::Duration;

/// Tunables of the signalling service.
#[derive(Clone)]
pub struct SignallingConfig {
    /// How long before the slot start participants may join.
    pub join_before: chrono::Duration,
    /// How long after the slot end participants may still join (the session is ended then).
    pub join_after_end: chrono::Duration,
    /// How long a participant whose stream dropped may come back and resume.
    pub reconnect_grace: chrono::Duration,
    /// STUN URLs handed out by GetIceServers.
    pub stun_urls: Vec<String>,
    /// TURN URLs handed out with credentials.
    pub turn_urls: Vec<String>,
    /// The coturn `static-auth-secret`; `None` uses a development secret in the data directory.
    pub turn_secret: Option<String>,
    /// Lifetime of TURN credentials.
    pub turn_ttl: Duration,
    /// Largest accepted signalling message (SDP, candidate) in bytes.
    pub max_message_bytes: usize,
    /// Most ICE candidates one side may trickle per ICE generation.
    pub max_candidates: i64,
    /// Most ICE restarts one side may start per session.
    pub max_ice_restarts: i64,
    /// A live stream refreshes its presence; a presence not refreshed for this long (a crashed
    /// replica) counts as a dropped stream.
    pub presence_ttl: Duration,
    /// Streams look for new events at least this often even without a wake-up.
    pub poll_interval: Duration,
    /// How often the sweeper ends sessions past their window and notices lost participants.
    pub sweep_interval: Duration,
    /// Messages one Signal stream may send (each is a write transaction): sustained rate and
    /// burst; past it a message is answered Rejected(RESOURCE_EXHAUSTED) and the stream lives on.
    /// A call's offer, answer and a full generation of candidates fit in the burst.
    pub stream_messages: econsult_runtime::ratelimit::Limit,
}

impl Default for SignallingConfig {
    fn default() -> Self {
        Self {
            join_before: chrono::Duration::minutes(15),
            join_after_end: chrono::Duration::minutes(30),
            reconnect_grace: chrono::Duration::seconds(60),
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl: Duration::from_secs(3600),
            max_message_bytes: 64 * 1024,
            max_candidates: 50,
            max_ice_restarts: 10,
            presence_ttl: Duration::from_secs(15),
            poll_interval: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(3),
            stream_messages: econsult_runtime::ratelimit::Limit {
                per_second: 10.0,
                burst: 100.0,
            },
        }
    }
}

impl std::fmt::Debug for SignallingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignallingConfig")
            .field("join_before", &self.join_before)
            .field("join_after_end", &self.join_after_end)
            .field("reconnect_grace", &self.reconnect_grace)
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field(
                "turn_secret",
                &self.turn_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("turn_ttl", &self.turn_ttl)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_candidates", &self.max_candidates)
            .finish_non_exhaustive()
    }
}

/// The development TURN secret: read from `<data_dir>/turn-secret`, created (random, owner-only)
/// on first use. Production passes the coturn `static-auth-secret` instead.
pub fn dev_turn_secret(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use base64::Engine as _;
    use rand::RngCore as _;
    let path = data_dir.join("turn-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
    std::fs::write(&path, &secret).with_context(|| format!("write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(secret)
}

/// Mounts the signalling service: its gRPC server, the cross-replica hub's listener (with Redis)
/// and the sweeper of sessions whose peers went away. `turn_secret` signs TURN credentials.
pub async fn mount(
    p: &econsult_runtime::platform::Platform,
    cfg: &SignallingConfig,
    turn_secret: String,
    m: &mut econsult_runtime::platform::Mount<'_>,
) -> anyhow::Result<()> {
    let (signalling, tasks) = Signalling::start(
        p.clone(),
        cfg.clone(),
        turn_secret,
        p.redis_url.as_deref(),
        &p.redis_namespace,
        p.instance_id.clone(),
        std::sync::Arc::new(grpc::wire::WireCodec),
    )
    .await?;
    for task in tasks {
        m.spawn(task);
    }
    m.serve(
        SignallingGrpc::new(signalling, p.proxies())
            .into_server()
            .max_decoding_message_size(256 * 1024),
    );
    Ok(())
}
