//! The writes as the product commits them on SQLite, with the guarantees' rows: the twin of
//! `pgbench/booking-guaranteed.sql` and `pgbench/message-guaranteed.sql` for the embedded
//! backend. The statements are the product's own on SQLite, in its order, taken from its
//! statement log (`RUST_LOG=sqlx::query=debug econsult serve`, a rush and a messaging run; on
//! SQLite the product sends each write as a statement of its own, where on PostgreSQL it joins
//! them into one), with values of the product's sizes, as the PostgreSQL scripts have them.
//!
//! - A booking pair: the search's access-log row, HoldSlot (claim the key, read the slot and
//!   the patient's list, release the patient's other hold, hold, close the patient's older
//!   episodes, open or merge the episode, store the answer) and Book (claim, take, read, close
//!   the episode, the appointment, the event, the access-log row, the answer), a transaction
//!   each, then for `RELAY_PER_MILLE_PAIR` of the pairs one relay pass.
//! - A message write: a third each of StartConsultation, SendMessage and Reply, each with its
//!   claim, reads, rows, events, access-log row (reply) and answer; then for
//!   `RELAY_PER_MILLE_MESSAGE` of them one relay pass.
//! - A relay pass: in one transaction, mark the previous pass's events published by their range
//!   of seq and give the unsequenced events theirs, as `runtime::outbox` does on SQLite.
//!
//! Each transaction commits on its own, as the floor's do: the product's group commit shares
//! a commit among the transactions that queue for the writer, which this leaves out on both
//! sides of the comparison. Left out, as on PostgreSQL: the streams' reads, the consumers'
//! bookkeeping, the relay's publishing.

use anyhow::Context as _;
use econsult_runtime::db::{Value, bind_values};
use rand::Rng as _;
use sqlx::Row as _;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Relay passes per 1 000 booking pairs and per 1 000 message writes: the PostgreSQL scripts'
/// rates, which are the product's there (`pgbench/*-guaranteed.sql`).
pub const RELAY_PER_MILLE_PAIR: u32 = 970;
pub const RELAY_PER_MILLE_MESSAGE: u32 = 433;

const NOW: i64 = 1_796_602_252_694;
const PATIENT_SUBJECT: &str = "idporten:cb64434d-7147-5fde-b484-f752150deb3f";
const EHR_SUBJECT: &str = "load-epj-999999999";
const ROUTE_KEY: &str = "2dAUmkSVqbnRc3FSjrslplFS2NCyyKECLRz7-aLY4to";

const CLAIM: &str = "INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING";
const ANSWER: &str =
    "UPDATE idempotency SET response = $1, accesses = $2 WHERE scope = $3 AND idem_key = $4";
const AUDIT: &str = "INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, \
     trace_id, request_id, actor_nin, acted_as, actor_name, actor_hpr, system_name, purpose, what, what_subject) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";
const EVENT: &str = "INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

const OPEN_EPISODE: &str = "SELECT request_id, patient_nin, gp_uid, gp_id, org_number, municipality_number, channel, \
     requested_at, day, deadline_end, vacant, closed_in_window, earliest_offer_at, earliest_offer_working_days, \
     own_offer_at, narrowed, chosen_slot_id, chosen_start_at, last_activity_at, closed_at, outcome, met_by, met_at \
     FROM booking_episodes WHERE patient_nin = $1 AND closed_at IS NULL AND last_activity_at > $2 \
     ORDER BY requested_at DESC LIMIT 1";
const SLOT_AND_LIST: &str = "SELECT s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
     s.hold_expires_at, s.hold_request_id, g.gp_id, g.gp_uid, g.org_number, g.municipality_number, g.hpr_number \
     FROM booking_list_members l JOIN booking_gps lg ON lg.gp_uid = l.gp_uid LEFT JOIN booking_slots s ON s.slot_id = $1 \
     LEFT JOIN booking_gps g ON g.gp_uid = s.gp_uid AND g.org_number = lg.org_number WHERE l.patient_nin = $2";
const RELEASE: &str = "UPDATE booking_slots SET status = 1, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL, \
     hold_request_id = NULL WHERE hold_patient = $1 AND status = 3 AND hold_from_waitlist = 0 AND slot_id <> $2 \
     RETURNING slot_id";
const HOLD: &str = "UPDATE booking_slots AS s SET status = 3, hold_id = $1, hold_patient = $2, hold_expires_at = $3, \
     hold_from_waitlist = 0, hold_request_id = $4 WHERE s.slot_id = $5 AND s.start_at > $6 AND s.acute_reserve = 0 \
     AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $6))) \
     RETURNING slot_id";
const CLOSE_OLDER: &str = "UPDATE booking_episodes SET closed_at = last_activity_at, outcome = $1 \
     WHERE patient_nin = $2 AND closed_at IS NULL AND request_id <> $3 AND requested_at < $4";
const EPISODE: &str = "INSERT INTO booking_episodes (request_id, patient_nin, gp_uid, gp_id, org_number, \
     municipality_number, channel, requested_at, day, deadline_end, vacant, closed_in_window, earliest_offer_at, \
     earliest_offer_working_days, own_offer_at, narrowed, chosen_slot_id, chosen_start_at, last_activity_at, closed_at, \
     outcome, met_by, met_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22, $23) ON CONFLICT (request_id) DO UPDATE SET \
     earliest_offer_at = CASE WHEN booking_episodes.earliest_offer_at IS NULL OR excluded.earliest_offer_at < booking_episodes.earliest_offer_at THEN excluded.earliest_offer_at ELSE booking_episodes.earliest_offer_at END, \
     earliest_offer_working_days = CASE WHEN booking_episodes.earliest_offer_at IS NULL OR excluded.earliest_offer_at < booking_episodes.earliest_offer_at THEN excluded.earliest_offer_working_days ELSE booking_episodes.earliest_offer_working_days END, \
     own_offer_at = CASE WHEN booking_episodes.own_offer_at IS NULL OR excluded.own_offer_at < booking_episodes.own_offer_at THEN excluded.own_offer_at ELSE booking_episodes.own_offer_at END, \
     narrowed = CASE WHEN excluded.last_activity_at >= booking_episodes.last_activity_at THEN excluded.narrowed ELSE booking_episodes.narrowed END, \
     chosen_slot_id = CASE WHEN booking_episodes.closed_at IS NULL AND excluded.chosen_slot_id IS NOT NULL THEN excluded.chosen_slot_id ELSE booking_episodes.chosen_slot_id END, \
     chosen_start_at = CASE WHEN booking_episodes.closed_at IS NULL AND excluded.chosen_slot_id IS NOT NULL THEN excluded.chosen_start_at ELSE booking_episodes.chosen_start_at END, \
     last_activity_at = CASE WHEN excluded.last_activity_at > booking_episodes.last_activity_at THEN excluded.last_activity_at ELSE booking_episodes.last_activity_at END, \
     closed_at = COALESCE(booking_episodes.closed_at, excluded.closed_at), \
     outcome = CASE WHEN booking_episodes.closed_at IS NULL THEN excluded.outcome ELSE booking_episodes.outcome END, \
     met_at = CASE WHEN booking_episodes.met_by = 0 THEN excluded.met_at ELSE booking_episodes.met_at END, \
     met_by = CASE WHEN booking_episodes.met_by = 0 THEN excluded.met_by ELSE booking_episodes.met_by END \
     WHERE booking_episodes.patient_nin = excluded.patient_nin";
const TAKE: &str = "UPDATE booking_slots AS s SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
     WHERE s.hold_id = $1 AND s.hold_patient = $2 AND s.status = 3 AND s.hold_expires_at > $3 RETURNING slot_id";
const BOOKED_EPISODE: &str = "UPDATE booking_episodes SET \
     chosen_slot_id = CASE WHEN closed_at IS NULL THEN $1 ELSE chosen_slot_id END, \
     chosen_start_at = CASE WHEN closed_at IS NULL THEN $2 ELSE chosen_start_at END, \
     last_activity_at = CASE WHEN last_activity_at < $3 THEN $3 ELSE last_activity_at END, \
     outcome = CASE WHEN closed_at IS NULL THEN $4 ELSE outcome END, closed_at = COALESCE(closed_at, $5) \
     WHERE patient_nin = $7 AND request_id = COALESCE($6, (SELECT o.request_id FROM booking_episodes o \
     WHERE o.patient_nin = $7 AND o.closed_at IS NULL AND o.last_activity_at > $8 ORDER BY o.requested_at DESC LIMIT 1))";
const APPOINTMENT: &str = "INSERT INTO booking_appointments (appointment_id, slot_id, gp_uid, patient_nin, status, reason, \
     booked_at, rescheduled_from, request_id, booked_by_nin, booked_by_relation, booked_by_name) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING";

const GP_BY_LIST: &str = "SELECT g.gp_id, g.hpr_number, g.display_name, g.practice_name, g.org_number, \
     g.municipality_number, g.list_status, (SELECT string_agg(c.closed_on, ',') FROM booking_closures c \
     WHERE c.org_number = g.org_number) AS closures FROM booking_list_members l JOIN booking_gps g \
     ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1";
const OPEN_THREADS: &str = "SELECT COUNT(*) AS n FROM consultation_threads WHERE patient_nin = $1 AND state IN ($2, $3, $4)";
const SETTINGS: &str =
    "SELECT response_working_days FROM consultation_settings WHERE org_number = $1";
const NEW_THREAD: &str = "INSERT INTO consultation_threads (thread_id, patient_nin, gp_id, gp_display_name, org_number, \
     municipality_number, category, subject, submitted_at, due_at, started_by_nin, started_by_relation, started_by_name, \
     confidential, booking_request_id, state, first_response_at, assigned_hpr, last_seq, patient_read_seq, \
     practice_read_seq, outcome, tariff_code, closed_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
     $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)";
const MESSAGE: &str = "INSERT INTO consultation_messages (message_id, thread_id, seq, author, author_hpr, body, sent_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const THREAD_FOR_WRITE: &str = "SELECT 1 AS claimed, thread_id, patient_nin, gp_id, gp_display_name, org_number, \
     municipality_number, category, subject, state, submitted_at, due_at, first_response_at, assigned_hpr, last_seq, \
     patient_read_seq, practice_read_seq, outcome, tariff_code, closed_at, updated_at, started_by_nin, \
     started_by_relation, started_by_name, confidential, booking_request_id, (SELECT string_agg(c.closed_on, ',') \
     FROM booking_closures c WHERE c.org_number = consultation_threads.org_number) AS closures \
     FROM consultation_threads WHERE thread_id = $1";
const THREAD_UPDATE: &str = "UPDATE consultation_threads SET state = $2, first_response_at = $3, assigned_hpr = $4, \
     last_seq = $5, patient_read_seq = $6, practice_read_seq = $7, outcome = $8, tariff_code = $9, closed_at = $10, \
     updated_at = $11 WHERE thread_id = $1";

const MARK: &str =
    "UPDATE outbox SET published_at = $1 WHERE seq >= $2 AND seq <= $3 AND published_at IS NULL";
const SEQUENCE: &str = "UPDATE outbox SET seq = COALESCE($2, (SELECT COALESCE(MAX(seq), 0) FROM outbox)) + n.rn \
     FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rn FROM outbox WHERE seq IS NULL ORDER BY id LIMIT $1) AS n \
     WHERE outbox.id = n.id RETURNING outbox.seq AS seq, outbox.event_id AS event_id, outbox.topic AS topic, \
     outbox.org_number AS org_number, outbox.payload AS payload, outbox.created_at AS created_at, \
     outbox.trace_parent AS trace_parent";

/// The relay's state between passes, as its one leader keeps it: the highest seq it gave and
/// the range its last pass gave, marked published by the next.
#[derive(Default)]
pub struct Relay {
    last: Option<i64>,
    unmarked: Option<(i64, i64)>,
}

pub type SharedRelay = Arc<Mutex<Relay>>;

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The values of a statement, in order: `values![a, b, …]`.
macro_rules! values {
    ($($v:expr),* $(,)?) => { vec![$(Value::from($v)),*] };
}

/// Runs `sql` with `values` on `c`.
async fn exec(c: &mut sqlx::AnyConnection, sql: &str, values: Vec<Value>) -> anyhow::Result<()> {
    bind_values(sqlx::query(sql), values).execute(c).await?;
    Ok(())
}

/// Runs `sql` with `values` on `c` and returns its rows.
async fn rows(
    c: &mut sqlx::AnyConnection,
    sql: &str,
    values: Vec<Value>,
) -> anyhow::Result<Vec<sqlx::any::AnyRow>> {
    Ok(bind_values(sqlx::query(sql), values).fetch_all(c).await?)
}

/// Claims `key` in `scope`: the first statement of every command.
async fn claim(c: &mut sqlx::AnyConnection, scope: &str, key: &str, at: i64) -> anyhow::Result<()> {
    let hash = "a24c8103347fb6512fb96f160b2a013e6721951fa4b257d2c2e7633af6353513";
    exec(c, CLAIM, values![scope, key, hash, Vec::<u8>::new(), at]).await
}

/// Stores the call's answer (`bytes` long, as the product's serialised answers are) and the
/// accesses it reports.
async fn store_answer(
    c: &mut sqlx::AnyConnection,
    (scope, key): (&str, &str),
    bytes: usize,
    accesses: &str,
) -> anyhow::Result<()> {
    exec(c, ANSWER, values![vec![b'x'; bytes], accesses, scope, key]).await
}

/// An access-log row.
struct Access<'a> {
    subject: &'a str,
    role: i64,
    org: &'a str,
    action: &'a str,
    resource: &'a str,
    patient: &'a str,
    /// The acting person's name and HPR number, and the system (an EHR's call).
    actor: (&'a str, &'a str, &'a str),
    purpose: i64,
    what: (&'a str, &'a str),
}

async fn audit(c: &mut sqlx::AnyConnection, a: Access<'_>) -> anyhow::Result<()> {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let values = values![
        NOW, a.subject, a.role, a.org, a.action, a.resource, a.patient, "", request_id, "", 0,
        a.actor.0, a.actor.1, a.actor.2, a.purpose, a.what.0, a.what.1,
    ];
    exec(c, AUDIT, values).await
}

async fn event(
    c: &mut sqlx::AnyConnection,
    topic: &str,
    route_key: &str,
    payload: &str,
) -> anyhow::Result<()> {
    let values = values![uuid(), topic, "999999999", route_key, payload, NOW, ""];
    exec(c, EVENT, values).await
}

/// One relay pass, in a transaction of its own: mark the last pass's events published, give
/// the unsequenced ones their seq. Returns how many it sequenced.
pub async fn relay_pass(write: &sqlx::AnyPool, relay: &SharedRelay) -> anyhow::Result<usize> {
    let mut relay = relay.lock().await;
    let mut tx = write.begin().await?;
    if let Some((first, end)) = relay.unmarked {
        exec(&mut tx, MARK, values![NOW, first, end]).await?;
    }
    let sequenced = rows(&mut tx, SEQUENCE, values![256, relay.last]).await?;
    tx.commit().await?;
    let seqs: Vec<i64> = sequenced
        .iter()
        .map(|r| r.try_get::<i64, _>("seq"))
        .collect::<Result<_, _>>()?;
    if let (Some(first), Some(end)) = (seqs.iter().min(), seqs.iter().max()) {
        relay.last = Some(*end);
        relay.unmarked = Some((*first, *end));
    }
    Ok(seqs.len())
}

/// A rush flow's HoldSlot and Book as the product commits them, with the search's access-log
/// row, and the relay's pass at the product's rate.
pub async fn booking_pair(
    write: &sqlx::AnyPool,
    read: &sqlx::AnyPool,
    relay: &SharedRelay,
    slots: i64,
    patients: i64,
) -> anyhow::Result<()> {
    let (slot, patient, key, pass) = {
        let mut rng = rand::thread_rng();
        (
            format!("pgb-{}", rng.gen_range(1..=slots)),
            format!("p{}", rng.gen_range(1..=patients)),
            rng.r#gen::<u64>(),
            rng.gen_range(0..1000) < RELAY_PER_MILLE_PAIR,
        )
    };
    let (slot, patient) = (slot.as_str(), patient.as_str());
    let (hold_id, request_id) = (format!("pgb-h{key}"), format!("pgb-r{key}"));
    let (hold_id, request_id) = (hold_id.as_str(), request_id.as_str());
    let week_ago = NOW - 604_800_000;
    let svc = "/econsult.booking.v1.BookingService";
    bind_values(sqlx::query(OPEN_EPISODE), values![patient, week_ago])
        .fetch_optional(read)
        .await?;

    // HoldSlot, with the search's access-log row.
    let hold_scope = format!("{PATIENT_SUBJECT}|{svc}/HoldSlot");
    let mut tx = write.begin().await?;
    let (c, at) = (&mut *tx, NOW + 4);
    let search = Access {
        subject: PATIENT_SUBJECT,
        role: 1,
        org: "",
        action: &format!("{svc}/FindSlots"),
        resource: "gp:pgb",
        patient,
        actor: ("", "", ""),
        purpose: 1,
        what: ("searched for free appointments with your GP", ""),
    };
    audit(c, search).await?;
    claim(c, &hold_scope, hold_id, at).await?;
    rows(c, SLOT_AND_LIST, values![slot, patient]).await?;
    rows(c, RELEASE, values![patient, slot]).await?;
    let hold = values![hold_id, patient, at + 300_000, request_id, slot, at];
    rows(c, HOLD, hold).await?;
    exec(c, CLOSE_OLDER, values![3, patient, request_id, NOW]).await?;
    let (start, none) = (1_796_689_800_000_i64, None::<i64>);
    let episode = values![
        request_id,
        patient,
        "pgb-gp",
        "pgb",
        "999999999",
        "0301",
        1,
        NOW,
        "2026-12-07",
        1_797_289_200_000_i64,
        0,
        0,
        1_796_688_000_000_i64,
        1,
        1_796_688_000_000_i64,
        0,
        slot,
        start,
        at,
        none,
        0,
        0,
        none,
    ];
    exec(c, EPISODE, episode).await?;
    store_answer(c, (&hold_scope, hold_id), 327, "[]").await?;
    tx.commit().await?;

    // Book.
    let (book_scope, book_key) = (
        format!("{PATIENT_SUBJECT}|{svc}/Book"),
        format!("pgb-b{key}"),
    );
    let mut tx = write.begin().await?;
    let (c, at) = (&mut *tx, NOW + 9);
    claim(c, &book_scope, &book_key, at).await?;
    rows(c, TAKE, values![hold_id, patient, at]).await?;
    rows(c, SLOT_AND_LIST, values![slot, patient]).await?;
    let booked = values![
        slot,
        start,
        at,
        1,
        at,
        request_id,
        patient,
        at - 604_800_000
    ];
    exec(c, BOOKED_EPISODE, booked).await?;
    let appointment = uuid();
    let row = values![
        appointment.as_str(),
        slot,
        "pgb-gp",
        patient,
        1,
        "load test",
        at,
        None::<&str>,
        request_id,
        "",
        0,
        "",
    ];
    exec(c, APPOINTMENT, row).await?;
    let payload = format!(
        r#"{{"appointment_id":"{appointment}","slot_id":"{slot}","gp_id":"pgb","org_number":"999999999","municipality_number":"0301","modality":"in_person","start_ms":{start},"end_ms":1796690700000,"status":"booked","booked_at_ms":{at},"cancelled_at_ms":null,"cancelled_by":null,"late_cancellation":false,"rescheduled_from":null,"gp_hpr_number":"7000000"}}"#
    );
    let route_key = "DWE3D1UtXwfgbsSiicfM-NZrZ2BwNtZOPylmZWEQWyA";
    event(c, "booking.created", route_key, &payload).await?;
    let (action, resource) = (format!("{svc}/Book"), format!("appointment:{appointment}"));
    let what = "booked an appointment on 2026-12-08 01:30";
    let book = Access {
        subject: PATIENT_SUBJECT,
        role: 1,
        org: "",
        action: &action,
        resource: &resource,
        patient,
        actor: ("", "", ""),
        purpose: 1,
        what: (what, ""),
    };
    audit(c, book).await?;
    let accesses = format!(
        r#"[{{"action":"{action}","resource":"{resource}","patient_nin":"{patient}","what":"{what}","what_subject":"","purpose":1}}]"#
    );
    store_answer(c, (&book_scope, &book_key), 504, &accesses).await?;
    tx.commit().await?;

    if pass {
        relay_pass(write, relay).await?;
    }
    Ok(())
}

/// One message write as the product commits it (a third each of StartConsultation,
/// SendMessage and Reply), and the relay's pass at the product's rate.
pub async fn message_write(
    write: &sqlx::AnyPool,
    relay: &SharedRelay,
    threads: i64,
) -> anyhow::Result<()> {
    let (kind, n, key, pass) = {
        let mut rng = rand::thread_rng();
        (
            rng.gen_range(1..=3),
            rng.gen_range(1..=threads),
            rng.r#gen::<u64>(),
            rng.gen_range(0..1000) < RELAY_PER_MILLE_MESSAGE,
        )
    };
    let (patient, idem_key) = (format!("p{n}"), format!("pgb-{key}"));
    let (patient, idem_key) = (patient.as_str(), idem_key.as_str());
    let svc = "/econsult.consultation.v1.ConsultationService";
    let mut tx = write.begin().await?;
    let (c, at) = (&mut *tx, NOW + 20);
    let none = None::<i64>;
    if kind == 1 {
        let scope = format!("{PATIENT_SUBJECT}|{svc}/StartConsultation");
        let thread = format!("pgb-n{key}");
        claim(c, &scope, idem_key, at).await?;
        rows(c, GP_BY_LIST, values![patient]).await?;
        rows(c, OPEN_THREADS, values![patient, 1, 2, 3]).await?;
        rows(c, SETTINGS, values!["999999999"]).await?;
        let due = at + 604_800_000;
        let row = values![
            thread.as_str(),
            patient,
            "pgb",
            "pgbench",
            "999999999",
            "0301",
            1,
            "Sår hals",
            at,
            due,
            "",
            0,
            "",
            0,
            None::<&str>,
            1,
            none,
            "",
            1,
            1,
            0,
            "",
            "",
            none,
            at,
        ];
        exec(c, NEW_THREAD, row).await?;
        let message = uuid();
        let body = "I have had a cough for two weeks. Should I come in?";
        let row = values![message.as_str(), thread.as_str(), 1, 1, "", body, NOW];
        exec(c, MESSAGE, row).await?;
        let started = thread_payload(&thread, at, due, None);
        event(c, "consultation.started", ROUTE_KEY, &started).await?;
        let new = message_payload(&message, 1, &thread);
        event(c, "consultation.message", ROUTE_KEY, &new).await?;
        store_answer(c, (&scope, idem_key), 543, "[]").await?;
    } else {
        let reply = kind == 3;
        let thread = format!("pgb-t{n}");
        let (subject, rpc) = match reply {
            true => (EHR_SUBJECT, format!("{svc}/Reply")),
            false => (PATIENT_SUBJECT, format!("{svc}/SendMessage")),
        };
        let scope = format!("{subject}|{rpc}");
        claim(c, &scope, idem_key, at).await?;
        let locked = rows(c, THREAD_FOR_WRITE, values![thread.as_str()]).await?;
        let row = locked.first().context("the thread is seeded")?;
        let last_seq: i64 = row.try_get("last_seq")?;
        let (patient_read, practice_read): (i64, i64) = (
            row.try_get("patient_read_seq")?,
            row.try_get("practice_read_seq")?,
        );
        let seq = last_seq + 1;
        let message = uuid();
        let ((author, hpr), body) = match reply {
            true => (
                (2, "7000001"),
                "How high is the fever? Please measure it tonight & tell us.",
            ),
            false => (
                (1, ""),
                "It is worse in the evening, and the fever came back last night.",
            ),
        };
        let row = values![
            message.as_str(),
            thread.as_str(),
            seq,
            author,
            hpr,
            body,
            NOW
        ];
        exec(c, MESSAGE, row).await?;
        let (state, first_response) = if reply { (3, Some(at)) } else { (2, None) };
        let (patient_read, practice_read) = match reply {
            true => (patient_read, seq),
            false => (seq, practice_read),
        };
        let update = values![
            thread.as_str(),
            state,
            first_response,
            hpr,
            seq,
            patient_read,
            practice_read,
            "",
            "",
            none,
            at,
        ];
        exec(c, THREAD_UPDATE, update).await?;
        let mut accesses = String::from("[]");
        if reply {
            let (resource, what) = (
                format!("consultation:{thread}"),
                ("replied to your e-consultation", "Sår hals"),
            );
            let access = Access {
                subject,
                role: 3,
                org: "999999999",
                action: &rpc,
                resource: &resource,
                patient,
                actor: ("Kari Dev-Sekretaer", "9900001", EHR_SUBJECT),
                purpose: 2,
                what,
            };
            audit(c, access).await?;
            accesses = format!(
                r#"[{{"action":"{rpc}","resource":"{resource}","patient_nin":"{patient}","what":"{}","what_subject":"{}","purpose":2}}]"#,
                what.0, what.1
            );
        }
        let new = message_payload(&message, seq, &thread);
        event(c, "consultation.message", ROUTE_KEY, &new).await?;
        if reply {
            let payload = thread_payload(&thread, 1_796_602_248_966, 1_797_207_048_966, Some(at));
            event(c, "consultation.first_response", ROUTE_KEY, &payload).await?;
            event(c, "consultation.state", ROUTE_KEY, &payload).await?;
        }
        let bytes = if reply { 623 } else { 539 };
        store_answer(c, (&scope, idem_key), bytes, &accesses).await?;
    }
    tx.commit().await?;
    if pass {
        relay_pass(write, relay).await?;
    }
    Ok(())
}

fn message_payload(message: &str, seq: i64, thread: &str) -> String {
    format!(r#"{{"message_id":"{message}","seq":{seq},"thread_id":"{thread}"}}"#)
}

fn thread_payload(thread: &str, submitted: i64, due: i64, first_response: Option<i64>) -> String {
    let (first, days, hours) = match first_response {
        Some(at) => (at.to_string(), "0", "0.0"),
        None => ("null".into(), "null", "null"),
    };
    format!(
        r#"{{"thread_id":"{thread}","gp_id":"pgb","org_number":"999999999","municipality_number":"0301","category":"e_consultation","submitted_at_ms":{submitted},"due_at_ms":{due},"first_response_at_ms":{first},"response_working_days":{days},"response_working_hours":{hours},"closed_at_ms":null,"tariff_code":null,"outcome":null}}"#
    )
}
