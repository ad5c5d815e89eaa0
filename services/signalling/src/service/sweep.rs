//! The sweeper: ends sessions past their window, lets go of participants who did not come back
//! within the grace period, notices participants whose replica stopped refreshing their
//! presence, and prunes old queues.

use super::Signalling;
use crate::domain::{EndReason, Event, LeaveReason};
use crate::error::SignallingError;
use crate::{hub, store};

impl Signalling {
    /// Sweeps every `sweep_interval` until shutdown. Runs on every replica; every step is a
    /// conditional update, so replicas agree.
    pub async fn run_sweeper(self) {
        let mut stop = self.inner.platform.shutdown.clone();
        let mut tick = tokio::time::interval(self.inner.cfg.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = hub::stopped(&mut stop) => return,
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "signalling sweep failed");
            }
        }
    }

    async fn sweep(&self) -> Result<(), SignallingError> {
        let db = self.inner.platform.db.clone();
        let now = self.now_ms();
        // 1. Sessions whose join window closed.
        let expired = store::expired_sessions(&mut *db.read().acquire().await?, now).await?;
        for appointment_id in expired {
            let mut tx = self.begin_locked(&appointment_id).await?;
            let Some(s) = store::session_of(&mut tx, &appointment_id).await? else {
                continue;
            };
            if s.ended_at.is_some() || s.window_end >= now {
                continue;
            }
            let reason = if s.connected_at.is_some() {
                EndReason::Timeout
            } else {
                EndReason::FailedToConnect
            };
            self.end_in(&mut tx, &s, reason, false, now).await?;
            tx.commit().await?;
            self.inner.hub.wake(&s.session_id, None).await;
        }
        // 2. Disconnected participants past the grace period.
        let grace_start = now - self.inner.cfg.reconnect_grace.num_milliseconds();
        let gone = store::gone_participants(&mut *db.read().acquire().await?, grace_start).await?;
        for p in gone {
            let mut tx = self.begin_locked(&p.appointment_id).await?;
            let dropped_at =
                store::mark_gone(&mut tx, &p.session_id, p.side, grace_start, now).await?;
            let let_go = dropped_at.is_some();
            if let Some(dropped_at) = dropped_at {
                // Its media is taken to have gone with its stream (see `close_stream`).
                Self::set_media_connected(&mut tx, &p.session_id, p.side, false, dropped_at)
                    .await?;
                self.enqueue(
                    &mut tx,
                    &p.session_id,
                    p.side.other(),
                    &Event::PeerLeft {
                        side: p.side,
                        reason: LeaveReason::Gone,
                        rejoin_deadline_ms: None,
                    },
                    now,
                )
                .await?;
            }
            tx.commit().await?;
            if let_go {
                self.inner
                    .hub
                    .wake(&p.session_id, Some(p.side.other()))
                    .await;
            }
        }
        // 3. Online participants without presence: their replica died.
        let online = store::online_participants(&mut *db.read().acquire().await?).await?;
        for p in online {
            if self.inner.hub.alive(&p.session_id, p.side).await? {
                continue;
            }
            self.lose_stream(p.session_id, p.appointment_id, p.side, p.epoch)
                .await?;
        }
        // 4. Queued signals of sessions that ended a day ago are no longer needed.
        let mut tx = db.begin().await?;
        store::prune_queues(&mut tx, now - 24 * 3600 * 1000).await?;
        tx.commit().await?;
        Ok(())
    }
}
