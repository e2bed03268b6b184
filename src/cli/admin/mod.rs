//! Pure helpers of the operator commands (`queue ...`, `top-domains`,
//! `stats --watch`): parsing durations, the state and lane vocabulary of the
//! flags, human numbers, durations and times, aligned tables, and the text
//! and JSON each command prints. No I/O here: the commands in [`crate::cli`]
//! make the calls and print what these functions return.
//!
//! Files by job: `flags.rs` (durations, states, lanes), `human.rs` (numbers,
//! sizes, times), `table.rs`, `messages.rs` (lists, the show page, filters),
//! `ops.rs` (bulk operations), `domains.rs` (top-domains, transfer, clients),
//! `relays.rs` (the relays in stats), `webhooks.rs` (the webhook endpoints
//! in stats).

use clap::ValueEnum;
use serde_json::{json, Value};

use crate::pb;

mod domains;
pub(crate) mod flags;
pub(crate) mod human;
mod messages;
mod ops;
mod relays;
mod table;
#[cfg(test)]
mod tests;
mod webhooks;

pub use domains::*;
pub use flags::*;
pub use human::*;
pub use messages::*;
pub use ops::*;
pub use relays::*;
pub use table::*;
pub use webhooks::*;
