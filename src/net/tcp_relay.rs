//! RFC 6062 TCP relays, the sockets of the engine's `engine/tcp_relay.rs`: a TCP listener on
//! each TCP allocation's relayed address, outgoing connections to peers (Connect), the peer
//! connections waiting for their ConnectionBind, and the splice of a bound peer connection
//! with its client data connection.
//!
//! The splice copies raw bytes with one bounded buffer per direction
//! ([`SPLICE_BUFFER`], `tokio::io::copy_bidirectional_with_sizes`): a side that stops reading
//! stops the copy towards it, so TCP flow control pushes back on the other side; memory never
//! grows with a slow reader. A peer connection waiting for its ConnectionBind is not read at
//! all (the kernel's receive buffer holds what the peer sent).
//!
//! The outgoing connection binds the relayed address (RFC 6062 §5.2: the peer sees the
//! relayed transport address), so the listener and the outgoing sockets share the port with
//! SO_REUSEADDR and SO_REUSEPORT. That the port is not another allocation's listener is then
//! checked against the process-wide set [`PORTS`], not by the kernel.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::relay::bind_in_range;
use super::shard::Shard;
use crate::config::Relay as RelayConfig;
use turnd_proto::engine::{
    BadRequest, ClientAddr, ConnectionId, Family, PeerAddr, Refusal, RelayAddr, CONNECT_TIMEOUT,
};

/// Bytes buffered per direction of a spliced connection.
pub const SPLICE_BUFFER: usize = 64 * 1024;

/// TCP relay addresses listening now, across the shards (see the module doc).
static PORTS: Mutex<Option<HashSet<SocketAddr>>> = Mutex::new(None);

/// Holds a relayed address in [`PORTS`] while its listener lives.
struct PortGuard(SocketAddr);

impl PortGuard {
    fn claim(addr: SocketAddr) -> Option<PortGuard> {
        let mut ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        ports
            .get_or_insert_with(HashSet::new)
            .insert(addr)
            .then_some(PortGuard(addr))
    }
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        let mut ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = ports.as_mut() {
            p.remove(&self.0);
        }
    }
}

fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// One peer connection, as the shard holds it.
enum Peer {
    /// The outgoing connection is being made.
    Connecting(AbortHandle),
    /// Established, waiting for its ConnectionBind (not read).
    Waiting(TcpStream),
    /// Spliced here; notified to stop.
    Spliced(Arc<Notify>),
    /// Claimed by another shard's ConnectionBind and spliced there (counted there);
    /// notified to stop.
    Lent(Arc<Notify>),
    /// Another shard's connection, handed over for a ConnectionBind here; `Arc`: that
    /// shard's stop.
    Adopted(TcpStream, Arc<Notify>),
}

/// The shard's TCP relay listeners and peer connections.
#[derive(Default)]
pub struct TcpRelays {
    listeners: RefCell<HashMap<SocketAddr, AbortHandle>>,
    peers: RefCell<HashMap<ConnectionId, Peer>>,
}

impl TcpRelays {
    /// Listen on a relayed address of `family` for `client`'s TCP allocation.
    pub fn open(
        &self,
        shard: &Rc<Shard>,
        cfg: &RelayConfig,
        client: ClientAddr,
        family: Family,
    ) -> io::Result<SocketAddr> {
        let (sock, guard) = bind_in_range(cfg, family, |addr| {
            let guard = PortGuard::claim(addr).ok_or_else(|| {
                io::Error::new(io::ErrorKind::AddrInUse, "another TCP relay's port")
            })?;
            let s = tcp_socket(addr)?;
            s.listen(128)?;
            Ok((s, guard))
        })?;
        let bound = guard.0;
        let listener = TcpListener::from_std(sock.into())?;
        let task = tokio::task::spawn_local(accept_loop(shard.clone(), listener, client, guard));
        self.listeners
            .borrow_mut()
            .insert(bound, task.abort_handle());
        Ok(bound)
    }

    /// Close the listener at `bound` (the allocation ended); false if there is none.
    pub fn release(&self, bound: &SocketAddr) -> bool {
        match self.listeners.borrow_mut().remove(bound) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Connect from `relay` to `peer`, then tell the engine.
    pub fn connect(&self, shard: &Rc<Shard>, id: ConnectionId, relay: RelayAddr, peer: PeerAddr) {
        let task = tokio::task::spawn_local(connect_task(shard.clone(), id, relay.0, peer.0));
        self.peers
            .borrow_mut()
            .insert(id, Peer::Connecting(task.abort_handle()));
    }

    /// Close peer connection `id`, stopping its connect or its splice.
    pub fn close(&self, id: ConnectionId) {
        let peer = self.peers.borrow_mut().remove(&id);
        match peer {
            Some(Peer::Connecting(task)) => task.abort(),
            Some(Peer::Spliced(stop) | Peer::Lent(stop)) => stop.notify_one(),
            Some(Peer::Waiting(_) | Peer::Adopted(..)) | None => {}
        }
    }

    /// The waiting (or adopted) peer connection `id`, now to be spliced, and what stops it.
    fn take_for_splice(&self, id: ConnectionId) -> Option<(TcpStream, Arc<Notify>)> {
        let mut peers = self.peers.borrow_mut();
        let (s, stop) = match peers.remove(&id) {
            Some(Peer::Waiting(s)) => (s, Arc::new(Notify::new())),
            Some(Peer::Adopted(s, stop)) => (s, stop),
            Some(other) => {
                peers.insert(id, other);
                return None;
            }
            None => return None,
        };
        peers.insert(id, Peer::Spliced(stop.clone()));
        Some((s, stop))
    }

    /// Another shard's ConnectionBind claims waiting connection `id`: the engine checks it,
    /// then its socket leaves this shard (its stop stays here, for `ClosePeer`).
    pub fn claim(
        &self,
        shard: &Rc<Shard>,
        id: ConnectionId,
        user: &str,
        data: ClientAddr,
    ) -> Result<(std::net::TcpStream, Arc<Notify>), Refusal> {
        let waiting = matches!(self.peers.borrow().get(&id), Some(Peer::Waiting(_)));
        if !waiting {
            return Err(BadRequest::ConnectionId.into());
        }
        shard
            .engine_step("connection claim", |e, now| {
                e.claim_peer(now, id, user, data)
            })
            .unwrap_or(Err(BadRequest::ConnectionId.into()))?;
        let stop = Arc::new(Notify::new());
        let stream = match self.peers.borrow_mut().insert(id, Peer::Lent(stop.clone())) {
            Some(Peer::Waiting(s)) => s,
            _ => return Err(BadRequest::ConnectionId.into()),
        };
        match stream.into_std() {
            Ok(s) => Ok((s, stop)),
            Err(_) => {
                self.peers.borrow_mut().remove(&id);
                shard.engine_step("peer closed", |e, now| e.peer_closed(now, id));
                Err(Refusal::ConnectionFailure)
            }
        }
    }

    /// Keep another shard's peer connection, claimed for a ConnectionBind here.
    pub fn adopt(
        &self,
        id: ConnectionId,
        stream: std::net::TcpStream,
        stop: Arc<Notify>,
    ) -> io::Result<()> {
        let s = TcpStream::from_std(stream)?;
        self.peers.borrow_mut().insert(id, Peer::Adopted(s, stop));
        Ok(())
    }

    /// Forget `id` after its splice ended; true if it was still known.
    pub fn forget(&self, id: ConnectionId) -> bool {
        self.peers.borrow_mut().remove(&id).is_some()
    }

    /// Close everything (the shard stops).
    pub fn close_all(&self) {
        for (_, t) in self.listeners.borrow_mut().drain() {
            t.abort();
        }
        let peers: Vec<_> = self.peers.borrow_mut().drain().collect();
        for (_, p) in peers {
            match p {
                Peer::Connecting(t) => t.abort(),
                Peer::Spliced(stop) | Peer::Lent(stop) => stop.notify_one(),
                Peer::Waiting(_) | Peer::Adopted(..) => {}
            }
        }
    }

    /// (listeners, peer connections) held now.
    pub fn counts(&self) -> (usize, usize) {
        (self.listeners.borrow().len(), self.peers.borrow().len())
    }

    /// Peer connections open in this shard (`turnd_tcp_relay_connections`): connected or
    /// accepted and waiting for their ConnectionBind, adopted, or spliced here; not those
    /// still connecting, nor those lent to another shard (counted there).
    pub fn open_connections(&self) -> u64 {
        let peers = self.peers.borrow();
        let open = peers
            .values()
            .filter(|p| matches!(p, Peer::Waiting(_) | Peer::Adopted(..) | Peer::Spliced(_)));
        open.count() as u64
    }

    fn waiting(&self, id: ConnectionId, s: TcpStream) {
        self.peers.borrow_mut().insert(id, Peer::Waiting(s));
    }
}

/// Close a refused connection with RST (nothing was read or written).
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    client: ClientAddr,
    _port: PortGuard,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = shard
            .engine_step("inbound peer connection", |e, now| {
                e.peer_inbound(now, client, PeerAddr(peer))
            })
            .flatten();
        match id {
            Some(id) => shard.tcp().waiting(id, stream),
            None => reset(stream),
        }
    }
}

async fn connect_task(shard: Rc<Shard>, id: ConnectionId, relay: SocketAddr, peer: SocketAddr) {
    let attempt = async {
        let s = tcp_socket(relay)?;
        let s = tokio::net::TcpSocket::from_std_stream(s.into());
        s.connect(peer).await
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    };
    // This task ends here: it is no longer the connection's to abort.
    shard.tcp().forget(id);
    let ok = stream.is_some();
    let keep = shard
        .engine_step("peer connected", |e, now| e.peer_connected(now, id, ok))
        .unwrap_or(false);
    if let Some(s) = stream {
        if keep {
            let _ = s.set_nodelay(true);
            shard.tcp().waiting(id, s);
        } else {
            reset(s);
        }
    }
}

/// Copy raw bytes between a client data connection and the peer connection `id` until one
/// side ends or the engine closes the connection; `early` are bytes the client sent after
/// its ConnectionBind, before the answer. Then tell the engine.
pub async fn splice<S>(shard: &Rc<Shard>, id: ConnectionId, client: &mut S, early: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if let Some((mut peer, stop)) = shard.tcp().take_for_splice(id) {
        let run = async {
            if !early.is_empty() {
                peer.write_all(early).await?;
            }
            tokio::io::copy_bidirectional_with_sizes(
                client,
                &mut peer,
                SPLICE_BUFFER,
                SPLICE_BUFFER,
            )
            .await
        };
        tokio::select! {
            _ = run => {}
            _ = stop.notified() => {}
        }
    }
    release(shard, id);
}

/// Peer connection `id` is done here (its splice ended, or it never started): drop what
/// this shard holds of it and tell the engine that owns it.
pub fn release(shard: &Rc<Shard>, id: ConnectionId) {
    let known = shard.tcp().forget(id);
    if !shard.owns(id) {
        shard.peer_closed_remote(id);
    } else if known {
        shard.engine_step("peer closed", |e, now| e.peer_closed(now, id));
    }
}
