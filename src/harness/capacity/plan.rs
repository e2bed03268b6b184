//! The capacity arithmetic: from what the node measured and what the
//! operator expects, how large a surge a node absorbs, how long it takes
//! to drain, whether transactional mail stays within its target during
//! it, and how many nodes and relays the target needs. Pure; the formulas
//! are in the README ("Capacity planning").

use serde::Serialize;

use crate::delivery::lanes::LANE_WEIGHTS;

/// Free disk below this multiple of `min_free_bytes` refuses bulk.
pub const BULK_FREE_MULTIPLE: u64 = 3;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inputs {
    /// Measured: durable EnqueueBatch intake of one node, msg/s.
    pub accept_rate: f64,
    /// Measured: one node's delivery to a relay that never slows it, msg/s
    /// (0: not known, the relays alone bound the drain).
    pub drain_ceiling: f64,
    /// Measured: disk per queued message, at `measured_size` bytes a body.
    pub bytes_per_message: f64,
    pub measured_size: u64,
    /// Expected.
    pub message_size: u64,
    pub surge: u64,
    pub surge_rate: f64,
    /// Each relay's quota, msg/s.
    pub relay_rates: Vec<f64>,
    /// Transactional mail that goes on all along, msg/s.
    pub steady: f64,
    pub disk_free: u64,
    pub min_free: u64,
    pub slo_transactional_p99_secs: f64,
    pub target_drain_secs: f64,
    pub nodes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub bytes_per_message: f64,
    /// The surge the nodes hold before admission control refuses bulk.
    pub absorb_messages: u64,
    pub absorbs_surge: bool,
    pub intake_rate: f64,
    pub intake_secs: f64,
    pub drain_rate: f64,
    /// "relays" or "nodes".
    pub drain_bound_by: &'static str,
    pub backlog_peak: u64,
    /// From the surge's start until the backlog is gone (None: it never
    /// drains, the steady mail alone takes the whole rate).
    pub drain_secs: Option<f64>,
    pub transactional_rate: f64,
    /// Estimated p99 wait of a transactional message during the surge.
    pub transactional_p99_secs: Option<f64>,
    pub transactional_ok: bool,
    pub nodes_needed: u64,
    pub relays_needed: u64,
    pub checks: Vec<(String, bool)>,
}

/// The transactional lane's share of the delivery rate against a bulk
/// surge (its weight against bulk's: 8 of 9).
pub fn transactional_share() -> f64 {
    LANE_WEIGHTS[0] as f64 / (LANE_WEIGHTS[0] + LANE_WEIGHTS[2]) as f64
}

fn ceil_div(a: f64, b: f64) -> u64 {
    if b <= 0.0 {
        return u64::MAX;
    }
    (a / b).ceil().max(1.0) as u64
}

pub fn plan(i: &Inputs) -> Plan {
    let nodes = f64::from(i.nodes.max(1));
    let b = (i.bytes_per_message - i.measured_size as f64 + i.message_size as f64).max(1.0);
    let usable = i
        .disk_free
        .saturating_sub(i.min_free.saturating_mul(BULK_FREE_MULTIPLE)) as f64;
    let absorb = (usable / b).floor() as u64 * i.nodes.max(1) as u64;
    let intake_rate = i.surge_rate.min(i.accept_rate * nodes);
    let intake_secs = i.surge as f64 / intake_rate.max(1e-9);
    let relays: f64 = i.relay_rates.iter().sum();
    let node_ceiling = if i.drain_ceiling > 0.0 {
        i.drain_ceiling * nodes
    } else {
        f64::INFINITY
    };
    let (drain_rate, drain_bound_by) = if relays <= node_ceiling {
        (relays, "relays")
    } else {
        (node_ceiling, "nodes")
    };
    // The bulk drains at what the steady mail leaves, while it arrives and after.
    let net = drain_rate - i.steady;
    let backlog_peak = (i.surge as f64 - net.max(0.0) * intake_secs).max(0.0) as u64;
    let drain_secs = (net > 0.0).then(|| intake_secs.max(i.surge as f64 / net));
    // The transactional lane against the surge: its share of the rate,
    // a queue that is served at μ and fed at λ (M/M/1: p99 of the time in
    // it is ln(100) / (μ − λ)).
    let mu = drain_rate * transactional_share();
    let transactional_p99_secs = (mu > i.steady).then(|| 100f64.ln() / (mu - i.steady));
    let transactional_ok =
        transactional_p99_secs.is_some_and(|p| p <= i.slo_transactional_p99_secs);
    // What the target needs: disk for the surge, intake for its rate, a
    // delivery rate that empties it in time.
    let per_node_disk = (usable / b).floor();
    let needed_rate = i.surge as f64 / i.target_drain_secs.max(1.0) + i.steady;
    let mut nodes_needed =
        ceil_div(i.surge as f64, per_node_disk).max(ceil_div(i.surge_rate, i.accept_rate));
    if i.drain_ceiling > 0.0 {
        nodes_needed = nodes_needed.max(ceil_div(needed_rate, i.drain_ceiling));
    }
    let mean_relay = relays / i.relay_rates.len().max(1) as f64;
    let relays_needed = ceil_div(needed_rate, mean_relay);
    let checks = vec![
        (
            format!("{} node(s) hold the surge on disk", i.nodes),
            absorb >= i.surge,
        ),
        (
            format!("the surge drains within {:.0} s", i.target_drain_secs),
            drain_secs.is_some_and(|d| d <= i.target_drain_secs),
        ),
        (
            format!(
                "transactional p99 within {:.1} s during the surge",
                i.slo_transactional_p99_secs
            ),
            transactional_ok,
        ),
    ];
    Plan {
        bytes_per_message: b,
        absorb_messages: absorb,
        absorbs_surge: absorb >= i.surge,
        intake_rate,
        intake_secs,
        drain_rate,
        drain_bound_by,
        backlog_peak,
        drain_secs,
        transactional_rate: mu,
        transactional_p99_secs,
        transactional_ok,
        nodes_needed,
        relays_needed,
        checks,
    }
}

fn secs(s: Option<f64>) -> String {
    match s {
        None => "never (the steady mail takes the whole rate)".into(),
        Some(s) if s >= 3600.0 => format!("{:.1} h", s / 3600.0),
        Some(s) if s >= 120.0 => format!("{:.1} min", s / 60.0),
        Some(s) => format!("{s:.1} s"),
    }
}

pub fn table(i: &Inputs, p: &Plan) -> String {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let rows = [
        (
            "disk per queued message".to_string(),
            format!(
                "{:.0} B ({} B bodies; measured {:.0} B at {} B)",
                p.bytes_per_message, i.message_size, i.bytes_per_message, i.measured_size
            ),
        ),
        (
            format!(
                "surge absorbed before bulk is refused ({} free, refused below {} free)",
                gib(i.disk_free),
                gib(i.min_free * BULK_FREE_MULTIPLE)
            ),
            format!(
                "{} messages on {} node(s): {}",
                p.absorb_messages,
                i.nodes,
                if p.absorbs_surge {
                    format!("holds the surge of {}", i.surge)
                } else {
                    format!("the surge of {} does NOT fit", i.surge)
                }
            ),
        ),
        (
            "surge intake".to_string(),
            format!(
                "{:.0} msg/s: {} taken in",
                p.intake_rate,
                secs(Some(p.intake_secs))
            ),
        ),
        (
            "delivery rate".to_string(),
            format!(
                "{:.0} msg/s, bound by the {}",
                p.drain_rate, p.drain_bound_by
            ),
        ),
        (
            "backlog peak".to_string(),
            format!("{} messages", p.backlog_peak),
        ),
        (
            "time to drain from the surge's start".to_string(),
            secs(p.drain_secs),
        ),
        (
            format!("transactional during the surge ({:.0}/s)", i.steady),
            match p.transactional_p99_secs {
                Some(t) => format!(
                    "served at up to {:.0}/s; p99 wait about {t:.2} s",
                    p.transactional_rate
                ),
                None => format!(
                    "its share ({:.0}/s) is below its rate: it falls behind",
                    p.transactional_rate
                ),
            },
        ),
        (
            format!("for a drain within {}", secs(Some(i.target_drain_secs))),
            format!(
                "{} node(s), {} relay(s) of this quota",
                p.nodes_needed, p.relays_needed
            ),
        ),
    ];
    let mut out = "| figure | answer |\n|---|---|\n".to_string();
    for (k, v) in rows {
        out += &format!("| {k} | {v} |\n");
    }
    for (check, ok) in &p.checks {
        out += &format!("[{}] {check}\n", if *ok { "yes" } else { "NO" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            accept_rate: 40_000.0,
            drain_ceiling: 9_000.0,
            bytes_per_message: 2_800.0,
            measured_size: 2048,
            message_size: 2048,
            surge: 150_000,
            surge_rate: 5_000.0,
            relay_rates: vec![400.0],
            steady: 50.0,
            disk_free: 10 << 30,
            min_free: 100 << 20,
            slo_transactional_p99_secs: 5.0,
            target_drain_secs: 1800.0,
            nodes: 1,
        }
    }

    #[test]
    fn the_arithmetic_as_a_table() {
        struct Case {
            name: &'static str,
            change: fn(&mut Inputs),
            absorb: u64,
            drain_secs: Option<f64>,
            bound: &'static str,
            transactional_ok: bool,
            nodes: u64,
            relays: u64,
        }
        let usable = ((10u64 << 30) - 3 * (100 << 20)) as f64;
        let cases = [
            Case {
                // 150,000 at 5,000/s takes 30 s; 350/s net drains it in 428.6 s.
                name: "the incident: one relay of 400/s",
                change: |_| {},
                absorb: (usable / 2800.0) as u64,
                drain_secs: Some(150_000.0 / 350.0),
                bound: "relays",
                transactional_ok: true,
                nodes: 1,
                relays: 1,
            },
            Case {
                // 8 KiB bodies: 8,944 B a message; a 1 GiB disk holds 84,880.
                name: "bigger messages on a small disk",
                change: |i| {
                    i.message_size = 8192;
                    i.disk_free = 1 << 30;
                },
                absorb: (((1u64 << 30) - 3 * (100 << 20)) as f64 / 8944.0) as u64,
                drain_secs: Some(150_000.0 / 350.0),
                bound: "relays",
                transactional_ok: true,
                nodes: 2,
                relays: 1,
            },
            Case {
                // The steady mail takes the whole relay: the surge never drains.
                name: "a relay slower than the steady mail",
                change: |i| i.relay_rates = vec![40.0],
                absorb: (usable / 2800.0) as u64,
                drain_secs: None,
                bound: "relays",
                transactional_ok: false,
                nodes: 1,
                relays: 4,
            },
            Case {
                // Relays of 20,000/s: the node's own 9,000/s bounds the drain;
                // a 10 s target needs 15,050/s: 2 nodes, 1 relay.
                name: "fast relays, a tight target",
                change: |i| {
                    i.relay_rates = vec![10_000.0, 10_000.0];
                    i.target_drain_secs = 10.0;
                },
                absorb: (usable / 2800.0) as u64,
                drain_secs: Some(30.0),
                bound: "nodes",
                transactional_ok: true,
                nodes: 2,
                relays: 2,
            },
        ];
        for c in cases {
            let mut i = inputs();
            (c.change)(&mut i);
            let p = plan(&i);
            assert_eq!(p.absorb_messages, c.absorb, "{}", c.name);
            match (p.drain_secs, c.drain_secs) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 0.01, "{}: {a} vs {b}", c.name),
                (a, b) => assert_eq!(a, b, "{}", c.name),
            }
            assert_eq!(p.drain_bound_by, c.bound, "{}", c.name);
            assert_eq!(p.transactional_ok, c.transactional_ok, "{}: {p:?}", c.name);
            assert_eq!(
                (p.nodes_needed, p.relays_needed),
                (c.nodes, c.relays),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn the_transactional_estimate_and_the_backlog() {
        let p = plan(&inputs());
        // 400 × 8/9 = 355.6/s served, 50/s fed: ln(100) / 305.6 = 0.015 s.
        assert!((p.transactional_rate - 355.56).abs() < 0.01);
        assert!((p.transactional_p99_secs.unwrap() - 0.01507).abs() < 1e-4);
        // 30 s of intake at 350/s net: 10,500 gone when the last arrives.
        assert_eq!(p.backlog_peak, 139_500);
        assert_eq!(p.intake_secs, 30.0);
        let text = table(&inputs(), &p);
        assert!(
            text.contains("| backlog peak | 139500 messages |"),
            "{text}"
        );
        assert!(
            text.contains("[yes] the surge drains within 1800 s"),
            "{text}"
        );
    }
}
