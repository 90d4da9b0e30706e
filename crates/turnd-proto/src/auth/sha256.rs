//! RFC 8489 SHA-256 credentials: the password algorithms (§18.5), the SHA-256 long-term key
//! (§9.2.2) and USERHASH (§14.4).
//!
//! Strings are prepared with the OpaqueString profile of RFC 8265 (the `precis-profiles`
//! crate), as §9.2.2 requires for the realm and the password. Nothing here logs.

#![deny(clippy::indexing_slicing)]

use precis_profiles::precis_core::profile::Profile as _;
use precis_profiles::OpaqueString;
use sha2::{Digest, Sha256};

/// The SHA-256 long-term key: SHA-256(username ":" OpaqueString(realm) ":"
/// OpaqueString(password)).
pub type Sha256Key = [u8; 32];

/// A password algorithm of RFC 8489 §18.5 (PASSWORD-ALGORITHM(S) values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// 0x0001: MD5(username ":" realm ":" password), 16 bytes (RFC 5389's key).
    Md5,
    /// 0x0002: SHA-256 of the same string, prepared with OpaqueString, 32 bytes.
    Sha256,
}

impl PasswordAlgorithm {
    /// The IANA number carried on the wire.
    pub fn code(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }

    /// The algorithm for a wire number; `None` for unknown ones.
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            0x0001 => Some(PasswordAlgorithm::Md5),
            0x0002 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }

    /// The config spelling (`"md5"`, `"sha256"`).
    pub fn name(self) -> &'static str {
        match self {
            PasswordAlgorithm::Md5 => "md5",
            PasswordAlgorithm::Sha256 => "sha256",
        }
    }

    /// The algorithm for a config spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "md5" => Some(PasswordAlgorithm::Md5),
            "sha256" => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// OpaqueString (RFC 8265 §4.2) of `s`, enforced (mapped and normalized); `None` when the profile rejects it (empty strings,
/// control characters, unassigned code points).
pub fn opaque_string(s: &str) -> Option<String> {
    OpaqueString::new().enforce(s).ok().map(|c| c.into_owned())
}

/// The SHA-256 long-term key of RFC 8489 §9.2.2; `None` when the realm or the password is
/// not a valid OpaqueString (such a user can only authenticate with MD5).
pub fn sha256_key(username: &str, realm: &str, password: &str) -> Option<Sha256Key> {
    let realm = opaque_string(realm)?;
    let password = opaque_string(password)?;
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    Some(h.finalize().into())
}

/// USERHASH (RFC 8489 §14.4): SHA-256(username ":" OpaqueString(realm)); the realm as given
/// when it is not a valid OpaqueString.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let realm = opaque_string(realm).unwrap_or_else(|| realm.to_string());
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}

/// The HMAC of a TURN REST secret: the password is base64(HMAC-<hash>(secret, username)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RestHmac {
    /// HMAC-SHA1, draft-uberti-behave-turn-rest-00 and coturn (the default).
    #[default]
    Sha1,
    /// HMAC-SHA256.
    Sha256,
}

impl RestHmac {
    /// The config and `turnctl` spelling (`"sha1"`, `"sha256"`).
    pub fn name(self) -> &'static str {
        match self {
            RestHmac::Sha1 => "sha1",
            RestHmac::Sha256 => "sha256",
        }
    }

    /// The kind for a config spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(RestHmac::Sha1),
            "sha256" => Some(RestHmac::Sha256),
            _ => None,
        }
    }
}

/// TURN REST password with `hmac`: base64(HMAC-SHA1 or HMAC-SHA256(secret, username)).
pub fn rest_password_with(hmac: RestHmac, secret: &[u8], username: &str) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    match hmac {
        RestHmac::Sha1 => super::creds::rest_password(secret, username),
        RestHmac::Sha256 => {
            // Invariant: HMAC accepts keys of any length.
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
            mac.update(username.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8489 Appendix B.1: the username, realm and (prepared) password of the vector.
    const USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    const REALM: &str = "example.org";

    #[test]
    fn opaque_string_is_rfc_8265_not_saslprep() {
        // RFC 8489 Appendix B.1 says "The<U+00AD>M<U+00AA>tr<U+2168>" becomes "TheMatrIX"
        // under OpaqueString; that is SASLprep's (RFC 4013) answer. RFC 8265 OpaqueString
        // disallows U+00AD (default ignorable) and only applies NFC, so it rejects it.
        assert_eq!(opaque_string("The\u{00AD}M\u{00AA}tr\u{2168}"), None);
        assert_eq!(
            opaque_string("M\u{00AA}tr\u{2168}").as_deref(),
            Some("M\u{00AA}tr\u{2168}")
        );
        // Non-ASCII spaces map to U+0020, NFC composes.
        assert_eq!(opaque_string("a\u{00A0}b").as_deref(), Some("a b"));
        assert_eq!(opaque_string("e\u{0301}").as_deref(), Some("\u{00E9}"));
        assert_eq!(opaque_string("TheMatrIX").as_deref(), Some("TheMatrIX"));
        assert_eq!(opaque_string(""), None);
    }

    #[test]
    fn userhash_matches_rfc_8489_b1() {
        let expected =
            hex::decode("4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704")
                .unwrap();
        assert_eq!(userhash(USER, REALM).to_vec(), expected);
    }

    #[test]
    fn key_is_sha256_of_prepared_strings() {
        let a = sha256_key(USER, REALM, "TheMatrIX").unwrap();
        assert_eq!(sha256_key(USER, REALM, "The\u{00AD}M"), None);
        assert_eq!(
            sha256_key(USER, REALM, "a\u{00A0}b"),
            sha256_key(USER, REALM, "a b")
        );
        let direct: [u8; 32] = Sha256::digest(format!("{USER}:{REALM}:TheMatrIX")).into();
        assert_eq!(a, direct);
    }

    #[test]
    fn rest_password_sha256_is_base64_hmac_sha256() {
        // Python: base64.b64encode(hmac.new(b"secret", b"1700003600:alice", "sha256").digest())
        assert_eq!(
            rest_password_with(RestHmac::Sha256, b"secret", "1700003600:alice"),
            "mcMSaa7ZOJuc8jGwTcdKyMK7Lal/NBLqea7qr/npVlQ="
        );
        assert_eq!(
            rest_password_with(RestHmac::Sha1, b"secret", "1700003600:alice"),
            super::super::creds::rest_password(b"secret", "1700003600:alice")
        );
    }

    #[test]
    fn algorithm_codes_round_trip() {
        for a in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            assert_eq!(PasswordAlgorithm::from_code(a.code()), Some(a));
            assert_eq!(PasswordAlgorithm::from_name(a.name()), Some(a));
        }
        assert_eq!(PasswordAlgorithm::from_code(3), None);
    }
}
