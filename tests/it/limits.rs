//! Spool limits: RESOURCE_EXHAUSTED with a retry delay before the disk is
//! full, bulk first and transactional last; nothing acknowledged is lost;
//! accepting again once the backlog drains.

use std::time::Duration;

use mailspool::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_bulk_first_and_accepts_again_once_it_drains() {
    let peer = SmtpPeer::start(Mode::Defer).await;
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.max_spool_bytes = 200_000;
    cfg.retry_base_ms = 100;
    cfg.retry_cap_ms = 100;
    let s = TestServer::start(cfg).await;

    let mut acked = Vec::new();
    let refusal = loop {
        assert!(acked.len() < 1000, "the spool limit never applied");
        match s
            .enqueue(with_lane(
                request(&format!("bulk {}", acked.len())),
                pb::Lane::Bulk,
            ))
            .await
        {
            Ok(r) => acked.push(r.message_id),
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("bulk") && refusal.message().contains("max_spool_bytes"),
        "{}",
        refusal.message()
    );
    let retry = refusal
        .get_details_retry_info()
        .expect("RetryInfo in the status details");
    assert!(retry.retry_delay.unwrap() >= Duration::from_secs(1));
    let st = s.stats().await;
    assert!(
        st.spool_bytes > 150_000 && st.spool_bytes < 160_000,
        "bulk stops at 80%: {}",
        st.spool_bytes
    );
    assert_eq!((st.max_spool_bytes, st.refused_total), (200_000, 1));

    // Higher lanes still get in; in a batch, the bulk item alone is refused.
    acked.push(
        s.enqueue(with_lane(request("otp"), pb::Lane::Transactional))
            .await
            .unwrap()
            .message_id,
    );
    acked.push(
        s.enqueue(with_lane(request("normal"), pb::Lane::Normal))
            .await
            .unwrap()
            .message_id,
    );
    let batch = pb::EnqueueBatchRequest {
        requests: vec![
            with_lane(request("b"), pb::Lane::Bulk),
            with_lane(request("t"), pb::Lane::Transactional),
        ],
    };
    let r = s
        .queue
        .clone()
        .enqueue_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(r[0].code, Code::ResourceExhausted as i32, "{:?}", r[0]);
    assert!(r[0].message.contains("retry in"), "{}", r[0].message);
    assert_eq!(r[1].code, 0);
    acked.push(r[1].message_id.clone());
    let before = s.stats().await.enqueued_total;

    // The relay recovers: the spool drains and bulk is accepted again.
    peer.set_mode(Mode::Accept);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            s.enqueue(with_lane(request("bulk again"), pb::Lane::Bulk))
                .await
                .is_ok()
        })
        .await,
        "bulk should be accepted once the spool drains"
    );
    assert!(s.stats().await.enqueued_total > before);
    let all = wait_until(Duration::from_secs(30), || async {
        let got: std::collections::HashSet<String> =
            peer.received().into_iter().map(|m| m.message_id).collect();
        acked.iter().all(|id| got.contains(id))
    })
    .await;
    assert!(all, "every acknowledged message is delivered");
    s.shutdown().await;
}
