//! Where messages go: an SMTP relay through our own bounded pool of lettre
//! connections, or the local outbox directory.
//!
//! Why our own pool: lettre 0.11 never sets TCP_NODELAY and writes the body
//! and the final `.` separately, so each message waits for a delayed ACK
//! (about 22 messages/s per connection). We open the TCP stream ourselves
//! with `set_nodelay(true)` and hand it to lettre, which keeps the protocol.
//! lettre's own pool bounds idle connections only; ours bounds concurrent
//! ones with a semaphore and replaces broken ones.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::{Address, AsyncFileTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::delivery::connect::{error_text, ConnectError, Connector};
use crate::delivery::retry::{classify, SendResult};
use crate::delivery::transaction;
use crate::intake::message::dkim;
use crate::model::{Leased, Record};

fn now_secs() -> u64 {
    crate::model::wall_ms() / 1000
}

/// Idle connections older than this are checked with NOOP before use.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(10);

pub enum Relay {
    Smtp(Box<SmtpRelay>),
    Outbox(Outbox),
}

impl Relay {
    pub fn from_config(config: &Config) -> std::io::Result<Relay> {
        let signers = dkim::signers(&config.dkim).map_err(std::io::Error::other)?;
        match config.relay_url() {
            Some(url) => Ok(Relay::Smtp(Box::new(SmtpRelay::new(url, config, signers)?))),
            None => Outbox::new(config.data_dir.join("outbox"), signers).map(Relay::Outbox),
        }
    }

    /// Sends each message in turn; one result per message. Stops early
    /// (the rest "not attempted") once `deadline`, the end of the lease,
    /// has passed: those messages may already be leased to another worker.
    pub async fn send_all(&self, messages: &[Leased], deadline: Instant) -> Vec<SendResult> {
        match self {
            Relay::Smtp(s) => s.send_all(messages, deadline).await,
            Relay::Outbox(o) => o.send_all(messages).await,
        }
    }

    /// SMTP connections in use or idle in the pool (0 for the outbox).
    pub fn connections(&self) -> u64 {
        match self {
            Relay::Smtp(s) => {
                let busy = s.max_connections - s.permits.available_permits();
                (busy + s.idle.lock().expect("idle pool").len()) as u64
            }
            Relay::Outbox(_) => 0,
        }
    }

    pub fn state(&self) -> RelayState {
        match self {
            Relay::Smtp(s) => s.breaker.lock().expect("breaker").state(Instant::now()),
            Relay::Outbox(_) => RelayState {
                state: "ok",
                reason: String::new(),
                consecutive_failures: 0,
                backoff_remaining_ms: 0,
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Relay::Smtp(s) => s.connector.describe(),
            Relay::Outbox(o) => format!("outbox {}", o.dir.display()),
        }
    }
}

fn envelope(record: &Record) -> Result<Envelope, String> {
    let from = if record.envelope_from.is_empty() {
        None
    } else {
        Some(
            record
                .envelope_from
                .parse::<Address>()
                .map_err(|e| e.to_string())?,
        )
    };
    let to = record
        .envelope_to
        .iter()
        .map(|a| a.parse::<Address>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(from, to).map_err(|e| e.to_string())
}

/// `.eml` files in a directory, through lettre's file transport.
pub struct Outbox {
    pub dir: PathBuf,
    transport: AsyncFileTransport<Tokio1Executor>,
    signers: Vec<dkim::Signer>,
}

impl Outbox {
    pub fn new(dir: PathBuf, signers: Vec<dkim::Signer>) -> std::io::Result<Outbox> {
        std::fs::create_dir_all(&dir)?;
        let transport = AsyncFileTransport::new(&dir);
        Ok(Outbox {
            dir,
            transport,
            signers,
        })
    }

    async fn send_all(&self, messages: &[Leased]) -> Vec<SendResult> {
        let mut out = Vec::with_capacity(messages.len());
        for r in messages {
            let result = match envelope(&r.record) {
                Err(e) => SendResult::Permanent(format!("bad envelope: {e}")),
                Ok(env) => match self
                    .transport
                    .send_raw(&env, &dkim::sign_with(&self.signers, &r.raw, now_secs()))
                    .await
                {
                    Ok(_) => SendResult::Accepted,
                    Err(e) => SendResult::Transient(format!("outbox write failed: {e}")),
                },
            };
            out.push(result);
        }
        out
    }
}

pub struct SmtpRelay {
    connector: Connector,
    /// DKIM keys by From domain: messages are signed as they are sent.
    signers: Vec<dkim::Signer>,
    timeout: Duration,
    /// Bounds concurrent connections.
    permits: Semaphore,
    max_connections: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    /// Relay-wide backoff after connection failures and throttling replies.
    breaker: Mutex<Breaker>,
}

/// When the relay cannot be reached or asks us to slow down (421, 451,
/// 454), the whole pool waits, instead of every queued message burning an
/// attempt on it: 100 ms doubling to 30 s, reset by the next success.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    until: Option<Instant>,
    /// Why it opened last: "unreachable", "throttled", "tls failed" or
    /// "auth failed".
    reason: &'static str,
    /// What the relay said or what failed, last time.
    detail: String,
    /// After a backoff, one worker probes the relay while the others wait.
    probing: bool,
}

/// The relay as QueueStats shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayState {
    /// "ok", "unreachable" (connection failures, timeouts), "throttled"
    /// (slow-down replies), "tls failed" or "auth failed", while the pool
    /// is backing off.
    pub state: &'static str,
    /// The last error or reply behind that state ("" when ok).
    pub reason: String,
    pub consecutive_failures: u32,
    pub backoff_remaining_ms: u64,
}

impl Breaker {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(30);

    /// How long to wait before using the relay, if at all.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Whether the caller may use the relay now: None = go (after a backoff
    /// the first caller becomes the probe), Some(wait) = check back then.
    pub fn acquire(&mut self, now: Instant) -> Option<Duration> {
        if let Some(wait) = self.wait(now) {
            return Some(wait);
        }
        if self.failures > 0 {
            if self.probing {
                return Some(Self::BASE);
            }
            self.probing = true;
        }
        None
    }

    /// A probe that ended without telling us anything (nothing was sent).
    pub fn end_probe(&mut self) {
        self.probing = false;
    }

    /// A failure of the relay; a change of state is logged once, at WARN.
    pub fn failed(&mut self, now: Instant, reason: &'static str, detail: &str) {
        if self.failures == 0 || self.reason != reason {
            tracing::warn!(
                state = reason,
                error = %crate::delivery::worker::redact_addresses(detail),
                "RelayDown: messages wait (no attempts counted for throttling, TLS or credentials)"
            );
        }
        self.reason = reason;
        detail.clone_into(&mut self.detail);
        let was_probe = std::mem::take(&mut self.probing);
        if self.is_open(now) && !was_probe {
            // Other workers' attempts that began before the pool backed off:
            // one outage, not many.
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let backoff = Self::BASE
            .saturating_mul(1 << self.failures.min(20).saturating_sub(1))
            .min(Self::CAP);
        self.until = Some(now + backoff);
        tracing::debug!(
            failures = self.failures,
            backoff_ms = backoff.as_millis() as u64,
            "RelayBackoff"
        );
    }

    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                was = self.reason,
                failures = self.failures,
                "RelayRecovered"
            );
        }
        self.failures = 0;
        self.until = None;
        self.probing = false;
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.wait(now).is_some()
    }

    pub fn state(&self, now: Instant) -> RelayState {
        let wait = self.wait(now);
        RelayState {
            state: if self.failures == 0 {
                "ok"
            } else {
                self.reason
            },
            reason: if self.failures == 0 {
                String::new()
            } else {
                self.detail.clone()
            },
            consecutive_failures: self.failures,
            backoff_remaining_ms: wait.map(|d| d.as_millis() as u64).unwrap_or(0),
        }
    }
}

impl SmtpRelay {
    pub fn new(
        url: crate::config::RelayUrl,
        config: &Config,
        signers: Vec<dkim::Signer>,
    ) -> std::io::Result<SmtpRelay> {
        let connector = Connector::new(url, config).map_err(std::io::Error::other)?;
        Ok(SmtpRelay {
            connector,
            signers,
            timeout: config.smtp_timeout(),
            permits: Semaphore::new(config.relay_max_connections),
            max_connections: config.relay_max_connections,
            idle: Mutex::new(Vec::new()),
            breaker: Mutex::new(Breaker::default()),
        })
    }

    async fn send_all(&self, messages: &[Leased], deadline: Instant) -> Vec<SendResult> {
        let Ok(_permit) = self.permits.acquire().await else {
            return vec![SendResult::Transient("relay pool closed".into()); messages.len()];
        };
        // Back off with the whole pool; after a backoff one worker probes.
        let probe = loop {
            let (wait, probe) = {
                let mut b = self.breaker.lock().expect("breaker");
                (b.acquire(Instant::now()), b.failures > 0)
            };
            match wait {
                Some(w) if Instant::now() + w < deadline => tokio::time::sleep(w).await,
                Some(_) => {
                    let why = "the relay is backing off beyond this lease";
                    return vec![SendResult::NotAttempted(why.into()); messages.len()];
                }
                None => break probe,
            }
        };
        let mut conn: Option<AsyncSmtpConnection> = self.take_idle().await;
        let mut out = Vec::with_capacity(messages.len());
        for r in messages {
            if Instant::now() >= deadline {
                let rest = messages.len() - out.len();
                out.extend(std::iter::repeat_n(
                    SendResult::NotAttempted("the lease ended".into()),
                    rest,
                ));
                break;
            }
            let env = match envelope(&r.record) {
                Ok(e) => e,
                Err(e) => {
                    out.push(SendResult::Permanent(format!("bad envelope: {e}")));
                    continue;
                }
            };
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.connector.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        // The rest of the batch fails alike, and the pool
                        // backs off. TLS and credentials are configuration:
                        // no message pays an attempt for them.
                        self.breaker.lock().expect("breaker").failed(
                            Instant::now(),
                            e.state(),
                            e.text(),
                        );
                        let rest =
                            SendResult::NotAttempted(format!("relay {}: {}", e.state(), e.text()));
                        if let ConnectError::Unreachable(text) = e {
                            out.push(SendResult::Transient(text));
                        }
                        out.resize(messages.len(), rest);
                        return out;
                    }
                },
            };
            let raw = dkim::sign_with(&self.signers, &r.raw, now_secs());
            let params = match transaction::parameters(c.server_info(), &r.record, &raw) {
                Ok(p) => p,
                Err(why) => {
                    // This relay can never take it; the connection is fine.
                    out.push(SendResult::Permanent(why));
                    conn = Some(c);
                    continue;
                }
            };
            let send = transaction::send(&mut c, &env, params, &raw);
            let result = match tokio::time::timeout(self.timeout, send).await {
                Err(_) => {
                    SendResult::Transient(format!("timed out after {:?} sending", self.timeout))
                }
                Ok(Ok(_)) => SendResult::Accepted,
                Ok(Err(e)) => smtp_error(&e),
            };
            {
                let mut breaker = self.breaker.lock().expect("breaker");
                match &result {
                    SendResult::Throttled(reply) | SendResult::Deferred(reply) => {
                        breaker.failed(Instant::now(), "throttled", reply)
                    }
                    SendResult::Refused(reply) => {
                        breaker.failed(Instant::now(), "auth failed", reply)
                    }
                    SendResult::Transient(e) if e.starts_with("timed out") => {
                        breaker.failed(Instant::now(), "unreachable", e)
                    }
                    // The relay answered: it is up, whatever it thought of this message.
                    _ => breaker.succeeded(),
                }
            }
            // A throttling reply or a timeout: the relay is unwell, so the
            // rest of this lease waits for the next one instead of each
            // message waiting out its own timeout.
            let stop_reason = match &result {
                SendResult::Throttled(reply) | SendResult::Deferred(reply) => {
                    Some(format!("the relay is throttling ({reply})"))
                }
                SendResult::Refused(reply) => Some(format!("the relay refuses us ({reply})")),
                SendResult::Transient(e) if e.starts_with("timed out") => {
                    Some(format!("the relay {e}"))
                }
                _ => None,
            };
            if !c.has_broken() && result == SendResult::Accepted {
                conn = Some(c);
            } else {
                close(c).await;
            }
            out.push(result);
            if let Some(why) = stop_reason {
                let rest = messages.len() - out.len();
                out.extend(std::iter::repeat_n(SendResult::NotAttempted(why), rest));
                break;
            }
        }
        if probe {
            self.breaker.lock().expect("breaker").end_probe();
        }
        if let Some(c) = conn {
            self.idle
                .lock()
                .expect("idle pool")
                .push((c, Instant::now()));
        }
        out
    }

    async fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut c, since) = self.idle.lock().expect("idle pool").pop()?;
            if since.elapsed() < IDLE_CHECK_AFTER {
                return Some(c);
            }
            if tokio::time::timeout(self.timeout, c.test_connected())
                .await
                .unwrap_or(false)
            {
                return Some(c);
            }
            close(c).await;
        }
    }
}

/// Ends a connection we will not reuse: a polite QUIT if the peer answers
/// within a second, else just drop it (a stalled relay must not hold the
/// worker).
async fn close(mut c: AsyncSmtpConnection) {
    let _ = tokio::time::timeout(Duration::from_secs(1), c.abort()).await;
}

/// Maps a lettre error to a result: reply codes by class, anything else
/// (I/O, TLS, a reply we could not parse) is transient.
fn smtp_error(e: &lettre::transport::smtp::Error) -> SendResult {
    let text = error_text(e);
    match e.status() {
        Some(code) => {
            let n: u16 = code.into();
            let reply = text.strip_prefix(&format!("{code} ")).unwrap_or(&text);
            classify(n, reply)
        }
        None => SendResult::Transient(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_backs_off_doubling_and_resets() {
        let mut b = Breaker::default();
        let mut t = Instant::now();
        assert!(!b.is_open(t));
        let waits: Vec<u128> = (0..10)
            .map(|_| {
                b.failed(t, "unreachable", "refused");
                // Failures while open do not escalate.
                b.failed(t, "unreachable", "refused");
                let w = b.wait(t).unwrap();
                t += w;
                w.as_millis()
            })
            .collect();
        assert_eq!(
            waits,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000]
        );
        assert!(!b.is_open(t + Duration::from_secs(31)));
        assert_eq!(b.state(t).state, "unreachable");
        assert_eq!(b.state(t).consecutive_failures, 10);
        let t = Instant::now();
        b.succeeded();
        assert_eq!(b.state(t).state, "ok");
        assert!(!b.is_open(t));
    }

    #[test]
    fn after_a_backoff_one_caller_probes_and_the_others_wait() {
        let mut b = Breaker::default();
        let t = Instant::now();
        assert_eq!(b.acquire(t), None, "healthy: everyone goes");
        assert_eq!(b.acquire(t), None);
        b.failed(t, "unreachable", "refused");
        assert!(b.acquire(t).is_some(), "backing off");
        let later = t + Duration::from_millis(150);
        assert_eq!(b.acquire(later), None, "the first caller probes");
        assert_eq!(
            b.acquire(later),
            Some(Breaker::BASE),
            "the others wait for the probe"
        );
        b.failed(later, "unreachable", "refused");
        assert_eq!(
            b.state(later).consecutive_failures,
            2,
            "a failed probe escalates"
        );
        let much_later = later + Duration::from_secs(1);
        assert_eq!(b.acquire(much_later), None);
        b.succeeded();
        assert_eq!(b.acquire(much_later), None);
        assert_eq!(b.acquire(much_later), None, "healthy again: no probing");
    }
}
