//! From the spool to the relay: the scheduler leases due messages lane by
//! lane (`lanes`, `scheduler`), workers send them (`worker`) through a relay
//! (`relay`) and turn the reply into an outcome (`retry`).

pub mod lanes;
pub mod relay;
pub mod retry;
pub mod scheduler;
pub mod worker;
