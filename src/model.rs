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
}

/// The wall clock in Unix milliseconds, as the system says it.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
}
