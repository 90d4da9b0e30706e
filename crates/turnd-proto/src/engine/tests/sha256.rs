//! RFC 8489 §9.2 in the engine: the RFC's own vectors (Appendix B.1, RFC 5769 §2.4), the nonce
//! cookie and PASSWORD-ALGORITHMS, the bid-down check, MESSAGE-INTEGRITY-SHA256 (truncated
//! too), USERHASH, mixed MD5/SHA-256 clients and the amplification fallback.

use super::*;
use crate::auth::{self, Credentials, PasswordAlgorithm as Alg};
use crate::engine::integrity::{AuthFeatures, Signer};
use crate::engine::wire::Parsed;
use crate::settings;

const VECTOR_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
const VECTOR_REALM: &str = "example.org";
const VECTOR_TID: [u8; 12] = [
    0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
];

/// RFC 8489 Appendix B.1 as corrected by erratum 6268 (the printed vector's length field,
/// 0x9c, and MESSAGE-INTEGRITY-SHA256 do not match its own attributes; the erratum adds the
/// PASSWORD-ALGORITHM the text describes). Checked independently with Python's hashlib/hmac.
const RFC8489_B1: &str = concat!(
    "00010090",
    "2112a442",
    "78ad3433c6ad72c029da412e",
    "001e0020",
    "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704",
    "00150029",
    "6f624d61744a6f7332414141436",
    "62f2f3439396b39353464364f4c33346f4c394653547679363473",
    "41000000",
    "0014000b",
    "6578616d706c652e6f726700",
    "001d0004",
    "00020000",
    "001c0020",
    "b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65",
);

/// RFC 5769 §2.4: sample request with long-term authentication (MD5 key, HMAC-SHA1).
const RFC5769_LONG_TERM: &str = concat!(
    "000100602112a44278ad3433c6ad72c029da412e",
    "00060012e3839ee38388e383aae38383e382afe382b90000",
    "0015001c662f2f3439396b39353464364f4c33346f4c39465354767936347341",
    "0014000b6578616d706c652e6f726700",
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666",
);

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn vector_message() -> Message {
    let mut m = Message::new();
    m.typ = MessageType::new(METHOD_BINDING, CLASS_REQUEST);
    m.transaction_id = stun::agent::TransactionId(VECTOR_TID);
    m.write_header();
    m
}

#[test]
fn rfc8489_b1_is_rebuilt_byte_for_byte_and_verifies() {
    let key = auth::sha256_key(VECTOR_USER, VECTOR_REALM, "TheMatrIX").unwrap();
    let mut m = vector_message();
    m.add(ATTR_USER_HASH, &auth::userhash(VECTOR_USER, VECTOR_REALM));
    m.add(ATTR_NONCE, b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA");
    m.add(ATTR_REALM, VECTOR_REALM.as_bytes());
    m.add(ATTR_PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
    Signer::new(&key, Some(32)).add_to(&mut m);
    assert_eq!(hex::encode(&m.raw), RFC8489_B1);

    let raw = unhex(RFC8489_B1);
    let p = Parsed::parse(&raw).unwrap();
    assert!(p.integrity_sha256_matches(&key));
    assert!(p.integrity_at.is_none());
    let wrong = auth::sha256_key(VECTOR_USER, VECTOR_REALM, "TheMatrix").unwrap();
    assert!(!p.integrity_sha256_matches(&wrong));
    // One flipped bit anywhere in the covered part fails.
    let mut bad = raw.clone();
    bad[30] ^= 1;
    assert!(!Parsed::parse(&bad).unwrap().integrity_sha256_matches(&key));
}

#[test]
fn rfc5769_long_term_request_is_rebuilt_and_verifies_with_the_md5_key() {
    let key = auth::long_term_key(VECTOR_USER, VECTOR_REALM, "TheMatrIX");
    let mut m = vector_message();
    m.add(ATTR_USERNAME, VECTOR_USER.as_bytes());
    m.add(ATTR_NONCE, b"f//499k954d6OL34oL9FSTvy64sA");
    m.add(ATTR_REALM, VECTOR_REALM.as_bytes());
    Signer::new(key.as_bytes(), None).add_to(&mut m);
    assert_eq!(hex::encode(&m.raw), RFC5769_LONG_TERM);
    let raw = unhex(RFC5769_LONG_TERM);
    let p = Parsed::parse(&raw).unwrap();
    assert!(p.integrity_matches(key.as_bytes()));
    assert!(p.verify(key.as_bytes()).is_some_and(|s| !s.is_sha256()));
}

#[test]
fn truncated_mi_sha256_verifies_and_bad_lengths_are_malformed() {
    let key = [7u8; 32];
    for len in [16, 20, 24, 28, 32] {
        let mut m = vector_message();
        m.add(ATTR_REALM, b"r");
        Signer::new(&key, Some(len)).add_to(&mut m);
        let p = Parsed::parse(&m.raw).unwrap();
        assert!(p.integrity_sha256_matches(&key), "{len}");
        assert!(!p.integrity_sha256_matches(&[8u8; 32]), "{len}");
    }
    for len in [0usize, 4, 12, 18, 36] {
        let mut m = vector_message();
        m.add(ATTR_MESSAGE_INTEGRITY_SHA256, &vec![0u8; len]);
        assert!(Parsed::parse(&m.raw).is_err(), "length {len} accepted");
    }
}

/// An engine with real `Credentials` (alice:secret, static key-only "keyed", a REST secret)
/// and the given features.
fn engine_features(algorithms: &[Alg], userhash: bool) -> T {
    let mut t = engine();
    let users = vec![
        settings::StaticUser {
            name: "alice".into(),
            credential: settings::Credential::Password("secret".into()),
        },
        settings::StaticUser {
            name: "keyed".into(),
            credential: settings::Credential::Key(
                *auth::long_term_key("keyed", REALM, "pw").as_bytes(),
            ),
        },
    ];
    let a = settings::Auth {
        users,
        secrets: vec!["rest-secret".into()],
        ..Default::default()
    };
    t.e.shared.auth = Arc::new(Credentials::from_config(&a, REALM));
    t.e.cfg.auth_features = AuthFeatures {
        algorithms: algorithms.to_vec(),
        userhash,
    };
    t
}

fn on() -> T {
    engine_features(&[Alg::Sha256, Alg::Md5], true)
}

/// The 401 to a first Allocate (with FINGERPRINT: 36 bytes, enough room for the features).
fn challenge(t: &mut T, c: ClientAddr) -> Message {
    let r = t.ask(c, &Req::new(METHOD_ALLOCATE).transport_udp().fingerprint());
    assert_eq!(error_code(&r), Some(401));
    r
}

fn nonce_of(m: &Message) -> String {
    TextAttribute::get_from_as(m, ATTR_NONCE).unwrap().text
}

/// A SHA-256 request: USERNAME (or USERHASH), REALM, NONCE, the offered PASSWORD-ALGORITHMS,
/// PASSWORD-ALGORITHM and MESSAGE-INTEGRITY-SHA256 of `mi_len` bytes.
struct Sha {
    user: &'static str,
    password: &'static str,
    hash_user: bool,
    algorithms: Option<Vec<u8>>,
    algorithm: Option<[u8; 4]>,
    mi_len: usize,
}

impl Sha {
    fn new(algorithms: &[u8]) -> Self {
        Sha {
            user: "alice",
            password: "secret",
            hash_user: false,
            algorithms: Some(algorithms.to_vec()),
            algorithm: Some([0, 2, 0, 0]),
            mi_len: 32,
        }
    }
    fn build(&self, req: Req, nonce: &str) -> Req {
        let mut req = if self.hash_user {
            req.raw(ATTR_USER_HASH, &auth::userhash(self.user, REALM))
        } else {
            req.raw(ATTR_USERNAME, self.user.as_bytes())
        };
        req = req
            .raw(ATTR_REALM, REALM.as_bytes())
            .raw(ATTR_NONCE, nonce.as_bytes());
        if let Some(list) = &self.algorithms {
            req = req.raw(ATTR_PASSWORD_ALGORITHMS, list);
        }
        if let Some(a) = self.algorithm {
            req = req.raw(ATTR_PASSWORD_ALGORITHM, &a);
        }
        let key = match self.algorithm {
            Some([0, 1, _, _]) | None => auth::long_term_key(self.user, REALM, self.password)
                .as_bytes()
                .to_vec(),
            _ => auth::sha256_key(self.user, REALM, self.password)
                .unwrap()
                .to_vec(),
        };
        Signer::new(&key, Some(self.mi_len)).add_to(&mut req.m);
        req
    }
}

fn offered(m: &Message) -> Vec<u8> {
    m.get(ATTR_PASSWORD_ALGORITHMS).unwrap()
}

#[test]
fn the_challenge_carries_the_cookie_and_the_offered_algorithms_in_order() {
    let mut t = on();
    let r = challenge(&mut t, client(1));
    let n = nonce_of(&r);
    // Bit 0 (password algorithms) and bit 1 (username anonymity): 0xC00000 = "wAAA".
    assert!(n.starts_with("obMatJos2wAAA"), "{n}");
    assert_eq!(offered(&r), [0, 2, 0, 0, 0, 1, 0, 0]);
    let mut t = engine_features(&[Alg::Md5, Alg::Sha256], false);
    let r = challenge(&mut t, client(1));
    assert!(nonce_of(&r).starts_with("obMatJos2gAAA"));
    assert_eq!(offered(&r), [0, 1, 0, 0, 0, 2, 0, 0]);
}

#[test]
fn defaults_send_no_cookie_and_no_password_algorithms() {
    let mut t = engine_features(&[Alg::Md5], false);
    let r = challenge(&mut t, client(1));
    assert!(!nonce_of(&r).starts_with("obMatJos2"));
    assert!(!r.contains(ATTR_PASSWORD_ALGORITHMS));
    // Same size as before the feature existed: header, bare ERROR-CODE, REALM, 27-byte NONCE.
    assert_eq!(r.raw.len(), 20 + 8 + 4 + 8 + 4 + 28 + 8);
}

#[test]
fn a_sha256_client_allocates_and_answers_carry_mi_sha256() {
    let mut t = on();
    let c = client(1);
    let r = challenge(&mut t, c);
    let sha = Sha::new(&offered(&r));
    let req = sha.build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce_of(&r));
    assert!(t.send(c, &req.bytes()).is_none());
    t.serve_commands(true);
    let out = t.e.poll_transmit().unwrap();
    let p = Parsed::parse(&out.bytes).unwrap();
    assert_eq!(p.class, CLASS_SUCCESS_RESPONSE);
    let key = auth::sha256_key("alice", REALM, "secret").unwrap();
    assert!(
        p.integrity_sha256_matches(&key),
        "answer not signed with the SHA-256 key"
    );
    assert!(
        p.integrity_at.is_none(),
        "no MESSAGE-INTEGRITY next to -SHA256"
    );
    // Later requests with the same credentials work too (Refresh).
    let req = sha.build(Req::new(METHOD_REFRESH).lifetime(600), &nonce_of(&r));
    let m = t.ask(c, &req);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
}

#[test]
fn a_truncated_mi_sha256_is_accepted_and_echoed_at_its_length() {
    let mut t = on();
    let c = client(1);
    let r = challenge(&mut t, c);
    let mut sha = Sha::new(&offered(&r));
    sha.mi_len = 16;
    let req = sha.build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce_of(&r));
    assert!(t.send(c, &req.bytes()).is_none());
    t.serve_commands(true);
    let out = t.e.poll_transmit().unwrap();
    let p = Parsed::parse(&out.bytes).unwrap();
    assert_eq!(p.class, CLASS_SUCCESS_RESPONSE);
    let at = p.integrity_sha256_at.unwrap();
    assert_eq!(&out.bytes[at + 2..at + 4], &[0, 16]);
    assert!(p.integrity_sha256_matches(&auth::sha256_key("alice", REALM, "secret").unwrap()));
}

#[test]
fn md5_clients_are_unaffected_and_mix_with_sha256_clients() {
    let mut t = on();
    // The MD5 client ignores PASSWORD-ALGORITHMS, as RFC 5389 clients do.
    let (c1, c2) = (client(1), client(2));
    let r = challenge(&mut t, c1);
    let m = t.ask(
        c1,
        &Req::new(METHOD_ALLOCATE)
            .transport_udp()
            .creds("alice", "secret", &nonce_of(&r)),
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
    MessageIntegrity(key("alice", "secret"))
        .check(&mut m.clone())
        .unwrap();
    assert!(!m.contains(ATTR_MESSAGE_INTEGRITY_SHA256));
    let r = challenge(&mut t, c2);
    let req =
        Sha::new(&offered(&r)).build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce_of(&r));
    let m = t.ask(c2, &req);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
    assert_eq!(t.e.stats().allocations, 2);
    // An MD5 key with MESSAGE-INTEGRITY-SHA256 (PASSWORD-ALGORITHM MD5) is fine as well.
    let c3 = client(3);
    let r = challenge(&mut t, c3);
    let mut sha = Sha::new(&offered(&r));
    sha.algorithm = Some([0, 1, 0, 0]);
    let m = t.ask(
        c3,
        &sha.build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce_of(&r)),
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
}

#[test]
fn bid_down_attempts_are_refused() {
    let mut t = on();
    let c = client(1);
    let r = challenge(&mut t, c);
    let n = nonce_of(&r);
    let alloc = || Req::new(METHOD_ALLOCATE).transport_udp();
    // An attacker rewrote PASSWORD-ALGORITHMS in the 401 to MD5 only: 400.
    let mut sha = Sha::new(&[0, 1, 0, 0]);
    sha.algorithm = Some([0, 1, 0, 0]);
    assert_eq!(error_code(&t.ask(c, &sha.build(alloc(), &n))), Some(400));
    // The offered list reordered: 400 (it must be repeated exactly).
    let sha = Sha::new(&[0, 1, 0, 0, 0, 2, 0, 0]);
    assert_eq!(error_code(&t.ask(c, &sha.build(alloc(), &n))), Some(400));
    // PASSWORD-ALGORITHM without the list, and the list without the algorithm: 400.
    let mut sha = Sha::new(&offered(&r));
    sha.algorithms = None;
    assert_eq!(error_code(&t.ask(c, &sha.build(alloc(), &n))), Some(400));
    let mut sha = Sha::new(&offered(&r));
    sha.algorithm = None;
    assert_eq!(error_code(&t.ask(c, &sha.build(alloc(), &n))), Some(400));
    // An algorithm that was not offered: 400.
    let mut sha = Sha::new(&offered(&r));
    sha.algorithm = Some([0, 9, 0, 0]);
    assert_eq!(error_code(&t.ask(c, &sha.build(alloc(), &n))), Some(400));
    // The cookie stripped from the nonce (so the server would think it never offered the
    // features): the inner nonce is of another MAC domain, 438.
    let stripped = n.strip_prefix("obMatJos2wAAA").unwrap();
    let m = t.ask(c, &alloc().creds("alice", "secret", stripped));
    assert_eq!(error_code(&m), Some(438));
    // None of them made an allocation; the honest request still works.
    assert_eq!(t.e.stats().allocations, 0);
    let m = t.ask(c, &Sha::new(&offered(&r)).build(alloc(), &n));
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
}

#[test]
fn md5_not_offered_refuses_a_request_naming_no_algorithm() {
    let mut t = engine_features(&[Alg::Sha256], false);
    let c = client(1);
    let r = challenge(&mut t, c);
    assert_eq!(offered(&r), [0, 2, 0, 0]);
    let m = t.ask(
        c,
        &Req::new(METHOD_ALLOCATE)
            .transport_udp()
            .creds("alice", "secret", &nonce_of(&r)),
    );
    assert_eq!(error_code(&m), Some(400));
    let m = t.ask(
        c,
        &Sha::new(&offered(&r)).build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce_of(&r)),
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
}

#[test]
fn userhash_finds_static_users_and_an_unknown_hash_is_no_oracle() {
    let mut t = on();
    let c = client(1);
    let r = challenge(&mut t, c);
    let n = nonce_of(&r);
    let alloc = || Req::new(METHOD_ALLOCATE).transport_udp();
    // Unknown hash and wrong password for a known hash: the same answer, same size.
    let mut unknown = Sha::new(&offered(&r));
    unknown.hash_user = true;
    unknown.user = "mallory";
    let a = t.ask(c, &unknown.build(alloc(), &n));
    let mut wrong = Sha::new(&offered(&r));
    wrong.hash_user = true;
    wrong.password = "guess";
    let b = t.ask(c, &wrong.build(alloc(), &n));
    assert_eq!((error_code(&a), error_code(&b)), (Some(401), Some(401)));
    assert_eq!(a.raw.len(), b.raw.len());
    let types = |m: &Message| m.attributes.0.iter().map(|a| a.typ).collect::<Vec<_>>();
    assert_eq!(types(&a), types(&b));
    // The right password behind USERHASH allocates, as alice.
    let mut good = Sha::new(&offered(&r));
    good.hash_user = true;
    let m = t.ask(c, &good.build(alloc(), &n));
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
    assert_eq!(&*t.e.allocations_by_client[&c].user, "alice");
}

#[test]
fn userhash_is_ignored_when_off() {
    let mut t = engine_features(&[Alg::Sha256, Alg::Md5], false);
    let c = client(1);
    let r = challenge(&mut t, c);
    let mut sha = Sha::new(&offered(&r));
    sha.hash_user = true;
    let m = t.ask(
        c,
        &sha.build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce_of(&r)),
    );
    assert_eq!(error_code(&m), Some(400), "no USERNAME and USERHASH off");
}

#[test]
fn rest_users_and_key_only_users_under_sha256() {
    let mut t = on();
    // A REST credential: the SHA-256 key is derived from base64(HMAC-SHA1(secret, name)).
    let name = "1700003600:carol";
    let password: &'static str =
        Box::leak(auth::rest_password(b"rest-secret", name).into_boxed_str());
    let c = client(1);
    let r = challenge(&mut t, c);
    let mut sha = Sha::new(&offered(&r));
    sha.user = name;
    sha.password = password;
    let m = t.ask(
        c,
        &sha.build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce_of(&r)),
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
    // A static user configured with an MD5 key has no SHA-256 key: 401, MD5 still works.
    let c = client(2);
    let r = challenge(&mut t, c);
    let mut sha = Sha::new(&offered(&r));
    sha.user = "keyed";
    sha.password = "pw";
    let m = t.ask(
        c,
        &sha.build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce_of(&r)),
    );
    assert_eq!(error_code(&m), Some(401));
    let m = t.ask(
        c,
        &Req::new(METHOD_ALLOCATE)
            .transport_udp()
            .creds("keyed", "pw", &nonce_of(&r)),
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
}

#[test]
fn a_request_too_small_for_the_features_gets_the_plain_challenge() {
    let mut t = on();
    let c = client(1);
    // 28 bytes: 3 x 28 = 84, and the full challenge is at least 84 bytes.
    let req = Req::new(METHOD_ALLOCATE).transport_udp();
    assert_eq!(req.bytes().len(), 28);
    let r = t.ask(c, &req);
    assert_eq!(error_code(&r), Some(401));
    assert!(r.raw.len() < 3 * 28);
    assert!(!r.contains(ATTR_PASSWORD_ALGORITHMS));
    let n = nonce_of(&r);
    assert!(!n.starts_with("obMatJos2"));
    // Such a nonce means MD5 (no features were offered with it) ...
    let m = t.ask(
        c,
        &Req::new(METHOD_ALLOCATE)
            .transport_udp()
            .creds("alice", "secret", &n),
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
    // ... and over TCP (no spoofing, no cap) the features are always offered.
    let mut tcp = client(2);
    tcp.transport = Transport::Tcp;
    let r = t.ask(tcp, &req);
    assert!(nonce_of(&r).starts_with("obMatJos2"));
    assert!(r.contains(ATTR_PASSWORD_ALGORITHMS));
}

/// Password guessing signed with MESSAGE-INTEGRITY-SHA256 spends the failure budget, as it does
/// with MESSAGE-INTEGRITY: a guesser must not drain the budget of plain first challenges, and
/// the plain budget must not throttle the answers a guesser's neighbours need.
#[test]
fn wrong_sha256_passwords_spend_the_failure_budget_not_the_challenge_budget() {
    let mut t = on();
    let c = client(1);
    let r = challenge(&mut t, c);
    let (list, nonce) = (offered(&r), nonce_of(&r));
    // One plain challenge per second (burst 2, one already spent), many failures.
    t.e.shared.budget = Arc::new(crate::auth::FailureBudget::split(1, 1000));
    let mut answered = 0;
    for _ in 0..5 {
        let mut sha = Sha::new(&list);
        sha.password = "wrong";
        let req = sha.build(Req::new(METHOD_ALLOCATE).transport_udp(), &nonce);
        if let Some(m) = t.try_ask(c, &req) {
            assert_eq!(error_code(&m), Some(401));
            answered += 1;
        }
    }
    assert_eq!(
        answered, 5,
        "wrong SHA-256 passwords were held to the challenge budget"
    );
}
