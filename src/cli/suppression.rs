//! `mailspool suppression list|add|remove`: the addresses mail is never
//! sent to (hard bounces, or an operator's word) until their entry expires.

use clap::{Args, Subcommand};

use crate::cli::{channel, status_error, ClientArgs, ClientResult};
use crate::model::utc_time;
use crate::pb;

#[derive(Debug, Args)]
pub struct SuppressionArgs {
    #[command(subcommand)]
    pub command: SuppressionCommand,
}

#[derive(Debug, Subcommand)]
pub enum SuppressionCommand {
    /// The suppressed addresses (all, one address's or one domain's).
    List(ListArgs),
    /// Suppress addresses: nothing is sent to them until removed or expired.
    Add(AddArgs),
    /// Send to addresses again.
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this address.
    #[arg(long, conflicts_with = "domain")]
    pub address: Option<String>,
    /// Only this domain's addresses.
    #[arg(long)]
    pub domain: Option<String>,
    /// At most this many (every page is fetched until then).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// One JSON object per entry, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(required = true)]
    pub addresses: Vec<String>,
    /// Why (shown in listings and to senders); default `manual`.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Expire the entries after this long (`30d`); default: never.
    #[arg(long, value_parser = crate::cli::admin::flags::parse_duration)]
    pub expires_in: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(required = true)]
    pub addresses: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn suppression(a: SuppressionArgs) -> ClientResult {
    match a.command {
        SuppressionCommand::List(a) => list(a).await,
        SuppressionCommand::Add(a) => {
            let mut c = pb::queue_admin_client::QueueAdminClient::new(channel(&a.client).await?);
            let expires = a
                .expires_in
                .map_or(0, |s| crate::model::wall_ms() as i64 + s as i64 * 1000);
            let r = c
                .add_suppressions(pb::AddSuppressionsRequest {
                    addresses: a.addresses,
                    reason: a.reason,
                    expires_at_unix_ms: expires,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if a.json {
                println!("{}", serde_json::json!({ "added": r.added }));
            } else {
                println!("suppressed: {}", r.added);
            }
            Ok(())
        }
        SuppressionCommand::Remove(a) => {
            let mut c = pb::queue_admin_client::QueueAdminClient::new(channel(&a.client).await?);
            let asked = a.addresses.len();
            let r = c
                .remove_suppressions(pb::RemoveSuppressionsRequest {
                    addresses: a.addresses,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if a.json {
                println!("{}", serde_json::json!({ "removed": r.removed }));
            } else {
                println!(
                    "removed: {} of {asked} (the others were not suppressed)",
                    r.removed
                );
            }
            Ok(())
        }
    }
}

async fn list(a: ListArgs) -> ClientResult {
    let mut c = pb::queue_admin_client::QueueAdminClient::new(channel(&a.client).await?);
    let mut cursor = String::new();
    let mut shown = 0;
    let mut total;
    if !a.json {
        println!(
            "{:<40} {:<14} {:<24} {:<24} MESSAGE",
            "ADDRESS", "REASON", "SINCE", "EXPIRES"
        );
    }
    loop {
        let page = c
            .list_suppressions(pb::ListSuppressionsRequest {
                address: a.address.clone().unwrap_or_default(),
                domain: a.domain.clone().unwrap_or_default(),
                cursor: cursor.clone(),
                limit: (a.limit - shown).min(1000) as u32,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        total = page.total;
        for e in &page.entries {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "address": e.address,
                        "reason": e.reason,
                        "reply": e.reply,
                        "message_id": e.message_id,
                        "client": e.client,
                        "created_unix_ms": e.created_unix_ms,
                        "expires_unix_ms": e.expires_unix_ms,
                    })
                );
            } else {
                let expires = if e.expires_unix_ms == 0 {
                    "never".to_string()
                } else {
                    utc_time(e.expires_unix_ms)
                };
                println!(
                    "{:<40} {:<14} {:<24} {:<24} {}",
                    e.address,
                    e.reason,
                    utc_time(e.created_unix_ms),
                    expires,
                    e.message_id
                );
            }
        }
        shown += page.entries.len();
        cursor = page.next_cursor;
        if cursor.is_empty() || shown >= a.limit {
            break;
        }
    }
    if !a.json {
        println!("{shown} shown; {total} suppressed in all");
    }
    Ok(())
}
