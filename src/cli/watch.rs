//! `mailspool stats --watch`: a live view of `QueueStats`, redrawn every
//! interval until Ctrl-C (or `--count` refreshes). [`render`] and
//! [`sparkline`] are pure; [`run`] is the polling loop. An unreachable server
//! is shown in the view and polled again, never a reason to exit.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::cli::admin::{ago, human_bytes, human_duration, lane_name, thousands, utc_time};
use crate::pb;

/// Samples kept for the sparkline.
pub const HISTORY: usize = 60;

/// The total depth (`queued`) of the last [`HISTORY`] answers, oldest first.
#[derive(Debug, Default, Clone)]
pub struct History {
    samples: VecDeque<u64>,
}

impl History {
    pub fn push(&mut self, depth: u64) {
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(depth);
    }

    pub fn samples(&self) -> Vec<u64> {
        self.samples.iter().copied().collect()
    }
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One bar per value, scaled from zero to the largest value: zero is `▁`,
/// the largest `█`, and any non-zero value at least `▂` (so an almost empty
/// queue does not look empty).
pub fn sparkline(values: &[u64]) -> String {
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            if v == 0 || max == 0 {
                return BARS[0];
            }
            let top = (BARS.len() - 1) as u128;
            let i = (u128::from(v) * top + u128::from(max) / 2) / u128::from(max);
            BARS[(i as usize).max(1)]
        })
        .collect()
}

/// The drain ETA in words: `—` when empty, `not draining` when -1.
pub fn eta_text(s: &pb::QueueStatsResponse) -> String {
    let eta = s.drain_eta_seconds;
    if eta < 0.0 {
        "not draining".into()
    } else if s.queued == 0 || eta == 0.0 {
        "—".into()
    } else if eta < 1.0 {
        "<1s".into()
    } else {
        human_duration(eta.round() as u64)
    }
}

/// What the view shows besides the answer itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct View<'a> {
    /// ANSI colours (stdout is a terminal).
    pub color: bool,
    /// The last poll failed with this error.
    pub error: Option<&'a str>,
    /// When the answer shown was received (for "last answer 12s ago").
    pub answered_ms: Option<i64>,
}

fn paint(text: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn congestion_code(c: pb::Congestion) -> &'static str {
    match c {
        pb::Congestion::Ok => "32",
        pb::Congestion::Warning => "33",
        pb::Congestion::Critical => "1;31",
    }
}

/// The screen for one answer, plain text (see [`render_view`]).
#[cfg(test)]
fn render(s: &pb::QueueStatsResponse, history: &History, server: &str, now_ms: i64) -> String {
    render_view(Some(s), history, server, now_ms, &View::default())
}

/// The screen: a header, an `unreachable:` line if the last poll failed,
/// then the last answer (if any) with the depth sparkline.
pub fn render_view(
    s: Option<&pb::QueueStatsResponse>,
    history: &History,
    server: &str,
    now_ms: i64,
    view: &View,
) -> String {
    let mut out = format!(
        "mailspool {server}  {}  (Ctrl-C to quit)\n",
        utc_time(now_ms)
    );
    if let Some(e) = view.error {
        let mut line = format!("unreachable: {e}");
        if let Some(at) = view.answered_ms {
            line.push_str(&format!(" (last answer {}; retrying)", ago(at, now_ms)));
        } else {
            line.push_str(" (retrying)");
        }
        out.push_str(&paint(&line, "1;31", view.color));
        out.push('\n');
    }
    let Some(s) = s else {
        return out;
    };
    out.push('\n');
    let line = |out: &mut String, key: &str, value: &str| {
        out.push_str(format!("{key:<15} {value}").trim_end());
        out.push('\n');
    };
    let count = |n: u64| format!("{:>12}", thousands(n));

    let mut congestion = paint(
        s.congestion().as_str_name(),
        congestion_code(s.congestion()),
        view.color,
    );
    if !s.congestion_reason.is_empty() {
        congestion.push_str(&format!("  {}", s.congestion_reason));
    }
    if s.congestion_since_unix_ms > 0 {
        congestion.push_str(&format!(
            "  (since {}, {})",
            utc_time(s.congestion_since_unix_ms),
            ago(s.congestion_since_unix_ms, now_ms)
        ));
    }
    line(&mut out, "congestion", &congestion);
    if !s.congestion_cause.is_empty() {
        line(&mut out, "cause", &s.congestion_cause);
        line(&mut out, "runbook", &s.congestion_runbook);
    }
    out.push('\n');
    line(&mut out, "queued", &count(s.queued));
    for (k, n) in [
        ("  ready", s.ready),
        ("  scheduled", s.scheduled),
        ("  in flight", s.in_flight),
        ("dead", s.dead),
        ("quarantined", s.quarantined),
    ] {
        line(&mut out, k, &count(n));
    }
    out.push_str("by lane\n");
    for (lane, n, waiting, p99) in [
        (
            pb::Lane::Transactional,
            s.queued_transactional,
            s.waiting_transactional_seconds,
            s.time_to_inbox_p99_transactional_seconds,
        ),
        (
            pb::Lane::Normal,
            s.queued_normal,
            s.waiting_normal_seconds,
            s.time_to_inbox_p99_normal_seconds,
        ),
        (
            pb::Lane::Bulk,
            s.queued_bulk,
            s.waiting_bulk_seconds,
            s.time_to_inbox_p99_bulk_seconds,
        ),
    ] {
        let paused = s.paused_lanes.contains(&(lane as i32));
        let mut v = count(n);
        if waiting >= 1.0 {
            v.push_str(&format!(
                "  waiting {}",
                human_duration(waiting.max(0.0) as u64)
            ));
        }
        if p99 > 0.0 {
            v.push_str(&format!("  to inbox p99 ≤{p99}s"));
        }
        if paused {
            v.push_str(&format!("  {}", paint("PAUSED", "33", view.color)));
        }
        line(&mut out, &format!("  {}", lane_name(lane as i32)), &v);
    }
    out.push('\n');
    line(
        &mut out,
        "oldest",
        &human_duration(s.oldest_queued_age_seconds.max(0.0) as u64),
    );
    line(
        &mut out,
        "rates",
        &format!(
            "in {:.1}/s  out {:.1}/s  net {:+.1}/s over {}s{}",
            s.enqueue_rate_per_second,
            s.delivery_rate_per_second,
            s.net_drain_rate_per_second,
            s.rate_window_seconds,
            if s.rates_warming_up {
                " (warming up)"
            } else {
                ""
            }
        ),
    );
    line(&mut out, "drain ETA", &eta_text(s));
    let mut relay = if s.relay_state.is_empty() {
        "ok".to_string()
    } else {
        s.relay_state.clone()
    };
    if s.relay_consecutive_failures > 0 {
        relay.push_str(&format!(
            " ({} failures, next try in {})",
            s.relay_consecutive_failures,
            human_duration(s.relay_backoff_remaining_ms.div_ceil(1000))
        ));
    }
    line(&mut out, "relay", &relay);
    let mut spool = human_bytes(s.spool_bytes);
    if s.max_spool_bytes > 0 {
        spool.push_str(&format!(" of {}", human_bytes(s.max_spool_bytes)));
    }
    spool.push_str(&format!("; disk free {}", human_bytes(s.disk_free_bytes)));
    line(&mut out, "spool", &spool);
    let samples = history.samples();
    let max = samples.iter().copied().max().unwrap_or(0);
    line(
        &mut out,
        &format!("depth ({})", samples.len()),
        &format!("{}  max {}", sparkline(&samples), thousands(max)),
    );
    out
}

/// The error of a failed poll in one line, with its causes.
fn error_line(s: &tonic::Status) -> String {
    let mut line = format!("{:?}: {}", s.code(), s.message());
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(&format!(": {text}"));
        }
        source = e.source();
    }
    line
}

/// Polls `server` every `interval` and redraws until Ctrl-C, or until
/// `count` refreshes (0: forever). On a terminal the screen is cleared
/// before each redraw and the congestion state is coloured; otherwise
/// frames are plain and separated by a blank line.
pub async fn run(
    args: &crate::cli::ClientArgs,
    interval: Duration,
    count: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let server = args.server.as_str();
    let endpoint = args
        .endpoint()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(interval.max(Duration::from_secs(2)));
    let bearer = crate::intake::auth::Bearer::new(args.token()?.as_deref())?;
    let mut client = pb::queue_admin_client::QueueAdminClient::new(
        crate::intake::auth::AuthChannel::new(endpoint.connect_lazy(), bearer),
    );
    let tty = std::io::stdout().is_terminal();
    let mut history = History::default();
    let mut last: Option<(pb::QueueStatsResponse, i64)> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut frames = 0u64;
    loop {
        let answer = tokio::select! {
            _ = &mut ctrl_c => break,
            r = client.queue_stats(pb::QueueStatsRequest {}) => r,
        };
        let now = crate::cli::admin::now_ms();
        let error = match answer {
            Ok(r) => {
                let s = r.into_inner();
                history.push(s.queued);
                last = Some((s, now));
                None
            }
            Err(e) => Some(error_line(&e)),
        };
        let view = View {
            color: tty,
            error: error.as_deref(),
            answered_ms: last.as_ref().map(|(_, at)| *at),
        };
        let screen = render_view(last.as_ref().map(|(s, _)| s), &history, server, now, &view);
        let mut out = std::io::stdout().lock();
        if tty {
            write!(out, "\x1b[H\x1b[2J")?;
        } else if frames > 0 {
            writeln!(out)?;
        }
        write!(out, "{screen}")?;
        out.flush()?;
        drop(out);
        frames += 1;
        if count > 0 && frames >= count {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_table() {
        let cases: &[(&[u64], &str)] = &[
            (&[], ""),
            (&[0, 0, 0], "▁▁▁"),
            (&[5, 5, 5], "███"),
            (&[0, 1, 2, 3, 4, 5, 6, 7], "▁▂▃▄▅▆▇█"),
            (&[0, 700, 350, 1], "▁█▅▂"),
            (&[u64::MAX, u64::MAX / 2, 0], "█▄▁"),
        ];
        for (values, want) in cases {
            assert_eq!(sparkline(values), *want, "{values:?}");
        }
    }

    #[test]
    fn history_keeps_the_last_sixty() {
        let mut h = History::default();
        for i in 0..100 {
            h.push(i);
        }
        let s = h.samples();
        assert_eq!(s.len(), HISTORY);
        assert_eq!((s[0], s[59]), (40, 99));
    }

    fn stats() -> pb::QueueStatsResponse {
        pb::QueueStatsResponse {
            queued: 1322,
            ready: 1234,
            scheduled: 56,
            in_flight: 32,
            dead: 7,
            quarantined: 2,
            queued_transactional: 10,
            queued_normal: 1200,
            queued_bulk: 112,
            oldest_queued_age_seconds: 723.4,
            enqueue_rate_per_second: 120.46,
            delivery_rate_per_second: 98.2,
            net_drain_rate_per_second: -22.26,
            rate_window_seconds: 10,
            drain_eta_seconds: 252.0,
            relay_state: "throttled".into(),
            relay_consecutive_failures: 3,
            relay_backoff_remaining_ms: 1500,
            spool_bytes: 12 << 20,
            max_spool_bytes: 1 << 30,
            disk_free_bytes: 45 << 30,
            congestion: pb::Congestion::Warning as i32,
            congestion_reason: "oldest message 12m old".into(),
            congestion_since_unix_ms: 1_764_097_262_000 - 250_000,
            paused_lanes: vec![pb::Lane::Bulk as i32],
            ..Default::default()
        }
    }

    #[test]
    fn render_shows_state_numbers_and_sparkline() {
        let mut h = History::default();
        for d in [0, 700, 1322] {
            h.push(d);
        }
        let now = 1_764_097_262_000;
        let t = render(&stats(), &h, "http://a:50051", now);
        for want in [
            "mailspool http://a:50051  2025-11-25 19:01:02 UTC",
            "congestion      WARNING  oldest message 12m old  (since 2025-11-25 18:56:52 UTC, 4m 10s ago)",
            "queued                 1,322\n",
            "  ready                1,234\n",
            "  in flight               32\n",
            "quarantined                2\n",
            "by lane\n  transactional           10\n  normal               1,200\n",
            "  bulk                   112  PAUSED\n",
            "oldest          12m 3s\n",
            "rates           in 120.5/s  out 98.2/s  net -22.3/s over 10s\n",
            "drain ETA       4m 12s\n",
            "relay           throttled (3 failures, next try in 2s)\n",
            "spool           12.0 MiB of 1.0 GiB; disk free 45.0 GiB\n",
            "depth (3)       ▁▅█  max 1,322\n",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(!t.contains("1,200  PAUSED"));
        assert!(!t.contains('\x1b'), "plain unless asked for colour");
        assert!(!t.contains("unreachable"));
    }

    #[test]
    fn render_colours_only_when_asked() {
        let h = History::default();
        let mut s = stats();
        s.congestion = pb::Congestion::Critical as i32;
        let view = View {
            color: true,
            ..View::default()
        };
        let t = render_view(Some(&s), &h, "x", 0, &view);
        assert!(t.contains("\x1b[1;31mCRITICAL\x1b[0m"), "{t}");
        let t = render(&s, &h, "x", 0);
        assert!(t.contains("congestion      CRITICAL"));
    }

    #[test]
    fn render_unreachable_keeps_the_last_answer() {
        let h = History::default();
        let now = 100_000;
        let view = View {
            error: Some("Unavailable: tcp connect error"),
            answered_ms: Some(now - 12_000),
            ..View::default()
        };
        let t = render_view(Some(&stats()), &h, "x", now, &view);
        assert!(
            t.contains(
                "unreachable: Unavailable: tcp connect error (last answer 12s ago; retrying)\n"
            ),
            "{t}"
        );
        assert!(t.contains("queued                 1,322"));
        let view = View {
            error: Some("refused"),
            ..View::default()
        };
        let t = render_view(None, &h, "x", now, &view);
        assert!(t.ends_with("unreachable: refused (retrying)\n"), "{t}");
        assert!(!t.contains("queued"));
    }

    #[test]
    fn eta_text_table() {
        for (queued, eta, want) in [
            (0, 0.0, "—"),
            (10, -1.0, "not draining"),
            (10, 0.4, "<1s"),
            (10, 252.4, "4m 12s"),
            (10, 7200.0, "2h"),
        ] {
            let s = pb::QueueStatsResponse {
                queued,
                drain_eta_seconds: eta,
                ..Default::default()
            };
            assert_eq!(eta_text(&s), want, "{queued} {eta}");
        }
    }
}
