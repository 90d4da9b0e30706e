//! Data path: ChannelData and Send indications from clients, datagrams from peers.
//!
//! Nothing here allocates or copies the payload: the result names a byte range of the
//! caller's buffer. Per-packet events are not logged.

use std::net::SocketAddr;
use std::time::Instant;

use super::control::{CHANNEL_MAX, CHANNEL_MIN};
use super::wire::{encode_xor_addr, parse_send};
use super::{ClientAddr, Engine, ToClient, ToPeer, HEADROOM};

impl Engine {
    pub(super) fn on_send(&mut self, now: Instant, from: ClientAddr, buf: &[u8]) -> Option<ToPeer> {
        let (peer, range) = parse_send(buf)?;
        let a = self.allocations_by_client.get_mut(&from)?;
        let relay = a.relay_for(&peer)?.bound;
        if !a.permitted(&peer.ip(), now) || !self.shared.policy.permits_for(&a.user, peer) {
            return None;
        }
        a.stats.packets_to_peer += 1;
        a.stats.bytes_to_peer += range.len() as u64;
        Some(ToPeer { relay, peer, range })
    }

    pub(super) fn on_channel_data(
        &mut self,
        now: Instant,
        from: ClientAddr,
        buf: &[u8],
    ) -> Option<ToPeer> {
        if buf.len() < 4 {
            return None;
        }
        let number = u16::from_be_bytes([buf[0], buf[1]]);
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&number) || 4 + len > buf.len() {
            return None;
        }
        let a = self.allocations_by_client.get_mut(&from)?;
        let ch = a.channels_by_number.get(&number)?;
        if ch.expires <= now {
            return None;
        }
        let peer = ch.peer;
        let relay = a.relay_for(&peer)?.bound;
        a.stats.packets_to_peer += 1;
        a.stats.bytes_to_peer += len as u64;
        Some(ToPeer {
            relay,
            peer,
            range: 4..4 + len,
        })
    }

    /// A datagram from `peer` on the relay socket bound at `relay`, which belongs to
    /// `client`'s allocation (the I/O layer knows: it bound the socket for it). The payload is
    /// `buf[HEADROOM..HEADROOM + len]` and `buf` has [`TAILROOM`](super::TAILROOM) bytes
    /// after it, so the ChannelData or Data-indication header is written in place.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        client: ClientAddr,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<ToClient> {
        let tid = self.next_tid();
        let a = self.allocations_by_client.get_mut(&client)?;
        if !a.relays.iter().any(|r| r.bound == relay) || !a.permitted(&peer.ip(), now) {
            return None;
        }
        let end = HEADROOM + len;
        let range = match a.channels_by_peer.get(&peer) {
            Some(&number)
                if a.channels_by_number
                    .get(&number)
                    .is_some_and(|c| c.expires > now) =>
            {
                let start = HEADROOM - 4;
                buf[start..start + 2].copy_from_slice(&number.to_be_bytes());
                buf[start + 2..HEADROOM].copy_from_slice(&(len as u16).to_be_bytes());
                let padded = if client.transport.is_stream() {
                    (len + 3) & !3
                } else {
                    len
                };
                buf[end..HEADROOM + padded].fill(0);
                start..HEADROOM + padded
            }
            _ => {
                // Data indication: header, XOR-PEER-ADDRESS, DATA.
                let peer_attr = if peer.is_ipv4() { 12 } else { 24 };
                let padded = (len + 3) & !3;
                let body = peer_attr + 4 + padded;
                if body > usize::from(u16::MAX) || len > usize::from(u16::MAX) {
                    return None;
                }
                let start = HEADROOM - 4 - peer_attr - 20;
                let h = &mut buf[start..HEADROOM];
                h[0..2].copy_from_slice(&0x0017u16.to_be_bytes());
                h[2..4].copy_from_slice(&(body as u16).to_be_bytes());
                h[4..8].copy_from_slice(&stun::message::MAGIC_COOKIE.to_be_bytes());
                h[8..20].copy_from_slice(&tid);
                h[20..22].copy_from_slice(&0x0012u16.to_be_bytes());
                h[22..24].copy_from_slice(&((peer_attr - 4) as u16).to_be_bytes());
                encode_xor_addr(peer, &tid, &mut h[24..24 + peer_attr - 4]);
                let d = 20 + peer_attr;
                h[d..d + 2].copy_from_slice(&0x0013u16.to_be_bytes());
                h[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
                buf[end..HEADROOM + padded].fill(0);
                start..HEADROOM + padded
            }
        };
        a.stats.packets_to_client += 1;
        a.stats.bytes_to_client += len as u64;
        Some(ToClient { client, range })
    }
}
