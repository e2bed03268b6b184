//! The store's own tests, on a temporary spool.

use super::*;
use crate::model::Outcome;

fn options() -> StoreOptions {
    StoreOptions {
        cache_capacity_bytes: 1 << 20,
        segment_bytes: 1 << 20,
        idempotency_window: Duration::from_secs(60),
        delivered_retention: Duration::from_secs(60),
        observer: std::sync::Arc::new(super::Unobserved),
        suppression: super::SuppressionPolicy::default(),
        event_retention: super::EventRetention::default(),
    }
}

fn message(client: &str) -> NewMessage {
    NewMessage {
        lane: Lane::Bulk,
        sender: "a@x.example".into(),
        envelope_from: "a@x.example".into(),
        envelope_to: vec!["b@y.example".into()],
        message_id: "m@x.example".into(),
        raw: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
        idempotency_key: String::new(),
        not_before_ms: 0,
        client: client.into(),
        expires_ms: 0,
        bypass_suppression: false,
        rcpt_fields: None,
        suppressed: Vec::new(),
    }
}

#[tokio::test]
async fn a_format_1_spool_is_migrated_and_its_messages_stay_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let id = store.append(vec![message("")]).await.unwrap()[0].id;
    // Turn the spool into what format 1 wrote: 18-byte due keys,
    // records without the client, version byte 1.
    let t = &store.shared.tree;
    let (k, _) = t.scan_prefix(b"d").next().unwrap().unwrap();
    let (lane, _, due, _) = key::parse_due(&k).unwrap();
    t.remove(&k).unwrap();
    let mut v1 = vec![b'd', lane.index() as u8];
    v1.extend_from_slice(&due.to_be_bytes());
    v1.extend_from_slice(&id.0.to_be_bytes());
    t.insert(v1, &[]).unwrap();
    let stored: Record = codec::decode(&t.get(key::message(id)).unwrap().unwrap()).unwrap();
    let bare = Record {
        rcpts: vec![],
        ..stored
    };
    let mut rec = codec::encode(&bare);
    // Format 3 added a deadline, recipient states and bypass; format 2 the
    // client slot: four zero bytes at the end here.
    for _ in 0..4 {
        assert_eq!(rec.pop(), Some(0));
    }
    rec[0] = 1;
    t.insert(key::message(id), rec).unwrap();
    t.insert(key::FORMAT, &[1]).unwrap();
    store.close();
    drop(store);

    let store = Store::open(dir.path(), options()).unwrap();
    let due = store.due(Lane::Bulk, 0, now_ms(), 10, |_| false);
    assert_eq!(due.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(due[0].record.client, 0);
    assert_eq!(
        store.shared.tree.get(key::FORMAT).unwrap().unwrap()[0],
        codec::FORMAT_VERSION
    );
    store.close();
}

#[tokio::test]
async fn clients_get_slots_and_counters_that_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let a = store
        .append(vec![message("billing"), message("billing"), message("ads")])
        .await
        .unwrap();
    let clients = store.clients();
    let (billing, ads) = (
        clients.slot("billing").unwrap(),
        clients.slot("ads").unwrap(),
    );
    assert_ne!(billing, ads);
    assert_ne!(billing, 0);
    assert_eq!(clients.counters_of("billing").queued, 2);
    let ads_due = store.due(Lane::Bulk, ads, now_ms(), 10, |_| false);
    assert_eq!(ads_due.len(), 1, "each client has its own due range");
    store.complete(vec![(a[0].id, Outcome::Ack)]).await.unwrap();
    store.close();
    drop(store);
    let store = Store::open(dir.path(), options()).unwrap();
    let c = store.clients().counters_of("billing");
    assert_eq!((c.queued, c.enqueued_total, c.delivered_total), (1, 2, 1));
    assert_eq!(store.client_slots().len(), 3);
    store.close();
}

/// Closes `store`, lets `change` edit its tree as a crash or an older
/// binary could have left it, and opens it again.
fn reopen(dir: &Path, store: Store, change: impl FnOnce(&sled::Tree)) -> Store {
    store.close();
    let t = store.shared.tree.clone();
    drop(store);
    change(&t);
    t.flush().unwrap();
    drop(t);
    Store::open(dir, options()).unwrap_or_else(|e| panic!("reopen: {e:?}"))
}

fn keyed(client: &str, key: &str) -> NewMessage {
    NewMessage {
        idempotency_key: key.into(),
        ..message(client)
    }
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_client() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let a = store
        .append(vec![keyed("billing", "reset-42")])
        .await
        .unwrap();
    let b = store.append(vec![keyed("ads", "reset-42")]).await.unwrap();
    assert!(!a[0].duplicate && !b[0].duplicate, "{a:?} {b:?}");
    assert_ne!(a[0].id, b[0].id, "two clients, two messages");
    // Within one client the key still deduplicates, also in one group.
    let again = store
        .append(vec![
            keyed("ads", "reset-42"),
            keyed("ads", "x"),
            keyed("ads", "x"),
        ])
        .await
        .unwrap();
    assert!(again[0].duplicate && again[0].id == b[0].id);
    assert!(!again[1].duplicate && again[2].duplicate);
    assert_eq!(store.counters().queued_total(), 3);
    store.close();
}

#[tokio::test]
async fn global_keys_of_an_older_spool_move_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let a = store.append(vec![keyed("billing", "k1")]).await.unwrap()[0].clone();
    // Make it what an older binary wrote: `i <key>`, no scope.
    let t = &store.shared.tree;
    let slot = store.client_slot("billing").unwrap();
    let scoped = key::idem(slot, "k1");
    let v = t.get(&scoped).unwrap().unwrap();
    let e: IdemEntry = codec::decode(&v).unwrap();
    t.remove(&scoped).unwrap();
    t.remove(key::expiry(e.expires_ms, key::EXPIRY_IDEM, &scoped[1..]))
        .unwrap();
    t.insert(key::idem_legacy(b"k1"), v).unwrap();
    store.close();
    drop(store);
    let store = Store::open(dir.path(), options()).unwrap();
    let same = store.append(vec![keyed("billing", "k1")]).await.unwrap();
    assert!(same[0].duplicate && same[0].id == a.id, "{same:?}");
    let other = store.append(vec![keyed("ads", "k1")]).await.unwrap();
    assert!(!other[0].duplicate, "another client's key is its own");
    assert!(store.shared.tree.scan_prefix(b"i").next().is_none());
    store.close();
}

#[tokio::test]
async fn lost_counters_are_rebuilt_without_reusing_ids_or_wrapping() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let ids: Vec<_> = store
        .append(vec![message(""), message(""), message("")])
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    // The newest message dies, the oldest is delivered: no `m/` key
    // holds the highest id any more.
    store
        .complete(vec![
            (
                ids[2],
                Outcome::Dead {
                    reason: "550 no".into(),
                },
            ),
            (ids[0], Outcome::Ack),
        ])
        .await
        .unwrap();
    let store = reopen(dir.path(), store, |t| {
        t.insert(key::COUNTERS, b"\x02garbage".to_vec()).unwrap();
    });
    let c = store.counters();
    assert_eq!((c.queued_total(), c.dead), (1, 1), "{c:?}");
    assert!(
        c.last_id >= ids[2].0,
        "last_id {} < {}",
        c.last_id,
        ids[2].0
    );
    let next = store.append(vec![message("")]).await.unwrap()[0].id;
    assert!(next > ids[2], "a new id never collides with a dead letter");
    // A counter that drifted below the truth never wraps.
    let mut drifted = store.counters();
    drifted.queued = [0; 3];
    let store = reopen(dir.path(), store, |t| {
        t.insert(key::COUNTERS, codec::encode(&drifted)).unwrap();
    });
    store
        .complete(vec![(ids[1], Outcome::Ack), (next, Outcome::Ack)])
        .await
        .unwrap();
    assert_eq!(store.counters().queued, [0; 3], "saturates at 0");
    store.close();
}

#[tokio::test]
async fn a_malformed_segment_count_never_deletes_live_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let id = store.append(vec![message("")]).await.unwrap()[0].id;
    let store = reopen(dir.path(), store, |t| {
        let (k, _) = t.scan_prefix(b"g").next().unwrap().unwrap();
        t.insert(k, b"bad".to_vec()).unwrap();
    });
    let due = store.due(Lane::Bulk, 0, now_ms(), 10, |_| false);
    assert_eq!(due.len(), 1, "the body is still there");
    assert_eq!(due[0].id, id);
    assert_eq!(due[0].raw, message("").raw);
    store.close();
}

#[tokio::test]
async fn entries_whose_bodies_never_reached_the_disk_are_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let kept = store.append(vec![keyed("", "kept")]).await.unwrap()[0].id;
    let ghost = store.append(vec![keyed("", "ghost")]).await.unwrap()[0].id;
    let store = reopen(dir.path(), store, |t| {
        // What an older binary could leave after a power cut: the index
        // entry durable, its body cut off the end of the segment.
        let mut r: Record = codec::decode(&t.get(key::message(ghost)).unwrap().unwrap()).unwrap();
        r.body.offset += 1 << 20;
        t.insert(key::message(ghost), codec::encode(&r)).unwrap();
        t.remove(key::ORDERED).unwrap();
    });
    assert_eq!(store.snapshot(now_ms()).unacknowledged_dropped, 1);
    assert_eq!(store.counters().queued_total(), 1);
    assert!(store.status(ghost).unwrap().is_none());
    assert!(matches!(
        store.status(kept).unwrap(),
        Some(Status::Queued(_))
    ));
    // The client's retry with the same key is stored afresh.
    let again = store.append(vec![keyed("", "ghost")]).await.unwrap();
    assert!(!again[0].duplicate, "{again:?}");
    assert_eq!(store.counters().quarantined, 0);
    store.close();
}

#[tokio::test]
async fn an_undecodable_queued_entry_is_quarantined_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let ids: Vec<_> = store
        .append(vec![message("c"), message("c")])
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    store
        .shared
        .tree
        .insert(key::message(ids[0]), b"\x02\xff\xff".to_vec())
        .unwrap();
    // GetMessage must not say NOT_FOUND for a message that is there.
    assert!(matches!(
        store.status(ids[0]).unwrap(),
        Some(Status::Quarantined)
    ));
    let due = store.due(Lane::Bulk, 1, now_ms(), 10, |_| false);
    assert_eq!(due.len(), 1);
    assert!(wait(|| store.counters().quarantined == 1).await);
    // Its due key went with it; its client's count too.
    assert_eq!(store.counters().queued_total(), 1);
    assert_eq!(store.clients().counters_of("c").queued, 1);
    assert_eq!(store.shared.tree.scan_prefix(b"d").count(), 1);
    store.close();
}

async fn wait(f: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A failed group's error reaches its callers as the error it was (its
/// type, not its text); shared by several callers, it is wrapped, not
/// flattened into an I/O error.
#[tokio::test]
async fn a_group_error_keeps_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let one = std::sync::Arc::new(StoreError::NewerFormat(9));
    assert!(matches!(store.reply_error(one), StoreError::NewerFormat(9)));
    let shared = std::sync::Arc::new(StoreError::NewerFormat(8));
    let _other_caller = shared.clone();
    match store.reply_error(shared) {
        StoreError::Group(e) => assert!(matches!(*e, StoreError::NewerFormat(8))),
        e => panic!("{e:?}"),
    }
    // A spool closing is `Closed` to every caller, shared or not.
    let closed = std::sync::Arc::new(StoreError::Closed);
    let _other_caller = closed.clone();
    assert!(matches!(store.reply_error(closed), StoreError::Closed));
}

/// The kinds of the visible events after `after`, with their sequences.
/// Waits (at most 5 s) until event `seq` is visible: an Enqueue's events
/// are, with the sled fsync that follows its answer (`journal`).
async fn visible(store: &Store, seq: u64) {
    tokio::time::timeout(Duration::from_secs(5), store.wait_events_after(seq - 1))
        .await
        .expect("events become visible within the event log's sync delay");
}

fn kinds(store: &Store, after: u64) -> Vec<(u64, crate::model::EventKind)> {
    store
        .events_after(after, 1000)
        .unwrap()
        .into_iter()
        .map(|(s, e)| (s, e.kind))
        .collect()
}

/// Events are numbered in the group of their change, visible once it is
/// durable (an outcome's within a short sync), and numbered on after a
/// restart without reuse; a reader's cursor survives it too.
#[tokio::test]
async fn events_follow_their_changes_and_are_never_renumbered() {
    use crate::model::EventKind::*;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let a = store.append(vec![keyed("", "k1")]).await.unwrap()[0].id;
    let b = store.append(vec![message("")]).await.unwrap()[0].id;
    // Appends are answered once journaled; their events are visible with
    // the index's fsync that follows.
    visible(&store, 2).await;
    assert_eq!(kinds(&store, 0), vec![(1, Accepted), (2, Accepted)]);
    let first = store.events_after(0, 1).unwrap();
    assert_eq!(
        (first[0].1.id, first[0].1.idempotency_key.as_str()),
        (a.0, "k1")
    );
    store
        .complete(vec![
            (a, Outcome::Ack),
            (
                b,
                Outcome::Retry {
                    due_ms: 77_000,
                    error: "451 4.3.0 try later".into(),
                },
            ),
        ])
        .await
        .unwrap();
    // Outcomes are not fsynced for their own sake: their events appear
    // with the sync the committer asks for shortly after.
    assert!(
        wait(|| kinds(&store, 2).len() == 2).await,
        "{:?}",
        kinds(&store, 0)
    );
    let after = store.events_after(2, 10).unwrap();
    assert_eq!((after[0].1.kind, after[0].1.id), (Delivered, a.0));
    assert_eq!(after[0].1.recipient, "b@y.example");
    let deferred = &after[1].1;
    assert_eq!(
        (deferred.kind, deferred.id, deferred.attempt),
        (Deferred, b.0, 1)
    );
    assert_eq!(
        (deferred.reply.as_str(), deferred.next_attempt_ms),
        ("451 4.3.0 try later", 77_000)
    );
    store
        .admin(AdminOp::SetReaderCursor {
            reader: "hook".into(),
            seq: 3,
        })
        .await
        .unwrap();
    assert_eq!(store.event_figures().last_seq, 4);

    let store = reopen(dir.path(), store, |_| {});
    assert_eq!(store.reader_cursor("hook").unwrap(), Some(3));
    assert_eq!(store.reader_cursor("other").unwrap(), None);
    store.append(vec![message("")]).await.unwrap();
    visible(&store, 5).await;
    assert_eq!(kinds(&store, 4), vec![(5, Accepted)]);
    let f = store.event_figures();
    assert_eq!((f.first_seq, f.last_seq, f.count), (1, 5, 5));
    assert!(f.bytes > 5 * 40, "{f:?}");
    store.close();
}

/// Over its size the log drops its oldest events (never refusing an
/// append); a cursor older than what is kept is refused naming the oldest.
#[tokio::test]
async fn the_log_keeps_its_size_and_an_old_cursor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options();
    o.event_retention.max_bytes = 600;
    let store = Store::open(dir.path(), o).unwrap();
    for _ in 0..40 {
        store.append(vec![message("")]).await.unwrap();
    }
    // Trimming runs when the committer is idle.
    assert!(
        wait(|| store.event_figures().bytes <= 600).await,
        "{:?}",
        store.event_figures()
    );
    let f = store.event_figures();
    assert!(
        f.first_seq > 2 && f.last_seq == 40 && f.count == 41 - f.first_seq,
        "{f:?}"
    );
    match store.events_after(1, 10) {
        Err(EventReadError::TooOld(t)) => assert_eq!(t.oldest, f.first_seq),
        other => panic!("{other:?}"),
    }
    // 0 means "from the oldest kept"; the one before the oldest is fine too.
    assert_eq!(store.events_after(0, 1).unwrap()[0].0, f.first_seq);
    assert_eq!(
        store.events_after(f.first_seq - 1, 1).unwrap()[0].0,
        f.first_seq
    );
    store.close();
}

/// A group's events are one block; a reader starts and stops anywhere
/// inside one.
#[tokio::test]
async fn a_groups_events_are_one_block_read_from_any_sequence() {
    use crate::model::EventKind::*;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    store.append(vec![message(""); 5]).await.unwrap();
    store.append(vec![message(""); 2]).await.unwrap();
    visible(&store, 7).await;
    let blocks: Vec<(u64, usize)> = store
        .shared
        .tree
        .scan_prefix(b"E")
        .map(|item| {
            let (k, v) = item.unwrap();
            let first = u64::from_be_bytes(k[1..9].try_into().unwrap());
            let block = codec::decode::<events::EventBlock>(&v).unwrap();
            (first, block.events.len())
        })
        .collect();
    assert_eq!(blocks, [(1, 5), (6, 2)]);
    let seqs = |after, max| -> Vec<u64> {
        let got = store.events_after(after, max).unwrap();
        assert!(got.iter().all(|(_, e)| e.kind == Accepted));
        got.into_iter().map(|(s, _)| s).collect()
    };
    assert_eq!(seqs(2, 2), [3, 4]);
    assert_eq!(seqs(4, 10), [5, 6, 7]);
    assert_eq!(seqs(0, 3), [1, 2, 3]);
    assert_eq!(seqs(7, 10), Vec::<u64>::new());
    assert_eq!(store.event_figures().count, 7);
    store.close();
}

/// One message's events, found from the newest back: all of them when the
/// search reaches its enqueue time, and told partial when the budget ends
/// it first.
#[tokio::test]
async fn one_messages_events_are_found_from_the_newest_back() {
    use crate::model::EventKind::*;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let first = store.append(vec![message(""); 5]).await.unwrap();
    store.append(vec![message(""); 2]).await.unwrap();
    visible(&store, 7).await;
    let id = first[2].id;
    let (found, complete) = store.events_of(id.0, id.enqueued_ms(), 1_000).unwrap();
    assert!(complete);
    assert_eq!(
        found
            .iter()
            .map(|(s, e)| (*s, e.kind, e.id))
            .collect::<Vec<_>>(),
        [(3, Accepted, id.0)]
    );
    // The newest block alone (2 events) exhausts a budget of 1.
    let (found, complete) = store.events_of(id.0, id.enqueued_ms(), 1).unwrap();
    assert!(found.is_empty() && !complete);
    // A message enqueued after every event kept: nothing older is read.
    let later = crate::model::now_ms() + 3_600_000;
    let (found, complete) = store.events_of(id.0, later, 1_000).unwrap();
    assert!(found.is_empty() && complete);
    store.close();
}

/// Events stored one a key (the first format of the log) are gathered
/// into blocks at open: read as before, numbered on without reuse.
#[tokio::test]
async fn events_stored_one_a_key_are_read_and_numbered_on() {
    use crate::model::EventKind::*;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    store.append(vec![message(""); 3]).await.unwrap();
    visible(&store, 3).await;
    let old = store.events_after(0, 10).unwrap();
    let store = reopen(dir.path(), store, |t| {
        // As the first format wrote them: `e <seq>` → one event, from 2.
        for item in t.scan_prefix(b"E") {
            t.remove(item.unwrap().0).unwrap();
        }
        for (seq, e) in &old[1..] {
            let mut k = vec![events::SINGLE_PREFIX];
            k.extend_from_slice(&seq.to_be_bytes());
            t.insert(k, codec::encode(e)).unwrap();
        }
        t.remove(events::STATE_KEY).unwrap();
    });
    assert_eq!(store.events_after(0, 10).unwrap(), old[1..].to_vec());
    assert_eq!(store.shared.tree.scan_prefix(b"e").count(), 0);
    store.append(vec![message("")]).await.unwrap();
    visible(&store, 4).await;
    assert_eq!(kinds(&store, 3), vec![(4, Accepted)]);
    let f = store.event_figures();
    assert_eq!((f.first_seq, f.last_seq, f.count), (2, 4, 3));
    store.close();
}

fn copy_dir(from: &Path, to: &Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_name() == skip {
            continue;
        }
        if src.is_dir() {
            copy_dir(&src, &dst, "");
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Enqueues are answered from the journal: when sled loses the batches
/// that indexed them (its state as before them, the segments as after),
/// the replay at open queues them again, with their idempotency keys,
/// counts and accepted events, and a torn record after them is ignored.
#[tokio::test]
async fn acknowledged_messages_sled_lost_are_replayed_from_the_journal() {
    use crate::model::EventKind::*;
    let dir = tempfile::tempdir().unwrap();
    let (live, before, crashed) = (
        dir.path().join("live"),
        dir.path().join("before"),
        dir.path().join("crashed"),
    );
    let store = Store::open(&live, options()).unwrap();
    let x = store.append(vec![message("")]).await.unwrap()[0].id;
    store.close();
    drop(store);
    copy_dir(&live, &before, "");
    let store = Store::open(&live, options()).unwrap();
    let got = store
        .append(vec![keyed("billing", "k-a"), message("billing")])
        .await
        .unwrap();
    let (a, b) = (got[0].id, got[1].id);
    store.close();
    drop(store);
    // sled as before A and B; the segments as after them, plus a torn
    // record at the end of the newest.
    copy_dir(&before, &crashed, "segments");
    copy_dir(&live.join("segments"), &crashed.join("segments"), "");
    let newest = Segments::list(&crashed.join("segments")).unwrap();
    let newest = crashed
        .join("segments")
        .join(segments::file_name(*newest.last().unwrap()));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    std::io::Write::write_all(&mut f, &[9, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);

    let store = Store::open(&crashed, options()).unwrap();
    for id in [x, a, b] {
        match store.status(id).unwrap() {
            Some(Status::Queued(r)) => {
                assert_eq!(store.body(id, &r).unwrap(), message("").raw);
            }
            other => panic!("{id:?}: {other:?}"),
        }
    }
    let c = store.counters();
    assert_eq!((c.queued[Lane::Bulk.index()], c.enqueued_total), (3, 3));
    assert_eq!(store.clients().counters_of("billing").enqueued_total, 2);
    // The idempotency key came back with it.
    let again = store.append(vec![keyed("billing", "k-a")]).await.unwrap();
    assert!(again[0].duplicate && again[0].id == a);
    visible(&store, 3).await;
    assert_eq!(
        kinds(&store, 0),
        vec![(1, Accepted), (2, Accepted), (3, Accepted)]
    );
    // Replayed once: a second open finds nothing more to index.
    let store = reopen(&crashed, store, |_| {});
    assert_eq!(store.counters().enqueued_total, 3);
    store.close();
}
