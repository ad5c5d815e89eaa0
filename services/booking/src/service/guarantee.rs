//! The guarantee engine ([`crate::guarantee`]): the practice's policy, the engine's offers to a
//! patient whose own GP has no slot in time, the priority waitlist and the e-consultation reply
//! that meets a request.

use super::*;
use crate::guarantee::{GuaranteeOffer, MetBy, Policy, Step};
use crate::store::Offerable;
use crate::store::guarantee::{self as gstore, NewPriorityEntry};
use econsult_calendar::oslo_date;
use econsult_runtime::audit::Access;
use econsult_runtime::clock::from_ms;
use econsult_runtime::command;
use econsult_runtime::idempotency::Op;

/// Most entries one freed slot is tried against before it goes to the ordinary waitlist (each
/// try lost to a concurrent offer of another slot).
const PRIORITY_TRIES: usize = 8;

/// What the priority waitlist did with a freed slot.
pub(super) enum Priority {
    /// Nobody waits for a window the slot is in: the ordinary waitlist may have it.
    NoneWaiting,
    /// Held for a priority request (true), or taken meanwhile by someone else (false).
    Handled(bool),
}

impl Booking {
    /// The guarantee policy of `org` (the default until set).
    pub async fn guarantee_policy(&self, org: &str) -> Result<Policy, BookingError> {
        let mut conn = self.p.db.read().acquire().await?;
        gstore::policy(&mut conn, org).await
    }

    /// Replaces the guarantee policy of `org` (validated by the caller).
    pub async fn set_guarantee_policy(
        &self,
        caller: &Caller,
        org: &str,
        steps: Vec<Step>,
        unmet_threshold: u32,
        key: &str,
    ) -> Result<Policy, BookingError> {
        let policy = Policy {
            steps,
            unmet_threshold,
            is_default: false,
        };
        let req = (org, &policy);
        command::run(
            &self.p.db,
            self.command(caller, rpc::SET_GUARANTEE_POLICY, key, &req),
            async |op: &mut Op| -> Result<Policy, BookingError> {
                gstore::set_policy(&mut op.tx, org, &policy, self.p.clock.now_ms()).await?;
                Ok(policy.clone())
            },
        )
        .await
    }

    /// The engine's offers for `ep`, whose own GP has no slot in time, in the order of the
    /// practice's policy, and the step that met it (a slot in time of a colleague or by video or
    /// phone), whatever the search's filters.
    pub(super) async fn guarantee_offers(
        &self,
        conn: &mut sqlx::AnyConnection,
        gp: &ListGp,
        ep: &Episode,
        now: DateTime<Utc>,
    ) -> Result<(Vec<GuaranteeOffer>, Option<MetBy>), BookingError> {
        let policy = gstore::policy(conn, &gp.org_number).await?;
        let now_ms = now.timestamp_millis();
        let window = Search {
            only: "",
            except: &gp.gp_uid,
            from: now_ms,
            to: ep.deadline_end_ms(),
            now: now_ms,
            modality: None,
            limit: 1,
        };
        let first = async |conn: &mut sqlx::AnyConnection, m: Modality| {
            store::search(
                conn,
                &gp.org_number,
                Search {
                    modality: Some(m),
                    ..window
                },
            )
            .await
            .map(|mut v| v.pop())
        };
        let colleague = first(conn, Modality::InPerson).await?;
        let video = first(conn, Modality::Video).await?;
        let phone = first(conn, Modality::Phone).await?;
        let remote = match (video, phone) {
            (Some(v), Some(p)) => Some(if p.0.start < v.0.start { p } else { v }),
            (v, p) => v.or(p),
        };
        let met = if colleague.is_some() {
            Some(MetBy::Colleague)
        } else {
            remote.as_ref().map(|_| MetBy::VideoOrPhone)
        };
        let own = if gp.list_status == ListStatus::Vacant {
            "your list has no GP"
        } else {
            "your GP has no free appointment within five working days"
        };
        let offer = |(slot, name): (Slot, String), reason: String| Offer {
            working_days: ep.working_days_to(slot.start),
            slot,
            gp_display_name: name,
            own_gp: false,
            alternative_reason: reason,
        };
        let target_date = ep.deadline;
        let mut out = Vec::new();
        for step in &policy.steps {
            let (reason, slot) = match step {
                Step::Colleague => match colleague.clone() {
                    Some(s) => {
                        let reason = format!(
                            "{own}: {} of your practice can see you on {}",
                            s.1,
                            oslo_date(s.0.start)
                        );
                        (reason.clone(), Some(offer(s, reason)))
                    }
                    None => continue,
                },
                Step::VideoOrPhone => match remote.clone() {
                    Some(s) => {
                        let how = match s.0.modality {
                            Modality::Phone => "by phone",
                            _ => "by video",
                        };
                        let reason = format!(
                            "{own} at the office: {} can talk with you {how} on {}",
                            s.1,
                            oslo_date(s.0.start)
                        );
                        (reason.clone(), Some(offer(s, reason)))
                    }
                    None => continue,
                },
                Step::EConsultation => (
                    format!(
                        "{own}: write to your GP now; an answer by {target_date} meets your request"
                    ),
                    None,
                ),
                Step::PriorityWaitlist => (
                    format!(
                        "{own}: join the practice's priority list; the first appointment that frees up by {target_date} is held for you"
                    ),
                    None,
                ),
                Step::TellPractice => continue,
            };
            out.push(GuaranteeOffer {
                step: *step,
                reason,
                slot,
                target_date,
            });
        }
        Ok((out, met))
    }

    /// Puts the patient's open booking request `request_id` on the practice's priority
    /// waitlist for its target window. Slots free now are not offered (the engine offered the
    /// ones in time already): the entry waits for one that frees up.
    pub async fn join_priority_waitlist(
        &self,
        caller: &Caller,
        nin: &NationalId,
        request_id: &str,
        key: &str,
    ) -> Result<WaitlistEntry, BookingError> {
        let req = (nin.as_str(), request_id, "priority");
        command::run(
            &self.p.db,
            self.command(caller, rpc::JOIN_WAITLIST, key, &req),
            async |op: &mut Op| -> Result<WaitlistEntry, BookingError> {
                let now = self.now();
                let now_ms = now.timestamp_millis();
                let ep = match self.pending.get(nin.as_str(), now) {
                    Some(e) => Some(e),
                    None => episodes::open_of_patient(&mut op.tx, nin.as_str(), now).await?,
                }
                .filter(|e| e.request_id == request_id)
                .ok_or_else(|| BookingError::NotFound("request_id".into()))?;
                let policy = gstore::policy(&mut op.tx, &ep.org_number).await?;
                if !policy.has(Step::PriorityWaitlist) {
                    return Err(BookingError::FailedPrecondition(
                        "the practice has no priority waitlist".into(),
                    ));
                }
                if ep.met_by_own_gp() {
                    return Err(BookingError::FailedPrecondition(
                        "your GP has a free appointment within five working days".into(),
                    ));
                }
                if ep.deadline_end_ms() <= now_ms {
                    return Err(BookingError::FailedPrecondition(
                        "the request's five working days have passed".into(),
                    ));
                }
                let entry_id = new_id();
                let e = NewPriorityEntry {
                    entry_id: &entry_id,
                    request_id,
                    org_number: &ep.org_number,
                    gp_uid: &ep.gp_uid,
                    nin: nin.as_str(),
                    requested_at: ep.requested_at_ms,
                    deadline_end: ep.deadline_end_ms(),
                    joined_at: now_ms,
                };
                if !gstore::join_priority(&mut op.tx, &e).await? {
                    return Err(BookingError::AlreadyExists(
                        "this request is on the priority waitlist already".into(),
                    ));
                }
                // The request (perhaps only a search's so far) is stored with the entry.
                ep.write(&mut op.tx);
                let access = Access::new(
                    rpc::JOIN_WAITLIST,
                    format!("waitlist:{entry_id}"),
                    nin.as_str(),
                    "joined the priority waiting list for an appointment within five working days",
                );
                op.audit(caller, &access, now_ms)?;
                Ok(WaitlistEntry {
                    entry_id: entry_id.clone(),
                    gp_id: ep.gp_id.clone(),
                    latest_date: ep.deadline,
                    modality: None,
                    joined_at: now,
                    active: true,
                    request_id: Some(request_id.to_owned()),
                })
            },
        )
        .await
    }

    /// Holds the freed slot `s` for the earliest priority request of its practice whose window
    /// it is in, once: the entry is claimed and the slot held by conditional updates, so two
    /// concurrent offers never give one entry two slots or one slot two entries. The request is
    /// met by the priority waitlist, and the patient notified as from the ordinary waitlist.
    pub(super) async fn offer_to_priority(
        &self,
        tx: &mut Tx,
        slot_id: &str,
        s: &Offerable,
    ) -> Result<Priority, BookingError> {
        let now = self.p.clock.now_ms();
        for _ in 0..PRIORITY_TRIES {
            let Some((entry_id, request_id, patient, requested_at)) =
                gstore::first_priority(tx, &s.org_number, s.start_at).await?
            else {
                return Ok(Priority::NoneWaiting);
            };
            let hold_id = new_id();
            if !gstore::claim_priority(tx, &entry_id, &hold_id).await? {
                continue;
            }
            let expires = now + self.cfg.waitlist_hold_ttl.num_milliseconds();
            let held = gstore::hold_for_request(
                tx,
                slot_id,
                &patient,
                &hold_id,
                expires,
                &request_id,
                now,
            )
            .await?;
            if !held {
                gstore::unclaim_priority(tx, &entry_id).await?;
                return Ok(Priority::Handled(false));
            }
            let wd = Calendar::norwegian()
                .working_days_between(
                    oslo_date(from_ms(requested_at)),
                    oslo_date(from_ms(s.start_at)),
                )
                .max(0);
            gstore::record_met(
                tx,
                &request_id,
                &patient,
                MetBy::PriorityWaitlist,
                now,
                Some((s.start_at, wd)),
                false,
            )
            .await?;
            self.offered_event(tx, s, slot_id, &entry_id, &hold_id, &patient, expires)?;
            return Ok(Priority::Handled(true));
        }
        Ok(Priority::Handled(false))
    }
}

/// Records, inside the reply's transaction `tx`, that the practice replied at `now` to an
/// e-consultation of `nin` started from booking request `request_id`: the request, when it is
/// the patient's and its window is still open, is closed as met by e-consultation. Returns
/// whether it was.
pub async fn record_e_consultation_reply(
    tx: &mut Tx,
    request_id: &str,
    nin: &str,
    now: DateTime<Utc>,
) -> Result<bool, BookingError> {
    gstore::record_met(
        tx,
        request_id,
        nin,
        MetBy::EConsultation,
        now.timestamp_millis(),
        None,
        true,
    )
    .await
}
