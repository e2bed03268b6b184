//! `mailspool`: parses arguments and calls the library.

use std::process::ExitCode;

use mailspool::cli::{self, Command};
use mailspool::config::LogFormat;
use mailspool::{Config, Server};

/// mimalloc instead of glibc's malloc: the server allocates and frees per
/// request on one thread and another (BENCHMARKS.md, "Where each
/// microsecond goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::parse();
    if matches!(
        cli.command,
        Some(
            Command::Enqueue(_)
                | Command::Stats(_)
                | Command::Status(_)
                | Command::Queue(_)
                | Command::TopDomains(_)
                | Command::Relay(_)
                | Command::Suppression(_)
                | Command::Events(_)
                | Command::Token(_)
        )
    ) {
        // Printing commands end quietly when their reader goes away
        // (`mailspool queue list | head`) instead of panicking on EPIPE.
        // Not the server: it must never die of a closed pipe.
        // SAFETY: called before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailspool: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None => runtime.block_on(serve(cli.serve)),
        Some(Command::Serve(args)) => runtime.block_on(serve(*args)),
        Some(Command::Enqueue(a)) => runtime.block_on(cli::enqueue(*a)),
        Some(Command::Stats(a)) => runtime.block_on(cli::stats(a)),
        Some(Command::Status(a)) => runtime.block_on(cli::status(a)),
        Some(Command::Queue(a)) => runtime.block_on(mailspool::cli::queue::queue(a)),
        Some(Command::TopDomains(a)) => runtime.block_on(mailspool::cli::queue::top_domains(a)),
        Some(Command::Relay(a)) => runtime.block_on(cli::relay(a)),
        Some(Command::Suppression(a)) => runtime.block_on(cli::suppression(a)),
        Some(Command::Events(a)) => runtime.block_on(cli::events(a)),
        Some(Command::Compact(a)) => cli::compact(a),
        Some(Command::Token(a)) => cli::token(a),
        Some(Command::Soak(a)) => {
            let interval = a.interval_secs;
            runtime
                .block_on(mailspool::harness::soak::run(a))
                .map_err(|e| e as Box<dyn std::error::Error>)
                .and_then(|samples| {
                    mailspool::harness::soak::check(&samples, interval)
                        .map_err(|e| format!("soak failed: {e}").into())
                })
        }
        Some(Command::Torture(a)) => runtime
            .block_on(mailspool::harness::torture::run(a))
            .map_err(|e| e as Box<dyn std::error::Error>)
            .and_then(|r| {
                if r.ok() {
                    Ok(())
                } else {
                    Err(format!("torture failed: {r:?}").into())
                }
            }),
        Some(Command::Bench(a)) => runtime
            .block_on(mailspool::harness::bench::run(a))
            .map_err(|e| e as Box<dyn std::error::Error>),
        Some(Command::Capacity(a)) => runtime
            .block_on(mailspool::harness::capacity::run(a))
            .map_err(|e| e as Box<dyn std::error::Error>),
        Some(Command::Drill(a)) => runtime
            .block_on(mailspool::harness::drill::run(a))
            .map_err(|e| e as Box<dyn std::error::Error>)
            .and_then(|pass| {
                if pass {
                    Ok(())
                } else {
                    Err("the drill missed a target (see its verdict)".into())
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailspool: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(args: cli::ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = args.clone().into_config()?;
    init_logging(&config);
    let server = Server::start(config).await?;
    let metrics = server
        .metrics_addr
        .map(|a| format!("; metrics on http://{a}/metrics"))
        .unwrap_or_default();
    let security = match (server.tls_enabled(), server.auth_enabled()) {
        (true, true) => "over TLS, callers authenticated",
        (true, false) => "over TLS, NO AUTHENTICATION",
        (false, true) => "plaintext, callers authenticated",
        (false, false) => "plaintext, no authentication",
    };
    eprintln!(
        "mailspool listening on {} [{security}] (delivering to {}{metrics})",
        server.addr, server.relay
    );
    let failure = tokio::select! {
        () = shutdown_signal(&server, &args) => None,
        why = server.spool_failed() => Some(why),
    };
    if let Some(why) = failure {
        // No graceful stop: nothing written after a failed fsync can be
        // trusted, and sled's own threads may fail on the same disk. Exit
        // non-zero at once: the supervisor restarts the process, which reads
        // the spool from disk. In-flight deliveries are sent again then.
        eprintln!(
            "mailspool: stopped: the spool failed ({why}); every acknowledged message is on disk: \
             check the disk (dmesg, free space), then start mailspool again"
        );
        // A moment for the answers already on their way (UNAVAILABLE, with
        // the reason) to reach their callers.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        std::process::exit(3);
    }
    tracing::info!("ShutdownRequested");
    server.shutdown().await;
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C; SIGHUP meanwhile reloads the TLS
/// certificate and key, and the clients.
async fn shutdown_signal(server: &mailspool::ServerHandle, args: &cli::ServeArgs) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => reload(server, args),
        }
    }
}

/// SIGHUP: the TLS files and the `[[clients]]` of the configuration (read
/// again from the same file, environment and flags). A part that fails
/// keeps what was serving.
fn reload(server: &mailspool::ServerHandle, args: &cli::ServeArgs) {
    match server.reload_tls() {
        Ok(true) => tracing::info!("TlsReloaded: new connections use the new certificate"),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "TlsReloadFailed: still serving the previous certificate")
        }
    }
    let reloaded = args
        .clone()
        .into_config()
        .map_err(|e| e.to_string())
        .and_then(|config| server.reload_clients(&config));
    match reloaded {
        Ok(n) => tracing::info!(clients = n, "ClientsReloaded"),
        Err(e) => tracing::error!(error = %e, "ClientsReloadFailed: the previous clients stay"),
    }
}
