//! The index values of older format versions and how they decode into
//! today's types (`codec::Versioned`). The types are the model's; how they
//! were stored is the spool's.

use super::codec::{decode_body, DecodeError, Versioned};
use crate::model::{BodyLoc, DeadRecord, DeliveredRecord, Lane, Record};

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

impl From<RecordV1> for Record {
    fn from(r: RecordV1) -> Record {
        Record {
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
            client: 0,
        }
    }
}

impl Versioned for Record {
    fn decode_v1(body: &[u8]) -> Result<Self, DecodeError> {
        decode_body::<RecordV1>(body).map(Record::from)
    }
}

#[derive(bincode::Decode)]
struct DeadRecordV1 {
    record: RecordV1,
    raw: Vec<u8>,
    died_ms: u64,
    reason: String,
}

impl Versioned for DeadRecord {
    fn decode_v1(body: &[u8]) -> Result<Self, DecodeError> {
        decode_body::<DeadRecordV1>(body).map(|d| DeadRecord {
            record: d.record.into(),
            raw: d.raw,
            died_ms: d.died_ms,
            reason: d.reason,
        })
    }
}

impl Versioned for DeliveredRecord {}
