//! Notify service: confirmations, changes, reminders, waitlist offers, replies and video
//! openings to patients by SMS and e-mail, never with health information in them.
//!
//! Driven by the outbox events (consumer group `notify`, the runtime's
//! [`Consumer`](econsult_runtime::consumer::Consumer) with its outbox catch-up): each event
//! becomes at most one queued message per recipient and channel (a unique key), in the
//! consumer's transaction; the sender hands due messages to SMTP, the SMS gateway or the log
//! and records queued / sent / failed / given up.
//!
//! The shape of every service crate: `grpc` (adapter), `service` (intake, sender, preferences),
//! `store` (every SQL statement), `domain`, `error`; besides `content` (templates), `seal`
//! (contact details at rest) and `transport` (SMTP, SMS gateway, log).

pub mod content;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod seal;
pub mod service;
pub mod store;
pub mod transport;

pub use error::NotifyError;
pub use grpc::NotifyGrpc;
pub use seal::Sealer;
pub use service::{CONSUMER_GROUP, Intake, Notify};
pub use transport::{SmsConfig, SmtpConfig, SmtpSecurity};

use econsult_runtime::consumer::Consumer;
use econsult_runtime::platform::{Mount, Platform};
use std::sync::Arc;
use std::time::Duration;

/// Settings of the notify service.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// E-mail over SMTP; `None`: e-mails go to the log.
    pub smtp: Option<SmtpConfig>,
    /// SMS through an HTTP gateway; `None`: SMS go to the log.
    pub sms: Option<SmsConfig>,
    /// The link to log in that every message carries.
    pub login_link: String,
    /// How often the sender looks for due messages (it also wakes when some were queued).
    pub poll: Duration,
    /// Attempts before a temporarily failing message is given up.
    pub max_attempts: u32,
    /// First retry delay (doubled each attempt, at most an hour).
    pub retry_base: Duration,
    /// Longest a hand-over to SMTP or the gateway may take.
    pub send_timeout: Duration,
    /// Period of the catch-up from the outbox.
    pub catch_up_every: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            smtp: None,
            sms: None,
            login_link: "http://127.0.0.1:8080/".into(),
            poll: Duration::from_secs(1),
            max_attempts: 8,
            retry_base: Duration::from_secs(30),
            send_timeout: Duration::from_secs(10),
            catch_up_every: Duration::from_secs(2),
        }
    }
}

/// Mounts the notify service: its gRPC server, the bus consumer (this instance's consumer of
/// group `notify`, starting at the end of the log on its first start) with its outbox
/// catch-up, and the sender. `sealer` opens and seals contact details.
pub fn mount(
    p: &Platform,
    cfg: &NotifyConfig,
    sealer: Sealer,
    m: &mut Mount<'_>,
) -> anyhow::Result<Notify> {
    let notify = Notify::new(p, cfg.clone(), sealer)?;
    let consumer = Consumer::new(
        p.db.clone(),
        CONSUMER_GROUP,
        Arc::new(Intake(notify.clone())),
    );
    let (platform, every) = (p.clone(), cfg.catch_up_every);
    m.spawn(async move {
        if let Err(e) = consumer.start_from_now().await {
            tracing::warn!(error = %e, "notify consumer could not record its start");
        }
        let live = consumer
            .clone()
            .run(platform.clone(), platform.instance_id.clone());
        tokio::join!(live, consumer.run_catch_up(platform.clone(), every));
    });
    m.spawn(notify.clone().run_sender(cfg.poll));
    m.serve(NotifyGrpc::new(notify.clone(), p.proxies()).into_server());
    Ok(notify)
}
