//! Settings, their defaults, and their validation.
//!
//! Precedence: built-in defaults < TOML file (`--config`) < environment
//! (`MAILSPOOL_*`) < flags. Environment and flags are merged by clap in
//! `cli`; this module owns the values and checks them once, at start.
//!
//! Files: this one the settings, their defaults and what is derived from
//! them; `file.rs` the TOML file's sections and flat keys; `validate.rs`
//! the checks; `relay.rs` a relay's URL and TLS level; `relays.rs` the
//! relays (`[[relays]]`, or the flat `relay` settings) and their checks;
//! `webhooks.rs` the webhook endpoints (`[[webhooks]]`) and theirs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod file;
mod relay;
mod relays;
mod validate;
mod webhooks;

pub use file::is_setting;
pub use relay::{RelayTls, RelayUrl};
pub use relays::{RelayConfig, DEFAULT_RELAY};
pub use webhooks::{SigningKey, WebhookConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting of the server. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` HTTP address; `off` disables it.
    pub metrics_listen: String,
    /// With TLS configured (`tls_cert_file`), serve `metrics_listen` (the
    /// console and `/metrics`) over HTTPS with the same certificate; false
    /// keeps it plain HTTP (a scraper on the host).
    pub metrics_tls: bool,
    /// Where the spool (sled), and the outbox when no relay is set, live.
    pub data_dir: PathBuf,
    /// `smtp://host[:port]` or `smtps://host[:port]`; none = local outbox.
    pub relay: Option<String>,
    /// Default: required, or opportunistic when the relay is on loopback.
    pub relay_tls: Option<RelayTls>,
    pub relay_user: Option<String>,
    /// Read from `MAILSPOOL_RELAY_PASSWORD` or `relay_password_file` only.
    #[serde(skip)]
    pub relay_password: Option<Secret>,
    pub relay_password_file: Option<PathBuf>,
    /// An OAuth2 access token (SMTP AUTH XOAUTH2, for Microsoft 365 and
    /// Gmail), kept current by an external refresher: read at each new
    /// connection, never logged.
    pub relay_oauth2_token_file: Option<PathBuf>,
    /// PEM file of the CA(s) that sign the relay's certificate, trusted
    /// besides the web roots (a private CA, a self-signed relay).
    pub relay_ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM) for relays that ask for one.
    pub relay_client_cert_file: Option<PathBuf>,
    pub relay_client_key_file: Option<PathBuf>,
    /// The name in EHLO; default: the machine's fully qualified name, else
    /// the connection's own address as an address literal (`[192.0.2.7]`).
    pub relay_helo_name: Option<String>,
    /// Upper bound on concurrent SMTP connections.
    pub relay_max_connections: usize,
    /// The relay's sending quota, messages per second (0 = none) ...
    pub relay_rate_per_second: u32,
    /// ... and how many may go back to back above it (0 = none).
    pub relay_burst: u32,
    /// `[[relays]]`: several relays with routes, priorities and weights;
    /// instead of `relay` (which is one relay named `default`).
    #[serde(skip_serializing)]
    pub relays: Vec<RelayConfig>,
    /// `[[webhooks]]`: endpoints told of every event (Standard Webhooks).
    pub webhooks: Vec<WebhookConfig>,
    /// Delivery workers; default = the relays' max_connections summed.
    pub workers: Option<usize>,
    /// Messages per lease.
    pub lease_batch: usize,
    /// A lease not finished by then returns its messages to the due set.
    pub lease_timeout_ms: u64,
    /// Timeout for connecting and for each SMTP exchange.
    pub smtp_timeout_ms: u64,
    /// First retry delay (upper bound of the full-jitter draw).
    pub retry_base_ms: u64,
    /// Largest retry delay.
    pub retry_cap_ms: u64,
    pub max_attempts: u32,
    /// Older than this (since enqueue) → dead letter instead of retry.
    pub max_age_secs: u64,
    /// Per lane: a message older than this is never sent (its recipients
    /// expire), unless its own `expires_at_unix_ms` is earlier; 0 = none.
    pub transactional_expiry_secs: u64,
    pub normal_expiry_secs: u64,
    pub bulk_expiry_secs: u64,
    /// Bounce classes that put the address on the suppression list.
    pub suppress_classes: Vec<String>,
    /// How long an address stays suppressed (0 = until removed).
    pub suppression_expiry_secs: u64,
    /// The event log keeps events this long ...
    pub event_retention_secs: u64,
    /// ... and at most this many bytes of them (the oldest go first).
    pub event_retention_bytes: u64,
    pub max_recipients: usize,
    pub max_message_bytes: usize,
    /// The domain of the Message-IDs mailspool makes; default: the
    /// sender's domain (as A-labels).
    pub message_id_domain: Option<String>,
    pub max_batch_items: usize,
    pub idempotency_window_secs: u64,
    /// How long GetMessage still knows a delivered message.
    pub delivered_retention_secs: u64,
    /// sled page cache.
    pub cache_capacity_bytes: u64,
    /// Size at which a body segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// Refuse Enqueue (RESOURCE_EXHAUSTED) as the spool nears this size;
    /// 0 = no limit. Bulk from 80%, normal from 90%, transactional at 100%.
    pub max_spool_bytes: u64,
    /// Refuse Enqueue as free disk space nears this: bulk below 3×, normal
    /// below 2×, transactional below 1×.
    pub min_free_bytes: u64,
    /// How long shutdown waits for in-flight deliveries.
    pub shutdown_grace_ms: u64,
    pub log_format: LogFormat,
    /// tracing filter, e.g. `warn,mailspool=debug`. `RUST_LOG` overrides.
    pub log_level: String,
    /// Congestion thresholds: oldest message age (seconds).
    pub congestion_warn_age_secs: u64,
    pub congestion_critical_age_secs: u64,
    /// Congestion thresholds: drain ETA (seconds).
    pub congestion_warn_eta_secs: u64,
    pub congestion_critical_eta_secs: u64,
    /// Sustained growth warns only with at least this many queued.
    pub congestion_growth_min_depth: u64,
    /// Nothing delivered for a minute with ready mail is CRITICAL once the
    /// server has been up this long.
    pub congestion_stall_after_secs: u64,
    /// A transactional message due this long and not delivered is a
    /// WARNING (password resets wait seconds, not minutes) ...
    pub congestion_transactional_warn_wait_secs: u64,
    /// ... and this long a CRITICAL.
    pub congestion_transactional_critical_wait_secs: u64,
    /// A congestion state steps down only after the better assessment has
    /// held this long (and the backlog is below half its peak).
    pub congestion_clear_after_secs: u64,
    /// How long a console login lasts (auth on).
    pub console_session_secs: u64,
    /// Serve without authentication on a non-loopback address (refused
    /// otherwise). Contradicts `[[clients]]`.
    pub insecure_no_auth: bool,
    /// The callers and their policies; auth is on when any is set or the
    /// listen address is not loopback.
    #[serde(skip_serializing)]
    pub clients: Vec<crate::intake::auth::ClientConfig>,
    /// `[[dkim]]`: a signing key per From domain.
    #[serde(skip_serializing)]
    pub dkim: Vec<crate::intake::message::dkim::DkimConfig>,
    /// gRPC over TLS: certificate chain and key (PEM), reloaded on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// mTLS: CA bundle (PEM); a client certificate, when presented, must
    /// be signed by it (callers without one authenticate with a token).
    pub tls_client_ca_file: Option<PathBuf>,
    /// Per-connection limits (hardening): concurrent HTTP/2 streams,
    /// requests in progress, and the request timeout.
    pub grpc_max_concurrent_streams: u32,
    pub grpc_request_timeout_ms: u64,
    /// Connections at once; beyond, new ones wait in the backlog.
    pub grpc_max_connections: usize,
    /// A connection must finish its TLS handshake and send the HTTP/2
    /// preface within this.
    pub grpc_handshake_timeout_ms: u64,
    /// HTTP/2 flow control: the window each stream, and each connection,
    /// opens to the client (h2's default is 64 KiB, less than one
    /// EnqueueBatch of 100 × 2 KiB); and the largest frame the server
    /// reads. Measured in BENCHMARKS.md.
    pub grpc_stream_window_bytes: u32,
    pub grpc_connection_window_bytes: u32,
    pub grpc_max_frame_bytes: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:50051".parse().expect("valid literal"),
            data_dir: PathBuf::from("./mailspool-data"),
            relay: None,
            relay_tls: None,
            relay_user: None,
            relay_password: None,
            relay_password_file: None,
            relay_oauth2_token_file: None,
            relay_ca_file: None,
            relay_client_cert_file: None,
            relay_client_key_file: None,
            relay_helo_name: None,
            relay_max_connections: 16,
            relay_rate_per_second: 0,
            relay_burst: 0,
            relays: Vec::new(),
            webhooks: Vec::new(),
            workers: None,
            lease_batch: 32,
            lease_timeout_ms: 300_000,
            smtp_timeout_ms: 60_000,
            retry_base_ms: 30_000,
            retry_cap_ms: 900_000,
            max_attempts: 20,
            max_age_secs: 86_400,
            transactional_expiry_secs: 0,
            normal_expiry_secs: 0,
            bulk_expiry_secs: 0,
            suppress_classes: vec!["bad_mailbox".into(), "bad_domain".into()],
            suppression_expiry_secs: 30 * 86_400,
            event_retention_secs: 3 * 86_400,
            event_retention_bytes: 256 << 20,
            max_recipients: 100,
            max_message_bytes: 10 * 1024 * 1024,
            message_id_domain: None,
            max_batch_items: 1_000,
            idempotency_window_secs: 86_400,
            delivered_retention_secs: 3_600,
            cache_capacity_bytes: 64 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            max_spool_bytes: 0,
            min_free_bytes: 100 * 1024 * 1024,
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
            log_level: "warn,mailspool=info".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            metrics_tls: true,
            congestion_warn_age_secs: 300,
            congestion_critical_age_secs: 900,
            congestion_warn_eta_secs: 600,
            congestion_critical_eta_secs: 1800,
            congestion_growth_min_depth: 10_000,
            congestion_stall_after_secs: 60,
            congestion_transactional_warn_wait_secs: 30,
            congestion_transactional_critical_wait_secs: 120,
            congestion_clear_after_secs: 30,
            console_session_secs: 8 * 3600,
            insecure_no_auth: false,
            clients: Vec::new(),
            dkim: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            grpc_max_concurrent_streams: 256,
            grpc_request_timeout_ms: 60_000,
            grpc_max_connections: 1024,
            grpc_handshake_timeout_ms: 10_000,
            grpc_stream_window_bytes: 64 * 1024 - 1,
            grpc_connection_window_bytes: 64 * 1024 - 1,
            grpc_max_frame_bytes: 16 * 1024,
        }
    }
}

/// A secret setting: its Debug never shows the value, so a logged or
/// printed `Config` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A setting that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

/// A name for a relay or a webhook: it appears in metrics labels, the
/// CLI and (for webhooks) the spool's cursor key.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn bad(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

impl Config {
    /// Whether callers must authenticate.
    pub fn auth_enabled(&self) -> bool {
        !self.insecure_no_auth && (!self.clients.is_empty() || !self.listen.ip().is_loopback())
    }

    /// The TLS files, when gRPC is served over TLS.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert_file: self.tls_cert_file.clone()?,
            key_file: self.tls_key_file.clone()?,
            client_ca_file: self.tls_client_ca_file.clone(),
        })
    }

    /// Whether `metrics_listen` is served over TLS.
    pub fn metrics_over_tls(&self) -> bool {
        self.metrics_tls && self.tls_files().is_some()
    }

    /// The metrics address (call after `validate`); None when `off`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.parse().ok()
    }

    pub fn thresholds(&self) -> crate::observe::congestion::Thresholds {
        crate::observe::congestion::Thresholds {
            warn_age_secs: self.congestion_warn_age_secs as f64,
            critical_age_secs: self.congestion_critical_age_secs as f64,
            warn_eta_secs: self.congestion_warn_eta_secs as f64,
            critical_eta_secs: self.congestion_critical_eta_secs as f64,
            growth_min_depth: self.congestion_growth_min_depth,
            stall_after_secs: self.congestion_stall_after_secs,
            transactional_warn_wait_secs: self.congestion_transactional_warn_wait_secs as f64,
            transactional_critical_wait_secs: self.congestion_transactional_critical_wait_secs
                as f64,
            clear_after_ms: self.congestion_clear_after_secs.saturating_mul(1000),
        }
    }

    pub fn effective_workers(&self) -> usize {
        let relays = self.relay_set();
        self.workers.unwrap_or(if relays.is_empty() {
            self.relay_max_connections
        } else {
            relays.iter().map(|r| r.max_connections).sum()
        })
    }

    /// The default deadline of `lane`'s messages, if it has one.
    pub fn lane_expiry(&self, lane: crate::model::Lane) -> Option<Duration> {
        let secs = match lane {
            crate::model::Lane::Transactional => self.transactional_expiry_secs,
            crate::model::Lane::Normal => self.normal_expiry_secs,
            crate::model::Lane::Bulk => self.bulk_expiry_secs,
        };
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// Which bounces suppress an address, for how long (after `validate`).
    pub fn suppression(&self) -> crate::spool::SuppressionPolicy {
        crate::spool::SuppressionPolicy {
            classes: self
                .suppress_classes
                .iter()
                .filter_map(|c| crate::model::BounceClass::parse(c))
                .collect(),
            expiry: Duration::from_secs(self.suppression_expiry_secs),
        }
    }

    pub fn event_retention(&self) -> crate::spool::EventRetention {
        crate::spool::EventRetention {
            max_age: Duration::from_secs(self.event_retention_secs),
            max_bytes: self.event_retention_bytes,
        }
    }

    pub fn lease_timeout(&self) -> Duration {
        Duration::from_millis(self.lease_timeout_ms)
    }

    pub fn smtp_timeout(&self) -> Duration {
        Duration::from_millis(self.smtp_timeout_ms)
    }
}

#[cfg(test)]
mod tests;
