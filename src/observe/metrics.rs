//! Prometheus metrics (`prometheus-client`) on their own HTTP listener.
//!
//! Two kinds: events counted where they happen (SMTP replies, latencies,
//! group-commit sizes, fsync times), and gauges and totals refreshed at
//! scrape time from the same view QueueStats returns, so `/metrics` and
//! `QueueStats` never disagree. Names follow Prometheus conventions:
//! `mailspool_<what>_<unit>`, counters end in `_total`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::overview::Overview;
use crate::model::Lane;

/// 10 ms .. ~1.5 days.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 3.0, 17))
}

type Labels = Vec<(&'static str, &'static str)>;
type FGauge = Gauge<f64, AtomicU64>;
/// Labels with a client name.
type ClientLabels = Vec<(&'static str, String)>;

impl crate::spool::SpoolObserver for Metrics {
    fn group_committed(&self, messages: u64) {
        self.group_commit.observe(messages as f64);
    }
    fn fsynced(&self, seconds: f64) {
        self.fsync_duration.observe(seconds);
    }
}

/// The states a relay shows (`RelayFigures::state`).
const RELAY_STATES: [&str; 6] = [
    "ok",
    "unreachable",
    "throttled",
    "tls failed",
    "auth failed",
    "paused",
];

/// Every metric mailspool exports. Cloning the handles is cheap; the
/// registry is shared.
pub struct Metrics {
    registry: Mutex<Registry>,
    queue: Family<Labels, Gauge>,
    lane: Family<Labels, Gauge>,
    lane_waiting: Family<Labels, FGauge>,
    dead: Gauge,
    quarantined: Gauge,
    oldest_age: FGauge,
    drain_eta: FGauge,
    congestion: Gauge,
    paused: Family<Labels, Gauge>,
    spool_bytes: Gauge,
    disk_free: Gauge,
    relay_connections: Gauge,
    relay_state: Family<Labels, Gauge>,
    /// Per relay (label `relay`): 1 for its state, its connections, its
    /// rates (configured, effective), its messages by result.
    relay_status: Family<ClientLabels, Gauge>,
    relay_open_connections: Family<ClientLabels, Gauge>,
    relay_rate: Family<ClientLabels, FGauge>,
    relay_messages: Family<ClientLabels, Counter>,
    lane_without_relay: Family<Labels, Gauge>,
    enqueued: Counter,
    delivered: Counter,
    retried: Counter,
    dead_lettered: Counter,
    duplicates: Counter,
    refused: Counter,
    cancelled: Counter,
    client_queued: Family<ClientLabels, Gauge>,
    client_queued_bytes: Family<ClientLabels, Gauge>,
    client_enqueued: Family<ClientLabels, Counter>,
    client_delivered: Family<ClientLabels, Counter>,
    client_refused: Family<ClientLabels, Counter>,
    /// SMTP replies by class: 2xx, 4xx, 5xx, error (no reply).
    pub smtp_replies: Family<Labels, Counter>,
    /// Failed attempts by bounce class (`delivery::bounce`).
    failures: Family<Labels, Counter>,
    /// Per Enqueue / EnqueueBatch call, seconds.
    pub enqueue_duration: Histogram,
    /// Enqueue to relay acceptance (time to inbox), seconds, per lane.
    delivery_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Its three series, made once: a delivery observes without a lookup.
    latency_by_lane: [Histogram; 3],
    /// Messages made durable per group commit.
    pub group_commit: Histogram,
    /// One durability round (segment sync, sled flush, fsyncs), seconds.
    pub fsync_duration: Histogram,
    recipients: super::recipient_metrics::RecipientMetrics,
    events: super::event_metrics::EventMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let delivery_latency: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            queue: Family::default(),
            lane: Family::default(),
            lane_waiting: Family::default(),
            dead: Gauge::default(),
            quarantined: Gauge::default(),
            oldest_age: FGauge::default(),
            drain_eta: FGauge::default(),
            congestion: Gauge::default(),
            paused: Family::default(),
            spool_bytes: Gauge::default(),
            disk_free: Gauge::default(),
            relay_connections: Gauge::default(),
            relay_state: Family::default(),
            relay_status: Family::default(),
            relay_open_connections: Family::default(),
            relay_rate: Family::default(),
            relay_messages: Family::default(),
            lane_without_relay: Family::default(),
            failures: Family::default(),
            enqueued: Counter::default(),
            delivered: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            duplicates: Counter::default(),
            refused: Counter::default(),
            cancelled: Counter::default(),
            client_queued: Family::default(),
            client_queued_bytes: Family::default(),
            client_enqueued: Family::default(),
            client_delivered: Family::default(),
            client_refused: Family::default(),
            recipients: Default::default(),
            events: Default::default(),
            smtp_replies: Family::default(),
            // 100 µs .. ~1.6 s
            enqueue_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            // 10 ms .. ~1.5 days
            latency_by_lane: crate::model::Lane::ALL.map(|l| {
                delivery_latency
                    .get_or_create(&vec![("lane", l.name())])
                    .clone()
            }),
            delivery_latency,
            group_commit: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            fsync_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        };
        {
            let mut r = m.registry.lock().expect("registry");
            r.register(
                "mailspool_queue_messages",
                "Queued messages by state (ready, scheduled, in_flight)",
                m.queue.clone(),
            );
            r.register(
                "mailspool_client_queued_messages",
                "Queued messages by client",
                m.client_queued.clone(),
            );
            r.register(
                "mailspool_client_queued_bytes",
                "Bytes of queued messages by client",
                m.client_queued_bytes.clone(),
            );
            r.register(
                "mailspool_client_enqueued",
                "Messages accepted by client",
                m.client_enqueued.clone(),
            );
            r.register(
                "mailspool_client_delivered",
                "Messages delivered by client",
                m.client_delivered.clone(),
            );
            r.register(
                "mailspool_client_refused",
                "Messages refused by client and reason (rate, quota, policy)",
                m.client_refused.clone(),
            );
            r.register(
                "mailspool_queue_lane_messages",
                "Queued messages by lane",
                m.lane.clone(),
            );
            r.register(
                "mailspool_dead_letters",
                "Dead letters on disk",
                m.dead.clone(),
            );
            r.register(
                "mailspool_quarantined_messages",
                "Messages moved aside as unreadable",
                m.quarantined.clone(),
            );
            r.register(
                "mailspool_lane_waiting_seconds",
                "Per lane: how long its longest-waiting message has been due (0 when none is)",
                m.lane_waiting.clone(),
            );
            r.register(
                "mailspool_oldest_message_age_seconds",
                "Age of the oldest queued message",
                m.oldest_age.clone(),
            );
            r.register(
                "mailspool_drain_eta_seconds",
                "Queued / delivery rate; 0 when empty, -1 when not draining",
                m.drain_eta.clone(),
            );
            r.register(
                "mailspool_congestion_state",
                "0 OK, 1 WARNING, 2 CRITICAL",
                m.congestion.clone(),
            );
            r.register(
                "mailspool_delivery_paused",
                "1 when delivery of the lane is paused",
                m.paused.clone(),
            );
            r.register(
                "mailspool_spool_bytes",
                "Bytes the spool holds",
                m.spool_bytes.clone(),
            );
            r.register(
                "mailspool_disk_free_bytes",
                "Free bytes on the spool's filesystem",
                m.disk_free.clone(),
            );
            r.register(
                "mailspool_relay_connections",
                "SMTP connections open or in use",
                m.relay_connections.clone(),
            );
            r.register(
                "mailspool_relay_state",
                "1 for the relay's current state",
                m.relay_state.clone(),
            );
            r.register(
                "mailspool_relay_status",
                "Per relay: 1 for its current state (ok, throttled, unreachable, auth failed, tls failed, paused)",
                m.relay_status.clone(),
            );
            r.register(
                "mailspool_relay_open_connections",
                "Per relay: SMTP connections open or in use",
                m.relay_open_connections.clone(),
            );
            r.register(
                "mailspool_relay_rate_per_second",
                "Per relay: the configured ceiling and the effective rate (0 = none)",
                m.relay_rate.clone(),
            );
            r.register(
                "mailspool_relay_messages",
                "Per relay: messages sent, deferred and failed",
                m.relay_messages.clone(),
            );
            r.register(
                "mailspool_failed_attempts",
                "Failed delivery attempts by bounce class (bad_mailbox, bad_domain, mailbox_full, message_too_large, policy, relay_auth, throttled, temporary, other)",
                m.failures.clone(),
            );
            r.register(
                "mailspool_lane_without_relay",
                "1 when no relay that is up and not paused carries the lane",
                m.lane_without_relay.clone(),
            );
            r.register(
                "mailspool_enqueued_messages",
                "Messages accepted",
                m.enqueued.clone(),
            );
            r.register(
                "mailspool_delivered_messages",
                "Messages the relay accepted",
                m.delivered.clone(),
            );
            r.register(
                "mailspool_retried_messages",
                "Delivery attempts that will be retried",
                m.retried.clone(),
            );
            r.register(
                "mailspool_dead_lettered_messages",
                "Messages moved to the dead letters",
                m.dead_lettered.clone(),
            );
            r.register(
                "mailspool_duplicate_enqueues",
                "Enqueues answered with an earlier id (idempotency key)",
                m.duplicates.clone(),
            );
            r.register(
                "mailspool_enqueue_refused",
                "Enqueues refused with RESOURCE_EXHAUSTED",
                m.refused.clone(),
            );
            r.register(
                "mailspool_cancelled_messages",
                "Messages removed by Cancel or Transfer",
                m.cancelled.clone(),
            );
            r.register(
                "mailspool_smtp_replies",
                "SMTP replies by class (2xx, 4xx, 5xx, error)",
                m.smtp_replies.clone(),
            );
            r.register(
                "mailspool_enqueue_duration_seconds",
                "Enqueue and EnqueueBatch call duration",
                m.enqueue_duration.clone(),
            );
            r.register(
                "mailspool_delivery_latency_seconds",
                "Enqueue to relay acceptance (time to inbox), by lane",
                m.delivery_latency.clone(),
            );
            r.register(
                "mailspool_group_commit_messages",
                "Messages made durable per group commit",
                m.group_commit.clone(),
            );
            r.register(
                "mailspool_fsync_duration_seconds",
                "One durability round: segment sync, sled flush, fsyncs",
                m.fsync_duration.clone(),
            );
            m.recipients.register(&mut r);
            m.events.register(&mut r);
        }
        m
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Raises a counter to `value` (the totals come from the spool's own
/// counters, which persist across restarts).
pub(super) fn sync(counter: &Counter, value: u64) {
    let now = counter.get();
    if value > now {
        counter.inc_by(value - now);
    }
}

impl Metrics {
    /// A message of `lane` reached the relay after `seconds`.
    pub fn delivered_after(&self, lane: crate::model::Lane, seconds: f64) {
        self.latency_by_lane[lane.index()].observe(seconds);
    }

    /// Every class at 0 from the start, so rates over them exist.
    pub fn declare_failure_classes(&self, names: &[&'static str]) {
        for name in names {
            let _ = self.failures.get_or_create(&vec![("class", *name)]);
        }
    }

    /// A failed attempt of bounce class `class`.
    pub fn failed_attempt(&self, class: &'static str) {
        self.failures.get_or_create(&vec![("class", class)]).inc();
    }

    pub fn smtp_reply(&self, class: &'static str) {
        self.smtp_replies
            .get_or_create(&vec![("class", class)])
            .inc();
    }

    /// Refreshes the gauges and totals from the QueueStats view.
    pub fn refresh(&self, o: &Overview) {
        let relay_connections: u64 = o.relays.iter().map(|r| r.connections).sum();
        let s = &o.stats;
        for (state, v) in [
            ("ready", s.ready),
            ("scheduled", s.scheduled),
            ("in_flight", s.in_flight),
        ] {
            self.queue
                .get_or_create(&vec![("state", state)])
                .set(v as i64);
        }
        for lane in Lane::ALL {
            let (i, name) = (lane.index(), lane.name());
            self.lane
                .get_or_create(&vec![("lane", name)])
                .set(s.queued_by_lane[i] as i64);
            self.lane_waiting
                .get_or_create(&vec![("lane", name)])
                .set(s.waiting_by_lane_seconds[i]);
            self.paused
                .get_or_create(&vec![("lane", name)])
                .set(i64::from(o.paused_lanes.contains(&lane)));
        }
        self.dead.set(s.dead as i64);
        self.quarantined.set(s.quarantined as i64);
        self.oldest_age.set(s.oldest_queued_age_seconds);
        self.drain_eta.set(s.drain_eta_seconds);
        self.congestion.set(o.congestion as i64);
        self.spool_bytes.set(s.spool_bytes as i64);
        self.disk_free
            .set(o.disk_free_bytes.min(i64::MAX as u64) as i64);
        self.relay_connections.set(relay_connections as i64);
        for state in RELAY_STATES {
            self.relay_state
                .get_or_create(&vec![("state", state)])
                .set(i64::from(o.relay_state == state));
        }
        self.refresh_relays(o);
        self.recipients.refresh(o);
        self.events.refresh(o);
        sync(&self.enqueued, s.enqueued_total);
        sync(&self.delivered, s.delivered_total);
        sync(&self.retried, s.retried_total);
        sync(&self.dead_lettered, s.dead_total);
        sync(&self.duplicates, s.duplicates_total);
        sync(&self.refused, o.refused_total);
        sync(&self.cancelled, o.cancelled_total);
        for c in &o.clients {
            let name = || vec![("client", c.name.clone())];
            self.client_queued
                .get_or_create(&name())
                .set(c.queued as i64);
            self.client_queued_bytes
                .get_or_create(&name())
                .set(c.queued_bytes as i64);
            sync(
                &self.client_enqueued.get_or_create(&name()),
                c.enqueued_total,
            );
            sync(
                &self.client_delivered.get_or_create(&name()),
                c.delivered_total,
            );
            for (reason, v) in [
                ("rate", c.refused_rate_total),
                ("quota", c.refused_quota_total),
                ("policy", c.refused_policy_total),
            ] {
                let labels = vec![("client", c.name.clone()), ("reason", reason.to_string())];
                sync(&self.client_refused.get_or_create(&labels), v);
            }
        }
    }

    fn refresh_relays(&self, o: &Overview) {
        for r in &o.relays {
            let relay = || ("relay", r.name.clone());
            for state in RELAY_STATES {
                self.relay_status
                    .get_or_create(&vec![relay(), ("state", state.to_string())])
                    .set(i64::from(r.state == state));
            }
            self.relay_open_connections
                .get_or_create(&vec![relay()])
                .set(r.connections as i64);
            for (kind, v) in [
                ("configured", f64::from(r.rate_per_second)),
                ("effective", r.effective_rate),
            ] {
                self.relay_rate
                    .get_or_create(&vec![relay(), ("kind", kind.to_string())])
                    .set(v);
            }
            for (result, v) in [
                ("sent", r.sent),
                ("deferred", r.deferred),
                ("failed", r.failed),
            ] {
                let labels = vec![relay(), ("result", result.to_string())];
                sync(&self.relay_messages.get_or_create(&labels), v);
            }
        }
        if !o.relays.is_empty() {
            for lane in Lane::ALL {
                self.lane_without_relay
                    .get_or_create(&vec![("lane", lane.name())])
                    .set(i64::from(o.lanes_without_relay.contains(&lane)));
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().expect("registry");
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `stop`, with the routes of
/// `more` (the console); `scrape` is called for each scrape and returns
/// the text to serve. With `tls` (its config and the handshake timeout),
/// over HTTPS with the gRPC listener's certificate.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<(crate::tls::ReloadableTls, std::time::Duration)>,
    scrape: Arc<dyn Fn() -> String + Send + Sync>,
    more: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;
    let app = more.route(
        "/metrics",
        get(move || {
            let scrape = scrape.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    scrape(),
                )
            }
        }),
    );
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some((tls, handshake)) => {
            let listener = TlsListener {
                local: listener.local_addr(),
                incoming: Box::pin(tls.incoming_http1(listener, handshake)),
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// The HTTP listener over TLS: completed handshakes, for `axum::serve`.
struct TlsListener {
    local: std::io::Result<SocketAddr>,
    incoming: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<TlsConn>> + Send>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        use tokio_stream::StreamExt;
        loop {
            // Errors are logged (and paced) by the stream; it never ends
            // while it is held.
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    if let Ok(peer) = conn.get_ref().0.peer_addr() {
                        return (conn, peer);
                    }
                }
                Some(Err(_)) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::default();
        let s = Overview {
            stats: crate::observe::stats::QueueStats {
                ready: 3,
                queued_by_lane: [0, 0, 3],
                enqueued_total: 10,
                ..Default::default()
            },
            congestion: crate::observe::congestion::Level::Warning,
            relay_state: "throttled",
            relay_reason: "450 4.7.1 too much mail".into(),
            relays: vec![crate::observe::overview::RelayFigures {
                name: "ses".into(),
                state: "throttled",
                connections: 2,
                rate_per_second: 14,
                effective_rate: 7.0,
                sent: 5,
                ..Default::default()
            }],
            lanes_without_relay: vec![Lane::Bulk],
            paused_lanes: vec![Lane::Bulk],
            ..Default::default()
        };
        m.refresh(&s);
        m.smtp_reply("4xx");
        m.declare_failure_classes(&["bad_mailbox", "throttled"]);
        m.failed_attempt("bad_mailbox");
        m.enqueue_duration.observe(0.002);
        let text = m.render();
        for line in [
            "mailspool_queue_messages{state=\"ready\"} 3",
            "mailspool_queue_lane_messages{lane=\"bulk\"} 3",
            "mailspool_enqueued_messages_total 10",
            "mailspool_congestion_state 1",
            "mailspool_delivery_paused{lane=\"bulk\"} 1",
            "mailspool_delivery_paused{lane=\"normal\"} 0",
            "mailspool_relay_state{state=\"throttled\"} 1",
            "mailspool_relay_connections 2",
            "mailspool_relay_status{relay=\"ses\",state=\"throttled\"} 1",
            "mailspool_relay_status{relay=\"ses\",state=\"ok\"} 0",
            "mailspool_relay_open_connections{relay=\"ses\"} 2",
            "mailspool_relay_rate_per_second{relay=\"ses\",kind=\"effective\"} 7.0",
            "mailspool_relay_messages_total{relay=\"ses\",result=\"sent\"} 5",
            "mailspool_lane_without_relay{lane=\"bulk\"} 1",
            "mailspool_smtp_replies_total{class=\"4xx\"} 1",
            "mailspool_failed_attempts_total{class=\"bad_mailbox\"} 1",
            "mailspool_failed_attempts_total{class=\"throttled\"} 0",
            "mailspool_enqueue_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Totals only move forward.
        m.refresh(&Overview::default());
        assert!(m.render().contains("mailspool_enqueued_messages_total 10"));
    }
}
