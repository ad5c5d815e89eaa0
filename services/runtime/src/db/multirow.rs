//! Statements over a batch of rows, numbered once here so no service does placeholder
//! arithmetic.

use sqlx::AnyPool;

/// A statement over a batch of rows: `head`, then one tuple of `columns` placeholders per row,
/// then `tail` (`INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT …`). The one kind of
/// statement whose text depends on the data; a service writes `head` and `tail` as literals
/// and this numbers the placeholders, so no service does placeholder arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiRow {
    /// Up to and including `VALUES`.
    pub head: &'static str,
    /// Values per row.
    pub columns: usize,
    /// After the tuples (`ON CONFLICT …`, `RETURNING …`), or "".
    pub tail: &'static str,
}

impl MultiRow {
    /// The statement for `rows` rows.
    pub fn sql(&self, rows: usize) -> String {
        let mut sql =
            String::with_capacity(self.head.len() + self.tail.len() + rows * self.columns * 5);
        sql.push_str(self.head);
        for r in 0..rows {
            sql.push_str(if r == 0 { " (" } else { ", (" });
            for c in 1..=self.columns {
                if c > 1 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", r * self.columns + c));
            }
            sql.push(')');
        }
        if !self.tail.is_empty() {
            sql.push(' ');
            sql.push_str(self.tail);
        }
        sql
    }
}

/// Runs `stmt` (one column per row: `… IN (VALUES ($1), …)`) for `ids` in pages of 500 (far
/// below either backend's limit of parameters), returning every row; no statement for no ids.
pub async fn rows_by_ids(
    pool: &AnyPool,
    stmt: &MultiRow,
    ids: &[&str],
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    const IDS_PER_READ: usize = 500;
    let mut out = Vec::with_capacity(ids.len());
    for page in ids.chunks(IDS_PER_READ) {
        let sql = stmt.sql(page.len());
        let mut q = sqlx::query(&sql);
        for id in page {
            q = q.bind(*id);
        }
        out.extend(q.fetch_all(pool).await?);
    }
    Ok(out)
}
