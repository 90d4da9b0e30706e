//! The composition root: [`start`] binds every listener (so port 0 resolves before anything
//! runs), builds the state the shards share (credentials, nonces, budgets, policy, quotas,
//! reservations, health), starts `workers` shard threads and the admin and HTTP servers, and
//! hands back a [`Running`]. It is the only module that knows all of `net`, `tls`, `admin`
//! and `http`; none of them knows another's internals. The kernel spreads UDP clients over
//! the shards by 5-tuple via SO_REUSEPORT; each shard owns the relay sockets of its
//! allocations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::net::shard::ShardSetup;
use crate::net::stream::{self, ConnLimits};
use crate::net::{self, relay, Control, Health, Stats};
use crate::tls::{self, ReloadableCert};
use crate::{admin, http};
use turnd_proto::auth::{self, Credentials, FailureBudget, NonceMint};
use turnd_proto::engine::{Engine, EngineConfig, Quotas, Shared, TcpRelayConfig, Transport};

/// A started server. Dropping it does not stop it; call [`Running::stop`].
pub struct Running {
    /// Bound UDP listener addresses, in config order (port 0 resolved).
    pub udp: Vec<SocketAddr>,
    /// Bound TCP listener addresses, in config order.
    pub tcp: Vec<SocketAddr>,
    /// Bound TLS listener addresses, in config order.
    pub tls: Vec<SocketAddr>,
    /// Bound DTLS listener addresses, in config order.
    pub dtls: Vec<SocketAddr>,
    /// Bound HTTP (signaling, pages, ice-servers) address, when configured.
    pub http: Option<SocketAddr>,
    /// Bound admin (metrics, health, sessions) address, when configured.
    pub admin: Option<SocketAddr>,
    /// The certificate TLS listeners serve, when there are any.
    pub certificate: Option<Arc<ReloadableCert>>,
    /// Cross-shard control: metrics, sessions, reload, drain.
    pub control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    /// Cancels the HTTP servers (signaling, admin).
    http_shutdown: tokio_util::sync::CancellationToken,
}

impl Running {
    pub fn stats(&self) -> Stats {
        self.control.stats()
    }

    /// Load the configured certificate and key again; new handshakes get the new certificate,
    /// established connections are untouched. Without `[tls]` files there is nothing to do.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        self.control.reload_tls()
    }

    /// Stop every shard and HTTP server, free every socket, and wait for the threads to end.
    pub fn stop(self) {
        self.control.health().set_stopping();
        self.control.stop();
        self.http_shutdown.cancel();
        for handle in self.threads {
            let _ = handle.join();
        }
    }
}

/// One socket per shard for `addr`; the first resolves port 0 for the others.
fn bind_per_shard<S>(
    addr: SocketAddr,
    workers: usize,
    what: &str,
    bind: impl Fn(SocketAddr) -> std::io::Result<S>,
    local: impl Fn(&S) -> std::io::Result<SocketAddr>,
) -> anyhow::Result<(SocketAddr, Vec<S>)> {
    if addr.port() != 0 {
        // SO_REUSEPORT would let us share a port with another process of the same user (a
        // second turnd) and silently split its traffic; a plain bind first refuses that.
        probe_exclusive(addr, what).with_context(|| {
            format!("cannot bind {what} listener {addr} (is another turnd running?)")
        })?;
    }
    let first = bind(addr).with_context(|| format!("cannot bind {what} listener {addr}"))?;
    let bound = local(&first)?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind(bound).with_context(|| format!("cannot bind {what} listener {bound}"))?);
    }
    Ok((bound, all))
}

/// Bind `addr` once without SO_REUSEPORT (and let it go) to prove nobody holds it.
fn probe_exclusive(addr: SocketAddr, what: &str) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let (ty, proto) = if what == "UDP" || what == "DTLS" {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let s = Socket::new(domain, ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == Type::STREAM {
        // TIME_WAIT leftovers of our own previous run must not block a restart.
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())
}

/// A thread with a small runtime for an HTTP server (off the shards' data path).
fn spawn_http(
    name: &str,
    server: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            if let Err(e) = rt.block_on(server) {
                tracing::error!(server = thread_name, error = %e, "HTTP server failed");
            }
        })
        .context("cannot start an HTTP thread")
}

/// Bind every listener, start the shards, and return once all are ready.
pub fn start(config: Config) -> anyhow::Result<Running> {
    let workers = config.workers.max(1);
    let mut udp: Vec<Vec<std::net::UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut tcp: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound_addrs = [Vec::new(), Vec::new(), Vec::new()];
    for addr in &config.listen.udp {
        let (b, socks) = bind_per_shard(
            *addr,
            workers,
            "UDP",
            |a| relay::bind_udp(a, true),
            |s| s.local_addr(),
        )?;
        bound_addrs[0].push(b);
        for (i, s) in socks.into_iter().enumerate() {
            udp[i].push(s);
        }
    }
    for (n, (addrs, transport)) in [
        (&config.listen.tcp, Transport::Tcp),
        (&config.listen.tls, Transport::Tls),
    ]
    .into_iter()
    .enumerate()
    {
        for addr in addrs {
            let (b, socks) =
                bind_per_shard(*addr, workers, transport.as_str(), stream::bind_tcp, |s| {
                    s.local_addr()
                })?;
            bound_addrs[n + 1].push(b);
            for (i, s) in socks.into_iter().enumerate() {
                tcp[i].push((s, transport));
            }
        }
    }
    let [udp_addrs, tcp_addrs, tls_addrs] = bound_addrs;
    let mut dtls_socks: Vec<Vec<std::net::UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut dtls_addrs = Vec::new();
    for addr in &config.listen.dtls {
        let (b, socks) = bind_per_shard(
            *addr,
            workers,
            "DTLS",
            |a| relay::bind_udp(a, true),
            |s| s.local_addr(),
        )?;
        dtls_addrs.push(b);
        for (i, s) in socks.into_iter().enumerate() {
            dtls_socks[i].push(s);
        }
    }
    let dtls_setup = if config.listen.dtls.is_empty() {
        None
    } else {
        let (cert, key) = net::dtls::certificate_der(&config)?;
        Some(net::dtls::DtlsSetup::new(config.dtls, cert, key)?)
    };
    let certificate = match &config.acme {
        Some(acme) if !config.listen.tls.is_empty() => {
            let (cert, stored) = crate::acme::initial_certificate(acme)?;
            cert.set_acme_stored(stored);
            Some(cert)
        }
        _ => tls::for_listeners(&config)?,
    };
    let acceptor = match &certificate {
        Some(c) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            c.clone(),
        )?)),
        None => None,
    };
    let own: Vec<SocketAddr> = udp_addrs
        .iter()
        .chain(&tcp_addrs)
        .chain(&tls_addrs)
        .chain(&dtls_addrs)
        .copied()
        .collect();
    let policy =
        net::peer_filter::for_server(&config, &own).context("cannot list own addresses")?;
    tracing::info!(
        own_ips = ?policy.own_ips(),
        "own addresses: denied as peers outside the relay ports"
    );
    let own_for_reload = own;
    let probe = if config.admin.ready_probe {
        Some(crate::probe::Probe::new(&config)?)
    } else {
        None
    };
    // [cluster]: the fleet's nonce key and quota leases (crate::cluster); None standalone.
    let cluster = config
        .cluster
        .as_ref()
        .map(|c| crate::cluster::Member::join(c, &config.auth, &config.realm, config.log.redact))
        .transpose()?;
    let nonce_key = cluster.as_ref().and_then(|m| m.nonce_key);
    let revocations = Arc::new(crate::net::revocations::RevocationStore::open(
        config.auth.revocations_file.as_deref(),
    )?);
    let base_auth: Arc<dyn auth::Authenticator> = Arc::new(
        Credentials::from_config(&config.auth, &config.realm).with_mint_secret_kind(
            config.signaling.mint_hmac,
            auth::mint_secret(config.signaling.mint_secret.as_ref()),
        ),
    );
    // The fleet's users and secrets join the configured ones, inside the revocations.
    let base_auth = match &cluster {
        Some(m) => m.handle.wrap_auth(base_auth),
        None => base_auth,
    };
    // [auth] webhook: names nobody above knows are asked there (crate::auth_webhook).
    let http_shutdown = tokio_util::sync::CancellationToken::new();
    let webhook =
        crate::auth_webhook::Webhook::start(&config.webhook, &config.realm, http_shutdown.clone())?;
    let base_auth = match &webhook {
        Some(w) => w.wrap(base_auth),
        None => base_auth,
    };
    let shared = Shared {
        auth: Arc::new(auth::Revoking::new(
            base_auth.clone(),
            revocations.current(),
        )),
        policy: Arc::new(policy),
        nonces: Arc::new(NonceMint::new(nonce_key.unwrap_or_else(rand::random))),
        budget: Arc::new(FailureBudget::split(
            config.auth.challenge_budget_per_sec,
            config.auth.failure_budget_per_sec,
        )),
        quotas: Arc::new(Quotas::new(
            config.policy.max_allocations,
            config.policy.max_allocations_per_user,
        )),
    };
    shared.quotas.set_minted_limits(
        config.signaling.mint_allocations_per_client,
        config.signaling.mint_allocations,
    );
    // Read by each engine when it starts (and by the XDP loader, from the config).
    shared
        .quotas
        .set_max_bps_per_allocation(config.policy.max_bps_per_allocation);
    let shared = match &probe {
        Some(p) => p.wrap(shared),
        None => shared,
    };
    let engine_cfg = EngineConfig {
        realm: config.realm.clone(),
        software: config.software.clone(),
        lifetimes: config.lifetimes,
        relay_v4: config.relay.ipv4.is_some(),
        relay_v6: config.relay.ipv6.is_some(),
        external: config.relay.external.clone(),
        max_permissions: config.policy.max_permissions_per_allocation,
        max_channels: config.policy.max_channels_per_allocation,
        nonce_lifetime: config.auth.nonce_lifetime,
        epoch: Instant::now(),
        unix_at_epoch: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        redact: config.log.redact,
        rng_seed: None,
        auth_features: turnd_proto::engine::integrity::AuthFeatures {
            algorithms: config.auth.password_algorithms.clone(),
            userhash: config.auth.userhash,
        },
    };
    let conn_limits = ConnLimits::new(
        config.streams.max_connections,
        config.streams.max_connections_per_ip,
    );
    let reservations = Arc::new(relay::Reservations::new(
        config.policy.max_allocations,
        config.policy.max_reservations_per_user,
        config.lifetimes.reservation,
        shared.quotas.clone(),
    ));
    let health = Health::new(workers);
    net::health::install_panic_hook();
    // [fastpath] xdp: attached before the shards start (one log line if it cannot be).
    let fastpath = crate::fastpath::FastPath::start(&config);
    if let Err(e) = fastpath.set_max_bps(config.policy.max_bps_per_allocation) {
        tracing::warn!("kernel fast path: the bandwidth cap could not be set: {e}");
    }
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    let siblings = net::shard::Siblings::default();
    for (i, ((udp, tcp), dtls)) in udp.into_iter().zip(tcp).zip(dtls_socks).enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        let setup = ShardSetup {
            engine: match &cluster {
                Some(m) => Engine::new(engine_cfg.clone(), shared.clone())
                    .with_shard(i as u16)
                    .with_usage(m.handle.usage.clone())
                    .with_redirect(m.handle.redirect.clone()),
                None => Engine::new(engine_cfg.clone(), shared.clone()).with_shard(i as u16),
            }
            .with_tcp_relay(TcpRelayConfig {
                enabled: config.relay.tcp,
                max_connections: config.relay.tcp_max_connections,
            }),
            relay_cfg: config.relay.clone(),
            streams_cfg: config.streams,
            conn_limits: conn_limits.clone(),
            reservations: reservations.clone(),
            redact: config.log.redact,
            udp,
            tcp,
            tls: acceptor.clone(),
            dtls,
            dtls_setup: dtls_setup.clone(),
            index: i,
            health: health.clone(),
            fastpath: fastpath.shard(),
            siblings: siblings.clone(),
        };
        let guard = health.guard(i, "shard thread");
        let handle = std::thread::Builder::new()
            .name(format!("{}{i}", net::health::SHARD_THREAD_PREFIX))
            .spawn(move || {
                // Dropped when the thread ends, by return or by panic.
                let _guard = guard;
                if let Err(e) = net::shard::run(setup, rx) {
                    tracing::error!(shard = i, error = %e, "shard failed");
                }
            })
            .context("cannot start a shard thread")?;
        senders.push(tx);
        threads.push(handle);
    }
    let _ = siblings.set(senders.clone());
    for (addrs, t) in [
        (&udp_addrs, "udp"),
        (&tcp_addrs, "tcp"),
        (&tls_addrs, "tls"),
        (&dtls_addrs, "dtls"),
    ] {
        for addr in addrs {
            tracing::info!(%addr, transport = t, workers, "listening");
        }
    }
    let admin = match config.admin.listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot bind admin listener {addr}"))?;
            if !addr.ip().is_loopback() && config.admin.token.is_none() {
                anyhow::bail!("the admin listener {addr} is not on loopback: set [admin] token");
            }
            Some(l)
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    let signaling = match config.signaling.listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot bind signaling listener {addr}"))?;
            let setup = http::HttpSetup {
                cfg: config.signaling.clone(),
                realm: config.realm.clone(),
                rest_separator: config.auth.rest_separator,
                udp: udp_addrs.clone(),
                tcp: tcp_addrs.clone(),
                tls: tls_addrs.clone(),
                certificate: certificate.clone(),
            };
            setup.check()?;
            Some((l, setup))
        }
        None => None,
    };
    let http_addr = signaling
        .as_ref()
        .map(|(l, _)| l.local_addr())
        .transpose()?;
    let admin_token = config.admin.token.clone();
    let quotas = shared.quotas.clone();
    let acme_cfg = config.acme.clone();
    let control = Arc::new(
        Control::new(
            senders,
            own_for_reload,
            certificate.clone(),
            config,
            shared,
            reservations,
            health,
        )
        .with_probe(probe.clone())
        .with_revocations(revocations, base_auth)
        .with_cluster(cluster.as_ref().map(|m| m.handle.clone()))
        .with_webhook(webhook.clone())
        .with_dtls(dtls_setup.clone())
        .with_fastpath(fastpath),
    );
    threads.extend(webhook.as_ref().and_then(|w| w.take_thread()));
    if let Some(member) = cluster {
        threads.push(member.spawn(quotas, control.clone(), http_shutdown.clone())?);
    }
    if let Some(c) = &certificate {
        threads.push(tls::watch_expiry(c.clone(), http_shutdown.clone())?);
        if let Some(acme) = acme_cfg {
            threads.push(crate::acme::spawn(
                acme,
                c.clone(),
                c.acme_stored(),
                http_shutdown.clone(),
            )?);
        }
    }
    if let (Some(p), Some(first)) = (&probe, udp_addrs.first()) {
        threads.push(p.spawn(*first, http_shutdown.clone())?);
    }
    if let Some(listener) = admin {
        let (control, shutdown) = (control.clone(), http_shutdown.clone());
        tracing::info!(addr = %listener.local_addr()?, "admin API listening");
        threads.push(spawn_http("turnd-admin", async move {
            admin::serve(listener, control, admin_token, shutdown).await
        })?);
    }
    if let Some((listener, setup)) = signaling {
        tracing::info!(addr = %listener.local_addr()?, tls = setup.cfg.tls, "signaling and pages listening");
        let shutdown = http_shutdown.clone();
        threads.push(spawn_http(
            "turnd-http",
            http::serve(listener, setup, shutdown),
        )?);
    }
    Ok(Running {
        udp: udp_addrs,
        tcp: tcp_addrs,
        tls: tls_addrs,
        dtls: dtls_addrs,
        http: http_addr,
        admin: admin_addr,
        certificate,
        control,
        threads,
        http_shutdown,
    })
}
