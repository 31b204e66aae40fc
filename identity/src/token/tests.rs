//! JWKS verification (each refusal), RS256, reload, the local issuer.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::*;
use crate::clock::unix_secs;
use crate::testutil::{openssl, TempDir};

const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const AUD: &str = DEFAULT_AUDIENCE;
const HOUR: Duration = Duration::from_secs(3600);

fn now() -> i64 {
    unix_secs(SystemTime::now())
}

fn setup() -> (LocalIssuer, JwksVerifier) {
    let li = LocalIssuer::generate(ISS).unwrap();
    let v = JwksVerifier::from_jwks(&li.jwks(), ISS, AUD).unwrap();
    (li, v)
}

fn web() -> ServiceAccount {
    ServiceAccount {
        namespace: "demo".into(),
        name: "web".into(),
    }
}

#[test]
fn valid_token_is_accepted_and_cached() {
    let (li, v) = setup();
    let token = li.sign("demo", "web", "web-0", AUD, HOUR).unwrap();
    assert_eq!(v.verify_at(&token, now()), Ok(web()));
    assert_eq!(v.cached(), 1);
    assert_eq!(v.verify_at(&token, now()), Ok(web()));
    // Past its exp the cached entry no longer counts.
    let later = now() + 2 * 3600;
    assert_eq!(
        v.verify_at(&token, later).unwrap_err().reason(),
        "expired_token"
    );
}

#[test]
fn refusals_by_claim() {
    let (li, v) = setup();
    let base = li.claims("demo", "web", "web-0", AUD, HOUR);
    let t = now();
    let with = |change: &dyn Fn(&mut ProjectedClaims)| {
        let mut c = base.clone();
        change(&mut c);
        c
    };
    let cases: Vec<(ProjectedClaims, &str)> = vec![
        (with(&|c| c.exp = Some(t - 3600)), "expired_token"),
        (with(&|c| c.nbf = Some(t + 3600)), "token_not_yet_valid"),
        (
            with(&|c| c.aud = Some(Audiences::One("api".into()))),
            "wrong_audience",
        ),
        (with(&|c| c.aud = None), "wrong_audience"),
        (
            with(&|c| c.iss = Some("https://evil.example".into())),
            "wrong_issuer",
        ),
        (
            with(&|c| c.sub = Some("system:serviceaccount:demo:admin".into())),
            "claims_mismatch",
        ),
        (with(&|c| c.sub = Some("admin".into())), "claims_mismatch"),
        (
            with(&|c| {
                if let Some(k) = c.kubernetes.as_mut() {
                    k.namespace = Some("kube-system".into());
                }
            }),
            "claims_mismatch",
        ),
        (with(&|c| c.kubernetes = None), "claims_mismatch"),
        (with(&|c| c.exp = None), "bad_token"),
    ];
    for (claims, want) in cases {
        let token = li.sign_claims(&claims).unwrap();
        let e = v.verify_at(&token, t).unwrap_err();
        assert_eq!(e.reason(), want, "{claims:?}: {e}");
    }
    // Inside the leeway both ways: accepted.
    let edge = ProjectedClaims {
        exp: Some(t - LEEWAY_SECS + 1),
        nbf: Some(t + LEEWAY_SECS - 1),
        ..base
    };
    assert_eq!(v.verify_at(&li.sign_claims(&edge).unwrap(), t), Ok(web()));
}

#[test]
fn wrong_signatures_are_refused() {
    let (li, v) = setup();
    // Another key, another kid: the key is unknown.
    let other = LocalIssuer::generate(ISS).unwrap();
    let foreign = other.sign("demo", "web", "web-0", AUD, HOUR).unwrap();
    assert_eq!(
        v.verify_at(&foreign, now()).unwrap_err().reason(),
        "bad_signature"
    );
    // Another key under our kid: the signature fails.
    let good = li.sign("demo", "web", "web-0", AUD, HOUR).unwrap();
    let our_header = good.split('.').next().unwrap();
    let mut parts = foreign.split('.');
    let (_, payload, sig) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    let forged = format!("{our_header}.{payload}.{sig}");
    assert_eq!(v.verify_at(&forged, now()), Err(TokenError::BadSignature));
    // Our signature over another payload.
    let mut parts = good.split('.');
    let (h, _, s) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
    let admin = li.sign("kube-system", "admin", "x", AUD, HOUR).unwrap();
    let admin_payload = admin.split('.').nth(1).unwrap();
    assert_eq!(
        v.verify_at(&format!("{h}.{admin_payload}.{s}"), now()),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn other_algorithms_and_garbage_are_refused() {
    let (li, v) = setup();
    // HS256 keyed with the public JWKS text: the classic confusion attack.
    let claims = li.claims("demo", "web", "web-0", AUD, HOUR);
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(li.jwks().as_bytes()),
    )
    .unwrap();
    assert_eq!(v.verify_at(&hs, now()).unwrap_err().reason(), "bad_token");
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    assert_eq!(
        v.verify_at(&format!("{none_header}.{payload}."), now())
            .unwrap_err()
            .reason(),
        "bad_token"
    );
    for garbage in ["", "a.b.c", "....", "x", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
        assert_eq!(
            v.verify_at(garbage, now()).unwrap_err().reason(),
            "bad_token",
            "{garbage:.20}"
        );
    }
}

#[test]
fn rs256_tokens_verify_against_an_rsa_jwk() {
    let dir = TempDir::new("identity-rsa");
    let key = dir.path().join("rsa.pem");
    let o = openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = openssl(&["rsa", "-in", key.to_str().unwrap(), "-noout", "-modulus"]);
    let modulus = String::from_utf8(o.stdout).unwrap();
    let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
    let n: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let jwks = serde_json::json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "rsa1", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"}
    ]});
    let v = JwksVerifier::from_jwks(&jwks.to_string(), ISS, AUD).unwrap();
    let li = LocalIssuer::generate(ISS).unwrap();
    let claims = li.claims("demo", "web", "web-0", AUD, HOUR);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa1".into());
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &enc).unwrap();
    assert_eq!(v.verify_at(&token, now()), Ok(web()));
    // An ES256 token: this JWKS holds no EC key.
    assert_eq!(
        v.verify_at(&li.sign_claims(&claims).unwrap(), now())
            .unwrap_err()
            .reason(),
        "bad_signature"
    );
}

#[test]
fn jwks_file_reloads_and_bad_files_keep_the_old_keys() {
    let dir = TempDir::new("identity-jwks");
    let (first, _) = setup();
    let path = dir.write("jwks.json", &first.jwks());
    let v = JwksVerifier::from_file(&path, ISS, AUD).unwrap();
    let old_token = first.sign("demo", "web", "web-0", AUD, HOUR).unwrap();
    assert_eq!(v.verify_at(&old_token, now()), Ok(web()));
    assert!(!v.reload().unwrap());

    let second = LocalIssuer::generate(ISS).unwrap();
    dir.write("jwks.json", &second.jwks());
    assert!(v.reload().unwrap());
    let new_token = second.sign("demo", "web", "web-0", AUD, HOUR).unwrap();
    assert_eq!(v.verify_at(&new_token, now()), Ok(web()));
    // The removed key stops working at once, cached or not.
    assert_eq!(
        v.verify_at(&old_token, now()).unwrap_err().reason(),
        "bad_signature"
    );

    for bad in [
        "{",
        r#"{"keys": []}"#,
        r#"{"keys": [{"kty": "oct", "k": "eA"}]}"#,
    ] {
        dir.write("jwks.json", bad);
        assert!(v.reload().is_err(), "{bad}");
        assert_eq!(
            v.verify_at(&new_token, now()),
            Ok(web()),
            "old keys kept after {bad}"
        );
    }
    assert!(JwksVerifier::from_file(dir.path().join("missing.json"), ISS, AUD).is_err());
}

#[test]
fn local_issuer_round_trips_through_its_pem() {
    let li = LocalIssuer::generate(ISS).unwrap();
    let again = LocalIssuer::from_pem(ISS, li.key_pem()).unwrap();
    assert_eq!(li.jwks(), again.jwks());
    assert!(!format!("{li:?}").contains("PRIVATE"));
    let v = JwksVerifier::from_jwks(&li.jwks(), ISS, AUD).unwrap();
    let t = again.sign("demo", "web", "web-0", AUD, HOUR).unwrap();
    assert_eq!(v.verify_at(&t, now()), Ok(web()));
    let dir = TempDir::new("identity-token-key");
    write_token_key(dir.path(), ISS, false).unwrap();
    assert!(
        write_token_key(dir.path(), ISS, false).is_err(),
        "no silent overwrite"
    );
    let pem = std::fs::read_to_string(dir.path().join("token.key")).unwrap();
    let jwks = std::fs::read_to_string(dir.path().join("jwks.json")).unwrap();
    assert_eq!(LocalIssuer::from_pem(ISS, &pem).unwrap().jwks(), jwks);
}

#[test]
fn check_claims_is_pure_and_ordered() {
    let expect = Expectations {
        issuer: ISS.into(),
        audience: AUD.into(),
    };
    let li = LocalIssuer::generate(ISS).unwrap();
    let mut c = li.claims("demo", "web", "p", AUD, HOUR);
    c.exp = Some(1_000);
    c.nbf = Some(0);
    assert_eq!(check_claims(&c, &expect, 900), Ok(web()));
    assert!(matches!(
        check_claims(&c, &expect, 1_000 + LEEWAY_SECS + 1),
        Err(TokenError::Expired { exp: 1_000, .. })
    ));
    // Issuer is checked before time.
    c.iss = None;
    assert_eq!(
        check_claims(&c, &expect, 5_000).unwrap_err().reason(),
        "wrong_issuer"
    );
}

#[test]
fn usernames() {
    assert_eq!(
        ServiceAccount::from_username("system:serviceaccount:demo:web"),
        Some(web())
    );
    assert_eq!(web().username(), "system:serviceaccount:demo:web");
    for bad in [
        "",
        "system:serviceaccount:",
        "system:serviceaccount:demo",
        "system:serviceaccount::web",
        "system:serviceaccount:a:b:c",
        "user:demo:web",
    ] {
        assert_eq!(ServiceAccount::from_username(bad), None, "{bad}");
    }
}

#[test]
fn unverified_claims_read_only_well_formed_payloads() {
    let enc = |json: &str| format!("h.{}.s", URL_SAFE_NO_PAD.encode(json));
    let long_sub = format!(r#"{{"sub":"{}"}}"#, "x".repeat(700));
    let cases: &[(String, Option<&str>, Option<i64>)] = &[
        (
            enc(r#"{"exp":1234,"sub":"system:serviceaccount:demo:web"}"#),
            Some("system:serviceaccount:demo:web"),
            Some(1234),
        ),
        (enc(r#"{"exp":1234}"#), None, Some(1234)),
        (enc(r#"{"exp":"1234","sub":7}"#), None, None),
        (enc(r#"{"sub":""}"#), None, None),
        (enc(&long_sub), None, None),
        (enc("[1,2]"), None, None),
        ("h.!!.s".into(), None, None),
        ("nodots".into(), None, None),
        (String::new(), None, None),
    ];
    for (token, sub, exp) in cases {
        let got = UnverifiedClaims::peek(token);
        assert_eq!(got.sub.as_deref(), *sub, "{token}");
        assert_eq!(got.exp, *exp, "{token}");
    }
    // A real token reads as what it says.
    let (li, _) = setup();
    let token = li.sign("demo", "web", "web-0", AUD, HOUR).unwrap();
    let got = UnverifiedClaims::peek(&token);
    assert_eq!(got.sub.as_deref(), Some("system:serviceaccount:demo:web"));
    assert!(got.exp.is_some_and(|e| (e - now() - 3600).abs() <= 5));
    assert_eq!(got.aud, [AUD]);
    assert_eq!(
        (got.namespace.as_deref(), got.pod.as_deref()),
        (Some("demo"), Some("web-0"))
    );
}

#[test]
fn unverified_audiences_and_pod_are_bounded() {
    let enc = |json: &str| format!("h.{}.s", URL_SAFE_NO_PAD.encode(json));
    let got = UnverifiedClaims::peek(&enc(r#"{"aud":"one"}"#));
    assert_eq!(got.aud, ["one"]);
    let many: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    let got = UnverifiedClaims::peek(&enc(&serde_json::json!({"aud": many}).to_string()));
    assert_eq!(got.aud.len(), MAX_AUDIENCES);
    let long = "x".repeat(300);
    let got = UnverifiedClaims::peek(&enc(&serde_json::json!({
        "aud": [long.clone(), 7, "ok"],
        "kubernetes.io": {"namespace": "demo", "pod": {"name": long}},
    })
    .to_string()));
    assert_eq!(got.aud, ["ok"]);
    assert_eq!((got.namespace.as_deref(), got.pod), (Some("demo"), None));
}
