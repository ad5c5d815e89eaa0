//! gRPC adapter: `econsult.signalling.v1.SignallingService`. Authorisation on every call (the
//! caller comes from the bearer token, checked by the interceptor), proto ⇄ domain conversion,
//! and the one mapping of [`SignallingError`] to a status. The `Signal` stream's conversions
//! are in [`stream`], the stored form of queued events in [`wire`].

mod stream;
pub(crate) mod wire;

use crate::domain::{EndReason, IceServer, Joined, LeaveReason, PatientSide, Side, VideoSession};
use crate::error::SignallingError;
use crate::service::Signalling;
use econsult_proto::signalling::v1 as pb;
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::clock::from_ms;
use econsult_runtime::grpc::{anyhow_status, db_status, internal, no_nul, no_nuls, timestamp};
use econsult_runtime::proxy::{Area, Resolver};
use tonic::{Request, Response, Status, Streaming};

/// The tonic service.
pub struct SignallingGrpc {
    svc: Signalling,
    proxies: Resolver,
}

impl SignallingGrpc {
    /// Wraps the logic.
    pub fn new(svc: Signalling, proxies: Resolver) -> Self {
        Self { svc, proxies }
    }

    /// The role gate, then for a patient the person the call acts for (`x-on-behalf-of`; video
    /// sessions are appointments: the booking rules): from here on `caller.nin` is that
    /// patient, and `caller.proxy.acting` says who acts for them.
    async fn participant(&self, caller: &mut Caller) -> Result<(), Status> {
        participant(caller)?;
        if caller.role == Role::Patient {
            let subject = self.proxies.subject(caller, Area::Booking).await?;
            caller.nin = Some(subject);
        }
        Ok(())
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::signalling_service_server::SignallingServiceServer<Self> {
        pb::signalling_service_server::SignallingServiceServer::new(self)
    }
}

/// Who is on the patient side (unset when unknown: not the patient side, or not joined).
pub(crate) fn patient_relation_pb(p: Option<&PatientSide>) -> pb::PatientRelation {
    use econsult_runtime::auth::Relation;
    match p.map(|p| p.relation) {
        None => pb::PatientRelation::Unspecified,
        Some(None) => pb::PatientRelation::Self_,
        Some(Some(Relation::Parent)) => pb::PatientRelation::Parent,
        Some(Some(Relation::Fullmakt)) => pb::PatientRelation::Fullmakt,
    }
}

impl From<SignallingError> for Status {
    fn from(e: SignallingError) -> Self {
        match e {
            SignallingError::Invalid(m) => Status::invalid_argument(m),
            SignallingError::NotFound(m) => Status::not_found(m),
            SignallingError::PermissionDenied(m) => Status::permission_denied(m),
            SignallingError::FailedPrecondition(m) => Status::failed_precondition(m),
            SignallingError::Aborted(m) => Status::aborted(m),
            SignallingError::ResourceExhausted(m) => Status::resource_exhausted(m),
            SignallingError::Internal { context, message } => internal(context, message),
            SignallingError::Db(d) => db_status("signalling", d),
            SignallingError::Unaccounted(u) => Status::invalid_argument(u.to_string()),
            SignallingError::Other(o) => anyhow_status("signalling", o),
        }
    }
}

/// Role gate before anything in the request is looked at: the two sides of a video
/// consultation are the patient and clinicians; EHR systems and operations take no part.
fn participant(caller: &Caller) -> Result<(), Status> {
    match caller.role {
        Role::Patient | Role::Clinician => Ok(()),
        _ => Err(Status::permission_denied(
            "video sessions are for the booked patient and the practice's clinicians",
        )),
    }
}

/// Role gate of the practice-side calls (Admit, EndSession).
fn clinician(caller: &Caller) -> Result<(), Status> {
    match caller.role {
        Role::Clinician => Ok(()),
        _ => Err(Status::permission_denied(
            "only a clinician of the practice may do this",
        )),
    }
}

fn ts(ms: i64) -> prost_types::Timestamp {
    timestamp(from_ms(ms))
}

pub(crate) fn side_pb(side: Side) -> pb::Side {
    match side {
        Side::Patient => pb::Side::Patient,
        Side::Practice => pb::Side::Practice,
    }
}

pub(crate) fn leave_reason_pb(reason: LeaveReason) -> pb::LeaveReason {
    match reason {
        LeaveReason::Disconnected => pb::LeaveReason::Disconnected,
        LeaveReason::HangUp => pb::LeaveReason::HangUp,
        LeaveReason::Gone => pb::LeaveReason::Gone,
    }
}

pub(crate) fn end_reason_pb(reason: Option<EndReason>) -> pb::EndReason {
    match reason {
        None => pb::EndReason::Unspecified,
        Some(EndReason::EndedByPractice) => pb::EndReason::EndedByPractice,
        Some(EndReason::Timeout) => pb::EndReason::Timeout,
        Some(EndReason::FailedToConnect) => pb::EndReason::FailedToConnect,
    }
}

impl From<IceServer> for pb::IceServer {
    fn from(s: IceServer) -> Self {
        pb::IceServer {
            urls: s.urls,
            username: s.username,
            credential: s.credential,
        }
    }
}

impl From<Joined> for pb::JoinSessionResponse {
    fn from(j: Joined) -> Self {
        pb::JoinSessionResponse {
            session_id: j.session_id,
            side: side_pb(j.side) as i32,
            waiting: j.waiting,
            resume_after_seq: j.resume_after_seq,
            window_start: Some(ts(j.window_start_ms)),
            window_end: Some(ts(j.window_end_ms)),
            ice_servers: j.ice_servers.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<VideoSession> for pb::VideoSession {
    fn from(s: VideoSession) -> Self {
        pb::VideoSession {
            session_id: s.session_id,
            appointment_id: s.appointment_id,
            started_at: Some(ts(s.started_at_ms)),
            admitted_at: s.admitted_at_ms.map(ts),
            connected_at: s.connected_at_ms.map(ts),
            connected_ms: s.connected_ms,
            ended_at: s.ended_at_ms.map(ts),
            end_reason: end_reason_pb(s.end_reason) as i32,
            held: s.held,
            patient_online: s.patient_online,
            practice_online: s.practice_online,
            patient_relation: patient_relation_pb(s.patient_side.as_ref()) as i32,
            patient_represented_by_name: s.patient_side.map(|p| p.name).unwrap_or_default(),
        }
    }
}

#[tonic::async_trait]
impl pb::signalling_service_server::SignallingService for SignallingGrpc {
    async fn join_session(
        &self,
        req: Request<pb::JoinSessionRequest>,
    ) -> Result<Response<pb::JoinSessionResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        self.participant(&mut caller).await?;
        let r = req.into_inner();
        no_nul(&r.appointment_id, "appointment_id")?;
        let joined = self.svc.join(&caller, &r.appointment_id).await?;
        Ok(Response::new(joined.into()))
    }

    type SignalStream = stream::EventStream;

    async fn signal(
        &self,
        req: Request<Streaming<pb::ClientSignal>>,
    ) -> Result<Response<Self::SignalStream>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        self.participant(&mut caller).await?;
        stream::open(&self.svc, caller, req.into_inner()).await
    }

    type SignalEventsStream = stream::EventStream;

    async fn signal_events(
        &self,
        req: Request<pb::SignalEventsRequest>,
    ) -> Result<Response<Self::SignalEventsStream>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        self.participant(&mut caller).await?;
        stream::open_events(&self.svc, caller, req.into_inner()).await
    }

    async fn send_signal(
        &self,
        req: Request<pb::SendSignalRequest>,
    ) -> Result<Response<pb::SendSignalResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        self.participant(&mut caller).await?;
        stream::send(&self.svc, caller, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn admit(
        &self,
        req: Request<pb::AdmitRequest>,
    ) -> Result<Response<pb::AdmitResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        clinician(&caller)?;
        let r = req.into_inner();
        no_nuls(&[
            (&r.appointment_id, "appointment_id"),
            (&r.clinician_hpr_number, "clinician_hpr_number"),
        ])?;
        let admitted_at = self
            .svc
            .admit(&caller, &r.appointment_id, r.clinician_hpr_number.trim())
            .await?;
        Ok(Response::new(pb::AdmitResponse {
            admitted_at: Some(ts(admitted_at)),
        }))
    }

    async fn get_ice_servers(
        &self,
        req: Request<pb::GetIceServersRequest>,
    ) -> Result<Response<pb::GetIceServersResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        self.participant(&mut caller).await?;
        let r = req.into_inner();
        no_nul(&r.appointment_id, "appointment_id")?;
        let ice = self.svc.get_ice_servers(&caller, &r.appointment_id).await?;
        Ok(Response::new(pb::GetIceServersResponse {
            ice_servers: ice.servers.into_iter().map(Into::into).collect(),
            expires_at: Some(prost_types::Timestamp {
                seconds: ice.expires_at,
                nanos: 0,
            }),
        }))
    }

    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        clinician(&caller)?;
        let r = req.into_inner();
        no_nul(&r.appointment_id, "appointment_id")?;
        let session = self
            .svc
            .end_by_practice(&caller, &r.appointment_id, r.held)
            .await?;
        Ok(Response::new(pb::EndSessionResponse {
            session: Some(session.into()),
        }))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::VideoSession>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        self.participant(&mut caller).await?;
        let r = req.into_inner();
        no_nul(&r.appointment_id, "appointment_id")?;
        let session = self.svc.get_session(&caller, &r.appointment_id).await?;
        Ok(Response::new(session.into()))
    }
}
