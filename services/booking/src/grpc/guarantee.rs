//! The guarantee engine's part of the adapter: its policy RPCs' checks and conversions, and the
//! engine's offers in FindSlots.

use super::convert::{key_field, slot_to};
use super::{SCOPE_READ, SCOPE_WRITE};
use crate::guarantee::{GuaranteeOffer, MAX_UNMET_THRESHOLD, MetBy, Policy, Step};
use crate::service::Booking;
use econsult_proto::booking::v1 as pb;
use econsult_runtime::auth::Caller;
use tonic::{Request, Response, Status};

fn step_from(v: i32, field: &str) -> Result<Step, Status> {
    Ok(match pb::GuaranteeStep::try_from(v) {
        Ok(pb::GuaranteeStep::Colleague) => Step::Colleague,
        Ok(pb::GuaranteeStep::VideoOrPhone) => Step::VideoOrPhone,
        Ok(pb::GuaranteeStep::EConsultation) => Step::EConsultation,
        Ok(pb::GuaranteeStep::PriorityWaitlist) => Step::PriorityWaitlist,
        Ok(pb::GuaranteeStep::TellPractice) => Step::TellPractice,
        Ok(pb::GuaranteeStep::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "{field}: unknown step {v}"
            )));
        }
    })
}

fn step_to(s: Step) -> pb::GuaranteeStep {
    match s {
        Step::Colleague => pb::GuaranteeStep::Colleague,
        Step::VideoOrPhone => pb::GuaranteeStep::VideoOrPhone,
        Step::EConsultation => pb::GuaranteeStep::EConsultation,
        Step::PriorityWaitlist => pb::GuaranteeStep::PriorityWaitlist,
        Step::TellPractice => pb::GuaranteeStep::TellPractice,
    }
}

/// The step a request was met by, as FindSlots reports it.
pub(super) fn met_by_to(m: Option<MetBy>) -> i32 {
    (match m {
        None => pb::GuaranteeStep::Unspecified,
        Some(MetBy::Colleague) => pb::GuaranteeStep::Colleague,
        Some(MetBy::VideoOrPhone) => pb::GuaranteeStep::VideoOrPhone,
        Some(MetBy::EConsultation) => pb::GuaranteeStep::EConsultation,
        Some(MetBy::PriorityWaitlist) => pb::GuaranteeStep::PriorityWaitlist,
    }) as i32
}

fn policy_to(p: &Policy) -> pb::GuaranteePolicy {
    pb::GuaranteePolicy {
        steps: p.steps.iter().map(|s| step_to(*s) as i32).collect(),
        unmet_alert_threshold: p.unmet_threshold,
        is_default: p.is_default,
    }
}

pub(super) fn offer_to(o: &GuaranteeOffer) -> pb::GuaranteeOffer {
    pb::GuaranteeOffer {
        step: step_to(o.step) as i32,
        reason: o.reason.clone(),
        slot: o.slot.as_ref().map(|s| pb::OfferedSlot {
            slot: Some(slot_to(&s.slot)),
            gp_display_name: s.gp_display_name.clone(),
            own_gp: s.own_gp,
            alternative_reason: s.alternative_reason.clone(),
            working_days_from_request: s.working_days,
        }),
        target_date: o.target_date.format("%Y-%m-%d").to_string(),
    }
}

/// SetGuaranteePolicy: EHR with the write scope, own organisation.
pub(super) async fn set_policy(
    svc: &Booking,
    req: Request<pb::SetGuaranteePolicyRequest>,
) -> Result<Response<pb::GuaranteePolicy>, Status> {
    let caller = Caller::from_request(&req)?.clone();
    let org = caller.org_with_scope(SCOPE_WRITE)?;
    let r = req.into_inner();
    key_field(&r.idempotency_key)?;
    let mut steps = Vec::with_capacity(r.steps.len());
    for (i, v) in r.steps.iter().enumerate() {
        let field = format!("steps[{i}]");
        let step = step_from(*v, &field)?;
        if steps.contains(&step) {
            return Err(Status::invalid_argument(format!(
                "{field}: step {} is listed twice",
                step.as_str()
            )));
        }
        steps.push(step);
    }
    if !(1..=MAX_UNMET_THRESHOLD).contains(&r.unmet_alert_threshold) {
        return Err(Status::invalid_argument(format!(
            "unmet_alert_threshold must be 1 to {MAX_UNMET_THRESHOLD}"
        )));
    }
    let p = svc
        .set_guarantee_policy(
            &caller,
            org,
            steps,
            r.unmet_alert_threshold,
            &r.idempotency_key,
        )
        .await?;
    Ok(Response::new(policy_to(&p)))
}

/// GetGuaranteePolicy: EHR with the read scope, own organisation.
pub(super) async fn get_policy(
    svc: &Booking,
    req: Request<pb::GetGuaranteePolicyRequest>,
) -> Result<Response<pb::GuaranteePolicy>, Status> {
    let caller = Caller::from_request(&req)?.clone();
    let org = caller.org_with_scope(SCOPE_READ)?;
    Ok(Response::new(policy_to(&svc.guarantee_policy(org).await?)))
}

/// A "booking.request_unmet" change, with the patient read from the request (the event does
/// not carry it).
pub(super) fn unmet_to(
    u: &econsult_runtime::events::RequestUnmet,
    patient_nin: &str,
) -> pb::UnmetRequest {
    pb::UnmetRequest {
        request_id: u.request_id.clone(),
        patient_nin: patient_nin.to_owned(),
        gp_id: u.gp_id.clone(),
        requested_at: Some(econsult_runtime::grpc::timestamp(
            econsult_runtime::clock::from_ms(u.requested_at_ms),
        )),
        target_date: u.target_date.clone(),
    }
}
