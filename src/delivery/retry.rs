//! "Should this be retried, and when?": pure functions, tested as tables.
//!
//! SMTP 2xx is delivered; 5xx is permanent (dead letter with the reply);
//! 4xx, timeouts, connection, TLS and incomplete replies are transient and
//! retried with exponential backoff and full jitter, until the message is
//! older than `max_age` or has had `max_attempts` attempts.

use std::time::Duration;

use crate::model::{Outcome, Record};

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SendResult {
    /// 2xx after the final `.`.
    Accepted,
    /// 5xx: the relay will never take it.
    Permanent(String),
    /// 4xx other than throttling, timeout, connection or TLS failure.
    Transient(String),
    /// The relay asks everyone to slow down (421, 454, a 4xx with a 4.7.x
    /// status or a rate-limit text): relay-wide, costs no attempt.
    Throttled(String),
    /// 451 without a rate-limit sign (4.3.0: a local problem at the relay,
    /// its disk full): the whole relay backs off as when throttled, and the
    /// message counts an attempt, so a relay that never recovers does not
    /// hold mail forever.
    Deferred(String),
    /// The relay refuses us, not the message (530/535: our credentials):
    /// relay-wide, costs no attempt; the message waits for a fix.
    Refused(String),
    /// Never sent (the relay was unreachable or backing off, or the lease
    /// ended first): not an attempt; tried again soon.
    NotAttempted(String),
}

impl SendResult {
    /// The error of an attempt that failed (None: delivered, or not attempted).
    pub fn error(&self) -> Option<&str> {
        match self {
            SendResult::Accepted | SendResult::NotAttempted(_) => None,
            SendResult::Permanent(e)
            | SendResult::Transient(e)
            | SendResult::Throttled(e)
            | SendResult::Deferred(e)
            | SendResult::Refused(e) => Some(e),
        }
    }

    /// The SMTP reply class for metrics: 2xx, 4xx, 5xx, or `error` when
    /// there was no reply (connection, TLS, timeout). None: not attempted.
    pub fn reply_class(&self) -> Option<&'static str> {
        match self {
            SendResult::Accepted => Some("2xx"),
            SendResult::Permanent(_) => Some("5xx"),
            SendResult::Throttled(_) => Some("4xx"),
            SendResult::Refused(_) => Some("5xx"),
            SendResult::Deferred(_) => Some("4xx"),
            SendResult::Transient(text) => {
                let has_4xx_code = text
                    .as_bytes()
                    .windows(3)
                    .any(|w| w[0] == b'4' && w[1].is_ascii_digit() && w[2].is_ascii_digit());
                Some(if has_4xx_code && !text.starts_with("timed out") {
                    "4xx"
                } else {
                    "error"
                })
            }
            SendResult::NotAttempted(_) => None,
        }
    }
}

/// When a message that was not attempted is due again.
pub const NOT_ATTEMPTED_DELAY: Duration = Duration::from_secs(1);

/// Classifies an SMTP reply: its code, and for 4xx the enhanced status
/// and text (relays say "slow down" in many ways).
pub fn classify(code: u16, text: &str) -> SendResult {
    let reply = format!("{code} {text}");
    match code {
        200..=299 => SendResult::Accepted,
        421 | 454 => SendResult::Throttled(reply),
        400..=499 if is_rate_limit(text) => SendResult::Throttled(reply),
        451 => SendResult::Deferred(reply),
        530 | 534 | 535 | 538 => SendResult::Refused(reply),
        500..=599 if refuses_us(text) => SendResult::Refused(reply),
        500..=599 => SendResult::Permanent(reply),
        _ => SendResult::Transient(reply),
    }
}

/// A 4xx that means "you are sending too fast": a 4.7.x status (policy:
/// Postfix's "4.7.1 ... too much mail", Microsoft's "4.7.500 Server busy")
/// or the words rate limiters use (SES "Maximum sending rate exceeded").
pub fn is_rate_limit(text: &str) -> bool {
    let t = text.trim_start().to_ascii_lowercase();
    t.starts_with("4.7.")
        || [
            "too much mail",
            "too many messages",
            "rate limit",
            "rate exceeded",
            "sending rate",
            "server busy",
            "throttl",
            "slow down",
        ]
        .iter()
        .any(|p| t.contains(p))
}

/// A 5xx about us, not the message: the relay does not take mail from us
/// as we are configured (our EHLO name, relaying not permitted to us).
/// Postfix applies its HELO and client restrictions at RCPT by default, so
/// these come as a reply to RCPT TO and would otherwise bounce the message.
pub fn refuses_us(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "helo command rejected",
        "relay access denied",
        "relaying denied",
        "client host rejected",
        "authentication required",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// Retry settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
}

/// The upper bound of the delay before attempt `attempts + 1`, where
/// `attempts` failed attempts have been made (1 = first retry).
pub fn backoff_ceiling(policy: &RetryPolicy, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(32);
    policy
        .base
        .saturating_mul(1u32 << exp.min(31))
        .min(policy.cap)
}

/// Full jitter: a uniform draw in [0, ceiling], given `unit` in [0, 1).
pub fn backoff(policy: &RetryPolicy, attempts: u32, unit: f64) -> Duration {
    backoff_ceiling(policy, attempts).mul_f64(unit.clamp(0.0, 1.0))
}

/// Turns one attempt's result into the outcome for the spool. `record` is
/// the state before this attempt; `unit` is a random draw in [0, 1).
pub fn decide(
    result: SendResult,
    record: &Record,
    policy: &RetryPolicy,
    now_ms: u64,
    unit: f64,
) -> Outcome {
    let error = match result {
        SendResult::Accepted => return Outcome::Ack,
        SendResult::Permanent(reply) => return Outcome::Dead { reason: reply },
        SendResult::Transient(e) | SendResult::Deferred(e) => e,
        // The relay's trouble, not the message's: no attempt is counted
        // (the relay's backoff paces the next try).
        SendResult::Throttled(reply) | SendResult::Refused(reply) => {
            return Outcome::Postpone {
                due_ms: now_ms + NOT_ATTEMPTED_DELAY.as_millis() as u64,
                error: format!("relay: {reply}"),
            }
        }
        SendResult::NotAttempted(why) => {
            return Outcome::Postpone {
                due_ms: now_ms + NOT_ATTEMPTED_DELAY.as_millis() as u64,
                error: format!("not attempted: {why}"),
            }
        }
    };
    let attempts = record.attempts + 1;
    if attempts >= policy.max_attempts {
        return Outcome::Dead {
            reason: format!("gave up after {attempts} attempts; last error: {error}"),
        };
    }
    // Age counts from when the message first became due (not_before).
    let age = Duration::from_millis(now_ms.saturating_sub(record.first_due_ms));
    if age >= policy.max_age {
        return Outcome::Dead {
            reason: format!(
                "older than max_age ({}s); last error: {error}",
                policy.max_age.as_secs()
            ),
        };
    }
    let delay = backoff(policy, attempts, unit);
    Outcome::Retry {
        due_ms: now_ms + delay.as_millis() as u64,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Lane;

    const P: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(30),
        cap: Duration::from_secs(900),
        max_attempts: 20,
        max_age: Duration::from_secs(86_400),
    };

    fn record(attempts: u32, enqueued_ms: u64) -> Record {
        Record {
            lane: Lane::Normal,
            enqueued_ms,
            due_ms: enqueued_ms,
            first_due_ms: enqueued_ms,
            attempts,
            last_error: String::new(),
            envelope_from: String::new(),
            envelope_to: vec![],
            message_id: String::new(),
            idempotency_key: String::new(),
            body: crate::model::BodyLoc {
                segment: 0,
                offset: 0,
                len: 0,
            },
            client: 0,
        }
    }

    #[test]
    fn backoff_schedule_doubles_to_the_cap() {
        let got: Vec<u64> = (1..=8).map(|a| backoff_ceiling(&P, a).as_secs()).collect();
        assert_eq!(got, vec![30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(backoff_ceiling(&P, 1000).as_secs(), 900);
        assert_eq!(backoff(&P, 2, 0.5).as_secs(), 30);
        assert_eq!(backoff(&P, 2, 0.0).as_secs(), 0);
    }

    #[test]
    fn reply_codes() {
        let cases = [
            (250, "x", "accepted"),
            (421, "x", "throttled"),
            (451, "4.3.0 try again later", "deferred"),
            (451, "4.7.1 too many connections, slow down", "throttled"),
            (454, "x", "throttled"),
            (450, "4.2.0 mailbox busy", "transient"),
            (452, "4.5.3 too many recipients", "transient"),
            // Rate limits, as Postfix, Microsoft and SES say them.
            (
                450,
                "4.7.1 <a@b.c>: Recipient address rejected: too much mail",
                "throttled",
            ),
            (
                450,
                "4.7.500 Server busy. Please try again later",
                "throttled",
            ),
            (
                454,
                "Throttling failure: Maximum sending rate exceeded.",
                "throttled",
            ),
            (452, "4.3.1 sending rate limit reached", "throttled"),
            (535, "5.7.8 Authentication credentials invalid", "refused"),
            (530, "5.7.0 Authentication required", "refused"),
            (
                504,
                "5.5.2 <vm>: Helo command rejected: need fully-qualified hostname",
                "refused",
            ),
            (554, "5.7.1 <u@example.org>: Relay access denied", "refused"),
            (
                550,
                "5.1.1 <u@example.org>: Recipient address rejected",
                "permanent",
            ),
            (550, "x", "permanent"),
            (554, "x", "permanent"),
        ];
        for (code, text, want) in cases {
            let got = match classify(code, text) {
                SendResult::Accepted => "accepted",
                SendResult::Throttled(_) => "throttled",
                SendResult::Refused(_) => "refused",
                SendResult::Deferred(_) => "deferred",
                SendResult::Transient(_) => "transient",
                SendResult::Permanent(_) => "permanent",
                SendResult::NotAttempted(_) => "not attempted",
            };
            assert_eq!(got, want, "{code} {text}");
        }
    }

    #[test]
    fn outcomes() {
        let now = 10_000_000;
        assert_eq!(
            decide(SendResult::Accepted, &record(0, now), &P, now, 0.5),
            Outcome::Ack
        );
        assert!(matches!(
            decide(SendResult::Permanent("550 no".into()), &record(0, now), &P, now, 0.5),
            Outcome::Dead { reason } if reason == "550 no"
        ));
        assert!(matches!(
            decide(SendResult::Transient("451".into()), &record(0, now), &P, now, 1.0),
            Outcome::Retry { due_ms, .. } if due_ms == now + 30_000
        ));
        // the relay throttling or refusing us: no attempt counted either
        for r in [
            SendResult::Throttled("450 4.7.1 too much mail".into()),
            SendResult::Refused("535 5.7.8".into()),
        ] {
            assert!(matches!(
                decide(r, &record(19, now), &P, now, 0.5),
                Outcome::Postpone { due_ms, .. } if due_ms == now + 1000
            ));
        }
        // not attempted: no attempt counted, due again soon
        assert_eq!(
            decide(
                SendResult::NotAttempted("the lease ended".into()),
                &record(19, now),
                &P,
                now,
                0.5
            ),
            Outcome::Postpone {
                due_ms: now + 1000,
                error: "not attempted: the lease ended".into()
            }
        );
        // the 20th failed attempt is the last
        assert!(matches!(
            decide(
                SendResult::Transient("451".into()),
                &record(19, now),
                &P,
                now,
                0.5
            ),
            Outcome::Dead { .. }
        ));
        // too old
        assert!(matches!(
            decide(
                SendResult::Transient("timeout".into()),
                &record(1, 0),
                &P,
                86_400_000,
                0.5
            ),
            Outcome::Dead { .. }
        ));
        // a future not_before does not count as age
        let mut scheduled = record(0, 0);
        scheduled.due_ms = 86_400_000;
        scheduled.first_due_ms = 86_400_000;
        assert!(matches!(
            decide(
                SendResult::Transient("timeout".into()),
                &scheduled,
                &P,
                86_400_001,
                0.5
            ),
            Outcome::Retry { .. }
        ));
    }
}
