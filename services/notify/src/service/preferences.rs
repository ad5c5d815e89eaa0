//! A patient's preferences, and those of the people acting for them (contact details sealed at
//! rest; every read and write of them in the access log), and ops' dead-letter list.

use super::Notify;
use crate::domain::{Language, Preferences, Status};
use crate::error::NotifyError;
use crate::store::{self, DeadLetter, StoredPreferences};
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::Caller;
use econsult_runtime::nin::NationalId;

/// RPC names as the access log records them.
pub mod rpc {
    /// GetPreferences.
    pub const GET_PREFERENCES: &str = "/econsult.notify.v1.NotifyService/GetPreferences";
    /// SetPreferences.
    pub const SET_PREFERENCES: &str = "/econsult.notify.v1.NotifyService/SetPreferences";
}

/// Whose preferences a call reads or writes: the patient's own, or (when the caller acts for
/// the patient) the acting person's own for messages about the patient.
fn whose(caller: &Caller) -> Option<(&str, i64)> {
    caller
        .proxy
        .acting
        .as_ref()
        .map(|a| (a.actor.as_str(), a.relation.code()))
}

impl Notify {
    /// The preferences of the patient `nin` (defaults when never set), or, when `caller` acts
    /// for `nin` ([`econsult_runtime::proxy::Resolver`]), the caller's own for messages about
    /// `nin`; the read of the contact details is logged.
    pub async fn preferences(
        &self,
        caller: &Caller,
        nin: &NationalId,
    ) -> Result<Preferences, NotifyError> {
        let now = self.p.clock.now_ms();
        let mut tx = self.p.db.begin().await?;
        let (stored, sealed_for, what) = match whose(caller) {
            None => (
                Self::stored(&mut tx, nin.as_str()).await?,
                nin.as_str(),
                "read your contact details and notification settings",
            ),
            Some((actor, _)) => (
                store::proxy_preferences(&mut tx, nin.as_str(), actor)
                    .await?
                    .map_or_else(Self::defaults, |p| p.stored),
                actor,
                "read their own contact details and notification settings for messages about you",
            ),
        };
        let access = Access::new(
            rpc::GET_PREFERENCES,
            "notify_preferences",
            nin.as_str(),
            what,
        );
        audit::record(&mut tx, caller, &access, now).await?;
        tx.commit().await?;
        Ok(self.open(sealed_for, &stored)?)
    }

    /// Replaces the preferences of the patient `nin`, or, when `caller` acts for `nin`, the
    /// caller's own for messages about `nin` (with the relation the call was let through on);
    /// already validated by the adapter, lead times checked here; the write is logged.
    pub async fn set_preferences(
        &self,
        caller: &Caller,
        nin: &NationalId,
        p: Preferences,
    ) -> Result<Preferences, NotifyError> {
        p.check()?;
        let now = self.p.clock.now_ms();
        let proxy = whose(caller);
        // Contact details are sealed for the person they reach.
        let sealed_for = proxy.map_or(nin.as_str(), |(actor, _)| actor);
        let seal = |v: &Option<String>| -> Result<Option<String>, NotifyError> {
            Ok(v.as_deref()
                .map(|v| self.sealer.seal(sealed_for, v))
                .transpose()?)
        };
        let reminder_minutes = if p.reminder_minutes.is_empty() {
            vec![crate::domain::DEFAULT_REMINDER_MINUTES]
        } else {
            p.reminder_minutes.clone()
        };
        let stored = StoredPreferences {
            email_sealed: seal(&p.email)?,
            phone_sealed: seal(&p.phone)?,
            channels: p.channels.map_or(0, |c| c.bits()),
            reminder_minutes: reminder_minutes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            language: p.language.as_str().into(),
            opted_out: p.opted_out,
        };
        let mut tx = self.p.db.begin().await?;
        let what = match proxy {
            None => {
                store::put_preferences(&mut tx, nin.as_str(), &stored, now).await?;
                "changed your contact details and notification settings"
            }
            Some((actor, relation)) => {
                store::put_proxy_preferences(&mut tx, nin.as_str(), actor, relation, &stored, now)
                    .await?;
                "changed their own contact details and notification settings for messages about you"
            }
        };
        let access = Access::new(
            rpc::SET_PREFERENCES,
            "notify_preferences",
            nin.as_str(),
            what,
        );
        audit::record(&mut tx, caller, &access, now).await?;
        tx.commit().await?;
        Ok(Preferences {
            reminder_minutes,
            language: Language::parse(p.language.as_str()),
            ..p
        })
    }

    /// The newest failed or given-up messages (no contact details, no identity numbers).
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<(DeadLetter, Status)>, NotifyError> {
        let mut conn = self.p.db.read().acquire().await?;
        let rows = store::dead_letters(&mut conn, i64::from(limit)).await?;
        Ok(rows
            .into_iter()
            .map(|d| {
                let s = Status::from_code(d.status).unwrap_or(Status::Failed);
                (d, s)
            })
            .collect())
    }
}
