//! Every shipped config file loads, and the built binary's `--check-config` reports success
//! and errors (file:line: key) as documented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use turnd::config::{self, LogFormat, PortRange, Profile};

fn reference_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/turnd.toml")
}

#[test]
fn reference_config_loads() {
    let path = reference_config();
    let c = config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.profile, Profile::Production);
    assert_eq!(c.source.as_deref(), Some(path.as_path()));
    assert_eq!(c.realm, "example.org");
    assert_eq!(c.workers, 2);
    let udp: Vec<SocketAddr> = vec![
        "127.0.0.1:3478".parse().unwrap(),
        "[::1]:3478".parse().unwrap(),
    ];
    assert_eq!(c.listen.udp, udp);
    assert!(c
        .listen
        .udp
        .iter()
        .chain(&c.listen.tcp)
        .all(|a| a.ip().is_loopback()));
    assert_eq!(
        c.relay.ports,
        PortRange {
            min: 49152,
            max: 65535
        }
    );
    assert_eq!(c.relay.ipv6, None);
    assert!(!c.relay.tcp, "RFC 6062 TCP relays are off by default");
    assert_eq!(c.relay.tcp_max_connections, 16);
    assert_eq!(c.relay.coalesce, Duration::from_micros(50));
    assert_eq!(c.auth.secrets, vec!["placeholder-change-me"]);
    assert_eq!(c.auth.rest_separator, ':');
    assert_eq!(c.lifetimes.allocation_default, Duration::from_secs(600));
    assert_eq!(c.lifetimes.allocation_max, Duration::from_secs(3600));
    assert_eq!(c.log.format, LogFormat::Human);
    assert!(!c.log.redact);
}

/// Run the built binary with a clean environment (no TURND_* from the caller).
fn turnd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_the_reference_config() {
    let path = reference_config();
    let out = turnd(&["--check-config", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("config OK: {}", path.display())
    );

    let out = turnd(&["--check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "config OK: built-in development profile"
    );
}

#[test]
fn check_config_names_file_line_and_key() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("check-config-bad.toml");
    std::fs::write(&path, "realm = \"x\"\n[relay]\nports = \"6000-5000\"\n").unwrap();
    let out = turnd(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:3: relay.ports: \"6000-5000\": the range's start is above its end",
        path.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(out.stdout.is_empty());
}
