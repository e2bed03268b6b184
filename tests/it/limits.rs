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

/// A real small filesystem: a 48 MiB tmpfs. Needs root (mount); under
/// CI=true a failed mount fails the test.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size_mib: u64) -> Tmpfs {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "cannot mount a tmpfs (the disk-full test needs root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[cfg_attr(not(have_root), ignore = "needs root, to mount a tmpfs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_before_it_is_full_and_loses_nothing() {
    let dir = tempdir();
    let _fs = Tmpfs::mount(dir.path(), 48);
    let peer = SmtpPeer::start(Mode::Defer).await;
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.min_free_bytes = 6 << 20;
    cfg.segment_bytes = 4 << 20;
    cfg.cache_capacity_bytes = 4 << 20;
    cfg.retry_base_ms = 100;
    cfg.retry_cap_ms = 100;
    let s = TestServer::start(cfg).await;
    let body = "x".repeat(64 * 1024);
    let big = |lane: pb::Lane, i: usize| {
        let mut r = with_lane(request(&format!("{lane:?} {i}")), lane);
        r.email.as_mut().unwrap().text_body = body.clone();
        r
    };
    let mut acked = Vec::new();
    let mut refused = [None, None, None];
    // Fill with every lane in turn until all three are refused.
    for i in 0..2000 {
        if refused.iter().all(Option::is_some) {
            break;
        }
        for (k, lane) in [pb::Lane::Bulk, pb::Lane::Normal, pb::Lane::Transactional]
            .into_iter()
            .enumerate()
        {
            if refused[k].is_some() {
                continue;
            }
            match s.enqueue(big(lane, i)).await {
                Ok(r) => acked.push(r.message_id),
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{lane:?}: {e:?}");
                    assert!(e.get_details_retry_info().is_some());
                    refused[k] = Some(acked.len());
                }
            }
        }
    }
    let [bulk, normal, transactional] =
        refused.map(|r| r.expect("every lane is refused in the end"));
    assert!(
        bulk < normal && normal < transactional,
        "bulk first, transactional last: {refused:?}"
    );
    // Refused before the disk was full, and not long before: below
    // normal's floor (2 × min_free_bytes). Admission counts what it took
    // since the last sample of the free space (every 250 ms) as used, at
    // twice each message's size, so the file system
    // reads a few MiB more than the 6 MiB transactional stopped at (8.6 to
    // 10.3 MiB measured here).
    let st = s.stats().await;
    assert!(
        st.disk_free_bytes > 0 && st.disk_free_bytes < 12 << 20,
        "refused before the disk was full: {}",
        st.disk_free_bytes
    );
    assert!(acked.len() > 100, "{}", acked.len());
    // The relay comes back: everything acknowledged is delivered, and the
    // spool accepts again as space frees.
    peer.set_mode(Mode::Accept);
    // Generous deadline: 64 KiB messages through the scripted peer in a
    // debug build, on a busy CI machine.
    let all = wait_until(Duration::from_secs(180), || async {
        let got: std::collections::HashSet<String> =
            peer.received().into_iter().map(|m| m.message_id).collect();
        acked.iter().all(|id| got.contains(id))
    })
    .await;
    assert!(all, "acknowledged messages were lost on a full disk");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            s.enqueue(big(pb::Lane::Bulk, 9999)).await.is_ok()
        })
        .await,
        "accepting again once space frees"
    );
    s.shutdown().await;
}
