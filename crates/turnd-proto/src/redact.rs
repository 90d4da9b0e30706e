//! How client addresses and usernames appear in log lines.
//!
//! Client addresses and usernames are personal data, and usernames are bytes an attacker
//! chose. Log them only through [`Redactor`] (or [`redact_addr`] / [`redact_user`]): when on,
//! each becomes a short keyed hash, stable within one process (so one client's lines can be
//! followed) but not across restarts and not reversible by hashing guesses; when off,
//! usernames are still escaped so they cannot forge log lines. The engine takes the switch
//! from `EngineConfig::redact`; the daemon's `telemetry` sets it from `log.redact`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The per-process key of the redaction hashes, drawn on first use.
fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

/// Shows client addresses and usernames in logs, hashed when redaction is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redactor {
    on: bool,
}

impl Redactor {
    /// Redaction on (`true`) or off.
    pub fn new(on: bool) -> Self {
        Redactor { on }
    }

    /// Is redaction on?
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// A lazily formatted client address, for `tracing` fields: `client = %r.addr(&a)`.
    pub fn addr<'a>(&self, addr: &'a SocketAddr) -> RedactedAddr<'a> {
        RedactedAddr { addr, on: self.on }
    }

    /// A lazily formatted username: `user = %r.user(name)`.
    pub fn user<'a>(&self, name: &'a str) -> RedactedUser<'a> {
        RedactedUser { name, on: self.on }
    }
}

/// See [`Redactor::addr`]. When on: `ip#1a2b3c4d:5000` (the port is kept: it tells the
/// connections of one client apart and identifies no one).
pub struct RedactedAddr<'a> {
    addr: &'a SocketAddr,
    on: bool,
}

impl fmt::Display for RedactedAddr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on {
            write!(
                f,
                "ip#{}:{}",
                short_hash(self.addr.ip().to_string().as_bytes()),
                self.addr.port()
            )
        } else {
            write!(f, "{}", self.addr)
        }
    }
}

/// See [`Redactor::user`]. When on: `user#1a2b3c4d`; when off: the name with control
/// characters, quotes and non-ASCII escaped.
pub struct RedactedUser<'a> {
    name: &'a str,
    on: bool,
}

impl fmt::Display for RedactedUser<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on {
            write!(f, "user#{}", short_hash(self.name.as_bytes()))
        } else {
            write!(f, "{}", self.name.escape_debug())
        }
    }
}

/// First 8 hex digits of HMAC-SHA-256(process key, value).
fn short_hash(value: &[u8]) -> String {
    // Invariant: HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(process_key()).expect("HMAC takes any key length");
    mac.update(value);
    hex::encode(&mac.finalize().into_bytes()[..4])
}

/// A client address for a log line; see [`Redactor::addr`].
pub fn redact_addr(addr: &SocketAddr, on: bool) -> String {
    Redactor::new(on).addr(addr).to_string()
}

/// A username (attacker-chosen bytes) for a log line; see [`Redactor::user`].
pub fn redact_user(name: &str, on: bool) -> String {
    Redactor::new(on).user(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_off_shows_escaped_values() {
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert_eq!(redact_addr(&a, false), "192.0.2.1:5000");
        assert_eq!(redact_user("alice", false), "alice");
        assert_eq!(
            redact_user("evil\n2024 INFO forged", false),
            "evil\\n2024 INFO forged"
        );
        assert_eq!(redact_user("\u{1b}[31m", false), "\\u{1b}[31m");
    }

    #[test]
    fn redaction_on_hashes_stably_within_a_process() {
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:6000".parse().unwrap();
        let ra = redact_addr(&a, true);
        assert!(!ra.contains("192.0.2.1"), "{ra}");
        assert!(ra.starts_with("ip#") && ra.ends_with(":5000"), "{ra}");
        assert_eq!(
            ra.split(':').next(),
            redact_addr(&b, true).split(':').next()
        );
        let u = redact_user("alice", true);
        assert_eq!(u.len(), "user#".len() + 8);
        assert!(!u.contains("alice"));
        assert_eq!(u, redact_user("alice", true));
        assert_ne!(u, redact_user("bob", true));
    }
}
