//! The operator CLI (`mailspool queue ...`, `stats --watch`, `top-domains`)
//! run as the real binary against the real server.

use mailspool::pb;

use crate::support::run_cli as cli;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_confirms_and_acts_through_the_real_server() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let url = format!("http://{}", s.handle.as_ref().unwrap().addr);

    let r = cli(&url, &["queue", "pause", "--lane", "bulk"]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "delivery paused: bulk"),
        "{}",
        r.stderr
    );
    for i in 0..3 {
        let mut req = with_lane(request(&format!("c{i}")), pb::Lane::Bulk);
        req.email.as_mut().unwrap().to = vec![format!("u{i}@one.example")];
        s.enqueue(req).await.unwrap();
    }

    let r = cli(&url, &["queue", "list", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(
            (row["lane"].as_str(), row["detail"].as_str()),
            (Some("bulk"), Some("ready"))
        );
    }

    let r = cli(&url, &["top-domains"]).await;
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("one.example"))
        .unwrap_or_else(|| panic!("no one.example row in\n{}", r.stdout));
    assert_eq!(line.split_whitespace().nth(1), Some("3"), "{line}");

    // A filter without --yes: prints what it would touch, changes nothing.
    let r = cli(&url, &["queue", "cancel", "--domain", "one.example"]).await;
    assert_eq!(r.code, 2);
    assert!(r.stdout.contains("would cancel 3"), "{}", r.stdout);
    assert!(r.stderr.contains("nothing changed"), "{}", r.stderr);
    // No filter at all needs --all-messages, even with --yes.
    let r = cli(&url, &["queue", "cancel", "--yes"]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--all-messages"), "{}", r.stderr);
    let r = cli(&url, &["queue", "transfer", "--to", "http://127.0.0.1:1"]).await;
    assert_eq!(r.code, 2, "transfer without --yes changes nothing");
    let st = s.stats().await;
    assert_eq!(
        (st.queued, st.cancelled_total, st.paused_lanes.len()),
        (3, 0, 1)
    );

    let r = cli(
        &url,
        &["stats", "--watch", "--count", "2", "--interval", "1s"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("congestion").count(), 2, "{}", r.stdout);
    assert!(r.stdout.contains("PAUSED"), "{}", r.stdout);
    assert!(
        r.stdout.contains('▁') || r.stdout.contains('█'),
        "sparkline: {}",
        r.stdout
    );

    let r = cli(
        &url,
        &["queue", "cancel", "--domain", "one.example", "--yes"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("cancelled 3"), "{}", r.stdout);
    let st = s.stats().await;
    assert_eq!((st.queued, st.cancelled_total), (0, 3));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_acts_on_ids_follows_cursors_and_transfers_to_another_node() {
    let (src_dir, dst_dir) = (tempdir(), tempdir());
    let src = TestServer::start(config(src_dir.path(), None)).await;
    let dst = TestServer::start(config(dst_dir.path(), None)).await;
    let src_url = format!("http://{}", src.handle.as_ref().unwrap().addr);
    let dst_url = format!("http://{}", dst.handle.as_ref().unwrap().addr);
    let r = cli(&src_url, &["queue", "pause"]).await;
    assert_eq!(
        r.stdout.trim(),
        "delivery paused: transactional, normal, bulk",
        "{}",
        r.stderr
    );
    let later = mailspool::model::now_ms() as i64 + 3_600_000;
    let mut ids = Vec::new();
    for i in 0..5 {
        let req = pb::EnqueueRequest {
            not_before_unix_ms: if i == 0 { later } else { 0 },
            ..request(&format!("x{i}"))
        };
        ids.push(src.enqueue(req).await.unwrap().id);
    }
    assert_eq!(src.stats().await.scheduled, 1);

    // Ids act at once, no --yes needed.
    let r = cli(&src_url, &["queue", "retry", &ids[0]]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("retried 1"), "{}", r.stdout);
    assert_eq!(src.stats().await.scheduled, 0);
    // An unknown id is a warning, not a change.
    let r = cli(&src_url, &["queue", "cancel", "00000000000000aa"]).await;
    assert!(r.stderr.contains("00000000000000aa"), "{}", r.stderr);
    assert_eq!(src.stats().await.queued, 5);

    // --all follows the cursors, one message per page here.
    let r = cli(
        &src_url,
        &["queue", "list", "--all", "--page-size", "1", "--json"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let listed: Vec<String> = r
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(listed, ids);

    // Nothing dead: purge matches nothing and changes nothing, even with --yes.
    let r = cli(&src_url, &["queue", "purge", "--older-than", "0", "--yes"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(src.stats().await.dead_total, 0);

    // Node drain through the CLI, with its progress and final line.
    let r = cli(&src_url, &["queue", "transfer", "--to", &dst_url, "--yes"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("transferred 5 to"), "{}", r.stdout);
    let (s, d) = (src.stats().await, dst.stats().await);
    assert_eq!((s.queued, s.cancelled_total, d.enqueued_total), (0, 5, 5));
    dst.wait_delivered(5).await;
    src.shutdown().await;
    dst.shutdown().await;
}

/// `token create` → the printed entry in the server's config → the CLI
/// with `--token-file` gets in, without it gets a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_gives_a_working_token_and_a_config_entry() {
    let out = std::process::Command::new(binary())
        .args([
            "token", "create", "--name", "ops", "--role", "admin", "--role", "enqueue",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find(|l| l.starts_with("mst_"))
        .expect("the token line")
        .to_string();
    let entry = &text[text.find("[[clients]]").expect("the config entry")..];
    assert!(
        !entry.contains(&token),
        "the config entry holds only the hash"
    );

    let dir = tempdir();
    let mut cfg = mailspool::Config::from_toml(entry).expect("the entry parses");
    let base = config(&dir.path().join("data"), None);
    cfg.listen = base.listen;
    cfg.data_dir = base.data_dir.clone();
    cfg.metrics_listen = base.metrics_listen.clone();
    cfg.min_free_bytes = base.min_free_bytes;
    let s = TestServer::start(cfg).await;
    let url = format!("http://{}", s.handle.as_ref().unwrap().addr);

    let r = cli(&url, &["stats", "--json"]).await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("Unauthenticated") && r.stderr.contains("--token-file"),
        "{}",
        r.stderr
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let r = cli(
        &url,
        &[
            "stats",
            "--json",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"queued\": 0"), "{}", r.stdout);
    assert!(r.stdout.contains("\"name\": \"ops\""), "{}", r.stdout);
    s.shutdown().await;
}

/// `mailspool enqueue` with the message flags: bodies from files (one from
/// standard input), attachments with a guessed and a given type, repeated
/// headers, Reply-To and an envelope sender; the outbox has what they say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_takes_files_attachments_headers_and_an_envelope_sender() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let url = format!("http://{}", s.handle.as_ref().unwrap().addr);
    // Held until its envelope is read back.
    s.admin
        .clone()
        .pause_delivery(pb::PauseDeliveryRequest::default())
        .await
        .unwrap();
    let files = tempdir();
    let html = files.path().join("body.html");
    std::fs::write(&html, "<p>Your invoice is attached.</p>").unwrap();
    let pdf = files.path().join("invoice.pdf");
    std::fs::write(&pdf, b"%PDF-1.4 fake").unwrap();
    let csv = files.path().join("usage.txt");
    std::fs::write(&csv, "day,n\n1,2\n").unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args([
            "enqueue",
            "--server",
            &url,
            "--from",
            "Billing <billing@example.com>",
        ])
        .args(["--to", "user@example.org", "--reply-to", "help@example.com"])
        .args([
            "--envelope-from",
            "bounces@example.com",
            "--subject",
            "Invoice",
        ])
        .args(["--text-file", "-", "--html-file", html.to_str().unwrap()])
        .args(["--header", "X-Tag: one", "--header", "X-Tag: two"])
        .arg("--attach")
        .arg(&pdf)
        .arg("--attach")
        .arg(format!("{};type=text/csv", csv.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"Your invoice is attached.\n")
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut admin = s.admin.clone();
    let queued = admin
        .list_messages(pb::ListMessagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(queued.messages[0].envelope_from, "bounces@example.com");
    admin
        .resume_delivery(pb::ResumeDeliveryRequest::default())
        .await
        .unwrap();
    let m = s.wait_state(&id, pb::MessageState::Delivered).await;
    let eml = outbox_files(dir.path())
        .into_iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .find(|t| t.contains(&m.message_id))
        .expect("the message in the outbox");
    for want in [
        "Reply-To: <help@example.com>",
        "X-Tag: one\r\nX-Tag: two\r\n",
        "Content-Type: multipart/mixed",
        "Content-Type: application/pdf",
        "filename=\"invoice.pdf\"",
        "Content-Type: text/csv",
        "filename=\"usage.txt\"",
        "Your invoice is attached.\r\n",
        "<p>Your invoice is attached.</p>",
    ] {
        assert!(eml.contains(want), "{want:?} missing: {eml}");
    }
    // A bad flag is told before anything is sent.
    let r = cli(
        &url,
        &[
            "enqueue",
            "--from",
            "a@example.com",
            "--to",
            "b@example.org",
            "--header",
            "no colon",
        ],
    )
    .await;
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--header `no colon`: give `Name: value`"),
        "{}",
        r.stderr
    );
    s.shutdown().await;
}
