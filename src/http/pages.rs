//! The pages under `web/`, compiled into the binary (`include_str!`): `/` (what this server
//! offers), `/call` (a two-party call through the relay) and `/tester` (a trickle-ICE-style
//! relay tester), their scripts and stylesheet, plus `GET /api/info` for the index page.
//! Nothing is loaded from elsewhere (the CSP in `super` enforces it).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::App;

/// (path, content type, body).
const FILES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../../web/index.html")),
    ("/call", HTML, include_str!("../../web/call.html")),
    ("/tester", HTML, include_str!("../../web/tester.html")),
    ("/turnd.css", CSS, include_str!("../../web/turnd.css")),
    ("/common.js", JS, include_str!("../../web/common.js")),
    ("/index.js", JS, include_str!("../../web/index.js")),
    ("/call.js", JS, include_str!("../../web/call.js")),
    ("/tester.js", JS, include_str!("../../web/tester.js")),
    ("/chart.js", JS, include_str!("../../web/chart.js")),
    ("/measure.js", JS, include_str!("../../web/measure.js")),
    ("/diagnose.js", JS, include_str!("../../web/diagnose.js")),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

pub(crate) fn routes() -> Router<Arc<App>> {
    let mut r = Router::new().route("/api/info", get(info));
    for &(path, kind, body) in FILES {
        r = r.route(path, get(move || async move { page(kind, body) }));
    }
    r.route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

fn page(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/info`: the URLs this server offers (no credentials) and whether it can hand
/// out credentials; not rate-limited since it mints nothing.
async fn info(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let host = app.ice.host_for(&headers);
    let (stun, turn) = host.as_deref().map(|h| app.ice.urls(h)).unwrap_or_default();
    Json(serde_json::json!({
        "software": concat!("turnd ", env!("CARGO_PKG_VERSION")),
        "realm": app.realm,
        "stun": stun,
        "turn": turn,
        "credentials": app.ice.mints(),
        "ttl": app.ice.ttl().as_secs(),
    }))
    .into_response()
}
