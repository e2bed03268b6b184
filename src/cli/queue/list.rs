//! The commands that only read: `queue list`, `queue show`, `top-domains`.

use super::*;

/// Rows `queue list --all` prints at most.
pub(super) const MAX_LIST_ROWS: u64 = 1_000_000;

/// The terminal's width when stdout is one.
pub(super) fn terminal_width() -> Option<usize> {
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

pub(super) async fn queue_list(a: ListArgs) -> ClientResult {
    let mut client = admin(&a.client).await?;
    let width = terminal_width().unwrap_or(usize::MAX);
    list_into(&mut client, &a, width, &mut std::io::stdout().lock()).await
}

/// `queue list` on `client`, the table cut to `width` columns.
pub(super) async fn list_into(
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

pub(super) async fn queue_show(a: ShowArgs) -> ClientResult {
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
