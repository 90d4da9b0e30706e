//! Tests of the config layer: TOML -> Config, error messages (file:line: key: what, no secrets),
//! defaults, the development profile, and the command-line merge in `crate::cli`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use super::*;
use crate::cli::{self, Cli};

const FILE: &str = "/etc/turnd/turnd.toml";
/// The smallest file that loads: someone must be able to authenticate.
const MINIMAL: &str = "[auth]\nsecrets = [\"s3cret\"]\n";

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str(text, Path::new(FILE))
}

/// The error message of a text that must not load.
fn error(text: &str) -> String {
    match load(text) {
        Ok(c) => panic!("loaded, expected an error: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A unique file under the system temp dir holding `text`.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turnd-config-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const EVERY_KEY: &str = r#"
realm = "example.org"
workers = 3
software = "turnd test"

[listen]
udp = ["0.0.0.0:3478", "[::]:3478"]
tcp = ["0.0.0.0:3478"]
tls = ["0.0.0.0:5349"]

[tls]
cert = "/etc/turnd/cert.pem"
key = "/etc/turnd/key.pem"

[relay]
ipv4 = "203.0.113.5"
ipv6 = "2001:db8::5"
ports = "50000-50999"
external = ["198.51.100.7=10.0.0.7"]

[auth]
users = ["alice:wonderland"]
secrets = ["one", "two"]
rest_separator = "-"
rest_max_skew = "90s"
nonce_lifetime = "5m"
challenge_budget_per_sec = 30
failure_budget_per_sec = 20

[[auth.user]]
name = "bob"
key = "0123456789abcdef0123456789abcdef"

[[auth.user]]
name = "carol"
password = "secret carol"

[policy]
allow_peers = ["127.0.0.0/8"]
deny_peers = ["203.0.113.0/24", "2001:db8::1"]
max_allocations = 500
max_allocations_per_user = 5
max_permissions_per_allocation = 10
max_channels_per_allocation = 0
max_bps_per_allocation = 2000000

[lifetimes]
allocation_default = "5m"
allocation_max = "2h"
permission = "300s"
channel = "1h30m"

[streams]
handshake_timeout = "5s"
first_frame_timeout = "3s"
idle_timeout = "2m"
max_connections = 100
max_connections_per_ip = 4
write_queue_bytes = 65536
write_timeout = "4s"

[log]
level = "warn,turnd_proto::engine=debug"
format = "json"
redact = true
"#;

#[test]
fn every_key_parses() {
    let c = load(EVERY_KEY).unwrap();
    assert_eq!(c.profile, Profile::Production);
    assert_eq!(c.source.as_deref(), Some(Path::new(FILE)));
    assert_eq!(c.realm, "example.org");
    assert_eq!(c.workers, 3);
    assert_eq!(c.software.as_deref(), Some("turnd test"));
    assert_eq!(c.listen.udp, vec![addr("0.0.0.0:3478"), addr("[::]:3478")]);
    assert_eq!(c.listen.tcp, vec![addr("0.0.0.0:3478")]);
    assert_eq!(c.listen.tls, vec![addr("0.0.0.0:5349")]);
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert, Path::new("/etc/turnd/cert.pem"));
    assert_eq!(tls.key, Path::new("/etc/turnd/key.pem"));
    assert_eq!(c.relay.ipv4, Some(Ipv4Addr::new(203, 0, 113, 5)));
    assert_eq!(
        c.relay.ipv6,
        Some("2001:db8::5".parse::<Ipv6Addr>().unwrap())
    );
    assert_eq!(
        c.relay.ports,
        PortRange {
            min: 50000,
            max: 50999
        }
    );
    assert_eq!(
        c.relay.external,
        vec![ExternalMapping {
            public: "198.51.100.7".parse().unwrap(),
            private: "10.0.0.7".parse().unwrap()
        }]
    );
    let users: Vec<(&str, &Credential)> = c
        .auth
        .users
        .iter()
        .map(|u| (u.name.as_str(), &u.credential))
        .collect();
    assert_eq!(
        users,
        vec![
            ("alice", &Credential::Password("wonderland".into())),
            (
                "bob",
                &Credential::Key(
                    hex::decode("0123456789abcdef0123456789abcdef")
                        .unwrap()
                        .try_into()
                        .unwrap()
                )
            ),
            ("carol", &Credential::Password("secret carol".into())),
        ]
    );
    assert_eq!(c.auth.secrets, vec!["one", "two"]);
    assert_eq!(c.auth.rest_separator, '-');
    assert_eq!(c.auth.rest_max_skew, Duration::from_secs(90));
    assert_eq!(c.auth.nonce_lifetime, Duration::from_secs(300));
    assert_eq!(c.auth.challenge_budget_per_sec, 30);
    assert_eq!(c.auth.failure_budget_per_sec, 20);
    assert_eq!(c.policy.allow_peers, vec!["127.0.0.0/8".parse().unwrap()]);
    assert_eq!(
        c.policy.deny_peers,
        vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap()
        ]
    );
    assert_eq!(c.policy.max_allocations, 500);
    assert_eq!(c.policy.max_allocations_per_user, 5);
    assert_eq!(c.policy.max_permissions_per_allocation, 10);
    assert_eq!(c.policy.max_channels_per_allocation, 0);
    assert_eq!(c.policy.max_bps_per_allocation, 2_000_000);
    assert_eq!(c.lifetimes.allocation_default, Duration::from_secs(300));
    assert_eq!(c.lifetimes.allocation_max, Duration::from_secs(7200));
    assert_eq!(c.lifetimes.permission, Duration::from_secs(300));
    assert_eq!(c.lifetimes.channel, Duration::from_secs(5400));
    assert_eq!(c.streams.handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.streams.first_frame_timeout, Duration::from_secs(3));
    assert_eq!(c.streams.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.streams.max_connections, 100);
    assert_eq!(c.streams.max_connections_per_ip, 4);
    assert_eq!(c.streams.write_queue_bytes, 65536);
    assert_eq!(c.streams.write_timeout, Duration::from_secs(4));
    assert_eq!(c.log.level, "warn,turnd_proto::engine=debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.log.redact);
}

#[test]
fn absent_keys_keep_the_secure_defaults() {
    let c = load(MINIMAL).unwrap();
    let mut expected = Config::secure_default();
    expected.source = Some(PathBuf::from(FILE));
    expected.auth.secrets = vec!["s3cret".into()];
    expected.workers = c.workers; // the number of cores, whatever it is here
    assert_eq!(c, expected);
    assert!(c.workers >= 1);
    assert_eq!(c.listen.udp, vec![addr("0.0.0.0:3478")]);
    assert!(c.listen.tcp.is_empty() && c.listen.tls.is_empty() && c.tls.is_none());
    assert!(
        c.policy.allow_peers.is_empty(),
        "a file never allows special-purpose peers by default"
    );
    assert_eq!(c.relay.ipv6, None);
    assert_eq!(c.software, None);
    assert_eq!(
        c.policy.max_bps_per_allocation, 0,
        "no bandwidth cap by default"
    );
    // A key present in a section leaves the section's other keys at their defaults.
    let c = load(&format!("{MINIMAL}[listen]\ntcp = [\"0.0.0.0:3478\"]\n")).unwrap();
    assert_eq!(c.listen.udp, vec![addr("0.0.0.0:3478")]);
    let c = load(&format!(
        "{MINIMAL}[listen]\nudp = []\ntcp = [\"0.0.0.0:3478\"]\n"
    ))
    .unwrap();
    assert!(c.listen.udp.is_empty());
}

#[test]
fn development_profile_values() {
    let c = Config::development();
    c.validate().unwrap();
    assert_eq!(c.profile, Profile::Development);
    assert_eq!(c.source, None);
    assert!(c.listen.udp.iter().all(|a| a.ip().is_loopback()));
    assert_eq!(c.auth.users[0].name, DEV_USER);
    assert_eq!(
        c.auth.users[0].credential,
        Credential::Password(DEV_PASSWORD.into())
    );
    assert_eq!(c.auth.secrets, vec![DEV_SECRET]);
    assert_eq!(
        c.policy.max_bps_per_allocation, 0,
        "no bandwidth cap in development either"
    );
    assert!(c
        .policy
        .allow_peers
        .contains(&"127.0.0.0/8".parse().unwrap()));
    Config::for_tests().validate().unwrap();
    Config::secure_default().validate().unwrap_err(); // no users, no secrets
}

#[test]
fn unknown_keys_are_rejected_with_file_line_and_key() {
    let text = "realm = \"x\"\n[listen]\nudpp = [\"0.0.0.0:3478\"]\n";
    assert_eq!(
        error(text),
        format!("{FILE}:3: listen.udpp: unknown key (expected one of: udp, tcp, tls, dtls)")
    );
    let e = error("realmm = \"x\"\n");
    assert!(
        e.starts_with(&format!(
            "{FILE}:1: realmm: unknown key (expected one of: realm, workers,"
        )),
        "{e}"
    );
    let e =
        error("[auth]\nsecrets = [\"s\"]\n[[auth.user]]\nname = \"bob\"\npasword = \"hunter2\"\n");
    assert_eq!(
        e,
        format!(
            "{FILE}:5: auth.user[0].pasword: unknown key (expected one of: name, key, password)"
        )
    );
    assert!(!e.contains("hunter2"));
    // A top-level key below a table header belongs to that table in TOML: say so.
    let e = error("[auth]\nsecrets = [\"s\"]\nrealm = \"x\"\n");
    assert!(
        e.starts_with(&format!("{FILE}:3: auth.realm: unknown key")),
        "{e}"
    );
    assert!(e.contains("move it above the first [table]"), "{e}");
    let e = error("[adminn]\ntoken = \"x\"\n");
    assert!(
        e.starts_with(&format!("{FILE}:1: adminn: unknown key")),
        "{e}"
    );
    let e = error("[auth]\nsecrets = [\"s\"]\n[admin]\ntokn = \"0123456789abcdefXYZ\"\n");
    assert!(
        e.starts_with(&format!("{FILE}:4: admin.tokn: unknown key")),
        "{e}"
    );
}

#[test]
fn tcp_relay_keys_default_off_and_are_checked() {
    let c = load(MINIMAL).unwrap();
    assert!(!c.relay.tcp);
    assert_eq!(c.relay.tcp_max_connections, 16);
    assert!(!Config::development().relay.tcp, "off in both profiles");
    let c = load(&format!(
        "{MINIMAL}[relay]\ntcp = true\ntcp_max_connections = 4\n"
    ))
    .unwrap();
    assert!(c.relay.tcp);
    assert_eq!(c.relay.tcp_max_connections, 4);
    let e = error(&format!("{MINIMAL}[relay]\ntcp_max_connections = 0\n"));
    assert!(e.contains("relay.tcp_max_connections"), "{e}");
    let e = error(&format!(
        "{MINIMAL}[listen]\ntcp = [\"0.0.0.0:50000\"]\n[relay]\ntcp = true\n"
    ));
    assert!(e.contains("TCP/TLS listener port of 0.0.0.0:50000"), "{e}");
    load(&format!("{MINIMAL}[listen]\ntcp = [\"0.0.0.0:50000\"]\n")).expect("without relay.tcp");
}

#[test]
fn relay_coalesce_defaults_to_50us_and_is_bounded() {
    assert_eq!(
        load(MINIMAL).unwrap().relay.coalesce,
        Duration::from_micros(50)
    );
    assert_eq!(
        Config::development().relay.coalesce,
        Duration::from_micros(50)
    );
    let c = load(&format!("{MINIMAL}[relay]\ncoalesce = \"0s\"\n")).unwrap();
    assert_eq!(c.relay.coalesce, Duration::ZERO, "0s: off");
    let c = load(&format!("{MINIMAL}[relay]\ncoalesce = \"200us\"\n")).unwrap();
    assert_eq!(c.relay.coalesce, Duration::from_micros(200));
    let e = error(&format!("{MINIMAL}[relay]\ncoalesce = \"2ms\"\n"));
    assert!(
        e.contains("relay.coalesce: must be between 0s (off) and 1ms"),
        "{e}"
    );
    let e = error(&format!("{MINIMAL}[relay]\ncoalesce = 50\n"));
    assert!(e.contains("relay.coalesce"), "{e}");
}

#[test]
fn bad_values_name_line_and_key() {
    let cases = [
        (
            "[listen]\nudp = [\n  \"0.0.0.0:3478\",\n  \"1.2.3.4\",\n]\n",
            "4: listen.udp[1]: \"1.2.3.4\": expected an address with a port",
        ),
        (
            "[relay]\nipv4 = \"::1\"\n",
            "2: relay.ipv4: \"::1\": expected an IPv4 address",
        ),
        (
            "\n[relay]\nports = \"6000-5000\"\n",
            "3: relay.ports: \"6000-5000\": the range's start is above its end",
        ),
        (
            "[relay]\nports = \"0-10\"\n",
            "2: relay.ports: \"0-10\": port 0 cannot be a relay port",
        ),
        (
            "[relay]\nexternal = [\"1.2.3.4\"]\n",
            "2: relay.external[0]: \"1.2.3.4\": expected \"PUBLIC=PRIVATE\"",
        ),
        (
            "[lifetimes]\nchannel = \"10\"\n",
            "2: lifetimes.channel: \"10\": a unit is required",
        ),
        (
            "[lifetimes]\npermission = \"5 fortnights\"\n",
            "2: lifetimes.permission: \"5 fortnights\": unknown unit",
        ),
        (
            "[auth]\nrest_max_skew = 60\n",
            "2: auth.rest_max_skew: invalid type: integer `60`, expected a duration",
        ),
        (
            "[policy]\ndeny_peers = [\"10.0.0.0/33\"]\n",
            "2: policy.deny_peers[0]: \"10.0.0.0/33\": expected a network",
        ),
        (
            "[log]\nformat = \"jsn\"\n",
            "2: log.format: \"jsn\": expected \"human\" or \"json\"",
        ),
        (
            "[log]\nlevel = \"verbose\"\n",
            "2: log.level: \"verbose\": expected a level",
        ),
        ("workers = -1\n", "1: workers: invalid value: integer `-1`"),
        (
            "realm = 5\n",
            "1: realm: invalid type: integer `5`, expected a string",
        ),
        ("[tls]\ncert = \"c.pem\"\n", "1: tls.key: is required"),
        (
            "[auth]\nrest_separator = \"::\"\n",
            "2: auth.rest_separator: \"::\": expected exactly one character",
        ),
    ];
    for (text, expected) in cases {
        let e = error(text);
        assert!(
            e.starts_with(&format!("{FILE}:{expected}")),
            "{text:?}\n got: {e}\nwant: {expected}"
        );
    }
}

#[test]
fn bad_key_hex_names_line_and_key_without_echoing_it() {
    let text = "[[auth.user]]\nname = \"bob\"\nkey = \"0123456789abcdefXYZ\"\n";
    let e = error(text);
    assert!(
        e.starts_with(&format!(
            "{FILE}:3: auth.user[0].key: expected 32 hex digits"
        )),
        "{e}"
    );
    assert!(!e.contains("XYZ"), "{e}");
}

#[test]
fn syntax_errors_name_line_and_key() {
    let e = error("realm = \"x\"\n[relay]\nports = \"1-2\n");
    assert!(
        e.starts_with(&format!("{FILE}:3: relay.ports: invalid TOML")),
        "{e}"
    );
    let e = error("realm = \"a\"\nrealm = \"b\"\n");
    assert!(
        e.starts_with(&format!("{FILE}:2: realm: invalid TOML")),
        "{e}"
    );
}

#[test]
fn secrets_are_never_echoed() {
    let cases = [
        "[auth]\nusers = \"alice:hunter2\"\n",
        "[auth]\nusers = [\":hunter2\"]\n",
        "[auth]\nusers = [\"alice:hunter2\", \"alice:hunter2\"]\n",
        "[auth]\nusers = [\"alicehunter2\"]\n",
        "[auth]\nsecrets = \"hunter2\"\n",
        "[auth]\nsecrets = [\"ok\", { v = \"hunter2\" }]\n",
        "[auth]\nsecrets = [\"hunter2\n",
        "[auth]\nsecrets = [\n  \"ok\",\n  \"hunter2\n]\n",
        "[[auth.user]]\nname = \"bob\"\npassword = [\"hunter2\"]\n",
        "[[auth.user]]\nname = \"bob\"\nkey = \"hunter2\"\n",
        "[[auth.user]]\nname = \"bob\"\nkey = \"hunter2\"\npassword = \"hunter2\"\n",
        "auth = \"hunter2\"\n",
        "auth = { secrets = [\"ok\"], users = [1, \"hunter2\"] }\n",
    ];
    for text in cases {
        let e = error(text);
        assert!(!e.contains("hunter2"), "{text:?} echoed a secret: {e}");
        assert!(e.starts_with(&format!("{FILE}:")), "{e}");
    }
    let e = error("[auth]\nsecrets = [\"ok\", 5]\n");
    assert_eq!(
        e,
        format!(
            "{FILE}:2: auth.secrets[1]: invalid type: integer (value not shown), expected a string"
        )
    );
    assert!(is_secret_key("auth.user[3].password") && is_secret_key("auth.secrets[0]"));
    assert!(!is_secret_key("auth.user[3].name") && !is_secret_key("auth.rest_separator"));
}

#[test]
fn rules_between_keys_name_line_and_key() {
    let cases = [
        (
            "[lifetimes]\nallocation_default = \"2h\"\n",
            "2: lifetimes.allocation_default: 7200s is above lifetimes.allocation_max (3600s)",
        ),
        ("[listen]\nudp = []\n", "1: listen: no listeners"),
        (
            "[listen]\ntls = [\"0.0.0.0:5349\"]\n",
            "2: listen.tls: TLS listeners need [tls]",
        ),
        (
            "[listen]\ndtls = [\"0.0.0.0:5349\"]\n",
            "2: listen.dtls: DTLS listeners need [tls] cert and key",
        ),
        (
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[listen]\nudp = [\"0.0.0.0:3478\"]\ndtls = [\"0.0.0.0:3478\"]\n",
            "6: listen.dtls: 0.0.0.0:3478 is also in listen.udp",
        ),
        (
            "[dtls]\nmax_sessions_per_ip = 0\n",
            "2: dtls.max_sessions_per_ip: must be at least 1",
        ),
        (
            "[dtls]\nhandshake_timeout = \"0s\"\n",
            "2: dtls.handshake_timeout: must be longer than 0s",
        ),
        ("realm = \"\"\n", "1: realm: is empty"),
        (
            "realm = \"turn.example.org.\"\n",
            "1: realm: is 17 bytes, longer than 16: every 401 carries it",
        ),
        (
            "\nsoftware = \"ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé\"\n",
            "2: software: is 130 bytes, longer than 127",
        ),
        (
            "[auth]\nusers = [\"a:b\"]\nchallenge_budget_per_sec = 0\n",
            "3: auth.challenge_budget_per_sec: must be at least 1",
        ),
        (
            "[streams]\nidle_timeout = \"0s\"\n",
            "2: streams.idle_timeout: must be longer than 0s",
        ),
        (
            "[streams]\nmax_connections_per_ip = 0\n",
            "2: streams.max_connections_per_ip: must be at least 1",
        ),
        ("workers = 0\n", "1: workers: must be at least 1"),
        (
            "[relay]\nipv4 = \"none\"\n",
            "1: relay: relay.ipv4 and relay.ipv6 are both \"none\"",
        ),
        (
            "[policy]\nmax_allocations = 0\n",
            "2: policy.max_allocations: must be at least 1",
        ),
        (
            "[policy]\nmax_bps_per_allocation = 500\n",
            "2: policy.max_bps_per_allocation: is in bits per second: at least 8000 (1 kB/s), or 0 for unlimited",
        ),
        (
            "[lifetimes]\npermission = \"500ms\"\n",
            "2: lifetimes.permission: must be at least 1s",
        ),
        (
            "[auth]\nusers = [\"a:b\"]\n[[auth.user]]\nname = \"a\"\npassword = \"c\"\n",
            "3: auth.user[0]: user \"a\" is already defined at auth.users[0]",
        ),
        (
            "[[auth.user]]\nname = \"a\"\n",
            "1: auth.user[0]: needs a key or a password",
        ),
    ];
    for (text, expected) in cases {
        let text = if text.contains("[auth") {
            text.to_string()
        } else {
            format!("{text}{MINIMAL}")
        };
        let e = error(&text);
        let want = format!("{FILE}:{expected}");
        assert!(e.starts_with(&want), "{text:?}\n got: {e}\nwant: {want}");
    }
    // Nobody could authenticate: named at the [auth] table, or without a line when absent.
    assert!(error("[auth]\nusers = []\n")
        .starts_with(&format!("{FILE}:1: auth: no users and no secrets")));
    assert!(error("").starts_with(&format!("{FILE}: auth: no users and no secrets")));
}

#[test]
fn all_problems_are_reported_at_once() {
    let e = error(&format!(
        "workers = 0\n[lifetimes]\npermission = \"0s\"\n{MINIMAL}"
    ));
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].contains("workers") && lines[1].contains("lifetimes.permission"),
        "{e}"
    );
}

#[test]
fn secret_file_is_read_relative_to_the_config_file() {
    let secrets = temp_file("secrets", "\n  first-secret  \nsecond-secret\n\n");
    let config = secrets.with_file_name("turnd.toml");
    let c = load_str(
        "[auth]\nsecrets = [\"inline\"]\nsecret_file = \"secrets\"\n",
        &config,
    )
    .unwrap();
    assert_eq!(
        c.auth.secrets,
        vec!["inline", "first-secret", "second-secret"]
    );
    let c = load_str(
        &format!("[auth]\nsecret_file = {:?}\n", secrets.display()),
        Path::new(FILE),
    )
    .unwrap();
    assert_eq!(c.auth.secrets, vec!["first-secret", "second-secret"]);

    let empty = temp_file("empty-secrets", "\n \n");
    let e = load_str("[auth]\nsecret_file = \"empty-secrets\"\n", &config)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2: auth.secret_file: ") && e.contains("holds no secrets"),
        "{e}"
    );
    let _ = empty;
    let e = error("[auth]\nsecret_file = \"/nonexistent/turnd-secrets\"\n");
    assert!(
        e.starts_with(&format!(
            "{FILE}:2: auth.secret_file: cannot read \"/nonexistent/turnd-secrets\""
        )),
        "{e}"
    );
}

fn parse_cli(args: &[&str]) -> Cli {
    let mut argv = vec!["turnd"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap()
}

#[test]
fn cli_override_beats_file() {
    let file =
        "realm = \"file.example\"\n[auth]\nsecrets = [\"s\"]\n[listen]\nudp = [\"0.0.0.0:3478\"]\n";
    let cli = parse_cli(&[
        "--realm=cli.example",
        "--listen-udp=127.0.0.1:4000",
        "--listen-udp",
        "[::1]:4000",
        "--relay-ipv4=none",
        "--relay-ipv6=::1",
        "--relay-ports=6000-6100",
        "--external=198.51.100.7=10.0.0.7",
        "--user=eve:pw1",
        "--allow-peer=10.0.0.0/8,10.1.0.0/16",
        "--log-format=json",
        "--redact",
    ]);
    let c = load_str_with(file, Path::new(FILE), |c| {
        cli::apply_overrides(&cli.overrides, c)
    })
    .unwrap();
    assert_eq!(c.realm, "cli.example");
    assert_eq!(
        c.listen.udp,
        vec![addr("127.0.0.1:4000"), addr("[::1]:4000")]
    );
    assert_eq!(
        (c.relay.ipv4, c.relay.ipv6),
        (None, Some(Ipv6Addr::LOCALHOST))
    );
    assert_eq!(
        c.relay.ports,
        PortRange {
            min: 6000,
            max: 6100
        }
    );
    assert_eq!(c.relay.external.len(), 1);
    assert_eq!(c.auth.users.len(), 1);
    assert_eq!(c.auth.users[0].name, "eve");
    assert_eq!(
        c.auth.secrets,
        vec!["s"],
        "keys not overridden keep the file's value"
    );
    assert_eq!(c.policy.allow_peers.len(), 2);
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.log.redact);
    assert_eq!(c.profile, Profile::Production);

    // Through `resolve`, with the file on disk.
    let path = temp_file("override.toml", file);
    let path_arg = format!("--config={}", path.display());
    let c = cli::resolve(&parse_cli(&[&path_arg, "--workers=7", "--redact=false"])).unwrap();
    assert_eq!(
        (c.workers, c.realm.as_str(), c.log.redact),
        (7, "file.example", false)
    );
    assert_eq!(c.source.as_deref(), Some(path.as_path()));
}

#[test]
fn env_var_override_and_flag_precedence() {
    // Only this test sets TURND_MAX_ALLOCATIONS, and no other test reads max_allocations
    // through the CLI.
    std::env::set_var("TURND_MAX_ALLOCATIONS", "77");
    let from_env = parse_cli(&[]);
    let from_flag = parse_cli(&["--max-allocations=88"]);
    std::env::remove_var("TURND_MAX_ALLOCATIONS");
    assert_eq!(from_env.overrides.max_allocations, Some(77));
    assert_eq!(from_flag.overrides.max_allocations, Some(88));
    let c = load_str_with(MINIMAL, Path::new(FILE), |c| {
        cli::apply_overrides(&from_env.overrides, c)
    })
    .unwrap();
    assert_eq!(c.policy.max_allocations, 77);
}

#[test]
fn validation_reruns_after_the_merge() {
    // The file alone lacks credentials; the command line supplies them.
    let secrets = temp_file("cli-secrets", "from-file\n");
    let cli = parse_cli(&[&format!("--secret-file={}", secrets.display())]);
    let c = load_str_with("realm = \"x\"\n", Path::new(FILE), |c| {
        cli::apply_overrides(&cli.overrides, c)
    })
    .unwrap();
    assert_eq!(c.auth.secrets, vec!["from-file"]);

    // An override that breaks a rule: reported without a line, marked as from the command line.
    let cli = parse_cli(&["--listen-tls=0.0.0.0:5349"]);
    let e = load_str_with(MINIMAL, Path::new(FILE), |c| {
        cli::apply_overrides(&cli.overrides, c)
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{FILE}: listen.tls: TLS listeners need [tls] cert and key (after command-line overrides)")
    );
    let cli = parse_cli(&["--tls-key=k.pem", "--listen-tls=0.0.0.0:5349"]);
    let e = load_str_with(MINIMAL, Path::new(FILE), |c| {
        cli::apply_overrides(&cli.overrides, c)
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "command line: --tls-key: needs --tls-cert (or [tls] cert in the file)"
    );

    // Without --config: the development profile, still validated after the merge.
    let e = cli::resolve(&parse_cli(&["--listen-udp=0.0.0.0:3478"])).unwrap_err();
    assert!(format!("{e:#}").contains("development profile with command-line overrides: listen: 0.0.0.0:3478 is not a loopback address"), "{e:#}");
    let c = cli::resolve(&parse_cli(&["--realm=dev.example"])).unwrap();
    assert_eq!(
        (c.profile, c.realm.as_str()),
        (Profile::Development, "dev.example")
    );
}

#[test]
fn cli_never_shows_passwords() {
    let cli = parse_cli(&["--user=:hunter2"]);
    assert!(!format!("{cli:?}").contains("hunter2"));
    let e = cli::resolve(&cli).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("--user #1: the user name is empty") && !e.contains("hunter2"),
        "{e}"
    );
    assert!(
        Cli::try_parse_from(["turnd", "--secret=x"]).is_err(),
        "there is no --secret flag"
    );
}

#[test]
fn development_banner_names_the_public_credentials() {
    let banner = cli::development_banner(&Config::development()).join("\n");
    for needle in [
        "DEVELOPMENT",
        "127.0.0.1:3478",
        "dev / password: devpass",
        "devsecret",
        "DO NOT EXPOSE",
    ] {
        assert!(banner.contains(needle), "{needle}: {banner}");
    }
}

#[test]
fn signaling_admin_and_server_sections() {
    let c = load(&format!(
        "{MINIMAL}[signaling]\nlisten = \"0.0.0.0:8443\"\ntls = false\npublic_host = \"turn.example.org\"\n\
         credential_ttl = \"30m\"\nallowed_origins = [\"https://app.example.org\"]\n\
         max_connections_per_ip = 4\nmax_message_bytes = 2048\nice_requests_per_minute = 10\n\
         [admin]\nlisten = \"10.0.0.1:9641\"\ntoken = \"0123456789abcdef-secret\"\n\
         [server]\ndrain_timeout = \"45s\"\n"
    ))
    .unwrap();
    assert_eq!(c.signaling.listen, Some("0.0.0.0:8443".parse().unwrap()));
    assert_eq!(c.signaling.public_host.as_deref(), Some("turn.example.org"));
    assert_eq!(c.signaling.credential_ttl, Duration::from_secs(1800));
    assert_eq!(
        c.signaling.allowed_origins,
        vec!["https://app.example.org".to_string()]
    );
    assert_eq!(
        (
            c.signaling.max_connections_per_ip,
            c.signaling.max_message_bytes
        ),
        (4, 2048)
    );
    assert_eq!(c.signaling.ice_requests_per_minute, 10);
    assert_eq!(c.admin.listen, Some("10.0.0.1:9641".parse().unwrap()));
    assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef-secret"));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(45));
    // Defaults: no signaling listener, admin on loopback, no drain.
    let d = load(MINIMAL).unwrap();
    assert_eq!(d.signaling.listen, None);
    assert_eq!(d.admin.listen, Some("127.0.0.1:9641".parse().unwrap()));
    assert_eq!(d.server.drain_timeout, Duration::ZERO);
    // "none" turns a listener off.
    let off = load(&format!("{MINIMAL}[admin]\nlisten = \"none\"\n")).unwrap();
    assert_eq!(off.admin.listen, None);
}

#[test]
fn admin_off_loopback_needs_a_token_and_tokens_are_never_echoed() {
    let e = error(&format!("{MINIMAL}[admin]\nlisten = \"0.0.0.0:9641\"\n"));
    assert!(
        e.contains("admin.listen: 0.0.0.0:9641 is not on loopback: set admin.token"),
        "{e}"
    );
    let e = error(&format!("{MINIMAL}[admin]\ntoken = \"short-secret\"\n"));
    assert!(
        e.contains(":4: admin.token: must be at least 16 characters"),
        "{e}"
    );
    assert!(!e.contains("short-secret"), "{e}");
    let e = error(&format!("{MINIMAL}[admin]\ntoken = 12345678901234567\n"));
    assert!(e.contains("admin.token"), "{e}");
    assert!(!e.contains("12345678901234567"), "{e}");
    let e = error(&format!("{MINIMAL}[signaling]\nlisten = \"8080\"\n"));
    assert!(
        e.contains(":4: signaling.listen: \"8080\": expected an address with a port"),
        "{e}"
    );
}

#[test]
fn http_listener_flags_and_the_development_profile_stays_on_loopback() {
    use clap::Parser;
    let cli = crate::cli::Cli::try_parse_from([
        "turnd",
        "--admin-listen",
        "none",
        "--signaling-listen",
        "127.0.0.1:8090",
        "--drain-timeout",
        "30s",
    ])
    .unwrap();
    let c = crate::cli::resolve(&cli).unwrap();
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.signaling.listen, Some("127.0.0.1:8090".parse().unwrap()));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    // The development profile would hand its public credentials to the network.
    let cli =
        crate::cli::Cli::try_parse_from(["turnd", "--signaling-listen", "0.0.0.0:8080"]).unwrap();
    let e = format!("{:#}", crate::cli::resolve(&cli).unwrap_err());
    assert!(e.contains("0.0.0.0:8080 is not a loopback address"), "{e}");
}

#[test]
fn signaling_mint_and_http_limits() {
    // Files default to no minting; the development profile mints for anyone.
    let d = load(MINIMAL).unwrap();
    assert_eq!(d.signaling.mint, Mint::Off);
    assert_eq!(Config::development().signaling.mint, Mint::Open);
    assert_eq!(d.signaling.max_websockets, 4096);
    assert_eq!(
        (
            d.signaling.mint_allocations_per_client,
            d.signaling.mint_allocations
        ),
        (10, 1000)
    );
    assert_eq!(d.signaling.header_timeout, Duration::from_secs(10));

    let token = temp_file("mint-token", "a-mint-token-of-some-length\n");
    let secret = temp_file("mint-secret", "mint-secret-0123456789\n");
    let c = load(&format!(
        "{MINIMAL}[signaling]\nmint = \"token\"\nmint_token_file = {:?}\n\
         mint_secret_file = {:?}\nmint_per_minute = 7\nmax_websockets = 9\n\
         max_http_connections = 10\nmax_http_connections_per_ip = 3\nheader_timeout = \"2s\"\n\
         idle_timeout = \"30s\"\nfd_reserve = 64\nmint_allocations_per_client = 4\n\
         mint_allocations = 40\n",
        token.display(),
        secret.display()
    ))
    .unwrap();
    let s = &c.signaling;
    assert_eq!(s.mint, Mint::Token);
    assert_eq!(
        s.mint_token.as_ref().unwrap().0,
        "a-mint-token-of-some-length"
    );
    assert_eq!(s.mint_secret.as_ref().unwrap().0, "mint-secret-0123456789");
    assert!(
        !format!("{c:?}").contains("a-mint-token"),
        "secrets print redacted"
    );
    assert_eq!(
        (s.mint_per_minute, s.max_websockets, s.max_http_connections),
        (7, 9, 10)
    );
    assert_eq!(s.max_http_connections_per_ip, 3);
    assert_eq!((s.mint_allocations_per_client, s.mint_allocations), (4, 40));
    assert_eq!(
        (s.header_timeout, s.idle_timeout, s.fd_reserve),
        (Duration::from_secs(2), Duration::from_secs(30), 64)
    );

    let e = error(&format!("{MINIMAL}[signaling]\nmint = \"token\"\n"));
    assert!(
        e.contains("signaling.mint_token_file: mint = \"token\" needs"),
        "{e}"
    );
    let e = error(&format!("{MINIMAL}[signaling]\nmint = \"maybe\"\n"));
    assert!(e.contains("signaling.mint"), "{e}");
    let same = temp_file("mint-same", "s3cret-but-longer-than-16\n");
    let e = error(&format!(
        "[auth]\nsecrets = [\"s3cret-but-longer-than-16\"]\n[signaling]\nmint_secret_file = {:?}\n",
        same.display()
    ));
    assert!(e.contains("must differ from every [auth] secret"), "{e}");
    assert!(!e.contains("s3cret-but"), "{e}");
    let e = error("[[auth.user]]\nname = \"web:x\"\npassword = \"password\"\n");
    assert!(e.contains("reserved for minted credentials"), "{e}");
    let e = error(&format!("{MINIMAL}[signaling]\nheader_timeout = \"0s\"\n"));
    assert!(e.contains("signaling.header_timeout"), "{e}");
}

#[test]
fn password_algorithms_and_userhash() {
    use turnd_proto::auth::PasswordAlgorithm as Alg;
    let base = "[auth]\nusers = [\"alice:wonderland\"]\n";
    let c = load(base).unwrap();
    assert_eq!(
        c.auth.password_algorithms,
        vec![Alg::Md5],
        "default: MD5 only"
    );
    assert!(!c.auth.userhash);
    let c = load(&format!(
        "{base}password_algorithms = [\"sha256\", \"md5\"]\nuserhash = true\n"
    ))
    .unwrap();
    assert_eq!(c.auth.password_algorithms, vec![Alg::Sha256, Alg::Md5]);
    assert!(c.auth.userhash);
    let e = error(&format!("{base}password_algorithms = [\"sha1\"]\n"));
    assert!(
        e.contains("auth.password_algorithms[0]") && e.contains("sha1"),
        "{e}"
    );
    let e = error(&format!("{base}password_algorithms = [\"md5\", \"md5\"]\n"));
    assert!(e.contains("listed twice"), "{e}");
    let e = error(&format!("{base}password_algorithms = []\n"));
    assert!(e.contains("auth.password_algorithms"), "{e}");
    assert_eq!(c.auth.revocations_file, None);
    let c = load(&format!("{base}revocations_file = \"rev.json\"\n")).unwrap();
    let p = c.auth.revocations_file.unwrap();
    assert!(p.ends_with("rev.json") && p.is_absolute() == Path::new(FILE).is_absolute());
}

#[test]
fn rest_secrets_of_both_hmac_kinds() {
    let c = load(
        "[auth]\nsecrets = [\"old\"]\n\n[[auth.secret]]\nvalue = \"new256\"\nhmac = \"sha256\"\n\n\
         [[auth.secret]]\nvalue = \"another1\"\n",
    )
    .unwrap();
    assert_eq!(c.auth.secrets, vec!["old", "another1"]);
    assert_eq!(c.auth.secrets_sha256, vec!["new256"]);
    // SHA-256 secrets alone are enough to authenticate.
    let c = load("[[auth.secret]]\nvalue = \"only\"\nhmac = \"sha256\"\n").unwrap();
    assert_eq!(c.auth.secrets_sha256, vec!["only"]);
    let e = error("[[auth.secret]]\nvalue = \"hidden-value\"\nhmac = \"md5\"\n");
    assert!(e.contains("auth.secret[0].hmac"), "{e}");
    let e = error("[[auth.secret]]\nvalue = [\"hidden-value\"]\n");
    assert!(
        e.contains("auth.secret[0].value") && !e.contains("hidden"),
        "{e}"
    );
    assert!(is_secret_key("auth.secret[0].value") && is_secret_key("auth.secret"));
}

#[test]
fn cluster_section_parses_and_checks_its_keys() {
    assert_eq!(
        load(MINIMAL).unwrap().cluster,
        None,
        "standalone by default"
    );
    let pw = temp_file("redis-password", "hunter2-redis\n");
    let c = load(&format!(
        "{MINIMAL}[cluster]\nredis = \"rediss://user:urlpass@redis.example:6380/1\"\n\
         password_file = \"{}\"\nnode_id = \"turn-1\"\nheartbeat = \"200ms\"\nlease = \"1s\"\n\
         timeout = \"100ms\"\nquota_fail = \"closed\"\nredirect_above = 500\ndrain_min_allocations = 2\nusage_interval = \"10m\"\n\
         public_udp = \"203.0.113.5:3478\"\npublic_tls = \"203.0.113.5:5349\"\n\
         public_tls_domain = \"turn-1.example.org\"\n",
        pw.display()
    ))
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(c.node_id, "turn-1");
    assert_eq!(c.password.as_ref().unwrap().0, "hunter2-redis");
    assert_eq!(c.heartbeat, Duration::from_millis(200));
    assert_eq!(c.lease, Duration::from_secs(1));
    assert_eq!(c.timeout, Duration::from_millis(100));
    assert_eq!(c.quota_fail, QuotaFail::Closed);
    assert_eq!(c.redirect_above, 500);
    assert_eq!(c.drain_min_allocations, 2);
    assert_eq!(c.usage_interval, Duration::from_secs(600));
    assert_eq!(
        c.public,
        [
            Some(addr("203.0.113.5:3478")),
            None,
            Some(addr("203.0.113.5:5349"))
        ]
    );
    assert_eq!(c.public_tls_domain.as_deref(), Some("turn-1.example.org"));
    assert!(!format!("{c:?}").contains("urlpass"), "the URL is redacted");
    let d = load(&format!(
        "{MINIMAL}[cluster]\nredis = \"redis://127.0.0.1:6379\"\n"
    ))
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(
        (d.heartbeat, d.lease, d.timeout, d.quota_fail),
        (
            Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::from_millis(500),
            QuotaFail::Local
        )
    );
    assert!(!d.node_id.is_empty(), "the hostname");
    let e = error(&format!("{MINIMAL}[cluster]\nnode_id = \"x\"\n"));
    assert!(e.contains("cluster.redis"), "{e}");
    let e = error(&format!(
        "{MINIMAL}[cluster]\nredis = \"http://secret@x\"\n"
    ));
    assert!(e.contains("cluster.redis") && !e.contains("secret@"), "{e}");
    let e = error(&format!(
        "{MINIMAL}[cluster]\nredis = \"redis://x\"\nheartbeat = \"1s\"\nlease = \"1s\"\n"
    ));
    assert!(e.contains("cluster.lease"), "{e}");
    let e = error(&format!(
        "{MINIMAL}[cluster]\nredis = \"redis://x\"\nquota_fail = \"open\"\n"
    ));
    assert!(e.contains("quota_fail"), "{e}");
}

#[test]
fn cluster_ca_file_must_hold_a_pem_certificate_and_needs_rediss() {
    let ck = rcgen::generate_simple_self_signed(vec!["redis.example".to_string()]).unwrap();
    let ca = temp_file("redis-ca.pem", &ck.cert.pem());
    let with = |url: &str, file: &Path| {
        format!(
            "{MINIMAL}[cluster]\nredis = \"{url}\"\nca_file = \"{}\"\n",
            file.display()
        )
    };
    let c = load(&with("rediss://redis.example:6380/0", &ca))
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.ca_pem.as_deref(), Some(ck.cert.pem().as_bytes()));
    let e = error(&with("redis://redis.example:6379/0", &ca));
    assert!(
        e.contains("cluster.ca_file") && e.contains("rediss://"),
        "{e}"
    );
    let junk = temp_file("redis-ca-junk.pem", "not a certificate\n");
    let e = error(&with("rediss://redis.example:6380/0", &junk));
    assert!(e.contains("cluster.ca_file") && e.contains("no PEM"), "{e}");
    let e = error(&with("rediss://x:6380/0", Path::new("/nonexistent/ca.pem")));
    assert!(
        e.contains("cluster.ca_file") && e.contains("cannot read"),
        "{e}"
    );
    let d = load(&format!(
        "{MINIMAL}[cluster]\nredis = \"rediss://x:6380/0\"\n"
    ))
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(d.ca_pem, None, "the public roots by default");
}

#[test]
fn fastpath_keys() {
    let c = load(&format!(
        "{MINIMAL}[fastpath]\nxdp = [\"eth0\", \"ens5\"]\nxdp_mode = \"generic\"\n"
    ))
    .unwrap();
    assert_eq!(c.fastpath.xdp, vec!["eth0".to_string(), "ens5".to_string()]);
    assert_eq!(c.fastpath.xdp_mode, XdpMode::Generic);
    let c = load(MINIMAL).unwrap();
    assert!(c.fastpath.xdp.is_empty(), "off by default");
    assert_eq!(c.fastpath.xdp_mode, XdpMode::Native);
    let e = error(&format!("{MINIMAL}[fastpath]\nxdp_mode = \"skb\"\n"));
    assert!(e.contains("fastpath.xdp_mode"), "{e}");
    for bad in ["", "a/b", "sixteen-chars-xx", "e th0"] {
        let e = error(&format!("{MINIMAL}[fastpath]\nxdp = [{bad:?}]\n"));
        assert!(e.contains("fastpath.xdp: "), "{bad:?}: {e}");
    }
    let e = error(&format!(
        "{MINIMAL}[fastpath]\nxdp = [\"eth0\", \"eth0\"]\n"
    ));
    assert!(e.contains("listed twice"), "{e}");
}
