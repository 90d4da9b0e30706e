//! Batched UDP I/O with `recvmmsg(2)` / `sendmmsg(2)`: many datagrams per system call, into
//! and out of buffers allocated once. The load generator must not be the bottleneck, and on
//! loopback the per-call cost dominates.
//!
//! A [`Batch`] holds `n` fixed-size slots and the kernel headers pointing at them. The
//! headers hold raw pointers into the slots (a `Vec` that never grows, so they stay valid);
//! the type is therefore neither `Send` nor `Clone` and lives in one task.

use std::io;
use std::mem;
use std::os::fd::RawFd;

/// Fixed buffers and headers for up to `n` datagrams of up to `slot` bytes.
pub struct Batch {
    slot: usize,
    data: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// One `UDP_SEGMENT` control message per header (GSO echo) and the datagrams in it.
    control: Vec<[u64; 4]>,
    run_len: Vec<usize>,
}

impl Batch {
    pub fn new(n: usize, slot: usize) -> Batch {
        let n = n.max(1);
        let mut b = Batch {
            slot,
            data: vec![0u8; n * slot],
            lens: vec![0; n],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            addrs: vec![unsafe { mem::zeroed() }; n],
            iov: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
            control: vec![[0u64; 4]; n],
            run_len: vec![0; n],
        };
        for i in 0..n {
            b.iov.push(libc::iovec {
                iov_base: b.data[i * slot..].as_mut_ptr().cast(),
                iov_len: slot,
            });
        }
        for i in 0..n {
            // SAFETY: msghdr is plain old data; all zeroes is a valid (empty) header.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = &mut b.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            b.hdrs.push(h);
        }
        b
    }

    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Slot `i` for writing a datagram to send.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * self.slot..(i + 1) * self.slot]
    }

    /// Datagram `i` of the last [`Batch::recv`].
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.data[i * self.slot..i * self.slot + self.lens[i]]
    }

    /// Receive up to the capacity without blocking; `WouldBlock` when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.capacity();
        for i in 0..n {
            self.iov[i].iov_len = self.slot;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_flags = 0;
        }
        // SAFETY: every header points at a live iovec and sockaddr_storage of this batch, with
        // their true lengths; the kernel writes at most that much.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for i in 0..r {
            self.lens[i] = (self.hdrs[i].msg_len as usize).min(self.slot);
        }
        Ok(r)
    }

    /// Send slots `0..n` on a connected socket, slot `i` with `lens(i)` bytes. Returns how
    /// many the kernel took.
    pub fn send(
        &mut self,
        fd: RawFd,
        n: usize,
        lens: impl Fn(usize) -> usize,
    ) -> io::Result<usize> {
        let n = n.min(self.capacity());
        for i in 0..n {
            self.iov[i].iov_len = lens(i).min(self.slot);
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
        }
        self.send_prepared(fd, n)
    }

    /// Send the `n` datagrams of the last [`Batch::recv`] back to where each came from.
    pub fn echo(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        let n = n.min(self.capacity());
        for i in 0..n {
            self.iov[i].iov_len = self.lens[i];
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = storage_len(&self.addrs[i]);
        }
        self.send_prepared(fd, n)
    }

    fn send_prepared(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        let mut sent = 0;
        while sent < n {
            // SAFETY: headers sent..n point at live buffers of this batch with valid lengths.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[sent..].as_mut_ptr(),
                    (n - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                return if sent > 0 { Ok(sent) } else { Err(e) };
            }
            sent += r as usize;
        }
        Ok(sent)
    }

    /// Length of datagram `i` of the last [`Batch::recv`].
    pub fn len_of(&self, i: usize) -> usize {
        self.lens[i]
    }

    /// Send slots `0..n`, each `len` bytes, on a connected socket as UDP GSO sends
    /// (`UDP_SEGMENT`): one datagram per slot on the wire, at most [`GSO_MAX_SEGMENTS`] and
    /// 64 KiB per system call. Needs slots exactly `len` bytes apart (`Batch::new(_, len)`).
    /// Returns how many datagrams the kernel took.
    pub fn send_gso(&mut self, fd: RawFd, n: usize, len: usize) -> io::Result<usize> {
        let n = n.min(self.capacity());
        if len == 0 || len != self.slot {
            return self.send(fd, n, |_| len);
        }
        let per_call = gso_segments(len);
        let mut sent = 0;
        while sent < n {
            let k = (n - sent).min(per_call);
            let iov = libc::iovec {
                iov_base: self.data[sent * len..].as_mut_ptr().cast(),
                iov_len: k * len,
            };
            match send_segmented(fd, std::ptr::null_mut(), 0, &[iov], len) {
                Ok(()) => sent += k,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Like [`Batch::echo`], but each run of consecutive datagrams from the same sender with
    /// the same length (the last of a run may be shorter) goes back as one UDP GSO message,
    /// all runs in one `sendmmsg`. Returns how many datagrams the kernel took.
    pub fn echo_gso(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        let n = n.min(self.capacity());
        // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
        let (space, clen) = unsafe {
            (
                libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as usize,
                libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize,
            )
        };
        let mut runs = 0;
        let mut i = 0;
        while i < n {
            let len = self.lens[i];
            let mut j = i + 1;
            while j < n
                && j - i < gso_segments(len)
                && same_addr(&self.addrs[i], &self.addrs[j])
                && self.lens[j] <= len
            {
                let last = self.lens[j] < len;
                j += 1;
                if last {
                    break;
                }
            }
            for k in i..j {
                self.iov[k].iov_len = self.lens[k];
            }
            self.run_len[runs] = j - i;
            let control = &mut self.control[runs];
            let h = &mut self.hdrs[runs].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = storage_len(&self.addrs[i]);
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = (j - i) as _;
            h.msg_control = control.as_mut_ptr().cast();
            h.msg_controllen = space as _;
            // SAFETY: `control` is 32 bytes, aligned for cmsghdr, and `space` (the room for
            // one cmsghdr with a u16) fits in it, so the first header and its data are inside.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = clen as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), len as u16);
            }
            runs += 1;
            i = j;
        }
        let r = self.send_prepared(fd, runs);
        self.reset_headers();
        Ok(self.run_len[..r.unwrap_or(0)].iter().sum())
    }

    /// Back to one iovec and no control message per header.
    fn reset_headers(&mut self) {
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
        }
    }
}

/// Consecutive equal-length datagrams already in one buffer (the DTLS load generator's
/// pre-encrypted records), sent on a connected socket without copying them into slots.
/// Holds the headers of one `sendmmsg` (raw pointers, filled per call: neither `Send` nor
/// kept across calls).
pub struct RunSender {
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RunSender {
    /// Headers for up to `n` datagrams per call.
    pub fn new(n: usize) -> RunSender {
        let n = n.max(1);
        RunSender {
            iov: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                n
            ],
            // SAFETY: mmsghdr is plain old data; all zeroes is a valid (empty) header.
            hdrs: vec![unsafe { mem::zeroed() }; n],
        }
    }

    /// Send the datagrams `buf[0..len]`, `buf[len..2 * len]`, ... (at most the capacity, and
    /// only whole ones) with one `sendmmsg`, or with `gso` as one `UDP_SEGMENT` send per 64
    /// of them. Returns how many the kernel took (`WouldBlock` when none).
    pub fn send(&mut self, fd: RawFd, buf: &[u8], len: usize, gso: bool) -> io::Result<usize> {
        if len == 0 {
            return Ok(0);
        }
        let n = (buf.len() / len).min(self.hdrs.len());
        if gso {
            let k = n.min(gso_segments(len));
            let iov = libc::iovec {
                // sendmsg only reads through the pointer.
                iov_base: buf.as_ptr().cast_mut().cast(),
                iov_len: k * len,
            };
            return send_segmented(fd, std::ptr::null_mut(), 0, &[iov], len).map(|()| k);
        }
        for i in 0..n {
            self.iov[i] = libc::iovec {
                iov_base: buf[i * len..].as_ptr().cast_mut().cast(),
                iov_len: len,
            };
            // SAFETY: as in `new`: an all-zero header is valid; it then points at one iovec.
            self.hdrs[i] = unsafe { mem::zeroed() };
            self.hdrs[i].msg_hdr.msg_iov = &mut self.iov[i];
            self.hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: headers 0..n point at iovecs of this struct, each at `len` bytes inside
        // `buf`, which outlives the call; the kernel only reads them.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// Segments per GSO send: the kernel's limit is 64 segments (128 on newer kernels) and a
/// 64 KiB datagram.
pub const GSO_MAX_SEGMENTS: usize = 64;

fn gso_segments(len: usize) -> usize {
    (65_000 / len.max(1)).clamp(1, GSO_MAX_SEGMENTS)
}

fn same_addr(a: &libc::sockaddr_storage, b: &libc::sockaddr_storage) -> bool {
    let n = storage_len(a) as usize;
    // SAFETY: both are live sockaddr_storage values, at least `n` bytes long.
    unsafe {
        std::slice::from_raw_parts((a as *const libc::sockaddr_storage).cast::<u8>(), n)
            == std::slice::from_raw_parts((b as *const libc::sockaddr_storage).cast::<u8>(), n)
    }
}

/// One `sendmsg` of `iov` with a `UDP_SEGMENT` control message of `seg` bytes.
fn send_segmented(
    fd: RawFd,
    name: *mut libc::c_void,
    namelen: libc::socklen_t,
    iov: &[libc::iovec],
    seg: usize,
) -> io::Result<()> {
    // Room for one cmsghdr with a u16, aligned like cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
    debug_assert!(space <= mem::size_of_val(&control));
    // SAFETY: msghdr is plain old data; all zeroes is a valid (empty) header.
    let mut h: libc::msghdr = unsafe { mem::zeroed() };
    h.msg_name = name;
    h.msg_namelen = namelen;
    h.msg_iov = iov.as_ptr().cast_mut();
    h.msg_iovlen = iov.len() as _;
    h.msg_control = control.as_mut_ptr().cast();
    h.msg_controllen = space as _;
    // SAFETY: the control buffer is `space` bytes and aligned for cmsghdr, so CMSG_FIRSTHDR
    // points at its start and CMSG_DATA at room for the u16; sendmsg reads the iovecs (live
    // buffers of the caller) and the address of `namelen` bytes (null when connected).
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
        if libc::sendmsg(fd, &h, libc::MSG_DONTWAIT) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn storage_len(s: &libc::sockaddr_storage) -> libc::socklen_t {
    match s.ss_family as libc::c_int {
        libc::AF_INET6 => mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        _ => mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn echoes_a_batch() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            a.send_to(&[i; 10], b.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut batch = Batch::new(8, 64);
        let n = batch.recv(b.as_raw_fd()).unwrap();
        assert_eq!(n, 5);
        assert_eq!(batch.packet(3), &[3u8; 10]);
        // Echo in place: the received bytes are already in the slots.
        assert_eq!(batch.echo(b.as_raw_fd(), n).unwrap(), 5);
        let mut buf = [0u8; 64];
        let (len, _) = a.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], &[0u8; 10]);
    }

    /// A run of records in one buffer leaves as one datagram each, with and without GSO.
    #[test]
    fn run_sender_sends_each_record_once() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        let buf: Vec<u8> = (0..30u8).flat_map(|i| [i; 50]).collect();
        let mut tx = RunSender::new(16);
        assert_eq!(tx.send(a.as_raw_fd(), &buf, 50, false).unwrap(), 16);
        assert_eq!(
            tx.send(a.as_raw_fd(), &buf[16 * 50..], 50, true).unwrap(),
            14
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut rx = Batch::new(64, 2048);
        let n = rx.recv(b.as_raw_fd()).unwrap();
        assert_eq!(n, 30);
        for i in 0..n {
            assert_eq!(rx.packet(i), &[i as u8; 50][..]);
        }
    }

    /// A GSO send reaches a plain socket (no `UDP_GRO`) as one datagram per slot, and a GSO
    /// echo sends each sender's run back as its datagrams, in order.
    #[test]
    fn gso_sends_one_datagram_per_slot() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        let mut tx = Batch::new(20, 100);
        for i in 0..20 {
            tx.slot_mut(i).fill(i as u8);
        }
        assert_eq!(tx.send_gso(a.as_raw_fd(), 20, 100).unwrap(), 20);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut rx = Batch::new(64, 2048);
        let n = rx.recv(b.as_raw_fd()).unwrap();
        assert_eq!(n, 20, "20 datagrams, not one coalesced");
        for i in 0..n {
            assert_eq!(rx.packet(i), &[i as u8; 100][..]);
        }
        assert_eq!(rx.echo_gso(b.as_raw_fd(), n).unwrap(), 20);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut back = Batch::new(64, 2048);
        assert_eq!(back.recv(a.as_raw_fd()).unwrap(), 20);
        assert_eq!(back.packet(19), &[19u8; 100][..]);
    }
}
