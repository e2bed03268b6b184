//! `mailspool capacity`: the capacity exercise as one command. The
//! node's own figures come from a `mailspool bench` report (its output
//! saved to a file), or from a short calibration it runs itself (its own
//! server on a temporary spool, delivery paused: intake and disk per
//! message); the operator gives what they expect. The arithmetic is
//! `plan`, its formulas in the README.

mod plan;

use std::path::PathBuf;

pub use plan::{plan, Inputs, Plan};

use crate::harness::bench::{channel, resources::dir_bytes};
use crate::harness::child::ServerProcess;
use crate::harness::drill::parse_rate;
use crate::pb;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// `10GiB`, `500MB`, `2048` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        "TiB" => 1099511627776.0,
        _ => return Err(format!("`{s}` is not a size: use e.g. 2048, 500MB, 10GiB")),
    };
    let n: f64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size: use e.g. 2048, 500MB, 10GiB"))?;
    Ok((n * mult) as u64)
}

fn parse_secs(s: &str) -> Result<u64, String> {
    crate::model::parse_duration(s)
}

#[derive(Debug, Clone, clap::Args)]
pub struct CapacityArgs {
    /// A `mailspool bench` report (its output saved to a file) to take the
    /// node's figures from; without it, a short calibration run measures
    /// them.
    #[arg(long)]
    pub bench_results: Option<PathBuf>,
    /// Messages in the calibration run.
    #[arg(long, default_value_t = 5_000)]
    pub calibrate_messages: usize,
    /// The expected peak surge, in messages.
    #[arg(long, default_value_t = 150_000)]
    pub surge: u64,
    /// How fast the surge arrives.
    #[arg(long, default_value = "5000/s", value_parser = parse_rate)]
    pub surge_rate: f64,
    /// Each relay's quota (repeat for each relay).
    #[arg(long = "relay-rate", default_value = "400/s", value_parser = parse_rate)]
    pub relay_rates: Vec<f64>,
    /// Transactional mail all along.
    #[arg(long, default_value = "50/s", value_parser = parse_rate)]
    pub steady: f64,
    /// Free disk of the spool, per node (default: what the data directory's
    /// file system has free now).
    #[arg(long, value_parser = parse_bytes)]
    pub disk_free: Option<u64>,
    /// The nodes' `min_free_bytes` (bulk is refused below 3× it).
    #[arg(long, default_value = "100MiB", value_parser = parse_bytes)]
    pub min_free: u64,
    /// The data directory whose free space counts (without --disk-free).
    #[arg(long, default_value = "./mailspool-data")]
    pub data_dir: PathBuf,
    /// Body size of the expected messages.
    #[arg(long, default_value = "2048", value_parser = parse_bytes)]
    pub message_size: u64,
    /// Target: the transactional lane's p99 during the surge.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub slo_transactional_p99: u64,
    /// Target: the surge gone this long after it began.
    #[arg(long, default_value = "30m", value_parser = parse_secs)]
    pub target_drain: u64,
    /// Nodes the surge is spread over.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// Print JSON (inputs, measured figures and the plan) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What one node measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Measured {
    pub accept_rate: f64,
    /// 0: not measured.
    pub drain_ceiling: f64,
    pub bytes_per_message: f64,
    pub size: u64,
    pub source: &'static str,
}

/// The figures of a `mailspool bench` report: the batch intake, the
/// drain, the disk per queued message and the body size it was measured at.
pub fn from_bench(text: &str) -> Result<Measured, String> {
    let number_before = |line: &str, unit: &str| -> Option<f64> {
        let end = line.find(unit)?;
        let head = line[..end].trim_end();
        let start = head
            .rfind(|c: char| !c.is_ascii_digit() && c != '.')
            .map_or(0, |i| i + 1);
        head[start..].parse().ok()
    };
    let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix));
    let accept = line("durable EnqueueBatch")
        .and_then(|l| number_before(l, " msg/s"))
        .ok_or("no `durable EnqueueBatch … msg/s` line: is it a `mailspool bench` report?")?;
    let disk = line("data dir with ").ok_or("no `data dir with … B per message` line")?;
    let bytes = number_before(disk, " B per message").ok_or("no `B per message` figure")?;
    let size = number_before(disk, " B messages").unwrap_or(2048.0);
    let drain = line("drain to smtp-sink")
        .and_then(|l| number_before(l, " msg/s"))
        .unwrap_or(0.0);
    Ok(Measured {
        accept_rate: accept,
        drain_ceiling: drain,
        bytes_per_message: bytes,
        size: size as u64,
        source: "bench report",
    })
}

/// A short calibration: a server of its own, delivery paused, the
/// messages taken in by EnqueueBatch; intake and disk per message.
async fn calibrate(a: &CapacityArgs) -> Result<Measured, Error> {
    let dir = tempfile::Builder::new()
        .prefix("mailspool-capacity")
        .tempdir()?;
    let data = dir.path().join("data");
    let exe = std::env::current_exe()?;
    let server = ServerProcess::start(&exe, &data, "smtp://127.0.0.1:9", &[]).await?;
    let result = async {
        pb::queue_admin_client::QueueAdminClient::new(channel(&server.url).await?)
            .pause_delivery(pb::PauseDeliveryRequest { lanes: vec![] })
            .await?;
        let client = pb::mail_queue_client::MailQueueClient::new(channel(&server.url).await?)
            .max_encoding_message_size(64 << 20);
        let n = a.calibrate_messages.max(100);
        let body = crate::harness::bench::body(a.message_size as usize);
        eprintln!(
            "calibrating: {n} messages of {} B into a server of its own",
            a.message_size
        );
        let (ids, refused, secs) = crate::harness::drill::front::surge(client, n, body).await;
        if refused > 0 || ids.is_empty() {
            return Err(format!("calibration: {refused} of {n} refused").into());
        }
        Ok::<_, Error>(Measured {
            accept_rate: ids.len() as f64 / secs.max(1e-9),
            drain_ceiling: 0.0,
            bytes_per_message: dir_bytes(&data) as f64 / ids.len() as f64,
            size: a.message_size,
            source: "calibration (no drain measured: the relays bound it)",
        })
    }
    .await;
    server.stop().await?;
    result
}

/// Free bytes of the file system holding `dir` (or its nearest existing
/// parent).
fn free_bytes(dir: &std::path::Path) -> Result<u64, Error> {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            p = PathBuf::from(".");
            break;
        }
    }
    if p.as_os_str().is_empty() {
        p = PathBuf::from(".");
    }
    match crate::server::disk_free_bytes(&p) {
        u64::MAX => Err(format!(
            "cannot read the free space of {}: pass --disk-free",
            p.display()
        )
        .into()),
        free => Ok(free),
    }
}

pub async fn run(a: CapacityArgs) -> Result<(), Error> {
    let measured = match &a.bench_results {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            from_bench(&text).map_err(|e| format!("{}: {e}", file.display()))?
        }
        None => calibrate(&a).await?,
    };
    let disk_free = match a.disk_free {
        Some(b) => b,
        None => free_bytes(&a.data_dir)?,
    };
    let inputs = Inputs {
        accept_rate: measured.accept_rate,
        drain_ceiling: measured.drain_ceiling,
        bytes_per_message: measured.bytes_per_message,
        measured_size: measured.size,
        message_size: a.message_size,
        surge: a.surge,
        surge_rate: a.surge_rate,
        relay_rates: a.relay_rates.clone(),
        steady: a.steady,
        disk_free,
        min_free: a.min_free,
        slo_transactional_p99_secs: a.slo_transactional_p99 as f64,
        target_drain_secs: a.target_drain as f64,
        nodes: a.nodes,
    };
    let p = plan(&inputs);
    if a.json {
        let v = serde_json::json!({"measured": measured, "inputs": inputs, "plan": p});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "measured ({}): intake {:.0} msg/s, drain {}, {:.0} B per queued {} B message\n",
            measured.source,
            measured.accept_rate,
            if measured.drain_ceiling > 0.0 {
                format!("{:.0} msg/s", measured.drain_ceiling)
            } else {
                "not measured".into()
            },
            measured.bytes_per_message,
            measured.size
        );
        print!("{}", plan::table(&inputs, &p));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_report_gives_the_figures() {
        let report = "durable unary Enqueue, 30000 × 2048 B, 64 in flight: 10056 msg/s; p50 6.14 ms\n\
            durable EnqueueBatch of 100, 4 calls in flight: 34817 msg/s; per call p50 11.26 ms\n\
            data dir with 100000 queued (sizing: disk per queued message): 266.8 MiB = 2797 B per message (2.60 GiB per million 2048 B messages)\n\
            drain to smtp-sink after the restart (end to end): 99% / all: 8824 msg/s to 99% (11.2 s)\n";
        let m = from_bench(report).unwrap();
        assert_eq!(
            (m.accept_rate, m.drain_ceiling, m.bytes_per_message, m.size),
            (34817.0, 8824.0, 2797.0, 2048)
        );
        assert!(from_bench("hello").unwrap_err().contains("mailspool bench"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("2048"), Ok(2048));
        assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }
}
