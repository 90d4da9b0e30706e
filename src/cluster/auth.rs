//! Credentials kept in Redis, changed without a reload: TURN REST secrets (the set
//! `turnd:rest-secrets`, every member accepted, so rotation is `SADD` new, wait, `SREM` old)
//! and static users (the hash `turnd:users`: name -> MD5(user:realm:password) as 32 hex
//! digits, what `turnadmin -k` prints; never a plain password). The heartbeat thread reads
//! both and swaps them in here; [`FleetAuth`] asks the configured credentials first and adds
//! these. While Redis is unreachable the last copy read stays in force.

use std::sync::{Arc, RwLock};

use turnd_proto::auth::{Authenticator, Credentials, Lookup};
use turnd_proto::settings::{self, Credential, StaticUser};

/// The sorted secrets and users last installed (to rebuild only on change) and what they
/// built.
type Installed = (Vec<String>, Vec<(String, String)>, Option<Arc<Credentials>>);

/// What was read from Redis, with the parts of `[auth]` REST names need.
pub struct FleetCreds {
    realm: String,
    rest_separator: char,
    rest_max_skew: std::time::Duration,
    current: RwLock<Installed>,
}

impl FleetCreds {
    pub fn new(auth: &settings::Auth, realm: &str) -> Self {
        FleetCreds {
            realm: realm.to_string(),
            rest_separator: auth.rest_separator,
            rest_max_skew: auth.rest_max_skew,
            current: RwLock::new((Vec::new(), Vec::new(), None)),
        }
    }

    /// Install `secrets` and `users` (name, hex key) read from Redis; malformed users are
    /// skipped (counted in the return value, never logged with their value).
    pub fn install(&self, mut secrets: Vec<String>, mut users: Vec<(String, String)>) -> usize {
        secrets.retain(|s| !s.is_empty());
        secrets.sort();
        users.sort();
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.0 == secrets && cur.1 == users {
                return 0;
            }
        }
        let mut bad = 0;
        let statics = users
            .iter()
            .filter_map(|(name, hex_key)| {
                let mut key = [0u8; 16];
                if name.is_empty() || hex::decode_to_slice(hex_key.trim(), &mut key).is_err() {
                    bad += 1;
                    return None;
                }
                Some(StaticUser {
                    name: name.clone(),
                    credential: Credential::Key(key),
                })
            })
            .collect();
        let auth = settings::Auth {
            users: statics,
            secrets: secrets.clone(),
            rest_separator: self.rest_separator,
            rest_max_skew: self.rest_max_skew,
            // The rest (budgets, nonce lifetime, SHA-256 secrets...) is not the fleet's.
            ..Default::default()
        };
        let creds = (!secrets.is_empty() || !users.is_empty())
            .then(|| Arc::new(Credentials::from_config(&auth, &self.realm)));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (secrets, users, creds);
        bad
    }

    fn get(&self) -> Option<Arc<Credentials>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .2
            .clone()
    }

    /// `inner` (the configured credentials) plus these.
    pub fn wrap(self: &Arc<Self>, inner: Arc<dyn Authenticator>) -> Arc<dyn Authenticator> {
        Arc::new(FleetAuth {
            inner,
            fleet: self.clone(),
        })
    }
}

/// The configured credentials, then the fleet's: keys from both are candidates.
struct FleetAuth {
    inner: Arc<dyn Authenticator>,
    fleet: Arc<FleetCreds>,
}

/// The local answer and the fleet's together: every key of either (the local ones first),
/// else expired if either says so, else unknown.
fn merge<K>(local: Lookup<K>, fleet: Lookup<K>) -> Lookup<K> {
    match (local, fleet) {
        (Lookup::Keys(mut a), Lookup::Keys(b)) => {
            a.extend(b);
            Lookup::Keys(a)
        }
        (Lookup::Keys(a), _) | (_, Lookup::Keys(a)) => Lookup::Keys(a),
        (Lookup::Expired, _) | (_, Lookup::Expired) => Lookup::Expired,
        _ => Lookup::Unknown,
    }
}

impl Authenticator for FleetAuth {
    fn lookup(&self, username: &str, realm: &str, unix_now: u64) -> Lookup {
        let local = self.inner.lookup(username, realm, unix_now);
        let Some(fleet) = self.fleet.get() else {
            return local;
        };
        merge(local, fleet.lookup(username, realm, unix_now))
    }

    fn principal<'a>(&self, username: &'a str) -> &'a str {
        self.inner.principal(username)
    }

    fn lookup_sha256(
        &self,
        username: &str,
        realm: &str,
        unix_now: u64,
    ) -> Lookup<turnd_proto::auth::Sha256Key> {
        let local = self.inner.lookup_sha256(username, realm, unix_now);
        let Some(fleet) = self.fleet.get() else {
            return local;
        };
        merge(local, fleet.lookup_sha256(username, realm, unix_now))
    }

    fn permits_client(&self, username: &str, client: std::net::IpAddr) -> bool {
        self.inner.permits_client(username, client)
            && self
                .fleet
                .get()
                .is_none_or(|f| f.permits_client(username, client))
    }

    fn user_of_hash(&self, hash: &[u8], realm: &str) -> Option<String> {
        self.inner
            .user_of_hash(hash, realm)
            .or_else(|| self.fleet.get()?.user_of_hash(hash, realm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnd_proto::auth::{long_term_key, rest_password};

    fn auth() -> settings::Auth {
        settings::Auth {
            users: vec![StaticUser {
                name: "alice".into(),
                credential: Credential::Password("alice-pw".into()),
            }],
            secrets: vec!["local-secret".into()],
            rest_separator: ':',
            rest_max_skew: std::time::Duration::ZERO,
            ..Default::default()
        }
    }

    #[test]
    fn redis_secrets_and_users_add_to_the_configured_ones() {
        let fleet = Arc::new(FleetCreds::new(&auth(), "r"));
        let a = fleet.wrap(Arc::new(Credentials::from_config(&auth(), "r")));
        let name = "2000000000:carol";
        let key = |secret: &[u8]| long_term_key(name, "r", &rest_password(secret, name));
        assert_eq!(
            a.lookup(name, "r", 0),
            Lookup::Keys(vec![key(b"local-secret")])
        );
        assert_eq!(a.lookup("dave", "r", 0), Lookup::Unknown);
        let dave = long_term_key("dave", "r", "dave-pw");
        let bad = fleet.install(
            vec!["fleet-secret".into()],
            vec![
                ("dave".into(), hex::encode(dave)),
                ("eve".into(), "not hex".into()),
            ],
        );
        assert_eq!(bad, 1);
        assert_eq!(
            a.lookup(name, "r", 0),
            Lookup::Keys(vec![key(b"local-secret"), key(b"fleet-secret")])
        );
        assert_eq!(a.lookup("dave", "r", 0), Lookup::Keys(vec![dave]));
        assert_eq!(a.lookup("eve", "r", 0), Lookup::Unknown);
        assert_eq!(a.lookup("1:carol", "r", 10), Lookup::Expired);
        // Rotation: the old fleet secret goes, the new one comes.
        fleet.install(vec!["fleet-secret-2".into()], vec![]);
        assert_eq!(
            a.lookup(name, "r", 0),
            Lookup::Keys(vec![key(b"local-secret"), key(b"fleet-secret-2")])
        );
        assert_eq!(a.lookup("dave", "r", 0), Lookup::Unknown);
    }
}
