//! Rates over the last minute, and the QueueStats view built from the
//! spool's counters, the lease table and those rates.

use std::sync::Mutex;
use std::time::Instant;

use crate::store::StoreSnapshot;

const WINDOW: usize = 60;

/// Per-second event counts for the last minute.
pub struct Rates {
    start: Instant,
    ring: Mutex<Ring>,
}

struct Ring {
    /// Which second since start each slot holds.
    second: [u64; WINDOW],
    enqueued: [u64; WINDOW],
    delivered: [u64; WINDOW],
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            second: [0; WINDOW],
            enqueued: [0; WINDOW],
            delivered: [0; WINDOW],
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
        }
        i
    }

    fn sum(&self, now: u64, series: &[u64; WINDOW]) -> u64 {
        (0..WINDOW)
            .filter(|&i| self.second[i] + (WINDOW as u64) > now && self.second[i] <= now)
            .map(|i| series[i])
            .sum()
    }
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

    pub fn delivered(&self, n: u64) {
        let now = self.now();
        let mut r = self.ring.lock().expect("rates");
        let i = r.slot(now);
        r.delivered[i] += n;
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
    pub drain_eta_seconds: f64,
    pub queued_by_lane: [u64; 3],
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
    rates: (f64, f64),
    uptime: u64,
    now_ms: u64,
) -> QueueStats {
    let c = &snap.counters;
    let queued = c.queued_total();
    let scheduled = snap.scheduled.min(queued);
    let in_flight = in_flight.min(queued - scheduled);
    let (enq, del) = rates;
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
        drain_eta_seconds: drain_eta(queued, del),
        queued_by_lane: c.queued,
        group_commits_total: snap.group_commits,
        fsyncs_total: snap.fsyncs,
        quarantined: c.quarantined,
        spool_bytes: c.spool_bytes(),
        uptime_seconds: uptime,
    }
}

/// queued / rate; 0 when empty; -1 when queued but nothing drains.
pub fn drain_eta(queued: u64, delivery_rate: f64) -> f64 {
    if queued == 0 {
        0.0
    } else if delivery_rate <= 0.0 {
        -1.0
    } else {
        queued as f64 / delivery_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Counters;

    #[test]
    fn eta() {
        assert_eq!(drain_eta(0, 0.0), 0.0);
        assert_eq!(drain_eta(10, 0.0), -1.0);
        assert_eq!(drain_eta(100, 50.0), 2.0);
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
            ..StoreSnapshot::default()
        };
        let s = queue_stats(&snap, 2, (1.0, 2.0), 5, 11_000);
        assert_eq!((s.queued, s.scheduled, s.in_flight, s.ready), (10, 3, 2, 5));
        assert_eq!(s.oldest_queued_age_seconds, 10.0);
        assert_eq!(s.drain_eta_seconds, 5.0);
        assert_eq!(s.queued_by_lane, [1, 5, 4]);
    }

    #[test]
    fn rates_count_the_last_minute() {
        let r = Rates::default();
        r.enqueued(30);
        r.delivered(10);
        let (e, d) = r.per_second();
        assert_eq!((e, d), (30.0, 10.0)); // under one second: divided by 1
    }
}
