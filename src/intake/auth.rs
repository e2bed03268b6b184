//! Who may call what, and within which limits.
//!
//! Callers authenticate with a bearer token (`authorization: Bearer
//! <token>`) or, with mTLS, a client certificate whose subject is mapped
//! to a client. The configuration holds only SHA-256 hashes of tokens
//! (tokens are 256 random bits, so a fast hash is enough). Each client has
//! roles (`enqueue` for MailQueue, `admin` for QueueAdmin) and a policy:
//! the senders it may use, its lanes, a rate limit (governor) and a spool
//! quota.
//!
//! Invariants:
//! - With auth off (loopback and no clients configured, or an explicit
//!   `insecure_no_auth`), every caller is the anonymous client ("") with
//!   every role and no limits.
//! - A token never reaches a log line or an error message; failures log
//!   the peer and the reason only.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{Quota, RateLimiter};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::model::Lane;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// MailQueue: Enqueue, EnqueueBatch, GetMessage.
    Enqueue,
    /// QueueAdmin: stats and every operation; raw enqueues.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Enqueue => "enqueue",
            Role::Admin => "admin",
        }
    }
}

/// One `[[clients]]` entry of the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    /// Lowercase hex SHA-256 of the token (`mailspool token create`).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// mTLS: the client certificate's subject, e.g. "CN=billing.internal".
    #[serde(default)]
    pub cert_subject: Option<String>,
    pub roles: Vec<Role>,
    /// Addresses (`alerts@example.com`) or domains (`@example.com`) the
    /// client may send from; empty: any.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
    /// Lanes it may use; empty: every lane.
    #[serde(default)]
    pub lanes: Vec<String>,
    /// Messages per second (0: no limit) and burst.
    #[serde(default)]
    pub rate_per_second: u32,
    #[serde(default)]
    pub burst: u32,
    /// Queued at once (0: no limit).
    #[serde(default)]
    pub max_queued_messages: u64,
    #[serde(default)]
    pub max_queued_bytes: u64,
    /// Its mail goes even to addresses on the suppression list (for mail
    /// that must go out regardless). Off unless set.
    #[serde(default)]
    pub bypass_suppression: bool,
}

impl ClientConfig {
    /// An entry with a token hash and roles, and no policy or limits.
    pub fn with_token(name: &str, token_sha256: String, roles: &[Role]) -> ClientConfig {
        ClientConfig {
            name: name.to_string(),
            token_sha256: Some(token_sha256),
            cert_subject: None,
            roles: roles.to_vec(),
            allowed_senders: Vec::new(),
            lanes: Vec::new(),
            rate_per_second: 0,
            burst: 0,
            max_queued_messages: 0,
            max_queued_bytes: 0,
            bypass_suppression: false,
        }
    }

    /// Checks the entry; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok_name {
            return Err("name: 1-64 of A-Z a-z 0-9 . _ -".into());
        }
        if let Some(h) = &self.token_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("token_sha256: 64 hex digits (from `mailspool token create`)".into());
            }
        }
        if self.token_sha256.is_none() && self.cert_subject.is_none() {
            return Err("token_sha256 or cert_subject is required".into());
        }
        if self.roles.is_empty() {
            return Err("roles: at least one of \"enqueue\", \"admin\"".into());
        }
        for s in &self.allowed_senders {
            let domain = s.strip_prefix('@');
            let valid = match domain {
                Some(d) => !d.is_empty() && !d.contains('@'),
                None => s.parse::<lettre::Address>().is_ok(),
            };
            if !valid {
                return Err(format!(
                    "allowed_senders: `{s}` is neither an address nor @domain"
                ));
            }
        }
        for l in &self.lanes {
            if Lane::parse(l).is_none() {
                return Err(format!("lanes: `{l}` is not transactional, normal or bulk"));
            }
        }
        if self.rate_per_second > 0 && self.burst == 0 {
            return Err("burst: at least 1 when rate_per_second is set".into());
        }
        Ok(())
    }
}

/// A client as the server enforces it.
pub struct Client {
    pub name: String,
    roles: Vec<Role>,
    senders: Vec<String>,
    /// Bit per `Lane::index`.
    lanes: u8,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    pub rate_per_second: u32,
    pub max_queued_messages: u64,
    pub max_queued_bytes: u64,
    pub bypass_suppression: bool,
    /// Refused for its rate limit, its quota, or its policy.
    pub refused_rate: AtomicU64,
    pub refused_quota: AtomicU64,
    pub refused_policy: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.name)
    }
}

impl Client {
    pub(crate) fn new(c: &ClientConfig) -> Client {
        let limiter = NonZeroU32::new(c.rate_per_second).map(|rate| {
            let burst = NonZeroU32::new(c.burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Client {
            name: c.name.clone(),
            roles: c.roles.clone(),
            senders: c
                .allowed_senders
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            lanes: if c.lanes.is_empty() {
                0b111
            } else {
                c.lanes
                    .iter()
                    .filter_map(|l| Lane::parse(l))
                    .fold(0, |m, l| m | 1 << l.index())
            },
            limiter,
            rate_per_second: c.rate_per_second,
            max_queued_messages: c.max_queued_messages,
            max_queued_bytes: c.max_queued_bytes,
            bypass_suppression: c.bypass_suppression,
            refused_rate: AtomicU64::new(0),
            refused_quota: AtomicU64::new(0),
            refused_policy: AtomicU64::new(0),
        }
    }

    fn anonymous() -> Client {
        Client {
            name: String::new(),
            roles: vec![Role::Enqueue, Role::Admin],
            senders: Vec::new(),
            lanes: 0b111,
            limiter: None,
            rate_per_second: 0,
            max_queued_messages: 0,
            max_queued_bytes: 0,
            bypass_suppression: false,
            refused_rate: AtomicU64::new(0),
            refused_quota: AtomicU64::new(0),
            refused_policy: AtomicU64::new(0),
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the client may send from `address`. Pure.
    pub fn may_send_as(&self, address: &str) -> bool {
        if self.senders.is_empty() {
            return true;
        }
        let a = address.to_ascii_lowercase();
        let domain = a.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.senders.iter().any(|s| match s.strip_prefix('@') {
            Some(d) => d == domain,
            None => *s == a,
        })
    }

    /// Whether the client is limited to some senders.
    fn restricts_senders(&self) -> bool {
        !self.senders.is_empty()
    }

    pub fn may_use(&self, lane: Lane) -> bool {
        self.lanes & (1 << lane.index()) != 0
    }

    /// Takes one message from the rate limit; Err(wait) when over it.
    fn take(&self) -> Result<(), Duration> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        l.check().map_err(|not_until| {
            not_until
                .wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ))
                .max(Duration::from_millis(1))
        })
    }
}

/// What the policy looks at in a message.
pub struct Facts<'a> {
    pub lane: Lane,
    /// The From field's address (a raw message's envelope sender).
    pub from: &'a str,
    /// The SMTP MAIL FROM.
    pub envelope_from: &'a str,
    pub raw: bool,
    pub bytes: u64,
}

/// Why a client's message is refused.
#[derive(Debug, PartialEq)]
pub enum Denial {
    /// Its policy forbids it: (field, reason). PERMISSION_DENIED.
    Policy(&'static str, String),
    /// Over its spool quota. RESOURCE_EXHAUSTED.
    Quota(String),
    /// Over its rate; retry after the duration. RESOURCE_EXHAUSTED.
    Rate(String, Duration),
}

impl Client {
    /// Policy (raw, lane, sender), then quota, then rate: a message refused
    /// for its policy or quota takes nothing from the rate. `queued` gives
    /// the client's (messages, bytes) in the spool, read only when it has
    /// a quota; `pending` is what this request already admitted, and grows
    /// by the message when it is admitted. Counts each refusal.
    pub fn admit(
        &self,
        m: &Facts<'_>,
        queued: impl FnOnce() -> (u64, u64),
        pending: &mut (u64, u64),
    ) -> Result<(), Denial> {
        let denied = self
            .police(m)
            .or_else(|| self.over_quota(m, queued, *pending));
        if let Some(d) = denied {
            let counter = match d {
                Denial::Policy(..) => &self.refused_policy,
                _ => &self.refused_quota,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(d);
        }
        if let Err(wait) = self.take() {
            self.refused_rate.fetch_add(1, Ordering::Relaxed);
            return Err(Denial::Rate(
                format!(
                    "client `{}` is over its rate limit; retry after {} ms",
                    self.name,
                    wait.as_millis()
                ),
                wait,
            ));
        }
        pending.0 += 1;
        pending.1 += m.bytes;
        Ok(())
    }

    fn police(&self, m: &Facts<'_>) -> Option<Denial> {
        let name = &self.name;
        if m.raw && self.restricts_senders() && !self.has(Role::Admin) {
            return Some(Denial::Policy(
                "raw",
                format!("client `{name}` may send only as its allowed senders, which a raw message cannot be held to; use `email`"),
            ));
        }
        if !self.may_use(m.lane) {
            return Some(Denial::Policy(
                "lane",
                format!("client `{name}` may not use the {} lane", m.lane.name()),
            ));
        }
        if !self.may_send_as(m.from) {
            return Some(Denial::Policy(
                "email.from",
                format!("client `{name}` may not send as `{}`", m.from),
            ));
        }
        if m.envelope_from != m.from && !self.may_send_as(m.envelope_from) {
            return Some(Denial::Policy(
                "email.envelope_from",
                format!(
                    "client `{name}` may not use `{}` as its envelope sender",
                    m.envelope_from
                ),
            ));
        }
        None
    }

    fn over_quota(
        &self,
        m: &Facts<'_>,
        queued: impl FnOnce() -> (u64, u64),
        pending: (u64, u64),
    ) -> Option<Denial> {
        if self.max_queued_messages == 0 && self.max_queued_bytes == 0 {
            return None;
        }
        let (count, bytes) = queued();
        let (count, bytes) = (count + pending.0, bytes + pending.1);
        let over_count = self.max_queued_messages > 0 && count + 1 > self.max_queued_messages;
        let over_bytes = self.max_queued_bytes > 0 && bytes + m.bytes > self.max_queued_bytes;
        (over_count || over_bytes).then(|| {
            Denial::Quota(format!(
                "client `{}` has {count} messages ({bytes} bytes) queued, its quota is {} messages / {} bytes; retry when they are delivered",
                self.name, self.max_queued_messages, self.max_queued_bytes
            ))
        })
    }
}

/// A token that cannot be sent: it holds characters a header cannot.
#[derive(Debug, thiserror::Error)]
#[error("the token holds characters that cannot go in a header; check the token file")]
pub struct InvalidToken;

/// The caller's side: adds `authorization: Bearer <token>` to every call
/// (the CLI, the bench, and a node transferring to another).
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer, InvalidToken> {
        match token {
            None => Ok(Bearer(None)),
            Some(t) => Ok(Bearer(Some(
                format!("Bearer {t}").parse().map_err(|_| InvalidToken)?,
            ))),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the caller's credentials.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// A new random token: `mst_` and 64 hex digits (256 bits).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("mst_{}", hex(&bytes))
}

/// What the configuration stores for a token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The authenticated caller, put in the request's extensions by
/// [`interceptor`] for the handlers.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Client>);

/// The interceptor in front of a service: every call must act in `role`.
/// Guarding whole services means no method can forget the check.
pub fn interceptor(
    auth: Arc<Authenticator>,
    role: Role,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |mut request: tonic::Request<()>| {
        let client = auth.check(&request, role)?;
        request.extensions_mut().insert(Caller(client));
        Ok(request)
    }
}

/// The caller the interceptor admitted.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Arc<Client>, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .ok_or_else(|| {
            Status::internal(
                "no authenticated caller: the service is not behind the auth interceptor",
            )
        })
}

/// Maps credentials to clients.
pub struct Authenticator {
    enabled: bool,
    anonymous: Arc<Client>,
    /// Swapped whole by [`reload`](Self::reload).
    table: std::sync::RwLock<Arc<Table>>,
}

/// The configured clients, by credential.
#[derive(Default)]
struct Table {
    by_token: HashMap<String, Arc<Client>>,
    by_subject: HashMap<String, Arc<Client>>,
    clients: Vec<(ClientConfig, Arc<Client>)>,
}

impl Table {
    /// A client whose entry is unchanged keeps its state (rate limiter,
    /// counters); a changed one starts a new limiter but keeps its counts.
    fn build(configs: &[ClientConfig], old: &Table) -> Table {
        let mut t = Table::default();
        for cfg in configs {
            let previous = old.clients.iter().find(|(_, c)| c.name == cfg.name);
            let client = match previous {
                Some((old_cfg, c)) if old_cfg == cfg => c.clone(),
                Some((_, c)) => {
                    let fresh = Client::new(cfg);
                    for (to, from) in [
                        (&fresh.refused_rate, &c.refused_rate),
                        (&fresh.refused_quota, &c.refused_quota),
                        (&fresh.refused_policy, &c.refused_policy),
                    ] {
                        to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    Arc::new(fresh)
                }
                None => Arc::new(Client::new(cfg)),
            };
            if let Some(h) = &cfg.token_sha256 {
                t.by_token.insert(h.to_ascii_lowercase(), client.clone());
            }
            if let Some(s) = &cfg.cert_subject {
                t.by_subject.insert(s.clone(), client.clone());
            }
            t.clients.push((cfg.clone(), client));
        }
        t
    }
}

impl Authenticator {
    pub fn new(enabled: bool, configs: &[ClientConfig]) -> Authenticator {
        Authenticator {
            enabled,
            anonymous: Arc::new(Client::anonymous()),
            table: std::sync::RwLock::new(Arc::new(Table::build(configs, &Table::default()))),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().expect("auth table").clone()
    }

    /// Every configured client, for stats.
    pub fn clients(&self) -> Vec<Arc<Client>> {
        self.table()
            .clients
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Replaces the clients (SIGHUP). Calls in progress finish with the
    /// client they started with; the next call sees the new list. Auth
    /// cannot be turned on or off this way (restart for that).
    pub fn reload(&self, enabled: bool, configs: &[ClientConfig]) -> Result<usize, String> {
        if enabled != self.enabled {
            return Err(format!(
                "the new configuration turns authentication {}; that needs a restart",
                if enabled { "on" } else { "off" }
            ));
        }
        let mut table = self.table.write().expect("auth table");
        *table = Arc::new(Table::build(configs, &table));
        Ok(configs.len())
    }

    /// The caller of `request`, if it may act in `role`.
    pub fn check<T>(&self, request: &tonic::Request<T>, role: Role) -> Result<Arc<Client>, Status> {
        if !self.enabled {
            return Ok(self.anonymous.clone());
        }
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let client = match request.metadata().get("authorization") {
            Some(v) => {
                let token = v
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match token.and_then(|t| self.table().by_token.get(&token_hash(t)).cloned()) {
                    Some(c) => c,
                    None => {
                        tracing::warn!(%peer, "AuthFailed: invalid bearer token");
                        return Err(Status::unauthenticated(
                            "authorization: the bearer token is not valid; ask an operator for a token (`mailspool token create`)",
                        ));
                    }
                }
            }
            None => match self.certificate_client(request) {
                Some(c) => c,
                None => {
                    tracing::warn!(%peer, "AuthFailed: no credentials");
                    return Err(Status::unauthenticated(
                        "authorization: no credentials; send `authorization: Bearer <token>` or a client certificate",
                    ));
                }
            },
        };
        if !client.has(role) {
            tracing::warn!(%peer, client = %client.name, role = role.name(), "AuthDenied");
            return Err(Status::permission_denied(format!(
                "client `{}` lacks the `{}` role",
                client.name,
                role.name()
            )));
        }
        Ok(client)
    }

    fn certificate_client<T>(&self, request: &tonic::Request<T>) -> Option<Arc<Client>> {
        let certs = request.peer_certs()?;
        let subject = crate::tls::peer_subject(&certs)?;
        match self.table().by_subject.get(&subject) {
            Some(c) => Some(c.clone()),
            None => {
                tracing::warn!(%subject, "AuthFailed: client certificate not mapped to a client");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(senders: &[&str], lanes: &[&str]) -> Client {
        Client::new(&ClientConfig {
            allowed_senders: senders.iter().map(|s| s.to_string()).collect(),
            lanes: lanes.iter().map(|s| s.to_string()).collect(),
            rate_per_second: 2,
            burst: 2,
            ..ClientConfig::with_token("svc", token_hash("t"), &[Role::Enqueue])
        })
    }

    #[test]
    fn admit_checks_policy_then_quota_then_rate_and_counts_each() {
        let mut cfg = ClientConfig {
            allowed_senders: vec!["@example.com".into()],
            lanes: vec!["normal".into()],
            rate_per_second: 1,
            burst: 2,
            max_queued_messages: 3,
            ..ClientConfig::with_token("svc", token_hash("t"), &[Role::Enqueue])
        };
        let c = Client::new(&cfg);
        let msg = |from, lane, raw| Facts {
            lane,
            from,
            envelope_from: from,
            raw,
            bytes: 100,
        };
        let ok = msg("a@example.com", Lane::Normal, false);
        let mut pending = (0, 0);
        let no_read = || -> (u64, u64) { panic!("no quota read for a policy refusal") };
        // Policy refusals take nothing from the rate and read no quota.
        for (m, field) in [
            (msg("a@evil.example", Lane::Normal, false), "email.from"),
            (msg("a@example.com", Lane::Bulk, false), "lane"),
            (msg("a@example.com", Lane::Normal, true), "raw"),
            (
                Facts {
                    envelope_from: "bounces@evil.example",
                    ..msg("a@example.com", Lane::Normal, false)
                },
                "email.envelope_from",
            ),
        ] {
            match c.admit(&m, no_read, &mut pending) {
                Err(Denial::Policy(f, _)) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(c.refused_policy.load(Ordering::Relaxed), 4);
        // Quota: 1 queued + what this request admitted.
        assert!(c.admit(&ok, || (1, 0), &mut pending).is_ok());
        assert_eq!(pending, (1, 100));
        assert!(c.admit(&ok, || (1, 0), &mut pending).is_ok());
        assert!(matches!(
            c.admit(&ok, || (1, 0), &mut pending),
            Err(Denial::Quota(_))
        ));
        // Rate: the burst of 2 is spent.
        let err = c.admit(&ok, || (0, 0), &mut (0, 0)).unwrap_err();
        assert!(
            matches!(err, Denial::Rate(_, wait) if wait > Duration::ZERO),
            "{err:?}"
        );
        assert_eq!(
            (
                c.refused_quota.load(Ordering::Relaxed),
                c.refused_rate.load(Ordering::Relaxed)
            ),
            (1, 1)
        );
        // An admin may send raw whatever its senders.
        cfg.roles.push(Role::Admin);
        cfg.rate_per_second = 0;
        let admin = Client::new(&cfg);
        let raw = msg("a@example.com", Lane::Normal, true);
        assert!(admin.admit(&raw, || (0, 0), &mut (0, 0)).is_ok());
    }

    #[test]
    fn sender_and_lane_policy_as_a_table() {
        let c = client(
            &["alerts@Example.com", "@notify.example.org"],
            &["transactional"],
        );
        for (from, ok) in [
            ("alerts@example.com", true),
            ("ALERTS@EXAMPLE.COM", true),
            ("other@example.com", false),
            ("x@notify.example.org", true),
            ("x@evil.notify.example.org", false),
            ("x@example.org", false),
        ] {
            assert_eq!(c.may_send_as(from), ok, "{from}");
        }
        assert!(c.may_use(Lane::Transactional));
        assert!(!c.may_use(Lane::Bulk));
        assert!(client(&[], &[]).may_send_as("anyone@anywhere.example"));
        assert!(client(&[], &[]).may_use(Lane::Bulk));
    }

    #[test]
    fn the_rate_limit_allows_the_burst_then_says_how_long_to_wait() {
        let c = client(&[], &[]);
        assert!(c.take().is_ok());
        assert!(c.take().is_ok());
        let wait = c.take().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("mst_") && a.len() == 68);
        let h = token_hash(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a[4..]));
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn config_entries_name_the_bad_field() {
        let good = ClientConfig {
            allowed_senders: vec!["@example.com".into()],
            lanes: vec!["bulk".into()],
            ..ClientConfig::with_token("svc", token_hash("t"), &[Role::Enqueue])
        };
        assert!(good.validate().is_ok());
        type Edit = Box<dyn Fn(&mut ClientConfig)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|c| c.name = "a b".into()), "name"),
            (
                Box::new(|c| c.token_sha256 = Some("xyz".into())),
                "token_sha256",
            ),
            (
                Box::new(|c| {
                    c.token_sha256 = None;
                    c.cert_subject = None
                }),
                "token_sha256 or cert_subject",
            ),
            (Box::new(|c| c.roles.clear()), "roles"),
            (
                Box::new(|c| c.allowed_senders = vec!["nope".into()]),
                "allowed_senders",
            ),
            (Box::new(|c| c.lanes = vec!["urgent".into()]), "lanes"),
            (Box::new(|c| c.rate_per_second = 5), "burst"),
        ];
        for (edit, field) in cases {
            let mut c = good.clone();
            edit(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(field), "{e} (want {field})");
        }
    }
}
