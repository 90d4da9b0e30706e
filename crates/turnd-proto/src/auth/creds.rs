//! Static users and TURN REST credentials: owns the long-term key derivation
//! (RFC 8489 §9.2.2), the TURN REST password derivation
//! (draft-uberti-behave-turn-rest-00 §2.2, as coturn implements it) and [`Credentials`], the
//! [`Authenticator`] built from `[auth]`.
//!
//! Secrets and passwords live only in this module; nothing here logs, and the `Debug` impl of
//! [`Credentials`] prints counts, never key material.

#![deny(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

use super::{
    rest_password_with, sha256_key, userhash, Authenticator, Key, Lookup, RestHmac, Sha256Key,
};
use crate::settings;

/// MD5(user:realm:password).
pub fn long_term_key(user: &str, realm: &str, password: &str) -> Key {
    let mut md5 = Md5::new();
    md5.update(user.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    Key::new(md5.finalize().into())
}

/// TURN REST password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // Invariant: HMAC accepts keys of any length, so this never fails.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// TURN REST username: `expiry<sep>user` (user may be empty: then just `expiry`).
pub fn rest_username(expiry_unix: u64, user: &str, sep: char) -> String {
    if user.is_empty() {
        expiry_unix.to_string()
    } else {
        format!("{expiry_unix}{sep}{user}")
    }
}

/// The user part of every credential `/api/ice-servers` mints starts with this
/// (`<expiry><sep>web:<client prefix>`). Only the mint secret signs such names, and the mint
/// secret signs nothing else, so a minted credential never counts as an operator's user.
pub const MINTED_USER_PREFIX: &str = "web:";

/// The secret minted credentials are signed with: `[signaling] mint_secret_file` when set,
/// else one random secret per process (the same for every caller, across reloads).
pub fn mint_secret(configured: Option<&settings::Redacted>) -> Vec<u8> {
    static EPHEMERAL: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    match configured {
        Some(s) => s.0.as_bytes().to_vec(),
        None => EPHEMERAL.get_or_init(rand::random).to_vec(),
    }
}

/// The authenticator built from `[auth]`.
pub struct Credentials {
    realm: String,
    keys_by_user: HashMap<String, Key>,
    /// SHA-256 keys of the static users configured with a password (RFC 8489 §9.2.2).
    sha256_by_user: HashMap<String, Sha256Key>,
    /// USERHASH -> static username (RFC 8489 §14.4).
    user_by_hash: HashMap<[u8; 32], String>,
    /// TURN REST shared secrets with their HMAC, all accepted (rotation).
    secrets: Vec<(RestHmac, Vec<u8>)>,
    rest_separator: char,
    rest_max_skew_secs: u64,
    /// Signs minted (`web:`) usernames only; see [`MINTED_USER_PREFIX`].
    mint_secret: (RestHmac, Vec<u8>),
}

impl Credentials {
    /// The authenticator for `[auth]`: static users' keys derived once, REST secrets kept for
    /// lookups.
    pub fn from_config(auth: &settings::Auth, realm: &str) -> Self {
        let mut keys_by_user = HashMap::with_capacity(auth.users.len());
        let (mut sha256_by_user, mut user_by_hash) = (HashMap::new(), HashMap::new());
        for user in &auth.users {
            if keys_by_user.contains_key(&user.name) {
                continue;
            }
            if let settings::Credential::Password(password) = &user.credential {
                if let Some(k) = sha256_key(&user.name, realm, password) {
                    sha256_by_user.insert(user.name.clone(), k);
                }
            }
            user_by_hash
                .entry(userhash(&user.name, realm))
                .or_insert_with(|| user.name.clone());
            let key = match &user.credential {
                settings::Credential::Password(password) => {
                    long_term_key(&user.name, realm, password)
                }
                settings::Credential::Key(key) => Key::new(*key),
            };
            // The first definition of a name wins, like the first duplicate attribute.
            keys_by_user.entry(user.name.clone()).or_insert(key);
        }
        Credentials {
            realm: realm.to_string(),
            keys_by_user,
            sha256_by_user,
            user_by_hash,
            secrets: (auth.secrets.iter().map(|s| (RestHmac::Sha1, s)))
                .chain(auth.secrets_sha256.iter().map(|s| (RestHmac::Sha256, s)))
                .map(|(h, s)| (h, s.as_bytes().to_vec()))
                .collect(),
            rest_separator: auth.rest_separator,
            rest_max_skew_secs: auth.rest_max_skew.as_secs(),
            mint_secret: (RestHmac::Sha1, Vec::new()),
        }
    }

    /// Accept credentials minted by `/api/ice-servers` with `secret` (see [`mint_secret`]).
    pub fn with_mint_secret(mut self, secret: Vec<u8>) -> Self {
        self.mint_secret = (RestHmac::Sha1, secret);
        self
    }

    /// The same with the HMAC kind the minted passwords use.
    pub fn with_mint_secret_kind(mut self, hmac: RestHmac, secret: Vec<u8>) -> Self {
        self.mint_secret = (hmac, secret);
        self
    }

    /// The REST path: Unknown unless secrets are configured and the username carries an expiry.
    fn lookup_rest(&self, username: &str, unix_now: u64) -> Lookup {
        self.rest_keys(username, unix_now, |password| {
            Some(long_term_key(username, &self.realm, password))
        })
    }

    /// The REST path with `derive` making each secret's key from its password.
    fn rest_keys<K>(
        &self,
        username: &str,
        unix_now: u64,
        derive: impl Fn(&str) -> Option<K>,
    ) -> Lookup<K> {
        // Expiry and user part come from the name without its binding; the HMAC covers all.
        let (unbound, _) = super::split_binding(username, self.rest_separator);
        let minted = rest_user(unbound, self.rest_separator)
            .is_some_and(|u| u.starts_with(MINTED_USER_PREFIX));
        let secrets = if minted {
            std::slice::from_ref(&self.mint_secret)
        } else {
            &self.secrets[..]
        };
        if secrets.iter().all(|(_, s)| s.is_empty()) {
            return Lookup::Unknown;
        }
        let Some(expiry) = rest_expiry(unbound, self.rest_separator) else {
            return Lookup::Unknown;
        };
        if expiry.saturating_add(self.rest_max_skew_secs) < unix_now {
            return Lookup::Expired;
        }
        let keys = secrets
            .iter()
            .filter_map(|(hmac, secret)| derive(&rest_password_with(*hmac, secret, username)))
            .collect();
        Lookup::Keys(keys)
    }
}

impl Authenticator for Credentials {
    fn lookup(&self, username: &str, realm: &str, unix_now: u64) -> Lookup {
        if realm != self.realm {
            return Lookup::Unknown;
        }
        if let Some(key) = self.keys_by_user.get(username) {
            return Lookup::Keys(vec![*key]);
        }
        self.lookup_rest(username, unix_now)
    }

    fn lookup_sha256(&self, username: &str, realm: &str, unix_now: u64) -> Lookup<Sha256Key> {
        if realm != self.realm {
            return Lookup::Unknown;
        }
        if self.keys_by_user.contains_key(username) {
            // A static user: only those configured with a password have a SHA-256 key.
            return match self.sha256_by_user.get(username) {
                Some(k) => Lookup::Keys(vec![*k]),
                None => Lookup::Unknown,
            };
        }
        self.rest_keys(username, unix_now, |password| {
            sha256_key(username, &self.realm, password)
        })
    }

    fn permits_client(&self, username: &str, client: std::net::IpAddr) -> bool {
        self.keys_by_user.contains_key(username)
            || super::binding_permits(username, self.rest_separator, client)
    }

    fn user_of_hash(&self, hash: &[u8], realm: &str) -> Option<String> {
        if realm != self.realm {
            return None;
        }
        let hash: [u8; 32] = hash.try_into().ok()?;
        self.user_by_hash.get(&hash).cloned()
    }

    fn principal<'a>(&self, username: &'a str) -> &'a str {
        if self.keys_by_user.contains_key(username) {
            return username;
        }
        // A bound name's principal is its user part without the binding.
        let (unbound, _) = super::split_binding(username, self.rest_separator);
        rest_user(unbound, self.rest_separator).unwrap_or(username)
    }
}

/// The user part of a TURN REST username (`expiry<sep>user` or `user<sep>expiry`); `None` for
/// a bare `expiry`, an empty user part, or a name that is not a REST username.
fn rest_user(username: &str, sep: char) -> Option<&str> {
    let (first, rest) = username.split_once(sep)?;
    if parse_decimal(first).is_some() {
        return (!rest.is_empty()).then_some(rest);
    }
    let (user, last) = username.rsplit_once(sep)?;
    (parse_decimal(last).is_some() && !user.is_empty()).then_some(user)
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("static_users", &self.keys_by_user.len())
            .field("rest_secrets", &self.secrets.len())
            .field("rest_separator", &self.rest_separator)
            .field("rest_max_skew_secs", &self.rest_max_skew_secs)
            .field("mint_secret", &!self.mint_secret.1.is_empty())
            .finish()
    }
}

/// The expiry carried by a TURN REST username: `expiry`, `expiry<sep>user` or, failing that,
/// the rarer `user<sep>expiry`.
fn rest_expiry(username: &str, sep: char) -> Option<u64> {
    match username.split_once(sep) {
        None => parse_decimal(username),
        Some((first, _)) => parse_decimal(first).or_else(|| {
            let (_, last) = username.rsplit_once(sep)?;
            parse_decimal(last)
        }),
    }
}

/// Strict unsigned decimal: ASCII digits only (no sign, no spaces), no overflow.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `printf 'user:realm:pass' | md5sum`
    const USER_REALM_PASS_KEY: &str = "8493fbc53ba582fb4c044c456bdc40eb";
    /// `printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64`
    const REST_PASSWORD_SECRET: &str = "d8soP47RbdIKLDUOpnJPVQyq5Ts=";
    /// The same with `-hmac secret2`.
    const REST_PASSWORD_SECRET2: &str = "zRSSW1P3gxN0GUHVejogO/qiNv8=";
    const NOW: u64 = 1_700_000_000;

    fn auth(users: Vec<settings::StaticUser>, secrets: &[&str]) -> settings::Auth {
        settings::Auth {
            users,
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            rest_separator: ':',
            rest_max_skew: Duration::from_secs(60),
            nonce_lifetime: Duration::from_secs(600),
            challenge_budget_per_sec: 50,
            failure_budget_per_sec: 50,
            ..Default::default()
        }
    }

    fn user(name: &str, credential: settings::Credential) -> settings::StaticUser {
        settings::StaticUser {
            name: name.into(),
            credential,
        }
    }

    fn rest_key(username: &str, secret: &str) -> Key {
        long_term_key(
            username,
            "realm",
            &rest_password(secret.as_bytes(), username),
        )
    }

    #[test]
    fn long_term_key_known_answer() {
        assert_eq!(
            hex::encode(long_term_key("user", "realm", "pass")),
            USER_REALM_PASS_KEY
        );
    }

    #[test]
    fn rest_password_known_answer() {
        assert_eq!(
            rest_password(b"secret", "1700000000:alice"),
            REST_PASSWORD_SECRET
        );
        assert_eq!(
            rest_password(b"secret2", "1700000000:alice"),
            REST_PASSWORD_SECRET2
        );
    }

    #[test]
    fn rest_username_forms() {
        assert_eq!(
            rest_username(1_700_000_000, "alice", ':'),
            "1700000000:alice"
        );
        assert_eq!(
            rest_username(1_700_000_000, "alice", '-'),
            "1700000000-alice"
        );
        assert_eq!(rest_username(1_700_000_000, "", ':'), "1700000000");
    }

    #[test]
    fn static_user_with_password() {
        let pass = settings::Credential::Password("pass".into());
        let creds = Credentials::from_config(&auth(vec![user("user", pass)], &[]), "realm");
        let key: Key = hex::decode(USER_REALM_PASS_KEY)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(creds.lookup("user", "realm", NOW), Lookup::Keys(vec![key]));
        assert_eq!(creds.lookup("nobody", "realm", NOW), Lookup::Unknown);
    }

    #[test]
    fn static_user_with_precomputed_key() {
        let key = [7u8; 16];
        let users = vec![user("bob", settings::Credential::Key(key))];
        let creds = Credentials::from_config(&auth(users, &[]), "realm");
        assert_eq!(
            creds.lookup("bob", "realm", NOW),
            Lookup::Keys(vec![Key::new(key)])
        );
    }

    #[test]
    fn realm_mismatch_is_unknown() {
        let pass = settings::Credential::Password("pass".into());
        let creds = Credentials::from_config(&auth(vec![user("user", pass)], &["secret"]), "realm");
        assert_eq!(creds.lookup("user", "other", NOW), Lookup::Unknown);
        assert_eq!(creds.lookup("user", "", NOW), Lookup::Unknown);
        assert_eq!(
            creds.lookup("1700000000:alice", "other", NOW),
            Lookup::Unknown
        );
    }

    #[test]
    fn static_user_wins_over_rest() {
        let key = [9u8; 16];
        let users = vec![user("1700000000:alice", settings::Credential::Key(key))];
        let creds = Credentials::from_config(&auth(users, &["secret"]), "realm");
        assert_eq!(
            creds.lookup("1700000000:alice", "realm", NOW),
            Lookup::Keys(vec![Key::new(key)])
        );
    }

    #[test]
    fn rest_user_accepted_with_known_password() {
        let creds = Credentials::from_config(&auth(vec![], &["secret"]), "realm");
        let expected = long_term_key("1700000000:alice", "realm", REST_PASSWORD_SECRET);
        assert_eq!(
            creds.lookup("1700000000:alice", "realm", NOW),
            Lookup::Keys(vec![expected])
        );
    }

    #[test]
    fn rest_two_secrets_both_accepted() {
        let creds = Credentials::from_config(&auth(vec![], &["secret", "secret2"]), "realm");
        let Lookup::Keys(keys) = creds.lookup("1700000000:alice", "realm", NOW) else {
            panic!("REST username not accepted");
        };
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&long_term_key(
            "1700000000:alice",
            "realm",
            REST_PASSWORD_SECRET
        )));
        assert!(keys.contains(&long_term_key(
            "1700000000:alice",
            "realm",
            REST_PASSWORD_SECRET2
        )));
    }

    #[test]
    fn rest_secrets_of_mixed_kinds_during_rotation() {
        let mut a = auth(vec![], &["old-sha1"]);
        a.secrets_sha256 = vec!["new-sha256".into()];
        let creds = Credentials::from_config(&a, "realm");
        let name = "1700000000:alice";
        let Lookup::Keys(keys) = creds.lookup(name, "realm", NOW) else {
            panic!("REST username not accepted");
        };
        // Python: base64(hmac.new(b"new-sha256", name, "sha256").digest())
        let sha256_password = "nvcbeFgYKaXsjPccb07k1yOOqVmSQtLys5Vbxdxjd64=";
        assert_eq!(
            rest_password_with(RestHmac::Sha256, b"new-sha256", name),
            sha256_password
        );
        assert_eq!(
            keys,
            vec![
                long_term_key(name, "realm", &rest_password(b"old-sha1", name)),
                long_term_key(name, "realm", sha256_password),
            ]
        );
        let Lookup::Keys(k256) = creds.lookup_sha256(name, "realm", NOW) else {
            panic!("no SHA-256 keys");
        };
        assert_eq!(k256.len(), 2);
        assert!(k256.contains(&sha256_key(name, "realm", sha256_password).unwrap()));
    }

    #[test]
    fn minted_credentials_follow_the_mint_hmac() {
        let creds = Credentials::from_config(&auth(vec![], &["op-secret"]), "realm")
            .with_mint_secret_kind(RestHmac::Sha256, b"mint".to_vec());
        let name = "1700000000:web:192.0.2.0/24";
        let good = rest_password_with(RestHmac::Sha256, b"mint", name);
        assert_eq!(
            creds.lookup(name, "realm", NOW),
            Lookup::Keys(vec![long_term_key(name, "realm", &good)])
        );
        // The SHA-1 formula under the mint secret, or the operator's secret, does not sign it.
        let Lookup::Keys(keys) = creds.lookup(name, "realm", NOW) else {
            panic!()
        };
        assert!(!keys.contains(&long_term_key(name, "realm", &rest_password(b"mint", name))));
    }

    #[test]
    fn rest_expired_usernames() {
        let creds = Credentials::from_config(&auth(vec![], &["secret"]), "realm");
        // Skew is 60 s: expiry + 60 == now is still fine, one second later it is not.
        let at_edge = rest_username(NOW - 60, "alice", ':');
        assert!(matches!(
            creds.lookup(&at_edge, "realm", NOW),
            Lookup::Keys(_)
        ));
        let past = rest_username(NOW - 61, "alice", ':');
        assert_eq!(creds.lookup(&past, "realm", NOW), Lookup::Expired);
        assert_eq!(creds.lookup("0:alice", "realm", NOW), Lookup::Expired);
        assert_eq!(creds.lookup("1000", "realm", NOW), Lookup::Expired);
        assert_eq!(creds.lookup("alice:1000", "realm", NOW), Lookup::Expired);
    }

    #[test]
    fn rest_timestamp_only_and_reversed_forms() {
        let creds = Credentials::from_config(&auth(vec![], &["secret"]), "realm");
        let only = rest_username(NOW + 3600, "", ':');
        assert_eq!(
            creds.lookup(&only, "realm", NOW),
            Lookup::Keys(vec![rest_key(&only, "secret")])
        );
        let reversed = format!("alice:{}", NOW + 3600);
        assert_eq!(
            creds.lookup(&reversed, "realm", NOW),
            Lookup::Keys(vec![rest_key(&reversed, "secret")])
        );
        // The user part may itself contain the separator.
        let nested = format!("{}:alice:work", NOW + 3600);
        assert_eq!(
            creds.lookup(&nested, "realm", NOW),
            Lookup::Keys(vec![rest_key(&nested, "secret")])
        );
    }

    #[test]
    fn rest_separator_configurable() {
        let mut a = auth(vec![], &["secret"]);
        a.rest_separator = '-';
        let creds = Credentials::from_config(&a, "realm");
        let dashed = rest_username(NOW + 3600, "alice", '-');
        assert_eq!(
            creds.lookup(&dashed, "realm", NOW),
            Lookup::Keys(vec![rest_key(&dashed, "secret")])
        );
        // With '-' as separator, "expiry:alice" has no numeric part.
        let colon = rest_username(NOW + 3600, "alice", ':');
        assert_eq!(creds.lookup(&colon, "realm", NOW), Lookup::Unknown);
    }

    #[test]
    fn rest_unparsable_usernames_are_unknown() {
        let creds = Credentials::from_config(&auth(vec![], &["secret"]), "realm");
        for name in [
            "",
            "alice",
            ":",
            "alice:",
            ":alice",
            "+1700000000:a",
            " 1700000000:a",
            "1e9:a",
        ] {
            assert_eq!(
                creds.lookup(name, "realm", NOW),
                Lookup::Unknown,
                "{name:?}"
            );
        }
        // More digits than a u64 holds.
        assert_eq!(
            creds.lookup("99999999999999999999999:a", "realm", NOW),
            Lookup::Unknown
        );
    }

    #[test]
    fn rest_needs_a_secret() {
        let creds = Credentials::from_config(&auth(vec![], &[]), "realm");
        let name = rest_username(NOW + 3600, "alice", ':');
        assert_eq!(creds.lookup(&name, "realm", NOW), Lookup::Unknown);
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let pass = settings::Credential::Password("hunter2".into());
        let a = auth(vec![user("user", pass)], &["topsecret"]);
        let shown = format!("{:?}", Credentials::from_config(&a, "realm"));
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret"),
            "{shown}"
        );
    }
}

#[cfg(test)]
mod principal_tests {
    use super::*;
    use crate::settings::{Auth, Credential, StaticUser};

    #[test]
    fn rest_usernames_share_their_user_part_as_principal() {
        let auth = Auth {
            secrets: vec!["s".into()],
            users: vec![StaticUser {
                name: "1700:odd".into(),
                credential: Credential::Password("p".into()),
            }],
            ..Auth::default()
        };
        let c = Credentials::from_config(&auth, "turnd");
        assert_eq!(c.principal("1795303745:alice"), "alice");
        assert_eq!(
            c.principal("1795309999:alice"),
            "alice",
            "another expiry, same user"
        );
        assert_eq!(c.principal("alice:1795303745"), "alice", "user<sep>expiry");
        assert_eq!(c.principal("1795303745"), "1795303745", "bare expiry");
        assert_eq!(c.principal("1795303745:"), "1795303745:", "empty user part");
        assert_eq!(c.principal("bob"), "bob");
        assert_eq!(
            c.principal("1700:odd"),
            "1700:odd",
            "a static user is itself"
        );
    }
}
