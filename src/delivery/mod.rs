//! From the spool to the relay: the scheduler leases due messages lane by
//! lane (`lanes`, `scheduler`), workers send them (`worker`) through a relay
//! (`relay`, one mail transaction each: `transaction`) and turn the reply
//! into an outcome (`retry`).

pub(crate) mod connect;
pub mod lanes;
pub(crate) mod relay;
pub(crate) mod retry;
pub mod scheduler;
pub(crate) mod transaction;
pub(crate) mod worker;
