//! Leases: which due messages go to which delivery worker, and for how long.
//!
//! Invariants:
//! - Leases live in memory only: a crash frees them all, and every message
//!   that was in flight is due again on the next start.
//! - A message is in at most one live lease. A lease ends in exactly one of
//!   ack, retry or dead letter, applied by the store; a lease that passes its
//!   deadline is dropped by [`Scheduler::expire`], and its messages, whose due
//!   keys never left the spool, are leased again.
//! - An outcome from an expired lease is ignored, except an ack: the relay
//!   took the message, so it is removed if it is still there.
//! - Lanes are served by start-time fair queueing (`lanes::LaneClock`,
//!   weights transactional 8, normal 3, bulk 1): while transactional mail
//!   is due, at most 2 leases of other lanes come before its next one,
//!   whatever the history (an idle lane banks nothing, a busy one owes
//!   nothing for the others' idle time); bulk still progresses.
//! - Within a lane, clients take turns (round robin over the client slots
//!   with due mail): a flood from one client delays another client's mail
//!   of the same lane by at most one lease per client with mail due.
//! - A paused lane (PauseDelivery, persisted by the store) is never leased;
//!   its messages stay queued and Enqueue keeps accepting.
//! - Leasing cost is the batch size plus the leases in flight, never the
//!   backlog: the store scans the due index from its oldest key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::delivery::lanes::LaneClock;
use crate::model::{now_ms, Completion, Lane, Leased, MessageId, Outcome};
use crate::spool::{Store, StoreError};

/// A batch of messages handed to one worker until `deadline`.
#[derive(Debug)]
pub struct Lease {
    pub token: u64,
    pub lane: Lane,
    pub deadline: Instant,
    pub messages: Vec<Leased>,
}

#[derive(Default)]
struct Table {
    /// id → (lease token, deadline)
    leased: HashMap<MessageId, (u64, Instant)>,
    next_token: u64,
    /// Which lane the next lease serves (`lanes`: the bound, tested as data).
    lanes: LaneClock,
    /// Per lane: the position in the client slots whose turn is next.
    next_client: [usize; 3],
}

pub struct Scheduler {
    store: Store,
    /// Held while a lease is made (index scan and body reads, on a blocking
    /// thread), so two leases never take the same message; `table` is only
    /// held for moments, so completing a lease never waits behind a scan.
    leasing: Mutex<()>,
    table: Mutex<Table>,
    /// Wakes idle workers when new mail arrives.
    work: Notify,
    batch: usize,
    lease_timeout: Duration,
}

impl Scheduler {
    pub fn new(store: Store, batch: usize, lease_timeout: Duration) -> Scheduler {
        Scheduler {
            store,
            leasing: Mutex::new(()),
            table: Mutex::new(Table::default()),
            work: Notify::new(),
            batch,
            lease_timeout,
        }
    }

    /// Leases up to `batch` due messages from the lane whose turn it is, or
    /// the next lane that has any. None when nothing is due.
    /// Blocks (sled scans, body reads): call from a blocking thread.
    pub fn try_lease(&self) -> Option<Lease> {
        let _leasing = self.leasing.lock().expect("leasing");
        let now = now_ms();
        let (order, next_client) = {
            let t = self.table.lock().expect("lease table");
            (
                t.lanes.order(self.store.admin_state().paused),
                t.next_client,
            )
        };
        for lane in order {
            // Within the lane, clients take turns: one client's backlog
            // never holds another's mail for more than a lease per client.
            let slots = self.store.client_slots();
            let start = next_client[lane.index()];
            let mut messages = Vec::new();
            let mut taken_turn = 0;
            for k in 0..slots.len() {
                let turn = (start + k) % slots.len();
                messages = self.store.due(lane, slots[turn], now, self.batch, |id| {
                    self.table
                        .lock()
                        .expect("lease table")
                        .leased
                        .contains_key(&id)
                });
                if !messages.is_empty() {
                    taken_turn = turn + 1;
                    break;
                }
            }
            if messages.is_empty() {
                continue;
            }
            let mut table = self.table.lock().expect("lease table");
            table.next_client[lane.index()] = taken_turn;
            table.lanes.taken(lane);
            table.next_token += 1;
            let token = table.next_token;
            let deadline = Instant::now() + self.lease_timeout;
            for m in &messages {
                table.leased.insert(m.id, (token, deadline));
            }
            return Some(Lease {
                token,
                lane,
                deadline,
                messages,
            });
        }
        None
    }

    /// Waits for a lease; None once `stop` is true. The scan runs on a
    /// blocking thread, never on the runtime's workers. A worker that got
    /// a full batch wakes one more: more may be due (one wake per enqueue
    /// would otherwise leave the others asleep until their poll).
    pub async fn next_lease(
        self: &Arc<Self>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Option<Lease> {
        let mut stop = stop.clone();
        loop {
            if *stop.borrow() {
                return None;
            }
            let notified = self.work.notified();
            let this = self.clone();
            let lease = tokio::task::spawn_blocking(move || this.try_lease())
                .await
                .ok()
                .flatten();
            if let Some(lease) = lease {
                if lease.messages.len() >= self.batch {
                    self.work.notify_one();
                }
                return Some(lease);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// New mail was stored, or leases ended: wake one idle worker (it
    /// wakes the next if it finds a full batch).
    pub fn wake(&self) {
        self.work.notify_one();
    }

    /// Ends the lease of the messages given, one outcome each (a lease may
    /// be completed in several parts).
    pub async fn complete(
        &self,
        lease: &Lease,
        outcomes: Vec<impl Into<Completion>>,
    ) -> Result<(), StoreError> {
        let outcomes: Vec<Completion> = outcomes.into_iter().map(Into::into).collect();
        let ids: Vec<MessageId> = outcomes.iter().map(|c| c.id).collect();
        let outcomes: Vec<_> = {
            let table = self.table.lock().expect("lease table");
            outcomes
                .into_iter()
                .filter(|c| {
                    let id = &c.id;
                    let current = table.leased.get(id).map(|(t, _)| *t) == Some(lease.token);
                    let acked = matches!(c.outcome, Outcome::Ack);
                    if !current && !acked {
                        tracing::debug!(%id, "outcome of an expired lease ignored");
                    }
                    current || acked
                })
                .collect()
        };
        let result = self.store.complete(outcomes).await;
        // Whatever happened on disk, these messages' lease is over: they
        // are gone, rescheduled, or (on error) still due. A lease may be
        // completed in parts; the rest stays leased.
        let mut table = self.table.lock().expect("lease table");
        for id in &ids {
            if table.leased.get(id).map(|(t, _)| *t) == Some(lease.token) {
                table.leased.remove(id);
            }
        }
        drop(table);
        self.wake();
        result
    }

    /// Drops leases past their deadline; their messages are due again.
    pub fn expire(&self, now: Instant) -> usize {
        let mut table = self.table.lock().expect("lease table");
        let before = table.leased.len();
        table.leased.retain(|_, (_, deadline)| *deadline > now);
        let expired = before - table.leased.len();
        if expired > 0 {
            tracing::warn!(expired, "leases expired; their messages are due again");
            drop(table);
            self.wake();
        }
        expired
    }

    pub fn in_flight(&self) -> u64 {
        self.table.lock().expect("lease table").leased.len() as u64
    }

    pub fn is_leased(&self, id: MessageId) -> bool {
        self.table
            .lock()
            .expect("lease table")
            .leased
            .contains_key(&id)
    }

    /// Runs `expire` periodically until `stop`.
    pub async fn reap(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let period =
            (self.lease_timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => { self.expire(Instant::now()); }
                _ = stop.changed() => if *stop.borrow() { return },
            }
        }
    }
}
