//! Read-only lookups of consultation data for the other services (notify). All services share
//! one database, so this is a plain query (its statement is in the store); every lookup reads
//! through the connection it is given (a consumer's transaction, or a pooled connection).

use sqlx::AnyConnection;

/// The patient (identity number) of thread `thread_id`, if the thread is stored: consultation
/// events name the thread, not the patient.
pub async fn thread_patient(
    conn: &mut AnyConnection,
    thread_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    crate::store::thread_patient(conn, thread_id).await
}
