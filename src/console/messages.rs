//! The console's message pages: ListMessages and ShowMessage of the
//! admin API itself (`QueueAdminService`, so its checks and its errors),
//! as JSON. A bad filter is a 400 naming the field, as INVALID_ARGUMENT
//! names it on gRPC.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tonic::Request;

use std::sync::Arc;

use crate::grpc::admin_api::QueueAdminService;
use crate::intake::auth::{Caller, Client};
use crate::pb;
use crate::pb::queue_admin_server::QueueAdmin;

/// A request to the admin service made as `who` (what its interceptor
/// would have admitted).
pub(super) fn as_caller<T>(who: &Arc<Client>, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.extensions_mut().insert(Caller(who.clone()));
    r
}

/// The query of `/api/messages`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    lane: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    min_age: u64,
    #[serde(default)]
    max_age: u64,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    page_size: u32,
}

pub(super) fn bad(field: &str, why: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        super::json(json!({ "field": field, "error": why })),
    )
        .into_response()
}

pub(super) fn status_response(s: tonic::Status) -> Response {
    let code = match s.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, super::json(json!({ "error": s.message() }))).into_response()
}

fn state_of(s: &str) -> Option<pb::StateFilter> {
    Some(match s {
        "" | "queued" => pb::StateFilter::Unspecified,
        "ready" => pb::StateFilter::StateReady,
        "scheduled" => pb::StateFilter::StateScheduled,
        "in-flight" => pb::StateFilter::StateInFlight,
        "dead" => pb::StateFilter::StateDead,
        "quarantined" => pb::StateFilter::StateQuarantined,
        _ => return None,
    })
}

fn lane_of(s: &str) -> Option<pb::Lane> {
    Some(match s {
        "" => pb::Lane::Unspecified,
        "transactional" => pb::Lane::Transactional,
        "normal" => pb::Lane::Normal,
        "bulk" => pb::Lane::Bulk,
        _ => return None,
    })
}

fn summary(m: &pb::MessageSummary) -> Value {
    let detail = pb::StateFilter::try_from(m.detail).unwrap_or_default();
    let state = match (m.state(), detail) {
        (pb::MessageState::Queued, pb::StateFilter::StateReady) => "ready",
        (pb::MessageState::Queued, pb::StateFilter::StateScheduled) => "scheduled",
        (pb::MessageState::Queued, pb::StateFilter::StateInFlight) => "in flight",
        (pb::MessageState::Queued, _) => "queued",
        (pb::MessageState::Dead, _) => "dead",
        (pb::MessageState::Quarantined, _) => "quarantined",
        (other, _) => other.as_str_name(),
    };
    json!({
        "id": m.id, "state": state,
        "lane": m.lane().as_str_name().trim_start_matches("LANE_").to_lowercase(),
        "envelope_from": m.envelope_from, "envelope_to": m.envelope_to,
        "attempts": m.attempts, "last_error": m.last_error,
        "enqueued_unix_ms": m.enqueued_unix_ms, "next_attempt_unix_ms": m.next_attempt_unix_ms,
        "size_bytes": m.size_bytes, "message_id": m.message_id,
        "finished_unix_ms": m.finished_unix_ms,
    })
}

/// A field of a request that is wrong, and why (a 400 naming it).
pub(super) struct BadField(pub &'static str, pub String);

impl BadField {
    pub fn response(self) -> Response {
        bad(self.0, self.1)
    }
}

/// The admin API's filter of a query.
pub(super) fn filter(q: ListQuery) -> Result<pb::MessageFilter, BadField> {
    let Some(state) = state_of(&q.state) else {
        return Err(BadField(
            "state",
            format!(
                "`{}`: one of queued, ready, scheduled, in-flight, dead, quarantined",
                q.state
            ),
        ));
    };
    let Some(lane) = lane_of(&q.lane) else {
        return Err(BadField(
            "lane",
            format!("`{}`: one of transactional, normal, bulk", q.lane),
        ));
    };
    Ok(pb::MessageFilter {
        state: state as i32,
        lane: lane as i32,
        recipient_domain: q.domain,
        min_age_seconds: q.min_age,
        max_age_seconds: q.max_age,
    })
}

pub async fn list(admin: QueueAdminService, who: Arc<Client>, q: ListQuery) -> Response {
    let (page_size, cursor) = (q.page_size, q.cursor.clone());
    let f = match filter(q) {
        Ok(f) => f,
        Err(b) => return b.response(),
    };
    let request = pb::ListMessagesRequest {
        filter: Some(f),
        page_size,
        cursor,
    };
    match admin.list_messages(as_caller(&who, request)).await {
        Ok(r) => {
            let r = r.into_inner();
            super::json(json!({
                "messages": r.messages.iter().map(summary).collect::<Vec<_>>(),
                "next_cursor": r.next_cursor,
                "scanned": r.scanned,
            }))
            .into_response()
        }
        Err(s) => status_response(s),
    }
}

/// Queued recipients by domain and age (qshape), as TopDomains answers.
pub async fn top_domains(admin: QueueAdminService, who: Arc<Client>) -> Response {
    match admin
        .top_domains(as_caller(&who, pb::TopDomainsRequest::default()))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            let row = |d: &pb::DomainRow| json!({ "domain": d.domain, "total": d.total, "buckets": d.buckets });
            super::json(json!({
                "bucket_upper_minutes": r.bucket_upper_minutes,
                "domains": r.domains.iter().map(row).collect::<Vec<_>>(),
                "total": r.total.as_ref().map(row),
            }))
            .into_response()
        }
        Err(s) => status_response(s),
    }
}

pub async fn show(admin: QueueAdminService, who: Arc<Client>, id: String) -> Response {
    let request = pb::ShowMessageRequest { id };
    match admin.show_message(as_caller(&who, request)).await {
        Ok(r) => {
            let r = r.into_inner();
            let recipients: Vec<Value> = r
                .recipients
                .iter()
                .map(|x| {
                    json!({
                        "address": x.address,
                        "state": x.state().as_str_name().trim_start_matches("RECIPIENT_").to_lowercase(),
                        "attempts": x.attempts,
                        "last_reply": x.last_reply,
                    })
                })
                .collect();
            let events: Vec<Value> = r
                .events
                .iter()
                .map(|e| {
                    json!({
                        "sequence": e.sequence,
                        "time_unix_ms": e.time_unix_ms,
                        "type": e.r#type().as_str_name().trim_start_matches("EVENT_").to_lowercase(),
                        "recipient": e.recipient,
                        "attempt": e.attempt,
                        "relay": e.relay,
                        "smtp_reply": e.smtp_reply,
                    })
                })
                .collect();
            super::json(json!({
                "message": r.message.as_ref().map(summary),
                "headers": r.headers,
                "recipients": recipients,
                "events": events,
                "events_partial": r.events_partial,
            }))
            .into_response()
        }
        Err(s) => status_response(s),
    }
}
