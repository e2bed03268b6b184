//! A first surge benchmark: durable unary Enqueue with C requests in flight,
//! EnqueueBatch, then the drain to the relay. Starts a server in-process on
//! a temporary spool; delivers to Postfix's smtp-sink on loopback when it is
//! installed, else to the local outbox (and says so).
//!
//! `cargo bench --bench surge` (env: N=20000 C=64 B=100 BODY=2048)

use std::time::{Duration, Instant};

use mailspool::config::RelayTls;
use mailspool::pb;
use mailspool::pb::mail_queue_client::MailQueueClient;
use mailspool::pb::queue_admin_client::QueueAdminClient;
use mailspool::{Config, Server};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(i: usize, body: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        email: Some(pb::Email {
            from: "bench@example.com".into(),
            to: vec![format!("user{i}@example.org")],
            subject: format!("bench {i}"),
            text_body: body.to_string(),
            ..Default::default()
        }),
        lane: pb::Lane::Normal as i32,
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("surge: bench");
        return;
    }
    let (n, c, b, body_len) = (
        env("N", 20_000),
        env("C", 64),
        env("B", 100),
        env("BODY", 2048),
    );
    let body = "x".repeat(body_len);
    let dir = tempfile::tempdir().unwrap();
    let sink_bin = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let mut sink = None;
    let relay_down = std::env::var("RELAY_DOWN").is_ok();
    let sink_bin = sink_bin.filter(|_| !relay_down);
    let relay = match sink_bin {
        Some(bin) => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = std::process::Command::new(bin);
            if unsafe { libc::geteuid() } == 0 {
                cmd.args(["-u", "nobody"]);
            }
            sink = Some(
                cmd.arg(format!("127.0.0.1:{port}"))
                    .arg("256")
                    .spawn()
                    .unwrap(),
            );
            std::thread::sleep(Duration::from_millis(300));
            println!("relay: smtp-sink on 127.0.0.1:{port}");
            Some(format!("smtp://127.0.0.1:{port}"))
        }
        None if relay_down => {
            println!("relay: down (connection refused)");
            Some("smtp://127.0.0.1:9".to_string())
        }
        None => {
            println!("relay: smtp-sink NOT installed (apt-get install postfix); delivering to the local outbox");
            None
        }
    };
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        relay,
        relay_tls: Some(RelayTls::None),
        log_level: "error".into(),
        ..Config::default()
    };
    config.validate().unwrap();
    let server = Server::start(config).await.unwrap();
    let url = format!("http://{}", server.addr);
    let admin = QueueAdminClient::connect(url.clone()).await.unwrap();

    // 1. unary
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c {
        let url = url.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = MailQueueClient::connect(url).await.unwrap();
            let mut lat = Vec::new();
            let mut i = w;
            while i < n {
                let t = Instant::now();
                client.enqueue(request(i, &body)).await.unwrap();
                lat.push(t.elapsed());
                i += c;
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let unary_secs = started.elapsed().as_secs_f64();
    lat.sort();
    let commits = admin
        .clone()
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .group_commits_total;

    // 2. batch
    let started = Instant::now();
    let mut client = MailQueueClient::connect(url.clone()).await.unwrap();
    let mut batch_lat = Vec::new();
    let mut sent = 0;
    while sent < n {
        let requests = (sent..(sent + b).min(n))
            .map(|i| request(i, &body))
            .collect::<Vec<_>>();
        sent += requests.len();
        let t = Instant::now();
        client
            .enqueue_batch(pb::EnqueueBatchRequest { requests })
            .await
            .unwrap();
        batch_lat.push(t.elapsed());
    }
    let batch_secs = started.elapsed().as_secs_f64();
    batch_lat.sort();

    // 3. drain of everything enqueued
    let total = 2 * n as u64;
    let delivered_while_enqueueing = admin
        .clone()
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .delivered_total;
    let drain_started = Instant::now();
    loop {
        let s = admin
            .clone()
            .queue_stats(pb::QueueStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.delivered_total + s.dead_total >= total || relay_down {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(600) {
            println!(
                "drain did not finish in 10 minutes: {} of {total}",
                s.delivered_total
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let s = admin
        .clone()
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();

    println!("\n| figure | value |\n|---|---|");
    println!("| unary Enqueue, {n} × {body_len} B, {c} in flight | {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms |",
        n as f64 / unary_secs, percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&lat, 0.999));
    println!("| group commits (fsyncs) during unary phase | {commits} for {n} enqueues ({:.1} per 1,000) |", commits as f64 * 1000.0 / n as f64);
    println!(
        "| EnqueueBatch of {b} | {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms per call |",
        n as f64 / batch_secs,
        percentile(&batch_lat, 0.5),
        percentile(&batch_lat, 0.99)
    );
    let e2e = unary_secs + batch_secs + drain_secs;
    println!("| delivered while enqueueing | {delivered_while_enqueueing} of {total} |");
    println!("| drain of the rest after the last enqueue | {drain_secs:.2} s |");
    println!("| end to end, first enqueue to last delivery | {total} in {e2e:.2} s = {:.0} msg/s (delivered {}, dead {}) |", total as f64 / e2e, s.delivered_total, s.dead_total);
    server.shutdown().await;
    if let Some(mut s) = sink {
        let _ = s.kill();
    }
}
