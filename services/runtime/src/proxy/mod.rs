//! Acting for others: parents for their children (token claim `represents`) and holders of a
//! power of attorney (fullmakt) given here, as Helsenorge applies the rules (the table is in
//! `proto/econsult/proxy/v1/proxy.proto`).
//!
//! A patient RPC names the person it acts for in the `x-on-behalf-of` header; the adapter asks
//! [`Resolver::subject`] for the patient the call is about: the caller, or the person the
//! rules let the caller act for. Then [`crate::auth::Caller::proxy`]`.acting` says who acts,
//! and the access-log rows written for the call record the actor beside the patient.
//! `grpc` is the adapter of the fullmakt RPCs (the one `From<ProxyError> for Status`), `store`
//! their SQL.
//!
//! A protected address (strengt fortrolig adresse) is known from a token's claims: the
//! `represents` entry of a parent's token, and a person's own token (`protected_address`).
//! Whenever a person's own token says so on a patient call, the fact is stored
//! (`proxy_protected_addresses`), and from then on every call acting for them is refused with
//! [`rule::PROTECTED_ADDRESS`], a fullmakt holder's included. GrantFullmakt with a token that
//! no longer says so forgets it.

use crate::auth::{Acting, Caller, Relation, Role};
use crate::clock::Clock;
use crate::db::Db;
use crate::nin::NationalId;
use chrono::NaiveDate;
use std::sync::Arc;

mod grpc;
mod service;
pub mod store;
pub use grpc::ProxyGrpc;
pub use service::Fullmakter;

/// A parent's access ends on the child's 16th birthday.
pub const PARENT_UNTIL_AGE: u32 = 16;
/// Under this age a parent has full access; from it, limited.
pub const PARENT_FULL_UNTIL_AGE: u32 = 12;
/// A fullmakt is given from this age.
pub const GIVER_FROM_AGE: u32 = 16;
/// A fullmakt is held from this age.
pub const HOLDER_FROM_AGE: u32 = 18;

/// The refusals, each naming its rule (the message the client sees with PERMISSION_DENIED).
pub mod rule {
    /// The represented person is 16 or over.
    pub const PARENT_ENDS_AT_16: &str = "a parent's access ends at 16";
    /// The represented person has a strictly confidential address.
    pub const PROTECTED_ADDRESS: &str = "no representation for a protected address";
    /// Neither the token nor a fullmakt relates the caller to the person.
    pub const NO_RELATION: &str = "no relation lets you act for this person";
    /// The fullmakt is past its end date.
    pub const EXPIRED: &str = "the fullmakt has expired";
    /// The giver revoked the fullmakt.
    pub const REVOKED: &str = "the fullmakt was revoked";
    /// The fullmakt does not cover the booking service.
    pub const NOT_BOOKING: &str = "the fullmakt does not cover the booking service";
    /// The fullmakt does not cover the consultation service.
    pub const NOT_CONSULTATION: &str = "the fullmakt does not cover the consultation service";
    /// A holder reads no access log of the giver.
    pub const NO_ACCESS_LOG: &str = "a fullmakt holder never sees the giver's access log";
    /// The giver is under 16.
    pub const GIVER_UNDER_16: &str = "a fullmakt is given from the age of 16";
    /// The holder is under 18.
    pub const HOLDER_UNDER_18: &str = "a fullmakt holder must be 18 or over";
    /// A birth date the identity number does not give.
    pub const AGE_UNKNOWN: &str = "the identity number gives no birth date";
    /// A parent with limited access follows no change stream of the child's threads.
    pub const LIMITED_STREAM: &str =
        "a parent of a child of 12 or over sees only the threads they started: use ListThreads";
    /// Grant and revoke act for the caller only.
    pub const NOT_ON_BEHALF: &str = "a fullmakt is given and revoked by its giver only";
}

/// Which part of the system a call touches: what a relation must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Appointments, holds, the waiting list, and the video sessions of appointments.
    Booking,
    /// Text e-consultations.
    Consultation,
    /// The patient's own access log.
    AccessLog,
}

/// What a fullmakt covers (stored as `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scope {
    /// Booking (and video).
    Booking,
    /// Text e-consultations.
    Consultation,
    /// Both.
    Both,
}

impl Scope {
    /// The stored number.
    pub fn code(self) -> i64 {
        match self {
            Scope::Booking => 1,
            Scope::Consultation => 2,
            Scope::Both => 3,
        }
    }
    /// Inverse of [`Scope::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Scope::Booking,
            2 => Scope::Consultation,
            3 => Scope::Both,
            _ => return None,
        })
    }
    fn covers(self, area: Area) -> Result<(), ProxyError> {
        match (self, area) {
            (_, Area::AccessLog) => Err(ProxyError::Denied(rule::NO_ACCESS_LOG)),
            (Scope::Booking | Scope::Both, Area::Booking)
            | (Scope::Consultation | Scope::Both, Area::Consultation) => Ok(()),
            (Scope::Consultation, Area::Booking) => Err(ProxyError::Denied(rule::NOT_BOOKING)),
            (Scope::Booking, Area::Consultation) => Err(ProxyError::Denied(rule::NOT_CONSULTATION)),
        }
    }
}

/// Where a fullmakt stands on a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// In force.
    Active,
    /// Past its end date.
    Expired,
    /// Revoked.
    Revoked,
}

/// A power of attorney.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fullmakt {
    /// Id.
    pub id: String,
    /// The represented person.
    pub giver: String,
    /// Who may act.
    pub holder: String,
    /// What it covers.
    pub scope: Scope,
    /// Last day in force (Europe/Oslo).
    pub end_date: NaiveDate,
    /// Given at, ms since the epoch.
    pub created_at_ms: i64,
    /// Revoked at, ms since the epoch.
    pub revoked_at_ms: Option<i64>,
}

impl Fullmakt {
    /// Its state on `today`.
    pub fn state(&self, today: NaiveDate) -> State {
        if self.revoked_at_ms.is_some() {
            State::Revoked
        } else if today > self.end_date {
            State::Expired
        } else {
            State::Active
        }
    }
}

/// Why acting for someone, or a fullmakt call, failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A rule forbids it (PERMISSION_DENIED with the rule).
    #[error("{0}")]
    Denied(&'static str),
    /// Bad input; names the field.
    #[error("{field} {message}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        message: &'static str,
    },
    /// No such fullmakt of the caller's.
    #[error("fullmakt not found")]
    NotFound,
    /// The idempotency key was used for another request.
    #[error("idempotency_key was already used for a different request")]
    KeyReused,
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The call lacks what its access-log row needs.
    #[error(transparent)]
    Unaccounted(#[from] crate::audit::Unaccounted),
    /// Something unexpected.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<crate::audit::RecordError> for ProxyError {
    fn from(e: crate::audit::RecordError) -> Self {
        match e {
            crate::audit::RecordError::Unaccounted(u) => ProxyError::Unaccounted(u),
            crate::audit::RecordError::Db(d) => ProxyError::Db(d),
        }
    }
}

impl From<crate::idempotency::IdempotencyError> for ProxyError {
    fn from(e: crate::idempotency::IdempotencyError) -> Self {
        use crate::idempotency::IdempotencyError as E;
        match e {
            E::KeyReused => ProxyError::KeyReused,
            E::BadKey => ProxyError::Invalid {
                field: "idempotency_key",
                message: "must be 1 to 128 printable ASCII characters",
            },
            E::Db(d) => ProxyError::Db(d),
            E::Codec(c) => ProxyError::Other(c.into()),
        }
    }
}

/// The Europe/Oslo date of `clock`'s now: the day ages and end dates are counted on.
pub fn oslo_today(clock: &dyn Clock) -> NaiveDate {
    clock
        .now()
        .with_timezone(&chrono_tz::Europe::Oslo)
        .date_naive()
}

fn age(nin: &NationalId, today: NaiveDate) -> Result<u32, ProxyError> {
    nin.age_on(today)
        .ok_or(ProxyError::Denied(rule::AGE_UNKNOWN))
}

/// The parent rule: may a parent act for a child of this number on `today`? `Ok(limited)`:
/// limited access from 12 to 16 (booking, video and the access log as under 12; in
/// consultations only the threads a parent started, which the consultation service enforces).
pub fn parent_rule(
    child: &NationalId,
    protected_address: bool,
    today: NaiveDate,
) -> Result<bool, ProxyError> {
    if protected_address {
        return Err(ProxyError::Denied(rule::PROTECTED_ADDRESS));
    }
    let age = age(child, today)?;
    if age >= PARENT_UNTIL_AGE {
        return Err(ProxyError::Denied(rule::PARENT_ENDS_AT_16));
    }
    Ok(age >= PARENT_FULL_UNTIL_AGE)
}

/// The fullmakt rule: may its holder act in `area` on `today`?
pub fn fullmakt_rule(f: &Fullmakt, area: Area, today: NaiveDate) -> Result<(), ProxyError> {
    match f.state(today) {
        State::Revoked => return Err(ProxyError::Denied(rule::REVOKED)),
        State::Expired => return Err(ProxyError::Denied(rule::EXPIRED)),
        State::Active => {}
    }
    let giver = NationalId::parse(&f.giver).map_err(|e| anyhow::anyhow!("stored giver: {e}"))?;
    let holder = NationalId::parse(&f.holder).map_err(|e| anyhow::anyhow!("stored holder: {e}"))?;
    if age(&giver, today)? < GIVER_FROM_AGE {
        return Err(ProxyError::Denied(rule::GIVER_UNDER_16));
    }
    if age(&holder, today)? < HOLDER_FROM_AGE {
        return Err(ProxyError::Denied(rule::HOLDER_UNDER_18));
    }
    f.scope.covers(area)
}

/// Whether a relation recorded earlier (a parent's, from their token when it was recorded; a
/// fullmakt, from the store) still lets `holder` hear about `subject` in `area` on `today`, by
/// the rules [`Resolver::subject`] applies to a call: `Some(limited)` for a parent of a child
/// under 16 and for a holder of a fullmakt in force that covers `area` (never limited);
/// `None` otherwise, and always once `subject`'s own token has said their address is strictly
/// confidential. For whoever acts on a relation without a call of the holder's own (notify).
pub async fn recorded_relation_allows(
    db: &Db,
    subject: &NationalId,
    holder: &str,
    relation: Relation,
    area: Area,
    today: NaiveDate,
) -> Result<Option<bool>, sqlx::Error> {
    if store::is_protected(db, subject.as_str()).await? {
        return Ok(None);
    }
    Ok(match relation {
        Relation::Parent => parent_rule(subject, false, today).ok(),
        Relation::Fullmakt => store::between(db, subject.as_str(), holder)
            .await?
            .iter()
            .any(|f| fullmakt_rule(f, area, today).is_ok())
            .then_some(false),
    })
}

/// Resolves the patient a call is about (see the module doc).
#[derive(Clone)]
pub struct Resolver {
    db: Db,
    clock: Arc<dyn Clock>,
}

impl Resolver {
    /// Over the platform's database and clock.
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }

    /// The patient `caller`'s call in `area` is about: the caller, or (with `x-on-behalf-of`)
    /// the person a relation lets them act for, recording the relation in
    /// `caller.proxy.acting`. PERMISSION_DENIED for any other role, or naming the rule that
    /// refuses the relation.
    pub async fn subject(&self, caller: &mut Caller, area: Area) -> Result<NationalId, ProxyError> {
        let own = match (&caller.role, &caller.nin) {
            (Role::Patient, Some(nin)) => nin.clone(),
            _ => return Err(ProxyError::Denied("this call is for patients")),
        };
        if caller.proxy.protected_address {
            store::note_protected(&self.db, own.as_str(), self.clock.now_ms()).await?;
        }
        let Some(target) = caller.proxy.on_behalf_of.clone().filter(|t| *t != own) else {
            return Ok(own);
        };
        let today = oslo_today(self.clock.as_ref());
        if let Some(r) = caller
            .proxy
            .represents
            .iter()
            .find(|r| r.nin == target && r.relation == Relation::Parent)
        {
            let limited = parent_rule(&r.nin, r.protected_address, today)?;
            if store::is_protected(&self.db, target.as_str()).await? {
                return Err(ProxyError::Denied(rule::PROTECTED_ADDRESS));
            }
            caller.proxy.acting = Some(Acting {
                actor: own,
                relation: Relation::Parent,
                limited,
            });
            return Ok(target);
        }
        let mut all = store::between(&self.db, target.as_str(), own.as_str()).await?;
        if all.is_empty() {
            return Err(ProxyError::Denied(rule::NO_RELATION));
        }
        // The giver's own token said on a call since the grant that their address is
        // strictly confidential: the fullmakt no longer lets anyone act for them.
        if store::is_protected(&self.db, target.as_str()).await? {
            return Err(ProxyError::Denied(rule::PROTECTED_ADDRESS));
        }
        // One in force that covers the area lets the call through; otherwise the refusal of
        // the first in force, or of the newest.
        all.sort_by_key(|f| f.state(today) != State::Active);
        let mut refusal = None;
        for f in &all {
            match fullmakt_rule(f, area, today) {
                Ok(()) => {
                    refusal = None;
                    break;
                }
                Err(e) => {
                    refusal.get_or_insert(e);
                }
            }
        }
        if let Some(e) = refusal {
            return Err(e);
        }
        caller.proxy.acting = Some(Acting {
            actor: own,
            relation: Relation::Fullmakt,
            limited: false,
        });
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nin::synthetic_born;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn a_parent_has_full_access_under_12_limited_to_16_and_none_after() {
        let today = day(2026, 6, 15);
        let child = |y: u32| synthetic_born(y, 6, 16, 0).unwrap(); // birthday tomorrow
        assert!(!parent_rule(&child(2014), false, today).unwrap()); // 11
        assert!(parent_rule(&child(2013), false, today).unwrap()); // 12
        assert!(parent_rule(&child(2010), false, today).unwrap()); // 15
        let e = parent_rule(&child(2009), false, today).unwrap_err(); // 16
        assert_eq!(e.to_string(), rule::PARENT_ENDS_AT_16);
        let e = parent_rule(&child(2014), true, today).unwrap_err();
        assert_eq!(e.to_string(), rule::PROTECTED_ADDRESS);
        // The birthday itself: 12 on the day, 16 on the day.
        assert!(parent_rule(&child(2014), false, day(2026, 6, 16)).unwrap());
        assert!(parent_rule(&child(2010), false, day(2026, 6, 16)).is_err());
    }

    #[test]
    fn a_fullmakt_holds_in_its_scope_until_its_end_date_unless_revoked() {
        let today = day(2026, 6, 15);
        let f = Fullmakt {
            id: "f".into(),
            giver: synthetic_born(2009, 1, 1, 0).unwrap().as_str().into(),
            holder: synthetic_born(1980, 1, 1, 0).unwrap().as_str().into(),
            scope: Scope::Booking,
            end_date: today,
            created_at_ms: 0,
            revoked_at_ms: None,
        };
        assert!(fullmakt_rule(&f, Area::Booking, today).is_ok());
        let denied =
            |f: &Fullmakt, area, today| fullmakt_rule(f, area, today).unwrap_err().to_string();
        assert_eq!(
            denied(&f, Area::Consultation, today),
            rule::NOT_CONSULTATION
        );
        assert_eq!(denied(&f, Area::AccessLog, today), rule::NO_ACCESS_LOG);
        assert_eq!(denied(&f, Area::Booking, day(2026, 6, 16)), rule::EXPIRED);
        let revoked = Fullmakt {
            revoked_at_ms: Some(1),
            ..f.clone()
        };
        assert_eq!(denied(&revoked, Area::Booking, today), rule::REVOKED);
        let young_holder = Fullmakt {
            holder: synthetic_born(2009, 1, 1, 1).unwrap().as_str().into(),
            ..f.clone()
        };
        assert_eq!(
            denied(&young_holder, Area::Booking, today),
            rule::HOLDER_UNDER_18
        );
        let both = Fullmakt {
            scope: Scope::Both,
            ..f
        };
        assert!(fullmakt_rule(&both, Area::Consultation, today).is_ok());
    }
}
