//! Proto ⇄ domain conversions of the booking adapter: each field checked, `INVALID_ARGUMENT`
//! naming the field when it is not acceptable.

use crate::domain::*;
use econsult_proto::booking::v1 as pb;
use econsult_runtime::auth::Caller;
use econsult_runtime::clock::from_ms;
use econsult_runtime::events::{AppointmentChanged, ListMoved};
use econsult_runtime::grpc::{required_time, timestamp};
use econsult_runtime::nin::NationalId;
use tonic::Status;

pub(super) fn modality_from(
    v: i32,
    field: &str,
    required: bool,
) -> Result<Option<Modality>, Status> {
    match pb::Modality::try_from(v) {
        Ok(pb::Modality::InPerson) => Ok(Some(Modality::InPerson)),
        Ok(pb::Modality::Video) => Ok(Some(Modality::Video)),
        Ok(pb::Modality::Phone) => Ok(Some(Modality::Phone)),
        Ok(pb::Modality::Unspecified) if !required => Ok(None),
        Ok(pb::Modality::Unspecified) => {
            Err(Status::invalid_argument(format!("{field} is required")))
        }
        Err(_) => Err(Status::invalid_argument(format!(
            "{field} is not a known modality"
        ))),
    }
}

pub(super) fn modality_to(m: Modality) -> pb::Modality {
    match m {
        Modality::InPerson => pb::Modality::InPerson,
        Modality::Video => pb::Modality::Video,
        Modality::Phone => pb::Modality::Phone,
    }
}

pub(super) fn slot_to(s: &Slot) -> pb::Slot {
    pb::Slot {
        slot_id: s.slot_id.clone(),
        gp_id: s.gp_id.clone(),
        start: Some(timestamp(s.start)),
        end: Some(timestamp(s.end)),
        modality: modality_to(s.modality) as i32,
        status: match s.status {
            SlotStatus::Free => pb::SlotStatus::Free,
            SlotStatus::Busy => pb::SlotStatus::Busy,
            SlotStatus::BusyTentative => pb::SlotStatus::BusyTentative,
            SlotStatus::BusyUnavailable => pb::SlotStatus::BusyUnavailable,
        } as i32,
        acute_reserve: s.acute_reserve,
    }
}

pub(super) fn appt_status_to(s: AppointmentStatus) -> pb::AppointmentStatus {
    match s {
        AppointmentStatus::Booked => pb::AppointmentStatus::Booked,
        AppointmentStatus::Arrived => pb::AppointmentStatus::Arrived,
        AppointmentStatus::Fulfilled => pb::AppointmentStatus::Fulfilled,
        AppointmentStatus::Cancelled => pb::AppointmentStatus::Cancelled,
        AppointmentStatus::NoShow => pb::AppointmentStatus::Noshow,
    }
}

pub(super) fn cancelled_by_to(c: Option<CancelledBy>) -> pb::CancelledBy {
    match c {
        Some(CancelledBy::Patient) => pb::CancelledBy::Patient,
        Some(CancelledBy::Practice) => pb::CancelledBy::Practice,
        None => pb::CancelledBy::Unspecified,
    }
}

pub(super) fn appt_to(a: &Appointment) -> pb::Appointment {
    pb::Appointment {
        appointment_id: a.appointment_id.clone(),
        slot: Some(slot_to(&a.slot)),
        status: appt_status_to(a.status) as i32,
        patient_nin: a.patient_nin.clone(),
        gp_id: a.gp_id.clone(),
        reason: a.reason.clone(),
        booked_at: Some(timestamp(a.booked_at)),
        cancelled_at: a.cancelled_at.map(timestamp),
        cancelled_by: cancelled_by_to(a.cancelled_by) as i32,
        late_cancellation: a.late_cancellation,
        rescheduled_from: a.rescheduled_from.clone().unwrap_or_default(),
        booked_by: Some(booked_by_to(a.booked_by.as_ref())),
    }
}

fn booked_by_to(b: Option<&Booker>) -> pb::BookedBy {
    use econsult_runtime::auth::Relation;
    match b {
        None => pb::BookedBy {
            relation: pb::BookerRelation::Self_ as i32,
            name: String::new(),
        },
        Some(b) => pb::BookedBy {
            relation: match b.relation {
                Relation::Parent => pb::BookerRelation::Parent,
                Relation::Fullmakt => pb::BookerRelation::Fullmakt,
            } as i32,
            name: b.name.clone(),
        },
    }
}

/// An appointment change as WatchBookings sends it: the event's body with the patient and the
/// reason for the visit read from the appointment (events carry neither).
pub(super) fn change_to(
    c: &AppointmentChanged,
    patient_nin: &str,
    reason: &str,
) -> pb::Appointment {
    let status = AppointmentStatus::from_fhir(&c.status)
        .map_or(pb::AppointmentStatus::Unspecified, appt_status_to);
    let modality = match c.modality.as_str() {
        "in_person" => pb::Modality::InPerson,
        "video" => pb::Modality::Video,
        "phone" => pb::Modality::Phone,
        _ => pb::Modality::Unspecified,
    };
    pb::Appointment {
        appointment_id: c.appointment_id.clone(),
        slot: Some(pb::Slot {
            slot_id: c.slot_id.clone(),
            gp_id: c.gp_id.clone(),
            start: Some(timestamp(from_ms(c.start_ms))),
            end: Some(timestamp(from_ms(c.end_ms))),
            modality: modality as i32,
            status: pb::SlotStatus::Unspecified as i32,
            acute_reserve: false,
        }),
        status: status as i32,
        patient_nin: patient_nin.to_owned(),
        gp_id: c.gp_id.clone(),
        reason: reason.to_owned(),
        booked_at: Some(timestamp(from_ms(c.booked_at_ms))),
        cancelled_at: c.cancelled_at_ms.map(|t| timestamp(from_ms(t))),
        cancelled_by: match c.cancelled_by.as_deref() {
            Some("patient") => pb::CancelledBy::Patient,
            Some("practice") => pb::CancelledBy::Practice,
            _ => pb::CancelledBy::Unspecified,
        } as i32,
        late_cancellation: c.late_cancellation,
        rescheduled_from: c.rescheduled_from.clone().unwrap_or_default(),
        // Events carry no actor.
        booked_by: None,
    }
}

pub(super) fn list_move_to(m: &ListMove) -> pb::ListMove {
    pb::ListMove {
        move_id: m.move_id.clone(),
        patient_nin: m.patient_nin.as_str().to_owned(),
        from_org_number: m.from_org_number.clone(),
        from_gp_id: m.from_gp_id.clone(),
        to_org_number: m.to_org_number.clone(),
        to_gp_id: m.to_gp_id.clone(),
        registry_reference: m.registry_reference.clone(),
        moved_at: Some(timestamp(from_ms(m.moved_at_ms))),
        to_list_size: m.to_list_size,
    }
}

/// A `booking.list_moved` change as the old practice sees it: without the new practice; the
/// patient read from the list move (the event does not carry it).
pub(super) fn list_moved_to(m: &ListMoved, patient_nin: &str) -> pb::ListMove {
    pb::ListMove {
        move_id: m.move_id.clone(),
        patient_nin: patient_nin.to_owned(),
        from_org_number: m.from_org_number.clone(),
        from_gp_id: m.from_gp_id.clone(),
        registry_reference: m.registry_reference.clone(),
        moved_at: Some(timestamp(from_ms(m.moved_at_ms))),
        ..Default::default()
    }
}

pub(super) fn hold_to(h: &Hold) -> pb::Hold {
    pb::Hold {
        hold_id: h.hold_id.clone(),
        slot: Some(slot_to(&h.slot)),
        expires_at: Some(timestamp(h.expires_at)),
        from_waitlist: h.from_waitlist,
    }
}

pub(super) fn waitlist_to(w: &WaitlistEntry) -> pb::WaitlistEntry {
    pb::WaitlistEntry {
        entry_id: w.entry_id.clone(),
        gp_id: w.gp_id.clone(),
        latest_date: w.latest_date.format("%Y-%m-%d").to_string(),
        modality: w.modality.map_or(pb::Modality::Unspecified, modality_to) as i32,
        joined_at: Some(timestamp(w.joined_at)),
        active: w.active,
        request_id: w.request_id.clone().unwrap_or_default(),
    }
}

pub(super) fn gp_to(g: &Gp) -> pb::Gp {
    pb::Gp {
        gp_id: g.gp_id.clone(),
        hpr_number: g.hpr_number.clone(),
        display_name: g.display_name.clone(),
        practice_name: g.practice_name.clone(),
        org_number: g.org_number.clone(),
        municipality_number: g.municipality_number.clone(),
        list_capacity: g.list_capacity,
        list_status: match g.list_status {
            ListStatus::Staffed => pb::ListStatus::Staffed,
            ListStatus::Vacant => pb::ListStatus::Vacant,
            ListStatus::Locum => pb::ListStatus::Locum,
        } as i32,
        list_size: g.list_size,
    }
}

pub(super) fn id_field(v: &str, field: &str) -> Result<(), Status> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Status::invalid_argument(format!(
            "{field} must be 1 to 64 characters of letters, digits, '-', '_' or '.'"
        )));
    }
    econsult_runtime::telemetry::record_id(field, v);
    Ok(())
}

/// The identity number in `field`, valid and acceptable to this server (synthetic numbers only
/// where it allows them: [`Caller::accept_nin`]).
pub(super) fn nin_field(caller: &Caller, v: &str, field: &str) -> Result<NationalId, Status> {
    let nin = NationalId::parse(v).map_err(|e| {
        Status::invalid_argument(format!(
            "{field} is not a valid national identity number: {e}"
        ))
    })?;
    caller.accept_nin(&nin, field)?;
    Ok(nin)
}

pub(super) fn key_field(k: &str) -> Result<(), Status> {
    econsult_runtime::idempotency::check_key(k).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A free text as stored: a NUL is refused (never meaningful, and silently dropping it stored
/// something other than what was sent); other control characters but newline and tab are
/// removed, as before (a stray CR or bell from a pasted text is harmless to drop).
pub(super) fn text_field(v: &str, field: &str, max: usize) -> Result<String, Status> {
    econsult_runtime::grpc::no_nul(v, field)?;
    let t = clean_text(v);
    if t.chars().count() > max {
        return Err(Status::invalid_argument(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(t)
}

impl TryFrom<pb::Gp> for GpInput {
    type Error = Status;
    fn try_from(g: pb::Gp) -> Result<Self, Status> {
        id_field(&g.gp_id, "gp.gp_id")?;
        let list_status = match pb::ListStatus::try_from(g.list_status) {
            Ok(pb::ListStatus::Staffed) => ListStatus::Staffed,
            Ok(pb::ListStatus::Vacant) => ListStatus::Vacant,
            Ok(pb::ListStatus::Locum) => ListStatus::Locum,
            _ => {
                return Err(Status::invalid_argument(
                    "gp.list_status must be STAFFED, VACANT or LOCUM",
                ));
            }
        };
        let hpr_ok = (1..=9).contains(&g.hpr_number.len())
            && g.hpr_number.bytes().all(|b| b.is_ascii_digit());
        if !(hpr_ok || (g.hpr_number.is_empty() && list_status == ListStatus::Vacant)) {
            return Err(Status::invalid_argument(
                "gp.hpr_number must be 1 to 9 digits (empty only for a vacant list)",
            ));
        }
        let display_name = text_field(&g.display_name, "gp.display_name", 200)?;
        if display_name.is_empty() {
            return Err(Status::invalid_argument("gp.display_name is required"));
        }
        let practice_name = text_field(&g.practice_name, "gp.practice_name", 200)?;
        if g.municipality_number.len() != 4
            || !g.municipality_number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Status::invalid_argument(
                "gp.municipality_number must be 4 digits",
            ));
        }
        if !(1..=2500).contains(&g.list_capacity) {
            return Err(Status::invalid_argument(
                "gp.list_capacity must be between 1 and 2500",
            ));
        }
        Ok(GpInput {
            gp_id: g.gp_id,
            hpr_number: g.hpr_number,
            display_name,
            municipality_number: g.municipality_number,
            list_capacity: g.list_capacity,
            list_status,
            practice_name,
        })
    }
}

impl TryFrom<(usize, &pb::NewSlot)> for NewSlot {
    type Error = Status;
    fn try_from((i, s): (usize, &pb::NewSlot)) -> Result<Self, Status> {
        let start = required_time(s.start.as_ref(), &format!("slots[{i}].start"))?;
        if !(1..=240).contains(&s.duration_minutes) {
            return Err(Status::invalid_argument(format!(
                "slots[{i}].duration_minutes must be between 1 and 240"
            )));
        }
        let modality = modality_from(s.modality, &format!("slots[{i}].modality"), true)?
            .ok_or_else(|| Status::invalid_argument("modality"))?;
        Ok(NewSlot {
            start,
            duration_minutes: s.duration_minutes,
            modality,
            acute_reserve: s.acute_reserve,
        })
    }
}

impl MoveListingInput {
    /// The move `r` asks for, checked as `caller`'s server accepts identity numbers.
    pub(super) fn from_request(
        caller: &Caller,
        r: &pb::MoveListingRequest,
    ) -> Result<Self, Status> {
        let patient_nin = nin_field(caller, &r.patient_nin, "patient_nin")?;
        if !econsult_runtime::auth::is_org_number(&r.to_org_number) {
            return Err(Status::invalid_argument("to_org_number must be 9 digits"));
        }
        id_field(&r.to_gp_id, "to_gp_id")?;
        let reference = r.registry_reference.trim();
        if reference.is_empty()
            || reference.chars().count() > 64
            || reference.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(
                "registry_reference must be 1 to 64 characters without control characters",
            ));
        }
        Ok(MoveListingInput {
            patient_nin,
            to_org_number: r.to_org_number.clone(),
            to_gp_id: r.to_gp_id.clone(),
            registry_reference: reference.to_owned(),
        })
    }
}

pub(super) fn target_from(hold: Option<&str>, slot: Option<&str>) -> Result<Target, Status> {
    match (hold, slot) {
        (Some(h), None) => {
            id_field(h, "hold_id")?;
            Ok(Target::Hold(h.to_owned()))
        }
        (None, Some(s)) => {
            id_field(s, "slot_id")?;
            Ok(Target::Slot(s.to_owned()))
        }
        _ => Err(Status::invalid_argument("target: set hold_id or slot_id")),
    }
}

/// "HH:MM" (00:00 to 24:00) as minutes after midnight; INVALID_ARGUMENT naming `field`.
pub(super) fn minute_of_day(v: &str, field: &str) -> Result<u32, Status> {
    let bad = || Status::invalid_argument(format!("{field} must be a time HH:MM, e.g. 08:00"));
    let (h, m) = v.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (0..=23, 0..=59) | (24, 0) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// Puts an appointment's ids on the call's span (`econsult.appointment_id`, `slot_id`, `gp_id`).
pub(super) fn record_appointment(a: &crate::domain::Appointment) {
    use econsult_runtime::telemetry::record_id;
    record_id("appointment_id", &a.appointment_id);
    record_id("slot_id", &a.slot.slot_id);
    record_id("gp_id", &a.gp_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any GP message converts or is refused with INVALID_ARGUMENT; what converts keeps the
        /// rules (digits, sizes, capacity).
        #[test]
        fn gp_conversion(gp_id in "\\PC{0,70}", hpr in "[0-9a]{0,11}", name in "\\PC{0,220}", muni in "[0-9x]{0,5}", cap in 0u32..3000, status in -1i32..5) {
            let g = pb::Gp {
                gp_id, hpr_number: hpr, display_name: name, municipality_number: muni,
                list_capacity: cap, list_status: status, ..Default::default()
            };
            match GpInput::try_from(g) {
                Ok(v) => {
                    prop_assert!((1..=2500).contains(&v.list_capacity));
                    prop_assert_eq!(v.municipality_number.len(), 4);
                    prop_assert!(v.hpr_number.len() <= 9 && v.hpr_number.bytes().all(|b| b.is_ascii_digit()));
                    prop_assert!(!v.display_name.is_empty() && v.display_name.chars().count() <= 200);
                }
                Err(e) => prop_assert_eq!(e.code(), tonic::Code::InvalidArgument),
            }
        }

        /// Any slot message converts or is refused with INVALID_ARGUMENT naming the slot.
        #[test]
        fn slot_conversion(secs in proptest::option::of(any::<i64>()), nanos in any::<i32>(), minutes in 0u32..300, modality in -2i32..6, i in 0usize..50) {
            let s = pb::NewSlot {
                start: secs.map(|seconds| prost_types::Timestamp { seconds, nanos }),
                duration_minutes: minutes,
                modality,
                acute_reserve: false,
            };
            match NewSlot::try_from((i, &s)) {
                Ok(v) => prop_assert!((1..=240).contains(&v.duration_minutes)),
                Err(e) => {
                    prop_assert_eq!(e.code(), tonic::Code::InvalidArgument);
                    prop_assert!(e.message().contains(&format!("slots[{i}]")) || e.message().contains("modality"), "{}", e.message());
                }
            }
        }
    }
}
