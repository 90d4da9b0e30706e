//! [`EchoPeer`]: a UDP echo peer on `port` and `port + 1` (uclient's "RTCP" peer).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Counters of an [`EchoPeer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoStats {
    pub datagrams: u64,
    pub bytes: u64,
    /// Distinct source addresses seen (the relayed addresses of the allocations).
    pub sources: Vec<SocketAddr>,
}

/// A UDP echo peer on one loopback address, listening on `port()` and `port() + 1` (uclient
/// binds a channel to `peer + 1` and, without `-c`, sends its RTCP stream there). Stops and
/// joins its threads on drop.
pub struct EchoPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<EchoStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoPeer {
    /// An echo peer on `ip` (127.0.0.1 or ::1).
    pub fn start(ip: IpAddr) -> EchoPeer {
        Self::start_with(ip, true)
    }

    /// A peer that counts datagrams but never answers: every relayed packet is "lost".
    pub fn start_mute(ip: IpAddr) -> EchoPeer {
        Self::start_with(ip, false)
    }

    fn start_with(ip: IpAddr, echo: bool) -> EchoPeer {
        assert!(ip.is_loopback(), "echo peer must be on loopback, got {ip}");
        let (a, b) = Self::bind_pair(ip);
        let addr = a.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EchoStats::default()));
        let threads = [a, b]
            .into_iter()
            .map(|sock| {
                let (stop, stats) = (stop.clone(), stats.clone());
                std::thread::spawn(move || echo_loop(&sock, &stop, &stats, echo))
            })
            .collect();
        EchoPeer {
            addr,
            stop,
            stats,
            threads,
        }
    }

    fn bind_pair(ip: IpAddr) -> (UdpSocket, UdpSocket) {
        for _ in 0..100 {
            let a = UdpSocket::bind((ip, 0)).expect("bind echo peer");
            let port = a.local_addr().expect("local addr").port();
            if port == u16::MAX {
                continue;
            }
            if let Ok(b) = UdpSocket::bind((ip, port + 1)) {
                return (a, b);
            }
        }
        panic!("no free consecutive UDP port pair on {ip} after 100 tries");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> EchoStats {
        self.stats.lock().expect("echo stats lock").clone()
    }
}

fn echo_loop(sock: &UdpSocket, stop: &AtomicBool, stats: &Mutex<EchoStats>, echo: bool) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set read timeout");
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        {
            let mut s = stats.lock().expect("echo stats lock");
            s.datagrams += 1;
            s.bytes += n as u64;
            if !s.sources.contains(&from) {
                s.sources.push(from);
            }
        }
        if echo {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join(); // each loop wakes at least every 50 ms
        }
    }
}
