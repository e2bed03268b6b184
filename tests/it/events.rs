//! Delivery events: every change told once through the event log, read
//! back with WatchEvents (replay, a cursor, a type filter, follow, a cursor
//! the log no longer keeps, each client its own), and the CLI.

use std::time::Duration;

use mailspool::pb;
use mailspool::pb::mail_queue_client::MailQueueClient;
use tokio_stream::StreamExt;

use crate::mime::capture_with;
use crate::support::*;

fn to(subject: &str, rcpts: &[&str]) -> pb::EnqueueRequest {
    let mut r = request(subject);
    r.email.as_mut().unwrap().to = rcpts.iter().map(|a| a.to_string()).collect();
    r
}

/// Every retained event after `after` (no follow).
pub(crate) async fn replay(s: &TestServer, after: u64, types: &[pb::EventType]) -> Vec<pb::Event> {
    watch_all(&s.queue, after, types).await
}

/// Every retained event after `after` (no follow), from any server.
pub(crate) async fn watch_all(
    queue: &MailQueueClient<tonic::transport::Channel>,
    after: u64,
    types: &[pb::EventType],
) -> Vec<pb::Event> {
    let mut stream = queue
        .clone()
        .watch_events(pb::WatchEventsRequest {
            after_sequence: after,
            types: types.iter().map(|t| *t as i32).collect(),
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        out.push(e.unwrap());
    }
    out
}

/// (type, message id, recipient) of each event, in order.
fn told(events: &[pb::Event]) -> Vec<(pb::EventType, String, String)> {
    events
        .iter()
        .map(|e| (e.r#type(), e.id.clone(), e.recipient.clone()))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs Python's aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_told_once_and_watch_events_replays_filters_and_follows() {
    use pb::EventType::*;
    let relay = capture_with(&["--reject", "gone", "--defer-once", "grey"]).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), relay.relay())).await;
    let mut admin = s.admin.clone();
    admin
        .pause_delivery(pb::PauseDeliveryRequest { lanes: vec![] })
        .await
        .unwrap();
    let mut mixed = to(
        "mixed",
        &["ok@example.org", "gone@example.org", "grey@example.org"],
    );
    mixed.idempotency_key = "k-mixed".into();
    let a = s.enqueue(mixed).await.unwrap().id;
    let deadline = now_ms() + 300;
    let mut late = to("late", &["late@example.org"]);
    late.expires_at_unix_ms = deadline;
    let e = s.enqueue(late).await.unwrap().id;
    let c = s
        .enqueue(to("cancel me", &["c@example.org"]))
        .await
        .unwrap()
        .id;
    let d = s
        .enqueue(to("bounces", &["gone@example.net"]))
        .await
        .unwrap()
        .id;
    let op = admin
        .cancel(pb::CancelRequest {
            ids: vec![c.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.affected, 1);
    // The late message's deadline passes while delivery is paused.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            now_ms() > deadline + 50
        })
        .await
    );
    admin
        .resume_delivery(pb::ResumeDeliveryRequest { lanes: vec![] })
        .await
        .unwrap();
    s.wait_state(&a, pb::MessageState::PartiallyDelivered).await;
    s.wait_state(&e, pb::MessageState::Expired).await;
    s.wait_state(&d, pb::MessageState::Dead).await;
    // gone@example.org bounced: the next message's envelope leaves it out.
    let b = s
        .enqueue(to(
            "after the bounce",
            &["gone@example.org", "ok2@example.org"],
        ))
        .await
        .unwrap()
        .id;
    let delivered = s.wait_state(&b, pb::MessageState::Delivered).await;
    // The message keeps the relay's reply to its delivered recipient.
    let ok2 = delivered
        .recipients
        .iter()
        .find(|r| r.address == "ok2@example.org")
        .expect("ok2 is a recipient");
    assert_eq!(ok2.state(), pb::RecipientState::RecipientDelivered);
    assert_eq!(ok2.last_reply, "250 2.0.0 Ok: queued", "{delivered:?}");
    // The dead letter back in the queue: its only recipient is suppressed
    // now, so it is not sent and ends dead again.
    admin
        .requeue_dead(pb::RequeueDeadRequest {
            ids: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let settled = wait_until(Duration::from_secs(20), || async {
        told(&replay(&s, 0, &[]).await)
            .iter()
            .filter(|t| t.0 == EventDeadLettered)
            .count()
            == 2
    })
    .await;
    let all = replay(&s, 0, &[]).await;
    assert!(settled, "{:#?}", told(&all));

    let of = |id: &str| -> Vec<(pb::EventType, String)> {
        told(&all)
            .into_iter()
            .filter(|t| t.1 == id)
            .map(|t| (t.0, t.2))
            .collect()
    };
    let r = |s: &str| s.to_string();
    assert_eq!(
        of(&a),
        [
            (EventAccepted, r("")),
            (EventDelivered, r("ok@example.org")),
            (EventBounced, r("gone@example.org")),
            (EventDeferred, r("grey@example.org")),
            (EventDelivered, r("grey@example.org")),
        ]
    );
    assert_eq!(
        of(&e),
        [
            (EventAccepted, r("")),
            (EventExpired, r("late@example.org"))
        ]
    );
    assert_eq!(of(&c), [(EventAccepted, r("")), (EventCancelled, r(""))]);
    assert_eq!(
        of(&b),
        [
            (EventSuppressed, r("gone@example.org")),
            (EventAccepted, r("")),
            (EventDelivered, r("ok2@example.org")),
        ]
    );
    assert_eq!(
        of(&d),
        [
            (EventAccepted, r("")),
            (EventBounced, r("gone@example.net")),
            (EventDeadLettered, r("")),
            (EventRequeued, r("")),
            (EventSuppressed, r("gone@example.net")),
            (EventDeadLettered, r("")),
        ]
    );
    assert_eq!(all.len(), 18);
    // Sequences strictly increase; the fields say what happened.
    assert!(all.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let find = |t: pb::EventType, rcpt: &str| {
        all.iter()
            .find(|x| x.r#type() == t && x.recipient == rcpt)
            .unwrap()
    };
    assert_eq!(all[0].idempotency_key, "k-mixed");
    let bounced = find(EventBounced, "gone@example.org");
    assert_eq!(bounced.bounce_class(), pb::BounceClass::BounceBadMailbox);
    assert!(bounced.smtp_reply.starts_with("550"), "{bounced:?}");
    let deferred = find(EventDeferred, "grey@example.org");
    assert!(deferred.smtp_reply.starts_with("451"), "{deferred:?}");
    assert!(
        deferred.next_attempt_unix_ms >= deferred.time_unix_ms,
        "{deferred:?}"
    );
    assert_eq!(find(EventDelivered, "grey@example.org").attempt, 2);
    assert!(find(EventDelivered, "ok@example.org").time_in_queue_ms > 0);
    // A delivered event names the relay and quotes its reply to the
    // message: when the recipients' fates differed (ok@) and when one
    // reply spoke for them all (ok2@, alone in its message).
    for rcpt in ["ok@example.org", "grey@example.org", "ok2@example.org"] {
        let d = find(EventDelivered, rcpt);
        assert_eq!(d.smtp_reply, "250 2.0.0 Ok: queued", "{d:?}");
        assert_eq!(d.relay, "default", "{d:?}");
    }
    assert_eq!(bounced.relay, "default", "{bounced:?}");
    assert_eq!(deferred.relay, "default", "{deferred:?}");
    // Never sent: no relay.
    assert_eq!(find(EventExpired, "late@example.org").relay, "");
    assert_eq!(find(EventSuppressed, "gone@example.org").relay, "");

    // From the middle: exactly the rest.
    let mid = all[7].sequence;
    assert_eq!(replay(&s, mid, &[]).await, all[8..].to_vec());
    // By type.
    let filtered = replay(&s, 0, &[EventDelivered, EventBounced]).await;
    let want: Vec<_> = all
        .iter()
        .filter(|e| matches!(e.r#type(), EventDelivered | EventBounced))
        .cloned()
        .collect();
    assert_eq!((filtered.len(), filtered), (5, want));
    // An unknown type is INVALID_ARGUMENT naming it.
    let err = s
        .queue
        .clone()
        .watch_events(pb::WatchEventsRequest {
            types: vec![99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("types[0]"), "{err:?}");

    // Follow: new events arrive as they commit.
    let last = all.last().unwrap().sequence;
    let mut follow = s
        .queue
        .clone()
        .watch_events(pb::WatchEventsRequest {
            after_sequence: last,
            types: vec![],
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let f = s
        .enqueue(to("followed", &["f@example.org"]))
        .await
        .unwrap()
        .id;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(20), follow.next())
            .await
            .expect("the followed events arrive")
            .unwrap()
            .unwrap();
        seen.push((e.sequence, e.r#type(), e.id));
    }
    assert_eq!(
        seen,
        [
            (last + 1, EventAccepted, f.clone()),
            (last + 2, EventDelivered, f.clone())
        ]
    );

    // The CLI: one line per event, or JSON, with --after and --type.
    let url = format!("http://{}", s.handle.as_ref().unwrap().addr);
    let after = last.to_string();
    let run = run_cli(
        &url,
        &["events", "--after", &after, "--type", "delivered", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert_eq!(lines[0]["type"], "delivered");
    assert_eq!(lines[0]["id"], f.as_str());
    assert_eq!(lines[0]["recipient"], "f@example.org");
    let run = run_cli(&url, &["events", "--type", "bounced"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    assert!(
        run.stdout.contains("gone@example.org") && run.stdout.contains("bad_mailbox"),
        "{}",
        run.stdout
    );
    let run = run_cli(&url, &["events", "--type", "nope"]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("`nope` is not an event type"),
        "{}",
        run.stderr
    );
    s.shutdown().await;
}

/// A cursor older than the log keeps is OUT_OF_RANGE naming the oldest
/// kept; the log's extent shows in QueueStats; the log never refuses mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_log_no_longer_keeps_is_out_of_range() {
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    cfg.event_retention_bytes = 1_000;
    let s = TestServer::start(cfg).await;
    for i in 0..30 {
        s.enqueue(request(&format!("m{i}"))).await.unwrap();
    }
    s.wait_delivered(30).await;
    let trimmed = wait_until(Duration::from_secs(20), || async {
        let st = s.stats().await;
        st.event_log_bytes <= 1_000 && st.event_log_last_sequence == 60
    })
    .await;
    let st = s.stats().await;
    assert!(trimmed, "{st:?}");
    let oldest = st.event_log_first_sequence;
    assert!(oldest > 2 && st.event_log_events == 61 - oldest, "{st:?}");
    let err = s
        .queue
        .clone()
        .watch_events(pb::WatchEventsRequest {
            after_sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert!(
        err.message()
            .contains(&format!("the oldest event still kept is {oldest}")),
        "{err:?}"
    );
    // From 0 (the oldest kept) or just before the oldest: what is kept.
    let kept = replay(&s, 0, &[]).await;
    assert_eq!(kept.first().map(|e| e.sequence), Some(oldest));
    assert_eq!(kept.len() as u64, 61 - oldest);
    assert_eq!(replay(&s, oldest - 1, &[]).await, kept);
    s.shutdown().await;
}

/// A client without `admin` sees only its own messages' events; an admin
/// sees everyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_only_its_own_events_unless_admin() {
    use mailspool::intake::auth::{token_hash, AuthChannel, Bearer, ClientConfig, Role};
    const SVC: &str = "mst_svc-token-0123456789";
    const OTHER: &str = "mst_other-token-0123456789";
    const OPS: &str = "mst_ops-token-0123456789";
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    cfg.clients = vec![
        ClientConfig::with_token("svc", token_hash(SVC), &[Role::Enqueue]),
        ClientConfig::with_token("other", token_hash(OTHER), &[Role::Enqueue]),
        ClientConfig::with_token("ops", token_hash(OPS), &[Role::Enqueue, Role::Admin]),
    ];
    cfg.validate().unwrap();
    let handle = mailspool::Server::start(cfg).await.unwrap();
    let url = format!("http://{}", handle.addr);
    let queue = |token: &'static str| {
        let url = url.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            pb::mail_queue_client::MailQueueClient::new(AuthChannel::new(
                channel,
                Bearer::new(Some(token)).unwrap(),
            ))
        }
    };
    let (mut svc, mut other, mut ops) = (queue(SVC).await, queue(OTHER).await, queue(OPS).await);
    let mine = svc.enqueue(request("svc's")).await.unwrap().into_inner().id;
    let theirs = other
        .enqueue(request("other's"))
        .await
        .unwrap()
        .into_inner()
        .id;
    let accepted = vec![pb::EventType::EventAccepted as i32];
    let read = |c: &mut pb::mail_queue_client::MailQueueClient<AuthChannel>| {
        let mut c = c.clone();
        let types = accepted.clone();
        async move {
            let mut s = c
                .watch_events(pb::WatchEventsRequest {
                    types,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while let Some(e) = s.next().await {
                let e = e.unwrap();
                out.push((e.id, e.client));
            }
            out
        }
    };
    // An Enqueue's events are visible with the index's fsync that follows
    // its answer (within the log's 50 ms sync delay).
    let both = wait_until(Duration::from_secs(5), || {
        let mut ops = ops.clone();
        async move { read(&mut ops).await.len() == 2 }
    })
    .await;
    assert!(both, "{:?}", read(&mut ops).await);
    assert_eq!(read(&mut svc).await, [(mine.clone(), "svc".to_string())]);
    assert_eq!(
        read(&mut other).await,
        [(theirs.clone(), "other".to_string())]
    );
    assert_eq!(
        read(&mut ops).await,
        [(mine, "svc".to_string()), (theirs, "other".to_string())]
    );
    // Without a token: UNAUTHENTICATED, as for every call.
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = pb::mail_queue_client::MailQueueClient::new(channel)
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    handle.shutdown().await;
}
