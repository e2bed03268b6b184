//! Each recipient has its own fate: per-RCPT replies from aiosmtpd (a relay
//! nobody here wrote: rejecting with 550 5.1.1, greylisting with 451 4.7.1,
//! limiting recipients per transaction with 452 4.5.3), the suppression
//! list that hard bounces feed and Enqueue obeys, its admin API and CLI,
//! and deadlines: mail that waited out an outage is never delivered late.

use mailspool::pb;
use serde_json::Value;

use crate::mime::capture_with;
use crate::support::*;

fn to(subject: &str, rcpts: &[&str]) -> pb::EnqueueRequest {
    let mut r = request(subject);
    let e = r.email.as_mut().unwrap();
    e.to = rcpts.iter().map(|a| a.to_string()).collect();
    r
}

fn states(m: &pb::GetMessageResponse) -> Vec<(String, pb::RecipientState, u32)> {
    m.recipients
        .iter()
        .map(|r| (r.address.clone(), r.state(), r.attempts))
        .collect()
}

fn url(s: &TestServer) -> String {
    format!("http://{}", s.handle.as_ref().unwrap().addr)
}

async fn list(s: &TestServer, r: pb::ListSuppressionsRequest) -> pb::ListSuppressionsResponse {
    s.admin
        .clone()
        .list_suppressions(r)
        .await
        .unwrap()
        .into_inner()
}

#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs Python's aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_recipient_has_its_own_outcome_and_a_hard_bounce_is_suppressed() {
    let relay = capture_with(&["--reject", "gone", "--defer-once", "grey"]).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), relay.relay())).await;
    let (ok, gone, grey) = ("ok@example.org", "gone@example.org", "grey@example.org");
    let id = s.enqueue(to("mixed", &[ok, gone, grey])).await.unwrap().id;
    let m = s
        .wait_state(&id, pb::MessageState::PartiallyDelivered)
        .await;
    use pb::RecipientState::*;
    assert_eq!(
        states(&m),
        [
            (ok.to_string(), RecipientDelivered, 1),
            (gone.to_string(), RecipientBounced, 1),
            (grey.to_string(), RecipientDelivered, 2),
        ],
        "{m:?}"
    );
    assert_eq!(
        m.recipients[2].bounce_class(),
        pb::BounceClass::Unspecified,
        "delivered"
    );
    let bounced = &m.recipients[1];
    assert_eq!(bounced.bounce_class(), pb::BounceClass::BounceBadMailbox);
    assert!(bounced.last_reply.starts_with("550 5.1.1"), "{bounced:?}");
    assert!(bounced.finished_unix_ms > 0);
    assert!(m.last_error.starts_with("550 5.1.1"), "why not all: {m:?}");
    // One transaction each time; the retry went to the deferred one alone.
    let got: Vec<Vec<String>> = relay
        .received()
        .iter()
        .map(|(j, _)| {
            j["rcpt_tos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(got, [vec![ok.to_string()], vec![grey.to_string()]]);
    let asked: Vec<String> = relay.rcpts().into_iter().map(|(a, _)| a).collect();
    assert_eq!(asked, [ok, gone, grey, grey], "gone@ was never asked again");

    // The 5.1.1 address is on the list, with why and where from.
    let l = list(&s, pb::ListSuppressionsRequest::default()).await;
    assert_eq!(l.total, 1);
    let e = &l.entries[0];
    assert_eq!(
        (e.address.as_str(), e.reason.as_str()),
        (gone, "bad_mailbox")
    );
    assert_eq!(e.message_id, id);
    assert!(
        e.reply.starts_with("550 5.1.1") && e.created_unix_ms > 0,
        "{e:?}"
    );
    assert!(
        e.expires_unix_ms > e.created_unix_ms + 29 * 86_400_000,
        "30 days by default"
    );
    let st = s.stats().await;
    assert_eq!(
        (
            st.recipients_delivered_total,
            st.recipients_bounced_total,
            st.suppression_list_size
        ),
        (2, 1, 1)
    );
    assert!(
        (st.bounce_rate_last_hour - 1.0 / 3.0).abs() < 1e-9,
        "{st:?}"
    );
    let bad_mailbox = st
        .bounce_classes
        .iter()
        .find(|c| c.class() == pb::BounceClass::BounceBadMailbox)
        .unwrap();
    assert_eq!((bad_mailbox.total, bad_mailbox.last_hour), (1, 1));
    let m = samples(&http_get(s.handle.as_ref().unwrap().metrics_addr.unwrap(), "/metrics").await);
    assert_eq!(
        sample(&m, "mailspool_recipients_total{state=\"bounced\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "mailspool_recipients_total{state=\"delivered\"}"),
        2.0
    );
    assert_eq!(sample(&m, "mailspool_suppressed_addresses"), 1.0);
    assert!((sample(&m, "mailspool_bounce_rate") - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(
        sample(&m, "mailspool_failed_attempts_total{class=\"bad_mailbox\"}"),
        1.0
    );
    // And for people: the recipients of the message, the figures in stats.
    let out = run_cli(&url(&s), &["status", &id]).await;
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("  {gone}")))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("bounced") && line.contains("BOUNCE_BAD_MAILBOX"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("state         PARTIALLY_DELIVERED"),
        "{}",
        out.stdout
    );
    let out = run_cli(&url(&s), &["stats"]).await;
    assert!(out.stdout.contains("33.3% (last hour"), "{}", out.stdout);
    assert!(
        out.stdout.contains("bad_mailbox 1 (1h 1)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("1 on the list"), "{}", out.stdout);

    // The next message to it leaves it out of the envelope (the header
    // keeps it, as the sender wrote it), and says so; in a batch too.
    let again = s
        .enqueue(to("again", &[gone, "new@example.org"]))
        .await
        .unwrap();
    assert_eq!(again.suppressed.len(), 1);
    assert_eq!(again.suppressed[0].address, gone);
    assert_eq!(again.suppressed[0].reason, "bad_mailbox");
    let m = s.wait_state(&again.id, pb::MessageState::Delivered).await;
    assert_eq!(
        states(&m),
        [("new@example.org".to_string(), RecipientDelivered, 1)]
    );
    let last = relay.received().pop().unwrap();
    assert_eq!(last.0["rcpt_tos"], serde_json::json!(["new@example.org"]));
    assert!(
        String::from_utf8_lossy(&last.1).contains(gone),
        "To: as written"
    );
    let batch = s
        .enqueue_batch(vec![
            to("b0", &["x@example.org", "GONE@example.org"]),
            to("b1", &[gone]),
        ])
        .await;
    assert_eq!(batch[0].code, 0);
    assert!(
        batch[0].suppressed.is_empty(),
        "the local part is compared as given"
    );
    assert_eq!(batch[1].code, tonic::Code::FailedPrecondition as i32);
    assert!(
        batch[1]
            .message
            .starts_with("requests[1].email.to[0]: suppressed: bad mailbox since "),
        "{}",
        batch[1].message
    );

    // All suppressed: refused, naming the field, nothing stored.
    let before = s.stats().await.enqueued_total;
    let e = s.enqueue(to("none", &[gone])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message()
            .starts_with("email.to[0]: suppressed: bad mailbox since "),
        "{e:?}"
    );
    let mut cc = to("cc", &[]);
    cc.email.as_mut().unwrap().cc = vec!["gone@EXAMPLE.org".into()];
    let e = s.enqueue(cc).await.unwrap_err();
    assert!(
        e.message().starts_with("email.cc[0]: suppressed"),
        "domains compare without case: {e:?}"
    );
    assert_eq!(s.stats().await.enqueued_total, before);
    s.shutdown().await;
}

#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs Python's aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_takes_five_recipients_per_transaction_gets_all_eight() {
    let relay = capture_with(&["--max-rcpts", "5"]).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), relay.relay())).await;
    let rcpts: Vec<String> = (0..8).map(|i| format!("r{i}@example.org")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let id = s.enqueue(to("eight", &refs)).await.unwrap().id;
    let m = s.wait_state(&id, pb::MessageState::Delivered).await;
    assert_eq!(m.attempts, 1, "{m:?}");
    assert!(m
        .recipients
        .iter()
        .all(|r| r.state() == pb::RecipientState::RecipientDelivered && r.attempts == 1));
    let sizes: Vec<usize> = relay
        .received()
        .iter()
        .map(|(j, _)| j["rcpt_tos"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [5, 3], "two transactions on one attempt");
    s.shutdown().await;
}

#[cfg_attr(
    not(have_smtp_sink),
    ignore = "needs Postfix's smtp-sink (apt install postfix)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_past_its_deadline_is_never_delivered_after_an_outage() {
    let dir = tempdir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = config(
        &dir.path().join("data"),
        Some(format!("smtp://127.0.0.1:{port}")),
    );
    c.transactional_expiry_secs = 2;
    let s = TestServer::start(c).await;
    let now = mailspool::model::wall_ms() as i64;
    let mut otp = to("otp", &["u@example.org"]);
    otp.expires_at_unix_ms = now + 1_500;
    let otp = s.enqueue(otp).await.unwrap();
    let reset = with_lane(to("reset", &["v@example.org"]), pb::Lane::Transactional);
    let reset = s.enqueue(reset).await.unwrap();
    let report = s.enqueue(to("report", &["w@example.org"])).await.unwrap();
    let m = s.get(&otp.id).await.unwrap();
    assert_eq!(m.expires_at_unix_ms, now + 1_500);
    // The CLI's --expires-in sets it from now.
    let r = run_cli(
        &url(&s),
        &[
            "enqueue",
            "--from",
            "a@example.com",
            "--to",
            "z@example.org",
            "--text",
            "x",
            "--expires-in",
            "10m",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let cli = s.get(r.stdout.trim()).await.unwrap();
    let in_10m = mailspool::model::wall_ms() as i64 + 600_000;
    assert!(
        (in_10m - 5_000..=in_10m).contains(&cli.expires_at_unix_ms),
        "{cli:?}"
    );
    // The relay is down: attempts fail, then the deadlines pass.
    for id in [&otp.id, &reset.id] {
        let m = s.wait_state(id, pb::MessageState::Expired).await;
        assert_eq!(
            m.recipients[0].state(),
            pb::RecipientState::RecipientExpired,
            "{m:?}"
        );
        assert!(m.recipients[0].last_reply.starts_with("expired"), "{m:?}");
    }
    // The relay comes back: only the message without a deadline goes.
    let dump = dir.path().join("dump");
    let _sink =
        crate::smtp_sink::start_sink_on(&crate::smtp_sink::smtp_sink(), &dump, &[], port).await;
    s.wait_state(&report.id, pb::MessageState::Delivered).await;
    s.wait_state(&cli.id, pb::MessageState::Delivered).await;
    let both = wait_until(std::time::Duration::from_secs(10), || async {
        crate::smtp_sink::dumped_message_ids(&dump).len() >= 2
    })
    .await;
    assert!(both, "smtp-sink wrote both");
    let mut ids = crate::smtp_sink::dumped_message_ids(&dump);
    ids.sort();
    let mut want = vec![report.message_id.clone(), cli.message_id.clone()];
    want.sort();
    assert_eq!(ids, want, "nothing late was delivered");
    for id in [&otp.id, &reset.id] {
        assert_eq!(s.get(id).await.unwrap().state(), pb::MessageState::Expired);
    }
    assert_eq!(s.stats().await.recipients_expired_total, 2);

    // A deadline in the past is refused, naming the field; nothing stored.
    let mut late = to("late", &["u@example.org"]);
    late.expires_at_unix_ms = now - 1;
    let e = s.enqueue(late).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("expires_at_unix_ms: "), "{e:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suppression_list_admin_api_and_cli() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let mut admin = s.admin.clone();
    // Bad input: the whole call is refused, naming the address, nothing added.
    let e = admin
        .add_suppressions(pb::AddSuppressionsRequest {
            addresses: vec!["a@example.org".into(), "not an address".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("addresses[1]"), "{e:?}");
    assert_eq!(list(&s, Default::default()).await.total, 0);
    let e = admin
        .list_suppressions(pb::ListSuppressionsRequest {
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("limit: "), "{e:?}");

    let server = url(&s);
    let r = run_cli(
        &server,
        &[
            "suppression",
            "add",
            "a@example.org",
            "b@Example.ORG",
            "c@other.example",
            "--reason",
            "complained",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "suppressed: 3");
    // By domain (without case), by address, and paged with a cursor.
    let d = list(
        &s,
        pb::ListSuppressionsRequest {
            domain: "EXAMPLE.org".into(),
            ..Default::default()
        },
    )
    .await;
    let addrs: Vec<&str> = d.entries.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addrs, ["a@example.org", "b@example.org"]);
    assert_eq!(d.entries[0].reason, "complained");
    assert_eq!(
        d.entries[0].expires_unix_ms, 0,
        "an operator's entry never expires unless asked"
    );
    let one = list(
        &s,
        pb::ListSuppressionsRequest {
            address: "B@EXAMPLE.ORG".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        one.entries.is_empty(),
        "the local part is compared as given"
    );
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let p = list(
            &s,
            pb::ListSuppressionsRequest {
                cursor: cursor.clone(),
                limit: 2,
                ..Default::default()
            },
        )
        .await;
        seen.extend(p.entries.into_iter().map(|e| e.address));
        if p.next_cursor.is_empty() {
            break;
        }
        cursor = p.next_cursor;
    }
    assert_eq!(seen, ["a@example.org", "b@example.org", "c@other.example"]);
    let r = run_cli(&server, &["suppression", "list", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2]["address"], "c@other.example");
    assert_eq!(rows[2]["reason"], "complained");
    let r = run_cli(
        &server,
        &["suppression", "list", "--domain", "other.example"],
    )
    .await;
    assert!(
        r.stdout.contains("c@other.example") && r.stdout.contains("1 shown; 3 suppressed in all"),
        "{}",
        r.stdout
    );

    // Remove answers how many were there.
    let r = run_cli(
        &server,
        &[
            "suppression",
            "remove",
            "a@example.org",
            "nobody@example.org",
            "--json",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["removed"],
        1
    );
    let r = run_cli(&server, &["suppression", "add", "bad address"]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("addresses[0]"), "{}", r.stderr);
    assert_eq!(list(&s, Default::default()).await.total, 2);
    assert_eq!(s.stats().await.suppression_list_size, 2);
    s.shutdown().await;
}

/// An address suppressed while its message waits is not sent to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_suppressed_while_its_message_waits_is_not_sent_to() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let mut r = to("later", &["x@example.org", "y@example.org"]);
    r.not_before_unix_ms = mailspool::model::wall_ms() as i64 + 1_500;
    let id = s.enqueue(r).await.unwrap().id;
    s.admin
        .clone()
        .add_suppressions(pb::AddSuppressionsRequest {
            addresses: vec!["x@example.org".into()],
            reason: "complained".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = s
        .wait_state(&id, pb::MessageState::PartiallyDelivered)
        .await;
    use pb::RecipientState::*;
    assert_eq!(
        states(&m),
        [
            ("x@example.org".to_string(), RecipientSuppressed, 0),
            ("y@example.org".to_string(), RecipientDelivered, 1),
        ]
    );
    assert!(
        m.recipients[0]
            .last_reply
            .starts_with("suppressed: complained since "),
        "{m:?}"
    );
    assert_eq!(s.stats().await.recipients_suppressed_total, 1);
    // The outbox got it for y only.
    let files = outbox_files(dir.path());
    assert_eq!(files.len(), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suppression_list_survives_a_restart_and_a_kill() {
    use mailspool::harness::child::ServerProcess;
    let dir = tempdir();
    let start = || async {
        ServerProcess::start(std::path::Path::new(binary()), dir.path(), "", &SERVER_ARGS)
            .await
            .expect("server starts")
    };
    let s = start().await;
    let r = run_cli(
        &s.url,
        &[
            "suppression",
            "add",
            "kept@example.org",
            "--expires-in",
            "2h",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Acknowledged means fsynced: a kill -9 right after loses nothing.
    s.kill().await.unwrap();
    let s = start().await;
    let r = run_cli(&s.url, &["suppression", "list", "--json"]).await;
    let row: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(row["address"], "kept@example.org");
    let expires = row["expires_unix_ms"].as_i64().unwrap();
    let now = mailspool::model::wall_ms() as i64;
    assert!(
        (now + 7_100_000..=now + 7_200_000).contains(&expires),
        "{row}"
    );
    // Enqueue obeys it after the restart.
    let r = run_cli(
        &s.url,
        &[
            "enqueue",
            "--from",
            "a@example.com",
            "--to",
            "kept@example.org",
            "--text",
            "x",
        ],
    )
    .await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("email.to[0]: suppressed"), "{}", r.stderr);
    s.stop().await.unwrap();
    let s = start().await;
    let r = run_cli(&s.url, &["suppression", "list", "--json"]).await;
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    s.stop().await.unwrap();
}

/// Our password refused (535): the relay's problem, not the recipients'.
/// Nothing bounces, nothing is suppressed, no attempt is burned, and the
/// state is there to see; once the password is fixed and the process
/// restarted, the mail goes.
#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs Python's aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_relay_password_bounces_and_suppresses_nothing() {
    use mailspool::harness::child::ServerProcess;
    let relay = capture_with(&["--auth", "mailspool:right"]).await;
    let dir = tempdir();
    let password = dir.path().join("relay.password");
    std::fs::write(&password, "wrong\n").unwrap();
    let data = dir.path().join("data");
    let relay_url = relay.relay().unwrap();
    // ServerProcess gives a loopback relay `--relay-tls none` itself.
    let flags = [
        "--relay-user",
        "mailspool",
        "--relay-password-file",
        password.to_str().unwrap(),
    ];
    let start = || async {
        ServerProcess::start(std::path::Path::new(binary()), &data, &relay_url, &flags)
            .await
            .expect("server starts")
    };
    let server = start().await;
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut queue = pb::mail_queue_client::MailQueueClient::new(channel.clone());
    let mut admin = pb::queue_admin_client::QueueAdminClient::new(channel);
    let id = queue
        .enqueue(to("pw", &["a@example.org", "b@example.org"]))
        .await
        .unwrap()
        .into_inner()
        .id;
    let refused = wait_until(std::time::Duration::from_secs(20), || {
        let mut admin = admin.clone();
        async move {
            let st = admin
                .queue_stats(pb::QueueStatsRequest {})
                .await
                .unwrap()
                .into_inner();
            st.relays.first().is_some_and(|r| r.state == "auth failed")
        }
    })
    .await;
    assert!(refused, "the relay shows `auth failed`");
    let m = queue
        .get_message(pb::GetMessageRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.state(), pb::MessageState::Queued, "{m:?}");
    assert_eq!(m.attempts, 0, "no attempt burned: {m:?}");
    assert_eq!(m.bounce_class(), pb::BounceClass::BounceRelayAuth, "{m:?}");
    for r in &m.recipients {
        assert_eq!(
            (r.state(), r.attempts),
            (pb::RecipientState::RecipientPending, 0),
            "{r:?}"
        );
    }
    let st = admin
        .queue_stats(pb::QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            st.recipients_bounced_total,
            st.suppression_list_size,
            st.dead
        ),
        (0, 0, 0)
    );
    assert!(st.relays[0].reason.contains("535"), "{:?}", st.relays[0]);
    server.stop().await.unwrap();

    std::fs::write(&password, "right\n").unwrap();
    let server = start().await;
    let out = wait_until(std::time::Duration::from_secs(20), || async {
        let r = run_cli(&server.url, &["status", &id, "--json"]).await;
        serde_json::from_str::<Value>(&r.stdout).is_ok_and(|v| v["state"] == "DELIVERED")
    })
    .await;
    assert!(out, "delivered after the fix and a restart");
    let r = run_cli(&server.url, &["status", &id, "--json"]).await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["attempts"], 1, "{v}");
    assert_eq!(v["recipients"][1]["state"], "RECIPIENT_DELIVERED", "{v}");
    assert_eq!(relay.received().len(), 1, "one transaction for both");
    server.stop().await.unwrap();
}
