//! The README walk-through "Booking a slot, step by step" (`econsult walkthrough book-a-slot` runs it):
//! against a running `econsult serve`, act as the GP's EHR (create a GP, put a fresh synthetic
//! patient on the list, publish slots on the next working day of the national calendar) and then
//! as the patient (find, hold, book, list), with tokens minted by the local development key. Times
//! are shown in words as Oslo local time. A test runs it against the real binary and compares
//! what it writes with README.md.

use chrono::{DateTime, Duration, NaiveDate, TimeZone as _, Utc};
use chrono_tz::Europe::Oslo;
use econsult_calendar::{Calendar, oslo_date};
use econsult_proto::booking::v1 as pb;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use econsult_runtime::grpc::timestamp;
use pb::booking_service_client::BookingServiceClient;
use std::io::Write;
use std::path::Path;

const ORG: &str = "910000001";

pub(crate) fn authed<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // A practice states its purpose, an EHR system the person it acts for (the access log).
    for (name, value) in econsult_runtime::auth::dev_call_headers(token) {
        req.metadata_mut().insert(name, value.parse()?);
    }
    Ok(req)
}

pub(crate) fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) fn instant(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, 0))
}

/// "Monday 7 December 2026 at 08:00" in Oslo time.
pub(crate) fn day_and_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&Oslo)
        .format("%A %-d %B %Y at %H:%M")
        .to_string()
}

/// "08:00" in Oslo time.
fn time_of_day(t: DateTime<Utc>) -> String {
    t.with_timezone(&Oslo).format("%H:%M").to_string()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `hour`:00 Oslo time on `day`.
pub(crate) fn oslo_at(day: NaiveDate, hour: u32) -> Option<DateTime<Utc>> {
    Oslo.from_local_datetime(&day.and_hms_opt(hour, 0, 0)?)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// The walk-throughs' callers, with tokens of the development key in `data_dir`: the EHR of
/// `org` (booking read and write) and a fresh synthetic patient (40 years old, as
/// `econsult dev-nin --age 40` prints) with the patient's number.
pub(crate) struct Walkers {
    pub ehr: String,
    pub nin: String,
    pub patient: String,
}

impl Walkers {
    pub(crate) fn mint(data_dir: &Path, org: &str) -> anyhow::Result<Self> {
        let keys = DevKeys::load_or_create(data_dir)?;
        let now = Utc::now().timestamp();
        let ehr = keys.mint(
            &TokenSpec::Ehr {
                client_id: "demo-epj".into(),
                org_number: org.into(),
                scopes: vec![
                    "econsult:booking.read".into(),
                    "econsult:booking.write".into(),
                ],
            },
            now,
            600,
        )?;
        let nin = econsult_runtime::nin::synthetic_aged(
            oslo_date(Utc::now()),
            40,
            &mut rand::thread_rng(),
        )
        .ok_or_else(|| anyhow::anyhow!("no synthetic number"))?
        .as_str()
        .to_owned();
        let patient = keys.mint(
            &TokenSpec::Patient {
                nin: nin.clone(),
                acr: REQUIRED_ACR.into(),
            },
            now,
            600,
        )?;
        Ok(Self { ehr, nin, patient })
    }
}

/// Runs the walk-through against the server at `addr` (`http://…`) whose development key is in
/// `data_dir`, writing what happens to `out`, one line a step.
pub async fn book_a_slot(
    addr: String,
    data_dir: &Path,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let Walkers { ehr, nin, patient } = Walkers::mint(data_dir, ORG)?;
    let mut c = BookingServiceClient::connect(addr).await?;

    // As the EHR: a GP and a list member.
    let gp = pb::Gp {
        gp_id: "gp-demo".into(),
        hpr_number: "9876543".into(),
        display_name: "Dr Demo".into(),
        municipality_number: "0301".into(),
        list_capacity: 1200,
        list_status: pb::ListStatus::Staffed as i32,
        ..Default::default()
    };
    c.upsert_gp(authed(pb::UpsertGpRequest { gp: Some(gp) }, &ehr)?)
        .await?;
    let list = pb::UpdateListRequest {
        gp_id: "gp-demo".into(),
        add: vec![nin.clone()],
        remove: vec![],
        idempotency_key: key(),
    };
    let size = c
        .update_list(authed(list, &ehr)?)
        .await?
        .into_inner()
        .list_size;
    writeln!(
        out,
        "EHR: put patient {nin} (synthetic) on gp-demo's list, which has {size} person(s) now"
    )?;

    // Three 20-minute slots in the first free hour (08:00 to 15:00, Oslo time) of the next
    // working day on the national calendar, or of the one after when an earlier run filled it.
    let calendar = Calendar::norwegian();
    let today = oslo_date(Utc::now());
    let mut published = None;
    'days: for n in 1..=5 {
        let day = calendar.add_working_days(today, n);
        for hour in 8..=15 {
            let Some(first) = oslo_at(day, hour) else {
                continue;
            };
            let slots = (0..3)
                .map(|i| pb::NewSlot {
                    start: Some(timestamp(first + Duration::minutes(20 * i))),
                    duration_minutes: 20,
                    modality: pb::Modality::InPerson as i32,
                    acute_reserve: false,
                })
                .collect();
            let request = pb::PublishSlotsRequest {
                gp_id: "gp-demo".into(),
                slots,
                idempotency_key: key(),
            };
            match c.publish_slots(authed(request, &ehr)?).await {
                Ok(r) => {
                    published = Some((n, r.into_inner().slots));
                    break 'days;
                }
                // Slots of an earlier run are there: try the next hour.
                Err(s)
                    if s.code() == tonic::Code::InvalidArgument
                        && s.message().contains("overlaps") => {}
                Err(s) => return Err(s.into()),
            }
        }
    }
    let Some((n, slots)) = published else {
        anyhow::bail!("the next five working days are full: start with a fresh data directory");
    };
    let starts: Vec<DateTime<Utc>> = slots
        .iter()
        .filter_map(|s| instant(s.start.as_ref()))
        .collect();
    let (Some(first), Some(last)) = (starts.first(), starts.last()) else {
        anyhow::bail!("no slots published");
    };
    writeln!(
        out,
        "EHR: published {} slots from {} to {} (Oslo time), {n} working day(s) from today",
        starts.len(),
        day_and_time(*first),
        time_of_day(*last + Duration::minutes(20)),
    )?;

    // As the patient: find, hold, book, list.
    let found = c
        .find_slots(authed(pb::FindSlotsRequest::default(), &patient)?)
        .await?
        .into_inner();
    writeln!(out, "patient: {} slot(s) offered", found.slots.len())?;
    match instant(found.earliest_offer.as_ref()) {
        Some(t) => writeln!(
            out,
            "patient: earliest offer {} (Oslo time), {} working day(s) away",
            day_and_time(t),
            found.earliest_offer_working_days
        )?,
        None => writeln!(out, "patient: no offer")?,
    }
    writeln!(
        out,
        "patient: within five working days: {}, by the own GP: {}, patient's preference: {}",
        yes_no(found.within_five_working_days),
        yes_no(found.met_by_own_gp),
        yes_no(found.patient_preference)
    )?;
    let Some(slot) = found.slots.first().and_then(|s| s.slot.clone()) else {
        anyhow::bail!("no free slot to book");
    };
    let hold = c
        .hold_slot(authed(
            pb::HoldSlotRequest {
                slot_id: slot.slot_id,
                request_id: found.request_id.clone(),
                idempotency_key: key(),
            },
            &patient,
        )?)
        .await?
        .into_inner();
    let held = instant(hold.slot.as_ref().and_then(|s| s.start.as_ref()));
    let until = instant(hold.expires_at.as_ref());
    if let (Some(held), Some(until)) = (held, until) {
        writeln!(
            out,
            "patient: holding the slot on {} until {} (Oslo time)",
            day_and_time(held),
            until.with_timezone(&Oslo).format("%H:%M:%S")
        )?;
    }
    let book = pb::BookRequest {
        target: Some(pb::book_request::Target::HoldId(hold.hold_id)),
        reason: "check-up".into(),
        request_id: found.request_id,
        idempotency_key: key(),
    };
    let appt = c.book(authed(book, &patient)?).await?.into_inner();
    writeln!(
        out,
        "patient: booked appointment {}, status {}",
        appt.appointment_id,
        format!("{:?}", appt.status()).to_lowercase()
    )?;
    let mine = c
        .list_my_bookings(authed(pb::ListMyBookingsRequest::default(), &patient)?)
        .await?
        .into_inner();
    writeln!(
        out,
        "patient: {} upcoming appointment(s)",
        mine.appointments.len()
    )?;
    Ok(())
}
