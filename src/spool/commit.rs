//! The committer and fsync threads: group commit, in the order the
//! durability rule requires.

use super::key;
use super::*;

/// What every caller of a failed group gets: the one error, shared (its
/// type kept, not turned into text).
pub(super) type GroupError = Arc<StoreError>;

/// Most operations taken into one group commit.
pub(super) const MAX_GROUP_OPS: usize = 4096;
/// Expired entries removed per housekeeping batch.
pub(super) const HOUSEKEEPING_BATCH: usize = 10_000;
/// Longest a housekeeping round sweeps before the committer goes back to
/// its queue (the next round continues).
pub(super) const HOUSEKEEPING_BUDGET: Duration = Duration::from_millis(100);

/// Why a queued message could not be read, and so what becomes of it.
#[derive(Debug, Clone)]
pub(super) enum Fault {
    /// The index entry does not decode: quarantined.
    Undecodable,
    /// The body fails its checksum, or its segment is gone: quarantined.
    Corrupt(String),
    /// An I/O error reading the body: it stays queued, due again later,
    /// its body and segment untouched.
    Transient(String),
}

impl Fault {
    pub(super) fn of(e: &SegmentError) -> Fault {
        match e {
            SegmentError::Io(e) => Fault::Transient(e.to_string()),
            other => Fault::Corrupt(other.to_string()),
        }
    }
}

/// How long a message whose body could not be read waits before the next try.
pub(super) const UNREADABLE_RETRY_MS: u64 = 30_000;

pub(super) enum Op {
    Append {
        messages: Vec<NewMessage>,
        reply: oneshot::Sender<Result<Vec<Appended>, GroupError>>,
    },
    Complete {
        outcomes: Vec<Completion>,
        reply: oneshot::Sender<Result<(), GroupError>>,
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
        reply: oneshot::Sender<Result<AdminResult, GroupError>>,
    },
    /// At open: index the journal entries sled lost (`spool::journal`),
    /// and move the replay position past them; answered after the fsync
    /// with how many were indexed.
    Replay {
        entries: Vec<super::journal::Entry>,
        reply: std::sync::mpsc::Sender<Result<usize, GroupError>>,
    },
    /// Final flush and fsync, then the committer stops.
    Close,
}

/// fsyncs what sled's flush leaves in the page cache: its data file, blob
/// files it created, and the directories that name them.
pub(super) struct Syncer {
    pub(super) db_file: File,
    pub(super) blobs_dir: PathBuf,
    pub(super) synced_blobs: HashSet<std::ffi::OsString>,
}

impl Syncer {
    pub(super) fn new(dir: &Path) -> Result<Syncer, StoreError> {
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

    pub(super) fn sync(&mut self) -> std::io::Result<()> {
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
pub(super) struct Committer {
    pub(super) shared: Arc<Shared>,
    pub(super) db: sled::Db,
    pub(super) syncer: Arc<Mutex<Syncer>>,
    /// Groups waiting for durability go to the fsync stage.
    pub(super) sync_tx: Option<mpsc::Sender<SyncJob>>,
    pub(super) sync_stage: Option<JoinHandle<()>>,
    pub(super) segments: Segments,
    pub(super) options: StoreOptions,
    /// The committer's own copy; published to `shared` after each group.
    pub(super) counters: Counters,
    pub(super) admin: AdminState,
    pub(super) clients: Clients,
    pub(super) last_housekeeping: Instant,
    /// The event log's extent (`events`), as this committer wrote it.
    pub(super) events: super::events::EventLogState,
    /// The newest event applied but not yet covered by a sync job.
    pub(super) pending_visible: u64,
    /// Since when events of groups that were not fsynced wait for a sync.
    pub(super) unsynced_since: Option<Instant>,
}

/// Everything one group commit changes, applied to memory only once the
/// group is durable (or dropped if it fails).
#[derive(Default)]
pub(super) struct Group {
    pub(super) batch: sled::Batch,
    /// (due second, ±1) for the `scheduled` histogram.
    pub(super) due: Vec<(u64, i64)>,
    /// Live-count changes per segment.
    pub(super) segments: BTreeMap<u32, i64>,
    /// Records changed earlier in this group (None = removed).
    pub(super) overlay: HashMap<MessageId, Option<Record>>,
    /// Idempotency keys (client slot, key) first seen in this group.
    pub(super) new_keys: HashMap<(u16, String), Appended>,
    /// Body locations the batch points at (new or moved): each must be
    /// durable before the batch is applied.
    pub(super) bodies: Vec<BodyLoc>,
    /// Dead letters removed earlier in this group.
    pub(super) gone_dead: HashSet<MessageId>,
    /// Admin operations (or the replay) in the group: flush and fsync
    /// before answering. Appends are answered from the journal.
    pub(super) needs_sync: bool,
    /// Messages appended in the group.
    pub(super) appended: usize,
    /// Client slots whose counters changed.
    pub(super) clients_touched: BTreeSet<u16>,
    /// The paused relays, when an operator changed them in this group.
    pub(super) paused_relays: Option<PausedRelays>,
    /// Suppression entries added (Some) or removed, in order.
    pub(super) suppressions: SuppressionChanges,
    /// Events of this group's changes, numbered when it is written.
    pub(super) events: Vec<crate::model::Event>,
    /// Index entries of the Append being taken, journaled after its bodies.
    pub(super) journal: Vec<super::journal::Entry>,
    /// The group wrote journal records or replayed them: its batch moves
    /// the replay position.
    pub(super) journaled: bool,
    /// The group replayed the journal at open.
    pub(super) replayed: bool,
}

impl Group {
    pub(super) fn due_add(&mut self, due_ms: u64) {
        self.due.push((due_ms / 1000, 1));
    }
    pub(super) fn due_remove(&mut self, due_ms: u64) {
        self.due.push((due_ms / 1000, -1));
    }
    pub(super) fn segment(&mut self, segment: u32, delta: i64) {
        *self.segments.entry(segment).or_insert(0) += delta;
    }
}

pub(super) enum Reply {
    Append(
        oneshot::Sender<Result<Vec<Appended>, GroupError>>,
        Vec<Appended>,
    ),
    Complete(oneshot::Sender<Result<(), GroupError>>),
    Admin(
        oneshot::Sender<Result<AdminResult, GroupError>>,
        AdminResult,
    ),
    Replay(std::sync::mpsc::Sender<Result<usize, GroupError>>, usize),
}

impl Reply {
    pub(super) fn send(self, result: Result<(), GroupError>) {
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
            Reply::Replay(tx, n) => {
                let _ = tx.send(result.map(|()| n));
            }
        }
    }
}

/// A committed group whose appends wait for durability.
pub(super) struct SyncJob {
    pub(super) replies: Vec<Reply>,
    /// Segments whose last reference was released in batches applied
    /// before this job was sent: deleted once this round's flush is done.
    pub(super) doomed: Vec<u32>,
    /// Events up to this sequence become visible once the job is done.
    pub(super) events_upto: u64,
}

/// The second stage of the pipeline: while the committer writes, syncs and
/// applies group N+1, this thread makes group N's index durable (sled
/// flush, fsync of sled's files) and then answers its callers. The bodies
/// were `sync_data`'d by the committer before their index was applied.
/// Jobs that queue up meanwhile share one round. A failed round fails the
/// spool: nothing after it is acknowledged.
pub(super) fn sync_stage(
    db: sled::Db,
    syncer: Arc<Mutex<Syncer>>,
    shared: Arc<Shared>,
    deleter: Deleter,
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
        shared.observer.fsynced(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            if !matches!(e, StoreError::Failed(_)) {
                shared.fail(format!("flush and fsync of the index: {e}"));
            }
        }
        let result = result.map_err(Arc::new);
        for job in jobs {
            // Visible before the callers are answered: an admin operation
            // that returned finds its events (an Enqueue's come with the
            // first fsync after its answer, `journal`).
            if result.is_ok() && job.events_upto > 0 {
                shared.events_visible.send_if_modified(|v| {
                    let newer = job.events_upto > *v;
                    *v = (*v).max(job.events_upto);
                    newer
                });
            }
            for r in job.replies {
                r.send(result.clone());
            }
            if result.is_ok() {
                if let Err(e) = deleter.delete(&job.doomed) {
                    tracing::warn!(error = %e, "could not delete an emptied segment file; it is removed at the next start");
                }
            }
        }
    }
}

impl Committer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let wait = match self.unsynced_since {
                Some(_) => super::events::EVENT_SYNC_DELAY,
                None => Duration::from_millis(500),
            };
            let first = match rx.recv_timeout(wait) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.sync_events_if_due();
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
            self.sync_events_if_due();
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
            match self.flush_and_sync() {
                Ok(()) => {
                    let upto = std::mem::take(&mut self.pending_visible);
                    self.shared
                        .events_visible
                        .send_if_modified(|v| std::mem::replace(v, (*v).max(upto)) < upto);
                }
                Err(e) => tracing::error!(error = %e, "final spool flush failed"),
            }
        }
    }

    /// Events of groups that were not fsynced become visible with a sync
    /// asked for once they have waited `EVENT_SYNC_DELAY`.
    fn sync_events_if_due(&mut self) {
        if self
            .unsynced_since
            .is_some_and(|t| t.elapsed() >= super::events::EVENT_SYNC_DELAY)
            && self.shared.failed().is_none()
        {
            self.send_job(Vec::new());
        }
    }

    /// Bodies synced, sled flush + fsync of its files, then deletion of
    /// segments whose last reference is now durably gone.
    pub(super) fn flush_and_sync(&mut self) -> Result<(), StoreError> {
        self.segments.sync()?;
        self.db.flush()?;
        self.syncer.lock().expect("syncer").sync()?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.segments.delete_doomed()?;
        Ok(())
    }

    /// Hands a job to the fsync stage; if it has stopped, answers it.
    pub(super) fn send_job(&mut self, replies: Vec<Reply>) {
        self.unsynced_since = None;
        let job = SyncJob {
            replies,
            doomed: self.segments.take_doomed(),
            events_upto: std::mem::take(&mut self.pending_visible),
        };
        if let Some(Err(mpsc::SendError(job))) = self.sync_tx.as_ref().map(|tx| tx.send(job)) {
            for r in job.replies {
                r.send(Err(Arc::new(StoreError::Closed)));
            }
        }
    }

    pub(super) fn commit_group(&mut self, ops: Vec<Op>) {
        if let Some(why) = self.shared.failed() {
            let msg = Arc::new(StoreError::Failed(why));
            for op in ops {
                match op {
                    Op::Append { reply, .. } => drop(reply.send(Err(msg.clone()))),
                    Op::Complete { reply, .. } => drop(reply.send(Err(msg.clone()))),
                    Op::Admin { reply, .. } => drop(reply.send(Err(msg.clone()))),
                    Op::Replay { reply, .. } => drop(reply.send(Err(msg.clone()))),
                    Op::Unreadable { .. } | Op::Close => {}
                }
            }
            return;
        }
        let before = self.counters;
        let admin_before = self.admin;
        let events_before = self.events;
        let clients_before = self.clients.clone();
        let now = now_ms();
        let mut g = Group::default();
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Append { messages, reply } => {
                    // Answered once the segment (bodies and journal) is
                    // synced and the batch applied: the journal is the
                    // record of truth, sled's fsync follows (`journal`).
                    g.appended += messages.len();
                    let results = messages
                        .into_iter()
                        .map(|m| self.append_one(m, now, &mut g))
                        .collect();
                    if !g.journal.is_empty() {
                        let journal = super::journal::Journal {
                            entries: std::mem::take(&mut g.journal),
                        };
                        self.segments.append_journal(&codec::encode(&journal));
                        g.journaled = true;
                    }
                    replies.push(Reply::Append(reply, results));
                }
                Op::Replay { entries, reply } => {
                    g.needs_sync = true;
                    g.journaled = true;
                    g.replayed = true;
                    let n = self.replay(entries, &mut g);
                    replies.push(Reply::Replay(reply, n));
                }
                Op::Complete { outcomes, reply } => {
                    for c in outcomes {
                        self.complete_one(c, now, &mut g);
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
        let events_upto = self.write_events(&mut g);
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
        if g.journaled {
            let at = super::journal::encode_position(self.segments.position());
            g.batch.insert(key::LOG, &at);
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
                    self.shared.observer.group_committed(g.appended as u64);
                }
                *self.shared.counters.lock().expect("counters lock") = self.counters;
                if events_upto > 0 {
                    *self.shared.event_state.lock().expect("event state") = self.events;
                    self.pending_visible = events_upto;
                    if !needs_sync {
                        self.unsynced_since.get_or_insert_with(Instant::now);
                    }
                }
                *self.shared.admin.lock().expect("admin lock") = self.admin;
                if let Some(paused) = g.paused_relays.take() {
                    *self
                        .shared
                        .paused_relays
                        .lock()
                        .expect("paused relays lock") = paused;
                }
                if !g.suppressions.is_empty() {
                    let mut map = self.shared.suppressions.lock().expect("suppressions lock");
                    for (address, entry) in g.suppressions.drain(..) {
                        match entry {
                            Some(e) => map.insert(address, e),
                            None => map.remove(&address),
                        };
                    }
                }
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
                if g.replayed {
                    self.segments.doom_unreferenced();
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
                self.events = events_before;
                self.clients = clients_before;
                self.segments.abandon_pending();
                let msg = Arc::new(e);
                for r in replies {
                    r.send(Err(msg.clone()));
                }
            }
        }
    }
}
