//! mailspool: a durable email notification queue.
//!
//! The rooms are listed in the order a message flows through them (imports
//! only point down; ARCHITECTURE.md, "Layering"):
//!
//! 1. [`grpc`] receives `Enqueue`/`EnqueueBatch`; [`intake`] decides who may
//!    send what, validates and builds the RFC 5322 bytes once, and whether
//!    the spool has room.
//! 2. [`spool`] appends the body to a segment file and the index entry to
//!    sled through one group-committing writer, and answers only once both
//!    are durable.
//! 3. [`delivery`] leases due messages lane by lane, sends them through the
//!    relay pool and turns each reply into ack, retry or dead letter.
//!    [`webhooks`] tells endpoints what became of each message, from the
//!    event log the spool writes with every change.
//! 4. [`observe`] keeps the rates, the congestion state and `/metrics`.
//! 5. [`server`] wires it all and stops it in order; [`cli`] is the binary's
//!    commands; [`harness`] holds `bench`, `torture`, `soak` and the parts
//!    the tests share.
//!
//! [`model`], [`config`] and [`tls`] are shared leaves.

// Shared leaves: plain data and helpers every room may use.
pub mod config;
pub mod model;
pub(crate) mod tls;

// The rooms, in the order a message flows through them.
pub mod cli;
pub mod delivery;
pub(crate) mod grpc;
// The web console: a client of the operations layer, like the CLI.
pub(crate) mod console;
pub mod harness;
pub mod intake;
pub(crate) mod observe;
pub mod server;
pub mod spool;
pub mod webhooks;

/// Generated protobuf and gRPC types for `mailspool.v1`.
pub mod pb {
    tonic::include_proto!("mailspool.v1");

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("mailspool_descriptor");
}

pub use config::Config;
pub use server::{Server, ServerHandle};
