//! Which relay carries a message: a pure function of the message's route
//! (its lane and From address) and a snapshot of the relays (their routes,
//! priority, weight, pause and health), tested as a table.
//!
//! Among the relays whose route takes the message, the healthy ones of the
//! best priority share it by weight. When none is healthy, the message
//! waits for the one that is back first (which then probes); a relay that
//! failed this message's lease is skipped (`excluded`), so its messages
//! fail over at once.

use std::time::Duration;

use crate::model::Lane;

/// One relay as the router sees it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Lanes it carries; empty = all.
    pub lanes: Vec<Lane>,
    /// Lowercase From addresses and `@domains` it carries; empty = all.
    pub senders: Vec<String>,
    pub priority: u32,
    pub weight: u32,
    pub paused: bool,
    /// None: usable now. Some(wait): backing off, or another worker is
    /// probing it, for about that long.
    pub down_for: Option<Duration>,
}

/// What a message asks of a relay.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub lane: Lane,
    /// The From address, lowercase.
    pub from: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Send through this relay now.
    Use(usize),
    /// Every relay that may carry it is down: this one is back first;
    /// send through it when it is (it probes).
    WaitFor(usize),
    /// None may carry it now (all paused, or each failed in this lease).
    Nothing,
}

impl Candidate {
    /// Whether its route takes the message (paused or not).
    pub fn carries(&self, route: &Route) -> bool {
        let lane = self.lanes.is_empty() || self.lanes.contains(&route.lane);
        let sender = self.senders.is_empty()
            || route.from.is_some_and(|from| {
                self.senders.iter().any(|s| match s.strip_prefix('@') {
                    Some(domain) => from.rsplit_once('@').is_some_and(|(_, d)| d == domain),
                    None => s == from,
                })
            });
        lane && sender
    }
}

/// The relay for one message; `draw` is a random number (the weighted share).
pub fn choose(route: &Route, relays: &[Candidate], excluded: &[bool], draw: u64) -> Choice {
    let usable = |i: &usize| {
        let c = &relays[*i];
        !excluded.get(*i).copied().unwrap_or(false) && !c.paused && c.carries(route)
    };
    let allowed: Vec<usize> = (0..relays.len()).filter(usable).collect();
    let up: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|&i| relays[i].down_for.is_none())
        .collect();
    let Some(best) = up.iter().map(|&i| relays[i].priority).min() else {
        return allowed
            .iter()
            .copied()
            .min_by_key(|&i| (relays[i].down_for, relays[i].priority))
            .map_or(Choice::Nothing, Choice::WaitFor);
    };
    let tier: Vec<usize> = up
        .into_iter()
        .filter(|&i| relays[i].priority == best)
        .collect();
    let total: u64 = tier
        .iter()
        .map(|&i| u64::from(relays[i].weight.max(1)))
        .sum();
    let mut point = draw % total;
    for &i in &tier {
        let w = u64::from(relays[i].weight.max(1));
        if point < w {
            return Choice::Use(i);
        }
        point -= w;
    }
    unreachable!("the draw falls within the total weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(priority: u32, weight: u32) -> Candidate {
        Candidate {
            priority,
            weight,
            ..Candidate::default()
        }
    }

    const DOWN: Option<Duration> = Some(Duration::from_secs(3));

    /// (relays, route, excluded) → the choice for draws 0..total.
    #[test]
    fn routing_as_a_table() {
        let normal = Route {
            lane: Lane::Normal,
            from: Some("alerts@shop.example"),
        };
        let bulk = Route {
            lane: Lane::Bulk,
            from: Some("news@shop.example"),
        };
        let draws = |relays: &[Candidate], route: &Route, excluded: &[bool]| -> Vec<Choice> {
            (0..6).map(|d| choose(route, relays, excluded, d)).collect()
        };
        use Choice::*;
        // Weights 2:1 within one priority; priority 1 is the fallback.
        let three = vec![relay(0, 2), relay(0, 1), relay(1, 1)];
        assert_eq!(
            draws(&three, &normal, &[]),
            vec![Use(0), Use(0), Use(1), Use(0), Use(0), Use(1)]
        );
        // One of the pair down: the other takes it all.
        let mut one_down = three.clone();
        one_down[0].down_for = DOWN;
        assert_eq!(draws(&one_down, &normal, &[]), vec![Use(1); 6]);
        // Both preferred down: failover to priority 1.
        let mut pair_down = one_down.clone();
        pair_down[1].down_for = Some(Duration::from_secs(1));
        assert_eq!(draws(&pair_down, &normal, &[]), vec![Use(2); 6]);
        // All down: wait for the one back first.
        let mut all_down = pair_down.clone();
        all_down[2].down_for = DOWN;
        assert_eq!(draws(&all_down, &normal, &[]), vec![WaitFor(1); 6]);
        // Failed in this lease: skipped; paused: never chosen.
        assert_eq!(draws(&three, &normal, &[true, true]), vec![Use(2); 6]);
        let mut paused = three.clone();
        paused[2].paused = true;
        assert_eq!(
            draws(&paused, &normal, &[true, true, false]),
            vec![Nothing; 6]
        );
        // Routes: lanes and senders.
        let mut routed = vec![relay(0, 1), relay(5, 1)];
        routed[0].lanes = vec![Lane::Transactional, Lane::Normal];
        assert_eq!(draws(&routed, &normal, &[]), vec![Use(0); 6]);
        assert_eq!(
            draws(&routed, &bulk, &[]),
            vec![Use(1); 6],
            "lane not carried"
        );
        routed[0].lanes.clear();
        routed[0].senders = vec!["@shop.example".into()];
        assert_eq!(draws(&routed, &bulk, &[]), vec![Use(0); 6]);
        routed[0].senders = vec!["alerts@shop.example".into()];
        assert_eq!(draws(&routed, &normal, &[]), vec![Use(0); 6]);
        assert_eq!(
            draws(&routed, &bulk, &[]),
            vec![Use(1); 6],
            "another address"
        );
        let nobody = Route {
            lane: Lane::Normal,
            from: None,
        };
        assert_eq!(draws(&routed, &nobody, &[]), vec![Use(1); 6]);
    }
}
