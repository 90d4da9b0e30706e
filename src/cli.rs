//! Command-line flags, each also readable from a `TURND_*` environment variable, and
//! [`resolve`]: the one place where the config file (or the development profile) and the
//! overrides are merged and validated.
//!
//! Every override replaces the file's value for its key (lists are replaced, not appended to).
//! Secrets are never taken from argv, which every local user can read: TURN REST secrets come
//! from a file (`--secret-file`), so there is deliberately no `--secret` flag. `--user` does
//! take a password (for quick tests); prefer the config file or `TURND_USER` in production.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{Args, Parser};
use ipnet::IpNet;

use crate::config::parse::{self, MaybeNone};
use crate::config::{self, Config, ConfigError, ExternalMapping, LogFormat, PortRange, Problem};
use crate::config::{Credential, TlsFiles, DEV_PASSWORD, DEV_SECRET, DEV_USER};

/// A STUN/TURN relay server.
#[derive(Debug, Clone, Parser)]
#[command(name = "turnd", version, about, long_about = LONG_ABOUT)]
pub struct Cli {
    /// The config file (TOML; see config/turnd.toml). Without one, turnd runs the development
    /// profile: loopback only, public dev credentials.
    #[arg(long, short = 'c', env = "TURND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Load and validate the configuration (file and overrides), print `config OK: <file>` and
    /// exit 0; print the problems and exit 1 otherwise.
    #[arg(long)]
    pub check_config: bool,

    #[command(flatten)]
    pub overrides: Overrides,
}

const LONG_ABOUT: &str = "A STUN/TURN relay server.

Without --config, turnd runs the development profile: listeners on loopback, loopback peers \
allowed, user \"dev\" with password \"devpass\", REST secret \"devsecret\". Never expose it.
Every override flag replaces the key of the same name in the file and can also be set with the \
TURND_* variable shown. Secrets are never taken from the command line: use --secret-file.";

/// Flags that override keys of the config file.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Overrides (each replaces a key of the file)")]
pub struct Overrides {
    /// Overrides `realm` in the file.
    #[arg(long, env = "TURND_REALM", value_name = "REALM")]
    pub realm: Option<String>,

    /// Overrides `workers` in the file (number of shard threads).
    #[arg(long, env = "TURND_WORKERS", value_name = "N")]
    pub workers: Option<usize>,

    /// Overrides `listen.udp` in the file. Repeatable; comma-separated in the variable.
    #[arg(long, env = "TURND_LISTEN_UDP", value_name = "ADDR:PORT", value_delimiter = ',', value_parser = parse::socket_addr)]
    pub listen_udp: Vec<SocketAddr>,

    /// Overrides `listen.tcp` in the file. Repeatable; comma-separated in the variable.
    #[arg(long, env = "TURND_LISTEN_TCP", value_name = "ADDR:PORT", value_delimiter = ',', value_parser = parse::socket_addr)]
    pub listen_tcp: Vec<SocketAddr>,

    /// Overrides `listen.tls` in the file. Repeatable; comma-separated in the variable.
    #[arg(long, env = "TURND_LISTEN_TLS", value_name = "ADDR:PORT", value_delimiter = ',', value_parser = parse::socket_addr)]
    pub listen_tls: Vec<SocketAddr>,

    /// Overrides `listen.dtls` in the file. Repeatable; comma-separated in the variable.
    #[arg(long, env = "TURND_LISTEN_DTLS", value_name = "ADDR:PORT", value_delimiter = ',', value_parser = parse::socket_addr)]
    pub listen_dtls: Vec<SocketAddr>,

    /// Overrides `tls.cert` in the file (PEM certificate chain).
    #[arg(long, env = "TURND_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Overrides `tls.key` in the file (PEM private key).
    #[arg(long, env = "TURND_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Overrides `relay.ipv4` in the file: the address IPv4 relays bind, or "none".
    #[arg(long, env = "TURND_RELAY_IPV4", value_name = "ADDR|none", value_parser = parse::relay_ipv4)]
    pub relay_ipv4: Option<MaybeNone<Ipv4Addr>>,

    /// Overrides `relay.ipv6` in the file: the address IPv6 relays bind, or "none".
    #[arg(long, env = "TURND_RELAY_IPV6", value_name = "ADDR|none", value_parser = parse::relay_ipv6)]
    pub relay_ipv6: Option<MaybeNone<Ipv6Addr>>,

    /// Overrides `relay.ports` in the file, e.g. 49152-65535.
    #[arg(long, env = "TURND_RELAY_PORTS", value_name = "MIN-MAX", value_parser = parse::port_range)]
    pub relay_ports: Option<PortRange>,

    /// Overrides `relay.external` in the file: PUBLIC=PRIVATE. Repeatable; comma-separated in
    /// the variable.
    #[arg(long, env = "TURND_EXTERNAL", value_name = "PUBLIC=PRIVATE", value_delimiter = ',', value_parser = parse::external)]
    pub external: Vec<ExternalMapping>,

    /// Overrides `auth.users` and `[[auth.user]]` in the file: NAME:PASSWORD. Repeatable (one
    /// user in the variable). Visible to local users in argv: prefer the file.
    #[arg(
        long,
        env = "TURND_USER",
        value_name = "NAME:PASSWORD",
        hide_env_values = true
    )]
    pub user: Vec<Secret>,

    /// Overrides `auth.secrets` and `auth.secret_file` in the file: a file with one TURN REST
    /// secret per line. (There is no --secret flag: argv is readable by every local user.)
    #[arg(long, env = "TURND_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// Overrides `policy.allow_peers` in the file. Repeatable; comma-separated in the variable.
    #[arg(long, env = "TURND_ALLOW_PEER", value_name = "NET", value_delimiter = ',', value_parser = parse::peer_net)]
    pub allow_peer: Vec<IpNet>,

    /// Overrides `policy.deny_peers` in the file. Repeatable; comma-separated in the variable.
    #[arg(long, env = "TURND_DENY_PEER", value_name = "NET", value_delimiter = ',', value_parser = parse::peer_net)]
    pub deny_peer: Vec<IpNet>,

    /// Overrides `policy.max_allocations` in the file.
    #[arg(long, env = "TURND_MAX_ALLOCATIONS", value_name = "N")]
    pub max_allocations: Option<usize>,

    /// Overrides `log.level` in the file (RUST_LOG, when set, still wins).
    #[arg(long, env = "TURND_LOG_LEVEL", value_name = "FILTER", value_parser = parse::log_level)]
    pub log_level: Option<String>,

    /// Overrides `log.format` in the file: human or json.
    #[arg(long, env = "TURND_LOG_FORMAT", value_name = "FORMAT", value_parser = parse::log_format)]
    pub log_format: Option<LogFormat>,

    /// Overrides `log.redact` in the file: hash client addresses and usernames in logs.
    #[arg(long, env = "TURND_REDACT", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub redact: Option<bool>,

    /// Overrides `signaling.listen` in the file: ADDR:PORT or "none".
    #[arg(long, env = "TURND_SIGNALING_LISTEN", value_name = "ADDR:PORT|none", value_parser = parse::optional_listener)]
    pub signaling_listen: Option<parse::MaybeNone<SocketAddr>>,

    /// Overrides `admin.listen` in the file: ADDR:PORT or "none".
    #[arg(long, env = "TURND_ADMIN_LISTEN", value_name = "ADDR:PORT|none", value_parser = parse::optional_listener)]
    pub admin_listen: Option<parse::MaybeNone<SocketAddr>>,

    /// Overrides `admin.token` in the file with the one line of FILE.
    #[arg(long, env = "TURND_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Overrides `server.drain_timeout` in the file, e.g. 30s.
    #[arg(long, env = "TURND_DRAIN_TIMEOUT", value_name = "DURATION", value_parser = parse::duration)]
    pub drain_timeout: Option<std::time::Duration>,
}

/// A command-line value that must not be printed (`{:?}` shows `Secret(..)`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// [`Config::warnings`] as lines naming the file and the key, for `--check-config` (stderr)
/// and the start-up log.
pub fn warnings(config: &Config) -> Vec<String> {
    let origin = origin(config);
    config
        .warnings()
        .into_iter()
        .map(|w| format!("{origin}: {w}"))
        .collect()
}

/// Where the merged configuration came from, for messages.
pub fn origin(config: &Config) -> String {
    match &config.source {
        Some(path) => path.display().to_string(),
        None => "built-in development profile".to_string(),
    }
}

/// The configuration to run: the file (or [`Config::development`] without `--config`), then
/// the overrides, then validation of the result.
pub fn resolve(cli: &Cli) -> anyhow::Result<Config> {
    let adjust = |c: &mut Config| apply_overrides(&cli.overrides, c);
    let config = match &cli.config {
        Some(path) => config::load_file_with(path, adjust),
        None => development_with(adjust),
    };
    config.context("invalid configuration")
}

/// The development profile with `adjust` applied, then validated.
fn development_with<F>(adjust: F) -> Result<Config, ConfigError>
where
    F: FnOnce(&mut Config) -> Result<Vec<&'static str>, ConfigError>,
{
    let mut c = Config::development();
    let overridden = adjust(&mut c)?;
    let mut origin = origin(&c);
    if !overridden.is_empty() {
        origin.push_str(" with command-line overrides");
    }
    c.validate()
        .map_err(|p| ConfigError::unlocated(&origin, p))?;
    Ok(c)
}

/// Apply every override given; return the dotted keys replaced.
pub fn apply_overrides(o: &Overrides, c: &mut Config) -> Result<Vec<&'static str>, ConfigError> {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    // Replace `$slot` with `$value` when given, and note `$key` as overridden.
    macro_rules! over {
        ($key:literal, $slot:expr, $value:expr) => {
            if let Some(v) = $value {
                $slot = v;
                keys.push($key);
            }
        };
    }
    let list = |v: &[SocketAddr]| (!v.is_empty()).then(|| v.to_vec());
    over!("realm", c.realm, o.realm.clone());
    over!("workers", c.workers, o.workers);
    over!("listen.udp", c.listen.udp, list(&o.listen_udp));
    over!("listen.tcp", c.listen.tcp, list(&o.listen_tcp));
    over!("listen.tls", c.listen.tls, list(&o.listen_tls));
    over!("listen.dtls", c.listen.dtls, list(&o.listen_dtls));
    if o.tls_cert.is_some() || o.tls_key.is_some() {
        keys.push("tls");
        match tls_files(o, c.tls.as_ref()) {
            Ok(files) => c.tls = Some(files),
            Err(p) => problems.push(p),
        }
    }
    over!("relay.ipv4", c.relay.ipv4, o.relay_ipv4.map(|v| v.0));
    over!("relay.ipv6", c.relay.ipv6, o.relay_ipv6.map(|v| v.0));
    over!("relay.ports", c.relay.ports, o.relay_ports);
    over!(
        "relay.external",
        c.relay.external,
        (!o.external.is_empty()).then(|| o.external.clone())
    );
    if !o.user.is_empty() {
        keys.push("auth.users");
        c.auth.users.clear();
        for (i, Secret(s)) in o.user.iter().enumerate() {
            match parse::user(s) {
                Ok(u) => c.auth.users.push(u),
                Err(m) => problems.push(Problem::new(format!("--user #{}", i + 1), m)),
            }
        }
    }
    if let Some(path) = &o.secret_file {
        keys.push("auth.secrets");
        match config::read_secret_file(path) {
            Ok(secrets) => c.auth.secrets = secrets,
            Err(m) => problems.push(Problem::new("--secret-file", m)),
        }
    }
    let nets = |v: &[IpNet]| (!v.is_empty()).then(|| v.to_vec());
    over!(
        "policy.allow_peers",
        c.policy.allow_peers,
        nets(&o.allow_peer)
    );
    over!("policy.deny_peers", c.policy.deny_peers, nets(&o.deny_peer));
    over!(
        "policy.max_allocations",
        c.policy.max_allocations,
        o.max_allocations
    );
    over!("log.level", c.log.level, o.log_level.clone());
    over!("log.format", c.log.format, o.log_format);
    over!("log.redact", c.log.redact, o.redact);
    over!(
        "signaling.listen",
        c.signaling.listen,
        o.signaling_listen.map(|v| v.0)
    );
    over!("admin.listen", c.admin.listen, o.admin_listen.map(|v| v.0));
    if let Some(path) = &o.admin_token_file {
        keys.push("admin.token");
        match config::read_secret_file(path) {
            Ok(mut lines) if lines.len() == 1 => c.admin.token = lines.pop(),
            Ok(_) => problems.push(Problem::new(
                "--admin-token-file",
                "must hold exactly one line, the token",
            )),
            Err(m) => problems.push(Problem::new("--admin-token-file", m)),
        }
    }
    over!(
        "server.drain_timeout",
        c.server.drain_timeout,
        o.drain_timeout
    );
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(ConfigError::unlocated("command line", problems))
    }
}

/// `--tls-cert`/`--tls-key` over `[tls]`: a flag given alone needs the other file from the file.
fn tls_files(o: &Overrides, file: Option<&TlsFiles>) -> Result<TlsFiles, Problem> {
    let cert = o.tls_cert.clone().or_else(|| file.map(|t| t.cert.clone()));
    let key = o.tls_key.clone().or_else(|| file.map(|t| t.key.clone()));
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(TlsFiles { cert, key }),
        (None, _) => Err(Problem::new(
            "--tls-key",
            "needs --tls-cert (or [tls] cert in the file)",
        )),
        (_, None) => Err(Problem::new(
            "--tls-cert",
            "needs --tls-key (or [tls] key in the file)",
        )),
    }
}

/// The lines of the development-profile banner: what listens, the public dev credentials, and
/// a warning. `main` logs them with `tracing::warn!`.
pub fn development_banner(c: &Config) -> Vec<String> {
    let mut lines = vec![
        "*****************************************************************".to_string(),
        "turnd is running the DEVELOPMENT profile (no --config given).".to_string(),
    ];
    for (proto, addrs) in [
        ("udp", &c.listen.udp),
        ("tcp", &c.listen.tcp),
        ("tls", &c.listen.tls),
    ] {
        for a in addrs {
            lines.push(format!("  listening ({proto}): {a}"));
        }
    }
    let dev_user =
        c.auth.users.iter().any(|u| {
            u.name == DEV_USER && u.credential == Credential::Password(DEV_PASSWORD.into())
        });
    if dev_user {
        lines.push(format!(
            "  static user: {DEV_USER} / password: {DEV_PASSWORD}"
        ));
    }
    if c.auth.secrets.iter().any(|s| s == DEV_SECRET) {
        lines.push(format!("  TURN REST secret: {DEV_SECRET}"));
    }
    if !c.listen.tls.is_empty() && c.tls.is_none() {
        lines.push("  TLS: a self-signed certificate generated at start-up".into());
    }
    if !c.policy.allow_peers.is_empty() {
        lines.push("  loopback peers are allowed: clients can reach services on this host".into());
    }
    lines.extend([
        "These credentials are public. DO NOT EXPOSE this server to a network:".to_string(),
        "write a config file (see config/turnd.toml) and pass --config.".to_string(),
        "*****************************************************************".to_string(),
    ]);
    lines
}
