//! One relay: our own bounded pool of lettre connections to it, its
//! breaker (backoff after failures), its throttle (quota and effective
//! rate) and its counters.
//!
//! Why our own pool: lettre 0.11 never sets TCP_NODELAY and writes the body
//! and the final `.` separately, so each message waits for a delayed ACK
//! (about 22 messages/s per connection). We open the TCP stream ourselves
//! with `set_nodelay(true)` and hand it to lettre, which keeps the protocol.
//! lettre's own pool bounds idle connections only; ours bounds concurrent
//! ones with a semaphore and replaces broken ones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use tokio::sync::Semaphore;

use crate::config::RelayConfig;
use crate::delivery::breaker::Breaker;
use crate::delivery::connect::{error_text, ConnectError, Connector};
use crate::delivery::retry::{MessageResult, SendResult};
use crate::delivery::throttle::Throttle;
use crate::delivery::transaction::{self, envelope, Stop};
use crate::intake::message::dkim;
use crate::model::Leased;
use crate::observe::overview::RelayFigures;

/// Idle connections older than this are checked with NOOP before use.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(10);

/// A worker given another relay to try waits at most this long for a
/// send slot here before it goes there instead.
const SLOT_WAIT_WITH_ALTERNATIVE: Duration = Duration::from_secs(1);

/// What one relay made of a batch.
#[derive(Debug)]
pub struct Batch {
    pub results: Vec<MessageResult>,
    /// From this index on, the relay failed (down, throttling, refusing
    /// us, at its rate) before these were delivered: they may go through
    /// another relay.
    pub reroute_from: Option<usize>,
}

pub struct SmtpRelay {
    pub name: String,
    pub priority: u32,
    pub weight: u32,
    connector: Connector,
    timeout: Duration,
    /// Bounds concurrent connections.
    permits: Semaphore,
    max_connections: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    /// Relay-wide backoff after connection failures and throttling replies.
    pub breaker: Mutex<Breaker>,
    throttle: Throttle,
    /// `mailspool relay pause NAME`: chosen by no route.
    pub paused: AtomicBool,
    sent: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    last_reply: Mutex<String>,
}

impl SmtpRelay {
    pub fn new(relay: &RelayConfig, timeout: Duration) -> Result<SmtpRelay, String> {
        let connector = Connector::new(relay, timeout)?;
        Ok(SmtpRelay {
            name: relay.name.clone(),
            priority: relay.priority,
            weight: relay.weight,
            connector,
            timeout,
            permits: Semaphore::new(relay.max_connections),
            max_connections: relay.max_connections,
            idle: Mutex::new(Vec::new()),
            breaker: Mutex::new(Breaker::default()),
            throttle: Throttle::new(relay.rate_per_second, relay.burst),
            paused: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_reply: Mutex::new(String::new()),
        })
    }

    pub fn describe(&self) -> String {
        format!("{} {}", self.name, self.connector.describe())
    }

    /// Connections in use or idle.
    pub fn connections(&self) -> u64 {
        let busy = self.max_connections - self.permits.available_permits();
        (busy + self.idle.lock().expect("idle pool").len()) as u64
    }

    pub fn figures(&self, now: Instant) -> RelayFigures {
        let b = self.breaker.lock().expect("breaker").state(now);
        let (rate, effective) = self.throttle.rates();
        let paused = self.paused.load(Ordering::Relaxed);
        RelayFigures {
            name: self.name.clone(),
            describe: self.connector.describe(),
            state: if paused { "paused" } else { b.state },
            reason: if paused {
                "paused by an operator (`mailspool relay resume`)".into()
            } else {
                b.reason
            },
            consecutive_failures: b.consecutive_failures,
            backoff_remaining_ms: b.backoff_remaining_ms,
            connections: self.connections(),
            max_connections: self.max_connections as u64,
            rate_per_second: rate,
            effective_rate: effective,
            rate_lowered: self.throttle.lowered(),
            sent: self.sent.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_reply: self.last_reply.lock().expect("last reply").clone(),
            priority: self.priority,
            weight: self.weight,
        }
    }

    /// Sends each message in turn. Stops early (the rest "not attempted")
    /// once `deadline`, the end of the lease, has passed, or the relay
    /// fails. `may_wait`: no other relay could take these, so wait out
    /// this one's backoff and rate (within the lease) instead of handing
    /// them back for rerouting.
    pub async fn send_all(
        &self,
        messages: &[&Leased],
        deadline: Instant,
        may_wait: bool,
        signers: &[dkim::Signer],
    ) -> Batch {
        let everything_back = |why: String| Batch {
            results: vec![MessageResult::All(SendResult::NotAttempted(why)); messages.len()],
            reroute_from: Some(0),
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return everything_back("relay pool closed".into());
        };
        // Back off with the whole pool; after a backoff one worker probes.
        let probe = loop {
            let (wait, probe) = {
                let mut b = self.breaker.lock().expect("breaker");
                (b.acquire(Instant::now()), b.failing())
            };
            match wait {
                Some(w) if may_wait && Instant::now() + w < deadline => {
                    // A message whose deadline passes meanwhile is not
                    // held until the relay is back: it expires now.
                    if messages.iter().any(|m| expired(&m.record).is_some()) {
                        return Batch {
                            results: messages
                                .iter()
                                .map(|m| {
                                    MessageResult::All(expired(&m.record).unwrap_or_else(|| {
                                        SendResult::NotAttempted(format!(
                                            "relay {} is backing off",
                                            self.name
                                        ))
                                    }))
                                })
                                .collect(),
                            reroute_from: Some(0),
                        };
                    }
                    tokio::time::sleep(w.min(until_expiry(messages))).await
                }
                Some(_) => {
                    return everything_back(format!("relay {} is backing off", self.name));
                }
                None => break probe,
            }
        };
        let mut conn: Option<AsyncSmtpConnection> = self.take_idle().await;
        let mut out = Vec::with_capacity(messages.len());
        let mut reroute_from = None;
        for r in messages {
            let now = Instant::now();
            if now >= deadline {
                let rest = messages.len() - out.len();
                out.extend(std::iter::repeat_n(
                    MessageResult::All(SendResult::NotAttempted("the lease ended".into())),
                    rest,
                ));
                break;
            }
            let max_wait = if may_wait {
                deadline - now
            } else {
                SLOT_WAIT_WITH_ALTERNATIVE
            };
            if let Err(wait) = self.throttle.admit(max_wait).await {
                let why = format!("relay {} is at its rate (next slot in {wait:?})", self.name);
                reroute_from = Some(out.len());
                out.resize(
                    messages.len(),
                    MessageResult::All(SendResult::NotAttempted(why)),
                );
                break;
            }
            // Checked again just before MAIL FROM: mail that waited out
            // an outage is not delivered late.
            if let Some(late) = expired(&r.record) {
                out.push(MessageResult::All(late));
                continue;
            }
            let env = match envelope(&r.record) {
                Ok(e) => e,
                Err(e) => {
                    out.push(MessageResult::All(SendResult::Permanent(format!(
                        "bad envelope: {e}"
                    ))));
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
                            &self.name,
                            e.state(),
                            e.text(),
                        );
                        *self.last_reply.lock().expect("last reply") = e.text().to_string();
                        reroute_from = Some(out.len());
                        let rest = MessageResult::All(SendResult::NotAttempted(format!(
                            "relay {} {}: {}",
                            self.name,
                            e.state(),
                            e.text()
                        )));
                        if let ConnectError::Unreachable(text) = e {
                            out.push(MessageResult::All(SendResult::Transient(text)));
                        }
                        out.resize(messages.len(), rest);
                        break;
                    }
                },
            };
            let raw = dkim::sign_with(signers, &r.raw, crate::model::wall_ms() / 1000);
            let params = match transaction::parameters(c.server_info(), &r.record, &raw) {
                Ok(p) => p,
                Err(why) => {
                    // This relay can never take it; the connection is fine.
                    out.push(MessageResult::All(SendResult::Permanent(why)));
                    conn = Some(c);
                    continue;
                }
            };
            let mut each: Vec<Option<SendResult>> = vec![None; env.to().len()];
            let send = transaction::send(&mut c, env.from(), env.to(), &params, &raw, &mut each);
            // `stop`: what ended it early and speaks for every recipient
            // not finished; `answered`: the relay replied (whatever it
            // said), else the connection broke or stalled.
            let (stop, answered) = match tokio::time::timeout(self.timeout, send).await {
                Err(_) => {
                    let e = format!("timed out after {:?} sending", self.timeout);
                    (Some(SendResult::Transient(e)), false)
                }
                Ok(Ok(())) => (None, true),
                Ok(Err(Stop::Broke(e))) => (Some(SendResult::Transient(error_text(&e))), false),
                Ok(Err(Stop::Reply(r))) => (Some(r), true),
            };
            // Nothing finished in this attempt: the relay's trouble may
            // send the message elsewhere whole.
            let untouched = each.iter().all(Option::is_none);
            let results: Vec<SendResult> = each
                .into_iter()
                .map(|r| {
                    r.or_else(|| stop.clone())
                        .unwrap_or_else(|| SendResult::Transient("no reply".into()))
                })
                .collect();
            let verdict = stop.clone().unwrap_or_else(|| summary(&results));
            self.count(&verdict, reply_text(&verdict, results.len()));
            let stop_reason = self.judge(&verdict, answered);
            if !c.has_broken() && stop.is_none() {
                conn = Some(c);
            } else {
                close(c).await;
            }
            let failed_here = untouched
                && matches!(
                    verdict,
                    SendResult::Throttled(_) | SendResult::Deferred(_) | SendResult::Refused(_)
                );
            out.push(one_or_each(results));
            if let Some(why) = stop_reason {
                // Throttled or refused, this message may go elsewhere;
                // after a timeout it may have been delivered: it stays.
                reroute_from = Some(if failed_here {
                    out.len() - 1
                } else {
                    out.len()
                });
                let rest = messages.len() - out.len();
                out.extend(std::iter::repeat_n(
                    MessageResult::All(SendResult::NotAttempted(why)),
                    rest,
                ));
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
        Batch {
            results: out,
            reroute_from,
        }
    }

    /// Counts one attempt's result and keeps its reply.
    fn count(&self, result: &SendResult, reply: String) {
        let counter = match result {
            SendResult::Accepted(_) => Some(&self.sent),
            SendResult::Permanent(_) => Some(&self.failed),
            // Our credentials refused: not the message's attempt.
            SendResult::Refused(_) | SendResult::NotAttempted(_) => None,
            _ => Some(&self.deferred),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        *self.last_reply.lock().expect("last reply") = reply;
    }

    /// The relay's state after one reply, and why the rest of the batch
    /// should not go through it now (None: carry on).
    fn judge(&self, result: &SendResult, answered: bool) -> Option<String> {
        let now = Instant::now();
        let mut breaker = self.breaker.lock().expect("breaker");
        let name = &self.name;
        match result {
            SendResult::Throttled(reply) | SendResult::Deferred(reply) => {
                breaker.failed(now, name, "throttled", reply);
                if matches!(result, SendResult::Throttled(_)) {
                    self.throttle.throttled(now);
                }
                Some(format!("relay {name} is throttling ({reply})"))
            }
            SendResult::Refused(reply) => {
                breaker.failed(now, name, "auth failed", reply);
                Some(format!("relay {name} refuses us ({reply})"))
            }
            SendResult::Transient(e) if !answered => {
                breaker.failed(now, name, "unreachable", e);
                Some(format!("relay {name}: {e}"))
            }
            // The relay answered: it is up, whatever it thought of this message.
            SendResult::Accepted(_) => {
                breaker.succeeded(name);
                self.throttle.sent(now);
                None
            }
            _ => {
                breaker.succeeded(name);
                None
            }
        }
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

/// One result for all when every recipient had the same.
pub fn one_or_each(results: Vec<SendResult>) -> MessageResult {
    match results.split_first() {
        Some((first, rest)) if rest.iter().all(|r| r == first) => MessageResult::All(first.clone()),
        _ => MessageResult::Each(results),
    }
}

/// The result that stands for a message's recipients in the relay's
/// counts: delivered if any was, else the first.
fn summary(results: &[SendResult]) -> SendResult {
    results
        .iter()
        .find(|r| matches!(r, SendResult::Accepted(_)))
        .or(results.first())
        .cloned()
        .unwrap_or(SendResult::Accepted(String::new()))
}

/// The reply kept as the relay's last.
fn reply_text(verdict: &SendResult, recipients: usize) -> String {
    match verdict.error() {
        Some(e) => e.to_string(),
        None => format!("250 accepted ({recipients} recipients)"),
    }
}

/// How long until the first of these messages' deadlines passes (a day
/// when none has one).
fn until_expiry(messages: &[&Leased]) -> Duration {
    let now = crate::model::now_ms();
    let first = messages
        .iter()
        .map(|m| m.record.expires_ms)
        .filter(|&e| e != 0)
        .min();
    first.map_or(Duration::from_secs(86_400), |e| {
        Duration::from_millis(e.saturating_sub(now) + 1)
    })
}

/// The result of a message past its deadline (None: not past it).
pub fn expired(record: &crate::model::Record) -> Option<SendResult> {
    let now = crate::model::now_ms();
    (record.expires_ms != 0 && now >= record.expires_ms).then(|| {
        SendResult::Expired(format!(
            "expired: its deadline passed {} s ago, before it could be sent",
            (now - record.expires_ms) / 1000
        ))
    })
}
