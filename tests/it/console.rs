//! The web console in a real headless Chromium, driven over WebDriver
//! (Debian's chromium and chromium-driver): what it shows is what
//! QueueStats says, its banner warns, its chart is drawn. Screenshots go
//! to target/console-screenshots/ for a reviewer.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use mailspool::model::thousands;
use mailspool::pb;
use serde_json::json;

use crate::support::*;

/// chromedriver on a free port and a headless Chromium session.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Browser {
        Browser::start_with(&[]).await
    }

    /// With more Chromium arguments (a dark colour scheme, say).
    async fn start_with(more: &[&str]) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver)");
        let up = wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "chromedriver did not listen");
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1100",
        ];
        args.extend_from_slice(more);
        let caps = json!({
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        });
        let caps = caps.as_object().unwrap().clone();
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Browser {
            client,
            _driver: driver,
        }
    }

    async fn text(&self, id: &str) -> String {
        match self.client.find(Locator::Id(id)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Saves a screenshot as target/console-screenshots/NAME.png.
    async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

#[cfg_attr(
    not(have_chromium),
    ignore = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_what_queue_stats_says_warns_and_draws_its_chart() {
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    cfg.congestion_warn_age_secs = 3;
    cfg.congestion_critical_age_secs = 3600;
    let s = TestServer::start(cfg).await;
    let metrics = s.metrics_addr();
    s.pause_all().await;
    for i in 0..3 {
        s.enqueue(request(&format!("waiting {i}"))).await.unwrap();
    }
    s.enqueue(with_lane(request("bulk"), pb::Lane::Bulk))
        .await
        .unwrap();

    let b = Browser::start().await;
    b.client.goto(&format!("http://{metrics}/")).await.unwrap();
    // The page's figures are QueueStats' (the queue holds still: delivery
    // is paused, nothing else arrives).
    let st = s.stats().await;
    let same = wait_until(Duration::from_secs(20), || async {
        b.text("queued").await == thousands(st.queued)
            && b.text("ready").await == thousands(st.ready)
            && b.text("dead").await == thousands(st.dead)
    })
    .await;
    assert!(
        same,
        "page shows queued {:?}, QueueStats {st:?}",
        b.text("queued").await
    );
    assert_eq!(st.queued, 4);
    let lanes = b.text("lanes").await;
    assert!(
        lanes.contains("normal 3 paused") && lanes.contains("bulk 1 paused"),
        "{lanes}"
    );

    // Past 3 s the oldest message makes it WARNING: the banner says so,
    // with the cause and its runbook.
    let warned = wait_until(Duration::from_secs(20), || async {
        b.text("congestion").await == "WARNING"
    })
    .await;
    assert!(warned, "banner: {}", b.text("banner").await);
    let banner = b.client.find(Locator::Id("banner")).await.unwrap();
    assert_eq!(
        banner.attr("class").await.unwrap().as_deref(),
        Some("banner WARNING")
    );
    let st = s.stats().await;
    // The reason as QueueStats gives it: the cause first, then the age.
    let reason = b.text("congestion-reason").await;
    let cause_text = st.congestion_reason.split("; ").next().unwrap().to_string();
    assert!(
        cause_text.starts_with("delivery paused by an operator"),
        "{st:?}"
    );
    assert!(
        reason.starts_with(&cause_text) && reason.contains("oldest message"),
        "{reason}"
    );
    let runbook = b
        .client
        .find(Locator::Id("congestion-runbook"))
        .await
        .unwrap();
    assert_eq!(
        runbook.attr("href").await.unwrap().unwrap_or_default(),
        st.congestion_runbook
    );

    // The chart: the queued line drawn from the server's history (pixels
    // of its colour, #1f77b4 in the light scheme), not an empty frame.
    let drawn = wait_until(Duration::from_secs(20), || async {
        let inked = b
            .client
            .execute(
                "const c = document.getElementById('chart');
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                 let n = 0;
                 for (let i = 0; i < d.length; i += 4)
                   if (Math.abs(d[i] - 31) < 30 && Math.abs(d[i+1] - 119) < 30 && Math.abs(d[i+2] - 180) < 30 && d[i+3] > 128) n++;
                 return n;",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        inked > 300
    })
    .await;
    assert!(drawn, "the chart has no queued line");
    b.screenshot("overview").await;
    b.client.set_window_size(390, 844).await.unwrap();
    // On a phone screen the page fits its width (wide tables scroll in
    // their own box) and the banner is still the first thing shown.
    let fits = b
        .client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth,
                     document.getElementById('banner').getBoundingClientRect().top];",
            vec![],
        )
        .await
        .unwrap();
    let n = |i: usize| fits[i].as_f64().unwrap();
    assert!(n(0) <= n(1), "the page is wider than the phone: {fits}");
    assert!(n(2) < 200.0, "the banner is not at the top: {fits}");
    b.screenshot("overview-phone").await;
    b.client.close().await.unwrap();
    s.shutdown().await;
}

/// (status line, headers, body) of a GET on the HTTP listener.
async fn get_raw(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// Without auth the page comes with a policy that allows only its own
/// script and style; with auth on (clients configured) the page (no data
/// in it) is served, and its data needs a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_console_data_needs_a_login() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let addr = s.metrics_addr();
    let (status, headers, body) = get_raw(addr, "/").await;
    assert!(status.ends_with("200 OK"), "{status}");
    assert!(
        headers.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{headers}"
    );
    assert!(body.contains("<script src=\"/console.js\""));
    let (status, _, body) = get_raw(addr, "/api/overview").await;
    assert!(
        status.ends_with("200 OK") && body.contains("\"queued\":0"),
        "{body}"
    );
    // A bad filter is refused naming the field, as on gRPC.
    let (status, _, body) = get_raw(addr, "/api/messages?state=stuck").await;
    assert!(status.ends_with("400 Bad Request"), "{status}");
    assert!(body.contains(r#""field":"state""#), "{body}");
    let (status, _, body) = get_raw(addr, "/api/messages/not-an-id").await;
    assert!(
        status.ends_with("400 Bad Request") && body.contains("id"),
        "{status} {body}"
    );
    s.shutdown().await;

    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    cfg.clients = vec![mailspool::intake::auth::ClientConfig::with_token(
        "ops",
        mailspool::intake::auth::token_hash("mst_ops-token-0123456789"),
        &[mailspool::intake::auth::Role::Admin],
    )];
    let s = TestServer::start(cfg).await;
    let addr = s.metrics_addr();
    let (status, _, page) = get_raw(addr, "/").await;
    assert!(
        status.ends_with("200 OK") && page.contains("id=\"login\""),
        "{status}"
    );
    for path in [
        "/api/overview",
        "/api/history",
        "/api/messages",
        "/api/session",
    ] {
        let (status, _, body) = get_raw(addr, path).await;
        assert!(status.ends_with("401 Unauthorized"), "{path}: {status}");
        assert!(
            body.contains("log in with an admin token") && !body.contains("queued"),
            "{path}: {body}"
        );
    }
    // /metrics is not the console: it stays.
    assert!(http_get(addr, "/metrics")
        .await
        .contains("mailspool_queue_messages"));
    s.shutdown().await;
}

/// The message pages: the list is ListMessages' (filters and all), a
/// message opens with its envelope and headers, and what a message says
/// is shown as text: a `<script>` in its subject or HTML body never runs.
#[cfg_attr(
    not(have_chromium),
    ignore = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_listed_as_the_admin_api_lists_them_and_shown_as_text() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let metrics = s.metrics_addr();
    s.pause_all().await;
    s.enqueue(request("one")).await.unwrap();
    s.enqueue(request("two")).await.unwrap();
    let mut hostile = with_lane(request("<script>window.__xss=1</script>"), pb::Lane::Bulk);
    hostile.email.as_mut().unwrap().html_body =
        "<p>hi</p><script>window.__xss2=1</script><img src=x onerror=\"window.__xss3=1\">".into();
    let bulk_id = s.enqueue(hostile).await.unwrap().id;
    let listed: std::collections::BTreeSet<String> = s
        .admin
        .clone()
        .list_messages(pb::ListMessagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed.len(), 3);

    let b = Browser::start().await;
    b.client.goto(&format!("http://{metrics}/")).await.unwrap();
    // Top domains, as TopDomains counts them.
    let top = s
        .admin
        .clone()
        .top_domains(pb::TopDomainsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.domains[0].domain, "example.org");
    let want = format!("example.org {}", top.domains[0].total);
    let qshape = wait_until(Duration::from_secs(10), || async {
        b.text("domains").await.starts_with(&want)
    })
    .await;
    assert!(qshape, "{:?} vs {want}", b.text("domains").await);
    assert!(b.text("domains").await.contains("TOTAL 3"));
    let shown = || async {
        let mut ids = std::collections::BTreeSet::new();
        for a in b
            .client
            .find_all(Locator::Css("a.message-link"))
            .await
            .unwrap_or_default()
        {
            ids.insert(a.text().await.unwrap_or_default());
        }
        ids
    };
    b.client
        .find(Locator::Id("f-list"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let all = wait_until(Duration::from_secs(10), || async {
        shown().await == listed
    })
    .await;
    assert!(
        all,
        "page lists {:?}, ListMessages {listed:?}",
        shown().await
    );
    // A filter: lane bulk.
    b.client
        .find(Locator::Id("f-lane"))
        .await
        .unwrap()
        .select_by_value("bulk")
        .await
        .unwrap();
    b.client
        .find(Locator::Id("f-list"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let only_bulk = std::collections::BTreeSet::from([bulk_id.clone()]);
    let filtered = wait_until(Duration::from_secs(10), || async {
        shown().await == only_bulk
    })
    .await;
    assert!(filtered, "{:?}", shown().await);
    b.screenshot("messages").await;

    // The message, opened: its headers as text, its scripts not run.
    b.client
        .find(Locator::Css("a.message-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let opened = wait_until(Duration::from_secs(10), || async {
        b.text("m-headers")
            .await
            .contains("Subject: <script>window.__xss=1</script>")
    })
    .await;
    assert!(opened, "headers: {}", b.text("m-headers").await);
    assert_eq!(b.text("m-id").await, bulk_id);
    assert_eq!(b.text("m-lane").await, "bulk");
    let ran = b
        .client
        .execute(
            "return [window.__xss, window.__xss2, window.__xss3].filter(x => x !== undefined).length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        ran,
        serde_json::json!(0),
        "a message's script ran in the console"
    );
    let scripts = b
        .client
        .execute(
            "return document.querySelectorAll('#message script, #message img').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(scripts, serde_json::json!(0));
    b.screenshot("message").await;
    b.client.close().await.unwrap();
    s.shutdown().await;
}

/// Clicks the first element matching `css`.
async fn click(b: &Browser, css: &str) {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Actions from the page: a bulk cancel shows its dry run (count, sample
/// ids) and changes nothing until confirmed; a dead letter requeued from
/// its message page is queued again (both checked through gRPC).
#[cfg_attr(
    not(have_chromium),
    ignore = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_run_a_dry_run_first_and_go_through_the_admin_api() {
    use crate::support::smtp::{Mode, SmtpPeer};
    let peer = SmtpPeer::start(Mode::Reject).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), Some(peer.url()))).await;
    let metrics = s.metrics_addr();
    let dead = s.enqueue(request("refused")).await.unwrap().id;
    s.wait_state(&dead, pb::MessageState::Dead).await;
    s.pause_all().await;
    // Other recipients: the rejected one is on the suppression list now.
    for i in 0..3 {
        let mut r = request(&format!("to cancel {i}"));
        r.email.as_mut().unwrap().to = vec![format!("other{i}@example.org")];
        s.enqueue(r).await.unwrap();
    }

    let b = Browser::start().await;
    b.client.goto(&format!("http://{metrics}/")).await.unwrap();
    // Cancel what the filter matches (queued): the dry run first.
    click(&b, ".bulk-action[data-op=cancel]").await;
    let asked = wait_until(Duration::from_secs(10), || async {
        b.text("confirm-text").await.starts_with("cancel: 3 match")
    })
    .await;
    assert!(asked, "{}", b.text("confirm").await);
    assert!(b.text("confirm-sample").await.starts_with("e.g. "));
    b.screenshot("cancel-dry-run").await;
    assert_eq!(s.stats().await.queued, 3, "a dry run changes nothing");
    click(&b, "#confirm-no").await;
    assert_eq!(b.text("action-result").await, "nothing changed");
    assert_eq!(s.stats().await.queued, 3);
    click(&b, ".bulk-action[data-op=cancel]").await;
    let asked = wait_until(Duration::from_secs(10), || async {
        b.text("confirm-text").await.starts_with("cancel: 3 match")
    })
    .await;
    assert!(asked);
    click(&b, "#confirm-yes").await;
    let done = wait_until(Duration::from_secs(10), || async {
        b.text("action-result").await == "cancel: matched 3, affected 3, skipped 0"
    })
    .await;
    assert!(done, "{}", b.text("action-result").await);
    assert_eq!(s.stats().await.queued, 0);

    // Purge: its dry run counts the dead letter; Back changes nothing.
    let purge_age = b.client.find(Locator::Id("purge-age")).await.unwrap();
    purge_age.clear().await.unwrap();
    purge_age.send_keys("0").await.unwrap();
    click(&b, "#purge").await;
    let asked = wait_until(Duration::from_secs(10), || async {
        b.text("confirm-text").await.starts_with("purge: 1 match")
    })
    .await;
    assert!(asked, "{}", b.text("confirm").await);
    click(&b, "#confirm-no").await;
    assert_eq!(s.stats().await.dead, 1);
    // The suppression list: an address added, then removed.
    let suppressions = || async {
        s.admin
            .clone()
            .list_suppressions(pb::ListSuppressionsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .map(|x| x.address)
            .collect::<Vec<_>>()
    };
    b.client
        .find(Locator::Id("suppress-address"))
        .await
        .unwrap()
        .send_keys("complainer@example.net")
        .await
        .unwrap();
    click(&b, "#suppress").await;
    let added = wait_until(Duration::from_secs(10), || async {
        suppressions()
            .await
            .contains(&"complainer@example.net".to_string())
    })
    .await;
    assert!(
        added,
        "{} | {}",
        b.text("action-result").await,
        b.text("messages-error").await
    );
    click(&b, "#unsuppress").await;
    let removed = wait_until(Duration::from_secs(10), || async {
        !suppressions()
            .await
            .contains(&"complainer@example.net".to_string())
    })
    .await;
    assert!(removed, "{}", b.text("action-result").await);

    // The dead letter, found by its state and requeued from its page.
    b.client
        .find(Locator::Id("f-state"))
        .await
        .unwrap()
        .select_by_value("dead")
        .await
        .unwrap();
    click(&b, "#f-list").await;
    let listed = wait_until(Duration::from_secs(10), || async {
        b.text("messages").await.contains(&dead)
    })
    .await;
    assert!(listed, "{}", b.text("messages").await);
    click(&b, "a.message-link").await;
    let opened = wait_until(Duration::from_secs(10), || async {
        b.text("m-id").await == dead
    })
    .await;
    assert!(opened);
    assert_eq!(b.text("m-state").await, "dead");
    // Each recipient's outcome, as GetMessage tells it.
    let rcpts = b.text("m-recipients").await;
    assert!(
        rcpts.starts_with("user@example.org bounced 1 550"),
        "{rcpts}"
    );
    // Its events, as the event log has them: accepted, bounced, dead.
    let kinds: Vec<String> = {
        let mut v = Vec::new();
        for row in b
            .client
            .find_all(Locator::Css("#m-events tr td:nth-child(3)"))
            .await
            .unwrap()
        {
            v.push(row.text().await.unwrap());
        }
        v
    };
    assert_eq!(kinds, ["accepted", "bounced", "dead_lettered"], "{kinds:?}");
    assert!(b.text("m-events").await.contains("550"));
    click(&b, ".one-action[data-op=requeue]").await;
    let asked = wait_until(Duration::from_secs(10), || async {
        b.text("confirm-text").await.starts_with("requeue: 1 match")
    })
    .await;
    assert!(asked, "{}", b.text("confirm").await);
    assert_eq!(
        s.get(&dead).await.unwrap().state(),
        pb::MessageState::Dead,
        "not before it is confirmed"
    );
    click(&b, "#confirm-yes").await;
    let requeued = wait_until(Duration::from_secs(10), || async {
        s.get(&dead)
            .await
            .is_ok_and(|m| m.state() == pb::MessageState::Queued)
    })
    .await;
    assert!(requeued, "{}", b.text("action-result").await);
    // The page shows the result once the browser has the response, which
    // may be a moment after the server made the change.
    let shown = wait_until(Duration::from_secs(10), || async {
        b.text("action-result").await == "requeue: matched 1, affected 1, skipped 0"
    })
    .await;
    assert!(shown, "{}", b.text("action-result").await);
    b.screenshot("requeued").await;
    // A lane resumed from its row.
    click(&b, "#lane-bulk").await;
    let resumed = wait_until(Duration::from_secs(10), || async {
        !s.stats()
            .await
            .paused_lanes
            .contains(&(pb::Lane::Bulk as i32))
    })
    .await;
    assert!(resumed, "{}", b.text("action-result").await);
    assert!(s
        .stats()
        .await
        .paused_lanes
        .contains(&(pb::Lane::Normal as i32)));
    b.client.close().await.unwrap();
    s.shutdown().await;
}

/// POST an action with these headers; (status line, body).
async fn post_raw(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
    body: &str,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// An action from another origin, or not from the console's page, is
/// refused and changes nothing, with auth or without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_actions_are_refused() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let addr = s.metrics_addr();
    s.pause_all().await;
    s.enqueue(request("kept")).await.unwrap();
    let body = r#"{"filter":{},"dry_run":false}"#;
    let json = "Content-Type: application/json\r\n";
    let console = "X-Mailspool-Console: 1\r\n";
    for (headers, why) in [
        (
            format!("{json}{console}Origin: http://evil.example\r\n"),
            "cross-origin",
        ),
        (
            format!("{json}{console}Sec-Fetch-Site: cross-site\r\n"),
            "cross-origin",
        ),
        (json.to_string(), "X-Mailspool-Console"),
        (format!("Content-Type: text/plain\r\n{console}"), "JSON"),
    ] {
        let (status, text) = post_raw(addr, "/api/actions/cancel", &headers, body).await;
        assert!(status.ends_with("403 Forbidden"), "{headers}: {status}");
        assert!(text.contains(why), "{text}");
        assert_eq!(s.stats().await.queued, 1, "{headers}: something changed");
    }
    // From the console's own origin: a dry run answers, and changes nothing.
    let own = format!("{json}{console}Origin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n");
    let (status, text) = post_raw(
        addr,
        "/api/actions/cancel",
        &own,
        r#"{"filter":{},"dry_run":true}"#,
    )
    .await;
    assert!(status.ends_with("200 OK"), "{status} {text}");
    assert!(
        text.contains(r#""matched":1"#) && text.contains(r#""affected":0"#),
        "{text}"
    );
    let (status, text) = post_raw(addr, "/api/actions/explode", &own, "{}").await;
    assert!(
        status.ends_with("400 Bad Request") && text.contains(r#""field":"action""#),
        "{text}"
    );
    assert_eq!(s.stats().await.queued, 1);
    s.shutdown().await;
}

const ADMIN: &str = "mst_ops-token-0123456789";
const SENDER: &str = "mst_svc-token-0123456789";

/// With auth on, in a real browser: no credential → the login form; a
/// wrong token and a token without the admin role refused; an admin token
/// → the overview; the session ends after `console_session_secs`, and the
/// page asks again. Over raw HTTP: the cookie is HttpOnly and
/// SameSite=Strict, and an action without the session's CSRF token, or
/// from another origin with the cookie, is refused.
#[cfg_attr(
    not(have_chromium),
    ignore = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_logs_in_the_session_expires_and_actions_need_its_csrf_token() {
    use mailspool::intake::auth::{token_hash, ClientConfig, Role};
    let dir = tempdir();
    let mut cfg = config(dir.path(), None);
    cfg.clients = vec![
        ClientConfig::with_token("ops", token_hash(ADMIN), &[Role::Admin]),
        ClientConfig::with_token("svc", token_hash(SENDER), &[Role::Enqueue]),
    ];
    cfg.console_session_secs = 4;
    let s = TestServer::start(cfg).await;
    let addr = s.metrics_addr();

    // Raw HTTP first: the login's cookie, and what an action needs.
    let own = format!(
        "Content-Type: application/json\r\nX-Mailspool-Console: 1\r\nOrigin: http://{addr}\r\n"
    );
    let (status, text) = post_raw(addr, "/api/login", &own, r#"{"token":"mst_wrong"}"#).await;
    assert!(
        status.ends_with("401 Unauthorized") && text.contains("not a valid admin token"),
        "{text}"
    );
    let (status, text) = post_raw(
        addr,
        "/api/login",
        &own,
        &format!(r#"{{"token":"{SENDER}"}}"#),
    )
    .await;
    assert!(
        status.ends_with("403 Forbidden") && text.contains("admin role"),
        "{text}"
    );
    let (status, head, text) = login_raw(addr, &own).await;
    assert!(status.ends_with("200 OK"), "{status} {text}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    assert!(!text.contains(ADMIN), "the token is never echoed");
    let session = cookie.split(';').next().unwrap().to_string();
    let csrf = serde_json::from_str::<serde_json::Value>(&text).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let body = r#"{"filter":{},"dry_run":true}"#;
    let with_cookie = format!("{own}Cookie: {session}\r\n");
    let (status, text) = post_raw(addr, "/api/actions/cancel", &with_cookie, body).await;
    assert!(
        status.ends_with("403 Forbidden") && text.contains("CSRF"),
        "{text}"
    );
    let evil = format!(
        "Content-Type: application/json\r\nX-Mailspool-Console: 1\r\nOrigin: http://evil.example\r\nCookie: {session}\r\nX-CSRF-Token: {csrf}\r\n"
    );
    let (status, text) = post_raw(addr, "/api/actions/cancel", &evil, body).await;
    assert!(
        status.ends_with("403 Forbidden") && text.contains("cross-origin"),
        "{text}"
    );
    let good = format!("{with_cookie}X-CSRF-Token: {csrf}\r\n");
    let (status, text) = post_raw(addr, "/api/actions/cancel", &good, body).await;
    assert!(
        status.ends_with("200 OK") && text.contains(r#""matched":0"#),
        "{status} {text}"
    );

    // In the browser.
    let b = Browser::start().await;
    b.client.goto(&format!("http://{addr}/")).await.unwrap();
    let asked = wait_until(Duration::from_secs(10), || async {
        b.client.find(Locator::Id("login")).await.ok().is_some()
            && b.text("login-title").await == "Log in"
            && b.text("queued").await.is_empty()
    })
    .await;
    assert!(asked, "no login form");
    b.screenshot("login").await;
    log_in(&b, "mst_not-it").await;
    let refused = wait_until(Duration::from_secs(10), || async {
        b.text("login-error").await == "not a valid admin token"
    })
    .await;
    assert!(refused, "{}", b.text("login-error").await);
    log_in(&b, ADMIN).await;
    let shown = wait_until(Duration::from_secs(10), || async {
        b.text("queued").await == "0" && b.text("congestion").await == "OK"
    })
    .await;
    assert!(shown, "{}", b.text("updated").await);
    // The session lasts 4 s: then the page asks again.
    let ended = wait_until(Duration::from_secs(15), || async {
        b.text("login-error").await.contains("session has ended")
    })
    .await;
    assert!(ended, "{}", b.text("login-error").await);
    b.screenshot("session-ended").await;
    b.client.close().await.unwrap();
    s.shutdown().await;
}

/// Types `token` into the login form and submits it.
async fn log_in(b: &Browser, token: &str) {
    let input = b.client.find(Locator::Id("token")).await.unwrap();
    input.send_keys(token).await.unwrap();
    click(b, "#login-button").await;
}

/// POST /api/login with the admin token: (status line, lowercase head, body).
async fn login_raw(addr: std::net::SocketAddr, headers: &str) -> (String, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(r#"{{"token":"{ADMIN}"}}"#);
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    (status, head.to_lowercase(), body.to_string())
}

/// Dark mode and the keyboard: with the browser preferring a dark scheme
/// the page is dark (its background computed dark, text light); the
/// filter form is reached and submitted with Tab and Enter alone.
#[cfg_attr(
    not(have_chromium),
    ignore = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_dark_when_asked_and_works_by_keyboard() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let metrics = s.metrics_addr();
    s.pause_all().await;
    let id = s.enqueue(request("by keyboard")).await.unwrap().id;
    let b = Browser::start_with(&["--blink-settings=preferredColorScheme=0"]).await;
    b.client.goto(&format!("http://{metrics}/")).await.unwrap();
    let colours = b
        .client
        .execute(
            "const s = getComputedStyle(document.body);
             return [matchMedia('(prefers-color-scheme: dark)').matches, s.backgroundColor, s.color];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(colours[0], json!(true), "{colours}");
    assert_eq!(colours[1], json!("rgb(18, 20, 23)"), "{colours}");
    assert_eq!(colours[2], json!("rgb(232, 232, 232)"), "{colours}");
    let shown = wait_until(Duration::from_secs(10), || async {
        b.text("queued").await == "1"
    })
    .await;
    assert!(shown);
    b.screenshot("overview-dark").await;
    // Keyboard: focus the state filter, Tab to the List button, Enter.
    b.client
        .execute("document.getElementById('f-state').focus();", vec![])
        .await
        .unwrap();
    let keys = format!(
        "{}{}{}{}{}",
        '\u{E004}', '\u{E004}', '\u{E004}', '\u{E004}', '\u{E007}'
    );
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(&keys)
        .await
        .unwrap();
    let focused = b
        .client
        .execute("return document.activeElement.id;", vec![])
        .await
        .unwrap();
    assert_eq!(
        focused,
        json!("f-list"),
        "Tab order: state, lane, domain, age, List"
    );
    let listed = wait_until(Duration::from_secs(10), || async {
        b.text("messages").await.contains(&id)
    })
    .await;
    assert!(listed, "{}", b.text("messages").await);
    // The overview's refresh leaves the focus where it is (a lane's
    // button is updated in place, not made again).
    b.client
        .execute("document.getElementById('lane-bulk').focus();", vec![])
        .await
        .unwrap();
    let before = b.text("updated").await;
    let refreshed = wait_until(Duration::from_secs(10), || async {
        b.text("updated").await != before
    })
    .await;
    assert!(refreshed);
    let focused = b
        .client
        .execute("return document.activeElement.id;", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("lane-bulk"), "a refresh took the focus away");
    b.client
        .execute("document.activeElement.blur();", vec![])
        .await
        .unwrap();
    // On by Tab to the message's link; Enter opens it.
    assert!(
        tab_to(&b, "a.message-link", 20).await,
        "no Tab reaches the message"
    );
    press(&b, '\u{E007}').await;
    let opened = wait_until(Duration::from_secs(10), || async {
        b.text("m-id").await == id
    })
    .await;
    assert!(opened);
    // Its cancel button, then the dry run's Confirm, by Tab and Enter.
    assert!(
        tab_to(&b, ".one-action[data-op=cancel]", 30).await,
        "no Tab reaches cancel"
    );
    press(&b, '\u{E007}').await;
    let asked = wait_until(Duration::from_secs(10), || async {
        b.text("confirm-text").await.starts_with("cancel: 1 match")
    })
    .await;
    assert!(asked, "{}", b.text("confirm").await);
    assert!(
        tab_to(&b, "#confirm-yes", 30).await,
        "no Tab reaches Confirm"
    );
    press(&b, '\u{E007}').await;
    s.wait_state(&id, pb::MessageState::Cancelled).await;
    b.client.close().await.unwrap();
    s.shutdown().await;
}

/// Presses one key (a WebDriver key code) as a keyboard would: on
/// whatever has the focus, without holding a reference to an element.
async fn press(b: &Browser, key: char) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    b.client.perform_actions(keys).await.unwrap();
}

/// Tabs (at most `max` times) until the focused element matches `css`.
async fn tab_to(b: &Browser, css: &str, max: usize) -> bool {
    let matches = format!("return document.activeElement.matches({css:?});");
    for _ in 0..max {
        press(b, '\u{E004}').await;
        if b.client.execute(&matches, vec![]).await.unwrap() == json!(true) {
            return true;
        }
    }
    false
}
