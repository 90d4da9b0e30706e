//! Tier 4, `[cluster]`: built `turnd` nodes sharing a real `redis-server` (started here on a
//! free loopback port, killed by PID): fleet-wide quotas with leases, a killed node's share
//! vanishing within a lease, a Redis outage (relaying without loss, local limits, the metric
//! and one log line), Redis back (rejoin, republish), and the shared nonce key.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Daemon;
use crate::raw::*;
use stun::message::*;
use tokio::net::UdpSocket;

const HEARTBEAT_MS: u64 = 200;
const LEASE_MS: u64 = 1000;
const PER_USER: usize = 3;
const TOKEN: &str = "fleet-admin-token-0123456789";

/// `redis-server` on 127.0.0.1:`port`, no persistence; killed by PID on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::on(port)
    }

    fn on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is required for the fleet tests (apt-get install redis-server)");
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < end,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(dir: &Path, redis: &str, id: &str, ports: &str) -> Daemon {
    node_with(dir, redis, id, ports, "127.0.0.1:0", "", PER_USER)
}

/// A node listening for UDP on `udp`, with `extra` appended to its config (after `[cluster]`).
fn node_with(
    dir: &Path,
    redis: &str,
    id: &str,
    ports: &str,
    udp: &str,
    extra: &str,
    per_user: usize,
) -> Daemon {
    let listen = format!("udp = [\"{udp}\"]");
    node_listening(
        dir,
        redis,
        id,
        ("127.0.0.1", ports),
        &listen,
        extra,
        per_user,
    )
}

/// A node with `listen` as its `[listen]` section's body.
fn node_listening(
    dir: &Path,
    redis: &str,
    id: &str,
    (relay, ports): (&str, &str),
    listen: &str,
    extra: &str,
    per_user: usize,
) -> Daemon {
    let file: PathBuf = dir.join(format!("{id}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"realm = "turnd"
workers = 2
[listen]
{listen}
[relay]
ipv4 = "{relay}"
ipv6 = "none"
ports = "{ports}"
[auth]
users = ["alice:alice-pw", "bob:bob-pw"]
secrets = ["fleet-rest-secret"]
[policy]
allow_peers = ["127.0.0.0/8"]
max_allocations_per_user = {per_user}
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
[log]
format = "json"
level = "info"
[cluster]
redis = "{redis}"
node_id = "{id}"
heartbeat = "{HEARTBEAT_MS}ms"
lease = "{LEASE_MS}ms"
timeout = "100ms"
{extra}
"#
        ),
    )
    .unwrap();
    Daemon::start(&file)
}

async fn turn(d: &Daemon, user: &str) -> UdpTurn {
    let mut c = UdpTurn::new(d.udp).await;
    c.user = user.into();
    c.pass = format!("{user}-pw");
    c
}

/// The Allocate's error code (`None`: success); the client keeps it alive while held.
async fn allocate(c: &mut UdpTurn) -> Option<u16> {
    code(&c.ask(METHOD_ALLOCATE, &[&udp_transport()]).await)
}

async fn wait_metric(d: &Daemon, name: &str, want: f64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if metric(d.admin, name).await == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{name} never became {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /api/fleet/sessions?user=` on `d`: the sessions' nodes, sorted.
async fn fleet_nodes(d: &Daemon, user: &str) -> Vec<String> {
    let (status, body) = http(
        "GET",
        d.admin,
        &format!("/api/fleet/sessions?user={user}"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut nodes: Vec<String> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

async fn refresh(t: &mut UdpTurn) -> Option<u16> {
    code(&t.ask(METHOD_REFRESH, &[&lifetime(600)]).await)
}

fn heartbeats(n: u64) -> Duration {
    Duration::from_millis(HEARTBEAT_MS * n)
}

#[tokio::test]
async fn fleet_quota_holds_across_nodes_and_a_killed_nodes_share_vanishes_within_a_lease() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), &redis.url(), "a", "52000-52499");
    let b = node(dir.path(), &redis.url(), "b", "52500-52999");
    let c = node(dir.path(), &redis.url(), "c", "53000-53499");
    for d in [&a, &b, &c] {
        wait_metric(d, "turnd_cluster_nodes", 3.0, Duration::from_secs(5)).await;
        assert_eq!(metric(d.admin, "turnd_cluster_up").await, 1.0);
    }
    let mut held = Vec::new();
    for d in [&a, &a, &b] {
        let mut t = turn(d, "alice").await;
        assert_eq!(allocate(&mut t).await, None);
        held.push(t);
    }
    // Two heartbeats: every node has read the others' leases.
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    for d in [&a, &b, &c] {
        let mut t = turn(d, "alice").await;
        assert_eq!(
            allocate(&mut t).await,
            Some(486),
            "alice holds 3 in the fleet"
        );
    }
    let mut other = turn(&c, "bob").await;
    assert_eq!(allocate(&mut other).await, None, "bob has his own quota");
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    assert_eq!(fleet_nodes(&c, "alice").await, ["a", "a", "b"]);

    // SIGKILL (Daemon's drop: kill by PID, then reap): B never says goodbye; its lease
    // (1 s) must run out.
    drop(b);
    let killed = Instant::now();
    let mut t = turn(&c, "alice").await;
    assert_eq!(
        allocate(&mut t).await,
        Some(486),
        "B's lease still holds its share"
    );
    assert!(killed.elapsed() < Duration::from_millis(LEASE_MS / 2));
    let vanished = loop {
        let mut t = turn(&c, "alice").await;
        match allocate(&mut t).await {
            None => break killed.elapsed(),
            Some(486) => {}
            other => panic!("Allocate on C: {other:?}"),
        }
        assert!(
            killed.elapsed() < Duration::from_millis(LEASE_MS) + heartbeats(3),
            "B's share did not vanish within a lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gone = wait_metric(&c, "turnd_cluster_nodes", 2.0, Duration::from_secs(3)).await;
    // C's allocation that ended the loop shows up once C's next heartbeat publishes it
    // (before this check on a quiet machine, often after it): only B's must be gone.
    let view = fleet_nodes(&c, "alice").await;
    assert_eq!(
        view.iter().filter(|n| *n != "c").collect::<Vec<_>>(),
        ["a", "a"],
        "B's sessions left the view with its lease: {view:?}"
    );
    eprintln!(
        "FIGURE dead node's quota share gone after {} ms (lease {LEASE_MS} ms, heartbeat \
         {HEARTBEAT_MS} ms); node count 2 after {} ms more",
        vanished.as_millis(),
        gone.as_millis()
    );
    drop(held);
}

#[tokio::test]
async fn redis_outage_relays_without_loss_and_quotas_fall_back_to_local_limits() {
    let redis = Redis::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let mut a = node(dir.path(), &url, "a", "53500-53999");
    let mut b = node(dir.path(), &url, "b", "54000-54499");
    for d in [&a, &b] {
        wait_metric(d, "turnd_cluster_nodes", 2.0, Duration::from_secs(5)).await;
    }
    // alice: 1 on A (relaying), 2 on B: her fleet quota is full.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut caller = turn(&a, "alice").await;
    let relay = caller.allocate().await;
    caller
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut t = turn(&b, "alice").await;
        assert_eq!(allocate(&mut t).await, None);
        held.push(t);
    }
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    let mut t = turn(&a, "alice").await;
    assert_eq!(allocate(&mut t).await, Some(486), "fleet-wide: 3 held");

    // Relay both ways, 5 ms apart, while Redis is killed half-way through.
    const PACKETS: usize = 400;
    let mut redis = Some(redis);
    let (mut to_peer, mut to_client) = (0usize, 0usize);
    let (mut buf, mut buf2) = ([0u8; 1500], [0u8; 1500]);
    let mut outage_at = None;
    for i in 0..PACKETS {
        if i == PACKETS / 4 {
            redis.take().unwrap().kill();
            outage_at = Some(Instant::now());
        }
        let payload = (i as u32).to_be_bytes();
        caller
            .sock
            .send_to(&channel_data(0x4000, &payload), caller.server)
            .await
            .unwrap();
        peer.send_to(&payload, relay).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let (mut got_peer, mut got_client) = (false, false);
        while !(got_peer && got_client) {
            tokio::select! {
                r = peer.recv_from(&mut buf) => {
                    let (n, _) = r.unwrap();
                    got_peer |= buf[..n] == payload;
                }
                r = caller.sock.recv_from(&mut buf2) => {
                    let (n, _) = r.unwrap();
                    got_client |= n >= 8 && buf2[4..8] == payload;
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        to_peer += usize::from(got_peer);
        to_client += usize::from(got_client);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let outage = outage_at.unwrap().elapsed();
    eprintln!(
        "FIGURE Redis outage: {}/{PACKETS} client->peer, {}/{PACKETS} peer->client delivered \
         ({} ms of the run without Redis)",
        to_peer,
        to_client,
        outage.as_millis()
    );
    assert_eq!(
        (to_peer, to_client),
        (PACKETS, PACKETS),
        "loss during the outage"
    );

    for d in [&a, &b] {
        wait_metric(d, "turnd_cluster_up", 0.0, heartbeats(5)).await;
    }
    // Local limits: A sees only its own 1 of alice's; two more fit, the third does not.
    for want in [None, None, Some(486)] {
        let mut t = turn(&a, "alice").await;
        assert_eq!(allocate(&mut t).await, want, "local limits on A");
        held.push(t);
    }
    // One warning per change of state, not one per heartbeat.
    tokio::time::sleep(heartbeats(3)).await;
    for d in [&mut a, &mut b] {
        d.drain_lines();
        let down = d
            .seen
            .iter()
            .filter(|v| v["message"] == "cluster: Redis unreachable; quotas on local limits")
            .count();
        assert_eq!(down, 1, "one warning for the outage");
    }

    // Redis back on the same port (empty): the nodes rejoin and republish their counts.
    let _redis = Redis::on(redis_port(&url));
    let back = Instant::now();
    for d in [&a, &b] {
        wait_metric(d, "turnd_cluster_up", 1.0, heartbeats(10)).await;
        wait_metric(d, "turnd_cluster_nodes", 2.0, heartbeats(10)).await;
    }
    eprintln!(
        "FIGURE Redis back: both nodes up again after {} ms",
        back.elapsed().as_millis()
    );
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    let mut t = turn(&b, "alice").await;
    assert_eq!(
        allocate(&mut t).await,
        Some(486),
        "B sees A's republished 3 (5 in the fleet)"
    );
    for d in [&mut a, &mut b] {
        d.drain_lines();
        let up = d
            .seen
            .iter()
            .filter(|v| v["message"] == "cluster: Redis reachable; fleet quotas again")
            .count();
        assert_eq!(up, 1, "one line for the recovery");
    }
    drop(held);
}

fn redis_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap()
}

/// A REST credential's nonce from node A is good on node B (the fleet's nonce key): the
/// authenticated Allocate on B succeeds at once, no 401 or 438 first.
#[tokio::test]
async fn a_rest_credentials_retry_on_another_node_needs_no_new_challenge() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), &redis.url(), "a", "54500-54999");
    let b = node(dir.path(), &redis.url(), "b", "55000-55499");
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let user = format!("{expiry}:carol");
    let pass = turnd_proto::auth::rest_password(b"fleet-rest-secret", &user);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A's challenge.
    let r = udp_ask(
        &sock,
        a.udp,
        &request(METHOD_ALLOCATE, &[&udp_transport()], None),
    )
    .await;
    assert_eq!(code(&r), Some(401));
    let nonce = nonce_of(&r);
    // The retry goes to B (another DNS answer), from the same client address.
    let creds = Some((user.as_str(), pass.as_str(), nonce.as_str()));
    let r = udp_ask(
        &sock,
        b.udp,
        &request(METHOD_ALLOCATE, &[&udp_transport()], creds),
    )
    .await;
    assert_eq!(
        (r.typ.class, code(&r)),
        (CLASS_SUCCESS_RESPONSE, None),
        "A's nonce accepted by B"
    );
}

/// REST secrets (`turnd:rest-secrets`) and static users (`turnd:users`, hex MD5 keys) put in
/// Redis take effect at the next heartbeat, and go again when removed: no reload.
#[tokio::test]
async fn rest_secrets_and_users_in_redis_change_without_a_reload() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), &redis.url(), "a", "55500-55999");
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let rest = |secret: &str| {
        let user = format!("{expiry}:erin");
        let pass = turnd_proto::auth::rest_password(secret.as_bytes(), &user);
        (user, pass)
    };
    async fn try_as(a: &Daemon, (user, pass): (String, String)) -> Option<u16> {
        let mut c = UdpTurn::new(a.udp).await;
        c.user = user;
        c.pass = pass;
        allocate(&mut c).await
    }
    assert_eq!(try_as(&a, rest("redis-secret")).await, Some(401));
    assert_eq!(
        try_as(&a, ("dave".into(), "dave-pw".into())).await,
        Some(401)
    );

    let dave = hex::encode(turnd_proto::auth::long_term_key("dave", "turnd", "dave-pw"));
    redis::cmd("SADD")
        .arg("turnd:rest-secrets")
        .arg("redis-secret")
        .exec(&mut r)
        .unwrap();
    redis::cmd("HSET")
        .arg("turnd:users")
        .arg("dave")
        .arg(&dave)
        .exec(&mut r)
        .unwrap();
    tokio::time::sleep(heartbeats(3)).await;
    assert_eq!(try_as(&a, rest("redis-secret")).await, None, "Redis secret");
    assert_eq!(
        try_as(&a, rest("fleet-rest-secret")).await,
        None,
        "configured secret"
    );
    assert_eq!(
        try_as(&a, ("dave".into(), "dave-pw".into())).await,
        None,
        "Redis user"
    );

    redis::cmd("SREM")
        .arg("turnd:rest-secrets")
        .arg("redis-secret")
        .exec(&mut r)
        .unwrap();
    redis::cmd("DEL").arg("turnd:users").exec(&mut r).unwrap();
    tokio::time::sleep(heartbeats(3)).await;
    assert_eq!(
        try_as(&a, rest("redis-secret")).await,
        Some(401),
        "rotated out"
    );
    assert_eq!(
        try_as(&a, ("dave".into(), "dave-pw".into())).await,
        Some(401)
    );
}

/// A session listed and ended through node A's admin API ends on node C (its next Refresh:
/// 437); a user's sessions end on every node.
#[tokio::test]
async fn a_session_listed_and_killed_through_one_node_ends_on_its_owner() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), &redis.url(), "a", "56000-56499");
    let b = node(dir.path(), &redis.url(), "b", "56500-56999");
    let c = node(dir.path(), &redis.url(), "c", "57000-57499");
    for d in [&a, &b, &c] {
        wait_metric(d, "turnd_cluster_nodes", 3.0, Duration::from_secs(5)).await;
    }
    let mut alice = turn(&c, "alice").await;
    alice.allocate().await;
    let mut bobs = vec![turn(&b, "bob").await, turn(&c, "bob").await];
    for bob in &mut bobs {
        bob.allocate().await;
    }
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    let (status, body) = http(
        "GET",
        a.admin,
        "/api/fleet/sessions?user=alice",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = v["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["node"], "c");
    assert_eq!(list[0]["user"], "alice");
    assert_eq!(list[0]["transport"], "udp");
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(fleet_nodes(&a, "bob").await, ["b", "c"]);
    let (status, _) = http("GET", a.admin, "/api/fleet/sessions", None).await;
    assert_eq!(status, 401, "the token is required");

    let (status, body) = http(
        "DELETE",
        a.admin,
        &format!("/api/fleet/sessions/c/{id}"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = http(
        "DELETE",
        a.admin,
        "/api/fleet/sessions/nowhere/1",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 404, "no such node");
    let end = Instant::now() + Duration::from_secs(3);
    while refresh(&mut alice).await != Some(437) {
        assert!(Instant::now() < end, "alice's allocation on C did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for bob in &mut bobs {
        assert_eq!(refresh(bob).await, None, "bob's sessions are untouched");
    }

    let (status, body) = http(
        "DELETE",
        a.admin,
        "/api/fleet/users/bob/sessions",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"nodes\":3"), "{body}");
    for bob in &mut bobs {
        let end = Instant::now() + Duration::from_secs(3);
        while refresh(bob).await != Some(437) {
            assert!(Instant::now() < end, "a bob allocation did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    assert!(fleet_nodes(&b, "bob").await.is_empty());
    assert!(fleet_nodes(&b, "alice").await.is_empty());
}

/// An ended allocation's usage record reaches the stream `turnd:usage` (and the JSON log)
/// with the bytes and packets the client sent and received.
#[tokio::test]
async fn usage_records_in_the_stream_count_what_was_relayed() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut a = node(dir.path(), &redis.url(), "a", "57500-57999");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut caller = turn(&a, "alice").await;
    let relay = caller.allocate().await;
    caller
        .channel_bind(0x4001, peer.local_addr().unwrap())
        .await;
    let mut buf = [0u8; 1500];
    // 30 datagrams of 100 bytes out, 20 of 60 bytes back, each waited for.
    for _ in 0..30 {
        caller
            .sock
            .send_to(&channel_data(0x4001, &[7u8; 100]), caller.server)
            .await
            .unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
            .await
            .expect("relayed to the peer")
            .unwrap();
        assert_eq!(n, 100);
    }
    for _ in 0..20 {
        peer.send_to(&[9u8; 60], relay).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), caller.sock.recv_from(&mut buf))
            .await
            .expect("relayed to the client")
            .unwrap();
        assert_eq!(n, 4 + 60);
    }
    assert_eq!(refresh_to(&mut caller, 0).await, None, "Refresh 0 ends it");
    tokio::time::sleep(heartbeats(3)).await;

    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("turnd:usage")
        .arg("-")
        .arg("+")
        .query(&mut r)
        .unwrap();
    assert_eq!(entries.ids.len(), 1, "one record");
    let e = &entries.ids[0];
    let field = |k: &str| -> String { e.get(k).unwrap_or_else(|| panic!("no {k}")) };
    assert_eq!(field("node"), "a");
    assert_eq!(field("user"), "alice");
    assert_eq!(field("realm"), "turnd");
    assert_eq!(field("transport"), "udp");
    assert_eq!(
        field("client"),
        caller.sock.local_addr().unwrap().to_string()
    );
    assert_eq!(field("bytes_to_peer"), "3000");
    assert_eq!(field("packets_to_peer"), "30");
    assert_eq!(field("bytes_to_client"), "1200");
    assert_eq!(field("packets_to_client"), "20");
    // No cap here: nothing dropped (the engine test of the cap checks a record's drops).
    assert_eq!(field("bandwidth_dropped_to_peer"), "0");
    assert_eq!(field("bandwidth_dropped_to_client"), "0");
    let (start, end): (u64, u64) = (
        field("start").parse().unwrap(),
        field("end").parse().unwrap(),
    );
    assert!(start > 0 && start <= end, "{start} {end}");
    let session = field("session");
    let logged = a.wait_for("usage log line", |v| {
        v["fields"]["event"] == "usage" || v["event"] == "usage"
    });
    let get = |k: &str| {
        if logged["fields"].is_object() {
            logged["fields"][k].clone()
        } else {
            logged[k].clone()
        }
    };
    assert_eq!(get("session").to_string(), session);
    assert_eq!(get("bytes_to_peer"), 3000);
    assert_eq!(get("bytes_to_client"), 1200);
}

async fn refresh_to(t: &mut UdpTurn, secs: u32) -> Option<u16> {
    code(&t.ask(METHOD_REFRESH, &[&lifetime(secs)]).await)
}

fn free_udp() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

/// ALTERNATE-SERVER of a 300 answer.
fn alternate(m: &Message) -> std::net::SocketAddr {
    let (attr, found) = m.attributes.get(stun::attributes::ATTR_ALTERNATE_SERVER);
    assert!(found, "no ALTERNATE-SERVER");
    let v = attr.value;
    assert_eq!(v.len(), 8);
    assert_eq!(v[1], 1, "IPv4");
    let ip = std::net::Ipv4Addr::new(v[4], v[5], v[6], v[7]);
    (ip, u16::from_be_bytes([v[2], v[3]])).into()
}

/// Node A over `redirect_above` (and later draining on SIGTERM) answers new Allocates with
/// 300 naming node B; its existing allocations carry on; under it again, it admits.
#[tokio::test]
async fn over_its_threshold_or_draining_a_node_redirects_new_allocations() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (ua, ub) = (free_udp(), free_udp());
    let mut a = node_with(
        dir.path(),
        &redis.url(),
        "a",
        "58000-58499",
        &ua,
        &format!("redirect_above = 1\npublic_udp = \"{ua}\"\n[server]\ndrain_timeout = \"20s\""),
        PER_USER,
    );
    let b = node_with(
        dir.path(),
        &redis.url(),
        "b",
        "58500-58999",
        &ub,
        &format!("public_udp = \"{ub}\""),
        PER_USER,
    );
    wait_metric(&a, "turnd_cluster_nodes", 2.0, Duration::from_secs(5)).await;
    let mut held = vec![turn(&a, "alice").await, turn(&a, "bob").await];
    for t in &mut held {
        assert_eq!(allocate(t).await, None);
    }
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    let mut carol = turn(&a, "bob").await;
    let r = carol.ask(METHOD_ALLOCATE, &[&udp_transport()]).await;
    assert_eq!(code(&r), Some(300), "2 > redirect_above = 1");
    assert_eq!(alternate(&r), b.udp, "ALTERNATE-SERVER names B");
    assert!(
        r.contains(stun::attributes::ATTR_MESSAGE_INTEGRITY),
        "signed"
    );
    let mut moved = turn(&b, "bob").await;
    assert_eq!(allocate(&mut moved).await, None, "B admits");

    // Under the threshold again: A admits.
    assert_eq!(refresh_to(&mut held[1], 0).await, None);
    held.pop();
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    let mut t = turn(&a, "bob").await;
    assert_eq!(allocate(&mut t).await, None, "1 allocation: not over");
    assert_eq!(refresh_to(&mut t, 0).await, None);
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine

    // SIGTERM: A drains: alice's call keeps working, new ones go to B.
    a.signal("TERM");
    tokio::time::sleep(heartbeats(4)).await; // two heartbeats, with room for a loaded machine
    let mut late = turn(&a, "bob").await;
    let r = late.ask(METHOD_ALLOCATE, &[&udp_transport()]).await;
    assert_eq!(code(&r), Some(300), "draining");
    assert_eq!(alternate(&r), b.udp);
    assert_eq!(
        refresh(&mut held[0]).await,
        None,
        "the existing call carries on"
    );
    assert_eq!(
        a.exit_within(Duration::from_millis(300)),
        None,
        "still draining"
    );
    assert_eq!(refresh_to(&mut held[0], 0).await, None);
    assert!(
        a.exit_within(Duration::from_secs(5)).is_some(),
        "A exits once its last allocation ended"
    );
}

/// coturn's `turnutils_uclient` against a draining node A: it gets 300 (Try Alternate),
/// follows ALTERNATE-SERVER to node B and relays there without loss.
#[tokio::test]
async fn uclient_follows_the_300_of_a_draining_node_to_another() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (ua, ub) = (free_udp(), free_udp());
    let a = node_with(
        dir.path(),
        &redis.url(),
        "a",
        "59000-59499",
        &ua,
        &format!("public_udp = \"{ua}\"\n[server]\ndrain_timeout = \"20s\""),
        10,
    );
    let mut b = node_with(
        dir.path(),
        &redis.url(),
        "b",
        "59500-59999",
        &ub,
        &format!("public_udp = \"{ub}\""),
        10,
    );
    wait_metric(&a, "turnd_cluster_nodes", 2.0, Duration::from_secs(5)).await;
    // bob's call on A keeps it draining (not exiting) while uclient (alice) tries.
    let mut call = turn(&a, "bob").await;
    assert_eq!(allocate(&mut call).await, None);
    a.signal("TERM");
    tokio::time::sleep(heartbeats(3)).await;
    let port = a.udp.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("turnutils_uclient")
            .args([
                "-u", "alice", "-w", "alice-pw", "-p", &port, "-n", "10", "-m", "1",
            ])
            .args(["-y", "127.0.0.1"])
            .output()
            .expect("turnutils_uclient is required (apt-get install coturn)")
    });
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("uclient finished")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("error 300"), "uclient saw the 300:\n{text}");
    let last = |key: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.split(key).nth(1))
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
    };
    let (sent, received) = (last("tot_send_msgs="), last("tot_recv_msgs="));
    assert!(
        sent >= 10 && received == sent,
        "relayed through B: {sent} sent, {received} received\n{text}"
    );
    b.drain_lines();
    assert!(
        b.seen
            .iter()
            .any(|v| v["message"] == "allocation created" || v["event"] == "allocation created"),
        "B took the allocations"
    );
    assert_eq!(refresh(&mut call).await, None, "A's call carried on");
}

/// `quota_fail = "closed"`: while Redis is unreachable new allocations get 486; existing
/// ones carry on; Redis back, allocations work again.
#[tokio::test]
async fn quota_fail_closed_refuses_new_allocations_while_redis_is_down() {
    let redis = Redis::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let a = node_with(
        dir.path(),
        &url,
        "a",
        "60000-60499",
        "127.0.0.1:0",
        "quota_fail = \"closed\"",
        PER_USER,
    );
    wait_metric(&a, "turnd_cluster_up", 1.0, Duration::from_secs(5)).await;
    let mut call = turn(&a, "alice").await;
    assert_eq!(allocate(&mut call).await, None);
    let port = redis.kill();
    wait_metric(&a, "turnd_cluster_up", 0.0, heartbeats(5)).await;
    let mut t = turn(&a, "bob").await;
    assert_eq!(
        allocate(&mut t).await,
        Some(486),
        "closed while Redis is down"
    );
    assert_eq!(
        refresh(&mut call).await,
        None,
        "existing allocations carry on"
    );
    let _redis = Redis::on(port);
    wait_metric(&a, "turnd_cluster_up", 1.0, heartbeats(10)).await;
    let mut t = turn(&a, "bob").await;
    assert_eq!(allocate(&mut t).await, None, "open again");
}

/// `drain_min_allocations`: a SIGTERM drain ends once that few calls remain, long before
/// `drain_timeout`.
#[tokio::test]
async fn a_drain_ends_at_drain_min_allocations() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut a = node_with(
        dir.path(),
        &redis.url(),
        "a",
        "60500-60999",
        "127.0.0.1:0",
        "drain_min_allocations = 1\n[server]\ndrain_timeout = \"30s\"",
        PER_USER,
    );
    let mut calls = vec![turn(&a, "alice").await, turn(&a, "bob").await];
    for c in &mut calls {
        assert_eq!(allocate(c).await, None);
    }
    a.signal("TERM");
    assert_eq!(
        a.exit_within(Duration::from_millis(600)),
        None,
        "2 > 1: draining"
    );
    assert_eq!(refresh_to(&mut calls[1], 0).await, None);
    assert_eq!(
        a.exit_within(Duration::from_secs(3)),
        Some(0),
        "1 left: the drain is over"
    );
}

/// `usage_interval`: a long allocation gets interim records with its counters so far, then
/// its final record.
#[tokio::test]
async fn long_allocations_get_interim_usage_records() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let a = node_with(
        dir.path(),
        &redis.url(),
        "a",
        "61000-61499",
        "127.0.0.1:0",
        "usage_interval = \"500ms\"",
        PER_USER,
    );
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut caller = turn(&a, "alice").await;
    caller.allocate().await;
    caller
        .channel_bind(0x4002, peer.local_addr().unwrap())
        .await;
    let mut buf = [0u8; 1500];
    for _ in 0..10 {
        caller
            .sock
            .send_to(&channel_data(0x4002, &[1u8; 50]), caller.server)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
            .await
            .expect("relayed")
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let read = |r: &mut redis::Connection| -> Vec<(String, String)> {
        let e: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("turnd:usage")
            .arg("-")
            .arg("+")
            .query(r)
            .unwrap();
        e.ids
            .iter()
            .map(|e| {
                (
                    e.get::<String>("reason").unwrap(),
                    e.get::<String>("bytes_to_peer").unwrap(),
                )
            })
            .collect()
    };
    let interim = read(&mut r);
    assert!(
        !interim.is_empty(),
        "interim records while the allocation lives"
    );
    assert!(
        interim
            .iter()
            .all(|(why, bytes)| why == "interim" && bytes == "500"),
        "{interim:?}"
    );
    assert_eq!(refresh_to(&mut caller, 0).await, None);
    tokio::time::sleep(heartbeats(3)).await;
    let all = read(&mut r);
    let last = all.last().unwrap();
    assert!(
        last.0 != "interim" && last.1 == "500",
        "the final record: {all:?}"
    );
}

/// `HGETALL turnd:load:<node>`.
fn published_load(redis: &Redis, node: &str) -> std::collections::HashMap<String, String> {
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HGETALL")
        .arg(format!("turnd:load:{node}"))
        .query(&mut r)
        .unwrap()
}

/// Peer -> client datagrams through `t`'s relay at about 500 per second until `stop`
/// (bounded: 10 s at most).
async fn stream_to(
    t: &mut UdpTurn,
    channel: u16,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = t.allocate().await;
    t.channel_bind(channel, peer.local_addr().unwrap()).await;
    tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(10);
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        let mut sent = 0;
        while !stop.is_cancelled() && Instant::now() < end {
            tick.tick().await;
            peer.send_to(&[5u8; 40], relay).await.unwrap();
            sent += 1;
        }
        sent
    })
}

/// Each node publishes its relayed packets per second and its CPU; between two nodes with
/// as many allocations, the busy node redirects to the one relaying fewer packets.
#[tokio::test]
async fn the_redirect_target_with_equal_allocations_is_the_one_relaying_fewer_packets() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (ua, ub, uc) = (free_udp(), free_udp(), free_udp());
    let a = node_with(
        dir.path(),
        &redis.url(),
        "a",
        "61500-61999",
        &ua,
        &format!("redirect_above = 1\npublic_udp = \"{ua}\""),
        PER_USER,
    );
    let b = node_with(
        dir.path(),
        &redis.url(),
        "b",
        "62000-62499",
        &ub,
        &format!("public_udp = \"{ub}\""),
        PER_USER,
    );
    let c = node_with(
        dir.path(),
        &redis.url(),
        "c",
        "62500-62999",
        &uc,
        &format!("public_udp = \"{uc}\""),
        PER_USER,
    );
    wait_metric(&a, "turnd_cluster_nodes", 3.0, Duration::from_secs(5)).await;
    let mut held = vec![turn(&a, "alice").await, turn(&a, "bob").await];
    for t in &mut held {
        assert_eq!(allocate(t).await, None);
    }
    let (mut on_b, mut on_c) = (turn(&b, "alice").await, turn(&c, "alice").await);
    let ask_a = || async {
        let mut t = turn(&a, "bob").await;
        let r = t.ask(METHOD_ALLOCATE, &[&udp_transport()]).await;
        assert_eq!(code(&r), Some(300), "A is over redirect_above");
        alternate(&r)
    };

    // B relays, C idles (one allocation each): C, although "b" < "c".
    let stop = tokio_util::sync::CancellationToken::new();
    let flow = stream_to(&mut on_b, 0x4003, stop.clone()).await;
    on_c.allocate().await;
    tokio::time::sleep(heartbeats(4)).await;
    let load_b = published_load(&redis, "b");
    let pkts_b: u64 = load_b["pkts"].parse().unwrap();
    assert!(pkts_b > 200, "B publishes ~500 pkt/s: {load_b:?}");
    assert_eq!(load_b["allocations"], "1");
    let cpu_b: f64 = load_b["cpu"].parse().unwrap();
    assert!((0.0..=1.0).contains(&cpu_b), "{load_b:?}");
    assert_eq!(published_load(&redis, "c")["pkts"], "0");
    assert_eq!(ask_a().await, c.udp, "C relays fewer packets");
    stop.cancel();
    let sent_b = flow.await.unwrap();

    // Now C relays and B idles: B.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut on_c2 = turn(&c, "bob").await;
    let flow = stream_to(&mut on_c2, 0x4004, stop.clone()).await;
    assert_eq!(
        refresh_to(&mut on_c, 0).await,
        None,
        "C keeps one allocation"
    );
    tokio::time::sleep(heartbeats(4)).await;
    let pkts_c: u64 = published_load(&redis, "c")["pkts"].parse().unwrap();
    assert!(pkts_c > 200, "{pkts_c}");
    assert_eq!(published_load(&redis, "b")["pkts"], "0");
    assert_eq!(ask_a().await, b.udp, "B relays fewer packets now");
    stop.cancel();
    let sent_c = flow.await.unwrap();
    eprintln!(
        "FIGURE published relayed pkt/s: B {pkts_b} (sent {sent_b}), C {pkts_c} (sent {sent_c}) \
         at ~500 pkt/s offered; B's CPU {cpu_b} of all cores"
    );
    drop((held, on_b, on_c2));
}

/// A throwaway CA and a certificate for 127.0.0.1 it signed: (CA PEM, cert PEM, key PEM).
fn redis_tls_certs() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "turnd fleet-test Redis CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// `redis-server` speaking only TLS (`--port 0 --tls-port`) with `requirepass`, on a free
/// loopback port; killed by PID on drop.
fn redis_tls(dir: &Path, password: &str) -> (Redis, PathBuf) {
    let (ca, cert, key) = redis_tls_certs();
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("redis.pem"),
        dir.join("redis.key"),
    );
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = |f: &PathBuf| f.display().to_string();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &p(&cert_file),
            "--tls-key-file",
            &p(&key_file),
        ])
        .args([
            "--tls-ca-cert-file",
            &p(&ca_file),
            "--tls-auth-clients",
            "no",
        ])
        .args([
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is required for the fleet tests (apt-get install redis-server)");
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "redis-server (TLS) did not listen on {port}; built without TLS?"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis { child, port }, ca_file)
}

/// `rediss://` with `ca_file` and `password_file` against a TLS-only, password-protected
/// `redis-server`: the right password joins the fleet (its lease is in Redis, read back over
/// TLS); a wrong password, or the public roots instead of the CA, leaves the node down
/// (`turnd_cluster_up 0`, one warning without the password) on local quota limits.
#[tokio::test]
async fn rediss_with_a_ca_file_and_a_password_file_joins_and_a_wrong_password_falls_back() {
    const PASSWORD: &str = "fleet-redis-pw-4242";
    let dir = tempfile::tempdir().unwrap();
    let (redis, ca) = redis_tls(dir.path(), PASSWORD);
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let (right, wrong) = (dir.path().join("right-pw"), dir.path().join("wrong-pw"));
    std::fs::write(&right, format!("{PASSWORD}\n")).unwrap();
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let with =
        |pw: &Path, ca_line: &str| format!("password_file = \"{}\"\n{ca_line}", pw.display());
    let ca_line = format!("ca_file = \"{}\"\n", ca.display());
    let good = node_with(
        dir.path(),
        &url,
        "good",
        "63000-63499",
        "127.0.0.1:0",
        &with(&right, &ca_line),
        PER_USER,
    );
    let mut bad = node_with(
        dir.path(),
        &url,
        "badpw",
        "63500-63999",
        "127.0.0.1:0",
        &with(&wrong, &ca_line),
        1,
    );
    let mut untrusting = node_with(
        dir.path(),
        &url,
        "noca",
        "64000-64499",
        "127.0.0.1:0",
        &with(&right, ""),
        PER_USER,
    );
    wait_metric(&good, "turnd_cluster_up", 1.0, Duration::from_secs(5)).await;
    wait_metric(&good, "turnd_cluster_nodes", 1.0, Duration::from_secs(5)).await;
    // Read back over TLS, with the password: the node's lease and load are there.
    let mut r = redis::Client::build_with_tls(
        format!("rediss://:{PASSWORD}@127.0.0.1:{}/0", redis.port),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca).unwrap()),
        },
    )
    .unwrap()
    .get_connection()
    .unwrap();
    let nodes: Vec<String> = redis::cmd("ZRANGE")
        .arg("turnd:nodes")
        .arg(0)
        .arg(-1)
        .query(&mut r)
        .unwrap();
    assert_eq!(
        nodes,
        ["good"],
        "only the node with the password and the CA joined"
    );
    let load: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("turnd:load:good")
        .query(&mut r)
        .unwrap();
    assert!(load.contains_key("allocations"), "{load:?}");
    // Plain text on the TLS port gets nowhere.
    let plain = redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(plain.is_err(), "TLS only: {plain:?}");

    // Several heartbeats later the other two are still down.
    tokio::time::sleep(heartbeats(5)).await;
    for d in [&bad, &untrusting] {
        assert_eq!(metric(d.admin, "turnd_cluster_up").await, 0.0);
    }
    // The documented fallback (quota_fail = "local"): this node's limits alone.
    let mut t = turn(&bad, "alice").await;
    assert_eq!(allocate(&mut t).await, None, "admitted on local limits");
    let mut t2 = turn(&bad, "alice").await;
    assert_eq!(allocate(&mut t2).await, Some(486), "local per-user limit 1");
    let warned = bad.wait_for("the unreachable warning", |v| {
        v["level"] == "WARN" && v.to_string().contains("cluster: Redis unreachable")
    });
    bad.drain_lines();
    let all: String = bad.seen.iter().map(|v| v.to_string()).collect();
    assert!(
        !all.contains("not-the-password"),
        "the password is never logged"
    );
    let warnings = bad
        .seen
        .iter()
        .filter(|v| v.to_string().contains("cluster: Redis unreachable"))
        .count();
    assert_eq!(warnings, 1, "one warning, not one per heartbeat: {warned}");
    assert!(
        warned["error"]
            .as_str()
            .unwrap()
            .contains("AuthenticationFailed"),
        "refused for the password: {warned}"
    );
    let refused = untrusting.wait_for("the unreachable warning", |v| {
        v["level"] == "WARN" && v.to_string().contains("cluster: Redis unreachable")
    });
    assert!(
        refused.to_string().contains("UnknownIssuer"),
        "the public roots do not know the test CA: {refused}"
    );
    drop((t, t2));
}

/// Headless Chromium (libwebrtc's `TurnPort`) whose only TURN server is an overloaded node A
/// gets 300 (Try Alternate) and follows ALTERNATE-SERVER: over UDP its relay candidate is on
/// node B, and over TCP too (a new connection to B carrying A's nonce, which B accepts: stream
/// nonces are bound to the client's IP, not its port). libwebrtc refuses redirects to loopback addresses (crbug 649118:
/// "Blocking attempted redirect to loopback address"), so the fleet runs in a network
/// namespace of its own, A on 192.0.2.1 and B on 192.0.2.2 (a veth pair inside it; nothing
/// leaves it). Needs root and `ip`.
#[test]
fn chromium_follows_the_300_of_an_overloaded_node_to_a_relay_on_another() {
    use crate::common::browser::{check_tools, run_driver};
    const CHROMIUM: &str = "/usr/bin/chromium";
    check_tools("playwright-core", &[CHROMIUM]);
    let ns = crate::policy_netns::Netns::new("fleet-chromium");
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    for dev in ["v0", "v1"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    for a in ["192.0.2.1/24", "192.0.2.2/24"] {
        ns.ip(&["addr", "add", a, "dev", "v0"]);
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(chromium_redirect_in_netns(CHROMIUM, run_driver));
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    });
}

async fn chromium_redirect_in_netns(
    chromium: &'static str,
    run_driver: fn(&str, &[&str], Duration) -> serde_json::Value,
) {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (ua, ub) = ("192.0.2.1:3478", "192.0.2.2:3478");
    let node = |id: &str, relay: &str, addr: &str, extra: &str| {
        node_listening(
            dir.path(),
            &redis.url(),
            id,
            (relay, "50000-50999"),
            &format!("udp = [\"{addr}\"]\ntcp = [\"{addr}\"]"),
            &format!("public_udp = \"{addr}\"\npublic_tcp = \"{addr}\"\n{extra}"),
            10,
        )
    };
    let a = node("a", "192.0.2.1", ua, "redirect_above = 1");
    let mut b = node("b", "192.0.2.2", ub, "");
    wait_metric(&a, "turnd_cluster_nodes", 2.0, Duration::from_secs(5)).await;
    // Two calls on A: over redirect_above = 1.
    let mut held = vec![turn(&a, "bob").await, turn(&a, "bob").await];
    for t in &mut held {
        assert_eq!(allocate(t).await, None);
    }
    // Until A redirects (its next heartbeat sees the two; a loaded machine may delay it
    // past a fixed wait): an Allocate of ours gets the 300 first. One that A still admits
    // is held too (A only gets busier).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut probe = turn(&a, "bob").await;
        let r = probe.ask(METHOD_ALLOCATE, &[&udp_transport()]).await;
        if code(&r) == Some(300) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never redirected: {:?}",
            code(&r)
        );
        held.push(probe);
        // One probe a heartbeat: bob's quota (10) allows 8 more before 486s.
        tokio::time::sleep(heartbeats(1)).await;
    }
    let servers = serde_json::json!([
        {"name": "udp", "url": format!("turn:{ua}?transport=udp"),
         "username": "alice", "credential": "alice-pw"},
        {"name": "tcp", "url": format!("turn:{ua}?transport=tcp"),
         "username": "alice", "credential": "alice-pw"},
    ])
    .to_string();
    // A thread of this one, so in the namespace too; the nodes run on their own meanwhile.
    let out = std::thread::spawn(move || {
        run_driver(
            "redirect.js",
            &[chromium, &servers],
            Duration::from_secs(120),
        )
    })
    .join()
    .unwrap();
    eprintln!("redirect.js: {out}");
    let relays = |transport: &str| -> Vec<serde_json::Value> {
        out["results"][transport]["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["type"] == "relay")
            .cloned()
            .collect()
    };
    // UDP: the redirected Allocate (same socket, so the same client address) succeeds on B.
    let udp = relays("udp");
    assert!(!udp.is_empty(), "udp: no relay candidate: {out}");
    for c in &udp {
        assert_eq!(c["address"], "192.0.2.2", "udp: the relay is on B: {c}");
        assert_eq!(c["url"], format!("turn:{ua}?transport=udp"), "{c}");
    }
    // TCP: libwebrtc follows the 300 too, on a new connection (a new client port), with A's
    // nonce; stream nonces are bound to the client's IP only, so B takes it (a 438 here would
    // be fatal for libwebrtc's Allocate: no TCP relay).
    let tcp = relays("tcp");
    assert!(!tcp.is_empty(), "tcp: no relay candidate: {out}");
    for c in &tcp {
        assert_eq!(c["address"], "192.0.2.2", "tcp: the relay is on B: {c}");
    }
    let refused = metrics(a.admin)
        .await
        .get("turnd_refusals_total{reason=\"try_alternate\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(
        refused >= 2.0,
        "A answered 300 for each transport: {refused}"
    );
    b.drain_lines();
    let created = b
        .seen
        .iter()
        .filter(|v| v["message"] == "allocation created" || v["event"] == "allocation created")
        .count();
    assert!(
        created >= 2,
        "B took Chromium's UDP and TCP allocations: {created}"
    );
    eprintln!("FIGURE Chromium: A answered {refused} Allocates with 300; B created {created}");
    drop(held);
}
