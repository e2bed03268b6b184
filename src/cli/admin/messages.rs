//! One message and message lists: JSON, table rows, the show page, filters.

use super::*;

/// One message as JSON, fields named like the proto, enums as lowercase strings.
pub fn summary_json(m: &pb::MessageSummary) -> Value {
    let detail = match m.detail() {
        pb::StateFilter::Unspecified => String::new(),
        d => proto_lower(d.as_str_name(), "STATE_"),
    };
    json!({
        "id": m.id,
        "state": proto_lower(m.state().as_str_name(), ""),
        "detail": detail,
        "lane": lane_name(m.lane),
        "envelope_from": m.envelope_from,
        "envelope_to": m.envelope_to,
        "attempts": m.attempts,
        "last_error": m.last_error,
        "enqueued_unix_ms": m.enqueued_unix_ms,
        "next_attempt_unix_ms": m.next_attempt_unix_ms,
        "size_bytes": m.size_bytes,
        "message_id": m.message_id,
        "idempotency_key": m.idempotency_key,
        "finished_unix_ms": m.finished_unix_ms,
    })
}

/// The columns of `queue list`.
pub const LIST_HEADERS: [&str; 8] = [
    "ID",
    "STATE",
    "LANE",
    "AGE",
    "ATTEMPTS",
    "NEXT",
    "TO",
    "LAST ERROR",
];
pub const LIST_ALIGN: [Align; 8] = [
    Align::Left,
    Align::Left,
    Align::Left,
    Align::Right,
    Align::Right,
    Align::Left,
    Align::Left,
    Align::Left,
];

/// One `queue list` row.
pub fn list_row(m: &pb::MessageSummary, now_ms: i64) -> Vec<String> {
    let next = match m.state() {
        pb::MessageState::Queued => until(m.next_attempt_unix_ms, now_ms),
        _ => "-".into(),
    };
    let to = match m.envelope_to.split_first() {
        None => "-".to_string(),
        Some((first, [])) => first.clone(),
        Some((first, rest)) => format!("{first} +{}", rest.len()),
    };
    vec![
        m.id.clone(),
        state_name(m).into(),
        lane_name(m.lane).into(),
        human_duration(age_secs(m.enqueued_unix_ms, now_ms)),
        m.attempts.to_string(),
        next,
        to,
        m.last_error.clone(),
    ]
}

/// `queue show`: aligned `key: value` lines, then the headers.
pub fn show_text(r: &pb::ShowMessageResponse, now_ms: i64) -> String {
    let Some(m) = r.message.as_ref() else {
        return format!("headers:\n{}", r.headers);
    };
    let at = |ms: i64| format!("{} ({})", utc_time(ms), ago(ms, now_ms));
    let mut kv: Vec<(&str, String)> = vec![
        ("id", m.id.clone()),
        ("state", state_name(m).into()),
        ("lane", lane_name(m.lane).into()),
        ("message-id", format!("<{}>", m.message_id)),
        ("from", m.envelope_from.clone()),
        ("to", m.envelope_to.join(", ")),
        ("size", human_bytes(m.size_bytes)),
        ("attempts", m.attempts.to_string()),
        ("enqueued", at(m.enqueued_unix_ms)),
    ];
    if m.state() == pb::MessageState::Queued {
        let next = until(m.next_attempt_unix_ms, now_ms);
        let next = if m.next_attempt_unix_ms > 0 {
            format!("{} ({next})", utc_time(m.next_attempt_unix_ms))
        } else {
            next
        };
        kv.push(("next attempt", next));
    }
    if m.finished_unix_ms > 0 {
        kv.push(("finished", at(m.finished_unix_ms)));
    }
    if !m.idempotency_key.is_empty() {
        kv.push(("idempotency key", m.idempotency_key.clone()));
    }
    if !m.last_error.is_empty() {
        kv.push(("last error", m.last_error.clone()));
    }
    let width = kv.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in kv {
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    if !r.recipients.is_empty() {
        out.push_str("\nrecipients:\n");
        for x in &r.recipients {
            let state = x.state().as_str_name().trim_start_matches("RECIPIENT_");
            out.push_str(&format!(
                "  {}  {}  attempts {}",
                x.address,
                state.to_lowercase(),
                x.attempts
            ));
            if !x.last_reply.is_empty() {
                out.push_str(&format!("  {}", truncate(&x.last_reply, 100)));
            }
            out.push('\n');
        }
    }
    if !r.events.is_empty() {
        out.push_str("\nevents:\n");
        for e in &r.events {
            out.push_str(&format!("{}\n", crate::cli::events::line(e)));
        }
    }
    if r.events_partial {
        out.push_str(
            "  (only the newest events were searched; `mailspool events` reads them all)\n",
        );
    }
    out.push_str("\nheaders:\n");
    let headers = r.headers.replace("\r\n", "\n");
    out.push_str(headers.trim_end_matches('\n'));
    out.push('\n');
    out
}

/// `queue show --json`: the response, shaped like the proto.
pub fn show_json(r: &pb::ShowMessageResponse) -> Value {
    json!({
        "message": r.message.as_ref().map(summary_json),
        "headers": r.headers,
        "recipients": r.recipients.iter().map(|x| json!({
            "address": x.address, "state": x.state().as_str_name(),
            "attempts": x.attempts, "last_reply": x.last_reply,
        })).collect::<Vec<_>>(),
        "events": r.events.iter().map(crate::cli::events::json_value).collect::<Vec<_>>(),
        "events_partial": r.events_partial,
    })
}

/// A filter in the flags' words: `state=ready lane=bulk domain=example.org`.
pub fn describe_filter(f: &pb::MessageFilter) -> String {
    let mut parts = Vec::new();
    let state = match f.state() {
        pb::StateFilter::Unspecified => None,
        pb::StateFilter::StateReady => Some("ready"),
        pb::StateFilter::StateScheduled => Some("scheduled"),
        pb::StateFilter::StateInFlight => Some("in-flight"),
        pb::StateFilter::StateDead => Some("dead"),
        pb::StateFilter::StateQuarantined => Some("quarantined"),
    };
    if let Some(s) = state {
        parts.push(format!("state={s}"));
    }
    if f.lane != pb::Lane::Unspecified as i32 {
        parts.push(format!("lane={}", lane_name(f.lane)));
    }
    if !f.recipient_domain.is_empty() {
        parts.push(format!("domain={}", f.recipient_domain));
    }
    if f.min_age_seconds > 0 {
        parts.push(format!("min-age={}", duration_flag(f.min_age_seconds)));
    }
    if f.max_age_seconds > 0 {
        parts.push(format!("max-age={}", duration_flag(f.max_age_seconds)));
    }
    parts.join(" ")
}

/// True when a filter selects everything (no flag narrows it).
pub fn filter_is_empty(f: &pb::MessageFilter) -> bool {
    describe_filter(f).is_empty()
}
