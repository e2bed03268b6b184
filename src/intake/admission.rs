//! Whether the spool takes one more message of a lane: refuse before the
//! disk is full, bulk first and transactional last.
//!
//! Pure; the inputs are the spool's live bytes (kept exactly by the store)
//! and the free space of the data directory's filesystem (sampled).
//!
//! Thresholds, as fractions of the room the limits leave:
//! - `max_spool_bytes` (0 = no limit): bulk is refused from 80% of it,
//!   normal from 90%, transactional at 100%;
//! - `min_free_bytes`: bulk is refused when free space falls below 3× it,
//!   normal below 2×, transactional below 1×.
//!
//! A refusal carries a retry delay: the time the backlog needs to drain the
//! excess at the current delivery rate, clamped to 1 s..60 s.

use std::time::Duration;

use crate::model::Lane;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpoolLimits {
    /// 0 = unlimited.
    pub max_spool_bytes: u64,
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub spool_bytes: u64,
    pub disk_free_bytes: u64,
    pub delivery_rate_per_second: f64,
    /// Average bytes per queued message, for the retry delay.
    pub bytes_per_message: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}; retry in {} ms", retry_after.as_millis())]
pub struct Refusal {
    pub reason: String,
    pub retry_after: Duration,
}

/// Fractions of `max_spool_bytes` at which each lane is refused.
const SPOOL_SHARE: [f64; 3] = [1.0, 0.9, 0.8];
/// Multiples of `min_free_bytes` below which each lane is refused.
const FREE_MULTIPLE: [u64; 3] = [1, 2, 3];

pub fn admit(lane: Lane, usage: &Usage, limits: &SpoolLimits) -> Result<(), Refusal> {
    let i = lane.index();
    let mut excess = 0u64;
    let mut reason = None;
    if limits.max_spool_bytes > 0 {
        let cap = (limits.max_spool_bytes as f64 * SPOOL_SHARE[i]) as u64;
        if usage.spool_bytes >= cap {
            excess = usage.spool_bytes - cap + 1;
            reason = Some(format!(
                "spool full for the {} lane: {} of max_spool_bytes = {} bytes used (this lane stops at {:.0}%)",
                lane.name(),
                usage.spool_bytes,
                limits.max_spool_bytes,
                SPOOL_SHARE[i] * 100.0
            ));
        }
    }
    let floor = limits.min_free_bytes.saturating_mul(FREE_MULTIPLE[i]);
    if reason.is_none() && usage.disk_free_bytes < floor {
        excess = floor - usage.disk_free_bytes;
        reason = Some(format!(
            "disk nearly full for the {} lane: {} bytes free, this lane needs {} (min_free_bytes × {})",
            lane.name(),
            usage.disk_free_bytes,
            floor,
            FREE_MULTIPLE[i]
        ));
    }
    match reason {
        None => Ok(()),
        Some(reason) => Err(Refusal {
            reason,
            retry_after: retry_after(excess, usage),
        }),
    }
}

fn retry_after(excess_bytes: u64, usage: &Usage) -> Duration {
    let bytes_per_second = usage.delivery_rate_per_second * usage.bytes_per_message.max(1.0);
    let secs = if bytes_per_second > 0.0 {
        excess_bytes as f64 / bytes_per_second
    } else {
        60.0
    };
    Duration::from_secs_f64(secs.clamp(1.0, 60.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SpoolLimits = SpoolLimits {
        max_spool_bytes: 1000,
        min_free_bytes: 100,
    };

    fn usage(spool: u64, free: u64) -> Usage {
        Usage {
            spool_bytes: spool,
            disk_free_bytes: free,
            delivery_rate_per_second: 0.0,
            bytes_per_message: 10.0,
        }
    }

    #[test]
    fn lanes_are_refused_bulk_first_transactional_last() {
        // (spool bytes, free bytes) → which lanes are admitted [t, n, b]
        let cases = [
            ((0, 10_000), [true, true, true]),
            ((799, 10_000), [true, true, true]),
            ((800, 10_000), [true, true, false]),
            ((900, 10_000), [true, false, false]),
            ((999, 10_000), [true, false, false]),
            ((1000, 10_000), [false, false, false]),
            ((0, 300), [true, true, true]),
            ((0, 299), [true, true, false]),
            ((0, 199), [true, false, false]),
            ((0, 99), [false, false, false]),
        ];
        for ((spool, free), want) in cases {
            let got = Lane::ALL.map(|l| admit(l, &usage(spool, free), &LIMITS).is_ok());
            assert_eq!(got, want, "spool {spool}, free {free}");
        }
        let unlimited = SpoolLimits {
            max_spool_bytes: 0,
            min_free_bytes: 0,
        };
        assert!(admit(Lane::Bulk, &usage(u64::MAX, 0), &unlimited).is_ok());
    }

    #[test]
    fn retry_delay_follows_the_drain_rate() {
        let mut u = usage(1100, 10_000);
        let r = admit(Lane::Transactional, &u, &LIMITS).unwrap_err();
        assert_eq!(
            r.retry_after,
            Duration::from_secs(60),
            "not draining: the longest delay"
        );
        assert!(r.reason.contains("transactional"), "{}", r.reason);
        u.delivery_rate_per_second = 5.0; // 50 bytes/s; 101 bytes over → 2 s
        assert_eq!(
            admit(Lane::Transactional, &u, &LIMITS)
                .unwrap_err()
                .retry_after
                .as_secs(),
            2
        );
        u.delivery_rate_per_second = 1e9;
        assert_eq!(
            admit(Lane::Transactional, &u, &LIMITS)
                .unwrap_err()
                .retry_after,
            Duration::from_secs(1)
        );
    }
}
