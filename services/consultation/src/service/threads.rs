//! Reading a thread (for its patient or its practice), its attachments, read receipts, and the
//! changes the change streams send.

use super::{Consultations, TOPIC_MESSAGE, TOPIC_READ, Viewer, authorize, required_id, rpc};
use crate::domain::{Attachment, ChangeKind, Message, Thread};
use crate::error::ConsultationError;
use crate::feed::FeedBatch;
use crate::service::practice::page;
use crate::store;
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::Caller;
use econsult_runtime::bus::Event;
use econsult_runtime::events::topics;
use econsult_runtime::outbox::{self, EventFilter};
use std::collections::HashMap;

/// A page of a thread's messages.
#[derive(Debug, Clone)]
pub struct ThreadPage {
    /// The thread.
    pub thread: Thread,
    /// Its messages after the seq asked for.
    pub messages: Vec<Message>,
    /// Whether more follow.
    pub has_more: bool,
}

/// One change of a thread, for a change stream.
#[derive(Debug, Clone)]
pub struct Change {
    /// The event's seq: the stream's cursor after it.
    pub cursor: u64,
    /// What changed.
    pub kind: ChangeKind,
    /// The thread as it is now.
    pub thread: Thread,
    /// The new message, for [`ChangeKind::Message`].
    pub message: Option<Message>,
}

impl Consultations {
    /// Thread `thread_id` with its messages after `after_seq` (at most `page_size`, default
    /// 50, at most 200), if `viewer` may see it; a practice's read is logged first.
    pub async fn thread_page(
        &self,
        caller: &Caller,
        viewer: &Viewer,
        thread_id: &str,
        after_seq: i64,
        page_size: i32,
    ) -> Result<ThreadPage, ConsultationError> {
        required_id(thread_id, "thread_id")?;
        if after_seq < 0 {
            return Err(ConsultationError::Invalid(
                "after_seq must not be negative".into(),
            ));
        }
        let limit = page(page_size, 50, 200, "page_size")?;
        let t = store::thread(self.p.db.read(), thread_id).await?;
        let t = authorize(viewer, t, thread_id)?;
        if viewer.is_practice() || caller.proxy.acting.is_some() {
            // Logged before the data leaves: a read that cannot be logged fails (a practice's,
            // or one by someone acting for the patient).
            audit::record_reads(
                &self.p.db,
                caller,
                &[super::thread_access(caller, rpc::GET, &t)],
                self.now(),
            )
            .await?;
        }
        let mut messages =
            store::messages(self.p.db.read(), &t.thread_id, after_seq, limit + 1).await?;
        let has_more = messages.len() as i64 > limit;
        messages.truncate(limit as usize);
        Ok(ThreadPage {
            thread: t,
            messages,
            has_more,
        })
    }

    /// Attachment `attachment_id` with its bytes, if `viewer` may see its thread; a
    /// practice's read is logged first.
    pub async fn attachment(
        &self,
        caller: &Caller,
        viewer: &Viewer,
        attachment_id: &str,
    ) -> Result<(Attachment, Vec<u8>), ConsultationError> {
        let id = attachment_id;
        required_id(id, "attachment_id")?;
        let (thread_id, meta, content) = store::attachment(self.p.db.read(), id)
            .await?
            .ok_or_else(|| ConsultationError::NotFound(format!("attachment {id} not found")))?;
        let t = store::thread(self.p.db.read(), &thread_id).await?;
        let t = authorize(viewer, t, &thread_id)?;
        if viewer.is_practice() || caller.proxy.acting.is_some() {
            audit::record_reads(
                &self.p.db,
                caller,
                &[Access {
                    resource: format!("consultation-attachment:{id}"),
                    ..super::thread_access(caller, rpc::ATTACHMENT, &t)
                }],
                self.now(),
            )
            .await?;
        }
        Ok((meta, content))
    }

    /// Moves `viewer`'s read receipt of thread `thread_id` up to `up_to_seq` (never back);
    /// returns the thread.
    pub async fn mark_read(
        &self,
        caller: &Caller,
        viewer: &Viewer,
        thread_id: &str,
        up_to_seq: i64,
    ) -> Result<Thread, ConsultationError> {
        required_id(thread_id, "thread_id")?;
        let mut tx = self.p.db.begin().await?;
        let mut t = self.locked(&mut tx, viewer, thread_id).await?;
        if up_to_seq < 1 || up_to_seq > t.last_seq {
            return Err(ConsultationError::Invalid(format!(
                "up_to_seq must be between 1 and {} (the thread's last message)",
                t.last_seq
            )));
        }
        let practice = viewer.is_practice();
        let receipt = if practice {
            &mut t.practice_read_seq
        } else {
            &mut t.patient_read_seq
        };
        if up_to_seq > *receipt {
            *receipt = up_to_seq;
            t.updated_at = self.now();
            store::update_thread(&mut tx, &t);
            let body = serde_json::json!({
                "thread_id": t.thread_id,
                "by": if practice { "practice" } else { "patient" },
                "up_to_seq": up_to_seq,
            });
            self.event(&mut tx, TOPIC_READ, &t, &body)?;
            self.audit(&mut tx, caller, rpc::READ, &t)?;
            tx.commit().await?;
        }
        Ok(t)
    }

    /// Thread `thread_id` as it is now (a replay of a record stored before answers were).
    pub async fn stored_thread(&self, thread_id: &str) -> Result<Thread, ConsultationError> {
        store::thread(self.p.db.read(), thread_id)
            .await?
            .ok_or_else(|| ConsultationError::NotFound(format!("thread {thread_id} not found")))
    }

    /// Message `message_id`, which a stored record names.
    pub async fn stored_message(&self, message_id: &str) -> Result<Message, ConsultationError> {
        store::message(self.p.db.read(), message_id)
            .await?
            .ok_or_else(|| {
                ConsultationError::internal(
                    "message",
                    format!("stored message {message_id} missing"),
                )
            })
    }

    /// Sequenced events after `cursor` that pass `filter` (at most 200), for a change stream
    /// catching up.
    pub async fn events_after(
        &self,
        cursor: u64,
        filter: EventFilter<'_>,
    ) -> Result<Vec<Event>, ConsultationError> {
        Ok(outbox::read_after(&self.p.db, cursor, u64::MAX, filter, 200).await?)
    }

    /// The changes `events` stand for, in their order, with each thread as it is now: one read
    /// of the threads and one of the messages with their attachments for the whole batch (a
    /// read per event kept a busy practice's WatchInbox seconds behind).
    pub async fn changes(&self, events: &[&Event]) -> Result<Vec<Change>, ConsultationError> {
        let resolved = self.resolve(events).await?;
        changes_from(events, &resolved)
    }

    /// [`Consultations::changes`] of `events`, some of the feed's `batch`: the threads and
    /// messages of the whole batch are read once, by the first stream of the process that
    /// sends any of them, and every other stream's changes of the batch come from that read
    /// (each event went to the patient's Subscribe and the practice's WatchInbox, each reading
    /// for itself).
    pub async fn changes_in(
        &self,
        batch: &FeedBatch,
        events: &[&Event],
    ) -> Result<Vec<Change>, ConsultationError> {
        let resolved = batch
            .resolved
            .get_or_try_init(async || {
                let all: Vec<&Event> = batch.events.iter().map(|f| &f.event).collect();
                self.resolve(&all).await
            })
            .await?;
        changes_from(events, resolved)
    }

    /// `events` parsed (each once), and the threads and messages they name, in two reads. An
    /// event that does not parse is left out: it fails only the changes that include it
    /// ([`changes_from`]), not every stream sharing the batch.
    async fn resolve(&self, events: &[&Event]) -> Result<Resolved, ConsultationError> {
        let parsed: HashMap<u64, Parsed> = events
            .iter()
            .filter_map(|e| parse(e).ok().map(|p| (e.seq, p)))
            .collect();
        let mut thread_ids: Vec<&str> = parsed.values().map(|p| p.1.as_str()).collect();
        let mut message_ids: Vec<&str> = parsed.values().filter_map(|p| p.2.as_deref()).collect();
        thread_ids.sort_unstable();
        thread_ids.dedup();
        message_ids.sort_unstable();
        message_ids.dedup();
        let threads = store::threads_by_id(self.p.db.read(), &thread_ids)
            .await?
            .into_iter()
            .map(|t| (t.thread_id.clone(), t))
            .collect();
        let messages = store::messages_by_id(self.p.db.read(), &message_ids)
            .await?
            .into_iter()
            .map(|m| (m.message_id.clone(), m))
            .collect();
        Ok(Resolved {
            parsed,
            threads,
            messages,
        })
    }

    /// Logs a practice's reads of `threads` through WatchInbox.
    pub async fn log_watched(
        &self,
        caller: &Caller,
        threads: &[&Thread],
    ) -> Result<(), ConsultationError> {
        let rows: Vec<Access<'_>> = threads
            .iter()
            .map(|t| super::thread_access(caller, rpc::WATCH, t))
            .collect();
        audit::record_reads(&self.p.db, caller, &rows, self.now()).await?;
        Ok(())
    }
}

/// What an event stands for: its kind, its thread, and its message (a new message's).
type Parsed = (ChangeKind, String, Option<String>);

/// A batch of events parsed (by seq), and the threads and messages they name (by id).
#[derive(Debug, Default)]
pub struct Resolved {
    parsed: HashMap<u64, Parsed>,
    threads: HashMap<String, Thread>,
    messages: HashMap<String, Message>,
}

/// What event `e` stands for.
fn parse(e: &Event) -> Result<Parsed, ConsultationError> {
    let v: serde_json::Value = serde_json::from_str(&e.payload)
        .map_err(|err| ConsultationError::internal("event", err))?;
    let thread_id = v["thread_id"].as_str().unwrap_or_default().to_owned();
    let kind = match e.topic.as_str() {
        topics::CONSULTATION_STARTED => ChangeKind::Started,
        TOPIC_MESSAGE => ChangeKind::Message,
        TOPIC_READ => ChangeKind::Read,
        _ => ChangeKind::State,
    };
    let message_id = match v["message_id"].as_str() {
        Some(id) if kind == ChangeKind::Message => Some(id.to_owned()),
        _ => None,
    };
    Ok((kind, thread_id, message_id))
}

/// The changes `events` stand for, in their order, from `resolved` (which names them all).
fn changes_from(events: &[&Event], resolved: &Resolved) -> Result<Vec<Change>, ConsultationError> {
    events
        .iter()
        .map(|e| {
            let (kind, thread_id, message_id) = match resolved.parsed.get(&e.seq) {
                Some(p) => p.clone(),
                // Left out by `resolve`: its parse error.
                None => parse(e)?,
            };
            let thread = resolved.threads.get(&thread_id).cloned().ok_or_else(|| {
                ConsultationError::internal("event", format!("thread {thread_id} missing"))
            })?;
            let message = match message_id {
                Some(id) => Some(resolved.messages.get(&id).cloned().ok_or_else(|| {
                    ConsultationError::internal("message", format!("stored message {id} missing"))
                })?),
                None => None,
            };
            Ok(Change {
                cursor: e.seq,
                kind,
                thread,
                message,
            })
        })
        .collect()
}
