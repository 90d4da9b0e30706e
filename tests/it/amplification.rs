//! Tier 2: reflection and amplification (issue 10, items 9 and 10), in-process over real UDP
//! sockets on loopback.
//!
//! - Every answer to an unauthenticated request is less than 3 times the request's size, with
//!   `software` and `realm` at the longest values the configuration accepts; unknown methods
//!   get no answer at all; the smallest real first Allocate still gets its 401.
//! - 400/420 answers to unauthenticated requests spend the per-IP challenge budget.
//! - Failures that carried MESSAGE-INTEGRITY (guessing) have a budget of their own, so a NAT
//!   neighbour (or a spoofer) sending bad credentials from the victim's IP cannot starve the
//!   victim's first challenge.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::raw::*;
use stun::attributes::*;
use stun::fingerprint::FINGERPRINT;
use stun::message::*;
use stun::textattrs::TextAttribute;
use tokio::net::UdpSocket;

/// The longest realm and software the configuration accepts.
const LONG_REALM: &str = "turn.example.org";

fn long_software() -> String {
    "s".repeat(127)
}

fn server(adjust: impl FnOnce(&mut turnd::Config)) -> turnd::Running {
    let mut c = turnd::Config::for_tests();
    c.realm = LONG_REALM.into();
    c.software = Some(long_software());
    adjust(&mut c);
    c.validate().expect("a valid configuration");
    turnd::start(c).expect("turnd starts")
}

fn header(method: Method) -> Message {
    let mut m = Message::new();
    m.typ = MessageType::new(method, CLASS_REQUEST);
    m.new_transaction_id().unwrap();
    m.write_header();
    m
}

/// Credentials that cannot verify: a nonce that is not ours and a wrong key.
fn bad_credentials(m: &mut Message, nonce: &str) {
    for (t, v) in [
        (ATTR_USERNAME, USER),
        (ATTR_REALM, LONG_REALM),
        (ATTR_NONCE, nonce),
    ] {
        TextAttribute::new(t, v.to_string()).add_to(m).unwrap();
    }
    stun::integrity::MessageIntegrity::new_long_term_integrity(
        USER.into(),
        LONG_REALM.into(),
        "wrong".into(),
    )
    .add_to(m)
    .unwrap();
}

/// Send once and wait up to `wait` for the answer with the same transaction id.
async fn answer(sock: &UdpSocket, to: SocketAddr, req: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.send_to(req, to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        if n >= 20 && buf[8..20] == req[8..20] {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Count answers to `reqs`, sent in batches of 25 with the answers read in between.
async fn answered(sock: &UdpSocket, to: SocketAddr, reqs: &[Vec<u8>]) -> usize {
    let mut got = 0;
    let mut buf = vec![0u8; 2048];
    for batch in reqs.chunks(25) {
        for r in batch {
            sock.send_to(r, to).await.unwrap();
        }
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(30), sock.recv(&mut buf)).await
        {
            got += 1;
        }
    }
    got
}

#[tokio::test]
async fn answers_to_unauthenticated_requests_stay_under_3x() {
    under_3x(false).await;
}

/// With RFC 8489 SHA-256 on, challenges carry the nonce cookie and PASSWORD-ALGORITHMS (24
/// bytes more): still under 3x, the smallest Allocate getting the plain challenge.
#[tokio::test]
async fn answers_stay_under_3x_with_sha256_and_userhash_on() {
    under_3x(true).await;
}

async fn under_3x(features: bool) {
    let s = server(|c| {
        if features {
            c.auth.password_algorithms = vec![
                turnd_proto::auth::PasswordAlgorithm::Sha256,
                turnd_proto::auth::PasswordAlgorithm::Md5,
            ];
            c.auth.userhash = true;
        }
    });
    let mut cases: Vec<(&str, SocketAddr, Message, bool)> = Vec::new();
    for (name, addr) in [("v4", s.udp[0]), ("v6", s.udp[1])] {
        let binding = header(METHOD_BINDING);
        cases.push((
            if name == "v4" {
                "Binding v4"
            } else {
                "Binding v6"
            },
            addr,
            binding,
            true,
        ));
    }
    let v4 = s.udp[0];
    let mut fp = header(METHOD_BINDING);
    FINGERPRINT.add_to(&mut fp).unwrap();
    cases.push(("Binding + FINGERPRINT", v4, fp, true));
    let mut unknown = header(METHOD_BINDING);
    raw_attr(AttrType(0x0042), vec![])
        .add_to(&mut unknown)
        .unwrap();
    cases.push(("Binding, unknown attribute (420)", v4, unknown, true));
    let mut first = header(METHOD_ALLOCATE);
    udp_transport().add_to(&mut first).unwrap();
    cases.push(("smallest first Allocate (401)", v4, first, true));
    let mut first_fp = header(METHOD_ALLOCATE);
    udp_transport().add_to(&mut first_fp).unwrap();
    FINGERPRINT.add_to(&mut first_fp).unwrap();
    cases.push(("first Allocate + FINGERPRINT (401)", v4, first_fp, true));
    let mut perm = header(METHOD_CREATE_PERMISSION);
    peer_attr("192.0.2.1:5000".parse().unwrap())
        .add_to(&mut perm)
        .unwrap();
    cases.push(("CreatePermission, no credentials (401)", v4, perm, true));
    cases.push(("bare Allocate", v4, header(METHOD_ALLOCATE), false));
    cases.push(("bare Refresh", v4, header(METHOD_REFRESH), false));
    // Method 0x00c is unassigned: the type 0x000c is a request of it.
    let mut unknown_method = header(METHOD_BINDING);
    unknown_method.raw[0..2].copy_from_slice(&0x000cu16.to_be_bytes());
    cases.push((
        "unknown method 0x00c (400 before)",
        v4,
        unknown_method,
        false,
    ));
    let mut bad_nonce = header(METHOD_ALLOCATE);
    udp_transport().add_to(&mut bad_nonce).unwrap();
    bad_credentials(&mut bad_nonce, "not-our-nonce");
    cases.push(("bad nonce (438)", v4, bad_nonce, true));

    let sock4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sock6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, to, req, must_answer) in &cases {
        let sock = if to.is_ipv4() { &sock4 } else { &sock6 };
        let got = answer(sock, *to, &req.raw, Duration::from_millis(300)).await;
        let Some(a) = got else {
            report.push(format!("{name}: {} B, no answer", req.raw.len()));
            if *must_answer {
                failures.push(format!("{name}: no answer"));
            }
            continue;
        };
        let ratio = a.len() as f64 / req.raw.len() as f64;
        report.push(format!(
            "{name}: {} B -> {} B = {ratio:.2}x",
            req.raw.len(),
            a.len()
        ));
        if ratio >= 3.0 {
            failures.push(format!("{name}: {ratio:.2}x"));
        }
        if parse(&a).contains(ATTR_SOFTWARE) {
            failures.push(format!("{name}: SOFTWARE on an unauthenticated answer"));
        }
        if name.contains("unknown method") {
            failures.push(format!("{name}: answered"));
        }
        // PASSWORD-ALGORITHMS (0x8002) only with the features on, and only where it fits:
        // with a 16-byte realm the full challenge is 104 bytes (112 with FINGERPRINT), so of
        // these only the 100-byte request with bad credentials gets it; the others get the
        // plain challenge.
        let offered = parse(&a).contains(AttrType(0x8002));
        let room = name.contains("(438)");
        if offered != (features && room) {
            failures.push(format!("{name}: PASSWORD-ALGORITHMS offered: {offered}"));
        }
    }
    eprintln!(
        "amplification (realm {} B, software {} B, SHA-256 {features}):\n  {}",
        LONG_REALM.len(),
        long_software().len(),
        report.join("\n  ")
    );
    assert!(failures.is_empty(), "{failures:?}\n{report:#?}");
    s.stop();
}

#[tokio::test]
async fn unauthenticated_400_and_420_spend_the_challenge_budget() {
    const PER_SEC: u32 = 20;
    let s = server(|c| c.auth.challenge_budget_per_sec = PER_SEC);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let reqs: Vec<Vec<u8>> = (0..400)
        .map(|_| {
            let mut m = header(METHOD_BINDING);
            raw_attr(AttrType(0x0042), vec![]).add_to(&mut m).unwrap();
            m.raw
        })
        .collect();
    let start = Instant::now();
    let got = answered(&sock, s.udp[0], &reqs).await;
    let allowed = 2.0 * PER_SEC as f64 + PER_SEC as f64 * start.elapsed().as_secs_f64() + 2.0;
    eprintln!(
        "420 answers: {got} of {}, budget allows {allowed:.0}",
        reqs.len()
    );
    assert!(
        (got as f64) <= allowed,
        "{got} answers to 420-worthy requests; the budget allows {allowed:.0}"
    );
    assert!(got >= 2 * PER_SEC as usize, "the burst is answered ({got})");
    s.stop();
}

#[tokio::test]
async fn guessing_from_the_victims_ip_does_not_starve_its_first_challenge() {
    const PER_SEC: u32 = 20;
    let s = server(|c| c.auth.failure_budget_per_sec = PER_SEC);
    let server = s.udp[0];
    // The NAT neighbour (or a spoofer) and the victim share 127.0.0.1.
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut first = header(METHOD_ALLOCATE);
    udp_transport().add_to(&mut first).unwrap();
    let nonce = nonce_of(&parse(
        &answer(&attacker, server, &first.raw, Duration::from_secs(1))
            .await
            .expect("the attacker's own first 401"),
    ));
    let guesses: Vec<Vec<u8>> = (0..2000)
        .map(|i| {
            let mut m = header(METHOD_ALLOCATE);
            udp_transport().add_to(&mut m).unwrap();
            // Half with a valid nonce and a wrong password (401), half with a foreign
            // nonce (438): both carry MESSAGE-INTEGRITY.
            bad_credentials(&mut m, if i % 2 == 0 { &nonce } else { "forged" });
            m.raw
        })
        .collect();
    let mut victim_nonces = 0;
    let mut attacker_answers = 0;
    let start = Instant::now();
    for round in guesses.chunks(200) {
        attacker_answers += answered(&attacker, server, round).await;
        let mut plain = header(METHOD_ALLOCATE);
        udp_transport().add_to(&mut plain).unwrap();
        if let Some(a) = answer(&victim, server, &plain.raw, Duration::from_millis(200)).await {
            let m = parse(&a);
            if code(&m) == Some(401) && m.contains(ATTR_NONCE) {
                victim_nonces += 1;
            }
        }
    }
    let allowed = 2.0 * PER_SEC as f64 + PER_SEC as f64 * start.elapsed().as_secs_f64() + 2.0;
    eprintln!(
        "guessing flood: {attacker_answers} of {} answered (budget {allowed:.0}); victim got a nonce {victim_nonces} of 10 times",
        guesses.len()
    );
    assert!(
        (attacker_answers as f64) <= allowed,
        "{attacker_answers} answered"
    );
    assert_eq!(
        victim_nonces, 10,
        "the victim's first challenges were starved"
    );
    s.stop();
}
