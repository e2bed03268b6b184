//! `mailspool drill`, short form, through the real binary: its own
//! sandbox server and relay, a surge ten times what the relay takes in a
//! second, the relay down for a few seconds in the middle. What it
//! reports is checked: nothing lost, WARNING during the surge with a
//! cause, the transactional lane within its bound, the drain ETA within a
//! factor of the actual drain, and a plot drawn.

use serde_json::Value;

use crate::support::*;

#[test]
fn the_short_drill_warns_loses_nothing_and_keeps_transactional_mail_flowing() {
    let dir = tempdir();
    let plot = dir.path().join("drill.svg");
    let out = std::process::Command::new(binary())
        .args([
            "drill",
            "--json",
            "--surge",
            "3000",
            "--relay-rate",
            "300/s",
        ])
        .args([
            "--steady",
            "20/s",
            "--lead-in",
            "3s",
            "--relay-outage",
            "3s",
        ])
        .args([
            "--outage-after",
            "2s",
            "--window",
            "5s",
            "--eta-every",
            "3s",
        ])
        .args(["--slo-transactional-p99", "15s", "--slo-detect", "10s"])
        .args(["--max-duration", "150s", "--plot"])
        .arg(&plot)
        // The sandbox server's settings: a growing queue counts from 500
        // (not 10,000), and a retry after the outage comes within seconds.
        .env("MAILSPOOL_CONGESTION_GROWTH_MIN_DEPTH", "500")
        .env("MAILSPOOL_RETRY_BASE_MS", "1000")
        .env("MAILSPOOL_RETRY_CAP_MS", "3000")
        .output()
        .expect("mailspool drill runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let s: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    assert_eq!(s["lost"], 0, "{s:#}");
    let acknowledged = s["acknowledged"].as_u64().unwrap();
    assert!(acknowledged >= 3000 + 20, "{s:#}");
    // WARNING during the surge, within its target, with a cause named.
    let warned = s["warning_after_secs"].as_f64().expect("WARNING reached");
    assert!(warned <= 10.0, "{s:#}");
    assert!(!s["first_cause"].as_str().unwrap().is_empty(), "{s:#}");
    assert!(!s["first_reason"].as_str().unwrap().is_empty(), "{s:#}");
    // The transactional lane: its p99 within the bound the drill was given.
    let p99 = s["transactional_p99_secs"].as_f64().unwrap();
    assert!(p99 <= 15.0, "{s:#}");
    assert!(s["windows"].as_array().unwrap().len() >= 3, "{s:#}");
    // An ETA shown while draining was within a factor of 4 of the drain
    // that followed.
    let close = s["eta_checks"].as_array().unwrap().iter().any(|e| {
        let (shown, actual) = (
            e["shown_secs"].as_f64().unwrap(),
            e["actual_secs"].as_f64().unwrap(),
        );
        shown > 0.0 && actual >= 2.0 && shown / actual <= 4.0 && actual / shown <= 4.0
    });
    assert!(close, "{:#}", s["eta_checks"]);
    assert!(s["backlog_peak"].as_u64().unwrap() > 500, "{s:#}");
    assert!(s["time_to_empty_secs"].as_f64().is_some(), "{s:#}");
    assert_eq!(s["pass"], true, "{s:#}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<path d=\"M") && svg.contains("relay down"),
        "{svg}"
    );
}

/// A server that holds other mail is not drilled without `--yes`, and
/// nothing is sent to it; a bad rate is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_against_a_server_with_other_traffic_is_refused_without_yes() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    s.pause_all().await;
    s.enqueue(request("someone else's")).await.unwrap();
    let url = format!("http://{}", s.handle.as_ref().unwrap().addr);
    let out = tokio::process::Command::new(binary())
        .args(["drill", "--server", &url, "--surge", "10"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("holds other traffic (1 queued") && stderr.contains("--yes"),
        "{stderr}"
    );
    assert_eq!(s.stats().await.enqueued_total, 1, "nothing was sent");
    s.shutdown().await;

    let bad = tokio::process::Command::new(binary())
        .args(["drill", "--steady", "fast"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("`fast` is not a rate"), "{stderr}");
}

/// `mailspool capacity` from a saved bench report: the plan for a surge,
/// and a surge too large for the disk named as such.
#[test]
fn capacity_answers_from_a_bench_report() {
    let dir = tempdir();
    let report = dir.path().join("bench.txt");
    std::fs::write(
        &report,
        "durable EnqueueBatch of 100, 4 calls in flight: 40000 msg/s; per call p50 9 ms\n\
         data dir with 100000 queued (sizing: disk per queued message): 266.8 MiB = 2800 B per message (2.60 GiB per million 2048 B messages)\n\
         drain to smtp-sink after the restart (end to end): 99% / all: 9000 msg/s to 99% (11.2 s)\n",
    )
    .unwrap();
    let run = |disk: &str| {
        let out = std::process::Command::new(binary())
            .args(["capacity", "--json", "--bench-results"])
            .arg(&report)
            .args([
                "--surge",
                "150000",
                "--surge-rate",
                "5000/s",
                "--relay-rate",
                "300/s",
            ])
            .args([
                "--relay-rate",
                "100/s",
                "--steady",
                "50/s",
                "--disk-free",
                disk,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let v = run("10GiB");
    let p = &v["plan"];
    assert_eq!(v["measured"]["accept_rate"], 40000.0);
    assert_eq!(p["drain_rate"], 400.0, "two relays: 300 + 100");
    assert!(
        (p["drain_secs"].as_f64().unwrap() - 150000.0 / 350.0).abs() < 0.01,
        "{p}"
    );
    assert_eq!(p["absorbs_surge"], true);
    assert_eq!(p["transactional_ok"], true);
    // 400 MiB free: 100 MiB above the bulk floor holds 37,449 messages.
    let small = run("400MiB");
    assert_eq!(small["plan"]["absorbs_surge"], false);
    assert_eq!(small["plan"]["absorb_messages"], (100u64 << 20) / 2800);
    assert_eq!(small["plan"]["nodes_needed"], 5);
}
