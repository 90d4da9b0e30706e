//! One allocation: its relay sockets, permissions, channels, counters and recent responses.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::route::{LazyMap, Slot};
use super::ChannelNumber;
use crate::policy::PeerPolicy;

/// How many recent responses an allocation keeps for retransmitted requests.
const RECENT_RESPONSES: usize = 8;

/// A relay socket of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// The address the socket is bound to. (The address clients are told is computed from
    /// it, `Engine::advertise`: the external mapping is fixed engine configuration.)
    pub bound: SocketAddr,
    /// The I/O layer's handle of the socket ([`super::RelayHandle`]).
    pub handle: super::RelayHandle,
}

impl Relay {
    /// The socket as the I/O layer named it.
    pub fn bound_relay(&self) -> super::BoundRelay {
        super::BoundRelay {
            addr: self.bound,
            handle: self.handle,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Channel {
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// Permissions (peer IPs) and channels (number, peer) removed from an allocation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Peer IPs whose permission went.
    pub permissions: Vec<IpAddr>,
    /// Channels that went.
    pub channels: Vec<(ChannelNumber, SocketAddr)>,
}

impl Removed {
    /// How many (permissions, channels).
    pub fn counts(&self) -> (usize, usize) {
        (self.permissions.len(), self.channels.len())
    }
    /// Nothing went.
    pub fn is_empty(&self) -> bool {
        self.permissions.is_empty() && self.channels.is_empty()
    }
}

/// The parts of an Allocate success answer not found in the allocation itself (the relays,
/// the client and the key are), so that it can be built again for a retransmission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocateEcho {
    /// The Allocate's transaction id.
    pub tid: [u8; 12],
    /// The LIFETIME granted, seconds.
    pub lifetime: u32,
    /// The RESERVATION-TOKEN handed out.
    pub token: Option<super::ReservationToken>,
    /// Whether the answer had a FINGERPRINT.
    pub fingerprint: bool,
    /// The ADDRESS-ERROR-CODE's code (a family not had in a dual Allocate), or 0.
    pub address_error: u16,
}

/// The last [`RECENT_RESPONSES`] responses of an allocation, each as (transaction id,
/// length as u16 big-endian, bytes), oldest first, in one boxed buffer.
#[derive(Debug, Default)]
pub struct Recent(Box<[u8]>);

impl Recent {
    fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut rest = &self.0[..];
        std::iter::from_fn(move || {
            let (tid, tail) = rest.split_at_checked(12)?;
            let (&[l0, l1], tail) = tail.split_first_chunk::<2>()?;
            let (bytes, tail) = tail.split_at_checked(usize::from(u16::from_be_bytes([l0, l1])))?;
            rest = tail;
            Some((tid, bytes))
        })
    }

    /// How many responses are kept.
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// Nothing kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn remember(&mut self, tid: [u8; 12], response: &[u8]) {
        // A STUN message longer than u16 cannot be (its length field is 16 bits).
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        let skip = usize::from(self.len() >= RECENT_RESPONSES);
        let mut v = Vec::with_capacity(self.0.len() + 14 + response.len());
        for (t, r) in self.entries().skip(skip) {
            v.extend_from_slice(t);
            v.extend_from_slice(&(r.len() as u16).to_be_bytes());
            v.extend_from_slice(r);
        }
        v.extend_from_slice(&tid);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(response);
        self.0 = v.into_boxed_slice();
    }

    fn recalled(&self, tid: &[u8; 12]) -> Option<&[u8]> {
        self.entries().find(|(t, _)| t == tid).map(|(_, r)| r)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub bytes_to_peer: u64,
    pub bytes_to_client: u64,
    pub packets_to_peer: u64,
    pub packets_to_client: u64,
}

#[derive(Debug)]
/// One allocation: its user and key, relay sockets, permissions, channels and counters.
pub struct Allocation {
    /// Unique per server: the shard number in the top 16 bits.
    pub id: super::SessionId,
    /// The principal (quotas, logs, the session API); shared with its counter slot.
    pub user: std::sync::Arc<str>,
    /// The USERNAME it was created with when that is not the principal (TURN REST).
    pub username: Option<Box<str>>,
    /// The long-term key the allocation was created with; later requests must match it.
    pub key: super::integrity::Signer,
    /// One relay per family (two for a dual allocation).
    pub relays: Vec<Relay>,
    /// What the success answer to its Allocate said, to answer a retransmission of that
    /// Allocate with the same bytes.
    pub allocate: AllocateEcho,
    /// When the Allocate succeeded.
    pub created: Instant,
    /// When it expires unless refreshed.
    pub expires: Instant,
    /// Where this allocation sits in the engine's timer set.
    pub wake_at: Instant,
    /// Peer IP -> when its permission expires. (The three maps cost a pointer each while
    /// empty: idle allocations are most of a server's.)
    pub permissions: LazyMap<IpAddr, Instant>,
    /// Channel number -> its binding.
    pub channels_by_number: LazyMap<ChannelNumber, Channel>,
    /// Peer -> its channel number (the reverse of `channels_by_number`).
    pub channels_by_peer: LazyMap<SocketAddr, ChannelNumber>,
    /// Its traffic counters' place in the engine's route table (`RouteTable::stats`), for
    /// the lifecycle log, usage records and metrics.
    pub slot: Slot,
    /// Responses to recent requests, newest last, packed in one buffer (most allocations
    /// only ever hold their Allocate response: one heap block).
    pub recent: Recent,
}

impl Allocation {
    /// The relay of `peer`'s family.
    pub fn relay_for(&self, peer: &SocketAddr) -> Option<&Relay> {
        self.relays
            .iter()
            .find(|r| r.bound.is_ipv4() == peer.is_ipv4())
    }

    /// Does the allocation have a relay of `peer`'s family?
    pub fn has_family_of(&self, peer: &SocketAddr) -> bool {
        self.relay_for(peer).is_some()
    }

    /// Is there an unexpired permission for `ip`?
    pub fn permitted(&self, ip: &IpAddr, now: Instant) -> bool {
        self.permissions.get(ip).is_some_and(|e| *e > now)
    }

    /// Keep `response` to answer a retransmission of transaction `tid`.
    pub fn remember(&mut self, tid: [u8; 12], response: &[u8]) {
        self.recent.remember(tid, response);
    }

    /// The kept response to transaction `tid`, if any.
    pub fn recalled(&self, tid: &[u8; 12]) -> Option<&[u8]> {
        self.recent.recalled(tid)
    }

    /// The relay of `ip`'s family.
    pub fn relay_for_ip(&self, ip: &IpAddr) -> Option<&Relay> {
        self.relays
            .iter()
            .find(|r| r.bound.is_ipv4() == ip.is_ipv4())
    }

    /// Drop expired permissions and channels; returns what went (the engine removes their
    /// routes).
    pub fn expire_children(&mut self, now: Instant) -> Removed {
        let mut gone = Removed::default();
        self.permissions.retain(|ip, e| {
            let keep = *e > now;
            if !keep {
                gone.permissions.push(*ip);
            }
            keep
        });
        let peers = &mut self.channels_by_peer;
        self.channels_by_number.retain(|n, c| {
            let keep = c.expires > now;
            if !keep {
                peers.remove(&c.peer);
                gone.channels.push((*n, c.peer));
            }
            keep
        });
        gone
    }

    /// Remove the permissions and channels `policy` forbids (after a reload); returns what
    /// went. A channel goes when its peer is forbidden or its peer's permission went.
    pub fn retain_allowed(&mut self, policy: &dyn PeerPolicy) -> Removed {
        let mut gone = Removed::default();
        let user = &*self.user;
        self.permissions.retain(|ip, _| {
            let keep = policy.permits_ip_for(user, *ip);
            if !keep {
                gone.permissions.push(*ip);
            }
            keep
        });
        let (perms, peers) = (&self.permissions, &mut self.channels_by_peer);
        self.channels_by_number.retain(|n, c| {
            let keep = policy.permits_for(user, c.peer) && perms.contains_key(&c.peer.ip());
            if !keep {
                peers.remove(&c.peer);
                gone.channels.push((*n, c.peer));
            }
            keep
        });
        gone
    }

    /// The earliest instant something in this allocation expires.
    pub fn next_deadline(&self) -> Instant {
        let mut t = self.expires;
        for e in self.permissions.values() {
            t = t.min(*e);
        }
        for c in self.channels_by_number.values() {
            t = t.min(c.expires);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Denies 10.0.0.0/8 and port 9.
    struct Tight;
    impl PeerPolicy for Tight {
        fn permits(&self, peer: SocketAddr) -> bool {
            peer.port() != 9 && self.permits_ip(peer.ip())
        }
        fn permits_ip(&self, ip: IpAddr) -> bool {
            !matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10)
        }
    }

    #[test]
    fn retain_allowed_removes_forbidden_permissions_and_their_channels() {
        let now = Instant::now();
        let later = now + Duration::from_secs(300);
        let mut a = Allocation {
            id: crate::engine::SessionId::new(0, 1),
            user: "u".into(),
            username: None,
            key: crate::engine::integrity::Signer::new(&[0; 16], None),
            relays: vec![],
            allocate: Default::default(),
            created: now,
            expires: later,
            wake_at: now,
            permissions: Default::default(),
            channels_by_number: Default::default(),
            channels_by_peer: Default::default(),
            slot: Default::default(),
            recent: Default::default(),
        };
        let peers: [SocketAddr; 3] = [
            "10.1.2.3:5000".parse().unwrap(), // denied address
            "198.18.0.1:9".parse().unwrap(),  // allowed address, denied port
            "198.18.0.2:5000".parse().unwrap(),
        ];
        for (i, p) in peers.iter().enumerate() {
            a.permissions.insert(p.ip(), later);
            let n = crate::engine::ChannelNumber::new(0x4000 + i as u16).unwrap();
            a.channels_by_number.insert(
                n,
                Channel {
                    peer: *p,
                    expires: later,
                },
            );
            a.channels_by_peer.insert(*p, n);
        }
        assert_eq!(a.retain_allowed(&Tight).counts(), (1, 2));
        assert!(!a.permitted(&peers[0].ip(), now));
        assert!(
            a.permitted(&peers[1].ip(), now),
            "the address is still allowed"
        );
        assert_eq!(a.channels_by_number.len(), 1);
        assert_eq!(
            a.channels_by_peer.get(&peers[2]).map(|n| n.get()),
            Some(0x4002)
        );
        assert_eq!(a.retain_allowed(&Tight).counts(), (0, 0));
    }
}
#[cfg(test)]
mod recent_tests {
    use super::*;

    #[test]
    fn recent_keeps_the_last_eight_responses_in_order() {
        let mut r = Recent::default();
        assert!(r.is_empty());
        for i in 0..10u8 {
            r.remember([i; 12], &vec![i; usize::from(i) * 7]);
        }
        assert_eq!(r.len(), RECENT_RESPONSES);
        assert_eq!(r.recalled(&[0; 12]), None, "the oldest went");
        assert_eq!(r.recalled(&[1; 12]), None);
        for i in 2..10u8 {
            assert_eq!(r.recalled(&[i; 12]), Some(&vec![i; usize::from(i) * 7][..]));
        }
        // One buffer: the bytes of eight entries and nothing more.
        let want: usize = (2..10).map(|i| 14 + i * 7).sum();
        assert_eq!(r.0.len(), want);
        r.remember([9; 12], &[0; 70_000]);
        assert_eq!(
            r.len(),
            RECENT_RESPONSES,
            "a response too long to be STUN is not kept"
        );
    }
}

#[cfg(test)]
mod size {
    /// Issue 12: an idle allocation costs at most 1 KB of RSS in all; its own box is the
    /// largest part. A field that makes it grow past this fails here first.
    #[test]
    fn an_idle_allocation_stays_small() {
        let n = std::mem::size_of::<super::Allocation>();
        assert!(n <= 224, "Allocation is {n} bytes");
    }
}
