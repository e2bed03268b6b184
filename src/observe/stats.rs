//! Rates over the last minute, and the QueueStats view built from the
//! spool's counters, the lease table and those rates.

use std::sync::Mutex;
use std::time::Instant;

use crate::spool::StoreSnapshot;

const WINDOW: usize = 60;
/// The short window, used when the rates changed (a surge began or ended):
/// short enough that a drain of a few seconds is estimated from its own rate.
const SHORT: u64 = 5;

/// Per-second event counts for the last minute.
pub struct Rates {
    start: Instant,
    ring: Mutex<Ring>,
}

/// Upper bounds (seconds) of the time-to-inbox buckets; the last is open.
pub const INBOX_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
const NB: usize = INBOX_BUCKETS.len() + 1;

struct Ring {
    /// Which second since start each slot holds.
    second: [u64; WINDOW],
    enqueued: [u64; WINDOW],
    delivered: [u64; WINDOW],
    /// Per second and lane: deliveries by time to inbox (enqueue → the
    /// relay's 2xx), in `INBOX_BUCKETS`.
    inbox: [[[u32; NB]; 3]; WINDOW],
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            second: [0; WINDOW],
            enqueued: [0; WINDOW],
            delivered: [0; WINDOW],
            inbox: [[[0; NB]; 3]; WINDOW],
        }
    }
}

impl Ring {
    fn slot(&mut self, now: u64) -> usize {
        let i = (now % WINDOW as u64) as usize;
        if self.second[i] != now {
            self.second[i] = now;
            self.enqueued[i] = 0;
            self.delivered[i] = 0;
            self.inbox[i] = [[0; NB]; 3];
        }
        i
    }

    /// (p50, p99) time to inbox of `lane` over the last minute, each the
    /// upper bound of its bucket (the last bound for the open one); None
    /// when nothing of the lane was delivered.
    fn time_to_inbox(&self, now: u64, lane: usize) -> Option<(f64, f64)> {
        let mut counts = [0u64; NB];
        for i in 0..WINDOW {
            if self.second[i] + WINDOW as u64 > now && self.second[i] <= now {
                for (c, n) in counts.iter_mut().zip(self.inbox[i][lane]) {
                    *c += u64::from(n);
                }
            }
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let quantile = |q: f64| {
            let rank = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (b, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return INBOX_BUCKETS[b.min(INBOX_BUCKETS.len() - 1)];
                }
            }
            INBOX_BUCKETS[INBOX_BUCKETS.len() - 1]
        };
        Some((quantile(0.5), quantile(0.99)))
    }

    fn sum(&self, now: u64, series: &[u64; WINDOW]) -> u64 {
        self.sum_over(now, WINDOW as u64, series)
    }

    /// Events in the seconds `(now - window, now]`.
    fn sum_over(&self, now: u64, window: u64, series: &[u64; WINDOW]) -> u64 {
        (0..WINDOW)
            .filter(|&i| self.second[i] + window > now && self.second[i] <= now)
            .map(|i| series[i])
            .sum()
    }

    /// The rates for the drain ETA, at second `now` after `elapsed` seconds
    /// up (pure). Over the last minute; over the last 5 s when either rate
    /// there differs from the minute's by more than half (at least 1/s):
    /// a surge that began 3 s ago must not be averaged with the quiet
    /// minute before it. Warming up while the short window is not full.
    fn view(&self, now: u64, elapsed: f64) -> RateView {
        let long_span = elapsed.clamp(1.0, WINDOW as f64);
        let short_span = elapsed.clamp(1.0, SHORT as f64);
        let long = (
            self.sum(now, &self.enqueued) as f64 / long_span,
            self.sum(now, &self.delivered) as f64 / long_span,
        );
        let short = (
            self.sum_over(now, SHORT, &self.enqueued) as f64 / short_span,
            self.sum_over(now, SHORT, &self.delivered) as f64 / short_span,
        );
        let changed = |l: f64, s: f64| (s - l).abs() > 0.5 * l.max(s).max(2.0);
        let (rates, window) = if changed(long.0, short.0) || changed(long.1, short.1) {
            (short, short_span)
        } else {
            (long, long_span)
        };
        let window_secs = window.round() as u64;
        RateView {
            enqueue: rates.0,
            delivery: rates.1,
            inflow: self.median(now, window_secs),
            window_secs,
            warming_up: elapsed < SHORT as f64,
        }
    }

    /// The median of the per-second enqueue counts over the last `window`
    /// seconds: the inflow that goes on. A batch of 6,000 that arrived in
    /// one second is in the queue, not in the future.
    fn median(&self, now: u64, window: u64) -> f64 {
        let mut per_second: Vec<u64> = (0..window.max(1))
            .filter_map(|back| now.checked_sub(back))
            .map(|sec| {
                let i = (sec % WINDOW as u64) as usize;
                if self.second[i] == sec {
                    self.enqueued[i]
                } else {
                    0
                }
            })
            .collect();
        per_second.sort_unstable();
        let n = per_second.len();
        if n % 2 == 1 {
            per_second[n / 2] as f64
        } else {
            (per_second[n / 2 - 1] + per_second[n / 2]) as f64 / 2.0
        }
    }
}

/// Rates over the window the drain ETA uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateView {
    pub enqueue: f64,
    pub delivery: f64,
    /// The inflow that goes on (median per second over the window): what
    /// the drain ETA subtracts from the delivery rate.
    pub inflow: f64,
    /// 60 s, or 5 s right after the rates changed (less while starting).
    pub window_secs: u64,
    /// Up for less than 5 s: the rates only know that much.
    pub warming_up: bool,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            start: Instant::now(),
            ring: Mutex::new(Ring::default()),
        }
    }
}

impl Rates {
    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    pub fn enqueued(&self, n: u64) {
        let now = self.now();
        let mut r = self.ring.lock().expect("rates");
        let i = r.slot(now);
        r.enqueued[i] += n;
    }

    /// Messages the relay accepted, each with its lane (`Lane::index`) and
    /// its time to inbox in seconds (enqueue → the relay's 2xx).
    pub fn delivered(&self, inbox: &[(usize, f64)]) {
        let now = self.now();
        let mut r = self.ring.lock().expect("rates");
        let i = r.slot(now);
        r.delivered[i] += inbox.len() as u64;
        for &(lane, seconds) in inbox {
            let b = INBOX_BUCKETS
                .iter()
                .position(|&bound| seconds <= bound)
                .unwrap_or(INBOX_BUCKETS.len());
            r.inbox[i][lane.min(2)][b] += 1;
        }
    }

    /// (enqueued/s, delivered/s) over the last minute, or since start.
    pub fn per_second(&self) -> (f64, f64) {
        let elapsed = self.start.elapsed().as_secs_f64().clamp(1.0, WINDOW as f64);
        let now = self.now();
        let r = self.ring.lock().expect("rates");
        (
            r.sum(now, &r.enqueued) as f64 / elapsed,
            r.sum(now, &r.delivered) as f64 / elapsed,
        )
    }

    /// Per lane: (p50, p99) time to inbox over the last minute.
    pub fn time_to_inbox(&self) -> [Option<(f64, f64)>; 3] {
        let now = self.now();
        let r = self.ring.lock().expect("rates");
        [0, 1, 2].map(|lane| r.time_to_inbox(now, lane))
    }

    /// The rates the drain ETA and the congestion state use.
    pub fn view(&self) -> RateView {
        let r = self.ring.lock().expect("rates");
        r.view(self.now(), self.start.elapsed().as_secs_f64())
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.now()
    }
}

/// What QueueStats reports, in the core's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    pub queued: u64,
    pub ready: u64,
    pub scheduled: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub enqueued_total: u64,
    pub delivered_total: u64,
    pub retried_total: u64,
    pub dead_total: u64,
    pub duplicates_total: u64,
    pub oldest_queued_age_seconds: f64,
    pub enqueue_rate_per_second: f64,
    pub delivery_rate_per_second: f64,
    /// Delivery rate minus the inflow that goes on, over `rate_window_seconds`.
    pub net_drain_rate_per_second: f64,
    pub rate_window_seconds: u64,
    pub rates_warming_up: bool,
    pub drain_eta_seconds: f64,
    pub queued_by_lane: [u64; 3],
    /// Per lane: how long its longest-waiting message has been due (0 when
    /// none is): mail stuck in one lane shows here, whatever the others do.
    pub waiting_by_lane_seconds: [f64; 3],
    pub group_commits_total: u64,
    pub fsyncs_total: u64,
    pub quarantined: u64,
    pub spool_bytes: u64,
    pub uptime_seconds: u64,
}

/// Builds the view. Pure: all inputs are given.
pub fn queue_stats(
    snap: &StoreSnapshot,
    in_flight: u64,
    rates: RateView,
    uptime: u64,
    now_ms: u64,
) -> QueueStats {
    let c = &snap.counters;
    let queued = c.queued_total();
    let scheduled = snap.scheduled.min(queued);
    let in_flight = in_flight.min(queued - scheduled);
    let (enq, del) = (rates.enqueue, rates.delivery);
    QueueStats {
        queued,
        ready: queued - scheduled - in_flight,
        scheduled,
        in_flight,
        dead: c.dead,
        enqueued_total: c.enqueued_total,
        delivered_total: c.delivered_total,
        retried_total: c.retried_total,
        dead_total: c.dead_total,
        duplicates_total: c.duplicates_total,
        oldest_queued_age_seconds: snap
            .oldest_queued_ms
            .filter(|_| queued > 0)
            .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0)
            .unwrap_or(0.0),
        enqueue_rate_per_second: enq,
        delivery_rate_per_second: del,
        net_drain_rate_per_second: del - rates.inflow,
        rate_window_seconds: rates.window_secs,
        rates_warming_up: rates.warming_up,
        drain_eta_seconds: drain_eta(queued, rates.inflow, del),
        queued_by_lane: c.queued,
        waiting_by_lane_seconds: snap
            .oldest_due_ms
            .map(|d| d.map_or(0.0, |d| now_ms.saturating_sub(d) as f64 / 1000.0)),
        group_commits_total: snap.group_commits,
        fsyncs_total: snap.fsyncs,
        quarantined: c.quarantined,
        spool_bytes: c.spool_bytes(),
        uptime_seconds: uptime,
    }
}

/// queued ÷ (delivery rate − the inflow that goes on): the mail that keeps
/// arriving is mail still to drain. 0 when empty; -1 when not draining (nothing
/// delivered, or as much arriving as leaving).
pub fn drain_eta(queued: u64, enqueue_rate: f64, delivery_rate: f64) -> f64 {
    let net = delivery_rate - enqueue_rate;
    if queued == 0 {
        0.0
    } else if net <= 0.0 {
        -1.0
    } else {
        queued as f64 / net
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Counters;

    #[test]
    fn eta_counts_the_inflow() {
        assert_eq!(drain_eta(0, 0.0, 0.0), 0.0);
        assert_eq!(drain_eta(10, 0.0, 0.0), -1.0);
        assert_eq!(drain_eta(100, 0.0, 50.0), 2.0);
        // 100 queued, 40/s in, 50/s out: 10 s, not 2.
        assert_eq!(drain_eta(100, 40.0, 50.0), 10.0);
        assert_eq!(drain_eta(100, 50.0, 50.0), -1.0, "as much in as out");
        assert_eq!(drain_eta(100, 80.0, 50.0), -1.0, "growing");
    }

    /// A ring with these (second, enqueued, delivered) counts.
    fn ring(counts: &[(u64, u64, u64)]) -> Ring {
        let mut r = Ring::default();
        for &(sec, e, d) in counts {
            let i = r.slot(sec);
            r.enqueued[i] += e;
            r.delivered[i] += d;
        }
        r
    }

    #[test]
    fn the_window_adapts_when_the_rates_change() {
        // A steady minute: 100/s out, 20/s in; the minute's average.
        let steady: Vec<_> = (41..=100).map(|s| (s, 20, 100)).collect();
        let v = ring(&steady).view(100, 3600.0);
        assert_eq!((v.window_secs, v.enqueue, v.delivery), (60, 20.0, 100.0));
        // A surge began 3 s ago: 5,000/s in. The minute says 268/s; the
        // last 5 s say 3,008/s: the short window is taken.
        let mut surge = steady.clone();
        surge.extend((101..=103).map(|s| (s, 5_000, 100)));
        let v = ring(&surge).view(103, 3600.0);
        assert_eq!(v.window_secs, 5);
        assert!((v.enqueue - 3_008.0).abs() < 1.0, "{v:?}");
        // Delivery stopped 5 s ago after a quiet minute: 0/s, not 92/s.
        let mut stalled = steady;
        stalled.extend((101..=105).map(|s| (s, 0, 0)));
        let v = ring(&stalled).view(105, 3600.0);
        assert_eq!((v.window_secs, v.delivery), (5, 0.0));
        // A batch of 6,000 in one second, then 50/s: the inflow that goes
        // on is 50/s, not the 650/s average.
        let mut burst: Vec<_> = (1..=59).map(|s| (s, 50, 800)).collect();
        burst.push((60, 6_000, 800));
        let v = ring(&burst).view(60, 3600.0);
        assert_eq!(v.inflow, 50.0, "{v:?}");
        // Just started: what is known, and it says so.
        let v = ring(&[(0, 30, 10), (1, 30, 10)]).view(1, 2.0);
        assert!(v.warming_up);
        assert_eq!((v.enqueue, v.delivery), (30.0, 10.0));
    }

    #[test]
    fn view_splits_queued_into_ready_scheduled_in_flight() {
        let snap = StoreSnapshot {
            counters: Counters {
                queued: [1, 5, 4],
                enqueued_total: 12,
                delivered_total: 2,
                ..Counters::default()
            },
            scheduled: 3,
            oldest_queued_ms: Some(1_000),
            oldest_due_ms: [Some(9_000), None, Some(1_000)],
            ..StoreSnapshot::default()
        };
        let rates = RateView {
            enqueue: 1.0,
            inflow: 1.0,
            delivery: 3.0,
            window_secs: 60,
            warming_up: false,
        };
        let s = queue_stats(&snap, 2, rates, 5, 11_000);
        assert_eq!((s.queued, s.scheduled, s.in_flight, s.ready), (10, 3, 2, 5));
        assert_eq!(s.oldest_queued_age_seconds, 10.0);
        assert_eq!(s.drain_eta_seconds, 5.0);
        assert_eq!(s.queued_by_lane, [1, 5, 4]);
        assert_eq!(s.waiting_by_lane_seconds, [2.0, 0.0, 10.0]);
    }

    #[test]
    fn time_to_inbox_percentiles_per_lane() {
        let r = Rates::default();
        for _ in 0..98 {
            r.delivered(&[(0, 0.3)]);
        }
        r.delivered(&[(0, 4.0)]);
        r.delivered(&[(0, 7_200.0)]);
        r.delivered(&[(2, 40.0)]);
        let [t, n, b] = r.time_to_inbox();
        // 100 resets: half within 0.5 s, the 99th within 5 s.
        assert_eq!(t, Some((0.5, 5.0)));
        assert_eq!(n, None, "nothing normal delivered");
        assert_eq!(b, Some((60.0, 60.0)));
    }

    #[test]
    fn rates_count_the_last_minute() {
        let r = Rates::default();
        r.enqueued(30);
        r.delivered(&[(1, 1.0); 10]);
        let (e, d) = r.per_second();
        assert_eq!((e, d), (30.0, 10.0)); // under one second: divided by 1
    }
}
