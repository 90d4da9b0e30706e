//! Config keys of the ops features: `[admin] ready_probe*` and `[tls] acme`.

use std::path::Path;
use std::time::Duration;

use turnd::config::load_str;

const FILE: &str = "/etc/turnd/turnd.toml";
const BASE: &str = "[auth]\nsecrets = [\"0123456789abcdef0123\"]\n";

fn load(extra: &str) -> Result<turnd::Config, String> {
    load_str(&format!("{BASE}{extra}"), Path::new(FILE)).map_err(|e| e.to_string())
}

#[test]
fn ready_probe_keys_load_and_are_checked() {
    let c = load("").unwrap();
    assert!(!c.admin.ready_probe, "off by default");
    assert_eq!(c.admin.ready_probe_interval, Duration::from_secs(10));
    let c = load("[admin]\nready_probe = true\nready_probe_interval = \"3s\"\n").unwrap();
    assert!(c.admin.ready_probe);
    assert_eq!(c.admin.ready_probe_interval, Duration::from_secs(3));
    let e = load("[admin]\nready_probe = true\nready_probe_interval = \"100ms\"\n").unwrap_err();
    assert!(
        e.contains("admin.ready_probe_interval: must be between 1s and 1h"),
        "{e}"
    );
    let e = load("[listen]\nudp = []\ntcp = [\"127.0.0.1:3478\"]\n[admin]\nready_probe = true\n")
        .unwrap_err();
    assert!(e.contains("admin.ready_probe: needs a UDP listener"), "{e}");
}

#[test]
fn acme_keys_load_with_defaults_and_relative_paths() {
    let c = load(
        "[listen]\ntls = [\"0.0.0.0:443\"]\n[tls]\nacme = { domains = [\"turn.example.org\"], \
         contact = \"mailto:ops@example.org\", directory = \"https://acme.example.org/dir\", \
         directory_ca = \"ca.pem\" }\n",
    )
    .unwrap();
    assert!(c.tls.is_none());
    let a = c.acme.unwrap();
    assert_eq!(a.domains, vec!["turn.example.org"]);
    assert_eq!(a.contact.as_deref(), Some("mailto:ops@example.org"));
    assert_eq!(a.directory, "https://acme.example.org/dir");
    assert_eq!(a.state_dir, Path::new("/var/lib/turnd/acme"));
    assert_eq!(
        a.directory_ca.as_deref(),
        Some(Path::new("/etc/turnd/ca.pem"))
    );
    assert_eq!(a.renew_before, Duration::from_secs(30 * 86400));
}

#[test]
fn acme_mistakes_are_refused() {
    let acme = |fields: &str| format!("[listen]\ntls = [\"0.0.0.0:443\"]\n[tls]\n{fields}\n");
    let ok = "acme = { domains = [\"a.example\"], directory = \"https://x/dir\" }";
    assert!(load(&acme(ok)).is_ok());
    for (fields, expected) in [
        (
            "cert = \"c.pem\"\nkey = \"k.pem\"\nacme = { domains = [\"a.example\"], directory = \"https://x/dir\" }",
            "tls.acme: set either tls.cert and tls.key or tls.acme, not both",
        ),
        (
            "acme = { domains = [\"*.example\"], directory = \"https://x/dir\" }",
            "is not a DNS name",
        ),
        ("acme = { domains = [], directory = \"https://x/dir\" }", "give at least one name"),
        (
            "acme = { domains = [\"a.example\"], directory = \"http://x/dir\" }",
            "tls.acme.directory: must be an https:// URL",
        ),
        (
            "acme = { domains = [\"a.example\"], directory = \"https://x/dir\", contact = \"ops@x\" }",
            "tls.acme.contact: must be a mailto: URL",
        ),
        (
            "acme = { domains = [\"a.example\"], directory = \"https://x/dir\", typo = 1 }",
            "typo",
        ),
    ] {
        let e = load(&acme(fields)).unwrap_err();
        assert!(e.contains(expected), "{fields}\n got: {e}\nwant: {expected}");
    }
    let e = load(&format!("[tls]\n{ok}\n")).unwrap_err();
    assert!(e.contains("tls.acme: needs a TLS listener"), "{e}");
}
