//! `GET /api/ice-servers`: an RTCConfiguration-style list of this server's STUN/TURN URLs with
//! short-lived TURN REST credentials (draft-uberti-behave-turn-rest-00):
//!
//! ```json
//! { "iceServers": [
//!     { "urls": ["stun:H:3478"] },
//!     { "urls": ["turn:H:3478?transport=udp", "turn:H:3478?transport=tcp",
//!                "turns:H:5349?transport=tcp"],
//!       "username": "1700000000:5f3a9c1e", "credential": "base64(HMAC-SHA1(secret, username))" }
//!   ],
//!   "ttl": 3600 }
//! ```
//!
//! `H` is `[signaling] public_host`, else the host of the request's Host header (IPv6 in
//! brackets). Only configured transports appear; per transport the port of the first
//! listener of the host's family is used (IPv4 for names). Requests are limited per client IP
//! (IPv6 per /64) with a fixed one-minute window ([`FixedWindow`]); no secret configured
//! means 503.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ip_key, json_error, App, HttpSetup, Remote};
use crate::auth::{rest_password, rest_username};

/// Clients tracked by the rate limiter at once; when full (after dropping expired windows),
/// new clients are refused until a minute has passed.
const MAX_TRACKED_CLIENTS: usize = 65_536;
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// A fixed-window request counter per client key, bounded in size. No I/O, no clock: callers
/// pass `now`.
#[derive(Debug)]
pub struct FixedWindow {
    limit: u32,
    window: Duration,
    max_clients: usize,
    window_by_client: HashMap<IpAddr, (Instant, u32)>,
}

impl FixedWindow {
    pub fn new(limit: u32, window: Duration, max_clients: usize) -> Self {
        FixedWindow {
            limit,
            window,
            max_clients,
            window_by_client: HashMap::new(),
        }
    }

    /// Count one request of `client`; false when it is over its limit for this window.
    pub fn allow(&mut self, client: IpAddr, now: Instant) -> bool {
        if !self.window_by_client.contains_key(&client)
            && self.window_by_client.len() >= self.max_clients
        {
            let window = self.window;
            self.window_by_client
                .retain(|_, (start, _)| now.duration_since(*start) < window);
            if self.window_by_client.len() >= self.max_clients {
                return false;
            }
        }
        let entry = self.window_by_client.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return false;
        }
        entry.1 += 1;
        true
    }
}

/// Everything the handler needs, fixed at start-up.
pub struct IceServers {
    secret: Option<Arc<str>>,
    separator: char,
    ttl: Duration,
    public_host: Option<String>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    /// TLS listeners, only when there is a certificate to serve on them.
    tls: Vec<SocketAddr>,
    limiter: Mutex<FixedWindow>,
}

impl IceServers {
    pub fn new(setup: &HttpSetup) -> Self {
        IceServers {
            secret: setup.secret.as_deref().map(Arc::from),
            separator: setup.rest_separator,
            ttl: setup.cfg.credential_ttl,
            public_host: setup.cfg.public_host.clone(),
            udp: setup.udp.clone(),
            tcp: setup.tcp.clone(),
            tls: if setup.certificate.is_some() {
                setup.tls.clone()
            } else {
                Vec::new()
            },
            limiter: Mutex::new(FixedWindow::new(
                setup.cfg.ice_requests_per_minute,
                RATE_WINDOW,
                MAX_TRACKED_CLIENTS,
            )),
        }
    }

    pub fn public_host(&self) -> Option<&str> {
        self.public_host.as_deref()
    }

    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The stun:/turn:/turns: URLs for `host` (already bracketed when IPv6).
    pub fn urls(&self, host: &str) -> (Vec<String>, Vec<String>) {
        let want_v6 = host.starts_with('[');
        let mut stun = Vec::new();
        let mut turn = Vec::new();
        if let Some(p) = port_for(&self.udp, want_v6) {
            stun.push(format!("stun:{host}:{p}"));
            turn.push(format!("turn:{host}:{p}?transport=udp"));
        }
        if let Some(p) = port_for(&self.tcp, want_v6) {
            turn.push(format!("turn:{host}:{p}?transport=tcp"));
        }
        if let Some(p) = port_for(&self.tls, want_v6) {
            turn.push(format!("turns:{host}:{p}?transport=tcp"));
        }
        (stun, turn)
    }

    /// The response body for `host` at wall-clock `unix_now`, with a fresh credential.
    pub fn body(&self, secret: &str, host: &str, unix_now: u64) -> serde_json::Value {
        let (stun, turn) = self.urls(host);
        let user = format!("{:08x}", rand::random::<u32>());
        let username = rest_username(unix_now + self.ttl.as_secs(), &user, self.separator);
        let credential = rest_password(secret.as_bytes(), &username);
        let mut servers = Vec::new();
        if !stun.is_empty() {
            servers.push(serde_json::json!({ "urls": stun }));
        }
        if !turn.is_empty() {
            servers.push(serde_json::json!({
                "urls": turn, "username": username, "credential": credential,
            }));
        }
        serde_json::json!({ "iceServers": servers, "ttl": self.ttl.as_secs() })
    }
}

/// The port of the first listener of the wanted family, else of the first listener.
fn port_for(listeners: &[SocketAddr], want_v6: bool) -> Option<u16> {
    listeners
        .iter()
        .find(|a| a.is_ipv6() == want_v6)
        .or(listeners.first())
        .map(SocketAddr::port)
}

/// The host to put in URLs: `public_host` if set, else the Host header without its port.
/// IPv6 literals come back in brackets. `None` when neither gives a plausible host.
pub fn url_host(public_host: Option<&str>, host_header: Option<&str>) -> Option<String> {
    match public_host {
        Some(h) => normalise_host(h),
        None => normalise_host(strip_port(host_header?)?),
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:8080` -> `[::1]`; no port: unchanged.
fn strip_port(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        return Some(&authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(h),
        Some(_) => None,
        None => Some(authority),
    }
}

fn normalise_host(h: &str) -> Option<String> {
    if let Some(inner) = h.strip_prefix('[') {
        let v6: Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        return Some(format!("[{v6}]"));
    }
    if let Ok(v6) = h.parse::<Ipv6Addr>() {
        return Some(format!("[{v6}]"));
    }
    let plausible = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    plausible.then(|| h.to_ascii_lowercase())
}

/// `GET /api/ice-servers`.
pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    ConnectInfo(Remote(remote)): ConnectInfo<Remote>,
    headers: HeaderMap,
) -> Response {
    let ice = &app.ice;
    let allowed = ice
        .limiter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .allow(ip_key(remote.ip()), Instant::now());
    if !allowed {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "too many requests for ICE servers from this address; try again in a minute",
        );
    }
    let Some(secret) = &ice.secret else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-secret",
            "this server has no TURN REST secret ([auth] secrets), so it cannot hand out \
             credentials",
        );
    };
    let host_header = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let Some(host) = url_host(ice.public_host.as_deref(), host_header) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad-host",
            "cannot tell the server's host name: set [signaling] public_host",
        );
    };
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut res = Json(ice.body(secret, &host, unix_now)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn setup() -> HttpSetup {
        HttpSetup {
            cfg: Config::for_tests().signaling,
            realm: "turnd".into(),
            secret: Some("s3cret".into()),
            rest_separator: ':',
            udp: vec![
                "127.0.0.1:3478".parse().unwrap(),
                "[::1]:3479".parse().unwrap(),
            ],
            tcp: vec![
                "[::1]:3480".parse().unwrap(),
                "127.0.0.1:3481".parse().unwrap(),
            ],
            tls: vec!["127.0.0.1:5349".parse().unwrap()],
            certificate: None,
        }
    }

    #[test]
    fn hosts_come_from_config_or_the_host_header() {
        assert_eq!(
            url_host(Some("Turn.Example.com"), Some("x:1")).unwrap(),
            "turn.example.com"
        );
        assert_eq!(
            url_host(Some("2001:db8::1"), None).unwrap(),
            "[2001:db8::1]"
        );
        assert_eq!(
            url_host(Some("[2001:db8::1]"), None).unwrap(),
            "[2001:db8::1]"
        );
        assert_eq!(url_host(None, Some("127.0.0.1:8080")).unwrap(), "127.0.0.1");
        assert_eq!(url_host(None, Some("[::1]:8080")).unwrap(), "[::1]");
        assert_eq!(url_host(None, Some("[::1]")).unwrap(), "[::1]");
        assert_eq!(url_host(None, Some("example.com")).unwrap(), "example.com");
        for bad in [
            "",
            "a b:80",
            "x:y",
            "ex\"ample:1",
            "[zz]:1",
            "a/b",
            "evil?x=1",
        ] {
            assert_eq!(url_host(None, Some(bad)), None, "{bad:?}");
        }
        assert_eq!(url_host(None, None), None);
    }

    #[test]
    fn urls_prefer_the_hosts_family_and_skip_tls_without_a_certificate() {
        let ice = IceServers::new(&setup());
        let (stun, turn) = ice.urls("example.com");
        assert_eq!(stun, ["stun:example.com:3478"]);
        assert_eq!(
            turn,
            [
                "turn:example.com:3478?transport=udp",
                "turn:example.com:3481?transport=tcp"
            ]
        );
        let (stun, turn) = ice.urls("[::1]");
        assert_eq!(stun, ["stun:[::1]:3479"]);
        assert_eq!(turn[1], "turn:[::1]:3480?transport=tcp");
    }

    #[test]
    fn body_has_a_verifiable_rest_credential() {
        let mut s = setup();
        s.certificate = Some(crate::net::tls::ReloadableCert::new(
            crate::net::tls::self_signed().unwrap(),
        ));
        let ice = IceServers::new(&s);
        let body = ice.body("s3cret", "h", 1_000);
        assert_eq!(body["ttl"], 3600);
        let servers = body["iceServers"].as_array().unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0]["urls"][0], "stun:h:3478");
        assert!(servers[0].get("username").is_none());
        let turn = &servers[1];
        assert_eq!(turn["urls"][2], "turns:h:5349?transport=tcp");
        let username = turn["username"].as_str().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(expiry, "4600");
        assert_eq!(user.len(), 8);
        assert_eq!(
            turn["credential"].as_str().unwrap(),
            rest_password(b"s3cret", username)
        );
    }

    #[test]
    fn fixed_window_limits_per_client_and_resets() {
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut w = FixedWindow::new(3, Duration::from_secs(60), 100);
        assert!((0..3).all(|_| w.allow(a, t0)));
        assert!(!w.allow(a, t0 + Duration::from_secs(59)));
        assert!(w.allow(b, t0));
        assert!(w.allow(a, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn fixed_window_is_bounded() {
        let t0 = Instant::now();
        let mut w = FixedWindow::new(1, Duration::from_secs(60), 2);
        let ip = |n: u8| IpAddr::from([192, 0, 2, n]);
        assert!(w.allow(ip(1), t0));
        assert!(w.allow(ip(2), t0));
        // Full of live windows: a new client is refused, known ones are still counted.
        assert!(!w.allow(ip(3), t0));
        assert!(!w.allow(ip(1), t0));
        assert_eq!(w.window_by_client.len(), 2);
        // Once the windows expire, room is made.
        assert!(w.allow(ip(3), t0 + Duration::from_secs(61)));
        assert!(w.window_by_client.len() <= 2);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = ip_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ip_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            ip_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }
}
