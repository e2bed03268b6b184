//! The key layout of the one sled tree (see the table in `mod.rs`): the
//! prefixes play the role of trees, so one batch is atomic across them.

use crate::model::{Lane, MessageId};

pub const COUNTERS: &[u8] = b"c";
pub const FORMAT: &[u8] = b"v";
pub const ADMIN: &[u8] = b"a";
pub const NODE: &[u8] = b"n";
pub const PAUSED_RELAYS: &[u8] = b"r";
/// Present once a binary that syncs bodies before their index has opened
/// the spool: from then on no index entry can outlive its body.
pub const ORDERED: &[u8] = b"o";
/// The journal's replay position (`spool::journal`): segment and offset
/// just past the last journal record whose group this batch belongs to.
pub const LOG: &[u8] = b"l";

pub fn message(id: MessageId) -> [u8; 9] {
    prefixed(b'm', id)
}
pub fn dead(id: MessageId) -> [u8; 9] {
    prefixed(b'z', id)
}
pub fn delivered(id: MessageId) -> [u8; 9] {
    prefixed(b's', id)
}
pub fn cancelled(id: MessageId) -> [u8; 9] {
    prefixed(b'k', id)
}
/// The id in a `<prefix><id:8>` key.
pub fn id_of(k: &[u8]) -> Option<MessageId> {
    Some(MessageId(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?)))
}
fn prefixed(p: u8, id: MessageId) -> [u8; 9] {
    let mut k = [p; 9];
    k[1..].copy_from_slice(&id.0.to_be_bytes());
    k
}
pub fn due(lane: Lane, client: u16, due_ms: u64, id: MessageId) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[0] = b'd';
    k[1] = lane.index() as u8;
    k[2..4].copy_from_slice(&client.to_be_bytes());
    k[4..12].copy_from_slice(&due_ms.to_be_bytes());
    k[12..].copy_from_slice(&id.0.to_be_bytes());
    k
}
/// Parses a due key into (lane, client, due_ms, id).
pub fn parse_due(k: &[u8]) -> Option<(Lane, u16, u64, MessageId)> {
    if k.len() != 20 || k[0] != b'd' {
        return None;
    }
    let lane = Lane::from_index(k[1])?;
    let client = u16::from_be_bytes(k[2..4].try_into().ok()?);
    let due = u64::from_be_bytes(k[4..12].try_into().ok()?);
    let id = u64::from_be_bytes(k[12..].try_into().ok()?);
    Some((lane, client, due, MessageId(id)))
}
/// The first key after every due key of (lane, client).
pub fn due_end(lane: Lane, client: u16) -> Vec<u8> {
    let mut k = vec![b'd', lane.index() as u8];
    k.extend_from_slice(&client.to_be_bytes());
    k.push(0xff);
    k
}
/// A format-1 due key (no client): `d <lane> <due:8> <id:8>`.
pub fn parse_due_v1(k: &[u8]) -> Option<(Lane, u64, MessageId)> {
    if k.len() != 18 || k[0] != b'd' {
        return None;
    }
    let lane = Lane::from_index(k[1])?;
    let due = u64::from_be_bytes(k[2..10].try_into().ok()?);
    let id = u64::from_be_bytes(k[10..].try_into().ok()?);
    Some((lane, due, MessageId(id)))
}
pub fn client_name(slot: u16) -> [u8; 3] {
    let b = slot.to_be_bytes();
    [b'u', b[0], b[1]]
}
pub fn client_counters(slot: u16) -> [u8; 3] {
    let b = slot.to_be_bytes();
    [b'w', b[0], b[1]]
}
/// An idempotency key, scoped by the client that sent it: two
/// clients using the same key are two messages.
pub fn idem(client: u16, k: &str) -> Vec<u8> {
    let mut v = vec![b'j'];
    v.extend_from_slice(&client.to_be_bytes());
    v.extend_from_slice(k.as_bytes());
    v
}
/// The scope and key of `idem`, without the prefix (the expiry index's
/// `rest`).
pub fn idem_rest(k: &[u8]) -> Vec<u8> {
    let mut v = vec![b'j'];
    v.extend_from_slice(k);
    v
}
/// A key of the global (unscoped) idempotency keys of older spools.
pub fn idem_legacy(k: &[u8]) -> Vec<u8> {
    let mut v = vec![b'i'];
    v.extend_from_slice(k);
    v
}
pub const EXPIRY_IDEM_LEGACY: u8 = b'i';
pub const EXPIRY_IDEM: u8 = b'j';
pub const EXPIRY_DELIVERED: u8 = b's';
pub const EXPIRY_CANCELLED: u8 = b'k';
pub const EXPIRY_SUPPRESSION: u8 = b'p';
pub fn expiry(expires_ms: u64, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + rest.len());
    v.push(b'x');
    v.extend_from_slice(&expires_ms.to_be_bytes());
    v.push(kind);
    v.extend_from_slice(rest);
    v
}
pub fn segment(id: u32) -> [u8; 5] {
    let mut k = [b'g'; 5];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}
pub fn quarantine(original: &[u8]) -> Vec<u8> {
    let mut v = vec![b'q'];
    v.extend_from_slice(original);
    v
}
