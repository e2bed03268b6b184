//! One webhook endpoint: a reader of the event log with its own durable
//! cursor. It posts the events after its cursor one at a time, in sequence
//! order, retrying each with backoff until the endpoint answers 2xx; a
//! down or slow endpoint holds back only itself. The cursor is saved in
//! the spool at most once a second (and at shutdown): after a crash the
//! events since the last save are posted again (at least once).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;

use crate::config::WebhookConfig;
use crate::model::{now_ms, Event, EventKind};
use crate::observe::overview::WebhookFigures;
use crate::spool::{AdminOp, EventReadError, Store};
use crate::webhooks::{payload, sign::sign};

/// Events read from the log at a time.
const PAGE: usize = 256;
/// The cursor is saved at most this often while events flow.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The first retry's wait; each further one doubles, up to the endpoint's
/// `max_backoff_secs`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

pub struct Endpoint {
    config: WebhookConfig,
    key: Vec<u8>,
    kinds: Option<Vec<EventKind>>,
    http: reqwest::Client,
    node_id: String,
    status: Mutex<Status>,
}

/// What the endpoint has done, for stats (`figures`).
#[derive(Default)]
struct Status {
    cursor: u64,
    /// The time of the event being posted (0: none).
    posting_ms: u64,
    failing_since: Option<Instant>,
    failing_logged: bool,
    last_success_ms: u64,
    consecutive_failures: u64,
    sent_total: u64,
    failed_total: u64,
    skipped_total: u64,
    last_error: String,
}

/// Why the endpoint stopped.
enum Stopped {
    Shutdown,
}

impl Endpoint {
    pub fn new(config: WebhookConfig, node_id: &str) -> Result<Endpoint, String> {
        let key = config
            .secret
            .clone()
            .ok_or_else(|| format!("webhook `{}`: its secret was not read", config.name))?
            .0;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms.min(5_000)))
            .user_agent(concat!("mailspool/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook `{}`: {e}", config.name))?;
        Ok(Endpoint {
            kinds: config.kinds(),
            key,
            http,
            node_id: node_id.to_string(),
            status: Mutex::new(Status::default()),
            config,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its figures now; `last_visible`: the newest event readers may see.
    pub fn figures(&self, last_visible: u64, now: u64) -> WebhookFigures {
        let s = self.status.lock().expect("webhook status");
        let failing = s
            .failing_since
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(self.config.failing_after_secs));
        WebhookFigures {
            name: self.config.name.clone(),
            state: match (s.consecutive_failures, failing) {
                (0, _) => "ok",
                (_, false) => "retrying",
                (_, true) => "failing",
            },
            lag_events: last_visible.saturating_sub(s.cursor),
            lag_seconds: match s.posting_ms {
                0 => 0.0,
                t => now.saturating_sub(t) as f64 / 1000.0,
            },
            cursor: s.cursor,
            last_success_ms: s.last_success_ms,
            consecutive_failures: s.consecutive_failures,
            sent_total: s.sent_total,
            failed_total: s.failed_total,
            skipped_total: s.skipped_total,
            last_error: s.last_error.clone(),
        }
    }

    /// Posts the log's events after its cursor until `stop`; saves the
    /// cursor before it returns.
    pub async fn run(self: Arc<Self>, store: Store, mut stop: watch::Receiver<bool>) {
        let name = self.config.name.clone();
        let start = match store.reader_cursor(&name) {
            Ok(Some(c)) => c,
            // A new endpoint starts with the events from now on.
            Ok(None) => store.event_figures().last_seq,
            Err(e) => {
                tracing::warn!(webhook = %name, error = %e, "WebhookStopped: cannot read its cursor; restart the server");
                return;
            }
        };
        let mut cursor = start;
        self.status.lock().expect("webhook status").cursor = cursor;
        let mut saved = None;
        let mut last_save = Instant::now();
        loop {
            if saved != Some(cursor) && (saved.is_none() || last_save.elapsed() >= SAVE_EVERY) {
                save(&store, &name, cursor).await;
                saved = Some(cursor);
                last_save = Instant::now();
            }
            if *stop.borrow() {
                break;
            }
            let reader = store.clone();
            let at = cursor;
            let page = tokio::task::spawn_blocking(move || reader.events_after(at, PAGE)).await;
            let page = match page {
                Ok(Ok(p)) => p,
                Ok(Err(EventReadError::TooOld(t))) => {
                    let skipped = t.oldest.saturating_sub(cursor + 1);
                    tracing::warn!(
                        webhook = %name,
                        from = cursor + 1,
                        to = t.oldest - 1,
                        skipped,
                        "WebhookEventsSkipped: the event log dropped these (event_retention_secs / _bytes) before the endpoint took them; raise the retention or fix the endpoint"
                    );
                    self.status.lock().expect("webhook status").skipped_total += skipped;
                    cursor = t.oldest - 1;
                    continue;
                }
                Ok(Err(EventReadError::Store(e))) => {
                    tracing::warn!(webhook = %name, error = %e, "reading the event log failed; trying again");
                    if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                        break;
                    }
                    continue;
                }
                Err(_) => break,
            };
            let full = page.len() == PAGE;
            let slots = self.client_slots(&store);
            let names = store.clients().names;
            for (seq, e) in page {
                if self.wants(&e, &slots) {
                    let client = names.get(&e.client).map_or("", String::as_str);
                    if let Err(Stopped::Shutdown) = self.deliver(seq, &e, client, &mut stop).await {
                        save(&store, &name, cursor).await;
                        return;
                    }
                }
                cursor = seq;
                self.status.lock().expect("webhook status").cursor = cursor;
                if last_save.elapsed() >= SAVE_EVERY {
                    save(&store, &name, cursor).await;
                    saved = Some(cursor);
                    last_save = Instant::now();
                }
            }
            if full {
                continue;
            }
            // Caught up: wait for new events (saving the cursor meanwhile).
            tokio::select! {
                _ = store.wait_events_after(cursor) => {}
                _ = tokio::time::sleep(SAVE_EVERY) => {}
                _ = stop.changed() => {}
            }
        }
        if saved != Some(cursor) {
            save(&store, &name, cursor).await;
        }
    }

    /// The client slots it is limited to (None: all clients).
    fn client_slots(&self, store: &Store) -> Option<Vec<u16>> {
        (!self.config.clients.is_empty()).then(|| {
            self.config
                .clients
                .iter()
                .filter_map(|c| store.client_slot(c))
                .collect()
        })
    }

    fn wants(&self, e: &Event, slots: &Option<Vec<u16>>) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&e.kind))
            && slots.as_ref().is_none_or(|s| s.contains(&e.client))
    }

    /// Posts one event until the endpoint takes it (or the server stops).
    async fn deliver(
        &self,
        seq: u64,
        e: &Event,
        client: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Stopped> {
        let id = payload::webhook_id(&self.node_id, seq);
        let body = serde_json::to_vec(&payload::body(seq, e, client)).expect("JSON of an event");
        self.status.lock().expect("webhook status").posting_ms = e.time_ms;
        let mut wait = FIRST_BACKOFF;
        loop {
            let sent = tokio::select! {
                r = self.post(&id, &body) => r,
                _ = stop.changed() => return Err(Stopped::Shutdown),
            };
            match sent {
                Ok(()) => {
                    self.succeeded();
                    return Ok(());
                }
                Err(why) => self.failed(seq, why),
            }
            let cap = Duration::from_secs(self.config.max_backoff_secs);
            let jitter = rand::rng().random_range(0.0..0.25);
            if sleep_or_stop(wait.min(cap).mul_f64(1.0 + jitter), stop).await {
                return Err(Stopped::Shutdown);
            }
            wait = (wait * 2).min(cap);
        }
    }

    async fn post(&self, id: &str, body: &[u8]) -> Result<(), String> {
        let ts = (now_ms() / 1000) as i64;
        let response = self
            .http
            .post(&self.config.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(&self.key, id, ts, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Redirects are not followed: a moved endpoint is a configuration
        // to fix, not a place to send recipients' addresses unasked.
        Err(format!("HTTP {status}"))
    }

    fn succeeded(&self) {
        let mut s = self.status.lock().expect("webhook status");
        if s.failing_logged {
            tracing::warn!(webhook = %self.config.name, "WebhookRecovered: the endpoint takes events again; it catches up in order");
        } else if s.consecutive_failures > 0 {
            tracing::info!(webhook = %self.config.name, failures = s.consecutive_failures, "WebhookRecovered");
        }
        s.posting_ms = 0;
        s.failing_since = None;
        s.failing_logged = false;
        s.consecutive_failures = 0;
        s.sent_total += 1;
        s.last_success_ms = now_ms();
    }

    fn failed(&self, seq: u64, why: String) {
        let mut s = self.status.lock().expect("webhook status");
        s.consecutive_failures += 1;
        s.failed_total += 1;
        let since = *s.failing_since.get_or_insert_with(Instant::now);
        let failing_after = Duration::from_secs(self.config.failing_after_secs);
        if s.consecutive_failures == 1 {
            tracing::info!(webhook = %self.config.name, sequence = seq, error = %why, "WebhookFailed: retrying with backoff; events wait for it in the log");
        } else if since.elapsed() >= failing_after && !s.failing_logged {
            s.failing_logged = true;
            tracing::warn!(
                webhook = %self.config.name,
                sequence = seq,
                error = %why,
                failing_for_secs = since.elapsed().as_secs(),
                "WebhookFailing: the endpoint has taken nothing for a while; its events wait in the log (readable with `mailspool events --after N`) until it comes back or the log's retention drops them"
            );
        }
        s.last_error = why;
    }
}

/// Saves a reader's cursor in the spool; a failure only means resending.
async fn save(store: &Store, name: &str, seq: u64) {
    let op = AdminOp::SetReaderCursor {
        reader: name.to_string(),
        seq,
    };
    if let Err(e) = store.admin(op).await {
        tracing::debug!(webhook = %name, error = %e, "could not save the webhook cursor; events after the last save may be posted again");
    }
}

/// Sleeps `d`; true when the server stops first.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
