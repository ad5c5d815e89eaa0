//! gRPC adapter of the statistics service.

use econsult_booking::domain::BreachReason;
use econsult_booking::episodes::{self, Scope};
use econsult_proto::stats::v1 as pb;
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::db::Db;
use econsult_runtime::grpc::{db_status, parse_date};
use econsult_runtime::tariff;
use sqlx::Row as _;
use tonic::{Request, Response, Status};

/// Scope for an EHR reading its own organisation's statistics.
pub const SCOPE_READ: &str = "econsult:stats.read";

/// The tonic service.
pub struct StatsGrpc {
    db: Db,
}

/// A validated filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// First day (ISO).
    pub from: String,
    /// Last day (ISO).
    pub to: String,
    /// Organisation ('' = all).
    pub org: String,
    /// Municipality ('' = all).
    pub municipality: String,
    /// GP ('' = all).
    pub gp: String,
}

impl Filter {
    /// Validates `f` for `caller`: ops see all, an EHR only its own organisation.
    pub fn from_proto(f: Option<pb::Filter>, caller: &Caller) -> Result<Self, Status> {
        // Who may ask comes before what is asked: a caller without access learns nothing from
        // validation messages.
        let own = Self::own_org(caller)?;
        let f = f.ok_or_else(|| Status::invalid_argument("filter is required"))?;
        let from = parse_date(&f.from_date, "filter.from_date")?;
        let to = parse_date(&f.to_date, "filter.to_date")?;
        if to < from {
            return Err(Status::invalid_argument(
                "filter.to_date must not be before filter.from_date",
            ));
        }
        if (to - from).num_days() > 366 {
            return Err(Status::invalid_argument(
                "filter.to_date must be at most 366 days after filter.from_date",
            ));
        }
        Ok(Self {
            from: from.format("%Y-%m-%d").to_string(),
            to: to.format("%Y-%m-%d").to_string(),
            org: Self::org(own, f.org_number)?,
            municipality: f.municipality_number,
            gp: f.gp_id,
        })
    }

    /// Organisation and municipality of `f` for figures of now (no dates apply).
    pub fn scope_from_proto(f: Option<pb::Filter>, caller: &Caller) -> Result<Self, Status> {
        let own = Self::own_org(caller)?;
        let f = f.unwrap_or_default();
        Ok(Self {
            from: String::new(),
            to: String::new(),
            org: Self::org(own, f.org_number)?,
            municipality: f.municipality_number,
            gp: f.gp_id,
        })
    }

    /// `None` for ops (every organisation), else the caller's own organisation.
    fn own_org(caller: &Caller) -> Result<Option<String>, Status> {
        match caller.role {
            Role::Ops => Ok(None),
            _ => Ok(Some(caller.org_with_scope(SCOPE_READ)?.to_owned())),
        }
    }

    /// The organisation asked for, which an EHR may only name as its own.
    fn org(own: Option<String>, asked: String) -> Result<String, Status> {
        match own {
            None => Ok(asked),
            Some(own) if asked.is_empty() || asked == own => Ok(own),
            Some(_) => Err(Status::permission_denied(
                "an EHR can only read its own organisation's statistics",
            )),
        }
    }
}

const WHERE: &str = "day >= $1 AND day <= $2 AND ($3 = '' OR org_number = $3) AND ($4 = '' OR municipality_number = $4) AND ($5 = '' OR gp_id = $5)";

impl StatsGrpc {
    /// Queries over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::stats_service_server::StatsServiceServer<Self> {
        pb::stats_service_server::StatsServiceServer::new(self)
    }

    fn query<'q>(
        sql: &'q str,
        f: &'q Filter,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        sqlx::query(sql)
            .bind(&f.from)
            .bind(&f.to)
            .bind(&f.org)
            .bind(&f.municipality)
            .bind(&f.gp)
    }

    /// Contact counts (used by the gRPC call and tests).
    pub async fn contact_counts(
        &self,
        f: &Filter,
    ) -> Result<Vec<pb::ContactCountRow>, sqlx::Error> {
        let sql = format!(
            "SELECT day, org_number, municipality_number, gp_id, contact_type, tariff_code, CAST(SUM(n) AS BIGINT) AS n \
             FROM stats_contacts WHERE {WHERE} GROUP BY day, org_number, municipality_number, gp_id, contact_type, tariff_code \
             ORDER BY day, org_number, gp_id, contact_type"
        );
        let rows = Self::query(&sql, f).fetch_all(self.db.read()).await?;
        rows.iter()
            .map(|r| {
                Ok(pb::ContactCountRow {
                    date: r.try_get("day")?,
                    org_number: r.try_get("org_number")?,
                    municipality_number: r.try_get("municipality_number")?,
                    gp_id: r.try_get("gp_id")?,
                    contact_type: r.try_get("contact_type")?,
                    tariff_code: r.try_get("tariff_code")?,
                    count: r.try_get::<i64, _>("n")? as u64,
                    kpr_category: String::new(),
                })
                .map(|mut row: pb::ContactCountRow| {
                    row.kpr_category = tariff::category_name(&row.tariff_code).to_owned();
                    row
                })
            })
            .collect()
    }

    /// Accessibility figures (used by the gRPC call and tests): the booking requests as
    /// `econsult_booking::episodes` defines and stores them, and the appointment counts.
    pub async fn accessibility(
        &self,
        f: &Filter,
    ) -> Result<pb::GetBookingAccessibilityResponse, sqlx::Error> {
        let scope = Scope {
            from: f.from.clone(),
            to: f.to.clone(),
            org: f.org.clone(),
            municipality: f.municipality.clone(),
            gp: f.gp.clone(),
        };
        let a = episodes::accessibility(&self.db, &scope).await?;
        let breaches = |r: BreachReason| a.breaches.get(&r).copied().unwrap_or_default();
        let mut by_channel: Vec<pb::ChannelFigures> = a
            .by_channel
            .iter()
            .map(|(c, (n, within))| pb::ChannelFigures {
                channel: c.as_str().to_owned(),
                requests: *n,
                within_target: *within,
            })
            .collect();
        by_channel.sort_by(|x, y| x.channel.cmp(&y.channel));
        let mut out = pb::GetBookingAccessibilityResponse {
            requests: a.requests,
            within_target: a.within_target,
            within_target_share: a.within_target_share(),
            breaches_no_slots: breaches(BreachReason::NoSlots),
            breaches_list_without_gp: breaches(BreachReason::ListWithoutGp),
            breaches_practice_closed: breaches(BreachReason::PracticeClosed),
            working_days_histogram: a.working_days_histogram.to_vec(),
            met_by_own_gp: a.met_by_own_gp,
            met_by_own_gp_share: a.met_by_own_gp_share(),
            patient_preferences: a.patient_preferences,
            by_channel,
            ..Default::default()
        };
        let sql = format!(
            "SELECT kind, CAST(SUM(n) AS BIGINT) AS n FROM stats_appointments WHERE {WHERE} GROUP BY kind"
        );
        for r in Self::query(&sql, f).fetch_all(self.db.read()).await? {
            let n = r.try_get::<i64, _>("n")? as u64;
            match r.try_get::<String, _>("kind")?.as_str() {
                "booked" => out.bookings += n,
                "late_cancellation" => out.late_cancellations += n,
                "noshow" => out.no_shows += n,
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Smallest count shown in a municipality-level export (smaller cells are suppressed so nobody
/// can be identified).
pub const SMALL_CELL: u64 = 5;

/// Period label of an ISO day at a granularity.
pub fn period(day: &str, g: pb::Granularity) -> String {
    use chrono::Datelike as _;
    let Ok(d) = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d") else {
        return day.to_owned();
    };
    match g {
        pb::Granularity::IsoWeek => {
            let w = d.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }
        pb::Granularity::Month => format!("{}-{:02}", d.year(), d.month()),
        _ => day.to_owned(),
    }
}

fn granularity(v: i32) -> Result<pb::Granularity, Status> {
    match pb::Granularity::try_from(v) {
        Ok(pb::Granularity::Unspecified) => Ok(pb::Granularity::Day),
        Ok(g) => Ok(g),
        Err(_) => Err(Status::invalid_argument("granularity is not a known value")),
    }
}

fn dimensions(v: &[i32]) -> Result<[bool; 6], Status> {
    if v.is_empty() {
        return Ok([true; 6]);
    }
    let mut keep = [false; 6];
    for (i, d) in v.iter().enumerate() {
        match pb::Dimension::try_from(*d) {
            Ok(d) if d != pb::Dimension::Unspecified => keep[d as usize - 1] = true,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "group_by[{i}] is not a known dimension"
                )));
            }
        }
    }
    Ok(keep)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The stable header of contact exports.
pub const CSV_HEADER: &str =
    "period,org_number,municipality_number,gp_id,contact_type,tariff_code,count,suppressed";

impl StatsGrpc {
    /// Contact counts grouped by period and the kept dimensions
    /// (`keep` = org, municipality, gp, contact type, tariff code, KPR category).
    pub async fn contact_breakdown(
        &self,
        f: &Filter,
        g: pb::Granularity,
        keep: [bool; 6],
    ) -> Result<Vec<pb::ContactCountRow>, sqlx::Error> {
        let mut sums: std::collections::BTreeMap<(String, [String; 6]), u64> = Default::default();
        for r in self.contact_counts(f).await? {
            let dims = [
                r.org_number,
                r.municipality_number,
                r.gp_id,
                r.contact_type,
                r.tariff_code,
                r.kpr_category,
            ];
            let mut k: [String; 6] = Default::default();
            for (i, v) in dims.into_iter().enumerate() {
                if keep[i] {
                    k[i] = v;
                }
            }
            *sums.entry((period(&r.date, g), k)).or_default() += r.count;
        }
        Ok(sums
            .into_iter()
            .map(
                |((date, [org, muni, gp, ctype, tariff, kpr]), count)| pb::ContactCountRow {
                    date,
                    org_number: org,
                    municipality_number: muni,
                    gp_id: gp,
                    contact_type: ctype,
                    tariff_code: tariff,
                    count,
                    kpr_category: kpr,
                },
            )
            .collect())
    }

    /// CSV export; municipality level sums over organisation and GP and suppresses small cells.
    pub async fn export(
        &self,
        f: &Filter,
        g: pb::Granularity,
        level: pb::ExportLevel,
    ) -> Result<pb::ExportContactsResponse, sqlx::Error> {
        let municipal = level == pb::ExportLevel::Municipality;
        let keep = if municipal {
            [false, true, false, true, true, true]
        } else {
            [true; 6]
        };
        let rows = self.contact_breakdown(f, g, keep).await?;
        let mut csv = String::with_capacity(64 * (rows.len() + 1));
        csv.push_str(CSV_HEADER);
        csv.push_str("\r\n");
        let mut suppressed_rows = 0;
        for r in &rows {
            let suppressed = municipal && r.count < SMALL_CELL;
            if suppressed {
                suppressed_rows += 1;
            }
            let count = if suppressed {
                String::new()
            } else {
                r.count.to_string()
            };
            let fields = [
                r.date.as_str(),
                &r.org_number,
                &r.municipality_number,
                &r.gp_id,
                &r.contact_type,
                &r.tariff_code,
                &count,
                if suppressed { "true" } else { "false" },
            ];
            let line: Vec<String> = fields.iter().map(|v| csv_field(v)).collect();
            csv.push_str(&line.join(","));
            csv.push_str("\r\n");
        }
        Ok(pb::ExportContactsResponse {
            csv,
            rows: rows.len() as u64,
            suppressed_rows,
        })
    }

    /// First-response figures of text consultations.
    pub async fn response_times(
        &self,
        f: &Filter,
    ) -> Result<pb::GetConsultationResponseTimesResponse, sqlx::Error> {
        let sql = format!(
            "SELECT working_days, within_sla, CAST(SUM(n) AS BIGINT) AS n FROM stats_consultation_responses \
             WHERE {WHERE} GROUP BY working_days, within_sla"
        );
        let mut out = pb::GetConsultationResponseTimesResponse {
            working_days_histogram: vec![0; 16],
            ..Default::default()
        };
        for r in Self::query(&sql, f).fetch_all(self.db.read()).await? {
            let n = r.try_get::<i64, _>("n")? as u64;
            let wd: i64 = r.try_get("working_days")?;
            out.responded += n;
            if r.try_get::<i64, _>("within_sla")? != 0 {
                out.within_sla += n;
            }
            out.working_days_histogram[wd.clamp(0, 15) as usize] += n;
        }
        out.within_sla_share = if out.responded == 0 {
            0.0
        } else {
            out.within_sla as f64 / out.responded as f64
        };
        Ok(out)
    }

    /// Video session figures.
    pub async fn video_sessions(
        &self,
        f: &Filter,
    ) -> Result<pb::GetVideoSessionsResponse, sqlx::Error> {
        let sql = format!(
            "SELECT connected, held, CAST(SUM(n) AS BIGINT) AS n, CAST(SUM(connected_ms) AS BIGINT) AS ms \
             FROM stats_video_sessions WHERE {WHERE} GROUP BY connected, held"
        );
        let mut out = pb::GetVideoSessionsResponse::default();
        let (mut connected_n, mut connected_ms) = (0u64, 0i64);
        for r in Self::query(&sql, f).fetch_all(self.db.read()).await? {
            let n = r.try_get::<i64, _>("n")? as u64;
            out.sessions += n;
            if r.try_get::<i64, _>("held")? != 0 {
                out.held += n;
            }
            if r.try_get::<i64, _>("connected")? != 0 {
                connected_n += n;
                connected_ms += r.try_get::<i64, _>("ms")?;
            } else {
                out.failed_to_connect += n;
            }
        }
        out.average_connected_seconds = if connected_n == 0 {
            0.0
        } else {
            connected_ms as f64 / 1000.0 / connected_n as f64
        };
        Ok(out)
    }

    /// Lists and waitlists now (read-only over the booking tables, like
    /// `econsult_booking::directory`).
    pub async fn list_figures(
        &self,
        f: &Filter,
    ) -> Result<pb::GetListFiguresResponse, sqlx::Error> {
        let gp_where = "($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2)";
        let lists = sqlx::query(&format!(
            "SELECT COUNT(*) AS lists, CAST(COALESCE(SUM(CASE WHEN g.list_status = 2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS vacant \
             FROM booking_gps g WHERE {gp_where}"
        ))
        .bind(&f.org)
        .bind(&f.municipality)
        .fetch_one(self.db.read())
        .await?;
        let persons: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid \
             WHERE g.list_status = 2 AND {gp_where}"
        ))
        .bind(&f.org)
        .bind(&f.municipality)
        .fetch_one(self.db.read())
        .await?;
        let waitlist: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM booking_waitlist w JOIN booking_gps g ON g.gp_uid = w.gp_uid \
             WHERE w.active = 1 AND {gp_where}"
        ))
        .bind(&f.org)
        .bind(&f.municipality)
        .fetch_one(self.db.read())
        .await?;
        Ok(pb::GetListFiguresResponse {
            lists: lists.try_get::<i64, _>("lists")? as u64,
            lists_without_gp: lists.try_get::<i64, _>("vacant")? as u64,
            persons_on_lists_without_gp: persons as u64,
            waitlist_active: waitlist as u64,
        })
    }
}

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for StatsGrpc {
    async fn get_contact_counts(
        &self,
        req: Request<pb::GetContactCountsRequest>,
    ) -> Result<Response<pb::GetContactCountsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let r = req.into_inner();
        let f = Filter::from_proto(r.filter, &caller)?;
        let g = granularity(r.granularity)?;
        let keep = dimensions(&r.group_by)?;
        let rows = self
            .contact_breakdown(&f, g, keep)
            .await
            .map_err(|e| db_status("contact counts", e))?;
        Ok(Response::new(pb::GetContactCountsResponse { rows }))
    }

    async fn get_consultation_response_times(
        &self,
        req: Request<pb::GetConsultationResponseTimesRequest>,
    ) -> Result<Response<pb::GetConsultationResponseTimesResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = Filter::from_proto(req.into_inner().filter, &caller)?;
        let out = self
            .response_times(&f)
            .await
            .map_err(|e| db_status("response times", e))?;
        Ok(Response::new(out))
    }

    async fn get_video_sessions(
        &self,
        req: Request<pb::GetVideoSessionsRequest>,
    ) -> Result<Response<pb::GetVideoSessionsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = Filter::from_proto(req.into_inner().filter, &caller)?;
        let out = self
            .video_sessions(&f)
            .await
            .map_err(|e| db_status("video sessions", e))?;
        Ok(Response::new(out))
    }

    async fn get_list_figures(
        &self,
        req: Request<pb::GetListFiguresRequest>,
    ) -> Result<Response<pb::GetListFiguresResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = Filter::scope_from_proto(req.into_inner().filter, &caller)?;
        let out = self
            .list_figures(&f)
            .await
            .map_err(|e| db_status("list figures", e))?;
        Ok(Response::new(out))
    }

    async fn export_contacts(
        &self,
        req: Request<pb::ExportContactsRequest>,
    ) -> Result<Response<pb::ExportContactsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let r = req.into_inner();
        let f = Filter::from_proto(r.filter, &caller)?;
        let g = granularity(r.granularity)?;
        let level = match pb::ExportLevel::try_from(r.level) {
            Ok(pb::ExportLevel::Unspecified) => pb::ExportLevel::Gp,
            Ok(l) => l,
            Err(_) => return Err(Status::invalid_argument("level is not a known value")),
        };
        let out = self
            .export(&f, g, level)
            .await
            .map_err(|e| db_status("export", e))?;
        Ok(Response::new(out))
    }

    async fn get_booking_accessibility(
        &self,
        req: Request<pb::GetBookingAccessibilityRequest>,
    ) -> Result<Response<pb::GetBookingAccessibilityResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = Filter::from_proto(req.into_inner().filter, &caller)?;
        let out = self
            .accessibility(&f)
            .await
            .map_err(|e| db_status("accessibility", e))?;
        Ok(Response::new(out))
    }
}
