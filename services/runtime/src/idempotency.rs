//! Idempotency of mutating calls: the first result of a call is stored under the caller and the
//! idempotency key, in the same transaction as the change; a retry gets that result back.

use crate::audit::{self, Accessed};
use crate::db::{Backend, Db, Defer, Tx};
use serde::{Serialize, de::DeserializeOwned};
use sha2::Digest as _;
use sqlx::Any;
use sqlx::Row as _;
use sqlx::any::AnyArguments;
use tracing::Instrument as _;

/// Outcome of looking up a key.
pub enum Lookup<T> {
    /// First use of the key: do the work, then [`Op::finish`].
    New,
    /// The key was used before for the same request: here is the stored result, and the
    /// accesses its call logged (to be logged again for the replay).
    Replay(T, Vec<Accessed>),
}

/// Errors of the idempotency layer.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The key was used before for a different request.
    #[error("idempotency_key was already used for a different request")]
    KeyReused,
    /// The key is empty, too long, or not printable ASCII.
    #[error(
        "idempotency_key must be 1 to 128 printable ASCII characters (no spaces or control characters)"
    )]
    BadKey,
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Encoding the stored result failed.
    #[error("stored result: {0}")]
    Codec(#[from] serde_json::Error),
}

/// Hash of a request, to tell a retry from a different request with a reused key.
pub fn request_hash<R: Serialize>(request: &R) -> Result<String, serde_json::Error> {
    let bytes = serde_json::to_vec(request)?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

/// Validates the key's form: 1 to 128 printable ASCII characters, as every proto says (a tab,
/// newline, NUL, DEL or a non-ASCII letter is refused).
pub fn check_key(key: &str) -> Result<(), IdempotencyError> {
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        Err(IdempotencyError::BadKey)
    } else {
        Ok(())
    }
}

/// Claims `key` in `scope` inside `tx` with one INSERT of a placeholder row.
///
/// A concurrent transaction with the same key waits on the primary key until the first one
/// commits or rolls back, so no explicit lock is needed: after a commit it sees the stored row
/// (a replay), after a rollback its own INSERT goes through (a first use).
async fn claim<T: DeserializeOwned>(
    tx: &mut Tx,
    scope: &str,
    key: &str,
    hash: &str,
    now_ms: i64,
) -> Result<Lookup<T>, IdempotencyError> {
    check_key(key)?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (scope, idem_key) DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(Vec::<u8>::new())
    .bind(now_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(Lookup::New);
    }
    // The INSERT waited for the transaction that holds the key: it committed its row.
    match stored(tx, scope, key, hash).await? {
        Lookup::New => Err(IdempotencyError::Db(sqlx::Error::RowNotFound)),
        replay => Ok(replay),
    }
}

/// The stored answer under `key` in `scope` (`New` when there is none), or
/// [`IdempotencyError::KeyReused`] when it was stored for a request of another hash.
async fn stored<T: DeserializeOwned>(
    tx: &mut Tx,
    scope: &str,
    key: &str,
    hash: &str,
) -> Result<Lookup<T>, IdempotencyError> {
    let Some(r) = sqlx::query(
        "SELECT request_hash, response, accesses FROM idempotency WHERE scope = $1 AND idem_key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(Lookup::New);
    };
    let stored_hash: String = r.try_get("request_hash")?;
    if stored_hash != hash {
        return Err(IdempotencyError::KeyReused);
    }
    let bytes: Vec<u8> = r.try_get("response")?;
    let accesses: String = r.try_get("accesses")?;
    let accesses = if accesses.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&accesses)?
    };
    Ok(Lookup::Replay(serde_json::from_slice(&bytes)?, accesses))
}

/// An open mutating call: its write transaction and its idempotency record.
pub struct Op {
    /// The call's write transaction: make the change, the outbox events and the audit rows here.
    pub tx: Tx,
    scope: String,
    key: String,
    hash: String,
    now_ms: i64,
    /// The claim is still to be made, by the call's first statement ([`begin_claiming_first`]).
    pending: bool,
    /// The accesses of the first attempt whose answer [`Op::claimed`] found.
    replayed: Vec<Accessed>,
}

/// Outcome of [`begin`].
pub enum Begun<R> {
    /// A retry: the stored first result, and the accesses its call logged.
    Replay(R, Vec<Accessed>),
    /// First use of the key: do the work in `op.tx`, then [`Op::finish`].
    New(Op),
}

/// Opens the write transaction of a mutating call by `subject` to `rpc` with idempotency `key`,
/// claiming the key in it (`now_ms` is the record's creation time).
pub async fn begin<Req: Serialize, Resp: DeserializeOwned>(
    db: &Db,
    subject: &str,
    rpc: &str,
    key: &str,
    request: &Req,
    now_ms: i64,
) -> Result<Begun<Resp>, IdempotencyError> {
    let hash = request_hash(request)?;
    let scope = format!("{subject}|{rpc}");
    let mut tx = db.begin().await?;
    let claimed = claim::<Resp>(&mut tx, &scope, key, &hash, now_ms)
        .instrument(tracing::info_span!(
            "idempotency.claim",
            otel.name = "claim idempotency key"
        ))
        .await?;
    match claimed {
        Lookup::Replay(r, accesses) => {
            // Commit (nothing was written) rather than roll back: on SQLite the stored answer
            // may belong to a transaction of the same commit group, and commit returns only
            // once that group is on disk.
            tx.commit().await?;
            Ok(Begun::Replay(r, accesses))
        }
        Lookup::New => Ok(Begun::New(Op {
            tx,
            scope,
            key: key.to_owned(),
            hash,
            now_ms,
            pending: false,
            replayed: Vec::new(),
        })),
    }
}

/// [`begin`], except that on PostgreSQL the key is claimed by the call's first statement
/// instead of a statement of its own: one round trip less. That statement, a complete literal,
/// must
/// - start with the CTE `claim` that claims the key with the placeholders `$1`…`$5`:
///   `WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response,
///   created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING RETURNING
///   1 AS one)`, bound by [`Op::bind_claim`] before its own values (numbered from `$6`),
/// - make each of its writes conditional on `EXISTS (SELECT 1 FROM claim)` (so a retry that
///   waited on the claim of the first attempt writes nothing, and the claim is the first row
///   lock it takes, as with [`begin`]),
/// - select from `(SELECT count(*) AS claimed FROM claim) c`, so it returns a row even when it
///   wrote nothing,
///
/// and the call must hand that row's `claimed` to [`Op::claimed`] before anything else — before
/// any error of its own, so a retry gets the first answer rather than the error the changed
/// state would give. Reads may come before it; nothing that can fail the call may. On SQLite
/// (no round trips) the key is claimed here, as [`begin`] does. A statement of that shape run
/// once the key is claimed ([`Op::claims_in_statement`] false) uses the variant `WITH claim AS
/// (SELECT 1 AS one FROM (VALUES ($1, $2, $3, $4, $5)) AS v (scope, idem_key, request_hash,
/// response, created_at))`: one row, the same five values bound, nothing written.
pub async fn begin_claiming_first<Req: Serialize, Resp: DeserializeOwned>(
    db: &Db,
    subject: &str,
    rpc: &str,
    key: &str,
    request: &Req,
    now_ms: i64,
) -> Result<Begun<Resp>, IdempotencyError> {
    if db.backend() == Backend::Sqlite {
        return begin(db, subject, rpc, key, request, now_ms).await;
    }
    check_key(key)?;
    let hash = request_hash(request)?;
    Ok(Begun::New(Op {
        tx: db.begin().await?,
        scope: format!("{subject}|{rpc}"),
        key: key.to_owned(),
        hash,
        now_ms,
        pending: true,
        replayed: Vec::new(),
    }))
}

impl Op {
    /// True while the key is still to be claimed by the call's first statement (see
    /// [`begin_claiming_first`]): that statement then starts with the claiming CTE, else with
    /// its already-claimed variant.
    pub fn claims_in_statement(&self) -> bool {
        self.pending
    }

    /// Binds the placeholders `$1`…`$5` of the CTE `claim` (scope, key, request hash, an empty
    /// answer, creation time) of a [`begin_claiming_first`] statement, in either of its variants:
    /// call it on the bare query, before the statement's own values.
    pub fn bind_claim<'q>(
        &self,
        q: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
        q.bind(self.scope.clone())
            .bind(self.key.clone())
            .bind(self.hash.clone())
            .bind(Vec::<u8>::new())
            .bind(self.now_ms)
    }

    /// Takes the `claimed` of the first statement (its one-row relation `c`): `None` when the
    /// key is the call's (go on), the stored first answer when a first attempt has it (return
    /// it; the statement wrote nothing), [`IdempotencyError::KeyReused`] when the key was used
    /// for a different request. `None` too once the key is claimed.
    pub async fn claimed<Resp: DeserializeOwned>(
        &mut self,
        claimed: i64,
    ) -> Result<Option<Resp>, IdempotencyError> {
        if !std::mem::take(&mut self.pending) {
            return Ok(None);
        }
        if claimed > 0 {
            return Ok(None);
        }
        // The claim waited for the first attempt's transaction and found its row: under READ
        // COMMITTED this next statement sees it.
        match stored::<Resp>(&mut self.tx, &self.scope, &self.key, &self.hash).await? {
            Lookup::Replay(r, accesses) => {
                self.replayed = accesses;
                Ok(Some(r))
            }
            Lookup::New => Err(IdempotencyError::Db(sqlx::Error::RowNotFound)),
        }
    }

    /// The accesses of the first attempt whose answer [`Op::claimed`] found (empty otherwise):
    /// a replay logs them again.
    pub fn take_replayed(&mut self) -> Vec<Accessed> {
        std::mem::take(&mut self.replayed)
    }

    /// Stores `response` under the claimed key, with the accesses the call logged, and commits
    /// the whole call.
    pub async fn finish<Resp: Serialize>(
        mut self,
        response: &Resp,
    ) -> Result<(), IdempotencyError> {
        let bytes = serde_json::to_vec(response)?;
        let accesses = serde_json::to_string(&audit::accessed(&self.tx))?;
        if self.pending {
            // A call that never made its claim (a first statement that did not run): the row
            // goes in with the answer, and a concurrent attempt's row fails the commit with a
            // unique violation rather than letting both through.
            self.tx.defer(
                "INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at, accesses) VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    self.scope.into(),
                    self.key.into(),
                    self.hash.into(),
                    bytes.into(),
                    self.now_ms.into(),
                    accesses.into(),
                ],
            );
        } else {
            self.tx.defer(
                "UPDATE idempotency SET response = $1, accesses = $2 WHERE scope = $3 AND idem_key = $4",
                vec![
                    bytes.into(),
                    accesses.into(),
                    self.scope.into(),
                    self.key.into(),
                ],
            );
        }
        self.tx.commit().await?;
        Ok(())
    }
}
