//! mailspool: a durable email notification queue.
//!
//! The modules are listed in the order a message flows through them:
//!
//! 1. [`api`] receives gRPC `Enqueue`/`EnqueueBatch`, validates with
//!    [`message`] (which also builds the RFC 5322 bytes once) and maps errors
//!    to gRPC status codes in one place.
//! 2. [`store`] appends the body to a [`segments`] file and the index entry to
//!    sled through a single group-committing writer, and answers only after
//!    both are fsynced ([`codec`] encodes records).
//! 3. [`scheduler`] leases batches of due messages, lane by lane, to the
//!    delivery workers; leases live in memory and expire by themselves.
//! 4. [`delivery`] sends each leased message through a [`relay`] (an SMTP
//!    pool over lettre, or the local outbox) and turns the reply into an
//!    outcome with [`retry`]: ack, retry with backoff, or dead letter.
//! 5. [`stats`] keeps the rates that `QueueStats` reports; [`congestion`]
//!    turns them into OK/WARNING/CRITICAL; [`metrics`] exports them on
//!    `/metrics`.
//!
//! Operators act on the queue through [`admin_api`] (`QueueAdmin`), which
//! uses [`ops`] (filters, pages, bulk operations) and [`transfer`] (node
//! drain). [`server`] wires everything together, serves health and
//! reflection, and handles shutdown; [`config`] holds the settings; [`cli`],
//! [`admin_cli`] and [`watch`] are the client commands of the binary.

// Shared leaves: plain data and helpers every room may use.
pub mod config;
pub mod model;
pub mod tls;

// The rooms, in the order a message flows through them.
pub mod cli;
pub mod delivery;
pub mod grpc;
pub mod harness;
pub mod intake;
pub mod observe;
pub mod server;
pub mod spool;

/// Generated protobuf and gRPC types for `mailspool.v1`.
pub mod pb {
    tonic::include_proto!("mailspool.v1");

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("mailspool_descriptor");
}

pub use config::Config;
pub use server::{Server, ServerHandle};
