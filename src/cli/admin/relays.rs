//! The relays in `mailspool stats`: one row each, then what is behind any
//! relay that is not ok.

use serde_json::{json, Value};

use super::thousands;
use crate::pb;

pub fn relay_json(r: &pb::RelayStats) -> Value {
    json!({
        "name": r.name, "state": r.state, "reason": r.reason,
        "describe": r.describe, "priority": r.priority, "weight": r.weight,
        "connections": r.connections, "max_connections": r.max_connections,
        "rate_per_second": r.rate_per_second,
        "effective_rate_per_second": r.effective_rate_per_second,
        "sent_total": r.sent_total, "deferred_total": r.deferred_total,
        "failed_total": r.failed_total, "last_reply": r.last_reply,
        "consecutive_failures": r.consecutive_failures,
        "backoff_remaining_ms": r.backoff_remaining_ms,
    })
}

/// `effective/ceiling`: `-` for none, `7.0/14` after throttling.
fn rate(r: &pb::RelayStats) -> String {
    let ceiling = match r.rate_per_second {
        0 => "-".to_string(),
        n => n.to_string(),
    };
    let effective = r.effective_rate_per_second;
    if effective == 0.0 || effective == f64::from(r.rate_per_second) {
        ceiling
    } else {
        format!("{effective:.1}/{ceiling}")
    }
}

pub fn relays_table(relays: &[pb::RelayStats]) -> String {
    let row = |cells: [&str; 8]| {
        let [name, state, rest @ ..] = cells;
        let mut line = format!("{name:<16} {state:<12}");
        for c in rest {
            line.push_str(&format!(" {c:>10}"));
        }
        line + "\n"
    };
    let mut out = row([
        "relay", "state", "prio/wt", "conns", "rate/s", "sent", "deferred", "failed",
    ]);
    for r in relays {
        out.push_str(&row([
            &r.name,
            &r.state,
            &format!("{}/{}", r.priority, r.weight),
            &format!("{}/{}", r.connections, r.max_connections),
            &rate(r),
            &thousands(r.sent_total),
            &thousands(r.deferred_total),
            &thousands(r.failed_total),
        ]));
    }
    for r in relays.iter().filter(|r| r.state != "ok") {
        out.push_str(&format!("  {}: {}\n", r.name, r.reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_relay_shows_its_lowered_rate_and_why() {
        let ok = pb::RelayStats {
            name: "ses".into(),
            state: "ok".into(),
            connections: 3,
            max_connections: 16,
            rate_per_second: 14,
            effective_rate_per_second: 14.0,
            sent_total: 12_345,
            weight: 1,
            ..Default::default()
        };
        let throttled = pb::RelayStats {
            name: "backup".into(),
            state: "throttled".into(),
            reason: "450 4.7.1 too much mail".into(),
            effective_rate_per_second: 3.5,
            priority: 1,
            weight: 1,
            ..Default::default()
        };
        let text = relays_table(&[ok, throttled]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("ses") && lines[1].contains("12,345"),
            "{text}"
        );
        assert!(
            lines[1].contains(" 14 ") && lines[1].contains("3/16"),
            "{text}"
        );
        assert!(
            lines[2].contains("3.5/-") && lines[2].contains("1/1"),
            "{text}"
        );
        assert_eq!(lines[3], "  backup: 450 4.7.1 too much mail");
    }
}
