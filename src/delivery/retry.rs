//! "Should this be retried, and when?": pure functions, tested as tables.
//!
//! SMTP 2xx is delivered; 5xx is permanent (dead letter with the reply);
//! 4xx, timeouts, connection, TLS and incomplete replies are transient and
//! retried with exponential backoff and full jitter, until the message is
//! older than `max_age` or has had `max_attempts` attempts.

use std::time::Duration;

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SendResult {
    /// 2xx after the final `.`: the relay's reply ("250 2.0.0 Ok: queued
    /// as …"), told in the delivered event.
    Accepted(String),
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
    /// Past its deadline: never sent; the recipient expires.
    Expired(String),
}

/// What one attempt came to for a message: one result for every pending
/// recipient (the connection, MAIL FROM or the whole transaction decided
/// it), or one each, in `Record::pending` order.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageResult {
    All(SendResult),
    Each(Vec<SendResult>),
}

impl MessageResult {
    pub fn results(&self) -> &[SendResult] {
        match self {
            MessageResult::All(r) => std::slice::from_ref(r),
            MessageResult::Each(rs) => rs,
        }
    }
}

impl SendResult {
    /// The error of an attempt that failed (None: delivered, or not attempted).
    pub fn error(&self) -> Option<&str> {
        match self {
            SendResult::Accepted(_) | SendResult::NotAttempted(_) | SendResult::Expired(_) => None,
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
            SendResult::Accepted(_) => Some("2xx"),
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
            SendResult::NotAttempted(_) | SendResult::Expired(_) => None,
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
        200..=299 => SendResult::Accepted(reply),
        421 | 454 => SendResult::Throttled(reply),
        400..=499 if is_rate_limit(text) => SendResult::Throttled(reply),
        451 => SendResult::Deferred(reply),
        530 | 534 | 535 | 538 => SendResult::Refused(reply),
        500..=599 if refuses_us(text) => SendResult::Refused(reply),
        500..=599 => SendResult::Permanent(reply),
        _ => SendResult::Transient(reply),
    }
}

/// Classifies the reply to one RCPT TO: it speaks for that recipient
/// alone unless it is about the relay or us. A 4.7.x status there is
/// greylisting or a policy deferral of that address ("451 4.7.1 try again
/// later"), a deferral of the recipient; the relay is throttling only when
/// it says so in words, or closes (421).
pub fn classify_rcpt(code: u16, text: &str) -> SendResult {
    match classify(code, text) {
        SendResult::Throttled(reply) if code != 421 && code != 454 && !says_slow_down(text) => {
            SendResult::Transient(reply)
        }
        SendResult::Deferred(reply) => SendResult::Transient(reply),
        other => other,
    }
}

/// A 4xx that means "you are sending too fast": a 4.7.x status (policy:
/// Postfix's "4.7.1 ... too much mail", Microsoft's "4.7.500 Server busy")
/// or the words rate limiters use (SES "Maximum sending rate exceeded").
pub fn is_rate_limit(text: &str) -> bool {
    text.trim_start().starts_with("4.7.") || says_slow_down(text)
}

/// The words rate limiters use.
fn says_slow_down(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
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

/// The defaults, for the tests' tables.
#[cfg(test)]
pub(crate) const TEST_POLICY: RetryPolicy = RetryPolicy {
    base: Duration::from_secs(30),
    cap: Duration::from_secs(900),
    max_attempts: 20,
    max_age: Duration::from_secs(86_400),
};

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = TEST_POLICY;

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
                SendResult::Accepted(_) => "accepted",
                SendResult::Throttled(_) => "throttled",
                SendResult::Refused(_) => "refused",
                SendResult::Deferred(_) => "deferred",
                SendResult::Transient(_) => "transient",
                SendResult::Permanent(_) => "permanent",
                other => unreachable!("{other:?}"),
            };
            assert_eq!(got, want, "{code} {text}");
        }
    }
}
