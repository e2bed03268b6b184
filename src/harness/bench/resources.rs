//! What `bench` reports about the server's resources, and the table.

use std::path::Path;

pub(crate) fn dir_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

pub(super) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn resource_rows(
    rows: &mut Vec<(String, String)>,
    rss1: u64,
    rss2: Option<u64>,
    written: u64,
    enqueued: u64,
    size: usize,
    fsyncs: u64,
    after_drain: Option<(u64, u64, f64)>,
) {
    let mut push = |k: &str, v: String| {
        eprintln!("{k}: {v}");
        rows.push((k.to_string(), v));
    };
    push(
        "peak RSS: enqueue + backlog server / restart + drain server",
        format!(
            "{} / {}",
            mib(rss1),
            rss2.map(mib).unwrap_or_else(|| "-".into())
        ),
    );
    let per = written as f64 / enqueued.max(1) as f64;
    push(
        "disk bytes written per enqueued message (server 1, /proc/pid/io)",
        format!("{per:.0} B = {:.2}× the {size} B body", per / size as f64),
    );
    push(
        "fsync rounds per 1,000 enqueues (server 1)",
        format!(
            "{:.1} ({fsyncs} for {enqueued})",
            fsyncs as f64 * 1000.0 / enqueued.max(1) as f64
        ),
    );
    if let Some((a, c, secs)) = after_drain {
        push(
            "data dir after the drain (delivered statuses kept 1 h) / after `mailspool compact`",
            format!("{} / {} (compact took {secs:.1} s)", mib(a), mib(c)),
        );
    }
}

pub(super) fn print_table(rows: &[(String, String)]) {
    println!("\n| figure | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
