//! `GET /api/ice-servers`: an RTCConfiguration-style list of this server's STUN/TURN URLs with
//! short-lived TURN REST credentials (draft-uberti-behave-turn-rest-00):
//!
//! ```json
//! { "iceServers": [
//!     { "urls": ["stun:H:3478"] },
//!     { "urls": ["turn:H:3478?transport=udp", "turn:H:3478?transport=tcp",
//!                "turns:H:5349?transport=tcp"],
//!       "username": "1700000000:web:192.0.2.0/24",
//!       "credential": "base64(HMAC-SHA1(mint secret, username))" }
//!   ],
//!   "ttl": 3600 }
//! ```
//!
//! Whoever holds a credential may relay, so this endpoint is a credential mint and is guarded:
//! - `[signaling] mint`: `open` (anyone; the development profile), `token` (`Authorization:
//!   Bearer <mint_token>`), `off` (403; the default of config files).
//! - The user part is `web:<client prefix>` (IPv4 /24, IPv6 /64), signed with the mint secret
//!   (never an `[auth]` secret): every credential minted for one prefix is the same quota
//!   principal, so `max_allocations_per_user` caps the prefix, not each credential.
//! - Requests are rate-limited per client prefix (`ice_requests_per_minute`) in fixed memory
//!   ([`RateCells`]: hashed cells, no table to fill) and in total (`mint_per_minute`).
//! - `H` is `[signaling] public_host`, and then the Host header must name it (no DNS
//!   rebinding); without `public_host` only an IP literal or `localhost` is accepted as Host,
//!   never an arbitrary name. A request `Origin` must pass the same check as `/ws`.
//!
//! Only configured transports appear; per transport the port of the first listener of the
//! host's family is used (IPv4 for names).

use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use subtle::ConstantTimeEq;

use super::{json_error, App, HttpSetup, Remote};
use crate::config::Mint;
use turnd_proto::auth::{mint_secret, rest_password_with, rest_username, MINTED_USER_PREFIX};

/// Cells of the per-client limiter; a power of two.
const RATE_CELLS: usize = 4096;
const NANOS_PER_MINUTE: u64 = 60_000_000_000;

/// Per-minute rate limits in fixed memory: each key hashes (keyed per process, so nobody can
/// aim at another client's cell) to one of `cells` GCRA cells admitting `per_minute` units a
/// minute with bursts of a minute's worth. Keys sharing a cell share a budget; no key is ever
/// refused for lack of room. No clock: callers pass nanoseconds on a monotonic clock.
pub struct RateCells {
    /// Nanoseconds one unit costs; 0: unlimited.
    cost_ns: u64,
    burst_ns: u64,
    hasher: std::collections::hash_map::RandomState,
    /// Theoretical arrival time per cell.
    cells: Box<[AtomicU64]>,
}

impl RateCells {
    /// `per_minute == 0` admits everything.
    pub fn new(per_minute: u32, cells: usize) -> Self {
        let (cost_ns, burst_ns) = match u64::from(per_minute) {
            0 => (0, 0),
            n => {
                let cost = (NANOS_PER_MINUTE / n).max(1);
                (cost, cost * n)
            }
        };
        RateCells {
            cost_ns,
            burst_ns,
            hasher: Default::default(),
            cells: (0..cells.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Spend one unit for `key` at `now_ns`; false: over the limit.
    pub fn allow(&self, key: impl Hash, now_ns: u64) -> bool {
        if self.cost_ns == 0 {
            return true;
        }
        // Truncation is the point: the hash picks a cell.
        let cell = &self.cells[(self.hasher.hash_one(key) as usize) % self.cells.len()];
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(self.cost_ns);
            if next - now_ns > self.burst_ns {
                return false;
            }
            match cell.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }
}

/// Nanoseconds since the first call, on the monotonic clock.
fn monotonic_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let d = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The network a client's credentials and limits are counted by: IPv4 (and v4-mapped IPv6)
/// by /24, IPv6 by /64. Written `192.0.2.0/24`, `2001:db8:1:2::/64`.
pub fn client_prefix(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}/24", Ipv4Addr::new(o[0], o[1], o[2], 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Everything the handler needs, fixed at start-up.
pub struct IceServers {
    mint: Mint,
    token: Option<Arc<str>>,
    secret: Vec<u8>,
    /// `[signaling] mint_hmac`.
    hmac: turnd_proto::auth::RestHmac,
    separator: char,
    ttl: Duration,
    public_host: Option<String>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    /// TLS listeners, only when there is a certificate to serve on them.
    tls: Vec<SocketAddr>,
    per_client: RateCells,
    total: RateCells,
}

impl IceServers {
    pub fn new(setup: &HttpSetup) -> Self {
        let cfg = &setup.cfg;
        IceServers {
            mint: cfg.mint,
            token: cfg.mint_token.as_ref().map(|t| Arc::from(t.0.as_str())),
            secret: mint_secret(cfg.mint_secret.as_ref()),
            hmac: cfg.mint_hmac,
            separator: setup.rest_separator,
            ttl: cfg.credential_ttl,
            public_host: cfg.public_host.as_deref().and_then(normalise_host),
            udp: setup.udp.clone(),
            tcp: setup.tcp.clone(),
            tls: if setup.certificate.is_some() {
                setup.tls.clone()
            } else {
                Vec::new()
            },
            per_client: RateCells::new(cfg.ice_requests_per_minute, RATE_CELLS),
            total: RateCells::new(cfg.mint_per_minute, 1),
        }
    }

    /// The host for URLs, if the request's Host header may be answered (see [`request_host`]).
    pub fn host_for(&self, headers: &HeaderMap) -> Option<String> {
        let host_header = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        request_host(self.public_host.as_deref(), host_header)
    }

    /// Whether this server hands out credentials at all.
    pub fn mints(&self) -> bool {
        self.mint != Mint::Off
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

    /// The response body for `host` at wall-clock `unix_now`: a credential for `client`.
    pub fn body(&self, client: IpAddr, host: &str, unix_now: u64) -> serde_json::Value {
        let (stun, turn) = self.urls(host);
        let user = format!("{MINTED_USER_PREFIX}{}", client_prefix(client));
        let username = rest_username(unix_now + self.ttl.as_secs(), &user, self.separator);
        let credential = rest_password_with(self.hmac, &self.secret, &username);
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

    /// `Some(response)` refuses the request before anything is minted.
    fn gate(&self, headers: &HeaderMap) -> Option<Response> {
        match self.mint {
            Mint::Open => None,
            Mint::Off => Some(json_error(
                StatusCode::FORBIDDEN,
                "mint-off",
                "this server hands out no credentials ([signaling] mint = \"off\")",
            )),
            Mint::Token => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                let ok = self
                    .token
                    .as_deref()
                    .is_some_and(|t| bool::from(given.as_bytes().ct_eq(t.as_bytes())));
                if ok {
                    return None;
                }
                let mut r = json_error(
                    StatusCode::UNAUTHORIZED,
                    "bad-token",
                    "credentials need Authorization: Bearer <token> ([signaling] mint = \"token\")",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(r)
            }
        }
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

/// The host a request may be answered for, as put in URLs (IPv6 in brackets), or `None`:
/// - with `public_host` (already normalised): the Host header (port ignored) must name it,
///   so a rebound DNS name is refused;
/// - without: the Host header must be an IP literal or `localhost`: a name could be an
///   attacker's, rebound to this server.
pub fn request_host(public_host: Option<&str>, host_header: Option<&str>) -> Option<String> {
    let asked = normalise_host(strip_port(host_header?)?)?;
    match public_host {
        Some(p) => (p == asked).then_some(asked),
        None => {
            let literal = asked.starts_with('[') || asked.parse::<Ipv4Addr>().is_ok();
            (literal || asked == "localhost").then_some(asked)
        }
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:8080` -> `[::1]`; no port: unchanged.
fn strip_port(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        let port_ok = rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        return port_ok.then(|| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(h),
        Some(_) => None,
        None => Some(authority),
    }
}

/// A host name or address in the form URLs use: lower case, IPv6 in brackets.
pub(crate) fn normalise_host(h: &str) -> Option<String> {
    if let Some(inner) = h.strip_prefix('[') {
        let v6: Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        return Some(format!("[{v6}]"));
    }
    if let Ok(v6) = h.parse::<Ipv6Addr>() {
        return Some(format!("[{v6}]"));
    }
    let h = h.strip_suffix('.').unwrap_or(h);
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
    let now = monotonic_ns();
    if !ice.per_client.allow(client_prefix(remote.ip()), now) {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "too many requests for ICE servers from this network; try again in a minute",
        );
    }
    let Some(host) = ice.host_for(&headers) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad-host",
            "the Host header is not this server's name: set [signaling] public_host",
        );
    };
    if let Some(refused) = ice.gate(&headers) {
        return refused;
    }
    if !app.signaling.origin_ok(&headers) {
        return json_error(
            StatusCode::FORBIDDEN,
            "bad-origin",
            "this origin may not get credentials ([signaling] allowed_origins)",
        );
    }
    if !ice.total.allow((), now) {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "mint-busy",
            "this server hands out no more credentials this minute; try again later",
        );
    }
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut res = Json(ice.body(remote.ip(), &host, unix_now)).into_response();
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
    fn hosts_must_be_public_host_or_an_address() {
        let public = Some("turn.example.com");
        assert_eq!(
            request_host(public, Some("Turn.Example.com:8443")).unwrap(),
            "turn.example.com"
        );
        assert_eq!(
            request_host(public, Some("turn.example.com.")).unwrap(),
            "turn.example.com"
        );
        // DNS rebinding: another name, or an address, is not the configured host.
        assert_eq!(request_host(public, Some("evil.example:8443")), None);
        assert_eq!(request_host(public, Some("127.0.0.1")), None);
        assert_eq!(
            request_host(Some("[2001:db8::1]"), Some("[2001:db8:0::1]:1")).unwrap(),
            "[2001:db8::1]"
        );

        assert_eq!(
            request_host(None, Some("127.0.0.1:8080")).unwrap(),
            "127.0.0.1"
        );
        assert_eq!(request_host(None, Some("[::1]:8080")).unwrap(), "[::1]");
        assert_eq!(request_host(None, Some("[::1]")).unwrap(), "[::1]");
        assert_eq!(
            request_host(None, Some("LOCALHOST:1")).unwrap(),
            "localhost"
        );
        // Without public_host a name is never echoed.
        assert_eq!(request_host(None, Some("example.com")), None);
        for bad in [
            "",
            "a b:80",
            "x:y",
            "ex\"ample:1",
            "[zz]:1",
            "[::1]x",
            "a/b",
            "evil?x=1",
        ] {
            assert_eq!(request_host(None, Some(bad)), None, "{bad:?}");
            assert_eq!(request_host(public, Some(bad)), None, "{bad:?}");
        }
        assert_eq!(request_host(None, None), None);
        assert_eq!(normalise_host("2001:db8::1").unwrap(), "[2001:db8::1]");
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
    fn body_has_a_credential_for_the_clients_prefix_signed_with_the_mint_secret() {
        let mut s = setup();
        s.certificate = Some(crate::tls::ReloadableCert::new(
            crate::tls::self_signed().unwrap(),
        ));
        s.cfg.mint_secret = Some(crate::config::Redacted("mint-secret-0123456789".into()));
        let ice = IceServers::new(&s);
        let body = ice.body("192.0.2.77".parse().unwrap(), "h", 1_000);
        assert_eq!(body["ttl"], 3600);
        let servers = body["iceServers"].as_array().unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0]["urls"][0], "stun:h:3478");
        assert!(servers[0].get("username").is_none());
        let turn = &servers[1];
        assert_eq!(turn["urls"][2], "turns:h:5349?transport=tcp");
        let username = turn["username"].as_str().unwrap();
        assert_eq!(username, "4600:web:192.0.2.0/24");
        assert_eq!(
            turn["credential"].as_str().unwrap(),
            turnd_proto::auth::rest_password(b"mint-secret-0123456789", username)
        );
        let v6 = ice.body("2001:db8:1:2:aaaa::1".parse().unwrap(), "h", 1_000);
        assert_eq!(
            v6["iceServers"][1]["username"],
            "4600:web:2001:db8:1:2::/64"
        );
    }

    #[test]
    fn minted_passwords_follow_mint_hmac() {
        let mut s = setup();
        s.cfg.mint_secret = Some(crate::config::Redacted("mint-secret-0123456789".into()));
        s.cfg.mint_hmac = turnd_proto::auth::RestHmac::Sha256;
        let body = IceServers::new(&s).body("192.0.2.77".parse().unwrap(), "h", 1_000);
        let turn = &body["iceServers"][1];
        assert_eq!(turn["username"], "4600:web:192.0.2.0/24");
        // Python: base64(hmac.new(b"mint-secret-0123456789", username, "sha256").digest())
        assert_eq!(
            turn["credential"],
            "/bw1DFodqDv7bUfGAllrGaeZxMPkNf+ObgRveymFuNY="
        );
    }

    #[test]
    fn rate_cells_limit_per_key_and_refill() {
        let min = 60_000_000_000u64;
        let w = RateCells::new(3, RATE_CELLS);
        assert!((0..3).all(|_| w.allow("a", min)));
        assert!(!w.allow("a", min + 1_000_000_000));
        assert!(w.allow("b", min));
        // One unit back every 20 s; a full minute's worth after a minute.
        assert!(w.allow("a", min + min / 3 + 1));
        assert!((0..3).all(|_| w.allow("a", 3 * min)));
        assert!(RateCells::new(0, 1).allow("x", 0));
    }

    /// Issue 10 #4: the old table refused every new client once 65,534 were tracked.
    #[test]
    fn rate_cells_never_run_out_of_room() {
        let w = RateCells::new(1, RATE_CELLS);
        let now = 60_000_000_000u64;
        let admitted = (0..100_000u32)
            .filter(|i| {
                let ip = IpAddr::from(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    (i >> 16) as u16,
                    *i as u16,
                    0,
                    0,
                    0,
                    1,
                ));
                w.allow(client_prefix(ip), now)
            })
            .count();
        // Every cell admits one; keys beyond the cell count share cells.
        assert!(admitted >= RATE_CELLS * 9 / 10, "{admitted}");
        // A newcomer after the flood still gets in once its cell refills (a minute).
        let late = IpAddr::from([198, 51, 100, 1]);
        assert!(w.allow(client_prefix(late), now + 60_000_000_001));
    }

    #[test]
    fn prefixes_are_24_and_64() {
        assert_eq!(
            client_prefix("192.0.2.200".parse().unwrap()),
            "192.0.2.0/24"
        );
        assert_eq!(
            client_prefix("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.0/24"
        );
        assert_eq!(
            client_prefix("2001:db8:1:2:bbbb::2".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn gate_modes() {
        let mut s = setup();
        s.cfg.mint = Mint::Token;
        s.cfg.mint_token = Some(crate::config::Redacted("a-token-of-16-chars".into()));
        let ice = IceServers::new(&s);
        let mut h = HeaderMap::new();
        assert_eq!(ice.gate(&h).unwrap().status(), StatusCode::UNAUTHORIZED);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert_eq!(ice.gate(&h).unwrap().status(), StatusCode::UNAUTHORIZED);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a-token-of-16-chars"),
        );
        assert!(ice.gate(&h).is_none());
        s.cfg.mint = Mint::Off;
        let off = IceServers::new(&s);
        assert_eq!(off.gate(&h).unwrap().status(), StatusCode::FORBIDDEN);
        assert!(!off.mints());
        s.cfg.mint = Mint::Open;
        assert!(IceServers::new(&s).gate(&HeaderMap::new()).is_none());
    }
}
