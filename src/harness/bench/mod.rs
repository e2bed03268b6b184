//! `mailspool bench`: the surge benchmark, part of the product.
//!
//! Starts its own servers (this binary, `serve`, as child processes on a
//! temporary spool, so RSS and disk writes are the server's own) or targets a
//! running one with `--server` (then only the enqueue phases run). Phases:
//!
//! 1. probe: unary Enqueue p99 on an empty queue, relay down;
//! 2. unary: N durable Enqueue calls, C in flight;
//! 3. batch: N messages in EnqueueBatch calls of B, `--batch-concurrency` in flight;
//! 4. backlog: fill to `--backlog` queued (relay down), then the probe again
//!    (isolation: p99 with the backlog vs empty);
//! 5. restart: stop, start with the relay pointed at smtp-sink; time to the
//!    first served Enqueue and to the first delivery;
//! 6. drain: until the backlog is delivered (end-to-end messages/s);
//! 7. resources: peak RSS, bytes written per message, data dir after the
//!    drain, fsyncs per 1,000 enqueues.
//!
//! `--surge` replays the incident instead (`surge.rs`); `--relays` drains
//! through one relay against two (`relays.rs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::harness::child::{cpu_seconds_with_children, ServerProcess};
use crate::pb;
use crate::pb::mail_queue_client::MailQueueClient;
use crate::pb::queue_admin_client::QueueAdminClient;

mod h2load;
mod phases;
mod plot;
pub mod postfix;
mod relays;
pub(crate) mod resources;
mod surge;
mod versus;

use phases::disk_needed;
pub use phases::LoadGenerator;
use resources::{dir_bytes, print_table, resource_rows};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Target a running server (only the enqueue phases run); the token,
    /// if it needs one, in MAILSPOOL_TOKEN.
    #[arg(long)]
    pub server: Option<String>,
    /// Messages in the unary and in the batch phase.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub messages: usize,
    /// Body size in bytes (text in 72-character lines).
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    /// Unary requests in flight.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Messages per EnqueueBatch call.
    #[arg(long, short = 'b', default_value_t = 100)]
    pub batch: usize,
    /// EnqueueBatch calls in flight.
    #[arg(long, default_value_t = 4)]
    pub batch_concurrency: usize,
    /// Queued messages for the isolation, restart and drain phases.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: usize,
    /// Unary Enqueue calls in each isolation probe.
    #[arg(long, default_value_t = 20_000)]
    pub probe: usize,
    /// Keep the temporary data directory (printed at the end).
    #[arg(long)]
    pub keep: bool,
    /// Where the run is drawn (SVG: depth, rates, Enqueue latency).
    #[arg(long, default_value = "mailspool-bench.svg")]
    pub plot: PathBuf,
    /// Who drives the unary and batch phases: `h2load` (nghttp2-client,
    /// light on CPU, so the server's ceiling shows), `tonic` (this binary),
    /// or `auto` (h2load when installed).
    #[arg(long, value_enum, default_value_t = LoadGenerator::Auto)]
    pub load_generator: LoadGenerator,
    /// h2load: connections and streams per connection of the unary phase
    /// (the batch phase uses `--batch-concurrency` connections of one).
    #[arg(long, default_value_t = 4)]
    pub h2load_connections: usize,
    #[arg(long, default_value_t = 16)]
    pub h2load_streams: usize,
    #[command(flatten)]
    pub surge: surge::SurgeArgs,
    #[command(flatten)]
    pub relays: relays::RelaysArgs,
    #[command(flatten)]
    pub versus: versus::VersusArgs,
}

/// Latencies and duration of one phase.
struct Run {
    count: usize,
    secs: f64,
    latencies: Vec<Duration>,
    /// Each call's end (unix ms) and latency (ms), for the plot.
    points: Vec<(u64, f32)>,
}

/// Now, in unix ms.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Sorted latencies and the plot's points from (latency, end) pairs.
fn split(mut calls: Vec<(Duration, u64)>) -> (Vec<Duration>, Vec<(u64, f32)>) {
    let points = calls
        .iter()
        .map(|(d, at)| (*at, (d.as_secs_f64() * 1000.0) as f32))
        .collect();
    calls.sort();
    (calls.into_iter().map(|(d, _)| d).collect(), points)
}

impl Run {
    fn rate(&self) -> f64 {
        self.count as f64 / self.secs
    }
    fn ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

pub(crate) fn body(size: usize) -> String {
    let line = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod t\r\n";
    line.repeat(size / line.len() + 1)[..size].to_string()
}

fn request(i: usize, body: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        email: Some(pb::Email {
            from: "bench@example.com".into(),
            to: vec![format!("user{}@example.org", i % 1000)],
            subject: format!("bench {i}"),
            text_body: body.to_string(),
            ..Default::default()
        }),
        lane: pb::Lane::Normal as i32,
        ..Default::default()
    }
}

/// The phases' requests: lane normal, `body`.
fn normal(body: &str) -> MakeRequest {
    let body = body.to_string();
    Arc::new(move |i| request(i, &body))
}

/// A progress bar on stderr; hidden when `what` is empty (a phase that
/// runs under another's bar).
pub(crate) fn bar(len: usize, what: &str) -> Arc<ProgressBar> {
    if what.is_empty() {
        return Arc::new(ProgressBar::hidden());
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    Arc::new(pb)
}

/// A connection that sends MAILSPOOL_TOKEN when it is set (a `--server`
/// with auth).
pub(crate) async fn channel(url: &str) -> Result<crate::intake::auth::AuthChannel, Error> {
    let token = std::env::var("MAILSPOOL_TOKEN").ok();
    let bearer = crate::intake::auth::Bearer::new(token.as_deref())?;
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await?;
    Ok(crate::intake::auth::AuthChannel::new(ch, bearer))
}

async fn unary(url: &str, n: usize, c: usize, body: &str, what: &str) -> Result<Run, Error> {
    let progress = bar(n, what);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c.min(n.max(1)) {
        let (url, body, progress) = (url.to_string(), body.to_string(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = MailQueueClient::new(channel(&url).await?);
            let mut lat = Vec::with_capacity(n / c + 1);
            let mut i = w;
            while i < n {
                let t = Instant::now();
                client.enqueue(request(i, &body)).await?;
                lat.push((t.elapsed(), unix_ms()));
                progress.inc(1);
                i += c;
            }
            Ok::<_, Error>(lat)
        }));
    }
    let mut calls = Vec::with_capacity(n);
    for t in tasks {
        calls.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let (latencies, points) = split(calls);
    Ok(Run {
        count: n,
        secs,
        latencies,
        points,
    })
}

/// Builds the `i`-th request of a phase.
type MakeRequest = Arc<dyn Fn(usize) -> pb::EnqueueRequest + Send + Sync>;

async fn batches(
    url: &str,
    n: usize,
    b: usize,
    cb: usize,
    make: MakeRequest,
    what: &str,
) -> Result<Run, Error> {
    let progress = bar(n, what);
    let started = Instant::now();
    let calls = n.div_ceil(b);
    let mut tasks = Vec::new();
    for w in 0..cb.min(calls.max(1)) {
        let (url, make, progress) = (url.to_string(), make.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut client =
                MailQueueClient::new(channel(&url).await?).max_encoding_message_size(64 << 20);
            let mut lat = Vec::new();
            let mut call = w;
            while call < calls {
                let from = call * b;
                let requests: Vec<_> = (from..(from + b).min(n)).map(|i| make(i)).collect();
                let len = requests.len() as u64;
                let t = Instant::now();
                let r = client
                    .enqueue_batch(pb::EnqueueBatchRequest { requests })
                    .await?
                    .into_inner();
                lat.push((t.elapsed(), unix_ms()));
                if let Some(bad) = r.results.iter().find(|r| r.code != 0) {
                    return Err(format!("batch item refused: {}", bad.message).into());
                }
                progress.inc(len);
                call += cb;
            }
            Ok::<_, Error>(lat)
        }));
    }
    let mut calls = Vec::new();
    for t in tasks {
        calls.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let (latencies, points) = split(calls);
    Ok(Run {
        count: n,
        secs,
        latencies,
        points,
    })
}

pub(crate) async fn stats(url: &str) -> Result<pb::QueueStatsResponse, Error> {
    let mut admin = QueueAdminClient::new(channel(url).await?);
    Ok(admin
        .queue_stats(pb::QueueStatsRequest {})
        .await?
        .into_inner())
}

/// Postfix's smtp-sink on a free loopback port, if installed.
fn start_sink() -> Option<(std::process::Child, u16)> {
    let bin = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port().ok()?;
    let mut cmd = std::process::Command::new(bin);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd
        .arg(format!("127.0.0.1:{port}"))
        .arg("256")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    listening(port, Duration::from_secs(5)).then_some((child, port))
}

/// A loopback port nothing listens on now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (polling) until something accepts on 127.0.0.1:`port`; false
/// if nothing does within `within`.
fn listening(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Runs the benchmark and prints the table (Markdown) on stdout.
pub async fn run(args: BenchArgs) -> Result<(), Error> {
    if args.surge.surge {
        return surge::run(&args.surge, args.size).await;
    }
    if args.relays.relays {
        return relays::run(&args.relays, args.size).await;
    }
    if args.versus.versus_postfix {
        return versus::run(&args).await;
    }
    let body = body(args.size);
    let mut rows: Vec<(String, String)> = Vec::new();
    let row = |rows: &mut Vec<(String, String)>, k: String, v: String| {
        eprintln!("{k}: {v}");
        rows.push((k, v));
    };
    let enqueue_rows = |rows: &mut Vec<(String, String)>, u: &Run, b: &Run, args: &BenchArgs| {
        let (n, size, bs, bc) = (args.messages, args.size, args.batch, args.batch_concurrency);
        let (generator, c) = match args.generator_name() {
            "h2load" => (
                "h2load",
                format!("{} × {}", args.h2load_connections, args.h2load_streams),
            ),
            g => (g, args.concurrency.to_string()),
        };
        row(
            rows,
            format!("durable unary Enqueue, {n} × {size} B, {c} in flight ({generator})"),
            format!(
                "{:.0} msg/s; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
                u.rate(),
                u.ms(0.5),
                u.ms(0.99),
                u.ms(0.999)
            ),
        );
        row(
            rows,
            format!("durable EnqueueBatch of {bs}, {bc} calls in flight ({generator})"),
            format!(
                "{:.0} msg/s; per call p50 {:.2} ms, p99 {:.2} ms",
                b.rate(),
                b.ms(0.5),
                b.ms(0.99)
            ),
        );
    };

    if let Some(url) = &args.server {
        let scratch = tempfile::tempdir()?;
        let u = args
            .unary_phase(url, args.messages, &body, scratch.path())
            .await?;
        let b = args.batch_phase(url, &body, scratch.path()).await?;
        enqueue_rows(&mut rows, &u, &b, &args);
        eprintln!("(--server: the isolation, restart, drain and resource phases need their own server; they were skipped)");
        print_table(&rows);
        return Ok(());
    }

    let dir = tempfile::Builder::new()
        .prefix("mailspool-bench")
        .tempdir()?;
    let data: PathBuf = dir.path().to_path_buf();
    disk_needed(&args, &data)?;
    // "Relay down": a port where nothing listens.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("smtp://{}", l.local_addr()?)
    };
    let s1 = ServerProcess::start(&std::env::current_exe()?, &data, &down, &[]).await?;
    let (watched, watch) = tokio::sync::watch::channel(Some(s1.url.clone()));
    let (stop_sampler, sampler) = plot::sampler(watch, Duration::from_millis(250));
    eprintln!(
        "server 1 (relay down) at {}, spool {}",
        s1.url,
        data.display()
    );

    // Warm up connections and the spool, then probe the (nearly) empty queue.
    unary(
        &s1.url,
        args.probe.min(2000),
        args.concurrency,
        &body,
        "warm-up",
    )
    .await?;
    let probe_empty = unary(&s1.url, args.probe, args.concurrency, &body, "probe").await?;
    // The load generator's CPU: this process's, and h2load's once waited for.
    let me = || cpu_seconds_with_children(std::process::id());
    let scratch = tempfile::tempdir()?;
    let cpu0 = (s1.cpu_seconds(), me());
    let u = args
        .unary_phase(&s1.url, args.messages, &body, scratch.path())
        .await?;
    let cpu1 = (s1.cpu_seconds(), me());
    let b = args.batch_phase(&s1.url, &body, scratch.path()).await?;
    let cpu2 = (s1.cpu_seconds(), me());
    enqueue_rows(&mut rows, &u, &b, &args);
    let per = |a: (f64, f64), b: (f64, f64), run: &Run| {
        let (server, client) = (
            (b.0 - a.0) / run.count as f64 * 1e6,
            (b.1 - a.1) / run.count as f64 * 1e6,
        );
        format!(
            "server {server:.0} µs + load generator {client:.0} µs = {:.0} µs; 2 cores ÷ that = {:.0} msg/s ceiling; CPU busy {:.0}%",
            server + client,
            2e6 / (server + client),
            ((b.0 - a.0) + (b.1 - a.1)) / run.secs / 2.0 * 100.0
        )
    };
    row(
        &mut rows,
        "CPU per message, unary phase".into(),
        per(cpu0, cpu1, &u),
    );
    row(
        &mut rows,
        "CPU per message, batch phase".into(),
        per(cpu1, cpu2, &b),
    );

    let queued = stats(&s1.url).await?.queued as usize;
    let fill = args.backlog.saturating_sub(queued + args.probe);
    let f = batches(
        &s1.url,
        fill,
        args.batch.max(100),
        args.batch_concurrency,
        normal(&body),
        "backlog",
    )
    .await?;
    eprintln!(
        "backlog filled: {} messages at {:.0} msg/s",
        f.count,
        f.rate()
    );
    let probe_backlog = unary(&s1.url, args.probe, args.concurrency, &body, "probe").await?;
    let s = stats(&s1.url).await?;
    row(
        &mut rows,
        format!(
            "Enqueue p99, relay down with {} queued vs empty queue ({} calls, {} in flight)",
            s.queued, args.probe, args.concurrency
        ),
        format!(
            "{:.2} ms vs {:.2} ms = {:.2}× (p50 {:.2} vs {:.2} ms)",
            probe_backlog.ms(0.99),
            probe_empty.ms(0.99),
            probe_backlog.ms(0.99) / probe_empty.ms(0.99).max(1e-9),
            probe_backlog.ms(0.5),
            probe_empty.ms(0.5)
        ),
    );
    let held = dir_bytes(&data);
    row(
        &mut rows,
        format!(
            "data dir with {} queued (sizing: disk per queued message)",
            s.queued
        ),
        format!(
            "{:.1} MiB = {:.0} B per message ({:.2} GiB per million {} B messages)",
            held as f64 / 1048576.0,
            held as f64 / s.queued.max(1) as f64,
            held as f64 / s.queued.max(1) as f64 * 1e6 / 1073741824.0,
            body.len()
        ),
    );
    let (rss1, written1) = s1.resources();
    let enqueued1 = s.enqueued_total;
    let fsyncs1 = s.fsyncs_total;
    let total = s.queued;
    watched.send_replace(None);
    s1.stop().await?;

    let Some((mut sink, port)) = start_sink() else {
        row(
            &mut rows,
            "restart, drain".into(),
            "SKIPPED: smtp-sink is not installed (apt-get install postfix)".into(),
        );
        resource_rows(
            &mut rows, rss1, None, written1, enqueued1, args.size, fsyncs1, None,
        );
        print_table(&rows);
        return Ok(());
    };
    let relay = format!("smtp://127.0.0.1:{port}");
    let started = Instant::now();
    let s2 = ServerProcess::start(&std::env::current_exe()?, &data, &relay, &[]).await?;
    watched.send_replace(Some(s2.url.clone()));
    let mut client = MailQueueClient::connect(s2.url.clone()).await?;
    client.enqueue(request(0, &body)).await?;
    let served = started.elapsed();
    let total = total + 1;
    let mut first_delivery = None;
    let mut ninety_nine = None;
    let progress = bar(total as usize, "drain");
    let drain = loop {
        let s = stats(&s2.url).await?;
        if first_delivery.is_none() && s.delivered_total > 0 {
            first_delivery = Some(started.elapsed());
        }
        progress.set_position(s.delivered_total + s.dead_total);
        if ninety_nine.is_none() && s.delivered_total + s.dead_total >= total * 99 / 100 {
            ninety_nine = Some(started.elapsed());
        }
        if s.queued == 0 {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(if first_delivery.is_some() {
            250
        } else {
            5
        }))
        .await;
    };
    progress.finish_and_clear();
    row(
        &mut rows,
        format!(
            "restart with {} queued: process start → first Enqueue served / first delivery",
            total - 1
        ),
        format!(
            "{:.2} s / {:.2} s",
            served.as_secs_f64(),
            first_delivery.unwrap_or(drain).as_secs_f64()
        ),
    );
    row(
        &mut rows,
        "drain to smtp-sink after the restart (end to end): 99% / all".into(),
        format!(
            "{:.0} msg/s to 99% ({:.1} s); all {total} in {:.1} s (the last wait out the retries of the few messages tried while the relay was down)",
            total as f64 * 0.99 / ninety_nine.unwrap_or(drain).as_secs_f64(),
            ninety_nine.unwrap_or(drain).as_secs_f64(),
            drain.as_secs_f64()
        ),
    );
    // What the drained spool keeps, then what compaction gives back.
    let (rss2, _) = s2.resources();
    let _ = stop_sampler.send(());
    let samples = sampler.await.unwrap_or_default();
    let points: Vec<(u64, f32)> = [&probe_empty, &u, &b, &f, &probe_backlog]
        .iter()
        .flat_map(|r| r.points.iter().copied())
        .collect();
    match plot::draw(&args.plot, &samples, &points) {
        Ok(()) => eprintln!("the run, drawn: {}", args.plot.display()),
        Err(e) => eprintln!("could not draw the run to {}: {e}", args.plot.display()),
    }
    s2.stop().await?;
    let _ = sink.kill();
    let after = dir_bytes(&data);
    let compacted = crate::spool::compact::compact(&data)?;
    let after_compact = dir_bytes(&data);
    resource_rows(
        &mut rows,
        rss1,
        Some(rss2),
        written1,
        enqueued1,
        args.size,
        fsyncs1,
        Some((after, after_compact, compacted.seconds)),
    );
    print_table(&rows);
    if args.keep {
        let kept = dir.keep();
        eprintln!("data dir kept: {}", kept.display());
    }
    Ok(())
}
