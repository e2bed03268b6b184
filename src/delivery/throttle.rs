//! A relay's sending rate. The configured quota (`rate_per_second`,
//! `burst`) is a hard ceiling, kept by governor's GCRA limiter. Under it,
//! the effective rate: a "slow down" reply cuts it in half (at most once a
//! second, so the replies to one burst are one signal), and each second
//! with successes raises it by a twentieth of where it was cut from, until
//! it is back there (additive increase, multiplicative decrease). The
//! arithmetic (`Aimd`, `Pacer`) is pure and tested as data.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The effective rate never goes below one message every two seconds.
pub const MIN_RATE: f64 = 0.5;
/// One cut per second at most.
const COOL_DOWN: Duration = Duration::from_secs(1);
/// One raise per second of successes, by `target / STEPS`.
const RAISE_EVERY: Duration = Duration::from_secs(1);
const STEPS: f64 = 20.0;
/// The sending rate is measured over this window.
const WINDOW: Duration = Duration::from_secs(2);

/// Additive increase, multiplicative decrease of one relay's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Aimd {
    /// `rate_per_second`; None = no quota.
    ceiling: Option<f64>,
    /// The lowered rate; None = not lowered (the ceiling applies).
    limit: Option<f64>,
    /// What recovery climbs back to: the rate when throttling began.
    target: f64,
    last_change: Option<Instant>,
}

impl Aimd {
    pub fn new(ceiling: Option<f64>) -> Aimd {
        Aimd {
            ceiling,
            limit: None,
            target: 0.0,
            last_change: None,
        }
    }

    /// A "slow down" reply while sending at `sending_rate` (measured).
    pub fn throttled(&mut self, now: Instant, sending_rate: f64) {
        let recent = self
            .last_change
            .is_some_and(|t| now.saturating_duration_since(t) < COOL_DOWN);
        if self.limit.is_some() && recent {
            return;
        }
        let current = match self.limit {
            Some(l) => l,
            None => {
                let measured = sending_rate.max(MIN_RATE);
                let at = self.ceiling.map_or(measured, |c| c.min(measured));
                self.target = at;
                at
            }
        };
        self.limit = Some((current / 2.0).max(MIN_RATE));
        self.last_change = Some(now);
    }

    /// A message accepted.
    pub fn succeeded(&mut self, now: Instant) {
        let Some(limit) = self.limit else {
            return;
        };
        if self
            .last_change
            .is_some_and(|t| now.saturating_duration_since(t) < RAISE_EVERY)
        {
            return;
        }
        let raised = limit + (self.target / STEPS).max(MIN_RATE);
        self.limit = (raised < self.target).then_some(raised);
        self.last_change = Some(now);
    }

    /// Messages per second now; None = unlimited.
    pub fn effective(&self) -> Option<f64> {
        self.limit.or(self.ceiling)
    }

    /// Whether throttling lowered the rate below the ceiling.
    pub fn lowered(&self) -> bool {
        self.limit.is_some()
    }
}

/// Evenly spaced send slots at a rate.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    next: Option<Instant>,
}

impl Pacer {
    /// Reserves the next slot at `rate` if it comes within `max_wait`:
    /// Ok(wait until it), or Err(the wait) with nothing reserved.
    pub fn reserve(
        &mut self,
        now: Instant,
        rate: f64,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let slot = self.next.map_or(now, |n| n.max(now));
        let wait = slot - now;
        if wait > max_wait {
            return Err(wait);
        }
        self.next = Some(slot + Duration::from_secs_f64(1.0 / rate.max(MIN_RATE)));
        Ok(wait)
    }
}

/// Sends per second over the last `WINDOW`.
#[derive(Debug, Default)]
struct Meter {
    sends: VecDeque<Instant>,
}

impl Meter {
    fn sent(&mut self, now: Instant) {
        self.sends.push_back(now);
        self.trim(now);
    }

    fn rate(&mut self, now: Instant) -> f64 {
        self.trim(now);
        self.sends.len() as f64 / WINDOW.as_secs_f64()
    }

    fn trim(&mut self, now: Instant) {
        while self
            .sends
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > WINDOW)
        {
            self.sends.pop_front();
        }
    }
}

/// One relay's limiter: the ceiling and the effective rate under it.
pub struct Throttle {
    ceiling: Option<DefaultDirectRateLimiter>,
    configured: u32,
    state: Mutex<(Aimd, Pacer, Meter)>,
}

impl Throttle {
    /// `rate_per_second` 0 = no quota; `burst` 0 = a twentieth of the
    /// rate (at least 1): 50 ms of slack, so timer jitter does not cost
    /// the relay part of its quota.
    pub fn new(rate_per_second: u32, burst: u32) -> Throttle {
        let ceiling = NonZeroU32::new(rate_per_second).map(|rate| {
            let burst = NonZeroU32::new(burst)
                .or(NonZeroU32::new(rate_per_second / 20))
                .unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Throttle {
            ceiling,
            configured: rate_per_second,
            state: Mutex::new((
                Aimd::new((rate_per_second > 0).then_some(f64::from(rate_per_second))),
                Pacer::default(),
                Meter::default(),
            )),
        }
    }

    /// Waits for the next send slot: Ok once it may go, Err(wait) when the
    /// slot is further away than `max_wait` (nothing taken).
    pub async fn admit(&self, max_wait: Duration) -> Result<(), Duration> {
        let started = Instant::now();
        let lowered = {
            let mut st = self.state.lock().expect("throttle");
            let (aimd, pacer, _) = &mut *st;
            match aimd.limit {
                Some(rate) => Some(pacer.reserve(Instant::now(), rate, max_wait)?),
                None => None,
            }
        };
        if let Some(wait) = lowered.filter(|w| !w.is_zero()) {
            tokio::time::sleep(wait).await;
        }
        let Some(limiter) = &self.ceiling else {
            return Ok(());
        };
        loop {
            match limiter.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    if started.elapsed() + wait > max_wait {
                        return Err(wait);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    pub fn sent(&self, now: Instant) {
        let mut st = self.state.lock().expect("throttle");
        st.2.sent(now);
        st.0.succeeded(now);
    }

    pub fn throttled(&self, now: Instant) {
        let mut st = self.state.lock().expect("throttle");
        let rate = st.2.rate(now);
        st.0.throttled(now, rate);
    }

    /// The configured ceiling (0 = none) and the effective rate (0 = unlimited).
    pub fn rates(&self) -> (u32, f64) {
        let st = self.state.lock().expect("throttle");
        (self.configured, st.0.effective().unwrap_or(0.0))
    }

    pub fn lowered(&self) -> bool {
        self.state.lock().expect("throttle").0.lowered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rate over time as data: cut in half on throttling (once per
    /// second), raised by target/20 each second of successes, never above
    /// the ceiling, back to unlimited when recovered.
    #[test]
    fn the_rate_halves_on_throttling_and_climbs_back_slowly() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut a = Aimd::new(Some(100.0));
        assert_eq!(a.effective(), Some(100.0));
        a.throttled(at(0), 80.0);
        assert_eq!(a.effective(), Some(40.0), "half of the measured 80/s");
        a.throttled(at(300), 40.0);
        assert_eq!(a.effective(), Some(40.0), "replies to one burst: one cut");
        a.throttled(at(1_100), 40.0);
        assert_eq!(a.effective(), Some(20.0));
        let mut seen = Vec::new();
        for s in 1..=20 {
            a.succeeded(at(1_100 + s * 1_000));
            seen.push(a.effective().unwrap());
        }
        assert_eq!(&seen[..4], &[24.0, 28.0, 32.0, 36.0]);
        assert_eq!(seen[13], 76.0);
        assert_eq!(seen[14], 100.0, "back at 80 → the ceiling applies again");
        assert!(!a.lowered());
        // Successes within the second after a change do not raise it.
        let mut b = Aimd::new(None);
        assert_eq!(b.effective(), None);
        b.throttled(at(0), 10.0);
        b.succeeded(at(500));
        assert_eq!(b.effective(), Some(5.0));
        for _ in 0..10 {
            b.throttled(at(10_000), 0.0);
        }
        assert_eq!(b.effective(), Some(2.5), "many replies at once: one cut");
        let mut c = Aimd::new(None);
        for s in 0..20 {
            c.throttled(at(s * 1_000), 0.0);
        }
        assert_eq!(c.effective(), Some(MIN_RATE), "never below the floor");
    }

    #[test]
    fn the_pacer_spaces_slots_and_reserves_only_what_fits() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let max = Duration::from_secs(1);
        assert_eq!(p.reserve(t0, 4.0, max), Ok(Duration::ZERO));
        assert_eq!(p.reserve(t0, 4.0, max), Ok(Duration::from_millis(250)));
        assert_eq!(p.reserve(t0, 4.0, max), Ok(Duration::from_millis(500)));
        assert_eq!(
            p.reserve(t0, 4.0, Duration::from_millis(600)),
            Err(Duration::from_millis(750)),
            "beyond the wait allowed: nothing reserved"
        );
        assert_eq!(p.reserve(t0, 4.0, max), Ok(Duration::from_millis(750)));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            p.reserve(later, 4.0, max),
            Ok(Duration::ZERO),
            "idle slots are not banked"
        );
    }
}
