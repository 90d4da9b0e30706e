//! A minimal TURN client (RFC 8656) over UDP, TCP or TLS, on the `stun` crate.
//!
//! [`Conn`] is one connection to the server: a connected UDP socket or a byte stream with
//! STUN/ChannelData framing, reading into one buffer it owns (no allocation per frame).
//! [`TurnClient`] runs request/response transactions on it: retransmission over UDP
//! (RFC 8489 §6.2.1), the 401 challenge and 438 stale-nonce retry of long-term credentials,
//! and the MESSAGE-INTEGRITY check of responses. Errors say what to look at
//! ([`ClientError`]). The load generator takes the [`Conn`] over for its data path.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use turnd_proto::auth::long_term_key;
use turnd_proto::engine::Transport;
use turnd_proto::frames::stream_frame_len;

/// A byte stream to the server (TCP or TLS over TCP).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What a [`Conn`] runs over.
pub enum Link {
    /// Connected to the server.
    Udp(UdpSocket),
    Stream(Box<dyn Stream>),
    /// DTLS 1.2 over a connected UDP socket (probe only).
    Dtls(Box<DtlsLink>),
}

/// A DTLS client session (dimpl, sans-IO) over a connected UDP socket.
pub struct DtlsLink {
    sock: UdpSocket,
    dtls: dimpl::Dtls,
    buf: Vec<u8>,
    /// Records to send, plaintext received, the next retransmission.
    out: Vec<Vec<u8>>,
    app: std::collections::VecDeque<Vec<u8>>,
    next: Option<std::time::Instant>,
    connected: bool,
    peer_cert: Option<Vec<u8>>,
    closed: bool,
}

impl DtlsLink {
    fn poll(&mut self) {
        for _ in 0..1024 {
            match self.dtls.poll_output(&mut self.buf) {
                dimpl::Output::Packet(p) => self.out.push(p.to_vec()),
                dimpl::Output::BufferTooSmall { needed } if needed <= 1 << 16 => {
                    self.buf.resize(needed, 0)
                }
                dimpl::Output::Timeout(t) => {
                    self.next = Some(t);
                    return;
                }
                dimpl::Output::Connected => self.connected = true,
                dimpl::Output::PeerCert(c) => self.peer_cert = Some(c.to_vec()),
                dimpl::Output::ApplicationData(d) => self.app.push_back(d.to_vec()),
                dimpl::Output::CloseNotify => {
                    self.closed = true;
                    return;
                }
                _ => return,
            }
        }
    }

    async fn send_out(&mut self) -> io::Result<()> {
        for p in std::mem::take(&mut self.out) {
            self.sock.send(&p).await?;
        }
        Ok(())
    }

    /// Wait for one datagram or the next retransmission timer, and feed it to the session.
    async fn step(&mut self) -> io::Result<()> {
        let mut d = vec![0u8; 65536];
        let timer = self
            .next
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(1));
        match tokio::time::timeout_at(Instant::from_std(timer), self.sock.recv(&mut d)).await {
            Ok(r) => {
                let n = r?;
                self.dtls
                    .handle_packet(&d[..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            }
            Err(_) => self
                .dtls
                .handle_timeout(std::time::Instant::now())
                .map_err(|e| io::Error::new(io::ErrorKind::TimedOut, e.to_string()))?,
        }
        self.poll();
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the DTLS session",
            ));
        }
        self.send_out().await
    }

    async fn connect(sock: UdpSocket, target: &TlsTarget) -> io::Result<DtlsLink> {
        let (cert, key) = {
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["turnctl".to_string()])
                    .map_err(io::Error::other)?;
            (cert.der().to_vec(), signing_key.serialize_der())
        };
        let config = dimpl::Config::builder().build().map_err(io::Error::other)?;
        let mut dtls = dimpl::Dtls::new_12(
            Arc::new(config),
            dimpl::DtlsCertificate {
                certificate: cert,
                private_key: key,
            },
            std::time::Instant::now(),
        );
        dtls.set_active(true);
        dtls.handle_timeout(std::time::Instant::now())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut l = DtlsLink {
            sock,
            dtls,
            buf: vec![0; 4096],
            out: Vec::new(),
            app: Default::default(),
            next: None,
            connected: false,
            peer_cert: None,
            closed: false,
        };
        l.poll();
        l.send_out().await?;
        while !l.connected {
            l.step().await?;
        }
        let der = l
            .peer_cert
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no server certificate"))?;
        target
            .verifier
            .verify_server_cert(
                &rustls::pki_types::CertificateDer::from(der),
                &[],
                &target.name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("invalid peer certificate: {e}"),
                )
            })?;
        Ok(l)
    }

    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.dtls
            .send_application_data(data)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.poll();
        self.send_out().await
    }

    /// Encrypt `frame` `count` times as consecutive application-data records of this
    /// session, one record per datagram, appended to `out` in sequence order; returns the
    /// length of one record (all are equal: same plaintext length, same AEAD overhead). The
    /// records are for the load generator to send later, each exactly once (the server's
    /// replay window refuses a sequence number it has seen or one 64 behind its newest).
    pub fn seal_records(
        &mut self,
        frame: &[u8],
        count: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        if !self.connected || self.closed {
            return Err(io::Error::other("the DTLS session is not established"));
        }
        let mut rec_len = 0;
        for _ in 0..count {
            self.dtls
                .send_application_data(frame)
                .map_err(|e| io::Error::other(e.to_string()))?;
            // Take the datagram right away: dimpl would put the next record in the same one.
            let mut records = 0;
            loop {
                match self.dtls.poll_output(&mut self.buf) {
                    dimpl::Output::Packet(p) => {
                        if rec_len == 0 {
                            rec_len = p.len();
                        }
                        if p.len() != rec_len {
                            return Err(io::Error::other(format!(
                                "a record of {} bytes after ones of {rec_len}",
                                p.len()
                            )));
                        }
                        out.extend_from_slice(p);
                        records += 1;
                    }
                    dimpl::Output::BufferTooSmall { needed } if needed <= 1 << 16 => {
                        self.buf.resize(needed, 0)
                    }
                    dimpl::Output::Timeout(t) => {
                        self.next = Some(t);
                        break;
                    }
                    dimpl::Output::ApplicationData(d) => self.app.push_back(d.to_vec()),
                    _ => break,
                }
            }
            if records != 1 {
                return Err(io::Error::other(format!(
                    "one application record gave {records} datagrams"
                )));
            }
        }
        Ok(rec_len)
    }

    /// The UDP socket, connected to the server.
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    async fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(d) = self.app.pop_front() {
                return Ok(d);
            }
            self.step().await?;
        }
    }
}

/// Receive buffer: a datagram of up to 64 KiB, or several stream frames.
const BUF_LEN: usize = 128 * 1024;

/// One connection to the server.
pub struct Conn {
    pub link: Link,
    pub transport: Transport,
    pub server: SocketAddr,
    pub local: SocketAddr,
    buf: Box<[u8]>,
    /// Unconsumed stream bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

/// Where to connect with TLS: the connector and the name to verify.
#[derive(Clone)]
pub struct TlsTarget {
    pub connector: TlsConnector,
    pub name: rustls::pki_types::ServerName<'static>,
    /// For DTLS (`turns:...?transport=udp`): checks the leaf certificate the handshake used.
    pub verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
}

impl Conn {
    /// Open a connection (for TLS, including the handshake) within `timeout`.
    pub async fn connect(
        server: SocketAddr,
        transport: Transport,
        tls: Option<&TlsTarget>,
        timeout: Duration,
    ) -> Result<Conn, ClientError> {
        let deadline = Instant::now() + timeout;
        let (link, local) = match transport {
            Transport::Dtls => {
                let Some(t) = tls else {
                    return Err(ClientError::Protocol(
                        "DTLS without a TLS configuration".into(),
                    ));
                };
                let any: SocketAddr = if server.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal")
                } else {
                    "[::]:0".parse().expect("literal")
                };
                let s = UdpSocket::bind(any).await.map_err(ClientError::Io)?;
                s.connect(server)
                    .await
                    .map_err(|error| ClientError::Connect { server, error })?;
                let local = s.local_addr().map_err(ClientError::Io)?;
                let link = tokio::time::timeout_at(deadline, DtlsLink::connect(s, t))
                    .await
                    .map_err(|_| ClientError::Timeout {
                        server,
                        after: timeout,
                    })?
                    .map_err(|error| ClientError::Tls { server, error })?;
                (Link::Dtls(Box::new(link)), local)
            }
            Transport::Udp => {
                let any: SocketAddr = if server.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal")
                } else {
                    "[::]:0".parse().expect("literal")
                };
                let s = UdpSocket::bind(any).await.map_err(ClientError::Io)?;
                s.connect(server)
                    .await
                    .map_err(|error| ClientError::Connect { server, error })?;
                let local = s.local_addr().map_err(ClientError::Io)?;
                (Link::Udp(s), local)
            }
            Transport::Tcp | Transport::Tls => {
                let s = tokio::time::timeout_at(deadline, TcpStream::connect(server))
                    .await
                    .map_err(|_| ClientError::Timeout {
                        server,
                        after: timeout,
                    })?
                    .map_err(|error| ClientError::Connect { server, error })?;
                let _ = s.set_nodelay(true);
                let local = s.local_addr().map_err(ClientError::Io)?;
                let link: Box<dyn Stream> = match (transport, tls) {
                    (Transport::Tls, Some(t)) => Box::new(
                        tokio::time::timeout_at(deadline, t.connector.connect(t.name.clone(), s))
                            .await
                            .map_err(|_| ClientError::Timeout {
                                server,
                                after: timeout,
                            })?
                            .map_err(|error| ClientError::Tls { server, error })?,
                    ),
                    (Transport::Tls, None) => {
                        return Err(ClientError::Protocol(
                            "TLS without a TLS configuration".into(),
                        ))
                    }
                    _ => Box::new(s),
                };
                (Link::Stream(link), local)
            }
        };
        Ok(Conn {
            link,
            transport,
            server,
            local,
            buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
        })
    }

    /// Send one datagram or one frame (which must already be padded on streams).
    pub async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.link {
            Link::Udp(s) => s.send(frame).await.map(|_| ()),
            Link::Dtls(d) => d.send(frame).await,
            Link::Stream(s) => {
                s.write_all(frame).await?;
                s.flush().await
            }
        }
    }

    /// The next datagram, or the next complete frame of the stream.
    pub async fn recv(&mut self) -> io::Result<&[u8]> {
        if let Link::Udp(s) = &self.link {
            let n = s.recv(&mut self.buf).await?;
            return Ok(&self.buf[..n]);
        }
        if let Link::Dtls(d) = &mut self.link {
            let data = d.recv().await?;
            let n = data.len().min(self.buf.len());
            self.buf[..n].copy_from_slice(&data[..n]);
            return Ok(&self.buf[..n]);
        }
        loop {
            if let Some(r) = self.next_frame()? {
                return Ok(&self.buf[r]);
            }
            self.fill().await?;
        }
    }

    /// The next complete frame already buffered (streams only), as a range of [`Conn::frame`].
    pub fn next_frame(&mut self) -> io::Result<Option<Range<usize>>> {
        let head = &self.buf[self.start..self.end];
        match stream_frame_len(head) {
            Ok(Some(n)) if n <= head.len() => {
                let r = self.start..self.start + n;
                self.start += n;
                Ok(Some(r))
            }
            Ok(_) => Ok(None),
            Err(b) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stream out of sync: first byte {b:#04x} is neither STUN nor ChannelData"),
            )),
        }
    }

    /// The stream and the bytes already read from it but not consumed (after an RFC 6062
    /// ConnectionBind the connection carries raw bytes). `None` for UDP.
    pub fn into_raw(self) -> Option<(Box<dyn Stream>, Vec<u8>)> {
        match self.link {
            Link::Stream(s) => Some((s, self.buf[self.start..self.end].to_vec())),
            Link::Udp(_) | Link::Dtls(_) => None,
        }
    }

    /// Bytes of a range returned by [`Conn::next_frame`].
    pub fn frame(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Read more stream bytes (cancel-safe: nothing is consumed until the read completes).
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end > BUF_LEN / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let Link::Stream(s) = &mut self.link else {
            return Err(io::Error::other("fill on a datagram socket"));
        };
        let n = s.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }
}

/// Why a request did not succeed.
#[derive(Debug)]
pub enum ClientError {
    Timeout {
        server: SocketAddr,
        after: Duration,
    },
    Connect {
        server: SocketAddr,
        error: io::Error,
    },
    Tls {
        server: SocketAddr,
        error: io::Error,
    },
    Io(io::Error),
    /// An error response.
    Stun {
        method: Method,
        code: u16,
        reason: String,
    },
    NeedCredentials,
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Timeout { server, after } => {
                write!(f, "unreachable: no answer from {server} within {}", secs(*after))
            }
            ClientError::Connect { server, error } if error.kind() == io::ErrorKind::ConnectionRefused => {
                write!(f, "unreachable: {server} refused (nothing listens there?)")
            }
            ClientError::Connect { server, error } => {
                write!(f, "unreachable: cannot connect to {server}: {error}")
            }
            ClientError::Tls { server, error } => {
                write!(f, "TLS handshake with {server} failed: {error}")?;
                if error.to_string().contains("certificate") {
                    write!(f, " (give --ca FILE with the server's CA, or --insecure)")?;
                }
                Ok(())
            }
            ClientError::Io(e) => write!(f, "I/O error: {e}"),
            ClientError::Stun { method, code, reason } => {
                write!(f, "{code} {reason}")?;
                match hint(*method, *code) {
                    Some(h) => write!(f, " ({h})"),
                    None => Ok(()),
                }
            }
            ClientError::NeedCredentials => write!(
                f,
                "401 Unauthorized (the server wants credentials: give --user and --password, or --secret)"
            ),
            ClientError::Protocol(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The STUN error code, when the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Stun { code, .. } => Some(*code),
            ClientError::NeedCredentials => Some(401),
            _ => None,
        }
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// What an operator should check for an error code (RFC 8489 §14.8, RFC 8656 §19).
fn hint(method: Method, code: u16) -> Option<&'static str> {
    let peer_method = method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND;
    Some(match code {
        400 => "the server could not parse the request",
        401 => "wrong user or password?",
        403 if peer_method => "peer address denied by server policy",
        403 => "forbidden by server policy",
        420 => "the server does not understand a required attribute",
        437 => "allocation mismatch: this 5-tuple has another or no allocation",
        438 => "stale nonce, even after a retry",
        440 => "the server has no relay for that address family",
        441 => "wrong credentials for this allocation",
        442 => "the server does not relay this transport",
        443 => "peer address family does not match the relay",
        486 => "allocation quota reached for this user or server",
        508 => "server out of capacity (relay ports exhausted?)",
        _ => return None,
    })
}

/// Username and password for long-term credentials (static or TURN REST).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Clone)]
struct Session {
    realm: String,
    nonce: String,
    key: [u8; 16],
}

/// What a successful Allocate returned.
#[derive(Debug, Clone, Copy)]
pub struct Allocated {
    pub relayed: SocketAddr,
    pub lifetime: u32,
}

/// A raw attribute value.
pub struct Raw(pub AttrType, pub Vec<u8>);
impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

/// XOR-PEER-ADDRESS.
pub struct PeerAttr(pub SocketAddr);
impl Setter for PeerAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        XorMappedAddress {
            ip: self.0.ip(),
            port: self.0.port(),
        }
        .add_to_as(m, ATTR_XOR_PEER_ADDRESS)
    }
}

/// A TURN client session on one connection.
pub struct TurnClient {
    pub conn: Conn,
    creds: Option<Credentials>,
    session: Option<Session>,
    pub timeout: Duration,
}

impl TurnClient {
    pub fn new(conn: Conn, creds: Option<Credentials>, timeout: Duration) -> Self {
        TurnClient {
            conn,
            creds,
            session: None,
            timeout,
        }
    }

    /// A client on another connection with this one's credentials and nonce (an RFC 6062
    /// data connection).
    pub fn sibling(&self, conn: Conn) -> TurnClient {
        TurnClient {
            conn,
            creds: self.creds.clone(),
            session: self.session.clone(),
            timeout: self.timeout,
        }
    }

    /// The realm learned from the server's 401.
    pub fn realm(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.realm.as_str())
    }

    /// One request, answered with success; handles 401 and 438 by authenticating again.
    pub async fn transact(
        &mut self,
        method: Method,
        attrs: &[&dyn Setter],
    ) -> Result<Message, ClientError> {
        let authenticate = method != METHOD_BINDING;
        for _ in 0..3 {
            let sent_auth = authenticate && self.session.is_some();
            let req = self.build(method, attrs, sent_auth)?;
            let mut resp = self.exchange(&req).await?;
            if resp.typ.class == CLASS_SUCCESS_RESPONSE {
                self.check_integrity(method, &mut resp)?;
                return Ok(resp);
            }
            let mut e = ErrorCodeAttribute::default();
            if e.get_from(&resp).is_err() {
                return Err(ClientError::Protocol(format!(
                    "{} error response without ERROR-CODE",
                    method_name(method)
                )));
            }
            let code = e.code.0;
            let retry = authenticate && ((code == 401 && !sent_auth) || code == 438);
            if retry {
                let creds = self.creds.as_ref().ok_or(ClientError::NeedCredentials)?;
                let realm = text(&resp, ATTR_REALM)
                    .or_else(|| self.session.as_ref().map(|s| s.realm.clone()))
                    .unwrap_or_default();
                let nonce = text(&resp, ATTR_NONCE).ok_or_else(|| {
                    ClientError::Protocol(format!("{code} without a NONCE from the server"))
                })?;
                let key = long_term_key(&creds.username, &realm, &creds.password);
                self.session = Some(Session {
                    realm,
                    nonce,
                    key: *key.as_bytes(),
                });
                continue;
            }
            let reason = String::from_utf8_lossy(&e.reason).trim().to_string();
            return Err(ClientError::Stun {
                method,
                code,
                reason: reason_or_default(code, reason),
            });
        }
        Err(ClientError::Protocol(format!(
            "{}: the server keeps asking to authenticate again",
            method_name(method)
        )))
    }

    fn build(
        &self,
        method: Method,
        attrs: &[&dyn Setter],
        auth: bool,
    ) -> Result<Message, ClientError> {
        let proto = |e: stun::Error| ClientError::Protocol(format!("cannot encode a request: {e}"));
        let mut m = Message::new();
        m.typ = MessageType::new(method, CLASS_REQUEST);
        m.new_transaction_id().map_err(proto)?;
        m.write_header();
        for a in attrs {
            a.add_to(&mut m).map_err(proto)?;
        }
        if let (true, Some(s), Some(c)) = (auth, &self.session, &self.creds) {
            for (t, v) in [
                (ATTR_USERNAME, &c.username),
                (ATTR_REALM, &s.realm),
                (ATTR_NONCE, &s.nonce),
            ] {
                TextAttribute::new(t, v.clone())
                    .add_to(&mut m)
                    .map_err(proto)?;
            }
            MessageIntegrity(s.key.to_vec())
                .add_to(&mut m)
                .map_err(proto)?;
        }
        Ok(m)
    }

    /// Send `req` (retransmitting over UDP) and wait for its response.
    async fn exchange(&mut self, req: &Message) -> Result<Message, ClientError> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut rto = Duration::from_millis(500);
        let mut next_send = start;
        let server = self.conn.server;
        let udp = self.conn.transport == Transport::Udp;
        loop {
            if Instant::now() >= next_send {
                self.conn.send(&req.raw).await.map_err(ClientError::Io)?;
                if !udp {
                    next_send = deadline;
                } else {
                    next_send = (Instant::now() + rto).min(deadline);
                    rto *= 2;
                }
            }
            let wait = next_send
                .max(Instant::now() + Duration::from_millis(1))
                .min(deadline);
            match tokio::time::timeout_at(wait, self.conn.recv()).await {
                Ok(Ok(bytes)) => {
                    let ours = matches!(bytes.first(), Some(b) if b >> 6 == 0)
                        && bytes.get(8..20).is_some()
                        && bytes.get(8..20) == req.raw.get(8..20);
                    if !ours {
                        continue; // not ours: a Data indication, ChannelData or a late answer
                    }
                    let mut m = Message::new();
                    if m.unmarshal_binary(bytes).is_err() {
                        continue;
                    }
                    return Ok(m);
                }
                // ICMP port unreachable surfaces as ConnectionRefused on a connected socket.
                Ok(Err(error)) if udp && error.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(ClientError::Connect { server, error });
                }
                Ok(Err(_)) if udp => tokio::time::sleep_until(next_send.min(deadline)).await,
                Ok(Err(e)) => return Err(ClientError::Io(e)),
                Err(_) if Instant::now() >= deadline => {
                    return Err(ClientError::Timeout {
                        server,
                        after: self.timeout,
                    })
                }
                Err(_) => {}
            }
        }
    }

    fn check_integrity(&self, method: Method, resp: &mut Message) -> Result<(), ClientError> {
        let Some(s) = &self.session else {
            return Ok(());
        };
        if method == METHOD_BINDING || !resp.contains(ATTR_MESSAGE_INTEGRITY) {
            return Ok(());
        }
        MessageIntegrity(s.key.to_vec()).check(resp).map_err(|_| {
            ClientError::Protocol(format!(
                "{} response failed its MESSAGE-INTEGRITY check (the server has another key for this user?)",
                method_name(method)
            ))
        })
    }

    /// STUN Binding: the server-reflexive (mapped) address.
    pub async fn binding(&mut self) -> Result<SocketAddr, ClientError> {
        let r = self.transact(METHOD_BINDING, &[]).await?;
        xor_addr(&r, ATTR_XORMAPPED_ADDRESS).ok_or_else(|| {
            ClientError::Protocol("Binding response without XOR-MAPPED-ADDRESS".into())
        })
    }

    /// Allocate a UDP relay; `ipv6` asks for an IPv6 one (REQUESTED-ADDRESS-FAMILY).
    pub async fn allocate(&mut self, ipv6: bool) -> Result<Allocated, ClientError> {
        self.allocate_protocol(17, ipv6).await
    }

    /// Allocate an RFC 6062 TCP relay (REQUESTED-TRANSPORT TCP; TCP/TLS connections only).
    pub async fn allocate_tcp(&mut self, ipv6: bool) -> Result<Allocated, ClientError> {
        self.allocate_protocol(6, ipv6).await
    }

    /// Allocate with REQUESTED-TRANSPORT `protocol` (17 UDP, 6 TCP).
    async fn allocate_protocol(
        &mut self,
        protocol: u8,
        ipv6: bool,
    ) -> Result<Allocated, ClientError> {
        let t = Raw(ATTR_REQUESTED_TRANSPORT, vec![protocol, 0, 0, 0]);
        let f = Raw(ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
        let attrs: Vec<&dyn Setter> = if ipv6 { vec![&t, &f] } else { vec![&t] };
        let r = self.transact(METHOD_ALLOCATE, &attrs).await?;
        let relayed = xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS).ok_or_else(|| {
            ClientError::Protocol("Allocate response without XOR-RELAYED-ADDRESS".into())
        })?;
        Ok(Allocated {
            relayed,
            lifetime: lifetime(&r).unwrap_or(0),
        })
    }

    /// RFC 6062 Connect to `peer`: the CONNECTION-ID.
    pub async fn connect_peer(&mut self, peer: SocketAddr) -> Result<u32, ClientError> {
        let r = self.transact(METHOD_CONNECT, &[&PeerAttr(peer)]).await?;
        r.get(ATTR_CONNECTION_ID)
            .ok()
            .and_then(|v| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
            .ok_or_else(|| ClientError::Protocol("Connect response without CONNECTION-ID".into()))
    }

    /// RFC 6062 ConnectionBind on this (new) connection; afterwards it carries raw bytes.
    pub async fn connection_bind(&mut self, id: u32) -> Result<(), ClientError> {
        let c = Raw(ATTR_CONNECTION_ID, id.to_be_bytes().to_vec());
        self.transact(METHOD_CONNECTION_BIND, &[&c])
            .await
            .map(|_| ())
    }

    pub async fn create_permission(&mut self, peer: SocketAddr) -> Result<(), ClientError> {
        self.transact(METHOD_CREATE_PERMISSION, &[&PeerAttr(peer)])
            .await
            .map(|_| ())
    }

    pub async fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Result<(), ClientError> {
        let [hi, lo] = number.to_be_bytes();
        let ch = Raw(ATTR_CHANNEL_NUMBER, vec![hi, lo, 0, 0]);
        self.transact(METHOD_CHANNEL_BIND, &[&ch, &PeerAttr(peer)])
            .await
            .map(|_| ())
    }

    /// Refresh with `lifetime` seconds (0 deletes the allocation); returns the granted one.
    pub async fn refresh(&mut self, lifetime: u32) -> Result<u32, ClientError> {
        let l = Raw(ATTR_LIFETIME, lifetime.to_be_bytes().to_vec());
        let r = self.transact(METHOD_REFRESH, &[&l]).await?;
        Ok(self::lifetime(&r).unwrap_or(0))
    }
}

fn text(m: &Message, t: AttrType) -> Option<String> {
    TextAttribute::get_from_as(m, t).ok().map(|a| a.text)
}

fn xor_addr(m: &Message, t: AttrType) -> Option<SocketAddr> {
    let mut x = XorMappedAddress::default();
    x.get_from_as(m, t).ok()?;
    Some(SocketAddr::new(x.ip, x.port))
}

fn lifetime(m: &Message) -> Option<u32> {
    let v = m.get(ATTR_LIFETIME).ok()?;
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

pub fn method_name(m: Method) -> &'static str {
    match m {
        METHOD_BINDING => "Binding",
        METHOD_ALLOCATE => "Allocate",
        METHOD_REFRESH => "Refresh",
        METHOD_CREATE_PERMISSION => "CreatePermission",
        METHOD_CHANNEL_BIND => "ChannelBind",
        METHOD_CONNECT => "Connect",
        METHOD_CONNECTION_BIND => "ConnectionBind",
        _ => "request",
    }
}

fn reason_or_default(code: u16, reason: String) -> String {
    if !reason.is_empty() {
        return reason;
    }
    match turnd_proto::engine::wire::reason(code) {
        "" => "Error",
        known => known,
    }
    .to_string()
}
