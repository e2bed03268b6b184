//! Security through the real server: tokens and roles, the sender and lane
//! policy, per-client rate limits and quotas, fair share under a flood,
//! TLS with reload, mTLS, refusing an open non-loopback listener, and logs
//! without secrets.

use std::time::{Duration, Instant};

use mailspool::intake::auth::{token_hash, ClientConfig, Role};
use mailspool::intake::auth::{AuthChannel, Bearer};
use mailspool::pb;
use mailspool::pb::mail_queue_client::MailQueueClient;
use mailspool::pb::queue_admin_client::QueueAdminClient;
use mailspool::{Config, Server, ServerHandle};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

const SVC: &str = "mst_svc-token-0123456789";
const OPS: &str = "mst_ops-token-0123456789";
const OTHER: &str = "mst_other-token-0123456789";

fn client(name: &str, token: &str, roles: &[Role]) -> ClientConfig {
    ClientConfig::with_token(name, token_hash(token), roles)
}

/// Clients of a running server that send `token` (none: no credentials).
async fn clients(
    url: String,
    token: Option<&str>,
) -> (MailQueueClient<AuthChannel>, QueueAdminClient<AuthChannel>) {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let channel = AuthChannel::new(channel, Bearer::new(token).unwrap());
    (
        MailQueueClient::new(channel.clone()),
        QueueAdminClient::new(channel),
    )
}

fn url(h: &ServerHandle) -> String {
    format!("http://{}", h.addr)
}

fn from(mut r: pb::EnqueueRequest, address: &str) -> pb::EnqueueRequest {
    r.email.as_mut().unwrap().from = address.into();
    r
}

async fn stats(admin: &QueueAdminClient<AuthChannel>) -> pb::QueueStatsResponse {
    admin
        .clone()
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn client_stats<'a>(s: &'a pb::QueueStatsResponse, name: &str) -> &'a pb::ClientStats {
    s.clients
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no client {name} in {:?}", s.clients))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_the_sender_and_lane_policy() {
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    let mut svc = client("svc", SVC, &[Role::Enqueue]);
    svc.allowed_senders = vec!["alerts@example.com".into()];
    svc.lanes = vec!["normal".into(), "bulk".into()];
    cfg.clients = vec![
        svc,
        client("ops", OPS, &[Role::Admin]),
        client("other", OTHER, &[Role::Enqueue]),
    ];
    let s = TestServer::start(cfg).await;
    let h = s.handle.as_ref().unwrap();
    assert!(
        h.auth_enabled(),
        "clients configured: auth is on even on loopback"
    );

    // No credentials, a wrong token: UNAUTHENTICATED, for both services.
    for token in [None, Some("mst_not-a-token")] {
        let (mut q, mut a) = clients(url(h), token).await;
        let e = q.enqueue(request("anon")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(!e.message().contains("mst_"), "no token in {e:?}");
        let e = q
            .get_message(pb::GetMessageRequest { id: "0".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = a.queue_stats(pb::QueueStatsRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    // The wrong role: PERMISSION_DENIED, naming the role.
    let (mut q, mut a_svc) = clients(url(h), Some(SVC)).await;
    let (mut q_ops, a) = clients(url(h), Some(OPS)).await;
    // Kept queued, for the visibility check below.
    a.clone()
        .pause_delivery(pb::PauseDeliveryRequest { lanes: vec![] })
        .await
        .unwrap();
    let e = a_svc
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("admin"), "{e:?}");
    // The suppression list holds every client's recipients: admin only.
    let e = a_svc
        .list_suppressions(pb::ListSuppressionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = q_ops.enqueue(request("ops")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("enqueue"), "{e:?}");

    // The policy: its own sender, its lanes, no raw messages.
    let ok = q
        .enqueue(request("mine"))
        .await
        .expect("svc may send as alerts@example.com")
        .into_inner();
    let e = q
        .enqueue(from(request("spoof"), "ceo@example.com"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("email.from:"), "{e:?}");
    // The envelope sender (where bounces go) is held to the same list.
    let mut bounce = request("bounce elsewhere");
    bounce.email.as_mut().unwrap().envelope_from = "bounces@evil.example".into();
    let e = q.enqueue(bounce).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("email.envelope_from:"), "{e:?}");
    let e = q
        .enqueue(with_lane(request("vip"), pb::Lane::Transactional))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("lane:"), "{e:?}");
    let raw = pb::EnqueueRequest {
        raw: Some(pb::RawMessage {
            data: b"From: ceo@example.com\r\nSubject: x\r\n\r\nhi\r\n".to_vec(),
            envelope_from: "alerts@example.com".into(),
            envelope_to: vec!["user@example.org".into()],
        }),
        ..Default::default()
    };
    let e = q.enqueue(raw).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("raw:"), "{e:?}");
    // In a batch, per item; the good one is stored.
    let r = q
        .enqueue_batch(pb::EnqueueBatchRequest {
            requests: vec![request("b0"), from(request("b1"), "x@evil.example")],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(r[0].code, 0, "{r:?}");
    assert_eq!(r[1].code, Code::PermissionDenied as i32, "{r:?}");
    assert!(r[1].message.starts_with("requests[1].email.from:"), "{r:?}");

    // Nothing refused was written; the stats show the client.
    let stats = stats(&a).await;
    assert_eq!(stats.enqueued_total, 2, "{stats:?}");
    let c = client_stats(&stats, "svc");
    assert_eq!((c.enqueued_total, c.refused_policy_total), (2, 5), "{c:?}");
    // A queued message (its errors would quote recipients) is visible to
    // its own client only: to another it does not exist.
    let got = q
        .get_message(pb::GetMessageRequest { id: ok.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state(), pb::MessageState::Queued);
    let (mut q_other, _) = clients(url(h), Some(OTHER)).await;
    let e = q_other
        .get_message(pb::GetMessageRequest { id: ok.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Health answers without credentials (probes).
    let channel = tonic::transport::Endpoint::from_shared(url(h))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mailspool.v1.MailQueue".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_quotas_refuse_only_the_client_over_them() {
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    let mut flood = client("flood", SVC, &[Role::Enqueue]);
    flood.rate_per_second = 5;
    flood.burst = 5;
    flood.max_queued_messages = 8;
    cfg.clients = vec![flood, client("ops", OPS, &[Role::Enqueue, Role::Admin])];
    let s = TestServer::start(cfg).await;
    let h = s.handle.as_ref().unwrap();
    let (mut fq, _) = clients(url(h), Some(SVC)).await;
    let (mut gq, mut admin) = clients(url(h), Some(OPS)).await;
    // Nothing leaves, so the quota is what is queued.
    admin
        .pause_delivery(pb::PauseDeliveryRequest { lanes: vec![] })
        .await
        .unwrap();

    // The burst passes; the next is refused with a retry delay.
    for i in 0..5 {
        fq.enqueue(request(&format!("f{i}"))).await.unwrap();
    }
    let e = fq.enqueue(request("f5")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("rate limit"), "{e:?}");
    let wait = e
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo in the details");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    // Meanwhile the other client is not limited at all.
    for i in 0..30 {
        gq.enqueue(request(&format!("g{i}"))).await.unwrap();
    }
    // As the rate refills, the quota (8 queued) stops the flood.
    let mut accepted = 5;
    let mut quota_refusal = None;
    let end = Instant::now() + Duration::from_secs(20);
    while quota_refusal.is_none() && Instant::now() < end {
        match fq.enqueue(request("more")).await {
            Ok(_) => accepted += 1,
            Err(e) if e.message().contains("quota") => quota_refusal = Some(e),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let held = quota_refusal.is_some();
    assert!(held, "the quota never refused");
    assert_eq!(accepted, 8, "exactly the quota was accepted");
    let e = quota_refusal.unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.get_details_retry_info().is_some(), "{e:?}");

    let stats = stats(&admin).await;
    let f = client_stats(&stats, "flood");
    assert_eq!(f.queued, 8, "{f:?}");
    assert!(
        f.refused_rate_total >= 1 && f.refused_quota_total >= 1,
        "{f:?}"
    );
    let g = client_stats(&stats, "ops");
    assert_eq!(
        (g.queued, g.refused_rate_total + g.refused_quota_total),
        (30, 0)
    );
    // The same per client in /metrics.
    let m = samples(&http_get(h.metrics_addr.unwrap(), "/metrics").await);
    assert_eq!(
        sample(&m, "mailspool_client_queued_messages{client=\"flood\"}"),
        8.0
    );
    assert!(
        sample(
            &m,
            "mailspool_client_refused_total{client=\"flood\",reason=\"quota\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &m,
            "mailspool_client_refused_total{client=\"ops\",reason=\"rate\"}"
        ),
        0.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_quota_counts_what_the_client_has_queued() {
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    let mut big = client("big", SVC, &[Role::Enqueue, Role::Admin]);
    big.max_queued_bytes = 4_000;
    cfg.clients = vec![big];
    let s = TestServer::start(cfg).await;
    let (mut q, mut a) = clients(url(s.handle.as_ref().unwrap()), Some(SVC)).await;
    a.pause_delivery(pb::PauseDeliveryRequest { lanes: vec![] })
        .await
        .unwrap();
    let mut accepted = 0;
    let refusal = loop {
        match q.enqueue(request(&format!("m{accepted}"))).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "the byte quota never refused");
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.message().contains("quota"), "{refusal:?}");
    let st = stats(&a).await;
    let c = client_stats(&st, "big");
    assert!(accepted >= 1 && c.queued == accepted, "{c:?}");
    assert!(c.queued_bytes <= 4_000, "{c:?}");
    // Delivery frees the quota.
    a.resume_delivery(pb::ResumeDeliveryRequest { lanes: vec![] })
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let mut q = q.clone();
            async move { q.enqueue(request("after")).await.is_ok() }
        })
        .await
    );
    s.shutdown().await;
}

/// Percentile of sorted milliseconds.
fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The well-behaved client's enqueue latencies and delivery delays (ms),
/// sending `n` bulk messages one at a time.
async fn well_behaved(q: &mut MailQueueClient<AuthChannel>, n: usize) -> (Vec<f64>, Vec<String>) {
    let mut lat = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = q
            .enqueue(with_lane(request(&format!("good {i}")), pb::Lane::Bulk))
            .await
            .expect("the well-behaved client is never refused");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        ids.push(r.into_inner().id);
    }
    lat.sort_by(f64::total_cmp);
    (lat, ids)
}

async fn delivery_delays(q: &mut MailQueueClient<AuthChannel>, ids: &[String]) -> Vec<f64> {
    let mut out = Vec::new();
    for id in ids {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let m = q
                .get_message(pb::GetMessageRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            if m.state() == pb::MessageState::Delivered {
                out.push((m.finished_unix_ms - m.enqueued_unix_ms) as f64);
                break;
            }
            assert!(Instant::now() < end, "{id} not delivered: {m:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

/// The postmortem's case: one client floods. It gets RESOURCE_EXHAUSTED;
/// another client's enqueues and bulk deliveries go on. Prints the
/// measurement (`cargo test --test it -- --nocapture fair_share`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_share_a_flooding_client_does_not_starve_another() {
    // A relay that takes 4 ms per message on 2 connections (~500 msg/s).
    let peer = SmtpPeer::start(Mode::AcceptAfter(Duration::from_millis(4))).await;
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.relay_max_connections = 2;
    cfg.lease_batch = 16;
    let mut flood = client("flood", SVC, &[Role::Enqueue]);
    flood.rate_per_second = 2_000;
    flood.burst = 2_000;
    flood.max_queued_messages = 4_000;
    cfg.clients = vec![flood, client("good", OPS, &[Role::Enqueue, Role::Admin])];
    let s = TestServer::start(cfg).await;
    let h = s.handle.as_ref().unwrap();
    let (fq, _) = clients(url(h), Some(SVC)).await;
    let (mut gq, admin) = clients(url(h), Some(OPS)).await;
    const N: usize = 200;

    // Without the flood.
    let (quiet_lat, ids) = well_behaved(&mut gq, N).await;
    let quiet_delay = delivery_delays(&mut gq, &ids).await;

    // With the flood: bulk batches as fast as they go, for as long as the
    // well-behaved client measures (bounded: stops when told, or at 2,000
    // calls).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let (mut fq, stop) = (fq.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut accepted, mut refused) = (0u64, 0u64);
            for _ in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let batch = (0..100)
                    .map(|i| with_lane(request(&format!("flood {i}")), pb::Lane::Bulk))
                    .collect();
                match fq
                    .enqueue_batch(pb::EnqueueBatchRequest { requests: batch })
                    .await
                {
                    Ok(r) => {
                        for x in r.into_inner().results {
                            if x.code == 0 {
                                accepted += 1;
                            } else {
                                assert_eq!(x.code, Code::ResourceExhausted as i32, "{x:?}");
                                refused += 1;
                            }
                        }
                    }
                    Err(e) => panic!("flood batch failed as a call: {e:?}"),
                }
            }
            (accepted, refused)
        })
    };
    let flood_now = |a: QueueAdminClient<AuthChannel>| async move {
        let st = stats(&a).await;
        client_stats(&st, "flood").clone()
    };
    // Wait until the flood has a backlog and is being refused.
    let end = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let f = flood_now(admin.clone()).await;
        if f.queued >= 2_000 && f.refused_rate_total + f.refused_quota_total > 0 {
            break f;
        }
        assert!(
            Instant::now() < end,
            "the flood never built a backlog: {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (flood_lat, ids) = well_behaved(&mut gq, N).await;
    let flood_delay = delivery_delays(&mut gq, &ids).await;
    let after = flood_now(admin.clone()).await;
    let flood_sent_meanwhile = after.delivered_total - before.delivered_total;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (accepted, refused) = flooder.await.unwrap();

    println!(
        "fair share: well-behaved client, {N} bulk messages one at a time\n\
         \x20 enqueue p50/p99 ms   quiet {:.2}/{:.2}   flood {:.2}/{:.2}   ratio p99 {:.2}x\n\
         \x20 delivery p50/p99 ms  quiet {:.0}/{:.0}   flood {:.0}/{:.0}\n\
         \x20 flood: {accepted} accepted, {refused} refused (RESOURCE_EXHAUSTED); {} of its \
         messages queued ahead; {flood_sent_meanwhile} of them delivered until the last \
         well-behaved one was",
        pct(&quiet_lat, 0.5),
        pct(&quiet_lat, 0.99),
        pct(&flood_lat, 0.5),
        pct(&flood_lat, 0.99),
        pct(&flood_lat, 0.99) / pct(&quiet_lat, 0.99),
        pct(&quiet_delay, 0.5),
        pct(&quiet_delay, 0.99),
        pct(&flood_delay, 0.5),
        pct(&flood_delay, 0.99),
        before.queued,
    );
    assert!(refused > 0, "the flood was never refused");
    // Fairness, not speed: first in, first out, every well-behaved message
    // would wait for the flood's whole backlog ahead of it; taking turns,
    // the flood sends about as many as the well-behaved client meanwhile.
    assert!(
        flood_sent_meanwhile < before.queued / 2,
        "the well-behaved mail waited behind the flood: {flood_sent_meanwhile} flood \
         messages delivered of {} queued ahead",
        before.queued
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_reloads_and_maps_client_certificates() {
    let ca = TestCa::new("mailspool test CA");
    let stranger = TestCa::new("someone else's CA");
    let dir = tempdir();
    let (cert, key) = ca.server();
    let files = dir.path().join("tls");
    std::fs::create_dir_all(&files).unwrap();
    let write = |name: &str, pem: &str| {
        let p = files.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let mut cfg = config(&dir.path().join("data"), None);
    cfg.tls_cert_file = Some(write("server.crt", &cert));
    cfg.tls_key_file = Some(write("server.key", &key));
    cfg.tls_client_ca_file = Some(write("clients.crt", &ca.pem()));
    let mut billing = client("billing", SVC, &[Role::Enqueue]);
    billing.token_sha256 = None;
    billing.cert_subject = Some("CN=billing.internal,O=Example".into());
    cfg.clients = vec![billing, client("ops", OPS, &[Role::Admin])];
    cfg.validate().unwrap();
    let h = Server::start(cfg).await.unwrap();
    let url = format!("https://localhost:{}", h.addr.port());

    // A mapped client certificate is the credential.
    let known = ca.client("billing.internal");
    let mut q = MailQueueClient::new(tls_channel(&url, &ca.pem(), Some(&known)).await.unwrap());
    q.enqueue(request("over mTLS"))
        .await
        .expect("mapped certificate");
    // Signed by the CA but not mapped to a client: UNAUTHENTICATED.
    let unmapped = ca.client("intruder.internal");
    let mut q2 = MailQueueClient::new(tls_channel(&url, &ca.pem(), Some(&unmapped)).await.unwrap());
    let e = q2.enqueue(request("x")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // A certificate from an unknown CA: the handshake fails.
    let outsider = stranger.client("billing.internal");
    let refused = match tls_channel(&url, &ca.pem(), Some(&outsider)).await {
        Err(_) => true,
        Ok(ch) => MailQueueClient::new(ch)
            .enqueue(request("y"))
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from an unknown CA was accepted");

    // Reload (what SIGHUP does): a certificate from a new CA; open
    // connections carry on, new ones see the new certificate.
    let ca2 = TestCa::new("mailspool test CA 2");
    let (cert2, key2) = ca2.server();
    write("server.crt", &cert2);
    write("server.key", &key2);
    assert!(h.reload_tls().unwrap(), "TLS is configured");
    q.enqueue(request("same connection"))
        .await
        .expect("the open connection survives the reload");
    let mut q3 = MailQueueClient::new(tls_channel(&url, &ca2.pem(), Some(&known)).await.unwrap());
    q3.enqueue(request("new certificate")).await.unwrap();
    let old_ca = tls_channel(&url, &ca.pem(), Some(&known)).await;
    let stale = match old_ca {
        Err(_) => true,
        Ok(ch) => MailQueueClient::new(ch)
            .enqueue(request("z"))
            .await
            .is_err(),
    };
    assert!(stale, "new connections must get the new certificate");
    // A broken file: the reload fails, the old certificate stays.
    write("server.key", "not a key");
    assert!(h.reload_tls().is_err());
    let mut q4 = MailQueueClient::new(tls_channel(&url, &ca2.pem(), Some(&known)).await.unwrap());
    q4.enqueue(request("still serving")).await.unwrap();
    h.shutdown().await;
}

/// With TLS configured, the HTTP listener (the console and `/metrics`)
/// serves HTTPS with the same certificate, offering HTTP/1.1 by ALPN; a
/// console login's cookie is then `Secure`. `metrics_tls = false` keeps it
/// plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_and_metrics_are_served_over_the_same_tls() {
    let ca = TestCa::new("mailspool test CA");
    let dir = tempdir();
    let (cert, key) = ca.server();
    let (cert_file, key_file) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let mut cfg = config(&dir.path().join("data"), None);
    cfg.tls_cert_file = Some(cert_file);
    cfg.tls_key_file = Some(key_file);
    cfg.clients = vec![client("ops", OPS, &[Role::Admin])];
    cfg.validate().unwrap();
    let h = Server::start(cfg.clone()).await.unwrap();
    let port = h.metrics_addr.unwrap().port();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let metrics = https
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .await
        .expect("/metrics over TLS");
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("mailspool_queue_messages"));
    let page = https
        .get(format!("https://localhost:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("console.js"));
    let login = console_login(&https, &format!("https://localhost:{port}")).await;
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.ends_with("; Secure"),
        "{cookie}"
    );
    // Plain HTTP on the TLS port gets no page.
    let plain = reqwest::Client::new()
        .get(format!("http://localhost:{port}/metrics"))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP was served on the TLS listener"
    );
    h.shutdown().await;

    // metrics_tls = false: plain HTTP, and the cookie is not Secure.
    cfg.metrics_tls = false;
    let h = Server::start(cfg).await.unwrap();
    let port = h.metrics_addr.unwrap().port();
    let login = console_login(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    h.shutdown().await;
}

/// The console's login with the admin token, as its page sends it.
async fn console_login(client: &reqwest::Client, base: &str) -> reqwest::Response {
    client
        .post(format!("{base}/api/login"))
        .header("x-mailspool-console", "1")
        .header("content-type", "application/json")
        .body(format!("{{\"token\":\"{OPS}\"}}"))
        .send()
        .await
        .unwrap()
}

async fn tls_channel(
    url: &str,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// A CA for the tests (rcgen).
struct TestCa(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl TestCa {
    fn new(cn: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa(rcgen::CertifiedIssuer::self_signed(p, key).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn sign(&self, cn: &str, sans: &[&str], server: bool) -> (String, String) {
        use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose};
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = DistinguishedName::new();
        if !server {
            p.distinguished_name
                .push(DnType::OrganizationName, "Example");
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> (String, String) {
        self.sign("localhost", &["localhost", "127.0.0.1"], true)
    }

    fn client(&self, cn: &str) -> (String, String) {
        self.sign(cn, &[], false)
    }
}

#[test]
fn a_non_loopback_listen_without_auth_refuses_to_start() {
    let dir = tempdir();
    let out = std::process::Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--metrics-listen", "off"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`listen`") && err.contains("--insecure-no-auth"),
        "{err}"
    );
    assert!(
        !dir.path().join("spool").exists(),
        "nothing was created before refusing"
    );
    // With the explicit opt-out the same settings are accepted.
    let mut c = Config {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..Config::default()
    };
    assert_eq!(c.validate().unwrap_err().setting, "listen");
    c.insecure_no_auth = true;
    c.validate().unwrap();
    assert!(!c.auth_enabled());
    // ... but not together with clients.
    c.clients = vec![client("svc", SVC, &[Role::Enqueue])];
    assert_eq!(c.validate().unwrap_err().setting, "insecure_no_auth");
}

/// Tokens, bodies and (above debug) recipient addresses never reach the
/// log: the real binary at debug level, with auth failures, deliveries
/// and a rejection that quotes the recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    peer.script(&[Mode::Reject]);
    let dir = tempdir();
    let data = dir.path().join("data");
    let config = dir.path().join("mailspool.toml");
    std::fs::write(
        &config,
        format!(
            "[[clients]]\nname = \"svc\"\ntoken_sha256 = \"{}\"\nroles = [\"enqueue\", \"admin\"]\n",
            token_hash(SVC)
        ),
    )
    .unwrap();
    let server = mailspool::harness::child::ServerProcess::start(
        std::path::Path::new(binary()),
        &data,
        &peer.url(),
        &["--config", config.to_str().unwrap(), "--log-level", "debug"],
    )
    .await
    .unwrap();
    let secret_body = "the-body-is-private-4711";
    let mut r = request("hello");
    r.email.as_mut().unwrap().text_body = secret_body.into();
    r.email.as_mut().unwrap().to = vec!["jane.private@example.org".into()];
    let (mut bad, _) = clients(server.url.clone(), Some("mst_wrong-token-secret")).await;
    assert_eq!(
        bad.enqueue(r.clone()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let (mut q, mut a) = clients(server.url.clone(), Some(SVC)).await;
    q.enqueue(r.clone()).await.unwrap();
    // Another address: the first one's 5.1.1 suppresses it.
    r.email.as_mut().unwrap().to = vec!["jane.private+2@example.org".into()];
    q.enqueue(r).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let a = a.clone();
            async move {
                let s = stats(&a).await;
                s.delivered_total == 1 && s.dead_total == 1
            }
        })
        .await
    );
    a.queue_stats(pb::QueueStatsRequest {}).await.unwrap();
    let log = server.log();
    server.stop().await.unwrap();
    assert!(
        log.iter().any(|l| l.contains("AuthFailed")),
        "the auth failure is logged: {log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("MessageRejected")),
        "{log:#?}"
    );
    for line in &log {
        for secret in [SVC, "mst_wrong-token-secret", secret_body] {
            assert!(
                !line.contains(secret),
                "secret {secret:?} in the log: {line}"
            );
        }
        if line.contains("jane.private") {
            assert!(
                line.contains("DEBUG"),
                "recipient above debug level: {line}"
            );
        }
    }
}

/// SIGHUP to the real binary re-reads the certificate; the process and
/// its queue carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let (ca, ca2) = (TestCa::new("first CA"), TestCa::new("second CA"));
    let dir = tempdir();
    let (cert, key) = ca.server();
    let (cert_file, key_file) = (dir.path().join("s.crt"), dir.path().join("s.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let server = mailspool::harness::child::ServerProcess::start(
        std::path::Path::new(binary()),
        &dir.path().join("data"),
        "smtp://127.0.0.1:9",
        &[
            "--tls-cert-file",
            cert_file.to_str().unwrap(),
            "--tls-key-file",
            key_file.to_str().unwrap(),
            "--log-level",
            "info",
        ],
    )
    .await
    .unwrap();
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}");
    let mut q = MailQueueClient::new(tls_channel(&url, &ca.pem(), None).await.unwrap());
    q.enqueue(request("before")).await.unwrap();

    let (cert2, key2) = ca2.server();
    std::fs::write(&cert_file, cert2).unwrap();
    std::fs::write(&key_file, key2).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let reloaded = wait_until(Duration::from_secs(10), || async {
        match tls_channel(&url, &ca2.pem(), None).await {
            Ok(ch) => MailQueueClient::new(ch)
                .enqueue(request("after"))
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(reloaded, "the new certificate was never served");
    q.enqueue(request("old connection"))
        .await
        .expect("the open connection survives SIGHUP");
    assert!(server.log().iter().any(|l| l.contains("TlsReloaded")));
    // The CLI over TLS, verifying with the CA it is given.
    let ca_file = dir.path().join("ca2.pem");
    std::fs::write(&ca_file, ca2.pem()).unwrap();
    let out = std::process::Command::new(binary())
        .args(["stats", "--json", "--server", &url, "--tls-ca-file"])
        .arg(&ca_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"enqueued_total\": 3"));
    server.stop().await.unwrap();
}

/// An admin request over its 4 MiB decode limit is refused before it is
/// buffered whole, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_admin_requests_are_refused() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let mut admin = s.admin.clone().max_encoding_message_size(64 << 20);
    let e = admin
        .list_messages(pb::ListMessagesRequest {
            filter: Some(pb::MessageFilter {
                recipient_domain: "x".repeat(5 << 20),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert_eq!(s.stats().await.queued, 0, "still answering");
    s.shutdown().await;
}

/// Idle sockets cannot take the listener: beyond `grpc_max_connections`
/// new connections wait, and a connection that sends no HTTP/2 preface is
/// closed after the handshake timeout, freeing its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_hold_the_listener() {
    use tokio::io::AsyncReadExt;
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    cfg.grpc_max_connections = 2;
    cfg.grpc_handshake_timeout_ms = 1_500;
    let s = TestServer::start(cfg).await;
    let addr = s.handle.as_ref().unwrap().addr;
    // The test server's own clients hold one connection (used once, so it
    // is open); one idle socket takes the other slot.
    s.enqueue(request("warm")).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let fresh = || async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        MailQueueClient::new(ch).enqueue(request("fresh")).await
    };
    let early = tokio::time::timeout(Duration::from_millis(300), fresh()).await;
    assert!(
        !matches!(early, Ok(Ok(_))),
        "a connection beyond the limit was served: {early:?}"
    );
    // The idle socket is closed by the server (EOF), and its slot serves.
    // (The server's SETTINGS frame comes first, then the close.)
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was never closed");
    tokio::time::timeout(Duration::from_secs(20), fresh())
        .await
        .expect("served once a slot is free")
        .unwrap();
    // Established connections are not affected by the preface timeout.
    s.enqueue(request("old")).await.unwrap();
    s.shutdown().await;
}

/// Transfer to a node with auth: a refused token is found before delivery
/// here is paused; the right one moves the mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_an_authenticated_node_checks_the_token_first() {
    let (d1, d2) = (tempdir(), tempdir());
    let source = TestServer::start(config(d1.path(), None)).await;
    let mut dcfg = config(d2.path(), None);
    let mut restricted = client("svc", SVC, &[Role::Enqueue]);
    restricted.allowed_senders = vec!["alerts@example.com".into()];
    let transfer = client("transfer", OPS, &[Role::Enqueue, Role::Admin]);
    dcfg.clients = vec![restricted, transfer];
    let dest = TestServer::start(dcfg).await;
    let to = url(dest.handle.as_ref().unwrap());
    let mut admin = source.admin.clone();
    admin
        .pause_delivery(pb::PauseDeliveryRequest {
            lanes: vec![pb::Lane::Normal as i32],
        })
        .await
        .unwrap();
    for i in 0..5 {
        source.enqueue(request(&format!("t{i}"))).await.unwrap();
    }

    for token in ["", "mst_wrong"] {
        let e = admin
            .transfer(pb::TransferRequest {
                to: to.clone(),
                to_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().starts_with("to_token:"), "{e:?}");
        assert!(!e.message().contains("mst_wrong"), "{e:?}");
    }
    let st = source.stats().await;
    assert_eq!(
        (st.queued, st.paused_lanes.clone()),
        (5, vec![pb::Lane::Normal as i32]),
        "nothing moved and no lane paused by the refused transfers"
    );

    let mut progress = admin
        .transfer(pb::TransferRequest {
            to: to.clone(),
            to_token: OPS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = pb::TransferProgress::default();
    while let Some(p) = progress.message().await.unwrap() {
        last = p;
    }
    assert_eq!((last.transferred, last.remaining), (5, 0), "{last:?}");
    let (_, dest_admin) = clients(to, Some(OPS)).await;
    let st = stats(&dest_admin).await;
    assert_eq!(client_stats(&st, "transfer").enqueued_total, 5);
    source.shutdown().await;
    dest.shutdown().await;
}

/// SIGHUP re-reads `[[clients]]`: a new token works, a removed one stops
/// working, and a broken file keeps the clients that were serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_the_clients() {
    let dir = tempdir();
    let file = dir.path().join("mailspool.toml");
    let entry = |name: &str, token: &str| {
        format!(
            "[[clients]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"enqueue\", \"admin\"]\n",
            token_hash(token)
        )
    };
    std::fs::write(&file, entry("first", SVC)).unwrap();
    let server = mailspool::harness::child::ServerProcess::start(
        std::path::Path::new(binary()),
        &dir.path().join("data"),
        "smtp://127.0.0.1:9",
        &["--config", file.to_str().unwrap(), "--log-level", "info"],
    )
    .await
    .unwrap();
    let works = |token: &'static str| {
        let url = server.url.clone();
        async move {
            let (_, mut a) = clients(url, Some(token)).await;
            a.queue_stats(pb::QueueStatsRequest {}).await.map(|_| ())
        }
    };
    works(SVC).await.unwrap();
    assert_eq!(works(OPS).await.unwrap_err().code(), Code::Unauthenticated);

    std::fs::write(&file, entry("second", OPS)).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            works(OPS).await.is_ok()
        })
        .await,
        "the new client never got in"
    );
    assert_eq!(works(SVC).await.unwrap_err().code(), Code::Unauthenticated);

    std::fs::write(&file, "[[clients]]\nname = \"broken\"\n").unwrap();
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            server
                .log()
                .iter()
                .any(|l| l.contains("ClientsReloadFailed"))
        })
        .await
    );
    works(OPS).await.expect("the previous clients stay");
    server.stop().await.unwrap();
}

/// Idempotency keys belong to the client that sent them: another tenant
/// using the same natural key (`reset-<user>`) gets its own message, and
/// both are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_with_the_same_idempotency_key_both_deliver() {
    let dir = tempdir();
    let peer = SmtpPeer::start(Mode::Accept).await;
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.clients = vec![
        client("svc", SVC, &[Role::Enqueue]),
        client("other", OTHER, &[Role::Enqueue]),
    ];
    let s = TestServer::start(cfg).await;
    let h = s.handle.as_ref().unwrap();
    let (mut a, _) = clients(url(h), Some(SVC)).await;
    let (mut b, _) = clients(url(h), Some(OTHER)).await;
    let first = a
        .enqueue(with_key(request("from svc"), "reset-42"))
        .await
        .unwrap()
        .into_inner();
    let second = b
        .enqueue(with_key(request("from other"), "reset-42"))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.duplicate, "another client's key: {second:?}");
    assert_ne!(first.id, second.id);
    assert_ne!(first.message_id, second.message_id);
    // Each client's own retry is still a duplicate of its own message.
    let again = b
        .enqueue(with_key(request("from other"), "reset-42"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate && again.id == second.id, "{again:?}");
    let both = wait_until(Duration::from_secs(30), || async {
        let got: Vec<String> = peer.received().into_iter().map(|m| m.subject).collect();
        got.contains(&"from svc".to_string()) && got.contains(&"from other".to_string())
    })
    .await;
    s.shutdown().await;
    assert!(both, "received {:?}", peer.received());
}
