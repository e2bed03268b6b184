//! The web console: served by the server itself on its HTTP listener
//! (`metrics_listen`, next to `/metrics`), its page and script compiled
//! into the binary. A client of the operations layer like the CLI: it
//! reads the same `Overview` QueueStats answers, and the history the
//! server keeps for its chart.
//!
//! Security: every value reaches the page through `textContent`, never
//! as HTML. With auth on (clients configured, which SIGHUP may change),
//! its data needs a login with an admin token (`session`), and an action
//! the session's CSRF token; an action must come from the console's own
//! origin, with auth or without (`actions::same_origin`).

mod actions;
mod messages;
mod overview;
mod session;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;

use crate::grpc::admin_api::QueueAdminService;
use crate::grpc::api::Api;
use crate::intake::auth::{Client, Role};
use session::Sessions;

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

/// The state every route shares.
#[derive(Clone)]
struct Console {
    api: Api,
    sessions: Arc<Sessions>,
}

impl Console {
    /// Who the request acts as, if it may read: the anonymous client
    /// without auth; with it, the session's (401 otherwise, and the page
    /// asks for a login). With the session's CSRF token ("" without auth).
    fn reader(&self, headers: &HeaderMap) -> Result<(Arc<Client>, String), Denied> {
        if !self.api.auth.enabled() {
            let anonymous = self
                .api
                .auth
                .check(&tonic::Request::new(()), Role::Admin)
                .map_err(|_| Denied(StatusCode::UNAUTHORIZED, "log in"))?;
            return Ok((anonymous, String::new()));
        }
        self.sessions.of(headers).ok_or(Denied(
            StatusCode::UNAUTHORIZED,
            "log in with an admin token (`mailspool token create --role admin`)",
        ))
    }

    /// The admin service, acting as the request's caller.
    fn admin(&self) -> QueueAdminService {
        QueueAdminService(self.api.clone())
    }

    /// Whether the request may act: as `reader`, from the console's own
    /// origin, and with auth on carrying the session's CSRF token.
    fn actor(&self, headers: &HeaderMap) -> Result<Arc<Client>, Denied> {
        actions::same_origin(headers).map_err(|why| Denied(StatusCode::FORBIDDEN, why))?;
        let (client, csrf) = self.reader(headers)?;
        if self.api.auth.enabled() {
            let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
            if sent != Some(csrf.as_str()) {
                return Err(Denied(
                    StatusCode::FORBIDDEN,
                    "the CSRF token is missing or wrong: reload the console",
                ));
            }
        }
        Ok(client)
    }

    /// POST /api/login {"token": …}: an admin token becomes a session.
    fn login(&self, headers: &HeaderMap, body: &str) -> Response {
        if let Err(why) = actions::same_origin(headers) {
            return error(StatusCode::FORBIDDEN, why);
        }
        if !self.api.auth.enabled() {
            return json(serde_json::json!({ "auth": false, "csrf": "" })).into_response();
        }
        let token = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_string))
            .unwrap_or_default();
        let mut probe = tonic::Request::new(());
        let Ok(value) = format!("Bearer {}", token.trim()).parse() else {
            return error(StatusCode::UNAUTHORIZED, "not a valid admin token");
        };
        probe.metadata_mut().insert("authorization", value);
        match self.api.auth.check(&probe, Role::Admin) {
            Ok(client) => {
                let name = client.name.clone();
                let (_, csrf, cookie) = self.sessions.create(client);
                (
                    [(SET_COOKIE, cookie)],
                    json(serde_json::json!({ "auth": true, "client": name, "csrf": csrf })),
                )
                    .into_response()
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => error(
                StatusCode::FORBIDDEN,
                "that token's client lacks the admin role",
            ),
            Err(_) => error(StatusCode::UNAUTHORIZED, "not a valid admin token"),
        }
    }

    /// GET /api/session: whether the page is logged in, and its CSRF token.
    fn session(&self, headers: &HeaderMap) -> Response {
        match self.reader(headers) {
            Ok((client, csrf)) => json(serde_json::json!({
                "auth": self.api.auth.enabled(), "client": client.name, "csrf": csrf,
            }))
            .into_response(),
            Err(d) => d.response(),
        }
    }
}

/// Why a request may not read or act (a small value until it is sent).
struct Denied(StatusCode, &'static str);

impl Denied {
    fn response(self) -> Response {
        error(self.0, self.1)
    }
}

fn error(code: StatusCode, why: &str) -> Response {
    (code, json(serde_json::json!({ "error": why }))).into_response()
}

/// The caller a guard admitted, for the handler behind it.
#[derive(Clone)]
struct Who(Arc<Client>);

/// In front of the data: the request may read (`Console::reader`).
async fn admit_reader(State(c): State<Console>, mut req: Request, next: Next) -> Response {
    match c.reader(req.headers()) {
        Ok((who, _)) => {
            req.extensions_mut().insert(Who(who));
            next.run(req).await
        }
        Err(d) => d.response(),
    }
}

/// In front of the actions: the request may act (`Console::actor`).
async fn admit_actor(State(c): State<Console>, mut req: Request, next: Next) -> Response {
    match c.actor(req.headers()) {
        Ok(who) => {
            req.extensions_mut().insert(Who(who));
            next.run(req).await
        }
        Err(d) => d.response(),
    }
}

/// The console's routes, to merge into the HTTP listener's; `secure`
/// when that listener serves TLS (the session cookie is then `Secure`).
pub fn router(api: Api, secure: bool) -> axum::Router {
    let c = Console {
        sessions: Arc::new(Sessions::new(api.console_session, secure)),
        api,
    };
    let page =
        |kind: &'static str, body: &'static str| get(move || async move { asset(kind, body) });
    let reads = axum::Router::new()
        .route(
            "/api/overview",
            get(|State(c): State<Console>| async move {
                json(overview::to_json(&c.api.overview())).into_response()
            }),
        )
        .route(
            "/api/history",
            get(|State(c): State<Console>| async move {
                json(serde_json::json!({ "points": c.api.history.points() })).into_response()
            }),
        )
        .route(
            "/api/messages",
            get(
                |State(c): State<Console>,
                 Extension(Who(who)): Extension<Who>,
                 Query(q): Query<messages::ListQuery>| async move {
                    messages::list(c.admin(), who, q).await
                },
            ),
        )
        .route(
            "/api/messages/{id}",
            get(
                |State(c): State<Console>,
                 Extension(Who(who)): Extension<Who>,
                 Path(id): Path<String>| async move {
                    messages::show(c.admin(), who, id).await
                },
            ),
        )
        .route(
            "/api/top-domains",
            get(
                |State(c): State<Console>, Extension(Who(who)): Extension<Who>| async move {
                    messages::top_domains(c.admin(), who).await
                },
            ),
        )
        .route_layer(middleware::from_fn_with_state(c.clone(), admit_reader));
    let acts = axum::Router::new()
        .route(
            "/api/actions/{op}",
            post(
                |State(c): State<Console>,
                 Extension(Who(who)): Extension<Who>,
                 Path(op): Path<String>,
                 body: String| async move {
                    actions::act(c.admin(), who, op, body).await
                },
            ),
        )
        .route(
            "/api/logout",
            post(|State(c): State<Console>, h: HeaderMap| async move {
                c.sessions.end(&h);
                json(serde_json::json!({ "auth": c.api.auth.enabled() })).into_response()
            }),
        )
        .route_layer(middleware::from_fn_with_state(c.clone(), admit_actor));
    axum::Router::new()
        .route("/", page("text/html; charset=utf-8", INDEX))
        .route("/console.js", page("text/javascript; charset=utf-8", SCRIPT))
        .route("/console.css", page("text/css; charset=utf-8", STYLE))
        .route(
            "/api/session",
            get(|State(c): State<Console>, h: HeaderMap| async move { c.session(&h) }),
        )
        .route(
            "/api/login",
            post(|State(c): State<Console>, h: HeaderMap, body: String| async move {
                c.login(&h, &body)
            }),
        )
        .merge(reads)
        .merge(acts)
        .with_state(c)
}
