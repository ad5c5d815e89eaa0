//! gRPC adapter of the statistics service: the caller check, proto ⇄ domain, and the one
//! mapping of [`StatsError`] to a gRPC status.

use crate::domain::{Dimensions, Disclosure, ExportLevel, Filter, Granularity, SizeBand};
use crate::error::StatsError;
use crate::service::Stats;
use econsult_booking::domain::BreachReason;
use econsult_booking::guarantee::MetBy;
use econsult_proto::stats::v1 as pb;
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::grpc::{anyhow_status, db_status, no_nuls};
use tonic::{Request, Response, Status};

/// Scope for an EHR reading its own organisation's statistics.
pub const SCOPE_READ: &str = "econsult:stats.read";

/// The tonic service.
pub struct StatsGrpc {
    stats: Stats,
}

impl From<StatsError> for Status {
    fn from(e: StatsError) -> Self {
        match e {
            StatsError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            StatsError::PermissionDenied(m) => Status::permission_denied(m),
            StatsError::Db(d) => db_status("stats", d),
            StatsError::Other(o) => anyhow_status("stats", o),
        }
    }
}

fn date(s: &str, field: &str) -> Result<chrono::NaiveDate, StatsError> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| StatsError::invalid(field, "must be an ISO date like 2026-04-02"))
}

/// `None` for ops (every organisation), else the caller's own organisation.
fn own_org(caller: &Caller) -> Result<Option<String>, Status> {
    match caller.role {
        Role::Ops => Ok(None),
        _ => Ok(Some(caller.org_with_scope(SCOPE_READ)?.to_owned())),
    }
}

/// What `caller` may see of the figures: an EHR (always limited to its own organisation) reads
/// its own practice's data exactly; anyone else gets small cells suppressed.
fn disclosure(caller: &Caller) -> Disclosure {
    match caller.role {
        Role::Ops => Disclosure::Protected,
        _ => Disclosure::Own,
    }
}

/// The organisation asked for, which an EHR may only name as its own.
fn org(own: Option<String>, asked: String) -> Result<String, StatsError> {
    match own {
        None => Ok(asked),
        Some(own) if asked.is_empty() || asked == own => Ok(own),
        Some(_) => Err(StatsError::PermissionDenied(
            "an EHR can only read its own organisation's statistics".into(),
        )),
    }
}

/// Refuses a NUL in the filter's ids (see [`econsult_runtime::grpc::no_nul`]).
fn filter_no_nul(f: &pb::Filter) -> Result<(), Status> {
    no_nuls(&[
        (&f.org_number, "filter.org_number"),
        (&f.municipality_number, "filter.municipality_number"),
        (&f.gp_id, "filter.gp_id"),
        (&f.county_number, "filter.county_number"),
        (&f.size_band, "filter.size_band"),
    ])
}

/// Refuses the county and size-band filters in a query that does not break figures down by
/// them (only contact counts and exports do).
fn no_levels(f: &Filter) -> Result<(), Status> {
    if !f.county.is_empty() {
        return Err(StatsError::invalid(
            "filter.county_number",
            "applies only to GetContactCounts and ExportContacts",
        )
        .into());
    }
    if f.size_band.is_some() {
        return Err(StatsError::invalid(
            "filter.size_band",
            "applies only to GetContactCounts and ExportContacts",
        )
        .into());
    }
    Ok(())
}

fn county(s: String) -> Result<String, StatsError> {
    if s.is_empty() || (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())) {
        Ok(s)
    } else {
        Err(StatsError::invalid(
            "filter.county_number",
            "must be two digits, e.g. 46",
        ))
    }
}

fn size_band(s: &str) -> Result<Option<SizeBand>, StatsError> {
    if s.is_empty() {
        return Ok(None);
    }
    SizeBand::from_label(s).map(Some).ok_or_else(|| {
        StatsError::invalid(
            "filter.size_band",
            "must be one of under_5000, 5000_19999, 20000_49999, 50000_and_over",
        )
    })
}

/// Validates `f` for `caller`: ops see all, an EHR only its own organisation.
pub fn filter(f: Option<pb::Filter>, caller: &Caller) -> Result<Filter, Status> {
    // Who may ask comes before what is asked: a caller without access learns nothing from
    // validation messages.
    let own = own_org(caller)?;
    let f = f.ok_or_else(|| Status::invalid_argument("filter is required"))?;
    filter_no_nul(&f)?;
    let from = date(&f.from_date, "filter.from_date")?;
    let to = date(&f.to_date, "filter.to_date")?;
    if to < from {
        return Err(
            StatsError::invalid("filter.to_date", "must not be before filter.from_date").into(),
        );
    }
    if (to - from).num_days() > 366 {
        return Err(StatsError::invalid(
            "filter.to_date",
            "must be at most 366 days after filter.from_date",
        )
        .into());
    }
    Ok(Filter {
        from: from.format("%Y-%m-%d").to_string(),
        to: to.format("%Y-%m-%d").to_string(),
        org: org(own, f.org_number)?,
        municipality: f.municipality_number,
        gp: f.gp_id,
        size_band: size_band(&f.size_band)?,
        county: county(f.county_number)?,
    })
}

/// Organisation and municipality of `f` for figures of now (no dates apply).
pub fn scope_filter(f: Option<pb::Filter>, caller: &Caller) -> Result<Filter, Status> {
    let own = own_org(caller)?;
    let f = f.unwrap_or_default();
    filter_no_nul(&f)?;
    let f = Filter {
        from: String::new(),
        to: String::new(),
        org: org(own, f.org_number)?,
        municipality: f.municipality_number,
        gp: f.gp_id,
        size_band: size_band(&f.size_band)?,
        county: county(f.county_number)?,
    };
    no_levels(&f)?;
    Ok(f)
}

fn granularity(v: i32) -> Result<Granularity, StatsError> {
    match pb::Granularity::try_from(v) {
        Ok(pb::Granularity::Unspecified | pb::Granularity::Day) => Ok(Granularity::Day),
        Ok(pb::Granularity::IsoWeek) => Ok(Granularity::IsoWeek),
        Ok(pb::Granularity::Month) => Ok(Granularity::Month),
        Err(_) => Err(StatsError::invalid("granularity", "is not a known value")),
    }
}

fn dimensions(v: &[i32]) -> Result<Dimensions, StatsError> {
    if v.is_empty() {
        return Ok(Dimensions::ALL);
    }
    let mut keep = Dimensions::NONE;
    for (i, d) in v.iter().enumerate() {
        let slot = match pb::Dimension::try_from(*d) {
            Ok(pb::Dimension::Org) => &mut keep.org,
            Ok(pb::Dimension::Municipality) => &mut keep.municipality,
            Ok(pb::Dimension::Gp) => &mut keep.gp,
            Ok(pb::Dimension::ContactType) => &mut keep.contact_type,
            Ok(pb::Dimension::TariffCode) => &mut keep.tariff_code,
            Ok(pb::Dimension::KprCategory) => &mut keep.kpr_category,
            Ok(pb::Dimension::County) => &mut keep.county,
            Ok(pb::Dimension::SizeBand) => &mut keep.size_band,
            _ => {
                return Err(StatsError::invalid(
                    format!("group_by[{i}]"),
                    "is not a known dimension",
                ));
            }
        };
        *slot = true;
    }
    Ok(keep)
}

fn export_level(v: i32) -> Result<ExportLevel, StatsError> {
    match pb::ExportLevel::try_from(v) {
        Ok(pb::ExportLevel::Unspecified | pb::ExportLevel::Gp) => Ok(ExportLevel::Gp),
        Ok(pb::ExportLevel::Municipality) => Ok(ExportLevel::Municipality),
        Err(_) => Err(StatsError::invalid("level", "is not a known value")),
    }
}

fn contact_row(r: crate::domain::ContactCount) -> pb::ContactCountRow {
    pb::ContactCountRow {
        date: r.period,
        org_number: r.org_number,
        municipality_number: r.municipality_number,
        gp_id: r.gp_id,
        contact_type: r.contact_type,
        tariff_code: r.tariff_code,
        count: r.count,
        kpr_category: r.kpr_category,
        county_number: r.county_number,
        county_name: r.county_name,
        size_band: r.size_band,
        suppressed: r.suppressed,
    }
}

impl StatsGrpc {
    /// Queries over `stats`.
    pub fn new(stats: Stats) -> Self {
        Self { stats }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::stats_service_server::StatsServiceServer<Self> {
        pb::stats_service_server::StatsServiceServer::new(self)
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
        let f = filter(r.filter, &caller)?;
        let g = granularity(r.granularity)?;
        let keep = dimensions(&r.group_by)?;
        let rows = self
            .stats
            .contact_breakdown(&f, g, keep, disclosure(&caller))
            .await?;
        Ok(Response::new(pb::GetContactCountsResponse {
            rows: rows.into_iter().map(contact_row).collect(),
        }))
    }

    async fn get_consultation_response_times(
        &self,
        req: Request<pb::GetConsultationResponseTimesRequest>,
    ) -> Result<Response<pb::GetConsultationResponseTimesResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = filter(req.into_inner().filter, &caller)?;
        no_levels(&f)?;
        let t = self.stats.response_times(&f, disclosure(&caller)).await?;
        Ok(Response::new(pb::GetConsultationResponseTimesResponse {
            responded: t.responded,
            within_sla: t.within_sla,
            within_sla_share: t.within_sla_share,
            working_days_histogram: t.working_days_histogram,
            suppressed: t.suppressed,
        }))
    }

    async fn get_video_sessions(
        &self,
        req: Request<pb::GetVideoSessionsRequest>,
    ) -> Result<Response<pb::GetVideoSessionsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = filter(req.into_inner().filter, &caller)?;
        no_levels(&f)?;
        let v = self.stats.video_sessions(&f, disclosure(&caller)).await?;
        Ok(Response::new(pb::GetVideoSessionsResponse {
            sessions: v.sessions,
            held: v.held,
            failed_to_connect: v.failed_to_connect,
            average_connected_seconds: v.average_connected_seconds,
            suppressed: v.suppressed,
        }))
    }

    async fn get_list_figures(
        &self,
        req: Request<pb::GetListFiguresRequest>,
    ) -> Result<Response<pb::GetListFiguresResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = scope_filter(req.into_inner().filter, &caller)?;
        let (l, suppressed) = self.stats.list_figures(&f, disclosure(&caller)).await?;
        Ok(Response::new(pb::GetListFiguresResponse {
            lists: l.lists,
            lists_without_gp: l.lists_without_gp,
            persons_on_lists_without_gp: l.persons_on_lists_without_gp,
            waitlist_active: l.waitlist_active,
            suppressed,
        }))
    }

    async fn export_contacts(
        &self,
        req: Request<pb::ExportContactsRequest>,
    ) -> Result<Response<pb::ExportContactsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let r = req.into_inner();
        let f = filter(r.filter, &caller)?;
        let g = granularity(r.granularity)?;
        let level = export_level(r.level)?;
        let e = self.stats.export(&f, g, level, disclosure(&caller)).await?;
        Ok(Response::new(pb::ExportContactsResponse {
            csv: e.csv,
            rows: e.rows,
            suppressed_rows: e.suppressed_rows,
        }))
    }

    async fn get_booking_accessibility(
        &self,
        req: Request<pb::GetBookingAccessibilityRequest>,
    ) -> Result<Response<pb::GetBookingAccessibilityResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let f = filter(req.into_inner().filter, &caller)?;
        no_levels(&f)?;
        let (a, appointments, suppressed) =
            self.stats.accessibility(&f, disclosure(&caller)).await?;
        let breaches = |r: BreachReason| a.breaches.get(&r).copied().unwrap_or_default();
        let met = |m: MetBy| a.met_by.get(&m).copied().unwrap_or_default();
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
        Ok(Response::new(pb::GetBookingAccessibilityResponse {
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
            met_by_colleague: met(MetBy::Colleague),
            met_by_video_or_phone: met(MetBy::VideoOrPhone),
            met_by_e_consultation: met(MetBy::EConsultation),
            met_by_priority_waitlist: met(MetBy::PriorityWaitlist),
            unmet: a.requests - a.within_target,
            bookings: appointments.bookings,
            late_cancellations: appointments.late_cancellations,
            no_shows: appointments.no_shows,
            suppressed,
        }))
    }
}
