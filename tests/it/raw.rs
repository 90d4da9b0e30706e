//! A tiny raw STUN/TURN client for tests: build requests, talk over UDP or a stream, read
//! answers. Deliberately independent of turnd's own engine code.

use std::net::SocketAddr;
use std::time::Duration;

use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use turn::proto::peeraddr::PeerAddress;

pub const USER: &str = "dev";
pub const PASS: &str = "devpass";
pub const REALM: &str = "turnd";

/// An attribute with raw bytes: stun's own [`RawAttribute`] (its `length` is ignored when
/// encoding), so no value is checked or reformatted on the way out.
pub fn raw_attr(typ: AttrType, value: Vec<u8>) -> RawAttribute {
    RawAttribute {
        typ,
        length: 0,
        value,
    }
}

/// XOR-PEER-ADDRESS, encoded by the `turn` crate's [`PeerAddress`].
pub fn peer_attr(peer: SocketAddr) -> PeerAddress {
    PeerAddress {
        ip: peer.ip(),
        port: peer.port(),
    }
}

pub fn udp_transport() -> RawAttribute {
    raw_attr(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

/// REQUESTED-ADDRESS-FAMILY matching `like`'s family.
pub fn family_of(like: SocketAddr) -> RawAttribute {
    raw_attr(
        ATTR_REQUESTED_ADDRESS_FAMILY,
        vec![if like.is_ipv4() { 1 } else { 2 }, 0, 0, 0],
    )
}

pub fn channel_number(n: u16) -> RawAttribute {
    let mut v = n.to_be_bytes().to_vec();
    v.extend_from_slice(&[0, 0]);
    raw_attr(ATTR_CHANNEL_NUMBER, v)
}

pub fn lifetime(secs: u32) -> RawAttribute {
    raw_attr(ATTR_LIFETIME, secs.to_be_bytes().to_vec())
}

/// A request; with `creds` = Some((user, password, nonce)) it carries long-term credentials.
pub fn request(
    method: Method,
    setters: &[&dyn Setter],
    creds: Option<(&str, &str, &str)>,
) -> Message {
    let mut m = Message::new();
    m.typ = MessageType::new(method, CLASS_REQUEST);
    m.new_transaction_id().unwrap();
    m.write_header();
    for s in setters {
        s.add_to(&mut m).unwrap();
    }
    if let Some((user, pass, nonce)) = creds {
        for (t, v) in [
            (ATTR_USERNAME, user),
            (ATTR_REALM, REALM),
            (ATTR_NONCE, nonce),
        ] {
            TextAttribute::new(t, v.to_string()).add_to(&mut m).unwrap();
        }
        MessageIntegrity::new_long_term_integrity(user.into(), REALM.into(), pass.into())
            .add_to(&mut m)
            .unwrap();
    }
    m
}

pub fn code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

pub fn nonce_of(m: &Message) -> String {
    TextAttribute::get_from_as(m, ATTR_NONCE)
        .expect("a NONCE")
        .text
}

pub fn xor_addr(m: &Message, t: AttrType) -> SocketAddr {
    let mut x = XorMappedAddress::default();
    x.get_from_as(m, t).expect("an address attribute");
    SocketAddr::new(x.ip, x.port)
}

pub fn parse(bytes: &[u8]) -> Message {
    let mut r = Message::new();
    r.unmarshal_binary(bytes).expect("a STUN message");
    r
}

/// Send over UDP until an answer with the same transaction id arrives (5 tries).
pub async fn udp_ask(sock: &UdpSocket, to: SocketAddr, m: &Message) -> Message {
    let mut buf = vec![0u8; 2048];
    for _ in 0..5 {
        sock.send_to(&m.raw, to).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
        {
            if n >= 20 && buf[0] >> 6 == 0 && buf[8..20] == m.transaction_id.0 {
                return parse(&buf[..n]);
            }
        }
    }
    panic!("no answer from {to}");
}

/// A UDP TURN client with a nonce, talking to one server address.
pub struct UdpTurn {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub nonce: String,
    pub user: String,
    pub pass: String,
}

impl UdpTurn {
    pub async fn new(server: SocketAddr) -> Self {
        let sock = UdpSocket::bind(SocketAddr::new(server.ip(), 0))
            .await
            .unwrap();
        UdpTurn {
            sock,
            server,
            nonce: String::new(),
            user: USER.into(),
            pass: PASS.into(),
        }
    }

    /// An authenticated request (learning the nonce on the first 401 or a 438).
    pub async fn ask(&mut self, method: Method, setters: &[&dyn Setter]) -> Message {
        for _ in 0..3 {
            let creds = (!self.nonce.is_empty()).then_some((
                self.user.as_str(),
                self.pass.as_str(),
                self.nonce.as_str(),
            ));
            let r = udp_ask(&self.sock, self.server, &request(method, setters, creds)).await;
            match code(&r) {
                Some(401) if self.nonce.is_empty() => self.nonce = nonce_of(&r),
                Some(438) => self.nonce = nonce_of(&r),
                _ => return r,
            }
        }
        panic!("no authenticated answer");
    }

    /// Allocate a relay of the server address's family; returns the relayed address.
    pub async fn allocate(&mut self) -> SocketAddr {
        let r = self
            .ask(
                METHOD_ALLOCATE,
                &[&udp_transport(), &family_of(self.server)],
            )
            .await;
        assert_eq!(
            r.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "Allocate: {:?}",
            code(&r)
        );
        xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS)
    }

    pub async fn channel_bind(&mut self, number: u16, peer: SocketAddr) {
        let r = self
            .ask(
                METHOD_CHANNEL_BIND,
                &[&channel_number(number), &peer_attr(peer)],
            )
            .await;
        assert_eq!(
            r.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "ChannelBind: {:?}",
            code(&r)
        );
    }
}

pub fn channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Read one STUN message or (padded) ChannelData frame from a stream.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut h = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut h))
        .await
        .expect("a frame")
        .unwrap();
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let rest = if h[0] >> 6 == 1 {
        (len + 3) & !3
    } else {
        16 + len
    };
    let mut v = h.to_vec();
    v.resize(4 + rest, 0);
    s.read_exact(&mut v[4..]).await.unwrap();
    v
}

/// Write a request on a stream and read the answer.
pub async fn stream_ask<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, m: &Message) -> Message {
    s.write_all(&m.raw).await.unwrap();
    let r = parse(&read_frame(s).await);
    assert_eq!(r.transaction_id, m.transaction_id);
    r
}

/// Poll `f` every 20 ms for up to 5 s.
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(std::time::Instant::now() < end, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 request (Connection: close); returns (status, body).
pub async fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("an HTTP status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let chunked = text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (status, if chunked { unchunk(&body) } else { body })
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Parse Prometheus text into (name{labels}, value) pairs.
pub fn prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Every series of the admin listener's `/metrics` (no token: the tests' configs leave
/// `/metrics` open), by name{labels}.
pub async fn metrics(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = http("GET", admin, "/metrics", None).await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    prometheus(&body)
}

/// One series of [`metrics`]; panics when it is missing.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    *metrics(admin)
        .await
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// A webrtc-rs `turn::client::Client` on a fresh loopback socket, listening, for `server`
/// with long-term credentials in realm `realm` (no Allocate yet).
pub async fn turn_client(
    server: SocketAddr,
    username: &str,
    password: &str,
    realm: &str,
) -> turn::client::Client {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let conn = std::sync::Arc::new(UdpSocket::bind(local).await.unwrap());
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: realm.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}
