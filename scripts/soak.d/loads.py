"""The soak's load loops, each a thread bounded in time (the run's deadline) and in count.

Loops that create server state (churn, the session pool, kills, H1, the client that stops
reading) pass through a `Gate` so the sampler can bring the load to the same level before it
measures: "disruptors" (churn, kills, H1) stop at the end of a cycle first, then the pool
re-creates whatever was killed and stops too. The stateless loops (spoofed flood, slowloris,
partial HTTP requests, scraping, probes) never pause.
"""

import collections
import http.client
import json
import os
import random
import selectors
import socket
import struct
import threading
import time

import turn

ECHO_CHANNEL = 0x4000


class Stats:
    """Thread-safe counters per loop: stats.add('churn-udp', 'ok')."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.defaultdict(collections.Counter)
        self.values = collections.defaultdict(list)

    def add(self, loop, what, n=1):
        with self.lock:
            self.counts[loop][what] += n

    def value(self, loop, what, v):
        with self.lock:
            lst = self.values[f"{loop}.{what}"]
            if len(lst) < 100_000:
                lst.append(v)

    def snapshot(self):
        with self.lock:
            return {k: dict(v) for k, v in self.counts.items()}


class Gate:
    """Lets the sampler pause a group of loops at the end of their cycles."""

    def __init__(self, name):
        self.name = name
        self.cond = threading.Condition()
        self.paused = False
        self.members = 0
        self.idle = 0

    def join(self):
        with self.cond:
            self.members += 1

    def leave(self):
        with self.cond:
            self.members -= 1
            self.cond.notify_all()

    def checkpoint(self, stop):
        with self.cond:
            if not self.paused:
                return
            self.idle += 1
            self.cond.notify_all()
            while self.paused and not stop.is_set():
                self.cond.wait(0.2)
            self.idle -= 1

    def sleep(self, seconds, stop):
        """Sleep, but return early when a pause is requested or the run stops."""
        end = time.monotonic() + seconds
        with self.cond:
            while not self.paused and not stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(min(left, 0.2))

    def pause(self, timeout):
        """Request a pause; True when every member reached its checkpoint within timeout."""
        end = time.monotonic() + timeout
        with self.cond:
            self.paused = True
            self.cond.notify_all()
            while self.idle < self.members:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
            return True

    def resume(self):
        with self.cond:
            self.paused = False
            self.cond.notify_all()


class Ctx:
    """What every loop needs: addresses, secrets, the stop event, the deadline, stats."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.stop = threading.Event()
        self.echo_stop = threading.Event()
        self.stats = Stats()
        self.disruptors = Gate("disruptors")
        self.pool_gate = Gate("pool")
        self.threads = []

    def running(self):
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def spawn(self, name, fn, *args):
        t = threading.Thread(target=self._guard, args=(name, fn) + args, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def _guard(self, name, fn, *args):
        try:
            fn(self, name, *args)
        except Exception as e:  # a loop that dies is a finding, not a crash of the soak
            self.stats.add(name, f"loop died: {type(e).__name__}: {e}")

    def creds(self, user):
        return turn.rest_credentials(self.secret, user, ttl=self.cred_ttl)

    def server_for(self, transport):
        return (self.host, self.tls_port if transport == "tls" else self.turn_port)

    def http(self, port, method, path, token=False, timeout=3.0):
        c = http.client.HTTPConnection(self.host, port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.admin_token}"} if token else {}
            c.request(method, path, headers=headers)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def code_of(e):
    if isinstance(e, turn.TurnError):
        return f"error {e.code}" if e.code else "timeout"
    if isinstance(e, EOFError):
        return "closed by server"
    return type(e).__name__


def echo_peer(ctx, name, sock):
    """UDP echo peer the relays send to (bounded by the run; one datagram at a time)."""
    sock.settimeout(0.5)
    while not ctx.echo_stop.is_set():  # outlives the loads, so no echo is lost at the end
        try:
            data, addr = sock.recvfrom(65536)
            sock.sendto(data, addr)
        except socket.timeout:
            continue
        except OSError:
            continue


def open_allocation(ctx, transport, user, lifetime=600):
    username, password = ctx.creds(user)
    conn = turn.Conn(transport, ctx.server_for(transport), tls_context=ctx.tls_context)
    try:
        c = turn.Client(conn, username, password)
        c.allocate(lifetime)
        c.bind_channel(ECHO_CHANNEL, ctx.echo_addr)
        return c
    except BaseException:
        conn.close()
        raise


def churn(ctx, name, transport, rate, max_cycles):
    """Allocate with fresh REST credentials, relay a few packets, Refresh(0), close."""
    gate = ctx.disruptors
    gate.join()
    try:
        for seq in range(max_cycles):
            if not ctx.running():
                break
            gate.checkpoint(ctx.stop)
            started = time.monotonic()
            c = None
            try:
                c = open_allocation(ctx, transport, f"churn-{transport}-{os.getpid()}-{seq}")
                ok = all(c.echo(ECHO_CHANNEL, os.urandom(100)) for _ in range(3))
                ctx.stats.add(name, "ok" if ok else "echo lost")
                if not ok:
                    ctx.stats.value(name, "echo_lost_at_s", round(time.monotonic() - ctx.t0, 1))
                c.refresh(0)
            except Exception as e:
                ctx.stats.add(name, code_of(e))
            finally:
                if c:
                    c.conn.close()
            ctx.stats.value(name, "cycle_ms", (time.monotonic() - started) * 1000)
            gate.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)), ctx.stop)
    finally:
        gate.leave()


def pool(ctx, name, transport, index):
    """One long-lived allocation: refreshed and checked every 5 s, re-created when killed."""
    gate = ctx.pool_gate
    gate.join()
    c, seq = None, 0
    try:
        while ctx.running():
            try:
                if c is None:
                    seq += 1
                    c = open_allocation(ctx, transport, f"pool-{transport}-{index}-{seq}")
                    ctx.stats.add(name, "created")
                c.refresh(600)
                c.bind_channel(ECHO_CHANNEL, ctx.echo_addr)  # permissions last 5 min, channels 10
                if not c.echo(ECHO_CHANNEL, os.urandom(64)):
                    ctx.stats.add(name, "echo lost")
            except Exception as e:
                ctx.stats.add(name, f"replaced after {code_of(e)}")
                ctx.stats.value(name, "failed_at_s", round(time.monotonic() - ctx.t0, 1))
                if c:
                    c.conn.close()
                c = None
                gate.checkpoint(ctx.stop)  # a failing member must not hold up the sampler
                time.sleep(0.5)  # not gate.sleep: a paused gate must not turn this into a spin
                continue
            gate.checkpoint(ctx.stop)
            gate.sleep(5.0, ctx.stop)
    finally:
        if c:
            try:
                c.refresh(0)  # a UDP allocation would otherwise live out its lifetime
            except Exception as e:
                ctx.stats.add(name, f"release {code_of(e)}")
            c.conn.close()
        gate.leave()


def killer(ctx, name, period):
    """End a pool session through the admin API every `period` s (by id or by user)."""
    gate = ctx.disruptors
    gate.join()
    try:
        n = 0
        while ctx.running():
            gate.sleep(period, ctx.stop)
            gate.checkpoint(ctx.stop)
            if not ctx.running():
                break
            n += 1
            try:
                status, body = ctx.http(ctx.admin_port, "GET", "/api/sessions", token=True)
                if status != 200:
                    ctx.stats.add(name, f"list {status}")
                    continue
                victims = [s for s in json.loads(body)["sessions"] if s["user"].startswith("pool-")]
                if not victims:
                    ctx.stats.add(name, "no victim")
                    continue
                v = random.choice(victims)
                if n % 2:
                    status, _ = ctx.http(ctx.admin_port, "DELETE", f"/api/sessions/{v['id']}", True)
                    gone = "already gone" if status == 404 else f"kill {status}"  # replaced meanwhile
                    ctx.stats.add(name, "killed" if status == 204 else gone)
                else:
                    status, body = ctx.http(
                        ctx.admin_port, "DELETE", f"/api/users/{v['user']}/sessions", True
                    )
                    ended = json.loads(body).get("ended", 0) if status == 200 else 0
                    gone = "already gone" if status == 200 else f"kill user {status}"
                    ctx.stats.add(name, "killed" if ended >= 1 else gone)
            except Exception as e:
                ctx.stats.add(name, code_of(e))
    finally:
        gate.leave()


def h1(ctx, name, rate, max_cycles):
    """Issue 10 H1: Allocate(EVEN-PORT R=1) + Refresh(0) in a loop from one 5-tuple."""
    gate = ctx.disruptors
    gate.join()
    conn = None
    try:
        username, password = ctx.creds("h1-attacker")
        conn = turn.Conn("udp", ctx.server_for("udp"), source_ip="127.0.4.1")
        c = turn.Client(conn, username, password, timeout=2.0)
        for _ in range(max_cycles):
            if not ctx.running():
                break
            gate.checkpoint(ctx.stop)
            started = time.monotonic()
            try:
                c.allocate(600, even_port=True)
                ctx.stats.add(name, "allocated")
                c.refresh(0)
            except Exception as e:
                ctx.stats.add(name, code_of(e))
            gate.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)), ctx.stop)
    finally:
        if conn:
            conn.close()
        gate.leave()


def spoofed_flood(ctx, name, rate, max_packets):
    """Unauthenticated requests and garbage from ever-new 127.x.y.z sources (never replied
    to by us): the server must keep no state per source."""
    allocate = turn.build(
        turn.REQUEST | turn.ALLOCATE, os.urandom(12), [(turn.REQUESTED_TRANSPORT, b"\x11\0\0\0")]
    )
    packets = [allocate, turn.binding_request()[1], os.urandom(48), turn.channel_data(0x4001, b"x" * 8, False)]
    sent, n = 0, 0
    start = time.monotonic()
    while ctx.running() and sent < max_packets:
        n += 1
        src = f"127.{10 + (n >> 16) % 240}.{(n >> 8) & 255}.{max(1, n & 255)}"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((src, 0))
            for p in packets:
                s.sendto(p, ctx.server_for("udp"))
            sent += len(packets)
        except OSError as e:
            ctx.stats.add(name, f"send {e.errno}")
        finally:
            s.close()
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    ctx.stats.add(name, "packets", sent)
    ctx.stats.add(name, "sources", n)


class HoldSpec:
    """A kind of connection held open against the server: first bytes, a drip of one byte
    every `drip` s, and the longest the server may keep it (`deadline` s)."""

    def __init__(self, name, port, count, sources, first, drip, deadline):
        self.name, self.port, self.count, self.sources = name, port, count, sources
        self.first, self.drip, self.deadline = first, drip, deadline


def holders(ctx, name, specs, max_opens):
    """Slowloris (TCP frames, TLS handshakes) and partial HTTP requests (issue 10 M6): keep
    `count` connections per spec open, each sending a byte now and then, never finishing.
    Records how long the server took to close each; one it keeps past `deadline` is an
    overstay (we close it and count it)."""
    sel = selectors.DefaultSelector()
    live = {}  # sock -> (spec, opened, last_drip)
    reopen_at = collections.defaultdict(list)  # spec name -> times
    opens = 0

    def open_one(spec, i):
        nonlocal opens
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((spec.sources[i % len(spec.sources)], 0))
            s.settimeout(2.0)
            s.connect((ctx.host, spec.port))
            s.sendall(spec.first)
            s.setblocking(False)
        except OSError as e:
            s.close()
            ctx.stats.add(spec.name, f"connect failed: {e.strerror or e}")
            return False
        opens += 1
        ctx.stats.add(spec.name, "opened")
        now = time.monotonic()
        live[s] = (spec, now, now)
        sel.register(s, selectors.EVENT_READ)
        return True

    def close_one(s):
        sel.unregister(s)
        del live[s]
        s.close()

    try:
        now = time.monotonic()
        for spec in specs:  # staggered, so that the server's timeouts do not fire in step
            reopen_at[spec.name] = [now + random.uniform(0, min(spec.deadline, 10.0)) for _ in range(spec.count)]
        while ctx.running() and opens < max_opens:
            now = time.monotonic()
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                spec, opened, _ = live[s]
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue  # e.g. an HTTP 408 or a TLS alert: wait for the close
                ctx.stats.add(spec.name, "closed by server")
                ctx.stats.value(spec.name, "held_s", now - opened)
                close_one(s)
                reopen_at[spec.name].append(now + random.uniform(0.5, 1.5))
            for s, (spec, opened, last) in list(live.items()):
                if now - opened > spec.deadline:
                    ctx.stats.add(spec.name, "overstay (server kept it open)")
                    ctx.stats.value(spec.name, "held_s", now - opened)
                    close_one(s)
                    reopen_at[spec.name].append(now + random.uniform(0.5, 1.5))
                elif now - last >= spec.drip:
                    try:
                        s.send(b"X")
                        live[s] = (spec, opened, now)
                    except OSError:
                        pass  # the close shows up as EOF on the next select
            for spec in specs:
                due = [t for t in reopen_at[spec.name] if t <= now]
                reopen_at[spec.name] = [t for t in reopen_at[spec.name] if t > now]
                for i in range(len(due)):
                    if not open_one(spec, random.randrange(len(spec.sources))):
                        reopen_at[spec.name].append(now + 1.0)
    finally:
        for s in list(live):
            close_one(s)
        sel.close()


def stop_reader(ctx, name, deadline, flood_pps, max_cycles):
    """A TCP or TLS client (in turn) that allocates, permits a peer and stops reading while
    the peer floods its relay. The server must disconnect it (write queue full) and free the
    allocation within `deadline` s; the cycle repeats. Not gated (a cycle may last `deadline`): it
    holds at most one allocation and one connection, inside the growth floors."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((ctx.host, 0))
    payload = os.urandom(1200)
    try:
        for seq in range(max_cycles):
            if not ctx.running():
                break
            user = f"stopreader-{os.getpid()}-{seq}"
            username, password = ctx.creds(user)
            conn, transport = None, ("tcp", "tls")[seq % 2]
            try:
                conn = turn.Conn(transport, ctx.server_for(transport), tls_context=ctx.tls_context)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                c = turn.Client(conn, username, password)
                c.allocate(600)
                c.permit(peer.getsockname())
                relay = c.relay
            except Exception as e:
                ctx.stats.add(name, f"setup {code_of(e)}")
                if conn:
                    conn.close()
                time.sleep(3.0)
                continue
            # From here on the client never reads.
            start = time.monotonic()
            gone, sent, next_check = None, 0, start + 0.5
            while ctx.running() and time.monotonic() - start < deadline:
                for _ in range(max(1, flood_pps // 100)):
                    peer.sendto(payload, relay)
                    sent += 1
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 0.5
                    try:
                        status, body = ctx.http(ctx.admin_port, "GET", f"/api/sessions?user={user}", True)
                        if status == 200 and not json.loads(body)["sessions"]:
                            gone = now - start
                            break
                    except Exception:
                        pass
                time.sleep(0.01)
            conn.close()
            ctx.stats.add(name, "packets flooded", sent)
            if gone is not None:
                ctx.stats.add(name, f"{transport} disconnected by server")
                ctx.stats.value(name, "disconnect_s", gone)
            elif ctx.running():
                ctx.stats.add(name, f"{transport} overstay (never disconnected)")
            time.sleep(3.0)
    finally:
        peer.close()


def scraper(ctx, name, period):
    """GET /metrics every `period` s; a failure or a slow answer (> 1 s) is counted."""
    next_t = time.monotonic()
    while ctx.running():
        t0 = time.monotonic()
        try:
            status, _ = ctx.http(ctx.admin_port, "GET", "/metrics", timeout=2.0)
            ctx.stats.add(name, "ok" if status == 200 else f"status {status}")
            ms = (time.monotonic() - t0) * 1000
            ctx.stats.value(name, "ms", ms)
            if ms > 1000:
                ctx.stats.add(name, "slow (>1 s)")
        except Exception as e:
            ctx.stats.add(name, code_of(e))
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))


def prober(ctx, name, period):
    """A Binding request every `period` s from 127.0.0.1: answered within 1 s or lost."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ctx.host, 0))
    s.settimeout(0.2)
    try:
        while ctx.running():
            t0 = time.monotonic()
            tid, msg = turn.binding_request()
            s.sendto(msg, ctx.server_for("udp"))
            answered = False
            while time.monotonic() - t0 < 1.0 and not answered:
                try:
                    data = s.recv(2048)
                    answered = len(data) >= 20 and data[8:20] == tid
                except socket.timeout:
                    pass
            ctx.stats.add(name, "answered" if answered else "lost")
            time.sleep(max(0.0, period - (time.monotonic() - t0)))
    finally:
        s.close()


def periodic(ctx, name, first, period, fn):
    """Call fn() after `first` s, then every `period` s (SIGHUP)."""
    wait = first
    while ctx.running():
        end = time.monotonic() + wait
        wait = period
        while ctx.running() and time.monotonic() < end:
            time.sleep(0.2)
        if ctx.running():
            try:
                fn()
                ctx.stats.add(name, "sent")
            except Exception as e:
                ctx.stats.add(name, code_of(e))


def stream_first_bytes():
    """Slowloris openers: a STUN header announcing 1000 bytes; a TLS record announcing 512."""
    stun = struct.pack("!HHI", 0x0001, 1000, turn.MAGIC) + os.urandom(4)
    tls = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03])
    return stun, tls
