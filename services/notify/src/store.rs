//! Every SQL statement of the notify service, each a complete literal (PostgreSQL and SQLite
//! variants side by side where they differ).

use econsult_runtime::db::{Backend, Db, MultiRow, Tx, Value, bind_values, rows_by_ids};
use sqlx::{AnyConnection, AnyPool, Row as _};
use std::collections::HashMap;

/// Preferences as stored (contact details sealed).
#[derive(Debug, Clone, Default)]
pub struct StoredPreferences {
    /// Sealed e-mail address.
    pub email_sealed: Option<String>,
    /// Sealed phone number.
    pub phone_sealed: Option<String>,
    /// Channel bits; 0 with `explicit == false` means "every channel with an address".
    pub channels: i64,
    /// Comma-separated lead times in minutes.
    pub reminder_minutes: String,
    /// Language name.
    pub language: String,
    /// Opted out.
    pub opted_out: bool,
}

fn stored_from_row(r: &sqlx::any::AnyRow) -> Result<StoredPreferences, sqlx::Error> {
    Ok(StoredPreferences {
        email_sealed: r.try_get("email_sealed")?,
        phone_sealed: r.try_get("phone_sealed")?,
        channels: r.try_get("channels")?,
        reminder_minutes: r.try_get("reminder_minutes")?,
        language: r.try_get("language")?,
        opted_out: r.try_get::<i64, _>("opted_out")? != 0,
    })
}

/// A patient's stored preferences.
pub async fn preferences(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Option<StoredPreferences>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT email_sealed, phone_sealed, channels, reminder_minutes, language, opted_out \
         FROM notify_preferences WHERE patient_nin = $1",
    )
    .bind(nin)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(stored_from_row).transpose()
}

/// The stored preferences of each of `nins` that has any, by identity number, in one read.
pub async fn preferences_of(
    pool: &AnyPool,
    nins: &[&str],
) -> Result<HashMap<String, StoredPreferences>, sqlx::Error> {
    const PREFERENCES_OF: MultiRow = MultiRow {
        head: "SELECT patient_nin, email_sealed, phone_sealed, channels, reminder_minutes, language, opted_out \
               FROM notify_preferences WHERE patient_nin IN (VALUES",
        columns: 1,
        tail: ")",
    };
    rows_by_ids(pool, &PREFERENCES_OF, nins)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("patient_nin")?, stored_from_row(r)?)))
        .collect()
}

/// Replaces a patient's preferences.
pub async fn put_preferences(
    tx: &mut Tx,
    nin: &str,
    p: &StoredPreferences,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notify_preferences (patient_nin, email_sealed, phone_sealed, channels, reminder_minutes, language, opted_out, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (patient_nin) DO UPDATE SET email_sealed = excluded.email_sealed, phone_sealed = excluded.phone_sealed, \
         channels = excluded.channels, reminder_minutes = excluded.reminder_minutes, language = excluded.language, \
         opted_out = excluded.opted_out, updated_at = excluded.updated_at",
    )
    .bind(nin)
    .bind(p.email_sealed.clone())
    .bind(p.phone_sealed.clone())
    .bind(p.channels)
    .bind(&p.reminder_minutes)
    .bind(&p.language)
    .bind(i64::from(p.opted_out))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Preferences a person who acts for `subject_nin` set for messages about them.
#[derive(Debug, Clone)]
pub struct ProxyPreferences {
    /// Who gets the messages (a parent, a fullmakt holder).
    pub recipient_nin: String,
    /// How they were related when they set these ([`econsult_runtime::auth::Relation::code`]).
    pub relation: i64,
    /// Their preferences (contact details sealed for `recipient_nin`).
    pub stored: StoredPreferences,
}

fn proxy_from_row(r: &sqlx::any::AnyRow) -> Result<ProxyPreferences, sqlx::Error> {
    Ok(ProxyPreferences {
        recipient_nin: r.try_get("recipient_nin")?,
        relation: r.try_get("relation")?,
        stored: stored_from_row(r)?,
    })
}

/// The preferences `recipient` set for messages about `subject`.
pub async fn proxy_preferences(
    conn: &mut AnyConnection,
    subject: &str,
    recipient: &str,
) -> Result<Option<ProxyPreferences>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT recipient_nin, relation, email_sealed, phone_sealed, channels, reminder_minutes, language, opted_out \
         FROM notify_proxy_preferences WHERE subject_nin = $1 AND recipient_nin = $2",
    )
    .bind(subject)
    .bind(recipient)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(proxy_from_row).transpose()
}

/// Everyone who hears about `subject`, in one read: `subject`'s own preferences, if stored,
/// and those of everyone who set preferences for messages about them, by recipient.
pub async fn recipients_of(
    conn: &mut AnyConnection,
    subject: &str,
) -> Result<(Option<StoredPreferences>, Vec<ProxyPreferences>), sqlx::Error> {
    // The subject's own row is the one with recipient '' (a proxy's recipient never is), and
    // sorts first.
    let rows = sqlx::query(
        "SELECT '' AS recipient_nin, 0 AS relation, email_sealed, phone_sealed, channels, reminder_minutes, language, opted_out \
         FROM notify_preferences WHERE patient_nin = $1 \
         UNION ALL SELECT recipient_nin, relation, email_sealed, phone_sealed, channels, reminder_minutes, language, opted_out \
         FROM notify_proxy_preferences WHERE subject_nin = $1 ORDER BY recipient_nin",
    )
    .bind(subject)
    .fetch_all(conn)
    .await?;
    let mut own = None;
    let mut proxies = Vec::with_capacity(rows.len());
    for r in &rows {
        let p = proxy_from_row(r)?;
        if p.recipient_nin.is_empty() {
            own = Some(p.stored);
        } else {
            proxies.push(p);
        }
    }
    Ok((own, proxies))
}

/// Replaces the preferences `recipient` (related as `relation`) set for messages about
/// `subject`.
pub async fn put_proxy_preferences(
    tx: &mut Tx,
    subject: &str,
    recipient: &str,
    relation: i64,
    p: &StoredPreferences,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notify_proxy_preferences (subject_nin, recipient_nin, relation, email_sealed, phone_sealed, channels, reminder_minutes, language, opted_out, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (subject_nin, recipient_nin) DO UPDATE SET relation = excluded.relation, email_sealed = excluded.email_sealed, \
         phone_sealed = excluded.phone_sealed, channels = excluded.channels, reminder_minutes = excluded.reminder_minutes, \
         language = excluded.language, opted_out = excluded.opted_out, updated_at = excluded.updated_at",
    )
    .bind(subject)
    .bind(recipient)
    .bind(relation)
    .bind(p.email_sealed.clone())
    .bind(p.phone_sealed.clone())
    .bind(p.channels)
    .bind(&p.reminder_minutes)
    .bind(&p.language)
    .bind(i64::from(p.opted_out))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A message to queue.
pub struct NewMessage<'a> {
    /// Id.
    pub message_id: &'a str,
    /// Exactly-once key.
    pub dedupe_key: &'a str,
    /// Recipient.
    pub nin: &'a str,
    /// The person it is about when the recipient acts for them ("" when the recipient is).
    pub subject_nin: &'a str,
    /// Kind name.
    pub kind: &'a str,
    /// Channel name.
    pub channel: &'a str,
    /// Facts JSON.
    pub facts: &'a str,
    /// The appointment it is about ("" for none).
    pub appointment_id: &'a str,
    /// Same-day change.
    pub urgent: bool,
    /// Not before.
    pub not_before: i64,
    /// Now.
    pub now: i64,
}

/// Messages to queue together ([`enqueue`]).
#[derive(Default)]
pub struct Queue {
    values: Vec<Value>,
    rows: usize,
}

impl Queue {
    /// Adds `m`.
    pub fn push(&mut self, m: &NewMessage<'_>) {
        self.values.extend([
            Value::from(m.message_id),
            m.dedupe_key.into(),
            m.nin.into(),
            m.kind.into(),
            m.channel.into(),
            m.facts.into(),
            m.appointment_id.into(),
            i64::from(m.urgent).into(),
            m.not_before.into(),
            m.now.into(),
            m.subject_nin.into(),
            // Queued, no attempt yet, no lease, no error.
            0i64.into(),
            0i64.into(),
            0i64.into(),
            "".into(),
        ]);
        self.rows += 1;
    }
}

/// Queues the messages of `q` whose key no message has yet, in one statement. Returns how many
/// were queued.
pub async fn enqueue(tx: &mut Tx, q: Queue) -> Result<u64, sqlx::Error> {
    const ENQUEUE: MultiRow = MultiRow {
        head: "INSERT INTO notify_messages (message_id, dedupe_key, patient_nin, kind, channel, facts, appointment_id, urgent, \
               not_before, created_at, subject_nin, status, attempts, lease_until, last_error) VALUES",
        columns: 15,
        tail: "ON CONFLICT (dedupe_key) DO NOTHING",
    };
    if q.rows == 0 {
        return Ok(0);
    }
    let sql = ENQUEUE.sql(q.rows);
    let r = bind_values(sqlx::query(&sql), q.values)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}

/// Records that an appointment was cancelled or moved, and cancels its queued scheduled
/// messages (reminders, video opening). Returns how many were cancelled.
pub async fn cancel_appointment(
    tx: &mut Tx,
    appointment_id: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO notify_cancelled_appointments (appointment_id, cancelled_at) VALUES ($1, $2) \
         ON CONFLICT (appointment_id) DO NOTHING",
    )
    .bind(appointment_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let r = sqlx::query(
        "UPDATE notify_messages SET status = 4, done_at = $2, last_error = 'appointment cancelled or moved' \
         WHERE appointment_id = $1 AND status = 0 AND kind IN ('reminder', 'video_opening')",
    )
    .bind(appointment_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// A message a sender took.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Id.
    pub message_id: String,
    /// Recipient.
    pub nin: String,
    /// The person it is about when the recipient acts for them ("" when the recipient is).
    pub subject_nin: String,
    /// Kind name.
    pub kind: String,
    /// Channel name.
    pub channel: String,
    /// Facts JSON.
    pub facts: String,
    /// Same-day change.
    pub urgent: bool,
    /// Attempts before this one.
    pub attempts: i64,
    /// When it was due.
    pub not_before: i64,
}

/// Whether any queued message is due at `now` (a read, so that an idle sender writes nothing).
pub async fn any_due(conn: &mut AnyConnection, now: i64) -> Result<bool, sqlx::Error> {
    let n: Option<String> = sqlx::query_scalar(
        "SELECT message_id FROM notify_messages WHERE status = 0 AND not_before <= $1 AND lease_until <= $1 LIMIT 1",
    )
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(n.is_some())
}

/// Takes up to `limit` due queued messages until `lease_until` (another sender takes them
/// after that, e.g. when this process died). Scheduled messages of a cancelled appointment are
/// never taken.
pub async fn claim_due(
    db: &Db,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let sql = match db.backend() {
        Backend::Postgres => {
            "UPDATE notify_messages SET lease_until = $2 WHERE message_id IN ( \
             SELECT m.message_id FROM notify_messages m WHERE m.status = 0 AND m.not_before <= $1 AND m.lease_until <= $1 \
             AND NOT (m.kind IN ('reminder', 'video_opening') AND EXISTS (SELECT 1 FROM notify_cancelled_appointments c WHERE c.appointment_id = m.appointment_id)) \
             ORDER BY m.not_before LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING message_id, patient_nin, subject_nin, kind, channel, facts, urgent, attempts, not_before"
        }
        Backend::Sqlite => {
            "UPDATE notify_messages SET lease_until = $2 WHERE message_id IN ( \
             SELECT m.message_id FROM notify_messages m WHERE m.status = 0 AND m.not_before <= $1 AND m.lease_until <= $1 \
             AND NOT (m.kind IN ('reminder', 'video_opening') AND EXISTS (SELECT 1 FROM notify_cancelled_appointments c WHERE c.appointment_id = m.appointment_id)) \
             ORDER BY m.not_before LIMIT $3) \
             RETURNING message_id, patient_nin, subject_nin, kind, channel, facts, urgent, attempts, not_before"
        }
    };
    let mut tx = db.begin().await?;
    let rows = sqlx::query(sql)
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut claimed = rows
        .iter()
        .map(|r| {
            Ok(Claimed {
                message_id: r.try_get("message_id")?,
                nin: r.try_get("patient_nin")?,
                subject_nin: r.try_get("subject_nin")?,
                kind: r.try_get("kind")?,
                channel: r.try_get("channel")?,
                facts: r.try_get("facts")?,
                urgent: r.try_get::<i64, _>("urgent")? != 0,
                attempts: r.try_get("attempts")?,
                not_before: r.try_get("not_before")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    // RETURNING keeps no order: hand over by due time, and what fell due together in the
    // order it was queued (ids are UUIDv7), so that a pass never sends a later message of a
    // patient before an earlier one.
    claimed.sort_by(|a, b| (a.not_before, &a.message_id).cmp(&(b.not_before, &b.message_id)));
    Ok(claimed)
}

/// Ends a queued message as sent, failed, given up or cancelled (`status` code), counting the
/// attempt when `attempted`. Returns whether it was still queued.
pub async fn finish(
    db: &Db,
    message_id: &str,
    status: i64,
    attempted: bool,
    error: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let r = sqlx::query(
        "UPDATE notify_messages SET status = $2, attempts = attempts + $3, last_error = $4, done_at = $5, lease_until = 0 \
         WHERE message_id = $1 AND status = 0",
    )
    .bind(message_id)
    .bind(status)
    .bind(i64::from(attempted))
    .bind(error)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

/// Ends the queued messages of `sent` (message id, when it was handed over) as sent, in one
/// statement; returns how many were still queued.
pub async fn finish_sent(db: &Db, sent: &[(String, i64)]) -> Result<u64, sqlx::Error> {
    const FINISH_SENT: MultiRow = MultiRow {
        head: "UPDATE notify_messages SET status = 1, attempts = attempts + 1, last_error = '', done_at = v.column2, \
               lease_until = 0 FROM (VALUES",
        columns: 2,
        tail: ") AS v WHERE notify_messages.message_id = v.column1 AND notify_messages.status = 0",
    };
    if sent.is_empty() {
        return Ok(0);
    }
    let sql = FINISH_SENT.sql(sent.len());
    let values = sent
        .iter()
        .flat_map(|(id, at)| [Value::from(id.as_str()), Value::from(*at)])
        .collect();
    let mut tx = db.begin().await?;
    let r = bind_values(sqlx::query(&sql), values)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(r.rows_affected())
}

/// Puts a queued message back for `not_before` (a retry after a failed attempt when
/// `attempted`, or an SMS held for the end of the quiet hours).
pub async fn requeue(
    db: &Db,
    message_id: &str,
    not_before: i64,
    attempted: bool,
    error: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE notify_messages SET not_before = $2, attempts = attempts + $3, last_error = $4, lease_until = 0 \
         WHERE message_id = $1 AND status = 0",
    )
    .bind(message_id)
    .bind(not_before)
    .bind(i64::from(attempted))
    .bind(error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A message that ended failed or given up.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Id.
    pub message_id: String,
    /// Kind name.
    pub kind: String,
    /// Channel name.
    pub channel: String,
    /// Status code (2 or 3).
    pub status: i64,
    /// Attempts made.
    pub attempts: i64,
    /// Last error.
    pub reason: String,
    /// When it ended.
    pub done_at: i64,
}

/// The newest failed or given-up messages.
pub async fn dead_letters(
    conn: &mut AnyConnection,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT message_id, kind, channel, status, attempts, last_error, done_at FROM notify_messages \
         WHERE status IN (2, 3) ORDER BY done_at DESC, message_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                message_id: r.try_get("message_id")?,
                kind: r.try_get("kind")?,
                channel: r.try_get("channel")?,
                status: r.try_get("status")?,
                attempts: r.try_get("attempts")?,
                reason: r.try_get("last_error")?,
                done_at: r.try_get::<Option<i64>, _>("done_at")?.unwrap_or_default(),
            })
        })
        .collect()
}
