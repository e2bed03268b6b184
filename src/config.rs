//! Settings, their defaults, and their validation.
//!
//! Precedence: built-in defaults < TOML file (`--config`) < environment
//! (`MAILSPOOL_*`) < flags. Environment and flags are merged by clap in
//! `cli`; this module owns the values and checks them once, at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// TLS policy towards the relay, as Postfix's `smtp_tls_security_level`
/// means its levels (RFC 7435 for the opportunistic one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Plain SMTP, never STARTTLS (not with smtps://).
    None,
    /// STARTTLS when the relay offers it, the certificate not verified
    /// (Postfix `may`); plain SMTP when it does not.
    Opportunistic,
    /// TLS mandatory (STARTTLS or smtps://), the certificate not verified
    /// (Postfix `encrypt`).
    Encrypt,
    /// TLS mandatory, the certificate chain and the relay's name verified
    /// against the web roots or `relay_ca_file` (Postfix `verify`/`secure`).
    /// `required`, the earlier spelling, means this.
    #[serde(alias = "required")]
    #[value(alias = "required")]
    Verify,
}

impl RelayTls {
    pub fn name(self) -> &'static str {
        match self {
            RelayTls::None => "none",
            RelayTls::Opportunistic => "opportunistic",
            RelayTls::Encrypt => "encrypt",
            RelayTls::Verify => "verify",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Sections of the TOML file and the prefix their keys take as flat keys.
const SECTIONS: &[(&str, &str)] = &[
    ("spool", ""),
    ("relay", "relay_"),
    ("retry", "retry_"),
    ("grpc", "grpc_"),
    ("congestion", "congestion_"),
    ("limits", ""),
    ("log", "log_"),
    ("tls", "tls_"),
    ("message", "message_"),
];

/// Whether `key` is a setting: the struct itself says (unknown fields are
/// refused), so there is no second list of names to keep in step.
pub fn is_setting(key: &str) -> bool {
    let probe: toml::Table = [(key.to_string(), toml::Value::Table(toml::Table::new()))]
        .into_iter()
        .collect();
    match Config::deserialize(probe) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("unknown field"),
    }
}

/// Every setting of the server. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` HTTP address; `off` disables it.
    pub metrics_listen: String,
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
    /// Delivery workers; default = relay_max_connections.
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
            workers: None,
            lease_batch: 32,
            lease_timeout_ms: 300_000,
            smtp_timeout_ms: 60_000,
            retry_base_ms: 30_000,
            retry_cap_ms: 900_000,
            max_attempts: 20,
            max_age_secs: 86_400,
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
            congestion_warn_age_secs: 300,
            congestion_critical_age_secs: 900,
            congestion_warn_eta_secs: 600,
            congestion_critical_eta_secs: 1800,
            congestion_growth_min_depth: 10_000,
            congestion_stall_after_secs: 60,
            congestion_transactional_warn_wait_secs: 30,
            congestion_transactional_critical_wait_secs: 120,
            congestion_clear_after_secs: 30,
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

fn bad(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// A parsed `--relay` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    pub host: String,
    pub port: u16,
    /// smtps://: TLS from the first byte.
    pub implicit_tls: bool,
}

impl RelayUrl {
    pub fn parse(url: &str) -> Result<RelayUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("expected smtp://host[:port] or smtps://host[:port]")?;
        let (implicit_tls, default_port) = match scheme {
            "smtp" => (false, 25),
            "smtps" => (true, 465),
            other => return Err(format!("unknown scheme `{other}`: use smtp:// or smtps://")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '@', '?']) {
            return Err("expected only host[:port] after the scheme (credentials go in --relay-user and MAILSPOOL_RELAY_PASSWORD)".into());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("empty host".into());
        }
        Ok(RelayUrl {
            host: host.to_string(),
            port,
            implicit_tls,
        })
    }

    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

impl Config {
    /// Reads a TOML file over the defaults.
    /// A TOML file as flat keys (`toml_table`).
    pub fn toml_file_table(path: &std::path::Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
        Config::toml_table(&text)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_table(Config::toml_table(text)?)
    }

    /// A TOML text as flat keys: `[spool]`, `[relay]`, `[retry]`,
    /// `[grpc]`, `[congestion]`, `[limits]`, `[log]` and `[tls]` sections
    /// are lifted to the top level (in `[relay]`, `max_connections` is
    /// `relay_max_connections`; a key already spelled in full is kept), so
    /// the flat keys of older files and the sections mean the same.
    pub fn toml_table(text: &str) -> Result<toml::Table, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad("config", e.to_string()))?;
        let mut flat = toml::Table::new();
        for (key, value) in table {
            let section = SECTIONS.iter().find(|(name, _)| *name == key);
            match (section, value) {
                (Some((name, prefix)), toml::Value::Table(inner)) => {
                    for (k, v) in inner {
                        let full = format!("{prefix}{k}");
                        let key =
                            if prefix.is_empty() || k.starts_with(prefix) || !is_setting(&full) {
                                k
                            } else {
                                full
                            };
                        if !is_setting(&key) {
                            return Err(bad("config", format!("unknown key `{key}` in [{name}]; the README's table lists the keys")));
                        }
                        if flat.insert(key.clone(), v).is_some() {
                            return Err(bad(
                                "config",
                                format!("`{key}` is set twice (in [{name}] and elsewhere)"),
                            ));
                        }
                    }
                }
                (_, value) => {
                    if flat.insert(key.clone(), value).is_some() {
                        return Err(bad("config", format!("`{key}` is set twice")));
                    }
                }
            }
        }
        Ok(flat)
    }

    /// Flat keys over the defaults.
    pub fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        if table.contains_key("relay_password") {
            return Err(bad(
                "relay_password",
                "a password never goes in the config file (anyone who can read the config \
                 would have it): use MAILSPOOL_RELAY_PASSWORD or relay_password_file",
            ));
        }
        Config::deserialize(table).map_err(|e| bad("config", e.to_string()))
    }

    /// Every default as its TOML value, by key (the one source of the
    /// defaults the flags' help shows). Settings without a default (the
    /// relay, TLS files, ...) are absent.
    pub fn defaults() -> toml::Table {
        toml::Table::try_from(Config::default()).expect("the defaults serialize")
    }

    /// Checks every setting; the first problem stops the start.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let positive = [
            ("relay_max_connections", self.relay_max_connections as u64),
            ("lease_batch", self.lease_batch as u64),
            ("lease_timeout_ms", self.lease_timeout_ms),
            ("smtp_timeout_ms", self.smtp_timeout_ms),
            ("retry_base_ms", self.retry_base_ms),
            ("retry_cap_ms", self.retry_cap_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("max_age_secs", self.max_age_secs),
            ("max_recipients", self.max_recipients as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_batch_items", self.max_batch_items as u64),
            ("cache_capacity_bytes", self.cache_capacity_bytes),
            ("segment_bytes", self.segment_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(bad(name, "must be greater than 0"));
            }
        }
        if self.workers == Some(0) {
            return Err(bad("workers", "must be greater than 0"));
        }
        if self.retry_cap_ms < self.retry_base_ms {
            return Err(bad("retry_cap_ms", "must be at least retry_base_ms"));
        }
        if self.max_message_bytes > 64 * 1024 * 1024 {
            return Err(bad("max_message_bytes", "at most 64 MiB"));
        }
        if let Some(domain) = &self.message_id_domain {
            let a_labels = crate::intake::message::domain_a_label("message_id_domain", domain)
                .map_err(|e| bad("message_id_domain", e.reason))?;
            self.message_id_domain = Some(a_labels);
        }
        if self.lease_batch > 10_000 {
            return Err(bad("lease_batch", "at most 10000"));
        }
        if let Some(relay) = &self.relay {
            let url = RelayUrl::parse(relay).map_err(|e| bad("relay", e))?;
            if url.implicit_tls && self.relay_tls == Some(RelayTls::None) {
                return Err(bad("relay_tls", "`none` contradicts an smtps:// relay"));
            }
        } else if self.relay_user.is_some() {
            return Err(bad("relay_user", "set without a relay"));
        }
        self.validate_relay_identity()?;
        crate::intake::message::dkim::signers(&self.dkim).map_err(|e| bad("dkim", e))?;
        if let Some(file) = &self.relay_password_file {
            let pw = std::fs::read_to_string(file).map_err(|e| {
                bad(
                    "relay_password_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            self.relay_password = Some(Secret(pw.trim_end_matches(['\r', '\n']).to_string()));
        }
        if self.relay_password.is_some() && self.relay_user.is_none() {
            return Err(bad(
                "relay_user",
                "a relay password is set but no relay user",
            ));
        }
        if let Some(file) = &self.relay_oauth2_token_file {
            if self.relay_user.is_none() {
                return Err(bad(
                    "relay_user",
                    "relay_oauth2_token_file is set but no relay user",
                ));
            }
            if self.relay_password.is_some() {
                return Err(bad(
                    "relay_oauth2_token_file",
                    "give a password or an OAuth2 token file, not both",
                ));
            }
            std::fs::metadata(file).map_err(|e| {
                bad(
                    "relay_oauth2_token_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
        } else if self.relay_user.is_some() && self.relay_password.is_none() {
            return Err(bad(
                "relay_password",
                "relay_user is set: give the password in MAILSPOOL_RELAY_PASSWORD or relay_password_file (or an OAuth2 token in relay_oauth2_token_file)",
            ));
        }
        if self.metrics_listen != "off" && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "metrics_listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:9090 (or `off`)",
                    self.metrics_listen
                ),
            ));
        }
        if self.congestion_critical_age_secs < self.congestion_warn_age_secs {
            return Err(bad(
                "congestion_critical_age_secs",
                "must be at least congestion_warn_age_secs",
            ));
        }
        if self.congestion_transactional_critical_wait_secs
            < self.congestion_transactional_warn_wait_secs
        {
            return Err(bad(
                "congestion_transactional_critical_wait_secs",
                "must be at least congestion_transactional_warn_wait_secs",
            ));
        }
        if self.congestion_critical_eta_secs < self.congestion_warn_eta_secs {
            return Err(bad(
                "congestion_critical_eta_secs",
                "must be at least congestion_warn_eta_secs",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| bad("log_level", e.to_string()))?;
        self.validate_security()
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        if self.insecure_no_auth && !self.clients.is_empty() {
            return Err(bad(
                "insecure_no_auth",
                "contradicts the configured [[clients]]: remove one of them",
            ));
        }
        if !self.listen.ip().is_loopback() && self.clients.is_empty() && !self.insecure_no_auth {
            return Err(bad(
                "listen",
                format!(
                    "{} is not a loopback address and no [[clients]] are configured: \
                     add clients (`mailspool token create`) or pass --insecure-no-auth",
                    self.listen
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.clients {
            c.validate()
                .map_err(|e| bad("clients", format!("client `{}`: {e}", c.name)))?;
            if !seen.insert(format!("name {}", c.name)) {
                return Err(bad(
                    "clients",
                    format!("client `{}` is listed twice", c.name),
                ));
            }
            // One credential, one client: a pasted hash must not give a
            // second client's roles.
            let credentials = [
                c.token_sha256
                    .as_ref()
                    .map(|h| format!("token {}", h.to_ascii_lowercase())),
                c.cert_subject.as_ref().map(|s| format!("subject {s}")),
            ];
            for cred in credentials.into_iter().flatten() {
                if !seen.insert(cred.clone()) {
                    let what = cred.split(' ').next().unwrap_or_default();
                    return Err(bad(
                        "clients",
                        format!("client `{}` has the same {what} as another client", c.name),
                    ));
                }
            }
            if c.cert_subject.is_some() && self.tls_client_ca_file.is_none() {
                return Err(bad(
                    "tls_client_ca_file",
                    format!(
                        "client `{}` has a cert_subject: mTLS needs tls_client_ca_file",
                        c.name
                    ),
                ));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => return Err(bad("tls_key_file", "tls_cert_file is set without it")),
            (None, Some(_)) => return Err(bad("tls_cert_file", "tls_key_file is set without it")),
            _ => {}
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(bad(
                "tls_client_ca_file",
                "mTLS needs tls_cert_file and tls_key_file",
            ));
        }
        if self.grpc_max_concurrent_streams == 0 {
            return Err(bad("grpc_max_concurrent_streams", "must be greater than 0"));
        }
        for (name, v) in [
            ("grpc_request_timeout_ms", self.grpc_request_timeout_ms),
            ("grpc_max_connections", self.grpc_max_connections as u64),
            ("grpc_handshake_timeout_ms", self.grpc_handshake_timeout_ms),
        ] {
            if v == 0 {
                return Err(bad(name, "must be greater than 0"));
            }
        }
        Ok(())
    }

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

    /// The relay's CA file, client certificate and EHLO name: readable,
    /// parseable, and set only together with what they need.
    fn validate_relay_identity(&self) -> Result<(), ConfigError> {
        let pem = |key: &'static str, file: &PathBuf| -> Result<Vec<u8>, ConfigError> {
            let bytes = std::fs::read(file)
                .map_err(|e| bad(key, format!("cannot read {}: {e}", file.display())))?;
            if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
                return Err(bad(key, format!("{} is not PEM", file.display())));
            }
            Ok(bytes)
        };
        if let Some(file) = &self.relay_ca_file {
            let bytes = pem("relay_ca_file", file)?;
            lettre::transport::smtp::client::Certificate::from_pem(&bytes)
                .map_err(|e| bad("relay_ca_file", format!("{}: {e}", file.display())))?;
        }
        match (&self.relay_client_cert_file, &self.relay_client_key_file) {
            (Some(cert), Some(key)) => {
                let (c, k) = (
                    pem("relay_client_cert_file", cert)?,
                    pem("relay_client_key_file", key)?,
                );
                lettre::transport::smtp::client::Identity::from_pem(&c, &k).map_err(|e| {
                    bad(
                        "relay_client_cert_file",
                        format!("{} with {}: {e}", cert.display(), key.display()),
                    )
                })?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(bad(
                    "relay_client_key_file",
                    "relay_client_cert_file needs its key",
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "relay_client_cert_file",
                    "relay_client_key_file needs its certificate",
                ))
            }
        }
        if let Some(name) = &self.relay_helo_name {
            let literal = name.starts_with('[') && name.ends_with(']');
            let domain = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !(literal || domain) {
                return Err(bad(
                    "relay_helo_name",
                    format!("`{name}` is neither a domain name (mail.example.com) nor an address literal ([192.0.2.7])"),
                ));
            }
        }
        if self.relay.is_none() {
            let set = [
                ("relay_ca_file", self.relay_ca_file.is_some()),
                (
                    "relay_client_cert_file",
                    self.relay_client_cert_file.is_some(),
                ),
                ("relay_helo_name", self.relay_helo_name.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                return Err(bad(key, "set without a relay"));
            }
        }
        Ok(())
    }

    /// The relay, parsed (call after `validate`).
    pub fn relay_url(&self) -> Option<RelayUrl> {
        self.relay.as_deref().and_then(|r| RelayUrl::parse(r).ok())
    }

    /// The effective TLS policy.
    pub fn effective_relay_tls(&self) -> RelayTls {
        match (self.relay_tls, self.relay_url()) {
            (Some(t), _) => t,
            (None, Some(url)) if url.is_loopback() => RelayTls::Opportunistic,
            _ => RelayTls::Verify,
        }
    }

    pub fn effective_workers(&self) -> usize {
        self.workers.unwrap_or(self.relay_max_connections)
    }

    pub fn lease_timeout(&self) -> Duration {
        Duration::from_millis(self.lease_timeout_ms)
    }

    pub fn smtp_timeout(&self) -> Duration {
        Duration::from_millis(self.smtp_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        type Case<'a> = (&'a str, Result<(&'a str, u16, bool), ()>);
        let cases: &[Case] = &[
            (
                "smtp://mail.example.com",
                Ok(("mail.example.com", 25, false)),
            ),
            ("smtp://127.0.0.1:2525", Ok(("127.0.0.1", 2525, false))),
            (
                "smtps://mail.example.com",
                Ok(("mail.example.com", 465, true)),
            ),
            ("smtp://[::1]:25", Ok(("::1", 25, false))),
            ("http://x", Err(())),
            ("smtp://user:pw@host", Err(())),
            ("smtp://host:notaport", Err(())),
            ("host:25", Err(())),
        ];
        for (input, want) in cases {
            let got = RelayUrl::parse(input).map(|u| (u.host.clone(), u.port, u.implicit_tls));
            match want {
                Ok((h, p, t)) => assert_eq!(got, Ok((h.to_string(), *p, *t)), "{input}"),
                Err(()) => assert!(got.is_err(), "{input} should fail"),
            }
        }
    }

    #[test]
    fn one_credential_belongs_to_one_client() {
        let entry = |name: &str, hash: char| {
            crate::intake::auth::ClientConfig::with_token(
                name,
                hash.to_string().repeat(64),
                &[crate::intake::auth::Role::Enqueue],
            )
        };
        let mut c = Config {
            clients: vec![entry("a", 'a'), entry("b", 'b')],
            ..Config::default()
        };
        c.validate().unwrap();
        c.clients[1].token_sha256 = Some("A".repeat(64));
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "clients");
        assert!(e.reason.contains("same token"), "{e}");
        c.clients[1] = entry("a", 'b');
        assert!(c.validate().unwrap_err().reason.contains("twice"));
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config {
            retry_base_ms: 10,
            retry_cap_ms: 5,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "retry_cap_ms");
        let mut c = Config {
            relay: Some("ftp://x".into()),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "relay");
        let mut c = Config {
            lease_batch: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "lease_batch");
        let mut c = Config {
            relay: Some("smtp://h".into()),
            relay_user: Some("u".into()),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "relay_password");
        c.relay_password = Some(Secret("hunter2-secret".into()));
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "Debug shows no secret"
        );
        assert!(Config::from_toml("nonsense_key = 1").is_err());
        let mut c = Config::from_toml("relay = \"smtp://127.0.0.1:25\"\nmax_attempts = 3").unwrap();
        c.validate().unwrap();
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.effective_relay_tls(), RelayTls::Opportunistic);
        c.relay = Some("smtp://mail.example.com".into());
        assert_eq!(c.effective_relay_tls(), RelayTls::Verify);
    }

    /// The same settings as flat keys (every older file) and in sections.
    #[test]
    fn sections_and_flat_keys_mean_the_same() {
        let flat = Config::from_toml(
            "relay = \"smtp://r.example:25\"\nrelay_max_connections = 4\nlease_batch = 8\n\
             congestion_warn_age_secs = 60\ngrpc_max_connections = 10\nmax_spool_bytes = 5\n\
             retry_base_ms = 7\nmax_attempts = 3\nlog_format = \"json\"\n",
        )
        .unwrap();
        let sections = Config::from_toml(
            "[relay]\nrelay = \"smtp://r.example:25\"\nmax_connections = 4\n\
             [spool]\nmax_spool_bytes = 5\n[limits]\nlease_batch = 8\n\
             [congestion]\nwarn_age_secs = 60\n[grpc]\nmax_connections = 10\n\
             [retry]\nbase_ms = 7\nmax_attempts = 3\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        let table = |c: &Config| toml::Table::try_from(c).unwrap();
        assert_eq!(table(&flat), table(&sections));
        assert_eq!(sections.relay_max_connections, 4);
        assert_eq!(sections.retry_base_ms, 7);
        assert_eq!(sections.log_format, LogFormat::Json);
        assert_ne!(table(&flat), table(&Config::default()));
    }

    #[test]
    fn a_wrong_key_in_a_section_is_named_with_its_section() {
        let e = Config::from_toml("[relay]\nmax_conections = 4\n").unwrap_err();
        assert!(e.to_string().contains("`max_conections` in [relay]"), "{e}");
        let e = Config::from_toml("lease_batch = 1\n[limits]\nlease_batch = 2\n").unwrap_err();
        assert!(e.to_string().contains("`lease_batch` is set twice"), "{e}");
        // A flat key that does not exist is refused as before.
        assert!(Config::from_toml("lease_bach = 1\n").is_err());
    }

    #[test]
    fn the_threshold_fixture_is_the_default_configuration() {
        assert_eq!(
            Config::default().thresholds(),
            crate::observe::congestion::Thresholds::default()
        );
    }
}

#[cfg(test)]
mod relay_identity_tests {
    use super::*;

    /// Each bad relay setting stops the start naming itself.
    #[test]
    fn bad_relay_settings_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let relay = "relay = \"smtp://mail.example.com:587\"\n";
        let cases = [
            (format!("{relay}relay_tls = \"bogus\"\n"), "config", "bogus"),
            (
                format!("{relay}relay_password = \"hunter2\"\n"),
                "relay_password",
                "MAILSPOOL_RELAY_PASSWORD",
            ),
            (
                format!("{relay}relay_helo_name = \"my host\"\n"),
                "relay_helo_name",
                "neither a domain",
            ),
            (
                format!("{relay}relay_helo_name = \"vm..x\"\n"),
                "relay_helo_name",
                "neither a domain",
            ),
            (
                format!(
                    "{relay}relay_ca_file = {:?}\n",
                    not_pem.display().to_string()
                ),
                "relay_ca_file",
                "not PEM",
            ),
            (
                format!(
                    "{relay}relay_client_cert_file = {:?}\n",
                    not_pem.display().to_string()
                ),
                "relay_client_key_file",
                "needs its key",
            ),
            (
                "relay_helo_name = \"mail.example.com\"\n".to_string(),
                "relay_helo_name",
                "without a relay",
            ),
            (
                format!(
                    "{relay}relay_user = \"u\"\nrelay_oauth2_token_file = \"/nonexistent/token\"\n"
                ),
                "relay_oauth2_token_file",
                "cannot read",
            ),
        ];
        for (toml, setting, words) in cases {
            let e = Config::from_toml(&toml)
                .and_then(|mut c| c.validate().map(|_| c))
                .expect_err(&toml);
            assert_eq!(e.setting, setting, "{toml}: {e}");
            assert!(e.to_string().contains(words), "{toml}: {e}");
        }
        // `required`, the old spelling, is `verify`.
        let mut c = Config::from_toml(&format!("{relay}relay_tls = \"required\"\n")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.effective_relay_tls(), RelayTls::Verify);
    }
}
