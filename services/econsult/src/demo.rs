//! `econsult demo`: fills a data directory (or database) with a week of a realistic practice, so
//! every statistics RPC and the web client show something.
//!
//! It boots the whole system in this process on a loopback port with a clock that starts on the
//! Monday of the last whole week before `now` ([`demo_week`]) and moves through its working days, and drives it over
//! gRPC with development tokens, as the EHR, the clinicians and the patients would:
//!
//! - the practice (organisation 910000001, Oslo): two GPs with lists (`demo-gp-1`, `demo-gp-2`)
//!   and a list served by a locum (`demo-gp-3`), 30 synthetic patients each, opening hours;
//! - slots: GP 1 every working day for three weeks (in person, one video, one phone slot), the
//!   locum mornings, GP 2 only from the second week on (so GP 2's patients are offered GP 1 in
//!   time, and some of GP 2's requests are met by a colleague);
//! - every working day: patients search and book, the reception books two callers by phone, one
//!   patient cancels, one joins the waitlist, three e-consultations are answered and closed (an
//!   e-consultation, a prescription renewal, a reception message) and one is left unanswered, the
//!   day's video appointment is held (signalling only: join, admit, end as held; no media), and
//!   the day's appointments are marked attended (every seventh a no-show).
//!
//! Running it again finds `demo-gp-1` and changes nothing. Run it before `serve` on the same
//! data (or stop the server first): it is a second process on the same database otherwise.

use crate::walkthrough::{authed, instant};
use crate::{Application, Config};
use chrono::{DateTime, Datelike as _, Duration, NaiveDate, TimeZone as _, Utc};
use chrono_tz::Europe::Oslo;
use econsult_calendar::{Calendar, oslo_date};
use econsult_proto::booking::v1 as bk;
use econsult_proto::consultation::v1 as co;
use econsult_proto::signalling::v1 as sg;
use econsult_proto::stats::v1 as st;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use econsult_runtime::clock::{Clock, ManualClock};
use std::io::Write;
use std::sync::Arc;
use tonic::transport::Channel;

/// The demo practice's organisation number (the README's `dev-token --org` example).
pub const ORG: &str = "910000001";
const MUNICIPALITY: &str = "0301";
const PATIENTS_PER_LIST: u64 = 30;
const GPS: [(&str, &str, &str, bk::ListStatus); 3] = [
    (
        "demo-gp-1",
        "9100001",
        "Dr Ada Lund",
        bk::ListStatus::Staffed,
    ),
    (
        "demo-gp-2",
        "9100002",
        "Dr Per Berg",
        bk::ListStatus::Staffed,
    ),
    (
        "demo-gp-3",
        "9100003",
        "Dr Eva Strand (locum)",
        bk::ListStatus::Locum,
    ),
];

/// What the demo did, as it counted it (the statistics must agree).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Working days simulated.
    pub days: u32,
    /// FindSlots calls by patients.
    pub searches: u32,
    /// Appointments booked (online and by phone).
    pub booked: u32,
    /// Of those, by the practice for a caller (BookForPatient).
    pub booked_by_phone: u32,
    /// Cancelled by the patient.
    pub cancelled: u32,
    /// Marked attended (fulfilled).
    pub attended: u32,
    /// Marked no-show.
    pub no_shows: u32,
    /// Video sessions ended as held.
    pub video_held: u32,
    /// E-consultation threads started.
    pub threads: u32,
    /// Threads closed with an answer (each a contact).
    pub threads_closed: u32,
    /// Waitlist entries made.
    pub waitlisted: u32,
}

impl Tally {
    /// Contacts the statistics count: attended appointments and answered, closed threads.
    pub fn contacts(&self) -> u64 {
        u64::from(self.attended + self.threads_closed)
    }
}

fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(econsult_runtime::grpc::timestamp(t))
}

/// `hour`:`minute` Oslo time on `day`.
fn oslo_at(day: NaiveDate, hour: u32, minute: u32) -> anyhow::Result<DateTime<Utc>> {
    let local = day
        .and_hms_opt(hour, minute, 0)
        .ok_or_else(|| anyhow::anyhow!("no time {hour}:{minute}"))?;
    Oslo.from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| anyhow::anyhow!("{local} does not exist in Oslo"))
}

/// The working days (national calendar) of the last Monday-to-Friday week that is over before
/// `today`: this week's on a Saturday or Sunday, else last week's.
pub fn demo_week(today: NaiveDate) -> Vec<NaiveDate> {
    let calendar = Calendar::norwegian();
    let back = i64::from(today.weekday().num_days_from_monday());
    let monday = today - Duration::days(if back >= 5 { back } else { back + 7 });
    (0..5)
        .map(|i| monday + Duration::days(i))
        .filter(|d| calendar.is_working_day(*d))
        .collect()
}

/// An appointment the demo booked.
struct Booked {
    id: String,
    start: DateTime<Utc>,
    patient: usize,
    video: bool,
}

struct Demo {
    keys: DevKeys,
    clock: ManualClock,
    booking: bk::booking_service_client::BookingServiceClient<Channel>,
    consultation: co::consultation_service_client::ConsultationServiceClient<Channel>,
    signalling: sg::signalling_service_client::SignallingServiceClient<Channel>,
    ehr: String,
    patients: Vec<(String, String)>,
    booked: Vec<Booked>,
    tally: Tally,
    keyno: u64,
}

impl Demo {
    fn token(&self, spec: &TokenSpec) -> anyhow::Result<String> {
        self.keys.mint(spec, Utc::now().timestamp(), 3600)
    }

    fn clinician(&self, gp: usize) -> anyhow::Result<String> {
        self.token(&TokenSpec::Clinician {
            hpr_number: GPS[gp].1.into(),
            org_number: ORG.into(),
            scopes: vec![
                "econsult:consultation.read".into(),
                "econsult:consultation.write".into(),
            ],
        })
    }

    /// A deterministic idempotency key: a rerun of a step with the same data is a replay.
    fn key(&mut self) -> String {
        self.keyno += 1;
        format!("demo-{}", self.keyno)
    }

    fn at(&self, day: NaiveDate, hour: u32, minute: u32) -> anyhow::Result<()> {
        self.clock.set(oslo_at(day, hour, minute)?);
        Ok(())
    }

    async fn practice(&mut self, days: &[NaiveDate]) -> anyhow::Result<()> {
        for (g, (gp_id, hpr, name, status)) in GPS.iter().enumerate() {
            let gp = bk::Gp {
                gp_id: (*gp_id).into(),
                hpr_number: (*hpr).into(),
                display_name: (*name).into(),
                municipality_number: MUNICIPALITY.into(),
                list_capacity: 1200,
                list_status: *status as i32,
                ..Default::default()
            };
            self.booking
                .upsert_gp(authed(bk::UpsertGpRequest { gp: Some(gp) }, &self.ehr)?)
                .await?;
            let add = (0..PATIENTS_PER_LIST as usize)
                .map(|i| self.patients[g * PATIENTS_PER_LIST as usize + i].0.clone())
                .collect();
            let list = bk::UpdateListRequest {
                gp_id: (*gp_id).into(),
                add,
                remove: vec![],
                idempotency_key: self.key(),
            };
            self.booking.update_list(authed(list, &self.ehr)?).await?;
        }
        let hours = (1..=5)
            .map(|weekday| bk::OpeningHours {
                weekday,
                opens: "08:00".into(),
                closes: "15:30".into(),
            })
            .collect();
        let request = bk::SetOpeningHoursRequest {
            hours,
            phone: "22 00 00 00".into(),
            idempotency_key: self.key(),
        };
        self.booking
            .set_opening_hours(authed(request, &self.ehr)?)
            .await?;
        // Three weeks of slots from the demo's Monday.
        let calendar = Calendar::norwegian();
        let first = days[0];
        for offset in 0..21 {
            let day = first + Duration::days(offset);
            if !calendar.is_working_day(day) {
                continue;
            }
            let mut per_gp: [Vec<bk::NewSlot>; 3] = Default::default();
            let slot = |at: DateTime<Utc>, modality: bk::Modality| bk::NewSlot {
                start: ts(at),
                duration_minutes: 20,
                modality: modality as i32,
                acute_reserve: false,
            };
            for n in 0..12 {
                let at = oslo_at(day, 8, 0)? + Duration::minutes(20 * n);
                per_gp[0].push(slot(at, bk::Modality::InPerson));
                if n < 3 {
                    per_gp[2].push(slot(at, bk::Modality::InPerson));
                }
                if offset >= 9 {
                    per_gp[1].push(slot(at, bk::Modality::InPerson));
                }
            }
            per_gp[0].push(slot(oslo_at(day, 12, 0)?, bk::Modality::Video));
            per_gp[0].push(slot(oslo_at(day, 12, 20)?, bk::Modality::Phone));
            for (g, slots) in per_gp.into_iter().enumerate() {
                if slots.is_empty() {
                    continue;
                }
                let request = bk::PublishSlotsRequest {
                    gp_id: GPS[g].0.into(),
                    slots,
                    idempotency_key: self.key(),
                };
                self.booking
                    .publish_slots(authed(request, &self.ehr)?)
                    .await?;
            }
        }
        Ok(())
    }

    /// Patient `p` searches (for `modality`) and, when `book`, holds and books one of the offers.
    async fn search_and_book(
        &mut self,
        p: usize,
        modality: bk::Modality,
        book: bool,
    ) -> anyhow::Result<()> {
        let token = self.patients[p].1.clone();
        let found = self
            .booking
            .find_slots(authed(
                bk::FindSlotsRequest {
                    modality: modality as i32,
                    ..Default::default()
                },
                &token,
            )?)
            .await?
            .into_inner();
        self.tally.searches += 1;
        // Patients choose differently: not everyone takes the first offer (the one who asked
        // for video does, so the session is held this week).
        let choice = match modality {
            bk::Modality::Video => 0,
            _ => p % found.slots.len().max(1),
        };
        let Some(slot) = found.slots.get(choice).and_then(|s| s.slot.clone()) else {
            return Ok(());
        };
        if !book {
            return Ok(());
        }
        let hold = bk::HoldSlotRequest {
            slot_id: slot.slot_id,
            request_id: found.request_id.clone(),
            idempotency_key: self.key(),
        };
        let hold = self
            .booking
            .hold_slot(authed(hold, &token)?)
            .await?
            .into_inner();
        let book = bk::BookRequest {
            target: Some(bk::book_request::Target::HoldId(hold.hold_id)),
            reason: "check-up".into(),
            request_id: found.request_id,
            idempotency_key: self.key(),
        };
        let appt = self.booking.book(authed(book, &token)?).await?.into_inner();
        self.record(appt, p);
        Ok(())
    }

    fn record(&mut self, appt: bk::Appointment, patient: usize) {
        let start = instant(appt.slot.as_ref().and_then(|s| s.start.as_ref()));
        let video = appt.slot.as_ref().map(|s| s.modality()) == Some(bk::Modality::Video);
        if let Some(start) = start {
            self.booked.push(Booked {
                id: appt.appointment_id,
                start,
                patient,
                video,
            });
            self.tally.booked += 1;
        }
    }

    /// The reception books patient `p` (who phoned) into the first free slot of the locum.
    async fn book_by_phone(&mut self, p: usize) -> anyhow::Result<()> {
        // The practice sees free slots the way the patient would; it books in the patient's name.
        let found = self
            .booking
            .find_slots(authed(
                bk::FindSlotsRequest::default(),
                &self.patients[p].1,
            )?)
            .await?
            .into_inner();
        let Some(slot) = found.slots.first().and_then(|s| s.slot.clone()) else {
            return Ok(());
        };
        let request = bk::BookForPatientRequest {
            slot_id: slot.slot_id,
            patient_nin: self.patients[p].0.clone(),
            reason: "called the office".into(),
            idempotency_key: self.key(),
            requested_at: ts(self.clock.now()),
        };
        let appt = self
            .booking
            .book_for_patient(authed(request, &self.ehr)?)
            .await?
            .into_inner();
        self.record(appt, p);
        self.tally.booked_by_phone += 1;
        Ok(())
    }

    /// Patient `p` cancels the latest of their future appointments.
    async fn cancel(&mut self, p: usize) -> anyhow::Result<()> {
        let now = self.clock.now();
        let Some(i) = self
            .booked
            .iter()
            .rposition(|b| b.patient == p && b.start > now + Duration::hours(24))
        else {
            return Ok(());
        };
        let b = self.booked.remove(i);
        let request = bk::CancelRequest {
            appointment_id: b.id,
            idempotency_key: self.key(),
        };
        let token = self.patients[p].1.clone();
        self.booking.cancel(authed(request, &token)?).await?;
        self.tally.cancelled += 1;
        Ok(())
    }

    async fn waitlist(&mut self, p: usize, latest: NaiveDate) -> anyhow::Result<()> {
        let request = bk::JoinWaitlistRequest {
            latest_date: latest.to_string(),
            modality: bk::Modality::Unspecified as i32,
            idempotency_key: self.key(),
            ..Default::default()
        };
        let token = self.patients[p].1.clone();
        self.booking.join_waitlist(authed(request, &token)?).await?;
        self.tally.waitlisted += 1;
        Ok(())
    }

    /// Patient `p` writes; the thread goes to their own GP.
    async fn start_thread(
        &mut self,
        p: usize,
        category: co::Category,
        subject: &str,
    ) -> anyhow::Result<String> {
        let request = co::StartConsultationRequest {
            category: category as i32,
            subject: subject.into(),
            body: "Synthetic demo message.".into(),
            idempotency_key: self.key(),
            ..Default::default()
        };
        let token = self.patients[p].1.clone();
        let thread = self
            .consultation
            .start_consultation(authed(request, &token)?)
            .await?
            .into_inner()
            .thread
            .ok_or_else(|| anyhow::anyhow!("StartConsultation returned no thread"))?;
        self.tally.threads += 1;
        Ok(thread.thread_id)
    }

    /// The patient's GP claims, answers and closes the thread (the reception, for a message
    /// to the office: no tariff).
    async fn answer(&mut self, thread_id: String, gp: usize, tariff: &str) -> anyhow::Result<()> {
        let token = self.clinician(gp)?;
        let claim = co::ClaimThreadRequest {
            thread_id: thread_id.clone(),
            clinician_hpr_number: GPS[gp].1.into(),
            idempotency_key: self.key(),
        };
        self.consultation
            .claim_thread(authed(claim, &token)?)
            .await?;
        let reply = co::ReplyRequest {
            thread_id: thread_id.clone(),
            body: "Synthetic demo answer.".into(),
            clinician_hpr_number: GPS[gp].1.into(),
            idempotency_key: self.key(),
            ..Default::default()
        };
        self.consultation.reply(authed(reply, &token)?).await?;
        let close = co::CloseConsultationRequest {
            thread_id,
            outcome: "answered".into(),
            tariff_code: tariff.into(),
            idempotency_key: self.key(),
        };
        self.consultation
            .close_consultation(authed(close, &token)?)
            .await?;
        self.tally.threads_closed += 1;
        Ok(())
    }

    /// Holds the video appointment `i` (signalling only): both join, the GP admits, ends as held.
    async fn hold_video(&mut self, i: usize) -> anyhow::Result<()> {
        let (id, patient) = (self.booked[i].id.clone(), self.booked[i].patient);
        let gp = self.clinician(0)?;
        let join = |_: ()| sg::JoinSessionRequest {
            appointment_id: id.clone(),
        };
        let token = self.patients[patient].1.clone();
        self.signalling
            .join_session(authed(join(()), &token)?)
            .await?;
        self.signalling.join_session(authed(join(()), &gp)?).await?;
        let admit = sg::AdmitRequest {
            appointment_id: id.clone(),
            clinician_hpr_number: String::new(),
        };
        self.signalling.admit(authed(admit, &gp)?).await?;
        let start = self.booked[i].start;
        self.clock.set(start + Duration::minutes(15));
        let end = sg::EndSessionRequest {
            appointment_id: id,
            held: true,
        };
        self.signalling.end_session(authed(end, &gp)?).await?;
        self.tally.video_held += 1;
        Ok(())
    }

    /// The reception marks the day's appointments: attended, about every seventh visit a no-show.
    async fn mark_day(&mut self, day: NaiveDate) -> anyhow::Result<()> {
        let todays: Vec<(String, bool)> = self
            .booked
            .iter()
            .filter(|b| oslo_date(b.start) == day)
            .map(|b| (b.id.clone(), b.video))
            .collect();
        for (id, video) in todays {
            let seen = self.tally.attended + self.tally.no_shows;
            // A video appointment was held in the session: never a no-show.
            let status = if !video && seen % 7 == 6 {
                self.tally.no_shows += 1;
                bk::AppointmentStatus::Noshow
            } else {
                self.tally.attended += 1;
                bk::AppointmentStatus::Fulfilled
            };
            let request = bk::MarkAppointmentRequest {
                appointment_id: id,
                status: status as i32,
                idempotency_key: self.key(),
            };
            self.booking
                .mark_appointment(authed(request, &self.ehr)?)
                .await?;
        }
        Ok(())
    }

    async fn day(&mut self, n: usize, day: NaiveDate) -> anyhow::Result<()> {
        let lists = GPS.len() * PATIENTS_PER_LIST as usize;
        let who = |k: usize| (n * 11 + k * 7) % lists;
        self.at(day, 7, 30)?;
        for k in 0..6 {
            self.search_and_book(who(k), bk::Modality::Unspecified, k != 5)
                .await?;
        }
        self.search_and_book(who(6), bk::Modality::Video, true)
            .await?;
        self.at(day, 8, 5)?;
        for k in 7..9 {
            self.book_by_phone(who(k)).await?;
        }
        self.at(day, 9, 0)?;
        self.cancel(who(0)).await?;
        self.waitlist(who(9), day + Duration::days(14)).await?;
        let threads = [
            (co::Category::EConsultation, "Sore throat", "2ae"),
            (co::Category::PrescriptionRenewal, "Repeat prescription", ""),
            (co::Category::Administrative, "A certificate", ""),
        ];
        let mut started = Vec::new();
        for (k, (category, subject, tariff)) in threads.into_iter().enumerate() {
            let p = who(10 + k);
            started.push((self.start_thread(p, category, subject).await?, p, tariff));
        }
        // One more that nobody answers this week.
        self.start_thread(who(13), co::Category::EConsultation, "A rash")
            .await?;
        self.at(day, 11, 50)?;
        let videos: Vec<usize> = (0..self.booked.len())
            .filter(|&i| self.booked[i].video && oslo_date(self.booked[i].start) == day)
            .collect();
        for i in videos {
            self.hold_video(i).await?;
        }
        self.at(day, 13, 0)?;
        for (thread, p, tariff) in started {
            let gp = p / PATIENTS_PER_LIST as usize;
            self.answer(thread, gp, tariff).await?;
        }
        self.at(day, 16, 0)?;
        self.mark_day(day).await?;
        self.tally.days += 1;
        Ok(())
    }
}

/// Seeds the last week before `now` ([`demo_week`]) into the system `config` describes (its data directory or
/// database), writing a line per day and the statistics at the end to `out`. Returns what it did,
/// or `None` when the demo practice is there already.
pub async fn seed(
    mut config: Config,
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> anyhow::Result<Option<Tally>> {
    let days = demo_week(oslo_date(now));
    let Some(first) = days.first() else {
        anyhow::bail!("the week before {} has no working day", oslo_date(now));
    };
    let clock = ManualClock::new(oslo_at(*first, 7, 0)?);
    std::fs::create_dir_all(&config.data_dir)?;
    let keys = DevKeys::load_or_create(&config.data_dir)?;
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.metrics_listen = None;
    config.redis_url = None;
    config.clock = Arc::new(clock.clone()) as Arc<dyn Clock>;
    let app = Application::start(config).await?;
    let result = drive(&app, keys, clock, &days, now, out).await;
    app.stop().await?;
    result
}

async fn drive(
    app: &Application,
    keys: DevKeys,
    clock: ManualClock,
    days: &[NaiveDate],
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> anyhow::Result<Option<Tally>> {
    let channel = Channel::from_shared(format!("http://{}", app.local_addr()))?
        .connect()
        .await?;
    let ehr = keys.mint(
        &TokenSpec::Ehr {
            client_id: "demo-epj".into(),
            org_number: ORG.into(),
            scopes: [
                "booking.read",
                "booking.write",
                "consultation.read",
                "consultation.write",
                "stats.read",
            ]
            .iter()
            .map(|s| format!("econsult:{s}"))
            .collect(),
        },
        Utc::now().timestamp(),
        3600,
    )?;
    let mut booking = bk::booking_service_client::BookingServiceClient::new(channel.clone());
    let existing = booking
        .get_gp(authed(
            bk::GetGpRequest {
                gp_id: GPS[0].0.into(),
            },
            &ehr,
        )?)
        .await;
    match existing {
        Ok(_) => {
            writeln!(
                out,
                "demo: the demo practice ({ORG}, {}) is there already; nothing to do \
                 (remove the data directory to start over)",
                GPS[0].0
            )?;
            return Ok(None);
        }
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(s.into()),
    }
    // Patients: synthetic numbers from a fixed seed, so the demo is the same every time.
    let patients = (0..GPS.len() as u64 * PATIENTS_PER_LIST)
        .map(|i| {
            let nin = econsult_runtime::nin::synthetic(900_000 + i)
                .as_str()
                .to_owned();
            let token = keys.mint(
                &TokenSpec::Patient {
                    nin: nin.clone(),
                    acr: REQUIRED_ACR.into(),
                },
                Utc::now().timestamp(),
                3600,
            )?;
            Ok((nin, token))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut demo = Demo {
        keys,
        clock,
        consultation: co::consultation_service_client::ConsultationServiceClient::new(
            channel.clone(),
        ),
        signalling: sg::signalling_service_client::SignallingServiceClient::new(channel.clone()),
        booking,
        ehr,
        patients,
        booked: Vec::new(),
        tally: Tally::default(),
        keyno: 0,
    };
    demo.practice(days).await?;
    writeln!(
        out,
        "demo: practice {ORG} in municipality {MUNICIPALITY}: {} lists of {PATIENTS_PER_LIST} \
         synthetic patients, slots for three weeks from {}",
        GPS.len(),
        days[0]
    )?;
    for (n, day) in days.iter().enumerate() {
        let before = demo.tally.clone();
        demo.day(n, *day).await?;
        let t = &demo.tally;
        writeln!(
            out,
            "demo: {} {day}: {} searches, {} booked ({} by phone), {} cancelled, {} attended, \
             {} no-show, {} video held, {} e-consultations ({} answered)",
            day.format("%A"),
            t.searches - before.searches,
            t.booked - before.booked,
            t.booked_by_phone - before.booked_by_phone,
            t.cancelled - before.cancelled,
            t.attended - before.attended,
            t.no_shows - before.no_shows,
            t.video_held - before.video_held,
            t.threads - before.threads,
            t.threads_closed - before.threads_closed,
        )?;
    }
    demo.clock.set(now.max(demo.clock.now()));
    // The practice's own figures are exact (ops' leave out cells under 5: the stats proto).
    let filter = st::Filter {
        from_date: days[0].to_string(),
        to_date: oslo_date(now).to_string(),
        org_number: ORG.into(),
        ..Default::default()
    };
    report(channel, &demo.ehr, filter, demo.tally.contacts(), out).await?;
    writeln!(
        out,
        "demo: look at it as clinician HPR {} of organisation {ORG}, or as patient {} \
         (on {}'s list)",
        GPS[0].1, demo.patients[0].0, GPS[0].0
    )?;
    Ok(Some(demo.tally))
}

/// Waits until the statistics have counted the `contacts` the demo made (events reach them
/// through the outbox), then prints what the statistics RPCs answer.
async fn report(
    channel: Channel,
    token: &str,
    filter: st::Filter,
    contacts: u64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut stats = st::stats_service_client::StatsServiceClient::new(channel);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let counted = loop {
        let rows = stats
            .get_contact_counts(authed(
                st::GetContactCountsRequest {
                    filter: Some(filter.clone()),
                    granularity: st::Granularity::Day as i32,
                    group_by: vec![st::Dimension::KprCategory as i32],
                },
                token,
            )?)
            .await?
            .into_inner()
            .rows;
        let counted: u64 = rows.iter().map(|r| r.count).sum();
        if counted >= contacts || std::time::Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    anyhow::ensure!(
        counted == contacts,
        "the statistics count {counted} contacts, the demo made {contacts}"
    );
    let access = stats
        .get_booking_accessibility(authed(
            st::GetBookingAccessibilityRequest {
                filter: Some(filter.clone()),
            },
            token,
        )?)
        .await?
        .into_inner();
    let times = stats
        .get_consultation_response_times(authed(
            st::GetConsultationResponseTimesRequest {
                filter: Some(filter.clone()),
            },
            token,
        )?)
        .await?
        .into_inner();
    let video = stats
        .get_video_sessions(authed(
            st::GetVideoSessionsRequest {
                filter: Some(filter.clone()),
            },
            token,
        )?)
        .await?
        .into_inner();
    writeln!(
        out,
        "stats: {counted} contacts; {} booking requests, {} within five working days \
         ({} by the own GP); {} e-consultations answered, {} within the SLA; {} video \
         session(s), {} held",
        access.requests,
        access.within_target,
        access.met_by_own_gp,
        times.responded,
        times.within_sla,
        video.sessions,
        video.held
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::demo_week;
    use chrono::NaiveDate;

    fn d(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    #[test]
    fn the_demo_week_is_the_last_whole_working_week_before_today() {
        let week = |today: &str| -> Vec<String> {
            demo_week(d(today)).iter().map(|d| d.to_string()).collect()
        };
        // A Wednesday: last week.
        assert_eq!(
            week("2026-03-11"),
            [
                "2026-03-02",
                "2026-03-03",
                "2026-03-04",
                "2026-03-05",
                "2026-03-06"
            ]
        );
        // A Monday: last week too; a Sunday and a Saturday: the week that just ended.
        assert_eq!(week("2026-03-09")[0], "2026-03-02");
        assert_eq!(week("2026-12-06")[0], "2026-11-30");
        assert_eq!(week("2026-12-05")[4], "2026-12-04");
        // Easter 2026: Maundy Thursday and Good Friday are no working days.
        assert_eq!(
            week("2026-04-08"),
            ["2026-03-30", "2026-03-31", "2026-04-01"]
        );
    }
}
