//! Parsers for the config's string-shaped values (durations, port ranges, NAT mappings, peer
//! networks, users, ...), shared by the TOML layer (`raw`) and the command line (`crate::cli`).
//!
//! Every parser returns a message that says what is wrong **without** repeating the input: the
//! caller adds the value when it is not secret (see `raw::parsed_value!`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use super::{Credential, ExternalMapping, LogFormat, PortRange, StaticUser};

/// A relay address that may be switched off with `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeNone<T>(pub Option<T>);

/// `"none"` or an address of the family `T` (`family` names it in the message).
fn maybe_none<T: FromStr>(s: &str, family: &str) -> Result<MaybeNone<T>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(MaybeNone(None));
    }
    s.parse()
        .map(|a| MaybeNone(Some(a)))
        .map_err(|_| format!("expected an {family} address (without port) or \"none\""))
}

/// An IPv4 relay address or `"none"`.
pub fn relay_ipv4(s: &str) -> Result<MaybeNone<Ipv4Addr>, String> {
    maybe_none(s, "IPv4")
}

/// An IPv6 relay address or `"none"`.
pub fn relay_ipv6(s: &str) -> Result<MaybeNone<Ipv6Addr>, String> {
    maybe_none(s, "IPv6")
}

/// A listen address, or `"none"` to turn the listener off.
pub fn optional_listener(s: &str) -> Result<MaybeNone<std::net::SocketAddr>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(MaybeNone(None));
    }
    socket_addr(s)
        .map(|a| MaybeNone(Some(a)))
        .map_err(|m| format!("{m} or \"none\""))
}

/// A listen address such as `0.0.0.0:3478` or `[::]:3478`.
pub fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| {
        "expected an address with a port, e.g. \"0.0.0.0:3478\" or \"[::]:3478\"".to_string()
    })
}

/// A duration such as `"90s"`, `"10m"`, `"1h"`, `"500ms"` or `"1h30m"`, parsed by
/// `humantime` (which also takes its long unit names, e.g. `"5min"`, `"2 hours"`); a unit is
/// required.
pub fn duration(s: &str) -> Result<Duration, String> {
    use humantime::DurationError as E;
    const HELP: &str =
        "expected a duration such as \"500ms\", \"90s\", \"10m\", \"1h\" or \"1h30m\"";
    humantime::parse_duration(s.trim()).map_err(|e| match e {
        E::UnknownUnit { unit, .. } if unit.is_empty() => {
            format!("a unit is required (ms, s, m, h or d); {HELP}")
        }
        E::UnknownUnit { .. } => format!("unknown unit (use ms, s, m, h or d); {HELP}"),
        E::NumberOverflow => "the duration is too large".to_string(),
        E::InvalidCharacter(_) | E::NumberExpected(_) | E::Empty => HELP.to_string(),
    })
}

/// A port range `"MIN-MAX"` (both inclusive) or a single port.
pub fn port_range(s: &str) -> Result<PortRange, String> {
    const HELP: &str = "expected a port range \"MIN-MAX\", e.g. \"49152-65535\"";
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(0) => Err("port 0 cannot be a relay port".to_string()),
            Ok(p) => Ok(p),
            Err(_) => Err(HELP.to_string()),
        }
    };
    let (min, max) = (port(a)?, port(b)?);
    if min > max {
        return Err("the range's start is above its end".into());
    }
    Ok(PortRange { min, max })
}

/// A 1:1 NAT mapping `"PUBLIC=PRIVATE"`.
pub fn external(s: &str) -> Result<ExternalMapping, String> {
    const HELP: &str = "expected \"PUBLIC=PRIVATE\" addresses, e.g. \"198.51.100.7=10.0.0.7\"";
    let (public, private) = s.split_once('=').ok_or_else(|| HELP.to_string())?;
    let public: IpAddr = public.trim().parse().map_err(|_| HELP.to_string())?;
    let private: IpAddr = private.trim().parse().map_err(|_| HELP.to_string())?;
    if public.is_ipv4() != private.is_ipv4() {
        return Err("the public and private addresses are of different families".into());
    }
    if public.is_unspecified() {
        return Err("the public address cannot be unspecified (0.0.0.0 or ::)".into());
    }
    Ok(ExternalMapping { public, private })
}

/// A peer network `"10.0.0.0/8"`; a bare address means just that address.
pub fn peer_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "expected a network such as \"10.0.0.0/8\" or an address".to_string())
}

/// A static user `"name:password"` (split at the first `:`). The message never contains the
/// input: it holds a password.
pub fn user(s: &str) -> Result<StaticUser, String> {
    let Some((name, password)) = s.split_once(':') else {
        return Err("expected \"name:password\" (no ':' found)".into());
    };
    let name = user_name(name)?;
    if password.is_empty() {
        return Err("expected \"name:password\" with a non-empty password".into());
    }
    Ok(StaticUser {
        name,
        credential: Credential::Password(password.to_string()),
    })
}

/// A static user's name: non-empty, no control characters (it ends up in logs and hashes).
pub fn user_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the user name is empty".into());
    }
    if name.chars().any(char::is_control) {
        return Err("the user name contains control characters".into());
    }
    Ok(name.to_string())
}

/// A precomputed long-term key: 32 hex digits of MD5(name:realm:password). The message never
/// contains the input.
pub fn md5_key(s: &str) -> Result<[u8; 16], String> {
    let mut key = [0u8; 16];
    match hex::decode_to_slice(s.trim(), &mut key) {
        Ok(()) => Ok(key),
        Err(_) => Err(
            "expected 32 hex digits: MD5(name:realm:password), as `turnadmin -k` prints it".into(),
        ),
    }
}

/// `"human"` or `"json"`.
pub fn xdp_mode(s: &str) -> Result<super::XdpMode, String> {
    match s.to_ascii_lowercase().as_str() {
        "native" => Ok(super::XdpMode::Native),
        "generic" => Ok(super::XdpMode::Generic),
        _ => Err("expected \"native\" or \"generic\"".into()),
    }
}

pub fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.to_ascii_lowercase().as_str() {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected \"human\" or \"json\"".into()),
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A level (`"info"`) or a tracing filter (`"info,turnd_proto::engine=debug"`).
///
/// Each comma-separated directive must name a level, alone or after `target=`: a bare word
/// such as `"verbose"` would otherwise be taken as a target name and silently log nothing.
pub fn log_level(s: &str) -> Result<String, String> {
    const HELP: &str =
        "expected a level (off, error, warn, info, debug, trace) or a filter such as \"info,turnd_proto::engine=debug\"";
    let names_level = |d: &str| {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim()))
    };
    if s.trim().is_empty() || !s.split(',').all(names_level) {
        return Err(HELP.into());
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("{e}; {HELP}"))?;
    Ok(s.to_string())
}

/// The separator in TURN REST usernames (`expiry<sep>user`): one character, not a digit.
pub fn rest_separator(s: &str) -> Result<char, String> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if !c.is_ascii_digit() && !c.is_control() && !c.is_whitespace() => Ok(c),
        (Some(_), None) => Err("must not be a digit, a space or a control character".into()),
        _ => Err("expected exactly one character, e.g. \":\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("2d"), Ok(Duration::from_secs(172_800)));
        // humantime's grammar: long unit names and fractions too.
        assert_eq!(duration("5 minutes"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "5 fortnights",
            "-1s",
            "99999999999999999999s",
        ] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            port_range("49152-65535"),
            Ok(PortRange {
                min: 49152,
                max: 65535
            })
        );
        assert_eq!(
            port_range("5000"),
            Ok(PortRange {
                min: 5000,
                max: 5000
            })
        );
        assert!(port_range("6000-5000")
            .unwrap_err()
            .contains("start is above its end"));
        for bad in ["0-10", "1-70000", "a-b", "", "-"] {
            assert!(port_range(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn externals_users_keys_levels() {
        let m = external("198.51.100.7=10.0.0.7").unwrap();
        assert_eq!(m.public, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert!(external("198.51.100.7=::1").is_err());
        assert!(external("0.0.0.0=10.0.0.7").is_err());
        assert_eq!(peer_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(peer_net("::1").unwrap().to_string(), "::1/128");
        let u = user("alice:pa:ss").unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.credential, Credential::Password("pa:ss".into()));
        for bad in [":pw", "alice", "alice:", "a\u{7}b:pw"] {
            let e = user(bad).unwrap_err();
            assert!(!e.contains("pw"), "{e}");
        }
        assert!(md5_key("0123456789abcdef0123456789ABCDEF").is_ok());
        assert!(md5_key("0123").is_err());
        assert!(log_level("info").is_ok());
        assert!(log_level("warn,turnd_proto::engine=debug").is_ok());
        assert!(log_level("verbose").is_err());
        assert_eq!(rest_separator(":"), Ok(':'));
        assert!(rest_separator("1").is_err());
        assert!(rest_separator("::").is_err());
        assert_eq!(relay_ipv4("none"), Ok(MaybeNone(None)));
        assert!(relay_ipv4("::1").is_err());
        assert_eq!(relay_ipv6("::1"), Ok(MaybeNone(Some(Ipv6Addr::LOCALHOST))));
    }
}
