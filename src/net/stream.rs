//! Stream transports (TCP and TLS): one accept loop for both, STUN/ChannelData framing
//! (RFC 8656 §11.5), connection caps, timeouts, and a bounded write queue per connection.
//!
//! A connection's allocation belongs to it: when the connection ends, for whatever reason,
//! the engine frees the allocation and its relay port at once. A client that stops reading
//! fills only its own queue and is disconnected, at once, when the queue is full or when a
//! write has made no progress for `write_timeout`; nobody else waits, and the connection is
//! aborted (RST) so the kernel drops what it still held for it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use super::shard::Shard;
use crate::config::Streams;
use crate::tls::{log_handshake_failure, HandshakeFailure};
use turnd_proto::engine::{ClientAddr, Transport};

/// The largest STUN message a client may send on a stream other than a Send indication.
const MAX_STUN_REQUEST: usize = 8 * 1024;
/// The largest ChannelData payload or Send indication we accept on a stream: the largest
/// datagram a relay can send.
const MAX_PAYLOAD: usize = 65_507;

/// Why a stream was closed (logged at debug, counted by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    ByPeer,
    Garbage,
    Oversized,
    FirstFrameTimeout,
    Idle,
    WriteQueueFull,
    WriteTimeout,
    Io,
    ByServer,
    /// A ConnectionBind succeeded: the connection now carries raw bytes (RFC 6062).
    Spliced(turnd_proto::engine::ConnectionId),
}

/// The length of the complete frame at the start of `buf`, `Ok(None)` if more bytes are
/// needed, or why the stream must be closed. A length that does not fit the framing (not a
/// multiple of 4, over the caps) closes the stream: it is never resynchronised or truncated.
#[deny(clippy::indexing_slicing)]
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Closed> {
    let &[b0, b1, l0, l1, ref rest @ ..] = buf else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    match b0 >> 6 {
        0 => {
            if let Some(cookie) = rest.get(..4) {
                if cookie != stun::message::MAGIC_COOKIE.to_be_bytes() {
                    return Err(Closed::Garbage);
                }
            }
            let is_send = [b0, b1] == turnd_proto::engine::wire::MSG_SEND_INDICATION_BYTES;
            if len % 4 != 0 || (!is_send && 20 + len > MAX_STUN_REQUEST) || len > MAX_PAYLOAD + 48 {
                return Err(Closed::Oversized);
            }
            Ok((buf.len() >= 20 + len).then_some(20 + len))
        }
        1 => {
            // The first two bits 01 are exactly the channel range CHANNEL_MIN..=CHANNEL_MAX.
            if len > MAX_PAYLOAD {
                return Err(Closed::Oversized);
            }
            let total = 4 + ((len + 3) & !3);
            Ok((buf.len() >= total).then_some(total))
        }
        _ => Err(Closed::Garbage),
    }
}

/// The key the per-IP connection cap counts by: an IPv4 address (v4-mapped IPv6 unwrapped)
/// as it is, an IPv6 address by its /64, since one subscriber usually holds a whole /64 (as
/// the auth failure budget and the signaling limits count).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

/// Connection caps shared by all shards, touched only on accept and close. The per-IP cap
/// counts by [`ip_key`].
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection's place under the caps; gives it back when dropped.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let key = ip_key(ip);
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = by_ip.get(&key).copied().unwrap_or(0);
        if n >= self.max_per_ip || self.total.load(Ordering::Relaxed) >= self.max_total {
            return None;
        }
        by_ip.insert(key, n + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnSlot {
            limits: self.clone(),
            key,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut by_ip = self.limits.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.key);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sending side of one connection, as the shard sees it.
pub struct StreamConn {
    queue: RefCell<BytesMut>,
    limit: usize,
    ready: Notify,
    closed: Cell<Option<Closed>>,
    /// Woken when the queue overflows: the connection ends even while a write is stuck.
    overflow: Notify,
    /// Set by a successful ConnectionBind: splice with this peer connection.
    splice: Cell<Option<turnd_proto::engine::ConnectionId>>,
    /// Woken when `splice` is set from outside the read loop (a ConnectionBind answered by
    /// another shard).
    spliced: Notify,
}

impl StreamConn {
    fn new(limit: usize) -> Self {
        StreamConn {
            queue: RefCell::new(BytesMut::new()),
            limit,
            ready: Notify::new(),
            closed: Cell::new(None),
            overflow: Notify::new(),
            splice: Cell::new(None),
            spliced: Notify::new(),
        }
    }

    /// Resolves once the write queue has overflowed.
    async fn overflowed(&self) -> Closed {
        loop {
            if self.closed.get() == Some(Closed::WriteQueueFull) {
                return Closed::WriteQueueFull;
            }
            self.overflow.notified().await;
        }
    }

    /// Queue bytes for the client; a full queue closes the connection instead of waiting.
    pub fn push(&self, bytes: &[u8]) {
        if self.closed.get().is_some() {
            return;
        }
        let mut q = self.queue.borrow_mut();
        if q.len() + bytes.len() > self.limit {
            self.close(Closed::WriteQueueFull);
            self.overflow.notify_one();
            return;
        }
        q.extend_from_slice(bytes);
        self.ready.notify_one();
    }

    pub fn close(&self, why: Closed) {
        if self.closed.get().is_none() {
            self.closed.set(Some(why));
        }
        self.ready.notify_one();
    }
}

/// The shard's stream connections and what only they use: the connection table (by client
/// address), the stream settings, the server-wide caps, and the per-shard counters of refused
/// connections and failed handshakes. The shard owns one; this module keeps it up to date and
/// the shard reaches connections only through its methods.
pub struct StreamTable {
    conns: RefCell<HashMap<ClientAddr, Rc<StreamConn>>>,
    cfg: Streams,
    limits: Arc<ConnLimits>,
    redact: bool,
    handshake_failures: [Cell<u64>; HandshakeFailure::COUNT],
    refused: Cell<u64>,
}

impl StreamTable {
    pub fn new(cfg: Streams, limits: Arc<ConnLimits>, redact: bool) -> Self {
        StreamTable {
            conns: RefCell::new(HashMap::new()),
            cfg,
            limits,
            redact,
            handshake_failures: Default::default(),
            refused: Cell::new(0),
        }
    }

    /// Queue bytes for a stream client; nothing happens if it is gone.
    pub fn push(&self, to: &ClientAddr, bytes: &[u8]) {
        if let Some(c) = self.conns.borrow().get(to) {
            c.push(bytes);
        }
    }

    /// Close one connection (its task then frees the allocation).
    pub fn close(&self, client: &ClientAddr, why: Closed) {
        if let Some(c) = self.conns.borrow().get(client) {
            c.close(why);
        }
    }

    /// After the answer queued for it, `client`'s connection carries raw bytes to and from
    /// peer connection `id` (RFC 6062 ConnectionBind).
    pub fn splice(&self, client: &ClientAddr, id: turnd_proto::engine::ConnectionId) {
        if let Some(c) = self.conns.borrow().get(client) {
            c.splice.set(Some(id));
            c.spliced.notify_one();
        }
    }

    /// Close every connection (the shard stops).
    pub fn close_all(&self) {
        for (_, c) in self.conns.borrow_mut().drain() {
            c.close(Closed::ByServer);
        }
    }

    /// Open connections: [tcp, tls].
    pub fn open(&self) -> [u64; 2] {
        let conns = self.conns.borrow();
        let count = |t| conns.keys().filter(|c| c.transport == t).count() as u64;
        [count(Transport::Tcp), count(Transport::Tls)]
    }

    /// Failed TLS handshakes by reason (`HandshakeFailure::ALL` order).
    pub fn handshake_failures(&self) -> [u64; HandshakeFailure::COUNT] {
        self.handshake_failures.each_ref().map(Cell::get)
    }

    /// Connections refused by the caps.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }
}

/// Accept connections on one listener (TCP, or TLS when `tls` is set) for this shard.
pub async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    transport: Transport,
    tls: Option<TlsAcceptor>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%local, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let streams = shard.streams();
        let Some(slot) = streams.limits.acquire(remote.ip()) else {
            streams.refused.set(streams.refused.get() + 1);
            tracing::debug!(%local, "connection refused: connection cap reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let client = ClientAddr {
            transport,
            remote,
            local,
        };
        let shard = shard.clone();
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            match tls {
                None => serve(shard, client, tcp).await,
                Some(acceptor) => serve_tls(shard, client, tcp, acceptor).await,
            }
        });
    }
}

/// Run the TLS handshake (within `handshake_timeout`), then serve; a failure is counted by
/// reason and logged at most once per interval and reason.
async fn serve_tls(shard: Rc<Shard>, client: ClientAddr, tcp: TcpStream, acceptor: TlsAcceptor) {
    let streams = shard.streams();
    let timeout = streams.cfg.handshake_timeout;
    let (why, error) = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => return serve(shard, client, stream).await,
        Ok(Err(e)) => (HandshakeFailure::of(&e), Some(e)),
        Err(_) => (HandshakeFailure::Timeout, None),
    };
    let n = &streams.handshake_failures[why.index()];
    n.set(n.get() + 1);
    let who = crate::telemetry::Redactor::new(streams.redact).addr(&client.remote);
    log_handshake_failure(why, &who, error.as_ref());
}

/// The TCP socket under a stream (plain or TLS), to abort it.
trait TcpOf {
    fn tcp(&self) -> &TcpStream;
}

impl TcpOf for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl TcpOf for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Serve one established stream until it closes, then free its allocation.
async fn serve<S>(shard: Rc<Shard>, client: ClientAddr, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + TcpOf,
{
    let streams = shard.streams();
    let cfg = &streams.cfg;
    let conn = Rc::new(StreamConn::new(cfg.write_queue_bytes));
    streams.conns.borrow_mut().insert(client, conn.clone());
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = BytesMut::with_capacity(4096);
    let why = tokio::select! {
        why = read_loop(&shard, client, &mut rd, &conn, &mut buf) => why,
        why = write_loop(&conn, &mut wr, cfg.write_timeout) => why,
        why = conn.overflowed() => why,
    };
    let mut io = rd.unsplit(wr);
    match why {
        // The client stopped reading: abort (RST) so that the kernel frees what it still
        // holds for it now, not after minutes of zero-window probes.
        Closed::WriteQueueFull | Closed::WriteTimeout => {
            let _ = socket2::SockRef::from(io.tcp()).set_linger(Some(Duration::ZERO));
        }
        Closed::Io => {}
        Closed::Spliced(id) => {
            // The ConnectionBind answer first, then raw bytes both ways.
            let rest = conn.queue.borrow_mut().split();
            let answered = tokio::time::timeout(cfg.write_timeout, async {
                io.write_all(&rest).await?;
                io.flush().await
            })
            .await;
            if matches!(answered, Ok(Ok(()))) {
                super::tcp_relay::splice(&shard, id, &mut io, &buf).await;
            } else {
                super::tcp_relay::release(&shard, id);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        }
        // Answers queued before a protocol error (e.g. the error response) still go out.
        _ => {
            let rest = conn.queue.borrow_mut().split();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = io.write_all(&rest).await;
                let _ = io.shutdown().await;
            })
            .await;
        }
    }
    drop(io);
    if let (Some(id), false) = (conn.splice.get(), matches!(why, Closed::Spliced(_))) {
        // Bound, but the connection ended before its splice began.
        super::tcp_relay::release(&shard, id);
    }
    streams.conns.borrow_mut().remove(&client);
    shard.client_closed(client);
    tracing::debug!(
        client = %crate::telemetry::redact_addr(&client.remote, streams.redact),
        transport = client.transport.as_str(),
        reason = ?why,
        "stream closed"
    );
}

async fn read_loop<R: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    client: ClientAddr,
    mut rd: R,
    conn: &StreamConn,
    buf: &mut BytesMut,
) -> Closed {
    let cfg = &shard.streams().cfg;
    let mut got_frame = false;
    let mut deadline = tokio::time::Instant::now() + cfg.first_frame_timeout;
    // The complete frames of one read, as ranges of `buf`: handled together, so that the data
    // they carry to one relay socket leaves in one sendmmsg (see `Shard::on_client_frames`).
    let mut frames = Vec::new();
    loop {
        let mut end = 0;
        let mut error = None;
        loop {
            match frame_len(buf.get(end..).unwrap_or_default()) {
                Ok(Some(n)) => {
                    frames.push(end..end + n);
                    end += n;
                }
                Ok(None) => break,
                Err(why) => {
                    error = Some(why);
                    break;
                }
            }
        }
        if !frames.is_empty() {
            got_frame = true;
            deadline = tokio::time::Instant::now() + cfg.idle_timeout;
            shard.on_client_frames(Instant::now(), client, &buf[..end], &frames);
            frames.clear();
            let _ = buf.split_to(end);
            if let Some(id) = conn.splice.get() {
                // What follows the ConnectionBind is raw data: it stays in `buf`.
                return Closed::Spliced(id);
            }
        }
        if let Some(why) = error {
            return why;
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(4096);
        }
        tokio::select! {
            r = rd.read_buf(buf) => match r {
                Ok(0) => return Closed::ByPeer,
                Ok(_) => {}
                Err(_) => return Closed::Io,
            },
            _ = conn.spliced.notified() => {
                if let Some(id) = conn.splice.get() {
                    return Closed::Spliced(id);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if !got_frame {
                    return Closed::FirstFrameTimeout;
                }
                if !shard.has_allocation(&client) {
                    return Closed::Idle;
                }
                deadline = tokio::time::Instant::now() + cfg.idle_timeout;
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    conn: &StreamConn,
    wr: &mut W,
    timeout: Duration,
) -> Closed {
    loop {
        conn.ready.notified().await;
        loop {
            if let Some(why) = conn.closed.get() {
                return why;
            }
            let chunk = conn.queue.borrow_mut().split();
            if chunk.is_empty() {
                break;
            }
            if let Err(why) = write_chunk(wr, &chunk, timeout).await {
                return why;
            }
        }
    }
}

/// Write all of `chunk` and flush; every single write (and the flush) must make progress
/// within `timeout`, or the client is taken to have stopped reading.
async fn write_chunk<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut chunk: &[u8],
    timeout: Duration,
) -> Result<(), Closed> {
    let failed = |e: io::Error| {
        if e.kind() == io::ErrorKind::WriteZero {
            Closed::ByPeer
        } else {
            Closed::Io
        }
    };
    while !chunk.is_empty() {
        match tokio::time::timeout(timeout, wr.write(chunk)).await {
            Err(_) => return Err(Closed::WriteTimeout),
            Ok(Ok(0)) => return Err(Closed::ByPeer),
            Ok(Ok(n)) => chunk = chunk.get(n..).unwrap_or_default(),
            Ok(Err(e)) => return Err(failed(e)),
        }
    }
    match tokio::time::timeout(timeout, wr.flush()).await {
        Err(_) => Err(Closed::WriteTimeout),
        Ok(Err(e)) => Err(failed(e)),
        Ok(Ok(())) => Ok(()),
    }
}

/// A TCP listener socket for one shard (SO_REUSEPORT spreads connections over shards).
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
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
    s.listen(1024)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(len: u16, typ: u16) -> Vec<u8> {
        let mut v = typ.to_be_bytes().to_vec();
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&stun::message::MAGIC_COOKIE.to_be_bytes());
        v.extend_from_slice(&[0; 12]);
        v.resize(20 + usize::from(len), 0);
        v
    }

    #[test]
    fn framing() {
        assert_eq!(frame_len(&[0x00, 0x01]), Ok(None));
        let s = stun(8, 0x0001);
        assert_eq!(frame_len(&s[..19]), Ok(None));
        assert_eq!(frame_len(&s), Ok(Some(28)));
        let mut two = s.clone();
        two.extend_from_slice(&s);
        assert_eq!(
            frame_len(&two),
            Ok(Some(28)),
            "coalesced: the first frame only"
        );
        // ChannelData is padded to 4 on streams.
        assert_eq!(
            frame_len(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5]),
            Ok(None)
        );
        assert_eq!(
            frame_len(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]),
            Ok(Some(12))
        );
        assert_eq!(
            frame_len(&[0x3F, 0xFF, 0x00, 0x04, 0, 0, 0, 0]),
            Err(Closed::Garbage),
            "STUN-shaped, no cookie"
        );
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Err(Closed::Garbage));
        assert_eq!(frame_len(&[0xC0, 1, 2, 3]), Err(Closed::Garbage));
        // A TLS ClientHello on a plain TCP port: STUN-shaped, but no magic cookie.
        assert_eq!(
            frame_len(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC]),
            Err(Closed::Garbage)
        );
        assert_eq!(frame_len(&[0x40, 0x00, 0xFF, 0xFF]), Err(Closed::Oversized));
        assert_eq!(frame_len(&stun(8192, 0x0003)[..8]), Err(Closed::Oversized));
        assert_eq!(
            frame_len(&stun(8192, 0x0016)[..8]),
            Ok(None),
            "Send may be large"
        );
        let mut bad = stun(8, 1);
        bad[4] = 0;
        assert_eq!(frame_len(&bad), Err(Closed::Garbage), "wrong cookie");
    }

    #[test]
    fn lengths_that_do_not_fit_the_framing_close_and_the_largest_send_frames_whole() {
        // Not a multiple of 4: closed, even before the cookie arrived.
        assert_eq!(frame_len(&[0x00, 0x01, 0x00, 0x05]), Err(Closed::Oversized));
        assert_eq!(frame_len(&stun(6, 0x0001)), Err(Closed::Oversized));
        // A request longer than the cap: closed at its header, never a partial frame.
        assert_eq!(frame_len(&stun(8192, 0x0003)), Err(Closed::Oversized));
        // The largest Send indication (20 + 65,532 bytes) is one whole frame.
        let big = stun(65_532, 0x0016);
        assert_eq!(frame_len(&big[..big.len() - 1]), Ok(None));
        assert_eq!(frame_len(&big), Ok(Some(20 + 65_532)));
        // ChannelData over the relay limit: closed.
        assert_eq!(
            frame_len(&[0x40, 0x00, 0xFF, 0xE4]),
            Err(Closed::Oversized),
            "65,508 > 65,507"
        );
    }

    proptest::proptest! {
        /// Any sequence of valid frames, delivered in arbitrary chunks, is split back into
        /// exactly those frames: no desynchronisation, no truncation.
        #[test]
        fn frames_in_arbitrary_chunks_split_back_exactly(
            frames in proptest::collection::vec((0u8..3, 0u16..3000), 1..20),
            chunks in proptest::collection::vec(1usize..5000, 1..40),
        ) {
            let frames: Vec<Vec<u8>> = frames
                .into_iter()
                .map(|(kind, n)| match kind {
                    0 => stun(n & !3 & 0x1FFF, 0x0001),
                    1 => stun(n & !3, 0x0016),
                    _ => {
                        let mut v = vec![0x40, 0x01];
                        v.extend_from_slice(&n.to_be_bytes());
                        v.resize(4 + ((usize::from(n) + 3) & !3), 7);
                        v
                    }
                })
                .filter(|f| f.len() <= 20 + 8192 || f[..2] != [0x00, 0x01])
                .collect();
            let stream: Vec<u8> = frames.concat();
            let (mut buf, mut got, mut at, mut i) = (Vec::new(), Vec::new(), 0, 0);
            while at < stream.len() {
                let n = chunks[i % chunks.len()].min(stream.len() - at);
                buf.extend_from_slice(&stream[at..at + n]);
                at += n;
                i += 1;
                while let Some(len) = frame_len(&buf).unwrap() {
                    got.push(buf.drain(..len).collect::<Vec<u8>>());
                }
            }
            proptest::prop_assert!(buf.is_empty());
            proptest::prop_assert_eq!(got, frames);
        }
    }

    #[test]
    fn connection_caps() {
        let l = ConnLimits::new(3, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = l.acquire(ip).unwrap();
        let _b = l.acquire(ip).unwrap();
        assert!(l.acquire(ip).is_none(), "per IP");
        let _c = l.acquire("192.0.2.2".parse().unwrap()).unwrap();
        assert!(l.acquire("192.0.2.3".parse().unwrap()).is_none(), "total");
        drop(a);
        assert!(l.acquire("192.0.2.3".parse().unwrap()).is_some());
    }

    #[test]
    fn per_ip_cap_counts_ipv6_by_slash64_and_mapped_ipv4_as_ipv4() {
        let l = ConnLimits::new(100, 2);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _a = l.acquire(ip("2001:db8:1:2::1")).unwrap();
        let b = l.acquire(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")).unwrap();
        assert!(l.acquire(ip("2001:db8:1:2:aaaa::3")).is_none(), "same /64");
        assert!(l.acquire(ip("2001:db8:1:3::1")).is_some(), "next /64");
        drop(b);
        assert!(
            l.acquire(ip("2001:db8:1:2::9")).is_some(),
            "place given back"
        );
        let _v4 = l.acquire(ip("192.0.2.7")).unwrap();
        let _mapped = l.acquire(ip("::ffff:192.0.2.7")).unwrap();
        assert!(
            l.acquire(ip("192.0.2.7")).is_none(),
            "v4-mapped is the same IPv4"
        );
        assert!(l.acquire(ip("192.0.2.8")).is_some(), "IPv4: exact address");
        assert!(l.by_ip.lock().unwrap().len() <= 4);
    }

    #[test]
    fn full_write_queue_closes_instead_of_growing() {
        let c = StreamConn::new(10);
        c.push(&[0; 6]);
        assert_eq!(c.closed.get(), None);
        c.push(&[0; 6]);
        assert_eq!(c.closed.get(), Some(Closed::WriteQueueFull));
        assert_eq!(c.queue.borrow().len(), 6);
    }
}
