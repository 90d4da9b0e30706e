//! Data path: ChannelData and Send indications from clients, datagrams from peers.
//!
//! Nothing here allocates or copies the payload: the result names a byte range of the
//! caller's buffer. Per-packet events are not logged. With `[policy] max_bps_per_allocation`
//! set, each relayed payload passes its allocation's bucket for its direction
//! (`bandwidth.rs`) before it is counted; over the cap it is dropped.
//!
//! Indexing is denied here: lengths come from the network and the caller's buffer is only
//! written through `get_mut(..)`, so a buffer without the promised headroom drops the packet.

#![deny(clippy::indexing_slicing)]

use std::time::Instant;

use super::bandwidth::{TO_CLIENT, TO_PEER};
use super::control::ChannelNumber;
use super::route::Slot;
use super::wire::{
    encode_xor_addr, parse_send, ATTR_DATA_BYTES, ATTR_XOR_PEER_ADDRESS_BYTES,
    MSG_DATA_INDICATION_BYTES,
};
use super::{ClientAddr, Engine, PeerAddr, RelayAddr, ToClient, ToPeer, HEADROOM};

impl Engine {
    pub(super) fn on_send(&mut self, now: Instant, from: ClientAddr, buf: &[u8]) -> Option<ToPeer> {
        let (peer, range) = parse_send(buf)?;
        let a = self.allocations_by_client.get(&from)?;
        let r = a.relay_for(&peer)?;
        let (relay, handle) = (RelayAddr(r.bound), r.handle);
        // The permission route covers the IP (installed through the policy, pruned on
        // reload); what is left to check per packet depends on the port.
        let (slot, user) = self.routes.permission_in(now, relay, peer.ip(), from)?;
        if !self.shared.policy.permits_port_for(user, peer) {
            return None;
        }
        if self.bandwidth.on() && !self.admit(now, slot, TO_PEER, range.len()) {
            return None;
        }
        self.routes.count_to_peer(slot, range.len());
        Some(ToPeer {
            relay,
            handle,
            peer: PeerAddr(peer),
            range,
        })
    }

    pub(super) fn on_channel_data(
        &mut self,
        now: Instant,
        from: ClientAddr,
        buf: &[u8],
    ) -> Option<ToPeer> {
        let &[n0, n1, l0, l1, ..] = buf else {
            return None;
        };
        let number = ChannelNumber::new(u16::from_be_bytes([n0, n1]))?;
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if 4 + len > buf.len() {
            return None;
        }
        // One lookup: the forward route carries the relay, the peer, the channel's expiry
        // and the allocation's counters.
        let (relay, handle, peer, slot) = self.routes.channel_out(now, from, number)?;
        if self.bandwidth.on() && !self.admit(now, slot, TO_PEER, len) {
            return None;
        }
        self.routes.count_to_peer(slot, len);
        Some(ToPeer {
            relay,
            handle,
            peer,
            range: 4..4 + len,
        })
    }

    /// A datagram from `peer` on the relay socket bound at `relay`, which belongs to
    /// `client`'s allocation (the I/O layer knows: it bound the socket for it). The payload is
    /// `buf[HEADROOM..HEADROOM + len]` and `buf` has [`TAILROOM`](super::TAILROOM) bytes
    /// after it, so the ChannelData or Data-indication header is written in place.
    ///
    /// A datagram from a channel's peer (while the channel and the permission of its IP live)
    /// costs one lookup of the route table; anything else a second one, for the permission
    /// of the peer's IP, and the policy's per-port check.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        client: ClientAddr,
        relay: RelayAddr,
        peer: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<ToClient> {
        let len16 = u16::try_from(len).ok()?;
        let (route, slot) = match self.routes.channel_in(now, relay, peer, client) {
            Some((number, slot)) => (Some(number), slot),
            None => {
                let (slot, user) = self.routes.permission_in(now, relay, peer.0.ip(), client)?;
                if !self.shared.policy.permits_port_for(user, peer.0) {
                    // A port the policy refuses on a permitted IP (the server's own services
                    // outside the relay range, port 0, a listener): dropped.
                    return None;
                }
                (None, slot)
            }
        };
        if self.bandwidth.on() && !self.admit(now, slot, TO_CLIENT, len) {
            return None;
        }
        let PeerAddr(peer) = peer;
        let range = match route {
            Some(number) => {
                let start = HEADROOM - 4;
                let padded = if client.transport.is_stream() {
                    (len + 3) & !3
                } else {
                    len
                };
                let out = buf.get_mut(start..HEADROOM + padded)?;
                let (h, rest) = out.split_first_chunk_mut::<4>()?;
                let ([n0, n1], [l0, l1]) = (number.get().to_be_bytes(), len16.to_be_bytes());
                *h = [n0, n1, l0, l1];
                rest.get_mut(len..)?.fill(0);
                start..HEADROOM + padded
            }
            None => {
                // Data indication: header, XOR-PEER-ADDRESS, DATA.
                let tid = self.next_tid();
                let peer_attr = if peer.is_ipv4() { 12 } else { 24 };
                let padded = (len + 3) & !3;
                let body = u16::try_from(peer_attr + 4 + padded).ok()?;
                let start = HEADROOM - 4 - peer_attr - 20;
                let out = buf.get_mut(start..HEADROOM + padded)?;
                let (h, rest) = out.split_at_mut_checked(HEADROOM - start)?;
                let (hdr, attrs) = h.split_first_chunk_mut::<20>()?;
                let ([b0, b1], [c0, c1, c2, c3]) = (
                    body.to_be_bytes(),
                    stun::message::MAGIC_COOKIE.to_be_bytes(),
                );
                let [t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11] = tid;
                let [m0, m1] = MSG_DATA_INDICATION_BYTES;
                *hdr = [
                    m0, m1, b0, b1, c0, c1, c2, c3, t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10,
                    t11,
                ];
                let (pa, data_hdr) = attrs.split_at_mut_checked(peer_attr)?;
                let (pa_hdr, pa_val) = pa.split_first_chunk_mut::<4>()?;
                let [p0, p1] = ATTR_XOR_PEER_ADDRESS_BYTES;
                *pa_hdr = [p0, p1, 0, (peer_attr - 4) as u8];
                if encode_xor_addr(peer, &tid, pa_val) != peer_attr - 4 {
                    return None;
                }
                let [l0, l1] = len16.to_be_bytes();
                let d: &mut [u8; 4] = data_hdr.try_into().ok()?;
                let [d0, d1] = ATTR_DATA_BYTES;
                *d = [d0, d1, l0, l1];
                rest.get_mut(len..)?.fill(0);
                start..HEADROOM + padded
            }
        };
        self.routes.counted_to_client(slot, len);
        Some(ToClient { client, range })
    }

    /// `[policy] max_bps_per_allocation`: may `len` payload bytes of `slot`'s allocation go
    /// in direction `dir` now? Counts the drop when not (no log: one per packet).
    #[cold]
    fn admit(&mut self, now: Instant, slot: Slot, dir: usize, len: usize) -> bool {
        let ok = self.bandwidth.admit(self.cfg.epoch, now, slot, dir, len);
        if !ok {
            if let Some(n) = self.metrics.bandwidth_dropped.get_mut(dir) {
                *n += 1;
            }
        }
        ok
    }
}
