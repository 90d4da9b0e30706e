//! UDP echo peers: what the relayed datagrams go to and come back from.
//!
//! [`simple`] serves the probe; [`batched`] serves the load generator, moving up to 64
//! datagrams per system call each way and counting what it saw.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::mmsg::Batch;
use crate::stats::Counters;

/// Send every datagram back to its sender until the task is dropped.
pub async fn simple(sock: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let _ = sock.send_to(&buf[..n], from).await;
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// What one batched echo peer saw (read after its task ends).
#[derive(Default)]
pub struct EchoCount {
    pub packets: Cell<u64>,
    pub bytes: Cell<u64>,
}

/// Echo in batches until the task is dropped; counts into `count` and the shared totals.
/// With `gso`, each sender's run of datagrams goes back as one UDP GSO message.
pub async fn batched(
    sock: Rc<UdpSocket>,
    slot: usize,
    gso: bool,
    count: Rc<EchoCount>,
    totals: Arc<Counters>,
) {
    let mut batch = Batch::new(64, slot);
    let fd = sock.as_raw_fd();
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        loop {
            let n = match sock.try_io(Interest::READABLE, || batch.recv(fd)) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue, // a one-shot ICMP error from a relay that went away
            };
            let bytes: usize = (0..n).map(|i| batch.len_of(i)).sum();
            count.packets.set(count.packets.get() + n as u64);
            count.bytes.set(count.bytes.get() + bytes as u64);
            Counters::add(&totals.at_peer, n as u64);
            Counters::add(&totals.peer_bytes, bytes as u64);
            // Best effort, like any UDP peer: what the socket buffer refuses is lost.
            let _ = if gso {
                batch.echo_gso(fd, n)
            } else {
                batch.echo(fd, n)
            };
        }
    }
}
