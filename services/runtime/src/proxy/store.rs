//! Every SQL statement of the fullmakt table (one dialect serves both backends).

use super::{Fullmakt, Scope};
use crate::db::{Db, Tx};
use chrono::NaiveDate;
use sqlx::Row as _;

fn from_row(r: &sqlx::any::AnyRow) -> Result<Fullmakt, sqlx::Error> {
    let decode = |e: String| sqlx::Error::Decode(e.into());
    let scope: i64 = r.try_get("scope")?;
    let end: String = r.try_get("end_date")?;
    Ok(Fullmakt {
        id: r.try_get("id")?,
        giver: r.try_get("giver_nin")?,
        holder: r.try_get("holder_nin")?,
        scope: Scope::from_code(scope).ok_or_else(|| decode(format!("fullmakt scope {scope}")))?,
        end_date: NaiveDate::parse_from_str(&end, "%Y-%m-%d")
            .map_err(|e| decode(format!("fullmakt end_date: {e}")))?,
        created_at_ms: r.try_get("created_at")?,
        revoked_at_ms: r.try_get("revoked_at")?,
    })
}

/// Stores a new fullmakt in the grant's transaction.
pub async fn insert(tx: &mut Tx, f: &Fullmakt) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO proxy_fullmakts (id, giver_nin, holder_nin, scope, end_date, created_at, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL)",
    )
    .bind(&f.id)
    .bind(&f.giver)
    .bind(&f.holder)
    .bind(f.scope.code())
    .bind(f.end_date.format("%Y-%m-%d").to_string())
    .bind(f.created_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes the giver's fullmakt `id` at `now_ms` unless it is revoked already; the fullmakt as
/// it stands after and whether this call revoked it, or `None` when the giver has no such
/// fullmakt.
pub async fn revoke(
    tx: &mut Tx,
    id: &str,
    giver: &str,
    now_ms: i64,
) -> Result<Option<(Fullmakt, bool)>, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE proxy_fullmakts SET revoked_at = $3 WHERE id = $1 AND giver_nin = $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(giver)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    let row = sqlx::query(
        "SELECT id, giver_nin, holder_nin, scope, end_date, created_at, revoked_at \
         FROM proxy_fullmakts WHERE id = $1 AND giver_nin = $2",
    )
    .bind(id)
    .bind(giver)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row
        .as_ref()
        .map(from_row)
        .transpose()?
        .map(|f| (f, changed)))
}

/// The fullmakter `giver` has given, newest first.
pub async fn given(db: &Db, giver: &str) -> Result<Vec<Fullmakt>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, giver_nin, holder_nin, scope, end_date, created_at, revoked_at \
         FROM proxy_fullmakts WHERE giver_nin = $1 ORDER BY created_at DESC, id DESC",
    )
    .bind(giver)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(from_row).collect()
}

/// The fullmakter `holder` holds, newest first.
pub async fn held(db: &Db, holder: &str) -> Result<Vec<Fullmakt>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, giver_nin, holder_nin, scope, end_date, created_at, revoked_at \
         FROM proxy_fullmakts WHERE holder_nin = $1 ORDER BY created_at DESC, id DESC",
    )
    .bind(holder)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Every fullmakt `giver` has given `holder`, newest first.
pub async fn between(db: &Db, giver: &str, holder: &str) -> Result<Vec<Fullmakt>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, giver_nin, holder_nin, scope, end_date, created_at, revoked_at \
         FROM proxy_fullmakts WHERE giver_nin = $1 AND holder_nin = $2 ORDER BY created_at DESC, id DESC",
    )
    .bind(giver)
    .bind(holder)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Notes that `nin` has a strictly confidential address (their own token said so), once.
pub async fn note_protected(db: &Db, nin: &str, now_ms: i64) -> Result<(), sqlx::Error> {
    db.write_one(
        sqlx::query(
            "INSERT INTO proxy_protected_addresses (nin, noted_at) VALUES ($1, $2) \
             ON CONFLICT (nin) DO NOTHING",
        )
        .bind(nin)
        .bind(now_ms),
    )
    .await?;
    Ok(())
}

/// Forgets a protected address `nin`'s own token no longer states.
pub async fn clear_protected(db: &Db, nin: &str) -> Result<(), sqlx::Error> {
    db.write_one(sqlx::query("DELETE FROM proxy_protected_addresses WHERE nin = $1").bind(nin))
        .await?;
    Ok(())
}

/// Whether `nin` is known to have a strictly confidential address.
pub async fn is_protected(db: &Db, nin: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT nin FROM proxy_protected_addresses WHERE nin = $1")
        .bind(nin)
        .fetch_optional(db.read())
        .await?;
    Ok(row.is_some())
}
