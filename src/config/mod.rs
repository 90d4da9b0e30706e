//! Configuration: the validated, typed [`Config`] that the rest of turnd consumes.
//!
//! Two layers (see STYLE.md §4): `raw` is the serde view of the TOML file
//! (`deny_unknown_fields`, every error carries file, line and key); `load` turns it into a
//! [`Config`] that cannot be half-valid. CLI flags and `TURND_*` variables are merged in
//! `crate::cli`. No config file means [`Config::development`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

mod load;
mod locate;
pub mod parse;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

pub use load::{
    is_secret_key, load_file, load_file_with, load_str, load_str_with, read_secret_file,
    ConfigError, Located,
};
pub use validate::Problem;
// The protocol-level sections are the proto crate's settings types.
pub use turnd_proto::settings::{
    Auth, Credential, ExternalMapping, Lifetimes, Policy, PortRange, Redacted, StaticUser,
};

/// The development profile's static user (documented in the README).
pub const DEV_USER: &str = "dev";
/// The development profile's static password (documented in the README).
pub const DEV_PASSWORD: &str = "devpass";
/// The development profile's TURN REST shared secret (documented in the README).
pub const DEV_SECRET: &str = "devsecret";
/// The default realm.
pub const DEFAULT_REALM: &str = "turnd";
/// `[relay] coalesce` by default: 50 µs (at 200k pkt/s it cut server CPU per packet by about
/// a fifth, docs/benchmarks.md; it holds only above 80k datagrams/s per shard).
pub const DEFAULT_COALESCE: Duration = Duration::from_micros(50);
/// The longest `[relay] coalesce` accepted.
pub const MAX_COALESCE: Duration = Duration::from_millis(1);

/// Which defaults a configuration started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// No config file: loopback only, loopback peers allowed, dev credentials, loud banner.
    Development,
    /// A config file was given: secure defaults.
    Production,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub profile: Profile,
    /// Where the file came from, for messages; `None` for the built-in profile.
    pub source: Option<PathBuf>,
    pub realm: String,
    /// Number of shards (threads); default: number of cores.
    pub workers: usize,
    /// SOFTWARE attribute in responses; `None` (the default) sends none.
    pub software: Option<String>,
    pub listen: Listen,
    pub tls: Option<TlsFiles>,
    /// `[tls] acme`: certificates obtained and renewed from an ACME CA (`crate::acme`).
    pub acme: Option<Acme>,
    pub relay: Relay,
    pub auth: Auth,
    pub policy: Policy,
    pub lifetimes: Lifetimes,
    pub streams: Streams,
    /// `[dtls]`: limits of DTLS sessions (`listen.dtls`).
    pub dtls: Dtls,
    pub signaling: Signaling,
    pub admin: Admin,
    pub server: Server,
    pub log: Log,
    /// `[cluster]`: `None` (both profiles' default) is a standalone server.
    pub cluster: Option<Cluster>,
    /// `[auth] webhook*`: external authorisation (`crate::auth_webhook`); off by default.
    pub webhook: Webhook,
    /// `[fastpath]`: the XDP kernel fast path (`crate::fastpath`); off by default.
    pub fastpath: Fastpath,
}

/// `[fastpath]`: relay IPv4 UDP ChannelData in the kernel (XDP) on these interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fastpath {
    /// Interfaces to attach to; empty (the default) is off.
    pub xdp: Vec<String>,
    /// Native (driver) XDP, the default, or generic (SKB) mode when asked for.
    pub xdp_mode: XdpMode,
}

/// `[fastpath] xdp_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Driver mode: the program runs before the kernel allocates an skb.
    #[default]
    Native,
    /// SKB mode: works on any driver, much slower; only when the operator asks for it.
    Generic,
}

/// `[auth] webhook*`: ask an HTTP endpoint for the keys of users `[auth]` does not know.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// `https://` (or `http://` to loopback, or anywhere with `allow_http`); `None`: off.
    pub url: Option<Redacted>,
    /// Sent as `Authorization: Bearer <token>`; from `webhook_token_file`.
    pub token: Option<Redacted>,
    /// `http://` to hosts other than loopback. Default: false.
    pub allow_http: bool,
    /// PEM CA certificates trusted instead of the system's. Default: none.
    pub ca_file: Option<std::path::PathBuf>,
    /// Each request's deadline (connect included). Default: 1 s.
    pub timeout: Duration,
    /// How long an allow is cached. Default: 5 min.
    pub cache: Duration,
    /// How long a deny is cached. Default: 30 s.
    pub negative_cache: Duration,
    /// Cache entries at most. Default: 10000.
    pub cache_entries: usize,
    /// Requests in flight at most. Default: 64.
    pub max_inflight: usize,
    /// Consecutive failures that open the circuit breaker. Default: 5.
    pub breaker_failures: u32,
    /// How long the open breaker sends nothing. Default: 10 s.
    pub breaker_cooldown: Duration,
}

impl Default for Webhook {
    fn default() -> Self {
        Webhook {
            url: None,
            token: None,
            allow_http: false,
            ca_file: None,
            timeout: Duration::from_secs(1),
            cache: Duration::from_secs(300),
            negative_cache: Duration::from_secs(30),
            cache_entries: 10_000,
            max_inflight: 64,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// `[cluster]`: the fleet's shared state in Redis (see `crate::cluster`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `redis://` or `rediss://` URL (may carry a password, hence redacted).
    pub redis: Redacted,
    /// From `password_file`: overrides a password in the URL.
    pub password: Option<Redacted>,
    /// From `ca_file`: PEM CA certificates a `rediss://` server's certificate must chain
    /// to, instead of the public (webpki) roots. Default: none (the public roots).
    pub ca_pem: Option<Vec<u8>>,
    /// This node's name in the fleet. Default: the hostname.
    pub node_id: String,
    /// How often the node renews its lease and reads the others'. Default: 1 s.
    pub heartbeat: Duration,
    /// How long a node's lease outlives its last heartbeat. Default: 3 s.
    pub lease: Duration,
    /// Each Redis round trip's timeout (the data path never waits on Redis). Default: 500 ms.
    pub timeout: Duration,
    pub quota_fail: QuotaFail,
    /// Above this many allocations on this node, new Allocates get 300 (Try Alternate) to
    /// the least-loaded node. 0 (the default): never.
    pub redirect_above: usize,
    /// A SIGTERM drain ends once this few allocations remain (the rest are ended). Default: 0.
    pub drain_min_allocations: usize,
    /// An interim usage record for each allocation every this long; zero: only at the end.
    /// Default: 1 h.
    pub usage_interval: Duration,
    /// Addresses other nodes name in ALTERNATE-SERVER for this node, per transport (UDP,
    /// TCP, TLS); `None`: never a redirect target for it. Default: none.
    pub public: [Option<SocketAddr>; 3],
    /// ALTERNATE-DOMAIN sent with this node's TLS address. Default: none.
    pub public_tls_domain: Option<String>,
}

/// What quotas do while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaFail {
    /// Enforce this node's own limits alone (the default).
    Local,
    /// Refuse every new allocation (486) until Redis is back.
    Closed,
}

/// The operators' HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/api/sessions`.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// `None`: no admin listener. Default: 127.0.0.1:9641.
    pub listen: Option<SocketAddr>,
    /// Bearer token for the session API (from `token` or `token_file`); `None`: session API
    /// off. A listener off loopback requires a token, for `/metrics` too.
    pub token: Option<String>,
    /// `/readyz` also requires the relay path to work: every `ready_probe_interval` the
    /// server allocates through its own first UDP listener and relays a datagram to a
    /// loopback echo and back (see `crate::probe`). Default: off.
    pub ready_probe: bool,
    pub ready_probe_interval: Duration,
}

/// Process-level behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Server {
    /// On SIGTERM, refuse new allocations and wait up to this long for existing ones to end
    /// before exiting; zero exits at once.
    pub drain_timeout: Duration,
}

/// The HTTP listener with the WebSocket signaling endpoint, `/api/ice-servers` and the pages.
#[derive(Debug, Clone, PartialEq)]
pub struct Signaling {
    /// `None`: no HTTP listener. Development profile: 127.0.0.1:8080.
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with the TLS listeners' certificate (browsers give camera access only on
    /// localhost or HTTPS).
    pub tls: bool,
    /// Host name or address put in the stun:/turn:/turns: URLs; `None`: the Host header of
    /// the request.
    pub public_host: Option<String>,
    /// Lifetime of the TURN REST credentials handed to browsers.
    pub credential_ttl: Duration,
    /// Origins allowed to open the WebSocket; empty: only the server's own origin.
    pub allowed_origins: Vec<String>,
    pub max_connections_per_ip: usize,
    /// Largest WebSocket message accepted; larger ones close the socket.
    pub max_message_bytes: usize,
    /// `/api/ice-servers` requests allowed per client (IPv4 /24, IPv6 /64) per minute.
    pub ice_requests_per_minute: u32,
    /// Who may get credentials from `/api/ice-servers`.
    pub mint: Mint,
    /// The bearer token `mint = "token"` asks for (from `mint_token_file`).
    pub mint_token: Option<Redacted>,
    /// The secret minted credentials are signed with (from `mint_secret_file`); `None`: a
    /// random one per process. Never one of the `[auth]` secrets.
    pub mint_secret: Option<Redacted>,
    /// The HMAC of minted passwords (`mint_hmac`, default SHA-1).
    pub mint_hmac: turnd_proto::auth::RestHmac,
    /// Credentials minted per minute in total, whatever their source.
    pub mint_per_minute: u32,
    /// Allocations with minted credentials: per client network (never above
    /// `policy.max_allocations_per_user`) and in total.
    pub mint_allocations_per_client: usize,
    pub mint_allocations: usize,
    /// WebSockets open at once in total.
    pub max_websockets: usize,
    /// HTTP connections (WebSockets included) open at once, in total and per client IP
    /// (IPv6: per /64).
    pub max_http_connections: usize,
    pub max_http_connections_per_ip: usize,
    /// A request's headers must arrive within this (also the keep-alive idle limit).
    pub header_timeout: Duration,
    /// An HTTP connection (not yet a WebSocket) with no bytes either way for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// HTTP connections are refused while fewer than this many descriptors are left under
    /// RLIMIT_NOFILE (capped at half the limit), so relays and TURN connections keep theirs.
    pub fd_reserve: usize,
}

/// `[signaling] mint`: who may get TURN credentials from `/api/ice-servers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mint {
    /// Anyone who can reach the listener (the development profile).
    Open,
    /// Requests with `Authorization: Bearer <mint_token>`.
    Token,
    /// Nobody: `/api/ice-servers` answers 403 (the default of config files).
    Off,
}

/// Limits of TCP and TLS client connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Streams {
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// The first complete STUN/ChannelData frame must arrive within this.
    pub first_frame_timeout: Duration,
    /// A connection without an allocation is closed after this long without a frame.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Bytes queued for a client that is not reading; more close the connection.
    pub write_queue_bytes: usize,
    /// A write to a client that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
}

/// Limits of DTLS client sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dtls {
    /// A DTLS handshake (from the first ClientHello with a valid cookie) must finish within this.
    pub handshake_timeout: Duration,
    /// A session is dropped (and its allocation freed) after this long without a datagram.
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    /// Sessions per client IPv4 address or IPv6 /64.
    pub max_sessions_per_ip: usize,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listen {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    /// DTLS over UDP (RFC 7350), the `[tls]` certificate (an ECDSA one).
    pub dtls: Vec<SocketAddr>,
}

/// PEM certificate chain and key for TLS listeners. Without it, the development profile
/// generates a self-signed certificate; any config file with TLS listeners must set it.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Automatic certificates (RFC 8555) with the TLS-ALPN-01 challenge (RFC 8737) answered on
/// the TLS listeners; the ACME CA must reach one of them on port 443 (or the port it is
/// configured to validate on).
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    /// DNS names on the certificate (and validated).
    pub domains: Vec<String>,
    /// e.g. "mailto:ops@example.org".
    pub contact: Option<String>,
    /// The ACME directory URL (https).
    pub directory: String,
    /// Where the account key, certificate and key are kept (mode 0700).
    pub state_dir: PathBuf,
    /// A PEM root certificate the directory's HTTPS is verified with instead of the system
    /// roots: for testing (pebble) or private ACME CAs.
    pub directory_ca: Option<PathBuf>,
    /// Renew when the certificate has less than this left.
    pub renew_before: Duration,
}

impl Acme {
    pub const DEFAULT_STATE_DIR: &'static str = "/var/lib/turnd/acme";
    pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relay {
    /// Address relay sockets bind for IPv4 allocations; `None`: IPv4 relays unavailable (440).
    pub ipv4: Option<Ipv4Addr>,
    /// Address relay sockets bind for IPv6 allocations; `None`: IPv6 relays unavailable (440).
    pub ipv6: Option<Ipv6Addr>,
    pub ports: PortRange,
    pub external: Vec<ExternalMapping>,
    /// SO_RCVBUF and SO_SNDBUF of every relay socket, in bytes (the kernel caps them at
    /// net.core.rmem_max / wmem_max).
    pub socket_buffer: usize,
    /// Send runs of equal-size datagrams to one destination (the last may be shorter) as one UDP GSO message.
    pub gso: bool,
    /// How long a shard's UDP loop waits after a small turn at high packet rates, so that its
    /// next system calls carry more datagrams (`net::coalesce`); zero: never.
    pub coalesce: Duration,
    /// RFC 6062 TCP relay allocations (REQUESTED-TRANSPORT TCP over TCP/TLS clients).
    pub tcp: bool,
    /// Peer connections per TCP allocation (connecting, unbound or bound).
    pub tcp_max_connections: usize,
}

impl Relay {
    /// The address advertised to clients for a relay bound at `bound`.
    pub fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        for m in &self.external {
            if m.private == bound.ip() {
                return SocketAddr::new(m.public, bound.port());
            }
        }
        bound
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// A tracing filter directive such as "info" or "turnd=debug"; RUST_LOG wins when set.
    pub level: String,
    pub format: LogFormat,
    /// Replace client addresses and usernames with a short keyed hash in logs.
    pub redact: bool,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// The secure defaults every config file starts from.
    pub fn secure_default() -> Self {
        Config {
            profile: Profile::Production,
            source: None,
            realm: DEFAULT_REALM.to_string(),
            workers: default_workers(),
            software: None,
            listen: Listen {
                udp: vec![SocketAddr::from(([0, 0, 0, 0], 3478))],
                tcp: vec![],
                tls: vec![],
                dtls: vec![],
            },
            tls: None,
            acme: None,
            relay: Relay {
                ipv4: Some(Ipv4Addr::UNSPECIFIED),
                ipv6: None,
                ports: PortRange {
                    min: 49152,
                    max: 65535,
                },
                external: vec![],
                socket_buffer: 2 << 20,
                gso: true,
                coalesce: DEFAULT_COALESCE,
                tcp: false,
                tcp_max_connections: 16,
            },
            auth: Auth::default(),
            policy: Policy::default(),
            lifetimes: Lifetimes::default(),
            streams: Streams {
                handshake_timeout: Duration::from_secs(10),
                first_frame_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_connections: 10_000,
                max_connections_per_ip: 64,
                write_queue_bytes: 256 * 1024,
                write_timeout: Duration::from_secs(10),
            },
            dtls: Dtls {
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(600),
                max_sessions: 10_000,
                max_sessions_per_ip: 64,
            },
            signaling: Signaling {
                listen: None,
                tls: false,
                public_host: None,
                credential_ttl: Duration::from_secs(3600),
                allowed_origins: vec![],
                max_connections_per_ip: 16,
                max_message_bytes: 64 * 1024,
                ice_requests_per_minute: 60,
                mint: Mint::Off,
                mint_token: None,
                mint_secret: None,
                mint_hmac: turnd_proto::auth::RestHmac::Sha1,
                mint_per_minute: 600,
                mint_allocations_per_client: 10,
                mint_allocations: 1000,
                max_websockets: 4096,
                max_http_connections: 8192,
                max_http_connections_per_ip: 64,
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                fd_reserve: 1024,
            },
            admin: Admin {
                listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9641))),
                token: None,
                ready_probe: false,
                ready_probe_interval: Duration::from_secs(10),
            },
            server: Server {
                drain_timeout: Duration::ZERO,
            },
            cluster: None,
            webhook: Webhook::default(),
            fastpath: Fastpath::default(),
            log: Log {
                level: "info".into(),
                format: LogFormat::Human,
                redact: false,
            },
        }
    }

    /// The built-in development profile: everything on loopback, usable on a fresh machine.
    pub fn development() -> Self {
        let mut c = Config::secure_default();
        c.profile = Profile::Development;
        c.listen.udp = vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, 3478)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 3478)),
        ];
        c.listen.tcp = c.listen.udp.clone();
        c.listen.tls = vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, 5349)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 5349)),
        ];
        c.relay.ipv4 = Some(Ipv4Addr::LOCALHOST);
        c.relay.ipv6 = Some(Ipv6Addr::LOCALHOST);
        c.auth.users = vec![StaticUser {
            name: DEV_USER.into(),
            credential: Credential::Password(DEV_PASSWORD.into()),
        }];
        c.auth.secrets = vec![DEV_SECRET.into()];
        c.auth.challenge_budget_per_sec = 1000;
        c.auth.failure_budget_per_sec = 1000;
        c.policy.allow_peers = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        c.signaling.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)));
        c.signaling.mint = Mint::Open;
        c
    }

    /// A development-style config on port 0 for tests: loopback only, ephemeral ports.
    pub fn for_tests() -> Self {
        let mut c = Config::development();
        c.workers = 2;
        c.listen.udp = vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        ];
        c.listen.tcp = c.listen.udp.clone();
        c.listen.tls = c.listen.udp.clone();
        c.signaling.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        c.admin.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        c.admin.token = Some("test-admin-token".into());
        c
    }
}
