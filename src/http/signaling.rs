//! WebSocket signaling at `/ws`: two browsers meet in a room and exchange SDP and ICE
//! candidates through the server. Room state lives in [`super::rooms`] (no I/O); this module
//! is the thin socket side.
//!
//! # Protocol
//! Every message is one JSON object in a text frame, with a string field `type`.
//!
//! Client to server:
//! - `{"type":"join","room":"abc"}` — enter room `abc` (1–64 characters `[A-Za-z0-9_-]`).
//! - `{"type":"offer"|"answer"|"candidate", ...}` — relayed verbatim (the exact text) to the
//!   other participant; the server looks only at `type`. Conventionally `{"type":"offer",
//!   "sdp":"..."}`, `{"type":"candidate","candidate":{...RTCIceCandidateInit}}`. Sent while
//!   alone in the room, it is dropped.
//! - `{"type":"leave"}` — leave the room (closing the socket does the same).
//!
//! Server to client:
//! - `{"type":"joined","room":"abc","peers":n,"initiator":bool}` — `peers` is the number of
//!   participants that were already there (0 or 1); `initiator` is true when there was one:
//!   the newcomer creates the offer.
//! - `{"type":"peer-joined"}` — someone joined your room (expect their offer).
//! - `{"type":"peer-left"}` — the other participant left or disconnected.
//! - the other participant's `offer`, `answer` and `candidate` messages, unchanged.
//! - `{"type":"error","code":C,"message":"..."}` with `C` one of `room-full` (two are in it
//!   already), `bad-room` (invalid room code), `bad-message` (not JSON, no or unknown
//!   `type`, binary frame, or `join` while already in a room), `not-in-room` (relay or leave
//!   before `join`), `rate-limited` (more than 5 joins in a burst, then one per 2 s, per
//!   socket), `too-large` (see below). Errors other than `too-large` keep the socket open.
//!
//! Presence events coalesce: a `peer-joined` not yet sent is cancelled by the `peer-left`
//! after it, so another participant's join/leave loop cannot fill a waiter's queue.
//!
//! Limits: a message over `[signaling] max_message_bytes` closes the socket with 1009; at
//! most `max_connections_per_ip` sockets per client IP (IPv6: per /64) and `max_websockets`
//! in total, more get HTTP 429; buffers start small (an idle socket costs a few KiB);
//! the Host header must pass [`super::ice::request_host`] (it must name `public_host` when
//! that is set: no DNS rebinding), else HTTP 400; the `Origin` header must be visible ASCII
//! and in `allowed_origins`, or when that is empty match the Host header (same origin), else
//! HTTP 403 (clients that send no Origin, i.e. not browsers, are let in). The server pings every 20 s and, at a ping, closes a socket that has been silent
//! for over 45 s. On shutdown sockets are closed with 1001.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rooms::{ConnId, JoinError, RoomCode, Rooms};
use super::{ip_key, json_error, App, Remote};
use crate::config;

const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A socket from which nothing (not even a pong) arrived for this long is closed.
const DEAD_AFTER: Duration = Duration::from_secs(45);
/// A send to a client that does not read for this long closes its socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one client; a client that falls this far behind is closed. Presence
/// events coalesce (a `peer-joined` still queued is cancelled by the `peer-left` after it),
/// so another participant's join/leave loop cannot fill it.
const OUTBOX_LEN: usize = 64;
/// Joins one socket may make: bursts of [`JOIN_BURST`], then one per [`JOIN_EVERY`].
const JOIN_BURST: u32 = 5;
const JOIN_EVERY: Duration = Duration::from_secs(2);
/// Initial read buffer of a socket (tungstenite's default is 128 KiB, allocated per socket
/// whether used or not); it grows up to the message limit when a large message arrives.
const READ_BUFFER: usize = 4 * 1024;

/// WebSocket close codes (RFC 6455 §7.4.1).
mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// What one inbound message asks the connection to do; computed by [`dispatch`] without I/O.
#[derive(Debug, Default, PartialEq)]
pub struct Actions {
    /// Sent back on this socket.
    pub reply: Option<String>,
    /// Sent to other connections.
    pub deliver: Vec<(ConnId, String)>,
}

/// A server-to-client error message.
pub fn error_message(code: &str, message: &str) -> String {
    serde_json::json!({ "type": "error", "code": code, "message": message }).to_string()
}

fn typed(t: &str) -> String {
    serde_json::json!({ "type": t }).to_string()
}

const PEER_JOINED: &str = r#"{"type":"peer-joined"}"#;
const PEER_LEFT: &str = r#"{"type":"peer-left"}"#;

/// Apply one text message from `conn` to `rooms`.
pub fn dispatch(rooms: &mut Rooms, conn: ConnId, text: &str) -> Actions {
    dispatch_limited(rooms, conn, text, || true)
}

/// [`dispatch`], asking `may_join` before each join (false: `rate-limited`, nothing changes).
pub fn dispatch_limited(
    rooms: &mut Rooms,
    conn: ConnId,
    text: &str,
    may_join: impl FnOnce() -> bool,
) -> Actions {
    let reply = |m: String| Actions {
        reply: Some(m),
        deliver: Vec::new(),
    };
    let Ok(serde_json::Value::Object(msg)) = serde_json::from_str::<serde_json::Value>(text) else {
        return reply(error_message("bad-message", "expected a JSON object"));
    };
    let Some(kind) = msg.get("type").and_then(|t| t.as_str()) else {
        return reply(error_message(
            "bad-message",
            "missing string field \"type\"",
        ));
    };
    match kind {
        "join" if !may_join() => reply(error_message(
            "rate-limited",
            "too many joins from this socket; wait a moment",
        )),
        "join" => join(rooms, conn, msg.get("room").and_then(|r| r.as_str())),
        "offer" | "answer" | "candidate" => match rooms.others(conn) {
            None => reply(error_message("not-in-room", "join a room first")),
            Some(others) => Actions {
                reply: None,
                deliver: others.into_iter().map(|o| (o, text.to_string())).collect(),
            },
        },
        "leave" => match rooms.room_of(conn) {
            None => reply(error_message("not-in-room", "not in a room")),
            Some(_) => Actions {
                reply: None,
                deliver: left(rooms, conn),
            },
        },
        _ => reply(error_message("bad-message", "unknown message type")),
    }
}

fn join(rooms: &mut Rooms, conn: ConnId, room: Option<&str>) -> Actions {
    let fail = |code, text| Actions {
        reply: Some(error_message(code, text)),
        deliver: Vec::new(),
    };
    let Some(code) = room.and_then(RoomCode::parse) else {
        return fail(
            "bad-room",
            "room codes are 1-64 characters of A-Z a-z 0-9 _ -",
        );
    };
    match rooms.join(conn, code.clone()) {
        Err(JoinError::RoomFull) => fail("room-full", "this room already has two participants"),
        Err(JoinError::AlreadyJoined) => fail("bad-message", "already in a room; leave first"),
        Ok(j) => Actions {
            reply: Some(
                serde_json::json!({
                    "type": "joined", "room": code.as_str(),
                    "peers": j.others.len(), "initiator": j.initiator,
                })
                .to_string(),
            ),
            deliver: j
                .others
                .into_iter()
                .map(|o| (o, typed("peer-joined")))
                .collect(),
        },
    }
}

/// Take `conn` out of its room; the `peer-left` messages for those who stay.
pub fn left(rooms: &mut Rooms, conn: ConnId) -> Vec<(ConnId, String)> {
    rooms
        .leave(conn)
        .into_iter()
        .map(|o| (o, typed("peer-left")))
        .collect()
}

/// How the server reaches one connection's task: a bounded queue under the hub's lock.
struct Outbox {
    queue: VecDeque<String>,
    wake: Arc<Notify>,
    /// Cancelled to close a connection that fell behind.
    kick: CancellationToken,
}

/// Rooms plus the outbox of every connection, behind one lock that is never held across an
/// `.await`.
#[derive(Default)]
struct Hub {
    rooms: Rooms,
    outbox_by_conn: HashMap<ConnId, Outbox>,
}

impl Hub {
    /// Queue `deliver`; a connection whose outbox is full is kicked.
    fn deliver(&mut self, deliver: Vec<(ConnId, String)>) {
        for (to, text) in deliver {
            let Some(out) = self.outbox_by_conn.get_mut(&to) else {
                continue;
            };
            // A join the client has not been told of yet, undone: tell it nothing. (With two
            // seats per room, both refer to the same participant.)
            if text == PEER_LEFT && out.queue.back().is_some_and(|b| b == PEER_JOINED) {
                out.queue.pop_back();
                continue;
            }
            if out.queue.len() >= OUTBOX_LEN {
                out.kick.cancel();
                continue;
            }
            out.queue.push_back(text);
            out.wake.notify_one();
        }
    }

    /// The next message queued for `conn`.
    fn next_for(&mut self, conn: ConnId) -> Option<String> {
        self.outbox_by_conn.get_mut(&conn)?.queue.pop_front()
    }
}

/// The signaling endpoint's shared state.
pub struct Signaling {
    hub: Mutex<Hub>,
    next_id: AtomicU64,
    sockets_by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    allowed_origins: Vec<String>,
    max_per_ip: usize,
    max_total: usize,
    max_message_bytes: usize,
    shutdown: CancellationToken,
}

/// One open socket counted against its IP; released on drop.
struct Slot {
    ip: IpAddr,
    sockets_by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.sockets_by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Signaling {
    pub fn new(cfg: &config::Signaling, shutdown: CancellationToken) -> Self {
        Signaling {
            hub: Mutex::default(),
            next_id: AtomicU64::new(1),
            sockets_by_ip: Arc::default(),
            allowed_origins: cfg
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            max_per_ip: cfg.max_connections_per_ip,
            max_total: cfg.max_websockets,
            max_message_bytes: cfg.max_message_bytes,
            shutdown,
        }
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count a socket for `ip`; `None` over the per-IP or total cap.
    fn acquire(&self, ip: IpAddr) -> Option<Slot> {
        let key = ip_key(ip);
        let mut m = self.sockets_by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = m.values().sum();
        let n = m.entry(key).or_insert(0);
        if *n >= self.max_per_ip || total >= self.max_total {
            if *n == 0 {
                m.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            ip: key,
            sockets_by_ip: self.sockets_by_ip.clone(),
        })
    }
}

impl Signaling {
    /// Whether the request's `Origin` may use this server (`/ws` and `/api/ice-servers`): no
    /// Origin passes (not a browser), one that is not visible ASCII never does, others per
    /// [`origin_allowed`]. The Host header it is compared with has been checked against
    /// `public_host` by the caller ([`super::ice::request_host`]).
    pub(crate) fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        origin_allowed(&self.allowed_origins, Some(origin), host)
    }
}

/// Whether a WebSocket request with this `Origin` may connect. `allowed` is lower-case
/// without trailing slashes; empty means same origin as `host`.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        // Browsers always send Origin on WebSocket requests; other clients are not the
        // cross-site threat this check is about.
        return true;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a == "*" || *a == origin);
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
}

/// `GET /ws`: check origin and caps, then upgrade.
pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    ConnectInfo(Remote(remote)): ConnectInfo<Remote>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let sig = &app.signaling;
    if app.ice.host_for(&headers).is_none() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad-host",
            "the Host header is not this server's name: set [signaling] public_host",
        );
    }
    if !sig.origin_ok(&headers) {
        return json_error(
            StatusCode::FORBIDDEN,
            "bad-origin",
            "this origin may not use the signaling endpoint ([signaling] allowed_origins)",
        );
    }
    let Some(slot) = sig.acquire(remote.ip()) else {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-connections",
            "too many signaling connections from this address",
        );
    };
    let max = sig.max_message_bytes;
    // Frames go out as they are sent (no 128 KiB write buffer per socket); a socket whose
    // peer does not read may hold one message beyond that before it counts as broken.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER.min(max))
        .write_buffer_size(0)
        .max_write_buffer_size(2 * max + READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            run(app, socket).await;
        })
}

/// Why a connection loop ended.
enum End {
    /// Closed by the client or the network: nothing to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

async fn run(app: Arc<App>, mut socket: WebSocket) {
    let sig = &app.signaling;
    let id = ConnId(sig.next_id.fetch_add(1, Ordering::Relaxed));
    let wake = Arc::new(Notify::new());
    let kick = CancellationToken::new();
    sig.hub().outbox_by_conn.insert(
        id,
        Outbox {
            queue: VecDeque::new(),
            wake: wake.clone(),
            kick: kick.clone(),
        },
    );
    let end = serve_socket(sig, id, &mut socket, &wake, &kick).await;
    {
        let mut hub = sig.hub();
        hub.outbox_by_conn.remove(&id);
        let deliver = left(&mut hub.rooms, id);
        hub.deliver(deliver);
    }
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    }
}

async fn send(socket: &mut WebSocket, text: String) -> Result<(), End> {
    send_frame(socket, Message::Text(text.into())).await
}

/// Send one frame; a client that does not take it within [`SEND_TIMEOUT`] is closed.
async fn send_frame(socket: &mut WebSocket, frame: Message) -> Result<(), End> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Close(close::POLICY, "not reading")),
    }
}

/// The connection loop: inbound frames, relayed messages, pings, shutdown.
async fn serve_socket(
    sig: &Signaling,
    id: ConnId,
    socket: &mut WebSocket,
    wake: &Notify,
    kick: &CancellationToken,
) -> End {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    let mut joins = JoinBudget::new(Instant::now());
    loop {
        let step = tokio::select! {
            () = sig.shutdown.cancelled() => Err(End::Close(close::GOING_AWAY, "server stopping")),
            () = kick.cancelled() => Err(End::Close(close::POLICY, "too far behind")),
            _ = ping.tick() => {
                if last_heard.elapsed() > DEAD_AFTER {
                    Err(End::Gone)
                } else {
                    send_frame(socket, Message::Ping(Default::default())).await
                }
            }
            () = wake.notified() => flush(sig, id, socket).await,
            inbound = socket.recv() => {
                last_heard = Instant::now();
                on_inbound(sig, id, socket, inbound, &mut joins).await
            }
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// Send everything queued for `id` (the lock is not held across a send).
async fn flush(sig: &Signaling, id: ConnId, socket: &mut WebSocket) -> Result<(), End> {
    loop {
        let next = sig.hub().next_for(id);
        match next {
            Some(text) => send(socket, text).await?,
            None => return Ok(()),
        }
    }
}

/// A socket's join allowance (GCRA): bursts of [`JOIN_BURST`], one per [`JOIN_EVERY`].
pub struct JoinBudget {
    /// When the allowance is back to full.
    full_at: Instant,
}

impl JoinBudget {
    pub fn new(now: Instant) -> Self {
        JoinBudget { full_at: now }
    }

    /// Spend one join at `now`; false when none is left.
    pub fn take(&mut self, now: Instant) -> bool {
        let next = self.full_at.max(now) + JOIN_EVERY;
        if next.duration_since(now) > JOIN_EVERY * JOIN_BURST {
            return false;
        }
        self.full_at = next;
        true
    }
}

async fn on_inbound(
    sig: &Signaling,
    id: ConnId,
    socket: &mut WebSocket,
    inbound: Option<Result<Message, axum::Error>>,
    joins: &mut JoinBudget,
) -> Result<(), End> {
    match inbound {
        None | Some(Ok(Message::Close(_))) => Err(End::Gone),
        Some(Err(e)) => Err(read_error(socket, e).await),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
        Some(Ok(Message::Binary(_))) => {
            send(
                socket,
                error_message("bad-message", "binary frames are not used"),
            )
            .await
        }
        Some(Ok(Message::Text(text))) => {
            let actions = {
                let mut hub = sig.hub();
                let may_join = || joins.take(Instant::now());
                let actions = dispatch_limited(&mut hub.rooms, id, text.as_str(), may_join);
                hub.deliver(actions.deliver);
                actions.reply
            };
            match actions {
                Some(reply) => send(socket, reply).await,
                None => Ok(()),
            }
        }
    }
}

/// A read error: an oversized message gets a `too-large` error and close code 1009; anything
/// else (reset, protocol violation) just ends the connection.
async fn read_error(socket: &mut WebSocket, e: axum::Error) -> End {
    let inner = e.into_inner();
    let too_big = matches!(
        inner.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    );
    if !too_big {
        return End::Gone;
    }
    let _ = send(
        socket,
        error_message("too-large", "message over the size limit"),
    )
    .await;
    End::Close(close::TOO_BIG, "message too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    fn reply_code(a: &Actions) -> String {
        json(a.reply.as_deref().unwrap())["code"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn join_offer_answer_leave() {
        let mut r = Rooms::new();
        let a = dispatch(&mut r, ConnId(1), r#"{"type":"join","room":"abc"}"#);
        let j = json(a.reply.as_deref().unwrap());
        assert_eq!(j["type"], "joined");
        assert_eq!(j["room"], "abc");
        assert_eq!(j["peers"], 0);
        assert_eq!(j["initiator"], false);
        assert!(a.deliver.is_empty());

        let b = dispatch(&mut r, ConnId(2), r#"{"type":"join","room":"abc"}"#);
        assert_eq!(json(b.reply.as_deref().unwrap())["initiator"], true);
        assert_eq!(
            b.deliver,
            vec![(ConnId(1), r#"{"type":"peer-joined"}"#.into())]
        );

        let offer = r#"{"type":"offer","sdp":"v=0 …", "extra":[1,2]}"#;
        let o = dispatch(&mut r, ConnId(2), offer);
        assert_eq!(o.reply, None);
        assert_eq!(o.deliver, vec![(ConnId(1), offer.to_string())]);

        let l = dispatch(&mut r, ConnId(1), r#"{"type":"leave"}"#);
        assert_eq!(
            l.deliver,
            vec![(ConnId(2), r#"{"type":"peer-left"}"#.into())]
        );
        // Alone now: relayed messages are dropped.
        let c = dispatch(&mut r, ConnId(2), r#"{"type":"candidate","candidate":{}}"#);
        assert_eq!(c, Actions::default());
    }

    #[test]
    fn errors_have_codes() {
        let mut r = Rooms::new();
        let cases = [
            ("not json", "bad-message"),
            ("[1,2]", "bad-message"),
            (r#"{"room":"x"}"#, "bad-message"),
            (r#"{"type":"dance"}"#, "bad-message"),
            (r#"{"type":"join"}"#, "bad-room"),
            (r#"{"type":"join","room":"a b"}"#, "bad-room"),
            (r#"{"type":"offer","sdp":""}"#, "not-in-room"),
            (r#"{"type":"leave"}"#, "not-in-room"),
        ];
        for (input, code) in cases {
            assert_eq!(
                reply_code(&dispatch(&mut r, ConnId(1), input)),
                code,
                "{input}"
            );
        }
        dispatch(&mut r, ConnId(1), r#"{"type":"join","room":"x"}"#);
        dispatch(&mut r, ConnId(2), r#"{"type":"join","room":"x"}"#);
        let full = dispatch(&mut r, ConnId(3), r#"{"type":"join","room":"x"}"#);
        assert_eq!(reply_code(&full), "room-full");
        let twice = dispatch(&mut r, ConnId(1), r#"{"type":"join","room":"y"}"#);
        assert_eq!(reply_code(&twice), "bad-message");
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        let host = Some("127.0.0.1:8080");
        assert!(origin_allowed(&none, None, host));
        assert!(origin_allowed(&none, Some("http://127.0.0.1:8080"), host));
        assert!(origin_allowed(&none, Some("https://127.0.0.1:8080"), host));
        assert!(!origin_allowed(&none, Some("http://evil.example"), host));
        assert!(!origin_allowed(&none, Some("http://127.0.0.1:8081"), host));
        assert!(!origin_allowed(&none, Some("null"), host));
        assert!(!origin_allowed(&none, Some("http://127.0.0.1:8080"), None));
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&list, Some("https://APP.example/"), host));
        assert!(!origin_allowed(&list, Some("http://127.0.0.1:8080"), host));
        let any = vec!["*".to_string()];
        assert!(origin_allowed(&any, Some("http://whatever"), host));
    }

    #[test]
    fn sockets_are_capped_per_ip_and_released() {
        let mut cfg = crate::config::Config::for_tests().signaling;
        cfg.max_connections_per_ip = 2;
        let s = Signaling::new(&cfg, CancellationToken::new());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = s.acquire(ip).unwrap();
        let _b = s.acquire(ip).unwrap();
        assert!(s.acquire(ip).is_none());
        assert!(s.acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        assert!(s.acquire(ip).is_some());
    }

    #[test]
    fn joins_are_rate_limited_per_socket() {
        let t0 = Instant::now();
        let mut b = JoinBudget::new(t0);
        assert!((0..JOIN_BURST).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + JOIN_EVERY));
        assert!(!b.take(t0 + JOIN_EVERY));
        let mut r = Rooms::new();
        let a = dispatch_limited(&mut r, ConnId(1), r#"{"type":"join","room":"x"}"#, || false);
        assert_eq!(reply_code(&a), "rate-limited");
        assert_eq!(r.room_count(), 0);
    }

    fn hub_with(conn: ConnId) -> Hub {
        let mut hub = Hub::default();
        hub.outbox_by_conn.insert(
            conn,
            Outbox {
                queue: VecDeque::new(),
                wake: Arc::new(Notify::new()),
                kick: CancellationToken::new(),
            },
        );
        hub
    }

    #[test]
    fn presence_events_coalesce() {
        let a = ConnId(1);
        let mut hub = hub_with(a);
        for _ in 0..1000 {
            hub.deliver(vec![(a, PEER_JOINED.into())]);
            hub.deliver(vec![(a, PEER_LEFT.into())]);
        }
        assert!(hub.outbox_by_conn[&a].queue.is_empty());
        assert!(!hub.outbox_by_conn[&a].kick.is_cancelled());
        // A leave then a join is a change of peer: both are told.
        hub.deliver(vec![(a, PEER_LEFT.into()), (a, PEER_JOINED.into())]);
        assert_eq!(hub.next_for(a).as_deref(), Some(PEER_LEFT));
        assert_eq!(hub.next_for(a).as_deref(), Some(PEER_JOINED));
        assert_eq!(hub.next_for(a), None);
        // Relayed messages are never dropped silently: a full outbox kicks.
        for i in 0..=OUTBOX_LEN {
            hub.deliver(vec![(a, format!("{{\"n\":{i}}}"))]);
        }
        assert!(hub.outbox_by_conn[&a].kick.is_cancelled());
        assert_eq!(typed("peer-joined"), PEER_JOINED);
        assert_eq!(typed("peer-left"), PEER_LEFT);
    }

    #[test]
    fn sockets_are_capped_in_total() {
        let mut cfg = crate::config::Config::for_tests().signaling;
        cfg.max_websockets = 2;
        let s = Signaling::new(&cfg, CancellationToken::new());
        let _a = s.acquire("192.0.2.1".parse().unwrap()).unwrap();
        let _b = s.acquire("192.0.2.2".parse().unwrap()).unwrap();
        assert!(s.acquire("192.0.2.3".parse().unwrap()).is_none());
    }
}
