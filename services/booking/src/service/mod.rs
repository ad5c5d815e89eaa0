//! Booking logic over the shared storage, by use case: [`schedule`] (the EHR's GPs, closures,
//! opening hours and slots), [`practice`] (lists, marks, the practice's bookings and
//! cancellations), [`patient`] (find, hold, book, cancel, reschedule), [`waitlist`] and
//! [`changes`] (the EHR's change stream). Every mutation runs through
//! [`econsult_runtime::command`]: one write transaction that also writes its outbox events, its
//! audit rows and its idempotency record; double booking is prevented by conditional updates and
//! the `booking_appointments_one_per_slot` unique index. Every statement is in [`crate::store`].

mod changes;
mod guarantee;
mod patient;
mod practice;
mod schedule;
mod take;
mod unmet;
mod waitlist;

pub use changes::Change;
pub use guarantee::record_e_consultation_reply;
pub use unmet::UNMET_EVERY;

use crate::domain::*;
use crate::episodes::{self, Channel, Episode, EpisodeMetrics, Pending};
use crate::error::BookingError;
use crate::store::{self, ListGp, Search};
use chrono::{DateTime, Duration, Utc};
use econsult_calendar::Calendar;
use econsult_runtime::auth::Caller;
use econsult_runtime::command::Command;
use econsult_runtime::db::Tx;
use econsult_runtime::events::AppointmentChanged;
use econsult_runtime::nin::NationalId;
use econsult_runtime::outbox::{self, NewEvent};
use econsult_runtime::platform::Platform;

/// Tunables.
#[derive(Debug, Clone)]
pub struct BookingConfig {
    /// How long a patient's hold lasts.
    pub hold_ttl: Duration,
    /// How long a hold offered from the waitlist lasts.
    pub waitlist_hold_ttl: Duration,
    /// How often the booking requests of searches are written (a crash loses at most this
    /// much of search-only requests, never one that was held or booked).
    pub episode_flush_interval: std::time::Duration,
}

impl Default for BookingConfig {
    fn default() -> Self {
        Self {
            hold_ttl: Duration::minutes(5),
            waitlist_hold_ttl: Duration::hours(2),
            episode_flush_interval: std::time::Duration::from_secs(1),
        }
    }
}

/// The booking service logic.
#[derive(Clone)]
pub struct Booking {
    p: Platform,
    cfg: BookingConfig,
    /// Searches' booking requests not written yet.
    pending: Pending,
    metrics: EpisodeMetrics,
}

/// The RPC names that scope idempotency keys and name audit actions.
pub(crate) mod rpc {
    pub const UPDATE_LIST: &str = "/econsult.booking.v1.BookingService/UpdateList";
    pub const MARK: &str = "/econsult.booking.v1.BookingService/MarkAppointment";
    pub const BOOK_FOR_PATIENT: &str = "/econsult.booking.v1.BookingService/BookForPatient";
    pub const CANCEL_BY_PRACTICE: &str = "/econsult.booking.v1.BookingService/CancelByPractice";
    pub const WATCH: &str = "/econsult.booking.v1.BookingService/WatchBookings";
    pub const FIND: &str = "/econsult.booking.v1.BookingService/FindSlots";
    pub const HOLD: &str = "/econsult.booking.v1.BookingService/HoldSlot";
    pub const BOOK: &str = "/econsult.booking.v1.BookingService/Book";
    pub const CANCEL: &str = "/econsult.booking.v1.BookingService/Cancel";
    pub const RESCHEDULE: &str = "/econsult.booking.v1.BookingService/Reschedule";
    pub const LIST_MINE: &str = "/econsult.booking.v1.BookingService/ListMyBookings";
    pub const JOIN_WAITLIST: &str = "/econsult.booking.v1.BookingService/JoinWaitlist";
    pub const LEAVE_WAITLIST: &str = "/econsult.booking.v1.BookingService/LeaveWaitlist";
    pub const MOVE_LISTING: &str = "/econsult.booking.v1.BookingService/MoveListing";
    pub const SET_CLOSURES: &str = "SetClosures";
    pub const SET_OPENING_HOURS: &str = "SetOpeningHours";
    pub const PUBLISH_SLOTS: &str = "PublishSlots";
    pub const WITHDRAW_SLOTS: &str = "WithdrawSlots";
    pub const SET_GUARANTEE_POLICY: &str = "SetGuaranteePolicy";
}

/// The event body of appointment `a` of organisation `org` (municipality `municipality`).
fn changed(a: &Appointment, org: &str, municipality: &str) -> AppointmentChanged {
    AppointmentChanged {
        appointment_id: a.appointment_id.clone(),
        slot_id: a.slot.slot_id.clone(),
        gp_id: a.gp_id.clone(),
        org_number: org.to_owned(),
        municipality_number: municipality.to_owned(),
        modality: a.slot.modality.as_str().to_owned(),
        start_ms: a.slot.start.timestamp_millis(),
        end_ms: a.slot.end.timestamp_millis(),
        status: a.status.fhir().to_owned(),
        booked_at_ms: a.booked_at.timestamp_millis(),
        cancelled_at_ms: a.cancelled_at.map(|t| t.timestamp_millis()),
        cancelled_by: a.cancelled_by.map(|c| c.as_str().to_owned()),
        late_cancellation: a.late_cancellation,
        rescheduled_from: a.rescheduled_from.clone(),
        gp_hpr_number: String::new(),
    }
}

fn already_booked() -> BookingError {
    BookingError::FailedPrecondition("slot is already booked".into())
}

/// The result of a call that inserted an appointment. The insert is deferred to the commit (one
/// round trip on PostgreSQL with the event, the audit row and the stored answer), so the unique
/// index's refusal of a second live appointment for the slot surfaces there: "already booked".
fn booked<T>(r: Result<T, BookingError>) -> Result<T, BookingError> {
    match r {
        Err(BookingError::Db(e)) if store::violates_one_per_slot(&e) => Err(already_booked()),
        r => r,
    }
}

fn not_on_a_list() -> BookingError {
    BookingError::FailedPrecondition("you are not on any GP's list in this service".into())
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The earliest slots the practice could offer for `e` at `now`, whatever a search's filters:
/// the own GP's (none for a list without GP), and the colleagues' and locum's when the own GP has
/// none in time; starting before `until`, acute reserve excluded.
async fn earliest_offers(
    conn: &mut sqlx::AnyConnection,
    gp: &ListGp,
    e: &Episode,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), BookingError> {
    let now_ms = now.timestamp_millis();
    let w = Search {
        only: "",
        except: "",
        from: now_ms,
        to: until.timestamp_millis(),
        now: now_ms,
        modality: None,
        limit: 1,
    };
    let first = async |conn: &mut sqlx::AnyConnection,
                       w: Search<'_>|
           -> Result<Option<DateTime<Utc>>, BookingError> {
        let slots = store::search(conn, &gp.org_number, w).await?;
        Ok(slots.first().map(|(s, _)| s.start))
    };
    let own = if gp.list_status == ListStatus::Vacant {
        None
    } else {
        first(
            conn,
            Search {
                only: &gp.gp_uid,
                ..w
            },
        )
        .await?
    };
    let others = if own.is_some_and(|t| e.in_time(t)) {
        None
    } else {
        first(
            conn,
            Search {
                except: &gp.gp_uid,
                ..w
            },
        )
        .await?
    };
    Ok((own, others))
}

/// Records that the practice converted an e-consultation of `nin` to a booking, inside the
/// conversion's transaction `tx`: the patient's open booking request, or a new one of channel
/// `e_consultation` from `now` with what the practice can offer now. Returns its id, for the
/// patient's HoldSlot/Book. `None` when the patient is on no list.
pub async fn record_conversion(
    tx: &mut Tx,
    nin: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, BookingError> {
    let Some((gp, cal)) = store::list_gp(tx, nin).await? else {
        return Ok(None);
    };
    if let Some(mut e) = episodes::open_of_patient(tx, nin, now).await? {
        e.searched(now, true);
        e.write(tx);
        return Ok(Some(e.request_id));
    }
    let mut e = Episode::open(nin, &gp.listed(), Channel::EConsultation, now, &cal);
    let (own, others) = earliest_offers(tx, &gp, &e, now, now + Duration::days(30)).await?;
    e.offered(own, others);
    e.searched(now, true);
    e.write(tx);
    EpisodeMetrics::default().opened(&e);
    Ok(Some(e.request_id))
}

impl Booking {
    /// The service over the platform.
    pub fn new(p: Platform, cfg: BookingConfig) -> Self {
        Self {
            p,
            cfg,
            pending: Pending::default(),
            metrics: EpisodeMetrics::default(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.p.clock.now()
    }

    /// The mutating call of `caller` to `rpc` with `key` and `request` (its idempotency record).
    fn command<'a, Req>(
        &self,
        caller: &'a Caller,
        rpc: &'a str,
        key: &'a str,
        request: &'a Req,
    ) -> Command<'a, Req> {
        Command::new(caller, rpc, key, request, self.p.clock.now_ms())
    }

    /// The GP of the patient's list, and the working days of the GP's practice. Only what the
    /// patient's calls need: not the list's size, a count over the whole list.
    async fn own_gp(
        &self,
        conn: &mut sqlx::AnyConnection,
        nin: &NationalId,
    ) -> Result<(ListGp, Calendar), BookingError> {
        store::list_gp(conn, nin.as_str())
            .await?
            .ok_or_else(not_on_a_list)
    }

    /// Writes the event `topic` of appointment `a` of organisation `org` (municipality `muni`)
    /// in `tx`, with the HPR number of its GP looked up.
    async fn emit(
        &self,
        tx: &mut Tx,
        topic: &str,
        a: &Appointment,
        org: &str,
        muni: &str,
        now: i64,
    ) -> Result<(), BookingError> {
        let hpr = store::hpr_number(tx, org, &a.gp_id).await?;
        self.emit_for(tx, topic, a, (org, muni, &hpr), now)
    }

    /// [`Self::emit`] when the GP's HPR number is already at hand (no lookup): `routing` is
    /// (organisation, municipality, HPR number).
    fn emit_for(
        &self,
        tx: &mut Tx,
        topic: &str,
        a: &Appointment,
        (org, muni, hpr): (&str, &str, &str),
        now: i64,
    ) -> Result<(), BookingError> {
        let mut body = changed(a, org, muni);
        body.gp_hpr_number = hpr.to_owned();
        outbox::write(
            tx,
            NewEvent {
                topic,
                org_number: org,
                route_key: &self.p.pseudonyms.key_for(&a.patient_nin),
                payload: &body,
            },
            now,
        )?;
        Ok(())
    }

    /// Background task: writes the searches' booking requests and access-log rows every
    /// [`BookingConfig::episode_flush_interval`], and once more at shutdown.
    pub async fn run_episode_flusher(self) {
        let mut stop = self.p.shutdown.clone();
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(self.cfg.episode_flush_interval) => false,
                _ = stop.changed() => true,
            };
            match self.pending.flush(&self.p.db).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, waiting = self.pending.len(), "booking request flush failed")
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes the searches' booking requests now (tests, shutdown).
    pub async fn flush_episodes(&self) -> Result<usize, BookingError> {
        Ok(self.pending.flush(&self.p.db).await?)
    }

    /// The platform (for the gRPC adapter's streams).
    pub fn platform(&self) -> &Platform {
        &self.p
    }
}
