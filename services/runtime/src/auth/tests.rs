use super::dev::*;
use super::issuers::*;
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

/// Replicas started together on one fresh data directory all read the one signing key (none
/// fails on the file another is still writing).
#[test]
fn replicas_starting_together_all_read_the_one_signing_key() {
    crate::private_file::all_starting_together_agree(50, |dir| {
        DevKeys::load_or_create(dir).map(|k| k.jwks().to_owned())
    });
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
    let auth = Authenticator::from_jwks(&doc, DEV_ISSUER, DEFAULT_AUDIENCE.into()).expect("auth");
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
        Authenticator::from_jwks(&enc.to_string(), DEV_ISSUER, DEFAULT_AUDIENCE.into()).is_err()
    );
    // `alg` given and not the token's: not used; the token's: used.
    let es = with(keys.jwks(), "alg", "ES256").to_string();
    let doc = serde_json::json!({ "keys": [serde_json::from_str::<serde_json::Value>(&es).expect("json")["keys"][0], sig["keys"][0]] }).to_string();
    let auth = Authenticator::from_jwks(&doc, DEV_ISSUER, DEFAULT_AUDIENCE.into()).expect("auth");
    assert!(
        auth.authenticate(&keys.mint(&spec, now(), 600).expect("mint"))
            .is_err()
    );
    let ed = with(keys.jwks(), "alg", "EdDSA").to_string();
    let auth = Authenticator::from_jwks(&ed, DEV_ISSUER, DEFAULT_AUDIENCE.into()).expect("auth");
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

#[test]
fn helseid_name_claims_name_the_clinician_and_the_client_name_the_system() {
    let (_d, keys) = keys();
    let auth = keys.authenticator(DEFAULT_AUDIENCE).expect("auth");
    let clin = TokenSpec::Clinician {
        hpr_number: "1234567".into(),
        org_number: "912345678".into(),
        scopes: vec![],
    };
    let mut claims = clin.claims(now(), 600);
    claims.given_name = Some("Kari".into());
    claims.middle_name = Some(" ".into());
    claims.family_name = Some("Nordmann".into());
    let c = auth
        .authenticate(&keys.sign(&claims).expect("sign"))
        .expect("clinician");
    assert_eq!(c.name.as_deref(), Some("Kari Nordmann"));
    claims.name = Some("Kari Ola Nordmann".into());
    let c = auth
        .authenticate(&keys.sign(&claims).expect("sign"))
        .expect("clinician");
    assert_eq!(c.name.as_deref(), Some("Kari Ola Nordmann"));
    assert_eq!(c.practitioner_hpr(), Some("1234567"));

    let ehr = TokenSpec::Ehr {
        client_id: "epj-1".into(),
        org_number: "912345678".into(),
        scopes: vec!["econsult:booking.write".into()],
    };
    let mut claims = ehr.claims(now(), 600);
    claims.client_name = Some("Journal AS".into());
    let json = serde_json::to_value(&claims).expect("json");
    assert_eq!(json[CLIENT_NAME_CLAIM], "Journal AS");
    let c = auth
        .authenticate(&keys.sign(&claims).expect("sign"))
        .expect("ehr");
    assert_eq!(c.client_name.as_deref(), Some("Journal AS"));
    assert_eq!(c.name, None);
    assert_eq!(c.practitioner_hpr(), None, "no acting person named yet");
}

/// A caller of `role` as the interceptor would have it before reading the headers.
fn caller_of(keys: &DevKeys, spec: &TokenSpec) -> Caller {
    keys.authenticator(DEFAULT_AUDIENCE)
        .expect("auth")
        .authenticate(&keys.mint(spec, now(), 600).expect("mint"))
        .expect("valid")
}

#[test]
fn the_purpose_and_the_acting_person_come_from_the_headers_of_whoever_may_send_them() {
    use super::interceptor::accountability;
    use tonic::metadata::{MetadataMap, MetadataValue};
    let (_d, keys) = keys();
    let ehr = TokenSpec::Ehr {
        client_id: "epj-1".into(),
        org_number: "912345678".into(),
        scopes: vec!["econsult:booking.write".into()],
    };
    let patient = TokenSpec::Patient {
        nin: crate::nin::synthetic(3).as_str().into(),
        acr: REQUIRED_ACR.into(),
    };
    let clin = TokenSpec::Clinician {
        hpr_number: "1234567".into(),
        org_number: "912345678".into(),
        scopes: vec![],
    };
    let md = |pairs: &[(&'static str, &str)]| {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().expect("value"));
        }
        m
    };

    let mut c = caller_of(&keys, &ehr);
    accountability(
        &mut c,
        &md(&[
            (PURPOSE_HEADER, "quality-assurance"),
            (ACTING_NAME_HEADER, " Kari Nordmann "),
            (ACTING_HPR_HEADER, "7654321"),
        ]),
    )
    .expect("accepted");
    assert_eq!(c.purpose, Some(Purpose::QualityAssurance));
    assert_eq!(
        c.acting_person,
        Some(ActingPerson {
            name: "Kari Nordmann".into(),
            hpr_number: Some("7654321".into()),
        })
    );
    assert_eq!(c.practitioner_hpr(), Some("7654321"));

    let mut c = caller_of(&keys, &ehr);
    let mut m = MetadataMap::new();
    m.insert_bin(
        ACTING_NAME_BIN_HEADER,
        MetadataValue::from_bytes("Åse Ødegård".as_bytes()),
    );
    accountability(&mut c, &m).expect("accepted");
    assert_eq!(c.acting_person.expect("named").name, "Åse Ødegård");

    for (spec, pairs, names) in [
        (
            &patient,
            vec![(PURPOSE_HEADER, "treatment")],
            PURPOSE_HEADER,
        ),
        (&ehr, vec![(PURPOSE_HEADER, "curiosity")], PURPOSE_HEADER),
        (
            &clin,
            vec![(ACTING_NAME_HEADER, "Kari")],
            ACTING_NAME_HEADER,
        ),
        (
            &ehr,
            vec![(ACTING_NAME_HEADER, "Kari"), (ACTING_HPR_HEADER, "12x")],
            ACTING_HPR_HEADER,
        ),
        (&ehr, vec![(ACTING_NAME_HEADER, "  ")], ACTING_NAME_HEADER),
        (
            &ehr,
            vec![(ACTING_HPR_HEADER, "1234567")],
            ACTING_NAME_HEADER,
        ),
    ] {
        let mut c = caller_of(&keys, spec);
        let err = accountability(&mut c, &md(&pairs)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{pairs:?}");
        assert!(err.message().contains(names), "{pairs:?}: {err:?}");
    }
}
