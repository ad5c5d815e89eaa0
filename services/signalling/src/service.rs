//! The signalling logic: access, join window, waiting room, per-participant event queues,
//! negotiation order, session record, and the end-of-session event.
//!
//! Every change to a session runs in one transaction under the session's lock (PostgreSQL
//! advisory lock; SQLite has one writer), so checks and writes cannot interleave across replicas.

use crate::hub::Hub;
use crate::{SignallingConfig, sdp};
use base64::Engine as _;
use econsult_booking::directory::{self, AppointmentRef, AppointmentStatus, Modality};
use econsult_proto::signalling::v1 as pb;
use econsult_runtime::audit;
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::Tx;
use econsult_runtime::events::{VideoSessionEnded, topics};
use econsult_runtime::grpc::{db_status, internal, timestamp};
use econsult_runtime::outbox::{self, NewEvent};
use econsult_runtime::platform::Platform;
use pb::server_event::Body as Ev;
use prost::Message as _;
use sqlx::Row as _;
use std::sync::Arc;
use tonic::Status;

/// The patient's side.
pub const PATIENT: i64 = 1;
/// The practice's side.
pub const PRACTICE: i64 = 2;

/// Participant states (`signalling_participants.state`).
pub(crate) mod state {
    /// Joined, no stream yet.
    pub const JOINED: i64 = 1;
    /// A live stream.
    pub const ONLINE: i64 = 2;
    /// The stream dropped; may resume within the grace period.
    pub const DISCONNECTED: i64 = 3;
    /// Hung up or did not come back in time.
    pub const LEFT: i64 = 4;
}

const JOIN_ACTION: &str = "/econsult.signalling.v1.SignallingService/JoinSession";

pub(crate) fn other(side: i64) -> i64 {
    if side == PATIENT { PRACTICE } else { PATIENT }
}

fn side_pb(side: i64) -> pb::Side {
    match side {
        PATIENT => pb::Side::Patient,
        PRACTICE => pb::Side::Practice,
        _ => pb::Side::Unspecified,
    }
}

fn side_name(side: i64) -> &'static str {
    if side == PATIENT {
        "patient"
    } else {
        "practice"
    }
}

fn dbe(context: &'static str) -> impl Fn(sqlx::Error) -> Status {
    move |e| db_status(context, e)
}

fn lock_key(appointment_id: &str) -> String {
    format!("signalling:{appointment_id}")
}

/// The service logic; cheap to clone.
#[derive(Clone)]
pub struct Signalling {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) platform: Platform,
    pub(crate) cfg: SignallingConfig,
    pub(crate) hub: Hub,
    pub(crate) instance_id: String,
    turn_secret: String,
}

/// Who the caller is in a session.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    pub appt: AppointmentRef,
    pub side: i64,
}

/// A session row.
#[derive(Debug, Clone)]
pub(crate) struct SessionRow {
    pub session_id: String,
    pub appointment_id: String,
    pub patient_nin: String,
    pub gp_id: String,
    pub org_number: String,
    pub municipality_number: String,
    pub window_end: i64,
    pub started_at: i64,
    pub admitted_at: Option<i64>,
    pub pending_offer_side: i64,
    pub both_connected_since: Option<i64>,
    pub connected_at: Option<i64>,
    pub connected_ms: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<i64>,
    pub held: bool,
}

const SESSION_COLS: &str = "session_id, appointment_id, patient_nin, gp_id, org_number, municipality_number, \
    window_start, window_end, started_at, admitted_at, pending_offer_side, both_connected_since, connected_at, \
    connected_ms, ended_at, end_reason, held";

fn session_row(r: &sqlx::any::AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        session_id: r.try_get("session_id")?,
        appointment_id: r.try_get("appointment_id")?,
        patient_nin: r.try_get("patient_nin")?,
        gp_id: r.try_get("gp_id")?,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
        window_end: r.try_get("window_end")?,
        started_at: r.try_get("started_at")?,
        admitted_at: r.try_get("admitted_at")?,
        pending_offer_side: r.try_get("pending_offer_side")?,
        both_connected_since: r.try_get("both_connected_since")?,
        connected_at: r.try_get("connected_at")?,
        connected_ms: r.try_get("connected_ms")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
        held: r.try_get::<i64, _>("held")? != 0,
    })
}

/// A participant row.
#[derive(Debug, Clone)]
pub(crate) struct ParticipantRow {
    pub subject: String,
    pub state: i64,
    pub epoch: i64,
    pub described: bool,
    pub candidates: i64,
    pub end_of_candidates: bool,
    pub ice_restarts: i64,
}

const PARTICIPANT_COLS: &str =
    "subject, state, epoch, described, candidates, end_of_candidates, ice_restarts";

fn participant_row(r: &sqlx::any::AnyRow) -> Result<ParticipantRow, sqlx::Error> {
    Ok(ParticipantRow {
        subject: r.try_get("subject")?,
        state: r.try_get("state")?,
        epoch: r.try_get("epoch")?,
        described: r.try_get::<i64, _>("described")? != 0,
        candidates: r.try_get("candidates")?,
        end_of_candidates: r.try_get::<i64, _>("end_of_candidates")? != 0,
        ice_restarts: r.try_get("ice_restarts")?,
    })
}

/// What a stream needs after its Hello.
#[derive(Debug, Clone)]
pub(crate) struct StreamCtx {
    pub session_id: String,
    pub appointment_id: String,
    pub side: i64,
    pub epoch: i64,
    pub welcome: pb::Welcome,
}

/// How a stream ended, for the record and the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Dropped (client gone, network, server shutdown): may resume.
    Dropped,
    /// The participant hung up.
    HangUp,
}

/// Outcome of [`Signalling::deliverable`].
pub(crate) enum Pending {
    /// Events to send (may be empty).
    Events(Vec<pb::ServerEvent>),
    /// A newer stream took over.
    Superseded,
    /// The participant is no longer online (marked disconnected or left meanwhile).
    Lost,
}

impl Signalling {
    /// The logic over `platform`; `redis_url` makes streams reach each other across replicas.
    /// Returns the background tasks to run (wake-up listener, sweeper); they end on shutdown.
    pub async fn start(
        platform: Platform,
        cfg: SignallingConfig,
        turn_secret: String,
        redis_url: Option<&str>,
        namespace: &str,
        instance_id: String,
    ) -> anyhow::Result<(Self, Vec<futures::future::BoxFuture<'static, ()>>)> {
        let hub = match redis_url {
            Some(url) => Hub::redis(url, namespace, cfg.presence_ttl).await?,
            None => Hub::local(cfg.presence_ttl),
        };
        let mut tasks: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
        if let Some(listener) = hub.listener(platform.shutdown.clone()).await? {
            tasks.push(Box::pin(listener));
        }
        let svc = Self {
            inner: Arc::new(Inner {
                platform,
                cfg,
                hub,
                instance_id,
                turn_secret,
            }),
        };
        tasks.push(Box::pin(svc.clone().run_sweeper()));
        Ok((svc, tasks))
    }

    pub(crate) fn cfg(&self) -> &SignallingConfig {
        &self.inner.cfg
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub(crate) fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    fn now_ms(&self) -> i64 {
        self.inner.platform.clock.now_ms()
    }

    /// The caller's side in the appointment's session, or `PERMISSION_DENIED`.
    pub(crate) async fn authorize(
        &self,
        caller: &Caller,
        appointment_id: &str,
    ) -> Result<Access, Status> {
        if appointment_id.trim().is_empty() {
            return Err(Status::invalid_argument("appointment_id is required"));
        }
        if appointment_id.len() > 100 {
            return Err(Status::invalid_argument("appointment_id is too long"));
        }
        // One read connection for both lookups; no transaction is open yet.
        let mut conn = self
            .inner
            .platform
            .db
            .read()
            .acquire()
            .await
            .map_err(dbe("read connection"))?;
        let appt = directory::appointment(&mut conn, appointment_id)
            .await
            .map_err(dbe("load appointment"))?
            .ok_or_else(|| Status::not_found("appointment not found"))?;
        let side = match caller.role {
            Role::Patient => {
                let nin = caller.patient()?;
                if nin.as_str() != appt.patient_nin {
                    return Err(Status::permission_denied(
                        "only the booked patient and the practice may join this video consultation",
                    ));
                }
                PATIENT
            }
            Role::Clinician => {
                let (Some(hpr), Some(org)) = (&caller.hpr_number, &caller.org_number) else {
                    return Err(Status::permission_denied(
                        "a clinician token needs an HPR number and an organisation",
                    ));
                };
                if *org != appt.org_number {
                    return Err(Status::permission_denied(
                        "this video consultation belongs to another practice",
                    ));
                }
                if *hpr != appt.gp_hpr_number {
                    let granted = sqlx::query(
                        "SELECT 1 AS one FROM signalling_grants WHERE appointment_id = $1 AND hpr_number = $2",
                    )
                    .bind(appointment_id)
                    .bind(hpr)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(dbe("load grant"))?;
                    if granted.is_none() {
                        return Err(Status::permission_denied(
                            "only the appointment's GP, or a colleague the GP admitted, may join",
                        ));
                    }
                }
                PRACTICE
            }
            Role::Ehr | Role::Ops => {
                return Err(Status::permission_denied(
                    "video consultations are for the patient and health personnel",
                ));
            }
        };
        Ok(Access { appt, side })
    }

    fn window(&self, appt: &AppointmentRef) -> (i64, i64) {
        let c = &self.inner.cfg;
        (
            appt.start_ms - c.join_before.num_milliseconds(),
            appt.end_ms + c.join_after_end.num_milliseconds(),
        )
    }

    /// `FAILED_PRECONDITION` unless the appointment is a live video consultation in its window.
    fn check_joinable(&self, appt: &AppointmentRef, now: i64) -> Result<(), Status> {
        if appt.modality != Modality::Video {
            return Err(Status::failed_precondition(
                "the appointment is not a video consultation",
            ));
        }
        match appt.status {
            AppointmentStatus::Cancelled => {
                return Err(Status::failed_precondition("the appointment is cancelled"));
            }
            AppointmentStatus::NoShow => {
                return Err(Status::failed_precondition(
                    "the appointment was recorded as a no-show",
                ));
            }
            _ => {}
        }
        let (start, end) = self.window(appt);
        if now < start || now > end {
            return Err(Status::failed_precondition(format!(
                "outside the join window: the video consultation can be joined from {} until {}",
                from_ms(start).to_rfc3339(),
                from_ms(end).to_rfc3339()
            )));
        }
        Ok(())
    }

    async fn session_for_update(
        tx: &mut Tx,
        appointment_id: &str,
    ) -> Result<Option<SessionRow>, Status> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLS} FROM signalling_sessions WHERE appointment_id = $1"
        ))
        .bind(appointment_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(dbe("load session"))?;
        row.as_ref()
            .map(session_row)
            .transpose()
            .map_err(dbe("read session"))
    }

    async fn participant(
        tx: &mut Tx,
        session_id: &str,
        side: i64,
    ) -> Result<Option<ParticipantRow>, Status> {
        let row = sqlx::query(&format!(
            "SELECT {PARTICIPANT_COLS} FROM signalling_participants WHERE session_id = $1 AND side = $2"
        ))
        .bind(session_id)
        .bind(side)
        .fetch_optional(&mut **tx)
        .await
        .map_err(dbe("load participant"))?;
        row.as_ref()
            .map(participant_row)
            .transpose()
            .map_err(dbe("read participant"))
    }

    /// The session of `appointment_id` and its participant on `side`, read in one statement (the
    /// relay's hot path; the caller holds the session lock).
    async fn session_and_participant(
        tx: &mut Tx,
        appointment_id: &str,
        side: i64,
    ) -> Result<Option<(SessionRow, ParticipantRow)>, Status> {
        let qualified = |prefix: &str, cols: &str| {
            cols.split(',')
                .map(|c| format!("{prefix}.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let row = sqlx::query(&format!(
            "SELECT {}, {} FROM signalling_sessions s \
             JOIN signalling_participants p ON p.session_id = s.session_id AND p.side = $2 \
             WHERE s.appointment_id = $1",
            qualified("s", SESSION_COLS),
            qualified("p", PARTICIPANT_COLS)
        ))
        .bind(appointment_id)
        .bind(side)
        .fetch_optional(&mut **tx)
        .await
        .map_err(dbe("load session and participant"))?;
        row.as_ref()
            .map(|r| Ok((session_row(r)?, participant_row(r)?)))
            .transpose()
            .map_err(dbe("read session and participant"))
    }

    /// Appends `body` to the queue of `side`; returns its sequence number.
    async fn enqueue(
        tx: &mut Tx,
        session_id: &str,
        side: i64,
        body: Ev,
        now: i64,
    ) -> Result<i64, Status> {
        let event = pb::ServerEvent {
            seq: 0,
            at: Some(timestamp(from_ms(now))),
            body: Some(body),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(event.encode_to_vec());
        // The next seq and the row in one statement; the session lock the caller holds keeps
        // MAX(seq) + 1 unique (and the primary key would refuse a duplicate).
        sqlx::query(
            "INSERT INTO signalling_messages (session_id, side, seq, body, created_at) \
             SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4 FROM signalling_messages \
             WHERE session_id = $1 AND side = $2 RETURNING seq",
        )
        .bind(session_id)
        .bind(side)
        .bind(encoded)
        .bind(now)
        .fetch_one(&mut **tx)
        .await
        .and_then(|r| r.try_get::<i64, _>("seq"))
        .map_err(dbe("enqueue signal"))
    }

    async fn head_seq(tx: &mut Tx, session_id: &str, side: i64) -> Result<i64, Status> {
        sqlx::query(
            "SELECT COALESCE(MAX(seq), 0) AS s FROM signalling_messages WHERE session_id = $1 AND side = $2",
        )
        .bind(session_id)
        .bind(side)
        .fetch_one(&mut **tx)
        .await
        .and_then(|r| r.try_get::<i64, _>("s"))
        .map_err(dbe("head seq"))
    }

    async fn begin_locked(&self, appointment_id: &str) -> Result<Tx, Status> {
        let db = &self.inner.platform.db;
        let mut tx = db.begin().await.map_err(dbe("begin"))?;
        db.lock(&mut tx, &lock_key(appointment_id))
            .await
            .map_err(dbe("lock session"))?;
        Ok(tx)
    }

    fn ice_servers(&self, appointment_id: &str, side: i64) -> (Vec<pb::IceServer>, i64) {
        let c = &self.inner.cfg;
        let now = self.inner.platform.clock.now().timestamp();
        let subject = format!("{appointment_id}.{}", side_name(side)).replace(':', "-");
        let cred = crate::turn::credential(
            &self.inner.turn_secret,
            &subject,
            now,
            c.turn_ttl.as_secs() as i64,
        );
        let mut servers = Vec::new();
        if !c.stun_urls.is_empty() {
            servers.push(pb::IceServer {
                urls: c.stun_urls.clone(),
                username: String::new(),
                credential: String::new(),
            });
        }
        if !c.turn_urls.is_empty() {
            servers.push(pb::IceServer {
                urls: c.turn_urls.clone(),
                username: cred.username,
                credential: cred.password,
            });
        }
        (servers, cred.expires_at)
    }

    /// JoinSession.
    pub(crate) async fn join(
        &self,
        caller: &Caller,
        appointment_id: &str,
    ) -> Result<pb::JoinSessionResponse, Status> {
        let access = self.authorize(caller, appointment_id).await?;
        let now = self.now_ms();
        self.check_joinable(&access.appt, now)?;
        let appt = &access.appt;
        let (window_start, window_end) = self.window(appt);
        let mut tx = self.begin_locked(appointment_id).await?;
        sqlx::query(
            "INSERT INTO signalling_sessions (session_id, appointment_id, patient_nin, gp_id, gp_hpr_number, org_number, \
             municipality_number, window_start, window_end, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (appointment_id) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&appt.appointment_id)
        .bind(&appt.patient_nin)
        .bind(&appt.gp_id)
        .bind(&appt.gp_hpr_number)
        .bind(&appt.org_number)
        .bind(&appt.municipality_number)
        .bind(window_start)
        .bind(window_end)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(dbe("create session"))?;
        let session = Self::session_for_update(&mut tx, appointment_id)
            .await?
            .ok_or_else(|| internal("join", "session vanished"))?;
        if session.ended_at.is_some() {
            return Err(Status::failed_precondition("the video session has ended"));
        }
        let hpr = caller.hpr_number.clone().unwrap_or_default();
        if let Some(p) = Self::participant(&mut tx, &session.session_id, access.side).await?
            && access.side == PRACTICE
            && p.state == state::ONLINE
            && p.subject != caller.subject
        {
            return Err(Status::failed_precondition(
                "another clinician of the practice is in the session",
            ));
        }
        sqlx::query(
            "INSERT INTO signalling_participants (session_id, side, subject, hpr_number, state, joined_at, last_join_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (session_id, side) DO UPDATE SET \
             subject = excluded.subject, hpr_number = excluded.hpr_number, last_join_at = excluded.last_join_at, \
             joins = signalling_participants.joins + 1, left_at = NULL, left_reason = NULL, \
             state = CASE WHEN signalling_participants.state = 4 THEN 1 ELSE signalling_participants.state END",
        )
        .bind(&session.session_id)
        .bind(access.side)
        .bind(&caller.subject)
        .bind(&hpr)
        .bind(state::JOINED)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(dbe("join participant"))?;
        let head = Self::head_seq(&mut tx, &session.session_id, access.side).await?;
        audit::record(
            &mut tx,
            caller,
            &audit::Access {
                action: JOIN_ACTION,
                resource: format!("appointment:{appointment_id}"),
                patient_nin: &appt.patient_nin,
            },
            now,
        )
        .await
        .map_err(dbe("record audit"))?;
        tx.commit().await.map_err(dbe("commit join"))?;
        let (ice_servers, _) = self.ice_servers(appointment_id, access.side);
        Ok(pb::JoinSessionResponse {
            session_id: session.session_id,
            side: side_pb(access.side) as i32,
            waiting: access.side == PATIENT && session.admitted_at.is_none(),
            resume_after_seq: head as u64,
            window_start: Some(timestamp(from_ms(window_start))),
            window_end: Some(timestamp(from_ms(window_end))),
            ice_servers,
        })
    }

    /// GetIceServers.
    pub(crate) async fn get_ice_servers(
        &self,
        caller: &Caller,
        appointment_id: &str,
    ) -> Result<pb::GetIceServersResponse, Status> {
        let access = self.authorize(caller, appointment_id).await?;
        self.check_joinable(&access.appt, self.now_ms())?;
        let (ice_servers, expires) = self.ice_servers(appointment_id, access.side);
        Ok(pb::GetIceServersResponse {
            ice_servers,
            expires_at: Some(prost_types::Timestamp {
                seconds: expires,
                nanos: 0,
            }),
        })
    }

    /// Admit: the practice admits the patient, or grants a colleague access.
    pub(crate) async fn admit(
        &self,
        caller: &Caller,
        appointment_id: &str,
        clinician_hpr: &str,
    ) -> Result<pb::AdmitResponse, Status> {
        let access = self.authorize(caller, appointment_id).await?;
        if access.side != PRACTICE {
            return Err(Status::permission_denied("only the practice admits"));
        }
        let now = self.now_ms();
        if !clinician_hpr.is_empty() {
            if !clinician_hpr.chars().all(|c| c.is_ascii_digit()) || clinician_hpr.len() > 12 {
                return Err(Status::invalid_argument(
                    "clinician_hpr_number must be an HPR number (digits)",
                ));
            }
            if caller.hpr_number.as_deref() != Some(access.appt.gp_hpr_number.as_str()) {
                return Err(Status::permission_denied(
                    "only the appointment's GP lets colleagues join",
                ));
            }
            let mut tx = self.begin_locked(appointment_id).await?;
            sqlx::query(
                "INSERT INTO signalling_grants (appointment_id, hpr_number, granted_by, granted_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (appointment_id, hpr_number) DO NOTHING",
            )
            .bind(appointment_id)
            .bind(clinician_hpr)
            .bind(&caller.subject)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(dbe("grant"))?;
            tx.commit().await.map_err(dbe("commit grant"))?;
            return Ok(pb::AdmitResponse {
                admitted_at: Some(timestamp(from_ms(now))),
            });
        }
        let mut tx = self.begin_locked(appointment_id).await?;
        let session = Self::session_for_update(&mut tx, appointment_id)
            .await?
            .ok_or_else(|| Status::failed_precondition("join the session before admitting"))?;
        if session.ended_at.is_some() {
            return Err(Status::failed_precondition("the video session has ended"));
        }
        if Self::participant(&mut tx, &session.session_id, PATIENT)
            .await?
            .is_none_or(|p| p.state == state::LEFT)
        {
            return Err(Status::failed_precondition(
                "the patient is not in the waiting room",
            ));
        }
        let admitted_at = match session.admitted_at {
            Some(t) => t,
            None => {
                sqlx::query(
                    "UPDATE signalling_sessions SET admitted_at = $1 WHERE session_id = $2",
                )
                .bind(now)
                .bind(&session.session_id)
                .execute(&mut *tx)
                .await
                .map_err(dbe("admit"))?;
                Self::enqueue(
                    &mut tx,
                    &session.session_id,
                    PATIENT,
                    Ev::Admitted(pb::Admitted {}),
                    now,
                )
                .await?;
                now
            }
        };
        tx.commit().await.map_err(dbe("commit admit"))?;
        self.inner.hub.wake(&session.session_id, PATIENT).await;
        Ok(pb::AdmitResponse {
            admitted_at: Some(timestamp(from_ms(admitted_at))),
        })
    }

    /// EndSession by the practice.
    pub(crate) async fn end_by_practice(
        &self,
        caller: &Caller,
        appointment_id: &str,
        held: bool,
    ) -> Result<pb::VideoSession, Status> {
        let access = self.authorize(caller, appointment_id).await?;
        if access.side != PRACTICE {
            return Err(Status::permission_denied(
                "only the practice ends the session",
            ));
        }
        let now = self.now_ms();
        let mut tx = self.begin_locked(appointment_id).await?;
        let session = Self::session_for_update(&mut tx, appointment_id)
            .await?
            .ok_or_else(|| Status::failed_precondition("the session was never joined"))?;
        if session.ended_at.is_some() {
            return Err(Status::failed_precondition(
                "the video session has already ended",
            ));
        }
        self.end_in(&mut tx, &session, pb::EndReason::EndedByPractice, held, now)
            .await?;
        tx.commit().await.map_err(dbe("commit end"))?;
        self.inner.hub.wake(&session.session_id, 0).await;
        self.session_view(appointment_id).await
    }

    /// Ends `session` inside `tx` (lock held): closes the connected interval, queues
    /// SessionEnded for both sides and writes the outbox event for the statistics.
    async fn end_in(
        &self,
        tx: &mut Tx,
        session: &SessionRow,
        reason: pb::EndReason,
        held: bool,
        now: i64,
    ) -> Result<(), Status> {
        let connected_ms = session.connected_ms
            + session
                .both_connected_since
                .map_or(0, |since| (now - since).max(0));
        let updated = sqlx::query(
            "UPDATE signalling_sessions SET ended_at = $1, end_reason = $2, held = $3, connected_ms = $4, \
             both_connected_since = NULL, pending_offer_side = 0 WHERE session_id = $5 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(reason as i32 as i64)
        .bind(i64::from(held))
        .bind(connected_ms)
        .bind(&session.session_id)
        .execute(&mut **tx)
        .await
        .map_err(dbe("end session"))?
        .rows_affected();
        if updated == 0 {
            return Err(Status::failed_precondition(
                "the video session has already ended",
            ));
        }
        sqlx::query(
            "UPDATE signalling_participants SET online_ms = online_ms + CASE WHEN state = 2 AND stream_started_at IS NOT NULL \
             THEN $1 - stream_started_at ELSE 0 END, state = 4, left_at = COALESCE(left_at, $1), media_connected = 0 \
             WHERE session_id = $2 AND state <> 4",
        )
        .bind(now)
        .bind(&session.session_id)
        .execute(&mut **tx)
        .await
        .map_err(dbe("close participants"))?;
        for side in [PATIENT, PRACTICE] {
            Self::enqueue(
                tx,
                &session.session_id,
                side,
                Ev::SessionEnded(pb::SessionEnded {
                    reason: reason as i32,
                    held,
                }),
                now,
            )
            .await?;
        }
        let end_reason = match reason {
            pb::EndReason::EndedByPractice => "hang_up",
            pb::EndReason::Timeout => "timeout",
            pb::EndReason::FailedToConnect => "failed_to_connect",
            pb::EndReason::Unspecified => "unknown",
        };
        let payload = VideoSessionEnded {
            appointment_id: session.appointment_id.clone(),
            gp_id: session.gp_id.clone(),
            org_number: session.org_number.clone(),
            municipality_number: session.municipality_number.clone(),
            started_at_ms: session.started_at,
            ended_at_ms: now,
            connected: session.connected_at.is_some(),
            connected_ms,
            end_reason: end_reason.to_owned(),
            held,
        };
        outbox::enqueue(
            tx,
            NewEvent {
                topic: topics::VIDEO_SESSION_ENDED,
                org_number: &session.org_number,
                route_key: &session.patient_nin,
                payload: &payload,
            },
            now,
        )
        .await
        .map_err(|e| econsult_runtime::grpc::anyhow_status("enqueue session ended", e))?;
        Ok(())
    }

    /// GetSession.
    pub(crate) async fn get_session(
        &self,
        caller: &Caller,
        appointment_id: &str,
    ) -> Result<pb::VideoSession, Status> {
        self.authorize(caller, appointment_id).await?;
        self.session_view(appointment_id).await
    }

    async fn session_view(&self, appointment_id: &str) -> Result<pb::VideoSession, Status> {
        let db = &self.inner.platform.db;
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLS} FROM signalling_sessions WHERE appointment_id = $1"
        ))
        .bind(appointment_id)
        .fetch_optional(db.read())
        .await
        .map_err(dbe("load session"))?
        .ok_or_else(|| Status::not_found("no video session for this appointment yet"))?;
        let s = session_row(&row).map_err(dbe("read session"))?;
        let online = sqlx::query(
            "SELECT side FROM signalling_participants WHERE session_id = $1 AND state = 2",
        )
        .bind(&s.session_id)
        .fetch_all(db.read())
        .await
        .map_err(dbe("load participants"))?
        .iter()
        .filter_map(|r| r.try_get::<i64, _>("side").ok())
        .collect::<Vec<_>>();
        let ts = |v: Option<i64>| v.map(|ms| timestamp(from_ms(ms)));
        Ok(pb::VideoSession {
            session_id: s.session_id,
            appointment_id: s.appointment_id,
            started_at: ts(Some(s.started_at)),
            admitted_at: ts(s.admitted_at),
            connected_at: ts(s.connected_at),
            connected_ms: s.connected_ms,
            ended_at: ts(s.ended_at),
            end_reason: s.end_reason.unwrap_or(0) as i32,
            held: s.held,
            patient_online: online.contains(&PATIENT),
            practice_online: online.contains(&PRACTICE),
        })
    }

    /// The Hello of a Signal stream: takes over the participant's stream slot.
    pub(crate) async fn open_stream(
        &self,
        caller: &Caller,
        hello: &pb::Hello,
    ) -> Result<StreamCtx, Status> {
        let access = self.authorize(caller, &hello.appointment_id).await?;
        let appointment_id = hello.appointment_id.as_str();
        let now = self.now_ms();
        let mut tx = self.begin_locked(appointment_id).await?;
        let session = Self::session_for_update(&mut tx, appointment_id)
            .await?
            .ok_or_else(|| Status::failed_precondition("call JoinSession before signalling"))?;
        if session.ended_at.is_some() {
            return Err(Status::failed_precondition("the video session has ended"));
        }
        let me = Self::participant(&mut tx, &session.session_id, access.side)
            .await?
            .ok_or_else(|| Status::failed_precondition("call JoinSession before signalling"))?;
        if me.state == state::LEFT {
            return Err(Status::failed_precondition(
                "you left the session (or did not come back within the reconnect grace period): call JoinSession again",
            ));
        }
        if me.subject != caller.subject {
            return Err(Status::failed_precondition(
                "another clinician of the practice has joined in your place",
            ));
        }
        // Presence first, so the sweeper never sees an online row without it.
        self.inner
            .hub
            .refresh_presence(&session.session_id, access.side)
            .await
            .map_err(|e| econsult_runtime::grpc::anyhow_status("refresh presence", e))?;
        let epoch = me.epoch + 1;
        sqlx::query(
            "UPDATE signalling_participants SET state = 2, epoch = $1, instance_id = $2, \
             online_ms = online_ms + CASE WHEN state = 2 AND stream_started_at IS NOT NULL THEN $3 - stream_started_at ELSE 0 END, \
             stream_started_at = $3, disconnected_at = NULL, rejoins = rejoins + $4 \
             WHERE session_id = $5 AND side = $6",
        )
        .bind(epoch)
        .bind(&self.inner.instance_id)
        .bind(now)
        .bind(i64::from(me.state == state::DISCONNECTED))
        .bind(&session.session_id)
        .bind(access.side)
        .execute(&mut *tx)
        .await
        .map_err(dbe("open stream"))?;
        let peer_side = other(access.side);
        let waiting = session.admitted_at.is_none();
        if me.state != state::ONLINE {
            Self::enqueue(
                &mut tx,
                &session.session_id,
                peer_side,
                Ev::PeerJoined(pb::PeerJoined {
                    side: side_pb(access.side) as i32,
                    rejoined: me.state == state::DISCONNECTED,
                    waiting: access.side == PATIENT && waiting,
                }),
                now,
            )
            .await?;
        }
        let peer = Self::participant(&mut tx, &session.session_id, peer_side).await?;
        tx.commit().await.map_err(dbe("commit open stream"))?;
        // The peer learns we are here; an older stream of ours learns it was superseded.
        self.inner.hub.wake(&session.session_id, 0).await;
        let peer_online = peer.as_ref().is_some_and(|p| p.state == state::ONLINE);
        Ok(StreamCtx {
            welcome: pb::Welcome {
                session_id: session.session_id.clone(),
                side: side_pb(access.side) as i32,
                waiting: access.side == PATIENT && waiting,
                peer_online,
                resumed: matches!(me.state, state::DISCONNECTED | state::ONLINE),
                peer_waiting: access.side == PRACTICE
                    && waiting
                    && peer.is_some_and(|p| p.state != state::LEFT),
            },
            session_id: session.session_id,
            appointment_id: appointment_id.to_owned(),
            side: access.side,
            epoch,
        })
    }

    /// Events for the stream after `cursor`, or why the stream must end.
    pub(crate) async fn deliverable(
        &self,
        ctx: &StreamCtx,
        cursor: u64,
    ) -> Result<Pending, Status> {
        let db = &self.inner.platform.db;
        let me = sqlx::query(
            "SELECT epoch, state FROM signalling_participants WHERE session_id = $1 AND side = $2",
        )
        .bind(&ctx.session_id)
        .bind(ctx.side)
        .fetch_optional(db.read())
        .await
        .map_err(dbe("load participant"))?;
        let Some(me) = me else {
            return Ok(Pending::Lost);
        };
        let epoch: i64 = me.try_get("epoch").map_err(dbe("epoch"))?;
        let st: i64 = me.try_get("state").map_err(dbe("state"))?;
        if epoch != ctx.epoch {
            return Ok(Pending::Superseded);
        }
        let rows = sqlx::query(
            "SELECT seq, body FROM signalling_messages WHERE session_id = $1 AND side = $2 AND seq > $3 ORDER BY seq LIMIT 200",
        )
        .bind(&ctx.session_id)
        .bind(ctx.side)
        .bind(i64::try_from(cursor).unwrap_or(i64::MAX))
        .fetch_all(db.read())
        .await
        .map_err(dbe("load signals"))?;
        let mut events = Vec::with_capacity(rows.len());
        for r in rows {
            let seq: i64 = r.try_get("seq").map_err(dbe("seq"))?;
            let body: String = r.try_get("body").map_err(dbe("body"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|e| internal("decode signal", e))?;
            let mut ev = pb::ServerEvent::decode(bytes.as_slice())
                .map_err(|e| internal("decode signal", e))?;
            ev.seq = seq as u64;
            events.push(ev);
        }
        // A stream no longer online still gets what was queued before (e.g. SessionEnded).
        if st != state::ONLINE && events.is_empty() {
            return Ok(Pending::Lost);
        }
        Ok(Pending::Events(events))
    }

    /// The stream ended: records it and tells the peer (only if this stream was the live one).
    pub(crate) async fn close_stream(&self, ctx: &StreamCtx, how: StreamEnd) -> Result<(), Status> {
        let now = self.now_ms();
        let mut tx = self.begin_locked(&ctx.appointment_id).await?;
        let (new_state, reason) = match how {
            StreamEnd::Dropped => (state::DISCONNECTED, pb::LeaveReason::Disconnected),
            StreamEnd::HangUp => (state::LEFT, pb::LeaveReason::HangUp),
        };
        let updated = sqlx::query(
            "UPDATE signalling_participants SET state = $1, \
             disconnected_at = CASE WHEN $1 = 3 THEN $2 ELSE disconnected_at END, \
             left_at = CASE WHEN $1 = 4 THEN $2 ELSE left_at END, \
             left_reason = CASE WHEN $1 = 4 THEN $3 ELSE left_reason END, \
             online_ms = online_ms + CASE WHEN stream_started_at IS NOT NULL THEN $2 - stream_started_at ELSE 0 END, \
             stream_started_at = NULL WHERE session_id = $4 AND side = $5 AND epoch = $6 AND state = 2",
        )
        .bind(new_state)
        .bind(now)
        .bind(reason as i32 as i64)
        .bind(&ctx.session_id)
        .bind(ctx.side)
        .bind(ctx.epoch)
        .execute(&mut *tx)
        .await
        .map_err(dbe("close stream"))?
        .rows_affected();
        if updated == 0 {
            return Ok(());
        }
        self.set_media_connected(&mut tx, &ctx.session_id, ctx.side, false, now)
            .await?;
        let ended = sqlx::query("SELECT ended_at FROM signalling_sessions WHERE session_id = $1")
            .bind(&ctx.session_id)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get::<Option<i64>, _>("ended_at"))
            .map_err(dbe("load session"))?;
        if ended.is_none() {
            let deadline = now + self.inner.cfg.reconnect_grace.num_milliseconds();
            Self::enqueue(
                &mut tx,
                &ctx.session_id,
                other(ctx.side),
                Ev::PeerLeft(pb::PeerLeft {
                    side: side_pb(ctx.side) as i32,
                    reason: reason as i32,
                    rejoin_deadline: (how == StreamEnd::Dropped)
                        .then(|| timestamp(from_ms(deadline))),
                }),
                now,
            )
            .await?;
        }
        tx.commit().await.map_err(dbe("commit close stream"))?;
        self.inner.hub.wake(&ctx.session_id, other(ctx.side)).await;
        Ok(())
    }

    /// Records a side's media connection state and the session's connected time.
    async fn set_media_connected(
        &self,
        tx: &mut Tx,
        session_id: &str,
        side: i64,
        connected: bool,
        now: i64,
    ) -> Result<(), Status> {
        sqlx::query(
            "UPDATE signalling_participants SET media_connected = $1 WHERE session_id = $2 AND side = $3",
        )
        .bind(i64::from(connected))
        .bind(session_id)
        .bind(side)
        .execute(&mut **tx)
        .await
        .map_err(dbe("media state"))?;
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM signalling_participants WHERE session_id = $1 AND media_connected = 1",
        )
        .bind(session_id)
        .fetch_one(&mut **tx)
        .await
        .and_then(|r| r.try_get::<i64, _>("n"))
        .map_err(dbe("count connected"))?;
        if n >= 2 {
            sqlx::query(
                "UPDATE signalling_sessions SET both_connected_since = COALESCE(both_connected_since, $1), \
                 connected_at = COALESCE(connected_at, $1) WHERE session_id = $2 AND ended_at IS NULL",
            )
            .bind(now)
            .bind(session_id)
            .execute(&mut **tx)
            .await
            .map_err(dbe("connected"))?;
        } else {
            sqlx::query(
                "UPDATE signalling_sessions SET connected_ms = connected_ms + CASE WHEN both_connected_since IS NULL \
                 THEN 0 ELSE $1 - both_connected_since END, both_connected_since = NULL WHERE session_id = $2",
            )
            .bind(now)
            .bind(session_id)
            .execute(&mut **tx)
            .await
            .map_err(dbe("disconnected"))?;
        }
        Ok(())
    }

    /// Checks one client message and relays it to the peer's queue. `Err` is reported to the
    /// client as a rejection; nothing is relayed then.
    pub(crate) async fn relay(
        &self,
        ctx: &StreamCtx,
        msg: &pb::ClientSignal,
    ) -> Result<(), Status> {
        use pb::client_signal::Body as In;
        let limit = self.inner.cfg.max_message_bytes;
        let size = msg.encoded_len();
        if size > limit {
            return Err(Status::invalid_argument(format!(
                "message is {size} bytes; at most {limit} are accepted"
            )));
        }
        let body = msg
            .body
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("body is required"))?;
        // Input checks that need no state.
        match body {
            In::Hello(_) => {
                return Err(Status::invalid_argument(
                    "hello is only accepted as the first message",
                ));
            }
            In::Description(d) => {
                match pb::SdpType::try_from(d.r#type) {
                    Ok(pb::SdpType::Offer | pb::SdpType::Answer) => {}
                    _ => {
                        return Err(Status::invalid_argument(
                            "description.type must be OFFER or ANSWER",
                        ));
                    }
                }
                if d.ice_restart && d.r#type != pb::SdpType::Offer as i32 {
                    return Err(Status::invalid_argument(
                        "description.ice_restart is only for offers",
                    ));
                }
                sdp::validate_description(&d.sdp)?;
            }
            In::Candidate(c) => {
                sdp::validate_candidate(&c.candidate)?;
                if c.sdp_mid.len() > 64 || c.username_fragment.len() > 256 {
                    return Err(Status::invalid_argument(
                        "candidate.sdp_mid or candidate.username_fragment is too long",
                    ));
                }
            }
            _ => {}
        }
        let now = self.now_ms();
        let mut tx = self.begin_locked(&ctx.appointment_id).await?;
        let (session, me) = Self::session_and_participant(&mut tx, &ctx.appointment_id, ctx.side)
            .await?
            .ok_or_else(|| internal("relay", "session or participant vanished"))?;
        if session.ended_at.is_some() {
            return Err(Status::failed_precondition("the video session has ended"));
        }
        if me.epoch != ctx.epoch || me.state != state::ONLINE {
            return Err(Status::aborted(
                "this stream is no longer the participant's live stream",
            ));
        }
        let peer_side = other(ctx.side);
        // Only a hang-up goes before admission: no media flows in the waiting room, so a
        // connection report there is refused rather than written.
        let needs_admission = !matches!(body, In::HangUp(_));
        if needs_admission && session.admitted_at.is_none() {
            return Err(Status::failed_precondition(if ctx.side == PATIENT {
                "you are in the waiting room: the practice has not admitted you yet"
            } else {
                "admit the patient before signalling"
            }));
        }
        let max_candidates = self.inner.cfg.max_candidates;
        let relayed: Option<Ev> = match body {
            In::Hello(_) => None,
            In::Description(d) if d.r#type == pb::SdpType::Offer as i32 => {
                if session.pending_offer_side == peer_side {
                    return Err(Status::failed_precondition(
                        "the peer's offer is waiting for your answer (offer collision)",
                    ));
                }
                if d.ice_restart && me.ice_restarts >= self.inner.cfg.max_ice_restarts {
                    return Err(Status::failed_precondition(format!(
                        "too many ICE restarts (at most {} per session)",
                        self.inner.cfg.max_ice_restarts
                    )));
                }
                sqlx::query(
                    "UPDATE signalling_sessions SET pending_offer_side = $1 WHERE session_id = $2",
                )
                .bind(ctx.side)
                .bind(&ctx.session_id)
                .execute(&mut *tx)
                .await
                .map_err(dbe("offer"))?;
                if d.ice_restart || !me.described {
                    // A new ICE generation: both sides trickle afresh.
                    sqlx::query(
                        "UPDATE signalling_participants SET candidates = 0, end_of_candidates = 0, \
                         ice_restarts = ice_restarts + CASE WHEN side = $1 AND $2 = 1 THEN 1 ELSE 0 END \
                         WHERE session_id = $3",
                    )
                    .bind(ctx.side)
                    .bind(i64::from(d.ice_restart))
                    .bind(&ctx.session_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(dbe("ice generation"))?;
                }
                self.mark_described(&mut tx, ctx).await?;
                Some(Ev::Description(d.clone()))
            }
            In::Description(d) => {
                if session.pending_offer_side != peer_side {
                    return Err(Status::failed_precondition(
                        "an answer needs a pending offer from the peer (answer before offer)",
                    ));
                }
                sqlx::query(
                    "UPDATE signalling_sessions SET pending_offer_side = 0 WHERE session_id = $1",
                )
                .bind(&ctx.session_id)
                .execute(&mut *tx)
                .await
                .map_err(dbe("answer"))?;
                self.mark_described(&mut tx, ctx).await?;
                Some(Ev::Description(d.clone()))
            }
            In::Candidate(c) => {
                if !me.described {
                    return Err(Status::failed_precondition(
                        "ICE candidates come after this side's offer or answer",
                    ));
                }
                if me.end_of_candidates {
                    return Err(Status::failed_precondition(
                        "end-of-candidates was already signalled for this ICE generation",
                    ));
                }
                if me.candidates >= max_candidates {
                    return Err(Status::failed_precondition(format!(
                        "too many ICE candidates: at most {max_candidates} per side and ICE generation"
                    )));
                }
                sqlx::query(
                    "UPDATE signalling_participants SET candidates = candidates + 1 WHERE session_id = $1 AND side = $2",
                )
                .bind(&ctx.session_id)
                .bind(ctx.side)
                .execute(&mut *tx)
                .await
                .map_err(dbe("candidate"))?;
                Some(Ev::Candidate(c.clone()))
            }
            In::EndOfCandidates(e) => {
                if !me.described {
                    return Err(Status::failed_precondition(
                        "end-of-candidates comes after this side's offer or answer",
                    ));
                }
                sqlx::query(
                    "UPDATE signalling_participants SET end_of_candidates = 1 WHERE session_id = $1 AND side = $2",
                )
                .bind(&ctx.session_id)
                .bind(ctx.side)
                .execute(&mut *tx)
                .await
                .map_err(dbe("end of candidates"))?;
                Some(Ev::EndOfCandidates(*e))
            }
            In::IceRestart(r) => Some(Ev::IceRestartRequested(*r)),
            In::MediaState(m) => Some(Ev::PeerMediaState(*m)),
            In::Connection(c) => {
                self.set_media_connected(&mut tx, &ctx.session_id, ctx.side, c.connected, now)
                    .await?;
                None
            }
            In::HangUp(_) => None,
        };
        if let Some(ev) = relayed {
            Self::enqueue(&mut tx, &ctx.session_id, peer_side, ev, now).await?;
        }
        tx.commit().await.map_err(dbe("commit signal"))?;
        self.inner.hub.wake(&ctx.session_id, peer_side).await;
        Ok(())
    }

    async fn mark_described(&self, tx: &mut Tx, ctx: &StreamCtx) -> Result<(), Status> {
        sqlx::query(
            "UPDATE signalling_participants SET described = 1 WHERE session_id = $1 AND side = $2",
        )
        .bind(&ctx.session_id)
        .bind(ctx.side)
        .execute(&mut **tx)
        .await
        .map_err(dbe("described"))?;
        Ok(())
    }

    /// Ends sessions past their window, lets go of participants who did not come back within
    /// the grace period, and notices participants whose replica stopped refreshing their
    /// presence. Runs on every replica; every step is a conditional update, so replicas agree.
    pub async fn run_sweeper(self) {
        let mut stop = self.inner.platform.shutdown.clone();
        let mut tick = tokio::time::interval(self.inner.cfg.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::hub::stopped(&mut stop) => return,
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "signalling sweep failed");
            }
        }
    }

    async fn sweep(&self) -> Result<(), Status> {
        let db = self.inner.platform.db.clone();
        let now = self.now_ms();
        // 1. Sessions whose join window closed.
        let expired = sqlx::query(
            "SELECT appointment_id FROM signalling_sessions WHERE ended_at IS NULL AND window_end < $1 LIMIT 100",
        )
        .bind(now)
        .fetch_all(db.read())
        .await
        .map_err(dbe("expired sessions"))?;
        for r in expired {
            let appointment_id: String = r.try_get("appointment_id").map_err(dbe("row"))?;
            let mut tx = self.begin_locked(&appointment_id).await?;
            let Some(s) = Self::session_for_update(&mut tx, &appointment_id).await? else {
                continue;
            };
            if s.ended_at.is_some() || s.window_end >= now {
                continue;
            }
            let reason = if s.connected_at.is_some() {
                pb::EndReason::Timeout
            } else {
                pb::EndReason::FailedToConnect
            };
            self.end_in(&mut tx, &s, reason, false, now).await?;
            tx.commit().await.map_err(dbe("commit expiry"))?;
            self.inner.hub.wake(&s.session_id, 0).await;
        }
        // 2. Disconnected participants past the grace period.
        let grace_start = now - self.inner.cfg.reconnect_grace.num_milliseconds();
        let gone = sqlx::query(
            "SELECT p.session_id, s.appointment_id, p.side FROM signalling_participants p \
             JOIN signalling_sessions s ON s.session_id = p.session_id \
             WHERE p.state = 3 AND p.disconnected_at < $1 AND s.ended_at IS NULL LIMIT 100",
        )
        .bind(grace_start)
        .fetch_all(db.read())
        .await
        .map_err(dbe("gone participants"))?;
        for r in gone {
            let session_id: String = r.try_get("session_id").map_err(dbe("row"))?;
            let appointment_id: String = r.try_get("appointment_id").map_err(dbe("row"))?;
            let side: i64 = r.try_get("side").map_err(dbe("row"))?;
            let mut tx = self.begin_locked(&appointment_id).await?;
            let n = sqlx::query(
                "UPDATE signalling_participants SET state = 4, left_at = $1, left_reason = $2 \
                 WHERE session_id = $3 AND side = $4 AND state = 3 AND disconnected_at < $5",
            )
            .bind(now)
            .bind(pb::LeaveReason::Gone as i32 as i64)
            .bind(&session_id)
            .bind(side)
            .bind(grace_start)
            .execute(&mut *tx)
            .await
            .map_err(dbe("gone"))?
            .rows_affected();
            if n > 0 {
                Self::enqueue(
                    &mut tx,
                    &session_id,
                    other(side),
                    Ev::PeerLeft(pb::PeerLeft {
                        side: side_pb(side) as i32,
                        reason: pb::LeaveReason::Gone as i32,
                        rejoin_deadline: None,
                    }),
                    now,
                )
                .await?;
            }
            tx.commit().await.map_err(dbe("commit gone"))?;
            if n > 0 {
                self.inner.hub.wake(&session_id, other(side)).await;
            }
        }
        // 3. Online participants without presence: their replica died.
        let online = sqlx::query(
            "SELECT p.session_id, s.appointment_id, p.side, p.epoch FROM signalling_participants p \
             JOIN signalling_sessions s ON s.session_id = p.session_id \
             WHERE p.state = 2 AND s.ended_at IS NULL LIMIT 1000",
        )
        .fetch_all(db.read())
        .await
        .map_err(dbe("online participants"))?;
        for r in online {
            let ctx_session: String = r.try_get("session_id").map_err(dbe("row"))?;
            let side: i64 = r.try_get("side").map_err(dbe("row"))?;
            let alive = self
                .inner
                .hub
                .alive(&ctx_session, side)
                .await
                .map_err(|e| econsult_runtime::grpc::anyhow_status("presence", e))?;
            if alive {
                continue;
            }
            let ctx = StreamCtx {
                session_id: ctx_session,
                appointment_id: r.try_get("appointment_id").map_err(dbe("row"))?,
                side,
                epoch: r.try_get("epoch").map_err(dbe("row"))?,
                welcome: pb::Welcome::default(),
            };
            tracing::info!(session_id = %ctx.session_id, side, "participant lost (no presence)");
            self.close_stream(&ctx, StreamEnd::Dropped).await?;
        }
        // 4. Queued signals of sessions that ended a day ago are no longer needed.
        let mut tx = db.begin().await.map_err(dbe("begin"))?;
        sqlx::query(
            "DELETE FROM signalling_messages WHERE session_id IN \
             (SELECT session_id FROM signalling_sessions WHERE ended_at < $1)",
        )
        .bind(now - 24 * 3600 * 1000)
        .execute(&mut *tx)
        .await
        .map_err(dbe("prune signals"))?;
        tx.commit().await.map_err(dbe("commit prune"))?;
        Ok(())
    }
}
