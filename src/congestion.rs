//! Early warning: OK, WARNING or CRITICAL from the oldest message's age,
//! the drain ETA, sustained growth and stalled delivery.
//!
//! [`assess`] is a pure function of the numbers QueueStats reports (tested
//! as a table); [`Tracker`] remembers the current state and since when, and
//! logs each change once as a structured `CongestionChanged` event.

use std::sync::Mutex;

/// Thresholds; defaults in `Config` (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub warn_age_secs: f64,
    pub critical_age_secs: f64,
    pub warn_eta_secs: f64,
    pub critical_eta_secs: f64,
    /// Growth counts only with at least this many queued.
    pub growth_min_depth: u64,
    /// Stalled delivery counts only after this long up (rates need a minute).
    pub stall_after_secs: u64,
    /// A transactional message due this long and not yet delivered (password
    /// resets, OTPs: far tighter than the others, which use the age ones).
    pub transactional_warn_wait_secs: f64,
    pub transactional_critical_wait_secs: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warn_age_secs: 300.0,
            critical_age_secs: 900.0,
            warn_eta_secs: 600.0,
            critical_eta_secs: 1800.0,
            growth_min_depth: 10_000,
            stall_after_secs: 60,
            transactional_warn_wait_secs: 30.0,
            transactional_critical_wait_secs: 120.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    #[default]
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }
}

/// What the assessment looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub queued: u64,
    pub ready: u64,
    pub oldest_age_secs: f64,
    /// -1: queued and nothing delivered in the last minute.
    pub drain_eta_secs: f64,
    /// Per second, averaged over the last minute.
    pub enqueue_rate: f64,
    pub delivery_rate: f64,
    pub uptime_secs: u64,
    /// Some lane's delivery is paused by an operator.
    pub paused: bool,
    /// Up for less than the short rate window: rates are not yet trusted.
    pub warming_up: bool,
    /// The window the rates were averaged over.
    pub rate_window_secs: u64,
    /// Per lane (`Lane::index`): how long its longest-waiting message has
    /// been due.
    pub waiting_secs: [f64; 3],
}

/// The worst level any rule gives, and the reasons for it. Pure.
pub fn assess(s: &Signals, t: &Thresholds) -> (Level, String) {
    let mut found: Vec<(Level, String)> = Vec::new();
    let mut rule = |level: Level, reason: String| found.push((level, reason));
    if s.oldest_age_secs >= t.critical_age_secs {
        rule(
            Level::Critical,
            format!(
                "oldest message {:.0}s old (critical at {:.0}s)",
                s.oldest_age_secs, t.critical_age_secs
            ),
        );
    } else if s.oldest_age_secs >= t.warn_age_secs {
        rule(
            Level::Warning,
            format!(
                "oldest message {:.0}s old (warning at {:.0}s)",
                s.oldest_age_secs, t.warn_age_secs
            ),
        );
    }
    // Each lane on its own: the oldest-message rule sees the whole queue,
    // so a transactional lane stuck behind a healthy bulk backlog (or a
    // normal lane behind nothing at all) would otherwise pass unnoticed.
    for (i, lane) in ["transactional", "normal", "bulk"].into_iter().enumerate() {
        let (warn, critical) = if i == 0 {
            (
                t.transactional_warn_wait_secs,
                t.transactional_critical_wait_secs,
            )
        } else {
            (t.warn_age_secs, t.critical_age_secs)
        };
        let waited = s.waiting_secs[i];
        let level = if waited >= critical {
            Level::Critical
        } else if waited >= warn {
            Level::Warning
        } else {
            continue;
        };
        let at = if level == Level::Critical {
            critical
        } else {
            warn
        };
        rule(
            level,
            format!(
                "{lane} lane: a message has waited {waited:.0}s since it was due ({} at {at:.0}s)",
                level.name().to_lowercase()
            ),
        );
    }
    if s.drain_eta_secs >= t.critical_eta_secs {
        rule(
            Level::Critical,
            format!(
                "drain ETA {:.0}s (critical at {:.0}s)",
                s.drain_eta_secs, t.critical_eta_secs
            ),
        );
    } else if s.drain_eta_secs >= t.warn_eta_secs {
        rule(
            Level::Warning,
            format!(
                "drain ETA {:.0}s (warning at {:.0}s)",
                s.drain_eta_secs, t.warn_eta_secs
            ),
        );
    }
    // Stalled is nothing delivered, not "not draining": a queue that takes
    // in as much as it sends is growing (below), not stalled.
    if s.delivery_rate <= 0.0 && s.ready > 0 && s.uptime_secs >= t.stall_after_secs {
        if s.paused {
            rule(
                Level::Warning,
                format!("delivery paused with {} ready", s.ready),
            );
        } else {
            rule(
                Level::Critical,
                format!(
                    "delivery stalled: {} ready, nothing delivered in the last minute",
                    s.ready
                ),
            );
        }
    }
    if !s.warming_up && s.queued >= t.growth_min_depth && s.enqueue_rate > s.delivery_rate * 1.1 {
        rule(
            Level::Warning,
            format!(
                "queue growing: {:.0}/s in, {:.0}/s out over the last {}s, {} queued",
                s.enqueue_rate, s.delivery_rate, s.rate_window_secs, s.queued
            ),
        );
    }
    let level = found.iter().map(|(l, _)| *l).max().unwrap_or(Level::Ok);
    let reason = found
        .into_iter()
        .filter(|(l, _)| *l == level)
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join("; ");
    (level, reason)
}

/// The current state and since when; logs changes once.
#[derive(Default)]
pub struct Tracker {
    state: Mutex<(Level, String, u64)>,
}

impl Tracker {
    /// Records an assessment; returns (level, reason, since_ms).
    pub fn observe(&self, level: Level, reason: String, now_ms: u64) -> (Level, String, u64) {
        let mut st = self.state.lock().expect("congestion");
        if st.2 == 0 {
            st.2 = now_ms;
        }
        if st.0 != level {
            let from = st.0;
            *st = (level, reason.clone(), now_ms);
            match level {
                Level::Ok => {
                    tracing::info!(from = from.name(), to = level.name(), "CongestionChanged")
                }
                _ => {
                    tracing::warn!(from = from.name(), to = level.name(), %reason, "CongestionChanged")
                }
            }
        } else {
            st.1 = reason;
        }
        st.clone()
    }

    pub fn current(&self) -> (Level, String, u64) {
        self.state.lock().expect("congestion").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: Signals, want: Level, reason_has: &str) {
        let (level, reason) = assess(&s, &Thresholds::default());
        assert_eq!(level, want, "{s:?} → {reason}");
        assert!(
            reason.contains(reason_has),
            "{reason:?} lacks {reason_has:?}"
        );
    }

    #[test]
    fn levels_as_a_table() {
        let base = Signals {
            queued: 100,
            ready: 100,
            oldest_age_secs: 10.0,
            drain_eta_secs: 5.0,
            enqueue_rate: 20.0,
            delivery_rate: 20.0,
            uptime_secs: 3600,
            paused: false,
            warming_up: false,
            rate_window_secs: 60,
            waiting_secs: [1.0, 2.0, 200.0],
        };
        check(base, Level::Ok, "");
        // Password resets stuck behind a healthy-looking queue: the lane
        // has its own, tighter thresholds, and the reason names it.
        check(
            Signals {
                waiting_secs: [45.0, 2.0, 200.0],
                ..base
            },
            Level::Warning,
            "transactional lane: a message has waited 45s since it was due (warning at 30s)",
        );
        check(
            Signals {
                waiting_secs: [130.0, 2.0, 2.0],
                ..base
            },
            Level::Critical,
            "transactional lane",
        );
        check(
            Signals {
                waiting_secs: [0.0, 2.0, 301.0],
                ..base
            },
            Level::Warning,
            "bulk lane: a message has waited 301s",
        );
        check(
            Signals {
                oldest_age_secs: 301.0,
                ..base
            },
            Level::Warning,
            "oldest message 301s",
        );
        check(
            Signals {
                oldest_age_secs: 901.0,
                drain_eta_secs: 700.0,
                ..base
            },
            Level::Critical,
            "critical at 900s",
        );
        check(
            Signals {
                drain_eta_secs: 601.0,
                ..base
            },
            Level::Warning,
            "drain ETA 601s",
        );
        check(
            Signals {
                drain_eta_secs: 2000.0,
                ..base
            },
            Level::Critical,
            "drain ETA",
        );
        check(
            Signals {
                drain_eta_secs: -1.0,
                delivery_rate: 0.0,
                ..base
            },
            Level::Critical,
            "delivery stalled",
        );
        // Not draining (as much in as out) but delivering: not a stall.
        check(
            Signals {
                drain_eta_secs: -1.0,
                ..base
            },
            Level::Ok,
            "",
        );
        check(
            Signals {
                drain_eta_secs: -1.0,
                delivery_rate: 0.0,
                paused: true,
                ..base
            },
            Level::Warning,
            "paused",
        );
        // Just started: a minute of rates is not there yet.
        check(
            Signals {
                drain_eta_secs: -1.0,
                delivery_rate: 0.0,
                uptime_secs: 5,
                ..base
            },
            Level::Ok,
            "",
        );
        // Nothing ready (all scheduled for later): not a stall.
        check(
            Signals {
                drain_eta_secs: -1.0,
                delivery_rate: 0.0,
                ready: 0,
                ..base
            },
            Level::Ok,
            "",
        );
        check(
            Signals {
                queued: 20_000,
                enqueue_rate: 500.0,
                delivery_rate: 100.0,
                drain_eta_secs: 200.0,
                ..base
            },
            Level::Warning,
            "queue growing: 500/s in, 100/s out over the last 60s",
        );
        // Right after a restart the rate windows are nearly empty: a
        // backlog of 74,913 is not "growing at 1/s in, 0/s out".
        check(
            Signals {
                queued: 74_913,
                enqueue_rate: 1.0,
                delivery_rate: 0.0,
                drain_eta_secs: -1.0,
                uptime_secs: 1,
                warming_up: true,
                ..base
            },
            Level::Ok,
            "",
        );
        // Growing but small: fine.
        check(
            Signals {
                enqueue_rate: 500.0,
                delivery_rate: 100.0,
                ..base
            },
            Level::Ok,
            "",
        );
    }

    #[test]
    fn tracker_keeps_since_until_the_level_changes() {
        let t = Tracker::default();
        assert_eq!(t.observe(Level::Ok, String::new(), 1_000).2, 1_000);
        assert_eq!(t.observe(Level::Ok, String::new(), 2_000).2, 1_000);
        let (l, r, since) = t.observe(Level::Warning, "x".into(), 3_000);
        assert_eq!((l, r.as_str(), since), (Level::Warning, "x", 3_000));
        assert_eq!(t.observe(Level::Warning, "y".into(), 4_000).2, 3_000);
        assert_eq!(t.current().1, "y");
    }
}
