//! The spool's types: its errors, settings, results, and the values it persists.

use super::*;

/// footprint for an entry and its due key, measured about 400).
pub const INDEX_BYTES_PER_MESSAGE: u64 = 512;

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
    /// The group commit this write was part of failed with this error
    /// (shared by every write of the group).
    #[error("{0}")]
    Group(std::sync::Arc<StoreError>),
}

/// Subtracts without wrapping: a counter that would go below zero was
/// already wrong (a lost record), and a wrapped one (≈ 2⁶⁴ queued) would
/// make admission refuse everything.
pub(super) fn less(v: &mut u64, by: u64) {
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
    /// Told group-commit sizes and fsync times.
    pub observer: Arc<dyn SpoolObserver>,
    /// Which bounces put an address on the suppression list, for how long.
    pub suppression: SuppressionPolicy,
    /// How long and how much of the event log is kept.
    pub event_retention: super::events::EventRetention,
}

/// Which bounces put an address on the suppression list, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct SuppressionPolicy {
    pub classes: Vec<crate::model::BounceClass>,
    /// Zero: entries never expire.
    pub expiry: Duration,
}

impl Default for SuppressionPolicy {
    fn default() -> Self {
        SuppressionPolicy {
            classes: vec![
                crate::model::BounceClass::BadMailbox,
                crate::model::BounceClass::BadDomain,
            ],
            expiry: Duration::from_secs(30 * 86_400),
        }
    }
}

/// What the spool tells an observer as it works; `observe::metrics`
/// implements it (the spool knows nothing of Prometheus).
pub trait SpoolObserver: Send + Sync + std::fmt::Debug {
    /// A group commit made `messages` new messages durable.
    fn group_committed(&self, _messages: u64) {}
    /// A flush and fsync of the index took `seconds`.
    fn fsynced(&self, _seconds: f64) {}
}

/// Observes nothing (tools and tests).
#[derive(Debug, Default)]
pub struct Unobserved;

impl SpoolObserver for Unobserved {}

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
    /// Which relays are paused, by name (the whole set).
    SetPausedRelays(Vec<String>),
    /// Puts addresses on the suppression list (replacing their entries).
    Suppress(Vec<Suppression>),
    /// Takes addresses (normalized) off the suppression list.
    Unsuppress(Vec<String>),
    /// Where a reader of the event log (a webhook endpoint) has got to:
    /// every event up to `seq` was delivered to it.
    SetReaderCursor { reader: String, seq: u64 },
}

/// The relays an operator paused, by name (key `r`).
#[derive(Debug, Clone, Default, PartialEq, bincode::Encode, bincode::Decode)]
pub struct PausedRelays(pub Vec<String>);

/// Ids an admin op changed; the rest were not in a state it applies to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdminResult {
    pub changed: Vec<MessageId>,
    pub unchanged: Vec<MessageId>,
    /// Suppression entries added or removed.
    pub count: u64,
}

/// Operator state that survives restarts (its own key, so the counters'
/// layout is unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, bincode::Encode, bincode::Decode)]
pub struct AdminState {
    /// Bit i set: delivery of lane i is paused.
    pub paused: u8,
    pub cancelled_total: u64,
}

/// The lanes a pause mask (`AdminState::paused`) names.
pub fn paused_lanes(mask: u8) -> Vec<Lane> {
    Lane::ALL
        .into_iter()
        .filter(|l| mask & (1 << l.index()) != 0)
        .collect()
}

/// What is kept of a cancelled (or transferred) message for the retention window.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct CancelledRecord {
    pub lane: Lane,
    pub enqueued_ms: u64,
    pub cancelled_ms: u64,
    pub reason: String,
    pub message_id: String,
    /// Its recipients and their states then (pending ones cancelled).
    pub envelope_to: Vec<String>,
    pub rcpts: Vec<Rcpt>,
    /// The client that enqueued it (its slot; 0 = none or unknown).
    pub client: u16,
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
impl codec::Versioned for PausedRelays {}
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
    /// Per lane: the earliest due time among messages already due.
    pub oldest_due_ms: [Option<u64>; 3],
    pub group_commits: u64,
    pub fsyncs: u64,
    /// Index entries dropped at open because their bodies never reached
    /// the disk (never acknowledged; written by an older binary).
    pub unacknowledged_dropped: u64,
}

#[derive(Debug, Clone, bincode::Encode, bincode::Decode)]
pub(super) struct IdemEntry {
    pub(super) id: u64,
    pub(super) message_id: String,
    pub(super) expires_ms: u64,
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

/// What memory keeps of a suppression entry: (reason, since, expires).
pub(super) type SuppressionKept = (String, u64, u64);

/// The suppression list in memory: normalized address → what is kept.
pub(super) type SuppressionMap = HashMap<String, SuppressionKept>;

/// A group's changes to the list, in order: added (Some) or removed.
pub(super) type SuppressionChanges = Vec<(String, Option<SuppressionKept>)>;
