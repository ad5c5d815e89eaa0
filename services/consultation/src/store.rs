//! Every SQL statement of the consultation service, over the tables `consultation_*` (the locked
//! read of a thread also reads its practice's closure days from booking's `booking_closures`).
//! Thread mutations run inside a write transaction that first reads the thread with its lock
//! ([`lock_thread`], which on PostgreSQL also claims the call's idempotency key), so a check of
//! the state and the change that follows cannot interleave with another call; the writes
//! themselves are deferred to the commit (one statement with the call's outbox event,
//! access-log row and stored answer on PostgreSQL).
//! The statements are the same on PostgreSQL and SQLite, but for that lock and the claims
//! made with it.
//! Codes are converted here: [`State`], [`Category`] and [`Author`] in, their numbers stored.

use crate::content::CheckedAttachment;
use crate::domain::{Attachment, Author, Category, Message, State, Thread};
use econsult_runtime::db::{Backend, Defer, MultiRow, Value, rows_by_ids};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row as _};

/// A stored code that is none of its enum's (a row this version cannot read).
fn bad_code(column: &str, code: i64) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown code {code}").into(),
    }
}

fn thread_row(r: &AnyRow) -> Result<Thread, sqlx::Error> {
    let category: i64 = r.try_get("category")?;
    let state: i64 = r.try_get("state")?;
    Ok(Thread {
        thread_id: r.try_get("thread_id")?,
        patient_nin: r.try_get("patient_nin")?,
        gp_id: r.try_get("gp_id")?,
        gp_display_name: r.try_get("gp_display_name")?,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
        category: Category::from_code(category).ok_or_else(|| bad_code("category", category))?,
        subject: r.try_get("subject")?,
        state: State::from_code(state).ok_or_else(|| bad_code("state", state))?,
        submitted_at: r.try_get("submitted_at")?,
        due_at: r.try_get("due_at")?,
        first_response_at: r.try_get("first_response_at")?,
        assigned_hpr: r.try_get("assigned_hpr")?,
        last_seq: r.try_get("last_seq")?,
        patient_read_seq: r.try_get("patient_read_seq")?,
        practice_read_seq: r.try_get("practice_read_seq")?,
        outcome: r.try_get("outcome")?,
        tariff_code: r.try_get("tariff_code")?,
        closed_at: r.try_get("closed_at")?,
        updated_at: r.try_get("updated_at")?,
        started_by_nin: r.try_get("started_by_nin")?,
        started_by_relation: r.try_get("started_by_relation")?,
        started_by_name: r.try_get("started_by_name")?,
        confidential: r.try_get::<i64, _>("confidential")? != 0,
    })
}

/// The patient (identity number) of thread `thread_id`, if stored.
pub async fn thread_patient(
    conn: &mut AnyConnection,
    thread_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT patient_nin FROM consultation_threads WHERE thread_id = $1")
        .bind(thread_id)
        .fetch_optional(conn)
        .await?
        .map(|r| r.try_get("patient_nin"))
        .transpose()
}

/// The columns a [`Thread`] is read from, in `thread_row`'s names.
macro_rules! thread_columns {
    () => {
        "thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number, \
         category, subject, state, submitted_at, due_at, first_response_at, assigned_hpr, last_seq, patient_read_seq, \
         practice_read_seq, outcome, tariff_code, closed_at, updated_at, started_by_nin, started_by_relation, \
         started_by_name, confidential"
    };
}

/// A thread by id, read with `exec` (the read pool, or a call's transaction).
pub async fn thread<'e, E>(exec: E, thread_id: &str) -> Result<Option<Thread>, sqlx::Error>
where
    E: Executor<'e, Database = Any>,
{
    sqlx::query(concat!(
        "SELECT ",
        thread_columns!(),
        " FROM consultation_threads WHERE thread_id = $1"
    ))
    .bind(thread_id)
    .fetch_optional(exec)
    .await?
    .as_ref()
    .map(thread_row)
    .transpose()
}

/// A thread by id, read in the call's transaction and locked for the rest of it: on PostgreSQL
/// with `FOR NO KEY UPDATE`, the row lock an UPDATE of the thread takes, which orders every
/// change of the thread (the read and its lock in one statement, where an advisory lock took a
/// round trip of its own) and, unlike `FOR UPDATE`, leaves the foreign-key checks of rows that
/// reference the thread free; on SQLite the one writer serialises the transactions already.
pub async fn thread_for_update(
    conn: &mut AnyConnection,
    thread_id: &str,
    backend: Backend,
) -> Result<Option<Thread>, sqlx::Error> {
    let sql = match backend {
        Backend::Postgres => concat!(
            "SELECT ",
            thread_columns!(),
            " FROM consultation_threads WHERE thread_id = $1 FOR NO KEY UPDATE"
        ),
        Backend::Sqlite => concat!(
            "SELECT ",
            thread_columns!(),
            " FROM consultation_threads WHERE thread_id = $1"
        ),
    };
    sqlx::query(sql)
        .bind(thread_id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(thread_row)
        .transpose()
}

/// A thread read with its lock ([`thread_for_update`]) by a command's first statement, with
/// what the commands need besides, read by the same statement: the closure days of its practice
/// (booking's `booking_closures`, as booking's directory reads them) and the booking request it
/// was started from.
pub struct LockedThread {
    pub thread: Thread,
    pub closures: Vec<chrono::NaiveDate>,
    pub booking_request: Option<String>,
}

/// The columns of a [`LockedThread`] after the thread's: `booking_request_id` and `closures`
/// (the practice's closure days, comma-separated), of the table `consultation_threads`.
macro_rules! locked_extra_columns {
    () => {
        ", booking_request_id, (SELECT string_agg(c.closed_on, ',') FROM booking_closures c \
         WHERE c.org_number = consultation_threads.org_number) AS closures"
    };
}

/// PostgreSQL, claiming the call's key (`$1`…`$5`, see
/// `econsult_runtime::idempotency::begin_claiming_first`): thread `$6` with its lock and the
/// [`LockedThread`] columns, read only when the claim was made, so the claim is the statement's
/// first lock, as when it took a round trip of its own.
const LOCK_THREAD_CLAIMING: &str = concat!(
    "WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one) \
     SELECT c.claimed, t.* FROM (SELECT count(*) AS claimed FROM claim) c LEFT JOIN (SELECT ",
    thread_columns!(),
    locked_extra_columns!(),
    " FROM consultation_threads WHERE thread_id = $6 AND EXISTS (SELECT 1 FROM claim) \
     FOR NO KEY UPDATE) t ON true"
);

/// PostgreSQL, the key claimed already: thread `$1` with its lock and the [`LockedThread`]
/// columns.
const LOCK_THREAD: &str = concat!(
    "SELECT 1 AS claimed, ",
    thread_columns!(),
    locked_extra_columns!(),
    " FROM consultation_threads WHERE thread_id = $1 FOR NO KEY UPDATE"
);

/// SQLite (the one writer serialises the transactions): [`LOCK_THREAD`] without the lock.
const READ_THREAD_FOR_WRITE: &str = concat!(
    "SELECT 1 AS claimed, ",
    thread_columns!(),
    locked_extra_columns!(),
    " FROM consultation_threads WHERE thread_id = $1"
);

/// The command's first statement: thread `thread_id` read with its lock as a [`LockedThread`]
/// (`None` when it is not stored), claiming the call's key in the same statement while it is
/// still to be claimed (PostgreSQL). Returns the claim's count, to be handed to `Op::claimed`
/// before anything else (1 when this statement made no claim).
pub async fn lock_thread(
    op: &mut econsult_runtime::idempotency::Op,
    thread_id: &str,
    backend: Backend,
) -> Result<(i64, Option<LockedThread>), sqlx::Error> {
    let q = match backend {
        Backend::Postgres if op.claims_in_statement() => op
            .bind_claim(sqlx::query(LOCK_THREAD_CLAIMING))
            .bind(thread_id),
        Backend::Postgres => sqlx::query(LOCK_THREAD).bind(thread_id),
        Backend::Sqlite => sqlx::query(READ_THREAD_FOR_WRITE).bind(thread_id),
    };
    let Some(r) = q.fetch_optional(&mut *op.tx).await? else {
        return Ok((1, None));
    };
    let claimed: i64 = r.try_get("claimed")?;
    if r.try_get::<Option<String>, _>("thread_id")?.is_none() {
        return Ok((claimed, None));
    }
    let closures = econsult_booking::directory::closure_days(
        r.try_get::<Option<String>, _>("closures")?.as_deref(),
    );
    Ok((
        claimed,
        Some(LockedThread {
            thread: thread_row(&r)?,
            closures,
            booking_request: r.try_get("booking_request_id")?,
        }),
    ))
}

/// PostgreSQL, claiming the call's key (`$1`…`$5`, see
/// `econsult_runtime::idempotency::begin_claiming_first`), then, only when it claimed it, the
/// transaction's advisory lock `$6` (as `Db::lock` takes it).
const CLAIM_AND_LOCK: &str = "WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one) \
     SELECT c.claimed, CASE WHEN c.claimed > 0 THEN pg_advisory_xact_lock(hashtextextended($6, 0))::text END AS locked \
     FROM (SELECT count(*) AS claimed FROM claim) c";

/// The command's first statement on PostgreSQL while its key is to be claimed: claims it and
/// takes the advisory lock `lock_key` in one round trip. Returns the claim's count for
/// `Op::claimed` (the lock is taken only when it is 1), or `None` when this statement does not
/// fit (SQLite, or the key claimed already): take the lock with `Db::lock` then.
pub async fn claim_and_lock(
    op: &mut econsult_runtime::idempotency::Op,
    lock_key: &str,
    backend: Backend,
) -> Result<Option<i64>, sqlx::Error> {
    if backend != Backend::Postgres || !op.claims_in_statement() {
        return Ok(None);
    }
    let row = op
        .bind_claim(sqlx::query(CLAIM_AND_LOCK))
        .bind(lock_key)
        .fetch_one(&mut *op.tx)
        .await?;
    Ok(Some(row.try_get("claimed")?))
}

/// The columns of a thread that change after it is started, in the order of [`mutable_values`]:
/// [`insert_thread`] writes them last, [`update_thread`] as `$2`…`$11`.
fn mutable_values(t: &Thread) -> [Value; 10] {
    [
        t.state.code().into(),
        t.first_response_at.into(),
        t.assigned_hpr.as_str().into(),
        t.last_seq.into(),
        t.patient_read_seq.into(),
        t.practice_read_seq.into(),
        t.outcome.as_str().into(),
        t.tariff_code.as_str().into(),
        t.closed_at.into(),
        t.updated_at.into(),
    ]
}

/// Inserts a new thread, started from the patient's booking request `booking_request_id` when
/// there is one (the guarantee engine's e-consultation offer); deferred to the commit.
pub fn insert_thread(tx: &mut impl Defer, t: &Thread, booking_request_id: Option<&str>) {
    let mut values: Vec<Value> = vec![
        t.thread_id.as_str().into(),
        t.patient_nin.as_str().into(),
        t.gp_id.as_str().into(),
        t.gp_display_name.as_str().into(),
        t.org_number.as_str().into(),
        t.municipality_number.as_str().into(),
        t.category.code().into(),
        t.subject.as_str().into(),
        t.submitted_at.into(),
        t.due_at.into(),
        t.started_by_nin.as_str().into(),
        t.started_by_relation.into(),
        t.started_by_name.as_str().into(),
        i64::from(t.confidential).into(),
        booking_request_id.into(),
    ];
    values.extend(mutable_values(t));
    tx.defer(
        "INSERT INTO consultation_threads (thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number, \
         category, subject, submitted_at, due_at, started_by_nin, started_by_relation, started_by_name, confidential, \
         booking_request_id, state, first_response_at, assigned_hpr, last_seq, patient_read_seq, practice_read_seq, \
         outcome, tariff_code, closed_at, updated_at) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)",
        values,
    );
}

/// Writes the mutable fields of a thread back (its last seq included), deferred to the commit.
/// At most once per transaction, and never in one with [`insert_thread`] of the same thread:
/// PostgreSQL runs a transaction's deferred writes as one statement, whose parts do not see
/// each other's rows.
pub fn update_thread(tx: &mut impl Defer, t: &Thread) {
    let mut values: Vec<Value> = vec![t.thread_id.as_str().into()];
    values.extend(mutable_values(t));
    tx.defer(
        "UPDATE consultation_threads SET state = $2, first_response_at = $3, assigned_hpr = $4, \
         last_seq = $5, patient_read_seq = $6, practice_read_seq = $7, outcome = $8, tariff_code = $9, closed_at = $10, \
         updated_at = $11 WHERE thread_id = $1",
        values,
    );
}

/// Marks thread `thread_id` confidential to its patient (or not) at `now_ms`.
pub async fn set_confidential(
    conn: &mut AnyConnection,
    thread_id: &str,
    confidential: bool,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE consultation_threads SET confidential = $2, updated_at = $3 WHERE thread_id = $1",
    )
    .bind(thread_id)
    .bind(i64::from(confidential))
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Message `seq` of thread `thread_id` (the thread's last seq + 1: the caller holds the
/// thread's lock, [`thread_for_update`], and writes the new last seq back with
/// [`update_thread`]; `(thread_id, seq)` is unique besides) with its attachments, deferred to
/// the commit.
#[allow(clippy::too_many_arguments)]
pub fn append_message(
    tx: &mut impl Defer,
    thread_id: &str,
    seq: i64,
    author: Author,
    author_hpr: &str,
    body: &str,
    attachments: &[CheckedAttachment],
    now_ms: i64,
) -> Message {
    let message_id = uuid::Uuid::now_v7().to_string();
    tx.defer(
        "INSERT INTO consultation_messages (message_id, thread_id, seq, author, author_hpr, body, sent_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            message_id.as_str().into(),
            thread_id.into(),
            seq.into(),
            author.code().into(),
            author_hpr.into(),
            body.into(),
            now_ms.into(),
        ],
    );
    let mut metas = Vec::with_capacity(attachments.len());
    for (i, a) in attachments.iter().enumerate() {
        let attachment_id = uuid::Uuid::now_v7().to_string();
        tx.defer(
            "INSERT INTO consultation_attachments (attachment_id, message_id, thread_id, position, file_name, content_type, size_bytes, sha256, content) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            vec![
                attachment_id.as_str().into(),
                message_id.as_str().into(),
                thread_id.into(),
                (i as i64).into(),
                a.file_name.as_str().into(),
                a.content_type.into(),
                (a.content.len() as i64).into(),
                a.sha256.as_str().into(),
                a.content.clone().into(),
            ],
        );
        metas.push(Attachment {
            attachment_id,
            file_name: a.file_name.clone(),
            content_type: a.content_type.into(),
            size_bytes: a.content.len() as i64,
            sha256: a.sha256.clone(),
        });
    }
    Message {
        message_id,
        thread_id: thread_id.into(),
        seq,
        author,
        author_hpr: author_hpr.into(),
        body: body.into(),
        sent_at: now_ms,
        attachments: metas,
    }
}

fn attachment_meta(r: &AnyRow) -> Result<(String, Attachment), sqlx::Error> {
    Ok((
        r.try_get("message_id")?,
        Attachment {
            attachment_id: r.try_get("attachment_id")?,
            file_name: r.try_get("file_name")?,
            content_type: r.try_get("content_type")?,
            size_bytes: r.try_get("size_bytes")?,
            sha256: r.try_get("sha256")?,
        },
    ))
}

fn message_row(r: &AnyRow) -> Result<Message, sqlx::Error> {
    let author: i64 = r.try_get("author")?;
    Ok(Message {
        message_id: r.try_get("message_id")?,
        thread_id: r.try_get("thread_id")?,
        seq: r.try_get("seq")?,
        author: Author::from_code(author).ok_or_else(|| bad_code("author", author))?,
        author_hpr: r.try_get("author_hpr")?,
        body: r.try_get("body")?,
        sent_at: r.try_get("sent_at")?,
        attachments: Vec::new(),
    })
}

/// `msgs` (of one thread, in seq order) with their attachments' metadata, read from `pool`.
async fn with_attachments(
    pool: &AnyPool,
    mut msgs: Vec<Message>,
) -> Result<Vec<Message>, sqlx::Error> {
    if msgs.is_empty() {
        return Ok(msgs);
    }
    let (lo, hi) = (msgs[0].seq, msgs[msgs.len() - 1].seq);
    let rows = sqlx::query(
        "SELECT a.attachment_id, a.message_id, a.file_name, a.content_type, a.size_bytes, a.sha256 \
         FROM consultation_attachments a JOIN consultation_messages m ON m.message_id = a.message_id \
         WHERE m.thread_id = $1 AND m.seq BETWEEN $2 AND $3 ORDER BY a.position",
    )
    .bind(&msgs[0].thread_id)
    .bind(lo)
    .bind(hi)
    .fetch_all(pool)
    .await?;
    for r in &rows {
        let (mid, meta) = attachment_meta(r)?;
        if let Some(m) = msgs.iter_mut().find(|m| m.message_id == mid) {
            m.attachments.push(meta);
        }
    }
    Ok(msgs)
}

/// Messages of a thread with seq in `(after_seq, ..]`, at most `limit`, read from `pool` (the
/// read pool).
pub async fn messages(
    pool: &AnyPool,
    thread_id: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT message_id, thread_id, seq, author, author_hpr, body, sent_at FROM consultation_messages \
         WHERE thread_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(thread_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let msgs = rows
        .iter()
        .map(message_row)
        .collect::<Result<Vec<_>, _>>()?;
    with_attachments(pool, msgs).await
}

/// One message by id, read from `pool` (the read pool).
pub async fn message(pool: &AnyPool, message_id: &str) -> Result<Option<Message>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT message_id, thread_id, seq, author, author_hpr, body, sent_at FROM consultation_messages WHERE message_id = $1",
    )
    .bind(message_id)
    .fetch_optional(pool)
    .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(with_attachments(pool, vec![message_row(&r)?]).await?.pop()),
    }
}

/// Threads by id, for a page of change events: `IN (VALUES ($1), …)`.
const THREADS_BY_ID: MultiRow = MultiRow {
    head: "SELECT thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number, \
         category, subject, state, submitted_at, due_at, first_response_at, assigned_hpr, last_seq, patient_read_seq, \
         practice_read_seq, outcome, tariff_code, closed_at, updated_at, started_by_nin, started_by_relation, \
         started_by_name, confidential \
         FROM consultation_threads WHERE thread_id IN (VALUES",
    columns: 1,
    tail: ")",
};

/// Messages by id, each with its attachments' metadata (one row per attachment; one with NULL
/// attachment columns for a message without), a message's rows together in attachment order.
const MESSAGES_BY_ID: MultiRow = MultiRow {
    head: "SELECT m.message_id AS message_id, m.thread_id AS thread_id, m.seq AS seq, m.author AS author, \
         m.author_hpr AS author_hpr, m.body AS body, m.sent_at AS sent_at, a.attachment_id AS attachment_id, \
         a.file_name AS file_name, a.content_type AS content_type, a.size_bytes AS size_bytes, a.sha256 AS sha256 \
         FROM consultation_messages m LEFT JOIN consultation_attachments a ON a.message_id = m.message_id \
         WHERE m.message_id IN (VALUES",
    columns: 1,
    tail: ") ORDER BY m.message_id, a.position",
};

/// The threads of `ids` (distinct), in no particular order; missing ones are left out.
pub async fn threads_by_id(pool: &AnyPool, ids: &[&str]) -> Result<Vec<Thread>, sqlx::Error> {
    rows_by_ids(pool, &THREADS_BY_ID, ids)
        .await?
        .iter()
        .map(thread_row)
        .collect()
}

/// The messages of `ids` (distinct) with their attachments' metadata, in no particular
/// order; missing ones are left out. One statement for the whole batch (a page of 500).
pub async fn messages_by_id(pool: &AnyPool, ids: &[&str]) -> Result<Vec<Message>, sqlx::Error> {
    let mut msgs: Vec<Message> = Vec::with_capacity(ids.len());
    for r in rows_by_ids(pool, &MESSAGES_BY_ID, ids).await? {
        let id: String = r.try_get("message_id")?;
        if msgs.last().is_none_or(|m| m.message_id != id) {
            msgs.push(message_row(&r)?);
        }
        if r.try_get::<Option<String>, _>("attachment_id")?.is_some() {
            let (_, meta) = attachment_meta(&r)?;
            msgs.last_mut()
                .expect("pushed above")
                .attachments
                .push(meta);
        }
    }
    Ok(msgs)
}

/// An attachment with its bytes, and its thread.
pub async fn attachment<'e, E>(
    exec: E,
    attachment_id: &str,
) -> Result<Option<(String, Attachment, Vec<u8>)>, sqlx::Error>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query(
        "SELECT attachment_id, message_id, file_name, content_type, size_bytes, sha256, thread_id, content \
         FROM consultation_attachments WHERE attachment_id = $1",
    )
    .bind(attachment_id)
    .fetch_optional(exec)
    .await?;
    match row {
        None => Ok(None),
        Some(r) => {
            let (_, meta) = attachment_meta(&r)?;
            Ok(Some((r.try_get("thread_id")?, meta, r.try_get("content")?)))
        }
    }
}

/// The practice's response SLA in working days (default 5).
pub async fn response_days(conn: &mut AnyConnection, org: &str) -> Result<u32, sqlx::Error> {
    let row = sqlx::query(
        "SELECT response_working_days FROM consultation_settings WHERE org_number = $1",
    )
    .bind(org)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(r) => u32::try_from(r.try_get::<i64, _>("response_working_days")?).unwrap_or(5),
        None => crate::DEFAULT_RESPONSE_WORKING_DAYS,
    })
}

/// Sets the practice's response SLA in working days.
pub async fn set_response_days(
    conn: &mut AnyConnection,
    org: &str,
    days: u32,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consultation_settings (org_number, response_working_days, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (org_number) DO UPDATE SET response_working_days = excluded.response_working_days, updated_at = excluded.updated_at",
    )
    .bind(org)
    .bind(i64::from(days))
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// How many open threads ([`State::OPEN`]) the patient has.
pub async fn open_threads(conn: &mut AnyConnection, nin: &str) -> Result<i64, sqlx::Error> {
    let [a, b, c] = State::OPEN;
    sqlx::query(
        "SELECT COUNT(*) AS n FROM consultation_threads WHERE patient_nin = $1 AND state IN ($2, $3, $4)",
    )
    .bind(nin)
    .bind(a.code())
    .bind(b.code())
    .bind(c.code())
    .fetch_one(conn)
    .await?
    .try_get("n")
}

/// Bytes of attachments the patient sent (`m.author = 1`, [`Author::Patient`]) after `since_ms`.
pub async fn attachment_bytes_since(
    conn: &mut AnyConnection,
    nin: &str,
    since_ms: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "SELECT CAST(COALESCE(SUM(a.size_bytes), 0) AS BIGINT) AS n FROM consultation_attachments a \
         JOIN consultation_messages m ON m.message_id = a.message_id \
         JOIN consultation_threads t ON t.thread_id = a.thread_id \
         WHERE t.patient_nin = $1 AND m.author = 1 AND m.sent_at > $2",
    )
    .bind(nin)
    .bind(since_ms)
    .fetch_one(conn)
    .await?
    .try_get("n")
}

/// The patient's threads, newest first: at most `limit` from `offset`.
pub async fn patient_threads<'e, E>(
    exec: E,
    nin: &str,
    only_started_by: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Thread>, sqlx::Error>
where
    E: Executor<'e, Database = Any>,
{
    sqlx::query(
        "SELECT thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number, \
         category, subject, state, submitted_at, due_at, first_response_at, assigned_hpr, last_seq, patient_read_seq, \
         practice_read_seq, outcome, tariff_code, closed_at, updated_at, started_by_nin, started_by_relation, \
         started_by_name, confidential \
         FROM consultation_threads WHERE patient_nin = $1 AND ($4 = '' OR (started_by_nin = $4 AND confidential = 0)) \
         ORDER BY submitted_at DESC, thread_id DESC LIMIT $2 OFFSET $3",
    )
    .bind(nin)
    .bind(limit)
    .bind(offset)
    .bind(only_started_by)
    .fetch_all(exec)
    .await?
    .iter()
    .map(thread_row)
    .collect()
}

/// The practice's inbox: its threads (of GP `gp_id`, "" for all), open ones only unless
/// `include_done`; overdue ones first (at `now_ms`), then by due time. At most `limit` from
/// `offset`.
pub async fn inbox<'e, E>(
    exec: E,
    org: &str,
    gp_id: &str,
    include_done: bool,
    now_ms: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<Thread>, sqlx::Error>
where
    E: Executor<'e, Database = Any>,
{
    let sql = if include_done {
        "SELECT thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number, \
         category, subject, state, submitted_at, due_at, first_response_at, assigned_hpr, last_seq, patient_read_seq, \
         practice_read_seq, outcome, tariff_code, closed_at, updated_at, started_by_nin, started_by_relation, \
         started_by_name, confidential \
         FROM consultation_threads WHERE org_number = $1 AND ($2 = '' OR gp_id = $2) AND state IN (1,2,3,4,5,6,7) \
         ORDER BY CASE WHEN first_response_at IS NULL AND due_at < $3 AND state IN (1,2,3) THEN 0 ELSE 1 END, due_at, thread_id \
         LIMIT $4 OFFSET $5"
    } else {
        "SELECT thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number, \
         category, subject, state, submitted_at, due_at, first_response_at, assigned_hpr, last_seq, patient_read_seq, \
         practice_read_seq, outcome, tariff_code, closed_at, updated_at, started_by_nin, started_by_relation, \
         started_by_name, confidential \
         FROM consultation_threads WHERE org_number = $1 AND ($2 = '' OR gp_id = $2) AND state IN (1,2,3) \
         ORDER BY CASE WHEN first_response_at IS NULL AND due_at < $3 AND state IN (1,2,3) THEN 0 ELSE 1 END, due_at, thread_id \
         LIMIT $4 OFFSET $5"
    };
    sqlx::query(sql)
        .bind(org)
        .bind(gp_id)
        .bind(now_ms)
        .bind(limit)
        .bind(offset)
        .fetch_all(exec)
        .await?
        .iter()
        .map(thread_row)
        .collect()
}

/// How many open threads of the practice (of GP `gp_id`, "" for all) are overdue at `now_ms`.
pub async fn overdue_count<'e, E>(
    exec: E,
    org: &str,
    gp_id: &str,
    now_ms: i64,
) -> Result<i64, sqlx::Error>
where
    E: Executor<'e, Database = Any>,
{
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM consultation_threads WHERE org_number = $1 AND ($2 = '' OR gp_id = $2) \
         AND state IN (1,2,3) AND first_response_at IS NULL AND due_at < $3",
    )
    .bind(org)
    .bind(gp_id)
    .bind(now_ms)
    .fetch_one(exec)
    .await
}

/// Per organisation with open threads: how many of them are overdue at `now_ms` (0 included).
pub async fn overdue_by_org<'e, E>(exec: E, now_ms: i64) -> Result<Vec<(String, i64)>, sqlx::Error>
where
    E: Executor<'e, Database = Any>,
{
    sqlx::query_as(
        "SELECT org_number, CAST(SUM(CASE WHEN first_response_at IS NULL AND due_at < $1 THEN 1 ELSE 0 END) AS BIGINT) \
         FROM consultation_threads WHERE state IN (1,2,3) GROUP BY org_number",
    )
    .bind(now_ms)
    .fetch_all(exec)
    .await
}
