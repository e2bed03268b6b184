//! Delivery outcomes against the scripted SMTP peer: retry, dead letter,
//! lease expiry, lanes.

use std::time::Duration;

use mailspool::pb;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_then_delivered() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.script(&[Mode::Defer, Mode::Disconnect]);
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), Some(peer.url()))).await;
    let r = s.enqueue(request("retry me")).await.unwrap();
    let m = s.wait_state(&r.id, pb::MessageState::Delivered).await;
    assert_eq!(m.attempts, 3, "451, disconnect after DATA, then 250");
    assert_eq!(peer.refused(), 2);
    assert_eq!(peer.received().len(), 1);
    let st = s.stats().await;
    assert_eq!(
        (st.retried_total, st.delivered_total, st.dead_total),
        (2, 1, 0)
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_is_dead_with_the_reply() {
    let peer = SmtpPeer::start(Mode::Reject).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), Some(peer.url()))).await;
    let r = s.enqueue(request("bounce")).await.unwrap();
    let m = s.wait_state(&r.id, pb::MessageState::Dead).await;
    assert_eq!(m.attempts, 1);
    assert!(m.last_error.contains("550"), "{}", m.last_error);
    assert_eq!(m.bounce_class(), pb::BounceClass::BounceBadMailbox, "{m:?}");
    let url = format!("http://{}", s.handle.as_ref().unwrap().addr);
    let out = run_cli(&url, &["status", &r.id]).await;
    assert!(
        out.stdout.contains("bounce class  BOUNCE_BAD_MAILBOX"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let st = s.stats().await;
    assert_eq!(
        (st.dead, st.dead_total, st.queued, st.retried_total),
        (1, 1, 0, 0)
    );
    let metrics =
        samples(&http_get(s.handle.as_ref().unwrap().metrics_addr.unwrap(), "/metrics").await);
    assert_eq!(
        sample(
            &metrics,
            "mailspool_failed_attempts_total{class=\"bad_mailbox\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "mailspool_failed_attempts_total{class=\"policy\"}"
        ),
        0.0
    );
    // Dead letters survive a restart.
    let s = s.restart().await;
    assert_eq!(s.get(&r.id).await.unwrap().state(), pb::MessageState::Dead);
    assert_eq!(s.stats().await.dead, 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_attempts_is_dead() {
    let peer = SmtpPeer::start(Mode::Defer).await;
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.max_attempts = 3;
    cfg.retry_base_ms = 1;
    cfg.retry_cap_ms = 5;
    let s = TestServer::start(cfg).await;
    let r = s.enqueue(request("never")).await.unwrap();
    let m = s.wait_state(&r.id, pb::MessageState::Dead).await;
    assert_eq!(m.attempts, 3);
    assert!(
        m.last_error.contains("3 attempts") && m.last_error.contains("451"),
        "{}",
        m.last_error
    );
    assert_eq!(s.stats().await.retried_total, 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_relay_lease_expires_and_message_is_sent_again() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.script(&[Mode::Stall]);
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.lease_timeout_ms = 400;
    cfg.smtp_timeout_ms = 30_000; // the lease, not the SMTP timeout, must end this
    let s = TestServer::start(cfg).await;
    let r = s.enqueue(request("stall")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.get(&r.id).await.unwrap().state() == pb::MessageState::InFlight
        })
        .await,
        "the message should be in flight while the relay stalls"
    );
    let m = s.wait_state(&r.id, pb::MessageState::Delivered).await;
    assert_eq!(peer.received().len(), 1);
    assert_eq!(peer.received()[0].message_id, r.message_id);
    assert_eq!(peer.refused(), 1, "the first attempt stalled");
    assert_eq!(
        m.attempts, 1,
        "the expired lease never finished, so it is not an attempt"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_overtakes_a_bulk_backlog() {
    let peer = SmtpPeer::start(Mode::AcceptAfter(Duration::from_millis(1))).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), Some(peer.url()))).await;
    for chunk in 0..5 {
        let requests = (0..1000)
            .map(|i| with_lane(request(&format!("bulk {chunk}-{i}")), pb::Lane::Bulk))
            .collect();
        let r = s
            .queue
            .clone()
            .enqueue_batch(pb::EnqueueBatchRequest { requests })
            .await
            .unwrap()
            .into_inner();
        assert!(r.results.iter().all(|x| x.code == 0));
    }
    let before = peer.received_count();
    let t = s
        .enqueue(with_lane(
            request("password reset"),
            pb::Lane::Transactional,
        ))
        .await
        .unwrap();
    s.wait_state(&t.id, pb::MessageState::Delivered).await;
    let got = peer.received();
    let pos = got
        .iter()
        .position(|m| m.message_id == t.message_id)
        .unwrap();
    let bulk_after = 5000
        - (pos
            - got[..pos]
                .iter()
                .filter(|m| m.subject == "password reset")
                .count());
    println!("transactional: {before} bulk delivered when it was enqueued, delivered at position {pos}, {bulk_after} bulk still behind it");
    // At most a few leases (4 workers × 32) may pass between its enqueue and its delivery.
    assert!(
        pos <= before + 4 * 32 * 2,
        "transactional waited behind {} bulk messages",
        pos - before
    );
    assert!(
        bulk_after > 1000,
        "the test needs a real backlog behind it: {bulk_after}"
    );
    // Bulk still drains completely.
    assert!(
        wait_until(Duration::from_secs(60), || async {
            peer.received_count() == 5001
        })
        .await
    );
    // The relay's 250 comes before the ack is recorded.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            s.stats().await.queued == 0
        })
        .await
    );
    let st = s.stats().await;
    assert_eq!((st.queued, st.delivered_total), (0, 5001));
    s.shutdown().await;
}
