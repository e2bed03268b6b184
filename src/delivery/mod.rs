//! From the spool to the relay: the scheduler leases due messages lane by
//! lane (`lanes`, `scheduler`), workers send them (`worker`) through a relay
//! (`relay`) and turn the reply into an outcome (`retry`).

pub mod lanes;
pub(crate) mod relay;
pub(crate) mod retry;
pub mod scheduler;
pub(crate) mod worker;
