//! The bench run drawn (plotters, SVG): queue depth, enqueue and delivery
//! rates, and Enqueue latency p50/p99 per second, on one time axis, so the
//! drain curve can be looked at instead of read.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use super::{stats, Error};

/// One sample of the queue: unix ms, queued, enqueued and delivered totals.
pub type Sample = (u64, u64, u64, u64);

/// Polls QueueStats of the server `url` names (None: between servers)
/// every `every` until `stop`; returns the samples.
pub fn sampler(
    url: tokio::sync::watch::Receiver<Option<String>>,
    every: Duration,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<Sample>>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = &mut stopped => return out,
                _ = tick.tick() => {}
            }
            let target = url.borrow().clone();
            if let Some(u) = target {
                if let Ok(s) = stats(&u).await {
                    out.push((
                        super::unix_ms(),
                        s.queued,
                        s.enqueued_total,
                        s.delivered_total,
                    ));
                }
            }
        }
    });
    (stop, task)
}

/// Latency percentiles per this many ms of calls.
const BUCKET_MS: u64 = 250;

/// Series from the samples and the calls' (end, ms) points: (seconds
/// since the first sample, queued, enqueue/s, delivery/s) and (seconds,
/// p50 ms, p99 ms) per `BUCKET_MS`.
#[allow(clippy::type_complexity)]
fn series(
    samples: &[Sample],
    points: &[(u64, f32)],
) -> (Vec<(f64, f64, f64, f64)>, Vec<(f64, f64, f64)>) {
    let Some(&(t0, ..)) = samples.first() else {
        return (Vec::new(), Vec::new());
    };
    let secs = |t: u64| t.saturating_sub(t0) as f64 / 1000.0;
    let mut queue = Vec::new();
    for w in samples.windows(2) {
        let (a, b) = (w[0], w[1]);
        let dt = (b.0.saturating_sub(a.0) as f64 / 1000.0).max(1e-3);
        queue.push((
            secs(b.0),
            b.1 as f64,
            b.2.saturating_sub(a.2) as f64 / dt,
            b.3.saturating_sub(a.3) as f64 / dt,
        ));
    }
    let mut by_second = std::collections::BTreeMap::<u64, Vec<f32>>::new();
    for &(at, ms) in points {
        if at >= t0 {
            by_second.entry((at - t0) / BUCKET_MS).or_default().push(ms);
        }
    }
    let latency = by_second
        .into_iter()
        .map(|(s, mut v)| {
            v.sort_by(f32::total_cmp);
            let pick = |p: f64| f64::from(v[((v.len() - 1) as f64 * p).round() as usize]);
            ((s * BUCKET_MS) as f64 / 1000.0, pick(0.5), pick(0.99))
        })
        .collect();
    (queue, latency)
}

/// A line broken where nothing was measured for over a second (between
/// servers, between phases), so no straight line is drawn across a gap.
fn pieces(line: impl Iterator<Item = (f64, f64)>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    for p in line {
        match out.last_mut() {
            Some(last) if last.last().is_some_and(|q| p.0 - q.0 <= 1.0) => last.push(p),
            _ => out.push(vec![p]),
        }
    }
    out
}

/// One panel: its caption, then each line (x, y) in its colour, broken
/// over gaps, on axes from 0 to `end` seconds and to the highest y.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    end: f64,
    lines: &[(Vec<(f64, f64)>, RGBColor)],
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let top = lines
        .iter()
        .flat_map(|(l, _)| l.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart.configure_mesh().x_desc("seconds").draw()?;
    for (line, colour) in lines {
        for piece in pieces(line.iter().copied()) {
            chart.draw_series(LineSeries::new(piece, colour))?;
        }
    }
    Ok(())
}

/// Draws the run to `path`.
pub fn draw(path: &Path, samples: &[Sample], points: &[(u64, f32)]) -> Result<(), Error> {
    let (queue, latency) = series(samples, points);
    let end = queue.last().map_or(1.0, |q| q.0).max(1.0);
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let of = |v: &[(f64, f64, f64, f64)], f: fn(&(f64, f64, f64, f64)) -> f64| {
        v.iter().map(|q| (q.0, f(q))).collect::<Vec<_>>()
    };
    let lat = |f: fn(&(f64, f64, f64)) -> f64| latency.iter().map(|l| (l.0, f(l))).collect();
    panel(
        &panels[0],
        "queued messages",
        end,
        &[(of(&queue, |q| q.1), BLUE)],
    )?;
    panel(
        &panels[1],
        "enqueue (red) and delivery (green), msg/s",
        end,
        &[(of(&queue, |q| q.2), RED), (of(&queue, |q| q.3), GREEN)],
    )?;
    panel(
        &panels[2],
        "Enqueue latency p50 (black) and p99 (red), ms",
        end,
        &[(lat(|l| l.1), BLACK), (lat(|l| l.2), RED)],
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_is_drawn_with_its_series() {
        let samples: Vec<Sample> = (0..10)
            .map(|i| (1_000_000 + i * 1000, i * 100, i * 1000, i * 500))
            .collect();
        let points: Vec<(u64, f32)> = (0..100)
            .map(|i| (1_000_000 + i * 50, (i % 10) as f32))
            .collect();
        let (queue, latency) = series(&samples, &points);
        assert_eq!(queue[0], (1.0, 100.0, 1000.0, 500.0));
        assert_eq!(latency[0], (0.0, 2.0, 4.0));
        assert_eq!(latency[1], (0.25, 7.0, 9.0));
        assert_eq!(
            pieces([(0.0, 1.0), (0.5, 1.0), (3.0, 2.0)].into_iter()).len(),
            2,
            "a gap of 2.5 s breaks the line"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        draw(&path, &samples, &points).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("queued messages"));
        assert!(svg.matches("<polyline").count() >= 5, "five series");
    }
}
