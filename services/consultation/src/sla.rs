//! The response SLA in working days and working hours.

use chrono::{DateTime, Duration, NaiveTime, TimeZone as _, Utc};
use econsult_calendar::{Calendar, add_working_days_at, oslo_date};

/// Opening hours used for "working hours" (Oslo time, on working days).
pub const OPEN: (u32, u32) = (8, 16);

/// Due time: `n` working days after submission, same Oslo wall-clock time.
pub fn due_at(cal: &Calendar, submitted: DateTime<Utc>, n: u32) -> DateTime<Utc> {
    add_working_days_at(cal, submitted, n)
}

/// Working days from the submission date to the response date (0 = same day).
pub fn working_days(cal: &Calendar, from: DateTime<Utc>, to: DateTime<Utc>) -> u32 {
    u32::try_from(
        cal.working_days_between(oslo_date(from), oslo_date(to))
            .max(0),
    )
    .unwrap_or(0)
}

/// Hours between `from` and `to` that fall within 08:00-16:00 Oslo time on working days.
pub fn working_hours(cal: &Calendar, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    if to <= from {
        return 0.0;
    }
    let tz = chrono_tz::Europe::Oslo;
    let mut day = oslo_date(from);
    let last = oslo_date(to);
    let mut total = Duration::zero();
    while day <= last {
        if cal.is_working_day(day) {
            let at = |h: u32| {
                tz.from_local_datetime(
                    &day.and_time(NaiveTime::from_hms_opt(h, 0, 0).unwrap_or_default()),
                )
                .earliest()
                .map(|t| t.with_timezone(&Utc))
            };
            if let (Some(open), Some(close)) = (at(OPEN.0), at(OPEN.1)) {
                let start = open.max(from);
                let end = close.min(to);
                if end > start {
                    total += end - start;
                }
            }
        }
        match day.succ_opt() {
            Some(d) => day = d,
            None => break,
        }
    }
    total.num_seconds() as f64 / 3600.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oslo(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        chrono_tz::Europe::Oslo
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .map(|t| t.with_timezone(&Utc))
            .expect("valid Oslo time")
    }

    #[test]
    fn maundy_thursday_submission_skips_easter() {
        // Maundy Thursday 2026-04-02: Thu, Good Friday, Easter Monday are holidays. Five working
        // days after it: Tue 7, Wed 8, Thu 9, Fri 10, Mon 13 April.
        let due = due_at(&Calendar::norwegian(), oslo(2026, 4, 2, 10, 0), 5);
        assert_eq!(due, oslo(2026, 4, 13, 10, 0));
    }

    #[test]
    fn working_hours_count_only_opening_hours_on_working_days() {
        let cal = Calendar::norwegian();
        // Friday 15:00 to Monday 09:00: one hour on Friday, one on Monday.
        let h = working_hours(&cal, oslo(2026, 11, 20, 15, 0), oslo(2026, 11, 23, 9, 0));
        assert!((h - 2.0).abs() < 1e-9, "{h}");
        assert_eq!(
            working_days(&cal, oslo(2026, 11, 20, 15, 0), oslo(2026, 11, 23, 9, 0)),
            1
        );
        // Saturday to Sunday: none.
        assert_eq!(
            working_hours(&cal, oslo(2026, 11, 21, 9, 0), oslo(2026, 11, 22, 15, 0)),
            0.0
        );
    }
}
