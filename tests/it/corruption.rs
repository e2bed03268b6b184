//! Bad bytes on disk: a message whose body fails its checksum is moved to
//! the quarantine, counted, and never stops the others.

use std::time::Duration;

use mailspool::pb;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_body_is_quarantined_and_the_rest_flows() {
    // First run: the relay stalls, so the messages stay queued, never attempted.
    let peer = SmtpPeer::start(Mode::Stall).await;
    let dir = tempdir();
    let cfg = config(dir.path(), Some(peer.url()));
    let s = TestServer::start(cfg.clone()).await;
    let mut sent = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        sent.push(s.enqueue(request(name)).await.unwrap());
    }
    s.shutdown().await;

    // Flip one byte of bravo's body in its segment file.
    let segs = dir.path().join("spool/segments");
    let mut flipped = false;
    for e in std::fs::read_dir(&segs).unwrap().flatten() {
        let mut bytes = std::fs::read(e.path()).unwrap();
        let needle = b"body of bravo";
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at] ^= 0x20;
            std::fs::write(e.path(), bytes).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "bravo's body not found in {}", segs.display());

    peer.set_mode(Mode::Accept);
    let s = TestServer::start(cfg).await;
    s.wait_state(&sent[0].id, pb::MessageState::Delivered).await;
    s.wait_state(&sent[2].id, pb::MessageState::Delivered).await;
    let m = s
        .wait_state(&sent[1].id, pb::MessageState::Quarantined)
        .await;
    assert!(m.last_error.contains("quarantine"));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.stats().await.queued == 0
        })
        .await
    );
    let st = s.stats().await;
    assert_eq!((st.quarantined, st.delivered_total, st.dead), (1, 2, 0));
    let got: Vec<String> = peer.received().into_iter().map(|m| m.subject).collect();
    assert!(
        !got.contains(&"bravo".to_string()),
        "a corrupt message must not be sent: {got:?}"
    );
    // Counted once, and it stays quarantined across a restart.
    let s = s.restart().await;
    assert_eq!(s.stats().await.quarantined, 1);
    assert_eq!(
        s.get(&sent[1].id).await.unwrap().state(),
        pb::MessageState::Quarantined
    );
    s.shutdown().await;
}
