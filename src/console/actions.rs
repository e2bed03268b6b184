//! The console's actions, each through the admin API's own operation
//! (`QueueAdminService`: retry now, cancel, requeue dead letters, purge,
//! pause and resume lanes), never a second implementation. A bulk action
//! is asked for as a dry run first (the page shows the count and sample
//! ids and waits for a confirmation), then for real.
//!
//! Cross-site requests are refused, with auth or without: a page of
//! another origin in the operator's browser must not act on the queue at
//! 127.0.0.1. An action must come from the console's own origin
//! (`Sec-Fetch-Site: same-origin`, or an `Origin` equal to the `Host`)
//! with its header `X-Mailspool-Console: 1` and a JSON body, which a
//! cross-origin form or script cannot send without a preflight this
//! server never answers.

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use std::sync::Arc;

use super::messages::{as_caller, filter, status_response, BadField};
use crate::grpc::admin_api::{Kind, QueueAdminService};
use crate::intake::auth::Client;
use crate::pb;
use crate::pb::queue_admin_server::QueueAdmin;

/// What the page sends.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Action {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    filter: Option<super::messages::ListQuery>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    limit: u64,
    /// purge: dead for at least this long.
    #[serde(default)]
    older_than: u64,
    /// pause, resume: these lanes (none: all).
    #[serde(default)]
    lanes: Vec<String>,
    /// suppress, unsuppress: these addresses.
    #[serde(default)]
    addresses: Vec<String>,
    /// suppress: why (default "manual").
    #[serde(default)]
    reason: String,
}

/// Whether the request comes from the console's own page.
pub fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("x-mailspool-console") != Some("1") {
        return Err("not from the console (its X-Mailspool-Console header is missing)");
    }
    if !get(header::CONTENT_TYPE.as_str()).is_some_and(|t| t.starts_with("application/json")) {
        return Err("an action is a JSON request");
    }
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" {
            return Err("cross-origin request refused");
        }
    }
    if let Some(origin) = get(header::ORIGIN.as_str()) {
        let host = get(header::HOST.as_str()).unwrap_or_default();
        let ours = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host));
        if !ours {
            return Err("cross-origin request refused");
        }
    }
    Ok(())
}

fn lanes(names: &[String]) -> Result<Vec<i32>, BadField> {
    names
        .iter()
        .map(|n| match n.as_str() {
            "transactional" => Ok(pb::Lane::Transactional as i32),
            "normal" => Ok(pb::Lane::Normal as i32),
            "bulk" => Ok(pb::Lane::Bulk as i32),
            other => Err(BadField(
                "lanes",
                format!("`{other}`: one of transactional, normal, bulk"),
            )),
        })
        .collect()
}

fn operation(r: pb::OperationResponse) -> Response {
    super::json(json!({
        "matched": r.matched, "affected": r.affected, "skipped": r.skipped,
        "sample_ids": r.sample_ids, "not_found": r.not_found,
    }))
    .into_response()
}

/// Runs an action the console allowed (`Console::actor`).
pub async fn act(admin: QueueAdminService, who: Arc<Client>, op: String, body: String) -> Response {
    let a: Action = match serde_json::from_str(&body) {
        Ok(a) => a,
        Err(e) => return super::messages::bad("body", format!("not the action's JSON: {e}")),
    };
    let f = match a.filter.map(filter).transpose() {
        Ok(f) => f,
        Err(b) => return b.response(),
    };
    let done = match op.as_str() {
        "retry" | "cancel" | "requeue" => {
            let kind = match op.as_str() {
                "retry" => Kind::RetryNow,
                "cancel" => Kind::Cancel,
                _ => Kind::Requeue,
            };
            admin
                .operate(kind, a.ids, f, a.dry_run, a.limit)
                .await
                .map(|r| operation(r.into_inner()))
        }
        "purge" => admin
            .purge_dead(as_caller(&who, pb::PurgeDeadRequest {
                older_than_seconds: a.older_than,
                dry_run: a.dry_run,
                limit: a.limit,
            }))
            .await
            .map(|r| operation(r.into_inner())),
        "suppress" => admin
            .add_suppressions(as_caller(&who, pb::AddSuppressionsRequest {
                addresses: a.addresses,
                reason: a.reason,
                expires_at_unix_ms: 0,
            }))
            .await
            .map(|r| super::json(json!({ "added": r.into_inner().added })).into_response()),
        "unsuppress" => admin
            .remove_suppressions(as_caller(&who, pb::RemoveSuppressionsRequest {
                addresses: a.addresses,
            }))
            .await
            .map(|r| super::json(json!({ "removed": r.into_inner().removed })).into_response()),
        "pause" | "resume" => {
            let lanes = match lanes(&a.lanes) {
                Ok(l) => l,
                Err(b) => return b.response(),
            };
            let r = if op == "pause" {
                admin
                    .pause_delivery(as_caller(&who, pb::PauseDeliveryRequest { lanes }))
                    .await
            } else {
                admin
                    .resume_delivery(as_caller(&who, pb::ResumeDeliveryRequest { lanes }))
                    .await
            };
            r.map(|r| {
                let paused: Vec<String> = r
                    .into_inner()
                    .paused_lanes()
                    .map(|l| l.as_str_name().trim_start_matches("LANE_").to_lowercase())
                    .collect();
                super::json(json!({ "paused_lanes": paused })).into_response()
            })
        }
        other => {
            return super::messages::bad(
                "action",
                format!(
                    "`{other}`: one of retry, cancel, requeue, purge, pause, resume, suppress, unsuppress"
                ),
            )
        }
    };
    done.unwrap_or_else(status_response)
}
