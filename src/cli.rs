//! The binary's command line: `serve` (the default), client commands for
//! people (`enqueue`, `stats`, `status`) and operator commands (`queue ...`,
//! `top-domains`, `stats --watch`). This module owns the flags and the
//! calls; what the operator commands print is built by [`crate::admin_cli`]
//! and the live view by [`crate::watch`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::admin_cli::{self as ac, LaneArg, Op, StateArg};
use crate::config::{Config, ConfigError, LogFormat, RelayTls};
use crate::pb;

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
#[derive(Debug, Args, Default)]
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
            log_level
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
        if let Ok(pw) = std::env::var("MAILSPOOL_RELAY_PASSWORD") {
            c.relay_password = Some(pw);
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The mailspool server.
    #[arg(
        long,
        env = "MAILSPOOL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
}

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

type ClientResult = Result<(), Box<dyn std::error::Error>>;

async fn channel(server: &str) -> Result<tonic::transport::Channel, Box<dyn std::error::Error>> {
    tonic::transport::Endpoint::from_shared(server.to_string())
        .map_err(|e| format!("bad --server `{server}`: {e}"))?
        .connect()
        .await
        .map_err(|e| {
            format!("cannot reach mailspool at {server}: {e}; is `mailspool serve` running?").into()
        })
}

fn status_error(s: tonic::Status) -> Box<dyn std::error::Error> {
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
    let mut client = pb::mail_queue_client::MailQueueClient::new(channel(&a.client.server).await?);
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
        return crate::watch::run(&a.client.server, a.interval, a.count).await;
    }
    let mut client =
        pb::queue_admin_client::QueueAdminClient::new(channel(&a.client.server).await?);
    let s = client
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if a.json {
        let v = serde_json::json!({
            "queued": s.queued, "ready": s.ready, "scheduled": s.scheduled, "in_flight": s.in_flight,
            "dead": s.dead, "enqueued_total": s.enqueued_total, "delivered_total": s.delivered_total,
            "retried_total": s.retried_total, "dead_total": s.dead_total,
            "duplicates_total": s.duplicates_total,
            "oldest_queued_age_seconds": s.oldest_queued_age_seconds,
            "enqueue_rate_per_second": s.enqueue_rate_per_second,
            "delivery_rate_per_second": s.delivery_rate_per_second,
            "drain_eta_seconds": s.drain_eta_seconds,
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
        ("  transactional", s.queued_transactional.to_string()),
        ("  normal", s.queued_normal.to_string()),
        ("  bulk", s.queued_bulk.to_string()),
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
    Ok(())
}

pub async fn status(a: StatusArgs) -> ClientResult {
    let mut client = pb::mail_queue_client::MailQueueClient::new(channel(&a.client.server).await?);
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

type AdminClient = pb::queue_admin_client::QueueAdminClient<tonic::transport::Channel>;

async fn admin(server: &str) -> Result<AdminClient, Box<dyn std::error::Error>> {
    Ok(pb::queue_admin_client::QueueAdminClient::new(
        channel(server).await?,
    ))
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Queued, dead or quarantined messages matching the filter, oldest first.
    List(ListArgs),
    /// One message: its envelope, state and headers.
    Show(ShowArgs),
    /// Make scheduled messages due now.
    Retry(OpArgs),
    /// Remove queued messages (in-flight ones are skipped).
    Cancel(OpArgs),
    /// Put dead letters back in the queue with their attempts reset.
    Requeue(RequeueArgs),
    /// Delete dead letters older than an age.
    Purge(PurgeArgs),
    /// Stop delivering the lanes given (all when none); Enqueue keeps
    /// accepting. Survives a restart.
    Pause(LanesArgs),
    /// Deliver the lanes given again (all when none).
    Resume(LanesArgs),
    /// Move the queued messages to another node. Delivery on this node is
    /// paused first and stays paused. Safe to run again.
    Transfer(TransferArgs),
}

/// Which messages: every flag narrows the selection.
#[derive(Debug, Args)]
pub struct MatchArgs {
    /// Only this lane.
    #[arg(long, value_enum)]
    pub lane: Option<LaneArg>,
    /// Any recipient at this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Enqueued at least this long ago (90s, 10m, 2h, 7d or seconds).
    #[arg(long, value_parser = ac::parse_duration)]
    pub min_age: Option<u64>,
    /// Enqueued at most this long ago.
    #[arg(long, value_parser = ac::parse_duration)]
    pub max_age: Option<u64>,
}

impl MatchArgs {
    fn to_pb(&self, state: Option<StateArg>) -> pb::MessageFilter {
        pb::MessageFilter {
            state: state.map_or(pb::StateFilter::Unspecified, StateArg::to_pb) as i32,
            lane: self.lane.map_or(pb::Lane::Unspecified, LaneArg::to_pb) as i32,
            recipient_domain: self.domain.clone().unwrap_or_default(),
            min_age_seconds: self.min_age.unwrap_or(0),
            max_age_seconds: self.max_age.unwrap_or(0),
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Without it: queued messages (ready, scheduled and in flight).
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    #[command(flatten)]
    pub filter: MatchArgs,
    /// Messages per page, 1 to 1000 [default: 100; 1000 with --all]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: Option<u32>,
    /// Go on from a previous page (its `next page:` line).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow the pages to the end (at most 1,000,000 rows).
    #[arg(long)]
    pub all: bool,
    /// One JSON object per message and line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

/// What retry, cancel, requeue and purge share.
#[derive(Debug, Args)]
pub struct OpFlags {
    /// Touch at most this many (0: all that match).
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
    /// Go ahead after the dry run (a filter changes nothing without it).
    #[arg(long)]
    pub yes: bool,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct OpArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Act on these messages at once. Without ids, the filter flags select
    /// the messages: a dry run first, then the change with --yes.
    pub ids: Vec<String>,
    /// Only messages in this state [default: every queued state]
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    #[command(flatten)]
    pub filter: MatchArgs,
    /// Allow an empty filter: every message.
    #[arg(long, conflicts_with = "ids")]
    pub all_messages: bool,
    #[command(flatten)]
    pub flags: OpFlags,
}

#[derive(Debug, Args)]
pub struct RequeueArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Act on these dead letters at once. Without ids, the filter flags
    /// select them: a dry run first, then the change with --yes.
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: MatchArgs,
    /// Allow an empty filter: every dead letter.
    #[arg(long, conflicts_with = "ids")]
    pub all_messages: bool,
    #[command(flatten)]
    pub flags: OpFlags,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Dead for at least this long (90s, 10m, 2h, 7d or seconds; 0: all).
    #[arg(long, value_parser = ac::parse_duration)]
    pub older_than: u64,
    #[command(flatten)]
    pub flags: OpFlags,
}

#[derive(Debug, Args)]
pub struct LanesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A lane (repeat for more); none: every lane.
    #[arg(long = "lane", value_enum)]
    pub lanes: Vec<LaneArg>,
    /// Print the paused lanes as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The other node's gRPC address, e.g. http://10.0.0.7:50051.
    #[arg(long)]
    pub to: String,
    /// Messages per EnqueueBatch [default: 100]
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub batch_size: u32,
    /// Go ahead (without it: say what would happen, change nothing).
    #[arg(long)]
    pub yes: bool,
    /// One JSON progress object per line instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TopDomainsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How many domains.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Only this lane [default: every lane]
    #[arg(long, value_enum)]
    pub lane: Option<LaneArg>,
    #[arg(long)]
    pub json: bool,
}

pub async fn queue(a: QueueArgs) -> ClientResult {
    match a.command {
        QueueCommand::List(a) => queue_list(a).await,
        QueueCommand::Show(a) => queue_show(a).await,
        QueueCommand::Retry(a) => queue_op(Op::Retry, a).await,
        QueueCommand::Cancel(a) => queue_op(Op::Cancel, a).await,
        QueueCommand::Requeue(a) => {
            let target = Target {
                ids: a.ids,
                filter: a.filter.to_pb(None),
                older_than: 0,
                all_messages: a.all_messages,
            };
            operate(&a.client.server, Op::Requeue, target, &a.flags).await
        }
        QueueCommand::Purge(a) => {
            let target = Target {
                ids: Vec::new(),
                filter: pb::MessageFilter::default(),
                older_than: a.older_than,
                all_messages: true,
            };
            operate(&a.client.server, Op::Purge, target, &a.flags).await
        }
        QueueCommand::Pause(a) => pause_resume(true, a).await,
        QueueCommand::Resume(a) => pause_resume(false, a).await,
        QueueCommand::Transfer(a) => queue_transfer(a).await,
    }
}

/// Rows `queue list --all` prints at most.
const MAX_LIST_ROWS: u64 = 1_000_000;

/// The terminal's width when stdout is one.
fn terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    // SAFETY: TIOCGWINSZ fills the winsize we own; nothing else is touched.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 {
        Some(usize::from(ws.ws_col))
    } else {
        Some(120)
    }
}

async fn queue_list(a: ListArgs) -> ClientResult {
    let mut client = admin(&a.client.server).await?;
    let width = terminal_width().unwrap_or(usize::MAX);
    list_into(&mut client, &a, width, &mut std::io::stdout().lock()).await
}

/// `queue list` on `client`, the table cut to `width` columns.
async fn list_into(
    client: &mut AdminClient,
    a: &ListArgs,
    width: usize,
    out: &mut dyn Write,
) -> ClientResult {
    let filter = a.filter.to_pb(a.state);
    let page_size = a.page_size.unwrap_or(if a.all { 1000 } else { 0 });
    let mut cursor = a.cursor.clone().unwrap_or_default();
    let now = ac::now_ms();
    let mut rows = Vec::new();
    let (mut listed, mut scanned) = (0u64, 0u64);
    let next = loop {
        let page = client
            .list_messages(pb::ListMessagesRequest {
                filter: Some(filter.clone()),
                page_size,
                cursor: cursor.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        scanned += page.scanned;
        for m in &page.messages {
            if a.json {
                writeln!(out, "{}", ac::summary_json(m))?;
            } else {
                rows.push(ac::list_row(m, now));
            }
        }
        listed += page.messages.len() as u64;
        if !a.all || page.next_cursor.is_empty() || listed >= MAX_LIST_ROWS {
            break page.next_cursor;
        }
        if page.next_cursor == cursor {
            return Err(format!(
                "the server gave the same cursor twice ({cursor}); stopped after {} messages",
                ac::thousands(listed)
            )
            .into());
        }
        cursor = page.next_cursor;
    };
    if !a.json {
        if rows.is_empty() {
            let what = ac::describe_filter(&filter);
            let what = if what.is_empty() {
                "the queue is empty".to_string()
            } else {
                format!("nothing matches {what}")
            };
            if next.is_empty() {
                writeln!(out, "no messages: {what}")?;
            } else {
                writeln!(
                    out,
                    "no matching messages on this page ({} entries scanned)",
                    ac::thousands(scanned)
                )?;
            }
        } else {
            ac::fit_last_column(&ac::LIST_HEADERS, &mut rows, width, 20);
            write!(
                out,
                "{}",
                ac::table(&ac::LIST_HEADERS, &ac::LIST_ALIGN, &rows)
            )?;
        }
        if !next.is_empty() {
            writeln!(out, "next page: --cursor {next}")?;
        }
    } else if !next.is_empty() {
        eprintln!("next page: --cursor {next}");
    }
    out.flush()?;
    if a.all && !next.is_empty() {
        return Err(format!(
            "stopped after {} messages (the --all bound); go on with --cursor {next}",
            ac::thousands(listed)
        )
        .into());
    }
    Ok(())
}

async fn queue_show(a: ShowArgs) -> ClientResult {
    let mut client = admin(&a.client.server).await?;
    let r = client
        .show_message(pb::ShowMessageRequest { id: a.id })
        .await
        .map_err(status_error)?
        .into_inner();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ac::show_json(&r))?);
    } else {
        print!("{}", ac::show_text(&r, ac::now_ms()));
    }
    Ok(())
}

/// What an operation is about: ids, or a filter (or an age for purge).
struct Target {
    ids: Vec<String>,
    filter: pb::MessageFilter,
    older_than: u64,
    /// An empty filter is allowed.
    all_messages: bool,
}

async fn queue_op(op: Op, a: OpArgs) -> ClientResult {
    let target = Target {
        ids: a.ids,
        filter: a.filter.to_pb(a.state),
        older_than: 0,
        all_messages: a.all_messages,
    };
    operate(&a.client.server, op, target, &a.flags).await
}

async fn operate(server: &str, op: Op, t: Target, f: &OpFlags) -> ClientResult {
    check_target(op, &t)?;
    let mut client = admin(server).await?;
    operate_on(&mut client, op, &t, f, &mut std::io::stdout().lock()).await
}

async fn call_op(
    client: &mut AdminClient,
    op: Op,
    t: &Target,
    limit: u64,
    dry_run: bool,
) -> Result<pb::OperationResponse, Box<dyn std::error::Error>> {
    let ids = t.ids.clone();
    let filter = t.ids.is_empty().then(|| t.filter.clone());
    let r = match op {
        Op::Retry => {
            client
                .retry_now(pb::RetryNowRequest {
                    ids,
                    filter,
                    dry_run,
                    limit,
                })
                .await
        }
        Op::Cancel => {
            client
                .cancel(pb::CancelRequest {
                    ids,
                    filter,
                    dry_run,
                    limit,
                })
                .await
        }
        Op::Requeue => {
            client
                .requeue_dead(pb::RequeueDeadRequest {
                    ids,
                    filter,
                    dry_run,
                    limit,
                })
                .await
        }
        Op::Purge => {
            client
                .purge_dead(pb::PurgeDeadRequest {
                    older_than_seconds: t.older_than,
                    dry_run,
                    limit,
                })
                .await
        }
    };
    Ok(r.map_err(status_error)?.into_inner())
}

/// Refuses ids with a filter, and an empty filter without --all-messages.
fn check_target(op: Op, t: &Target) -> ClientResult {
    let empty_filter = ac::filter_is_empty(&t.filter);
    if !t.ids.is_empty() && !empty_filter {
        return Err(format!(
            "give message ids or filter flags, not both ({})",
            ac::describe_filter(&t.filter)
        )
        .into());
    }
    if t.ids.is_empty() && empty_filter && !t.all_messages {
        return Err(format!(
            "no ids and no filter: this would {} every message; give ids, narrow it with \
             --state/--lane/--domain/--min-age/--max-age, or pass --all-messages",
            op.verb()
        )
        .into());
    }
    Ok(())
}

/// Ids: at once. A filter (and purge): a dry run, then the change only
/// with --yes.
async fn operate_on(
    client: &mut AdminClient,
    op: Op,
    t: &Target,
    f: &OpFlags,
    out: &mut dyn Write,
) -> ClientResult {
    if !t.ids.is_empty() {
        let r = call_op(client, op, t, f.limit, false).await?;
        if let Some(w) = ac::not_found_text(&r) {
            eprintln!("{w}");
        }
        if f.json {
            writeln!(out, "{}", ac::op_json(op, false, &r))?;
        } else {
            writeln!(out, "{}", ac::result_text(op, &r))?;
        }
        return Ok(());
    }
    let what = if op == Op::Purge {
        if t.older_than == 0 {
            "(every one)".to_string()
        } else {
            format!("older than {}", ac::duration_flag(t.older_than))
        }
    } else if ac::filter_is_empty(&t.filter) {
        "(no filter: every one)".to_string()
    } else {
        format!("matching {}", ac::describe_filter(&t.filter))
    };
    let preview = call_op(client, op, t, f.limit, true).await?;
    let n = ac::would_touch(&preview, f.limit);
    if f.json {
        if n == 0 || !f.yes {
            writeln!(out, "{}", ac::op_json(op, true, &preview))?;
        }
    } else {
        writeln!(out, "{}", ac::dry_run_text(op, &preview, &what, f.limit))?;
    }
    if n == 0 {
        return Ok(());
    }
    if !f.yes {
        return Err(ac::confirm_text(op, &preview, f.limit).into());
    }
    let r = call_op(client, op, t, f.limit, false).await?;
    if f.json {
        writeln!(out, "{}", ac::op_json(op, false, &r))?;
    } else {
        writeln!(out, "{}", ac::result_text(op, &r))?;
    }
    Ok(())
}

async fn pause_resume(pause: bool, a: LanesArgs) -> ClientResult {
    let mut client = admin(&a.client.server).await?;
    let lanes: Vec<i32> = a.lanes.iter().map(|l| l.to_pb() as i32).collect();
    let r = if pause {
        client
            .pause_delivery(pb::PauseDeliveryRequest { lanes })
            .await
    } else {
        client
            .resume_delivery(pb::ResumeDeliveryRequest { lanes })
            .await
    }
    .map_err(status_error)?
    .into_inner();
    if a.json {
        let names: Vec<&str> = r.paused_lanes.iter().map(|&l| ac::lane_name(l)).collect();
        println!("{}", serde_json::json!({ "paused_lanes": names }));
    } else {
        println!("delivery paused: {}", ac::lanes_list(&r.paused_lanes));
    }
    Ok(())
}

/// `--to` and `--server` name the same node.
fn same_node(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    norm(a) == norm(b)
}

async fn queue_transfer(a: TransferArgs) -> ClientResult {
    let server = &a.client.server;
    let to = a.to.trim();
    if to.is_empty() || same_node(server, to) {
        return Err(format!(
            "--to must be the other node's address (it is `{to}`, this node is --server {server})"
        )
        .into());
    }
    let mut client = admin(server).await?;
    transfer_on(&mut client, &a, &mut std::io::stdout().lock()).await
}

/// `queue transfer` on `client` (--to already checked).
async fn transfer_on(
    client: &mut AdminClient,
    a: &TransferArgs,
    out: &mut dyn Write,
) -> ClientResult {
    let server = &a.client.server;
    let to = a.to.trim();
    let stats = client
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let batch = if a.batch_size == 0 { 100 } else { a.batch_size };
    let again = format!("mailspool queue transfer --server {server} --to {to} --yes");
    if !a.yes {
        writeln!(
            out,
            "would move {} queued messages from {server} to {to} in batches of {batch}; \
             delivery on {server} is paused first and stays paused \
             (`mailspool queue resume` delivers here again)",
            ac::thousands(stats.queued)
        )?;
        return Err("nothing changed; re-run with --yes to transfer them".into());
    }
    let mut stream = client
        .transfer(pb::TransferRequest {
            to: to.to_string(),
            batch_size: a.batch_size,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let bar = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(stats.queued);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} moved, {msg} ({elapsed}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar
    };
    let mut last: Option<pb::TransferProgress> = None;
    loop {
        let p = match stream.message().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                bar.abandon();
                return Err(format!(
                    "{}; the transfer is safe to run again: {again}",
                    status_error(e)
                )
                .into());
            }
        };
        let moved = p.transferred + p.duplicates;
        if moved > bar.length().unwrap_or(0) {
            bar.set_length(moved);
        }
        bar.set_position(moved);
        bar.set_message(format!("{} left here", ac::thousands(p.remaining)));
        if a.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "transferred": p.transferred, "duplicates": p.duplicates,
                    "remaining": p.remaining, "done": p.done,
                })
            )?;
        }
        let done = p.done;
        last = Some(p);
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    let Some(p) = last.filter(|p| p.done) else {
        return Err(format!(
            "the transfer stopped before it was done; it is safe to run again: {again}"
        )
        .into());
    };
    if !a.json {
        writeln!(out, "{}", ac::transfer_text(&p, to))?;
    }
    if p.remaining > 0 {
        return Err(format!(
            "{} messages are still on {server} (in flight, or refused by {to}); run it again: {again}",
            ac::thousands(p.remaining)
        )
        .into());
    }
    Ok(())
}

pub async fn top_domains(a: TopDomainsArgs) -> ClientResult {
    let mut client = admin(&a.client.server).await?;
    let r = client
        .top_domains(pb::TopDomainsRequest {
            limit: a.limit,
            lane: a.lane.map_or(pb::Lane::Unspecified, LaneArg::to_pb) as i32,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&ac::top_domains_json(&r))?
        );
    } else {
        print!("{}", ac::top_domains_table(&r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A QueueAdmin that records each call and answers from its fields.
    #[derive(Clone, Default)]
    struct Fake {
        calls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        op: pb::OperationResponse,
        /// Page i answers cursor `p{i}` (the first page: the empty cursor).
        pages: Vec<pb::ListMessagesResponse>,
        progress: Vec<pb::TransferProgress>,
        queued: u64,
    }

    impl Fake {
        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn answer(
            &self,
            name: &str,
            ids: &[String],
            filter: Option<&pb::MessageFilter>,
            dry_run: bool,
            limit: u64,
        ) -> Result<tonic::Response<pb::OperationResponse>, tonic::Status> {
            let filter = filter.map(ac::describe_filter);
            self.record(format!(
                "{name} dry_run={dry_run} limit={limit} ids={ids:?} filter={filter:?}"
            ));
            let mut r = self.op.clone();
            r.affected = if dry_run { 0 } else { r.matched - r.skipped };
            Ok(tonic::Response::new(r))
        }
    }

    type Res<T> = Result<tonic::Response<T>, tonic::Status>;
    type Req<T> = tonic::Request<T>;

    #[tonic::async_trait]
    impl pb::queue_admin_server::QueueAdmin for Fake {
        async fn queue_stats(&self, _: Req<pb::QueueStatsRequest>) -> Res<pb::QueueStatsResponse> {
            self.record("stats".into());
            Ok(tonic::Response::new(pb::QueueStatsResponse {
                queued: self.queued,
                ..Default::default()
            }))
        }
        async fn list_messages(
            &self,
            r: Req<pb::ListMessagesRequest>,
        ) -> Res<pb::ListMessagesResponse> {
            let r = r.into_inner();
            self.record(format!(
                "list cursor={} page_size={}",
                r.cursor, r.page_size
            ));
            let i = r.cursor.strip_prefix('p').map_or(0, |n| n.parse().unwrap());
            Ok(tonic::Response::new(self.pages[i].clone()))
        }
        async fn show_message(
            &self,
            _: Req<pb::ShowMessageRequest>,
        ) -> Res<pb::ShowMessageResponse> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn retry_now(&self, r: Req<pb::RetryNowRequest>) -> Res<pb::OperationResponse> {
            let r = r.into_inner();
            self.answer("retry", &r.ids, r.filter.as_ref(), r.dry_run, r.limit)
        }
        async fn cancel(&self, r: Req<pb::CancelRequest>) -> Res<pb::OperationResponse> {
            let r = r.into_inner();
            self.answer("cancel", &r.ids, r.filter.as_ref(), r.dry_run, r.limit)
        }
        async fn requeue_dead(&self, r: Req<pb::RequeueDeadRequest>) -> Res<pb::OperationResponse> {
            let r = r.into_inner();
            self.answer("requeue", &r.ids, r.filter.as_ref(), r.dry_run, r.limit)
        }
        async fn purge_dead(&self, r: Req<pb::PurgeDeadRequest>) -> Res<pb::OperationResponse> {
            let r = r.into_inner();
            let name = format!("purge older_than={}", r.older_than_seconds);
            self.answer(&name, &[], None, r.dry_run, r.limit)
        }
        async fn pause_delivery(
            &self,
            _: Req<pb::PauseDeliveryRequest>,
        ) -> Res<pb::DeliveryStateResponse> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn resume_delivery(
            &self,
            _: Req<pb::ResumeDeliveryRequest>,
        ) -> Res<pb::DeliveryStateResponse> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn top_domains(&self, _: Req<pb::TopDomainsRequest>) -> Res<pb::TopDomainsResponse> {
            Err(tonic::Status::unimplemented("fake"))
        }
        type TransferStream = std::pin::Pin<
            Box<
                dyn tokio_stream::Stream<Item = Result<pb::TransferProgress, tonic::Status>> + Send,
            >,
        >;
        async fn transfer(&self, r: Req<pb::TransferRequest>) -> Res<Self::TransferStream> {
            let r = r.into_inner();
            self.record(format!("transfer to={} batch_size={}", r.to, r.batch_size));
            let items: Vec<_> = self.progress.iter().cloned().map(Ok).collect();
            Ok(tonic::Response::new(Box::pin(tokio_stream::iter(items))))
        }
    }

    /// Serves `fake` on a free port and connects to it.
    async fn connect(fake: Fake) -> (AdminClient, String) {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", incoming.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::queue_admin_server::QueueAdminServer::new(fake))
                .serve_with_incoming(incoming),
        );
        (admin(&url).await.unwrap(), url)
    }

    fn cancel_target() -> Target {
        Target {
            ids: Vec::new(),
            filter: pb::MessageFilter {
                state: pb::StateFilter::StateReady as i32,
                lane: pb::Lane::Bulk as i32,
                recipient_domain: "example.org".into(),
                ..Default::default()
            },
            older_than: 0,
            all_messages: false,
        }
    }

    fn flags(yes: bool) -> OpFlags {
        OpFlags {
            limit: 0,
            yes,
            json: false,
        }
    }

    fn fake_op(matched: u64, skipped: u64) -> Fake {
        Fake {
            op: pb::OperationResponse {
                matched,
                skipped,
                sample_ids: vec!["id1".into(), "id2".into()],
                ..Default::default()
            },
            ..Fake::default()
        }
    }

    #[tokio::test]
    async fn a_filter_without_yes_only_does_a_dry_run() {
        let fake = fake_op(1237, 3);
        let (mut client, _) = connect(fake.clone()).await;
        let mut out = Vec::new();
        let err = operate_on(
            &mut client,
            Op::Cancel,
            &cancel_target(),
            &flags(false),
            &mut out,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "nothing changed; re-run with --yes to cancel these 1,234 messages"
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "would cancel 1,234 queued messages matching state=ready lane=bulk domain=example.org \
             (3 more match but are in flight); e.g. id1 id2\n"
        );
        assert_eq!(
            fake.calls(),
            [
                r#"cancel dry_run=true limit=0 ids=[] filter=Some("state=ready lane=bulk domain=example.org")"#
            ]
        );
    }

    #[tokio::test]
    async fn a_filter_with_yes_does_the_dry_run_then_the_change() {
        let fake = fake_op(1237, 3);
        let (mut client, _) = connect(fake.clone()).await;
        let mut out = Vec::new();
        operate_on(
            &mut client,
            Op::Cancel,
            &cancel_target(),
            &flags(true),
            &mut out,
        )
        .await
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with("\ncancelled 1,234 (skipped 3 in flight)\n"),
            "{out}"
        );
        let calls = fake.calls();
        assert_eq!(calls.len(), 2);
        assert!(calls[0].starts_with("cancel dry_run=true"));
        assert!(calls[1].starts_with("cancel dry_run=false limit=0 ids=[] filter=Some("));
    }

    #[tokio::test]
    async fn nothing_matched_changes_nothing_even_with_yes() {
        let fake = fake_op(0, 0);
        let (mut client, _) = connect(fake.clone()).await;
        let mut out = Vec::new();
        operate_on(
            &mut client,
            Op::Retry,
            &cancel_target(),
            &flags(true),
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(fake.calls().len(), 1);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("nothing to retry: "));
    }

    #[tokio::test]
    async fn ids_act_at_once_without_a_filter() {
        let fake = fake_op(2, 0);
        let (mut client, _) = connect(fake.clone()).await;
        let mut t = cancel_target();
        t.filter = pb::MessageFilter::default();
        t.ids = vec!["a".into(), "b".into()];
        let mut out = Vec::new();
        operate_on(&mut client, Op::Requeue, &t, &flags(false), &mut out)
            .await
            .unwrap();
        assert_eq!(
            fake.calls(),
            [r#"requeue dry_run=false limit=0 ids=["a", "b"] filter=None"#]
        );
        assert_eq!(String::from_utf8(out).unwrap(), "requeued 2\n");
    }

    #[tokio::test]
    async fn purge_dry_runs_with_its_age_and_limit() {
        let fake = fake_op(50, 0);
        let (mut client, _) = connect(fake.clone()).await;
        let t = Target {
            ids: Vec::new(),
            filter: pb::MessageFilter::default(),
            older_than: 7 * 86400,
            all_messages: true,
        };
        let f = OpFlags {
            limit: 20,
            yes: false,
            json: true,
        };
        let mut out = Vec::new();
        let err = operate_on(&mut client, Op::Purge, &t, &f, &mut out)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("purge these 20 messages"), "{err}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["dry_run"].as_bool(), v["matched"].as_u64()),
            (Some(true), Some(50))
        );
        assert_eq!(
            fake.calls(),
            ["purge older_than=604800 dry_run=true limit=20 ids=[] filter=None"]
        );
    }

    #[test]
    fn check_target_protects_the_whole_queue() {
        let mut t = cancel_target();
        assert!(check_target(Op::Cancel, &t).is_ok());
        t.filter = pb::MessageFilter::default();
        let err = check_target(Op::Cancel, &t).unwrap_err().to_string();
        assert!(err.contains("--all-messages"), "{err}");
        t.all_messages = true;
        assert!(check_target(Op::Cancel, &t).is_ok());
        t.ids = vec!["a".into()];
        assert!(check_target(Op::Cancel, &t).is_ok());
        t.filter.recipient_domain = "x.org".into();
        assert!(check_target(Op::Cancel, &t).is_err(), "ids and a filter");
    }

    fn page(ids: &[&str], next: &str) -> pb::ListMessagesResponse {
        pb::ListMessagesResponse {
            messages: ids
                .iter()
                .map(|id| pb::MessageSummary {
                    id: id.to_string(),
                    state: pb::MessageState::Dead as i32,
                    envelope_to: vec!["b@example.org".into()],
                    last_error: "550 no such user here, definitely not".into(),
                    enqueued_unix_ms: ac::now_ms(),
                    ..Default::default()
                })
                .collect(),
            next_cursor: next.into(),
            scanned: 10,
        }
    }

    fn list_args(args: &[&str]) -> ListArgs {
        let mut all = vec!["queue", "list"];
        all.extend_from_slice(args);
        match parse(&all).unwrap().command {
            Some(Command::Queue(QueueArgs {
                command: QueueCommand::List(a),
            })) => a,
            _ => panic!("not queue list"),
        }
    }

    #[tokio::test]
    async fn list_prints_one_page_and_the_next_cursor() {
        let fake = Fake {
            pages: vec![page(&["m1", "m2"], "p1"), page(&["m3"], "")],
            ..Fake::default()
        };
        let (mut client, _) = connect(fake.clone()).await;
        let mut out = Vec::new();
        list_into(&mut client, &list_args(&["--state", "dead"]), 80, &mut out)
            .await
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("ID  STATE  LANE"), "{out}");
        assert!(lines[1].starts_with("m1  dead   normal"), "{out}");
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{out}");
        assert_eq!(lines[3], "next page: --cursor p1");
        assert_eq!(fake.calls(), ["list cursor= page_size=0"]);
    }

    #[tokio::test]
    async fn list_all_follows_the_cursors_as_json_lines() {
        let fake = Fake {
            pages: vec![
                page(&["m1", "m2"], "p1"),
                page(&[], "p2"),
                page(&["m3"], ""),
            ],
            ..Fake::default()
        };
        let (mut client, _) = connect(fake.clone()).await;
        let mut out = Vec::new();
        list_into(&mut client, &list_args(&["--all", "--json"]), 80, &mut out)
            .await
            .unwrap();
        let ids: Vec<String> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
            .collect();
        assert_eq!(ids, [r#""m1""#, r#""m2""#, r#""m3""#]);
        assert_eq!(
            fake.calls(),
            [
                "list cursor= page_size=1000",
                "list cursor=p1 page_size=1000",
                "list cursor=p2 page_size=1000"
            ]
        );
    }

    fn transfer_args(url: &str, yes: bool) -> TransferArgs {
        TransferArgs {
            client: ClientArgs { server: url.into() },
            to: "http://other:50051".into(),
            batch_size: 0,
            yes,
            json: false,
        }
    }

    #[tokio::test]
    async fn transfer_without_yes_only_reads_stats() {
        let fake = Fake {
            queued: 12_345,
            ..Fake::default()
        };
        let (mut client, url) = connect(fake.clone()).await;
        let mut out = Vec::new();
        let err = transfer_on(&mut client, &transfer_args(&url, false), &mut out)
            .await
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("nothing changed; re-run with --yes"));
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("would move 12,345 queued messages"), "{out}");
        assert!(out.contains("stays paused"), "{out}");
        assert_eq!(fake.calls(), ["stats"]);
    }

    #[tokio::test]
    async fn transfer_reports_and_fails_while_messages_are_left() {
        let p = |transferred, remaining, done| pb::TransferProgress {
            transferred,
            duplicates: 1,
            remaining,
            done,
        };
        let fake = Fake {
            queued: 10,
            progress: vec![p(4, 6, false), p(7, 2, true)],
            ..Fake::default()
        };
        let (mut client, url) = connect(fake.clone()).await;
        let mut out = Vec::new();
        let err = transfer_on(&mut client, &transfer_args(&url, true), &mut out)
            .await
            .unwrap_err();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "transferred 7 to http://other:50051 (1 already there); 2 left here (in flight or refused)\n"
        );
        assert!(err.to_string().contains("run it again"), "{err}");
        assert_eq!(
            fake.calls(),
            ["stats", "transfer to=http://other:50051 batch_size=0"]
        );
    }

    #[test]
    fn same_node_ignores_case_and_trailing_slash() {
        assert!(same_node("http://A:50051/", "http://a:50051"));
        assert!(!same_node("http://a:50051", "http://b:50051"));
    }
}
