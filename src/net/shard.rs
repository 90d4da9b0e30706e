//! One shard: a thread with a current-thread runtime, its own [`Engine`], its own
//! SO_REUSEPORT socket per UDP listen address, and the relay sockets of its allocations.
//!
//! Everything of a shard lives on its thread, so the engine sits in a `RefCell` and each
//! socket has a small task that borrows it for one synchronous step: no locks, no channels
//! and no copies on the data path. One receive buffer per shard serves all its sockets,
//! since a borrow never spans an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::config::{Relay as RelayConfig, Streams};
use turnd_proto::engine::{
    ClientAddr, Command, Engine, EngineStats, Family, MetricsSnapshot, PeerAddr, PortChoice,
    RelayAddr, SessionId, SessionInfo, Shared, Transport, HEADROOM, TAILROOM,
};

use super::health::{panic_message, take_panic_location, Health, LogLimit};
use super::relay::{bind_pair, bind_relay, Reservations};
use super::stream::{accept_loop, Closed, ConnLimits, StreamTable};
use crate::tls::HandshakeFailure;

/// Largest datagram we receive: a UDP payload is at most 65535 bytes.
const MAX_DATAGRAM: usize = 65535;

/// Datagrams one socket task handles per readiness wake-up before it yields, so that one
/// flooded socket cannot starve the shard's other sockets, its timer and stop requests.
pub const RECV_BATCH: usize = 64;

/// At most one WARN line per this interval per shard and kind (panics, refused relays).
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often the shared reservation table is swept for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Requests from other threads (stats, admin, reload, stop).
pub enum ShardRequest {
    Stats(std::sync::mpsc::Sender<EngineStats>),
    Metrics(std::sync::mpsc::Sender<ShardMetrics>),
    Sessions(Option<String>, std::sync::mpsc::Sender<Vec<SessionInfo>>),
    KillSession(SessionId, std::sync::mpsc::Sender<bool>),
    KillUser(String, std::sync::mpsc::Sender<usize>),
    /// New credentials and policy (SIGHUP); allocations keep running.
    Reload(Shared),
    /// Refuse new allocations from now on.
    Drain,
    Stop,
}

/// One shard's part of `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ShardMetrics {
    pub engine: MetricsSnapshot,
    /// Open stream connections: [tcp, tls].
    pub streams_open: [u64; 2],
    /// Failed TLS handshakes by reason (`HandshakeFailure::ALL` order).
    pub handshake_failures: [u64; HandshakeFailure::COUNT],
    pub connections_refused: u64,
    /// Engine inputs dropped because handling them panicked.
    pub engine_panics: u64,
    /// Ports held by EVEN-PORT reservations (server-wide, the same in every shard).
    pub reservations_held: u64,
}

struct RelaySocket {
    socket: Rc<UdpSocket>,
    task: JoinHandle<()>,
}

pub struct Shard {
    engine: RefCell<Engine>,
    relay_cfg: RelayConfig,
    udp_listeners: HashMap<SocketAddr, Rc<UdpSocket>>,
    relays: RefCell<HashMap<SocketAddr, RelaySocket>>,
    streams: StreamTable,
    reservations: Arc<Reservations>,
    buf: RefCell<Box<[u8]>>,
    timer_changed: Notify,
    index: usize,
    health: Arc<Health>,
    engine_panics: Cell<u64>,
    panic_log: LogLimit,
    refused_log: LogLimit,
    #[cfg(feature = "fault-injection")]
    fault_end_shard: Notify,
}

/// Everything a shard is started with; sockets are bound before the thread starts.
pub struct ShardSetup {
    pub engine: Engine,
    pub relay_cfg: RelayConfig,
    pub streams_cfg: Streams,
    pub conn_limits: Arc<ConnLimits>,
    pub reservations: Arc<Reservations>,
    pub redact: bool,
    pub udp: Vec<std::net::UdpSocket>,
    /// TCP listener sockets with the transport they carry (TCP or TLS).
    pub tcp: Vec<(std::net::TcpListener, Transport)>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub index: usize,
    pub health: Arc<Health>,
}

/// Run a shard on the current thread until it is asked to stop.
pub fn run(
    setup: ShardSetup,
    mut requests: mpsc::UnboundedReceiver<ShardRequest>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut udp_listeners = HashMap::new();
        for s in setup.udp {
            let addr = s.local_addr()?;
            udp_listeners.insert(addr, Rc::new(UdpSocket::from_std(s)?));
        }
        let shard = Rc::new(Shard {
            engine: RefCell::new(setup.engine),
            relay_cfg: setup.relay_cfg,
            udp_listeners,
            relays: RefCell::new(HashMap::new()),
            streams: StreamTable::new(setup.streams_cfg, setup.conn_limits, setup.redact),
            reservations: setup.reservations,
            buf: RefCell::new(vec![0u8; HEADROOM + MAX_DATAGRAM + TAILROOM].into_boxed_slice()),
            timer_changed: Notify::new(),
            index: setup.index,
            health: setup.health,
            engine_panics: Cell::new(0),
            panic_log: LogLimit::new(LOG_INTERVAL),
            refused_log: LogLimit::new(LOG_INTERVAL),
            #[cfg(feature = "fault-injection")]
            fault_end_shard: Notify::new(),
        });
        // Each long-lived task holds a guard: if it ends while the server is not stopping,
        // the shard is reported gone (readyz/healthz 503, the binary exits).
        for (addr, sock) in &shard.udp_listeners {
            let guard = shard.health.guard(shard.index, "UDP listener");
            let task = udp_listener(shard.clone(), *addr, sock.clone());
            tokio::task::spawn_local(async move {
                let _guard = guard;
                task.await
            });
        }
        for (listener, transport) in setup.tcp {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let tls = if transport == Transport::Tls {
                setup.tls.clone()
            } else {
                None
            };
            let guard = shard.health.guard(shard.index, "stream accept loop");
            let task = accept_loop(shard.clone(), listener, transport, tls);
            tokio::task::spawn_local(async move {
                let _guard = guard;
                task.await
            });
        }
        for (what, task) in [
            (
                "timer",
                Box::pin(timer(shard.clone()))
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
            ),
            ("reservation sweeper", Box::pin(sweeper(shard.clone()))),
        ] {
            let guard = shard.health.guard(shard.index, what);
            tokio::task::spawn_local(async move {
                let _guard = guard;
                task.await
            });
        }
        while let Some(req) = next_request(&shard, &mut requests).await {
            if !shard
                .guarded("control request", || shard.answer(req))
                .unwrap_or(true)
            {
                break;
            }
        }
        // Dropping the LocalSet drops every task and with them every socket.
        for (_, r) in shard.relays.borrow_mut().drain() {
            r.task.abort();
        }
        shard.streams.close_all();
        Ok(())
    })
}

/// Send a datagram now or drop it: a plain non-blocking sendto. (tokio's `try_send_to`
/// reports WouldBlock until its reactor has seen the socket writable once, which would drop
/// the first packets of every new relay.)
fn send_now(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket2::SockRef::from(sock).send_to(bytes, &to.into());
}

/// The next request from another thread. (With fault injection, an injected fault can end
/// the shard thread here, outside any containment.)
async fn next_request(
    shard: &Rc<Shard>,
    requests: &mut mpsc::UnboundedReceiver<ShardRequest>,
) -> Option<ShardRequest> {
    #[cfg(feature = "fault-injection")]
    {
        tokio::select! {
            r = requests.recv() => r,
            _ = shard.fault_end_shard.notified() => panic!("injected shard-thread fault"),
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = shard;
        requests.recv().await
    }
}

/// What a client datagram is, for the panic log: never its content.
fn kind_of(buf: &[u8]) -> &'static str {
    match buf {
        [b0, ..] if b0 >> 6 == 1 => "ChannelData",
        [0x00, 0x01, ..] => "Binding request",
        [0x00, 0x03, ..] => "Allocate request",
        [0x00, 0x04, ..] => "Refresh request",
        [0x00, 0x08, ..] => "CreatePermission request",
        [0x00, 0x09, ..] => "ChannelBind request",
        [0x00, 0x16, ..] => "Send indication",
        [b0, ..] if b0 >> 6 == 0 => "other STUN message",
        _ => "other datagram",
    }
}

/// The one receive loop of a shard's UDP sockets, client listeners and relay sockets alike:
/// wait for readiness, receive up to [`RECV_BATCH`] datagrams into the shard's buffer at
/// `offset` (relay sockets leave [`HEADROOM`] for the ChannelData or Data indication header)
/// and hand each to `on_datagram` as (now, buffer, length, sender), then yield. It ends when
/// the socket fails or `on_datagram` says `Break`.
async fn recv_loop(
    shard: &Shard,
    sock: &UdpSocket,
    offset: usize,
    mut on_datagram: impl FnMut(Instant, &mut [u8], usize, SocketAddr) -> ControlFlow<()>,
) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let now = Instant::now();
        for _ in 0..RECV_BATCH {
            let mut buf = shard.buf.borrow_mut();
            let (n, from) = match sock.try_recv_from(&mut buf[offset..offset + MAX_DATAGRAM]) {
                Ok(r) => r,
                // WouldBlock: drained. Other errors (ICMP-induced on unconnected sockets)
                // concern one packet; readiness stays set, so the next wake-up goes on.
                Err(_) => break,
            };
            if on_datagram(now, &mut buf, n, from).is_break() {
                return;
            }
        }
        // Let the shard's other sockets, its timer and its requests run.
        tokio::task::yield_now().await;
    }
}

/// Datagrams from clients on one UDP listener socket.
async fn udp_listener(shard: Rc<Shard>, local: SocketAddr, sock: Rc<UdpSocket>) {
    recv_loop(&shard, &sock, 0, |now, buf, n, remote| {
        let packet = &buf[..n];
        #[cfg(feature = "fault-injection")]
        {
            use turnd_proto::engine::fault;
            if packet.starts_with(fault::END_LISTENER) {
                return ControlFlow::Break(());
            }
            if packet.starts_with(fault::END_SHARD) {
                shard.fault_end_shard.notify_one();
            }
        }
        let from = ClientAddr {
            transport: Transport::Udp,
            remote,
            local,
        };
        shard.on_client_packet(now, from, packet);
        ControlFlow::Continue(())
    })
    .await
}

/// Datagrams from peers on one relay socket of `client`'s allocation.
async fn relay_reader(
    shard: Rc<Shard>,
    client: ClientAddr,
    bound: SocketAddr,
    sock: Rc<UdpSocket>,
) {
    recv_loop(&shard, &sock, HEADROOM, |now, buf, n, peer| {
        shard.guarded("peer datagram", || {
            let mut engine = shard.engine.borrow_mut();
            if let Some(out) =
                engine.handle_peer(now, client, RelayAddr(bound), PeerAddr(peer), buf, n)
            {
                shard.send_to_client(out.client, &buf[out.range]);
            }
        });
        ControlFlow::Continue(())
    })
    .await
}

/// Drop expired EVEN-PORT reservations (shared by all shards; any shard's sweep frees them).
async fn sweeper(shard: Rc<Shard>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = shard.reservations.sweep(Instant::now());
        if n > 0 {
            tracing::debug!(expired = n, "port reservations expired");
        }
    }
}

async fn timer(shard: Rc<Shard>) {
    loop {
        let deadline = shard.engine.borrow().poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                let now = Instant::now();
                let done = shard.guarded("timer", || {
                    let mut engine = shard.engine.borrow_mut();
                    engine.handle_timeout(now);
                    shard.flush_outputs(&mut engine, now);
                });
                if done.is_none() {
                    // A deadline whose handling panics may still be due: never spin on it.
                    tokio::task::yield_now().await;
                }
            }
            _ = shard.timer_changed.notified() => {}
        }
    }
}

impl Shard {
    /// Run one engine step, containing a panic: the input is dropped, counted
    /// (`turnd_engine_panics_total`) and logged at most once per interval with `what` it
    /// was and where it panicked, never its content. `None` when it panicked.
    ///
    /// The engine stays usable: a `RefCell` is released by unwinding, not poisoned. What
    /// the panicking step had half done stays half done (e.g. a quota slot taken for an
    /// Allocate that never completes, a timer entry for an allocation already gone, queued
    /// answers not sent); other allocations are untouched.
    fn guarded<T>(&self, what: &'static str, step: impl FnOnce() -> T) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(step)) {
            Ok(v) => Some(v),
            Err(payload) => {
                self.engine_panics.set(self.engine_panics.get() + 1);
                let at = take_panic_location();
                if let Some(suppressed) = self.panic_log.allow(Instant::now()) {
                    tracing::error!(
                        shard = self.index,
                        input = what,
                        at = at.as_deref().unwrap_or("?"),
                        panic = panic_message(&*payload),
                        suppressed,
                        "a panic while handling one input: dropped it, the shard goes on"
                    );
                }
                None
            }
        }
    }

    /// Serve one request from another thread; false means: stop.
    fn answer(self: &Rc<Self>, req: ShardRequest) -> bool {
        let now = Instant::now();
        match req {
            ShardRequest::Stats(reply) => {
                let _ = reply.send(self.engine.borrow().stats());
            }
            ShardRequest::Metrics(reply) => {
                let _ = reply.send(ShardMetrics {
                    engine: self.engine.borrow().metrics_snapshot(),
                    streams_open: self.streams.open(),
                    handshake_failures: self.streams.handshake_failures(),
                    connections_refused: self.streams.refused(),
                    engine_panics: self.engine_panics.get(),
                    reservations_held: self.reservations.len() as u64,
                });
            }
            ShardRequest::Sessions(user, reply) => {
                let _ = reply.send(self.engine.borrow().sessions(now, user.as_deref()));
            }
            ShardRequest::KillSession(id, reply) => {
                let mut engine = self.engine.borrow_mut();
                let _ = reply.send(engine.kill_session(now, id));
                self.flush_outputs(&mut engine, now);
            }
            ShardRequest::KillUser(user, reply) => {
                let mut engine = self.engine.borrow_mut();
                let _ = reply.send(engine.kill_user(now, &user));
                self.flush_outputs(&mut engine, now);
            }
            ShardRequest::Reload(shared) => {
                let (permissions, channels) = self.engine.borrow_mut().set_shared(shared);
                if permissions + channels > 0 {
                    tracing::info!(
                        shard = self.index,
                        permissions,
                        channels,
                        "reload: removed permissions and channels the new peer policy forbids"
                    );
                }
            }
            ShardRequest::Drain => self.engine.borrow_mut().set_draining(true),
            ShardRequest::Stop => return false,
        }
        true
    }

    /// Carry out the engine's commands and send its control-plane messages (not to be
    /// confused with graceful drain, [`ShardRequest::Drain`]).
    fn flush_outputs(self: &Rc<Self>, engine: &mut Engine, now: Instant) {
        let mut any = false;
        loop {
            let mut progressed = false;
            while let Some(cmd) = engine.poll_command() {
                progressed = true;
                self.execute(engine, now, cmd);
            }
            while let Some(t) = engine.poll_transmit() {
                progressed = true;
                self.send_to_client(t.to, &t.bytes);
            }
            if !progressed {
                break;
            }
            any = true;
        }
        if any || engine.timeout_moved() {
            self.timer_changed.notify_one();
        }
    }

    fn execute(self: &Rc<Self>, engine: &mut Engine, now: Instant, cmd: Command) {
        match cmd {
            Command::BindRelays {
                client,
                families,
                port,
            } => {
                let bound = families
                    .iter()
                    .map(|f| match self.open_relay(engine, client, *f, port, now) {
                        Ok(a) => Some(a),
                        Err(e) => {
                            // An attacker can make every Allocate fail: one line per interval.
                            if let Some(suppressed) = self.refused_log.allow(now) {
                                tracing::warn!(
                                    error = %e,
                                    family = ?f,
                                    suppressed,
                                    "cannot bind a relay socket (508)"
                                );
                            }
                            None
                        }
                    })
                    .collect();
                engine.relay_bound(now, client, bound);
            }
            Command::ReleaseRelay(addr) => {
                if let Some(r) = self.relays.borrow_mut().remove(&addr) {
                    r.task.abort();
                }
            }
            Command::CloseClient(client) => self.streams.close(&client, Closed::ByServer),
        }
    }

    fn open_relay(
        self: &Rc<Self>,
        engine: &Engine,
        client: ClientAddr,
        family: Family,
        port: PortChoice,
        now: Instant,
    ) -> io::Result<SocketAddr> {
        let std_sock = match port {
            PortChoice::Any => bind_relay(&self.relay_cfg, family, false)?,
            PortChoice::Even => bind_relay(&self.relay_cfg, family, true)?,
            PortChoice::EvenReserveNext(token) => {
                let user = engine
                    .pending_user(&client)
                    .ok_or_else(|| io::Error::other("no pending Allocate"))?;
                // Refuse before binding anything: a user at the cap costs no bind calls.
                self.reservations.admits(user).map_err(io::Error::other)?;
                let (even, odd) = bind_pair(&self.relay_cfg, family)?;
                self.reservations
                    .hold(token.0, odd, user, now)
                    .map_err(io::Error::other)?;
                even
            }
            PortChoice::Reserved(token) => {
                self.reservations.take(&token.0, now).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "unknown or expired reservation token",
                    )
                })?
            }
        };
        let bound = std_sock.local_addr()?;
        let socket = Rc::new(UdpSocket::from_std(std_sock)?);
        let task =
            tokio::task::spawn_local(relay_reader(self.clone(), client, bound, socket.clone()));
        self.relays
            .borrow_mut()
            .insert(bound, RelaySocket { socket, task });
        Ok(bound)
    }

    fn send_to_client(&self, to: ClientAddr, bytes: &[u8]) {
        match to.transport {
            Transport::Udp => {
                if let Some(s) = self.udp_listeners.get(&to.local) {
                    send_now(s, bytes, to.remote);
                }
            }
            Transport::Tcp | Transport::Tls => self.streams.push(&to, bytes),
        }
    }

    /// The shard's stream connections.
    pub(super) fn streams(&self) -> &StreamTable {
        &self.streams
    }

    /// Whether a stream client still has an allocation (idle connections without one close).
    pub(super) fn has_allocation(&self, client: &ClientAddr) -> bool {
        self.engine.borrow().has_allocation(client)
    }

    /// A stream connection ended: free its allocation at once.
    pub(super) fn client_closed(self: &Rc<Self>, client: ClientAddr) {
        let now = Instant::now();
        let mut engine = self.engine.borrow_mut();
        engine.client_closed(now, client);
        self.flush_outputs(&mut engine, now);
    }

    /// One datagram or complete stream frame from a client: the engine's data-plane answer
    /// goes straight out of the relay socket, its other outputs are flushed.
    pub(super) fn on_client_packet(
        self: &Rc<Self>,
        now: Instant,
        client: ClientAddr,
        packet: &[u8],
    ) {
        self.guarded(kind_of(packet), || {
            let mut engine = self.engine.borrow_mut();
            if let Some(out) = engine.handle_client(now, client, packet) {
                if let Some(r) = self.relays.borrow().get(&out.relay.0) {
                    send_now(&r.socket, &packet[out.range], out.peer.0);
                }
            }
            self.flush_outputs(&mut engine, now);
        });
    }
}
