//! The gRPC layer: proto in, core types to the store and scheduler, proto
//! out. Handlers are validate → convert → delegate; every error becomes a
//! gRPC status here and nowhere else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::intake::auth::{caller, Authenticator, Client};
use crate::intake::gate::{Intake, Refused as GateRefused, Request as GateRequest};

use crate::delivery::scheduler::Scheduler;
use crate::intake::message::{self, AttachmentInput, EmailInput, InvalidField, Limits};
use crate::model::{now_ms, Lane, MessageId, NewMessage, Rcpt, RcptState};

use super::recipients;
use crate::observe::stats::Rates;
use crate::pb;
use crate::spool::{Status as SpoolStatus, Store, StoreError};

/// The node's shared state, behind both services (`MailQueueService`,
/// `QueueAdminService`), the server and `/metrics`. Cloning is cheap.
#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub scheduler: Arc<Scheduler>,
    pub rates: Arc<Rates>,
    pub limits: Limits,
    pub max_batch_items: usize,
    /// Set at the start of shutdown: new calls get UNAVAILABLE.
    pub closing: Arc<AtomicBool>,
    /// What may enter the spool (policy, quota, rate, room).
    pub intake: Arc<Intake>,
    pub relay: Arc<crate::delivery::relay::Relay>,
    pub metrics: Arc<crate::observe::metrics::Metrics>,
    pub congestion: Arc<crate::observe::congestion::Tracker>,
    pub thresholds: crate::observe::congestion::Thresholds,
    /// How long a console login lasts.
    pub console_session: std::time::Duration,
    /// One Transfer at a time.
    pub transfer_lock: Arc<tokio::sync::Mutex<()>>,
    /// Who may call what (`auth`).
    pub auth: Arc<Authenticator>,
    /// Per lane (`Lane::index`): the default deadline, ms after it is due
    /// (0 = none).
    pub lane_expiry_ms: [u64; 3],
    /// What became of recipients, fed by the delivery workers.
    pub outcomes: Arc<crate::observe::outcomes::Outcomes>,
    /// The webhook endpoints, for their figures.
    pub webhooks: crate::webhooks::Webhooks,
    /// The last hour, a point every few seconds (the console's chart).
    pub history: Arc<crate::observe::history::History>,
}

/// Why one message of a request was refused before anything was written.
enum Refused {
    Invalid(InvalidField),
    /// The client's policy forbids it: (field, reason).
    Denied(&'static str, String),
    Exhausted(String, std::time::Duration),
    /// Every recipient is on the suppression list: (field, reason).
    Suppressed(String, String),
}

impl Refused {
    fn code(&self) -> Code {
        match self {
            Refused::Invalid(_) => Code::InvalidArgument,
            Refused::Denied(..) => Code::PermissionDenied,
            Refused::Exhausted(..) => Code::ResourceExhausted,
            Refused::Suppressed(..) => Code::FailedPrecondition,
        }
    }

    /// The message, with `prefix` (a batch item's `requests[i]`) before
    /// the field.
    fn message(&self, prefix: &str) -> String {
        let dot = if prefix.is_empty() { "" } else { "." };
        match self {
            Refused::Invalid(e) => format!("{prefix}{dot}{e}"),
            Refused::Denied(field, reason) => format!("{prefix}{dot}{field}: {reason}"),
            Refused::Suppressed(field, reason) => format!("{prefix}{dot}{field}: {reason}"),
            Refused::Exhausted(reason, _) if prefix.is_empty() => reason.clone(),
            Refused::Exhausted(reason, _) => format!("{prefix}: {reason}"),
        }
    }

    fn status(self) -> Status {
        match self {
            Refused::Exhausted(reason, wait) => Status::with_error_details(
                Code::ResourceExhausted,
                reason,
                ErrorDetails::with_retry_info(Some(wait)),
            ),
            other => Status::new(other.code(), other.message("")),
        }
    }
}

pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Closed => {
            Status::unavailable("mailspool is shutting down; retry shortly or on another node")
        }
        StoreError::Failed(why) => Status::unavailable(format!(
            "this node's spool stopped after a failed fsync ({why}) and is restarting; \
             the message may have been stored: send it again with the same idempotency key, \
             to another node if this one is not back"
        )),
        other => Status::unavailable(format!(
            "the spool could not confirm the write ({other}); the message may have been stored: \
             send it again with the same idempotency key"
        )),
    }
}

pub(crate) fn lane_from_proto(v: i32) -> Result<Lane, InvalidField> {
    match pb::Lane::try_from(v) {
        Ok(pb::Lane::Transactional) => Ok(Lane::Transactional),
        Ok(pb::Lane::Unspecified | pb::Lane::Normal) => Ok(Lane::Normal),
        Ok(pb::Lane::Bulk) => Ok(Lane::Bulk),
        Err(_) => Err(InvalidField {
            field: "lane".into(),
            reason: format!("unknown lane {v}"),
        }),
    }
}

pub fn lane_to_proto(l: Lane) -> pb::Lane {
    match l {
        Lane::Transactional => pb::Lane::Transactional,
        Lane::Normal => pb::Lane::Normal,
        Lane::Bulk => pb::Lane::Bulk,
    }
}

impl Api {
    pub(crate) fn check_open(&self) -> Result<(), Status> {
        if self.closing.load(Ordering::Acquire) {
            return Err(store_status(StoreError::Closed));
        }
        Ok(())
    }

    /// Whether a small transactional message would be admitted now (the
    /// readiness the health service reports).
    pub fn accepting_transactional(&self) -> bool {
        self.intake
            .accepting_transactional(self.rates.per_second().1)
    }
}

/// The `MailQueue` service: enqueue, and look messages up. Its own type
/// over the node's shared state (`Api`), with the helpers only it uses.
#[derive(Clone)]
pub struct MailQueueService(pub Api);

impl std::ops::Deref for MailQueueService {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.0
    }
}

impl MailQueueService {
    /// Validates one request and builds its message.
    fn prepare(&self, req: pb::EnqueueRequest) -> Result<NewMessage, InvalidField> {
        let lane = lane_from_proto(req.lane)?;
        let expires_ms = recipients::deadline(
            req.expires_at_unix_ms,
            req.not_before_unix_ms,
            lane,
            &self.lane_expiry_ms,
            now_ms(),
        )?;
        let mut m = self.build(req, lane)?;
        m.expires_ms = expires_ms;
        Ok(m)
    }

    fn build(&self, req: pb::EnqueueRequest, lane: Lane) -> Result<NewMessage, InvalidField> {
        if let Some(raw) = req.raw {
            if req.email.is_some() {
                return Err(InvalidField {
                    field: "raw".into(),
                    reason: "give either email or raw, not both".into(),
                });
            }
            let input = message::RawInput {
                data: &raw.data,
                envelope_from: &raw.envelope_from,
                envelope_to: &raw.envelope_to,
            };
            return message::build_raw(
                &input,
                lane,
                &req.idempotency_key,
                req.not_before_unix_ms,
                &self.limits,
                now_ms(),
            );
        }
        let email = req.email.ok_or_else(|| InvalidField {
            field: "email".into(),
            reason: "required".into(),
        })?;
        let mut headers: Vec<(String, String)> = email.headers.into_iter().collect();
        headers.sort();
        let input = EmailInput {
            from: email.from,
            to: email.to,
            cc: email.cc,
            bcc: email.bcc,
            reply_to: email.reply_to,
            subject: email.subject,
            text_body: email.text_body,
            html_body: email.html_body,
            headers,
            extra_headers: email
                .extra_headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
            attachments: email
                .attachments
                .into_iter()
                .map(|a| AttachmentInput {
                    filename: a.filename,
                    content_type: a.content_type,
                    content: a.content,
                    content_id: a.content_id,
                    disposition: a.disposition,
                })
                .collect(),
            envelope_from: email.envelope_from,
        };
        message::build(
            &input,
            lane,
            &req.idempotency_key,
            req.not_before_unix_ms,
            &self.limits,
            now_ms(),
        )
    }

    /// Validates one request's message, then asks the intake to admit it.
    fn accept_one(
        &self,
        req: pb::EnqueueRequest,
        gate: &mut GateRequest<'_>,
    ) -> Result<NewMessage, Refused> {
        let raw = req.raw.is_some();
        let m = self.prepare(req).map_err(Refused::Invalid)?;
        gate.admit(m, raw).map_err(|r| match r {
            GateRefused::Denied(field, reason) => Refused::Denied(field, reason),
            GateRefused::Exhausted(reason, wait) => Refused::Exhausted(reason, wait),
            GateRefused::Suppressed(field, reason) => Refused::Suppressed(field, reason),
        })
    }

    /// One request's admission, at the current delivery rate.
    fn gate<'a>(&'a self, client: &'a Client) -> GateRequest<'a> {
        self.intake.request(client, self.rates.per_second().1)
    }

    /// Whether `client` may see a message's state: with auth on, a client
    /// without the admin role sees only its own queued and dead messages
    /// (their errors quote recipients), not quarantined ones. Delivered and
    /// cancelled ones keep no owner and carry no addresses or errors.
    fn may_see(&self, client: &Client, status: &SpoolStatus) -> bool {
        if !self.auth.enabled() || client.has(crate::intake::auth::Role::Admin) {
            return true;
        }
        let owner = match status {
            SpoolStatus::Queued(r) => r.client,
            SpoolStatus::Dead(d) => d.record.client,
            SpoolStatus::Quarantined => return false,
            // Kept without recipients by older versions: nothing to hide.
            SpoolStatus::Delivered(d) if d.envelope_to.is_empty() => return true,
            SpoolStatus::Cancelled(c) if c.envelope_to.is_empty() => return true,
            SpoolStatus::Delivered(d) => d.client,
            SpoolStatus::Cancelled(c) => c.client,
        };
        self.store.client_slot(&client.name) == Some(owner)
    }

    /// Observes the call's duration into the enqueue histogram when dropped.
    fn enqueue_timer(&self) -> impl Drop {
        struct Timer(Arc<crate::observe::metrics::Metrics>, std::time::Instant);
        impl Drop for Timer {
            fn drop(&mut self) {
                self.0
                    .enqueue_duration
                    .observe(self.1.elapsed().as_secs_f64());
            }
        }
        Timer(self.metrics.clone(), std::time::Instant::now())
    }

    fn accepted(&self, appended: &[crate::spool::Appended]) {
        let new = appended.iter().filter(|a| !a.duplicate).count() as u64;
        if new > 0 {
            self.rates.enqueued(new);
            self.scheduler.wake();
        }
    }
}

#[tonic::async_trait]
impl pb::mail_queue_server::MailQueue for MailQueueService {
    type WatchEventsStream = crate::grpc::events::EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.check_open()?;
        let client = caller(&request)?;
        let only = (self.auth.enabled() && !client.has(crate::intake::auth::Role::Admin))
            .then(|| client.name.clone());
        crate::grpc::events::watch(self.0.clone(), request.into_inner(), only)
    }

    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        self.check_open()?;
        let client = caller(&request)?;
        let _timer = self.enqueue_timer();
        let message = self
            .accept_one(request.into_inner(), &mut self.gate(&client))
            .map_err(Refused::status)?;
        // Kept in the message: the spool writes their `suppressed` events.
        let suppressed = recipients::suppressed_to_proto(&message.suppressed);
        let appended = self
            .store
            .append(vec![message])
            .await
            .map_err(store_status)?;
        self.accepted(&appended);
        let a = appended
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("store returned no result"))?;
        Ok(Response::new(pb::EnqueueResponse {
            id: a.id.to_string(),
            duplicate: a.duplicate,
            message_id: a.message_id,
            suppressed,
        }))
    }

    async fn enqueue_batch(
        &self,
        request: Request<pb::EnqueueBatchRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
        self.check_open()?;
        let client = caller(&request)?;
        let _timer = self.enqueue_timer();
        let requests = request.into_inner().requests;
        if requests.is_empty() {
            return Err(Status::invalid_argument("requests: the batch is empty"));
        }
        if requests.len() > self.max_batch_items {
            return Err(Status::invalid_argument(format!(
                "requests: {} items; at most max_batch_items = {} per call",
                requests.len(),
                self.max_batch_items
            )));
        }
        let mut results = vec![pb::EnqueueResult::default(); requests.len()];
        let mut valid = Vec::with_capacity(requests.len());
        let mut slots = Vec::with_capacity(requests.len());
        let mut gate = self.gate(&client);
        for (i, req) in requests.into_iter().enumerate() {
            match self.accept_one(req, &mut gate) {
                Ok(m) => {
                    results[i].suppressed = recipients::suppressed_to_proto(&m.suppressed);
                    valid.push(m);
                    slots.push(i);
                }
                Err(r) => {
                    results[i].code = r.code() as i32;
                    results[i].message = r.message(&format!("requests[{i}]"));
                }
            }
        }
        if !valid.is_empty() {
            let appended = self.store.append(valid).await.map_err(store_status)?;
            self.accepted(&appended);
            for (slot, a) in slots.into_iter().zip(appended) {
                let r = &mut results[slot];
                r.id = a.id.to_string();
                r.duplicate = a.duplicate;
                r.message_id = a.message_id;
            }
        }
        Ok(Response::new(pb::EnqueueBatchResponse { results }))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let client = caller(&request)?;
        let raw = request.into_inner().id;
        let id = MessageId::parse(&raw).ok_or_else(|| {
            Status::invalid_argument(format!("id: `{raw}` is not a mailspool id (16 hex digits)"))
        })?;
        let not_found = || {
            Status::not_found(format!("id: no message {id} (never enqueued, or delivered longer ago than the retention window)"))
        };
        let status = self
            .store
            .status(id)
            .map_err(store_status)?
            .ok_or_else(not_found)?;
        if !self.may_see(&client, &status) {
            return Err(not_found());
        }
        let mut resp = pb::GetMessageResponse {
            id: id.to_string(),
            ..Default::default()
        };
        match status {
            SpoolStatus::Queued(r) => {
                let state = if self.scheduler.is_leased(id) {
                    pb::MessageState::InFlight
                } else {
                    pb::MessageState::Queued
                };
                resp.set_state(state);
                resp.attempts = r.attempts;
                resp.last_error = r.last_error;
                resp.next_attempt_unix_ms = r.due_ms as i64;
                resp.set_lane(lane_to_proto(r.lane));
                resp.enqueued_unix_ms = r.enqueued_ms as i64;
                resp.expires_at_unix_ms = r.expires_ms as i64;
                resp.recipients =
                    recipients::to_proto(&r.envelope_to, &r.rcpts, &Rcpt::pending(r.attempts));
                resp.message_id = r.message_id;
            }
            SpoolStatus::Delivered(d) => {
                resp.set_state(recipients::finished_state(&d.rcpts));
                resp.recipients = recipients::to_proto(&d.envelope_to, &d.rcpts, &Rcpt::pending(0));
                if resp.state() != pb::MessageState::Delivered {
                    // Why the others were not delivered: the first one's reply.
                    resp.last_error = d
                        .rcpts
                        .iter()
                        .find(|r| r.state != RcptState::Delivered)
                        .map(|r| r.last_reply.clone())
                        .unwrap_or_default();
                }
                resp.attempts = d.attempts;
                resp.set_lane(lane_to_proto(d.lane));
                resp.enqueued_unix_ms = d.enqueued_ms as i64;
                resp.finished_unix_ms = d.delivered_ms as i64;
                resp.message_id = d.message_id;
            }
            SpoolStatus::Quarantined => {
                resp.set_state(pb::MessageState::Quarantined);
                resp.last_error =
                    "its bytes on disk could not be read back; moved to the quarantine".into();
            }
            SpoolStatus::Cancelled(c) => {
                resp.set_state(pb::MessageState::Cancelled);
                resp.recipients = recipients::to_proto(&c.envelope_to, &c.rcpts, &Rcpt::pending(0));
                resp.last_error = c.reason;
                resp.set_lane(lane_to_proto(c.lane));
                resp.enqueued_unix_ms = c.enqueued_ms as i64;
                resp.finished_unix_ms = c.cancelled_ms as i64;
                resp.message_id = c.message_id;
            }
            SpoolStatus::Dead(d) => {
                resp.set_state(pb::MessageState::Dead);
                resp.recipients = recipients::to_proto(
                    &d.record.envelope_to,
                    &d.record.rcpts,
                    &Rcpt::pending(d.record.attempts),
                );
                resp.expires_at_unix_ms = d.record.expires_ms as i64;
                resp.attempts = d.record.attempts;
                resp.last_error = d.reason;
                resp.set_lane(lane_to_proto(d.record.lane));
                resp.enqueued_unix_ms = d.record.enqueued_ms as i64;
                resp.finished_unix_ms = d.died_ms as i64;
                resp.message_id = d.record.message_id;
            }
        }
        let class = crate::delivery::bounce::classify_error(&resp.last_error);
        resp.set_bounce_class(class.map_or(pb::BounceClass::Unspecified, bounce_to_proto));
        Ok(Response::new(resp))
    }
}

pub(crate) use super::recipients::bounce_to_proto;
