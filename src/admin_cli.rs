//! Pure helpers of the operator commands (`queue ...`, `top-domains`,
//! `stats --watch`): parsing durations, the state and lane vocabulary of the
//! flags, human numbers, durations and times, aligned tables, and the text
//! and JSON each command prints. No I/O here: the commands in [`crate::cli`]
//! make the calls and print what these functions return.

use clap::ValueEnum;
use serde_json::{json, Value};

use crate::pb;

/// Parses `90s`, `10m`, `2h`, `7d` or plain seconds (`30`) into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "`{s}` is not a duration: use e.g. 90s, 10m, 2h, 7d or seconds"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 90s, 10m, 2h, 7d or seconds"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too long a duration"))
}

/// Like [`parse_duration`], but at least one second (for `--interval`).
pub fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        0 => Err("the interval must be at least 1s".into()),
        n => Ok(std::time::Duration::from_secs(n)),
    }
}

/// Seconds as the flags spell them: the largest unit that divides exactly
/// (`600` → `10m`, `90` → `90s`).
pub fn duration_flag(secs: u64) -> String {
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if secs > 0 && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// `--state` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Ready,
    Scheduled,
    InFlight,
    Dead,
    Quarantined,
}

impl StateArg {
    pub fn to_pb(self) -> pb::StateFilter {
        match self {
            StateArg::Ready => pb::StateFilter::StateReady,
            StateArg::Scheduled => pb::StateFilter::StateScheduled,
            StateArg::InFlight => pb::StateFilter::StateInFlight,
            StateArg::Dead => pb::StateFilter::StateDead,
            StateArg::Quarantined => pb::StateFilter::StateQuarantined,
        }
    }
}

/// `--lane` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LaneArg {
    Transactional,
    Normal,
    Bulk,
}

impl LaneArg {
    pub fn to_pb(self) -> pb::Lane {
        match self {
            LaneArg::Transactional => pb::Lane::Transactional,
            LaneArg::Normal => pb::Lane::Normal,
            LaneArg::Bulk => pb::Lane::Bulk,
        }
    }
}

/// A lane as the flags spell it (unspecified and unknown values are normal,
/// as on the server).
pub fn lane_name(lane: i32) -> &'static str {
    match pb::Lane::try_from(lane) {
        Ok(pb::Lane::Transactional) => "transactional",
        Ok(pb::Lane::Bulk) => "bulk",
        _ => "normal",
    }
}

/// `bulk, normal` or `none`, in lane order.
pub fn lanes_list(lanes: &[i32]) -> String {
    let mut names: Vec<(i32, &str)> = lanes.iter().map(|&l| (l, lane_name(l))).collect();
    names.sort();
    names.dedup_by_key(|(_, n)| *n);
    if names.is_empty() {
        return "none".into();
    }
    names.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// A message's state in the `--state` vocabulary: queued messages are
/// `ready` or `scheduled` (their detail).
pub fn state_name(m: &pb::MessageSummary) -> &'static str {
    match m.state() {
        pb::MessageState::Queued => match m.detail() {
            pb::StateFilter::StateScheduled => "scheduled",
            pb::StateFilter::StateReady => "ready",
            _ => "queued",
        },
        pb::MessageState::InFlight => "in-flight",
        pb::MessageState::Delivered => "delivered",
        pb::MessageState::Dead => "dead",
        pb::MessageState::Quarantined => "quarantined",
        pb::MessageState::Cancelled => "cancelled",
        pb::MessageState::Unspecified => "unknown",
    }
}

/// An enum's proto name, lowercased and without its prefix
/// (`STATE_READY` → `ready`, `IN_FLIGHT` → `in_flight`).
fn proto_lower(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

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

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

const UNITS: [(&str, u64); 4] = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)];

/// At most the two largest units, a zero second unit dropped: `3m 20s`,
/// `1h`, `2d 3h`.
pub fn human_duration(secs: u64) -> String {
    let Some(i) = UNITS.iter().position(|(_, n)| secs >= *n) else {
        return "0s".into();
    };
    let (u1, n1) = UNITS[i];
    let mut s = format!("{}{u1}", secs / n1);
    if let Some(&(u2, n2)) = UNITS.get(i + 1) {
        let q = secs % n1 / n2;
        if q > 0 {
            s.push_str(&format!(" {q}{u2}"));
        }
    }
    s
}

/// The largest unit only, rounded down: `45s`, `4m`, `2h`, `3d`.
pub fn short_duration(secs: u64) -> String {
    for (unit, n) in UNITS {
        if secs >= n {
            return format!("{}{unit}", secs / n);
        }
    }
    "0s".into()
}

/// When something will happen: `now` if due, else `in 4m`.
pub fn until(target_ms: i64, now_ms: i64) -> String {
    let ms = target_ms.saturating_sub(now_ms);
    if ms < 1000 {
        "now".into()
    } else {
        format!("in {}", short_duration((ms / 1000) as u64))
    }
}

/// How long ago something happened: `3m 20s ago`, `just now`.
pub fn ago(then_ms: i64, now_ms: i64) -> String {
    let ms = now_ms.saturating_sub(then_ms);
    if ms < 1000 {
        "just now".into()
    } else {
        format!("{} ago", human_duration((ms / 1000) as u64))
    }
}

/// Whole seconds since `then_ms` (0 if in the future).
pub fn age_secs(then_ms: i64, now_ms: i64) -> u64 {
    (now_ms.saturating_sub(then_ms).max(0) / 1000) as u64
}

/// Unix milliseconds as `2025-11-25 19:01:02 UTC`.
pub fn utc_time(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Cuts `s` to at most `width` characters, ending with `…` when cut; line
/// breaks become spaces.
pub fn truncate(s: &str, width: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= width {
        return flat;
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = flat.chars().take(width - 1).collect();
    out.push('…');
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Widths of each column: the widest cell or header, in characters.
fn column_widths(headers: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(cell.chars().count());
            }
        }
    }
    w
}

/// Columns separated by two spaces, each padded to its widest cell; the
/// last column is not padded (no trailing spaces).
pub fn table(headers: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let w = column_widths(headers, rows);
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(w.len()) {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w[i].saturating_sub(cell.chars().count());
            let last = i + 1 == w.len();
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                Align::Left => {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Truncates the last column so that each line fits in `width` characters
/// (keeping at least `min_last` of it).
pub fn fit_last_column(headers: &[&str], rows: &mut [Vec<String>], width: usize, min_last: usize) {
    let w = column_widths(headers, rows);
    let Some((_, others)) = w.split_last() else {
        return;
    };
    let used: usize = others.iter().map(|c| c + 2).sum();
    let room = width.saturating_sub(used).max(min_last);
    for row in rows.iter_mut() {
        if let Some(cell) = row.get_mut(w.len() - 1) {
            *cell = truncate(cell, room);
        }
    }
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

/// The four operations that take ids or a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Retry,
    Cancel,
    Requeue,
    Purge,
}

impl Op {
    pub fn verb(self) -> &'static str {
        match self {
            Op::Retry => "retry",
            Op::Cancel => "cancel",
            Op::Requeue => "requeue",
            Op::Purge => "purge",
        }
    }
    fn past(self) -> &'static str {
        match self {
            Op::Retry => "retried",
            Op::Cancel => "cancelled",
            Op::Requeue => "requeued",
            Op::Purge => "purged",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            Op::Retry => "scheduled messages",
            Op::Cancel => "queued messages",
            Op::Requeue | Op::Purge => "dead letters",
        }
    }
    fn skip_reason(self) -> &'static str {
        match self {
            Op::Cancel => "in flight",
            Op::Retry => "in flight or already due",
            Op::Requeue | Op::Purge => "no longer dead",
        }
    }
}

/// How many a confirmed run would change: matched minus skipped, at most `limit`.
pub fn would_touch(r: &pb::OperationResponse, limit: u64) -> u64 {
    let n = r.matched.saturating_sub(r.skipped);
    if limit > 0 {
        n.min(limit)
    } else {
        n
    }
}

/// The dry-run line: `would cancel 1,234 queued messages matching
/// state=ready lane=bulk; e.g. a, b`. `what` describes the selection.
pub fn dry_run_text(op: Op, r: &pb::OperationResponse, what: &str, limit: u64) -> String {
    let n = would_touch(r, limit);
    if n == 0 {
        return format!("nothing to {}: no {} {what}", op.verb(), op.noun());
    }
    let mut s = format!("would {} {} {} {what}", op.verb(), thousands(n), op.noun());
    let mut notes = Vec::new();
    if r.skipped > 0 {
        notes.push(format!(
            "{} more match but are {}",
            thousands(r.skipped),
            op.skip_reason()
        ));
    }
    if limit > 0 && r.matched.saturating_sub(r.skipped) > limit {
        notes.push(format!("--limit {}", thousands(limit)));
    }
    if !notes.is_empty() {
        s.push_str(&format!(" ({})", notes.join("; ")));
    }
    if !r.sample_ids.is_empty() {
        s.push_str(&format!("; e.g. {}", r.sample_ids.join(" ")));
    }
    s
}

/// The error after a dry run without `--yes`.
pub fn confirm_text(op: Op, r: &pb::OperationResponse, limit: u64) -> String {
    format!(
        "nothing changed; re-run with --yes to {} these {} messages",
        op.verb(),
        thousands(would_touch(r, limit))
    )
}

/// The result line: `cancelled 1,234 (skipped 3 in flight)`.
pub fn result_text(op: Op, r: &pb::OperationResponse) -> String {
    let mut s = format!("{} {}", op.past(), thousands(r.affected));
    if r.skipped > 0 {
        s.push_str(&format!(
            " (skipped {} {})",
            thousands(r.skipped),
            op.skip_reason()
        ));
    }
    s
}

/// The warning for ids that were not found, if any.
pub fn not_found_text(r: &pb::OperationResponse) -> Option<String> {
    if r.not_found.is_empty() {
        return None;
    }
    Some(format!(
        "warning: {} not found (or not in a state this applies to): {}",
        thousands(r.not_found.len() as u64),
        r.not_found.join(" ")
    ))
}

/// An operation's response as JSON.
pub fn op_json(op: Op, dry_run: bool, r: &pb::OperationResponse) -> Value {
    json!({
        "operation": op.verb(),
        "dry_run": dry_run,
        "matched": r.matched,
        "affected": r.affected,
        "skipped": r.skipped,
        "sample_ids": r.sample_ids,
        "not_found": r.not_found,
    })
}

/// Column labels of `top-domains`: each bucket's upper bound in minutes, the
/// last open one (0) as the previous bound followed by `+`.
pub fn bucket_labels(upper: &[u32]) -> Vec<String> {
    let mut prev = 0;
    upper
        .iter()
        .map(|&u| {
            if u == 0 {
                format!("{prev}+")
            } else {
                prev = u;
                u.to_string()
            }
        })
        .collect()
}

/// `top-domains`: DOMAIN, TOTAL, then one column per age bucket; the TOTAL
/// row first.
pub fn top_domains_table(r: &pb::TopDomainsResponse) -> String {
    let labels = bucket_labels(&r.bucket_upper_minutes);
    let mut headers: Vec<&str> = vec!["DOMAIN", "TOTAL"];
    headers.extend(labels.iter().map(String::as_str));
    let mut align = vec![Align::Left];
    align.resize(headers.len(), Align::Right);
    let row = |name: &str, d: &pb::DomainRow| {
        let mut cells = vec![name.to_string(), thousands(d.total)];
        for i in 0..labels.len() {
            cells.push(thousands(d.buckets.get(i).copied().unwrap_or(0)));
        }
        cells
    };
    let empty = pb::DomainRow::default();
    let mut rows = vec![row("TOTAL", r.total.as_ref().unwrap_or(&empty))];
    rows.extend(r.domains.iter().map(|d| row(&d.domain, d)));
    table(&headers, &align, &rows)
}

fn domain_row_json(d: &pb::DomainRow) -> Value {
    json!({ "domain": d.domain, "total": d.total, "buckets": d.buckets })
}

/// `top-domains --json`: the response, shaped like the proto.
pub fn top_domains_json(r: &pb::TopDomainsResponse) -> Value {
    json!({
        "bucket_upper_minutes": r.bucket_upper_minutes,
        "domains": r.domains.iter().map(domain_row_json).collect::<Vec<_>>(),
        "total": r.total.as_ref().map(domain_row_json),
        "scanned": r.scanned,
    })
}

/// The final line of `queue transfer`.
pub fn transfer_text(p: &pb::TransferProgress, to: &str) -> String {
    format!(
        "transferred {} to {to} ({} already there); {} left here (in flight or refused)",
        thousands(p.transferred),
        thousands(p.duplicates),
        thousands(p.remaining)
    )
}

/// One client's figures of QueueStats, for `--json`.
pub fn client_json(c: &pb::ClientStats) -> serde_json::Value {
    serde_json::json!({
        "name": c.name, "queued": c.queued, "queued_bytes": c.queued_bytes,
        "enqueued_total": c.enqueued_total, "delivered_total": c.delivered_total,
        "dead_total": c.dead_total, "refused_rate_total": c.refused_rate_total,
        "refused_quota_total": c.refused_quota_total,
        "refused_policy_total": c.refused_policy_total,
        "rate_per_second": c.rate_per_second,
        "max_queued_messages": c.max_queued_messages,
        "max_queued_bytes": c.max_queued_bytes,
    })
}

/// Per-client figures of QueueStats as a table: queued against the quota,
/// totals, and refusals by reason.
pub fn clients_table(clients: &[pb::ClientStats]) -> String {
    let limit = |v: u64| {
        if v == 0 {
            "-".to_string()
        } else {
            thousands(v)
        }
    };
    let row = |cells: [&str; 8]| {
        let [name, rest @ ..] = cells;
        let mut line = format!("{name:<20}");
        for c in rest {
            line.push_str(&format!(" {c:>14}"));
        }
        line + "\n"
    };
    let mut out = row([
        "client",
        "queued",
        "quota",
        "enqueued",
        "delivered",
        "refused/rate",
        "refused/quota",
        "refused/policy",
    ]);
    for c in clients {
        out.push_str(&row([
            &c.name,
            &thousands(c.queued),
            &limit(c.max_queued_messages),
            &thousands(c.enqueued_total),
            &thousands(c.delivered_total),
            &thousands(c.refused_rate_total),
            &thousands(c.refused_quota_total),
            &thousands(c.refused_policy_total),
        ]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_table_shows_quota_and_refusals() {
        let t = clients_table(&[pb::ClientStats {
            name: "billing".into(),
            queued: 12_345,
            max_queued_messages: 100_000,
            enqueued_total: 2_000_000,
            refused_quota_total: 7,
            ..Default::default()
        }]);
        let row = t.lines().find(|l| l.starts_with("billing")).expect(&t);
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "billing",
                "12,345",
                "100,000",
                "2,000,000",
                "0",
                "0",
                "7",
                "0"
            ]
        );
        let none = clients_table(&[pb::ClientStats::default()]);
        assert!(none.lines().last().unwrap().contains(" - "), "{none}");
    }

    #[test]
    fn parse_duration_table() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("30", 30),
            ("90s", 90),
            ("10m", 600),
            ("2h", 7200),
            ("7d", 604_800),
            (" 5m ", 300),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(*want), "{s}");
        }
        for bad in [
            "",
            "m",
            "10x",
            "1.5h",
            "-5",
            "10 m",
            "5mm",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_interval("0s").is_err());
        assert_eq!(parse_interval("2"), Ok(std::time::Duration::from_secs(2)));
    }

    #[test]
    fn duration_flag_round_trips() {
        for (secs, want) in [
            (0, "0s"),
            (90, "90s"),
            (600, "10m"),
            (7200, "2h"),
            (604_800, "7d"),
            (3660, "61m"),
        ] {
            assert_eq!(duration_flag(secs), want);
            assert_eq!(parse_duration(want), Ok(secs));
        }
    }

    #[test]
    fn thousands_table() {
        for (n, want) in [
            (0, "0"),
            (7, "7"),
            (999, "999"),
            (1000, "1,000"),
            (1234, "1,234"),
            (123_456, "123,456"),
            (1_234_567, "1,234,567"),
            (u64::MAX, "18,446,744,073,709,551,615"),
        ] {
            assert_eq!(thousands(n), want);
        }
    }

    #[test]
    fn human_bytes_table() {
        for (n, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (12 * 1024 * 1024, "12.0 MiB"),
            (5 << 30, "5.0 GiB"),
        ] {
            assert_eq!(human_bytes(n), want);
        }
    }

    #[test]
    fn human_duration_table() {
        for (secs, want) in [
            (0, "0s"),
            (1, "1s"),
            (59, "59s"),
            (60, "1m"),
            (200, "3m 20s"),
            (252, "4m 12s"),
            (3600, "1h"),
            (3660, "1h 1m"),
            (3601, "1h"),
            (7322, "2h 2m"),
            (86400, "1d"),
            (90061, "1d 1h"),
            (86400 + 59, "1d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn short_and_relative_times() {
        for (secs, want) in [
            (0, "0s"),
            (45, "45s"),
            (299, "4m"),
            (7200, "2h"),
            (3 * 86400 + 5, "3d"),
        ] {
            assert_eq!(short_duration(secs), want);
        }
        let now = 1_000_000_000;
        assert_eq!(until(now - 5000, now), "now");
        assert_eq!(until(0, now), "now");
        assert_eq!(until(now + 500, now), "now");
        assert_eq!(until(now + 4 * 60_000 + 3000, now), "in 4m");
        assert_eq!(ago(now - 200_000, now), "3m 20s ago");
        assert_eq!(ago(now + 10, now), "just now");
        assert_eq!(age_secs(now - 61_500, now), 61);
        assert_eq!(age_secs(now + 5000, now), 0);
    }

    #[test]
    fn utc_time_table() {
        for (ms, want) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400_000, "2000-02-29 00:00:00 UTC"),
            (1_764_097_262_000, "2025-11-25 19:01:02 UTC"),
            (-1000, "1969-12-31 23:59:59 UTC"),
        ] {
            assert_eq!(utc_time(ms), want);
        }
    }

    #[test]
    fn truncate_table() {
        for (s, w, want) in [
            ("short", 10, "short"),
            ("exactly10!", 10, "exactly10!"),
            ("a longer error text", 8, "a longe…"),
            ("line\r\nbreak", 20, "line  break"),
            ("héllo wörld", 5, "héll…"),
            ("x", 1, "x"),
            ("xy", 0, ""),
        ] {
            assert_eq!(truncate(s, w), want, "{s:?} {w}");
        }
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string(), "x".to_string()],
            vec!["long name".to_string(), "1,000".to_string(), "".to_string()],
        ];
        let t = table(
            &["NAME", "N", "NOTE"],
            &[Align::Left, Align::Right, Align::Left],
            &rows,
        );
        let want = "NAME           N  NOTE\n\
                    a              1  x\n\
                    long name  1,000\n";
        assert_eq!(t, want);
    }

    #[test]
    fn fit_last_column_cuts_to_width() {
        let mut rows = vec![vec!["id1".to_string(), "x".repeat(100)]];
        fit_last_column(&["ID", "ERR"], &mut rows, 30, 10);
        assert_eq!(rows[0][1].chars().count(), 25);
        assert!(rows[0][1].ends_with('…'));
        // Never below the minimum, however narrow the terminal.
        fit_last_column(&["ID", "ERR"], &mut rows, 3, 10);
        assert_eq!(rows[0][1].chars().count(), 10);
    }

    fn summary() -> pb::MessageSummary {
        pb::MessageSummary {
            id: "m1".into(),
            state: pb::MessageState::Queued as i32,
            detail: pb::StateFilter::StateScheduled as i32,
            lane: pb::Lane::Bulk as i32,
            envelope_from: "a@x.org".into(),
            envelope_to: vec!["b@y.org".into(), "c@y.org".into(), "d@z.org".into()],
            attempts: 3,
            last_error: "451 try later".into(),
            enqueued_unix_ms: 1_000_000 - 200_000,
            next_attempt_unix_ms: 1_000_000 + 240_000,
            size_bytes: 2048,
            message_id: "abc@x.org".into(),
            idempotency_key: "k1".into(),
            finished_unix_ms: 0,
        }
    }

    #[test]
    fn list_row_columns() {
        let now = 1_000_000;
        let row = list_row(&summary(), now);
        assert_eq!(
            row,
            [
                "m1",
                "scheduled",
                "bulk",
                "3m 20s",
                "3",
                "in 4m",
                "b@y.org +2",
                "451 try later"
            ]
        );
        let mut dead = summary();
        dead.state = pb::MessageState::Dead as i32;
        dead.envelope_to.truncate(1);
        let row = list_row(&dead, now);
        assert_eq!(
            (row[1].as_str(), row[5].as_str(), row[6].as_str()),
            ("dead", "-", "b@y.org")
        );
        let mut ready = summary();
        ready.detail = pb::StateFilter::StateReady as i32;
        ready.next_attempt_unix_ms = now - 1;
        let row = list_row(&ready, now);
        assert_eq!((row[1].as_str(), row[5].as_str()), ("ready", "now"));
        let mut flying = summary();
        flying.state = pb::MessageState::InFlight as i32;
        assert_eq!(list_row(&flying, now)[1], "in-flight");
    }

    #[test]
    fn summary_json_uses_proto_names_and_lowercase_enums() {
        let v = summary_json(&summary());
        assert_eq!(v["state"], "queued");
        assert_eq!(v["detail"], "scheduled");
        assert_eq!(v["lane"], "bulk");
        assert_eq!(v["envelope_to"][2], "d@z.org");
        assert_eq!(v["attempts"], 3);
        assert_eq!(v["next_attempt_unix_ms"], 1_240_000);
        let mut m = summary();
        m.state = pb::MessageState::InFlight as i32;
        m.detail = 0;
        let v = summary_json(&m);
        assert_eq!(
            (v["state"].as_str(), v["detail"].as_str()),
            (Some("in_flight"), Some(""))
        );
    }

    #[test]
    fn show_text_aligns_keys_then_headers() {
        let r = pb::ShowMessageResponse {
            message: Some(summary()),
            headers: "From: a@x.org\r\nSubject: hi\r\n".into(),
        };
        let t = show_text(&r, 1_000_000);
        assert!(t.contains("id:              m1\n"), "{t}");
        assert!(t.contains("idempotency key: k1\n"), "{t}");
        assert!(
            t.contains("next attempt:    1970-01-01 00:20:40 UTC (in 4m)\n"),
            "{t}"
        );
        assert!(t.ends_with("headers:\nFrom: a@x.org\nSubject: hi\n"), "{t}");
        assert!(!t.contains("finished"));
        let v = show_json(&r);
        assert_eq!(v["message"]["id"], "m1");
        assert_eq!(v["headers"], "From: a@x.org\r\nSubject: hi\r\n");
    }

    #[test]
    fn describe_filter_table() {
        let f = |state: pb::StateFilter, lane: pb::Lane, domain: &str, min: u64, max: u64| {
            pb::MessageFilter {
                state: state as i32,
                lane: lane as i32,
                recipient_domain: domain.into(),
                min_age_seconds: min,
                max_age_seconds: max,
            }
        };
        use pb::{Lane as L, StateFilter as S};
        for (filter, want) in [
            (f(S::Unspecified, L::Unspecified, "", 0, 0), ""),
            (
                f(S::StateReady, L::Bulk, "example.org", 0, 0),
                "state=ready lane=bulk domain=example.org",
            ),
            (
                f(S::StateInFlight, L::Unspecified, "", 600, 7200),
                "state=in-flight min-age=10m max-age=2h",
            ),
            (
                f(S::Unspecified, L::Normal, "", 0, 90),
                "lane=normal max-age=90s",
            ),
        ] {
            assert_eq!(describe_filter(&filter), want);
            assert_eq!(filter_is_empty(&filter), want.is_empty());
        }
    }

    fn op(matched: u64, affected: u64, skipped: u64) -> pb::OperationResponse {
        pb::OperationResponse {
            matched,
            affected,
            skipped,
            sample_ids: vec!["a".into(), "b".into()],
            not_found: vec![],
        }
    }

    #[test]
    fn operation_texts() {
        let what = "matching state=ready lane=bulk";
        assert_eq!(
            dry_run_text(Op::Cancel, &op(1234, 0, 0), what, 0),
            "would cancel 1,234 queued messages matching state=ready lane=bulk; e.g. a b"
        );
        assert_eq!(
            dry_run_text(Op::Cancel, &op(1237, 0, 3), what, 0),
            "would cancel 1,234 queued messages matching state=ready lane=bulk \
             (3 more match but are in flight); e.g. a b"
        );
        assert_eq!(
            dry_run_text(Op::Requeue, &op(5000, 0, 0), "matching lane=bulk", 100),
            "would requeue 100 dead letters matching lane=bulk (--limit 100); e.g. a b"
        );
        assert_eq!(
            dry_run_text(Op::Retry, &op(0, 0, 0), what, 0),
            "nothing to retry: no scheduled messages matching state=ready lane=bulk"
        );
        assert_eq!(
            confirm_text(Op::Cancel, &op(1237, 0, 3), 0),
            "nothing changed; re-run with --yes to cancel these 1,234 messages"
        );
        assert_eq!(
            confirm_text(Op::Purge, &op(50, 0, 0), 20),
            "nothing changed; re-run with --yes to purge these 20 messages"
        );
        assert_eq!(
            result_text(Op::Cancel, &op(1237, 1234, 3)),
            "cancelled 1,234 (skipped 3 in flight)"
        );
        assert_eq!(result_text(Op::Requeue, &op(2, 2, 0)), "requeued 2");
        let mut r = op(1, 1, 0);
        assert_eq!(not_found_text(&r), None);
        r.not_found = vec!["x".into(), "y".into()];
        assert_eq!(
            not_found_text(&r).unwrap(),
            "warning: 2 not found (or not in a state this applies to): x y"
        );
        let v = op_json(Op::Purge, true, &r);
        assert_eq!(
            (v["operation"].as_str(), v["dry_run"].as_bool()),
            (Some("purge"), Some(true))
        );
        assert_eq!(v["not_found"][1], "y");
    }

    #[test]
    fn lanes_list_sorts_dedups_and_says_none() {
        let (t, n, b) = (
            pb::Lane::Transactional as i32,
            pb::Lane::Normal as i32,
            pb::Lane::Bulk as i32,
        );
        assert_eq!(lanes_list(&[]), "none");
        assert_eq!(lanes_list(&[b]), "bulk");
        assert_eq!(lanes_list(&[b, t, n, b]), "transactional, normal, bulk");
    }

    #[test]
    fn bucket_labels_table() {
        assert_eq!(bucket_labels(&[5, 10, 20, 0]), ["5", "10", "20", "20+"]);
        assert_eq!(bucket_labels(&[5, 1280, 0]), ["5", "1280", "1280+"]);
        assert_eq!(bucket_labels(&[0]), ["0+"]);
        assert!(bucket_labels(&[]).is_empty());
    }

    #[test]
    fn top_domains_table_has_total_first_and_right_aligned_numbers() {
        let r = pb::TopDomainsResponse {
            bucket_upper_minutes: vec![5, 10, 0],
            domains: vec![
                pb::DomainRow {
                    domain: "example.org".into(),
                    total: 1200,
                    buckets: vec![1000, 150, 50],
                },
                pb::DomainRow {
                    domain: "b.net".into(),
                    total: 3,
                    buckets: vec![3],
                },
            ],
            total: Some(pb::DomainRow {
                domain: String::new(),
                total: 1203,
                buckets: vec![1003, 150, 50],
            }),
            scanned: 1203,
        };
        let t = top_domains_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "DOMAIN       TOTAL      5   10  10+");
        assert_eq!(lines[1], "TOTAL        1,203  1,003  150   50");
        assert_eq!(lines[2], "example.org  1,200  1,000  150   50");
        assert_eq!(lines[3], "b.net            3      3    0    0");
        let v = top_domains_json(&r);
        assert_eq!(v["domains"][0]["buckets"][1], 150);
        assert_eq!(v["total"]["total"], 1203);
    }

    #[test]
    fn transfer_text_reports_counts() {
        let p = pb::TransferProgress {
            transferred: 12_000,
            duplicates: 5,
            remaining: 2,
            done: true,
        };
        assert_eq!(
            transfer_text(&p, "http://b:50051"),
            "transferred 12,000 to http://b:50051 (5 already there); 2 left here (in flight or refused)"
        );
    }

    #[test]
    fn state_and_lane_args_map_to_proto() {
        assert_eq!(StateArg::InFlight.to_pb(), pb::StateFilter::StateInFlight);
        assert_eq!(
            StateArg::from_str("in-flight", false),
            Ok(StateArg::InFlight)
        );
        assert_eq!(LaneArg::Bulk.to_pb(), pb::Lane::Bulk);
        assert_eq!(lane_name(0), "normal");
        assert_eq!(lane_name(pb::Lane::Transactional as i32), "transactional");
    }
}
