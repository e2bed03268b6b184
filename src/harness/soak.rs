//! `mailspool soak`: a bounded run under steady mixed-lane load and a
//! flapping relay, sampling the server's RSS, open files and data-dir size
//! at each interval, and checking they stay flat after the warm-up.
//!
//! The server runs with a 60 s delivered-status retention and idempotency
//! window so that the spool reaches its steady state within the run (with
//! the 1 h defaults it grows for an hour by design), and the relay flaps
//! without 550s (dead letters are kept until purged, by design).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::child::ServerProcess;
use crate::harness::peer::{Mode, SmtpPeer};
use crate::harness::torture::{client, flap, Ledger};
use crate::pb;
use crate::pb::queue_admin_client::QueueAdminClient;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60)]
    pub interval_secs: u64,
    /// Concurrent clients (each sends one request at a time, paced).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_secs: u64,
    pub rss_mib: f64,
    pub open_files: usize,
    pub data_mib: f64,
    pub queued: u64,
    pub enqueued_total: u64,
    pub delivered_total: u64,
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn dir_mib(p: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(p) as f64 / (1 << 20) as f64
}

pub async fn run(args: SoakArgs) -> Result<Vec<Sample>, Error> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new()
        .prefix("mailspool-soak")
        .tempdir()?;
    let peer = SmtpPeer::start(Mode::Accept).await;
    let server = ServerProcess::start(
        &exe,
        dir.path(),
        &peer.url(),
        &[
            "--retry-base-ms",
            "200",
            "--retry-cap-ms",
            "2000",
            "--smtp-timeout-ms",
            "1000",
            "--delivered-retention-secs",
            "60",
            "--idempotency-window-secs",
            "60",
        ],
    )
    .await?;
    let url = Arc::new(Mutex::new(server.url.clone()));
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = tokio::spawn(flap(peer.clone(), stop.clone(), false));
    let clients: Vec<_> = (0..args.clients)
        .map(|n| {
            tokio::spawn(client(
                n,
                url.clone(),
                ledger.clone(),
                stop.clone(),
                Some(Duration::from_millis(20)),
            ))
        })
        .collect();
    let mut admin = QueueAdminClient::connect(server.url.clone()).await?;
    let started = Instant::now();
    let end = started + Duration::from_secs(args.minutes * 60);
    let mut samples = Vec::new();
    println!("| t (s) | RSS MiB | open files | data dir MiB | queued | enqueued | delivered |\n|---|---|---|---|---|---|---|");
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(args.interval_secs).min(end - Instant::now())).await;
        let st = admin
            .queue_stats(pb::QueueStatsRequest {})
            .await?
            .into_inner();
        let s = Sample {
            at_secs: started.elapsed().as_secs(),
            rss_mib: rss_mib(server.pid()),
            open_files: open_files(server.pid()),
            data_mib: dir_mib(dir.path()),
            queued: st.queued,
            enqueued_total: st.enqueued_total,
            delivered_total: st.delivered_total,
        };
        println!(
            "| {} | {:.1} | {} | {:.1} | {} | {} | {} |",
            s.at_secs,
            s.rss_mib,
            s.open_files,
            s.data_mib,
            s.queued,
            s.enqueued_total,
            s.delivered_total
        );
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let _ = flapper.await;
    server.stop().await?;
    Ok(samples)
}

/// Flat after the warm-up (the first third of the run, at least one
/// sample): from there to the end, RSS grows by at most a quarter (+16 MiB),
/// open files by at most 16, the data directory by at most half (+16 MiB),
/// and the queue stays under a minute of enqueues.
pub fn check(samples: &[Sample], interval_secs: u64) -> Result<(), String> {
    let base = samples.get((samples.len() / 3).max(1)).or(samples.first());
    let (Some(base), Some(last)) = (base, samples.last()) else {
        return Err("no samples".into());
    };
    if last.rss_mib > base.rss_mib * 1.25 + 16.0 {
        return Err(format!(
            "RSS grew from {:.1} to {:.1} MiB after the warm-up",
            base.rss_mib, last.rss_mib
        ));
    }
    if last.open_files > base.open_files + 16 {
        return Err(format!(
            "open files grew from {} to {}",
            base.open_files, last.open_files
        ));
    }
    if last.data_mib > base.data_mib * 1.5 + 16.0 {
        return Err(format!(
            "the data dir grew from {:.1} to {:.1} MiB after the warm-up",
            base.data_mib, last.data_mib
        ));
    }
    let rate = last.enqueued_total as f64 / last.at_secs.max(1) as f64;
    if last.queued as f64 > rate * 60.0_f64.max(interval_secs as f64) {
        return Err(format!("the queue kept growing: {} queued", last.queued));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: u64, rss: f64, files: usize, data: f64, queued: u64) -> Sample {
        Sample {
            at_secs: at,
            rss_mib: rss,
            open_files: files,
            data_mib: data,
            queued,
            enqueued_total: at * 100,
            delivered_total: (at * 100).saturating_sub(queued),
        }
    }

    #[test]
    fn flat_after_warm_up_passes_growth_fails() {
        let warm = |last: Sample| {
            vec![
                s(60, 20.0, 20, 10.0, 5),
                s(120, 60.0, 20, 40.0, 5),
                s(180, 62.0, 21, 45.0, 5),
                last,
            ]
        };
        assert!(check(&warm(s(240, 64.0, 22, 48.0, 3)), 60).is_ok());
        assert!(check(&warm(s(240, 200.0, 22, 48.0, 3)), 60)
            .unwrap_err()
            .contains("RSS"));
        assert!(check(&warm(s(240, 64.0, 80, 48.0, 3)), 60)
            .unwrap_err()
            .contains("open files"));
        assert!(check(&warm(s(240, 64.0, 22, 400.0, 3)), 60)
            .unwrap_err()
            .contains("data dir"));
        assert!(check(&warm(s(240, 64.0, 22, 48.0, 100_000)), 60)
            .unwrap_err()
            .contains("queue"));
    }
}
