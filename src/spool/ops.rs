//! Operator actions in the core's terms: which messages a filter selects,
//! one listing page, and the bulk operations (retry now, cancel, requeue,
//! purge) applied in bounded chunks through the store's single writer.
//!
//! Invariants:
//! - A listing page reads at most [`SCAN_LIMIT`] index entries, whatever
//!   the size of the backlog; a sparse filter returns a short page and a
//!   cursor to go on from.
//! - Age bounds become id bounds (ids carry their enqueue time), so an age
//!   filter never reads outside its window.
//! - Messages in flight are never cancelled or rescheduled under their
//!   worker: they are counted as skipped.

use std::time::Duration;

use crate::model::{Lane, MessageId};
use crate::spool::{AdminOp, Index, Listed, Store, StoreError};

/// Index entries read per listing page at most.
pub const SCAN_LIMIT: usize = 20_000;
/// Ids per store operation when applying a filter.
const CHUNK: usize = 1_000;
/// Ids shown for a confirmation.
pub const SAMPLE: usize = 20;

/// Which messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateSel {
    /// Ready, scheduled or in flight.
    #[default]
    Queued,
    Ready,
    Scheduled,
    InFlight,
    Dead,
    Quarantined,
}

impl StateSel {
    fn index(self) -> Index {
        match self {
            StateSel::Dead => Index::Dead,
            StateSel::Quarantined => Index::Quarantined,
            _ => Index::Queued,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub state: StateSel,
    pub lane: Option<Lane>,
    /// Lower case, without `@`.
    pub domain: Option<String>,
    pub min_age: Option<Duration>,
    pub max_age: Option<Duration>,
}

/// Where a listed message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Ready,
    Scheduled,
    InFlight,
    Dead,
    Quarantined,
}

/// One listed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub id: MessageId,
    pub place: Where,
    pub lane: Option<Lane>,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub attempts: u32,
    pub last_error: String,
    pub enqueued_ms: u64,
    pub next_attempt_ms: u64,
    pub size_bytes: u64,
    pub message_id: String,
    pub idempotency_key: String,
    pub finished_ms: u64,
}

/// The summary of one index entry.
pub fn summarize(entry: Listed, now_ms: u64, leased: &dyn Fn(MessageId) -> bool) -> Summary {
    match entry {
        Listed::Queued(id, r) => Summary {
            id,
            place: if leased(id) {
                Where::InFlight
            } else if r.due_ms > now_ms {
                Where::Scheduled
            } else {
                Where::Ready
            },
            lane: Some(r.lane),
            envelope_from: r.envelope_from,
            envelope_to: r.envelope_to,
            attempts: r.attempts,
            last_error: r.last_error,
            enqueued_ms: r.enqueued_ms,
            next_attempt_ms: r.due_ms,
            size_bytes: u64::from(r.body.len),
            message_id: r.message_id,
            idempotency_key: r.idempotency_key,
            finished_ms: 0,
        },
        Listed::Dead(id, d) => Summary {
            id,
            place: Where::Dead,
            lane: Some(d.record.lane),
            envelope_from: d.record.envelope_from,
            envelope_to: d.record.envelope_to,
            attempts: d.record.attempts,
            last_error: d.reason,
            enqueued_ms: d.record.enqueued_ms,
            next_attempt_ms: 0,
            size_bytes: d.raw.len() as u64,
            message_id: d.record.message_id,
            idempotency_key: d.record.idempotency_key,
            finished_ms: d.died_ms,
        },
        Listed::Quarantined(id) => Summary {
            id,
            place: Where::Quarantined,
            lane: None,
            envelope_from: String::new(),
            envelope_to: Vec::new(),
            attempts: 0,
            last_error: "unreadable on disk".into(),
            enqueued_ms: id.enqueued_ms(),
            next_attempt_ms: 0,
            size_bytes: 0,
            message_id: String::new(),
            idempotency_key: String::new(),
            finished_ms: 0,
        },
    }
}

/// The domain of an address, lower case.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("")
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// Whether a summary passes the filter (the id range has already applied
/// the age bounds). Pure.
pub fn matches(f: &Filter, s: &Summary) -> bool {
    let state = match f.state {
        StateSel::Queued => matches!(s.place, Where::Ready | Where::Scheduled | Where::InFlight),
        StateSel::Ready => s.place == Where::Ready,
        StateSel::Scheduled => s.place == Where::Scheduled,
        StateSel::InFlight => s.place == Where::InFlight,
        StateSel::Dead => s.place == Where::Dead,
        StateSel::Quarantined => s.place == Where::Quarantined,
    };
    let lane = match (f.lane, s.lane) {
        (None, _) => true,
        (Some(want), Some(have)) => want == have,
        (Some(_), None) => false,
    };
    let domain = match &f.domain {
        None => true,
        Some(d) => s.envelope_to.iter().any(|a| domain_of(a) == *d),
    };
    state && lane && domain
}

/// The ids an age filter allows: enqueued in `[now - max_age, now - min_age)`.
pub fn id_range(f: &Filter, now_ms: u64) -> (MessageId, MessageId) {
    let at = |age: Duration| {
        let ms = now_ms.saturating_sub(age.as_millis() as u64);
        MessageId(ms << MessageId::SEQ_BITS)
    };
    let from = f.max_age.map(at).unwrap_or(MessageId(0));
    let to = f.min_age.map(at).unwrap_or(MessageId(u64::MAX));
    (from, to)
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Summary>,
    /// Where the next page starts; None at the end.
    pub next: Option<MessageId>,
    pub scanned: usize,
}

/// Up to `page_size` messages matching `f`, starting at `cursor`.
pub fn list(
    store: &Store,
    f: &Filter,
    cursor: Option<MessageId>,
    page_size: usize,
    now_ms: u64,
    leased: &dyn Fn(MessageId) -> bool,
) -> Page {
    let (mut from, to) = id_range(f, now_ms);
    if let Some(c) = cursor {
        from = from.max(c);
    }
    let mut page = Page::default();
    loop {
        let budget = SCAN_LIMIT - page.scanned;
        let scan = store.scan(f.state.index(), from, to, budget.min(page_size.max(64)));
        page.scanned += scan.scanned;
        let mut stopped_early = None;
        for entry in scan.entries {
            let s = summarize(entry, now_ms, leased);
            if matches(f, &s) {
                if page.items.len() == page_size {
                    stopped_early = Some(s.id);
                    break;
                }
                page.items.push(s);
            }
        }
        if let Some(id) = stopped_early {
            page.next = Some(id);
            return page;
        }
        match scan.last {
            Some(last) if !scan.exhausted => {
                from = MessageId(last.0 + 1);
                if page.scanned >= SCAN_LIMIT {
                    page.next = Some(from);
                    return page;
                }
            }
            _ => return page,
        }
    }
}

/// What a bulk operation found.
#[derive(Debug, Default, PartialEq)]
pub struct Selection {
    /// Matched and not in flight: what the operation would change.
    pub ids: Vec<MessageId>,
    /// Matched but in flight.
    pub skipped: u64,
}

/// Every message matching `f` (at most `limit`, 0 = all), in id order.
/// Walks the whole range in pages; memory is 8 bytes per match.
pub fn select(
    store: &Store,
    f: &Filter,
    limit: u64,
    now_ms: u64,
    leased: &dyn Fn(MessageId) -> bool,
    keep: &dyn Fn(&Summary) -> bool,
) -> Selection {
    let mut sel = Selection::default();
    // In-flight messages are matched (and counted) but never touched.
    let mut all = f.clone();
    if all.state == StateSel::InFlight {
        all.state = StateSel::Queued;
    }
    let mut cursor = None;
    loop {
        let page = list(store, &all, cursor, 10_000, now_ms, leased);
        for s in page.items {
            if !keep(&s) {
                continue;
            }
            if s.place == Where::InFlight {
                sel.skipped += 1;
                continue;
            }
            if f.state == StateSel::InFlight {
                continue;
            }
            sel.ids.push(s.id);
            if limit > 0 && sel.ids.len() as u64 >= limit {
                return sel;
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => return sel,
        }
    }
}

/// Applies `make(chunk)` to the ids in chunks; returns (changed, unchanged ids).
pub async fn apply(
    store: &Store,
    ids: &[MessageId],
    make: impl Fn(Vec<MessageId>) -> AdminOp,
) -> Result<(u64, Vec<MessageId>), StoreError> {
    let mut changed = 0;
    let mut unchanged = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let r = store.admin(make(chunk.to_vec())).await?;
        changed += r.changed.len() as u64;
        unchanged.extend(r.unchanged);
    }
    Ok((changed, unchanged))
}

/// qshape's age buckets, upper bounds in minutes; the last one is open.
pub const AGE_BUCKETS_MIN: [u32; 10] = [5, 10, 20, 40, 80, 160, 320, 640, 1280, 0];

/// The bucket of a message `age_ms` old.
pub fn age_bucket(age_ms: u64) -> usize {
    let minutes = age_ms / 60_000;
    AGE_BUCKETS_MIN
        .iter()
        .position(|&b| b == 0 || minutes < u64::from(b))
        .unwrap_or(AGE_BUCKETS_MIN.len() - 1)
}

/// Recipients of queued messages by domain and age bucket.
#[derive(Debug, Default)]
pub struct Shape {
    /// (domain, per-bucket counts), most recipients first.
    pub domains: Vec<(String, [u64; AGE_BUCKETS_MIN.len()])>,
    pub total: [u64; AGE_BUCKETS_MIN.len()],
    pub scanned: usize,
}

/// qshape over the queued messages (of one lane, if given). Reads the whole
/// index in pages: an operator's question, not a hot path.
pub fn shape(store: &Store, lane: Option<Lane>, top: usize, now_ms: u64) -> Shape {
    use std::collections::HashMap;
    let mut by: HashMap<String, [u64; AGE_BUCKETS_MIN.len()]> = HashMap::new();
    let mut out = Shape::default();
    let mut from = MessageId(0);
    loop {
        let page = store.scan(Index::Queued, from, MessageId(u64::MAX), SCAN_LIMIT);
        out.scanned += page.scanned;
        for entry in page.entries {
            let Listed::Queued(_, r) = entry else {
                continue;
            };
            if lane.is_some_and(|l| l != r.lane) {
                continue;
            }
            let b = age_bucket(now_ms.saturating_sub(r.enqueued_ms));
            for to in &r.envelope_to {
                by.entry(domain_of(to)).or_default()[b] += 1;
                out.total[b] += 1;
            }
        }
        match page.last {
            Some(last) if !page.exhausted => from = MessageId(last.0 + 1),
            _ => break,
        }
    }
    let mut domains: Vec<_> = by.into_iter().collect();
    domains.sort_by(|a, b| {
        let (ta, tb): (u64, u64) = (a.1.iter().sum(), b.1.iter().sum());
        tb.cmp(&ta).then_with(|| a.0.cmp(&b.0))
    });
    domains.truncate(top);
    out.domains = domains;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(place: Where, lane: Lane, to: &[&str]) -> Summary {
        Summary {
            id: MessageId(1),
            place,
            lane: Some(lane),
            envelope_from: "a@x".into(),
            envelope_to: to.iter().map(|s| s.to_string()).collect(),
            attempts: 0,
            last_error: String::new(),
            enqueued_ms: 0,
            next_attempt_ms: 0,
            size_bytes: 0,
            message_id: String::new(),
            idempotency_key: String::new(),
            finished_ms: 0,
        }
    }

    #[test]
    fn filters_match_as_a_table() {
        let f = |state, lane, domain: Option<&str>| Filter {
            state,
            lane,
            domain: domain.map(String::from),
            ..Filter::default()
        };
        let ready_bulk = summary(Where::Ready, Lane::Bulk, &["u@Example.ORG", "v@b.com"]);
        let cases = [
            (f(StateSel::Queued, None, None), &ready_bulk, true),
            (f(StateSel::Ready, None, None), &ready_bulk, true),
            (f(StateSel::Scheduled, None, None), &ready_bulk, false),
            (f(StateSel::Dead, None, None), &ready_bulk, false),
            (
                f(StateSel::Queued, Some(Lane::Bulk), None),
                &ready_bulk,
                true,
            ),
            (
                f(StateSel::Queued, Some(Lane::Normal), None),
                &ready_bulk,
                false,
            ),
            (
                f(StateSel::Queued, None, Some("example.org")),
                &ready_bulk,
                true,
            ),
            (f(StateSel::Queued, None, Some("b.com")), &ready_bulk, true),
            (f(StateSel::Queued, None, Some("c.com")), &ready_bulk, false),
        ];
        for (i, (filter, s, want)) in cases.iter().enumerate() {
            assert_eq!(matches(filter, s), *want, "case {i}: {filter:?}");
        }
        let flight = summary(Where::InFlight, Lane::Normal, &["a@b.c"]);
        assert!(matches(&f(StateSel::Queued, None, None), &flight));
        assert!(matches(&f(StateSel::InFlight, None, None), &flight));
        assert!(!matches(&f(StateSel::Ready, None, None), &flight));
    }

    #[test]
    fn ages_become_id_bounds() {
        let now = 10_000_000;
        let f = Filter {
            min_age: Some(Duration::from_secs(60)),
            max_age: Some(Duration::from_secs(3600)),
            ..Filter::default()
        };
        let (from, to) = id_range(&f, now);
        assert_eq!(from.enqueued_ms(), now - 3_600_000);
        assert_eq!(to.enqueued_ms(), now - 60_000);
        assert_eq!(
            id_range(&Filter::default(), now),
            (MessageId(0), MessageId(u64::MAX))
        );
    }

    #[test]
    fn age_buckets_like_qshape() {
        let min = 60_000;
        for (age, bucket) in [
            (0, 0),
            (4 * min, 0),
            (5 * min, 1),
            (19 * min, 2),
            (1279 * min, 8),
            (1280 * min, 9),
            (100_000 * min, 9),
        ] {
            assert_eq!(age_bucket(age), bucket, "{age}");
        }
        assert_eq!(domain_of("Someone@Mail.Example.COM"), "mail.example.com");
        assert_eq!(domain_of("<x@y.z>"), "y.z");
    }
}
