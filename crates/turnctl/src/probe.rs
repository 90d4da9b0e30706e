//! `turnctl probe`: does this TURN server work over this transport with these credentials?
//!
//! Steps, each with a verdict line: Binding (mapped address), Allocate (relayed address,
//! lifetime), CreatePermission, a Send indication to a UDP echo peer and the Data
//! indication back (RTT), ChannelBind and a ChannelData round trip, Refresh(0). The first
//! failing step ends the probe (after a best-effort Refresh(0)); the exit code is 0 only
//! when every step passed. `--stun-only` stops after Binding: the container HEALTHCHECK.
//!
//! `--tcp-relay` (over TCP or TLS) probes an RFC 6062 TCP allocation instead: Allocate with
//! REQUESTED-TRANSPORT TCP, Connect to a TCP echo peer, ConnectionBind on a second
//! connection, raw bytes there to the peer and back, Refresh(0).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UdpSocket;

use crate::client::{ClientError, Conn, TlsTarget, TurnClient};
use crate::creds::AuthArgs;
use stun::message::METHOD_SEND;
use turnd_proto::frames::{
    indication_header_len, write_channel_header, write_indication_header, CHANNEL_DATA_HEADER,
};

use crate::server::ServerUrl;
use crate::wire::relayed_payload;

const CHANNEL: u16 = 0x4000;

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// turn:HOST:PORT[?transport=udp|tcp], turns:HOST:PORT (TLS) or turns:HOST:PORT?transport=udp (DTLS).
    #[arg(long, short = 's', value_parser = crate::parse_url)]
    pub server: ServerUrl,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// A UDP echo peer to relay to (e.g. coturn's turnutils_peer). Default: one turnctl binds
    /// itself, on loopback for a server on this machine, else on this host's address
    /// towards the server; for a remote server that address must be reachable from it.
    #[arg(long)]
    pub peer: Option<SocketAddr>,
    /// Ask for an IPv6 relay.
    #[arg(long)]
    pub ipv6: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Time allowed for each step.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only the STUN Binding step: no credentials or peer needed. For container health
    /// checks: it proves the listener and its shard answer.
    #[arg(long)]
    pub stun_only: bool,
    /// Probe an RFC 6062 TCP relay (`turn:...?transport=tcp` or `turns:`): Allocate TCP,
    /// Connect, ConnectionBind, bytes through. `--peer` must then be a TCP echo peer
    /// (default: one turnctl runs itself).
    #[arg(long)]
    pub tcp_relay: bool,
}

/// One step's verdict.
#[derive(Debug, serde::Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
}

struct Probe {
    steps: Vec<Step>,
    json: bool,
}

impl Probe {
    fn record<T>(
        &mut self,
        name: &'static str,
        started: Instant,
        r: Result<(T, String), ClientError>,
    ) -> Option<T> {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (ok, detail, code, value) = match r {
            Ok((v, detail)) => (true, detail, None, Some(v)),
            Err(e) => (false, e.to_string(), e.code(), None),
        };
        if !self.json {
            let verdict = if ok { "ok  " } else { "FAIL" };
            println!("  {verdict} {name:<17} {detail}  ({ms:.1} ms)");
        }
        self.steps.push(Step {
            name,
            ok,
            detail,
            ms,
            code,
        });
        value
    }
}

/// Run the probe; Ok(true) when every step passed.
pub fn run(args: &ProbeArgs) -> anyhow::Result<bool> {
    if args.tcp_relay && !args.server.transport.is_stream() {
        anyhow::bail!(
            "--tcp-relay needs a TCP or TLS server URL (turn:...?transport=tcp or turns:)"
        );
    }
    let server = args.server.resolve()?;
    let tls = args.tls.target(args.server.transport, &args.server.host)?;
    let creds = args.auth.credentials()?;
    if !args.json {
        println!("probe {} ({server})", args.server);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut p = Probe {
        steps: Vec::new(),
        json: args.json,
    };
    let realm = rt.block_on(steps(&mut p, args, server, tls, creds));
    let failed = p.steps.iter().find(|s| !s.ok);
    let ok = failed.is_none();
    let summary = match failed {
        None => format!("PASS: all {} checks passed", p.steps.len()),
        Some(s) => format!("FAIL: {} failed: {}", s.name, s.detail),
    };
    if args.json {
        let v = json!({"server": args.server.to_string(), "address": server.to_string(),
            "transport": args.server.transport.as_str(), "realm": realm, "ok": ok, "steps": p.steps,
            "summary": summary});
        println!("{v}");
    } else {
        println!("{summary}");
    }
    Ok(ok)
}

async fn steps(
    p: &mut Probe,
    args: &ProbeArgs,
    server: SocketAddr,
    tls: Option<TlsTarget>,
    creds: Option<crate::client::Credentials>,
) -> Option<String> {
    let t = Instant::now();
    let conn = Conn::connect(server, args.server.transport, tls.as_ref(), args.timeout).await;
    let mut c = match conn {
        Ok(conn) => TurnClient::new(conn, creds, args.timeout),
        Err(e) => {
            p.record::<()>("Binding", t, Err(e));
            return None;
        }
    };
    let t = Instant::now();
    let r = c
        .binding()
        .await
        .map(|m| ((), format!("mapped address {m}")));
    p.record("Binding", t, r)?;
    if args.stun_only {
        return None;
    }
    if args.tcp_relay {
        return tcp_relay_steps(p, args, c, server, tls).await;
    }

    let t = Instant::now();
    let r = c.allocate(args.ipv6).await.map(|a| {
        (
            a,
            format!("relayed address {}, lifetime {} s", a.relayed, a.lifetime),
        )
    });
    let alloc = p.record("Allocate", t, r)?;
    let realm = c.realm().map(str::to_string);
    let passed = relay_steps(p, args, &mut c, alloc.relayed).await.is_some();
    release(p, &mut c, passed).await;
    realm
}

/// Refresh(0): a step of its own after the data steps passed; after a failed one the
/// allocation is freed anyway, quietly.
async fn release(p: &mut Probe, c: &mut TurnClient, steps_passed: bool) {
    if !steps_passed {
        c.timeout = Duration::from_secs(1);
        let _ = c.refresh(0).await;
        return;
    }
    let t = Instant::now();
    let r = c
        .refresh(0)
        .await
        .map(|_| ((), "allocation deleted".to_string()));
    p.record("Refresh(0)", t, r);
}

/// The RFC 6062 steps on the control connection `c`.
async fn tcp_relay_steps(
    p: &mut Probe,
    args: &ProbeArgs,
    mut c: TurnClient,
    server: SocketAddr,
    tls: Option<TlsTarget>,
) -> Option<String> {
    let t = Instant::now();
    let r = c.allocate_tcp(args.ipv6).await.map(|a| {
        let d = format!(
            "relayed TCP address {}, lifetime {} s",
            a.relayed, a.lifetime
        );
        (a, d)
    });
    let alloc = p.record("Allocate (TCP)", t, r)?;
    let realm = c.realm().map(str::to_string);
    let passed = tcp_data_steps(p, args, &mut c, server, tls, alloc.relayed)
        .await
        .is_some();
    release(p, &mut c, passed).await;
    realm
}

async fn tcp_data_steps(
    p: &mut Probe,
    args: &ProbeArgs,
    c: &mut TurnClient,
    server: SocketAddr,
    tls: Option<TlsTarget>,
    relayed: SocketAddr,
) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Instant::now();
    let peer = match tcp_echo_peer(args, c, relayed).await {
        Ok(peer) => peer,
        Err(e) => return p.record("Connect", t, Err(e)),
    };
    let r = c
        .connect_peer(peer)
        .await
        .map(|id| (id, format!("peer {peer}, CONNECTION-ID {id:#010x}")));
    let id = p.record("Connect", t, r)?;
    let t = Instant::now();
    let r = async {
        let conn = Conn::connect(server, args.server.transport, tls.as_ref(), args.timeout).await?;
        let mut data = c.sibling(conn);
        data.connection_bind(id).await?;
        Ok::<_, ClientError>((data, "on a new connection".to_string()))
    }
    .await;
    let data = p.record("ConnectionBind", t, r)?;
    let t = Instant::now();
    let token: [u8; 16] = rand::random();
    let r = async {
        let Some((mut s, early)) = data.conn.into_raw() else {
            return Err(ClientError::Protocol("not a stream".into()));
        };
        let sent = Instant::now();
        s.write_all(&token).await.map_err(ClientError::Io)?;
        s.flush().await.map_err(ClientError::Io)?;
        let mut got = early;
        let mut buf = [0u8; 64];
        while got.len() < token.len() {
            let n = tokio::time::timeout(args.timeout, s.read(&mut buf))
                .await
                .map_err(|_| {
                    ClientError::Protocol(format!(
                        "no bytes back from TCP peer {peer} within {:.1}s (the peer does not echo?)",
                        args.timeout.as_secs_f64()
                    ))
                })?
                .map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Protocol("the data connection closed".into()));
            }
            got.extend_from_slice(&buf[..n]);
        }
        if got.get(..token.len()) != Some(&token[..]) {
            return Err(ClientError::Protocol("the bytes came back changed".into()));
        }
        let rtt = sent.elapsed().as_secs_f64() * 1000.0;
        Ok(((), format!("{} bytes to {peer} and back, rtt {rtt:.2} ms", token.len())))
    }
    .await;
    p.record("TCP data", t, r)
}

/// The TCP echo peer: `--peer`, or a listener of ours on an address the relay can reach.
async fn tcp_echo_peer(
    args: &ProbeArgs,
    c: &TurnClient,
    relayed: SocketAddr,
) -> Result<SocketAddr, ClientError> {
    if let Some(peer) = args.peer {
        return Ok(peer);
    }
    let ip = local_peer_ip(c, relayed)?;
    let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(ClientError::Io)?;
    let addr = l.local_addr().map_err(ClientError::Io)?;
    tokio::task::spawn(async move {
        // One connection (the probe's), echoed until it closes.
        if let Ok((mut s, _)) = l.accept().await {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    Ok(addr)
}

fn local_peer_ip(c: &TurnClient, relayed: SocketAddr) -> Result<IpAddr, ClientError> {
    if c.conn.server.ip().is_loopback() || relayed.ip().is_loopback() {
        Ok(if relayed.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        })
    } else if c.conn.local.is_ipv4() == relayed.is_ipv4() {
        Ok(c.conn.local.ip())
    } else {
        Err(ClientError::Protocol(format!(
            "no local address of the relay's family ({relayed}) for an echo peer: give --peer"
        )))
    }
}

/// The echo peer: `--peer`, or a socket of ours on an address the relay can reach.
async fn echo_peer(
    args: &ProbeArgs,
    c: &TurnClient,
    relayed: SocketAddr,
) -> Result<SocketAddr, ClientError> {
    if let Some(peer) = args.peer {
        return Ok(peer);
    }
    let ip = local_peer_ip(c, relayed)?;
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(ClientError::Io)?;
    let addr = sock.local_addr().map_err(ClientError::Io)?;
    tokio::task::spawn(crate::echo::simple(sock));
    Ok(addr)
}

async fn relay_steps(
    p: &mut Probe,
    args: &ProbeArgs,
    c: &mut TurnClient,
    relayed: SocketAddr,
) -> Option<()> {
    let t = Instant::now();
    let peer = match echo_peer(args, c, relayed).await {
        Ok(peer) => peer,
        Err(e) => return p.record("CreatePermission", t, Err(e)),
    };
    let r = c
        .create_permission(peer)
        .await
        .map(|_| ((), format!("peer {peer}")));
    p.record("CreatePermission", t, r)?;

    let stream = c.conn.transport.is_stream();
    let token: [u8; 16] = rand::random();
    let mut buf = vec![0u8; 256];
    let h = indication_header_len(&peer);
    buf[h..h + 16].copy_from_slice(&token);
    let n = write_indication_header(&mut buf, METHOD_SEND, &rand::random(), &peer, token.len())
        .expect("256 bytes hold a Send indication of 16");
    let detail = |rtt| format!("{} bytes to {peer} and back, rtt {rtt:.2} ms", token.len());
    let r = echo_step(c, &buf[..n], &token, peer, "Data indication", detail).await;
    p.record("Send -> Data", r.0, r.1)?;

    let t = Instant::now();
    let r = c
        .channel_bind(CHANNEL, peer)
        .await
        .map(|_| ((), format!("channel {CHANNEL:#06x} -> {peer}")));
    p.record("ChannelBind", t, r)?;

    let mut buf = vec![0u8; 64];
    buf[CHANNEL_DATA_HEADER..CHANNEL_DATA_HEADER + 16].copy_from_slice(&token);
    let n = write_channel_header(&mut buf, CHANNEL, token.len(), stream)
        .expect("64 bytes hold a ChannelData message of 16");
    let detail = |rtt| {
        let len = token.len();
        format!("{len} bytes on channel {CHANNEL:#06x} and back, rtt {rtt:.2} ms")
    };
    let r = echo_step(c, &buf[..n], &token, peer, "ChannelData", detail).await;
    p.record("ChannelData", r.0, r.1)
}

/// One relay step: [`round_trip`] with its start time and, when it passed, the verdict's
/// detail from the RTT.
async fn echo_step(
    c: &mut TurnClient,
    frame: &[u8],
    token: &[u8],
    peer: SocketAddr,
    what: &str,
    detail: impl FnOnce(f64) -> String,
) -> (Instant, Result<((), String), ClientError>) {
    let t = Instant::now();
    let r = round_trip(c, frame, token, peer, what).await;
    (t, r.map(|rtt| ((), detail(rtt))))
}

/// Send `frame` (retransmitting every 500 ms: datagrams may be lost) until a message with
/// `token` as its relayed payload comes back; returns the RTT of the last send in ms.
async fn round_trip(
    c: &mut TurnClient,
    frame: &[u8],
    token: &[u8],
    peer: SocketAddr,
    what: &str,
) -> Result<f64, ClientError> {
    let deadline = tokio::time::Instant::now() + c.timeout;
    loop {
        let sent = Instant::now();
        c.conn.send(frame).await.map_err(ClientError::Io)?;
        let wait = (tokio::time::Instant::now() + Duration::from_millis(500)).min(deadline);
        loop {
            match tokio::time::timeout_at(wait, c.conn.recv()).await {
                Ok(Ok(msg)) if relayed_payload(msg) == Some(token) => {
                    return Ok(sent.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(ClientError::Io(e)),
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ClientError::Protocol(format!(
                "no {what} back from peer {peer} within {:.1}s (the peer does not echo, or the relay cannot reach it)",
                c.timeout.as_secs_f64()
            )));
        }
    }
}
