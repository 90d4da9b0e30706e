//! `GET/POST/DELETE /api/revocations` (bearer token, as the session API).
//!
//! `POST /api/revocations?user=alice&for=3600` (or `until=<unix>`) revokes a static user or
//! every TURN REST credential of the user part `alice`; `?username=<expiry>:alice` one REST
//! username. Revoked credentials get 401 at once; a revoked user's live allocations end.
//! `DELETE` with the same `user`/`username` lifts it. `GET` lists them.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use turnd_proto::auth::Revoked;

use super::{ask, refused, unix_now, AdminState};

/// The query of POST and DELETE.
#[derive(Debug, Deserialize)]
pub(super) struct RevocationQuery {
    user: Option<String>,
    username: Option<String>,
    until: Option<u64>,
    #[serde(rename = "for")]
    for_secs: Option<u64>,
}

impl RevocationQuery {
    fn target(&self) -> Option<Revoked> {
        match (&self.user, &self.username) {
            (Some(u), None) if !u.is_empty() => Some(Revoked::User(u.clone())),
            (None, Some(n)) if !n.is_empty() => Some(Revoked::Username(n.clone())),
            _ => None,
        }
    }
}

fn no_target() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "name exactly one of user= or username=\n",
    )
        .into_response()
}

/// 500 for a revocation change the store refused (logged once here, the cause not sent).
fn not_stored(e: anyhow::Error, what: &str) -> Response {
    tracing::warn!(error = %format!("{e:#}"), "revocation change not stored");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot store {what}\n"),
    )
        .into_response()
}

pub(super) async fn list(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let control = s.control.clone();
    match ask(move || control.revocations()).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

pub(super) async fn add(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<RevocationQuery>,
) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let Some(what) = q.target() else {
        return no_target();
    };
    let now = unix_now();
    let until = match (q.until, q.for_secs) {
        (Some(t), None) => t,
        (None, Some(d)) => now.saturating_add(d),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "give exactly one of until=<unix time> or for=<seconds>\n",
            )
                .into_response()
        }
    };
    let control = s.control.clone();
    match ask(move || control.revoke(what, until, now)).await {
        Ok(Ok(ended)) => Json(json!({ "until": until, "ended": ended })).into_response(),
        Ok(Err(e)) => not_stored(e, "the revocation"),
        Err(r) => r,
    }
}

pub(super) async fn remove(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<RevocationQuery>,
) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let Some(what) = q.target() else {
        return no_target();
    };
    let control = s.control.clone();
    match ask(move || control.unrevoke(&what, unix_now())).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => (StatusCode::NOT_FOUND, "no such revocation\n").into_response(),
        Ok(Err(e)) => not_stored(e, "the change"),
        Err(r) => r,
    }
}
