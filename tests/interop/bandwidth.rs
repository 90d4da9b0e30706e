//! `[policy] max_bps_per_allocation` against a client we did not write: coturn's
//! `turnutils_uclient` sends ChannelData of 1000 bytes every 2 ms (4 Mbit/s, 8x a cap of
//! 500 kbit/s) through turnd to a peer of ours that times what arrives and echoes it. With the
//! cap the peer gets the cap's rate (plus its burst) within 25%, and `/metrics` counts the rest
//! in `turnd_bandwidth_dropped_total`; with 0 everything arrives; a reload (what SIGHUP runs)
//! caps an allocation that is already relaying.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::*;

const CAP_BPS: u64 = 500_000;
const LEN: u32 = 1000;
const INTERVAL_MS: u32 = 2;

/// Arrivals at the peer: (when, bytes), in order.
type Arrivals = Arc<Mutex<Vec<(Instant, usize)>>>;

/// A UDP echo peer on `port` and `port + 1` (uclient binds channels to both) that records
/// when each datagram arrived.
struct TimedPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    arrivals: Arrivals,
    threads: Vec<JoinHandle<()>>,
}

impl TimedPeer {
    fn start(ip: IpAddr) -> TimedPeer {
        assert!(ip.is_loopback());
        let (a, b) = (0..100)
            .find_map(|_| {
                let a = UdpSocket::bind((ip, 0)).expect("bind peer");
                let port = a.local_addr().ok()?.port().checked_add(1)?;
                UdpSocket::bind((ip, port)).ok().map(|b| (a, b))
            })
            .expect("a free UDP port pair");
        let addr = a.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let arrivals: Arrivals = Arc::default();
        let threads = [a, b]
            .into_iter()
            .map(|sock| {
                let (stop, arrivals) = (stop.clone(), arrivals.clone());
                std::thread::spawn(move || {
                    sock.set_read_timeout(Some(Duration::from_millis(50)))
                        .expect("read timeout");
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, from)) = sock.recv_from(&mut buf) else {
                            continue;
                        };
                        arrivals.lock().expect("lock").push((Instant::now(), n));
                        let _ = sock.send_to(&buf[..n], from);
                    }
                })
            })
            .collect();
        TimedPeer {
            addr,
            stop,
            arrivals,
            threads,
        }
    }

    fn arrivals(&self) -> Vec<(Instant, usize)> {
        self.arrivals.lock().expect("lock").clone()
    }
}

impl Drop for TimedPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn start(bps: u64) -> turnd::Running {
    let mut c = turnd::Config::for_tests();
    c.policy.max_bps_per_allocation = bps;
    turnd::start(c).expect("turnd starts")
}

/// `turnd_bandwidth_dropped_total{direction="..."}` from the admin listener's `/metrics`.
fn dropped(running: &turnd::Running, direction: &str) -> u64 {
    metric(
        running,
        &format!("turnd_bandwidth_dropped_total{{direction=\"{direction}\"}}"),
    )
}

fn uclient(server: SocketAddr, peer: SocketAddr, messages: u32) -> Uclient {
    Uclient::new(server)
        .user(USER, PASSWORD)
        .peer(peer)
        .no_rtcp()
        .messages(messages)
        .length(LEN)
        .interval_ms(INTERVAL_MS)
        .timeout(Duration::from_secs(60))
}

/// Bytes that arrived in `[from, to]`.
fn bytes_between(arrivals: &[(Instant, usize)], from: Instant, to: Instant) -> u64 {
    arrivals
        .iter()
        .filter(|(t, _)| (from..=to).contains(t))
        .map(|(_, n)| *n as u64)
        .sum()
}

#[test]
fn uclient_over_the_cap_gets_the_cap_and_the_rest_is_dropped_and_counted() {
    let running = start(CAP_BPS);
    let peer = TimedPeer::start(V4);
    let u = uclient(
        listener(&running, ClientTransport::Udp, V4),
        peer.addr,
        1500,
    );
    let r = u.run();
    let ctx = r.context();
    assert!(r.summary, "uclient printed no summary\n{ctx}");
    assert_eq!(r.sent_msgs, u.expected_messages(), "offered\n{ctx}");
    let arrivals = peer.arrivals();
    let (first, last) = (arrivals.first().unwrap().0, arrivals.last().unwrap().0);
    let secs = (last - first).as_secs_f64();
    let delivered: u64 = arrivals.iter().map(|(_, n)| *n as u64).sum();
    let offered_bps = r.sent_bytes as f64 * 8.0 / secs;
    let cap = CAP_BPS as f64 / 8.0;
    let expected = cap * secs + cap / 4.0;
    eprintln!(
        "bandwidth: offered {:.0} bit/s for {secs:.2} s ({} msgs); delivered {delivered} bytes \
         ({:.0} bit/s), expected {expected:.0}",
        offered_bps,
        r.sent_msgs,
        delivered as f64 * 8.0 / secs
    );
    assert!(secs >= 2.0, "the run lasted {secs:.2} s\n{ctx}");
    assert!(
        offered_bps >= 4.0 * CAP_BPS as f64,
        "offered {offered_bps:.0} bit/s, not 4x the cap\n{ctx}"
    );
    let ratio = delivered as f64 / expected;
    assert!(
        (0.75..=1.25).contains(&ratio),
        "delivered {delivered} bytes in {secs:.2} s, expected {expected:.0} (x{ratio:.2})\n{ctx}"
    );
    // Every datagram uclient sent on its channel either reached the peer or was counted, but
    // for the few a busy machine's loopback may lose before turnd reads them (at most 5%).
    let dropped_to_peer = dropped(&running, "to_peer");
    let delivered_msgs = arrivals.len() as u64;
    let accounted = delivered_msgs + dropped_to_peer;
    eprintln!(
        "bandwidth: sent {}, delivered {delivered_msgs}, dropped {dropped_to_peer}",
        r.sent_msgs
    );
    assert!(
        accounted <= r.sent_msgs && accounted * 100 >= r.sent_msgs * 95,
        "delivered {delivered_msgs} + dropped {dropped_to_peer} vs sent {}\n{ctx}",
        r.sent_msgs
    );
    running.stop();
}

#[test]
fn uclient_with_cap_zero_gets_everything_through() {
    let running = start(0);
    let peer = TimedPeer::start(V4);
    let u = uclient(
        listener(&running, ClientTransport::Udp, V4),
        peer.addr,
        1500,
    );
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_eq!(peer.arrivals().len() as u64, u.expected_messages());
    assert_eq!(dropped(&running, "to_peer"), 0);
    assert_eq!(dropped(&running, "to_client"), 0);
    running.stop();
}

#[test]
fn a_reload_caps_an_allocation_that_is_already_relaying() {
    let running = start(0);
    let peer = TimedPeer::start(V4);
    let u = uclient(
        listener(&running, ClientTransport::Udp, V4),
        peer.addr,
        2500,
    );
    let runner = std::thread::spawn(move || u.run());
    // Wait until the data flows uncapped, then reload with the cap (what SIGHUP does).
    let deadline = Instant::now() + Duration::from_secs(20);
    while peer.arrivals().len() < 200 {
        assert!(Instant::now() < deadline, "no data through turnd");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut capped = turnd::Config::for_tests();
    capped.policy.max_bps_per_allocation = CAP_BPS;
    running.control.reload(capped).expect("reload");
    let reloaded = Instant::now();
    let r = runner.join().expect("uclient thread");
    let ctx = r.context();
    assert!(r.summary, "uclient printed no summary\n{ctx}");
    let arrivals = peer.arrivals();
    let last = arrivals.last().unwrap().0;
    // From half a second after the reload (the burst is gone by then) to the end.
    let from = reloaded + Duration::from_millis(500);
    assert!(
        last > from + Duration::from_secs(1),
        "too short a run\n{ctx}"
    );
    let secs = (last - from).as_secs_f64();
    let delivered = bytes_between(&arrivals, from, last);
    let expected = CAP_BPS as f64 / 8.0 * secs;
    let before = bytes_between(&arrivals, arrivals[0].0, reloaded) as f64
        / (reloaded - arrivals[0].0).as_secs_f64();
    eprintln!(
        "bandwidth reload: {before:.0} B/s before; after: {delivered} bytes in {secs:.2} s, \
         expected {expected:.0}"
    );
    let ratio = delivered as f64 / expected;
    assert!(
        (0.75..=1.25).contains(&ratio),
        "after the reload: {delivered} bytes in {secs:.2} s, expected {expected:.0}\n{ctx}"
    );
    assert!(dropped(&running, "to_peer") > 0);
    running.stop();
}
