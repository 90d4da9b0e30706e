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
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::config::{Relay as RelayConfig, Streams};
use crate::engine::{
    ClientAddr, Command, Engine, EngineStats, Family, MetricsSnapshot, PortChoice, SessionInfo,
    Shared, Transport, HEADROOM, TAILROOM,
};

use super::relay::{bind_pair, bind_relay, Reservations};
use super::stream::{accept_loop, Closed, ConnLimits, StreamConn};
use super::tls::HandshakeFailure;

/// Largest datagram we receive: a UDP payload is at most 65535 bytes.
const MAX_DATAGRAM: usize = 65535;

/// Requests from other threads (stats, admin, reload, stop).
pub enum ShardRequest {
    Stats(std::sync::mpsc::Sender<EngineStats>),
    Metrics(std::sync::mpsc::Sender<ShardMetrics>),
    Sessions(Option<String>, std::sync::mpsc::Sender<Vec<SessionInfo>>),
    KillSession(u64, std::sync::mpsc::Sender<bool>),
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
}

struct RelaySocket {
    socket: Rc<UdpSocket>,
    task: JoinHandle<()>,
}

pub struct Shard {
    pub(super) engine: RefCell<Engine>,
    relay_cfg: RelayConfig,
    udp_listeners: HashMap<SocketAddr, Rc<UdpSocket>>,
    relays: RefCell<HashMap<SocketAddr, RelaySocket>>,
    pub(super) streams: RefCell<HashMap<ClientAddr, Rc<StreamConn>>>,
    pub(super) streams_cfg: Streams,
    pub(super) conn_limits: Arc<ConnLimits>,
    reservations: Arc<Reservations>,
    pub(super) redact: bool,
    pub(super) handshake_failures: [Cell<u64>; HandshakeFailure::COUNT],
    pub(super) connections_refused: Cell<u64>,
    buf: RefCell<Box<[u8]>>,
    timer_changed: Notify,
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
            streams: RefCell::new(HashMap::new()),
            streams_cfg: setup.streams_cfg,
            conn_limits: setup.conn_limits,
            reservations: setup.reservations,
            redact: setup.redact,
            handshake_failures: Default::default(),
            connections_refused: Cell::new(0),
            buf: RefCell::new(vec![0u8; HEADROOM + MAX_DATAGRAM + TAILROOM].into_boxed_slice()),
            timer_changed: Notify::new(),
        });
        for (addr, sock) in &shard.udp_listeners {
            tokio::task::spawn_local(udp_listener(shard.clone(), *addr, sock.clone()));
        }
        for (listener, transport) in setup.tcp {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let tls = if transport == Transport::Tls {
                setup.tls.clone()
            } else {
                None
            };
            tokio::task::spawn_local(accept_loop(shard.clone(), listener, transport, tls));
        }
        tokio::task::spawn_local(timer(shard.clone()));
        while let Some(req) = requests.recv().await {
            if !shard.answer(req) {
                break;
            }
        }
        // Dropping the LocalSet drops every task and with them every socket.
        for (_, r) in shard.relays.borrow_mut().drain() {
            r.task.abort();
        }
        for (_, c) in shard.streams.borrow_mut().drain() {
            c.close(Closed::ByServer);
        }
        Ok(())
    })
}

/// Send a datagram now or drop it: a plain non-blocking sendto. (tokio's `try_send_to`
/// reports WouldBlock until its reactor has seen the socket writable once, which would drop
/// the first packets of every new relay.)
fn send_now(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket2::SockRef::from(sock).send_to(bytes, &to.into());
}

async fn udp_listener(shard: Rc<Shard>, local: SocketAddr, sock: Rc<UdpSocket>) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let now = Instant::now();
        loop {
            let mut buf = shard.buf.borrow_mut();
            let (n, remote) = match sock.try_recv_from(&mut buf[..MAX_DATAGRAM]) {
                Ok(r) => r,
                // WouldBlock: drained. Other errors (ICMP-induced on unconnected sockets)
                // concern one packet; readiness stays set, so the next wake-up goes on.
                Err(_) => break,
            };
            let from = ClientAddr {
                transport: Transport::Udp,
                remote,
                local,
            };
            let mut engine = shard.engine.borrow_mut();
            if let Some(out) = engine.handle_client(now, from, &buf[..n]) {
                if let Some(r) = shard.relays.borrow().get(&out.relay) {
                    send_now(&r.socket, &buf[out.range], out.peer);
                }
            }
            drop(buf);
            shard.drain(&mut engine, now);
        }
    }
}

/// Datagrams from peers on one relay socket of `client`'s allocation.
async fn relay_reader(
    shard: Rc<Shard>,
    client: ClientAddr,
    bound: SocketAddr,
    sock: Rc<UdpSocket>,
) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let now = Instant::now();
        loop {
            let mut buf = shard.buf.borrow_mut();
            let (n, peer) = match sock.try_recv_from(&mut buf[HEADROOM..HEADROOM + MAX_DATAGRAM]) {
                Ok(r) => r,
                Err(_) => break,
            };
            let mut engine = shard.engine.borrow_mut();
            if let Some(out) = engine.handle_peer(now, client, bound, peer, &mut buf, n) {
                shard.send_to_client(out.client, &buf[out.range]);
            }
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
                let mut engine = shard.engine.borrow_mut();
                engine.handle_timeout(now);
                shard.drain(&mut engine, now);
            }
            _ = shard.timer_changed.notified() => {}
        }
    }
}

impl Shard {
    /// Serve one request from another thread; false means: stop.
    fn answer(self: &Rc<Self>, req: ShardRequest) -> bool {
        let now = Instant::now();
        match req {
            ShardRequest::Stats(reply) => {
                let _ = reply.send(self.engine.borrow().stats());
            }
            ShardRequest::Metrics(reply) => {
                let streams = self.streams.borrow();
                let count = |t| streams.keys().filter(|c| c.transport == t).count() as u64;
                let _ = reply.send(ShardMetrics {
                    engine: self.engine.borrow().metrics_snapshot(),
                    streams_open: [count(Transport::Tcp), count(Transport::Tls)],
                    handshake_failures: self.handshake_failures.each_ref().map(Cell::get),
                    connections_refused: self.connections_refused.get(),
                });
            }
            ShardRequest::Sessions(user, reply) => {
                let _ = reply.send(self.engine.borrow().sessions(now, user.as_deref()));
            }
            ShardRequest::KillSession(id, reply) => {
                let mut engine = self.engine.borrow_mut();
                let _ = reply.send(engine.kill_session(now, id));
                self.drain(&mut engine, now);
            }
            ShardRequest::KillUser(user, reply) => {
                let mut engine = self.engine.borrow_mut();
                let _ = reply.send(engine.kill_user(now, &user));
                self.drain(&mut engine, now);
            }
            ShardRequest::Reload(shared) => self.engine.borrow_mut().set_shared(shared),
            ShardRequest::Drain => self.engine.borrow_mut().set_draining(true),
            ShardRequest::Stop => return false,
        }
        true
    }

    /// Carry out the engine's commands and send its control-plane messages.
    pub(super) fn drain(self: &Rc<Self>, engine: &mut Engine, now: Instant) {
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
        if any {
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
                    .map(|f| match self.open_relay(client, *f, port, now) {
                        Ok(a) => Some(a),
                        Err(e) => {
                            tracing::warn!(error = %e, family = ?f, "cannot bind a relay socket");
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
            Command::CloseClient(client) => {
                if let Some(c) = self.streams.borrow().get(&client) {
                    c.close(Closed::ByServer);
                }
            }
        }
    }

    fn open_relay(
        self: &Rc<Self>,
        client: ClientAddr,
        family: Family,
        port: PortChoice,
        now: Instant,
    ) -> io::Result<SocketAddr> {
        let std_sock = match port {
            PortChoice::Any => bind_relay(&self.relay_cfg, family, false)?,
            PortChoice::Even => bind_relay(&self.relay_cfg, family, true)?,
            PortChoice::EvenReserveNext(token) => {
                let (even, odd) = bind_pair(&self.relay_cfg, family)?;
                if !self.reservations.hold(token, odd, now) {
                    return Err(io::Error::other("too many port reservations"));
                }
                even
            }
            PortChoice::Reserved(token) => {
                self.reservations.take(&token, now).ok_or_else(|| {
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
            Transport::Tcp | Transport::Tls => {
                if let Some(c) = self.streams.borrow().get(&to) {
                    c.push(bytes);
                }
            }
        }
    }

    /// One complete frame from a stream client.
    pub(super) fn on_client_frame(self: &Rc<Self>, client: ClientAddr, frame: &[u8]) {
        let now = Instant::now();
        let mut engine = self.engine.borrow_mut();
        if let Some(out) = engine.handle_client(now, client, frame) {
            if let Some(r) = self.relays.borrow().get(&out.relay) {
                send_now(&r.socket, &frame[out.range], out.peer);
            }
        }
        self.drain(&mut engine, now);
    }
}
