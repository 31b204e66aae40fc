//! Certificate renewal and trust-root rotation, with connections open.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::fixtures::*;
use crate::shutdown::Shutdown;
use crate::test_support::TempDir;
use crate::tls::roots::Watch;
use crate::tls::*;

#[tokio::test]
async fn certificate_rotation_applies_to_new_handshakes_only() {
    let ca = Ca::new("mesh");
    let roots = ca.roots();
    let (web, client_id) = (id("demo", "web"), id("demo", "client"));
    let server_creds = ca.creds(&web, &roots);
    let client_creds = ca.creds(&client_id, &roots);
    let server = server_config(&server_creds, &[]).unwrap();
    let client = client_config(&client_creds, vec![web.clone()], &[]).unwrap();

    let (mut s1, mut c1) = connected(&server, &client).await;
    let old_info = server_creds.info().unwrap();

    let renewed_server = ca.leaf(&web);
    let new_info = server_creds
        .set(renewed_server.key(), renewed_server.chain.clone())
        .unwrap();
    assert_ne!(new_info.serial, old_info.serial);
    assert_eq!(server_creds.info(), Some(new_info));
    let renewed_client = ca.leaf(&client_id);
    client_creds
        .set(renewed_client.key(), renewed_client.chain.clone())
        .unwrap();

    let (mut s2, mut c2) = connected(&server, &client).await;
    assert_eq!(
        c2.get_ref().1.peer_certificates().unwrap()[0],
        renewed_server.chain[0]
    );
    assert_eq!(
        s2.get_ref().1.peer_certificates().unwrap()[0],
        renewed_client.chain[0]
    );
    assert_ne!(
        c1.get_ref().1.peer_certificates().unwrap()[0],
        renewed_server.chain[0]
    );

    ping(&mut s1, &mut c1).await;
    ping(&mut s2, &mut c2).await;
}

#[tokio::test]
async fn root_rotation_adds_then_removes_a_root_without_touching_open_connections() {
    let (old, new) = (Ca::new("old"), Ca::new("new"));
    let web = id("demo", "web");
    let server_roots = old.roots();
    let server = server_config(&old.creds(&web, &server_roots), &[]).unwrap();
    let both = bundle(&[&old, &new]);
    let client_old =
        client_config(&old.creds(&id("demo", "a"), &both), vec![web.clone()], &[]).unwrap();
    let client_new =
        client_config(&new.creds(&id("demo", "b"), &both), vec![web.clone()], &[]).unwrap();

    // Old root only.
    connected(&server, &client_old).await;
    let err = refused_by_server(&server, &client_new).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::UnknownIssuer,
        "{err}"
    );

    // Old and new: both accepted.
    let fp_old = server_roots.fingerprint();
    server_roots
        .replace_from_pem(format!("{}{}", old.root_pem, new.root_pem).as_bytes())
        .unwrap();
    assert_eq!(server_roots.root_count(), 2);
    let (mut s_old, mut c_old) = connected(&server, &client_old).await;
    connected(&server, &client_new).await;

    // New only: old-CA peers refused at their next handshake; the open
    // connection carries on.
    server_roots
        .replace_from_pem(new.root_pem.as_bytes())
        .unwrap();
    assert_ne!(server_roots.fingerprint(), fp_old);
    let err = refused_by_server(&server, &client_old).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::UnknownIssuer,
        "{err}"
    );
    connected(&server, &client_new).await;
    ping(&mut s_old, &mut c_old).await;
}

/// Publishes `pem` as Kubernetes does a ConfigMap update: a new versioned
/// directory, then an atomic swap of the `..data` symlink.
fn publish(dir: &Path, version: &str, pem: &str) {
    std::fs::create_dir_all(dir.join(version)).unwrap();
    std::fs::write(dir.join(version).join("ca.pem"), pem).unwrap();
    std::os::unix::fs::symlink(version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

fn fingerprint_of(pem: &str) -> String {
    TrustRoots::from_pem(pem.as_bytes()).unwrap().fingerprint()
}

#[tokio::test]
async fn watch_roots_follows_configmap_swaps_and_rewrites() {
    let (old, new) = (Ca::new("old"), Ca::new("new"));
    let dir = TempDir::new("tls-watch");
    publish(dir.path(), "v1", &old.root_pem);
    std::os::unix::fs::symlink("..data/ca.pem", dir.join("ca.pem")).unwrap();
    let path = dir.join("ca.pem");

    let roots = Arc::new(TrustRoots::load(&path).unwrap());
    assert_eq!(roots.fingerprint(), fingerprint_of(&old.root_pem));
    let shutdown = Shutdown::new();
    let stop = {
        let shutdown = shutdown.clone();
        async move { shutdown.signaled().await }
    };
    let task = tokio::spawn(watch_roots(
        roots.clone(),
        path.clone(),
        Duration::from_millis(10),
        stop,
    ));

    let both = format!("{}{}", old.root_pem, new.root_pem);
    publish(dir.path(), "v2", &both);
    let want = fingerprint_of(&both);
    eventually("the ConfigMap swap", || roots.fingerprint() == want).await;

    std::fs::write(&path, &new.root_pem).unwrap();
    let want = fingerprint_of(&new.root_pem);
    eventually("the rewrite in place", || roots.fingerprint() == want).await;
    assert_eq!(roots.root_count(), 1);

    shutdown.begin();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn watch_keeps_the_current_roots_when_the_file_is_bad_or_missing() {
    let (old, new) = (Ca::new("old"), Ca::new("new"));
    let roots = old.roots();
    let fp_old = roots.fingerprint();
    let path = Path::new("/etc/trellis/roots/ca.pem");
    let mut watch = Watch::default();

    watch.poll(&roots, path, Ok(b"not pem at all".to_vec()));
    assert_eq!(roots.fingerprint(), fp_old);
    watch.poll(&roots, path, Err(io::ErrorKind::NotFound.into()));
    assert_eq!(roots.fingerprint(), fp_old);
    watch.poll(
        &roots,
        path,
        Ok(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()),
    );
    assert_eq!(roots.fingerprint(), fp_old);

    watch.poll(&roots, path, Ok(new.root_pem.clone().into_bytes()));
    assert_eq!(roots.fingerprint(), fingerprint_of(&new.root_pem));
    watch.poll(&roots, path, Ok(Vec::new()));
    assert_eq!(roots.fingerprint(), fingerprint_of(&new.root_pem));
}

#[tokio::test]
async fn every_handshake_is_verified_in_full_without_resumption() {
    // With session resumption a client holding a ticket would skip
    // certificate verification; here each side has tickets' chance (a ping
    // after the handshake) before its peer's root goes away.
    let (old, new) = (Ca::new("old"), Ca::new("new"));
    let web = id("demo", "web");
    let (server_roots, client_roots) = (bundle(&[&old, &new]), bundle(&[&old, &new]));
    let server = server_config(&old.creds(&web, &server_roots), &[]).unwrap();
    let client = client_config(
        &old.creds(&id("demo", "client"), &client_roots),
        vec![web],
        &[],
    )
    .unwrap();
    let (mut s, mut c) = connected(&server, &client).await;
    ping(&mut s, &mut c).await;

    server_roots
        .replace_from_pem(new.root_pem.as_bytes())
        .unwrap();
    let err = refused_by_server(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::UnknownIssuer,
        "{err}"
    );

    server_roots
        .replace_from_pem(format!("{}{}", old.root_pem, new.root_pem).as_bytes())
        .unwrap();
    let (mut s, mut c) = connected(&server, &client).await;
    ping(&mut s, &mut c).await;

    client_roots
        .replace_from_pem(new.root_pem.as_bytes())
        .unwrap();
    let err = refused_by_client(&server, &client).await;
    assert_eq!(
        HandshakeFailure::from_io(&err),
        HandshakeFailure::UnknownIssuer,
        "{err}"
    );
}
