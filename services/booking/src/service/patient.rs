//! The patient's side: find, hold, book, cancel, reschedule, list.

use super::take::{Taken, holdable};
use super::*;
use crate::domain::Target;
use crate::store::{Claimed, NewHold, Practice, TakeOf};
use econsult_calendar::oslo_date;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::clock::from_ms;
use econsult_runtime::command::{self, Claim, Outcome};
use econsult_runtime::db::Backend;
use econsult_runtime::events::topics;
use econsult_runtime::idempotency::Op;

/// What a patient's target takes.
fn take_of(target: &Target) -> TakeOf<'_> {
    match target {
        Target::Hold(id) => TakeOf::Hold(id),
        Target::Slot(id) => TakeOf::Slot(id),
    }
}

impl Booking {
    /// Offers slots and updates the patient's booking request (see [`crate::episodes`]): the
    /// open one, or a new one. A read: the request waits in [`Pending`] for the next flush.
    pub async fn find_slots(
        &self,
        caller: &Caller,
        nin: &NationalId,
        modality: Option<Modality>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Offers, BookingError> {
        let now = self.now();
        let now_ms = now.timestamp_millis();
        let asked_from = from;
        let from = from.map_or(now, |f| f.max(now));
        let to = to.unwrap_or(from + Duration::days(30));
        if to <= from {
            return Err(BookingError::invalid("to", "must be after from"));
        }
        if to - from > Duration::days(92) {
            return Err(BookingError::invalid("to", "at most 92 days after from"));
        }
        let mut conn = self.p.db.read().acquire().await?;
        let asked = Search {
            only: "",
            except: "",
            from: from.timestamp_millis(),
            to: to.timestamp_millis(),
            now: now_ms,
            modality,
            limit: i64::from(limit),
        };
        // PostgreSQL: the list's GP and that GP's slots in one round trip.
        let (gp, cal, own) = if self.p.db.backend() == Backend::Postgres {
            let (gp, cal, own) = store::list_gp_and_slots(&mut conn, nin.as_str(), &asked)
                .await?
                .ok_or_else(not_on_a_list)?;
            (gp, cal, Some(own))
        } else {
            let (gp, cal) = self.own_gp(&mut conn, nin).await?;
            (gp, cal, None)
        };
        let vacant = gp.list_status == ListStatus::Vacant;
        // The patient's open request: held here, stored, or a new one.
        let open = match self.pending.get(nin.as_str(), now) {
            Some(e) => Some(e),
            None => episodes::open_of_patient(&mut conn, nin.as_str(), now).await?,
        };
        let new = open.is_none();
        let mut ep = open.unwrap_or_else(|| {
            Episode::open(nin.as_str(), &gp.listed(), Channel::Online, now, &cal)
        });
        let own = match own {
            Some(own) => own,
            None if vacant => Vec::new(),
            None => {
                let w = Search {
                    only: &gp.gp_uid,
                    ..asked
                };
                store::search(&mut conn, &gp.org_number, w).await?
            }
        };
        let own_in_time = own.first().is_some_and(|(s, _)| ep.in_time(s.start));
        let own_first = own.first().map(|(s, _)| s.start);
        let mut offers: Vec<Offer> = own
            .into_iter()
            .map(|(slot, name)| Offer {
                working_days: ep.working_days_to(slot.start),
                slot,
                gp_display_name: name,
                own_gp: true,
                alternative_reason: String::new(),
            })
            .collect();
        let mut others_first = None;
        if !own_in_time {
            let reason = if vacant {
                "your list has no GP: another GP of the practice"
            } else {
                "your GP has no free slot within five working days: another GP of the practice"
            };
            let w = Search {
                except: &gp.gp_uid,
                ..asked
            };
            let others = store::search(&mut conn, &gp.org_number, w).await?;
            others_first = others.first().map(|(s, _)| s.start);
            offers.extend(others.into_iter().map(|(slot, name)| Offer {
                working_days: ep.working_days_to(slot.start),
                slot,
                gp_display_name: name,
                own_gp: false,
                alternative_reason: reason.to_owned(),
            }));
            offers.sort_by_key(|o| (oslo_date(o.slot.start), !o.own_gp, o.slot.start));
            offers.truncate(limit as usize);
        }
        // What the practice could offer whatever this search's filters: the search's own
        // answer when it asked for everything up to past the deadline, else one slot each.
        let unfiltered = modality.is_none()
            && asked_from.is_none_or(|f| f <= now)
            && to.timestamp_millis() >= ep.deadline_end_ms();
        // Unfiltered, the own GP's first slot is its earliest, and the colleagues were asked
        // exactly when the own GP had none in time.
        let (own_earliest, others_earliest) = if unfiltered {
            (own_first, if own_in_time { None } else { others_first })
        } else {
            let until = (now + Duration::days(30)).max(to);
            earliest_offers(&mut conn, &gp, &ep, now, until).await?
        };
        ep.offered(own_earliest, others_earliest);
        // The own GP has nothing in time: the guarantee engine's offers.
        let (guarantee, met) = if ep.met_by_own_gp() {
            (Vec::new(), None)
        } else {
            self.guarantee_offers(&mut conn, &gp, &ep, now).await?
        };
        drop(conn);
        if let Some(m) = met {
            ep.met_by_step(m, now);
        }
        ep.searched(now, offers.iter().any(|o| ep.in_time(o.slot.start)));
        let access = Access::new(
            rpc::FIND,
            format!("gp:{}", gp.gp_id),
            nin.as_str(),
            "searched for free appointments with your GP",
        );
        if !self
            .pending
            .put(ep.clone(), audit::row(caller, &access, now_ms)?)
        {
            return Err(BookingError::Unavailable(
                "booking requests cannot be recorded right now, retry".into(),
            ));
        }
        if new {
            self.metrics.opened(&ep);
        }
        Ok(Offers {
            slots: offers,
            earliest: ep.earliest_offer(),
            earliest_working_days: ep.earliest_offer_working_days(),
            within_target: ep.within_target(),
            met_by_own_gp: ep.met_by_own_gp(),
            patient_preference: ep.patient_preference(),
            breach: ep.breach(),
            met_by: ep.met_by(),
            request_id: ep.request_id,
            guarantee,
        })
    }

    /// Holds a free slot of the patient's practice; releases the patient's previous hold.
    pub async fn hold(
        &self,
        caller: &Caller,
        nin: &NationalId,
        slot_id: &str,
        request_id: &str,
        key: &str,
    ) -> Result<Hold, BookingError> {
        let req = (nin.as_str(), slot_id, request_id);
        // The booking request this hold answers, written with the hold: the search's (held here
        // until the flush), else the one named, else the patient's open one. Put back unless
        // the hold was written.
        let mut taken = None;
        let mut done = false;
        let r = command::run_with(
            &self.p.db,
            self.command(caller, rpc::HOLD, key, &req),
            Claim::InFirstStatement,
            async |op: &mut Op| -> Result<Outcome<Hold>, BookingError> {
                taken = self.pending.take(nin.as_str());
                let link = taken
                    .as_ref()
                    .map(|e| e.request_id.clone())
                    .or_else(|| Some(request_id.to_owned()).filter(|r| !r.is_empty()));
                let now = self.p.clock.now_ms();
                let hold_id = new_id();
                let h = NewHold {
                    hold_id: &hold_id,
                    nin: nin.as_str(),
                    expires: now + self.cfg.hold_ttl.num_milliseconds(),
                    request: link.as_deref(),
                    slot_id,
                    now,
                };
                let practice = Practice::OfPatient(nin.as_str());
                // One hold at a time: an earlier hold of the patient is released (rolled back
                // with the rest if the new hold fails). PostgreSQL: one round trip, the claim of
                // the key, the hold and the release. SQLite: the checks and the release first,
                // then the hold.
                let held = match store::hold_claiming(op, &h).await? {
                    Claimed::Row { claimed, outcome } => {
                        if let Some(first) = op.claimed(claimed).await? {
                            return Ok(Outcome::Replayed(first));
                        }
                        if outcome.is_none() {
                            // Why not: the same checks in the same order as on SQLite.
                            let (slot, _) =
                                self.slot_with_gp(&mut op.tx, practice, slot_id).await?;
                            holdable(&slot, now)?;
                        }
                        outcome
                    }
                    Claimed::Unfit => {
                        let (slot, _) = self.slot_with_gp(&mut op.tx, practice, slot_id).await?;
                        holdable(&slot, now)?;
                        let released =
                            store::release_holds_of(&mut op.tx, nin.as_str(), slot_id).await?;
                        store::hold(&mut op.tx, &h)
                            .await?
                            .then_some((slot, released))
                    }
                };
                let Some((slot, released)) = held else {
                    return Err(BookingError::FailedPrecondition(
                        "slot is no longer free".into(),
                    ));
                };
                for id in released {
                    self.offer_to_waitlist(&mut op.tx, &id).await?;
                }
                let at = from_ms(now);
                match taken.clone() {
                    Some(mut e) => {
                        e.chose(&slot.slot_id, slot.start, at);
                        e.write(&mut op.tx);
                    }
                    None => store::episodes::choose(
                        &mut op.tx,
                        episodes::choose_values(
                            h.request,
                            nin.as_str(),
                            &slot.slot_id,
                            slot.start,
                            at,
                            false,
                        ),
                    ),
                }
                done = true;
                Ok(Outcome::Done(Hold {
                    hold_id: hold_id.clone(),
                    slot: Slot {
                        status: SlotStatus::BusyTentative,
                        ..slot
                    },
                    expires_at: from_ms(h.expires),
                    from_waitlist: false,
                }))
            },
        )
        .await;
        // The request was written with the hold, or waits again for the flush.
        if let (Some(e), false) = (taken, done && r.is_ok()) {
            self.pending.restore(e);
        }
        r
    }

    /// Books a hold or a free slot.
    pub async fn book(
        &self,
        caller: &Caller,
        nin: &NationalId,
        target: Target,
        reason: &str,
        request_id: &str,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (nin.as_str(), &target, reason, request_id);
        // The booking request this booking closes: the search's (held here until the flush),
        // else the one its hold was made for, else the one named, else the patient's open one.
        let mut taken = None;
        let mut done = false;
        let r = command::run_with(
            &self.p.db,
            self.command(caller, rpc::BOOK, key, &req),
            Claim::InFirstStatement,
            async |op: &mut Op| -> Result<Outcome<Appointment>, BookingError> {
                taken = self.pending.take(nin.as_str());
                let practice = Practice::OfPatient(nin.as_str());
                let (slot, gp) = match self.take_slot(op, nin, practice, take_of(&target)).await? {
                    Taken::Replay(first) => return Ok(Outcome::Replayed(first)),
                    Taken::Slot(taken) => taken,
                };
                let at = self.now();
                match taken.clone() {
                    Some(mut e) => {
                        e.chose(&slot.slot_id, slot.start, at);
                        e.booked(at);
                        e.write(&mut op.tx);
                    }
                    None => {
                        let link = match &target {
                            Target::Hold(_) => gp.hold_request_id.clone(),
                            Target::Slot(_) => None,
                        }
                        .or_else(|| Some(request_id.to_owned()).filter(|r| !r.is_empty()));
                        store::episodes::choose(
                            &mut op.tx,
                            episodes::choose_values(
                                link.as_deref(),
                                nin.as_str(),
                                &slot.slot_id,
                                slot.start,
                                at,
                                true,
                            ),
                        );
                    }
                }
                let a = self
                    .book_taken(caller, rpc::BOOK, op, nin, (&slot, &gp), reason, request_id)
                    .await?;
                done = true;
                Ok(Outcome::Done(a))
            },
        )
        .await;
        if let (Some(e), false) = (taken, done && r.is_ok()) {
            self.pending.restore(e);
        }
        booked(r)
    }

    /// Cancels a booked appointment of the patient inside `tx`; returns it and its routing
    /// (organisation, municipality).
    async fn cancel_own(
        &self,
        tx: &mut Tx,
        nin: &NationalId,
        id: &str,
    ) -> Result<(Appointment, String, String), BookingError> {
        let now = self.p.clock.now_ms();
        let stored = store::appointment_of_patient(tx, nin.as_str(), id, now)
            .await?
            .ok_or_else(|| BookingError::NotFound("appointment_id".into()))?;
        let before = stored.appointment;
        if before.status != AppointmentStatus::Booked {
            return Err(BookingError::FailedPrecondition(format!(
                "appointment is {}, only booked ones can be cancelled",
                before.status.fhir()
            )));
        }
        let start = before.slot.start.timestamp_millis();
        if start <= now {
            return Err(BookingError::FailedPrecondition(
                "the appointment has already started".into(),
            ));
        }
        let late = start - now < 24 * 3_600_000;
        if !store::cancel_appointment(tx, id, CancelledBy::Patient, late, now).await? {
            return Err(BookingError::FailedPrecondition(
                "the appointment changed concurrently, retry".into(),
            ));
        }
        store::set_slot_status(
            tx,
            &before.slot.slot_id,
            SlotStatus::Free,
            Some(SlotStatus::Busy),
        )
        .await?;
        let after = Appointment {
            status: AppointmentStatus::Cancelled,
            cancelled_at: Some(from_ms(now)),
            cancelled_by: Some(CancelledBy::Patient),
            late_cancellation: late,
            slot: Slot {
                status: SlotStatus::Free,
                ..before.slot.clone()
            },
            ..before
        };
        Ok((after, stored.org_number, stored.municipality_number))
    }

    /// Cancels an own appointment; the slot goes to the waitlist or back to free.
    pub async fn cancel(
        &self,
        caller: &Caller,
        nin: &NationalId,
        id: &str,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (nin.as_str(), id);
        command::run(
            &self.p.db,
            self.command(caller, rpc::CANCEL, key, &req),
            async |op: &mut Op| -> Result<Appointment, BookingError> {
                let now = self.p.clock.now_ms();
                let (a, org, muni) = self.cancel_own(&mut op.tx, nin, id).await?;
                self.emit(&mut op.tx, topics::BOOKING_CANCELLED, &a, &org, &muni, now)
                    .await?;
                self.offer_to_waitlist(&mut op.tx, &a.slot.slot_id).await?;
                let access = Access::new(
                    rpc::CANCEL,
                    format!("appointment:{id}"),
                    nin.as_str(),
                    format!(
                        "cancelled an appointment on {}",
                        audit::local_time(a.slot.start)
                    ),
                );
                op.audit(caller, &access, now)?;
                Ok(a)
            },
        )
        .await
    }

    /// Moves an own appointment to another slot atomically.
    pub async fn reschedule(
        &self,
        caller: &Caller,
        nin: &NationalId,
        id: &str,
        target: Target,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (nin.as_str(), id, &target);
        let r = command::run_with(
            &self.p.db,
            self.command(caller, rpc::RESCHEDULE, key, &req),
            Claim::InFirstStatement,
            async |op: &mut Op| -> Result<Outcome<Appointment>, BookingError> {
                // Take the new slot first: if it is gone, nothing has changed.
                let practice = Practice::OfPatient(nin.as_str());
                let (slot, gp) = match self.take_slot(op, nin, practice, take_of(&target)).await? {
                    Taken::Replay(first) => return Ok(Outcome::Replayed(first)),
                    Taken::Slot(taken) => taken,
                };
                let now = self.p.clock.now_ms();
                let tx = &mut op.tx;
                let (old, old_org, old_muni) = self.cancel_own(tx, nin, id).await?;
                let new = self.insert_appointment(
                    tx,
                    caller,
                    nin,
                    (&slot, &gp),
                    &old.reason,
                    "",
                    Some(id),
                );
                self.emit(
                    tx,
                    topics::BOOKING_CANCELLED,
                    &old,
                    &old_org,
                    &old_muni,
                    now,
                )
                .await?;
                self.emit_for(tx, topics::BOOKING_RESCHEDULED, &new, gp.routing(), now)?;
                self.offer_to_waitlist(tx, &old.slot.slot_id).await?;
                let access = Access::new(
                    rpc::RESCHEDULE,
                    format!("appointment:{}", new.appointment_id),
                    nin.as_str(),
                    format!(
                        "moved an appointment from {} to {}",
                        audit::local_time(old.slot.start),
                        audit::local_time(new.slot.start)
                    ),
                );
                op.audit(caller, &access, now)?;
                Ok(Outcome::Done(new))
            },
        )
        .await;
        booked(r)
    }

    /// The patient's appointments, holds and waitlist entries.
    pub async fn list_mine(
        &self,
        caller: &Caller,
        nin: &NationalId,
        include_past: bool,
    ) -> Result<(Vec<Appointment>, Vec<Hold>, Vec<WaitlistEntry>), BookingError> {
        let now = self.p.clock.now_ms();
        let nin_str = nin.as_str();
        let mut conn = self.p.db.read().acquire().await?;
        let appts = store::appointments_of_patient(&mut conn, nin_str, include_past, now).await?;
        let holds = store::holds_of(&mut conn, nin_str, now).await?;
        let mut waitlist = store::waitlist_of_patient(&mut conn, nin_str).await?;
        waitlist.extend(store::guarantee::priority_of_patient(&mut conn, nin_str).await?);
        drop(conn);
        let access = Access::new(
            rpc::LIST_MINE,
            "appointments",
            nin_str,
            "read your appointments",
        );
        audit::record_reads(&self.p.db, caller, &[access], now).await?;
        Ok((appts, holds, waitlist))
    }
}
