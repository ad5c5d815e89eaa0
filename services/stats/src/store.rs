//! Every SQL statement of the statistics service: the aggregate tables (migrations
//! `0003_stats.sql`) it writes from events and reads for queries. Each statement is a complete
//! literal; a batch upsert is a [`MultiRow`] of literal head and tail.

use crate::domain::{ContactCount, Filter};
use econsult_runtime::bus::Event;
use econsult_runtime::db::{MultiRow, Tx, Value, bind_values};
use sqlx::AnyConnection;
use sqlx::Row as _;

/// An aggregate table: the columns of a row's key, the columns summed into it, and the upsert
/// that adds a batch of rows to it.
pub struct Table {
    /// Table name.
    pub name: &'static str,
    /// Primary key columns.
    pub keys: &'static [&'static str],
    /// Summed columns.
    pub sums: &'static [&'static str],
    /// `INSERT … VALUES (keys…, sums…), … ON CONFLICT (keys) DO UPDATE SET sum = t.sum + excluded.sum`.
    pub upsert: MultiRow,
}

/// Held contacts per day, place, GP, contact type and tariff code.
pub const CONTACTS: Table = Table {
    name: "stats_contacts",
    keys: &[
        "day",
        "org_number",
        "municipality_number",
        "gp_id",
        "contact_type",
        "tariff_code",
    ],
    sums: &["n"],
    upsert: MultiRow {
        head: "INSERT INTO stats_contacts (day, org_number, municipality_number, gp_id, contact_type, tariff_code, n) VALUES",
        columns: 7,
        tail: "ON CONFLICT (day, org_number, municipality_number, gp_id, contact_type, tariff_code) \
               DO UPDATE SET n = stats_contacts.n + excluded.n",
    },
};

/// Booking requests as counted before they were episodes (kept so a rebuild gives the same table).
pub const BOOKING_REQUESTS: Table = Table {
    name: "stats_booking_requests",
    keys: &[
        "day",
        "org_number",
        "municipality_number",
        "gp_id",
        "working_days",
        "within_target",
        "breach_reason",
    ],
    sums: &["n"],
    upsert: MultiRow {
        head: "INSERT INTO stats_booking_requests (day, org_number, municipality_number, gp_id, working_days, within_target, breach_reason, n) VALUES",
        columns: 8,
        tail: "ON CONFLICT (day, org_number, municipality_number, gp_id, working_days, within_target, breach_reason) \
               DO UPDATE SET n = stats_booking_requests.n + excluded.n",
    },
};

/// Appointments per day, place, GP and kind (booked, cancelled, late_cancellation, noshow).
pub const APPOINTMENTS: Table = Table {
    name: "stats_appointments",
    keys: &["day", "org_number", "municipality_number", "gp_id", "kind"],
    sums: &["n"],
    upsert: MultiRow {
        head: "INSERT INTO stats_appointments (day, org_number, municipality_number, gp_id, kind, n) VALUES",
        columns: 6,
        tail: "ON CONFLICT (day, org_number, municipality_number, gp_id, kind) \
               DO UPDATE SET n = stats_appointments.n + excluded.n",
    },
};

/// Ended video sessions per day, place, GP, and whether they connected and were held.
pub const VIDEO_SESSIONS: Table = Table {
    name: "stats_video_sessions",
    keys: &[
        "day",
        "org_number",
        "municipality_number",
        "gp_id",
        "connected",
        "held",
    ],
    sums: &["n", "connected_ms"],
    upsert: MultiRow {
        head: "INSERT INTO stats_video_sessions (day, org_number, municipality_number, gp_id, connected, held, n, connected_ms) VALUES",
        columns: 8,
        tail: "ON CONFLICT (day, org_number, municipality_number, gp_id, connected, held) \
               DO UPDATE SET n = stats_video_sessions.n + excluded.n, connected_ms = stats_video_sessions.connected_ms + excluded.connected_ms",
    },
};

/// First responses of text consultations per day, place, GP, category and working days.
pub const CONSULTATION_RESPONSES: Table = Table {
    name: "stats_consultation_responses",
    keys: &[
        "day",
        "org_number",
        "municipality_number",
        "gp_id",
        "category",
        "working_days",
        "within_sla",
    ],
    sums: &["n"],
    upsert: MultiRow {
        head: "INSERT INTO stats_consultation_responses (day, org_number, municipality_number, gp_id, category, working_days, within_sla, n) VALUES",
        columns: 8,
        tail: "ON CONFLICT (day, org_number, municipality_number, gp_id, category, working_days, within_sla) \
               DO UPDATE SET n = stats_consultation_responses.n + excluded.n",
    },
};

/// Every table the aggregator writes (migrations 0003_stats.sql), with the statement that clears
/// it for a rebuild.
pub const AGGREGATE_TABLES: [(&str, &str); 6] = [
    ("stats_contacts", "DELETE FROM stats_contacts"),
    (
        "stats_booking_requests",
        "DELETE FROM stats_booking_requests",
    ),
    ("stats_appointments", "DELETE FROM stats_appointments"),
    (
        "stats_counted_appointments",
        "DELETE FROM stats_counted_appointments",
    ),
    ("stats_video_sessions", "DELETE FROM stats_video_sessions"),
    (
        "stats_consultation_responses",
        "DELETE FROM stats_consultation_responses",
    ),
];

/// Marks events processed by a consumer, returning those not marked before.
const MARK_PROCESSED: MultiRow = MultiRow {
    head: "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES",
    columns: 3,
    tail: "ON CONFLICT DO NOTHING RETURNING event_id",
};

/// Rows per multi-row statement: well under SQLite's 32 766 bound parameters.
pub const ROWS_PER_STATEMENT: usize = 500;

/// Adds `rows` (key values, then sums) to `table`, [`ROWS_PER_STATEMENT`] per statement.
pub async fn upsert(
    tx: &mut Tx,
    table: &Table,
    rows: &[(Vec<Value>, Vec<i64>)],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values = chunk
            .iter()
            .flat_map(|(key, sums)| {
                key.iter()
                    .cloned()
                    .chain(sums.iter().map(|&s| Value::Int(s)))
            })
            .collect();
        bind_values(sqlx::query(&table.upsert.sql(chunk.len())), values)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Marks `events` (in the order given) processed by `consumer`; returns the ids not marked before.
pub async fn mark_processed(
    tx: &mut Tx,
    consumer: &str,
    events: &[&Event],
) -> Result<Vec<String>, sqlx::Error> {
    let mut fresh = Vec::with_capacity(events.len());
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let values = chunk
            .iter()
            .flat_map(|e| {
                [
                    consumer.into(),
                    e.event_id.as_str().into(),
                    e.created_at.into(),
                ]
            })
            .collect();
        for row in bind_values(sqlx::query(&MARK_PROCESSED.sql(chunk.len())), values)
            .fetch_all(&mut **tx)
            .await?
        {
            fresh.push(row.try_get("event_id")?);
        }
    }
    Ok(fresh)
}

/// Claims the one count of appointment `id` as a contact: `false` when it was counted before.
pub async fn count_appointment_once(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("INSERT INTO stats_counted_appointments (appointment_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected()
        == 1)
}

/// The catch-up watermark of consumer group `group` (0 before the first pass).
pub async fn watermark(tx: &mut Tx, group: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM bus_offsets WHERE consumer_group = $1")
        .bind(group)
        .fetch_one(&mut **tx)
        .await
}

/// Moves the catch-up watermark of `group` up to `seq` (never down).
pub async fn advance_watermark(tx: &mut Tx, group: &str, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bus_offsets (consumer_group, seq) VALUES ($1, $2) \
         ON CONFLICT (consumer_group) DO UPDATE SET seq = CASE WHEN excluded.seq > bus_offsets.seq THEN excluded.seq ELSE bus_offsets.seq END",
    )
    .bind(group)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The highest sequenced outbox seq (`None` when nothing is sequenced).
pub async fn last_sequenced(conn: &mut AnyConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MAX(seq) FROM outbox")
        .fetch_one(conn)
        .await
}

/// The last seq of the next `limit` sequenced events after `after` up to `through`.
pub async fn range_end(
    tx: &mut Tx,
    after: i64,
    through: i64,
    limit: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT MAX(seq) FROM (SELECT seq FROM outbox WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3) AS r",
    )
    .bind(after)
    .bind(through)
    .bind(limit)
    .fetch_one(&mut **tx)
    .await
}

/// The events with seq in (`after`, `last`] that `consumer` has not processed, in seq order.
pub async fn unprocessed_events(
    tx: &mut Tx,
    consumer: &str,
    after: i64,
    last: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT o.seq, o.event_id, o.topic, o.org_number, o.payload, o.created_at, o.trace_parent FROM outbox o \
         WHERE o.seq > $1 AND o.seq <= $2 \
         AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.consumer = $3 AND p.event_id = o.event_id) \
         ORDER BY o.seq",
    )
    .bind(after)
    .bind(last)
    .bind(consumer)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(econsult_runtime::outbox::event_from_row)
        .collect()
}

/// Clears every aggregate table and `consumer`'s processed-event marks (a rebuild).
pub async fn clear(tx: &mut Tx, consumer: &str) -> Result<(), sqlx::Error> {
    for (_, delete) in AGGREGATE_TABLES {
        sqlx::query(delete).execute(&mut **tx).await?;
    }
    sqlx::query("DELETE FROM processed_events WHERE consumer = $1")
        .bind(consumer)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Binds filter `f` to a statement whose `$1`…`$5` are (from, to, org, municipality, gp), the
/// `WHERE day >= $1 AND day <= $2 AND ($3 = '' OR org_number = $3) …` of every query below.
fn filtered<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    f: &'q Filter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&f.from)
        .bind(&f.to)
        .bind(&f.org)
        .bind(&f.municipality)
        .bind(&f.gp)
}

/// Contact counts per day and every dimension, in `f`: one row per base cell (the table's key);
/// county, size band and suppression are the service's.
pub async fn contact_counts(
    conn: &mut AnyConnection,
    f: &Filter,
) -> Result<Vec<ContactCount>, sqlx::Error> {
    let rows = filtered(
        sqlx::query(
            "SELECT day, org_number, municipality_number, gp_id, contact_type, tariff_code, CAST(SUM(n) AS BIGINT) AS n \
             FROM stats_contacts \
             WHERE day >= $1 AND day <= $2 AND ($3 = '' OR org_number = $3) AND ($4 = '' OR municipality_number = $4) AND ($5 = '' OR gp_id = $5) \
             GROUP BY day, org_number, municipality_number, gp_id, contact_type, tariff_code \
             ORDER BY day, org_number, gp_id, contact_type",
        ),
        f,
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let tariff_code: String = r.try_get("tariff_code")?;
            Ok(ContactCount {
                period: r.try_get("day")?,
                org_number: r.try_get("org_number")?,
                municipality_number: r.try_get("municipality_number")?,
                gp_id: r.try_get("gp_id")?,
                contact_type: r.try_get("contact_type")?,
                kpr_category: econsult_runtime::tariff::category_name(&tariff_code).to_owned(),
                tariff_code,
                count: r.try_get::<i64, _>("n")? as u64,
                ..Default::default()
            })
        })
        .collect()
}

/// Appointments in `f` per base cell (day, place, GP) and kind (`booked`, `cancelled`,
/// `late_cancellation`, `noshow`).
pub async fn appointment_rows(
    conn: &mut AnyConnection,
    f: &Filter,
) -> Result<Vec<(Cell, String, u64)>, sqlx::Error> {
    let rows = filtered(
        sqlx::query(
            "SELECT day, org_number, municipality_number, gp_id, kind, CAST(SUM(n) AS BIGINT) AS n FROM stats_appointments \
             WHERE day >= $1 AND day <= $2 AND ($3 = '' OR org_number = $3) AND ($4 = '' OR municipality_number = $4) AND ($5 = '' OR gp_id = $5) \
             GROUP BY day, org_number, municipality_number, gp_id, kind",
        ),
        f,
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                cell(r)?,
                r.try_get("kind")?,
                r.try_get::<i64, _>("n")? as u64,
            ))
        })
        .collect()
}

/// The base cell of a row: day, organisation, municipality and GP.
pub type Cell = (String, String, String, String);

fn cell(r: &sqlx::any::AnyRow) -> Result<Cell, sqlx::Error> {
    Ok((
        r.try_get("day")?,
        r.try_get("org_number")?,
        r.try_get("municipality_number")?,
        r.try_get("gp_id")?,
    ))
}

/// First responses of one base cell, working-day count and SLA outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRow {
    /// Working days from submission to first response (15 = fifteen or more).
    pub working_days: i64,
    /// Answered before the due time.
    pub within_sla: bool,
    /// How many.
    pub n: u64,
}

/// First responses of text consultations in `f`, per base cell (day of submission, place, GP),
/// working days and SLA outcome.
pub async fn response_rows(
    conn: &mut AnyConnection,
    f: &Filter,
) -> Result<Vec<(Cell, ResponseRow)>, sqlx::Error> {
    let rows = filtered(
        sqlx::query(
            "SELECT day, org_number, municipality_number, gp_id, working_days, within_sla, CAST(SUM(n) AS BIGINT) AS n \
             FROM stats_consultation_responses \
             WHERE day >= $1 AND day <= $2 AND ($3 = '' OR org_number = $3) AND ($4 = '' OR municipality_number = $4) AND ($5 = '' OR gp_id = $5) \
             GROUP BY day, org_number, municipality_number, gp_id, working_days, within_sla",
        ),
        f,
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                cell(r)?,
                ResponseRow {
                    working_days: r.try_get("working_days")?,
                    within_sla: r.try_get::<i64, _>("within_sla")? != 0,
                    n: r.try_get::<i64, _>("n")? as u64,
                },
            ))
        })
        .collect()
}

/// Ended video sessions of one base cell by outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRow {
    /// The peers connected.
    pub connected: bool,
    /// Marked held.
    pub held: bool,
    /// Sessions.
    pub n: u64,
    /// Their connected time, ms.
    pub connected_ms: i64,
}

/// Ended video sessions in `f`, per base cell (day started, place, GP) and outcome.
pub async fn video_rows(
    conn: &mut AnyConnection,
    f: &Filter,
) -> Result<Vec<(Cell, VideoRow)>, sqlx::Error> {
    let rows = filtered(
        sqlx::query(
            "SELECT day, org_number, municipality_number, gp_id, connected, held, CAST(SUM(n) AS BIGINT) AS n, CAST(SUM(connected_ms) AS BIGINT) AS ms \
             FROM stats_video_sessions \
             WHERE day >= $1 AND day <= $2 AND ($3 = '' OR org_number = $3) AND ($4 = '' OR municipality_number = $4) AND ($5 = '' OR gp_id = $5) \
             GROUP BY day, org_number, municipality_number, gp_id, connected, held",
        ),
        f,
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                cell(r)?,
                VideoRow {
                    connected: r.try_get::<i64, _>("connected")? != 0,
                    held: r.try_get::<i64, _>("held")? != 0,
                    n: r.try_get::<i64, _>("n")? as u64,
                    connected_ms: r.try_get("ms")?,
                },
            ))
        })
        .collect()
}

/// First responses per municipality in the days (`after`, `through`]: (municipality, responded,
/// within the SLA), for the SLA gauge.
pub async fn responses_by_municipality(
    conn: &mut AnyConnection,
    after: &str,
    through: &str,
) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT municipality_number, CAST(SUM(n) AS BIGINT), CAST(SUM(CASE WHEN within_sla = 1 THEN n ELSE 0 END) AS BIGINT) \
         FROM stats_consultation_responses WHERE day > $1 AND day <= $2 GROUP BY municipality_number",
    )
    .bind(after)
    .bind(through)
    .fetch_all(conn)
    .await
}
