//! The engine's fleet hooks: load-aware redirects (300 Try Alternate) and usage records.
use super::*;
use crate::engine::{Alternate, Redirect};

#[test]
fn a_redirect_answers_new_allocates_with_a_signed_300_naming_the_alternate() {
    let mut t = engine();
    let redirect = Arc::new(Redirect::default());
    t.e = t.e.with_redirect(redirect.clone());
    let (_, nonce1) = t.allocate(client(1));
    let alt: SocketAddr = "192.0.2.50:3478".parse().unwrap();
    redirect.set(
        Transport::Udp,
        Some(Alternate {
            server: alt,
            domain: None,
        }),
    );
    let nonce = t.nonce(client(2));
    let r = t.authed(client(2), &nonce, Req::new(METHOD_ALLOCATE).transport_udp());
    assert_eq!(error_code(&r), Some(300));
    let (attr, found) = r.attributes.get(ATTR_ALTERNATE_SERVER);
    assert!(found, "ALTERNATE-SERVER");
    assert_eq!(
        attr.value,
        [0, 1, 0x0d, 0x96, 192, 0, 2, 50],
        "plain, not XORed"
    );
    assert!(r.contains(ATTR_MESSAGE_INTEGRITY), "signed");
    assert!(!r.contains(ATTR_ALTERNATE_DOMAIN));
    assert_eq!(t.e.shared.quotas.total(), 1, "no quota taken");
    // A typed refusal like the others (engine/refusal.rs), counted by its reason.
    let refusals = t.e.metrics_snapshot().counters.refusals;
    assert_eq!(refusals.get("try_alternate"), Some(&1));
    // Existing allocations carry on.
    let r = t.authed(client(1), &nonce1, Req::new(METHOD_REFRESH).lifetime(600));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    // Cleared: admitted here again.
    redirect.set(Transport::Udp, None);
    t.allocate(client(2));
}

#[test]
fn the_usage_sink_gets_each_ended_allocation_once() {
    let mut t = engine();
    let sink = Arc::new(RecordingSink::default());
    t.e = t.e.with_usage(sink.clone());
    let (_, nonce) = t.allocate(client(1));
    t.allocate(client(2));
    assert!(sink.0.lock().unwrap().is_empty(), "nothing before the end");
    t.advance(Duration::from_secs(5));
    let r = t.authed(client(1), &nonce, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    {
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 1);
        let u = &got[0];
        assert_eq!(u.session.user, "alice");
        assert_eq!(u.session.client, client(1).remote);
        assert_eq!(u.realm, REALM);
        let secs =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(u.session.created), 1_700_000_000);
        assert_eq!(secs(u.ended), 1_700_000_005);
        assert_eq!(u.session.bytes_to_peer, 0);
    }
    // The other one expires: its record too, once.
    t.advance(Duration::from_secs(3600));
    t.advance(Duration::from_secs(3600));
    let got = sink.0.lock().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].reason, "expired");
    assert_eq!(got[1].session.client, client(2).remote);
}
