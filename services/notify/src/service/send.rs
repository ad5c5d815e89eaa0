//! The sender: takes due messages (a lease, so replicas share the work and a dead process's
//! messages are taken again), holds SMS in the quiet hours, checks again that a person acting
//! for the patient may still hear about them, opens the contact details (an access-log row of
//! the system `econsult-notify` for each send that reads them), renders the template and hands
//! the message to its transport. A temporary failure is retried with
//! backoff until `max_attempts`, then given up; a permanent one fails at once with its reason.
//!
//! Delivery is exactly once per (event, recipient, channel) up to the hand-over: a process
//! killed after the transport accepted a message and before it was marked sent hands it over
//! again when the lease lapses, with the same message id (the gateway's idempotency key, the
//! e-mail's Message-ID), so a gateway that keeps ids sends it once. A pass reads its patients'
//! preferences in one statement and marks its hand-overs sent together: when it ends, or at the
//! first hand-over after the oldest unmarked one has waited [`MARK_WITHIN`].

use super::Notify;
use super::recipients::area;
use crate::domain::{Channel, Facts, Kind, Status, backoff, sms_allowed_at};
use crate::store::{self, Claimed, StoredPreferences};
use crate::transport::{Outgoing, SendError, Transport};
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::Caller;
use econsult_runtime::clock::from_ms;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sender as its access-log rows name it.
pub const SYSTEM_NAME: &str = "econsult-notify";

/// The action of the sender's access-log rows (no RPC: the background sender).
pub const SEND_ACTION: &str = "econsult-notify/send";

/// Messages taken per pass.
const BATCH: i64 = 50;

/// How long a taken message is left to its sender before another may take it.
const LEASE_MS: i64 = 60_000;

/// How long the sender, woken by the intake, waits for more before its pass: at a booking
/// rush one pass then takes the messages of many bookings (a claim, a read of preferences and a
/// mark for all of them) instead of one or two.
const GATHER: Duration = Duration::from_millis(25);

/// Longest a handed-over message waits to be marked sent with the others of its pass.
const MARK_WITHIN: Duration = Duration::from_millis(250);

/// Messages of a pass handed over and not yet marked sent: (id, when, transport label). They
/// are marked together when the pass ends, or at the first hand-over after the oldest has
/// waited [`MARK_WITHIN`] (a hand-over itself may take up to the send timeout). A
/// process killed in between hands them over again after their lease with the same ids, as it
/// would one message killed between its hand-over and its mark.
#[derive(Default)]
struct Sent {
    since: Option<Instant>,
    messages: Vec<(String, i64, &'static str)>,
}

impl Sent {
    fn push(&mut self, id: String, at: i64, label: &'static str) {
        self.since.get_or_insert_with(Instant::now);
        self.messages.push((id, at, label));
    }

    /// The oldest has waited long enough.
    fn due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= MARK_WITHIN)
    }

    fn take(&mut self) -> Vec<(String, i64, &'static str)> {
        self.since = None;
        std::mem::take(&mut self.messages)
    }
}

impl Notify {
    /// Sends what is due now; returns how many messages were taken.
    pub async fn send_due(&self) -> anyhow::Result<usize> {
        let now = self.p.clock.now_ms();
        let due = {
            let mut conn = self.p.db.read().acquire().await?;
            store::any_due(&mut conn, now).await?
        };
        if !due {
            return Ok(0);
        }
        let claimed = store::claim_due(&self.p.db, now, now + LEASE_MS, BATCH).await?;
        let n = claimed.len();
        // The patients' own preferences for the whole pass in one read (those a person acting
        // for a patient set are read with the relation's check, message by message).
        let own = {
            let mut nins: Vec<&str> = claimed
                .iter()
                .filter(|c| c.subject_nin.is_empty())
                .map(|c| c.nin.as_str())
                .collect();
            nins.sort_unstable();
            nins.dedup();
            store::preferences_of(self.p.db.read(), &nins).await?
        };
        let mut sent = Sent::default();
        for c in claimed {
            let id = c.message_id.clone();
            match self.deliver(c, now, &own).await {
                Ok(Some((at, label))) => {
                    sent.push(id, at, label);
                    if sent.due() {
                        self.mark_sent(&mut sent).await;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(message_id = %id, error = %e, "notification not handed over; taken again after its lease");
                }
            }
        }
        self.mark_sent(&mut sent).await;
        Ok(n)
    }

    /// Marks the handed-over messages of `sent` as sent, in one statement. Should that fail,
    /// they are handed over again, with the same ids, once their lease lapses.
    async fn mark_sent(&self, sent: &mut Sent) {
        let batch = sent.take();
        if batch.is_empty() {
            return;
        }
        let ids: Vec<(String, i64)> = batch.iter().map(|(id, at, _)| (id.clone(), *at)).collect();
        match store::finish_sent(&self.p.db, &ids).await {
            Ok(_) => {
                for (_, _, label) in &batch {
                    self.count(label, "sent");
                }
            }
            Err(e) => {
                tracing::warn!(messages = batch.len(), error = %e, "handed-over notifications not marked sent; handed over again after their lease");
            }
        }
    }

    fn transport(&self, channel: Channel) -> (&'static str, Arc<dyn Transport>) {
        match (channel, &self.sms, &self.email) {
            (Channel::Sms, Some(t), _) => ("sms", t.clone()),
            (Channel::Email, _, Some(t)) => ("email", t.clone()),
            _ => ("log", self.log.clone()),
        }
    }

    async fn fail(
        &self,
        c: &Claimed,
        status: Status,
        label: &'static str,
        reason: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        store::finish(
            &self.p.db,
            &c.message_id,
            status.code(),
            status != Status::Cancelled,
            reason,
            now,
        )
        .await?;
        if status != Status::Cancelled {
            self.count(label, status.as_str());
        }
        Ok(())
    }

    /// Hands `c` over to its transport, or ends or requeues it. Returns when it was handed
    /// over, and the transport's label, for the caller to mark it sent ([`store::finish_sent`]);
    /// `own` holds the stored preferences of the pass's patients.
    async fn deliver(
        &self,
        c: Claimed,
        now: i64,
        own: &HashMap<String, StoredPreferences>,
    ) -> anyhow::Result<Option<(i64, &'static str)>> {
        let (Some(kind), Some(channel)) = (Kind::parse(&c.kind), Channel::parse(&c.channel)) else {
            self.fail(&c, Status::Failed, "log", "unknown kind or channel", now)
                .await?;
            return Ok(None);
        };
        let (label, transport) = self.transport(channel);
        if channel == Channel::Sms {
            let allowed = sms_allowed_at(from_ms(now), c.urgent).timestamp_millis();
            if allowed > now {
                store::requeue(
                    &self.p.db,
                    &c.message_id,
                    allowed,
                    false,
                    "held for the quiet hours",
                )
                .await?;
                self.count(label, "held");
                return Ok(None);
            }
        }
        let stored = if c.subject_nin.is_empty() {
            own.get(&c.nin).cloned().unwrap_or_else(Self::defaults)
        } else {
            // A person acting for the patient: only while the relation still allows it.
            let p = {
                let mut conn = self.p.db.read().acquire().await?;
                store::proxy_preferences(&mut conn, &c.subject_nin, &c.nin).await?
            };
            match p {
                Some(p)
                    if self
                        .relation_allows(&c.subject_nin, &c.nin, p.relation, area(kind))
                        .await? =>
                {
                    p.stored
                }
                _ => {
                    return self
                        .fail(
                            &c,
                            Status::Cancelled,
                            label,
                            "the relation to the patient no longer allows it",
                            now,
                        )
                        .await
                        .map(|()| None);
                }
            }
        };
        let prefs = match self.open(&c.nin, &stored) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .fail(&c, Status::Failed, label, &e.to_string(), now)
                    .await
                    .map(|()| None);
            }
        };
        if prefs.opted_out {
            return self
                .fail(&c, Status::Cancelled, label, "the patient opted out", now)
                .await
                .map(|()| None);
        }
        let facts: Facts = match serde_json::from_str(&c.facts) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .fail(&c, Status::Failed, label, &format!("facts: {e}"), now)
                    .await
                    .map(|()| None);
            }
        };
        let rendered =
            match self
                .templates
                .render(kind, channel, prefs.language, &facts, &self.cfg.login_link)
            {
                Ok(r) => r,
                Err(e) => {
                    return self
                        .fail(&c, Status::Failed, label, &e.to_string(), now)
                        .await
                        .map(|()| None);
                }
            };
        let to = match channel {
            Channel::Sms => prefs.phone,
            Channel::Email => prefs.email,
            Channel::Log => Some(String::new()),
        };
        let Some(to) = to else {
            return self
                .fail(
                    &c,
                    Status::Failed,
                    label,
                    "no address on file for this channel",
                    now,
                )
                .await
                .map(|()| None);
        };
        if label != "log" {
            // The sender read the recipient's phone number or e-mail address: in their access
            // log, by the system, for operations. No row, no send.
            let access = Access::new(
                SEND_ACTION,
                format!("notify_message:{}", c.message_id),
                &c.nin,
                format!(
                    "read your {} to send {}",
                    match channel {
                        Channel::Email => "e-mail address",
                        _ => "phone number",
                    },
                    kind.described()
                ),
            );
            audit::record_reads(&self.p.db, &Caller::system(SYSTEM_NAME), &[access], now).await?;
        }
        let out = Outgoing {
            message_id: c.message_id.clone(),
            to: if label == "log" { String::new() } else { to },
            subject: rendered.subject,
            body: rendered.body,
            kind: kind.as_str(),
        };
        let result = match tokio::time::timeout(self.cfg.send_timeout, transport.send(&out)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Temporary("timed out".into())),
        };
        let done = self.p.clock.now_ms();
        match result {
            Ok(()) => return Ok(Some((done, label))),
            Err(SendError::Permanent(reason)) => {
                self.fail(&c, Status::Failed, label, &reason, done).await?;
            }
            Err(SendError::Temporary(reason)) => {
                let attempts = u32::try_from(c.attempts + 1).unwrap_or(u32::MAX);
                if attempts >= self.cfg.max_attempts {
                    self.fail(&c, Status::GivenUp, label, &reason, done).await?;
                } else {
                    let next = from_ms(done) + backoff(self.cfg.retry_base, attempts);
                    let next = if channel == Channel::Sms {
                        sms_allowed_at(next, c.urgent)
                    } else {
                        next
                    };
                    store::requeue(
                        &self.p.db,
                        &c.message_id,
                        next.timestamp_millis(),
                        true,
                        &reason,
                    )
                    .await?;
                    self.count(label, "retried");
                }
            }
        }
        Ok(None)
    }

    /// Background task: sends what is due every `every`, and at once when the intake queued
    /// something, until shutdown.
    pub async fn run_sender(self, every: Duration) {
        let mut stop = self.p.shutdown.clone();
        loop {
            loop {
                match self.send_due().await {
                    Ok(n) if n as i64 == BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "notification sender failed");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => {
                    // What the intake queues in the next moments goes in the same pass.
                    tokio::select! {
                        _ = tokio::time::sleep(GATHER) => {}
                        _ = stop.changed() => return,
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
}
