//! `turnctl load`: N allocations over UDP, TCP or TLS relaying to echo peers turnctl runs
//! itself, at a fixed packet rate per allocation or at saturation, for a bounded time.
//!
//! This module parses the flags, starts the worker threads (`worker.rs`), walks them through
//! the phases (allocate, prepare, data or hold, release), prints progress and the report.
//! Everything is bounded: allocation count, duration, payload size, threads.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::creds::AuthArgs;
use crate::flow::{Mix, Mode};
use turnd_proto::engine::Transport;

use crate::server::{parse_transport, ServerUrl};
use crate::stats::{rtt_histogram, Counters, CpuSample, CpuUse, Rtt};
use crate::worker::{self, Cmd, DataResult, Params, Reply};

pub const MAX_ALLOCATIONS: usize = 20_000;
pub const MAX_DURATION: Duration = Duration::from_secs(300);

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// turn:HOST:PORT[?transport=udp|tcp], turns:HOST:PORT, or turns:HOST:PORT?transport=udp
    /// (DTLS, as --dtls).
    #[arg(long, short = 's', value_parser = crate::parse_url)]
    pub server: ServerUrl,
    /// Override the URL's transport (give the matching port).
    #[arg(long, value_parser = parse_transport)]
    pub transport: Option<Transport>,
    /// Over DTLS (RFC 7350; give the DTLS port): one DTLS session per allocation, then
    /// pre-encrypted ChannelData client -> peer, open loop: at --rate per allocation or, without
    /// it, as fast as turnctl can send (`dtls_load.rs`). The peers do not echo.
    #[arg(long)]
    pub dtls: bool,
    /// With --dtls: memory for the pre-encrypted records of all sessions, in MiB (at most
    /// 512); the run ends early when they are spent (each record is sent once).
    #[arg(long, default_value_t = 256)]
    pub dtls_mib: usize,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Number of allocations (each its own UDP socket or TCP/TLS connection).
    #[arg(long, short = 'n', default_value_t = 10)]
    pub allocations: usize,
    #[arg(long, value_enum, default_value = "channel")]
    pub mode: Mode,
    /// Payload bytes per packet (16..=8192).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Payload sizes: all `--size`, or `av` (audio-like 60-200 B packets and video-like
    /// bursts of 5-20 packets of 1,000-1,200 B; UDP; `--rate` is the average per allocation).
    #[arg(long, value_enum, default_value = "fixed")]
    pub mix: Mix,
    /// Send with UDP GSO (`UDP_SEGMENT`): clients and echo peers hand the kernel up to 64
    /// equal datagrams per call. Honest only against a server whose sockets do not set
    /// `UDP_GRO` (it then receives them one by one, as from many real clients).
    #[arg(long)]
    pub gso: bool,
    /// No server: the clients send ChannelData straight to the echo peers, to measure the
    /// load generator's own ceiling (`--server` then only picks the address family).
    #[arg(long)]
    pub direct: bool,
    /// Packets per second per allocation (default 50 unless --saturate).
    #[arg(long, conflicts_with = "saturate")]
    pub rate: Option<f64>,
    /// Send as fast as the relay echoes: `--window` packets in flight per allocation.
    #[arg(long)]
    pub saturate: bool,
    /// Packets in flight per allocation with --saturate.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// How long to send (or, with --mode idle, to hold the allocations); at most 300 s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Worker threads (each runs many allocations and its echo peers).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Echo peers per thread, each its own socket; 0: one per allocation (coturn's
    /// `--multiplex-peer` needs a distinct peer address per allocation).
    #[arg(long, default_value_t = 1)]
    pub peers: usize,
    /// Allocations set up concurrently (per thread).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Ask for IPv6 relays (echo peers then bind ::1).
    #[arg(long)]
    pub ipv6: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Per-transaction timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress output on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl LoadArgs {
    fn transport_of(&self) -> Transport {
        if self.dtls {
            return Transport::Dtls;
        }
        self.transport.unwrap_or(self.server.transport)
    }
}

pub(crate) fn validate(a: &LoadArgs) -> anyhow::Result<()> {
    if a.allocations == 0 || a.allocations > MAX_ALLOCATIONS {
        bail!("--allocations must be 1..={MAX_ALLOCATIONS}");
    }
    if a.duration.is_zero() || a.duration > MAX_DURATION {
        bail!(
            "--duration must be more than 0 and at most {} s",
            MAX_DURATION.as_secs()
        );
    }
    if !(crate::flow::STAMP + 4..=8192).contains(&a.size) {
        bail!("--size must be 16..=8192 bytes");
    }
    if a.mix == Mix::Av && (a.mode == Mode::Idle || a.transport_of() != Transport::Udp) {
        bail!("--mix av needs UDP and --mode channel or send");
    }
    let datagrams = matches!(a.transport_of(), Transport::Udp | Transport::Dtls);
    if a.direct && (a.mode != Mode::Channel || !datagrams) {
        bail!("--direct needs UDP or DTLS and --mode channel");
    }
    if !(1..=16).contains(&a.threads) || !(1..=256).contains(&a.window) || a.concurrency == 0 {
        bail!("--threads must be 1..=16, --window 1..=256, --concurrency at least 1");
    }
    if let Some(r) = a.rate {
        if !(r > 0.0 && r <= 100_000.0) {
            bail!("--rate must be more than 0 and at most 100000 packets/s per allocation");
        }
    }
    Ok(())
}

/// Where echo peers bind: loopback for a server on this machine, else the address this
/// host uses to reach the server (which must then be reachable from the relay).
pub(crate) fn peer_ip(server: SocketAddr, ipv6: bool) -> anyhow::Result<IpAddr> {
    if server.ip().is_loopback() {
        return Ok(if ipv6 {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        });
    }
    let probe = std::net::UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    probe.connect(server)?;
    Ok(probe.local_addr()?.ip())
}

/// Raise the soft limit of open files towards what the allocations need.
pub(crate) fn raise_nofile(need: usize) {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && (r.rlim_cur as usize) < need {
            r.rlim_cur = (need as libc::rlim_t).min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

struct Pool {
    cmds: Vec<mpsc::Sender<Cmd>>,
    replies: mpsc::Receiver<(usize, Reply)>,
    handles: Vec<std::thread::JoinHandle<()>>,
    tids: Vec<i64>,
}

impl Pool {
    /// Send each thread its command and collect one reply from each, calling `tick` about
    /// once a second meanwhile.
    fn phase(
        &self,
        cmd: impl Fn(usize) -> Cmd,
        mut tick: impl FnMut(),
    ) -> anyhow::Result<Vec<Reply>> {
        for (i, tx) in self.cmds.iter().enumerate() {
            tx.send(cmd(i)).context("a worker thread ended")?;
        }
        let mut out: Vec<Option<Reply>> = (0..self.cmds.len()).map(|_| None).collect();
        let mut left = out.len();
        while left > 0 {
            match self.replies.recv_timeout(Duration::from_secs(1)) {
                Ok((_, Reply::Failed(e))) => bail!("worker thread failed: {e}"),
                Ok((i, r)) => {
                    out[i] = Some(r);
                    left -= 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => tick(),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("worker threads ended"),
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn done(replies: &[Reply]) -> usize {
        replies
            .iter()
            .map(|r| if let Reply::Done(n) = r { *n } else { 0 })
            .sum()
    }
}

fn start_pool(params: &Arc<Params>, threads: usize) -> anyhow::Result<Pool> {
    let (reply_tx, replies) = mpsc::channel();
    let mut pool = Pool {
        cmds: Vec::new(),
        replies,
        handles: Vec::new(),
        tids: Vec::new(),
    };
    for i in 0..threads {
        let (tx, rx) = mpsc::channel();
        pool.handles
            .push(worker::spawn(i, params.clone(), rx, reply_tx.clone())?);
        pool.cmds.push(tx);
    }
    for _ in 0..threads {
        match pool.replies.recv_timeout(Duration::from_secs(10)) {
            Ok((_, Reply::Ready(tid))) => pool.tids.push(tid),
            Ok((_, Reply::Failed(e))) => bail!("worker thread failed: {e}"),
            _ => bail!("worker threads did not start"),
        }
    }
    Ok(pool)
}

/// Progress on stderr: one rewritten line on a terminal, plain lines otherwise.
struct Progress {
    quiet: bool,
    tty: bool,
}

impl Progress {
    fn note(&self, msg: &str) {
        if !self.quiet {
            if self.tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("{msg}");
        }
    }

    fn data(
        &self,
        totals: &Counters,
        started: Instant,
        total: Duration,
        last: &mut (Instant, u64),
    ) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let relayed = Counters::get(&totals.at_peer) + Counters::get(&totals.received);
        let pps = (relayed - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        *last = (now, relayed);
        let sent = Counters::get(&totals.sent);
        let lost = sent.saturating_sub(Counters::get(&totals.received));
        let el = now.duration_since(started).min(total).as_secs_f64();
        let msg = format!(
            "{el:5.1}/{:.0}s  relayed {pps:>9.0} pkt/s  sent {sent}  not yet back {lost}",
            total.as_secs_f64()
        );
        if self.tty {
            let frac = el / total.as_secs_f64().max(1e-3);
            let bar: String = (0..20)
                .map(|i| if (i as f64) < frac * 20.0 { '#' } else { '.' })
                .collect();
            eprint!("\r\x1b[K[{bar}] {msg}");
        } else {
            eprintln!("{msg}");
        }
    }
}

/// Run `turnctl load`; Ok(false) when nothing could be measured.
pub fn run(args: &LoadArgs) -> anyhow::Result<bool> {
    if args.transport_of() == Transport::Dtls {
        return crate::dtls_load::run(args);
    }
    validate(args)?;
    let server = args.server.resolve()?;
    let transport = args.transport.unwrap_or(args.server.transport);
    let tls = args.tls.target(transport, &args.server.host)?;
    let rate = match (args.saturate, args.rate) {
        (true, _) => None,
        (false, r) => Some(r.unwrap_or(50.0)),
    };
    raise_nofile(args.allocations + 256);
    let threads = args.threads.min(args.allocations);
    let params = Arc::new(Params {
        server,
        transport,
        tls,
        creds: args.auth.credentials()?,
        timeout: args.timeout,
        ipv6: args.ipv6,
        mode: args.mode,
        mix: args.mix,
        size: args.size,
        gso: args.gso,
        direct: args.direct,
        rate,
        window: args.window,
        lanes: args.concurrency,
        peer_ip: peer_ip(server, args.ipv6)?,
        peers: args.peers,
        totals: Arc::new(Counters::default()),
        first_error: Mutex::new(None),
    });
    let progress = Progress {
        quiet: args.quiet,
        tty: std::io::stderr().is_terminal(),
    };
    let pool = start_pool(&params, threads)?;
    let totals = params.totals.clone();
    let per_thread =
        |i: usize| args.allocations / threads + usize::from(i < args.allocations % threads);

    progress.note(&format!(
        "allocating {} over {} ({} at a time per thread)",
        args.allocations,
        transport.as_str(),
        args.concurrency
    ));
    let t0 = Instant::now();
    let note_alloc = || {
        let (ok, failed) = (
            Counters::get(&totals.allocated),
            Counters::get(&totals.alloc_failed),
        );
        progress.note(&format!("  {ok} allocated, {failed} failed"));
    };
    let allocated = Pool::done(&pool.phase(|i| Cmd::Allocate(per_thread(i)), note_alloc)?);
    let alloc_secs = t0.elapsed().as_secs_f64();
    let failed = Counters::get(&totals.alloc_failed);
    progress.note(&format!(
        "allocated {allocated}/{} in {alloc_secs:.2} s ({:.0}/s), {failed} failed",
        args.allocations,
        allocated as f64 / alloc_secs.max(1e-6)
    ));
    let mut report = Report {
        args,
        totals: totals.clone(),
        server,
        transport,
        rate,
        threads,
        allocated,
        failed,
        alloc_secs,
        usable: 0,
        data: None,
        cpu: None,
        data_secs: 0.0,
        window_unix: None,
        released: 0,
        first_error: None,
    };
    if allocated > 0 {
        run_phases(args, &pool, &progress, &totals, &mut report)?;
    }
    drop(pool.cmds);
    for h in pool.handles {
        let _ = h.join();
    }
    report.first_error = params
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.print(args.json);
    Ok(report.usable > 0
        && (args.mode == Mode::Idle || report.data.as_ref().is_some_and(|d| d.received > 0)))
}

fn run_phases(
    args: &LoadArgs,
    pool: &Pool,
    progress: &Progress,
    totals: &Counters,
    report: &mut Report,
) -> anyhow::Result<()> {
    if args.mode == Mode::Idle {
        progress.note(&format!(
            "holding {} allocations for {:.0} s",
            report.allocated,
            args.duration.as_secs_f64()
        ));
        let until = Instant::now() + args.duration;
        report.usable = Pool::done(&pool.phase(|_| Cmd::Hold(until), || {})?);
    } else {
        report.usable = Pool::done(&pool.phase(|_| Cmd::Prepare, || {})?);
        if report.usable > 0 {
            let start = Instant::now() + Duration::from_millis(20);
            let deadline = start + args.duration;
            let before = CpuSample::now(&pool.tids);
            report.window_unix = Some((unix_at(start), unix_at(deadline)));
            let mut last = (start, 0);
            let replies = pool.phase(
                |_| Cmd::Data { start, deadline },
                || progress.data(totals, start, args.duration, &mut last),
            )?;
            report.cpu = Some(before.until(&CpuSample::now(&pool.tids)));
            report.data_secs = args.duration.as_secs_f64();
            if progress.tty && !progress.quiet {
                eprintln!();
            }
            let mut sum = DataResult {
                sent: 0,
                received: 0,
                at_peer: 0,
                hist: rtt_histogram(),
            };
            for r in replies {
                if let Reply::Data(d) = r {
                    sum.sent += d.sent;
                    sum.received += d.received;
                    sum.at_peer += d.at_peer;
                    let _ = sum.hist.add(&d.hist);
                }
            }
            report.data = Some(sum);
        }
    }
    progress.note("releasing (Refresh 0)");
    report.released = Pool::done(&pool.phase(|_| Cmd::Release, || {})?);
    Ok(())
}

/// Seconds since the Unix epoch at `at` (for others to line up their samples with the
/// data phase).
pub(crate) fn unix_at(at: Instant) -> f64 {
    let now = Instant::now();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if at >= now {
        unix + (at - now).as_secs_f64()
    } else {
        unix - (now - at).as_secs_f64()
    }
}

struct Report<'a> {
    args: &'a LoadArgs,
    totals: Arc<Counters>,
    server: SocketAddr,
    transport: Transport,
    rate: Option<f64>,
    threads: usize,
    allocated: usize,
    failed: u64,
    alloc_secs: f64,
    /// Allocations that got through prepare (or were held).
    usable: usize,
    data: Option<DataResult>,
    cpu: Option<CpuUse>,
    data_secs: f64,
    /// The data phase, in Unix seconds.
    window_unix: Option<(f64, f64)>,
    released: usize,
    first_error: Option<String>,
}

impl Report<'_> {
    fn print(&self, as_json: bool) {
        let a = self.args;
        let d = self.data.as_ref();
        let secs = self.data_secs.max(1e-9);
        let sent = d.map_or(0, |d| d.sent);
        let received = d.map_or(0, |d| d.received);
        let at_peer = d.map_or(0, |d| d.at_peer);
        let lost = sent.saturating_sub(received);
        let loss = if sent > 0 {
            lost as f64 / sent as f64
        } else {
            0.0
        };
        let relayed_pps = (at_peer + received) as f64 / secs;
        let bytes =
            Counters::get(&self.totals.peer_bytes) + Counters::get(&self.totals.received_bytes);
        let mbps = bytes as f64 * 8.0 / secs / 1e6;
        // turnctl's own CPU per packet it relayed (sent or echoed and received back).
        let us_per_pkt = self
            .cpu
            .map(|c| c.process_pct / 100.0 * secs * 1e6 / (at_peer + received).max(1) as f64);
        let rtt = d.map(|d| Rtt::of(&d.hist)).unwrap_or_default();
        let alloc_rate = self.allocated as f64 / self.alloc_secs.max(1e-9);
        if as_json {
            let v = json!({
                "server": a.server.to_string(), "address": self.server.to_string(),
                "transport": self.transport.as_str(), "mode": a.mode, "size": a.size, "threads": self.threads,
                "saturate": self.rate.is_none(), "window": a.window, "rate_per_allocation": self.rate,
                "duration_s": self.data_secs,
                "allocations": {"requested": a.allocations, "ok": self.allocated, "failed": self.failed,
                    "usable": self.usable, "seconds": self.alloc_secs, "per_sec": alloc_rate, "released": self.released},
                "packets": {"sent": sent, "at_peer": at_peer, "received": received, "lost": lost, "loss_ratio": loss},
                "relayed_pps": relayed_pps, "relayed_mbps": mbps, "round_trips_per_s": received as f64 / secs,
                "rtt": rtt, "cpu": self.cpu, "turnctl_us_per_pkt": us_per_pkt,
                "mix": a.mix, "gso": a.gso, "direct": a.direct, "data_window_unix": self.window_unix,
                "error": self.first_error,
            });
            println!("{v}");
            return;
        }
        let load = match (a.mode, self.rate) {
            (Mode::Idle, _) => format!("held {:.0} s", a.duration.as_secs_f64()),
            (_, Some(r)) => format!("{r} pkt/s per allocation"),
            (_, None) => format!("saturating, {} in flight per allocation", a.window),
        };
        println!(
            "turnctl load {} ({}) over {}: {:?} mode, {}-byte payloads, {load}",
            a.server,
            self.server,
            self.transport.as_str(),
            a.mode,
            a.size
        );
        println!("  allocations  {} ok, {} failed, {alloc_rate:.0}/s (Allocate with its 401 round trip); {} released", self.allocated, self.failed, self.released);
        if let Some(e) = &self.first_error {
            println!("  first error  {e}");
        }
        if d.is_some() {
            println!(
                "  relayed      {relayed_pps:.0} pkt/s ({:.0} each way), {mbps:.1} Mbit/s",
                relayed_pps / 2.0
            );
            println!("  packets      sent {sent}, at peer {at_peer}, back {received}, lost {lost} ({:.3}%)", loss * 100.0);
            println!(
                "  rtt          p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
                rtt.p50_ms, rtt.p99_ms, rtt.p999_ms, rtt.max_ms
            );
        }
        if let Some(c) = &self.cpu {
            let verdict = if c.saturated {
                "SATURATED: turnctl was the limit, not the server"
            } else {
                "not saturated"
            };
            println!(
                "  turnctl cpu  {:.0}% ({} usable cores, busiest thread {:.0}%), {:.2} us per packet: {verdict}",
                c.process_pct, c.cores, c.busiest_thread_pct, us_per_pkt.unwrap_or(0.0)
            );
        }
    }
}
