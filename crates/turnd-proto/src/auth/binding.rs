//! Bound TURN REST credentials: a username may end in `<sep>ip=<address or prefix>`
//! (`1795303745:alice:ip=203.0.113.0/24`, `...:ip=2001:db8::/48`, `...:ip=198.51.100.7`).
//! The HMAC covers the whole name, so the binding cannot be removed; such a credential is
//! refused from a client address outside it (coturn#1796). A malformed binding refuses the
//! credential everywhere.

#![deny(clippy::indexing_slicing)]

use std::net::IpAddr;

use ipnet::IpNet;

/// The marker after the separator.
const MARKER: &str = "ip=";

/// `username` without its binding, and the binding's text (if there is one).
pub fn split_binding(username: &str, sep: char) -> (&str, Option<&str>) {
    let mut marker = String::with_capacity(4);
    marker.push(sep);
    marker.push_str(MARKER);
    match username.rfind(&marker) {
        Some(at) => (
            username.get(..at).unwrap_or(username),
            username.get(at + marker.len()..),
        ),
        None => (username, None),
    }
}

/// The binding `text` as a network: a prefix, or one address (/32, /128).
pub fn parse_binding(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Whether a client at `client` may use `username` (always, without a binding).
pub fn binding_permits(username: &str, sep: char, client: IpAddr) -> bool {
    match split_binding(username, sep).1 {
        None => true,
        Some(text) => parse_binding(text).is_some_and(|net| net.contains(&client.to_canonical())),
    }
}

/// A bound username: `name` (as minted, `expiry<sep>user`) plus the binding to `net`.
pub fn bind_username(name: &str, sep: char, net: &IpNet) -> String {
    format!("{name}{sep}{MARKER}{net}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bindings_split_parse_and_permit() {
        assert_eq!(
            split_binding("1700:alice:ip=203.0.113.0/24", ':'),
            ("1700:alice", Some("203.0.113.0/24"))
        );
        assert_eq!(
            split_binding("1700:alice:ip=2001:db8::/48", ':'),
            ("1700:alice", Some("2001:db8::/48"))
        );
        assert_eq!(split_binding("1700:alice", ':'), ("1700:alice", None));
        let n = "1700:alice:ip=203.0.113.0/24";
        assert!(binding_permits(n, ':', ip("203.0.113.77")));
        assert!(binding_permits(n, ':', ip("::ffff:203.0.113.77")));
        assert!(!binding_permits(n, ':', ip("203.0.114.1")));
        assert!(!binding_permits(n, ':', ip("2001:db8::1")));
        let v6 = "1700:bob:ip=2001:db8::/48";
        assert!(binding_permits(v6, ':', ip("2001:db8:0:1::5")));
        assert!(!binding_permits(v6, ':', ip("2001:db9::1")));
        let one = "1700-carol-ip=198.51.100.7";
        assert!(binding_permits(one, '-', ip("198.51.100.7")));
        assert!(!binding_permits(one, '-', ip("198.51.100.8")));
        // Malformed: refused everywhere.
        assert!(!binding_permits("1700:x:ip=nonsense", ':', ip("127.0.0.1")));
        assert!(!binding_permits("1700:x:ip=", ':', ip("127.0.0.1")));
        assert!(binding_permits("1700:plain", ':', ip("127.0.0.1")));
        let net: IpNet = "203.0.113.0/24".parse().unwrap();
        assert_eq!(bind_username("1700:alice", ':', &net), n);
    }
}
