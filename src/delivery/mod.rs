//! From the spool to the relays: the scheduler leases due messages lane by
//! lane (`lanes`, `scheduler`), workers send them (`worker`) through the
//! relays (`relay`: each message routed by `router`, each relay a `pool`
//! with its `breaker` and `throttle`, reached by `connect`, one mail
//! transaction per message, as many as its recipients need: `transaction`)
//! and turn each recipient's reply into an outcome (`outcome`: with
//! `retry`'s classification and backoff, `bounce`'s classes).

pub(crate) mod bounce;
pub(crate) mod breaker;
pub(crate) mod connect;
pub mod lanes;
pub(crate) mod outcome;
pub(crate) mod pool;
pub(crate) mod redact;
pub(crate) mod relay;
pub(crate) mod retry;
pub(crate) mod router;
pub mod scheduler;
pub(crate) mod throttle;
pub(crate) mod transaction;
pub(crate) mod worker;
