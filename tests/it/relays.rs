//! The relay as a real smarthost is: TLS at Postfix's levels against a
//! private CA made here (aiosmtpd with STARTTLS or implicit TLS), the EHLO
//! name, credentials refused, and a rate limit answered with 450 4.7.1.
//! What the relay does wrong costs no message an attempt.

use std::time::Duration;

use mailspool::config::{RelayTls, Secret};
use mailspool::pb;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::mime::{capture_with, Capture};
use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

/// A private CA and a certificate it signed for 127.0.0.1, as files.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let dir = tempdir();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("relay.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("relay.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    pub(crate) fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn relay_config(
    dir: &std::path::Path,
    relay: String,
    tls: RelayTls,
    ca: Option<String>,
) -> mailspool::Config {
    let mut cfg = config(dir, Some(relay));
    cfg.relay_tls = Some(tls);
    cfg.relay_ca_file = ca.map(Into::into);
    cfg.relay_helo_name = Some("mailer.example.com".into());
    cfg
}

/// Sends one message; Ok(what the relay saw) when delivered, Err(stats)
/// when the relay state became `state` with the message still queued and
/// no attempt counted.
async fn one(
    cap: &Capture,
    cfg: mailspool::Config,
    refused_as: &str,
) -> Result<serde_json::Value, pb::QueueStatsResponse> {
    let before = cap.received().len();
    let s = TestServer::start(cfg).await;
    let id = s.enqueue(request("tls")).await.unwrap().id;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let result = loop {
        let st = s.stats().await;
        if st.delivered_total == 1 && cap.received().len() > before {
            break Ok(cap.received()[before].0.clone());
        }
        if st.relay_state == refused_as {
            break Err(st);
        }
        assert!(
            std::time::Instant::now() < end,
            "neither delivered nor {refused_as}: {} {}",
            st.relay_state,
            st.relay_reason
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let m = s.get(&id).await.unwrap();
    if result.is_err() {
        assert_eq!(m.state(), pb::MessageState::Queued, "{m:?}");
        assert_eq!(
            m.attempts, 0,
            "a relay's TLS or credentials cost no attempt: {m:?}"
        );
    }
    s.shutdown().await;
    result
}

#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs python3 with aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_smtps_at_each_level_against_a_private_ca() {
    let pki = Pki::new();
    let (cert, key) = (pki.file("relay.pem"), pki.file("relay.key"));
    for implicit in [false, true] {
        let flag = if implicit { "--smtps" } else { "--starttls" };
        let cap = capture_with(&[flag, &cert, &key]).await;
        let scheme = if implicit { "smtps" } else { "smtp" };
        let url = format!("{scheme}://127.0.0.1:{}", cap.port);
        let cases = [
            (RelayTls::Verify, None, false),
            (RelayTls::Verify, Some(pki.file("ca.pem")), true),
            (RelayTls::Encrypt, None, true),
            (RelayTls::Opportunistic, None, true),
        ];
        for (level, ca, delivers) in cases {
            let dir = tempdir();
            let cfg = relay_config(dir.path(), url.clone(), level, ca.clone());
            let what = format!("{flag} {level:?} ca={}", ca.is_some());
            match one(&cap, cfg, "tls failed").await {
                Ok(seen) => {
                    assert!(delivers, "{what}: delivered without a verified certificate");
                    assert_eq!(seen["tls"], true, "{what}: {seen}");
                    assert_eq!(seen["helo"], "mailer.example.com", "{what}");
                }
                Err(stats) => {
                    assert!(!delivers, "{what}: {stats:?}");
                    assert!(
                        stats.relay_reason.contains("UnknownIssuer")
                            || stats.relay_reason.contains("certificate"),
                        "{what}: {}",
                        stats.relay_reason
                    );
                }
            }
        }
    }
}

#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs python3 with aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_auth_failed_and_nothing_bounces() {
    let pki = Pki::new();
    let (cert, key) = (pki.file("relay.pem"), pki.file("relay.key"));
    let cap = capture_with(&["--starttls", &cert, &key, "--auth", "mailspool:right"]).await;
    let url = format!("smtp://127.0.0.1:{}", cap.port);
    for (password, delivers) in [("wrong", false), ("right", true)] {
        let dir = tempdir();
        let mut cfg = relay_config(dir.path(), url.clone(), RelayTls::Encrypt, None);
        cfg.relay_user = Some("mailspool".into());
        cfg.relay_password = Some(Secret(password.into()));
        // No name configured: the EHLO is a FQDN or an address literal.
        cfg.relay_helo_name = None;
        match one(&cap, cfg, "auth failed").await {
            Ok(seen) => {
                assert!(delivers, "{seen}");
                assert_eq!(seen["login"], "mailspool");
                let helo = seen["helo"].as_str().unwrap();
                assert!(
                    helo.contains('.') || helo.starts_with('['),
                    "a bare EHLO name: {helo}"
                );
            }
            Err(stats) => {
                assert!(!delivers, "{stats:?}");
                assert!(
                    stats
                        .relay_reason
                        .starts_with("authentication with 127.0.0.1: 535"),
                    "{}",
                    stats.relay_reason
                );
                assert_eq!(stats.dead, 0);
            }
        }
    }
}

/// Postfix's "450 4.7.1 … too much mail" is the relay slowing us down:
/// the relay shows throttled, no message pays an attempt or dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_reply_throttles_the_relay_and_burns_no_attempts() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.script(&[Mode::Accept; 10]);
    peer.script(&[Mode::RateLimited; 6]);
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.max_attempts = 3; // what burned the messages before
    cfg.retry_base_ms = 10;
    cfg.retry_cap_ms = 20;
    let s = TestServer::start(cfg).await;
    let ids: Vec<String> = s
        .enqueue_batch((0..40).map(|i| request(&format!("r{i}"))).collect())
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let throttled = wait_until(Duration::from_secs(20), || async {
        s.stats().await.relay_state == "throttled"
    })
    .await;
    assert!(throttled, "{:?}", s.stats().await);
    let st = s.stats().await;
    assert!(st.relay_reason.contains("4.7.1"), "{}", st.relay_reason);
    s.wait_delivered(40).await;
    let st = s.stats().await;
    assert_eq!((st.dead, st.delivered_total), (0, 40), "{st:?}");
    assert_eq!(st.relay_state, "ok");
    assert!(peer.refused() >= 6);
    for id in &ids {
        let m = s.get(id).await.unwrap();
        assert_eq!(m.state(), pb::MessageState::Delivered);
    }
    s.shutdown().await;
}

/// AUTH XOAUTH2 (Microsoft 365, Gmail) with the token read from a file an
/// external refresher keeps current: a stale token is `auth failed` and
/// costs nothing; the refreshed file is read at the next connection.
#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs python3 with aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_reads_the_refreshed_token_at_the_next_connection() {
    let pki = Pki::new();
    let (cert, key) = (pki.file("relay.pem"), pki.file("relay.key"));
    let cap = capture_with(&[
        "--starttls",
        &cert,
        &key,
        "--oauth2",
        "svc@example.com:fresh-token",
    ])
    .await;
    let dir = tempdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "stale-token\n").unwrap();
    let mut cfg = relay_config(
        &dir.path().join("data"),
        format!("smtp://127.0.0.1:{}", cap.port),
        RelayTls::Encrypt,
        None,
    );
    cfg.relay_user = Some("svc@example.com".into());
    cfg.relay_oauth2_token_file = Some(token.clone());
    let s = TestServer::start(cfg).await;
    let id = s.enqueue(request("oauth")).await.unwrap().id;
    let refused = wait_until(Duration::from_secs(20), || async {
        s.stats().await.relay_state == "auth failed"
    })
    .await;
    assert!(refused, "{:?}", s.stats().await);
    let m = s.get(&id).await.unwrap();
    assert_eq!((m.state(), m.attempts), (pb::MessageState::Queued, 0));
    std::fs::write(&token, "fresh-token\n").unwrap();
    s.wait_state(&id, pb::MessageState::Delivered).await;
    assert_eq!(cap.received()[0].0["login"], "svc@example.com");
    assert_eq!(s.stats().await.relay_state, "ok");
    s.shutdown().await;
}
