//! Integrity of the access log and of the append-only tables, through the real server, on
//! SQLite and on PostgreSQL + Redis.

mod common;

use common::*;
use econsult_proto::audit::v1 as apb;
use econsult_proto::audit::v1::audit_service_client::AuditServiceClient;
use econsult_proto::booking::v1 as bpb;
use econsult_proto::consultation::v1 as cpb;
use econsult_runtime::audit;
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
                booking_request_id: String::new(),
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

/// Reads the patient's own log `n` times: `n` rows in the access log.
async fn read_own_log(app: &TestApp, nin: &str, n: usize) {
    let mut c = AuditServiceClient::new(app.channel().await);
    for _ in 0..n {
        c.list_my_access_log(authed(
            apb::ListMyAccessLogRequest {
                before_id: 0,
                limit: 10,
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("own log");
    }
}

/// Changes a stored row as a privileged connection could (triggers out of the way).
async fn tamper(db: &Db, id: i64) {
    let mut tx = db.begin().await.expect("begin");
    match db.backend() {
        // The table's owner may switch its triggers off (a superuser could also skip them
        // with session_replication_role; CI's role is not one).
        Backend::Postgres => {
            sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER")
                .execute(&mut *tx)
                .await
                .expect("disable triggers");
        }
        Backend::Sqlite => {
            sqlx::query("DROP TRIGGER audit_log_no_update")
                .execute(&mut *tx)
                .await
                .expect("drop trigger");
        }
    }
    sqlx::query("UPDATE audit_log SET subject = 'someone-else' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("tamper");
    if db.backend() == Backend::Postgres {
        sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER")
            .execute(&mut *tx)
            .await
            .expect("enable triggers");
    }
    tx.commit().await.expect("commit");
}

async fn the_hash_chain_finds_the_first_changed_row(env: Env) {
    let app = TestApp::start(env).await;
    let nin = econsult_runtime::nin::synthetic(7).as_str().to_owned();
    read_own_log(&app, &nin, 5).await;
    let db = app.platform().db.clone();
    audit::seal(&db, 1000).await.expect("seal");
    let ok = audit::verify(&db, |_| {}).await.expect("verify");
    assert!(ok.broken.is_none(), "{ok:?}");
    assert!(ok.rows >= 5, "{ok:?}");

    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_log ORDER BY id")
        .fetch_all(db.read())
        .await
        .expect("ids");
    tamper(&db, ids[2]).await;
    read_own_log(&app, &nin, 2).await;
    audit::seal(&db, 1000).await.expect("seal");
    let bad = audit::verify(&db, |_| {}).await.expect("verify");
    let broken = bad.broken.expect("a broken link");
    assert_eq!(broken.id, ids[2] as u64, "{broken:?}");
    app.shutdown().await;
}

async fn entries(app: &TestApp, patient: &str) -> Vec<apb::AccessLogEntry> {
    AuditServiceClient::new(app.channel().await)
        .list_access_log(authed(
            apb::ListAccessLogRequest {
                patient_nin: patient.into(),
                subject: String::new(),
                before_id: 0,
                limit: 500,
            },
            &app.ops_token(),
        ))
        .await
        .expect("ops log")
        .into_inner()
        .entries
}

async fn ops_reads_replays_and_request_ids_are_logged(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 32, 0).await;
    assert!(nins.is_empty());
    let nin = econsult_runtime::nin::synthetic(3_200_001)
        .as_str()
        .to_owned();

    // A mutating call and its replay: two rows.
    let mut c = app.booking().await;
    let req = bpb::UpdateListRequest {
        gp_id: "gp-1".into(),
        add: vec![nin.clone()],
        remove: vec![],
        idempotency_key: key(),
    };
    for _ in 0..2 {
        c.update_list(authed(req.clone(), &app.ehr_token(ORG_A)))
            .await
            .expect("update list");
    }
    let first = entries(&app, &nin).await;
    let list_rows: Vec<_> = first
        .iter()
        .filter(|e| e.action.ends_with("/UpdateList"))
        .collect();
    assert_eq!(list_rows.len(), 2, "{first:?}");

    // The ops read itself is logged, as a read of that patient's log.
    let second = entries(&app, &nin).await;
    let ops_reads: Vec<_> = second
        .iter()
        .filter(|e| e.action.ends_with("/ListAccessLog"))
        .collect();
    assert_eq!(ops_reads.len(), 1, "{second:?}");

    // The request id is the server's, one per call, whatever the client's traceparent says.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut own = AuditServiceClient::new(app.channel().await);
    for _ in 0..2 {
        let mut r = authed(
            apb::ListMyAccessLogRequest {
                before_id: 0,
                limit: 1,
            },
            &app.patient_token(&nin),
        );
        r.metadata_mut().insert(
            "traceparent",
            format!("00-{client_trace}-00f067aa0ba902b7-01")
                .parse()
                .expect("header"),
        );
        own.list_my_access_log(r).await.expect("own log");
    }
    let third = entries(&app, &nin).await;
    let mine: Vec<_> = third
        .iter()
        .filter(|e| e.action.ends_with("/ListMyAccessLog"))
        .collect();
    assert_eq!(mine.len(), 2, "{third:?}");
    for e in &mine {
        assert_eq!(e.request_id.len(), 32, "{e:?}");
        assert_ne!(e.request_id, client_trace);
    }
    assert_ne!(mine[0].request_id, mine[1].request_id);
    app.shutdown().await;
}

/// A NUL byte in a filter of the log is refused naming the field (PostgreSQL answered
/// INTERNAL, and the ops read's own log row would have stored it).
async fn a_nul_byte_in_a_log_filter_is_refused(env: Env) {
    let app = TestApp::start(env).await;
    let err = AuditServiceClient::new(app.channel().await)
        .list_access_log(authed(
            apb::ListAccessLogRequest {
                patient_nin: String::new(),
                subject: "someone\0".into(),
                before_id: 0,
                limit: 10,
            },
            &app.ops_token(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("subject"), "{err:?}");
    app.shutdown().await;
}

on_both_backends!(
    a_nul_byte_in_a_log_filter_is_refused,
    append_only_tables_refuse_truncate_update_and_delete,
    the_hash_chain_finds_the_first_changed_row,
    ops_reads_replays_and_request_ids_are_logged,
);
