//! The notify service's use cases: turning events into queued messages (`intake`), sending
//! them (`send`), who hears about a patient (`recipients`: the patient and those acting for
//! them), and the preferences and ops' dead-letter list (`preferences`).

mod intake;
mod preferences;
mod recipients;
mod send;

pub use intake::{CONSUMER_GROUP, Intake};
pub use send::{SEND_ACTION, SYSTEM_NAME};

use crate::NotifyConfig;
use crate::content::Templates;
use crate::domain::{Channels, Language, Preferences};
use crate::seal::Sealer;
use crate::store::{self, StoredPreferences};
use crate::transport::{LogTransport, SmsTransport, SmtpTransport, Transport};
use econsult_runtime::platform::Platform;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use std::sync::Arc;
use tokio::sync::Notify as Wake;

/// The notify service: intake, sender, preferences.
#[derive(Clone)]
pub struct Notify {
    p: Platform,
    cfg: Arc<NotifyConfig>,
    templates: Arc<Templates>,
    sealer: Sealer,
    log: Arc<dyn Transport>,
    sms: Option<Arc<dyn Transport>>,
    email: Option<Arc<dyn Transport>>,
    wake: Arc<Wake>,
    outcomes: Counter<u64>,
}

impl Notify {
    /// The service over `p` with `cfg` (templates checked, transports built).
    pub fn new(p: &Platform, cfg: NotifyConfig, sealer: Sealer) -> anyhow::Result<Self> {
        let sms = match &cfg.sms {
            Some(c) => Some(Arc::new(SmsTransport::new(c)?) as Arc<dyn Transport>),
            None => None,
        };
        let email = match &cfg.smtp {
            Some(c) => Some(Arc::new(SmtpTransport::new(c)?) as Arc<dyn Transport>),
            None => None,
        };
        Self::with_transports(p, cfg, sealer, sms, email)
    }

    /// The service with the given SMS and e-mail transports (`None`: to the log).
    pub fn with_transports(
        p: &Platform,
        cfg: NotifyConfig,
        sealer: Sealer,
        sms: Option<Arc<dyn Transport>>,
        email: Option<Arc<dyn Transport>>,
    ) -> anyhow::Result<Self> {
        let meter = opentelemetry::global::meter("econsult.notify");
        Ok(Self {
            p: p.clone(),
            cfg: Arc::new(cfg),
            templates: Arc::new(Templates::load()?),
            sealer,
            log: Arc::new(LogTransport),
            sms,
            email,
            wake: Arc::new(Wake::new()),
            outcomes: meter
                .u64_counter("econsult_notifications")
                .with_description(
                    "Notification attempts by channel (sms, email, log) and outcome (sent, failed, retried, given_up, held)",
                )
                .build(),
        })
    }

    fn count(&self, channel: &'static str, outcome: &'static str) {
        self.outcomes.add(
            1,
            &[
                KeyValue::new("channel", channel),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    /// The preferences of `nin` as stored (defaults when none), contact details still sealed.
    async fn stored(
        conn: &mut sqlx::AnyConnection,
        nin: &str,
    ) -> Result<StoredPreferences, sqlx::Error> {
        Ok(store::preferences(conn, nin)
            .await?
            .unwrap_or_else(Self::defaults))
    }

    /// The preferences of someone who never set any.
    fn defaults() -> StoredPreferences {
        StoredPreferences {
            reminder_minutes: crate::domain::DEFAULT_REMINDER_MINUTES.to_string(),
            language: Language::Nb.as_str().into(),
            ..Default::default()
        }
    }

    /// Opens stored preferences (contact details in the clear).
    fn open(&self, nin: &str, s: &StoredPreferences) -> anyhow::Result<Preferences> {
        let open = |v: &Option<String>| -> anyhow::Result<Option<String>> {
            v.as_deref().map(|v| self.sealer.open(nin, v)).transpose()
        };
        Ok(Preferences {
            email: open(&s.email_sealed)?,
            phone: open(&s.phone_sealed)?,
            channels: (s.channels != 0).then(|| Channels::from_bits(s.channels)),
            reminder_minutes: lead_times(&s.reminder_minutes),
            language: Language::parse(&s.language),
            opted_out: s.opted_out,
        })
    }
}

/// Lead times from their stored list.
fn lead_times(s: &str) -> Vec<u32> {
    s.split(',').filter_map(|m| m.trim().parse().ok()).collect()
}
