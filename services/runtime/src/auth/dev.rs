//! Local development keys and tokens (`econsult dev-token`).

use super::*;

/// The local development signing key (Ed25519), kept in the data directory.
pub struct DevKeys {
    pub(super) encoding: EncodingKey,
    jwks: String,
    kid: String,
}

pub(super) const DEV_KID: &str = "econsult-dev-1";

impl DevKeys {
    /// Loads the key from `data_dir`, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        use ed25519_dalek::SigningKey;
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("dev-signing-key.b64");
        // Made once: replicas started together on one directory all read the one key.
        let text = crate::private_file::made_once(&path, || {
            let seed = SigningKey::generate(&mut rand::rngs::OsRng).to_bytes();
            base64::engine::general_purpose::STANDARD.encode(seed)
        })?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim())?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
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
        Ok(
            Authenticator::from_jwks(&self.jwks, DEV_ISSUER, audience.to_owned())?
                .accept_synthetic(true),
        )
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

/// The person development clients name on their EHR system calls ([`dev_call_headers`]).
pub const DEV_ACTING_NAME: &str = "Kari Dev-Sekretaer";
/// Their HPR number.
pub const DEV_ACTING_HPR: &str = "9900001";

/// The metadata a development client (tests, the load generator, the walkthrough) sends with
/// `token` so that its accesses to patient data are accounted for in the access log: for a
/// clinician or an EHR system the purpose `treatment`, for an EHR system also the person it
/// acts for ([`DEV_ACTING_NAME`], [`DEV_ACTING_HPR`]); nothing for patients and operations.
/// Reads the token's claims without verifying them.
pub fn dev_call_headers(token: &str) -> Vec<(&'static str, String)> {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Claims>(&b).ok());
    let Some(c) = claims else {
        return Vec::new();
    };
    let purpose = (PURPOSE_HEADER, "treatment".to_owned());
    match (&c.pid, &c.hpr_number, &c.org_number) {
        (None, Some(_), _) => vec![purpose],
        (None, None, Some(_)) => vec![
            purpose,
            (ACTING_NAME_HEADER, DEV_ACTING_NAME.to_owned()),
            (ACTING_HPR_HEADER, DEV_ACTING_HPR.to_owned()),
        ],
        _ => Vec::new(),
    }
}

/// What a development token should say.
#[derive(Debug, Clone)]
pub enum TokenSpec {
    /// A patient with this identity number and assurance level.
    Patient { nin: String, acr: String },
    /// A patient whose token also carries the `represents` claim (the people the population
    /// register says they are parent of) and, for themselves, `protected_address` and
    /// optionally their display name (`name`).
    PatientWithRelations {
        nin: String,
        acr: String,
        represents: Vec<RepresentsClaim>,
        protected_address: bool,
        name: Option<String>,
    },
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
            TokenSpec::PatientWithRelations {
                nin,
                acr,
                represents,
                protected_address,
                name,
            } => {
                c = TokenSpec::Patient {
                    nin: nin.clone(),
                    acr: acr.clone(),
                }
                .claims(now, ttl_seconds);
                c.represents = represents.clone();
                c.protected_address = *protected_address;
                c.name = name.clone();
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
