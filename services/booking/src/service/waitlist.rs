//! The waitlist: joining and leaving it, offering free slots to the first in line, and freeing
//! lapsed holds.

use super::guarantee::Priority;
use super::*;
use crate::store::{NewEntry, Offerable};
use chrono::NaiveDate;
use econsult_calendar::oslo_date;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::clock::from_ms;
use econsult_runtime::command;
use econsult_runtime::events::{WaitlistOffered, topics};
use econsult_runtime::idempotency::Op;

impl Booking {
    /// Joins the own GP's waitlist; a matching free slot is offered at once.
    pub async fn join_waitlist(
        &self,
        caller: &Caller,
        nin: &NationalId,
        latest: NaiveDate,
        modality: Option<Modality>,
        key: &str,
    ) -> Result<WaitlistEntry, BookingError> {
        let now = self.now();
        if latest < oslo_date(now) {
            return Err(BookingError::invalid(
                "latest_date",
                "must be today or later",
            ));
        }
        let req = (nin.as_str(), latest, modality);
        command::run(
            &self.p.db,
            self.command(caller, rpc::JOIN_WAITLIST, key, &req),
            async |op: &mut Op| -> Result<WaitlistEntry, BookingError> {
                let now_ms = now.timestamp_millis();
                let (gp, _) = self.own_gp(&mut op.tx, nin).await?;
                let entry_id = new_id();
                let entry = NewEntry {
                    entry_id: &entry_id,
                    gp_uid: &gp.gp_uid,
                    nin: nin.as_str(),
                    latest,
                    modality,
                    first_in_line: false,
                    joined_at: now_ms,
                };
                if !store::join_waitlist(&mut op.tx, &entry).await? {
                    return Err(BookingError::AlreadyExists(
                        "you are already on this GP's waitlist".into(),
                    ));
                }
                // A slot that is free right now goes to the first in line (which may be someone
                // else).
                for id in
                    store::takeable_slots_of_gp(&mut op.tx, &gp.gp_uid, modality, now_ms).await?
                {
                    self.offer_to_waitlist(&mut op.tx, &id).await?;
                }
                let access = Access::new(
                    rpc::JOIN_WAITLIST,
                    format!("waitlist:{entry_id}"),
                    nin.as_str(),
                    "joined a GP's waiting list for appointments",
                );
                op.audit(caller, &access, now_ms)?;
                store::waitlist_entry(&mut op.tx, &entry_id, None)
                    .await?
                    .ok_or_else(|| BookingError::Db(sqlx::Error::RowNotFound))
            },
        )
        .await
    }

    /// Leaves the waitlist.
    pub async fn leave_waitlist(
        &self,
        caller: &Caller,
        nin: &NationalId,
        entry_id: &str,
    ) -> Result<WaitlistEntry, BookingError> {
        let mut tx = self.p.db.begin().await?;
        let now = self.p.clock.now_ms();
        store::leave_waitlist(&mut tx, entry_id, nin.as_str()).await?;
        let entry = match store::waitlist_entry(&mut tx, entry_id, Some(nin.as_str())).await? {
            Some(e) => Some(e),
            // An entry of the priority waitlist.
            None => {
                store::guarantee::leave_priority(&mut tx, entry_id, nin.as_str()).await?;
                store::guarantee::priority_entry(&mut tx, entry_id, nin.as_str()).await?
            }
        }
        .ok_or_else(|| BookingError::NotFound("entry_id".into()))?;
        let access = Access::new(
            rpc::LEAVE_WAITLIST,
            format!("waitlist:{entry_id}"),
            nin.as_str(),
            "left a GP's waiting list for appointments",
        );
        audit::record(&mut tx, caller, &access, now).await?;
        tx.commit().await?;
        Ok(entry)
    }

    /// Offers a takeable slot as a hold: to the earliest priority request whose target window
    /// it is in ([`Booking::offer_to_priority`]), else to the first matching patient of its GP's
    /// waitlist. Returns whether it was offered.
    pub(super) async fn offer_to_waitlist(
        &self,
        tx: &mut Tx,
        slot_id: &str,
    ) -> Result<bool, BookingError> {
        let now = self.p.clock.now_ms();
        let Some(s) = store::offerable_slot(tx, slot_id, now).await? else {
            return Ok(false);
        };
        if let Priority::Handled(offered) = self.offer_to_priority(tx, slot_id, &s).await? {
            return Ok(offered);
        }
        let date = oslo_date(from_ms(s.start_at));
        let Some((entry_id, patient)) =
            store::first_waiting(tx, &s.gp_uid, date, s.modality).await?
        else {
            return Ok(false);
        };
        let hold_id = new_id();
        let expires = now + self.cfg.waitlist_hold_ttl.num_milliseconds();
        if !store::offer_hold(tx, slot_id, &entry_id, &patient, &hold_id, expires, now).await? {
            return Ok(false);
        }
        self.offered_event(tx, &s, slot_id, &entry_id, &hold_id, &patient, expires)?;
        Ok(true)
    }

    /// Writes the `booking.waitlist_offered` event of slot `s` held for `patient` (the patient
    /// is notified with the hold's window).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn offered_event(
        &self,
        tx: &mut Tx,
        s: &Offerable,
        slot_id: &str,
        entry_id: &str,
        hold_id: &str,
        patient: &str,
        expires: i64,
    ) -> Result<(), BookingError> {
        let body = WaitlistOffered {
            entry_id: entry_id.to_owned(),
            hold_id: hold_id.to_owned(),
            slot_id: slot_id.to_owned(),
            expires_at_ms: expires,
            gp_id: s.gp_id.clone(),
            start_ms: s.start_at,
            end_ms: s.end_at,
            modality: s
                .modality
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
        };
        outbox::write(
            tx,
            NewEvent {
                topic: topics::BOOKING_WAITLIST_OFFERED,
                org_number: &s.org_number,
                route_key: &self.p.pseudonyms.key_for(patient),
                payload: &body,
            },
            self.p.clock.now_ms(),
        )?;
        Ok(())
    }

    /// Frees lapsed holds (and offers those slots to the waitlist). Returns how many.
    pub async fn sweep_expired_holds(&self) -> Result<usize, BookingError> {
        let now = self.p.clock.now_ms();
        let mut tx = self.p.db.begin().await?;
        let freed = store::free_lapsed_holds(&mut tx, now).await?;
        for id in &freed {
            self.offer_to_waitlist(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(freed.len())
    }

    /// Background task: sweeps lapsed holds every `every` until shutdown.
    pub async fn run_hold_sweeper(self, every: std::time::Duration) {
        let mut stop = self.p.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            match self.sweep_expired_holds().await {
                Ok(n) if n > 0 => tracing::info!(freed = n, "lapsed holds freed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "hold sweeper failed"),
            }
        }
    }
}
