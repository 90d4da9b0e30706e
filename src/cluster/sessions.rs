//! One session view for the fleet. Every heartbeat a node writes its sessions to the hash
//! `turnd:sessions:<node>` (session id -> the admin API's JSON plus `node`), replaced in one
//! `MULTI` and expiring after `lease`, so a dead node's sessions leave the view with its
//! quota share. The admin API of any node reads every live node's hash; a kill is a `PUBLISH`
//! to `turnd:kill:<node>` (one session) or `turnd:kill` (a user's sessions on every node),
//! which each node's subscriber task turns into its own local kill. The view is as old as
//! the last heartbeat (byte counts included).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

use super::PREFIX;
use crate::net::Control;
use turnd_proto::engine::SessionId;

/// What a kill message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kill {
    /// One session of the named node.
    Session { node: String, id: SessionId },
    /// Every session of a user, on every node.
    User(String),
}

impl Kill {
    fn channel(&self) -> String {
        match self {
            Kill::Session { node, .. } => format!("{PREFIX}kill:{node}"),
            Kill::User(_) => format!("{PREFIX}kill"),
        }
    }

    fn payload(&self) -> String {
        match self {
            Kill::Session { id, .. } => format!("s {id}"),
            Kill::User(user) => format!("u {user}"),
        }
    }

    /// A received payload; `None` for anything else (ignored).
    fn parse(payload: &str, node: &str) -> Option<Kill> {
        match payload.split_once(' ')? {
            ("s", id) => Some(Kill::Session {
                node: node.to_string(),
                id: id.parse().ok()?,
            }),
            ("u", user) if !user.is_empty() => Some(Kill::User(user.to_string())),
            _ => None,
        }
    }
}

/// Replace this node's published sessions (one `MULTI`: DEL, HSET, PEXPIRE); returns them.
pub(super) async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    control: &Arc<Control>,
    node: &str,
    lease: Duration,
) -> anyhow::Result<Vec<turnd_proto::engine::SessionInfo>> {
    let c = control.clone();
    let sessions = tokio::task::spawn_blocking(move || c.sessions(None))
        .await
        .context("sessions")?;
    let key = format!("{PREFIX}sessions:{node}");
    let mut pipe = redis::pipe();
    pipe.atomic().del(&key).ignore();
    for s in &sessions {
        let mut v = crate::admin::session_json(s);
        v["node"] = node.into();
        pipe.hset(&key, s.id.get(), v.to_string()).ignore();
    }
    pipe.pexpire(&key, lease.as_millis() as i64).ignore();
    pipe.exec_async(conn).await?;
    Ok(sessions)
}

/// The fleet's sessions (of `user` only, when given), from every live node's hash.
pub async fn list(
    client: &redis::Client,
    timeout: Duration,
    user: Option<&str>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut conn = super::connect(client, timeout).await?;
    tokio::time::timeout(timeout, async {
        let nodes: Vec<String> = conn.zrange(format!("{PREFIX}nodes"), 0, -1).await?;
        let mut out = Vec::new();
        for node in nodes {
            let values: Vec<String> = conn.hvals(format!("{PREFIX}sessions:{node}")).await?;
            out.extend(
                values
                    .iter()
                    .filter_map(|v| serde_json::from_str::<serde_json::Value>(v).ok())
                    .filter(|v| user.is_none_or(|u| v["user"] == u)),
            );
        }
        anyhow::Ok(out)
    })
    .await
    .context("Redis timed out")?
}

/// Send `kill` to its node(s); the number of nodes that received it.
pub async fn send(client: &redis::Client, timeout: Duration, kill: &Kill) -> anyhow::Result<usize> {
    let mut conn = super::connect(client, timeout).await?;
    let n: usize = tokio::time::timeout(timeout, conn.publish(kill.channel(), kill.payload()))
        .await
        .context("Redis timed out")??;
    Ok(n)
}

/// Until `shutdown`: subscribe to this node's kill channels and carry the kills out locally;
/// reconnect every `retry` while Redis is away.
pub(super) async fn listen(
    client: redis::Client,
    node: String,
    control: Arc<Control>,
    retry: Duration,
    shutdown: CancellationToken,
) {
    let channels = [format!("{PREFIX}kill"), format!("{PREFIX}kill:{node}")];
    loop {
        let pubsub = tokio::time::timeout(retry, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channels[..]).await?;
            redis::RedisResult::Ok(ps)
        })
        .await;
        if let Ok(Ok(mut ps)) = pubsub {
            let mut messages = ps.on_message();
            loop {
                let msg = tokio::select! {
                    m = messages.next() => m,
                    _ = shutdown.cancelled() => return,
                };
                let Some(msg) = msg else { break };
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                let Some(kill) = Kill::parse(&payload, &node) else {
                    continue;
                };
                let c = control.clone();
                let ended = tokio::task::spawn_blocking(move || match &kill {
                    Kill::Session { id, .. } => usize::from(c.kill_session(*id)),
                    Kill::User(user) => c.kill_user(user),
                })
                .await
                .unwrap_or(0);
                tracing::info!(ended, "cluster: sessions ended on request from the fleet");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_messages_round_trip_and_junk_is_ignored() {
        for k in [
            Kill::Session {
                node: "b".into(),
                id: "42".parse().unwrap(),
            },
            Kill::User("alice smith".into()),
        ] {
            assert_eq!(Kill::parse(&k.payload(), "b"), Some(k));
        }
        for junk in ["", "s", "s x", "u ", "x 1", "s 99999999999999999999999"] {
            assert_eq!(Kill::parse(junk, "b"), None, "{junk:?}");
        }
    }
}
