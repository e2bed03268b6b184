//! mailspool against a real Postfix smarthost of its own: STARTTLS with a
//! certificate from a private CA made here, SASL AUTH through Dovecot,
//! relaying only for authenticated clients, and a strict EHLO check
//! (`reject_non_fqdn_helo_hostname`). Postfix relays what it accepts to
//! the scripted peer, so we see the message arrive.

use std::time::Duration;

use mailspool::config::RelayTls;
use mailspool::harness::bench::postfix::{dovecot_unavailable, DovecotAuth, Postfix};
use mailspool::pb;

use crate::relays::Pki;
use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

#[cfg_attr(
    not(have_smarthost),
    ignore = "needs root, Postfix and Dovecot (apt-get install postfix dovecot-core)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postfix_smarthost_with_starttls_and_dovecot_sasl() {
    if let Some(why) = dovecot_unavailable() {
        panic!("{why}");
    }
    let pki = Pki::new();
    let dir = tempdir();
    let auth = DovecotAuth::start(&dir.path().join("dovecot"), "mailspool", "right")
        .expect("dovecot starts");
    let sink = SmtpPeer::start(Mode::Accept).await;
    let extra = format!(
        "smtpd_tls_cert_file = {cert}\n\
         smtpd_tls_key_file = {key}\n\
         smtpd_tls_security_level = may\n\
         smtpd_tls_auth_only = yes\n\
         smtpd_tls_loglevel = 1\n\
         smtpd_sasl_auth_enable = yes\n\
         smtpd_sasl_type = dovecot\n\
         smtpd_sasl_path = inet:127.0.0.1:{sasl}\n\
         mynetworks = 192.0.2.1/32\n\
         smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination\n\
         smtpd_helo_required = yes\n\
         smtpd_helo_restrictions = reject_non_fqdn_helo_hostname\n",
        cert = pki.file("relay.pem"),
        key = pki.file("relay.key"),
        sasl = auth.port,
    );
    let pf = Postfix::start_with(&dir.path().join("postfix"), sink.addr.port(), 2, &extra)
        .expect("postfix starts");
    let relay_url = format!("smtp://127.0.0.1:{}", pf.port);
    let settings = |data: &str, password: &str, helo: Option<&str>| {
        let mut c = config(&dir.path().join(data), Some(relay_url.clone()));
        c.relay_tls = Some(RelayTls::Verify);
        c.relay_ca_file = Some(pki.file("ca.pem").into());
        c.relay_user = Some("mailspool".into());
        c.relay_password = Some(mailspool::config::Secret(password.into()));
        c.relay_helo_name = helo.map(Into::into);
        c
    };
    let refused = |s: &TestServer, state: &'static str| {
        let admin = s.admin.clone();
        async move {
            let mut admin = admin;
            let end = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let st = admin
                    .queue_stats(pb::QueueStatsRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                if st.relay_state == state {
                    return st;
                }
                assert!(std::time::Instant::now() < end, "never {state}: {st:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // A wrong password: auth failed, the message waits, no attempt paid.
    let s = TestServer::start(settings("wrong", "wrong", None)).await;
    let id = s.enqueue(request("wrong password")).await.unwrap().id;
    let st = refused(&s, "auth failed").await;
    assert!(st.relay_reason.contains("535"), "{}", st.relay_reason);
    let m = s.get(&id).await.unwrap();
    assert_eq!(
        (m.state(), m.attempts, st.dead),
        (pb::MessageState::Queued, 0, 0)
    );
    s.shutdown().await;

    // A single-label EHLO name: Postfix refuses it (504 5.5.2, at RCPT as
    // its restrictions are delayed), and that is our configuration too:
    // the relay refuses us, the message waits, no attempt paid.
    let s = TestServer::start(settings("helo", "right", Some("vm"))).await;
    let id = s.enqueue(request("bare helo")).await.unwrap().id;
    let st = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let st = s.stats().await;
            if st.relay_reason.contains("504") {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the EHLO refusal shows as the relay's reason");
    assert!(st.relay_reason.contains("Helo command rejected"), "{st:?}");
    let m = s.get(&id).await.unwrap();
    assert_eq!(
        (m.state(), m.attempts),
        (pb::MessageState::Queued, 0),
        "{m:?}"
    );
    s.shutdown().await;

    // The right password and the default EHLO name (the FQDN or the
    // address literal): over verified STARTTLS, authenticated, relayed.
    let s = TestServer::start(settings("right", "right", None)).await;
    let id = s.enqueue(request("through postfix")).await.unwrap().id;
    s.wait_state(&id, pb::MessageState::Delivered).await;
    let arrived = wait_until(Duration::from_secs(30), || async {
        sink.received()
            .iter()
            .any(|m| m.subject == "through postfix")
    })
    .await;
    assert!(arrived, "Postfix did not relay it: {}", pf.log());
    let log = pf.log();
    assert!(log.contains("sasl_username=mailspool"), "{log}");
    assert!(log.contains("TLS connection established from"), "{log}");
    assert_eq!(s.stats().await.relay_state, "ok");
    s.shutdown().await;
}
