//! Encoding of everything the store writes as a value.
//!
//! Every value starts with a one-byte format version, then bincode 2
//! (standard configuration). Decoding never panics: bytes that do not decode
//! give a [`DecodeError`], and the store quarantines such records. Replacing
//! bincode means a new version byte here and nowhere else.

use bincode::{Decode, Encode};

/// The format version written by this binary.
pub const FORMAT_VERSION: u8 = 1;

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

pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
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
            body: crate::segments::BodyLoc {
                segment: 1,
                offset: 2,
                len: 3,
            },
        }
    }

    #[test]
    fn round_trips() {
        let r = record();
        assert_eq!(decode::<Record>(&encode(&r)), Ok(r));
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
