//! The flags' vocabulary: durations, states, lanes.

use super::*;

pub use crate::model::parse_duration;

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
        pb::MessageState::PartiallyDelivered => "partially delivered",
        pb::MessageState::Expired => "expired",
        pb::MessageState::Dead => "dead",
        pb::MessageState::Quarantined => "quarantined",
        pb::MessageState::Cancelled => "cancelled",
        pb::MessageState::Unspecified => "unknown",
    }
}

/// An enum's proto name, lowercased and without its prefix
/// (`STATE_READY` → `ready`, `IN_FLIGHT` → `in_flight`).
pub(crate) fn proto_lower(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}
