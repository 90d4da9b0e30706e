//! The XDP kernel fast path (`[fastpath]`, issue 13). The kernel tests (`netns`) exist
//! only in a build with `--features xdp` (`scripts/test` runs this module that way); the
//! fallback test runs in both builds.
//!
//! Topology: two network namespaces of our own joined by a veth pair. The server's has
//! `tfs<id>` 10.213.0.1/24 (forwarding on: the program's next-hop lookup needs it), the
//! program attached in native mode; the other has `tfc<id>` with the client (10.213.0.2)
//! and the peer (10.213.0.3), and an `XDP_PASS` program so that frames sent with `XDP_TX`
//! arrive. turnd runs in-process on a thread moved into the server's namespace; the clients
//! on threads moved into the other one. Needs root, `ip` and a kernel that takes BPF:
//! every test fails loudly otherwise.
//!
//! "In the kernel" is proven by the program's own counters (`turnd_fastpath_packets_total`)
//! together with the shard's `recvmmsg` counter not moving: user space never saw the
//! packets. A fast path that silently stopped relaying fails those tests.

use std::time::Duration;

use crate::raw::*;
use tokio::net::UdpSocket;

async fn recv_within(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// An interface that does not exist: one log line saying why, and user space relays.
#[tokio::test]
async fn fallback_to_user_space_when_the_program_cannot_attach() {
    use crate::common::Daemon;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turnd.toml");
    std::fs::write(
        &file,
        r#"realm = "turnd"
workers = 1
[listen]
udp = ["127.0.0.1:0"]
[relay]
ipv4 = "127.0.0.1"
ipv6 = "none"
ports = "52000-52099"
[auth]
users = ["dev:devpass"]
[policy]
allow_peers = ["127.0.0.0/8"]
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[fastpath]
xdp = ["turnd-nosuch0"]
"#,
    )
    .unwrap();
    let mut d = Daemon::start(&file);
    let mut c = UdpTurn::new(d.udp).await;
    c.allocate().await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.channel_bind(0x4000, peer.local_addr().unwrap()).await;
    c.sock
        .send_to(&channel_data(0x4000, b"user space"), d.udp)
        .await
        .unwrap();
    assert_eq!(
        recv_within(&peer, Duration::from_secs(2)).await.as_deref(),
        Some(&b"user space"[..])
    );
    d.drain_lines();
    let lines: Vec<_> = d
        .seen
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("kernel fast path (XDP) off"))
        })
        .collect();
    assert_eq!(lines.len(), 1, "one line: {:#?}", d.seen);
    // Why: the interface (with `xdp`), or the build without the feature.
    let line = lines[0].to_string();
    let why = if cfg!(feature = "xdp") {
        "interface \\\"turnd-nosuch0\\\""
    } else {
        "built without the cargo feature `xdp`"
    };
    assert!(line.contains(why), "says why ({why}): {line}");
    assert!(
        line.contains("turnd-nosuch0"),
        "names the interfaces: {line}"
    );
}

#[cfg(feature = "xdp")]
pub(crate) mod netns {
    use super::*;
    use crate::policy_netns::Netns;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::process::Command;
    use std::time::Instant;
    use stun::message::{CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_REFRESH};

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 3);
    const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd13, 0, 0, 0, 0, 0, 0, 1);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd13, 0, 0, 0, 0, 0, 0, 2);
    const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd13, 0, 0, 0, 0, 0, 0, 3);

    /// The two namespaces, the veth between them and the far end's `XDP_PASS` program
    /// (also `fastpath_clients.rs`'s, on its own subnet so both modules' tests can run at once).
    pub(crate) struct Topo {
        pub(crate) srv: Netns,
        pub(crate) cli: Netns,
        pub(crate) srv_if: String,
        cli_if: String,
        pub(crate) cli_ns: String,
        _pass: turnd::fastpath::PassProgram,
    }

    impl Topo {
        /// This module's: 10.213.0.0/24 and fd13::/64.
        fn new(tag: &str) -> Topo {
            Topo::build(tag, 'p', 0, true)
        }

        /// Interfaces `t<letter>s<tag><id>` (server, 10.213.`net`.1/24) and `t<letter>c..`
        /// (client .2 and peer .3), namespaces `f<letter>s<tag>` and `f<letter>c<tag>`; with
        /// `v6` also fd13::1, ::2 and ::3 (only one module may use it).
        pub(crate) fn build(tag: &str, letter: char, net: u8, v6: bool) -> Topo {
            let id = std::process::id() % 100_000;
            let (srv_if, cli_if) = (
                format!("t{letter}s{tag}{id}"),
                format!("t{letter}c{tag}{id}"),
            );
            let srv = Netns::new(&format!("f{letter}s{tag}"));
            let cli = Netns::new(&format!("f{letter}c{tag}"));
            let cli_name = format!("turnd-f{letter}c{tag}-{}", std::process::id());
            srv.ip(&[
                "link", "add", &srv_if, "type", "veth", "peer", "name", &cli_if, "netns", &cli_name,
            ]);
            srv.ip(&["addr", "add", &format!("10.213.{net}.1/24"), "dev", &srv_if]);
            cli.ip(&["addr", "add", &format!("10.213.{net}.2/24"), "dev", &cli_if]);
            cli.ip(&["addr", "add", &format!("10.213.{net}.3/24"), "dev", &cli_if]);
            if v6 {
                srv.ip(&["addr", "add", "fd13::1/64", "dev", &srv_if, "nodad"]);
                for a in ["fd13::2/64", "fd13::3/64"] {
                    cli.ip(&["addr", "add", a, "dev", &cli_if, "nodad"]);
                }
            }
            srv.ip(&["link", "set", &srv_if, "up"]);
            cli.ip(&["link", "set", &cli_if, "up"]);
            let families: &[&str] = if v6 { &["ipv4", "ipv6"] } else { &["ipv4"] };
            in_ns(&srv, || {
                for family in families {
                    std::fs::write(
                        format!("/proc/sys/net/{family}/conf/{srv_if}/forwarding"),
                        "1",
                    )
                    .expect("enable forwarding in the server's namespace (needs root)")
                }
            });
            // Senders' datagrams leave with complete UDP checksums, as from a NIC (a veth
            // otherwise hands over partial ones, which only a local receiver completes, and
            // an incremental update cannot fix: README).
            in_ns(&cli, || tx_checksum_off(&cli_if));
            let pass = in_ns(&cli, || {
                turnd::fastpath::attach_pass_program(&cli_if)
                    .unwrap_or_else(|e| panic!("the kernel refused an XDP program (root?): {e}"))
            });
            Topo {
                srv,
                cli,
                srv_if,
                cli_if,
                cli_ns: cli_name,
                _pass: pass,
            }
        }

        /// [`Topo::config`] with IPv6 too: a listener and relay address on fd13::1, peers in
        /// fd13::/64.
        fn config6(&self) -> turnd::Config {
            let mut c = self.config();
            c.listen.udp.push(SocketAddr::from((SERVER6, 0)));
            c.relay.ipv6 = Some(SERVER6);
            c.policy.allow_peers.push("fd13::/64".parse().unwrap());
            c.validate().expect("a valid config");
            c
        }

        fn cli_name(&self) -> String {
            self.cli_ns.clone()
        }

        fn config(&self) -> turnd::Config {
            let mut c = turnd::Config::secure_default();
            c.workers = 1;
            c.listen.udp = vec![SocketAddr::from((SERVER, 0))];
            c.admin.listen = None;
            c.signaling.listen = None;
            c.relay.ipv4 = Some(SERVER);
            c.relay.ipv6 = None;
            c.relay.ports = turnd::config::PortRange {
                min: 41000,
                max: 41100,
            };
            c.policy.allow_peers = vec!["10.213.0.0/24".parse().unwrap()];
            c.auth.users = vec![turnd::config::StaticUser {
                name: USER.into(),
                credential: turnd::config::Credential::Password(PASS.into()),
            }];
            c.realm = REALM.into();
            c.fastpath.xdp = vec![self.srv_if.clone()];
            c.validate().expect("a valid config");
            c
        }

        /// turnd started in the server's namespace (its shard threads are born there).
        pub(crate) fn start(&self, config: turnd::Config) -> turnd::Running {
            in_ns(&self.srv, || {
                // Why it would not attach, as the test's failure (the server only logs it).
                if let Err(why) = turnd::fastpath::FastPath::try_start(&config) {
                    panic!("the fast path cannot attach: {why}");
                }
                let running = turnd::start(config).expect("turnd starts");
                assert!(running.control.fastpath().is_on(), "the fast path attached");
                running
            })
        }

        /// `f` on a current-thread runtime on a thread in the clients' namespace.
        fn client<T: Send, F: std::future::Future<Output = T>>(
            &self,
            f: impl FnOnce() -> F + Send,
        ) -> T {
            in_ns(&self.cli, || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f())
            })
        }
    }

    /// `ethtool -K <iface> tx off` (ETHTOOL_STXCSUM), in the calling thread's namespace.
    pub(crate) fn tx_checksum_off(iface: &str) {
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        #[repr(C)]
        struct IfReq {
            name: [u8; 16],
            data: *mut EthtoolValue,
            _pad: [u8; 16],
        }
        const SIOCETHTOOL: libc::c_ulong = 0x8946;
        const ETHTOOL_STXCSUM: u32 = 0x17;
        let mut v = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        let mut req = IfReq {
            name: [0; 16],
            data: &mut v,
            _pad: [0; 16],
        };
        req.name[..iface.len()].copy_from_slice(iface.as_bytes());
        // SAFETY: a datagram socket for the ioctl, closed below; the request outlives it.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(rc, 0, "turning off tx checksum offload on {iface}: {err}");
        }
    }

    pub(crate) fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter();
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }

    /// The server's `/metrics`, rendered in-process.
    fn metrics(r: &turnd::Running) -> std::collections::HashMap<String, f64> {
        let text = turnd::admin::metrics::render(
            &r.control.metrics(),
            &turnd::admin::metrics::ProcessMetrics::read(&r.control),
        );
        prometheus(&text)
    }

    /// The program's own count (`turnd_fastpath_packets_total`, from its per-CPU map).
    pub(crate) fn kernel(r: &turnd::Running, direction: &str, action: &str) -> f64 {
        let key = format!(
            "turnd_fastpath_packets_total{{direction=\"{direction}\",action=\"{action}\"}}"
        );
        *metrics(r)
            .get(&key)
            .unwrap_or_else(|| panic!("no {key} in /metrics"))
    }

    /// Datagrams user space read (all shards' `recvmmsg`).
    fn user_space_received(r: &turnd::Running) -> u64 {
        r.control.metrics().iter().map(|m| m.udp_received).sum()
    }

    /// The sum of the samples of `name` whose labels contain `label` (e.g. `to_peer`; "" all).
    fn sum(m: &std::collections::HashMap<String, f64>, name: &str, label: &str) -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
            .map(|(_, v)| v)
            .sum()
    }

    /// A client on 10.213.0.2 with an allocation and channel 0x4000 to a peer on 10.213.0.3.
    async fn bound(server: SocketAddr) -> (UdpTurn, UdpSocket, SocketAddr) {
        bound_at(server, CLIENT.into(), PEER.into()).await
    }

    /// A client at `client` talking to `server`, with an allocation of the peer's family and
    /// channel 0x4000 to a peer at `peer`.
    async fn bound_at(
        server: SocketAddr,
        client: IpAddr,
        peer: IpAddr,
    ) -> (UdpTurn, UdpSocket, SocketAddr) {
        let sock = UdpSocket::bind((client, 0)).await.unwrap();
        let mut c = UdpTurn {
            sock,
            server,
            nonce: String::new(),
            user: USER.into(),
            pass: PASS.into(),
        };
        let peer = UdpSocket::bind((peer, 0)).await.unwrap();
        let r = c
            .ask(
                METHOD_ALLOCATE,
                &[&udp_transport(), &family_of(peer.local_addr().unwrap())],
            )
            .await;
        assert_eq!(
            r.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "Allocate: {:?}",
            code(&r)
        );
        let relay = xor_addr(&r, stun::attributes::ATTR_XOR_RELAYED_ADDRESS);
        c.channel_bind(0x4000, peer.local_addr().unwrap()).await;
        (c, peer, relay)
    }

    /// The server's UDP listener of `ip`'s family.
    fn listener(r: &turnd::Running, ip: IpAddr) -> SocketAddr {
        let port = r
            .udp
            .iter()
            .find(|a| a.is_ipv6() == ip.is_ipv6())
            .expect("a listener of that family")
            .port();
        SocketAddr::new(ip, port)
    }

    /// Frames on an interface (AF_PACKET, every protocol), for checking what the program
    /// wrote: opened in the calling thread's namespace.
    struct Capture(std::os::fd::OwnedFd);

    impl Capture {
        fn open(iface: &str) -> Capture {
            use std::os::fd::FromRawFd;
            let all = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket calls on a socket we own; the structs outlive the calls.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, all as i32);
                assert!(
                    fd >= 0,
                    "AF_PACKET socket (root?): {}",
                    std::io::Error::last_os_error()
                );
                let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
                let name = std::ffi::CString::new(iface).unwrap();
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = all;
                sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                let rc = libc::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
                let rcvbuf: libc::c_int = 8 << 20;
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &rcvbuf as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                );
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 200_000,
                };
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                Capture(fd)
            }
        }

        /// The UDP datagrams (source, destination, UDP checksum field, whether it verifies)
        /// seen until the queue is quiet for 200 ms, at most 1000 frames.
        fn udp(&self) -> Vec<(SocketAddr, SocketAddr, u16, bool)> {
            let mut out = Vec::new();
            let mut buf = [0u8; 2048];
            for _ in 0..1000 {
                // SAFETY: reads into our buffer, its length given.
                let n = unsafe {
                    libc::recv(
                        std::os::fd::AsRawFd::as_raw_fd(&self.0),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n <= 0 {
                    break;
                }
                if let Some(d) = parse_udp(&buf[..n as usize]) {
                    out.push(d);
                }
            }
            out
        }
    }

    fn sum16(data: &[u8], mut acc: u32) -> u32 {
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [b] = chunks.remainder() {
            acc += u32::from(*b) << 8;
        }
        acc
    }

    /// An Ethernet frame's UDP datagram: (source, destination, checksum field, verifies).
    fn parse_udp(f: &[u8]) -> Option<(SocketAddr, SocketAddr, u16, bool)> {
        let (ethertype, ip) = (u16::from_be_bytes([*f.get(12)?, *f.get(13)?]), f.get(14..)?);
        let (src, dst, udp, mut acc) = match ethertype {
            0x0800 => {
                let ihl = usize::from(ip.first()? & 0xf) * 4;
                let tot = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
                if *ip.get(9)? != 17 {
                    return None;
                }
                let (s, d): ([u8; 4], [u8; 4]) = (
                    ip.get(12..16)?.try_into().ok()?,
                    ip.get(16..20)?.try_into().ok()?,
                );
                let udp = ip.get(ihl..tot)?;
                let acc = sum16(&s, sum16(&d, 17 + udp.len() as u32));
                (IpAddr::from(s), IpAddr::from(d), udp, acc)
            }
            0x86dd => {
                if *ip.get(6)? != 17 {
                    return None;
                }
                let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
                let (s, d): ([u8; 16], [u8; 16]) = (
                    ip.get(8..24)?.try_into().ok()?,
                    ip.get(24..40)?.try_into().ok()?,
                );
                let udp = ip.get(40..40 + plen)?;
                let acc = sum16(&s, sum16(&d, 17 + udp.len() as u32));
                (IpAddr::from(s), IpAddr::from(d), udp, acc)
            }
            _ => return None,
        };
        let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
        let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
        let check = u16::from_be_bytes([*udp.get(6)?, *udp.get(7)?]);
        acc = sum16(udp, acc);
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        Some((
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
            check,
            acc == 0xffff,
        ))
    }

    /// One datagram each way through the relay (user space or kernel), answered.
    async fn round(c: &UdpTurn, peer: &UdpSocket, relay: SocketAddr, payload: &[u8]) -> bool {
        c.sock
            .send_to(&channel_data(0x4000, payload), c.server)
            .await
            .unwrap();
        let Some(got) = recv_within(peer, Duration::from_secs(2)).await else {
            return false;
        };
        assert_eq!(got, payload, "the peer gets the data without the header");
        peer.send_to(payload, relay).await.unwrap();
        let Some(back) = recv_within(&c.sock, Duration::from_secs(2)).await else {
            return false;
        };
        assert_eq!(
            back,
            channel_data(0x4000, payload),
            "ChannelData to the client"
        );
        true
    }

    /// ChannelData padded to a multiple of 4 with non-zero bytes (RFC 8656 §12.5: the receiver
    /// ignores them) from the client: the peer gets the data alone.
    async fn padded_round(c: &UdpTurn, peer: &UdpSocket, payload: &[u8]) -> bool {
        let mut m = channel_data(0x4000, payload);
        while m.len() % 4 != 0 {
            m.push(0xa5 ^ m.len() as u8);
        }
        c.sock.send_to(&m, c.server).await.unwrap();
        let Some(got) = recv_within(peer, Duration::from_secs(2)).await else {
            return false;
        };
        assert_eq!(
            got, payload,
            "the peer gets the data without header and padding"
        );
        true
    }

    /// Until both directions' neighbours are resolved, the program passes packets to user
    /// space (which relays them and so resolves them): warm up until one round is all kernel.
    /// Returns how many rounds it took (each relayed once, by one side or the other).
    async fn warm_up(r: &turnd::Running, c: &UdpTurn, peer: &UdpSocket, relay: SocketAddr) -> u64 {
        for i in 1..=20u64 {
            let before = (kernel(r, "to_peer", "tx"), kernel(r, "to_client", "tx"));
            assert!(
                round(c, peer, relay, b"warm-up!").await,
                "warm-up round {i}"
            );
            let after = (kernel(r, "to_peer", "tx"), kernel(r, "to_client", "tx"));
            if after.0 > before.0 && after.1 > before.1 {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("after 20 rounds the fast path still relays nothing in one direction");
    }

    /// ChannelData both ways relayed by the program, not user space, and counted exactly:
    /// the program's counters, the session API and `/metrics` all show the traffic sent.
    #[test]
    fn channel_data_is_relayed_in_the_kernel_both_ways_and_counted() {
        let t = Topo::new("a");
        let running = t.start(t.config());
        let server = SocketAddr::from((SERVER, running.udp[0].port()));
        const N: u64 = 200;
        let payload = [0x5au8; 100];
        let (warm, start_rx, start_tx) = t.client(|| async {
            let (c, peer, relay) = bound(server).await;
            let warm = warm_up(&running, &c, &peer, relay).await;
            let start_rx = user_space_received(&running);
            let start_tx = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            let t0 = Instant::now();
            for i in 0..N {
                assert!(round(&c, &peer, relay, &payload).await, "round {i}");
            }
            let rtt = t0.elapsed() / N as u32;
            eprintln!("{N} rounds through the kernel fast path, {rtt:?} per round trip");
            (warm, start_rx, start_tx)
        });
        assert_eq!(
            user_space_received(&running) - start_rx,
            0,
            "user space read none of the {N} rounds' datagrams"
        );
        assert_eq!(kernel(&running, "to_peer", "tx") - start_tx.0, N as f64);
        assert_eq!(kernel(&running, "to_client", "tx") - start_tx.1, N as f64);
        // Every datagram sent was relayed once, by one side or the other: the session shows
        // all of them (the kernel's counts folded in at the request).
        let s = running.control.sessions(None);
        assert_eq!(s.len(), 1);
        let total = warm + N;
        let bytes = warm * 8 + N * payload.len() as u64;
        assert_eq!(
            (s[0].packets_to_peer, s[0].bytes_to_peer),
            (total, bytes),
            "to peer"
        );
        assert_eq!(
            (s[0].packets_to_client, s[0].bytes_to_client),
            (total, bytes),
            "to client"
        );
        // The allocation ends (kill): its kernel counts are folded at deletion, /metrics keeps
        // them.
        assert_eq!(running.control.kill_user(USER), 1);
        let m = metrics(&running);
        assert_eq!(
            sum(&m, "turnd_relayed_packets_total", ""),
            (2 * total) as f64,
            "{m:?}"
        );
        assert_eq!(sum(&m, "turnd_relayed_bytes_total", ""), (2 * bytes) as f64);
        running.stop();
    }

    /// A killed allocation's routes leave the kernel at once: nothing is relayed after it,
    /// by the program or by user space.
    #[test]
    fn routes_leave_the_kernel_when_the_allocation_is_killed() {
        let t = Topo::new("b");
        let running = t.start(t.config());
        let server = SocketAddr::from((SERVER, running.udp[0].port()));
        t.client(|| async {
            let (c, peer, relay) = bound(server).await;
            warm_up(&running, &c, &peer, relay).await;
            assert_eq!(running.control.kill_user(USER), 1);
            let before = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            c.sock
                .send_to(&channel_data(0x4000, b"after kill"), server)
                .await
                .unwrap();
            assert_eq!(recv_within(&peer, Duration::from_millis(500)).await, None);
            peer.send_to(b"after kill", relay).await.unwrap();
            assert_eq!(recv_within(&c.sock, Duration::from_millis(500)).await, None);
            let after = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            assert_eq!(after, before, "the program relayed after the kill");
        });
        running.stop();
    }

    /// A route never outlives its channel and permission by more than one timer tick: with
    /// 3-second lifetimes, relayed (by the kernel) half a second before the expiry, not at all
    /// half a second after it.
    #[test]
    fn routes_leave_the_kernel_at_the_expiry_tick() {
        let t = Topo::new("c");
        let mut config = t.config();
        config.lifetimes.permission = Duration::from_secs(3);
        config.lifetimes.channel = Duration::from_secs(3);
        let running = t.start(config);
        let server = SocketAddr::from((SERVER, running.udp[0].port()));
        t.client(|| async {
            let bound_at = Instant::now();
            let (c, peer, relay) = bound(server).await;
            let expiry = bound_at + Duration::from_secs(3);
            warm_up(&running, &c, &peer, relay).await;
            tokio::time::sleep_until((expiry - Duration::from_millis(500)).into()).await;
            let before = kernel(&running, "to_client", "tx");
            peer.send_to(b"just in time", relay).await.unwrap();
            assert!(recv_within(&c.sock, Duration::from_millis(200))
                .await
                .is_some());
            assert_eq!(
                kernel(&running, "to_client", "tx"),
                before + 1.0,
                "by the kernel"
            );
            tokio::time::sleep_until((expiry + Duration::from_millis(500)).into()).await;
            let before = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            peer.send_to(b"too late", relay).await.unwrap();
            assert_eq!(recv_within(&c.sock, Duration::from_millis(300)).await, None);
            c.sock
                .send_to(&channel_data(0x4000, b"too late"), server)
                .await
                .unwrap();
            assert_eq!(recv_within(&peer, Duration::from_millis(300)).await, None);
            let after = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            assert_eq!(after, before, "the program relayed after the expiry tick");
        });
        running.stop();
    }

    /// coturn's `turnutils_uclient` relaying ChannelData through the fast path to
    /// `turnutils_peer` (an echo): every message comes back, and the program relayed them.
    #[test]
    fn uclient_relays_through_the_kernel_fast_path() {
        let t = Topo::new("d");
        let running = t.start(t.config());
        uclient(&t, &running, "10.213.0.3", &[], SERVER.into());
        running.stop();
    }

    /// `turnutils_uclient` (with `extra` flags) to `server` relaying 200 messages to a
    /// `turnutils_peer` on `peer`: none lost, the bulk relayed by the program.
    fn uclient(t: &Topo, running: &turnd::Running, peer_ip: &str, extra: &[&str], server: IpAddr) {
        let port = listener(running, server).port().to_string();
        let server = server.to_string();
        let cli = t.cli_name();
        let mut peer = Command::new("ip")
            .args([
                "netns",
                "exec",
                &cli,
                "turnutils_peer",
                "-L",
                peer_ip,
                "-p",
                "41500",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("turnutils_peer is required (apt-get install coturn)");
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("timeout")
            .args(["60", "ip", "netns", "exec", &cli, "turnutils_uclient"])
            .args([
                "-u", USER, "-w", PASS, "-p", &port, "-e", peer_ip, "-r", "41500",
            ])
            .args(extra)
            .args(["-n", "200", "-l", "120", "-m", "1", "-z", "5", &server])
            .output()
            .expect("turnutils_uclient is required (apt-get install coturn)");
        let _ = peer.kill();
        let _ = peer.wait();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "uclient failed:\n{text}");
        let lost = text
            .lines()
            .find_map(|l| {
                l.split_once("Total lost packets ")
                    .map(|(_, r)| r.to_string())
            })
            .unwrap_or_else(|| panic!("no loss line in uclient's output:\n{text}"));
        let to_peer = kernel(running, "to_peer", "tx");
        let to_client = kernel(running, "to_client", "tx");
        eprintln!("uclient: lost {lost}; kernel relayed {to_peer} to the peer, {to_client} back");
        assert!(
            lost.trim_start().starts_with("0 "),
            "uclient lost packets: {lost}\n{text}"
        );
        // Its first messages may go through user space while the neighbours resolve; the bulk
        // goes through the program.
        assert!(
            to_peer >= 150.0 && to_client >= 150.0,
            "{to_peer} {to_client}\n{text}"
        );
    }

    /// A reload whose policy forbids the peer prunes the channel, and its routes leave the
    /// kernel with it.
    #[test]
    fn routes_leave_the_kernel_when_a_reload_forbids_the_peer() {
        let t = Topo::new("e");
        let running = t.start(t.config());
        let server = SocketAddr::from((SERVER, running.udp[0].port()));
        t.client(|| async {
            let (c, peer, relay) = bound(server).await;
            warm_up(&running, &c, &peer, relay).await;
            let mut stricter = t.config();
            stricter.policy.allow_peers = vec![];
            running.control.reload(stricter).expect("reload");
            // Asked after the reload on the same queue: the shard has applied it.
            let before = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            c.sock
                .send_to(&channel_data(0x4000, b"forbidden"), server)
                .await
                .unwrap();
            assert_eq!(recv_within(&peer, Duration::from_millis(500)).await, None);
            peer.send_to(b"forbidden", relay).await.unwrap();
            assert_eq!(recv_within(&c.sock, Duration::from_millis(500)).await, None);
            let after = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            assert_eq!(after, before, "the program relayed after the reload");
        });
        running.stop();
    }

    /// A datagram that would exceed the MTU with the ChannelData header goes to user space
    /// (which relays it, fragmented), and so does everything once the client ends the
    /// allocation with Refresh(0); the totals stay exact.
    #[test]
    fn over_the_mtu_goes_to_user_space_and_counts_survive_refresh_zero() {
        let t = Topo::new("f");
        let running = t.start(t.config());
        let server = SocketAddr::from((SERVER, running.udp[0].port()));
        let big = vec![0x33u8; 1500 - 20 - 8]; // fills a 1500-byte MTU from the peer
        t.client(|| async {
            let (mut c, peer, relay) = bound(server).await;
            let warm = warm_up(&running, &c, &peer, relay).await;
            let passed = kernel(&running, "to_client", "pass");
            peer.send_to(&big, relay).await.unwrap();
            let got = recv_within(&c.sock, Duration::from_secs(2))
                .await
                .expect("relayed by user space");
            assert_eq!(got, channel_data(0x4000, &big));
            assert_eq!(
                kernel(&running, "to_client", "pass"),
                passed + 1.0,
                "passed by the program for the MTU"
            );
            let r = c.ask(METHOD_REFRESH, &[&lifetime(0)]).await;
            assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
            assert!(running.control.sessions(None).is_empty());
            // Its routes went with it.
            let tx = kernel(&running, "to_client", "tx");
            peer.send_to(b"after refresh 0", relay).await.unwrap();
            assert_eq!(recv_within(&c.sock, Duration::from_millis(500)).await, None);
            assert_eq!(kernel(&running, "to_client", "tx"), tx);
            let m = metrics(&running);
            let to_client = warm as f64 + 1.0;
            assert_eq!(
                sum(&m, "turnd_relayed_packets_total", "\"to_client\""),
                to_client
            );
            assert_eq!(
                sum(&m, "turnd_relayed_packets_total", "\"to_peer\""),
                warm as f64
            );
        });
        running.stop();
    }

    /// `xdp_mode = "generic"` (SKB mode), when asked for, relays the same way.
    #[test]
    fn generic_mode_relays_in_the_kernel_when_asked_for() {
        let t = Topo::new("g");
        let mut config = t.config();
        config.fastpath.xdp_mode = turnd::config::XdpMode::Generic;
        let running = t.start(config);
        let server = SocketAddr::from((SERVER, running.udp[0].port()));
        const N: u64 = 50;
        t.client(|| async {
            let (c, peer, relay) = bound(server).await;
            warm_up(&running, &c, &peer, relay).await;
            let start_rx = user_space_received(&running);
            let start = kernel(&running, "to_peer", "tx");
            for i in 0..N {
                assert!(round(&c, &peer, relay, b"generic").await, "round {i}");
            }
            assert_eq!(
                user_space_received(&running),
                start_rx,
                "none via user space"
            );
            assert_eq!(kernel(&running, "to_peer", "tx") - start, N as f64);
        });
        running.stop();
    }

    /// IPv6 client and IPv6 peer: ChannelData both ways relayed by the program (its own
    /// counters; user space reads none of it), with UDP checksums that verify: the plain
    /// sockets get every datagram (Linux drops bad checksums), and the frames captured on the
    /// wire carry checksums that are right (and not 0).
    #[test]
    fn ipv6_channel_data_is_relayed_in_the_kernel_with_valid_checksums() {
        let t = Topo::new("h");
        let running = t.start(t.config6());
        let server = listener(&running, SERVER6.into());
        const N: u64 = 100;
        let cap = in_ns(&t.cli, || Capture::open(&t.cli_if));
        let (relay, client, peer_addr, start_rx, start_tx) = t.client(|| async {
            let (c, peer, relay) = bound_at(server, CLIENT6.into(), PEER6.into()).await;
            assert!(relay.is_ipv6(), "an IPv6 relay: {relay}");
            warm_up(&running, &c, &peer, relay).await;
            // What user space sent (partial checksums on a veth) is not the program's.
            cap.udp();
            let start_rx = user_space_received(&running);
            let start_tx = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            // Odd and even lengths: the checksum's byte positions differ; every other one
            // padded with non-zero bytes, which the program removes.
            for i in 0..N {
                let payload = vec![i as u8; 100 + (i as usize % 4)];
                if i % 2 == 0 {
                    assert!(round(&c, &peer, relay, &payload).await, "round {i}");
                } else {
                    assert!(padded_round(&c, &peer, &payload).await, "padded {i}");
                }
            }
            (
                relay,
                c.sock.local_addr().unwrap(),
                peer.local_addr().unwrap(),
                start_rx,
                start_tx,
            )
        });
        assert_eq!(
            user_space_received(&running) - start_rx,
            0,
            "user space read none of the {N} rounds' datagrams"
        );
        assert_eq!(kernel(&running, "to_peer", "tx") - start_tx.0, N as f64);
        assert_eq!(
            kernel(&running, "to_client", "tx") - start_tx.1,
            N as f64 / 2.0
        );
        // What the program wrote, as captured at the receivers' interface.
        let frames = cap.udp();
        let to_peer: Vec<_> = frames
            .iter()
            .filter(|f| f.0 == relay && f.1 == peer_addr)
            .collect();
        let to_client: Vec<_> = frames
            .iter()
            .filter(|f| f.0 == server && f.1 == client)
            .collect();
        assert!(
            to_peer.len() as u64 >= N && to_client.len() as u64 >= N / 2,
            "captured {} to the peer, {} to the client",
            to_peer.len(),
            to_client.len()
        );
        for f in to_peer.iter().chain(&to_client) {
            assert!(f.3 && f.2 != 0, "a bad UDP checksum on the wire: {f:?}");
        }
        running.stop();
    }

    /// IPv4 now keeps a UDP checksum too (updated, not 0), valid at the receiver.
    #[test]
    fn ipv4_udp_checksums_are_updated_not_zeroed() {
        let t = Topo::new("i");
        let running = t.start(t.config());
        let server = SocketAddr::from((SERVER, running.udp[0].port()));
        let cap = in_ns(&t.cli, || Capture::open(&t.cli_if));
        let (relay, peer_addr, start) = t.client(|| async {
            let (c, peer, relay) = bound(server).await;
            warm_up(&running, &c, &peer, relay).await;
            cap.udp();
            let start = kernel(&running, "to_peer", "tx");
            for i in 0..20u8 {
                let payload = vec![i; 51 + usize::from(i % 4)];
                assert!(round(&c, &peer, relay, &payload).await, "round {i}");
                assert!(padded_round(&c, &peer, &payload).await, "padded {i}");
            }
            (relay, peer.local_addr().unwrap(), start)
        });
        assert_eq!(kernel(&running, "to_peer", "tx") - start, 40.0);
        let frames = cap.udp();
        let to_peer: Vec<_> = frames
            .iter()
            .filter(|f| f.0 == relay && f.1 == peer_addr)
            .collect();
        assert!(to_peer.len() >= 40, "captured {}", to_peer.len());
        for f in &to_peer {
            assert!(f.3 && f.2 != 0, "a zero or bad UDP checksum: {f:?}");
        }
        running.stop();
    }

    /// An IPv6 client relayed to an IPv4 peer (REQUESTED-ADDRESS-FAMILY IPv4): not in the
    /// kernel (the program would have to translate), relayed by user space both ways.
    #[test]
    fn v6_client_with_a_v4_peer_goes_to_user_space_and_is_relayed() {
        let t = Topo::new("j");
        let running = t.start(t.config6());
        let server = listener(&running, SERVER6.into());
        t.client(|| async {
            let (c, peer, relay) = bound_at(server, CLIENT6.into(), PEER.into()).await;
            assert!(relay.is_ipv4(), "an IPv4 relay: {relay}");
            let start_rx = user_space_received(&running);
            let start = (
                kernel(&running, "to_peer", "tx"),
                kernel(&running, "to_client", "tx"),
            );
            for i in 0..20 {
                assert!(round(&c, &peer, relay, b"cross family").await, "round {i}");
            }
            assert_eq!(
                (
                    kernel(&running, "to_peer", "tx"),
                    kernel(&running, "to_client", "tx"),
                ),
                start,
                "the program relayed none of it"
            );
            assert!(
                user_space_received(&running) - start_rx >= 40,
                "user space read both ways"
            );
        });
        let s = running.control.sessions(None);
        assert_eq!((s[0].packets_to_peer, s[0].packets_to_client), (20, 20));
        running.stop();
    }

    /// `set_max_bps` caps each route direction in the program: 4x the cap offered for 2 s,
    /// the peer gets the cap's worth (plus the burst) within 25%, the rest is dropped and
    /// counted as `action="drop"`.
    #[test]
    fn the_bandwidth_cap_drops_over_the_rate_in_the_kernel() {
        let t = Topo::new("k");
        let running = t.start(t.config());
        let server = SocketAddr::from((SERVER, running.udp[0].port()));
        const CAP_BPS: u64 = 800_000;
        const PAYLOAD: usize = 1000;
        const SECS: f64 = 2.0;
        // 4x the cap: 400 datagrams/s of 1000 bytes.
        const SENT: u64 = 800;
        let (sent, got_bytes, got_packets, drops_before) = t.client(|| async {
            let (c, peer, relay) = bound(server).await;
            warm_up(&running, &c, &peer, relay).await;
            running
                .control
                .fastpath()
                .set_max_bps(CAP_BPS)
                .expect("set the cap");
            let drops_before = kernel(&running, "to_peer", "drop");
            let start_rx = user_space_received(&running);
            let data = channel_data(0x4000, &[0x77u8; PAYLOAD]);
            let receive = async {
                let (mut bytes, mut packets) = (0u64, 0u64);
                while let Some(p) = recv_within(&peer, Duration::from_millis(500)).await {
                    bytes += p.len() as u64;
                    packets += 1;
                }
                (bytes, packets)
            };
            let send = async {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(SECS / SENT as f64));
                for _ in 0..SENT {
                    tick.tick().await;
                    c.sock.send_to(&data, server).await.unwrap();
                }
                // The other direction has a bucket of its own: full while this one is
                // empty (the last datagrams to the peer were just dropped).
                let to_client = kernel(&running, "to_client", "tx");
                for i in 0..5 {
                    peer.send_to(&[0x55u8; PAYLOAD], relay).await.unwrap();
                    assert!(
                        recv_within(&c.sock, Duration::from_secs(1)).await.is_some(),
                        "to the client {i}"
                    );
                }
                assert_eq!(kernel(&running, "to_client", "tx"), to_client + 5.0);
            };
            let ((bytes, packets), ()) = tokio::join!(receive, send);
            assert_eq!(user_space_received(&running), start_rx, "all in the kernel");
            (SENT, bytes, packets, drops_before)
        });
        let drops = kernel(&running, "to_peer", "drop") - drops_before;
        // The engine's burst: a quarter second of the rate (the kernel uses the same).
        let expected = CAP_BPS as f64 / 8.0 * SECS + CAP_BPS as f64 / 8.0 * 0.25 + PAYLOAD as f64;
        eprintln!(
            "cap {CAP_BPS} bit/s: {sent} datagrams offered, {got_packets} ({got_bytes} bytes) \
             delivered, expected {expected:.0} bytes; {drops} dropped by the program"
        );
        let ratio = got_bytes as f64 / expected;
        assert!(
            (0.75..=1.25).contains(&ratio),
            "delivered {got_bytes} bytes, {ratio:.2} of {expected:.0}"
        );
        assert_eq!(
            drops,
            (sent - got_packets) as f64,
            "every datagram not delivered was dropped by the program"
        );
        // The program's drops are folded into the engine like its relayed counts: the
        // allocation's session view and turnd_bandwidth_dropped_total say the same.
        let m = metrics(&running);
        assert_eq!(
            m.get("turnd_bandwidth_dropped_total{direction=\"to_peer\"}")
                .copied(),
            Some(drops),
            "the kernel's drops in /metrics"
        );
        let s = running.control.sessions(None);
        assert_eq!(
            s.iter().map(|s| s.bandwidth_dropped[0]).sum::<u64>() as f64,
            drops,
            "the kernel's drops in the session view"
        );
        // Lifting the cap: everything goes through again.
        running.control.fastpath().set_max_bps(0).unwrap();
        t.client(|| async {
            let (c, peer, relay) = bound(server).await;
            for i in 0..20 {
                assert!(round(&c, &peer, relay, &[1u8; PAYLOAD]).await, "round {i}");
            }
        });
        running.stop();
    }

    /// coturn's `turnutils_uclient` over IPv6 (an IPv6 server address, `-x` for an IPv6
    /// relay, an IPv6 peer) through the fast path to `turnutils_peer`.
    #[test]
    fn uclient_relays_ipv6_through_the_kernel_fast_path() {
        let t = Topo::new("l");
        let running = t.start(t.config6());
        uclient(&t, &running, "fd13::3", &["-x"], SERVER6.into());
        running.stop();
    }

    /// The program's cost per packet (run_time_ns / run_cnt), IPv4 and IPv6, 100-byte
    /// payloads, 20,000 each way. A measurement, not a check: it turns on BPF run-time stats
    /// machine-wide while it runs (`cargo test --features xdp --test it fastpath_cost --
    /// --ignored --nocapture`).
    #[test]
    #[ignore = "measurement: turns on BPF run-time stats for the whole machine while it runs"]
    fn fastpath_cost_per_packet() {
        let t = Topo::new("m");
        let running = t.start(t.config6());
        let _stats = turnd::fastpath::enable_run_stats().expect("BPF_ENABLE_STATS (root?)");
        for (client, peer) in [
            (IpAddr::from(CLIENT), IpAddr::from(PEER)),
            (CLIENT6.into(), PEER6.into()),
        ] {
            let server = listener(
                &running,
                if client.is_ipv4() {
                    SERVER.into()
                } else {
                    SERVER6.into()
                },
            );
            const N: u64 = 20_000;
            let (tx, before, after) = t.client(|| async {
                let (c, peer, relay) = bound_at(server, client, peer).await;
                warm_up(&running, &c, &peer, relay).await;
                let tx = kernel(&running, "to_peer", "tx") + kernel(&running, "to_client", "tx");
                let before = running.control.fastpath().run_stats().unwrap();
                let data = channel_data(0x4000, &[0x42u8; 100]);
                for i in 0..N {
                    c.sock.send_to(&data, server).await.unwrap();
                    peer.send_to(&[0x42u8; 100], relay).await.unwrap();
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                let after = running.control.fastpath().run_stats().unwrap();
                let tx =
                    kernel(&running, "to_peer", "tx") + kernel(&running, "to_client", "tx") - tx;
                (tx, before, after)
            });
            let (ns, runs) = (after.0 - before.0, after.1 - before.1);
            eprintln!(
                "{}: {runs} runs, {tx} relayed by the program, {ns} ns, {:.0} ns per run",
                if client.is_ipv4() { "IPv4" } else { "IPv6" },
                ns as f64 / runs.max(1) as f64
            );
            assert!(runs >= 2 * N, "the program ran for every datagram ({runs})");
        }
        running.stop();
    }

    /// IPv6: a datagram that would exceed the MTU with the ChannelData header goes to user
    /// space (which relays it), counted as passed by the program.
    #[test]
    fn ipv6_over_the_mtu_goes_to_user_space() {
        let t = Topo::new("n");
        let running = t.start(t.config6());
        let server = listener(&running, SERVER6.into());
        let big = vec![0x66u8; 1500 - 40 - 8]; // fills a 1500-byte MTU from the peer
        t.client(|| async {
            let (c, peer, relay) = bound_at(server, CLIENT6.into(), PEER6.into()).await;
            warm_up(&running, &c, &peer, relay).await;
            let passed = kernel(&running, "to_client", "pass");
            let tx = kernel(&running, "to_client", "tx");
            peer.send_to(&big, relay).await.unwrap();
            let got = recv_within(&c.sock, Duration::from_secs(2))
                .await
                .expect("relayed by user space");
            assert_eq!(got, channel_data(0x4000, &big));
            assert_eq!(kernel(&running, "to_client", "pass"), passed + 1.0);
            assert_eq!(kernel(&running, "to_client", "tx"), tx);
            // Four bytes less fits with the header.
            peer.send_to(&big[..big.len() - 4], relay).await.unwrap();
            assert!(recv_within(&c.sock, Duration::from_secs(2)).await.is_some());
            assert_eq!(kernel(&running, "to_client", "tx"), tx + 1.0);
        });
        running.stop();
    }
}
