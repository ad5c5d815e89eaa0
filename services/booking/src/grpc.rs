//! gRPC adapter of the booking service: authorisation per RPC, proto ⇄ domain conversion with
//! `INVALID_ARGUMENT` naming the field, and nothing else.

use crate::domain::*;
use crate::episodes::MAX_REQUEST_AGE_DAYS;
use crate::error::BookingError;
use crate::service::{Booking, Change};
use econsult_proto::booking::v1 as pb;
use econsult_runtime::auth::Caller;
use econsult_runtime::clock::from_ms;
use econsult_runtime::events::{AppointmentChanged, ListMoved};
use econsult_runtime::grpc::{optional_time, parse_date, required_time, timestamp};
use econsult_runtime::nin::NationalId;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Scope for reading booking data as an EHR.
pub const SCOPE_READ: &str = "econsult:booking.read";
/// Scope for changing schedules and appointments as an EHR.
pub const SCOPE_WRITE: &str = "econsult:booking.write";

/// The tonic service.
pub struct BookingGrpc {
    svc: Booking,
}

impl BookingGrpc {
    /// Wraps the logic.
    pub fn new(svc: Booking) -> Self {
        Self { svc }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::booking_service_server::BookingServiceServer<Self> {
        pb::booking_service_server::BookingServiceServer::new(self)
    }
}

fn modality_from(v: i32, field: &str, required: bool) -> Result<Option<Modality>, Status> {
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

fn modality_to(m: Modality) -> pb::Modality {
    match m {
        Modality::InPerson => pb::Modality::InPerson,
        Modality::Video => pb::Modality::Video,
        Modality::Phone => pb::Modality::Phone,
    }
}

fn slot_to(s: &Slot) -> pb::Slot {
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

fn appt_status_to(s: AppointmentStatus) -> pb::AppointmentStatus {
    match s {
        AppointmentStatus::Booked => pb::AppointmentStatus::Booked,
        AppointmentStatus::Arrived => pb::AppointmentStatus::Arrived,
        AppointmentStatus::Fulfilled => pb::AppointmentStatus::Fulfilled,
        AppointmentStatus::Cancelled => pb::AppointmentStatus::Cancelled,
        AppointmentStatus::NoShow => pb::AppointmentStatus::Noshow,
    }
}

fn cancelled_by_to(c: Option<CancelledBy>) -> pb::CancelledBy {
    match c {
        Some(CancelledBy::Patient) => pb::CancelledBy::Patient,
        Some(CancelledBy::Practice) => pb::CancelledBy::Practice,
        None => pb::CancelledBy::Unspecified,
    }
}

fn appt_to(a: &Appointment) -> pb::Appointment {
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
    }
}

fn change_to(c: &AppointmentChanged) -> pb::Appointment {
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
        patient_nin: c.patient_nin.clone(),
        gp_id: c.gp_id.clone(),
        reason: c.reason.clone(),
        booked_at: Some(timestamp(from_ms(c.booked_at_ms))),
        cancelled_at: c.cancelled_at_ms.map(|t| timestamp(from_ms(t))),
        cancelled_by: match c.cancelled_by.as_deref() {
            Some("patient") => pb::CancelledBy::Patient,
            Some("practice") => pb::CancelledBy::Practice,
            _ => pb::CancelledBy::Unspecified,
        } as i32,
        late_cancellation: c.late_cancellation,
        rescheduled_from: c.rescheduled_from.clone().unwrap_or_default(),
    }
}

fn list_move_to(m: &ListMove) -> pb::ListMove {
    pb::ListMove {
        move_id: m.move_id.clone(),
        patient_nin: m.patient_nin.clone(),
        from_org_number: m.from_org_number.clone(),
        from_gp_id: m.from_gp_id.clone(),
        to_org_number: m.to_org_number.clone(),
        to_gp_id: m.to_gp_id.clone(),
        registry_reference: m.registry_reference.clone(),
        moved_at: Some(timestamp(from_ms(m.moved_at_ms))),
        to_list_size: m.to_list_size,
    }
}

/// A `booking.list_moved` change as the old practice sees it: without the new practice.
fn list_moved_to(m: &ListMoved) -> pb::ListMove {
    pb::ListMove {
        move_id: m.move_id.clone(),
        patient_nin: m.patient_nin.clone(),
        from_org_number: m.from_org_number.clone(),
        from_gp_id: m.from_gp_id.clone(),
        registry_reference: m.registry_reference.clone(),
        moved_at: Some(timestamp(from_ms(m.moved_at_ms))),
        ..Default::default()
    }
}

fn hold_to(h: &Hold) -> pb::Hold {
    pb::Hold {
        hold_id: h.hold_id.clone(),
        slot: Some(slot_to(&h.slot)),
        expires_at: Some(timestamp(h.expires_at)),
        from_waitlist: h.from_waitlist,
    }
}

fn waitlist_to(w: &WaitlistEntry) -> pb::WaitlistEntry {
    pb::WaitlistEntry {
        entry_id: w.entry_id.clone(),
        gp_id: w.gp_id.clone(),
        latest_date: w.latest_date.format("%Y-%m-%d").to_string(),
        modality: w.modality.map_or(pb::Modality::Unspecified, modality_to) as i32,
        joined_at: Some(timestamp(w.joined_at)),
        active: w.active,
    }
}

fn gp_to(g: &Gp) -> pb::Gp {
    pb::Gp {
        gp_id: g.gp_id.clone(),
        hpr_number: g.hpr_number.clone(),
        display_name: g.display_name.clone(),
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

fn id_field(v: &str, field: &str) -> Result<(), Status> {
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
    Ok(())
}

fn nin_field(v: &str, field: &str) -> Result<String, Status> {
    NationalId::parse(v)
        .map(|n| n.as_str().to_owned())
        .map_err(|e| {
            Status::invalid_argument(format!(
                "{field} is not a valid national identity number: {e}"
            ))
        })
}

fn key_field(k: &str) -> Result<(), Status> {
    econsult_runtime::idempotency::check_key(k).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn text_field(v: &str, field: &str, max: usize) -> Result<String, Status> {
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

impl TryFrom<&pb::MoveListingRequest> for MoveListingInput {
    type Error = Status;
    fn try_from(r: &pb::MoveListingRequest) -> Result<Self, Status> {
        let patient_nin = nin_field(&r.patient_nin, "patient_nin")?;
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

fn target_from(hold: Option<&str>, slot: Option<&str>) -> Result<Target, Status> {
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

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::BookingChange, Status>> + Send>>;

/// "HH:MM" (00:00 to 24:00) as minutes after midnight; INVALID_ARGUMENT naming `field`.
fn minute_of_day(v: &str, field: &str) -> Result<u32, Status> {
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

#[tonic::async_trait]
impl pb::booking_service_server::BookingService for BookingGrpc {
    async fn upsert_gp(
        &self,
        req: Request<pb::UpsertGpRequest>,
    ) -> Result<Response<pb::Gp>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let gp = req
            .into_inner()
            .gp
            .ok_or_else(|| Status::invalid_argument("gp is required"))?;
        let input = GpInput::try_from(gp)?;
        let gp = self.svc.upsert_gp(org, input).await?;
        Ok(Response::new(gp_to(&gp)))
    }

    async fn get_gp(&self, req: Request<pb::GetGpRequest>) -> Result<Response<pb::Gp>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_READ)?;
        let r = req.into_inner();
        id_field(&r.gp_id, "gp_id")?;
        Ok(Response::new(gp_to(&self.svc.get_gp(org, &r.gp_id).await?)))
    }

    async fn update_list(
        &self,
        req: Request<pb::UpdateListRequest>,
    ) -> Result<Response<pb::UpdateListResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let r = req.into_inner();
        id_field(&r.gp_id, "gp_id")?;
        key_field(&r.idempotency_key)?;
        if r.add.len() + r.remove.len() > 5000 {
            return Err(Status::invalid_argument(
                "add and remove hold at most 5000 numbers together",
            ));
        }
        let add = r
            .add
            .iter()
            .enumerate()
            .map(|(i, n)| nin_field(n, &format!("add[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let remove = r
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| nin_field(n, &format!("remove[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let size = self
            .svc
            .update_list(&caller, org, &r.gp_id, &add, &remove, &r.idempotency_key)
            .await?;
        Ok(Response::new(pb::UpdateListResponse { list_size: size }))
    }

    async fn set_closures(
        &self,
        req: Request<pb::SetClosuresRequest>,
    ) -> Result<Response<pb::SetClosuresResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let r = req.into_inner();
        key_field(&r.idempotency_key)?;
        if r.dates.len() > 366 {
            return Err(Status::invalid_argument("dates holds at most 366 days"));
        }
        let dates = r
            .dates
            .iter()
            .enumerate()
            .map(|(i, d)| parse_date(d, &format!("dates[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let dates = self
            .svc
            .set_closures(&caller, org, dates, &r.idempotency_key)
            .await?;
        Ok(Response::new(pb::SetClosuresResponse {
            dates: dates
                .iter()
                .map(|d| d.format("%Y-%m-%d").to_string())
                .collect(),
        }))
    }

    async fn set_opening_hours(
        &self,
        req: Request<pb::SetOpeningHoursRequest>,
    ) -> Result<Response<pb::SetOpeningHoursResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let r = req.into_inner();
        key_field(&r.idempotency_key)?;
        let phone = r.phone.trim();
        let digits = phone.chars().filter(char::is_ascii_digit).count();
        let shape = phone
            .char_indices()
            .all(|(i, c)| c.is_ascii_digit() || c == ' ' || (i == 0 && c == '+'));
        if !(3..=20).contains(&phone.len()) || digits < 3 || !shape {
            return Err(Status::invalid_argument(
                "phone must be 3 to 20 characters of digits and spaces, with an optional leading +",
            ));
        }
        if r.hours.len() > 28 {
            return Err(Status::invalid_argument("hours holds at most 28 periods"));
        }
        let mut periods = Vec::with_capacity(r.hours.len());
        for (i, h) in r.hours.iter().enumerate() {
            if !(1..=7).contains(&h.weekday) {
                return Err(Status::invalid_argument(format!(
                    "hours[{i}].weekday must be 1 (Monday) to 7 (Sunday)"
                )));
            }
            let opens = minute_of_day(&h.opens, &format!("hours[{i}].opens"))?;
            let closes = minute_of_day(&h.closes, &format!("hours[{i}].closes"))?;
            if closes <= opens {
                return Err(Status::invalid_argument(format!(
                    "hours[{i}].closes must be after hours[{i}].opens"
                )));
            }
            periods.push((h.weekday, opens, closes));
        }
        let mut sorted = periods.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted
            .windows(2)
            .find(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2)
        {
            return Err(Status::invalid_argument(format!(
                "hours: periods of weekday {} overlap",
                w[0].0
            )));
        }
        let (periods, phone) = self
            .svc
            .set_opening_hours(&caller, org, phone, periods, &r.idempotency_key)
            .await?;
        Ok(Response::new(pb::SetOpeningHoursResponse {
            hours: periods
                .into_iter()
                .map(|(weekday, opens, closes)| pb::OpeningHours {
                    weekday,
                    opens: format!("{:02}:{:02}", opens / 60, opens % 60),
                    closes: format!("{:02}:{:02}", closes / 60, closes % 60),
                })
                .collect(),
            phone,
        }))
    }

    async fn publish_slots(
        &self,
        req: Request<pb::PublishSlotsRequest>,
    ) -> Result<Response<pb::PublishSlotsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let r = req.into_inner();
        id_field(&r.gp_id, "gp_id")?;
        key_field(&r.idempotency_key)?;
        if r.slots.is_empty() || r.slots.len() > 1000 {
            return Err(Status::invalid_argument("slots must hold 1 to 1000 slots"));
        }
        let slots = r
            .slots
            .iter()
            .enumerate()
            .map(NewSlot::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .svc
            .publish_slots(&caller, org, &r.gp_id, slots, &r.idempotency_key)
            .await?;
        Ok(Response::new(pb::PublishSlotsResponse {
            slots: out.iter().map(slot_to).collect(),
        }))
    }

    async fn withdraw_slots(
        &self,
        req: Request<pb::WithdrawSlotsRequest>,
    ) -> Result<Response<pb::WithdrawSlotsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let r = req.into_inner();
        key_field(&r.idempotency_key)?;
        if r.slot_ids.is_empty() || r.slot_ids.len() > 1000 {
            return Err(Status::invalid_argument("slot_ids must hold 1 to 1000 ids"));
        }
        for (i, id) in r.slot_ids.iter().enumerate() {
            id_field(id, &format!("slot_ids[{i}]"))?;
        }
        let out = self
            .svc
            .withdraw_slots(&caller, org, &r.slot_ids, &r.idempotency_key)
            .await?;
        Ok(Response::new(pb::WithdrawSlotsResponse {
            slots: out.iter().map(slot_to).collect(),
        }))
    }

    async fn book_for_patient(
        &self,
        req: Request<pb::BookForPatientRequest>,
    ) -> Result<Response<pb::Appointment>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let r = req.into_inner();
        id_field(&r.slot_id, "slot_id")?;
        let nin = nin_field(&r.patient_nin, "patient_nin")?;
        key_field(&r.idempotency_key)?;
        let reason = text_field(&r.reason, "reason", 1000)?;
        let requested_at = optional_time(r.requested_at.as_ref(), "requested_at")?;
        if let Some(t) = requested_at {
            let now = self.svc.platform().clock.now();
            if t > now {
                return Err(Status::invalid_argument(
                    "requested_at must not be in the future",
                ));
            }
            if now - t > chrono::Duration::days(MAX_REQUEST_AGE_DAYS) {
                return Err(Status::invalid_argument(format!(
                    "requested_at must be at most {MAX_REQUEST_AGE_DAYS} days back"
                )));
            }
        }
        let a = self
            .svc
            .book_for_patient(
                &caller,
                PracticeBooking {
                    org,
                    nin: &nin,
                    slot_id: &r.slot_id,
                    reason: &reason,
                    requested_at,
                },
                &r.idempotency_key,
            )
            .await?;
        Ok(Response::new(appt_to(&a)))
    }

    async fn mark_appointment(
        &self,
        req: Request<pb::MarkAppointmentRequest>,
    ) -> Result<Response<pb::Appointment>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let r = req.into_inner();
        id_field(&r.appointment_id, "appointment_id")?;
        key_field(&r.idempotency_key)?;
        let to = match pb::AppointmentStatus::try_from(r.status) {
            Ok(pb::AppointmentStatus::Arrived) => AppointmentStatus::Arrived,
            Ok(pb::AppointmentStatus::Fulfilled) => AppointmentStatus::Fulfilled,
            Ok(pb::AppointmentStatus::Noshow) => AppointmentStatus::NoShow,
            _ => {
                return Err(Status::invalid_argument(
                    "status must be ARRIVED, FULFILLED or NOSHOW",
                ));
            }
        };
        let a = self
            .svc
            .mark(&caller, org, &r.appointment_id, to, &r.idempotency_key)
            .await?;
        Ok(Response::new(appt_to(&a)))
    }

    async fn cancel_by_practice(
        &self,
        req: Request<pb::CancelByPracticeRequest>,
    ) -> Result<Response<pb::Appointment>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?;
        let r = req.into_inner();
        id_field(&r.appointment_id, "appointment_id")?;
        key_field(&r.idempotency_key)?;
        let reason = text_field(&r.reason, "reason", 500)?;
        let a = self
            .svc
            .cancel_by_practice(&caller, org, &r.appointment_id, &reason, &r.idempotency_key)
            .await?;
        Ok(Response::new(appt_to(&a)))
    }

    type WatchBookingsStream = ChangeStream;

    async fn watch_bookings(
        &self,
        req: Request<pb::WatchBookingsRequest>,
    ) -> Result<Response<Self::WatchBookingsStream>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_READ)?.to_owned();
        let expires_at = caller.expires_at;
        let mut cursor = req.into_inner().after_cursor;
        let svc = self.svc.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::BookingChange, Status>>(64);
        tokio::spawn(async move {
            let mut sequenced = svc.platform().sequenced.clone();
            let mut stop = svc.platform().shutdown.clone();
            let mut announced = true;
            loop {
                // Every seq up to `high` is committed (the relay announces a seq after its
                // commit). Woken by an announcement, read up to it (nothing new: no read at all);
                // woken by the timer (in case an announcement was missed), read all there is.
                let high = *sequenced.borrow_and_update();
                let upto = if announced { high } else { u64::MAX };
                if upto > cursor {
                    match svc.changes_after(&caller, &org, cursor, upto).await {
                        Ok(changes) if !changes.is_empty() => {
                            for (seq, kind, body) in changes {
                                cursor = seq;
                                if kind.is_empty() {
                                    continue;
                                }
                                let change = match &body {
                                    Change::Appointment(a) => pb::BookingChange {
                                        cursor: seq,
                                        kind,
                                        appointment: Some(change_to(a)),
                                        list_moved: None,
                                    },
                                    Change::ListMoved(m) => pb::BookingChange {
                                        cursor: seq,
                                        kind,
                                        appointment: None,
                                        list_moved: Some(list_moved_to(m)),
                                    },
                                };
                                if tx.send(Ok(change)).await.is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                        // Nothing for this practice up to `high`: read only newer rows next time
                        // (the client's cursor moves with its next change).
                        Ok(_) => cursor = cursor.max(high),
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    }
                }
                announced = tokio::select! {
                    _ = sequenced.changed() => true,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => false,
                    _ = stop.changed() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down, resume from the last cursor"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                };
            }
        });
        Ok(Response::new(econsult_runtime::auth::end_at_token_expiry(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            expires_at,
        )))
    }

    async fn find_slots(
        &self,
        req: Request<pb::FindSlotsRequest>,
    ) -> Result<Response<pb::FindSlotsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        let modality = modality_from(r.modality, "modality", false)?;
        let from = optional_time(r.from.as_ref(), "from")?;
        let to = optional_time(r.to.as_ref(), "to")?;
        let limit = match r.limit {
            0 => 50,
            1..=200 => r.limit,
            _ => return Err(Status::invalid_argument("limit must be between 1 and 200")),
        };
        let offers = self
            .svc
            .find_slots(&caller, &nin, modality, from, to, limit)
            .await?;
        Ok(Response::new(pb::FindSlotsResponse {
            slots: offers
                .slots
                .iter()
                .map(|o| pb::OfferedSlot {
                    slot: Some(slot_to(&o.slot)),
                    gp_display_name: o.gp_display_name.clone(),
                    own_gp: o.own_gp,
                    alternative_reason: o.alternative_reason.clone(),
                    working_days_from_request: o.working_days,
                })
                .collect(),
            earliest_offer: offers.earliest.map(timestamp),
            earliest_offer_working_days: offers.earliest_working_days.unwrap_or_default(),
            within_five_working_days: offers.within_target,
            breach_reason: match offers.breach {
                None => pb::BreachReason::Unspecified,
                Some(BreachReason::NoSlots) => pb::BreachReason::NoSlots,
                Some(BreachReason::ListWithoutGp) => pb::BreachReason::ListWithoutGp,
                Some(BreachReason::PracticeClosed) => pb::BreachReason::PracticeClosed,
            } as i32,
            request_id: offers.request_id,
            patient_preference: offers.patient_preference,
            met_by_own_gp: offers.met_by_own_gp,
        }))
    }

    async fn hold_slot(
        &self,
        req: Request<pb::HoldSlotRequest>,
    ) -> Result<Response<pb::Hold>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        id_field(&r.slot_id, "slot_id")?;
        if !r.request_id.is_empty() {
            id_field(&r.request_id, "request_id")?;
        }
        key_field(&r.idempotency_key)?;
        let h = self
            .svc
            .hold(&caller, &nin, &r.slot_id, &r.request_id, &r.idempotency_key)
            .await?;
        Ok(Response::new(hold_to(&h)))
    }

    async fn book(
        &self,
        req: Request<pb::BookRequest>,
    ) -> Result<Response<pb::Appointment>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        let target = match &r.target {
            Some(pb::book_request::Target::HoldId(h)) => target_from(Some(h), None)?,
            Some(pb::book_request::Target::SlotId(s)) => target_from(None, Some(s))?,
            None => target_from(None, None)?,
        };
        if !r.request_id.is_empty() {
            id_field(&r.request_id, "request_id")?;
        }
        key_field(&r.idempotency_key)?;
        let reason = text_field(&r.reason, "reason", 1000)?;
        let a = self
            .svc
            .book(
                &caller,
                &nin,
                target,
                &reason,
                &r.request_id,
                &r.idempotency_key,
            )
            .await?;
        Ok(Response::new(appt_to(&a)))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::Appointment>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        id_field(&r.appointment_id, "appointment_id")?;
        key_field(&r.idempotency_key)?;
        let a = self
            .svc
            .cancel(&caller, &nin, &r.appointment_id, &r.idempotency_key)
            .await?;
        Ok(Response::new(appt_to(&a)))
    }

    async fn reschedule(
        &self,
        req: Request<pb::RescheduleRequest>,
    ) -> Result<Response<pb::Appointment>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        id_field(&r.appointment_id, "appointment_id")?;
        let target = match &r.target {
            Some(pb::reschedule_request::Target::HoldId(h)) => target_from(Some(h), None)?,
            Some(pb::reschedule_request::Target::SlotId(s)) => target_from(None, Some(s))?,
            None => target_from(None, None)?,
        };
        key_field(&r.idempotency_key)?;
        let a = self
            .svc
            .reschedule(&caller, &nin, &r.appointment_id, target, &r.idempotency_key)
            .await?;
        Ok(Response::new(appt_to(&a)))
    }

    async fn list_my_bookings(
        &self,
        req: Request<pb::ListMyBookingsRequest>,
    ) -> Result<Response<pb::ListMyBookingsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        let (appts, holds, waitlist) = self.svc.list_mine(&caller, &nin, r.include_past).await?;
        Ok(Response::new(pb::ListMyBookingsResponse {
            appointments: appts.iter().map(appt_to).collect(),
            holds: holds.iter().map(hold_to).collect(),
            waitlist: waitlist.iter().map(waitlist_to).collect(),
        }))
    }

    async fn join_waitlist(
        &self,
        req: Request<pb::JoinWaitlistRequest>,
    ) -> Result<Response<pb::WaitlistEntry>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        let latest = parse_date(&r.latest_date, "latest_date")?;
        let modality = modality_from(r.modality, "modality", false)?;
        key_field(&r.idempotency_key)?;
        let e = self
            .svc
            .join_waitlist(&caller, &nin, latest, modality, &r.idempotency_key)
            .await?;
        Ok(Response::new(waitlist_to(&e)))
    }

    async fn leave_waitlist(
        &self,
        req: Request<pb::LeaveWaitlistRequest>,
    ) -> Result<Response<pb::WaitlistEntry>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let nin = caller.patient()?.as_str().to_owned();
        let r = req.into_inner();
        id_field(&r.entry_id, "entry_id")?;
        let e = self.svc.leave_waitlist(&caller, &nin, &r.entry_id).await?;
        Ok(Response::new(waitlist_to(&e)))
    }

    async fn move_listing(
        &self,
        req: Request<pb::MoveListingRequest>,
    ) -> Result<Response<pb::ListMove>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        caller.ops()?;
        let r = req.into_inner();
        let input = MoveListingInput::try_from(&r)?;
        key_field(&r.idempotency_key)?;
        let m = self
            .svc
            .move_listing(&caller, &input, &r.idempotency_key)
            .await?;
        Ok(Response::new(list_move_to(&m)))
    }
}

/// The gRPC code of each [`BookingError`]: the one place it is decided.
impl From<BookingError> for Status {
    fn from(e: BookingError) -> Self {
        match e {
            BookingError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            BookingError::NotFound(_) => Status::not_found(e.to_string()),
            BookingError::FailedPrecondition(m) => Status::failed_precondition(m),
            BookingError::AlreadyExists(m) => Status::already_exists(m),
            // One rule in every service: a reused key with another request exists already.
            BookingError::KeyReused => Status::already_exists(e.to_string()),
            BookingError::Unavailable(m) => Status::unavailable(m),
            BookingError::Db(d) => econsult_runtime::grpc::db_status("booking", d),
            BookingError::Other(o) => econsult_runtime::grpc::anyhow_status("booking", o),
        }
    }
}

#[cfg(test)]
mod fuzz {
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
