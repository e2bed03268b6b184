//! `mailspool drill`: the incident replayed on a sandbox of its own (a
//! server on a temporary spool, a relay of limited capacity, like `bench`)
//! or, with `--server`, on a staging server: steady transactional
//! traffic, then a bulk surge many times the relay's capacity, then the
//! relay failing for a while, then recovery. It reports how soon the node
//! warned and why, what the transactional lane's users saw window by
//! window, the intake, the backlog, the drain ETA against the actual
//! drain, loss and duplicates, and a verdict against the targets given;
//! as tables (or `--json`) and as an SVG plot.

pub(crate) mod front;
mod plot;
pub mod report;
mod run;

use std::path::PathBuf;
use std::time::Duration;

pub use report::{Recorded, Summary, Targets};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// `50/s`, `50` (per second), or `3000/m` (per minute).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (n, per) = match t.split_once('/') {
        Some((n, "s")) => (n, 1.0),
        Some((n, "m")) => (n, 60.0),
        Some(_) => return Err(format!("`{s}` is not a rate: use e.g. 50/s or 3000/m")),
        None => (t, 1.0),
    };
    let n: f64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a rate: use e.g. 50/s or 3000/m"))?;
    if !(n > 0.0 && n.is_finite()) {
        return Err(format!("`{s}`: a rate must be above 0"));
    }
    Ok(n / per)
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    crate::model::parse_duration(s).map(Duration::from_secs)
}

#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// Transactional messages (password resets) per second, all along.
    #[arg(long, default_value = "50/s", value_parser = parse_rate)]
    pub steady: f64,
    /// Bulk messages in the surge (EnqueueBatch of 100, 4 calls in flight).
    #[arg(long, default_value_t = 60_000)]
    pub surge: usize,
    /// What the sandbox relay takes, over all its connections.
    #[arg(long, default_value = "400/s", value_parser = parse_rate)]
    pub relay_rate: f64,
    /// How long the sandbox relay fails (closes every connection); 0s: no
    /// outage.
    #[arg(long, default_value = "60s", value_parser = parse_secs)]
    pub relay_outage: Duration,
    /// When the outage begins, after the surge's start.
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    pub outage_after: Duration,
    /// Transactional traffic alone before the surge.
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    pub lead_in: Duration,
    /// Width of the report's windows.
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    pub window: Duration,
    /// How often the drain ETA shown is set against the actual drain.
    #[arg(long, default_value = "60s", value_parser = parse_secs)]
    pub eta_every: Duration,
    /// Target: the transactional lane's time-to-inbox p99 over the run.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub slo_transactional_p99: Duration,
    /// Target: WARNING at most this long after the surge's start.
    #[arg(long, default_value = "120s", value_parser = parse_secs)]
    pub slo_detect: Duration,
    /// Stop after this long, drained or not.
    #[arg(long, default_value = "20m", value_parser = parse_secs)]
    pub max_duration: Duration,
    /// Body size of each message in bytes.
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    /// Where the plot is written (SVG).
    #[arg(long, default_value = "mailspool-drill.svg")]
    pub plot: PathBuf,
    /// Print the summary as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Drill a running (staging) server instead of a sandbox, with the
    /// relay it has; the token, if it needs one, in MAILSPOOL_TOKEN. Asks
    /// for a confirmation first.
    #[arg(long)]
    pub server: Option<String>,
    /// With --server: no confirmation, and go on even when the server
    /// holds other traffic.
    #[arg(long)]
    pub yes: bool,
    /// Then the same scenario through a Postfix instance of its own (needs
    /// Postfix installed and root; skipped, saying why, otherwise), side
    /// by side.
    #[arg(long)]
    pub postfix: bool,
}

impl DrillArgs {
    pub fn targets(&self) -> Targets {
        Targets {
            transactional_p99_secs: self.slo_transactional_p99.as_secs_f64(),
            detect_secs: self.slo_detect.as_secs_f64(),
            window_secs: self.window.as_secs().max(1),
            eta_every_secs: self.eta_every.as_secs().max(1),
        }
    }
}

/// Runs the drill, prints the report, writes the plot; whether every
/// target was met.
pub async fn run(args: DrillArgs) -> Result<bool, Error> {
    let recorded = match &args.server {
        None => run::sandbox(&args).await?,
        Some(url) => run::staging(&args, url).await?,
    };
    let postfix = match (&args.server, args.postfix) {
        (None, true) => run::postfix(&args).await?,
        _ => None,
    };
    let targets = args.targets();
    let summary = report::summarize(&recorded, &targets);
    let theirs = postfix.as_ref().map(|r| report::summarize(r, &targets));
    std::fs::write(
        &args.plot,
        plot::svg(&recorded, &summary, theirs.as_ref(), &targets),
    )
    .map_err(|e| format!("could not write the plot to {}: {e}", args.plot.display()))?;
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        v["postfix"] = serde_json::to_value(&theirs)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report::table(&summary));
        if let Some(t) = &theirs {
            println!("\nThe same scenario through Postfix (its own instance, 20 connections to the same relay):\n");
            print!("{}", report::side_by_side(&summary, t));
        }
    }
    eprintln!("plot: {}", args.plot.display());
    Ok(summary.pass)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_parse_per_second_or_per_minute() {
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("400"), Ok(400.0));
        assert_eq!(parse_rate("3000/m"), Ok(50.0));
        for bad in ["", "x/s", "50/h", "0/s", "-3"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }
}
