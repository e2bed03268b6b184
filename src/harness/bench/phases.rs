//! The enqueue phases' load generator (h2load or tonic) and the disk a
//! run needs.

use std::path::{Path, PathBuf};

use super::{batches, h2load, normal, unary, BenchArgs, Error, Run};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadGenerator {
    Auto,
    Tonic,
    H2load,
}

impl BenchArgs {
    /// h2load's path when it drives the enqueue phases.
    pub(super) fn h2load(&self) -> Result<Option<PathBuf>, Error> {
        match (self.load_generator, h2load::installed()) {
            (LoadGenerator::Tonic, _) | (LoadGenerator::Auto, None) => Ok(None),
            (_, Some(p)) => Ok(Some(p)),
            (LoadGenerator::H2load, None) => Err(
                "--load-generator h2load: h2load is not installed (apt-get install nghttp2-client)"
                    .into(),
            ),
        }
    }

    /// The unary phase: N calls, by h2load or by tonic clients.
    pub(super) async fn unary_phase(
        &self,
        url: &str,
        n: usize,
        body: &str,
        dir: &Path,
    ) -> Result<Run, Error> {
        match self.h2load()? {
            Some(h) => {
                let load = h2load::Load {
                    url,
                    method: "/mailspool.v1.MailQueue/Enqueue",
                    body: h2load::unary_body(body),
                    calls: n,
                    connections: self.h2load_connections,
                    streams: self.h2load_streams,
                    per_call: 1,
                };
                h2load::run(&h, load, dir).await
            }
            None => unary(url, n, self.concurrency, body, "unary").await,
        }
    }

    /// The batch phase: N messages in calls of B.
    pub(super) async fn batch_phase(
        &self,
        url: &str,
        body: &str,
        dir: &Path,
    ) -> Result<Run, Error> {
        match self.h2load()? {
            Some(h) => {
                let load = h2load::Load {
                    url,
                    method: "/mailspool.v1.MailQueue/EnqueueBatch",
                    body: h2load::batch_body(body, self.batch),
                    calls: self.messages.div_ceil(self.batch.max(1)),
                    connections: self.batch_concurrency,
                    streams: 1,
                    per_call: self.batch.max(1),
                };
                h2load::run(&h, load, dir).await
            }
            None => {
                let (n, b, c) = (self.messages, self.batch, self.batch_concurrency);
                batches(url, n, b, c, normal(body), "batch").await
            }
        }
    }

    /// Who drove the enqueue phases, for the table.
    pub(super) fn generator_name(&self) -> &'static str {
        match self.h2load() {
            Ok(Some(_)) => "h2load",
            _ => "tonic",
        }
    }
}

/// Bytes of spool per queued message beyond its body: the segment
/// record's header and journal entry, sled's index and its log (measured:
/// 3,190 B per 2,048 B message, BENCHMARKS.md).
const SPOOL_OVERHEAD_PER_MESSAGE: u64 = 1_200;

/// Prints the disk the run needs (the backlog queued at once, plus the
/// phases before it) and refuses to start without it, with what to do.
pub(super) fn disk_needed(args: &BenchArgs, data: &Path) -> Result<(), Error> {
    // The backlog phase tops the queue up to --backlog; before it the
    // enqueue phases and probes fill it.
    let messages = args.backlog.max(2 * args.messages + 3 * args.probe) as u64;
    let need = messages * (args.size as u64 + SPOOL_OVERHEAD_PER_MESSAGE);
    let free = crate::server::disk_free_bytes(data);
    let gib = |b: u64| b as f64 / 1073741824.0;
    eprintln!(
        "disk: about {:.1} GiB for {} messages queued at most, in {} ({:.1} GiB free)",
        gib(need),
        messages,
        data.display(),
        gib(free)
    );
    if free < need + need / 10 {
        return Err(format!(
            "not enough disk for this run: it needs about {:.1} GiB and {} has {:.1} GiB free; point TMPDIR at a larger filesystem or lower --backlog",
            gib(need),
            data.display(),
            gib(free)
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn a_run_larger_than_the_disk_is_refused_before_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let small = Cli::parse_from(["bench", "--backlog", "1000", "-n", "100", "--probe", "10"]);
        disk_needed(&small.bench, dir.path()).unwrap();
        let huge = Cli::parse_from(["bench", "--backlog", "1000000000000"]);
        let e = disk_needed(&huge.bench, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("not enough disk for this run: it needs about "),
            "{e}"
        );
        assert!(e.contains("lower --backlog"), "{e}");
    }
}
