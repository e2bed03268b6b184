//! The web console: served by the server itself on its HTTP listener
//! (`metrics_listen`, next to `/metrics`), its page and script compiled
//! into the binary. A client of the operations layer like the CLI: it
//! reads the same `Overview` QueueStats answers, and the history the
//! server keeps for its chart.
//!
//! Security: every value reaches the page through `textContent`, never
//! as HTML. It has no login yet: with auth on (clients configured, which
//! SIGHUP may change), the page and its data are refused (403) rather
//! than shown to anyone who reaches the listener.

mod actions;
mod messages;
mod overview;

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::grpc::admin_api::QueueAdminService;
use crate::grpc::api::Api;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// Scripts and styles from the console itself only; nothing inline,
/// nothing from elsewhere, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, kind),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
}

pub(super) fn json(v: serde_json::Value) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
}

/// With auth on, the console is refused: it cannot ask for an admin
/// credential yet.
fn refused(api: &Api) -> Option<Response> {
    api.auth.enabled().then(|| {
        (
            StatusCode::FORBIDDEN,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "The console is off while clients are configured (auth on): it has no admin login yet. \
             Use `mailspool stats --watch --token-file FILE` with an admin token.\n",
        )
            .into_response()
    })
}

/// The console's routes, to merge into the HTTP listener's.
pub fn router(api: Api) -> axum::Router {
    let (a, b, c) = (api.clone(), api.clone(), api.clone());
    let (d, e, f) = (api.clone(), api.clone(), api);
    axum::Router::new()
        .route(
            "/api/actions/{op}",
            axum::routing::post(
                move |axum::extract::Path(op): axum::extract::Path<String>,
                      headers: axum::http::HeaderMap,
                      body: String| {
                    let api = f.clone();
                    async move {
                        match refused(&api) {
                            Some(r) => r,
                            None => actions::act(QueueAdminService(api), op, headers, body).await,
                        }
                    }
                },
            ),
        )
        .route(
            "/api/messages",
            get(
                move |axum::extract::Query(q): axum::extract::Query<messages::ListQuery>| {
                    let api = d.clone();
                    async move {
                        match refused(&api) {
                            Some(r) => r,
                            None => messages::list(QueueAdminService(api), q).await,
                        }
                    }
                },
            ),
        )
        .route(
            "/api/messages/{id}",
            get(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let api = e.clone();
                    async move {
                        match refused(&api) {
                            Some(r) => r,
                            None => messages::show(QueueAdminService(api), id).await,
                        }
                    }
                },
            ),
        )
        .route(
            "/",
            get(move || {
                let api = c.clone();
                async move {
                    refused(&api)
                        .unwrap_or_else(|| asset("text/html; charset=utf-8", INDEX).into_response())
                }
            }),
        )
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/api/overview",
            get(move || {
                let api = a.clone();
                async move {
                    refused(&api)
                        .unwrap_or_else(|| json(overview::to_json(&api.overview())).into_response())
                }
            }),
        )
        .route(
            "/api/history",
            get(move || {
                let api = b.clone();
                async move {
                    refused(&api).unwrap_or_else(|| {
                        json(serde_json::json!({ "points": api.history.points() })).into_response()
                    })
                }
            }),
        )
}
