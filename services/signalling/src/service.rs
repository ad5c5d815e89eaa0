//! The signalling logic: access, join window, waiting room, per-participant event queues,
//! negotiation order, session record, and the end-of-session event. Commands and queries on
//! domain types, by use case:
//!
//! - [`session`]: JoinSession, Admit, GetIceServers, EndSession, GetSession;
//! - [`stream`]: a Signal stream from its Hello to its end (relay, resume, takeover, budget);
//! - [`sweep`]: the background sweeper (expired sessions, lost participants).
//!
//! Every change to a session runs in one transaction under the session's lock (PostgreSQL
//! advisory lock; SQLite has one writer), so checks and writes cannot interleave across replicas.

mod codec;
mod session;
mod stream;
mod sweep;

pub use codec::{Delivered, EventCodec};
pub use stream::Outgoing;

use crate::domain::{Event, IceServer, IceServers, Side};
use crate::error::SignallingError;
use crate::hub::Hub;
use crate::{SignallingConfig, store};
use econsult_booking::directory::{self, AppointmentRef, AppointmentStatus, Modality};
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::Tx;
use econsult_runtime::platform::Platform;
use std::sync::Arc;

fn lock_key(appointment_id: &str) -> String {
    format!("signalling:{appointment_id}")
}

/// The service logic; cheap to clone.
#[derive(Clone)]
pub struct Signalling {
    inner: Arc<Inner>,
}

struct Inner {
    platform: Platform,
    cfg: SignallingConfig,
    hub: Hub,
    instance_id: String,
    turn_secret: String,
    codec: Arc<dyn EventCodec>,
    /// The budgets of streams whose messages come by SendSignal, by (session, side, epoch).
    budgets: std::sync::Mutex<stream::Budgets>,
}

/// Who the caller is in a session (no `Debug`: the appointment holds the patient's identity
/// number in clear).
struct Access {
    appt: AppointmentRef,
    side: Side,
}

impl Signalling {
    /// The logic over `platform`; `redis_url` makes streams reach each other across replicas;
    /// `codec` is the stored form of queued events (the adapter's). Returns the background tasks
    /// to run (wake-up listener, sweeper); they end on shutdown.
    pub async fn start(
        platform: Platform,
        cfg: SignallingConfig,
        turn_secret: String,
        redis_url: Option<&str>,
        namespace: &str,
        instance_id: String,
        codec: Arc<dyn EventCodec>,
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
                codec,
                budgets: Default::default(),
            }),
        };
        tasks.push(Box::pin(svc.clone().run_sweeper()));
        Ok((svc, tasks))
    }

    /// The tunables.
    pub(crate) fn cfg(&self) -> &SignallingConfig {
        &self.inner.cfg
    }

    /// The platform (clock, database, shutdown signal).
    pub(crate) fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    fn now_ms(&self) -> i64 {
        self.inner.platform.clock.now_ms()
    }

    /// The caller's side in the appointment's session, or `PermissionDenied`.
    async fn authorize(
        &self,
        caller: &Caller,
        appointment_id: &str,
    ) -> Result<Access, SignallingError> {
        if appointment_id.trim().is_empty() {
            return Err(SignallingError::Invalid(
                "appointment_id is required".into(),
            ));
        }
        if appointment_id.len() > 100 {
            return Err(SignallingError::Invalid(
                "appointment_id is too long".into(),
            ));
        }
        // One read connection for both lookups; no transaction is open yet.
        let mut conn = self.inner.platform.db.read().acquire().await?;
        let appt = directory::appointment(&mut conn, appointment_id)
            .await?
            .ok_or_else(|| SignallingError::NotFound("appointment not found".into()))?;
        let side = match caller.role {
            Role::Patient => {
                let Some(nin) = &caller.nin else {
                    return Err(SignallingError::PermissionDenied(
                        "this call is for patients".into(),
                    ));
                };
                if nin.as_str() != appt.patient_nin {
                    return Err(SignallingError::PermissionDenied(
                        "only the booked patient and the practice may join this video consultation"
                            .into(),
                    ));
                }
                Side::Patient
            }
            Role::Clinician => {
                let (Some(hpr), Some(org)) = (&caller.hpr_number, &caller.org_number) else {
                    return Err(SignallingError::PermissionDenied(
                        "a clinician token needs an HPR number and an organisation".into(),
                    ));
                };
                if *org != appt.org_number {
                    return Err(SignallingError::PermissionDenied(
                        "this video consultation belongs to another practice".into(),
                    ));
                }
                if *hpr != appt.gp_hpr_number
                    && !store::granted(&mut conn, appointment_id, hpr).await?
                {
                    return Err(SignallingError::PermissionDenied(
                        "only the appointment's GP, or a colleague the GP admitted, may join"
                            .into(),
                    ));
                }
                Side::Practice
            }
            Role::Ehr | Role::Ops => {
                return Err(SignallingError::PermissionDenied(
                    "video consultations are for the patient and health personnel".into(),
                ));
            }
        };
        Ok(Access { appt, side })
    }

    /// The join window of an appointment, ms since the epoch.
    fn window(&self, appt: &AppointmentRef) -> (i64, i64) {
        let c = &self.inner.cfg;
        (
            appt.start_ms - c.join_before.num_milliseconds(),
            appt.end_ms + c.join_after_end.num_milliseconds(),
        )
    }

    /// `FailedPrecondition` unless the appointment is a live video consultation in its window.
    fn check_joinable(&self, appt: &AppointmentRef, now: i64) -> Result<(), SignallingError> {
        let refuse = |m: &str| Err(SignallingError::FailedPrecondition(m.to_owned()));
        if appt.modality != Modality::Video {
            return refuse("the appointment is not a video consultation");
        }
        match appt.status {
            AppointmentStatus::Cancelled => return refuse("the appointment is cancelled"),
            AppointmentStatus::NoShow => {
                return refuse("the appointment was recorded as a no-show");
            }
            _ => {}
        }
        let (start, end) = self.window(appt);
        if now < start || now > end {
            return Err(SignallingError::FailedPrecondition(format!(
                "outside the join window: the video consultation can be joined from {} until {}",
                from_ms(start).to_rfc3339(),
                from_ms(end).to_rfc3339()
            )));
        }
        Ok(())
    }

    /// A write transaction holding the session lock of `appointment_id`.
    async fn begin_locked(&self, appointment_id: &str) -> Result<Tx, SignallingError> {
        Ok(self
            .inner
            .platform
            .db
            .begin_locked(&lock_key(appointment_id))
            .await?)
    }

    /// Appends `event` to the queue of `side` (in its stored form: see [`EventCodec`]); returns
    /// its sequence number.
    async fn enqueue(
        &self,
        tx: &mut Tx,
        session_id: &str,
        side: Side,
        event: &Event,
        now: i64,
    ) -> Result<i64, SignallingError> {
        let body = self.inner.codec.encode(event, now);
        Ok(store::enqueue(tx, session_id, side, &body, now).await?)
    }

    /// STUN and TURN servers for `side`, with fresh TURN credentials.
    fn ice_servers(&self, appointment_id: &str, side: Side) -> IceServers {
        let c = &self.inner.cfg;
        let now = self.inner.platform.clock.now().timestamp();
        let subject = format!("{appointment_id}.{}", side.name()).replace(':', "-");
        let cred = crate::turn::credential(
            &self.inner.turn_secret,
            &subject,
            now,
            c.turn_ttl.as_secs() as i64,
        );
        let mut servers = Vec::new();
        if !c.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: c.stun_urls.clone(),
                username: String::new(),
                credential: String::new(),
            });
        }
        if !c.turn_urls.is_empty() {
            servers.push(IceServer {
                urls: c.turn_urls.clone(),
                username: cred.username,
                credential: cred.password,
            });
        }
        IceServers {
            servers,
            expires_at: cred.expires_at,
        }
    }
}
