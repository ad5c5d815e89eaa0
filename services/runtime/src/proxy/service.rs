//! The fullmakt commands and queries, on domain types.

use super::{
    Fullmakt, GIVER_FROM_AGE, HOLDER_FROM_AGE, ProxyError, Scope, State, age, oslo_today, rule,
    store,
};
use crate::audit::{Access, record_reads};
use crate::auth::{Caller, Relation, Role};
use crate::clock::Clock;
use crate::command::{self, Command};
use crate::db::Db;
use crate::nin::NationalId;
use crate::outbox::NewEvent;
use crate::pseudonym::Pseudonymizer;
use chrono::NaiveDate;
use std::sync::Arc;

const GRANT: &str = "/econsult.proxy.v1.ProxyService/GrantFullmakt";
const REVOKE: &str = "/econsult.proxy.v1.ProxyService/RevokeFullmakt";
const LIST_GIVEN: &str = "/econsult.proxy.v1.ProxyService/ListGivenFullmakter";
const LIST_REPRESENTED: &str = "/econsult.proxy.v1.ProxyService/ListRepresented";

/// A person the caller may act for today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Representee {
    /// Their identity number.
    pub nin: NationalId,
    /// The relation.
    pub relation: Relation,
    /// A parent's limited access (child 12 to 16).
    pub limited: bool,
    /// The fullmakt, for that relation.
    pub fullmakt: Option<Fullmakt>,
    /// Their display name, when the token's `represents` entry gives one.
    pub name: Option<String>,
}

/// The event payload of a granted or revoked fullmakt: no identity numbers (the giver is the
/// event's `route_key`, as a pseudonymous key; both are in the fullmakt's row).
#[derive(serde::Serialize)]
struct FullmaktEvent<'a> {
    fullmakt_id: &'a str,
    scope: i64,
    end_date: String,
}

/// The fullmakt use cases.
#[derive(Clone)]
pub struct Fullmakter {
    db: Db,
    clock: Arc<dyn Clock>,
    pseudonyms: Arc<Pseudonymizer>,
}

/// The caller as the giver: a patient acting for themselves.
fn giver(caller: &Caller) -> Result<NationalId, ProxyError> {
    match (&caller.role, &caller.nin) {
        (Role::Patient, Some(nin)) => {
            if caller.proxy.on_behalf_of.as_ref().is_some_and(|o| o != nin) {
                return Err(ProxyError::Denied(rule::NOT_ON_BEHALF));
            }
            Ok(nin.clone())
        }
        _ => Err(ProxyError::Denied("this call is for patients")),
    }
}

impl Fullmakter {
    /// Over the platform's database, clock and pseudonymous event keys.
    pub fn new(db: Db, clock: Arc<dyn Clock>, pseudonyms: Arc<Pseudonymizer>) -> Self {
        Self {
            db,
            clock,
            pseudonyms,
        }
    }

    /// The caller gives `holder` a fullmakt for `scope` through `end_date`.
    pub async fn grant(
        &self,
        caller: &Caller,
        holder: NationalId,
        scope: Scope,
        end_date: NaiveDate,
        key: &str,
    ) -> Result<Fullmakt, ProxyError> {
        let giver = giver(caller)?;
        let today = oslo_today(self.clock.as_ref());
        if holder == giver {
            return Err(ProxyError::Invalid {
                field: "holder_nin",
                message: "must be another person than the giver",
            });
        }
        if end_date < today {
            return Err(ProxyError::Invalid {
                field: "end_date",
                message: "must be today or later",
            });
        }
        if caller.proxy.protected_address {
            store::note_protected(&self.db, giver.as_str(), self.clock.now_ms()).await?;
            return Err(ProxyError::Denied(rule::PROTECTED_ADDRESS));
        }
        // The giver's token no longer states a protected address: forget one noted before.
        store::clear_protected(&self.db, giver.as_str()).await?;
        if age(&giver, today)? < GIVER_FROM_AGE {
            return Err(ProxyError::Denied(rule::GIVER_UNDER_16));
        }
        if age(&holder, today)? < HOLDER_FROM_AGE {
            return Err(ProxyError::Denied(rule::HOLDER_UNDER_18));
        }
        let now_ms = self.clock.now_ms();
        let request = (holder.as_str(), scope.code(), end_date.to_string());
        let cmd = Command::new(caller, "GrantFullmakt", key, &request, now_ms);
        command::run(&self.db, cmd, async |op| {
            let f = Fullmakt {
                id: uuid::Uuid::new_v4().to_string(),
                giver: giver.as_str().to_owned(),
                holder: holder.as_str().to_owned(),
                scope,
                end_date,
                created_at_ms: now_ms,
                revoked_at_ms: None,
            };
            store::insert(&mut op.tx, &f).await?;
            emit(op, "proxy.fullmakt_granted", &f, &self.pseudonyms, now_ms)?;
            op.audit(caller, &access(GRANT, &f), now_ms)?;
            Ok::<_, ProxyError>(f)
        })
        .await
    }

    /// The giver revokes fullmakt `id` (a revoked one comes back unchanged).
    pub async fn revoke(
        &self,
        caller: &Caller,
        id: &str,
        key: &str,
    ) -> Result<Fullmakt, ProxyError> {
        let giver = giver(caller)?;
        let now_ms = self.clock.now_ms();
        let cmd = Command::new(caller, "RevokeFullmakt", key, &id, now_ms);
        command::run(&self.db, cmd, async |op| {
            let (f, revoked_now) = store::revoke(&mut op.tx, id, giver.as_str(), now_ms)
                .await?
                .ok_or(ProxyError::NotFound)?;
            if revoked_now {
                emit(op, "proxy.fullmakt_revoked", &f, &self.pseudonyms, now_ms)?;
            }
            op.audit(caller, &access(REVOKE, &f), now_ms)?;
            Ok::<_, ProxyError>(f)
        })
        .await
    }

    /// The fullmakter the caller has given, newest first.
    pub async fn given(&self, caller: &Caller) -> Result<Vec<Fullmakt>, ProxyError> {
        let giver = giver(caller)?;
        let all = store::given(&self.db, giver.as_str()).await?;
        let accesses: Vec<Access<'_>> = all.iter().map(|f| access(LIST_GIVEN, f)).collect();
        record_reads(&self.db, caller, &accesses, self.clock.now_ms()).await?;
        Ok(all)
    }

    /// Whom the caller may act for today: the token's children under 16 without a protected
    /// address, and the fullmakter in force the caller holds whose giver is not known to have
    /// one.
    pub async fn represented(&self, caller: &Caller) -> Result<Vec<Representee>, ProxyError> {
        let holder = giver(caller)?;
        let today = oslo_today(self.clock.as_ref());
        let mut out = Vec::new();
        for r in &caller.proxy.represents {
            if store::is_protected(&self.db, r.nin.as_str()).await? {
                continue;
            }
            if let Ok(limited) = super::parent_rule(&r.nin, r.protected_address, today) {
                out.push(Representee {
                    nin: r.nin.clone(),
                    relation: Relation::Parent,
                    limited,
                    fullmakt: None,
                    name: r.name.clone(),
                });
            }
        }
        let held = store::held(&self.db, holder.as_str()).await?;
        let mut accesses = Vec::new();
        for f in held {
            if f.state(today) != State::Active
                || store::is_protected(&self.db, &f.giver).await?
                || super::fullmakt_rule(&f, super::Area::Booking, today).is_err()
                    && super::fullmakt_rule(&f, super::Area::Consultation, today).is_err()
            {
                continue;
            }
            let nin =
                NationalId::parse(&f.giver).map_err(|e| anyhow::anyhow!("stored giver: {e}"))?;
            out.push(Representee {
                nin,
                relation: Relation::Fullmakt,
                limited: false,
                fullmakt: Some(f),
                name: None,
            });
        }
        for r in &out {
            if let Some(f) = &r.fullmakt {
                accesses.push(access(LIST_REPRESENTED, f));
            }
        }
        record_reads(&self.db, caller, &accesses, self.clock.now_ms()).await?;
        Ok(out)
    }
}

fn access<'a>(action: &'a str, f: &'a Fullmakt) -> Access<'a> {
    let what = match action {
        GRANT => "gave a power of attorney (fullmakt)",
        REVOKE => "revoked a power of attorney (fullmakt)",
        LIST_GIVEN => "read the powers of attorney (fullmakter) you have given",
        _ => "looked up the power of attorney (fullmakt) you gave them",
    };
    Access::new(action, format!("fullmakt:{}", f.id), &f.giver, what)
}

fn emit(
    op: &mut crate::idempotency::Op,
    topic: &str,
    f: &Fullmakt,
    pseudonyms: &Pseudonymizer,
    now_ms: i64,
) -> Result<(), ProxyError> {
    op.emit(
        NewEvent {
            topic,
            org_number: "",
            route_key: &pseudonyms.key_for(&f.giver),
            payload: &FullmaktEvent {
                fullmakt_id: &f.id,
                scope: f.scope.code(),
                end_date: f.end_date.to_string(),
            },
        },
        now_ms,
    )?;
    Ok(())
}
