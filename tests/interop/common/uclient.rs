//! coturn's `turnutils_uclient`, run with a deadline; its summary counters parsed into a
//! [`UclientReport`].

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

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

    /// `-m n`: clients, each with its own allocation(s), sending at once.
    pub fn clients(mut self, n: u32) -> Self {
        self.clients = n;
        self.opt("-m", n)
    }

    /// `-n n`: messages per connection.
    pub fn messages(mut self, n: u32) -> Self {
        self.messages = n;
        self.opt("-n", n)
    }

    /// `-z ms`: interval between a connection's messages (uclient's default: 20 ms).
    pub fn interval_ms(self, ms: u32) -> Self {
        self.opt("-z", ms)
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

    /// `-T`: RFC 6062 TCP relay (implies `-t -y -c`: clients pair up and each Connects to
    /// the other's relayed address; `-e`/`-r` are ignored). Add `.tls()` for TLS.
    pub fn tcp_relay(mut self) -> Self {
        self.c2c = true;
        self.no_rtcp = true;
        self.flag("-T")
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

    /// `-S` without `-t`: TURN over DTLS to the server (coturn 4.6.1 does not verify the
    /// server's certificate).
    pub fn dtls(self) -> Self {
        self.flag("-S")
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
