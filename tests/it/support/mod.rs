//! Shared helpers: a real server on 127.0.0.1:0 with a temporary spool,
//! gRPC clients, request builders, and waiting on a condition with a deadline.

pub use mailspool::harness::lazyfs;
pub use mailspool::harness::peer as smtp;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailspool::config::RelayTls;
use mailspool::pb;
use mailspool::pb::mail_queue_client::MailQueueClient;
use mailspool::pb::queue_admin_client::QueueAdminClient;
use mailspool::{Config, Server, ServerHandle};
use tonic::transport::Channel;

/// Settings for a test server: fast retries, short grace, loopback relay.
pub fn config(dir: &Path, relay: Option<String>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        relay,
        relay_tls: Some(RelayTls::None),
        relay_max_connections: 4,
        retry_base_ms: 50,
        retry_cap_ms: 200,
        smtp_timeout_ms: 5_000,
        shutdown_grace_ms: 500,
        cache_capacity_bytes: 16 << 20,
        // Build machines can be short of disk; the limits have their own tests.
        min_free_bytes: 1 << 20,
        metrics_listen: "127.0.0.1:0".into(),
        // Tests that wait for OK do not wait out the production dwell.
        congestion_clear_after_secs: 1,
        ..Config::default()
    }
}

/// The flags of `config()` for a server started as a child process.
pub const SERVER_ARGS: [&str; 8] = [
    "--retry-base-ms",
    "50",
    "--retry-cap-ms",
    "200",
    "--relay-max-connections",
    "4",
    "--min-free-bytes",
    "1048576",
];

pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub queue: MailQueueClient<Channel>,
    pub admin: QueueAdminClient<Channel>,
    pub config: Config,
}

impl TestServer {
    pub async fn start(mut config: Config) -> TestServer {
        config.validate().expect("test config is valid");
        let handle = Server::start(config.clone()).await.expect("server starts");
        let url = format!("http://{}", handle.addr);
        let channel = Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .expect("connect");
        TestServer {
            handle: Some(handle),
            queue: MailQueueClient::new(channel.clone()),
            admin: QueueAdminClient::new(channel),
            config,
        }
    }

    /// Graceful shutdown, then a new server on the same spool.
    pub async fn restart(mut self) -> TestServer {
        self.handle.take().unwrap().shutdown().await;
        TestServer::start(self.config.clone()).await
    }

    pub async fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// Pauses delivery of every lane: what is enqueued stays queued.
    pub async fn pause_all(&self) {
        self.admin
            .clone()
            .pause_delivery(pb::PauseDeliveryRequest { lanes: vec![] })
            .await
            .unwrap();
    }

    /// The HTTP listener (`/metrics`, the console).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().unwrap().metrics_addr.unwrap()
    }

    pub async fn stats(&self) -> pb::QueueStatsResponse {
        self.admin
            .clone()
            .queue_stats(pb::QueueStatsRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn get(&self, id: &str) -> Result<pb::GetMessageResponse, tonic::Status> {
        self.queue
            .clone()
            .get_message(pb::GetMessageRequest { id: id.to_string() })
            .await
            .map(|r| r.into_inner())
    }

    /// EnqueueBatch that must succeed as a call; the per-item results.
    pub async fn enqueue_batch(&self, requests: Vec<pb::EnqueueRequest>) -> Vec<pb::EnqueueResult> {
        self.queue
            .clone()
            .enqueue_batch(pb::EnqueueBatchRequest { requests })
            .await
            .unwrap()
            .into_inner()
            .results
    }

    /// Waits until `delivered_total` reaches `n`.
    pub async fn wait_delivered(&self, n: u64) {
        let ok = wait_until(Duration::from_secs(60), || async {
            self.stats().await.delivered_total >= n
        })
        .await;
        assert!(
            ok,
            "{n} deliveries expected; stats {:?}",
            self.stats().await
        );
    }

    pub async fn enqueue(
        &self,
        req: pb::EnqueueRequest,
    ) -> Result<pb::EnqueueResponse, tonic::Status> {
        self.queue
            .clone()
            .enqueue(req)
            .await
            .map(|r| r.into_inner())
    }

    /// Waits until GetMessage reports `state` for `id`.
    pub async fn wait_state(&self, id: &str, state: pb::MessageState) -> pb::GetMessageResponse {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.get(id).await;
            if let Ok(m) = &m {
                if m.state() == state {
                    return m.clone();
                }
            }
            assert!(
                Instant::now() < end,
                "message {id} never reached {state:?}; last seen {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A valid request with this subject.
pub fn request(subject: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        email: Some(pb::Email {
            from: "Alerts <alerts@example.com>".into(),
            to: vec!["user@example.org".into()],
            subject: subject.into(),
            text_body: format!("body of {subject}"),
            ..Default::default()
        }),
        lane: pb::Lane::Normal as i32,
        ..Default::default()
    }
}

pub fn with_lane(mut r: pb::EnqueueRequest, lane: pb::Lane) -> pb::EnqueueRequest {
    r.lane = lane as i32;
    r
}

pub fn with_key(mut r: pb::EnqueueRequest, key: &str) -> pb::EnqueueRequest {
    r.idempotency_key = key.into();
    r
}

/// Polls `condition` until it holds or `deadline` passes. Returns whether it held.
pub async fn wait_until<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A file a test needs from the system (the first of `candidates` that
/// exists). Such a test is ignored where the build did not find its tool
/// (`build.rs`, cfg `have_*`), so when it runs the tool must be here: a
/// missing one (only possible under CI=true) fails with what to install.
pub fn tool(candidates: &[PathBuf], package: &str) -> PathBuf {
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: install the Debian package `{package}`",
                candidates[0].display()
            )
        })
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mailspool-it")
        .tempdir()
        .unwrap()
}

/// `.eml` files in the outbox.
pub fn outbox_files(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("outbox"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default()
}

/// The mailspool binary built for this test run.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mailspool")
}

/// Acknowledged Message-IDs, shared between streaming clients and the test.
pub type Acked = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// A client that streams unary enqueues and, every third call, a batch of
/// five, each with an idempotency key made from `tag`, recording what is
/// acknowledged, until `stop` or the first error (the server died).
pub fn stream_enqueues(
    url: String,
    tag: String,
    acked: Acked,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut client) = MailQueueClient::connect(url).await else {
            return;
        };
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let key = format!("{tag}-{n}");
            let done: Vec<String> = if n % 3 == 0 {
                let requests = (0..5)
                    .map(|i| with_key(request(&format!("{key}-{i}")), &format!("{key}-{i}")))
                    .collect();
                match client
                    .enqueue_batch(pb::EnqueueBatchRequest { requests })
                    .await
                {
                    Ok(r) => r
                        .into_inner()
                        .results
                        .into_iter()
                        .map(|r| r.message_id)
                        .collect(),
                    Err(_) => return,
                }
            } else {
                match client.enqueue(with_key(request(&key), &key)).await {
                    Ok(r) => vec![r.into_inner().message_id],
                    Err(_) => return,
                }
            };
            acked.lock().unwrap().extend(done);
        }
    })
}

/// GET over a plain TCP connection; returns the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// `name{labels} value` lines of the exposition, as (series, value).
pub fn samples(text: &str) -> Vec<(String, f64)> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let v = value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (series.to_string(), v)
        })
        .collect()
}

pub fn sample(all: &[(String, f64)], series: &str) -> f64 {
    all.iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series} in {all:?}"))
        .1
}

/// What the `mailspool` binary printed and its exit code.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `mailspool` binary with `args` against the server at `server`.
pub async fn run_cli(server: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(binary())
        .args(args)
        .arg("--server")
        .arg(server)
        .output()
        .await
        .expect("run mailspool");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
