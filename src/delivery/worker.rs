//! Delivery workers: take a lease, screen its messages (deadline passed,
//! recipients on the suppression list), send the rest through the relay,
//! turn each result into an outcome per recipient, hand the outcomes back.
//!
//! Invariant: a worker never drops a lease. It ends it with outcomes, or,
//! if the process stops first, leaves it to expire with the process (the
//! messages are due again at the next start).

use std::sync::Arc;

use rand::Rng;
use tokio::sync::watch;

use crate::delivery::outcome::{decide, newly};
use crate::delivery::pool::expired;
use crate::delivery::relay::Relay;
use crate::delivery::retry::{MessageResult, RetryPolicy, SendResult};
use crate::delivery::scheduler::Scheduler;
use crate::model::{now_ms, Completion, Leased, MessageId, Outcome, RcptState};
use crate::observe::outcomes::Outcomes;
use crate::observe::stats::Rates;
use crate::spool::Store;

/// Messages per recorded group of outcomes within a lease.
const ACK_CHUNK: usize = 8;

/// What every worker shares.
pub struct Workers {
    pub scheduler: Arc<Scheduler>,
    pub relay: Arc<Relay>,
    /// Read for the suppression list.
    pub store: Store,
    pub policy: RetryPolicy,
    pub rates: Arc<Rates>,
    pub metrics: Arc<crate::observe::metrics::Metrics>,
    pub outcomes: Arc<Outcomes>,
}

/// One worker's loop; returns when `stop` turns true and no lease is held.
pub async fn run_worker(w: Arc<Workers>, stop: watch::Receiver<bool>) {
    while let Some(mut lease) = w.scheduler.next_lease(&stop).await {
        let mut stopped: Option<String> = None;
        // Messages that went dead in this lease: one WARN line for them all,
        // so a relay rejecting everything does not flood the log.
        let mut dead: Vec<(MessageId, String)> = Vec::new();
        let mut messages = std::mem::take(&mut lease.messages).into_iter();
        // Outcomes are recorded every ACK_CHUNK messages, not at the end of
        // the lease: a crash then re-sends at most a chunk per worker.
        loop {
            let mut chunk: Vec<Leased> = messages.by_ref().take(ACK_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            // Screened before sending: (recipients marked suppressed, the
            // result when nothing is left to send).
            let screened: Vec<(u64, Option<MessageResult>)> =
                chunk.iter_mut().map(|m| screen(&w.store, m)).collect();
            let to_send: Vec<&Leased> = chunk
                .iter()
                .zip(&screened)
                .filter(|(_, s)| s.1.is_none())
                .map(|(m, _)| m)
                .collect();
            let sent = match &stopped {
                Some(why) => {
                    let not = MessageResult::All(SendResult::NotAttempted(why.clone()));
                    vec![(not, ""); to_send.len()]
                }
                None => w.relay.send_all(&to_send, lease.deadline).await,
            };
            if let Some((MessageResult::All(SendResult::NotAttempted(why)), _)) = sent.last() {
                stopped = Some(why.clone());
            }
            let mut sent = sent.into_iter();
            let now = now_ms();
            let mut delivered = Vec::new();
            let mut outcomes = Vec::with_capacity(chunk.len());
            for (m, (marked, pre)) in chunk.iter().zip(screened) {
                let (result, relay) = match pre {
                    Some(r) => (r, ""),
                    None => sent.next().expect("one result per message sent"),
                };
                let accepted_reply = match &result {
                    MessageResult::All(SendResult::Accepted(reply)) => reply.clone(),
                    _ => String::new(),
                };
                for r in result.results() {
                    log_result(m.id, r);
                    if let Some(class) = r.reply_class() {
                        w.metrics.smtp_reply(class);
                    }
                    if let Some(class) = r.error().and_then(crate::delivery::bounce::classify_error)
                    {
                        w.metrics.failed_attempt(class.name());
                        w.outcomes.failed(class);
                    }
                }
                let mut outcome = decide(result, &m.record, &w.policy, now, rand::rng().random());
                if marked > 0 {
                    outcome = with_screened(outcome, m, now);
                }
                count(&w.outcomes, m, &outcome, marked);
                if let Some(reason) = dead_reason(m, &outcome) {
                    dead.push((m.id, reason));
                }
                if delivered_now(&outcome) {
                    let latency = now.saturating_sub(m.record.enqueued_ms) as f64 / 1000.0;
                    w.metrics.delivered_after(m.record.lane, latency);
                    delivered.push((m.record.lane.index(), latency));
                }
                outcomes.push(Completion {
                    id: m.id,
                    outcome,
                    relay: relay.to_string(),
                    accepted_reply,
                });
            }
            if let Err(e) = w.scheduler.complete(&lease, outcomes).await {
                tracing::error!(error = %e, "could not record delivery outcomes; the messages will be sent again");
            } else {
                w.rates.delivered(&delivered);
            }
        }
        log_dead(&dead);
    }
}

/// Before sending: a message past its deadline is not sent at all; a
/// recipient on the suppression list (unless the message bypasses it) is
/// marked suppressed in the leased record, so only the others are sent.
/// Returns (how many recipients were marked, the result when nothing is
/// left to send).
fn screen(store: &Store, m: &mut Leased) -> (u64, Option<MessageResult>) {
    if let Some(late) = expired(&m.record) {
        return (0, Some(MessageResult::All(late)));
    }
    if m.record.bypass_suppression {
        return (0, None);
    }
    let now = now_ms();
    let mut marked = 0;
    let mut rcpts = m.record.rcpts_full();
    for i in m.record.pending() {
        if let Some(s) = store.suppressed(&m.record.envelope_to[i]) {
            let why = format!(
                "suppressed: {} since {}",
                s.reason.replace('_', " "),
                crate::model::utc_time(s.since_ms as i64)
            );
            rcpts[i].finish(RcptState::Suppressed, &why, now);
            marked += 1;
        }
    }
    if marked == 0 {
        return (0, None);
    }
    m.record.rcpts = rcpts;
    let nothing_left = m.record.pending().is_empty();
    (
        marked,
        nothing_left.then(|| MessageResult::Each(Vec::new())),
    )
}

/// The outcome of a message whose recipients were marked before sending:
/// always every recipient's state, so the marks reach the spool.
fn with_screened(outcome: Outcome, m: &Leased, now: u64) -> Outcome {
    let rcpts = outcome.rcpts_after(&m.record, now);
    match outcome {
        Outcome::Split { .. } => outcome,
        Outcome::Postpone { due_ms, error } | Outcome::Retry { due_ms, error } => Outcome::Split {
            rcpts,
            due_ms,
            error,
        },
        Outcome::Dead { reason } => Outcome::Split {
            rcpts,
            due_ms: now,
            error: reason,
        },
        Outcome::Ack => Outcome::Split {
            rcpts,
            due_ms: now,
            error: String::new(),
        },
    }
}

/// Counts the recipients that finished in this outcome, by state
/// (`marked`: suppressed while screening, no longer pending in the
/// leased record).
fn count(outcomes: &Outcomes, m: &Leased, outcome: &Outcome, marked: u64) {
    for state in [RcptState::Delivered, RcptState::Bounced, RcptState::Expired] {
        outcomes.finished(state, newly(&m.record, outcome, state).len() as u64);
    }
    let suppressed = newly(&m.record, outcome, RcptState::Suppressed).len() as u64;
    outcomes.finished(RcptState::Suppressed, suppressed + marked);
}

/// The message is finished with something delivered.
fn delivered_now(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Ack => true,
        Outcome::Split { rcpts, .. } => matches!(
            crate::model::finish_of(rcpts),
            Some(crate::model::Finish::Delivered | crate::model::Finish::Partial)
        ),
        _ => false,
    }
}

/// Why a message is dead after this outcome (None: it is not).
fn dead_reason(m: &Leased, outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Dead { reason } => Some(reason.clone()),
        Outcome::Split { rcpts, error, .. } => (crate::model::finish_of(rcpts)
            == Some(crate::model::Finish::Dead))
        .then(|| error.clone())
        .or_else(|| {
            let bounced = newly(&m.record, outcome, RcptState::Bounced);
            bounced.first().map(|(_, r)| r.last_reply.clone())
        }),
        _ => None,
    }
}

/// Messages that will not be delivered, at WARN: the first with its reason
/// (addresses redacted), and how many more died in the same lease.
fn log_dead(dead: &[(MessageId, String)]) {
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

fn log_result(id: MessageId, result: &SendResult) {
    match result {
        SendResult::Accepted(reply) => tracing::debug!(%id, %reply, "MessageDelivered"),
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
        SendResult::Expired(why) => tracing::debug!(%id, %why, "MessageExpired"),
    }
}
