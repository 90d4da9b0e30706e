//! Loopback probes (STUN Binding, TCP accept), free port pairs, TURN REST credentials
//! computed independently of turnd, and one series of an in-process turnd's `/metrics`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};

use super::*;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `(username, password)` for TURN REST: username `expiry:user` (or just `expiry` when `user`
/// is empty), password `base64(HMAC-SHA1(secret, username))` — what coturn's uclient `-W` does.
pub fn rest_credentials(secret: &str, user: &str, expiry_unix: u64) -> (String, String) {
    let username = if user.is_empty() {
        expiry_unix.to_string()
    } else {
        format!("{expiry_unix}:{user}")
    };
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// Sends STUN Binding requests to `server` until a Binding success response arrives or
/// `timeout` passes. Returns whether it answered.
pub fn stun_binding_answers(server: SocketAddr, timeout: Duration) -> bool {
    let local: SocketAddr = if server.is_ipv4() {
        (V4, 0).into()
    } else {
        (V6, 0).into()
    };
    let sock = UdpSocket::bind(local).expect("bind loopback probe socket");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set read timeout");
    let deadline = Instant::now() + timeout;
    let tid: [u8; 12] = *b"turnd-probe!";
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&tid);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let _ = sock.send_to(&req, server);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == tid {
                return true;
            }
        }
    }
    false
}

/// Whether a TCP connection to `addr` succeeds before `timeout` (a listener is up).
pub fn tcp_accepts(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Like [`free_udp_port_pair`], and `p` is free for TCP on both addresses too.
pub(crate) fn free_stream_port() -> u16 {
    for _ in 0..100 {
        let p = free_udp_port_pair();
        let tcp = [
            std::net::TcpListener::bind((V4, p)),
            std::net::TcpListener::bind((V6, p)),
        ];
        if tcp.iter().all(Result::is_ok) {
            return p;
        }
    }
    panic!("no free UDP+TCP port on loopback after 100 tries");
}

/// A UDP port `p` such that `p` and `p + 1` are free on both 127.0.0.1 and ::1 right now.
pub(crate) fn free_udp_port_pair() -> u16 {
    for _ in 0..100 {
        let first = UdpSocket::bind((V4, 0)).expect("bind 127.0.0.1:0");
        let p = first.local_addr().expect("local addr").port();
        if p == u16::MAX {
            continue;
        }
        let others = [
            UdpSocket::bind((V6, p)),
            UdpSocket::bind((V4, p + 1)),
            UdpSocket::bind((V6, p + 1)),
        ];
        if others.iter().all(Result::is_ok) {
            return p;
        }
    }
    panic!("no free UDP port pair on loopback after 100 tries");
}

/// The `transport` listener of a running turnd on `ip` (127.0.0.1 or ::1).
pub fn listener(running: &turnd::Running, transport: ClientTransport, ip: IpAddr) -> SocketAddr {
    let list = match transport {
        ClientTransport::Udp => &running.udp,
        ClientTransport::Tcp => &running.tcp,
        ClientTransport::Tls => &running.tls,
    };
    *list
        .iter()
        .find(|a| a.ip() == ip)
        .unwrap_or_else(|| panic!("no {} listener on {ip}: {list:?}", transport.name()))
}

/// The value of `series` (a metric name with its labels, as `/metrics` prints it) from the
/// admin listener of a turnd started with `Config::for_tests()` (its token). Panics when the
/// series is missing.
pub fn metric(running: &turnd::Running, series: &str) -> u64 {
    use std::io::{Read, Write};
    let admin = running.admin.expect("admin listener");
    let mut s = std::net::TcpStream::connect(admin).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-admin-token\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read /metrics");
    let key = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a counter value")
}
