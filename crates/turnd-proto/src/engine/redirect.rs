//! Load-aware redirects (RFC 8489 §10, RFC 8656 §6.2): while a [`Redirect`] names an
//! alternate for a transport, a new authenticated Allocate on it gets 300 (Try Alternate)
//! with ALTERNATE-SERVER (and ALTERNATE-DOMAIN when set, for TLS). Existing allocations are
//! untouched. The daemon's cluster thread sets and clears the targets from the fleet's load;
//! the engine only reads them, on the control plane.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::{Engine, Transport};

/// Where a new allocation should go instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternate {
    /// ALTERNATE-SERVER: the other node's public address for this transport.
    pub server: SocketAddr,
    /// ALTERNATE-DOMAIN (TLS: the name the client checks the certificate against).
    pub domain: Option<String>,
}

/// The current alternate per transport (UDP, TCP, TLS), shared by all shards.
#[derive(Debug, Default)]
pub struct Redirect {
    targets: RwLock<[Option<Alternate>; 4]>,
}

fn index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        // No DTLS alternates are published: a DTLS client is never redirected.
        Transport::Dtls => 3,
    }
}

impl Redirect {
    /// Redirect new allocations on `transport` to `to`; `None`: accept them here again.
    pub fn set(&self, transport: Transport, to: Option<Alternate>) {
        self.targets.write().unwrap_or_else(|e| e.into_inner())[index(transport)] = to;
    }

    /// The alternate for `transport`, if new allocations should go elsewhere.
    pub fn get(&self, transport: Transport) -> Option<Alternate> {
        self.targets.read().unwrap_or_else(|e| e.into_inner())[index(transport)].clone()
    }
}

impl Engine {
    /// Send new allocations where `redirect` says, while it says so.
    pub fn with_redirect(mut self, redirect: Arc<Redirect>) -> Self {
        self.redirect = Some(redirect);
        self
    }

    /// Where a new Allocate on `transport` should go instead, if elsewhere (answered with
    /// [`Refusal::TryAlternate`](super::Refusal::TryAlternate), signed like every refusal).
    pub(super) fn try_alternate(&self, transport: Transport) -> Option<Alternate> {
        self.redirect.as_ref()?.get(transport)
    }
}
