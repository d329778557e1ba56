//! Tests of the JWT verifier: each algorithm, each refusal, the tenant and scope claims, and the JWKS reload.
//!
//! The RSA and EC keys are the test-only files under `tests/fixtures/jwt/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hub_core::tenancy::{Scope, Scopes};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};

use super::*;

const SECRET: &str = "a shared HS256 test secret, 32+ bytes";
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "central-hub";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn now() -> i64 {
    i64::try_from(get_current_timestamp()).unwrap()
}

/// Claims every test starts from: valid for ten minutes, tenant t1, read and write.
fn claims() -> Value {
    json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 600,
        "tenant_id": "t1",
        "scope": "read write",
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

fn rs256(claims: &Value, pem: &str, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&fixture(pem)).unwrap(),
    )
    .unwrap()
}

fn es256(claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        claims,
        &EncodingKey::from_ec_pem(&fixture("ec1.pem")).unwrap(),
    )
    .unwrap()
}

/// The public JWK of a fixture's private key.
fn jwk(pem: &str, alg: Algorithm, kid: &str) -> Value {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture(pem)).unwrap(),
        _ => EncodingKey::from_ec_pem(&fixture(pem)).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

/// A JWKS file in the temp directory, removed when dropped.
struct JwksPath(PathBuf);

impl JwksPath {
    fn new(keys: &[Value]) -> Self {
        let path = std::env::temp_dir().join(format!("hub-jwks-{}.json", uuid::Uuid::new_v4()));
        let file = Self(path);
        file.write(keys);
        file
    }

    fn write(&self, keys: &[Value]) {
        self.write_raw(&serde_json::to_vec(&json!({ "keys": keys })).unwrap());
    }

    fn write_raw(&self, bytes: &[u8]) {
        // Write then rename, as deployment tools do, so that a reader never
        // sees half a file.
        let partial = self.0.with_extension("partial");
        std::fs::write(&partial, bytes).unwrap();
        std::fs::rename(&partial, &self.0).unwrap();
    }
}

impl Drop for JwksPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config() -> JwtConfig {
    JwtConfig {
        secret: Some(SECRET.into()),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..JwtConfig::default()
    }
}

fn jwks_config(path: &JwksPath) -> JwtConfig {
    JwtConfig {
        secret: None,
        jwks_path: Some(path.0.clone()),
        ..config()
    }
}

fn verifier(config: JwtConfig) -> JwtVerifier {
    JwtVerifier::new(config).unwrap()
}

/// Verifies a token that must be refused; checks that the description
/// quotes no part of the token, and returns the kind.
fn refused(verifier: &JwtVerifier, token: &str) -> JwtErrorKind {
    let error = verifier
        .verify(token)
        .expect_err("the token must be refused");
    let text = error.to_string();
    assert!(!text.is_empty());
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(!text.contains(part), "{text:?} echoes the token");
    }
    assert!(token.is_empty() || !text.contains(token));
    error.kind()
}

#[test]
fn hs256_token_grants_its_tenant_scopes_and_a_fingerprint() {
    let verifier = verifier(config());
    let exp = now() + 600;
    let granted = verifier
        .verify(&hs256(
            &with(claims(), "exp", json!(exp)),
            SECRET.as_bytes(),
        ))
        .unwrap();
    assert_eq!(granted.subject.as_deref(), Some("alice"));
    assert_eq!(granted.tenants, vec![TenantId::parse("t1").unwrap()]);
    assert_eq!(granted.scopes, Scopes::of(&[Scope::Read, Scope::Write]));
    assert_eq!(granted.expires_at.timestamp(), exp);
    assert!(granted.fingerprint.starts_with("jwt:"));
    assert_eq!(granted.fingerprint.len(), 12);
    assert!(
        granted.fingerprint[4..]
            .chars()
            .all(|c| c.is_ascii_hexdigit())
    );

    // The fingerprint follows the holder (iss + sub), not the token.
    let again = verifier
        .verify(&hs256(
            &with(claims(), "exp", json!(exp + 1)),
            SECRET.as_bytes(),
        ))
        .unwrap();
    assert_eq!(again.fingerprint, granted.fingerprint);
    let bob = verifier
        .verify(&hs256(
            &with(claims(), "sub", json!("bob")),
            SECRET.as_bytes(),
        ))
        .unwrap();
    assert_ne!(bob.fingerprint, granted.fingerprint);
}

#[test]
fn rs256_token_is_verified_by_kid_or_by_trying_each_key() {
    let file = JwksPath::new(&[
        jwk("rsa1.pem", Algorithm::RS256, "k1"),
        jwk("rsa2.pem", Algorithm::RS256, "k2"),
    ]);
    let verifier = verifier(jwks_config(&file));
    let granted = verifier
        .verify(&rs256(&claims(), "rsa1.pem", Some("k1")))
        .unwrap();
    assert_eq!(granted.tenants, vec![TenantId::parse("t1").unwrap()]);
    verifier
        .verify(&rs256(&claims(), "rsa2.pem", Some("k2")))
        .unwrap();
    // Without a kid, the second key of the file verifies it.
    verifier
        .verify(&rs256(&claims(), "rsa2.pem", None))
        .unwrap();
}

#[test]
fn es256_token_is_verified() {
    let file = JwksPath::new(&[
        jwk("rsa1.pem", Algorithm::RS256, "k1"),
        jwk("ec1.pem", Algorithm::ES256, "e1"),
    ]);
    let verifier = verifier(jwks_config(&file));
    let granted = verifier.verify(&es256(&claims(), Some("e1"))).unwrap();
    assert_eq!(granted.subject.as_deref(), Some("alice"));
    verifier.verify(&es256(&claims(), None)).unwrap();
    // The EC key's kid with an RS256 token: that key verifies ES256 only.
    assert_eq!(
        refused(&verifier, &rs256(&claims(), "rsa1.pem", Some("e1"))),
        JwtErrorKind::UnknownKey
    );
}

#[test]
fn expiry_and_not_before_are_honoured_with_the_leeway() {
    let verifier = verifier(config());
    let token = |claims: Value| hs256(&claims, SECRET.as_bytes());
    assert_eq!(
        refused(&verifier, &token(with(claims(), "exp", json!(now() - 120)))),
        JwtErrorKind::Expired
    );
    // Within the 30 s leeway.
    verifier
        .verify(&token(with(claims(), "exp", json!(now() - 10))))
        .unwrap();
    assert_eq!(
        refused(&verifier, &token(with(claims(), "nbf", json!(now() + 600)))),
        JwtErrorKind::NotYetValid
    );
    verifier
        .verify(&token(with(claims(), "nbf", json!(now() + 10))))
        .unwrap();
    assert_eq!(
        refused(&verifier, &token(without(claims(), "exp"))),
        JwtErrorKind::InvalidClaim
    );
    let strict = super::JwtVerifier::new(JwtConfig {
        leeway_secs: 0,
        ..config()
    })
    .unwrap();
    assert_eq!(
        refused(&strict, &token(with(claims(), "exp", json!(now() - 10)))),
        JwtErrorKind::Expired
    );
}

#[test]
fn issuer_and_audience_are_required_when_configured() {
    let verifier = verifier(config());
    let token = |claims: Value| hs256(&claims, SECRET.as_bytes());
    assert_eq!(
        refused(
            &verifier,
            &token(with(claims(), "iss", json!("https://other.test")))
        ),
        JwtErrorKind::WrongIssuer
    );
    assert_eq!(
        refused(&verifier, &token(without(claims(), "iss"))),
        JwtErrorKind::InvalidClaim
    );
    assert_eq!(
        refused(
            &verifier,
            &token(with(claims(), "aud", json!("someone-else")))
        ),
        JwtErrorKind::WrongAudience
    );
    assert_eq!(
        refused(&verifier, &token(without(claims(), "aud"))),
        JwtErrorKind::InvalidClaim
    );
    // An audience list that contains ours is accepted.
    verifier
        .verify(&token(with(claims(), "aud", json!(["other", AUDIENCE]))))
        .unwrap();

    // Unconfigured, neither is required nor judged.
    let open = super::JwtVerifier::new(JwtConfig {
        issuer: None,
        audience: None,
        ..config()
    })
    .unwrap();
    open.verify(&token(with(claims(), "aud", json!("anyone"))))
        .unwrap();
    open.verify(&token(without(without(claims(), "aud"), "iss")))
        .unwrap();
}

#[test]
fn a_token_signed_with_another_key_is_refused() {
    let verifier = verifier(config());
    assert_eq!(
        refused(
            &verifier,
            &hs256(&claims(), b"another secret, also 32 bytes long!!")
        ),
        JwtErrorKind::BadSignature
    );

    let file = JwksPath::new(&[jwk("rsa1.pem", Algorithm::RS256, "k1")]);
    let verifier = super::JwtVerifier::new(jwks_config(&file)).unwrap();
    // rsa2 pretending to be k1, then with no kid at all.
    assert_eq!(
        refused(&verifier, &rs256(&claims(), "rsa2.pem", Some("k1"))),
        JwtErrorKind::BadSignature
    );
    assert_eq!(
        refused(&verifier, &rs256(&claims(), "rsa2.pem", None)),
        JwtErrorKind::BadSignature
    );
    assert_eq!(
        refused(&verifier, &rs256(&claims(), "rsa1.pem", Some("k9"))),
        JwtErrorKind::UnknownKey
    );
    // A signature tampered with after signing.
    let token = rs256(&claims(), "rsa1.pem", Some("k1"));
    let (unsigned, _) = token.rsplit_once('.').unwrap();
    let other = rs256(
        &with(claims(), "sub", json!("mallory")),
        "rsa1.pem",
        Some("k1"),
    );
    let (_, signature) = other.rsplit_once('.').unwrap();
    assert_eq!(
        refused(&verifier, &format!("{unsigned}.{signature}")),
        JwtErrorKind::BadSignature
    );
}

#[test]
fn alg_none_and_garbage_are_refused() {
    let verifier = verifier(config());
    let token = hs256(&claims(), SECRET.as_bytes());
    let payload = token.split('.').nth(1).unwrap();
    // {"alg":"none","typ":"JWT"} and {"alg":"None"}, unsigned.
    for header in ["eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", "eyJhbGciOiJOb25lIn0"] {
        assert_eq!(
            refused(&verifier, &format!("{header}.{payload}.")),
            JwtErrorKind::Malformed
        );
        let signature = token.rsplit('.').next().unwrap();
        assert_eq!(
            refused(&verifier, &format!("{header}.{payload}.{signature}")),
            JwtErrorKind::Malformed
        );
    }
    for garbage in ["", "not-a-jwt", "a.b", "a.b.c.d"] {
        assert_eq!(refused(&verifier, garbage), JwtErrorKind::Malformed);
    }
    // A valid header over a garbage payload fails on its signature first.
    assert_eq!(
        refused(&verifier, "eyJhbGciOiJIUzI1NiJ9.!!!.sig"),
        JwtErrorKind::BadSignature
    );
    let huge = format!("{}.{}.x", "e".repeat(10_000), payload);
    assert_eq!(refused(&verifier, &huge), JwtErrorKind::Malformed);
}

#[test]
fn only_the_configured_algorithms_are_accepted() {
    // Secret only: RS256 and ES256 are not enabled, nor HS384.
    let hs_only = verifier(config());
    assert_eq!(
        refused(&hs_only, &rs256(&claims(), "rsa1.pem", None)),
        JwtErrorKind::AlgorithmNotAllowed
    );
    assert_eq!(
        refused(&hs_only, &es256(&claims(), None)),
        JwtErrorKind::AlgorithmNotAllowed
    );
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(refused(&hs_only, &hs384), JwtErrorKind::AlgorithmNotAllowed);

    // JWKS with an RSA key only: ES256 and HS256 are not enabled.
    let file = JwksPath::new(&[jwk("rsa1.pem", Algorithm::RS256, "k1")]);
    let rsa_only = super::JwtVerifier::new(jwks_config(&file)).unwrap();
    assert_eq!(
        refused(&rsa_only, &es256(&claims(), None)),
        JwtErrorKind::AlgorithmNotAllowed
    );
    assert_eq!(
        refused(&rsa_only, &hs256(&claims(), SECRET.as_bytes())),
        JwtErrorKind::AlgorithmNotAllowed
    );
}

#[test]
fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    // The classic algorithm confusion: the attacker knows the public key and
    // signs HS256 with its PEM (or DER-ish) bytes as the HMAC secret.
    let public_pem = fixture("rsa1.pub.pem");
    let file = JwksPath::new(&[jwk("rsa1.pem", Algorithm::RS256, "k1")]);
    for key in [public_pem.clone(), public_pem.trim_ascii_end().to_vec()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let forged = encode(&header, &claims(), &EncodingKey::from_secret(&key).unwrap()).unwrap();

        let jwks_only = super::JwtVerifier::new(jwks_config(&file)).unwrap();
        assert_eq!(
            refused(&jwks_only, &forged),
            JwtErrorKind::AlgorithmNotAllowed
        );

        // With a secret as well, HS256 is checked against the secret only.
        let both = super::JwtVerifier::new(JwtConfig {
            jwks_path: Some(file.0.clone()),
            ..config()
        })
        .unwrap();
        assert_eq!(refused(&both, &forged), JwtErrorKind::BadSignature);
        both.verify(&rs256(&claims(), "rsa1.pem", Some("k1")))
            .unwrap();
        both.verify(&hs256(&claims(), SECRET.as_bytes())).unwrap();
    }

    // A symmetric key in the JWKS file is never used: alone it leaves the
    // file without a usable key.
    let oct = JwksPath::new(&[
        json!({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "h1"}),
    ]);
    let error = super::JwtVerifier::new(jwks_config(&oct)).unwrap_err();
    assert_eq!(error.field(), "HUB_JWT_JWKS_PATH");
}

#[test]
fn the_tenant_claim_is_a_string_or_a_non_empty_list_of_valid_ids() {
    let verifier = verifier(config());
    let token = |value: Option<Value>| {
        let claims = match value {
            Some(value) => with(claims(), "tenant_id", value),
            None => without(claims(), "tenant_id"),
        };
        hs256(&claims, SECRET.as_bytes())
    };
    let t = |id: &str| TenantId::parse(id).unwrap();

    let one = verifier.verify(&token(Some(json!("t2")))).unwrap();
    assert_eq!(one.tenants, vec![t("t2")]);
    let list = verifier
        .verify(&token(Some(json!(["t1", "t2", "t1"]))))
        .unwrap();
    assert_eq!(list.tenants, vec![t("t1"), t("t2")]);

    for bad in [
        None,
        Some(json!([])),
        Some(json!("")),
        Some(json!("not a tenant!")),
        Some(json!(["t1", "bad tenant"])),
        Some(json!(["t1", 7])),
        Some(json!(42)),
        Some(json!({"id": "t1"})),
        Some(Value::Null),
    ] {
        assert_eq!(
            refused(&verifier, &token(bad.clone())),
            JwtErrorKind::InvalidTenant,
            "{bad:?}"
        );
    }

    // The claim's name is configurable.
    let org = super::JwtVerifier::new(JwtConfig {
        tenant_claim: "org".into(),
        ..config()
    })
    .unwrap();
    let granted = org
        .verify(&hs256(
            &with(claims(), "org", json!("acme")),
            SECRET.as_bytes(),
        ))
        .unwrap();
    assert_eq!(granted.tenants, vec![t("acme")]);
    let error = org.verify(&token(Some(json!("t1")))).unwrap_err();
    assert_eq!(error.kind(), JwtErrorKind::InvalidTenant);
    assert!(error.to_string().contains("`org`"));
}

#[test]
fn scopes_come_from_the_scope_claim_and_unknown_ones_are_ignored() {
    let verifier = verifier(config());
    let scopes = |value: Option<Value>| {
        let claims = match value {
            Some(value) => with(claims(), "scope", value),
            None => without(claims(), "scope"),
        };
        verifier
            .verify(&hs256(&claims, SECRET.as_bytes()))
            .map(|c| c.scopes)
    };
    assert_eq!(scopes(None).unwrap(), Scopes::NONE);
    assert_eq!(
        scopes(Some(json!("openid read  admin profile"))).unwrap(),
        Scopes::of(&[Scope::Read, Scope::Admin])
    );
    assert_eq!(
        scopes(Some(json!(["write", "email"]))).unwrap(),
        Scopes::of(&[Scope::Write])
    );
    assert_eq!(scopes(Some(json!("root"))).unwrap(), Scopes::NONE);
    assert_eq!(
        scopes(Some(json!(7))).unwrap_err().kind(),
        JwtErrorKind::InvalidClaim
    );
}

#[test]
fn the_jwks_file_is_reloaded_and_a_broken_one_keeps_the_old_keys() {
    let file = JwksPath::new(&[jwk("rsa1.pem", Algorithm::RS256, "k1")]);
    let verifier = verifier(jwks_config(&file));
    let old = rs256(&claims(), "rsa1.pem", Some("k1"));
    let new = rs256(&claims(), "rsa2.pem", Some("k2"));
    verifier.verify(&old).unwrap();
    // Remembered: the reload below must still take effect on it.
    verifier.verify(&old).unwrap();
    assert_eq!(verifier.inner.verified.len(), 1);
    assert_eq!(refused(&verifier, &new), JwtErrorKind::UnknownKey);

    file.write(&[jwk("rsa2.pem", Algorithm::RS256, "k2")]);
    verifier.inner.jwks.as_ref().unwrap().check_now();
    verifier.verify(&new).unwrap();
    assert_eq!(refused(&verifier, &old), JwtErrorKind::UnknownKey);

    // Broken, empty of usable keys, or gone: the keys loaded before stay.
    for broken in [
        b"{\"keys\": [".as_slice(),
        b"{\"keys\": []}".as_slice(),
        b"{\"keys\": [{\"kty\": \"RSA\", \"n\": \"AQAB\", \"e\": \"AQAB\"}]}".as_slice(),
    ] {
        file.write_raw(broken);
        verifier.inner.jwks.as_ref().unwrap().check_now();
        verifier.verify(&new).unwrap();
    }
    std::fs::remove_file(&file.0).unwrap();
    verifier.inner.jwks.as_ref().unwrap().check_now();
    verifier.verify(&new).unwrap();
}

#[test]
fn the_jwks_file_is_reloaded_on_use_without_being_told() {
    let file = JwksPath::new(&[jwk("rsa1.pem", Algorithm::RS256, "k1")]);
    let verifier = verifier(jwks_config(&file));
    let new = es256(&claims(), Some("e1"));
    file.write(&[jwk("ec1.pem", Algorithm::ES256, "e1")]);
    // The file is looked at about once a second, on use.
    let deadline = Instant::now() + Duration::from_secs(10);
    while verifier.verify(&new).is_err() {
        assert!(Instant::now() < deadline, "the new JWKS was never loaded");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_configuration_names_the_setting() {
    let field = |config: JwtConfig| JwtVerifier::new(config).unwrap_err().field().to_owned();
    assert_eq!(
        field(JwtConfig {
            secret: Some("short".into()),
            ..config()
        }),
        "HUB_JWT_SECRET"
    );
    assert_eq!(field(JwtConfig::default()), "HUB_JWT_SECRET");
    assert_eq!(
        field(JwtConfig {
            jwks_path: Some("/nonexistent/hub-jwks.json".into()),
            ..config()
        }),
        "HUB_JWT_JWKS_PATH"
    );
    let broken = JwksPath::new(&[]);
    broken.write_raw(b"not json");
    assert_eq!(field(jwks_config(&broken)), "HUB_JWT_JWKS_PATH");
    assert_eq!(
        field(JwtConfig {
            tenant_claim: " ".into(),
            ..config()
        }),
        "HUB_JWT_TENANT_CLAIM"
    );
    assert_eq!(
        field(JwtConfig {
            issuer: Some(String::new()),
            ..config()
        }),
        "HUB_JWT_ISSUER"
    );
    assert_eq!(
        field(JwtConfig {
            audience: Some(" ".into()),
            ..config()
        }),
        "HUB_JWT_AUDIENCE"
    );

    // Neither the verifier's nor the configuration's Debug shows the secret.
    let verifier = verifier(config());
    assert!(!format!("{verifier:?}").contains(SECRET));
    assert!(!format!("{:?}", config()).contains(SECRET));
}

#[test]
fn a_verified_token_is_remembered_until_it_expires() {
    let verifier = verifier(JwtConfig {
        leeway_secs: 0,
        ..config()
    });
    let token = hs256(&with(claims(), "exp", json!(now() + 2)), SECRET.as_bytes());
    let first = verifier.verify(&token).unwrap();
    assert_eq!(verifier.verify(&token).unwrap(), first);
    assert_eq!(verifier.inner.verified.len(), 1);

    // Refusals are not remembered.
    let forged = hs256(&claims(), b"another secret, also 32 bytes long!!");
    assert_eq!(refused(&verifier, &forged), JwtErrorKind::BadSignature);
    assert_eq!(verifier.inner.verified.len(), 1);

    // Once `exp` passes, the remembered verification no longer counts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        match verifier.verify(&token) {
            Ok(_) => {
                assert!(Instant::now() < deadline, "the token never expired");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => break error,
        }
    };
    assert_eq!(error.kind(), JwtErrorKind::Expired);
    assert_eq!(verifier.inner.verified.len(), 0);
}

#[test]
fn the_remembered_tokens_are_bounded() {
    let tokens = super::cache::VerifiedTokens::new(3);
    let claims = TokenClaims {
        subject: None,
        tenants: vec![TenantId::parse("t1").unwrap()],
        scopes: Scopes::NONE,
        fingerprint: "jwt:00000000".into(),
        expires_at: chrono::Utc::now(),
    };
    let verified = Verified {
        claims,
        generation: None,
    };
    for i in 0..3_u8 {
        tokens.insert([i; 32], verified.clone());
    }
    assert_eq!(tokens.len(), 3);
    // Replacing an entry keeps the others.
    tokens.insert([1; 32], verified.clone());
    assert_eq!(tokens.len(), 3);
    // A new token past the capacity starts over.
    tokens.insert([9; 32], verified);
    assert_eq!(tokens.len(), 1);
    assert!(tokens.get(&[9; 32]).is_some());
    assert!(tokens.get(&[0; 32]).is_none());
}
