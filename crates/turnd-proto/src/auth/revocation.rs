//! Revoked credentials: a REST username, or a principal (a static user, or the user part of
//! every REST username minted for it), refused until a given time.
//!
//! [`Revoking`] wraps any [`Authenticator`]: a revoked name looks up as `Unknown`, so it gets
//! the same 401 as a name that never existed (no oracle). The set is immutable; a change
//! makes a new one, handed to the shards like any reload.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Authenticator, Lookup, Sha256Key};

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// One exact username (a TURN REST username, expiry included).
    Username(String),
    /// A principal: a static user, or the user part of TURN REST usernames (`alice` revokes
    /// every `expiry:alice`).
    User(String),
}

/// The revocations in force, each until a unix time (seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    until: HashMap<Revoked, u64>,
}

impl Revocations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revoke `what` until `until_unix` (a later time replaces an earlier one and back).
    pub fn insert(&mut self, what: Revoked, until_unix: u64) {
        self.until.insert(what, until_unix);
    }

    /// Lift a revocation; whether there was one.
    pub fn remove(&mut self, what: &Revoked) -> bool {
        self.until.remove(what).is_some()
    }

    /// Drop revocations that ended before `unix_now`.
    pub fn prune(&mut self, unix_now: u64) {
        self.until.retain(|_, until| *until > unix_now);
    }

    /// Every revocation, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Revoked, u64)> {
        self.until.iter().map(|(k, v)| (k, *v))
    }

    /// How many revocations there are.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    /// Whether `username` (whose principal is `principal`) is revoked at `unix_now`.
    pub fn is_revoked(&self, username: &str, principal: &str, unix_now: u64) -> bool {
        if self.until.is_empty() {
            return false;
        }
        let live = |k: Revoked| self.until.get(&k).is_some_and(|until| *until > unix_now);
        live(Revoked::Username(username.to_string())) || live(Revoked::User(principal.to_string()))
    }
}

/// An [`Authenticator`] that refuses revoked names (as `Unknown`).
pub struct Revoking {
    inner: Arc<dyn Authenticator>,
    set: Arc<Revocations>,
}

impl Revoking {
    /// `inner` minus `set`.
    pub fn new(inner: Arc<dyn Authenticator>, set: Arc<Revocations>) -> Self {
        Revoking { inner, set }
    }

    fn revoked(&self, username: &str, unix_now: u64) -> bool {
        self.set
            .is_revoked(username, self.inner.principal(username), unix_now)
    }
}

impl Authenticator for Revoking {
    fn lookup(&self, username: &str, realm: &str, unix_now: u64) -> Lookup {
        if self.revoked(username, unix_now) {
            return Lookup::Unknown;
        }
        self.inner.lookup(username, realm, unix_now)
    }

    fn principal<'a>(&self, username: &'a str) -> &'a str {
        self.inner.principal(username)
    }

    fn lookup_sha256(&self, username: &str, realm: &str, unix_now: u64) -> Lookup<Sha256Key> {
        if self.revoked(username, unix_now) {
            return Lookup::Unknown;
        }
        self.inner.lookup_sha256(username, realm, unix_now)
    }

    fn lookup_from(
        &self,
        username: &str,
        realm: &str,
        unix_now: u64,
        origin: super::Origin,
    ) -> Lookup {
        if self.revoked(username, unix_now) {
            return Lookup::Unknown;
        }
        self.inner.lookup_from(username, realm, unix_now, origin)
    }

    fn lookup_sha256_from(
        &self,
        username: &str,
        realm: &str,
        unix_now: u64,
        origin: super::Origin,
    ) -> Lookup<Sha256Key> {
        if self.revoked(username, unix_now) {
            return Lookup::Unknown;
        }
        self.inner
            .lookup_sha256_from(username, realm, unix_now, origin)
    }

    fn user_of_hash(&self, hash: &[u8], realm: &str) -> Option<String> {
        // The lookup that follows refuses a revoked name.
        self.inner.user_of_hash(hash, realm)
    }

    fn permits_client(&self, username: &str, client: std::net::IpAddr) -> bool {
        self.inner.permits_client(username, client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{long_term_key, rest_password, Credentials};
    use crate::settings;

    #[test]
    fn revoked_names_look_up_as_unknown_until_their_time() {
        let a = settings::Auth {
            users: vec![settings::StaticUser {
                name: "bob".into(),
                credential: settings::Credential::Password("pw".into()),
            }],
            secrets: vec!["s".into()],
            ..Default::default()
        };
        let creds: Arc<dyn Authenticator> = Arc::new(Credentials::from_config(&a, "r"));
        let mut set = Revocations::new();
        set.insert(Revoked::User("alice".into()), 2_000);
        set.insert(Revoked::Username("1900:carol".into()), 2_000);
        set.insert(Revoked::User("bob".into()), 2_000);
        let auth = Revoking::new(creds.clone(), Arc::new(set));
        for name in ["1900:alice", "1950:alice", "1900:carol", "bob"] {
            assert_eq!(auth.lookup(name, "r", 1_000), Lookup::Unknown, "{name}");
            assert_eq!(auth.lookup_sha256(name, "r", 1_000), Lookup::Unknown);
            // After the revocation's end the name works again.
            assert_ne!(auth.lookup(name, "r", 2_000), Lookup::Unknown, "{name}");
        }
        // Another credential of carol's is not revoked.
        let k = long_term_key("1950:carol", "r", &rest_password(b"s", "1950:carol"));
        assert_eq!(auth.lookup("1950:carol", "r", 1_000), Lookup::Keys(vec![k]));
        assert_eq!(auth.principal("1950:carol"), "carol");
    }

    #[test]
    fn prune_and_remove() {
        let mut set = Revocations::new();
        set.insert(Revoked::User("a".into()), 10);
        set.insert(Revoked::User("b".into()), 30);
        set.prune(20);
        assert_eq!(set.len(), 1);
        assert!(set.remove(&Revoked::User("b".into())));
        assert!(!set.remove(&Revoked::User("b".into())));
        assert!(set.is_empty());
    }
}
