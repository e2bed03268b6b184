//! `serve`'s flags: each also reads `MAILSPOOL_<NAME>`, over the TOML file, over the defaults.

use super::*;

/// Server settings. Each flag also reads `MAILSPOOL_<NAME>`; unset ones fall
/// back to the TOML file, then to the defaults.
/// Field names are the configuration keys: the flags given become a TOML
/// table laid over the file's (`into_config`), and each flag's help shows
/// the default from `Config::default()` (`cli::command`).
#[derive(Debug, Args, Default, Clone, serde::Serialize)]
pub struct ServeArgs {
    /// TOML file with settings (keys as in the README's table).
    #[arg(long, env = "MAILSPOOL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// gRPC listen address
    #[arg(long, env = "MAILSPOOL_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Prometheus /metrics address, or `off`
    #[arg(long, env = "MAILSPOOL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Congestion WARNING at this oldest-message age
    #[arg(long, env = "MAILSPOOL_CONGESTION_WARN_AGE_SECS")]
    pub congestion_warn_age_secs: Option<u64>,
    #[arg(long, env = "MAILSPOOL_CONGESTION_CRITICAL_AGE_SECS")]
    pub congestion_critical_age_secs: Option<u64>,
    /// Congestion WARNING at this drain ETA
    #[arg(long, env = "MAILSPOOL_CONGESTION_WARN_ETA_SECS")]
    pub congestion_warn_eta_secs: Option<u64>,
    #[arg(long, env = "MAILSPOOL_CONGESTION_CRITICAL_ETA_SECS")]
    pub congestion_critical_eta_secs: Option<u64>,
    #[arg(long, env = "MAILSPOOL_CONGESTION_GROWTH_MIN_DEPTH")]
    pub congestion_growth_min_depth: Option<u64>,
    #[arg(long, env = "MAILSPOOL_CONGESTION_STALL_AFTER_SECS")]
    pub congestion_stall_after_secs: Option<u64>,
    /// Congestion WARNING when a transactional message has been due this long
    #[arg(long, env = "MAILSPOOL_CONGESTION_TRANSACTIONAL_WARN_WAIT_SECS")]
    pub congestion_transactional_warn_wait_secs: Option<u64>,
    #[arg(long, env = "MAILSPOOL_CONGESTION_TRANSACTIONAL_CRITICAL_WAIT_SECS")]
    pub congestion_transactional_critical_wait_secs: Option<u64>,
    /// A congestion state clears only after this long better
    #[arg(long, env = "MAILSPOOL_CONGESTION_CLEAR_AFTER_SECS")]
    pub congestion_clear_after_secs: Option<u64>,
    /// Spool directory
    #[arg(long, env = "MAILSPOOL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// smtp://host[:port] or smtps://host[:port]; unset = local outbox
    #[arg(long, env = "MAILSPOOL_RELAY")]
    pub relay: Option<String>,
    /// [default: required; opportunistic for loopback relays]
    #[arg(long, env = "MAILSPOOL_RELAY_TLS", value_enum)]
    pub relay_tls: Option<RelayTls>,
    /// Relay user; the password comes from MAILSPOOL_RELAY_PASSWORD or --relay-password-file.
    #[arg(long, env = "MAILSPOOL_RELAY_USER")]
    pub relay_user: Option<String>,
    #[arg(long, env = "MAILSPOOL_RELAY_PASSWORD_FILE")]
    pub relay_password_file: Option<PathBuf>,
    #[arg(long, env = "MAILSPOOL_RELAY_MAX_CONNECTIONS")]
    pub relay_max_connections: Option<usize>,
    /// Delivery workers [default: relay_max_connections]
    #[arg(long, env = "MAILSPOOL_WORKERS")]
    pub workers: Option<usize>,
    /// Messages per lease
    #[arg(long, env = "MAILSPOOL_LEASE_BATCH")]
    pub lease_batch: Option<usize>,
    #[arg(long, env = "MAILSPOOL_LEASE_TIMEOUT_MS")]
    pub lease_timeout_ms: Option<u64>,
    #[arg(long, env = "MAILSPOOL_SMTP_TIMEOUT_MS")]
    pub smtp_timeout_ms: Option<u64>,
    #[arg(long, env = "MAILSPOOL_RETRY_BASE_MS")]
    pub retry_base_ms: Option<u64>,
    #[arg(long, env = "MAILSPOOL_RETRY_CAP_MS")]
    pub retry_cap_ms: Option<u64>,
    #[arg(long, env = "MAILSPOOL_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    #[arg(long, env = "MAILSPOOL_MAX_AGE_SECS")]
    pub max_age_secs: Option<u64>,
    #[arg(long, env = "MAILSPOOL_MAX_RECIPIENTS")]
    pub max_recipients: Option<usize>,
    #[arg(long, env = "MAILSPOOL_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    #[arg(long, env = "MAILSPOOL_MAX_BATCH_ITEMS")]
    pub max_batch_items: Option<usize>,
    #[arg(long, env = "MAILSPOOL_IDEMPOTENCY_WINDOW_SECS")]
    pub idempotency_window_secs: Option<u64>,
    #[arg(long, env = "MAILSPOOL_DELIVERED_RETENTION_SECS")]
    pub delivered_retention_secs: Option<u64>,
    #[arg(long, env = "MAILSPOOL_CACHE_CAPACITY_BYTES")]
    pub cache_capacity_bytes: Option<u64>,
    #[arg(long, env = "MAILSPOOL_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Refuse Enqueue as the spool nears this size (0 = no limit)
    #[arg(long, env = "MAILSPOOL_MAX_SPOOL_BYTES")]
    pub max_spool_bytes: Option<u64>,
    #[arg(long, env = "MAILSPOOL_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,
    #[arg(long, env = "MAILSPOOL_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    #[arg(long, env = "MAILSPOOL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// tracing filter; RUST_LOG overrides
    #[arg(long, env = "MAILSPOOL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Serve a non-loopback --listen without authentication (refused
    /// otherwise). Only behind something else that authenticates.
    #[arg(long, env = "MAILSPOOL_INSECURE_NO_AUTH")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_no_auth: bool,
    /// gRPC over TLS: certificate chain (PEM); reloaded on SIGHUP
    #[arg(long, env = "MAILSPOOL_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// gRPC over TLS: private key (PEM)
    #[arg(long, env = "MAILSPOOL_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// mTLS: CA certificates (PEM) client certificates must chain to
    #[arg(long, env = "MAILSPOOL_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Per connection: HTTP/2 streams and requests in progress
    #[arg(long, env = "MAILSPOOL_GRPC_MAX_CONCURRENT_STREAMS")]
    pub grpc_max_concurrent_streams: Option<u32>,
    #[arg(long, env = "MAILSPOOL_GRPC_REQUEST_TIMEOUT_MS")]
    pub grpc_request_timeout_ms: Option<u64>,
    /// Connections at once
    #[arg(long, env = "MAILSPOOL_GRPC_MAX_CONNECTIONS")]
    pub grpc_max_connections: Option<usize>,
    /// TLS handshake and HTTP/2 preface deadline
    #[arg(long, env = "MAILSPOOL_GRPC_HANDSHAKE_TIMEOUT_MS")]
    pub grpc_handshake_timeout_ms: Option<u64>,
}

impl ServeArgs {
    /// Defaults < TOML < environment/flags, then validation.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut table = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    setting: "config",
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                Config::toml_table(&text)?
            }
            None => toml::Table::new(),
        };
        let flags = toml::Table::try_from(&self).map_err(|e| ConfigError {
            setting: "flags",
            reason: e.to_string(),
        })?;
        table.extend(flags);
        let mut c = Config::from_table(table)?;
        if let Ok(pw) = std::env::var("MAILSPOOL_RELAY_PASSWORD") {
            c.relay_password = Some(crate::config::Secret(pw));
        }
        c.validate()?;
        Ok(c)
    }
}

/// `cmd` with `[default: …]` added to the help of every flag that is a
/// setting with a default, taken from `Config::default()` (so the help
/// cannot drift from the defaults).
pub(super) fn with_defaults(cmd: clap::Command) -> clap::Command {
    let defaults = Config::defaults();
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    ids.into_iter().fold(cmd, |cmd, id| {
        let Some(value) = defaults.get(&id) else {
            return cmd;
        };
        let shown = match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        cmd.mut_arg(&id, |a| {
            let help = a.get_help().map(|h| format!("{h} ")).unwrap_or_default();
            a.help(format!("{help}[default: {shown}]"))
        })
    })
}
