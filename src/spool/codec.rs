//! Encoding of everything the store writes as a value.
//!
//! Every value starts with a one-byte format version, then bincode 2
//! (standard configuration). Decoding never panics: bytes that do not decode
//! give a [`DecodeError`], and the store quarantines such records. Replacing
//! bincode means a new version byte here and nowhere else.

use bincode::{Decode, Encode};

/// The format version written by this binary. Version 2 added the
/// client slot to `Record` (and so to `DeadRecord`); version 3 each
/// recipient's state and the deadline to `Record`, the recipients to
/// `DeliveredRecord` and `CancelledRecord`. Values of versions 1 and 2
/// are still read (see [`Versioned`]).
pub const FORMAT_VERSION: u8 = 3;

/// Upper bound on any decoded allocation (a record is at most the maximum
/// message size plus its envelope).
const DECODE_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("empty value")]
    Empty,
    #[error("unknown format version {0} (this binary reads up to {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("undecodable bytes: {0}")]
    Corrupt(String),
}

pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Encoding into a Vec cannot fail for these plain types.
    bincode::encode_into_std_write(value, &mut out, config()).expect("encode into Vec");
    out
}

/// A stored type: how to read it in each format version.
pub trait Versioned: Decode<()> + Sized {
    /// A value written by an older format `version` (1 or 2); by default
    /// the layout is the same.
    fn decode_old(_version: u8, body: &[u8]) -> Result<Self, DecodeError> {
        decode_body(body)
    }
}

pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    match version {
        FORMAT_VERSION => decode_body(body),
        1 | 2 => T::decode_old(version, body),
        v => Err(DecodeError::UnknownVersion(v)),
    }
}

/// Decodes bincode bytes (no version byte), whole and bounded.
pub fn decode_body<T: Decode<()>>(body: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::decode_from_slice(body, config().with_limit::<DECODE_LIMIT>())
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Corrupt(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lane, Record};

    fn record() -> Record {
        Record {
            lane: Lane::Bulk,
            enqueued_ms: 1,
            due_ms: 2,
            first_due_ms: 2,
            attempts: 3,
            last_error: "451 later".into(),
            envelope_from: "a@example.com".into(),
            envelope_to: vec!["b@example.com".into()],
            message_id: "x@y".into(),
            idempotency_key: "k".into(),
            body: crate::model::BodyLoc {
                segment: 1,
                offset: 2,
                len: 3,
            },
            client: 7,
            expires_ms: 9,
            rcpts: vec![crate::model::Rcpt::pending(3)],
            bypass_suppression: false,
        }
    }

    #[test]
    fn round_trips() {
        let r = record();
        assert_eq!(decode::<Record>(&encode(&r)), Ok(r));
    }

    /// `record` as an older format wrote it: today's encoding of it
    /// without a deadline, recipient states and bypass is the format-2
    /// one followed by three zero bytes (format 1: also the client, 0).
    fn old_bytes(r: &Record, version: u8) -> Vec<u8> {
        let bare = Record {
            expires_ms: 0,
            rcpts: vec![],
            bypass_suppression: false,
            client: if version == 1 { 0 } else { r.client },
            ..r.clone()
        };
        let mut v = encode(&bare);
        let drop = if version == 1 { 4 } else { 3 };
        for _ in 0..drop {
            assert_eq!(v.pop(), Some(0));
        }
        v[0] = version;
        v
    }

    #[test]
    fn reads_older_records_with_every_recipient_pending() {
        for version in [1, 2] {
            let r = record();
            let want = Record {
                expires_ms: 0,
                rcpts: vec![crate::model::Rcpt::pending(r.attempts); r.envelope_to.len()],
                client: if version == 1 { 0 } else { r.client },
                ..r.clone()
            };
            assert_eq!(decode::<Record>(&old_bytes(&r, version)), Ok(want.clone()));
            // A dead letter is its record, then raw, died_ms and reason.
            let dead = crate::model::DeadRecord {
                record: want.clone(),
                raw: b"x".to_vec(),
                died_ms: 5,
                reason: "550".into(),
            };
            let mut bytes = old_bytes(&r, version);
            let tail = encode(&(b"x".to_vec(), 5u64, "550".to_string()));
            bytes.extend_from_slice(&tail[1..]);
            assert_eq!(decode::<crate::model::DeadRecord>(&bytes), Ok(dead));
        }
        // Delivered records of format 2 had no recipients.
        let d = crate::model::DeliveredRecord {
            lane: Lane::Normal,
            enqueued_ms: 1,
            delivered_ms: 2,
            attempts: 1,
            message_id: "m@x".into(),
            envelope_to: vec![],
            rcpts: vec![],
            client: 0,
        };
        let mut v2 = encode(&d);
        assert_eq!((v2.pop(), v2.pop(), v2.pop()), (Some(0), Some(0), Some(0)));
        v2[0] = 2;
        assert_eq!(decode::<crate::model::DeliveredRecord>(&v2), Ok(d));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let good = encode(&record());
        assert_eq!(decode::<Record>(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode::<Record>(&[9, 1, 2]),
            Err(DecodeError::UnknownVersion(9))
        );
        for cut in 1..good.len() {
            assert!(
                decode::<Record>(&good[..cut]).is_err(),
                "prefix {cut} decoded"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode::<Record>(&trailing).is_err());
        // a huge length prefix must not allocate
        let mut huge = vec![FORMAT_VERSION, 0];
        huge.extend_from_slice(&[0xff; 12]);
        assert!(decode::<Record>(&huge).is_err());
    }
}
