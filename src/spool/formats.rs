//! The index values of older format versions and how they decode into
//! today's types (`codec::Versioned`). The types are the model's; how they
//! were stored is the spool's.
//!
//! Format 1 → 2 added `Record::client`; 2 → 3 added `Record::expires_ms`
//! and `Record::rcpts` (every recipient pending with the message's
//! attempts), and the recipients to `DeliveredRecord` (empty: one unit,
//! delivered) and `CancelledRecord`.

use super::codec::{decode_body, DecodeError, Versioned};
use super::types::CancelledRecord;
use crate::model::{BodyLoc, DeadRecord, DeliveredRecord, Lane, Rcpt, Record};

/// `Record` as format version 1 wrote it (no client).
#[derive(bincode::Decode)]
struct RecordV1 {
    lane: Lane,
    enqueued_ms: u64,
    due_ms: u64,
    first_due_ms: u64,
    attempts: u32,
    last_error: String,
    envelope_from: String,
    envelope_to: Vec<String>,
    message_id: String,
    idempotency_key: String,
    body: BodyLoc,
}

/// `Record` as format version 2 wrote it (no deadline, no recipient states).
#[derive(bincode::Decode)]
struct RecordV2 {
    v1: RecordV1,
    client: u16,
}

impl From<RecordV2> for Record {
    fn from(r: RecordV2) -> Record {
        let RecordV2 { v1: r, client } = r;
        Record {
            rcpts: vec![Rcpt::pending(r.attempts); r.envelope_to.len()],
            lane: r.lane,
            enqueued_ms: r.enqueued_ms,
            due_ms: r.due_ms,
            first_due_ms: r.first_due_ms,
            attempts: r.attempts,
            last_error: r.last_error,
            envelope_from: r.envelope_from,
            envelope_to: r.envelope_to,
            message_id: r.message_id,
            idempotency_key: r.idempotency_key,
            body: r.body,
            client,
            expires_ms: 0,
            bypass_suppression: false,
        }
    }
}

fn old_record(version: u8, body: &[u8]) -> Result<Record, DecodeError> {
    match version {
        1 => decode_body::<RecordV1>(body).map(|v1| RecordV2 { v1, client: 0 }.into()),
        _ => decode_body::<RecordV2>(body).map(Record::from),
    }
}

impl Versioned for Record {
    fn decode_old(version: u8, body: &[u8]) -> Result<Self, DecodeError> {
        old_record(version, body)
    }
}

/// `DeadRecord` after its record, in formats 1 and 2.
#[derive(bincode::Decode)]
struct DeadTail {
    raw: Vec<u8>,
    died_ms: u64,
    reason: String,
}

#[derive(bincode::Decode)]
struct DeadRecordV1 {
    record: RecordV1,
    tail: DeadTail,
}

#[derive(bincode::Decode)]
struct DeadRecordV2 {
    record: RecordV2,
    tail: DeadTail,
}

impl Versioned for DeadRecord {
    fn decode_old(version: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let (record, tail) = match version {
            1 => decode_body::<DeadRecordV1>(body).map(|d| {
                (
                    RecordV2 {
                        v1: d.record,
                        client: 0,
                    }
                    .into(),
                    d.tail,
                )
            })?,
            _ => decode_body::<DeadRecordV2>(body).map(|d| (d.record.into(), d.tail))?,
        };
        Ok(DeadRecord {
            record,
            raw: tail.raw,
            died_ms: tail.died_ms,
            reason: tail.reason,
        })
    }
}

/// `DeliveredRecord` as formats 1 and 2 wrote it (no recipients).
#[derive(bincode::Decode)]
struct DeliveredRecordV2 {
    lane: Lane,
    enqueued_ms: u64,
    delivered_ms: u64,
    attempts: u32,
    message_id: String,
}

impl Versioned for DeliveredRecord {
    fn decode_old(_version: u8, body: &[u8]) -> Result<Self, DecodeError> {
        decode_body::<DeliveredRecordV2>(body).map(|d| DeliveredRecord {
            lane: d.lane,
            enqueued_ms: d.enqueued_ms,
            delivered_ms: d.delivered_ms,
            attempts: d.attempts,
            message_id: d.message_id,
            envelope_to: Vec::new(),
            rcpts: Vec::new(),
            client: 0,
        })
    }
}

/// `CancelledRecord` as formats 1 and 2 wrote it (no recipients).
#[derive(bincode::Decode)]
struct CancelledRecordV2 {
    lane: Lane,
    enqueued_ms: u64,
    cancelled_ms: u64,
    reason: String,
    message_id: String,
}

impl Versioned for CancelledRecord {
    fn decode_old(_version: u8, body: &[u8]) -> Result<Self, DecodeError> {
        decode_body::<CancelledRecordV2>(body).map(|c| CancelledRecord {
            lane: c.lane,
            enqueued_ms: c.enqueued_ms,
            cancelled_ms: c.cancelled_ms,
            reason: c.reason,
            message_id: c.message_id,
            envelope_to: Vec::new(),
            rcpts: Vec::new(),
            client: 0,
        })
    }
}
