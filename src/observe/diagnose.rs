//! "Why is the queue congested?": the cause the node can see, named
//! for the operator with the runbook to open. Pure, tested as a table.
//!
//! `congestion::assess` says how late mail is (the symptom); this says
//! what is behind it, from the same moment's figures: a relay refusing
//! us, throttling or down, an operator's pause, the disk, a bounce storm,
//! a surge; checked in that order, the first that holds wins (a surge
//! through a throttling relay is the relay's throttling to act on).

use crate::model::Lane;
use crate::observe::overview::RelayFigures;

/// Where the runbooks are published (`docs/runbooks/` in the repository).
pub const RUNBOOK_BASE: &str = "https://github.com/mailspool/mailspool/blob/main/docs/runbooks/";

/// A bounce rate over the last hour above this is a bounce storm.
pub const BOUNCE_STORM_RATE: f64 = 0.05;

/// Free disk below this multiple of `min_free_bytes` refuses bulk
/// (`intake::admission`): the disk is nearly full.
const DISK_FREE_MULTIPLE: u64 = 3;

/// The spool this close to `max_spool_bytes` is nearly full.
const SPOOL_FULL_FRACTION: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    RelayAuth,
    RelayThrottled,
    RelayDown,
    Paused,
    DiskFull,
    BounceStorm,
    Surge,
    Stalled,
}

impl Cause {
    #[cfg(test)]
    pub const ALL: [Cause; 8] = [
        Cause::RelayAuth,
        Cause::RelayThrottled,
        Cause::RelayDown,
        Cause::Paused,
        Cause::DiskFull,
        Cause::BounceStorm,
        Cause::Surge,
        Cause::Stalled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::RelayAuth => "relay-auth",
            Cause::RelayThrottled => "relay-throttled",
            Cause::RelayDown => "relay-down",
            Cause::Paused => "paused",
            Cause::DiskFull => "disk-full",
            Cause::BounceStorm => "bounce-storm",
            Cause::Surge => "surge",
            Cause::Stalled => "stalled",
        }
    }

    /// The runbook's file in `docs/runbooks/`.
    pub fn runbook_file(self) -> String {
        format!("congestion-{}.md", self.name())
    }

    pub fn runbook_url(self) -> String {
        format!("{RUNBOOK_BASE}{}", self.runbook_file())
    }
}

/// What the diagnosis looks at: one moment's figures.
#[derive(Debug, Clone, Default)]
pub struct Evidence<'a> {
    pub relays: &'a [RelayFigures],
    pub paused_lanes: &'a [Lane],
    pub disk_free_bytes: u64,
    pub min_free_bytes: u64,
    pub spool_bytes: u64,
    /// 0: no limit.
    pub max_spool_bytes: u64,
    pub bounce_rate_last_hour: f64,
    pub enqueue_rate: f64,
    pub delivery_rate: f64,
    pub rate_window_secs: u64,
}

/// The cause, and what the operator is told of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    pub cause: Cause,
    pub text: String,
}

/// The first cause that holds (see the module's comment).
pub fn diagnose(e: &Evidence) -> Diagnosis {
    let relay_in = |state: &str| e.relays.iter().find(|r| r.state == state);
    let found = |cause: Cause, text: String| Diagnosis { cause, text };
    if let Some(r) = relay_in("auth failed") {
        return found(
            Cause::RelayAuth,
            format!("relay `{}` refuses our credentials: {}", r.name, reply(r)),
        );
    }
    if let Some(r) = relay_in("throttled") {
        return found(
            Cause::RelayThrottled,
            format!("relay `{}` throttled: {}", r.name, reply(r)),
        );
    }
    if let Some(r) = relay_in("unreachable").or_else(|| relay_in("tls failed")) {
        return found(
            Cause::RelayDown,
            format!("relay `{}` {}: {}", r.name, r.state, reply(r)),
        );
    }
    if !e.paused_lanes.is_empty() {
        let lanes: Vec<&str> = e.paused_lanes.iter().map(|l| l.name()).collect();
        return found(
            Cause::Paused,
            format!("delivery paused by an operator: lanes {}", lanes.join(", ")),
        );
    }
    if let Some(r) = relay_in("paused") {
        return found(
            Cause::Paused,
            format!("relay `{}` paused by an operator", r.name),
        );
    }
    let bulk_floor = e.min_free_bytes.saturating_mul(DISK_FREE_MULTIPLE);
    if e.min_free_bytes > 0 && e.disk_free_bytes < bulk_floor {
        return found(
            Cause::DiskFull,
            format!(
                "disk nearly full: {} free, bulk refused below {}",
                mib(e.disk_free_bytes),
                mib(bulk_floor)
            ),
        );
    }
    if e.max_spool_bytes > 0
        && e.spool_bytes as f64 >= e.max_spool_bytes as f64 * SPOOL_FULL_FRACTION
    {
        return found(
            Cause::DiskFull,
            format!(
                "spool nearly full: {} of max_spool_bytes {}",
                mib(e.spool_bytes),
                mib(e.max_spool_bytes)
            ),
        );
    }
    if e.bounce_rate_last_hour > BOUNCE_STORM_RATE {
        return found(
            Cause::BounceStorm,
            format!(
                "bounce storm: {:.1}% of recipients bounced in the last hour",
                e.bounce_rate_last_hour * 100.0
            ),
        );
    }
    if e.enqueue_rate >= 1.0 && e.enqueue_rate > e.delivery_rate * 1.1 {
        return found(
            Cause::Surge,
            format!(
                "enqueue rate {}/s exceeds delivery {}/s over the last {}s: surge",
                per_second(e.enqueue_rate),
                per_second(e.delivery_rate),
                e.rate_window_secs
            ),
        );
    }
    let relays = if e.relays.is_empty() {
        "the outbox"
    } else {
        "relays ok"
    };
    found(
        Cause::Stalled,
        format!(
            "no cause visible: delivery {}/s with {relays}",
            per_second(e.delivery_rate)
        ),
    )
}

/// The relay's reason, else its last reply.
fn reply(r: &RelayFigures) -> &str {
    if r.reason.is_empty() {
        &r.last_reply
    } else {
        &r.reason
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

/// A rate as a whole number with thousands separators: 4100.4 → "4,100".
fn per_second(x: f64) -> String {
    crate::model::thousands(x.max(0.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(name: &str, state: &'static str, reason: &str) -> RelayFigures {
        RelayFigures {
            name: name.into(),
            state,
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_cause_that_holds_is_named_with_what_shows_it() {
        let ok = [relay("ses", "ok", "")];
        let base = Evidence {
            relays: &ok,
            min_free_bytes: 100 << 20,
            disk_free_bytes: 10 << 30,
            enqueue_rate: 100.0,
            delivery_rate: 100.0,
            rate_window_secs: 60,
            ..Default::default()
        };
        let throttled = [
            relay("ses", "throttled", "450 4.7.1 rate limit exceeded"),
            relay("backup", "auth failed", ""),
        ];
        let down = [relay("ses", "unreachable", "connection refused")];
        let paused = [relay("backup", "paused", "")];
        let mut auth = [relay("ses", "auth failed", "")];
        auth[0].last_reply = "535 5.7.8 authentication failed".into();
        let bulk = [Lane::Bulk];
        let cases: Vec<(Evidence, Cause, &str)> = vec![
            (
                Evidence {
                    relays: &auth,
                    ..base.clone()
                },
                Cause::RelayAuth,
                "relay `ses` refuses our credentials: 535 5.7.8 authentication failed",
            ),
            // Credentials before throttling, whichever relay comes first.
            (
                Evidence {
                    relays: &throttled,
                    ..base.clone()
                },
                Cause::RelayAuth,
                "relay `backup` refuses",
            ),
            (
                Evidence {
                    relays: &throttled[..1],
                    enqueue_rate: 4100.0,
                    delivery_rate: 480.0,
                    ..base.clone()
                },
                Cause::RelayThrottled,
                "relay `ses` throttled: 450 4.7.1 rate limit exceeded",
            ),
            (
                Evidence {
                    relays: &down,
                    ..base.clone()
                },
                Cause::RelayDown,
                "relay `ses` unreachable: connection refused",
            ),
            (
                Evidence {
                    paused_lanes: &bulk,
                    ..base.clone()
                },
                Cause::Paused,
                "delivery paused by an operator: lanes bulk",
            ),
            (
                Evidence {
                    relays: &paused,
                    ..base.clone()
                },
                Cause::Paused,
                "relay `backup` paused by an operator",
            ),
            (
                Evidence {
                    disk_free_bytes: 250 << 20,
                    ..base.clone()
                },
                Cause::DiskFull,
                "disk nearly full: 250 MiB free, bulk refused below 300 MiB",
            ),
            (
                Evidence {
                    spool_bytes: 95 << 20,
                    max_spool_bytes: 100 << 20,
                    ..base.clone()
                },
                Cause::DiskFull,
                "spool nearly full: 95 MiB of max_spool_bytes 100 MiB",
            ),
            (
                Evidence {
                    bounce_rate_last_hour: 0.125,
                    ..base.clone()
                },
                Cause::BounceStorm,
                "bounce storm: 12.5% of recipients bounced in the last hour",
            ),
            (
                Evidence {
                    enqueue_rate: 4100.0,
                    delivery_rate: 480.0,
                    ..base.clone()
                },
                Cause::Surge,
                "enqueue rate 4,100/s exceeds delivery 480/s over the last 60s: surge",
            ),
            // In = out (within 10%): no surge; nothing else to see.
            (
                Evidence {
                    enqueue_rate: 105.0,
                    ..base.clone()
                },
                Cause::Stalled,
                "no cause visible: delivery 100/s with relays ok",
            ),
        ];
        for (evidence, cause, text) in cases {
            let d = diagnose(&evidence);
            assert_eq!(d.cause, cause, "{evidence:?} → {d:?}");
            assert!(d.text.starts_with(text), "{:?} lacks {text:?}", d.text);
        }
    }

    #[test]
    fn each_cause_has_its_runbook() {
        assert_eq!(
            Cause::Surge.runbook_url(),
            "https://github.com/mailspool/mailspool/blob/main/docs/runbooks/congestion-surge.md"
        );
        let names: std::collections::HashSet<_> = Cause::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Cause::ALL.len());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks");
        for c in Cause::ALL {
            let text = std::fs::read_to_string(dir.join(c.runbook_file()))
                .unwrap_or_else(|e| panic!("{c:?}: {}: {e}", c.runbook_file()));
            let title = format!("# Congestion cause: {}\n", c.name());
            assert!(text.starts_with(&title), "{}: {title:?}", c.runbook_file());
        }
        assert_eq!(per_second(1234567.4), "1,234,567");
        assert_eq!(per_second(999.0), "999");
    }
}
