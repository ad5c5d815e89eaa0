//! Bearer-token authentication and the caller's role.
//!
//! Tokens are JWTs validated against the JWKS of their issuer (issuer, audience, `exp`/`nbf`/`iat`
//! with [`EXPIRY_LEEWAY_SECONDS`], signature). Each trusted issuer has its own key set and the
//! roles it may grant ([`IssuerConfig`]): a key verifies only tokens whose `iss` is its issuer,
//! and a role its issuer may not grant is never derived. The role is read from the claims:
//! - **patient**: an ID-porten token with `pid` (national identity number) and
//!   `acr = idporten-loa-high`; a lower level is refused (the app must log in again, stronger);
//! - **clinician**: a HelseID token with the HPR number claim and an organisation number (its
//!   `name`, or `given_name` `middle_name` `family_name`, name the person in the access log);
//! - **ehr**: a HelseID client-credentials token with scopes (`econsult:booking.write`, …) and
//!   an organisation number (its client name names the system in the access log; the person
//!   it acts for comes with each call, [`ACTING_NAME_HEADER`] and [`ACTING_HPR_HEADER`]);
//! - **ops**: a token with the scope `econsult:ops`, from an issuer configured for ops only
//!   (the scope means nothing in a token of another issuer).
//!
//! Locally, [`DevKeys`] creates an Ed25519 key in the data directory on first start and mints
//! tokens for every role (`econsult dev-token`), so real calls can be made without an identity
//! provider.

use crate::nin::NationalId;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeSet, path::Path, sync::Arc};
use tonic::{Request, Status};

/// The ID-porten assurance level GP services require.
pub const REQUIRED_ACR: &str = "idporten-loa-high";
/// HelseID claim with the HPR number of health personnel.
pub const HPR_CLAIM: &str = "helseid://claims/hpr/hpr_number";
/// HelseID claim with the organisation number of the client's (parent) organisation.
pub const ORG_CLAIM: &str = "helseid://claims/client/claims/orgnr_parent";
/// HelseID claim with the name of the client (the system), for logging.
pub const CLIENT_NAME_CLAIM: &str = "helseid://claims/client/client_name";
/// The metadata header with the purpose of a practice's or operations' call (`treatment`,
/// `administration`, `quality-assurance`, `operations`): the access log's "why".
pub const PURPOSE_HEADER: &str = "x-purpose";
/// The metadata header naming the person an EHR system call acts for (ASCII; a name with other
/// characters goes in [`ACTING_NAME_BIN_HEADER`]).
pub const ACTING_NAME_HEADER: &str = "x-acting-name";
/// [`ACTING_NAME_HEADER`] as gRPC binary metadata: the name's UTF-8 bytes.
pub const ACTING_NAME_BIN_HEADER: &str = "x-acting-name-bin";
/// The metadata header with the HPR number of the person an EHR system call acts for (health
/// personnel; other staff have none).
pub const ACTING_HPR_HEADER: &str = "x-acting-hpr";
/// Scope that makes a token an operations token.
pub const OPS_SCOPE: &str = "econsult:ops";
/// Issuer of locally minted development tokens.
pub const DEV_ISSUER: &str = "econsult-dev";
/// Default audience of econsult tokens.
pub const DEFAULT_AUDIENCE: &str = "econsult";

/// What kind of caller a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A patient logged in through ID-porten.
    Patient,
    /// Health personnel logged in through HelseID.
    Clinician,
    /// An EHR system (client credentials).
    Ehr,
    /// Operations.
    Ops,
}

impl Role {
    /// The number used in storage and in `econsult.audit.v1.CallerRole`.
    pub fn code(self) -> i64 {
        match self {
            Role::Patient => 1,
            Role::Clinician => 2,
            Role::Ehr => 3,
            Role::Ops => 4,
        }
    }
    /// The role's name in logs: `patient`, `clinician`, `ehr`, `ops`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Clinician => "clinician",
            Role::Ehr => "ehr",
            Role::Ops => "ops",
        }
    }
    /// Inverse of [`Role::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Role::Patient,
            2 => Role::Clinician,
            3 => Role::Ehr,
            4 => Role::Ops,
            _ => return None,
        })
    }
}

/// The authenticated caller of an RPC, put in the request extensions by [`AuthInterceptor`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token subject.
    pub subject: String,
    /// Role derived from the claims.
    pub role: Role,
    /// The patient's identity number (patients only).
    pub nin: Option<NationalId>,
    /// HPR number (clinicians only).
    pub hpr_number: Option<String>,
    /// Organisation number (clinicians and EHR systems).
    pub org_number: Option<String>,
    /// Granted scopes.
    pub scopes: BTreeSet<String>,
    /// The token's `exp` (Unix seconds): streams opened with it end when it is no longer
    /// accepted ([`end_at_token_expiry`]).
    pub expires_at: i64,
    /// The server's id of this call (32 hex digits, fresh per call; set by the interceptor):
    /// recorded in the access log beside the client-supplied trace id.
    pub request_id: String,
    /// Whether this server accepts synthetic identity numbers (set by the interceptor from
    /// [`Authenticator::accepts_synthetic`]): [`Caller::accept_nin`].
    pub synthetic_numbers: bool,
    /// Acting for others: the token's relations, the call's `x-on-behalf-of`, and once
    /// resolved ([`crate::proxy::Resolver`]), who acts for whom.
    pub proxy: Proxy,
    /// The person's name (clinicians: HelseID's `name`, or `given_name` `middle_name`
    /// `family_name`; patients: the identity service's optional `name`).
    pub name: Option<String>,
    /// The system's name (EHR systems: HelseID's [`CLIENT_NAME_CLAIM`]).
    pub client_name: Option<String>,
    /// The person an EHR system call acts for (its [`ACTING_NAME_HEADER`] and
    /// [`ACTING_HPR_HEADER`]); set by the interceptor.
    pub acting_person: Option<ActingPerson>,
    /// The purpose the call states ([`PURPOSE_HEADER`]); set by the interceptor.
    pub purpose: Option<Purpose>,
}

/// The person on whose behalf an EHR system calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActingPerson {
    /// Their name.
    pub name: String,
    /// Their HPR number (health personnel), `None` for other staff.
    pub hpr_number: Option<String>,
}

/// Why patient data was accessed (the access log's "why"; stored as [`Purpose::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// The patient's own use (or their parent's or fullmakt holder's for them).
    OwnAccess,
    /// Health care for the patient.
    Treatment,
    /// Administration of the patient's care (lists, appointments, billing).
    Administration,
    /// Quality assurance of the care given.
    QualityAssurance,
    /// Operations of the service (e.g. reading the access log).
    Operations,
}

impl Purpose {
    /// The number stored in `audit_log.purpose` and used in `econsult.audit.v1.Purpose`
    /// (0 is a row written before purposes were recorded).
    pub fn code(self) -> i64 {
        match self {
            Purpose::OwnAccess => 1,
            Purpose::Treatment => 2,
            Purpose::Administration => 3,
            Purpose::QualityAssurance => 4,
            Purpose::Operations => 5,
        }
    }
    /// Inverse of [`Purpose::code`] (`None` for 0 and unknown codes).
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Purpose::OwnAccess,
            2 => Purpose::Treatment,
            3 => Purpose::Administration,
            4 => Purpose::QualityAssurance,
            5 => Purpose::Operations,
            _ => return None,
        })
    }
    /// The [`PURPOSE_HEADER`] value naming a purpose a caller may state (not `OwnAccess`,
    /// which is a patient's by their role).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "treatment" => Purpose::Treatment,
            "administration" => Purpose::Administration,
            "quality-assurance" => Purpose::QualityAssurance,
            "operations" => Purpose::Operations,
            _ => return None,
        })
    }
}

/// The metadata header naming the person a patient call acts for (11 digits).
pub const ON_BEHALF_OF_HEADER: &str = "x-on-behalf-of";
/// The token claim listing the people the token's person may act for (parents: children).
pub const REPRESENTS_CLAIM: &str = "represents";

/// How an acting person is related to the person they act for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Relation {
    /// A parent with parental responsibility (token claim).
    Parent,
    /// The holder of a power of attorney given in econsult.
    Fullmakt,
}

impl Relation {
    /// The number stored in `audit_log.acted_as` (0 is acting for oneself).
    pub fn code(self) -> i64 {
        match self {
            Relation::Parent => 1,
            Relation::Fullmakt => 2,
        }
    }
    /// Inverse of [`Relation::code`] (`None` for 0 and unknown codes).
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Relation::Parent),
            2 => Some(Relation::Fullmakt),
            _ => None,
        }
    }
}

/// A person a token says its person may act for (claim `represents`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Represented {
    /// Their identity number.
    pub nin: NationalId,
    /// The relation (the registry's: parent).
    pub relation: Relation,
    /// Whether they have a strictly confidential address (no representation at all).
    pub protected_address: bool,
    /// Their display name, when the claim gives one.
    pub name: Option<String>,
}

/// Who acts for whom in a call that acts for someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acting {
    /// The acting person (the token's `pid`).
    pub actor: NationalId,
    /// How they are related to the subject.
    pub relation: Relation,
    /// A parent of a child from 12 to 16: booking yes, the child's own threads no.
    pub limited: bool,
}

/// The acting-for-others part of a [`Caller`].
#[derive(Debug, Clone, Default)]
pub struct Proxy {
    /// From the token: the people its person may act for.
    pub represents: Vec<Represented>,
    /// From the token: its own person has a strictly confidential address.
    pub protected_address: bool,
    /// From the call's `x-on-behalf-of` header.
    pub on_behalf_of: Option<NationalId>,
    /// Set when the call was resolved to act for someone else.
    pub acting: Option<Acting>,
}

impl Caller {
    /// Takes the caller out of a request that passed the [`AuthInterceptor`].
    pub fn from_request<T>(req: &Request<T>) -> Result<&Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))
    }

    /// The patient's identity number, or `PERMISSION_DENIED` for any other role.
    pub fn patient(&self) -> Result<&NationalId, Status> {
        match (&self.role, &self.nin) {
            (Role::Patient, Some(nin)) => Ok(nin),
            _ => Err(Status::permission_denied("this call is for patients")),
        }
    }

    /// The organisation of an EHR system or clinician holding `scope`, or `PERMISSION_DENIED`.
    pub fn org_with_scope(&self, scope: &str) -> Result<&str, Status> {
        match (&self.role, &self.org_number) {
            (Role::Ehr | Role::Clinician, Some(org)) if self.scopes.contains(scope) => Ok(org),
            (Role::Ehr | Role::Clinician, Some(_)) => Err(Status::permission_denied(format!(
                "token lacks the scope {scope}"
            ))),
            _ => Err(Status::permission_denied(
                "this call is for EHR systems and health personnel",
            )),
        }
    }

    /// Who acted, when the call acts for someone else: the actor's identity number and the
    /// [`Relation::code`]; `("", 0)` when the caller acts for themselves.
    pub fn actor(&self) -> (&str, i64) {
        self.proxy
            .acting
            .as_ref()
            .map_or(("", 0), |a| (a.actor.as_str(), a.relation.code()))
    }

    /// The acting person's display name when the call acts for someone else and the token
    /// names them; `""` otherwise.
    pub fn actor_name(&self) -> &str {
        match &self.proxy.acting {
            Some(_) => self.name.as_deref().unwrap_or(""),
            None => "",
        }
    }

    /// `Ok` when this server accepts `nin` as the identity number in `field`: a synthetic test
    /// number only where the server allows them (development, test environments); otherwise
    /// INVALID_ARGUMENT naming the field.
    pub fn accept_nin(&self, nin: &NationalId, field: &str) -> Result<(), Status> {
        if nin.is_synthetic() && !self.synthetic_numbers {
            return Err(Status::invalid_argument(format!(
                "{field} is a synthetic test number, which this server does not accept \
                 (only development and test environments do: --allow-synthetic-nins)"
            )));
        }
        Ok(())
    }

    /// The HPR number of the practitioner behind the call: a clinician's own, or the person an
    /// EHR system call acts for.
    pub fn practitioner_hpr(&self) -> Option<&str> {
        match self.role {
            Role::Clinician => self.hpr_number.as_deref(),
            Role::Ehr => self
                .acting_person
                .as_ref()
                .and_then(|p| p.hpr_number.as_deref()),
            Role::Patient | Role::Ops => None,
        }
    }

    /// A background task of econsult itself acting without a token (e.g. the notification
    /// sender opening contact details): an operations caller whose access-log rows name the
    /// system `name` and the purpose operations. Never built from a request.
    pub fn system(name: &str) -> Caller {
        Caller {
            subject: format!("system:{name}"),
            role: Role::Ops,
            nin: None,
            hpr_number: None,
            org_number: None,
            scopes: BTreeSet::new(),
            expires_at: 0,
            request_id: String::new(),
            synthetic_numbers: false,
            proxy: Proxy::default(),
            name: None,
            client_name: Some(name.to_owned()),
            acting_person: None,
            purpose: Some(Purpose::Operations),
        }
    }

    /// `Ok` for operations, `PERMISSION_DENIED` otherwise.
    pub fn ops(&self) -> Result<(), Status> {
        if self.role == Role::Ops {
            Ok(())
        } else {
            Err(Status::permission_denied("this call is for operations"))
        }
    }
}

/// The claims econsult reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Audience: one string or an array (HelseID sends arrays).
    pub aud: Audience,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// ID-porten: national identity number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// ID-porten: assurance level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Space-separated scopes (a JSON array of scopes, as HelseID sends, is read into this form).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scope_string_or_array"
    )]
    pub scope: Option<String>,
    /// HelseID: HPR number.
    #[serde(
        rename = "helseid://claims/hpr/hpr_number",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hpr_number: Option<String>,
    /// HelseID: organisation number.
    #[serde(
        rename = "helseid://claims/client/claims/orgnr_parent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub org_number: Option<String>,
    /// HelseID (scope `profile`): the person's full name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// HelseID (scope `profile`): given name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// HelseID (scope `profile`): middle name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub middle_name: Option<String>,
    /// HelseID (scope `profile`): family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    /// HelseID: the client's (system's) name.
    #[serde(
        rename = "helseid://claims/client/client_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_name: Option<String>,
    /// The people the token's person may act for, from the population register
    /// ([`REPRESENTS_CLAIM`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub represents: Vec<RepresentsClaim>,
    /// The token's person has a strictly confidential address (code 6/7).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected_address: bool,
}

/// One entry of the `represents` claim:
/// `{"pid": "<11 digits>", "relation": "parent", "protected_address": false, "name": "Ola"}`
/// (`name` optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepresentsClaim {
    /// The represented person's identity number.
    pub pid: String,
    /// `parent` (other relations are ignored).
    pub relation: String,
    /// The represented person has a strictly confidential address.
    #[serde(default)]
    pub protected_address: bool,
    /// The represented person's display name (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `scope` as a space-separated string or an array of scopes, joined with spaces.
fn scope_string_or_array<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scope {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<Scope>::deserialize(d)?.map(|s| match s {
        Scope::One(s) => s,
        Scope::Many(v) => v.join(" "),
    }))
}

/// A token's `aud`: one audience or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "econsult"`.
    One(String),
    /// `"aud": ["econsult", "other"]`.
    Many(Vec<String>),
}

impl Default for Audience {
    fn default() -> Self {
        Audience::One(String::new())
    }
}

impl From<&str> for Audience {
    fn from(s: &str) -> Self {
        Audience::One(s.to_owned())
    }
}

impl From<String> for Audience {
    fn from(s: String) -> Self {
        Audience::One(s)
    }
}

impl From<Vec<String>> for Audience {
    fn from(v: Vec<String>) -> Self {
        Audience::Many(v)
    }
}

/// A set of [`Role`]s: what one issuer may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    /// Every role (the development key, or a single issuer given the old way).
    pub const ALL: Roles = Roles(0b1111);
    /// No role.
    pub const NONE: Roles = Roles(0);

    fn bit(role: Role) -> u8 {
        1 << (role as u8)
    }
    /// This set plus `role`.
    pub const fn with(self, role: Role) -> Roles {
        Roles(self.0 | (1 << (role as u8)))
    }
    /// Whether `role` is in the set.
    pub fn contains(self, role: Role) -> bool {
        self.0 & Self::bit(role) != 0
    }
    /// Parses `patient+ehr` (also `|` or spaces between names).
    pub fn parse(s: &str) -> Result<Roles, String> {
        let mut roles = Roles::NONE;
        for name in s.split(['+', '|', ' ']).filter(|n| !n.is_empty()) {
            let role = match name {
                "patient" => Role::Patient,
                "clinician" => Role::Clinician,
                "ehr" => Role::Ehr,
                "ops" => Role::Ops,
                other => {
                    return Err(format!(
                        "unknown role {other:?} (patient, clinician, ehr, ops)"
                    ));
                }
            };
            roles = roles.with(role);
        }
        if roles == Roles::NONE {
            return Err("no role given".into());
        }
        Ok(roles)
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = [Role::Patient, Role::Clinician, Role::Ehr, Role::Ops]
            .into_iter()
            .filter(|r| self.contains(*r))
            .map(Role::as_str)
            .collect();
        f.write_str(&names.join("+"))
    }
}

/// Clock skew accepted on `exp` (seconds), for calls and for streams alike.
pub const EXPIRY_LEEWAY_SECONDS: u64 = 30;

/// A server stream that ends with UNAUTHENTICATED once the caller's token is no longer accepted
/// (`expires_at`, the token's `exp` as in [`Caller::expires_at`], plus
/// [`EXPIRY_LEEWAY_SECONDS`]): a stream lives no longer than a unary call with the same token
/// could be made. The client reconnects with a fresh token (and resumes from its
/// cursor). The inner stream is dropped at expiry, so its producer sees the client as gone.
pub fn end_at_token_expiry<S, T>(
    stream: S,
    expires_at: i64,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>
where
    S: futures::Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    use futures::StreamExt as _;
    // Validation compares whole seconds (`exp < now - leeway` refuses), so the token is
    // accepted through the second `exp + leeway`; the stream ends when that second is over.
    let deadline = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(expires_at).unwrap_or(0))
        + std::time::Duration::from_secs(EXPIRY_LEEWAY_SECONDS + 1);
    let left = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let state = (Box::pin(stream), Box::pin(tokio::time::sleep(left)));
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let (mut inner, mut expiry) = state?;
        tokio::select! {
            biased;
            () = &mut expiry => Some((
                Err(Status::unauthenticated(
                    "access token expired: reconnect with a fresh token",
                )),
                None,
            )),
            item = inner.next() => item.map(|item| (item, Some((inner, expiry)))),
        }
    }))
}

/// Norwegian organisation numbers are 9 digits.
pub fn is_org_number(s: &str) -> bool {
    s.len() == 9 && s.bytes().all(|b| b.is_ascii_digit())
}

mod dev;
mod interceptor;
mod issuers;
#[cfg(test)]
mod tests;

pub use dev::{DEV_ACTING_HPR, DEV_ACTING_NAME, DevKeys, TokenSpec, dev_call_headers};
pub use interceptor::AuthInterceptor;
pub use issuers::{
    Authenticator, IssuerConfig, JwksSource, TrustedIssuer, UNKNOWN_KID_REFRESH_INTERVAL,
    VERIFIED_TOKENS_MAX, check_jwks_url, fetch_jwks, refresh_jwks,
};
