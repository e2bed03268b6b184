//! What the queue tells about itself: rates and the QueueStats view
//! (`stats`), the early-warning state (`congestion`), `/metrics` (`metrics`).

pub mod congestion;
pub mod metrics;
pub mod overview;
pub mod stats;
