//! The answer to a patient who marks a matter urgent (forskrift om fastlegeordning § 16 (2) a):
//! text consultations are not for urgent help. While the GP office is open, the patient phones
//! it the same day; outside its opening hours the municipal out-of-hours service (legevakt)
//! takes over on 116 117; a life-threatening emergency is 113. Bokmål by default, nynorsk and
//! English on request. Pure: where the office stands is decided by the caller.

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use econsult_booking::directory::OpeningHours;
use econsult_calendar::Calendar;

/// The language of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Norsk bokmål (the default).
    Bokmal,
    /// Nynorsk.
    Nynorsk,
    /// English.
    English,
}

impl Language {
    /// "nn" → nynorsk, "en" → English (also "nn-NO", "en-GB"); anything else bokmål: an urgent
    /// answer is never refused for its language.
    pub fn from_tag(tag: &str) -> Self {
        let primary = tag.split(['-', '_']).next().unwrap_or_default();
        match primary.to_ascii_lowercase().as_str() {
            "nn" => Self::Nynorsk,
            "en" => Self::English,
            _ => Self::Bokmal,
        }
    }
}

/// Where the patient's GP office stands at the moment of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Office {
    /// Open now (a working day that is no closure day, within its hours): its phone number.
    Open(String),
    /// Closed now (outside its hours, a weekend, a public holiday or a closure day).
    Closed,
    /// Unknown: the practice has set no opening hours, or the patient is on no list.
    Unknown,
}

impl Office {
    /// The office at `now`, by its `hours` and the working days of `cal` (national holidays and
    /// the practice's closure days).
    pub fn at(hours: &OpeningHours, cal: &Calendar, now: DateTime<Utc>) -> Self {
        let Some(phone) = hours.phone.clone() else {
            return Self::Unknown;
        };
        let local = now.with_timezone(&chrono_tz::Europe::Oslo);
        let minute = local.hour() * 60 + local.minute();
        let weekday = local.weekday().number_from_monday();
        if cal.is_working_day(local.date_naive()) && hours.open_at(weekday, minute) {
            Self::Open(phone)
        } else {
            Self::Closed
        }
    }
}

/// The answer, in `lang`. Every answer names 113.
pub fn answer(lang: Language, office: &Office) -> String {
    use Language::*;
    let (intro, life) = match lang {
        Bokmal => (
            "Meldinger til legekontoret er ikke for det som haster.",
            "Ved fare for liv: ring 113.",
        ),
        Nynorsk => (
            "Meldingar til legekontoret er ikkje for det som hastar.",
            "Ved fare for liv: ring 113.",
        ),
        English => (
            "Messages to your GP office are not for urgent matters.",
            "If a life may be in danger: call 113.",
        ),
    };
    let what = match (lang, office) {
        (Bokmal, Office::Open(phone)) => {
            format!("Legekontoret ditt er åpent nå: ring dem i dag på {phone}.")
        }
        (Nynorsk, Office::Open(phone)) => {
            format!("Legekontoret ditt er ope no: ring dei i dag på {phone}.")
        }
        (English, Office::Open(phone)) => {
            format!("Your GP office is open now: call them today on {phone}.")
        }
        (Bokmal, Office::Closed) => {
            "Legekontoret ditt er stengt nå: ring legevakten på 116 117.".to_owned()
        }
        (Nynorsk, Office::Closed) => {
            "Legekontoret ditt er stengt no: ring legevakta på 116 117.".to_owned()
        }
        (English, Office::Closed) => {
            "Your GP office is closed now: call the out-of-hours service (legevakt) on 116 117."
                .to_owned()
        }
        (Bokmal, Office::Unknown) => {
            "Ring legekontoret ditt i åpningstiden, ellers legevakten på 116 117.".to_owned()
        }
        (Nynorsk, Office::Unknown) => {
            "Ring legekontoret ditt i opningstida, elles legevakta på 116 117.".to_owned()
        }
        (English, Office::Unknown) => {
            "Call your GP office during its opening hours, otherwise the out-of-hours service \
             (legevakt) on 116 117."
                .to_owned()
        }
    };
    format!("{intro} {what} {life}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn oslo(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        chrono_tz::Europe::Oslo
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .expect("valid Oslo time")
            .with_timezone(&Utc)
    }

    fn weekdays_8_to_16() -> OpeningHours {
        OpeningHours {
            phone: Some("22 12 34 56".into()),
            periods: (1..=5).map(|d| (d, 8 * 60, 16 * 60)).collect(),
        }
    }

    #[test]
    fn the_office_is_open_in_its_hours_on_working_days_only() {
        let h = weekdays_8_to_16();
        let cal = Calendar::norwegian();
        let open = Office::Open("22 12 34 56".into());
        assert_eq!(Office::at(&h, &cal, oslo(2026, 3, 10, 8, 0)), open);
        assert_eq!(Office::at(&h, &cal, oslo(2026, 3, 10, 15, 59)), open);
        assert_eq!(
            Office::at(&h, &cal, oslo(2026, 3, 10, 16, 0)),
            Office::Closed
        );
        assert_eq!(
            Office::at(&h, &cal, oslo(2026, 3, 10, 7, 59)),
            Office::Closed
        );
        // Ascension Day and Whit Monday 2026; a Saturday.
        assert_eq!(
            Office::at(&h, &cal, oslo(2026, 5, 14, 10, 0)),
            Office::Closed
        );
        assert_eq!(
            Office::at(&h, &cal, oslo(2026, 5, 25, 10, 0)),
            Office::Closed
        );
        assert_eq!(
            Office::at(&h, &cal, oslo(2026, 3, 14, 10, 0)),
            Office::Closed
        );
        let closed_day =
            Calendar::with_closures([chrono::NaiveDate::from_ymd_opt(2026, 3, 10).expect("date")]);
        assert_eq!(
            Office::at(&h, &closed_day, oslo(2026, 3, 10, 10, 0)),
            Office::Closed
        );
        assert_eq!(
            Office::at(&OpeningHours::default(), &cal, oslo(2026, 3, 10, 10, 0)),
            Office::Unknown
        );
    }

    #[test]
    fn every_answer_names_113_and_the_right_number() {
        for lang in [Language::Bokmal, Language::Nynorsk, Language::English] {
            let open = answer(lang, &Office::Open("22 12 34 56".into()));
            assert!(
                open.contains("113") && open.contains("22 12 34 56"),
                "{open}"
            );
            assert!(!open.contains("116 117"), "{open}");
            for office in [Office::Closed, Office::Unknown] {
                let a = answer(lang, &office);
                assert!(a.contains("113") && a.contains("116 117"), "{a}");
            }
        }
        assert_eq!(Language::from_tag(""), Language::Bokmal);
        assert_eq!(Language::from_tag("nb-NO"), Language::Bokmal);
        assert_eq!(Language::from_tag("nn"), Language::Nynorsk);
        assert_eq!(Language::from_tag("en-GB"), Language::English);
    }
}
