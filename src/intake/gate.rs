//! The one place that decides what enters the spool: the caller's policy,
//! quota and rate (`auth::Client::admit`), then the spool's room
//! (`admission::admit`). Both `Enqueue` and `EnqueueBatch` go through it
//! (so does what another node's Transfer sends, as an `EnqueueBatch`): a
//! request opens a `Request` and admits its validated messages one by one;
//! nothing is written until they are all decided.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::admission::{admit, SpoolLimits, Usage};
use super::auth::{Client, Denial, Facts};
use crate::model::{Lane, NewMessage};
use crate::spool::{Store, INDEX_BYTES_PER_MESSAGE};

/// What admission needs of the node; shared by every request.
pub struct Intake {
    pub store: Store,
    pub spool_limits: SpoolLimits,
    /// Free bytes on the spool's filesystem, sampled by the server.
    pub disk_free: Arc<AtomicU64>,
    /// Bytes admitted since that sample (reset by the sampler), so that a
    /// burst between two samples cannot run the disk full.
    pub admitted_since_sample: Arc<AtomicU64>,
    /// Messages refused for space.
    pub refused: Arc<AtomicU64>,
}

/// Why a message may not enter, before anything was written.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// The client's policy forbids it: (field, reason).
    Denied(&'static str, String),
    /// Over the client's quota or rate, or no room in the spool: retry after.
    Exhausted(String, Duration),
    /// Every recipient is on the suppression list: (field, reason).
    Suppressed(String, String),
}

impl Intake {
    /// What the spool holds and has room for now; `delivery_rate` (per
    /// second) sets the retry delays.
    pub fn usage(&self, delivery_rate: f64) -> Usage {
        let c = self.store.counters();
        Usage {
            spool_bytes: c.spool_bytes(),
            disk_free_bytes: self
                .disk_free
                .load(Ordering::Relaxed)
                .saturating_sub(self.admitted_since_sample.load(Ordering::Relaxed)),
            delivery_rate_per_second: delivery_rate,
            bytes_per_message: c.queued_bytes as f64 / c.queued_total().max(1) as f64,
        }
    }

    /// Whether a transactional message of the average queued size (or a
    /// small one when empty) would be admitted now: the readiness the
    /// health service reports.
    pub fn accepting_transactional(&self, delivery_rate: f64) -> bool {
        let mut usage = self.usage(delivery_rate);
        let bytes = usage.bytes_per_message.max(1024.0) as u64 + INDEX_BYTES_PER_MESSAGE;
        usage.spool_bytes += bytes;
        usage.disk_free_bytes = usage.disk_free_bytes.saturating_sub(bytes);
        admit(Lane::Transactional, &usage, &self.spool_limits).is_ok()
    }

    /// One request of `client`'s.
    pub fn request<'a>(&'a self, client: &'a Client, delivery_rate: f64) -> Request<'a> {
        Request {
            intake: self,
            client,
            usage: self.usage(delivery_rate),
            delivery_rate,
            committed: None,
            pending: (0, 0),
        }
    }
}

/// One request's admission: the spool's usage as it admits, the client's
/// committed usage (read once, and only when it has a quota) and what the
/// request has admitted so far.
pub struct Request<'a> {
    intake: &'a Intake,
    client: &'a Client,
    usage: Usage,
    delivery_rate: f64,
    committed: Option<(u64, u64)>,
    pending: (u64, u64),
}

impl Request<'_> {
    /// Admits one validated message (`raw`: it came as raw bytes): policy,
    /// quota and rate, then room; an admitted message carries its client.
    pub fn admit(&mut self, mut m: NewMessage, raw: bool) -> Result<NewMessage, Refused> {
        let bytes = m.raw.len() as u64;
        let facts = Facts {
            lane: m.lane,
            from: &m.sender,
            envelope_from: &m.envelope_from,
            raw,
            bytes,
        };
        let (store, name) = (&self.intake.store, &self.client.name);
        let committed = &mut self.committed;
        let queued = || *committed.get_or_insert_with(|| store.client_usage(name));
        self.client
            .admit(&facts, queued, &mut self.pending)
            .map_err(|d| match d {
                Denial::Policy(field, reason) => Refused::Denied(field, reason),
                Denial::Quota(reason) => Refused::Exhausted(reason, quota_wait(self.delivery_rate)),
                Denial::Rate(reason, wait) => Refused::Exhausted(reason, wait),
            })?;
        if let Err(r) = self.screen(&mut m) {
            // Not stored: it does not count against the client's quota.
            self.pending.0 -= 1;
            self.pending.1 -= bytes;
            return Err(r);
        }
        let stored = bytes + INDEX_BYTES_PER_MESSAGE;
        let mut after = self.usage;
        after.spool_bytes += stored;
        after.disk_free_bytes = after.disk_free_bytes.saturating_sub(stored);
        if let Err(r) = admit(m.lane, &after, &self.intake.spool_limits) {
            // Not stored: it does not count against the client's quota.
            self.pending.0 -= 1;
            self.pending.1 -= bytes;
            self.intake.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Exhausted(r.to_string(), r.retry_after));
        }
        self.usage = after;
        // Bytes written for it (body, index, logs): about twice its size.
        self.intake
            .admitted_since_sample
            .fetch_add(2 * stored, Ordering::Relaxed);
        m.client = self.client.name.clone();
        Ok(m)
    }
}

impl Request<'_> {
    /// Takes recipients on the suppression list out of the envelope (the
    /// headers stay as written) unless the client bypasses the list;
    /// refuses the message when none is left, naming the first.
    fn screen(&self, m: &mut NewMessage) -> Result<(), Refused> {
        if self.client.bypass_suppression {
            m.bypass_suppression = true;
            return Ok(());
        }
        let store = &self.intake.store;
        // A retry of a stored message is answered with its id, as sent.
        if !m.idempotency_key.is_empty()
            && store.knows_idempotency_key(&self.client.name, &m.idempotency_key)
        {
            return Ok(());
        }
        let mut first = None;
        let mut i = 0;
        m.envelope_to.retain(|to| {
            let hit = store.suppressed(to);
            if let Some(s) = &hit {
                first.get_or_insert(i);
                m.suppressed
                    .push((to.clone(), s.reason.clone(), s.since_ms));
            }
            i += 1;
            hit.is_none()
        });
        if m.envelope_to.is_empty() {
            let (_, reason, since) = &m.suppressed[0];
            return Err(Refused::Suppressed(
                m.rcpt_field(first.unwrap_or(0)),
                format!(
                    "suppressed: {} since {} (every recipient is on the suppression list; \
                     nothing was stored)",
                    reason.replace('_', " "),
                    crate::model::utc_time(*since as i64)
                ),
            ));
        }
        Ok(())
    }
}

/// How long a client over its quota should wait: about the time the queue
/// needs to drain a little, bounded to 1–60 s.
fn quota_wait(delivery_rate: f64) -> Duration {
    let secs = if delivery_rate > 0.0 {
        100.0 / delivery_rate
    } else {
        5.0
    };
    Duration::from_secs_f64(secs.clamp(1.0, 60.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::auth::{token_hash, ClientConfig, Role};

    fn message(lane: Lane, bytes: usize) -> NewMessage {
        NewMessage {
            lane,
            sender: "a@example.com".into(),
            envelope_from: "a@example.com".into(),
            envelope_to: vec!["b@example.org".into()],
            message_id: "x@example.com".into(),
            raw: vec![b'x'; bytes],
            idempotency_key: String::new(),
            not_before_ms: 0,
            client: String::new(),
            expires_ms: 0,
            bypass_suppression: false,
            rcpt_fields: None,
            suppressed: Vec::new(),
        }
    }

    fn store(dir: &std::path::Path) -> Store {
        let options = crate::spool::StoreOptions {
            cache_capacity_bytes: 1 << 20,
            segment_bytes: 1 << 20,
            idempotency_window: Duration::from_secs(60),
            delivered_retention: Duration::from_secs(60),
            observer: Arc::new(crate::spool::Unobserved),
            suppression: crate::spool::SuppressionPolicy::default(),
            event_retention: crate::spool::EventRetention::default(),
        };
        Store::open(dir, options).unwrap()
    }

    /// Policy first, then room; a message refused for room takes nothing
    /// from its client's quota, and an admitted one carries its client.
    #[test]
    fn one_gate_decides_policy_quota_and_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let spool_bytes = store.counters().spool_bytes();
        let intake = Intake {
            store,
            // Room for one 10 kB message in the bulk lane (80%), more in the others.
            spool_limits: SpoolLimits {
                max_spool_bytes: (spool_bytes + 11_000) * 10 / 8,
                min_free_bytes: 0,
            },
            disk_free: Arc::new(AtomicU64::new(u64::MAX)),
            admitted_since_sample: Arc::default(),
            refused: Arc::default(),
        };
        let client = Client::new(&ClientConfig {
            lanes: vec!["normal".into(), "bulk".into()],
            max_queued_messages: 2,
            ..ClientConfig::with_token("svc", token_hash("t"), &[Role::Enqueue])
        });
        let mut r = intake.request(&client, 100.0);
        assert!(matches!(
            r.admit(message(Lane::Transactional, 10), false),
            Err(Refused::Denied("lane", _))
        ));
        let m = r.admit(message(Lane::Bulk, 10_000), false).unwrap();
        assert_eq!(m.client, "svc");
        // The spool is full for bulk now: refused for room, counted once...
        assert!(matches!(
            r.admit(message(Lane::Bulk, 10_000), false),
            Err(Refused::Exhausted(..))
        ));
        assert_eq!(intake.refused.load(Ordering::Relaxed), 1);
        // ... and it took nothing from the quota of 2: a normal one still fits.
        assert!(r.admit(message(Lane::Normal, 10), false).is_ok());
        assert!(matches!(
            r.admit(message(Lane::Normal, 10), false),
            Err(Refused::Exhausted(reason, _)) if reason.contains("quota")
        ));
        assert!(intake.admitted_since_sample.load(Ordering::Relaxed) > 20_000);
    }

    /// Suppressed recipients leave the envelope; none left: refused,
    /// naming the field, taking nothing from the quota; a client that
    /// bypasses the list keeps them all.
    #[tokio::test]
    async fn the_suppression_list_screens_the_envelope_unless_bypassed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let entry = crate::spool::Suppression {
            address: "gone@example.org".into(),
            reason: "bad_mailbox".into(),
            reply: String::new(),
            message_id: 0,
            client: "ops".into(),
            created_ms: 1,
            expires_ms: 0,
        };
        store
            .admin(crate::spool::AdminOp::Suppress(vec![entry]))
            .await
            .unwrap();
        let intake = Intake {
            store,
            spool_limits: SpoolLimits {
                max_spool_bytes: 0,
                min_free_bytes: 0,
            },
            disk_free: Arc::new(AtomicU64::new(u64::MAX)),
            admitted_since_sample: Arc::default(),
            refused: Arc::default(),
        };
        let two = || {
            let mut m = message(Lane::Normal, 10);
            m.envelope_to = vec!["gone@EXAMPLE.org".into(), "new@example.org".into()];
            m.rcpt_fields = Some((1, 1));
            m
        };
        let client = Client::new(&ClientConfig {
            max_queued_messages: 1,
            ..ClientConfig::with_token("svc", token_hash("t"), &[Role::Enqueue])
        });
        let mut r = intake.request(&client, 100.0);
        let mut only_gone = two();
        only_gone.envelope_to.truncate(1);
        match r.admit(only_gone, false) {
            Err(Refused::Suppressed(field, reason)) => {
                assert_eq!(field, "email.to[0]");
                assert!(
                    reason.starts_with("suppressed: bad mailbox since 1970-01-01"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let m = r.admit(two(), false).expect("the quota of 1 is still free");
        assert_eq!(m.envelope_to, ["new@example.org"]);
        assert_eq!(m.suppressed[0].0, "gone@EXAMPLE.org");
        assert!(!m.bypass_suppression);
        let trusted = Client::new(&ClientConfig {
            bypass_suppression: true,
            ..ClientConfig::with_token("pager", token_hash("p"), &[Role::Enqueue])
        });
        let m = intake.request(&trusted, 100.0).admit(two(), false).unwrap();
        assert_eq!(m.envelope_to.len(), 2);
        assert!(m.suppressed.is_empty() && m.bypass_suppression);
    }
}
