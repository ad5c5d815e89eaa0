//! The append-only access log of patient data, and its gRPC read API.
//!
//! Writes go through [`record`], inside the transaction of the access where the access writes,
//! so an access and its log row commit together. A read that cannot be logged fails.

use crate::auth::{Caller, Role};
use crate::clock::{Clock, from_ms};
use crate::db::{Db, Defer};
use crate::grpc::{internal, timestamp};
use econsult_proto::audit::v1 as pb;
use sqlx::Row as _;
use std::sync::Arc;
use tonic::{Request, Response, Status};

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
    ])
}

impl Row {
    /// Appends the row inside `tx` (deferred to its commit).
    pub fn write(self, tx: &mut impl Defer) {
        tx.defer(
            "INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, trace_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            self.0,
        );
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

/// gRPC `econsult.audit.v1.AuditService`.
pub struct AuditGrpc {
    db: Db,
    clock: Arc<dyn Clock>,
}

impl AuditGrpc {
    /// The service over `db`.
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }

    async fn list(
        &self,
        patient: Option<&str>,
        subject: Option<&str>,
        before_id: u64,
        limit: u32,
    ) -> Result<pb::ListAccessLogResponse, Status> {
        let limit = match limit {
            0 => 100,
            1..=500 => i64::from(limit),
            _ => return Err(Status::invalid_argument("limit must be between 1 and 500")),
        };
        let before = if before_id == 0 {
            i64::MAX
        } else {
            i64::try_from(before_id).unwrap_or(i64::MAX)
        };
        let rows = sqlx::query(
            "SELECT id, at, subject, role, org_number, action, resource, patient_nin, trace_id \
             FROM audit_log WHERE id < $1 AND ($2 = '' OR patient_nin = $2) AND ($3 = '' OR subject = $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(before)
        .bind(patient.unwrap_or(""))
        .bind(subject.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.db.read())
        .await
        .map_err(|e| crate::grpc::db_status("list audit log", e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in rows {
            let role = Role::from_code(r.try_get("role").map_err(|e| internal("audit role", e))?)
                .map_or(pb::CallerRole::Unspecified, |r| match r {
                    Role::Patient => pb::CallerRole::Patient,
                    Role::Clinician => pb::CallerRole::Clinician,
                    Role::Ehr => pb::CallerRole::Ehr,
                    Role::Ops => pb::CallerRole::Ops,
                });
            let get = |c: &str| {
                r.try_get::<String, _>(c)
                    .map_err(|e| internal("audit row", e))
            };
            let id: i64 = r.try_get("id").map_err(|e| internal("audit id", e))?;
            let at: i64 = r.try_get("at").map_err(|e| internal("audit at", e))?;
            entries.push(pb::AccessLogEntry {
                id: id as u64,
                at: Some(timestamp(from_ms(at))),
                subject: get("subject")?,
                role: role as i32,
                org_number: get("org_number")?,
                action: get("action")?,
                resource: get("resource")?,
                patient_nin: get("patient_nin")?,
                trace_id: get("trace_id")?,
            });
        }
        let next_before_id = if entries.len() as i64 == limit {
            entries.last().map_or(0, |e| e.id)
        } else {
            0
        };
        Ok(pb::ListAccessLogResponse {
            entries,
            next_before_id,
        })
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditGrpc {
    async fn list_access_log(
        &self,
        req: Request<pb::ListAccessLogRequest>,
    ) -> Result<Response<pb::ListAccessLogResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        caller.ops()?;
        let r = req.into_inner();
        let resp = self
            .list(
                Some(r.patient_nin.as_str()).filter(|s| !s.is_empty()),
                Some(r.subject.as_str()).filter(|s| !s.is_empty()),
                r.before_id,
                r.limit,
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn list_my_access_log(
        &self,
        req: Request<pb::ListMyAccessLogRequest>,
    ) -> Result<Response<pb::ListAccessLogResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.clone();
        let r = req.into_inner();
        let resp = self
            .list(Some(nin.as_str()), None, r.before_id, r.limit)
            .await?;
        // Reading one's own access log is itself an access to patient data.
        record_reads(
            &self.db,
            &caller,
            &[Access {
                action: "/econsult.audit.v1.AuditService/ListMyAccessLog",
                resource: "audit_log".into(),
                patient_nin: nin.as_str(),
            }],
            self.clock.now_ms(),
        )
        .await
        .map_err(|e| crate::grpc::db_status("record audit", e))?;
        Ok(Response::new(resp))
    }
}
