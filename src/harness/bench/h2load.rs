//! The enqueue phases driven by nghttp2's `h2load` when it is installed
//! (`apt-get install nghttp2-client`): a load generator in C whose CPU per
//! request is a fraction of a tonic client's, so the server's own ceiling
//! shows. Each request is one gRPC call with the same framed protobuf body
//! (no idempotency key: each is a new message); h2load counts HTTP status
//! only, so the queue's `enqueued_total` before and after says how many
//! calls were really accepted.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use prost::Message;

use super::{Error, Run};
use crate::pb;

/// Where h2load is, if it is installed.
pub fn installed() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("h2load"))
            .find(|p| p.is_file())
    })
}

/// A gRPC message on the wire: uncompressed flag, length, protobuf.
pub fn grpc_frame(m: &impl Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// How h2load is to call the server.
pub struct Load<'a> {
    pub url: &'a str,
    /// `/mailspool.v1.MailQueue/Enqueue` or `…/EnqueueBatch`.
    pub method: &'a str,
    pub body: Vec<u8>,
    pub calls: usize,
    pub connections: usize,
    pub streams: usize,
    /// Messages each call enqueues (the batch size; 1 for unary).
    pub per_call: usize,
}

/// Runs h2load once; the `Run` counts messages, its latencies are per call
/// (from h2load's log file). Fails when a call failed or the server
/// accepted fewer messages than were sent.
pub async fn run(h2load: &Path, load: Load<'_>, dir: &Path) -> Result<Run, Error> {
    let data = dir.join("h2load-request.bin");
    let log = dir.join("h2load-log.tsv");
    std::fs::write(&data, &load.body)?;
    let before = super::stats(load.url).await?.enqueued_total;
    let target = format!("{}{}", load.url.trim_end_matches('/'), load.method);
    let (h2load, data2, log2) = (h2load.to_path_buf(), data.clone(), log.clone());
    let (calls, conns, streams) = (load.calls, load.connections, load.streams);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(h2load)
            .arg(format!("-n{calls}"))
            .arg(format!("-c{conns}"))
            .arg(format!("-m{streams}"))
            .arg("-t1")
            .arg("-d")
            .arg(&data2)
            .arg("--log-file")
            .arg(&log2)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg(&target)
            .output()
    })
    .await??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = parse(&text).ok_or_else(|| {
        format!(
            "h2load gave no summary (exit {}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if summary.succeeded != calls {
        return Err(format!(
            "h2load: {} of {calls} calls succeeded:\n{text}",
            summary.succeeded
        )
        .into());
    }
    let accepted = super::stats(load.url).await?.enqueued_total - before;
    let sent = (calls * load.per_call) as u64;
    if accepted != sent {
        return Err(format!(
            "h2load sent {sent} messages but the server accepted {accepted} (a gRPC error travels in an HTTP 200): check the request"
        )
        .into());
    }
    let (latencies, points) = super::split(logged_calls(&std::fs::read_to_string(&log)?));
    let _ = std::fs::remove_file(&log);
    Ok(Run {
        count: sent as usize,
        secs: summary.secs,
        latencies,
        points,
    })
}

#[derive(Debug, PartialEq)]
struct Summary {
    secs: f64,
    succeeded: usize,
}

/// `finished in 1.23s, …` and `requests: … N succeeded, …`.
fn parse(text: &str) -> Option<Summary> {
    let finished = text.lines().find_map(|l| l.strip_prefix("finished in "))?;
    let secs = finished.split(',').next()?.trim();
    let secs = if let Some(ms) = secs.strip_suffix("ms") {
        ms.parse::<f64>().ok()? / 1000.0
    } else {
        secs.strip_suffix('s')?.parse::<f64>().ok()?
    };
    let requests = text.lines().find_map(|l| l.strip_prefix("requests: "))?;
    let succeeded = requests
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" succeeded"))?
        .parse()
        .ok()?;
    Some(Summary { secs, succeeded })
}

/// h2load's log: `start (µs since epoch) \t status \t duration (µs)`;
/// each call's (latency, end in unix ms).
fn logged_calls(log: &str) -> Vec<(Duration, u64)> {
    log.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let start = f.next()?.trim().parse::<u64>().ok()?;
            let micros = f.nth(1)?.trim().parse::<u64>().ok()?;
            Some((Duration::from_micros(micros), (start + micros) / 1000))
        })
        .collect()
}

/// The unary request h2load sends, as the tonic phases send it.
pub fn unary_body(body: &str) -> Vec<u8> {
    grpc_frame(&super::request(0, body))
}

/// An `EnqueueBatch` of `n` such requests.
pub fn batch_body(body: &str, n: usize) -> Vec<u8> {
    grpc_frame(&pb::EnqueueBatchRequest {
        requests: (0..n).map(|i| super::request(i, body)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_summary_and_log_are_read() {
        let out = "starting benchmark...\n\
            finished in 2.50s, 4000.00 req/s, 9.77MB/s\n\
            requests: 10000 total, 10000 started, 10000 done, 9998 succeeded, 2 failed, 0 errored, 0 timeout\n";
        assert_eq!(
            parse(out),
            Some(Summary {
                secs: 2.5,
                succeeded: 9998
            })
        );
        let ms =
            parse("finished in 850.10ms, 1.0 req/s\nrequests: 1 total, 1 succeeded, 0 failed\n");
        assert!((ms.unwrap().secs - 0.8501).abs() < 1e-9);
        assert_eq!(parse("nothing"), None);
        assert_eq!(
            logged_calls("1700000000000000\t200\t1250\n1700000000000100\t200\t900\n"),
            [
                (Duration::from_micros(1250), 1_700_000_000_001),
                (Duration::from_micros(900), 1_700_000_000_001)
            ]
        );
        let f = grpc_frame(&pb::EnqueueRequest::default());
        assert_eq!(f, [0, 0, 0, 0, 0]);
    }
}
