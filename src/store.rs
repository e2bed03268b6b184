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
//! u <client:2>                  → name            client registry (slot 0 = no client)
//! w <client:2>                  → ClientCounters  per-client queued, bytes, totals
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::codec;
use crate::model::{
    now_ms, DeadRecord, DeliveredRecord, Lane, Leased, MessageId, NewMessage, Outcome, Record,
};
use crate::segments::{BodyLoc, Doomed, SegmentError, SegmentReader, Segments};

/// Most operations taken into one group commit.
const MAX_GROUP_OPS: usize = 4096;
/// A retried message whose segment has at most this many live bodies left
/// is moved to the active segment.
const RELOCATE_BELOW: u64 = 256;
/// Index bytes per message counted against `max_spool_bytes` (sled's
/// footprint for an entry and its due key, measured about 400).
pub const INDEX_BYTES_PER_MESSAGE: u64 = 512;
/// Expired entries removed per housekeeping batch.
const HOUSEKEEPING_BATCH: usize = 10_000;
/// Longest a housekeeping round sweeps before the committer goes back to
/// its queue (the next round continues).
const HOUSEKEEPING_BUDGET: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),
    #[error("the spool is closed")]
    Closed,
    #[error("spool format {0} is newer than this binary understands; run a newer mailspool")]
    NewerFormat(u8),
    #[error("{0}")]
    Segment(#[from] SegmentError),
    /// An fsync failed: what it covered may not be on disk, and the page
    /// cache can no longer be trusted ("fsyncgate"). Nothing is accepted
    /// after it; the process must restart and read the spool from disk.
    #[error(
        "the spool stopped after a failed fsync ({0}); restart mailspool to recover from disk"
    )]
    Failed(String),
}

/// Subtracts without wrapping: a counter that would go below zero was
/// already wrong (a lost record), and a wrapped one (≈ 2⁶⁴ queued) would
/// make admission refuse everything.
fn less(v: &mut u64, by: u64) {
    if *v < by {
        tracing::debug!(value = *v, by, "counter would go below zero; kept at 0");
    }
    *v = v.saturating_sub(by);
}

/// Settings the store needs.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub cache_capacity_bytes: u64,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub idempotency_window: Duration,
    pub delivered_retention: Duration,
    /// Group-commit sizes and fsync times are observed here.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Operator changes, applied by the committer like everything else and
/// fsynced before they are answered.
#[derive(Debug, Clone)]
pub enum AdminOp {
    /// Removes queued messages (recorded as cancelled with `reason`).
    Cancel { ids: Vec<MessageId>, reason: String },
    /// Makes queued messages due now.
    RetryNow(Vec<MessageId>),
    /// Dead letters back to the queue, attempts reset, due now.
    Requeue(Vec<MessageId>),
    /// Deletes dead letters.
    Purge(Vec<MessageId>),
    /// Which lanes' delivery is paused (bit i = `Lane::index` i).
    SetPaused(u8),
}

/// Ids an admin op changed; the rest were not in a state it applies to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdminResult {
    pub changed: Vec<MessageId>,
    pub unchanged: Vec<MessageId>,
}

/// Operator state that survives restarts (its own key, so the counters'
/// layout is unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, bincode::Encode, bincode::Decode)]
pub struct AdminState {
    /// Bit i set: delivery of lane i is paused.
    pub paused: u8,
    pub cancelled_total: u64,
}

/// What is kept of a cancelled (or transferred) message for the retention window.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct CancelledRecord {
    pub lane: Lane,
    pub enqueued_ms: u64,
    pub cancelled_ms: u64,
    pub reason: String,
    pub message_id: String,
}

/// One entry of a listing.
#[derive(Debug, Clone)]
pub enum Listed {
    Queued(MessageId, Record),
    Dead(MessageId, DeadRecord),
    Quarantined(MessageId),
}

/// Which index a listing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    Queued,
    Dead,
    Quarantined,
}

/// The result of appending one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub id: MessageId,
    pub message_id: String,
    /// The idempotency key was seen before: `id` is the first message's.
    pub duplicate: bool,
}

/// Where a message is, as far as the spool knows (leases are not its business).
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Queued(Record),
    Delivered(DeliveredRecord),
    Dead(DeadRecord),
    Quarantined,
    Cancelled(CancelledRecord),
}

/// Counters that survive restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Counters {
    pub last_id: u64,
    pub enqueued_total: u64,
    pub delivered_total: u64,
    pub retried_total: u64,
    pub dead_total: u64,
    pub duplicates_total: u64,
    /// Queued per lane (recomputed from the due index at open).
    pub queued: [u64; 3],
    /// Dead letters on disk.
    pub dead: u64,
    pub quarantined: u64,
    /// Body bytes of queued messages.
    pub queued_bytes: u64,
    /// Bytes of dead letters (kept in sled).
    pub dead_bytes: u64,
    /// The clock's value at the last commit: the next start anchors its
    /// clock no earlier (see `model::now_ms`).
    pub clock_ms: u64,
}

impl Counters {
    pub fn queued_total(&self) -> u64 {
        self.queued.iter().sum()
    }

    /// What the spool holds on disk, for admission: bodies, dead letters,
    /// and an estimate of the index per message.
    pub fn spool_bytes(&self) -> u64 {
        self.queued_bytes
            + self.dead_bytes
            + (self.queued_total() + self.dead) * INDEX_BYTES_PER_MESSAGE
    }
}

/// Per-client figures, persisted with the changes they count.
#[derive(Debug, Clone, Copy, Default, PartialEq, bincode::Encode, bincode::Decode)]
pub struct ClientCounters {
    pub queued: u64,
    pub queued_bytes: u64,
    pub enqueued_total: u64,
    pub delivered_total: u64,
    pub dead_total: u64,
}

impl codec::Versioned for Counters {}
impl codec::Versioned for AdminState {}
impl codec::Versioned for CancelledRecord {}
impl codec::Versioned for IdemEntry {}
impl codec::Versioned for ClientCounters {}

/// The client registry: names by slot, and each slot's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Clients {
    pub names: BTreeMap<u16, String>,
    pub counters: BTreeMap<u16, ClientCounters>,
}

impl Clients {
    pub fn slot(&self, name: &str) -> Option<u16> {
        if name.is_empty() {
            return Some(0);
        }
        self.names.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }
    /// Every slot in use, 0 (no client) first.
    pub fn slots(&self) -> Vec<u16> {
        std::iter::once(0)
            .chain(self.names.keys().copied())
            .collect()
    }
    /// The counters of `name`'s slot (zero if it never enqueued).
    pub fn counters_of(&self, name: &str) -> ClientCounters {
        self.slot(name)
            .and_then(|s| self.counters.get(&s).copied())
            .unwrap_or_default()
    }
}

/// A point-in-time view for QueueStats.
#[derive(Debug, Clone, Default)]
pub struct StoreSnapshot {
    pub counters: Counters,
    /// Queued messages whose due time is in the future.
    pub scheduled: u64,
    /// Enqueue time of the oldest queued message.
    pub oldest_queued_ms: Option<u64>,
    pub group_commits: u64,
    pub fsyncs: u64,
    /// Index entries dropped at open because their bodies never reached
    /// the disk (never acknowledged; written by an older binary).
    pub unacknowledged_dropped: u64,
}

#[derive(Debug, Clone, bincode::Encode, bincode::Decode)]
struct IdemEntry {
    id: u64,
    message_id: String,
    expires_ms: u64,
}

/// Why a queued message could not be read, and so what becomes of it.
#[derive(Debug, Clone)]
enum Fault {
    /// The index entry does not decode: quarantined.
    Undecodable,
    /// The body fails its checksum, or its segment is gone: quarantined.
    Corrupt(String),
    /// An I/O error reading the body: it stays queued, due again later,
    /// its body and segment untouched.
    Transient(String),
}

impl Fault {
    fn of(e: &SegmentError) -> Fault {
        match e {
            SegmentError::Io(e) => Fault::Transient(e.to_string()),
            other => Fault::Corrupt(other.to_string()),
        }
    }
}

/// How long a message whose body could not be read waits before the next try.
const UNREADABLE_RETRY_MS: u64 = 30_000;

enum Op {
    Append {
        messages: Vec<NewMessage>,
        reply: oneshot::Sender<Result<Vec<Appended>, String>>,
    },
    Complete {
        outcomes: Vec<(MessageId, Outcome)>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A queued message that could not be read when leased: `value` is the
    /// index entry as it was read, acted on only if it is still the same.
    Unreadable {
        message_key: Vec<u8>,
        due_key: Vec<u8>,
        value: Vec<u8>,
        fault: Fault,
    },
    Admin {
        op: AdminOp,
        reply: oneshot::Sender<Result<AdminResult, String>>,
    },
    /// Final flush and fsync, then the committer stops.
    Close,
}

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
    node_id: String,
    metrics: Arc<crate::metrics::Metrics>,
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

/// Handle to the spool. Cloning is cheap.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

mod key {
    use crate::model::{Lane, MessageId};

    pub const COUNTERS: &[u8] = b"c";
    pub const FORMAT: &[u8] = b"v";
    pub const ADMIN: &[u8] = b"a";
    pub const NODE: &[u8] = b"n";

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
}

impl Store {
    /// Opens (or creates) the spool under `dir` and starts the committer.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        crate::fsutil::create_dir_durable(dir, 0o700)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(200))
            .open()?;
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
        let ghosts = drop_ghosts(
            &tree,
            &dir.join("segments"),
            &mut counters,
            &mut clients,
            &mut live,
        )?;
        let segments = Segments::open(&dir.join("segments"), live, options.segment_bytes)?;
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
        let shared = Arc::new(Shared {
            tree,
            counters: Mutex::new(counters),
            due_seconds: Mutex::new(due_seconds),
            group_commits: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            delivered_retention: options.delivered_retention,
            bodies: segments.reader(),
            admin: Mutex::new(admin),
            node_id,
            metrics: options.metrics.clone(),
            clients: Mutex::new(clients.clone()),
            failure: tokio::sync::watch::channel(None).0,
            ghosts_dropped: AtomicU64::new(ghosts),
        });
        let syncer = Arc::new(Mutex::new(Syncer::new(dir)?));
        let (tx, rx) = mpsc::channel();
        let (sync_tx, sync_rx) = mpsc::channel();
        let sync_stage = {
            let (db, syncer, shared) = (db.clone(), syncer.clone(), shared.clone());
            std::thread::Builder::new()
                .name("mailspool-fsync".into())
                .spawn(move || sync_stage(db, syncer, shared, sync_rx))?
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
        };
        let handle = std::thread::Builder::new()
            .name("mailspool-committer".into())
            .spawn(move || committer.run(rx))?;
        Ok(Store {
            shared,
            tx,
            committer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Stores the messages durably. One result per message, in order.
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
    pub async fn complete(&self, outcomes: Vec<(MessageId, Outcome)>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Complete { outcomes, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(|e| self.reply_error(e))
    }

    /// Up to `max` queued messages of `lane` due at or before `now_ms`, oldest
    /// due first, with their bodies, skipping those `skip` says are taken.
    /// Reads only; cost is proportional to `max` plus the skipped ones, not
    /// to the backlog. A message whose entry or body cannot be read is sent
    /// to quarantine and left out.
    pub fn due(
        &self,
        lane: Lane,
        client: u16,
        now_ms: u64,
        max: usize,
        skip: impl Fn(MessageId) -> bool,
    ) -> Vec<Leased> {
        let start = key::due(lane, client, 0, MessageId(0));
        let end = key::due(lane, client, now_ms.saturating_add(1), MessageId(0));
        let mut out = Vec::new();
        for item in self.shared.tree.range(start.as_slice()..end.as_slice()) {
            let Ok((k, _)) = item else { break };
            let Some((_, _, _, id)) = key::parse_due(&k) else {
                continue;
            };
            if skip(id) {
                continue;
            }
            let mkey = key::message(id);
            // Ok(None): removed between the two reads, it was just acked.
            let Ok(Some(v)) = self.shared.tree.get(mkey) else {
                continue;
            };
            let read = match codec::decode::<Record>(&v) {
                Err(_) => Err(Fault::Undecodable),
                // Rescheduled since its due key was read: not due yet.
                Ok(record) if record.due_ms > now_ms => continue,
                Ok(record) => match self.shared.bodies.read(id.0, record.body) {
                    Ok(raw) => Ok(Leased { id, record, raw }),
                    Err(e) => Err(Fault::of(&e)),
                },
            };
            match read {
                Ok(m) => out.push(m),
                Err(fault) => {
                    let _ = self.tx.send(Op::Unreadable {
                        message_key: mkey.to_vec(),
                        due_key: k.to_vec(),
                        value: v.to_vec(),
                        fault,
                    });
                }
            }
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// What the spool knows about one id.
    pub fn status(&self, id: MessageId) -> Result<Option<Status>, StoreError> {
        let t = &self.shared.tree;
        if let Some(v) = t.get(key::message(id))? {
            // An entry that does not decode is quarantined when next leased.
            return Ok(Some(
                codec::decode(&v).map_or(Status::Quarantined, Status::Queued),
            ));
        }
        if let Some(v) = t.get(key::dead(id))? {
            return Ok(codec::decode(&v).ok().map(Status::Dead));
        }
        if t.contains_key(key::quarantine(&key::message(id)))? {
            return Ok(Some(Status::Quarantined));
        }
        if let Some(v) = t.get(key::cancelled(id))? {
            return Ok(codec::decode(&v).ok().map(Status::Cancelled));
        }
        if let Some(v) = t.get(key::delivered(id))? {
            let retention = self.shared.delivered_retention.as_millis() as u64;
            // Past retention but not yet purged: gone all the same.
            return Ok(codec::decode::<DeliveredRecord>(&v)
                .ok()
                .filter(|d| d.delivered_ms + retention > now_ms())
                .map(Status::Delivered));
        }
        Ok(None)
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

    /// This spool's random id, made when it was created.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Up to `max` entries of `index` with ids in `from..to`, in id order
    /// (= enqueue order). Reads only, at most `max` entries whatever the
    /// size of the spool; entries that do not decode are left out (they
    /// are quarantined when leased).
    pub fn scan(&self, index: Index, from: MessageId, to: MessageId, max: usize) -> ScanPage {
        let (start, end) = match index {
            Index::Queued => (key::message(from).to_vec(), key::message(to).to_vec()),
            Index::Dead => (key::dead(from).to_vec(), key::dead(to).to_vec()),
            Index::Quarantined => (
                key::quarantine(&key::message(from)),
                key::quarantine(&key::message(to)),
            ),
        };
        let mut page = ScanPage::default();
        for item in self.shared.tree.range(start..end) {
            let Ok((k, v)) = item else { break };
            if page.scanned >= max {
                break;
            }
            page.scanned += 1;
            let k = if index == Index::Quarantined {
                &k[1..]
            } else {
                &k[..]
            };
            let Some(id) = key::id_of(k) else { continue };
            page.last = Some(id);
            let entry = match index {
                Index::Queued => codec::decode(&v).ok().map(|r| Listed::Queued(id, r)),
                Index::Dead => codec::decode(&v).ok().map(|d| Listed::Dead(id, d)),
                Index::Quarantined => Some(Listed::Quarantined(id)),
            };
            page.entries.extend(entry);
        }
        page.exhausted = page.scanned < max;
        page
    }

    /// The stored RFC 5322 bytes of a queued message.
    pub fn body(&self, id: MessageId, record: &Record) -> Result<Vec<u8>, StoreError> {
        Ok(self.shared.bodies.read(id.0, record.body)?)
    }

    /// The error a caller gets for a failed group: the spool's failure if
    /// it has failed (set before any reply is sent), else what went wrong.
    fn reply_error(&self, e: String) -> StoreError {
        match self.shared.failed() {
            Some(why) => StoreError::Failed(why),
            None => StoreError::Io(std::io::Error::other(e)),
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

    pub fn snapshot(&self, now_ms: u64) -> StoreSnapshot {
        let counters = *self.shared.counters.lock().expect("counters lock");
        let scheduled = self
            .shared
            .due_seconds
            .lock()
            .expect("due lock")
            .range(now_ms / 1000 + 1..)
            .map(|(_, n)| n)
            .sum();
        let oldest_queued_ms = self
            .shared
            .tree
            .scan_prefix(b"m")
            .keys()
            .next()
            .and_then(|k| k.ok())
            .and_then(|k| <[u8; 8]>::try_from(&k[1..]).ok())
            .map(|b| MessageId(u64::from_be_bytes(b)).enqueued_ms());
        StoreSnapshot {
            counters,
            scheduled,
            oldest_queued_ms,
            group_commits: self.shared.group_commits.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            unacknowledged_dropped: self.shared.ghosts_dropped.load(Ordering::Relaxed),
        }
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

/// Rewrites format-1 due keys (`d <lane> <due> <id>`) as format-2 keys of
/// client slot 0, in chunks; idempotent, so a crash midway is finished at
/// the next open. Then records the format as 2.
fn migrate_due_keys(tree: &sled::Tree) -> Result<(), StoreError> {
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

/// A page of [`Store::scan`].
#[derive(Debug, Default)]
pub struct ScanPage {
    pub entries: Vec<Listed>,
    /// Index entries read.
    pub scanned: usize,
    /// The last id read: the next page starts after it.
    pub last: Option<MessageId>,
    /// The range holds nothing after this page.
    pub exhausted: bool,
}

/// Rebuilds the gauges, the segment counts (`g/`, rewritten) and the
/// clients' queued figures from the keys when the stored counters or a
/// segment count are lost; totals are kept from `old` (zero if it was
/// lost too). Costs a scan of the index; written and flushed before the
/// spool opens.
fn recount(
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
const GHOST_WINDOW_MS: u64 = 10_000;

/// Drops, before the spool opens, the index entries of the last moments
/// whose bodies never became durable (beyond the end of their segment):
/// they were never acknowledged (an acknowledgement waits for the body's
/// fsync), so they are not mail anyone was promised, and their idempotency
/// keys must not answer a client's retry with them. Counted and logged
/// once; the rest of the spool is not read.
fn drop_ghosts(
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
            .or_insert_with(|| crate::segments::segment_len(segments_dir, r.body.segment));
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
fn highest_id(tree: &sled::Tree) -> Result<u64, StoreError> {
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
fn migrate_idempotency_keys(tree: &sled::Tree, clients: &Clients) -> Result<(), StoreError> {
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

/// fsyncs what sled's flush leaves in the page cache: its data file, blob
/// files it created, and the directories that name them.
struct Syncer {
    db_file: File,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<std::ffi::OsString>,
}

impl Syncer {
    fn new(dir: &Path) -> Result<Syncer, StoreError> {
        let db_file = File::open(dir.join("db"))?;
        // Make the spool's own directory entries durable once.
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok(Syncer {
            db_file,
            blobs_dir: dir.join("blobs"),
            synced_blobs: HashSet::new(),
        })
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.db_file.sync_data()?;
        let Ok(entries) = std::fs::read_dir(&self.blobs_dir) else {
            return Ok(());
        };
        let mut present = HashSet::new();
        let mut new_blob = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                // A blob removed meanwhile by sled is fine to miss.
                if let Ok(f) = File::open(entry.path()) {
                    f.sync_all()?;
                    new_blob = true;
                }
            }
            present.insert(name);
        }
        if new_blob {
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

/// The single writer.
struct Committer {
    shared: Arc<Shared>,
    db: sled::Db,
    syncer: Arc<Mutex<Syncer>>,
    /// Groups waiting for durability go to the fsync stage.
    sync_tx: Option<mpsc::Sender<SyncJob>>,
    sync_stage: Option<JoinHandle<()>>,
    segments: Segments,
    options: StoreOptions,
    /// The committer's own copy; published to `shared` after each group.
    counters: Counters,
    admin: AdminState,
    clients: Clients,
    last_housekeeping: Instant,
}

/// Everything one group commit changes, applied to memory only once the
/// group is durable (or dropped if it fails).
#[derive(Default)]
struct Group {
    batch: sled::Batch,
    /// (due second, ±1) for the `scheduled` histogram.
    due: Vec<(u64, i64)>,
    /// Live-count changes per segment.
    segments: BTreeMap<u32, i64>,
    /// Records changed earlier in this group (None = removed).
    overlay: HashMap<MessageId, Option<Record>>,
    /// Idempotency keys (client slot, key) first seen in this group.
    new_keys: HashMap<(u16, String), Appended>,
    /// Body locations the batch points at (new or moved): each must be
    /// durable before the batch is applied.
    bodies: Vec<BodyLoc>,
    /// Dead letters removed earlier in this group.
    gone_dead: HashSet<MessageId>,
    /// Appends in the group: flush and fsync before answering.
    needs_sync: bool,
    /// Messages appended in the group.
    appended: usize,
    /// Client slots whose counters changed.
    clients_touched: BTreeSet<u16>,
}

impl Group {
    fn due_add(&mut self, due_ms: u64) {
        self.due.push((due_ms / 1000, 1));
    }
    fn due_remove(&mut self, due_ms: u64) {
        self.due.push((due_ms / 1000, -1));
    }
    fn segment(&mut self, segment: u32, delta: i64) {
        *self.segments.entry(segment).or_insert(0) += delta;
    }
}

enum Reply {
    Append(
        oneshot::Sender<Result<Vec<Appended>, String>>,
        Vec<Appended>,
    ),
    Complete(oneshot::Sender<Result<(), String>>),
    Admin(oneshot::Sender<Result<AdminResult, String>>, AdminResult),
}

impl Reply {
    fn send(self, result: Result<(), String>) {
        match self {
            Reply::Append(tx, results) => {
                let _ = tx.send(result.map(|()| results));
            }
            Reply::Complete(tx) => {
                let _ = tx.send(result);
            }
            Reply::Admin(tx, changed) => {
                let _ = tx.send(result.map(|()| changed));
            }
        }
    }
}

/// A committed group whose appends wait for durability.
struct SyncJob {
    replies: Vec<Reply>,
    /// Segments whose last reference was released in batches applied
    /// before this job was sent: deleted once this round's flush is done.
    doomed: Doomed,
}

/// The second stage of the pipeline: while the committer writes, syncs and
/// applies group N+1, this thread makes group N's index durable (sled
/// flush, fsync of sled's files) and then answers its callers. The bodies
/// were `sync_data`'d by the committer before their index was applied.
/// Jobs that queue up meanwhile share one round. A failed round fails the
/// spool: nothing after it is acknowledged.
fn sync_stage(
    db: sled::Db,
    syncer: Arc<Mutex<Syncer>>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<SyncJob>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        let started = Instant::now();
        let result = match shared.failed() {
            Some(why) => Err(StoreError::Failed(why)),
            None => (|| -> Result<(), StoreError> {
                db.flush()?;
                syncer.lock().expect("syncer").sync()?;
                Ok(())
            })(),
        };
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        shared
            .metrics
            .fsync_duration
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            if !matches!(e, StoreError::Failed(_)) {
                shared.fail(format!("flush and fsync of the index: {e}"));
            }
        }
        let result = result.map_err(|e| e.to_string());
        for job in jobs {
            for r in job.replies {
                r.send(result.clone());
            }
            if result.is_ok() {
                if let Err(e) = job.doomed.delete() {
                    tracing::warn!(error = %e, "could not delete an emptied segment file; it is removed at the next start");
                }
            }
        }
    }
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.housekeep();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut ops = vec![first];
            while ops.len() < MAX_GROUP_OPS {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let close = ops.iter().any(|op| matches!(op, Op::Close));
            self.commit_group(ops);
            if close {
                break;
            }
            if self.last_housekeeping.elapsed() > Duration::from_secs(1) {
                self.housekeep();
            }
        }
        // Let the fsync stage answer everything it holds.
        drop(self.sync_tx.take());
        if let Some(h) = self.sync_stage.take() {
            let _ = h.join();
        }
        if self.shared.failed().is_none() {
            if let Err(e) = self.flush_and_sync() {
                tracing::error!(error = %e, "final spool flush failed");
            }
        }
    }

    /// Bodies synced, sled flush + fsync of its files, then deletion of
    /// segments whose last reference is now durably gone.
    fn flush_and_sync(&mut self) -> Result<(), StoreError> {
        self.segments.sync()?;
        self.db.flush()?;
        self.syncer.lock().expect("syncer").sync()?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.segments.delete_doomed()?;
        Ok(())
    }

    /// Hands a job to the fsync stage; if it has stopped, answers it.
    fn send_job(&mut self, replies: Vec<Reply>) {
        let job = SyncJob {
            replies,
            doomed: self.segments.take_doomed(),
        };
        if let Some(Err(mpsc::SendError(job))) = self.sync_tx.as_ref().map(|tx| tx.send(job)) {
            for r in job.replies {
                r.send(Err("the spool is closing".into()));
            }
        }
    }

    fn commit_group(&mut self, ops: Vec<Op>) {
        if let Some(why) = self.shared.failed() {
            let msg = StoreError::Failed(why).to_string();
            for op in ops {
                match op {
                    Op::Append { reply, .. } => drop(reply.send(Err(msg.clone()))),
                    Op::Complete { reply, .. } => drop(reply.send(Err(msg.clone()))),
                    Op::Admin { reply, .. } => drop(reply.send(Err(msg.clone()))),
                    Op::Unreadable { .. } | Op::Close => {}
                }
            }
            return;
        }
        let before = self.counters;
        let admin_before = self.admin;
        let clients_before = self.clients.clone();
        let now = now_ms();
        let mut g = Group::default();
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Append { messages, reply } => {
                    g.needs_sync = true;
                    g.appended += messages.len();
                    let results = messages
                        .into_iter()
                        .map(|m| self.append_one(m, now, &mut g))
                        .collect();
                    replies.push(Reply::Append(reply, results));
                }
                Op::Complete { outcomes, reply } => {
                    for (id, outcome) in outcomes {
                        self.complete_one(id, outcome, now, &mut g);
                    }
                    replies.push(Reply::Complete(reply));
                }
                Op::Unreadable {
                    message_key,
                    due_key,
                    value,
                    fault,
                } => self.unreadable(&message_key, &due_key, &value, fault, now, &mut g),
                Op::Admin { op, reply } => {
                    g.needs_sync = true;
                    let result = self.admin_op(op, now, &mut g);
                    replies.push(Reply::Admin(reply, result));
                }
                Op::Close => {}
            }
        }
        for (&segment, &delta) in &g.segments {
            let n = self.segments.live(segment).saturating_add_signed(delta);
            if n == 0 {
                g.batch.remove(&key::segment(segment));
            } else {
                g.batch.insert(&key::segment(segment), &n.to_be_bytes());
            }
        }
        self.counters.clock_ms = self.counters.clock_ms.max(now);
        g.batch.insert(key::COUNTERS, codec::encode(&self.counters));
        for slot in std::mem::take(&mut g.clients_touched) {
            if let Some(c) = self.clients.counters.get(&slot) {
                g.batch
                    .insert(&key::client_counters(slot), codec::encode(c));
            }
        }
        if self.admin != admin_before {
            g.batch.insert(key::ADMIN, codec::encode(&self.admin));
        }
        let needs_sync = g.needs_sync;
        let batch = std::mem::take(&mut g.batch);
        // The ordering rule: bodies written and synced, then the index that
        // points at them applied. A write error fails the group (the next
        // write reuses the offset); a sync error fails the spool.
        let written = self
            .segments
            .write()
            .map_err(StoreError::from)
            .and_then(|()| {
                self.segments.sync().map_err(|e| {
                    let why = format!("fsync of a segment file: {e}");
                    self.shared.fail(why.clone());
                    StoreError::Failed(why)
                })
            });
        let written = written.and_then(|()| {
            debug_assert!(
                g.bodies.iter().all(|loc| self.segments.durable(loc)),
                "an index entry would point at bytes not yet durable"
            );
            self.shared.tree.apply_batch(batch)?;
            Ok(())
        });
        match written {
            Ok(()) => {
                self.shared.group_commits.fetch_add(1, Ordering::Relaxed);
                if g.appended > 0 {
                    self.shared.metrics.group_commit.observe(g.appended as f64);
                }
                *self.shared.counters.lock().expect("counters lock") = self.counters;
                *self.shared.admin.lock().expect("admin lock") = self.admin;
                let mut shared = self.shared.clients.lock().expect("clients lock");
                if *shared != self.clients {
                    shared.clone_from(&self.clients);
                }
                drop(shared);
                let mut hist = self.shared.due_seconds.lock().expect("due lock");
                for (sec, d) in g.due {
                    let n = hist.entry(sec).or_insert(0);
                    *n = n.saturating_add_signed(d);
                    if *n == 0 {
                        hist.remove(&sec);
                    }
                }
                drop(hist);
                for (segment, delta) in g.segments {
                    self.segments.apply(segment, delta);
                }
                if let Err(e) = self.segments.maybe_rotate() {
                    if matches!(&e, SegmentError::Io(_)) && self.segments.synced_all() {
                        tracing::warn!(error = %e, "cannot start a new segment file; the active one grows until a new one can be made");
                    } else {
                        self.shared
                            .fail(format!("fsync before a segment rotation: {e}"));
                    }
                }
                if needs_sync {
                    // Outcomes in this group are answered with it, after the
                    // fsync; they never wait for more than that.
                    self.send_job(replies);
                } else {
                    for r in replies {
                        r.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spool commit failed; callers get an error");
                self.counters = before;
                self.admin = admin_before;
                self.clients = clients_before;
                self.segments.abandon_pending();
                let msg = e.to_string();
                for r in replies {
                    r.send(Err(msg.clone()));
                }
            }
        }
    }

    fn append_one(&mut self, m: NewMessage, now: u64, g: &mut Group) -> Appended {
        let client = self.client_slot(&m.client, g);
        if !m.idempotency_key.is_empty() {
            if let Some(first) = g.new_keys.get(&(client, m.idempotency_key.clone())) {
                self.counters.duplicates_total += 1;
                return Appended {
                    duplicate: true,
                    ..first.clone()
                };
            }
            if let Ok(Some(v)) = self.shared.tree.get(key::idem(client, &m.idempotency_key)) {
                if let Ok(e) = codec::decode::<IdemEntry>(&v) {
                    if e.expires_ms > now {
                        self.counters.duplicates_total += 1;
                        return Appended {
                            id: MessageId(e.id),
                            message_id: e.message_id,
                            duplicate: true,
                        };
                    }
                }
            }
        }
        let id = MessageId::next(MessageId(self.counters.last_id), now);
        self.counters.last_id = id.0;
        let due_ms = if m.not_before_ms > now {
            m.not_before_ms
        } else {
            now
        };
        let body = self.segments.append(id.0, &m.raw);
        g.segment(body.segment, 1);
        g.bodies.push(body);
        let record = Record {
            lane: m.lane,
            enqueued_ms: now,
            due_ms,
            first_due_ms: due_ms,
            attempts: 0,
            last_error: String::new(),
            envelope_from: m.envelope_from,
            envelope_to: m.envelope_to,
            message_id: m.message_id,
            idempotency_key: m.idempotency_key,
            body,
            client,
        };
        let appended = Appended {
            id,
            message_id: record.message_id.clone(),
            duplicate: false,
        };
        if !record.idempotency_key.is_empty() {
            let expires_ms = now + self.options.idempotency_window.as_millis() as u64;
            let entry = IdemEntry {
                id: id.0,
                message_id: record.message_id.clone(),
                expires_ms,
            };
            let idem = key::idem(client, &record.idempotency_key);
            g.batch
                .insert(key::expiry(expires_ms, key::EXPIRY_IDEM, &idem[1..]), &[]);
            g.batch.insert(idem, codec::encode(&entry));
            g.new_keys
                .insert((client, record.idempotency_key.clone()), appended.clone());
        }
        g.batch
            .insert(&key::due(record.lane, client, due_ms, id), &[]);
        g.due_add(due_ms);
        g.batch.insert(&key::message(id), codec::encode(&record));
        self.client_add(client, 1, i64::from(record.body.len), g)
            .enqueued_total += 1;
        self.counters.enqueued_total += 1;
        self.counters.queued[record.lane.index()] += 1;
        self.counters.queued_bytes += u64::from(record.body.len);
        appended
    }

    fn current(&self, id: MessageId, g: &Group) -> Option<Record> {
        if let Some(r) = g.overlay.get(&id) {
            return r.clone();
        }
        let v = self.shared.tree.get(key::message(id)).ok()??;
        codec::decode(&v).ok()
    }

    fn complete_one(&mut self, id: MessageId, outcome: Outcome, now: u64, g: &mut Group) {
        // Already gone (acked by an earlier lease, or cancelled): nothing to do.
        let Some(mut record) = self.current(id, g) else {
            return;
        };
        // Dead letters keep their bytes in sled, not in a segment: without
        // them there is no dead letter to keep (nor to requeue).
        let dead_raw = match &outcome {
            Outcome::Dead { .. } => match self.shared.bodies.read(id.0, record.body) {
                Ok(raw) => raw,
                Err(e) => return self.fault(id, record, Fault::of(&e), now, g),
            },
            _ => Vec::new(),
        };
        let lane = record.lane.index();
        g.batch
            .remove(&key::due(record.lane, record.client, record.due_ms, id));
        g.due_remove(record.due_ms);
        if !matches!(outcome, Outcome::Postpone { .. }) {
            record.attempts += 1;
        }
        match outcome {
            Outcome::Postpone { due_ms, error } => {
                record.due_ms = due_ms;
                record.last_error = error;
                g.batch
                    .insert(&key::due(record.lane, record.client, due_ms, id), &[]);
                g.due_add(due_ms);
                g.batch.insert(&key::message(id), codec::encode(&record));
                g.overlay.insert(id, Some(record));
            }
            Outcome::Ack => {
                self.client_add(record.client, -1, -i64::from(record.body.len), g)
                    .delivered_total += 1;
                g.batch.remove(&key::message(id));
                g.segment(record.body.segment, -1);
                let delivered = DeliveredRecord {
                    lane: record.lane,
                    enqueued_ms: record.enqueued_ms,
                    delivered_ms: now,
                    attempts: record.attempts,
                    message_id: record.message_id,
                };
                let expires = now + self.options.delivered_retention.as_millis() as u64;
                g.batch
                    .insert(&key::delivered(id), codec::encode(&delivered));
                g.batch.insert(
                    key::expiry(expires, key::EXPIRY_DELIVERED, &id.0.to_be_bytes()),
                    &[],
                );
                less(&mut self.counters.queued[lane], 1);
                self.counters.queued_bytes = self
                    .counters
                    .queued_bytes
                    .saturating_sub(u64::from(record.body.len));
                self.counters.delivered_total += 1;
                g.overlay.insert(id, None);
            }
            Outcome::Retry { due_ms, error } => {
                record.due_ms = due_ms;
                record.last_error = error;
                // A few retrying stragglers must not pin an old segment:
                // once it holds few live bodies, move them to the active one.
                let seg = record.body.segment;
                let live_after = self
                    .segments
                    .live(seg)
                    .saturating_add_signed(g.segments.get(&seg).copied().unwrap_or(0));
                if seg != self.segments.active_id() && live_after <= RELOCATE_BELOW {
                    if let Ok(raw) = self.shared.bodies.read(id.0, record.body) {
                        g.segment(record.body.segment, -1);
                        record.body = self.segments.append(id.0, &raw);
                        g.segment(record.body.segment, 1);
                        g.bodies.push(record.body);
                    }
                }
                g.batch
                    .insert(&key::due(record.lane, record.client, due_ms, id), &[]);
                g.due_add(due_ms);
                g.batch.insert(&key::message(id), codec::encode(&record));
                self.counters.retried_total += 1;
                g.overlay.insert(id, Some(record));
            }
            Outcome::Dead { reason } => {
                self.client_add(record.client, -1, -i64::from(record.body.len), g)
                    .dead_total += 1;
                let raw = dead_raw;
                g.batch.remove(&key::message(id));
                g.segment(record.body.segment, -1);
                self.counters.queued_bytes = self
                    .counters
                    .queued_bytes
                    .saturating_sub(u64::from(record.body.len));
                self.counters.dead_bytes += raw.len() as u64;
                record.last_error = reason.clone();
                let dead = DeadRecord {
                    record,
                    raw,
                    died_ms: now,
                    reason,
                };
                g.batch.insert(&key::dead(id), codec::encode(&dead));
                less(&mut self.counters.queued[lane], 1);
                self.counters.dead += 1;
                self.counters.dead_total += 1;
                g.overlay.insert(id, None);
            }
        }
    }

    /// The slot of a client name, registering a new name in this group.
    fn client_slot(&mut self, name: &str, g: &mut Group) -> u16 {
        if let Some(slot) = self.clients.slot(name) {
            return slot;
        }
        let slot = self
            .clients
            .names
            .keys()
            .max()
            .map_or(1, |m| m.saturating_add(1));
        self.clients.names.insert(slot, name.to_string());
        g.batch.insert(&key::client_name(slot), name.as_bytes());
        slot
    }

    /// Changes a client's queued count and bytes; returns its counters.
    fn client_add(
        &mut self,
        slot: u16,
        queued: i64,
        bytes: i64,
        g: &mut Group,
    ) -> &mut ClientCounters {
        g.clients_touched.insert(slot);
        let c = self.clients.counters.entry(slot).or_default();
        c.queued = c.queued.saturating_add_signed(queued);
        c.queued_bytes = c.queued_bytes.saturating_add_signed(bytes);
        c
    }

    /// Applies one operator change to the group.
    fn admin_op(&mut self, op: AdminOp, now: u64, g: &mut Group) -> AdminResult {
        let mut result = AdminResult::default();
        let mut sort = |changed: bool, id: MessageId| {
            if changed {
                result.changed.push(id)
            } else {
                result.unchanged.push(id)
            }
        };
        match op {
            AdminOp::SetPaused(mask) => self.admin.paused = mask & 0b111,
            AdminOp::Cancel { ids, reason } => {
                for id in ids {
                    let done = self.cancel_one(id, &reason, now, g);
                    sort(done, id);
                }
            }
            AdminOp::RetryNow(ids) => {
                for id in ids {
                    let done = match self.current(id, g) {
                        Some(mut record) if record.due_ms > now => {
                            let (lane, client) = (record.lane, record.client);
                            g.batch.remove(&key::due(lane, client, record.due_ms, id));
                            g.due_remove(record.due_ms);
                            record.due_ms = now;
                            g.batch.insert(&key::due(lane, client, now, id), &[]);
                            g.due_add(now);
                            g.batch.insert(&key::message(id), codec::encode(&record));
                            g.overlay.insert(id, Some(record));
                            true
                        }
                        _ => false,
                    };
                    sort(done, id);
                }
            }
            AdminOp::Requeue(ids) => {
                for id in ids {
                    let done = self.requeue_one(id, now, g);
                    sort(done, id);
                }
            }
            AdminOp::Purge(ids) => {
                for id in ids {
                    let done = match self.dead_letter(id, g) {
                        Some(dead) => {
                            g.batch.remove(&key::dead(id));
                            g.gone_dead.insert(id);
                            less(&mut self.counters.dead, 1);
                            self.counters.dead_bytes = self
                                .counters
                                .dead_bytes
                                .saturating_sub(dead.raw.len() as u64);
                            true
                        }
                        None => false,
                    };
                    sort(done, id);
                }
            }
        }
        result
    }

    /// A dead letter not yet removed in this group.
    fn dead_letter(&self, id: MessageId, g: &Group) -> Option<DeadRecord> {
        if g.gone_dead.contains(&id) {
            return None;
        }
        let v = self.shared.tree.get(key::dead(id)).ok()??;
        codec::decode(&v).ok()
    }

    fn cancel_one(&mut self, id: MessageId, reason: &str, now: u64, g: &mut Group) -> bool {
        let Some(record) = self.current(id, g) else {
            return false;
        };
        g.batch
            .remove(&key::due(record.lane, record.client, record.due_ms, id));
        g.due_remove(record.due_ms);
        g.batch.remove(&key::message(id));
        g.segment(record.body.segment, -1);
        self.client_add(record.client, -1, -i64::from(record.body.len), g);
        less(&mut self.counters.queued[record.lane.index()], 1);
        self.counters.queued_bytes = self
            .counters
            .queued_bytes
            .saturating_sub(u64::from(record.body.len));
        self.admin.cancelled_total += 1;
        let cancelled = CancelledRecord {
            lane: record.lane,
            enqueued_ms: record.enqueued_ms,
            cancelled_ms: now,
            reason: reason.to_string(),
            message_id: record.message_id,
        };
        let expires = now + self.options.delivered_retention.as_millis() as u64;
        g.batch
            .insert(&key::cancelled(id), codec::encode(&cancelled));
        g.batch.insert(
            key::expiry(expires, key::EXPIRY_CANCELLED, &id.0.to_be_bytes()),
            &[],
        );
        g.overlay.insert(id, None);
        true
    }

    /// A dead letter back in the queue under its own id: its bytes go to
    /// the active segment, attempts and max_age start again.
    fn requeue_one(&mut self, id: MessageId, now: u64, g: &mut Group) -> bool {
        let Some(dead) = self.dead_letter(id, g) else {
            return false;
        };
        let mut record = dead.record;
        record.body = self.segments.append(id.0, &dead.raw);
        g.segment(record.body.segment, 1);
        g.bodies.push(record.body);
        record.attempts = 0;
        record.last_error = String::new();
        record.due_ms = now;
        record.first_due_ms = now;
        g.batch.remove(&key::dead(id));
        g.gone_dead.insert(id);
        g.batch
            .insert(&key::due(record.lane, record.client, now, id), &[]);
        g.due_add(now);
        g.batch.insert(&key::message(id), codec::encode(&record));
        self.client_add(record.client, 1, i64::from(record.body.len), g);
        less(&mut self.counters.dead, 1);
        self.counters.dead_bytes = self
            .counters
            .dead_bytes
            .saturating_sub(dead.raw.len() as u64);
        self.counters.queued[record.lane.index()] += 1;
        self.counters.queued_bytes += u64::from(record.body.len);
        g.overlay.insert(id, Some(record));
        true
    }

    /// A message that could not be read when leased (`Op::Unreadable`):
    /// acted on only if its index entry is still the bytes that failed, so
    /// a record changed meanwhile (retried, moved) is never touched.
    fn unreadable(
        &mut self,
        mkey: &[u8],
        due_key: &[u8],
        value: &[u8],
        fault: Fault,
        now: u64,
        g: &mut Group,
    ) {
        let Some(id) = key::id_of(mkey) else { return };
        if g.overlay.contains_key(&id) {
            return;
        }
        match self.shared.tree.get(mkey) {
            Ok(Some(v)) if v == value => {}
            _ => return,
        }
        if let Ok(record) = codec::decode::<Record>(value) {
            return self.fault(id, record, fault, now, g);
        }
        // Undecodable: the due key still says its lane and client; its
        // size is unknown (the byte gauges may drift by it).
        if let Some((lane, client, due_ms, _)) = key::parse_due(due_key) {
            if matches!(self.shared.tree.contains_key(due_key), Ok(true)) {
                g.batch.remove(due_key);
                g.due_remove(due_ms);
                less(&mut self.counters.queued[lane.index()], 1);
                self.client_add(client, -1, 0, g);
            }
        }
        g.batch.insert(key::quarantine(mkey), value);
        g.batch.remove(mkey);
        self.counters.quarantined += 1;
        g.overlay.insert(id, None);
    }

    /// A decodable queued message whose body cannot be read. A transient
    /// error leaves it queued (body, segment and attempts untouched), due
    /// again in 30 s; a corrupt or missing body moves its index entry to
    /// `q/` (quarantine) and releases what it counted.
    fn fault(&mut self, id: MessageId, mut record: Record, fault: Fault, now: u64, g: &mut Group) {
        let due = key::due(record.lane, record.client, record.due_ms, id);
        g.batch.remove(&due);
        g.due_remove(record.due_ms);
        match fault {
            Fault::Transient(error) => {
                tracing::warn!(%id, %error, "MessageUnreadable: the body could not be read; it stays queued and is tried again in 30 s");
                record.due_ms = now + UNREADABLE_RETRY_MS;
                record.last_error = format!("the body could not be read ({error}); trying again");
                g.batch.insert(
                    &key::due(record.lane, record.client, record.due_ms, id),
                    &[],
                );
                g.due_add(record.due_ms);
                g.batch.insert(&key::message(id), codec::encode(&record));
                g.overlay.insert(id, Some(record));
            }
            Fault::Corrupt(_) | Fault::Undecodable => {
                let why = match &fault {
                    Fault::Corrupt(why) => why.as_str(),
                    _ => "its index entry does not decode",
                };
                tracing::warn!(%id, error = why, "MessageQuarantined: it cannot be read, so it will not be delivered; see `mailspool queue list --state quarantined`");
                g.batch.remove(&key::message(id));
                g.segment(record.body.segment, -1);
                self.client_add(record.client, -1, -i64::from(record.body.len), g);
                less(&mut self.counters.queued[record.lane.index()], 1);
                less(&mut self.counters.queued_bytes, u64::from(record.body.len));
                g.batch
                    .insert(key::quarantine(&key::message(id)), codec::encode(&record));
                self.counters.quarantined += 1;
                g.overlay.insert(id, None);
            }
        }
    }

    /// Removes idempotency keys and delivered statuses past their time, in
    /// chunks, until none is left or the round's time is up (so the sweep
    /// keeps up with any rate of keyed enqueues and acks); asks the fsync
    /// stage to delete emptied segments after its next flush.
    fn housekeep(&mut self) {
        self.last_housekeeping = Instant::now();
        let now = now_ms();
        let end = key::expiry(now, 0, &[]);
        loop {
            let swept = self.sweep_expired(now, &end);
            if swept < HOUSEKEEPING_BATCH || self.last_housekeeping.elapsed() > HOUSEKEEPING_BUDGET
            {
                break;
            }
        }
        if self.segments.has_doomed() && self.shared.failed().is_none() {
            self.send_job(Vec::new());
        }
    }

    /// One chunk of the expiry sweep; returns how many entries it removed.
    fn sweep_expired(&mut self, now: u64, end: &[u8]) -> usize {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.shared.tree.range(b"x".as_slice()..end) {
            let Ok((k, _)) = item else { break };
            batch.remove(k.clone());
            if k.len() >= 10 {
                let rest = &k[10..];
                let idem = match k[9] {
                    key::EXPIRY_IDEM => Some(key::idem_rest(rest)),
                    key::EXPIRY_IDEM_LEGACY => Some(key::idem_legacy(rest)),
                    kind @ (key::EXPIRY_DELIVERED | key::EXPIRY_CANCELLED) => {
                        let mut dk = vec![kind];
                        dk.extend_from_slice(rest);
                        batch.remove(dk);
                        None
                    }
                    _ => None,
                };
                if let Some(ik) = idem {
                    if let Ok(Some(v)) = self.shared.tree.get(&ik) {
                        if codec::decode::<IdemEntry>(&v)
                            .map(|e| e.expires_ms <= now)
                            .unwrap_or(true)
                        {
                            batch.remove(ik);
                        }
                    }
                }
            }
            n += 1;
            if n >= HOUSEKEEPING_BATCH {
                break;
            }
        }
        if n > 0 {
            if let Err(e) = self.shared.tree.apply_batch(batch) {
                tracing::warn!(error = %e, "housekeeping failed; will try again");
                return 0;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> StoreOptions {
        StoreOptions {
            cache_capacity_bytes: 1 << 20,
            segment_bytes: 1 << 20,
            idempotency_window: Duration::from_secs(60),
            delivered_retention: Duration::from_secs(60),
            metrics: Default::default(),
        }
    }

    fn message(client: &str) -> NewMessage {
        NewMessage {
            lane: Lane::Bulk,
            envelope_from: "a@x.example".into(),
            envelope_to: vec!["b@y.example".into()],
            message_id: "m@x.example".into(),
            raw: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
            idempotency_key: String::new(),
            not_before_ms: 0,
            client: client.into(),
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
        let mut rec = t.get(key::message(id)).unwrap().unwrap().to_vec();
        assert_eq!(rec.pop(), Some(0), "client slot 0 is one varint byte");
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
        store.close();
        let t = store.shared.tree.clone();
        drop(store);
        t.insert(key::COUNTERS, b"\x02garbage".to_vec()).unwrap();
        t.flush().unwrap();
        drop(t);
        let store = Store::open(dir.path(), options()).unwrap();
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
        store.close();
        let t = store.shared.tree.clone();
        drop(store);
        t.insert(key::COUNTERS, codec::encode(&drifted)).unwrap();
        t.flush().unwrap();
        drop(t);
        let store = Store::open(dir.path(), options()).unwrap();
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
        store.close();
        let t = store.shared.tree.clone();
        drop(store);
        let (k, _) = t.scan_prefix(b"g").next().unwrap().unwrap();
        t.insert(k, b"bad".to_vec()).unwrap();
        t.flush().unwrap();
        drop(t);
        let store = Store::open(dir.path(), options()).unwrap();
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
        store.close();
        let t = store.shared.tree.clone();
        drop(store);
        // What an older binary could leave after a power cut: the index
        // entry durable, its body cut off the end of the segment.
        let mut r: Record = codec::decode(&t.get(key::message(ghost)).unwrap().unwrap()).unwrap();
        r.body.offset += 1 << 20;
        t.insert(key::message(ghost), codec::encode(&r)).unwrap();
        t.flush().unwrap();
        drop(t);
        let store = Store::open(dir.path(), options()).unwrap();
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
}
