//! Node drain: moves this node's queued messages to another node through
//! its `EnqueueBatch`, then removes them here.
//!
//! Invariants (why a crash at any point loses nothing and duplicates nothing):
//! - Delivery on this node is paused (durably) before the first message
//!   moves, and stays paused: a message is never both sent from here and
//!   handed to the other node.
//! - Each message goes with an idempotency key: its own, or
//!   `mailspool-transfer/<node id>/<message id>` (the node id is random per
//!   spool). A batch the other node accepted but that was not yet removed
//!   here (a crash in between) is sent again on the next run and answered
//!   as a duplicate, then removed.
//! - A message is removed here only after the other node acknowledged it
//!   (durable there), with a durable Cancel recorded as "transferred to ...".

use crate::intake::auth::{AuthChannel, Bearer};
use std::collections::HashSet;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use crate::grpc::api::{lane_to_proto, store_status, Api};
use crate::model::{now_ms, MessageId};
use crate::pb;
use crate::spool::{AdminOp, Index, Listed};

pub type ProgressStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TransferProgress, Status>> + Send>>;

/// Request bytes per EnqueueBatch at most (the other node's decode limit
/// is at least 32 MiB).
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Passes over the queue before giving up on messages that keep arriving
/// or stay in flight.
const MAX_PASSES: usize = 50;
/// How long to wait for in-flight leases to end.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(120);

type Client = pb::mail_queue_client::MailQueueClient<AuthChannel>;

/// Asks the other node to authorize an (empty, so invalid) batch: its auth
/// answers before its validation, so a refused token is found before
/// delivery here is paused.
async fn preflight(client: &Client, to: &str) -> Result<(), Status> {
    let probe = client
        .clone()
        .enqueue_batch(pb::EnqueueBatchRequest { requests: vec![] })
        .await;
    match probe {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::InvalidArgument => Ok(()),
        Err(s) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
            Err(Status::failed_precondition(format!(
                "to_token: {to} refused it ({}); give a token of a client there with the `enqueue` role and no sender restriction; nothing was moved",
                s.message()
            )))
        }
        Err(s) => Err(Status::unavailable(format!(
            "to: {to} answered {:?} ({}); nothing was moved",
            s.code(),
            s.message()
        ))),
    }
}

/// Validates the request, connects, pauses delivery, and starts moving.
pub async fn start(api: Api, req: pb::TransferRequest) -> Result<Response<ProgressStream>, Status> {
    api.check_open()?;
    let batch = match req.batch_size {
        0 => 100,
        n @ 1..=1000 => n as usize,
        n => {
            return Err(Status::invalid_argument(format!(
                "batch_size: {n}; at most 1000"
            )))
        }
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(req.to.clone()).map_err(|e| {
        Status::invalid_argument(format!(
            "to: `{}` is not a gRPC address like http://host:50051 ({e})",
            req.to
        ))
    })?;
    if req.to.starts_with("https://") {
        let ca = Some(req.to_ca_pem.as_bytes().to_vec()).filter(|p| !p.is_empty());
        endpoint = endpoint
            .tls_config(crate::tls::client_config(ca))
            .map_err(|e| Status::invalid_argument(format!("to: TLS settings: {e}")))?;
    }
    let token = Some(req.to_token.as_str()).filter(|t| !t.is_empty());
    let bearer =
        Bearer::new(token).map_err(|e| Status::invalid_argument(format!("to_token: {e}")))?;
    let guard = api.transfer_lock.clone().try_lock_owned().map_err(|_| {
        Status::failed_precondition("a transfer is already running on this node; wait for it")
    })?;
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "to: cannot reach {} ({e}); nothing was moved",
            req.to
        ))
    })?;
    let client = Client::new(AuthChannel::new(channel, bearer))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    preflight(&client, &req.to).await?;
    let paused = api.store.admin_state().paused;
    api.store
        .admin(AdminOp::SetPaused(paused | 0b111))
        .await
        .map_err(store_status)?;
    tracing::warn!(to = %req.to, "TransferStarted: delivery on this node is paused");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let _guard = guard;
        let result = run(&api, client, &req.to, batch, &tx).await;
        match result {
            Ok(p) => {
                tracing::info!(
                    to = %req.to,
                    transferred = p.transferred,
                    duplicates = p.duplicates,
                    remaining = p.remaining,
                    "TransferFinished"
                );
                let _ = tx.send(Ok(p)).await;
            }
            Err(status) => {
                tracing::error!(to = %req.to, error = %status.message(), "TransferFailed");
                let _ = tx.send(Err(status)).await;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Moves everything it can; returns the final progress (done = true).
async fn run(
    api: &Api,
    mut client: Client,
    to: &str,
    batch: usize,
    tx: &mpsc::Sender<Result<pb::TransferProgress, Status>>,
) -> Result<pb::TransferProgress, Status> {
    let mut progress = pb::TransferProgress::default();
    let mut refused: HashSet<MessageId> = HashSet::new();
    let reason = format!("transferred to {to}");
    let started = Instant::now();
    for _ in 0..MAX_PASSES {
        let mut from = MessageId(0);
        loop {
            let store = api.store.clone();
            let page = tokio::task::spawn_blocking(move || {
                store.scan(Index::Queued, from, MessageId(u64::MAX), batch)
            })
            .await
            .map_err(|e| Status::internal(format!("scan task failed: {e}")))?;
            let mut ids = Vec::new();
            let mut requests = Vec::new();
            let mut bytes = 0;
            let mut stopped_early = false;
            for entry in page.entries {
                let Listed::Queued(id, r) = entry else {
                    continue;
                };
                if refused.contains(&id) || api.scheduler.is_leased(id) {
                    continue;
                }
                let Ok(data) = api.store.body(id, &r) else {
                    continue; // unreadable: quarantined when leased, never moved
                };
                bytes += data.len();
                let key = if r.idempotency_key.is_empty() {
                    format!("mailspool-transfer/{}/{id}", api.store.node_id())
                } else {
                    r.idempotency_key.clone()
                };
                requests.push(pb::EnqueueRequest {
                    email: None,
                    lane: lane_to_proto(r.lane) as i32,
                    idempotency_key: key,
                    not_before_unix_ms: if r.due_ms > now_ms() {
                        r.due_ms as i64
                    } else {
                        0
                    },
                    // Only the recipients still pending: the others were
                    // delivered (or bounced) here already.
                    raw: Some(pb::RawMessage {
                        data,
                        envelope_to: r
                            .pending()
                            .into_iter()
                            .map(|i| r.envelope_to[i].clone())
                            .collect(),
                        envelope_from: r.envelope_from,
                    }),
                    expires_at_unix_ms: r.expires_ms as i64,
                });
                ids.push(id);
                if bytes >= MAX_BATCH_BYTES {
                    stopped_early = true;
                    break;
                }
            }
            let next = if stopped_early {
                ids.last().copied()
            } else {
                page.last
            };
            if !requests.is_empty() {
                let results = client
                    .enqueue_batch(pb::EnqueueBatchRequest { requests })
                    .await
                    .map_err(|s| {
                        Status::unavailable(format!(
                            "the other node failed ({:?}: {}); {} moved so far; delivery here stays paused: run the transfer again",
                            s.code(),
                            s.message(),
                            progress.transferred + progress.duplicates
                        ))
                    })?
                    .into_inner()
                    .results;
                let mut moved = Vec::new();
                for (id, r) in ids.iter().zip(results) {
                    if r.code == 0 {
                        if r.duplicate {
                            progress.duplicates += 1;
                        } else {
                            progress.transferred += 1;
                        }
                        moved.push(*id);
                    } else {
                        tracing::warn!(%id, code = r.code, error = %r.message, "TransferRefused");
                        refused.insert(*id);
                    }
                }
                if !moved.is_empty() {
                    api.store
                        .admin(AdminOp::Cancel {
                            ids: moved,
                            reason: reason.clone(),
                        })
                        .await
                        .map_err(store_status)?;
                }
                progress.remaining = api.store.counters().queued_total();
                // A client that went away does not stop the transfer.
                let _ = tx.send(Ok(progress)).await;
            }
            match next {
                Some(last) if !page.exhausted || stopped_early => from = MessageId(last.0 + 1),
                _ => break,
            }
        }
        let queued = api.store.counters().queued_total();
        progress.remaining = queued;
        let in_flight = api.scheduler.in_flight();
        if queued <= refused.len() as u64 && in_flight == 0 {
            break;
        }
        if in_flight > 0 {
            if started.elapsed() > IN_FLIGHT_WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    progress.done = true;
    Ok(progress)
}
