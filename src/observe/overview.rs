//! The queue's state at one moment in the core's terms: what QueueStats
//! answers (converted to protobuf by the gRPC layer) and what `/metrics`
//! exports (`Metrics::refresh`), so the two never disagree.

use super::congestion::Level;
use super::stats::QueueStats;
use crate::model::Lane;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    pub stats: QueueStats,
    pub max_spool_bytes: u64,
    pub disk_free_bytes: u64,
    pub refused_total: u64,
    pub cancelled_total: u64,
    /// "ok", "unreachable", "throttled", "tls failed" or "auth failed".
    pub relay_state: &'static str,
    /// What is behind relay_state ("" when ok).
    pub relay_reason: String,
    pub relay_consecutive_failures: u32,
    pub relay_backoff_remaining_ms: u64,
    pub congestion: Level,
    /// The cause behind it (`diagnose::Cause::name`), named first in
    /// `congestion_reason`, and its runbook's address ("" when OK).
    pub congestion_cause: &'static str,
    pub congestion_runbook: String,
    pub congestion_reason: String,
    pub congestion_since_ms: u64,
    pub paused_lanes: Vec<Lane>,
    pub clients: Vec<ClientFigures>,
    pub relays: Vec<RelayFigures>,
    /// Lanes that no relay which is up and not paused carries.
    pub lanes_without_relay: Vec<Lane>,
    /// Per lane (`Lane::index`): time to inbox p50 and p99 over the last
    /// minute, in seconds (0 when nothing was delivered).
    pub time_to_inbox: [(f64, f64); 3],
    /// What became of recipients (`outcomes`).
    pub outcomes: crate::observe::outcomes::OutcomeView,
    pub suppression_list_size: u64,
    pub event_log: crate::spool::EventLogFigures,
    /// Each webhook endpoint, in configuration order.
    pub webhooks: Vec<WebhookFigures>,
}

/// One webhook endpoint's figures (QueueStats `webhooks`, `/metrics` label
/// `webhook`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookFigures {
    pub name: String,
    /// ok, retrying (its last request failed) or failing (no success for
    /// its `failing_after_secs`).
    pub state: &'static str,
    /// Events after its cursor, and the age of the oldest it has not been
    /// given (0 when it is caught up).
    pub lag_events: u64,
    pub lag_seconds: f64,
    /// The last event it acknowledged.
    pub cursor: u64,
    pub last_success_ms: u64,
    pub consecutive_failures: u64,
    pub sent_total: u64,
    pub failed_total: u64,
    /// Events the log dropped (retention) before it could take them.
    pub skipped_total: u64,
    pub last_error: String,
}

/// One relay's figures: its state and why, its connections, rates and
/// counts (QueueStats `relays`, `/metrics` label `relay`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayFigures {
    pub name: String,
    /// `smtps://host:port (tls verify, helo …)`.
    pub describe: String,
    /// ok, throttled, unreachable, auth failed, tls failed or paused.
    pub state: &'static str,
    pub reason: String,
    pub consecutive_failures: u32,
    pub backoff_remaining_ms: u64,
    pub connections: u64,
    pub max_connections: u64,
    /// The configured ceiling (0 = none).
    pub rate_per_second: u32,
    /// The rate now (0 = unlimited): below the ceiling after throttling.
    pub effective_rate: f64,
    pub rate_lowered: bool,
    pub sent: u64,
    pub deferred: u64,
    pub failed: u64,
    pub last_reply: String,
    pub priority: u32,
    pub weight: u32,
}

/// One client's figures: what the spool holds and counted for it, what its
/// limits refused, and the limits themselves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientFigures {
    pub name: String,
    pub queued: u64,
    pub queued_bytes: u64,
    pub enqueued_total: u64,
    pub delivered_total: u64,
    pub dead_total: u64,
    pub refused_rate_total: u64,
    pub refused_quota_total: u64,
    pub refused_policy_total: u64,
    pub rate_per_second: u32,
    pub max_queued_messages: u64,
    pub max_queued_bytes: u64,
}
