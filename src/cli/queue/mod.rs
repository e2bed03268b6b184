//! The operator commands: `mailspool queue list|show|retry|cancel|requeue|
//! purge|pause|resume|transfer` and `mailspool top-domains`. Flags and calls
//! live here; what they print is built by [`crate::cli::admin`]. Operations
//! by filter always ask the server for a dry run first and change nothing
//! without `--yes`.
//!
//! Files: this one the flags and the dispatch; `list.rs` the commands that
//! read (list, show, top-domains); `ops.rs` those that change messages or
//! lanes (retry, cancel, requeue, purge, pause, resume); `transfer.rs` the
//! node drain.

use std::io::{IsTerminal, Write};

use clap::{Args, Subcommand};

use crate::cli::admin::{self as ac, LaneArg, Op, StateArg};
use crate::cli::{channel, status_error, ClientArgs, ClientResult};
use crate::pb;

mod list;
mod ops;
#[cfg(test)]
mod tests;
mod transfer;

pub use list::top_domains;
use list::{queue_list, queue_show};
use ops::{operate, pause_resume, queue_op, Target};
use transfer::queue_transfer;

type AdminClient = pb::queue_admin_client::QueueAdminClient<crate::intake::auth::AuthChannel>;

async fn admin(client: &ClientArgs) -> Result<AdminClient, Box<dyn std::error::Error>> {
    Ok(pb::queue_admin_client::QueueAdminClient::new(
        channel(client).await?,
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
    pub(crate) fn to_pb(&self, state: Option<StateArg>) -> pb::MessageFilter {
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
    /// File holding a token for the other node (or MAILSPOOL_TO_TOKEN).
    #[arg(long, env = "MAILSPOOL_TO_TOKEN_FILE")]
    pub to_token_file: Option<std::path::PathBuf>,
    /// PEM CA to verify an https:// --to with [default: the public web roots]
    #[arg(long, env = "MAILSPOOL_TO_TLS_CA_FILE")]
    pub to_tls_ca_file: Option<std::path::PathBuf>,
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
            operate(&a.client, Op::Requeue, target, &a.flags).await
        }
        QueueCommand::Purge(a) => {
            let target = Target {
                ids: Vec::new(),
                filter: pb::MessageFilter::default(),
                older_than: a.older_than,
                all_messages: true,
            };
            operate(&a.client, Op::Purge, target, &a.flags).await
        }
        QueueCommand::Pause(a) => pause_resume(true, a).await,
        QueueCommand::Resume(a) => pause_resume(false, a).await,
        QueueCommand::Transfer(a) => queue_transfer(a).await,
    }
}
