//! gRPC adapter of the access log: the caller check, proto conversion, and the one mapping of
//! [`AuditError`] to a gRPC status.

use super::{Access, AuditError, Entry, RecordError, list, record_reads};
use crate::auth::{Caller, Purpose, Role};
use crate::clock::{Clock, from_ms};
use crate::db::Db;
use crate::grpc::timestamp;
use econsult_proto::audit::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// gRPC `econsult.audit.v1.AuditService`.
pub struct AuditGrpc {
    db: Db,
    clock: Arc<dyn Clock>,
    proxies: crate::proxy::Resolver,
}

impl From<AuditError> for Status {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Invalid { .. } | AuditError::Unaccounted(_) => {
                Status::invalid_argument(e.to_string())
            }
            AuditError::Db(d) => crate::grpc::db_status("audit log", d),
        }
    }
}

impl From<RecordError> for Status {
    fn from(e: RecordError) -> Self {
        AuditError::from(e).into()
    }
}

fn purpose(p: Option<Purpose>) -> pb::Purpose {
    match p {
        None => pb::Purpose::Unspecified,
        Some(Purpose::OwnAccess) => pb::Purpose::OwnAccess,
        Some(Purpose::Treatment) => pb::Purpose::Treatment,
        Some(Purpose::Administration) => pb::Purpose::Administration,
        Some(Purpose::QualityAssurance) => pb::Purpose::QualityAssurance,
        Some(Purpose::Operations) => pb::Purpose::Operations,
    }
}

/// The access in words: `what`, with the patient's free text quoted when `with_subject` (the
/// patient's own log). There an action someone took for the patient starts with who it was:
/// "your parent Kari Nordmann booked an appointment on …" (their number when the token gave
/// no name).
fn description(e: &Entry, with_subject: bool) -> String {
    let what = if with_subject && !e.what_subject.is_empty() && !e.what.is_empty() {
        format!("{} '{}'", e.what, e.what_subject)
    } else {
        e.what.clone()
    };
    let by = match e.acted_as {
        Some(crate::auth::Relation::Parent) => "your parent",
        Some(crate::auth::Relation::Fullmakt) => "your fullmakt holder",
        None => return what,
    };
    if !with_subject || what.is_empty() {
        return what;
    }
    let who = if e.actor_name.is_empty() {
        &e.actor_nin
    } else {
        &e.actor_name
    };
    format!("{by} {who} {what}")
}

fn entry(e: Entry, with_subject: bool) -> pb::AccessLogEntry {
    let description = description(&e, with_subject);
    let role = e.role.map_or(pb::CallerRole::Unspecified, |r| match r {
        Role::Patient => pb::CallerRole::Patient,
        Role::Clinician => pb::CallerRole::Clinician,
        Role::Ehr => pb::CallerRole::Ehr,
        Role::Ops => pb::CallerRole::Ops,
    });
    pb::AccessLogEntry {
        id: e.id,
        at: Some(timestamp(from_ms(e.at_ms))),
        subject: e.subject,
        role: role as i32,
        org_number: e.org_number,
        action: e.action,
        resource: e.resource,
        patient_nin: e.patient_nin,
        trace_id: e.trace_id,
        request_id: e.request_id,
        actor_nin: e.actor_nin,
        acted_as: match e.acted_as {
            None => pb::ActedAs::Unspecified,
            Some(crate::auth::Relation::Parent) => pb::ActedAs::Parent,
            Some(crate::auth::Relation::Fullmakt) => pb::ActedAs::Fullmakt,
        } as i32,
        actor_name: e.actor_name,
        actor_hpr: e.actor_hpr,
        system: e.system_name,
        purpose: purpose(e.purpose) as i32,
        description,
    }
}

fn page(
    (entries, next_before_id): (Vec<Entry>, u64),
    with_subject: bool,
) -> pb::ListAccessLogResponse {
    pb::ListAccessLogResponse {
        entries: entries
            .into_iter()
            .map(|e| entry(e, with_subject))
            .collect(),
        next_before_id,
    }
}

impl AuditGrpc {
    /// The service over `db`.
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> Self {
        Self {
            proxies: crate::proxy::Resolver::new(db.clone(), clock.clone()),
            db,
            clock,
        }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::audit_service_server::AuditServiceServer<Self> {
        pb::audit_service_server::AuditServiceServer::new(self)
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
        crate::grpc::no_nuls(&[(&r.patient_nin, "patient_nin"), (&r.subject, "subject")])?;
        let found = list(
            &self.db,
            Some(r.patient_nin.as_str()).filter(|s| !s.is_empty()),
            Some(r.subject.as_str()).filter(|s| !s.is_empty()),
            r.before_id,
            r.limit,
            None,
        )
        .await?;
        // Ops reading the log is itself an access: to that patient's data (or to everyone's,
        // patient_nin "", when no patient is named).
        record_reads(
            &self.db,
            &caller,
            &[Access::new(
                "/econsult.audit.v1.AuditService/ListAccessLog",
                if r.subject.is_empty() {
                    "audit_log".into()
                } else {
                    format!("audit_log?subject={}", r.subject)
                },
                r.patient_nin.as_str(),
                "read your access log (operations)",
            )],
            self.clock.now_ms(),
        )
        .await?;
        Ok(Response::new(page(found, false)))
    }

    async fn list_my_access_log(
        &self,
        req: Request<pb::ListMyAccessLogRequest>,
    ) -> Result<Response<pb::ListAccessLogResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self
            .proxies
            .subject(&mut caller, crate::proxy::Area::AccessLog)
            .await?;
        let r = req.into_inner();
        // A parent of a child from 12 to 16 does not see the child's threads: nor their rows
        // (but for what the parent did).
        let limited = caller
            .proxy
            .acting
            .as_ref()
            .filter(|a| a.limited)
            .map(|a| a.actor.as_str().to_owned());
        let found = list(
            &self.db,
            Some(nin.as_str()),
            None,
            r.before_id,
            r.limit,
            limited.as_deref(),
        )
        .await?;
        // Reading one's own access log is itself an access to patient data.
        record_reads(
            &self.db,
            &caller,
            &[Access::new(
                "/econsult.audit.v1.AuditService/ListMyAccessLog",
                "audit_log",
                nin.as_str(),
                "read your access log",
            )],
            self.clock.now_ms(),
        )
        .await?;
        Ok(Response::new(page(found, true)))
    }
}
