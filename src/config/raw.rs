//! The serde view of turnd.toml: one struct per table, `deny_unknown_fields` everywhere, every
//! key optional (absent keys keep the secure default, see `load`).
//!
//! Values with a shape (addresses, durations, port ranges, ...) are parsed here, by serde, so a
//! bad value fails with the span of that value and `load` can name its line and key. Values that
//! hold secrets (`auth.users`, `auth.secrets`, `auth.user[].key`/`password`) stay plain strings
//! and are checked in `load`, which never repeats them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};

use super::parse::{self, MaybeNone};
use super::{ExternalMapping, LogFormat, PortRange};

/// A newtype around a value parsed from a TOML string by a `parse` function. The error repeats
/// the (non-secret) value, then says what is wrong: `"6000-5000": the range's start is above
/// its end`.
macro_rules! parsed_value {
    ($(#[$doc:meta])* $name:ident($inner:ty) = $parse:path, $expecting:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $parse(v).map($name).map_err(|m| E::custom(format!("{v:?}: {m}")))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

parsed_value!(
    /// `"0.0.0.0:3478"`, `"[::]:3478"`.
    Addr(SocketAddr) = parse::socket_addr, "an address with a port as a string, e.g. \"0.0.0.0:3478\""
);
parsed_value!(
    /// `"500ms"`, `"90s"`, `"10m"`, `"1h"`, `"1h30m"`.
    Dur(Duration) = parse::duration, "a duration as a string, e.g. \"10m\""
);
parsed_value!(
    /// `"49152-65535"`.
    Ports(PortRange) = parse::port_range, "a port range as a string, e.g. \"49152-65535\""
);
parsed_value!(
    /// `"198.51.100.7=10.0.0.7"` (public=private).
    External(ExternalMapping) = parse::external, "a mapping as a string, e.g. \"198.51.100.7=10.0.0.7\""
);
parsed_value!(
    /// `"10.0.0.0/8"` or a single address.
    Net(IpNet) = parse::peer_net, "a network as a string, e.g. \"10.0.0.0/8\""
);
parsed_value!(
    /// `"203.0.113.5"` or `"none"`.
    RelayV4(MaybeNone<Ipv4Addr>) = parse::relay_ipv4, "an IPv4 address or \"none\" as a string"
);
parsed_value!(
    /// `"2001:db8::5"` or `"none"`.
    RelayV6(MaybeNone<Ipv6Addr>) = parse::relay_ipv6, "an IPv6 address or \"none\" as a string"
);
parsed_value!(
    /// `"127.0.0.1:9641"` or `"none"`.
    Listener(MaybeNone<SocketAddr>) = parse::optional_listener, "an address with a port or \"none\" as a string"
);
parsed_value!(
    /// `"info"`, `"warn,turnd_proto::engine=debug"`.
    Level(String) = parse::log_level, "a log level as a string, e.g. \"info\""
);
parsed_value!(
    /// `"human"` or `"json"`.
    Format(LogFormat) = parse::log_format, "\"human\" or \"json\""
);
parsed_value!(
    /// `"native"` or `"generic"`.
    XdpMode(crate::config::XdpMode) = parse::xdp_mode, "\"native\" or \"generic\""
);
parsed_value!(
    /// One character, e.g. `":"`.
    Separator(char) = parse::rest_separator, "one character as a string, e.g. \":\""
);

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub realm: Option<String>,
    pub workers: Option<usize>,
    pub software: Option<String>,
    pub listen: Option<RawListen>,
    pub tls: Option<RawTls>,
    pub relay: Option<RawRelay>,
    pub auth: Option<RawAuth>,
    pub policy: Option<RawPolicy>,
    pub lifetimes: Option<RawLifetimes>,
    pub streams: Option<RawStreams>,
    pub dtls: Option<RawDtls>,
    pub signaling: Option<RawSignaling>,
    pub admin: Option<RawAdmin>,
    pub server: Option<RawServer>,
    pub log: Option<RawLog>,
    pub cluster: Option<RawCluster>,
    pub fastpath: Option<RawFastpath>,
}

/// `[fastpath]`: the XDP kernel fast path (`crate::fastpath`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFastpath {
    pub xdp: Option<Vec<String>>,
    pub xdp_mode: Option<XdpMode>,
}

/// The HTTP listener: signaling WebSocket, `/api/ice-servers`, pages.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignaling {
    pub listen: Option<Listener>,
    pub tls: Option<bool>,
    pub public_host: Option<String>,
    pub credential_ttl: Option<Dur>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_connections_per_ip: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub ice_requests_per_minute: Option<u32>,
    pub mint: Option<MintMode>,
    pub mint_token_file: Option<PathBuf>,
    pub mint_secret_file: Option<PathBuf>,
    /// "sha1" | "sha256": the HMAC of minted passwords.
    pub mint_hmac: Option<String>,
    pub mint_per_minute: Option<u32>,
    pub mint_allocations_per_client: Option<usize>,
    pub mint_allocations: Option<usize>,
    pub max_websockets: Option<usize>,
    pub max_http_connections: Option<usize>,
    pub max_http_connections_per_ip: Option<usize>,
    pub header_timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    pub fd_reserve: Option<usize>,
}

/// `[signaling] mint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MintMode {
    Open,
    Token,
    Off,
}

/// The admin listener: metrics, health, sessions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Listener>,
    /// Secret.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ready_probe: Option<bool>,
    pub ready_probe_interval: Option<Dur>,
}

/// `[cluster]`: a fleet of nodes sharing state through Redis (`crate::cluster`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `redis://host:6379/0` or `rediss://` (TLS). May hold a password: never repeated.
    pub redis: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates trusted for `rediss://` instead of the public roots.
    pub ca_file: Option<PathBuf>,
    pub node_id: Option<String>,
    pub heartbeat: Option<Dur>,
    pub lease: Option<Dur>,
    pub timeout: Option<Dur>,
    pub quota_fail: Option<super::QuotaFail>,
    pub redirect_above: Option<usize>,
    pub drain_min_allocations: Option<usize>,
    pub usage_interval: Option<Dur>,
    pub public_udp: Option<Addr>,
    pub public_tcp: Option<Addr>,
    pub public_tls: Option<Addr>,
    pub public_tls_domain: Option<String>,
}

/// Process-level settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub drain_timeout: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub udp: Option<Vec<Addr>>,
    pub tcp: Option<Vec<Addr>>,
    pub tls: Option<Vec<Addr>>,
    pub dtls: Option<Vec<Addr>>,
}

/// `cert` and `key` together, or `acme`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub acme: Option<RawAcme>,
}

/// Certificates from an ACME CA (TLS-ALPN-01 on the TLS listener).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: Vec<String>,
    pub contact: Option<String>,
    pub directory: String,
    pub state_dir: Option<PathBuf>,
    /// PEM root for the directory's HTTPS (testing or private ACME CAs).
    pub directory_ca: Option<PathBuf>,
    pub renew_before: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    pub ipv4: Option<RelayV4>,
    pub ipv6: Option<RelayV6>,
    pub ports: Option<Ports>,
    pub external: Option<Vec<External>>,
    pub socket_buffer: Option<usize>,
    pub gso: Option<bool>,
    pub coalesce: Option<Dur>,
    pub tcp: Option<bool>,
    pub tcp_max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `"name:password"` entries. Secret: checked in `load`, never echoed.
    pub users: Option<Vec<String>>,
    /// `[[auth.user]]` tables.
    pub user: Option<Vec<RawUser>>,
    /// TURN REST shared secrets. Secret.
    pub secrets: Option<Vec<String>>,
    /// A file with one secret per line, read at load time.
    pub secret_file: Option<PathBuf>,
    /// `[[auth.secret]] value = "..." hmac = "sha1" | "sha256"` tables. Secret.
    pub secret: Option<Vec<RawSecret>>,
    pub rest_separator: Option<Separator>,
    pub rest_max_skew: Option<Dur>,
    pub nonce_lifetime: Option<Dur>,
    pub challenge_budget_per_sec: Option<u32>,
    pub failure_budget_per_sec: Option<u32>,
    /// `["sha256", "md5"]`: RFC 8489 password algorithms offered, in order.
    pub password_algorithms: Option<Vec<String>>,
    pub userhash: Option<bool>,
    /// The admin API's revocations, relative to the config file.
    pub revocations_file: Option<PathBuf>,
    /// External authorisation: the webhook's URL (may carry a token: never echoed).
    pub webhook: Option<String>,
    /// The bearer token turnd sends the webhook, read from this file. Secret.
    pub webhook_token_file: Option<PathBuf>,
    pub webhook_allow_http: Option<bool>,
    /// PEM CA certificates trusted for the webhook instead of the system's.
    pub webhook_ca_file: Option<PathBuf>,
    pub webhook_timeout: Option<Dur>,
    pub webhook_cache: Option<Dur>,
    pub webhook_negative_cache: Option<Dur>,
    pub webhook_cache_entries: Option<usize>,
    pub webhook_max_inflight: Option<usize>,
    pub webhook_breaker_failures: Option<u32>,
    pub webhook_breaker_cooldown: Option<Dur>,
}

/// `[[auth.secret]]`: a TURN REST secret and the HMAC its passwords use (default "sha1").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// Secret.
    pub value: String,
    pub hmac: Option<String>,
}

/// `[[auth.user]] name = "bob"` with exactly one of `key` (32 hex digits) or `password`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    /// Secret.
    pub key: Option<String>,
    /// Secret.
    pub password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub allow_peers: Option<Vec<Net>>,
    pub deny_peers: Option<Vec<Net>>,
    pub max_allocations: Option<usize>,
    pub max_allocations_per_user: Option<usize>,
    pub max_permissions_per_allocation: Option<usize>,
    pub max_channels_per_allocation: Option<usize>,
    pub max_reservations_per_user: Option<usize>,
    pub max_bps_per_allocation: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLifetimes {
    pub allocation_default: Option<Dur>,
    pub allocation_max: Option<Dur>,
    pub permission: Option<Dur>,
    pub channel: Option<Dur>,
    pub reservation: Option<Dur>,
}

/// Limits of TCP and TLS client connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStreams {
    pub handshake_timeout: Option<Dur>,
    pub first_frame_timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub write_queue_bytes: Option<usize>,
    pub write_timeout: Option<Dur>,
}

/// Limits of DTLS client sessions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDtls {
    pub handshake_timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    pub max_sessions: Option<usize>,
    pub max_sessions_per_ip: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Level>,
    pub format: Option<Format>,
    pub redact: Option<bool>,
}
