//! The drill drawn as an SVG: queued messages, enqueue and delivery
//! rates over time, the transactional lane's time-to-inbox p99 per
//! window against its target, and the moments that matter (the surge,
//! the relay's outage, WARNING and CRITICAL). Plain SVG text: any browser
//! shows it, nothing to install.

use super::report::{Recorded, Summary, Targets};

const W: f64 = 960.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;

fn path(points: &[(f64, f64)]) -> String {
    let mut d = String::new();
    for (i, (x, y)) in points.iter().enumerate() {
        d += &format!("{}{x:.1},{y:.1} ", if i == 0 { "M" } else { "L" });
    }
    d
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round number at or above `x` (for an axis' top).
fn nice(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

pub fn svg(r: &Recorded, s: &Summary, postfix: Option<&Summary>, t: &Targets) -> String {
    let end_secs = r
        .samples
        .last()
        .map_or(1.0, |x| x.t_ms as f64 / 1000.0)
        .max(1.0);
    let plot_w = W - LEFT - RIGHT;
    let x = |secs: f64| LEFT + secs / end_secs * plot_w;
    let top2 = TOP + PANEL + GAP;
    let h = top2 + PANEL + 60.0;
    let q_max = nice(r.samples.iter().map(|s| s.queued).max().unwrap_or(0) as f64);
    let rate_max = nice(
        r.samples
            .iter()
            .map(|s| s.enqueue_rate.max(s.delivery_rate))
            .fold(0.0, f64::max),
    );
    let y1 = |v: f64, max: f64| TOP + PANEL - v / max * PANEL;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    out += &format!(
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"15\">mailspool drill: {} transactional, a surge of {} bulk — {}</text>\n",
        r.tx.len(),
        r.bulk_acked,
        if s.pass { "PASS" } else { "FAIL" }
    );
    // Panels' frames and axes.
    for (top, left_label, right_label) in [
        (
            TOP,
            format!("queued (max {q_max})"),
            format!("msg/s (max {rate_max})"),
        ),
        (
            top2,
            "transactional time to inbox p99 per window (s)".to_string(),
            String::new(),
        ),
    ] {
        out += &format!(
            "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{plot_w}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>\n<text x=\"{LEFT}\" y=\"{}\" fill=\"#333\">{}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#333\">{}</text>\n",
            top - 6.0,
            escape(&left_label),
            W - RIGHT,
            top - 6.0,
            escape(&right_label)
        );
    }
    out += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds since the start ({end_secs:.0} s)</text>\n",
        LEFT + plot_w / 2.0,
        h - 15.0
    );
    // Moments.
    let mut marks = vec![(r.surge_at_ms as f64 / 1000.0, "surge", "#555")];
    if let Some((a, b)) = r.outage_ms {
        out += &format!(
            "<rect x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" fill=\"#f4cccc\" opacity=\"0.5\"/>\n",
            x(a as f64 / 1000.0),
            x(b as f64 / 1000.0) - x(a as f64 / 1000.0),
            top2 + PANEL - TOP
        );
        marks.push((a as f64 / 1000.0, "relay down", "#c00"));
    }
    let surge = r.surge_at_ms as f64 / 1000.0;
    if let Some(w) = s.warning_after_secs {
        marks.push((surge + w, "WARNING", "#e69138"));
    }
    if let Some(c) = s.critical_after_secs {
        marks.push((surge + c, "CRITICAL", "#cc0000"));
    }
    for (i, (at, label, color)) in marks.iter().enumerate() {
        let xx = x(*at);
        out += &format!(
            "<line x1=\"{xx:.1}\" y1=\"{TOP}\" x2=\"{xx:.1}\" y2=\"{}\" stroke=\"{color}\" stroke-dasharray=\"4 3\"/>\n<text x=\"{:.1}\" y=\"{}\" fill=\"{color}\">{label}</text>\n",
            top2 + PANEL,
            xx + 3.0,
            TOP + 14.0 + 14.0 * i as f64
        );
    }
    // Panel 1: queued (left axis), rates (right axis).
    let series = |f: &dyn Fn(&super::report::Sample) -> f64, max: f64| -> Vec<(f64, f64)> {
        r.samples
            .iter()
            .map(|s| (x(s.t_ms as f64 / 1000.0), y1(f(s).max(0.0), max)))
            .collect()
    };
    for (points, color, name) in [
        (series(&|s| s.queued as f64, q_max), "#1f77b4", "queued"),
        (
            series(&|s| s.enqueue_rate, rate_max),
            "#ff7f0e",
            "enqueue rate",
        ),
        (
            series(&|s| s.delivery_rate, rate_max),
            "#2ca02c",
            "delivery rate",
        ),
    ] {
        out += &format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"><title>{name}</title></path>\n",
            path(&points)
        );
    }
    for (i, (color, name)) in [
        ("#1f77b4", "queued"),
        ("#ff7f0e", "enqueue/s"),
        ("#2ca02c", "delivered/s"),
    ]
    .iter()
    .enumerate()
    {
        let lx = W - RIGHT - 300.0 + 100.0 * i as f64;
        out += &format!(
            "<line x1=\"{lx}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{2}\" y=\"{3}\">{name}</text>\n",
            TOP + 14.0,
            lx + 18.0,
            lx + 22.0,
            TOP + 18.0
        );
    }
    // Panel 2: p99 per window, and the target.
    let p_max = nice(
        s.windows
            .iter()
            .map(|w| w.p99_secs)
            .filter(|v| v.is_finite())
            .fold(t.transactional_p99_secs, f64::max),
    );
    let y2 = |v: f64| top2 + PANEL - v / p_max * PANEL;
    for w in &s.windows {
        if !w.p99_secs.is_finite() {
            continue;
        }
        let (x0, x1) = (x(w.from_secs as f64), x((w.to_secs as f64).min(end_secs)));
        let color = if w.p99_secs <= t.transactional_p99_secs {
            "#2ca02c"
        } else {
            "#cc0000"
        };
        out += &format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" opacity=\"0.7\"><title>{}–{} s: p99 {:.2} s</title></rect>\n",
            x0 + 1.0,
            y2(w.p99_secs),
            (x1 - x0 - 2.0).max(1.0),
            top2 + PANEL - y2(w.p99_secs),
            w.from_secs,
            w.to_secs,
            w.p99_secs
        );
    }
    // Postfix through the same scenario: its p99 per window, a line.
    if let Some(p) = postfix {
        let points: Vec<(f64, f64)> = p
            .windows
            .iter()
            .filter(|w| w.p99_secs.is_finite())
            .map(|w| {
                let mid = (w.from_secs + w.to_secs) as f64 / 2.0;
                (x(mid.min(end_secs)), y2(w.p99_secs.min(p_max)))
            })
            .collect();
        out += &format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"#7f7f7f\" stroke-width=\"2\"><title>Postfix, same scenario</title></path>\n<text x=\"{}\" y=\"{}\" fill=\"#7f7f7f\">grey: Postfix, same scenario (capped at the axis)</text>\n",
            path(&points),
            LEFT + 4.0,
            top2 + 14.0
        );
    }
    let ty = y2(t.transactional_p99_secs);
    out += &format!(
        "<line x1=\"{LEFT}\" y1=\"{ty:.1}\" x2=\"{}\" y2=\"{ty:.1}\" stroke=\"#000\" stroke-dasharray=\"6 4\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">target p99 {:.1} s (axis max {p_max} s)</text>\n",
        W - RIGHT,
        W - RIGHT - 4.0,
        ty - 4.0,
        t.transactional_p99_secs
    );
    out += "</svg>\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::drill::report::{summarize, Sample};

    #[test]
    fn the_plot_draws_each_series_and_moment() {
        let r = Recorded {
            surge_at_ms: 5_000,
            outage_ms: Some((8_000, 12_000)),
            samples: (0..20)
                .map(|i| Sample {
                    t_ms: i * 1000,
                    level: i32::from(i >= 7),
                    queued: i * 10,
                    enqueue_rate: 5.0,
                    delivery_rate: 2.0,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let t = Targets {
            transactional_p99_secs: 5.0,
            detect_secs: 60.0,
            window_secs: 10,
            eta_every_secs: 60,
        };
        let s = summarize(&r, &t);
        let svg = svg(&r, &s, Some(&s), &t);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<path d=\"M").count(), 3);
        assert!(svg.contains("Postfix, same scenario"));
        for label in ["surge", "relay down", "WARNING", "target p99 5.0 s"] {
            assert!(svg.contains(label), "{label}");
        }
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(190.0), 200.0);
        assert_eq!(nice(4100.0), 5000.0);
    }
}
