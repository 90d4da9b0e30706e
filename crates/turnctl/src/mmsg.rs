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
}
