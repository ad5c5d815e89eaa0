//! Idempotency of mutating calls: the first result of a call is stored under the caller and the
//! idempotency key, in the same transaction as the change; a retry gets that result back.

use crate::db::{Db, Tx};
use serde::{Serialize, de::DeserializeOwned};
use sha2::Digest as _;
use sqlx::Row as _;

/// Outcome of looking up a key.
pub enum Lookup<T> {
    /// First use of the key: do the work, then [`store`].
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

/// Looks up `key` in `scope` inside `tx`, first serialising concurrent uses of the same key.
pub async fn lookup<T: DeserializeOwned>(
    db: &Db,
    tx: &mut Tx,
    scope: &str,
    key: &str,
    hash: &str,
) -> Result<Lookup<T>, IdempotencyError> {
    check_key(key)?;
    db.lock(tx, &format!("idem:{scope}:{key}")).await?;
    let row = sqlx::query(
        "SELECT request_hash, response FROM idempotency WHERE scope = $1 AND idem_key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        None => Ok(Lookup::New),
        Some(r) => {
            let stored_hash: String = r.try_get("request_hash")?;
            if stored_hash != hash {
                return Err(IdempotencyError::KeyReused);
            }
            let bytes: Vec<u8> = r.try_get("response")?;
            Ok(Lookup::Replay(serde_json::from_slice(&bytes)?))
        }
    }
}

/// Stores the result of the first call with `key`.
pub async fn store<T: Serialize>(
    tx: &mut Tx,
    scope: &str,
    key: &str,
    hash: &str,
    response: &T,
    now_ms: i64,
) -> Result<(), IdempotencyError> {
    let bytes = serde_json::to_vec(response)?;
    sqlx::query(
        "INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(bytes)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An open mutating call: its write transaction and its idempotency record.
pub struct Op {
    /// The call's write transaction: make the change, the outbox events and the audit rows here.
    pub tx: Tx,
    scope: String,
    key: String,
    hash: String,
}

/// Outcome of [`begin`].
pub enum Begun<R> {
    /// A retry: the stored first result.
    Replay(R),
    /// First use of the key: do the work in `op.tx`, then [`Op::finish`].
    New(Op),
}

/// Opens the write transaction of a mutating call by `subject` to `rpc` with idempotency `key`.
pub async fn begin<Req: Serialize, Resp: DeserializeOwned>(
    db: &Db,
    subject: &str,
    rpc: &str,
    key: &str,
    request: &Req,
) -> Result<Begun<Resp>, IdempotencyError> {
    let hash = request_hash(request)?;
    let scope = format!("{subject}|{rpc}");
    let mut tx = db.begin().await?;
    match lookup::<Resp>(db, &mut tx, &scope, key, &hash).await? {
        Lookup::Replay(r) => Ok(Begun::Replay(r)),
        Lookup::New => Ok(Begun::New(Op {
            tx,
            scope,
            key: key.to_owned(),
            hash,
        })),
    }
}

impl Op {
    /// Stores `response` under the key and commits the whole call.
    pub async fn finish<Resp: Serialize>(
        mut self,
        response: &Resp,
        now_ms: i64,
    ) -> Result<(), IdempotencyError> {
        store(
            &mut self.tx,
            &self.scope,
            &self.key,
            &self.hash,
            response,
            now_ms,
        )
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}
