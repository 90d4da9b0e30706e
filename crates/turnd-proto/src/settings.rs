//! Plain-data settings of the engine, the authenticator and the peer policy.
//!
//! The daemon's config (`turnd::config`) parses its TOML into these types and keeps them as
//! its sections (`auth`, `policy`, `lifetimes`, `relay.ports`, `relay.external`); the
//! defaults of both profiles live there.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

/// A secret string whose `Debug` output is `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The relay port range, both ends included.
pub struct PortRange {
    /// First port.
    pub min: u16,
    /// Last port.
    pub max: u16,
}

impl PortRange {
    /// How many ports.
    pub fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }
    /// Never empty (`min <= max` is validated).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Is `port` in the range?
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

/// 1:1 NAT mapping: relays bind `private` and advertise `public`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalMapping {
    /// The address advertised to clients.
    pub public: IpAddr,
    /// The address relay sockets bind.
    pub private: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// A static user's credential.
pub enum Credential {
    /// The password.
    Password(String),
    /// MD5(user:realm:password), as `turnadmin -k` prints it.
    Key([u8; 16]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// A user from `[auth] users`.
pub struct StaticUser {
    /// The username.
    pub name: String,
    /// Its credential.
    pub credential: Credential,
}

#[derive(Debug, Clone, PartialEq)]
/// The `[auth]` section: users, REST secrets, nonce lifetime, answer budgets.
pub struct Auth {
    /// Static users.
    pub users: Vec<StaticUser>,
    /// TURN REST shared secrets; any of them is accepted (rotation).
    pub secrets: Vec<String>,
    /// TURN REST shared secrets whose passwords are base64(HMAC-SHA256(secret, username));
    /// accepted next to `secrets` (rotation between kinds too).
    pub secrets_sha256: Vec<String>,
    /// Separator in `expiry<sep>user` REST usernames.
    pub rest_separator: char,
    /// Clock skew tolerated on REST expiry timestamps.
    pub rest_max_skew: Duration,
    /// How long a nonce stays valid before 438.
    pub nonce_lifetime: Duration,
    /// Answers to requests without MESSAGE-INTEGRITY (the first 401, unauthenticated 400/420)
    /// allowed per source IP per second (burst: twice that); more are dropped.
    pub challenge_budget_per_sec: u32,
    /// Answers to requests whose MESSAGE-INTEGRITY, nonce or user failed (401, 438, 400)
    /// allowed per source IP per second (burst: twice that); more are dropped.
    pub failure_budget_per_sec: u32,
    /// RFC 8489 password algorithms offered in PASSWORD-ALGORITHMS, in order. `[Md5]` (the
    /// default) offers nothing: RFC 5389 challenges, no nonce cookie.
    pub password_algorithms: Vec<crate::auth::PasswordAlgorithm>,
    /// Look USERHASH (RFC 8489 §14.4) up for static users; turns the nonce cookie on.
    pub userhash: bool,
    /// Where the admin API keeps revocations (JSON, written atomically); `None`: in memory
    /// only (they survive SIGHUP, not a restart).
    pub revocations_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
/// The `[policy]` section: peer allow/deny lists and quotas.
pub struct Policy {
    /// Peers allowed even when in the deny list.
    pub allow_peers: Vec<IpNet>,
    /// Peers denied in addition to the built-in special-purpose list.
    pub deny_peers: Vec<IpNet>,
    /// Allocations on the whole server.
    pub max_allocations: usize,
    /// Allocations per user.
    pub max_allocations_per_user: usize,
    /// Permissions per allocation.
    pub max_permissions_per_allocation: usize,
    /// Channels per allocation.
    pub max_channels_per_allocation: usize,
    /// Ports held by EVEN-PORT's R bit per user (each also counts as an allocation of the
    /// user's quota); 0 refuses R with 508.
    pub max_reservations_per_user: usize,
    /// Relayed payload bits per second per allocation, each direction separately; more is
    /// dropped. 0: unlimited. (coturn's `--max-bps` is bytes per second.)
    pub max_bps_per_allocation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
/// The `[lifetimes]` section.
pub struct Lifetimes {
    /// Allocation lifetime when the client asks for none (and the minimum).
    pub allocation_default: Duration,
    /// The longest allocation lifetime granted.
    pub allocation_max: Duration,
    /// Permission lifetime (RFC 8656: 300 s).
    pub permission: Duration,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel: Duration,
    /// How long a port reserved with EVEN-PORT's R bit is held (RFC 8656 §7.2: 30 s).
    pub reservation: Duration,
}

/// The secure defaults (both profiles of the daemon's config start from them).
impl Default for Auth {
    fn default() -> Self {
        Auth {
            users: vec![],
            secrets: vec![],
            secrets_sha256: vec![],
            rest_separator: ':',
            rest_max_skew: Duration::from_secs(60),
            nonce_lifetime: Duration::from_secs(600),
            challenge_budget_per_sec: 200,
            failure_budget_per_sec: 200,
            password_algorithms: vec![crate::auth::PasswordAlgorithm::Md5],
            userhash: false,
            revocations_file: None,
        }
    }
}

/// The secure defaults (both profiles of the daemon's config start from them).
impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_peers: vec![],
            deny_peers: vec![],
            max_allocations: 10_000,
            max_allocations_per_user: 100,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            max_reservations_per_user: 2,
            max_bps_per_allocation: 0,
        }
    }
}

/// The secure defaults (both profiles of the daemon's config start from them).
impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            allocation_default: Duration::from_secs(600),
            allocation_max: Duration::from_secs(3600),
            permission: Duration::from_secs(300),
            channel: Duration::from_secs(600),
            reservation: Duration::from_secs(30),
        }
    }
}
