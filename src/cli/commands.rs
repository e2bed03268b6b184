//! The small client commands: `status`, `compact`, and the flags of `stats`.

use super::*;

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The server's data directory.
    #[arg(long, env = "MAILSPOOL_DATA_DIR", default_value = "./mailspool-data")]
    pub data_dir: PathBuf,
}

pub fn compact(a: CompactArgs) -> ClientResult {
    eprintln!("compacting {} ...", a.data_dir.display());
    let c = crate::spool::compact::compact(&a.data_dir).map_err(|e| e.to_string())?;
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
            "message_id": m.message_id, "bounce_class": m.bounce_class().as_str_name(),
            "expires_at_unix_ms": m.expires_at_unix_ms,
            "recipients": m.recipients.iter().map(|r| serde_json::json!({
                "address": r.address, "state": r.state().as_str_name(), "attempts": r.attempts,
                "last_reply": r.last_reply, "bounce_class": r.bounce_class().as_str_name(),
                "finished_unix_ms": r.finished_unix_ms,
            })).collect::<Vec<_>>(),
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
        println!("bounce class  {}", m.bounce_class().as_str_name());
    }
    if m.next_attempt_unix_ms > 0 && matches!(m.state(), pb::MessageState::Queued) {
        let at = m.next_attempt_unix_ms;
        let now = ac::human::now_ms();
        println!(
            "next attempt  {} ({})",
            ac::human::until(at, now),
            ac::human::utc_time(at)
        );
    }
    if m.expires_at_unix_ms > 0 {
        println!(
            "expires       {}",
            ac::human::utc_time(m.expires_at_unix_ms)
        );
    }
    if !m.recipients.is_empty() {
        println!("recipients");
        for r in &m.recipients {
            let state = r
                .state()
                .as_str_name()
                .trim_start_matches("RECIPIENT_")
                .to_ascii_lowercase();
            let mut line = format!("  {:<40} {state:<10} attempts {}", r.address, r.attempts);
            if r.bounce_class() != pb::BounceClass::Unspecified {
                line += &format!("  {}", r.bounce_class().as_str_name());
            }
            if !r.last_reply.is_empty() {
                line += &format!("  {}", ac::human::truncate(&r.last_reply, 100));
            }
            println!("{line}");
        }
    }
    Ok(())
}
