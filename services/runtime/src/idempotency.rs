//! Idempotency of mutating calls: the first result of a call is stored under the caller and the
//! idempotency key, in the same transaction as the change; a retry gets that result back.

use crate::db::{Db, Defer, Tx};
use serde::{Serialize, de::DeserializeOwned};
use sha2::Digest as _;
use sqlx::Row as _;

/// Outcome of looking up a key.
pub enum Lookup<T> {
    /// First use of the key: do the work, then [`Op::finish`].
    New,
    /// The key was used before for the same request: here is the stored result.
    Replay(T),
}

/// Errors of the idempotency layer.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The key was used before for a different request.
    #[error("idempotency_key was already used for a different request")]
    KeyReused,
    /// The key is empty or too long.
    #[error("idempotency_key must be 1 to 128 characters")]
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

/// Validates the key's form.
pub fn check_key(key: &str) -> Result<(), IdempotencyError> {
    if key.is_empty() || key.chars().count() > 128 {
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
    let r = sqlx::query(
        "SELECT request_hash, response FROM idempotency WHERE scope = $1 AND idem_key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    let stored_hash: String = r.try_get("request_hash")?;
    if stored_hash != hash {
        return Err(IdempotencyError::KeyReused);
    }
    let bytes: Vec<u8> = r.try_get("response")?;
    Ok(Lookup::Replay(serde_json::from_slice(&bytes)?))
}

/// An open mutating call: its write transaction and its idempotency record.
pub struct Op {
    /// The call's write transaction: make the change, the outbox events and the audit rows here.
    pub tx: Tx,
    scope: String,
    key: String,
}

/// Outcome of [`begin`].
pub enum Begun<R> {
    /// A retry: the stored first result.
    Replay(R),
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
    match claim::<Resp>(&mut tx, &scope, key, &hash, now_ms).await? {
        Lookup::Replay(r) => {
            // Commit (nothing was written) rather than roll back: on SQLite the stored answer
            // may belong to a transaction of the same commit group, and commit returns only
            // once that group is on disk.
            tx.commit().await?;
            Ok(Begun::Replay(r))
        }
        Lookup::New => Ok(Begun::New(Op {
            tx,
            scope,
            key: key.to_owned(),
        })),
    }
}

impl Op {
    /// Stores `response` under the claimed key and commits the whole call.
    pub async fn finish<Resp: Serialize>(
        mut self,
        response: &Resp,
    ) -> Result<(), IdempotencyError> {
        let bytes = serde_json::to_vec(response)?;
        self.tx.defer(
            "UPDATE idempotency SET response = $1 WHERE scope = $2 AND idem_key = $3",
            vec![bytes.into(), self.scope.into(), self.key.into()],
        );
        self.tx.commit().await?;
        Ok(())
    }
}
