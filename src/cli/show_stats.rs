//! `mailspool stats`: QueueStats as a table or JSON (`--watch`: the live view).

use super::*;

pub async fn stats(a: StatsArgs) -> ClientResult {
    if a.watch {
        return crate::cli::watch::run(&a.client, a.interval, a.count).await;
    }
    let mut client = pb::queue_admin_client::QueueAdminClient::new(channel(&a.client).await?);
    let s = client
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if a.json {
        let mut v = serde_json::json!({
            "queued": s.queued, "ready": s.ready, "scheduled": s.scheduled, "in_flight": s.in_flight,
            "dead": s.dead, "enqueued_total": s.enqueued_total, "delivered_total": s.delivered_total,
            "retried_total": s.retried_total, "dead_total": s.dead_total,
            "duplicates_total": s.duplicates_total,
            "oldest_queued_age_seconds": s.oldest_queued_age_seconds,
            "enqueue_rate_per_second": s.enqueue_rate_per_second,
            "delivery_rate_per_second": s.delivery_rate_per_second,
            "drain_eta_seconds": s.drain_eta_seconds,
            "net_drain_rate_per_second": s.net_drain_rate_per_second,
            "rate_window_seconds": s.rate_window_seconds,
            "rates_warming_up": s.rates_warming_up,
            "waiting_transactional_seconds": s.waiting_transactional_seconds,
            "waiting_normal_seconds": s.waiting_normal_seconds,
            "waiting_bulk_seconds": s.waiting_bulk_seconds,
            "queued_transactional": s.queued_transactional, "queued_normal": s.queued_normal,
            "queued_bulk": s.queued_bulk, "group_commits_total": s.group_commits_total,
            "uptime_seconds": s.uptime_seconds, "fsyncs_total": s.fsyncs_total,
            "quarantined": s.quarantined, "spool_bytes": s.spool_bytes,
            "max_spool_bytes": s.max_spool_bytes, "disk_free_bytes": s.disk_free_bytes,
            "refused_total": s.refused_total, "relay_state": s.relay_state,
            "relay_consecutive_failures": s.relay_consecutive_failures,
            "relay_reason": s.relay_reason,
            "relay_backoff_remaining_ms": s.relay_backoff_remaining_ms,
            "congestion": s.congestion().as_str_name(),
            "congestion_reason": s.congestion_reason,
            "congestion_since_unix_ms": s.congestion_since_unix_ms,

            "paused_lanes": s.paused_lanes.iter().map(|&l| ac::lane_name(l)).collect::<Vec<_>>(),
            "cancelled_total": s.cancelled_total,
        });
        v["congestion_cause"] = s.congestion_cause.clone().into();
        v["congestion_runbook"] = s.congestion_runbook.clone().into();
        v["clients"] = s.clients.iter().map(ac::client_json).collect();
        v["relays"] = s.relays.iter().map(ac::relay_json).collect();
        v["lanes_without_relay"] = s
            .lanes_without_relay
            .iter()
            .map(|&l| ac::lane_name(l))
            .collect();
        // Outside the json! literal, whose macro recursion has its limit.
        for (k, x) in [
            (
                "time_to_inbox_p50_transactional_seconds",
                s.time_to_inbox_p50_transactional_seconds,
            ),
            (
                "time_to_inbox_p99_transactional_seconds",
                s.time_to_inbox_p99_transactional_seconds,
            ),
            (
                "time_to_inbox_p50_normal_seconds",
                s.time_to_inbox_p50_normal_seconds,
            ),
            (
                "time_to_inbox_p99_normal_seconds",
                s.time_to_inbox_p99_normal_seconds,
            ),
            (
                "time_to_inbox_p50_bulk_seconds",
                s.time_to_inbox_p50_bulk_seconds,
            ),
            (
                "time_to_inbox_p99_bulk_seconds",
                s.time_to_inbox_p99_bulk_seconds,
            ),
        ] {
            v[k] = x.into();
        }
        v["bounce_rate_last_hour"] = s.bounce_rate_last_hour.into();
        v["suppression_list_size"] = s.suppression_list_size.into();
        v["event_log"] = serde_json::json!({
            "first_sequence": s.event_log_first_sequence,
            "last_sequence": s.event_log_last_sequence,
            "events": s.event_log_events,
            "bytes": s.event_log_bytes,
        });
        v["webhooks"] = s.webhooks.iter().map(ac::webhook_json).collect();
        for (k, x) in [
            ("recipients_delivered_total", s.recipients_delivered_total),
            ("recipients_bounced_total", s.recipients_bounced_total),
            ("recipients_suppressed_total", s.recipients_suppressed_total),
            ("recipients_expired_total", s.recipients_expired_total),
            (
                "recipients_delivered_last_hour",
                s.recipients_delivered_last_hour,
            ),
            (
                "recipients_bounced_last_hour",
                s.recipients_bounced_last_hour,
            ),
            (
                "recipients_suppressed_last_hour",
                s.recipients_suppressed_last_hour,
            ),
            (
                "recipients_expired_last_hour",
                s.recipients_expired_last_hour,
            ),
        ] {
            v[k] = x.into();
        }
        v["bounce_classes"] = s
            .bounce_classes
            .iter()
            .map(|c| serde_json::json!({"class": c.class().as_str_name(), "total": c.total, "last_hour": c.last_hour}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let eta = if s.drain_eta_seconds < 0.0 {
        "not draining".to_string()
    } else {
        format!("{:.0} s", s.drain_eta_seconds)
    };
    let mut congestion = s.congestion().as_str_name().to_string();
    if !s.congestion_reason.is_empty() {
        congestion.push_str(&format!(" ({})", s.congestion_reason));
    }
    if s.congestion_since_unix_ms > 0 {
        congestion.push_str(&format!(
            " since {}",
            ac::ago(s.congestion_since_unix_ms, ac::now_ms())
        ));
    }
    let mut rows: Vec<(&str, String)> = vec![("congestion", congestion)];
    if !s.congestion_cause.is_empty() {
        rows.push(("cause", s.congestion_cause.clone()));
        rows.push(("runbook", s.congestion_runbook.clone()));
    }
    rows.extend([
        ("paused lanes", ac::lanes_list(&s.paused_lanes)),
        ("queued", s.queued.to_string()),
        ("  ready", s.ready.to_string()),
        ("  scheduled", s.scheduled.to_string()),
        ("  in flight", s.in_flight.to_string()),
        (
            "  transactional",
            format!(
                "{} (longest wait {:.1} s; to inbox p50 {} s, p99 {} s)",
                s.queued_transactional,
                s.waiting_transactional_seconds,
                s.time_to_inbox_p50_transactional_seconds,
                s.time_to_inbox_p99_transactional_seconds
            ),
        ),
        (
            "  normal",
            format!(
                "{} (longest wait {:.1} s; to inbox p50 {} s, p99 {} s)",
                s.queued_normal,
                s.waiting_normal_seconds,
                s.time_to_inbox_p50_normal_seconds,
                s.time_to_inbox_p99_normal_seconds
            ),
        ),
        (
            "  bulk",
            format!(
                "{} (longest wait {:.1} s; to inbox p50 {} s, p99 {} s)",
                s.queued_bulk,
                s.waiting_bulk_seconds,
                s.time_to_inbox_p50_bulk_seconds,
                s.time_to_inbox_p99_bulk_seconds
            ),
        ),
        ("dead", s.dead.to_string()),
        (
            "oldest queued",
            format!("{:.1} s", s.oldest_queued_age_seconds),
        ),
        (
            "enqueue rate",
            format!("{:.1} /s", s.enqueue_rate_per_second),
        ),
        (
            "delivery rate",
            format!("{:.1} /s", s.delivery_rate_per_second),
        ),
        ("drain ETA", eta),
        (
            "rates over",
            format!(
                "{} s{} (net {:+.1} /s)",
                s.rate_window_seconds,
                if s.rates_warming_up {
                    ", warming up"
                } else {
                    ""
                },
                s.net_drain_rate_per_second
            ),
        ),
        (
            "relay",
            if s.relay_reason.is_empty() {
                format!(
                    "{} ({} failures)",
                    s.relay_state, s.relay_consecutive_failures
                )
            } else {
                format!(
                    "{} ({} failures): {}",
                    s.relay_state, s.relay_consecutive_failures, s.relay_reason
                )
            },
        ),
        ("spool bytes", s.spool_bytes.to_string()),
        ("refused total", s.refused_total.to_string()),
        ("enqueued total", s.enqueued_total.to_string()),
        ("delivered total", s.delivered_total.to_string()),
        ("retried total", s.retried_total.to_string()),
        ("dead total", s.dead_total.to_string()),
        ("duplicates total", s.duplicates_total.to_string()),
        ("cancelled total", s.cancelled_total.to_string()),
        (
            "recipients",
            format!(
                "delivered {}, bounced {}, suppressed {}, expired {} (last hour: {}, {}, {}, {})",
                s.recipients_delivered_total,
                s.recipients_bounced_total,
                s.recipients_suppressed_total,
                s.recipients_expired_total,
                s.recipients_delivered_last_hour,
                s.recipients_bounced_last_hour,
                s.recipients_suppressed_last_hour,
                s.recipients_expired_last_hour
            ),
        ),
        (
            "bounce rate",
            format!(
                "{:.1}% (last hour; relays act at 5-10%)",
                s.bounce_rate_last_hour * 100.0
            ),
        ),
        (
            "suppressed",
            format!("{} on the list", s.suppression_list_size),
        ),
        ("failed attempts", failures(&s.bounce_classes)),
        (
            "event log",
            format!(
                "{} events, {} (sequence {}-{})",
                ac::thousands(s.event_log_events),
                ac::human_bytes(s.event_log_bytes),
                s.event_log_first_sequence,
                s.event_log_last_sequence
            ),
        ),
    ]);
    for (k, v) in rows {
        println!("{k:<18} {v:>14}");
    }
    if !s.relays.is_empty() {
        print!("\n{}", ac::relays_table(&s.relays));
    }
    if !s.webhooks.is_empty() {
        print!("\n{}", ac::webhooks_table(&s.webhooks));
    }
    if !s.clients.is_empty() {
        print!("\n{}", ac::clients_table(&s.clients));
    }
    Ok(())
}

/// Failed attempts by bounce class, those with any: `bad_mailbox 3 (1h 1)`.
fn failures(classes: &[pb::BounceClassCount]) -> String {
    let shown: Vec<String> = classes
        .iter()
        .filter(|c| c.total > 0)
        .map(|c| {
            let name = c
                .class()
                .as_str_name()
                .trim_start_matches("BOUNCE_")
                .to_ascii_lowercase();
            format!("{name} {} (1h {})", c.total, c.last_hour)
        })
        .collect();
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join(", ")
    }
}
