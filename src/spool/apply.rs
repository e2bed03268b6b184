//! How each operation (append, outcome, admin change, unreadable message,
//! housekeeping) changes the group being built.

use super::commit::*;
use super::events::Attempt;
use super::key;
use super::settle::{settle, Next};
use super::*;
use crate::model::EventKind;

/// A retried message whose segment has at most this many live bodies left
/// is moved to the active segment.
pub(super) const RELOCATE_BELOW: u64 = 256;

impl Committer {
    pub(super) fn append_one(&mut self, m: NewMessage, now: u64, g: &mut Group) -> Appended {
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
        let body = self.segments.append(id.0, &m.raw);
        let entry = super::journal::Entry::new(id, now, body, m);
        let appended = self.index_append(&entry, client, g);
        g.journal.push(entry);
        appended
    }

    pub(super) fn current(&self, id: MessageId, g: &Group) -> Option<Record> {
        if let Some(r) = g.overlay.get(&id) {
            return r.clone();
        }
        let v = self.shared.tree.get(key::message(id)).ok()??;
        codec::decode(&v).ok()
    }

    pub(super) fn complete_one(&mut self, c: Completion, now: u64, g: &mut Group) {
        let id = c.id;
        // Already gone (acked by an earlier lease, or cancelled): nothing to do.
        let Some(mut record) = self.current(id, g) else {
            return;
        };
        let before: Vec<(RcptState, u32)> = record
            .rcpts_full()
            .iter()
            .map(|r| (r.state, r.attempts))
            .collect();
        let next = settle(&mut record, c.outcome, &c.accepted_reply, now);
        if !matches!(next, Next::Postpone { .. }) {
            let states: Vec<RcptState> = before.iter().map(|b| b.0).collect();
            self.suppress_bounced(id, &record, &states, now, g);
            let next_attempt = match &next {
                Next::Retry { due_ms, .. } => *due_ms,
                _ => 0,
            };
            let attempt = Attempt {
                relay: &c.relay,
                next_ms: next_attempt,
            };
            self.recipient_events(id, &record, &before, attempt, now, g);
        }
        // Dead letters keep their bytes in sled, not in a segment: without
        // them there is no dead letter to keep (nor to requeue).
        let dead_raw = match &next {
            Next::Finish(Finish::Dead, _) => match self.shared.bodies.read(id.0, record.body) {
                Ok(raw) => raw,
                Err(e) => return self.fault(id, record, Fault::of(&e), now, g),
            },
            _ => Vec::new(),
        };
        g.batch
            .remove(&key::due(record.lane, record.client, record.due_ms, id));
        g.due_remove(record.due_ms);
        match next {
            Next::Postpone { due_ms, error } => {
                record.due_ms = due_ms;
                record.last_error = error;
                g.batch
                    .insert(&key::due(record.lane, record.client, due_ms, id), &[]);
                g.due_add(due_ms);
                g.batch.insert(&key::message(id), codec::encode(&record));
                g.overlay.insert(id, Some(record));
            }
            Next::Finish(Finish::Dead, reason) => {
                let mut e = self.event(EventKind::DeadLettered, id, &record, now);
                e.reply = reason.clone();
                e.relay = c.relay;
                g.events.push(e);
                self.unqueue(id, &record, g).dead_total += 1;
                let raw = dead_raw;
                self.counters.dead_bytes += raw.len() as u64;
                record.last_error = reason.clone();
                let dead = DeadRecord {
                    record,
                    raw,
                    died_ms: now,
                    reason,
                };
                g.batch.insert(&key::dead(id), codec::encode(&dead));
                self.counters.dead += 1;
                self.counters.dead_total += 1;
            }
            Next::Finish(finish, _) => {
                let client = self.unqueue(id, &record, g);
                if finish != Finish::Expired {
                    client.delivered_total += 1;
                    self.counters.delivered_total += 1;
                }
                let delivered = DeliveredRecord {
                    lane: record.lane,
                    enqueued_ms: record.enqueued_ms,
                    delivered_ms: now,
                    attempts: record.attempts,
                    message_id: record.message_id,
                    envelope_to: record.envelope_to,
                    rcpts: record.rcpts,
                    client: record.client,
                };
                let value = codec::encode(&delivered);
                self.keep_final(id, key::delivered(id), value, key::EXPIRY_DELIVERED, now, g);
            }
            Next::Retry { due_ms, error } => {
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
        }
    }

    /// The slot of a client name, registering a new name in this group.
    pub(super) fn client_slot(&mut self, name: &str, g: &mut Group) -> u16 {
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

    /// Takes a queued message out of the queue (its due key is gone
    /// already): its index entry, its body's count in its segment, what its
    /// lane, the spool and its client counted. Returns the client's counters,
    /// to count what became of it.
    fn unqueue(&mut self, id: MessageId, record: &Record, g: &mut Group) -> &mut ClientCounters {
        g.batch.remove(&key::message(id));
        g.segment(record.body.segment, -1);
        less(&mut self.counters.queued[record.lane.index()], 1);
        less(&mut self.counters.queued_bytes, u64::from(record.body.len));
        g.overlay.insert(id, None);
        self.client_add(record.client, -1, -i64::from(record.body.len), g)
    }

    /// Keeps a finished message's status (delivered, cancelled) for
    /// `delivered_retention`, with the expiry entry that removes it.
    fn keep_final(
        &self,
        id: MessageId,
        status_key: [u8; 9],
        value: Vec<u8>,
        kind: u8,
        now: u64,
        g: &mut Group,
    ) {
        let expires = now + self.options.delivered_retention.as_millis() as u64;
        g.batch.insert(&status_key, value);
        g.batch
            .insert(key::expiry(expires, kind, &id.0.to_be_bytes()), &[]);
    }

    /// Changes a client's queued count and bytes; returns its counters.
    pub(super) fn client_add(
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
    pub(super) fn admin_op(&mut self, op: AdminOp, now: u64, g: &mut Group) -> AdminResult {
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
            AdminOp::SetPausedRelays(names) => {
                let names = PausedRelays(names);
                g.batch.insert(key::PAUSED_RELAYS, codec::encode(&names));
                g.paused_relays = Some(names);
            }
            AdminOp::SetReaderCursor { reader, seq } => {
                g.batch
                    .insert(super::events::cursor_key(&reader), &seq.to_be_bytes());
            }
            AdminOp::Suppress(entries) => {
                for s in entries {
                    self.suppress(s, g);
                    result.count += 1;
                }
            }
            AdminOp::Unsuppress(addresses) => {
                for a in addresses {
                    if self.unsuppress(&a, now, g) {
                        result.count += 1;
                    }
                }
            }
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
    pub(super) fn dead_letter(&self, id: MessageId, g: &Group) -> Option<DeadRecord> {
        if g.gone_dead.contains(&id) {
            return None;
        }
        let v = self.shared.tree.get(key::dead(id)).ok()??;
        codec::decode(&v).ok()
    }

    pub(super) fn cancel_one(
        &mut self,
        id: MessageId,
        reason: &str,
        now: u64,
        g: &mut Group,
    ) -> bool {
        let Some(record) = self.current(id, g) else {
            return false;
        };
        g.batch
            .remove(&key::due(record.lane, record.client, record.due_ms, id));
        g.due_remove(record.due_ms);
        self.unqueue(id, &record, g);
        self.admin.cancelled_total += 1;
        let mut e = self.event(EventKind::Cancelled, id, &record, now);
        e.reply = reason.to_string();
        g.events.push(e);
        let mut rcpts = record.rcpts_full();
        for r in rcpts.iter_mut().filter(|r| r.state == RcptState::Pending) {
            r.finish(RcptState::Cancelled, reason, now);
        }
        let cancelled = CancelledRecord {
            lane: record.lane,
            enqueued_ms: record.enqueued_ms,
            cancelled_ms: now,
            reason: reason.to_string(),
            message_id: record.message_id,
            envelope_to: record.envelope_to,
            rcpts,
            client: record.client,
        };
        let value = codec::encode(&cancelled);
        self.keep_final(id, key::cancelled(id), value, key::EXPIRY_CANCELLED, now, g);
        true
    }

    /// A dead letter back in the queue under its own id: its bytes go to
    /// the active segment, attempts and max_age start again.
    pub(super) fn requeue_one(&mut self, id: MessageId, now: u64, g: &mut Group) -> bool {
        let Some(dead) = self.dead_letter(id, g) else {
            return false;
        };
        let mut record = dead.record;
        record.body = self.segments.append(id.0, &dead.raw);
        g.segment(record.body.segment, 1);
        g.bodies.push(record.body);
        record.attempts = 0;
        record.last_error = String::new();
        // Every recipient not delivered is tried again (one on the
        // suppression list by then is skipped when its turn comes).
        record.rcpts = record
            .rcpts_full()
            .into_iter()
            .map(|r| match r.state {
                RcptState::Delivered => r,
                _ => Rcpt::pending(0),
            })
            .collect();
        record.due_ms = now;
        record.first_due_ms = now;
        g.batch.remove(&key::dead(id));
        g.gone_dead.insert(id);
        g.batch
            .insert(&key::due(record.lane, record.client, now, id), &[]);
        g.due_add(now);
        g.batch.insert(&key::message(id), codec::encode(&record));
        g.events
            .push(self.event(EventKind::Requeued, id, &record, now));
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
    pub(super) fn unreadable(
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
    pub(super) fn fault(
        &mut self,
        id: MessageId,
        mut record: Record,
        fault: Fault,
        now: u64,
        g: &mut Group,
    ) {
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
                let mut e = self.event(EventKind::Quarantined, id, &record, now);
                e.reply = why.to_string();
                g.events.push(e);
                self.unqueue(id, &record, g);
                g.batch
                    .insert(key::quarantine(&key::message(id)), codec::encode(&record));
                self.counters.quarantined += 1;
            }
        }
    }

    /// Removes idempotency keys and delivered statuses past their time, in
    /// chunks, until none is left or the round's time is up (so the sweep
    /// keeps up with any rate of keyed enqueues and acks); asks the fsync
    /// stage to delete emptied segments after its next flush.
    pub(super) fn housekeep(&mut self) {
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
        while self.last_housekeeping.elapsed() < HOUSEKEEPING_BUDGET && self.trim_events(now) {}
        if self.segments.has_doomed() && self.shared.failed().is_none() {
            self.send_job(Vec::new());
        }
    }

    /// One chunk of the expiry sweep; returns how many entries it removed.
    pub(super) fn sweep_expired(&mut self, now: u64, end: &[u8]) -> usize {
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
                    key::EXPIRY_SUPPRESSION => {
                        self.sweep_suppression(rest, now, &mut batch);
                        None
                    }
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
