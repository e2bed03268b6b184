//! How an outcome changes a record's recipients, and what becomes of the
//! message: pure, applied by the committer (`apply`).

use crate::model::{finish_of, Finish, Outcome, Rcpt, RcptState, Record};

/// What becomes of a message after an outcome.
#[derive(Debug)]
pub(super) enum Next {
    Postpone {
        due_ms: u64,
        error: String,
    },
    Retry {
        due_ms: u64,
        error: String,
    },
    /// No recipient is pending: how it ended and why.
    Finish(Finish, String),
}

/// Applies an outcome to the record's recipients and says what follows.
/// An attempt is counted when some recipient's attempts grew. An `Ack`
/// leaves `accepted_reply` (the relay's reply to the message) as each
/// newly delivered recipient's last reply.
pub(super) fn settle(
    record: &mut Record,
    outcome: Outcome,
    accepted_reply: &str,
    now: u64,
) -> Next {
    let mut rcpts = outcome.rcpts_after(record, now);
    if matches!(outcome, Outcome::Ack) {
        for (r, was) in rcpts.iter_mut().zip(record.rcpts_full()) {
            if was.state == RcptState::Pending {
                r.last_reply = accepted_reply.to_string();
            }
        }
    }
    let next = match outcome {
        Outcome::Postpone { due_ms, error } => return Next::Postpone { due_ms, error },
        Outcome::Ack => Next::Finish(ended(&rcpts, Finish::Delivered), String::new()),
        Outcome::Dead { reason } => Next::Finish(ended(&rcpts, Finish::Dead), reason),
        Outcome::Retry { due_ms, error } => Next::Retry { due_ms, error },
        Outcome::Split { due_ms, error, .. } => match finish_of(&rcpts) {
            Some(f) => Next::Finish(f, error),
            None => Next::Retry { due_ms, error },
        },
    };
    let before: u32 = record.rcpts_full().iter().map(|r| r.attempts).sum();
    if rcpts.iter().map(|r| r.attempts).sum::<u32>() > before || rcpts.is_empty() {
        record.attempts += 1;
    }
    record.rcpts = rcpts;
    next
}

/// How a message whose recipients are all finished ended (`default` for
/// one without recipient states).
fn ended(rcpts: &[Rcpt], default: Finish) -> Finish {
    match finish_of(rcpts) {
        Some(f) if !rcpts.is_empty() => f,
        _ => default,
    }
}
