//! The EHR's schedule: GPs, closure days, opening hours, publishing and withdrawing slots.

use super::*;
use chrono::NaiveDate;
use econsult_runtime::clock::from_ms;
use econsult_runtime::command;
use econsult_runtime::idempotency::Op;

/// Open periods (ISO weekday, opens, closes) and the phone number, as SetOpeningHours stores them.
type OpeningHours = (Vec<(u32, u32, u32)>, String);

impl Booking {
    /// Creates or updates a GP of `org`.
    pub async fn upsert_gp(&self, org: &str, input: GpInput) -> Result<Gp, BookingError> {
        let mut tx = self.p.db.begin().await?;
        let now = self.p.clock.now_ms();
        match store::gp_in_org(&mut tx, org, &input.gp_id).await {
            Ok(existing) if existing.list_size > input.list_capacity => {
                return Err(BookingError::FailedPrecondition(format!(
                    "list_capacity {} is below the current list size {}",
                    input.list_capacity, existing.list_size
                )));
            }
            Ok(_) | Err(BookingError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        store::upsert_gp(&mut tx, &new_id(), org, &input, now).await?;
        let gp = store::gp_in_org(&mut tx, org, &input.gp_id).await?;
        tx.commit().await?;
        Ok(gp)
    }

    /// Reads a GP of `org`.
    pub async fn get_gp(&self, org: &str, gp_id: &str) -> Result<Gp, BookingError> {
        let mut conn = self.p.db.read().acquire().await?;
        store::gp_in_org(&mut conn, org, gp_id).await
    }

    /// Replaces the closure days of `org`.
    pub async fn set_closures(
        &self,
        caller: &Caller,
        org: &str,
        dates: Vec<NaiveDate>,
        key: &str,
    ) -> Result<Vec<NaiveDate>, BookingError> {
        let mut dates = dates;
        dates.sort();
        dates.dedup();
        let req = (org, &dates);
        command::run(
            &self.p.db,
            self.command(caller, rpc::SET_CLOSURES, key, &req),
            async |op: &mut Op| -> Result<Vec<NaiveDate>, BookingError> {
                store::set_closures(&mut op.tx, org, &dates).await?;
                Ok(dates.clone())
            },
        )
        .await
    }

    /// Replaces the phone number and opening hours of `org`: `periods` are (ISO weekday,
    /// opens, closes) in minutes after midnight (Europe/Oslo), validated by the caller.
    pub async fn set_opening_hours(
        &self,
        caller: &Caller,
        org: &str,
        phone: &str,
        periods: Vec<(u32, u32, u32)>,
        key: &str,
    ) -> Result<OpeningHours, BookingError> {
        let mut periods = periods;
        periods.sort_unstable();
        let req = (org, phone, &periods);
        command::run(
            &self.p.db,
            self.command(caller, rpc::SET_OPENING_HOURS, key, &req),
            async |op: &mut Op| -> Result<OpeningHours, BookingError> {
                let now = self.now().timestamp_millis();
                store::set_opening_hours(&mut op.tx, org, phone, &periods, now).await?;
                Ok((periods.clone(), phone.to_owned()))
            },
        )
        .await
    }

    /// Publishes slots for a GP of `org`, all or nothing.
    pub async fn publish_slots(
        &self,
        caller: &Caller,
        org: &str,
        gp_id: &str,
        slots: Vec<NewSlot>,
        key: &str,
    ) -> Result<Vec<Slot>, BookingError> {
        let now = self.now();
        for (i, s) in slots.iter().enumerate() {
            if s.start <= now {
                return Err(BookingError::invalid(
                    format!("slots[{i}].start"),
                    "must be in the future",
                ));
            }
        }
        // Overlaps inside the request.
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by_key(|&i| slots[i].start);
        for w in order.windows(2) {
            let (a, b) = (&slots[w[0]], &slots[w[1]]);
            if b.start < a.start + Duration::minutes(i64::from(a.duration_minutes)) {
                return Err(BookingError::invalid(
                    format!("slots[{}].start", w[1]),
                    format!("overlaps slots[{}]", w[0]),
                ));
            }
        }
        let req = (org, gp_id, &slots);
        command::run(
            &self.p.db,
            self.command(caller, rpc::PUBLISH_SLOTS, key, &req),
            async |op: &mut Op| -> Result<Vec<Slot>, BookingError> {
                let tx = &mut op.tx;
                let gp = store::gp_in_org(tx, org, gp_id).await?;
                self.p.db.lock(tx, &format!("slots:{}", gp.gp_uid)).await?;
                let (Some(first), Some(last)) = (order.first(), order.last()) else {
                    return Ok(Vec::new());
                };
                let lo = slots[*first].start.timestamp_millis();
                let hi = slots[*last].start.timestamp_millis()
                    + i64::from(slots[*last].duration_minutes) * 60_000;
                let existing = store::overlapping(tx, &gp.gp_uid, lo, hi).await?;
                let created_at = now.timestamp_millis();
                let mut out = Vec::with_capacity(slots.len());
                for (i, s) in slots.iter().enumerate() {
                    let start = s.start.timestamp_millis();
                    let end = start + i64::from(s.duration_minutes) * 60_000;
                    if existing.iter().any(|&(a, b)| a < end && b > start) {
                        return Err(BookingError::invalid(
                            format!("slots[{i}].start"),
                            "overlaps an existing slot of the GP",
                        ));
                    }
                    let slot = Slot {
                        slot_id: new_id(),
                        gp_id: gp_id.to_owned(),
                        start: s.start,
                        end: from_ms(end),
                        modality: s.modality,
                        status: SlotStatus::Free,
                        acute_reserve: s.acute_reserve,
                    };
                    store::insert_slot(tx, &gp.gp_uid, &slot, created_at).await?;
                    out.push(slot);
                }
                if store::has_waiting(tx, &gp.gp_uid).await?
                    || store::guarantee::has_priority_waiting(tx, org, created_at).await?
                {
                    for s in &mut out {
                        if !s.acute_reserve && self.offer_to_waitlist(tx, &s.slot_id).await? {
                            s.status = SlotStatus::BusyTentative;
                        }
                    }
                }
                Ok(out)
            },
        )
        .await
    }

    /// Withdraws free slots of `org`.
    pub async fn withdraw_slots(
        &self,
        caller: &Caller,
        org: &str,
        slot_ids: &[String],
        key: &str,
    ) -> Result<Vec<Slot>, BookingError> {
        let req = (org, slot_ids);
        command::run(
            &self.p.db,
            self.command(caller, rpc::WITHDRAW_SLOTS, key, &req),
            async |op: &mut Op| -> Result<Vec<Slot>, BookingError> {
                let tx = &mut op.tx;
                let now = self.p.clock.now_ms();
                let mut out = Vec::new();
                for (i, id) in slot_ids.iter().enumerate() {
                    let withdrawn = store::withdraw(tx, id, org, now).await?;
                    let slot = store::slot_in_org(tx, id, org, now)
                        .await?
                        .ok_or_else(|| BookingError::NotFound(format!("slot_ids[{i}]")))?;
                    if !withdrawn {
                        return Err(BookingError::FailedPrecondition(format!(
                            "slot_ids[{i}] is held, booked or already withdrawn: cancel the appointment first"
                        )));
                    }
                    out.push(slot);
                }
                Ok(out)
            },
        )
        .await
    }
}
