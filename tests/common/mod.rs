//! Interop harness shared by the integration tests: real clients we did not write.
//!
//! - [`Uclient`]: coturn's `turnutils_uclient`, run with a deadline; its summary counters are
//!   parsed into a [`UclientReport`] (uclient exits 0 even when every packet is lost, so tests
//!   must assert on the counters, never on the exit status alone).
//! - [`EchoPeer`]: a UDP echo peer on loopback (two sockets, `port` and `port + 1`, because
//!   uclient always binds a channel to `peer + 1`, its "RTCP" peer).
//! - [`run_aioice`]: Python `aioice` allocating and relaying through `tests/interop/aioice_relay.py`.
//! - [`Coturn`]: coturn's `turnserver` as a reference server, for the harness self-tests only.
//! - [`rest_credentials`]: TURN REST credentials computed independently of turnd.
//! - Streams: [`ClientTransport`] selects UDP, TCP or TLS for uclient ([`Uclient::transport`])
//!   and aioice ([`AioiceOpts`]); [`TestCert`] is a certificate/key pair in PEM files for a
//!   server and, as the only trust anchor, for a verifying client.
//!
//! Rules: loopback addresses only; a missing tool panics with an install hint (never a skip);
//! every process started here is killed by PID on drop; every wait has a deadline.
#![allow(dead_code)] // each test binary uses a different subset of the helpers

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// The development profile's credentials (see `turnd::config`), also given to coturn.
pub const REALM: &str = "turnd";
pub const USER: &str = "dev";
pub const PASSWORD: &str = "devpass";
pub const SECRET: &str = "devsecret";

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

const COTURN_HINT: &str = "install coturn (apt-get install coturn)";

// ---------------------------------------------------------------------------------------------
// Tools and processes
// ---------------------------------------------------------------------------------------------

/// Panics with an install hint unless `name` is an executable on `PATH`.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(name)))
    });
    if !found {
        let hint = match name {
            "turnutils_uclient" | "turnutils_peer" | "turnserver" => COTURN_HINT,
            "python3" => "install python3 (apt-get install python3)",
            "chromium" | "chromedriver" => {
                "install chromium (apt-get install chromium chromium-driver)"
            }
            _ => "install it (scripts/test installs every tool the tests need)",
        };
        panic!("required tool `{name}` is not on PATH: {hint}");
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Panics with an install hint unless python3 can import `module`.
pub fn require_python_module(module: &str, pip_spec: &str) {
    require_tool("python3");
    let mut child = ChildGuard::spawn(
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "python3",
    );
    match child.wait_timeout(Duration::from_secs(20)) {
        Some(status) if status.success() => {}
        _ => panic!("python module `{module}` is missing: install it (pip install '{pip_spec}')"),
    }
}

/// A child process killed (SIGKILL, by PID) and reaped on drop, so a failing test leaks nothing.
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command, what: &str) -> ChildGuard {
        match cmd.spawn() {
            Ok(child) => ChildGuard {
                child,
                what: what.to_string(),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {
                require_tool(what);
                panic!("cannot start {what}: {e}");
            }
            Err(e) => panic!("cannot start {what}: {e}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit until `timeout`; `None` means still running at the deadline.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for {} (pid {}): {e}", self.what, self.pid()),
            }
        }
    }

    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill(); // by PID; ignore "already exited"
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private scratch directory under the system temp dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "turnd-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A file in this directory for a child's stdout and stderr (both, interleaved).
    pub fn output_file(&self, name: &str) -> (PathBuf, Stdio, Stdio) {
        let path = self.0.join(name);
        let file = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let err = file.try_clone().expect("clone output file handle");
        (path, Stdio::from(file), Stdio::from(err))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// TURN REST credentials, computed independently of turnd
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// STUN Binding probe (readiness of a reference server)
// ---------------------------------------------------------------------------------------------

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
fn free_stream_port() -> u16 {
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
fn free_udp_port_pair() -> u16 {
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

// ---------------------------------------------------------------------------------------------
// Echo peer
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// turnutils_uclient
// ---------------------------------------------------------------------------------------------

/// Builder for one `turnutils_uclient` run (UDP to the server unless [`Uclient::tcp`] or
/// [`Uclient::tls`]; always `-v`, whose lines we parse for relayed addresses).
#[derive(Debug, Clone)]
pub struct Uclient {
    server: SocketAddr,
    args: Vec<String>,
    clients: u32,
    messages: u32,
    c2c: bool,
    no_rtcp: bool,
    timeout: Duration,
}

impl Uclient {
    pub fn new(server: SocketAddr) -> Uclient {
        assert!(
            server.ip().is_loopback(),
            "uclient must target loopback, got {server}"
        );
        Uclient {
            server,
            args: Vec::new(),
            clients: 1,
            messages: 5,
            c2c: false,
            no_rtcp: false,
            timeout: Duration::from_secs(45),
        }
    }

    fn flag(mut self, f: &str) -> Self {
        self.args.push(f.to_string());
        self
    }

    fn opt(mut self, o: &str, v: impl ToString) -> Self {
        self.args.push(o.to_string());
        self.args.push(v.to_string());
        self
    }

    /// `-u user -w password` (long-term credentials).
    pub fn user(self, user: &str, password: &str) -> Self {
        self.opt("-u", user).opt("-w", password)
    }

    /// `-W secret`: TURN REST, uclient computes `expiry:user` (expiry = now + 1 day) and the
    /// HMAC password itself; combine with `user_only` to set the user part.
    pub fn rest_secret(self, secret: &str) -> Self {
        self.opt("-W", secret)
    }

    /// `-u user` without a password (for `-W`).
    pub fn user_only(self, user: &str) -> Self {
        self.opt("-u", user)
    }

    /// `-e ip -r port`: the peer (needs `port + 1` too; use [`EchoPeer`]).
    pub fn peer(self, peer: SocketAddr) -> Self {
        assert!(peer.ip().is_loopback(), "peer must be loopback, got {peer}");
        self.opt("-e", peer.ip()).opt("-r", peer.port())
    }

    /// `-c`: no RTCP allocation (one allocation per client instead of an EVEN-PORT/R pair
    /// linked by RESERVATION-TOKEN). Note: uclient then adds EVEN-PORT (R=0) to half of its
    /// Allocates at random.
    pub fn no_rtcp(mut self) -> Self {
        self.no_rtcp = true;
        self.flag("-c")
    }

    /// `-s`: send with Send indications (after CreatePermission) instead of channels.
    pub fn send_indications(self) -> Self {
        self.flag("-s")
    }

    /// `-y`: clients relay to each other's relayed addresses; no external peer.
    pub fn client_to_client(mut self) -> Self {
        self.c2c = true;
        self.flag("-y")
    }

    /// `-m n`: number of clients (in `-y` mode rounded up to an even number).
    pub fn clients(mut self, n: u32) -> Self {
        self.clients = n;
        self.opt("-m", n)
    }

    /// `-n n`: messages per connection.
    pub fn messages(mut self, n: u32) -> Self {
        self.messages = n;
        self.opt("-n", n)
    }

    /// `-l bytes`: message length (uclient's minimum is its header size).
    pub fn length(self, bytes: u32) -> Self {
        self.opt("-l", bytes)
    }

    /// `-x`: request an IPv6 relay (uclient already does when the peer is IPv6).
    pub fn ipv6_relay(self) -> Self {
        self.flag("-x")
    }

    /// `-X`: request an IPv4 relay explicitly.
    pub fn ipv4_relay(self) -> Self {
        self.flag("-X")
    }

    /// `-g`: add DONT-FRAGMENT to Allocate.
    pub fn dont_fragment(self) -> Self {
        self.flag("-g")
    }

    /// `-z ms`: packet interval (default 20 ms).
    pub fn interval_ms(self, ms: u32) -> Self {
        self.opt("-z", ms)
    }

    /// Any other uclient argument.
    pub fn arg(self, a: &str) -> Self {
        self.flag(a)
    }

    /// `-t`: TURN over TCP to the server (one TCP connection per allocation).
    pub fn tcp(self) -> Self {
        self.flag("-t")
    }

    /// `-t -S`: TURN over TLS to the server. coturn 4.6.1's uclient does not verify the server
    /// certificate (even `-E cafile` lets a certificate from another CA through), so this
    /// exercises turnd's TLS listener, not its certificate. uclient picks a TLS method at
    /// random per connection (any version, TLS 1.0, 1.1 or 1.2 only) and reconnects when the
    /// handshake fails; see [`UclientReport::assert_all_relayed_tls`].
    pub fn tls(self) -> Self {
        self.flag("-t").flag("-S")
    }

    /// The client leg's transport: nothing for UDP, [`Uclient::tcp`] or [`Uclient::tls`].
    pub fn transport(self, t: ClientTransport) -> Self {
        match t {
            ClientTransport::Udp => self,
            ClientTransport::Tcp => self.tcp(),
            ClientTransport::Tls => self.tls(),
        }
    }

    /// Kill uclient after this long (default 45 s); the report then has `timed_out`.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Messages uclient will send in total if all goes well: `-n` per connection; a client has
    /// two connections (RTP, RTCP) unless `-c`; `-y` pairs clients (rounded up to even).
    pub fn expected_messages(&self) -> u64 {
        let clients = if self.c2c {
            self.clients.max(1).div_ceil(2) * 2
        } else {
            self.clients
        };
        let per_client = if self.no_rtcp { 1 } else { 2 };
        u64::from(clients) * per_client * u64::from(self.messages)
    }

    pub fn command_line(&self) -> Vec<String> {
        let mut v = vec![
            "-v".to_string(),
            "-p".into(),
            self.server.port().to_string(),
        ];
        v.extend(self.args.iter().cloned());
        v.push(self.server.ip().to_string());
        v
    }

    pub fn run(&self) -> UclientReport {
        require_tool("turnutils_uclient");
        let dir = ScratchDir::new("uclient");
        let (out_path, out, err) = dir.output_file("uclient.out");
        let args = self.command_line();
        let mut child = ChildGuard::spawn(
            Command::new("turnutils_uclient")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
            "turnutils_uclient",
        );
        let status = child.wait_timeout(self.timeout);
        let timed_out = status.is_none();
        child.kill();
        let output = read_lossy(&out_path);
        let mut report = UclientReport::parse(&output);
        report.exit_code = status.and_then(|s| s.code());
        report.timed_out = timed_out;
        report.command = format!("turnutils_uclient {}", args.join(" "));
        report
    }
}

/// What one uclient run reported. `summary` is false when uclient never printed its final
/// counters (it failed before sending, e.g. "Cannot complete Allocation").
#[derive(Debug, Clone, Default)]
pub struct UclientReport {
    pub command: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub summary: bool,
    pub sent_msgs: u64,
    pub recv_msgs: u64,
    pub sent_bytes: u64,
    pub recv_bytes: u64,
    pub lost: u64,
    pub send_dropped: u64,
    pub rtt_avg_ms: f64,
    pub rtt_max_ms: u64,
    /// From "Received relay addr: …" (verbose), one per Allocate success.
    pub relay_addrs: Vec<SocketAddr>,
    /// Channel numbers from "success: 0x…" after ChannelBind.
    pub channels: Vec<u16>,
    /// "Cannot complete Allocation" seen.
    pub allocation_failed: bool,
    /// Lines with ERROR or an "error NNN" response.
    pub errors: Vec<String>,
    pub output: String,
    /// TLS only: the protocol version of every established session ("TLSv1.3", "TLSv1.2"),
    /// from "tls_connect: client session connected with cipher …, method=…".
    pub tls_sessions: Vec<String>,
    /// TLS only: failed handshakes after which uclient reconnected with another method
    /// ("tls_connect: cannot connect: rc=-1, ctx=N"), as uclient's method index N: 0 any
    /// version, 1 TLS 1.0 only, 2 TLS 1.1 only, 3 TLS 1.2 only (coturn 4.6.1, with TCP). The
    /// error line that follows each is in `tls_retry_errors` (and in `errors`).
    pub tls_retries: Vec<u32>,
    pub tls_retry_errors: Vec<String>,
}

impl UclientReport {
    /// Parses uclient's stdout/stderr. Final summary lines (4.6.1), progress lines contain `msz=`:
    /// ```text
    /// 5: : start_mclient: tot_send_msgs=10, tot_recv_msgs=10
    /// 5: : start_mclient: tot_send_bytes ~ 1000, tot_recv_bytes ~ 1000
    /// 5: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
    /// 5: : Average round trip delay 0.000000 ms; min = 0 ms, max = 0 ms
    /// ```
    pub fn parse(output: &str) -> UclientReport {
        let mut r = UclientReport {
            output: output.to_string(),
            ..Default::default()
        };
        let mut after_tls_failure = false;
        for line in output.lines() {
            if line.contains("msz=") {
                continue; // per-second progress line
            }
            if line.contains("tls_connect: cannot connect") {
                r.tls_retries
                    .push(num_after(line, "ctx=").map_or(u32::MAX, |n| n as u32));
                after_tls_failure = true;
            } else if after_tls_failure && line.contains("error:") {
                r.tls_retry_errors.push(line.trim().to_string());
                after_tls_failure = false;
            } else if let Some(rest) = line.split("client session connected with cipher").nth(1) {
                if let Some(method) = rest.split("method=").nth(1) {
                    r.tls_sessions.push(method.trim().to_string());
                }
                after_tls_failure = false;
            }
            if line.contains("tot_send_msgs=") {
                r.summary = true;
                r.sent_msgs = num_after(line, "tot_send_msgs=").unwrap_or(0);
                r.recv_msgs = num_after(line, "tot_recv_msgs=").unwrap_or(0);
            } else if line.contains("tot_send_bytes") {
                r.sent_bytes = num_after(line, "tot_send_bytes ~").unwrap_or(0);
                r.recv_bytes = num_after(line, "tot_recv_bytes ~").unwrap_or(0);
            } else if line.contains("Total lost packets") {
                r.lost = num_after(line, "Total lost packets").unwrap_or(0);
                r.send_dropped = num_after(line, "total send dropped").unwrap_or(0);
            } else if line.contains("Average round trip delay") {
                r.rtt_avg_ms = float_after(line, "Average round trip delay").unwrap_or(0.0);
                r.rtt_max_ms = num_after(line, "max =").unwrap_or(0);
            } else if let Some(rest) = line.split("Received relay addr:").nth(1) {
                if let Some(addr) = parse_host_port(rest.trim()) {
                    r.relay_addrs.push(addr);
                }
            } else if let Some(rest) = line.split(": success: 0x").nth(1) {
                if let Ok(ch) = u16::from_str_radix(rest.trim(), 16) {
                    r.channels.push(ch);
                }
            }
            if line.contains("Cannot complete Allocation") {
                r.allocation_failed = true;
            }
            if line.contains("ERROR") || line.contains(" error ") || line.contains("error:") {
                r.errors.push(line.trim().to_string());
            }
        }
        r
    }

    /// Every message came back: something was sent, nothing lost, no errors, no timeout.
    pub fn assert_all_relayed(&self, expected_msgs: u64) {
        let ctx = self.context();
        assert!(!self.timed_out, "uclient timed out\n{ctx}");
        assert!(self.summary, "uclient printed no summary counters\n{ctx}");
        assert!(expected_msgs > 0, "nothing expected is not a test\n{ctx}");
        assert_eq!(self.sent_msgs, expected_msgs, "messages sent\n{ctx}");
        assert_eq!(
            self.recv_msgs, self.sent_msgs,
            "messages received back\n{ctx}"
        );
        assert!(self.sent_bytes > 0, "bytes sent\n{ctx}");
        assert_eq!(
            self.recv_bytes, self.sent_bytes,
            "bytes received back\n{ctx}"
        );
        assert_eq!(self.lost, 0, "lost packets\n{ctx}");
        assert_eq!(self.send_dropped, 0, "send dropped\n{ctx}");
        assert!(
            self.errors.is_empty(),
            "uclient errors: {:?}\n{ctx}",
            self.errors
        );
        assert_eq!(self.exit_code, Some(0), "uclient exit status\n{ctx}");
    }

    /// [`Self::assert_all_relayed`] for a TLS run: every established session is TLS 1.2 or 1.3,
    /// and the only errors allowed are the handshakes uclient retried because it had picked
    /// its TLS 1.0 or 1.1 method (`ctx=1`, `ctx=2`), which the server must refuse (turnd:
    /// rustls, TLS 1.2 and 1.3 only; coturn: OpenSSL 3's default security level).
    pub fn assert_all_relayed_tls(&self, expected_msgs: u64) {
        let ctx = self.context();
        assert!(!self.tls_sessions.is_empty(), "no TLS session\n{ctx}");
        for v in &self.tls_sessions {
            assert!(
                v == "TLSv1.3" || v == "TLSv1.2",
                "negotiated {v}, want TLS 1.2 or 1.3\n{ctx}"
            );
        }
        assert_eq!(
            self.tls_retry_errors.len(),
            self.tls_retries.len(),
            "every failed handshake has its error line\n{ctx}"
        );
        for m in &self.tls_retries {
            assert!(
                *m == 1 || *m == 2,
                "a TLS handshake with uclient's method {m} (not TLS 1.0/1.1 only) failed: \
                 {:?}\n{ctx}",
                self.tls_retry_errors
            );
        }
        let mut rest = self.clone();
        rest.errors.retain(|e| !self.tls_retry_errors.contains(e));
        rest.assert_all_relayed(expected_msgs);
    }

    /// The server refused: uclient gave up at Allocate and relayed nothing.
    pub fn assert_refused(&self) {
        let ctx = self.context();
        assert!(
            !self.timed_out,
            "uclient timed out instead of being refused\n{ctx}"
        );
        assert!(
            self.allocation_failed,
            "expected 'Cannot complete Allocation'\n{ctx}"
        );
        assert_ne!(self.exit_code, Some(0), "uclient exit status\n{ctx}");
        assert_eq!(self.recv_msgs, 0, "nothing may be relayed\n{ctx}");
        assert!(
            self.relay_addrs.is_empty(),
            "no relay may be allocated\n{ctx}"
        );
    }

    /// The command and the tail of the output, for assertion messages.
    pub fn context(&self) -> String {
        let lines: Vec<&str> = self
            .output
            .lines()
            .filter(|l| !l.contains("msz="))
            .collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "$ {}\n(exit {:?}, timed out {})\n{tail}",
            self.command, self.exit_code, self.timed_out
        )
    }
}

/// The unsigned integer after `key` (skipping spaces and `~`).
fn num_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start_matches([' ', '~'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn float_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let num: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

/// "127.0.0.1:40030", "::1:40261" (uclient's unbracketed IPv6) or "[::1]:40261".
fn parse_host_port(s: &str) -> Option<SocketAddr> {
    let s = s.split_whitespace().next()?;
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (host, port) = s.rsplit_once(':')?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// aioice
// ---------------------------------------------------------------------------------------------

/// What `tests/interop/aioice_relay.py` reported on success.
#[derive(Debug, Clone)]
pub struct AioiceReport {
    pub relayed: SocketAddr,
    pub mapped: SocketAddr,
    pub sent: u64,
    pub received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub max_size: u64,
    /// The client's own address of its socket to the server (what XOR-MAPPED-ADDRESS should
    /// be on loopback).
    pub local: Option<SocketAddr>,
    /// "udp", "tcp" or "tls".
    pub transport: String,
    /// TLS only: "TLSv1.3", "TLSv1.2"; and the ALPN protocol the server selected, if offered.
    pub tls_version: String,
    pub alpn: String,
    pub raw: String,
}

/// How the client reaches the server (the relay to peers is always UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl ClientTransport {
    pub fn name(self) -> &'static str {
        match self {
            ClientTransport::Udp => "udp",
            ClientTransport::Tcp => "tcp",
            ClientTransport::Tls => "tls",
        }
    }
}

/// How aioice ends its allocation (script option `--close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AioiceClose {
    /// aioice's own close: Refresh(LIFETIME=0), then close the connection.
    #[default]
    Delete,
    /// Close the TCP/TLS connection (TLS: close_notify) without any Refresh.
    Close,
    /// Drop the TCP/TLS connection at once (no Refresh, no close_notify).
    Abort,
}

/// Options of [`run_aioice_with`]. Over TLS the script always verifies the server
/// certificate, chain and name, against `ca_file` (required).
#[derive(Debug, Clone, Default)]
pub struct AioiceOpts {
    pub transport: ClientTransport,
    /// PEM trust anchors (TLS).
    pub ca_file: Option<PathBuf>,
    /// Name to verify the certificate against instead of the server's address literal.
    pub server_hostname: Option<String>,
    /// ALPN protocol to offer (e.g. "stun.turn").
    pub alpn: Option<String>,
    /// Offer at most TLS 1.2 (default: up to 1.3).
    pub tls12_only: bool,
    pub close: AioiceClose,
}

impl AioiceOpts {
    pub fn tcp() -> AioiceOpts {
        AioiceOpts {
            transport: ClientTransport::Tcp,
            ..AioiceOpts::default()
        }
    }

    /// TLS, verifying against `ca_file`.
    pub fn tls(ca_file: &Path) -> AioiceOpts {
        AioiceOpts {
            transport: ClientTransport::Tls,
            ca_file: Some(ca_file.to_path_buf()),
            ..AioiceOpts::default()
        }
    }

    fn args(&self) -> Vec<String> {
        let mut v = vec!["--transport".to_string(), self.transport.name().into()];
        if let Some(ca) = &self.ca_file {
            v.extend(["--ca-file".into(), ca.display().to_string()]);
        }
        if let Some(name) = &self.server_hostname {
            v.extend(["--server-hostname".into(), name.clone()]);
        }
        if let Some(alpn) = &self.alpn {
            v.extend(["--alpn".into(), alpn.clone()]);
        }
        if self.tls12_only {
            v.extend(["--tls-max".into(), "1.2".into()]);
        }
        let close = match self.close {
            AioiceClose::Delete => "delete",
            AioiceClose::Close => "close",
            AioiceClose::Abort => "abort",
        };
        v.extend(["--close".into(), close.into()]);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Test certificates
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate (rcgen, ECDSA P-256) and its key as PEM files in a scratch
/// directory: the server's `cert`/`key`, and `cert` alone as a client's only trust anchor.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: ScratchDir,
}

impl TestCert {
    /// Subject alternative names: IP literals become IP SANs, anything else DNS names.
    pub fn generate(names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).expect("generate a test certificate");
        let dir = ScratchDir::new("cert");
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        fs::write(&cert_path, cert.pem()).expect("write cert.pem");
        fs::write(&key_path, signing_key.serialize_pem()).expect("write key.pem");
        TestCert {
            cert: cert_path,
            key: key_path,
            _dir: dir,
        }
    }

    /// For 127.0.0.1, ::1 and localhost.
    pub fn loopback() -> TestCert {
        Self::generate(&["127.0.0.1", "::1", "localhost"])
    }
}

/// DER certificates as one PEM bundle (e.g. a server's served chain, to trust it).
pub fn pem_certificates<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut pem = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

pub fn aioice_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aioice_relay.py")
}

/// Runs aioice against `server:port`: allocate with `user`/`password`, then send 3 datagrams
/// each of 100, 1200 and 4000 bytes to `peer` and check every echo byte for byte. `Err` when
/// the script fails (its JSON `error` is in the message), times out (30 s), or relays nothing.
pub fn run_aioice(
    server: IpAddr,
    port: u16,
    user: &str,
    password: &str,
    peer: SocketAddr,
) -> anyhow::Result<AioiceReport> {
    run_aioice_sizes(server, port, user, password, peer, &[100, 1200, 4000], 3)
}

pub fn run_aioice_sizes(
    server: IpAddr,
    port: u16,
    user: &str,
    password: &str,
    peer: SocketAddr,
    sizes: &[usize],
    count_per_size: u32,
) -> anyhow::Result<AioiceReport> {
    run_aioice_script(
        server,
        port,
        user,
        password,
        peer,
        sizes,
        count_per_size,
        &[],
    )
}

/// aioice over UDP, TCP or TLS (see [`AioiceOpts`]), 3 datagrams each of 100, 1200 and 4000
/// bytes; `Err` as for [`run_aioice`] (a TLS verification failure is such an error).
pub fn run_aioice_with(
    server: SocketAddr,
    user: &str,
    password: &str,
    peer: SocketAddr,
    opts: &AioiceOpts,
) -> anyhow::Result<AioiceReport> {
    run_aioice_script(
        server.ip(),
        server.port(),
        user,
        password,
        peer,
        &[100, 1200, 4000],
        3,
        &opts.args(),
    )
}

#[allow(clippy::too_many_arguments)]
fn run_aioice_script(
    server: IpAddr,
    port: u16,
    user: &str,
    password: &str,
    peer: SocketAddr,
    sizes: &[usize],
    count_per_size: u32,
    extra_args: &[String],
) -> anyhow::Result<AioiceReport> {
    assert!(
        server.is_loopback() && peer.ip().is_loopback(),
        "loopback only"
    );
    require_python_module("aioice", "aioice==0.13.*");
    let dir = ScratchDir::new("aioice");
    let (out_path, out, err) = dir.output_file("aioice.out");
    let sizes_arg = sizes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        aioice_script().display().to_string(),
        "--server".into(),
        server.to_string(),
        "--port".into(),
        port.to_string(),
        "--user".into(),
        user.into(),
        "--password".into(),
        password.into(),
        "--peer".into(),
        peer.to_string(),
        "--sizes".into(),
        sizes_arg,
        "--count".into(),
        count_per_size.to_string(),
        "--timeout".into(),
        "5".into(),
    ];
    args.extend(extra_args.iter().cloned());
    let mut child = ChildGuard::spawn(
        Command::new("python3")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
        "python3",
    );
    let status = child.wait_timeout(Duration::from_secs(30));
    child.kill();
    let output = read_lossy(&out_path);
    let ctx = format!("$ python3 {}\n{output}", args.join(" "));
    let Some(status) = status else {
        anyhow::bail!("aioice timed out after 30 s\n{ctx}")
    };
    let line = output
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    let Some(json) = line.map(parse_flat_json) else {
        anyhow::bail!("aioice printed no JSON report ({status})\n{ctx}")
    };
    let get = |k: &str| json.get(k).cloned().unwrap_or_default();
    let num = |k: &str| get(k).parse::<u64>().unwrap_or(0);
    if !status.success() || get("ok") != "true" {
        anyhow::bail!("aioice failed ({status}): {}\n{ctx}", get("error"));
    }
    let addr = |k: &str| -> anyhow::Result<SocketAddr> {
        get(k)
            .parse()
            .map_err(|e| anyhow::anyhow!("bad {k} {:?} in aioice report: {e}\n{ctx}", get(k)))
    };
    let report = AioiceReport {
        relayed: addr("relayed")?,
        mapped: addr("mapped")?,
        sent: num("sent"),
        received: num("received"),
        bytes_sent: num("bytes_sent"),
        bytes_received: num("bytes_received"),
        max_size: num("max_size"),
        local: get("local").parse().ok(),
        transport: get("transport"),
        tls_version: get("tls_version"),
        alpn: get("alpn"),
        raw: output,
    };
    if report.sent == 0 || report.received != report.sent {
        anyhow::bail!("aioice relayed {}/{}\n{ctx}", report.received, report.sent);
    }
    Ok(report)
}

/// Parses the script's one-line JSON object whose values are strings, numbers or booleans
/// (no nesting, by construction of the script) into key -> value text.
pub fn parse_flat_json(line: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut chars = line
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .chars()
        .peekable();
    let read_string = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        s.push(
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .unwrap_or('?'),
                        );
                    }
                    Some(other) => s.push(other),
                    None => break,
                },
                c => s.push(c),
            }
        }
        s
    };
    loop {
        while chars.next_if(|c| *c != '"').is_some() {}
        if chars.next().is_none() {
            break;
        }
        let key = read_string(&mut chars);
        while chars.next_if(|c| c.is_whitespace() || *c == ':').is_some() {}
        let value = if chars.next_if_eq(&'"').is_some() {
            read_string(&mut chars)
        } else {
            let mut v = String::new();
            while let Some(c) = chars.next_if(|c| *c != ',') {
                v.push(c);
            }
            v.trim().to_string()
        };
        map.insert(key, value);
    }
    map
}

// ---------------------------------------------------------------------------------------------
// coturn's turnserver, the reference server for the harness self-tests
// ---------------------------------------------------------------------------------------------

/// coturn `turnserver` on 127.0.0.1 and ::1 (UDP only; with [`Coturn::start_streams`] also
/// TCP on `port` and TLS on `tls_port`), equivalent to turnd's test profile: realm "turnd",
/// loopback peers allowed, relays on 127.0.0.1 and ::1. Killed on drop.
pub struct Coturn {
    pub port: u16,
    /// TLS listener port; 0 without [`Coturn::start_streams`].
    pub tls_port: u16,
    child: ChildGuard,
    log: PathBuf,
    _dir: ScratchDir,
}

impl Coturn {
    /// Static long-term user dev/devpass.
    pub fn start() -> Coturn {
        Self::start_with(&["--lt-cred-mech", &format!("--user={USER}:{PASSWORD}")])
    }

    /// TURN REST with the shared secret "devsecret".
    pub fn start_rest() -> Coturn {
        Self::start_with(&[
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
        ])
    }

    /// Static long-term user dev/devpass, listening on UDP and TCP at `port` and TLS (with
    /// `cert`) at `tls_port`.
    pub fn start_streams(cert: &TestCert) -> Coturn {
        Self::start_inner(
            &["--lt-cred-mech", &format!("--user={USER}:{PASSWORD}")],
            Some(cert),
        )
    }

    fn start_with(auth: &[&str]) -> Coturn {
        Self::start_inner(auth, None)
    }

    fn start_inner(auth: &[&str], streams: Option<&TestCert>) -> Coturn {
        require_tool("turnserver");
        for _attempt in 0..3 {
            if let Some(c) = Self::try_start(auth, streams) {
                return c;
            }
        }
        panic!("coturn did not start in 3 attempts (see the logs above)");
    }

    fn try_start(auth: &[&str], streams: Option<&TestCert>) -> Option<Coturn> {
        let dir = ScratchDir::new("coturn");
        let port = if streams.is_some() {
            free_stream_port()
        } else {
            free_udp_port_pair()
        };
        let tls_port = if streams.is_some() {
            free_stream_port()
        } else {
            0
        };
        let (log, out, err) = dir.output_file("turnserver.log");
        let d = dir.path().display();
        let mut args: Vec<String> = [
            "-n",
            "--listening-ip=127.0.0.1",
            "--listening-ip=::1",
            &format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1",
            "--relay-ip=::1",
            "--min-port=49152",
            "--max-port=65535",
            &format!("--realm={REALM}"),
            "--allow-loopback-peers",
            "--no-dtls",
            "--no-rfc5780",
            "--no-cli",
            "--cli-password=x",
            "--no-software-attribute",
            "--log-file=stdout",
            "--simple-log",
            &format!("--pidfile={d}/turnserver.pid"),
            &format!("--db={d}/turndb"),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        match streams {
            None => args.extend(["--no-tcp".into(), "--no-tls".into()]),
            Some(cert) => args.extend([
                format!("--tls-listening-port={tls_port}"),
                format!("--cert={}", cert.cert.display()),
                format!("--pkey={}", cert.key.display()),
            ]),
        }
        args.extend(auth.iter().map(ToString::to_string));
        let mut child = ChildGuard::spawn(
            Command::new("turnserver")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
            "turnserver",
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        for ip in [V4, V6] {
            let left = deadline.saturating_duration_since(Instant::now());
            if !stun_binding_answers(SocketAddr::new(ip, port), left) {
                let exited = child.try_exited();
                eprintln!(
                    "coturn on port {port} not answering on {ip} (exited: {exited:?}); log:\n{}",
                    read_lossy(&log)
                );
                return None;
            }
        }
        if streams.is_some() {
            for addr in [port, tls_port]
                .into_iter()
                .flat_map(|p| [V4, V6].into_iter().map(move |ip| SocketAddr::new(ip, p)))
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if !tcp_accepts(addr, left) {
                    eprintln!(
                        "coturn not accepting TCP on {addr} (exited: {:?}); log:\n{}",
                        child.try_exited(),
                        read_lossy(&log)
                    );
                    return None;
                }
            }
        }
        Some(Coturn {
            port,
            tls_port,
            child,
            log,
            _dir: dir,
        })
    }

    pub fn addr(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.port)
    }

    pub fn v4(&self) -> SocketAddr {
        self.addr(V4)
    }

    pub fn v6(&self) -> SocketAddr {
        self.addr(V6)
    }

    /// The TLS listener on `ip` (needs [`Coturn::start_streams`]).
    pub fn tls_addr(&self, ip: IpAddr) -> SocketAddr {
        assert_ne!(self.tls_port, 0, "coturn was started without TLS");
        SocketAddr::new(ip, self.tls_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: one client run plus its checks, against any server (turnd, or coturn to validate
// the harness). Each asserts real counters and returns the report for server-side checks.
// ---------------------------------------------------------------------------------------------

/// Every relayed address is on loopback in `ip`'s family, and there are `count` of them.
pub fn assert_relays(r: &UclientReport, ip: IpAddr, count: usize) {
    let ctx = r.context();
    assert_eq!(
        r.relay_addrs.len(),
        count,
        "allocations (relay addresses)\n{ctx}"
    );
    for a in &r.relay_addrs {
        assert!(
            a.ip().is_loopback() && a.is_ipv4() == ip.is_ipv4(),
            "relay {a} for {ip}\n{ctx}"
        );
    }
}

/// The peer saw exactly `datagrams` datagrams, all from `relay`.
pub fn assert_peer_saw(peer: &EchoPeer, datagrams: u64, relay: SocketAddr) {
    let s = peer.stats();
    assert_eq!(s.datagrams, datagrams, "datagrams at the peer: {s:?}");
    assert_eq!(
        s.sources,
        vec![relay],
        "the peer must see only the relayed address: {s:?}"
    );
}

/// uclient `-c` with channels: a probe allocation plus one client allocation; ChannelBind
/// twice to `peer + 1` and twice to `peer` (4 successes, 2 numbers); `messages` ChannelData
/// messages of 200 bytes to the echo peer and back. uclient relays to a peer of the server's
/// family (an IPv6 peer makes it request an IPv6 relay by itself).
pub fn uclient_channels(server: SocketAddr, messages: u32) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .messages(messages)
        .length(200);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert_eq!(
        r.channels.len(),
        4,
        "ChannelBind successes\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// uclient `-c -s`: CreatePermission, then Send indications out and Data indications back.
pub fn uclient_send_indications(server: SocketAddr) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .send_indications()
        .messages(10)
        .length(300);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert!(
        r.channels.is_empty(),
        "no ChannelBind with -s\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// uclient without `-c`: per client an RTP and an RTCP allocation. uclient's Allocates
/// alternate: EVEN-PORT with R=1 (the probe, which gets a RESERVATION-TOKEN), then one with that
/// RESERVATION-TOKEN (must get the reserved port, probe + 1), then EVEN-PORT R=1 again.
pub fn uclient_rtp_rtcp_pair(server: SocketAddr) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .messages(5);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 3);
    let ports: Vec<u16> = r.relay_addrs.iter().map(SocketAddr::port).collect();
    let ctx = r.context();
    assert_eq!(
        ports[0] % 2,
        0,
        "EVEN-PORT gives an even port: {ports:?}\n{ctx}"
    );
    assert_eq!(
        ports[1],
        ports[0] + 1,
        "RESERVATION-TOKEN gives the reserved port: {ports:?}\n{ctx}"
    );
    assert_eq!(
        ports[2] % 2,
        0,
        "EVEN-PORT gives an even port: {ports:?}\n{ctx}"
    );
    assert_eq!(
        peer.stats().datagrams,
        u.expected_messages(),
        "datagrams at the peer (both ports)"
    );
    r
}

/// uclient `-y -c`: two clients relay to each other's relayed addresses (no external peer).
/// On IPv6 `-x` asks for IPv6 relays (without a peer uclient would request IPv4).
pub fn uclient_client_to_client(server: SocketAddr) -> UclientReport {
    let mut u = Uclient::new(server)
        .user(USER, PASSWORD)
        .client_to_client()
        .no_rtcp()
        .messages(10);
    if server.is_ipv6() {
        u = u.ipv6_relay();
    }
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 3);
    r
}

/// uclient over IPv6 asking for an IPv4 relay (`-X`, RFC 6156 cross-family) to an IPv4 peer.
pub fn uclient_ipv6_client_ipv4_relay(server_v6: SocketAddr) -> UclientReport {
    assert!(server_v6.is_ipv6());
    let peer = EchoPeer::start(V4);
    let u = Uclient::new(server_v6)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .ipv4_relay()
        .messages(5);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, V4, 2);
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// uclient `-W secret -u dev`: TURN REST credentials computed by the client (expiry now + 1 day).
pub fn uclient_rest_secret(server: SocketAddr) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user_only(USER)
        .rest_secret(SECRET)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    r
}

/// uclient with given (e.g. precomputed REST) credentials; everything must be relayed.
pub fn uclient_with_credentials(server: SocketAddr, user: &str, password: &str) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(user, password)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    r
}

/// uclient with credentials the server must refuse: no allocation, nothing relayed, and the
/// peer never hears anything.
pub fn uclient_refused(server: SocketAddr, user: &str, password: &str) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let r = Uclient::new(server)
        .user(user, password)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5)
        .timeout(Duration::from_secs(20))
        .run();
    r.assert_refused();
    assert_eq!(
        peer.stats(),
        EchoStats::default(),
        "the peer must hear nothing"
    );
    r
}

/// aioice allocates over `server`, relays 3 x {100, 1200, 4000} bytes to an echo peer on
/// `peer_ip` and gets every echo back byte for byte; the peer saw only the relayed address.
/// aioice 0.13 never sends REQUESTED-ADDRESS-FAMILY, so its relay is IPv4 whatever the
/// server's family: use an IPv4 peer.
pub fn aioice_relay(server: SocketAddr, peer_ip: IpAddr) -> AioiceReport {
    let peer = EchoPeer::start(peer_ip);
    let r = run_aioice(server.ip(), server.port(), USER, PASSWORD, peer.addr())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((r.sent, r.received), (9, 9), "datagrams\n{}", r.raw);
    assert_eq!(
        (r.bytes_sent, r.bytes_received),
        (15_900, 15_900),
        "bytes\n{}",
        r.raw
    );
    assert_eq!(r.max_size, 4000, "largest echoed datagram\n{}", r.raw);
    assert!(
        r.relayed.ip().is_loopback() && r.relayed.is_ipv4() == peer_ip.is_ipv4(),
        "{}",
        r.raw
    );
    assert_eq!(
        r.mapped.ip(),
        server.ip(),
        "XOR-MAPPED-ADDRESS is the client's loopback address"
    );
    let s = peer.stats();
    assert_eq!((s.datagrams, s.bytes), (9, 15_900), "at the peer: {s:?}");
    assert_eq!(
        s.sources,
        vec![r.relayed],
        "the peer must see only the relayed address"
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Stream scenarios (TCP and TLS client legs; relays to peers are UDP)
// ---------------------------------------------------------------------------------------------

/// All relayed, over `t`: over TLS the retries of old TLS versions are allowed and there is
/// one TLS session per allocation (uclient opens one connection per allocation); over TCP
/// there is no TLS at all.
pub fn assert_stream_run(r: &UclientReport, t: ClientTransport, expected_msgs: u64) {
    let ctx = r.context();
    match t {
        ClientTransport::Tls => {
            r.assert_all_relayed_tls(expected_msgs);
            assert_eq!(
                r.tls_sessions.len(),
                r.relay_addrs.len(),
                "one TLS connection per allocation\n{ctx}"
            );
        }
        ClientTransport::Tcp | ClientTransport::Udp => {
            r.assert_all_relayed(expected_msgs);
            assert!(r.tls_sessions.is_empty(), "no TLS expected\n{ctx}");
        }
    }
}

/// [`uclient_channels`] over `t`: a probe allocation plus one client allocation, each on its
/// own connection; 4 ChannelBind successes; ChannelData 200 bytes to the echo peer and back.
pub fn uclient_stream_channels(
    server: SocketAddr,
    t: ClientTransport,
    messages: u32,
) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .transport(t)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .messages(messages)
        .length(200);
    let r = u.run();
    assert_stream_run(&r, t, u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert_eq!(
        r.channels.len(),
        4,
        "ChannelBind successes\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// [`uclient_send_indications`] over `t`: CreatePermission, Send indications out, Data
/// indications back (300 bytes).
pub fn uclient_stream_send_indications(server: SocketAddr, t: ClientTransport) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .transport(t)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .send_indications()
        .messages(10)
        .length(300);
    let r = u.run();
    assert_stream_run(&r, t, u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert!(
        r.channels.is_empty(),
        "no ChannelBind with -s\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// [`uclient_rest_secret`] over `t`: `-W secret -u dev`, channels.
pub fn uclient_stream_rest_secret(server: SocketAddr, t: ClientTransport) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .transport(t)
        .user_only(USER)
        .rest_secret(SECRET)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5);
    let r = u.run();
    assert_stream_run(&r, t, u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// [`uclient_refused`] over `t`.
pub fn uclient_stream_refused(
    server: SocketAddr,
    t: ClientTransport,
    user: &str,
    password: &str,
) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let r = Uclient::new(server)
        .transport(t)
        .user(user, password)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5)
        .timeout(Duration::from_secs(20))
        .run();
    r.assert_refused();
    if t == ClientTransport::Tls {
        assert!(
            !r.tls_sessions.is_empty(),
            "refused at Allocate, not at the TLS handshake\n{}",
            r.context()
        );
    }
    assert_eq!(
        peer.stats(),
        EchoStats::default(),
        "the peer must hear nothing"
    );
    r
}

/// [`aioice_relay`] over TCP or TLS (`opts`): 3 x {100, 1200, 4000} bytes to an IPv4 echo
/// peer (aioice's relay is always IPv4) and back byte for byte; the peer sees only the
/// advertised relayed address, and XOR-MAPPED-ADDRESS is the client's own end of the
/// connection.
pub fn aioice_stream_relay(server: SocketAddr, opts: &AioiceOpts) -> AioiceReport {
    let peer = EchoPeer::start(V4);
    let r = run_aioice_with(server, USER, PASSWORD, peer.addr(), opts)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.transport, opts.transport.name(), "{}", r.raw);
    assert_eq!((r.sent, r.received), (9, 9), "datagrams\n{}", r.raw);
    assert_eq!(
        (r.bytes_sent, r.bytes_received),
        (15_900, 15_900),
        "bytes\n{}",
        r.raw
    );
    assert_eq!(r.max_size, 4000, "largest echoed datagram\n{}", r.raw);
    assert!(
        r.relayed.ip().is_loopback() && r.relayed.is_ipv4(),
        "{}",
        r.raw
    );
    assert_eq!(
        Some(r.mapped),
        r.local,
        "XOR-MAPPED-ADDRESS is the client's end of the connection\n{}",
        r.raw
    );
    assert_eq!(r.mapped.ip(), server.ip(), "{}", r.raw);
    if opts.transport == ClientTransport::Tls {
        let want: &[&str] = if opts.tls12_only {
            &["TLSv1.2"]
        } else {
            &["TLSv1.2", "TLSv1.3"]
        };
        assert!(
            want.contains(&r.tls_version.as_str()),
            "TLS version {:?}, want one of {want:?}\n{}",
            r.tls_version,
            r.raw
        );
    } else {
        assert_eq!(r.tls_version, "", "{}", r.raw);
    }
    let s = peer.stats();
    assert_eq!((s.datagrams, s.bytes), (9, 15_900), "at the peer: {s:?}");
    assert_eq!(
        s.sources,
        vec![r.relayed],
        "the peer must see only the relayed address"
    );
    r
}
