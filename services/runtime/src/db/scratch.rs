//! Scratch PostgreSQL databases: the tests, the load generator and its pgbench baseline each
//! work in a database of their own next to the admin one.

use sqlx::Executor as _;

/// `url` (a PostgreSQL URL) with its database name replaced by `db`, query kept: tests and the
/// load generator create a scratch database per run next to the admin one.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Creates the PostgreSQL database `name` on the server of `admin_url` and returns its URL (the
/// tests, the load generator and its pgbench baseline work in a scratch database each).
pub async fn create_database(admin_url: &str, name: &str) -> Result<String, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(admin_url).await?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let _ = sqlx::Connection::close(conn).await;
    Ok(with_database(admin_url, name))
}

/// Drops the PostgreSQL database `name` on the server of `admin_url`, ending its connections;
/// best effort (a scratch database that cannot be dropped is left behind, not an error).
pub async fn drop_database(admin_url: &str, name: &str) {
    sqlx::any::install_default_drivers();
    if let Ok(mut conn) = <sqlx::AnyConnection as sqlx::Connection>::connect(admin_url).await {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
        let _ = sqlx::Connection::close(conn).await;
    }
}

/// [`drop_database`] from synchronous code (a `Drop` impl, possibly on a runtime's thread): on a
/// thread and runtime of its own, waiting until it is done.
pub fn drop_database_blocking(admin_url: String, name: String) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(drop_database(&admin_url, &name));
        }
    })
    .join();
}
