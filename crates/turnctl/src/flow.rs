//! The data path of one allocation during `turnctl load`: send ChannelData or Send
//! indications to this thread's echo peer through the relay, receive the echoes, and record
//! their round-trip times.
//!
//! Each payload starts with its send time (ns since the run started) and a sequence number.
//! With `--rate` a pacer sends on a schedule (open loop); with `--saturate` each allocation
//! keeps `window` packets in flight and sends one for each echo (closed loop), forgiving
//! what has not come back after [`STALL`]. Frames are built once into fixed buffers and only
//! stamped per packet; UDP goes out and in with `sendmmsg`/`recvmmsg`, streams with one
//! write per batch. Nothing is allocated per packet.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use stun::message::METHOD_SEND;
use tokio::io::Interest;
use tokio::time::MissedTickBehavior;
use turnd_proto::frames::{
    indication_header_len, padded, write_channel_header, write_indication_header,
    CHANNEL_DATA_HEADER,
};

use crate::client::{Conn, Link, TurnClient};
use crate::mmsg::Batch;
use crate::stats::Counters;
use crate::wire::relayed_payload;
use crate::worker::{Params, CHANNEL};

/// What the data phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// ChannelData to a bound channel.
    Channel,
    /// Send indications (and Data indications back).
    Send,
    /// No data: hold the allocations for the duration (memory per allocation).
    Idle,
}

/// Payload sizes of the data phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Every payload `--size` bytes.
    Fixed,
    /// Audio and video: mostly single packets of 60-200 bytes, and one event in ten a burst
    /// of 5-20 packets of 1,000-1,200 bytes sent back to back (UDP only).
    Av,
}

/// Largest payload of [`Mix::Av`].
pub const AV_MAX: usize = 1200;

/// Payload sizes of [`Mix::Av`], from a per-allocation xorshift generator (no allocation,
/// a few instructions per packet).
struct AvSizes {
    state: u64,
    burst_left: u32,
}

impl AvSizes {
    fn new(seed: u64) -> AvSizes {
        AvSizes {
            state: seed | 1,
            burst_left: 0,
        }
    }

    fn next_u32(&mut self) -> u32 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        (x >> 32) as u32
    }

    fn in_burst(&self) -> bool {
        self.burst_left > 0
    }

    /// The next payload size.
    fn next(&mut self) -> usize {
        if self.burst_left == 0 && self.next_u32() % 10 == 0 {
            self.burst_left = 5 + self.next_u32() % 16;
        }
        if self.burst_left > 0 {
            self.burst_left -= 1;
            1000 + (self.next_u32() % 201) as usize
        } else {
            60 + (self.next_u32() % 141) as usize
        }
    }
}

/// How long echoes may still arrive after the deadline.
const DRAIN: Duration = Duration::from_millis(500);
/// In saturation, packets not echoed for this long are given up as lost.
const STALL: Duration = Duration::from_millis(200);
/// Send time (8 bytes) and sequence number (4 bytes) at the start of each payload.
pub const STAMP: usize = 12;

/// One data phase of one worker thread, shared by its allocation tasks.
pub struct Flow {
    pub params: Arc<Params>,
    pub start: Instant,
    pub deadline: Instant,
    /// Allocations in this phase on this thread (to stagger paced senders).
    pub allocations: usize,
    pub hist: RefCell<Histogram<u64>>,
    pub sent: Cell<u64>,
    pub received: Cell<u64>,
}

/// Layout of the frames one allocation sends.
#[derive(Clone, Copy)]
struct Frame {
    /// Offset of the payload.
    payload: usize,
    /// Bytes on the wire (padded on streams).
    len: usize,
}

impl Flow {
    fn frame(&self, peer: &SocketAddr, stream: bool) -> Frame {
        self.frame_of(peer, stream, self.params.size)
    }

    fn frame_of(&self, peer: &SocketAddr, stream: bool, size: usize) -> Frame {
        match self.params.mode {
            Mode::Send => Frame {
                payload: indication_header_len(peer),
                len: indication_header_len(peer) + padded(size),
            },
            _ => Frame {
                payload: CHANNEL_DATA_HEADER,
                len: CHANNEL_DATA_HEADER + if stream { padded(size) } else { size },
            },
        }
    }

    fn write_template(&self, buf: &mut [u8], peer: &SocketAddr, stream: bool, tid: &[u8; 12]) {
        let size = self.params.size;
        buf[self.frame(peer, stream).payload..][..size].fill(0);
        self.write_header(buf, peer, stream, tid, size);
    }

    /// The header of a frame with a `size`-byte payload (the payload bytes are left as
    /// they are); returns the frame's length.
    fn write_header(
        &self,
        buf: &mut [u8],
        peer: &SocketAddr,
        stream: bool,
        tid: &[u8; 12],
        size: usize,
    ) -> usize {
        let f = self.frame_of(peer, stream, size);
        let written = match self.params.mode {
            Mode::Send => write_indication_header(buf, METHOD_SEND, tid, peer, size),
            _ => write_channel_header(buf, CHANNEL, size, stream),
        };
        // Invariant: the buffers are sized from `frame()` and `size` is at most 8192.
        assert_eq!(written, Some(f.len), "a frame template fits its buffer");
        f.len
    }

    fn tick(&self) -> Duration {
        match self.params.rate {
            Some(r) => Duration::from_secs_f64(1.0 / r).max(Duration::from_millis(1)),
            None => Duration::from_millis(50),
        }
    }

    fn ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_nanos() as u64
    }

    /// Count and time one message from the server; false when it is not one of our echoes.
    fn on_echo(&self, msg: &[u8], now_ns: u64, hist: &mut Histogram<u64>) -> bool {
        let Some(p) = relayed_payload(msg) else {
            return false;
        };
        if p.len() < STAMP {
            return false;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&p[..8]);
        let us = (now_ns.saturating_sub(u64::from_be_bytes(ts)) / 1000).clamp(1, 60_000_000);
        let _ = hist.record(us);
        true
    }
}

fn stamp(frame: &mut [u8], payload: usize, ns: u64, seq: u32) {
    frame[payload..payload + 8].copy_from_slice(&ns.to_be_bytes());
    frame[payload + 8..payload + STAMP].copy_from_slice(&seq.to_be_bytes());
}

/// When to send: on a schedule, or to keep a window full.
struct Pacer {
    rate: Option<f64>,
    window: u64,
    start: Instant,
    sent: u64,
    received: u64,
    /// Packets given up on (saturation only).
    forgiven: u64,
    last_rx: Instant,
}

impl Pacer {
    fn new(f: &Flow, index: usize) -> Pacer {
        let start = match f.params.rate {
            Some(_) => f.start + f.tick().mul_f64(index as f64 / f.allocations.max(1) as f64),
            None => f.start,
        };
        Pacer {
            rate: f.params.rate,
            window: f.params.window as u64,
            start,
            sent: 0,
            received: 0,
            forgiven: 0,
            last_rx: start,
        }
    }

    fn due(&self, now: Instant) -> usize {
        match self.rate {
            Some(r) => {
                let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
                ((elapsed * r) as u64 + 1).saturating_sub(self.sent) as usize
            }
            None => self
                .window
                .saturating_sub(self.sent - self.received.min(self.sent) - self.forgiven)
                as usize,
        }
    }

    fn on_tick(&mut self, now: Instant) {
        let in_flight = self.sent.saturating_sub(self.received + self.forgiven);
        if self.rate.is_none() && in_flight > 0 && now.duration_since(self.last_rx) > STALL {
            self.forgiven += in_flight;
            self.last_rx = now;
        }
    }
}

/// Drive one allocation's data path until the deadline (plus a short drain); gives the
/// client back for the release phase.
pub async fn run(client: TurnClient, f: Rc<Flow>, index: usize, peer: SocketAddr) -> TurnClient {
    let mut pacer = Pacer::new(&f, index);
    let client = match client.conn.link {
        Link::Udp(_) => udp(client, &f, &mut pacer, &peer).await,
        Link::Stream(_) => stream(client, &f, &mut pacer, &peer).await,
        // Refused by `turnctl load`'s argument check.
        Link::Dtls(_) => client,
    };
    f.sent.set(f.sent.get() + pacer.sent);
    f.received.set(f.received.get() + pacer.received);
    client
}

async fn udp(client: TurnClient, f: &Flow, pacer: &mut Pacer, peer: &SocketAddr) -> TurnClient {
    let Link::Udp(sock) = &client.conn.link else {
        return client;
    };
    let fd = sock.as_raw_fd();
    let totals = &f.params.totals;
    let av = f.params.mix == Mix::Av;
    let fr = f.frame(peer, false);
    let slot = if av {
        f.frame_of(peer, false, AV_MAX).len
    } else {
        fr.len
    };
    let tx_cap = if f.params.rate.is_none() {
        f.params.window.min(128)
    } else if av {
        32
    } else {
        16
    };
    let mut tx = Batch::new(tx_cap, slot);
    let tid: [u8; 12] = rand::random();
    for i in 0..tx_cap {
        f.write_template(tx.slot_mut(i), peer, false, &tid);
    }
    let mut sizes = AvSizes::new(rand::random());
    let mut lens = vec![fr.len; tx_cap];
    let mut rx = Batch::new(64, slot + 64);
    tokio::time::sleep_until(pacer.start.into()).await;
    let mut tick = tokio::time::interval_at(pacer.start.into(), f.tick());
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let now = Instant::now();
        if now >= f.deadline {
            break;
        }
        let mut k = pacer.due(now).min(tx_cap);
        if k > 0 {
            let ns = f.ns(now);
            let mut i = 0;
            while i < k {
                if av {
                    let size = sizes.next();
                    lens[i] = f.write_header(tx.slot_mut(i), peer, false, &tid, size);
                    // A video burst leaves at once, ahead of the schedule (the pacer then
                    // waits until the average rate catches up).
                    if sizes.in_burst() {
                        k = (k + 1).min(tx_cap);
                    }
                }
                stamp(
                    tx.slot_mut(i),
                    fr.payload,
                    ns,
                    (pacer.sent + i as u64) as u32,
                );
                i += 1;
            }
            let n = if av {
                tx.send(fd, k, |i| lens[i])
            } else if f.params.gso {
                tx.send_gso(fd, k, fr.len)
            } else {
                tx.send(fd, k, |_| fr.len)
            };
            let n = n.unwrap_or(0) as u64;
            pacer.sent += n;
            Counters::add(&totals.sent, n);
        }
        tokio::select! {
            biased;
            r = sock.readable() => {
                if r.is_err() { break }
                udp_receive(sock, &mut rx, f, pacer);
            }
            _ = tick.tick() => pacer.on_tick(Instant::now()),
        }
    }
    let end = tokio::time::Instant::from(f.deadline + DRAIN);
    while pacer.received < pacer.sent {
        tokio::select! {
            r = sock.readable() => {
                if r.is_err() { break }
                udp_receive(sock, &mut rx, f, pacer);
            }
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    client
}

fn udp_receive(sock: &tokio::net::UdpSocket, rx: &mut Batch, f: &Flow, pacer: &mut Pacer) {
    let fd = sock.as_raw_fd();
    let mut hist = f.hist.borrow_mut();
    loop {
        let n = match sock.try_io(Interest::READABLE, || rx.recv(fd)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => continue, // a one-shot ICMP error
        };
        let now = Instant::now();
        let ns = f.ns(now);
        let mut got = 0u64;
        let mut bytes = 0u64;
        for i in 0..n {
            if f.on_echo(rx.packet(i), ns, &mut hist) {
                got += 1;
                bytes += rx.len_of(i) as u64;
            }
        }
        if got > 0 {
            pacer.received += got;
            pacer.last_rx = now;
            Counters::add(&f.params.totals.received, got);
            Counters::add(&f.params.totals.received_bytes, bytes);
        }
    }
}

async fn stream(
    mut client: TurnClient,
    f: &Flow,
    pacer: &mut Pacer,
    peer: &SocketAddr,
) -> TurnClient {
    let fr = f.frame(peer, true);
    let tx_cap = if f.params.rate.is_none() {
        f.params.window.min(64)
    } else {
        16
    };
    let mut out = vec![0u8; tx_cap * fr.len];
    let tid: [u8; 12] = rand::random();
    for frame in out.chunks_mut(fr.len) {
        f.write_template(frame, peer, true, &tid);
    }
    tokio::time::sleep_until(pacer.start.into()).await;
    let mut tick = tokio::time::interval_at(pacer.start.into(), f.tick());
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let conn = &mut client.conn;
    loop {
        let now = Instant::now();
        if now >= f.deadline {
            break;
        }
        let k = pacer.due(now).min(tx_cap);
        if k > 0 {
            let ns = f.ns(now);
            for (i, frame) in out.chunks_mut(fr.len).take(k).enumerate() {
                stamp(frame, fr.payload, ns, (pacer.sent + i as u64) as u32);
            }
            if conn.send(&out[..k * fr.len]).await.is_err() {
                return client;
            }
            pacer.sent += k as u64;
            Counters::add(&f.params.totals.sent, k as u64);
        }
        let filled = tokio::select! {
            biased;
            r = conn.fill() => Some(r),
            _ = tick.tick() => None,
        };
        match filled {
            Some(Ok(())) => stream_receive(conn, f, pacer),
            Some(Err(_)) => return client,
            None => pacer.on_tick(Instant::now()),
        }
    }
    let end = tokio::time::Instant::from(f.deadline + DRAIN);
    while pacer.received < pacer.sent {
        match tokio::time::timeout_at(end, conn.fill()).await {
            Ok(Ok(())) => stream_receive(conn, f, pacer),
            _ => break,
        }
    }
    client
}

fn stream_receive(conn: &mut Conn, f: &Flow, pacer: &mut Pacer) {
    let now = Instant::now();
    let ns = f.ns(now);
    let mut hist = f.hist.borrow_mut();
    let mut got = 0u64;
    while let Ok(Some(r)) = conn.next_frame() {
        if f.on_echo(conn.frame(r), ns, &mut hist) {
            got += 1;
        }
    }
    if got > 0 {
        pacer.received += got;
        pacer.last_rx = now;
        Counters::add(&f.params.totals.received, got);
        Counters::add(&f.params.totals.received_bytes, got * f.params.size as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The av mix: audio-like packets of 60-200 B, and video-like bursts of 5-20 packets of
    /// 1,000-1,200 B, about one event in ten.
    #[test]
    fn av_sizes_are_audio_packets_and_video_bursts() {
        let mut g = AvSizes::new(0x1234_5678_9abc_def0);
        let (mut audio, mut video, mut bursts) = (0usize, 0usize, Vec::new());
        let mut run = 0;
        for _ in 0..100_000 {
            let s = g.next();
            if (60..=200).contains(&s) {
                audio += 1;
                if run > 0 {
                    bursts.push(run);
                    run = 0;
                }
            } else {
                assert!((1000..=AV_MAX).contains(&s), "size {s}");
                video += 1;
                run += 1;
            }
        }
        assert!(
            audio > 20_000 && video > 20_000,
            "{audio} audio, {video} video"
        );
        // Bursts can touch (a new one may start right after the last), so a run is at least 5.
        assert!(bursts.iter().all(|&b| b >= 5), "{bursts:?}");
        let singles = bursts.iter().filter(|&&b| b <= 20).count();
        assert!(
            singles * 10 > bursts.len() * 8,
            "most runs are one burst of 5-20"
        );
        let events = audio + bursts.len();
        let share = bursts.len() as f64 / events as f64;
        assert!(
            (0.07..0.13).contains(&share),
            "bursts are {share:.3} of events"
        );
    }
}
