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

/// `n` bytes of an answer, as the product stores its serialised answer.
fn answer(n: usize) -> Vec<u8> {
    vec![b'x'; n]
}

/// Claims `key` in `scope`: the first statement of every command.
async fn claim(
    tx: &mut sqlx::AnyConnection,
    scope: &str,
    key: &str,
    created_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(CLAIM)
        .bind(scope)
        .bind(key)
        .bind("a24c8103347fb6512fb96f160b2a013e6721951fa4b257d2c2e7633af6353513")
        .bind(Vec::<u8>::new())
        .bind(created_at)
        .execute(tx)
        .await?;
    Ok(())
}

async fn store_answer(
    tx: &mut sqlx::AnyConnection,
    scope: &str,
    key: &str,
    bytes: usize,
    accesses: &str,
) -> anyhow::Result<()> {
    sqlx::query(ANSWER)
        .bind(answer(bytes))
        .bind(accesses)
        .bind(scope)
        .bind(key)
        .execute(tx)
        .await?;
    Ok(())
}

/// An access-log row: (subject, role, org, action, resource, patient, actor name, actor HPR,
/// system, purpose, what, what subject).
#[allow(clippy::too_many_arguments)]
async fn audit(
    tx: &mut sqlx::AnyConnection,
    subject: &str,
    role: i64,
    org: &str,
    action: &str,
    resource: &str,
    patient: &str,
    actor: (&str, &str, &str),
    purpose: i64,
    what: (&str, &str),
) -> anyhow::Result<()> {
    sqlx::query(AUDIT)
        .bind(NOW)
        .bind(subject)
        .bind(role)
        .bind(org)
        .bind(action)
        .bind(resource)
        .bind(patient)
        .bind("")
        .bind(uuid::Uuid::new_v4().simple().to_string())
        .bind("")
        .bind(0_i64)
        .bind(actor.0)
        .bind(actor.1)
        .bind(actor.2)
        .bind(purpose)
        .bind(what.0)
        .bind(what.1)
        .execute(tx)
        .await?;
    Ok(())
}

async fn event(
    tx: &mut sqlx::AnyConnection,
    topic: &str,
    route_key: &str,
    payload: &str,
) -> anyhow::Result<()> {
    sqlx::query(EVENT)
        .bind(uuid())
        .bind(topic)
        .bind("999999999")
        .bind(route_key)
        .bind(payload)
        .bind(NOW)
        .bind("")
        .execute(tx)
        .await?;
    Ok(())
}

/// One relay pass, in a transaction of its own: mark the last pass's events published, give
/// the unsequenced ones their seq. Returns how many it sequenced.
pub async fn relay_pass(write: &sqlx::AnyPool, relay: &SharedRelay) -> anyhow::Result<usize> {
    let mut relay = relay.lock().await;
    let mut tx = write.begin().await?;
    if let Some((first, end)) = relay.unmarked {
        sqlx::query(MARK)
            .bind(NOW)
            .bind(first)
            .bind(end)
            .execute(&mut *tx)
            .await?;
    }
    let rows = sqlx::query(SEQUENCE)
        .bind(256_i64)
        .bind(relay.last)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let seqs: Vec<i64> = rows
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
    let (hold_id, request_id) = (format!("pgb-h{key}"), format!("pgb-r{key}"));
    let hold_scope = format!("{PATIENT_SUBJECT}|/econsult.booking.v1.BookingService/HoldSlot");
    let book_scope = format!("{PATIENT_SUBJECT}|/econsult.booking.v1.BookingService/Book");
    sqlx::query(OPEN_EPISODE)
        .bind(&patient)
        .bind(NOW - 604_800_000)
        .fetch_optional(read)
        .await?;

    let mut tx = write.begin().await?;
    let (c, ms) = (&mut *tx, NOW + 4);
    audit(
        c,
        PATIENT_SUBJECT,
        1,
        "",
        "/econsult.booking.v1.BookingService/FindSlots",
        "gp:pgb",
        &patient,
        ("", "", ""),
        1,
        ("searched for free appointments with your GP", ""),
    )
    .await?;
    claim(c, &hold_scope, &hold_id, ms).await?;
    sqlx::query(SLOT_AND_LIST)
        .bind(&slot)
        .bind(&patient)
        .fetch_optional(&mut *c)
        .await?;
    sqlx::query(RELEASE)
        .bind(&patient)
        .bind(&slot)
        .fetch_all(&mut *c)
        .await?;
    sqlx::query(HOLD)
        .bind(&hold_id)
        .bind(&patient)
        .bind(ms + 300_000)
        .bind(&request_id)
        .bind(&slot)
        .bind(ms)
        .fetch_optional(&mut *c)
        .await?;
    sqlx::query(CLOSE_OLDER)
        .bind(3_i64)
        .bind(&patient)
        .bind(&request_id)
        .bind(NOW)
        .execute(&mut *c)
        .await?;
    let episode = sqlx::query(EPISODE)
        .bind(&request_id)
        .bind(&patient)
        .bind("pgb-gp")
        .bind("pgb")
        .bind("999999999")
        .bind("0301")
        .bind(1_i64)
        .bind(NOW)
        .bind("2026-12-07")
        .bind(1_797_289_200_000_i64)
        .bind(0_i64)
        .bind(0_i64)
        .bind(1_796_688_000_000_i64)
        .bind(1_i64)
        .bind(1_796_688_000_000_i64)
        .bind(0_i64)
        .bind(&slot)
        .bind(1_796_689_800_000_i64)
        .bind(ms)
        .bind(None::<i64>)
        .bind(0_i64)
        .bind(0_i64)
        .bind(None::<i64>);
    episode.execute(&mut *c).await?;
    store_answer(c, &hold_scope, &hold_id, 327, "[]").await?;
    tx.commit().await?;

    let book_key = format!("pgb-b{key}");
    let mut tx = write.begin().await?;
    let (c, ms) = (&mut *tx, NOW + 9);
    claim(c, &book_scope, &book_key, ms).await?;
    sqlx::query(TAKE)
        .bind(&hold_id)
        .bind(&patient)
        .bind(ms)
        .fetch_optional(&mut *c)
        .await?;
    sqlx::query(SLOT_AND_LIST)
        .bind(&slot)
        .bind(&patient)
        .fetch_optional(&mut *c)
        .await?;
    sqlx::query(BOOKED_EPISODE)
        .bind(&slot)
        .bind(1_796_689_800_000_i64)
        .bind(ms)
        .bind(1_i64)
        .bind(ms)
        .bind(&request_id)
        .bind(&patient)
        .bind(ms - 604_800_000)
        .execute(&mut *c)
        .await?;
    let appointment = uuid();
    sqlx::query(APPOINTMENT)
        .bind(&appointment)
        .bind(&slot)
        .bind("pgb-gp")
        .bind(&patient)
        .bind(1_i64)
        .bind("load test")
        .bind(ms)
        .bind(None::<String>)
        .bind(&request_id)
        .bind("")
        .bind(0_i64)
        .bind("")
        .execute(&mut *c)
        .await?;
    let payload = format!(
        r#"{{"appointment_id":"{appointment}","slot_id":"{slot}","gp_id":"pgb","org_number":"999999999","municipality_number":"0301","modality":"in_person","start_ms":1796689800000,"end_ms":1796690700000,"status":"booked","booked_at_ms":{ms},"cancelled_at_ms":null,"cancelled_by":null,"late_cancellation":false,"rescheduled_from":null,"gp_hpr_number":"7000000"}}"#
    );
    event(
        c,
        "booking.created",
        "DWE3D1UtXwfgbsSiicfM-NZrZ2BwNtZOPylmZWEQWyA",
        &payload,
    )
    .await?;
    let resource = format!("appointment:{appointment}");
    let what = "booked an appointment on 2026-12-08 01:30";
    audit(
        c,
        PATIENT_SUBJECT,
        1,
        "",
        "/econsult.booking.v1.BookingService/Book",
        &resource,
        &patient,
        ("", "", ""),
        1,
        (what, ""),
    )
    .await?;
    let accesses = format!(
        r#"[{{"action":"/econsult.booking.v1.BookingService/Book","resource":"{resource}","patient_nin":"{patient}","what":"{what}","what_subject":"","purpose":1}}]"#
    );
    store_answer(c, &book_scope, &book_key, 504, &accesses).await?;
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
    let svc = "/econsult.consultation.v1.ConsultationService";
    let mut tx = write.begin().await?;
    let (c, ms) = (&mut *tx, NOW + 20);
    if kind == 1 {
        let scope = format!("{PATIENT_SUBJECT}|{svc}/StartConsultation");
        let thread = format!("pgb-n{key}");
        claim(c, &scope, &idem_key, ms).await?;
        sqlx::query(GP_BY_LIST)
            .bind(&patient)
            .fetch_optional(&mut *c)
            .await?;
        sqlx::query(OPEN_THREADS)
            .bind(&patient)
            .bind(1_i64)
            .bind(2_i64)
            .bind(3_i64)
            .fetch_one(&mut *c)
            .await?;
        sqlx::query(SETTINGS)
            .bind("999999999")
            .fetch_optional(&mut *c)
            .await?;
        let due = ms + 604_800_000;
        sqlx::query(NEW_THREAD)
            .bind(&thread)
            .bind(&patient)
            .bind("pgb")
            .bind("pgbench")
            .bind("999999999")
            .bind("0301")
            .bind(1_i64)
            .bind("Sår hals")
            .bind(ms)
            .bind(due)
            .bind("")
            .bind(0_i64)
            .bind("")
            .bind(0_i64)
            .bind(None::<String>)
            .bind(1_i64)
            .bind(None::<i64>)
            .bind("")
            .bind(1_i64)
            .bind(1_i64)
            .bind(0_i64)
            .bind("")
            .bind("")
            .bind(None::<i64>)
            .bind(ms)
            .execute(&mut *c)
            .await?;
        let message = uuid();
        message_row(
            c,
            &message,
            &thread,
            1,
            (1, ""),
            "I have had a cough for two weeks. Should I come in?",
        )
        .await?;
        event(
            c,
            "consultation.started",
            ROUTE_KEY,
            &thread_payload(&thread, ms, due, None),
        )
        .await?;
        event(
            c,
            "consultation.message",
            ROUTE_KEY,
            &message_payload(&message, 1, &thread),
        )
        .await?;
        store_answer(c, &scope, &idem_key, 543, "[]").await?;
    } else {
        let thread = format!("pgb-t{n}");
        let (scope, subject) = if kind == 2 {
            (
                format!("{PATIENT_SUBJECT}|{svc}/SendMessage"),
                PATIENT_SUBJECT,
            )
        } else {
            (format!("{EHR_SUBJECT}|{svc}/Reply"), EHR_SUBJECT)
        };
        claim(c, &scope, &idem_key, ms).await?;
        let row = sqlx::query(THREAD_FOR_WRITE)
            .bind(&thread)
            .fetch_one(&mut *c)
            .await?;
        let (last_seq, patient_read, practice_read): (i64, i64, i64) = (
            row.try_get("last_seq")?,
            row.try_get("patient_read_seq")?,
            row.try_get("practice_read_seq")?,
        );
        let seq = last_seq + 1;
        let message = uuid();
        let reply = kind == 3;
        let (author, body) = if reply {
            (
                (2, "7000001"),
                "How high is the fever? Please measure it tonight & tell us.",
            )
        } else {
            (
                (1, ""),
                "It is worse in the evening, and the fever came back last night.",
            )
        };
        message_row(c, &message, &thread, seq, author, body).await?;
        sqlx::query(THREAD_UPDATE)
            .bind(&thread)
            .bind(if reply { 3_i64 } else { 2 })
            .bind(reply.then_some(ms))
            .bind(author.1)
            .bind(seq)
            .bind(if reply { patient_read } else { seq })
            .bind(if reply { seq } else { practice_read })
            .bind("")
            .bind("")
            .bind(None::<i64>)
            .bind(ms)
            .execute(&mut *c)
            .await?;
        let mut accesses = String::from("[]");
        if reply {
            let resource = format!("consultation:{thread}");
            let what = ("replied to your e-consultation", "Sår hals");
            audit(
                c,
                subject,
                3,
                "999999999",
                &format!("{svc}/Reply"),
                &resource,
                &patient,
                ("Kari Dev-Sekretaer", "9900001", EHR_SUBJECT),
                2,
                what,
            )
            .await?;
            accesses = format!(
                r#"[{{"action":"{svc}/Reply","resource":"{resource}","patient_nin":"{patient}","what":"{}","what_subject":"{}","purpose":2}}]"#,
                what.0, what.1
            );
        }
        event(
            c,
            "consultation.message",
            ROUTE_KEY,
            &message_payload(&message, seq, &thread),
        )
        .await?;
        if reply {
            let payload = thread_payload(&thread, 1_796_602_248_966, 1_797_207_048_966, Some(ms));
            event(c, "consultation.first_response", ROUTE_KEY, &payload).await?;
            event(c, "consultation.state", ROUTE_KEY, &payload).await?;
        }
        store_answer(
            c,
            &scope,
            &idem_key,
            if reply { 623 } else { 539 },
            &accesses,
        )
        .await?;
    }
    tx.commit().await?;
    if pass {
        relay_pass(write, relay).await?;
    }
    Ok(())
}

async fn message_row(
    tx: &mut sqlx::AnyConnection,
    message: &str,
    thread: &str,
    seq: i64,
    author: (i64, &str),
    body: &str,
) -> anyhow::Result<()> {
    sqlx::query(MESSAGE)
        .bind(message)
        .bind(thread)
        .bind(seq)
        .bind(author.0)
        .bind(author.1)
        .bind(body)
        .bind(NOW)
        .execute(tx)
        .await?;
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
