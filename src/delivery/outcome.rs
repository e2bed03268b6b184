//! "What became of each recipient, and when is the message due again?":
//! one attempt's results → the outcome for the spool. Pure, tested as
//! tables.
//!
//! Each pending recipient has its own result: delivered (2xx), bounced
//! (5xx, or a failed attempt past `max_attempts`), deferred (4xx, a
//! timeout or broken connection: it stays pending and counts an attempt),
//! postponed (the relay throttling or refusing us, or not attempted: no
//! attempt, no bounce: promise 7), expired or suppressed (never sent). The
//! message is due again, with the backoff of its attempts, while any
//! recipient is pending; past `max_age` its pending recipients bounce.

use std::time::Duration;

use crate::delivery::bounce::{classify_error, classify_reply};
use crate::delivery::retry::{
    backoff, MessageResult, RetryPolicy, SendResult, NOT_ATTEMPTED_DELAY,
};
use crate::model::{BounceClass, Outcome, Rcpt, RcptState, Record};

/// The class of a failed result's reply.
fn class_of(result: &SendResult) -> Option<BounceClass> {
    let text = result.error()?;
    let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(code) if text.as_bytes().get(3) == Some(&b' ') => {
            Some(classify_reply(code, &text[4..]))
        }
        _ => classify_error(text),
    }
}

/// Turns one attempt's results into the outcome for the spool. `record`
/// is the state before this attempt; `unit` is a random draw in [0, 1).
pub fn decide(
    result: MessageResult,
    record: &Record,
    policy: &RetryPolicy,
    now_ms: u64,
    unit: f64,
) -> Outcome {
    let pending = record.pending();
    let postpone_ms = now_ms + NOT_ATTEMPTED_DELAY.as_millis() as u64;
    // The common cases, one result for everyone: no per-recipient work.
    if let MessageResult::All(r) = &result {
        match r {
            SendResult::Accepted(_) => return Outcome::Ack,
            SendResult::Throttled(reply) | SendResult::Refused(reply) => {
                return Outcome::Postpone {
                    due_ms: postpone_ms,
                    error: format!("relay: {reply}"),
                }
            }
            SendResult::NotAttempted(why) => {
                return Outcome::Postpone {
                    due_ms: postpone_ms,
                    error: format!("not attempted: {why}"),
                }
            }
            _ => {}
        }
    }
    let results: Vec<SendResult> = match result {
        MessageResult::All(r) => vec![r; pending.len()],
        MessageResult::Each(rs) => rs,
    };
    let attempts = record.attempts + 1;
    let age = Duration::from_millis(now_ms.saturating_sub(record.first_due_ms));
    let mut rcpts = record.rcpts_full();
    let mut attempted = false;
    let mut changed = false;
    let mut first_error: Option<String> = None;
    for (&i, result) in pending.iter().zip(&results) {
        let r = &mut rcpts[i];
        let class = class_of(result);
        match result {
            SendResult::Accepted(reply) => {
                r.attempts += 1;
                r.class = None;
                r.finish(RcptState::Delivered, reply, now_ms);
                attempted = true;
            }
            SendResult::Permanent(reply) => {
                r.attempts += 1;
                r.class = class;
                r.finish(RcptState::Bounced, reply, now_ms);
                attempted = true;
            }
            SendResult::Transient(e) | SendResult::Deferred(e) => {
                r.attempts += 1;
                r.class = class;
                attempted = true;
                if r.attempts >= policy.max_attempts || attempts >= policy.max_attempts {
                    let why = format!("gave up after {} attempts; last error: {e}", r.attempts);
                    r.finish(RcptState::Bounced, &why, now_ms);
                } else if age >= policy.max_age {
                    let why = format!(
                        "older than max_age ({}s); last error: {e}",
                        policy.max_age.as_secs()
                    );
                    r.finish(RcptState::Bounced, &why, now_ms);
                } else {
                    r.last_reply = e.clone();
                }
            }
            SendResult::Throttled(reply) | SendResult::Refused(reply) => {
                r.class = class;
                r.last_reply = format!("relay: {reply}");
            }
            SendResult::NotAttempted(why) => {
                r.last_reply = format!("not attempted: {why}");
            }
            SendResult::Expired(why) => r.finish(RcptState::Expired, why, now_ms),
        }
        changed |= r.state != RcptState::Pending;
        if first_error.is_none() && r.state != RcptState::Delivered {
            first_error = Some(r.last_reply.clone());
        }
    }
    let error = first_error.unwrap_or_default();
    if !attempted && !changed {
        return Outcome::Postpone {
            due_ms: postpone_ms,
            error,
        };
    }
    let due_ms = if attempted {
        now_ms + backoff(policy, attempts, unit).as_millis() as u64
    } else {
        postpone_ms
    };
    Outcome::Split {
        rcpts,
        due_ms,
        error,
    }
}

/// Recipients that finished in `outcome` with this state, as (address,
/// recipient) pairs: what the worker counts and logs.
pub fn newly(record: &Record, outcome: &Outcome, state: RcptState) -> Vec<(usize, Rcpt)> {
    match outcome {
        Outcome::Split { rcpts, .. } => record
            .pending()
            .into_iter()
            .filter(|&i| rcpts.get(i).is_some_and(|r| r.state == state))
            .map(|i| (i, rcpts[i].clone()))
            .collect(),
        Outcome::Ack if state == RcptState::Delivered => record
            .pending()
            .into_iter()
            .map(|i| (i, record.rcpt(i)))
            .collect(),
        Outcome::Dead { .. } if state == RcptState::Bounced => record
            .pending()
            .into_iter()
            .map(|i| (i, record.rcpt(i)))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{finish_of, Finish, Lane};

    const P: RetryPolicy = crate::delivery::retry::TEST_POLICY;

    fn record(attempts: u32, enqueued_ms: u64, to: usize) -> Record {
        Record {
            lane: Lane::Normal,
            enqueued_ms,
            due_ms: enqueued_ms,
            first_due_ms: enqueued_ms,
            attempts,
            last_error: String::new(),
            envelope_from: String::new(),
            envelope_to: (0..to).map(|i| format!("r{i}@example.org")).collect(),
            message_id: String::new(),
            idempotency_key: String::new(),
            body: crate::model::BodyLoc {
                segment: 0,
                offset: 0,
                len: 0,
            },
            client: 0,
            expires_ms: 0,
            rcpts: vec![Rcpt::pending(attempts); to],
            bypass_suppression: false,
        }
    }

    fn all(r: SendResult) -> MessageResult {
        MessageResult::All(r)
    }

    fn states(o: &Outcome) -> Vec<RcptState> {
        match o {
            Outcome::Split { rcpts, .. } => rcpts.iter().map(|r| r.state).collect(),
            other => panic!("not split: {other:?}"),
        }
    }

    #[test]
    fn one_result_for_everyone() {
        let now = 10_000_000;
        let r = record(0, now, 1);
        assert_eq!(
            decide(all(SendResult::Accepted("250 ok".into())), &r, &P, now, 0.5),
            Outcome::Ack
        );
        let bounced = decide(
            all(SendResult::Permanent("550 5.1.1 no".into())),
            &r,
            &P,
            now,
            0.5,
        );
        assert_eq!(states(&bounced), [RcptState::Bounced]);
        let Outcome::Split { rcpts, error, .. } = &bounced else {
            unreachable!()
        };
        assert_eq!(error, "550 5.1.1 no");
        assert_eq!(rcpts[0].class, Some(BounceClass::BadMailbox));
        assert_eq!(finish_of(rcpts), Some(Finish::Dead));
        let deferred = decide(
            all(SendResult::Transient("451 4.3.0 later".into())),
            &r,
            &P,
            now,
            1.0,
        );
        assert!(matches!(&deferred, Outcome::Split { due_ms, rcpts, .. }
            if *due_ms == now + 30_000 && rcpts[0].attempts == 1 && rcpts[0].state == RcptState::Pending));
        // The relay throttling or refusing us, or not attempted: no attempt.
        for r2 in [
            SendResult::Throttled("450 4.7.1 too much mail".into()),
            SendResult::Refused("535 5.7.8 bad".into()),
            SendResult::NotAttempted("the lease ended".into()),
        ] {
            assert!(matches!(
                decide(all(r2), &record(19, now, 2), &P, now, 0.5),
                Outcome::Postpone { due_ms, .. } if due_ms == now + 1000
            ));
        }
        // The 20th failed attempt is the last; past max_age, too old.
        let last = decide(
            all(SendResult::Transient("451".into())),
            &record(19, now, 1),
            &P,
            now,
            0.5,
        );
        assert_eq!(states(&last), [RcptState::Bounced]);
        let old = decide(
            all(SendResult::Transient("timeout".into())),
            &record(1, 0, 1),
            &P,
            86_400_000,
            0.5,
        );
        let Outcome::Split { error, .. } = &old else {
            unreachable!()
        };
        assert!(error.starts_with("older than max_age"), "{error}");
        // A future not_before does not count as age.
        let mut scheduled = record(0, 0, 1);
        scheduled.first_due_ms = 86_400_000;
        let later = decide(
            all(SendResult::Transient("t".into())),
            &scheduled,
            &P,
            86_400_001,
            0.5,
        );
        assert_eq!(states(&later), [RcptState::Pending]);
    }

    #[test]
    fn each_recipient_has_its_own_fate() {
        let now = 5_000_000;
        let r = record(0, now, 4);
        let o = decide(
            MessageResult::Each(vec![
                SendResult::Accepted("250 2.0.0 Ok: queued as 4Xb2".into()),
                SendResult::Permanent("550 5.1.1 <r1@example.org>: User unknown".into()),
                SendResult::Transient("451 4.7.1 greylisted, try again later".into()),
                SendResult::Throttled("450 4.7.1 too much mail".into()),
            ]),
            &r,
            &P,
            now,
            1.0,
        );
        assert_eq!(
            states(&o),
            [
                RcptState::Delivered,
                RcptState::Bounced,
                RcptState::Pending,
                RcptState::Pending
            ]
        );
        let Outcome::Split {
            rcpts,
            due_ms,
            error,
        } = &o
        else {
            unreachable!()
        };
        assert_eq!(due_ms, &(now + 30_000), "an attempt counted: the backoff");
        assert_eq!(error, "550 5.1.1 <r1@example.org>: User unknown");
        assert_eq!(rcpts[1].class, Some(BounceClass::BadMailbox));
        assert_eq!(
            rcpts[0].last_reply, "250 2.0.0 Ok: queued as 4Xb2",
            "the relay's reply to the delivered one is kept"
        );
        assert_eq!(
            rcpts.iter().map(|r| r.attempts).collect::<Vec<_>>(),
            [1, 1, 1, 0],
            "the throttled one was not attempted"
        );
        assert_eq!(rcpts[0].finished_ms, now);
        // The retry: only the two pending ones have results.
        let mut again = r.clone();
        again.rcpts = rcpts.clone();
        assert_eq!(again.pending(), vec![2, 3]);
        let o2 = decide(
            MessageResult::Each(vec![
                SendResult::Accepted("250 ok".into()),
                SendResult::Accepted("250 ok".into()),
            ]),
            &again,
            &P,
            now + 30_000,
            0.5,
        );
        let Outcome::Split { rcpts, .. } = &o2 else {
            unreachable!()
        };
        assert_eq!(finish_of(rcpts), Some(Finish::Partial));
        assert_eq!(newly(&again, &o2, RcptState::Delivered).len(), 2);
    }

    #[test]
    fn expired_recipients_are_never_sent() {
        let now = 1_000;
        let r = record(0, now, 2);
        let o = decide(
            MessageResult::Each(vec![
                SendResult::Expired("past its deadline".into()),
                SendResult::Expired("past its deadline".into()),
            ]),
            &r,
            &P,
            now,
            0.5,
        );
        let Outcome::Split { rcpts, .. } = &o else {
            unreachable!()
        };
        assert_eq!(rcpts.iter().map(|r| r.attempts).sum::<u32>(), 0);
        assert_eq!(finish_of(rcpts), Some(Finish::Expired));
        let o = decide(
            all(SendResult::Expired("late".into())),
            &record(3, now, 1),
            &P,
            now,
            0.5,
        );
        let Outcome::Split { rcpts, .. } = &o else {
            unreachable!()
        };
        assert_eq!(finish_of(rcpts), Some(Finish::Expired));
    }
}
