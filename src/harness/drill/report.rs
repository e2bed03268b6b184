//! What a drill saw, summed up: time to detect, the transactional lane's
//! time to inbox per window, the surge's intake, the backlog, the drain
//! ETA against the actual drain, loss and duplicates, and the verdict.
//! Pure, from the recorded run (tested as a table).

use serde::Serialize;

/// One transactional message of the steady traffic (ms since the start).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tx {
    pub sent_ms: u64,
    /// How long its Enqueue took; None when it was refused or failed.
    pub enqueue_ms: Option<f64>,
    /// When the relay first had it.
    pub arrived_ms: Option<u64>,
}

/// QueueStats as sampled about every second (ms since the start).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    pub t_ms: u64,
    /// 0 OK, 1 WARNING, 2 CRITICAL.
    pub level: i32,
    pub reason: String,
    pub cause: String,
    pub queued: u64,
    pub eta_secs: f64,
    pub enqueue_rate: f64,
    pub delivery_rate: f64,
}

/// Everything a drill recorded.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub surge_at_ms: u64,
    /// The relay's outage, when there was one.
    pub outage_ms: Option<(u64, u64)>,
    pub tx: Vec<Tx>,
    /// Bulk messages acknowledged, and how long their intake took.
    pub bulk_acked: usize,
    pub bulk_refused: usize,
    pub intake_secs: f64,
    /// When the relay first had each bulk message.
    pub bulk_arrived_ms: Vec<u64>,
    /// Copies the relay had beyond the first, over all messages.
    pub duplicates: usize,
    pub samples: Vec<Sample>,
}

/// Targets the verdict checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    pub transactional_p99_secs: f64,
    pub detect_secs: f64,
    pub window_secs: u64,
    pub eta_every_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    pub from_secs: u64,
    pub to_secs: u64,
    pub sent: usize,
    pub p50_secs: f64,
    pub p99_secs: f64,
    pub max_secs: f64,
    pub not_delivered: usize,
    /// The congestion states seen in it, in order ("OK→WARNING").
    pub congestion: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EtaCheck {
    /// Seconds after the surge began.
    pub at_secs: u64,
    pub queued: u64,
    /// What QueueStats said (-1: not draining).
    pub shown_secs: f64,
    /// How long the queue actually took to empty from then.
    pub actual_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub warning_after_secs: Option<f64>,
    pub critical_after_secs: Option<f64>,
    pub first_reason: String,
    pub first_cause: String,
    pub windows: Vec<Window>,
    pub transactional_p50_secs: f64,
    pub transactional_p99_secs: f64,
    pub transactional_max_secs: f64,
    /// The same for mail sent while the relay was up: not during its
    /// outage, nor within the target before it began (no queue delivers
    /// through a relay that is down; what counts is how soon it recovers).
    pub transactional_p99_relay_up_secs: f64,
    pub surge_accept_rate: f64,
    pub surge_refused: usize,
    /// Transactional Enqueue calls made while the surge was taken in.
    pub enqueue_p99_ms_during_surge: f64,
    pub backlog_peak: u64,
    pub eta_checks: Vec<EtaCheck>,
    /// From the surge's start to the last bulk message at the relay.
    pub time_to_empty_secs: Option<f64>,
    pub acknowledged: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub checks: Vec<(String, bool)>,
    pub pass: bool,
}

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn level_name(level: i32) -> &'static str {
    match level {
        0 => "OK",
        1 => "WARNING",
        _ => "CRITICAL",
    }
}

/// Time to inbox (s) of the acknowledged transactional messages sent in
/// [from, to), sorted; and how many of them were sent and acknowledged.
fn inbox(r: &Recorded, from: u64, to: u64) -> (usize, Vec<f64>) {
    let sent: Vec<&Tx> =
        r.tx.iter()
            .filter(|t| t.enqueue_ms.is_some() && (from..to).contains(&t.sent_ms))
            .collect();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|t| {
            t.arrived_ms
                .map(|a| a.saturating_sub(t.sent_ms) as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    (sent.len(), lat)
}

pub fn summarize(r: &Recorded, t: &Targets) -> Summary {
    let after_surge = |level: i32| {
        r.samples
            .iter()
            .find(|s| s.t_ms >= r.surge_at_ms && s.level >= level)
            .map(|s| (s.t_ms - r.surge_at_ms) as f64 / 1000.0)
    };
    let first_bad = r.samples.iter().find(|s| s.level > 0);
    let end_ms =
        r.tx.last()
            .map_or(0, |x| x.sent_ms + 1)
            .max(r.samples.last().map_or(0, |s| s.t_ms + 1));
    let w = t.window_secs.max(1) * 1000;
    let mut windows = Vec::new();
    let mut from = 0;
    while from < end_ms {
        let to = from + w;
        let (sent, lat) = inbox(r, from, to);
        let mut states: Vec<i32> = r
            .samples
            .iter()
            .filter(|s| (from..to).contains(&s.t_ms))
            .map(|s| s.level)
            .collect();
        states.dedup();
        windows.push(Window {
            from_secs: from / 1000,
            to_secs: to / 1000,
            sent,
            p50_secs: pct(&lat, 0.5),
            p99_secs: pct(&lat, 0.99),
            max_secs: lat.last().copied().unwrap_or(f64::NAN),
            not_delivered: sent - lat.len(),
            congestion: states
                .into_iter()
                .map(level_name)
                .collect::<Vec<_>>()
                .join("→"),
        });
        from = to;
    }
    let (_, all) = inbox(r, 0, u64::MAX);
    let mut up: Vec<f64> = match r.outage_ms {
        None => all.clone(),
        Some((a, b)) => {
            let from = a.saturating_sub((t.transactional_p99_secs * 1000.0) as u64);
            let (_, before) = inbox(r, 0, from);
            let (_, after) = inbox(r, b, u64::MAX);
            before.into_iter().chain(after).collect()
        }
    };
    up.sort_by(f64::total_cmp);
    let intake_end = r.surge_at_ms + (r.intake_secs.max(0.0) * 1000.0) as u64;
    let mut during: Vec<f64> =
        r.tx.iter()
            .filter(|x| (r.surge_at_ms..=intake_end).contains(&x.sent_ms))
            .filter_map(|x| x.enqueue_ms)
            .collect();
    during.sort_by(f64::total_cmp);
    let emptied_ms = (r.bulk_arrived_ms.len() >= r.bulk_acked && r.bulk_acked > 0)
        .then(|| r.bulk_arrived_ms.iter().max().copied())
        .flatten();
    let every = t.eta_every_secs.max(1) * 1000;
    let mut eta_checks = Vec::new();
    if let Some(empty) = emptied_ms {
        let mut at = r.surge_at_ms + every;
        while at < empty {
            if let Some(s) = r.samples.iter().find(|s| s.t_ms >= at) {
                eta_checks.push(EtaCheck {
                    at_secs: (at - r.surge_at_ms) / 1000,
                    queued: s.queued,
                    shown_secs: s.eta_secs,
                    actual_secs: empty.saturating_sub(s.t_ms) as f64 / 1000.0,
                });
            }
            at += every;
        }
    }
    let acked_tx = r.tx.iter().filter(|x| x.enqueue_ms.is_some()).count();
    let arrived_tx =
        r.tx.iter()
            .filter(|x| x.enqueue_ms.is_some() && x.arrived_ms.is_some())
            .count();
    let acknowledged = acked_tx + r.bulk_acked;
    let lost = (acked_tx - arrived_tx) + r.bulk_acked.saturating_sub(r.bulk_arrived_ms.len());
    let warning_after_secs = after_surge(1);
    let p99_up = pct(&up, 0.99);
    let checks = vec![
        ("0 acknowledged messages lost".to_string(), lost == 0),
        (
            format!("WARNING within {:.0} s of the surge's start", t.detect_secs),
            warning_after_secs.is_some_and(|s| s <= t.detect_secs),
        ),
        (
            format!(
                "transactional time to inbox p99 ≤ {:.1} s while the relay was up",
                t.transactional_p99_secs
            ),
            p99_up <= t.transactional_p99_secs,
        ),
        ("the backlog drained".to_string(), emptied_ms.is_some()),
    ];
    Summary {
        warning_after_secs,
        critical_after_secs: after_surge(2),
        first_reason: first_bad.map(|s| s.reason.clone()).unwrap_or_default(),
        first_cause: first_bad.map(|s| s.cause.clone()).unwrap_or_default(),
        windows,
        transactional_p50_secs: pct(&all, 0.5),
        transactional_p99_secs: pct(&all, 0.99),
        transactional_p99_relay_up_secs: p99_up,
        transactional_max_secs: all.last().copied().unwrap_or(f64::NAN),
        surge_accept_rate: r.bulk_acked as f64 / r.intake_secs.max(1e-9),
        surge_refused: r.bulk_refused,
        enqueue_p99_ms_during_surge: pct(&during, 0.99),
        backlog_peak: r.samples.iter().map(|s| s.queued).max().unwrap_or(0),
        eta_checks,
        time_to_empty_secs: emptied_ms.map(|e| e.saturating_sub(r.surge_at_ms) as f64 / 1000.0),
        acknowledged,
        lost,
        duplicated: r.duplicates,
        pass: checks.iter().all(|c| c.1),
        checks,
    }
}

fn secs(x: Option<f64>) -> String {
    x.map_or("not reached".to_string(), |s| format!("{s:.0} s"))
}

/// The report as Markdown tables.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    out += "| window (s) | transactional sent | time to inbox p50 / p99 / max | congestion |\n|---|---|---|---|\n";
    for w in &s.windows {
        let missing = if w.not_delivered > 0 {
            format!(", {} not delivered", w.not_delivered)
        } else {
            String::new()
        };
        out += &format!(
            "| {}–{} | {} | {:.2} / {:.2} / {:.2} s{missing} | {} |\n",
            w.from_secs, w.to_secs, w.sent, w.p50_secs, w.p99_secs, w.max_secs, w.congestion
        );
    }
    out += "\n| figure | result |\n|---|---|\n";
    let rows = [
        (
            "time to WARNING from the surge's start",
            secs(s.warning_after_secs),
        ),
        (
            "time to CRITICAL from the surge's start",
            secs(s.critical_after_secs),
        ),
        (
            "reason given first",
            format!("{} (cause: {})", s.first_reason, s.first_cause),
        ),
        (
            "transactional time to inbox, whole run, p50 / p99 / max",
            format!(
                "{:.2} / {:.2} / {:.2} s",
                s.transactional_p50_secs, s.transactional_p99_secs, s.transactional_max_secs
            ),
        ),
        (
            "transactional time to inbox p99, sent while the relay was up",
            format!("{:.2} s", s.transactional_p99_relay_up_secs),
        ),
        (
            "surge accepted at / refused",
            format!("{:.0} msg/s / {}", s.surge_accept_rate, s.surge_refused),
        ),
        (
            "transactional Enqueue p99 while the surge was taken in",
            format!("{:.1} ms", s.enqueue_p99_ms_during_surge),
        ),
        ("backlog peak", format!("{} messages", s.backlog_peak)),
        (
            "time to empty from the surge's start",
            secs(s.time_to_empty_secs),
        ),
        (
            "acknowledged / lost / duplicated at the relay",
            format!("{} / {} / {}", s.acknowledged, s.lost, s.duplicated),
        ),
    ];
    for (k, v) in rows {
        out += &format!("| {k} | {v} |\n");
    }
    if !s.eta_checks.is_empty() {
        out += "\n| after the surge began | queued | drain ETA shown | actual drain |\n|---|---|---|---|\n";
        for e in &s.eta_checks {
            let shown = if e.shown_secs < 0.0 {
                "not draining".to_string()
            } else {
                format!("{:.0} s", e.shown_secs)
            };
            out += &format!(
                "| {} s | {} | {shown} | {:.0} s |\n",
                e.at_secs, e.queued, e.actual_secs
            );
        }
    }
    out += "\nverdict:\n";
    for (check, ok) in &s.checks {
        out += &format!("  [{}] {check}\n", if *ok { "pass" } else { "FAIL" });
    }
    out += if s.pass { "PASS\n" } else { "FAIL\n" };
    out
}

/// One row of the side-by-side table: a summary's figure as text.
type Figure = dyn Fn(&Summary) -> String;

/// mailspool beside Postfix through the same scenario.
pub fn side_by_side(ours: &Summary, theirs: &Summary) -> String {
    let mut out = "| window (s) | mailspool: transactional p50 / p99 / max | Postfix: p50 / p99 / max |\n|---|---|---|\n".to_string();
    let cell = |w: Option<&Window>| {
        w.filter(|w| w.sent > 0).map_or("-".to_string(), |w| {
            let missing = if w.not_delivered > 0 {
                format!(", {} not delivered", w.not_delivered)
            } else {
                String::new()
            };
            format!(
                "{:.2} / {:.2} / {:.2} s{missing}",
                w.p50_secs, w.p99_secs, w.max_secs
            )
        })
    };
    for i in 0..ours.windows.len().max(theirs.windows.len()) {
        let (a, b) = (ours.windows.get(i), theirs.windows.get(i));
        let Some(w) = a.or(b) else { continue };
        out += &format!(
            "| {}–{} | {} | {} |\n",
            w.from_secs,
            w.to_secs,
            cell(a),
            cell(b)
        );
    }
    out += "\n| figure | mailspool | Postfix |\n|---|---|---|\n";
    let rows: [(&str, &Figure); 5] = [
        (
            "transactional time to inbox, whole run, p50 / p99 / max",
            &|s| {
                format!(
                    "{:.2} / {:.2} / {:.2} s",
                    s.transactional_p50_secs, s.transactional_p99_secs, s.transactional_max_secs
                )
            },
        ),
        ("surge accepted at", &|s| {
            format!("{:.0} msg/s", s.surge_accept_rate)
        }),
        (
            "transactional submission p99 while the surge was taken in",
            &|s| format!("{:.1} ms", s.enqueue_p99_ms_during_surge),
        ),
        ("time to empty from the surge's start", &|s| {
            secs(s.time_to_empty_secs)
        }),
        ("acknowledged / lost / duplicated", &|s| {
            format!("{} / {} / {}", s.acknowledged, s.lost, s.duplicated)
        }),
    ];
    for (k, f) in rows {
        out += &format!("| {k} | {} | {} |\n", f(ours), f(theirs));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64, level: i32, queued: u64, eta_secs: f64) -> Sample {
        Sample {
            t_ms,
            level,
            reason: if level > 0 {
                "surge".into()
            } else {
                String::new()
            },
            cause: if level > 0 {
                "surge".into()
            } else {
                String::new()
            },
            queued,
            eta_secs,
            ..Default::default()
        }
    }

    fn tx(sent_ms: u64, took_ms: Option<u64>) -> Tx {
        Tx {
            sent_ms,
            enqueue_ms: Some(2.0),
            arrived_ms: took_ms.map(|d| sent_ms + d),
        }
    }

    fn targets() -> Targets {
        Targets {
            transactional_p99_secs: 5.0,
            detect_secs: 60.0,
            window_secs: 10,
            eta_every_secs: 10,
        }
    }

    /// A surge at 10 s of 100 bulk, drained by 40 s; WARNING at 15 s,
    /// CRITICAL at 25 s; one reset took 8 s.
    fn run() -> Recorded {
        Recorded {
            surge_at_ms: 10_000,
            outage_ms: None,
            tx: vec![
                tx(1_000, Some(100)),
                tx(12_000, Some(8_000)),
                tx(21_000, Some(200)),
                tx(35_000, Some(300)),
            ],
            bulk_acked: 100,
            bulk_refused: 0,
            intake_secs: 2.0,
            bulk_arrived_ms: (0..100).map(|i| 11_000 + i * 290).collect(),
            duplicates: 1,
            samples: vec![
                sample(9_000, 0, 0, 0.0),
                sample(15_000, 1, 90, 25.0),
                sample(20_500, 1, 70, 20.0),
                sample(25_000, 2, 50, -1.0),
                sample(30_500, 1, 30, 10.0),
                sample(40_000, 0, 0, 0.0),
            ],
        }
    }

    #[test]
    fn the_summary_reads_the_run() {
        let s = summarize(&run(), &targets());
        assert_eq!(s.warning_after_secs, Some(5.0));
        assert_eq!(s.critical_after_secs, Some(15.0));
        assert_eq!(
            (s.first_reason.as_str(), s.first_cause.as_str()),
            ("surge", "surge")
        );
        assert_eq!(s.backlog_peak, 90);
        assert_eq!(s.surge_accept_rate, 50.0);
        assert_eq!(s.time_to_empty_secs, Some(29.71));
        assert_eq!((s.acknowledged, s.lost, s.duplicated), (104, 0, 1));
        // Windows of 10 s by send time: the slow reset is in the second.
        assert_eq!(s.windows[1].p99_secs, 8.0);
        assert_eq!(s.windows[1].congestion, "WARNING");
        assert_eq!(s.windows[2].congestion, "WARNING→CRITICAL");
        assert_eq!(s.transactional_max_secs, 8.0);
        // The ETA shown at 10 s and 20 s after the surge's start, against
        // the drain that followed (empty at 39.71 s).
        let checks: Vec<(u64, f64, f64)> = s
            .eta_checks
            .iter()
            .map(|e| {
                (
                    e.at_secs,
                    e.shown_secs,
                    (e.actual_secs * 100.0).round() / 100.0,
                )
            })
            .collect();
        assert_eq!(checks, [(10, 20.0, 19.21), (20, 10.0, 9.21)]);
        // The slow reset breaks the 5 s p99 target.
        assert!(!s.pass);
        assert_eq!(
            s.checks.iter().map(|c| c.1).collect::<Vec<_>>(),
            [true, true, false, true]
        );
        let text = table(&s);
        assert!(
            text.contains("| time to WARNING from the surge's start | 5 s |"),
            "{text}"
        );
        assert!(text.contains("FAIL\n"));
    }

    #[test]
    fn mail_sent_while_the_relay_was_down_is_judged_apart() {
        // The relay down from 14 s to 20 s: the reset sent at 12 s (within
        // the 5 s target before it) waited for it; the others did not.
        let r = Recorded {
            outage_ms: Some((14_000, 20_000)),
            ..run()
        };
        let s = summarize(&r, &targets());
        assert_eq!(s.transactional_p99_secs, 8.0);
        assert_eq!(s.transactional_p99_relay_up_secs, 0.3);
        assert!(s.pass, "{:?}", s.checks);
    }

    #[test]
    fn a_lost_message_and_a_missed_warning_fail_the_drill() {
        let mut r = run();
        r.tx[3].arrived_ms = None;
        r.bulk_arrived_ms.pop();
        r.samples.iter_mut().for_each(|s| s.level = 0);
        let s = summarize(
            &r,
            &Targets {
                transactional_p99_secs: 10.0,
                ..targets()
            },
        );
        assert_eq!(s.lost, 2);
        assert_eq!(s.warning_after_secs, None);
        assert_eq!(s.time_to_empty_secs, None, "not drained: one never arrived");
        assert_eq!(
            s.checks.iter().map(|c| c.1).collect::<Vec<_>>(),
            [false, false, true, false]
        );
        assert!(table(&s).contains("| time to WARNING from the surge's start | not reached |"));
        let both = side_by_side(&summarize(&run(), &targets()), &s);
        assert!(
            both.contains("| 10–20 | 8.00 / 8.00 / 8.00 s | 8.00 / 8.00 / 8.00 s |"),
            "{both}"
        );
        assert!(
            both.contains("| acknowledged / lost / duplicated | 104 / 0 / 1 | 104 / 2 / 1 |"),
            "{both}"
        );
    }
}
