//! The binary's command line: `serve` (the default), client commands for
//! people (`enqueue`, `stats`, `status`) and operator commands (`queue ...`,
//! `top-domains`, `stats --watch`). This module owns the flags and the
//! calls; what the operator commands print is built by [`crate::admin_cli`]
//! and the live view by [`crate::watch`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::admin_cli as ac;
use crate::config::{Config, ConfigError, LogFormat, RelayTls};
use crate::pb;
use crate::queue_cli::{QueueArgs, TopDomainsArgs};

#[derive(Debug, Parser)]
#[command(
    name = "mailspool",
    version,
    about = "A durable email notification queue",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (also what `mailspool` with no subcommand does).
    Serve(Box<ServeArgs>),
    /// Enqueue one message and print its id.
    Enqueue(EnqueueArgs),
    /// Print QueueStats.
    Stats(StatsArgs),
    /// Print where one message is.
    Status(StatusArgs),
    /// Operate on the queue: list, show, retry, cancel, requeue, purge,
    /// pause, resume, transfer.
    Queue(QueueArgs),
    /// Queued recipients by domain and age (like Postfix qshape).
    TopDomains(TopDomainsArgs),
    /// Create a client token: `mailspool token create --name svc --role enqueue`.
    Token(TokenArgs),
    /// The surge benchmark (see BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
    /// Give back the disk space the index keeps after a drain (server stopped).
    Compact(CompactArgs),
    /// SIGKILL the server at random moments under load and a flapping relay;
    /// check that nothing acknowledged was lost.
    Torture(crate::torture::TortureArgs),
    /// A bounded run under steady load and a flapping relay; RSS, open files
    /// and data-dir size must stay flat.
    Soak(crate::soak::SoakArgs),
}

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

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new random token (once) and the [[clients]] entry holding
    /// its hash for the server's config.
    Create {
        /// The client's name (in logs, stats and metrics).
        #[arg(long)]
        name: String,
        /// enqueue (MailQueue) and/or admin (QueueAdmin); repeatable.
        #[arg(long = "role", required = true, value_parser = ["enqueue", "admin"])]
        roles: Vec<String>,
    },
}

/// `mailspool token create`: the token goes to stdout once; the server
/// only ever sees its hash.
pub fn token(a: TokenArgs) -> ClientResult {
    let TokenCommand::Create { name, roles } = a.command;
    let token = crate::auth::new_token();
    let hash = crate::auth::token_hash(&token);
    let parsed: Vec<crate::auth::Role> = roles
        .iter()
        .map(|r| match r.as_str() {
            "admin" => crate::auth::Role::Admin,
            _ => crate::auth::Role::Enqueue,
        })
        .collect();
    let entry = crate::auth::ClientConfig::with_token(&name, hash.clone(), &parsed);
    entry.validate().map_err(|e| format!("--{e}"))?;
    let roles = roles
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "token for `{name}` (shown only now; give it to the service, e.g. in MAILSPOOL_TOKEN):"
    );
    println!("{token}");
    println!();
    println!("add to the server's config (the hash only), then reload it (SIGHUP):");
    println!("[[clients]]");
    println!("name = \"{name}\"");
    println!("token_sha256 = \"{hash}\"");
    println!("roles = [{roles}]");
    Ok(())
}

#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The mailspool server (https:// for a server with TLS).
    #[arg(
        long,
        env = "MAILSPOOL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// File holding the bearer token (or set MAILSPOOL_TOKEN; never a flag
    /// value, which `ps` would show).
    #[arg(long, env = "MAILSPOOL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to verify an https:// server with [default:
    /// the public web roots]
    #[arg(long, env = "MAILSPOOL_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// mTLS: this client's certificate (PEM) ...
    #[arg(
        long,
        env = "MAILSPOOL_TLS_CLIENT_CERT_FILE",
        requires = "tls_client_key_file"
    )]
    pub tls_client_cert_file: Option<PathBuf>,
    /// ... and its private key (PEM).
    #[arg(
        long,
        env = "MAILSPOOL_TLS_CLIENT_KEY_FILE",
        requires = "tls_client_cert_file"
    )]
    pub tls_client_key_file: Option<PathBuf>,
}

impl ClientArgs {
    /// The bearer token: `--token-file`, else MAILSPOOL_TOKEN.
    pub fn token(&self) -> Result<Option<String>, Box<dyn std::error::Error>> {
        read_token(
            self.token_file.as_deref(),
            "--token-file",
            "MAILSPOOL_TOKEN",
        )
    }

    /// The endpoint, with TLS for https:// servers.
    pub fn endpoint(&self) -> Result<tonic::transport::Endpoint, Box<dyn std::error::Error>> {
        let server = &self.server;
        let endpoint = tonic::transport::Endpoint::from_shared(server.to_string())
            .map_err(|e| format!("bad --server `{server}`: {e}"))?;
        if !server.starts_with("https://") {
            return Ok(endpoint);
        }
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("cannot read {flag} {}: {e}", p.display()))
        };
        let ca = match &self.tls_ca_file {
            Some(ca) => Some(read("--tls-ca-file", ca)?),
            None => None,
        };
        let mut tls = crate::tls::client_config(ca);
        if let (Some(c), Some(k)) = (&self.tls_client_cert_file, &self.tls_client_key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read("--tls-client-cert-file", c)?,
                read("--tls-client-key-file", k)?,
            ));
        }
        Ok(endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings for {server}: {e}"))?)
    }
}

/// A token from `file` (named `flag` in errors), else from the environment
/// variable `env`; surrounding whitespace is dropped, empty is none.
pub(crate) fn read_token(
    file: Option<&std::path::Path>,
    flag: &str,
    env: &str,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?,
        None => std::env::var(env).unwrap_or_default(),
    };
    Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()))
}

use crate::auth::{AuthChannel, Bearer};

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub from: String,
    #[arg(long, required = true)]
    pub to: Vec<String>,
    #[arg(long)]
    pub cc: Vec<String>,
    #[arg(long)]
    pub bcc: Vec<String>,
    #[arg(long, default_value = "")]
    pub subject: String,
    #[arg(long, default_value = "")]
    pub text: String,
    #[arg(long, default_value = "")]
    pub html: String,
    #[arg(long, value_parser = ["transactional", "normal", "bulk"], default_value = "normal")]
    pub lane: String,
    #[arg(long, default_value = "")]
    pub idempotency_key: String,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The server's data directory.
    #[arg(long, env = "MAILSPOOL_DATA_DIR", default_value = "./mailspool-data")]
    pub data_dir: PathBuf,
}

pub fn compact(a: CompactArgs) -> ClientResult {
    eprintln!("compacting {} ...", a.data_dir.display());
    let c = crate::compact::compact(&a.data_dir).map_err(|e| e.to_string())?;
    println!(
        "index: {:.1} MiB → {:.1} MiB in {:.1} s",
        c.before as f64 / 1048576.0,
        c.after as f64 / 1048576.0,
        c.seconds
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// A live view, redrawn every --interval until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Time between refreshes with --watch: 1s, 10s, 2m, or seconds.
    #[arg(long, default_value = "1s", value_parser = ac::parse_interval, requires = "watch")]
    pub interval: Duration,
    /// With --watch: stop after this many refreshes (0: until Ctrl-C).
    #[arg(long, default_value_t = 0, requires = "watch")]
    pub count: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

pub(crate) type ClientResult = Result<(), Box<dyn std::error::Error>>;

pub(crate) async fn channel(a: &ClientArgs) -> Result<AuthChannel, Box<dyn std::error::Error>> {
    let bearer = Bearer::new(a.token()?.as_deref())?;
    let server = &a.server;
    let channel = a.endpoint()?.connect().await.map_err(|e| {
        format!("cannot reach mailspool at {server}: {e}; is `mailspool serve` running?")
    })?;
    Ok(AuthChannel::new(channel, bearer))
}

pub(crate) fn status_error(s: tonic::Status) -> Box<dyn std::error::Error> {
    match s.code() {
        tonic::Code::Unauthenticated => {
            return format!(
                "Unauthenticated: {} (give a token with --token-file or MAILSPOOL_TOKEN)",
                s.message()
            )
            .into()
        }
        tonic::Code::PermissionDenied => {
            return format!("PermissionDenied: {}", s.message()).into()
        }
        _ => {}
    }
    if s.code() == tonic::Code::Unimplemented {
        return format!(
            "Unimplemented: {} (the server does not have this operation yet: upgrade it)",
            s.message()
        )
        .into();
    }
    format!("{:?}: {}", s.code(), s.message()).into()
}

pub async fn enqueue(a: EnqueueArgs) -> ClientResult {
    let mut client = pb::mail_queue_client::MailQueueClient::new(channel(&a.client).await?);
    let lane = match a.lane.as_str() {
        "transactional" => pb::Lane::Transactional,
        "bulk" => pb::Lane::Bulk,
        _ => pb::Lane::Normal,
    };
    let resp = client
        .enqueue(pb::EnqueueRequest {
            email: Some(pb::Email {
                from: a.from,
                to: a.to,
                cc: a.cc,
                bcc: a.bcc,
                subject: a.subject,
                text_body: a.text,
                html_body: a.html,
                ..Default::default()
            }),
            lane: lane as i32,
            idempotency_key: a.idempotency_key,
            not_before_unix_ms: 0,
            raw: None,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if resp.duplicate {
        println!("{} (duplicate: idempotency key seen before)", resp.id);
    } else {
        println!("{}", resp.id);
    }
    Ok(())
}

pub async fn stats(a: StatsArgs) -> ClientResult {
    if a.watch {
        return crate::watch::run(&a.client, a.interval, a.count).await;
    }
    let mut client = pb::queue_admin_client::QueueAdminClient::new(channel(&a.client).await?);
    let s = client
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if a.json {
        let mut v = serde_json::json!({
            "queued": s.queued, "ready": s.ready, "scheduled": s.scheduled, "in_flight": s.in_flight,
            "dead": s.dead, "enqueued_total": s.enqueued_total, "delivered_total": s.delivered_total,
            "retried_total": s.retried_total, "dead_total": s.dead_total,
            "duplicates_total": s.duplicates_total,
            "oldest_queued_age_seconds": s.oldest_queued_age_seconds,
            "enqueue_rate_per_second": s.enqueue_rate_per_second,
            "delivery_rate_per_second": s.delivery_rate_per_second,
            "drain_eta_seconds": s.drain_eta_seconds,
            "net_drain_rate_per_second": s.net_drain_rate_per_second,
            "rate_window_seconds": s.rate_window_seconds,
            "rates_warming_up": s.rates_warming_up,
            "waiting_transactional_seconds": s.waiting_transactional_seconds,
            "waiting_normal_seconds": s.waiting_normal_seconds,
            "waiting_bulk_seconds": s.waiting_bulk_seconds,
            "queued_transactional": s.queued_transactional, "queued_normal": s.queued_normal,
            "queued_bulk": s.queued_bulk, "group_commits_total": s.group_commits_total,
            "uptime_seconds": s.uptime_seconds, "fsyncs_total": s.fsyncs_total,
            "quarantined": s.quarantined, "spool_bytes": s.spool_bytes,
            "max_spool_bytes": s.max_spool_bytes, "disk_free_bytes": s.disk_free_bytes,
            "refused_total": s.refused_total, "relay_state": s.relay_state,
            "relay_consecutive_failures": s.relay_consecutive_failures,
            "relay_backoff_remaining_ms": s.relay_backoff_remaining_ms,
            "congestion": s.congestion().as_str_name(),
            "congestion_reason": s.congestion_reason,
            "congestion_since_unix_ms": s.congestion_since_unix_ms,
            "paused_lanes": s.paused_lanes.iter().map(|&l| ac::lane_name(l)).collect::<Vec<_>>(),
            "cancelled_total": s.cancelled_total,
        });
        v["clients"] = s.clients.iter().map(ac::client_json).collect();
        // Outside the json! literal, whose macro recursion has its limit.
        for (k, x) in [
            (
                "time_to_inbox_p50_transactional_seconds",
                s.time_to_inbox_p50_transactional_seconds,
            ),
            (
                "time_to_inbox_p99_transactional_seconds",
                s.time_to_inbox_p99_transactional_seconds,
            ),
            (
                "time_to_inbox_p50_normal_seconds",
                s.time_to_inbox_p50_normal_seconds,
            ),
            (
                "time_to_inbox_p99_normal_seconds",
                s.time_to_inbox_p99_normal_seconds,
            ),
            (
                "time_to_inbox_p50_bulk_seconds",
                s.time_to_inbox_p50_bulk_seconds,
            ),
            (
                "time_to_inbox_p99_bulk_seconds",
                s.time_to_inbox_p99_bulk_seconds,
            ),
        ] {
            v[k] = x.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let eta = if s.drain_eta_seconds < 0.0 {
        "not draining".to_string()
    } else {
        format!("{:.0} s", s.drain_eta_seconds)
    };
    let mut congestion = s.congestion().as_str_name().to_string();
    if !s.congestion_reason.is_empty() {
        congestion.push_str(&format!(" ({})", s.congestion_reason));
    }
    if s.congestion_since_unix_ms > 0 {
        congestion.push_str(&format!(
            " since {}",
            ac::ago(s.congestion_since_unix_ms, ac::now_ms())
        ));
    }
    let rows: Vec<(&str, String)> = vec![
        ("congestion", congestion),
        ("paused lanes", ac::lanes_list(&s.paused_lanes)),
        ("queued", s.queued.to_string()),
        ("  ready", s.ready.to_string()),
        ("  scheduled", s.scheduled.to_string()),
        ("  in flight", s.in_flight.to_string()),
        (
            "  transactional",
            format!(
                "{} (longest wait {:.1} s; to inbox p50 {} s, p99 {} s)",
                s.queued_transactional,
                s.waiting_transactional_seconds,
                s.time_to_inbox_p50_transactional_seconds,
                s.time_to_inbox_p99_transactional_seconds
            ),
        ),
        (
            "  normal",
            format!(
                "{} (longest wait {:.1} s; to inbox p50 {} s, p99 {} s)",
                s.queued_normal,
                s.waiting_normal_seconds,
                s.time_to_inbox_p50_normal_seconds,
                s.time_to_inbox_p99_normal_seconds
            ),
        ),
        (
            "  bulk",
            format!(
                "{} (longest wait {:.1} s; to inbox p50 {} s, p99 {} s)",
                s.queued_bulk,
                s.waiting_bulk_seconds,
                s.time_to_inbox_p50_bulk_seconds,
                s.time_to_inbox_p99_bulk_seconds
            ),
        ),
        ("dead", s.dead.to_string()),
        (
            "oldest queued",
            format!("{:.1} s", s.oldest_queued_age_seconds),
        ),
        (
            "enqueue rate",
            format!("{:.1} /s", s.enqueue_rate_per_second),
        ),
        (
            "delivery rate",
            format!("{:.1} /s", s.delivery_rate_per_second),
        ),
        ("drain ETA", eta),
        (
            "rates over",
            format!(
                "{} s{} (net {:+.1} /s)",
                s.rate_window_seconds,
                if s.rates_warming_up {
                    ", warming up"
                } else {
                    ""
                },
                s.net_drain_rate_per_second
            ),
        ),
        (
            "relay",
            format!(
                "{} ({} failures)",
                s.relay_state, s.relay_consecutive_failures
            ),
        ),
        ("spool bytes", s.spool_bytes.to_string()),
        ("refused total", s.refused_total.to_string()),
        ("enqueued total", s.enqueued_total.to_string()),
        ("delivered total", s.delivered_total.to_string()),
        ("retried total", s.retried_total.to_string()),
        ("dead total", s.dead_total.to_string()),
        ("duplicates total", s.duplicates_total.to_string()),
        ("cancelled total", s.cancelled_total.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:<18} {v:>14}");
    }
    if !s.clients.is_empty() {
        print!("\n{}", ac::clients_table(&s.clients));
    }
    Ok(())
}

pub async fn status(a: StatusArgs) -> ClientResult {
    let mut client = pb::mail_queue_client::MailQueueClient::new(channel(&a.client).await?);
    let m = client
        .get_message(pb::GetMessageRequest { id: a.id })
        .await
        .map_err(status_error)?
        .into_inner();
    let state = m.state().as_str_name();
    let lane = m.lane().as_str_name();
    if a.json {
        let v = serde_json::json!({
            "id": m.id, "state": state, "attempts": m.attempts, "last_error": m.last_error,
            "next_attempt_unix_ms": m.next_attempt_unix_ms, "lane": lane,
            "enqueued_unix_ms": m.enqueued_unix_ms, "finished_unix_ms": m.finished_unix_ms,
            "message_id": m.message_id,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("id            {}", m.id);
    println!("state         {state}");
    println!("lane          {lane}");
    println!("attempts      {}", m.attempts);
    println!("message-id    <{}>", m.message_id);
    if !m.last_error.is_empty() {
        println!("last error    {}", m.last_error);
    }
    if m.next_attempt_unix_ms > 0 && matches!(m.state(), pb::MessageState::Queued) {
        println!("next attempt  {} (unix ms)", m.next_attempt_unix_ms);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue_cli::QueueCommand;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mailspool").chain(args.iter().copied()))
    }

    #[test]
    fn queue_flags_parse() {
        let cli = parse(&[
            "queue",
            "cancel",
            "--state",
            "in-flight",
            "--lane",
            "bulk",
            "--domain",
            "example.org",
            "--min-age",
            "10m",
            "--max-age",
            "2h",
            "--limit",
            "5",
            "--yes",
        ])
        .unwrap();
        let Some(Command::Queue(QueueArgs {
            command: QueueCommand::Cancel(a),
        })) = cli.command
        else {
            panic!("not queue cancel");
        };
        let f = a.filter.to_pb(a.state);
        assert_eq!(
            ac::describe_filter(&f),
            "state=in-flight lane=bulk domain=example.org min-age=10m max-age=2h"
        );
        assert_eq!((a.flags.limit, a.flags.yes, a.ids.len()), (5, true, 0));
        let Some(Command::Queue(QueueArgs {
            command: QueueCommand::Purge(p),
        })) = parse(&["queue", "purge", "--older-than", "7d"])
            .unwrap()
            .command
        else {
            panic!("not queue purge");
        };
        assert_eq!(p.older_than, 7 * 86400);
    }

    #[test]
    fn queue_flags_refused() {
        for args in [
            &["queue", "requeue", "--state", "dead"][..],
            &["queue", "purge"],
            &["queue", "list", "--min-age", "ten"],
            &["queue", "list", "--page-size", "1001"],
            &["queue", "cancel", "id1", "--all-messages"],
            &["queue", "pause", "--lane", "urgent"],
            &["queue", "transfer"],
            &["stats", "--watch", "--json"],
            &["stats", "--count", "3"],
            &["stats", "--watch", "--interval", "0"],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
        for args in [
            &["stats", "--watch", "--interval", "2s", "--count", "3"][..],
            &["stats", "--json"],
            &["top-domains", "--limit", "5", "--lane", "bulk", "--json"],
            &["queue", "resume"],
            &["queue", "pause", "--lane", "bulk", "--lane", "normal"],
            &["queue", "retry", "a", "b", "--json"],
        ] {
            assert!(parse(args).is_ok(), "{args:?} should parse");
        }
    }
}
