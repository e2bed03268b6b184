//! What a webhook request carries: the Standard Webhooks body (`type`,
//! `timestamp`, `data`) of one event, and its `webhook-id`. Pure.

use serde_json::{json, Value};

use crate::model::{rfc3339, Event, MessageId};

/// `message.<name>`: `message.delivered`, `message.bounced`, …
pub fn type_name(e: &Event) -> String {
    format!("message.{}", e.kind.name())
}

/// Unique per event and node, the same on every retry of it, so a
/// receiver can drop duplicates by it.
pub fn webhook_id(node_id: &str, seq: u64) -> String {
    format!("evt_{node_id}_{seq}")
}

/// The JSON body of one event (`client`: its client's name, "" for none).
pub fn body(seq: u64, e: &Event, client: &str) -> Value {
    let id = MessageId(e.id);
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    json!({
        "type": type_name(e),
        "timestamp": rfc3339(e.time_ms as i64),
        "data": {
            "sequence": seq,
            "id": id.to_string(),
            "message_id": e.message_id,
            "client": client,
            "lane": e.lane.name(),
            "recipient": nonempty(&e.recipient),
            "attempt": e.attempt,
            "smtp_reply": nonempty(&e.reply),
            "bounce_class": e.class.map(|c| c.name()),
            "next_attempt_at": (e.next_attempt_ms > 0).then(|| rfc3339(e.next_attempt_ms as i64)),
            "relay": nonempty(&e.relay),
            "idempotency_key": nonempty(&e.idempotency_key),
            "time_in_queue_ms": e.time_ms.saturating_sub(id.enqueued_ms()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BounceClass, EventKind, Lane};

    #[test]
    fn a_bounce_reads_as_receivers_expect() {
        let enqueued = 1_764_000_000_000u64;
        let e = Event {
            kind: EventKind::Bounced,
            time_ms: enqueued + 1_500,
            id: enqueued << 20 | 7,
            client: 1,
            lane: Lane::Transactional,
            recipient: "nobody@example.com".into(),
            attempt: 1,
            reply: "550 5.1.1 user unknown".into(),
            class: Some(BounceClass::BadMailbox),
            next_attempt_ms: 0,
            message_id: "abc@example.com".into(),
            idempotency_key: String::new(),
            relay: "ses".into(),
        };
        let b = body(42, &e, "billing");
        assert_eq!(b["type"], "message.bounced");
        assert_eq!(b["timestamp"], "2025-11-24T16:00:01.500Z");
        let d = &b["data"];
        assert_eq!(d["sequence"], 42);
        assert_eq!(d["id"], MessageId(e.id).to_string());
        assert_eq!(d["client"], "billing");
        assert_eq!(d["lane"], "transactional");
        assert_eq!(d["recipient"], "nobody@example.com");
        assert_eq!(d["bounce_class"], "bad_mailbox");
        assert_eq!(d["smtp_reply"], "550 5.1.1 user unknown");
        assert_eq!(d["relay"], "ses");
        assert_eq!(d["time_in_queue_ms"], 1_500);
        assert!(d["next_attempt_at"].is_null() && d["idempotency_key"].is_null());
        assert_eq!(webhook_id("n1", 42), "evt_n1_42");
    }
}
