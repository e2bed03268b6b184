//! `serve`'s flags: each also reads `MAILSPOOL_<NAME>`, over the TOML file, over the defaults.

use super::*;

/// Server settings. Each flag also reads `MAILSPOOL_<NAME>`; unset ones fall
/// back to the TOML file, then to the defaults.
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with settings (keys as in the README's table).
    #[arg(long, env = "MAILSPOOL_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051]
    #[arg(long, env = "MAILSPOOL_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Prometheus /metrics address, or `off` [default: 127.0.0.1:9090]
    #[arg(long, env = "MAILSPOOL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Congestion WARNING at this oldest-message age [default: 300]
    #[arg(long, env = "MAILSPOOL_CONGESTION_WARN_AGE_SECS")]
    pub congestion_warn_age_secs: Option<u64>,
    /// [default: 900]
    #[arg(long, env = "MAILSPOOL_CONGESTION_CRITICAL_AGE_SECS")]
    pub congestion_critical_age_secs: Option<u64>,
    /// Congestion WARNING at this drain ETA [default: 600]
    #[arg(long, env = "MAILSPOOL_CONGESTION_WARN_ETA_SECS")]
    pub congestion_warn_eta_secs: Option<u64>,
    /// [default: 1800]
    #[arg(long, env = "MAILSPOOL_CONGESTION_CRITICAL_ETA_SECS")]
    pub congestion_critical_eta_secs: Option<u64>,
    /// [default: 10000]
    #[arg(long, env = "MAILSPOOL_CONGESTION_GROWTH_MIN_DEPTH")]
    pub congestion_growth_min_depth: Option<u64>,
    /// [default: 60]
    #[arg(long, env = "MAILSPOOL_CONGESTION_STALL_AFTER_SECS")]
    pub congestion_stall_after_secs: Option<u64>,
    /// Congestion WARNING when a transactional message has been due this long [default: 30]
    #[arg(long, env = "MAILSPOOL_CONGESTION_TRANSACTIONAL_WARN_WAIT_SECS")]
    pub congestion_transactional_warn_wait_secs: Option<u64>,
    /// [default: 120]
    #[arg(long, env = "MAILSPOOL_CONGESTION_TRANSACTIONAL_CRITICAL_WAIT_SECS")]
    pub congestion_transactional_critical_wait_secs: Option<u64>,
    /// A congestion state clears only after this long better [default: 30]
    #[arg(long, env = "MAILSPOOL_CONGESTION_CLEAR_AFTER_SECS")]
    pub congestion_clear_after_secs: Option<u64>,
    /// Spool directory [default: ./mailspool-data]
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
    /// [default: 16]
    #[arg(long, env = "MAILSPOOL_RELAY_MAX_CONNECTIONS")]
    pub relay_max_connections: Option<usize>,
    /// Delivery workers [default: relay_max_connections]
    #[arg(long, env = "MAILSPOOL_WORKERS")]
    pub workers: Option<usize>,
    /// Messages per lease [default: 32]
    #[arg(long, env = "MAILSPOOL_LEASE_BATCH")]
    pub lease_batch: Option<usize>,
    /// [default: 300000]
    #[arg(long, env = "MAILSPOOL_LEASE_TIMEOUT_MS")]
    pub lease_timeout_ms: Option<u64>,
    /// [default: 60000]
    #[arg(long, env = "MAILSPOOL_SMTP_TIMEOUT_MS")]
    pub smtp_timeout_ms: Option<u64>,
    /// [default: 30000]
    #[arg(long, env = "MAILSPOOL_RETRY_BASE_MS")]
    pub retry_base_ms: Option<u64>,
    /// [default: 900000]
    #[arg(long, env = "MAILSPOOL_RETRY_CAP_MS")]
    pub retry_cap_ms: Option<u64>,
    /// [default: 20]
    #[arg(long, env = "MAILSPOOL_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// [default: 86400]
    #[arg(long, env = "MAILSPOOL_MAX_AGE_SECS")]
    pub max_age_secs: Option<u64>,
    /// [default: 100]
    #[arg(long, env = "MAILSPOOL_MAX_RECIPIENTS")]
    pub max_recipients: Option<usize>,
    /// [default: 10485760]
    #[arg(long, env = "MAILSPOOL_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// [default: 1000]
    #[arg(long, env = "MAILSPOOL_MAX_BATCH_ITEMS")]
    pub max_batch_items: Option<usize>,
    /// [default: 86400]
    #[arg(long, env = "MAILSPOOL_IDEMPOTENCY_WINDOW_SECS")]
    pub idempotency_window_secs: Option<u64>,
    /// [default: 3600]
    #[arg(long, env = "MAILSPOOL_DELIVERED_RETENTION_SECS")]
    pub delivered_retention_secs: Option<u64>,
    /// [default: 67108864]
    #[arg(long, env = "MAILSPOOL_CACHE_CAPACITY_BYTES")]
    pub cache_capacity_bytes: Option<u64>,
    /// [default: 67108864]
    #[arg(long, env = "MAILSPOOL_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// [default: 0 = no limit]
    #[arg(long, env = "MAILSPOOL_MAX_SPOOL_BYTES")]
    pub max_spool_bytes: Option<u64>,
    /// [default: 104857600]
    #[arg(long, env = "MAILSPOOL_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,
    /// [default: 10000]
    #[arg(long, env = "MAILSPOOL_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// [default: text]
    #[arg(long, env = "MAILSPOOL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// tracing filter [default: warn,mailspool=info]; RUST_LOG overrides
    #[arg(long, env = "MAILSPOOL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Serve a non-loopback --listen without authentication (refused
    /// otherwise). Only behind something else that authenticates.
    #[arg(long, env = "MAILSPOOL_INSECURE_NO_AUTH")]
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
    /// Per connection: HTTP/2 streams and requests in progress [default: 256]
    #[arg(long, env = "MAILSPOOL_GRPC_MAX_CONCURRENT_STREAMS")]
    pub grpc_max_concurrent_streams: Option<u32>,
    /// [default: 60000]
    #[arg(long, env = "MAILSPOOL_GRPC_REQUEST_TIMEOUT_MS")]
    pub grpc_request_timeout_ms: Option<u64>,
    /// Connections at once [default: 1024]
    #[arg(long, env = "MAILSPOOL_GRPC_MAX_CONNECTIONS")]
    pub grpc_max_connections: Option<usize>,
    /// TLS handshake and HTTP/2 preface deadline [default: 10000]
    #[arg(long, env = "MAILSPOOL_GRPC_HANDSHAKE_TIMEOUT_MS")]
    pub grpc_handshake_timeout_ms: Option<u64>,
}

macro_rules! overlay {
    ($cfg:ident, $args:ident, $($field:ident),*) => {
        $( if let Some(v) = $args.$field.clone() { $cfg.$field = v; } )*
    };
}

impl ServeArgs {
    /// Defaults < TOML < environment/flags, then validation.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        overlay!(
            c,
            self,
            listen,
            metrics_listen,
            congestion_warn_age_secs,
            congestion_critical_age_secs,
            congestion_warn_eta_secs,
            congestion_critical_eta_secs,
            congestion_growth_min_depth,
            congestion_stall_after_secs,
            congestion_transactional_warn_wait_secs,
            congestion_transactional_critical_wait_secs,
            congestion_clear_after_secs,
            data_dir,
            relay_max_connections,
            lease_batch,
            lease_timeout_ms,
            smtp_timeout_ms,
            retry_base_ms,
            retry_cap_ms,
            max_attempts,
            max_age_secs,
            max_recipients,
            max_message_bytes,
            max_batch_items,
            idempotency_window_secs,
            delivered_retention_secs,
            cache_capacity_bytes,
            segment_bytes,
            max_spool_bytes,
            min_free_bytes,
            shutdown_grace_ms,
            log_format,
            log_level,
            grpc_max_concurrent_streams,
            grpc_request_timeout_ms,
            grpc_max_connections,
            grpc_handshake_timeout_ms
        );
        if self.relay.is_some() {
            c.relay = self.relay;
        }
        if self.relay_tls.is_some() {
            c.relay_tls = self.relay_tls;
        }
        if self.relay_user.is_some() {
            c.relay_user = self.relay_user;
        }
        if self.relay_password_file.is_some() {
            c.relay_password_file = self.relay_password_file;
        }
        if self.workers.is_some() {
            c.workers = self.workers;
        }
        if self.insecure_no_auth {
            c.insecure_no_auth = true;
        }
        for (flag, field) in [
            (self.tls_cert_file, &mut c.tls_cert_file),
            (self.tls_key_file, &mut c.tls_key_file),
            (self.tls_client_ca_file, &mut c.tls_client_ca_file),
        ] {
            if flag.is_some() {
                *field = flag;
            }
        }
        if let Ok(pw) = std::env::var("MAILSPOOL_RELAY_PASSWORD") {
            c.relay_password = Some(crate::config::Secret(pw));
        }
        c.validate()?;
        Ok(c)
    }
}
