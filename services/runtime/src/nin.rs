//! Norwegian national identity numbers (fødselsnummer and D-number).
//!
//! 11 digits: date of birth (DDMMYY, with 40 added to the day for a D-number), a three-digit
//! individual number and two mod-11 check digits. The checks here are the structural ones every
//! system applies; they do not prove that the number was ever issued.

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
        // Synthetic test numbers (Skatteetaten's test scheme) add 80 to the month.
        let mut month = d[2] * 10 + d[3];
        if month > 80 {
            month -= 80;
        }
        if !(1..=31).contains(&day) || !(1..=12).contains(&month) {
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

    /// Whether this is a D-number (first digit raised by 4).
    pub fn is_d_number(&self) -> bool {
        self.0.as_bytes()[0] >= b'4'
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
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
