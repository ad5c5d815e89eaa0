//! Types of the notify service: what a message is about, its channel and state, the facts a
//! template may see, a patient's preferences, and the rules on time (quiet hours, backoff).

use crate::error::NotifyError;
use chrono::{DateTime, Datelike as _, NaiveTime, TimeZone as _, Timelike as _, Utc};
use chrono_tz::Europe::Oslo;
use serde::{Deserialize, Serialize};

/// What a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An appointment was booked.
    Booked,
    /// An appointment was moved to another time.
    Rescheduled,
    /// The practice cancelled an appointment.
    CancelledByPractice,
    /// An appointment is coming up (at the patient's lead time).
    Reminder,
    /// A freed slot is held for the patient from the waitlist until a time.
    WaitlistOffer,
    /// The practice answered an e-consultation.
    ConsultationReply,
    /// The waiting room of a video consultation opens.
    VideoOpening,
}

impl Kind {
    /// Every kind (each has a template per language).
    pub const ALL: [Kind; 7] = [
        Kind::Booked,
        Kind::Rescheduled,
        Kind::CancelledByPractice,
        Kind::Reminder,
        Kind::WaitlistOffer,
        Kind::ConsultationReply,
        Kind::VideoOpening,
    ];

    /// Stored name, also the template's file name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Booked => "booked",
            Kind::Rescheduled => "rescheduled",
            Kind::CancelledByPractice => "cancelled_by_practice",
            Kind::Reminder => "reminder",
            Kind::WaitlistOffer => "waitlist_offer",
            Kind::ConsultationReply => "consultation_reply",
            Kind::VideoOpening => "video_opening",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The message in words, for the recipient's access log ("read your phone number to send
    /// a reminder").
    pub fn described(self) -> &'static str {
        match self {
            Kind::Booked => "a booking confirmation",
            Kind::Rescheduled => "a notice of a moved appointment",
            Kind::CancelledByPractice => "a notice of a cancelled appointment",
            Kind::Reminder => "a reminder",
            Kind::WaitlistOffer => "a waitlist offer",
            Kind::ConsultationReply => "a notice of a reply",
            Kind::VideoOpening => "a notice that a video consultation opens",
        }
    }
}

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// SMS through the gateway.
    Sms,
    /// E-mail through SMTP.
    Email,
    /// The server's log: the patient has no contact details on file (or chose none).
    Log,
}

impl Channel {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Log => "log",
        }
    }

    /// The channel of a stored name.
    pub fn parse(s: &str) -> Option<Channel> {
        [Channel::Sms, Channel::Email, Channel::Log]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Where a message stands (stored as its code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for its time (or its next attempt).
    Queued,
    /// Handed to the SMTP server or gateway (or written to the log).
    Sent,
    /// Refused for good (a 4xx, no address on file, a template error); reason kept.
    Failed,
    /// Retries exhausted.
    GivenUp,
    /// Not to be sent any more (its appointment was cancelled or moved, the patient opted out).
    Cancelled,
}

impl Status {
    /// Stored code.
    pub fn code(self) -> i64 {
        match self {
            Status::Queued => 0,
            Status::Sent => 1,
            Status::Failed => 2,
            Status::GivenUp => 3,
            Status::Cancelled => 4,
        }
    }

    /// The status of a stored code.
    pub fn from_code(code: i64) -> Option<Status> {
        [
            Status::Queued,
            Status::Sent,
            Status::Failed,
            Status::GivenUp,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }

    /// Name as ops see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::GivenUp => "given_up",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Language of the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Language {
    /// Bokmål.
    #[default]
    Nb,
    /// Nynorsk.
    Nn,
    /// English.
    En,
}

impl Language {
    /// Stored name, also the templates' folder.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Nb => "nb",
            Language::Nn => "nn",
            Language::En => "en",
        }
    }

    /// The language of a stored name (bokmål for anything else).
    pub fn parse(s: &str) -> Language {
        match s {
            "nn" => Language::Nn,
            "en" => Language::En,
            _ => Language::Nb,
        }
    }
}

/// What a message may say, as stored with it: times, modality, the practice, the hold. Built
/// from an event by copying these fields only; the event's reason, subject, specialty or text
/// are never copied (see [`SENSITIVE_FIELDS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Appointment (or offered slot) start, ms since the epoch; 0 when not about one.
    #[serde(default)]
    pub start_ms: i64,
    /// `in_person`, `video` or `phone`; empty when not about an appointment.
    #[serde(default)]
    pub modality: String,
    /// The practice as the patient knows it (its name as the EHR set it, else the GP's display
    /// name).
    #[serde(default)]
    pub practice: String,
    /// For a moved appointment: the old start.
    #[serde(default)]
    pub old_start_ms: Option<i64>,
    /// For a waitlist offer: the hold and until when it holds.
    #[serde(default)]
    pub hold_id: Option<String>,
    /// Until when the offered slot is held.
    #[serde(default)]
    pub hold_until_ms: Option<i64>,
}

/// The variables a template may use: anything else fails the template check.
pub const TEMPLATE_FIELDS: [&str; 6] = [
    "when",
    "modality",
    "practice",
    "link",
    "old_when",
    "hold_until",
];

/// Fields of the events that are health information (or identify the patient): tagged
/// sensitive, they never reach a template, and a template that names one is refused.
pub const SENSITIVE_FIELDS: [&str; 10] = [
    "reason",
    "subject",
    "specialty",
    "message",
    "body",
    "text",
    "category",
    "outcome",
    "tariff_code",
    "patient_nin",
];

/// Which channels a patient wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Channels {
    /// SMS.
    pub sms: bool,
    /// E-mail.
    pub email: bool,
}

impl Channels {
    /// Stored bit set (1 SMS, 2 e-mail).
    pub fn bits(self) -> i64 {
        i64::from(self.sms) | (i64::from(self.email) << 1)
    }

    /// From the stored bit set.
    pub fn from_bits(b: i64) -> Self {
        Channels {
            sms: b & 1 != 0,
            email: b & 2 != 0,
        }
    }
}

/// A patient's preferences, contact details in the clear (only the service and the sender
/// hold them like this; the store holds them sealed). `Debug` leaves the details out.
#[derive(Clone, PartialEq, Eq)]
pub struct Preferences {
    /// E-mail address.
    pub email: Option<String>,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// Chosen channels; `None`: each channel with an address.
    pub channels: Option<Channels>,
    /// Reminder lead times in minutes.
    pub reminder_minutes: Vec<u32>,
    /// Language.
    pub language: Language,
    /// No messages at all.
    pub opted_out: bool,
}

impl std::fmt::Debug for Preferences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preferences")
            .field("email", &self.email.as_ref().map(|_| "***"))
            .field("phone", &self.phone.as_ref().map(|_| "***"))
            .field("channels", &self.channels)
            .field("reminder_minutes", &self.reminder_minutes)
            .field("language", &self.language)
            .field("opted_out", &self.opted_out)
            .finish()
    }
}

/// The default reminder: 24 hours before.
pub const DEFAULT_REMINDER_MINUTES: u32 = 24 * 60;

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            email: None,
            phone: None,
            channels: None,
            reminder_minutes: vec![DEFAULT_REMINDER_MINUTES],
            language: Language::Nb,
            opted_out: false,
        }
    }
}

impl Preferences {
    /// The channels a message goes out on (see [`message_channels`]).
    pub fn channels_for_message(&self) -> Vec<Channel> {
        message_channels(
            self.phone.is_some(),
            self.email.is_some(),
            self.channels,
            self.opted_out,
        )
    }

    /// Checks lead times: at most 3, each from 30 minutes to 14 days (field named).
    pub fn check(&self) -> Result<(), NotifyError> {
        if self.reminder_minutes.len() > 3 {
            return Err(NotifyError::invalid(
                "preferences.reminder_lead_minutes",
                "has more than 3 lead times",
            ));
        }
        if let Some(m) = self
            .reminder_minutes
            .iter()
            .find(|m| !(30..=14 * 24 * 60).contains(*m))
        {
            return Err(NotifyError::invalid(
                "preferences.reminder_lead_minutes",
                format!("{m} is not between 30 minutes and 14 days"),
            ));
        }
        Ok(())
    }
}

/// The channels a message goes out on: the chosen ones (all when `chosen` is `None`) that
/// have an address, or the log when none has (the message is not lost: ops see it in the log).
/// None when opted out.
pub fn message_channels(
    has_phone: bool,
    has_email: bool,
    chosen: Option<Channels>,
    opted_out: bool,
) -> Vec<Channel> {
    if opted_out {
        return Vec::new();
    }
    let want = chosen.unwrap_or(Channels {
        sms: true,
        email: true,
    });
    let mut out = Vec::new();
    if want.sms && has_phone {
        out.push(Channel::Sms);
    }
    if want.email && has_email {
        out.push(Channel::Email);
    }
    if out.is_empty() {
        out.push(Channel::Log);
    }
    out
}

/// Checks an e-mail address: one `@`, a local part, a domain with a dot, no spaces; at most 254
/// characters (RFC 5321). Names `field` when it is not.
pub fn email(s: &str, field: &str) -> Result<String, NotifyError> {
    let s = s.trim();
    let bad = || NotifyError::invalid(field, "is not a valid e-mail address");
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = s.split_once('@').ok_or_else(bad)?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if local.is_empty()
        || local.len() > 64
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c))
        || !domain.contains('.')
        || !domain.split('.').all(label_ok)
    {
        return Err(bad());
    }
    s.parse::<lettre::Address>().map_err(|_| bad())?;
    Ok(s.to_owned())
}

/// Checks a phone number and returns it in E.164 form: a Norwegian mobile (+47 and eight
/// digits starting with 4 or 9; `+47`/`0047` may be left out) or another country's valid E.164
/// number (+, country code not 0, 8 to 15 digits). Spaces are ignored. Names `field` when not.
pub fn phone(s: &str, field: &str) -> Result<String, NotifyError> {
    let compact: String = s.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let bad = |why: &str| NotifyError::invalid(field, why.to_owned());
    let digits = |d: &str| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit());
    let national = compact
        .strip_prefix("+47")
        .or_else(|| compact.strip_prefix("0047"))
        .or_else(|| (compact.len() == 8).then_some(compact.as_str()));
    if let Some(n) = national {
        if n.len() == 8 && digits(n) && (n.starts_with('4') || n.starts_with('9')) {
            return Ok(format!("+47{n}"));
        }
        return Err(bad(
            "is not a Norwegian mobile number (+47 and eight digits starting with 4 or 9)",
        ));
    }
    match compact.strip_prefix('+') {
        Some(d) if digits(d) && (8..=15).contains(&d.len()) && !d.starts_with('0') => {
            Ok(compact.clone())
        }
        _ => Err(bad(
            "is neither a Norwegian mobile number nor a valid E.164 number (+ and 8 to 15 digits)",
        )),
    }
}

/// Start of the SMS quiet hours, Oslo time (no SMS from 21:00 …).
pub const QUIET_FROM_HOUR: u32 = 21;
/// … until 08:00.
pub const QUIET_UNTIL_HOUR: u32 = 8;

/// When an SMS due at `at` may go: `at` itself, or 08:00 Oslo time after it when `at` lies in
/// the quiet hours (21:00–08:00). A same-day change (`urgent`) goes at once.
pub fn sms_allowed_at(at: DateTime<Utc>, urgent: bool) -> DateTime<Utc> {
    if urgent {
        return at;
    }
    let local = at.with_timezone(&Oslo);
    let hour = local.hour();
    if (QUIET_UNTIL_HOUR..QUIET_FROM_HOUR).contains(&hour) {
        return at;
    }
    let day = if hour >= QUIET_FROM_HOUR {
        local.date_naive().succ_opt().unwrap_or(local.date_naive())
    } else {
        local.date_naive()
    };
    let eight = day.and_time(NaiveTime::from_hms_opt(QUIET_UNTIL_HOUR, 0, 0).unwrap_or_default());
    Oslo.from_local_datetime(&eight)
        .earliest()
        .map_or(at, |t| t.with_timezone(&Utc))
}

/// Whether `start_ms` is on the Oslo day of `now` (a same-day change: no quiet hours).
pub fn same_day(start_ms: i64, now: DateTime<Utc>) -> bool {
    let start = econsult_runtime::clock::from_ms(start_ms).with_timezone(&Oslo);
    start.date_naive() == now.with_timezone(&Oslo).date_naive()
}

/// Delay before attempt `attempts + 1` after `attempts` failed ones: `base` doubled each time,
/// at most one hour.
pub fn backoff(base: std::time::Duration, attempts: u32) -> chrono::Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    let d = base
        .saturating_mul(factor)
        .min(std::time::Duration::from_secs(3600));
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
}

/// An instant as a message says it, in Oslo time: "mandag 2. mars kl. 08:00".
pub fn say_time(ms: i64, lang: Language) -> String {
    let t = econsult_runtime::clock::from_ms(ms).with_timezone(&Oslo);
    let wd = t.weekday().num_days_from_monday() as usize;
    let m = t.month0() as usize;
    let hm = format!("{:02}:{:02}", t.hour(), t.minute());
    match lang {
        Language::Nb => {
            const D: [&str; 7] = [
                "mandag", "tirsdag", "onsdag", "torsdag", "fredag", "lørdag", "søndag",
            ];
            format!("{} {}. {} kl. {hm}", D[wd], t.day(), MONTHS_NO[m])
        }
        Language::Nn => {
            const D: [&str; 7] = [
                "måndag", "tysdag", "onsdag", "torsdag", "fredag", "laurdag", "søndag",
            ];
            format!("{} {}. {} kl. {hm}", D[wd], t.day(), MONTHS_NO[m])
        }
        Language::En => {
            const D: [&str; 7] = [
                "Monday",
                "Tuesday",
                "Wednesday",
                "Thursday",
                "Friday",
                "Saturday",
                "Sunday",
            ];
            const M: [&str; 12] = [
                "January",
                "February",
                "March",
                "April",
                "May",
                "June",
                "July",
                "August",
                "September",
                "October",
                "November",
                "December",
            ];
            format!("{} {} {} at {hm}", D[wd], t.day(), M[m])
        }
    }
}

const MONTHS_NO: [&str; 12] = [
    "januar",
    "februar",
    "mars",
    "april",
    "mai",
    "juni",
    "juli",
    "august",
    "september",
    "oktober",
    "november",
    "desember",
];

/// A modality as a message says it.
pub fn say_modality(modality: &str, lang: Language) -> String {
    let s = match (modality, lang) {
        ("video", Language::En) => "video consultation",
        ("video", _) => "videokonsultasjon",
        ("phone", Language::En) => "phone consultation",
        ("phone", _) => "telefonkonsultasjon",
        ("in_person", Language::En) => "appointment at the GP office",
        ("in_person", Language::Nb) => "time på legekontoret",
        ("in_person", Language::Nn) => "time på legekontoret",
        _ => "",
    };
    s.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn norwegian_mobiles_and_e164_numbers_pass_and_others_name_the_field() {
        assert_eq!(phone("+47 912 34 567", "p").expect("ok"), "+4791234567");
        assert_eq!(phone("41234567", "p").expect("ok"), "+4741234567");
        assert_eq!(phone("004791234567", "p").expect("ok"), "+4791234567");
        assert_eq!(phone("+46701234567", "p").expect("ok"), "+46701234567");
        for bad in [
            "+4722334455",
            "22334455",
            "+47912345",
            "12345",
            "+0123456789",
            "+47abc",
        ] {
            let e = phone(bad, "preferences.phone").expect_err(bad);
            assert!(e.to_string().starts_with("preferences.phone "), "{e}");
        }
    }

    #[test]
    fn e_mail_addresses_are_checked() {
        assert!(email("kari.nordmann@example.no", "e").is_ok());
        for bad in [
            "kari",
            "kari@",
            "@example.no",
            "kari@example",
            "ka ri@example.no",
            "kari@@x.no",
            "kari@-x.no",
        ] {
            let e = email(bad, "preferences.email").expect_err(bad);
            assert!(e.to_string().starts_with("preferences.email "), "{e}");
        }
    }

    #[test]
    fn an_sms_in_the_quiet_hours_waits_until_eight_oslo_time_unless_urgent() {
        // 22:30 Oslo (winter, UTC+1) → 08:00 the next morning.
        assert_eq!(
            sms_allowed_at(at("2026-03-02T21:30:00Z"), false),
            at("2026-03-03T07:00:00Z")
        );
        // 05:00 Oslo → 08:00 the same day.
        assert_eq!(
            sms_allowed_at(at("2026-03-02T04:00:00Z"), false),
            at("2026-03-02T07:00:00Z")
        );
        // 20:59 Oslo goes; summer time too (UTC+2): 07:59 Oslo waits a minute.
        assert_eq!(
            sms_allowed_at(at("2026-03-02T19:59:00Z"), false),
            at("2026-03-02T19:59:00Z")
        );
        assert_eq!(
            sms_allowed_at(at("2026-06-02T05:59:00Z"), false),
            at("2026-06-02T06:00:00Z")
        );
        assert_eq!(
            sms_allowed_at(at("2026-03-02T21:30:00Z"), true),
            at("2026-03-02T21:30:00Z")
        );
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let b = std::time::Duration::from_secs(30);
        assert_eq!(backoff(b, 1), chrono::Duration::seconds(30));
        assert_eq!(backoff(b, 2), chrono::Duration::seconds(60));
        assert_eq!(backoff(b, 4), chrono::Duration::seconds(240));
        assert_eq!(backoff(b, 20), chrono::Duration::hours(1));
    }

    #[test]
    fn times_are_said_in_oslo_time_in_each_language() {
        let ms = at("2026-03-02T07:00:00Z").timestamp_millis();
        assert_eq!(say_time(ms, Language::Nb), "mandag 2. mars kl. 08:00");
        assert_eq!(say_time(ms, Language::Nn), "måndag 2. mars kl. 08:00");
        assert_eq!(say_time(ms, Language::En), "Monday 2 March at 08:00");
    }

    #[test]
    fn without_addresses_a_message_goes_to_the_log_and_an_opt_out_gets_none() {
        let mut p = Preferences::default();
        assert_eq!(p.channels_for_message(), vec![Channel::Log]);
        p.phone = Some("+4791234567".into());
        p.email = Some("a@b.no".into());
        assert_eq!(p.channels_for_message(), vec![Channel::Sms, Channel::Email]);
        p.channels = Some(Channels {
            sms: false,
            email: true,
        });
        assert_eq!(p.channels_for_message(), vec![Channel::Email]);
        p.opted_out = true;
        assert!(p.channels_for_message().is_empty());
    }
}
