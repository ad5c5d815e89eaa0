//! The scenarios: each seeds its own synthetic data through the public gRPC API (GPs, lists,
//! slots, patients), runs one flow per arrival, and checks the database afterwards.
//!
//! - `rush`: FindSlots → HoldSlot → Book (≈5 % then Cancel), patients drawn with a Zipf-like skew
//!   towards a few hot GPs, each picking one of the first offered slots, so concurrent patients
//!   race for the same slots. FAILED_PRECONDITION on HoldSlot/Book (a lost race) is expected.
//! - `messaging`: StartConsultation → SendMessage (≈5 % retried with the same idempotency key,
//!   which must return the same message) → practice Reply (asking the patient for more, so the
//!   thread stays open); some patients hold a Subscribe stream that must receive every message
//!   of their threads exactly once, and every practice holds a WatchInbox stream that must
//!   receive every message and every thread start of its threads exactly once.
//! - `baseline`: the standard gRPC health Check on the same server (no auth, no database).
//! - `mixed`: rush and messaging flows in national proportions (`--mixed-rush-share`).

use crate::engine::{Outcome, RpcTimes, Scenario, record, status_error, timed, uncertain};
use crate::target::Target;
use anyhow::Context as _;
use chrono::{Duration as CDuration, Utc};
use econsult_proto::booking::v1 as bpb;
use econsult_proto::consultation::v1 as cpb;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

pub(crate) type Auth = MetadataValue<Ascii>;

/// `msg` with the caller's token, and what the access log needs from a practice's or EHR
/// system's call (its purpose, the acting person: `econsult_runtime::auth::dev_call_headers`).
pub(crate) fn req<T>(msg: T, auth: &Auth) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", auth.clone());
    let token = auth.to_str().unwrap_or("").trim_start_matches("Bearer ");
    for (name, value) in econsult_runtime::auth::dev_call_headers(token) {
        if let Ok(v) = value.parse() {
            r.metadata_mut().insert(name, v);
        }
    }
    r
}

/// A fresh idempotency key (also a tag for seeded ids).
pub(crate) fn key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Creates a staffed GP (Oslo, capacity 2 500) of the caller's practice and puts `nins` on its
/// list, 2 000 per call.
pub(crate) async fn upsert_gp_with_list(
    c: &mut bpb::booking_service_client::BookingServiceClient<Channel>,
    gp_id: &str,
    hpr: &str,
    display_name: String,
    nins: &[String],
    auth: &Auth,
) -> anyhow::Result<()> {
    c.upsert_gp(req(
        bpb::UpsertGpRequest {
            gp: Some(bpb::Gp {
                gp_id: gp_id.to_owned(),
                hpr_number: hpr.to_owned(),
                display_name,
                org_number: String::new(),
                municipality_number: "0301".into(),
                list_capacity: 2500,
                list_status: bpb::ListStatus::Staffed as i32,
                list_size: 0,
                practice_name: String::new(),
            }),
        },
        auth,
    ))
    .await
    .context("UpsertGp")?;
    for chunk in nins.chunks(2000) {
        c.update_list(req(
            bpb::UpdateListRequest {
                gp_id: gp_id.to_owned(),
                add: chunk.to_vec(),
                remove: vec![],
                idempotency_key: key(),
            },
            auth,
        ))
        .await
        .context("UpdateList")?;
    }
    Ok(())
}

fn rng_for(salt: u64, n: u64) -> StdRng {
    StdRng::seed_from_u64(salt ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The outcome of a database check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &str, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

/// What a scenario seeded.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SeedInfo {
    pub practices: usize,
    pub gps: usize,
    pub patients: usize,
    pub slots: usize,
    pub subscribers: usize,
    pub seconds: f64,
}

/// Shape of the synthetic data and flows.
#[derive(Debug, Clone)]
pub struct Shape {
    pub gps: usize,
    pub gps_per_practice: usize,
    pub patients_per_gp: usize,
    pub zipf_s: f64,
    pub cancel_ratio: f64,
    pub messaging_patients: usize,
    pub subscribers: usize,
    pub retry_ratio: f64,
}

// ------------------------------------------------------------------------------------ seeding

struct SeededGp {
    org: String,
    gp_id: String,
    hpr: String,
    nins: Vec<String>,
}

/// Creates `gps` GPs in practices of `per_practice` (GP i in practice i mod P, so the hot GPs of
/// a skewed draw are spread over the practices), `patients_per_gp[i]` patients each, and
/// `slots_per_gp[i]` contiguous slots from tomorrow 00:00 UTC within seven days.
#[allow(clippy::too_many_arguments)]
async fn seed_gps(
    target: &Target,
    channels: &[Channel],
    org_base: u64,
    nin_base: u64,
    gps: usize,
    per_practice: usize,
    patients_per_gp: usize,
    slots_per_gp: &[usize],
) -> anyhow::Result<(Vec<SeededGp>, usize, usize)> {
    let tag = &key()[..8];
    let practices = gps.div_ceil(per_practice.max(1)).max(1);
    let orgs: Vec<String> = (0..practices)
        .map(|p| format!("{:09}", org_base + p as u64))
        .collect();
    let ehr: Vec<Auth> = orgs
        .iter()
        .map(|o| target.ehr(o))
        .collect::<anyhow::Result<_>>()?;
    let tomorrow = (Utc::now() + CDuration::days(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .context("midnight")?
        .and_utc();
    let jobs = (0..gps).map(|i| {
        let org_i = i % practices;
        let org = orgs[org_i].clone();
        let auth = ehr[org_i].clone();
        let ch = channels[i % channels.len()].clone();
        let gp_id = format!("load-{tag}-gp{i}");
        let hpr = format!("{}", 7_000_000 + i as u64);
        let nins: Vec<String> = (0..patients_per_gp)
            .map(|j| {
                econsult_runtime::nin::synthetic(nin_base + (i * patients_per_gp + j) as u64)
                    .as_str()
                    .to_owned()
            })
            .collect();
        let n_slots = slots_per_gp.get(i).copied().unwrap_or(0).min(10_080);
        async move {
            let mut c = bpb::booking_service_client::BookingServiceClient::new(ch);
            upsert_gp_with_list(&mut c, &gp_id, &hpr, format!("Dr Load {i}"), &nins, &auth).await?;
            if let Some(len_min) = 10_080usize.checked_div(n_slots) {
                let len_min = len_min.clamp(1, 15) as i64;
                let starts: Vec<_> = (0..n_slots as i64)
                    .map(|j| tomorrow + CDuration::minutes(j * len_min))
                    .collect();
                for chunk in starts.chunks(1000) {
                    let slots = chunk
                        .iter()
                        .map(|s| bpb::NewSlot {
                            start: Some(prost_types::Timestamp {
                                seconds: s.timestamp(),
                                nanos: 0,
                            }),
                            duration_minutes: len_min as u32,
                            modality: bpb::Modality::InPerson as i32,
                            acute_reserve: false,
                        })
                        .collect();
                    c.publish_slots(req(
                        bpb::PublishSlotsRequest {
                            gp_id: gp_id.clone(),
                            slots,
                            idempotency_key: key(),
                        },
                        &auth,
                    ))
                    .await
                    .context("PublishSlots")?;
                }
            }
            anyhow::Ok(SeededGp {
                org,
                gp_id,
                hpr,
                nins,
            })
        }
    });
    let mut out: Vec<SeededGp> = futures::stream::iter(jobs)
        .buffered(4)
        .try_collect()
        .await?;
    out.sort_by_key(|g| {
        g.gp_id
            .rsplit("gp")
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    });
    let slots = slots_per_gp.iter().map(|s| (*s).min(10_080)).sum();
    Ok((out, practices, slots))
}

// --------------------------------------------------------------------------------------- rush

/// FindSlots → HoldSlot → Book (→ Cancel) with skew towards hot GPs.
pub struct Rush {
    times: Arc<RpcTimes>,
    /// (nin, token) by GP, `patients_per_gp` each.
    patients: Vec<(String, Auth)>,
    /// Patients with a flow running: a patient does not book twice at the same time (one hold
    /// per patient: a second flow would release the first one's hold).
    busy: Vec<std::sync::atomic::AtomicBool>,
    per_gp: usize,
    /// Cumulative Zipf weights over GPs.
    cum: Vec<f64>,
    cancel_ratio: f64,
    salt: u64,
    since_ms: i64,
    /// `gp_uid IN (…)` of this seed's GPs: the checks count only their appointments, so runs
    /// one after the other on one database do not see each other's.
    own_gps: String,
    booked: AtomicU64,
    /// The appointment ids Book answered OK with: a check that finds fewer stored names the
    /// ones it cannot find.
    booked_ids: std::sync::Mutex<Vec<String>>,
    cancelled: AtomicU64,
    lost_race: AtomicU64,
    no_slot: AtomicU64,
    uncertain_book: AtomicU64,
    uncertain_cancel: AtomicU64,
    /// Bookings of flows that shared their patient with another flow (every patient of the GP
    /// was busy): two flows of one patient may book twice on one booking request.
    shared_booked: AtomicU64,
    pub seed: SeedInfo,
}

fn zipf_weights(n: usize, s: f64) -> Vec<f64> {
    let w: Vec<f64> = (0..n).map(|i| 1.0 / ((i + 1) as f64).powf(s)).collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|x| x / total).collect()
}

impl Rush {
    /// Seeds GPs, lists and enough slots for `planned_flows` flows (each GP gets slots in
    /// proportion to its share of the traffic, plus headroom).
    pub async fn seed(
        target: &Target,
        channels: &[Channel],
        times: Arc<RpcTimes>,
        shape: &Shape,
        planned_flows: u64,
    ) -> anyhow::Result<Arc<Self>> {
        let t0 = std::time::Instant::now();
        let gps = shape.gps.max(1);
        let shares = zipf_weights(gps, shape.zipf_s);
        let slots: Vec<usize> = shares
            .iter()
            .map(|s| (s * planned_flows as f64 * 1.5).ceil() as usize + 5)
            .collect();
        let since_ms = Utc::now().timestamp_millis() - 1000;
        // Fresh practices and patients per seed. A patient whose GP has no slot in time is
        // offered the colleagues' slots in the practice, and an earlier seed's GPs on the same
        // database (`--efficiency` runs a sweep, two runs and the mixed day on one) were
        // colleagues when they shared its organisation numbers: a Book then took such a slot,
        // and the checks, which count this seed's GPs, missed it (one appointment in two runs
        // of hundreds). Patients are fresh too: a move between practices is ops' MoveListing.
        static ROUND: AtomicU64 = AtomicU64::new(0);
        let round = ROUND.fetch_add(1, Ordering::Relaxed) % 100;
        let n_practices = gps.div_ceil(shape.gps_per_practice.max(1));
        anyhow::ensure!(n_practices <= 10_000, "at most 10 000 rush practices");
        anyhow::ensure!(
            gps * shape.patients_per_gp.max(1) <= 90_000,
            "at most 90 000 rush patients"
        );
        let (seeded, practices, n_slots) = seed_gps(
            target,
            channels,
            930_000_000 + round * 10_000,
            1_000_000 + round * 90_000,
            gps,
            shape.gps_per_practice,
            shape.patients_per_gp.max(1),
            &slots,
        )
        .await?;
        let mut patients = Vec::new();
        for g in &seeded {
            for nin in &g.nins {
                patients.push((nin.clone(), target.patient(nin)?));
            }
        }
        // gp ids are `load-<tag>-gp<i>`, the tag fresh per seed (hex: nothing to escape).
        let tag = seeded
            .first()
            .and_then(|g| g.gp_id.rsplit_once("-gp"))
            .map(|(t, _)| t.to_owned())
            .context("no GP seeded")?;
        let own_gps =
            format!("gp_uid IN (SELECT gp_uid FROM booking_gps WHERE gp_id LIKE '{tag}-gp%')");
        let mut acc = 0.0;
        let cum = shares
            .iter()
            .map(|s| {
                acc += s;
                acc
            })
            .collect();
        let seed = SeedInfo {
            practices,
            gps,
            patients: patients.len(),
            slots: n_slots,
            subscribers: 0,
            seconds: t0.elapsed().as_secs_f64(),
        };
        Ok(Arc::new(Self {
            times,
            busy: (0..patients.len())
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            patients,
            per_gp: shape.patients_per_gp.max(1),
            cum,
            cancel_ratio: shape.cancel_ratio,
            salt: rand::random(),
            since_ms,
            own_gps,
            booked: AtomicU64::new(0),
            booked_ids: std::sync::Mutex::default(),
            cancelled: AtomicU64::new(0),
            lost_race: AtomicU64::new(0),
            no_slot: AtomicU64::new(0),
            uncertain_book: AtomicU64::new(0),
            uncertain_cancel: AtomicU64::new(0),
            shared_booked: AtomicU64::new(0),
            seed,
        }))
    }

    async fn run(&self, n: u64, ch: Channel) -> Outcome {
        let (gp, p, pick, cancel) = {
            let mut rng = rng_for(self.salt, n);
            let x: f64 = rng.gen_range(0.0..1.0);
            let gp = self.cum.partition_point(|c| *c < x).min(self.cum.len() - 1);
            let p = rng.gen_range(0..self.per_gp);
            let pick = rng.gen_range(0..3usize);
            let cancel = rng.gen_bool(self.cancel_ratio.clamp(0.0, 1.0));
            (gp, p, pick, cancel)
        };
        // Another patient of the same GP when this one is busy (all busy: share one).
        let base = gp * self.per_gp;
        let chosen = (0..self.per_gp)
            .map(|probe| base + (p + probe) % self.per_gp)
            .find(|&i| !self.busy[i].swap(true, Ordering::AcqRel));
        let _guard = chosen.map(|i| BusyGuard(&self.busy[i]));
        let (_, auth) = &self.patients[chosen.unwrap_or(base + p)];
        let mut c = bpb::booking_service_client::BookingServiceClient::new(ch);
        let found = match timed(
            &self.times,
            "booking.FindSlots",
            c.find_slots(req(
                bpb::FindSlotsRequest {
                    limit: 10,
                    ..Default::default()
                },
                auth,
            )),
        )
        .await
        {
            Ok(f) => f,
            Err(s) => return status_error("FindSlots", &s),
        };
        let Some(slot) = found
            .slots
            .get(pick.min(found.slots.len().saturating_sub(1)))
            .and_then(|o| o.slot.clone())
        else {
            self.no_slot.fetch_add(1, Ordering::Relaxed);
            return Outcome::Expected("no_slot_offered");
        };
        let hold = match timed(
            &self.times,
            "booking.HoldSlot",
            c.hold_slot(req(
                bpb::HoldSlotRequest {
                    slot_id: slot.slot_id,
                    request_id: found.request_id.clone(),
                    idempotency_key: key(),
                },
                auth,
            )),
        )
        .await
        {
            Ok(h) => h,
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                self.lost_race.fetch_add(1, Ordering::Relaxed);
                return Outcome::Expected("lost_race_hold");
            }
            Err(s) => return status_error("HoldSlot", &s),
        };
        let appt = match timed(
            &self.times,
            "booking.Book",
            c.book(req(
                bpb::BookRequest {
                    target: Some(bpb::book_request::Target::HoldId(hold.hold_id)),
                    reason: "load test".into(),
                    request_id: found.request_id,
                    idempotency_key: key(),
                },
                auth,
            )),
        )
        .await
        {
            Ok(a) => a,
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                self.lost_race.fetch_add(1, Ordering::Relaxed);
                return Outcome::Expected("lost_race_book");
            }
            Err(s) if s.code() == tonic::Code::NotFound && chosen.is_none() => {
                // Every patient of the GP was busy, so this flow shared a patient with another
                // one, whose HoldSlot released this flow's hold (one hold per patient).
                self.lost_race.fetch_add(1, Ordering::Relaxed);
                return Outcome::Expected("hold_released_by_same_patient");
            }
            Err(s) => {
                if uncertain(s.code()) {
                    self.uncertain_book.fetch_add(1, Ordering::Relaxed);
                }
                return status_error("Book", &s);
            }
        };
        self.booked.fetch_add(1, Ordering::Relaxed);
        self.booked_ids
            .lock()
            .expect("booked ids")
            .push(appt.appointment_id.clone());
        if chosen.is_none() {
            self.shared_booked.fetch_add(1, Ordering::Relaxed);
        }
        if cancel {
            match timed(
                &self.times,
                "booking.Cancel",
                c.cancel(req(
                    bpb::CancelRequest {
                        appointment_id: appt.appointment_id,
                        idempotency_key: key(),
                    },
                    auth,
                )),
            )
            .await
            {
                Ok(_) => {
                    self.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Err(s) => {
                    if uncertain(s.code()) {
                        self.uncertain_cancel.fetch_add(1, Ordering::Relaxed);
                    }
                    return status_error("Cancel", &s);
                }
            }
        }
        Outcome::Ok
    }

    /// The appointment ids Book answered OK with that are not stored at all, and those stored
    /// for a GP that is not this seed's (at most five of each).
    async fn unaccounted_bookings(
        &self,
        target: &Target,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let since = self.since_ms;
        let ids = async |filter: &str| -> anyhow::Result<std::collections::HashSet<String>> {
            let sql = format!(
                "SELECT appointment_id FROM booking_appointments WHERE booked_at >= {since}{filter}"
            );
            Ok(target.query_strings(&sql).await?.into_iter().collect())
        };
        let anywhere = ids("").await?;
        let own = ids(&format!(" AND {}", self.own_gps)).await?;
        let answered = self.booked_ids.lock().expect("booked ids").clone();
        let lost = answered.iter().filter(|id| !anywhere.contains(*id));
        let elsewhere = answered
            .iter()
            .filter(|id| anywhere.contains(*id) && !own.contains(*id));
        Ok((
            lost.take(5).cloned().collect(),
            elsewhere.take(5).cloned().collect(),
        ))
    }

    /// Counters of the run.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("booked".into(), self.booked.load(Ordering::Relaxed)),
            ("cancelled".into(), self.cancelled.load(Ordering::Relaxed)),
            ("lost_race".into(), self.lost_race.load(Ordering::Relaxed)),
            (
                "no_slot_offered".into(),
                self.no_slot.load(Ordering::Relaxed),
            ),
            (
                "shared_patient_bookings".into(),
                self.shared_booked.load(Ordering::Relaxed),
            ),
        ])
    }

    /// The database checks; `abandoned` flows (client timeouts) may have changed the database
    /// without the generator knowing.
    pub async fn checks(&self, target: &Target, abandoned: u64) -> Vec<Check> {
        let mut out = Vec::new();
        match target
            .query_strings(
                "SELECT slot_id FROM booking_appointments WHERE status <> 4 GROUP BY slot_id HAVING COUNT(*) > 1",
            )
            .await
        {
            Ok(rows) => out.push(Check::new(
                "no slot has more than one non-cancelled appointment",
                rows.is_empty(),
                if rows.is_empty() {
                    "0 double-booked slots".to_owned()
                } else {
                    format!("{} double-booked slots, e.g. {}", rows.len(), rows[0])
                },
            )),
            Err(e) => out.push(Check::new("double booking query", false, format!("{e:#}"))),
        }
        let booked = self.booked.load(Ordering::Relaxed) as i64;
        let cancelled = self.cancelled.load(Ordering::Relaxed) as i64;
        let slack_book = (self.uncertain_book.load(Ordering::Relaxed) + abandoned) as i64;
        let slack_cancel = (self.uncertain_cancel.load(Ordering::Relaxed) + abandoned) as i64;
        let since = self.since_ms;
        let own = &self.own_gps;
        match target
            .count(&format!(
                "SELECT COUNT(*) FROM booking_appointments WHERE booked_at >= {since} AND {own}"
            ))
            .await
        {
            Ok(rows) => {
                let (lost, elsewhere) = match self.unaccounted_bookings(target).await {
                    Ok(found) => found,
                    Err(e) => (
                        vec![format!("? the stored ids could not be read: {e:#}")],
                        vec![],
                    ),
                };
                let ok = rows >= booked
                    && rows <= booked + slack_book
                    && lost.is_empty()
                    && elsewhere.is_empty();
                let mut detail = format!(
                    "{rows} appointments created, {booked} Book calls answered OK (allowed surplus for unknown outcomes: {slack_book})"
                );
                if !lost.is_empty() {
                    detail += &format!("; answered OK but not stored: {}", lost.join(", "));
                }
                if !elsewhere.is_empty() {
                    detail += &format!(
                        "; stored for a GP of another seed (the run's own count misses them): {}",
                        elsewhere.join(", ")
                    );
                }
                out.push(Check::new(
                    "every Book answered OK is stored once",
                    ok,
                    detail,
                ));
            }
            Err(e) => out.push(Check::new("appointment count", false, format!("{e:#}"))),
        }
        match target
            .count(&format!(
                "SELECT COUNT(*) FROM booking_appointments WHERE booked_at >= {since} AND status <> 4 AND {own}"
            ))
            .await
        {
            Ok(rows) => {
                let want = booked - cancelled;
                let ok = (rows - want).abs() <= slack_book + slack_cancel;
                out.push(Check::new(
                    "active appointments = booked - cancelled",
                    ok,
                    format!(
                        "{rows} active, {booked} booked - {cancelled} cancelled = {want} (allowed difference: {})",
                        slack_book + slack_cancel
                    ),
                ));
            }
            Err(e) => out.push(Check::new("active appointment count", false, format!("{e:#}"))),
        }
        match target
            .count(
                "SELECT COUNT(*) FROM booking_appointments a JOIN booking_slots s ON s.slot_id = a.slot_id WHERE a.status = 1 AND s.status <> 2",
            )
            .await
        {
            Ok(rows) => out.push(Check::new(
                "the slot of every booked appointment is busy",
                rows == 0,
                format!("{rows} booked appointments on a slot that is not busy"),
            )),
            Err(e) => out.push(Check::new("slot status query", false, format!("{e:#}"))),
        }
        // Every flow searched first: its booking closed the booking request (episode) its
        // search opened, written with the hold or the booking (a search writes nothing itself).
        // Two flows that shared a patient searched within one request, which the first booking
        // closed: the second booking is that request's too, and closes none (the figure counts
        // requests, not bookings).
        let shared = self.shared_booked.load(Ordering::Relaxed) as i64;
        match target
            .count(&format!(
                "SELECT COUNT(*) FROM booking_appointments a WHERE a.booked_at >= {since} AND a.{own} AND a.rescheduled_from IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM booking_episodes e WHERE e.patient_nin = a.patient_nin \
                 AND e.chosen_slot_id = a.slot_id AND e.outcome = 1)"
            ))
            .await
        {
            Ok(rows) => out.push(Check::new(
                "every booking closed the booking request of its search",
                rows <= shared,
                format!(
                    "{rows} bookings without a booked request (allowed: {shared} bookings of flows that shared their patient)"
                ),
            )),
            Err(e) => out.push(Check::new("booking request query", false, format!("{e:#}"))),
        }
        out
    }
}

struct BusyGuard<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Scenario for Rush {
    fn flow(self: Arc<Self>, n: u64, channel: Channel) -> BoxFuture<'static, Outcome> {
        Box::pin(async move { self.run(n, channel).await })
    }
}

// ---------------------------------------------------------------------------------- messaging

struct MPatient {
    auth: Auth,
    org: usize,
    hpr: String,
}

#[derive(Default)]
struct Subscriber {
    expected: Mutex<HashSet<String>>,
    received: Mutex<HashSet<String>>,
    duplicates: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A practice's WatchInbox stream: what it must receive and what it got.
#[derive(Default)]
struct Watcher {
    /// Messages of the practice's threads answered OK.
    expected: Mutex<HashSet<String>>,
    /// Threads of the practice started (answered OK).
    expected_started: Mutex<HashSet<String>>,
    received: Mutex<HashSet<String>>,
    received_started: Mutex<HashSet<String>>,
    duplicates: AtomicU64,
    /// Changes received, by kind (`ChangeKind` as i32).
    changes: Mutex<BTreeMap<i32, u64>>,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// StartConsultation → SendMessage → Reply, with Subscribe streams for some patients and a
/// WatchInbox stream per practice.
pub struct Messaging {
    times: Arc<RpcTimes>,
    patients: Vec<MPatient>,
    ehr: Vec<Auth>,
    subs: HashMap<usize, Arc<Subscriber>>,
    delivery: Arc<Mutex<Histogram<u64>>>,
    /// One per practice (index as in `ehr`).
    watchers: Vec<Arc<Watcher>>,
    inbox_delivery: Arc<Mutex<Histogram<u64>>>,
    stop: tokio::sync::watch::Sender<bool>,
    stream_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    salt: u64,
    retry_ratio: f64,
    rows_before: i64,
    accepted: Mutex<HashSet<String>>,
    threads: AtomicU64,
    retries: AtomicU64,
    retry_mismatch: AtomicU64,
    uncertain: AtomicU64,
    pub seed: SeedInfo,
}

impl Messaging {
    /// Seeds practices, GPs and patients, and opens the Subscribe and WatchInbox streams.
    pub async fn seed(
        target: &Target,
        channels: &[Channel],
        times: Arc<RpcTimes>,
        shape: &Shape,
    ) -> anyhow::Result<Arc<Self>> {
        let t0 = std::time::Instant::now();
        // Only messages sent from now on are timed: the streams start at cursor 0, so they
        // replay an earlier scenario's messages of the same practice or patient (`mixed` after
        // `messaging` seeds the same organisation), whose lag would be the time between them.
        let since_ms = Utc::now().timestamp_millis();
        let n_patients = shape.messaging_patients.max(1);
        let per_gp = 50usize.min(n_patients);
        let gps = n_patients.div_ceil(per_gp);
        // Fresh patients and practices per seed: a patient may have at most 10 open
        // e-consultations, and each flow leaves its thread open (the reply asks for more), so a
        // second scenario on the same database (`--efficiency` runs four) would be refused
        // with the first's; and a practice's WatchInbox starts at cursor 0, so it would first
        // replay every earlier scenario's changes.
        static ROUND: AtomicU64 = AtomicU64::new(0);
        let round = ROUND.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(n_patients <= 100_000, "at most 100 000 messaging patients");
        let (seeded, practices, _) = seed_gps(
            target,
            channels,
            940_000_000 + round * 10_000,
            10_000_000 + round * 100_000,
            gps,
            10,
            per_gp,
            &[],
        )
        .await?;
        let mut orgs: Vec<String> = seeded.iter().map(|g| g.org.clone()).collect();
        orgs.sort();
        orgs.dedup();
        let ehr = orgs
            .iter()
            .map(|o| target.ehr(o))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut patients = Vec::new();
        for g in &seeded {
            let org = orgs.binary_search(&g.org).unwrap_or(0);
            for nin in &g.nins {
                if patients.len() < n_patients {
                    patients.push(MPatient {
                        auth: target.patient(nin)?,
                        org,
                        hpr: g.hpr.clone(),
                    });
                }
            }
        }
        let rows_before = if target.can_check() {
            target
                .count("SELECT COUNT(*) FROM consultation_messages")
                .await
                .unwrap_or(-1)
        } else {
            -1
        };
        let (stop, _) = tokio::sync::watch::channel(false);
        let delivery = Arc::new(Mutex::new(crate::engine::histogram()));
        let n_subs = shape.subscribers.min(patients.len());
        let mut subs = HashMap::new();
        let mut tasks = Vec::new();
        // Spread the subscribers over the patient list.
        let stride = (patients.len() / n_subs.max(1)).max(1);
        for s in 0..n_subs {
            let pi = s * stride;
            let sub = Arc::new(Subscriber::default());
            subs.insert(pi, sub.clone());
            tasks.push(tokio::spawn(subscribe_loop(
                sub,
                channels[s % channels.len()].clone(),
                patients[pi].auth.clone(),
                delivery.clone(),
                stop.subscribe(),
                since_ms,
            )));
        }
        let inbox_delivery = Arc::new(Mutex::new(crate::engine::histogram()));
        let mut watchers = Vec::new();
        for (o, auth) in ehr.iter().enumerate() {
            let w = Arc::new(Watcher::default());
            watchers.push(w.clone());
            tasks.push(tokio::spawn(watch_loop(
                w,
                channels[o % channels.len()].clone(),
                auth.clone(),
                inbox_delivery.clone(),
                stop.subscribe(),
                since_ms,
            )));
        }
        let seed = SeedInfo {
            practices,
            gps,
            patients: patients.len(),
            slots: 0,
            subscribers: n_subs,
            seconds: t0.elapsed().as_secs_f64(),
        };
        Ok(Arc::new(Self {
            times,
            patients,
            ehr,
            subs,
            delivery,
            watchers,
            inbox_delivery,
            stop,
            stream_tasks: Mutex::new(tasks),
            salt: rand::random(),
            retry_ratio: shape.retry_ratio,
            rows_before,
            accepted: Mutex::new(HashSet::new()),
            threads: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retry_mismatch: AtomicU64::new(0),
            uncertain: AtomicU64::new(0),
            seed,
        }))
    }

    fn accept(&self, patient: usize, message: Option<&cpb::Message>) {
        let Some(m) = message else { return };
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(m.message_id.clone());
        if let Some(w) = self.watchers.get(self.patients[patient].org) {
            w.expected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(m.message_id.clone());
        }
        if let Some(sub) = self.subs.get(&patient) {
            sub.expected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(m.message_id.clone());
        }
    }

    fn failed(&self, rpc: &str, s: &tonic::Status) -> Outcome {
        if uncertain(s.code()) {
            self.uncertain.fetch_add(1, Ordering::Relaxed);
        }
        status_error(rpc, s)
    }

    async fn run(&self, n: u64, ch: Channel) -> Outcome {
        let (pi, retry) = {
            let mut rng = rng_for(self.salt, n);
            (
                rng.gen_range(0..self.patients.len()),
                rng.gen_bool(self.retry_ratio.clamp(0.0, 1.0)),
            )
        };
        let p = &self.patients[pi];
        let mut c = cpb::consultation_service_client::ConsultationServiceClient::new(ch);
        let started = match timed(
            &self.times,
            "consultation.StartConsultation",
            c.start_consultation(req(
                cpb::StartConsultationRequest {
                    category: cpb::Category::EConsultation as i32,
                    subject: format!("Load test {n}"),
                    body: "I have had a cough for two weeks. Should I come in?".into(),
                    attachments: vec![],
                    urgent: false,
                    language: String::new(),
                    idempotency_key: key(),
                    booking_request_id: String::new(),
                },
                &p.auth,
            )),
        )
        .await
        {
            Ok(r) => r,
            Err(s) => return self.failed("StartConsultation", &s),
        };
        self.threads.fetch_add(1, Ordering::Relaxed);
        self.accept(pi, started.message.as_ref());
        let Some(thread_id) = started.thread.map(|t| t.thread_id) else {
            return Outcome::Error(
                "BAD_RESPONSE".into(),
                "StartConsultation without thread".into(),
            );
        };
        if let Some(w) = self.watchers.get(p.org) {
            w.expected_started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(thread_id.clone());
        }
        let send = cpb::SendMessageRequest {
            thread_id: thread_id.clone(),
            body: "It is worse at night, and I have a slight fever.".into(),
            attachments: vec![],
            idempotency_key: key(),
        };
        let sent = match timed(
            &self.times,
            "consultation.SendMessage",
            c.send_message(req(send.clone(), &p.auth)),
        )
        .await
        {
            Ok(r) => r,
            Err(s) => return self.failed("SendMessage", &s),
        };
        self.accept(pi, sent.message.as_ref());
        if retry {
            // A client retry with the same key must return the same message, not a second one.
            self.retries.fetch_add(1, Ordering::Relaxed);
            match timed(
                &self.times,
                "consultation.SendMessage(retry)",
                c.send_message(req(send, &p.auth)),
            )
            .await
            {
                Ok(again) => {
                    let first = sent.message.as_ref().map(|m| m.message_id.as_str());
                    let second = again.message.as_ref().map(|m| m.message_id.as_str());
                    if first != second {
                        self.retry_mismatch.fetch_add(1, Ordering::Relaxed);
                        self.accept(pi, again.message.as_ref());
                        return Outcome::Error(
                            "IDEMPOTENCY_VIOLATION".into(),
                            format!("retry returned {second:?}, first call {first:?}"),
                        );
                    }
                }
                Err(s) => return self.failed("SendMessage(retry)", &s),
            }
        }
        let replied = match timed(
            &self.times,
            "consultation.Reply",
            c.reply(req(
                cpb::ReplyRequest {
                    thread_id,
                    body: "How high is the fever? Please measure it tonight & tell us.".into(),
                    attachments: vec![],
                    ask_patient: true,
                    clinician_hpr_number: p.hpr.clone(),
                    idempotency_key: key(),
                },
                &self.ehr[p.org],
            )),
        )
        .await
        {
            Ok(r) => r,
            Err(s) => return self.failed("Reply", &s),
        };
        self.accept(pi, replied.message.as_ref());
        Outcome::Ok
    }

    /// Waits (up to `wait`) until every subscriber has received the messages of its threads,
    /// then closes the streams.
    pub async fn drain_streams(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let missing: usize = self
                .subs
                .values()
                .map(|s| missing_of(s).len())
                .sum::<usize>()
                + self
                    .watchers
                    .iter()
                    .map(|w| {
                        let (m, s) = missing_in_inbox(w);
                        m.len() + s.len()
                    })
                    .sum::<usize>();
            if missing == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        let tasks =
            std::mem::take(&mut *self.stream_tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }

    /// Counters of the run.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let accepted = self
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64;
        let received: u64 = self
            .subs
            .values()
            .map(|s| s.received.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
            .sum();
        BTreeMap::from([
            (
                "threads_started".into(),
                self.threads.load(Ordering::Relaxed),
            ),
            ("messages_accepted".into(), accepted),
            (
                "idempotent_retries".into(),
                self.retries.load(Ordering::Relaxed),
            ),
            ("subscribe_streams".into(), self.subs.len() as u64),
            ("stream_messages_received".into(), received),
            (
                "stream_reconnects".into(),
                self.subs
                    .values()
                    .map(|s| s.reconnects.load(Ordering::Relaxed))
                    .sum(),
            ),
            ("inbox_streams".into(), self.watchers.len() as u64),
            (
                "inbox_changes_received".into(),
                self.inbox_changes().values().sum(),
            ),
            (
                "inbox_reconnects".into(),
                self.watchers
                    .iter()
                    .map(|w| w.reconnects.load(Ordering::Relaxed))
                    .sum(),
            ),
        ])
    }

    /// Changes received on the WatchInbox streams, by kind (`started`, `message`, `state`,
    /// `read`).
    pub fn inbox_changes(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for w in &self.watchers {
            for (k, n) in w.changes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let name = cpb::ChangeKind::try_from(*k)
                    .map(|k| {
                        k.as_str_name()
                            .trim_start_matches("CHANGE_KIND_")
                            .to_lowercase()
                    })
                    .unwrap_or_else(|_| format!("kind {k}"));
                *out.entry(name).or_default() += n;
            }
        }
        out
    }

    /// Delivery latency on the WatchInbox streams (message stored → received).
    pub fn inbox_delivery(&self) -> crate::engine::LatencySummary {
        crate::engine::LatencySummary::of(
            &self
                .inbox_delivery
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Delivery latency on the Subscribe streams (message stored → received).
    pub fn delivery(&self) -> crate::engine::LatencySummary {
        crate::engine::LatencySummary::of(&self.delivery.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The database and stream checks.
    pub async fn checks(&self, target: &Target, abandoned: u64) -> Vec<Check> {
        let mut out = Vec::new();
        let accepted = self
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len() as i64;
        let slack = (self.uncertain.load(Ordering::Relaxed) + abandoned) as i64;
        if target.can_check() && self.rows_before >= 0 {
            match target
                .count("SELECT COUNT(*) FROM consultation_messages")
                .await
            {
                Ok(after) => {
                    let stored = after - self.rows_before;
                    out.push(Check::new(
                        "every accepted message is stored exactly once",
                        stored >= accepted && stored <= accepted + slack,
                        format!(
                            "{stored} messages stored during the run, {accepted} distinct messages answered OK (allowed surplus for unknown outcomes: {slack})"
                        ),
                    ));
                }
                Err(e) => out.push(Check::new("message count", false, format!("{e:#}"))),
            }
            match target
                .query_strings(
                    "SELECT thread_id FROM consultation_messages GROUP BY thread_id, seq HAVING COUNT(*) > 1",
                )
                .await
            {
                Ok(rows) => out.push(Check::new(
                    "no duplicate (thread_id, seq)",
                    rows.is_empty(),
                    format!("{} duplicates", rows.len()),
                )),
                Err(e) => out.push(Check::new("duplicate seq query", false, format!("{e:#}"))),
            }
            match target
                .count(
                    "SELECT COUNT(*) FROM consultation_threads t WHERE t.last_seq <> \
                     (SELECT COUNT(*) FROM consultation_messages m WHERE m.thread_id = t.thread_id)",
                )
                .await
            {
                Ok(n) => out.push(Check::new(
                    "message seqs are 1..n without gaps",
                    n == 0,
                    format!("{n} threads whose last_seq differs from their message count"),
                )),
                Err(e) => out.push(Check::new("seq gap query", false, format!("{e:#}"))),
            }
        }
        let mismatches = self.retry_mismatch.load(Ordering::Relaxed);
        out.push(Check::new(
            "an idempotent retry returns the first message",
            mismatches == 0,
            format!(
                "{} retries, {mismatches} returned a different message",
                self.retries.load(Ordering::Relaxed)
            ),
        ));
        let (mut missing, mut dups, mut expected) = (0usize, 0u64, 0usize);
        let mut sample = None;
        for s in self.subs.values() {
            let m = missing_of(s);
            if sample.is_none() && !m.is_empty() {
                sample = s
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
            }
            missing += m.len();
            dups += s.duplicates.load(Ordering::Relaxed);
            expected += s.expected.lock().unwrap_or_else(|e| e.into_inner()).len();
        }
        out.push(Check::new(
            "Subscribe streams deliver every message of the patient's threads exactly once",
            missing == 0 && dups == 0,
            format!(
                "{} streams, {expected} messages expected, {missing} missing, {dups} duplicates{}",
                self.subs.len(),
                sample
                    .map(|e| format!(" (last stream error: {e})"))
                    .unwrap_or_default()
            ),
        ));
        let (mut missing, mut missing_started, mut dups, mut expected, mut started) =
            (0usize, 0usize, 0u64, 0usize, 0usize);
        let mut sample = None;
        for w in &self.watchers {
            let (m, s) = missing_in_inbox(w);
            if sample.is_none() && !(m.is_empty() && s.is_empty()) {
                sample = w
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
            }
            missing += m.len();
            missing_started += s.len();
            dups += w.duplicates.load(Ordering::Relaxed);
            expected += w.expected.lock().unwrap_or_else(|e| e.into_inner()).len();
            started += w
                .expected_started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
        }
        out.push(Check::new(
            "WatchInbox streams deliver every thread start and message of the practice exactly once",
            missing == 0 && missing_started == 0 && dups == 0,
            format!(
                "{} streams, {started} starts and {expected} messages expected, {missing_started} starts and {missing} messages missing, {dups} duplicates{}",
                self.watchers.len(),
                sample
                    .map(|e| format!(" (last stream error: {e})"))
                    .unwrap_or_default()
            ),
        ));
        out
    }
}

/// The messages and thread starts `w` has not received yet.
fn missing_in_inbox(w: &Watcher) -> (Vec<String>, Vec<String>) {
    let diff = |a: &Mutex<HashSet<String>>, b: &Mutex<HashSet<String>>| {
        let a = a.lock().unwrap_or_else(|e| e.into_inner());
        let b = b.lock().unwrap_or_else(|e| e.into_inner());
        a.difference(&b).cloned().collect::<Vec<_>>()
    };
    (
        diff(&w.expected, &w.received),
        diff(&w.expected_started, &w.received_started),
    )
}

/// Milliseconds since the epoch of `t`.
fn epoch_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Records the delivery lag (now − `sent_at`) of a message sent at or after `since_ms`; earlier
/// messages (a replay of an earlier scenario's threads) are not timed.
fn time_delivery(
    delivery: &Mutex<Histogram<u64>>,
    sent_at: Option<&prost_types::Timestamp>,
    since_ms: i64,
) {
    if let Some(sent_ms) = sent_at.map(epoch_ms)
        && sent_ms >= since_ms
    {
        let lag = Utc::now().timestamp_millis() - sent_ms;
        let mut h = delivery.lock().unwrap_or_else(|e| e.into_inner());
        record(&mut h, Duration::from_millis(lag.max(0) as u64));
    }
}

/// Counts a dropped or refused stream and keeps its error for the report.
fn stream_failed(reconnects: &AtomicU64, last_error: &Mutex<Option<String>>, s: &tonic::Status) {
    reconnects.fetch_add(1, Ordering::Relaxed);
    *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
        "{}: {}",
        crate::engine::code_name(s.code()),
        s.message()
    ));
}

/// Holds practice `auth`'s WatchInbox stream until `stop`, reconnecting from the last cursor,
/// and times every message change (message `sent_at` → received).
async fn watch_loop(
    w: Arc<Watcher>,
    channel: Channel,
    auth: Auth,
    delivery: Arc<Mutex<Histogram<u64>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    since_ms: i64,
) {
    let mut cursor = 0u64;
    let fail = |w: &Watcher, s: &tonic::Status| stream_failed(&w.reconnects, &w.last_error, s);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut c =
            cpb::consultation_service_client::ConsultationServiceClient::new(channel.clone());
        let opened = tokio::select! {
            r = c.watch_inbox(req(cpb::WatchInboxRequest { after_cursor: cursor }, &auth)) => r,
            _ = stop.changed() => return,
        };
        match opened {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let item = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.changed() => return,
                    };
                    let change = match item {
                        Ok(Some(change)) => change,
                        Ok(None) => break,
                        Err(s) => {
                            fail(&w, &s);
                            break;
                        }
                    };
                    cursor = cursor.max(change.cursor);
                    *w.changes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(change.kind)
                        .or_default() += 1;
                    if change.kind == cpb::ChangeKind::Started as i32
                        && let Some(t) = change.thread
                    {
                        let fresh = w
                            .received_started
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(t.thread_id);
                        if !fresh {
                            w.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(m) = change.message {
                        time_delivery(&delivery, m.sent_at.as_ref(), since_ms);
                        let fresh = w
                            .received
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(m.message_id);
                        if !fresh {
                            w.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(s) => fail(&w, &s),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
}

fn missing_of(s: &Subscriber) -> Vec<String> {
    let expected = s.expected.lock().unwrap_or_else(|e| e.into_inner());
    let received = s.received.lock().unwrap_or_else(|e| e.into_inner());
    expected.difference(&received).cloned().collect()
}

async fn subscribe_loop(
    sub: Arc<Subscriber>,
    channel: Channel,
    auth: Auth,
    delivery: Arc<Mutex<Histogram<u64>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    since_ms: i64,
) {
    let mut cursor = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut c =
            cpb::consultation_service_client::ConsultationServiceClient::new(channel.clone());
        let opened = tokio::select! {
            r = c.subscribe(req(cpb::SubscribeRequest { after_cursor: cursor }, &auth)) => r,
            _ = stop.changed() => return,
        };
        match opened {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let item = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.changed() => return,
                    };
                    match item {
                        Ok(Some(change)) => {
                            cursor = cursor.max(change.cursor);
                            if let Some(m) = change.message {
                                time_delivery(&delivery, m.sent_at.as_ref(), since_ms);
                                let fresh = sub
                                    .received
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(m.message_id);
                                if !fresh {
                                    sub.duplicates.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(s) => {
                            stream_failed(&sub.reconnects, &sub.last_error, &s);
                            break;
                        }
                    }
                }
            }
            Err(s) => stream_failed(&sub.reconnects, &sub.last_error, &s),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Scenario for Messaging {
    fn flow(self: Arc<Self>, n: u64, channel: Channel) -> BoxFuture<'static, Outcome> {
        Box::pin(async move { self.run(n, channel).await })
    }
}

// ----------------------------------------------------------------------------------- baseline

/// The standard gRPC health Check: the cost of an empty call on the same server.
pub struct Baseline {
    pub times: Arc<RpcTimes>,
}

impl Scenario for Baseline {
    fn flow(self: Arc<Self>, _n: u64, channel: Channel) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            use tonic_health::pb::health_check_response::ServingStatus;
            let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
            match timed(
                &self.times,
                "grpc.health.v1.Health/Check",
                c.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await
            {
                Ok(r) if r.status == ServingStatus::Serving as i32 => Outcome::Ok,
                Ok(r) => {
                    Outcome::Error("NOT_SERVING".into(), format!("health status {}", r.status))
                }
                Err(s) => status_error("Check", &s),
            }
        })
    }
}

// -------------------------------------------------------------------------------------- mixed

/// Rush and messaging flows, `rush_share` of them rush, spread evenly.
pub struct Mixed {
    pub rush: Arc<Rush>,
    pub messaging: Arc<Messaging>,
    /// Share of flows that are rush flows (0..=1), spread evenly over the sequence.
    pub rush_share: f64,
}

impl Mixed {
    /// Whether flow `n` is a rush flow, and its number within its own scenario: flow `n` is a
    /// rush flow when ⌊(n+1)·share⌋ > ⌊n·share⌋, so both sub-sequences are dense from 0.
    pub fn route(share: f64, n: u64) -> (bool, u64) {
        let before = (n as f64 * share).floor() as u64;
        let after = ((n + 1) as f64 * share).floor() as u64;
        if after > before {
            (true, before)
        } else {
            (false, n - before)
        }
    }
}

impl Scenario for Mixed {
    fn flow(self: Arc<Self>, n: u64, channel: Channel) -> BoxFuture<'static, Outcome> {
        match Mixed::route(self.rush_share, n) {
            (true, k) => self.rush.clone().flow(k, channel),
            (false, k) => self.messaging.clone().flow(k, channel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Mixed;

    #[test]
    fn the_mix_keeps_its_share_and_numbers_each_side_densely() {
        for share in [0.0, 0.25, 0.54, 0.5, 1.0] {
            let (mut rush, mut messaging) = (Vec::new(), Vec::new());
            for n in 0..1000 {
                match Mixed::route(share, n) {
                    (true, k) => rush.push(k),
                    (false, k) => messaging.push(k),
                }
            }
            assert_eq!(rush.len(), (1000.0 * share) as usize, "share {share}");
            assert!(
                rush.iter().copied().eq(0..rush.len() as u64),
                "share {share}"
            );
            assert!(
                messaging.iter().copied().eq(0..messaging.len() as u64),
                "share {share}"
            );
        }
    }
}
