//! Who hears about a patient: the patient (their own preferences; defaults when none) and each
//! person who, acting for them, set preferences to hear about them (a parent, a fullmakt
//! holder) for as long as the relation still allows it. The relation is checked when a message
//! is queued and again when it is sent (a reminder queued weeks ahead is not sent to a parent
//! of a child who has since turned 16, nor to the holder of a fullmakt since revoked).

use super::Notify;
use crate::domain::Kind;
use crate::store::{self, StoredPreferences};
use econsult_runtime::auth::Relation;
use econsult_runtime::nin::NationalId;
use econsult_runtime::proxy::{self, Area};

/// One person to notify about a subject.
pub(super) struct Recipient {
    /// Who gets the message.
    pub nin: String,
    /// The subject when the recipient acts for them; "" when the recipient is the subject.
    pub subject_nin: String,
    /// The recipient's preferences for messages about the subject, contact details sealed for
    /// `nin`.
    pub prefs: StoredPreferences,
}

/// The part of the system a message of `kind` tells about: what a relation must cover.
pub(super) fn area(kind: Kind) -> Area {
    match kind {
        Kind::ConsultationReply => Area::Consultation,
        Kind::Booked
        | Kind::Rescheduled
        | Kind::CancelledByPractice
        | Kind::Reminder
        | Kind::WaitlistOffer
        | Kind::VideoOpening => Area::Booking,
    }
}

impl Notify {
    /// Everyone to notify of a message in `area` about the patient `subject_nin`: the patient
    /// first, then those acting for them whose relation allows it today. The one place that
    /// turns a subject into recipients.
    pub(super) async fn recipients(
        &self,
        conn: &mut sqlx::AnyConnection,
        subject_nin: &str,
        area: Area,
    ) -> anyhow::Result<Vec<Recipient>> {
        let (own, proxies) = store::recipients_of(conn, subject_nin).await?;
        let mut out = vec![Recipient {
            nin: subject_nin.to_owned(),
            subject_nin: String::new(),
            prefs: own.unwrap_or_else(Self::defaults),
        }];
        for p in proxies {
            if self
                .relation_allows(subject_nin, &p.recipient_nin, p.relation, area)
                .await?
            {
                out.push(Recipient {
                    nin: p.recipient_nin,
                    subject_nin: subject_nin.to_owned(),
                    prefs: p.stored,
                });
            }
        }
        Ok(out)
    }

    /// Whether `recipient`, related to `subject` as `relation` ([`Relation::code`]) when they
    /// set their preferences, may hear about `subject` in `area` today: a parent while the
    /// child is under 16 (from 12, not of consultation replies: a parent then sees only the
    /// threads a parent started); a fullmakt holder while a fullmakt from `subject` is in force
    /// and covers `area`; nobody once `subject` is known to have a strictly confidential
    /// address ([`proxy::recorded_relation_allows`]).
    pub(super) async fn relation_allows(
        &self,
        subject: &str,
        recipient: &str,
        relation: i64,
        area: Area,
    ) -> anyhow::Result<bool> {
        let today = proxy::oslo_today(self.p.clock.as_ref());
        let (Ok(subject_id), Some(relation)) =
            (NationalId::parse(subject), Relation::from_code(relation))
        else {
            return Ok(false);
        };
        Ok(
            match proxy::recorded_relation_allows(
                &self.p.db,
                &subject_id,
                recipient,
                relation,
                area,
                today,
            )
            .await?
            {
                Some(limited) => !(limited && area == Area::Consultation),
                None => false,
            },
        )
    }
}
