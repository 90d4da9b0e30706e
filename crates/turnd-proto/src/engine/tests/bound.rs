//! Bound TURN REST credentials (`expiry:user:ip=<prefix>`) in the engine.

use super::*;
use crate::auth::{self, Credentials};
use crate::settings;

fn engine_rest() -> T {
    let mut t = engine();
    let a = settings::Auth {
        secrets: vec!["rest-secret".into()],
        ..Default::default()
    };
    t.e.shared.auth = Arc::new(Credentials::from_config(&a, REALM));
    t
}

fn rest(name: &str) -> (String, String) {
    (name.to_string(), auth::rest_password(b"rest-secret", name))
}

fn allocate_as(t: &mut T, c: ClientAddr, user: &str, pass: &str) -> Message {
    let n = t.nonce(c);
    let req = Req::new(METHOD_ALLOCATE).transport_udp();
    // Req::creds derives MD5(user:realm:pass) itself.
    t.ask(c, &req.creds(user, pass, &n))
}

#[test]
fn a_bound_credential_works_inside_its_prefix_only() {
    let mut t = engine_rest();
    // client(n) is 192.0.2.1.
    let (inside, pass_in) = rest("1700003600:alice:ip=192.0.2.0/24");
    let m = allocate_as(&mut t, client(1), &inside, &pass_in);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
    assert_eq!(&*t.e.allocations_by_client[&client(1)].user, "alice");
    let (outside, pass_out) = rest("1700003600:alice:ip=198.51.100.0/24");
    let m = allocate_as(&mut t, client(2), &outside, &pass_out);
    assert_eq!(error_code(&m), Some(401));
    let (one, pass_one) = rest("1700003600:bob:ip=192.0.2.2");
    assert_eq!(
        error_code(&allocate_as(&mut t, client(3), &one, &pass_one)),
        Some(401)
    );
    // The binding cannot be stripped: the password is for the whole name.
    let m = allocate_as(&mut t, client(4), "1700003600:alice", &pass_out);
    assert_eq!(error_code(&m), Some(401));
    // A malformed binding is refused everywhere.
    let (bad, pass_bad) = rest("1700003600:carol:ip=bogus");
    assert_eq!(
        error_code(&allocate_as(&mut t, client(5), &bad, &pass_bad)),
        Some(401)
    );
    assert_eq!(t.e.stats().allocations, 1);
}
