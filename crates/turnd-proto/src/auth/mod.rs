//! Long-term credentials (RFC 8489 §9.2): static users, TURN REST shared secrets, stateless
//! nonces and the per-source-IP budget of auth failures.
//!
//! Everything here is synchronous and in memory so the engine can call it on any shard.
//! This module owns the shared vocabulary ([`Key`], [`Lookup`], [`NonceCheck`]); `creds` owns
//! key derivation and lookup, `nonce` the nonce format, `budget` the failure budget.
//! CONTRACT (used by the engine; keep these signatures):
//! - [`Authenticator::lookup`] returns the candidate integrity keys for a username.
//! - [`NonceMint`] issues and checks stateless nonces bound to the client address.
//! - [`FailureBudget`] rate-limits answers to requests that did not authenticate per source
//!   IP (port ignored), fixed memory: plain challenges and failed MESSAGE-INTEGRITY apart.

/// The long-term key: MD5(username ":" realm ":" password). Its `Debug` prints nothing of
/// the key (an `Allocation` derives `Debug` and holds one).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 16]);

impl Key {
    /// A key from its 16 bytes.
    pub const fn new(bytes: [u8; 16]) -> Self {
        Key(bytes)
    }

    /// The key's bytes, for MESSAGE-INTEGRITY.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl From<[u8; 16]> for Key {
    fn from(bytes: [u8; 16]) -> Self {
        Key(bytes)
    }
}

impl TryFrom<Vec<u8>> for Key {
    type Error = Vec<u8>;
    fn try_from(v: Vec<u8>) -> Result<Self, Vec<u8>> {
        <[u8; 16]>::try_from(v).map(Key)
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What the authenticator knows about a username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<K = Key> {
    /// Candidate keys; the request is authentic if its MESSAGE-INTEGRITY matches any of them
    /// (several when several REST secrets are active during rotation).
    Keys(Vec<K>),
    /// No such user (or a REST username that does not parse).
    Unknown,
    /// A TURN REST username whose expiry (plus allowed skew) has passed.
    Expired,
    /// Being asked elsewhere (the webhook), no answer yet: the engine parks the request and
    /// runs it again from its timer (see [`Authenticator::lookup_from`]).
    Pending,
}

/// Who a lookup is for: the client's address and transport (`"udp"`, `"tcp"`, `"tls"`), for
/// an authenticator that asks elsewhere and limits what each source may make it ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client's address (as seen by the server).
    pub client: std::net::SocketAddr,
    /// The client's transport.
    pub transport: &'static str,
}

/// Source of credentials. Implementations must not log secrets or passwords.
pub trait Authenticator: Send + Sync {
    /// `unix_now` is the wall-clock time in seconds, passed in so tests can inject it.
    fn lookup(&self, username: &str, realm: &str, unix_now: u64) -> Lookup;

    /// Who `username` is for quotas, the 441 check, logs and the session API: the user part
    /// of a TURN REST username (every expiry makes a new username for the same user), the
    /// username itself otherwise.
    fn principal<'a>(&self, username: &'a str) -> &'a str {
        username
    }

    /// The SHA-256 keys of `username` (RFC 8489 §9.2.2, PASSWORD-ALGORITHM SHA-256); by
    /// default none, so an authenticator that only knows MD5 keys answers `Unknown`.
    fn lookup_sha256(&self, username: &str, realm: &str, unix_now: u64) -> Lookup<Sha256Key> {
        let _ = (username, realm, unix_now);
        Lookup::Unknown
    }

    /// Whether a client at `client` may use `username`: false for a bound TURN REST username
    /// (`...<sep>ip=<prefix>`) used from outside its binding. By default always.
    fn permits_client(&self, username: &str, client: std::net::IpAddr) -> bool {
        let _ = (username, client);
        true
    }

    /// [`lookup`](Self::lookup) for a request from `origin`: what the engine calls. An
    /// authenticator that asks elsewhere may answer [`Lookup::Pending`] and start the question
    /// (never waiting for it); a wrapper forwards `origin` to what it wraps. By default the
    /// plain lookup.
    fn lookup_from(&self, username: &str, realm: &str, unix_now: u64, origin: Origin) -> Lookup {
        let _ = origin;
        self.lookup(username, realm, unix_now)
    }

    /// [`lookup_sha256`](Self::lookup_sha256) for a request from `origin` (see
    /// [`lookup_from`](Self::lookup_from)).
    fn lookup_sha256_from(
        &self,
        username: &str,
        realm: &str,
        unix_now: u64,
        origin: Origin,
    ) -> Lookup<Sha256Key> {
        let _ = origin;
        self.lookup_sha256(username, realm, unix_now)
    }

    /// The username whose USERHASH (RFC 8489 §14.4) is `hash`, if known; by default none.
    fn user_of_hash(&self, hash: &[u8], realm: &str) -> Option<String> {
        let _ = (hash, realm);
        None
    }
}

/// Result of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours, for this client, and fresh.
    Valid,
    /// Ours, for this client, but older than the nonce lifetime: answer 438.
    Stale,
    /// Not ours, or for another client address: answer 438.
    Invalid,
}

#[cfg(test)]
mod key_tests {
    use super::Key;

    #[test]
    fn key_debug_prints_nothing_of_the_key() {
        let k = Key::new([0xab; 16]);
        let shown = format!("{k:?}");
        assert_eq!(shown, "Key(<redacted>)");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab"));
    }
}

mod binding;
mod budget;
mod creds;
mod nonce;
mod revocation;
mod sha256;
mod webhook;

pub use binding::{bind_username, binding_permits, parse_binding, split_binding};
pub use budget::FailureBudget;
pub use creds::{
    long_term_key, mint_secret, rest_password, rest_username, Credentials, MINTED_USER_PREFIX,
};
pub use nonce::NonceMint;
pub use revocation::{Revocations, Revoked, Revoking};
pub use sha256::{
    opaque_string, rest_password_with, sha256_key, userhash, PasswordAlgorithm, RestHmac, Sha256Key,
};
pub use webhook::{
    Verdict, WebhookAuth, WebhookCache, WebhookFetch, WebhookLimits, WebhookOutcome, WebhookQuery,
    WebhookStats, FAILED_HOLD, PER_SOURCE_INFLIGHT, PER_SOURCE_PER_SEC, STALE_FOR,
};
