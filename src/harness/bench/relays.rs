//! `mailspool bench --relays`: the drain rate through one relay against
//! two of the same capacity (`[[relays]]`, one priority, weight 1 each),
//! each a scripted SMTP peer that takes `--relay-capacity` messages per
//! second over all its connections, as a provider's quota would.

use std::time::{Duration, Instant};

use crate::harness::child::ServerProcess;
use crate::harness::peer::{Mode, SmtpPeer};

use super::{bar, batches, normal, stats, Error};

#[derive(Debug, clap::Args)]
pub struct RelaysArgs {
    /// Drain through one relay, then two of the same capacity.
    #[arg(long)]
    pub relays: bool,
    /// Messages to drain in each run.
    #[arg(long, default_value_t = 20_000)]
    pub relays_messages: usize,
    /// What each relay takes, messages per second over all connections.
    #[arg(long, default_value_t = 400.0)]
    pub relay_capacity: f64,
}

/// One drain: its rate and each relay's share.
struct Drained {
    rate: f64,
    secs: f64,
    shares: Vec<usize>,
}

async fn drain(n_relays: usize, args: &RelaysArgs, body: &str) -> Result<Drained, Error> {
    let dir = tempfile::Builder::new()
        .prefix("mailspool-bench-relays")
        .tempdir()?;
    let mut peers = Vec::new();
    let mut toml = String::new();
    for i in 0..n_relays {
        let peer = SmtpPeer::start(Mode::Accept).await;
        peer.set_capacity(args.relay_capacity);
        toml.push_str(&format!(
            "[[relays]]\nname = \"relay{i}\"\nurl = \"{}\"\ntls = \"none\"\nmax_connections = 16\n\n",
            peer.url()
        ));
        peers.push(peer);
    }
    let config = dir.path().join("mailspool.toml");
    std::fs::write(&config, toml)?;
    let exe = std::env::current_exe()?;
    let data = dir.path().join("data");
    let server = ServerProcess::start(
        &exe,
        &data,
        "",
        &["--config", config.to_str().unwrap_or("")],
    )
    .await?;
    let n = args.relays_messages;
    let started = Instant::now();
    batches(&server.url, n, 100, 4, normal(body), "").await?;
    let progress = bar(
        n,
        &format!("{n_relays} relay{}", if n_relays > 1 { "s" } else { "" }),
    );
    let secs = loop {
        let s = stats(&server.url).await?;
        progress.set_position(s.delivered_total);
        if s.delivered_total as usize >= n {
            break started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    progress.finish_and_clear();
    server.stop().await?;
    Ok(Drained {
        rate: n as f64 / secs,
        secs,
        shares: peers.iter().map(|p| p.received_count()).collect(),
    })
}

pub async fn run(args: &RelaysArgs, size: usize) -> Result<(), Error> {
    let body = super::body(size);
    let one = drain(1, args, &body).await?;
    eprintln!("one relay: {:.0} msg/s ({:.1} s)", one.rate, one.secs);
    let two = drain(2, args, &body).await?;
    eprintln!("two relays: {:.0} msg/s ({:.1} s)", two.rate, two.secs);
    println!(
        "drain of {} × {size} B, relays taking {:.0} msg/s each:",
        args.relays_messages, args.relay_capacity
    );
    println!("  one relay   {:>8.0} msg/s  ({:.1} s)", one.rate, one.secs);
    println!(
        "  two relays  {:>8.0} msg/s  ({:.1} s), split {:?}",
        two.rate, two.secs, two.shares
    );
    println!("  ratio two/one: {:.2}", two.rate / one.rate);
    Ok(())
}
