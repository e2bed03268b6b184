//! `mailspool bench --versus-postfix`: the same job through mailspool and
//! through a Postfix of its own, in one run, with the ratios: accept N
//! messages from concurrent clients and deliver them all to one
//! `smtp-sink`. mailspool takes unary `Enqueue` calls (h2load when
//! installed, else this binary's tonic clients); Postfix takes SMTP from
//! `smtp-source` (20 sessions), as its own benchmark tool would send it.
//! Both relay to the same sink at once (accept and delivery overlap).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::child::ServerProcess;

use super::{bar, stats, BenchArgs, Error};

#[derive(Debug, clap::Args)]
pub struct VersusArgs {
    /// Run the end-to-end job through mailspool, then through a Postfix
    /// of its own (needs root and Postfix), and print the ratios.
    #[arg(long)]
    pub versus_postfix: bool,
    /// Messages in each end-to-end run.
    #[arg(long, default_value_t = 20_000)]
    pub versus_messages: usize,
}

/// One end-to-end run: seconds until every message was accepted, and
/// until every one was delivered.
#[derive(Debug, Clone, Copy)]
struct EndToEnd {
    accepted_secs: f64,
    delivered_secs: f64,
}

/// Stops waiting for a drain after this long.
const DRAIN_LIMIT: Duration = Duration::from_secs(1800);

async fn through_mailspool(args: &BenchArgs, sink: u16, dir: &Path) -> Result<EndToEnd, Error> {
    let relay = format!("smtp://127.0.0.1:{sink}");
    let server =
        ServerProcess::start(&std::env::current_exe()?, &dir.join("data"), &relay, &[]).await?;
    let n = args.versus.versus_messages;
    let started = Instant::now();
    args.unary_phase(&server.url, n, &super::body(args.size), dir)
        .await?;
    let accepted_secs = started.elapsed().as_secs_f64();
    let progress = bar(n, "mailspool: delivering");
    loop {
        let s = stats(&server.url).await?;
        progress.set_position(s.delivered_total);
        if s.delivered_total >= n as u64 {
            break;
        }
        if started.elapsed() > DRAIN_LIMIT {
            return Err(format!(
                "mailspool delivered {} of {n} within {DRAIN_LIMIT:?}",
                s.delivered_total
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.finish_and_clear();
    let delivered_secs = started.elapsed().as_secs_f64();
    server.stop().await?;
    Ok(EndToEnd {
        accepted_secs,
        delivered_secs,
    })
}

async fn through_postfix(args: &BenchArgs, sink: u16, dir: &Path) -> Result<EndToEnd, Error> {
    let postfix = super::postfix::Postfix::start(&dir.join("postfix"), sink, 20)?;
    let n = args.versus.versus_messages;
    let started = Instant::now();
    super::postfix::smtp_source(postfix.port, n, args.size, "bench", "bench@example.com").await?;
    let accepted_secs = started.elapsed().as_secs_f64();
    let progress = bar(n, "Postfix: delivering");
    loop {
        let queued = postfix.queued().ok_or("postqueue -j failed")?;
        progress.set_position(n as u64 - queued.min(n as u64));
        if queued == 0 {
            break;
        }
        if started.elapsed() > DRAIN_LIMIT {
            return Err(format!("Postfix still held {queued} after {DRAIN_LIMIT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();
    Ok(EndToEnd {
        accepted_secs,
        delivered_secs: started.elapsed().as_secs_f64(),
    })
}

/// The table: each side's rates, then mailspool's over Postfix's.
fn rows(n: usize, ours: EndToEnd, theirs: Option<EndToEnd>) -> Vec<(String, String)> {
    let rate = |secs: f64| n as f64 / secs.max(1e-9);
    let mut out = vec![
        (
            format!("mailspool: accept {n} (unary Enqueue)"),
            format!(
                "{:.0} msg/s ({:.1} s)",
                rate(ours.accepted_secs),
                ours.accepted_secs
            ),
        ),
        (
            format!("mailspool: accept + deliver {n} to smtp-sink, end to end"),
            format!(
                "{:.0} msg/s ({:.1} s)",
                rate(ours.delivered_secs),
                ours.delivered_secs
            ),
        ),
    ];
    match theirs {
        Some(p) => out.extend([
            (
                format!("Postfix: accept {n} (smtp-source, 20 sessions)"),
                format!(
                    "{:.0} msg/s ({:.1} s)",
                    rate(p.accepted_secs),
                    p.accepted_secs
                ),
            ),
            (
                format!("Postfix: accept + deliver {n} to smtp-sink, end to end"),
                format!(
                    "{:.0} msg/s ({:.1} s)",
                    rate(p.delivered_secs),
                    p.delivered_secs
                ),
            ),
            (
                "mailspool ÷ Postfix: accept / end to end".into(),
                format!(
                    "{:.1}× / {:.1}×",
                    p.accepted_secs / ours.accepted_secs.max(1e-9),
                    p.delivered_secs / ours.delivered_secs.max(1e-9)
                ),
            ),
        ]),
        None => out.push(("Postfix".into(), "SKIPPED (see above)".into())),
    }
    out
}

pub async fn run(args: &BenchArgs) -> Result<(), Error> {
    let Some((mut sink, port)) = super::start_sink() else {
        return Err("--versus-postfix needs Postfix's smtp-sink (apt-get install postfix)".into());
    };
    let dir = tempfile::Builder::new()
        .prefix("mailspool-versus")
        .tempdir()?;
    let n = args.versus.versus_messages;
    eprintln!(
        "end to end, {n} messages of {} B, both delivering to smtp-sink on 127.0.0.1:{port}",
        args.size
    );
    let ours = through_mailspool(args, port, dir.path()).await;
    let theirs = match (&ours, super::postfix::unavailable()) {
        (Err(_), _) => None,
        (Ok(_), Some(why)) => {
            eprintln!("Postfix run skipped: {why}");
            None
        }
        (Ok(_), None) => Some(through_postfix(args, port, dir.path()).await),
    };
    let _ = sink.kill();
    let _ = sink.wait();
    let theirs = theirs.transpose()?;
    super::print_table(&rows(n, ours?, theirs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratios_are_postfix_time_over_ours() {
        let ours = EndToEnd {
            accepted_secs: 1.0,
            delivered_secs: 2.0,
        };
        let theirs = EndToEnd {
            accepted_secs: 12.0,
            delivered_secs: 30.0,
        };
        let r = rows(20_000, ours, Some(theirs));
        assert_eq!(r[1].1, "10000 msg/s (2.0 s)");
        assert_eq!(
            r[4],
            (
                "mailspool ÷ Postfix: accept / end to end".to_string(),
                "12.0× / 15.0×".to_string()
            )
        );
        assert_eq!(rows(10, ours, None)[2].1, "SKIPPED (see above)");
    }
}
