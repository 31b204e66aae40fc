//! The real identity service in-process on 127.0.0.1:0 over TLS 1.3, with
//! the JWKS verifier fed by a `LocalIssuer` (as in the local mesh), and the
//! library's own `connect` as the client.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::SanType;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::Code;
use trellis_api::CertifyRequest;
use trellis_core::spiffe::SpiffeId;
use trellis_core::tls::{Credentials, TrustRoots};
use trellis_identity::token::{DEFAULT_AUDIENCE, DEFAULT_TOKEN_ISSUER};
use trellis_identity::{bootstrap, connect, Bundle, LocalIssuer, Server, StartError};

use support::*;

#[tokio::test]
async fn issues_a_certificate_that_chains_and_names_the_token_identity() {
    let r = start("good").await;
    let mut client = connect(&r.addr, &r.roots(), &r.server_id).await.unwrap();
    let (key, csr) = csr_for(vec![]);
    let resp = client
        .certify(CertifyRequest {
            csr_der: csr,
            token: r.token("demo", "web"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.identity, WEB);
    let now = unix_now();
    // 24 h by default, but no longer than the token (an hour) lives.
    assert!(
        (resp.not_after_unix - now - 3600).abs() <= 5,
        "the token's hour: {} vs now {now}",
        resp.not_after_unix
    );

    // The mesh's own credential check accepts it: SAN, key, chain to root.
    let leaf = CertificateDer::from(resp.leaf_der.clone());
    let mut chain = vec![leaf.clone()];
    chain.extend(
        resp.intermediates_der
            .iter()
            .map(|d| CertificateDer::from(d.clone())),
    );
    let creds = Credentials::new(WEB.parse().unwrap(), r.roots());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    creds.set(key_der, chain.clone()).unwrap();
    assert_eq!(
        trellis_core::tls::peer_identity(&chain)
            .unwrap()
            .to_string(),
        WEB
    );

    // And so does openssl.
    let dir = &r.dir;
    dir.write("leaf.pem", &pem(&resp.leaf_der));
    dir.write(
        "chain.pem",
        &resp
            .intermediates_der
            .iter()
            .map(|d| pem(d))
            .collect::<String>(),
    );
    let ok = openssl(
        &[
            "verify",
            "-CAfile",
            "roots.pem",
            "-untrusted",
            "chain.pem",
            "leaf.pem",
        ],
        dir.path(),
    );
    assert!(ok.contains("leaf.pem: OK"), "{ok}");
    let text = openssl(&["x509", "-in", "leaf.pem", "-noout", "-text"], dir.path());
    assert!(text.contains(&format!("URI:{WEB}")), "{text}");
    assert!(
        text.contains("CA:FALSE") && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
    // The bootstrap files verify the same way.
    let ok = openssl(
        &[
            "verify",
            "-CAfile",
            "roots.pem",
            "-untrusted",
            "issuer.crt",
            "leaf.pem",
        ],
        dir.path(),
    );
    assert!(ok.contains("OK"), "{ok}");

    assert_eq!(r.metrics.issued_total(), 1);
    let (status, body) = http_get(r.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("trellis_identity_certificates_issued_total 1"),
        "{body}"
    );
    assert!(
        body.contains("trellis_identity_issuer_expiry_timestamp_seconds"),
        "{body}"
    );
    let (status, body) = http_get(r.admin, "/config").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"token_verifier\":\"jwks\""), "{body}");

    r.shutdown.begin();
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_inputs_get_the_right_status_and_are_counted() {
    let r = start("bad").await;
    let mut client = connect(&r.addr, &r.roots(), &r.server_id).await.unwrap();
    let stranger = LocalIssuer::generate(DEFAULT_TOKEN_ISSUER).unwrap();
    let mut expired = r
        .tokens
        .claims("demo", "web", "pod-0", DEFAULT_AUDIENCE, HOUR);
    expired.exp = Some(unix_now() - 3600);
    let other_san = csr_for(vec![SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    )])
    .1;
    let cases: Vec<(String, Vec<u8>, Code, &str)> = vec![
        (
            "not-a-jwt".into(),
            csr_for(vec![]).1,
            Code::Unauthenticated,
            "bad_token",
        ),
        (
            String::new(),
            csr_for(vec![]).1,
            Code::Unauthenticated,
            "bad_token",
        ),
        (
            r.tokens
                .sign("demo", "web", "p", "kubernetes", HOUR)
                .unwrap(),
            csr_for(vec![]).1,
            Code::Unauthenticated,
            "wrong_audience",
        ),
        (
            stranger
                .sign("demo", "web", "p", DEFAULT_AUDIENCE, HOUR)
                .unwrap(),
            csr_for(vec![]).1,
            Code::Unauthenticated,
            "bad_signature",
        ),
        (
            r.tokens.sign_claims(&expired).unwrap(),
            csr_for(vec![]).1,
            Code::Unauthenticated,
            "expired_token",
        ),
        (
            r.token("demo", "web"),
            b"\x30\x03\x02\x01\x00".to_vec(),
            Code::InvalidArgument,
            "bad_csr",
        ),
        (
            r.token("demo", "web"),
            other_san,
            Code::InvalidArgument,
            "csr_san_mismatch",
        ),
    ];
    for (token, csr_der, code, reason) in cases {
        let status = client
            .certify(CertifyRequest { csr_der, token })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{reason}: {status:?}");
        assert!(
            status.message().starts_with(reason),
            "{reason}: {}",
            status.message()
        );
    }
    let (_, body) = http_get(r.admin, "/metrics").await;
    for (reason, n) in [
        ("bad_token", 2),
        ("wrong_audience", 1),
        ("bad_signature", 1),
        ("expired_token", 1),
        ("bad_csr", 1),
        ("csr_san_mismatch", 1),
    ] {
        let line = format!("trellis_identity_refusals_total{{reason=\"{reason}\"}} {n}");
        assert!(body.contains(&line), "{line} in\n{body}");
    }
    assert_eq!(r.metrics.issued_total(), 0);
    // A request far over the size limit is refused by the transport.
    let huge = client
        .certify(CertifyRequest {
            csr_der: vec![0; 256 * 1024],
            token: r.token("demo", "web"),
        })
        .await
        .unwrap_err();
    assert_ne!(huge.code(), Code::Ok);
    // The service still works.
    let ok = client
        .certify(CertifyRequest {
            csr_der: csr_for(vec![SanType::URI(WEB.try_into().unwrap())]).1,
            token: r.token("demo", "web"),
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().identity, WEB);
}

#[tokio::test]
async fn a_client_expecting_another_identity_or_ca_fails_the_handshake() {
    let r = start("handshake").await;
    let wrong: SpiffeId = "spiffe://cluster.local/ns/trellis-system/sa/impostor"
        .parse()
        .unwrap();
    let e = connect(&r.addr, &r.roots(), &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong identity"), "{e}");
    let other = bootstrap("cluster.local", DAY, DAY).unwrap();
    let other_roots = Arc::new(TrustRoots::from_pem(other.roots_pem.as_bytes()).unwrap());
    let e = connect(&r.addr, &other_roots, &r.server_id)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.to_lowercase().replace(' ', "").contains("unknownissuer"),
        "{e}"
    );
    eventually("handshake failures counted", async || {
        (r.metrics_text()
            .await
            .contains("trellis_identity_tls_handshake_failures_total 2"))
        .then_some(())
    })
    .await;
    // The right expectation still connects.
    connect(&r.addr, &r.roots(), &r.server_id).await.unwrap();
}

#[tokio::test]
async fn a_new_issuer_is_taken_and_the_serving_certificate_follows_it() {
    let r = start("rotate").await;
    // Rotation: a new CA; the roots file holds both roots.
    let next = bootstrap("cluster.local", 10 * DAY, 5 * DAY).unwrap();
    let both = format!("{}{}", r.bundle.roots_pem, next.roots_pem);
    r.dir.write("roots.pem", &both);
    r.dir.write("issuer.key", &next.issuer_key_pem);
    r.dir.write("issuer.crt", &next.issuer_cert_pem);
    // A client trusting only the new root connects once the serving
    // certificate has been re-issued by the new issuer.
    let new_roots = Arc::new(TrustRoots::from_pem(next.roots_pem.as_bytes()).unwrap());
    let mut client = eventually("serving certificate from the new issuer", async || {
        connect(&r.addr, &new_roots, &r.server_id).await.ok()
    })
    .await;
    let resp = client
        .certify(CertifyRequest {
            csr_der: csr_for(vec![]).1,
            token: r.token("demo", "web"),
        })
        .await
        .unwrap()
        .into_inner();
    let next_issuer = CertificateDer::from_pem_slice(next.issuer_cert_pem.as_bytes()).unwrap();
    assert_eq!(resp.intermediates_der, [next_issuer.to_vec()]);
    let taken = r#"trellis_identity_reloads_total{source="issuer",result="taken"}"#;
    let refused = r#"trellis_identity_reloads_total{source="issuer",result="refused"}"#;
    assert!(metric(&r.metrics_text().await, taken) >= 1);

    // A broken key file: refused, the new issuer keeps working. (The files
    // were written one by one, so a half-written state may have been
    // refused already: count from here.)
    let refused_before = metric(&r.metrics_text().await, refused);
    r.dir.write("issuer.key", "broken");
    eventually("refusal counted", async || {
        (metric(&r.metrics_text().await, refused) == refused_before + 1).then_some(())
    })
    .await;
    let still = client
        .certify(CertifyRequest {
            csr_der: csr_for(vec![]).1,
            token: r.token("demo", "web"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.intermediates_der, resp.intermediates_der);

    // A new JWKS: the old token signer stops working, the new one works.
    let next_tokens = LocalIssuer::generate(DEFAULT_TOKEN_ISSUER).unwrap();
    r.dir.write("jwks.json", &next_tokens.jwks());
    let fresh = next_tokens
        .sign("demo", "web", "p", DEFAULT_AUDIENCE, HOUR)
        .unwrap();
    eventually("new JWKS taken", async || {
        let req = CertifyRequest {
            csr_der: csr_for(vec![]).1,
            token: fresh.clone(),
        };
        client.certify(req).await.ok()
    })
    .await;
    let stale = client
        .certify(CertifyRequest {
            csr_der: csr_for(vec![]).1,
            token: r.token("demo", "web"),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn refuses_to_start_with_an_unusable_issuer() {
    let dir = TempDir::new("identity-it-refuse");
    let tokens = LocalIssuer::generate(DEFAULT_TOKEN_ISSUER).unwrap();
    dir.write("jwks.json", &tokens.jwks());
    let a = bootstrap("cluster.local", DAY, DAY).unwrap();
    let b = bootstrap("cluster.local", DAY, DAY).unwrap();
    write_ca(
        &dir,
        &Bundle {
            roots_pem: b.roots_pem,
            ..a.clone()
        },
    );
    let config = config_in(&dir);
    let verifier = trellis_identity::verifier_from_config(&config)
        .await
        .unwrap();
    let e = match Server::bind(config, verifier).await {
        Err(e) => e,
        Ok(_) => panic!("started with an issuer of another CA"),
    };
    assert!(matches!(e, StartError::Ca(_)), "{e}");
    assert!(
        e.to_string().contains("does not chain to the trust roots"),
        "{e}"
    );

    write_ca(
        &dir,
        &Bundle {
            issuer_key_pem: "nope".into(),
            ..a
        },
    );
    let config = config_in(&dir);
    let verifier = trellis_identity::verifier_from_config(&config)
        .await
        .unwrap();
    let e = Server::bind(config, verifier).await.err().unwrap();
    assert!(e.to_string().contains("issuer key cannot be used"), "{e}");
}

/// The chart's fallback CA (Sprig `genCAWithKey … (genPrivateKey "ecdsa")`,
/// see data/sprig-ca/gen.go): one self-signed certificate as both
/// `roots.pem` and `issuer.crt`, and a SEC1 "EC PRIVATE KEY".
#[tokio::test]
async fn a_sprig_made_ca_serves_and_issues_certificates_that_verify() {
    let crt = include_str!("data/sprig-ca/ecdsa-p256/ca.crt");
    let r = start_with(
        "sprig",
        Bundle {
            roots_pem: crt.into(),
            issuer_cert_pem: crt.into(),
            issuer_key_pem: include_str!("data/sprig-ca/ecdsa-p256/ca.key").into(),
        },
    )
    .await;
    // The serving certificate (issued by the root itself) verifies.
    let mut client = connect(&r.addr, &r.roots(), &r.server_id).await.unwrap();
    let (key, csr) = csr_for(vec![]);
    let resp = client
        .certify(CertifyRequest {
            csr_der: csr,
            token: r.token("demo", "web"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.identity, WEB);
    let root = CertificateDer::from_pem_slice(crt.as_bytes()).unwrap();
    assert_eq!(resp.intermediates_der, [root.to_vec()]);

    // The mesh's credential check takes the leaf with the root after it,
    // as sent, and alone.
    let leaf = CertificateDer::from(resp.leaf_der.clone());
    let creds = Credentials::new(WEB.parse().unwrap(), r.roots());
    for chain in [vec![leaf.clone(), root], vec![leaf]] {
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        creds.set(key_der, chain).unwrap();
    }

    // And so does openssl, with and without the chain.
    let dir = &r.dir;
    dir.write("leaf.pem", &pem(&resp.leaf_der));
    let ok = openssl(&["verify", "-CAfile", "roots.pem", "leaf.pem"], dir.path());
    assert!(ok.contains("leaf.pem: OK"), "{ok}");
    let ok = openssl(
        &[
            "verify",
            "-CAfile",
            "roots.pem",
            "-untrusted",
            "issuer.crt",
            "leaf.pem",
        ],
        dir.path(),
    );
    assert!(ok.contains("leaf.pem: OK"), "{ok}");
    assert_eq!(r.metrics.issued_total(), 1);
    r.shutdown.begin();
    r.task.await.unwrap().unwrap();
}

/// A burst of 500 bad tokens from one client, against a TokenReview that
/// counts its calls, while a valid workload (same address, as everything
/// here is on 127.0.0.1, but another claimed subject) asks for its
/// certificate: the flood is limited and remembered, the workload served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_is_limited_and_a_valid_client_is_still_served() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let r = support::start_verifying(
        "flood",
        bootstrap("cluster.local", 10 * DAY, 5 * DAY).unwrap(),
        &[],
        async |_, tokens| CountingReview::new(tokens, counter),
    )
    .await;
    let calls = || calls.load(Ordering::SeqCst);
    let bad_req = |token: &str| CertifyRequest {
        csr_der: csr_for(vec![]).1,
        token: token.to_string(),
    };
    let attacker = connect(&r.addr, &r.roots(), &r.server_id).await.unwrap();

    // One bad token, twice: reviewed once, then refused from memory.
    let first = attacker
        .clone()
        .certify(bad_req("bogus-0"))
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::Unauthenticated, "{first:?}");
    assert_eq!(calls(), 1);
    let again = attacker
        .clone()
        .certify(bad_req("bogus-0"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated, "{again:?}");
    assert!(again.message().contains("refused before"), "{again:?}");
    assert_eq!(calls(), 1, "the repeated bad token cost no review");

    // The flood (ten distinct bad tokens), and meanwhile a valid client.
    let started = Instant::now();
    let flood = futures_util::future::join_all((0..500).map(|i| {
        let mut c = attacker.clone();
        let req = bad_req(&format!("bogus-{}", i % 10));
        async move { c.certify(req).await }
    }));
    let good_token = r.token("demo", "web");
    let valid = async {
        let mut c = connect(&r.addr, &r.roots(), &r.server_id).await.unwrap();
        let mut waits = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let resp = c
                .certify(CertifyRequest {
                    csr_der: csr_for(vec![]).1,
                    token: good_token.clone(),
                })
                .await
                .expect("the valid client is served during the flood");
            assert_eq!(resp.into_inner().identity, WEB);
            waits.push(t.elapsed());
        }
        waits
    };
    let (results, waits) = tokio::join!(flood, valid);
    let elapsed = started.elapsed();
    for w in &waits {
        assert!(*w < Duration::from_secs(5), "valid client waited {waits:?}");
    }

    let (mut limited, mut refused) = (0u64, 0u64);
    for res in &results {
        match res {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().starts_with("rate_limited"), "{s:?}");
                limited += 1;
            }
            Err(s) if s.code() == Code::Unauthenticated => refused += 1,
            other => panic!("unexpected answer to a bad token: {other:?}"),
        }
    }
    // Reviews during the flood: the valid client's three, and for the bad
    // tokens at most what the client's bucket lets through (burst 20, then
    // 5/s; two were spent above).
    let flood_reviews = (calls() - 1 - 3) as u64;
    let budget = 20 + 5 * (elapsed.as_secs() + 1);
    assert!(
        (1..=budget).contains(&flood_reviews),
        "{flood_reviews} reviews for the flood in {elapsed:?} (budget {budget})"
    );
    assert!(
        limited >= 500 - budget,
        "{limited} limited, {refused} refused"
    );
    assert_eq!(limited + refused, 500);
    // Every refusal not reviewed was answered from memory.
    let cached = 1 + refused - flood_reviews;
    eprintln!(
        "flood: {limited} limited, {refused} refused ({flood_reviews} reviewed) in {elapsed:?}; \
         valid client waited {waits:?}"
    );

    let text = r.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            r#"trellis_identity_requests_limited_total{reason="rate"}"#
        ),
        limited,
        "{text}"
    );
    assert_eq!(
        metric(&text, "trellis_identity_refusals_cached_total"),
        cached,
        "{text}"
    );
    assert_eq!(r.metrics.limited_total("rate"), limited);
    assert_eq!(r.metrics.refusals_cached_total(), cached);
    assert_eq!(r.metrics.limited_total("concurrency"), 0);
    assert_eq!(r.metrics.issued_total(), 3);
    r.shutdown.begin();
    r.task.await.unwrap().unwrap();
}

/// The certificate's notAfter is at most the token's exp; a token about to
/// expire is refused with a reason that says so.
#[tokio::test]
async fn a_certificate_never_outlives_the_token_it_was_issued_for() {
    let r = start("token-exp").await;
    let mut client = connect(&r.addr, &r.roots(), &r.server_id).await.unwrap();
    for ttl in [Duration::from_secs(600), 2 * DAY] {
        let claims = r
            .tokens
            .claims("demo", "web", "pod-0", DEFAULT_AUDIENCE, ttl);
        let exp = claims.exp.unwrap();
        let resp = client
            .certify(CertifyRequest {
                csr_der: csr_for(vec![]).1,
                token: r.tokens.sign_claims(&claims).unwrap(),
            })
            .await
            .unwrap()
            .into_inner();
        let (_, leaf) = x509_parser::parse_x509_certificate(&resp.leaf_der).unwrap();
        let not_after = leaf.validity().not_after.timestamp();
        assert_eq!(not_after, resp.not_after_unix);
        assert!(not_after <= exp, "notAfter {not_after} > token exp {exp}");
        let want = if ttl < DAY { exp } else { unix_now() + 86_400 };
        assert!((not_after - want).abs() <= 5, "{not_after} vs {want}");
    }
    let mut dying = r
        .tokens
        .claims("demo", "web", "pod-0", DEFAULT_AUDIENCE, HOUR);
    dying.exp = Some(unix_now() + 20);
    let status = client
        .certify(CertifyRequest {
            csr_der: csr_for(vec![]).1,
            token: r.tokens.sign_claims(&dying).unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().starts_with("token_expires_soon"),
        "{status:?}"
    );
}
