//! gRPC adapter of the booking service: authorisation per RPC, proto ⇄ domain conversion with
//! `INVALID_ARGUMENT` naming the field, and nothing else.

mod convert;
mod guarantee;

use crate::domain::*;
use crate::episodes::MAX_REQUEST_AGE_DAYS;
use crate::error::BookingError;
use crate::service::{Booking, Change};
use convert::*;
use econsult_proto::booking::v1 as pb;
use econsult_runtime::auth::Caller;
use econsult_runtime::grpc::{optional_time, parse_date, timestamp};
use econsult_runtime::proxy::{Area, Resolver};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

/// Scope for reading booking data as an EHR.
pub const SCOPE_READ: &str = "econsult:booking.read";
/// Scope for changing schedules and appointments as an EHR.
pub const SCOPE_WRITE: &str = "econsult:booking.write";

/// The tonic service.
pub struct BookingGrpc {
    svc: Booking,
    proxies: Resolver,
}

impl BookingGrpc {
    /// Wraps the logic; `proxies` resolves whom a patient call acts for.
    pub fn new(svc: Booking, proxies: Resolver) -> Self {
        Self { svc, proxies }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::booking_service_server::BookingServiceServer<Self> {
        pb::booking_service_server::BookingServiceServer::new(self)
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::BookingChange, Status>> + Send>>;

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
            .map(|(i, n)| nin_field(&caller, n, &format!("add[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let remove = r
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| nin_field(&caller, n, &format!("remove[{i}]")))
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
        let nin = nin_field(&caller, &r.patient_nin, "patient_nin")?;
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
        tokio::spawn(
            async move {
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
                                    Change::Appointment {
                                        change,
                                        patient_nin,
                                        reason,
                                    } => pb::BookingChange {
                                        cursor: seq,
                                        kind,
                                        appointment: Some(change_to(change, patient_nin, reason)),
                                        list_moved: None,
                                        unmet_request: None,
                                    },
                                    Change::ListMoved {
                                        change,
                                        patient_nin,
                                    } => pb::BookingChange {
                                        cursor: seq,
                                        kind,
                                        appointment: None,
                                        list_moved: Some(list_moved_to(change, patient_nin)),
                                        unmet_request: None,
                                    },
                                    Change::RequestUnmet {
                                        change,
                                        patient_nin,
                                    } => pb::BookingChange {
                                        cursor: seq,
                                        kind,
                                        appointment: None,
                                        list_moved: None,
                                        unmet_request: Some(guarantee::unmet_to(
                                            change,
                                            patient_nin,
                                        )),
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
            }
            // In the call's span: its trace id goes with the access-log rows the stream writes.
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(econsult_runtime::auth::end_at_token_expiry(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            expires_at,
        )))
    }

    async fn set_guarantee_policy(
        &self,
        req: Request<pb::SetGuaranteePolicyRequest>,
    ) -> Result<Response<pb::GuaranteePolicy>, Status> {
        guarantee::set_policy(&self.svc, req).await
    }

    async fn get_guarantee_policy(
        &self,
        req: Request<pb::GetGuaranteePolicyRequest>,
    ) -> Result<Response<pb::GuaranteePolicy>, Status> {
        guarantee::get_policy(&self.svc, req).await
    }

    async fn find_slots(
        &self,
        req: Request<pb::FindSlotsRequest>,
    ) -> Result<Response<pb::FindSlotsResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
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
            guarantee: offers.guarantee.iter().map(guarantee::offer_to).collect(),
            met_by_step: guarantee::met_by_to(offers.met_by),
        }))
    }

    async fn hold_slot(
        &self,
        req: Request<pb::HoldSlotRequest>,
    ) -> Result<Response<pb::Hold>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
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
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
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
        record_appointment(&a);
        Ok(Response::new(appt_to(&a)))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::Appointment>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
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
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
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
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
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
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
        let r = req.into_inner();
        if !r.request_id.is_empty() {
            id_field(&r.request_id, "request_id")?;
            key_field(&r.idempotency_key)?;
            let e = self
                .svc
                .join_priority_waitlist(&caller, &nin, &r.request_id, &r.idempotency_key)
                .await?;
            return Ok(Response::new(waitlist_to(&e)));
        }
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
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
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
        let input = MoveListingInput::from_request(&caller, &r)?;
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
            BookingError::Unaccounted(u) => Status::invalid_argument(u.to_string()),
            BookingError::Other(o) => econsult_runtime::grpc::anyhow_status("booking", o),
        }
    }
}
