//! What may enter the spool: who the caller is and what it may send
//! (`auth`), the message validated and built once (`message`), and whether
//! the spool has room (`admission`).

pub(crate) mod admission;
pub mod auth;
pub mod gate;
pub mod message;
