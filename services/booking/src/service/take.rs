//! Taking a slot for a patient (Book, Reschedule, BookForPatient) and the appointment that
//! follows.

use super::*;
use crate::store::{Claimed, Found, Practice, SlotGp, TakeOf};
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::Purpose;
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::Backend;
use econsult_runtime::events::topics;
use econsult_runtime::idempotency::Op;
use serde::de::DeserializeOwned;

/// What the first statement of a call that claims its key in it found
/// ([`econsult_runtime::idempotency::begin_claiming_first`]): the first attempt's answer `R`, or
/// what the statement did.
pub(super) enum Taken<R, T> {
    /// A retry: the first attempt's answer; nothing was written.
    Replay(R),
    /// The key is this call's.
    Slot(T),
}

/// Refuses a slot that a patient may not hold: reserved for same-day emergency help, or started.
pub(super) fn holdable(slot: &Slot, now_ms: i64) -> Result<(), BookingError> {
    if slot.acute_reserve {
        return Err(BookingError::FailedPrecondition(
            "slot is reserved for same-day emergency help".into(),
        ));
    }
    if slot.start.timestamp_millis() <= now_ms {
        return Err(BookingError::FailedPrecondition(
            "slot has already started".into(),
        ));
    }
    Ok(())
}

impl Booking {
    /// Loads a slot of `practice` with its GP (as an appointment and its event need it), or
    /// NOT_FOUND (slots of other practices are invisible); with [`Practice::OfPatient`], one
    /// statement finds the patient's practice too (FAILED_PRECONDITION when on no list).
    pub(super) async fn slot_with_gp(
        &self,
        tx: &mut Tx,
        practice: Practice<'_>,
        slot_id: &str,
    ) -> Result<(Slot, SlotGp), BookingError> {
        match store::slot_with_gp(tx, practice, slot_id, self.p.clock.now_ms()).await? {
            Found::Slot(found) => Ok(*found),
            Found::NoSlot => Err(BookingError::NotFound("slot_id".to_owned())),
            Found::NoList => Err(not_on_a_list()),
        }
    }

    /// Takes `of` of `practice` for the patient inside `op`: an own hold or a takeable slot. The
    /// first statement of the call on PostgreSQL: it claims the key of a call begun with
    /// [`econsult_runtime::command::Claim::InFirstStatement`], and `Replay` is the first
    /// attempt's answer.
    pub(super) async fn take_slot<R: DeserializeOwned>(
        &self,
        op: &mut Op,
        nin: &NationalId,
        practice: Practice<'_>,
        of: TakeOf<'_>,
    ) -> Result<Taken<R, (Slot, SlotGp)>, BookingError> {
        // PostgreSQL: one statement when it takes the slot; when it took nothing, the steps
        // below tell why (a slot that changed meanwhile may be taken by them after all, which
        // is as good).
        if self.p.db.backend() == Backend::Postgres {
            let now = self.p.clock.now_ms();
            if let Claimed::Row { claimed, outcome } =
                store::take_and_read(op, practice, of, nin.as_str(), now).await?
            {
                if let Some(first) = op.claimed(claimed).await? {
                    return Ok(Taken::Replay(first));
                }
                if let Some(taken) = outcome {
                    return Ok(Taken::Slot(taken));
                }
            }
        }
        self.take_slot_steps(&mut op.tx, nin, practice, of)
            .await
            .map(Taken::Slot)
    }

    /// [`Booking::take_slot`] step by step: SQLite's way, and PostgreSQL's to tell why the one
    /// statement took nothing.
    async fn take_slot_steps(
        &self,
        tx: &mut Tx,
        nin: &NationalId,
        practice: Practice<'_>,
        of: TakeOf<'_>,
    ) -> Result<(Slot, SlotGp), BookingError> {
        let now = self.p.clock.now_ms();
        match of {
            TakeOf::Hold(hold_id) => {
                let Some(slot_id) = store::take(tx, of, nin.as_str(), now).await? else {
                    // Not taken: an expired hold; or, while the patient holds another slot,
                    // not the current hold (one hold at a time: most likely one a newer
                    // HoldSlot replaced), naming the current one; else an unknown hold.
                    return Err(if store::hold_known(tx, hold_id, nin.as_str()).await? {
                        BookingError::FailedPrecondition("the hold has expired".into())
                    } else if let Some(current) = store::current_hold(tx, nin.as_str(), now).await?
                    {
                        BookingError::FailedPrecondition(format!(
                            "hold_id is not the patient's current hold (one at a time: a newer \
                             HoldSlot replaces the earlier); the current hold is {current}"
                        ))
                    } else {
                        BookingError::NotFound("hold_id".into())
                    });
                };
                let (slot, gp) = self.slot_with_gp(tx, practice, &slot_id).await?;
                if slot.start.timestamp_millis() <= now {
                    return Err(BookingError::FailedPrecondition(
                        "slot has already started".into(),
                    ));
                }
                Ok((slot, gp))
            }
            TakeOf::Slot(slot_id) | TakeOf::AnySlot(slot_id) => {
                let (slot, gp) = self.slot_with_gp(tx, practice, slot_id).await?;
                if slot.acute_reserve && matches!(of, TakeOf::Slot(_)) {
                    return Err(BookingError::FailedPrecondition(
                        "slot is reserved for same-day emergency help".into(),
                    ));
                }
                // The update takes only a slot that has not started.
                if store::take(tx, of, nin.as_str(), now).await?.is_none() {
                    return Err(BookingError::FailedPrecondition(
                        "slot is no longer free".into(),
                    ));
                }
                Ok((slot, gp))
            }
        }
    }

    /// The booked appointment of the taken `slot` for the patient, its row deferred to the
    /// commit (see [`store::insert_appointment`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_appointment(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        nin: &NationalId,
        (slot, gp): (&Slot, &SlotGp),
        reason: &str,
        request_id: &str,
        rescheduled_from: Option<&str>,
    ) -> Appointment {
        let a = Appointment {
            appointment_id: new_id(),
            slot: Slot {
                status: SlotStatus::Busy,
                ..slot.clone()
            },
            status: AppointmentStatus::Booked,
            patient_nin: nin.as_str().to_owned(),
            gp_id: slot.gp_id.clone(),
            reason: reason.to_owned(),
            booked_at: from_ms(self.p.clock.now_ms()),
            cancelled_at: None,
            cancelled_by: None,
            late_cancellation: false,
            rescheduled_from: rescheduled_from.map(str::to_owned),
            booked_by: caller.proxy.acting.as_ref().map(|acting| Booker {
                relation: acting.relation,
                name: caller.actor_name().to_owned(),
            }),
        };
        let request = Some(request_id).filter(|r| !r.is_empty());
        // Who booked: someone acting for the patient (a parent, a fullmakt holder), or "".
        let (actor_nin, acted_as) = caller.actor();
        let actor = (actor_nin, acted_as, caller.actor_name());
        store::insert_appointment(tx, &a, &gp.gp_uid, request, actor);
        a
    }

    /// The appointment of a slot taken for the patient in `op` by `action`, with its event and
    /// audit row.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn book_taken(
        &self,
        caller: &Caller,
        action: &str,
        op: &mut Op,
        nin: &NationalId,
        (slot, gp): (&Slot, &SlotGp),
        reason: &str,
        request_id: &str,
    ) -> Result<Appointment, BookingError> {
        let now = self.p.clock.now_ms();
        let a = self.insert_appointment(
            &mut op.tx,
            caller,
            nin,
            (slot, gp),
            reason,
            request_id,
            None,
        );
        self.emit_for(&mut op.tx, topics::BOOKING_CREATED, &a, gp.routing(), now)?;
        let access = Access::new(
            action,
            format!("appointment:{}", a.appointment_id),
            nin.as_str(),
            format!(
                "booked an appointment on {}",
                audit::local_time(a.slot.start)
            ),
        )
        .implies(Purpose::Administration);
        op.audit(caller, &access, now)?;
        Ok(a)
    }
}
