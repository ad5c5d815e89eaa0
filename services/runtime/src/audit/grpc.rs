//! gRPC adapter of the access log: the caller check, proto conversion, and the one mapping of
//! [`AuditError`] to a gRPC status.

use super::{Access, AuditError, Entry, list, record_reads};
use crate::auth::{Caller, Role};
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
            AuditError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            AuditError::Db(d) => crate::grpc::db_status("audit log", d),
        }
    }
}

fn entry(e: Entry) -> pb::AccessLogEntry {
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
    }
}

fn page((entries, next_before_id): (Vec<Entry>, u64)) -> pb::ListAccessLogResponse {
    pb::ListAccessLogResponse {
        entries: entries.into_iter().map(entry).collect(),
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
        )
        .await?;
        // Ops reading the log is itself an access: to that patient's data (or to everyone's,
        // patient_nin "", when no patient is named).
        record_reads(
            &self.db,
            &caller,
            &[Access {
                action: "/econsult.audit.v1.AuditService/ListAccessLog",
                resource: if r.subject.is_empty() {
                    "audit_log".into()
                } else {
                    format!("audit_log?subject={}", r.subject)
                },
                patient_nin: r.patient_nin.as_str(),
            }],
            self.clock.now_ms(),
        )
        .await
        .map_err(AuditError::from)?;
        Ok(Response::new(page(found)))
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
        let found = list(&self.db, Some(nin.as_str()), None, r.before_id, r.limit).await?;
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
        .map_err(AuditError::from)?;
        Ok(Response::new(page(found)))
    }
}
