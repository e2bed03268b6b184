//! The enqueue journal: the segment log as the record of truth for new
//! messages, with sled's index written behind it.
//!
//! An `Append` (one Enqueue or EnqueueBatch) writes its bodies to the
//! active segment, then one journal record (`segments::JOURNAL_ID`) holding
//! each message's index entry ([`Entry`]), in the same positioned write and
//! `sync_data`. Its callers are answered once that sync returns and the sled
//! batch is applied; sled is flushed and fsynced with the next round (the
//! event log's, within `EVENT_SYNC_DELAY`), not before the answer.
//!
//! Every group that journals also writes the replay position (`key::LOG`:
//! the segment and offset just past its records) in its sled batch. sled
//! recovers a prefix of its batches, so after a crash every journal record
//! before the durable position is in the index and every one after it is
//! not: [`scan`] reads the records after it, and the committer indexes them
//! again ([`Committer::index_append`], the same code an Enqueue runs) in
//! one group, fsynced before the spool opens. A message whose index was
//! lost with its delivery is delivered again (at least once, as a lost
//! ack is); an acknowledged one is never lost.
//!
//! A spool without `key::LOG` (written by an older binary) has nothing to
//! replay: its index was durable before every answer.

use std::path::Path;

use super::codec;
use super::commit::{Committer, Group};
use super::key;
use super::segments::{file_name, Segments, HEADER, JOURNAL_ID};
use super::*;
use crate::model::EventKind;

/// One new message's index entry, as its Enqueue made it.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Entry {
    pub id: u64,
    pub enqueued_ms: u64,
    pub body: BodyLoc,
    /// The client's name ("" when auth is off): slots are sled's, and may
    /// be lost with the index.
    pub client: String,
    pub lane: Lane,
    pub not_before_ms: u64,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub message_id: String,
    pub idempotency_key: String,
    pub expires_ms: u64,
    pub bypass_suppression: bool,
    /// Recipients suppressed at intake: (address, reason, since ms).
    pub suppressed: Vec<(String, String, u64)>,
}

impl Entry {
    pub fn new(id: MessageId, now: u64, body: BodyLoc, m: NewMessage) -> Entry {
        Entry {
            id: id.0,
            enqueued_ms: now,
            body,
            client: m.client,
            lane: m.lane,
            not_before_ms: m.not_before_ms,
            envelope_from: m.envelope_from,
            envelope_to: m.envelope_to,
            message_id: m.message_id,
            idempotency_key: m.idempotency_key,
            expires_ms: m.expires_ms,
            bypass_suppression: m.bypass_suppression,
            suppressed: m.suppressed,
        }
    }

    /// When it is first due: its not-before time, or its enqueue.
    pub fn due_ms(&self) -> u64 {
        self.not_before_ms.max(self.enqueued_ms)
    }
}

/// The index entries of one journal record.
#[derive(Debug, Clone, Default, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Journal {
    pub entries: Vec<Entry>,
}

impl codec::Versioned for Journal {}

/// The replay position: `l` → segment (u32 BE) ‖ offset (u64 BE).
pub fn encode_position((segment, offset): (u32, u64)) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&segment.to_be_bytes());
    v[4..].copy_from_slice(&offset.to_be_bytes());
    v
}

pub fn decode_position(v: &[u8]) -> Option<(u32, u64)> {
    let segment = u32::from_be_bytes(v.get(..4)?.try_into().ok()?);
    let offset = u64::from_be_bytes(v.get(4..12)?.try_into().ok()?);
    Some((segment, offset))
}

/// The stored replay position, if this spool journals.
pub fn position(tree: &sled::Tree) -> Result<Option<(u32, u64)>, StoreError> {
    Ok(tree.get(key::LOG)?.and_then(|v| decode_position(&v)))
}

/// The journal entries written after `from`, in order. Each segment is
/// read up to its first record that is incomplete or fails its checksum
/// (a torn tail: never acknowledged); a process never appends to an older
/// process's segment, so nothing acknowledged lies beyond one.
pub fn scan(dir: &Path, from: (u32, u64)) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    for id in Segments::list(dir)?.into_iter().filter(|&id| id >= from.0) {
        // From the position on only: what lies before it is indexed.
        let start = if id == from.0 { from.1 } else { 0 };
        let mut file = std::fs::File::open(dir.join(file_name(id)))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)?;
        let mut at = 0usize;
        while let Some(header) = bytes.get(at..at + HEADER) {
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let Some(record) = bytes.get(at + 8..at + HEADER + len) else {
                break;
            };
            if crc32fast::hash(record) != crc {
                break;
            }
            let rid = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
            if rid == JOURNAL_ID {
                match codec::decode::<Journal>(&record[8..]) {
                    Ok(j) => out.extend(j.entries),
                    Err(e) => {
                        tracing::error!(segment = id, offset = start + at as u64, error = %e, "journal record undecodable; its messages cannot be replayed");
                    }
                }
            }
            at += HEADER + len;
        }
    }
    Ok(out)
}

impl Committer {
    /// Indexes a new message (its body already appended): the record, its
    /// due key, idempotency key, events and counts, in `g`. Run for each
    /// Enqueue and again, at open, for each replayed entry.
    pub(super) fn index_append(&mut self, e: &Entry, client: u16, g: &mut Group) -> Appended {
        let id = MessageId(e.id);
        self.counters.last_id = self.counters.last_id.max(e.id);
        let now = e.enqueued_ms;
        let due_ms = e.due_ms();
        g.segment(e.body.segment, 1);
        g.bodies.push(e.body);
        let record = Record {
            lane: e.lane,
            enqueued_ms: now,
            due_ms,
            first_due_ms: due_ms,
            attempts: 0,
            last_error: String::new(),
            envelope_from: e.envelope_from.clone(),
            message_id: e.message_id.clone(),
            idempotency_key: e.idempotency_key.clone(),
            body: e.body,
            client,
            expires_ms: e.expires_ms,
            bypass_suppression: e.bypass_suppression,
            rcpts: vec![Rcpt::pending(0); e.envelope_to.len()],
            envelope_to: e.envelope_to.clone(),
        };
        let appended = Appended {
            id,
            message_id: record.message_id.clone(),
            duplicate: false,
        };
        if !record.idempotency_key.is_empty() {
            let expires_ms = now + self.options.idempotency_window.as_millis() as u64;
            let entry = IdemEntry {
                id: id.0,
                message_id: record.message_id.clone(),
                expires_ms,
            };
            let idem = key::idem(client, &record.idempotency_key);
            g.batch
                .insert(key::expiry(expires_ms, key::EXPIRY_IDEM, &idem[1..]), &[]);
            g.batch.insert(idem, codec::encode(&entry));
            g.new_keys
                .insert((client, record.idempotency_key.clone()), appended.clone());
        }
        g.batch
            .insert(&key::due(record.lane, client, due_ms, id), &[]);
        g.due_add(due_ms);
        let mut accepted = self.event(EventKind::Accepted, id, &record, now);
        accepted.idempotency_key = record.idempotency_key.clone();
        for (address, reason, since) in &e.suppressed {
            let mut ev = self.event(EventKind::Suppressed, id, &record, now);
            ev.recipient = address.clone();
            ev.reply = format!(
                "suppressed at enqueue: {reason} since {}",
                crate::model::utc_time(*since as i64)
            );
            g.events.push(ev);
        }
        g.events.push(accepted);
        g.batch.insert(&key::message(id), codec::encode(&record));
        self.client_add(client, 1, i64::from(record.body.len), g)
            .enqueued_total += 1;
        self.counters.enqueued_total += 1;
        self.counters.queued[record.lane.index()] += 1;
        self.counters.queued_bytes += u64::from(record.body.len);
        appended
    }

    /// Indexes replayed entries (those not indexed already) in `g`.
    pub(super) fn replay(&mut self, entries: Vec<Entry>, g: &mut Group) -> usize {
        let mut n = 0;
        for e in entries {
            let id = MessageId(e.id);
            let known = [
                key::message(id),
                key::dead(id),
                key::delivered(id),
                key::cancelled(id),
            ]
            .iter()
            .any(|k| self.shared.tree.contains_key(k).unwrap_or(false));
            if known {
                continue;
            }
            let client = self.client_slot(&e.client, g);
            self.index_append(&e, client, g);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let p = (7, 123_456_789);
        assert_eq!(decode_position(&encode_position(p)), Some(p));
        assert_eq!(decode_position(b"short"), None);
    }
}
