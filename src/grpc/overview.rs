//! QueueStats: the queue's state gathered as an `Overview` (what
//! `/metrics` exports too) and converted to the wire's message.

use crate::grpc::api::{lane_to_proto, Api};
use crate::model::now_ms;
use crate::observe::congestion::{assess, Level, Signals};
use crate::observe::diagnose::{diagnose, Evidence};
use crate::observe::overview::{ClientFigures, Overview};
use crate::observe::stats::queue_stats;
use crate::pb;

impl Api {
    /// The queue's state now (QueueStats, `/metrics`); steps the congestion
    /// tracker (which logs a change once), so the server calls it every
    /// second as `observe_congestion`.
    pub fn overview(&self) -> Overview {
        let now = now_ms();
        let relays = self.relay.figures();
        let relay = crate::delivery::relay::Relay::state_of(&relays);
        let admin = self.store.admin_state();
        let s = queue_stats(
            &self.store.snapshot(now),
            self.scheduler.in_flight(),
            self.rates.view(),
            self.rates.uptime_seconds(),
            now,
        );
        let signals = Signals {
            queued: s.queued,
            ready: s.ready,
            oldest_age_secs: s.oldest_queued_age_seconds,
            drain_eta_secs: s.drain_eta_seconds,
            enqueue_rate: s.enqueue_rate_per_second,
            delivery_rate: s.delivery_rate_per_second,
            uptime_secs: s.uptime_seconds,
            paused: admin.paused != 0,
            warming_up: s.rates_warming_up,
            rate_window_secs: s.rate_window_seconds,
            waiting_secs: s.waiting_by_lane_seconds,
        };
        let (level, reason) = assess(&signals, &self.thresholds);
        let event_log = self.store.event_figures();
        let (congestion, mut congestion_reason, congestion_since_ms) =
            self.congestion
                .observe(level, reason, &signals, now, &self.thresholds);
        let outcomes = self.outcomes.view();
        let paused_lanes = crate::spool::paused_lanes(admin.paused);
        let disk_free_bytes = self
            .intake
            .disk_free
            .load(std::sync::atomic::Ordering::Relaxed);
        let cause = (congestion != Level::Ok).then(|| {
            let d = diagnose(&Evidence {
                relays: &relays,
                paused_lanes: &paused_lanes,
                disk_free_bytes,
                min_free_bytes: self.intake.spool_limits.min_free_bytes,
                spool_bytes: s.spool_bytes,
                max_spool_bytes: self.intake.spool_limits.max_spool_bytes,
                bounce_rate_last_hour: outcomes.bounce_rate_last_hour,
                enqueue_rate: s.enqueue_rate_per_second,
                delivery_rate: s.delivery_rate_per_second,
                rate_window_secs: s.rate_window_seconds,
            });
            congestion_reason = format!("{}; {congestion_reason}", d.text);
            d.cause
        });
        let congestion_cause = cause.map_or("", |c| c.name());
        let congestion_runbook = cause.map_or(String::new(), |c| c.runbook_url());
        Overview {
            stats: s,
            max_spool_bytes: self.intake.spool_limits.max_spool_bytes,
            disk_free_bytes,
            refused_total: self
                .intake
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
            cancelled_total: admin.cancelled_total,
            relay_state: relay.state,
            relay_reason: relay.reason,
            relay_consecutive_failures: relay.consecutive_failures,
            relay_backoff_remaining_ms: relay.backoff_remaining_ms,
            congestion,
            congestion_cause,
            congestion_runbook,
            congestion_reason,
            congestion_since_ms,
            paused_lanes,
            clients: self.client_figures(),
            relays,
            lanes_without_relay: self.relay.lanes_without_relay(),
            time_to_inbox: self.rates.time_to_inbox().map(|q| q.unwrap_or((0.0, 0.0))),
            outcomes,
            suppression_list_size: self.store.suppression_count(),
            webhooks: self.webhooks.figures(event_log.last_seq),
            event_log,
        }
    }

    /// Moves the congestion state on (logging a change once) and keeps
    /// the history.
    pub fn observe_congestion(&self) {
        let o = self.overview();
        self.history.record(crate::observe::history::Point {
            t_ms: crate::model::wall_ms(),
            queued: o.stats.queued,
            ready: o.stats.ready,
            dead: o.stats.dead,
            enqueue_rate: o.stats.enqueue_rate_per_second,
            delivery_rate: o.stats.delivery_rate_per_second,
            congestion: o.congestion as u8,
        });
    }

    /// Every configured client, and any other that has mail in the spool
    /// (a client removed from the configuration), by name.
    fn client_figures(&self) -> Vec<ClientFigures> {
        use std::sync::atomic::Ordering::Relaxed;
        let registry = self.store.clients();
        let named = |name: &str| ClientFigures {
            name: name.to_string(),
            ..Default::default()
        };
        let mut out: std::collections::BTreeMap<String, ClientFigures> = registry
            .names
            .values()
            .map(|name| (name.clone(), named(name)))
            .collect();
        for c in &self.auth.clients() {
            let e = out.entry(c.name.clone()).or_insert_with(|| named(&c.name));
            e.refused_rate_total = c.refused_rate.load(Relaxed);
            e.refused_quota_total = c.refused_quota.load(Relaxed);
            e.refused_policy_total = c.refused_policy.load(Relaxed);
            e.rate_per_second = c.rate_per_second;
            e.max_queued_messages = c.max_queued_messages;
            e.max_queued_bytes = c.max_queued_bytes;
        }
        for e in out.values_mut() {
            let k = registry.counters_of(&e.name);
            e.queued = k.queued;
            e.queued_bytes = k.queued_bytes;
            e.enqueued_total = k.enqueued_total;
            e.delivered_total = k.delivered_total;
            e.dead_total = k.dead_total;
        }
        out.into_values().collect()
    }
}

/// QueueStats as the wire has it.
pub(crate) fn overview_to_proto(o: Overview) -> pb::QueueStatsResponse {
    use crate::model::RcptState::*;
    let s = o.stats;
    let inbox = o.time_to_inbox;
    pb::QueueStatsResponse {
        queued: s.queued,
        ready: s.ready,
        scheduled: s.scheduled,
        in_flight: s.in_flight,
        dead: s.dead,
        enqueued_total: s.enqueued_total,
        delivered_total: s.delivered_total,
        retried_total: s.retried_total,
        dead_total: s.dead_total,
        oldest_queued_age_seconds: s.oldest_queued_age_seconds,
        enqueue_rate_per_second: s.enqueue_rate_per_second,
        delivery_rate_per_second: s.delivery_rate_per_second,
        drain_eta_seconds: s.drain_eta_seconds,
        queued_transactional: s.queued_by_lane[0],
        queued_normal: s.queued_by_lane[1],
        queued_bulk: s.queued_by_lane[2],
        duplicates_total: s.duplicates_total,
        group_commits_total: s.group_commits_total,
        uptime_seconds: s.uptime_seconds,
        fsyncs_total: s.fsyncs_total,
        quarantined: s.quarantined,
        spool_bytes: s.spool_bytes,
        max_spool_bytes: o.max_spool_bytes,
        disk_free_bytes: o.disk_free_bytes,
        refused_total: o.refused_total,
        relay_state: o.relay_state.to_string(),
        relay_reason: o.relay_reason.clone(),
        relay_consecutive_failures: o.relay_consecutive_failures,
        relay_backoff_remaining_ms: o.relay_backoff_remaining_ms,
        congestion: match o.congestion {
            Level::Ok => pb::Congestion::Ok,
            Level::Warning => pb::Congestion::Warning,
            Level::Critical => pb::Congestion::Critical,
        } as i32,
        congestion_reason: o.congestion_reason,
        congestion_cause: o.congestion_cause.into(),
        congestion_runbook: o.congestion_runbook,
        congestion_since_unix_ms: o.congestion_since_ms as i64,
        paused_lanes: o
            .paused_lanes
            .into_iter()
            .map(|l| lane_to_proto(l) as i32)
            .collect(),
        cancelled_total: o.cancelled_total,
        clients: o
            .clients
            .into_iter()
            .map(|c| pb::ClientStats {
                name: c.name,
                queued: c.queued,
                queued_bytes: c.queued_bytes,
                enqueued_total: c.enqueued_total,
                delivered_total: c.delivered_total,
                dead_total: c.dead_total,
                refused_rate_total: c.refused_rate_total,
                refused_quota_total: c.refused_quota_total,
                refused_policy_total: c.refused_policy_total,
                rate_per_second: c.rate_per_second,
                max_queued_messages: c.max_queued_messages,
                max_queued_bytes: c.max_queued_bytes,
            })
            .collect(),
        relays: o
            .relays
            .into_iter()
            .map(|r| pb::RelayStats {
                name: r.name,
                state: r.state.to_string(),
                reason: r.reason,
                connections: r.connections,
                max_connections: r.max_connections,
                rate_per_second: r.rate_per_second,
                effective_rate_per_second: r.effective_rate,
                sent_total: r.sent,
                deferred_total: r.deferred,
                failed_total: r.failed,
                last_reply: r.last_reply,
                priority: r.priority,
                weight: r.weight,
                describe: r.describe,
                consecutive_failures: r.consecutive_failures,
                backoff_remaining_ms: r.backoff_remaining_ms,
            })
            .collect(),
        lanes_without_relay: o
            .lanes_without_relay
            .into_iter()
            .map(|l| lane_to_proto(l) as i32)
            .collect(),
        net_drain_rate_per_second: s.net_drain_rate_per_second,
        rate_window_seconds: s.rate_window_seconds as u32,
        rates_warming_up: s.rates_warming_up,
        waiting_transactional_seconds: s.waiting_by_lane_seconds[0],
        waiting_normal_seconds: s.waiting_by_lane_seconds[1],
        waiting_bulk_seconds: s.waiting_by_lane_seconds[2],
        time_to_inbox_p50_transactional_seconds: inbox[0].0,
        time_to_inbox_p99_transactional_seconds: inbox[0].1,
        time_to_inbox_p50_normal_seconds: inbox[1].0,
        time_to_inbox_p99_normal_seconds: inbox[1].1,
        time_to_inbox_p50_bulk_seconds: inbox[2].0,
        time_to_inbox_p99_bulk_seconds: inbox[2].1,
        bounce_classes: crate::model::BounceClass::ALL
            .iter()
            .enumerate()
            .map(|(i, &c)| pb::BounceClassCount {
                class: crate::grpc::recipients::bounce_to_proto(c) as i32,
                total: o.outcomes.failures_total[i],
                last_hour: o.outcomes.failures_last_hour[i],
            })
            .collect(),
        bounce_rate_last_hour: o.outcomes.bounce_rate_last_hour,
        recipients_delivered_total: o.outcomes.total(Delivered),
        recipients_bounced_total: o.outcomes.total(Bounced),
        recipients_suppressed_total: o.outcomes.total(Suppressed),
        recipients_expired_total: o.outcomes.total(Expired),
        recipients_delivered_last_hour: o.outcomes.last_hour(Delivered),
        recipients_bounced_last_hour: o.outcomes.last_hour(Bounced),
        recipients_suppressed_last_hour: o.outcomes.last_hour(Suppressed),
        recipients_expired_last_hour: o.outcomes.last_hour(Expired),
        suppression_list_size: o.suppression_list_size,
        event_log_first_sequence: o.event_log.first_seq,
        event_log_last_sequence: o.event_log.last_seq,
        event_log_events: o.event_log.count,
        event_log_bytes: o.event_log.bytes,
        webhooks: o
            .webhooks
            .into_iter()
            .map(|w| pb::WebhookStats {
                name: w.name,
                state: w.state.to_string(),
                lag_events: w.lag_events,
                lag_seconds: w.lag_seconds,
                cursor: w.cursor,
                last_success_unix_ms: w.last_success_ms as i64,
                consecutive_failures: w.consecutive_failures,
                sent_total: w.sent_total,
                failed_total: w.failed_total,
                skipped_total: w.skipped_total,
                last_error: w.last_error,
            })
            .collect(),
    }
}
