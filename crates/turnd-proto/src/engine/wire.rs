//! STUN message parsing and building for the control plane.
//!
//! Parsing is strict and allocation-light (SECURITY.md "Parsing"): a 20-byte header with the
//! magic cookie, a length that is a multiple of 4 and matches the datagram, attributes that do
//! not overrun. Duplicate attributes: the first counts. Attributes after MESSAGE-INTEGRITY
//! (other than FINGERPRINT) are ignored. A FINGERPRINT that is not last or does not match
//! makes the message invalid. Responses are built with the `stun` crate's setters.
//!
//! Every length and offset here comes from the network: indexing is denied in this module and
//! values are read with slice patterns and `get(..)` only.

#![deny(clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use stun::agent::TransactionId;
use stun::attributes::*;
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::fingerprint::{fingerprint_value, FINGERPRINT};
use stun::message::{Message, MessageClass, MessageType, Method, Setter};
use stun::message::{MAGIC_COOKIE, MESSAGE_HEADER_SIZE};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

use super::integrity::{Signer, Signing};
use super::refusal::Refusal;

/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
/// STUN message type of an Allocate request (RFC 8656 §17).
pub const MSG_ALLOCATE_REQUEST: u16 = 0x0003;
/// STUN message type of a Send indication (RFC 8656 §17).
pub const MSG_SEND_INDICATION: u16 = 0x0016;
/// STUN message type of a Data indication (RFC 8656 §17).
pub const MSG_DATA_INDICATION: u16 = 0x0017;
/// [`MSG_SEND_INDICATION`] as it starts a message on the wire.
pub const MSG_SEND_INDICATION_BYTES: [u8; 2] = MSG_SEND_INDICATION.to_be_bytes();
/// [`MSG_DATA_INDICATION`] as it starts a message on the wire.
pub const MSG_DATA_INDICATION_BYTES: [u8; 2] = MSG_DATA_INDICATION.to_be_bytes();
/// XOR-PEER-ADDRESS's type as it starts the attribute on the wire.
pub const ATTR_XOR_PEER_ADDRESS_BYTES: [u8; 2] = ATTR_XOR_PEER_ADDRESS.0.to_be_bytes();
/// DATA's type as it starts the attribute on the wire.
pub const ATTR_DATA_BYTES: [u8; 2] = ATTR_DATA.0.to_be_bytes();

/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);
/// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
pub const ATTR_ADDRESS_ERROR_CODE: AttrType = AttrType(0x8001);
/// ICMP (RFC 8656 §18.13).
pub const ATTR_ICMP: AttrType = AttrType(0x8004);

/// The most attributes we look at in one message; more make it invalid.
const MAX_ATTRS: usize = 32;
const MI_LEN: usize = 20;

/// One attribute: its type and where its value lies in the message. Offsets are `usize`: a
/// Send indication framed on a stream can be 20 + 65,535 bytes, so its DATA may start past
/// offset 65,535 (issue 10, item 12).
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    /// The attribute type.
    pub typ: u16,
    /// (offset, length) of the value in the message.
    pub value: (usize, usize),
}

/// A parsed STUN message borrowing the datagram.
pub struct Parsed<'a> {
    /// The whole message.
    pub raw: &'a [u8],
    /// Its method.
    pub method: Method,
    /// Its class.
    pub class: MessageClass,
    /// Its transaction id.
    pub tid: TransactionId,
    /// Attributes up to and including MESSAGE-INTEGRITY (later ones dropped, FINGERPRINT
    /// excluded), in message order.
    attrs: [Attr; MAX_ATTRS],
    n_attrs: usize,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    pub integrity_at: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header, if present (RFC 8489
    /// §14.6; checked in `integrity`).
    pub integrity_sha256_at: Option<usize>,
    /// Ends with a valid FINGERPRINT.
    pub has_fingerprint: bool,
}

/// Why a message is not valid STUN; such messages are dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than a header, the top two bits set, or no magic cookie.
    Header,
    /// The header's length disagrees with the datagram.
    Length,
    /// An attribute runs past the message.
    Attribute,
    /// A FINGERPRINT that does not match.
    Fingerprint,
}

/// The big-endian `u16` at `off`, if the buffer holds it.
pub fn be16(buf: &[u8], off: usize) -> Option<u16> {
    match buf.get(off..off.checked_add(2)?)? {
        &[a, b] => Some(u16::from_be_bytes([a, b])),
        _ => None,
    }
}

/// The big-endian `u32` at `off`, if the buffer holds it.
pub fn be32(buf: &[u8], off: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

impl<'a> Parsed<'a> {
    /// Parse and validate `raw` (header, attribute walk, FINGERPRINT); no allocation.
    pub fn parse(raw: &'a [u8]) -> Result<Self, Malformed> {
        let Some((hdr, _)) = raw.split_first_chunk::<MESSAGE_HEADER_SIZE>() else {
            return Err(Malformed::Header);
        };
        let [t0, t1, l0, l1, c0, c1, c2, c3, tid_bytes @ ..] = *hdr;
        if t0 & 0xC0 != 0 || u32::from_be_bytes([c0, c1, c2, c3]) != MAGIC_COOKIE {
            return Err(Malformed::Header);
        }
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len % 4 != 0 || MESSAGE_HEADER_SIZE + len != raw.len() {
            return Err(Malformed::Length);
        }
        let mut typ = MessageType::default();
        typ.read_value(u16::from_be_bytes([t0, t1]));
        let tid = TransactionId(tid_bytes);
        let mut p = Parsed {
            raw,
            method: typ.method,
            class: typ.class,
            tid,
            attrs: [Attr {
                typ: 0,
                value: (0, 0),
            }; MAX_ATTRS],
            n_attrs: 0,
            integrity_at: None,
            integrity_sha256_at: None,
            has_fingerprint: false,
        };
        let mut off = MESSAGE_HEADER_SIZE;
        while off < raw.len() {
            let (Some(t), Some(l)) = (be16(raw, off), be16(raw, off + 2)) else {
                return Err(Malformed::Attribute);
            };
            let l = usize::from(l);
            let start = off + 4;
            let padded = (l + 3) & !3;
            if raw.len() - start < padded {
                return Err(Malformed::Attribute);
            }
            if p.has_fingerprint {
                // FINGERPRINT must be the last attribute.
                return Err(Malformed::Fingerprint);
            }
            if t == ATTR_FINGERPRINT.0 {
                let covered = raw.get(..off).ok_or(Malformed::Fingerprint)?;
                if l != 4 || be32(raw, start) != Some(fingerprint_value(covered)) {
                    return Err(Malformed::Fingerprint);
                }
                p.has_fingerprint = true;
            } else if t == ATTR_MESSAGE_INTEGRITY_SHA256.0 {
                // May follow MESSAGE-INTEGRITY (RFC 8489 §14.6); the first one counts.
                if p.integrity_sha256_at.is_none() {
                    if !(super::integrity::MI_SHA256_MIN..=super::integrity::MI_SHA256_MAX)
                        .contains(&l)
                        || l % 4 != 0
                    {
                        return Err(Malformed::Attribute);
                    }
                    p.integrity_sha256_at = Some(off);
                }
            } else if p.integrity_at.is_none() && p.integrity_sha256_at.is_none() {
                let Some(slot) = p.attrs.get_mut(p.n_attrs) else {
                    return Err(Malformed::Attribute);
                };
                *slot = Attr {
                    typ: t,
                    value: (start, l),
                };
                p.n_attrs += 1;
                if t == ATTR_MESSAGE_INTEGRITY.0 {
                    if l != MI_LEN {
                        return Err(Malformed::Attribute);
                    }
                    p.integrity_at = Some(off);
                }
            }
            off = start + padded;
        }
        Ok(p)
    }

    /// The attributes up to MESSAGE-INTEGRITY, in message order.
    pub fn attrs(&self) -> &[Attr] {
        self.attrs.get(..self.n_attrs).unwrap_or_default()
    }

    /// The value of `a` (parse checked it lies inside the message; `get` keeps that local).
    fn value_of(&self, a: &Attr) -> &'a [u8] {
        let (s, l) = a.value;
        self.raw.get(s..s + l).unwrap_or_default()
    }

    /// The first attribute of type `t` (duplicates: the first counts).
    pub fn get(&self, t: AttrType) -> Option<&'a [u8]> {
        self.attrs()
            .iter()
            .find(|a| a.typ == t.0)
            .map(|a| self.value_of(a))
    }

    /// All attributes of type `t`, in order (CreatePermission takes several peers).
    pub fn get_all(&self, t: AttrType) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attrs()
            .iter()
            .filter(move |a| a.typ == t.0)
            .map(|a| self.value_of(a))
    }

    /// Does the message carry an attribute of type `t`?
    pub fn has(&self, t: AttrType) -> bool {
        self.attrs().iter().any(|a| a.typ == t.0)
    }

    /// Comprehension-required attribute types (0x0000-0x7FFF) not in `known`.
    pub fn unknown_required(&self, known: &[AttrType]) -> Vec<u16> {
        let mut out = Vec::new();
        for a in self.attrs() {
            if a.typ < 0x8000 && !known.iter().any(|k| k.0 == a.typ) && !out.contains(&a.typ) {
                out.push(a.typ);
            }
        }
        out
    }

    /// The value of `t` as UTF-8 text, if present and valid.
    pub fn text(&self, t: AttrType) -> Option<&'a str> {
        self.get(t).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Verify MESSAGE-INTEGRITY with `key` (RFC 8489 §14.5) in constant time.
    pub fn integrity_matches(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return false;
        };
        // The length field counts up to and including MESSAGE-INTEGRITY.
        let Ok(covered_len) = u16::try_from(at + 4 + MI_LEN - MESSAGE_HEADER_SIZE) else {
            return false;
        };
        let (Some(typ), Some(body), Some(tag)) = (
            self.raw.get(..2),
            self.raw.get(4..at),
            self.raw.get(at + 4..at + 4 + MI_LEN),
        ) else {
            return false;
        };
        mac.update(typ);
        mac.update(&covered_len.to_be_bytes());
        mac.update(body);
        mac.verify_slice(tag).is_ok()
    }
}

/// Decode an XOR-*-ADDRESS value (strict lengths: 8 bytes for IPv4, 20 for IPv6).
pub fn decode_xor_addr(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let xport = |p0: u8, p1: u8| u16::from_be_bytes([p0, p1]) ^ (MAGIC_COOKIE >> 16) as u16;
    match *v {
        [0, 1, p0, p1, ref x @ ..] if x.len() == 4 => {
            let mut o = [0u8; 4];
            for ((o, x), k) in o.iter_mut().zip(x).zip(cookie) {
                *o = x ^ k;
            }
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(o)),
                xport(p0, p1),
            ))
        }
        [0, 2, p0, p1, ref x @ ..] if x.len() == 16 => {
            let mut o = [0u8; 16];
            for ((o, x), k) in o.iter_mut().zip(x).zip(cookie.iter().chain(tid)) {
                *o = x ^ k;
            }
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(o)),
                xport(p0, p1),
            ))
        }
        _ => None,
    }
}

/// Encode an XOR-*-ADDRESS value into `out`; returns its length (8 or 20), or 0 when `out`
/// is too short for it.
pub fn encode_xor_addr(addr: SocketAddr, tid: &[u8; 12], out: &mut [u8]) -> usize {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
    let (family, n, key): (u8, usize, [u8; 16]) = match addr.ip() {
        IpAddr::V4(ip) => {
            let mut k = [0u8; 16];
            for ((k, b), c) in k.iter_mut().zip(ip.octets()).zip(cookie) {
                *k = b ^ c;
            }
            (1, 4, k)
        }
        IpAddr::V6(ip) => {
            let mut k = [0u8; 16];
            for ((k, b), c) in k.iter_mut().zip(ip.octets()).zip(cookie.iter().chain(tid)) {
                *k = b ^ c;
            }
            (2, 16, k)
        }
    };
    let (Some(dst), Some(x)) = (out.get_mut(..4 + n), key.get(..n)) else {
        return 0;
    };
    let Some((head, rest)) = dst.split_first_chunk_mut::<4>() else {
        return 0;
    };
    let [p0, p1] = port;
    *head = [0, family, p0, p1];
    rest.copy_from_slice(x);
    4 + n
}

/// A response under construction. `key` set means: add MESSAGE-INTEGRITY (or
/// MESSAGE-INTEGRITY-SHA256, see [`Signer`]).
pub struct Reply {
    msg: Message,
    key: Option<Signer>,
    fingerprint: bool,
    /// The error code, or 0 for a success (for metrics).
    pub code: u16,
}

impl Reply {
    /// An empty answer of `class` to `req` (same method and transaction id).
    pub fn new(req: &Parsed<'_>, class: MessageClass) -> Self {
        let mut msg = Message::new();
        msg.typ = MessageType::new(req.method, class);
        msg.transaction_id = req.tid;
        msg.write_header();
        Reply {
            msg,
            key: None,
            fingerprint: req.has_fingerprint,
            code: 0,
        }
    }

    /// A success answer to `req`.
    pub fn success(req: &Parsed<'_>) -> Self {
        Self::new(req, stun::message::CLASS_SUCCESS_RESPONSE)
    }

    /// The error answer for `why` (code, reason phrase, UNKNOWN-ATTRIBUTES for 420).
    pub fn refusal(req: &Parsed<'_>, why: &Refusal) -> Self {
        let mut r = Self::new(req, stun::message::CLASS_ERROR_RESPONSE);
        r.error_code(why.code(), why.reason());
        r.code = why.code();
        r.refusal_attributes(why);
        r
    }

    /// An error answer with an empty reason phrase, for requests that did not authenticate:
    /// answers to them stay small (the reason is for diagnostics only, RFC 8489 §14.8).
    pub fn bare_refusal(req: &Parsed<'_>, why: &Refusal) -> Self {
        let mut r = Self::new(req, stun::message::CLASS_ERROR_RESPONSE);
        r.error_code(why.code(), "");
        r.code = why.code();
        r.refusal_attributes(why);
        r
    }

    /// The attributes a refusal carries besides ERROR-CODE: UNKNOWN-ATTRIBUTES for 420,
    /// ALTERNATE-SERVER (and ALTERNATE-DOMAIN) for 300.
    fn refusal_attributes(&mut self, why: &Refusal) {
        match why {
            Refusal::UnknownAttributes(unknown) => self.unknown_attributes(unknown),
            Refusal::TryAlternate(alt) => {
                // ALTERNATE-SERVER is a plain (not XORed) address, as MAPPED-ADDRESS.
                let mut v = Vec::with_capacity(20);
                v.push(0);
                match alt.server {
                    SocketAddr::V4(a) => {
                        v.push(1);
                        v.extend_from_slice(&a.port().to_be_bytes());
                        v.extend_from_slice(&a.ip().octets());
                    }
                    SocketAddr::V6(a) => {
                        v.push(2);
                        v.extend_from_slice(&a.port().to_be_bytes());
                        v.extend_from_slice(&a.ip().octets());
                    }
                }
                self.add_raw(stun::attributes::ATTR_ALTERNATE_SERVER, &v);
                if let Some(d) = &alt.domain {
                    self.text(stun::attributes::ATTR_ALTERNATE_DOMAIN, d);
                }
            }
            _ => {}
        }
    }

    /// Will the answer carry MESSAGE-INTEGRITY (does it answer an authenticated request)?
    pub fn is_signed(&self) -> bool {
        self.key.is_some()
    }

    fn error_code(&mut self, code: u16, reason: &str) {
        let a = ErrorCodeAttribute {
            code: ErrorCode(code),
            reason: reason.as_bytes().to_vec(),
        };
        // Only fails when the reason is over 763 bytes; ours are short constants.
        let _ = a.add_to(&mut self.msg);
    }

    /// ADDRESS-ERROR-CODE for an address family that could not be allocated.
    pub fn address_error(&mut self, family_v6: bool, why: &Refusal) {
        let code = why.code();
        let mut v = vec![
            if family_v6 { 2 } else { 1 },
            0,
            (code / 100) as u8,
            (code % 100) as u8,
        ];
        v.extend_from_slice(why.reason().as_bytes());
        self.msg.add(ATTR_ADDRESS_ERROR_CODE, &v);
    }

    /// The method's name, for metrics.
    pub fn method_name(&self) -> &'static str {
        method_name(self.msg.typ.method)
    }

    /// Add an attribute with a raw value.
    pub fn add_raw(&mut self, t: AttrType, v: &[u8]) {
        self.msg.add(t, v);
    }

    /// Add an XOR-encoded address attribute of type `t`.
    pub fn xor_addr(&mut self, t: AttrType, addr: SocketAddr) {
        let x = XorMappedAddress {
            ip: addr.ip(),
            port: addr.port(),
        };
        // add_to_as cannot fail.
        let _ = x.add_to_as(&mut self.msg, t);
    }

    /// Add a text attribute.
    pub fn text(&mut self, t: AttrType, s: &str) {
        let _ = TextAttribute::new(t, s.to_string()).add_to(&mut self.msg);
    }

    /// Add a 32-bit attribute.
    pub fn u32(&mut self, t: AttrType, v: u32) {
        self.msg.add(t, &v.to_be_bytes());
    }

    /// Add UNKNOWN-ATTRIBUTES listing `types`.
    pub fn unknown_attributes(&mut self, types: &[u16]) {
        let v: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
        self.msg.add(ATTR_UNKNOWN_ATTRIBUTES, &v);
    }

    /// Whether to end with FINGERPRINT (responses mirror the request).
    pub fn set_fingerprint(&mut self, on: bool) {
        self.fingerprint = on;
    }

    /// Sign with MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256, as the signer says) under
    /// `key` when finished (every answer to an authenticated request).
    pub fn sign<K: Signing + ?Sized>(mut self, key: &K) -> Self {
        self.key = Some(key.signer());
        self
    }

    /// Encode: SOFTWARE if given, MESSAGE-INTEGRITY if signed, FINGERPRINT if the request had
    /// one.
    pub fn finish(mut self, software: Option<&str>) -> Vec<u8> {
        if let Some(s) = software {
            self.text(ATTR_SOFTWARE, s);
        }
        if let Some(key) = self.key.take() {
            key.add_to(&mut self.msg);
        }
        if self.fingerprint {
            let _ = FINGERPRINT.add_to(&mut self.msg);
        }
        std::mem::take(&mut self.msg.raw)
    }
}

/// The metrics label of method `m`.
pub fn method_name(m: Method) -> &'static str {
    use stun::message as msg;
    match m {
        msg::METHOD_BINDING => "binding",
        msg::METHOD_ALLOCATE => "allocate",
        msg::METHOD_REFRESH => "refresh",
        msg::METHOD_CREATE_PERMISSION => "create_permission",
        msg::METHOD_CHANNEL_BIND => "channel_bind",
        msg::METHOD_CONNECT => "connect",
        msg::METHOD_CONNECTION_BIND => "connection_bind",
        _ => "other",
    }
}

/// Short reason phrases of error codes (see [`Refusal`] for the ones the engine sends).
pub use super::refusal::reason_phrase as reason;

/// The value range of the DATA attribute and the XOR-PEER-ADDRESS of a Send indication,
/// parsed on the hot path without allocating. `None`: malformed, drop.
pub fn parse_send(raw: &[u8]) -> Option<(SocketAddr, Range<usize>)> {
    let p = Parsed::parse(raw).ok()?;
    if !p.unknown_required(SEND_KNOWN).is_empty() {
        return None;
    }
    let peer = decode_xor_addr(p.get(ATTR_XOR_PEER_ADDRESS)?, &p.tid.0)?;
    let a = p.attrs().iter().find(|a| a.typ == ATTR_DATA.0)?;
    let (s, l) = a.value;
    Some((peer, s..s + l))
}

/// Attributes a Send indication may carry.
pub const SEND_KNOWN: &[AttrType] = &[ATTR_XOR_PEER_ADDRESS, ATTR_DATA, ATTR_DONT_FRAGMENT];
