//! Webhooks through the real binary, to a receiver nobody here wrote: it
//! verifies every request with the Standard Webhooks reference library
//! (tests/peers/webhook_receiver.py). It goes down and comes back, answers
//! slowly, and mailspool is killed with SIGKILL in the middle: no event is
//! missing afterwards, each arrives in sequence order, and mail never
//! waits for the endpoint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use mailspool::harness::child::ServerProcess;
use mailspool::pb;
use mailspool::pb::mail_queue_client::MailQueueClient;
use mailspool::pb::queue_admin_client::QueueAdminClient;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

/// webhook_receiver.py on `port` (0: any); its port.
struct Receiver {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    secret_file: PathBuf,
}

impl Receiver {
    async fn start(dir: &Path, secret_file: &Path, port: u16) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/webhook_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--dir")
            .arg(dir)
            .arg("--secret-file")
            .arg(secret_file)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs tests/peers/webhook_receiver.py (pip install standardwebhooks)");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("the receiver prints its port")
            .unwrap()
            .expect("the receiver printed nothing: is standardwebhooks installed?");
        Receiver {
            child: Some(child),
            port: line.trim().parse().unwrap(),
            dir: dir.to_path_buf(),
            secret_file: secret_file.to_path_buf(),
        }
    }

    /// Down: the port refuses connections.
    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Back on the same port.
    async fn restart(&mut self) {
        self.stop().await;
        let again = Receiver::start(&self.dir, &self.secret_file, self.port).await;
        self.child = again.child;
    }

    fn set_delay(&self, secs: f64) {
        std::fs::write(self.dir.join("delay"), secs.to_string()).unwrap();
    }

    /// Every verified event received, in arrival order.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn sequences(&self) -> BTreeSet<u64> {
        self.events()
            .iter()
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect()
    }

    fn invalid(&self) -> String {
        std::fs::read_to_string(self.dir.join("invalid")).unwrap_or_default()
    }
}

struct Node {
    server: ServerProcess,
    queue: MailQueueClient<tonic::transport::Channel>,
    admin: QueueAdminClient<tonic::transport::Channel>,
}

async fn start(data: &Path, config: &Path) -> Node {
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend(SERVER_ARGS);
    let server = ServerProcess::start(binary().as_ref(), data, "", &args)
        .await
        .unwrap();
    Node {
        queue: MailQueueClient::connect(server.url.clone()).await.unwrap(),
        admin: QueueAdminClient::connect(server.url.clone()).await.unwrap(),
        server,
    }
}

impl Node {
    async fn enqueue(&self, n: usize, tag: &str) {
        let requests = (0..n).map(|i| request(&format!("{tag} {i}"))).collect();
        let r = self
            .queue
            .clone()
            .enqueue_batch(pb::EnqueueBatchRequest { requests })
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.results.iter().all(|r| r.code == 0 && !r.id.is_empty()),
            "{r:?}"
        );
    }

    async fn stats(&self) -> pb::QueueStatsResponse {
        self.admin
            .clone()
            .queue_stats(pb::QueueStatsRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

/// Waits until the receiver holds every sequence 1..=n.
async fn wait_all(rx: &Receiver, n: u64) {
    let ok = wait_until(Duration::from_secs(60), || async {
        rx.sequences().len() as u64 >= n
    })
    .await;
    let seqs = rx.sequences();
    assert!(ok, "{} of {n} events arrived", seqs.len());
    assert_eq!(seqs, (1..=n).collect::<BTreeSet<_>>());
}

#[cfg_attr(
    not(have_standardwebhooks),
    ignore = "needs Python's standardwebhooks (pip install standardwebhooks)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_an_outage_a_slow_endpoint_and_a_kill() {
    let dir = tempdir();
    let (data, hook_dir) = (dir.path().join("data"), dir.path().join("hook"));
    std::fs::create_dir_all(&hook_dir).unwrap();
    let key: [u8; 24] = rand::random();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let mut rx = Receiver::start(&hook_dir, &secret_file, 0).await;
    let config = dir.path().join("mailspool.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nname = \"crm\"\nurl = \"http://127.0.0.1:{}/hooks/mail\"\n\
             secret_file = \"{}\"\nmax_backoff_secs = 1\ntimeout_ms = 5000\n",
            rx.port,
            secret_file.display()
        ),
    )
    .unwrap();
    let node = start(&data, &config).await;

    // 20 messages into the outbox: accepted and delivered each.
    node.enqueue(20, "first").await;
    wait_all(&rx, 40).await;
    let first = rx.events();
    assert_eq!(first[0]["type"], "message.accepted");
    assert!(first.iter().any(|e| e["type"] == "message.delivered"));

    // The endpoint goes down: mail goes on, the endpoint falls behind.
    rx.stop().await;
    node.enqueue(20, "while down").await;
    let behind = wait_until(Duration::from_secs(30), || async {
        let s = node.stats().await;
        s.delivered_total == 40 && s.webhooks[0].state != "ok" && s.webhooks[0].lag_events > 0
    })
    .await;
    let w = node.stats().await.webhooks[0].clone();
    assert!(behind, "{w:?}");
    assert!(
        w.consecutive_failures >= 1 && !w.last_error.is_empty(),
        "{w:?}"
    );
    // Back: it catches up, in order, nothing missing.
    rx.restart().await;
    wait_all(&rx, 80).await;
    let caught_up = wait_until(Duration::from_secs(10), || async {
        let w = node.stats().await.webhooks[0].clone();
        w.state == "ok" && w.lag_events == 0
    })
    .await;
    assert!(caught_up, "{:?}", node.stats().await.webhooks);

    // A slow endpoint (0.3 s a request): mail is delivered at its own pace.
    rx.set_delay(0.3);
    node.enqueue(40, "slow").await;
    let delivered = wait_until(Duration::from_secs(30), || async {
        node.stats().await.delivered_total == 80
    })
    .await;
    let seen = rx.sequences().len();
    assert!(delivered);
    assert!(
        seen < 80 + 40,
        "the endpoint took {seen} events by the time 40 slow-hook messages were delivered: delivery waited for it"
    );
    rx.set_delay(0.02);

    // SIGKILL mailspool while it posts; restart it on the same spool.
    node.enqueue(30, "killed").await;
    let posting = wait_until(Duration::from_secs(60), || async {
        rx.sequences().len() > 125
    })
    .await;
    assert!(posting);
    node.server.kill().await.unwrap();
    rx.set_delay(0.0);
    let node = start(&data, &config).await;
    wait_all(&rx, 220).await;

    // Every request verified; first arrivals in sequence order; the
    // duplicates are the events since the last saved cursor.
    assert_eq!(rx.invalid(), "");
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for e in rx.events() {
        let s = e["sequence"].as_u64().unwrap();
        if seen.insert(s) {
            order.push(s);
        }
        assert_eq!(
            e["webhook_id"].as_str().unwrap().rsplit('_').next(),
            Some(s.to_string().as_str())
        );
    }
    assert_eq!(order, (1..=220).collect::<Vec<_>>());
    let duplicates = rx.events().len() - 220;
    println!("webhook duplicates after the SIGKILL: {duplicates}");

    // The receiver does verify: a request signed with another key is refused.
    let forged = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/", rx.port))
        .header("webhook-id", "evt_x_1")
        .header(
            "webhook-timestamp",
            (mailspool::model::wall_ms() / 1000).to_string(),
        )
        .header(
            "webhook-signature",
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert!(rx.invalid().contains("Verification"), "{}", rx.invalid());
    node.server.stop().await.unwrap();
}
