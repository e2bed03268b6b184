//! The binary's command line: `serve` (the default), client commands for
//! people (`enqueue`, `stats`, `status`) and operator commands (`queue ...`,
//! `top-domains`, `stats --watch`). This module owns the flags and the
//! calls; what the operator commands print is built by [`crate::cli::admin`]
//! and the live view by [`crate::cli::watch`].
//!
//! Files: this one the commands and the client connection (flags, token,
//! channel, errors); `serve_args.rs` the server's flags and how they
//! overlay the TOML file; `token.rs` `mailspool token`; `enqueue.rs`
//! `enqueue`; `commands.rs` `status`, `compact`; `show_stats.rs`
//! `mailspool stats`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cli::admin as ac;
use crate::cli::queue::{QueueArgs, TopDomainsArgs};
use crate::config::{Config, ConfigError, LogFormat, RelayTls};
use crate::intake::auth::{AuthChannel, Bearer};
use crate::pb;

pub(crate) mod admin;
mod commands;
mod enqueue;
mod events;
pub mod queue;
mod relay;
mod serve_args;
mod show_stats;
mod suppression;
mod token;
pub(crate) mod watch;

pub use commands::{compact, status, CompactArgs, StatsArgs, StatusArgs};
pub use enqueue::{enqueue, EnqueueArgs};
pub use events::{events, EventsArgs};
pub use relay::{relay, RelayArgs};
pub use serve_args::ServeArgs;
pub use suppression::{suppression, SuppressionArgs};

/// The command line, with each setting's default in its help (from
/// `Config::default()`), for the top level and `serve`.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    serve_args::with_defaults(Cli::command()).mut_subcommand("serve", serve_args::with_defaults)
}

/// Parses the process's arguments (exits with the usage on an error).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
pub use show_stats::stats;
pub use token::{token, TokenArgs, TokenCommand};

#[derive(Debug, Parser)]
#[command(
    name = "mailspool",
    version,
    about = "A durable email notification queue",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (also what `mailspool` with no subcommand does).
    Serve(Box<ServeArgs>),
    /// Enqueue one message and print its id.
    Enqueue(Box<EnqueueArgs>),
    /// Print QueueStats.
    Stats(StatsArgs),
    /// Print where one message is.
    Status(StatusArgs),
    /// Operate on the queue: list, show, retry, cancel, requeue, purge,
    /// pause, resume, transfer.
    Queue(QueueArgs),
    /// Pause or resume relays by name: `mailspool relay pause backup`.
    Relay(RelayArgs),
    /// The suppression list: `mailspool suppression list|add|remove`.
    Suppression(SuppressionArgs),
    /// The event log: `mailspool events --follow --type delivered,bounced`.
    Events(EventsArgs),
    /// Queued recipients by domain and age (like Postfix qshape).
    TopDomains(TopDomainsArgs),
    /// Create a client token: `mailspool token create --name svc --role enqueue`.
    Token(TokenArgs),
    /// The surge benchmark (see BENCHMARKS.md).
    Bench(crate::harness::bench::BenchArgs),
    /// Replay the incident on a sandbox (or a staging server): steady
    /// transactional mail, a bulk surge, the relay failing, recovery; how
    /// soon it warned, what users saw, loss, a verdict and a plot.
    Drill(crate::harness::drill::DrillArgs),
    /// The capacity exercise: from this node's measured figures and the
    /// surge you expect, what it absorbs, how long it drains, whether
    /// transactional mail keeps its target, how many nodes and relays.
    Capacity(crate::harness::capacity::CapacityArgs),
    /// Give back the disk space the index keeps after a drain (server stopped).
    Compact(CompactArgs),
    /// SIGKILL the server at random moments under load and a flapping relay;
    /// check that nothing acknowledged was lost.
    Torture(crate::harness::torture::TortureArgs),
    /// A bounded run under steady load and a flapping relay; RSS, open files
    /// and data-dir size must stay flat.
    Soak(crate::harness::soak::SoakArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The mailspool server (https:// for a server with TLS).
    #[arg(
        long,
        env = "MAILSPOOL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// File holding the bearer token (or set MAILSPOOL_TOKEN; never a flag
    /// value, which `ps` would show).
    #[arg(long, env = "MAILSPOOL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to verify an https:// server with [default:
    /// the public web roots]
    #[arg(long, env = "MAILSPOOL_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// mTLS: this client's certificate (PEM) ...
    #[arg(
        long,
        env = "MAILSPOOL_TLS_CLIENT_CERT_FILE",
        requires = "tls_client_key_file"
    )]
    pub tls_client_cert_file: Option<PathBuf>,
    /// ... and its private key (PEM).
    #[arg(
        long,
        env = "MAILSPOOL_TLS_CLIENT_KEY_FILE",
        requires = "tls_client_cert_file"
    )]
    pub tls_client_key_file: Option<PathBuf>,
}

impl ClientArgs {
    /// The bearer token: `--token-file`, else MAILSPOOL_TOKEN.
    pub fn token(&self) -> Result<Option<String>, Box<dyn std::error::Error>> {
        read_token(
            self.token_file.as_deref(),
            "--token-file",
            "MAILSPOOL_TOKEN",
        )
    }

    /// The endpoint, with TLS for https:// servers.
    pub fn endpoint(&self) -> Result<tonic::transport::Endpoint, Box<dyn std::error::Error>> {
        let server = &self.server;
        let endpoint = tonic::transport::Endpoint::from_shared(server.to_string())
            .map_err(|e| format!("bad --server `{server}`: {e}"))?;
        if !server.starts_with("https://") {
            return Ok(endpoint);
        }
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("cannot read {flag} {}: {e}", p.display()))
        };
        let ca = match &self.tls_ca_file {
            Some(ca) => Some(read("--tls-ca-file", ca)?),
            None => None,
        };
        let mut tls = crate::tls::client_config(ca);
        if let (Some(c), Some(k)) = (&self.tls_client_cert_file, &self.tls_client_key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read("--tls-client-cert-file", c)?,
                read("--tls-client-key-file", k)?,
            ));
        }
        Ok(endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings for {server}: {e}"))?)
    }
}

/// A token from `file` (named `flag` in errors), else from the environment
/// variable `env`; surrounding whitespace is dropped, empty is none.
pub(crate) fn read_token(
    file: Option<&std::path::Path>,
    flag: &str,
    env: &str,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?,
        None => std::env::var(env).unwrap_or_default(),
    };
    Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()))
}

pub(crate) type ClientResult = Result<(), Box<dyn std::error::Error>>;

pub(crate) async fn channel(a: &ClientArgs) -> Result<AuthChannel, Box<dyn std::error::Error>> {
    let bearer = Bearer::new(a.token()?.as_deref())?;
    let server = &a.server;
    let channel = a.endpoint()?.connect().await.map_err(|e| {
        format!("cannot reach mailspool at {server}: {e}; is `mailspool serve` running?")
    })?;
    Ok(AuthChannel::new(channel, bearer))
}

pub(crate) fn status_error(s: tonic::Status) -> Box<dyn std::error::Error> {
    match s.code() {
        tonic::Code::Unauthenticated => {
            return format!(
                "Unauthenticated: {} (give a token with --token-file or MAILSPOOL_TOKEN)",
                s.message()
            )
            .into()
        }
        tonic::Code::PermissionDenied => {
            return format!("PermissionDenied: {}", s.message()).into()
        }
        _ => {}
    }
    if s.code() == tonic::Code::Unimplemented {
        return format!(
            "Unimplemented: {} (the server does not have this operation yet: upgrade it)",
            s.message()
        )
        .into();
    }
    format!("{:?}: {}", s.code(), s.message()).into()
}

#[cfg(test)]
mod tests;
