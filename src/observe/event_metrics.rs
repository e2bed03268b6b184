//! The event log's and the webhook endpoints' metrics, refreshed at scrape
//! time from the overview like the rest: the log's size, and per endpoint
//! (label `webhook`) its state, lag, last success and request counts.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::metrics::sync;
use super::overview::Overview;

type Labels = Vec<(&'static str, String)>;
type FGauge = Gauge<f64, AtomicU64>;

/// The states an endpoint shows (`WebhookFigures::state`).
pub const WEBHOOK_STATES: [&str; 3] = ["ok", "retrying", "failing"];

#[derive(Default)]
pub struct EventMetrics {
    log_events: Gauge,
    log_bytes: Gauge,
    log_last_sequence: Gauge,
    status: Family<Labels, Gauge>,
    lag_events: Family<Labels, Gauge>,
    lag_seconds: Family<Labels, FGauge>,
    last_success: Family<Labels, FGauge>,
    consecutive_failures: Family<Labels, Gauge>,
    requests: Family<Labels, Counter>,
    skipped: Family<Labels, Counter>,
}

impl EventMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "mailspool_event_log_events",
            "Events the event log keeps",
            self.log_events.clone(),
        );
        r.register(
            "mailspool_event_log_bytes",
            "Bytes of the events the event log keeps",
            self.log_bytes.clone(),
        );
        r.register(
            "mailspool_event_log_last_sequence",
            "The newest event's sequence number",
            self.log_last_sequence.clone(),
        );
        r.register(
            "mailspool_webhook_status",
            "Per webhook endpoint: 1 for its current state (ok, retrying, failing)",
            self.status.clone(),
        );
        r.register(
            "mailspool_webhook_lag_events",
            "Per webhook endpoint: events after its cursor",
            self.lag_events.clone(),
        );
        r.register(
            "mailspool_webhook_lag_seconds",
            "Per webhook endpoint: age of the oldest event it has not taken (0 when caught up)",
            self.lag_seconds.clone(),
        );
        r.register(
            "mailspool_webhook_last_success_timestamp_seconds",
            "Per webhook endpoint: when it last answered 2xx (0: never since the start)",
            self.last_success.clone(),
        );
        r.register(
            "mailspool_webhook_consecutive_failures",
            "Per webhook endpoint: failed requests since its last success",
            self.consecutive_failures.clone(),
        );
        r.register(
            "mailspool_webhook_requests",
            "Per webhook endpoint: requests answered 2xx (sent) and not (failed; each retry counts)",
            self.requests.clone(),
        );
        r.register(
            "mailspool_webhook_events_skipped",
            "Per webhook endpoint: events the log's retention dropped before the endpoint took them",
            self.skipped.clone(),
        );
    }

    pub fn refresh(&self, o: &Overview) {
        let l = &o.event_log;
        self.log_events.set(l.count.min(i64::MAX as u64) as i64);
        self.log_bytes.set(l.bytes.min(i64::MAX as u64) as i64);
        self.log_last_sequence
            .set(l.last_seq.min(i64::MAX as u64) as i64);
        for w in &o.webhooks {
            let name = || ("webhook", w.name.clone());
            for state in WEBHOOK_STATES {
                self.status
                    .get_or_create(&vec![name(), ("state", state.to_string())])
                    .set(i64::from(w.state == state));
            }
            self.lag_events
                .get_or_create(&vec![name()])
                .set(w.lag_events.min(i64::MAX as u64) as i64);
            self.lag_seconds
                .get_or_create(&vec![name()])
                .set(w.lag_seconds);
            self.last_success
                .get_or_create(&vec![name()])
                .set(w.last_success_ms as f64 / 1000.0);
            self.consecutive_failures
                .get_or_create(&vec![name()])
                .set(w.consecutive_failures.min(i64::MAX as u64) as i64);
            for (result, v) in [("sent", w.sent_total), ("failed", w.failed_total)] {
                sync(
                    &self
                        .requests
                        .get_or_create(&vec![name(), ("result", result.to_string())]),
                    v,
                );
            }
            sync(&self.skipped.get_or_create(&vec![name()]), w.skipped_total);
        }
    }
}
