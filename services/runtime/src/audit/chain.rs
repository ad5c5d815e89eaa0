//! The access log as a hash chain. A row is inserted unsealed (no extra statement or lock on
//! the call's path); the sealer, one at a time (an advisory lock on PostgreSQL, the single
//! writer on SQLite), gives the committed unsealed rows, in id order, the next places
//! `chain_seq` 1, 2, 3 … and `hash` = SHA-256 of the previous row's hash and the row's content.
//! A row committed late (a lower id than a sealed one) simply gets a later place, so concurrent
//! writers cannot fork the chain. The one UPDATE the triggers allow is this sealing, once.
//! [`verify`] walks the chain and reports the first row whose content, hash or place is wrong.
//! Every column but `chain_seq` and `hash` is covered, including the thread subject a row may
//! name (`what_subject`): a patient's log is checked as they see it.
//!
//! A chain inside the database proves nothing against someone who can rewrite the database:
//! they change a row and recompute every hash after it. So the sealer writes the chain's head
//! (`chain_seq`, `hash`) to the log stream ([`ANCHOR_TARGET`], at most every
//! [`ANCHOR_EVERY`]), which leaves the machine; [`verify_anchors`] checks a database against
//! heads taken from those logs (`econsult audit verify --anchors FILE`).

use crate::db::{Db, MultiRow, Value, bind_values};
use sha2::Digest as _;
use sqlx::Row as _;
use std::time::Duration;
use tokio::sync::watch;

/// The columns a row's hash covers, as selected by [`seal`] and [`verify`].
struct Content {
    id: i64,
    at: i64,
    subject: String,
    role: i64,
    org_number: String,
    action: String,
    resource: String,
    patient_nin: String,
    trace_id: String,
    request_id: String,
    actor_nin: String,
    acted_as: i64,
    actor_name: String,
    actor_hpr: String,
    system_name: String,
    purpose: i64,
    what: String,
    what_subject: String,
}

impl Content {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: r.try_get("id")?,
            at: r.try_get("at")?,
            subject: r.try_get("subject")?,
            role: r.try_get("role")?,
            org_number: r.try_get("org_number")?,
            action: r.try_get("action")?,
            resource: r.try_get("resource")?,
            patient_nin: r.try_get("patient_nin")?,
            trace_id: r.try_get("trace_id")?,
            request_id: r.try_get("request_id")?,
            actor_nin: r.try_get("actor_nin")?,
            acted_as: r.try_get("acted_as")?,
            actor_name: r.try_get("actor_name")?,
            actor_hpr: r.try_get("actor_hpr")?,
            system_name: r.try_get("system_name")?,
            purpose: r.try_get("purpose")?,
            what: r.try_get("what")?,
            what_subject: r.try_get("what_subject")?,
        })
    }

    /// Lower-case hex SHA-256 of `prev` (the previous row's hash, "" for the first) and this
    /// row's content at place `seq`, as one JSON array (unambiguous field boundaries).
    fn hash(&self, seq: i64, prev: &str) -> String {
        let mut content = serde_json::json!([
            prev,
            seq,
            self.id,
            self.at,
            self.subject,
            self.role,
            self.org_number,
            self.action,
            self.resource,
            self.patient_nin,
            self.trace_id,
            self.request_id,
        ]);
        // The actor (migration 0014) only where there is one, and who, why and what in words
        // (migration 0019, after the actor) only where any is set: rows sealed before either
        // keep their hashes. The array's length (12, 14 or 20) tells the forms apart.
        let who_why_what = !self.actor_name.is_empty()
            || !self.actor_hpr.is_empty()
            || !self.system_name.is_empty()
            || self.purpose != 0
            || !self.what.is_empty()
            || !self.what_subject.is_empty();
        if let Some(a) = content.as_array_mut() {
            if who_why_what || !self.actor_nin.is_empty() || self.acted_as != 0 {
                a.push(self.actor_nin.clone().into());
                a.push(self.acted_as.into());
            }
            if who_why_what {
                a.push(self.actor_name.clone().into());
                a.push(self.actor_hpr.clone().into());
                a.push(self.system_name.clone().into());
                a.push(self.purpose.into());
                a.push(self.what.clone().into());
                a.push(self.what_subject.clone().into());
            }
        }
        let digest = sha2::Sha256::digest(content.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Seals up to `batch` committed unsealed rows in one transaction; returns how many.
pub async fn seal(db: &Db, batch: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin_locked("audit_log.chain").await?;
    let (mut seq, mut prev) = match last_link(&mut *tx).await? {
        Some(a) => (a.chain_seq, a.hash),
        None => (0, String::new()),
    };
    let rows = sqlx::query(
        "SELECT id, at, subject, role, org_number, action, resource, patient_nin, trace_id, request_id, actor_nin, acted_as, \
         actor_name, actor_hpr, system_name, purpose, what, what_subject \
         FROM audit_log WHERE chain_seq IS NULL ORDER BY id LIMIT $1",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let n = rows.len() as u64;
    let mut links: Vec<Value> = Vec::with_capacity(rows.len() * 3);
    for r in &rows {
        let c = Content::from_row(r)?;
        seq += 1;
        prev = c.hash(seq, &prev);
        links.extend([c.id.into(), seq.into(), prev.clone().into()]);
    }
    if n > 0 {
        let sql = SEAL_ROWS.sql(rows.len());
        let sealed = bind_values(sqlx::query(&sql), links)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if sealed != n {
            // Nothing else seals (the lock), and a sealed row cannot be unsealed (trigger).
            tracing::error!(sealed, read = n, "audit chain: a page was not sealed whole");
            tx.rollback().await?;
            return Err(sqlx::Error::Protocol(format!(
                "sealed {sealed} of {n} audit rows"
            )));
        }
    }
    tx.commit().await?;
    Ok(n)
}

/// A page of links in one statement: (id, chain_seq, hash) per row. One UPDATE per row, as
/// deferred writes, made PostgreSQL plan a 500-part statement for each page (~100 ms a page in
/// a booking rush, `load-tests/RESULTS.md`).
const SEAL_ROWS: MultiRow = MultiRow {
    head: "UPDATE audit_log SET chain_seq = v.column2, hash = v.column3 FROM (VALUES",
    columns: 3,
    tail: ") AS v WHERE audit_log.id = v.column1 AND audit_log.chain_seq IS NULL",
};

/// Rows sealed per transaction of the background sealer.
const SEAL_BATCH: i64 = 500;

/// The log target of the chain-head lines (`audit chain head chain_seq=… hash=…`).
pub const ANCHOR_TARGET: &str = "econsult::audit::anchor";

/// Most time between two chain-head lines while rows are being sealed.
pub const ANCHOR_EVERY: Duration = Duration::from_secs(60);

/// A place in the chain and its hash, as the sealer logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The place.
    pub chain_seq: i64,
    /// The hash of the row at that place.
    pub hash: String,
}

/// The chain's last sealed place and its hash (`None` before the first seal).
pub async fn head(db: &Db) -> Result<Option<Anchor>, sqlx::Error> {
    last_link(db.read()).await
}

/// [`head`] on `conn` (the sealer reads it inside its transaction).
async fn last_link<'e, E>(conn: E) -> Result<Option<Anchor>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT chain_seq, hash FROM audit_log WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(Anchor {
            chain_seq: r.try_get("chain_seq")?,
            hash: r.try_get("hash")?,
        })
    })
    .transpose()
}

/// The chain heads in log text: every line with `chain_seq=N` and `hash=H` (the text format)
/// or `"chain_seq":N` and `"hash":"H"` (JSON); other lines are skipped.
pub fn parse_anchors(text: &str) -> Vec<Anchor> {
    fn after<'a>(line: &'a str, keys: &[&str]) -> Option<&'a str> {
        keys.iter()
            .find_map(|k| line.find(k).map(|i| &line[i + k.len()..]))
    }
    text.lines()
        .filter_map(|line| {
            let seq = after(line, &["chain_seq=", "\"chain_seq\":"])?;
            let seq: i64 = seq
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()?;
            let hash = after(line, &["hash=", "\"hash\":\""])?;
            let hash: String = hash.chars().take_while(char::is_ascii_hexdigit).collect();
            (hash.len() == 64).then_some(Anchor {
                chain_seq: seq,
                hash,
            })
        })
        .collect()
}

/// The first anchor the database disagrees with: its place holds another hash (the chain was
/// recomputed after a change) or does not exist (rows were removed). `None`: all agree.
pub async fn verify_anchors(
    db: &Db,
    anchors: &[Anchor],
) -> Result<Option<(Anchor, &'static str)>, sqlx::Error> {
    for a in anchors {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE chain_seq = $1")
                .bind(a.chain_seq)
                .fetch_optional(db.read())
                .await?;
        match stored {
            None => return Ok(Some((a.clone(), "the chain no longer reaches this place"))),
            Some(h) if h != a.hash => {
                return Ok(Some((
                    a.clone(),
                    "the chain was rewritten: this place has another hash than was logged",
                )));
            }
            Some(_) => {}
        }
    }
    Ok(None)
}

/// Seals every second until `shutdown`; logs the head after it moved, at once the first time
/// and then at most every [`ANCHOR_EVERY`], and once more at shutdown.
pub(super) async fn sealer(db: Db, mut shutdown: watch::Receiver<bool>) {
    let (mut last, mut pending) = (None::<std::time::Instant>, false);
    loop {
        loop {
            match seal(&db, SEAL_BATCH).await {
                Ok(n) => {
                    pending |= n > 0;
                    if n < SEAL_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sealing the access log failed; retrying");
                    break;
                }
            }
        }
        let stopping = *shutdown.borrow();
        if pending && (stopping || last.is_none_or(|at| at.elapsed() >= ANCHOR_EVERY)) {
            match head(&db).await {
                Ok(Some(h)) => {
                    tracing::info!(
                        target: ANCHOR_TARGET,
                        chain_seq = h.chain_seq,
                        hash = %h.hash,
                        "audit chain head"
                    );
                    (last, pending) = (Some(std::time::Instant::now()), false);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the access log's head failed"),
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            changed = shutdown.changed() => if changed.is_err() { return },
        }
    }
}

/// The first broken link of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The row's id.
    pub id: u64,
    /// Its place in the chain.
    pub chain_seq: i64,
    /// What is wrong.
    pub reason: &'static str,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Sealed rows checked (up to the first broken link).
    pub rows: u64,
    /// Rows not sealed yet (written in the last second or so; not covered).
    pub unsealed: u64,
    /// The first broken link, if any.
    pub broken: Option<Broken>,
}

/// Walks the chain from its first row, recomputing each hash; stops at the first row whose
/// place is not the next one (a row before it was removed) or whose hash does not match (it,
/// or the hash, was changed). `progress` gets the count of rows checked after each page.
pub async fn verify(db: &Db, mut progress: impl FnMut(u64)) -> Result<Verified, sqlx::Error> {
    const PAGE: i64 = 1000;
    let (mut seq, mut prev, mut rows) = (0i64, String::new(), 0u64);
    let broken = 'walk: loop {
        let page = sqlx::query(
            "SELECT id, at, subject, role, org_number, action, resource, patient_nin, trace_id, request_id, actor_nin, acted_as, \
             actor_name, actor_hpr, system_name, purpose, what, what_subject, chain_seq, hash \
             FROM audit_log WHERE chain_seq > $1 ORDER BY chain_seq LIMIT $2",
        )
        .bind(seq)
        .bind(PAGE)
        .fetch_all(db.read())
        .await?;
        for r in &page {
            let c = Content::from_row(r)?;
            let at: i64 = r.try_get("chain_seq")?;
            let stored: String = r.try_get("hash")?;
            let broken = |reason| Broken {
                id: c.id as u64,
                chain_seq: at,
                reason,
            };
            if at != seq + 1 {
                break 'walk Some(broken("a row before it is missing from the chain"));
            }
            let expected = c.hash(at, &prev);
            if expected != stored {
                break 'walk Some(broken("its content or hash was changed"));
            }
            (seq, prev, rows) = (at, stored, rows + 1);
        }
        progress(rows);
        if (page.len() as i64) < PAGE {
            break None;
        }
    };
    let unsealed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE chain_seq IS NULL")
            .fetch_one(db.read())
            .await?;
    Ok(Verified {
        rows,
        unsealed: unsealed as u64,
        broken,
    })
}
