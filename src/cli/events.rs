//! `mailspool events [--follow] [--after N] [--type delivered,bounced]
//! [--json]`: the event log, one line per event (WatchEvents).

use clap::Args;

use crate::cli::{channel, status_error, ClientArgs, ClientResult};
use crate::model::{utc_time, EventKind};
use crate::pb;

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Keep printing new events as they happen (Ctrl-C ends).
    #[arg(long)]
    pub follow: bool,
    /// Only events after this sequence number (default: the oldest kept).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Only these types, comma-separated: accepted, delivered, deferred,
    /// bounced, suppressed, expired, cancelled, dead_lettered, requeued,
    /// quarantined.
    #[arg(long = "type", value_delimiter = ',', value_parser = parse_kind)]
    pub types: Vec<EventKind>,
    /// One JSON object per event, one per line.
    #[arg(long)]
    pub json: bool,
}

fn parse_kind(s: &str) -> Result<EventKind, String> {
    EventKind::parse(s.trim()).ok_or_else(|| {
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        format!("`{s}` is not an event type ({})", known.join(", "))
    })
}

/// `EVENT_DEAD_LETTERED` → `dead_lettered`.
fn type_name(t: pb::EventType) -> String {
    t.as_str_name()
        .trim_start_matches("EVENT_")
        .to_ascii_lowercase()
}

pub async fn events(a: EventsArgs) -> ClientResult {
    let mut c = pb::mail_queue_client::MailQueueClient::new(channel(&a.client).await?);
    let types = a
        .types
        .iter()
        .map(|k| {
            pb::EventType::from_str_name(&format!("EVENT_{}", k.name().to_ascii_uppercase()))
                .map_or(0, |t| t as i32)
        })
        .collect();
    let mut stream = c
        .watch_events(pb::WatchEventsRequest {
            after_sequence: a.after,
            types,
            follow: a.follow,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(status_error)? {
        println!("{}", if a.json { json(&e) } else { line(&e) });
    }
    Ok(())
}

/// One event as a line for people: sequence, time, type, id, recipient,
/// and what is known of why.
pub fn line(e: &pb::Event) -> String {
    let mut l = format!(
        "{:>8}  {}  {:<13} {}",
        e.sequence,
        utc_time(e.time_unix_ms),
        type_name(e.r#type()),
        e.id
    );
    if !e.recipient.is_empty() {
        l += &format!("  {}", e.recipient);
    }
    if e.attempt > 0 && e.r#type() != pb::EventType::EventAccepted {
        l += &format!("  attempt {}", e.attempt);
    }
    if !e.relay.is_empty() {
        l += &format!("  via {}", e.relay);
    }
    if e.bounce_class() != pb::BounceClass::Unspecified {
        l += &format!("  {}", bounce(e.bounce_class()));
    }
    if !e.smtp_reply.is_empty() {
        l += &format!(
            "  {}",
            crate::cli::admin::human::truncate(&e.smtp_reply, 100)
        );
    }
    if e.next_attempt_unix_ms > 0 {
        l += &format!("  next {}", utc_time(e.next_attempt_unix_ms));
    }
    l
}

fn bounce(b: pb::BounceClass) -> String {
    b.as_str_name()
        .trim_start_matches("BOUNCE_")
        .to_ascii_lowercase()
}

pub fn json(e: &pb::Event) -> String {
    json_value(e).to_string()
}

/// One event as JSON, its fields named as the proto's.
pub fn json_value(e: &pb::Event) -> serde_json::Value {
    serde_json::json!({
        "sequence": e.sequence,
        "type": type_name(e.r#type()),
        "time_unix_ms": e.time_unix_ms,
        "id": e.id,
        "message_id": e.message_id,
        "client": e.client,
        "lane": e.lane().as_str_name().trim_start_matches("LANE_").to_ascii_lowercase(),
        "recipient": e.recipient,
        "attempt": e.attempt,
        "smtp_reply": e.smtp_reply,
        "bounce_class": bounce(e.bounce_class()),
        "next_attempt_unix_ms": e.next_attempt_unix_ms,
        "relay": e.relay,
        "idempotency_key": e.idempotency_key,
        "time_in_queue_ms": e.time_in_queue_ms,
    })
}
