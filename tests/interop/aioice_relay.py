#!/usr/bin/env python3
"""Interop client: aioice (Python, aiortc's ICE stack) against a TURN server over UDP.

Authenticates with long-term credentials, allocates a UDP relay, and sends datagrams of several
sizes through it to an echo peer. Every echo must come back byte for byte, from the peer, through
the relay (aioice delivers ChannelData/Data only for bound peers). The peer's view of the source
address (it must be the advertised relayed address) is checked by the caller, who owns the peer.

Prints one line of flat JSON (strings, numbers, booleans only) and exits 0 on success, 1 on any
failure (the JSON then has "ok": false and "error"). Every wait is bounded.

Usage:
  aioice_relay.py --server 127.0.0.1 --port 3478 --user dev --password devpass \
      --peer 127.0.0.1:40000 [--sizes 100,1200,4000] [--count 3] [--timeout 20]
"""

import argparse
import asyncio
import ipaddress
import json
import os
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


async def run(args, report):
    server = (args.server, args.port)
    peer = parse_hostport(args.peer)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    transport, receiver = await asyncio.wait_for(
        create_turn_endpoint(
            Receiver, server_addr=server, username=args.user, password=args.password
        ),
        timeout=args.timeout,
    )
    try:
        relayed = transport.get_extra_info("sockname")
        mapped = transport.get_extra_info("related_address")
        report["relayed"] = fmt_addr(relayed)
        report["mapped"] = fmt_addr(mapped)

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
        # Sends Refresh(LIFETIME=0) so the server frees the allocation; connection_lost follows.
        transport.close()
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
    args = parser.parse_args()

    report = {
        "ok": False,
        "aioice": aioice.__version__,
        "server": fmt_addr((args.server, args.port)),
        "peer": args.peer,
        "sizes": args.sizes,
        "relayed": "",
        "mapped": "",
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
