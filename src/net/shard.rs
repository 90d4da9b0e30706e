//! One shard: a thread with a current-thread runtime, its own [`Engine`], its own
//! SO_REUSEPORT socket per UDP listen address, and the relay sockets of its allocations.
//!
//! All UDP sockets of a shard (listeners and relays) sit in one `mio` poll set, whose epoll
//! descriptor is the only thing the tokio runtime watches for them: one task ([`udp_loop`])
//! takes the ready sockets, receives from each with `recvmmsg` into the shard's batch slots,
//! hands every datagram to the engine and sends the batch's outputs with `sendmmsg` (GSO for
//! equal-size runs to one destination). A relay socket costs a slab entry and a descriptor:
//! no task, no tokio registration. Stream connections, the timer and requests from other
//! threads are tasks of the same thread; they share the engine through a `RefCell` whose
//! borrows never span an `.await`: no locks, no channels and no copies on the data path.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Notify};

use crate::config::{Relay as RelayConfig, Streams};
use turnd_proto::engine::{
    BoundRelay, Capacity, ClientAddr, Command, ConnectionId, Engine, EngineStats, Family,
    MetricsSnapshot, PeerAddr, PortChoice, Refusal, RelayAddr, RelayHandle, SessionId, SessionInfo,
    Shared, Transport, HEADROOM,
};

use super::dtls::{DtlsCounters, DtlsSetup, DtlsTable};
use super::health::{panic_message, take_panic_location, Health, LogLimit};
use super::relay::{bind_pair, bind_relay, HoldRefused, Reservations};
use super::stream::{accept_loop, Closed, ConnLimits, StreamTable};
use super::tcp_relay::TcpRelays;
use super::udp::{self, RecvBatch, SendQueue, BATCH};
use crate::tls::HandshakeFailure;

/// `recvmmsg` calls one ready socket gets per loop turn (so at most
/// `RECVS_PER_TURN * BATCH` datagrams) before the next ready socket's turn: one flooded
/// socket cannot starve the shard's other sockets, and after every turn the loop yields to
/// the timer, the stream connections and requests from other threads.
pub const RECVS_PER_TURN: usize = 2;

/// A relay socket's read gets at least this many free slots (else the batch is flushed
/// first): a read that fills the batch would cost a second read to learn the rest.
const RELAY_ROOM: usize = BATCH / 4;

/// Readiness events taken from the poll set per `epoll_wait`.
const EVENTS: usize = 1024;

/// Datagrams one socket is served per turn at most.
pub const RECV_BATCH: usize = RECVS_PER_TURN * BATCH;

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
    /// End the allocations created with exactly this USERNAME (a revoked REST username).
    KillUsername(String, std::sync::mpsc::Sender<usize>),
    /// New credentials and policy (SIGHUP); allocations keep running.
    Reload(Shared),
    /// Refuse new allocations from now on.
    Drain,
    /// Another shard's ConnectionBind claims this shard's peer connection (RFC 6062):
    /// answered with its socket and the notify that stops its splice.
    ClaimPeer {
        id: ConnectionId,
        user: String,
        data: ClientAddr,
        reply: tokio::sync::oneshot::Sender<ClaimAnswer>,
    },
    /// A splice on another shard of this shard's peer connection ended.
    PeerClosed(ConnectionId),
    Stop,
}

/// The answer to [`ShardRequest::ClaimPeer`].
pub type ClaimAnswer = Result<(std::net::TcpStream, Arc<Notify>), Refusal>;

/// The request senders of all shards, by index (set once all shards exist).
pub type Siblings = Arc<std::sync::OnceLock<Vec<mpsc::UnboundedSender<ShardRequest>>>>;

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
    /// UDP datagrams the kernel would not take (full socket buffer, unreachable): dropped.
    pub udp_send_dropped: u64,
    /// `sendmmsg` calls and the datagrams they carried (batching, GSO included).
    pub udp_send_calls: u64,
    pub udp_sent: u64,
    /// Of `udp_sent`, datagrams sent inside GSO sends of two or more.
    pub udp_gso_sent: u64,
    /// `recvmmsg` calls that returned datagrams, and the datagrams.
    pub udp_recv_calls: u64,
    pub udp_received: u64,
    /// Times the UDP loop held after a small turn at a high rate (`[relay] coalesce`).
    pub udp_coalesce_holds: u64,
    /// DTLS sessions and the stateless HelloVerifyRequests.
    pub dtls: DtlsCounters,
    /// RFC 6062 peer data connections open ([`TcpRelays::open_connections`]).
    pub tcp_relay_connections: u64,
}

/// What a UDP socket of the shard is for.
#[derive(Clone, Copy)]
enum SockKind {
    Listener {
        local: SocketAddr,
    },
    /// A DTLS listener (`listen.dtls`): datagrams go to the shard's [`DtlsTable`].
    Dtls {
        local: SocketAddr,
    },
    Relay {
        client: ClientAddr,
        bound: SocketAddr,
    },
}

struct Sock {
    io: mio::net::UdpSocket,
    kind: SockKind,
    /// In the loop's ready queue (not yet read to `WouldBlock`).
    queued: bool,
}

/// The shard's UDP sockets, by slab key (the mio token).
#[derive(Default)]
struct Sockets {
    slab: Slab<Sock>,
    /// Listener address -> descriptor (listeners live as long as the shard).
    listeners: HashMap<SocketAddr, RawFd, foldhash::fast::RandomState>,
    /// Relay sockets released during a loop turn: closed when the turn ends, so that no
    /// descriptor number is reused while the turn may still send from it.
    closing: Vec<mio::net::UdpSocket>,
}

impl Sockets {
    /// The relay socket of slab key `key` if it is the one bound at `addr` (the engine's
    /// [`RelayHandle`] of a relay is its slab key: an index, no lookup).
    fn relay_at(&self, key: usize, addr: SocketAddr) -> Option<&Sock> {
        self.slab
            .get(key)
            .filter(|s| matches!(s.kind, SockKind::Relay { bound, .. } if bound == addr))
    }

    /// The descriptor of the relay socket an engine output names.
    fn relay_fd(&self, handle: RelayHandle, addr: RelayAddr) -> Option<RawFd> {
        self.relay_at(handle.0 as usize, addr.0)
            .map(|s| s.io.as_raw_fd())
    }
}

/// The handle TCP (RFC 6062) relays are bound with: they live in [`TcpRelays`], by address.
const TCP_RELAY_HANDLE: RelayHandle = RelayHandle(u32::MAX);

/// Why a relay socket could not be had for an Allocate.
enum RelayRefused {
    /// The user is at a cap (port reservations, or the quota a reservation counts against):
    /// 486.
    Quota(HoldRefused),
    /// Binding failed, or the server-wide reservation table is full: 508.
    Io(io::Error),
}

impl From<io::Error> for RelayRefused {
    fn from(e: io::Error) -> Self {
        RelayRefused::Io(e)
    }
}

impl From<HoldRefused> for RelayRefused {
    fn from(e: HoldRefused) -> Self {
        match e {
            HoldRefused::UserCap | HoldRefused::Quota => RelayRefused::Quota(e),
            HoldRefused::Full => RelayRefused::Io(io::Error::other(e)),
        }
    }
}

/// Per-shard UDP counters (plain integers on the shard's thread).
#[derive(Default)]
struct UdpCounters {
    send_dropped: Cell<u64>,
    send_calls: Cell<u64>,
    sent: Cell<u64>,
    gso_sent: Cell<u64>,
    recv_calls: Cell<u64>,
    received: Cell<u64>,
    /// `[relay] coalesce` holds of the UDP loop.
    holds: Cell<u64>,
}

impl UdpCounters {
    /// Move a send queue's counts into the shard's.
    fn take_from(&self, q: &mut SendQueue) {
        let add = |c: &Cell<u64>, n: &mut u64| c.set(c.get() + std::mem::take(n));
        add(&self.send_dropped, &mut q.dropped);
        add(&self.send_calls, &mut q.calls);
        add(&self.sent, &mut q.sent);
        add(&self.gso_sent, &mut q.gso_sent);
    }
}

pub struct Shard {
    engine: RefCell<Engine>,
    relay_cfg: RelayConfig,
    socks: RefCell<Sockets>,
    registry: Registry,
    /// Whether the UDP loop is inside a turn (relay sockets released now close at its end).
    in_turn: Cell<bool>,
    udp: UdpCounters,
    /// The send queue of stream clients' frames (the UDP loop has its own).
    stream_out: RefCell<SendQueue>,
    /// The decrypted datagrams of a DTLS receive batch (kept for its capacity).
    dtls_app: RefCell<super::dtls::AppData>,
    streams: StreamTable,
    /// RFC 6062 TCP relay listeners and peer connections.
    tcp: TcpRelays,
    dtls: DtlsTable,
    reservations: Arc<Reservations>,
    siblings: Siblings,
    timer_changed: Notify,
    index: usize,
    health: Arc<Health>,
    engine_panics: Cell<u64>,
    panic_log: LogLimit,
    refused_log: LogLimit,
    fastpath: RefCell<crate::fastpath::ShardFastPath>,
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
    /// DTLS listener sockets and what their sessions share (`None` without DTLS listeners).
    pub dtls: Vec<std::net::UdpSocket>,
    pub dtls_setup: Option<Arc<DtlsSetup>>,
    pub index: usize,
    pub health: Arc<Health>,
    /// `[fastpath] xdp`: this shard's mirror of its routes in the kernel (off by default).
    pub fastpath: crate::fastpath::ShardFastPath,
    /// Every shard's request sender (RFC 6062 ConnectionBinds across shards).
    pub siblings: Siblings,
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
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let mut socks = Sockets::default();
        for s in setup.udp {
            let local = s.local_addr()?;
            let mut io = mio::net::UdpSocket::from_std(s);
            let entry = socks.slab.vacant_entry();
            registry.register(&mut io, Token(entry.key()), Interest::READABLE)?;
            socks.listeners.insert(local, io.as_raw_fd());
            entry.insert(Sock {
                io,
                kind: SockKind::Listener { local },
                queued: false,
            });
        }
        let mut engine = setup.engine;
        engine.set_route_events(setup.fastpath.is_on());
        for s in setup.dtls {
            let local = s.local_addr()?;
            let mut io = mio::net::UdpSocket::from_std(s);
            let entry = socks.slab.vacant_entry();
            registry.register(&mut io, Token(entry.key()), Interest::READABLE)?;
            entry.insert(Sock {
                io,
                kind: SockKind::Dtls { local },
                queued: false,
            });
        }
        let gso = setup.relay_cfg.gso && udp::gso_supported();
        let shard = Rc::new(Shard {
            engine: RefCell::new(engine),
            relay_cfg: setup.relay_cfg,
            socks: RefCell::new(socks),
            registry,
            in_turn: Cell::new(false),
            udp: UdpCounters::default(),
            stream_out: RefCell::new(SendQueue::new(gso)),
            dtls_app: RefCell::default(),
            streams: StreamTable::new(setup.streams_cfg, setup.conn_limits, setup.redact),
            tcp: TcpRelays::default(),
            dtls: DtlsTable::new(setup.dtls_setup),
            reservations: setup.reservations,
            siblings: setup.siblings,
            timer_changed: Notify::new(),
            index: setup.index,
            health: setup.health,
            engine_panics: Cell::new(0),
            panic_log: LogLimit::new(LOG_INTERVAL),
            refused_log: LogLimit::new(LOG_INTERVAL),
            fastpath: RefCell::new(setup.fastpath),
            #[cfg(feature = "fault-injection")]
            fault_end_shard: Notify::new(),
        });
        // Each long-lived task holds a guard: if it ends while the server is not stopping,
        // the shard is reported gone (readyz/healthz 503, the binary exits).
        {
            let guard = shard.health.guard(shard.index, "UDP loop");
            let task = udp_loop(shard.clone(), poll);
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
            ("DTLS timer", Box::pin(dtls_timer(shard.clone()))),
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
        {
            let mut socks = shard.socks.borrow_mut();
            socks.slab.clear();
            socks.closing.clear();
        }
        shard.streams.close_all();
        shard.tcp.close_all();
        shard.dtls.close_all();
        Ok(())
    })
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

/// How a ready socket's turn ended.
enum Turn {
    /// Read to `WouldBlock` (or gone): off the ready queue until its next readiness event.
    Drained,
    /// Served its bound with more waiting: back to the end of the ready queue.
    More,
    /// Stop the loop (fault injection only).
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    End,
}

/// The shard's one UDP loop, listeners and relay sockets alike. It waits on the poll set's
/// epoll descriptor, moves the sockets that became readable to a ready queue (mio is
/// edge-triggered: a socket stays queued until read to `WouldBlock`), serves every queued
/// socket at most [`RECVS_PER_TURN`] `recvmmsg` batches per turn, flushing each batch's
/// outputs with `sendmmsg` before the next one is received, and yields after every turn.
async fn udp_loop(shard: Rc<Shard>, poll: Poll) {
    // SAFETY: the Poll owns its epoll descriptor, which stays open and the same until the
    // AsyncFd (which owns the Poll) is dropped.
    let Ok(mut afd) =
        (unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    let mut events = Events::with_capacity(EVENTS);
    let mut ready: VecDeque<usize> = VecDeque::new();
    let mut batch = RecvBatch::new();
    let mut out = SendQueue::new(shard.stream_out.borrow().gso());
    // Whether the poll set may hold events not yet taken (a full `events`).
    let mut more_events = false;
    let mut coalesce = super::coalesce::Coalesce::new(shard.relay_cfg.coalesce, Instant::now());
    loop {
        if ready.is_empty() && !more_events {
            // Nothing queued: wait for the poll set's descriptor. Its readiness is cleared
            // before the poll set is read, so an event arriving after that read raises a new
            // edge and wakes this task again: no second, empty epoll_wait to learn that the
            // set is empty.
            let Ok(mut guard) = afd.readable_mut().await else {
                return;
            };
            guard.clear_ready();
            if guard
                .get_inner_mut()
                .poll(&mut events, Some(Duration::ZERO))
                .is_err()
            {
                continue;
            }
            if events.is_empty() {
                continue;
            }
        } else if afd
            .get_mut()
            .poll(&mut events, Some(Duration::ZERO))
            .is_err()
        {
            events.clear();
        }
        more_events = events.iter().count() >= EVENTS;
        {
            let mut socks = shard.socks.borrow_mut();
            for ev in events.iter() {
                let key = ev.token().0;
                if let Some(s) = socks.slab.get_mut(key) {
                    if !s.queued {
                        s.queued = true;
                        ready.push_back(key);
                    }
                }
            }
        }
        shard.in_turn.set(true);
        for _ in 0..ready.len() {
            let Some(key) = ready.pop_front() else {
                break;
            };
            match shard.serve(key, &mut batch, &mut out) {
                Turn::Drained => {
                    if let Some(s) = shard.socks.borrow_mut().slab.get_mut(key) {
                        s.queued = false;
                    }
                }
                Turn::More => ready.push_back(key),
                Turn::End => return,
            }
        }
        // What the relay sockets of this turn received leaves together, before any
        // descriptor released during the turn is closed.
        out.flush(batch.data());
        batch.clear();
        shard.in_turn.set(false);
        shard.socks.borrow_mut().closing.clear();
        shard.udp.take_from(&mut out);
        // `[relay] coalesce`: at a high rate of small turns, wait before polling again. The
        // turn's outputs have left; what arrives meanwhile waits in the kernel.
        let idle = ready.is_empty() && !more_events;
        if let Some(hold) = coalesce.after_turn_now(shard.udp.received.get(), idle) {
            std::thread::sleep(hold);
            shard.udp.holds.set(shard.udp.holds.get() + 1);
        }
        // Let the shard's stream connections, its timer and its requests run (the runtime
        // also collects the poll set's readiness meanwhile, so the wait above does not
        // block when events came during the turn).
        tokio::task::yield_now().await;
    }
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

/// Drives the DTLS sessions' retransmissions and timeouts (idle without DTLS listeners).
async fn dtls_timer(shard: Rc<Shard>) {
    let Some(every) = shard.dtls.tick_interval() else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shard.dtls_tick(Instant::now());
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
                    // Kernel counts first: this tick may end allocations.
                    shard.fastpath.borrow_mut().fold_all(&mut engine);
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
                self.fold_fastpath();
                let _ = reply.send(ShardMetrics {
                    engine: self.engine.borrow().metrics_snapshot(),
                    streams_open: self.streams.open(),
                    handshake_failures: self.streams.handshake_failures(),
                    connections_refused: self.streams.refused(),
                    engine_panics: self.engine_panics.get(),
                    reservations_held: self.reservations.len() as u64,
                    udp_send_dropped: self.udp.send_dropped.get(),
                    udp_send_calls: self.udp.send_calls.get(),
                    udp_sent: self.udp.sent.get(),
                    udp_gso_sent: self.udp.gso_sent.get(),
                    udp_recv_calls: self.udp.recv_calls.get(),
                    udp_received: self.udp.received.get(),
                    udp_coalesce_holds: self.udp.holds.get(),
                    dtls: self.dtls.counters(),
                    tcp_relay_connections: self.tcp.open_connections(),
                });
            }
            ShardRequest::Sessions(user, reply) => {
                self.fold_fastpath();
                let _ = reply.send(self.engine.borrow().sessions(now, user.as_deref()));
            }
            ShardRequest::KillSession(id, reply) => {
                self.fold_fastpath();
                let mut engine = self.engine.borrow_mut();
                let _ = reply.send(engine.kill_session(now, id));
                self.flush_outputs(&mut engine, now);
            }
            ShardRequest::KillUser(user, reply) => {
                self.fold_fastpath();
                let mut engine = self.engine.borrow_mut();
                let _ = reply.send(engine.kill_user(now, &user));
                self.flush_outputs(&mut engine, now);
            }
            ShardRequest::KillUsername(username, reply) => {
                self.fold_fastpath();
                let mut engine = self.engine.borrow_mut();
                let _ = reply.send(engine.kill_username(now, &username));
                self.flush_outputs(&mut engine, now);
            }
            ShardRequest::Reload(shared) => {
                let (permissions, channels) = {
                    let mut engine = self.engine.borrow_mut();
                    let pruned = engine.set_shared(shared);
                    self.fastpath.borrow_mut().sync(&mut engine);
                    pruned
                };
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
            ShardRequest::ClaimPeer {
                id,
                user,
                data,
                reply,
            } => {
                let answer = self.tcp.claim(self, id, &user, data);
                let _ = reply.send(answer);
            }
            ShardRequest::PeerClosed(id) => {
                if self.tcp.forget(id) {
                    self.engine_step("peer closed", |e, now| e.peer_closed(now, id));
                }
            }
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
            // [fastpath]: the kernel's routes follow the engine's at every step, before the
            // answers leave: a client that sends ChannelData as soon as its ChannelBind
            // succeeds finds the route already in the kernel.
            self.fastpath.borrow_mut().sync(engine);
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

    /// Fold the kernel fast path's counts into the engine (before it is read or ends
    /// allocations).
    fn fold_fastpath(&self) {
        let mut engine = self.engine.borrow_mut();
        self.fastpath.borrow_mut().fold_all(&mut engine);
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
                        Ok(b) => Ok(b),
                        Err(RelayRefused::Quota(why)) => {
                            // A user's own cap: 486, not worth a log line.
                            tracing::debug!(reason = %why, family = ?f, "relay refused (486)");
                            Err(Refusal::Quota)
                        }
                        Err(RelayRefused::Io(e)) => {
                            // An attacker can make every Allocate fail: one line per interval.
                            if let Some(suppressed) = self.refused_log.allow(now) {
                                tracing::warn!(
                                    error = %e,
                                    family = ?f,
                                    suppressed,
                                    "cannot bind a relay socket (508)"
                                );
                            }
                            Err(Refusal::Capacity(Capacity::RelayPorts))
                        }
                    })
                    .collect();
                engine.relay_bound(now, client, bound);
            }
            Command::BindTcpRelay { client, family } => {
                let bound = match self.tcp.open(self, &self.relay_cfg, client, family) {
                    Ok(addr) => Ok(BoundRelay {
                        addr,
                        handle: TCP_RELAY_HANDLE,
                    }),
                    Err(e) => {
                        if let Some(suppressed) = self.refused_log.allow(now) {
                            tracing::warn!(
                                error = %e,
                                family = ?family,
                                suppressed,
                                "cannot bind a TCP relay listener (508)"
                            );
                        }
                        Err(Refusal::Capacity(Capacity::RelayPorts))
                    }
                };
                engine.relay_bound(now, client, vec![bound]);
            }
            Command::ConnectPeer { id, relay, peer } => self.tcp.connect(self, id, relay, peer),
            Command::SpliceData { id, data } => self.streams.splice(&data, id),
            Command::ClosePeer(id) => self.tcp.close(id),
            Command::ClaimPeer { id, user, data } => self.claim_remote(id, user, data),
            Command::ReleaseRelay(b)
                if b.handle == TCP_RELAY_HANDLE && self.tcp.release(&b.addr) => {}
            Command::ReleaseRelay(b) => {
                let mut socks = self.socks.borrow_mut();
                let key = b.handle.0 as usize;
                if socks.relay_at(key, b.addr).is_some() {
                    let mut s = socks.slab.remove(key);
                    let _ = self.registry.deregister(&mut s.io);
                    if self.in_turn.get() {
                        socks.closing.push(s.io);
                    }
                }
            }
            Command::CloseClient(client) if client.transport == Transport::Dtls => {
                self.dtls.close(&client)
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
    ) -> Result<BoundRelay, RelayRefused> {
        let std_sock = match port {
            PortChoice::Any => bind_relay(&self.relay_cfg, family, false)?,
            PortChoice::Even => bind_relay(&self.relay_cfg, family, true)?,
            PortChoice::EvenReserveNext(token) => {
                let user = engine
                    .pending_user(&client)
                    .ok_or_else(|| io::Error::other("no pending Allocate"))?;
                // Refuse before binding anything: a user at the cap costs no bind calls.
                self.reservations.admits(user)?;
                let (even, odd) = bind_pair(&self.relay_cfg, family)?;
                self.reservations.hold(token.0, odd, user, now)?;
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
        let sref = socket2::SockRef::from(&std_sock);
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = sref.set_recv_buffer_size(self.relay_cfg.socket_buffer);
        let _ = sref.set_send_buffer_size(self.relay_cfg.socket_buffer);
        let mut io = mio::net::UdpSocket::from_std(std_sock);
        let mut socks = self.socks.borrow_mut();
        let entry = socks.slab.vacant_entry();
        let key = entry.key();
        self.registry
            .register(&mut io, Token(key), Interest::READABLE)?;
        entry.insert(Sock {
            io,
            kind: SockKind::Relay { client, bound },
            queued: false,
        });
        let handle = u32::try_from(key)
            .ok()
            .filter(|h| RelayHandle(*h) != TCP_RELAY_HANDLE)
            .ok_or_else(|| io::Error::other("too many relay sockets"));
        let handle = match handle {
            Ok(h) => RelayHandle(h),
            Err(e) => {
                socks.slab.remove(key);
                return Err(e.into());
            }
        };
        Ok(BoundRelay {
            addr: bound,
            handle,
        })
    }

    fn listener_fd(&self, local: SocketAddr) -> Option<RawFd> {
        self.socks.borrow().listeners.get(&local).copied()
    }

    fn send_to_client(&self, to: ClientAddr, bytes: &[u8]) {
        match to.transport {
            Transport::Udp => {
                if let Some(fd) = self.listener_fd(to.local) {
                    self.count_send(udp::send_one(fd, bytes, to.remote));
                }
            }
            Transport::Tcp | Transport::Tls => self.streams.push(&to, bytes),
            Transport::Dtls => self.dtls.send(&to, bytes),
        }
    }

    fn count_send(&self, ok: bool) {
        if !ok {
            let c = &self.udp.send_dropped;
            c.set(c.get() + 1);
        }
    }

    /// Serve one ready UDP socket for one turn: up to [`RECVS_PER_TURN`] batches, each
    /// handled datagram by datagram and flushed before the next is received.
    fn serve(self: &Rc<Self>, key: usize, batch: &mut RecvBatch, out: &mut SendQueue) -> Turn {
        let mut errors = 0;
        for _ in 0..RECVS_PER_TURN {
            let Some((fd, kind)) = self
                .socks
                .borrow()
                .slab
                .get(key)
                .map(|s| (s.io.as_raw_fd(), s.kind))
            else {
                return Turn::Drained;
            };
            // Relay sockets (a datagram or two per wake-up at moderate rates) receive into
            // the slots after the previous sockets' and their datagrams leave together (one
            // sendmmsg for many clients of a listener); a listener gets a whole batch.
            // Measured (2026-12-02, docs/benchmarks.md): over veth at 50k pkt/s this costs
            // 6.9 µs of server CPU per packet against 9.5 µs flushing every read (fewer
            // sends, fewer interrupts handing datagrams to the receiver's CPU); on loopback
            // it adds 15-20 µs to the median round trip at 10k pkt/s and over veth nothing.
            let relay = matches!(kind, SockKind::Relay { .. });
            if batch.free() < RELAY_ROOM || (!relay && !batch.is_empty()) {
                out.flush(batch.data());
                batch.clear();
            }
            let want = batch.free();
            let got = match batch.recv_more(fd) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Drained,
                // Other errors (ICMP-induced on unconnected sockets) concern one earlier
                // packet and are cleared by reading them; the queue may hold more, so read
                // again. Twice in a row: off the ready queue until the next event (never spin).
                Err(_) => {
                    errors += 1;
                    if errors > 1 {
                        return Turn::Drained;
                    }
                    continue;
                }
            };
            let n = got.len();
            self.udp.recv_calls.set(self.udp.recv_calls.get() + 1);
            self.udp.received.set(self.udp.received.get() + n as u64);
            let now = Instant::now();
            let end = match kind {
                SockKind::Listener { local } => self.on_listener_batch(now, local, batch, got, out),
                SockKind::Relay { client, bound } => {
                    self.on_relay_batch(now, client, bound, batch, got, out);
                    false
                }
                SockKind::Dtls { local } => {
                    self.on_dtls_batch(now, fd, local, batch, got);
                    false
                }
            };
            if !relay {
                out.flush(batch.data());
                batch.clear();
            }
            if end {
                return Turn::End;
            }
            // A short read means the queue was empty (recvmmsg with MSG_DONTWAIT reads
            // until EAGAIN; a datagram arriving later, or an error it stopped at, raises a
            // new edge-triggered readiness event): no second call to learn EAGAIN.
            if n < want {
                return Turn::Drained;
            }
        }
        Turn::More
    }

    /// Client datagrams from one listener: answers to the engine's control plane are
    /// flushed once per batch, relayed data goes to the send queue. True: end the loop
    /// (fault injection).
    fn on_listener_batch(
        self: &Rc<Self>,
        now: Instant,
        local: SocketAddr,
        batch: &mut RecvBatch,
        got: std::ops::Range<usize>,
        out: &mut SendQueue,
    ) -> bool {
        // One borrow of the engine and of the sockets for the whole batch (nothing in the
        // loop reaches them through the shard: the commands run in `flush_outputs`).
        let mut engine = self.engine.borrow_mut();
        {
            let socks = self.socks.borrow();
            for i in got {
                let (len, Some(remote)) = batch.datagram(i) else {
                    continue;
                };
                let Some(packet) = batch.slot_mut(i).get(HEADROOM..HEADROOM + len) else {
                    continue;
                };
                #[cfg(feature = "fault-injection")]
                {
                    use turnd_proto::engine::fault;
                    if packet.starts_with(fault::END_LISTENER) {
                        return true;
                    }
                    if packet.starts_with(fault::END_SHARD) {
                        self.fault_end_shard.notify_one();
                    }
                }
                let from = ClientAddr {
                    transport: Transport::Udp,
                    remote,
                    local,
                };
                self.guarded(kind_of(packet), || {
                    if packet.first().is_some_and(|b| *b < 0x40) {
                        // A STUN message (a Refresh(0) ends the allocation): the kernel's
                        // counts of this client's routes first.
                        self.fastpath.borrow_mut().fold_client(&mut engine, &from);
                    }
                    if let Some(to) = engine.handle_client(now, from, packet) {
                        if let Some(fd) = socks.relay_fd(to.handle, to.relay) {
                            let at = RecvBatch::slot_offset(i) + HEADROOM;
                            out.push(fd, to.peer.0, at + to.range.start..at + to.range.end);
                        }
                    }
                });
            }
        }
        self.guarded("flush", || self.flush_outputs(&mut engine, now));
        false
    }

    /// Datagrams on a DTLS listener: the stateless cookie layer and the sessions
    /// (`net::dtls`); decrypted datagrams go to the engine as UDP datagrams do, relayed
    /// data straight to its relay socket.
    fn on_dtls_batch(
        self: &Rc<Self>,
        now: Instant,
        fd: RawFd,
        local: SocketAddr,
        batch: &mut RecvBatch,
        got: std::ops::Range<usize>,
    ) {
        let mut app = std::mem::take(&mut *self.dtls_app.borrow_mut());
        app.clear();
        for i in got {
            let (len, Some(remote)) = batch.datagram(i) else {
                continue;
            };
            let Some(packet) = batch.slot_mut(i).get(HEADROOM..HEADROOM + len) else {
                continue;
            };
            self.guarded("DTLS record", || {
                self.dtls
                    .on_datagram(now, fd, local, remote, packet, &mut app)
            });
            for client in self.dtls.take_replaced() {
                self.client_closed(client);
            }
        }
        // The batch's plaintext, in order, as a stream read's frames are handled.
        let items = app.items.iter().map(|(remote, r)| {
            let from = ClientAddr {
                transport: Transport::Dtls,
                remote: *remote,
                local,
            };
            (from, r.clone())
        });
        self.relay_datagrams(now, &app.buf, items);
        *self.dtls_app.borrow_mut() = app;
    }

    /// DTLS retransmissions and timeouts; ended sessions free their allocations.
    fn dtls_tick(self: &Rc<Self>, now: Instant) {
        let ended = self
            .guarded("DTLS timer", || self.dtls.tick(now))
            .unwrap_or_default();
        for client in ended {
            self.client_closed(client);
        }
    }

    /// Peer datagrams from one relay socket of `client`'s allocation.
    fn on_relay_batch(
        &self,
        now: Instant,
        client: ClientAddr,
        bound: SocketAddr,
        batch: &mut RecvBatch,
        got: std::ops::Range<usize>,
        out: &mut SendQueue,
    ) {
        let listener = match client.transport {
            Transport::Udp => self.listener_fd(client.local),
            _ => None,
        };
        // One borrow of the engine for the whole batch (the stream and DTLS queues below do
        // not reach it).
        let mut engine = self.engine.borrow_mut();
        for i in got {
            let (len, Some(peer)) = batch.datagram(i) else {
                continue;
            };
            let slot = batch.slot_mut(i);
            self.guarded("peer datagram", || {
                let to =
                    engine.handle_peer(now, client, RelayAddr(bound), PeerAddr(peer), slot, len);
                if let Some(to) = to {
                    match (to.client.transport, listener) {
                        (Transport::Udp, Some(fd)) => {
                            let at = RecvBatch::slot_offset(i);
                            out.push(fd, to.client.remote, at + to.range.start..at + to.range.end)
                        }
                        (Transport::Udp, None) => {}
                        (Transport::Dtls, _) => {
                            if let Some(bytes) = slot.get(to.range) {
                                self.dtls.send(&to.client, bytes);
                            }
                        }
                        _ => {
                            if let Some(bytes) = slot.get(to.range) {
                                self.streams.push(&to.client, bytes);
                            }
                        }
                    }
                }
            });
        }
    }

    /// The shard's stream connections.
    pub(super) fn streams(&self) -> &StreamTable {
        &self.streams
    }

    /// Ask the shard that holds peer connection `id` for it (a ConnectionBind here), then
    /// answer the ConnectionBind.
    fn claim_remote(self: &Rc<Self>, id: ConnectionId, user: String, data: ClientAddr) {
        let owner = self
            .siblings
            .get()
            .and_then(|s| s.get(usize::from(id.shard())))
            .cloned();
        let shard = self.clone();
        tokio::task::spawn_local(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let asked = owner.is_some_and(|o| {
                o.send(ShardRequest::ClaimPeer {
                    id,
                    user,
                    data,
                    reply: tx,
                })
                .is_ok()
            });
            let answer = match asked {
                true => rx.await.ok(),
                false => None,
            };
            let claimed = matches!(answer, Some(Ok(_)));
            let result = match answer {
                Some(Ok((stream, stop))) => match shard.tcp.adopt(id, stream, stop) {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Refusal::ConnectionFailure),
                },
                Some(Err(why)) => Err(why),
                None => Err(turnd_proto::engine::BadRequest::ConnectionId.into()),
            };
            let spliced = result.is_ok();
            let waited = shard.engine_step("connection bind", |e, now| {
                e.peer_claimed(now, data, result)
            });
            if claimed && !(spliced && waited == Some(true)) {
                // Claimed, but not spliced here (the data connection went away meanwhile):
                // give it back to its owner, which closes it.
                super::tcp_relay::release(&shard, id);
            }
        });
    }

    /// Tell the shard that holds peer connection `id` that its splice here ended.
    pub(super) fn peer_closed_remote(&self, id: ConnectionId) {
        if let Some(owner) = self
            .siblings
            .get()
            .and_then(|s| s.get(usize::from(id.shard())))
        {
            let _ = owner.send(ShardRequest::PeerClosed(id));
        }
    }

    /// This shard's index, as [`ConnectionId::shard`] names it.
    pub(super) fn owns(&self, id: ConnectionId) -> bool {
        usize::from(id.shard()) == self.index % (1 << turnd_proto::engine::SHARD_BITS)
    }

    /// The shard's TCP relays (RFC 6062).
    pub(super) fn tcp(&self) -> &TcpRelays {
        &self.tcp
    }

    /// One engine input from the TCP relays, contained (`guarded`), its outputs flushed.
    pub(super) fn engine_step<T>(
        self: &Rc<Self>,
        what: &'static str,
        step: impl FnOnce(&mut Engine, Instant) -> T,
    ) -> Option<T> {
        let now = Instant::now();
        self.guarded(what, || {
            let mut engine = self.engine.borrow_mut();
            let v = step(&mut engine, now);
            self.flush_outputs(&mut engine, now);
            v
        })
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

    /// The complete frames of one read from a stream client (`frames` are ranges of `base`).
    pub(super) fn on_client_frames(
        self: &Rc<Self>,
        now: Instant,
        client: ClientAddr,
        base: &[u8],
        frames: &[std::ops::Range<usize>],
    ) {
        self.relay_datagrams(now, base, frames.iter().map(|r| (client, r.clone())));
    }

    /// Client datagrams that are ranges of `base` (a stream read's frames, a DTLS batch's
    /// plaintext), each with its sender: relayed data is queued per relay socket and sent with
    /// sendmmsg (GSO for equal-size runs), at most [`BATCH`] at a time; the engine's other
    /// outputs are flushed once.
    fn relay_datagrams(
        self: &Rc<Self>,
        now: Instant,
        base: &[u8],
        items: impl Iterator<Item = (ClientAddr, std::ops::Range<usize>)>,
    ) {
        let mut out = self.stream_out.borrow_mut();
        for (client, r) in items {
            let Some(frame) = base.get(r.clone()) else {
                continue;
            };
            if out.is_full() {
                out.flush(base);
            }
            self.guarded(kind_of(frame), || {
                let mut engine = self.engine.borrow_mut();
                if let Some(to) = engine.handle_client(now, client, frame) {
                    if let Some(fd) = self.socks.borrow().relay_fd(to.handle, to.relay) {
                        out.push(
                            fd,
                            to.peer.0,
                            r.start + to.range.start..r.start + to.range.end,
                        );
                    }
                }
            });
        }
        out.flush(base);
        self.udp.take_from(&mut out);
        drop(out);
        self.guarded("flush", || {
            let mut engine = self.engine.borrow_mut();
            self.flush_outputs(&mut engine, now);
        });
    }
}
