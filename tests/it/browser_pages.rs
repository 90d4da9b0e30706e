//! Tier 3: turnd's pages in headless Chromium (Debian's `chromium`, driven by playwright-core
//! from `tests/browser`). turnd runs in-process at port 0; `tests/browser/pages.js` loads
//! `/`, `/tester` (healthy with relay measurement, wrong and expired credentials, a TURN port
//! below 1024 (ignored by Chromium), UDP pointed at a port
//! that never answers, a second turnd whose peer policy refuses every peer, and a browser
//! that does not trust the certificate; each downloads its report) and `/call` (two browser contexts, relay only, once per transport), takes
//! screenshots into `target/screenshots/`, and prints what the pages showed as JSON, which
//! this test checks.
//!
//! Needs `node`, `tests/browser/node_modules` (`npm ci` there) and `/usr/bin/chromium`; a
//! missing piece fails the test with the install hint (it is never skipped). Firefox runs the
//! same pages in `browser_firefox.rs`.

use std::time::Duration;

use crate::common::browser::{
    check_call_side, check_measured, check_tools, has_key, run_driver, screenshot_dir,
};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run must finish within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn diagnosis<'a>(t: &'a Value, transport: &str) -> (&'a str, &'a str) {
    crate::common::browser::diagnosis(&t["diagnosis"], transport)
}

/// The downloaded report: the page's verdicts and diagnosis, no credentials.
fn check_report(t: &Value) {
    let r = &t["report"];
    assert!(
        r["name"].as_str().unwrap().starts_with("turnd-tester-"),
        "{r}"
    );
    let json = &r["json"];
    for transport in ["udp", "tcp", "tls"] {
        assert_eq!(
            json["verdicts"][transport], t["verdicts"][transport],
            "{json}"
        );
    }
    assert_eq!(json["diagnosis"], t["diagnosis"], "{json}");
    assert!(!has_key(json, "credential"), "credential in the report");
    let summary = r["summary"].as_str().unwrap();
    for d in t["diagnosis"].as_array().unwrap() {
        assert!(summary.contains(d["text"].as_str().unwrap()), "{summary}");
    }
}

fn check_tester(t: &Value) {
    check_report(t);
    for transport in ["udp", "tcp", "tls"] {
        eprintln!(
            "tester measured {}",
            check_measured(&t["report"]["json"], transport)
        );
    }
    for transport in ["udp", "tcp", "tls"] {
        assert_eq!(
            t["verdicts"][transport], "ok",
            "{transport}: {}",
            t["reasons"][transport]
        );
        let relays: Vec<&Value> = t["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["transport"] == transport && c["type"] == "relay")
            .collect();
        assert!(!relays.is_empty(), "no {transport} relay candidate: {t}");
        assert!(
            relays.iter().all(|c| c["relayProtocol"] == transport),
            "{transport}: {relays:?}"
        );
    }
}

fn check_tester_wrong_password(t: &Value) {
    check_report(t);
    for transport in ["udp", "tcp", "tls"] {
        assert_eq!(t["verdicts"][transport], "fail", "{transport}: {t}");
        let (level, text) = diagnosis(t, transport);
        assert_eq!(level, "fail");
        let why = if transport == "udp" {
            "401: credentials rejected — expired "
        } else {
            "401: credentials rejected — not expired"
        };
        // Same clock on both ends; the HTTP Date's whole seconds allow ±1 s.
        let skew = text
            .split("clock skew of ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<i64>().ok());
        assert!(
            text.contains(why) && skew.is_some_and(|s| s.abs() <= 1),
            "{transport}: {text}"
        );
        let reason = t["reasons"][transport].as_str().unwrap();
        assert!(reason.contains("401"), "{transport}: {reason}");
        assert!(
            t["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["transport"] == transport && e["code"] == 401),
            "{transport}: no 401 error row: {t}"
        );
    }
    let relays = t["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "relay")
        .count();
    assert_eq!(relays, 0, "relay candidates with a wrong password: {t}");
}

fn check_tester_udp_blocked(t: &Value) {
    check_report(t);
    assert_eq!(t["verdicts"]["udp"], "fail", "{t}");
    let (level, text) = diagnosis(t, "udp");
    assert_eq!(level, "fail");
    assert!(
        text.starts_with("UDP blocked on this network (no answer in 5 s), TCP and TLS work"),
        "{text}"
    );
    for transport in ["tcp", "tls"] {
        assert_eq!(t["verdicts"][transport], "ok", "{t}");
        check_measured(&t["report"]["json"], transport);
    }
}

fn check_tester_low_port(t: &Value) {
    check_report(t);
    assert_eq!(t["verdicts"]["udp"], "fail", "{t}");
    let (level, text) = diagnosis(t, "udp");
    assert_eq!(level, "fail");
    assert_eq!(
        text,
        "UDP: port 999 is below 1024 and not 53/80/443, so Chromium ignores this server"
    );
}

fn check_tester_no_media(t: &Value) {
    check_report(t);
    assert_eq!(t["verdicts"]["udp"], "ok", "{t}");
    let (level, text) = diagnosis(t, "udp");
    assert_eq!(level, "fail");
    assert_eq!(
        text,
        "UDP: relay candidate but no media: peer policy or firewall on the relay ports"
    );
    assert_eq!(t["report"]["json"]["measures"]["udp"]["connected"], false);
}

fn check_tester_untrusted(t: &Value) {
    check_report(t);
    assert_eq!(t["verdicts"]["tls"], "fail", "{t}");
    let (level, text) = diagnosis(t, "tls");
    assert_eq!(level, "fail");
    assert_eq!(text, "TLS: certificate not trusted or name mismatch (701)");
    for transport in ["udp", "tcp"] {
        assert_eq!(t["verdicts"][transport], "ok", "{t}");
    }
}

fn check_call(transport: &str, c: &Value) {
    for side in ["a", "b"] {
        check_call_side(transport, side, &c[side], true);
    }
    let chat = c["chatB"].as_str().unwrap();
    assert!(
        chat.contains(&format!("hello from A over {transport}")),
        "{chat}"
    );
}

#[test]
fn pages_work_in_headless_chromium_over_every_transport() {
    check_tools("playwright-core", &[CHROMIUM]);
    let running = turnd::start(turnd::Config::for_tests()).expect("turnd starts");
    // Bound, never read: a UDP port that answers nothing (the "UDP blocked" scenario).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // A second turnd that refuses every peer: relays are allocated, no data flows.
    let mut no_peers = turnd::Config::for_tests();
    no_peers.policy.allow_peers.clear();
    let no_peers = turnd::start(no_peers).expect("second turnd starts");
    let no_peers_base = format!("http://{}", no_peers.http.expect("HTTP listener"));
    let base = format!("http://{}", running.http.expect("HTTP listener"));
    let spki = running
        .certificate
        .as_ref()
        .and_then(|c| c.spki_sha256())
        .expect("dev certificate");
    let port = silent.local_addr().unwrap().port().to_string();
    let shots = screenshot_dir();
    let args = [
        &base,
        &spki,
        shots.to_str().unwrap(),
        CHROMIUM,
        &port,
        &no_peers_base,
    ];
    let v = run_driver("pages.js", &args, RUN_TIMEOUT);
    running.stop();
    no_peers.stop();
    drop(silent);

    eprintln!("chromium {}, browser run {} ms", v["chromium"], v["ms"]);
    assert_eq!(
        v["index"]["turn"].as_array().unwrap().len(),
        3,
        "{}",
        v["index"]
    );
    check_tester(&v["tester"]);
    check_tester_wrong_password(&v["testerWrong"]);
    check_tester_udp_blocked(&v["testerUdpBlocked"]);
    check_tester_untrusted(&v["testerUntrusted"]);
    check_tester_low_port(&v["testerLowPort"]);
    check_tester_no_media(&v["testerNoPeers"]);
    check_tester(&v["testerPhone"]);
    for transport in ["udp", "tcp", "tls"] {
        let c = &v["calls"][transport];
        check_call(transport, c);
        let s = &c["a"];
        eprintln!(
            "call over {transport}: connected in {} ms; {} <-> {}; rtt {} ms; media in {} B; \
             {} / {} kbit/s; loss {} %; jitter {} ms",
            c["connectMs"],
            s["local"],
            s["remote"],
            s["rttMs"],
            s["mediaIn"],
            s["kbpsIn"],
            s["kbpsOut"],
            s["lossPct"],
            s["jitterMs"]
        );
    }
    for shot in [
        "index",
        "tester",
        "tester-wrong-password",
        "tester-udp-blocked",
        "tester-untrusted-cert",
        "tester-no-media",
        "tester-low-port",
        "tester-phone",
        "call-udp",
        "call-phone",
    ] {
        let p = screenshot_dir().join(format!("{shot}.png"));
        assert!(p.is_file(), "missing screenshot {}", p.display());
    }
}
