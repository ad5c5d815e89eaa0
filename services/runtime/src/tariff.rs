//! Normaltariffen for fastleger as data: the codes this system bills or counts, what they mean,
//! their KPR category (Kommunalt pasient- og brukerregister's categories for the regular GP
//! service) and the period each is valid in. The tariff changes every 1 July: a change is a new
//! row (or an end date on an old one), never an edit of a past period, so a contact is always
//! checked against the tariff of its own date.
//!
//! Sources of the periods (dates are inclusive, ISO, Europe/Oslo):
//! - 2ad, 2ak, 2ae, 2aek, 2af and their texts: Den norske legeforening, Normaltariffen
//!   (normaltariffen.legeforeningen.no, current book: "2aek E-konsultasjon hos fastlege og på
//!   legevakt (kveld)"); 2aek and 2af are listed already in Tariffen 2020/2021 (confrere.com's
//!   summary of that tariff: "304 kroner (2aek) for videokonsultasjon på kveldstid", 2af
//!   "tverrfaglig konsultasjon"), so they are valid here from 2020-07-01; 2ae since 2016
//!   ("siden 2016 har fastleger kunnet gjøre videokonsultasjoner", 2ae), from 2016-07-01.
//! - 1be folded into 1bd on 2022-07-01 (the project's domain brief, shared/DOMAIN.md): valid
//!   until 2022-06-30.
//! - 2aef: the domain brief says the evening e-consultation code "varied by tariff year (2aef /
//!   2aek)", but no tariff book we could read lists 2aef or its period, so it is not in the
//!   table (a code that is not here is refused); add its row with its period once a source
//!   gives them.
//! - Codes without a known start (2ad, 2ak, 1ad, 1bd, 1bk, 11ad, 11ak) predate this system's
//!   data: `valid_from` is `None`.

/// KPR's categories of contacts with the regular GP service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KprCategory {
    /// Consultation with the patient present.
    ConsultationInPerson,
    /// E-consultation, text or video.
    EConsultation,
    /// Home visit (sykebesøk).
    HomeVisit,
    /// Simple contact (in writing, by phone or electronically, by the doctor).
    SimpleContact,
    /// Interdisciplinary cooperation.
    Interdisciplinary,
    /// Administrative work: no health care given, no tariff (e.g. a reception's answer).
    Administrative,
}

impl KprCategory {
    /// The name the statistics API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsultationInPerson => "consultation_in_person",
            Self::EConsultation => "e_consultation",
            Self::HomeVisit => "home_visit",
            Self::SimpleContact => "simple_contact",
            Self::Interdisciplinary => "interdisciplinary",
            Self::Administrative => "administrative",
        }
    }

    /// Whether KPR counts it as a consultation (in person or e-consultation incl. video).
    pub fn is_consultation(self) -> bool {
        matches!(self, Self::ConsultationInPerson | Self::EConsultation)
    }
}

/// One code of the tariff in one validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tariff {
    /// The code, e.g. "2ae".
    pub code: &'static str,
    /// What it pays for.
    pub meaning: &'static str,
    /// Its KPR category.
    pub category: KprCategory,
    /// Evening (kveld), night or holiday code ("k" in the code).
    pub evening: bool,
    /// The patient must be present (not billable for a written thread).
    pub needs_attendance: bool,
    /// First day valid (ISO date), `None` = before this system's data.
    pub valid_from: Option<&'static str>,
    /// Last day valid (ISO date), `None` = still valid.
    pub valid_to: Option<&'static str>,
}

impl Tariff {
    /// Whether the code is valid on `date` (ISO "YYYY-MM-DD", which orders as text).
    pub fn valid_on(&self, date: &str) -> bool {
        self.valid_from.is_none_or(|f| f <= date) && self.valid_to.is_none_or(|t| date <= t)
    }

    /// "2016-07-01 to 2022-06-30", "until 2022-06-30", "from 2020-07-01", "always".
    pub fn period(&self) -> String {
        match (self.valid_from, self.valid_to) {
            (Some(f), Some(t)) => format!("{f} to {t}"),
            (None, Some(t)) => format!("until {t}"),
            (Some(f), None) => format!("from {f}"),
            (None, None) => "always".to_owned(),
        }
    }
}

const fn row(
    code: &'static str,
    meaning: &'static str,
    category: KprCategory,
    needs_attendance: bool,
    valid_from: Option<&'static str>,
    valid_to: Option<&'static str>,
) -> Tariff {
    let b = code.as_bytes();
    Tariff {
        code,
        meaning,
        category,
        evening: b[b.len() - 1] == b'k',
        needs_attendance,
        valid_from,
        valid_to,
    }
}

use KprCategory::*;

/// The table (one row per code and period; see the module doc for the sources).
pub const TARIFF: &[Tariff] = &[
    row(
        "2ad",
        "consultation with a GP, day",
        ConsultationInPerson,
        true,
        None,
        None,
    ),
    row(
        "2ak",
        "consultation with a GP, evening",
        ConsultationInPerson,
        true,
        None,
        None,
    ),
    row(
        "2ae",
        "e-consultation (text or video) with the GP, day",
        EConsultation,
        false,
        Some("2016-07-01"),
        None,
    ),
    row(
        "2aek",
        "e-consultation (text or video) with the GP, evening",
        EConsultation,
        false,
        Some("2020-07-01"),
        None,
    ),
    row("11ad", "home visit, day", HomeVisit, true, None, None),
    row("11ak", "home visit, evening", HomeVisit, true, None, None),
    row(
        "1ad",
        "simple contact with the patient present",
        SimpleContact,
        true,
        None,
        None,
    ),
    row(
        "1bd",
        "simple contact by the doctor in writing, by phone or electronically, with advice, day",
        SimpleContact,
        false,
        None,
        None,
    ),
    row(
        "1bk",
        "simple contact by the doctor in writing, by phone or electronically, with advice, evening",
        SimpleContact,
        false,
        None,
        None,
    ),
    row(
        "1be",
        "simple contact by e-message (folded into 1bd from 2022-07-01)",
        SimpleContact,
        false,
        None,
        Some("2022-06-30"),
    ),
    row(
        "2af",
        "interdisciplinary e-consultation",
        Interdisciplinary,
        false,
        Some("2020-07-01"),
        None,
    ),
];

/// Why a code cannot be billed for a contact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TariffError {
    /// Not a code of the table.
    #[error("tariff_code {0} is not a code of Normaltariffen this service knows")]
    Unknown(String),
    /// A code of the table, but not valid on the contact's date.
    #[error("tariff_code {code} is not valid on the contact's date {date} (valid {period})")]
    NotValidOn {
        /// The code.
        code: String,
        /// The contact's date.
        date: String,
        /// When it was valid.
        period: String,
    },
    /// The code needs the patient present.
    #[error("tariff_code {0} requires the patient to attend, not for a written contact")]
    NeedsAttendance(String),
}

/// The rows of `code` (any period).
pub fn rows_of(code: &str) -> impl Iterator<Item = &'static Tariff> + '_ {
    TARIFF.iter().filter(move |t| t.code == code)
}

/// The row of `code` valid on `date` (ISO).
pub fn lookup(code: &str, date: &str) -> Result<&'static Tariff, TariffError> {
    let mut rows = rows_of(code).peekable();
    if rows.peek().is_none() {
        return Err(TariffError::Unknown(code.to_owned()));
    }
    let rows: Vec<_> = rows.collect();
    rows.iter()
        .find(|t| t.valid_on(date))
        .copied()
        .ok_or_else(|| TariffError::NotValidOn {
            code: code.to_owned(),
            date: date.to_owned(),
            period: rows
                .iter()
                .map(|t| t.period())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The row of `code` valid on `date` that can be billed without the patient present (a written
/// thread, a phone call).
pub fn remote(code: &str, date: &str) -> Result<&'static Tariff, TariffError> {
    let t = lookup(code, date)?;
    if t.needs_attendance {
        return Err(TariffError::NeedsAttendance(code.to_owned()));
    }
    Ok(t)
}

/// KPR category of a counted contact by its tariff code: no code = administrative work; a code
/// this table does not know (none is counted today) = its own name, so it shows rather than
/// hides.
pub fn category_name(code: &str) -> &str {
    if code.is_empty() {
        return Administrative.as_str();
    }
    rows_of(code).next().map_or(code, |t| t.category.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_at_most_one_row_on_any_day() {
        for t in TARIFF {
            for other in rows_of(t.code).filter(|o| *o != t) {
                let from = t.valid_from.max(other.valid_from).unwrap_or("");
                let to = min_to(t, other).unwrap_or("9999-12-31");
                assert!(from > to, "{} has overlapping periods", t.code);
            }
        }
        fn min_to(a: &Tariff, b: &Tariff) -> Option<&'static str> {
            match (a.valid_to, b.valid_to) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, None) | (None, x) => x,
            }
        }
    }

    #[test]
    fn one_be_was_folded_into_one_bd_on_the_first_of_july_2022() {
        assert_eq!(lookup("1be", "2022-06-30").map(|t| t.code), Ok("1be"));
        assert_eq!(
            lookup("1be", "2022-07-01").unwrap_err().to_string(),
            "tariff_code 1be is not valid on the contact's date 2022-07-01 (valid until 2022-06-30)"
        );
        assert!(lookup("1bd", "2022-07-01").is_ok());
    }

    #[test]
    fn codes_that_need_the_patient_are_not_remote() {
        for code in ["2ad", "2ak", "1ad", "11ad", "11ak"] {
            assert_eq!(
                remote(code, "2026-03-02"),
                Err(TariffError::NeedsAttendance(code.into()))
            );
        }
        for code in ["2ae", "2aek", "1bd", "1bk", "2af"] {
            assert!(remote(code, "2026-03-02").is_ok(), "{code}");
        }
        assert_eq!(
            remote("2aef", "2026-03-02"),
            Err(TariffError::Unknown("2aef".into()))
        );
    }

    #[test]
    fn evening_codes_end_in_k_and_the_categories_follow_kpr() {
        assert!(
            TARIFF
                .iter()
                .filter(|t| t.evening)
                .all(|t| t.code.ends_with('k'))
        );
        assert_eq!(category_name("2ad"), "consultation_in_person");
        assert_eq!(category_name("2aek"), "e_consultation");
        assert_eq!(category_name("1bd"), "simple_contact");
        assert_eq!(category_name("2af"), "interdisciplinary");
        assert_eq!(category_name("11ak"), "home_visit");
        assert_eq!(category_name(""), "administrative");
    }
}
