//! Cross-shard control: every question to the shards goes by message, answered on the
//! shard's own thread, so nothing on the data path is shared or locked.
//!
//! Used by [`crate::Running`] (tests, main) and by the admin API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::health::Health;
use super::relay::Reservations;
use super::shard::{ShardMetrics, ShardRequest};
use super::Stats;
use crate::config::Config;
use crate::tls::ReloadableCert;
use turnd_proto::auth::Credentials;
use turnd_proto::engine::{SessionInfo, Shared};

/// What a reload changed and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings that changed but only take effect after a restart (listeners, relay, realm).
    pub needs_restart: Vec<&'static str>,
}

pub struct Control {
    shards: Vec<UnboundedSender<ShardRequest>>,
    /// The server's own listener addresses (never valid peers).
    own: Vec<SocketAddr>,
    certificate: Option<Arc<ReloadableCert>>,
    current: Mutex<(Config, Shared)>,
    draining: AtomicBool,
    reservations: Arc<Reservations>,
    health: Arc<Health>,
    probe: Option<Arc<crate::probe::Probe>>,
    revocations: Arc<super::revocations::RevocationStore>,
    /// The users and secrets in force, before revocations and the probe are added.
    base_auth: Mutex<Option<Arc<dyn turnd_proto::auth::Authenticator>>>,
    cluster: Option<crate::cluster::Handle>,
    /// `[auth] webhook`: wraps the base authenticator again on reload.
    webhook: Option<Arc<crate::auth_webhook::Webhook>>,
    /// `[fastpath]`: the XDP program's counters for `/metrics`.
    fastpath: crate::fastpath::FastPath,
    /// `listen.dtls`: its certificate is reloaded with the TLS one.
    dtls: Option<Arc<super::dtls::DtlsSetup>>,
}

const ANSWER_WITHIN: Duration = Duration::from_secs(5);

impl Control {
    pub(crate) fn new(
        shards: Vec<UnboundedSender<ShardRequest>>,
        own: Vec<SocketAddr>,
        certificate: Option<Arc<ReloadableCert>>,
        config: Config,
        shared: Shared,
        reservations: Arc<Reservations>,
        health: Arc<Health>,
    ) -> Self {
        Control {
            shards,
            own,
            certificate,
            current: Mutex::new((config, shared)),
            draining: AtomicBool::new(false),
            reservations,
            health,
            probe: None,
            revocations: Arc::new(
                super::revocations::RevocationStore::open(None).expect("no file to read"),
            ),
            base_auth: Mutex::new(None),
            cluster: None,
            webhook: None,
            fastpath: Default::default(),
            dtls: None,
        }
    }

    /// With `listen.dtls`: the setup whose certificate a reload replaces.
    pub(crate) fn with_dtls(mut self, d: Option<Arc<super::dtls::DtlsSetup>>) -> Self {
        self.dtls = d;
        self
    }

    /// With the revocation store the shards' authenticator was built with.
    pub(crate) fn with_revocations(
        mut self,
        store: Arc<super::revocations::RevocationStore>,
        base_auth: Arc<dyn turnd_proto::auth::Authenticator>,
    ) -> Self {
        self.revocations = store;
        self.base_auth = Mutex::new(Some(base_auth));
        self
    }

    /// The revocations in force (JSON for the admin API).
    pub fn revocations(&self) -> serde_json::Value {
        super::revocations::to_json(&self.revocations.current())
    }

    /// Revoke `what` until `until_unix` (stored first; on a write error nothing changes),
    /// hand the shards the new set, and end the live allocations of a revoked principal.
    /// Returns how many allocations ended.
    pub fn revoke(
        &self,
        what: turnd_proto::auth::Revoked,
        until_unix: u64,
        unix_now: u64,
    ) -> anyhow::Result<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.revocations.change(unix_now, |s| {
            s.insert(what.clone(), until_unix);
            true
        })?;
        self.push_auth(&mut current);
        drop(current);
        Ok(match &what {
            turnd_proto::auth::Revoked::User(u) if until_unix > unix_now => self.kill_user(u),
            turnd_proto::auth::Revoked::Username(u) if until_unix > unix_now => self
                .ask_all(|r| ShardRequest::KillUsername(u.clone(), r))
                .into_iter()
                .sum(),
            _ => 0,
        })
    }

    /// Lift a revocation; whether there was one.
    pub fn unrevoke(
        &self,
        what: &turnd_proto::auth::Revoked,
        unix_now: u64,
    ) -> anyhow::Result<bool> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (_, changed) = self.revocations.change(unix_now, |s| s.remove(what))?;
        self.push_auth(&mut current);
        Ok(changed)
    }

    /// Rebuild the authenticator with the current revocations and hand it to every shard.
    fn push_auth(&self, current: &mut (Config, Shared)) {
        let base = self
            .base_auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(base) = base else { return };
        let auth: Arc<dyn turnd_proto::auth::Authenticator> = Arc::new(
            turnd_proto::auth::Revoking::new(base, self.revocations.current()),
        );
        let auth = match &self.probe {
            Some(p) => p.wrap_auth(auth),
            None => auth,
        };
        let shared = Shared {
            auth,
            ..current.1.clone()
        };
        self.tell_all(|| ShardRequest::Reload(shared.clone()));
        current.1 = shared;
    }

    /// With the ready probe, whose credential and policy exception survive reloads.
    pub(crate) fn with_probe(mut self, probe: Option<Arc<crate::probe::Probe>>) -> Self {
        self.probe = probe;
        self
    }

    /// With `[cluster]`: the fleet status `/metrics` reports.
    pub(crate) fn with_cluster(mut self, status: Option<crate::cluster::Handle>) -> Self {
        self.cluster = status;
        self
    }

    /// The fleet status, when `[cluster]` is set.
    pub fn cluster(&self) -> Option<&crate::cluster::Handle> {
        self.cluster.as_ref()
    }

    /// With `[auth] webhook`.
    pub(crate) fn with_webhook(mut self, w: Option<Arc<crate::auth_webhook::Webhook>>) -> Self {
        self.webhook = w;
        self
    }

    /// With `[fastpath] xdp`.
    pub(crate) fn with_fastpath(mut self, f: crate::fastpath::FastPath) -> Self {
        self.fastpath = f;
        self
    }

    /// The kernel fast path (off unless `[fastpath] xdp` attached).
    pub fn fastpath(&self) -> &crate::fastpath::FastPath {
        &self.fastpath
    }

    /// The webhook client, with `[auth] webhook`.
    pub fn webhook(&self) -> Option<&Arc<crate::auth_webhook::Webhook>> {
        self.webhook.as_ref()
    }

    /// The ready probe, when `[admin] ready_probe` is on.
    pub fn probe(&self) -> Option<&Arc<crate::probe::Probe>> {
        self.probe.as_ref()
    }

    /// The configured cap on allocations in total (`policy.max_allocations`, as reloaded).
    pub fn max_allocations(&self) -> usize {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.0.policy.max_allocations
    }

    /// The certificate TLS listeners serve, when there are any.
    pub fn certificate(&self) -> Option<&Arc<ReloadableCert>> {
        self.certificate.as_ref()
    }

    /// Which shards are gone (a thread or a listener task ended).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Ask every shard; shards that do not answer in time are left out.
    fn ask_all<T>(&self, make: impl Fn(Sender<T>) -> ShardRequest) -> Vec<T> {
        let mut pending = Vec::new();
        for tx in &self.shards {
            let (reply, rx) = channel();
            if tx.send(make(reply)).is_ok() {
                pending.push(rx);
            }
        }
        pending
            .into_iter()
            .filter_map(|rx| rx.recv_timeout(ANSWER_WITHIN).ok())
            .collect()
    }

    fn tell_all(&self, make: impl Fn() -> ShardRequest) {
        for tx in &self.shards {
            let _ = tx.send(make());
        }
    }

    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for s in self.ask_all(ShardRequest::Stats) {
            total.allocations += s.allocations;
            total.permissions += s.permissions;
            total.channels += s.channels;
        }
        total
    }

    pub fn metrics(&self) -> Vec<ShardMetrics> {
        self.ask_all(ShardRequest::Metrics)
    }

    pub fn sessions(&self, user: Option<&str>) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self
            .ask_all(|r| ShardRequest::Sessions(user.map(str::to_string), r))
            .into_iter()
            .flatten()
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    pub fn kill_session(&self, id: turnd_proto::engine::SessionId) -> bool {
        self.ask_all(|r| ShardRequest::KillSession(id, r))
            .into_iter()
            .any(|k| k)
    }

    pub fn kill_user(&self, user: &str) -> usize {
        self.ask_all(|r| ShardRequest::KillUser(user.to_string(), r))
            .into_iter()
            .sum()
    }

    /// Refuse new allocations on every shard; `/readyz` turns 503.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.tell_all(|| ShardRequest::Drain);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn stop(&self) {
        self.tell_all(|| ShardRequest::Stop);
    }

    /// Apply a new configuration without dropping allocations: users, REST secrets, peer
    /// policy, quotas and the TLS certificate. On any error nothing changes. Permissions
    /// and channels the new peer policy forbids are removed (each shard logs how many).
    pub fn reload(&self, new: Config) -> anyhow::Result<ReloadReport> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (old, old_shared) = &*current;
        // Interfaces listed again; the relay addresses in effect are the old ones (restart).
        let relay_in_effect = Config {
            relay: old.relay.clone(),
            ..new.clone()
        };
        let policy = crate::net::peer_filter::for_server(&relay_in_effect, &self.own)?;
        let budget_rates = (
            new.auth.challenge_budget_per_sec,
            new.auth.failure_budget_per_sec,
        );
        // DTLS's copy is checked first, installed after the TLS one loaded.
        let dtls_cert = match (&self.dtls, &new.tls) {
            (Some(d), Some(files)) => Some(d.load(&files.cert, &files.key)?),
            _ => None,
        };
        if let (Some(cert), Some(files)) = (&self.certificate, &new.tls) {
            cert.reload(&files.cert, &files.key)?;
        }
        if let (Some(d), Some(c)) = (&self.dtls, dtls_cert) {
            d.set_certificate(c);
        }
        self.revocations
            .reload(new.auth.revocations_file.as_deref())?;
        let mut report = ReloadReport::default();
        let checks: [(&'static str, bool); 11] = [
            ("fastpath", old.fastpath != new.fastpath),
            ("auth.webhook", old.webhook != new.webhook),
            ("admin", old.admin != new.admin),
            ("tls.acme", old.acme != new.acme),
            ("listen", old.listen != new.listen),
            ("relay", old.relay != new.relay),
            ("realm", old.realm != new.realm),
            ("workers", old.workers != new.workers),
            ("lifetimes", old.lifetimes != new.lifetimes),
            ("streams", old.streams != new.streams),
            ("signaling", old.signaling != new.signaling),
        ];
        report.needs_restart = checks
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| *k)
            .collect();
        old_shared.quotas.set_limits(
            new.policy.max_allocations,
            new.policy.max_allocations_per_user,
        );
        // Each shard's engine copies it in `set_shared` below.
        old_shared
            .quotas
            .set_max_bps_per_allocation(new.policy.max_bps_per_allocation);
        // The kernel fast path's buckets follow (the same cap, per route direction).
        if let Err(e) = self.fastpath.set_max_bps(new.policy.max_bps_per_allocation) {
            tracing::warn!("kernel fast path: the bandwidth cap could not be set: {e}");
        }
        self.reservations
            .set_per_user(new.policy.max_reservations_per_user);
        // The HTTP listener keeps the mint secret it started with: so does auth.
        let base: Arc<dyn turnd_proto::auth::Authenticator> = Arc::new(
            Credentials::from_config(&new.auth, &old.realm).with_mint_secret_kind(
                old.signaling.mint_hmac,
                turnd_proto::auth::mint_secret(old.signaling.mint_secret.as_ref()),
            ),
        );
        let base = match &self.cluster {
            Some(c) => c.wrap_auth(base),
            None => base,
        };
        let base = match &self.webhook {
            Some(w) => w.wrap(base),
            None => base,
        };
        *self.base_auth.lock().unwrap_or_else(|e| e.into_inner()) = Some(base.clone());
        let shared = Shared {
            auth: Arc::new(turnd_proto::auth::Revoking::new(
                base,
                self.revocations.current(),
            )),
            policy: Arc::new(policy),
            // The same nonce key: nonces handed out before the reload stay valid.
            nonces: old_shared.nonces.clone(),
            budget: if old_shared.budget.rates() == budget_rates {
                old_shared.budget.clone()
            } else {
                Arc::new(turnd_proto::auth::FailureBudget::split(
                    budget_rates.0,
                    budget_rates.1,
                ))
            },
            quotas: old_shared.quotas.clone(),
        };
        let shared = match &self.probe {
            Some(p) => p.wrap(shared),
            None => shared,
        };
        self.tell_all(|| ShardRequest::Reload(shared.clone()));
        *current = (new, shared);
        Ok(report)
    }

    /// Load the certificate files of the current configuration again.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(d), Some(f)) = (&self.dtls, &current.0.tls) {
            let c = d.load(&f.cert, &f.key)?;
            if let Some(t) = &self.certificate {
                t.reload(&f.cert, &f.key)?;
            }
            d.set_certificate(c);
            return Ok(());
        }
        match (&self.certificate, &current.0.tls) {
            (Some(c), Some(f)) => c.reload(&f.cert, &f.key),
            _ => Ok(()),
        }
    }
}
