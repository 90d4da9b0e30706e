//! Bound TURN REST credentials over real sockets: a username ending in `:ip=<prefix>` (HMAC'd
//! by the test itself, or minted by `turnctl creds --bind-ip`) relays from inside the prefix
//! and is refused from outside it. Needs coturn's uclient (scripts/test installs it).

use std::process::Command;

use crate::common::*;

struct Turnd(Option<turnd::Running>);

impl Turnd {
    fn start() -> Turnd {
        Turnd(Some(
            turnd::start(turnd::Config::for_tests()).expect("turnd starts"),
        ))
    }
    fn addr(&self, ip: std::net::IpAddr) -> std::net::SocketAddr {
        listener(self.0.as_ref().unwrap(), ClientTransport::Udp, ip)
    }
}

impl Drop for Turnd {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.stop();
        }
    }
}

#[test]
fn uclient_with_a_credential_bound_to_loopback_relays() {
    let turnd = Turnd::start();
    let (user, password) = rest_credentials(SECRET, "alice:ip=127.0.0.0/8", unix_now() + 3600);
    let peer = EchoPeer::start(V4);
    let u = Uclient::new(turnd.addr(V4))
        .user(&user, &password)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5)
        .length(100);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
}

#[test]
fn uclient_with_a_credential_bound_elsewhere_is_refused() {
    let turnd = Turnd::start();
    for bind in ["192.0.2.0/24", "::1", "127.0.0.2"] {
        let (user, password) =
            rest_credentials(SECRET, &format!("alice:ip={bind}"), unix_now() + 3600);
        uclient_refused(turnd.addr(V4), &user, &password);
    }
}

/// `turnctl creds --bind-ip` mints what turnd accepts from inside the prefix only.
#[test]
fn turnctl_bind_ip_credentials() {
    let turnd = Turnd::start();
    let server = format!("turn:{}", turnd.addr(V4));
    for (bind, shown, ok) in [
        ("127.0.0.1", "127.0.0.1/32", true),
        ("198.51.100.7/24", "198.51.100.0/24", false),
    ] {
        let o = Command::new(turnctl_bin())
            .args(["creds", "--user", "alice", "--bind-ip", bind, "--json"])
            .env("TURNCTL_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let user = v["username"].as_str().unwrap();
        assert!(user.ends_with(&format!(":alice:ip={shown}")), "{user}");
        let probe = Command::new(turnctl_bin())
            .args(["probe", "--server", &server, "--user", user, "--password"])
            .arg(v["password"].as_str().unwrap())
            .env_remove("TURNCTL_SECRET")
            .output()
            .unwrap();
        assert_eq!(
            probe.status.success(),
            ok,
            "{bind}: {}{}",
            String::from_utf8_lossy(&probe.stdout),
            String::from_utf8_lossy(&probe.stderr)
        );
    }
}
