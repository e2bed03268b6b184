//! Interop with Postfix's smtp-sink, a real SMTP peer. Under CI=true a
//! missing smtp-sink is a failure; elsewhere these tests say so and pass.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mailspool::pb;
use tokio::process::{Child, Command};

use crate::support::*;

pub(crate) fn smtp_sink() -> PathBuf {
    tool(
        &["/usr/sbin/smtp-sink".into(), "/usr/bin/smtp-sink".into()],
        "postfix",
    )
}

/// Starts smtp-sink on a free loopback port with extra flags; dumps
/// accepted messages into `dump`.
pub(crate) async fn start_sink(bin: &Path, dump: &Path, flags: &[&str]) -> (Child, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    (start_sink_on(bin, dump, flags, port).await, port)
}

/// As `start_sink`, on a given port (a relay coming back where it was).
pub(crate) async fn start_sink_on(bin: &Path, dump: &Path, flags: &[&str], port: u16) -> Child {
    std::fs::create_dir_all(dump).unwrap();
    set_mode_777(dump);
    let mut cmd = Command::new(bin);
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd
        .arg("-d")
        .arg(format!("{}/%H%M%S.", dump.display()))
        .args(flags)
        .arg(format!("127.0.0.1:{port}"))
        .arg("64")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start smtp-sink");
    let up = wait_until(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "smtp-sink did not start listening");
    child
}

fn set_mode_777(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
}

pub(crate) fn dumped_message_ids(dump: &Path) -> Vec<String> {
    std::fs::read_dir(dump)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("Message-ID:"))
                        .map(|v| {
                            v.trim()
                                .trim_start_matches('<')
                                .trim_end_matches('>')
                                .to_string()
                        })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg_attr(
    not(have_smtp_sink),
    ignore = "needs smtp-sink: apt-get install postfix"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_to_smtp_sink() {
    let bin = smtp_sink();
    let dir = tempdir();
    let dump = dir.path().join("dump");
    let (_sink, port) = start_sink(&bin, &dump, &[]).await;
    let s = TestServer::start(config(
        &dir.path().join("data"),
        Some(format!("smtp://127.0.0.1:{port}")),
    ))
    .await;
    let requests = (0..200).map(|i| request(&format!("sink {i}"))).collect();
    let results = s.enqueue_batch(requests).await;
    s.wait_delivered(200).await;
    let mut want: Vec<String> = results.into_iter().map(|r| r.message_id).collect();
    want.sort();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            dumped_message_ids(&dump).len() == 200
        })
        .await
    );
    let mut got = dumped_message_ids(&dump);
    got.sort();
    assert_eq!(got, want);
    s.shutdown().await;
}

#[cfg_attr(
    not(have_smtp_sink),
    ignore = "needs smtp-sink: apt-get install postfix"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sink_hard_reject_is_dead_soft_reject_and_disconnect_retry() {
    let bin = smtp_sink();
    let dir = tempdir();
    for (flags, want_dead, name) in [
        (&["-f", "rcpt"][..], true, "hard reject at RCPT"),
        (&["-r", "data"][..], false, "soft reject at DATA"),
        (&["-q", "data"][..], false, "disconnect at DATA"),
    ] {
        let sub = dir.path().join(name.replace(' ', "_"));
        let (mut sink, port) = start_sink(&bin, &sub.join("dump"), flags).await;
        let s = TestServer::start(config(
            &sub.join("data"),
            Some(format!("smtp://127.0.0.1:{port}")),
        ))
        .await;
        let r = s.enqueue(request(name)).await.unwrap();
        if want_dead {
            let m = s.wait_state(&r.id, pb::MessageState::Dead).await;
            assert!(m.last_error.starts_with('5'), "{name}: {}", m.last_error);
        } else {
            let ok = wait_until(Duration::from_secs(10), || async {
                s.get(&r.id).await.unwrap().attempts >= 2
            })
            .await;
            let m = s.get(&r.id).await.unwrap();
            assert!(ok, "{name}: retried; got {m:?}");
            assert_ne!(m.state(), pb::MessageState::Dead, "{name}: {m:?}");
            assert!(!m.last_error.is_empty(), "{name}");
            assert!(s.stats().await.retried_total >= 1);
        }
        s.shutdown().await;
        let _ = sink.kill().await;
    }
}
