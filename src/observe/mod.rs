//! What the queue tells about itself: rates and the QueueStats view
//! (`stats`), the early-warning state (`congestion`), `/metrics` (`metrics`),
//! what became of recipients (`outcomes`).

pub mod congestion;
pub mod diagnose;
pub mod event_metrics;
pub mod history;
pub mod metrics;
pub mod outcomes;
pub mod overview;
pub mod recipient_metrics;
pub mod stats;
