//! Lookups asked elsewhere (`Lookup::Pending`, the webhook): the request is parked, the shard
//! keeps serving everyone else, and the timer runs it again once the answer is in.

use std::sync::atomic::{AtomicU8, Ordering};

use super::*;

/// "dave" is pending while the state is 0, known at 1, unknown at 2.
struct Asking(Arc<AtomicU8>);
impl Authenticator for Asking {
    fn lookup(&self, username: &str, realm: &str, unix_now: u64) -> Lookup {
        if username != "dave" {
            return TestAuth.lookup(username, realm, unix_now);
        }
        match self.0.load(Ordering::Relaxed) {
            0 => Lookup::Pending,
            1 => Lookup::Keys(vec![key("dave", "pw").try_into().unwrap()]),
            _ => Lookup::Unknown,
        }
    }
}

fn asking() -> (T, Arc<AtomicU8>) {
    let mut t = engine();
    let state = Arc::new(AtomicU8::new(0));
    t.e.shared.auth = Arc::new(Asking(state.clone()));
    (t, state)
}

#[test]
fn a_pending_lookup_parks_the_request_and_the_timer_answers_it() {
    let (mut t, state) = asking();
    let c = client(1);
    let nonce = t.nonce(c);
    let req = Req::new(METHOD_ALLOCATE)
        .transport_udp()
        .creds("dave", "pw", &nonce);
    let _ = t.e.timeout_moved();
    assert!(t.try_ask(c, &req).is_none(), "no answer while pending");
    assert_eq!(t.e.poll_timeout(), Some(t.now + Duration::from_millis(5)));
    assert!(
        t.e.timeout_moved(),
        "parking tells the I/O layer to re-read the timeout"
    );
    assert!(!t.e.timeout_moved());
    // A retransmission is not parked twice; everyone else is served meanwhile.
    assert!(t.try_ask(c, &req).is_none());
    let (_, other_nonce) = t.allocate(client(2));
    assert!(!other_nonce.is_empty());
    t.advance(Duration::from_millis(5));
    assert!(t.e.poll_transmit().is_none(), "still pending");
    state.store(1, Ordering::Relaxed);
    t.advance(Duration::from_millis(5));
    t.serve_commands(true);
    let answer =
        t.e.poll_transmit()
            .expect("the parked Allocate is answered");
    assert_eq!(answer.to, c);
    let m = decode(&answer.bytes);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
    assert!(t.e.poll_transmit().is_none(), "answered once");
    assert_eq!(t.e.stats().allocations, 2);
}

#[test]
fn a_parked_request_refused_by_the_answer_gets_401() {
    let (mut t, state) = asking();
    let c = client(1);
    let nonce = t.nonce(c);
    let req = Req::new(METHOD_ALLOCATE)
        .transport_udp()
        .creds("dave", "pw", &nonce);
    assert!(t.try_ask(c, &req).is_none());
    state.store(2, Ordering::Relaxed);
    t.advance(Duration::from_millis(5));
    let m = decode(&t.e.poll_transmit().expect("refused").bytes);
    assert_eq!(error_code(&m), Some(401));
    assert_eq!(t.e.poll_timeout(), None, "nothing parked, no timers");
}

#[test]
fn parked_requests_are_bounded_and_given_up() {
    let (mut t, _state) = asking();
    // Many clients' requests: at most MAX_PARKED are kept.
    for n in 0..400u16 {
        let c = client(n);
        let nonce = t.nonce(c);
        let req = Req::new(METHOD_ALLOCATE)
            .transport_udp()
            .creds("dave", "pw", &nonce);
        assert!(t.try_ask(c, &req).is_none());
    }
    assert_eq!(t.e.deferred.len(), crate::engine::deferred::MAX_PARKED);
    // One client's distinct requests: at most a few.
    let c = client(1000);
    for _ in 0..10 {
        let nonce = t.nonce(c);
        let req = Req::new(METHOD_ALLOCATE)
            .transport_udp()
            .creds("dave", "pw", &nonce);
        t.try_ask(c, &req);
    }
    // Never answered: after GIVE_UP they are gone and the timer goes quiet.
    for _ in 0..11 {
        t.advance(Duration::from_secs(1));
    }
    assert!(t.e.poll_transmit().is_none());
    assert_eq!(t.e.deferred.len(), 0);
    assert_eq!(t.e.poll_timeout(), None);
}

#[test]
fn a_closed_connection_forgets_its_parked_requests() {
    let (mut t, state) = asking();
    let c = ClientAddr {
        transport: Transport::Tcp,
        ..client(1)
    };
    let nonce = t.nonce(c);
    let req = Req::new(METHOD_ALLOCATE)
        .transport_udp()
        .creds("dave", "pw", &nonce);
    assert!(t.try_ask(c, &req).is_none());
    t.e.client_closed(t.now, c);
    state.store(1, Ordering::Relaxed);
    t.advance(Duration::from_millis(5));
    t.serve_commands(true);
    assert!(t.e.poll_transmit().is_none());
    assert_eq!(t.e.stats().allocations, 0);
}
