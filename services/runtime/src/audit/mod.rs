//! The append-only access log of patient data, and its gRPC read API.
//!
//! `grpc` is its adapter (the one `From<AuditError> for Status`); the rest is on domain types.
//!
//! Writes go through [`record`], inside the transaction of the access where the access writes,
//! so an access and its log row commit together. A read that cannot be logged fails.

use crate::auth::{Caller, Role};
use crate::db::{Db, Defer};
use crate::platform::{Mount, Platform};
use sqlx::Row as _;

mod chain;
mod grpc;
pub use chain::{Broken, Verified, seal, verify};
pub use grpc::AuditGrpc;

/// One access to a patient's data.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    /// The RPC (gRPC path).
    pub action: &'a str,
    /// The resource, e.g. `appointment:<id>`.
    pub resource: String,
    /// Identity number of the patient.
    pub patient_nin: &'a str,
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
}

impl Accessed {
    /// The access of a replay of this one's answer (its resource marked as replayed).
    pub fn replayed(&self) -> Access<'_> {
        Access {
            action: &self.action,
            resource: format!("{} (replayed answer)", self.resource),
            patient_nin: &self.patient_nin,
        }
    }
}

/// The INSERT of one access-log row ([`Row::write`]); [`accessed`] reads a transaction's rows
/// back out of its deferred writes.
const INSERT: &str = "INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, trace_id, request_id, actor_nin, acted_as) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// The accesses `tx` is to log at its commit (its deferred access-log rows).
pub fn accessed(tx: &crate::db::Tx) -> Vec<Accessed> {
    use crate::db::Value;
    let text = |v: &Value| match v {
        Value::Text(s) => s.clone(),
        _ => String::new(),
    };
    tx.deferred_values(INSERT)
        .map(|v| Accessed {
            action: text(&v[4]),
            resource: text(&v[5]),
            patient_nin: text(&v[6]),
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
) -> Result<(), sqlx::Error> {
    row(caller, access, now_ms).write(tx);
    Ok(())
}

/// An access-log row made now (with the current trace id) and written later: the one use is
/// FindSlots, whose rows are written with the next flush of its booking requests (a search is a
/// read of the patient's own list, made by the patient).
#[derive(Debug, Clone)]
pub struct Row(Vec<crate::db::Value>);

/// The row [`record`] would write.
pub fn row(caller: &Caller, access: &Access<'_>, now_ms: i64) -> Row {
    Row(vec![
        now_ms.into(),
        caller.subject.clone().into(),
        caller.role.code().into(),
        caller.org_number.as_deref().unwrap_or("").into(),
        access.action.into(),
        access.resource.clone().into(),
        access.patient_nin.into(),
        crate::telemetry::current_trace_id().into(),
        caller.request_id.clone().into(),
        caller
            .proxy
            .acting
            .as_ref()
            .map_or("", |a| a.actor.as_str())
            .into(),
        caller
            .proxy
            .acting
            .as_ref()
            .map_or(0, |a| a.relation.code())
            .into(),
    ])
}

impl Row {
    /// Appends the row inside `tx` (deferred to its commit).
    pub fn write(self, tx: &mut impl Defer) {
        tx.defer(INSERT, self.0);
    }
}

/// Appends several rows in one transaction of their own (for reads).
pub async fn record_reads(
    db: &Db,
    caller: &Caller,
    accesses: &[Access<'_>],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    if accesses.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for a in accesses {
        record(&mut tx, caller, a, now_ms).await?;
    }
    tx.commit().await
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
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
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
pub async fn list(
    db: &Db,
    patient: Option<&str>,
    subject: Option<&str>,
    before_id: u64,
    limit: u32,
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
        "SELECT id, at, subject, role, org_number, action, resource, patient_nin, trace_id, request_id, actor_nin, acted_as \
         FROM audit_log WHERE id < $1 AND ($2 = '' OR patient_nin = $2) AND ($3 = '' OR subject = $3) \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(before)
    .bind(patient.unwrap_or(""))
    .bind(subject.unwrap_or(""))
    .bind(limit)
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
            crate::proxy::Fullmakter::new(p.db.clone(), p.clock.clone()),
            p.clock.clone(),
        )
        .into_server(),
    );
}
