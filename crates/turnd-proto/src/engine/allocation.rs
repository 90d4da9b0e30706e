//! One allocation: its relay sockets, permissions, channels, counters and recent responses.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::route::{FastMap, Slot};
use super::ChannelNumber;
use crate::policy::PeerPolicy;

/// How many recent responses an allocation keeps for retransmitted requests.
const RECENT_RESPONSES: usize = 8;

/// A relay socket of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// The address the socket is bound to.
    pub bound: SocketAddr,
    /// The address clients are told (external mapping applied).
    pub advertised: SocketAddr,
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
    /// The principal (quotas, logs, the session API).
    pub user: String,
    /// The USERNAME it was created with when that is not the principal (TURN REST).
    pub username: Option<Box<str>>,
    /// The long-term key the allocation was created with; later requests must match it.
    pub key: super::integrity::Signer,
    /// One relay per family (two for a dual allocation).
    pub relays: Vec<Relay>,
    /// When the Allocate succeeded.
    pub created: Instant,
    /// When it expires unless refreshed.
    pub expires: Instant,
    /// Where this allocation sits in the engine's timer set.
    pub wake_at: Instant,
    /// Peer IP -> when its permission expires.
    pub permissions: FastMap<IpAddr, Instant>,
    /// Channel number -> its binding.
    pub channels_by_number: FastMap<ChannelNumber, Channel>,
    /// Peer -> its channel number (the reverse of `channels_by_number`).
    pub channels_by_peer: FastMap<SocketAddr, ChannelNumber>,
    /// Its traffic counters' place in the engine's route table (`RouteTable::stats`), for
    /// the lifecycle log, usage records and metrics.
    pub slot: Slot,
    /// (transaction id, response) of recent requests, newest last; grown one slot at a time
    /// (most allocations only ever hold their Allocate response).
    pub recent: Vec<([u8; 12], Box<[u8]>)>,
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
        if self.recent.len() == RECENT_RESPONSES {
            self.recent.remove(0);
        }
        self.recent.reserve_exact(1);
        self.recent.push((tid, response.into()));
    }

    /// The kept response to transaction `tid`, if any.
    pub fn recalled(&self, tid: &[u8; 12]) -> Option<&[u8]> {
        self.recent
            .iter()
            .find(|(t, _)| t == tid)
            .map(|(_, r)| &r[..])
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
        let user = self.user.as_str();
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
            created: now,
            expires: later,
            wake_at: now,
            permissions: Default::default(),
            channels_by_number: Default::default(),
            channels_by_peer: Default::default(),
            slot: Default::default(),
            recent: vec![],
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
