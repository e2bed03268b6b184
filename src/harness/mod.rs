//! Product tools behind `mailspool bench|torture|soak`, and the parts the
//! tests share: the scripted SMTP peer, server child processes, LazyFs.
//! Imported by the CLI and the tests only, never by the server.

pub mod bench;
pub mod capacity;
pub mod child;
pub mod drill;
/// A FUSE filesystem that loses what was not fsynced (tests and `torture --power-cuts`).
pub mod lazyfs;
pub mod peer;
pub mod soak;
pub mod torture;
