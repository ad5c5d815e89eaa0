//! An organisation's change stream (WatchBookings): its appointments' changes, the moves of
//! patients off its lists and its unmet booking requests, read from the outbox. Events carry no
//! identity numbers and no free text: the patient (and an appointment's reason) is read from the
//! booking tables by the event's id, and sent to the EHR at this edge.

use super::*;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::events::{ListMoved, RequestUnmet, topics};

/// One entry of an organisation's change stream (WatchBookings).
#[derive(Debug, Clone)]
pub enum Change {
    /// An appointment after its change (boxed: the larger variant by far), its patient's
    /// identity number and reason for the visit, read from the appointment.
    Appointment {
        /// The event's body.
        change: Box<AppointmentChanged>,
        /// The patient, from the appointment.
        patient_nin: String,
        /// The reason for the visit, from the appointment.
        reason: String,
    },
    /// A patient left one of the organisation's lists.
    ListMoved {
        /// The event's body.
        change: ListMoved,
        /// The patient, from the list move.
        patient_nin: String,
    },
    /// A booking request of a patient of the organisation is unmet (the guarantee engine).
    RequestUnmet {
        /// The event's body.
        change: RequestUnmet,
        /// The patient, from the request's episode.
        patient_nin: String,
    },
}

impl Booking {
    /// Booking changes of `org` after `cursor` up to `upto` (for WatchBookings); audits each
    /// delivered appointment and list move.
    pub async fn changes_after(
        &self,
        caller: &Caller,
        org: &str,
        cursor: u64,
        upto: u64,
    ) -> Result<Vec<(u64, String, Change)>, BookingError> {
        let events = outbox::read_after(
            &self.p.db,
            cursor,
            upto,
            outbox::EventFilter {
                topic_prefix: "booking.",
                org_number: Some(org),
                route_key: None,
            },
            200,
        )
        .await?;
        let mut out = Vec::with_capacity(events.len());
        let mut last_seq = cursor;
        // One connection for the batch's lookups of patients and reasons (events carry no
        // identity numbers and no free text).
        let mut conn = self.p.db.read().acquire().await?;
        for e in events {
            last_seq = e.seq;
            if matches!(
                e.topic.as_str(),
                topics::BOOKING_REQUESTED | topics::BOOKING_WAITLIST_OFFERED
            ) {
                continue;
            }
            let body = if e.topic == topics::BOOKING_LIST_MOVED {
                let change: ListMoved =
                    serde_json::from_str(&e.payload).map_err(anyhow::Error::from)?;
                let patient_nin = store::list_move_patient(&mut conn, &change.move_id)
                    .await?
                    .unwrap_or_default();
                Change::ListMoved {
                    change,
                    patient_nin,
                }
            } else if e.topic == topics::BOOKING_REQUEST_UNMET {
                let change: RequestUnmet =
                    serde_json::from_str(&e.payload).map_err(anyhow::Error::from)?;
                let patient_nin = store::request_patient(&mut conn, &change.request_id)
                    .await?
                    .unwrap_or_default();
                Change::RequestUnmet {
                    change,
                    patient_nin,
                }
            } else {
                let change: Box<AppointmentChanged> =
                    serde_json::from_str(&e.payload).map_err(anyhow::Error::from)?;
                let (patient_nin, reason) =
                    store::appointment_patient_reason(&mut conn, &change.appointment_id)
                        .await?
                        .unwrap_or_default();
                Change::Appointment {
                    change,
                    patient_nin,
                    reason,
                }
            };
            out.push((e.seq, e.topic, body));
        }
        drop(conn);
        let accesses: Vec<Access<'_>> = out
            .iter()
            .map(|(_, _, b)| match b {
                Change::Appointment {
                    change: a,
                    patient_nin,
                    ..
                } => Access::new(
                    rpc::WATCH,
                    format!("appointment:{}", a.appointment_id),
                    patient_nin,
                    format!(
                        "received a change to your appointment on {}",
                        audit::local_time(econsult_runtime::clock::from_ms(a.start_ms))
                    ),
                ),
                Change::ListMoved {
                    change: m,
                    patient_nin,
                } => Access::new(
                    rpc::WATCH,
                    format!("list_move:{}", m.move_id),
                    patient_nin,
                    "received the move of your place on a GP's list",
                ),
                Change::RequestUnmet {
                    change: u,
                    patient_nin,
                } => Access::new(
                    rpc::WATCH,
                    format!("booking_request:{}", u.request_id),
                    patient_nin,
                    "was told that your request for an appointment could not be met within \
                     five working days",
                ),
            })
            .collect();
        audit::record_reads(&self.p.db, caller, &accesses, self.p.clock.now_ms()).await?;
        if out.is_empty() && last_seq > cursor {
            // Only events the stream does not carry: report progress with an empty marker.
            out.push((
                last_seq,
                String::new(),
                Change::Appointment {
                    change: Box::new(empty_change()),
                    patient_nin: String::new(),
                    reason: String::new(),
                },
            ));
        }
        Ok(out)
    }
}

fn empty_change() -> AppointmentChanged {
    AppointmentChanged {
        appointment_id: String::new(),
        slot_id: String::new(),
        gp_id: String::new(),
        org_number: String::new(),
        municipality_number: String::new(),
        modality: String::new(),
        start_ms: 0,
        end_ms: 0,
        status: String::new(),
        booked_at_ms: 0,
        cancelled_at_ms: None,
        cancelled_by: None,
        late_cancellation: false,
        rescheduled_from: None,
        gp_hpr_number: String::new(),
    }
}
