//! Durability under the orderings a storage review found: each test puts the
//! spool on LazyFs (`mailspool::harness::lazyfs`: unsynced bytes *and* unsynced
//! directory entries are undone at a cut; faults injected on chosen files)
//! and drives the real server. A cut is either SIGKILL of a child server
//! plus `crash()`, or, for an in-process server, `freeze()` (nothing after
//! it becomes durable), a shutdown, then `crash()`: a power cut at the
//! moment of the freeze.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailspool::harness::child::ServerProcess;
use mailspool::harness::lazyfs::{self, Fault, FaultOp, Mounted};
use mailspool::pb;
use mailspool::pb::mail_queue_client::MailQueueClient;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

/// A fresh LazyFs (the tests that use it are ignored where FUSE is missing).
fn lazy() -> (Mounted, tempfile::TempDir) {
    assert!(
        lazyfs::available(),
        "/dev/fuse and fusermount3 are missing: install the Debian package `fuse3`"
    );
    let mnt = tempdir();
    let fs = lazyfs::mount(mnt.path()).expect("mount LazyFs");
    (fs, mnt)
}

/// A power cut at this moment for an in-process server: nothing more
/// becomes durable, the server stops, unsynced bytes and entries go.
async fn cut(server: TestServer, fs: &Mounted) {
    fs.freeze();
    server.shutdown().await;
    fs.crash();
}

fn segment_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("spool/segments"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .count()
        })
        .unwrap_or(0)
}

fn subjects(peer: &SmtpPeer) -> HashSet<String> {
    peer.received().into_iter().map(|m| m.subject).collect()
}

async fn wait_received(peer: &SmtpPeer, want: &HashSet<String>) -> bool {
    wait_until(Duration::from_secs(60), || async {
        want.is_subset(&subjects(peer))
    })
    .await
}

async fn pause(s: &TestServer) {
    s.admin
        .clone()
        .pause_delivery(pb::PauseDeliveryRequest { lanes: vec![] })
        .await
        .unwrap();
}

async fn resume(s: &TestServer) {
    s.admin
        .clone()
        .resume_delivery(pb::ResumeDeliveryRequest { lanes: vec![] })
        .await
        .unwrap();
}

async fn enqueue_all(s: &TestServer, tag: &str, n: usize) -> HashSet<String> {
    let mut subjects = HashSet::new();
    for i in 0..n {
        let subject = format!("{tag}-{i}");
        s.enqueue(request(&subject)).await.expect("acknowledged");
        subjects.insert(subject);
    }
    subjects
}

/// Finding 1: a retry moves a straggler's body to the active segment and
/// the old segment is deleted; the moved bodies must be durable first.
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relocated_retries_survive_a_power_cut() {
    let (fs, _mnt) = lazy();
    let data = fs.path().join("data");
    let peer = SmtpPeer::start(Mode::DeferMailbox).await;
    let mut cfg = config(&data, Some(peer.url()));
    cfg.max_attempts = 100_000;
    let s = TestServer::start(cfg.clone()).await;
    pause(&s).await;
    let want = enqueue_all(&s, "moved", 50).await;
    // A restart starts a new active segment: the 50 are stragglers now.
    let s = s.restart().await;
    assert_eq!(segment_files(&data), 2);
    resume(&s).await;
    // Each 450 retries its message, which moves it; the emptied old
    // segment is deleted once a flush covers the moves.
    let moved = wait_until(Duration::from_secs(30), || async {
        segment_files(&data) == 1 && s.stats().await.retried_total >= 50
    })
    .await;
    assert!(
        moved,
        "the old segment was never emptied: {:?}",
        s.stats().await
    );
    cut(s, &fs).await;

    peer.set_mode(Mode::Accept);
    let s = TestServer::start(cfg).await;
    let all = wait_received(&peer, &want).await;
    let stats = s.stats().await;
    s.shutdown().await;
    assert!(all, "lost: {:?}", want.difference(&subjects(&peer)));
    assert_eq!(stats.quarantined, 0, "{stats:?}");
}

/// What a client sends for `key` (the same bytes every time).
fn keyed(key: &str) -> pb::EnqueueRequest {
    with_key(request(key), key)
}

/// Finding 2: after a cut, a client re-sends with the same idempotency key,
/// as the README tells it to; every key that answers OK (fresh or
/// duplicate) names a message that is delivered.
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sent_again_after_power_cuts_are_all_delivered() {
    let (fs, _mnt) = lazy();
    let data = fs.path().join("data");
    let peer = SmtpPeer::start(Mode::Accept).await;
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut lost_files = 0;
    for cycle in 0..3u64 {
        let server = ServerProcess::start(binary().as_ref(), &data, &peer.url(), &SERVER_ARGS)
            .await
            .expect("server starts on LazyFs");
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..6)
            .map(|c| {
                let (url, sent, acked, stop) = (
                    server.url.clone(),
                    sent.clone(),
                    acked.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let Ok(mut q) = MailQueueClient::connect(url).await else {
                        return;
                    };
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let keys: Vec<String> = (0..if n % 2 == 0 { 8 } else { 1 })
                            .map(|i| format!("k{cycle}-{c}-{n}-{i}"))
                            .collect();
                        sent.lock().unwrap().extend(keys.iter().cloned());
                        let requests = keys.iter().map(|k| keyed(k)).collect();
                        let Ok(r) = q.enqueue_batch(pb::EnqueueBatchRequest { requests }).await
                        else {
                            return;
                        };
                        let mut a = acked.lock().unwrap();
                        for (k, r) in keys.iter().zip(r.into_inner().results) {
                            if r.code == 0 {
                                a.insert(k.clone(), r.message_id);
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + 200 * cycle)).await;
        server.kill().await.unwrap();
        lost_files += fs.crash();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
    }
    assert!(lost_files > 0, "the cuts dropped unsynced writes");
    let server = ServerProcess::start(binary().as_ref(), &data, &peer.url(), &SERVER_ARGS)
        .await
        .expect("restart after the last cut");
    let mut q = MailQueueClient::connect(server.url.clone()).await.unwrap();
    // Every key sent is sent again, acknowledged or not.
    let sent = sent.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let mut answered: HashMap<String, String> = HashMap::new();
    for chunk in sent.chunks(100) {
        let requests = chunk.iter().map(|k| keyed(k)).collect();
        let results = q
            .enqueue_batch(pb::EnqueueBatchRequest { requests })
            .await
            .unwrap()
            .into_inner()
            .results;
        for (k, r) in chunk.iter().zip(results) {
            assert_eq!(r.code, 0, "{k}: {r:?}");
            answered.insert(k.clone(), r.message_id);
        }
    }
    for (k, mid) in &acked {
        assert_eq!(
            &answered[k], mid,
            "{k}: an acknowledged key names its first message"
        );
    }
    let want: HashSet<String> = answered.values().cloned().collect();
    let all = wait_until(Duration::from_secs(90), || async {
        let got: HashSet<String> = peer.received().into_iter().map(|m| m.message_id).collect();
        want.is_subset(&got)
    })
    .await;
    let got: HashSet<String> = peer.received().into_iter().map(|m| m.message_id).collect();
    let missing = want.difference(&got).count();
    println!(
        "keyed re-sends after 3 cuts: {} keys sent, {} acknowledged, {missing} answered OK but never delivered",
        sent.len(),
        acked.len()
    );
    assert!(all, "{missing} keys answered OK and were never delivered");

    // The events tell each change as often as it became durable: one
    // `accepted` a message (a key sent again writes none), one `delivered`
    // (a delivery whose outcome a cut undid was not told; the one after it
    // is), nothing else, no message that does not exist. The relay may
    // have had a message more than once: those are counted, not told.
    let count = || async {
        let mut told: HashMap<(String, i32), usize> = HashMap::new();
        for e in crate::events::watch_all(&q, 0, &[]).await {
            *told.entry((e.message_id, e.r#type)).or_default() += 1;
        }
        told
    };
    let settled = wait_until(Duration::from_secs(20), || async {
        count().await.len() == 2 * want.len()
    })
    .await;
    let told = count().await;
    let accepted = pb::EventType::EventAccepted as i32;
    let delivered = pb::EventType::EventDelivered as i32;
    for ((mid, kind), n) in &told {
        assert!(
            want.contains(mid),
            "an event of a message that is not: {mid}"
        );
        assert!(*kind == accepted || *kind == delivered, "{mid}: {kind}");
        assert_eq!(*n, 1, "{mid}: event {kind} told {n} times");
    }
    assert!(settled, "{} of {} events", told.len(), 2 * want.len());
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    for m in peer.received() {
        *deliveries.entry(m.message_id).or_default() += 1;
    }
    let again: usize = deliveries.values().map(|n| n - 1).sum();
    println!(
        "events after 3 cuts: {} messages, each accepted and delivered once; the relay had {again} of them again",
        want.len()
    );
    server.stop().await.unwrap();
}

/// Finding 4: a failed fsync is never followed by an acknowledgement of
/// what it covered, and the server stops, saying why, with a non-zero exit.
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acknowledged_and_stops_the_server() {
    let (fs, _mnt) = lazy();
    let data = fs.path().join("data");
    let peer = SmtpPeer::start(Mode::Stall).await;
    let mut want = HashSet::new();
    for (round, file) in [".seg", "db"].into_iter().enumerate() {
        let mut server = ServerProcess::start(binary().as_ref(), &data, &peer.url(), &SERVER_ARGS)
            .await
            .expect("server starts");
        let mut q = MailQueueClient::connect(server.url.clone()).await.unwrap();
        for i in 0..5 {
            let subject = format!("before-{round}-{i}");
            q.enqueue(request(&subject)).await.expect("acknowledged");
            want.insert(subject);
        }
        fs.inject(Fault {
            file: file.into(),
            op: FaultOp::Fsync,
            errno: libc::EIO,
            times: u32::MAX,
        });
        let during = format!("during-{round}");
        match q.enqueue(request(&during)).await {
            // UNAVAILABLE with the reason, or the connection closing as the
            // process exits: either way, not an acknowledgement.
            Err(e) => assert!(
                e.code() == tonic::Code::Unknown || e.message().contains("fsync"),
                "{e:?}"
            ),
            // sled's fsync is not on an Enqueue's path (the segment's
            // journal is its record): answered, it must be delivered; the
            // failed index fsync that follows stops the server.
            Ok(_) if file == "db" => {
                want.insert(during);
            }
            Ok(_) => panic!("acknowledged after a failed fsync of its segment"),
        }
        let status = server
            .exited(Duration::from_secs(20))
            .await
            .expect("the server exits by itself");
        assert!(!status.success(), "{status}");
        let log = server.log().join("\n");
        assert!(log.contains("SpoolFailed"), "{log}");
        assert!(log.contains("start mailspool again"), "{log}");
        fs.clear_faults();
    }
    // From disk again: everything acknowledged before the failures.
    peer.set_mode(Mode::Accept);
    let server = ServerProcess::start(binary().as_ref(), &data, &peer.url(), &SERVER_ARGS)
        .await
        .expect("restarts from disk");
    let all = wait_received(&peer, &want).await;
    server.stop().await.unwrap();
    assert!(all, "lost: {:?}", want.difference(&subjects(&peer)));
}

/// Finding 5: a write that fails halfway (ENOSPC), a segment that cannot be
/// created, a directory fsync that fails: later bodies are still where
/// their index says, and segments keep rotating.
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_and_creates_keep_offsets_true() {
    let (fs, _mnt) = lazy();
    let data = fs.path().join("data");
    let peer = SmtpPeer::start(Mode::Accept).await;
    let mut cfg = config(&data, Some(peer.url()));
    cfg.segment_bytes = 4096;
    let s = TestServer::start(cfg).await;
    pause(&s).await;
    let mut want = enqueue_all(&s, "a", 3).await;
    fs.inject(Fault {
        file: ".seg".into(),
        op: FaultOp::PartialWrite,
        errno: libc::ENOSPC,
        times: 1,
    });
    fs.inject(Fault {
        file: ".seg".into(),
        op: FaultOp::Create,
        errno: libc::EIO,
        times: 1,
    });
    let e = s.enqueue(request("refused")).await.expect_err("no space");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    want.extend(enqueue_all(&s, "b", 10).await);
    let before = segment_files(&data);
    fs.inject(Fault {
        file: "segments".into(),
        op: FaultOp::FsyncDir,
        errno: libc::EIO,
        times: 1,
    });
    // 2 KiB bodies in 4 KiB segments: several rotations, one failing.
    for i in 0..8 {
        let mut r = request(&format!("c-{i}"));
        r.email.as_mut().unwrap().text_body = "x".repeat(2048);
        s.enqueue(r).await.expect("acknowledged");
        want.insert(format!("c-{i}"));
    }
    assert!(
        fs.faults_hit() >= 3,
        "the faults were hit: {}",
        fs.faults_hit()
    );
    assert!(
        segment_files(&data) > before + 1,
        "rotation goes on after a failed create ({before} → {})",
        segment_files(&data)
    );
    resume(&s).await;
    let all = wait_received(&peer, &want).await;
    let stats = s.stats().await;
    s.shutdown().await;
    assert!(all, "lost: {:?}", want.difference(&subjects(&peer)));
    assert_eq!(stats.quarantined, 0, "{stats:?}");
    assert!(!subjects(&peer).contains("refused"));
}

/// Finding 6: `mailspool compact` makes sled's blobs (a 2 MiB dead letter
/// lives there) durable before it swaps the directories and deletes the
/// old copy.
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_then_a_power_cut_keeps_a_large_dead_letter() {
    let (fs, _mnt) = lazy();
    let data = fs.path().join("data");
    let peer = SmtpPeer::start(Mode::Reject).await;
    let mut cfg = config(&data, Some(peer.url()));
    // Requeued mail to a 5.1.1 address would be suppressed: not tested here.
    cfg.suppress_classes = Vec::new();
    let s = TestServer::start(cfg.clone()).await;
    let mut r = request("large");
    r.email.as_mut().unwrap().text_body = "0123456789abcdef\r\n".repeat(2 << 16);
    let id = s.enqueue(r).await.unwrap().id;
    s.wait_state(&id, pb::MessageState::Dead).await;
    s.shutdown().await;

    let done = mailspool::spool::compact::compact(&data).expect("compact");
    assert!(done.after > 0);
    fs.crash();

    peer.set_mode(Mode::Accept);
    let s = TestServer::start(cfg).await;
    s.wait_state(&id, pb::MessageState::Dead).await;
    s.admin
        .clone()
        .requeue_dead(pb::RequeueDeadRequest {
            ids: vec![id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let ok = wait_until(Duration::from_secs(30), || async {
        peer.received().iter().any(|m| m.subject == "large")
    })
    .await;
    s.shutdown().await;
    assert!(ok, "the dead letter did not survive compaction and a cut");
    let m = peer
        .received()
        .into_iter()
        .find(|m| m.subject == "large")
        .unwrap();
    assert!(
        m.raw.len() > 2 << 20,
        "its whole body: {} bytes",
        m.raw.len()
    );
}

/// Finding 2, the operator's path: RequeueDead deletes the dead letter's
/// copy in the same batch that points at its new body; once answered, a
/// cut loses neither.
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_dead_then_a_power_cut_loses_nothing() {
    let (fs, _mnt) = lazy();
    let data = fs.path().join("data");
    let peer = SmtpPeer::start(Mode::Reject).await;
    let mut cfg = config(&data, Some(peer.url()));
    // Requeued mail to a 5.1.1 address would be suppressed: not tested here.
    cfg.suppress_classes = Vec::new();
    let s = TestServer::start(cfg.clone()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.enqueue(request(&format!("dead-{i}"))).await.unwrap().id);
    }
    for id in &ids {
        s.wait_state(id, pb::MessageState::Dead).await;
    }
    pause(&s).await;
    let r = s
        .admin
        .clone()
        .requeue_dead(pb::RequeueDeadRequest {
            ids: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.affected, 5, "{r:?}");
    cut(s, &fs).await;

    peer.set_mode(Mode::Accept);
    let s = TestServer::start(cfg).await;
    resume(&s).await;
    let want: HashSet<String> = (0..5).map(|i| format!("dead-{i}")).collect();
    let all = wait_received(&peer, &want).await;
    let stats = s.stats().await;
    s.shutdown().await;
    assert!(all, "lost: {:?}", want.difference(&subjects(&peer)));
    assert_eq!(stats.quarantined, 0, "{stats:?}");
}

/// Finding 7: an I/O error reading a body is not damage: the message
/// stays queued with its body, and is delivered once the disk reads again.
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_read_error_keeps_the_message_and_its_body() {
    let (fs, _mnt) = lazy();
    let data = fs.path().join("data");
    let peer = SmtpPeer::start(Mode::Accept).await;
    let cfg = config(&data, Some(peer.url()));
    let s = TestServer::start(cfg.clone()).await;
    pause(&s).await;
    let id = s.enqueue(request("flaky-disk")).await.unwrap().id;
    // Reopened, so its reads reach the filesystem rather than a cache.
    let s = s.restart().await;
    fs.inject(Fault {
        file: ".seg".into(),
        op: FaultOp::Read,
        errno: libc::EIO,
        times: u32::MAX,
    });
    resume(&s).await;
    let hit = wait_until(Duration::from_secs(20), || async {
        s.get(&id)
            .await
            .is_ok_and(|m| m.last_error.contains("could not be read"))
    })
    .await;
    assert!(
        hit,
        "{:?} (faults hit: {})",
        s.get(&id).await,
        fs.faults_hit()
    );
    assert_eq!(s.get(&id).await.unwrap().state(), pb::MessageState::Queued);
    assert_eq!(s.stats().await.quarantined, 0);
    fs.clear_faults();
    s.admin
        .clone()
        .retry_now(pb::RetryNowRequest {
            ids: vec![id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let want = HashSet::from(["flaky-disk".to_string()]);
    let ok = wait_received(&peer, &want).await;
    s.shutdown().await;
    assert!(ok, "delivered once the disk reads again");
}

/// Finding 9: the first start makes a fresh data directory (or finds one
/// an installer made a moment ago, never fsynced); a cut soon after must
/// not undo the mkdir and everything acknowledged with it.
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_directory_survives_a_power_cut() {
    let (fs, _mnt) = lazy();
    let peer = SmtpPeer::start(Mode::Accept).await;
    let made_by_us: PathBuf = fs.path().join("srv/mailspool/data");
    let made_before = fs.path().join("installed");
    std::fs::create_dir(&made_before).unwrap();
    for data in [made_by_us, made_before] {
        let cfg = config(&data, Some(peer.url()));
        let s = TestServer::start(cfg.clone()).await;
        pause(&s).await;
        let tag = data.file_name().unwrap().to_string_lossy().to_string();
        let want = enqueue_all(&s, &tag, 20).await;
        cut(s, &fs).await;

        let s = TestServer::start(cfg).await;
        resume(&s).await;
        let all = wait_received(&peer, &want).await;
        s.shutdown().await;
        assert!(all, "{tag} lost: {:?}", want.difference(&subjects(&peer)));
    }
}
