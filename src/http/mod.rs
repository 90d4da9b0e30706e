//! The HTTP listener (`[signaling] listen`): the pages under `web/` (embedded in the binary),
//! `GET /api/ice-servers` (short-lived TURN REST credentials, see [`ice`]) and the WebSocket
//! signaling endpoint `/ws` (protocol in [`signaling`], room state in [`rooms`]).
//!
//! [`serve`] runs on a tokio runtime of its own (the caller's thread), plain HTTP or, with
//! `[signaling] tls`, HTTPS with the TLS listeners' reloadable certificate ([`listen`]), in
//! the connection-capped accept loop of [`limits`] (shared with the admin listener). It
//! returns when the shutdown token is cancelled: open WebSockets are closed with 1001, the
//! remaining HTTP connections get a short grace period.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::tls::ReloadableCert;

pub mod ice;
pub mod limits;
pub mod listen;
mod pages;
pub mod rooms;
pub mod signaling;

/// What the HTTP listener needs from the rest of turnd (secrets in `cfg` print redacted).
#[derive(Clone)]
pub struct HttpSetup {
    pub cfg: config::Signaling,
    pub realm: String,
    pub rest_separator: char,
    /// Bound TURN listeners (port 0 resolved), in config order.
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    /// The TLS listeners' certificate: needed for `turns:` URLs and for HTTPS.
    pub certificate: Option<Arc<ReloadableCert>>,
}

impl std::fmt::Debug for HttpSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSetup")
            .field("cfg", &self.cfg)
            .field("realm", &self.realm)
            .field("rest_separator", &self.rest_separator)
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .field("tls", &self.tls)
            .field("certificate", &self.certificate.is_some())
            .finish()
    }
}

impl HttpSetup {
    /// Errors [`serve`] would fail with at once; call before spawning it.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.cfg.tls && self.certificate.is_none() {
            anyhow::bail!(
                "[signaling] tls needs the TLS listeners' certificate: configure [tls] and a \
                 TLS listener"
            );
        }
        Ok(())
    }
}

/// State shared by all handlers.
pub(crate) struct App {
    pub realm: String,
    pub ice: ice::IceServers,
    pub signaling: signaling::Signaling,
}

/// The client's address, as accepted (plain or TLS); a request extension set by
/// [`limits::serve`], read with `ConnectInfo<Remote>`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote(pub SocketAddr);

/// The key per-IP limits count by: IPv4 addresses (v4-mapped IPv6 unwrapped) as they are,
/// IPv6 addresses by their /64, since one subscriber usually holds a whole /64.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

/// A JSON error body `{"error": code, "message": text}` with `status`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    (status, Json(body)).into_response()
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/ice-servers", get(ice::handler))
        .route("/ws", get(signaling::handler))
        .merge(pages::routes())
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not-found", "no such page") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// Headers on every response: the pages load nothing from elsewhere and may not be framed.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let fixed: [(header::HeaderName, &str); 5] = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::HeaderName::from_static("permissions-policy"),
            "camera=(self), microphone=(self)",
        ),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

/// Serve until `shutdown` is cancelled; the listener is already bound (port 0 resolved by the
/// caller). Must run inside a tokio runtime with I/O and time enabled.
pub async fn serve(
    listener: std::net::TcpListener,
    setup: HttpSetup,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    setup.check()?;
    listener
        .set_nonblocking(true)
        .context("HTTP listener: set_nonblocking")?;
    let listener = tokio::net::TcpListener::from_std(listener).context("HTTP listener")?;
    let local = listener.local_addr()?;
    let https = setup.cfg.tls;
    let tls_cert = setup.certificate.clone();
    let app = Arc::new(App {
        realm: setup.realm.clone(),
        ice: ice::IceServers::new(&setup),
        signaling: signaling::Signaling::new(&setup.cfg, shutdown.clone()),
    });
    let tls = match (https, tls_cert) {
        (false, _) => None,
        (true, Some(cert)) => Some(listen::http_tls_config(cert)?),
        (true, None) => anyhow::bail!("[signaling] tls needs the TLS listeners' certificate"),
    };
    let limits = limits::Limits::signaling(&setup.cfg);
    tracing::info!(
        addr = %local,
        https,
        max_connections = limits.max_connections,
        "listening (signaling)"
    );
    if setup.cfg.mint == config::Mint::Open && !local.ip().is_loopback() {
        tracing::warn!(
            addr = %local,
            "[signaling] mint = \"open\": anyone who can reach this listener gets TURN \
             credentials and can relay through this server"
        );
    }
    limits::serve(listener, tls, router(app), limits, shutdown).await;
    Ok(())
}
