//! The web client in a real browser: Debian's headless Chromium, driven by
//! `web/tests/browser.mjs` (playwright-core), against the real server on a port, on both
//! backends. Needs `node`, `/usr/bin/chromium` and `web/node_modules` (`cd web && npm ci`);
//! without them the test says so and passes, except under `CI=true`, where it fails.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use econsult_proto::booking::v1 as bpb;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GP_SEED: u64 = 11;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("no node on PATH".into());
    }
    if !web_dir().join("node_modules/playwright-core").exists() {
        return Some("web/node_modules is missing (cd web && npm ci)".into());
    }
    None
}

fn slot_start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-03T09:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

async fn a_patient_and_a_gp_hold_a_video_consultation_in_chromium(env: Env) {
    if let Some(why) = missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "browser test cannot run in CI: {why}"
        );
        eprintln!("ignored: browser test skipped: {why}");
        return;
    }
    let backend = if env.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let app = TestApp::start_configured(env, monday_0800(), None).await;
    let nins = seed_gp(&app, ORG_A, "gp-browser", GP_SEED, 1).await;
    publish(
        &app,
        ORG_A,
        "gp-browser",
        &[slot_start()],
        bpb::Modality::Video,
    )
    .await;
    app.clock.set(slot_start() - chrono::Duration::minutes(5));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{backend}"));
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let base = format!("http://{}", app.addr);
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg("tests/browser.mjs")
            .current_dir(web_dir())
            .env("BASE", &base)
            .env("NIN", &nins[0])
            .env("HPR", format!("{}", 1_000_000 + GP_SEED))
            .env("ORG", ORG_A)
            .env("SHOTS", &shots)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends within 2 minutes")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "OK"),
        "browser run failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("browser run took {:?}", started.elapsed());
    for shot in ["patient-booking.png", "call-connected.png"] {
        let len = std::fs::metadata(shots.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 1000, "{shot} saved ({len} bytes)");
    }
    // The server's record, as the practice reads it: one held video session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let video = app
            .stats()
            .await
            .get_video_sessions(authed(
                econsult_proto::stats::v1::GetVideoSessionsRequest {
                    filter: Some(econsult_proto::stats::v1::Filter {
                        from_date: "2026-01-01".into(),
                        to_date: "2026-12-31".into(),
                        ..Default::default()
                    }),
                },
                &app.ehr_token(ORG_A),
            ))
            .await
            .expect("video sessions")
            .into_inner();
        if video.sessions == 1 {
            assert_eq!(video.held, 1, "{video:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GetVideoSessions never counted the session: {video:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.shutdown().await;
}

on_both_backends!(a_patient_and_a_gp_hold_a_video_consultation_in_chromium);

/// A page served by one server (B) calls the API of another (A) that lists B's origin, and
/// works; a page served by A calling B, which lists no origins, is refused by the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_works_only_when_its_origin_is_allowed() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "browser test cannot run in CI: {why}"
        );
        eprintln!("ignored: browser test skipped: {why}");
        return;
    }
    let port_b = free_port();
    let origin_b = format!("http://127.0.0.1:{port_b}");
    let allow_b: Tweak = std::sync::Arc::new(move |c: &mut econsult::Config| {
        c.cors_origins = vec![origin_b.clone()]
    });
    let on_port_b: Tweak = std::sync::Arc::new(move |c: &mut econsult::Config| {
        c.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port_b))
    });
    let a = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(allow_b)).await;
    let b = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(on_port_b)).await;
    let nins = seed_gp(&a, ORG_A, "gp-cors", 5, 1).await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg("tests/cross-origin.mjs")
            .current_dir(web_dir())
            .env(
                "ALLOWED_PAGE",
                format!("http://{}/?api=http://{}#pasient", b.addr, a.addr),
            )
            .env(
                "REFUSED_PAGE",
                format!("http://{}/?api=http://{}#pasient", a.addr, b.addr),
            )
            .env("NIN", &nins[0])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends within a minute")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "OK"),
        "browser run failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    a.shutdown().await;
    b.shutdown().await;
}
