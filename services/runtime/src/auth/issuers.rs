//! Trusted issuers, their key sets and the validation of a token.

use super::*;

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

pub(super) struct Key {
    kid: Option<String>,
    key: DecodingKey,
    alg: Algorithm,
}

pub(super) type KeySet = Vec<Key>;

/// One issuer's key set (replaceable at run time, for key rotation).
pub(super) struct IssuerKeys {
    issuer: String,
    roles: Roles,
    url: Option<String>,
    /// The key set and the SHA-256 of the JWKS document it came from.
    keys: std::sync::RwLock<(Arc<KeySet>, [u8; 32])>,
    /// When a token with an unknown `kid` last made us fetch the JWKS.
    last_unknown_kid_fetch: std::sync::Mutex<Option<std::time::Instant>>,
}

impl IssuerKeys {
    pub(super) fn current(&self) -> Arc<KeySet> {
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
    /// Whether synthetic identity numbers are accepted ([`Authenticator::accept_synthetic`]).
    synthetic: bool,
    pub(super) verified: Verified,
}

/// Why a token was refused: the `reason` label of `econsult_auth_failures_total` (a fixed set).
pub(super) struct Refusal {
    reason: &'static str,
    status: Status,
}

impl Refusal {
    pub(super) fn unauthenticated(reason: &'static str, message: &'static str) -> Self {
        Refusal {
            reason,
            status: Status::unauthenticated(message),
        }
    }
}

/// Counts a refused token in `econsult_auth_failures_total{reason}` and logs it (the reason
/// and message, never the token).
pub(super) fn refused(reason: &'static str, status: Status) -> Status {
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
pub(super) struct Verified(std::sync::Mutex<std::collections::HashMap<[u8; 32], Caller>>);

impl Verified {
    pub(super) fn key(token: &str) -> [u8; 32] {
        sha256(token)
    }

    pub(super) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], Caller>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caller of a remembered token, if it is still unexpired at `now` (Unix seconds).
    pub(super) fn get(&self, key: &[u8; 32], now: i64) -> Option<Result<Caller, Status>> {
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
    pub(super) fn put(
        &self,
        key: [u8; 32],
        caller: &Caller,
        now: i64,
        still_current: impl FnOnce() -> bool,
    ) {
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

    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

pub(super) fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Whether a token with `exp` is still accepted at `now` (both Unix seconds): the rule of the
/// full check, `exp` plus [`EXPIRY_LEEWAY_SECONDS`] not before `now`.
pub(super) fn unexpired(exp: i64, now: i64) -> bool {
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
            synthetic: false,
            verified: Verified::default(),
        })
    }

    /// Accepts synthetic identity numbers (both conventions, see `crate::nin`) in tokens, the
    /// `x-on-behalf-of` header and request fields: for development and test environments. A
    /// production server refuses them (the default).
    pub fn accept_synthetic(mut self, yes: bool) -> Self {
        self.synthetic = yes;
        self
    }

    /// Whether synthetic identity numbers are accepted.
    pub fn accepts_synthetic(&self) -> bool {
        self.synthetic
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

    pub(super) fn replace_keys(&self, ik: &IssuerKeys, jwks: &str) -> anyhow::Result<usize> {
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
    pub(super) fn refresh_for_unknown_kid(&self, ik: &IssuerKeys) -> bool {
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
    pub(super) fn authenticate_at(&self, token: &str, now: i64) -> Result<Caller, Status> {
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
    pub(super) fn validate(
        &self,
        token: &str,
    ) -> Result<(Caller, &IssuerKeys, Arc<KeySet>), Refusal> {
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
pub(super) fn unverified_issuer(token: &str) -> Option<String> {
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

pub(super) fn parse_jwks(jwks: &str) -> anyhow::Result<KeySet> {
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
pub(super) fn fetch_jwks_within(url: &str, limit: std::time::Duration) -> anyhow::Result<String> {
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
pub(super) fn caller_from_claims(c: Claims, allowed: Roles) -> Result<Caller, Refusal> {
    let denied = |reason: &'static str, message: &'static str| Refusal {
        reason,
        status: Status::permission_denied(message),
    };
    let expires_at = c.exp;
    let person_name = person_name(&c);
    let client_name = c.client_name.clone().filter(|n| !n.trim().is_empty());
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
        let mut represents = Vec::with_capacity(c.represents.len());
        for r in &c.represents {
            if r.relation != "parent" {
                continue;
            }
            let nin = NationalId::parse(&r.pid).map_err(|_| {
                Refusal::unauthenticated(
                    "invalid",
                    "token represents claim holds an invalid identity number",
                )
            })?;
            represents.push(Represented {
                nin,
                relation: Relation::Parent,
                protected_address: r.protected_address,
                name: r
                    .name
                    .as_deref()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
            });
        }
        return Ok(Caller {
            subject: c.sub,
            role: Role::Patient,
            nin: Some(nin),
            hpr_number: None,
            org_number: None,
            scopes,
            expires_at,
            request_id: String::new(),
            synthetic_numbers: false,
            proxy: Proxy {
                represents,
                protected_address: c.protected_address,
                ..Proxy::default()
            },
            name: person_name,
            client_name: None,
            acting_person: None,
            purpose: None,
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
            request_id: String::new(),
            synthetic_numbers: false,
            proxy: Proxy::default(),
            name: person_name,
            client_name: None,
            acting_person: None,
            purpose: None,
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
            request_id: String::new(),
            synthetic_numbers: false,
            proxy: Proxy::default(),
            name: None,
            client_name: None,
            acting_person: None,
            purpose: None,
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
            request_id: String::new(),
            synthetic_numbers: false,
            proxy: Proxy::default(),
            name: None,
            client_name,
            acting_person: None,
            purpose: None,
        });
    }
    Err(denied("role", "token carries no econsult role"))
}

/// The person's name from HelseID's `profile` claims: `name`, or the parts joined.
fn person_name(c: &Claims) -> Option<String> {
    if let Some(n) = c.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        return Some(n.to_owned());
    }
    let parts: Vec<&str> = [&c.given_name, &c.middle_name, &c.family_name]
        .into_iter()
        .filter_map(|p| p.as_deref().map(str::trim).filter(|p| !p.is_empty()))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}
