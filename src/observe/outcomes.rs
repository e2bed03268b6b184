//! What became of recipients: totals since start and over the last hour,
//! per final state and per bounce class of failed attempts, and the bounce
//! rate relays judge senders by (SES reviews an account at 5%, may pause
//! it at 10%): bounced ÷ (delivered + bounced) recipients, last hour.

use std::sync::Mutex;
use std::time::Instant;

use crate::model::{BounceClass, RcptState};

/// Minutes in the window.
const MINUTES: usize = 60;
const STATES: usize = 6;
const CLASSES: usize = BounceClass::ALL.len();

fn state_index(s: RcptState) -> usize {
    s as usize
}

fn class_index(c: BounceClass) -> usize {
    c as usize
}

#[derive(Clone, Copy, Default)]
struct Counts {
    states: [u64; STATES],
    classes: [u64; CLASSES],
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        for (a, b) in self.states.iter_mut().zip(o.states) {
            *a += b;
        }
        for (a, b) in self.classes.iter_mut().zip(o.classes) {
            *a += b;
        }
    }
}

struct Inner {
    total: Counts,
    /// Which minute since start each slot holds, and its counts.
    minute: [u64; MINUTES],
    ring: [Counts; MINUTES],
}

/// Recipient outcomes, fed by the delivery workers.
pub struct Outcomes {
    start: Instant,
    inner: Mutex<Inner>,
}

/// A view for QueueStats and /metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomeView {
    /// Recipients per final state (`RcptState` order), since start.
    pub recipients_total: [u64; STATES],
    /// The same, last hour.
    pub recipients_last_hour: [u64; STATES],
    /// Failed attempts per bounce class (`BounceClass::ALL` order).
    pub failures_total: [u64; CLASSES],
    pub failures_last_hour: [u64; CLASSES],
    /// bounced ÷ (delivered + bounced) recipients over the last hour
    /// (0 when none finished).
    pub bounce_rate_last_hour: f64,
}

impl OutcomeView {
    pub fn total(&self, s: RcptState) -> u64 {
        self.recipients_total[state_index(s)]
    }
    pub fn last_hour(&self, s: RcptState) -> u64 {
        self.recipients_last_hour[state_index(s)]
    }
}

impl Default for Outcomes {
    fn default() -> Self {
        Outcomes {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                total: Counts::default(),
                minute: [u64::MAX; MINUTES],
                ring: [Counts::default(); MINUTES],
            }),
        }
    }
}

impl Outcomes {
    fn with_slot(&self, f: impl FnOnce(&mut Counts)) {
        let now = self.start.elapsed().as_secs() / 60;
        let mut g = self.inner.lock().expect("outcomes");
        let i = (now % MINUTES as u64) as usize;
        if g.minute[i] != now {
            g.minute[i] = now;
            g.ring[i] = Counts::default();
        }
        let mut delta = Counts::default();
        f(&mut delta);
        g.ring[i].add(&delta);
        g.total.add(&delta);
    }

    /// Recipients that finished in `state`.
    pub fn finished(&self, state: RcptState, n: u64) {
        if n > 0 {
            self.with_slot(|c| c.states[state_index(state)] += n);
        }
    }

    /// One recipient's attempt failed with this class.
    pub fn failed(&self, class: BounceClass) {
        self.with_slot(|c| c.classes[class_index(class)] += 1);
    }

    pub fn view(&self) -> OutcomeView {
        let now = self.start.elapsed().as_secs() / 60;
        let g = self.inner.lock().expect("outcomes");
        let mut hour = Counts::default();
        for (m, c) in g.minute.iter().zip(&g.ring) {
            if *m != u64::MAX && now.saturating_sub(*m) < MINUTES as u64 {
                hour.add(c);
            }
        }
        let delivered = hour.states[state_index(RcptState::Delivered)];
        let bounced = hour.states[state_index(RcptState::Bounced)];
        OutcomeView {
            recipients_total: g.total.states,
            recipients_last_hour: hour.states,
            failures_total: g.total.classes,
            failures_last_hour: hour.classes,
            bounce_rate_last_hour: if delivered + bounced == 0 {
                0.0
            } else {
                bounced as f64 / (delivered + bounced) as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_states_classes_and_the_bounce_rate() {
        let o = Outcomes::default();
        o.finished(RcptState::Delivered, 19);
        o.finished(RcptState::Bounced, 1);
        o.finished(RcptState::Suppressed, 3);
        o.failed(BounceClass::BadMailbox);
        o.failed(BounceClass::Temporary);
        o.failed(BounceClass::Temporary);
        let v = o.view();
        assert_eq!(v.total(RcptState::Delivered), 19);
        assert_eq!(v.last_hour(RcptState::Suppressed), 3);
        assert_eq!(v.failures_total[class_index(BounceClass::Temporary)], 2);
        assert_eq!(
            v.failures_last_hour[class_index(BounceClass::BadMailbox)],
            1
        );
        assert!((v.bounce_rate_last_hour - 0.05).abs() < 1e-9, "{v:?}");
        assert_eq!(Outcomes::default().view().bounce_rate_last_hour, 0.0);
    }
}
