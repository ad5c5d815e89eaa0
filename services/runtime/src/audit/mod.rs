//! The append-only access log of patient data, and its gRPC read API.
//!
//! `grpc` is its adapter (the one `From<AuditError> for Status`); the rest is on domain types.
//!
//! Writes go through [`record`], inside the transaction of the access where the access writes,
//! so an access and its log row commit together. A read that cannot be logged fails.

use crate::auth::{Caller, Purpose, Role};
use crate::db::{Db, Defer};
use crate::platform::{Mount, Platform};
use sqlx::Row as _;

mod chain;
mod grpc;
pub use chain::{
    ANCHOR_EVERY, ANCHOR_TARGET, Anchor, Broken, Verified, head, parse_anchors, seal, verify,
    verify_anchors,
};
pub use grpc::AuditGrpc;

/// One access to a patient's data.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    /// The RPC (gRPC path): the technical "what".
    pub action: &'a str,
    /// The resource, e.g. `appointment:<id>`.
    pub resource: String,
    /// Identity number of the patient.
    pub patient_nin: &'a str,
    /// The access in words, for the patient: English, a lower-case verb phrase that follows
    /// the actor's name ("read your e-consultation"). Never patient free text.
    pub what: String,
    /// Patient free text the access names (a thread's subject; "" for none): shown after
    /// `what` in the patient's own log only, never to operations.
    pub what_subject: &'a str,
    /// The purpose the access itself shows (a practitioner's own thread: treatment; a
    /// practice's command by its nature), or `None`: a practice caller must state one
    /// ([`crate::auth::PURPOSE_HEADER`]). A stated purpose wins over this one.
    pub purpose: Option<Purpose>,
}

impl<'a> Access<'a> {
    /// An access of `action` to `resource` of `patient_nin`, described as `what`, that
    /// implies no purpose and names no free text.
    pub fn new(
        action: &'a str,
        resource: impl Into<String>,
        patient_nin: &'a str,
        what: impl Into<String>,
    ) -> Self {
        Self {
            action,
            resource: resource.into(),
            patient_nin,
            what: what.into(),
            what_subject: "",
            purpose: None,
        }
    }

    /// This access, implying `purpose` when the caller states none.
    pub fn implies(mut self, purpose: Purpose) -> Self {
        self.purpose = Some(purpose);
        self
    }

    /// This access, implying `purpose` if `when`.
    pub fn implies_if(self, when: bool, purpose: Purpose) -> Self {
        if when { self.implies(purpose) } else { self }
    }

    /// This access, naming the patient's free text `subject` (shown to them only).
    pub fn about(mut self, subject: &'a str) -> Self {
        self.what_subject = subject;
        self
    }
}

/// `t` as the patient reads it in a description: Europe/Oslo time, `2026-04-02 09:00`.
pub fn local_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono_tz::Europe::Oslo)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

/// An [`Access`] as stored with an idempotent answer: logged again, for the caller that
/// replays the answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accessed {
    /// The RPC.
    pub action: String,
    /// What was accessed.
    pub resource: String,
    /// Whose data.
    pub patient_nin: String,
    /// The access in words ("" in answers stored before it was recorded).
    #[serde(default)]
    pub what: String,
    /// The free text it names.
    #[serde(default)]
    pub what_subject: String,
    /// The purpose it was logged with ([`Purpose::code`]; 0: none recorded).
    #[serde(default)]
    pub purpose: i64,
}

impl Accessed {
    /// The access of a replay of this one's answer (its resource marked as replayed), implying
    /// the first access's purpose.
    pub fn replayed(&self) -> Access<'_> {
        Access {
            action: &self.action,
            resource: format!("{} (replayed answer)", self.resource),
            patient_nin: &self.patient_nin,
            what: if self.what.is_empty() {
                String::new()
            } else {
                format!("{} (the answer sent again)", self.what)
            },
            what_subject: &self.what_subject,
            purpose: Purpose::from_code(self.purpose),
        }
    }
}

/// Why an access could not be logged as Normen asks, so did not happen: the caller left out
/// what the log needs (INVALID_ARGUMENT naming the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unaccounted {
    /// A practice read outside the practitioner's own thread without a stated purpose.
    #[error(
        "x-purpose is required: the purpose of this access to patient data (treatment, administration or quality-assurance)"
    )]
    Purpose,
    /// An EHR system call to patient data that names no acting person.
    #[error("x-acting-name is required: the person this EHR system call to patient data acts for")]
    ActingPerson,
}

/// Why an access-log row could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The call lacks what the row needs.
    #[error(transparent)]
    Unaccounted(#[from] Unaccounted),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Why `caller` accessed patient data: a patient's own access; operations' stated purpose or
/// operations; a practice's stated purpose, else the one `implied` by the access, else
/// [`Unaccounted::Purpose`]. An EHR system call must name its acting person first.
pub fn purpose(caller: &Caller, implied: Option<Purpose>) -> Result<Purpose, Unaccounted> {
    match caller.role {
        Role::Patient => Ok(Purpose::OwnAccess),
        Role::Ops => Ok(caller.purpose.unwrap_or(Purpose::Operations)),
        Role::Clinician | Role::Ehr => {
            if caller.role == Role::Ehr && caller.acting_person.is_none() {
                return Err(Unaccounted::ActingPerson);
            }
            caller.purpose.or(implied).ok_or(Unaccounted::Purpose)
        }
    }
}

/// The INSERT of one access-log row ([`Row::write`]); [`accessed`] reads a transaction's rows
/// back out of its deferred writes.
const INSERT: &str = "INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, trace_id, request_id, actor_nin, acted_as, actor_name, actor_hpr, system_name, purpose, what, what_subject) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

/// The accesses `tx` is to log at its commit (its deferred access-log rows).
pub fn accessed(tx: &crate::db::Tx) -> Vec<Accessed> {
    use crate::db::Value;
    let text = |v: &Value| match v {
        Value::Text(s) => s.clone(),
        _ => String::new(),
    };
    let int = |v: &Value| match v {
        Value::Int(i) => *i,
        _ => 0,
    };
    tx.deferred_values(INSERT)
        .map(|v| Accessed {
            action: text(&v[4]),
            resource: text(&v[5]),
            patient_nin: text(&v[6]),
            purpose: int(&v[14]),
            what: text(&v[15]),
            what_subject: text(&v[16]),
        })
        .collect()
}

/// Appends an access-log row inside `tx`, the access's transaction (deferred to its commit: one
/// statement with the call's other deferred writes on PostgreSQL). The row commits with the
/// access or not at all.
pub async fn record(
    tx: &mut impl Defer,
    caller: &Caller,
    access: &Access<'_>,
    now_ms: i64,
) -> Result<(), RecordError> {
    row(caller, access, now_ms)?.write(tx);
    Ok(())
}

/// An access-log row made now (with the current trace id) and written later: the one use is
/// FindSlots, whose rows are written with the next flush of its booking requests (a search is a
/// read of the patient's own list, made by the patient).
#[derive(Debug, Clone)]
pub struct Row(Vec<crate::db::Value>);

/// The row [`record`] would write, or why the caller must not make this access
/// ([`purpose`]). Who acted: a clinician's name and HPR number; for an EHR system, the system
/// (client name, else its id) and the person it names; for a system of econsult's own
/// ([`Caller::system`]), its name; a patient's actor is `actor_nin`, with their name when they
/// acted for someone else and their token names them.
pub fn row(caller: &Caller, access: &Access<'_>, now_ms: i64) -> Result<Row, Unaccounted> {
    let purpose = purpose(caller, access.purpose)?;
    let (actor_name, actor_hpr, system_name) = match caller.role {
        Role::Clinician => (
            caller.name.clone().unwrap_or_default(),
            caller.hpr_number.clone().unwrap_or_default(),
            String::new(),
        ),
        Role::Ehr => {
            let p = caller.acting_person.as_ref();
            (
                p.map(|p| p.name.clone()).unwrap_or_default(),
                p.and_then(|p| p.hpr_number.clone()).unwrap_or_default(),
                caller
                    .client_name
                    .clone()
                    .unwrap_or_else(|| caller.subject.clone()),
            )
        }
        // A system caller ([`Caller::system`]) names itself; an operator's token has no
        // client name.
        Role::Ops => (
            String::new(),
            String::new(),
            caller.client_name.clone().unwrap_or_default(),
        ),
        // A parent or fullmakt holder acting for the patient: their name when the token gives
        // one (their number is `actor_nin`).
        Role::Patient => (caller.actor_name().to_owned(), String::new(), String::new()),
    };
    let (actor_nin, acted_as) = caller.actor();
    Ok(Row(vec![
        now_ms.into(),
        caller.subject.clone().into(),
        caller.role.code().into(),
        caller.org_number.as_deref().unwrap_or("").into(),
        access.action.into(),
        access.resource.clone().into(),
        access.patient_nin.into(),
        crate::telemetry::current_trace_id().into(),
        caller.request_id.clone().into(),
        actor_nin.into(),
        acted_as.into(),
        actor_name.into(),
        actor_hpr.into(),
        system_name.into(),
        purpose.code().into(),
        access.what.clone().into(),
        access.what_subject.into(),
    ]))
}

impl Row {
    /// Appends the row inside `tx` (deferred to its commit).
    pub fn write(self, tx: &mut impl Defer) {
        tx.defer(INSERT, self.0);
    }
}

/// Appends several rows in one transaction of their own (for reads): on PostgreSQL one
/// autocommit statement ([`Db::writes`]).
pub async fn record_reads(
    db: &Db,
    caller: &Caller,
    accesses: &[Access<'_>],
    now_ms: i64,
) -> Result<(), RecordError> {
    if accesses.is_empty() {
        return Ok(());
    }
    let rows = accesses
        .iter()
        .map(|a| row(caller, a, now_ms))
        .collect::<Result<Vec<_>, _>>()?;
    let mut w = db.writes();
    for r in rows {
        r.write(&mut w);
    }
    Ok(w.commit().await?)
}

/// Why reading the access log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Bad input; names the field.
    #[error("{field} {message}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        message: &'static str,
    },
    /// The call lacks what its own access-log row needs.
    #[error(transparent)]
    Unaccounted(#[from] Unaccounted),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<RecordError> for AuditError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Unaccounted(u) => AuditError::Unaccounted(u),
            RecordError::Db(d) => AuditError::Db(d),
        }
    }
}

/// One row of the access log.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Row id (descending order, the page cursor).
    pub id: u64,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// The caller's token subject.
    pub subject: String,
    /// The caller's role (`None`: a code this version does not know).
    pub role: Option<Role>,
    /// The caller's organisation ("" for none).
    pub org_number: String,
    /// The RPC.
    pub action: String,
    /// What was accessed.
    pub resource: String,
    /// Whose data.
    pub patient_nin: String,
    /// The trace of the call (from the client's `traceparent`: not to be trusted).
    pub trace_id: String,
    /// The server's id of the call.
    pub request_id: String,
    /// The acting person's identity number when they acted for the patient ("" otherwise).
    pub actor_nin: String,
    /// How the actor is related to the patient (`None`: the patient acted, or the caller is
    /// no patient).
    pub acted_as: Option<crate::auth::Relation>,
    /// The person who acted, by name ("" when not known: a patient, operations, old rows).
    pub actor_name: String,
    /// Their HPR number ("" for none).
    pub actor_hpr: String,
    /// For a system call: the system's name (else its client id).
    pub system_name: String,
    /// Why (`None`: a row written before purposes were recorded).
    pub purpose: Option<Purpose>,
    /// The access in words ("" for old rows).
    pub what: String,
    /// The patient's free text it names ("" for none).
    pub what_subject: String,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("action", &self.action)
            .field("resource", &self.resource)
            .field("patient_nin", &"***")
            .finish_non_exhaustive()
    }
}

/// A page of the access log, newest first: rows before `before_id` (0 = from the newest) of
/// `patient` and/or `subject` (`None` = any), at most `limit` (0 = 100; 1 to 500). The second
/// value is the cursor of the next page (0 when this is the last).
/// With `limited_parent` (a parent of a child from 12 to 16, by number), rows about
/// e-consultations (`resource` `consultation…`) are left out but for the parent's own: the
/// parent may read the child's log, but not learn of the child's own or confidential threads
/// from it (their subjects, who read them).
pub async fn list(
    db: &Db,
    patient: Option<&str>,
    subject: Option<&str>,
    before_id: u64,
    limit: u32,
    limited_parent: Option<&str>,
) -> Result<(Vec<Entry>, u64), AuditError> {
    let limit = match limit {
        0 => 100,
        1..=500 => i64::from(limit),
        _ => {
            return Err(AuditError::Invalid {
                field: "limit",
                message: "must be between 1 and 500",
            });
        }
    };
    let before = if before_id == 0 {
        i64::MAX
    } else {
        i64::try_from(before_id).unwrap_or(i64::MAX)
    };
    let rows = sqlx::query(
        "SELECT id, at, subject, role, org_number, action, resource, patient_nin, trace_id, request_id, actor_nin, acted_as, \
         actor_name, actor_hpr, system_name, purpose, what, what_subject \
         FROM audit_log WHERE id < $1 AND ($2 = '' OR patient_nin = $2) AND ($3 = '' OR subject = $3) \
         AND ($5 = '' OR resource NOT LIKE 'consultation%' OR actor_nin = $5) \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(before)
    .bind(patient.unwrap_or(""))
    .bind(subject.unwrap_or(""))
    .bind(limit)
    .bind(limited_parent.unwrap_or(""))
    .fetch_all(db.read())
    .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for r in rows {
        entries.push(Entry {
            id: r.try_get::<i64, _>("id")? as u64,
            at_ms: r.try_get("at")?,
            subject: r.try_get("subject")?,
            role: Role::from_code(r.try_get("role")?),
            org_number: r.try_get("org_number")?,
            action: r.try_get("action")?,
            resource: r.try_get("resource")?,
            patient_nin: r.try_get("patient_nin")?,
            trace_id: r.try_get("trace_id")?,
            request_id: r.try_get("request_id")?,
            actor_nin: r.try_get("actor_nin")?,
            acted_as: crate::auth::Relation::from_code(r.try_get("acted_as")?),
            actor_name: r.try_get("actor_name")?,
            actor_hpr: r.try_get("actor_hpr")?,
            system_name: r.try_get("system_name")?,
            purpose: Purpose::from_code(r.try_get("purpose")?),
            what: r.try_get("what")?,
            what_subject: r.try_get("what_subject")?,
        });
    }
    let next_before_id = if entries.len() as i64 == limit {
        entries.last().map_or(0, |e| e.id)
    } else {
        0
    };
    Ok((entries, next_before_id))
}

/// Mounts the access-log service (`econsult.audit.v1.AuditService`) and the sealer of the hash
/// chain ([`seal`] every second on every replica; one at a time).
pub fn mount(p: &Platform, m: &mut Mount<'_>) {
    m.serve(AuditGrpc::new(p.db.clone(), p.clock.clone()).into_server());
    m.spawn(chain::sealer(p.db.clone(), p.shutdown.clone()));
    m.serve(
        crate::proxy::ProxyGrpc::new(
            crate::proxy::Fullmakter::new(p.db.clone(), p.clock.clone(), p.pseudonyms.clone()),
            p.clock.clone(),
        )
        .into_server(),
    );
}
