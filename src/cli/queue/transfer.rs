//! `queue transfer`: drain this node into another one.

use super::*;

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
pub(super) fn same_node(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    norm(a) == norm(b)
}

pub(super) async fn queue_transfer(a: TransferArgs) -> ClientResult {
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
pub(super) async fn transfer_on(
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
