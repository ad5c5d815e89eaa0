//! Events in, queued messages out: each event becomes at most one message per recipient (the
//! patient and those acting for them: `recipients`) and channel (the store's unique
//! `dedupe_key`), in the consumer's transaction. Booking also schedules the reminders (at each
//! recipient's lead times) and, for video, the opening of the waiting room; a cancellation or a
//! move cancels them.

use super::Notify;
use super::recipients::{Recipient, area};
use crate::domain::{Channel, Channels};
use crate::domain::{Facts, Kind, message_channels, same_day, sms_allowed_at};
use crate::store::{self, NewMessage, Queue};
use econsult_runtime::bus::Event;
use econsult_runtime::clock::from_ms;
use econsult_runtime::consumer::Handler;
use econsult_runtime::db::Tx;
use econsult_runtime::events::{AppointmentChanged, ConsultationChanged, WaitlistOffered, topics};
use econsult_runtime::proxy::Area;

/// Consumer group of the notify service on the bus.
pub const CONSUMER_GROUP: &str = "notify";

/// An event older than this when it reaches the intake is not notified (a consumer started on
/// a database with history, a bus replaying old entries): news of yesterday is no news.
const STALE_MS: i64 = 24 * 3600 * 1000;

/// The waiting room of a video consultation opens this long before the start (signalling's
/// join window).
const VIDEO_OPENS_BEFORE_MS: i64 = 15 * 60 * 1000;

/// The consumer's handler.
pub struct Intake(pub Notify);

/// One message to queue for each recipient of a patient.
#[derive(Clone)]
struct Plan<'a> {
    key: String,
    kind: Kind,
    facts: Facts,
    appointment_id: &'a str,
    urgent: bool,
    at: i64,
}

impl Notify {
    /// Adds `plan` on each of `to`'s channels to `q`.
    fn queue(&self, q: &mut Queue, to: &Recipient, plan: &Plan<'_>) -> anyhow::Result<()> {
        let prefs = &to.prefs;
        let channels = message_channels(
            prefs.phone_sealed.is_some(),
            prefs.email_sealed.is_some(),
            (prefs.channels != 0).then(|| Channels::from_bits(prefs.channels)),
            prefs.opted_out,
        );
        let facts = serde_json::to_string(&plan.facts)?;
        let now = self.p.clock.now_ms();
        for ch in channels {
            let at = if ch == Channel::Sms {
                sms_allowed_at(from_ms(plan.at), plan.urgent).timestamp_millis()
            } else {
                plan.at
            };
            let id = uuid::Uuid::now_v7().to_string();
            // The subject's own key as before; one of their own per person acting for them.
            let key = if to.subject_nin.is_empty() {
                format!("{}:{}", plan.key, ch.as_str())
            } else {
                format!("{}:proxy:{}:{}", plan.key, to.nin, ch.as_str())
            };
            q.push(&NewMessage {
                message_id: &id,
                dedupe_key: &key,
                nin: &to.nin,
                subject_nin: &to.subject_nin,
                kind: plan.kind.as_str(),
                channel: ch.as_str(),
                facts: &facts,
                appointment_id: plan.appointment_id,
                urgent: plan.urgent,
                not_before: at,
                now,
            });
        }
        Ok(())
    }

    /// Queues `plan` for every recipient of messages about the patient `subject_nin`; returns
    /// how many messages were new.
    async fn queue_all(
        &self,
        tx: &mut Tx,
        subject_nin: &str,
        plan: Plan<'_>,
    ) -> anyhow::Result<usize> {
        let mut q = Queue::default();
        for to in self.recipients(tx, subject_nin, area(plan.kind)).await? {
            self.queue(&mut q, &to, &plan)?;
        }
        Ok(store::enqueue(tx, q).await? as usize)
    }

    /// The practice as the patient knows it: the name the EHR set (UpsertGp's
    /// `practice_name`), else the GP's display name.
    async fn practice(&self, tx: &mut Tx, org: &str, gp_id: &str) -> anyhow::Result<String> {
        Ok(econsult_booking::directory::gp(tx, org, gp_id)
            .await?
            .map(|g| g.practice_as_known().to_owned())
            .unwrap_or_default())
    }

    /// The confirmation (or move) of `a`, its reminders and its waiting room's opening.
    async fn booked(
        &self,
        tx: &mut Tx,
        e: &Event,
        a: &AppointmentChanged,
        kind: Kind,
        old_start_ms: Option<i64>,
    ) -> anyhow::Result<usize> {
        let now = self.p.clock.now();
        // Events carry no identity numbers: the patient is the appointment's, read with the
        // practice's name.
        let Some(booked) = econsult_booking::directory::appointment(tx, &a.appointment_id).await?
        else {
            return Ok(0);
        };
        let nin = booked.patient_nin.as_str();
        let facts = Facts {
            start_ms: a.start_ms,
            modality: a.modality.clone(),
            practice: booked.practice_as_known().to_owned(),
            old_start_ms,
            ..Default::default()
        };
        let confirmation = Plan {
            key: format!("event:{}", e.event_id),
            kind,
            facts: facts.clone(),
            appointment_id: &a.appointment_id,
            urgent: same_day(a.start_ms, now),
            at: now.timestamp_millis(),
        };
        let mut q = Queue::default();
        for to in self.recipients(tx, nin, Area::Booking).await? {
            self.queue(&mut q, &to, &confirmation)?;
            // Each recipient's own lead times.
            for lead in super::lead_times(&to.prefs.reminder_minutes) {
                let at = a.start_ms - i64::from(lead) * 60_000;
                if at <= now.timestamp_millis() {
                    continue;
                }
                let reminder = Plan {
                    key: format!("reminder:{}:{lead}", a.appointment_id),
                    kind: Kind::Reminder,
                    urgent: false,
                    at,
                    ..confirmation.clone()
                };
                self.queue(&mut q, &to, &reminder)?;
            }
            let opens = a.start_ms - VIDEO_OPENS_BEFORE_MS;
            if a.modality == "video" && opens > now.timestamp_millis() {
                let opening = Plan {
                    key: format!("video:{}", a.appointment_id),
                    kind: Kind::VideoOpening,
                    // Minutes before the start: never held for the quiet hours.
                    urgent: true,
                    at: opens,
                    ..confirmation.clone()
                };
                self.queue(&mut q, &to, &opening)?;
            }
        }
        // The confirmation, the reminders and the opening, for everyone, in one statement.
        Ok(store::enqueue(tx, q).await? as usize)
    }

    /// Queues what `e` calls for; returns how many messages were new.
    async fn take(&self, tx: &mut Tx, e: &Event) -> anyhow::Result<usize> {
        let now = self.p.clock.now();
        if now.timestamp_millis() - e.created_at > STALE_MS {
            return Ok(0);
        }
        match e.topic.as_str() {
            topics::BOOKING_CREATED => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                self.booked(tx, e, &a, Kind::Booked, None).await
            }
            topics::BOOKING_RESCHEDULED => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                let mut old_start = None;
                if let Some(old) = &a.rescheduled_from {
                    store::cancel_appointment(tx, old, now.timestamp_millis()).await?;
                    old_start = econsult_booking::directory::appointment(tx, old)
                        .await?
                        .map(|o| o.start_ms);
                }
                self.booked(tx, e, &a, Kind::Rescheduled, old_start).await
            }
            topics::BOOKING_CANCELLED => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                store::cancel_appointment(tx, &a.appointment_id, now.timestamp_millis()).await?;
                if a.cancelled_by.as_deref() != Some("practice") {
                    return Ok(0);
                }
                let Some(cancelled) =
                    econsult_booking::directory::appointment(tx, &a.appointment_id).await?
                else {
                    return Ok(0);
                };
                let facts = Facts {
                    start_ms: a.start_ms,
                    modality: a.modality.clone(),
                    practice: cancelled.practice_as_known().to_owned(),
                    ..Default::default()
                };
                self.queue_all(
                    tx,
                    &cancelled.patient_nin,
                    Plan {
                        key: format!("event:{}", e.event_id),
                        kind: Kind::CancelledByPractice,
                        facts,
                        appointment_id: &a.appointment_id,
                        urgent: same_day(a.start_ms, now),
                        at: now.timestamp_millis(),
                    },
                )
                .await
            }
            topics::BOOKING_WAITLIST_OFFERED => {
                let o: WaitlistOffered = serde_json::from_str(&e.payload)?;
                let Some(nin) =
                    econsult_booking::directory::waitlist_patient(tx, &o.entry_id).await?
                else {
                    return Ok(0);
                };
                let facts = Facts {
                    start_ms: o.start_ms,
                    modality: o.modality.clone(),
                    practice: self.practice(tx, &e.org_number, &o.gp_id).await?,
                    hold_id: Some(o.hold_id.clone()),
                    hold_until_ms: Some(o.expires_at_ms),
                    ..Default::default()
                };
                // An offer lapses within its window: it is sent at once, quiet hours or not.
                self.queue_all(
                    tx,
                    &nin,
                    Plan {
                        key: format!("event:{}", e.event_id),
                        kind: Kind::WaitlistOffer,
                        facts,
                        appointment_id: "",
                        urgent: true,
                        at: now.timestamp_millis(),
                    },
                )
                .await
            }
            topics::CONSULTATION_ANSWERED => {
                let c: ConsultationChanged = serde_json::from_str(&e.payload)?;
                let Some(nin) =
                    econsult_consultation::directory::thread_patient(tx, &c.thread_id).await?
                else {
                    return Ok(0);
                };
                let facts = Facts {
                    practice: self.practice(tx, &c.org_number, &c.gp_id).await?,
                    ..Default::default()
                };
                self.queue_all(
                    tx,
                    &nin,
                    Plan {
                        key: format!("event:{}", e.event_id),
                        kind: Kind::ConsultationReply,
                        facts,
                        appointment_id: "",
                        urgent: false,
                        at: now.timestamp_millis(),
                    },
                )
                .await
            }
            _ => Ok(0),
        }
    }
}

#[async_trait::async_trait]
impl Handler for Intake {
    async fn apply(&self, tx: &mut Tx, events: &[&Event]) -> anyhow::Result<usize> {
        let mut n = 0;
        for e in events {
            match self.0.take(tx, e).await {
                Ok(k) => n += k,
                // A body that does not decode will never decode: skip it, do not stall the
                // group on it.
                Err(err) if err.downcast_ref::<serde_json::Error>().is_some() => {
                    tracing::warn!(event_id = %e.event_id, topic = %e.topic, error = %err, "notify skipped an event it cannot read");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(n)
    }

    /// The topics [`Intake::take`] acts on (its tests cover each: a topic added there and not
    /// here would never arrive).
    fn wants(&self, event: &Event) -> bool {
        matches!(
            event.topic.as_str(),
            topics::BOOKING_CREATED
                | topics::BOOKING_RESCHEDULED
                | topics::BOOKING_CANCELLED
                | topics::BOOKING_WAITLIST_OFFERED
                | topics::CONSULTATION_ANSWERED
        )
    }

    fn after_commit(&self, applied: usize) {
        if applied > 0 {
            self.0.wake.notify_one();
        }
    }
}
