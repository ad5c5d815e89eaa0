//! Rows of the consultation tables and the queries on them. Thread mutations run inside a write
//! transaction that first takes the thread's lock ([`econsult_runtime::db::Db::lock`]), so a
//! check of the state and the change that follows cannot interleave with another call.

use crate::content::CheckedAttachment;
use econsult_proto::consultation::v1 as pb;
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::{Db, Tx};
use econsult_runtime::grpc::timestamp;
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// States (numbers of `econsult.consultation.v1.ThreadState`).
pub mod state {
    pub const SUBMITTED: i64 = 1;
    pub const IN_REVIEW: i64 = 2;
    pub const AWAITING_PATIENT: i64 = 3;
    pub const ANSWERED: i64 = 4;
    pub const CLOSED: i64 = 5;
    pub const WITHDRAWN: i64 = 6;
    pub const CONVERTED: i64 = 7;

    /// States in which the thread still needs the practice or the patient.
    pub const OPEN: [i64; 3] = [SUBMITTED, IN_REVIEW, AWAITING_PATIENT];

    /// Lower-case name for messages.
    pub fn name(s: i64) -> &'static str {
        match s {
            SUBMITTED => "submitted",
            IN_REVIEW => "in_review",
            AWAITING_PATIENT => "awaiting_patient",
            ANSWERED => "answered",
            CLOSED => "closed",
            WITHDRAWN => "withdrawn",
            CONVERTED => "converted_to_booking",
            _ => "unknown",
        }
    }

    /// Whether `from -> to` is a transition of the state machine (see the proto).
    pub fn allowed(from: i64, to: i64) -> bool {
        matches!(
            (from, to),
            (
                SUBMITTED,
                IN_REVIEW | AWAITING_PATIENT | ANSWERED | CONVERTED | WITHDRAWN
            ) | (
                IN_REVIEW,
                IN_REVIEW | AWAITING_PATIENT | ANSWERED | CONVERTED | WITHDRAWN
            ) | (
                AWAITING_PATIENT,
                IN_REVIEW | AWAITING_PATIENT | ANSWERED | CONVERTED | WITHDRAWN | CLOSED
            ) | (ANSWERED, CLOSED)
                | (CONVERTED, CLOSED)
        )
    }
}

/// A thread row.
#[derive(Debug, Clone)]
pub struct ThreadRow {
    pub thread_id: String,
    pub patient_nin: String,
    pub gp_id: String,
    pub gp_display_name: String,
    pub org_number: String,
    pub municipality_number: String,
    pub category: i64,
    pub subject: String,
    pub state: i64,
    pub submitted_at: i64,
    pub due_at: i64,
    pub first_response_at: Option<i64>,
    pub assigned_hpr: String,
    pub last_seq: i64,
    pub patient_read_seq: i64,
    pub practice_read_seq: i64,
    pub outcome: String,
    pub tariff_code: String,
    pub closed_at: Option<i64>,
    pub updated_at: i64,
}

pub const THREAD_COLS: &str = "thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number, \
     category, subject, state, submitted_at, due_at, first_response_at, assigned_hpr, last_seq, patient_read_seq, \
     practice_read_seq, outcome, tariff_code, closed_at, updated_at";

impl ThreadRow {
    pub fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            thread_id: r.try_get("thread_id")?,
            patient_nin: r.try_get("patient_nin")?,
            gp_id: r.try_get("gp_id")?,
            gp_display_name: r.try_get("gp_display_name")?,
            org_number: r.try_get("org_number")?,
            municipality_number: r.try_get("municipality_number")?,
            category: r.try_get("category")?,
            subject: r.try_get("subject")?,
            state: r.try_get("state")?,
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
        })
    }

    /// No practice response yet and the due time has passed, while still open.
    pub fn overdue(&self, now_ms: i64) -> bool {
        self.first_response_at.is_none()
            && self.due_at < now_ms
            && state::OPEN.contains(&self.state)
    }

    /// The protobuf view; the identity number only for the practice.
    pub fn to_pb(&self, now_ms: i64, for_practice: bool) -> pb::Thread {
        pb::Thread {
            thread_id: self.thread_id.clone(),
            patient_nin: if for_practice {
                self.patient_nin.clone()
            } else {
                String::new()
            },
            gp_id: self.gp_id.clone(),
            gp_display_name: self.gp_display_name.clone(),
            org_number: self.org_number.clone(),
            category: self.category as i32,
            subject: self.subject.clone(),
            state: self.state as i32,
            submitted_at: Some(timestamp(from_ms(self.submitted_at))),
            due_at: Some(timestamp(from_ms(self.due_at))),
            first_response_at: self.first_response_at.map(|t| timestamp(from_ms(t))),
            overdue: self.overdue(now_ms),
            assigned_hpr_number: self.assigned_hpr.clone(),
            message_count: self.last_seq,
            patient_read_seq: self.patient_read_seq,
            practice_read_seq: self.practice_read_seq,
            outcome: self.outcome.clone(),
            tariff_code: self.tariff_code.clone(),
            closed_at: self.closed_at.map(|t| timestamp(from_ms(t))),
            updated_at: Some(timestamp(from_ms(self.updated_at))),
        }
    }
}

/// A thread by id, read with `exec` (the read pool, or a call's transaction).
pub async fn thread<'e, E>(exec: E, thread_id: &str) -> Result<Option<ThreadRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(&format!(
        "SELECT {THREAD_COLS} FROM consultation_threads WHERE thread_id = $1"
    ))
    .bind(thread_id)
    .fetch_optional(exec)
    .await?
    .as_ref()
    .map(ThreadRow::from_row)
    .transpose()
}

/// Inserts a new thread.
pub async fn insert_thread(tx: &mut Tx, t: &ThreadRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO consultation_threads ({THREAD_COLS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
    ))
    .bind(&t.thread_id)
    .bind(&t.patient_nin)
    .bind(&t.gp_id)
    .bind(&t.gp_display_name)
    .bind(&t.org_number)
    .bind(&t.municipality_number)
    .bind(t.category)
    .bind(&t.subject)
    .bind(t.state)
    .bind(t.submitted_at)
    .bind(t.due_at)
    .bind(t.first_response_at)
    .bind(&t.assigned_hpr)
    .bind(t.last_seq)
    .bind(t.patient_read_seq)
    .bind(t.practice_read_seq)
    .bind(&t.outcome)
    .bind(&t.tariff_code)
    .bind(t.closed_at)
    .bind(t.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the mutable fields of a thread back.
pub async fn update_thread(tx: &mut Tx, t: &ThreadRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE consultation_threads SET state = $2, first_response_at = $3, assigned_hpr = $4, \
         patient_read_seq = $5, practice_read_seq = $6, outcome = $7, tariff_code = $8, closed_at = $9, updated_at = $10 \
         WHERE thread_id = $1",
    )
    .bind(&t.thread_id)
    .bind(t.state)
    .bind(t.first_response_at)
    .bind(&t.assigned_hpr)
    .bind(t.patient_read_seq)
    .bind(t.practice_read_seq)
    .bind(&t.outcome)
    .bind(&t.tariff_code)
    .bind(t.closed_at)
    .bind(t.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A message row with its attachments' metadata.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub message_id: String,
    pub thread_id: String,
    pub seq: i64,
    pub author: i64,
    pub author_hpr: String,
    pub body: String,
    pub sent_at: i64,
    pub attachments: Vec<pb::Attachment>,
}

impl MessageRow {
    pub fn to_pb(&self) -> pb::Message {
        pb::Message {
            message_id: self.message_id.clone(),
            thread_id: self.thread_id.clone(),
            seq: self.seq,
            author: self.author as i32,
            author_hpr_number: self.author_hpr.clone(),
            body: self.body.clone(),
            attachments: self.attachments.clone(),
            sent_at: Some(timestamp(from_ms(self.sent_at))),
        }
    }
}

/// Appends a message: takes the thread's next seq (the thread lock is held by the caller's
/// transaction, and `(thread_id, seq)` is unique besides) and stores the attachments.
pub async fn append_message(
    tx: &mut Tx,
    thread_id: &str,
    author: i64,
    author_hpr: &str,
    body: &str,
    attachments: &[CheckedAttachment],
    now_ms: i64,
) -> Result<MessageRow, sqlx::Error> {
    let seq: i64 = sqlx::query(
        "UPDATE consultation_threads SET last_seq = last_seq + 1, updated_at = $2 WHERE thread_id = $1 RETURNING last_seq",
    )
    .bind(thread_id)
    .bind(now_ms)
    .fetch_one(&mut **tx)
    .await?
    .try_get("last_seq")?;
    let message_id = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO consultation_messages (message_id, thread_id, seq, author, author_hpr, body, sent_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&message_id)
    .bind(thread_id)
    .bind(seq)
    .bind(author)
    .bind(author_hpr)
    .bind(body)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    let mut metas = Vec::with_capacity(attachments.len());
    for (i, a) in attachments.iter().enumerate() {
        let attachment_id = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO consultation_attachments (attachment_id, message_id, thread_id, position, file_name, content_type, size_bytes, sha256, content) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&attachment_id)
        .bind(&message_id)
        .bind(thread_id)
        .bind(i as i64)
        .bind(&a.file_name)
        .bind(a.content_type)
        .bind(a.content.len() as i64)
        .bind(&a.sha256)
        .bind(a.content.clone())
        .execute(&mut **tx)
        .await?;
        metas.push(pb::Attachment {
            attachment_id,
            file_name: a.file_name.clone(),
            content_type: a.content_type.into(),
            size_bytes: a.content.len() as i64,
            sha256: a.sha256.clone(),
        });
    }
    Ok(MessageRow {
        message_id,
        thread_id: thread_id.into(),
        seq,
        author,
        author_hpr: author_hpr.into(),
        body: body.into(),
        sent_at: now_ms,
        attachments: metas,
    })
}

const ATTACHMENT_META: &str =
    "attachment_id, message_id, file_name, content_type, size_bytes, sha256";

fn attachment_meta(r: &AnyRow) -> Result<(String, pb::Attachment), sqlx::Error> {
    Ok((
        r.try_get("message_id")?,
        pb::Attachment {
            attachment_id: r.try_get("attachment_id")?,
            file_name: r.try_get("file_name")?,
            content_type: r.try_get("content_type")?,
            size_bytes: r.try_get("size_bytes")?,
            sha256: r.try_get("sha256")?,
        },
    ))
}

fn message_row(r: &AnyRow) -> Result<MessageRow, sqlx::Error> {
    Ok(MessageRow {
        message_id: r.try_get("message_id")?,
        thread_id: r.try_get("thread_id")?,
        seq: r.try_get("seq")?,
        author: r.try_get("author")?,
        author_hpr: r.try_get("author_hpr")?,
        body: r.try_get("body")?,
        sent_at: r.try_get("sent_at")?,
        attachments: Vec::new(),
    })
}

async fn with_attachments(
    db: &Db,
    mut msgs: Vec<MessageRow>,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    if msgs.is_empty() {
        return Ok(msgs);
    }
    let (lo, hi) = (msgs[0].seq, msgs[msgs.len() - 1].seq);
    let rows = sqlx::query(&format!(
        "SELECT a.{} FROM consultation_attachments a JOIN consultation_messages m ON m.message_id = a.message_id \
         WHERE m.thread_id = $1 AND m.seq BETWEEN $2 AND $3 ORDER BY a.position",
        ATTACHMENT_META.replace(", ", ", a.")
    ))
    .bind(&msgs[0].thread_id)
    .bind(lo)
    .bind(hi)
    .fetch_all(db.read())
    .await?;
    for r in &rows {
        let (mid, meta) = attachment_meta(r)?;
        if let Some(m) = msgs.iter_mut().find(|m| m.message_id == mid) {
            m.attachments.push(meta);
        }
    }
    Ok(msgs)
}

/// Messages of a thread with seq in `(after_seq, ..]`, at most `limit`.
pub async fn messages(
    db: &Db,
    thread_id: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT message_id, thread_id, seq, author, author_hpr, body, sent_at FROM consultation_messages \
         WHERE thread_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(thread_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(db.read())
    .await?;
    let msgs = rows
        .iter()
        .map(message_row)
        .collect::<Result<Vec<_>, _>>()?;
    with_attachments(db, msgs).await
}

/// One message by id.
pub async fn message(db: &Db, message_id: &str) -> Result<Option<MessageRow>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT message_id, thread_id, seq, author, author_hpr, body, sent_at FROM consultation_messages WHERE message_id = $1",
    )
    .bind(message_id)
    .fetch_optional(db.read())
    .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(with_attachments(db, vec![message_row(&r)?]).await?.pop()),
    }
}

/// An attachment with its bytes, and its thread.
pub async fn attachment(
    db: &Db,
    attachment_id: &str,
) -> Result<Option<(String, pb::Attachment, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {ATTACHMENT_META}, thread_id, content FROM consultation_attachments WHERE attachment_id = $1"
    ))
    .bind(attachment_id)
    .fetch_optional(db.read())
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
pub async fn response_days(tx: &mut Tx, org: &str) -> Result<u32, sqlx::Error> {
    let row = sqlx::query(
        "SELECT response_working_days FROM consultation_settings WHERE org_number = $1",
    )
    .bind(org)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some(r) => u32::try_from(r.try_get::<i64, _>("response_working_days")?).unwrap_or(5),
        None => crate::DEFAULT_RESPONSE_WORKING_DAYS,
    })
}
