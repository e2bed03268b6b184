//! Early warning: OK, WARNING or CRITICAL from the oldest message's age,
//! the drain ETA, sustained growth and stalled delivery.
//!
//! [`assess`] is a pure function of the numbers QueueStats reports (tested
//! as a table); [`Tracker`] remembers the current state and since when, and
//! logs each change once as a structured `CongestionChanged` event.

use std::sync::Mutex;

use crate::model::Lane;

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
    /// How long a lower assessment must hold before the state steps down.
    pub clear_after_ms: u64,
}

/// A test fixture: the running server's thresholds come from the
/// configuration (`Config::thresholds`), whose defaults these must equal
/// (`config::tests::the_threshold_fixture_is_the_default_configuration`).
#[cfg(test)]
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
            clear_after_ms: 30_000,
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
    for lane in Lane::ALL {
        let i = lane.index();
        let (warn, critical) = if lane == Lane::Transactional {
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
                "{} lane: a message has waited {waited:.0}s since it was due ({} at {at:.0}s)",
                lane.name(),
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

/// The state the early warning is in: what it says, since when, and what
/// it needs to clear.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub level: Level,
    /// What the rules said when this level was reached (or last confirmed).
    pub cause: String,
    /// While a lower assessment is held back: what clearing waits for.
    pub holding: Option<String>,
    pub since_ms: u64,
    /// The most queued while at this level (the backlog it warned about).
    pub peak_queued: u64,
    /// Since when the assessment has been lower than `level`.
    pub lower_since_ms: Option<u64>,
}

impl State {
    /// The reason shown: the cause, and while held what it waits for.
    pub fn reason(&self) -> String {
        match &self.holding {
            Some(h) => format!("{} [holding: {h}]", self.cause),
            None => self.cause.clone(),
        }
    }
}

/// How old the oldest message will be when the backlog has drained, at
/// the current net drain rate; None when it is not draining (then the
/// growth and stall rules speak).
fn age_when_drained(s: &Signals) -> Option<f64> {
    (s.drain_eta_secs >= 0.0).then_some(s.oldest_age_secs + s.drain_eta_secs)
}

/// One step of the early warning (pure). Up at once; down only once the
/// lower assessment has held for `clear_after_ms`, the backlog is down to
/// half its peak (or below the growth depth) *and* it will drain before
/// its oldest message reaches the warning age: a draining incident is one
/// incident, one page (a surge's backlog that stopped growing does not
/// clear only to warn again when its last messages get old), and a state
/// never flaps within seconds. While held, the reason says what it waits
/// for.
pub fn step(
    state: &State,
    assessed: Level,
    reason: String,
    s: &Signals,
    now_ms: u64,
    t: &Thresholds,
) -> State {
    let queued = s.queued;
    if state.since_ms == 0 || assessed >= state.level {
        let same = assessed == state.level && state.since_ms != 0;
        return State {
            level: assessed,
            cause: reason,
            holding: None,
            since_ms: if same { state.since_ms } else { now_ms },
            peak_queued: if same {
                state.peak_queued.max(queued)
            } else {
                queued
            },
            lower_since_ms: None,
        };
    }
    let lower_since = state.lower_since_ms.unwrap_or(now_ms);
    let held = now_ms.saturating_sub(lower_since) >= t.clear_after_ms;
    let drained = queued <= state.peak_queued / 2 || queued < t.growth_min_depth;
    // Only a backlog (a few queued messages flow as fast as they come).
    let aged = age_when_drained(s).filter(|_| queued >= t.growth_min_depth);
    let ages_out = aged.is_some_and(|a| a >= t.warn_age_secs);
    if held && drained && !ages_out {
        return State {
            level: assessed,
            cause: reason,
            holding: None,
            since_ms: now_ms,
            peak_queued: queued,
            lower_since_ms: None,
        };
    }
    let waiting_for = if !drained {
        format!(
            "{} queued, clears below {}",
            queued,
            (state.peak_queued / 2).max(t.growth_min_depth)
        )
    } else if ages_out {
        format!(
            "the oldest message will be {:.0}s old when the backlog drains (warning at {:.0}s)",
            aged.unwrap_or_default(),
            t.warn_age_secs
        )
    } else {
        format!(
            "better for {}s, clears after {}s",
            now_ms.saturating_sub(lower_since) / 1000,
            t.clear_after_ms / 1000
        )
    };
    State {
        level: state.level,
        cause: state.cause.clone(),
        holding: Some(waiting_for),
        since_ms: state.since_ms,
        peak_queued: state.peak_queued.max(queued),
        lower_since_ms: Some(lower_since),
    }
}

/// The current state and since when; logs changes once.
#[derive(Default)]
pub struct Tracker {
    state: Mutex<State>,
}

impl Tracker {
    /// Records an assessment; returns (level, reason, since_ms).
    pub fn observe(
        &self,
        level: Level,
        reason: String,
        signals: &Signals,
        now_ms: u64,
        t: &Thresholds,
    ) -> (Level, String, u64) {
        let mut st = self.state.lock().expect("congestion");
        let next = step(&st, level, reason, signals, now_ms, t);
        if next.level != st.level {
            let from = st.level;
            match next.level {
                Level::Ok => {
                    tracing::info!(
                        from = from.name(),
                        to = next.level.name(),
                        "CongestionChanged"
                    )
                }
                _ => {
                    tracing::warn!(from = from.name(), to = next.level.name(), reason = %next.reason(), "CongestionChanged")
                }
            }
        }
        *st = next;
        (st.level, st.reason(), st.since_ms)
    }

    #[cfg(test)]
    fn current(&self) -> (Level, String, u64) {
        let st = self.state.lock().expect("congestion");
        (st.level, st.reason(), st.since_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signals of a queue of `queued` that drains at once.
    fn q(queued: u64) -> Signals {
        Signals {
            queued,
            ..Signals::default()
        }
    }

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
        let (t, th) = (Tracker::default(), Thresholds::default());
        assert_eq!(
            t.observe(Level::Ok, String::new(), &q(0), 1_000, &th).2,
            1_000
        );
        assert_eq!(
            t.observe(Level::Ok, String::new(), &q(0), 2_000, &th).2,
            1_000
        );
        let (l, r, since) = t.observe(Level::Warning, "x".into(), &q(0), 3_000, &th);
        assert_eq!((l, r.as_str(), since), (Level::Warning, "x", 3_000));
        assert_eq!(
            t.observe(Level::Warning, "y".into(), &q(0), 4_000, &th).2,
            3_000
        );
        assert_eq!(t.current().1, "y");
    }

    /// The incident's timeline, one assessment per second: (second, what
    /// the rules say, queued) → the state shown.
    #[test]
    fn one_incident_one_state_no_flapping() {
        use Level::*;
        let th = Thresholds::default();
        let timeline: Vec<(u64, Level, u64)> = vec![
            (0, Ok, 100),
            // The surge: WARNING at once.
            (30, Warning, 40_000),
            // ETA crossing its threshold back and forth: CRITICAL holds.
            (31, Critical, 80_000),
            (32, Warning, 90_000),
            (33, Critical, 100_000),
            (34, Warning, 110_000),
            // Draining: the rules say OK at 130,000 → still WARNING...
            (94, Ok, 130_000),
            (200, Ok, 80_000),
            // ... until below half the peak and 30 s after it got better.
            (300, Ok, 70_000),
            (333, Ok, 40_000),
        ];
        let mut st = State::default();
        let mut shown = Vec::new();
        for (sec, level, queued) in timeline {
            st = step(
                &st,
                level,
                format!("{level:?}"),
                &q(queued),
                sec * 1000 + 1,
                &th,
            );
            shown.push((sec, st.level));
        }
        assert_eq!(
            shown,
            vec![
                (0, Ok),
                (30, Warning),
                (31, Critical),
                (32, Critical),
                (33, Critical),
                (34, Critical),
                (94, Critical),
                (200, Critical),
                (300, Critical),
                (333, Ok),
            ]
        );
    }

    #[test]
    fn a_held_state_says_what_it_waits_for() {
        let th = Thresholds::default();
        let st = step(
            &State::default(),
            Level::Warning,
            "queue growing".into(),
            &q(50_000),
            1,
            &th,
        );
        let st = step(&st, Level::Ok, String::new(), &q(45_000), 10_000, &th);
        assert_eq!(st.level, Level::Warning);
        assert_eq!(
            st.reason(),
            "queue growing [holding: 45000 queued, clears below 25000]"
        );
        let st = step(&st, Level::Ok, String::new(), &q(100), 20_000, &th);
        assert!(
            st.reason()
                .ends_with("[holding: better for 10s, clears after 30s]"),
            "{}",
            st.reason()
        );
        let st = step(&st, Level::Ok, String::new(), &q(100), 40_001, &th);
        assert_eq!(st.level, Level::Ok);
        // A small queue whose oldest message got old: clears 30 s after.
        let st = step(
            &State::default(),
            Level::Warning,
            "old".into(),
            &q(10),
            1,
            &th,
        );
        assert_eq!(
            step(&st, Level::Ok, String::new(), &q(10), 30_001, &th).level,
            Level::Warning
        );
        let st = step(&st, Level::Ok, String::new(), &q(10), 2, &th);
        assert_eq!(
            step(&st, Level::Ok, String::new(), &q(10), 30_002, &th).level,
            Level::Ok
        );
    }

    /// The surge of the incident replayed (`bench --surge`): the queue
    /// stops growing, then drains below half its peak while its oldest bulk
    /// is 4 minutes old and 3 more from drained: the warning holds (it
    /// would otherwise clear, then warn again at 5 minutes old).
    #[test]
    fn a_backlog_that_will_age_out_before_it_drains_holds_the_warning() {
        let th = Thresholds::default();
        let growing = step(
            &State::default(),
            Level::Warning,
            "queue growing".into(),
            &q(150_000),
            1,
            &th,
        );
        let draining = |age: f64, eta: f64, queued: u64| Signals {
            queued,
            oldest_age_secs: age,
            drain_eta_secs: eta,
            ..Signals::default()
        };
        let st = step(
            &growing,
            Level::Ok,
            String::new(),
            &draining(200.0, 200.0, 70_000),
            200_000,
            &th,
        );
        let st = step(
            &st,
            Level::Ok,
            String::new(),
            &draining(240.0, 180.0, 60_000),
            240_000,
            &th,
        );
        assert_eq!(st.level, Level::Warning);
        assert!(
            st.reason().contains(
                "the oldest message will be 420s old when the backlog drains (warning at 300s)"
            ),
            "{}",
            st.reason()
        );
        // A few messages that will age out are the age rule's, not a backlog.
        let few = step(
            &st,
            Level::Ok,
            String::new(),
            &draining(240.0, 180.0, 50),
            250_000,
            &th,
        );
        assert_eq!(few.level, Level::Ok);
        // Drains before it gets old: clears (the 30 s have long passed).
        let st = step(
            &st,
            Level::Ok,
            String::new(),
            &draining(100.0, 60.0, 20_000),
            260_000,
            &th,
        );
        assert_eq!(st.level, Level::Ok);
    }
}
