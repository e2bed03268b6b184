//! The spool's reads: due messages for the scheduler, one message's status,
//! index pages for the operator queries, bodies, and the snapshot the
//! QueueStats view is made from. Reads go to sled directly (never through
//! the committer).

use super::*;

impl Store {
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
            oldest_due_ms: self.oldest_due(now_ms),
            group_commits: self.shared.group_commits.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            unacknowledged_dropped: self.shared.ghosts_dropped.load(Ordering::Relaxed),
        }
    }

    /// Per lane, the earliest due time of a message due by `now_ms` (the
    /// one that has waited longest since it became due, in flight or not).
    /// One seek per lane and client.
    fn oldest_due(&self, now_ms: u64) -> [Option<u64>; 3] {
        let slots = self.client_slots();
        Lane::ALL.map(|lane| {
            slots
                .iter()
                .filter_map(|&slot| {
                    let from = key::due(lane, slot, 0, MessageId(0));
                    let to = key::due(lane, slot, now_ms.saturating_add(1), MessageId(0));
                    let (k, _) = self.shared.tree.range(from..to).next()?.ok()?;
                    key::parse_due(&k).map(|(_, _, due, _)| due)
                })
                .min()
        })
    }
}
