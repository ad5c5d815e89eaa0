//! The practice's side: claiming a thread, replying (or asking the patient), converting a
//! thread to a booking, closing it with an outcome and a tariff, the inbox with its overdue
//! threads, and the practice's response SLA.

use super::{
    Consultations, Done, Locked, Posted, Viewer, fingerprint, required_id, rpc, transition_refused,
};
use crate::content::{
    CheckedAttachment, MAX_BODY_CHARS, NewAttachment, check_attachments, checked_text,
};
use crate::domain::{Author, Message, State, Thread};
use crate::error::ConsultationError;
use crate::store;
use econsult_booking::directory::{self, FreeSlot};
use econsult_calendar::Calendar;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::Caller;
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::Tx;
use econsult_runtime::events::topics;
use econsult_runtime::idempotency::Op;
use econsult_runtime::tariff;

/// A thread converted to a booking: the message with the offered times, and the booking
/// request it opened.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The thread, now converted.
    pub thread: Thread,
    /// The practice's message with the free times.
    pub message: Message,
    /// The offered slots.
    pub offered: Vec<FreeSlot>,
    /// The patient's booking request (the new one, or the open one); "" for none.
    pub request_id: String,
}

/// A page of the practice's inbox.
#[derive(Debug, Clone)]
pub struct Inbox {
    /// The threads, overdue first.
    pub threads: Vec<Thread>,
    /// Whether there are more.
    pub more: bool,
    /// How many of the practice's open threads are overdue.
    pub overdue: i64,
    /// The time it was read at (decides `overdue` of each thread).
    pub now_ms: i64,
}

/// A practice's reply, as given.
#[derive(Debug, Clone)]
pub struct NewReply {
    /// The clinician answering ("" for the caller's own, or none for an EHR).
    pub clinician_hpr: String,
    /// The text (sanitised and checked here).
    pub body: String,
    /// Whether the practice asks the patient something (the thread then awaits the patient).
    pub ask_patient: bool,
    /// Its attachments (checked here).
    pub attachments: Vec<NewAttachment>,
}

/// How a practice closes a thread, as given.
#[derive(Debug, Clone)]
pub struct Closing {
    /// The outcome, 1-64 characters of a-z and _ (trimmed here).
    pub outcome: String,
    /// The tariff code billed ("" for the category's default).
    pub tariff_code: String,
}

/// The HPR number a practice action is done by.
fn acting_hpr(caller: &Caller, given: &str, field: &str) -> Result<String, ConsultationError> {
    if let Some(own) = &caller.hpr_number {
        if !given.is_empty() && given != own {
            return Err(ConsultationError::PermissionDenied(format!(
                "{field}: a clinician acts as themselves"
            )));
        }
        return Ok(own.clone());
    }
    if given.is_empty() {
        return Ok(String::new());
    }
    if given.len() > 9 || !given.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConsultationError::Invalid(format!(
            "{field} must be an HPR number (up to 9 digits)"
        )));
    }
    Ok(given.to_owned())
}

/// `code` checked against Normaltariffen of the contact's `date` (ISO) for a written thread.
fn tariff_on(code: &str, date: &str) -> Result<(), ConsultationError> {
    tariff::remote(code, date)
        .map(|_| ())
        .map_err(|e| ConsultationError::Invalid(e.to_string()))
}

/// A page size: `default` for 0, `INVALID_ARGUMENT` naming `field` outside 1..=`max`.
pub fn page(size: i32, default: i64, max: i64, field: &str) -> Result<i64, ConsultationError> {
    match size {
        0 => Ok(default),
        n if n < 0 || i64::from(n) > max => Err(ConsultationError::Invalid(format!(
            "{field} must be between 1 and {max}"
        ))),
        n => Ok(i64::from(n)),
    }
}

impl Consultations {
    /// A clinician of practice `org` takes thread `thread_id` (it goes in review). `encode`
    /// gives the answer as sent, stored with the idempotency record.
    pub async fn claim(
        &self,
        caller: &Caller,
        org: &str,
        key: &str,
        thread_id: &str,
        clinician_hpr: &str,
        encode: impl FnOnce(&Thread) -> Vec<u8>,
    ) -> Result<Done, ConsultationError> {
        let viewer = Viewer::Practice(org.to_owned());
        required_id(thread_id, "thread_id")?;
        let hpr = acting_hpr(caller, clinician_hpr, "clinician_hpr_number")?;
        if hpr.is_empty() {
            return Err(ConsultationError::Invalid(
                "clinician_hpr_number is required for an EHR token".into(),
            ));
        }
        let fp = serde_json::json!([thread_id, hpr]);
        self.on_thread(
            self.command(caller, rpc::CLAIM, key, &fp),
            &viewer,
            thread_id,
            async |op: &mut Op, locked: Locked| -> Result<Done, ConsultationError> {
                let mut t = locked.thread;
                if !matches!(t.state, State::Submitted | State::InReview) {
                    return Err(transition_refused(t.state, State::InReview));
                }
                let now = self.now();
                t.state = State::InReview;
                t.assigned_hpr = hpr;
                t.updated_at = now;
                store::update_thread(&mut op.tx, &t);
                self.audit(&mut op.tx, caller, rpc::CLAIM, &t)?;
                self.changed(&mut op.tx, super::TOPIC_STATE, &t, None)?;
                Ok(Done::thread(&t).answering_bytes(&encode(&t)))
            },
        )
        .await
    }

    /// Practice `org` marks thread `thread_id` confidential to its patient, or lifts the mark:
    /// a parent with limited access (child 12 to 16) then sees it nowhere, not even one who
    /// started it. Any state; setting the state it has changes nothing but is logged. No event
    /// (the mark changes nothing the event consumers count). `encode` as for
    /// [`Consultations::claim`].
    pub async fn set_confidential(
        &self,
        caller: &Caller,
        org: &str,
        key: &str,
        thread_id: &str,
        confidential: bool,
        encode: impl FnOnce(&Thread) -> Vec<u8>,
    ) -> Result<Done, ConsultationError> {
        let viewer = Viewer::Practice(org.to_owned());
        required_id(thread_id, "thread_id")?;
        let fp = serde_json::json!([thread_id, confidential]);
        self.on_thread(
            self.command(caller, rpc::CONFIDENTIAL, key, &fp),
            &viewer,
            thread_id,
            async |op: &mut Op, locked: Locked| -> Result<Done, ConsultationError> {
                let mut t = locked.thread;
                if t.confidential != confidential {
                    t.confidential = confidential;
                    t.updated_at = self.now();
                    store::set_confidential(&mut op.tx, thread_id, confidential, t.updated_at)
                        .await?;
                }
                self.audit(&mut op.tx, caller, rpc::CONFIDENTIAL, &t)?;
                Ok(Done::thread(&t).answering_bytes(&encode(&t)))
            },
        )
        .await
    }

    /// The practice's reply in thread `thread_id`: answered, or awaiting the patient when it
    /// asks something. `encode` as for [`Consultations::claim`].
    pub async fn reply(
        &self,
        caller: &Caller,
        org: &str,
        key: &str,
        thread_id: &str,
        reply: NewReply,
        encode: impl FnOnce(&Posted) -> Vec<u8>,
    ) -> Result<Done, ConsultationError> {
        let viewer = Viewer::Practice(org.to_owned());
        required_id(thread_id, "thread_id")?;
        let hpr = acting_hpr(caller, &reply.clinician_hpr, "clinician_hpr_number")?;
        let body = checked_text(&reply.body, "body", MAX_BODY_CHARS)?;
        let attachments = check_attachments(reply.attachments)?;
        let fp = fingerprint(
            serde_json::json!([thread_id, body, reply.ask_patient, hpr]),
            &attachments,
        );
        self.on_thread(
            self.command(caller, rpc::REPLY, key, &fp),
            &viewer,
            thread_id,
            async |op: &mut Op, locked: Locked| -> Result<Done, ConsultationError> {
                let mut t = locked.thread;
                let to = if reply.ask_patient {
                    State::AwaitingPatient
                } else {
                    State::Answered
                };
                let m = self
                    .practice_message(
                        &mut op.tx,
                        caller,
                        rpc::REPLY,
                        &mut t,
                        to,
                        &hpr,
                        &body,
                        &attachments,
                        (&locked.calendar, locked.booking_request.as_deref()),
                    )
                    .await?;
                let done = Done::message(&t, &m);
                let answer = encode(&Posted {
                    thread: t,
                    message: m,
                });
                Ok(done.answering_bytes(&answer))
            },
        )
        .await
    }

    /// The practice turns thread `thread_id` into a booking: a message `body` with up to
    /// `offer_count` (default 3, at most 10) free times of the patient's GP, and the patient's
    /// booking request opened. `encode` as for [`Consultations::claim`].
    #[allow(clippy::too_many_arguments)]
    pub async fn convert(
        &self,
        caller: &Caller,
        org: &str,
        key: &str,
        thread_id: &str,
        body: &str,
        offer_count: i32,
        encode: impl FnOnce(&Converted) -> Vec<u8>,
    ) -> Result<Done, ConsultationError> {
        let viewer = Viewer::Practice(org.to_owned());
        required_id(thread_id, "thread_id")?;
        let hpr = acting_hpr(caller, "", "clinician_hpr_number")?;
        let body = checked_text(body, "body", MAX_BODY_CHARS)?;
        let count = page(offer_count, 3, 10, "offer_count")?;
        let fp = serde_json::json!([thread_id, body, count]);
        self.on_thread(
            self.command(caller, rpc::CONVERT, key, &fp),
            &viewer,
            thread_id,
            async |op: &mut Op, locked: Locked| -> Result<Done, ConsultationError> {
                let mut t = locked.thread;
                if !t.state.allows(State::Converted) {
                    return Err(transition_refused(t.state, State::Converted));
                }
                let slots =
                    directory::free_slots(&mut op.tx, &t.org_number, &t.gp_id, self.now(), count)
                        .await?;
                let mut text = body.clone();
                if slots.is_empty() {
                    text.push_str("\n\nNo free time is published right now: join the waitlist in the booking service.");
                } else {
                    text.push_str("\n\nFree times you can book:");
                    for s in &slots {
                        let local = from_ms(s.start_ms).with_timezone(&chrono_tz::Europe::Oslo);
                        text.push_str(&format!(
                            "\n- {} (slot {})",
                            local.format("%d.%m.%Y %H:%M"),
                            s.slot_id
                        ));
                    }
                }
                let m = self
                    .practice_message(
                        &mut op.tx,
                        caller,
                        rpc::CONVERT,
                        &mut t,
                        State::Converted,
                        &hpr,
                        &text,
                        &[],
                        (&locked.calendar, locked.booking_request.as_deref()),
                    )
                    .await?;
                // The conversion opens the patient's booking request (§ 22 counts it from now).
                let request_id = econsult_booking::service::record_conversion(
                    &mut op.tx,
                    &t.patient_nin,
                    from_ms(self.now()),
                )
                .await?
                .unwrap_or_default();
                let done = Done {
                    offered: slots
                        .iter()
                        .map(|s| (s.slot_id.clone(), s.start_ms, s.end_ms))
                        .collect(),
                    request_id: request_id.clone(),
                    ..Done::message(&t, &m)
                };
                let answer = encode(&Converted {
                    thread: t,
                    message: m,
                    offered: slots,
                    request_id,
                });
                Ok(done.answering_bytes(&answer))
            },
        )
        .await
    }

    /// The practice closes thread `thread_id` with an outcome and a tariff valid on the Oslo
    /// day of closing. `encode` as for [`Consultations::claim`].
    pub async fn close(
        &self,
        caller: &Caller,
        org: &str,
        key: &str,
        thread_id: &str,
        closing: Closing,
        encode: impl FnOnce(&Thread) -> Vec<u8>,
    ) -> Result<Done, ConsultationError> {
        let viewer = Viewer::Practice(org.to_owned());
        required_id(thread_id, "thread_id")?;
        let outcome = closing.outcome.trim().to_owned();
        if outcome.is_empty()
            || outcome.len() > 64
            || !outcome.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(ConsultationError::Invalid(
                "outcome must be 1-64 characters of a-z and _, e.g. answered".into(),
            ));
        }
        let tariff_code = closing.tariff_code;
        if !tariff_code.is_empty() && tariff::rows_of(&tariff_code).next().is_none() {
            // Whether it is valid on the contact's date is checked with the thread below.
            return Err(ConsultationError::Invalid(
                tariff::TariffError::Unknown(tariff_code.clone()).to_string(),
            ));
        }
        let fp = serde_json::json!([thread_id, outcome, tariff_code]);
        self.on_thread(
            self.command(caller, rpc::CLOSE, key, &fp),
            &viewer,
            thread_id,
            async |op: &mut Op, locked: Locked| -> Result<Done, ConsultationError> {
                let mut t = locked.thread;
                if !t.state.allows(State::Closed) {
                    return Err(transition_refused(t.state, State::Closed));
                }
                let now = self.now();
                // The contact's date is the Oslo day it was closed: the tariff of that day
                // applies.
                let day = econsult_calendar::oslo_date(from_ms(now))
                    .format("%Y-%m-%d")
                    .to_string();
                t.tariff_code = if tariff_code.is_empty() {
                    t.category.default_tariff().to_owned()
                } else {
                    tariff_code
                };
                if !t.tariff_code.is_empty() {
                    tariff_on(&t.tariff_code, &day)?;
                }
                t.state = State::Closed;
                t.outcome = outcome;
                t.closed_at = Some(now);
                t.updated_at = now;
                store::update_thread(&mut op.tx, &t);
                self.audit(&mut op.tx, caller, rpc::CLOSE, &t)?;
                self.changed(
                    &mut op.tx,
                    topics::CONSULTATION_CLOSED,
                    &t,
                    Some(&locked.calendar),
                )?;
                Ok(Done::thread(&t).answering_bytes(&encode(&t)))
            },
        )
        .await
    }

    /// Adds a practice message and moves the thread; shared by Reply and ConvertToBooking.
    #[allow(clippy::too_many_arguments)]
    async fn practice_message(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        action: &str,
        t: &mut Thread,
        to: State,
        hpr: &str,
        body: &str,
        attachments: &[CheckedAttachment],
        (cal, booking_request): (&Calendar, Option<&str>),
    ) -> Result<Message, ConsultationError> {
        if !t.state.allows(to) {
            return Err(transition_refused(t.state, to));
        }
        let now = self.now();
        let m = store::append_message(
            tx,
            &t.thread_id,
            t.last_seq + 1,
            Author::Practice,
            hpr,
            body,
            attachments,
            now,
        );
        t.last_seq = m.seq;
        t.state = to;
        t.practice_read_seq = m.seq;
        t.updated_at = now;
        let first = t.first_response_at.is_none();
        if first {
            t.first_response_at = Some(now);
        }
        if t.assigned_hpr.is_empty() {
            t.assigned_hpr = hpr.to_owned();
        }
        store::update_thread(tx, t);
        self.audit(tx, caller, action, t)?;
        self.message_event(tx, t, &m)?;
        if first {
            self.changed(tx, topics::CONSULTATION_FIRST_RESPONSE, t, Some(cal))?;
            // Started from a booking request (the guarantee engine): the reply meets it.
            if let Some(request) = booking_request {
                econsult_booking::service::record_e_consultation_reply(
                    tx,
                    request,
                    &t.patient_nin,
                    from_ms(now),
                )
                .await?;
            }
        }
        let topic = if to == State::Answered {
            topics::CONSULTATION_ANSWERED
        } else {
            super::TOPIC_STATE
        };
        self.changed(tx, topic, t, Some(cal))?;
        Ok(m)
    }

    /// A page of practice `org`'s inbox (threads of GP `gp_id`, "" for all; open ones only
    /// unless `include_done`), overdue first; every thread on it logged as read by `caller`.
    #[allow(clippy::too_many_arguments)]
    pub async fn inbox(
        &self,
        caller: &Caller,
        org: &str,
        gp_id: &str,
        include_done: bool,
        limit: i64,
        offset: i64,
    ) -> Result<Inbox, ConsultationError> {
        if gp_id.len() > 64 {
            return Err(ConsultationError::Invalid("gp_id is too long".into()));
        }
        let now = self.now();
        let mut threads = store::inbox(
            self.p.db.read(),
            org,
            gp_id,
            include_done,
            now,
            limit + 1,
            offset,
        )
        .await?;
        let overdue = store::overdue_count(self.p.db.read(), org, gp_id, now).await?;
        let more = threads.len() as i64 > limit;
        threads.truncate(limit as usize);
        let accesses: Vec<Access<'_>> = threads
            .iter()
            .map(|t| super::thread_access(caller, rpc::INBOX, t))
            .collect();
        audit::record_reads(&self.p.db, caller, &accesses, now).await?;
        Ok(Inbox {
            threads,
            more,
            overdue,
            now_ms: now,
        })
    }

    /// Sets practice `org`'s response SLA to `days` working days (1-20); returns it.
    pub async fn set_response_days(&self, org: &str, days: i32) -> Result<i32, ConsultationError> {
        let days = match days {
            1..=20 => days,
            _ => {
                return Err(ConsultationError::Invalid(
                    "working_days must be between 1 and 20".into(),
                ));
            }
        };
        let mut tx = self.p.db.begin().await?;
        store::set_response_days(&mut tx, org, days as u32, self.now()).await?;
        tx.commit().await?;
        Ok(days)
    }
}
