//! The last hour of the queue, kept by the server so that a console
//! opened now has its chart at once: depth, rates and the congestion
//! level every `EVERY` seconds, oldest first, the oldest dropped past an
//! hour. In memory only (a restart starts it again, as the rates do).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Seconds between points.
pub const EVERY_SECS: u64 = 5;
/// Points kept: an hour's.
pub const POINTS: usize = 3600 / EVERY_SECS as usize;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Point {
    pub t_ms: u64,
    pub queued: u64,
    pub ready: u64,
    pub dead: u64,
    pub enqueue_rate: f64,
    pub delivery_rate: f64,
    /// 0 OK, 1 WARNING, 2 CRITICAL.
    pub congestion: u8,
}

#[derive(Debug, Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
}

impl History {
    /// Records `p` unless the last point is less than `EVERY_SECS` old.
    pub fn record(&self, p: Point) {
        let mut points = self.points.lock().expect("history");
        if points
            .back()
            .is_some_and(|last| p.t_ms < last.t_ms + EVERY_SECS * 1000)
        {
            return;
        }
        if points.len() == POINTS {
            points.pop_front();
        }
        points.push_back(p);
    }

    /// The points, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points
            .lock()
            .expect("history")
            .iter()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_a_point_every_five_seconds_for_an_hour() {
        let h = History::default();
        for s in 0..(3600 + 600) {
            h.record(Point {
                t_ms: s * 1000,
                queued: s,
                ..Default::default()
            });
        }
        let p = h.points();
        assert_eq!(p.len(), POINTS);
        // The last hour, every 5 s: the first 10 minutes are gone.
        assert_eq!(p[0].t_ms, 600_000);
        assert_eq!(p.last().unwrap().queued, 4195);
        assert!(p.windows(2).all(|w| w[1].t_ms - w[0].t_ms == 5000));
    }
}
