//! `econsult demo`: a week of a practice lands in the database, the statistics agree with what
//! the demo did, and a second run changes nothing.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use econsult::demo::{ORG, Tally, seed};
use econsult::{Application, Config};
use econsult_proto::stats::v1 as spb;
use econsult_runtime::auth::TokenSpec;

/// Wednesday 11 March 2026, 11:00 Oslo: the demo week is 2 to 6 March (no holidays).
fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-11T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

fn config(env: &Env, dir: &tempfile::TempDir) -> Config {
    let mut config = Config::embedded(dir.path().to_path_buf());
    config.database_url = env.database_url.clone();
    config
}

async fn a_second_run_changes_nothing_and_the_statistics_agree(env: Env) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut out = Vec::new();
    let tally: Tally = seed(config(&env, &dir), now(), &mut out)
        .await
        .expect("demo")
        .expect("a first run seeds");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(tally.days, 5, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(" searches, ")).count(),
        5,
        "{text}"
    );
    assert!(tally.booked >= 5 * 8 - 5, "{tally:?}\n{text}");
    assert_eq!(tally.booked_by_phone, 10, "{tally:?}");
    assert_eq!(tally.video_held, 5, "{tally:?}");
    assert_eq!(tally.threads, 20, "{tally:?}");
    assert_eq!(tally.threads_closed, 15, "{tally:?}");
    assert!(tally.no_shows >= 1 && tally.attended > 20, "{tally:?}");
    assert!(
        text.contains(&format!("stats: {} contacts;", tally.contacts())),
        "{text}"
    );

    let mut again = Vec::new();
    let second = seed(config(&env, &dir), now(), &mut again)
        .await
        .expect("second run");
    assert_eq!(second, None, "{}", String::from_utf8_lossy(&again));
    assert!(String::from_utf8_lossy(&again).contains("is there already"));

    // A server on the same data (the real clock) answers what the demo did.
    let mut config = config(&env, &dir);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let app = Application::start(config).await.expect("start");
    let keys = econsult_runtime::auth::DevKeys::load_or_create(dir.path()).expect("keys");
    // The practice's own figures are exact (ops' leave out cells under 5).
    let ehr = keys
        .mint(
            &TokenSpec::Ehr {
                client_id: "epj-demo".into(),
                org_number: ORG.into(),
                scopes: vec!["econsult:stats.read".into()],
            },
            Utc::now().timestamp(),
            600,
        )
        .expect("mint");
    let mut stats =
        spb::stats_service_client::StatsServiceClient::new(channel_to(app.local_addr()).await);
    let filter = spb::Filter {
        from_date: "2026-03-02".into(),
        to_date: "2026-03-06".into(),
        org_number: ORG.into(),
        ..Default::default()
    };
    let rows = stats
        .get_contact_counts(authed(
            spb::GetContactCountsRequest {
                filter: Some(filter.clone()),
                granularity: spb::Granularity::Day as i32,
                group_by: vec![spb::Dimension::KprCategory as i32],
            },
            &ehr,
        ))
        .await
        .expect("contacts")
        .into_inner()
        .rows;
    let by = |category: &str| -> u64 {
        rows.iter()
            .filter(|r| r.kpr_category == category)
            .map(|r| r.count)
            .sum()
    };
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), tally.contacts());
    // Five days of one reception message (administrative) and one prescription renewal (1bd,
    // a simple contact, as is an attended phone appointment); the rest are consultations.
    assert_eq!(by("administrative"), 5, "{rows:?}");
    assert!(by("simple_contact") >= 5, "{rows:?}");
    assert!(by("e_consultation") >= 5 + 5, "text and video: {rows:?}");
    assert_eq!(
        by("consultation_in_person") + by("e_consultation") + by("simple_contact"),
        tally.contacts() - 5,
        "{rows:?}"
    );
    let video = stats
        .get_video_sessions(authed(
            spb::GetVideoSessionsRequest {
                filter: Some(filter.clone()),
            },
            &ehr,
        ))
        .await
        .expect("video")
        .into_inner();
    assert_eq!(video.held, u64::from(tally.video_held));
    let access = stats
        .get_booking_accessibility(authed(
            spb::GetBookingAccessibilityRequest {
                filter: Some(filter),
            },
            &ehr,
        ))
        .await
        .expect("accessibility")
        .into_inner();
    assert_eq!(access.no_shows, u64::from(tally.no_shows), "{access:?}");
    assert!(
        access.requests > 0 && access.within_target > 0,
        "{access:?}"
    );
    app.stop().await.expect("stop");
}

on_both_backends!(a_second_run_changes_nothing_and_the_statistics_agree);
