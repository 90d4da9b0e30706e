//! Python `aioice` allocating and relaying through `tests/interop/aioice_relay.py`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

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

/// Parses the script's one-line JSON object (values are strings, numbers, booleans or null,
/// by construction of the script) into key -> value text: a string's own text, anything else
/// as JSON. Not an object: an empty map (the caller then reports the output).
pub fn parse_flat_json(line: &str) -> HashMap<String, String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).unwrap_or_default();
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}
