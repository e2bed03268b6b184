//! The overview as the console reads it: the same figures QueueStats
//! answers (from the same `Overview`), as JSON.

use serde_json::{json, Value};

use crate::observe::overview::Overview;

pub fn to_json(o: &Overview) -> Value {
    let s = &o.stats;
    let relays: Vec<Value> = o
        .relays
        .iter()
        .map(|r| {
            json!({
                "name": r.name, "state": r.state, "reason": r.reason,
                "connections": r.connections, "sent": r.sent, "deferred": r.deferred,
                "failed": r.failed, "effective_rate": r.effective_rate,
            })
        })
        .collect();
    let webhooks: Vec<Value> = o
        .webhooks
        .iter()
        .map(|w| {
            json!({
                "name": w.name, "state": w.state, "lag_events": w.lag_events,
                "lag_seconds": w.lag_seconds, "last_error": w.last_error,
            })
        })
        .collect();
    json!({
        "congestion": o.congestion.name(),
        "congestion_reason": o.congestion_reason,
        "congestion_cause": o.congestion_cause,
        "congestion_runbook": o.congestion_runbook,
        "congestion_since_unix_ms": o.congestion_since_ms,
        "queued": s.queued,
        "ready": s.ready,
        "scheduled": s.scheduled,
        "in_flight": s.in_flight,
        "dead": s.dead,
        "quarantined": s.quarantined,
        "queued_transactional": s.queued_by_lane[0],
        "queued_normal": s.queued_by_lane[1],
        "queued_bulk": s.queued_by_lane[2],
        "oldest_queued_age_seconds": s.oldest_queued_age_seconds,
        "enqueue_rate_per_second": s.enqueue_rate_per_second,
        "delivery_rate_per_second": s.delivery_rate_per_second,
        "drain_eta_seconds": s.drain_eta_seconds,
        "enqueued_total": s.enqueued_total,
        "delivered_total": s.delivered_total,
        "dead_total": s.dead_total,
        "bounce_rate_last_hour": o.outcomes.bounce_rate_last_hour,
        "paused_lanes": o.paused_lanes.iter().map(|l| l.name()).collect::<Vec<_>>(),
        "relays": relays,
        "webhooks": webhooks,
    })
}
