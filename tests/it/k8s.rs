//! `contrib/k8s/turnd-fleet.yaml`: the YAML parses, the turnd config inside loads with
//! `--check-config` (secret files stood in for), and the image's command, ports and the Redis
//! address agree with the Dockerfile, the config and the Redis Service.

use std::path::Path;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn docs() -> Vec<Yaml> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("contrib/k8s/turnd-fleet.yaml"))
        .expect("contrib/k8s/turnd-fleet.yaml");
    YamlLoader::load_from_str(&text).expect("the manifest is YAML")
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn ports(container: &Yaml) -> Vec<(i64, String)> {
    container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["containerPort"].as_i64().unwrap(),
                p["protocol"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect()
}

#[test]
fn fleet_manifest_parses_loads_and_agrees_with_the_image_and_config() {
    let docs = docs();
    assert!(docs.len() >= 4);
    // The config inside, with the secret directory stood in for by a temp dir.
    let toml = find(&docs, "ConfigMap", "turnd-config")["data"]["turnd.toml"]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in ["admin-token", "rest-secret"] {
        std::fs::write(dir.path().join(f), format!("{f}-0123456789abcdef\n")).unwrap();
    }
    let local = toml.replace("/etc/turnd/secret", dir.path().to_str().unwrap());
    let file = dir.path().join("turnd.toml");
    std::fs::write(&file, &local).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args(["--check-config", "--config", file.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = turnd::config::load_file(&file).unwrap();
    let cluster = config.cluster.as_ref().expect("[cluster]");

    // Redis: the URL names the Service and its port; the Service targets the container.
    let svc = find(&docs, "Service", "turnd-redis");
    let port = &svc["spec"]["ports"][0];
    let redis_port = port["port"].as_i64().unwrap();
    assert_eq!(
        cluster.redis.0,
        format!("redis://turnd-redis:{redis_port}/0"),
        "the config names the Redis Service"
    );
    let redis = find(&docs, "Deployment", "turnd-redis");
    let rc = &redis["spec"]["template"]["spec"]["containers"][0];
    assert!(ports(rc).contains(&(port["targetPort"].as_i64().unwrap(), "tcp".into())));
    assert_eq!(
        redis["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
        "the Service selects the Redis pods"
    );

    // turnd: the Dockerfile's entrypoint and command, the config mounted where CMD reads it.
    let ds = find(&docs, "DaemonSet", "turnd");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"].as_str(), Some("turnd:latest"));
    let strs = |y: &Yaml| -> Vec<String> {
        y.as_vec()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(strs(&c["command"]), ["turnd"]);
    assert_eq!(strs(&c["args"]), ["--config", "/etc/turnd/turnd.toml"]);
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(r#"ENTRYPOINT ["turnd"]"#));
    assert!(dockerfile.contains(r#"CMD ["--config", "/etc/turnd/turnd.toml"]"#));
    let mounts = c["volumeMounts"].as_vec().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"].as_str() == Some("/etc/turnd/turnd.toml")));
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"].as_str() == Some("/etc/turnd/secret")));
    // Ports: exposed by the image, and the ones the config listens on.
    let expose = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE"))
        .unwrap()
        .to_string();
    let container_ports = ports(c);
    for (p, proto) in &container_ports {
        assert!(
            expose.contains(&format!("{p}/{proto}")),
            "{p}/{proto} in {expose}"
        );
    }
    for a in &config.listen.udp {
        assert!(container_ports.contains(&(i64::from(a.port()), "udp".into())));
    }
    for a in &config.listen.tcp {
        assert!(container_ports.contains(&(i64::from(a.port()), "tcp".into())));
    }
    let admin = config.admin.listen.expect("admin listener").port();
    assert!(container_ports.contains(&(i64::from(admin), "tcp".into())));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"].as_i64(), Some(i64::from(admin)));
    }
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    // Drain fits in the grace period.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(grace as u64 > config.server.drain_timeout.as_secs());
    // The environment overrides turnd reads exist.
    let env: Vec<&str> = c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for v in ["TURND_RELAY_IPV4", "TURND_LISTEN_UDP", "TURND_LISTEN_TCP"] {
        assert!(env.contains(&v), "{v}");
        let cli = std::fs::read_to_string(Path::new(ROOT).join("src/cli.rs")).unwrap();
        assert!(cli.contains(&format!("env = \"{v}\"")), "turnd reads {v}");
    }
}
