//! The suppression list: addresses never sent to again (a hard bounce, or
//! an operator's word) until their entry expires.
//!
//! Addresses compare as mail servers compare them: the domain without
//! regard to case, the local part exactly as given (RFC 5321 §2.4: only
//! the receiving server may fold it). Entries live under
//! `p <domain> 0x00 <local>` (so one domain is one key range) with an
//! expiry entry (`x … p`), and in memory for the lookups Enqueue and the
//! workers make, loaded at open and changed only after a group commits.

use super::commit::*;
use super::key;
use super::*;

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Suppression {
    /// The address, its domain lowercased (`normalize`).
    pub address: String,
    /// Why: a bounce class (`bad_mailbox`) or the operator's reason.
    pub reason: String,
    /// The reply that caused it ("" when an operator added it).
    pub reply: String,
    /// The message whose bounce caused it (0: an operator added it).
    pub message_id: u64,
    /// The client that sent that message, or the operator who added it.
    pub client: String,
    pub created_ms: u64,
    /// 0: never expires.
    pub expires_ms: u64,
}

impl codec::Versioned for Suppression {}

/// What a lookup says of a suppressed address.
#[derive(Debug, Clone, PartialEq)]
pub struct Suppressed {
    pub reason: String,
    pub since_ms: u64,
}

/// The address as the list compares it: the domain lowercased, the local
/// part as given. None when it has no `@`.
pub fn normalize(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some(format!("{local}@{}", domain.to_ascii_lowercase()))
}

fn entry_key(normalized: &str) -> Vec<u8> {
    let (local, domain) = normalized.rsplit_once('@').unwrap_or((normalized, ""));
    let mut k = Vec::with_capacity(2 + normalized.len());
    k.push(b'p');
    k.extend_from_slice(domain.as_bytes());
    k.push(0);
    k.extend_from_slice(local.as_bytes());
    k
}

fn address_of(k: &[u8]) -> Option<String> {
    let rest = k.strip_prefix(b"p")?;
    let zero = rest.iter().position(|&b| b == 0)?;
    let domain = std::str::from_utf8(&rest[..zero]).ok()?;
    let local = std::str::from_utf8(&rest[zero + 1..]).ok()?;
    Some(format!("{local}@{domain}"))
}

/// Loads the list into memory at open (expired entries are left to the
/// sweep and skipped by lookups).
pub(super) fn load(tree: &sled::Tree) -> Result<SuppressionMap, StoreError> {
    let mut map = HashMap::new();
    for item in tree.scan_prefix(b"p") {
        let (_, v) = item?;
        if let Ok(s) = codec::decode::<Suppression>(&v) {
            map.insert(s.address, (s.reason, s.created_ms, s.expires_ms));
        }
    }
    Ok(map)
}

/// A page of the list.
#[derive(Debug, Default, PartialEq)]
pub struct SuppressionPage {
    pub entries: Vec<Suppression>,
    /// Where the next page starts ("" when this was the last).
    pub next_cursor: String,
}

impl Store {
    /// Whether `address` is suppressed now, and why. Memory only.
    pub fn suppressed(&self, address: &str) -> Option<Suppressed> {
        let map = self.shared.suppressions.lock().expect("suppressions lock");
        if map.is_empty() {
            return None;
        }
        let (reason, since_ms, expires_ms) = map.get(&normalize(address)?)?;
        (*expires_ms == 0 || *expires_ms > now_ms()).then(|| Suppressed {
            reason: reason.clone(),
            since_ms: *since_ms,
        })
    }

    /// Whether `client` enqueued a message with this idempotency key within
    /// the window: a retry of it gets the first message's id, whatever
    /// became of its recipients since (Enqueue does not screen it).
    pub fn knows_idempotency_key(&self, client: &str, idempotency_key: &str) -> bool {
        let Some(slot) = self.client_slot(client) else {
            return false;
        };
        match self.shared.tree.get(key::idem(slot, idempotency_key)) {
            Ok(Some(v)) => codec::decode::<IdemEntry>(&v).is_ok_and(|e| e.expires_ms > now_ms()),
            _ => false,
        }
    }

    /// Entries in use (expired ones not yet swept are not counted).
    pub fn suppression_count(&self) -> u64 {
        let now = now_ms();
        let map = self.shared.suppressions.lock().expect("suppressions lock");
        map.values().filter(|e| e.2 == 0 || e.2 > now).count() as u64
    }

    /// Up to `max` entries in key order (by domain, then local part),
    /// after `cursor` (an address a previous page ended with; "" = from the
    /// start); only `address` if given, else only `domain` if given.
    pub fn list_suppressions(
        &self,
        address: Option<&str>,
        domain: Option<&str>,
        cursor: &str,
        max: usize,
    ) -> Result<SuppressionPage, StoreError> {
        let now = now_ms();
        let live = |s: &Suppression| s.expires_ms == 0 || s.expires_ms > now;
        if let Some(a) = address {
            let entries = match normalize(a) {
                Some(n) => self
                    .shared
                    .tree
                    .get(entry_key(&n))?
                    .and_then(|v| codec::decode::<Suppression>(&v).ok())
                    .filter(live)
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            };
            return Ok(SuppressionPage {
                entries,
                next_cursor: String::new(),
            });
        }
        let prefix = match domain {
            Some(d) => {
                let mut p = vec![b'p'];
                p.extend_from_slice(d.to_ascii_lowercase().as_bytes());
                p.push(0);
                p
            }
            None => vec![b'p'],
        };
        let mut start = match normalize(cursor) {
            Some(c) => entry_key(&c),
            None => prefix.clone(),
        };
        if !cursor.is_empty() {
            start.push(0); // just after the cursor's own key
        }
        let mut entries = Vec::new();
        let mut more = false;
        for item in self.shared.tree.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Ok(s) = codec::decode::<Suppression>(&v) else {
                continue;
            };
            if !live(&s) {
                continue;
            }
            if entries.len() == max {
                more = true;
                break;
            }
            entries.push(s);
        }
        let next_cursor = match (more, entries.last()) {
            (true, Some(last)) => last.address.clone(),
            _ => String::new(),
        };
        Ok(SuppressionPage {
            entries,
            next_cursor,
        })
    }
}

impl Committer {
    /// Adds (or replaces) an entry in this group.
    pub(super) fn suppress(&mut self, s: Suppression, g: &mut Group) {
        let k = entry_key(&s.address);
        if s.expires_ms != 0 {
            g.batch.insert(
                key::expiry(s.expires_ms, key::EXPIRY_SUPPRESSION, &k[1..]),
                &[],
            );
        }
        g.batch.insert(k, codec::encode(&s));
        g.suppressions.push((
            s.address.clone(),
            Some((s.reason, s.created_ms, s.expires_ms)),
        ));
    }

    /// Whether an entry for this normalized address is in force, counting
    /// this group's changes.
    pub(super) fn is_suppressed(&self, normalized: &str, now: u64, g: &Group) -> bool {
        if let Some((_, e)) = g.suppressions.iter().rev().find(|(a, _)| a == normalized) {
            return e.as_ref().is_some_and(|e| e.2 == 0 || e.2 > now);
        }
        let map = self.shared.suppressions.lock().expect("suppressions lock");
        map.get(normalized).is_some_and(|e| e.2 == 0 || e.2 > now)
    }

    /// Removes an entry; whether there was one in force.
    pub(super) fn unsuppress(&mut self, normalized: &str, now: u64, g: &mut Group) -> bool {
        let was = self.is_suppressed(normalized, now, g);
        g.batch.remove(entry_key(normalized));
        g.suppressions.push((normalized.to_string(), None));
        was
    }

    /// Recipients that bounced in this outcome with a class the policy
    /// suppresses go on the list (an entry already in force is kept).
    pub(super) fn suppress_bounced(
        &mut self,
        id: MessageId,
        record: &Record,
        before: &[RcptState],
        now: u64,
        g: &mut Group,
    ) {
        for (i, r) in record.rcpts.iter().enumerate() {
            let newly = before.get(i) == Some(&RcptState::Pending) && r.state == RcptState::Bounced;
            let Some(class) = r
                .class
                .filter(|c| newly && self.options.suppression.classes.contains(c))
            else {
                continue;
            };
            let Some(address) = normalize(&record.envelope_to[i]) else {
                continue;
            };
            if self.is_suppressed(&address, now, g) {
                continue;
            }
            // Fsynced with the group, like an operator's change: the entry
            // must outlive a power cut as the bounce that caused it does
            // not need to (a lost bounce is sent again and bounces again).
            g.needs_sync = true;
            let ttl = self.options.suppression.expiry.as_millis() as u64;
            let client = self
                .clients
                .names
                .get(&record.client)
                .cloned()
                .unwrap_or_default();
            self.suppress(
                Suppression {
                    address,
                    reason: class.name().to_string(),
                    reply: r.last_reply.clone(),
                    message_id: id.0,
                    client,
                    created_ms: now,
                    expires_ms: if ttl == 0 { 0 } else { now + ttl },
                },
                g,
            );
        }
    }

    /// The sweep found an expiry entry of the list: removes the entry if
    /// it is still the one that expires (not renewed since).
    pub(super) fn sweep_suppression(&self, rest: &[u8], now: u64, batch: &mut sled::Batch) {
        let mut k = vec![b'p'];
        k.extend_from_slice(rest);
        let Ok(Some(v)) = self.shared.tree.get(&k) else {
            return;
        };
        let expired = codec::decode::<Suppression>(&v)
            .map(|s| s.expires_ms != 0 && s.expires_ms <= now)
            .unwrap_or(true);
        if expired {
            batch.remove(k.clone());
            if let Some(a) = address_of(&k) {
                self.shared
                    .suppressions
                    .lock()
                    .expect("suppressions lock")
                    .remove(&a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_compare_by_domain_case_only() {
        assert_eq!(
            normalize("Bob@Example.ORG").as_deref(),
            Some("Bob@example.org")
        );
        assert_ne!(normalize("bob@example.org"), normalize("Bob@example.org"));
        assert_eq!(normalize("nobody"), None);
        assert_eq!(normalize("@example.org"), None);
        let k = entry_key("Bob@example.org");
        assert_eq!(address_of(&k).as_deref(), Some("Bob@example.org"));
        assert!(k.starts_with(b"pexample.org\0"));
    }
}
