//! [`Config::validate`]: the checks a whole [`Config`] must pass, whichever way it was built
//! (file, development profile, command-line overrides). Checks of a single value's shape live
//! in `parse`; this module holds the rules between keys and the limits of numbers.
//!
//! Every [`Problem`] names the dotted key it is about, so `load` can turn it into
//! `file:line: key: what` and `crate::cli` into `... (with command-line overrides): key: what`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Config, Profile};

/// One rule a [`Config`] breaks: the dotted key it is about and what is wrong. Never holds a
/// secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The smallest non-zero `policy.max_bps_per_allocation` (bits per second): below it the value
/// is more likely a unit mistake (kbit/s, or coturn's bytes) than a cap.
const MIN_BPS_PER_ALLOCATION: u64 = 8_000;

/// SOFTWARE: RFC 8489 §14.14 allows fewer than 128 characters; we count bytes. It is only
/// sent on answers to authenticated requests (`engine::control::reply`).
const MAX_SOFTWARE_BYTES: usize = 127;

/// REALM is in every 401, and a 401 must stay under 3x the request (amplification, issue 10
/// item 9) for the smallest real first Allocate: 28 bytes (header and REQUESTED-TRANSPORT).
/// The 401 is 20 (header) + 8 (ERROR-CODE, no reason) + 4 + REALM padded to 4 + 4 + 28
/// (NONCE, 27 characters padded) = 64 + REALM bytes, which is under 84 for up to 16 bytes.
pub const MAX_REALM_BYTES: usize = 16;

impl Config {
    /// Every rule this configuration breaks; empty when it is usable.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut p = Vec::new();
        self.check_server(&mut p);
        self.check_listen(&mut p);
        self.check_relay(&mut p);
        self.check_auth(&mut p);
        self.check_policy(&mut p);
        self.check_lifetimes(&mut p);
        self.check_streams(&mut p);
        self.check_http(&mut p);
        self.check_fastpath(&mut p);
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }

    /// Settings that are valid but almost certainly not what the operator wants; `turnd
    /// --check-config` prints them and turnd logs them at start.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut w = Vec::new();
        let r = &self.relay;
        let mapped = |ip: std::net::IpAddr| r.external.iter().any(|m| m.private == ip);
        for (key, ip) in [
            ("relay.ipv4", r.ipv4.map(std::net::IpAddr::V4)),
            ("relay.ipv6", r.ipv6.map(std::net::IpAddr::V6)),
        ] {
            if let Some(ip) = ip.filter(|ip| ip.is_unspecified() && !mapped(*ip)) {
                w.push(Problem::new(
                    key,
                    format!(
                        "relays bind {ip} and no relay.external mapping names it, so clients \
                         are told {ip}:port as their relayed address, which nobody can reach: \
                         set {key} to this host's address, or relay.external = \
                         [\"PUBLIC={ip}\"]"
                    ),
                ));
            }
        }
        w
    }

    fn check_fastpath(&self, p: &mut Vec<Problem>) {
        for (i, name) in self.fastpath.xdp.iter().enumerate() {
            // IFNAMSIZ is 16 with the terminating NUL; '/' and whitespace never occur.
            if name.is_empty()
                || name.len() > 15
                || name.contains(['/', '\0'])
                || name.chars().any(char::is_whitespace)
            {
                p.push(Problem::new(
                    "fastpath.xdp",
                    format!("{name:?} is not an interface name (1 to 15 bytes, no '/' or spaces)"),
                ));
            } else if self.fastpath.xdp[..i].contains(name) {
                p.push(Problem::new(
                    "fastpath.xdp",
                    format!("{name:?} is listed twice"),
                ));
            }
        }
    }

    fn check_server(&self, p: &mut Vec<Problem>) {
        if self.realm.is_empty() {
            p.push(Problem::new(
                "realm",
                "is empty; clients need a realm to compute keys",
            ));
        } else if self.realm.len() > MAX_REALM_BYTES {
            p.push(Problem::new(
                "realm",
                format!(
                    "is {} bytes, longer than {MAX_REALM_BYTES}: every 401 carries it, and a 401 \
                     must stay under 3 times the smallest first Allocate (amplification)",
                    self.realm.len()
                ),
            ));
        }
        if self.workers == 0 {
            p.push(Problem::new("workers", "must be at least 1"));
        }
        if let Some(s) = &self.software {
            if s.len() > MAX_SOFTWARE_BYTES {
                p.push(Problem::new(
                    "software",
                    format!(
                        "is {} bytes, longer than {MAX_SOFTWARE_BYTES} (RFC 8489 §14.14)",
                        s.len()
                    ),
                ));
            }
        }
        if let Err(m) = super::parse::log_level(&self.log.level) {
            p.push(Problem::new(
                "log.level",
                format!("{:?}: {m}", self.log.level),
            ));
        }
    }

    fn check_listen(&self, p: &mut Vec<Problem>) {
        let l = &self.listen;
        if l.udp.is_empty() && l.tcp.is_empty() && l.tls.is_empty() && l.dtls.is_empty() {
            p.push(Problem::new(
                "listen",
                "no listeners: give at least one address in listen.udp, listen.tcp or listen.tls",
            ));
        }
        // The development profile serves a self-signed certificate instead.
        if !l.tls.is_empty()
            && self.tls.is_none()
            && self.acme.is_none()
            && self.profile == Profile::Production
        {
            p.push(Problem::new(
                "listen.tls",
                "TLS listeners need [tls] cert and key",
            ));
        }
        // DTLS reads the [tls] files itself (no ACME certificate); the development profile
        // generates a self-signed one.
        if !l.dtls.is_empty() && self.tls.is_none() && self.profile == Profile::Production {
            p.push(Problem::new(
                "listen.dtls",
                "DTLS listeners need [tls] cert and key (an ECDSA P-256 or P-384 key)",
            ));
        }
        for a in &l.dtls {
            if a.port() != 0 && l.udp.contains(a) {
                p.push(Problem::new(
                    "listen.dtls",
                    format!("{a} is also in listen.udp"),
                ));
            }
        }
        duplicates(&l.dtls, "listen.dtls", p);
        if let Some(a) = &self.acme {
            if l.tls.is_empty() {
                p.push(Problem::new(
                    "tls.acme",
                    "needs a TLS listener (listen.tls): the TLS-ALPN-01 challenge is answered there",
                ));
            }
            if a.domains.is_empty() {
                p.push(Problem::new("tls.acme.domains", "give at least one name"));
            }
            for d in &a.domains {
                let ok = !d.is_empty()
                    && d.len() <= 253
                    && d.split('.').all(|label| {
                        !label.is_empty()
                            && label.len() <= 63
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    p.push(Problem::new(
                        "tls.acme.domains",
                        format!("{d:?} is not a DNS name (wildcards need DNS-01, unsupported)"),
                    ));
                }
            }
            if !a.directory.starts_with("https://") {
                p.push(Problem::new(
                    "tls.acme.directory",
                    "must be an https:// URL",
                ));
            }
            if a.contact
                .as_deref()
                .is_some_and(|c| !c.starts_with("mailto:"))
            {
                p.push(Problem::new(
                    "tls.acme.contact",
                    "must be a mailto: URL, e.g. \"mailto:ops@example.org\"",
                ));
            }
            if a.renew_before.is_zero() {
                p.push(Problem::new(
                    "tls.acme.renew_before",
                    "must be more than 0s",
                ));
            }
        }
        duplicates(&l.udp, "listen.udp", p);
        // TCP and TLS listeners share the TCP port space.
        let stream: Vec<(SocketAddr, &str)> = l
            .tcp
            .iter()
            .map(|a| (*a, "listen.tcp"))
            .chain(l.tls.iter().map(|a| (*a, "listen.tls")))
            .collect();
        let mut seen = HashSet::new();
        for (addr, key) in stream {
            if addr.port() != 0 && !seen.insert(addr) {
                p.push(Problem::new(
                    key,
                    format!("{addr} is listed twice in listen.tcp/listen.tls"),
                ));
            }
        }
        if self.profile == Profile::Development {
            let http = self.signaling.listen.iter().chain(self.admin.listen.iter());
            let all = l.udp.iter().chain(&l.tcp).chain(&l.tls).chain(http);
            if let Some(a) = all.into_iter().find(|a| !a.ip().is_loopback()) {
                p.push(Problem::new(
                    "listen",
                    format!(
                        "{a} is not a loopback address; the development profile (no --config) has \
                         public credentials and relays to loopback, so it only listens on \
                         loopback: write a config file to listen elsewhere"
                    ),
                ));
            }
        }
    }

    fn check_relay(&self, p: &mut Vec<Problem>) {
        let r = &self.relay;
        if r.ipv4.is_none() && r.ipv6.is_none() {
            p.push(Problem::new(
                "relay",
                "relay.ipv4 and relay.ipv6 are both \"none\": no allocation could succeed",
            ));
        }
        if r.ports.min == 0 || r.ports.min > r.ports.max {
            p.push(Problem::new(
                "relay.ports",
                format!(
                    "\"{}-{}\": the range must be within 1-65535, start <= end",
                    r.ports.min, r.ports.max
                ),
            ));
        }
        if r.tcp {
            // TCP relay listeners share their port (SO_REUSEPORT, for the outgoing Connects);
            // one inside the range could join a TCP/TLS listener's group.
            let inside = self
                .listen
                .tcp
                .iter()
                .chain(&self.listen.tls)
                .find(|a| (r.ports.min..=r.ports.max).contains(&a.port()));
            if let Some(a) = inside {
                p.push(Problem::new(
                    "relay.ports",
                    format!("with relay.tcp, must not contain the TCP/TLS listener port of {a}"),
                ));
            }
        }
        for (i, m) in r.external.iter().enumerate() {
            if m.public.is_ipv4() != m.private.is_ipv4() {
                p.push(Problem::new(
                    format!("relay.external[{i}]"),
                    "the public and private addresses are of different families",
                ));
            }
        }
    }

    /// `[auth] webhook*`: the URL's scheme (https, or http to loopback unless allowed), a
    /// timeout the engine's parking outlives, and non-zero caps.
    fn check_webhook(&self, p: &mut Vec<Problem>) {
        let w = &self.webhook;
        if let Some(url) = &w.url {
            if let Err(m) = crate::auth_webhook::check_url(&url.0, w.allow_http) {
                p.push(Problem::new("auth.webhook", m));
            }
        }
        if w.timeout.is_zero() || w.timeout > Duration::from_secs(5) {
            p.push(Problem::new(
                "auth.webhook_timeout",
                "must be above 0 and at most 5s (a request waits for it)",
            ));
        }
        if w.breaker_cooldown.is_zero() {
            p.push(Problem::new(
                "auth.webhook_breaker_cooldown",
                "must be above 0",
            ));
        }
        for (key, n) in [
            ("auth.webhook_cache_entries", w.cache_entries),
            ("auth.webhook_max_inflight", w.max_inflight),
            ("auth.webhook_breaker_failures", w.breaker_failures as usize),
        ] {
            if n == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
    }

    fn check_auth(&self, p: &mut Vec<Problem>) {
        let a = &self.auth;
        self.check_webhook(p);
        if a.users.is_empty()
            && a.secrets.is_empty()
            && a.secrets_sha256.is_empty()
            && self.webhook.url.is_none()
        {
            p.push(Problem::new(
                "auth",
                "no users and no secrets: nobody could authenticate (set auth.users, \
                 [[auth.user]], auth.secrets or auth.secret_file)",
            ));
        }
        let mut names = HashSet::new();
        for u in &a.users {
            if u.name.is_empty() {
                p.push(Problem::new("auth.users", "a user has an empty name"));
            } else if !names.insert(u.name.as_str()) {
                p.push(Problem::new(
                    "auth.users",
                    format!("user \"{}\" is defined twice", u.name.escape_debug()),
                ));
            }
        }
        if a.secrets
            .iter()
            .chain(&a.secrets_sha256)
            .any(String::is_empty)
        {
            p.push(Problem::new("auth.secrets", "a secret is empty"));
        }
        if a.rest_separator.is_ascii_digit() {
            p.push(Problem::new("auth.rest_separator", "must not be a digit"));
        }
        if a.nonce_lifetime.is_zero() {
            p.push(Problem::new(
                "auth.nonce_lifetime",
                "must be longer than 0s",
            ));
        }
        if a.challenge_budget_per_sec == 0 {
            p.push(Problem::new(
                "auth.challenge_budget_per_sec",
                "must be at least 1: with 0 no client ever gets the 401 that starts authentication",
            ));
        }
        if a.password_algorithms.is_empty() {
            p.push(Problem::new(
                "auth.password_algorithms",
                "must list at least one of \"sha256\", \"md5\"",
            ));
        }
        if a.failure_budget_per_sec == 0 {
            p.push(Problem::new(
                "auth.failure_budget_per_sec",
                "must be at least 1: with 0 a stale nonce (438) could never be renewed",
            ));
        }
    }

    fn check_policy(&self, p: &mut Vec<Problem>) {
        let pol = &self.policy;
        for (key, value) in [
            ("policy.max_allocations", pol.max_allocations),
            (
                "policy.max_allocations_per_user",
                pol.max_allocations_per_user,
            ),
            (
                "policy.max_permissions_per_allocation",
                pol.max_permissions_per_allocation,
            ),
        ] {
            if value == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        if (1..MIN_BPS_PER_ALLOCATION).contains(&pol.max_bps_per_allocation) {
            p.push(Problem::new(
                "policy.max_bps_per_allocation",
                "is in bits per second: at least 8000 (1 kB/s), or 0 for unlimited",
            ));
        }
    }

    fn check_lifetimes(&self, p: &mut Vec<Problem>) {
        let l = &self.lifetimes;
        for (key, value) in [
            ("lifetimes.allocation_default", l.allocation_default),
            ("lifetimes.allocation_max", l.allocation_max),
            ("lifetimes.permission", l.permission),
            ("lifetimes.channel", l.channel),
            ("lifetimes.reservation", l.reservation),
        ] {
            if value.as_secs() == 0 {
                p.push(Problem::new(
                    key,
                    "must be at least 1s (STUN lifetimes are in seconds)",
                ));
            }
        }
        if l.allocation_default > l.allocation_max {
            p.push(Problem::new(
                "lifetimes.allocation_default",
                format!(
                    "{}s is above lifetimes.allocation_max ({}s)",
                    l.allocation_default.as_secs(),
                    l.allocation_max.as_secs()
                ),
            ));
        }
    }

    fn check_streams(&self, p: &mut Vec<Problem>) {
        let s = &self.streams;
        for (key, value) in [
            ("streams.handshake_timeout", s.handshake_timeout),
            ("streams.first_frame_timeout", s.first_frame_timeout),
            ("streams.idle_timeout", s.idle_timeout),
            ("streams.write_timeout", s.write_timeout),
        ] {
            if value.is_zero() {
                p.push(Problem::new(key, "must be longer than 0s"));
            }
        }
        for (key, value) in [
            ("streams.max_connections", s.max_connections),
            ("streams.max_connections_per_ip", s.max_connections_per_ip),
            ("streams.write_queue_bytes", s.write_queue_bytes),
        ] {
            if value == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        let d = &self.dtls;
        for (key, value) in [
            ("dtls.handshake_timeout", d.handshake_timeout),
            ("dtls.idle_timeout", d.idle_timeout),
        ] {
            if value.is_zero() {
                p.push(Problem::new(key, "must be longer than 0s"));
            }
        }
        for (key, value) in [
            ("dtls.max_sessions", d.max_sessions),
            ("dtls.max_sessions_per_ip", d.max_sessions_per_ip),
        ] {
            if value == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
    }
}

impl Config {
    fn check_http(&self, p: &mut Vec<Problem>) {
        if let Some(a) = self.admin.listen {
            if !a.ip().is_loopback() && self.admin.token.is_none() {
                p.push(Problem::new(
                    "admin.listen",
                    format!("{a} is not on loopback: set admin.token (or admin.token_file)"),
                ));
            }
        }
        if self.admin.ready_probe {
            if self.listen.udp.is_empty() {
                p.push(Problem::new(
                    "admin.ready_probe",
                    "needs a UDP listener (listen.udp): the probe allocates through it",
                ));
            }
            if self.relay.ipv4.is_none() && self.relay.ipv6.is_none() {
                p.push(Problem::new(
                    "admin.ready_probe",
                    "needs a relay address (relay.ipv4 or relay.ipv6)",
                ));
            }
            let i = self.admin.ready_probe_interval;
            if i < Duration::from_secs(1) || i > Duration::from_secs(3600) {
                p.push(Problem::new(
                    "admin.ready_probe_interval",
                    "must be between 1s and 1h",
                ));
            }
        }
        if self.admin.token.as_deref().is_some_and(|t| t.len() < 16) {
            p.push(Problem::new(
                "admin.token",
                "must be at least 16 characters",
            ));
        }
        let s = &self.signaling;
        if s.tls
            && self.tls.is_none()
            && self.acme.is_none()
            && self.profile == super::Profile::Production
        {
            p.push(Problem::new("signaling.tls", "needs [tls] cert and key"));
        }
        if s.listen.is_some_and(|a| a.port() != 0) && s.listen == self.admin.listen {
            p.push(Problem::new(
                "signaling.listen",
                "is the same address as admin.listen",
            ));
        }
        for (key, value) in [
            ("signaling.max_connections_per_ip", s.max_connections_per_ip),
            ("signaling.max_message_bytes", s.max_message_bytes),
            ("signaling.max_websockets", s.max_websockets),
            ("signaling.max_http_connections", s.max_http_connections),
            (
                "signaling.max_http_connections_per_ip",
                s.max_http_connections_per_ip,
            ),
            ("signaling.mint_per_minute", s.mint_per_minute as usize),
            (
                "signaling.ice_requests_per_minute",
                s.ice_requests_per_minute as usize,
            ),
            (
                "signaling.mint_allocations_per_client",
                s.mint_allocations_per_client,
            ),
            ("signaling.mint_allocations", s.mint_allocations),
        ] {
            if value == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        self.validate_mint(p);
        for (key, d) in [
            ("signaling.header_timeout", s.header_timeout),
            ("signaling.idle_timeout", s.idle_timeout),
        ] {
            if d.is_zero() {
                p.push(Problem::new(key, "must be longer than 0s"));
            }
        }
        if s.credential_ttl.is_zero() {
            p.push(Problem::new(
                "signaling.credential_ttl",
                "must be longer than 0s",
            ));
        }
    }
}

fn duplicates(addrs: &[SocketAddr], key: &str, p: &mut Vec<Problem>) {
    let mut seen = HashSet::new();
    // Port 0 asks for a fresh ephemeral port each time, so it may repeat.
    for a in addrs {
        if a.port() != 0 && !seen.insert(a) {
            p.push(Problem::new(key, format!("{a} is listed twice")));
        }
    }
}

impl Config {
    /// `[signaling] mint`: a token gate needs a usable token; the mint secret is its own.
    fn validate_mint(&self, p: &mut Vec<Problem>) {
        let s = &self.signaling;
        match (&s.mint, &s.mint_token) {
            (super::Mint::Token, None) => p.push(Problem::new(
                "signaling.mint_token_file",
                "mint = \"token\" needs a token file",
            )),
            (_, Some(t)) if t.0.len() < 16 => p.push(Problem::new(
                "signaling.mint_token_file",
                "the token must be at least 16 characters",
            )),
            _ => {}
        }
        let prefix = turnd_proto::auth::MINTED_USER_PREFIX;
        if self.auth.users.iter().any(|u| u.name.starts_with(prefix)) {
            p.push(Problem::new(
                "auth.users",
                format!("names starting with {prefix:?} are reserved for minted credentials"),
            ));
        }
        if let Some(m) = &s.mint_secret {
            if m.0.len() < 16 {
                p.push(Problem::new(
                    "signaling.mint_secret_file",
                    "the secret must be at least 16 characters",
                ));
            }
            if self.auth.secrets.contains(&m.0) || self.auth.secrets_sha256.contains(&m.0) {
                p.push(Problem::new(
                    "signaling.mint_secret_file",
                    "must differ from every [auth] secret",
                ));
            }
        }
    }
}
