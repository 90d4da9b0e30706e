//! No Docker engine runs here, so check what can be checked by reading: the Dockerfile copies
//! files that exist, builds and runs binaries this workspace has, exposes the ports of the
//! default configuration, runs as a non-root user, and its HEALTHCHECK command works against
//! a live turnd.

use std::path::Path;
use std::process::Command;

use crate::common::turnctl_bin;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    // Join continuation lines, drop comments.
    text.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn instructions(kind: &str) -> Vec<String> {
    dockerfile()
        .into_iter()
        .filter_map(|l| {
            l.strip_prefix(&format!("{kind} "))
                .map(|r| r.trim().to_string())
        })
        .collect()
}

/// The JSON-array form `["a", "b"]` as words.
fn exec_form(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not an exec-form array: {s}: {e}"))
}

#[test]
fn copies_only_files_that_exist_and_binaries_that_are_built() {
    let bins = [
        ("turnd", Path::new(env!("CARGO_BIN_EXE_turnd"))),
        ("turnctl", turnctl_bin()),
    ];
    for copy in instructions("COPY") {
        let words: Vec<&str> = copy.split_whitespace().collect();
        let (sources, _dest) = words.split_at(words.len() - 1);
        if let Some(rest) = sources.first().and_then(|s| s.strip_prefix("--from=")) {
            assert_eq!(rest, "build");
            for s in &sources[1..] {
                let name = s
                    .strip_prefix("/src/target/release/")
                    .expect("copies release binaries");
                assert!(
                    bins.iter().any(|(b, _)| *b == name),
                    "{name} is not a binary of this workspace"
                );
            }
            continue;
        }
        for s in sources {
            assert!(
                Path::new(ROOT).join(s).exists(),
                "COPY source {s} does not exist"
            );
        }
    }
    let run = instructions("RUN").join("\n");
    for (b, _) in bins {
        assert!(
            run.contains(&format!("--bin {b}")),
            "the build stage builds {b}"
        );
    }
    // Everything the workspace compiles from must be copied into the build stage.
    for needed in ["Cargo.toml", "Cargo.lock", "src", "crates", "web"] {
        assert!(
            instructions("COPY")
                .iter()
                .any(|c| c.starts_with(needed) || c.contains(&format!(" {needed}"))),
            "{needed} is copied"
        );
    }
}

#[test]
fn runs_turnd_as_a_non_root_user_with_the_config_it_copies() {
    let user = instructions("USER");
    assert_eq!(user.len(), 1);
    assert!(user[0] != "root" && user[0] != "0");
    let entry = exec_form(&instructions("ENTRYPOINT")[0]);
    assert_eq!(entry, vec!["turnd"]);
    let cmd = exec_form(&instructions("CMD")[0]);
    assert_eq!(cmd, vec!["--config", "/etc/turnd/turnd.toml"]);
    assert!(instructions("COPY")
        .iter()
        .any(|c| c == "config/turnd.toml /etc/turnd/turnd.toml"));
    // That config file loads (and the binary accepts it).
    let out = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args([
            "--check-config",
            "--config",
            &format!("{ROOT}/config/turnd.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exposes_the_default_ports() {
    let exposed = instructions("EXPOSE").join(" ");
    let c = turnd::Config::development();
    let mut want = vec![];
    for a in &c.listen.udp {
        want.push(format!("{}/udp", a.port()));
    }
    for a in c.listen.tcp.iter().chain(&c.listen.tls) {
        want.push(format!("{}/tcp", a.port()));
    }
    want.push(format!("{}/tcp", c.signaling.listen.unwrap().port()));
    want.push(format!("{}/tcp", c.admin.listen.unwrap().port()));
    for w in want {
        assert!(
            exposed.split_whitespace().any(|e| e == w),
            "EXPOSE lacks {w}: {exposed}"
        );
    }
}

#[test]
fn the_healthcheck_command_passes_against_turnd_and_fails_without_it() {
    let hc = instructions("HEALTHCHECK").join(" ");
    let cmd = hc.split("CMD ").nth(1).expect("HEALTHCHECK ... CMD [...]");
    let words = exec_form(cmd.trim());
    assert_eq!(words[0], "turnctl");
    let server = turnd::start(turnd::Config::for_tests()).unwrap();
    let run = |addr: std::net::SocketAddr| {
        let args: Vec<String> = words[1..]
            .iter()
            .map(|w| w.replace("127.0.0.1:3478", &addr.to_string()))
            .collect();
        Command::new(turnctl_bin()).args(&args).output().unwrap()
    };
    let ok = run(server.udp[0]);
    assert!(
        ok.status.success(),
        "healthcheck against turnd: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    server.stop();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let down = run(dead.local_addr().unwrap());
    assert!(
        !down.status.success(),
        "healthcheck must fail when nothing answers"
    );
}
