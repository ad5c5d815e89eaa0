//! A CLIENT span for every SQL statement, per the OpenTelemetry database conventions.
//!
//! sqlx reports each statement when it finishes, as an event (target `sqlx::query`, level
//! debug) with its text and duration; [`StatementSpans`] turns that event into a span of the
//! statement's duration, ending now, under the span the statement ran in. The span is named
//! `<operation> <table>` (`SELECT booking_slots`) and carries `db.system.name`,
//! `db.operation.name`, `db.collection.name` and the rows returned or affected: the text is
//! ours (placeholders only), but no text and no bound value goes out, only those names.

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

static DB_SYSTEM: OnceLock<&'static str> = OnceLock::new();

/// Records which database the process uses (`postgresql` or `sqlite`), for `db.system.name`.
pub fn set_system(system: &'static str) {
    let _ = DB_SYSTEM.set(system);
}

/// See the module doc.
pub struct StatementSpans {
    tracer: opentelemetry_sdk::trace::Tracer,
}

impl StatementSpans {
    /// Statement spans made by `tracer`.
    pub fn new(tracer: opentelemetry_sdk::trace::Tracer) -> Self {
        Self { tracer }
    }
}

#[derive(Default)]
struct Statement {
    summary: String,
    text: String,
    elapsed_secs: f64,
    rows_returned: i64,
    rows_affected: i64,
}

impl Visit for Statement {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_owned(),
            "db.statement" => self.text = value.to_owned(),
            _ => {}
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = value;
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        let v = i64::try_from(value).unwrap_or(i64::MAX);
        match field.name() {
            "rows_returned" => self.rows_returned = v,
            "rows_affected" => self.rows_affected = v,
            _ => {}
        }
    }
    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

/// What a statement does, by names only: its operation and first table, and a summary of
/// every write it makes (a data-modifying CTE writes too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The first write's operation (`INSERT`, `UPDATE`, `DELETE`), else the statement's own
    /// first keyword (`SELECT`, `BEGIN`, ...).
    pub operation: String,
    /// The table of that operation, lower case, or "".
    pub table: String,
    /// `INSERT idempotency, UPDATE booking_slots`: every write in order, or the operation and
    /// table of a read.
    pub summary: String,
}

/// Summarises `sql` (see [`Summary`]).
pub fn summarize(sql: &str) -> Summary {
    let spaced = sql
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace(',', " , ");
    let words: Vec<String> = spaced
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let table_at = |i: usize| -> String {
        words
            .get(i)
            .map(|w| {
                w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .to_ascii_lowercase()
            })
            .unwrap_or_default()
    };
    let mut writes: Vec<(String, String)> = Vec::new();
    let mut first_read: Option<String> = None;
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).map(String::as_str);
        match (w.as_str(), next) {
            ("INSERT", Some("INTO")) => writes.push(("INSERT".into(), table_at(i + 2))),
            ("DELETE", Some("FROM")) => writes.push(("DELETE".into(), table_at(i + 2))),
            // `DO UPDATE SET` of an upsert is not a second write.
            ("UPDATE", Some(n)) if n != "SET" => writes.push(("UPDATE".into(), table_at(i + 1))),
            ("FROM", Some(n)) if first_read.is_none() && n != "(" => {
                first_read = Some(table_at(i + 1))
            }
            _ => {}
        }
    }
    if let Some((operation, table)) = writes.first().cloned() {
        let mut summary = Vec::new();
        for (op, t) in &writes {
            let item = format!("{op} {t}");
            if !summary.contains(&item) {
                summary.push(item);
            }
        }
        return Summary {
            operation,
            table,
            summary: summary.join(", "),
        };
    }
    let operation = words
        .iter()
        .find(|w| w.as_str() != "WITH" && w.as_str() != "(")
        .filter(|_| words.first().is_some_and(|w| w != "WITH"))
        .cloned()
        .unwrap_or_else(|| "SELECT".to_owned());
    let table = first_read.unwrap_or_default();
    let summary = if table.is_empty() {
        operation.clone()
    } else {
        format!("{operation} {table}")
    };
    Summary {
        operation,
        table,
        summary,
    }
}

impl<S> tracing_subscriber::Layer<S> for StatementSpans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        // The OpenTelemetry layer activates a span's context while it is entered, and sqlx
        // reports a statement inside the span it ran in (a layer cannot ask the dispatcher
        // for the current span from here: it is busy with this event).
        let parent = opentelemetry::Context::current();
        if !parent.span().span_context().is_valid() {
            // A statement outside any call (a background task's poll): not worth a trace.
            return;
        }
        let mut st = Statement::default();
        event.record(&mut st);
        // sqlx gives the whole text only when the summary (first four words) is not all of it.
        let sql = if st.text.trim().is_empty() {
            st.summary.as_str()
        } else {
            st.text.as_str()
        };
        let Summary {
            operation,
            table,
            summary,
        } = summarize(sql);
        let end = SystemTime::now();
        let start = end - Duration::from_secs_f64(st.elapsed_secs.max(0.0));
        let mut attrs = vec![
            KeyValue::new(
                "db.system.name",
                DB_SYSTEM.get().copied().unwrap_or("other_sql"),
            ),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("db.query.summary", summary.clone()),
            KeyValue::new("db.response.returned_rows", st.rows_returned),
            KeyValue::new("econsult.db.rows_affected", st.rows_affected),
        ];
        if !table.is_empty() {
            attrs.push(KeyValue::new("db.collection.name", table));
        }
        let name = summary;
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
    }
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn a_statement_is_named_by_what_it_writes_or_reads() {
        let cases = [
            (
                "SELECT a FROM booking_slots WHERE x = $1",
                "SELECT",
                "booking_slots",
                "SELECT booking_slots",
            ),
            (
                "INSERT INTO outbox (a) VALUES ($1)",
                "INSERT",
                "outbox",
                "INSERT outbox",
            ),
            (
                "UPDATE booking_slots SET a = $1",
                "UPDATE",
                "booking_slots",
                "UPDATE booking_slots",
            ),
            (
                "DELETE FROM idempotency WHERE k = $1",
                "DELETE",
                "idempotency",
                "DELETE idempotency",
            ),
            (
                "WITH claim AS (INSERT INTO idempotency (k) VALUES ($1) ON CONFLICT (k) DO NOTHING RETURNING 1 AS one) \
                 UPDATE booking_slots SET held = 1 WHERE EXISTS (SELECT 1 FROM claim)",
                "INSERT",
                "idempotency",
                "INSERT idempotency, UPDATE booking_slots",
            ),
            (
                "INSERT INTO stats_daily (a, n) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET n = stats_daily.n + 1",
                "INSERT",
                "stats_daily",
                "INSERT stats_daily",
            ),
            (
                "WITH d0 AS (INSERT INTO outbox (a) VALUES ($1)), d1 AS (INSERT INTO audit_log (b) VALUES ($2)) SELECT 1",
                "INSERT",
                "outbox",
                "INSERT outbox, INSERT audit_log",
            ),
            (
                "SELECT count(*) FROM (SELECT seq FROM outbox) AS r",
                "SELECT",
                "outbox",
                "SELECT outbox",
            ),
            ("BEGIN", "BEGIN", "", "BEGIN"),
            ("  commit  ", "COMMIT", "", "COMMIT"),
        ];
        for (sql, op, table, summary) in cases {
            let s = summarize(sql);
            assert_eq!(
                (s.operation.as_str(), s.table.as_str(), s.summary.as_str()),
                (op, table, summary),
                "{sql}"
            );
        }
    }
}
