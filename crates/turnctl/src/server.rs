//! Server URLs (RFC 7065 `turn:` / `turns:` URIs, plus `stun:`) and their resolution.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use turnd_proto::engine::Transport;

/// A parsed `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:HOST[:PORT]` or `stun:HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `stun`, `turn` or `turns`.
    pub scheme: &'static str,
    /// Host name or address, without brackets.
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

impl FromStr for ServerUrl {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = match s.split_once(':') {
            Some((sch @ ("turn" | "turns" | "stun" | "stuns"), rest)) => (sch, rest),
            _ => ("turn", s),
        };
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let secure = scheme.ends_with('s');
        let mut transport = if secure {
            Transport::Tls
        } else {
            Transport::Udp
        };
        if let Some(q) = query {
            match q {
                "transport=udp" if !secure => transport = Transport::Udp,
                "transport=udp" => transport = Transport::Dtls,
                "transport=tcp" if secure => transport = Transport::Tls,
                "transport=tcp" => transport = Transport::Tcp,
                _ => {
                    bail!("{s}: unsupported query {q:?} (expected transport=udp or transport=tcp)")
                }
            }
        }
        let (host, port) = split_host_port(hostport)
            .with_context(|| format!("{s}: expected turn:HOST[:PORT][?transport=udp|tcp]"))?;
        let port = port.unwrap_or(if secure { 5349 } else { 3478 });
        let scheme = match scheme {
            "turn" => "turn",
            "turns" => "turns",
            "stun" => "stun",
            _ => "stuns",
        };
        Ok(ServerUrl {
            scheme,
            host,
            port,
            transport,
        })
    }
}

fn split_host_port(s: &str) -> anyhow::Result<(String, Option<u16>)> {
    if s.is_empty() {
        bail!("no host");
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| anyhow!("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().context("bad port")?),
            None if after.is_empty() => None,
            None => bail!("unexpected {after:?} after ']'"),
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Ok((s.to_string(), None)), // bare IPv6
        Some((h, p)) => Ok((h.to_string(), Some(p.parse().context("bad port")?))),
        None => Ok((s.to_string(), None)),
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}:{}:{}", self.scheme, host, self.port)?;
        match (self.scheme, self.transport) {
            ("turn" | "stun", Transport::Tcp) => write!(f, "?transport=tcp"),
            ("turn" | "stun", Transport::Udp) => write!(f, "?transport=udp"),
            ("turns" | "stuns", Transport::Dtls) => write!(f, "?transport=udp"),
            _ => Ok(()),
        }
    }
}

/// clap value parser for `--transport`: `udp`, `tcp` or `tls`.
pub fn parse_transport(s: &str) -> Result<Transport, String> {
    [Transport::Udp, Transport::Tcp, Transport::Tls]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("{s:?}: expected udp, tcp or tls"))
}

impl ServerUrl {
    /// The first address the host resolves to.
    pub fn resolve(&self) -> anyhow::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.host))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ServerUrl {
        s.parse().unwrap()
    }

    #[test]
    fn parses_turn_uris() {
        let u = url("turn:127.0.0.1:3478?transport=tcp");
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("127.0.0.1", 3478, Transport::Tcp)
        );
        let u = url("turns:[::1]:5349");
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("::1", 5349, Transport::Tls)
        );
        let u = url("turn:example.org");
        assert_eq!((u.port, u.transport), (3478, Transport::Udp));
        let u = url("127.0.0.1:9");
        assert_eq!((u.scheme, u.port), ("turn", 9));
        assert_eq!(
            url("turn:[::1]:3478").to_string(),
            "turn:[::1]:3478?transport=udp"
        );
        let u = url("turns:127.0.0.1:5349?transport=udp");
        assert_eq!((u.port, u.transport), (5349, Transport::Dtls));
        assert_eq!(u.to_string(), "turns:127.0.0.1:5349?transport=udp");
        assert!("turn:host?transport=sctp".parse::<ServerUrl>().is_err());
        assert!("turn:host:notaport".parse::<ServerUrl>().is_err());
    }
}
