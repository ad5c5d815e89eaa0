//! The README walk-through: against a running `econsult serve` (embedded defaults), act as the
//! GP's EHR (create a GP, put a synthetic patient on the list, publish slots) and then as the
//! patient (find, hold, book, list), with tokens minted by the local development key.
//!
//! ```text
//! cargo run -p econsult --example book_a_slot -- [http://127.0.0.1:50051] [data-dir]
//! ```

use chrono::{Duration, Timelike, Utc};
use econsult_proto::booking::v1 as pb;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use pb::booking_service_client::BookingServiceClient;

const ORG: &str = "910000001";

fn authed<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let data_dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "data".into()));
    let keys = DevKeys::load_or_create(&data_dir)?;
    let now = Utc::now().timestamp();
    let scopes = vec![
        "econsult:booking.read".into(),
        "econsult:booking.write".into(),
    ];
    let ehr = keys.mint(
        &TokenSpec::Ehr {
            client_id: "demo-epj".into(),
            org_number: ORG.into(),
            scopes,
        },
        now,
        600,
    )?;
    let nin = econsult_runtime::nin::synthetic(1).as_str().to_owned();
    let patient = keys.mint(
        &TokenSpec::Patient {
            nin: nin.clone(),
            acr: REQUIRED_ACR.into(),
        },
        now,
        600,
    )?;
    let mut c = BookingServiceClient::connect(addr).await?;

    // As the EHR: a GP, a list member, three slots tomorrow morning.
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
    println!("EHR: gp-demo has {size} person(s) on the list");
    let tomorrow = (Utc::now() + Duration::days(1))
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .unwrap_or_else(Utc::now);
    let slots = (0..3)
        .map(|i| pb::NewSlot {
            start: Some(prost_types::Timestamp {
                seconds: (tomorrow + Duration::minutes(20 * i)).timestamp(),
                nanos: 0,
            }),
            duration_minutes: 20,
            modality: pb::Modality::InPerson as i32,
            acute_reserve: false,
        })
        .collect();
    match c
        .publish_slots(authed(
            pb::PublishSlotsRequest {
                gp_id: "gp-demo".into(),
                slots,
                idempotency_key: key(),
            },
            &ehr,
        )?)
        .await
    {
        Ok(r) => println!("EHR: published {} slots", r.into_inner().slots.len()),
        Err(s) => println!(
            "EHR: slots not published ({}), using what is there",
            s.message()
        ),
    }

    // As the patient: find, hold, book, list.
    let found = c
        .find_slots(authed(pb::FindSlotsRequest::default(), &patient)?)
        .await?
        .into_inner();
    println!(
        "patient: {} slot(s) offered, earliest {} working day(s) away, within five working days: {}",
        found.slots.len(),
        found.earliest_offer_working_days,
        found.within_five_working_days
    );
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
    println!(
        "patient: holding {} until {:?}",
        hold.hold_id, hold.expires_at
    );
    let book = pb::BookRequest {
        target: Some(pb::book_request::Target::HoldId(hold.hold_id)),
        reason: "check-up".into(),
        request_id: found.request_id,
        idempotency_key: key(),
    };
    let appt = c.book(authed(book, &patient)?).await?.into_inner();
    println!(
        "patient: booked appointment {} (status {:?})",
        appt.appointment_id,
        appt.status()
    );
    let mine = c
        .list_my_bookings(authed(pb::ListMyBookingsRequest::default(), &patient)?)
        .await?
        .into_inner();
    println!(
        "patient: {} upcoming appointment(s)",
        mine.appointments.len()
    );
    Ok(())
}
