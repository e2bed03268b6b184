//! The recipients' metrics: how many finished how (counters, from the
//! `outcomes` view), the bounce rate over the last hour and the size of
//! the suppression list (gauges), refreshed at scrape time like the rest.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::overview::Overview;
use crate::model::RcptState;

type Labels = Vec<(&'static str, &'static str)>;

/// The states a finished recipient is counted in.
const FINISHED: [RcptState; 4] = [
    RcptState::Delivered,
    RcptState::Bounced,
    RcptState::Suppressed,
    RcptState::Expired,
];

#[derive(Default)]
pub struct RecipientMetrics {
    recipients: Family<Labels, Counter>,
    bounce_rate: Gauge<f64, AtomicU64>,
    suppressed_addresses: Gauge,
}

impl RecipientMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "mailspool_recipients",
            "Recipients finished, by state (delivered, bounced, suppressed, expired)",
            self.recipients.clone(),
        );
        r.register(
            "mailspool_bounce_rate",
            "Bounced / (delivered + bounced) recipients over the last hour (relays act at 0.05-0.10)",
            self.bounce_rate.clone(),
        );
        r.register(
            "mailspool_suppressed_addresses",
            "Addresses on the suppression list",
            self.suppressed_addresses.clone(),
        );
        // Every state at 0 from the start, so rates over them exist.
        for s in FINISHED {
            let _ = self.recipients.get_or_create(&vec![("state", s.name())]);
        }
    }

    pub fn refresh(&self, o: &Overview) {
        for s in FINISHED {
            let c = self.recipients.get_or_create(&vec![("state", s.name())]);
            let (now, want) = (c.get(), o.outcomes.total(s));
            if want > now {
                c.inc_by(want - now);
            }
        }
        self.bounce_rate.set(o.outcomes.bounce_rate_last_hour);
        self.suppressed_addresses
            .set(o.suppression_list_size.min(i64::MAX as u64) as i64);
    }
}
