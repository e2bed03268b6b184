//! Power loss: the spool on LazyFs (`mailspool::harness::lazyfs`), which drops every
//! write not fsynced when a crash is simulated. Crashed repeatedly during
//! enqueue and delivery: no acknowledged message may be lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailspool::harness::child::ServerProcess;

use crate::support::lazyfs;
use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_during_enqueue_and_delivery_lose_nothing_acknowledged() {
    let mnt = tempdir();
    let fs = lazyfs::mount(mnt.path()).expect("mount LazyFs");
    let peer = SmtpPeer::start(Mode::AcceptAfter(Duration::from_millis(1))).await;
    let extra = SERVER_ARGS;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut lost_files = 0;
    for cycle in 0..5 {
        let server = ServerProcess::start(binary().as_ref(), mnt.path(), &peer.url(), &extra)
            .await
            .expect("server starts on LazyFs");
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                stream_enqueues(
                    server.url.clone(),
                    format!("p{cycle}-{c}"),
                    acked.clone(),
                    stop.clone(),
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(400 + 150 * cycle)).await;
        // The power cut: the process dies and every unsynced byte with it.
        server.kill().await.unwrap();
        lost_files += fs.crash();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the clients made progress: {}",
        acked.len()
    );
    assert!(
        lost_files > 0,
        "the crashes dropped unsynced writes (else this test proves nothing)"
    );
    let server = ServerProcess::start(binary().as_ref(), mnt.path(), &peer.url(), &extra)
        .await
        .expect("restart after the last cut");
    let all = wait_until(Duration::from_secs(60), || async {
        let got: HashSet<String> = peer.received().into_iter().map(|m| m.message_id).collect();
        acked.is_subset(&got)
    })
    .await;
    let got: HashSet<String> = peer.received().into_iter().map(|m| m.message_id).collect();
    let missing = acked.difference(&got).count();
    println!(
        "power loss: 5 cuts, {} acknowledged, {} delivered, {missing} missing, {lost_files} files lost unsynced writes, {} fsyncs",
        acked.len(),
        got.len(),
        fs.fsyncs()
    );
    let stats = mailspool::pb::queue_admin_client::QueueAdminClient::connect(server.url.clone())
        .await
        .unwrap()
        .queue_stats(mailspool::pb::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    server.stop().await.unwrap();
    assert!(all, "{missing} acknowledged messages lost to a power cut");
    // A message whose write the cut undid was never acknowledged: it is not
    // damage, and must not show up as quarantined.
    assert_eq!(stats.quarantined, 0, "{stats:?}");
}
