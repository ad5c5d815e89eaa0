//! The change streams `Subscribe` (a patient's threads) and `WatchInbox` (a practice's): a
//! catch-up read from the cursor, then the process's [`crate::feed::Feed`].

use super::{ConsultationGrpc, convert};
use crate::feed;
use crate::service::threads::Change;
use econsult_proto::consultation::v1 as pb;
use econsult_runtime::auth::Caller;
use econsult_runtime::bus::Event;
use std::pin::Pin;
use tonic::Status;
use tracing::Instrument as _;

/// A change stream as tonic sends it.
pub type ChangeStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ThreadChange, Status>> + Send + 'static>>;

impl ConsultationGrpc {
    /// The changes after `cursor` of the patient's threads (`practice` `None`) or of practice
    /// `practice`'s, until the client goes, the token expires or the server shuts down.
    /// `patient` is the patient's pseudonymous key (the outbox `route_key`).
    pub(super) fn change_stream(
        &self,
        caller: Caller,
        practice: Option<String>,
        patient: Option<String>,
        mut cursor: u64,
    ) -> ChangeStream {
        let expires_at = caller.expires_at;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ThreadChange, Status>>(64);
        let this = self.clone();
        tokio::spawn(
            async move {
                let mut stop = this.p.shutdown.clone();
                let interest = match (&practice, patient) {
                    (Some(org), _) => feed::Interest::Practice(org.clone()),
                    (None, Some(route)) => feed::Interest::Patient(route),
                    (None, None) => return,
                };
                let filter = interest.filter();
                let unavailable =
                    || Status::unavailable("server shutting down, resume from the last cursor");
                // Subscribe before reading: an event is then either in the catch-up read or in the feed.
                let Some(mut live) = this.feed.subscribe(interest.clone()).await else {
                    let _ = tx.send(Err(unavailable())).await;
                    return;
                };
                'catch_up: loop {
                    loop {
                        match this.svc.events_after(cursor, filter).await {
                            Ok(events) if !events.is_empty() => {
                                let events: Vec<&Event> = events.iter().collect();
                                match this
                                    .deliver(&caller, practice.is_some(), &events, None, &tx)
                                    .await
                                {
                                    Some(c) => cursor = c,
                                    None => return,
                                }
                            }
                            Ok(_) => break,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        }
                    }
                    loop {
                        let batch = tokio::select! {
                            b = live.recv() => b,
                            _ = stop.changed() => {
                                let _ = tx.send(Err(unavailable())).await;
                                return;
                            }
                            _ = tx.closed() => return,
                        };
                        match batch {
                            Ok(batch) => {
                                let events: Vec<&Event> = batch
                                    .events
                                    .iter()
                                    .filter(|f| {
                                        f.event.seq > cursor
                                            && filter.matches(&f.event, &f.route_key)
                                    })
                                    .map(|f| &f.event)
                                    .collect();
                                if events.is_empty() {
                                    continue;
                                }
                                match this
                                    .deliver(
                                        &caller,
                                        practice.is_some(),
                                        &events,
                                        Some(&batch),
                                        &tx,
                                    )
                                    .await
                                {
                                    Some(c) => cursor = c,
                                    None => return,
                                }
                            }
                            // Fell behind the feed: read what it missed from the database.
                            Err(feed::Missed::Lagged) => {
                                this.feed.fell_behind();
                                continue 'catch_up;
                            }
                            Err(feed::Missed::Closed) => {
                                let _ = tx.send(Err(unavailable())).await;
                                return;
                            }
                        }
                    }
                }
            }
            // In the call's span: its trace id goes with the access-log rows the stream writes.
            .instrument(tracing::Span::current()),
        );
        econsult_runtime::auth::end_at_token_expiry(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            expires_at,
        )
    }

    /// Turns `events` (of the feed's `batch`, whose reads every stream shares, or of a catch-up
    /// read) into changes, logs a practice's reads, and sends them in order. Returns the cursor
    /// after the last one sent, or `None` when the stream ended (client gone, error sent).
    async fn deliver(
        &self,
        caller: &Caller,
        practice: bool,
        events: &[&Event],
        batch: Option<&feed::FeedBatch>,
        tx: &tokio::sync::mpsc::Sender<Result<pb::ThreadChange, Status>>,
    ) -> Option<u64> {
        let changes = match batch {
            Some(batch) => self.svc.changes_in(batch, events).await,
            None => self.svc.changes(events).await,
        };
        let changes: Vec<Change> = match changes {
            Ok(changes) => changes,
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return None;
            }
        };
        if practice {
            let threads: Vec<_> = changes.iter().map(|c| &c.thread).collect();
            if let Err(e) = self.svc.log_watched(caller, &threads).await {
                let _ = tx.send(Err(e.into())).await;
                return None;
            }
        }
        let mut cursor = None;
        for change in changes {
            cursor = Some(change.cursor);
            let change = pb::ThreadChange {
                cursor: change.cursor,
                kind: convert::change_kind(change.kind) as i32,
                thread: Some(convert::thread(&change.thread, self.now(), practice)),
                message: change.message.as_ref().map(convert::message),
            };
            if tx.send(Ok(change)).await.is_err() {
                return None;
            }
        }
        cursor
    }
}
