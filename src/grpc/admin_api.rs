//! The `QueueAdmin` gRPC service: QueueStats (with the congestion state)
//! and the operator actions. Handlers validate, convert to [`ops`] terms
//! and delegate; reads that walk the index run on blocking threads.

use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::grpc::api::{lane_from_proto, lane_to_proto, store_status, Api};
use crate::model::{now_ms, Lane, MessageId};
use crate::pb;
use crate::spool::ops::{self, Filter, StateSel, Summary, Where};
use crate::spool::{AdminOp, Status as SpoolStatus};

fn bad(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// How many of the newest events `ShowMessage` reads, at most, looking for
/// one message's (the proto says the figure).
const SHOW_EVENTS_BUDGET: usize = 1_000_000;

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
    crate::spool::paused_lanes(mask)
        .into_iter()
        .map(|l| lane_to_proto(l) as i32)
        .collect()
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
pub(crate) enum Kind {
    RetryNow,
    Cancel,
    Requeue,
    Purge { older_than_ms: u64 },
}

/// The `QueueAdmin` service: QueueStats and the operator actions. Its own
/// type over the node's shared state (`Api`), with the helpers only it uses.
#[derive(Clone)]
pub struct QueueAdminService(pub Api);

impl std::ops::Deref for QueueAdminService {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.0
    }
}

impl QueueAdminService {
    /// Runs index reads off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Api) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let api = self.0.clone();
        tokio::task::spawn_blocking(move || f(api))
            .await
            .map_err(|e| Status::internal(format!("listing task failed: {e}")))
    }

    /// RetryNow, Cancel, RequeueDead and PurgeDead: by ids or by filter
    /// (also the console's actions).
    pub(crate) async fn operate(
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

impl QueueAdminService {
    /// Pauses or resumes the relays named (each must be configured),
    /// persisted before the relays change.
    async fn set_relays_paused(
        &self,
        names: &[String],
        pause: bool,
    ) -> Result<Response<pb::RelayStateResponse>, Status> {
        self.check_open()?;
        let known = self.relay.names();
        if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
            return Err(Status::not_found(format!(
                "relays: no relay named `{unknown}`; the relays are: {}",
                if known.is_empty() {
                    "none (delivery goes to the local outbox)".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let mut paused = self.store.paused_relays();
        paused.retain(|p| !names.contains(p));
        if pause {
            paused.extend(names.iter().cloned());
        }
        self.store
            .admin(AdminOp::SetPausedRelays(paused.clone()))
            .await
            .map_err(store_status)?;
        self.relay.set_paused(&paused);
        self.scheduler.wake();
        paused.retain(|p| known.contains(p));
        Ok(Response::new(pb::RelayStateResponse {
            paused_relays: paused,
        }))
    }
}

#[tonic::async_trait]
impl pb::queue_admin_server::QueueAdmin for QueueAdminService {
    async fn list_suppressions(
        &self,
        r: Request<pb::ListSuppressionsRequest>,
    ) -> Result<Response<pb::ListSuppressionsResponse>, Status> {
        self.suppressions_list(r.into_inner()).await
    }

    async fn add_suppressions(
        &self,
        r: Request<pb::AddSuppressionsRequest>,
    ) -> Result<Response<pb::AddSuppressionsResponse>, Status> {
        let caller = crate::intake::auth::caller(&r)?.name.clone();
        self.suppressions_add(caller, r.into_inner()).await
    }

    async fn remove_suppressions(
        &self,
        r: Request<pb::RemoveSuppressionsRequest>,
    ) -> Result<Response<pb::RemoveSuppressionsResponse>, Status> {
        self.suppressions_remove(r.into_inner()).await
    }

    async fn queue_stats(
        &self,
        _request: Request<pb::QueueStatsRequest>,
    ) -> Result<Response<pb::QueueStatsResponse>, Status> {
        Ok(Response::new(crate::grpc::overview::overview_to_proto(
            self.overview(),
        )))
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
        let of = |r: &crate::model::Record| {
            crate::grpc::recipients::to_proto(
                &r.envelope_to,
                &r.rcpts,
                &crate::model::Rcpt::pending(r.attempts),
            )
        };
        let mut rcpts = Vec::new();
        let mut since_ms = id.enqueued_ms();
        let (summary, raw) = match status {
            Some(SpoolStatus::Queued(r)) => {
                let raw = self.store.body(id, &r).unwrap_or_default();
                rcpts = of(&r);
                since_ms = r.enqueued_ms;
                let entry = crate::spool::Listed::Queued(id, r);
                (ops::summarize(entry, now, &leased), raw)
            }
            Some(SpoolStatus::Dead(d)) => {
                let raw = d.raw.clone();
                rcpts = of(&d.record);
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
        let store = self.store.clone();
        let (events, complete) = tokio::task::spawn_blocking(move || {
            store.events_of(id.0, since_ms, SHOW_EVENTS_BUDGET)
        })
        .await
        .map_err(|e| Status::internal(format!("reading the event log: {e}")))?
        .map_err(store_status)?;
        let names = self.store.clients().names;
        let events = events
            .into_iter()
            .map(|(seq, e)| {
                let client = names.get(&e.client).cloned().unwrap_or_default();
                crate::grpc::events::event_to_proto(seq, e, client)
            })
            .collect();
        Ok(Response::new(pb::ShowMessageResponse {
            message: Some(summary_to_proto(summary)),
            headers: String::from_utf8_lossy(&raw[..end]).into_owned(),
            recipients: rcpts,
            events,
            events_partial: !complete,
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

    async fn pause_relay(
        &self,
        r: Request<pb::PauseRelayRequest>,
    ) -> Result<Response<pb::RelayStateResponse>, Status> {
        let names = r.into_inner().relays;
        if names.is_empty() {
            return Err(bad(
                "relays",
                "name the relays to pause (pausing every relay would stop all mail: pause lanes with PauseDelivery)",
            ));
        }
        self.set_relays_paused(&names, true).await
    }

    async fn resume_relay(
        &self,
        r: Request<pb::ResumeRelayRequest>,
    ) -> Result<Response<pb::RelayStateResponse>, Status> {
        let mut names = r.into_inner().relays;
        if names.is_empty() {
            names = self.relay.names();
        }
        self.set_relays_paused(&names, false).await
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
        crate::grpc::transfer::start(self.0.clone(), r.into_inner()).await
    }
}
