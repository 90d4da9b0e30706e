//! Credentials: where a password or TURN REST secret comes from (flag, file or environment),
//! the REST username/password pair (draft-uberti-behave-turn-rest-00, as coturn and turnd
//! compute it), and `turnctl creds`, which prints them or an RTCConfiguration.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::json;

use crate::client::Credentials;

/// Flags shared by every subcommand that authenticates.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// Static user name, or the user part of a TURN REST username.
    #[arg(long, short = 'u', env = "TURNCTL_USER")]
    pub user: Option<String>,
    /// Static password (prefer --password-file or TURNCTL_PASSWORD: argv is visible to others).
    #[arg(long, short = 'p', env = "TURNCTL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Read the static password from this file (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    /// TURN REST shared secret (prefer --secret-file or TURNCTL_SECRET).
    #[arg(long, env = "TURNCTL_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Read the TURN REST shared secret from this file (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub secret_file: Option<PathBuf>,
    /// Lifetime of generated TURN REST credentials.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Separator between expiry and user in TURN REST usernames.
    #[arg(long, default_value_t = ':')]
    pub separator: char,
    /// HMAC of TURN REST passwords, as the secret's `hmac` in turnd's `[[auth.secret]]`.
    #[arg(long, value_enum, default_value_t = Hmac::Sha1)]
    pub hmac: Hmac,
    /// Bind generated TURN REST credentials to a client address or prefix
    /// (`<expiry>:<user>:ip=203.0.113.0/24`): turnd refuses them from elsewhere.
    #[arg(long, value_name = "ADDR[/LEN]", value_parser = parse_bind_ip)]
    pub bind_ip: Option<ipnet::IpNet>,
}

fn parse_bind_ip(s: &str) -> Result<ipnet::IpNet, String> {
    turnd_proto::auth::parse_binding(s)
        .ok_or_else(|| format!("{s}: expected an IP address or a prefix like 203.0.113.0/24"))
}

/// `--hmac`: base64(HMAC-SHA1 or HMAC-SHA256(secret, username)).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hmac {
    Sha1,
    Sha256,
}

impl From<Hmac> for turnd_proto::auth::RestHmac {
    fn from(h: Hmac) -> Self {
        match h {
            Hmac::Sha1 => turnd_proto::auth::RestHmac::Sha1,
            Hmac::Sha256 => turnd_proto::auth::RestHmac::Sha256,
        }
    }
}

fn first_line(path: &PathBuf) -> anyhow::Result<String> {
    let s =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(s.lines().next().unwrap_or("").trim_end().to_string())
}

impl AuthArgs {
    /// The shared secret, if one was given by flag, file or environment.
    pub fn secret(&self) -> anyhow::Result<Option<String>> {
        match (&self.secret, &self.secret_file) {
            (Some(s), _) => Ok(Some(s.clone())),
            (None, Some(f)) => Ok(Some(first_line(f)?)),
            (None, None) => Ok(None),
        }
    }

    /// Credentials to authenticate with: REST ones from a secret, else the static pair, else
    /// none (Binding still works; TURN requests will then fail with a hint).
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        if let Some(secret) = self.secret()? {
            let user = self.user.as_deref().unwrap_or("");
            let (username, password) = rest_credentials_bound(
                self.hmac.into(),
                &secret,
                user,
                self.ttl,
                self.separator,
                unix_now(),
                self.bind_ip.as_ref(),
            );
            return Ok(Some(Credentials { username, password }));
        }
        let password = match (&self.password, &self.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(first_line(f)?),
            (None, None) => None,
        };
        match (&self.user, password) {
            (Some(u), Some(p)) => Ok(Some(Credentials {
                username: u.clone(),
                password: p,
            })),
            (Some(_), None) => {
                bail!("--user needs --password (or --password-file, TURNCTL_PASSWORD) or --secret")
            }
            (None, Some(_)) => bail!("--password needs --user"),
            (None, None) => Ok(None),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// TURN REST username (`expiry<sep>user`) and password (base64 HMAC-SHA1 or HMAC-SHA256 of
/// the username, `--hmac`).
#[cfg(test)]
pub fn rest_credentials_with(
    hmac: turnd_proto::auth::RestHmac,
    secret: &str,
    user: &str,
    ttl: Duration,
    sep: char,
    now: u64,
) -> (String, String) {
    rest_credentials_bound(hmac, secret, user, ttl, sep, now, None)
}

/// The same, bound to `bind` when given (`<expiry><sep><user><sep>ip=<prefix>`).
pub fn rest_credentials_bound(
    hmac: turnd_proto::auth::RestHmac,
    secret: &str,
    user: &str,
    ttl: Duration,
    sep: char,
    now: u64,
    bind: Option<&ipnet::IpNet>,
) -> (String, String) {
    let mut username = turnd_proto::auth::rest_username(now + ttl.as_secs(), user, sep);
    if let Some(net) = bind {
        username = turnd_proto::auth::bind_username(&username, sep, net);
    }
    let password = turnd_proto::auth::rest_password_with(hmac, secret.as_bytes(), &username);
    (username, password)
}

/// `turnctl creds`.
#[derive(clap::Args, Debug)]
pub struct CredsArgs {
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Print an RTCConfiguration with these stun:/turn:/turns: URLs.
    #[arg(long, num_args = 1.., value_name = "URL")]
    pub ice_servers: Vec<String>,
    /// Print JSON ({"username","password","ttl","expires"}).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &CredsArgs) -> anyhow::Result<()> {
    let secret = args
        .auth
        .secret()?
        .context("give the shared secret with --secret-file FILE, TURNCTL_SECRET or --secret")?;
    let user = args.auth.user.as_deref().unwrap_or("");
    let now = unix_now();
    let (username, password) = rest_credentials_bound(
        args.auth.hmac.into(),
        &secret,
        user,
        args.auth.ttl,
        args.auth.separator,
        now,
        args.auth.bind_ip.as_ref(),
    );
    let expires = now + args.auth.ttl.as_secs();
    if !args.ice_servers.is_empty() {
        println!("{}", ice_servers(&args.ice_servers, &username, &password)?);
    } else if args.json {
        let v = json!({"username": username, "password": password, "ttl": args.auth.ttl.as_secs(), "expires": expires});
        println!("{v}");
    } else {
        println!("username: {username}");
        println!("password: {password}");
        println!(
            "expires:  {expires} (unix time, in {} s)",
            args.auth.ttl.as_secs()
        );
    }
    Ok(())
}

/// An RTCConfiguration: stun: URLs without credentials, turn:/turns: URLs with them.
fn ice_servers(urls: &[String], username: &str, password: &str) -> anyhow::Result<String> {
    let (mut stun, mut turn) = (Vec::new(), Vec::new());
    for u in urls {
        match u.split_once(':').map(|(s, _)| s) {
            Some("stun" | "stuns") => stun.push(u.as_str()),
            Some("turn" | "turns") => turn.push(u.as_str()),
            _ => bail!("{u}: not a stun:, turn: or turns: URL"),
        }
    }
    let mut servers = Vec::new();
    if !stun.is_empty() {
        servers.push(json!({"urls": stun}));
    }
    if !turn.is_empty() {
        servers.push(json!({"urls": turn, "username": username, "credential": password}));
    }
    Ok(serde_json::to_string_pretty(
        &json!({"iceServers": servers}),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_coturns_formula() {
        // echo -n "1700003600:alice" | openssl dgst -sha1 -hmac secret -binary | base64
        let (u, p) = rest_credentials_with(
            Hmac::Sha1.into(),
            "secret",
            "alice",
            Duration::from_secs(3600),
            ':',
            1_700_000_000,
        );
        assert_eq!(u, "1700003600:alice");
        assert_eq!(
            p,
            turnd_proto::auth::rest_password(b"secret", "1700003600:alice")
        );
        let (u, _) = rest_credentials_with(
            Hmac::Sha1.into(),
            "secret",
            "",
            Duration::from_secs(60),
            ':',
            10,
        );
        assert_eq!(u, "70");
    }

    #[test]
    fn rest_credentials_with_sha256() {
        // Python: base64(hmac.new(b"secret", b"1700003600:alice", "sha256").digest())
        let (u, p) = rest_credentials_with(
            Hmac::Sha256.into(),
            "secret",
            "alice",
            Duration::from_secs(3600),
            ':',
            1_700_000_000,
        );
        assert_eq!(u, "1700003600:alice");
        assert_eq!(p, "mcMSaa7ZOJuc8jGwTcdKyMK7Lal/NBLqea7qr/npVlQ=");
    }

    #[test]
    fn bound_credentials_carry_the_prefix() {
        let net = parse_bind_ip("203.0.113.9/24").unwrap();
        let (u, p) = rest_credentials_bound(
            Hmac::Sha1.into(),
            "secret",
            "alice",
            Duration::from_secs(3600),
            ':',
            1_700_000_000,
            Some(&net),
        );
        assert_eq!(u, "1700003600:alice:ip=203.0.113.0/24");
        assert_eq!(p, turnd_proto::auth::rest_password(b"secret", &u));
        assert_eq!(parse_bind_ip("::1").unwrap().to_string(), "::1/128");
        assert!(parse_bind_ip("nope").is_err());
    }

    #[test]
    fn ice_servers_split_stun_from_turn() {
        let j = ice_servers(&["stun:h:3478".into(), "turns:h:5349".into()], "u", "p").unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["iceServers"][0]["urls"][0], "stun:h:3478");
        assert!(v["iceServers"][0].get("username").is_none());
        assert_eq!(v["iceServers"][1]["credential"], "p");
        assert!(ice_servers(&["http://x".into()], "u", "p").is_err());
    }
}
