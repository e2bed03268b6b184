//! Operations through the real server: listing with filters and cursors,
//! retry now, cancel, pause/resume (persisted), dead-letter requeue and
//! purge, qshape, the congestion state, /metrics, health and reflection.

use std::time::Duration;

use mailspool::pb;
use tonic::Code;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

fn to(mut r: pb::EnqueueRequest, address: &str) -> pb::EnqueueRequest {
    r.email.as_mut().unwrap().to = vec![address.to_string()];
    r
}

fn filter(state: pb::StateFilter, lane: pb::Lane, domain: &str) -> Option<pb::MessageFilter> {
    Some(pb::MessageFilter {
        state: state as i32,
        lane: lane as i32,
        recipient_domain: domain.into(),
        ..Default::default()
    })
}

async fn list_all(s: &TestServer, f: Option<pb::MessageFilter>, page: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = s
            .admin
            .clone()
            .list_messages(pb::ListMessagesRequest {
                filter: f.clone(),
                page_size: page,
                cursor: cursor.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.messages.len() <= page as usize, "page over its size");
        ids.extend(r.messages.into_iter().map(|m| m.id));
        if r.next_cursor.is_empty() {
            return ids;
        }
        cursor = r.next_cursor;
    }
}

async fn pause(s: &TestServer, lanes: &[pb::Lane]) -> Vec<i32> {
    s.admin
        .clone()
        .pause_delivery(pb::PauseDeliveryRequest {
            lanes: lanes.iter().map(|l| *l as i32).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .paused_lanes
}

async fn resume(s: &TestServer, lanes: &[pb::Lane]) -> Vec<i32> {
    s.admin
        .clone()
        .resume_delivery(pb::ResumeDeliveryRequest {
            lanes: lanes.iter().map(|l| *l as i32).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .paused_lanes
}

async fn wait_stats(s: &TestServer, what: &str, ok: impl Fn(&pb::QueueStatsResponse) -> bool) {
    let done = wait_until(Duration::from_secs(30), || async { ok(&s.stats().await) }).await;
    assert!(done, "{what}; stats {:?}", s.stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_retry_cancel_pause_and_resume_through_the_server() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), Some(peer.url()))).await;
    let all = [pb::Lane::Transactional, pb::Lane::Normal, pb::Lane::Bulk];
    assert_eq!(pause(&s, &[]).await.len(), 3, "no lanes given: all paused");
    // Enqueue keeps accepting while delivery is paused.
    let later = mailspool::model::now_ms() as i64 + 3_600_000;
    let mut bulk = Vec::new();
    for i in 0..6 {
        let r = with_lane(
            to(request(&format!("b{i}")), "a@one.example"),
            pb::Lane::Bulk,
        );
        bulk.push(s.enqueue(r).await.unwrap().id);
    }
    let mut normal = Vec::new();
    for i in 0..4 {
        normal.push(
            s.enqueue(to(request(&format!("n{i}")), "b@Two.Example"))
                .await
                .unwrap()
                .id,
        );
    }
    let mut scheduled = Vec::new();
    for i in 0..2 {
        let r = pb::EnqueueRequest {
            not_before_unix_ms: later,
            ..with_lane(
                to(request(&format!("t{i}")), "c@one.example"),
                pb::Lane::Transactional,
            )
        };
        scheduled.push(s.enqueue(r).await.unwrap().id);
    }
    let stats = s.stats().await;
    assert_eq!((stats.queued, stats.paused_lanes.len()), (12, 3));

    // Paging: every message exactly once, oldest first, whatever the page size.
    let mut everything: Vec<String> = [bulk.clone(), normal.clone(), scheduled.clone()].concat();
    everything.sort();
    for page in [1, 5, 100] {
        assert_eq!(
            list_all(&s, None, page).await,
            everything,
            "page size {page}"
        );
    }
    use pb::StateFilter as S;
    let count = |f| list_all(&s, f, 100);
    assert_eq!(
        count(filter(S::Unspecified, pb::Lane::Bulk, "")).await,
        bulk
    );
    assert_eq!(
        count(filter(S::Unspecified, pb::Lane::Unspecified, "two.example")).await,
        normal
    );
    assert_eq!(
        count(filter(S::StateScheduled, pb::Lane::Unspecified, "")).await,
        scheduled
    );
    assert_eq!(
        count(filter(S::StateReady, pb::Lane::Unspecified, ""))
            .await
            .len(),
        10
    );
    let young = Some(pb::MessageFilter {
        min_age_seconds: 3600,
        ..Default::default()
    });
    assert!(count(young).await.is_empty(), "nothing is an hour old");

    // Bad requests name the field and change nothing.
    let admin = s.admin.clone();
    for (status, field) in [
        (
            admin
                .clone()
                .list_messages(pb::ListMessagesRequest {
                    page_size: 5000,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "page_size",
        ),
        (
            admin
                .clone()
                .list_messages(pb::ListMessagesRequest {
                    cursor: "nope".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "cursor",
        ),
        (
            admin
                .clone()
                .cancel(pb::CancelRequest {
                    ids: vec!["zz".into()],
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "ids[0]",
        ),
        (
            admin
                .clone()
                .cancel(pb::CancelRequest {
                    filter: filter(S::StateDead, pb::Lane::Unspecified, ""),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "filter.state",
        ),
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }

    // Show: envelope and headers.
    let shown = admin
        .clone()
        .show_message(pb::ShowMessageRequest {
            id: normal[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let m = shown.message.unwrap();
    assert_eq!(m.envelope_to, vec!["b@Two.Example".to_string()]);
    assert!(shown.headers.contains("Subject: n0"), "{}", shown.headers);
    assert!(!shown.headers.contains("\r\n\r\n"), "headers only");
    // And each recipient, as GetMessage tells it.
    assert_eq!(shown.recipients.len(), 1);
    assert_eq!(shown.recipients[0].address, "b@Two.Example");
    assert_eq!(
        shown.recipients[0].state(),
        pb::RecipientState::RecipientPending
    );

    // RetryNow: a dry run changes nothing, then the scheduled become ready.
    let dry = admin
        .clone()
        .retry_now(pb::RetryNowRequest {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.matched, dry.affected, dry.sample_ids.len()), (2, 0, 2));
    assert_eq!(s.stats().await.scheduled, 2);
    let done = admin
        .clone()
        .retry_now(pb::RetryNowRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.affected, 2);
    assert!(count(filter(S::StateScheduled, pb::Lane::Unspecified, ""))
        .await
        .is_empty());

    // Cancel by filter: dry run, then for real; GetMessage says CANCELLED.
    let cancel = |dry_run| pb::CancelRequest {
        filter: filter(S::Unspecified, pb::Lane::Unspecified, "two.example"),
        dry_run,
        ..Default::default()
    };
    let dry = admin
        .clone()
        .cancel(cancel(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.matched, dry.affected), (4, 0));
    assert_eq!(s.stats().await.queued, 12);
    let done = admin
        .clone()
        .cancel(cancel(false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.matched, done.affected), (4, 4));
    let stats = s.stats().await;
    assert_eq!((stats.queued, stats.cancelled_total), (8, 4));
    let gone = s.get(&normal[1]).await.unwrap();
    assert_eq!(gone.state(), pb::MessageState::Cancelled);
    assert!(gone.last_error.contains("cancelled"), "{gone:?}");
    let again = admin
        .clone()
        .cancel(pb::CancelRequest {
            ids: vec![normal[1].clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.affected, again.not_found.clone()),
        (0, vec![normal[1].clone()])
    );

    // Paused survives a restart.
    let s = s.restart().await;
    assert_eq!(s.stats().await.paused_lanes.len(), 3);
    assert_eq!(peer.received_count(), 0);
    // Resume bulk only: the six bulk go, the (higher-priority) transactional stay.
    assert_eq!(resume(&s, &[pb::Lane::Bulk]).await.len(), 2);
    s.wait_delivered(6).await;
    for id in &scheduled {
        let m = s.get(id).await.unwrap();
        assert_eq!(
            m.state(),
            pb::MessageState::Queued,
            "transactional is paused"
        );
    }
    assert!(resume(&s, &all).await.is_empty());
    s.wait_delivered(8).await;
    assert_eq!(peer.received_count(), 8);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_requeued_and_purged() {
    let peer = SmtpPeer::start(Mode::Reject).await;
    let dir = tempdir();
    let mut c = config(dir.path(), Some(peer.url()));
    // The peer's 550 5.1.1 would put the addresses on the suppression list
    // (and their requeued mail would be skipped): not what this tests.
    c.suppress_classes = Vec::new();
    let s = TestServer::start(c).await;
    let admin = s.admin.clone();
    for i in 0..3 {
        s.enqueue(to(request(&format!("d{i}")), "x@three.example"))
            .await
            .unwrap();
    }
    for i in 0..2 {
        s.enqueue(to(request(&format!("p{i}")), "y@four.example"))
            .await
            .unwrap();
    }
    wait_stats(&s, "5 dead letters", |st| st.dead == 5).await;
    let dead = list_all(
        &s,
        filter(pb::StateFilter::StateDead, pb::Lane::Unspecified, ""),
        2,
    )
    .await;
    assert_eq!(dead.len(), 5);

    let requeue = |dry_run| pb::RequeueDeadRequest {
        filter: filter(
            pb::StateFilter::Unspecified,
            pb::Lane::Unspecified,
            "three.example",
        ),
        dry_run,
        ..Default::default()
    };
    let dry = admin
        .clone()
        .requeue_dead(requeue(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.matched, dry.affected), (3, 0));
    peer.set_mode(Mode::Accept);
    let before = s.stats().await.spool_bytes;
    let done = admin
        .clone()
        .requeue_dead(requeue(false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.affected, 3);
    s.wait_delivered(3).await;
    let st = s.stats().await;
    assert_eq!((st.dead, st.queued), (2, 0));
    assert!(st.spool_bytes < before, "{} !< {before}", st.spool_bytes);
    let requeued = s.get(&dead[0]).await.unwrap();
    assert_eq!(requeued.state(), pb::MessageState::Delivered);
    assert_eq!(requeued.attempts, 1, "attempts start again after a requeue");

    // Purge: nothing is an hour dead; everything is at least 0 s dead.
    let purge = |older_than_seconds, dry_run| pb::PurgeDeadRequest {
        older_than_seconds,
        dry_run,
        limit: 0,
    };
    let none = admin
        .clone()
        .purge_dead(purge(3600, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((none.matched, none.affected), (0, 0));
    let dry = admin
        .clone()
        .purge_dead(purge(0, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.matched, dry.affected), (2, 0));
    let done = admin
        .clone()
        .purge_dead(purge(0, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.affected, 2);
    let st = s.stats().await;
    assert_eq!((st.dead, st.dead_total), (0, 5));
    assert_eq!(s.get(&dead[4]).await.unwrap_err().code(), Code::NotFound);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_domains_shapes_the_queue_like_qshape() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    pause(&s, &[]).await;
    for i in 0..3 {
        s.enqueue(to(request(&format!("a{i}")), "u@a.example"))
            .await
            .unwrap();
    }
    let mut two = to(request("ab"), "v@a.example");
    two.email.as_mut().unwrap().cc = vec!["w@B.example".into()];
    s.enqueue(two).await.unwrap();
    let r = s
        .admin
        .clone()
        .top_domains(pb::TopDomainsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(String, u64, u64)> = r
        .domains
        .iter()
        .map(|d| (d.domain.clone(), d.total, d.buckets[0]))
        .collect();
    assert_eq!(
        rows,
        vec![("a.example".into(), 4, 4), ("b.example".into(), 1, 1)]
    );
    let total = r.total.unwrap();
    assert_eq!((total.total, r.scanned), (5, 4));
    assert_eq!(r.bucket_upper_minutes.first(), Some(&5));
    assert_eq!(
        r.bucket_upper_minutes.last(),
        Some(&0),
        "last bucket is open"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn congestion_turns_on_at_thresholds_and_metrics_show_it() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.congestion_warn_age_secs = 1;
    cfg.congestion_critical_age_secs = 2;
    let s = TestServer::start(cfg).await;
    let metrics = s.handle.as_ref().unwrap().metrics_addr.unwrap();
    assert_eq!(s.stats().await.congestion(), pb::Congestion::Ok);
    pause(&s, &[pb::Lane::Normal]).await;
    s.enqueue(request("stuck")).await.unwrap();
    wait_stats(&s, "WARNING", |st| {
        st.congestion() == pb::Congestion::Warning
    })
    .await;
    let st = s.stats().await;
    assert!(st.congestion_reason.contains("oldest message"), "{st:?}");
    // The cause it can see comes first, with the runbook for it.
    assert_eq!(st.congestion_cause, "paused", "{st:?}");
    assert!(
        st.congestion_reason
            .starts_with("delivery paused by an operator: lanes normal; "),
        "{st:?}"
    );
    assert!(
        st.congestion_runbook
            .ends_with("/docs/runbooks/congestion-paused.md"),
        "{st:?}"
    );
    wait_stats(&s, "CRITICAL", |st| {
        st.congestion() == pb::Congestion::Critical
    })
    .await;
    let since = s.stats().await.congestion_since_unix_ms;
    assert!(since > 0);

    let m = samples(&http_get(metrics, "/metrics").await);
    assert_eq!(sample(&m, "mailspool_congestion_state"), 2.0);
    assert_eq!(sample(&m, "mailspool_queue_messages{state=\"ready\"}"), 1.0);
    assert_eq!(
        sample(&m, "mailspool_queue_lane_messages{lane=\"normal\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "mailspool_delivery_paused{lane=\"normal\"}"),
        1.0
    );
    assert_eq!(sample(&m, "mailspool_delivery_paused{lane=\"bulk\"}"), 0.0);
    assert_eq!(sample(&m, "mailspool_enqueued_messages_total"), 1.0);
    assert!(sample(&m, "mailspool_oldest_message_age_seconds") >= 2.0);
    assert_eq!(sample(&m, "mailspool_enqueue_duration_seconds_count"), 1.0);
    assert!(sample(&m, "mailspool_group_commit_messages_count") >= 1.0);
    assert!(sample(&m, "mailspool_fsync_duration_seconds_count") >= 1.0);
    assert_eq!(sample(&m, "mailspool_relay_state{state=\"ok\"}"), 1.0);

    resume(&s, &[]).await;
    s.wait_delivered(1).await;
    wait_stats(&s, "back to OK", |st| st.congestion() == pb::Congestion::Ok).await;
    let m = samples(&http_get(metrics, "/metrics").await);
    assert_eq!(sample(&m, "mailspool_congestion_state"), 0.0);
    assert_eq!(sample(&m, "mailspool_delivered_messages_total"), 1.0);
    assert_eq!(
        sample(&m, "mailspool_smtp_replies_total{class=\"2xx\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "mailspool_delivery_latency_seconds_count{lane=\"normal\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &m,
            "mailspool_delivery_latency_seconds_sum{lane=\"normal\"}"
        ) >= 2.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_spool_and_reflection_lists_every_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    cfg.max_spool_bytes = 2_500;
    let s = TestServer::start(cfg).await;
    pause(&s, &[]).await;
    let channel = tonic::transport::Channel::from_shared(format!(
        "http://{}",
        s.handle.as_ref().unwrap().addr
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |svc: &str| {
        let mut h = health.clone();
        let service = svc.to_string();
        async move {
            h.check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    assert_eq!(status("").await, ServingStatus::Serving);
    assert_eq!(
        status("mailspool.v1.MailQueue").await,
        ServingStatus::Serving
    );
    // Two messages fill this tiny spool: readiness turns NOT_SERVING.
    let a = s.enqueue(request("one")).await.unwrap().id;
    s.enqueue(with_lane(request("two"), pb::Lane::Transactional))
        .await
        .unwrap();
    let down = wait_until(Duration::from_secs(10), || async {
        status("mailspool.v1.MailQueue").await == ServingStatus::NotServing
    })
    .await;
    assert!(
        down,
        "not serving when the spool cannot accept: {:?}",
        s.stats().await
    );
    assert_eq!(
        status("").await,
        ServingStatus::Serving,
        "liveness stays up"
    );
    s.admin
        .clone()
        .cancel(pb::CancelRequest {
            ids: vec![a],
            ..Default::default()
        })
        .await
        .unwrap();
    let up = wait_until(Duration::from_secs(10), || async {
        status("mailspool.v1.MailQueue").await == ServingStatus::Serving
    })
    .await;
    assert!(up, "serving again once there is room");
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Reflection, v1 and v1alpha: every service, and the methods' descriptors.
    let want = [
        "grpc.health.v1.Health",
        "mailspool.v1.MailQueue",
        "mailspool.v1.QueueAdmin",
    ];
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut c = ServerReflectionClient::new(channel.clone());
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "mailspool.v1.QueueAdmin".into(),
                )),
            },
        ];
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for w in want {
            assert!(names.iter().any(|n| n == w), "{w} not in {names:?}");
        }
        let Some(MessageResponse::FileDescriptorResponse(fd)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a file descriptor");
        };
        let bytes: Vec<u8> = fd.file_descriptor_proto.concat();
        for method in [
            "ListMessages",
            "RetryNow",
            "PauseDelivery",
            "Transfer",
            "TopDomains",
        ] {
            assert!(
                bytes.windows(method.len()).any(|w| w == method.as_bytes()),
                "{method} not described"
            );
        }
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut c = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for w in want {
            assert!(
                names.iter().any(|n| n == w),
                "v1alpha: {w} not in {names:?}"
            );
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_when_shutdown_begins() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempdir();
    let mut s = TestServer::start(config(dir.path(), None)).await;
    let url = format!("http://{}", s.handle.as_ref().unwrap().addr);
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watches = Vec::new();
    for service in ["", "mailspool.v1.MailQueue"] {
        let mut stream = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
        watches.push((service, stream));
    }
    let handle = s.handle.take().unwrap();
    let stopping = tokio::spawn(handle.shutdown());
    for (service, mut stream) in watches {
        let next = stream.message().await.unwrap().unwrap();
        assert_eq!(next.status(), ServingStatus::NotServing, "{service:?}");
    }
    // The open watch streams do not hold the shutdown beyond the grace period.
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown finishes with watch streams open")
        .unwrap();
}
