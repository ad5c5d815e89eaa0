//! The queries of the statistics service, on domain types: contact counts and exports, the
//! five-working-day figures (`econsult_booking::episodes` defines and stores them), response
//! times, video sessions, lists; and the SLA gauges.

use crate::domain::{
    AppointmentCounts, BookingRequests, ContactCount, Dimensions, Disclosure, Export, ExportLevel,
    Filter, Granularity, ListFigures, ResponseTimes, SizeBand, VideoSessions,
};
use crate::error::StatsError;
use crate::levels::{county_name, county_of};
use crate::{store, suppress};
use econsult_booking::{directory, episodes};
use econsult_runtime::db::Db;
use econsult_runtime::platform::Platform;
use opentelemetry::KeyValue;
use std::collections::BTreeMap;
use std::time::Duration;

/// The stable header of contact exports.
pub const CSV_HEADER: &str =
    "period,org_number,municipality_number,gp_id,contact_type,tariff_code,count,suppressed";

/// The statistics queries over the aggregate tables.
#[derive(Clone)]
pub struct Stats {
    db: Db,
}

/// Period label of an ISO day at a granularity.
pub fn period(day: &str, g: Granularity) -> String {
    use chrono::Datelike as _;
    let Ok(d) = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d") else {
        return day.to_owned();
    };
    match g {
        Granularity::IsoWeek => {
            let w = d.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }
        Granularity::Month => format!("{}-{:02}", d.year(), d.month()),
        Granularity::Day => day.to_owned(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Stats {
    /// Queries over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StatsError> {
        Ok(self.db.read().acquire().await?)
    }

    /// Contact counts grouped by period and the kept dimensions, under disclosure `d`: for a
    /// protected caller every count is a sum of base cells of at least the threshold
    /// ([`crate::suppress`]).
    pub async fn contact_breakdown(
        &self,
        f: &Filter,
        g: Granularity,
        keep: Dimensions,
        d: Disclosure,
    ) -> Result<Vec<ContactCount>, StatsError> {
        let mut conn = self.conn().await?;
        // Each row is a base cell: the store groups by the table's whole key.
        let rows = store::contact_counts(&mut conn, f).await?;
        let persons: BTreeMap<String, u64> = if keep.size_band || f.size_band.is_some() {
            directory::persons_by_municipality(&mut conn)
                .await?
                .into_iter()
                .collect()
        } else {
            BTreeMap::new()
        };
        let band = |m: &str| SizeBand::of(persons.get(m).copied().unwrap_or(0));
        let base = rows
            .into_iter()
            .filter(|r| f.county.is_empty() || county_of(&r.municipality_number) == f.county)
            .filter(|r| {
                f.size_band
                    .is_none_or(|b| band(&r.municipality_number) == b)
            })
            .map(|r| {
                let kept = |yes: bool, v: String| if yes { v } else { String::new() };
                let county = county_of(&r.municipality_number).to_owned();
                let size_band = band(&r.municipality_number).as_str().to_owned();
                // Sorted by the proto's order; county and band (functions of the
                // municipality) last.
                let key = [
                    kept(keep.org, r.org_number),
                    kept(keep.municipality, r.municipality_number),
                    kept(keep.gp, r.gp_id),
                    kept(keep.contact_type, r.contact_type),
                    kept(keep.tariff_code, r.tariff_code),
                    kept(keep.kpr_category, r.kpr_category),
                    kept(keep.county, county),
                    kept(keep.size_band, size_band),
                ];
                ((period(&r.period, g), key), r.count)
            });
        Ok(suppress::publish(base, d)
            .into_iter()
            .map(
                |((period, [org, muni, gp, ctype, tariff, kpr, county, band]), cell)| {
                    ContactCount {
                        period,
                        org_number: org,
                        municipality_number: muni,
                        gp_id: gp,
                        contact_type: ctype,
                        tariff_code: tariff,
                        kpr_category: kpr,
                        county_name: county_name(&county).to_owned(),
                        county_number: county,
                        size_band: band,
                        count: cell.count,
                        suppressed: cell.suppressed,
                    }
                },
            )
            .collect())
    }

    /// CSV export at `level` under disclosure `d` (the same cells as
    /// [`Stats::contact_breakdown`]).
    pub async fn export(
        &self,
        f: &Filter,
        g: Granularity,
        level: ExportLevel,
        d: Disclosure,
    ) -> Result<Export, StatsError> {
        let keep = match level {
            ExportLevel::Municipality => Dimensions {
                municipality: true,
                contact_type: true,
                tariff_code: true,
                kpr_category: true,
                ..Dimensions::NONE
            },
            ExportLevel::Gp => Dimensions {
                county: false,
                size_band: false,
                ..Dimensions::ALL
            },
        };
        let rows = self.contact_breakdown(f, g, keep, d).await?;
        let mut csv = String::with_capacity(64 * (rows.len() + 1));
        csv.push_str(CSV_HEADER);
        csv.push_str("\r\n");
        let mut suppressed_rows = 0;
        for r in &rows {
            if r.suppressed {
                suppressed_rows += 1;
            }
            // Nothing shown at all: an empty count, as before hidden cells were left out of
            // partly shown ones.
            let count = if r.suppressed && r.count == 0 {
                String::new()
            } else {
                r.count.to_string()
            };
            let fields = [
                r.period.as_str(),
                &r.org_number,
                &r.municipality_number,
                &r.gp_id,
                &r.contact_type,
                &r.tariff_code,
                &count,
                if r.suppressed { "true" } else { "false" },
            ];
            let line: Vec<String> = fields.iter().map(|v| csv_field(v)).collect();
            csv.push_str(&line.join(","));
            csv.push_str("\r\n");
        }
        Ok(Export {
            csv,
            rows: rows.len() as u64,
            suppressed_rows,
        })
    }

    /// The booking requests as `econsult_booking::episodes` defines and stores them, the
    /// appointment counts, and whether figures were left out. Under [`Disclosure::Protected`]
    /// a base cell of 1 to 4 is left out: for requests one GP's requests of one day 0 (the
    /// figures of a cell that is kept are counted whole), for appointments one GP's
    /// appointments of one kind on one day.
    pub async fn accessibility(
        &self,
        f: &Filter,
        d: Disclosure,
    ) -> Result<(BookingRequests, AppointmentCounts, bool), StatsError> {
        let scope = episodes::Scope {
            from: f.from.clone(),
            to: f.to.clone(),
            org: f.org.clone(),
            municipality: f.municipality.clone(),
            gp: f.gp.clone(),
        };
        let (requests, mut suppressed) =
            episodes::accessibility_without(&self.db, &scope, |n| d.hides(n)).await?;
        let mut appointments = AppointmentCounts::default();
        for (_, kind, n) in store::appointment_rows(&mut *self.conn().await?, f).await? {
            if d.hides(n) {
                suppressed = true;
                continue;
            }
            match kind.as_str() {
                "booked" => appointments.bookings += n,
                "late_cancellation" => appointments.late_cancellations += n,
                "noshow" => appointments.no_shows += n,
                _ => {}
            }
        }
        Ok((requests, appointments, suppressed))
    }

    /// First-response figures of text consultations. Under [`Disclosure::Protected`] a base
    /// cell (a GP's threads of one submission day) with 1 to 4 responses is left out.
    pub async fn response_times(
        &self,
        f: &Filter,
        d: Disclosure,
    ) -> Result<ResponseTimes, StatsError> {
        let rows = store::response_rows(&mut *self.conn().await?, f).await?;
        let (rows, suppressed) =
            suppress::shown_rows(rows.into_iter().map(|(c, r)| (c, r.n, r)).collect(), d);
        let mut out = ResponseTimes {
            working_days_histogram: vec![0; 16],
            suppressed,
            ..Default::default()
        };
        for r in rows {
            out.responded += r.n;
            if r.within_sla {
                out.within_sla += r.n;
            }
            out.working_days_histogram[r.working_days.clamp(0, 15) as usize] += r.n;
        }
        out.within_sla_share = if out.responded == 0 {
            0.0
        } else {
            out.within_sla as f64 / out.responded as f64
        };
        Ok(out)
    }

    /// Video session figures. Under [`Disclosure::Protected`] a base cell (a GP's sessions of
    /// one day) with 1 to 4 sessions is left out.
    pub async fn video_sessions(
        &self,
        f: &Filter,
        d: Disclosure,
    ) -> Result<VideoSessions, StatsError> {
        let rows = store::video_rows(&mut *self.conn().await?, f).await?;
        let (rows, suppressed) =
            suppress::shown_rows(rows.into_iter().map(|(c, r)| (c, r.n, r)).collect(), d);
        let mut out = VideoSessions {
            suppressed,
            ..Default::default()
        };
        let (mut connected_n, mut connected_ms) = (0u64, 0i64);
        for r in rows {
            out.sessions += r.n;
            if r.held {
                out.held += r.n;
            }
            if r.connected {
                connected_n += r.n;
                connected_ms += r.connected_ms;
            } else {
                out.failed_to_connect += r.n;
            }
        }
        out.average_connected_seconds = if connected_n == 0 {
            0.0
        } else {
            connected_ms as f64 / 1000.0 / connected_n as f64
        };
        Ok(out)
    }

    /// Lists and waitlists now (booking owns them: read through its directory), and whether
    /// figures were left out. The persons figures (persons on lists without a GP, active
    /// waitlist entries) describe persons: under [`Disclosure::Protected`] a practice's figure
    /// in one municipality (the finest a filter isolates) of 1 to 4 is left out of the sum.
    pub async fn list_figures(
        &self,
        f: &Filter,
        d: Disclosure,
    ) -> Result<(ListFigures, bool), StatsError> {
        let places =
            directory::list_figures_by_place(&mut *self.conn().await?, &f.org, &f.municipality)
                .await?;
        let mut out = ListFigures::default();
        let mut suppressed = false;
        for (_, p) in places {
            out.lists += p.lists;
            out.lists_without_gp += p.lists_without_gp;
            for (sum, n) in [
                (
                    &mut out.persons_on_lists_without_gp,
                    p.persons_on_lists_without_gp,
                ),
                (&mut out.waitlist_active, p.waitlist_active),
            ] {
                if d.hides(n) {
                    suppressed = true;
                } else {
                    *sum += n;
                }
            }
        }
        Ok((out, suppressed))
    }
}

/// Publishes the SLA gauges every `every` (and a second after new events) until shutdown, from
/// the aggregates of the current Oslo day and the last 30 days:
/// - `econsult_booking_within_target_share{municipality_number}`: share of the booking requests
///   opened today (Oslo day 0) for which the practice offered a slot within five working days,
///   as `econsult_booking::episodes` defines it;
/// - `econsult_consultation_within_sla_share{municipality_number}`: share of first responses in
///   the last 30 days that came before the due time.
pub async fn run_gauges(p: Platform, every: Duration) {
    let meter = opentelemetry::global::meter("econsult.stats");
    let booking = meter
        .f64_gauge("econsult_booking_within_target_share")
        .with_description(
            "Share of today's booking requests with an offer within five working days",
        )
        .build();
    let consultation = meter
        .f64_gauge("econsult_consultation_within_sla_share")
        .with_description(
            "Share of e-consultation first responses in the last 30 days within the SLA",
        )
        .build();
    let mut ticker = p.ticker(every);
    loop {
        let today = econsult_calendar::oslo_date(p.clock.now());
        let month_ago = today - chrono::Duration::days(30);
        let day = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
        // Today's booking requests, as GetBookingAccessibility counts them.
        let scope = episodes::Scope {
            from: day(today),
            to: day(today),
            ..Default::default()
        };
        let q1: Result<Vec<(String, i64, i64)>, StatsError> =
            episodes::accessibility_by_municipality(&p.db, &scope)
                .await
                .map(|m| {
                    m.into_iter()
                        .map(|(k, a)| (k, a.requests as i64, a.within_target as i64))
                        .collect()
                })
                .map_err(Into::into);
        let q2: Result<Vec<(String, i64, i64)>, StatsError> = async {
            let mut conn = p.db.read().acquire().await?;
            Ok(store::responses_by_municipality(&mut conn, &day(month_ago), &day(today)).await?)
        }
        .await;
        for (rows, gauge) in [(q1, &booking), (q2, &consultation)] {
            match rows {
                Ok(rows) => {
                    for (m, n, ok) in rows {
                        if n > 0 {
                            gauge.record(
                                ok as f64 / n as f64,
                                &[KeyValue::new("municipality_number", m)],
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "SLA gauge query failed"),
            }
        }
        if !ticker.tick().await {
            return;
        }
    }
}
