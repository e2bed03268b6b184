//! Restarts: graceful with a backlog, and SIGKILL of the real binary while
//! clients stream acknowledged enqueues.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailspool::harness::child::ServerProcess;
use mailspool::pb;
use mailspool::pb::mail_queue_client::MailQueueClient;
use tokio::process::Command;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_the_backlog_which_then_drains() {
    let peer = SmtpPeer::start(Mode::Defer).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), Some(peer.url()))).await;
    let requests: Vec<_> = (0..300).map(|i| request(&format!("backlog {i}"))).collect();
    let results = s.enqueue_batch(requests).await;
    let ids: HashSet<String> = results.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(ids.len(), 300);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            s.stats().await.retried_total >= 1
        })
        .await
    );
    let s = s.restart().await;
    let st = s.stats().await;
    assert_eq!(
        (st.queued, st.enqueued_total),
        (300, 300),
        "backlog and counters survive"
    );
    assert!(
        st.retried_total >= 1,
        "the retry count survives the restart"
    );
    peer.set_mode(Mode::Accept);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            peer.received_count() >= 300
        })
        .await,
        "backlog drains after restart"
    );
    let got: HashSet<String> = peer.received().into_iter().map(|m| m.message_id).collect();
    assert_eq!(got, ids);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.stats().await.queued == 0
        })
        .await
    );
    assert_eq!(s.stats().await.delivered_total, 300);
    s.shutdown().await;
}

/// Starts the real binary, as a child process, on 127.0.0.1:0.
async fn spawn_server(dir: &std::path::Path, relay: &str) -> ServerProcess {
    spawn_server_with(Command::new(binary()), dir, relay).await
}

async fn spawn_server_with(command: Command, dir: &std::path::Path, relay: &str) -> ServerProcess {
    let extra = SERVER_ARGS;
    tokio::time::timeout(
        Duration::from_secs(30),
        ServerProcess::start_with(command, dir, relay, &extra),
    )
    .await
    .expect("mailspool starts within 30 s")
    .expect("mailspool starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_enqueueing_loses_no_acknowledged_message() {
    let peer = SmtpPeer::start(Mode::AcceptAfter(Duration::from_millis(2))).await;
    let dir = tempdir();
    let server = spawn_server(dir.path(), &peer.url()).await;
    let url = server.url.clone();
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| stream_enqueues(url.clone(), format!("c{c}"), acked.clone(), stop.clone()))
        .collect();
    // Kill once a good number of enqueues were acknowledged (and some delivered).
    assert!(
        wait_until(Duration::from_secs(30), || async {
            acked.lock().unwrap().len() >= 1500
        })
        .await
    );
    server.kill().await.expect("SIGKILL");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let delivered_before_restart = peer.received_count();

    let server = spawn_server(dir.path(), &peer.url()).await;
    let all_delivered = wait_until(Duration::from_secs(60), || async {
        let got: HashSet<String> = peer.received().into_iter().map(|m| m.message_id).collect();
        acked.is_subset(&got)
    })
    .await;
    let received = peer.received();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &received {
        *counts.entry(m.message_id.as_str()).or_default() += 1;
    }
    let missing = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .count();
    let twice = counts.values().filter(|&&n| n > 1).count();
    println!(
        "crash test: {} acknowledged, {delivered_before_restart} delivered before SIGKILL, {} delivered in all, {missing} missing, {twice} delivered twice",
        acked.len(),
        received.len()
    );
    assert!(
        all_delivered,
        "{missing} acknowledged messages were not delivered after the restart"
    );
    // SIGTERM: graceful stop, exit code 0.
    server
        .stop()
        .await
        .expect("SIGTERM should stop the server with exit code 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_keeps_every_message_and_status() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.retry_base_ms = 600_000;
    cfg.retry_cap_ms = 600_000;
    let s = TestServer::start(cfg).await;
    let requests = (0..1000).map(|i| request(&format!("churn {i}"))).collect();
    let done = s.enqueue_batch(requests).await;
    s.wait_delivered(1000).await;
    peer.set_mode(Mode::Defer);
    let mut waiting = Vec::new();
    for i in 0..10 {
        waiting.push(
            s.enqueue(request(&format!("waiting {i}")))
                .await
                .unwrap()
                .id,
        );
    }
    // The first is deferred (451 4.3.0: an attempt); the relay backs off,
    // so the others wait without attempts.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            s.get(&waiting[0]).await.unwrap().attempts >= 1
        })
        .await
    );
    let config = s.config.clone();
    s.shutdown().await;

    let c = mailspool::spool::compact::compact(dir.path()).unwrap();
    assert!(c.after <= c.before, "{c:?}");
    // Compacting twice is harmless.
    mailspool::spool::compact::compact(dir.path()).unwrap();

    let s = TestServer::start(config).await;
    let st = s.stats().await;
    assert_eq!(
        (st.queued, st.delivered_total, st.enqueued_total),
        (10, 1000, 1010)
    );
    assert_eq!(
        s.get(&done[0].id).await.unwrap().state(),
        pb::MessageState::Delivered
    );
    let m = s.get(&waiting[0]).await.unwrap();
    assert_eq!(m.state(), pb::MessageState::Queued);
    assert!(m.attempts >= 1);
    // A running server's spool cannot be compacted.
    let err = mailspool::spool::compact::compact(dir.path()).unwrap_err();
    assert!(err.to_string().contains("stop the server"), "{err}");
    s.shutdown().await;
}

/// The short form of `mailspool torture` (the long form: `--cycles 50`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_short_form_loses_nothing() {
    let report = mailspool::harness::torture::run(mailspool::harness::torture::TortureArgs {
        cycles: 4,
        power_cuts: 0,
        max_run_ms: 700,
        clients: 4,
        server_bin: Some(binary().into()),
        drain_timeout_secs: 60,
    })
    .await
    .unwrap();
    println!("{report:?}");
    assert!(
        report.acknowledged > 100,
        "the clients made progress: {report:?}"
    );
    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(report.delivered_never_sent, 0, "{report:?}");
    assert!(
        report.delivered + report.dead_5xx >= report.acknowledged,
        "{report:?}"
    );
    // Counted per recipient: each acknowledged one delivered or bounced.
    assert_eq!(report.recipients_acknowledged, 3 * report.acknowledged);
    assert_eq!(report.recipients_missing, 0, "{report:?}");
    assert_eq!(
        report.recipients_delivered + report.recipients_bounced,
        report.recipients_acknowledged,
        "{report:?}"
    );
}

/// libfaketime, to start the server with its wall clock an hour behind.
/// Preloaded into the server itself (not through the `faketime` wrapper,
/// which forks: killing the wrapper would leave the server running).
fn faketime() -> std::path::PathBuf {
    let found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .collect();
    tool(&found, "faketime")
}

#[cfg_attr(
    not(have_faketime),
    ignore = "needs libfaketime: apt-get install faketime"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_an_hour_behind_after_a_restart_does_not_stall_the_backlog() {
    let faketime = faketime();
    // Messages in flight (the relay stalls) when the process dies...
    let peer = SmtpPeer::start(Mode::Stall).await;
    let dir = tempdir();
    let server = spawn_server(dir.path(), &peer.url()).await;
    let url = server.url.clone();
    let mut client = MailQueueClient::connect(url.clone()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            client
                .enqueue(request(&format!("clock {i}")))
                .await
                .unwrap()
                .into_inner()
                .message_id,
        );
    }
    server.kill().await.unwrap();
    // ...are due at once after a restart whose wall clock is an hour behind.
    peer.set_mode(Mode::Accept);
    let mut cmd = Command::new(binary());
    cmd.env("LD_PRELOAD", faketime)
        .env("FAKETIME", "-1h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let server = spawn_server_with(cmd, dir.path(), &peer.url()).await;
    let delivered = wait_until(Duration::from_secs(20), || async {
        let got: HashSet<String> = peer.received().into_iter().map(|m| m.message_id).collect();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    let _ = server.kill().await;
    assert!(
        delivered,
        "the backlog stalled behind a clock that went back an hour"
    );
}
