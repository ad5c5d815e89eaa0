//! `econsult.consultation.v1.ConsultationService`: authorisation, validation, and the state
//! machine. Every mutation is one write transaction holding the thread's lock, with its
//! messages, outbox events, audit rows and idempotency record.

use crate::content::{MAX_BODY_CHARS, MAX_SUBJECT_CHARS, check_attachments, checked_text};
use crate::feed::{self, Feed};
use crate::sla;
use crate::store::{self, MessageRow, ThreadRow, state};
use crate::urgent::{self, Language, Office};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use econsult_booking::directory;
use econsult_calendar::Calendar;
use econsult_proto::consultation::v1 as pb;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::bus::Event;
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::Tx;
use econsult_runtime::events::{ConsultationChanged, topics};
use econsult_runtime::grpc::{db_status, internal, timestamp};
use econsult_runtime::idempotency::{self, Begun, IdempotencyError, Op};
use econsult_runtime::outbox::{self, EventFilter, NewEvent};
use econsult_runtime::platform::Platform;
use econsult_runtime::tariff;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

/// Scope to read threads of the organisation.
pub const SCOPE_READ: &str = "econsult:consultation.read";
/// Scope to act on threads of the organisation.
pub const SCOPE_WRITE: &str = "econsult:consultation.write";

/// Topic of a new message (for the change streams; stats ignores it).
pub const TOPIC_MESSAGE: &str = "consultation.message";
/// Topic of a state or assignment change without a stats meaning.
pub const TOPIC_STATE: &str = "consultation.state";
/// Topic of a read receipt.
pub const TOPIC_READ: &str = "consultation.read";

mod rpc {
    pub const START: &str = "/econsult.consultation.v1.ConsultationService/StartConsultation";
    pub const SEND: &str = "/econsult.consultation.v1.ConsultationService/SendMessage";
    pub const GET: &str = "/econsult.consultation.v1.ConsultationService/GetThread";
    pub const ATTACHMENT: &str = "/econsult.consultation.v1.ConsultationService/GetAttachment";
    pub const READ: &str = "/econsult.consultation.v1.ConsultationService/MarkRead";
    pub const WITHDRAW: &str = "/econsult.consultation.v1.ConsultationService/WithdrawConsultation";
    pub const INBOX: &str = "/econsult.consultation.v1.ConsultationService/ListInbox";
    pub const CLAIM: &str = "/econsult.consultation.v1.ConsultationService/ClaimThread";
    pub const REPLY: &str = "/econsult.consultation.v1.ConsultationService/Reply";
    pub const CONVERT: &str = "/econsult.consultation.v1.ConsultationService/ConvertToBooking";
    pub const CLOSE: &str = "/econsult.consultation.v1.ConsultationService/CloseConsultation";
    pub const WATCH: &str = "/econsult.consultation.v1.ConsultationService/WatchInbox";
}

/// The tariff code billed by default when the practice names none: 2ae for an e-consultation,
/// 1bd (simple contact by the doctor) for a prescription renewal, none for an administrative
/// e-contact (a reception's answer gives no health care and bills nothing).
fn default_tariff(category: i64) -> &'static str {
    match pb::Category::try_from(category as i32) {
        Ok(pb::Category::EConsultation) => "2ae",
        Ok(pb::Category::PrescriptionRenewal) => "1bd",
        _ => "",
    }
}

/// `code` checked against Normaltariffen of the contact's `date` (ISO) for a written thread.
fn tariff_on(code: &str, date: &str) -> Result<(), Status> {
    tariff::remote(code, date)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// What an idempotent call stored: its first response, and (for records stored before the
/// response was) the ids a replay rebuilt the response from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done {
    thread_id: String,
    message_id: Option<String>,
    offered: Vec<(String, i64, i64)>,
    /// ConvertToBooking: the booking request it opened (or the patient's open one).
    #[serde(default)]
    request_id: String,
    /// The first response as sent: its protobuf encoding, base64. Empty in records stored
    /// before it was kept; their replays are rebuilt from the ids and the current rows.
    #[serde(default)]
    response: String,
}

impl Done {
    /// A call whose result is the thread.
    fn thread(t: &ThreadRow) -> Self {
        Self {
            thread_id: t.thread_id.clone(),
            message_id: None,
            offered: Vec::new(),
            request_id: String::new(),
            response: String::new(),
        }
    }

    /// This record with `response`, the answer the call is about to send, to replay as is.
    fn answering(mut self, response: &impl prost::Message) -> Self {
        self.response = B64.encode(response.encode_to_vec());
        self
    }

    /// The stored first response, `None` in a record from before responses were stored.
    fn first<R: prost::Message + Default>(&self) -> Result<Option<R>, Status> {
        if self.response.is_empty() {
            return Ok(None);
        }
        let bytes = B64
            .decode(&self.response)
            .map_err(|e| internal("stored response", e))?;
        R::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| internal("stored response", e))
    }

    /// A call whose result is a message (and its thread).
    fn message(t: &ThreadRow, m: &MessageRow) -> Self {
        Self {
            message_id: Some(m.message_id.clone()),
            ..Self::thread(t)
        }
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct ConsultationGrpc {
    p: Platform,
    feed: Feed,
    quotas: crate::Quotas,
}

/// Who looks at a thread.
enum Viewer {
    Patient(String),
    Practice(String),
}

impl ConsultationGrpc {
    /// The service over the shared platform.
    pub fn new(p: Platform) -> Self {
        Self::with_feed_capacity(p, crate::feed::DEFAULT_CAPACITY)
    }

    /// The service, with streams that catch up from the database after falling more than
    /// `capacity` batches behind the feed.
    pub fn with_feed_capacity(p: Platform, capacity: usize) -> Self {
        let feed = Feed::start(
            p.db.clone(),
            p.sequenced.clone(),
            p.shutdown.clone(),
            capacity,
        );
        Self {
            p,
            feed,
            quotas: crate::Quotas::default(),
        }
    }

    /// The service with these per-patient quotas.
    pub fn with_quotas(mut self, quotas: crate::Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Refuses (RESOURCE_EXHAUSTED) what would take the patient past a quota, inside the call's
    /// transaction and under the patient's lock (two concurrent calls cannot both squeeze in):
    /// a new thread when `opening`, and `new_bytes` of attachments.
    async fn check_quotas(
        &self,
        tx: &mut Tx,
        nin: &str,
        opening: bool,
        new_bytes: i64,
    ) -> Result<(), Status> {
        if !opening && new_bytes == 0 {
            return Ok(());
        }
        self.p
            .db
            .lock(tx, &format!("consultation-quota:{nin}"))
            .await
            .map_err(|e| db_status("quota lock", e))?;
        if opening {
            let open: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM consultation_threads WHERE patient_nin = $1 AND state IN ($2, $3, $4)",
            )
            .bind(nin)
            .bind(state::SUBMITTED)
            .bind(state::IN_REVIEW)
            .bind(state::AWAITING_PATIENT)
            .fetch_one(&mut **tx)
            .await
            .and_then(|r| sqlx::Row::try_get(&r, "n"))
            .map_err(|e| db_status("open threads", e))?;
            if open >= self.quotas.open_threads {
                return Err(Status::resource_exhausted(format!(
                    "you have {open} open e-consultations, the most at a time: wait for an answer, or withdraw one"
                )));
            }
        }
        if new_bytes > 0 {
            let since = self.now() - 24 * 3_600_000;
            let sent: i64 = sqlx::query(
                "SELECT CAST(COALESCE(SUM(a.size_bytes), 0) AS BIGINT) AS n FROM consultation_attachments a \
                 JOIN consultation_messages m ON m.message_id = a.message_id \
                 JOIN consultation_threads t ON t.thread_id = a.thread_id \
                 WHERE t.patient_nin = $1 AND m.author = 1 AND m.sent_at > $2",
            )
            .bind(nin)
            .bind(since)
            .fetch_one(&mut **tx)
            .await
            .and_then(|r| sqlx::Row::try_get(&r, "n"))
            .map_err(|e| db_status("attachment bytes", e))?;
            let limit = self.quotas.attachment_bytes_per_day;
            if sent + new_bytes > limit {
                return Err(Status::resource_exhausted(format!(
                    "attachments: {} bytes more would make {} in 24 hours, over the {limit} a patient may send; try again later",
                    new_bytes,
                    sent + new_bytes
                )));
            }
        }
        Ok(())
    }

    /// The process's event feed of the change streams.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::consultation_service_server::ConsultationServiceServer<Self> {
        pb::consultation_service_server::ConsultationServiceServer::new(self)
    }

    fn now(&self) -> i64 {
        self.p.clock.now_ms()
    }

    fn viewer(caller: &Caller, scope: &str) -> Result<Viewer, Status> {
        match caller.role {
            Role::Patient => Ok(Viewer::Patient(caller.patient()?.as_str().to_owned())),
            _ => Ok(Viewer::Practice(caller.org_with_scope(scope)?.to_owned())),
        }
    }

    /// The thread if `viewer` may see it; `NOT_FOUND`, with the same message, both when it does
    /// not exist and when it belongs to another patient or organisation (a different answer
    /// would tell a caller that a thread id exists: booking answers the same way).
    fn authorize(viewer: &Viewer, t: Option<ThreadRow>, id: &str) -> Result<ThreadRow, Status> {
        let visible = t.filter(|t| match viewer {
            Viewer::Patient(nin) => t.patient_nin == *nin,
            Viewer::Practice(org) => t.org_number == *org,
        });
        visible.ok_or_else(|| Status::not_found(format!("thread {id} not found")))
    }

    async fn begin(
        &self,
        caller: &Caller,
        rpc: &str,
        key: &str,
        req: &serde_json::Value,
    ) -> Result<Begun<Done>, Status> {
        idempotency::begin(&self.p.db, &caller.subject, rpc, key, req, self.now())
            .await
            .map_err(idem_status)
    }

    async fn finish(&self, op: Op, done: &Done) -> Result<(), Status> {
        op.finish(done).await.map_err(idem_status)
    }

    /// The working days of practice `org`, read in the call's transaction `tx`: a command
    /// never waits for a second pooled connection while its transaction holds one.
    async fn calendar(tx: &mut Tx, org: &str) -> Result<Calendar, Status> {
        let days = directory::closures(tx, org)
            .await
            .map_err(|e| db_status("closures", e))?;
        Ok(Calendar::with_closures(days))
    }

    /// Where a patient with an urgent need should turn now: the GP office's phone while it is
    /// open, legevakt otherwise (`urgent`). A read of the pool (it writes nothing, so there is
    /// no transaction); one connection for the three lookups.
    async fn urgent_answer(&self, nin: &str, lang: Language) -> Result<String, Status> {
        let mut conn = self
            .p
            .db
            .read()
            .acquire()
            .await
            .map_err(|e| db_status("acquire", e))?;
        let office = match directory::patient_gp(&mut conn, nin)
            .await
            .map_err(|e| db_status("patient gp", e))?
        {
            None => Office::Unknown,
            Some(gp) => {
                let hours = directory::opening_hours(&mut conn, &gp.org_number)
                    .await
                    .map_err(|e| db_status("opening hours", e))?;
                let closures = directory::closures(&mut conn, &gp.org_number)
                    .await
                    .map_err(|e| db_status("closures", e))?;
                Office::at(
                    &hours,
                    &Calendar::with_closures(closures),
                    from_ms(self.now()),
                )
            }
        };
        Ok(urgent::answer(lang, &office))
    }

    /// Locks the thread for this transaction and reads it.
    async fn locked(&self, tx: &mut Tx, viewer: &Viewer, id: &str) -> Result<ThreadRow, Status> {
        self.p
            .db
            .lock(tx, &format!("consultation:{id}"))
            .await
            .map_err(|e| db_status("lock", e))?;
        let t = store::thread(&mut **tx, id)
            .await
            .map_err(|e| db_status("thread", e))?;
        Self::authorize(viewer, t, id)
    }

    async fn event(
        &self,
        tx: &mut Tx,
        topic: &str,
        t: &ThreadRow,
        body: &impl Serialize,
    ) -> Result<(), Status> {
        outbox::enqueue(
            tx,
            NewEvent {
                topic,
                org_number: &t.org_number,
                route_key: &t.patient_nin,
                payload: body,
            },
            self.now(),
        )
        .await
        .map(|_| ())
        .map_err(|e| econsult_runtime::grpc::anyhow_status("outbox", e))
    }

    async fn changed(
        &self,
        tx: &mut Tx,
        topic: &str,
        t: &ThreadRow,
        cal: Option<&Calendar>,
    ) -> Result<(), Status> {
        let body = changed_body(t, cal);
        self.event(tx, topic, t, &body).await
    }

    async fn message_event(
        &self,
        tx: &mut Tx,
        t: &ThreadRow,
        m: &MessageRow,
    ) -> Result<(), Status> {
        let body = serde_json::json!({
            "thread_id": t.thread_id,
            "message_id": m.message_id,
            "seq": m.seq,
        });
        self.event(tx, TOPIC_MESSAGE, t, &body).await
    }

    async fn thread_view(&self, id: &str, practice: bool) -> Result<pb::Thread, Status> {
        let t = store::thread(self.p.db.read(), id)
            .await
            .map_err(|e| db_status("thread", e))?
            .ok_or_else(|| Status::not_found(format!("thread {id} not found")))?;
        Ok(t.to_pb(self.now(), practice))
    }

    async fn message_view(&self, id: &str) -> Result<pb::Message, Status> {
        store::message(&self.p.db, id)
            .await
            .map_err(|e| db_status("message", e))?
            .map(|m| m.to_pb())
            .ok_or_else(|| internal("message", format!("stored message {id} missing")))
    }

    async fn audit(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        action: &str,
        t: &ThreadRow,
    ) -> Result<(), Status> {
        if caller.role == Role::Patient {
            return Ok(());
        }
        audit::record(
            tx,
            caller,
            &Access {
                action,
                resource: format!("consultation:{}", t.thread_id),
                patient_nin: &t.patient_nin,
            },
            self.now(),
        )
        .await
        .map_err(|e| db_status("audit", e))
    }

    /// Adds a practice message and moves the thread; shared by Reply and ConvertToBooking.
    #[allow(clippy::too_many_arguments)]
    async fn practice_message(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        action: &str,
        t: &mut ThreadRow,
        to: i64,
        hpr: &str,
        body: &str,
        attachments: &[crate::content::CheckedAttachment],
    ) -> Result<MessageRow, Status> {
        if !state::allowed(t.state, to) {
            return Err(transition_refused(t.state, to));
        }
        let now = self.now();
        let m = store::append_message(tx, &t.thread_id, 2, hpr, body, attachments, now)
            .await
            .map_err(|e| db_status("append", e))?;
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
        save(tx, t).await?;
        self.audit(tx, caller, action, t).await?;
        self.message_event(tx, t, &m).await?;
        let cal = Self::calendar(tx, &t.org_number).await?;
        if first {
            self.changed(tx, topics::CONSULTATION_FIRST_RESPONSE, t, Some(&cal))
                .await?;
        }
        let topic = if to == state::ANSWERED {
            topics::CONSULTATION_ANSWERED
        } else {
            TOPIC_STATE
        };
        self.changed(tx, topic, t, Some(&cal)).await?;
        Ok(m)
    }

    /// The HPR number a practice action is done by.
    fn acting_hpr(caller: &Caller, given: &str, field: &str) -> Result<String, Status> {
        if let Some(own) = &caller.hpr_number {
            if !given.is_empty() && given != own {
                return Err(Status::permission_denied(format!(
                    "{field}: a clinician acts as themselves"
                )));
            }
            return Ok(own.clone());
        }
        if given.is_empty() {
            return Ok(String::new());
        }
        if given.len() > 9 || !given.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Status::invalid_argument(format!(
                "{field} must be an HPR number (up to 9 digits)"
            )));
        }
        Ok(given.to_owned())
    }

    fn change_stream(
        &self,
        caller: Caller,
        practice: Option<String>,
        mut cursor: u64,
    ) -> ChangeStream {
        let expires_at = caller.expires_at;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ThreadChange, Status>>(64);
        let this = self.clone();
        tokio::spawn(async move {
            let mut stop = this.p.shutdown.clone();
            let route = caller.nin.as_ref().map(|n| n.as_str().to_owned());
            if practice.is_none() && route.is_none() {
                return;
            }
            let filter = EventFilter {
                topic_prefix: feed::TOPIC_PREFIX,
                org_number: practice.as_deref(),
                route_key: if practice.is_some() {
                    None
                } else {
                    route.as_deref()
                },
            };
            let unavailable =
                || Status::unavailable("server shutting down, resume from the last cursor");
            // Subscribe before reading: an event is then either in the catch-up read or in the feed.
            let Some(mut live) = this.feed.subscribe().await else {
                let _ = tx.send(Err(unavailable())).await;
                return;
            };
            'catch_up: loop {
                loop {
                    match outbox::read_after(&this.p.db, cursor, u64::MAX, filter, 200).await {
                        Ok(events) if !events.is_empty() => {
                            let events: Vec<&Event> = events.iter().collect();
                            match this
                                .deliver(&caller, practice.is_some(), &events, &tx)
                                .await
                            {
                                Some(c) => cursor = c,
                                None => return,
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            let _ = tx.send(Err(db_status("changes", e))).await;
                            return;
                        }
                    }
                }
                loop {
                    let batch = tokio::select! {
                        b = live.recv() => b,
                        _ = stop.changed() => {
                            let _ = tx.send(Err(unavailable())).await;
                            return;
                        }
                        _ = tx.closed() => return,
                    };
                    match batch {
                        Ok(batch) => {
                            let events: Vec<&Event> = batch
                                .iter()
                                .filter(|f| {
                                    f.event.seq > cursor && filter.matches(&f.event, &f.route_key)
                                })
                                .map(|f| &f.event)
                                .collect();
                            if events.is_empty() {
                                continue;
                            }
                            match this
                                .deliver(&caller, practice.is_some(), &events, &tx)
                                .await
                            {
                                Some(c) => cursor = c,
                                None => return,
                            }
                        }
                        // Fell behind the feed: read what it missed from the database.
                        Err(RecvError::Lagged(_)) => {
                            this.feed.fell_behind();
                            continue 'catch_up;
                        }
                        Err(RecvError::Closed) => {
                            let _ = tx.send(Err(unavailable())).await;
                            return;
                        }
                    }
                }
            }
        });
        econsult_runtime::auth::end_at_token_expiry(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            expires_at,
        )
    }

    /// Turns `events` into changes, logs a practice's reads, and sends them in order. Returns
    /// the cursor after the last one sent, or `None` when the stream ended (client gone, error
    /// sent).
    async fn deliver(
        &self,
        caller: &Caller,
        practice: bool,
        events: &[&Event],
        tx: &tokio::sync::mpsc::Sender<Result<pb::ThreadChange, Status>>,
    ) -> Option<u64> {
        let mut accesses = Vec::new();
        let mut changes = Vec::with_capacity(events.len());
        for e in events {
            match self.to_change(e, practice).await {
                Ok((change, nin)) => {
                    if practice {
                        accesses.push((
                            change
                                .thread
                                .as_ref()
                                .map(|t| t.thread_id.clone())
                                .unwrap_or_default(),
                            nin,
                        ));
                    }
                    changes.push(change);
                }
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return None;
                }
            }
        }
        if !accesses.is_empty() {
            let rows: Vec<Access<'_>> = accesses
                .iter()
                .map(|(id, nin)| Access {
                    action: rpc::WATCH,
                    resource: format!("consultation:{id}"),
                    patient_nin: nin,
                })
                .collect();
            if let Err(e) = audit::record_reads(&self.p.db, caller, &rows, self.now()).await {
                let _ = tx.send(Err(db_status("audit", e))).await;
                return None;
            }
        }
        let mut cursor = None;
        for change in changes {
            cursor = Some(change.cursor);
            if tx.send(Ok(change)).await.is_err() {
                return None;
            }
        }
        cursor
    }

    async fn to_change(
        &self,
        e: &econsult_runtime::bus::Event,
        practice: bool,
    ) -> Result<(pb::ThreadChange, String), Status> {
        let v: serde_json::Value =
            serde_json::from_str(&e.payload).map_err(|err| internal("event", err))?;
        let thread_id = v["thread_id"].as_str().unwrap_or_default();
        let t = store::thread(self.p.db.read(), thread_id)
            .await
            .map_err(|err| db_status("thread", err))?
            .ok_or_else(|| internal("event", format!("thread {thread_id} missing")))?;
        let kind = match e.topic.as_str() {
            topics::CONSULTATION_STARTED => pb::ChangeKind::Started,
            TOPIC_MESSAGE => pb::ChangeKind::Message,
            TOPIC_READ => pb::ChangeKind::Read,
            _ => pb::ChangeKind::State,
        };
        let message = match v["message_id"].as_str() {
            Some(id) if kind == pb::ChangeKind::Message => Some(self.message_view(id).await?),
            _ => None,
        };
        Ok((
            pb::ThreadChange {
                cursor: e.seq,
                kind: kind as i32,
                thread: Some(t.to_pb(self.now(), practice)),
                message,
            },
            t.patient_nin,
        ))
    }
}

type ChangeStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ThreadChange, Status>> + Send + 'static>>;

/// Writes the thread's mutable fields back.
async fn save(tx: &mut Tx, t: &ThreadRow) -> Result<(), Status> {
    store::update_thread(tx, t)
        .await
        .map_err(|e| db_status("update", e))
}

fn idem_status(e: IdempotencyError) -> Status {
    match e {
        IdempotencyError::KeyReused => Status::already_exists(e.to_string()),
        IdempotencyError::BadKey => Status::invalid_argument(e.to_string()),
        IdempotencyError::Db(db) => db_status("idempotency", db),
        IdempotencyError::Codec(c) => internal("idempotency", c),
    }
}

fn transition_refused(from: i64, to: i64) -> Status {
    Status::failed_precondition(format!(
        "the thread is {}; it cannot become {}",
        state::name(from),
        state::name(to)
    ))
}

fn category_name(c: i64) -> &'static str {
    match c {
        1 => "e_consultation",
        2 => "prescription_renewal",
        3 => "administrative",
        _ => "unknown",
    }
}

fn changed_body(t: &ThreadRow, cal: Option<&Calendar>) -> ConsultationChanged {
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
        category: category_name(t.category).into(),
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

fn required_id(id: &str, field: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 64 {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(())
    }
}

/// A request fingerprint for idempotency: attachments by hash, not bytes.
fn fingerprint(
    fields: serde_json::Value,
    attachments: &[crate::content::CheckedAttachment],
) -> serde_json::Value {
    let hashes: Vec<&str> = attachments.iter().map(|a| a.sha256.as_str()).collect();
    serde_json::json!({ "fields": fields, "attachments": hashes })
}

fn page(size: i32, default: i64, max: i64, field: &str) -> Result<i64, Status> {
    match size {
        0 => Ok(default),
        n if n < 0 || i64::from(n) > max => Err(Status::invalid_argument(format!(
            "{field} must be between 1 and {max}"
        ))),
        n => Ok(i64::from(n)),
    }
}

fn offset(token: &str) -> Result<i64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .parse::<i64>()
        .ok()
        .filter(|o| *o >= 0)
        .ok_or_else(|| Status::invalid_argument("page_token is not a token this service issued"))
}

#[tonic::async_trait]
impl pb::consultation_service_server::ConsultationService for ConsultationGrpc {
    async fn start_consultation(
        &self,
        req: Request<pb::StartConsultationRequest>,
    ) -> Result<Response<pb::StartConsultationResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        if r.urgent {
            let answer = self
                .urgent_answer(&nin, Language::from_tag(&r.language))
                .await?;
            return Err(Status::failed_precondition(answer));
        }
        let category = match pb::Category::try_from(r.category) {
            Ok(c) if c != pb::Category::Unspecified => c as i64,
            _ => {
                return Err(Status::invalid_argument(
                    "category must be E_CONSULTATION, PRESCRIPTION_RENEWAL or ADMINISTRATIVE",
                ));
            }
        };
        let subject = checked_text(&r.subject, "subject", MAX_SUBJECT_CHARS)?;
        let body = checked_text(&r.body, "body", MAX_BODY_CHARS)?;
        let attachments = check_attachments(r.attachments)?;
        let fp = fingerprint(serde_json::json!([category, subject, body]), &attachments);
        let mut op = match self
            .begin(&caller, rpc::START, &r.idempotency_key, &fp)
            .await?
        {
            Begun::Replay(done) => {
                if let Some(first) = done.first()? {
                    return Ok(Response::new(first));
                }
                return Ok(Response::new(pb::StartConsultationResponse {
                    thread: Some(self.thread_view(&done.thread_id, false).await?),
                    message: Some(
                        self.message_view(done.message_id.as_deref().unwrap_or_default())
                            .await?,
                    ),
                }));
            }
            Begun::New(op) => op,
        };
        // Read in the call's transaction (as everything below): a retry gets the first
        // answer before this runs, and the transaction's connection is the only one it holds.
        let gp = directory::patient_gp(&mut op.tx, &nin)
            .await
            .map_err(|e| db_status("patient gp", e))?
            .ok_or_else(|| {
                Status::failed_precondition(
                    "you are not on a GP's list (fastlegeliste): choose a GP first",
                )
            })?;
        let new_bytes = attachments.iter().map(|a| a.content.len() as i64).sum();
        self.check_quotas(&mut op.tx, &nin, true, new_bytes).await?;
        let now = self.now();
        let tx = &mut op.tx;
        let n = store::response_days(tx, &gp.org_number)
            .await
            .map_err(|e| db_status("settings", e))?;
        let cal = Self::calendar(tx, &gp.org_number).await?;
        let due = sla::due_at(&cal, from_ms(now), n).timestamp_millis();
        let mut t = ThreadRow {
            thread_id: uuid::Uuid::now_v7().to_string(),
            patient_nin: nin,
            gp_id: gp.gp_id,
            gp_display_name: gp.display_name,
            org_number: gp.org_number,
            municipality_number: gp.municipality_number,
            category,
            subject,
            state: state::SUBMITTED,
            submitted_at: now,
            due_at: due,
            first_response_at: None,
            assigned_hpr: String::new(),
            last_seq: 0,
            patient_read_seq: 0,
            practice_read_seq: 0,
            outcome: String::new(),
            tariff_code: String::new(),
            closed_at: None,
            updated_at: now,
        };
        store::insert_thread(tx, &t)
            .await
            .map_err(|e| db_status("insert thread", e))?;
        let m = store::append_message(tx, &t.thread_id, 1, "", &body, &attachments, now)
            .await
            .map_err(|e| db_status("append", e))?;
        t.last_seq = m.seq;
        t.patient_read_seq = m.seq;
        save(tx, &t).await?;
        self.changed(tx, topics::CONSULTATION_STARTED, &t, Some(&cal))
            .await?;
        self.message_event(tx, &t, &m).await?;
        let resp = pb::StartConsultationResponse {
            thread: Some(t.to_pb(now, false)),
            message: Some(m.to_pb()),
        };
        self.finish(op, &Done::message(&t, &m).answering(&resp))
            .await?;
        tracing::info!(thread_id = %t.thread_id, category = category_name(category), due_at = t.due_at, "consultation started");
        Ok(Response::new(resp))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Viewer::Patient(caller.patient()?.as_str().to_owned());
        let r = req.into_inner();
        required_id(&r.thread_id, "thread_id")?;
        let body = checked_text(&r.body, "body", MAX_BODY_CHARS)?;
        let attachments = check_attachments(r.attachments)?;
        let fp = fingerprint(serde_json::json!([r.thread_id, body]), &attachments);
        let mut op = match self
            .begin(&caller, rpc::SEND, &r.idempotency_key, &fp)
            .await?
        {
            Begun::Replay(done) => {
                if let Some(first) = done.first()? {
                    return Ok(Response::new(first));
                }
                return Ok(Response::new(pb::SendMessageResponse {
                    message: Some(
                        self.message_view(done.message_id.as_deref().unwrap_or_default())
                            .await?,
                    ),
                    thread: Some(self.thread_view(&done.thread_id, false).await?),
                }));
            }
            Begun::New(op) => op,
        };
        let mut t = self.locked(&mut op.tx, &viewer, &r.thread_id).await?;
        let new_bytes = attachments.iter().map(|a| a.content.len() as i64).sum();
        self.check_quotas(&mut op.tx, &t.patient_nin, false, new_bytes)
            .await?;
        let to = match t.state {
            state::SUBMITTED | state::IN_REVIEW => t.state,
            state::AWAITING_PATIENT => state::IN_REVIEW,
            other => {
                return Err(Status::failed_precondition(format!(
                    "the thread is {}: start a new consultation instead",
                    state::name(other)
                )));
            }
        };
        let now = self.now();
        let m = store::append_message(&mut op.tx, &t.thread_id, 1, "", &body, &attachments, now)
            .await
            .map_err(|e| db_status("append", e))?;
        let state_changed = to != t.state;
        t.last_seq = m.seq;
        t.state = to;
        t.patient_read_seq = m.seq;
        t.updated_at = now;
        save(&mut op.tx, &t).await?;
        self.message_event(&mut op.tx, &t, &m).await?;
        if state_changed {
            self.changed(&mut op.tx, TOPIC_STATE, &t, None).await?;
        }
        let resp = pb::SendMessageResponse {
            message: Some(m.to_pb()),
            thread: Some(t.to_pb(now, false)),
        };
        self.finish(op, &Done::message(&t, &m).answering(&resp))
            .await?;
        Ok(Response::new(resp))
    }

    async fn list_threads(
        &self,
        req: Request<pb::ListThreadsRequest>,
    ) -> Result<Response<pb::ListThreadsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        let limit = page(r.page_size, 20, 100, "page_size")?;
        let off = offset(&r.page_token)?;
        let rows = sqlx::query(&format!(
            "SELECT {} FROM consultation_threads WHERE patient_nin = $1 ORDER BY submitted_at DESC, thread_id DESC LIMIT $2 OFFSET $3",
            store::THREAD_COLS
        ))
        .bind(&nin)
        .bind(limit + 1)
        .bind(off)
        .fetch_all(self.p.db.read())
        .await
        .map_err(|e| db_status("list", e))?;
        let now = self.now();
        let more = rows.len() as i64 > limit;
        let threads = rows
            .iter()
            .take(limit as usize)
            .map(|r| ThreadRow::from_row(r).map(|t| t.to_pb(now, false)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| db_status("list", e))?;
        Ok(Response::new(pb::ListThreadsResponse {
            threads,
            next_page_token: if more {
                (off + limit).to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn get_thread(
        &self,
        req: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Self::viewer(&caller, SCOPE_READ)?;
        let r = req.into_inner();
        required_id(&r.thread_id, "thread_id")?;
        if r.after_seq < 0 {
            return Err(Status::invalid_argument("after_seq must not be negative"));
        }
        let limit = page(r.page_size, 50, 200, "page_size")?;
        let t = store::thread(self.p.db.read(), &r.thread_id)
            .await
            .map_err(|e| db_status("thread", e))?;
        let t = Self::authorize(&viewer, t, &r.thread_id)?;
        let practice = matches!(viewer, Viewer::Practice(_));
        if practice {
            // Logged before the data leaves: a read that cannot be logged fails.
            audit::record_reads(
                &self.p.db,
                &caller,
                &[Access {
                    action: rpc::GET,
                    resource: format!("consultation:{}", t.thread_id),
                    patient_nin: &t.patient_nin,
                }],
                self.now(),
            )
            .await
            .map_err(|e| db_status("audit", e))?;
        }
        let mut msgs = store::messages(&self.p.db, &t.thread_id, r.after_seq, limit + 1)
            .await
            .map_err(|e| db_status("messages", e))?;
        let has_more = msgs.len() as i64 > limit;
        msgs.truncate(limit as usize);
        Ok(Response::new(pb::GetThreadResponse {
            thread: Some(t.to_pb(self.now(), practice)),
            messages: msgs.iter().map(MessageRow::to_pb).collect(),
            has_more,
        }))
    }

    async fn get_attachment(
        &self,
        req: Request<pb::GetAttachmentRequest>,
    ) -> Result<Response<pb::GetAttachmentResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Self::viewer(&caller, SCOPE_READ)?;
        let id = req.into_inner().attachment_id;
        required_id(&id, "attachment_id")?;
        let (thread_id, meta, content) = store::attachment(&self.p.db, &id)
            .await
            .map_err(|e| db_status("attachment", e))?
            .ok_or_else(|| Status::not_found(format!("attachment {id} not found")))?;
        let t = store::thread(self.p.db.read(), &thread_id)
            .await
            .map_err(|e| db_status("thread", e))?;
        let t = Self::authorize(&viewer, t, &thread_id)?;
        if matches!(viewer, Viewer::Practice(_)) {
            audit::record_reads(
                &self.p.db,
                &caller,
                &[Access {
                    action: rpc::ATTACHMENT,
                    resource: format!("consultation-attachment:{id}"),
                    patient_nin: &t.patient_nin,
                }],
                self.now(),
            )
            .await
            .map_err(|e| db_status("audit", e))?;
        }
        Ok(Response::new(pb::GetAttachmentResponse {
            attachment: Some(meta),
            content,
        }))
    }

    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Self::viewer(&caller, SCOPE_READ)?;
        let r = req.into_inner();
        required_id(&r.thread_id, "thread_id")?;
        let mut tx = self.p.db.begin().await.map_err(|e| db_status("begin", e))?;
        let mut t = self.locked(&mut tx, &viewer, &r.thread_id).await?;
        if r.up_to_seq < 1 || r.up_to_seq > t.last_seq {
            return Err(Status::invalid_argument(format!(
                "up_to_seq must be between 1 and {} (the thread's last message)",
                t.last_seq
            )));
        }
        let practice = matches!(viewer, Viewer::Practice(_));
        let receipt = if practice {
            &mut t.practice_read_seq
        } else {
            &mut t.patient_read_seq
        };
        if r.up_to_seq > *receipt {
            *receipt = r.up_to_seq;
            t.updated_at = self.now();
            save(&mut tx, &t).await?;
            let body = serde_json::json!({
                "thread_id": t.thread_id,
                "by": if practice { "practice" } else { "patient" },
                "up_to_seq": r.up_to_seq,
            });
            self.event(&mut tx, TOPIC_READ, &t, &body).await?;
            self.audit(&mut tx, &caller, rpc::READ, &t).await?;
            tx.commit().await.map_err(|e| db_status("commit", e))?;
        }
        Ok(Response::new(pb::MarkReadResponse {
            thread: Some(t.to_pb(self.now(), practice)),
        }))
    }

    async fn withdraw_consultation(
        &self,
        req: Request<pb::WithdrawConsultationRequest>,
    ) -> Result<Response<pb::WithdrawConsultationResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Viewer::Patient(caller.patient()?.as_str().to_owned());
        let r = req.into_inner();
        required_id(&r.thread_id, "thread_id")?;
        let fp = serde_json::json!([r.thread_id]);
        let mut op = match self
            .begin(&caller, rpc::WITHDRAW, &r.idempotency_key, &fp)
            .await?
        {
            Begun::Replay(done) => {
                if let Some(first) = done.first()? {
                    return Ok(Response::new(first));
                }
                return Ok(Response::new(pb::WithdrawConsultationResponse {
                    thread: Some(self.thread_view(&done.thread_id, false).await?),
                }));
            }
            Begun::New(op) => op,
        };
        let mut t = self.locked(&mut op.tx, &viewer, &r.thread_id).await?;
        if !state::allowed(t.state, state::WITHDRAWN) {
            return Err(transition_refused(t.state, state::WITHDRAWN));
        }
        let now = self.now();
        t.state = state::WITHDRAWN;
        t.outcome = "withdrawn".into();
        t.closed_at = Some(now);
        t.updated_at = now;
        save(&mut op.tx, &t).await?;
        self.changed(&mut op.tx, topics::CONSULTATION_CLOSED, &t, None)
            .await?;
        let resp = pb::WithdrawConsultationResponse {
            thread: Some(t.to_pb(now, false)),
        };
        self.finish(op, &Done::thread(&t).answering(&resp)).await?;
        Ok(Response::new(resp))
    }

    type SubscribeStream = ChangeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        caller.patient()?;
        let cursor = req.into_inner().after_cursor;
        Ok(Response::new(self.change_stream(caller, None, cursor)))
    }

    async fn list_inbox(
        &self,
        req: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_READ)?.to_owned();
        let r = req.into_inner();
        let limit = page(r.page_size, 50, 200, "page_size")?;
        let off = offset(&r.page_token)?;
        if r.gp_id.len() > 64 {
            return Err(Status::invalid_argument("gp_id is too long"));
        }
        let now = self.now();
        let states = if r.include_done {
            "1,2,3,4,5,6,7"
        } else {
            "1,2,3"
        };
        let rows = sqlx::query(&format!(
            "SELECT {} FROM consultation_threads WHERE org_number = $1 AND ($2 = '' OR gp_id = $2) AND state IN ({states}) \
             ORDER BY CASE WHEN first_response_at IS NULL AND due_at < $3 AND state IN (1,2,3) THEN 0 ELSE 1 END, due_at, thread_id \
             LIMIT $4 OFFSET $5",
            store::THREAD_COLS
        ))
        .bind(&org)
        .bind(&r.gp_id)
        .bind(now)
        .bind(limit + 1)
        .bind(off)
        .fetch_all(self.p.db.read())
        .await
        .map_err(|e| db_status("inbox", e))?;
        let overdue: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM consultation_threads WHERE org_number = $1 AND ($2 = '' OR gp_id = $2) \
             AND state IN (1,2,3) AND first_response_at IS NULL AND due_at < $3",
        )
        .bind(&org)
        .bind(&r.gp_id)
        .bind(now)
        .fetch_one(self.p.db.read())
        .await
        .map_err(|e| db_status("inbox", e))?;
        let more = rows.len() as i64 > limit;
        let threads = rows
            .iter()
            .take(limit as usize)
            .map(ThreadRow::from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| db_status("inbox", e))?;
        let accesses: Vec<Access<'_>> = threads
            .iter()
            .map(|t| Access {
                action: rpc::INBOX,
                resource: format!("consultation:{}", t.thread_id),
                patient_nin: &t.patient_nin,
            })
            .collect();
        audit::record_reads(&self.p.db, &caller, &accesses, now)
            .await
            .map_err(|e| db_status("audit", e))?;
        Ok(Response::new(pb::ListInboxResponse {
            threads: threads.iter().map(|t| t.to_pb(now, true)).collect(),
            next_page_token: if more {
                (off + limit).to_string()
            } else {
                String::new()
            },
            overdue_count: overdue,
        }))
    }

    async fn claim_thread(
        &self,
        req: Request<pb::ClaimThreadRequest>,
    ) -> Result<Response<pb::ClaimThreadResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Viewer::Practice(caller.org_with_scope(SCOPE_WRITE)?.to_owned());
        let r = req.into_inner();
        required_id(&r.thread_id, "thread_id")?;
        let hpr = Self::acting_hpr(&caller, &r.clinician_hpr_number, "clinician_hpr_number")?;
        if hpr.is_empty() {
            return Err(Status::invalid_argument(
                "clinician_hpr_number is required for an EHR token",
            ));
        }
        let fp = serde_json::json!([r.thread_id, hpr]);
        let mut op = match self
            .begin(&caller, rpc::CLAIM, &r.idempotency_key, &fp)
            .await?
        {
            Begun::Replay(done) => {
                if let Some(first) = done.first()? {
                    return Ok(Response::new(first));
                }
                return Ok(Response::new(pb::ClaimThreadResponse {
                    thread: Some(self.thread_view(&done.thread_id, true).await?),
                }));
            }
            Begun::New(op) => op,
        };
        let mut t = self.locked(&mut op.tx, &viewer, &r.thread_id).await?;
        if !matches!(t.state, state::SUBMITTED | state::IN_REVIEW) {
            return Err(transition_refused(t.state, state::IN_REVIEW));
        }
        let now = self.now();
        t.state = state::IN_REVIEW;
        t.assigned_hpr = hpr;
        t.updated_at = now;
        save(&mut op.tx, &t).await?;
        self.audit(&mut op.tx, &caller, rpc::CLAIM, &t).await?;
        self.changed(&mut op.tx, TOPIC_STATE, &t, None).await?;
        let resp = pb::ClaimThreadResponse {
            thread: Some(t.to_pb(now, true)),
        };
        self.finish(op, &Done::thread(&t).answering(&resp)).await?;
        Ok(Response::new(resp))
    }

    async fn reply(
        &self,
        req: Request<pb::ReplyRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Viewer::Practice(caller.org_with_scope(SCOPE_WRITE)?.to_owned());
        let r = req.into_inner();
        required_id(&r.thread_id, "thread_id")?;
        let hpr = Self::acting_hpr(&caller, &r.clinician_hpr_number, "clinician_hpr_number")?;
        let body = checked_text(&r.body, "body", MAX_BODY_CHARS)?;
        let attachments = check_attachments(r.attachments)?;
        let fp = fingerprint(
            serde_json::json!([r.thread_id, body, r.ask_patient, hpr]),
            &attachments,
        );
        let mut op = match self
            .begin(&caller, rpc::REPLY, &r.idempotency_key, &fp)
            .await?
        {
            Begun::Replay(done) => {
                if let Some(first) = done.first()? {
                    return Ok(Response::new(first));
                }
                return Ok(Response::new(pb::SendMessageResponse {
                    message: Some(
                        self.message_view(done.message_id.as_deref().unwrap_or_default())
                            .await?,
                    ),
                    thread: Some(self.thread_view(&done.thread_id, true).await?),
                }));
            }
            Begun::New(op) => op,
        };
        let mut t = self.locked(&mut op.tx, &viewer, &r.thread_id).await?;
        let to = if r.ask_patient {
            state::AWAITING_PATIENT
        } else {
            state::ANSWERED
        };
        let m = self
            .practice_message(
                &mut op.tx,
                &caller,
                rpc::REPLY,
                &mut t,
                to,
                &hpr,
                &body,
                &attachments,
            )
            .await?;
        let resp = pb::SendMessageResponse {
            message: Some(m.to_pb()),
            thread: Some(t.to_pb(self.now(), true)),
        };
        self.finish(op, &Done::message(&t, &m).answering(&resp))
            .await?;
        Ok(Response::new(resp))
    }

    async fn convert_to_booking(
        &self,
        req: Request<pb::ConvertToBookingRequest>,
    ) -> Result<Response<pb::ConvertToBookingResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Viewer::Practice(caller.org_with_scope(SCOPE_WRITE)?.to_owned());
        let r = req.into_inner();
        required_id(&r.thread_id, "thread_id")?;
        let hpr = Self::acting_hpr(&caller, "", "clinician_hpr_number")?;
        let body = checked_text(&r.body, "body", MAX_BODY_CHARS)?;
        let count = page(r.offer_count, 3, 10, "offer_count")?;
        let fp = serde_json::json!([r.thread_id, body, count]);
        let offered = |done: &Done| -> Vec<pb::OfferedSlot> {
            done.offered
                .iter()
                .map(|(id, s, e)| pb::OfferedSlot {
                    slot_id: id.clone(),
                    start: Some(timestamp(from_ms(*s))),
                    end: Some(timestamp(from_ms(*e))),
                })
                .collect()
        };
        let mut op = match self
            .begin(&caller, rpc::CONVERT, &r.idempotency_key, &fp)
            .await?
        {
            Begun::Replay(done) => {
                if let Some(first) = done.first()? {
                    return Ok(Response::new(first));
                }
                return Ok(Response::new(pb::ConvertToBookingResponse {
                    thread: Some(self.thread_view(&done.thread_id, true).await?),
                    message: Some(
                        self.message_view(done.message_id.as_deref().unwrap_or_default())
                            .await?,
                    ),
                    offered_slots: offered(&done),
                    request_id: done.request_id,
                }));
            }
            Begun::New(op) => op,
        };
        let mut t = self.locked(&mut op.tx, &viewer, &r.thread_id).await?;
        if !state::allowed(t.state, state::CONVERTED) {
            return Err(transition_refused(t.state, state::CONVERTED));
        }
        let slots = directory::free_slots(&mut op.tx, &t.org_number, &t.gp_id, self.now(), count)
            .await
            .map_err(|e| db_status("free slots", e))?;
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
                &caller,
                rpc::CONVERT,
                &mut t,
                state::CONVERTED,
                &hpr,
                &text,
                &[],
            )
            .await?;
        // The conversion opens the patient's booking request (§ 22 counts it from now).
        let request_id = econsult_booking::service::record_conversion(
            &mut op.tx,
            &t.patient_nin,
            from_ms(self.now()),
        )
        .await
        .map_err(tonic::Status::from)?
        .unwrap_or_default();
        let done = Done {
            offered: slots
                .iter()
                .map(|s| (s.slot_id.clone(), s.start_ms, s.end_ms))
                .collect(),
            request_id,
            ..Done::message(&t, &m)
        };
        let resp = pb::ConvertToBookingResponse {
            thread: Some(t.to_pb(self.now(), true)),
            message: Some(m.to_pb()),
            offered_slots: offered(&done),
            request_id: done.request_id.clone(),
        };
        self.finish(op, &done.answering(&resp)).await?;
        Ok(Response::new(resp))
    }

    async fn close_consultation(
        &self,
        req: Request<pb::CloseConsultationRequest>,
    ) -> Result<Response<pb::CloseConsultationResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let viewer = Viewer::Practice(caller.org_with_scope(SCOPE_WRITE)?.to_owned());
        let r = req.into_inner();
        required_id(&r.thread_id, "thread_id")?;
        let outcome = r.outcome.trim().to_owned();
        if outcome.is_empty()
            || outcome.len() > 64
            || !outcome.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(Status::invalid_argument(
                "outcome must be 1-64 characters of a-z and _, e.g. answered",
            ));
        }
        if !r.tariff_code.is_empty() && tariff::rows_of(&r.tariff_code).next().is_none() {
            // Whether it is valid on the contact's date is checked with the thread below.
            return Err(Status::invalid_argument(
                tariff::TariffError::Unknown(r.tariff_code.clone()).to_string(),
            ));
        }
        let fp = serde_json::json!([r.thread_id, outcome, r.tariff_code]);
        let mut op = match self
            .begin(&caller, rpc::CLOSE, &r.idempotency_key, &fp)
            .await?
        {
            Begun::Replay(done) => {
                if let Some(first) = done.first()? {
                    return Ok(Response::new(first));
                }
                return Ok(Response::new(pb::CloseConsultationResponse {
                    thread: Some(self.thread_view(&done.thread_id, true).await?),
                }));
            }
            Begun::New(op) => op,
        };
        let mut t = self.locked(&mut op.tx, &viewer, &r.thread_id).await?;
        if !state::allowed(t.state, state::CLOSED) {
            return Err(transition_refused(t.state, state::CLOSED));
        }
        let now = self.now();
        // The contact's date is the Oslo day it was closed: the tariff of that day applies.
        let day = econsult_calendar::oslo_date(from_ms(now))
            .format("%Y-%m-%d")
            .to_string();
        t.tariff_code = if r.tariff_code.is_empty() {
            default_tariff(t.category).to_owned()
        } else {
            r.tariff_code
        };
        if !t.tariff_code.is_empty() {
            tariff_on(&t.tariff_code, &day)?;
        }
        t.state = state::CLOSED;
        t.outcome = outcome;
        t.closed_at = Some(now);
        t.updated_at = now;
        save(&mut op.tx, &t).await?;
        self.audit(&mut op.tx, &caller, rpc::CLOSE, &t).await?;
        let cal = Self::calendar(&mut op.tx, &t.org_number).await?;
        self.changed(&mut op.tx, topics::CONSULTATION_CLOSED, &t, Some(&cal))
            .await?;
        let resp = pb::CloseConsultationResponse {
            thread: Some(t.to_pb(now, true)),
        };
        self.finish(op, &Done::thread(&t).answering(&resp)).await?;
        Ok(Response::new(resp))
    }

    type WatchInboxStream = ChangeStream;

    async fn watch_inbox(
        &self,
        req: Request<pb::WatchInboxRequest>,
    ) -> Result<Response<Self::WatchInboxStream>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_READ)?.to_owned();
        let cursor = req.into_inner().after_cursor;
        Ok(Response::new(self.change_stream(caller, Some(org), cursor)))
    }

    async fn set_response_days(
        &self,
        req: Request<pb::SetResponseDaysRequest>,
    ) -> Result<Response<pb::SetResponseDaysResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?.to_owned();
        let days = req.into_inner().working_days;
        let days = match days {
            1..=20 => days,
            _ => {
                return Err(Status::invalid_argument(
                    "working_days must be between 1 and 20",
                ));
            }
        };
        let mut tx = self.p.db.begin().await.map_err(|e| db_status("begin", e))?;
        sqlx::query(
            "INSERT INTO consultation_settings (org_number, response_working_days, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (org_number) DO UPDATE SET response_working_days = excluded.response_working_days, updated_at = excluded.updated_at",
        )
        .bind(&org)
        .bind(i64::from(days))
        .bind(self.now())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_status("settings", e))?;
        tx.commit().await.map_err(|e| db_status("commit", e))?;
        Ok(Response::new(pb::SetResponseDaysResponse {
            working_days: days,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stored_before_responses_were_kept_still_replays_from_its_ids() {
        let old: Done =
            serde_json::from_str(r#"{"thread_id":"t-1","message_id":"m-1","offered":[]}"#)
                .expect("an old record parses");
        assert_eq!(old.message_id.as_deref(), Some("m-1"));
        let first: Option<pb::SendMessageResponse> = old.first().expect("no stored response");
        assert!(first.is_none(), "rebuilt from the ids, as before");
    }

    #[test]
    fn a_stored_response_replays_exactly() {
        let resp = pb::ClaimThreadResponse {
            thread: Some(pb::Thread {
                thread_id: "t-1".into(),
                subject: "Rash".into(),
                message_count: 3,
                ..Default::default()
            }),
        };
        let stored =
            serde_json::to_string(&Done::thread_id_only("t-1").answering(&resp)).expect("encode");
        let back: Done = serde_json::from_str(&stored).expect("decode");
        assert_eq!(
            back.first::<pb::ClaimThreadResponse>().expect("decode"),
            Some(resp)
        );
    }

    impl Done {
        fn thread_id_only(id: &str) -> Self {
            Self {
                thread_id: id.into(),
                message_id: None,
                offered: Vec::new(),
                request_id: String::new(),
                response: String::new(),
            }
        }
    }
}
