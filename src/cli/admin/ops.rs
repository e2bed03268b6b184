//! Bulk operations: dry runs, confirmations, results.

use super::*;

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
