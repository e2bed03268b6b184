//! The spool: the only module that imports sled, and the only one that knows
//! the key layout.
//!
//! Invariants:
//! - A message is queued exactly when it has an index entry under `m/<id>`
//!   and one due key `d/<lane><due_ms><id>`; both are written and removed in
//!   the same sled batch (one tree, key prefixes, so a batch is atomic across
//!   them). Its body is in a segment file (`segments`).
//! - The ordering rule: nothing points at bytes that are not durable, and
//!   nothing is deleted while a durable pointer to it may exist. A group's
//!   bodies (new, relocated, requeued) are written and `sync_data`'d before
//!   its batch is applied, because any applied batch may be made durable by
//!   the next flush, ours or sled's own (checked by a debug assertion); a
//!   segment is unlinked only after a flush that began after the batch that
//!   released its last body.
//! - A failed fsync fails the spool for good (`StoreError::Failed`): what
//!   it covered is never acknowledged, nor is anything after it.
//! - All writes go through one committer thread, in order. `append` answers
//!   only after its bodies are fsynced, the batch holding its index entries
//!   has been applied, sled has been flushed, and sled's data file and any
//!   new blob files have been fsynced (sled's own flush ends in
//!   `sync_file_range`, which does not survive a power cut). Concurrent
//!   appends share one write, one flush and the fsyncs: group commit.
//! - Segment live counts (`g/<segment>`) change in the same batches as the
//!   references they count; a segment file is deleted only after a flush
//!   that covers its count reaching zero.
//! - Outcomes (ack, retry, dead letter) ride in the same groups but do not
//!   force a flush: sled's background flush persists them within
//!   `flush_every_ms`. A lost ack means a redelivery, never a loss.
//! - Counters are written in the same batch as the changes they count, so
//!   after a crash they agree with the records.
//! - Decoding never panics; an undecodable record, or one whose body fails
//!   its checksum, is moved to `q/` and counted (quarantine), and the rest
//!   of the spool keeps flowing; a body that cannot be read for an I/O
//!   error stays queued and is tried again. Counters never wrap.
//! - Idempotency keys are scoped by client: `j/<slot><key>`.
//!
//! Key layout (one sled tree):
//! ```text
//! m <id:8>                      → Record          queued message (index entry)
//! d <lane:1> <client:2> <due_ms:8> <id:8> → ()   due index, per lane and client, by time
//! z <id:8>                      → DeadRecord      dead letter, with its bytes
//! g <segment:4>                 → u64             live bodies in a segment
//! s <id:8>                      → DeliveredRecord delivered, kept for retention
//! j <client:2> <idempotency key> → IdemEntry     keys are scoped by client
//! i <idempotency key>           → IdemEntry       (older spools: global; migrated at open)
//! x <expires_ms:8> <kind:1> <k> → ()              expiry index for j, s and k
//! q <original key>              → raw bytes       quarantined record
//! k <id:8>                      → CancelledRecord cancelled or transferred, kept for retention
//! c                             → Counters
//! a                             → AdminState      paused lanes, cancelled total
//! n                             → node id         random, made at creation
//! r                             → PausedRelays    relays paused by an operator, by name
//! o                             → ()              bodies are synced before their index (set at open)
//! u <client:2>                  → name            client registry (slot 0 = no client)
//! w <client:2>                  → ClientCounters  per-client queued, bytes, totals
//! p <domain> 0x00 <local>       → Suppression     the suppression list (expiry in x … p)
//! e <seq:8>                     → Event           the event log, in sequence order
//! f                             → EventLogState   its next sequence, oldest kept, count, bytes
//! h <reader name>               → u64             a webhook endpoint's cursor (last event sent)
//! ```

//!
//! Files: `types.rs` the types of its API and of what it persists;
//! `key.rs` the key layout; `recover.rs` what `open` repairs and migrates;
//! `commit.rs` the committer and fsync threads (group commit, durability);
//! `apply.rs` how each operation changes a group, `settle.rs` what an
//! outcome does to a record's recipients; `suppress.rs` the suppression
//! list.

mod apply;
pub mod codec;
mod commit;
pub mod compact;
mod events;
mod formats;
pub(crate) mod fsutil;
mod journal;
mod key;
pub(crate) mod ops;
mod read;
mod recover;
pub(crate) mod segments;
mod settle;
mod suppress;
#[cfg(test)]
mod tests;
mod types;

pub use events::{CursorTooOld, EventLogFigures, EventReadError, EventRetention};
pub use suppress::{normalize as normalize_address, Suppressed, Suppression, SuppressionPage};
pub use types::*;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::model::{
    now_ms, DeadRecord, DeliveredRecord, Lane, Leased, MessageId, NewMessage, Record,
};
use crate::model::{BodyLoc, Completion, Finish, Rcpt, RcptState};
use crate::spool::segments::{Deleter, SegmentError, SegmentReader, Segments};

use commit::{sync_stage, Committer, Fault, Op, Syncer};
use recover::{drop_ghosts, highest_id, migrate_due_keys, migrate_idempotency_keys, recount};

/// State shared between the committer and readers.
struct Shared {
    tree: sled::Tree,
    counters: Mutex<Counters>,
    /// Due keys per due second: how many queued messages are due when.
    due_seconds: Mutex<BTreeMap<u64, u64>>,
    group_commits: AtomicU64,
    fsyncs: AtomicU64,
    delivered_retention: Duration,
    bodies: SegmentReader,
    admin: Mutex<AdminState>,
    paused_relays: Mutex<PausedRelays>,
    /// The suppression list in memory (`suppress`).
    suppressions: Mutex<SuppressionMap>,
    /// The event log's extent as last committed, and the newest event
    /// readers may see (covered by a completed fsync).
    event_state: Mutex<events::EventLogState>,
    events_visible: tokio::sync::watch::Sender<u64>,
    node_id: String,
    observer: Arc<dyn SpoolObserver>,
    /// Published by the committer after each group.
    clients: Mutex<Clients>,
    /// Set once, when an fsync fails: then nothing more is accepted.
    failure: tokio::sync::watch::Sender<Option<String>>,
    /// Index entries dropped because their body never became durable
    /// (never acknowledged), since this process started.
    ghosts_dropped: AtomicU64,
}

impl Shared {
    fn failed(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Marks the spool failed (once) and says why, once.
    fn fail(&self, why: String) {
        self.failure.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            tracing::error!(
                error = %why,
                "SpoolFailed: an fsync failed, so what it covered may not be on disk; \
                 refusing everything from now on; restart mailspool to recover from the spool on disk"
            );
            *f = Some(why.clone());
            true
        });
    }
}

/// Opens sled, waiting up to 2 s for its file lock: sled releases it
/// from a background thread a moment after the last handle of a closed
/// spool is dropped (an in-process restart). A lock still held after that
/// belongs to another process, and its error says so.
pub(crate) fn open_sled(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "{e}: is another mailspool running on this data directory?"
                ))))
            }
            other => return Ok(other?),
        }
    }
}

/// Handle to the spool. Cloning is cheap.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Store {
    /// Opens (or creates) the spool under `dir` and starts the committer.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        crate::spool::fsutil::create_dir_durable(dir, 0o700)?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(200));
        let db = open_sled(&config)?;
        let tree = db.open_tree("spool")?;
        match tree.get(key::FORMAT)? {
            Some(v) if v.first().copied().unwrap_or(0) > codec::FORMAT_VERSION => {
                return Err(StoreError::NewerFormat(v[0]));
            }
            Some(_) => {}
            None => {
                tree.insert(key::FORMAT, &[codec::FORMAT_VERSION])?;
            }
        }
        let admin = match tree.get(key::ADMIN)? {
            Some(v) => codec::decode::<AdminState>(&v).unwrap_or_else(|e| {
                tracing::error!(error = %e, "spool admin state undecodable; delivery resumes on every lane");
                AdminState::default()
            }),
            None => AdminState::default(),
        };
        let paused_relays = match tree.get(key::PAUSED_RELAYS)? {
            Some(v) => codec::decode::<PausedRelays>(&v).unwrap_or_else(|e| {
                tracing::error!(error = %e, "paused relays undecodable; every relay is in use");
                PausedRelays::default()
            }),
            None => PausedRelays::default(),
        };
        let node_id = match tree.get(key::NODE)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = format!("{:016x}", rand::random::<u64>());
                tree.insert(key::NODE, id.as_bytes())?;
                id
            }
        };
        migrate_due_keys(&tree)?;
        let mut clients = Clients::default();
        for item in tree.scan_prefix(b"u") {
            let (k, v) = item?;
            if let Ok(slot) = <[u8; 2]>::try_from(&k[1..]) {
                let slot = u16::from_be_bytes(slot);
                clients
                    .names
                    .insert(slot, String::from_utf8_lossy(&v).into_owned());
            }
        }
        for item in tree.scan_prefix(b"w") {
            let (k, v) = item?;
            if let (Ok(slot), Ok(c)) = (
                <[u8; 2]>::try_from(&k[1..]),
                codec::decode::<ClientCounters>(&v),
            ) {
                clients.counters.insert(u16::from_be_bytes(slot), c);
            }
        }
        let stored = tree
            .get(key::COUNTERS)?
            .map(|v| codec::decode::<Counters>(&v));
        let mut live = BTreeMap::new();
        let mut malformed_live = false;
        for item in tree.scan_prefix(b"g") {
            let (k, v) = item?;
            match (<[u8; 4]>::try_from(&k[1..]), <[u8; 8]>::try_from(&v[..])) {
                (Ok(seg), Ok(n)) => {
                    live.insert(u32::from_be_bytes(seg), u64::from_be_bytes(n));
                }
                _ => malformed_live = true,
            }
        }
        let mut counters = match stored {
            Some(Ok(c)) if !malformed_live => c,
            None if !malformed_live => Counters::default(),
            stored => {
                // Never guess a segment's count: one taken for 0 would have
                // its file, and the live bodies in it, deleted.
                match &stored {
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "spool counters undecodable; recounting the spool")
                    }
                    _ => tracing::error!("a segment count is malformed; recounting the spool"),
                }
                let old = match stored {
                    Some(Ok(c)) => c,
                    _ => Counters::default(),
                };
                let (c, l) = recount(&tree, old, &mut clients)?;
                live = l;
                c
            }
        };
        counters.last_id = counters.last_id.max(highest_id(&tree)?);
        migrate_idempotency_keys(&tree, &clients)?;
        // Only a spool an older binary wrote can hold them: look once.
        let ghosts = if tree.contains_key(key::ORDERED)? {
            0
        } else {
            let n = drop_ghosts(
                &tree,
                &dir.join("segments"),
                &mut counters,
                &mut clients,
                &mut live,
            )?;
            tree.insert(key::ORDERED, &[])?;
            n
        };
        // The journal's replay position: segments from it on are kept for
        // the replay, whatever their count says (`journal`).
        let log = journal::position(&tree)?;
        let segments = Segments::open_keeping(
            &dir.join("segments"),
            live,
            options.segment_bytes,
            log.map_or(u32::MAX, |p| p.0),
        )?;
        let replay = match log {
            Some(from) => Some(journal::scan(&dir.join("segments"), from)?),
            None => None,
        };
        let anchored = crate::model::anchor_clock(counters.clock_ms);
        if anchored < counters.clock_ms {
            tracing::warn!(
                behind_ms = counters.clock_ms - anchored,
                "the clock was anchored before the spool opened, behind the spool's last time"
            );
        } else if counters.clock_ms > crate::model::wall_ms() {
            tracing::warn!(
                ahead_ms = counters.clock_ms - crate::model::wall_ms(),
                "the wall clock is behind the spool's last time; mailspool keeps its own time until it catches up"
            );
        }
        // Only messages due in the future matter to the `scheduled` figure;
        // those already due are counted as they are leased and acked.
        let now = now_ms();
        let mut due_seconds = BTreeMap::new();
        for lane in Lane::ALL {
            for slot in clients.slots() {
                let from = key::due(lane, slot, now, MessageId(0));
                let to = key::due_end(lane, slot);
                for item in tree.range(from.as_slice()..to.as_slice()) {
                    let (k, _) = item?;
                    if let Some((_, _, due, _)) = key::parse_due(&k) {
                        *due_seconds.entry(due / 1000).or_insert(0) += 1;
                    }
                }
            }
        }
        let suppressions = suppress::load(&tree)?;
        let event_state = events::load(&tree)?;
        let shared = Arc::new(Shared {
            tree,
            counters: Mutex::new(counters),
            due_seconds: Mutex::new(due_seconds),
            group_commits: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            delivered_retention: options.delivered_retention,
            bodies: segments.reader(),
            admin: Mutex::new(admin),
            paused_relays: Mutex::new(paused_relays),
            suppressions: Mutex::new(suppressions),
            event_state: Mutex::new(event_state),
            events_visible: tokio::sync::watch::channel(event_state.next_seq.saturating_sub(1)).0,
            node_id,
            observer: options.observer.clone(),
            clients: Mutex::new(clients.clone()),
            failure: tokio::sync::watch::channel(None).0,
            ghosts_dropped: AtomicU64::new(ghosts),
        });
        let syncer = Arc::new(Mutex::new(Syncer::new(dir)?));
        if log.is_none() {
            // A spool that did not journal yet: its index is durable; the
            // replay starts at the new active segment, durably so before
            // any Enqueue is answered from the journal alone.
            let at = journal::encode_position((segments.active_id(), 0));
            shared.tree.insert(key::LOG, &at[..])?;
            db.flush()?;
            syncer.lock().expect("syncer").sync()?;
        }
        let (tx, rx) = mpsc::channel();
        let (sync_tx, sync_rx) = mpsc::channel();
        let sync_stage = {
            let (db, syncer, shared) = (db.clone(), syncer.clone(), shared.clone());
            let deleter = segments.deleter();
            std::thread::Builder::new()
                .name("mailspool-fsync".into())
                .spawn(move || sync_stage(db, syncer, shared, deleter, sync_rx))?
        };
        let committer = Committer {
            shared: shared.clone(),
            db,
            syncer,
            sync_tx: Some(sync_tx),
            sync_stage: Some(sync_stage),
            segments,
            options,
            counters,
            admin,
            clients,
            last_housekeeping: Instant::now(),
            events: event_state,
            pending_visible: 0,
            unsynced_since: None,
        };
        let handle = std::thread::Builder::new()
            .name("mailspool-committer".into())
            .spawn(move || committer.run(rx))?;
        if let Some(entries) = replay {
            let found = entries.len();
            let (reply, done) = std::sync::mpsc::channel();
            let _ = tx.send(Op::Replay { entries, reply });
            let indexed = match done.recv() {
                Ok(r) => r.map_err(|e| StoreError::Failed(e.to_string()))?,
                Err(_) => return Err(StoreError::Closed),
            };
            if indexed > 0 {
                tracing::info!(
                    found,
                    indexed,
                    "journal replayed: acknowledged messages whose index was not yet durable are queued again"
                );
            }
        }
        Ok(Store {
            shared,
            tx,
            committer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Stores the messages durably: answered once their bodies and journal
    /// record are `sync_data`'d in the segment and their index applied
    /// (`journal`). One result per message, in order.
    pub async fn append(&self, messages: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Append { messages, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(|e| self.reply_error(e))
    }

    /// Records how leases ended. Applied in order; not fsynced by itself.
    pub async fn complete<C: Into<Completion>>(&self, outcomes: Vec<C>) -> Result<(), StoreError> {
        let outcomes = outcomes.into_iter().map(Into::into).collect();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Complete { outcomes, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(|e| self.reply_error(e))
    }

    /// Applies an operator change durably (fsynced before it returns).
    pub async fn admin(&self, op: AdminOp) -> Result<AdminResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Admin { op, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(|e| self.reply_error(e))
    }

    /// The client registry and per-client counters, as last committed.
    pub fn clients(&self) -> Clients {
        self.shared.clients.lock().expect("clients lock").clone()
    }

    /// (queued messages, queued bytes) of one client, as last committed.
    pub fn client_usage(&self, name: &str) -> (u64, u64) {
        let c = self.shared.clients.lock().expect("clients lock");
        let k = c.counters_of(name);
        (k.queued, k.queued_bytes)
    }

    /// Client slots in use (0 first), for the scheduler's round robin.
    pub fn client_slots(&self) -> Vec<u16> {
        self.shared.clients.lock().expect("clients lock").slots()
    }

    /// The slot of a client name, if it ever enqueued.
    pub fn client_slot(&self, name: &str) -> Option<u16> {
        self.shared.clients.lock().expect("clients lock").slot(name)
    }

    /// Paused lanes and the cancelled total, as last committed. Cheap.
    pub fn admin_state(&self) -> AdminState {
        *self.shared.admin.lock().expect("admin lock")
    }

    /// The relays an operator paused, by name, as last committed.
    pub fn paused_relays(&self) -> Vec<String> {
        self.shared
            .paused_relays
            .lock()
            .expect("paused relays lock")
            .0
            .clone()
    }

    /// This spool's random id, made when it was created.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The error a caller gets for a failed group: the spool's failure if
    /// it has failed (set before any reply is sent), else what went wrong.
    fn reply_error(&self, e: commit::GroupError) -> StoreError {
        match self.shared.failed() {
            Some(why) => StoreError::Failed(why),
            None => match std::sync::Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) if matches!(*shared, StoreError::Closed) => StoreError::Closed,
                Err(shared) => StoreError::Group(shared),
            },
        }
    }

    /// Why the spool stopped, once an fsync failed (then every write is
    /// refused and the process should exit and restart from disk).
    pub fn failure(&self) -> Option<String> {
        self.shared.failed()
    }

    /// Waits until the spool fails (forever, if it never does).
    pub async fn failed(&self) -> String {
        let mut rx = self.shared.failure.subscribe();
        let why = rx.wait_for(|f| f.is_some()).await.map(|f| f.clone());
        match why {
            Ok(f) => f.unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// The counters as of the last committed group. Cheap.
    pub fn counters(&self) -> Counters {
        *self.shared.counters.lock().expect("counters lock")
    }

    /// Stops the committer after it has written everything sent before,
    /// with a final flush and fsync; later calls get `StoreError::Closed`.
    /// Blocks; call from a blocking context.
    pub fn close(&self) {
        let _ = self.tx.send(Op::Close);
        let handle = self.committer.lock().expect("committer lock").take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}
