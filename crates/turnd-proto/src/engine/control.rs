//! Control plane: Binding, Allocate, Refresh, CreatePermission, ChannelBind (RFC 8489,
//! RFC 8656, RFC 6156), long-term authentication, and the answers to them.
//!
//! Attribute values come from the network: indexing is denied here, values are matched with
//! slice patterns (`Some(&[1, 0, 0, 0])`) or read with `get(..)`.

#![deny(clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use stun::attributes::*;
use stun::message as msg;

use super::allocation::{AllocateEcho, Allocation, Channel, Relay};
use super::integrity::{Named, Signer};
use super::metrics::AuthFailure;
use super::refusal::{BadRequest, Capacity, Refusal};
use super::wire::{decode_xor_addr, Parsed, Reply, ATTR_ADDITIONAL_ADDRESS_FAMILY};
use super::{
    ClientAddr, Command, Engine, Family, PendingAllocate, PortChoice, ReservationToken, SessionId,
    Transmit,
};
use crate::auth::{Lookup, NonceCheck};

/// First and last channel number. RFC 8656 §12 narrowed the range to 0x4000-0x4FFF, but
/// RFC 5766 clients (coturn's own `turnutils_uclient` among them) pick from 0x4000-0x7FFF,
/// and coturn accepts that range; so do we. Numbers in it cannot be mistaken for STUN.
pub const CHANNEL_MIN: u16 = 0x4000;
/// See [`CHANNEL_MIN`].
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// A channel number, in [`CHANNEL_MIN`]..=[`CHANNEL_MAX`] by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// `n` if it is a channel number; `None` otherwise.
    pub fn new(n: u16) -> Option<Self> {
        (CHANNEL_MIN..=CHANNEL_MAX)
            .contains(&n)
            .then_some(ChannelNumber(n))
    }
    /// The number, as on the wire.
    pub fn get(self) -> u16 {
        self.0
    }
}
const PROTO_UDP: u8 = 17;
/// Answers to requests that did not authenticate are smaller than this many times the
/// request (UDP; issue 10 item 9). `config::validate` bounds the realm so that the smallest
/// real first Allocate (REQUESTED-TRANSPORT only, 28 bytes) still gets its 401.
pub(crate) const MAX_AMPLIFICATION: usize = 3;

/// Attributes understood in requests; other comprehension-required ones get 420.
const KNOWN: &[AttrType] = &[
    ATTR_USERNAME,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_REALM,
    ATTR_NONCE,
    ATTR_SOFTWARE,
    ATTR_CHANNEL_NUMBER,
    ATTR_LIFETIME,
    ATTR_XOR_PEER_ADDRESS,
    ATTR_DATA,
    ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_EVEN_PORT,
    ATTR_REQUESTED_TRANSPORT,
    ATTR_DONT_FRAGMENT,
    ATTR_RESERVATION_TOKEN,
    ATTR_PRIORITY,
    ATTR_USE_CANDIDATE,
    // RFC 8489 §14.4-14.6 (checked in `integrity`).
    ATTR_MESSAGE_INTEGRITY_SHA256,
    ATTR_PASSWORD_ALGORITHM,
    ATTR_USER_HASH,
    // RFC 6062 §6.2.1.
    ATTR_CONNECTION_ID,
];

/// What a handler of an authenticated request answers; the dispatcher ([`Engine::authed`])
/// signs it, or turns the [`Refusal`] into a signed error answer.
enum Answer {
    /// Send this now.
    Now(Reply),
    /// Send this now and keep it for retransmissions of the request.
    Cached(Reply),
    /// Answered later: [`Engine::relay_bound`] answers the Allocate.
    Later,
    /// Nothing to answer.
    None,
}

type Handled = Result<Answer, Refusal>;
type Handler = fn(&mut Engine, Instant, ClientAddr, &Parsed<'_>, Authed) -> Handled;

/// Who sent an authenticated request.
struct Authed {
    user: String,
    /// The USERNAME when it is not the principal itself (a TURN REST `expiry:user`), so that
    /// revoking that one username can end its allocation.
    username: Option<Box<str>>,
    key: Signer,
}

impl Engine {
    pub(super) fn on_stun(&mut self, now: Instant, from: ClientAddr, buf: &[u8]) {
        let Ok(req) = Parsed::parse(buf) else { return };
        if req.class != msg::CLASS_REQUEST {
            // Responses and other indications from clients: nothing to do.
            return;
        }
        match req.method {
            msg::METHOD_BINDING => self.on_binding(now, from, &req),
            msg::METHOD_ALLOCATE => self.authed(now, from, &req, Self::on_allocate),
            msg::METHOD_REFRESH => self.authed(now, from, &req, Self::on_refresh),
            msg::METHOD_CREATE_PERMISSION => {
                self.authed(now, from, &req, Self::on_create_permission)
            }
            msg::METHOD_CHANNEL_BIND => self.authed(now, from, &req, Self::on_channel_bind),
            msg::METHOD_CONNECT => self.authed(now, from, &req, |e, now, from, req, _| {
                e.on_connect(now, from, req).map(|()| Answer::Later)
            }),
            msg::METHOD_CONNECTION_BIND => self.authed(now, from, &req, |e, _, from, req, au| {
                match e.on_connection_bind(from, req, &au.user, &au.key)? {
                    true => Ok(Answer::Now(Reply::success(req))),
                    false => Ok(Answer::Later),
                }
            }),
            // Unknown methods: dropped silently; a 400 would only serve reflection.
            _ => {}
        }
    }

    /// Queue an answer. SOFTWARE goes only on answers to authenticated (signed) requests:
    /// answers to anyone else stay small.
    fn reply(&mut self, to: ClientAddr, r: Reply) {
        self.metrics.count_response(r.method_name(), r.code);
        let software = if r.is_signed() {
            self.cfg.software.as_deref()
        } else {
            None
        };
        let bytes = r.finish(software);
        self.transmits.push_back(Transmit { to, bytes });
    }

    /// Answer a request that did not authenticate (an error, unsigned), or drop it: over
    /// UDP, where the source may be spoofed, an answer must be under [`MAX_AMPLIFICATION`]
    /// times the request; and it spends the source IP's budget, the failure budget when the
    /// request carried MESSAGE-INTEGRITY (`guessing`), the challenge budget otherwise.
    /// Returns whether the answer was queued.
    fn answer_unauthenticated(
        &mut self,
        now: Instant,
        from: ClientAddr,
        req: &Parsed<'_>,
        r: Reply,
        why: &Refusal,
        guessing: bool,
    ) -> bool {
        let (method, code) = (r.method_name(), r.code);
        let bytes = r.finish(None);
        if from.transport == super::Transport::Udp
            && bytes.len() >= MAX_AMPLIFICATION * req.raw.len()
        {
            // Too small a request to be a real client's: no answer, no budget spent.
            return false;
        }
        let (ip, ms) = (from.remote.ip(), self.clock_ms(now));
        let within = if guessing {
            self.shared.budget.try_failure(ip, ms)
        } else {
            self.shared.budget.try_challenge(ip, ms)
        };
        if !within {
            self.metrics.count_auth_failure(AuthFailure::Budget);
            return false;
        }
        self.metrics.count_response(method, code);
        self.metrics.count_refusal(why);
        self.transmits.push_back(Transmit { to: from, bytes });
        true
    }

    fn on_binding(&mut self, now: Instant, from: ClientAddr, req: &Parsed<'_>) {
        let unknown = req.unknown_required(KNOWN);
        if !unknown.is_empty() {
            let why = Refusal::UnknownAttributes(unknown);
            let r = Reply::bare_refusal(req, &why);
            self.answer_unauthenticated(now, from, req, r, &why, false);
            return;
        }
        let mut r = Reply::success(req);
        r.xor_addr(ATTR_XORMAPPED_ADDRESS, from.remote);
        self.reply(from, r);
    }

    /// Authenticate (RFC 8489 §9.2.4), answer a retransmission from the cache, check for
    /// unknown attributes, then call `handler`.
    fn authed(&mut self, now: Instant, from: ClientAddr, req: &Parsed<'_>, handler: Handler) {
        let Some(authed) = self.authenticate(now, from, req) else {
            return;
        };
        if let Some(a) = self.allocations_by_client.get(&from) {
            if *a.user != *authed.user {
                self.metrics.count_auth_failure(AuthFailure::WrongUser);
                return self.refuse(from, req, &authed.key, Refusal::WrongCredentials);
            }
            let again = if a.allocate.tid == req.tid.0 {
                Some(self.allocate_success(from, &a.relays, &a.allocate, &a.key))
            } else {
                a.recalled(&req.tid.0).map(<[u8]>::to_vec)
            };
            if let Some(bytes) = again {
                self.transmits.push_back(Transmit { to: from, bytes });
                return;
            }
        }
        if self.pending_by_client.contains_key(&from) {
            // The first copy of this Allocate is still being served.
            return;
        }
        let unknown = req.unknown_required(KNOWN);
        if !unknown.is_empty() {
            let why = Refusal::UnknownAttributes(unknown);
            return self.refuse(from, req, &authed.key, why);
        }
        let key = authed.key;
        match handler(self, now, from, req, authed) {
            Ok(Answer::Now(r)) => self.reply(from, r.sign(&key)),
            Ok(Answer::Cached(r)) => {
                // Signed here like every answer; kept for retransmissions, not counted as a
                // response (as before the refactor: only the Allocate success is).
                let bytes = r.sign(&key).finish(self.cfg.software.as_deref());
                if let Some(a) = self.allocations_by_client.get_mut(&from) {
                    a.remember(req.tid.0, &bytes);
                }
                self.transmits.push_back(Transmit { to: from, bytes });
            }
            Ok(Answer::Later | Answer::None) => {}
            Err(why) => self.refuse(from, req, &key, why),
        }
    }

    /// The error answer to an authenticated request: signed, counted by refusal.
    fn refuse(&mut self, to: ClientAddr, req: &Parsed<'_>, key: &Signer, why: Refusal) {
        self.metrics.count_refusal(&why);
        self.reply(to, Reply::refusal(req, &why).sign(key));
    }

    fn authenticate(&mut self, now: Instant, from: ClientAddr, req: &Parsed<'_>) -> Option<Authed> {
        if !req.has_integrity() {
            self.challenge(
                now,
                from,
                req,
                Refusal::Unauthorized,
                AuthFailure::Challenge,
            );
            return None;
        }
        let missing = Refusal::BadRequest(BadRequest::MissingCredentials);
        let (Some(realm), Some(nonce)) = (req.text(ATTR_REALM), req.get(ATTR_NONCE)) else {
            let r = Reply::refusal(req, &missing);
            self.answer_unauthenticated(now, from, req, r, &missing, true);
            return None;
        };
        // RFC 8489 §9.2.4: nonce (and its cookie), password algorithm, USERNAME or USERHASH.
        let (check, cookie) = self.check_nonce(nonce, nonce_subject(&from), self.clock_secs(now));
        let named = self.named_user(req, cookie, realm);
        let Some(named) = named else {
            let r = Reply::refusal(req, &missing);
            self.answer_unauthenticated(now, from, req, r, &missing, true);
            return None;
        };
        if check != NonceCheck::Valid {
            self.challenge(now, from, req, Refusal::StaleNonce, AuthFailure::Nonce);
            return None;
        }
        let Ok(alg) = self.password_algorithm(req, cookie) else {
            let why = Refusal::BadRequest(BadRequest::PasswordAlgorithm);
            self.answer_unauthenticated(now, from, req, Reply::refusal(req, &why), &why, true);
            return None;
        };
        let user = match named {
            Named::User(u) => u,
            Named::UnknownHash => String::new(),
        };
        let unix_now = self.unix_secs(now);
        let keys = match self.candidate_keys(&user, realm, alg, unix_now, from) {
            Lookup::Keys(keys) if !user.is_empty() => keys,
            Lookup::Pending if !user.is_empty() => {
                // Asked elsewhere (the webhook): parked, run again from the timer.
                self.defer(now, from, req.raw);
                return None;
            }
            Lookup::Expired => {
                let _ = req.verify(&[0u8; 16]);
                self.challenge(now, from, req, Refusal::Unauthorized, AuthFailure::Expired);
                return None;
            }
            _ => {
                // Spend the same HMAC work as for a known user.
                let _ = req.verify(&[0u8; 16]);
                self.challenge(
                    now,
                    from,
                    req,
                    Refusal::Unauthorized,
                    AuthFailure::UnknownUser,
                );
                return None;
            }
        };
        match keys.iter().find_map(|k| req.verify(k)) {
            Some(key) => {
                let principal = self.shared.auth.principal(&user).to_string();
                let username = (principal != user).then(|| user.into_boxed_str());
                Some(Authed {
                    user: principal,
                    username,
                    key,
                })
            }
            None => {
                self.challenge(
                    now,
                    from,
                    req,
                    Refusal::Unauthorized,
                    AuthFailure::BadPassword,
                );
                None
            }
        }
    }

    /// 401 or 438 with REALM and a fresh NONCE, within the per-IP budget of its kind: a
    /// plain challenge (no MESSAGE-INTEGRITY) is small (no reason phrase, no SOFTWARE) and
    /// spends the challenge budget; an answer to failed credentials spends the failure budget.
    fn challenge(
        &mut self,
        now: Instant,
        from: ClientAddr,
        req: &Parsed<'_>,
        refusal: Refusal,
        why: AuthFailure,
    ) {
        let guessing = req.integrity_at.is_some() || req.integrity_sha256_at.is_some();
        let build = |e: &Self, nonce: &str, features: bool| {
            let mut r = if guessing {
                Reply::refusal(req, &refusal)
            } else {
                Reply::bare_refusal(req, &refusal)
            };
            r.text(ATTR_REALM, &e.cfg.realm);
            r.text(ATTR_NONCE, nonce);
            if features {
                e.add_challenge_features(&mut r);
            }
            r
        };
        let secs = self.clock_secs(now);
        let nonce = self.issue_nonce(nonce_subject(&from), secs);
        let mut r = build(self, &nonce, true);
        if self.cfg.auth_features.cookie_on() && from.transport == super::Transport::Udp {
            // The cookie and PASSWORD-ALGORITHMS add 24+ bytes: a request too small for them
            // under the amplification cap gets the plain (MD5, RFC 5389) challenge instead.
            let probe = build(self, &nonce, true);
            if probe.finish(None).len() >= MAX_AMPLIFICATION * req.raw.len() {
                r = build(
                    self,
                    &self.issue_plain_nonce(nonce_subject(&from), secs),
                    false,
                );
            }
        }
        if self.answer_unauthenticated(now, from, req, r, &refusal, guessing) {
            self.metrics.count_auth_failure(why);
        }
    }

    fn requested_lifetime(&self, req: &Parsed<'_>) -> Result<Option<Duration>, BadRequest> {
        match req.get(ATTR_LIFETIME) {
            None => Ok(None),
            Some(&[a, b, c, d]) => Ok(Some(Duration::from_secs(u64::from(u32::from_be_bytes([
                a, b, c, d,
            ]))))),
            Some(_) => Err(BadRequest::Lifetime),
        }
    }

    fn clamp_lifetime(&self, requested: Option<Duration>) -> Duration {
        let l = &self.cfg.lifetimes;
        requested
            .unwrap_or(l.allocation_default)
            .clamp(l.allocation_default, l.allocation_max)
    }

    fn on_allocate(
        &mut self,
        _now: Instant,
        from: ClientAddr,
        req: &Parsed<'_>,
        au: Authed,
    ) -> Handled {
        if self.allocations_by_client.contains_key(&from) {
            return Err(Refusal::AllocationMismatch);
        }
        let tcp = match req.get(ATTR_REQUESTED_TRANSPORT) {
            Some(&[PROTO_UDP, _, _, _]) => false,
            Some(&[super::tcp_relay::PROTO_TCP, _, _, _]) => {
                self.check_tcp_allocate(&from, req)?;
                true
            }
            Some(&[_, _, _, _]) => return Err(Refusal::UnsupportedTransport),
            _ => return Err(BadRequest::RequestedTransport.into()),
        };
        let requested = req.get(ATTR_REQUESTED_ADDRESS_FAMILY);
        let additional = req.get(ATTR_ADDITIONAL_ADDRESS_FAMILY);
        let mut port = match req.get(ATTR_EVEN_PORT) {
            None => PortChoice::Any,
            Some([flags]) if flags & 0x80 != 0 => {
                // R bit: reserve the next port too; not with a dual allocation.
                if additional.is_some() {
                    return Err(BadRequest::EvenPortDual.into());
                }
                PortChoice::EvenReserveNext(ReservationToken(self.rng.gen()))
            }
            Some([_]) => PortChoice::Even,
            Some(_) => return Err(BadRequest::EvenPort.into()),
        };
        if let Some(token) = req.get(ATTR_RESERVATION_TOKEN) {
            // With EVEN-PORT or a family the request is malformed (RFC 8656 §7.2).
            let Ok(token) = <[u8; 8]>::try_from(token) else {
                return Err(BadRequest::ReservationToken.into());
            };
            if port != PortChoice::Any || requested.is_some() || additional.is_some() {
                return Err(BadRequest::ReservationTokenWith.into());
            }
            port = PortChoice::Reserved(ReservationToken(token));
        }
        let family = |v: &[u8]| match *v {
            [1, _, _, _] => Ok(Family::V4),
            [2, _, _, _] => Ok(Family::V6),
            [_, _, _, _] => Err(Refusal::FamilyNotSupported),
            _ => Err(Refusal::BadRequest(BadRequest::AddressFamily)),
        };
        let (mut families, mut refused_v6) = (Vec::with_capacity(2), false);
        match (requested, additional) {
            (Some(_), Some(_)) => return Err(BadRequest::BothFamilies.into()),
            (Some(v), None) => families.push(family(v)?),
            (None, Some(v)) => {
                // Dual allocation: IPv4 plus the additional family, which must be IPv6.
                if family(v) != Ok(Family::V6) {
                    return Err(BadRequest::AddressFamily.into());
                }
                families.push(Family::V4);
                if self.cfg.relay_v6 {
                    families.push(Family::V6);
                } else {
                    refused_v6 = true;
                }
            }
            (None, None) => families.push(Family::V4),
        }
        let available = |f: &Family| match f {
            Family::V4 => self.cfg.relay_v4,
            Family::V6 => self.cfg.relay_v6,
        };
        if !matches!(port, PortChoice::Reserved(_)) && !families.iter().all(available) {
            return Err(Refusal::FamilyNotSupported);
        }
        let lifetime = self.requested_lifetime(req)?;
        if let Some(alt) = self.try_alternate(from.transport) {
            // A fleet: this node is over its share or draining (engine/redirect.rs).
            return Err(Refusal::TryAlternate(alt));
        }
        if self.draining {
            // Shutting down: no new allocations.
            return Err(Refusal::Capacity(Capacity::Draining));
        }
        if !self.shared.quotas.acquire(&au.user) {
            return Err(Refusal::Quota);
        }
        self.pending_by_client.insert(
            from,
            PendingAllocate {
                user: au.user,
                username: au.username,
                key: au.key,
                tid: req.tid.0,
                lifetime: self.clamp_lifetime(lifetime),
                families: families.clone(),
                refused_v6,
                reserved: match port {
                    PortChoice::EvenReserveNext(t) => Some(t),
                    _ => None,
                },
                fingerprint: req.has_fingerprint,
                tcp,
            },
        );
        match (tcp, families.as_slice()) {
            (true, &[family]) => self.commands.push_back(Command::BindTcpRelay {
                client: from,
                family,
            }),
            _ => self.commands.push_back(Command::BindRelays {
                client: from,
                families,
                port,
            }),
        }
        Ok(Answer::Later)
    }

    /// The I/O layer's answer to [`Command::BindRelays`] (and [`Command::BindTcpRelay`]):
    /// one result per family, in order: the bound socket, or why it could not be had
    /// (`Capacity(RelayPorts)` when binding failed, `Quota` when the user is at a cap, e.g.
    /// of port reservations). When the first family fails, the Allocate is answered with
    /// its refusal.
    pub fn relay_bound(
        &mut self,
        now: Instant,
        client: ClientAddr,
        bound: Vec<Result<super::BoundRelay, Refusal>>,
    ) {
        let Some(p) = self.pending_by_client.remove(&client) else {
            // The client went away meanwhile: give the sockets back.
            for b in bound.into_iter().flatten() {
                self.commands.push_back(Command::ReleaseRelay(b));
            }
            return;
        };
        let relays: Vec<Relay> = bound
            .iter()
            .flatten()
            .map(|b| Relay {
                bound: b.addr,
                handle: b.handle,
            })
            .collect();
        // A fake request header, so replies carry the right method, id and fingerprint.
        let mut hdr = [0u8; 20];
        hdr[0..2].copy_from_slice(&super::wire::MSG_ALLOCATE_REQUEST.to_be_bytes());
        hdr[4..8].copy_from_slice(&msg::MAGIC_COOKIE.to_be_bytes());
        hdr[8..20].copy_from_slice(&p.tid);
        let Ok(req) = Parsed::parse(&hdr) else {
            unreachable!("a valid header")
        };
        let first_failed = match bound.first() {
            Some(Ok(_)) if !relays.is_empty() => None,
            Some(Err(why)) => Some(why.clone()),
            _ => Some(Refusal::Capacity(Capacity::RelayPorts)),
        };
        if let Some(why) = first_failed {
            // The requested (first) family failed: the whole Allocate fails.
            for r in &relays {
                self.commands
                    .push_back(Command::ReleaseRelay(r.bound_relay()));
            }
            self.shared.quotas.release(&p.user);
            self.metrics.count_refusal(&why);
            let mut r = Reply::refusal(&req, &why);
            r.set_fingerprint(p.fingerprint);
            self.reply(client, r.sign(&p.key));
            return;
        }
        let address_error = if p.refused_v6 || (p.families.len() == 2 && relays.len() == 1) {
            match bound.get(1) {
                _ if p.refused_v6 => Refusal::FamilyNotSupported.code(),
                Some(Err(why)) => why.code(),
                _ => Refusal::Capacity(Capacity::RelayPorts).code(),
            }
        } else {
            0
        };
        let echo = AllocateEcho {
            tid: p.tid,
            lifetime: p.lifetime.as_secs() as u32,
            token: p.reserved,
            fingerprint: p.fingerprint,
            address_error,
        };
        let bytes = self.allocate_success(client, &relays, &echo, &p.key);
        self.metrics.count_response("allocate", 0);
        self.metrics.allocations_created += 1;
        self.next_id += 1;
        let user: std::sync::Arc<str> = p.user.into();
        let slot = self.routes.open(&user);
        self.bandwidth.reset(slot);
        let a = Allocation {
            id: SessionId::new(self.shard, self.next_id),
            user,
            username: p.username,
            key: p.key,
            relays,
            allocate: echo,
            created: now,
            expires: now + p.lifetime,
            wake_at: now,
            permissions: Default::default(),
            channels_by_number: Default::default(),
            channels_by_peer: Default::default(),
            slot,
            recent: Default::default(),
        };
        tracing::info!(
            event = "allocation created",
            user = %crate::redact::redact_user(&a.user, self.cfg.redact),
            client = %crate::redact::redact_addr(&client.remote, self.cfg.redact),
            transport = client.transport.as_str(),
            relay = %a.relays.iter().map(|r| self.advertise(r.bound).to_string()).collect::<Vec<_>>().join(","),
            lifetime_s = p.lifetime.as_secs(),
            "allocation created"
        );
        let deadline = a.expires;
        self.allocations_by_client.insert(client, Box::new(a));
        if p.tcp {
            self.tcp_allocation_created(client);
        }
        self.timers.insert((now, client));
        self.schedule(client, deadline);
        self.transmits.push_back(Transmit { to: client, bytes });
    }

    /// The success answer to the Allocate that created an allocation: built when it is
    /// created and again, byte for byte the same, for a retransmission of that Allocate
    /// (rather than kept: most allocations would hold nothing else).
    fn allocate_success(
        &self,
        client: ClientAddr,
        relays: &[Relay],
        echo: &AllocateEcho,
        key: &Signer,
    ) -> Vec<u8> {
        // A fake request header, so the answer carries the right method, id and fingerprint.
        let mut hdr = [0u8; 20];
        hdr[0..2].copy_from_slice(&super::wire::MSG_ALLOCATE_REQUEST.to_be_bytes());
        hdr[4..8].copy_from_slice(&msg::MAGIC_COOKIE.to_be_bytes());
        hdr[8..20].copy_from_slice(&echo.tid);
        let Ok(req) = Parsed::parse(&hdr) else {
            unreachable!("a valid header")
        };
        let mut r = Reply::success(&req);
        r.set_fingerprint(echo.fingerprint);
        for relay in relays {
            r.xor_addr(ATTR_XOR_RELAYED_ADDRESS, self.advertise(relay.bound));
        }
        let why = match echo.address_error {
            0 => None,
            440 => Some(Refusal::FamilyNotSupported),
            486 => Some(Refusal::Quota),
            _ => Some(Refusal::Capacity(Capacity::RelayPorts)),
        };
        if let Some(why) = why {
            r.address_error(true, &why);
        }
        r.u32(ATTR_LIFETIME, echo.lifetime);
        if let Some(token) = echo.token {
            r.add_raw(ATTR_RESERVATION_TOKEN, &token.0);
        }
        r.xor_addr(ATTR_XORMAPPED_ADDRESS, client.remote);
        r.sign(key).finish(self.cfg.software.as_deref())
    }

    /// The address clients are told for a relay bound at `bound` (external mapping).
    pub(super) fn advertise(&self, bound: SocketAddr) -> SocketAddr {
        for m in &self.cfg.external {
            if m.private == bound.ip() {
                return SocketAddr::new(m.public, bound.port());
            }
        }
        bound
    }

    fn on_refresh(
        &mut self,
        now: Instant,
        from: ClientAddr,
        req: &Parsed<'_>,
        _: Authed,
    ) -> Handled {
        let Some(a) = self.allocations_by_client.get(&from) else {
            return Err(Refusal::AllocationMismatch);
        };
        if let Some(v) = req.get(ATTR_REQUESTED_ADDRESS_FAMILY) {
            let v6 = match *v {
                [1, _, _, _] => false,
                [2, _, _, _] => true,
                _ => return Err(BadRequest::AddressFamily.into()),
            };
            if !a.relays.iter().any(|r| r.bound.is_ipv6() == v6) {
                return Err(Refusal::PeerFamilyMismatch);
            }
        }
        let requested = self.requested_lifetime(req)?;
        if requested == Some(Duration::ZERO) {
            self.delete_allocation(now, from, "refreshed with lifetime 0");
            let mut r = Reply::success(req);
            r.u32(ATTR_LIFETIME, 0);
            return Ok(Answer::Now(r));
        }
        let lifetime = self.clamp_lifetime(requested);
        let mut r = Reply::success(req);
        r.u32(ATTR_LIFETIME, lifetime.as_secs() as u32);
        let Some(a) = self.allocations_by_client.get_mut(&from) else {
            return Ok(Answer::None);
        };
        a.expires = now + lifetime;
        tracing::info!(
            event = "allocation refreshed",
            user = %crate::redact::redact_user(&a.user, self.cfg.redact),
            client = %crate::redact::redact_addr(&from.remote, self.cfg.redact),
            transport = from.transport.as_str(),
            lifetime_s = lifetime.as_secs(),
            bytes_to_peer = self.routes.stats(a.slot).bytes_to_peer,
            bytes_to_client = self.routes.stats(a.slot).bytes_to_client,
            "allocation refreshed"
        );
        let next = a.next_deadline();
        self.schedule(from, next);
        Ok(Answer::Cached(r))
    }

    /// Decode the XOR-PEER-ADDRESS values and check them against the allocation and the
    /// policy.
    fn checked_peers(
        &self,
        from: &ClientAddr,
        req: &Parsed<'_>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let a = self
            .allocations_by_client
            .get(from)
            .ok_or(Refusal::AllocationMismatch)?;
        let mut peers = Vec::new();
        for v in req.get_all(ATTR_XOR_PEER_ADDRESS) {
            peers.push(decode_xor_addr(v, &req.tid.0).ok_or(BadRequest::PeerAddress)?);
        }
        if peers.is_empty() {
            return Err(BadRequest::NoPeer.into());
        }
        if peers.iter().any(|p| !a.has_family_of(p)) {
            return Err(Refusal::PeerFamilyMismatch);
        }
        if peers
            .iter()
            .any(|p| !self.shared.policy.permits_permission_for(&a.user, *p))
        {
            return Err(Refusal::ForbiddenPeer);
        }
        Ok(peers)
    }

    fn on_create_permission(
        &mut self,
        now: Instant,
        from: ClientAddr,
        req: &Parsed<'_>,
        _: Authed,
    ) -> Handled {
        let peers = self.checked_peers(&from, req)?;
        let expires = now + self.cfg.lifetimes.permission;
        let max = self.cfg.max_permissions;
        let Some(a) = self.allocations_by_client.get_mut(&from) else {
            return Ok(Answer::None);
        };
        let new = peers
            .iter()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .count();
        if a.permissions.len() + new > max {
            return Err(Refusal::Capacity(Capacity::Permissions));
        }
        for p in &peers {
            a.permissions.insert(p.ip(), expires);
        }
        let next = a.next_deadline();
        self.schedule(from, next);
        for p in &peers {
            self.sync_permission(from, p.ip());
        }
        Ok(Answer::Now(Reply::success(req)))
    }

    fn on_channel_bind(
        &mut self,
        now: Instant,
        from: ClientAddr,
        req: &Parsed<'_>,
        _: Authed,
    ) -> Handled {
        let number = match req.get(ATTR_CHANNEL_NUMBER) {
            Some(&[a, b, _, _]) => u16::from_be_bytes([a, b]),
            _ => return Err(BadRequest::ChannelNumber.into()),
        };
        let Some(number) = ChannelNumber::new(number) else {
            return Err(BadRequest::ChannelRange.into());
        };
        if self.tcp.is_tcp(&from) {
            // RFC 6062 §5: a TCP allocation's data goes over connections, not channels.
            return Err(BadRequest::ChannelBindTcp.into());
        }
        let peer = match *self.checked_peers(&from, req)? {
            [p] => p,
            _ => return Err(BadRequest::ChannelPeers.into()),
        };
        let user = self.allocations_by_client.get(&from).map(|a| &*a.user);
        if !user.is_some_and(|u| self.shared.policy.permits_for(u, peer)) {
            return Err(Refusal::ForbiddenPeer);
        }
        let (channel_ttl, perm_ttl) = (self.cfg.lifetimes.channel, self.cfg.lifetimes.permission);
        let max_channels = self.cfg.max_channels;
        let max_perms = self.cfg.max_permissions;
        let Some(a) = self.allocations_by_client.get_mut(&from) else {
            return Ok(Answer::None);
        };
        match (
            a.channels_by_number.get(&number),
            a.channels_by_peer.get(&peer),
        ) {
            (Some(c), _) if c.peer != peer => return Err(BadRequest::ChannelRebind.into()),
            (_, Some(n)) if *n != number => return Err(BadRequest::ChannelRebind.into()),
            (None, None) if a.channels_by_number.len() >= max_channels => {
                return Err(Refusal::Capacity(Capacity::Channels))
            }
            _ => {}
        }
        if !a.permissions.contains_key(&peer.ip()) && a.permissions.len() >= max_perms {
            return Err(Refusal::Capacity(Capacity::Permissions));
        }
        a.channels_by_number.insert(
            number,
            Channel {
                peer,
                expires: now + channel_ttl,
            },
        );
        a.channels_by_peer.insert(peer, number);
        a.permissions.insert(peer.ip(), now + perm_ttl);
        let next = a.next_deadline();
        self.schedule(from, next);
        self.sync_channel(from, number, peer);
        self.sync_permission(from, peer.ip());
        Ok(Answer::Now(Reply::success(req)))
    }
}

/// The address a nonce is bound to: the client's transport address over UDP, its IP alone over
/// TCP and TLS. A stream client that opens a new connection (a retry, or a 300 Try Alternate
/// followed to another node of the fleet, as libwebrtc does) comes from a new port with the
/// nonce it was given; binding stream nonces to the port would make it pay a 438, which
/// libwebrtc treats as fatal for an Allocate. The nonce is still bound to the IP, and no nonce
/// admits anyone without MESSAGE-INTEGRITY.
pub(super) fn nonce_subject(from: &ClientAddr) -> SocketAddr {
    if from.transport.is_stream() {
        SocketAddr::new(from.remote.ip(), 0)
    } else {
        from.remote
    }
}
