//! Why the engine refused a request: one [`Refusal`] per reason, with its STUN error code and
//! reason phrase mapped here and nowhere else (RFC 8489 §14.8, RFC 8656 §18.3 and §15).
//!
//! Handlers return `Result<Reply, Refusal>`; the dispatcher in `control.rs` turns a refusal
//! into the error answer (signed when the request authenticated) and counts it by
//! [`Refusal::label`] in [`EngineMetrics::refusals`](super::EngineMetrics::refusals).

/// Which part of a request made it a 400 Bad Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BadRequest {
    /// MESSAGE-INTEGRITY without USERNAME, REALM or NONCE.
    MissingCredentials,
    /// REQUESTED-TRANSPORT missing or not 4 bytes.
    RequestedTransport,
    /// EVEN-PORT not 1 byte.
    EvenPort,
    /// EVEN-PORT with the R bit on a dual-family Allocate.
    EvenPortDual,
    /// RESERVATION-TOKEN not 8 bytes.
    ReservationToken,
    /// RESERVATION-TOKEN with EVEN-PORT or an address family (RFC 8656 §7.2).
    ReservationTokenWith,
    /// REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY not 4 bytes or not IPv4/IPv6
    /// where required.
    AddressFamily,
    /// Both REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY.
    BothFamilies,
    /// LIFETIME not 4 bytes.
    Lifetime,
    /// An XOR-PEER-ADDRESS that does not decode.
    PeerAddress,
    /// No XOR-PEER-ADDRESS.
    NoPeer,
    /// CHANNEL-NUMBER missing or malformed.
    ChannelNumber,
    /// CHANNEL-NUMBER outside 0x4000-0x7FFF.
    ChannelRange,
    /// ChannelBind with more than one XOR-PEER-ADDRESS.
    ChannelPeers,
    /// The channel is bound to another peer, or the peer to another channel.
    ChannelRebind,
    /// Behind the nonce cookie: PASSWORD-ALGORITHMS not repeated as offered, or a
    /// PASSWORD-ALGORITHM not offered (the bid-down check of RFC 8489 §9.2.4).
    PasswordAlgorithm,
    /// A TCP Allocate (RFC 6062) with EVEN-PORT, RESERVATION-TOKEN, DONT-FRAGMENT or a
    /// second family.
    TcpAllocateOption,
    /// CONNECTION-ID missing, malformed, unknown or already bound.
    ConnectionId,
    /// ConnectionBind over UDP or on a connection that holds an allocation (RFC 6062 §5.4).
    ConnectionBindConnection,
    /// ChannelBind on a TCP allocation.
    ChannelBindTcp,
}

impl BadRequest {
    /// The metrics label (`turnd_refusals_total{reason="bad_request_..."}`).
    pub fn label(self) -> &'static str {
        match self {
            BadRequest::MissingCredentials => "bad_request_missing_credentials",
            BadRequest::RequestedTransport => "bad_request_requested_transport",
            BadRequest::EvenPort => "bad_request_even_port",
            BadRequest::EvenPortDual => "bad_request_even_port_dual",
            BadRequest::ReservationToken => "bad_request_reservation_token",
            BadRequest::ReservationTokenWith => "bad_request_reservation_token_with",
            BadRequest::AddressFamily => "bad_request_address_family",
            BadRequest::BothFamilies => "bad_request_both_families",
            BadRequest::Lifetime => "bad_request_lifetime",
            BadRequest::PeerAddress => "bad_request_peer_address",
            BadRequest::NoPeer => "bad_request_no_peer",
            BadRequest::ChannelNumber => "bad_request_channel_number",
            BadRequest::ChannelRange => "bad_request_channel_range",
            BadRequest::ChannelPeers => "bad_request_channel_peers",
            BadRequest::ChannelRebind => "bad_request_channel_rebind",
            BadRequest::PasswordAlgorithm => "bad_request_password_algorithm",
            BadRequest::TcpAllocateOption => "bad_request_tcp_allocate_option",
            BadRequest::ConnectionId => "bad_request_connection_id",
            BadRequest::ConnectionBindConnection => "bad_request_connection_bind_connection",
            BadRequest::ChannelBindTcp => "bad_request_channel_bind_tcp",
        }
    }
}

/// Which capacity ran out (508 Insufficient Capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capacity {
    /// The server is draining: no new allocations.
    Draining,
    /// No relay socket could be bound for the requested family.
    RelayPorts,
    /// The allocation has its maximum of permissions.
    Permissions,
    /// The allocation has its maximum of channels.
    Channels,
    /// The TCP allocation has its maximum of peer connections.
    TcpConnections,
}

/// Why a request was refused; the answer is the error [`Refusal::code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 300: a fleet sends new allocations to another node (ALTERNATE-SERVER, and
    /// ALTERNATE-DOMAIN when set; `redirect.rs`).
    TryAlternate(super::Alternate),
    /// 400: malformed, and which part.
    BadRequest(BadRequest),
    /// 401: no or wrong credentials (the challenge).
    Unauthorized,
    /// 403: the peer policy denies a peer.
    ForbiddenPeer,
    /// 420: comprehension-required attributes the server does not know.
    UnknownAttributes(Vec<u16>),
    /// 437: no allocation for a Refresh/CreatePermission/ChannelBind, or one already exists
    /// for an Allocate.
    AllocationMismatch,
    /// 438: a stale or foreign nonce.
    StaleNonce,
    /// 440: the requested relay address family is not offered.
    FamilyNotSupported,
    /// 441: another user's request on an existing allocation.
    WrongCredentials,
    /// 442: REQUESTED-TRANSPORT other than UDP.
    UnsupportedTransport,
    /// 443: a peer or refresh family the allocation has no relay for.
    PeerFamilyMismatch,
    /// 446: a Connect to a peer the TCP allocation is already connected (or connecting) to.
    ConnectionAlreadyExists,
    /// 447: the connection to the peer failed or timed out.
    ConnectionFailure,
    /// 486: the user's or the server's allocation quota.
    Quota,
    /// 508: a capacity ran out, and which.
    Capacity(Capacity),
}

impl Refusal {
    /// The STUN error code.
    pub fn code(&self) -> u16 {
        match self {
            Refusal::TryAlternate(_) => 300,
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized => 401,
            Refusal::ForbiddenPeer => 403,
            Refusal::UnknownAttributes(_) => 420,
            Refusal::AllocationMismatch => 437,
            Refusal::StaleNonce => 438,
            Refusal::FamilyNotSupported => 440,
            Refusal::WrongCredentials => 441,
            Refusal::UnsupportedTransport => 442,
            Refusal::PeerFamilyMismatch => 443,
            Refusal::ConnectionAlreadyExists => 446,
            Refusal::ConnectionFailure => 447,
            Refusal::Quota => 486,
            Refusal::Capacity(_) => 508,
        }
    }

    /// The reason phrase of [`Refusal::code`].
    pub fn reason(&self) -> &'static str {
        reason_phrase(self.code())
    }

    /// One refusal of every kind (`UnknownAttributes` with an empty list): every
    /// [`Refusal::label`] there is. `/metrics` shows each label from the start, at 0, so the
    /// series do not appear one by one as refusals first happen.
    pub fn every() -> Vec<Refusal> {
        use BadRequest as B;
        [
            B::MissingCredentials,
            B::RequestedTransport,
            B::EvenPort,
            B::EvenPortDual,
            B::ReservationToken,
            B::ReservationTokenWith,
            B::AddressFamily,
            B::BothFamilies,
            B::Lifetime,
            B::PeerAddress,
            B::NoPeer,
            B::ChannelNumber,
            B::ChannelRange,
            B::ChannelPeers,
            B::ChannelRebind,
            B::PasswordAlgorithm,
            B::TcpAllocateOption,
            B::ConnectionId,
            B::ConnectionBindConnection,
            B::ChannelBindTcp,
        ]
        .map(Refusal::from)
        .into_iter()
        .chain([
            Refusal::TryAlternate(super::Alternate {
                server: std::net::SocketAddr::from(([192, 0, 2, 1], 3478)),
                domain: None,
            }),
            Refusal::Unauthorized,
            Refusal::ForbiddenPeer,
            Refusal::UnknownAttributes(vec![]),
            Refusal::AllocationMismatch,
            Refusal::StaleNonce,
            Refusal::FamilyNotSupported,
            Refusal::WrongCredentials,
            Refusal::UnsupportedTransport,
            Refusal::PeerFamilyMismatch,
            Refusal::ConnectionAlreadyExists,
            Refusal::ConnectionFailure,
            Refusal::Quota,
            Refusal::Capacity(Capacity::Draining),
            Refusal::Capacity(Capacity::RelayPorts),
            Refusal::Capacity(Capacity::Permissions),
            Refusal::Capacity(Capacity::Channels),
            Refusal::Capacity(Capacity::TcpConnections),
        ])
        .collect()
    }

    /// The metrics label: which refusal, finer than the code.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::TryAlternate(_) => "try_alternate",
            Refusal::BadRequest(b) => b.label(),
            Refusal::Unauthorized => "unauthorized",
            Refusal::ForbiddenPeer => "forbidden_peer",
            Refusal::UnknownAttributes(_) => "unknown_attributes",
            Refusal::AllocationMismatch => "allocation_mismatch",
            Refusal::StaleNonce => "stale_nonce",
            Refusal::FamilyNotSupported => "family_not_supported",
            Refusal::WrongCredentials => "wrong_credentials",
            Refusal::UnsupportedTransport => "unsupported_transport",
            Refusal::PeerFamilyMismatch => "peer_family_mismatch",
            Refusal::ConnectionAlreadyExists => "connection_already_exists",
            Refusal::ConnectionFailure => "connection_failure",
            Refusal::Quota => "quota",
            Refusal::Capacity(Capacity::Draining) => "capacity_draining",
            Refusal::Capacity(Capacity::RelayPorts) => "capacity_relay_ports",
            Refusal::Capacity(Capacity::Permissions) => "capacity_permissions",
            Refusal::Capacity(Capacity::Channels) => "capacity_channels",
            Refusal::Capacity(Capacity::TcpConnections) => "capacity_tcp_connections",
        }
    }
}

impl From<BadRequest> for Refusal {
    fn from(b: BadRequest) -> Self {
        Refusal::BadRequest(b)
    }
}

/// Short reason phrases of the error codes turnd sends or may receive (a client such as
/// `turnctl` prints them for a server's codes); `""` for others.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_phrase_and_a_distinct_label() {
        let all = Refusal::every();
        let mut labels: Vec<_> = all.iter().map(Refusal::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
        for r in &all {
            assert!(!r.reason().is_empty(), "{r:?}");
            assert!((300..600).contains(&r.code()), "{r:?}");
        }
    }
}
