//! `[auth] webhook` with clients we did not write: `turnutils_uclient` (UDP) and `aioice`
//! (UDP and TCP) authenticate as a user only the webhook knows, on their first attempt, and
//! relay. The webhook is a real axum server on loopback (`tests/it/common/webhook_server.rs`).

use std::time::Duration;

use crate::common::*;

#[path = "../it/common/webhook_server.rs"]
mod webhook_server;
use webhook_server::*;

const HOOK_USER: &str = "hooked";
const HOOK_PASS: &str = "hooked-pw";

struct Turnd(Option<turnd::Running>);
impl Turnd {
    fn r(&self) -> &turnd::Running {
        self.0.as_ref().unwrap()
    }
}
impl Drop for Turnd {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.stop();
        }
    }
}

fn start(hook: &Hook) -> Turnd {
    hook.state.set(HOOK_USER, Reply::Password(HOOK_PASS.into()));
    let mut c = config_with_hook(hook);
    // Only the webhook knows anyone but the development user; no REST secret.
    c.auth.secrets.clear();
    Turnd(Some(turnd::start(c).expect("turnd starts")))
}

fn assert_one_allow(turnd: &Turnd, hook: &Hook) {
    let s = turnd.r().control.webhook().unwrap().stats();
    assert_eq!(
        hook.state.calls_for(HOOK_USER),
        1,
        "asked once, then cached"
    );
    assert_eq!(
        (s.allowed, s.failed, s.shed, s.denied),
        (1, 0, 0, 0),
        "{s:?}"
    );
}

#[test]
fn uclient_authenticates_through_the_webhook() {
    let hook = Hook::start();
    let turnd = start(&hook);
    let server = listener(turnd.r(), ClientTransport::Udp, V4);
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(HOOK_USER, HOOK_PASS)
        .peer(peer.addr())
        .no_rtcp()
        .messages(10)
        .length(200)
        .timeout(Duration::from_secs(30));
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_one_allow(&turnd, &hook);
    assert_eq!(hook.state.bodies.lock().unwrap()[0]["transport"], "udp");
}

#[test]
fn uclient_is_refused_when_the_webhook_denies() {
    let hook = Hook::start();
    let turnd = start(&hook);
    hook.state.set(HOOK_USER, Reply::Deny);
    let server = listener(turnd.r(), ClientTransport::Udp, V4);
    let peer = EchoPeer::start(server.ip());
    let r = Uclient::new(server)
        .user(HOOK_USER, HOOK_PASS)
        .peer(peer.addr())
        .no_rtcp()
        .messages(3)
        .timeout(Duration::from_secs(30))
        .run();
    r.assert_refused();
    assert_eq!(peer.stats().datagrams, 0);
}

#[test]
fn aioice_udp_and_tcp_authenticate_through_the_webhook() {
    for (transport, opts) in [("udp", AioiceOpts::default()), ("tcp", AioiceOpts::tcp())] {
        let hook = Hook::start();
        // TCP never retransmits: the parked Allocate itself is answered, 100 ms late.
        hook.state.set(
            HOOK_USER,
            Reply::Slow(
                Duration::from_millis(100),
                Box::new(Reply::Password(HOOK_PASS.into())),
            ),
        );
        let mut c = config_with_hook(&hook);
        c.auth.secrets.clear();
        let turnd = Turnd(Some(turnd::start(c).expect("turnd starts")));
        let server = match transport {
            "udp" => listener(turnd.r(), ClientTransport::Udp, V4),
            _ => listener(turnd.r(), ClientTransport::Tcp, V4),
        };
        let peer = EchoPeer::start(server.ip());
        let r = run_aioice_with(server, HOOK_USER, HOOK_PASS, peer.addr(), &opts)
            .unwrap_or_else(|e| panic!("aioice over {transport}: {e:#}"));
        assert_eq!(r.transport, transport, "{}", r.raw);
        assert_eq!((r.sent, r.received), (9, 9), "{transport}\n{}", r.raw);
        assert_one_allow(&turnd, &hook);
        assert_eq!(hook.state.bodies.lock().unwrap()[0]["transport"], transport);
    }
}
