//! Read-only lookups of GPs and list membership for the other services (consultation,
//! signalling). All services share one database (tables prefixed per service), so this is a
//! plain query; if booking ever moves to a database of its own, this becomes a gRPC call.

use econsult_runtime::db::Db;
use sqlx::Row as _;

/// A GP as other services need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpRef {
    /// The EHR's id of the GP.
    pub gp_id: String,
    /// HPR number.
    pub hpr_number: String,
    /// Display name.
    pub display_name: String,
    /// Practice organisation number.
    pub org_number: String,
    /// Municipality number of the list.
    pub municipality_number: String,
    /// Whether the list is vacant (no GP).
    pub vacant: bool,
}

fn gp_ref(r: &sqlx::any::AnyRow) -> Result<GpRef, sqlx::Error> {
    Ok(GpRef {
        gp_id: r.try_get("gp_id")?,
        hpr_number: r.try_get("hpr_number")?,
        display_name: r.try_get("display_name")?,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
        vacant: r.try_get::<i64, _>("list_status")? == 2,
    })
}

const COLS: &str =
    "g.gp_id, g.hpr_number, g.display_name, g.org_number, g.municipality_number, g.list_status";

/// The regular GP of a patient (by identity number), if the patient is on a list.
pub async fn patient_gp(db: &Db, nin: &str) -> Result<Option<GpRef>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1"
    ))
    .bind(nin)
    .fetch_optional(db.read())
    .await?;
    row.as_ref().map(gp_ref).transpose()
}

/// A GP of an organisation.
pub async fn gp(db: &Db, org_number: &str, gp_id: &str) -> Result<Option<GpRef>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM booking_gps g WHERE g.org_number = $1 AND g.gp_id = $2"
    ))
    .bind(org_number)
    .bind(gp_id)
    .fetch_optional(db.read())
    .await?;
    row.as_ref().map(gp_ref).transpose()
}

/// Closure days of a practice (ISO dates), as set through booking's SetClosures.
pub async fn closures(db: &Db, org_number: &str) -> Result<Vec<chrono::NaiveDate>, sqlx::Error> {
    let rows = sqlx::query("SELECT closed_on FROM booking_closures WHERE org_number = $1")
        .bind(org_number)
        .fetch_all(db.read())
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let s: String = r.try_get("closed_on")?;
        if let Ok(d) = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d") {
            out.push(d);
        }
    }
    Ok(out)
}
