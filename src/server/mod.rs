//! Wires the modules into a running server and takes it down cleanly.
//!
//! Start: open the spool (every message not acknowledged is due again, as
//! leases were in memory), bind, serve gRPC, start the delivery workers and
//! the lease reaper. Shutdown: refuse new calls (UNAVAILABLE), stop the gRPC
//! server, let workers finish their leases within the grace period (what is
//! not finished stays due for the next start), flush, return.

pub(crate) mod conn_limit;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::delivery::relay::Relay;
use crate::delivery::retry::RetryPolicy;
use crate::delivery::scheduler::Scheduler;
use crate::grpc::api::Api;
use crate::intake::admission::SpoolLimits;
use crate::intake::auth::Authenticator;
use crate::intake::gate::Intake;
use crate::intake::message::Limits;
use crate::observe::stats::Rates;
use crate::spool::{Store, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the spool in {dir}: {source}")]
    Spool {
        dir: String,
        source: crate::spool::StoreError,
    },
    #[error(
        "cannot listen on {addr}: {source}; is another mailspool running? choose another --listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(crate::tls::TlsError),
    #[error("cannot create the data directory {dir} with mode 0700: {source}; check --data-dir and its parent's owner")]
    DataDir { dir: String, source: std::io::Error },
    #[error("cannot prepare the outbox: {0}")]
    Outbox(std::io::Error),
    #[error("cannot set up the webhooks: {0}")]
    Webhooks(String),
    #[error("cannot listen for /metrics on {addr}: {source}; choose another --metrics-listen (or `off`)")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Server;

/// A running server.
pub struct ServerHandle {
    /// The address gRPC listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Where `/metrics` is served, unless `metrics_listen = "off"`.
    pub metrics_addr: Option<SocketAddr>,
    pub relay: String,
    /// The TLS configuration, when gRPC is served over TLS.
    tls: Option<crate::tls::ReloadableTls>,
    authenticator: Arc<Authenticator>,
    /// Watched for a failed fsync, after which the process must restart.
    store: Store,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Opens the spool, binds, and starts everything. Returns once Enqueue
    /// is being served.
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        secure_data_dir(&config.data_dir).map_err(|source| StartError::DataDir {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
        let spool_dir = config.data_dir.join("spool");
        let metrics = Arc::new(crate::observe::metrics::Metrics::default());
        let classes = crate::delivery::bounce::BounceClass::ALL.map(|c| c.name());
        metrics.declare_failure_classes(&classes);
        let options = StoreOptions {
            observer: metrics.clone(),
            cache_capacity_bytes: config.cache_capacity_bytes,
            segment_bytes: config.segment_bytes,
            idempotency_window: Duration::from_secs(config.idempotency_window_secs),
            delivered_retention: Duration::from_secs(config.delivered_retention_secs),
            suppression: config.suppression(),
            event_retention: config.event_retention(),
        };
        let dir = spool_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, options))
            .await
            .expect("spool open task")
            .map_err(|source| StartError::Spool {
                dir: spool_dir.display().to_string(),
                source,
            })?;
        let relay = Arc::new(Relay::from_config(&config).map_err(StartError::Outbox)?);
        let webhooks = crate::webhooks::Webhooks::new(&config.webhooks, store.node_id())
            .map_err(StartError::Webhooks)?;
        relay.set_paused(&store.paused_relays());
        let tls = match config.tls_files() {
            Some(files) => Some(crate::tls::ReloadableTls::load(files).map_err(StartError::Tls)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics_addr() {
            Some(a) => Some(
                crate::observe::metrics::bind(a)
                    .await
                    .map_err(|source| StartError::Metrics { addr: a, source })?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

        let store_handle = store.clone();
        let scheduler = Arc::new(Scheduler::new(
            store.clone(),
            config.lease_batch,
            config.lease_timeout(),
        ));
        let rates = Arc::new(Rates::default());
        let outcomes = Arc::new(crate::observe::outcomes::Outcomes::default());
        let closing = Arc::new(AtomicBool::new(false));
        let auth = Arc::new(Authenticator::new(config.auth_enabled(), &config.clients));
        let disk_free = Arc::new(AtomicU64::new(disk_free_bytes(&config.data_dir)));
        let admitted_since_sample = Arc::new(AtomicU64::new(0));
        let api = Api {
            store: store.clone(),
            scheduler: scheduler.clone(),
            rates: rates.clone(),
            limits: Limits {
                max_recipients: config.max_recipients,
                max_message_bytes: config.max_message_bytes,
                message_id_domain: config.message_id_domain.clone().unwrap_or_default(),
            },
            max_batch_items: config.max_batch_items,
            closing: closing.clone(),
            intake: Arc::new(Intake {
                store: store.clone(),
                spool_limits: SpoolLimits {
                    max_spool_bytes: config.max_spool_bytes,
                    min_free_bytes: config.min_free_bytes,
                },
                disk_free: disk_free.clone(),
                admitted_since_sample: admitted_since_sample.clone(),
                refused: Arc::new(AtomicU64::new(0)),
            }),
            relay: relay.clone(),
            metrics: metrics.clone(),
            congestion: Default::default(),
            history: Default::default(),
            thresholds: config.thresholds(),
            console_session: Duration::from_secs(config.console_session_secs.max(1)),
            transfer_lock: Default::default(),
            auth: auth.clone(),
            lane_expiry_ms: crate::model::Lane::ALL
                .map(|l| config.lane_expiry(l).map_or(0, |d| d.as_millis() as u64)),
            outcomes: outcomes.clone(),
            webhooks: webhooks.clone(),
        };
        // A request may hold a whole batch; single messages above
        // max_message_bytes still decode and get a precise INVALID_ARGUMENT.
        let max_request = (config.max_message_bytes + (1 << 20)).max(32 << 20);

        let (stop_tx, stop_rx) = watch::channel(false);
        let policy = RetryPolicy {
            base: Duration::from_millis(config.retry_base_ms),
            cap: Duration::from_millis(config.retry_cap_ms),
            max_attempts: config.max_attempts,
            max_age: Duration::from_secs(config.max_age_secs),
        };
        let mut workers = Vec::new();
        let shared = Arc::new(crate::delivery::worker::Workers {
            scheduler: scheduler.clone(),
            relay: relay.clone(),
            store: store.clone(),
            policy,
            rates: rates.clone(),
            metrics: metrics.clone(),
            outcomes: outcomes.clone(),
        });
        for _ in 0..config.effective_workers() {
            workers.push(tokio::spawn(crate::delivery::worker::run_worker(
                shared.clone(),
                stop_rx.clone(),
            )));
        }
        // Free space is sampled, not asked per request.
        {
            let (dir, mut stop) = (config.data_dir.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {
                            admitted_since_sample.store(0, Ordering::Relaxed);
                            disk_free.store(disk_free_bytes(&dir), Ordering::Relaxed);
                        }
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        let webhook_tasks = webhooks.start(&store, &stop_rx);
        let reaper = {
            let s = scheduler.clone();
            let rx = stop_rx.clone();
            tokio::spawn(async move { s.reap(rx).await })
        };

        if let Some(listener) = metrics_listener {
            let tls = tls
                .clone()
                .filter(|_| config.metrics_over_tls())
                .map(|t| (t, Duration::from_millis(config.grpc_handshake_timeout_ms)));
            let console = crate::console::router(api.clone(), tls.is_some());
            let api = api.clone();
            let scrape = Arc::new(move || {
                api.metrics.refresh(&api.overview());
                api.metrics.render()
            });
            tokio::spawn(crate::observe::metrics::serve(
                listener,
                tls,
                scrape,
                console,
                stop_rx.clone(),
            ));
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        crate::grpc::services::set_serving(&health, true).await;
        // Each second: the congestion state (logged on change) and readiness.
        {
            let (api, health, mut stop) = (api.clone(), health.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut ready = true;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                    api.observe_congestion();
                    let accepting = api.accepting_transactional();
                    if accepting != ready {
                        ready = accepting;
                        crate::grpc::services::set_serving(&health, ready).await;
                        tracing::warn!(serving = ready, "HealthChanged");
                    }
                }
            });
        }
        let mut grpc_stop = stop_rx.clone();
        let closing_health = (health.clone(), stop_rx.clone());
        let router = crate::grpc::services::router(
            limits(tonic::transport::Server::builder(), &config),
            api,
            auth.clone(),
            max_request,
            health_service,
        );
        let shutdown = async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        };
        let (max_conns, handshake) = (
            config.grpc_max_connections,
            Duration::from_millis(config.grpc_handshake_timeout_ms),
        );
        let grpc = match &tls {
            Some(tls) => {
                let incoming = tls.incoming_with_timeout(listener, handshake);
                let incoming = crate::server::conn_limit::limit(incoming, max_conns, handshake);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
            None => {
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(TCP_KEEPALIVE));
                let incoming = crate::server::conn_limit::limit(incoming, max_conns, handshake);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
        };

        let grace = Duration::from_millis(config.shutdown_grace_ms);
        let mut stopped = stop_rx.clone();
        let task = tokio::spawn(async move {
            let _ = stopped.wait_for(|s| *s).await;
            closing.store(true, Ordering::Release);
            let (health, _) = closing_health;
            crate::grpc::services::set_serving(&health, false).await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            // Open streams (a health Watch, a Transfer) must not hold the
            // shutdown: they get the grace period, then are cut.
            let mut grpc = grpc;
            match tokio::time::timeout(grace, &mut grpc).await {
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server error"),
                Ok(_) => {}
                Err(_) => grpc.abort(),
            }
            let aborts: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
            let all = async {
                for w in workers {
                    let _ = w.await;
                }
            };
            if tokio::time::timeout(grace, all).await.is_err() {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "deliveries still running at the end of the grace period; their messages stay queued"
                );
                // Their leases end with the process: the messages are due
                // again at the next start.
                for a in aborts {
                    a.abort();
                }
            }
            let _ = reaper.await;
            // Each endpoint saves its cursor as it stops.
            for t in webhook_tasks {
                let _ = tokio::time::timeout(grace, t).await;
            }
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
            tracing::info!("ShutdownComplete");
        });
        tracing::info!(
            %addr,
            relay = %relay.describe(),
            grpc_tls = tls.is_some(),
            auth = auth.enabled(),
            clients = config.clients.len(),
            "ServerStarted"
        );
        Ok(ServerHandle {
            addr,
            metrics_addr,
            tls,
            authenticator: auth.clone(),
            store: store_handle,
            relay: relay.describe(),
            stop: stop_tx,
            task,
        })
    }
}

/// Creates the data directory readable by its owner only (mail is
/// personal data), and tightens an existing one that is not.
pub fn secure_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Durable: a power cut soon after the first start must not undo the
    // mkdir, and with it everything acknowledged so far.
    crate::spool::fsutil::create_dir_durable(dir, 0o700)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(dir = %dir.display(), old_mode = format!("{mode:o}"), "DataDirPermissionsTightened: now 0700");
    }
    Ok(())
}

/// Bytes available to unprivileged writers on `dir`'s filesystem
/// (u64::MAX if it cannot be read).
pub fn disk_free_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return u64::MAX;
    };
    // SAFETY: statvfs writes into the zeroed struct we own.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) == 0 {
            (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
        } else {
            u64::MAX
        }
    }
}

/// Dead peers are noticed by TCP keepalive and HTTP/2 pings.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The per-connection limits, set deliberately: a slow or abusive client
/// holds a bounded number of streams, of requests in progress, of header
/// bytes, and no request runs forever.
fn limits(b: tonic::transport::Server, config: &Config) -> tonic::transport::Server {
    b.max_concurrent_streams(config.grpc_max_concurrent_streams)
        .concurrency_limit_per_connection(config.grpc_max_concurrent_streams as usize)
        .http2_max_header_list_size(16 * 1024)
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(config.grpc_stream_window_bytes))
        .initial_connection_window_size(Some(config.grpc_connection_window_bytes))
        .max_frame_size(Some(config.grpc_max_frame_bytes))
        .timeout(Duration::from_millis(config.grpc_request_timeout_ms))
}

impl ServerHandle {
    /// Replaces the `[[clients]]` with those of `config` (SIGHUP); other
    /// settings need a restart. Returns how many clients there are now.
    pub fn reload_clients(&self, config: &Config) -> Result<usize, String> {
        self.authenticator
            .reload(config.auth_enabled(), &config.clients)
    }

    /// Whether callers must authenticate.
    pub fn auth_enabled(&self) -> bool {
        self.authenticator.enabled()
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Re-reads the TLS certificate and key (SIGHUP). New connections use
    /// them; open connections and the queue carry on.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::TlsError> {
        match &self.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Resolves when the spool has failed (an fsync error): the server
    /// refuses every write from then on and should be shut down and the
    /// process exit non-zero, so that its supervisor restarts it from disk.
    pub async fn spool_failed(&self) -> String {
        self.store.failed().await
    }

    /// Graceful shutdown; returns when the spool is flushed and closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
