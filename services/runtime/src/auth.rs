//! Bearer-token authentication and the caller's role.
//!
//! Tokens are JWTs validated against a JWKS (issuer, audience, expiry, signature). The role is
//! read from the claims:
//! - **patient**: an ID-porten token with `pid` (national identity number) and
//!   `acr = idporten-loa-high`; a lower level is refused (the app must log in again, stronger);
//! - **clinician**: a HelseID token with the HPR number claim and an organisation number;
//! - **ehr**: a HelseID client-credentials token with scopes (`econsult:booking.write`, …) and
//!   an organisation number;
//! - **ops**: a token with the scope `econsult:ops`.
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
    /// Audience.
    pub aud: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// ID-porten: national identity number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// ID-porten: assurance level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

type KeySet = Vec<(Option<String>, DecodingKey, Algorithm)>;

/// Validates bearer tokens against a key set (replaceable at run time, for key rotation).
pub struct Authenticator {
    /// The key set and the SHA-256 of the JWKS document it came from.
    keys: std::sync::RwLock<(Arc<KeySet>, [u8; 32])>,
    issuers: Vec<String>,
    audience: String,
    verified: Verified,
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
            .field("keys", &self.current_keys().len())
            .field("issuers", &self.issuers)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    /// Builds an authenticator from a JWKS document, the trusted issuers and the audience.
    pub fn from_jwks(jwks: &str, issuers: Vec<String>, audience: String) -> anyhow::Result<Self> {
        anyhow::ensure!(!issuers.is_empty(), "no trusted issuer configured");
        Ok(Self {
            keys: std::sync::RwLock::new((Arc::new(parse_jwks(jwks)?), sha256(jwks))),
            issuers,
            audience,
            verified: Verified::default(),
        })
    }

    /// Replaces the key set (e.g. after fetching a rotated JWKS) and forgets the remembered
    /// tokens; the same document as the current one changes nothing. A document without usable
    /// keys is refused and the old keys stay. Returns the number of keys.
    pub fn replace_jwks(&self, jwks: &str) -> anyhow::Result<usize> {
        let keys = parse_jwks(jwks)?;
        let n = keys.len();
        let digest = sha256(jwks);
        {
            let mut current = self.keys.write().unwrap_or_else(|e| e.into_inner());
            if current.1 == digest {
                return Ok(n);
            }
            *current = (Arc::new(keys), digest);
        }
        self.verified.clear();
        Ok(n)
    }

    fn current_keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
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
            return known;
        }
        let keys = self.current_keys();
        let caller = self.validate(token, &keys)?;
        // A replace_jwks between the check and here clears the cache before or after this put:
        // after, it removes the entry; before, the keys are no longer these and nothing is put.
        self.verified.put(key, &caller, now, || {
            Arc::ptr_eq(&keys, &self.current_keys())
        });
        Ok(caller)
    }

    /// The full check against `keys`: signature, issuer, audience, expiry, claims.
    fn validate(&self, token: &str, keys: &KeySet) -> Result<Caller, Status> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Status::unauthenticated("malformed bearer token"))?;
        let key = keys
            .iter()
            .find(|(kid, _, alg)| {
                *alg == header.alg && (header.kid.is_none() || header.kid == *kid)
            })
            .ok_or_else(|| Status::unauthenticated("token signed by an unknown key"))?;
        let mut validation = Validation::new(key.2);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&self.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = EXPIRY_LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<Claims>(token, &key.1, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidSignature => "token signature invalid",
                ErrorKind::InvalidAudience => "token audience not accepted",
                ErrorKind::InvalidIssuer => "token issuer not trusted",
                _ => "token invalid",
            };
            Status::unauthenticated(why)
        })?;
        caller_from_claims(data.claims)
    }
}

fn parse_jwks(jwks: &str) -> anyhow::Result<KeySet> {
    let set: JwkSet = serde_json::from_str(jwks)?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => {
                anyhow::bail!("symmetric keys are not accepted in the JWKS")
            }
        };
        keys.push((jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)?, alg));
    }
    anyhow::ensure!(!keys.is_empty(), "the JWKS holds no keys");
    Ok(keys)
}

/// Fetches a JWKS document over HTTP(S) (blocking; call from `spawn_blocking`).
pub fn fetch_jwks(url: &str) -> anyhow::Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
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

/// Re-fetches the JWKS at `url` every `every` until `stop` turns true, replacing the keys of
/// `auth` (key rotation at the identity provider). Failures keep the old keys and are logged.
pub async fn refresh_jwks(
    auth: Arc<Authenticator>,
    url: String,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let u = url.clone();
        match tokio::task::spawn_blocking(move || fetch_jwks(&u)).await {
            Ok(Ok(doc)) => match auth.replace_jwks(&doc) {
                Ok(n) => tracing::debug!(keys = n, "jwks refreshed"),
                Err(e) => {
                    tracing::warn!(error = %e, "jwks refresh: unusable document, keeping the old keys")
                }
            },
            Ok(Err(e)) => tracing::warn!(error = %e, "jwks refresh failed, keeping the old keys"),
            Err(e) => tracing::warn!(error = %e, "jwks refresh task failed"),
        }
    }
}

fn caller_from_claims(c: Claims) -> Result<Caller, Status> {
    let expires_at = c.exp;
    let scopes: BTreeSet<String> = c
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if let Some(pid) = c.pid {
        if c.acr.as_deref() != Some(REQUIRED_ACR) {
            return Err(Status::unauthenticated(format!(
                "patient login must be at level {REQUIRED_ACR}"
            )));
        }
        let nin = NationalId::parse(&pid)
            .map_err(|_| Status::unauthenticated("token pid is not a valid identity number"))?;
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
    if let Some(hpr) = c.hpr_number {
        let org = org.ok_or_else(|| {
            Status::permission_denied("health personnel token without organisation number")
        })?;
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
    if scopes.contains(OPS_SCOPE) {
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
    Err(Status::permission_denied("token carries no econsult role"))
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
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be a bearer token"))?;
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
        Ok(Self { encoding, jwks })
    }

    /// The public key set (JWKS JSON) that validates dev tokens.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// An authenticator that trusts the dev key.
    pub fn authenticator(&self, audience: &str) -> anyhow::Result<Authenticator> {
        Authenticator::from_jwks(&self.jwks, vec![DEV_ISSUER.to_owned()], audience.to_owned())
    }

    /// Signs `claims` (issuer and audience are taken as given).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(DEV_KID.to_owned());
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
            aud: DEFAULT_AUDIENCE.to_owned(),
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
        auth.replace_jwks(keys.jwks()).expect("refresh");
        assert_eq!(auth.verified.lock().len(), 1);
        // New keys: the remembered token is checked again, and refused.
        auth.replace_jwks(other.jwks()).expect("rotate");
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
}
