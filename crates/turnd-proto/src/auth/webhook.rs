//! External authorisation (`[auth] webhook`): the synchronous side. [`WebhookAuth`] wraps the
//! configured credentials; a username they do not know is looked up in [`WebhookCache`], and
//! a miss starts a question through [`WebhookFetch`] (the daemon's HTTP client, which answers
//! with [`WebhookCache::resolved`]) and looks up as [`Lookup::Pending`]: the engine parks the
//! request and runs it again from its timer, so no shard ever waits on the webhook.
//!
//! Fails closed: a timeout, an HTTP error, a malformed answer, a full in-flight set, an
//! over-budget source or an open circuit breaker leave an unknown user unknown (401). A user
//! the webhook allowed keeps working from the cache, and for [`STALE_FOR`] after its entry
//! expired while the webhook cannot answer (stale-while-revalidate, stale-if-error).
//!
//! Bounded: at most `max_entries` cache entries, `max_inflight` questions at once, at most
//! [`PER_SOURCE_INFLIGHT`] of them for one source IP, and [`PER_SOURCE_PER_SEC`] new questions
//! per source IP per second (fixed memory, [`FailureBudget`]). Nothing here logs; `Debug`
//! prints counts, never keys.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Authenticator, FailureBudget, Key, Lookup, Origin, Sha256Key};

/// Questions one source IP may have in flight at once.
pub const PER_SOURCE_INFLIGHT: usize = 4;
/// New questions one source IP may start per second (bursts of twice that).
pub const PER_SOURCE_PER_SEC: u32 = 20;
/// How long a user the webhook allowed keeps working after its entry expired, while the
/// webhook fails or the breaker is open.
pub const STALE_FOR: Duration = Duration::from_secs(600);
/// How long a failed question's answer (refused) stands before the user may be asked again.
pub const FAILED_HOLD: Duration = Duration::from_secs(1);

/// What the webhook said about a user.
#[derive(Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, with the MD5 long-term key and (when the webhook gave a password) the
    /// SHA-256 key.
    Allow {
        /// MD5(username:realm:password).
        md5: Key,
        /// SHA-256(username:realm:password), when known.
        sha256: Option<Sha256Key>,
    },
    /// Refused.
    Deny,
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allow { .. } => f.write_str("Allow(<redacted>)"),
            Verdict::Deny => f.write_str("Deny"),
        }
    }
}

/// How a question ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The webhook answered.
    Answer(Verdict),
    /// Timeout, connection or HTTP error, malformed answer: counts against the breaker.
    Failed,
}

/// One question to the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookQuery {
    /// The USERNAME asked about.
    pub username: String,
    /// The REALM.
    pub realm: String,
    /// The client's address.
    pub client: SocketAddr,
    /// `"udp"`, `"tcp"` or `"tls"`.
    pub transport: &'static str,
}

/// Starts questions; never waits. The daemon's HTTP client implements it.
pub trait WebhookFetch: Send + Sync {
    /// Start asking `q`; answer later with [`WebhookCache::resolved`]. False: could not be
    /// started (queue full, shutting down); the lookup refuses.
    fn start(&self, q: WebhookQuery) -> bool;
}

/// Sizes and times of the cache and the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookLimits {
    /// How long an allow stays fresh.
    pub cache_ttl: Duration,
    /// How long a deny stands.
    pub negative_ttl: Duration,
    /// Cache entries at most (allows and denies together).
    pub max_entries: usize,
    /// Questions in flight at most.
    pub max_inflight: usize,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the open breaker lets no question through.
    pub breaker_cooldown: Duration,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits {
            cache_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            max_entries: 10_000,
            max_inflight: 64,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// Counters and state, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Questions answered allow.
    pub allowed: u64,
    /// Questions answered deny.
    pub denied: u64,
    /// Questions that failed (timeout, error, malformed).
    pub failed: u64,
    /// Lookups refused without asking: breaker open, in-flight caps, source budget, or the
    /// fetcher would not take it.
    pub shed: u64,
    /// Whether the breaker is open now.
    pub breaker_open: bool,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Cache entries now.
    pub entries: usize,
    /// Questions in flight now.
    pub inflight: usize,
}

enum Entry {
    /// Allowed: fresh until `fresh`, usable while the webhook fails until `keep`.
    Allow {
        md5: Key,
        sha256: Option<Sha256Key>,
        fresh: Instant,
        keep: Instant,
    },
    /// Denied (or failed: refused until `until`).
    Refused { until: Instant },
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Username -> source IP of its question.
    inflight: HashMap<String, IpAddr>,
    per_source: HashMap<IpAddr, usize>,
    consecutive_failures: u32,
    /// Open until then; after it, one question goes through (half-open).
    open_until: Option<Instant>,
    /// Half-open: the one question is out.
    probing: bool,
}

/// The webhook's answers, the questions in flight and the breaker, shared by all shards.
pub struct WebhookCache {
    realm: String,
    limits: WebhookLimits,
    fetch: Arc<dyn WebhookFetch>,
    state: Mutex<State>,
    budget: FailureBudget,
    epoch: Instant,
    allowed: AtomicU64,
    denied: AtomicU64,
    failed: AtomicU64,
    shed: AtomicU64,
    breaker_opened: AtomicU64,
}

/// What the cache has for a user right now.
enum Found {
    Keys(Key, Option<Sha256Key>),
    Refused,
    Pending,
}

impl WebhookCache {
    /// An empty cache for `realm` asking through `fetch`.
    pub fn new(realm: &str, limits: WebhookLimits, fetch: Arc<dyn WebhookFetch>) -> Self {
        WebhookCache {
            realm: realm.to_string(),
            limits,
            fetch,
            state: Mutex::new(State::default()),
            budget: FailureBudget::split(0, PER_SOURCE_PER_SEC),
            epoch: Instant::now(),
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            breaker_opened: AtomicU64::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> WebhookLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters and state at `now`.
    pub fn stats_at(&self, now: Instant) -> WebhookStats {
        let s = self.lock();
        WebhookStats {
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            breaker_open: s.open_until.is_some_and(|t| now < t) || s.probing,
            breaker_opened: self.breaker_opened.load(Ordering::Relaxed),
            entries: s.entries.len(),
            inflight: s.inflight.len(),
        }
    }

    /// [`stats_at`](Self::stats_at) now.
    pub fn stats(&self) -> WebhookStats {
        self.stats_at(Instant::now())
    }

    /// What the cache says about `username` from `origin` at `now`; starts a question on a
    /// miss when the breaker, the caps and the source's budget allow.
    fn find(&self, now: Instant, username: &str, realm: &str, origin: Origin) -> Found {
        if realm != self.realm || username.is_empty() {
            return Found::Refused;
        }
        let mut s = self.lock();
        let stale = match s.entries.get(username) {
            Some(Entry::Allow {
                md5,
                sha256,
                fresh,
                keep,
            }) => {
                if now < *fresh {
                    return Found::Keys(*md5, *sha256);
                }
                (now < *keep).then_some((*md5, *sha256))
            }
            Some(Entry::Refused { until }) if now < *until => return Found::Refused,
            _ => None,
        };
        // A stale allow answers now and is refreshed behind it; a miss waits for the answer.
        let (hit, miss) = match stale {
            Some((md5, sha256)) => (Found::Keys(md5, sha256), Found::Keys(md5, sha256)),
            None => (Found::Pending, Found::Refused),
        };
        if s.inflight.contains_key(username) {
            return hit;
        }
        if !self.may_ask(&mut s, now, origin.client.ip()) {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return miss;
        }
        let q = WebhookQuery {
            username: username.to_string(),
            realm: realm.to_string(),
            client: origin.client,
            transport: origin.transport,
        };
        let ip = origin.client.ip();
        s.inflight.insert(username.to_string(), ip);
        *s.per_source.entry(ip).or_insert(0) += 1;
        drop(s);
        if self.fetch.start(q) {
            return hit;
        }
        let mut s = self.lock();
        Self::forget(&mut s, username);
        if s.probing {
            s.probing = false;
        }
        self.shed.fetch_add(1, Ordering::Relaxed);
        miss
    }

    /// Whether a new question may go out now from `ip` (and, half-open, marks it the probe).
    fn may_ask(&self, s: &mut State, now: Instant, ip: IpAddr) -> bool {
        match s.open_until {
            Some(t) if now < t => return false,
            Some(_) if s.probing => return false,
            _ => {}
        }
        if s.inflight.len() >= self.limits.max_inflight
            || s.per_source.get(&ip).copied().unwrap_or(0) >= PER_SOURCE_INFLIGHT
        {
            return false;
        }
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if !self.budget.try_failure(ip, ms) {
            return false;
        }
        if s.open_until.is_some() {
            s.probing = true;
        }
        true
    }

    fn forget(s: &mut State, username: &str) {
        if let Some(ip) = s.inflight.remove(username) {
            if let Some(n) = s.per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    s.per_source.remove(&ip);
                }
            }
        }
    }

    /// The answer to a question started by [`WebhookFetch::start`], at `now`.
    pub fn resolved(&self, now: Instant, q: &WebhookQuery, outcome: WebhookOutcome) {
        let mut s = self.lock();
        Self::forget(&mut s, &q.username);
        let entry = match outcome {
            WebhookOutcome::Answer(v) => {
                s.consecutive_failures = 0;
                s.open_until = None;
                s.probing = false;
                match v {
                    Verdict::Allow { md5, sha256 } => {
                        self.allowed.fetch_add(1, Ordering::Relaxed);
                        let fresh = now + self.limits.cache_ttl;
                        Entry::Allow {
                            md5,
                            sha256,
                            fresh,
                            keep: fresh + STALE_FOR,
                        }
                    }
                    Verdict::Deny => {
                        self.denied.fetch_add(1, Ordering::Relaxed);
                        Entry::Refused {
                            until: now + self.limits.negative_ttl,
                        }
                    }
                }
            }
            WebhookOutcome::Failed => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                if s.probing || s.consecutive_failures >= self.limits.breaker_failures.max(1) {
                    if s.open_until.is_none_or(|t| now >= t) {
                        self.breaker_opened.fetch_add(1, Ordering::Relaxed);
                    }
                    s.open_until = Some(now + self.limits.breaker_cooldown);
                    s.probing = false;
                }
                match s.entries.get_mut(&q.username) {
                    // A stale allow keeps serving (until `keep`); asked again after the hold.
                    Some(Entry::Allow { fresh, keep, .. }) if now < *keep => {
                        *fresh = (now + FAILED_HOLD).min(*keep);
                        return;
                    }
                    _ => Entry::Refused {
                        until: now + FAILED_HOLD,
                    },
                }
            }
        };
        self.insert(&mut s, now, q.username.clone(), entry);
    }

    /// Insert within `max_entries`: expired entries go first, then any one.
    fn insert(&self, s: &mut State, now: Instant, username: String, entry: Entry) {
        let cap = self.limits.max_entries.max(1);
        if !s.entries.contains_key(&username) && s.entries.len() >= cap {
            s.entries.retain(|_, e| match e {
                Entry::Allow { keep, .. } => now < *keep,
                Entry::Refused { until } => now < *until,
            });
            while s.entries.len() >= cap {
                // Denials are cheaper to lose than allows.
                let victim = s
                    .entries
                    .iter()
                    .find(|(_, e)| matches!(e, Entry::Refused { .. }))
                    .or_else(|| s.entries.iter().next())
                    .map(|(k, _)| k.clone());
                match victim {
                    Some(k) => s.entries.remove(&k),
                    None => break,
                };
            }
        }
        s.entries.insert(username, entry);
    }

    /// The MD5 lookup at `now`.
    pub fn lookup_at(&self, now: Instant, username: &str, realm: &str, origin: Origin) -> Lookup {
        match self.find(now, username, realm, origin) {
            Found::Keys(k, _) => Lookup::Keys(vec![k]),
            Found::Refused => Lookup::Unknown,
            Found::Pending => Lookup::Pending,
        }
    }

    /// The SHA-256 lookup at `now` (`Unknown` for a user the webhook gave only an MD5 key).
    pub fn lookup_sha256_at(
        &self,
        now: Instant,
        username: &str,
        realm: &str,
        origin: Origin,
    ) -> Lookup<Sha256Key> {
        match self.find(now, username, realm, origin) {
            Found::Keys(_, Some(k)) => Lookup::Keys(vec![k]),
            Found::Keys(_, None) | Found::Refused => Lookup::Unknown,
            Found::Pending => Lookup::Pending,
        }
    }
}

impl std::fmt::Debug for WebhookCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCache")
            .field("realm", &self.realm)
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The configured credentials first, then the webhook for names they do not know.
pub struct WebhookAuth {
    inner: Arc<dyn Authenticator>,
    cache: Arc<WebhookCache>,
}

impl WebhookAuth {
    /// `inner`, then `cache`.
    pub fn new(inner: Arc<dyn Authenticator>, cache: Arc<WebhookCache>) -> Self {
        WebhookAuth { inner, cache }
    }
}

/// A lookup without an origin (not the engine's): asked as from nowhere, so still bounded.
const NO_ORIGIN: Origin = Origin {
    client: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
    transport: "none",
};

impl Authenticator for WebhookAuth {
    fn lookup(&self, username: &str, realm: &str, unix_now: u64) -> Lookup {
        self.lookup_from(username, realm, unix_now, NO_ORIGIN)
    }

    fn lookup_sha256(&self, username: &str, realm: &str, unix_now: u64) -> Lookup<Sha256Key> {
        self.lookup_sha256_from(username, realm, unix_now, NO_ORIGIN)
    }

    fn lookup_from(&self, username: &str, realm: &str, unix_now: u64, origin: Origin) -> Lookup {
        match self.inner.lookup_from(username, realm, unix_now, origin) {
            Lookup::Unknown => self
                .cache
                .lookup_at(Instant::now(), username, realm, origin),
            known => known,
        }
    }

    fn lookup_sha256_from(
        &self,
        username: &str,
        realm: &str,
        unix_now: u64,
        origin: Origin,
    ) -> Lookup<Sha256Key> {
        // A name the configured credentials know (with either algorithm) is theirs alone.
        match self
            .inner
            .lookup_sha256_from(username, realm, unix_now, origin)
        {
            Lookup::Unknown if self.inner.lookup(username, realm, unix_now) == Lookup::Unknown => {
                self.cache
                    .lookup_sha256_at(Instant::now(), username, realm, origin)
            }
            known => known,
        }
    }

    fn principal<'a>(&self, username: &'a str) -> &'a str {
        self.inner.principal(username)
    }

    fn permits_client(&self, username: &str, client: IpAddr) -> bool {
        self.inner.permits_client(username, client)
    }

    fn user_of_hash(&self, hash: &[u8], realm: &str) -> Option<String> {
        self.inner.user_of_hash(hash, realm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{long_term_key, sha256_key, Credentials};
    use crate::settings;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<WebhookQuery>>, std::sync::atomic::AtomicBool);

    impl WebhookFetch for Recorder {
        fn start(&self, q: WebhookQuery) -> bool {
            if self.1.load(Ordering::Relaxed) {
                return false;
            }
            self.0.lock().unwrap().push(q);
            true
        }
    }

    fn origin(last: u8) -> Origin {
        Origin {
            client: SocketAddr::from(([192, 0, 2, last], 5000)),
            transport: "udp",
        }
    }

    fn setup(limits: WebhookLimits) -> (Arc<Recorder>, Arc<WebhookCache>, WebhookAuth) {
        let rec = Arc::new(Recorder::default());
        let cache = Arc::new(WebhookCache::new("r", limits, rec.clone()));
        let users = settings::Auth {
            users: vec![settings::StaticUser {
                name: "static".into(),
                credential: settings::Credential::Password("pw".into()),
            }],
            ..Default::default()
        };
        let inner = Arc::new(Credentials::from_config(&users, "r"));
        let auth = WebhookAuth::new(inner, cache.clone());
        (rec, cache, auth)
    }

    fn allow(user: &str) -> WebhookOutcome {
        WebhookOutcome::Answer(Verdict::Allow {
            md5: long_term_key(user, "r", "pw"),
            sha256: sha256_key(user, "r", "pw"),
        })
    }

    #[test]
    fn a_miss_is_pending_once_then_the_answer_is_cached() {
        let (rec, cache, auth) = setup(WebhookLimits::default());
        let t0 = Instant::now();
        assert_eq!(
            auth.lookup_from("static", "r", 0, origin(1)),
            Lookup::Keys(vec![long_term_key("static", "r", "pw")]),
            "configured users never reach the webhook"
        );
        assert_eq!(
            cache.lookup_at(t0, "alice", "r", origin(1)),
            Lookup::Pending
        );
        assert_eq!(
            cache.lookup_at(t0, "alice", "r", origin(1)),
            Lookup::Pending
        );
        assert_eq!(rec.0.lock().unwrap().len(), 1, "one question per user");
        let q = rec.0.lock().unwrap()[0].clone();
        assert_eq!((q.username.as_str(), q.transport), ("alice", "udp"));
        cache.resolved(t0, &q, allow("alice"));
        let key = long_term_key("alice", "r", "pw");
        assert_eq!(
            cache.lookup_at(t0, "alice", "r", origin(1)),
            Lookup::Keys(vec![key])
        );
        assert!(matches!(
            cache.lookup_sha256_at(t0, "alice", "r", origin(1)),
            Lookup::Keys(_)
        ));
        assert_eq!(
            cache.lookup_at(t0, "alice", "other", origin(1)),
            Lookup::Unknown
        );
        // Past the TTL the stale key still answers while it is asked again.
        let later = t0 + Duration::from_secs(301);
        assert_eq!(
            cache.lookup_at(later, "alice", "r", origin(1)),
            Lookup::Keys(vec![key])
        );
        assert_eq!(rec.0.lock().unwrap().len(), 2);
        let q = rec.0.lock().unwrap()[1].clone();
        cache.resolved(later, &q, WebhookOutcome::Answer(Verdict::Deny));
        assert_eq!(
            cache.lookup_at(later, "alice", "r", origin(1)),
            Lookup::Unknown
        );
        let s = cache.stats_at(later);
        assert_eq!((s.allowed, s.denied, s.inflight), (1, 1, 0));
    }

    #[test]
    fn denial_and_failure_refuse_until_their_time() {
        let (rec, cache, _) = setup(WebhookLimits::default());
        let t0 = Instant::now();
        cache.lookup_at(t0, "bob", "r", origin(1));
        let q = rec.0.lock().unwrap()[0].clone();
        cache.resolved(t0, &q, WebhookOutcome::Answer(Verdict::Deny));
        assert_eq!(cache.lookup_at(t0, "bob", "r", origin(1)), Lookup::Unknown);
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(cache.lookup_at(t1, "bob", "r", origin(1)), Lookup::Pending);
        let q = rec.0.lock().unwrap()[1].clone();
        cache.resolved(t1, &q, WebhookOutcome::Failed);
        assert_eq!(cache.lookup_at(t1, "bob", "r", origin(1)), Lookup::Unknown);
        assert_eq!(
            cache.lookup_at(t1 + FAILED_HOLD, "bob", "r", origin(1)),
            Lookup::Pending
        );
    }

    #[test]
    fn breaker_opens_after_failures_keeps_cached_users_and_recovers() {
        let limits = WebhookLimits {
            breaker_failures: 3,
            ..Default::default()
        };
        let (rec, cache, _) = setup(limits);
        let t0 = Instant::now();
        cache.lookup_at(t0, "known", "r", origin(9));
        let q = rec.0.lock().unwrap()[0].clone();
        cache.resolved(t0, &q, allow("known"));
        for i in 0..3 {
            let name = format!("u{i}");
            assert_eq!(cache.lookup_at(t0, &name, "r", origin(1)), Lookup::Pending);
            let q = rec.0.lock().unwrap().last().unwrap().clone();
            cache.resolved(t0, &q, WebhookOutcome::Failed);
        }
        assert!(cache.stats_at(t0).breaker_open);
        let asked = rec.0.lock().unwrap().len();
        assert_eq!(cache.lookup_at(t0, "new", "r", origin(2)), Lookup::Unknown);
        assert_eq!(rec.0.lock().unwrap().len(), asked, "open: nobody is asked");
        assert!(matches!(
            cache.lookup_at(t0, "known", "r", origin(9)),
            Lookup::Keys(_)
        ));
        // After the cool-down one question goes through; a failure opens it again.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(cache.lookup_at(t1, "new", "r", origin(2)), Lookup::Pending);
        assert_eq!(
            cache.lookup_at(t1, "other", "r", origin(3)),
            Lookup::Unknown
        );
        let q = rec.0.lock().unwrap().last().unwrap().clone();
        cache.resolved(t1, &q, WebhookOutcome::Failed);
        assert!(cache.stats_at(t1).breaker_open);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(
            cache.lookup_at(t2, "other", "r", origin(3)),
            Lookup::Pending
        );
        let q = rec.0.lock().unwrap().last().unwrap().clone();
        cache.resolved(t2, &q, allow("other"));
        assert!(!cache.stats_at(t2).breaker_open);
        assert_eq!(cache.stats_at(t2).breaker_opened, 2);
        assert_eq!(
            cache.lookup_at(t2, "again", "r", origin(4)),
            Lookup::Pending
        );
    }

    #[test]
    fn random_names_are_bounded_per_source_and_overall() {
        let limits = WebhookLimits {
            max_inflight: 8,
            max_entries: 16,
            ..Default::default()
        };
        let (rec, cache, _) = setup(limits);
        let t0 = Instant::now();
        for i in 0..1000 {
            cache.lookup_at(t0, &format!("rnd{i}"), "r", origin(1));
        }
        assert_eq!(rec.0.lock().unwrap().len(), PER_SOURCE_INFLIGHT);
        for src in 2..50 {
            cache.lookup_at(t0, &format!("x{src}"), "r", origin(src));
        }
        assert_eq!(rec.0.lock().unwrap().len(), 8, "global in-flight cap");
        // Answering them all (denials) and asking more never grows past max_entries.
        for round in 0..20u32 {
            let qs: Vec<_> = rec.0.lock().unwrap().drain(..).collect();
            for q in &qs {
                cache.resolved(t0, q, WebhookOutcome::Answer(Verdict::Deny));
            }
            for src in 0..20u8 {
                let t = t0 + Duration::from_millis(u64::from(round) * 1000);
                cache.lookup_at(t, &format!("r{round}-{src}"), "r", origin(100 + src));
            }
            assert!(cache.stats_at(t0).entries <= 16);
        }
        // One source's budget: at most 2 * PER_SOURCE_PER_SEC questions in a burst.
        let (rec, cache, _) = setup(WebhookLimits::default());
        for i in 0..1000 {
            cache.lookup_at(t0, &format!("b{i}"), "r", origin(7));
            let qs: Vec<_> = rec.0.lock().unwrap().iter().cloned().collect();
            for q in qs.iter().filter(|q| q.username == format!("b{i}")) {
                cache.resolved(t0, q, WebhookOutcome::Answer(Verdict::Deny));
            }
        }
        assert!(rec.0.lock().unwrap().len() <= 2 * PER_SOURCE_PER_SEC as usize);
    }

    #[test]
    fn a_fetcher_that_refuses_refuses_the_user() {
        let (rec, cache, _) = setup(WebhookLimits::default());
        rec.1.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        assert_eq!(
            cache.lookup_at(t0, "carol", "r", origin(1)),
            Lookup::Unknown
        );
        assert_eq!(cache.stats_at(t0).inflight, 0);
        assert_eq!(cache.stats_at(t0).shed, 1);
    }

    #[test]
    fn debug_prints_no_keys() {
        let v = Verdict::Allow {
            md5: Key::new([0xab; 16]),
            sha256: None,
        };
        assert_eq!(format!("{v:?}"), "Allow(<redacted>)");
    }
}
