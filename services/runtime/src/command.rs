//! The one routine of every mutating call: claim the idempotency key → open the write
//! transaction → the command's own change, outbox events and audit rows → store the answer →
//! commit. A service writes only the middle part, as a closure over the open [`Op`]; a retry
//! with the same key gets the stored first answer and the closure does not run.
//!
//! ```text
//! let appointment = command::run(&db, Command::new(caller, "Cancel", key, &request, now_ms), async |op| {
//!     let a = store::cancel(&mut op.tx, id).await?;          // the change
//!     op.emit(NewEvent { topic: "booking.cancelled", .. }, now_ms)?; // its event
//!     op.audit(caller, &Access::new(..), now_ms)?;           // who touched whose data, why
//!     Ok(a)                                                  // the answer, stored for retries
//! }).await?;
//! ```

use crate::audit::{self, Access};
use crate::auth::Caller;
use crate::db::Db;
use crate::idempotency::{self, Begun, IdempotencyError, Op};
use crate::outbox::{self, NewEvent};
use serde::{Serialize, de::DeserializeOwned};

/// Who calls which RPC with which key and request: what the idempotency record is keyed and
/// checked on.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a, Req> {
    /// The caller (its subject is the scope of the key; a replay is logged as its access).
    pub caller: &'a Caller,
    /// The caller's subject (scope of the key).
    pub subject: &'a str,
    /// The RPC's name (scope of the key).
    pub rpc: &'a str,
    /// The caller's idempotency key.
    pub key: &'a str,
    /// The request as the caller meant it: a retry must hash the same.
    pub request: &'a Req,
    /// Now, in ms since the epoch: the idempotency record's creation time.
    pub now_ms: i64,
}

impl<'a, Req> Command<'a, Req> {
    /// The command of `caller` to `rpc`.
    pub fn new(
        caller: &'a Caller,
        rpc: &'a str,
        key: &'a str,
        request: &'a Req,
        now_ms: i64,
    ) -> Self {
        Self {
            caller,
            subject: &caller.subject,
            rpc,
            key,
            request,
            now_ms,
        }
    }
}

/// How the key is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// By a statement of its own before the closure runs ([`idempotency::begin`]).
    Own,
    /// By the closure's first statement on PostgreSQL ([`idempotency::begin_claiming_first`]):
    /// the closure must follow that function's rules and pass the claim to [`Op::claimed`].
    InFirstStatement,
}

/// What the closure of [`run_with`] gives back.
pub enum Outcome<S> {
    /// The command's answer: stored under the key, then committed with the change.
    Done(S),
    /// A first attempt's stored answer, found by the closure's first statement
    /// ([`Claim::InFirstStatement`]): nothing was written; the transaction is committed empty.
    Replayed(S),
}

/// Runs `body` as the mutating command `cmd` on `db`, claiming the key by a statement of its
/// own: see the module doc. An error of `body` rolls the whole call back (the key included, so
/// a retry runs again).
pub async fn run<Req, S, E>(
    db: &Db,
    cmd: Command<'_, Req>,
    body: impl AsyncFnOnce(&mut Op) -> Result<S, E>,
) -> Result<S, E>
where
    Req: Serialize,
    S: Serialize + DeserializeOwned,
    E: From<IdempotencyError> + From<audit::RecordError>,
{
    run_with(db, cmd, Claim::Own, async |op| {
        body(op).await.map(Outcome::Done)
    })
    .await
}

/// [`run`] with the claim made as `claim` says; `body` reports a replay its first statement
/// found as [`Outcome::Replayed`].
pub async fn run_with<Req, S, E>(
    db: &Db,
    cmd: Command<'_, Req>,
    claim: Claim,
    body: impl AsyncFnOnce(&mut Op) -> Result<Outcome<S>, E>,
) -> Result<S, E>
where
    Req: Serialize,
    S: Serialize + DeserializeOwned,
    E: From<IdempotencyError> + From<audit::RecordError>,
{
    let begun = match claim {
        Claim::Own => {
            idempotency::begin(db, cmd.subject, cmd.rpc, cmd.key, cmd.request, cmd.now_ms).await
        }
        Claim::InFirstStatement => {
            idempotency::begin_claiming_first(
                db,
                cmd.subject,
                cmd.rpc,
                cmd.key,
                cmd.request,
                cmd.now_ms,
            )
            .await
        }
    }?;
    let mut op = match begun {
        Begun::Replay(first, accesses) => {
            if !accesses.is_empty() {
                // The replay's caller must account for it as the first caller did.
                let rows = accesses
                    .iter()
                    .map(|a| audit::row(cmd.caller, &a.replayed(), cmd.now_ms))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(audit::RecordError::from)?;
                let mut w = db.writes();
                for r in rows {
                    r.write(&mut w);
                }
                w.commit().await.map_err(IdempotencyError::Db)?;
            }
            return Ok(first);
        }
        Begun::New(op) => op,
    };
    match body(&mut op).await? {
        Outcome::Done(answer) => {
            op.finish(&answer).await?;
            Ok(answer)
        }
        Outcome::Replayed(first) => {
            for a in &op.take_replayed() {
                audit::row(cmd.caller, &a.replayed(), cmd.now_ms)
                    .map_err(audit::RecordError::from)?
                    .write(&mut op.tx);
            }
            op.tx.commit().await.map_err(IdempotencyError::Db)?;
            Ok(first)
        }
    }
}

impl Op {
    /// Writes `event` into the outbox in the call's transaction; returns its event id.
    pub fn emit<P: Serialize>(
        &mut self,
        event: NewEvent<'_, P>,
        now_ms: i64,
    ) -> anyhow::Result<String> {
        outbox::write(&mut self.tx, event, now_ms)
    }

    /// Appends an access-log row for `caller`'s `access` in the call's transaction, or refuses
    /// the access when the caller did not account for it ([`audit::purpose`]).
    pub fn audit(
        &mut self,
        caller: &Caller,
        access: &Access<'_>,
        now_ms: i64,
    ) -> Result<(), audit::RecordError> {
        audit::row(caller, access, now_ms)?.write(&mut self.tx);
        Ok(())
    }
}
