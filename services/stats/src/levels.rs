//! The geographic levels above the municipality: county (fylke) and municipality-size band
//! (kommunestørrelse). Both are functions of the municipality number of a contact, which is the
//! municipality of the GP's list.

/// Counties under the structure in force from 1 January 2024: code (the first two digits of
/// every municipality number in the county) and name. Public administrative codes (SSB's
/// classification 104).
pub const COUNTIES: [(&str, &str); 15] = [
    ("03", "Oslo"),
    ("11", "Rogaland"),
    ("15", "Møre og Romsdal"),
    ("18", "Nordland"),
    ("31", "Østfold"),
    ("32", "Akershus"),
    ("33", "Buskerud"),
    ("34", "Innlandet"),
    ("39", "Vestfold"),
    ("40", "Telemark"),
    ("42", "Agder"),
    ("46", "Vestland"),
    ("50", "Trøndelag"),
    ("55", "Troms"),
    ("56", "Finnmark"),
];

/// County code of municipality number `municipality`: its first two digits (whatever they are,
/// so every contact is in exactly one county and the counties sum to the national total).
pub fn county_of(municipality: &str) -> &str {
    municipality.get(..2).unwrap_or(municipality)
}

/// Name of county `code` ("" for a code not in [`COUNTIES`], e.g. of a pre-2024 municipality
/// number).
pub fn county_name(code: &str) -> &'static str {
    COUNTIES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("", |(_, name)| name)
}

/// Municipality-size band, by persons on GP lists in the municipality (see [`SizeBand::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SizeBand {
    /// Under 5 000.
    Under5000,
    /// 5 000 to 19 999.
    From5000To19999,
    /// 20 000 to 49 999.
    From20000To49999,
    /// 50 000 and over.
    From50000,
}

impl SizeBand {
    /// Every band, smallest first.
    pub const ALL: [SizeBand; 4] = [
        SizeBand::Under5000,
        SizeBand::From5000To19999,
        SizeBand::From20000To49999,
        SizeBand::From50000,
    ];

    /// The band of a municipality with `persons` on GP lists. Nearly every resident is on a
    /// list (shared/DOMAIN.md), so this stands in for the population SSB's bands are drawn by,
    /// without shipping population figures.
    pub fn of(persons: u64) -> SizeBand {
        match persons {
            0..5_000 => SizeBand::Under5000,
            5_000..20_000 => SizeBand::From5000To19999,
            20_000..50_000 => SizeBand::From20000To49999,
            _ => SizeBand::From50000,
        }
    }

    /// The stable label (proto `ContactCountRow.size_band`).
    pub fn as_str(self) -> &'static str {
        match self {
            SizeBand::Under5000 => "under_5000",
            SizeBand::From5000To19999 => "5000_19999",
            SizeBand::From20000To49999 => "20000_49999",
            SizeBand::From50000 => "50000_and_over",
        }
    }

    /// The band of a label.
    pub fn from_label(s: &str) -> Option<SizeBand> {
        SizeBand::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_county_is_the_first_two_digits_of_the_municipality_number() {
        assert_eq!(county_of("0301"), "03");
        assert_eq!(county_name(county_of("0301")), "Oslo");
        assert_eq!(county_of("4601"), "46");
        assert_eq!(county_name("46"), "Vestland");
        assert_eq!(county_name(county_of("5001")), "Trøndelag");
        // Viken (30) was split on 1 January 2024: a pre-2024 number keeps its code, unnamed.
        assert_eq!(county_of("3001"), "30");
        assert_eq!(county_name("30"), "");
        assert_eq!(county_of("9"), "9");
    }

    #[test]
    fn county_codes_are_unique_two_digit_codes() {
        for (i, (code, name)) in COUNTIES.iter().enumerate() {
            assert!(code.len() == 2 && code.bytes().all(|b| b.is_ascii_digit()));
            assert!(!name.is_empty());
            assert!(COUNTIES[i + 1..].iter().all(|(c, _)| c != code), "{code}");
        }
    }

    #[test]
    fn size_bands_split_at_5000_20000_and_50000_persons() {
        let cases = [
            (0, SizeBand::Under5000),
            (4_999, SizeBand::Under5000),
            (5_000, SizeBand::From5000To19999),
            (19_999, SizeBand::From5000To19999),
            (20_000, SizeBand::From20000To49999),
            (49_999, SizeBand::From20000To49999),
            (50_000, SizeBand::From50000),
            (720_000, SizeBand::From50000),
        ];
        for (persons, band) in cases {
            assert_eq!(SizeBand::of(persons), band, "{persons}");
        }
        for b in SizeBand::ALL {
            assert_eq!(SizeBand::from_label(b.as_str()), Some(b));
        }
        assert_eq!(SizeBand::from_label("small"), None);
    }
}
