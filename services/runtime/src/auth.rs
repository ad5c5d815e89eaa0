//! Bearer-token authentication and the caller's role.
//!
//! Tokens are JWTs validated against the JWKS of their issuer (issuer, audience, `exp`/`nbf`/`iat`
//! with [`EXPIRY_LEEWAY_SECONDS`], signature). Each trusted issuer has its own key set and the
//! roles it may grant ([`IssuerConfig`]): a key verifies only tokens whose `iss` is its issuer,
//! and a role its issuer may not grant is never derived. The role is read from the claims:
//! - **patient**: an ID-porten token with `pid` (national identity number) and
//!   `acr = idporten-loa-high`; a lower level is refused (the app must log in again, stronger);
//! - **clinician**: a HelseID token with the HPR number claim and an organisation number;
//! - **ehr**: a HelseID client-credentials token with scopes (`econsult:booking.write`, …) and
//!   an organisation number;
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

/// Where an issuer's JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A file, read at start.
    File(std::path::PathBuf),
    /// An `https` URL (plain `http` only to a loopback host), fetched at start, periodically and
    /// on an unknown `kid`.
    Url(String),
}

impl JwksSource {
    /// `http://…` / `https://…` is a URL (checked by [`check_jwks_url`]), anything else a path.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            check_jwks_url(s)?;
            Ok(JwksSource::Url(s.to_owned()))
        } else {
            anyhow::ensure!(!s.is_empty(), "empty JWKS path");
            Ok(JwksSource::File(s.into()))
        }
    }

    /// The document: the file's contents or what the URL serves.
    pub async fn load(&self) -> anyhow::Result<String> {
        use anyhow::Context as _;
        match self {
            JwksSource::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("read JWKS {}", path.display())),
            JwksSource::Url(url) => {
                let u = url.clone();
                tokio::task::spawn_blocking(move || fetch_jwks(&u))
                    .await?
                    .context("fetch JWKS")
            }
        }
    }
}

/// Refuses a JWKS URL that is not `https`, except plain `http` to a loopback host (`localhost`,
/// `127.0.0.0/8`, `[::1]`): keys fetched in the clear could be replaced on the way.
pub fn check_jwks_url(url: &str) -> anyhow::Result<()> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("JWKS URL without scheme"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    anyhow::ensure!(!host.is_empty(), "JWKS URL without host");
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(
                loopback,
                "JWKS URL must be https (plain http only to a loopback host): {host}"
            );
            Ok(())
        }
        other => anyhow::bail!("JWKS URL scheme {other} not supported (https)"),
    }
}

/// One trusted issuer as configured: `iss=URL,jwks=PATH_OR_URL,roles=patient+ehr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Its key set.
    pub jwks: JwksSource,
    /// The roles its tokens may carry.
    pub roles: Roles,
}

impl std::str::FromStr for IssuerConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut issuer, mut jwks, mut roles) = (None, None, None);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            match k.trim() {
                "iss" => issuer = Some(v.trim().to_owned()),
                "jwks" => jwks = Some(JwksSource::parse(v.trim()).map_err(|e| e.to_string())?),
                "roles" => roles = Some(Roles::parse(v.trim())?),
                other => return Err(format!("unknown key {other:?} (iss, jwks, roles)")),
            }
        }
        let issuer = issuer.filter(|i| !i.is_empty()).ok_or("iss= is required")?;
        Ok(IssuerConfig {
            issuer,
            jwks: jwks.ok_or("jwks= is required")?,
            roles: roles.ok_or("roles= is required")?,
        })
    }
}

/// An issuer with its JWKS document, to build an [`Authenticator`] from.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// The exact `iss`.
    pub issuer: String,
    /// The roles its tokens may carry.
    pub roles: Roles,
    /// Where to re-fetch its JWKS (rotation, unknown `kid`); `None` for a file.
    pub jwks_url: Option<String>,
    /// The JWKS document.
    pub jwks: String,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    alg: Algorithm,
}

type KeySet = Vec<Key>;

/// One issuer's key set (replaceable at run time, for key rotation).
struct IssuerKeys {
    issuer: String,
    roles: Roles,
    url: Option<String>,
    /// The key set and the SHA-256 of the JWKS document it came from.
    keys: std::sync::RwLock<(Arc<KeySet>, [u8; 32])>,
    /// When a token with an unknown `kid` last made us fetch the JWKS.
    last_unknown_kid_fetch: std::sync::Mutex<Option<std::time::Instant>>,
}

impl IssuerKeys {
    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

/// At most one JWKS fetch per issuer in this time for tokens with an unknown `kid`.
pub const UNKNOWN_KID_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Validates bearer tokens against the key set of their issuer.
pub struct Authenticator {
    issuers: Vec<IssuerKeys>,
    audience: String,
    verified: Verified,
}

/// Why a token was refused: the `reason` label of `econsult_auth_failures_total` (a fixed set).
struct Refusal {
    reason: &'static str,
    status: Status,
}

impl Refusal {
    fn unauthenticated(reason: &'static str, message: &'static str) -> Self {
        Refusal {
            reason,
            status: Status::unauthenticated(message),
        }
    }
}

/// Counts a refused token in `econsult_auth_failures_total{reason}` and logs it (the reason
/// and message, never the token).
fn refused(reason: &'static str, status: Status) -> Status {
    static FAILURES: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    FAILURES
        .get_or_init(|| {
            opentelemetry::global::meter("econsult")
                .u64_counter("econsult_auth_failures")
                .with_description("Refused bearer tokens, by reason")
                .build()
        })
        .add(1, &[opentelemetry::KeyValue::new("reason", reason)]);
    tracing::info!(reason, message = status.message(), "bearer token refused");
    status
}

/// How many validated tokens [`Authenticator`] remembers.
pub const VERIFIED_TOKENS_MAX: usize = 20_000;

/// Tokens that passed validation, by the SHA-256 of the token, with the caller they gave. A
/// client sends the same token on every call until it expires, and checking its signature
/// again on each call (Ed25519: decompressing two curve points) was ~8 % of the server's CPU
/// in the booking rush. An entry is used only while its token is unexpired by the same rule
/// (and leeway) as the full check; the whole cache is dropped when the key set is replaced (a
/// key taken out of the JWKS stops admitting its tokens at once; a refresh that fetched the same
/// document replaces nothing) and when it is full after dropping the expired entries. Failed
/// validations are not remembered.
#[derive(Default)]
struct Verified(std::sync::Mutex<std::collections::HashMap<[u8; 32], Caller>>);

impl Verified {
    fn key(token: &str) -> [u8; 32] {
        sha256(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], Caller>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caller of a remembered token, if it is still unexpired at `now` (Unix seconds).
    fn get(&self, key: &[u8; 32], now: i64) -> Option<Result<Caller, Status>> {
        let map = self.lock();
        let caller = map.get(key)?;
        Some(if unexpired(caller.expires_at, now) {
            Ok(caller.clone())
        } else {
            Err(Status::unauthenticated("token expired"))
        })
    }

    /// Remembers `caller` for the token of `key` if `still_current()` (asked under the lock:
    /// the key set that validated the token has not been replaced meanwhile).
    fn put(&self, key: [u8; 32], caller: &Caller, now: i64, still_current: impl FnOnce() -> bool) {
        let mut map = self.lock();
        if !still_current() {
            return;
        }
        if map.len() >= VERIFIED_TOKENS_MAX {
            map.retain(|_, c| unexpired(c.expires_at, now));
            if map.len() >= VERIFIED_TOKENS_MAX {
                map.clear();
            }
        }
        map.insert(key, caller.clone());
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Whether a token with `exp` is still accepted at `now` (both Unix seconds): the rule of the
/// full check, `exp` plus [`EXPIRY_LEEWAY_SECONDS`] not before `now`.
fn unexpired(exp: i64, now: i64) -> bool {
    exp.saturating_add(EXPIRY_LEEWAY_SECONDS as i64) >= now
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| (&i.issuer, i.roles.to_string(), i.current().len()))
                    .collect::<Vec<_>>(),
            )
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    /// Builds an authenticator from the trusted issuers (each with its JWKS) and the audience.
    pub fn new(issuers: Vec<TrustedIssuer>, audience: String) -> anyhow::Result<Self> {
        anyhow::ensure!(!issuers.is_empty(), "no trusted issuer configured");
        let mut out: Vec<IssuerKeys> = Vec::new();
        for t in issuers {
            anyhow::ensure!(
                !out.iter().any(|i| i.issuer == t.issuer),
                "issuer {} configured twice",
                t.issuer
            );
            anyhow::ensure!(t.roles != Roles::NONE, "issuer {} grants no role", t.issuer);
            if let Some(url) = &t.jwks_url {
                check_jwks_url(url)?;
            }
            let keys =
                parse_jwks(&t.jwks).map_err(|e| anyhow::anyhow!("JWKS of {}: {e}", t.issuer))?;
            out.push(IssuerKeys {
                keys: std::sync::RwLock::new((Arc::new(keys), sha256(&t.jwks))),
                issuer: t.issuer,
                roles: t.roles,
                url: t.jwks_url,
                last_unknown_kid_fetch: std::sync::Mutex::new(None),
            });
        }
        Ok(Self {
            issuers: out,
            audience,
            verified: Verified::default(),
        })
    }

    /// One issuer granting every role, from a JWKS document.
    pub fn from_jwks(jwks: &str, issuer: &str, audience: String) -> anyhow::Result<Self> {
        Self::new(
            vec![TrustedIssuer {
                issuer: issuer.to_owned(),
                roles: Roles::ALL,
                jwks_url: None,
                jwks: jwks.to_owned(),
            }],
            audience,
        )
    }

    /// The issuers whose JWKS comes from a URL, with the URL.
    pub fn jwks_urls(&self) -> Vec<(String, String)> {
        self.issuers
            .iter()
            .filter_map(|i| Some((i.issuer.clone(), i.url.clone()?)))
            .collect()
    }

    /// Replaces the key set of `issuer` (e.g. after fetching a rotated JWKS) and forgets the
    /// remembered tokens; the same document as the current one changes nothing. A document
    /// without usable keys is refused and the old keys stay. Returns the number of keys.
    pub fn replace_jwks(&self, issuer: &str, jwks: &str) -> anyhow::Result<usize> {
        let ik = self
            .issuers
            .iter()
            .find(|i| i.issuer == issuer)
            .ok_or_else(|| anyhow::anyhow!("issuer {issuer} is not configured"))?;
        self.replace_keys(ik, jwks)
    }

    fn replace_keys(&self, ik: &IssuerKeys, jwks: &str) -> anyhow::Result<usize> {
        let keys = parse_jwks(jwks)?;
        let n = keys.len();
        let digest = sha256(jwks);
        {
            let mut current = ik.keys.write().unwrap_or_else(|e| e.into_inner());
            if current.1 == digest {
                return Ok(n);
            }
            *current = (Arc::new(keys), digest);
        }
        self.verified.clear();
        Ok(n)
    }

    /// Fetches the JWKS of `ik` again because a token named a `kid` it lacks, at most once per
    /// [`UNKNOWN_KID_REFRESH_INTERVAL`] (a stream of made-up `kid`s costs one fetch per
    /// interval). Blocks the calling thread for the fetch (`block_in_place` on a multi-thread
    /// runtime). Returns whether the keys may have changed.
    fn refresh_for_unknown_kid(&self, ik: &IssuerKeys) -> bool {
        let Some(url) = &ik.url else {
            return false;
        };
        {
            let mut last = ik
                .last_unknown_kid_fetch
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFRESH_INTERVAL) {
                return false;
            }
            *last = Some(std::time::Instant::now());
        }
        let fetch = || fetch_jwks_within(url, std::time::Duration::from_secs(5));
        let doc = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(fetch)
            }
            _ => fetch(),
        };
        match doc.and_then(|d| self.replace_keys(ik, &d)) {
            Ok(n) => {
                tracing::info!(issuer = %ik.issuer, keys = n, "jwks fetched for an unknown kid");
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %ik.issuer, error = %e, "jwks fetch for an unknown kid failed");
                false
            }
        }
    }

    /// Validates `token` and derives the caller (a token validated before and still
    /// unexpired: from memory, see [`VERIFIED_TOKENS_MAX`]).
    pub fn authenticate(&self, token: &str) -> Result<Caller, Status> {
        self.authenticate_at(token, chrono::Utc::now().timestamp())
    }

    /// [`Authenticator::authenticate`] at `now` (Unix seconds) for remembered tokens; the full
    /// check uses the system clock.
    fn authenticate_at(&self, token: &str, now: i64) -> Result<Caller, Status> {
        let key = Verified::key(token);
        if let Some(known) = self.verified.get(&key, now) {
            return known.map_err(|s| refused("expired", s));
        }
        let (caller, ik, keys) = self
            .validate(token)
            .map_err(|r| refused(r.reason, r.status))?;
        // A replace_jwks between the check and here clears the cache before or after this put:
        // after, it removes the entry; before, the keys are no longer these and nothing is put.
        self.verified
            .put(key, &caller, now, || Arc::ptr_eq(&keys, &ik.current()));
        Ok(caller)
    }

    /// The full check: the issuer (unverified `iss` picks the key set, then verified), the
    /// signature by a key of that issuer, audience, `exp`/`nbf`/`iat`, the role.
    fn validate(&self, token: &str) -> Result<(Caller, &IssuerKeys, Arc<KeySet>), Refusal> {
        let malformed = || Refusal::unauthenticated("malformed", "malformed bearer token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed())?;
        let iss = unverified_issuer(token).ok_or_else(malformed)?;
        let ik = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| Refusal::unauthenticated("issuer", "token issuer not trusted"))?;
        let find = |keys: &Arc<KeySet>| {
            keys.iter()
                .position(|k| k.alg == header.alg && (header.kid.is_none() || header.kid == k.kid))
        };
        let mut keys = ik.current();
        let mut index = find(&keys);
        if index.is_none() && header.kid.is_some() && self.refresh_for_unknown_kid(ik) {
            keys = ik.current();
            index = find(&keys);
        }
        let key = &keys[index.ok_or_else(|| {
            Refusal::unauthenticated("unknown_key", "token signed by an unknown key")
        })?];
        let mut validation = Validation::new(key.alg);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&ik.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = EXPIRY_LEEWAY_SECONDS;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let (reason, why) = match e.kind() {
                ErrorKind::ExpiredSignature => ("expired", "token expired"),
                ErrorKind::ImmatureSignature => ("not_yet_valid", "token not yet valid"),
                ErrorKind::InvalidSignature => ("signature", "token signature invalid"),
                ErrorKind::InvalidAudience => ("audience", "token audience not accepted"),
                ErrorKind::InvalidIssuer => ("issuer", "token issuer not trusted"),
                _ => ("invalid", "token invalid"),
            };
            Refusal::unauthenticated(reason, why)
        })?;
        let now = chrono::Utc::now().timestamp();
        if data.claims.iat > now.saturating_add(EXPIRY_LEEWAY_SECONDS as i64) {
            return Err(Refusal::unauthenticated(
                "not_yet_valid",
                "token issued in the future",
            ));
        }
        let caller = caller_from_claims(data.claims, ik.roles)?;
        Ok((caller, ik, keys))
    }
}

/// The `iss` of a token's payload, before its signature is checked: it only picks the key set
/// to check the signature with (and is checked again by the verified decode).
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    Some(serde_json::from_slice::<Iss>(&bytes).ok()?.iss)
}

fn parse_jwks(jwks: &str) -> anyhow::Result<KeySet> {
    use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
    let set: JwkSet = serde_json::from_str(jwks)?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        // A key published for encryption (or anything but signatures) never verifies a token.
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        let default_alg = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            AlgorithmParameters::OctetKey(_) => {
                anyhow::bail!("symmetric keys are not accepted in the JWKS")
            }
        };
        // A key's `alg`, when given, is the only algorithm it verifies; one that is not a
        // signature algorithm (RSA-OAEP, …) makes the key unusable.
        let alg = match &jwk.common.key_algorithm {
            None => default_alg,
            Some(ka) => match format!("{ka:?}").parse::<Algorithm>() {
                Ok(alg)
                    if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) =>
                {
                    alg
                }
                _ => continue,
            },
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            key: DecodingKey::from_jwk(jwk)?,
            alg,
        });
    }
    anyhow::ensure!(!keys.is_empty(), "the JWKS holds no signature keys");
    Ok(keys)
}

/// Fetches a JWKS document over HTTP(S) (blocking; call from `spawn_blocking`).
pub fn fetch_jwks(url: &str) -> anyhow::Result<String> {
    fetch_jwks_within(url, std::time::Duration::from_secs(10))
}

/// [`fetch_jwks`] with a time limit; the URL must pass [`check_jwks_url`], and an `https` URL
/// is not followed to plain `http`.
fn fetch_jwks_within(url: &str, limit: std::time::Duration) -> anyhow::Result<String> {
    check_jwks_url(url)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limit))
        .https_only(
            url.get(..6)
                .is_some_and(|s| s.eq_ignore_ascii_case("https:")),
        )
        .build()
        .into();
    let body = agent
        .get(url)
        .call()?
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()?;
    Ok(body)
}

/// Re-fetches the JWKS of every issuer configured with a URL every `every` until `stop` turns
/// true, replacing that issuer's keys (key rotation at the identity provider). Failures keep
/// the old keys and are logged.
pub async fn refresh_jwks(
    auth: Arc<Authenticator>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        for (issuer, url) in auth.jwks_urls() {
            match tokio::task::spawn_blocking(move || fetch_jwks(&url)).await {
                Ok(Ok(doc)) => match auth.replace_jwks(&issuer, &doc) {
                    Ok(n) => tracing::debug!(%issuer, keys = n, "jwks refreshed"),
                    Err(e) => tracing::warn!(
                        %issuer, error = %e,
                        "jwks refresh: unusable document, keeping the old keys"
                    ),
                },
                Ok(Err(e)) => {
                    tracing::warn!(%issuer, error = %e, "jwks refresh failed, keeping the old keys")
                }
                Err(e) => tracing::warn!(error = %e, "jwks refresh task failed"),
            }
        }
    }
}

/// The caller of verified claims, with a role among `allowed` (the roles the token's issuer may
/// grant): a claim that would give another role is ignored, and the ops scope is dropped from
/// the scopes of a token whose issuer does not grant ops.
fn caller_from_claims(c: Claims, allowed: Roles) -> Result<Caller, Refusal> {
    let denied = |reason: &'static str, message: &'static str| Refusal {
        reason,
        status: Status::permission_denied(message),
    };
    let expires_at = c.exp;
    let mut scopes: BTreeSet<String> = c
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !allowed.contains(Role::Ops) {
        scopes.remove(OPS_SCOPE);
    }
    if let Some(pid) = c.pid.filter(|_| allowed.contains(Role::Patient)) {
        if c.acr.as_deref() != Some(REQUIRED_ACR) {
            return Err(Refusal {
                reason: "level",
                status: Status::unauthenticated(format!(
                    "patient login must be at level {REQUIRED_ACR}"
                )),
            });
        }
        let nin = NationalId::parse(&pid).map_err(|_| {
            Refusal::unauthenticated("invalid", "token pid is not a valid identity number")
        })?;
        return Ok(Caller {
            subject: c.sub,
            role: Role::Patient,
            nin: Some(nin),
            hpr_number: None,
            org_number: None,
            scopes,
            expires_at,
        });
    }
    let org = c.org_number.filter(|o| is_org_number(o));
    if let Some(hpr) = c.hpr_number.filter(|_| allowed.contains(Role::Clinician)) {
        let org = org
            .ok_or_else(|| denied("role", "health personnel token without organisation number"))?;
        return Ok(Caller {
            subject: c.sub,
            role: Role::Clinician,
            nin: None,
            hpr_number: Some(hpr),
            org_number: Some(org),
            scopes,
            expires_at,
        });
    }
    if allowed.contains(Role::Ops) && scopes.contains(OPS_SCOPE) {
        return Ok(Caller {
            subject: c.sub,
            role: Role::Ops,
            nin: None,
            hpr_number: None,
            org_number: None,
            scopes,
            expires_at,
        });
    }
    if let Some(org) = org
        && allowed.contains(Role::Ehr)
        && scopes.iter().any(|s| s.starts_with("econsult:"))
    {
        return Ok(Caller {
            subject: c.sub,
            role: Role::Ehr,
            nin: None,
            hpr_number: None,
            org_number: Some(org),
            scopes,
            expires_at,
        });
    }
    Err(denied("role", "token carries no econsult role"))
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

/// Tonic interceptor: validates the `authorization: Bearer …` header, applies the caller's rate
/// limit, and stores the [`Caller`].
#[derive(Clone)]
pub struct AuthInterceptor {
    auth: Arc<Authenticator>,
    limiter: Arc<crate::ratelimit::RateLimiter>,
}

impl AuthInterceptor {
    /// Validates with `auth` and limits with `limits`.
    pub fn new(auth: Arc<Authenticator>, limits: crate::ratelimit::RateLimits) -> Self {
        Self {
            auth,
            limiter: Arc::new(crate::ratelimit::RateLimiter::new(limits)),
        }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| refused("missing", Status::unauthenticated("missing bearer token")))?;
        let value = header.to_str().map_err(|_| {
            refused(
                "malformed",
                Status::unauthenticated("malformed authorization header"),
            )
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                refused(
                    "malformed",
                    Status::unauthenticated("authorization must be a bearer token"),
                )
            })?;
        let caller = self.auth.authenticate(token.trim())?;
        if let Some(kind) = req.extensions().get::<crate::telemetry::CallerKind>() {
            kind.set(caller.role.as_str());
        }
        self.limiter.check(caller.role, &caller.subject)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The local development signing key (Ed25519), kept in the data directory.
pub struct DevKeys {
    encoding: EncodingKey,
    jwks: String,
    kid: String,
}

const DEV_KID: &str = "econsult-dev-1";

impl DevKeys {
    /// Loads the key from `data_dir`, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        use ed25519_dalek::SigningKey;
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("dev-signing-key.b64");
        let seed: [u8; 32] = if path.exists() {
            let text = std::fs::read_to_string(&path)?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim())?;
            bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?
        } else {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let seed = key.to_bytes();
            write_private(
                &path,
                &base64::engine::general_purpose::STANDARD.encode(seed),
            )?;
            seed
        };
        let key = SigningKey::from_bytes(&seed);
        let der = key.to_pkcs8_der()?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
        let jwks = serde_json::json!({
            "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": DEV_KID, "alg": "EdDSA", "use": "sig" }]
        })
        .to_string();
        std::fs::write(data_dir.join("dev-jwks.json"), &jwks)?;
        Ok(Self {
            encoding,
            jwks,
            kid: DEV_KID.to_owned(),
        })
    }

    /// The same key under another `kid` (in its JWKS and in the tokens it signs): for tests of
    /// key rotation at an identity provider.
    pub fn with_kid(mut self, kid: &str) -> anyhow::Result<Self> {
        let mut doc: serde_json::Value = serde_json::from_str(&self.jwks)?;
        doc["keys"][0]["kid"] = kid.into();
        self.jwks = doc.to_string();
        self.kid = kid.to_owned();
        Ok(self)
    }

    /// The public key set (JWKS JSON) that validates dev tokens.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// An authenticator that trusts the dev key.
    pub fn authenticator(&self, audience: &str) -> anyhow::Result<Authenticator> {
        Authenticator::from_jwks(&self.jwks, DEV_ISSUER, audience.to_owned())
    }

    /// Signs `claims` (issuer and audience are taken as given).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// Mints a token for `spec`, valid for `ttl_seconds` from `now`.
    pub fn mint(&self, spec: &TokenSpec, now: i64, ttl_seconds: i64) -> anyhow::Result<String> {
        self.sign(&spec.claims(now, ttl_seconds))
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(contents.as_bytes())
}

/// What a development token should say.
#[derive(Debug, Clone)]
pub enum TokenSpec {
    /// A patient with this identity number and assurance level.
    Patient { nin: String, acr: String },
    /// Health personnel of an organisation.
    Clinician {
        hpr_number: String,
        org_number: String,
        scopes: Vec<String>,
    },
    /// An EHR system of an organisation.
    Ehr {
        client_id: String,
        org_number: String,
        scopes: Vec<String>,
    },
    /// Operations.
    Ops { subject: String },
}

impl TokenSpec {
    /// The claims of a token for this spec, issued by [`DEV_ISSUER`] for [`DEFAULT_AUDIENCE`].
    pub fn claims(&self, now: i64, ttl_seconds: i64) -> Claims {
        let mut c = Claims {
            iss: DEV_ISSUER.to_owned(),
            aud: DEFAULT_AUDIENCE.into(),
            iat: now,
            exp: now + ttl_seconds,
            ..Claims::default()
        };
        match self {
            TokenSpec::Patient { nin, acr } => {
                c.sub = format!(
                    "idporten:{}",
                    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, nin.as_bytes())
                );
                c.pid = Some(nin.clone());
                c.acr = Some(acr.clone());
            }
            TokenSpec::Clinician {
                hpr_number,
                org_number,
                scopes,
            } => {
                c.sub = format!("hpr:{hpr_number}");
                c.hpr_number = Some(hpr_number.clone());
                c.org_number = Some(org_number.clone());
                c.scope = Some(scopes.join(" "));
            }
            TokenSpec::Ehr {
                client_id,
                org_number,
                scopes,
            } => {
                c.sub = client_id.clone();
                c.org_number = Some(org_number.clone());
                c.scope = Some(scopes.join(" "));
            }
            TokenSpec::Ops { subject } => {
                c.sub = subject.clone();
                c.scope = Some(OPS_SCOPE.to_owned());
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, DevKeys) {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = DevKeys::load_or_create(dir.path()).expect("dev keys");
        (dir, keys)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[tokio::test]
    async fn a_stream_ends_with_unauthenticated_at_token_expiry_and_not_before() {
        use futures::StreamExt as _;
        let now = now();
        // Expired 30 s ago: accepted to the end of this second or the next (leeway 30 s).
        let mut fading =
            end_at_token_expiry(futures::stream::pending::<Result<u8, Status>>(), now - 30);
        let started = std::time::Instant::now();
        let status = fading.next().await.expect("an item").expect_err("an error");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(fading.next().await.is_none(), "nothing after the error");

        // A stream that ends before its token does ends cleanly, items passed through.
        let items: Vec<_> = end_at_token_expiry(futures::stream::iter([Ok(1u8), Ok(2)]), now + 600)
            .collect()
            .await;
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.is_ok()));
    }

    #[test]
    fn a_patient_token_at_level_high_gives_a_patient() {
        let (_d, keys) = keys();
        let nin = crate::nin::synthetic(3);
        let spec = TokenSpec::Patient {
            nin: nin.as_str().into(),
            acr: REQUIRED_ACR.into(),
        };
        let token = keys.mint(&spec, now(), 600).expect("mint");
        let caller = keys
            .authenticator(DEFAULT_AUDIENCE)
            .expect("auth")
            .authenticate(&token)
            .expect("valid");
        assert_eq!(caller.role, Role::Patient);
        assert_eq!(caller.nin.as_ref(), Some(&nin));
    }

    #[test]
    fn a_patient_token_at_a_lower_level_is_refused() {
        let (_d, keys) = keys();
        let spec = TokenSpec::Patient {
            nin: crate::nin::synthetic(3).as_str().into(),
            acr: "idporten-loa-substantial".into(),
        };
        let token = keys.mint(&spec, now(), 600).expect("mint");
        let err = keys
            .authenticator(DEFAULT_AUDIENCE)
            .expect("auth")
            .authenticate(&token)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains(REQUIRED_ACR));
    }

    #[test]
    fn expired_wrong_audience_and_foreign_key_tokens_are_refused() {
        let (_d, keys) = keys();
        let (_d2, other) = keys_other();
        let auth = keys.authenticator(DEFAULT_AUDIENCE).expect("auth");
        let spec = TokenSpec::Ops {
            subject: "ops-1".into(),
        };
        let expired = keys.mint(&spec, now() - 7200, 600).expect("mint");
        assert_eq!(
            auth.authenticate(&expired).unwrap_err().message(),
            "token expired"
        );
        let mut claims = spec.claims(now(), 600);
        claims.aud = "someone-else".into();
        let wrong_aud = keys.sign(&claims).expect("sign");
        assert_eq!(
            auth.authenticate(&wrong_aud).unwrap_err().message(),
            "token audience not accepted"
        );
        let forged = other.mint(&spec, now(), 600).expect("mint");
        assert_eq!(
            auth.authenticate(&forged).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.authenticate("not-a-jwt").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    fn keys_other() -> (tempfile::TempDir, DevKeys) {
        keys()
    }

    #[test]
    fn a_validated_token_is_remembered_until_it_expires_or_the_keys_change() {
        let (_d, keys) = keys();
        let (_d2, other) = keys_other();
        let auth = keys.authenticator(DEFAULT_AUDIENCE).expect("auth");
        let spec = TokenSpec::Ehr {
            client_id: "epj-1".into(),
            org_number: "912345678".into(),
            scopes: vec!["econsult:booking.write".into()],
        };
        let now = now();
        let token = keys.mint(&spec, now, 600).expect("mint");
        let first = auth.authenticate_at(&token, now).expect("valid");
        assert_eq!(auth.verified.lock().len(), 1);
        // The second call is answered from memory: what is remembered is what comes back.
        let key = Verified::key(&token);
        auth.verified
            .lock()
            .get_mut(&key)
            .expect("remembered")
            .subject = "marker".into();
        assert_eq!(
            auth.authenticate_at(&token, now)
                .expect("remembered")
                .subject,
            "marker"
        );
        auth.verified
            .lock()
            .get_mut(&key)
            .expect("remembered")
            .subject = first.subject.clone();
        // Expiry follows the full check's rule: exp plus the leeway.
        let exp = first.expires_at;
        let lee = EXPIRY_LEEWAY_SECONDS as i64;
        assert!(auth.authenticate_at(&token, exp + lee).is_ok());
        assert_eq!(
            auth.authenticate_at(&token, exp + lee + 1)
                .unwrap_err()
                .message(),
            "token expired"
        );
        // The same document again (a periodic refresh): nothing is forgotten.
        auth.replace_jwks(DEV_ISSUER, keys.jwks()).expect("refresh");
        assert_eq!(auth.verified.lock().len(), 1);
        // New keys: the remembered token is checked again, and refused.
        auth.replace_jwks(DEV_ISSUER, other.jwks()).expect("rotate");
        assert_eq!(
            auth.authenticate_at(&token, now).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(auth.verified.lock().len(), 0);
        // Validated under keys that were replaced meanwhile: not remembered.
        auth.verified.put(key, &first, now, || false);
        assert_eq!(auth.verified.lock().len(), 0);
        // Refused tokens are not remembered either.
        assert!(auth.authenticate_at("not-a-jwt", now).is_err());
        assert_eq!(auth.verified.lock().len(), 0);
    }

    #[test]
    fn the_remembered_tokens_are_bounded() {
        let (_d, keys) = keys();
        let auth = keys.authenticator(DEFAULT_AUDIENCE).expect("auth");
        let spec = TokenSpec::Ops {
            subject: "ops-1".into(),
        };
        let now = now();
        let caller = auth
            .authenticate_at(&keys.mint(&spec, now, 600).expect("mint"), now)
            .expect("valid");
        let fill = |expires_at: i64| {
            let mut map = auth.verified.lock();
            map.clear();
            for i in 0..VERIFIED_TOKENS_MAX {
                let mut c = caller.clone();
                c.expires_at = expires_at;
                map.insert(Verified::key(&format!("token-{i}")), c);
            }
        };
        // Full of expired entries: they make room.
        fill(now - 3600);
        auth.verified
            .put(Verified::key("new"), &caller, now, || true);
        assert_eq!(auth.verified.lock().len(), 1);
        // Full of live entries: all are dropped (they are checked again on their next use).
        fill(now + 600);
        auth.verified
            .put(Verified::key("new"), &caller, now, || true);
        assert_eq!(auth.verified.lock().len(), 1);
        assert!(auth.verified.get(&Verified::key("new"), now).is_some());
    }

    #[test]
    fn the_key_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DevKeys::load_or_create(dir.path()).expect("create");
        let second = DevKeys::load_or_create(dir.path()).expect("load");
        assert_eq!(first.jwks(), second.jwks());
    }

    #[test]
    fn ehr_clinician_and_ops_roles_come_from_the_claims() {
        let (_d, keys) = keys();
        let auth = keys.authenticator(DEFAULT_AUDIENCE).expect("auth");
        let ehr = TokenSpec::Ehr {
            client_id: "epj-1".into(),
            org_number: "912345678".into(),
            scopes: vec!["econsult:booking.write".into()],
        };
        let c = auth
            .authenticate(&keys.mint(&ehr, now(), 600).expect("mint"))
            .expect("ehr");
        assert_eq!(c.role, Role::Ehr);
        assert_eq!(
            c.org_with_scope("econsult:booking.write").expect("scope"),
            "912345678"
        );
        assert_eq!(
            c.org_with_scope("econsult:booking.read")
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        let clin = TokenSpec::Clinician {
            hpr_number: "1234567".into(),
            org_number: "912345678".into(),
            scopes: vec![],
        };
        let c = auth
            .authenticate(&keys.mint(&clin, now(), 600).expect("mint"))
            .expect("clinician");
        assert_eq!(c.role, Role::Clinician);
        let ops = TokenSpec::Ops {
            subject: "ops".into(),
        };
        let c = auth
            .authenticate(&keys.mint(&ops, now(), 600).expect("mint"))
            .expect("ops");
        assert_eq!(c.role, Role::Ops);
        assert!(c.patient().is_err());
        let nobody = TokenSpec::Ehr {
            client_id: "x".into(),
            org_number: "912345678".into(),
            scopes: vec!["other".into()],
        };
        let err = auth
            .authenticate(&keys.mint(&nobody, now(), 600).expect("mint"))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_jwks_url_must_be_https_except_to_a_loopback_host() {
        for ok in [
            "https://idporten.no/jwks.json",
            "http://127.0.0.1:8080/jwks.json",
            "http://localhost/jwks",
            "http://[::1]:9000/jwks",
        ] {
            assert!(check_jwks_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idporten.no/jwks.json",
            "http://10.0.0.5/jwks",
            "http://127.0.0.1.evil.example/jwks",
            "http://user@evil.example/jwks",
            "ftp://127.0.0.1/jwks",
        ] {
            assert!(check_jwks_url(bad).is_err(), "{bad}");
        }
        // At configuration time, through --issuer.
        let err = "iss=https://helseid-sts.nhn.no,jwks=http://helseid-sts.nhn.no/jwks,roles=ehr"
            .parse::<IssuerConfig>()
            .unwrap_err();
        assert!(err.contains("https"), "{err}");
        let ok: IssuerConfig =
            "iss=https://idporten.no, jwks=/etc/econsult/idporten.json, roles=patient"
                .parse()
                .expect("valid");
        assert_eq!(ok.issuer, "https://idporten.no");
        assert_eq!(
            ok.jwks,
            JwksSource::File("/etc/econsult/idporten.json".into())
        );
        assert_eq!(ok.roles, Roles::NONE.with(Role::Patient));
        let both: IssuerConfig = "iss=h,jwks=https://h/jwks,roles=ehr+clinician"
            .parse()
            .expect("valid");
        assert!(both.roles.contains(Role::Ehr) && both.roles.contains(Role::Clinician));
        assert!(!both.roles.contains(Role::Ops));
        assert!("iss=h,jwks=/j,roles=admin".parse::<IssuerConfig>().is_err());
        assert!("iss=h,roles=ops".parse::<IssuerConfig>().is_err());
    }

    #[test]
    fn a_jwk_for_encryption_or_another_algorithm_verifies_nothing() {
        let (_d, keys) = keys();
        let (_d2, other) = keys_other();
        let spec = TokenSpec::Ops {
            subject: "ops-1".into(),
        };
        let with = |doc: &str, field: &str, value: &str| {
            let mut v: serde_json::Value = serde_json::from_str(doc).expect("json");
            v["keys"][0][field] = value.into();
            v
        };
        // The right key marked `use: enc`, next to an unrelated signing key: not used.
        let enc = with(keys.jwks(), "use", "enc");
        let sig: serde_json::Value = serde_json::from_str(other.jwks()).expect("json");
        let doc = serde_json::json!({ "keys": [enc["keys"][0], sig["keys"][0]] }).to_string();
        let auth =
            Authenticator::from_jwks(&doc, DEV_ISSUER, DEFAULT_AUDIENCE.into()).expect("auth");
        let err = auth
            .authenticate(&keys.mint(&spec, now(), 600).expect("mint"))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(
            auth.authenticate(&other.mint(&spec, now(), 600).expect("mint"))
                .is_ok()
        );
        // A JWKS of encryption keys only is refused outright.
        assert!(
            Authenticator::from_jwks(&enc.to_string(), DEV_ISSUER, DEFAULT_AUDIENCE.into())
                .is_err()
        );
        // `alg` given and not the token's: not used; the token's: used.
        let es = with(keys.jwks(), "alg", "ES256").to_string();
        let doc = serde_json::json!({ "keys": [serde_json::from_str::<serde_json::Value>(&es).expect("json")["keys"][0], sig["keys"][0]] }).to_string();
        let auth =
            Authenticator::from_jwks(&doc, DEV_ISSUER, DEFAULT_AUDIENCE.into()).expect("auth");
        assert!(
            auth.authenticate(&keys.mint(&spec, now(), 600).expect("mint"))
                .is_err()
        );
        let ed = with(keys.jwks(), "alg", "EdDSA").to_string();
        let auth =
            Authenticator::from_jwks(&ed, DEV_ISSUER, DEFAULT_AUDIENCE.into()).expect("auth");
        assert!(
            auth.authenticate(&keys.mint(&spec, now(), 600).expect("mint"))
                .is_ok()
        );
    }

    #[test]
    fn a_role_comes_only_from_an_issuer_configured_for_it() {
        let (_d, helseid) = keys();
        let (_d2, ops_idp) = keys_other();
        let auth = Authenticator::new(
            vec![
                TrustedIssuer {
                    issuer: "https://helseid.test".into(),
                    roles: Roles::NONE.with(Role::Ehr).with(Role::Clinician),
                    jwks_url: None,
                    jwks: helseid.jwks().into(),
                },
                TrustedIssuer {
                    issuer: "https://ops.test".into(),
                    roles: Roles::NONE.with(Role::Ops),
                    jwks_url: None,
                    jwks: ops_idp.jwks().into(),
                },
            ],
            DEFAULT_AUDIENCE.into(),
        )
        .expect("auth");
        let ehr = TokenSpec::Ehr {
            client_id: "epj-1".into(),
            org_number: "912345678".into(),
            scopes: vec!["econsult:booking.write".into(), OPS_SCOPE.into()],
        };
        let mut claims = ehr.claims(now(), 600);
        claims.iss = "https://helseid.test".into();
        let c = auth
            .authenticate(&helseid.sign(&claims).expect("sign"))
            .expect("ehr");
        assert_eq!(c.role, Role::Ehr);
        assert!(!c.scopes.contains(OPS_SCOPE));
        // Only the ops scope: no role at all.
        let mut claims = TokenSpec::Ops {
            subject: "x".into(),
        }
        .claims(now(), 600);
        claims.iss = "https://helseid.test".into();
        claims.org_number = Some("912345678".into());
        let err = auth
            .authenticate(&helseid.sign(&claims).expect("sign"))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        // The ops issuer's key with the HelseID issuer: refused; with its own: ops.
        let err = auth
            .authenticate(&ops_idp.sign(&claims).expect("sign"))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        claims.iss = "https://ops.test".into();
        assert_eq!(
            auth.authenticate(&ops_idp.sign(&claims).expect("sign"))
                .expect("ops")
                .role,
            Role::Ops
        );
    }

    #[test]
    fn scope_may_be_a_string_or_an_array() {
        let (_d, keys) = keys();
        let auth = keys.authenticator(DEFAULT_AUDIENCE).expect("auth");
        let spec = TokenSpec::Ehr {
            client_id: "epj-1".into(),
            org_number: "912345678".into(),
            scopes: vec![],
        };
        let mut claims = serde_json::to_value(spec.claims(now(), 600)).expect("json");
        claims["scope"] = serde_json::json!(["econsult:booking.write", "econsult:booking.read"]);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(DEV_KID.to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &keys.encoding).expect("sign");
        let c = auth.authenticate(&token).expect("array scope");
        assert_eq!(c.role, Role::Ehr);
        assert!(c.scopes.contains("econsult:booking.read"));
        assert!(c.scopes.contains("econsult:booking.write"));
    }
}
