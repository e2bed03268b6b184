//! `serve`'s flags: each also reads `MAILSPOOL_<KEY>` (set in `with_defaults`), over the TOML file, over the defaults.

use super::*;

/// Server settings. Each flag also reads `MAILSPOOL_<KEY>`; unset ones fall
/// back to the TOML file, then to the defaults. Field names are the configuration keys: the flags given become a TOML
/// table laid over the file's (`into_config`), and each flag's help shows
/// the default from `Config::default()` (`cli::command`).
#[derive(Debug, Args, Default, Clone, serde::Serialize)]
pub struct ServeArgs {
    /// TOML file with settings (keys as in the README's table).
    #[arg(long, env = "MAILSPOOL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// gRPC listen address
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Prometheus /metrics address, or `off`
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Congestion WARNING at this oldest-message age
    #[arg(long)]
    pub congestion_warn_age_secs: Option<u64>,
    #[arg(long)]
    pub congestion_critical_age_secs: Option<u64>,
    /// Congestion WARNING at this drain ETA
    #[arg(long)]
    pub congestion_warn_eta_secs: Option<u64>,
    #[arg(long)]
    pub congestion_critical_eta_secs: Option<u64>,
    #[arg(long)]
    pub congestion_growth_min_depth: Option<u64>,
    #[arg(long)]
    pub congestion_stall_after_secs: Option<u64>,
    /// Congestion WARNING when a transactional message has been due this long
    #[arg(long)]
    pub congestion_transactional_warn_wait_secs: Option<u64>,
    #[arg(long)]
    pub congestion_transactional_critical_wait_secs: Option<u64>,
    /// A congestion state clears only after this long better
    #[arg(long)]
    pub congestion_clear_after_secs: Option<u64>,
    /// How long a console login lasts (with auth on)
    #[arg(long)]
    pub console_session_secs: Option<u64>,
    /// Spool directory
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// smtp://host[:port] or smtps://host[:port]; unset = local outbox
    #[arg(long)]
    pub relay: Option<String>,
    /// none | opportunistic (STARTTLS if offered, unverified) | encrypt (TLS, unverified) | verify [default: verify; opportunistic for loopback relays]
    #[arg(long, value_enum)]
    pub relay_tls: Option<RelayTls>,
    /// Relay user; the password comes from MAILSPOOL_RELAY_PASSWORD or --relay-password-file.
    #[arg(long)]
    pub relay_user: Option<String>,
    #[arg(long)]
    pub relay_password_file: Option<PathBuf>,
    /// An OAuth2 access token file for AUTH XOAUTH2 (re-read at each connection)
    #[arg(long)]
    pub relay_oauth2_token_file: Option<PathBuf>,
    /// PEM CA file trusted for the relay's certificate (besides the web roots)
    #[arg(long)]
    pub relay_ca_file: Option<PathBuf>,
    /// PEM client certificate for relays that ask for one (with --relay-client-key-file)
    #[arg(long)]
    pub relay_client_cert_file: Option<PathBuf>,
    #[arg(long)]
    pub relay_client_key_file: Option<PathBuf>,
    /// The EHLO name [default: the machine's FQDN, else the address literal]
    #[arg(long)]
    pub relay_helo_name: Option<String>,
    #[arg(long)]
    pub relay_max_connections: Option<usize>,
    /// Delivery workers [default: relay_max_connections]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Messages per lease
    #[arg(long)]
    pub lease_batch: Option<usize>,
    #[arg(long)]
    pub lease_timeout_ms: Option<u64>,
    #[arg(long)]
    pub smtp_timeout_ms: Option<u64>,
    #[arg(long)]
    pub retry_base_ms: Option<u64>,
    #[arg(long)]
    pub retry_cap_ms: Option<u64>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    #[arg(long)]
    pub max_age_secs: Option<u64>,
    /// Transactional mail older than this is never sent (0 = no deadline)
    #[arg(long)]
    pub transactional_expiry_secs: Option<u64>,
    /// Normal-lane mail older than this is never sent (0 = no deadline)
    #[arg(long)]
    pub normal_expiry_secs: Option<u64>,
    /// Bulk mail older than this is never sent (0 = no deadline)
    #[arg(long)]
    pub bulk_expiry_secs: Option<u64>,
    /// Bounce classes that put an address on the suppression list
    #[arg(long, value_delimiter = ',')]
    pub suppress_classes: Option<Vec<String>>,
    /// How long an address stays suppressed (0 = until removed)
    #[arg(long)]
    pub suppression_expiry_secs: Option<u64>,
    /// How long the event log keeps events
    #[arg(long)]
    pub event_retention_secs: Option<u64>,
    /// How many bytes of events the log keeps (the oldest go first)
    #[arg(long)]
    pub event_retention_bytes: Option<u64>,
    #[arg(long)]
    pub max_recipients: Option<usize>,
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// The domain of the Message-IDs mailspool makes (default: the sender's)
    #[arg(long)]
    pub message_id_domain: Option<String>,
    #[arg(long)]
    pub max_batch_items: Option<usize>,
    #[arg(long)]
    pub idempotency_window_secs: Option<u64>,
    #[arg(long)]
    pub delivered_retention_secs: Option<u64>,
    #[arg(long)]
    pub cache_capacity_bytes: Option<u64>,
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Refuse Enqueue as the spool nears this size (0 = no limit)
    #[arg(long)]
    pub max_spool_bytes: Option<u64>,
    #[arg(long)]
    pub min_free_bytes: Option<u64>,
    #[arg(long)]
    pub shutdown_grace_ms: Option<u64>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// tracing filter; RUST_LOG overrides
    #[arg(long)]
    pub log_level: Option<String>,
    /// Serve a non-loopback --listen without authentication (refused
    /// otherwise). Only behind something else that authenticates.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_no_auth: bool,
    /// gRPC over TLS: certificate chain (PEM); reloaded on SIGHUP
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// gRPC over TLS: private key (PEM)
    #[arg(long)]
    pub tls_key_file: Option<PathBuf>,
    /// mTLS: CA certificates (PEM) client certificates must chain to
    #[arg(long)]
    pub tls_client_ca_file: Option<PathBuf>,
    /// With TLS set: serve the console and /metrics over HTTPS too
    #[arg(long)]
    pub metrics_tls: Option<bool>,
    /// Per connection: HTTP/2 streams and requests in progress
    #[arg(long)]
    pub grpc_max_concurrent_streams: Option<u32>,
    #[arg(long)]
    pub grpc_request_timeout_ms: Option<u64>,
    /// Connections at once
    #[arg(long)]
    pub grpc_max_connections: Option<usize>,
    /// TLS handshake and HTTP/2 preface deadline
    #[arg(long)]
    pub grpc_handshake_timeout_ms: Option<u64>,
    /// HTTP/2 flow-control window per stream
    #[arg(long)]
    pub grpc_stream_window_bytes: Option<u32>,
    /// HTTP/2 flow-control window per connection
    #[arg(long)]
    pub grpc_connection_window_bytes: Option<u32>,
    /// Largest HTTP/2 frame the server reads
    #[arg(long)]
    pub grpc_max_frame_bytes: Option<u32>,
}

impl ServeArgs {
    /// Defaults < TOML < environment/flags, then validation.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut table = match &self.config {
            Some(path) => Config::toml_file_table(path)?,
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

/// `cmd` with, for every flag that is a setting, its environment variable
/// (`MAILSPOOL_<KEY>`) and `[default: …]` in its help taken from
/// `Config::default()`: the key is the one name, the default the one value.
pub(super) fn with_defaults(cmd: clap::Command) -> clap::Command {
    let defaults = Config::defaults();
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    ids.into_iter().fold(cmd, |cmd, id| {
        if !crate::config::is_setting(&id) {
            return cmd;
        }
        // clap keeps the name for the process's life; the command is built
        // once per process.
        let env: &'static str = format!("MAILSPOOL_{}", id.to_uppercase()).leak();
        let default = defaults.get(&id).map(|value| match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        cmd.mut_arg(&id, |a| {
            let a = a.env(env);
            match default {
                Some(shown) => {
                    let help = a.get_help().map(|h| format!("{h} ")).unwrap_or_default();
                    a.help(format!("{help}[default: {shown}]"))
                }
                None => a,
            }
        })
    })
}
