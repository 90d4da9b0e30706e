//! Tier 3: the server's own addresses as peers (issue 10, item 2), in a network namespace of
//! our own so that a "public" address can sit on `lo` without touching the host.
//!
//! In the namespace: 11.0.0.1/32 on `lo` (a public-looking address that no default deny entry
//! covers; traffic to it never leaves the namespace), turnd on `0.0.0.0` with the default
//! relay address `0.0.0.0`, and a UDP service on `0.0.0.0:5353`. CreatePermission, ChannelBind
//! and Send towards `11.0.0.1:5353` must be refused, while relay-to-relay traffic on the same
//! address keeps working. An address added after start is picked up by a reload.
//!
//! Needs root (network namespaces) and `ip` (iproute2); fails loudly without them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use crate::raw::*;
use stun::attributes::*;
use stun::message::*;
use tokio::net::UdpSocket;

/// A network namespace removed on drop, even when the test fails.
pub(crate) struct Netns(String);

impl Netns {
    pub(crate) fn new(tag: &str) -> Netns {
        let name = format!("turnd-{tag}-{}", std::process::id());
        // A leftover of an earlier crashed run of this very process id: remove it first.
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args...`, which must succeed.
    pub(crate) fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Move the calling thread into the namespace; threads it spawns are born there too.
    pub(crate) fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("netns file");
        // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config() -> turnd::Config {
    let mut c = turnd::Config::secure_default();
    c.workers = 1;
    c.listen.udp = vec![SocketAddr::from(([0, 0, 0, 0], 0))];
    c.admin.listen = None;
    c.signaling.listen = None;
    c.relay.ports = turnd::config::PortRange {
        min: 40000,
        max: 40100,
    };
    c.auth.users = vec![turnd::config::StaticUser {
        name: USER.into(),
        credential: turnd::config::Credential::Password(PASS.into()),
    }];
    c.realm = REALM.into();
    c.validate().expect("a valid config");
    c
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut m = Message::new();
    m.typ = MessageType::new(METHOD_SEND, CLASS_INDICATION);
    m.new_transaction_id().unwrap();
    m.write_header();
    peer_attr(peer).add_to(&mut m).unwrap();
    raw_attr(ATTR_DATA, data.to_vec()).add_to(&mut m).unwrap();
    m.raw
}

/// The DATA of the next Data indication on `sock`, if one arrives within `wait`.
async fn data_indication(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        let m = parse(&buf[..n]);
        if m.typ == MessageType::new(METHOD_DATA, CLASS_INDICATION) {
            return Some(m.get(ATTR_DATA).unwrap());
        }
    }
    None
}

async fn permission(c: &mut UdpTurn, peer: SocketAddr) -> Option<u16> {
    code(&c.ask(METHOD_CREATE_PERMISSION, &[&peer_attr(peer)]).await)
}

async fn channel_bind(c: &mut UdpTurn, n: u16, peer: SocketAddr) -> Option<u16> {
    code(
        &c.ask(METHOD_CHANNEL_BIND, &[&channel_number(n), &peer_attr(peer)])
            .await,
    )
}

#[test]
fn own_public_address_is_denied_on_every_port_but_the_relay_range() {
    let ns = Netns::new("own");
    ns.ip(&["addr", "add", "11.0.0.1/32", "dev", "lo"]);
    let public = IpAddr::V4(Ipv4Addr::new(11, 0, 0, 1));
    let later = IpAddr::V4(Ipv4Addr::new(11, 0, 0, 2));
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let running = turnd::start(config()).expect("turnd starts in the netns");
                let server = SocketAddr::new(public, running.udp[0].port());
                // The service a probe must not reach, on every address of the namespace.
                let service = UdpSocket::bind("0.0.0.0:5353").await.unwrap();
                let target = SocketAddr::new(public, 5353);

                let mut a = UdpTurn::new(server).await;
                let relay_a = a.allocate().await;
                let mut b = UdpTurn::new(server).await;
                let relay_b = b.allocate().await;

                assert_eq!(
                    permission(&mut a, target).await,
                    Some(403),
                    "CreatePermission"
                );
                assert_eq!(
                    channel_bind(&mut a, 0x4000, target).await,
                    Some(403),
                    "ChannelBind"
                );
                // Send without a permission is dropped anyway; even with one for the IP
                // (relay-to-relay below installs it), the port outside the relay range is not.
                let to_b = SocketAddr::new(public, relay_b.port());
                let to_a = SocketAddr::new(public, relay_a.port());
                assert_eq!(
                    permission(&mut a, to_b).await,
                    None,
                    "relay to relay: a -> b"
                );
                assert_eq!(
                    permission(&mut b, to_a).await,
                    None,
                    "relay to relay: b -> a"
                );
                a.sock
                    .send_to(&send_indication(target, b"probe"), server)
                    .await
                    .unwrap();
                let mut buf = [0u8; 64];
                let probe =
                    tokio::time::timeout(Duration::from_millis(500), service.recv_from(&mut buf))
                        .await;
                assert!(
                    probe.is_err(),
                    "the service on {target} received a relayed probe"
                );

                // Relay to relay on the same own address still works.
                a.sock
                    .send_to(&send_indication(to_b, b"hello b"), server)
                    .await
                    .unwrap();
                assert_eq!(
                    data_indication(&b.sock, Duration::from_secs(2))
                        .await
                        .as_deref(),
                    Some(&b"hello b"[..]),
                    "relay-to-relay traffic between {relay_a} and {relay_b}"
                );

                // An address that appears after start is refused after a reload (SIGHUP).
                ns.ip(&["addr", "add", "11.0.0.2/32", "dev", "lo"]);
                running.control.reload(config()).expect("reload");
                let target2 = SocketAddr::new(later, 5353);
                assert_eq!(permission(&mut a, target2).await, Some(403), "after reload");
                assert_eq!(channel_bind(&mut a, 0x4001, target2).await, Some(403));
                running.stop();
            });
        });
    });
}
