//! mailspool's integration tests: one binary, the real gRPC server on
//! 127.0.0.1:0, real SMTP over TCP.

mod support;

mod api;
mod cli;
mod console;
mod corruption;
mod delivery;
mod dkim;
mod drill;
mod durability;
mod events;
mod failover;
mod faults;
mod layering;
mod limits;
mod mime;
mod ops;
mod power;
mod recipients;
mod relays;
mod restart;
mod runbooks;
mod security;
mod smarthost;
mod smtp_sink;
mod surge;
mod transfer;
mod webhooks;
