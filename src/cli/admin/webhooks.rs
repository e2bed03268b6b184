//! The event log and the webhook endpoints in `mailspool stats`: one row
//! per endpoint, then why any endpoint that is not ok fails.

use serde_json::{json, Value};

use super::{table, thousands, Align};
use crate::pb;

pub fn webhook_json(w: &pb::WebhookStats) -> Value {
    json!({
        "name": w.name, "state": w.state, "lag_events": w.lag_events,
        "lag_seconds": w.lag_seconds, "cursor": w.cursor,
        "last_success_unix_ms": w.last_success_unix_ms,
        "consecutive_failures": w.consecutive_failures,
        "sent_total": w.sent_total, "failed_total": w.failed_total,
        "skipped_total": w.skipped_total, "last_error": w.last_error,
    })
}

pub fn webhooks_table(hooks: &[pb::WebhookStats]) -> String {
    use Align::{Left, Right};
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.state.clone(),
                thousands(w.lag_events),
                format!("{:.0}", w.lag_seconds),
                thousands(w.sent_total),
                thousands(w.failed_total),
                thousands(w.skipped_total),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "webhook", "state", "lag", "lag s", "sent", "failed", "skipped",
        ],
        &[Left, Left, Right, Right, Right, Right, Right],
        &rows,
    );
    for w in hooks.iter().filter(|w| w.state != "ok") {
        out.push_str(&format!(
            "  {}: {} failures in a row: {}\n",
            w.name, w.consecutive_failures, w.last_error
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_endpoint_shows_its_lag_and_why() {
        let ok = pb::WebhookStats {
            name: "crm".into(),
            state: "ok".into(),
            sent_total: 1200,
            ..Default::default()
        };
        let down = pb::WebhookStats {
            name: "billing".into(),
            state: "failing".into(),
            lag_events: 5400,
            lag_seconds: 700.4,
            consecutive_failures: 12,
            failed_total: 12,
            last_error: "HTTP 503 Service Unavailable".into(),
            ..Default::default()
        };
        let t = webhooks_table(&[ok, down]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("crm") && lines[1].contains("1,200"),
            "{t}"
        );
        assert!(
            lines[2].contains("failing") && lines[2].contains("5,400") && lines[2].contains("700"),
            "{t}"
        );
        assert_eq!(
            lines[3],
            "  billing: 12 failures in a row: HTTP 503 Service Unavailable"
        );
        assert_eq!(lines.len(), 4);
    }
}
