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
    econsult_consultation::structure::samples::png(64)
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
    // The owner: the triggers refuse (the service role is refused before them, by its grants).
    let db = app.env.owner_db(&app).await;
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
    owner_rewrite(
        db,
        &["UPDATE audit_log SET subject = 'someone-else' WHERE id = $1"],
        id,
    )
    .await;
}

async fn the_hash_chain_finds_the_first_changed_row(env: Env) {
    let app = TestApp::start(env).await;
    let nin = econsult_runtime::nin::synthetic(7).as_str().to_owned();
    read_own_log(&app, &nin, 5).await;
    let db = app.env.owner_db(&app).await;
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

// ── who, what and why (Normen) ────────────────────────────────────────────────────────────────

const HPR_A: &str = "7100001";
const HPR_B: &str = "7100002";

/// A clinician of `org` with `hpr`, named by HelseID's name claims, who may read and write
/// consultations.
fn clinician(app: &TestApp, hpr: &str, org: &str) -> String {
    app.mint_with(
        econsult_runtime::auth::TokenSpec::Clinician {
            hpr_number: hpr.into(),
            org_number: org.into(),
            scopes: vec![
                "econsult:consultation.read".into(),
                "econsult:consultation.write".into(),
            ],
        },
        |c| {
            c.given_name = Some("Lege".into());
            c.family_name = Some(format!("Nr{hpr}"));
        },
    )
}

/// A patient of a GP of ORG_A with a thread about "Sore throat": (patient, thread id).
async fn patient_with_thread(app: &TestApp, seed: u64) -> (String, String) {
    let nins = seed_gp(app, ORG_A, "gp-1", seed, 1).await;
    let t = app
        .consultation()
        .await
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "Sore throat".into(),
                body: "it hurts to swallow".into(),
                attachments: vec![],
                urgent: false,
                language: String::new(),
                idempotency_key: key(),
                booking_request_id: String::new(),
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("start consultation")
        .into_inner()
        .thread
        .expect("thread");
    (nins[0].clone(), t.thread_id)
}

fn get_thread(thread_id: &str) -> cpb::GetThreadRequest {
    cpb::GetThreadRequest {
        thread_id: thread_id.into(),
        after_seq: 0,
        page_size: 10,
    }
}

/// The patient's own log, newest first.
async fn my_log(app: &TestApp, nin: &str) -> Vec<apb::AccessLogEntry> {
    AuditServiceClient::new(app.channel().await)
        .list_my_access_log(authed(
            apb::ListMyAccessLogRequest {
                before_id: 0,
                limit: 500,
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("own log")
        .into_inner()
        .entries
}

fn by_action<'a>(log: &'a [apb::AccessLogEntry], rpc: &str) -> Vec<&'a apb::AccessLogEntry> {
    log.iter().filter(|e| e.action.ends_with(rpc)).collect()
}

async fn a_clinician_read_shows_who_which_organisation_what_and_why(env: Env) {
    let app = TestApp::start(env).await;
    let (nin, thread) = patient_with_thread(&app, 41).await;
    let mut req = authed(get_thread(&thread), &clinician(&app, HPR_A, ORG_A));
    req.metadata_mut()
        .insert("x-purpose", "quality-assurance".parse().expect("header"));
    app.consultation()
        .await
        .get_thread(req)
        .await
        .expect("clinician reads the thread");

    let log = my_log(&app, &nin).await;
    let reads = by_action(&log, "/GetThread");
    assert_eq!(reads.len(), 1, "{log:?}");
    let e = reads[0];
    assert_eq!(e.role, apb::CallerRole::Clinician as i32);
    assert_eq!(e.actor_name, clinician_name(HPR_A));
    assert_eq!(e.actor_hpr, HPR_A);
    assert_eq!(e.org_number, ORG_A);
    assert_eq!(e.purpose, apb::Purpose::QualityAssurance as i32);
    assert_eq!(e.description, "read your e-consultation 'Sore throat'");
    assert!(e.at.is_some());
    assert!(e.system.is_empty(), "{e:?}");
    // The patient's own reads are their own access.
    let own = by_action(&log, "/ListMyAccessLog");
    assert!(
        own.iter()
            .all(|o| o.purpose == apb::Purpose::OwnAccess as i32),
        "{own:?}"
    );

    // Operations see the access, but not the patient's words.
    let ops = entries(&app, &nin).await;
    let seen = by_action(&ops, "/GetThread");
    assert_eq!(seen.len(), 1, "{ops:?}");
    assert_eq!(seen[0].description, "read your e-consultation");
    assert_eq!(seen[0].actor_name, clinician_name(HPR_A));

    // The new columns are in the hash chain: changing the subject a row names breaks it.
    let db = app.env.owner_db(&app).await;
    audit::seal(&db, 1000).await.expect("seal");
    let ok = audit::verify(&db, |_| {}).await.expect("verify");
    assert!(ok.broken.is_none(), "{ok:?}");
    tamper_column(&db, e.id as i64, "what_subject").await;
    let bad = audit::verify(&db, |_| {}).await.expect("verify");
    assert_eq!(bad.broken.as_ref().map(|b| b.id), Some(e.id), "{bad:?}");
    app.shutdown().await;
}

async fn an_ehr_call_shows_the_system_and_the_person_it_acted_for(env: Env) {
    let app = TestApp::start(env).await;
    let (nin, thread) = patient_with_thread(&app, 42).await;
    let mut c = app.consultation().await;
    // The shared helper names the acting person and the purpose.
    c.get_thread(authed(get_thread(&thread), &app.ehr_token(ORG_A)))
        .await
        .expect("EHR reads the thread");
    // A name beyond ASCII goes in the binary header.
    let mut req = authed_bare(get_thread(&thread), &app.ehr_token(ORG_A));
    req.metadata_mut()
        .insert("x-purpose", "administration".parse().expect("header"));
    req.metadata_mut().insert_bin(
        "x-acting-name-bin",
        tonic::metadata::MetadataValue::from_bytes("Åse Ødegård".as_bytes()),
    );
    c.get_thread(req)
        .await
        .expect("EHR reads with a UTF-8 name");

    let log = my_log(&app, &nin).await;
    let reads = by_action(&log, "/GetThread");
    assert_eq!(reads.len(), 2, "{log:?}");
    let (second, first) = (reads[0], reads[1]);
    for e in [first, second] {
        assert_eq!(e.role, apb::CallerRole::Ehr as i32);
        assert_eq!(e.system, ehr_system_name(ORG_A));
        assert_eq!(e.subject, format!("epj-{ORG_A}"));
        assert_eq!(e.org_number, ORG_A);
        assert_eq!(e.description, "read your e-consultation 'Sore throat'");
    }
    assert_eq!(first.actor_name, econsult_runtime::auth::DEV_ACTING_NAME);
    assert_eq!(first.actor_hpr, econsult_runtime::auth::DEV_ACTING_HPR);
    assert_eq!(first.purpose, apb::Purpose::Treatment as i32);
    assert_eq!(second.actor_name, "Åse Ødegård");
    assert_eq!(second.actor_hpr, "");
    assert_eq!(second.purpose, apb::Purpose::Administration as i32);

    // Without the acting person the read is refused, naming the header, and not logged.
    let mut req = authed_bare(get_thread(&thread), &app.ehr_token(ORG_A));
    req.metadata_mut()
        .insert("x-purpose", "treatment".parse().expect("header"));
    let err = c.get_thread(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("x-acting-name"), "{err:?}");
    assert_eq!(by_action(&my_log(&app, &nin).await, "/GetThread").len(), 2);
    app.shutdown().await;
}

async fn a_practice_read_outside_an_assigned_thread_needs_a_purpose(env: Env) {
    let app = TestApp::start(env).await;
    let (nin, thread) = patient_with_thread(&app, 43).await;
    let mut c = app.consultation().await;
    let a = clinician(&app, HPR_A, ORG_A);
    let b = clinician(&app, HPR_B, ORG_A);

    // Not assigned to anyone: a read without x-purpose is refused and nothing is returned.
    let err = c
        .get_thread(authed_bare(get_thread(&thread), &a))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("x-purpose"), "{err:?}");
    let err = c
        .list_inbox(authed_bare(
            cpb::ListInboxRequest {
                gp_id: String::new(),
                include_done: false,
                page_size: 10,
                page_token: String::new(),
            },
            &a,
        ))
        .await
        .unwrap_err();
    assert!(err.message().contains("x-purpose"), "{err:?}");

    // Taking the thread is care by its nature; then it is the practitioner's own thread.
    c.claim_thread(authed_bare(
        cpb::ClaimThreadRequest {
            thread_id: thread.clone(),
            clinician_hpr_number: String::new(),
            idempotency_key: key(),
        },
        &a,
    ))
    .await
    .expect("claim");
    c.get_thread(authed_bare(get_thread(&thread), &a))
        .await
        .expect("the assignee reads their own thread");
    // Another clinician of the practice still needs a purpose.
    let err = c
        .get_thread(authed_bare(get_thread(&thread), &b))
        .await
        .unwrap_err();
    assert!(err.message().contains("x-purpose"), "{err:?}");

    let log = my_log(&app, &nin).await;
    let claims = by_action(&log, "/ClaimThread");
    assert_eq!(claims.len(), 1, "{log:?}");
    assert_eq!(claims[0].purpose, apb::Purpose::Treatment as i32);
    assert_eq!(
        claims[0].description,
        "took on your e-consultation 'Sore throat'"
    );
    let reads = by_action(&log, "/GetThread");
    assert_eq!(reads.len(), 1, "only the assignee's read happened: {log:?}");
    assert_eq!(reads[0].actor_hpr, HPR_A);
    assert_eq!(reads[0].purpose, apb::Purpose::Treatment as i32);
    app.shutdown().await;
}

async fn an_ops_read_of_the_log_is_in_the_patients_log(env: Env) {
    let app = TestApp::start(env).await;
    let nin = econsult_runtime::nin::synthetic(4_400_001)
        .as_str()
        .to_owned();
    entries(&app, &nin).await;
    let log = my_log(&app, &nin).await;
    let ops = by_action(&log, "/ListAccessLog");
    assert_eq!(ops.len(), 1, "{log:?}");
    assert_eq!(ops[0].role, apb::CallerRole::Ops as i32);
    assert_eq!(ops[0].subject, "ops-1");
    assert_eq!(ops[0].purpose, apb::Purpose::Operations as i32);
    assert_eq!(ops[0].description, "read your access log (operations)");
    app.shutdown().await;
}

/// Sets `column` of row `id` to 'x' as a privileged connection could (triggers out of the way).
async fn tamper_column(db: &Db, id: i64, column: &str) {
    owner_rewrite(
        db,
        &[&format!(
            "UPDATE audit_log SET {column} = 'x' WHERE id = $1"
        )],
        id,
    )
    .await;
}

/// The chain alone cannot show a rewrite by someone who recomputes it; the head the sealer
/// logged earlier can.
async fn a_rechained_log_passes_the_walk_but_not_its_logged_head(env: Env) {
    let app = TestApp::start(env).await;
    let nin = econsult_runtime::nin::synthetic(9).as_str().to_owned();
    read_own_log(&app, &nin, 5).await;
    let db = app.env.owner_db(&app).await;
    audit::seal(&db, 1000).await.expect("seal");
    let logged = audit::head(&db).await.expect("head").expect("a head");
    let line = format!(
        "2026-03-02T07:00:01Z  INFO econsult::audit::anchor: audit chain head chain_seq={} hash={}",
        logged.chain_seq, logged.hash
    );
    let anchors = audit::parse_anchors(&line);
    assert_eq!(anchors, std::slice::from_ref(&logged));
    assert_eq!(
        audit::verify_anchors(&db, &anchors).await.expect("check"),
        None
    );

    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_log ORDER BY id")
        .fetch_all(db.read())
        .await
        .expect("ids");
    rewrite_and_rechain(&db, ids[1]).await;
    let walked = audit::verify(&db, |_| {}).await.expect("verify");
    assert!(
        walked.broken.is_none(),
        "the rechained walk passes: {walked:?}"
    );
    let (at, why) = audit::verify_anchors(&db, &anchors)
        .await
        .expect("check")
        .expect("the logged head disagrees");
    assert_eq!(at, logged);
    assert!(why.contains("rewritten"), "{why}");
    app.shutdown().await;
}

/// Runs `sql` in a transaction of its own and rolls it back; true if PostgreSQL refused it for
/// want of rights (insufficient_privilege: not granted, or not the owner), not by a trigger.
async fn refused_by_rights(db: &Db, sql: &str) -> bool {
    let mut tx = db.begin().await.expect("begin");
    let result = sqlx::query(sql).execute(&mut *tx).await;
    let _ = tx.rollback().await;
    match result {
        Ok(_) => false,
        Err(e) => {
            let code = e
                .as_database_error()
                .and_then(|d| d.code().map(|c| c.into_owned()));
            assert_eq!(code.as_deref(), Some("42501"), "{sql}: {e}");
            true
        }
    }
}

/// The server's own role (CI runs every PostgreSQL test so: migrations by the owner, the
/// server as a role with `econsult migrate --grant-to`'s grants) cannot take the access log's
/// protection away or rewrite append-only rows, and can still do its work: append, seal, read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_service_role,
    ignore = "needs TEST_DATABASE_URL, TEST_REDIS_URL and TEST_SERVICE_DATABASE_URL"
)]
async fn postgres_service_role_cannot_undo_the_append_only_protection() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    assert!(env.service_role, "TEST_SERVICE_DATABASE_URL is not set");
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 31, 1).await;
    thread_with_attachment(&app, &nins[0]).await;
    read_own_log(&app, &nins[0], 3).await;
    let db = app.platform().db.clone();
    for sql in [
        "ALTER TABLE audit_log DISABLE TRIGGER USER",
        "DROP TRIGGER audit_log_no_change ON audit_log",
        "DROP TABLE consultation_messages",
        "UPDATE audit_log SET subject = 'someone-else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "UPDATE consultation_messages SET body = 'x'",
        "DELETE FROM consultation_attachments",
        "DELETE FROM consultation_threads",
        "TRUNCATE outbox",
        "CREATE TABLE mine (a int)",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'x', true, '\\x00', 0)",
    ] {
        assert!(
            refused_by_rights(&db, sql).await,
            "the service role may: {sql}"
        );
    }
    // What it must do still works: the calls above appended rows, and it seals them.
    audit::seal(&db, 1000)
        .await
        .expect("the service role seals");
    let ok = audit::verify(&db, |_| {}).await.expect("verify");
    assert!(ok.broken.is_none() && ok.rows >= 3, "{ok:?}");
    app.shutdown().await;
}

on_both_backends!(
    a_nul_byte_in_a_log_filter_is_refused,
    append_only_tables_refuse_truncate_update_and_delete,
    the_hash_chain_finds_the_first_changed_row,
    ops_reads_replays_and_request_ids_are_logged,
    a_clinician_read_shows_who_which_organisation_what_and_why,
    an_ehr_call_shows_the_system_and_the_person_it_acted_for,
    a_practice_read_outside_an_assigned_thread_needs_a_purpose,
    an_ops_read_of_the_log_is_in_the_patients_log,
    a_rechained_log_passes_the_walk_but_not_its_logged_head,
);
