//! The operators' HTTP API (axum), bound to loopback by default:
//!
//! - `GET /metrics`: Prometheus text format ([`metrics`]).
//! - `GET /healthz`: 200 while every shard runs, 503 naming a shard whose thread or listener
//!   task ended. `GET /readyz`: every shard runs, the server is not draining and, with
//!   `ready_probe`, the last round of the relay probe (`crate::probe`) succeeded.
//! - `GET /api/sessions[?user=U]`, `DELETE /api/sessions/{id}`,
//!   `DELETE /api/users/{user}/sessions`: need `Authorization: Bearer <token>`; without a
//!   configured token the session API is off.
//! - `GET/POST/DELETE /api/revocations` ([`revocations`]): the same token.
//!
//! Handlers are thin: each asks the shards through [`Control`] on a blocking thread.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::net::Control;
use turnd_proto::engine::SessionInfo;

pub mod metrics;
mod revocations;

/// Wall-clock seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Clone)]
struct AdminState {
    control: Arc<Control>,
    token: Option<Arc<str>>,
    /// Off-loopback listeners require the token for every route but the probes (`/healthz`,
    /// `/readyz`: up or down only, for load balancers and kubelets).
    token_for_all: bool,
}

/// Serve the admin API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: std::net::TcpListener,
    control: Arc<Control>,
    token: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let token_for_all = !listener.local_addr()?.ip().is_loopback();
    let state = AdminState {
        control,
        token: token.map(Into::into),
        token_for_all,
    };
    let app = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_health))
        .route("/readyz", get(get_ready))
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/{id}", delete(kill_session))
        .route("/api/users/{user}/sessions", delete(kill_user))
        .route(
            "/api/revocations",
            get(revocations::list)
                .post(revocations::add)
                .delete(revocations::remove),
        )
        // [cluster]: the fleet's sessions through any node (crate::cluster::sessions).
        .route("/api/fleet/sessions", get(fleet_sessions))
        .route(
            "/api/fleet/sessions/{node}/{id}",
            delete(fleet_kill_session),
        )
        .route("/api/fleet/users/{user}/sessions", delete(fleet_kill_user))
        .with_state(state);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let limits = crate::http::limits::Limits::ADMIN;
    crate::http::limits::serve(listener, None, app, limits, shutdown).await;
    Ok(())
}

/// `Some(response)` refuses the request.
fn refused(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &state.token else {
        return Some(
            (
                StatusCode::NOT_FOUND,
                "session API disabled: set [admin] token\n",
            )
                .into_response(),
        );
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given.as_bytes().ct_eq(token.as_bytes()).into() {
        None
    } else {
        Some(
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer")],
                "bad or missing token\n",
            )
                .into_response(),
        )
    }
}

/// Run a blocking question to the shards off the async runtime.
async fn ask<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response())
}

async fn get_metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if s.token_for_all {
        if let Some(r) = refused(&s, &headers) {
            return r;
        }
    }
    let control = s.control.clone();
    match ask(move || metrics::render(&control.metrics(), &metrics::ProcessMetrics::read(&control)))
        .await
    {
        Ok(text) => ([("content-type", metrics::CONTENT_TYPE)], text).into_response(),
        Err(r) => r,
    }
}

/// 200 "ok" while every shard runs; 503 naming the shards that are gone.
async fn get_health(State(s): State<AdminState>) -> Response {
    let gone = s.control.health().gone();
    if gone.is_empty() {
        return "ok\n".into_response();
    }
    let mut text = String::new();
    for (shard, what) in gone {
        text.push_str(&format!("shard {shard} gone: {what}\n"));
    }
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

async fn get_ready(State(s): State<AdminState>) -> Response {
    if !s.control.health().is_whole() {
        (StatusCode::SERVICE_UNAVAILABLE, "a shard is gone\n").into_response()
    } else if s.control.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if let Some(p) = s.control.probe().filter(|p| !p.status().ok()) {
        let why = p.status().detail();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("relay probe failing: {why}\n"),
        )
            .into_response()
    } else {
        "ready\n".into_response()
    }
}

#[derive(Deserialize)]
struct SessionQuery {
    user: Option<String>,
}

pub(crate) fn session_json(s: &SessionInfo) -> serde_json::Value {
    let secs = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({
        "id": s.id.to_string(),
        "user": s.user,
        "client": s.client.to_string(),
        "transport": s.transport.as_str(),
        "relays": s.relays.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "created": secs(s.created),
        "expires": secs(s.expires),
        "bytes_to_peer": s.bytes_to_peer,
        "bytes_to_client": s.bytes_to_client,
        "packets_to_peer": s.packets_to_peer,
        "packets_to_client": s.packets_to_client,
        "bandwidth_dropped_to_peer": s.bandwidth_dropped[0],
        "bandwidth_dropped_to_client": s.bandwidth_dropped[1],
        "permissions": s.permissions,
        "channels": s.channels,
    })
}

/// The cluster handle, or the response for a standalone node or a refused token.
fn fleet(s: &AdminState, headers: &HeaderMap) -> Result<crate::cluster::Handle, Box<Response>> {
    if let Some(r) = refused(s, headers) {
        return Err(Box::new(r));
    }
    s.control.cluster().cloned().ok_or_else(|| {
        Box::new((StatusCode::NOT_FOUND, "no [cluster]: use /api/sessions\n").into_response())
    })
}

fn redis_down(e: anyhow::Error) -> Response {
    let body = format!("Redis unavailable: {e}\n");
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn fleet_sessions(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Response {
    let f = match fleet(&s, &headers) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    match f.sessions(q.user.as_deref()).await {
        Ok(list) => Json(json!({ "sessions": list })).into_response(),
        Err(e) => redis_down(e),
    }
}

async fn fleet_kill(f: crate::cluster::Handle, kill: crate::cluster::sessions::Kill) -> Response {
    match f.kill(&kill).await {
        Ok(0) => (StatusCode::NOT_FOUND, "no such node in the fleet\n").into_response(),
        Ok(n) => (StatusCode::ACCEPTED, Json(json!({ "nodes": n }))).into_response(),
        Err(e) => redis_down(e),
    }
}

async fn fleet_kill_session(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((node, id)): Path<(String, String)>,
) -> Response {
    let f = match fleet(&s, &headers) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let Ok(id) = id.parse::<turnd_proto::engine::SessionId>() else {
        return (StatusCode::BAD_REQUEST, "session ids are decimal numbers\n").into_response();
    };
    fleet_kill(f, crate::cluster::sessions::Kill::Session { node, id }).await
}

async fn fleet_kill_user(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    match fleet(&s, &headers) {
        Ok(f) => fleet_kill(f, crate::cluster::sessions::Kill::User(user)).await,
        Err(r) => *r,
    }
}

async fn list_sessions(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let control = s.control.clone();
    match ask(move || control.sessions(q.user.as_deref())).await {
        Ok(list) => Json(json!({ "sessions": list.iter().map(session_json).collect::<Vec<_>>() }))
            .into_response(),
        Err(r) => r,
    }
}

async fn kill_session(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let Ok(id) = id.parse::<turnd_proto::engine::SessionId>() else {
        return (StatusCode::BAD_REQUEST, "session ids are decimal numbers\n").into_response();
    };
    let control = s.control.clone();
    match ask(move || control.kill_session(id)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => (StatusCode::NOT_FOUND, "no such session\n").into_response(),
        Err(r) => r,
    }
}

async fn kill_user(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let control = s.control.clone();
    match ask(move || control.kill_user(&user)).await {
        Ok(n) => Json(json!({ "ended": n })).into_response(),
        Err(r) => r,
    }
}
