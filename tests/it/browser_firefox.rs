//! Tier 3, second browser: turnd's pages in headless Firefox (Debian's `firefox-esr`, driven
//! by puppeteer-core over WebDriver BiDi from `tests/browser/firefox.js`; no browser
//! download). Firefox's ICE stack (nICEr) is a TURN client independent of Chromium's. turnd
//! runs in-process at port 0; the driver runs `/tester` (gathering and relay measurement over
//! udp, tcp and tls; with a wrong password, where the diagnosis must say 401; and once by IP
//! address, where Firefox drops `turns:` and the diagnosis must say so) and relay-only `/call` over each transport, with screenshots
//! `firefox-*.png` in `target/screenshots/`.
//!
//! For `turns:` Firefox must trust turnd's certificate, and Firefox (mozilla::pkix) does not
//! accept a self-signed end-entity certificate as its own trust anchor: the test makes a CA
//! and a certificate for 127.0.0.1 it signs, gives that to turnd (`[tls] cert`/`key`), and a
//! fresh profile whose NSS certificate database (`certutil`, Debian's `libnss3-tools`) trusts
//! the CA. Needs `node`, `tests/browser/node_modules/puppeteer-core`,
//! `/usr/bin/firefox-esr` and `/usr/bin/certutil`; a missing piece fails the test (never a
//! skip).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::browser::{
    check_call_side, check_measured, check_tools, run_driver, screenshot_dir,
};

const FIREFOX: &str = "/usr/bin/firefox-esr";
const CERTUTIL: &str = "/usr/bin/certutil";
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// A CA and a server certificate for 127.0.0.1 and localhost it signed: (CA DER, server
/// certificate PEM, server key PEM).
fn ca_and_server_cert() -> (Vec<u8>, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "turnd browser-test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (
        ca_cert.der().to_vec(),
        leaf_cert.pem(),
        leaf_key.serialize_pem(),
    )
}

/// A new Firefox profile in `dir` whose certificate database trusts the CA `ca_der`.
fn profile_trusting(dir: &Path, ca_der: &[u8]) {
    let db = format!("sql:{}", dir.display());
    let run = |args: &[&str]| {
        let out = Command::new(CERTUTIL).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["-N", "-d", &db, "--empty-password"]);
    let cert = dir.join("turnd-test.der");
    std::fs::write(&cert, ca_der).unwrap();
    // P: trusted peer (a self-signed server certificate accepted as is) for TLS servers.
    run(&[
        "-A",
        "-d",
        &db,
        "-n",
        "turnd test",
        "-t",
        "C,,",
        "-i",
        cert.to_str().unwrap(),
    ]);
}

#[test]
fn pages_work_in_headless_firefox_over_every_transport() {
    check_tools("puppeteer-core", &[FIREFOX, CERTUTIL]);
    let profile = tempfile::tempdir().unwrap();
    let (ca, cert_pem, key_pem) = ca_and_server_cert();
    profile_trusting(profile.path(), &ca);
    let files = tempfile::tempdir().unwrap();
    let mut cfg = turnd::Config::for_tests();
    let tls = turnd::config::TlsFiles {
        cert: files.path().join("cert.pem"),
        key: files.path().join("key.pem"),
    };
    std::fs::write(&tls.cert, cert_pem).unwrap();
    std::fs::write(&tls.key, key_pem).unwrap();
    cfg.tls = Some(tls);
    let running = turnd::start(cfg).expect("turnd starts");
    // By name: Firefox refuses turns: URLs with an IP literal (no name to verify), and the
    // pages put the Host header's host into the URLs.
    let base = format!(
        "http://localhost:{}",
        running.http.expect("HTTP listener").port()
    );
    let shots = screenshot_dir();
    let args = [
        base.as_str(),
        shots.to_str().unwrap(),
        FIREFOX,
        profile.path().to_str().unwrap(),
    ];
    let v = run_driver("firefox.js", &args, RUN_TIMEOUT);
    running.stop();

    eprintln!("firefox {}, browser run {} ms", v["firefox"], v["ms"]);
    let report = &v["tester"]["report"];
    for transport in ["udp", "tcp", "tls"] {
        assert_eq!(report["verdicts"][transport], "ok", "{transport}: {report}");
        eprintln!(
            "firefox tester measured {}",
            check_measured(report, transport)
        );
    }
    let by_ip = &v["testerByIp"]["report"];
    for transport in ["udp", "tcp"] {
        assert_eq!(by_ip["verdicts"][transport], "ok", "{by_ip}");
    }
    assert_eq!(by_ip["verdicts"]["tls"], "fail", "{by_ip}");
    let (level, text) = crate::common::browser::diagnosis(&by_ip["diagnosis"], "tls");
    assert_eq!(level, "fail");
    assert!(
        text.starts_with("TLS: Firefox ignores turns: URLs with an IP address"),
        "{text}"
    );
    let wrong = &v["testerWrong"]["report"];
    for transport in ["udp", "tcp", "tls"] {
        assert_eq!(wrong["verdicts"][transport], "fail", "{wrong}");
        let (level, text) = crate::common::browser::diagnosis(&wrong["diagnosis"], transport);
        assert_eq!(level, "fail");
        assert!(
            text.contains("401: credentials rejected — not expired"),
            "{transport}: {text}"
        );
    }
    for transport in ["udp", "tcp", "tls"] {
        let c = &v["calls"][transport];
        for side in ["a", "b"] {
            // Firefox reports no byte counters in its data-channel stats.
            check_call_side(transport, side, &c[side], false);
        }
        let chat = c["chatB"].as_str().unwrap();
        assert!(
            chat.contains(&format!("hello from A over {transport}")),
            "{chat}"
        );
        let s = &c["a"];
        eprintln!(
            "firefox call over {transport}: connected in {} ms; {} <-> {}; rtt {} ms; \
             {} / {} kbit/s; loss {} %; jitter {} ms",
            c["connectMs"],
            s["local"],
            s["remote"],
            s["rttMs"],
            s["kbpsIn"],
            s["kbpsOut"],
            s["lossPct"],
            s["jitterMs"]
        );
    }
    for shot in [
        "firefox-tester",
        "firefox-tester-by-ip",
        "firefox-call-udp",
        "firefox-call-tls",
    ] {
        let p = shots.join(format!("{shot}.png"));
        assert!(p.is_file(), "missing screenshot {}", p.display());
    }
}
