//! Tier 4: `turnd --check-config` warns about a configuration that is valid but cannot work
//! (issue 10, item 16): the default `relay.ipv4 = "0.0.0.0"` without `relay.external`
//! advertises `0.0.0.0:port` as every client's relayed address.

use std::path::Path;
use std::process::{Command, Output};

fn check(name: &str, text: &str) -> Output {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args(["--check-config", "--config", path.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn wildcard_relay_address_without_external_is_warned_about() {
    let out = check("wildcard-relay.toml", "[auth]\nusers = [\"a:b\"]\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "still valid: {stderr}");
    assert!(
        stderr.contains("wildcard-relay.toml: relay.ipv4: relays bind 0.0.0.0")
            && stderr.contains("relay.external"),
        "no warning: {stderr:?}"
    );
    let out = check(
        "wildcard-relay-v6.toml",
        "[relay]\nipv4 = \"192.0.2.7\"\nipv6 = \"::\"\n[auth]\nusers = [\"a:b\"]\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("relay.ipv6: relays bind ::"), "{stderr:?}");
    assert!(!stderr.contains("relay.ipv4"), "{stderr:?}");
}

#[test]
fn concrete_or_mapped_relay_address_is_not_warned_about() {
    for (name, relay) in [
        ("concrete-relay.toml", "ipv4 = \"192.0.2.7\"\n"),
        (
            "mapped-relay.toml",
            "external = [\"203.0.113.7=0.0.0.0\"]\n",
        ),
    ] {
        let out = check(
            name,
            &format!("[relay]\n{relay}[auth]\nusers = [\"a:b\"]\n"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.is_empty(), "{name}: {stderr:?}");
    }
}
