//! The gRPC layer: the `MailQueue` and `QueueAdmin` services (validate,
//! convert, delegate), the strict codec, and `Transfer` between nodes.
//! With `cli` and `harness`, the only place that knows `pb`.

pub mod admin_api;
pub mod api;
pub mod codec;
pub mod events;
pub mod overview;
pub mod recipients;
pub mod services;
pub mod suppressions;
pub mod transfer;
