//! County and municipality-size levels, and small-cell suppression as a property of the data:
//! an adversary with ops' access tries to recover a known small cell (3 e-consultations of one
//! GP in one municipality on one day) by every combination of calls it can make. Both backends.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use econsult_proto::booking::v1 as pb;
use econsult_proto::consultation::v1 as cpb;
use econsult_proto::stats::v1 as spb;
use spb::{Dimension as D, Granularity as G};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ORG_C: &str = "930000003";
/// The hidden cell: gp-bergen's e-consultations on 3 March.
const SECRET: u64 = 3;
const DAYS: [&str; 3] = ["2026-03-02", "2026-03-03", "2026-03-04"];

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// One text e-consultation of `nin`, answered and closed by `org` on the clock's day.
async fn e_consultation(app: &TestApp, org: &str, nin: &str) {
    let mut c = app.consultation().await;
    let id = c
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "Question".into(),
                body: "Body".into(),
                attachments: vec![],
                urgent: false,
                language: String::new(),
                idempotency_key: key(),
                booking_request_id: String::new(),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("start")
        .into_inner()
        .thread
        .expect("thread")
        .thread_id;
    let ehr = app.ehr_token(org);
    c.reply(authed(
        cpb::ReplyRequest {
            thread_id: id.clone(),
            body: "Answer".into(),
            clinician_hpr_number: "1000001".into(),
            idempotency_key: key(),
            ..Default::default()
        },
        &ehr,
    ))
    .await
    .expect("reply");
    c.close_consultation(authed(
        cpb::CloseConsultationRequest {
            thread_id: id,
            outcome: "answered".into(),
            tariff_code: String::new(),
            idempotency_key: key(),
        },
        &ehr,
    ))
    .await
    .expect("close");
}

/// What a query narrows to (empty = all).
#[derive(Debug, Clone, Copy, Default)]
struct Narrow {
    org: &'static str,
    gp: &'static str,
    municipality: &'static str,
    county: &'static str,
    band: &'static str,
}

impl Narrow {
    fn filter(self, from: &str, to: &str) -> Option<spb::Filter> {
        Some(spb::Filter {
            from_date: from.into(),
            to_date: to.into(),
            org_number: self.org.into(),
            municipality_number: self.municipality.into(),
            gp_id: self.gp.into(),
            county_number: self.county.into(),
            size_band: self.band.into(),
        })
    }
}

/// The stats client (one connection; clones share it).
type Client = spb::stats_service_client::StatsServiceClient<tonic::transport::Channel>;

async fn counts(
    s: &Client,
    token: &str,
    (from, to): (&str, &str),
    g: G,
    by: &[D],
    n: Narrow,
) -> Vec<spb::ContactCountRow> {
    s.clone()
        .get_contact_counts(authed(
            spb::GetContactCountsRequest {
                filter: n.filter(from, to),
                granularity: g as i32,
                group_by: by.iter().map(|d| *d as i32).collect(),
            },
            token,
        ))
        .await
        .expect("contact counts")
        .into_inner()
        .rows
}

/// The one count of a query whose rows all fall in one cell (0 when there is none).
async fn total(s: &Client, token: &str, range: (&str, &str), n: Narrow) -> u64 {
    let rows = counts(s, token, range, G::Month, &[D::KprCategory], n).await;
    assert!(rows.len() <= 1, "{rows:?}");
    rows.iter().map(|r| r.count).sum()
}

/// Seeds three municipalities in two counties and two size bands and closes e-consultations:
///   0301 Oslo (county 03; 5 000 persons on lists: band 5000_19999), gp-oslo of ORG_A:
///     10 on 2 March, 5 on 3 March, 5 on 4 March;
///   4601 (county 46; under 5 000), gp-bergen of ORG_B: 5, **3**, 5;
///   4602 (county 46; under 5 000), gp-kinn of ORG_C: 10 on 3 March.
/// Every cell but the secret is a multiple of 5.
async fn seed(app: &TestApp) {
    let oslo = seed_gp_in(
        app,
        ORG_A,
        "gp-oslo",
        "0301",
        41,
        2500,
        pb::ListStatus::Staffed,
    )
    .await;
    seed_gp_in(
        app,
        ORG_A,
        "gp-oslo-2",
        "0301",
        42,
        2500,
        pb::ListStatus::Vacant,
    )
    .await;
    let bergen = seed_gp_in(
        app,
        ORG_B,
        "gp-bergen",
        "4601",
        43,
        13,
        pb::ListStatus::Staffed,
    )
    .await;
    let kinn = seed_gp_in(
        app,
        ORG_C,
        "gp-kinn",
        "4602",
        44,
        10,
        pb::ListStatus::Staffed,
    )
    .await;
    let plan: [(&str, &str, &[String]); 7] = [
        (DAYS[0], ORG_A, &oslo[0..10]),
        (DAYS[0], ORG_B, &bergen[0..5]),
        (DAYS[1], ORG_A, &oslo[10..15]),
        (DAYS[1], ORG_B, &bergen[5..8]),
        (DAYS[1], ORG_C, &kinn[..]),
        (DAYS[2], ORG_A, &oslo[15..20]),
        (DAYS[2], ORG_B, &bergen[8..13]),
    ];
    for (day, org, nins) in plan {
        app.clock.set(at(&format!("{day}T08:00:00Z")));
        for nin in nins {
            e_consultation(app, org, nin).await;
        }
    }
    // Wait until each practice's own (exact) figures have every contact.
    let deadline = Instant::now() + Duration::from_secs(30);
    let march = ("2026-03-01", "2026-03-31");
    let s = app.stats().await;
    for (org, expected) in [(ORG_A, 20), (ORG_B, 13), (ORG_C, 10)] {
        loop {
            let n = total(&s, &app.ehr_token(org), march, Narrow::default()).await;
            if n == expected {
                break;
            }
            assert!(Instant::now() < deadline, "{org}: {n} of {expected}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The adversary's view: every number ops were shown, with where it came from.
#[derive(Default)]
struct Seen(Vec<(String, u64)>);

impl Seen {
    fn add(&mut self, what: String, n: u64) {
        self.0.push((what, n));
    }

    /// Every row of a response, and their sum (the "total minus parts" raw material).
    fn rows(&mut self, what: &str, rows: &[spb::ContactCountRow]) {
        for r in rows {
            assert!(
                r.count == 0 || r.count >= 5,
                "{what}: a published count under the threshold: {r:?}"
            );
            self.add(format!("{what} {r:?}"), r.count);
        }
        self.add(
            format!("{what} sum of rows"),
            rows.iter().map(|r| r.count).sum(),
        );
    }
}

async fn ops_cannot_recover_a_suppressed_cell_by_any_combination_of_calls(env: Env) {
    // The adversary makes well over a thousand calls: the rate limit would only slow it down.
    let tweak: Tweak = std::sync::Arc::new(|c| {
        c.rate_limits = econsult_runtime::ratelimit::RateLimits::unlimited();
    });
    let app = TestApp::start_configured(env, monday_0800(), Some(tweak)).await;
    seed(&app).await;
    let s = app.stats().await;
    let ops = app.ops_token();
    let bergen = Narrow {
        gp: "gp-bergen",
        ..Default::default()
    };

    // The data holds the secret: the practice itself reads it, and on exact figures the month
    // minus its other days gives it back (the attack below would work without suppression).
    let own = app.ehr_token(ORG_B);
    let day = counts(&s, &own, (DAYS[1], DAYS[1]), G::Day, &[D::Gp], bergen).await;
    assert_eq!((day[0].count, day[0].suppressed), (SECRET, false));
    let month = total(&s, &own, ("2026-03-01", "2026-03-31"), bergen).await;
    let others = total(&s, &own, (DAYS[0], DAYS[0]), bergen).await
        + total(&s, &own, (DAYS[2], DAYS[2]), bergen).await;
    assert_eq!(month - others, SECRET);

    // Ops see the cell suppressed: no count, marked.
    let day = counts(&s, &ops, (DAYS[1], DAYS[1]), G::Day, &[D::Gp], bergen).await;
    assert_eq!(day.len(), 1);
    assert_eq!((day[0].count, day[0].suppressed), (0, true));

    // Every query ops can make over these days: ranges (overlapping, and the whole month),
    // periods, breakdowns, narrowings; contact counts, exports and response times.
    let mut ranges: Vec<(&str, &str)> = vec![("2026-03-01", "2026-03-31")];
    for (i, from) in DAYS.iter().enumerate() {
        for to in &DAYS[i..] {
            ranges.push((from, to));
        }
    }
    let breakdowns: [&[D]; 9] = [
        &[],
        &[D::Gp],
        &[D::Org],
        &[D::Municipality],
        &[D::County],
        &[D::SizeBand],
        &[D::KprCategory],
        &[D::ContactType, D::TariffCode],
        &[D::County, D::SizeBand, D::Municipality],
    ];
    let narrowings = [
        Narrow::default(),
        bergen,
        Narrow {
            org: ORG_B,
            ..Default::default()
        },
        Narrow {
            municipality: "4601",
            ..Default::default()
        },
        Narrow {
            county: "46",
            ..Default::default()
        },
        Narrow {
            band: "under_5000",
            ..Default::default()
        },
    ];
    let mut seen = Seen::default();
    for range in &ranges {
        for n in narrowings {
            for g in [G::Day, G::IsoWeek, G::Month] {
                for by in breakdowns {
                    let rows = counts(&s, &ops, *range, g, by, n).await;
                    seen.rows(&format!("counts {range:?} {n:?} {g:?} {by:?}"), &rows);
                }
                for level in [spb::ExportLevel::Gp, spb::ExportLevel::Municipality] {
                    let e = s
                        .clone()
                        .export_contacts(authed(
                            spb::ExportContactsRequest {
                                filter: n.filter(range.0, range.1),
                                granularity: g as i32,
                                level: level as i32,
                            },
                            &ops,
                        ))
                        .await
                        .expect("export")
                        .into_inner();
                    let what = format!("export {range:?} {n:?} {g:?} {level:?}");
                    let mut sum = 0;
                    for line in e.csv.lines().skip(1) {
                        let count = line.split(',').nth(6).expect("count column");
                        let count: u64 = if count.is_empty() {
                            0
                        } else {
                            count.parse().expect("count")
                        };
                        assert!(count == 0 || count >= 5, "{what}: {line}");
                        seen.add(format!("{what} {line}"), count);
                        sum += count;
                    }
                    seen.add(format!("{what} sum of rows"), sum);
                }
            }
            if n.county.is_empty() && n.band.is_empty() {
                let t = s
                    .clone()
                    .get_consultation_response_times(authed(
                        spb::GetConsultationResponseTimesRequest {
                            filter: n.filter(range.0, range.1),
                        },
                        &ops,
                    ))
                    .await
                    .expect("response times")
                    .into_inner();
                let what = format!("response times {range:?} {n:?}");
                seen.add(format!("{what} responded"), t.responded);
                seen.add(format!("{what} within_sla"), t.within_sla);
                for (i, h) in t.working_days_histogram.iter().enumerate() {
                    seen.add(format!("{what} histogram[{i}]"), *h);
                }
            }
        }
    }

    // The named attacks (each gives the secret on exact figures, see above).
    let month = ("2026-03-01", "2026-03-31");
    let b = |r: (&'static str, &'static str)| total(&s, &ops, r, bergen);
    let month_minus_days = b(month).await
        - b((DAYS[0], DAYS[0])).await
        - b((DAYS[1], DAYS[1])).await
        - b((DAYS[2], DAYS[2])).await;
    let overlapping = b((DAYS[1], DAYS[2])).await - b((DAYS[2], DAYS[2])).await;
    let overlapping_2 = b((DAYS[0], DAYS[1])).await - b((DAYS[0], DAYS[0])).await;
    let by_gp = counts(&s, &ops, month, G::Month, &[D::Gp], Narrow::default()).await;
    let national = total(&s, &ops, month, Narrow::default()).await;
    let total_minus_parts = national - by_gp.iter().map(|r| r.count).sum::<u64>();
    let by_municipality = counts(
        &s,
        &ops,
        month,
        G::Month,
        &[D::Municipality],
        Narrow::default(),
    )
    .await;
    let muni = |m: &str| {
        by_municipality
            .iter()
            .filter(|r| r.municipality_number == m)
            .map(|r| r.count)
            .sum::<u64>()
    };
    let county_46 = total(
        &s,
        &ops,
        month,
        Narrow {
            county: "46",
            ..Default::default()
        },
    )
    .await;
    let county_minus_municipalities = county_46 - muni("4601") - muni("4602");
    let small = total(
        &s,
        &ops,
        month,
        Narrow {
            band: "under_5000",
            ..Default::default()
        },
    )
    .await;
    let band_minus_municipalities = small - muni("4601") - muni("4602");
    let bergen_month_minus_county_rest =
        muni("4601") - b((DAYS[0], DAYS[0])).await - b((DAYS[2], DAYS[2])).await;
    for (attack, got) in [
        ("month minus days", month_minus_days),
        ("3-4 March minus 4 March", overlapping),
        ("2-3 March minus 2 March", overlapping_2),
        ("national minus GPs", total_minus_parts),
        ("county minus municipalities", county_minus_municipalities),
        ("band minus municipalities", band_minus_municipalities),
        (
            "municipality month minus other days",
            bergen_month_minus_county_rest,
        ),
    ] {
        assert_eq!(got, 0, "{attack}: the hidden cell is in no figure");
    }

    // And blindly: no difference of any two numbers ops were shown is the secret. (Every shown
    // count is a sum of cells of 5 or 10, so every difference is a multiple of 5.)
    let values: BTreeSet<u64> = seen.0.iter().map(|(_, n)| *n).collect();
    for (what, n) in &seen.0 {
        assert_ne!(*n, SECRET, "{what}");
        assert_eq!(n % 5, 0, "{what}: {n} has a hidden cell in it");
    }
    for x in &values {
        assert!(!values.contains(&(x + SECRET)), "{} - {x}", x + SECRET);
    }
    assert!(seen.0.len() > 1000, "{} figures seen", seen.0.len());
    app.shutdown().await;
}

async fn county_and_size_band_series_sum_to_the_national_total(env: Env) {
    let app = TestApp::start(env).await;
    seed(&app).await;
    let s = app.stats().await;
    let month = ("2026-03-01", "2026-03-31");
    for (token, expect_national, expect_46) in [
        // Ops: gp-bergen's 3 of 3 March are left out everywhere.
        (app.ops_token(), 40, 20),
        // A practice reads only its own organisation, exactly.
        (app.ehr_token(ORG_B), 13, 13),
    ] {
        let national = total(&s, &token, month, Narrow::default()).await;
        assert_eq!(national, expect_national);
        for by in [D::County, D::SizeBand] {
            let rows = counts(&s, &token, month, G::Month, &[by], Narrow::default()).await;
            assert_eq!(
                rows.iter().map(|r| r.count).sum::<u64>(),
                national,
                "{by:?}"
            );
            // Daily series too.
            let days = counts(&s, &token, month, G::Day, &[by], Narrow::default()).await;
            assert_eq!(
                days.iter().map(|r| r.count).sum::<u64>(),
                national,
                "{by:?} daily"
            );
        }
        let counties: Vec<(String, String, u64)> =
            counts(&s, &token, month, G::Month, &[D::County], Narrow::default())
                .await
                .into_iter()
                .map(|r| (r.county_number, r.county_name, r.count))
                .collect();
        assert!(
            counties.contains(&("46".into(), "Vestland".into(), expect_46)),
            "{counties:?}"
        );
    }
    let ops = app.ops_token();
    let bands: Vec<(String, u64, bool)> =
        counts(&s, &ops, month, G::Month, &[D::SizeBand], Narrow::default())
            .await
            .into_iter()
            .map(|r| (r.size_band, r.count, r.suppressed))
            .collect();
    // 0301 has 5 000 persons on lists (one staffed list, one vacant); 4601 and 4602 a handful.
    assert_eq!(
        bands,
        vec![
            ("5000_19999".into(), 20, false),
            ("under_5000".into(), 20, true)
        ]
    );
    let counties: Vec<(String, String, u64)> =
        counts(&s, &ops, month, G::Month, &[D::County], Narrow::default())
            .await
            .into_iter()
            .map(|r| (r.county_number, r.county_name, r.count))
            .collect();
    assert_eq!(
        counties,
        vec![
            ("03".into(), "Oslo".into(), 20),
            ("46".into(), "Vestland".into(), 20)
        ]
    );
    // Filters by the new levels select the same contacts as their rows.
    let in_46 = total(
        &s,
        &ops,
        month,
        Narrow {
            county: "46",
            ..Default::default()
        },
    )
    .await;
    let big = total(
        &s,
        &ops,
        month,
        Narrow {
            band: "5000_19999",
            ..Default::default()
        },
    )
    .await;
    assert_eq!((in_46, big), (20, 20));
    app.shutdown().await;
}

/// The new filters are validated naming the field, and refused where they do not apply.
async fn county_and_size_band_filters_are_validated(env: Env) {
    let app = TestApp::start(env).await;
    let ops = app.ops_token();
    let mut s = app.stats().await;
    let bad = |county: &'static str, band: &'static str| Narrow {
        county,
        band,
        ..Default::default()
    };
    for (n, field) in [
        (bad("4", ""), "filter.county_number"),
        (bad("4a", ""), "filter.county_number"),
        (bad("", "tiny"), "filter.size_band"),
    ] {
        let err = s
            .get_contact_counts(authed(
                spb::GetContactCountsRequest {
                    filter: n.filter("2026-03-01", "2026-03-31"),
                    ..Default::default()
                },
                &ops,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{err:?}");
    }
    for (n, field) in [
        (bad("46", ""), "filter.county_number"),
        (bad("", "under_5000"), "filter.size_band"),
    ] {
        let err = s
            .get_video_sessions(authed(
                spb::GetVideoSessionsRequest {
                    filter: n.filter("2026-03-01", "2026-03-31"),
                },
                &ops,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{err:?}");
    }
    app.shutdown().await;
}

on_both_backends!(
    ops_cannot_recover_a_suppressed_cell_by_any_combination_of_calls,
    county_and_size_band_series_sum_to_the_national_total,
    county_and_size_band_filters_are_validated,
);
