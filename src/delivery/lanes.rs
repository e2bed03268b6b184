//! Which lane the next lease serves: pure, so that the promise is tested
//! as data over any history.
//!
//! The promise: while transactional mail is due, at most 2 leases of other
//! lanes are made before the next transactional one, whatever happened
//! before (hours of one lane only, a restart, a surge); while all lanes are
//! busy they share leases 8:3:1; a lower lane waits at most 4 (normal) or 13
//! (bulk) leases.
//!
//! How: start-time fair queueing ("stride scheduling"). Each lane has a
//! virtual pass; a lease goes to the lane with the lowest pass among those
//! that have mail (ties to the higher lane), and advances its pass by its
//! stride, 24 ÷ weight (transactional 3, normal 8, bulk 24). A lane that was
//! idle may not bank that time: its pass is never taken as behind the clock
//! (the pass at which the last lease started). The weighted round
//! robin this replaces charged the busy lane for the idle ones, so after a
//! quiet hour of password resets a bulk surge owed them nothing and they
//! waited behind it (issue 12: 0 transactional deliveries for 28 s).

use crate::model::Lane;

/// Lane weights, indexed by `Lane::index`: the shares when all are busy.
pub const LANE_WEIGHTS: [u64; 3] = [8, 3, 1];
/// The pass each lease adds: 24 ÷ weight.
const STRIDE: [u64; 3] = [3, 8, 24];

/// Most leases of other lanes made while a lane has mail due, before it
/// gets one: transactional, normal, bulk.
pub const MAX_WAIT_LEASES: [usize; 3] = [2, 4, 13];

/// The lanes' virtual time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LaneClock {
    pass: [u64; 3],
    /// The pass at which the last lease started.
    now: u64,
}

impl LaneClock {
    /// A lane's pass, as the next pick sees it: never behind the clock, so
    /// time spent idle is not credit.
    fn effective(&self, lane: Lane) -> u64 {
        self.pass[lane.index()].max(self.now)
    }

    /// The lanes to try for the next lease, best first (paused ones left
    /// out: bit i of `paused` is `Lane::index` i). The first that has mail
    /// due gets it; tell [`LaneClock::taken`].
    pub fn order(&self, paused: u8) -> Vec<Lane> {
        let mut lanes: Vec<Lane> = Lane::ALL
            .into_iter()
            .filter(|l| paused & (1 << l.index()) == 0)
            .collect();
        lanes.sort_by_key(|l| (self.effective(*l), l.index()));
        lanes
    }

    /// `lane` got a lease.
    pub fn taken(&mut self, lane: Lane) {
        let start = self.effective(lane);
        self.now = self.now.max(start);
        self.pass[lane.index()] = start + STRIDE[lane.index()];
    }

    /// One pick: the first lane of `order` for which `has_mail` holds.
    pub fn pick(&mut self, paused: u8, mut has_mail: impl FnMut(Lane) -> bool) -> Option<Lane> {
        let lane = self.order(paused).into_iter().find(|l| has_mail(*l))?;
        self.taken(lane);
        Some(lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Runs `history` (which lanes have mail at each step) and checks the
    /// bounds; returns the leases per lane.
    fn check(history: &[[bool; 3]]) -> [usize; 3] {
        let mut clock = LaneClock::default();
        let mut waited = [0usize; 3];
        let mut taken = [0usize; 3];
        for (step, busy) in history.iter().enumerate() {
            let got = clock.pick(0, |l| busy[l.index()]);
            assert_eq!(got.is_some(), busy.iter().any(|b| *b), "step {step}");
            for lane in Lane::ALL {
                let i = lane.index();
                if got == Some(lane) {
                    taken[i] += 1;
                    waited[i] = 0;
                } else if busy[i] {
                    waited[i] += 1;
                    assert!(
                        waited[i] <= MAX_WAIT_LEASES[i],
                        "step {step}: {lane:?} waited {} leases",
                        waited[i]
                    );
                } else {
                    waited[i] = 0;
                }
            }
        }
        taken
    }

    fn all_busy(n: usize) -> Vec<[bool; 3]> {
        vec![[true; 3]; n]
    }

    #[test]
    fn all_busy_share_8_3_1() {
        assert_eq!(check(&all_busy(1200)), [800, 300, 100]);
    }

    #[test]
    fn two_busy_share_by_their_weights() {
        assert_eq!(check(&vec![[false, true, true]; 400]), [0, 300, 100]);
        assert_eq!(check(&vec![[true, false, true]; 900]), [800, 0, 100]);
    }

    #[test]
    fn a_quiet_hour_of_one_lane_then_a_surge() {
        // The incident: an hour of password resets alone (50/s, a lease
        // each), then bulk arrives and both stay busy.
        let mut h = vec![[true, false, false]; 180_000];
        h.extend(vec![[true, false, true]; 90]);
        let taken = check(&h);
        assert_eq!(taken[2], 10, "bulk gets its share, no more: {taken:?}");
        assert_eq!(taken[0], 180_080);
        // And the other way round: hours of bulk, then transactional.
        let mut h = vec![[false, false, true]; 180_000];
        h.extend(vec![[true, true, true]; 12]);
        let before = check(&h[..180_000]);
        let after = check(&h);
        // Bulk had just had a lease: the newcomers go first, then share.
        assert!(after[0] - before[0] >= 8, "{before:?} → {after:?}");
    }

    #[test]
    fn random_histories_keep_the_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let mut h = Vec::new();
            while h.len() < 5_000 {
                // Runs: idle, one lane, bursts, everything busy.
                let run = rng.random_range(1..400);
                let busy = [
                    rng.random_bool(0.5),
                    rng.random_bool(0.4),
                    rng.random_bool(0.6),
                ];
                let flicker = rng.random_bool(0.3);
                for _ in 0..run {
                    let mut b = busy;
                    if flicker {
                        b[rng.random_range(0..3)] ^= true;
                    }
                    h.push(b);
                }
            }
            check(&h);
        }
        // Every lane flickering at every step: the worst case found.
        for _ in 0..200 {
            let h: Vec<[bool; 3]> = (0..2_000)
                .map(|_| [0; 3].map(|_| rng.random_bool(0.7)))
                .collect();
            check(&h);
        }
    }

    #[test]
    fn paused_lanes_are_never_offered() {
        let mut clock = LaneClock::default();
        for _ in 0..10 {
            let got = clock.pick(0b001, |_| true);
            assert!(matches!(got, Some(Lane::Normal | Lane::Bulk)), "{got:?}");
            assert!(!clock.order(0b001).contains(&Lane::Transactional));
        }
        assert_eq!(clock.pick(0b111, |_| true), None);
    }
}
