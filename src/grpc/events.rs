//! `MailQueue.WatchEvents`: the event log over a server stream. A task per
//! call reads the log from disk after the caller's cursor and sends what
//! it reads into a small channel; a slow reader makes only its own task
//! wait (the committer and delivery never do), and catches up from disk.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use crate::grpc::api::{lane_to_proto, store_status, Api};
use crate::grpc::recipients::bounce_to_proto;
use crate::model::{Event, EventKind, MessageId};
use crate::pb;
use crate::spool::EventReadError;

pub type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Events read from disk at a time.
const PAGE: usize = 512;

pub fn kind_to_proto(k: EventKind) -> pb::EventType {
    match k {
        EventKind::Accepted => pb::EventType::EventAccepted,
        EventKind::Delivered => pb::EventType::EventDelivered,
        EventKind::Deferred => pb::EventType::EventDeferred,
        EventKind::Bounced => pb::EventType::EventBounced,
        EventKind::Suppressed => pb::EventType::EventSuppressed,
        EventKind::Expired => pb::EventType::EventExpired,
        EventKind::Cancelled => pb::EventType::EventCancelled,
        EventKind::DeadLettered => pb::EventType::EventDeadLettered,
        EventKind::Requeued => pb::EventType::EventRequeued,
        EventKind::Quarantined => pb::EventType::EventQuarantined,
    }
}

fn kind_from_proto(v: i32) -> Option<EventKind> {
    let t = pb::EventType::try_from(v).ok()?;
    EventKind::ALL.into_iter().find(|&k| kind_to_proto(k) == t)
}

/// An event as the wire has it; `client` is its client's name.
pub fn event_to_proto(seq: u64, e: Event, client: String) -> pb::Event {
    let mut p = pb::Event {
        sequence: seq,
        time_unix_ms: e.time_ms as i64,
        id: MessageId(e.id).to_string(),
        message_id: e.message_id,
        client,
        recipient: e.recipient,
        attempt: e.attempt,
        smtp_reply: e.reply,
        next_attempt_unix_ms: e.next_attempt_ms as i64,
        idempotency_key: e.idempotency_key,
        relay: e.relay,
        time_in_queue_ms: e.time_ms.saturating_sub(MessageId(e.id).enqueued_ms()) as i64,
        ..Default::default()
    };
    p.set_type(kind_to_proto(e.kind));
    p.set_lane(lane_to_proto(e.lane));
    p.set_bounce_class(
        e.class
            .map_or(pb::BounceClass::Unspecified, bounce_to_proto),
    );
    p
}

/// Validates the request and starts the reader. `only`: the client a
/// caller without `admin` is limited to (None: sees everything).
pub fn watch(
    api: Api,
    req: pb::WatchEventsRequest,
    only: Option<String>,
) -> Result<Response<EventStream>, Status> {
    let mut types = Vec::with_capacity(req.types.len());
    for (i, &t) in req.types.iter().enumerate() {
        match kind_from_proto(t) {
            Some(k) => types.push(k),
            None => {
                return Err(Status::invalid_argument(format!(
                    "types[{i}]: unknown event type {t}"
                )))
            }
        }
    }
    // Checked before the stream starts, so the caller gets the status.
    match api.store.events_after(req.after_sequence, 1) {
        Err(EventReadError::TooOld(t)) => {
            return Err(Status::out_of_range(format!(
                "after_sequence: {} is older than the event log keeps; the oldest event still kept is {} (read from {} or from 0, the oldest)",
                req.after_sequence,
                t.oldest,
                t.oldest - 1
            )))
        }
        Err(EventReadError::Store(e)) => return Err(store_status(e)),
        Ok(_) => {}
    }
    let (tx, rx) = mpsc::channel(PAGE);
    tokio::spawn(async move {
        let mut cursor = req.after_sequence;
        loop {
            // Per page: a client's first message may come while it reads.
            let names = api.store.clients().names;
            let only_slot = only.as_deref().map(|n| api.store.client_slot(n));
            let store = api.store.clone();
            let read = tokio::task::spawn_blocking(move || store.events_after(cursor, PAGE)).await;
            let page = match read {
                Ok(Ok(p)) => p,
                Ok(Err(EventReadError::TooOld(t))) => {
                    let _ = tx
                        .send(Err(Status::out_of_range(format!(
                            "the reader fell behind the event log's retention; the oldest event still kept is {}",
                            t.oldest
                        ))))
                        .await;
                    return;
                }
                Ok(Err(EventReadError::Store(e))) => {
                    let _ = tx.send(Err(store_status(e))).await;
                    return;
                }
                Err(_) => return,
            };
            let full = page.len() == PAGE;
            for (seq, e) in page {
                cursor = seq;
                if !types.is_empty() && !types.contains(&e.kind) {
                    continue;
                }
                if let Some(slot) = only_slot {
                    if slot != Some(e.client) {
                        continue;
                    }
                }
                let client = names.get(&e.client).cloned().unwrap_or_default();
                if tx.send(Ok(event_to_proto(seq, e, client))).await.is_err() {
                    return; // the caller went away
                }
            }
            if full {
                continue;
            }
            if !req.follow {
                return;
            }
            tokio::select! {
                _ = api.store.wait_events_after(cursor) => {}
                _ = tx.closed() => return,
                _ = shutting_down(&api.closing) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "the server is shutting down; reconnect with after_sequence = {cursor}"
                        ))))
                        .await;
                    return;
                }
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Resolves once the server starts shutting down, so a following stream
/// ends (with the cursor to resume from) instead of holding the shutdown.
async fn shutting_down(closing: &std::sync::atomic::AtomicBool) {
    while !closing.load(std::sync::atomic::Ordering::Acquire) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
