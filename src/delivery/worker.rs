//! Delivery workers: take a lease, send its messages through the relay,
//! turn each result into an outcome, hand the outcomes back.
//!
//! Invariant: a worker never drops a lease. It ends it with outcomes, or,
//! if the process stops first, leaves it to expire with the process (the
//! messages are due again at the next start).

use std::sync::Arc;

use rand::Rng;
use tokio::sync::watch;

use crate::delivery::relay::Relay;
use crate::delivery::retry::{decide, RetryPolicy, SendResult};
use crate::delivery::scheduler::Scheduler;
use crate::model::{now_ms, Outcome};
use crate::observe::stats::Rates;

/// Messages per recorded group of outcomes within a lease.
const ACK_CHUNK: usize = 8;

/// One worker's loop; returns when `stop` turns true and no lease is held.
pub async fn run_worker(
    scheduler: Arc<Scheduler>,
    relay: Arc<Relay>,
    policy: RetryPolicy,
    rates: Arc<Rates>,
    metrics: Arc<crate::observe::metrics::Metrics>,
    stop: watch::Receiver<bool>,
) {
    while let Some(lease) = scheduler.next_lease(&stop).await {
        let mut stopped: Option<String> = None;
        // Messages that went dead in this lease: one WARN line for them all,
        // so a relay rejecting everything does not flood the log.
        let mut dead: Vec<(crate::model::MessageId, String)> = Vec::new();
        // Outcomes are recorded every ACK_CHUNK messages, not at the end of
        // the lease: a crash then re-sends at most a chunk per worker.
        for chunk in lease.messages.chunks(ACK_CHUNK) {
            let results = match &stopped {
                Some(why) => vec![SendResult::NotAttempted(why.clone()); chunk.len()],
                None => relay.send_all(chunk, lease.deadline).await,
            };
            if let Some(SendResult::NotAttempted(why)) = results.last() {
                stopped = Some(why.clone());
            }
            let now = now_ms();
            let mut delivered = Vec::new();
            let outcomes: Vec<_> = chunk
                .iter()
                .zip(results)
                .map(|(m, result)| {
                    log_result(m.id, &result);
                    if let Some(class) = result.reply_class() {
                        metrics.smtp_reply(class);
                    }
                    if let Some(class) = result
                        .error()
                        .and_then(crate::delivery::bounce::classify_error)
                    {
                        metrics.failed_attempt(class.name());
                    }
                    let outcome =
                        decide(result, &m.record, &policy, now, rand::rng().random::<f64>());
                    if let Outcome::Dead { reason } = &outcome {
                        dead.push((m.id, reason.clone()));
                    }
                    if outcome == Outcome::Ack {
                        let latency = now.saturating_sub(m.record.enqueued_ms) as f64 / 1000.0;
                        metrics.delivered_after(m.record.lane, latency);
                        delivered.push((m.record.lane.index(), latency));
                    }
                    (m.id, outcome)
                })
                .collect();
            if let Err(e) = scheduler.complete(&lease, outcomes).await {
                tracing::error!(error = %e, "could not record delivery outcomes; the messages will be sent again");
            } else {
                rates.delivered(&delivered);
            }
        }
        log_dead(&dead);
    }
}

/// Messages that will not be delivered, at WARN: the first with its reason
/// (addresses redacted), and how many more died in the same lease.
fn log_dead(dead: &[(crate::model::MessageId, String)]) {
    let Some((id, reason)) = dead.first() else {
        return;
    };
    let reason = crate::delivery::redact::redact_addresses(reason);
    if dead.len() == 1 {
        tracing::warn!(%id, %reason, "MessageDead");
    } else {
        tracing::warn!(count = dead.len(), first = %id, %reason, "MessagesDead (the first one's reason)");
    }
}

fn log_result(id: crate::model::MessageId, result: &SendResult) {
    match result {
        SendResult::Accepted => tracing::debug!(%id, "MessageDelivered"),
        // Relays quote the recipient in rejections: the address is personal
        // data, so the full reply shows at debug level only (the WARN of
        // the dead message has it redacted).
        SendResult::Permanent(reply) => tracing::debug!(%id, %reply, "MessageRejected"),
        SendResult::Transient(error) | SendResult::Deferred(error) => {
            tracing::debug!(%id, %error, "MessageDeferred")
        }
        // The relay's state change is logged once, at WARN (relay::Breaker).
        SendResult::Throttled(reply) | SendResult::Refused(reply) => {
            tracing::debug!(%id, %reply, "MessagePostponedByRelay")
        }
        SendResult::NotAttempted(why) => tracing::debug!(%id, %why, "MessagePostponed"),
    }
}
