//! coturn's `turnserver`, the reference server for the harness self-tests.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// coturn `turnserver` on 127.0.0.1 and ::1 (UDP only; with [`Coturn::start_streams`] also
/// TCP on `port` and TLS on `tls_port`), equivalent to turnd's test profile: realm "turnd",
/// loopback peers allowed, relays on 127.0.0.1 and ::1. Killed on drop.
pub struct Coturn {
    pub port: u16,
    /// TLS listener port; 0 without [`Coturn::start_streams`].
    pub tls_port: u16,
    /// Killed on drop.
    _child: ChildGuard,
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
            false,
        )
    }

    /// As [`Coturn::start_streams`], and DTLS on the TLS port's UDP twin (coturn serves DTLS
    /// on its `tls-listening-port`).
    pub fn start_streams_dtls(cert: &TestCert) -> Coturn {
        Self::start_inner(
            &["--lt-cred-mech", &format!("--user={USER}:{PASSWORD}")],
            Some(cert),
            true,
        )
    }

    fn start_with(auth: &[&str]) -> Coturn {
        Self::start_inner(auth, None, false)
    }

    fn start_inner(auth: &[&str], streams: Option<&TestCert>, dtls: bool) -> Coturn {
        require_tool("turnserver");
        for _attempt in 0..3 {
            if let Some(c) = Self::try_start(auth, streams, dtls) {
                return c;
            }
        }
        panic!("coturn did not start in 3 attempts (see the logs above)");
    }

    fn try_start(auth: &[&str], streams: Option<&TestCert>, dtls: bool) -> Option<Coturn> {
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
        if !dtls {
            args.push("--no-dtls".into());
        }
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
            _child: child,
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
}
