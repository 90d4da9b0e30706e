//! One load-generator thread: a current-thread runtime with many allocations and one echo
//! peer, driven phase by phase by `load.rs` over a channel ([`Cmd`] in, [`Reply`] out).
//!
//! Phases: allocate (`lanes` allocations in flight), prepare (CreatePermission and, in
//! channel mode, ChannelBind to this thread's echo peer), data (one task per allocation,
//! see `flow.rs`), hold (idle allocations), release (Refresh 0).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::net::UdpSocket;
use tokio::task::LocalSet;

use crate::client::{ClientError, Conn, Credentials, TlsTarget, TurnClient};
use crate::echo::{self, EchoCount};
use crate::flow::{self, Flow, Mix, Mode};
use crate::stats::{rtt_histogram, thread_id, Counters};
use turnd_proto::engine::Transport;

/// The channel number every allocation binds to its echo peer.
pub const CHANNEL: u16 = 0x4000;

/// What every worker thread needs to know.
pub struct Params {
    pub server: SocketAddr,
    pub transport: Transport,
    pub tls: Option<TlsTarget>,
    pub creds: Option<Credentials>,
    pub timeout: Duration,
    pub ipv6: bool,
    pub mode: Mode,
    pub mix: Mix,
    pub size: usize,
    /// UDP GSO sends (`UDP_SEGMENT`) from the clients and the echo peers.
    pub gso: bool,
    /// No server: the clients send ChannelData straight to the echo peer (the generator's
    /// own ceiling).
    pub direct: bool,
    /// Packets per second per allocation; `None`: saturate with `window` in flight.
    pub rate: Option<f64>,
    pub window: usize,
    /// Control-plane transactions in flight per thread.
    pub lanes: usize,
    pub peer_ip: IpAddr,
    /// Echo peers per thread; 0: one per allocation (each allocation then talks to its own
    /// peer address, as coturn's `--multiplex-peer` needs and real calls do).
    pub peers: usize,
    pub totals: Arc<Counters>,
    pub first_error: Mutex<Option<String>>,
}

impl Params {
    fn note_error(&self, what: &str, e: &ClientError) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(format!("{what} failed: {e}"));
        }
    }
}

pub enum Cmd {
    Allocate(usize),
    Prepare,
    Data { start: Instant, deadline: Instant },
    Hold(Instant),
    Release,
}

/// What a data phase measured on one thread.
pub struct DataResult {
    pub sent: u64,
    pub received: u64,
    pub at_peer: u64,
    pub hist: Histogram<u64>,
}

pub enum Reply {
    /// The thread runs; its kernel thread id (for CPU accounting).
    Ready(i64),
    /// Allocations this thread holds after a phase.
    Done(usize),
    Data(DataResult),
    Failed(String),
}

struct Worker {
    params: Arc<Params>,
    /// Each allocation and the index of its echo peer in `peers`.
    clients: Vec<(TurnClient, usize)>,
    peers: Vec<(Rc<UdpSocket>, SocketAddr)>,
}

async fn bind_peer(ip: IpAddr) -> std::io::Result<(Rc<UdpSocket>, SocketAddr)> {
    let peer = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    let _ = socket2::SockRef::from(&peer).set_recv_buffer_size(4 << 20);
    let _ = socket2::SockRef::from(&peer).set_send_buffer_size(4 << 20);
    let addr = peer.local_addr()?;
    Ok((Rc::new(peer), addr))
}

/// Start a worker thread; it ends when `cmds` is closed.
pub fn spawn(
    index: usize,
    params: Arc<Params>,
    cmds: Receiver<Cmd>,
    replies: Sender<(usize, Reply)>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("turnctl-load-{index}"))
        .spawn(move || {
            if let Err(e) = thread_main(index, params, &cmds, &replies) {
                let _ = replies.send((index, Reply::Failed(format!("{e:#}"))));
            }
        })
}

fn thread_main(
    index: usize,
    params: Arc<Params>,
    cmds: &Receiver<Cmd>,
    replies: &Sender<(usize, Reply)>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    let first = local.block_on(&rt, bind_peer(params.peer_ip))?;
    let mut w = Worker {
        params,
        clients: Vec::new(),
        peers: vec![first],
    };
    let _ = replies.send((index, Reply::Ready(thread_id())));
    for cmd in cmds {
        let reply = match cmd {
            Cmd::Allocate(n) => match local.block_on(&rt, w.add_peers(n)) {
                Ok(()) => Reply::Done(local.block_on(&rt, w.allocate(n))),
                Err(e) => Reply::Failed(format!("binding echo peers: {e}")),
            },
            Cmd::Prepare => Reply::Done(local.block_on(&rt, w.prepare())),
            Cmd::Data { start, deadline } => {
                Reply::Data(local.block_on(&rt, w.data(start, deadline)))
            }
            Cmd::Hold(until) => {
                local.block_on(&rt, async { tokio::time::sleep_until(until.into()).await });
                Reply::Done(w.clients.len())
            }
            Cmd::Release => Reply::Done(local.block_on(&rt, w.release())),
        };
        if replies.send((index, reply)).is_err() {
            break;
        }
    }
    Ok(())
}

/// Run `job` over `items` with at most `lanes` of them in flight; returns what the jobs
/// return, in no particular order.
async fn in_lanes<T, R, F, Fut>(items: Vec<T>, lanes: usize, job: F) -> Vec<R>
where
    T: 'static,
    R: 'static,
    F: Fn(T) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let queue = Rc::new(RefCell::new(items));
    let out = Rc::new(RefCell::new(Vec::new()));
    let mut handles = Vec::new();
    for _ in 0..lanes.max(1) {
        let (queue, out, job) = (queue.clone(), out.clone(), job.clone());
        handles.push(tokio::task::spawn_local(async move {
            loop {
                let Some(item) = queue.borrow_mut().pop() else {
                    break;
                };
                let r = job(item).await;
                out.borrow_mut().push(r);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    Rc::try_unwrap(out)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

async fn allocate_one(p: &Params, peer: SocketAddr) -> Result<TurnClient, ClientError> {
    if p.direct {
        let conn = Conn::connect(peer, Transport::Udp, None, p.timeout).await?;
        return Ok(TurnClient::new(conn, None, p.timeout));
    }
    let conn = Conn::connect(p.server, p.transport, p.tls.as_ref(), p.timeout).await?;
    let mut c = TurnClient::new(conn, p.creds.clone(), p.timeout);
    c.allocate(p.ipv6).await?;
    Ok(c)
}

impl Worker {
    /// Echo peers for `n` allocations: `--peers` of them, or one each.
    async fn add_peers(&mut self, n: usize) -> std::io::Result<()> {
        let want = match self.params.peers {
            0 => n,
            k => k,
        };
        while self.peers.len() < want {
            self.peers.push(bind_peer(self.params.peer_ip).await?);
        }
        Ok(())
    }

    async fn allocate(&mut self, n: usize) -> usize {
        let p = self.params.clone();
        let addrs: Vec<SocketAddr> = self.peers.iter().map(|(_, a)| *a).collect();
        let results = in_lanes((0..n).collect(), p.lanes, move |i: usize| {
            let p = p.clone();
            let which = i % addrs.len();
            let peer = addrs[which];
            async move {
                let mut r = allocate_one(&p, peer).await;
                // 437 on a fresh port: a previous run left state for this 5-tuple on the
                // server (coturn keeps it for a while even after Refresh 0, turnd until the
                // lifetime ends when a run was killed); another local port will do.
                for _ in 0..8 {
                    if !matches!(&r, Err(e) if e.code() == Some(437)) {
                        break;
                    }
                    r = allocate_one(&p, peer).await;
                }
                match r {
                    Ok(c) => {
                        Counters::add(&p.totals.allocated, 1);
                        Some((c, which))
                    }
                    Err(e) => {
                        Counters::add(&p.totals.alloc_failed, 1);
                        p.note_error("Allocate", &e);
                        None
                    }
                }
            }
        })
        .await;
        self.clients.extend(results.into_iter().flatten());
        self.clients.len()
    }

    /// Permissions (and channels) to this thread's echo peer; allocations that fail are
    /// released and dropped.
    async fn prepare(&mut self) -> usize {
        let p = self.params.clone();
        if p.direct {
            return self.clients.len();
        }
        let addrs: Vec<SocketAddr> = self.peers.iter().map(|(_, a)| *a).collect();
        let clients = std::mem::take(&mut self.clients);
        let results = in_lanes(
            clients,
            p.lanes,
            move |(mut c, which): (TurnClient, usize)| {
                let p = p.clone();
                let peer = addrs[which];
                async move {
                    let r = async {
                        c.create_permission(peer)
                            .await
                            .map_err(|e| ("CreatePermission", e))?;
                        if p.mode == Mode::Channel {
                            c.channel_bind(CHANNEL, peer)
                                .await
                                .map_err(|e| ("ChannelBind", e))?;
                        }
                        Ok(())
                    }
                    .await;
                    match r {
                        Ok(()) => Some((c, which)),
                        Err((what, e)) => {
                            p.note_error(what, &e);
                            let _ = c.refresh(0).await;
                            None
                        }
                    }
                }
            },
        )
        .await;
        self.clients = results.into_iter().flatten().collect();
        self.clients.len()
    }

    async fn data(&mut self, start: Instant, deadline: Instant) -> DataResult {
        let p = &self.params;
        let count = Rc::new(EchoCount::default());
        let slot = match p.mix {
            Mix::Fixed => p.size,
            Mix::Av => flow::AV_MAX,
        } + 128;
        let mut used = vec![false; self.peers.len()];
        for (_, which) in &self.clients {
            used[*which] = true;
        }
        let peer_tasks: Vec<_> = self
            .peers
            .iter()
            .zip(used)
            .filter(|(_, u)| *u)
            .map(|((sock, _), _)| {
                tokio::task::spawn_local(echo::batched(
                    sock.clone(),
                    slot,
                    p.gso,
                    count.clone(),
                    p.totals.clone(),
                ))
            })
            .collect();
        let n = self.clients.len().max(1);
        let f = Rc::new(Flow {
            params: self.params.clone(),
            start,
            deadline,
            allocations: n,
            hist: RefCell::new(rtt_histogram()),
            sent: Default::default(),
            received: Default::default(),
        });
        let mut tasks = Vec::new();
        for (i, (c, which)) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            let peer = self.peers[which].1;
            let t = tokio::task::spawn_local(flow::run(c, f.clone(), i, peer));
            tasks.push((t, which));
        }
        for (t, which) in tasks {
            if let Ok(c) = t.await {
                self.clients.push((c, which));
            }
        }
        // Late echoes still in the peers' queues are part of this run.
        tokio::time::sleep(Duration::from_millis(20)).await;
        for t in peer_tasks {
            t.abort();
        }
        let hist = f.hist.replace(rtt_histogram());
        DataResult {
            sent: f.sent.get(),
            received: f.received.get(),
            at_peer: count.packets.get(),
            hist,
        }
    }

    async fn release(&mut self) -> usize {
        let p = self.params.clone();
        if p.direct {
            return std::mem::take(&mut self.clients).len();
        }
        let clients = std::mem::take(&mut self.clients);
        let ok = in_lanes(
            clients,
            p.lanes,
            |(mut c, _): (TurnClient, usize)| async move { c.refresh(0).await.is_ok() },
        )
        .await;
        ok.into_iter().filter(|x| *x).count()
    }
}
