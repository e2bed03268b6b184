//! Relay faults: throttling slows the whole relay down (visible in
//! QueueStats), connection refused, TLS handshake failure, a relay that
//! never answers (SMTP timeout). Disconnect after DATA and lease expiry are
//! in `delivery`.

use std::time::Duration;

use mailspool::config::RelayTls;
use mailspool::pb;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

async fn wait_error(s: &TestServer, id: &str, needle: &str) -> pb::GetMessageResponse {
    wait_error_after(s, id, needle, 1).await
}

/// The last error contains `needle` after at least `attempts` attempts
/// (0: the relay's trouble, which costs none).
async fn wait_error_after(
    s: &TestServer,
    id: &str,
    needle: &str,
    attempts: u32,
) -> pb::GetMessageResponse {
    let mut last = None;
    for _ in 0..500 {
        let m = s.get(id).await.unwrap();
        if m.attempts >= attempts && m.last_error.contains(needle) {
            return m;
        }
        last = Some(m);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no attempt failed with `{needle}`: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_slows_the_whole_relay_and_shows_in_stats() {
    let peer = SmtpPeer::start(Mode::Throttle).await;
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.retry_base_ms = 10;
    cfg.retry_cap_ms = 20;
    let s = TestServer::start(cfg).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(s.enqueue(request(&format!("t{i}"))).await.unwrap().id);
    }
    let m = wait_error_after(&s, &ids[0], "421", 0).await;
    assert_eq!(m.attempts, 0, "throttling costs no attempt: {m:?}");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let st = s.stats().await;
            st.relay_state == "throttled" && st.relay_consecutive_failures >= 3
        })
        .await,
        "{:?}",
        s.stats().await
    );
    // Backing off: with 10 ms retries, 20 messages would hit the relay
    // hundreds of times a second; the breaker keeps it to a trickle.
    let before = peer.refused();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = peer.refused() - before;
    assert!(during <= 8, "{during} attempts in 1 s while throttled");
    peer.set_mode(Mode::Accept);
    s.wait_delivered(20).await;
    assert_eq!(s.stats().await.relay_state, "ok");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_retried_and_shown() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), Some(format!("smtp://{closed}")))).await;
    let r = s.enqueue(request("nobody home")).await.unwrap();
    let m = wait_error(&s, &r.id, "connecting").await;
    assert_ne!(m.state(), pb::MessageState::Dead);
    let st = s.stats().await;
    assert_eq!(
        (st.relay_state.as_str(), st.queued, st.dead),
        ("unreachable", 1, 0)
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_failure_is_retried_not_sent_in_clear() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.set_broken_tls(true);
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.relay_tls = Some(RelayTls::Verify);
    let s = TestServer::start(cfg).await;
    let r = s.enqueue(request("secret")).await.unwrap();
    let m = wait_error_after(&s, &r.id, "STARTTLS", 0).await;
    assert_ne!(m.state(), pb::MessageState::Delivered);
    assert_eq!(m.attempts, 0, "a TLS failure costs no attempt: {m:?}");
    assert_eq!(peer.received_count(), 0, "nothing may go out without TLS");
    assert_eq!(s.stats().await.relay_state, "tls failed");
    // A relay that stops offering STARTTLS is refused too under `required`.
    peer.set_broken_tls(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_error_after(&s, &r.id, "does not offer STARTTLS", 0).await;
    assert_eq!(peer.received_count(), 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_never_answers_times_out_and_is_retried() {
    let peer = SmtpPeer::start(Mode::Stall).await;
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.smtp_timeout_ms = 300;
    let s = TestServer::start(cfg).await;
    let r = s.enqueue(request("slow")).await.unwrap();
    wait_error(&s, &r.id, "timed out").await;
    peer.set_mode(Mode::Accept);
    let m = s.wait_state(&r.id, pb::MessageState::Delivered).await;
    assert!(m.attempts >= 2);
    s.shutdown().await;
}
