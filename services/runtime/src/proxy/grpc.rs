//! gRPC adapter of `econsult.proxy.v1.ProxyService`: proto ⇄ domain and the one mapping of
//! [`ProxyError`] to a gRPC status.

use super::{Fullmakt, Fullmakter, ProxyError, Scope, State, oslo_today};
use crate::auth::{Caller, Relation};
use crate::clock::{Clock, from_ms};
use crate::grpc::{parse_date, timestamp};
use crate::nin::NationalId;
use econsult_proto::proxy::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

impl From<ProxyError> for Status {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Denied(rule) => Status::permission_denied(rule),
            ProxyError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            ProxyError::NotFound => Status::not_found(e.to_string()),
            ProxyError::KeyReused => Status::already_exists(e.to_string()),
            ProxyError::Db(d) => crate::grpc::db_status("fullmakt", d),
            ProxyError::Unaccounted(u) => Status::invalid_argument(u.to_string()),
            ProxyError::Other(o) => crate::grpc::anyhow_status("fullmakt", o),
        }
    }
}

/// gRPC `econsult.proxy.v1.ProxyService`.
pub struct ProxyGrpc {
    svc: Fullmakter,
    clock: Arc<dyn Clock>,
}

impl ProxyGrpc {
    /// The service over `svc`; `clock` tells a fullmakt's state.
    pub fn new(svc: Fullmakter, clock: Arc<dyn Clock>) -> Self {
        Self { svc, clock }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::proxy_service_server::ProxyServiceServer<Self> {
        pb::proxy_service_server::ProxyServiceServer::new(self)
    }

    fn fullmakt(&self, f: &Fullmakt) -> pb::Fullmakt {
        let state = match f.state(oslo_today(self.clock.as_ref())) {
            State::Active => pb::FullmaktState::Active,
            State::Expired => pb::FullmaktState::Expired,
            State::Revoked => pb::FullmaktState::Revoked,
        };
        pb::Fullmakt {
            id: f.id.clone(),
            giver_nin: f.giver.clone(),
            holder_nin: f.holder.clone(),
            scope: scope_to(f.scope) as i32,
            end_date: f.end_date.to_string(),
            created_at: Some(timestamp(from_ms(f.created_at_ms))),
            revoked_at: f.revoked_at_ms.map(|ms| timestamp(from_ms(ms))),
            state: state as i32,
        }
    }
}

fn scope_to(s: Scope) -> pb::FullmaktScope {
    match s {
        Scope::Booking => pb::FullmaktScope::Booking,
        Scope::Consultation => pb::FullmaktScope::Consultation,
        Scope::Both => pb::FullmaktScope::Both,
    }
}

fn scope_from(v: i32) -> Result<Scope, Status> {
    match pb::FullmaktScope::try_from(v) {
        Ok(pb::FullmaktScope::Booking) => Ok(Scope::Booking),
        Ok(pb::FullmaktScope::Consultation) => Ok(Scope::Consultation),
        Ok(pb::FullmaktScope::Both) => Ok(Scope::Both),
        _ => Err(Status::invalid_argument(
            "scope must be BOOKING, CONSULTATION or BOTH",
        )),
    }
}

#[tonic::async_trait]
impl pb::proxy_service_server::ProxyService for ProxyGrpc {
    async fn grant_fullmakt(
        &self,
        req: Request<pb::GrantFullmaktRequest>,
    ) -> Result<Response<pb::Fullmakt>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        caller.patient()?;
        let r = req.into_inner();
        let holder = NationalId::parse(&r.holder_nin)
            .map_err(|e| Status::invalid_argument(format!("holder_nin {e}")))?;
        caller.accept_nin(&holder, "holder_nin")?;
        let scope = scope_from(r.scope)?;
        let end_date = parse_date(&r.end_date, "end_date")?;
        let f = self
            .svc
            .grant(&caller, holder, scope, end_date, &r.idempotency_key)
            .await?;
        Ok(Response::new(self.fullmakt(&f)))
    }

    async fn list_given_fullmakter(
        &self,
        req: Request<pb::ListGivenFullmakterRequest>,
    ) -> Result<Response<pb::ListFullmakterResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        caller.patient()?;
        let all = self.svc.given(&caller).await?;
        Ok(Response::new(pb::ListFullmakterResponse {
            fullmakter: all.iter().map(|f| self.fullmakt(f)).collect(),
        }))
    }

    async fn revoke_fullmakt(
        &self,
        req: Request<pb::RevokeFullmaktRequest>,
    ) -> Result<Response<pb::Fullmakt>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        caller.patient()?;
        let r = req.into_inner();
        if uuid::Uuid::parse_str(&r.fullmakt_id).is_err() {
            return Err(Status::invalid_argument("fullmakt_id must be a UUID"));
        }
        let f = self
            .svc
            .revoke(&caller, &r.fullmakt_id, &r.idempotency_key)
            .await?;
        Ok(Response::new(self.fullmakt(&f)))
    }

    async fn list_represented(
        &self,
        req: Request<pb::ListRepresentedRequest>,
    ) -> Result<Response<pb::ListRepresentedResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        caller.patient()?;
        let all = self.svc.represented(&caller).await?;
        Ok(Response::new(pb::ListRepresentedResponse {
            represented: all
                .iter()
                .map(|r| pb::Represented {
                    nin: r.nin.as_str().to_owned(),
                    relation: match r.relation {
                        Relation::Parent => pb::Relation::Parent,
                        Relation::Fullmakt => pb::Relation::Fullmakt,
                    } as i32,
                    limited: r.limited,
                    fullmakt_id: r
                        .fullmakt
                        .as_ref()
                        .map(|f| f.id.clone())
                        .unwrap_or_default(),
                    scope: r.fullmakt.as_ref().map_or(0, |f| scope_to(f.scope) as i32),
                    end_date: r
                        .fullmakt
                        .as_ref()
                        .map(|f| f.end_date.to_string())
                        .unwrap_or_default(),
                    name: r.name.clone().unwrap_or_default(),
                })
                .collect(),
        }))
    }
}
