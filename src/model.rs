//! The core's own types: what the API hands to the store and what the store
//! hands to delivery. Proto types stop at `api`; sled types stop at `store`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Priority lane. Lower index = higher priority.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, bincode::Encode, bincode::Decode,
)]
pub enum Lane {
    Transactional,
    Normal,
    Bulk,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Transactional, Lane::Normal, Lane::Bulk];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: u8) -> Option<Lane> {
        Lane::ALL.get(usize::from(i)).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Lane::Transactional => "transactional",
            Lane::Normal => "normal",
            Lane::Bulk => "bulk",
        }
    }

    pub fn parse(s: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// A message id: the enqueue time in milliseconds in the high 44 bits and a
/// sequence number in the low 20 bits. Ids grow with enqueue order, so the
/// oldest queued message is the first key of the message tree, and the
/// enqueue time can be read off the id. Shown as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl MessageId {
    pub const SEQ_BITS: u32 = 20;

    /// The next id after `last` at wall-clock time `now_ms`: monotonic even
    /// if the clock steps backwards.
    pub fn next(last: MessageId, now_ms: u64) -> MessageId {
        MessageId((now_ms << Self::SEQ_BITS).max(last.0 + 1))
    }

    pub fn enqueued_ms(self) -> u64 {
        self.0 >> Self::SEQ_BITS
    }

    pub fn parse(s: &str) -> Option<MessageId> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(MessageId)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A validated message, built once at enqueue, not yet stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub lane: Lane,
    /// The From field's address (a raw message: its envelope sender):
    /// what a client's allowed_senders are checked against, with
    /// envelope_from.
    pub sender: String,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    /// The Message-ID header value, without angle brackets.
    pub message_id: String,
    /// The complete RFC 5322 message.
    pub raw: Vec<u8>,
    /// Empty when the caller gave none.
    pub idempotency_key: String,
    /// Wall-clock ms; 0 = due now.
    pub not_before_ms: u64,
    /// The authenticated client's name ("" when auth is off).
    pub client: String,
    /// Wall-clock ms after which it is never sent (the earlier of the
    /// request's deadline and its lane's default); 0 = none.
    pub expires_ms: u64,
    /// Sent even to addresses on the suppression list (a trusted client).
    pub bypass_suppression: bool,
    /// How many of `envelope_to` came from `email.to` and `email.cc` (the
    /// rest from `email.bcc`); None: from `raw.envelope_to`. For naming a
    /// recipient's field in errors.
    pub rcpt_fields: Option<(usize, usize)>,
    /// Recipients taken out of the envelope at intake because they are on
    /// the suppression list: (address, reason, since ms). Not stored but
    /// as their `suppressed` events.
    pub suppressed: Vec<(String, String, u64)>,
}

impl NewMessage {
    /// The request field recipient `i` came from (`email.cc[0]`).
    pub fn rcpt_field(&self, i: usize) -> String {
        match self.rcpt_fields {
            None => format!("raw.envelope_to[{i}]"),
            Some((to, _)) if i < to => format!("email.to[{i}]"),
            Some((to, cc)) if i < to + cc => format!("email.cc[{}]", i - to),
            Some((to, cc)) => format!("email.bcc[{}]", i - to - cc),
        }
    }
}

/// A queued message's index entry, as stored in sled. The body lives in a
/// segment file (`segments`), at `body`.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Record {
    pub lane: Lane,
    pub enqueued_ms: u64,
    /// When the message is due (wall-clock ms). Also part of its due key.
    pub due_ms: u64,
    /// When the message first became due: enqueue time or not_before.
    /// `max_age` counts from here.
    pub first_due_ms: u64,
    pub attempts: u32,
    pub last_error: String,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub message_id: String,
    pub idempotency_key: String,
    pub body: BodyLoc,
    /// The client that enqueued it (its slot in the spool's client
    /// registry; 0 = no client: auth off, or written before format 2).
    pub client: u16,
    /// After this wall-clock ms no recipient is sent to (0 = no deadline).
    pub expires_ms: u64,
    /// Each recipient's state, in `envelope_to` order (same length).
    pub rcpts: Vec<Rcpt>,
    /// Sent even to addresses on the suppression list.
    pub bypass_suppression: bool,
}

impl Record {
    /// The indexes (in `envelope_to`) of the recipients still pending.
    pub fn pending(&self) -> Vec<usize> {
        (0..self.envelope_to.len())
            .filter(|&i| self.rcpt(i).state == RcptState::Pending)
            .collect()
    }

    /// Recipient `i`'s state (pending, as a fresh one, if a record lacks it).
    pub fn rcpt(&self, i: usize) -> Rcpt {
        self.rcpts
            .get(i)
            .cloned()
            .unwrap_or_else(|| Rcpt::pending(self.attempts))
    }

    /// Every recipient's state, one per address.
    pub fn rcpts_full(&self) -> Vec<Rcpt> {
        (0..self.envelope_to.len()).map(|i| self.rcpt(i)).collect()
    }
}

/// Where one recipient of a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum RcptState {
    Pending,
    Delivered,
    /// Refused for good (a 5xx, or too many attempts).
    Bounced,
    /// On the suppression list when its turn came: never sent.
    Suppressed,
    /// Past the message's deadline: never sent.
    Expired,
    /// The message was cancelled before it reached this recipient.
    Cancelled,
}

impl RcptState {
    pub fn name(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Bounced => "bounced",
            RcptState::Suppressed => "suppressed",
            RcptState::Expired => "expired",
            RcptState::Cancelled => "cancelled",
        }
    }
}

/// One recipient's state: small, one per address in the record.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Rcpt {
    pub state: RcptState,
    /// Attempts that reached this recipient's RCPT TO (or its DATA).
    pub attempts: u32,
    /// The last reply about it ("" before any).
    pub last_reply: String,
    /// The class of `last_reply` when it was not a success.
    pub class: Option<BounceClass>,
    /// When it stopped being pending (0 while pending).
    pub finished_ms: u64,
}

impl Rcpt {
    pub fn pending(attempts: u32) -> Rcpt {
        Rcpt {
            state: RcptState::Pending,
            attempts,
            last_reply: String::new(),
            class: None,
            finished_ms: 0,
        }
    }

    /// Finishes it as `state` at `now`, with the reply that decided it.
    pub fn finish(&mut self, state: RcptState, reply: &str, now: u64) {
        self.state = state;
        self.last_reply = reply.to_string();
        self.finished_ms = now;
    }
}

/// How a message ended, from its recipients' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Every recipient delivered.
    Delivered,
    /// Some delivered, the others not.
    Partial,
    /// None delivered, some bounced (or suppressed while it waited).
    Dead,
    /// None delivered and none bounced: its deadline passed.
    Expired,
}

/// How a message with these recipients ended (None: some are pending).
/// An empty list (a record from before recipients had states) was one
/// unit: delivered.
pub fn finish_of(rcpts: &[Rcpt]) -> Option<Finish> {
    if rcpts.iter().any(|r| r.state == RcptState::Pending) {
        return None;
    }
    let delivered = rcpts
        .iter()
        .filter(|r| r.state == RcptState::Delivered)
        .count();
    Some(if delivered == rcpts.len() {
        Finish::Delivered
    } else if delivered > 0 {
        Finish::Partial
    } else if rcpts.iter().any(|r| r.state == RcptState::Expired)
        && !rcpts.iter().any(|r| r.state == RcptState::Bounced)
    {
        Finish::Expired
    } else {
        Finish::Dead
    })
}

/// How a delivery attempt to a recipient failed (the classifier is
/// `delivery::bounce`; the class is stored with the recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum BounceClass {
    /// The mailbox does not exist (or is disabled).
    BadMailbox,
    /// The domain does not exist or cannot receive mail.
    BadDomain,
    MailboxFull,
    MessageTooLarge,
    /// Refused for spam, content, reputation, DMARC.
    Policy,
    /// The relay refuses our credentials or our right to relay.
    RelayAuth,
    /// "Slow down".
    Throttled,
    /// Any other temporary failure (4xx, a connection or TLS failure).
    Temporary,
    /// Any other permanent failure.
    Other,
}

impl BounceClass {
    pub const ALL: [BounceClass; 9] = [
        BounceClass::BadMailbox,
        BounceClass::BadDomain,
        BounceClass::MailboxFull,
        BounceClass::MessageTooLarge,
        BounceClass::Policy,
        BounceClass::RelayAuth,
        BounceClass::Throttled,
        BounceClass::Temporary,
        BounceClass::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BounceClass::BadMailbox => "bad_mailbox",
            BounceClass::BadDomain => "bad_domain",
            BounceClass::MailboxFull => "mailbox_full",
            BounceClass::MessageTooLarge => "message_too_large",
            BounceClass::Policy => "policy",
            BounceClass::RelayAuth => "relay_auth",
            BounceClass::Throttled => "throttled",
            BounceClass::Temporary => "temporary",
            BounceClass::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<BounceClass> {
        BounceClass::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// Where one body lives: a segment file, the offset of its record, the
/// body's length (the record adds a header; `spool::segments` knows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct BodyLoc {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

/// A leased message: its index entry and its RFC 5322 bytes.
#[derive(Debug, Clone)]
pub struct Leased {
    pub id: MessageId,
    pub record: Record,
    pub raw: Vec<u8>,
}

/// A dead letter: the record, its bytes (copied out of the segment so that
/// dead letters never pin a segment), and why it died.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct DeadRecord {
    pub record: Record,
    pub raw: Vec<u8>,
    pub died_ms: u64,
    pub reason: String,
}

/// What is kept of a delivered message for the retention window.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct DeliveredRecord {
    pub lane: Lane,
    pub enqueued_ms: u64,
    pub delivered_ms: u64,
    pub attempts: u32,
    pub message_id: String,
    /// Its recipients and their final states (empty: written before
    /// recipients had states; all delivered).
    pub envelope_to: Vec<String>,
    pub rcpts: Vec<Rcpt>,
    /// The client that enqueued it (its slot; 0 = none or unknown).
    pub client: u16,
}

/// The wall clock in Unix milliseconds, as the system says it.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix milliseconds as `2025-11-25 19:01:02 UTC`.
pub fn utc_time(unix_ms: i64) -> String {
    let (y, m, d, sod) = civil(unix_ms);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Unix milliseconds as RFC 3339 in UTC: `2025-11-25T19:01:02.345Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    let (y, m, d, sod) = civil(unix_ms);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        unix_ms.rem_euclid(1000)
    )
}

/// (year, month, day, second of the day) of Unix milliseconds, in UTC.
fn civil(unix_ms: i64) -> (i64, i64, i64, i64) {
    let secs = unix_ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d, sod)
}

/// mailspool's clock: Unix milliseconds that never go backwards.
///
/// Due times, ids and expiries are persisted in Unix ms, so a wall clock
/// that jumps back would leave every queued message "in the future" (a
/// stall as long as the jump) and one that jumps forward would make them
/// all due at once. So the clock is anchored once, at
/// `max(wall clock, the highest time the spool has seen)`, and then advances
/// with the monotonic clock; a jump of the wall clock while running changes
/// nothing, and after a restart the spool's high-water mark keeps time from
/// going backwards.
pub fn now_ms() -> u64 {
    let (anchor_ms, anchor) = *CLOCK.get_or_init(|| (wall_ms(), std::time::Instant::now()));
    anchor_ms + anchor.elapsed().as_millis() as u64
}

static CLOCK: std::sync::OnceLock<(u64, std::time::Instant)> = std::sync::OnceLock::new();

/// Anchors the clock no earlier than `high_water_ms` (the store calls this
/// at open with the time it last persisted). Returns the anchor in effect:
/// the first anchor wins for the life of the process.
pub fn anchor_clock(high_water_ms: u64) -> u64 {
    let (anchor_ms, _) =
        *CLOCK.get_or_init(|| (wall_ms().max(high_water_ms), std::time::Instant::now()));
    anchor_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_goes_backwards_and_respects_the_high_water_mark() {
        let a = now_ms();
        let b = now_ms();
        assert!(b >= a);
        // Anchored already (first use wins); a later, higher mark cannot move it back.
        assert!(anchor_clock(0) <= a);
        assert!(now_ms() >= b);
        assert!(
            wall_ms().abs_diff(now_ms()) < 60_000,
            "anchored near the wall clock in tests"
        );
    }

    #[test]
    fn ids_are_monotonic_and_carry_time() {
        let a = MessageId::next(MessageId(0), 1_000);
        assert_eq!(a.enqueued_ms(), 1_000);
        let b = MessageId::next(a, 1_000);
        assert!(b > a);
        // clock steps back: still increasing
        let c = MessageId::next(b, 500);
        assert!(c > b);
        assert_eq!(MessageId::parse(&c.to_string()), Some(c));
        assert_eq!(MessageId::parse("xyz"), None);
        assert_eq!(MessageId::parse("000000000000000g"), None);
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Parses `90s`, `10m`, `2h`, `7d` or plain seconds (`30`) into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "`{s}` is not a duration: use e.g. 90s, 10m, 2h, 7d or seconds"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 90s, 10m, 2h, 7d or seconds"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too long a duration"))
}

/// How a lease ended for one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The relay accepted it (2xx): remove it, remember it was delivered.
    Ack,
    /// Transient failure: try again at `due_ms`.
    Retry { due_ms: u64, error: String },
    /// Permanent failure, too old or too many attempts.
    Dead { reason: String },
    /// Not attempted: due again at `due_ms`, no attempt counted.
    Postpone { due_ms: u64, error: String },
    /// The recipients had different fates: `rcpts` is every recipient's
    /// new state. Due again at `due_ms` while any is pending (the attempt
    /// counted), else finished as `model::finish_of` says, `error` its
    /// reason.
    Split {
        rcpts: Vec<Rcpt>,
        due_ms: u64,
        error: String,
    },
}

impl Outcome {
    /// The recipients' states after this outcome: `Ack`, `Dead` and
    /// `Retry` speak for every pending recipient alike (an attempt each),
    /// `Split` gives each its own, `Postpone` changes none.
    pub fn rcpts_after(&self, record: &Record, now: u64) -> Vec<Rcpt> {
        let mut rcpts = record.rcpts_full();
        let (state, reply) = match self {
            Outcome::Postpone { .. } => return rcpts,
            Outcome::Split { rcpts: given, .. } if given.len() == rcpts.len() => {
                return given.clone()
            }
            Outcome::Split { .. } => return rcpts,
            Outcome::Ack => (RcptState::Delivered, ""),
            Outcome::Dead { reason } => (RcptState::Bounced, reason.as_str()),
            Outcome::Retry { error, .. } => (RcptState::Pending, error.as_str()),
        };
        for r in rcpts.iter_mut().filter(|r| r.state == RcptState::Pending) {
            r.attempts += 1;
            r.last_reply = reply.to_string();
            if state == RcptState::Delivered {
                r.class = None;
            }
            if state != RcptState::Pending {
                r.finish(state, reply, now);
            }
        }
        rcpts
    }
}

/// How a lease ended for one message, as the spool records it: the
/// outcome, and what its events tell of the attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: MessageId,
    pub outcome: Outcome,
    /// The relay the attempt went to ("" when it was not sent).
    pub relay: String,
    /// The relay's reply to the message when it took it for every
    /// recipient (`Outcome::Ack`, which carries none itself).
    pub accepted_reply: String,
}

impl From<(MessageId, Outcome)> for Completion {
    fn from((id, outcome): (MessageId, Outcome)) -> Completion {
        Completion {
            id,
            outcome,
            relay: String::new(),
            accepted_reply: String::new(),
        }
    }
}

/// What an event tells (`Event::kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum EventKind {
    Accepted,
    Delivered,
    Deferred,
    Bounced,
    Suppressed,
    Expired,
    Cancelled,
    DeadLettered,
    Requeued,
    Quarantined,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Accepted,
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Bounced,
        EventKind::Suppressed,
        EventKind::Expired,
        EventKind::Cancelled,
        EventKind::DeadLettered,
        EventKind::Requeued,
        EventKind::Quarantined,
    ];

    /// The name in webhooks (`message.<name>`), the CLI and metrics.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Suppressed => "suppressed",
            EventKind::Expired => "expired",
            EventKind::Cancelled => "cancelled",
            EventKind::DeadLettered => "dead_lettered",
            EventKind::Requeued => "requeued",
            EventKind::Quarantined => "quarantined",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One change of a message or of one of its recipients, as the event log
/// keeps it (written in the group commit of the change itself).
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Event {
    pub kind: EventKind,
    pub time_ms: u64,
    /// The message (`MessageId`).
    pub id: u64,
    /// Its client's slot (0: none).
    pub client: u16,
    pub lane: Lane,
    /// The recipient it is about ("" for the whole message).
    pub recipient: String,
    /// That recipient's (or the message's) attempts so far.
    pub attempt: u32,
    /// The reply or reason behind it.
    pub reply: String,
    pub class: Option<BounceClass>,
    /// Deferred: when it is tried again.
    pub next_attempt_ms: u64,
    /// The Message-ID header value.
    pub message_id: String,
    /// Accepted: the request's idempotency key.
    pub idempotency_key: String,
    /// Delivered, deferred, bounced: the relay that answered ("" unknown).
    pub relay: String,
}
