//! The README walk-through "The guarantee engine" (`econsult walkthrough guarantee` runs it): against a
//! running `econsult serve`, a practice whose patient's own GP has no slot within five working
//! days but a colleague has a video slot in time; the patient sees the engine's offers, each
//! with its reason, and joins the priority waitlist. Tokens are minted by the local development
//! key; times are Oslo local time.

use crate::walkthrough::{Walkers, authed, day_and_time, instant, key, oslo_at};
use chrono::Utc;
use econsult_calendar::{Calendar, oslo_date};
use econsult_proto::booking::v1 as pb;
use pb::booking_service_client::BookingServiceClient;
use std::io::Write;
use std::path::Path;

const ORG: &str = "920000002";

/// Publishes one 20-minute slot of `gp_id` of `modality` in the first free hour of the working
/// day `n` working days from today (or a later one).
async fn publish_one(
    c: &mut BookingServiceClient<tonic::transport::Channel>,
    ehr: &str,
    gp_id: &str,
    n: u32,
    modality: pb::Modality,
) -> anyhow::Result<pb::Slot> {
    let calendar = Calendar::norwegian();
    let today = oslo_date(Utc::now());
    for d in n..n + 5 {
        let day = calendar.add_working_days(today, d);
        for hour in 8..=15 {
            let Some(start) = oslo_at(day, hour) else {
                continue;
            };
            let request = pb::PublishSlotsRequest {
                gp_id: gp_id.into(),
                slots: vec![pb::NewSlot {
                    start: Some(econsult_runtime::grpc::timestamp(start)),
                    duration_minutes: 20,
                    modality: modality as i32,
                    acute_reserve: false,
                }],
                idempotency_key: key(),
            };
            match c.publish_slots(authed(request, ehr)?).await {
                Ok(r) => {
                    return r
                        .into_inner()
                        .slots
                        .pop()
                        .ok_or_else(|| anyhow::anyhow!("no slot published"));
                }
                Err(s)
                    if s.code() == tonic::Code::InvalidArgument
                        && s.message().contains("overlaps") => {}
                Err(s) => return Err(s.into()),
            }
        }
    }
    anyhow::bail!("no free hour for {gp_id}: start with a fresh data directory")
}

fn step_name(v: i32) -> String {
    pb::GuaranteeStep::try_from(v)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("GUARANTEE_STEP_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| v.to_string())
}

/// Runs the walk-through against the server at `addr` whose development key is in `data_dir`,
/// writing what happens to `out`, one line a step.
pub async fn guarantee(addr: String, data_dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let Walkers { ehr, nin, patient } = Walkers::mint(data_dir, ORG)?;
    let mut c = BookingServiceClient::connect(addr).await?;
    for (gp_id, name, hpr) in [
        ("gp-full", "Dr Full", "9876501"),
        ("gp-video", "Dr Video", "9876502"),
    ] {
        let gp = pb::Gp {
            gp_id: gp_id.into(),
            hpr_number: hpr.into(),
            display_name: name.into(),
            municipality_number: "0301".into(),
            list_capacity: 1200,
            list_status: pb::ListStatus::Staffed as i32,
            ..Default::default()
        };
        c.upsert_gp(authed(pb::UpsertGpRequest { gp: Some(gp) }, &ehr)?)
            .await?;
    }
    let list = pb::UpdateListRequest {
        gp_id: "gp-full".into(),
        add: vec![nin.clone()],
        remove: vec![],
        idempotency_key: key(),
    };
    c.update_list(authed(list, &ehr)?).await?;
    let own = publish_one(&mut c, &ehr, "gp-full", 10, pb::Modality::InPerson).await?;
    let video = publish_one(&mut c, &ehr, "gp-video", 3, pb::Modality::Video).await?;
    let when = |s: &pb::Slot| {
        instant(s.start.as_ref())
            .map(day_and_time)
            .unwrap_or_default()
    };
    writeln!(
        out,
        "EHR: patient {nin} (synthetic) is on gp-full's list; gp-full's first slot is {}, gp-video has a video slot {}",
        when(&own),
        when(&video)
    )?;
    let policy = c
        .get_guarantee_policy(authed(pb::GetGuaranteePolicyRequest {}, &ehr)?)
        .await?
        .into_inner();
    let steps: Vec<String> = policy.steps.iter().map(|s| step_name(*s)).collect();
    writeln!(
        out,
        "EHR: guarantee policy (default: {}): {}; alert above {} unmet request(s) per GP",
        if policy.is_default { "yes" } else { "no" },
        steps.join(", "),
        policy.unmet_alert_threshold
    )?;

    let found = c
        .find_slots(authed(pb::FindSlotsRequest::default(), &patient)?)
        .await?
        .into_inner();
    writeln!(
        out,
        "patient: within five working days: {}, by the own GP: {}, met by: {}",
        if found.within_five_working_days {
            "yes"
        } else {
            "no"
        },
        if found.met_by_own_gp { "yes" } else { "no" },
        step_name(found.met_by_step)
    )?;
    for (i, o) in found.guarantee.iter().enumerate() {
        writeln!(
            out,
            "patient: offer {}: {}: {}",
            i + 1,
            step_name(o.step),
            o.reason
        )?;
    }
    let entry = c
        .join_waitlist(authed(
            pb::JoinWaitlistRequest {
                latest_date: String::new(),
                modality: 0,
                idempotency_key: key(),
                request_id: found.request_id,
            },
            &patient,
        )?)
        .await?
        .into_inner();
    writeln!(
        out,
        "patient: on the priority waitlist until {}: a slot of the practice that frees up by then is held for me first",
        entry.latest_date
    )?;
    Ok(())
}
