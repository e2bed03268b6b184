//! Node drain: a transfer between two real nodes, with the source killed
//! (SIGKILL) in the middle and the transfer run again: every message ends
//! up on the other node exactly once, none is sent by the source.

use std::time::Duration;

use mailspool::harness::child::ServerProcess;
use mailspool::pb;
use mailspool::pb::queue_admin_client::QueueAdminClient;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

const N: usize = 3_000;

async fn transfer(source: &str, to: &str) -> Result<pb::TransferProgress, tonic::Status> {
    let mut admin = QueueAdminClient::connect(source.to_string()).await.unwrap();
    let mut stream = admin
        .transfer(pb::TransferRequest {
            to: to.to_string(),
            batch_size: 50,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut last = pb::TransferProgress::default();
    while let Some(p) = stream.message().await? {
        last = p;
        if last.done {
            break;
        }
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_with_a_crash_in_the_middle_loses_and_duplicates_nothing() {
    // The source's relay records anything it would send: it must send nothing.
    let peer = SmtpPeer::start(Mode::Accept).await;
    let src_dir = tempdir();
    let source = ServerProcess::start(binary().as_ref(), src_dir.path(), &peer.url(), &SERVER_ARGS)
        .await
        .unwrap();
    let dst_dir = tempdir();
    let dest = TestServer::start(config(dst_dir.path(), None)).await;
    let dest_url = format!("http://{}", dest.handle.as_ref().unwrap().addr);

    let mut admin = QueueAdminClient::connect(source.url.clone()).await.unwrap();
    admin
        .pause_delivery(pb::PauseDeliveryRequest::default())
        .await
        .unwrap();
    let mut queue = pb::mail_queue_client::MailQueueClient::connect(source.url.clone())
        .await
        .unwrap();
    let mut message_ids = std::collections::HashSet::new();
    for b in 0..N / 100 {
        let requests = (0..100)
            .map(|i| {
                let n = b * 100 + i;
                // A third carry the caller's own idempotency key.
                let r = request(&format!("m{n}"));
                if n % 3 == 0 {
                    with_key(r, &format!("caller-key-{n}"))
                } else {
                    r
                }
            })
            .collect();
        let results = queue
            .enqueue_batch(pb::EnqueueBatchRequest { requests })
            .await
            .unwrap()
            .into_inner()
            .results;
        message_ids.extend(results.into_iter().map(|r| r.message_id));
    }
    assert_eq!(message_ids.len(), N);

    // Bad input changes nothing.
    let bad = admin
        .transfer(pb::TransferRequest {
            to: "not a url".into(),
            batch_size: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("to:"), "{bad:?}");

    // Part of the way, then SIGKILL at the worst moment we can see: the
    // other node has acknowledged a batch this node has not reported as
    // removed yet.
    let mut stream = admin
        .transfer(pb::TransferRequest {
            to: dest_url.clone(),
            batch_size: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut partial = pb::TransferProgress::default();
    while partial.transferred < 500 {
        partial = stream.message().await.unwrap().unwrap();
    }
    let ahead = wait_until(Duration::from_secs(30), || async {
        dest.stats().await.enqueued_total > partial.transferred
    })
    .await;
    assert!(ahead, "the transfer goes on without its client reading");
    source.kill().await.unwrap();
    drop(stream);
    let first_leg = dest.stats().await.enqueued_total;
    assert!(first_leg >= 500 && first_leg < N as u64, "{first_leg}");

    let source = ServerProcess::start(binary().as_ref(), src_dir.path(), &peer.url(), &SERVER_ARGS)
        .await
        .unwrap();
    let mut admin = QueueAdminClient::connect(source.url.clone()).await.unwrap();
    let after_crash = admin
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after_crash.paused_lanes.len(),
        3,
        "still paused after the crash"
    );
    assert!(after_crash.queued > 0 && after_crash.queued <= N as u64 - 500);

    let done = transfer(&source.url, &dest_url).await.unwrap();
    assert!(done.done && done.remaining == 0, "{done:?}");
    let src = admin
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((src.queued, src.delivered_total), (0, 0), "{src:?}");
    assert_eq!(
        src.cancelled_total, N as u64,
        "every message left as transferred"
    );

    // Exactly once on the other node, and delivered from there.
    let dst = dest.stats().await;
    assert_eq!(dst.enqueued_total, N as u64, "no duplicate stored: {dst:?}");
    dest.wait_delivered(N as u64).await;
    let mut delivered = std::collections::HashSet::new();
    for f in outbox_files(dst_dir.path()) {
        let text = std::fs::read_to_string(&f).unwrap();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: <"))
            .map(|v| v.trim_end_matches('>').to_string())
            .unwrap_or_else(|| panic!("no Message-ID in {}", f.display()));
        assert!(delivered.insert(id), "delivered twice: {}", f.display());
    }
    assert_eq!(
        delivered, message_ids,
        "the same messages, Message-IDs kept"
    );
    assert_eq!(peer.received_count(), 0, "the source sent nothing");
    eprintln!(
        "transfer: {N} messages; killed after {first_leg} had moved; second run moved {} and found {} already there",
        done.transferred, done.duplicates
    );
    source.stop().await.unwrap();
    dest.shutdown().await;
}
