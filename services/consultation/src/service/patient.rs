//! The patient's side: starting a thread (with quotas and the SLA due time), writing to it,
//! withdrawing it, listing the own threads, and the answer to an urgent matter.

use super::{
    Consultations, Done, Locked, Posted, Viewer, bytes_of, fingerprint, quota_lock_key,
    required_id, rpc, transition_refused,
};
use crate::content::{
    MAX_BODY_CHARS, MAX_SUBJECT_CHARS, NewAttachment, check_attachments, checked_text,
};
use crate::domain::{Author, Category, State, Thread};
use crate::error::ConsultationError;
use crate::sla;
use crate::store;
use crate::urgent::{self, Language, Office};
use econsult_booking::directory;
use econsult_calendar::Calendar;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::Caller;
use econsult_runtime::clock::from_ms;
use econsult_runtime::command::{self, Claim, Outcome};
use econsult_runtime::events::topics;
use econsult_runtime::idempotency::Op;
use econsult_runtime::nin::NationalId;

/// A patient's new question, as given.
#[derive(Debug, Clone)]
pub struct NewThread {
    /// What it is about.
    pub category: Category,
    /// The subject line (sanitised and checked here).
    pub subject: String,
    /// The first message (sanitised and checked here).
    pub body: String,
    /// Its attachments (checked here).
    pub attachments: Vec<NewAttachment>,
    /// The booking request it answers (the guarantee engine's offer; "" none), checked by the
    /// adapter.
    pub booking_request_id: String,
}

impl Consultations {
    /// Where a patient with an urgent need should turn now: the GP office's phone while it is
    /// open, legevakt otherwise (`urgent`). A read of the pool (it writes nothing, so there is
    /// no transaction); one connection for the three lookups.
    pub async fn urgent_answer(
        &self,
        nin: &NationalId,
        lang: Language,
    ) -> Result<String, ConsultationError> {
        let mut conn = self.p.db.read().acquire().await?;
        let office = match directory::patient_gp(&mut conn, nin.as_str()).await? {
            None => Office::Unknown,
            Some(gp) => {
                let hours = directory::opening_hours(&mut conn, &gp.org_number).await?;
                let closures = directory::closures(&mut conn, &gp.org_number).await?;
                Office::at(
                    &hours,
                    &Calendar::with_closures(closures),
                    from_ms(self.now()),
                )
            }
        };
        Ok(urgent::answer(lang, &office))
    }

    /// Starts a thread of patient `nin` to the practice of the patient's GP, with its first
    /// message, due the practice's response days (working days) later. `encode` gives the
    /// answer as sent, stored with the idempotency record; a retry with `key` gets the record
    /// of the first call.
    pub async fn start(
        &self,
        caller: &Caller,
        nin: &NationalId,
        key: &str,
        new: NewThread,
        encode: impl FnOnce(&Posted) -> Vec<u8>,
    ) -> Result<Done, ConsultationError> {
        let category = new.category;
        let subject = checked_text(&new.subject, "subject", MAX_SUBJECT_CHARS)?;
        let body = checked_text(&new.body, "body", MAX_BODY_CHARS)?;
        let attachments = check_attachments(new.attachments)?;
        let fp = fingerprint(
            serde_json::json!([category.code(), subject, body, new.booking_request_id]),
            &attachments,
        );
        let mut started = None;
        let quota_key = quota_lock_key(nin.as_str());
        let backend = self.p.db.backend();
        let done = command::run_with(
            &self.p.db,
            self.command(caller, rpc::START, key, &fp),
            Claim::InFirstStatement,
            async |op: &mut Op| -> Result<Outcome<Done>, ConsultationError> {
                // The first statement claims the key and takes the patient's quota lock
                // (PostgreSQL, one round trip): a retry gets the first answer before anything
                // else runs. Everything below reads in the call's transaction, whose connection
                // is the only one it holds.
                let locked = match store::claim_and_lock(op, &quota_key, backend).await? {
                    Some(claimed) => {
                        if let Some(first) = op.claimed(claimed).await? {
                            return Ok(Outcome::Replayed(first));
                        }
                        true
                    }
                    None => false,
                };
                let (gp, closures) = directory::patient_gp_with_closures(&mut op.tx, nin.as_str())
                    .await?
                    .ok_or_else(|| {
                        ConsultationError::FailedPrecondition(
                            "you are not on a GP's list (fastlegeliste): choose a GP first".into(),
                        )
                    })?;
                let quota = (true, bytes_of(&attachments));
                self.check_quotas(&mut op.tx, nin.as_str(), quota, locked)
                    .await?;
                let now = self.now();
                let tx = &mut op.tx;
                let n = store::response_days(tx, &gp.org_number).await?;
                let cal = Calendar::with_closures(closures);
                let mut due = sla::due_at(&cal, from_ms(now), n).timestamp_millis();
                // Started from a booking request (the guarantee engine): answered in its window.
                if !new.booking_request_id.is_empty()
                    && let Some(end) =
                        directory::request_window_end(tx, &new.booking_request_id, nin.as_str())
                            .await?
                {
                    due = due.min(end);
                }
                let t = Thread {
                    thread_id: uuid::Uuid::now_v7().to_string(),
                    patient_nin: nin.as_str().to_owned(),
                    gp_id: gp.gp_id,
                    gp_display_name: gp.display_name,
                    org_number: gp.org_number,
                    municipality_number: gp.municipality_number,
                    category,
                    subject,
                    state: State::Submitted,
                    submitted_at: now,
                    due_at: due,
                    first_response_at: None,
                    assigned_hpr: String::new(),
                    last_seq: 1,
                    patient_read_seq: 1,
                    practice_read_seq: 0,
                    outcome: String::new(),
                    tariff_code: String::new(),
                    closed_at: None,
                    updated_at: now,
                    started_by_nin: caller
                        .proxy
                        .acting
                        .as_ref()
                        .map_or(String::new(), |a| a.actor.as_str().to_owned()),
                    started_by_relation: caller
                        .proxy
                        .acting
                        .as_ref()
                        .map_or(0, |a| a.relation.code()),
                    started_by_name: caller.actor_name().to_owned(),
                    confidential: false,
                };
                // The thread is written as it is after its first message: one INSERT.
                let request = Some(new.booking_request_id.as_str()).filter(|r| !r.is_empty());
                store::insert_thread(tx, &t, request);
                let m = store::append_message(
                    tx,
                    &t.thread_id,
                    t.last_seq,
                    Author::Patient,
                    "",
                    &body,
                    &attachments,
                    now,
                );
                self.changed(tx, topics::CONSULTATION_STARTED, &t, Some(&cal))?;
                self.message_event(tx, &t, &m)?;
                // Logged when someone acted for the patient (the patient's own start logs none).
                self.audit(tx, caller, rpc::START, &t)?;
                let done = Done::message(&t, &m);
                started = Some((t.thread_id.clone(), t.due_at));
                let answer = encode(&Posted {
                    thread: t,
                    message: m,
                });
                Ok(Outcome::Done(done.answering_bytes(&answer)))
            },
        )
        .await?;
        if let Some((thread_id, due_at)) = started {
            tracing::info!(thread_id = %thread_id, category = category.name(), due_at = due_at, "consultation started");
        }
        Ok(done)
    }

    /// The patient's message `body` in thread `thread_id`: the thread goes back to the practice
    /// (awaiting the patient → in review). `encode` as for [`Consultations::start`].
    #[allow(clippy::too_many_arguments)]
    pub async fn send_message(
        &self,
        caller: &Caller,
        nin: &NationalId,
        key: &str,
        thread_id: &str,
        body: &str,
        attachments: Vec<NewAttachment>,
        encode: impl FnOnce(&Posted) -> Vec<u8>,
    ) -> Result<Done, ConsultationError> {
        let viewer = Viewer::patient(caller, nin);
        required_id(thread_id, "thread_id")?;
        let body = checked_text(body, "body", MAX_BODY_CHARS)?;
        let attachments = check_attachments(attachments)?;
        let fp = fingerprint(serde_json::json!([thread_id, body]), &attachments);
        self.on_thread(
            self.command(caller, rpc::SEND, key, &fp),
            &viewer,
            thread_id,
            async |op: &mut Op, locked: Locked| -> Result<Done, ConsultationError> {
                let mut t = locked.thread;
                let quota = (false, bytes_of(&attachments));
                self.check_quotas(&mut op.tx, &t.patient_nin, quota, false)
                    .await?;
                let to = match t.state {
                    State::Submitted | State::InReview => t.state,
                    State::AwaitingPatient => State::InReview,
                    other => {
                        return Err(ConsultationError::FailedPrecondition(format!(
                            "the thread is {}: start a new consultation instead",
                            other.name()
                        )));
                    }
                };
                let now = self.now();
                let tx = &mut op.tx;
                let m = store::append_message(
                    tx,
                    &t.thread_id,
                    t.last_seq + 1,
                    Author::Patient,
                    "",
                    &body,
                    &attachments,
                    now,
                );
                let state_changed = to != t.state;
                t.last_seq = m.seq;
                t.state = to;
                t.patient_read_seq = m.seq;
                t.updated_at = now;
                store::update_thread(tx, &t);
                self.message_event(tx, &t, &m)?;
                self.audit(tx, caller, rpc::SEND, &t)?;
                if state_changed {
                    self.changed(tx, super::TOPIC_STATE, &t, None)?;
                }
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

    /// The patient withdraws thread `thread_id`. `encode` as for [`Consultations::start`].
    pub async fn withdraw(
        &self,
        caller: &Caller,
        nin: &NationalId,
        key: &str,
        thread_id: &str,
        encode: impl FnOnce(&Thread) -> Vec<u8>,
    ) -> Result<Done, ConsultationError> {
        let viewer = Viewer::patient(caller, nin);
        required_id(thread_id, "thread_id")?;
        let fp = serde_json::json!([thread_id]);
        self.on_thread(
            self.command(caller, rpc::WITHDRAW, key, &fp),
            &viewer,
            thread_id,
            async |op: &mut Op, locked: Locked| -> Result<Done, ConsultationError> {
                let mut t = locked.thread;
                if !t.state.allows(State::Withdrawn) {
                    return Err(transition_refused(t.state, State::Withdrawn));
                }
                let now = self.now();
                t.state = State::Withdrawn;
                t.outcome = "withdrawn".into();
                t.closed_at = Some(now);
                t.updated_at = now;
                store::update_thread(&mut op.tx, &t);
                self.changed(&mut op.tx, topics::CONSULTATION_CLOSED, &t, None)?;
                self.audit(&mut op.tx, caller, rpc::WITHDRAW, &t)?;
                Ok(Done::thread(&t).answering_bytes(&encode(&t)))
            },
        )
        .await
    }

    /// The patient's threads, newest first: at most `limit` from `offset`, and whether there
    /// are more.
    pub async fn patient_threads(
        &self,
        caller: &Caller,
        nin: &NationalId,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Thread>, bool), ConsultationError> {
        // A parent with limited access sees only the threads they started that the practice
        // did not mark confidential to the child.
        let only_started_by = match Viewer::patient(caller, nin) {
            Viewer::Parent { parent, .. } => parent,
            _ => String::new(),
        };
        let mut threads = store::patient_threads(
            self.p.db.read(),
            nin.as_str(),
            &only_started_by,
            limit + 1,
            offset,
        )
        .await?;
        let more = threads.len() as i64 > limit;
        threads.truncate(limit as usize);
        if caller.proxy.acting.is_some() {
            // Someone acting for the patient: each thread they saw is in the patient's log.
            let accesses: Vec<Access<'_>> = threads
                .iter()
                .map(|t| super::thread_access(caller, rpc::LIST, t))
                .collect();
            audit::record_reads(&self.p.db, caller, &accesses, self.now()).await?;
        }
        Ok((threads, more))
    }
}
