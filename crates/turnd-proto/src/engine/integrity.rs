//! RFC 8489 §9.2 security features on the engine side: the nonce cookie, PASSWORD-ALGORITHMS
//! and the bid-down check (§9.2.4), MESSAGE-INTEGRITY-SHA256 (§14.6, truncated forms
//! included) and USERHASH (§14.4).
//!
//! With the defaults (`password_algorithms = ["md5"]`, `userhash = false`) none of this is
//! on the wire: challenges are byte for byte those of RFC 5389 and the cookie is not issued.
//!
//! Attribute values come from the network: indexing is denied here.

#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY_SHA256, ATTR_PASSWORD_ALGORITHM, ATTR_PASSWORD_ALGORITHMS,
    ATTR_USERNAME, ATTR_USER_HASH,
};
use stun::integrity::MessageIntegrity;
use stun::message::{Message, Setter, MESSAGE_HEADER_SIZE};

use super::wire::{Parsed, Reply};
use super::Engine;
use crate::auth::{Key, Lookup, NonceCheck, Origin, PasswordAlgorithm};

/// The nonce cookie of RFC 8489 §9.2: "obMatJos2" then the security feature set.
pub const NONCE_COOKIE: &str = "obMatJos2";
/// Security feature set bit 0 (RFC 8489 §18.1): password algorithms.
const FEATURE_PASSWORD_ALGORITHMS: u8 = 0x80;
/// Security feature set bit 1: username anonymity (USERHASH).
const FEATURE_USERNAME_ANONYMITY: u8 = 0x40;
/// The nonce domain (see `NonceMint::issue_in`) of nonces that follow the cookie.
const COOKIE_NONCE_DOMAIN: u8 = 1;
/// Shortest MESSAGE-INTEGRITY-SHA256 value (§14.6: at least 16 bytes, a multiple of 4).
pub const MI_SHA256_MIN: usize = 16;
/// Full MESSAGE-INTEGRITY-SHA256 value.
pub const MI_SHA256_MAX: usize = 32;

/// Which RFC 8489 security features the server offers (`[auth] password_algorithms`,
/// `[auth] userhash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFeatures {
    /// Offered in PASSWORD-ALGORITHMS, in this order; never empty.
    pub algorithms: Vec<PasswordAlgorithm>,
    /// Look USERHASH up (static users only: a REST username cannot be recovered from it).
    pub userhash: bool,
}

impl Default for AuthFeatures {
    /// MD5 only, no USERHASH: RFC 5389 behaviour, no nonce cookie.
    fn default() -> Self {
        AuthFeatures {
            algorithms: vec![PasswordAlgorithm::Md5],
            userhash: false,
        }
    }
}

impl AuthFeatures {
    /// Whether the nonce cookie (and with it PASSWORD-ALGORITHMS) is sent: when anything but
    /// MD5 is offered, or USERHASH is on.
    pub fn cookie_on(&self) -> bool {
        self.userhash || self.algorithms != [PasswordAlgorithm::Md5]
    }

    /// "obMatJos2" plus the base64 of the 24-bit security feature set (4 characters).
    pub fn cookie(&self) -> String {
        let mut first = FEATURE_PASSWORD_ALGORITHMS;
        if self.userhash {
            first |= FEATURE_USERNAME_ANONYMITY;
        }
        format!("{NONCE_COOKIE}{}", STANDARD.encode([first, 0, 0]))
    }

    /// The PASSWORD-ALGORITHMS value: each algorithm with an empty parameter list.
    pub fn algorithms_value(&self) -> Vec<u8> {
        self.algorithms
            .iter()
            .flat_map(|a| {
                let [h, l] = a.code().to_be_bytes();
                [h, l, 0, 0]
            })
            .collect()
    }
}

/// A key with the integrity attribute to sign answers with: MESSAGE-INTEGRITY
/// (HMAC-SHA1) or MESSAGE-INTEGRITY-SHA256 of the request's length. `Debug` is redacted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    key: [u8; 32],
    key_len: u8,
    /// 0: MESSAGE-INTEGRITY; else the MESSAGE-INTEGRITY-SHA256 length (16..=32).
    sha256_len: u8,
}

impl Signer {
    /// `key` (16 or 32 bytes; longer keys are cut at 32) with MESSAGE-INTEGRITY, or with
    /// MESSAGE-INTEGRITY-SHA256 of `sha256_len` bytes (clamped to 16..=32, rounded down to 4).
    pub fn new(key: &[u8], sha256_len: Option<usize>) -> Self {
        let mut k = [0u8; 32];
        let n = key.len().min(32);
        for (d, s) in k.iter_mut().zip(key) {
            *d = *s;
        }
        let sha256_len = sha256_len
            .map(|l| l.clamp(MI_SHA256_MIN, MI_SHA256_MAX) & !3)
            .unwrap_or(0);
        Signer {
            key: k,
            key_len: n as u8,
            sha256_len: sha256_len as u8,
        }
    }

    /// The key bytes.
    pub fn key(&self) -> &[u8] {
        self.key
            .get(..usize::from(self.key_len))
            .unwrap_or_default()
    }

    /// Whether answers carry MESSAGE-INTEGRITY-SHA256 (else MESSAGE-INTEGRITY).
    pub fn is_sha256(&self) -> bool {
        self.sha256_len != 0
    }

    /// Append the integrity attribute to `m` (before FINGERPRINT).
    pub fn add_to(&self, m: &mut Message) {
        if self.sha256_len == 0 {
            // Fails only if FINGERPRINT was already added, which we never do before.
            let _ = MessageIntegrity(self.key().to_vec()).add_to(m);
            return;
        }
        let tag_len = usize::from(self.sha256_len);
        // The length field counts the MESSAGE-INTEGRITY-SHA256 attribute (§14.6).
        let length = m.length;
        m.length += (4 + tag_len) as u32;
        m.write_length();
        let tag = hmac_sha256(self.key(), &[&m.raw]);
        m.length = length;
        m.add(
            ATTR_MESSAGE_INTEGRITY_SHA256,
            tag.get(..tag_len).unwrap_or(&tag),
        );
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key", &"<redacted>")
            .field("sha256_len", &self.sha256_len)
            .finish()
    }
}

/// Something answers can be signed with: a [`Signer`], or a 16-byte MD5 key (with
/// MESSAGE-INTEGRITY).
pub trait Signing {
    /// The signer to use.
    fn signer(&self) -> Signer;
}

impl Signing for Signer {
    fn signer(&self) -> Signer {
        *self
    }
}

impl Signing for Key {
    fn signer(&self) -> Signer {
        Signer::new(self.as_bytes(), None)
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // Invariant: HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl Parsed<'_> {
    /// Whether the request carries MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some() || self.integrity_sha256_at.is_some()
    }

    /// Verify MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6) with `key` in constant time; a
    /// truncated value (16..32 bytes, a multiple of 4) is compared with as many leading
    /// bytes of the HMAC.
    pub fn integrity_sha256_matches(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_sha256_at else {
            return false;
        };
        let Some(tag_len) = super::wire::be16(self.raw, at + 2).map(usize::from) else {
            return false;
        };
        let Ok(covered_len) = u16::try_from(at + 4 + tag_len - MESSAGE_HEADER_SIZE) else {
            return false;
        };
        let (Some(typ), Some(body), Some(tag)) = (
            self.raw.get(..2),
            self.raw.get(4..at),
            self.raw.get(at + 4..at + 4 + tag_len),
        ) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            return false;
        };
        mac.update(typ);
        mac.update(&covered_len.to_be_bytes());
        mac.update(body);
        mac.verify_truncated_left(tag).is_ok()
    }

    /// Verify the request's integrity with `key`: MESSAGE-INTEGRITY-SHA256 when present
    /// (the stronger one counts, §9.2.4), else MESSAGE-INTEGRITY. The signer answers use.
    pub fn verify(&self, key: &[u8]) -> Option<Signer> {
        match self.integrity_sha256_at {
            Some(at) => {
                let len = super::wire::be16(self.raw, at + 2).map(usize::from);
                self.integrity_sha256_matches(key)
                    .then(|| Signer::new(key, len))
            }
            None => self.integrity_matches(key).then(|| Signer::new(key, None)),
        }
    }
}

/// Why a request's password algorithm choice is refused (answered 400, §9.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BidDown;

/// Who a request names: its USERNAME, or the user its USERHASH resolves to.
pub(super) enum Named {
    /// A user name to look up.
    User(String),
    /// A USERHASH we know nothing of: answered like an unknown user (no oracle).
    UnknownHash,
}

impl Engine {
    /// A fresh nonce for `client`: behind the cookie when the features are on.
    pub(super) fn issue_nonce(&self, client: SocketAddr, now_secs: u64) -> String {
        let f = &self.cfg.auth_features;
        if f.cookie_on() {
            let inner = self
                .shared
                .nonces
                .issue_in(COOKIE_NONCE_DOMAIN, client, now_secs);
            format!("{}{inner}", f.cookie())
        } else {
            self.shared.nonces.issue(client, now_secs)
        }
    }

    /// A nonce for a challenge that must stay small (the amplification cap): never behind
    /// the cookie, and of another MAC domain, so a cookie nonce stripped of its cookie by an
    /// attacker never checks.
    pub(super) fn issue_plain_nonce(&self, client: SocketAddr, now_secs: u64) -> String {
        self.shared.nonces.issue(client, now_secs)
    }

    /// Check a request's NONCE; `cookie` tells whether it was one behind the cookie.
    pub(super) fn check_nonce(
        &self,
        nonce: &[u8],
        client: SocketAddr,
        now_secs: u64,
    ) -> (NonceCheck, bool) {
        let (n, lifetime) = (&self.shared.nonces, self.cfg.nonce_lifetime.as_secs());
        let f = &self.cfg.auth_features;
        if f.cookie_on() {
            let cookie = f.cookie();
            if let Some(inner) = nonce.strip_prefix(cookie.as_bytes()) {
                return (
                    n.check_in(COOKIE_NONCE_DOMAIN, inner, client, now_secs, lifetime),
                    true,
                );
            }
        }
        (n.check(nonce, client, now_secs, lifetime), false)
    }

    /// PASSWORD-ALGORITHMS for a challenge, when the features are on (the nonce has the
    /// cookie then).
    pub(super) fn add_challenge_features(&self, r: &mut Reply) {
        let f = &self.cfg.auth_features;
        if f.cookie_on() {
            r.add_raw(ATTR_PASSWORD_ALGORITHMS, &f.algorithms_value());
        }
    }

    /// The password algorithm of a request whose nonce was valid (§9.2.4). Behind the
    /// cookie, a request naming an algorithm must repeat PASSWORD-ALGORITHMS exactly as
    /// offered and pick one of them (the bid-down protection); a request naming neither uses
    /// MD5, if offered. Without the cookie (features off, or a small plain challenge): MD5.
    pub(super) fn password_algorithm(
        &self,
        req: &Parsed<'_>,
        cookie: bool,
    ) -> Result<PasswordAlgorithm, BidDown> {
        let offered = &self.cfg.auth_features.algorithms;
        if !cookie {
            return Ok(PasswordAlgorithm::Md5);
        }
        match (
            req.get(ATTR_PASSWORD_ALGORITHMS),
            req.get(ATTR_PASSWORD_ALGORITHM),
        ) {
            (None, None) if offered.contains(&PasswordAlgorithm::Md5) => Ok(PasswordAlgorithm::Md5),
            (Some(list), Some(&[h, l, 0, 0]))
                if list == self.cfg.auth_features.algorithms_value().as_slice() =>
            {
                PasswordAlgorithm::from_code(u16::from_be_bytes([h, l]))
                    .filter(|a| offered.contains(a))
                    .ok_or(BidDown)
            }
            _ => Err(BidDown),
        }
    }

    /// Who the request names: USERNAME, else (with `userhash` on and behind the cookie)
    /// USERHASH. `None`: neither (400).
    pub(super) fn named_user(&self, req: &Parsed<'_>, cookie: bool, realm: &str) -> Option<Named> {
        if let Some(u) = req.text(ATTR_USERNAME) {
            return Some(Named::User(u.to_string()));
        }
        if !(cookie && self.cfg.auth_features.userhash) {
            return None;
        }
        let hash = req.get(ATTR_USER_HASH)?;
        Some(match self.shared.auth.user_of_hash(hash, realm) {
            Some(u) => Named::User(u),
            None => Named::UnknownHash,
        })
    }

    /// The candidate keys for `user` under `alg`; `Unknown` (401, like an unknown user) for
    /// a bound credential used from outside its binding.
    pub(super) fn candidate_keys(
        &self,
        user: &str,
        realm: &str,
        alg: PasswordAlgorithm,
        unix_now: u64,
        from: super::ClientAddr,
    ) -> Lookup<Vec<u8>> {
        let auth = &self.shared.auth;
        if !auth.permits_client(user, from.remote.ip()) {
            return Lookup::Unknown;
        }
        let origin = Origin {
            client: from.remote,
            transport: from.transport.as_str(),
        };
        match alg {
            PasswordAlgorithm::Md5 => map_keys(auth.lookup_from(user, realm, unix_now, origin)),
            PasswordAlgorithm::Sha256 => {
                map_keys(auth.lookup_sha256_from(user, realm, unix_now, origin))
            }
        }
    }
}

fn map_keys<K: AsRef<[u8]>>(l: Lookup<K>) -> Lookup<Vec<u8>> {
    match l {
        Lookup::Keys(k) => Lookup::Keys(k.iter().map(|k| k.as_ref().to_vec()).collect()),
        Lookup::Unknown => Lookup::Unknown,
        Lookup::Expired => Lookup::Expired,
        Lookup::Pending => Lookup::Pending,
    }
}
