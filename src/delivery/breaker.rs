//! A relay's circuit breaker: when it cannot be reached, refuses our
//! credentials or asks us to slow down, its pool backs off (100 ms doubling
//! to 5 s, 30 s when it refuses our credentials) instead of every queued message burning an attempt on it; after
//! the backoff one caller probes while the others wait or go elsewhere.

use std::time::{Duration, Instant};

/// When the relay cannot be reached or asks us to slow down (421, 451,
/// 454), the whole pool waits, instead of every queued message burning an
/// attempt on it: 100 ms doubling to 5 s (30 s for refused credentials),
/// reset by the next success.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    until: Option<Instant>,
    /// Why it opened last: "unreachable", "throttled", "tls failed" or
    /// "auth failed".
    reason: &'static str,
    /// What the relay said or what failed, last time.
    detail: String,
    /// After a backoff, one worker probes the relay while the others wait.
    probing: bool,
    /// The last state logged at WARN, and when.
    warned: Option<(&'static str, Instant)>,
}

/// The relay as QueueStats shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayState {
    /// "ok", "unreachable" (connection failures, timeouts), "throttled"
    /// (slow-down replies), "tls failed" or "auth failed", while the pool
    /// is backing off.
    pub state: &'static str,
    /// The last error or reply behind that state ("" when ok).
    pub reason: String,
    pub consecutive_failures: u32,
    pub backoff_remaining_ms: u64,
}

impl Breaker {
    pub const THROTTLE_PAUSE: Duration = Duration::from_secs(1);
    const WARN_AGAIN_AFTER: Duration = Duration::from_secs(60);
    pub const BASE: Duration = Duration::from_millis(100);
    /// The longest backoff of a relay that refuses our credentials.
    const CAP: Duration = Duration::from_secs(30);
    /// The longest backoff of a relay that cannot be reached: a probe (one
    /// connection) every 5 s at most, so that mail flows again within
    /// seconds of its return (the drill measured up to 31 s of waiting
    /// after a relay outage with the 30 s cap).
    const CAP_UNREACHABLE: Duration = Duration::from_secs(5);

    /// How long to wait before using the relay, if at all.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Whether the caller may use the relay now: None = go (after a backoff
    /// the first caller becomes the probe), Some(wait) = check back then.
    pub fn acquire(&mut self, now: Instant) -> Option<Duration> {
        if let Some(wait) = self.wait(now) {
            return Some(wait);
        }
        if self.failures > 0 {
            if self.probing {
                return Some(Self::BASE);
            }
            self.probing = true;
        }
        None
    }

    /// A probe that ended without telling us anything (nothing was sent).
    pub fn end_probe(&mut self) {
        self.probing = false;
    }

    /// A failure of the relay; a change of state is logged once, at WARN
    /// (again for the same state only after `WARN_AGAIN_AFTER`, so a relay
    /// that throttles every other message does not flood the log).
    pub fn failed(&mut self, now: Instant, relay: &str, reason: &'static str, detail: &str) {
        let repeated = self.warned.is_some_and(|(r, at)| {
            r == reason && now.saturating_duration_since(at) < Self::WARN_AGAIN_AFTER
        });
        if (self.failures == 0 || self.reason != reason) && !repeated {
            self.warned = Some((reason, now));
            tracing::warn!(
                relay,
                state = reason,
                error = %crate::delivery::redact::redact_addresses(detail),
                "RelayDown: its messages go to another relay of their route, or wait (no attempts counted for throttling, TLS or credentials)"
            );
        }
        self.reason = reason;
        detail.clone_into(&mut self.detail);
        let was_probe = std::mem::take(&mut self.probing);
        if self.is_open(now) && !was_probe {
            // Other workers' attempts that began before the pool backed off:
            // one outage, not many.
            return;
        }
        self.failures = self.failures.saturating_add(1);
        // A relay that asks us to slow down is up: its throttle lowers the
        // rate, and it is tried again after a pause, not an escalating wait.
        let backoff = if reason == "throttled" {
            Self::THROTTLE_PAUSE
        } else {
            let cap = if reason == "auth failed" {
                Self::CAP
            } else {
                Self::CAP_UNREACHABLE
            };
            Self::BASE
                .saturating_mul(1 << self.failures.min(20).saturating_sub(1))
                .min(cap)
        };
        self.until = Some(now + backoff);
        tracing::debug!(
            failures = self.failures,
            backoff_ms = backoff.as_millis() as u64,
            "RelayBackoff"
        );
    }

    pub fn succeeded(&mut self, relay: &str) {
        if self.failures > 0 {
            tracing::info!(
                relay,
                was = self.reason,
                failures = self.failures,
                "RelayRecovered"
            );
        }
        self.failures = 0;
        self.until = None;
        self.probing = false;
    }

    /// Whether a caller would be let through now (a probe counts), or how
    /// long until one could: what the router sees.
    pub fn health(&self, now: Instant) -> Option<Duration> {
        match self.wait(now) {
            Some(w) => Some(w),
            None if self.failures > 0 && self.probing => Some(Self::BASE),
            None => None,
        }
    }

    /// Whether the last use failed (the next success is a recovery).
    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.wait(now).is_some()
    }

    pub fn state(&self, now: Instant) -> RelayState {
        let wait = self.wait(now);
        RelayState {
            state: if self.failures == 0 {
                "ok"
            } else {
                self.reason
            },
            reason: if self.failures == 0 {
                String::new()
            } else {
                self.detail.clone()
            },
            consecutive_failures: self.failures,
            backoff_remaining_ms: wait.map(|d| d.as_millis() as u64).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_backs_off_doubling_and_resets() {
        let mut b = Breaker::default();
        let mut t = Instant::now();
        assert!(!b.is_open(t));
        let waits: Vec<u128> = (0..10)
            .map(|_| {
                b.failed(t, "r", "unreachable", "refused");
                // Failures while open do not escalate.
                b.failed(t, "r", "unreachable", "refused");
                let w = b.wait(t).unwrap();
                t += w;
                w.as_millis()
            })
            .collect();
        // An unreachable relay is probed at least every 5 s.
        assert_eq!(
            waits,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert!(!b.is_open(t + Duration::from_secs(6)));
        assert_eq!(b.state(t).state, "unreachable");
        assert_eq!(b.state(t).consecutive_failures, 10);
        // One that refuses our credentials: up to 30 s.
        let mut auth = Breaker::default();
        let mut t2 = Instant::now();
        for _ in 0..12 {
            auth.failed(t2, "r", "auth failed", "535");
            t2 += auth.wait(t2).unwrap();
        }
        auth.failed(t2, "r", "auth failed", "535");
        assert_eq!(auth.wait(t2), Some(Duration::from_secs(30)));
        let t = Instant::now();
        b.succeeded("r");
        assert_eq!(b.state(t).state, "ok");
        assert!(!b.is_open(t));
    }

    #[test]
    fn after_a_backoff_one_caller_probes_and_the_others_wait() {
        let mut b = Breaker::default();
        let t = Instant::now();
        assert_eq!(b.acquire(t), None, "healthy: everyone goes");
        assert_eq!(b.acquire(t), None);
        b.failed(t, "r", "unreachable", "refused");
        assert!(b.acquire(t).is_some(), "backing off");
        let later = t + Duration::from_millis(150);
        assert_eq!(b.acquire(later), None, "the first caller probes");
        assert_eq!(
            b.acquire(later),
            Some(Breaker::BASE),
            "the others wait for the probe"
        );
        b.failed(later, "r", "unreachable", "refused");
        assert_eq!(
            b.state(later).consecutive_failures,
            2,
            "a failed probe escalates"
        );
        let much_later = later + Duration::from_secs(1);
        assert_eq!(b.acquire(much_later), None);
        b.succeeded("r");
        assert_eq!(b.acquire(much_later), None);
        assert_eq!(b.acquire(much_later), None, "healthy again: no probing");
    }
}
