"""A small TURN client for the soak (stdlib only): STUN messages with long-term credentials,
TURN REST credentials, and one transport class for UDP, TCP and TLS (RFC 8656 §11.5 framing).

Only what the soak needs: Allocate (optionally EVEN-PORT), Refresh, CreatePermission,
ChannelBind, ChannelData, Binding. Every wait has a timeout; nothing here loops unbounded.
"""

import base64
import hashlib
import hmac
import ipaddress
import os
import select
import socket
import ssl
import struct
import time

MAGIC = 0x2112A442

BINDING, ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION, CHANNEL_BIND = 1, 3, 4, 6, 7, 8, 9

USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
CHANNEL_NUMBER, LIFETIME, XOR_PEER_ADDRESS, DATA_ATTR = 0x000C, 0x000D, 0x0012, 0x0013
REALM, NONCE, XOR_RELAYED_ADDRESS, EVEN_PORT = 0x0014, 0x0015, 0x0016, 0x0018
REQUESTED_TRANSPORT, XOR_MAPPED_ADDRESS, RESERVATION_TOKEN = 0x0019, 0x0020, 0x0022

REQUEST, INDICATION, SUCCESS, ERROR = 0x0000, 0x0010, 0x0100, 0x0110


class TurnError(Exception):
    """A request failed: `code` is the STUN error code, 0 for a timeout or a closed stream."""

    def __init__(self, what, code, reason=""):
        super().__init__(f"{what}: {code or 'no answer'} {reason}".strip())
        self.code = code


def rest_credentials(secret, user, ttl=3600):
    """TURN REST: username `expiry:user`, password base64(HMAC-SHA1(secret, username))."""
    username = f"{int(time.time()) + ttl}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


def attr(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def build(msg_type, tid, attrs, key=None):
    body = b"".join(attr(k, v) for k, v in attrs)
    if key is not None:
        head = struct.pack("!HHI", msg_type, len(body) + 24, MAGIC) + tid
        body += attr(MESSAGE_INTEGRITY, hmac.new(key, head + body, hashlib.sha1).digest())
    return struct.pack("!HHI", msg_type, len(body), MAGIC) + tid + body


def parse(buf):
    """(type, tid, {attr: first value}) or None for anything that is not a STUN message."""
    if len(buf) < 20:
        return None
    msg_type, length, magic = struct.unpack_from("!HHI", buf)
    if magic != MAGIC or msg_type & 0xC000 or 20 + length > len(buf):
        return None
    attrs, i, end = {}, 20, 20 + length
    while i + 4 <= end:
        kind, alen = struct.unpack_from("!HH", buf, i)
        if i + 4 + alen > end:
            return None
        attrs.setdefault(kind, bytes(buf[i + 4 : i + 4 + alen]))
        i += 4 + alen + (-alen % 4)
    return msg_type, bytes(buf[8:20]), attrs


def xor_address(addr):
    ip, port = addr
    raw = int(ipaddress.IPv4Address(ip)) ^ MAGIC
    return struct.pack("!BBH", 0, 1, port ^ (MAGIC >> 16)) + raw.to_bytes(4, "big")


def parse_xor_address(value):
    if len(value) < 8 or value[1] != 1:
        return None
    port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC >> 16)
    ip = int.from_bytes(value[4:8], "big") ^ MAGIC
    return str(ipaddress.IPv4Address(ip)), port


def error_code(attrs):
    v = attrs.get(ERROR_CODE, b"")
    if len(v) < 4:
        return 0, ""
    return (v[2] & 7) * 100 + v[3], v[4:].decode(errors="replace")


def channel_data(number, payload, pad):
    frame = struct.pack("!HH", number, len(payload)) + payload
    return frame + b"\0" * (-len(frame) % 4) if pad else frame


class Conn:
    """One client transport to the server: 'udp', 'tcp' or 'tls'. `recv` returns one STUN
    message or ChannelData frame, or None on timeout; raises EOFError when a stream closed."""

    def __init__(self, transport, server, source_ip="127.0.0.1", tls_context=None, timeout=5.0):
        self.transport = transport
        self.server = server
        self.buf = b""
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((source_ip, 0))
            self.sock.connect(server)
        else:
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                raw.bind((source_ip, 0))
                raw.settimeout(timeout)
                raw.connect(server)
                if transport == "tls":
                    raw = tls_context.wrap_socket(raw, server_hostname=server[0])
            except BaseException:
                raw.close()
                raise
            self.sock = raw
        self.sock.settimeout(timeout)

    def local(self):
        return self.sock.getsockname()

    def send(self, data):
        if self.transport == "udp":
            self.sock.send(data)
        else:
            self.sock.sendall(data)

    def _frame(self):
        b = self.buf
        if len(b) < 4:
            return None
        if b[0] & 0xC0 == 0:
            need = 20 + struct.unpack_from("!H", b, 2)[0]
        else:
            n = 4 + struct.unpack_from("!H", b, 2)[0]
            need = n + (-n % 4)
        if len(b) < need:
            return None
        self.buf = b[need:]
        return b[:need]

    def recv(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.transport != "udp":
                f = self._frame()
                if f is not None:
                    return f
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            pending = self.transport == "tls" and self.sock.pending()
            if not pending and not select.select([self.sock], [], [], left)[0]:
                return None
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError, socket.timeout):
                continue
            if self.transport == "udp":
                return data
            if not data:
                raise EOFError("stream closed by the server")
            self.buf += data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Client:
    """A TURN client on one Conn with long-term credentials (nonce and realm learnt from the
    first 401, re-learnt on 438)."""

    def __init__(self, conn, username, password, timeout=3.0):
        self.conn, self.username, self.password = conn, username, password
        self.timeout = timeout
        self.realm = self.nonce = self.key = None
        self.relay = None
        self.data = []  # ChannelData / Data indications received while waiting

    def _transact(self, msg_type, attrs, auth, what):
        tid = os.urandom(12)
        full = list(attrs)
        if auth and self.nonce is not None:
            full += [(USERNAME, self.username.encode()), (REALM, self.realm), (NONCE, self.nonce)]
        msg = build(msg_type, tid, full, self.key if auth and self.nonce is not None else None)
        deadline = time.monotonic() + self.timeout
        rto = 0.25
        while time.monotonic() < deadline:
            self.conn.send(msg)
            until = min(deadline, time.monotonic() + rto)
            while time.monotonic() < until:
                frame = self.conn.recv(until - time.monotonic())
                if frame is None:
                    break
                p = parse(frame)
                if p is None or p[1] != tid:
                    if frame[0] & 0xC0 == 0x40 or (p and p[0] == (INDICATION | DATA)):
                        self.data.append(frame)
                    continue
                return p[0], p[2]
            if self.conn.transport != "udp":
                continue  # streams are reliable: keep waiting, do not resend
            rto *= 2
        raise TurnError(what, 0)

    def request(self, method, attrs=(), what=None):
        """Send an authenticated request; returns the success attributes or raises TurnError."""
        what = what or f"method {method:#x}"
        for _ in range(3):
            cls_type, a = self._transact(REQUEST | method, attrs, True, what)
            if cls_type == (SUCCESS | method):
                return a
            code, reason = error_code(a)
            if code in (401, 438) and REALM in a and NONCE in a:
                first = self.nonce is None or code == 438
                self.realm, self.nonce = a[REALM], a[NONCE]
                self.key = hashlib.md5(
                    f"{self.username}:{self.realm.decode()}:{self.password}".encode()
                ).digest()
                if first:
                    continue
            raise TurnError(what, code, reason)
        raise TurnError(what, 401, "challenge loop")

    def allocate(self, lifetime=600, even_port=False):
        attrs = [(REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])), (LIFETIME, struct.pack("!I", lifetime))]
        if even_port:
            attrs.append((EVEN_PORT, b"\x80"))
        a = self.request(ALLOCATE, attrs, "Allocate")
        self.relay = parse_xor_address(a.get(XOR_RELAYED_ADDRESS, b""))
        return a

    def refresh(self, lifetime):
        return self.request(REFRESH, [(LIFETIME, struct.pack("!I", lifetime))], "Refresh")

    def permit(self, peer):
        return self.request(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, xor_address(peer))], "CreatePermission")

    def bind_channel(self, number, peer):
        attrs = [(CHANNEL_NUMBER, struct.pack("!HH", number, 0)), (XOR_PEER_ADDRESS, xor_address(peer))]
        return self.request(CHANNEL_BIND, attrs, "ChannelBind")

    def echo(self, number, payload, timeout=2.0):
        """Send ChannelData through the relay to an echo peer; True when it came back."""
        self.conn.send(channel_data(number, payload, pad=self.conn.transport != "udp"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for f in self.data:
                if f[4 : 4 + len(payload)] == payload:
                    self.data.clear()
                    return True
            self.data.clear()
            frame = self.conn.recv(deadline - time.monotonic())
            if frame is None:
                return False
            if frame[0] & 0xC0 == 0x40 and frame[4 : 4 + len(payload)] == payload:
                return True
        return False


def binding_request():
    tid = os.urandom(12)
    return tid, build(REQUEST | BINDING, tid, [])
