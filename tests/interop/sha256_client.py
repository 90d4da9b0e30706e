#!/usr/bin/env python3
"""Independent RFC 8489 SHA-256 TURN client (hashlib/hmac only, no turnd code).

Sends a first Allocate, reads the 401 (nonce cookie, PASSWORD-ALGORITHMS), then allocates with
PASSWORD-ALGORITHM SHA-256, the key SHA-256(user:realm:password) (ASCII password, so OpaqueString
is the identity) and MESSAGE-INTEGRITY-SHA256 of --mi-len bytes; checks the answer's
MESSAGE-INTEGRITY-SHA256 with the same key, then deletes the allocation (Refresh LIFETIME=0).
--userhash sends USERHASH = SHA-256(user:realm) instead of USERNAME. --bid-down instead answers
with PASSWORD-ALGORITHMS rewritten to MD5 only and expects 400.

Prints one line of JSON; exit 0 on success, 1 on failure. Every wait is bounded (--timeout).
"""

import argparse
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import zlib

COOKIE = 0x2112A442
ALLOCATE, REFRESH = 0x0003, 0x0004
A_USERNAME, A_MI, A_ERROR, A_REALM, A_NONCE = 0x0006, 0x0008, 0x0009, 0x0014, 0x0015
A_MI256, A_PWALG, A_USERHASH, A_PWALGS = 0x001C, 0x001D, 0x001E, 0x8002
A_LIFETIME, A_REQ_TRANSPORT, A_RELAYED, A_FINGERPRINT = 0x000D, 0x0019, 0x0016, 0x8028


def attr(t, v):
    pad = (4 - len(v) % 4) % 4
    return struct.pack("!HH", t, len(v)) + v + b"\0" * pad


def header(method, body_len, tid):
    return struct.pack("!HHI", method, body_len, COOKIE) + tid


def fingerprint(msg):
    # Length field counts the FINGERPRINT attribute (8 bytes).
    msg = msg[:2] + struct.pack("!H", len(msg) - 20 + 8) + msg[4:]
    crc = (zlib.crc32(msg) ^ 0x5354554E) & 0xFFFFFFFF
    return msg + attr(A_FINGERPRINT, struct.pack("!I", crc))


def sign_sha256(method, tid, body, key, tag_len):
    msg = header(method, len(body) + 4 + tag_len, tid) + body
    tag = hmac.new(key, msg, hashlib.sha256).digest()[:tag_len]
    return msg + attr(A_MI256, tag)


def parse(data):
    typ, length, cookie = struct.unpack("!HHI", data[:8])
    assert cookie == COOKIE and length + 20 == len(data), "not STUN"
    attrs, off = [], 20
    while off < len(data):
        t, l = struct.unpack("!HH", data[off:off + 4])
        attrs.append((t, off, data[off + 4:off + 4 + l]))
        off += 4 + l + (4 - l % 4) % 4
    return typ, attrs


def first(attrs, t):
    return next((v for (a, _, v) in attrs if a == t), None)


def check_mi256(data, attrs, key):
    for t, off, v in attrs:
        if t == A_MI256:
            covered = data[:2] + struct.pack("!H", off + 4 + len(v) - 20) + data[4:off]
            want = hmac.new(key, covered, hashlib.sha256).digest()[:len(v)]
            return hmac.compare_digest(want, v), len(v)
    return False, 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--mi-len", type=int, default=32)
    ap.add_argument("--userhash", action="store_true")
    ap.add_argument("--bid-down", action="store_true")
    ap.add_argument("--timeout", type=float, default=5)
    a = ap.parse_args()
    fam = socket.AF_INET6 if ":" in a.server else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(a.timeout)
    dst = (a.server, a.port)
    report = {"ok": False}

    def ask(msg):
        s.sendto(msg, dst)
        data, _ = s.recvfrom(65535)
        return data

    try:
        tid = os.urandom(12)
        body = attr(A_REQ_TRANSPORT, bytes([17, 0, 0, 0]))
        data = ask(fingerprint(header(ALLOCATE, len(body), tid) + body))
        typ, attrs = parse(data)
        err = first(attrs, A_ERROR)
        assert typ == 0x0113 and err and err[2] * 100 + err[3] == 401, "expected 401"
        realm = first(attrs, A_REALM)
        nonce = first(attrs, A_NONCE)
        algs = first(attrs, A_PWALGS)
        report["nonce_cookie"] = nonce.startswith(b"obMatJos2")
        report["algorithms"] = algs.hex() if algs else None
        assert algs is not None, "no PASSWORD-ALGORITHMS offered"
        key = hashlib.sha256(
            a.user.encode() + b":" + realm + b":" + a.password.encode()).digest()
        if a.userhash:
            who = attr(A_USERHASH, hashlib.sha256(a.user.encode() + b":" + realm).digest())
        else:
            who = attr(A_USERNAME, a.user.encode())
        offered = bytes.fromhex("00010000") if a.bid_down else algs
        chosen = bytes.fromhex("00010000") if a.bid_down else bytes.fromhex("00020000")
        creds = who + attr(A_REALM, realm) + attr(A_NONCE, nonce) + \
            attr(A_PWALGS, offered) + attr(A_PWALG, chosen)
        tid = os.urandom(12)
        body = attr(A_REQ_TRANSPORT, bytes([17, 0, 0, 0])) + creds
        data = ask(fingerprint(sign_sha256(ALLOCATE, tid, body, key, a.mi_len)))
        typ, attrs = parse(data)
        err = first(attrs, A_ERROR)
        report["code"] = err[2] * 100 + err[3] if err else 0
        if a.bid_down:
            assert report["code"] == 400, "bid-down not refused with 400"
            report["ok"] = True
            return
        assert typ == 0x0103, "allocate failed: %d" % report["code"]
        ok, n = check_mi256(data, attrs, key)
        report["answer_mi_sha256_len"] = n
        assert ok, "answer's MESSAGE-INTEGRITY-SHA256 does not verify"
        assert first(attrs, A_MI) is None, "MESSAGE-INTEGRITY next to -SHA256"
        assert first(attrs, A_RELAYED) is not None, "no XOR-RELAYED-ADDRESS"
        tid = os.urandom(12)
        body = attr(A_LIFETIME, struct.pack("!I", 0)) + creds
        data = ask(fingerprint(sign_sha256(REFRESH, tid, body, key, a.mi_len)))
        typ, attrs = parse(data)
        assert typ == 0x0104, "refresh(0) failed"
        assert check_mi256(data, attrs, key)[0], "refresh answer does not verify"
        report["ok"] = True
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        report["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        print(json.dumps(report))
        sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
