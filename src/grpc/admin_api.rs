//! The `QueueAdmin` gRPC service: QueueStats (with the congestion state)
//! and the operator actions. Handlers validate, convert to [`ops`] terms
//! and delegate; reads that walk the index run on blocking threads.

use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::grpc::api::{lane_from_proto, lane_to_proto, store_status, Api};
use crate::model::{now_ms, Lane, MessageId};
use crate::observe::congestion::{assess, Level, Signals};
use crate::observe::overview::{ClientFigures, Overview};
use crate::observe::stats::queue_stats;
use crate::pb;
use crate::spool::ops::{self, Filter, StateSel, Summary, Where};
use crate::spool::{AdminOp, Status as SpoolStatus};

fn bad(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

fn parse_id(field: &str, raw: &str) -> Result<MessageId, Status> {
    MessageId::parse(raw).ok_or_else(|| {
        bad(
            field,
            format!("`{raw}` is not a mailspool id (16 hex digits)"),
        )
    })
}

/// LANE_UNSPECIFIED in a filter means every lane.
fn lane_filter(field: &str, v: i32) -> Result<Option<Lane>, Status> {
    if v == pb::Lane::Unspecified as i32 {
        return Ok(None);
    }
    lane_from_proto(v)
        .map(Some)
        .map_err(|_| bad(field, format!("unknown lane {v}")))
}

fn filter_from_proto(f: Option<pb::MessageFilter>) -> Result<Filter, Status> {
    let f = f.unwrap_or_default();
    let state = match pb::StateFilter::try_from(f.state) {
        Ok(pb::StateFilter::Unspecified) => StateSel::Queued,
        Ok(pb::StateFilter::StateReady) => StateSel::Ready,
        Ok(pb::StateFilter::StateScheduled) => StateSel::Scheduled,
        Ok(pb::StateFilter::StateInFlight) => StateSel::InFlight,
        Ok(pb::StateFilter::StateDead) => StateSel::Dead,
        Ok(pb::StateFilter::StateQuarantined) => StateSel::Quarantined,
        Err(_) => return Err(bad("filter.state", format!("unknown state {}", f.state))),
    };
    let domain = f.recipient_domain.trim().trim_start_matches('@');
    if domain.contains(['@', ' ']) {
        return Err(bad("filter.recipient_domain", "a domain, like example.org"));
    }
    let age = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    if f.min_age_seconds > 0 && f.max_age_seconds > 0 && f.min_age_seconds > f.max_age_seconds {
        return Err(bad(
            "filter.min_age_seconds",
            "greater than max_age_seconds: nothing can match",
        ));
    }
    Ok(Filter {
        state,
        lane: lane_filter("filter.lane", f.lane)?,
        domain: (!domain.is_empty()).then(|| domain.to_ascii_lowercase()),
        min_age: age(f.min_age_seconds),
        max_age: age(f.max_age_seconds),
    })
}

fn lanes_from_proto(lanes: &[i32]) -> Result<u8, Status> {
    if lanes.is_empty() {
        return Ok(0b111);
    }
    let mut mask = 0;
    for (i, &l) in lanes.iter().enumerate() {
        match lane_filter(&format!("lanes[{i}]"), l)? {
            Some(lane) => mask |= 1 << lane.index(),
            None => mask = 0b111,
        }
    }
    Ok(mask)
}

pub(crate) fn paused_lanes(mask: u8) -> Vec<i32> {
    Lane::ALL
        .into_iter()
        .filter(|l| mask & (1 << l.index()) != 0)
        .map(|l| lane_to_proto(l) as i32)
        .collect()
}

/// QueueStats as the wire has it.
fn overview_to_proto(o: Overview) -> pb::QueueStatsResponse {
    let s = o.stats;
    let inbox = o.time_to_inbox;
    pb::QueueStatsResponse {
        queued: s.queued,
        ready: s.ready,
        scheduled: s.scheduled,
        in_flight: s.in_flight,
        dead: s.dead,
        enqueued_total: s.enqueued_total,
        delivered_total: s.delivered_total,
        retried_total: s.retried_total,
        dead_total: s.dead_total,
        oldest_queued_age_seconds: s.oldest_queued_age_seconds,
        enqueue_rate_per_second: s.enqueue_rate_per_second,
        delivery_rate_per_second: s.delivery_rate_per_second,
        drain_eta_seconds: s.drain_eta_seconds,
        queued_transactional: s.queued_by_lane[0],
        queued_normal: s.queued_by_lane[1],
        queued_bulk: s.queued_by_lane[2],
        duplicates_total: s.duplicates_total,
        group_commits_total: s.group_commits_total,
        uptime_seconds: s.uptime_seconds,
        fsyncs_total: s.fsyncs_total,
        quarantined: s.quarantined,
        spool_bytes: s.spool_bytes,
        max_spool_bytes: o.max_spool_bytes,
        disk_free_bytes: o.disk_free_bytes,
        refused_total: o.refused_total,
        relay_state: o.relay_state.to_string(),
        relay_consecutive_failures: o.relay_consecutive_failures,
        relay_backoff_remaining_ms: o.relay_backoff_remaining_ms,
        congestion: match o.congestion {
            Level::Ok => pb::Congestion::Ok,
            Level::Warning => pb::Congestion::Warning,
            Level::Critical => pb::Congestion::Critical,
        } as i32,
        congestion_reason: o.congestion_reason,
        congestion_since_unix_ms: o.congestion_since_ms as i64,
        paused_lanes: o
            .paused_lanes
            .into_iter()
            .map(|l| lane_to_proto(l) as i32)
            .collect(),
        cancelled_total: o.cancelled_total,
        clients: o
            .clients
            .into_iter()
            .map(|c| pb::ClientStats {
                name: c.name,
                queued: c.queued,
                queued_bytes: c.queued_bytes,
                enqueued_total: c.enqueued_total,
                delivered_total: c.delivered_total,
                dead_total: c.dead_total,
                refused_rate_total: c.refused_rate_total,
                refused_quota_total: c.refused_quota_total,
                refused_policy_total: c.refused_policy_total,
                rate_per_second: c.rate_per_second,
                max_queued_messages: c.max_queued_messages,
                max_queued_bytes: c.max_queued_bytes,
            })
            .collect(),
        net_drain_rate_per_second: s.net_drain_rate_per_second,
        rate_window_seconds: s.rate_window_seconds as u32,
        rates_warming_up: s.rates_warming_up,
        waiting_transactional_seconds: s.waiting_by_lane_seconds[0],
        waiting_normal_seconds: s.waiting_by_lane_seconds[1],
        waiting_bulk_seconds: s.waiting_by_lane_seconds[2],
        time_to_inbox_p50_transactional_seconds: inbox[0].0,
        time_to_inbox_p99_transactional_seconds: inbox[0].1,
        time_to_inbox_p50_normal_seconds: inbox[1].0,
        time_to_inbox_p99_normal_seconds: inbox[1].1,
        time_to_inbox_p50_bulk_seconds: inbox[2].0,
        time_to_inbox_p99_bulk_seconds: inbox[2].1,
    }
}

fn summary_to_proto(s: Summary) -> pb::MessageSummary {
    let (state, detail) = match s.place {
        Where::Ready => (pb::MessageState::Queued, pb::StateFilter::StateReady),
        Where::Scheduled => (pb::MessageState::Queued, pb::StateFilter::StateScheduled),
        Where::InFlight => (pb::MessageState::InFlight, pb::StateFilter::StateInFlight),
        Where::Dead => (pb::MessageState::Dead, pb::StateFilter::StateDead),
        Where::Quarantined => (
            pb::MessageState::Quarantined,
            pb::StateFilter::StateQuarantined,
        ),
    };
    pb::MessageSummary {
        id: s.id.to_string(),
        state: state as i32,
        detail: detail as i32,
        lane: s.lane.map(|l| lane_to_proto(l) as i32).unwrap_or(0),
        envelope_from: s.envelope_from,
        envelope_to: s.envelope_to,
        attempts: s.attempts,
        last_error: s.last_error,
        enqueued_unix_ms: s.enqueued_ms as i64,
        next_attempt_unix_ms: s.next_attempt_ms as i64,
        size_bytes: s.size_bytes,
        message_id: s.message_id,
        idempotency_key: s.idempotency_key,
        finished_unix_ms: s.finished_ms as i64,
    }
}

/// Which operation a bulk call is.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    RetryNow,
    Cancel,
    Requeue,
    Purge { older_than_ms: u64 },
}

impl Api {
    /// The queue's state now (QueueStats, `/metrics`); steps the congestion
    /// tracker (which logs a change once), so the server calls it every
    /// second as `observe_congestion`.
    pub fn overview(&self) -> Overview {
        let now = now_ms();
        let relay = self.relay.state();
        let admin = self.store.admin_state();
        let s = queue_stats(
            &self.store.snapshot(now),
            self.scheduler.in_flight(),
            self.rates.view(),
            self.rates.uptime_seconds(),
            now,
        );
        let signals = Signals {
            queued: s.queued,
            ready: s.ready,
            oldest_age_secs: s.oldest_queued_age_seconds,
            drain_eta_secs: s.drain_eta_seconds,
            enqueue_rate: s.enqueue_rate_per_second,
            delivery_rate: s.delivery_rate_per_second,
            uptime_secs: s.uptime_seconds,
            paused: admin.paused != 0,
            warming_up: s.rates_warming_up,
            rate_window_secs: s.rate_window_seconds,
            waiting_secs: s.waiting_by_lane_seconds,
        };
        let (level, reason) = assess(&signals, &self.thresholds);
        let (congestion, congestion_reason, congestion_since_ms) =
            self.congestion
                .observe(level, reason, &signals, now, &self.thresholds);
        Overview {
            stats: s,
            max_spool_bytes: self.spool_limits.max_spool_bytes,
            disk_free_bytes: self.disk_free.load(std::sync::atomic::Ordering::Relaxed),
            refused_total: self.refused.load(std::sync::atomic::Ordering::Relaxed),
            cancelled_total: admin.cancelled_total,
            relay_state: relay.state,
            relay_consecutive_failures: relay.consecutive_failures,
            relay_backoff_remaining_ms: relay.backoff_remaining_ms,
            congestion,
            congestion_reason,
            congestion_since_ms,
            paused_lanes: Lane::ALL
                .into_iter()
                .filter(|l| admin.paused & (1 << l.index()) != 0)
                .collect(),
            clients: self.client_figures(),
            time_to_inbox: self.rates.time_to_inbox().map(|q| q.unwrap_or((0.0, 0.0))),
        }
    }

    /// Moves the congestion state on (logging a change once).
    pub fn observe_congestion(&self) {
        let _ = self.overview();
    }

    /// Every configured client, and any other that has mail in the spool
    /// (a client removed from the configuration), by name.
    fn client_figures(&self) -> Vec<ClientFigures> {
        use std::sync::atomic::Ordering::Relaxed;
        let registry = self.store.clients();
        let named = |name: &str| ClientFigures {
            name: name.to_string(),
            ..Default::default()
        };
        let mut out: std::collections::BTreeMap<String, ClientFigures> = registry
            .names
            .values()
            .map(|name| (name.clone(), named(name)))
            .collect();
        for c in &self.auth.clients() {
            let e = out.entry(c.name.clone()).or_insert_with(|| named(&c.name));
            e.refused_rate_total = c.refused_rate.load(Relaxed);
            e.refused_quota_total = c.refused_quota.load(Relaxed);
            e.refused_policy_total = c.refused_policy.load(Relaxed);
            e.rate_per_second = c.rate_per_second;
            e.max_queued_messages = c.max_queued_messages;
            e.max_queued_bytes = c.max_queued_bytes;
        }
        for e in out.values_mut() {
            let k = registry.counters_of(&e.name);
            e.queued = k.queued;
            e.queued_bytes = k.queued_bytes;
            e.enqueued_total = k.enqueued_total;
            e.delivered_total = k.delivered_total;
            e.dead_total = k.dead_total;
        }
        out.into_values().collect()
    }

    /// Runs index reads off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Api) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let api = self.clone();
        tokio::task::spawn_blocking(move || f(api))
            .await
            .map_err(|e| Status::internal(format!("listing task failed: {e}")))
    }

    /// RetryNow, Cancel, RequeueDead and PurgeDead: by ids or by filter.
    async fn operate(
        &self,
        kind: Kind,
        ids: Vec<String>,
        filter: Option<pb::MessageFilter>,
        dry_run: bool,
        limit: u64,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        self.check_open()?;
        let mut f = filter_from_proto(filter)?;
        match kind {
            Kind::Requeue | Kind::Purge { .. } => f.state = StateSel::Dead,
            // Only scheduled messages can be made due sooner.
            Kind::RetryNow if f.state == StateSel::Queued => f.state = StateSel::Scheduled,
            Kind::RetryNow | Kind::Cancel => {
                if matches!(f.state, StateSel::Dead | StateSel::Quarantined) {
                    return Err(bad(
                        "filter.state",
                        "applies to queued messages (ready, scheduled, in flight)",
                    ));
                }
            }
        }
        let mut resp = pb::OperationResponse::default();
        let targets: Vec<MessageId> = if ids.is_empty() {
            let sel = self
                .blocking(move |api| {
                    let now = now_ms();
                    let sched = api.scheduler.clone();
                    let keep = move |s: &Summary| match kind {
                        Kind::Purge { older_than_ms } => {
                            s.finished_ms.saturating_add(older_than_ms) <= now
                        }
                        _ => true,
                    };
                    ops::select(&api.store, &f, limit, now, &|id| sched.is_leased(id), &keep)
                })
                .await?;
            resp.skipped = sel.skipped;
            sel.ids
        } else {
            let mut targets = Vec::with_capacity(ids.len());
            for (i, raw) in ids.iter().enumerate() {
                let id = parse_id(&format!("ids[{i}]"), raw)?;
                let status = self.store.status(id).map_err(store_status)?;
                let applies = matches!(
                    (kind, &status),
                    (Kind::RetryNow | Kind::Cancel, Some(SpoolStatus::Queued(_)))
                        | (
                            Kind::Requeue | Kind::Purge { .. },
                            Some(SpoolStatus::Dead(_))
                        )
                );
                if !applies {
                    resp.not_found.push(raw.clone());
                } else if matches!(kind, Kind::RetryNow | Kind::Cancel)
                    && self.scheduler.is_leased(id)
                {
                    resp.skipped += 1;
                } else {
                    targets.push(id);
                }
            }
            targets
        };
        resp.matched = targets.len() as u64 + resp.skipped;
        resp.sample_ids = targets
            .iter()
            .take(ops::SAMPLE)
            .map(|id| id.to_string())
            .collect();
        if dry_run || targets.is_empty() {
            return Ok(Response::new(resp));
        }
        let (changed, unchanged) = ops::apply(&self.store, &targets, |chunk| match kind {
            Kind::RetryNow => AdminOp::RetryNow(chunk),
            Kind::Cancel => AdminOp::Cancel {
                ids: chunk,
                reason: "cancelled by an operator".into(),
            },
            Kind::Requeue => AdminOp::Requeue(chunk),
            Kind::Purge { .. } => AdminOp::Purge(chunk),
        })
        .await
        .map_err(store_status)?;
        resp.affected = changed;
        // Gone meanwhile (delivered, or already due): left alone.
        resp.skipped += unchanged.len() as u64;
        tracing::info!(
            operation = match kind {
                Kind::RetryNow => "retry_now",
                Kind::Cancel => "cancel",
                Kind::Requeue => "requeue_dead",
                Kind::Purge { .. } => "purge_dead",
            },
            matched = resp.matched,
            affected = resp.affected,
            "AdminOperation"
        );
        if matches!(kind, Kind::RetryNow | Kind::Requeue) {
            self.scheduler.wake();
        }
        Ok(Response::new(resp))
    }

    async fn set_paused(&self, lanes: &[i32], pause: bool) -> Result<u8, Status> {
        self.check_open()?;
        let mask = lanes_from_proto(lanes)?;
        let current = self.store.admin_state().paused;
        let next = if pause {
            current | mask
        } else {
            current & !mask
        };
        self.store
            .admin(AdminOp::SetPaused(next))
            .await
            .map_err(store_status)?;
        tracing::info!(paused = next, "DeliveryPauseChanged");
        self.scheduler.wake();
        Ok(next)
    }
}

#[tonic::async_trait]
impl pb::queue_admin_server::QueueAdmin for Api {
    async fn queue_stats(
        &self,
        _request: Request<pb::QueueStatsRequest>,
    ) -> Result<Response<pb::QueueStatsResponse>, Status> {
        Ok(Response::new(overview_to_proto(self.overview())))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let r = request.into_inner();
        let f = filter_from_proto(r.filter)?;
        let page_size = match r.page_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => return Err(bad("page_size", format!("{n}; at most 1000"))),
        };
        let cursor = if r.cursor.is_empty() {
            None
        } else {
            Some(parse_id("cursor", &r.cursor)?)
        };
        let page = self
            .blocking(move |api| {
                let sched = api.scheduler.clone();
                ops::list(&api.store, &f, cursor, page_size, now_ms(), &|id| {
                    sched.is_leased(id)
                })
            })
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page.items.into_iter().map(summary_to_proto).collect(),
            next_cursor: page.next.map(|c| c.to_string()).unwrap_or_default(),
            scanned: page.scanned as u64,
        }))
    }

    async fn show_message(
        &self,
        request: Request<pb::ShowMessageRequest>,
    ) -> Result<Response<pb::ShowMessageResponse>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        let status = self.store.status(id).map_err(store_status)?;
        let now = now_ms();
        let leased = |i| self.scheduler.is_leased(i);
        let (summary, raw) = match status {
            Some(SpoolStatus::Queued(r)) => {
                let raw = self.store.body(id, &r).unwrap_or_default();
                let entry = crate::spool::Listed::Queued(id, r);
                (ops::summarize(entry, now, &leased), raw)
            }
            Some(SpoolStatus::Dead(d)) => {
                let raw = d.raw.clone();
                let entry = crate::spool::Listed::Dead(id, d);
                (ops::summarize(entry, now, &leased), raw)
            }
            Some(SpoolStatus::Quarantined) => (
                ops::summarize(crate::spool::Listed::Quarantined(id), now, &leased),
                Vec::new(),
            ),
            _ => {
                return Err(Status::not_found(format!(
                    "id: no queued, dead or quarantined message {id} (GetMessage tells delivered and cancelled ones)"
                )))
            }
        };
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(raw.len());
        Ok(Response::new(pb::ShowMessageResponse {
            message: Some(summary_to_proto(summary)),
            headers: String::from_utf8_lossy(&raw[..end]).into_owned(),
        }))
    }

    async fn retry_now(
        &self,
        r: Request<pb::RetryNowRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = r.into_inner();
        self.operate(Kind::RetryNow, r.ids, r.filter, r.dry_run, r.limit)
            .await
    }

    async fn cancel(
        &self,
        r: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = r.into_inner();
        self.operate(Kind::Cancel, r.ids, r.filter, r.dry_run, r.limit)
            .await
    }

    async fn requeue_dead(
        &self,
        r: Request<pb::RequeueDeadRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = r.into_inner();
        self.operate(Kind::Requeue, r.ids, r.filter, r.dry_run, r.limit)
            .await
    }

    async fn purge_dead(
        &self,
        r: Request<pb::PurgeDeadRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = r.into_inner();
        let kind = Kind::Purge {
            older_than_ms: r.older_than_seconds.saturating_mul(1000),
        };
        self.operate(kind, Vec::new(), None, r.dry_run, r.limit)
            .await
    }

    async fn pause_delivery(
        &self,
        r: Request<pb::PauseDeliveryRequest>,
    ) -> Result<Response<pb::DeliveryStateResponse>, Status> {
        let mask = self.set_paused(&r.into_inner().lanes, true).await?;
        Ok(Response::new(pb::DeliveryStateResponse {
            paused_lanes: paused_lanes(mask),
        }))
    }

    async fn resume_delivery(
        &self,
        r: Request<pb::ResumeDeliveryRequest>,
    ) -> Result<Response<pb::DeliveryStateResponse>, Status> {
        let mask = self.set_paused(&r.into_inner().lanes, false).await?;
        Ok(Response::new(pb::DeliveryStateResponse {
            paused_lanes: paused_lanes(mask),
        }))
    }

    async fn top_domains(
        &self,
        r: Request<pb::TopDomainsRequest>,
    ) -> Result<Response<pb::TopDomainsResponse>, Status> {
        let r = r.into_inner();
        let lane = lane_filter("lane", r.lane)?;
        let top = match r.limit {
            0 => 20,
            n => n as usize,
        };
        let shape = self
            .blocking(move |api| ops::shape(&api.store, lane, top, now_ms()))
            .await?;
        let row = |domain: String, b: &[u64]| pb::DomainRow {
            domain,
            total: b.iter().sum(),
            buckets: b.to_vec(),
        };
        Ok(Response::new(pb::TopDomainsResponse {
            bucket_upper_minutes: ops::AGE_BUCKETS_MIN.to_vec(),
            domains: shape
                .domains
                .iter()
                .map(|(d, b)| row(d.clone(), b))
                .collect(),
            total: Some(row("TOTAL".into(), &shape.total)),
            scanned: shape.scanned as u64,
        }))
    }

    type TransferStream = crate::grpc::transfer::ProgressStream;

    async fn transfer(
        &self,
        r: Request<pb::TransferRequest>,
    ) -> Result<Response<Self::TransferStream>, Status> {
        crate::grpc::transfer::start(self.clone(), r.into_inner()).await
    }
}
