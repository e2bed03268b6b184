//! The event log: every change of a message or recipient, written in the
//! same group commit as the change, numbered by a sequence that only grows,
//! also across restarts (`f` → `EventLogState`, in the same batch). A
//! group's events are one value (`E <first seq:8>` → `EventBlock`): one
//! key per group, not per event, keeps the log's cost to sled (bytes
//! written, memory) small beside the messages'. Readers see an event once the fsync that covers it
//! is done (`visible`): an event exists only if its change is durable.
//! Groups that are not fsynced for their own sake (outcomes) are covered by
//! a sync the committer asks for within `EVENT_SYNC_DELAY`. Retention by
//! age and by size, trimmed oldest first by the committer when idle; the
//! log never counts against admission.

use super::commit::*;
use super::*;
use crate::model::{Event, EventKind};

/// Events of groups that were not fsynced wait at most about this long
/// for a sync that makes them visible.
pub(super) const EVENT_SYNC_DELAY: Duration = Duration::from_millis(50);

/// Events removed per trimming batch (whole blocks: about this many).
const TRIM_BATCH: u64 = 10_000;

pub(super) const STATE_KEY: &[u8] = b"f";

/// The block whose first event is `seq`.
pub(super) fn key(seq: u64) -> [u8; 9] {
    let mut k = [b'E'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix of events stored one a key (`e <seq:8>` → `Event`), as
/// the first binary with events wrote them: gathered into blocks at open
/// (`migrate_singles`).
pub(super) const SINGLE_PREFIX: u8 = b'e';

/// The events of one group, in sequence order from the block's key.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct EventBlock {
    pub events: Vec<Event>,
}

/// Where a reader (a webhook endpoint, by name) has got to: `h<name>`.
pub(super) fn cursor_key(reader: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + reader.len());
    k.push(b'h');
    k.extend_from_slice(reader.as_bytes());
    k
}

fn seq_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}

/// The log's extent, persisted with every group that adds events.
#[derive(Debug, Clone, Copy, Default, PartialEq, bincode::Encode, bincode::Decode)]
pub struct EventLogState {
    /// The sequence the next event gets (sequences start at 1).
    pub next_seq: u64,
    /// The oldest event kept (= next_seq when none is).
    pub first_seq: u64,
    pub count: u64,
    /// Encoded bytes of the events kept.
    pub bytes: u64,
}

impl codec::Versioned for EventLogState {}
impl codec::Versioned for Event {}
impl codec::Versioned for EventBlock {}

/// How long, and how much, the log keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRetention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for EventRetention {
    fn default() -> Self {
        EventRetention {
            max_age: Duration::from_secs(3 * 86_400),
            max_bytes: 256 << 20,
        }
    }
}

/// What QueueStats shows of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EventLogFigures {
    pub first_seq: u64,
    /// The newest event readers may see (0: none yet).
    pub last_seq: u64,
    pub count: u64,
    pub bytes: u64,
}

/// Why a read of the log cannot start where asked.
#[derive(Debug, PartialEq)]
pub struct CursorTooOld {
    /// The oldest sequence still kept.
    pub oldest: u64,
}

pub(super) fn load(tree: &sled::Tree) -> Result<EventLogState, StoreError> {
    if migrate_singles(tree)? {
        let state = rebuild(tree);
        tree.insert(STATE_KEY, codec::encode(&state))?;
        return Ok(state);
    }
    Ok(match tree.get(STATE_KEY)? {
        Some(v) => codec::decode::<EventLogState>(&v).unwrap_or_else(|e| {
            // Rebuilt from the keys: the numbering goes on after the last.
            tracing::warn!(error = %e, "event log state undecodable; rebuilt from the log");
            rebuild(tree)
        }),
        None => rebuild(tree),
    })
}

fn rebuild(tree: &sled::Tree) -> EventLogState {
    let mut s = EventLogState {
        next_seq: 1,
        first_seq: 1,
        ..Default::default()
    };
    let mut first = None;
    for item in tree.scan_prefix(b"E").flatten() {
        let (k, v) = item;
        let Some(seq) = seq_of(&k) else { continue };
        // An undecodable block still holds its key's sequence.
        let n = codec::decode::<EventBlock>(&v).map_or(1, |b| b.events.len() as u64);
        first.get_or_insert(seq);
        s.next_seq = seq + n;
        s.count += n;
        s.bytes += v.len() as u64;
    }
    s.first_seq = first.unwrap_or(s.next_seq);
    s
}

/// Events a block gets when single events are gathered.
const MIGRATED_BLOCK: usize = 1000;

/// Gathers events stored one a key into blocks of consecutive sequences,
/// in one batch; whether there were any.
fn migrate_singles(tree: &sled::Tree) -> Result<bool, StoreError> {
    fn put(batch: &mut sled::Batch, (first, events): (u64, Vec<Event>)) {
        batch.insert(&key(first), codec::encode(&EventBlock { events }));
    }
    let mut batch = sled::Batch::default();
    let mut block: Option<(u64, Vec<Event>)> = None;
    let mut seen = 0u64;
    let mut moved = 0u64;
    for item in tree.scan_prefix([SINGLE_PREFIX]) {
        let (k, v) = item?;
        seen += 1;
        batch.remove(k.clone());
        let (Some(seq), Ok(e)) = (seq_of(&k), codec::decode::<Event>(&v)) else {
            continue;
        };
        moved += 1;
        match &mut block {
            Some((first, events))
                if *first + events.len() as u64 == seq && events.len() < MIGRATED_BLOCK =>
            {
                events.push(e)
            }
            _ => {
                if let Some(full) = block.replace((seq, vec![e])) {
                    put(&mut batch, full);
                }
            }
        }
    }
    if seen == 0 {
        return Ok(false);
    }
    if let Some(last) = block {
        put(&mut batch, last);
    }
    tree.apply_batch(batch)?;
    tracing::info!(
        events = moved,
        "event log: events stored one a key gathered into blocks"
    );
    Ok(true)
}

impl Store {
    /// Up to `max` visible events after `after` (0: from the oldest kept),
    /// with their sequence numbers, oldest first.
    pub fn events_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, Event)>, EventReadError> {
        let state = *self.shared.event_state.lock().expect("event state");
        if after != 0 && after + 1 < state.first_seq {
            return Err(EventReadError::TooOld(CursorTooOld {
                oldest: state.first_seq,
            }));
        }
        let visible = *self.shared.events_visible.borrow();
        let start = after + 1;
        let tree = &self.shared.tree;
        // From the block that holds `start`: the last one that begins at
        // or before it.
        let from = match tree.range(key(0)..=key(start)).next_back() {
            Some(item) => item.map_err(|e| EventReadError::Store(e.into()))?.0,
            None => key(start).as_slice().into(),
        };
        let mut out = Vec::new();
        for item in tree.range(from..sled::IVec::from(&key(visible + 1))) {
            let (k, v) = item.map_err(|e| EventReadError::Store(e.into()))?;
            let (Some(first), Ok(block)) = (seq_of(&k), codec::decode::<EventBlock>(&v)) else {
                continue;
            };
            for (seq, e) in (first..).zip(block.events) {
                if seq > visible || out.len() == max {
                    return Ok(out);
                }
                if seq >= start {
                    out.push((seq, e));
                }
            }
        }
        Ok(out)
    }

    /// The visible events of message `id`, oldest first, searched from the
    /// newest back to `since_ms` (its enqueue time; events are in time
    /// order but for clock steps, so a minute's margin) or through at most
    /// `budget` events. The flag says whether the search reached back to
    /// `since_ms` (false: older events of it may exist, not searched).
    pub fn events_of(
        &self,
        id: u64,
        since_ms: u64,
        budget: usize,
    ) -> Result<(Vec<(u64, Event)>, bool), StoreError> {
        const MARGIN_MS: u64 = 60_000;
        let visible = *self.shared.events_visible.borrow();
        let mut out = Vec::new();
        let mut scanned = 0usize;
        let end = sled::IVec::from(&key(visible + 1));
        for item in self.shared.tree.range(sled::IVec::from(&key(0))..end).rev() {
            let (k, v) = item?;
            let (Some(first), Ok(block)) = (seq_of(&k), codec::decode::<EventBlock>(&v)) else {
                continue;
            };
            let newest = block.events.last().map_or(0, |e| e.time_ms);
            scanned += block.events.len();
            for (i, e) in block.events.into_iter().enumerate().rev() {
                let seq = first + i as u64;
                if e.id == id && seq <= visible {
                    out.push((seq, e));
                }
            }
            if newest + MARGIN_MS < since_ms {
                out.reverse();
                return Ok((out, true));
            }
            if scanned >= budget {
                out.reverse();
                return Ok((out, false));
            }
        }
        out.reverse();
        Ok((out, true))
    }

    /// Waits until an event after `seq` is visible (or the spool closes).
    pub async fn wait_events_after(&self, seq: u64) {
        let mut rx = self.shared.events_visible.subscribe();
        let _ = rx.wait_for(|&v| v > seq).await;
    }

    /// The last event a reader was given (`AdminOp::SetReaderCursor`);
    /// None for a reader the spool has not seen.
    pub fn reader_cursor(&self, reader: &str) -> Result<Option<u64>, StoreError> {
        let v = self.shared.tree.get(cursor_key(reader))?;
        Ok(v.and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?))))
    }

    pub fn event_figures(&self) -> EventLogFigures {
        let s = *self.shared.event_state.lock().expect("event state");
        EventLogFigures {
            first_seq: s.first_seq,
            last_seq: *self.shared.events_visible.borrow(),
            count: s.count,
            bytes: s.bytes,
        }
    }
}

/// Why events could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventReadError {
    #[error("the cursor is older than the log keeps (the oldest event is {})", .0.oldest)]
    TooOld(CursorTooOld),
    #[error("{0}")]
    Store(StoreError),
}

/// What the events of one outcome tell of its attempt.
pub(super) struct Attempt<'a> {
    /// The relay it went to ("" when it was not sent).
    pub relay: &'a str,
    /// When the message is due again (0: it is not).
    pub next_ms: u64,
}

impl Committer {
    /// An event of `record`'s message, to be written with this group.
    pub(super) fn event(&self, kind: EventKind, id: MessageId, record: &Record, now: u64) -> Event {
        Event {
            kind,
            time_ms: now,
            id: id.0,
            client: record.client,
            lane: record.lane,
            recipient: String::new(),
            attempt: record.attempts,
            reply: String::new(),
            class: None,
            next_attempt_ms: 0,
            message_id: record.message_id.clone(),
            idempotency_key: String::new(),
            relay: String::new(),
        }
    }

    /// The recipients' events of an outcome: each that finished, and each
    /// still pending whose attempt failed (deferred, with its next try).
    /// The relay is named where this attempt reached the recipient.
    pub(super) fn recipient_events(
        &self,
        id: MessageId,
        record: &Record,
        before: &[(RcptState, u32)],
        attempt: Attempt,
        now: u64,
        g: &mut Group,
    ) {
        for (i, r) in record.rcpts.iter().enumerate() {
            let Some(&(was, attempts)) = before.get(i) else {
                continue;
            };
            if was != RcptState::Pending {
                continue;
            }
            let kind = match r.state {
                RcptState::Delivered => EventKind::Delivered,
                RcptState::Bounced => EventKind::Bounced,
                RcptState::Suppressed => EventKind::Suppressed,
                RcptState::Expired => EventKind::Expired,
                RcptState::Cancelled => EventKind::Cancelled,
                RcptState::Pending if r.attempts > attempts => EventKind::Deferred,
                RcptState::Pending => continue,
            };
            let mut e = self.event(kind, id, record, now);
            e.recipient = record.envelope_to[i].clone();
            e.attempt = r.attempts;
            e.reply = r.last_reply.clone();
            e.class = r.class;
            if r.attempts > attempts {
                e.relay = attempt.relay.to_string();
            }
            if kind == EventKind::Deferred {
                e.next_attempt_ms = attempt.next_ms;
            }
            g.events.push(e);
        }
    }

    /// Numbers this group's events and puts them, and the log's state, in
    /// its batch. Returns the last sequence written (0: none).
    pub(super) fn write_events(&mut self, g: &mut Group) -> u64 {
        if g.events.is_empty() {
            return 0;
        }
        let events = std::mem::take(&mut g.events);
        let n = events.len() as u64;
        let v = codec::encode(&EventBlock { events });
        self.events.bytes += v.len() as u64;
        self.events.count += n;
        g.batch.insert(&key(self.events.next_seq), v);
        self.events.next_seq += n;
        g.batch.insert(STATE_KEY, codec::encode(&self.events));
        self.events.next_seq - 1
    }

    /// Removes the oldest events while the log is over its size or holds
    /// events older than its age, one batch a call; whether it removed any.
    pub(super) fn trim_events(&mut self, now: u64) -> bool {
        let limits = self.options.event_retention;
        let oldest_kept = now.saturating_sub(limits.max_age.as_millis() as u64);
        let mut batch = sled::Batch::default();
        let mut state = self.events;
        let mut n = 0;
        for item in self
            .shared
            .tree
            .range(key(state.first_seq)..key(state.next_seq))
        {
            let Ok((k, v)) = item else { break };
            // A block goes whole: when its newest event is past the age,
            // or while the log is over its size.
            let block = codec::decode::<EventBlock>(&v).ok();
            let newest = block.as_ref().and_then(|b| b.events.last());
            let old = newest.is_none_or(|e| e.time_ms < oldest_kept);
            if !old && state.bytes <= limits.max_bytes {
                break;
            }
            let len = block.map_or(1, |b| b.events.len() as u64);
            batch.remove(k.clone());
            state.count = state.count.saturating_sub(len);
            state.bytes = state.bytes.saturating_sub(v.len() as u64);
            state.first_seq = seq_of(&k).map_or(state.first_seq, |s| s + len);
            n += len;
            if n >= TRIM_BATCH {
                break;
            }
        }
        if n == 0 {
            return false;
        }
        if state.count == 0 {
            state.first_seq = state.next_seq;
        }
        batch.insert(STATE_KEY, codec::encode(&state));
        if let Err(e) = self.shared.tree.apply_batch(batch) {
            tracing::warn!(error = %e, "trimming the event log failed; will try again");
            return false;
        }
        self.events = state;
        *self.shared.event_state.lock().expect("event state") = state;
        true
    }
}
