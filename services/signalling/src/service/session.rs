//! The unary calls: JoinSession, GetIceServers, Admit, EndSession, GetSession, and ending a
//! session (by the practice or the sweeper).

use super::Signalling;
use crate::domain::{
    EndReason, Event, IceServers, Joined, ParticipantState, PatientSide, Side, VideoSession,
};
use crate::error::SignallingError;
use crate::store::{self, NewSession, Session};
use econsult_runtime::audit;
use econsult_runtime::auth::Caller;
use econsult_runtime::db::Tx;
use econsult_runtime::events::{VideoSessionEnded, topics};
use econsult_runtime::outbox::{self, NewEvent};

/// The RPC of a join, in the access log.
const JOIN_ACTION: &str = "/econsult.signalling.v1.SignallingService/JoinSession";

impl Signalling {
    /// JoinSession: creates the session on the first join, (re)joins the caller's side and
    /// writes the access-log row.
    pub(crate) async fn join(
        &self,
        caller: &Caller,
        appointment_id: &str,
    ) -> Result<Joined, SignallingError> {
        let access = self.authorize(caller, appointment_id).await?;
        let now = self.now_ms();
        self.check_joinable(&access.appt, now)?;
        let appt = &access.appt;
        let (window_start, window_end) = self.window(appt);
        let mut tx = self.begin_locked(appointment_id).await?;
        store::create_session(
            &mut tx,
            &NewSession {
                session_id: &uuid::Uuid::now_v7().to_string(),
                appointment_id: &appt.appointment_id,
                patient_nin: &appt.patient_nin,
                gp_id: &appt.gp_id,
                gp_hpr_number: &appt.gp_hpr_number,
                org_number: &appt.org_number,
                municipality_number: &appt.municipality_number,
                window_start,
                window_end,
                started_at: now,
            },
        )
        .await?;
        let session = store::session_of(&mut tx, appointment_id)
            .await?
            .ok_or_else(|| SignallingError::internal("join", "session vanished"))?;
        if session.ended_at.is_some() {
            return Err(SignallingError::FailedPrecondition(
                "the video session has ended".into(),
            ));
        }
        let hpr = caller.hpr_number.clone().unwrap_or_default();
        if let Some(p) = store::participant_of(&mut tx, &session.session_id, access.side).await?
            && access.side == Side::Practice
            && p.state == ParticipantState::Online
            && p.subject != caller.subject
        {
            return Err(SignallingError::FailedPrecondition(
                "another clinician of the practice is in the session".into(),
            ));
        }
        store::join_participant(
            &mut tx,
            &session.session_id,
            access.side,
            &caller.subject,
            &hpr,
            {
                let (nin, relation) = caller.actor();
                (nin, relation, caller.actor_name())
            },
            now,
        )
        .await?;
        let head = store::head_seq(&mut tx, &session.session_id, access.side).await?;
        audit::record(
            &mut tx,
            caller,
            // Joining a video consultation is giving (or getting) the care itself.
            &audit::Access::new(
                JOIN_ACTION,
                format!("appointment:{appointment_id}"),
                &appt.patient_nin,
                "joined the video consultation of your appointment",
            )
            .implies(econsult_runtime::auth::Purpose::Treatment),
            now,
        )
        .await?;
        tx.commit().await?;
        let ice = self.ice_servers(appointment_id, access.side);
        Ok(Joined {
            session_id: session.session_id,
            side: access.side,
            waiting: access.side == Side::Patient && session.admitted_at.is_none(),
            resume_after_seq: head as u64,
            window_start_ms: window_start,
            window_end_ms: window_end,
            ice_servers: ice.servers,
        })
    }

    /// GetIceServers.
    pub(crate) async fn get_ice_servers(
        &self,
        caller: &Caller,
        appointment_id: &str,
    ) -> Result<IceServers, SignallingError> {
        let access = self.authorize(caller, appointment_id).await?;
        self.check_joinable(&access.appt, self.now_ms())?;
        Ok(self.ice_servers(appointment_id, access.side))
    }

    /// Admit: the practice admits the patient, or (with `clinician_hpr`) grants a colleague
    /// access. Returns when the patient was admitted (or the colleague granted), ms since the
    /// epoch.
    pub(crate) async fn admit(
        &self,
        caller: &Caller,
        appointment_id: &str,
        clinician_hpr: &str,
    ) -> Result<i64, SignallingError> {
        let access = self.authorize(caller, appointment_id).await?;
        if access.side != Side::Practice {
            return Err(SignallingError::PermissionDenied(
                "only the practice admits".into(),
            ));
        }
        let now = self.now_ms();
        if !clinician_hpr.is_empty() {
            if !clinician_hpr.chars().all(|c| c.is_ascii_digit()) || clinician_hpr.len() > 12 {
                return Err(SignallingError::Invalid(
                    "clinician_hpr_number must be an HPR number (digits)".into(),
                ));
            }
            if caller.hpr_number.as_deref() != Some(access.appt.gp_hpr_number.as_str()) {
                return Err(SignallingError::PermissionDenied(
                    "only the appointment's GP lets colleagues join".into(),
                ));
            }
            let mut tx = self.begin_locked(appointment_id).await?;
            store::grant(&mut tx, appointment_id, clinician_hpr, &caller.subject, now).await?;
            tx.commit().await?;
            return Ok(now);
        }
        let mut tx = self.begin_locked(appointment_id).await?;
        let session = store::session_of(&mut tx, appointment_id)
            .await?
            .ok_or_else(|| {
                SignallingError::FailedPrecondition("join the session before admitting".into())
            })?;
        if session.ended_at.is_some() {
            return Err(SignallingError::FailedPrecondition(
                "the video session has ended".into(),
            ));
        }
        if store::participant_of(&mut tx, &session.session_id, Side::Patient)
            .await?
            .is_none_or(|p| p.state == ParticipantState::Left)
        {
            return Err(SignallingError::FailedPrecondition(
                "the patient is not in the waiting room".into(),
            ));
        }
        let admitted_at = match session.admitted_at {
            Some(t) => t,
            None => {
                store::admit(&mut tx, &session.session_id, now).await?;
                self.enqueue(
                    &mut tx,
                    &session.session_id,
                    Side::Patient,
                    &Event::Admitted,
                    now,
                )
                .await?;
                now
            }
        };
        tx.commit().await?;
        self.inner
            .hub
            .wake(&session.session_id, Some(Side::Patient))
            .await;
        Ok(admitted_at)
    }

    /// EndSession by the practice; the session as it ended.
    pub(crate) async fn end_by_practice(
        &self,
        caller: &Caller,
        appointment_id: &str,
        held: bool,
    ) -> Result<VideoSession, SignallingError> {
        let access = self.authorize(caller, appointment_id).await?;
        if access.side != Side::Practice {
            return Err(SignallingError::PermissionDenied(
                "only the practice ends the session".into(),
            ));
        }
        let now = self.now_ms();
        let mut tx = self.begin_locked(appointment_id).await?;
        let session = store::session_of(&mut tx, appointment_id)
            .await?
            .ok_or_else(|| {
                SignallingError::FailedPrecondition("the session was never joined".into())
            })?;
        if session.ended_at.is_some() {
            return Err(SignallingError::FailedPrecondition(
                "the video session has already ended".into(),
            ));
        }
        self.end_in(&mut tx, &session, EndReason::EndedByPractice, held, now)
            .await?;
        tx.commit().await?;
        self.inner.hub.wake(&session.session_id, None).await;
        self.session_view(appointment_id).await
    }

    /// Ends `session` inside `tx` (lock held): closes the connected interval, queues
    /// SessionEnded for both sides and writes the outbox event for the statistics.
    pub(super) async fn end_in(
        &self,
        tx: &mut Tx,
        session: &Session,
        reason: EndReason,
        held: bool,
        now: i64,
    ) -> Result<(), SignallingError> {
        let connected_ms = session.connected_ms
            + session
                .both_connected_since
                .map_or(0, |since| (now - since).max(0));
        if !store::end_session(tx, &session.session_id, reason, held, connected_ms, now).await? {
            return Err(SignallingError::FailedPrecondition(
                "the video session has already ended".into(),
            ));
        }
        store::close_participants(tx, &session.session_id, now).await?;
        for side in Side::BOTH {
            self.enqueue(
                tx,
                &session.session_id,
                side,
                &Event::SessionEnded { reason, held },
                now,
            )
            .await?;
        }
        let payload = VideoSessionEnded {
            appointment_id: session.appointment_id.clone(),
            gp_id: session.gp_id.clone(),
            org_number: session.org_number.clone(),
            municipality_number: session.municipality_number.clone(),
            started_at_ms: session.started_at,
            ended_at_ms: now,
            connected: session.connected_at.is_some(),
            connected_ms,
            end_reason: reason.event_name().to_owned(),
            held,
        };
        outbox::enqueue(
            tx,
            NewEvent {
                topic: topics::VIDEO_SESSION_ENDED,
                org_number: &session.org_number,
                route_key: &self.inner.platform.pseudonyms.key_for(&session.patient_nin),
                payload: &payload,
            },
            now,
        )
        .await?;
        Ok(())
    }

    /// GetSession.
    pub(crate) async fn get_session(
        &self,
        caller: &Caller,
        appointment_id: &str,
    ) -> Result<VideoSession, SignallingError> {
        self.authorize(caller, appointment_id).await?;
        self.session_view(appointment_id).await
    }

    async fn session_view(&self, appointment_id: &str) -> Result<VideoSession, SignallingError> {
        let mut conn = self.inner.platform.db.read().acquire().await?;
        let s = store::session_of(&mut conn, appointment_id)
            .await?
            .ok_or_else(|| {
                SignallingError::NotFound("no video session for this appointment yet".into())
            })?;
        let online = store::online_sides(&mut conn, &s.session_id).await?;
        let patient = store::participant_of(&mut conn, &s.session_id, Side::Patient).await?;
        Ok(VideoSession {
            session_id: s.session_id,
            appointment_id: s.appointment_id,
            started_at_ms: s.started_at,
            admitted_at_ms: s.admitted_at,
            connected_at_ms: s.connected_at,
            connected_ms: s.connected_ms,
            ended_at_ms: s.ended_at,
            end_reason: s.end_reason,
            held: s.held,
            patient_online: online.contains(&Side::Patient),
            practice_online: online.contains(&Side::Practice),
            patient_side: patient.as_ref().map(patient_side),
        })
    }
}

/// Who is on the patient side, from its participant row.
pub(crate) fn patient_side(p: &store::Participant) -> PatientSide {
    PatientSide {
        relation: econsult_runtime::auth::Relation::from_code(p.actor_relation),
        name: p.actor_name.clone(),
    }
}
