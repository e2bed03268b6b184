//! Where messages go: the relays (each its own pool, `pool`), chosen per
//! message by the router with failover, or the local outbox directory.
//!
//! A lease's messages are routed one by one (`router::choose`); each
//! relay sends its share; what a relay could not take because it failed
//! (down, throttling, refusing us, at its rate) is routed again at once
//! with that relay skipped, so a message never waits for a relay that is
//! down while another that may carry it is up.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use lettre::{AsyncFileTransport, AsyncTransport, Tokio1Executor};

use crate::config::Config;
use crate::delivery::breaker::RelayState;
use crate::delivery::pool::SmtpRelay;
use crate::delivery::retry::{MessageResult, SendResult};
use crate::delivery::router::{choose, Candidate, Choice, Route};
use crate::delivery::transaction::envelope;
use crate::intake::message::{dkim, header};
use crate::model::{Lane, Leased};
use crate::observe::overview::RelayFigures;

fn now_secs() -> u64 {
    crate::model::wall_ms() / 1000
}

/// The delivery end: SMTP relays, or the outbox when none is configured.
pub struct Relay {
    relays: Vec<SmtpRelay>,
    /// Each relay's route (lanes, senders), in `relays` order.
    routes: Vec<Candidate>,
    outbox: Option<Outbox>,
    /// DKIM keys by From domain: messages are signed as they are sent.
    signers: Vec<dkim::Signer>,
}

impl Relay {
    pub fn from_config(config: &Config) -> std::io::Result<Relay> {
        let signers = dkim::signers(&config.dkim).map_err(std::io::Error::other)?;
        let set = config.relay_set();
        let mut relays = Vec::with_capacity(set.len());
        let mut routes = Vec::with_capacity(set.len());
        for r in &set {
            relays.push(SmtpRelay::new(r, config.smtp_timeout()).map_err(std::io::Error::other)?);
            routes.push(Candidate {
                lanes: r.lanes.iter().filter_map(|l| Lane::parse(l)).collect(),
                senders: r.senders.iter().map(|s| s.to_ascii_lowercase()).collect(),
                priority: r.priority,
                weight: r.weight,
                ..Candidate::default()
            });
        }
        let outbox = if set.is_empty() {
            Some(Outbox::new(config.data_dir.join("outbox"))?)
        } else {
            None
        };
        Ok(Relay {
            relays,
            routes,
            outbox,
            signers,
        })
    }

    /// Sends each message; one result per message, in order, with the
    /// name of the relay that gave it ("" when none was tried). Messages
    /// not sent by the time `deadline` (the end of the lease) has passed
    /// are "not attempted": they may already be leased to another worker.
    pub async fn send_all(
        &self,
        messages: &[&Leased],
        deadline: Instant,
    ) -> Vec<(MessageResult, &str)> {
        if let Some(o) = &self.outbox {
            let results = o.send_all(messages, &self.signers).await;
            return results.into_iter().map(|r| (r, OUTBOX_NAME)).collect();
        }
        // The From field matters only to routes by sender.
        let by_sender = self.routes.iter().any(|r| !r.senders.is_empty());
        let froms: Vec<Option<String>> = messages
            .iter()
            .map(|m| {
                by_sender.then(|| {
                    header::section_of(&m.raw)
                        .and_then(header::from_address)
                        .unwrap_or_else(|| m.record.envelope_from.to_ascii_lowercase())
                })
            })
            .collect();
        let n = messages.len();
        let mut done: Vec<Option<(MessageResult, &str)>> = vec![None; n];
        // What the relay that failed a message said, should no other take it.
        let mut last: Vec<Option<(MessageResult, &str)>> = vec![None; n];
        let mut excluded = vec![false; self.relays.len()];
        let mut pending: Vec<usize> = (0..n).collect();
        while !pending.is_empty() {
            let views = self.candidates(Instant::now());
            // (relay, may wait for it, messages), in order of first use.
            let mut groups: Vec<(usize, bool, Vec<usize>)> = Vec::new();
            for i in std::mem::take(&mut pending) {
                let route = Route {
                    lane: messages[i].record.lane,
                    from: froms[i].as_deref(),
                };
                let (r, may_wait) = match choose(&route, &views, &excluded, rand::random()) {
                    Choice::Use(r) => (r, false),
                    Choice::WaitFor(r) => (r, true),
                    Choice::Nothing => {
                        done[i] = Some(last[i].take().unwrap_or_else(|| {
                            let why = "every relay that may carry it is paused";
                            (MessageResult::All(SendResult::NotAttempted(why.into())), "")
                        }));
                        continue;
                    }
                };
                match groups.iter_mut().find(|g| g.0 == r && g.1 == may_wait) {
                    Some(g) => g.2.push(i),
                    None => groups.push((r, may_wait, vec![i])),
                }
            }
            for (r, may_wait, idxs) in groups {
                let batch: Vec<&Leased> = idxs.iter().map(|&i| messages[i]).collect();
                let sent = self.relays[r]
                    .send_all(&batch, deadline, may_wait, &self.signers)
                    .await;
                let name = self.relays[r].name.as_str();
                for (k, (i, result)) in idxs.into_iter().zip(sent.results).enumerate() {
                    let result = (result, name);
                    if sent.reroute_from.is_some_and(|from| k >= from) {
                        last[i] = Some(result);
                        pending.push(i);
                    } else {
                        done[i] = Some(result);
                    }
                }
                if sent.reroute_from.is_some() {
                    excluded[r] = true;
                }
            }
        }
        done.into_iter()
            .map(|r| r.expect("every message has a result"))
            .collect()
    }

    /// The relays as the router sees them now.
    fn candidates(&self, now: Instant) -> Vec<Candidate> {
        self.relays
            .iter()
            .zip(&self.routes)
            .map(|(relay, route)| Candidate {
                paused: relay.paused.load(Ordering::Relaxed),
                down_for: relay.breaker.lock().expect("breaker").health(now),
                ..route.clone()
            })
            .collect()
    }

    /// Each relay's state, rates and counts, in configuration order.
    pub fn figures(&self) -> Vec<RelayFigures> {
        let now = Instant::now();
        self.relays.iter().map(|r| r.figures(now)).collect()
    }

    /// The delivery end as one state, from the relays' `figures`: ok when
    /// every relay is, else the first relay's (in configuration order)
    /// that is not, its reason naming it when there are several.
    pub fn state_of(figures: &[RelayFigures]) -> RelayState {
        let Some(f) = figures.iter().find(|f| f.state != "ok") else {
            return RelayState {
                state: "ok",
                reason: String::new(),
                consecutive_failures: 0,
                backoff_remaining_ms: 0,
            };
        };
        RelayState {
            state: f.state,
            reason: if figures.len() > 1 {
                format!("relay {}: {}", f.name, f.reason)
            } else {
                f.reason.clone()
            },
            consecutive_failures: f.consecutive_failures,
            backoff_remaining_ms: f.backoff_remaining_ms,
        }
    }

    pub fn describe(&self) -> String {
        match &self.outbox {
            Some(o) => format!("outbox {}", o.dir.display()),
            None => self
                .relays
                .iter()
                .map(|r| r.describe())
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// The relays' names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.relays.iter().map(|r| r.name.clone()).collect()
    }

    /// Pauses exactly the relays named (unknown names are ignored: a
    /// persisted pause may name a relay since removed).
    pub fn set_paused(&self, names: &[String]) {
        for r in &self.relays {
            let paused = names.contains(&r.name);
            if r.paused.swap(paused, Ordering::Relaxed) != paused {
                tracing::warn!(relay = %r.name, paused, "RelayPauseChanged");
            }
        }
    }

    /// Lanes no relay that is up and not paused carries (the alert: every
    /// relay of a route down).
    pub fn lanes_without_relay(&self) -> Vec<Lane> {
        if self.outbox.is_some() {
            return Vec::new();
        }
        let views = self.candidates(Instant::now());
        Lane::ALL
            .into_iter()
            .filter(|&lane| {
                !views.iter().any(|c| {
                    !c.paused
                        && c.down_for.is_none()
                        && (c.lanes.is_empty() || c.lanes.contains(&lane))
                })
            })
            .collect()
    }
}

/// The relay named in the events of messages written to the outbox.
const OUTBOX_NAME: &str = "outbox";

/// What the outbox "replies" when it has written a message.
const OUTBOX_REPLY: &str = "250 written to the outbox";

/// `.eml` files in a directory, through lettre's file transport.
pub struct Outbox {
    pub dir: PathBuf,
    transport: AsyncFileTransport<Tokio1Executor>,
}

impl Outbox {
    pub fn new(dir: PathBuf) -> std::io::Result<Outbox> {
        std::fs::create_dir_all(&dir)?;
        let transport = AsyncFileTransport::new(&dir);
        Ok(Outbox { dir, transport })
    }

    async fn send_all(&self, messages: &[&Leased], signers: &[dkim::Signer]) -> Vec<MessageResult> {
        let mut out = Vec::with_capacity(messages.len());
        for r in messages {
            if let Some(late) = crate::delivery::pool::expired(&r.record) {
                out.push(MessageResult::All(late));
                continue;
            }
            let result = match envelope(&r.record) {
                Err(e) => SendResult::Permanent(format!("bad envelope: {e}")),
                Ok(env) => match self
                    .transport
                    .send_raw(&env, &dkim::sign_with(signers, &r.raw, now_secs()))
                    .await
                {
                    Ok(_) => SendResult::Accepted(OUTBOX_REPLY.into()),
                    Err(e) => SendResult::Transient(format!("outbox write failed: {e}")),
                },
            };
            out.push(MessageResult::All(result));
        }
        out
    }
}
