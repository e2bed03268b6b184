//! The operator commands: `mailspool queue list|show|retry|cancel|requeue|
//! purge|pause|resume|transfer` and `mailspool top-domains`. Flags and calls
//! live here; what they print is built by [`crate::admin_cli`]. Operations
//! by filter always ask the server for a dry run first and change nothing
//! without `--yes`.

use std::io::{IsTerminal, Write};

use clap::{Args, Subcommand};

use crate::admin_cli::{self as ac, LaneArg, Op, StateArg};
use crate::cli::{channel, status_error, ClientArgs, ClientResult};
use crate::pb;

type AdminClient = pb::queue_admin_client::QueueAdminClient<crate::auth::AuthChannel>;

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
    let mut client = admin(&a.client).await?;
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
    let mut client = admin(&a.client).await?;
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
    operate(&a.client, op, target, &a.flags).await
}

async fn operate(c: &ClientArgs, op: Op, t: Target, f: &OpFlags) -> ClientResult {
    check_target(op, &t)?;
    let mut client = admin(c).await?;
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
    let mut client = admin(&a.client).await?;
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

impl TransferArgs {
    fn to_token(&self) -> Result<Option<String>, Box<dyn std::error::Error>> {
        crate::cli::read_token(
            self.to_token_file.as_deref(),
            "--to-token-file",
            "MAILSPOOL_TO_TOKEN",
        )
    }
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
    let mut client = admin(&a.client).await?;
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
            to_token: a.to_token()?.unwrap_or_default(),
            to_ca_pem: match &a.to_tls_ca_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read --to-tls-ca-file {}: {e}", p.display()))?,
                None => String::new(),
            },
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
    let mut client = admin(&a.client).await?;
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

    #[test]
    fn same_node_ignores_case_and_trailing_slash() {
        assert!(same_node("http://A:50051/", "http://a:50051"));
        assert!(!same_node("http://a:50051", "http://b:50051"));
    }
}
