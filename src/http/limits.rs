//! Connection-limited HTTP serving for the signaling and admin listeners: one accept loop
//! (plain or TLS) that counts connections per client IP (IPv6 per /64) and in total, refuses
//! accepts while the process is within a reserve of its descriptor limit, and serves each
//! connection with hyper's HTTP/1.1 server under a header-read timeout and an idle timeout.
//!
//! Refused connections are accepted and closed at once (so they leave the kernel's backlog);
//! nothing is logged per connection. A connection's [`Permit`] travels with its socket, so a
//! WebSocket keeps counting after the upgrade.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{ip_key, Remote};
use crate::config;

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes computed at once; the others wait (within their timeout).
const MAX_HANDSHAKES: usize = 256;
/// How often `/proc/self/fd` is counted at most.
const FD_COUNT_EVERY: Duration = Duration::from_millis(250);
/// How long open connections may take to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Accept failures (EMFILE, ENFILE) are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Refuse accepts while fewer descriptors than this are left (capped at half the limit).
    pub fd_reserve: usize,
}

impl Limits {
    /// The signaling listener's, from `[signaling]`.
    pub fn signaling(cfg: &config::Signaling) -> Self {
        Limits {
            max_connections: cfg.max_http_connections,
            max_connections_per_ip: cfg.max_http_connections_per_ip,
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
            fd_reserve: cfg.fd_reserve,
        }
    }

    /// The admin listener's: few clients (scrapers, operators), so small caps, and a per-IP
    /// cap well under the total, so a few hosts holding half-open requests cannot lock a
    /// scraper out; no descriptor reserve, so the operators keep their view while the
    /// signaling listener is flooded.
    pub const ADMIN: Limits = Limits {
        max_connections: 256,
        max_connections_per_ip: 16,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        fd_reserve: 0,
    };
}

/// Open connections per client key and in total.
#[derive(Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; released on drop.
pub struct Permit {
    counts: Arc<Mutex<Counts>>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.key);
            }
        }
    }
}

/// The admission decision of one listener.
pub struct Gate {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
    fds: FdWatch,
}

impl Gate {
    pub fn new(limits: Limits) -> Self {
        Gate {
            limits,
            counts: Arc::default(),
            fds: FdWatch::new(limits.fd_reserve),
        }
    }

    /// Admit a connection from `ip` whose socket has descriptor number `fd`; `None`: close it.
    pub fn admit(&self, ip: IpAddr, fd: i32) -> Option<Permit> {
        if self.fds.low(fd) {
            return None;
        }
        let key = ip_key(ip);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let on_ip = c.by_ip.get(&key).copied().unwrap_or(0);
        if c.total >= self.limits.max_connections || on_ip >= self.limits.max_connections_per_ip {
            return None;
        }
        c.total += 1;
        *c.by_ip.entry(key).or_insert(0) += 1;
        Some(Permit {
            counts: self.counts.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// Whether the process is within its descriptor reserve. Linux hands out the lowest free
/// descriptor, so an accepted socket numbered `n` proves `n + 1` are open; a count of
/// `/proc/self/fd` (at most every [`FD_COUNT_EVERY`]) catches usage above holes.
struct FdWatch {
    /// Open descriptors allowed before accepts are refused; `usize::MAX`: no reserve.
    ceiling: usize,
    counted: Mutex<(Option<Instant>, usize)>,
}

impl FdWatch {
    fn new(reserve: usize) -> Self {
        let ceiling = match (reserve, nofile_limit()) {
            (0, _) | (_, None) => usize::MAX,
            (r, Some(limit)) => limit - r.min(limit / 2),
        };
        FdWatch {
            ceiling,
            counted: Mutex::new((None, 0)),
        }
    }

    fn low(&self, fd: i32) -> bool {
        if self.ceiling == usize::MAX {
            return false;
        }
        let lowest = usize::try_from(fd).map_or(0, |n| n + 1);
        if lowest >= self.ceiling {
            return true;
        }
        let mut c = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if c.0
            .is_none_or(|at| now.duration_since(at) >= FD_COUNT_EVERY)
        {
            *c = (Some(now), count_open_fds().unwrap_or(0));
        }
        c.1 >= self.ceiling
    }
}

/// The soft RLIMIT_NOFILE.
fn nofile_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a valid pointer.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (r == 0 && lim.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

fn count_open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// A socket that records when bytes last moved and holds its connection's [`Permit`].
struct Tracked<S> {
    inner: S,
    last_active_ms: Arc<AtomicU64>,
    _permit: Permit,
}

/// Milliseconds on a process-wide monotonic clock.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve `router` on `listener` (HTTPS when `tls` is given) until `shutdown` is cancelled;
/// then open connections are asked to finish and this returns when they have, or after
/// [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let gate = Gate::new(limits);
    let tls = tls.map(|cfg| {
        (
            TlsAcceptor::from(cfg),
            Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        )
    });
    let mut last_warn: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE: back off instead of spinning; say so now and then.
                if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    last_warn = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = gate.admit(remote.ip(), stream.as_raw_fd()) else {
            // Over a cap: close at once (an RST would be no kinder; no log per connection).
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            router: router.clone(),
            remote,
            limits,
            shutdown: shutdown.clone(),
        };
        match &tls {
            None => {
                tokio::spawn(conn.serve(stream, permit));
            }
            Some((acceptor, handshakes)) => {
                let (acceptor, handshakes) = (acceptor.clone(), handshakes.clone());
                tokio::spawn(async move {
                    let handshake = async {
                        let _slot = handshakes.acquire().await.ok()?;
                        acceptor.accept(stream).await.ok()
                    };
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Some(tls)) => conn.serve(tls, permit).await,
                        Ok(None) => tracing::debug!("HTTPS handshake failed"),
                        Err(_) => tracing::debug!("HTTPS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    // Connections were told to finish (WebSockets close with 1001): wait for them, a while.
    let drained = async {
        while gate.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
}

/// What serving one connection needs.
struct Connection {
    router: Router,
    remote: SocketAddr,
    limits: Limits,
    shutdown: CancellationToken,
}

impl Connection {
    fn serve<S>(self, stream: S, permit: Permit) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let last_active_ms = Arc::new(AtomicU64::new(now_ms()));
        let io = Tracked {
            inner: stream,
            last_active_ms: last_active_ms.clone(),
            _permit: permit,
        };
        let Connection {
            router,
            remote,
            limits,
            shutdown,
        } = self;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(Remote(remote)));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(64 * 1024);
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
            let mut tick =
                tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(10)));
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = shutdown.cancelled(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick() => {
                        let quiet = now_ms().saturating_sub(last_active_ms.load(Ordering::Relaxed));
                        if quiet >= idle_ms {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            fd_reserve: 0,
        }
    }

    #[test]
    fn caps_per_ip_and_in_total_and_releases() {
        let g = Gate::new(limits(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = g.admit(a, 10).unwrap();
        let _p2 = g.admit(a, 11).unwrap();
        assert!(g.admit(a, 12).is_none(), "per-IP cap");
        let _p3 = g.admit(b, 12).unwrap();
        assert!(
            g.admit("192.0.2.3".parse().unwrap(), 13).is_none(),
            "total cap"
        );
        assert_eq!(g.open(), 3);
        drop(p1);
        assert!(g.admit(a, 10).is_some());
        // IPv6 by /64.
        let g = Gate::new(limits(10, 1));
        let _x = g.admit("2001:db8::1".parse().unwrap(), 10).unwrap();
        assert!(g.admit("2001:db8::2".parse().unwrap(), 11).is_none());
    }

    #[test]
    fn the_descriptor_reserve_refuses_near_the_limit() {
        let limit = nofile_limit().expect("RLIMIT_NOFILE is finite here");
        let w = FdWatch::new(100);
        let ceiling = limit - 100.min(limit / 2);
        assert_eq!(w.ceiling, ceiling);
        assert!(w.low(i32::try_from(ceiling).unwrap()));
        assert!(!w.low(3));
        // A reserve over half the limit is capped so HTTP still gets half.
        assert_eq!(FdWatch::new(usize::MAX).ceiling, limit - limit / 2);
        assert!(!FdWatch::new(0).low(i32::MAX));
    }
}
