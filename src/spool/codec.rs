//! Encoding of everything the store writes as a value.
//!
//! Every value starts with a one-byte format version, then bincode 2
//! (standard configuration). Decoding never panics: bytes that do not decode
//! give a [`DecodeError`], and the store quarantines such records. Replacing
//! bincode means a new version byte here and nowhere else.

use bincode::{Decode, Encode};

/// The format version written by this binary. Version 2 added the
/// client slot to `Record` (and so to `DeadRecord`); values of version 1
/// are still read (see [`Versioned`]).
pub const FORMAT_VERSION: u8 = 2;

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
    /// A value written by format version 1; by default the layout is the same.
    fn decode_v1(body: &[u8]) -> Result<Self, DecodeError> {
        decode_body(body)
    }
}

pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    match version {
        FORMAT_VERSION => decode_body(body),
        1 => T::decode_v1(body),
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
        }
    }

    #[test]
    fn round_trips() {
        let r = record();
        assert_eq!(decode::<Record>(&encode(&r)), Ok(r));
    }

    #[test]
    fn reads_format_1_records_as_client_0() {
        // Format 1 is format 2 without the trailing client (a varint: one
        // byte for 0), under version byte 1.
        let r = Record {
            client: 0,
            ..record()
        };
        let mut v1 = encode(&r);
        assert_eq!(v1.pop(), Some(0));
        v1[0] = 1;
        assert_eq!(decode::<Record>(&v1), Ok(r.clone()));
        let dead = crate::model::DeadRecord {
            record: r,
            raw: b"x".to_vec(),
            died_ms: 5,
            reason: "550".into(),
        };
        let bytes = encode(&dead);
        // record ends right before raw's length prefix (1) and byte.
        let cut = bytes.len() - (1 + 1 + 1 + 1 + 3) - 1;
        let mut v1 = bytes.clone();
        assert_eq!(v1.remove(cut), 0, "the client byte");
        v1[0] = 1;
        assert_eq!(decode::<crate::model::DeadRecord>(&v1), Ok(dead));
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
