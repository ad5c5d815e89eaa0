//! Norwegian national identity numbers (fødselsnummer and D-number).
//!
//! 11 digits: date of birth (DDMMYY, with 40 added to the day for a D-number, and for a synthetic
//! test number 80 added to the month (Skatteetaten's Tenor convention) or 40 (NAV's)), a
//! three-digit individual number (which also tells the century) and two mod-11 check digits.
//! Synthetic numbers parse like any other; whether a server accepts them is its setting
//! ([`NationalId::is_synthetic`]; `Authenticator::accepts_synthetic`). The checks here are the structural ones every system
//! applies (a real calendar date, 29 February only in a leap year, both check digits); they do not
//! prove that the number was ever issued.

use std::fmt;

const K1: [u32; 9] = [3, 7, 6, 1, 8, 9, 4, 5, 2];
const K2: [u32; 10] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// A structurally valid national identity number. Its `Debug` output is masked so that it never
/// ends up in logs by accident; use [`NationalId::as_str`] where the full number is needed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NationalId(String);

/// Why a string is not a valid identity number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NinError {
    #[error("must be exactly 11 digits")]
    Format,
    #[error("the date part is not a valid date")]
    Date,
    #[error("check digits do not match")]
    Checksum,
}

/// The month without a synthetic number's +80 (Skatteetaten) or +40 (NAV).
fn unshifted_month(month: u32) -> u32 {
    match month {
        81.. => month - 80,
        41.. => month - 40,
        _ => month,
    }
}

fn check_digit(digits: &[u32], weights: &[u32]) -> Option<u32> {
    let sum: u32 = digits.iter().zip(weights).map(|(d, w)| d * w).sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        k => Some(k),
    }
}

/// The two check digits for the first nine digits, or `None` when no valid number has that prefix.
pub fn check_digits(first_nine: &[u32; 9]) -> Option<(u32, u32)> {
    let k1 = check_digit(first_nine, &K1)?;
    let mut ten = [0u32; 10];
    ten[..9].copy_from_slice(first_nine);
    ten[9] = k1;
    let k2 = check_digit(&ten, &K2)?;
    Some((k1, k2))
}

/// The four-digit birth year that the two-digit year and the individual number (digits 7-9)
/// give under the national scheme, or `None` where the combination is not assigned.
pub fn birth_year(yy: u32, individual: u32) -> Option<u32> {
    match (individual, yy) {
        (0..=499, _) => Some(1900 + yy),
        (500..=749, 54..=99) => Some(1800 + yy),
        (500..=999, 0..=39) => Some(2000 + yy),
        (900..=999, 40..=99) => Some(1900 + yy),
        _ => None,
    }
}

fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(month: u32, leap: bool) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 31,
    }
}

impl NationalId {
    /// Parses and validates an identity number.
    pub fn parse(s: &str) -> Result<Self, NinError> {
        let s = s.trim();
        if s.len() != 11 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NinError::Format);
        }
        let d: Vec<u32> = s.bytes().map(|b| u32::from(b - b'0')).collect();
        let mut day = d[0] * 10 + d[1];
        if day > 40 {
            day -= 40; // D-number
        }
        let month = unshifted_month(d[2] * 10 + d[3]);
        // The century comes from the individual number; where that combination is unassigned
        // (seen in test data), 29 February is allowed in every year divisible by four.
        let yy = d[4] * 10 + d[5];
        let leap =
            birth_year(yy, d[6] * 100 + d[7] * 10 + d[8]).map_or(yy.is_multiple_of(4), is_leap);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(month, leap) {
            return Err(NinError::Date);
        }
        let mut nine = [0u32; 9];
        nine.copy_from_slice(&d[..9]);
        match check_digits(&nine) {
            Some((k1, k2)) if k1 == d[9] && k2 == d[10] => Ok(Self(s.to_owned())),
            _ => Err(NinError::Checksum),
        }
    }

    /// The full 11 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a synthetic test number (month raised by 80 or by 40): never a real
    /// person's, accepted only where the server allows them (development, test environments).
    pub fn is_synthetic(&self) -> bool {
        self.0.as_bytes()[2] >= b'4'
    }

    /// Whether this is a D-number (first digit raised by 4).
    pub fn is_d_number(&self) -> bool {
        self.0.as_bytes()[0] >= b'4'
    }

    /// The date of birth the number gives: the day without a D-number's +40, the month without
    /// a synthetic number's +80 or +40, the century from the individual number. `None` where the
    /// individual number assigns no century to the two-digit year (seen in test data only).
    pub fn birth_date(&self) -> Option<chrono::NaiveDate> {
        let d: Vec<u32> = self.0.bytes().map(|b| u32::from(b - b'0')).collect();
        let mut day = d[0] * 10 + d[1];
        if day > 40 {
            day -= 40;
        }
        let month = unshifted_month(d[2] * 10 + d[3]);
        let year = birth_year(d[4] * 10 + d[5], d[6] * 100 + d[7] * 10 + d[8])?;
        chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)
    }

    /// Age in whole years on `today` (a birthday on 29 February counts from 1 March in other
    /// years), or `None` when [`NationalId::birth_date`] is.
    pub fn age_on(&self, today: chrono::NaiveDate) -> Option<u32> {
        use chrono::Datelike as _;
        let born = self.birth_date()?;
        let mut age = today.year() - born.year();
        if (today.month(), today.day()) < (born.month(), born.day()) {
            age -= 1;
        }
        u32::try_from(age).ok()
    }
}

impl fmt::Debug for NationalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NationalId({}*****)", &self.0[..6])
    }
}

/// Generates synthetic, checksum-valid identity numbers for tests and load generation.
///
/// Distinct seeds below 20 000 000 give distinct numbers: the seed picks a date (28 days × 12
/// months × 100 years) and the n-th individual number with valid check digits on that date. The
/// month is raised by 80 (the synthetic-number convention of the Norwegian test environments),
/// so a generated number can never be a real person's.
pub fn synthetic(seed: u64) -> NationalId {
    const DATES: u64 = 28 * 12 * 100;
    let date = seed % DATES;
    let day = (date % 28) as u32 + 1;
    let month = ((date / 28) % 12) as u32 + 1 + 80;
    let year = (date / 336) as u32;
    let mut wanted = seed / DATES;
    loop {
        for individual in 0..1000u32 {
            let nine = [
                day / 10,
                day % 10,
                month / 10,
                month % 10,
                year / 10,
                year % 10,
                individual / 100,
                (individual / 10) % 10,
                individual % 10,
            ];
            let Some((k1, k2)) = check_digits(&nine) else {
                continue;
            };
            if wanted > 0 {
                wanted -= 1;
                continue;
            }
            let s: String = nine
                .iter()
                .chain([k1, k2].iter())
                .map(|d| char::from(b'0' + *d as u8))
                .collect();
            return NationalId(s);
        }
        // More seeds than valid numbers on this date: wrap around (seeds beyond the documented
        // range may repeat numbers).
    }
}

/// A synthetic identity number (month raised by 80) of someone born on `year`-`month`-`day`:
/// the `nth` (modulo their count) individual number of that birth date's century with valid
/// check digits. `None` for an impossible date or a year the scheme cannot express
/// (before 1854, after 2039).
pub fn synthetic_born(year: u32, month: u32, day: u32, nth: u64) -> Option<NationalId> {
    let yy = year % 100;
    let individuals: Vec<u32> = (0..1000)
        .filter(|&i| birth_year(yy, i) == Some(year))
        .collect();
    if individuals.is_empty()
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(month, is_leap(year))
    {
        return None;
    }
    let month = month + 80;
    let valid: Vec<[u32; 11]> = individuals
        .into_iter()
        .filter_map(|individual| {
            let nine = [
                day / 10,
                day % 10,
                month / 10,
                month % 10,
                yy / 10,
                yy % 10,
                individual / 100,
                (individual / 10) % 10,
                individual % 10,
            ];
            let (k1, k2) = check_digits(&nine)?;
            let mut all = [0u32; 11];
            all[..9].copy_from_slice(&nine);
            all[9] = k1;
            all[10] = k2;
            Some(all)
        })
        .collect();
    let pick = valid.get((nth % valid.len() as u64) as usize)?;
    Some(NationalId(
        pick.iter().map(|d| char::from(b'0' + *d as u8)).collect(),
    ))
}

/// A fresh synthetic identity number of someone who is `age` years old on `today`: a random
/// birth date within that year of age and a random individual number of its century. `None` when
/// the birth year falls outside what the scheme can express (1854-2039).
pub fn synthetic_aged(
    today: chrono::NaiveDate,
    age: u32,
    rng: &mut impl rand::Rng,
) -> Option<NationalId> {
    use chrono::Datelike as _;
    let latest = today.checked_sub_months(chrono::Months::new(age.checked_mul(12)?))?;
    let earliest = today
        .checked_sub_months(chrono::Months::new(age.checked_add(1)?.checked_mul(12)?))?
        .succ_opt()?;
    let span = (latest - earliest).num_days();
    let born = earliest + chrono::Duration::days(rng.gen_range(0..=span));
    synthetic_born(
        u32::try_from(born.year()).ok()?,
        born.month(),
        born.day(),
        rng.r#gen(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn age_counts_whole_years_for_ordinary_d_and_synthetic_numbers() {
        let day = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let child = synthetic_born(2014, 6, 1, 0).unwrap();
        assert_eq!(child.birth_date(), Some(day(2014, 6, 1)));
        assert_eq!(child.age_on(day(2026, 5, 31)), Some(11));
        assert_eq!(child.age_on(day(2026, 6, 1)), Some(12));
        // The same birth date as an ordinary number and as a D-number.
        let plain = {
            let mut s = child.as_str().to_owned();
            let month: u32 = s[2..4].parse().unwrap();
            s.replace_range(2..4, &format!("{:02}", month - 80));
            s
        };
        for variant in [
            plain.clone(),
            format!(
                "{}{}",
                (b'0' + plain.as_bytes()[0] - b'0' + 4) as char,
                &plain[1..]
            ),
        ] {
            let nine: Vec<u32> = variant[..9].bytes().map(|b| u32::from(b - b'0')).collect();
            let nine: [u32; 9] = nine.try_into().unwrap();
            let Some((k1, k2)) = check_digits(&nine) else {
                continue;
            };
            let id = NationalId::parse(&format!("{}{k1}{k2}", &variant[..9])).unwrap();
            assert_eq!(
                id.birth_date(),
                Some(day(2014, 6, 1)),
                "{}",
                id.is_d_number()
            );
        }
        let leap = synthetic_born(2012, 2, 29, 0).unwrap();
        assert_eq!(leap.age_on(day(2026, 2, 28)), Some(13));
        assert_eq!(leap.age_on(day(2026, 3, 1)), Some(14));
    }

    #[test]
    fn rejects_wrong_length_letters_and_bad_dates() {
        assert_eq!(NationalId::parse("1234567890"), Err(NinError::Format));
        assert_eq!(NationalId::parse("1234567890a"), Err(NinError::Format));
        assert_eq!(NationalId::parse("32012012345"), Err(NinError::Date));
        assert_eq!(NationalId::parse("01132012345"), Err(NinError::Date));
    }

    #[test]
    fn a_changed_digit_breaks_the_checksum() {
        let id = synthetic(42);
        let mut bytes = id.as_str().as_bytes().to_vec();
        bytes[10] = if bytes[10] == b'9' {
            b'0'
        } else {
            bytes[10] + 1
        };
        let changed = String::from_utf8(bytes).expect("ascii");
        assert_eq!(NationalId::parse(&changed), Err(NinError::Checksum));
    }

    #[test]
    fn d_numbers_are_accepted() {
        // Build a D-number from a synthetic number by adding 4 to the first digit, recomputing
        // the check digits.
        let base = synthetic(7);
        let mut nine = [0u32; 9];
        for (i, b) in base.as_str().bytes().take(9).enumerate() {
            nine[i] = u32::from(b - b'0');
        }
        nine[0] += 4;
        let mut seed = 0u32;
        let (k1, k2) = loop {
            if let Some(k) = check_digits(&nine) {
                break k;
            }
            seed += 1;
            nine[8] = seed % 10;
        };
        let s: String = nine
            .iter()
            .chain([k1, k2].iter())
            .map(|d| char::from(b'0' + *d as u8))
            .collect();
        let id = NationalId::parse(&s).expect("valid D-number");
        assert!(id.is_d_number());
    }

    #[test]
    fn distinct_seeds_give_distinct_numbers() {
        let mut seen = std::collections::HashSet::new();
        for seed in (0..200_000u64).chain(1_200_000..1_200_500) {
            assert!(seen.insert(synthetic(seed)), "seed {seed} repeats a number");
        }
    }

    #[test]
    fn debug_output_masks_the_individual_part() {
        let id = synthetic(1);
        let shown = format!("{id:?}");
        assert!(!shown.contains(id.as_str()));
    }

    /// An otherwise valid number for the given date digits (check digits recomputed).
    fn with_date(ddmmyy: &str, individual: &str) -> String {
        let digits: Vec<u32> = format!("{ddmmyy}{individual}")
            .bytes()
            .map(|b| u32::from(b - b'0'))
            .collect();
        let nine: [u32; 9] = digits.try_into().expect("nine digits");
        let (k1, k2) = check_digits(&nine).expect("a prefix with check digits");
        format!("{ddmmyy}{individual}{k1}{k2}")
    }

    /// The first individual number from `from` whose prefix has check digits.
    fn some_number(ddmmyy: &str, from: u32) -> String {
        (from..1000)
            .map(|i| format!("{i:03}"))
            .find_map(|i| {
                let digits: Vec<u32> = format!("{ddmmyy}{i}")
                    .bytes()
                    .map(|b| u32::from(b - b'0'))
                    .collect();
                let nine: [u32; 9] = digits.try_into().ok()?;
                check_digits(&nine).map(|_| with_date(ddmmyy, &i))
            })
            .expect("some individual number fits")
    }

    #[test]
    fn both_synthetic_conventions_parse_and_say_they_are_synthetic() {
        let day = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        // 15 June 1985: ordinary, Skatteetaten's +80 and NAV's +40 month.
        let plain = NationalId::parse(&some_number("150685", 100)).unwrap();
        let tenor = NationalId::parse(&some_number("158685", 100)).unwrap();
        let nav = NationalId::parse(&some_number("154685", 100)).unwrap();
        assert!(!plain.is_synthetic());
        assert!(tenor.is_synthetic() && nav.is_synthetic());
        for id in [&plain, &tenor, &nav] {
            assert_eq!(id.birth_date(), Some(day(1985, 6, 15)), "{}", id.as_str());
        }
        // A D-number is no synthetic number; a +40 month still needs a real date.
        let d_number = NationalId::parse(&some_number("550685", 100)).unwrap();
        assert!(d_number.is_d_number() && !d_number.is_synthetic());
        assert_eq!(
            NationalId::parse(&some_number("304285", 100)),
            Err(NinError::Date),
            "30 February, NAV convention"
        );
        assert_eq!(
            NationalId::parse(&some_number("155385", 100)),
            Err(NinError::Date),
            "month 13"
        );
        assert!(synthetic(7).is_synthetic());
    }

    #[test]
    fn thirtieth_of_february_and_thirty_first_of_april_are_refused() {
        for ddmmyy in ["300285", "310485", "310685", "310985", "311185", "300282"] {
            let n = some_number(ddmmyy, 100);
            assert_eq!(NationalId::parse(&n), Err(NinError::Date), "{ddmmyy}");
        }
        // The same days in a synthetic (+80) month and as a D-number.
        assert_eq!(
            NationalId::parse(&some_number("308285", 100)),
            Err(NinError::Date)
        );
        assert_eq!(
            NationalId::parse(&some_number("710485", 100)),
            Err(NinError::Date)
        );
        // The last real day of those months is fine.
        assert!(NationalId::parse(&some_number("280285", 100)).is_ok());
        assert!(NationalId::parse(&some_number("300485", 100)).is_ok());
    }

    #[test]
    fn twenty_ninth_of_february_only_in_a_leap_year_of_the_numbers_century() {
        // 1984 and 2000 were leap years, 1985 and 1900 were not.
        assert!(NationalId::parse(&some_number("290284", 100)).is_ok());
        assert_eq!(
            NationalId::parse(&some_number("290285", 100)),
            Err(NinError::Date)
        );
        // Individual number below 500: born 1900.
        assert_eq!(
            NationalId::parse(&some_number("290200", 100)),
            Err(NinError::Date)
        );
        // Individual number 500-999 with year 00: born 2000.
        assert!(NationalId::parse(&some_number("290200", 500)).is_ok());
    }

    #[test]
    fn numbers_born_on_a_date_carry_that_date_and_validate() {
        let id = synthetic_born(1984, 2, 29, 3).expect("a leap day");
        assert_eq!(&id.as_str()[..6], "298284");
        assert_eq!(NationalId::parse(id.as_str()), Ok(id.clone()));
        assert!(synthetic_born(1985, 2, 29, 0).is_none());
        assert!(synthetic_born(2040, 1, 1, 0).is_none());
        let child = synthetic_born(2015, 6, 1, 0).expect("born 2015");
        let individual: u32 = child.as_str()[6..9].parse().expect("digits");
        assert_eq!(birth_year(15, individual), Some(2015));
    }

    proptest! {
        #[test]
        fn a_fresh_number_has_the_asked_age(age in 0u32..=150, seed in any::<u64>()) {
            use chrono::Datelike as _;
            use rand::SeedableRng as _;
            let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 5).expect("date");
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let id = synthetic_aged(today, age, &mut rng).expect("a number");
            prop_assert_eq!(NationalId::parse(id.as_str()), Ok(id.clone()));
            let d: Vec<u32> = id.as_str().bytes().map(|b| u32::from(b - b'0')).collect();
            let year = birth_year(d[4] * 10 + d[5], d[6] * 100 + d[7] * 10 + d[8])
                .expect("an assigned century");
            let born = chrono::NaiveDate::from_ymd_opt(
                year as i32,
                d[2] * 10 + d[3] - 80,
                d[0] * 10 + d[1],
            )
            .expect("a real birth date");
            let had_birthday = (today.month(), today.day()) >= (born.month(), born.day());
            let years = today.year() - born.year() - i32::from(!had_birthday);
            prop_assert_eq!(years, age as i32);
        }

        #[test]
        fn a_day_past_the_end_of_its_month_is_always_refused(
            (month, day) in prop::sample::select(vec![
                (2, 30), (2, 31), (4, 31), (6, 31), (9, 31), (11, 31),
            ]),
            yy in 0u32..100,
            from in 0u32..900,
        ) {
            let n = some_number(&format!("{day:02}{month:02}{yy:02}"), from);
            prop_assert_eq!(NationalId::parse(&n), Err(NinError::Date));
        }

        #[test]
        fn numbers_born_on_any_real_date_validate(
            days in 0i64..(2039 - 1854) * 365,
            nth in 0u64..1000,
        ) {
            let date = chrono::NaiveDate::from_ymd_opt(1854, 1, 1).expect("date")
                + chrono::Duration::days(days);
            use chrono::Datelike as _;
            let id = synthetic_born(date.year() as u32, date.month(), date.day(), nth)
                .expect("every date from 1854 to 2039 has numbers");
            prop_assert_eq!(NationalId::parse(id.as_str()), Ok(id.clone()));
        }

        #[test]
        fn synthetic_numbers_always_validate(seed in 0u64..20_000_000) {
            let id = synthetic(seed);
            prop_assert_eq!(NationalId::parse(id.as_str()), Ok(id.clone()));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = NationalId::parse(&s);
        }
    }
}
