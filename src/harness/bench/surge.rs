//! `mailspool bench --surge`: the incident replayed, first through
//! mailspool, then through a Postfix instance of its own, against the same
//! relay of limited capacity (the scripted peer, paced over all its
//! connections). Password resets arrive all along, one every
//! 1/`--resets-per-second` s, each carrying its send time in its subject;
//! after `--lead-in` s of them alone, `--surge-bulk` bulk messages arrive
//! at once (mailspool: EnqueueBatch of 100 in lane bulk, 4 calls in flight;
//! Postfix: smtp-source, 20 sessions). The relay notes when it accepted
//! each message; the report gives the resets' time to inbox (send → relay
//! accepted) per window of their send time, beside the bulk the relay took
//! in that window.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{bar, batches, body, channel, request, stats, Error};
use crate::harness::child::ServerProcess;
use crate::harness::peer::{Mode, SmtpPeer};
use crate::pb;
use crate::pb::mail_queue_client::MailQueueClient;

#[derive(Debug, Clone, clap::Args)]
pub struct SurgeArgs {
    /// Replay the incident instead of the throughput phases: password resets
    /// all along, a bulk surge after a quiet lead-in, through mailspool and
    /// then a Postfix of its own, against one relay of limited capacity.
    #[arg(long)]
    pub surge: bool,
    /// Bulk messages in the surge.
    #[arg(long, default_value_t = 150_000)]
    pub surge_bulk: usize,
    /// Seconds of password resets alone before the surge.
    #[arg(long, default_value_t = 30)]
    pub lead_in: u64,
    /// Password resets (lane transactional) per second, all along.
    #[arg(long, default_value_t = 50)]
    pub resets_per_second: u32,
    /// What the relay takes, in messages per second over all connections.
    #[arg(long, default_value_t = 380.0)]
    pub relay_rate: f64,
    /// Width of the report's windows, in seconds.
    #[arg(long, default_value_t = 30)]
    pub window: u64,
    /// Stop a replay after this many seconds, drained or not.
    #[arg(long, default_value_t = 1200)]
    pub max_seconds: u64,
    /// Replay through mailspool only.
    #[arg(long)]
    pub no_postfix: bool,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Where the resets go in.
#[derive(Clone)]
enum Front {
    Mailspool(MailQueueClient<crate::intake::auth::AuthChannel>),
    Postfix(AsyncSmtpTransport<Tokio1Executor>),
}

impl Front {
    /// Submits one reset; false if it was refused.
    async fn reset(&self, subject: String) -> bool {
        match self {
            Front::Mailspool(client) => {
                let r = pb::EnqueueRequest {
                    email: Some(pb::Email {
                        from: "reset@example.com".into(),
                        to: vec!["user@example.org".into()],
                        subject,
                        text_body: "Your code is 123456.\r\n".into(),
                        ..Default::default()
                    }),
                    lane: pb::Lane::Transactional as i32,
                    ..Default::default()
                };
                client.clone().enqueue(r).await.is_ok()
            }
            Front::Postfix(smtp) => {
                let m = lettre::Message::builder()
                    .from("reset@example.com".parse().expect("address"))
                    .to("user@example.org".parse().expect("address"))
                    .subject(subject)
                    .body("Your code is 123456.\r\n".to_string());
                match m {
                    Ok(m) => smtp.send(m).await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    }
}

/// What one replay saw, in ms since its start.
struct Replay {
    /// Per reset: sent, and when the relay accepted it (first copy).
    resets: Vec<(u64, Option<u64>)>,
    refused_resets: u64,
    /// When the relay accepted each bulk message.
    bulk: Vec<u64>,
    surge_at: u64,
    intake_secs: f64,
    /// mailspool only: (t, congestion, queued transactional) each second.
    samples: Vec<(u64, i32, u64)>,
}

/// Resets at a steady rate until `stop`, each in its own task (a slow
/// front does not slow the arrivals); returns their send times by number.
fn spawn_resets(
    front: Front,
    per_second: u32,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<u64>>>,
    refused: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let gap = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let mut tick = tokio::time::interval(gap);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let at = unix_ms(SystemTime::now());
            let seq = {
                let mut s = sent.lock().expect("sent");
                s.push(at);
                s.len() - 1
            };
            let (front, refused) = (front.clone(), refused.clone());
            tasks.spawn(async move {
                if !front.reset(format!("reset {seq} {at}")).await {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// One replay through `front`; `bulk` starts the surge and resolves to
/// the seconds its intake took.
async fn replay<F>(
    args: &SurgeArgs,
    peer: &SmtpPeer,
    front: Front,
    server: Option<&str>,
    bulk: F,
) -> Result<Replay, Error>
where
    F: FnOnce() -> tokio::task::JoinHandle<Result<f64, Error>>,
{
    let t0 = unix_ms(SystemTime::now());
    let started = Instant::now();
    let (stop, sent, refused) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicU64::new(0)),
    );
    let resets = spawn_resets(
        front,
        args.resets_per_second,
        stop.clone(),
        sent.clone(),
        refused.clone(),
    );
    let progress = bar(args.surge_bulk, "lead-in");
    let mut samples = Vec::new();
    let mut arrivals: Vec<(String, SystemTime)> = Vec::new();
    // Bulk and resets at the relay so far, counted as they arrive.
    let (mut bulk_in, mut resets_in) = (0usize, 0u64);
    let take = |arrivals: &mut Vec<(String, SystemTime)>, bulk: &mut usize, resets: &mut u64| {
        let new = peer.arrivals(arrivals.len());
        *bulk += new.iter().filter(|(s, _)| s.starts_with("bulk")).count();
        *resets += new.iter().filter(|(s, _)| s.starts_with("reset")).count() as u64;
        arrivals.extend(new);
    };
    let mut intake = None;
    let mut intake_secs = None;
    let mut bulk = Some(bulk);
    let mut drained_at = None;
    let deadline = started + Duration::from_secs(args.max_seconds);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = Instant::now();
        if started.elapsed() >= Duration::from_secs(args.lead_in) {
            if let Some(start) = bulk.take() {
                progress.set_message("surge");
                intake = Some(start());
            }
        }
        if let Some(h) = intake.take_if(|h| h.is_finished()) {
            intake_secs = Some(h.await??);
        }
        take(&mut arrivals, &mut bulk_in, &mut resets_in);
        progress.set_position(bulk_in as u64);
        if let Some(url) = server {
            let st = stats(url).await?;
            let t = unix_ms(SystemTime::now()) - t0;
            samples.push((t, st.congestion, st.queued_transactional));
        }
        if drained_at.is_none() && bulk_in >= args.surge_bulk {
            drained_at = Some(now);
        }
        if drained_at.is_some() || now > deadline {
            break;
        }
    }
    // The surge is out (or the time is up): the last resets are submitted,
    // then given up to a minute to reach the relay.
    stop.store(true, Ordering::Relaxed);
    resets.await?;
    progress.set_message("last resets");
    let sent_total = sent.lock().expect("sent").len() as u64;
    let waited = Instant::now() + Duration::from_secs(60);
    loop {
        take(&mut arrivals, &mut bulk_in, &mut resets_in);
        if resets_in + refused.load(Ordering::Relaxed) >= sent_total || Instant::now() > waited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.finish_and_clear();
    let mut resets: Vec<(u64, Option<u64>)> = sent
        .lock()
        .expect("sent")
        .iter()
        .map(|&s| (s - t0, None))
        .collect();
    let mut bulk_at = Vec::new();
    for (subject, at) in &arrivals {
        let at = unix_ms(*at).saturating_sub(t0);
        let mut words = subject.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|n| n.parse::<usize>().ok()),
        ) {
            (Some("reset"), Some(seq)) if seq < resets.len() => {
                let r = &mut resets[seq].1;
                *r = Some(r.map_or(at, |first| first.min(at)));
            }
            (Some(w), _) if w.starts_with("bulk") => bulk_at.push(at),
            _ => {}
        }
    }
    Ok(Replay {
        resets,
        refused_resets: refused.load(Ordering::Relaxed),
        bulk: bulk_at,
        surge_at: args.lead_in * 1000,
        intake_secs: intake_secs.unwrap_or(f64::NAN),
        samples,
    })
}

use crate::harness::drill::report::pct;

/// Time to inbox, in seconds, of the delivered resets sent in [from, to).
fn latencies(r: &Replay, from: u64, to: u64) -> (usize, Vec<f64>) {
    let sent: Vec<_> = r
        .resets
        .iter()
        .filter(|(s, _)| (from..to).contains(s))
        .collect();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(s, a)| a.map(|a| (a - s) as f64 / 1000.0))
        .collect();
    lat.sort_by(f64::total_cmp);
    (sent.len(), lat)
}

fn cell(sent: usize, lat: &[f64]) -> String {
    let missing = sent - lat.len();
    let tail = if missing > 0 {
        format!(", {missing} not delivered")
    } else {
        String::new()
    };
    format!(
        "{sent}: {:.2} / {:.2} / {:.2} s{tail}",
        pct(lat, 0.5),
        pct(lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    )
}

fn congestion_name(level: i32) -> &'static str {
    pb::Congestion::try_from(level)
        .map(|c| c.as_str_name())
        .unwrap_or("?")
}

fn report(args: &SurgeArgs, ours: &Replay, postfix: Option<&Replay>) {
    let w = args.window * 1000;
    let end = |r: &Replay| r.resets.last().map_or(0, |l| l.0 + 1);
    let last = end(ours).max(postfix.map_or(0, end));
    println!(
        "\n| window (s, by send time) | mailspool: resets sent: time to inbox p50 / p99 / max | bulk the relay took | congestion (in order), queued transactional (max) | Postfix: resets sent: p50 / p99 / max | bulk the relay took |\n|---|---|---|---|---|---|"
    );
    let bulk_in =
        |r: &Replay, from: u64, to: u64| r.bulk.iter().filter(|a| (from..to).contains(a)).count();
    let mut from = 0;
    while from < last {
        let to = from + w;
        let (n, lat) = latencies(ours, from, to);
        let window: Vec<_> = ours
            .samples
            .iter()
            .filter(|(t, _, _)| (from..to).contains(t))
            .collect();
        // The states in the order seen (a flap shows as OK→WARNING→OK).
        let mut states: Vec<i32> = window.iter().map(|s| s.1).collect();
        states.dedup();
        let states = states
            .into_iter()
            .map(congestion_name)
            .collect::<Vec<_>>()
            .join("→");
        let queued = window.iter().map(|s| s.2).max().unwrap_or(0);
        let theirs = postfix.map_or(("-".to_string(), "-".to_string()), |p| {
            let (n, lat) = latencies(p, from, to);
            (cell(n, &lat), bulk_in(p, from, to).to_string())
        });
        let surge = if (from..to).contains(&ours.surge_at) {
            " (surge)"
        } else {
            ""
        };
        let quiet = n == 0 && postfix.is_none_or(|p| latencies(p, from, to).0 == 0);
        if quiet {
            from = to;
            continue;
        }
        println!(
            "| {}–{}{surge} | {} | {} | {}, {queued} | {} | {} |",
            from / 1000,
            to / 1000,
            cell(n, &lat),
            bulk_in(ours, from, to),
            states,
            theirs.0,
            theirs.1
        );
        from = to;
    }
    println!("\n| figure | mailspool | Postfix |\n|---|---|---|");
    let both = |f: &dyn Fn(&Replay) -> String| (f(ours), postfix.map_or("-".to_string(), f));
    let rows: Vec<(String, (String, String))> = vec![
        (
            format!("surge of {} bulk accepted in", args.surge_bulk),
            both(&|r| format!("{:.1} s = {:.0} msg/s", r.intake_secs, args.surge_bulk as f64 / r.intake_secs)),
        ),
        (
            "last bulk message at the relay, after the surge began".into(),
            both(&|r| match r.bulk.iter().max() {
                Some(&last) if r.bulk.len() >= args.surge_bulk => format!("{:.1} s", (last - r.surge_at) as f64 / 1000.0),
                _ => format!("not drained: {} of {}", r.bulk.len(), args.surge_bulk),
            }),
        ),
        (
            "resets sent during the surge (its start to the last bulk at the relay): time to inbox p50 / p99 / max".into(),
            both(&|r| {
                let end = r.bulk.iter().max().copied().unwrap_or(r.surge_at);
                let (n, lat) = latencies(r, r.surge_at, end.max(r.surge_at + 1));
                cell(n, &lat)
            }),
        ),
        (
            "resets refused at submission / never at the relay".into(),
            both(&|r| {
                let never = r.resets.iter().filter(|x| x.1.is_none()).count() as u64;
                format!("{} / {}", r.refused_resets, never.saturating_sub(r.refused_resets))
            }),
        ),
    ];
    for (k, (a, b)) in rows {
        println!("| {k} | {a} | {b} |");
    }
}

/// The surge replay: mailspool, then Postfix (unless `--no-postfix` or it
/// cannot run here), then the report on stdout.
pub async fn run(args: &SurgeArgs, size: usize) -> Result<(), Error> {
    let dir = tempfile::Builder::new()
        .prefix("mailspool-surge")
        .tempdir()?;
    let body = body(size);
    eprintln!(
        "surge replay: {} resets/s, {} s lead-in, {} bulk, relay {} msg/s",
        args.resets_per_second, args.lead_in, args.surge_bulk, args.relay_rate
    );

    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.set_capacity(args.relay_rate);
    let data = dir.path().join("mailspool");
    let server = ServerProcess::start(&std::env::current_exe()?, &data, &peer.url(), &[]).await?;
    let url = server.url.clone();
    let front = Front::Mailspool(MailQueueClient::new(channel(&url).await?));
    let n = args.surge_bulk;
    let ours = replay(args, &peer, front, Some(&url), || {
        let (url, body) = (url.clone(), body.clone());
        tokio::spawn(async move {
            // The bench's request, in lane bulk, its subject the relay's tag.
            let make = Arc::new(move |i: usize| {
                let mut r = request(i, &body);
                r.lane = pb::Lane::Bulk as i32;
                if let Some(e) = r.email.as_mut() {
                    e.subject = format!("bulk {i}");
                }
                r
            });
            Ok(batches(&url, n, 100, 4, make, "").await?.secs)
        })
    })
    .await?;
    server.stop().await?;
    drop(peer);

    let theirs = if args.no_postfix {
        None
    } else if let Some(why) = super::postfix::unavailable() {
        eprintln!("Postfix replay skipped: {why}");
        None
    } else {
        Some(postfix_replay(args, dir.path(), size).await?)
    };
    report(args, &ours, theirs.as_ref());
    Ok(())
}

async fn postfix_replay(args: &SurgeArgs, dir: &Path, size: usize) -> Result<Replay, Error> {
    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.set_capacity(args.relay_rate);
    let postfix = super::postfix::Postfix::start(&dir.join("postfix"), peer.addr.port(), 20)?;
    eprintln!("Postfix instance on 127.0.0.1:{}", postfix.port);
    let port = postfix.port;
    let smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .build();
    let n = args.surge_bulk;
    let r = replay(args, &peer, Front::Postfix(smtp), None, || {
        tokio::spawn(super::postfix::smtp_source(
            port,
            n,
            size,
            "bulk",
            "news@example.com",
        ))
    })
    .await?;
    drop(postfix);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::{latencies, pct, Replay};

    fn replay(resets: Vec<(u64, Option<u64>)>) -> Replay {
        Replay {
            resets,
            refused_resets: 0,
            bulk: Vec::new(),
            surge_at: 0,
            intake_secs: 1.0,
            samples: Vec::new(),
        }
    }

    #[test]
    fn time_to_inbox_is_counted_in_the_window_of_the_send_time() {
        // Sent at 0.5 s and 1.5 s, delivered 2 s and 0.1 s later; one sent
        // at 1.9 s never delivered; one sent at 3 s is in the next window.
        let r = replay(vec![
            (500, Some(2500)),
            (1500, Some(1600)),
            (1900, None),
            (3000, Some(3010)),
        ]);
        let (sent, lat) = latencies(&r, 0, 2000);
        assert_eq!(sent, 3);
        assert_eq!(lat, vec![0.1, 2.0]);
        let (sent, lat) = latencies(&r, 2000, 4000);
        assert_eq!((sent, lat), (1, vec![0.01]));
    }

    #[test]
    fn percentiles_pick_by_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), 51.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert!(pct(&[], 0.5).is_nan());
    }
}
