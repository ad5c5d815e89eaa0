//! The consultation's commands and queries on domain types: the thread state machine, quotas,
//! SLA due times, the urgent answer, read receipts, closing with tariff and outcome, and the
//! events of the change streams. Every mutating command with an idempotency key runs through
//! [`econsult_runtime::command`]: one write transaction holding the thread's lock, with its
//! messages, outbox events, audit rows and the stored answer. A command on a thread starts with
//! one statement that claims the key (PostgreSQL), locks the thread and reads its practice's
//! calendar ([`Consultations::on_thread`]).
//!
//! - [`patient`]: starting, writing, withdrawing, listing; the urgent answer.
//! - [`practice`]: claiming, replying, converting to a booking, closing, the inbox, the SLA.
//! - [`threads`]: reading a thread and its attachments, read receipts, and the changes.

pub mod patient;
pub mod practice;
pub mod threads;

use crate::content::CheckedAttachment;
use crate::domain::{Message, State, Thread};
use crate::error::ConsultationError;
use crate::{Quotas, sla};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use econsult_calendar::Calendar;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::{Caller, Purpose, Role};
use econsult_runtime::clock::from_ms;
use econsult_runtime::command::{self, Claim, Command, Outcome};
use econsult_runtime::db::Tx;
use econsult_runtime::events::ConsultationChanged;
use econsult_runtime::idempotency::Op;
use econsult_runtime::nin::NationalId;
use econsult_runtime::outbox::{self, NewEvent};
use econsult_runtime::platform::Platform;
use serde::{Deserialize, Serialize};

/// Topic of a new message (for the change streams; stats ignores it).
pub const TOPIC_MESSAGE: &str = "consultation.message";
/// Topic of a state or assignment change without a stats meaning.
pub const TOPIC_STATE: &str = "consultation.state";
/// Topic of a read receipt.
pub const TOPIC_READ: &str = "consultation.read";

/// The RPCs by their gRPC paths: the scope of their idempotency keys and the action of their
/// audit rows.
pub mod rpc {
    /// StartConsultation.
    pub const START: &str = "/econsult.consultation.v1.ConsultationService/StartConsultation";
    /// ListThreads.
    pub const LIST: &str = "/econsult.consultation.v1.ConsultationService/ListThreads";
    /// SendMessage.
    pub const SEND: &str = "/econsult.consultation.v1.ConsultationService/SendMessage";
    /// GetThread.
    pub const GET: &str = "/econsult.consultation.v1.ConsultationService/GetThread";
    /// GetAttachment.
    pub const ATTACHMENT: &str = "/econsult.consultation.v1.ConsultationService/GetAttachment";
    /// MarkRead.
    pub const READ: &str = "/econsult.consultation.v1.ConsultationService/MarkRead";
    /// WithdrawConsultation.
    pub const WITHDRAW: &str = "/econsult.consultation.v1.ConsultationService/WithdrawConsultation";
    /// ListInbox.
    pub const INBOX: &str = "/econsult.consultation.v1.ConsultationService/ListInbox";
    /// ClaimThread.
    pub const CLAIM: &str = "/econsult.consultation.v1.ConsultationService/ClaimThread";
    /// Reply.
    pub const REPLY: &str = "/econsult.consultation.v1.ConsultationService/Reply";
    /// ConvertToBooking.
    pub const CONVERT: &str = "/econsult.consultation.v1.ConsultationService/ConvertToBooking";
    /// CloseConsultation.
    pub const CLOSE: &str = "/econsult.consultation.v1.ConsultationService/CloseConsultation";
    /// WatchInbox.
    pub const WATCH: &str = "/econsult.consultation.v1.ConsultationService/WatchInbox";
    /// SetThreadConfidential.
    pub const CONFIDENTIAL: &str =
        "/econsult.consultation.v1.ConsultationService/SetThreadConfidential";
}

/// What an idempotent call stored: its first response, and (for records stored before the
/// response was) the ids a replay rebuilt the response from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    /// The thread of the call.
    pub thread_id: String,
    /// The message it added, if any.
    pub message_id: Option<String>,
    /// ConvertToBooking: the slots it offered (id, start ms, end ms).
    pub offered: Vec<(String, i64, i64)>,
    /// ConvertToBooking: the booking request it opened (or the patient's open one).
    #[serde(default)]
    pub request_id: String,
    /// The first response as sent: its protobuf encoding, base64. Empty in records stored
    /// before it was kept; their replays are rebuilt from the ids and the current rows.
    #[serde(default)]
    pub response: String,
}

impl Done {
    /// A call whose result is the thread.
    pub fn thread(t: &Thread) -> Self {
        Self {
            thread_id: t.thread_id.clone(),
            message_id: None,
            offered: Vec::new(),
            request_id: String::new(),
            response: String::new(),
        }
    }

    /// A call whose result is a message (and its thread).
    pub fn message(t: &Thread, m: &Message) -> Self {
        Self {
            message_id: Some(m.message_id.clone()),
            ..Self::thread(t)
        }
    }

    /// This record with `response`, the encoded answer the call is about to send, to replay
    /// as is.
    pub fn answering_bytes(mut self, response: &[u8]) -> Self {
        self.response = B64.encode(response);
        self
    }

    /// The stored first response's encoding, `None` in a record from before responses were
    /// stored.
    pub fn first_bytes(&self) -> Result<Option<Vec<u8>>, ConsultationError> {
        if self.response.is_empty() {
            return Ok(None);
        }
        B64.decode(&self.response)
            .map(Some)
            .map_err(|e| ConsultationError::internal("stored response", e))
    }
}

/// Who looks at a thread.
#[derive(Debug, Clone)]
pub enum Viewer {
    /// The patient of this identity number (or someone with full access for them).
    Patient(NationalId),
    /// A parent of a child from 12 to 16 (limited access): the child's threads that this
    /// parent (`parent`, an identity number) started and the practice did not mark
    /// confidential to the child, no others.
    Parent {
        /// The child.
        child: NationalId,
        /// The parent.
        parent: String,
    },
    /// The practice of this organisation number.
    Practice(String),
}

impl Viewer {
    /// The viewer of patient `nin`'s threads in a call by `caller`: limited for a parent of a
    /// child from 12 to 16.
    pub fn patient(caller: &Caller, nin: &NationalId) -> Viewer {
        match &caller.proxy.acting {
            Some(a) if a.limited => Viewer::Parent {
                child: nin.clone(),
                parent: a.actor.as_str().to_owned(),
            },
            _ => Viewer::Patient(nin.clone()),
        }
    }

    /// Whether this is the practice.
    pub fn is_practice(&self) -> bool {
        matches!(self, Viewer::Practice(_))
    }
}

/// A thread and the message a command added to it.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The thread after the command.
    pub thread: Thread,
    /// The new message.
    pub message: Message,
}

/// The consultation service over the shared platform.
#[derive(Clone)]
pub struct Consultations {
    p: Platform,
    quotas: Quotas,
}

impl Consultations {
    /// The service over `p` with per-patient `quotas`.
    pub fn new(p: Platform, quotas: Quotas) -> Self {
        Self { p, quotas }
    }

    /// The same service with these per-patient quotas.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Now, in ms since the epoch, by the platform's clock.
    pub fn now(&self) -> i64 {
        self.p.clock.now_ms()
    }

    /// The command `rpc` of `caller` with idempotency `key` and request fingerprint `fp`.
    fn command<'a>(
        &self,
        caller: &'a Caller,
        rpc: &'a str,
        key: &'a str,
        fp: &'a serde_json::Value,
    ) -> Command<'a, serde_json::Value> {
        Command::new(caller, rpc, key, fp, self.now())
    }

    /// Refuses (RESOURCE_EXHAUSTED) what would take the patient past a quota, inside the call's
    /// transaction and under the patient's lock (two concurrent calls cannot both squeeze in):
    /// a new thread when `opening`, and `new_bytes` of attachments.
    /// `locked`: the call holds the patient's quota lock already ([`quota_lock_key`]).
    async fn check_quotas(
        &self,
        tx: &mut Tx,
        nin: &str,
        (opening, new_bytes): (bool, i64),
        locked: bool,
    ) -> Result<(), ConsultationError> {
        if !opening && new_bytes == 0 {
            return Ok(());
        }
        if !locked {
            self.p.db.lock(tx, &quota_lock_key(nin)).await?;
        }
        if opening {
            let open = crate::store::open_threads(tx, nin).await?;
            if open >= self.quotas.open_threads {
                return Err(ConsultationError::ResourceExhausted(format!(
                    "you have {open} open e-consultations, the most at a time: wait for an answer, or withdraw one"
                )));
            }
        }
        if new_bytes > 0 {
            let since = self.now() - 24 * 3_600_000;
            let sent = crate::store::attachment_bytes_since(tx, nin, since).await?;
            let limit = self.quotas.attachment_bytes_per_day;
            if sent + new_bytes > limit {
                return Err(ConsultationError::ResourceExhausted(format!(
                    "attachments: {} bytes more would make {} in 24 hours, over the {limit} a patient may send; try again later",
                    new_bytes,
                    sent + new_bytes
                )));
            }
        }
        Ok(())
    }

    /// Runs `body` as the command `cmd` on thread `thread_id`, which the command's first
    /// statement reads with its lock, its practice's calendar and its booking request
    /// ([`crate::store::lock_thread`]), claiming the key in the same round trip on PostgreSQL.
    /// A retry of a call that committed gets the first answer before anything else is checked;
    /// a thread `viewer` may not see is NOT_FOUND, as `authorize` says.
    async fn on_thread(
        &self,
        cmd: Command<'_, serde_json::Value>,
        viewer: &Viewer,
        thread_id: &str,
        body: impl AsyncFnOnce(&mut Op, Locked) -> Result<Done, ConsultationError>,
    ) -> Result<Done, ConsultationError> {
        let backend = self.p.db.backend();
        command::run_with(
            &self.p.db,
            cmd,
            Claim::InFirstStatement,
            async |op: &mut Op| -> Result<Outcome<Done>, ConsultationError> {
                let (claimed, found) = crate::store::lock_thread(op, thread_id, backend).await?;
                if let Some(first) = op.claimed(claimed).await? {
                    return Ok(Outcome::Replayed(first));
                }
                let booking_request = found.as_ref().and_then(|f| f.booking_request.clone());
                let (thread, closures) = match found {
                    Some(f) => (Some(f.thread), f.closures),
                    None => (None, Vec::new()),
                };
                let locked = Locked {
                    thread: authorize(viewer, thread, thread_id)?,
                    calendar: Calendar::with_closures(closures),
                    booking_request,
                };
                body(op, locked).await.map(Outcome::Done)
            },
        )
        .await
    }

    /// Reads the thread with its lock for this transaction ([`crate::store::thread_for_update`]).
    async fn locked(
        &self,
        tx: &mut Tx,
        viewer: &Viewer,
        id: &str,
    ) -> Result<Thread, ConsultationError> {
        let t = crate::store::thread_for_update(tx, id, self.p.db.backend()).await?;
        authorize(viewer, t, id)
    }

    /// An outbox event of `topic` about `t` with `body`, in the call's transaction.
    fn event(
        &self,
        tx: &mut Tx,
        topic: &str,
        t: &Thread,
        body: &impl Serialize,
    ) -> Result<(), ConsultationError> {
        outbox::write(
            tx,
            NewEvent {
                topic,
                org_number: &t.org_number,
                route_key: &self.p.pseudonyms.key_for(&t.patient_nin),
                payload: body,
            },
            self.now(),
        )?;
        Ok(())
    }

    /// The thread's [`ConsultationChanged`] event of `topic` (with the response times in
    /// working days and hours when `cal` is given).
    fn changed(
        &self,
        tx: &mut Tx,
        topic: &str,
        t: &Thread,
        cal: Option<&Calendar>,
    ) -> Result<(), ConsultationError> {
        let body = changed_body(t, cal);
        self.event(tx, topic, t, &body)
    }

    /// The [`TOPIC_MESSAGE`] event of the new message `m`.
    fn message_event(&self, tx: &mut Tx, t: &Thread, m: &Message) -> Result<(), ConsultationError> {
        let body = serde_json::json!({
            "thread_id": t.thread_id,
            "message_id": m.message_id,
            "seq": m.seq,
        });
        self.event(tx, TOPIC_MESSAGE, t, &body)
    }

    /// The access-log row of a practice's `action` on `t`, or of someone acting for the
    /// patient (a patient's own actions log none): refused when the caller did not account
    /// for it.
    fn audit(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        action: &str,
        t: &Thread,
    ) -> Result<(), ConsultationError> {
        if caller.role == Role::Patient && caller.proxy.acting.is_none() {
            return Ok(());
        }
        audit::row(caller, &thread_access(caller, action, t), self.now())?.write(tx);
        Ok(())
    }
}

/// The access of `caller`'s `action` to thread `t`, described for the patient with the thread's
/// subject. Its purpose is implied (treatment) for a practice's writes, and for a read of a
/// thread assigned to the practitioner behind the call; any other practice read must state one.
pub(crate) fn thread_access<'a>(caller: &Caller, action: &'a str, t: &'a Thread) -> Access<'a> {
    let (what, write) = match action {
        rpc::START => ("started an e-consultation", true),
        rpc::SEND => ("sent a message in your e-consultation", true),
        rpc::WITHDRAW => ("withdrew your e-consultation", true),
        rpc::LIST => ("saw your e-consultation in a list", false),
        rpc::GET => ("read your e-consultation", false),
        rpc::ATTACHMENT => ("opened an attachment in your e-consultation", false),
        rpc::READ => ("marked your e-consultation as read", true),
        rpc::INBOX => ("saw your e-consultation in the practice's inbox", false),
        rpc::CLAIM => ("took on your e-consultation", true),
        rpc::REPLY => ("replied to your e-consultation", true),
        rpc::CONVERT => ("answered your e-consultation with an appointment", true),
        rpc::CLOSE => ("closed your e-consultation", true),
        rpc::WATCH => ("received a change to your e-consultation", false),
        rpc::CONFIDENTIAL if t.confidential => {
            ("marked your e-consultation as confidential to you", true)
        }
        rpc::CONFIDENTIAL => ("marked your e-consultation as no longer confidential", true),
        _ => ("accessed your e-consultation", false),
    };
    let assigned =
        !t.assigned_hpr.is_empty() && caller.practitioner_hpr() == Some(t.assigned_hpr.as_str());
    Access::new(
        action,
        format!("consultation:{}", t.thread_id),
        &t.patient_nin,
        what,
    )
    .about(&t.subject)
    .implies_if(write || assigned, Purpose::Treatment)
}

/// The thread if `viewer` may see it; `NOT_FOUND`, with the same message, both when it does
/// not exist and when it belongs to another patient or organisation (a different answer
/// would tell a caller that a thread id exists: booking answers the same way).
fn authorize(viewer: &Viewer, t: Option<Thread>, id: &str) -> Result<Thread, ConsultationError> {
    let visible = t.filter(|t| match viewer {
        Viewer::Patient(nin) => t.patient_nin == nin.as_str(),
        Viewer::Parent { child, parent } => {
            t.patient_nin == child.as_str() && t.started_by_nin == *parent && !t.confidential
        }
        Viewer::Practice(org) => t.org_number == *org,
    });
    visible.ok_or_else(|| ConsultationError::NotFound(format!("thread {id} not found")))
}

/// The advisory lock under which a patient's quotas are checked and used.
fn quota_lock_key(nin: &str) -> String {
    format!("consultation-quota:{nin}")
}

/// A thread a command changes, read with its lock by [`Consultations::on_thread`].
struct Locked {
    thread: Thread,
    /// Its practice's working days.
    calendar: Calendar,
    /// The booking request it was started from (the guarantee engine), if any.
    booking_request: Option<String>,
}

/// FAILED_PRECONDITION: the thread cannot go from `from` to `to`.
fn transition_refused(from: State, to: State) -> ConsultationError {
    ConsultationError::FailedPrecondition(format!(
        "the thread is {}; it cannot become {}",
        from.name(),
        to.name()
    ))
}

fn changed_body(t: &Thread, cal: Option<&Calendar>) -> ConsultationChanged {
    let (days, hours) = match (t.first_response_at, cal) {
        (Some(first), Some(cal)) => (
            Some(sla::working_days(
                cal,
                from_ms(t.submitted_at),
                from_ms(first),
            )),
            Some(sla::working_hours(
                cal,
                from_ms(t.submitted_at),
                from_ms(first),
            )),
        ),
        _ => (None, None),
    };
    ConsultationChanged {
        thread_id: t.thread_id.clone(),
        gp_id: t.gp_id.clone(),
        org_number: t.org_number.clone(),
        municipality_number: t.municipality_number.clone(),
        category: t.category.name().into(),
        submitted_at_ms: t.submitted_at,
        due_at_ms: t.due_at,
        first_response_at_ms: t.first_response_at,
        response_working_days: days,
        response_working_hours: hours,
        closed_at_ms: t.closed_at,
        tariff_code: (!t.tariff_code.is_empty()).then(|| t.tariff_code.clone()),
        outcome: (!t.outcome.is_empty()).then(|| t.outcome.clone()),
    }
}

/// A thread id of a request: `INVALID_ARGUMENT` naming `field` when empty or too long.
pub fn required_id(id: &str, field: &str) -> Result<(), ConsultationError> {
    if id.is_empty() || id.len() > 64 {
        Err(ConsultationError::Invalid(format!("{field} is required")))
    } else {
        Ok(())
    }
}

/// A request fingerprint for idempotency: attachments by hash, not bytes.
fn fingerprint(fields: serde_json::Value, attachments: &[CheckedAttachment]) -> serde_json::Value {
    let hashes: Vec<&str> = attachments.iter().map(|a| a.sha256.as_str()).collect();
    serde_json::json!({ "fields": fields, "attachments": hashes })
}

/// Bytes of `attachments`.
fn bytes_of(attachments: &[CheckedAttachment]) -> i64 {
    attachments.iter().map(|a| a.content.len() as i64).sum()
}
