//! Norwegian working days (arbeidsdager): Monday–Friday minus public holidays, minus
//! per-practice closure days (24 and 31 December and staff days are closures, not holidays).
//!
//! Used for the five-working-day booking target (fastlegeforskriften § 22) and for the
//! response SLA of text consultations. Pure functions, no I/O.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};
use std::collections::BTreeSet;

/// Years for which holidays are computed.
pub const SUPPORTED_YEARS: std::ops::RangeInclusive<i32> = 1900..=2200;

/// Norwegian public holidays (helligdagsfredloven § 2 and the 1947 law for 1 and 17 May).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holiday {
    NewYearsDay,
    MaundyThursday,
    GoodFriday,
    EasterSunday,
    EasterMonday,
    LabourDay,
    ConstitutionDay,
    AscensionDay,
    WhitSunday,
    WhitMonday,
    ChristmasDay,
    BoxingDay,
}

/// Easter Sunday (Gregorian computus, anonymous algorithm).
pub fn easter_sunday(year: i32) -> Option<NaiveDate> {
    if !SUPPORTED_YEARS.contains(&year) {
        return None;
    }
    let a = year % 19;
    let b = year / 100;
    let c = year % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    NaiveDate::from_ymd_opt(year, month as u32, day as u32)
}

/// Public holidays of `year`, sorted.
pub fn public_holidays(year: i32) -> Vec<(NaiveDate, Holiday)> {
    let Some(e) = easter_sunday(year) else {
        return Vec::new();
    };
    let fixed = |m, d, h| NaiveDate::from_ymd_opt(year, m, d).map(|x| (x, h));
    let mut v: Vec<(NaiveDate, Holiday)> = [
        fixed(1, 1, Holiday::NewYearsDay),
        fixed(5, 1, Holiday::LabourDay),
        fixed(5, 17, Holiday::ConstitutionDay),
        fixed(12, 25, Holiday::ChristmasDay),
        fixed(12, 26, Holiday::BoxingDay),
        Some((e - Duration::days(3), Holiday::MaundyThursday)),
        Some((e - Duration::days(2), Holiday::GoodFriday)),
        Some((e, Holiday::EasterSunday)),
        Some((e + Duration::days(1), Holiday::EasterMonday)),
        Some((e + Duration::days(39), Holiday::AscensionDay)),
        Some((e + Duration::days(49), Holiday::WhitSunday)),
        Some((e + Duration::days(50), Holiday::WhitMonday)),
    ]
    .into_iter()
    .flatten()
    .collect();
    v.sort_by_key(|(d, _)| *d);
    v
}

/// The holiday on `date`, if any.
pub fn public_holiday(date: NaiveDate) -> Option<Holiday> {
    public_holidays(date.year())
        .into_iter()
        .find(|(d, _)| *d == date)
        .map(|(_, h)| h)
}

/// A working-day calendar with optional practice closures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calendar {
    closures: BTreeSet<NaiveDate>,
}

impl Calendar {
    /// No closures.
    pub fn norwegian() -> Self {
        Self::default()
    }
    /// With practice closure days.
    pub fn with_closures(closures: impl IntoIterator<Item = NaiveDate>) -> Self {
        Self {
            closures: closures.into_iter().collect(),
        }
    }
    /// The closure days.
    pub fn closures(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.closures.iter().copied()
    }
    /// Mon–Fri, no public holiday, no closure.
    pub fn is_working_day(&self, d: NaiveDate) -> bool {
        !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
            && public_holiday(d).is_none()
            && !self.closures.contains(&d)
    }
    /// The smallest working day `d'` with `working_days_between(d, d') == n` (d itself for 0).
    pub fn add_working_days(&self, d: NaiveDate, n: u32) -> NaiveDate {
        let mut cur = d;
        let mut left = n;
        while left > 0 {
            cur = cur.succ_opt().unwrap_or(cur);
            if self.is_working_day(cur) {
                left -= 1;
            }
        }
        cur
    }
    /// Working days w with from < w <= to (negated when to < from). Runs in time proportional
    /// to the number of years spanned, not days.
    pub fn working_days_between(&self, from: NaiveDate, to: NaiveDate) -> i64 {
        if to < from {
            return -self.working_days_between(to, from);
        }
        if to == from {
            // Also keeps the closures' range below non-empty (from + 1 ..= to panics).
            return 0;
        }
        let mut n = weekdays_up_to(to) - weekdays_up_to(from);
        // A date can carry two holidays (Ascension Day on 1 May, as in 2008): count dates.
        let mut holidays = BTreeSet::new();
        for year in from.year()..=to.year() {
            for (d, _) in public_holidays(year) {
                if d > from && d <= to && is_weekday(d) {
                    holidays.insert(d);
                }
            }
        }
        n -= holidays.len() as i64;
        for d in self.closures.range(from.succ_opt().unwrap_or(from)..=to) {
            if is_weekday(*d) && public_holiday(*d).is_none() && *d > from {
                n -= 1;
            }
        }
        n
    }

    /// `d` if it is a working day, else the next one.
    pub fn next_working_day_on_or_after(&self, d: NaiveDate) -> NaiveDate {
        let mut cur = d;
        while !self.is_working_day(cur) {
            cur = cur.succ_opt().unwrap_or(cur);
        }
        cur
    }
}

fn is_weekday(d: NaiveDate) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

/// Number of Mondays–Fridays from a fixed epoch Monday up to and including `d` (may be negative
/// before the epoch); differences of it count weekdays in a half-open range.
fn weekdays_up_to(d: NaiveDate) -> i64 {
    // 1900-01-01 was a Monday.
    let epoch = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN);
    let days = (d - epoch).num_days() + 1; // days in [epoch, d]
    let weeks = days.div_euclid(7);
    let rest = days.rem_euclid(7);
    weeks * 5 + rest.min(5)
}

/// The Norwegian (Europe/Oslo) date of an instant.
pub fn oslo_date(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&chrono_tz::Europe::Oslo).date_naive()
}

/// The instant an Oslo calendar day begins (local midnight, which DST never skips in Oslo).
pub fn oslo_day_start(d: NaiveDate) -> DateTime<Utc> {
    let naive = d.and_hms_opt(0, 0, 0).unwrap_or_default();
    chrono_tz::Europe::Oslo
        .from_local_datetime(&naive)
        .earliest()
        .map_or_else(|| naive.and_utc(), |x| x.with_timezone(&Utc))
}

/// `n` working days after `t`, keeping the Oslo wall-clock time.
pub fn add_working_days_at(cal: &Calendar, t: DateTime<Utc>, n: u32) -> DateTime<Utc> {
    let local = t.with_timezone(&chrono_tz::Europe::Oslo);
    let day = cal.add_working_days(local.date_naive(), n);
    let naive = day.and_time(local.time());
    chrono_tz::Europe::Oslo
        .from_local_datetime(&naive)
        .earliest()
        .map(|x| x.with_timezone(&Utc))
        .unwrap_or_else(|| t + Duration::days(i64::from(n)))
}
