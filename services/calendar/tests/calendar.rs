//! Calendar tests: a literal table of every Norwegian public holiday 2020–2035, worked examples,
//! DST, and properties over 1900–2200.
//!
//! The table is written out as dates (from the published Easter Sundays of those years and the
//! fixed offsets of the law), not computed by the code under test.

use chrono::{DateTime, Datelike, NaiveDate, Utc, Weekday};
use econsult_calendar::{
    Calendar, Holiday, Holiday::*, SUPPORTED_YEARS, add_working_days_at, easter_sunday, oslo_date,
    public_holiday, public_holidays,
};
use proptest::prelude::*;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

const HOLIDAYS_2020_2035: &[(&str, Holiday)] = &[
    // 2020
    ("2020-01-01", NewYearsDay),
    ("2020-04-09", MaundyThursday),
    ("2020-04-10", GoodFriday),
    ("2020-04-12", EasterSunday),
    ("2020-04-13", EasterMonday),
    ("2020-05-01", LabourDay),
    ("2020-05-17", ConstitutionDay),
    ("2020-05-21", AscensionDay),
    ("2020-05-31", WhitSunday),
    ("2020-06-01", WhitMonday),
    ("2020-12-25", ChristmasDay),
    ("2020-12-26", BoxingDay),
    // 2021
    ("2021-01-01", NewYearsDay),
    ("2021-04-01", MaundyThursday),
    ("2021-04-02", GoodFriday),
    ("2021-04-04", EasterSunday),
    ("2021-04-05", EasterMonday),
    ("2021-05-01", LabourDay),
    ("2021-05-13", AscensionDay),
    ("2021-05-17", ConstitutionDay),
    ("2021-05-23", WhitSunday),
    ("2021-05-24", WhitMonday),
    ("2021-12-25", ChristmasDay),
    ("2021-12-26", BoxingDay),
    // 2022
    ("2022-01-01", NewYearsDay),
    ("2022-04-14", MaundyThursday),
    ("2022-04-15", GoodFriday),
    ("2022-04-17", EasterSunday),
    ("2022-04-18", EasterMonday),
    ("2022-05-01", LabourDay),
    ("2022-05-17", ConstitutionDay),
    ("2022-05-26", AscensionDay),
    ("2022-06-05", WhitSunday),
    ("2022-06-06", WhitMonday),
    ("2022-12-25", ChristmasDay),
    ("2022-12-26", BoxingDay),
    // 2023
    ("2023-01-01", NewYearsDay),
    ("2023-04-06", MaundyThursday),
    ("2023-04-07", GoodFriday),
    ("2023-04-09", EasterSunday),
    ("2023-04-10", EasterMonday),
    ("2023-05-01", LabourDay),
    ("2023-05-17", ConstitutionDay),
    ("2023-05-18", AscensionDay),
    ("2023-05-28", WhitSunday),
    ("2023-05-29", WhitMonday),
    ("2023-12-25", ChristmasDay),
    ("2023-12-26", BoxingDay),
    // 2024
    ("2024-01-01", NewYearsDay),
    ("2024-03-28", MaundyThursday),
    ("2024-03-29", GoodFriday),
    ("2024-03-31", EasterSunday),
    ("2024-04-01", EasterMonday),
    ("2024-05-01", LabourDay),
    ("2024-05-09", AscensionDay),
    ("2024-05-17", ConstitutionDay),
    ("2024-05-19", WhitSunday),
    ("2024-05-20", WhitMonday),
    ("2024-12-25", ChristmasDay),
    ("2024-12-26", BoxingDay),
    // 2025
    ("2025-01-01", NewYearsDay),
    ("2025-04-17", MaundyThursday),
    ("2025-04-18", GoodFriday),
    ("2025-04-20", EasterSunday),
    ("2025-04-21", EasterMonday),
    ("2025-05-01", LabourDay),
    ("2025-05-17", ConstitutionDay),
    ("2025-05-29", AscensionDay),
    ("2025-06-08", WhitSunday),
    ("2025-06-09", WhitMonday),
    ("2025-12-25", ChristmasDay),
    ("2025-12-26", BoxingDay),
    // 2026
    ("2026-01-01", NewYearsDay),
    ("2026-04-02", MaundyThursday),
    ("2026-04-03", GoodFriday),
    ("2026-04-05", EasterSunday),
    ("2026-04-06", EasterMonday),
    ("2026-05-01", LabourDay),
    ("2026-05-14", AscensionDay),
    ("2026-05-17", ConstitutionDay),
    ("2026-05-24", WhitSunday),
    ("2026-05-25", WhitMonday),
    ("2026-12-25", ChristmasDay),
    ("2026-12-26", BoxingDay),
    // 2027
    ("2027-01-01", NewYearsDay),
    ("2027-03-25", MaundyThursday),
    ("2027-03-26", GoodFriday),
    ("2027-03-28", EasterSunday),
    ("2027-03-29", EasterMonday),
    ("2027-05-01", LabourDay),
    ("2027-05-06", AscensionDay),
    ("2027-05-16", WhitSunday),
    ("2027-05-17", ConstitutionDay),
    ("2027-05-17", WhitMonday),
    ("2027-12-25", ChristmasDay),
    ("2027-12-26", BoxingDay),
    // 2028
    ("2028-01-01", NewYearsDay),
    ("2028-04-13", MaundyThursday),
    ("2028-04-14", GoodFriday),
    ("2028-04-16", EasterSunday),
    ("2028-04-17", EasterMonday),
    ("2028-05-01", LabourDay),
    ("2028-05-17", ConstitutionDay),
    ("2028-05-25", AscensionDay),
    ("2028-06-04", WhitSunday),
    ("2028-06-05", WhitMonday),
    ("2028-12-25", ChristmasDay),
    ("2028-12-26", BoxingDay),
    // 2029
    ("2029-01-01", NewYearsDay),
    ("2029-03-29", MaundyThursday),
    ("2029-03-30", GoodFriday),
    ("2029-04-01", EasterSunday),
    ("2029-04-02", EasterMonday),
    ("2029-05-01", LabourDay),
    ("2029-05-10", AscensionDay),
    ("2029-05-17", ConstitutionDay),
    ("2029-05-20", WhitSunday),
    ("2029-05-21", WhitMonday),
    ("2029-12-25", ChristmasDay),
    ("2029-12-26", BoxingDay),
    // 2030
    ("2030-01-01", NewYearsDay),
    ("2030-04-18", MaundyThursday),
    ("2030-04-19", GoodFriday),
    ("2030-04-21", EasterSunday),
    ("2030-04-22", EasterMonday),
    ("2030-05-01", LabourDay),
    ("2030-05-17", ConstitutionDay),
    ("2030-05-30", AscensionDay),
    ("2030-06-09", WhitSunday),
    ("2030-06-10", WhitMonday),
    ("2030-12-25", ChristmasDay),
    ("2030-12-26", BoxingDay),
    // 2031
    ("2031-01-01", NewYearsDay),
    ("2031-04-10", MaundyThursday),
    ("2031-04-11", GoodFriday),
    ("2031-04-13", EasterSunday),
    ("2031-04-14", EasterMonday),
    ("2031-05-01", LabourDay),
    ("2031-05-17", ConstitutionDay),
    ("2031-05-22", AscensionDay),
    ("2031-06-01", WhitSunday),
    ("2031-06-02", WhitMonday),
    ("2031-12-25", ChristmasDay),
    ("2031-12-26", BoxingDay),
    // 2032
    ("2032-01-01", NewYearsDay),
    ("2032-03-25", MaundyThursday),
    ("2032-03-26", GoodFriday),
    ("2032-03-28", EasterSunday),
    ("2032-03-29", EasterMonday),
    ("2032-05-01", LabourDay),
    ("2032-05-06", AscensionDay),
    ("2032-05-16", WhitSunday),
    ("2032-05-17", ConstitutionDay),
    ("2032-05-17", WhitMonday),
    ("2032-12-25", ChristmasDay),
    ("2032-12-26", BoxingDay),
    // 2033
    ("2033-01-01", NewYearsDay),
    ("2033-04-14", MaundyThursday),
    ("2033-04-15", GoodFriday),
    ("2033-04-17", EasterSunday),
    ("2033-04-18", EasterMonday),
    ("2033-05-01", LabourDay),
    ("2033-05-17", ConstitutionDay),
    ("2033-05-26", AscensionDay),
    ("2033-06-05", WhitSunday),
    ("2033-06-06", WhitMonday),
    ("2033-12-25", ChristmasDay),
    ("2033-12-26", BoxingDay),
    // 2034
    ("2034-01-01", NewYearsDay),
    ("2034-04-06", MaundyThursday),
    ("2034-04-07", GoodFriday),
    ("2034-04-09", EasterSunday),
    ("2034-04-10", EasterMonday),
    ("2034-05-01", LabourDay),
    ("2034-05-17", ConstitutionDay),
    ("2034-05-18", AscensionDay),
    ("2034-05-28", WhitSunday),
    ("2034-05-29", WhitMonday),
    ("2034-12-25", ChristmasDay),
    ("2034-12-26", BoxingDay),
    // 2035
    ("2035-01-01", NewYearsDay),
    ("2035-03-22", MaundyThursday),
    ("2035-03-23", GoodFriday),
    ("2035-03-25", EasterSunday),
    ("2035-03-26", EasterMonday),
    ("2035-05-01", LabourDay),
    ("2035-05-03", AscensionDay),
    ("2035-05-13", WhitSunday),
    ("2035-05-14", WhitMonday),
    ("2035-05-17", ConstitutionDay),
    ("2035-12-25", ChristmasDay),
    ("2035-12-26", BoxingDay),
];

#[test]
fn every_public_holiday_2020_to_2035_matches_the_official_list() {
    for year in 2020..=2035 {
        let expected: Vec<(NaiveDate, Holiday)> = HOLIDAYS_2020_2035
            .iter()
            .filter(|(s, _)| s.starts_with(&year.to_string()))
            .map(|(s, h)| (d(s), *h))
            .collect();
        assert_eq!(expected.len(), 12, "{year}");
        assert_eq!(public_holidays(year), expected, "{year}");
    }
}

#[test]
fn easter_at_known_dates_and_the_range_edges() {
    for (y, e) in [
        (1900, "1900-04-15"),
        (1961, "1961-04-02"),
        (2000, "2000-04-23"),
        (2038, "2038-04-25"),
        (2200, "2200-04-06"),
    ] {
        assert_eq!(easter_sunday(y), Some(d(e)), "{y}");
    }
    assert_eq!(easter_sunday(1899), None);
    assert_eq!(easter_sunday(2201), None);
    assert!(public_holidays(2201).is_empty());
}

#[test]
fn easter_saturday_christmas_eve_and_new_years_eve_are_not_holidays() {
    let cal = Calendar::norwegian();
    assert_eq!(public_holiday(d("2026-04-04")), None);
    // 24 and 31 December 2025 are a Wednesday: working days unless the practice closes.
    assert!(cal.is_working_day(d("2025-12-24")));
    assert!(cal.is_working_day(d("2025-12-31")));
    let closed = Calendar::with_closures([d("2025-12-24"), d("2025-12-31")]);
    assert!(!closed.is_working_day(d("2025-12-24")));
    assert_eq!(closed.add_working_days(d("2025-12-23"), 1), d("2025-12-29"));
    assert_eq!(cal.add_working_days(d("2025-12-23"), 1), d("2025-12-24"));
}

#[test]
fn five_working_days_after_maundy_thursday_2026_is_monday_13_april() {
    let cal = Calendar::norwegian();
    assert_eq!(cal.add_working_days(d("2026-04-02"), 5), d("2026-04-13"));
    assert_eq!(
        cal.working_days_between(d("2026-04-02"), d("2026-04-13")),
        5
    );
    assert_eq!(
        cal.working_days_between(d("2026-04-02"), d("2026-04-14")),
        6
    );
    assert_eq!(
        cal.next_working_day_on_or_after(d("2026-04-02")),
        d("2026-04-07")
    );
}

#[test]
fn a_friday_plus_five_is_the_next_friday_and_17_may_2026_on_a_sunday_changes_nothing() {
    let cal = Calendar::norwegian();
    assert_eq!(cal.add_working_days(d("2026-03-06"), 5), d("2026-03-13"));
    assert_eq!(cal.add_working_days(d("2026-05-15"), 1), d("2026-05-18"));
    assert_eq!(d("2026-05-17").weekday(), Weekday::Sun);
    assert_eq!(cal.add_working_days(d("2026-03-06"), 0), d("2026-03-06"));
}

#[test]
fn due_times_keep_the_oslo_wall_clock_across_daylight_saving() {
    let cal = Calendar::norwegian();
    // Friday 27 March 2026 10:00 CET (09:00Z) + 1 working day = Monday 30 March 10:00 CEST (08:00Z).
    let t: DateTime<Utc> = "2026-03-27T09:00:00Z".parse().expect("time");
    let due = add_working_days_at(&cal, t, 1);
    assert_eq!(
        due,
        "2026-03-30T08:00:00Z"
            .parse::<DateTime<Utc>>()
            .expect("time")
    );
    // Late evening UTC is already the next day in Oslo.
    assert_eq!(
        oslo_date("2026-06-30T22:30:00Z".parse().expect("time")),
        d("2026-07-01")
    );
}

fn reference_is_working_day(day: NaiveDate) -> bool {
    !matches!(day.weekday(), Weekday::Sat | Weekday::Sun)
        && !public_holidays(day.year()).iter().any(|(h, _)| *h == day)
}

fn any_date() -> impl Strategy<Value = NaiveDate> {
    let (lo, hi) = (*SUPPORTED_YEARS.start(), *SUPPORTED_YEARS.end());
    let start = NaiveDate::from_ymd_opt(lo, 1, 1).expect("start");
    let days = (NaiveDate::from_ymd_opt(hi, 12, 31).expect("end") - start).num_days();
    (0..=days).prop_map(move |n| start + chrono::Duration::days(n))
}

proptest! {
    #[test]
    fn adding_n_working_days_is_n_working_days_away(day in any_date(), n in 0u32..400) {
        let cal = Calendar::norwegian();
        let later = cal.add_working_days(day, n);
        prop_assert_eq!(cal.working_days_between(day, later), i64::from(n));
        if n > 0 {
            prop_assert!(cal.is_working_day(later));
        }
    }

    #[test]
    fn between_is_antisymmetric_and_additive(a in any_date(), b in any_date(), c in any_date()) {
        let cal = Calendar::with_closures([a, b]);
        prop_assert_eq!(cal.working_days_between(a, b), -cal.working_days_between(b, a));
        prop_assert_eq!(cal.working_days_between(a, b) + cal.working_days_between(b, c), cal.working_days_between(a, c));
    }

    #[test]
    fn between_counts_what_a_day_by_day_walk_counts(a in any_date(), span in 0i64..800) {
        let b = a + chrono::Duration::days(span);
        let cal = Calendar::with_closures([a + chrono::Duration::days(span / 2)]);
        let walked = a.iter_days().skip(1).take_while(|x| *x <= b).filter(|x| cal.is_working_day(*x)).count() as i64;
        prop_assert_eq!(cal.working_days_between(a, b), walked);
    }

    #[test]
    fn working_days_agree_with_the_reference_rule(day in any_date()) {
        prop_assert_eq!(Calendar::norwegian().is_working_day(day), reference_is_working_day(day));
    }

    #[test]
    fn closures_only_remove_working_days(day in any_date(), closed in any_date()) {
        let with = Calendar::with_closures([closed]);
        if with.is_working_day(day) {
            prop_assert!(Calendar::norwegian().is_working_day(day));
        }
        prop_assert!(!with.is_working_day(closed));
    }

    #[test]
    fn easter_is_a_sunday_between_22_march_and_25_april(year in 1900i32..=2200) {
        let e = easter_sunday(year).expect("in range");
        prop_assert_eq!(e.weekday(), Weekday::Sun);
        prop_assert!(e >= NaiveDate::from_ymd_opt(year, 3, 22).expect("date"));
        prop_assert!(e <= NaiveDate::from_ymd_opt(year, 4, 25).expect("date"));
    }
}

#[test]
fn a_date_with_two_holidays_counts_once() {
    // 2008: Ascension Day fell on 1 May.
    let cal = Calendar::norwegian();
    assert_eq!(
        public_holidays(2008)
            .iter()
            .filter(|(x, _)| *x == d("2008-05-01"))
            .count(),
        2
    );
    assert_eq!(
        cal.working_days_between(d("2008-04-30"), d("2008-05-02")),
        1
    );
}

#[test]
fn the_same_day_with_closures_is_zero_working_days() {
    let d = chrono::NaiveDate::from_ymd_opt(2026, 3, 4).expect("date");
    let cal = econsult_calendar::Calendar::with_closures([d]);
    assert_eq!(cal.working_days_between(d, d), 0);
}
