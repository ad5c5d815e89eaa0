//! Integrity of the access log and of the append-only tables, through the real server, on
//! SQLite and on PostgreSQL + Redis.

mod common;

use common::*;
use econsult_proto::consultation::v1 as cpb;
use econsult_runtime::db::{Backend, Db};

fn png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend(0..64u8);
    v
}

/// Starts a consultation with one attachment: a row in each consultation table.
async fn thread_with_attachment(app: &TestApp, nin: &str) {
    app.consultation()
        .await
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "Rash".into(),
                body: "a rash".into(),
                attachments: vec![cpb::NewAttachment {
                    file_name: "rash.png".into(),
                    content_type: "image/png".into(),
                    content: png(),
                }],
                urgent: false,
                language: String::new(),
                idempotency_key: key(),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("start consultation");
}

/// Runs `sql` in a transaction of its own and rolls it back; true if the database refused it.
async fn refused(db: &Db, sql: &str) -> bool {
    let mut tx = db.begin().await.expect("begin");
    let refused = sqlx::query(sql).execute(&mut *tx).await.is_err();
    let _ = tx.rollback().await;
    refused
}

async fn append_only_tables_refuse_truncate_update_and_delete(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 31, 1).await;
    thread_with_attachment(&app, &nins[0]).await;
    let db = app.platform().db.clone();
    for table in [
        "audit_log",
        "consultation_threads",
        "consultation_messages",
        "consultation_attachments",
    ] {
        if db.backend() == Backend::Postgres {
            assert!(
                refused(&db, &format!("TRUNCATE {table} CASCADE")).await,
                "TRUNCATE {table} went through"
            );
        }
        assert!(
            refused(&db, &format!("DELETE FROM {table}")).await,
            "DELETE FROM {table} went through"
        );
    }
    assert!(
        refused(
            &db,
            "UPDATE consultation_attachments SET file_name = 'x.png'"
        )
        .await,
        "an attachment was changed"
    );
    app.shutdown().await;
}

on_both_backends!(append_only_tables_refuse_truncate_update_and_delete);
