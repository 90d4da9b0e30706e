#!/usr/bin/env python3
"""Interop client: aioice (Python, aiortc's ICE stack) against a TURN server over UDP, TCP or TLS.

Authenticates with long-term credentials, allocates a UDP relay, and sends datagrams of several
sizes through it to an echo peer. Every echo must come back byte for byte, from the peer, through
the relay (aioice delivers ChannelData/Data only for bound peers). The peer's view of the source
address (it must be the advertised relayed address) is checked by the caller, who owns the peer.

Prints one line of flat JSON (strings, numbers, booleans only) and exits 0 on success, 1 on any
failure (the JSON then has "ok": false and "error"). Every wait is bounded.

Over TLS the server certificate is always verified (chain and host name) against --ca-file;
there is no option to turn verification off. The report then also has the negotiated TLS version
and ALPN protocol. "local" is the client's own address of its connection to the server, to be
compared with the XOR-MAPPED-ADDRESS ("mapped").

--close chooses how the client ends: "delete" (aioice's own close: Refresh LIFETIME=0, then close
the connection), "close" (close the TCP/TLS connection without Refresh; TLS sends close_notify) or
"abort" (drop the TCP/TLS connection at once: no Refresh, no close_notify). The last two check
that the server frees an allocation bound to a stream when the stream goes away.

Usage:
  aioice_relay.py --server 127.0.0.1 --port 3478 --user dev --password devpass \
      --peer 127.0.0.1:40000 [--sizes 100,1200,4000] [--count 3] [--timeout 20] \
      [--transport udp|tcp|tls] [--ca-file cert.pem] [--server-hostname NAME] \
      [--alpn stun.turn] [--tls-max 1.2|1.3] [--close delete|close|abort]
"""

import argparse
import asyncio
import ipaddress
import json
import os
import ssl
import sys

import aioice
from aioice.turn import create_turn_endpoint


def parse_hostport(text):
    """Parse "127.0.0.1:5000" or "[::1]:5000" into (host, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    ipaddress.ip_address(host)  # loopback literals only; no name resolution
    return host, int(port)


def fmt_addr(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Receiver(asyncio.DatagramProtocol):
    """Collects datagrams that arrive through the relay."""

    def __init__(self):
        self.queue = asyncio.Queue()
        self.errors = []
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(exc)

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.append(repr(exc))


def tls_context(args):
    """A client context that verifies the server: chain against --ca-file, and host name."""
    if not args.ca_file:
        raise ValueError("--transport tls needs --ca-file (verification is always on)")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca_file)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if args.alpn:
        ctx.set_alpn_protocols([p for p in args.alpn.split(",") if p])
    if args.tls_max == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def inner_protocol(transport):
    """aioice's protocol under its TurnTransport (private in aioice 0.13; the test pins it)."""
    return transport._TurnTransport__inner_protocol


async def run(args, report):
    server = (args.server, args.port)
    peer = parse_hostport(args.peer)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    if args.transport == "udp":
        extra = {}
    elif args.transport == "tcp":
        extra = {"transport": "tcp"}
    else:
        ctx = tls_context(args)
        extra = {"transport": "tcp", "ssl": ctx}
        if args.server_hostname:
            # create_turn_endpoint passes host=server to create_connection, which then uses it
            # as server_hostname; to check another name, wrap the loop's create_connection.
            loop = asyncio.get_running_loop()
            orig = loop.create_connection

            def create_connection(*a, **kw):
                kw["server_hostname"] = args.server_hostname
                return orig(*a, **kw)

            loop.create_connection = create_connection

    transport, receiver = await asyncio.wait_for(
        create_turn_endpoint(
            Receiver,
            server_addr=server,
            username=args.user,
            password=args.password,
            **extra,
        ),
        timeout=args.timeout,
    )
    try:
        relayed = transport.get_extra_info("sockname")
        mapped = transport.get_extra_info("related_address")
        report["relayed"] = fmt_addr(relayed)
        report["mapped"] = fmt_addr(mapped)
        inner = inner_protocol(transport).transport
        report["local"] = fmt_addr(inner.get_extra_info("sockname"))
        ssl_object = inner.get_extra_info("ssl_object")
        if ssl_object is not None:
            report["tls_version"] = ssl_object.version() or ""
            report["alpn"] = ssl_object.selected_alpn_protocol() or ""

        seq = 0
        for size in sizes:
            for _ in range(args.count):
                # Unique, checkable payload: sequence number then pseudo-random filler.
                head = seq.to_bytes(4, "big")
                payload = (head + os.urandom(size))[:size] if size >= 4 else os.urandom(size)
                transport.sendto(payload, peer)
                report["sent"] += 1
                report["bytes_sent"] += size
                data, src = await asyncio.wait_for(receiver.queue.get(), timeout=args.timeout)
                if tuple(src[:2]) != peer:
                    raise RuntimeError(f"echo came from {src}, expected peer {peer}")
                if data != payload:
                    raise RuntimeError(
                        f"echo of datagram {seq} differs: sent {len(payload)} bytes, "
                        f"got {len(data)}"
                    )
                report["received"] += 1
                report["bytes_received"] += len(data)
                report["max_size"] = max(report["max_size"], len(data))
                seq += 1
        if receiver.errors:
            raise RuntimeError("send errors: " + "; ".join(receiver.errors))
    finally:
        if args.close == "delete":
            # Sends Refresh(LIFETIME=0) so the server frees the allocation; connection_lost
            # follows.
            transport.close()
        else:
            # No Refresh: only the end of the TCP/TLS connection can free the allocation.
            protocol = inner_protocol(transport)
            if protocol.refresh_task is not None:
                protocol.refresh_task.cancel()
            if args.close == "close":
                protocol.transport.close()
            else:
                protocol.transport.abort()
        try:
            await asyncio.wait_for(asyncio.shield(receiver.closed), timeout=3)
        except asyncio.TimeoutError:
            report["close_timeout"] = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--peer", required=True, help="echo peer, host:port or [v6]:port")
    parser.add_argument("--sizes", default="100,1200,4000")
    parser.add_argument("--count", type=int, default=3, help="datagrams per size")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per wait")
    parser.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp")
    parser.add_argument("--ca-file", help="PEM trust anchors for TLS (required with tls)")
    parser.add_argument(
        "--server-hostname", help="name to verify the TLS certificate against (default: --server)"
    )
    parser.add_argument("--alpn", help="ALPN protocols to offer over TLS, comma-separated")
    parser.add_argument("--tls-max", choices=["1.2", "1.3"], default="1.3")
    parser.add_argument("--close", choices=["delete", "close", "abort"], default="delete")
    args = parser.parse_args()
    if args.close != "delete" and args.transport == "udp":
        parser.error("--close close|abort needs a stream transport (tcp or tls)")

    report = {
        "ok": False,
        "aioice": aioice.__version__,
        "server": fmt_addr((args.server, args.port)),
        "peer": args.peer,
        "sizes": args.sizes,
        "transport": args.transport,
        "close": args.close,
        "relayed": "",
        "mapped": "",
        "local": "",
        "tls_version": "",
        "alpn": "",
        "sent": 0,
        "received": 0,
        "bytes_sent": 0,
        "bytes_received": 0,
        "max_size": 0,
        "error": "",
    }
    try:
        asyncio.run(run(args, report))
        report["ok"] = report["sent"] > 0 and report["received"] == report["sent"]
        if not report["ok"]:
            report["error"] = "nothing was relayed"
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the report
        report["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
