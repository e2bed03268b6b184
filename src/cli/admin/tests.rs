//! The printing helpers as tables of data.

use super::*;

#[test]
fn clients_table_shows_quota_and_refusals() {
    let t = clients_table(&[pb::ClientStats {
        name: "billing".into(),
        queued: 12_345,
        max_queued_messages: 100_000,
        enqueued_total: 2_000_000,
        refused_quota_total: 7,
        ..Default::default()
    }]);
    let row = t.lines().find(|l| l.starts_with("billing")).expect(&t);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "billing",
            "12,345",
            "100,000",
            "2,000,000",
            "0",
            "0",
            "7",
            "0"
        ]
    );
    let none = clients_table(&[pb::ClientStats::default()]);
    assert!(none.lines().last().unwrap().contains(" - "), "{none}");
}

#[test]
fn parse_duration_table() {
    let ok: &[(&str, u64)] = &[
        ("0", 0),
        ("30", 30),
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("7d", 604_800),
        (" 5m ", 300),
    ];
    for (s, want) in ok {
        assert_eq!(parse_duration(s), Ok(*want), "{s}");
    }
    for bad in [
        "",
        "m",
        "10x",
        "1.5h",
        "-5",
        "10 m",
        "5mm",
        "99999999999999999999d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
    }
    assert!(parse_interval("0s").is_err());
    assert_eq!(parse_interval("2"), Ok(std::time::Duration::from_secs(2)));
}

#[test]
fn duration_flag_round_trips() {
    for (secs, want) in [
        (0, "0s"),
        (90, "90s"),
        (600, "10m"),
        (7200, "2h"),
        (604_800, "7d"),
        (3660, "61m"),
    ] {
        assert_eq!(duration_flag(secs), want);
        assert_eq!(parse_duration(want), Ok(secs));
    }
}

#[test]
fn thousands_table() {
    for (n, want) in [
        (0, "0"),
        (7, "7"),
        (999, "999"),
        (1000, "1,000"),
        (1234, "1,234"),
        (123_456, "123,456"),
        (1_234_567, "1,234,567"),
        (u64::MAX, "18,446,744,073,709,551,615"),
    ] {
        assert_eq!(thousands(n), want);
    }
}

#[test]
fn human_bytes_table() {
    for (n, want) in [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12 * 1024 * 1024, "12.0 MiB"),
        (5 << 30, "5.0 GiB"),
    ] {
        assert_eq!(human_bytes(n), want);
    }
}

#[test]
fn human_duration_table() {
    for (secs, want) in [
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (200, "3m 20s"),
        (252, "4m 12s"),
        (3600, "1h"),
        (3660, "1h 1m"),
        (3601, "1h"),
        (7322, "2h 2m"),
        (86400, "1d"),
        (90061, "1d 1h"),
        (86400 + 59, "1d"),
    ] {
        assert_eq!(human_duration(secs), want, "{secs}");
    }
}

#[test]
fn short_and_relative_times() {
    for (secs, want) in [
        (0, "0s"),
        (45, "45s"),
        (299, "4m"),
        (7200, "2h"),
        (3 * 86400 + 5, "3d"),
    ] {
        assert_eq!(short_duration(secs), want);
    }
    let now = 1_000_000_000;
    assert_eq!(until(now - 5000, now), "now");
    assert_eq!(until(0, now), "now");
    assert_eq!(until(now + 500, now), "now");
    assert_eq!(until(now + 4 * 60_000 + 3000, now), "in 4m");
    assert_eq!(ago(now - 200_000, now), "3m 20s ago");
    assert_eq!(ago(now + 10, now), "just now");
    assert_eq!(age_secs(now - 61_500, now), 61);
    assert_eq!(age_secs(now + 5000, now), 0);
}

#[test]
fn utc_time_table() {
    for (ms, want) in [
        (0, "1970-01-01 00:00:00 UTC"),
        (951_782_400_000, "2000-02-29 00:00:00 UTC"),
        (1_764_097_262_000, "2025-11-25 19:01:02 UTC"),
        (-1000, "1969-12-31 23:59:59 UTC"),
    ] {
        assert_eq!(utc_time(ms), want);
    }
}

#[test]
fn truncate_table() {
    for (s, w, want) in [
        ("short", 10, "short"),
        ("exactly10!", 10, "exactly10!"),
        ("a longer error text", 8, "a longe…"),
        ("line\r\nbreak", 20, "line  break"),
        ("héllo wörld", 5, "héll…"),
        ("x", 1, "x"),
        ("xy", 0, ""),
    ] {
        assert_eq!(truncate(s, w), want, "{s:?} {w}");
    }
}

#[test]
fn table_aligns_columns() {
    let rows = vec![
        vec!["a".to_string(), "1".to_string(), "x".to_string()],
        vec!["long name".to_string(), "1,000".to_string(), "".to_string()],
    ];
    let t = table(
        &["NAME", "N", "NOTE"],
        &[Align::Left, Align::Right, Align::Left],
        &rows,
    );
    let want = "NAME           N  NOTE\n\
                a              1  x\n\
                long name  1,000\n";
    assert_eq!(t, want);
}

#[test]
fn fit_last_column_cuts_to_width() {
    let mut rows = vec![vec!["id1".to_string(), "x".repeat(100)]];
    fit_last_column(&["ID", "ERR"], &mut rows, 30, 10);
    assert_eq!(rows[0][1].chars().count(), 25);
    assert!(rows[0][1].ends_with('…'));
    // Never below the minimum, however narrow the terminal.
    fit_last_column(&["ID", "ERR"], &mut rows, 3, 10);
    assert_eq!(rows[0][1].chars().count(), 10);
}

fn summary() -> pb::MessageSummary {
    pb::MessageSummary {
        id: "m1".into(),
        state: pb::MessageState::Queued as i32,
        detail: pb::StateFilter::StateScheduled as i32,
        lane: pb::Lane::Bulk as i32,
        envelope_from: "a@x.org".into(),
        envelope_to: vec!["b@y.org".into(), "c@y.org".into(), "d@z.org".into()],
        attempts: 3,
        last_error: "451 try later".into(),
        enqueued_unix_ms: 1_000_000 - 200_000,
        next_attempt_unix_ms: 1_000_000 + 240_000,
        size_bytes: 2048,
        message_id: "abc@x.org".into(),
        idempotency_key: "k1".into(),
        finished_unix_ms: 0,
    }
}

#[test]
fn list_row_columns() {
    let now = 1_000_000;
    let row = list_row(&summary(), now);
    assert_eq!(
        row,
        [
            "m1",
            "scheduled",
            "bulk",
            "3m 20s",
            "3",
            "in 4m",
            "b@y.org +2",
            "451 try later"
        ]
    );
    let mut dead = summary();
    dead.state = pb::MessageState::Dead as i32;
    dead.envelope_to.truncate(1);
    let row = list_row(&dead, now);
    assert_eq!(
        (row[1].as_str(), row[5].as_str(), row[6].as_str()),
        ("dead", "-", "b@y.org")
    );
    let mut ready = summary();
    ready.detail = pb::StateFilter::StateReady as i32;
    ready.next_attempt_unix_ms = now - 1;
    let row = list_row(&ready, now);
    assert_eq!((row[1].as_str(), row[5].as_str()), ("ready", "now"));
    let mut flying = summary();
    flying.state = pb::MessageState::InFlight as i32;
    assert_eq!(list_row(&flying, now)[1], "in-flight");
}

#[test]
fn summary_json_uses_proto_names_and_lowercase_enums() {
    let v = summary_json(&summary());
    assert_eq!(v["state"], "queued");
    assert_eq!(v["detail"], "scheduled");
    assert_eq!(v["lane"], "bulk");
    assert_eq!(v["envelope_to"][2], "d@z.org");
    assert_eq!(v["attempts"], 3);
    assert_eq!(v["next_attempt_unix_ms"], 1_240_000);
    let mut m = summary();
    m.state = pb::MessageState::InFlight as i32;
    m.detail = 0;
    let v = summary_json(&m);
    assert_eq!(
        (v["state"].as_str(), v["detail"].as_str()),
        (Some("in_flight"), Some(""))
    );
}

#[test]
fn show_text_aligns_keys_then_headers() {
    let mut rcpt = pb::RecipientStatus {
        address: "b@y.org".into(),
        attempts: 2,
        last_reply: "451 4.7.1 try later".into(),
        ..Default::default()
    };
    rcpt.set_state(pb::RecipientState::RecipientPending);
    let r = pb::ShowMessageResponse {
        message: Some(summary()),
        headers: "From: a@x.org\r\nSubject: hi\r\n".into(),
        recipients: vec![rcpt],
        events: vec![pb::Event {
            sequence: 7,
            id: "m1".into(),
            r#type: pb::EventType::EventAccepted as i32,
            ..Default::default()
        }],
        events_partial: true,
    };
    let t = show_text(&r, 1_000_000);
    assert!(t.contains("id:              m1\n"), "{t}");
    assert!(t.contains("idempotency key: k1\n"), "{t}");
    assert!(
        t.contains("next attempt:    1970-01-01 00:20:40 UTC (in 4m)\n"),
        "{t}"
    );
    assert!(
        t.contains("recipients:\n  b@y.org  pending  attempts 2  451 4.7.1 try later\n"),
        "{t}"
    );
    assert!(t.ends_with("headers:\nFrom: a@x.org\nSubject: hi\n"), "{t}");
    assert!(t.contains("events:\n       7  "), "{t}");
    assert!(t.contains("accepted"), "{t}");
    assert!(t.contains("(only the newest events were searched"), "{t}");
    assert!(!t.contains("finished"));
    let v = show_json(&r);
    assert_eq!(v["message"]["id"], "m1");
    assert_eq!(v["headers"], "From: a@x.org\r\nSubject: hi\r\n");
    assert_eq!(v["recipients"][0]["state"], "RECIPIENT_PENDING");
    assert_eq!(v["events"][0]["sequence"], 7);
    assert_eq!(v["events_partial"], true);
}

#[test]
fn describe_filter_table() {
    let f = |state: pb::StateFilter, lane: pb::Lane, domain: &str, min: u64, max: u64| {
        pb::MessageFilter {
            state: state as i32,
            lane: lane as i32,
            recipient_domain: domain.into(),
            min_age_seconds: min,
            max_age_seconds: max,
        }
    };
    use pb::{Lane as L, StateFilter as S};
    for (filter, want) in [
        (f(S::Unspecified, L::Unspecified, "", 0, 0), ""),
        (
            f(S::StateReady, L::Bulk, "example.org", 0, 0),
            "state=ready lane=bulk domain=example.org",
        ),
        (
            f(S::StateInFlight, L::Unspecified, "", 600, 7200),
            "state=in-flight min-age=10m max-age=2h",
        ),
        (
            f(S::Unspecified, L::Normal, "", 0, 90),
            "lane=normal max-age=90s",
        ),
    ] {
        assert_eq!(describe_filter(&filter), want);
        assert_eq!(filter_is_empty(&filter), want.is_empty());
    }
}

fn op(matched: u64, affected: u64, skipped: u64) -> pb::OperationResponse {
    pb::OperationResponse {
        matched,
        affected,
        skipped,
        sample_ids: vec!["a".into(), "b".into()],
        not_found: vec![],
    }
}

#[test]
fn operation_texts() {
    let what = "matching state=ready lane=bulk";
    assert_eq!(
        dry_run_text(Op::Cancel, &op(1234, 0, 0), what, 0),
        "would cancel 1,234 queued messages matching state=ready lane=bulk; e.g. a b"
    );
    assert_eq!(
        dry_run_text(Op::Cancel, &op(1237, 0, 3), what, 0),
        "would cancel 1,234 queued messages matching state=ready lane=bulk \
         (3 more match but are in flight); e.g. a b"
    );
    assert_eq!(
        dry_run_text(Op::Requeue, &op(5000, 0, 0), "matching lane=bulk", 100),
        "would requeue 100 dead letters matching lane=bulk (--limit 100); e.g. a b"
    );
    assert_eq!(
        dry_run_text(Op::Retry, &op(0, 0, 0), what, 0),
        "nothing to retry: no scheduled messages matching state=ready lane=bulk"
    );
    assert_eq!(
        confirm_text(Op::Cancel, &op(1237, 0, 3), 0),
        "nothing changed; re-run with --yes to cancel these 1,234 messages"
    );
    assert_eq!(
        confirm_text(Op::Purge, &op(50, 0, 0), 20),
        "nothing changed; re-run with --yes to purge these 20 messages"
    );
    assert_eq!(
        result_text(Op::Cancel, &op(1237, 1234, 3)),
        "cancelled 1,234 (skipped 3 in flight)"
    );
    assert_eq!(result_text(Op::Requeue, &op(2, 2, 0)), "requeued 2");
    let mut r = op(1, 1, 0);
    assert_eq!(not_found_text(&r), None);
    r.not_found = vec!["x".into(), "y".into()];
    assert_eq!(
        not_found_text(&r).unwrap(),
        "warning: 2 not found (or not in a state this applies to): x y"
    );
    let v = op_json(Op::Purge, true, &r);
    assert_eq!(
        (v["operation"].as_str(), v["dry_run"].as_bool()),
        (Some("purge"), Some(true))
    );
    assert_eq!(v["not_found"][1], "y");
}

#[test]
fn lanes_list_sorts_dedups_and_says_none() {
    let (t, n, b) = (
        pb::Lane::Transactional as i32,
        pb::Lane::Normal as i32,
        pb::Lane::Bulk as i32,
    );
    assert_eq!(lanes_list(&[]), "none");
    assert_eq!(lanes_list(&[b]), "bulk");
    assert_eq!(lanes_list(&[b, t, n, b]), "transactional, normal, bulk");
}

#[test]
fn bucket_labels_table() {
    assert_eq!(bucket_labels(&[5, 10, 20, 0]), ["5", "10", "20", "20+"]);
    assert_eq!(bucket_labels(&[5, 1280, 0]), ["5", "1280", "1280+"]);
    assert_eq!(bucket_labels(&[0]), ["0+"]);
    assert!(bucket_labels(&[]).is_empty());
}

#[test]
fn top_domains_table_has_total_first_and_right_aligned_numbers() {
    let r = pb::TopDomainsResponse {
        bucket_upper_minutes: vec![5, 10, 0],
        domains: vec![
            pb::DomainRow {
                domain: "example.org".into(),
                total: 1200,
                buckets: vec![1000, 150, 50],
            },
            pb::DomainRow {
                domain: "b.net".into(),
                total: 3,
                buckets: vec![3],
            },
        ],
        total: Some(pb::DomainRow {
            domain: String::new(),
            total: 1203,
            buckets: vec![1003, 150, 50],
        }),
        scanned: 1203,
    };
    let t = top_domains_table(&r);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "DOMAIN       TOTAL      5   10  10+");
    assert_eq!(lines[1], "TOTAL        1,203  1,003  150   50");
    assert_eq!(lines[2], "example.org  1,200  1,000  150   50");
    assert_eq!(lines[3], "b.net            3      3    0    0");
    let v = top_domains_json(&r);
    assert_eq!(v["domains"][0]["buckets"][1], 150);
    assert_eq!(v["total"]["total"], 1203);
}

#[test]
fn transfer_text_reports_counts() {
    let p = pb::TransferProgress {
        transferred: 12_000,
        duplicates: 5,
        remaining: 2,
        done: true,
    };
    assert_eq!(
        transfer_text(&p, "http://b:50051"),
        "transferred 12,000 to http://b:50051 (5 already there); 2 left here (in flight or refused)"
    );
}

#[test]
fn state_and_lane_args_map_to_proto() {
    assert_eq!(StateArg::InFlight.to_pb(), pb::StateFilter::StateInFlight);
    assert_eq!(
        StateArg::from_str("in-flight", false),
        Ok(StateArg::InFlight)
    );
    assert_eq!(LaneArg::Bulk.to_pb(), pb::Lane::Bulk);
    assert_eq!(lane_name(0), "normal");
    assert_eq!(lane_name(pb::Lane::Transactional as i32), "transactional");
}
