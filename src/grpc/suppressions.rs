//! The suppression list's admin calls: list (by address or domain, paged),
//! add, remove. Every address is checked as Enqueue checks it (a mailbox,
//! its domain as A-labels); a bad one refuses the whole call, naming it.

use tonic::{Response, Status};

use crate::grpc::admin_api::QueueAdminService;
use crate::grpc::api::store_status;
use crate::model::{now_ms, MessageId};
use crate::pb;
use crate::spool::{normalize_address, AdminOp, Suppression};

fn bad(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// The address as the list keys it, or INVALID_ARGUMENT naming `field`.
fn address(field: &str, value: &str) -> Result<String, Status> {
    let mb = crate::intake::message::mailbox(field, value)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if mb.name.is_some() {
        return Err(bad(field, "an address only, without a display name"));
    }
    normalize_address(mb.email.as_ref()).ok_or_else(|| bad(field, "not an address"))
}

fn addresses(values: &[String]) -> Result<Vec<String>, Status> {
    if values.is_empty() {
        return Err(bad("addresses", "give at least one address"));
    }
    if values.len() > 10_000 {
        return Err(bad(
            "addresses",
            format!("{} addresses; at most 10000 per call", values.len()),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| address(&format!("addresses[{i}]"), v))
        .collect()
}

fn entry_to_proto(s: Suppression) -> pb::SuppressionEntry {
    pb::SuppressionEntry {
        address: s.address,
        reason: s.reason,
        reply: s.reply,
        message_id: if s.message_id == 0 {
            String::new()
        } else {
            MessageId(s.message_id).to_string()
        },
        client: s.client,
        created_unix_ms: s.created_ms as i64,
        expires_unix_ms: s.expires_ms as i64,
    }
}

impl QueueAdminService {
    pub(crate) async fn suppressions_list(
        &self,
        r: pb::ListSuppressionsRequest,
    ) -> Result<Response<pb::ListSuppressionsResponse>, Status> {
        let limit = match r.limit {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => return Err(bad("limit", format!("{n}; at most 1000"))),
        };
        let only = if r.address.is_empty() {
            None
        } else {
            Some(address("address", &r.address)?)
        };
        let domain = r.domain.trim().trim_start_matches('@').to_string();
        let domain = if domain.is_empty() {
            None
        } else {
            let d = crate::intake::message::domain_a_label("domain", &domain)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Some(d)
        };
        if !r.cursor.is_empty() && normalize_address(&r.cursor).is_none() {
            return Err(bad("cursor", "not a cursor this call returned"));
        }
        let store = self.store.clone();
        let page = tokio::task::spawn_blocking(move || {
            store.list_suppressions(only.as_deref(), domain.as_deref(), &r.cursor, limit)
        })
        .await
        .map_err(|e| Status::internal(format!("listing task failed: {e}")))?
        .map_err(store_status)?;
        Ok(Response::new(pb::ListSuppressionsResponse {
            entries: page.entries.into_iter().map(entry_to_proto).collect(),
            next_cursor: page.next_cursor,
            total: self.store.suppression_count(),
        }))
    }

    pub(crate) async fn suppressions_add(
        &self,
        caller: String,
        r: pb::AddSuppressionsRequest,
    ) -> Result<Response<pb::AddSuppressionsResponse>, Status> {
        self.check_open()?;
        let list = addresses(&r.addresses)?;
        let now = now_ms();
        if r.expires_at_unix_ms < 0
            || (r.expires_at_unix_ms > 0 && r.expires_at_unix_ms as u64 <= now)
        {
            return Err(bad(
                "expires_at_unix_ms",
                "must be in the future (0 = never expires)",
            ));
        }
        let reason = r.reason.trim();
        if reason.len() > 200 || reason.contains(['\r', '\n']) {
            return Err(bad("reason", "one line of at most 200 bytes"));
        }
        let reason = if reason.is_empty() { "manual" } else { reason };
        let client = if caller.is_empty() {
            "operator".to_string()
        } else {
            caller
        };
        let entries = list
            .into_iter()
            .map(|address| Suppression {
                address,
                reason: reason.to_string(),
                reply: String::new(),
                message_id: 0,
                client: client.clone(),
                created_ms: now,
                expires_ms: r.expires_at_unix_ms as u64,
            })
            .collect();
        let done = self
            .store
            .admin(AdminOp::Suppress(entries))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::AddSuppressionsResponse {
            added: done.count,
        }))
    }

    pub(crate) async fn suppressions_remove(
        &self,
        r: pb::RemoveSuppressionsRequest,
    ) -> Result<Response<pb::RemoveSuppressionsResponse>, Status> {
        self.check_open()?;
        let list = addresses(&r.addresses)?;
        let done = self
            .store
            .admin(AdminOp::Unsuppress(list))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::RemoveSuppressionsResponse {
            removed: done.count,
        }))
    }
}
