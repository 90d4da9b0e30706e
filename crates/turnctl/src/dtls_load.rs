//! `turnctl load --dtls`: N allocations over DTLS (RFC 7350), one DTLS 1.2 session each
//! (a real handshake with the server, long-term credentials, a ChannelBind to a plain UDP
//! echo-less peer of turnctl's own), then ChannelData client -> peer, open loop: at
//! `--rate` per allocation or as fast as the generator can send.
//!
//! To offer more than one server core can decrypt, the records are **pre-encrypted**: after
//! the handshakes each session seals a run of application-data records (each a complete
//! ChannelData, one record per datagram) in sequence order, within a memory budget
//! (`--dtls-mib`, at most 512 MiB in all), and the senders hand them to the kernel with
//! `sendmmsg` (or `UDP_SEGMENT` with `--gso`) without touching them again. The records are
//! not cycled: DTLS servers keep a replay window (dimpl's and OpenSSL's: 64 records), so a
//! record sent twice, or one more than 64 behind the newest, is dropped undecrypted; each
//! record leaves once, and the run ends early (`records_ran_out`) when the budget is spent.
//! The peers count what the server decrypted and relayed.
//!
//! With `--direct` the sessions are set up with the server as above, then every client
//! socket is connected to its own peer socket instead: the same records, the same sends,
//! no server. What arrives is the generator's ceiling.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use turnd_proto::engine::Transport;
use turnd_proto::frames::write_channel_header;

use crate::client::{ClientError, Conn, Credentials, Link, TlsTarget, TurnClient};
use crate::flow::{Mix, Mode};
use crate::load::LoadArgs;
use crate::mmsg::{Batch, RunSender};
use crate::stats::{thread_id, CpuSample, CpuUse};

/// The channel every allocation binds (each allocation has its own channel space).
const CHANNEL: u16 = 0x4000;
/// Records per `sendmmsg` for one session (the server sees bursts of this many).
const BURST: usize = 32;
/// The most pre-encrypted records may take, in MiB, over all sessions.
pub const MAX_RECORDS_MIB: usize = 512;
/// How long the peers wait for the last relayed records after the senders stop.
const DRAIN: Duration = Duration::from_millis(300);

/// The flags `--dtls` uses; the rest of `turnctl load`'s are refused.
pub fn validate(a: &LoadArgs) -> anyhow::Result<()> {
    if a.mode != Mode::Channel || a.mix != Mix::Fixed {
        bail!("--dtls sends ChannelData of --size bytes (--mode channel, --mix fixed)");
    }
    if a.peers != 1 && a.peers != 0 {
        bail!("--dtls binds one peer socket per allocation (--peers has no effect)");
    }
    if !(1..=MAX_RECORDS_MIB).contains(&a.dtls_mib) {
        bail!("--dtls-mib must be 1..={MAX_RECORDS_MIB}");
    }
    if a.size > 1200 {
        bail!("--dtls: --size must be at most 1200 bytes (one record per datagram)");
    }
    Ok(())
}

/// One allocation: its DTLS client and the peer socket its channel points at.
struct Session {
    client: TurnClient,
    peer: UdpSocket,
}

/// What one sender thread did.
#[derive(Default)]
struct Sent {
    records: u64,
    errors: u64,
    would_block: u64,
    ran_out: bool,
    first_error: Option<String>,
}

/// Run `turnctl load --dtls`; Ok(false) when nothing arrived.
pub fn run(args: &LoadArgs) -> anyhow::Result<bool> {
    crate::load::validate(args)?;
    validate(args)?;
    let server = args.server.resolve()?;
    let tls = args
        .tls
        .target(Transport::Dtls, &args.server.host)?
        .context("DTLS needs a TLS configuration")?;
    let creds = args.auth.credentials()?;
    let peer_ip = crate::load::peer_ip(server, args.ipv6)?;
    crate::load::raise_nofile(2 * args.allocations + 256);
    let note = |m: &str| {
        if !args.quiet {
            eprintln!("{m}");
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();

    note(&format!(
        "allocating {} over DTLS ({} at a time)",
        args.allocations, args.concurrency
    ));
    let t0 = Instant::now();
    let (mut sessions, failed, first_error) =
        local.block_on(&rt, open_all(args, server, &tls, creds.as_ref(), peer_ip))?;
    let alloc_secs = t0.elapsed().as_secs_f64();
    note(&format!(
        "allocated {}/{} in {alloc_secs:.2} s, {failed} failed",
        sessions.len(),
        args.allocations
    ));
    if sessions.is_empty() {
        print_report(
            args,
            server,
            &Report::failed(alloc_secs, failed, first_error),
        );
        return Ok(false);
    }

    // The plaintext of every record: ChannelData with a `--size` payload.
    let mut frame = vec![0u8; 4 + args.size];
    for (i, b) in frame[4..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let frame_len = write_channel_header(&mut frame, CHANNEL, args.size, false)
        .context("ChannelData header")?;
    frame.truncate(frame_len);

    let t_seal = Instant::now();
    let budget = args.dtls_mib << 20;
    let n = sessions.len();
    let mut records: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut rec_len = 0usize;
    let mut per_session = 0usize;
    for s in &mut sessions {
        let Link::Dtls(link) = &mut s.client.conn.link else {
            bail!("a DTLS allocation without a DTLS link");
        };
        let mut out = Vec::new();
        if rec_len == 0 {
            rec_len = link.seal_records(&frame, 1, &mut out)?;
            let fit = budget / n / rec_len.max(1);
            let want = match args.rate {
                // Enough for the run at the rate, and a little more for a late start.
                Some(r) => (r * args.duration.as_secs_f64() * 1.02) as usize + BURST,
                None => usize::MAX,
            };
            per_session = fit.min(want).max(1);
        }
        out.reserve_exact(per_session * rec_len - out.len());
        let have = out.len() / rec_len;
        let len = link.seal_records(&frame, per_session - have, &mut out)?;
        if len != rec_len && per_session > have {
            bail!("records of {len} bytes in one session, {rec_len} in another");
        }
        records.push(out);
    }
    let seal_secs = t_seal.elapsed().as_secs_f64();
    note(&format!(
        "sealed {per_session} records of {rec_len} bytes per session ({:.0} MiB) in {seal_secs:.2} s",
        (n * per_session * rec_len) as f64 / (1 << 20) as f64
    ));

    if args.direct {
        for s in &sessions {
            let to = s.peer.local_addr()?;
            socket2::SockRef::from(client_socket(s)?)
                .connect(&to.into())
                .context("cannot point a client socket at its peer")?;
        }
    }

    // Peers: counted by one receiver thread.
    let expect = if args.direct { rec_len } else { args.size };
    let stop = Arc::new(AtomicBool::new(false));
    let at_peer = Arc::new(AtomicU64::new(0));
    let peer_fds: Vec<RawFd> = sessions.iter().map(|s| s.peer.as_raw_fd()).collect();
    let threads = args.threads.min(n);
    let mut lanes: Vec<Vec<(RawFd, &[u8])>> = vec![Vec::new(); threads];
    for (i, (s, r)) in sessions.iter().zip(&records).enumerate() {
        lanes[i % threads].push((client_socket(s)?.as_raw_fd(), &r[..]));
    }
    let rate = args.rate;
    let (sent, rx, window, cpu) = std::thread::scope(|scope| {
        let receiver = {
            let (stop, at_peer, fds) = (stop.clone(), at_peer.clone(), &peer_fds);
            scope.spawn(move || receive(fds, expect, &stop, &at_peer))
        };
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let start = Instant::now() + Duration::from_millis(50);
        let deadline = start + args.duration;
        let senders: Vec<_> = lanes
            .into_iter()
            .map(|lane| {
                let tid_tx = tid_tx.clone();
                scope.spawn(move || {
                    let _ = tid_tx.send(thread_id());
                    drop(tid_tx);
                    send_lane(&lane, rec_len, rate, args.gso, start, deadline)
                })
            })
            .collect();
        drop(tid_tx);
        let tids: Vec<i64> = tid_rx.iter().collect();
        while Instant::now() < start {
            std::thread::sleep(Duration::from_millis(5));
        }
        let cpu0 = CpuSample::now(&tids);
        let sent: Vec<Sent> = senders
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        let send_end = Instant::now();
        let cpu = cpu0.until(&CpuSample::now(&tids));
        std::thread::sleep(DRAIN);
        stop.store(true, Ordering::Relaxed);
        let rx = receiver.join().unwrap_or_default();
        let last = rx.last.unwrap_or(send_end).max(send_end);
        (sent, rx, (start, send_end, last), cpu)
    });
    let (start, send_end, last) = window;
    let total = sent.iter().fold(Sent::default(), |mut a, s| {
        a.records += s.records;
        a.errors += s.errors;
        a.would_block += s.would_block;
        a.ran_out |= s.ran_out;
        if a.first_error.is_none() {
            a.first_error.clone_from(&s.first_error);
        }
        a
    });

    // Release: Refresh(0) over each session (its next sequence numbers are past every
    // pre-encrypted record, sent or not, so the server takes them).
    let mut released = 0;
    if !args.direct {
        released = local.block_on(&rt, release_all(&mut sessions, args.concurrency));
    }
    let report = Report {
        requested: args.allocations,
        usable: n,
        failed,
        alloc_secs,
        first_error: first_error.or(total.first_error.clone()),
        per_session,
        rec_len,
        seal_secs,
        sent: total.records,
        send_errors: total.errors,
        would_block: total.would_block,
        ran_out: total.ran_out,
        at_peer: at_peer.load(Ordering::Relaxed),
        wrong_size: rx.wrong_size,
        send_secs: send_end.duration_since(start).as_secs_f64(),
        window_secs: last.duration_since(start).as_secs_f64(),
        window_unix: Some((crate::load::unix_at(start), crate::load::unix_at(last))),
        cpu: Some(cpu),
        released,
    };
    print_report(args, server, &report);
    Ok(report.at_peer > 0)
}

fn client_socket(s: &Session) -> anyhow::Result<&tokio::net::UdpSocket> {
    match &s.client.conn.link {
        Link::Dtls(l) => Ok(l.socket()),
        _ => bail!("a DTLS allocation without a DTLS link"),
    }
}

/// Open `args.allocations` sessions, `args.concurrency` at a time: (sessions, failures,
/// the first error).
async fn open_all(
    args: &LoadArgs,
    server: SocketAddr,
    tls: &TlsTarget,
    creds: Option<&Credentials>,
    peer_ip: std::net::IpAddr,
) -> anyhow::Result<(Vec<Session>, usize, Option<String>)> {
    let mut set = tokio::task::JoinSet::new();
    let (mut sessions, mut failed, mut first) = (Vec::new(), 0, None);
    let mut started = 0;
    while started < args.allocations || !set.is_empty() {
        while started < args.allocations && set.len() < args.concurrency {
            let peer = UdpSocket::bind((peer_ip, 0)).context("cannot bind a peer socket")?;
            peer.set_nonblocking(true)?;
            let _ = socket2::SockRef::from(&peer).set_recv_buffer_size(4 << 20);
            let (tls, creds, timeout, ipv6) =
                (tls.clone(), creds.cloned(), args.timeout, args.ipv6);
            set.spawn_local(async move {
                let to = peer.local_addr().map_err(ClientError::Io)?;
                let client = open(server, &tls, creds, timeout, ipv6, to).await?;
                Ok::<_, ClientError>(Session { client, peer })
            });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => sessions.push(s),
            Some(Ok(Err(e))) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
            Some(Err(e)) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
            None => {}
        }
    }
    Ok((sessions, failed, first))
}

/// One session: DTLS handshake, Allocate (with its 401), ChannelBind to `peer`.
async fn open(
    server: SocketAddr,
    tls: &TlsTarget,
    creds: Option<Credentials>,
    timeout: Duration,
    ipv6: bool,
    peer: SocketAddr,
) -> Result<TurnClient, ClientError> {
    let conn = Conn::connect(server, Transport::Dtls, Some(tls), timeout).await?;
    let mut c = TurnClient::new(conn, creds, timeout);
    c.allocate(ipv6).await?;
    c.channel_bind(CHANNEL, peer).await?;
    Ok(c)
}

async fn release_all(sessions: &mut [Session], concurrency: usize) -> usize {
    let mut released = 0;
    for chunk in sessions.chunks_mut(concurrency.max(1)) {
        let results = chunk.iter_mut().map(|s| s.client.refresh(0));
        for r in join_all(results).await {
            released += usize::from(r.is_ok());
        }
    }
    released
}

/// Await every future of `it` concurrently (on this task), in order.
async fn join_all<F: std::future::Future>(it: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = it.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Send the records of `lane`'s sessions, round robin, `BURST` per session and call, from
/// `start` until `deadline` or until they are all sent; paced to `rate` per session if set.
fn send_lane(
    lane: &[(RawFd, &[u8])],
    len: usize,
    rate: Option<f64>,
    gso: bool,
    start: Instant,
    deadline: Instant,
) -> Sent {
    let mut out = Sent::default();
    let mut next = vec![0usize; lane.len()];
    let mut tx = RunSender::new(BURST);
    while Instant::now() < start {
        std::thread::sleep(Duration::from_millis(1));
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = rate.map(|r| (r * now.duration_since(start).as_secs_f64()) as usize + 1);
        let (mut left, mut sent_any) = (false, false);
        for ((fd, recs), at) in lane.iter().zip(next.iter_mut()) {
            let have = recs.len() / len;
            if *at >= have {
                continue;
            }
            left = true;
            let upto = due.map_or(have, |d| d.min(have));
            let k = upto.saturating_sub(*at).min(BURST);
            if k == 0 {
                continue;
            }
            match tx.send(*fd, &recs[*at * len..(*at + k) * len], len, gso) {
                Ok(m) => {
                    *at += m;
                    out.records += m as u64;
                    sent_any = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.would_block += 1,
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert_with(|| format!("send: {e}"));
                }
            }
        }
        if !left {
            out.ran_out = true;
            break;
        }
        if !sent_any {
            if rate.is_some() {
                std::thread::sleep(Duration::from_micros(200));
            } else {
                std::thread::yield_now();
            }
        }
    }
    out
}

#[derive(Default)]
struct Received {
    wrong_size: u64,
    last: Option<Instant>,
}

/// Count what reaches the peer sockets until `stop`.
fn receive(fds: &[RawFd], expect: usize, stop: &AtomicBool, count: &AtomicU64) -> Received {
    let mut out = Received::default();
    let mut batch = Batch::new(64, 2048);
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `polls` is a live array of pollfd of the length given.
        let r = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 20) };
        if r <= 0 {
            continue;
        }
        for p in polls.iter_mut().filter(|p| p.revents != 0) {
            p.revents = 0;
            while let Ok(k) = batch.recv(p.fd) {
                if k == 0 {
                    break;
                }
                let wrong = (0..k).filter(|&i| batch.len_of(i) != expect).count();
                out.wrong_size += wrong as u64;
                count.fetch_add((k - wrong) as u64, Ordering::Relaxed);
                out.last = Some(Instant::now());
            }
        }
    }
    out
}

#[derive(Default)]
struct Report {
    requested: usize,
    usable: usize,
    failed: usize,
    alloc_secs: f64,
    first_error: Option<String>,
    per_session: usize,
    rec_len: usize,
    seal_secs: f64,
    sent: u64,
    send_errors: u64,
    would_block: u64,
    ran_out: bool,
    at_peer: u64,
    wrong_size: u64,
    send_secs: f64,
    window_secs: f64,
    window_unix: Option<(f64, f64)>,
    cpu: Option<CpuUse>,
    released: usize,
}

impl Report {
    fn failed(alloc_secs: f64, failed: usize, first_error: Option<String>) -> Report {
        Report {
            requested: failed,
            failed,
            alloc_secs,
            first_error,
            ..Report::default()
        }
    }
}

fn print_report(a: &LoadArgs, server: SocketAddr, r: &Report) {
    let offered = r.sent as f64 / r.send_secs.max(1e-9);
    let relayed = r.at_peer as f64 / r.window_secs.max(1e-9);
    let loss = if r.sent > 0 {
        1.0 - (r.at_peer as f64 / r.sent as f64).min(1.0)
    } else {
        0.0
    };
    let us_per_record = r
        .cpu
        .map(|c| c.process_pct / 100.0 * r.send_secs * 1e6 / (r.sent.max(1)) as f64);
    if a.json {
        let v = json!({
            "server": a.server.to_string(), "address": server.to_string(), "transport": "dtls",
            "mode": "channel", "size": a.size, "threads": a.threads, "rate_per_allocation": a.rate,
            "saturate": a.rate.is_none(), "direct": a.direct, "gso": a.gso,
            "duration_s": r.send_secs, "window_s": r.window_secs,
            "allocations": {"requested": a.allocations.max(r.requested), "ok": r.usable, "failed": r.failed,
                "usable": r.usable, "seconds": r.alloc_secs, "per_sec": r.usable as f64 / r.alloc_secs.max(1e-9),
                "released": r.released},
            "records": {"per_session": r.per_session, "bytes_each": r.rec_len, "seal_s": r.seal_secs,
                "total_mib": (r.per_session * r.rec_len * r.usable) as f64 / (1 << 20) as f64,
                "ran_out": r.ran_out},
            "packets": {"sent": r.sent, "at_peer": r.at_peer, "received": 0, "wrong_size": r.wrong_size,
                "send_errors": r.send_errors, "would_block": r.would_block, "loss_ratio": loss},
            "offered_pps": offered, "relayed_pps": relayed, "turnctl_us_per_record": us_per_record,
            "cpu": r.cpu, "data_window_unix": r.window_unix, "error": r.first_error,
        });
        println!("{v}");
        return;
    }
    let load = match a.rate {
        Some(x) => format!("{x} records/s per allocation"),
        None => "as fast as it can send".into(),
    };
    println!(
        "turnctl load --dtls {} ({server}): ChannelData, {}-byte payloads, {load}{}",
        a.server,
        a.size,
        if a.direct {
            ", --direct (no server)"
        } else {
            ""
        }
    );
    println!(
        "  allocations  {} ok, {} failed in {:.2} s; {} released",
        r.usable, r.failed, r.alloc_secs, r.released
    );
    if let Some(e) = &r.first_error {
        println!("  first error  {e}");
    }
    println!(
        "  records      {} per session of {} bytes, sealed in {:.2} s{}",
        r.per_session,
        r.rec_len,
        r.seal_secs,
        if r.ran_out {
            "; ran out before the end of --duration"
        } else {
            ""
        }
    );
    println!(
        "  offered      {offered:.0} records/s ({} sent in {:.2} s, {} send errors, {} would block)",
        r.sent, r.send_secs, r.send_errors, r.would_block
    );
    println!(
        "  at peer      {relayed:.0} pkt/s ({} in {:.2} s, loss {:.3}%, {} of another size)",
        r.at_peer,
        r.window_secs,
        loss * 100.0,
        r.wrong_size
    );
    if let Some(c) = &r.cpu {
        // Open loop at full speed the senders are always busy: the server was the limit
        // when it relayed less than was offered (and offered is near the --direct ceiling).
        println!(
            "  turnctl cpu  {:.0}% (busiest sender {:.0}%), {:.2} us per record sent",
            c.process_pct,
            c.busiest_thread_pct,
            us_per_record.unwrap_or(0.0),
        );
    }
}
