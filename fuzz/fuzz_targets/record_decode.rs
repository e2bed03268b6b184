//! Stored values: decoding arbitrary bytes never panics, and whatever
//! decodes survives a round trip. (Byte equality does not hold: bincode
//! accepts non-minimal varints, which the first run of this target found;
//! harmless, as the value is the same.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailspool::spool::codec::{decode, encode};
use mailspool::model::{DeadRecord, DeliveredRecord, Record};
use mailspool::spool::{CancelledRecord, Counters, Suppression};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode::<Record>(data) {
        assert_eq!(decode::<Record>(&encode(&r)).as_ref(), Ok(&r));
        // However many recipient states it carries, each address has one.
        assert_eq!(r.rcpts_full().len(), r.envelope_to.len());
        assert!(r.pending().iter().all(|&i| i < r.envelope_to.len()));
    }
    if let Ok(r) = decode::<DeadRecord>(data) {
        assert_eq!(decode::<DeadRecord>(&encode(&r)).as_ref(), Ok(&r));
    }
    if let Ok(r) = decode::<DeliveredRecord>(data) {
        assert_eq!(decode::<DeliveredRecord>(&encode(&r)).as_ref(), Ok(&r));
    }
    let _ = decode::<CancelledRecord>(data);
    if let Ok(s) = decode::<Suppression>(data) {
        assert_eq!(decode::<Suppression>(&encode(&s)).as_ref(), Ok(&s));
    }
    let _ = decode::<Counters>(data);
});
