//! `mailspool torture`: kill -9 the real server at random moments while
//! clients stream acknowledged enqueues and the relay flaps, then prove that
//! every acknowledged message was delivered or dead-lettered with a 5xx.
//!
//! The server runs as a child process (this binary's `serve`, or
//! `--server-bin`); the relay is the scripted SMTP peer (`peer`), flapping
//! between accepting, deferring (451), throttling (421), rejecting (550),
//! stalling and disconnecting after DATA. Clients send unary and batch
//! enqueues, each with an idempotency key carried in an `X-Torture-Key`
//! header; a request that fails (the server died) is sent again with the
//! same key until it is acknowledged. At the end the relay accepts
//! everything and the accounting is checked:
//! - every acknowledged message delivered, or DEAD with a 5xx reason;
//! - every delivered message acknowledged, or in flight at a kill (its ack
//!   lost with the process: counted, not an error);
//! - duplicates (delivered more than once) counted and reported.
//!
//! With `--power-cuts N` the spool lives on LazyFs ([`crate::harness::lazyfs`]) and
//! each of the N cycles is a power cut: SIGKILL, then every byte and every
//! directory entry that was not fsynced is dropped, then a restart.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::harness::child::ServerProcess;
use crate::harness::peer::{Mode, SmtpPeer};
use crate::pb;
use crate::pb::mail_queue_client::MailQueueClient;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, clap::Args)]
pub struct TortureArgs {
    /// Kill and restart cycles (the long form: 50 or more).
    #[arg(long, default_value_t = 10)]
    pub cycles: usize,
    /// Power cuts instead of plain kills: the spool lives on LazyFs (a FUSE
    /// filesystem, needs the Debian package fuse3) and each of these N cycles
    /// is a SIGKILL followed by the loss of every unsynced byte and directory
    /// entry; replaces --cycles. 0: plain kill -9 cycles.
    #[arg(long, default_value_t = 0)]
    pub power_cuts: usize,
    /// Longest run between kills, in milliseconds (each is random up to it).
    #[arg(long, default_value_t = 2000)]
    pub max_run_ms: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// The mailspool binary to torture [default: this one].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Seconds to wait for the final drain.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_secs: u64,
}

/// The accounting at the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub cycles: usize,
    /// Whether the cycles were power cuts (LazyFs).
    pub power_cuts: bool,
    /// Power cuts: files that lost unsynced bytes, summed over the cuts.
    pub files_lost_bytes: usize,
    /// Power cuts: directory entries undone, summed over the cuts.
    pub entries_undone: u64,
    pub acknowledged: usize,
    pub delivered: usize,
    pub dead_5xx: usize,
    pub missing: usize,
    /// Recipients of the acknowledged messages, those delivered, those
    /// bounced with a 5xx, and those neither (lost).
    pub recipients_acknowledged: usize,
    pub recipients_delivered: usize,
    pub recipients_bounced: usize,
    pub recipients_missing: usize,
    /// (message, recipient) pairs delivered more than once.
    pub duplicates: usize,
    pub delivered_ack_lost: usize,
    pub delivered_never_sent: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.recipients_missing == 0 && self.delivered_never_sent == 0
    }
}

#[derive(Default)]
pub(crate) struct Ledger {
    /// key → message id (Message-ID header) of acknowledged requests.
    acked: HashMap<String, (String, String)>,
    /// Keys sent at least once.
    sent: HashSet<String>,
}

/// Each message's recipients: three of its own (a 5.1.1 suppresses them,
/// and no other message), more than the relay takes per transaction.
fn recipients(key: &str) -> Vec<String> {
    ["a", "b", "c"]
        .iter()
        .map(|r| format!("{key}.{r}@example.org"))
        .collect()
}

fn request(key: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        email: Some(pb::Email {
            from: "torture@example.com".into(),
            to: recipients(key),
            subject: key.to_string(),
            text_body: format!("torture message {key}\r\n"),
            headers: [("X-Torture-Key".to_string(), key.to_string())].into(),
            ..Default::default()
        }),
        lane: [pb::Lane::Transactional, pb::Lane::Normal, pb::Lane::Bulk][key.len() % 3] as i32,
        idempotency_key: key.to_string(),
        not_before_unix_ms: 0,
        raw: None,
        expires_at_unix_ms: 0,
    }
}

/// One client: streams requests to whatever server is up, retrying each
/// with its key until acknowledged.
pub(crate) async fn client(
    n: usize,
    url: Arc<Mutex<String>>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    pace: Option<Duration>,
) {
    let mut seq = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
        seq += 1;
        let batch = seq.is_multiple_of(5);
        let keys: Vec<String> = if batch {
            (0..10).map(|i| format!("c{n}-{seq}-{i}")).collect()
        } else {
            vec![format!("c{n}-{seq}")]
        };
        ledger
            .lock()
            .expect("ledger")
            .sent
            .extend(keys.iter().cloned());
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let target = url.lock().expect("url").clone();
            let Ok(mut c) = MailQueueClient::connect(target).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let result: Result<Vec<(String, String, String)>, tonic::Status> = if batch {
                let requests = keys.iter().map(|k| request(k)).collect();
                c.enqueue_batch(pb::EnqueueBatchRequest { requests })
                    .await
                    .map(|r| {
                        r.into_inner()
                            .results
                            .into_iter()
                            .zip(&keys)
                            .filter(|(r, _)| r.code == 0)
                            .map(|(r, k)| (k.clone(), r.id, r.message_id))
                            .collect()
                    })
            } else {
                c.enqueue(request(&keys[0]))
                    .await
                    .map(|r| r.into_inner())
                    .map(|r| vec![(keys[0].clone(), r.id, r.message_id)])
            };
            match result {
                Ok(done) if done.len() == keys.len() => {
                    let mut l = ledger.lock().expect("ledger");
                    for (k, id, mid) in done {
                        l.acked.insert(k, (id, mid));
                    }
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// The relay flaps until `stop`. Without `rejects`, it never answers 550
/// (dead letters are kept by design, so a soak that makes them grows).
pub(crate) async fn flap(peer: SmtpPeer, stop: Arc<AtomicBool>, rejects: bool) {
    let modes = [
        (Mode::Accept, 10),
        (Mode::Defer, 2),
        (Mode::Throttle, 1),
        (Mode::Reject, u32::from(rejects)),
        (Mode::Stall, 1),
        (Mode::Disconnect, 2),
    ];
    let total: u32 = modes.iter().map(|(_, w)| w).sum();
    while !stop.load(Ordering::Relaxed) {
        let (mode, wait) = {
            let mut rng = rand::rng();
            let mut pick = rng.random_range(0..total);
            let mode = modes
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map(|(m, _)| *m)
                .unwrap_or(Mode::Accept);
            (mode, rng.random_range(100..400))
        };
        peer.set_mode(mode);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    peer.set_mode(Mode::Accept);
}

pub async fn run(args: TortureArgs) -> Result<Report, Error> {
    let exe = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let dir = tempfile::Builder::new()
        .prefix("mailspool-torture")
        .tempdir()?;
    let power = args.power_cuts > 0;
    let cycles = if power { args.power_cuts } else { args.cycles };
    // Power cuts: LazyFs on the temporary directory, the spool in a directory
    // of its own on it that nobody fsyncs here: after a cut it exists only if
    // the server made it durable.
    let lazy = if power {
        if !crate::harness::lazyfs::available() {
            return Err(
                "torture --power-cuts mounts a FUSE filesystem and needs /dev/fuse and \
                 /usr/bin/fusermount3: install the Debian package fuse3 \
                 (apt-get install fuse3)"
                    .into(),
            );
        }
        let fs = crate::harness::lazyfs::mount(dir.path())
            .map_err(|e| format!("mounting LazyFs on {}: {e}", dir.path().display()))?;
        Some(fs)
    } else {
        None
    };
    let data_dir = match &lazy {
        Some(fs) => {
            let d = fs.path().join("spool");
            std::fs::create_dir(&d)?;
            d
        }
        None => dir.path().to_path_buf(),
    };
    let peer = SmtpPeer::start(Mode::Accept).await;
    // Two recipients a transaction: each message takes two, and a kill
    // between them leaves a message with some recipients delivered.
    peer.set_max_recipients(2);
    let server_args = [
        "--retry-base-ms",
        "20",
        "--retry-cap-ms",
        "300",
        "--max-attempts",
        "1000000",
        "--smtp-timeout-ms",
        "500",
        "--lease-timeout-ms",
        "2000",
        "--shutdown-grace-ms",
        "200",
    ];
    let mut server = ServerProcess::start(&exe, &data_dir, &peer.url(), &server_args).await?;
    let url = Arc::new(Mutex::new(server.url.clone()));
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_flap = Arc::new(AtomicBool::new(false));
    let flapper = tokio::spawn(flap(peer.clone(), stop_flap.clone(), true));
    let clients: Vec<_> = (0..args.clients)
        .map(|n| {
            tokio::spawn(client(
                n,
                url.clone(),
                ledger.clone(),
                stop_clients.clone(),
                None,
            ))
        })
        .collect();
    let started = Instant::now();
    let (mut files_lost_bytes, mut entries_undone) = (0, 0);
    for cycle in 1..=cycles {
        let run = Duration::from_millis(rand::rng().random_range(50..=args.max_run_ms.max(50)));
        tokio::time::sleep(run).await;
        server.kill().await?;
        let acked = ledger.lock().expect("ledger").acked.len();
        match &lazy {
            Some(fs) => {
                // The power cut, once the process is gone.
                let before = fs.entries_lost();
                let files = fs.crash();
                let entries = fs.entries_lost() - before;
                files_lost_bytes += files;
                entries_undone += entries;
                let undone = fs.last_undone();
                let shown = if undone.is_empty() {
                    String::new()
                } else {
                    let more = undone.len().saturating_sub(4);
                    let mut list = undone.into_iter().take(4).collect::<Vec<_>>().join(", ");
                    if more > 0 {
                        list.push_str(&format!(", {more} more"));
                    }
                    format!(" ({list})")
                };
                eprintln!(
                    "cycle {cycle}/{cycles}: SIGKILL + power cut after {} ms; {acked} acknowledged so far; \
                     {files} files lost unsynced bytes, {entries} directory entries undone{shown}",
                    run.as_millis()
                );
            }
            None => eprintln!(
                "cycle {cycle}/{cycles}: SIGKILL after {} ms; {acked} acknowledged so far",
                run.as_millis()
            ),
        }
        server = ServerProcess::start(&exe, &data_dir, &peer.url(), &server_args)
            .await
            .map_err(|e| format!("the server did not restart after cycle {cycle}: {e}"))?;
        *url.lock().expect("url") = server.url.clone();
    }
    stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    stop_flap.store(true, Ordering::Relaxed);
    let _ = flapper.await;
    peer.set_mode(Mode::Accept);

    // Everything acknowledged must now end delivered or dead (5xx).
    let (acked, sent) = {
        let l = ledger.lock().expect("ledger");
        (l.acked.clone(), l.sent.clone())
    };
    let mut client = MailQueueClient::connect(server.url.clone()).await?;
    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout_secs);
    let report = loop {
        let received = peer.received();
        // (message, recipient) → times delivered.
        let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
        for m in &received {
            for r in &m.rcpts {
                *counts
                    .entry((m.message_id.as_str(), r.as_str()))
                    .or_default() += 1;
            }
        }
        let delivered_mids: HashSet<&str> = counts.keys().map(|(m, _)| *m).collect();
        let mut report = Report {
            cycles,
            power_cuts: power,
            files_lost_bytes,
            entries_undone,
            acknowledged: acked.len(),
            delivered: delivered_mids.len(),
            duplicates: counts.values().filter(|&&n| n > 1).count(),
            ..Report::default()
        };
        let acked_mids: HashSet<&str> = acked.values().map(|(_, m)| m.as_str()).collect();
        for m in &received {
            if !acked_mids.contains(m.message_id.as_str()) {
                let key = m
                    .raw
                    .lines()
                    .find_map(|l| l.strip_prefix("X-Torture-Key: "))
                    .unwrap_or("");
                if sent.contains(key.trim()) {
                    report.delivered_ack_lost += 1;
                } else {
                    report.delivered_never_sent += 1;
                }
            }
        }
        // Every recipient of every acknowledged message: delivered (the
        // relay has it), or bounced with a 5xx (the spool says so).
        for (key, (id, mid)) in &acked {
            let want = recipients(key);
            let delivered = |a: &str| counts.contains_key(&(mid.as_str(), a));
            let seen = want.iter().filter(|a| delivered(a)).count();
            report.recipients_acknowledged += want.len();
            report.recipients_delivered += seen;
            if seen == want.len() {
                continue;
            }
            let m = match client
                .get_message(pb::GetMessageRequest { id: id.clone() })
                .await
            {
                Ok(m) => m.into_inner(),
                // Acknowledged, never delivered, and unknown to the spool:
                // lost, which is what this run is here to find.
                Err(s) if s.code() == tonic::Code::NotFound => {
                    report.missing += 1;
                    report.recipients_missing += want.len() - seen;
                    continue;
                }
                Err(s) => return Err(s.into()),
            };
            let bounced = m
                .recipients
                .iter()
                .filter(|r| {
                    !delivered(&r.address)
                        && r.state() == pb::RecipientState::RecipientBounced
                        && r.last_reply.starts_with('5')
                })
                .count();
            report.recipients_bounced += bounced;
            if seen + bounced < want.len() {
                report.missing += 1;
                report.recipients_missing += want.len() - seen - bounced;
            } else if seen == 0 {
                report.dead_5xx += 1;
            }
        }
        if report.missing == 0 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    server.stop().await?;
    let cuts = if power {
        format!(
            "; the cuts lost unsynced bytes of {} files and undid {} directory entries",
            report.files_lost_bytes, report.entries_undone
        )
    } else {
        String::new()
    };
    eprintln!(
        "torture: {} {} in {:.1} s; {} acknowledged: {} delivered, {} dead with a 5xx, {} MISSING; recipients: {} acknowledged, {} delivered, {} bounced with a 5xx, {} MISSING; {} delivered twice; {} delivered whose ack was lost in a kill; {} delivered that were never sent{cuts}",
        report.cycles,
        if power { "power cuts" } else { "cycles" },
        started.elapsed().as_secs_f64(),
        report.acknowledged,
        report.acknowledged - report.dead_5xx - report.missing,
        report.dead_5xx,
        report.missing,
        report.recipients_acknowledged,
        report.recipients_delivered,
        report.recipients_bounced,
        report.recipients_missing,
        report.duplicates,
        report.delivered_ack_lost,
        report.delivered_never_sent
    );
    if power && report.files_lost_bytes == 0 && report.entries_undone == 0 {
        return Err(format!(
            "torture --power-cuts: none of the {cycles} cuts lost an unsynced byte or a \
             directory entry, so the run proved nothing (more cuts or a longer --max-run-ms)"
        )
        .into());
    }
    Ok(report)
}
