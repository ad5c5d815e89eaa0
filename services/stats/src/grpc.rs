//! gRPC adapter of the statistics service.

use econsult_proto::stats::v1 as pb;
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::db::Db;
use econsult_runtime::grpc::{db_status, parse_date};
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
        let org = match caller.role {
            Role::Ops => f.org_number,
            _ => {
                let own = caller.org_with_scope(SCOPE_READ)?;
                if !f.org_number.is_empty() && f.org_number != own {
                    return Err(Status::permission_denied(
                        "an EHR can only read its own organisation's statistics",
                    ));
                }
                own.to_owned()
            }
        };
        Ok(Self {
            from: from.format("%Y-%m-%d").to_string(),
            to: to.format("%Y-%m-%d").to_string(),
            org,
            municipality: f.municipality_number,
            gp: f.gp_id,
        })
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
                })
            })
            .collect()
    }

    /// Accessibility figures (used by the gRPC call and tests).
    pub async fn accessibility(
        &self,
        f: &Filter,
    ) -> Result<pb::GetBookingAccessibilityResponse, sqlx::Error> {
        let sql = format!(
            "SELECT working_days, within_target, breach_reason, CAST(SUM(n) AS BIGINT) AS n FROM stats_booking_requests \
             WHERE {WHERE} GROUP BY working_days, within_target, breach_reason"
        );
        let mut out = pb::GetBookingAccessibilityResponse {
            working_days_histogram: vec![0; 16],
            ..Default::default()
        };
        for r in Self::query(&sql, f).fetch_all(self.db.read()).await? {
            let n = r.try_get::<i64, _>("n")? as u64;
            let wd: i64 = r.try_get("working_days")?;
            out.requests += n;
            if r.try_get::<i64, _>("within_target")? != 0 {
                out.within_target += n;
            }
            match r.try_get::<String, _>("breach_reason")?.as_str() {
                "no_slots" => out.breaches_no_slots += n,
                "list_without_gp" => out.breaches_list_without_gp += n,
                _ => {}
            }
            let bucket = if (0..15).contains(&wd) {
                wd as usize
            } else {
                15
            };
            out.working_days_histogram[bucket] += n;
        }
        out.within_target_share = if out.requests == 0 {
            0.0
        } else {
            out.within_target as f64 / out.requests as f64
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

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for StatsGrpc {
    async fn get_contact_counts(
        &self,
        req: Request<pb::GetContactCountsRequest>,
    ) -> Result<Response<pb::GetContactCountsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = Filter::from_proto(req.into_inner().filter, &caller)?;
        let rows = self
            .contact_counts(&f)
            .await
            .map_err(|e| db_status("contact counts", e))?;
        Ok(Response::new(pb::GetContactCountsResponse { rows }))
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
