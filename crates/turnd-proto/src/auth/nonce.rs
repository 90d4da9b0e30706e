//! Stateless nonces (RFC 8489 §9.2): owns the nonce format, its MAC and the
//! Valid / Stale / Invalid decision.
//!
//! A nonce is `base64url(timestamp_be64 || mac)` without padding (27 printable characters, no
//! quotes or backslashes), where `mac` is HMAC-SHA256(key, client ip || client port || timestamp)
//! truncated to [`MAC_LEN`] bytes. Checking needs nothing but the key, so a flood of spoofed
//! unauthenticated requests creates no state. A nonce is bound to the address it is issued
//! for: a nonce replayed from another address or port is [`NonceCheck::Invalid`]. (The engine
//! issues UDP nonces for the client's IP and port, stream nonces for its IP with port 0.)

#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::NonceCheck;

/// Bytes of the truncated HMAC-SHA256 carried in a nonce (96 bits).
const MAC_LEN: usize = 12;
/// Bytes of the big-endian timestamp carried in a nonce.
const TS_LEN: usize = 8;
/// Decoded nonce length.
const RAW_LEN: usize = TS_LEN + MAC_LEN;
/// Encoded nonce length: base64 without padding of [`RAW_LEN`] bytes.
const NONCE_LEN: usize = (RAW_LEN * 8).div_ceil(6);
/// Nonces stamped up to this far in the future are accepted (shards' clocks may differ).
const FUTURE_TOLERANCE_SECS: u64 = 5;

/// Issues and checks stateless nonces: an HMAC over the client address and the issue time,
/// under a key shared by all shards.
pub struct NonceMint {
    /// HMAC-SHA256 already keyed; cloned per nonce so the key schedule runs once.
    mac: Hmac<Sha256>,
}

impl NonceMint {
    /// `key` is a per-process random secret shared by all shards.
    pub fn new(key: [u8; 32]) -> Self {
        // Invariant: HMAC accepts keys of any length, so this never fails.
        let mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
        NonceMint { mac }
    }

    /// A fresh nonce for `client` at `now_secs` (seconds on a clock shared by all shards).
    pub fn issue(&self, client: SocketAddr, now_secs: u64) -> String {
        self.issue_in(0, client, now_secs)
    }

    /// A nonce of `domain` (0: plain; others MAC the domain too, so a nonce of one domain
    /// never checks as another's: the RFC 8489 nonce cookie's nonces use domain 1).
    pub fn issue_in(&self, domain: u8, client: SocketAddr, now_secs: u64) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[..TS_LEN].copy_from_slice(&now_secs.to_be_bytes());
        raw[TS_LEN..].copy_from_slice(&self.tag(domain, client, now_secs));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Check a plain (domain 0) nonce.
    pub fn check(
        &self,
        nonce: &[u8],
        client: SocketAddr,
        now_secs: u64,
        lifetime_secs: u64,
    ) -> NonceCheck {
        self.check_in(0, nonce, client, now_secs, lifetime_secs)
    }

    /// Check a nonce of `domain` (see [`NonceMint::issue_in`]).
    pub fn check_in(
        &self,
        domain: u8,
        nonce: &[u8],
        client: SocketAddr,
        now_secs: u64,
        lifetime_secs: u64,
    ) -> NonceCheck {
        let Some(raw) = decode(nonce) else {
            return NonceCheck::Invalid;
        };
        let (ts_bytes, mac) = raw.split_at(TS_LEN);
        let mut ts = [0u8; TS_LEN];
        ts.copy_from_slice(ts_bytes);
        let ts = u64::from_be_bytes(ts);
        if !bool::from(self.tag(domain, client, ts).ct_eq(mac)) {
            return NonceCheck::Invalid;
        }
        if ts > now_secs.saturating_add(FUTURE_TOLERANCE_SECS) {
            return NonceCheck::Invalid;
        }
        if now_secs.saturating_sub(ts) > lifetime_secs {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    /// The truncated MAC over (domain unless 0, family, ip, port, timestamp).
    fn tag(&self, domain: u8, client: SocketAddr, ts: u64) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        if domain != 0 {
            mac.update(&[0xFF, domain]);
        }
        match client.ip() {
            IpAddr::V4(ip) => {
                mac.update(&[4]);
                mac.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                mac.update(&[6]);
                mac.update(&ip.octets());
            }
        }
        mac.update(&client.port().to_be_bytes());
        mac.update(&ts.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; MAC_LEN];
        // SHA-256 output is 32 bytes, longer than MAC_LEN: zip takes the first MAC_LEN.
        for (t, f) in tag.iter_mut().zip(full.iter()) {
            *t = *f;
        }
        tag
    }
}

impl fmt::Debug for NonceMint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceMint { .. }")
    }
}

/// The raw bytes of a nonce of exactly our shape, or `None`.
fn decode(nonce: &[u8]) -> Option<[u8; RAW_LEN]> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let mut raw = [0u8; RAW_LEN];
    // Rejects non-alphabet bytes and non-zero trailing bits, so each nonce has one spelling.
    let n = URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw).ok()?;
    (n == RAW_LEN).then_some(raw)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const LIFETIME: u64 = 600;

    fn client() -> SocketAddr {
        "192.0.2.10:40000".parse().unwrap()
    }

    fn mint() -> NonceMint {
        NonceMint::new([42u8; 32])
    }

    #[test]
    fn nonce_is_short_printable_and_quote_free() {
        let nonce = mint().issue(client(), NOW);
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(nonce.len() < 64);
        assert!(nonce
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
    }

    #[test]
    fn nonce_valid_within_lifetime() {
        let m = mint();
        let nonce = m.issue(client(), NOW);
        assert_eq!(
            m.check(nonce.as_bytes(), client(), NOW, LIFETIME),
            NonceCheck::Valid
        );
        let at_edge = NOW + LIFETIME;
        assert_eq!(
            m.check(nonce.as_bytes(), client(), at_edge, LIFETIME),
            NonceCheck::Valid
        );
    }

    #[test]
    fn nonce_stale_after_lifetime() {
        let m = mint();
        let nonce = m.issue(client(), NOW);
        let late = NOW + LIFETIME + 1;
        assert_eq!(
            m.check(nonce.as_bytes(), client(), late, LIFETIME),
            NonceCheck::Stale
        );
    }

    #[test]
    fn nonce_from_the_future() {
        let m = mint();
        let nonce = m.issue(client(), NOW + FUTURE_TOLERANCE_SECS);
        assert_eq!(
            m.check(nonce.as_bytes(), client(), NOW, LIFETIME),
            NonceCheck::Valid
        );
        let nonce = m.issue(client(), NOW + FUTURE_TOLERANCE_SECS + 1);
        assert_eq!(
            m.check(nonce.as_bytes(), client(), NOW, LIFETIME),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn nonce_foreign_client_invalid() {
        let m = mint();
        let nonce = m.issue(client(), NOW);
        let other_port: SocketAddr = "192.0.2.10:40001".parse().unwrap();
        let other_ip: SocketAddr = "192.0.2.11:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.10]:40000".parse().unwrap();
        for other in [other_port, other_ip, mapped] {
            assert_eq!(
                m.check(nonce.as_bytes(), other, NOW, LIFETIME),
                NonceCheck::Invalid
            );
        }
    }

    #[test]
    fn nonce_from_another_key_invalid() {
        let nonce = NonceMint::new([1u8; 32]).issue(client(), NOW);
        assert_eq!(
            mint().check(nonce.as_bytes(), client(), NOW, LIFETIME),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn nonce_tampered_invalid() {
        let m = mint();
        let nonce = m.issue(client(), NOW).into_bytes();
        for i in 0..nonce.len() {
            let mut bad = nonce.clone();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(
                m.check(&bad, client(), NOW, LIFETIME),
                NonceCheck::Invalid,
                "byte {i}"
            );
        }
        // A re-stamped timestamp with the old MAC: the classic way to extend a nonce.
        let mut raw = decode(&nonce).unwrap();
        raw[..TS_LEN].copy_from_slice(&(NOW + 100).to_be_bytes());
        let restamped = URL_SAFE_NO_PAD.encode(raw);
        let later = NOW + LIFETIME + 50;
        assert_eq!(
            m.check(restamped.as_bytes(), client(), later, LIFETIME),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn nonce_garbage_invalid() {
        let m = mint();
        let nonce = m.issue(client(), NOW);
        let padded = format!("{nonce}=");
        let truncated = &nonce[..nonce.len() - 1];
        let garbage: [&[u8]; 7] = [
            b"",
            b"obMatJos2AAAAA",
            b"\"quoted\"",
            &[0xff; NONCE_LEN],
            &[b'='; NONCE_LEN],
            padded.as_bytes(),
            truncated.as_bytes(),
        ];
        for g in garbage {
            assert_eq!(
                m.check(g, client(), NOW, LIFETIME),
                NonceCheck::Invalid,
                "{g:?}"
            );
        }
    }

    #[test]
    fn nonces_differ_per_client_and_time() {
        let m = mint();
        let a = m.issue(client(), NOW);
        assert_eq!(a, m.issue(client(), NOW));
        assert_ne!(a, m.issue(client(), NOW + 1));
        assert_ne!(a, m.issue("192.0.2.10:40001".parse().unwrap(), NOW));
    }
}
