//! Batched UDP I/O for a shard's loop: `recvmmsg(2)` into fixed slots, `sendmmsg(2)` out of
//! them, and UDP GSO (`UDP_SEGMENT`) for runs of equal-size datagrams to one destination (the last of a run may be shorter).
//!
//! Hand-written rather than `quinn-udp`: quinn-udp sends one destination per call (one
//! `sendmsg`, with GSO), while a shard's answers to many clients leave one listener socket and
//! go out best in one `sendmmsg`; and the relay path needs every datagram received at an
//! offset ([`HEADROOM`]) so that the ChannelData or Data-indication header is written in
//! place, without a copy.
//!
//! Every datagram of a batch lives in its own slot of one buffer allocated once per shard;
//! the engine's answers name byte ranges of those slots, so a batch is received, handled and
//! flushed before the next one is received. Nothing waits for a batch to fill: a `recvmmsg`
//! returns what is queued, and what it returned is sent at once.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use turnd_proto::engine::{HEADROOM, TAILROOM};

/// Largest datagram we receive: a UDP payload is at most 65535 bytes.
pub const MAX_DATAGRAM: usize = 65535;

/// Datagrams per `recvmmsg` (and at most that many per `sendmmsg`).
pub const BATCH: usize = 32;

/// One slot: room for the header written in front, the datagram and the padding after it.
const SLOT: usize = HEADROOM + MAX_DATAGRAM + TAILROOM;

/// Largest number of segments the kernel accepts in one GSO send (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;

/// Largest GSO send: the segments together must fit one IP datagram.
const MAX_GSO_BYTES: usize = 65000;

/// `UDP_SEGMENT` (linux/udp.h); the libc crate has it only for some targets.
const UDP_SEGMENT: libc::c_int = 103;

/// Received datagrams: each at `HEADROOM` in its own slot.
pub struct RecvBatch {
    data: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// (length, sender) of the datagrams in the slots in use, by slot.
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        let mut b = RecvBatch {
            data: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            // SAFETY: these are plain C structs for which all zeroes is a valid value.
            addrs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            iov: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            hdrs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            got: Vec::with_capacity(BATCH),
        };
        // The headers point into the boxed slices, which never move or resize: set once.
        let base = b.data.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: i * SLOT + HEADROOM + MAX_DATAGRAM <= BATCH * SLOT = data.len().
            b.iov[i] = libc::iovec {
                iov_base: unsafe { base.add(i * SLOT + HEADROOM) }.cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut b.hdrs[i];
            h.msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = &mut b.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
        }
        b
    }

    /// Receive up to [`BATCH`] datagrams into an emptied batch without blocking; `Ok(0)`
    /// never happens (an empty socket is `WouldBlock`). Datagrams whose sender is not an IP
    /// address or that were truncated are received and skipped (their entries say `None`).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.clear();
        self.recv_more(fd).map(|r| r.len())
    }

    /// Slots in use since the last [`RecvBatch::clear`].
    pub fn len(&self) -> usize {
        self.got.len()
    }

    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }

    /// Slots still free (what the next [`RecvBatch::recv_more`] can receive at most).
    pub fn free(&self) -> usize {
        BATCH - self.got.len()
    }

    /// Free every slot (after what was received was sent).
    pub fn clear(&mut self) {
        self.got.clear();
    }

    /// Receive without blocking into the free slots, after those in use (so that datagrams
    /// of several sockets can be sent with one flush); returns the indices of the new
    /// datagrams, never empty (an empty socket, or no free slot, is `WouldBlock`).
    pub fn recv_more(&mut self, fd: RawFd) -> io::Result<std::ops::Range<usize>> {
        let from = self.got.len();
        let Some(hdrs) = self.hdrs.get_mut(from..).filter(|h| !h.is_empty()) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        for h in hdrs.iter_mut() {
            // What the kernel writes back: reset; the pointers stay as `new` set them.
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live memory of this batch, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (n as usize).min(hdrs.len());
        for (h, a) in self.hdrs[from..]
            .iter()
            .zip(self.addrs[from..].iter())
            .take(n)
        {
            let len = h.msg_len as usize;
            let sender = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_DATAGRAM {
                None
            } else {
                read_sockaddr(a, h.msg_hdr.msg_namelen)
            };
            self.got.push((len, sender));
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(from..from + n)
    }

    /// Length and sender of datagram `i` (received since the last clear).
    pub fn datagram(&self, i: usize) -> (usize, Option<SocketAddr>) {
        self.got.get(i).copied().unwrap_or((0, None))
    }

    /// The whole slot of datagram `i`: its payload is at `HEADROOM..HEADROOM + len`.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let start = (i % BATCH) * SLOT;
        &mut self.data[start..start + SLOT]
    }

    /// Where slot `i` starts in [`RecvBatch::data`] (for [`SendQueue::push`]).
    pub fn slot_offset(i: usize) -> usize {
        (i % BATCH) * SLOT
    }

    /// All slots, the base [`SendQueue::flush`] sends from.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// One datagram waiting to be sent: bytes `start..start + len` of the flushed base buffer, to
/// `to`, from socket `fd`.
#[derive(Clone, Copy)]
struct Out {
    fd: RawFd,
    to: SocketAddr,
    start: usize,
    len: u32,
}

/// Datagrams produced while handling one buffer (a [`RecvBatch`], or the frames of one read
/// of a stream connection), named by byte ranges of it and sent together by
/// [`SendQueue::flush`] before that buffer changes.
pub struct SendQueue {
    items: Vec<Out>,
    /// Whether `items` name more than one socket (only then are they grouped).
    mixed: bool,
    /// Destination addresses, written in place per message of a `sendmmsg`.
    addrs: Box<[libc::sockaddr_storage]>,
    iov: Vec<libc::iovec>,
    cmsg: Vec<[u64; 4]>,
    hdrs: Vec<libc::mmsghdr>,
    /// Whether GSO is used; turned off for good the first time the kernel refuses it.
    gso: bool,
    /// System calls made by flushes (for the scaling test and the benchmark notes).
    pub calls: u64,
    /// Datagrams the kernel refused (full buffer, unreachable): dropped, as UDP may.
    pub dropped: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Of those, datagrams that left inside a GSO send of two or more (`sent` counts them too).
    pub gso_sent: u64,
}

impl SendQueue {
    pub fn new(gso: bool) -> SendQueue {
        SendQueue {
            items: Vec::with_capacity(BATCH),
            mixed: false,
            // SAFETY: all zeroes is a valid sockaddr_storage.
            addrs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            iov: Vec::with_capacity(BATCH),
            cmsg: vec![[0; 4]; BATCH],
            hdrs: Vec::with_capacity(BATCH),
            gso,
            calls: 0,
            dropped: 0,
            sent: 0,
            gso_sent: 0,
        }
    }

    /// Queue bytes `range` of the buffer the next [`SendQueue::flush`] gets, for `to`, from
    /// socket `fd`. Call [`SendQueue::is_full`] first: a push to a full queue is dropped.
    pub fn push(&mut self, fd: RawFd, to: SocketAddr, range: std::ops::Range<usize>) {
        let Ok(len) = u32::try_from(range.end.saturating_sub(range.start)) else {
            self.dropped += 1;
            return;
        };
        if range.start > range.end || len as usize > MAX_DATAGRAM || self.is_full() {
            self.dropped += 1;
            return;
        }
        if self.items.first().is_some_and(|o| o.fd != fd) {
            self.mixed = true;
        }
        self.items.push(Out {
            fd,
            to,
            start: range.start,
            len,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether GSO is (still) used.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Holds [`BATCH`] datagrams: flush before pushing more.
    pub fn is_full(&self) -> bool {
        self.items.len() >= BATCH
    }

    /// Send everything queued from `base`: one `sendmmsg` per socket, equal-size runs to one
    /// destination as one GSO message. Datagrams the kernel will not take now, and ranges
    /// outside `base`, are dropped.
    pub fn flush(&mut self, base: &[u8]) {
        let before = self.items.len();
        self.items.retain(|o| {
            o.start
                .checked_add(o.len as usize)
                .is_some_and(|e| e <= base.len())
        });
        self.dropped += (before - self.items.len()) as u64;
        if self.items.is_empty() {
            self.mixed = false;
            return;
        }
        if !self.mixed {
            // One socket (the usual case: a relay socket's datagrams all go out of one
            // listener, a client's out of one relay): one group, nothing to sort.
            self.send_group(base, 0, self.items.len());
        } else {
            // Group by socket; the sort is stable, so each socket's datagrams keep their
            // order.
            self.items.sort_by_key(|o| o.fd);
            let mut i = 0;
            while i < self.items.len() {
                let fd = self.items[i].fd;
                let end = i + self.items[i..].iter().take_while(|o| o.fd == fd).count();
                self.send_group(base, i, end);
                i = end;
            }
        }
        self.items.clear();
        self.mixed = false;
    }

    /// Send `items[from..to]`, all from one socket.
    fn send_group(&mut self, base: &[u8], from: usize, to: usize) {
        let fd = self.items[from].fd;
        let mut addr_lens: [libc::socklen_t; BATCH] = [0; BATCH];
        self.iov.clear();
        self.hdrs.clear();
        // Messages as (first iov, iov count, segment size if GSO).
        let mut msgs: [(usize, usize, u32); BATCH] = [(0, 0, 0); BATCH];
        let mut nmsgs = 0;
        let mut k = from;
        while k < to {
            let first = self.items[k];
            let mut count = 1;
            if self.gso {
                let mut total = first.len as usize;
                while k + count < to && count < MAX_SEGMENTS {
                    let next = self.items[k + count];
                    // Segments are `first.len` bytes but the last, which may be shorter
                    // (not empty: a run of exactly `first.len` bytes is not segmented).
                    if next.to != first.to
                        || next.len > first.len
                        || next.len == 0
                        || total + next.len as usize > MAX_GSO_BYTES
                    {
                        break;
                    }
                    total += next.len as usize;
                    count += 1;
                    if next.len < first.len {
                        break;
                    }
                }
            }
            let iov_first = self.iov.len();
            for o in &self.items[k..k + count] {
                self.iov.push(libc::iovec {
                    // In bounds: checked by `flush`.
                    iov_base: base[o.start..].as_ptr() as *mut _,
                    iov_len: o.len as usize,
                });
            }
            addr_lens[nmsgs] = write_sockaddr(&first.to, &mut self.addrs[nmsgs]);
            msgs[nmsgs] = (iov_first, count, if count > 1 { first.len } else { 0 });
            nmsgs += 1;
            k += count;
        }
        for (m, &(iov_first, count, seg)) in msgs[..nmsgs].iter().enumerate() {
            // SAFETY: a zeroed msghdr is valid; every pointer set below points into vectors
            // that are not resized until the send is done.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[m] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = addr_lens[m];
            h.msg_hdr.msg_iov = self.iov[iov_first..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = count as _;
            if seg > 0 {
                let buf = &mut self.cmsg[m];
                *buf = [0; 4];
                h.msg_hdr.msg_control = buf.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 (24 bytes on 64-bit) fits the 32-byte buffer.
                h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
                }
            }
            self.hdrs.push(h);
        }
        let mut sent = 0;
        while sent < nmsgs {
            self.calls += 1;
            // SAFETY: hdrs[sent..nmsgs] are valid headers (see above).
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[sent..].as_mut_ptr(),
                    (nmsgs - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                let r = r as usize;
                for &(_, count, seg) in &msgs[sent..sent + r] {
                    self.sent += count as u64;
                    if seg > 0 {
                        self.gso_sent += count as u64;
                    }
                }
                sent += r;
                continue;
            }
            let err = io::Error::last_os_error();
            let (_, count, seg) = msgs[sent];
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The socket buffer is full: what is left is dropped, as UDP may.
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    self.dropped += msgs[sent..nmsgs].iter().map(|m| m.1 as u64).sum::<u64>();
                    return;
                }
                // The device cannot segment (no checksum offload): GSO off, resend the rest.
                Some(libc::EIO) | Some(libc::EINVAL) if seg > 0 => {
                    self.gso = false;
                    let first_item = from + msgs[..sent].iter().map(|m| m.1).sum::<usize>();
                    self.send_group(base, first_item, to);
                    return;
                }
                // This destination failed (unreachable, refused by a filter): skip it.
                _ => {
                    self.dropped += count as u64;
                    sent += 1;
                }
            }
        }
    }
}

/// Whether this kernel takes `UDP_SEGMENT` on a UDP socket of `family`'s kind.
pub fn gso_supported() -> bool {
    let Ok(s) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) else {
        return false;
    };
    let seg: libc::c_int = 1200;
    // SAFETY: a valid socket and an int-sized option value.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&seg as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Send one datagram now or drop it (control-plane answers and stream-to-relay data, which
/// do not come in batches).
pub fn send_one(fd: RawFd, bytes: &[u8], to: SocketAddr) -> bool {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = write_sockaddr(&to, &mut addr);
    // SAFETY: valid buffer and address for the duration of the call.
    let r = unsafe {
        libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    r >= 0
}

/// Write `addr` into `out` as the kernel takes it; returns its length.
fn write_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The IP socket address the kernel wrote into `a` (`len` bytes); `None` for another
/// family or a short length.
fn read_sockaddr(a: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match a.ss_family as libc::c_int {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in (family and length checked).
            let sin = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family and length checked).
            let sin6 =
                unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn recv_batch_reads_what_is_queued_and_no_more() {
        let (a, b) = pair();
        let mut batch = RecvBatch::new();
        assert_eq!(
            batch.recv(b.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for i in 0..(BATCH + 5) {
            a.send_to(&[i as u8; 10], b.local_addr().unwrap()).unwrap();
        }
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), BATCH);
        let (len, from) = batch.datagram(3);
        assert_eq!((len, from), (10, Some(a.local_addr().unwrap())));
        assert_eq!(&batch.slot_mut(3)[HEADROOM..HEADROOM + 10], &[3u8; 10]);
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 5);
        assert_eq!(batch.datagram(4).0, 10);
    }

    #[test]
    fn recv_more_fills_the_free_slots_from_several_sockets() {
        let (a, b) = pair();
        let (c, d) = pair();
        let mut batch = RecvBatch::new();
        for i in 0..3u8 {
            a.send_to(&[i; 5], b.local_addr().unwrap()).unwrap();
        }
        for i in 0..(BATCH as u8) {
            c.send_to(&[100 + i; 7], d.local_addr().unwrap()).unwrap();
        }
        assert_eq!(batch.recv_more(b.as_raw_fd()).unwrap(), 0..3);
        // The second socket's datagrams go to the slots after: only the free ones.
        assert_eq!(batch.recv_more(d.as_raw_fd()).unwrap(), 3..BATCH);
        assert_eq!((batch.len(), batch.free()), (BATCH, 0));
        assert_eq!(batch.datagram(2), (5, Some(a.local_addr().unwrap())));
        assert_eq!(batch.datagram(3), (7, Some(c.local_addr().unwrap())));
        assert_eq!(&batch.slot_mut(3)[HEADROOM..HEADROOM + 7], &[100u8; 7]);
        assert_eq!(&batch.slot_mut(2)[HEADROOM..HEADROOM + 5], &[2u8; 5]);
        // No free slot: nothing is read (the rest stays queued in the socket).
        assert_eq!(
            batch.recv_more(d.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        batch.clear();
        assert_eq!(batch.recv_more(d.as_raw_fd()).unwrap(), 0..3);
        assert_eq!(
            &batch.slot_mut(0)[HEADROOM..HEADROOM + 7],
            &[100 + BATCH as u8 - 3; 7]
        );
    }

    #[test]
    fn send_queue_groups_by_socket_keeps_order_and_uses_gso_for_equal_runs() {
        let (a, b) = pair();
        let (c, _d) = pair();
        let mut batch = RecvBatch::new();
        for i in 0..6u8 {
            a.send_to(&[i; 100], b.local_addr().unwrap()).unwrap();
        }
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 6);
        let mut q = SendQueue::new(gso_supported());
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_nonblocking(true).unwrap();
        let to = sink.local_addr().unwrap();
        // Interleave two sockets; equal sizes to one destination from b.
        for i in 0..6 {
            let fd = if i % 3 == 2 {
                c.as_raw_fd()
            } else {
                b.as_raw_fd()
            };
            let at = RecvBatch::slot_offset(i) + HEADROOM;
            q.push(fd, to, at..at + 100);
        }
        q.flush(batch.data());
        assert!(q.is_empty());
        assert_eq!(q.dropped, 0);
        // Two sockets: one sendmmsg each, each socket's four and two datagrams one GSO send.
        assert!(
            gso_supported(),
            "this kernel takes UDP_SEGMENT (Linux 4.18 and later)"
        );
        assert_eq!((q.calls, q.sent, q.gso_sent), (2, 6, 6));
        let mut got = Vec::new();
        let mut buf = [0u8; 2000];
        std::thread::sleep(std::time::Duration::from_millis(20));
        while let Ok((n, from)) = sink.recv_from(&mut buf) {
            assert_eq!(n, 100, "a GSO run arrives as separate datagrams");
            got.push((from.port(), buf[0]));
        }
        let from_b: Vec<u8> = got
            .iter()
            .filter(|g| g.0 == b.local_addr().unwrap().port())
            .map(|g| g.1)
            .collect();
        let from_c: Vec<u8> = got
            .iter()
            .filter(|g| g.0 == c.local_addr().unwrap().port())
            .map(|g| g.1)
            .collect();
        assert_eq!(from_b, vec![0, 1, 3, 4]);
        assert_eq!(from_c, vec![2, 5]);
    }

    #[test]
    fn a_gso_run_may_end_with_one_shorter_datagram_and_every_length_arrives() {
        let (a, b) = pair();
        let lens = [100usize, 100, 60, 100, 100, 100, 0, 40, 30];
        for (i, &n) in lens.iter().enumerate() {
            a.send_to(&vec![i as u8; n], b.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = RecvBatch::new();
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), lens.len());
        assert!(
            gso_supported(),
            "this kernel takes UDP_SEGMENT (Linux 4.18 and later)"
        );
        let mut q = SendQueue::new(true);
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_nonblocking(true).unwrap();
        let to = sink.local_addr().unwrap();
        for (i, &n) in lens.iter().enumerate() {
            let at = RecvBatch::slot_offset(i) + HEADROOM;
            q.push(b.as_raw_fd(), to, at..at + n);
        }
        q.flush(batch.data());
        assert_eq!((q.calls, q.sent, q.dropped), (1, lens.len() as u64, 0));
        // Every datagram but the empty one left inside a GSO send: the runs formed.
        assert_eq!(q.gso_sent, 8);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut got = Vec::new();
        let mut buf = [0u8; 2000];
        while let Ok((n, _)) = sink.recv_from(&mut buf) {
            assert!(
                buf[..n].iter().all(|&x| x == got.len() as u8),
                "datagram {}",
                got.len()
            );
            got.push(n);
        }
        // [100 100 60] [100 100 100] [0] [40 30] as GSO messages: each length, in order.
        assert_eq!(got, lens);
    }

    #[test]
    fn ranges_outside_the_base_or_too_long_are_dropped_not_sent() {
        let (_a, b) = pair();
        let mut q = SendQueue::new(false);
        let to = b.local_addr().unwrap();
        q.push(b.as_raw_fd(), to, 0..MAX_DATAGRAM + 1);
        assert!(q.is_empty());
        q.push(b.as_raw_fd(), to, 10..20);
        q.flush(&[0u8; 19]);
        assert!(q.is_empty());
        assert_eq!((q.dropped, q.sent), (2, 0));
        for _ in 0..BATCH {
            q.push(b.as_raw_fd(), to, 0..1);
        }
        assert!(q.is_full());
        q.push(b.as_raw_fd(), to, 0..1);
        assert_eq!(q.dropped, 3);
        q.flush(&[0u8; 1]);
        assert_eq!(q.sent, BATCH as u64);
    }

    #[test]
    fn sockaddrs_written_in_place_read_back_the_same() {
        for a in [
            "127.0.0.1:3478",
            "198.51.100.7:1",
            "[::1]:65535",
            "[fe80::1%7]:5000",
            "[::ffff:192.0.2.1]:9",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            // SAFETY: all zeroes is a valid sockaddr_storage.
            let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let len = write_sockaddr(&a, &mut st);
            assert_eq!(read_sockaddr(&st, len), Some(a));
            assert_eq!(
                read_sockaddr(&st, len - 1),
                None,
                "a short length is refused"
            );
            // The same bytes socket2 would build.
            let s2 = socket2::SockAddr::from(a);
            assert_eq!(len, s2.len());
            // SAFETY: both hold at least `len` initialised bytes.
            let (x, y) = unsafe {
                (
                    std::slice::from_raw_parts(
                        (&st as *const libc::sockaddr_storage).cast::<u8>(),
                        len as usize,
                    ),
                    std::slice::from_raw_parts(s2.as_ptr().cast::<u8>(), len as usize),
                )
            };
            assert_eq!(x, y, "{a}");
        }
        // SAFETY: as above.
        let st: libc::sockaddr_storage = unsafe { mem::zeroed() };
        assert_eq!(read_sockaddr(&st, 128), None, "AF_UNSPEC");
    }

    #[test]
    fn one_socket_queue_sends_in_order_in_one_call_over_ipv6_too() {
        let b = UdpSocket::bind("[::1]:0").expect("IPv6 loopback is needed for this test");
        let sink = UdpSocket::bind("[::1]:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = sink.local_addr().unwrap();
        let mut base = vec![0u8; 64];
        for (i, b) in base.iter_mut().enumerate() {
            *b = i as u8;
        }
        // Unequal sizes: no GSO run, one message per datagram, one sendmmsg.
        let mut q = SendQueue::new(false);
        for i in 0..5 {
            q.push(b.as_raw_fd(), to, i * 10..i * 10 + 1 + i);
        }
        q.flush(&base);
        assert_eq!((q.calls, q.sent, q.dropped), (1, 5, 0));
        let mut buf = [0u8; 100];
        for i in 0..5 {
            let (n, from) = sink.recv_from(&mut buf).unwrap();
            assert_eq!(from, b.local_addr().unwrap());
            assert_eq!(&buf[..n], &base[i * 10..i * 10 + 1 + i], "in order");
        }
        // The batch's sender is read in place too.
        sink.send_to(b"x", b.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new();
        std::thread::sleep(std::time::Duration::from_millis(20));
        b.set_nonblocking(true).unwrap();
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.datagram(0), (1, Some(to)));
    }
}
