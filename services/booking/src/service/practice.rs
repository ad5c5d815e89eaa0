//! The practice's side (EHR, and operations for list moves): lists, marks, bookings and
//! cancellations made for a patient.

use super::take::Taken;
use super::*;
use crate::store::{NewEntry, Practice, TakeOf};
use econsult_calendar::oslo_date;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::Purpose;
use econsult_runtime::clock::from_ms;
use econsult_runtime::command;
use econsult_runtime::events::{ListMoved, topics};
use econsult_runtime::idempotency::Op;

impl Booking {
    /// Adds and removes list members.
    pub async fn update_list(
        &self,
        caller: &Caller,
        org: &str,
        gp_id: &str,
        add: &[NationalId],
        remove: &[NationalId],
        key: &str,
    ) -> Result<u32, BookingError> {
        let add: Vec<&str> = add.iter().map(NationalId::as_str).collect();
        let remove: Vec<&str> = remove.iter().map(NationalId::as_str).collect();
        let req = (org, gp_id, &add, &remove);
        command::run(
            &self.p.db,
            self.command(caller, rpc::UPDATE_LIST, key, &req),
            async |op: &mut Op| -> Result<u32, BookingError> {
                let gp = store::gp_in_org(&mut op.tx, org, gp_id).await?;
                self.p
                    .db
                    .lock(&mut op.tx, &format!("list:{}", gp.gp_uid))
                    .await?;
                let now = self.p.clock.now_ms();
                for nin in &remove {
                    store::remove_from_list(&mut op.tx, nin, &gp.gp_uid).await?;
                    let access = Access::new(
                        rpc::UPDATE_LIST,
                        format!("gp:{gp_id}"),
                        nin,
                        "took you off a GP's list",
                    )
                    .implies(Purpose::Administration);
                    op.audit(caller, &access, now)?;
                }
                for (i, nin) in add.iter().enumerate() {
                    // A patient on a list of this practice moves within it; one listed with
                    // another organisation stays there (nothing written). A move between
                    // practices is a registry fact: MoveListing.
                    if !store::add_to_list(&mut op.tx, nin, &gp.gp_uid, org, now).await? {
                        return Err(listed_elsewhere(&mut op.tx, i, nin).await);
                    }
                    let access = Access::new(
                        rpc::UPDATE_LIST,
                        format!("gp:{gp_id}"),
                        nin,
                        "put you on a GP's list",
                    )
                    .implies(Purpose::Administration);
                    op.audit(caller, &access, now)?;
                }
                let size = store::list_size(&mut op.tx, &gp.gp_uid).await?;
                if size > i64::from(gp.list_capacity) {
                    return Err(BookingError::FailedPrecondition(format!(
                        "the list would hold {size} persons, over its capacity of {}",
                        gp.list_capacity
                    )));
                }
                Ok(size as u32)
            },
        )
        .await
    }

    /// Moves a listed patient to a GP of `input.to_org_number`, as Fastlegeregisteret recorded
    /// it (operations only). In one transaction: the list member row, the move with its registry
    /// reference, a `booking.list_moved` event for the old practice and an access-log row for
    /// the patient. The target list's capacity holds (its list lock, as UpdateList takes it).
    pub async fn move_listing(
        &self,
        caller: &Caller,
        input: &MoveListingInput,
        key: &str,
    ) -> Result<ListMove, BookingError> {
        command::run(
            &self.p.db,
            self.command(caller, rpc::MOVE_LISTING, key, input),
            async |op: &mut Op| -> Result<ListMove, BookingError> {
                let now = self.p.clock.now_ms();
                let nin = input.patient_nin.as_str();
                let to = match store::gp_in_org(&mut op.tx, &input.to_org_number, &input.to_gp_id)
                    .await
                {
                    Err(BookingError::NotFound(_)) => {
                        return Err(BookingError::NotFound(format!(
                            "to_gp_id {} of organisation {}",
                            input.to_gp_id, input.to_org_number
                        )));
                    }
                    r => r?,
                };
                self.p
                    .db
                    .lock(&mut op.tx, &format!("list:{}", to.gp_uid))
                    .await?;
                let (from_uid, from_gp_id, from_org) = store::listing(&mut op.tx, nin)
                    .await?
                    .ok_or_else(|| {
                        BookingError::FailedPrecondition(
                            "patient_nin is on no list in this service: the new practice adds the patient with UpdateList".into(),
                        )
                    })?;
                if from_uid == to.gp_uid {
                    return Err(BookingError::FailedPrecondition(format!(
                        "the patient is already on the list of {} of organisation {}",
                        input.to_gp_id, input.to_org_number
                    )));
                }
                if !store::move_on_lists(&mut op.tx, nin, &from_uid, &to.gp_uid, now).await? {
                    return Err(BookingError::FailedPrecondition(
                        "the patient's listing changed concurrently, retry".into(),
                    ));
                }
                let size = store::list_size(&mut op.tx, &to.gp_uid).await?;
                if size > i64::from(to.list_capacity) {
                    return Err(BookingError::FailedPrecondition(format!(
                        "the list of {} is full (capacity {})",
                        input.to_gp_id, to.list_capacity
                    )));
                }
                let moved = ListMove {
                    move_id: new_id(),
                    patient_nin: input.patient_nin.clone(),
                    from_org_number: from_org,
                    from_gp_id,
                    to_org_number: input.to_org_number.clone(),
                    to_gp_id: input.to_gp_id.clone(),
                    registry_reference: input.registry_reference.clone(),
                    moved_at_ms: now,
                    to_list_size: size as u32,
                };
                store::insert_list_move(&mut op.tx, &moved, &from_uid, &to.gp_uid, &caller.subject)
                    .await?;
                let body = ListMoved {
                    move_id: moved.move_id.clone(),
                    from_org_number: moved.from_org_number.clone(),
                    from_gp_id: moved.from_gp_id.clone(),
                    registry_reference: moved.registry_reference.clone(),
                    moved_at_ms: now,
                };
                op.emit(
                    NewEvent {
                        topic: topics::BOOKING_LIST_MOVED,
                        org_number: &moved.from_org_number,
                        route_key: &self.p.pseudonyms.key_for(nin),
                        payload: &body,
                    },
                    now,
                )?;
                let access = Access::new(
                    rpc::MOVE_LISTING,
                    format!("list_move:{}", moved.move_id),
                    nin,
                    "moved you to another GP's list",
                )
                .implies(Purpose::Administration);
                op.audit(caller, &access, now)?;
                Ok(moved)
            },
        )
        .await
    }

    /// Records arrival, a held consultation or a no-show.
    pub async fn mark(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        to: AppointmentStatus,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (org, id, to);
        command::run(
            &self.p.db,
            self.command(caller, rpc::MARK, key, &req),
            async |op: &mut Op| -> Result<Appointment, BookingError> {
                let now = self.p.clock.now_ms();
                let stored = store::appointment_in_org(&mut op.tx, org, id, now)
                    .await?
                    .ok_or_else(|| BookingError::NotFound(format!("appointment {id}")))?;
                let before = stored.appointment;
                let allowed_from: &[AppointmentStatus] = match to {
                    AppointmentStatus::Arrived => &[AppointmentStatus::Booked],
                    AppointmentStatus::Fulfilled => {
                        &[AppointmentStatus::Booked, AppointmentStatus::Arrived]
                    }
                    AppointmentStatus::NoShow => &[AppointmentStatus::Booked],
                    _ => {
                        return Err(BookingError::invalid(
                            "status",
                            "must be ARRIVED, FULFILLED or NOSHOW",
                        ));
                    }
                };
                if !allowed_from.contains(&before.status) {
                    return Err(BookingError::FailedPrecondition(format!(
                        "appointment is {}, cannot become {}",
                        before.status.fhir(),
                        to.fhir()
                    )));
                }
                if matches!(to, AppointmentStatus::Fulfilled | AppointmentStatus::NoShow)
                    && before.slot.start.timestamp_millis() > now
                {
                    return Err(BookingError::FailedPrecondition(format!(
                        "the appointment has not started yet, cannot become {}",
                        to.fhir()
                    )));
                }
                if !store::set_appointment_status(&mut op.tx, id, before.status, to).await? {
                    return Err(BookingError::FailedPrecondition(
                        "the appointment changed concurrently, retry".into(),
                    ));
                }
                let after = Appointment {
                    status: to,
                    ..before
                };
                let topic = match to {
                    AppointmentStatus::Arrived => topics::BOOKING_ARRIVED,
                    AppointmentStatus::Fulfilled => topics::BOOKING_ATTENDED,
                    _ => topics::BOOKING_NOSHOW,
                };
                self.emit(
                    &mut op.tx,
                    topic,
                    &after,
                    &stored.org_number,
                    &stored.municipality_number,
                    now,
                )
                .await?;
                let access = Access::new(
                    rpc::MARK,
                    format!("appointment:{id}"),
                    &after.patient_nin,
                    format!(
                        "recorded whether you came to your appointment on {}",
                        audit::local_time(after.slot.start)
                    ),
                )
                .implies(Purpose::Administration);
                op.audit(caller, &access, now)?;
                Ok(after)
            },
        )
        .await
    }

    /// Cancels on behalf of the GP: the slot is withdrawn and the patient goes first in line on
    /// the GP's waitlist.
    pub async fn cancel_by_practice(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        reason: &str,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (org, id, reason);
        command::run(
            &self.p.db,
            self.command(caller, rpc::CANCEL_BY_PRACTICE, key, &req),
            async |op: &mut Op| -> Result<Appointment, BookingError> {
                let now = self.p.clock.now_ms();
                let stored = store::appointment_in_org(&mut op.tx, org, id, now)
                    .await?
                    .ok_or_else(|| BookingError::NotFound(format!("appointment {id}")))?;
                let before = stored.appointment;
                if before.status != AppointmentStatus::Booked {
                    return Err(BookingError::FailedPrecondition(format!(
                        "appointment is {}, only booked ones can be cancelled",
                        before.status.fhir()
                    )));
                }
                if !store::cancel_appointment(&mut op.tx, id, CancelledBy::Practice, false, now)
                    .await?
                {
                    return Err(BookingError::FailedPrecondition(
                        "the appointment changed concurrently, retry".into(),
                    ));
                }
                // The GP cannot take the slot: withdraw it rather than offer it again.
                store::set_slot_status(
                    &mut op.tx,
                    &before.slot.slot_id,
                    SlotStatus::BusyUnavailable,
                    None,
                )
                .await?;
                let cal = store::calendar(&mut op.tx, org).await?;
                let latest = cal
                    .add_working_days(oslo_date(before.slot.start), episodes::TARGET_WORKING_DAYS);
                let gp_uid = store::appointment_gp(&mut op.tx, id).await?;
                let entry_id = new_id();
                let entry = NewEntry {
                    entry_id: &entry_id,
                    gp_uid: &gp_uid,
                    nin: &before.patient_nin,
                    latest,
                    modality: None,
                    first_in_line: true,
                    joined_at: now,
                };
                store::put_first_in_line(&mut op.tx, &entry).await?;
                let after = Appointment {
                    status: AppointmentStatus::Cancelled,
                    cancelled_at: Some(from_ms(now)),
                    cancelled_by: Some(CancelledBy::Practice),
                    slot: Slot {
                        status: SlotStatus::BusyUnavailable,
                        ..before.slot.clone()
                    },
                    ..before
                };
                self.emit(
                    &mut op.tx,
                    topics::BOOKING_CANCELLED,
                    &after,
                    &stored.org_number,
                    &stored.municipality_number,
                    now,
                )
                .await?;
                let access = Access::new(
                    rpc::CANCEL_BY_PRACTICE,
                    format!("appointment:{id}"),
                    &after.patient_nin,
                    format!(
                        "cancelled your appointment on {}",
                        audit::local_time(after.slot.start)
                    ),
                )
                .implies(Purpose::Administration);
                op.audit(caller, &access, now)?;
                Ok(after)
            },
        )
        .await
    }

    /// Books a slot of `org` for a patient on one of the practice's lists (EHR).
    pub async fn book_for_patient(
        &self,
        caller: &Caller,
        b: PracticeBooking<'_>,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let PracticeBooking {
            org,
            nin,
            slot_id,
            reason,
            requested_at,
        } = b;
        let req = (
            org,
            nin.as_str(),
            slot_id,
            reason,
            requested_at.map(|t| t.timestamp_millis()),
        );
        // The booking request this booking closes (taken out of the search buffer, if there):
        // put back unless the booking was written.
        let mut taken = None;
        let mut opened = None;
        let mut done = false;
        let r = command::run(
            &self.p.db,
            self.command(caller, rpc::BOOK_FOR_PATIENT, key, &req),
            async |op: &mut Op| -> Result<Appointment, BookingError> {
                let (list_gp, cal) = match self.own_gp(&mut op.tx, nin).await {
                    Ok((gp, cal)) if gp.org_number == org => (gp, cal),
                    Ok(_) | Err(BookingError::FailedPrecondition(_)) => {
                        return Err(BookingError::FailedPrecondition(
                            "patient_nin is not on a list of this practice".into(),
                        ));
                    }
                    Err(e) => return Err(e),
                };
                let now = self.now();
                // The patient's open request (the patient searched online, then phoned), else a
                // new one of channel practice from `requested_at`.
                taken = self.pending.take(nin.as_str());
                let open = match taken.clone() {
                    Some(e) => Some(e),
                    None => episodes::open_of_patient(&mut op.tx, nin.as_str(), now).await?,
                };
                let new = open.is_none();
                let mut episode = match open {
                    Some(e) => e,
                    None => {
                        let mut e = Episode::open(
                            nin.as_str(),
                            &list_gp.listed(),
                            Channel::Practice,
                            requested_at.unwrap_or(now),
                            &cal,
                        );
                        let (own, others) = earliest_offers(
                            &mut op.tx,
                            &list_gp,
                            &e,
                            now,
                            now + Duration::days(30),
                        )
                        .await?;
                        e.offered(own, others);
                        e
                    }
                };
                // The key was claimed up front (the list check may fail the call before the
                // take), so the take has no replay to find.
                let (slot, gp) = match self
                    .take_slot::<Appointment>(op, nin, Practice::Org(org), TakeOf::AnySlot(slot_id))
                    .await?
                {
                    Taken::Replay(first) => return Ok(first),
                    Taken::Slot(taken) => taken,
                };
                // The booked slot is an offer too, unless it is the acute reserve.
                if new && !slot.acute_reserve {
                    let own = slot.gp_id == list_gp.gp_id;
                    episode.offered(own.then_some(slot.start), (!own).then_some(slot.start));
                }
                episode.chose(&slot.slot_id, slot.start, now);
                episode.booked(now);
                episode.write(&mut op.tx);
                let a = self
                    .book_taken(
                        caller,
                        rpc::BOOK_FOR_PATIENT,
                        op,
                        nin,
                        (&slot, &gp),
                        reason,
                        &episode.request_id,
                    )
                    .await?;
                if new {
                    opened = Some(episode);
                }
                done = true;
                Ok(a)
            },
        )
        .await;
        let written = done && r.is_ok();
        if let (Some(e), true) = (opened, written) {
            self.metrics.opened(&e);
        }
        if let (Some(e), false) = (taken, written) {
            self.pending.restore(e);
        }
        booked(r)
    }
}

/// The refusal of `add[i]`, a patient listed with another organisation: names that
/// organisation (not the patient).
async fn listed_elsewhere(tx: &mut Tx, i: usize, nin: &str) -> BookingError {
    match store::list_org(tx, nin).await {
        Ok(Some(org)) => BookingError::FailedPrecondition(format!(
            "add[{i}]: patient is listed with organisation {org}: a move between practices goes through MoveListing"
        )),
        Ok(None) => BookingError::FailedPrecondition(format!(
            "add[{i}]: the patient's listing changed concurrently, retry"
        )),
        Err(e) => e.into(),
    }
}
