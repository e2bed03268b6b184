//! Driving a drill: the steady transactional traffic, the surge, the
//! relay's outage (sandbox only), QueueStats sampled every second, and
//! where each message arrived (the sandbox relay's log, or a staging
//! server's delivered events).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;

use lettre::{AsyncSmtpTransport, Tokio1Executor};

use super::front::Front;
use super::report::{Recorded, Sample, Tx};
use super::{DrillArgs, Error};
use crate::harness::bench::postfix::Postfix;
use crate::harness::bench::{bar, body, channel, stats};
use crate::harness::child::ServerProcess;
use crate::harness::peer::{Mode, SmtpPeer};
use crate::model::wall_ms;
use crate::pb;
use crate::pb::mail_queue_client::MailQueueClient;

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// One steady message as sent: when, its Enqueue's time, its id.
#[derive(Debug, Clone, Default)]
struct Sent {
    at_ms: u64,
    enqueue_ms: Option<f64>,
    id: String,
}

/// Where messages arrived: the relay's log, by subject ("drill tx N",
/// "drill bulk N"), or delivered events, by id; first arrival (unix ms)
/// and copies.
enum Arrivals<'a> {
    Relay(&'a SmtpPeer),
    Events(Arc<Mutex<Vec<(String, u64)>>>),
}

impl Arrivals<'_> {
    fn seen(&self) -> HashMap<String, (u64, usize)> {
        let mut out: HashMap<String, (u64, usize)> = HashMap::new();
        let mut note = |key: String, at: u64| {
            let e = out.entry(key).or_insert((at, 0));
            e.0 = e.0.min(at);
            e.1 += 1;
        };
        match self {
            Arrivals::Relay(peer) => {
                for (subject, at) in peer.arrivals(0) {
                    note(subject, unix_ms(at));
                }
            }
            Arrivals::Events(events) => {
                for (id, at) in events.lock().expect("events").iter() {
                    note(id.clone(), *at);
                }
            }
        }
        out
    }
}

/// The steady traffic: one transactional message every 1/`rate` s, each
/// in its own task (a slow Enqueue does not slow the arrivals).
fn steady(
    front: Front,
    rate: f64,
    body: String,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let n = {
                let mut s = sent.lock().expect("sent");
                s.push(Sent {
                    at_ms: wall_ms(),
                    ..Default::default()
                });
                s.len() - 1
            };
            let (front, sent, body) = (front.clone(), sent.clone(), body.clone());
            tasks.spawn(async move {
                if let Some((ms, id)) = front.send(n, &body).await {
                    let mut s = sent.lock().expect("sent");
                    s[n].enqueue_ms = Some(ms);
                    s[n].id = id;
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// The sandbox: a relay of `--relay-rate`, a server of its own on a
/// temporary spool (the settings from the environment, MAILSPOOL_*).
pub async fn sandbox(args: &DrillArgs) -> Result<Recorded, Error> {
    let dir = tempfile::Builder::new()
        .prefix("mailspool-drill")
        .tempdir()?;
    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.set_capacity(args.relay_rate);
    let data = dir.path().join("data");
    let server = ServerProcess::start(&std::env::current_exe()?, &data, &peer.url(), &[]).await?;
    eprintln!(
        "drill sandbox: server {}, relay {} at {:.0} msg/s; {:.0}/s transactional, a surge of {} bulk after {} s, the relay down for {} s {} s into it",
        server.url,
        peer.url(),
        args.relay_rate,
        args.steady,
        args.surge,
        args.lead_in.as_secs(),
        args.relay_outage.as_secs(),
        args.outage_after.as_secs()
    );
    let front = Front::Mailspool {
        url: server.url.clone(),
        client: MailQueueClient::new(channel(&server.url).await?)
            .max_encoding_message_size(64 << 20),
    };
    let r = drive(args, front, None, Some(&peer), Arrivals::Relay(&peer)).await;
    server.stop().await?;
    r
}

/// The same scenario through a Postfix instance of its own (20 connections
/// to the same kind of relay); None when Postfix cannot run here.
pub async fn postfix(args: &DrillArgs) -> Result<Option<Recorded>, Error> {
    if let Some(why) = crate::harness::bench::postfix::unavailable() {
        eprintln!("the drill through Postfix is skipped: {why}");
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("mailspool-drill-postfix")
        .tempdir()?;
    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.set_capacity(args.relay_rate);
    let pf = Postfix::start(&dir.path().join("postfix"), peer.addr.port(), 20)?;
    eprintln!("drill through Postfix on 127.0.0.1:{}", pf.port);
    let front = Front::Postfix {
        smtp: AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(pf.port)
            .build(),
        port: pf.port,
    };
    let r = drive(args, front, Some(&pf), Some(&peer), Arrivals::Relay(&peer)).await?;
    Ok(Some(r))
}

/// A running server, with the relay it has: after a confirmation, and
/// never one that holds other traffic without `--yes`.
pub async fn staging(args: &DrillArgs, url: &str) -> Result<Recorded, Error> {
    let st = stats(url).await?;
    if !args.yes && (st.queued > 0 || st.enqueue_rate_per_second > 0.5) {
        return Err(format!(
            "{url} holds other traffic ({} queued, {:.1}/s coming in): drill a staging server of its own, or pass --yes to go on anyway",
            st.queued, st.enqueue_rate_per_second
        )
        .into());
    }
    if !args.yes {
        eprint!(
            "This sends {} bulk and {:.0}/s transactional messages to user@example.org through {url} and its relay, for real. Type yes to go on: ",
            args.surge, args.steady
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            return Err("not confirmed: nothing was sent".into());
        }
    }
    if !args.relay_outage.is_zero() {
        eprintln!("note: the relay outage needs the sandbox; against a server, fail its relay by hand (mailspool relay pause NAME) to drill one");
    }
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut stream = MailQueueClient::new(channel(url).await?)
        .watch_events(pb::WatchEventsRequest {
            after_sequence: st.event_log_last_sequence,
            types: vec![pb::EventType::EventDelivered as i32],
            follow: true,
        })
        .await?
        .into_inner();
    let sink = events.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(e)) = stream.next().await {
            sink.lock()
                .expect("events")
                .push((e.id, e.time_unix_ms as u64));
        }
    });
    let front = Front::Mailspool {
        url: url.to_string(),
        client: MailQueueClient::new(channel(url).await?).max_encoding_message_size(64 << 20),
    };
    let r = drive(args, front, None, None, Arrivals::Events(events)).await;
    watcher.abort();
    r
}

/// The drill itself, into `front` (with the Postfix behind it, if it is
/// one); the sandbox relay, if there is one, fails for the outage.
async fn drive(
    args: &DrillArgs,
    front: Front,
    postfix: Option<&Postfix>,
    relay: Option<&SmtpPeer>,
    arrivals: Arrivals<'_>,
) -> Result<Recorded, Error> {
    let body = body(args.size);
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let t0 = wall_ms();
    let started = Instant::now();
    let steady_task = steady(
        front.clone(),
        args.steady,
        body.clone(),
        stop.clone(),
        Arc::clone(&sent),
    );
    let progress = bar(args.surge, "lead-in");
    let mut bulk_seen = 0;
    let mut samples = Vec::new();
    let mut surge_task = None;
    let (mut surge_at, mut outage, mut intake) = (None, None, None);
    let mut restored = false;
    let outage_len = if relay.is_some() {
        args.relay_outage
    } else {
        Duration::ZERO
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = wall_ms();
        if surge_at.is_none() && started.elapsed() >= args.lead_in {
            surge_at = Some(now);
            progress.set_message("surge");
            let (front, body, n) = (front.clone(), body.clone(), args.surge);
            surge_task = Some(tokio::spawn(async move { front.surge(n, body).await }));
        }
        if let (Some(at), Some(peer)) = (surge_at, relay) {
            let begin = at + args.outage_after.as_millis() as u64;
            if !outage_len.is_zero() && outage.is_none() && now >= begin {
                peer.set_mode(Mode::Disconnect);
                progress.set_message("relay down");
                outage = Some((now, now + outage_len.as_millis() as u64));
            }
            if !restored && outage.is_some_and(|(_, end)| now >= end) {
                peer.set_mode(Mode::Accept);
                progress.set_message("drain");
                restored = true;
            }
        }
        if let Some(h) = surge_task.take_if(|h| h.is_finished()) {
            intake = Some(h.await??);
        }
        let sample = Sample {
            t_ms: wall_ms().saturating_sub(t0),
            ..front.sample(postfix).await?
        };
        if let Arrivals::Relay(peer) = &arrivals {
            bulk_seen += peer.arrivals(bulk_seen).len();
            progress.set_position(bulk_seen as u64);
        }
        let outage_over = outage_len.is_zero() || outage.is_some_and(|(_, e)| now >= e);
        let empty = sample.queued == 0;
        samples.push(sample);
        if intake.is_some() && outage_over && empty {
            break;
        }
        if started.elapsed() >= args.max_duration {
            eprintln!(
                "drill: stopped after {} s, not drained",
                args.max_duration.as_secs()
            );
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    steady_task.await?;
    progress.finish_and_clear();
    // The last transactional messages: up to 30 s to arrive.
    let sent: Vec<Sent> = sent.lock().expect("sent").clone();
    let key = |n: usize, s: &Sent| match arrivals {
        Arrivals::Relay(_) => format!("drill tx {n}"),
        Arrivals::Events(_) => s.id.clone(),
    };
    let waited = Instant::now() + Duration::from_secs(30);
    let mut seen = arrivals.seen();
    while Instant::now() < waited
        && sent
            .iter()
            .enumerate()
            .any(|(n, s)| s.enqueue_ms.is_some() && !seen.contains_key(&key(n, s)))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = arrivals.seen();
    }
    let (bulk_ids, bulk_refused, intake_secs) = intake.unwrap_or_default();
    let surge_at = surge_at.unwrap_or(t0);
    let rel = |ms: u64| ms.saturating_sub(t0);
    let tx = sent
        .iter()
        .enumerate()
        .map(|(n, s)| Tx {
            sent_ms: rel(s.at_ms),
            enqueue_ms: s.enqueue_ms,
            arrived_ms: seen.get(&key(n, s)).map(|a| rel(a.0)),
        })
        .collect();
    let bulk_arrived_ms: Vec<u64> = match (&arrivals, &front) {
        // smtp-source gives every bulk message the same subject: each
        // arrival counts (a second copy cannot be told from another).
        (Arrivals::Relay(peer), Front::Postfix { .. }) => peer
            .arrivals(0)
            .into_iter()
            .filter(|(s, _)| s == "drill bulk")
            .map(|(_, at)| rel(unix_ms(at)))
            .collect(),
        (Arrivals::Relay(_), _) => seen
            .iter()
            .filter(|(k, _)| k.starts_with("drill bulk "))
            .map(|(_, a)| rel(a.0))
            .collect(),
        (Arrivals::Events(_), _) => bulk_ids
            .iter()
            .filter_map(|k| seen.get(k).map(|a| rel(a.0)))
            .collect(),
    };
    if matches!(front, Front::Postfix { .. }) {
        seen.remove("drill bulk");
    }
    Ok(Recorded {
        surge_at_ms: rel(surge_at),
        outage_ms: outage.map(|(a, b)| (rel(a), rel(b))),
        tx,
        bulk_acked: bulk_ids.len(),
        bulk_refused,
        intake_secs,
        bulk_arrived_ms,
        duplicates: seen.values().map(|a| a.1 - 1).sum(),
        samples,
    })
}
