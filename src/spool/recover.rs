//! What `Store::open` repairs and migrates before the spool opens.

use super::key;
use super::*;

/// Rewrites format-1 due keys (`d <lane> <due> <id>`) as format-2 keys of
/// client slot 0, in chunks; idempotent, so a crash midway is finished at
/// the next open. Then records the format as 2.
pub(super) fn migrate_due_keys(tree: &sled::Tree) -> Result<(), StoreError> {
    if tree.get(key::FORMAT)?.map(|v| v.first().copied()) == Some(Some(codec::FORMAT_VERSION)) {
        return Ok(());
    }
    let mut moved = 0u64;
    let mut batch = sled::Batch::default();
    let mut n = 0;
    // One pass; the format-2 keys it inserts are skipped if met again.
    for item in tree.scan_prefix(b"d") {
        let (k, _) = item?;
        if let Some((lane, due, id)) = key::parse_due_v1(&k) {
            batch.remove(k);
            batch.insert(&key::due(lane, 0, due, id), &[]);
            n += 1;
            if n == 10_000 {
                tree.apply_batch(std::mem::take(&mut batch))?;
                moved += n;
                n = 0;
            }
        }
    }
    tree.apply_batch(batch)?;
    moved += n;
    tree.insert(key::FORMAT, &[codec::FORMAT_VERSION])?;
    tree.flush()?;
    if moved > 0 {
        tracing::info!(moved, "SpoolMigrated: due keys now carry the client");
    }
    Ok(())
}

/// Rebuilds the gauges, the segment counts (`g/`, rewritten) and the
/// clients' queued figures from the keys when the stored counters or a
/// segment count are lost; totals are kept from `old` (zero if it was
/// lost too). Costs a scan of the index; written and flushed before the
/// spool opens.
pub(super) fn recount(
    tree: &sled::Tree,
    old: Counters,
    clients: &mut Clients,
) -> Result<(Counters, BTreeMap<u32, u64>), StoreError> {
    let mut c = Counters {
        queued: [0; 3],
        queued_bytes: 0,
        dead: 0,
        dead_bytes: 0,
        ..old
    };
    let mut live: BTreeMap<u32, u64> = BTreeMap::new();
    for cc in clients.counters.values_mut() {
        cc.queued = 0;
        cc.queued_bytes = 0;
    }
    for item in tree.scan_prefix(b"m") {
        let (_, v) = item?;
        if let Ok(r) = codec::decode::<Record>(&v) {
            c.queued[r.lane.index()] += 1;
            c.queued_bytes += u64::from(r.body.len);
            *live.entry(r.body.segment).or_insert(0) += 1;
            let cc = clients.counters.entry(r.client).or_default();
            cc.queued += 1;
            cc.queued_bytes += u64::from(r.body.len);
        }
    }
    for item in tree.scan_prefix(b"z") {
        let (_, v) = item?;
        c.dead += 1;
        c.dead_bytes += v.len() as u64;
    }
    c.quarantined = tree.scan_prefix(b"q").keys().count() as u64;
    c.last_id = c.last_id.max(highest_id(tree)?);
    let mut batch = sled::Batch::default();
    for item in tree.scan_prefix(b"g") {
        batch.remove(item?.0);
    }
    for (&seg, &n) in &live {
        batch.insert(&key::segment(seg), &n.to_be_bytes());
    }
    for (&slot, cc) in &clients.counters {
        batch.insert(&key::client_counters(slot), codec::encode(cc));
    }
    batch.insert(key::COUNTERS, codec::encode(&c));
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok((c, live))
}

/// How far back from the spool's last commit an index entry whose body
/// lies beyond its segment's end is taken for one that was never
/// acknowledged. An older binary applied the index before the body's
/// fsync: at a power cut, entries of the last moments could survive their
/// bodies. Further back, a body beyond the end is damage, and quarantined
/// when leased.
pub(super) const GHOST_WINDOW_MS: u64 = 10_000;

/// Drops, before the spool opens, the index entries of the last moments
/// whose bodies never became durable (beyond the end of their segment):
/// they were never acknowledged (an acknowledgement waits for the body's
/// fsync), so they are not mail anyone was promised, and their idempotency
/// keys must not answer a client's retry with them. Counted and logged
/// once; the rest of the spool is not read.
pub(super) fn drop_ghosts(
    tree: &sled::Tree,
    segments_dir: &Path,
    counters: &mut Counters,
    clients: &mut Clients,
    live: &mut BTreeMap<u32, u64>,
) -> Result<u64, StoreError> {
    let since = counters.clock_ms.saturating_sub(GHOST_WINDOW_MS) << 20;
    let mut lens: HashMap<u32, Option<u64>> = HashMap::new();
    let mut batch = sled::Batch::default();
    let mut n = 0u64;
    for item in tree.range(key::message(MessageId(since)).as_slice()..b"n".as_slice()) {
        let (k, v) = item?;
        let (Some(id), Ok(r)) = (key::id_of(&k), codec::decode::<Record>(&v)) else {
            continue;
        };
        let len = *lens
            .entry(r.body.segment)
            .or_insert_with(|| crate::spool::segments::segment_len(segments_dir, r.body.segment));
        if len.is_none_or(|l| r.body.end() <= l) {
            continue;
        }
        batch.remove(k);
        batch.remove(&key::due(r.lane, r.client, r.due_ms, id));
        if !r.idempotency_key.is_empty() {
            let ik = key::idem(r.client, &r.idempotency_key);
            let points_here = tree
                .get(&ik)?
                .and_then(|v| codec::decode::<IdemEntry>(&v).ok())
                .is_some_and(|e| e.id == id.0);
            if points_here {
                batch.remove(ik);
            }
        }
        less(&mut counters.queued[r.lane.index()], 1);
        less(&mut counters.queued_bytes, u64::from(r.body.len));
        let c = clients.counters.entry(r.client).or_default();
        less(&mut c.queued, 1);
        less(&mut c.queued_bytes, u64::from(r.body.len));
        batch.insert(&key::client_counters(r.client), codec::encode(&*c));
        if let Some(count) = live.get_mut(&r.body.segment) {
            less(count, 1);
            batch.insert(&key::segment(r.body.segment), &count.to_be_bytes());
        }
        n += 1;
    }
    if n > 0 {
        batch.insert(key::COUNTERS, codec::encode(&*counters));
        tree.apply_batch(batch)?;
        tree.flush()?;
        tracing::info!(
            dropped = n,
            "UnacknowledgedDropped: index entries whose bodies never reached the disk (never acknowledged) were removed"
        );
    }
    Ok(n)
}

/// The highest message id the spool holds anywhere (queued, dead,
/// delivered, cancelled, quarantined), so no new id can collide with one.
pub(super) fn highest_id(tree: &sled::Tree) -> Result<u64, StoreError> {
    let mut max = 0;
    for prefix in [&b"m"[..], b"z", b"s", b"k", b"qm"] {
        if let Some(item) = tree.scan_prefix(prefix).keys().next_back() {
            let k = item?;
            if let Some(id) = key::id_of(&k[prefix.len() - 1..]) {
                max = max.max(id.0);
            }
        }
    }
    Ok(max)
}

/// Moves the global idempotency keys of older spools (`i <key>`) under the
/// scope of the client that sent them (`j <client> <key>`), in chunks;
/// idempotent, so a crash midway is finished at the next open. The owner
/// is read from the message (queued or dead); with no clients registered
/// every key is the anonymous client's. A key whose owner is unknown
/// (its message delivered or cancelled, with several clients) is dropped:
/// a retry of it within the window makes a second copy, never a loss.
pub(super) fn migrate_idempotency_keys(
    tree: &sled::Tree,
    clients: &Clients,
) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let (mut moved, mut dropped, mut n) = (0u64, 0u64, 0);
    for item in tree.scan_prefix(b"i") {
        let (k, v) = item?;
        let rest = &k[1..];
        batch.remove(k.clone());
        let entry = codec::decode::<IdemEntry>(&v).ok();
        let owner = entry.as_ref().and_then(|e| {
            let id = MessageId(e.id);
            if let Ok(Some(r)) = tree.get(key::message(id)) {
                if let Ok(r) = codec::decode::<Record>(&r) {
                    return Some(r.client);
                }
            }
            if let Ok(Some(d)) = tree.get(key::dead(id)) {
                if let Ok(d) = codec::decode::<DeadRecord>(&d) {
                    return Some(d.record.client);
                }
            }
            clients.names.is_empty().then_some(0)
        });
        if let (Some(e), Some(owner)) = (entry, owner) {
            let key_str = String::from_utf8_lossy(rest);
            let scoped = key::idem(owner, &key_str);
            batch.remove(key::expiry(e.expires_ms, key::EXPIRY_IDEM_LEGACY, rest));
            batch.insert(
                key::expiry(e.expires_ms, key::EXPIRY_IDEM, &scoped[1..]),
                &[],
            );
            batch.insert(scoped, v);
            moved += 1;
        } else {
            dropped += 1;
        }
        n += 1;
        if n == 10_000 {
            tree.apply_batch(std::mem::take(&mut batch))?;
            n = 0;
        }
    }
    if moved + dropped == 0 {
        return Ok(());
    }
    tree.apply_batch(batch)?;
    tree.flush()?;
    tracing::info!(
        moved,
        dropped,
        "SpoolMigrated: idempotency keys are now scoped by client"
    );
    Ok(())
}
