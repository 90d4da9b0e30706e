//! The interop harness, a module per tool: real clients we did not write.
//!
//! - [`Uclient`]: coturn's `turnutils_uclient`, run with a deadline; its summary counters are
//!   parsed into a [`UclientReport`] (uclient exits 0 even when every packet is lost, so tests
//!   must assert on the counters, never on the exit status alone).
//! - [`EchoPeer`]: a UDP echo peer on loopback (two sockets, `port` and `port + 1`, because
//!   uclient always binds a channel to `peer + 1`, its "RTCP" peer).
//! - [`run_aioice`]: Python `aioice` allocating and relaying through `tests/interop/aioice_relay.py`.
//! - [`Coturn`]: coturn's `turnserver` as a reference server, for the harness self-tests only.
//! - [`rest_credentials`]: TURN REST credentials computed independently of turnd.
//! - Streams: [`ClientTransport`] selects UDP, TCP or TLS for uclient ([`Uclient::transport`])
//!   and aioice ([`AioiceOpts`]); [`TestCert`] is a certificate/key pair in PEM files for a
//!   server and, as the only trust anchor, for a verifying client.
//!
//! Rules: loopback addresses only; a missing tool panics with an install hint (never a skip);
//! every process started here is killed by PID on drop; every wait has a deadline.

mod aioice;
mod coturn;
mod echo_peer;
mod net;
mod process;
mod recipes;
mod tls;
// The `turnctl` binary (another package of the workspace), shared with `tests/it`.
#[path = "../../it/common/turnctl_bin.rs"]
mod turnctl_bin;
mod uclient;

pub use aioice::*;
pub use coturn::*;
pub use echo_peer::*;
pub use net::*;
pub use process::*;
pub use recipes::*;
pub use tls::*;
pub use turnctl_bin::turnctl_bin;
pub use uclient::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The development profile's credentials (see `turnd::config`), also given to coturn.
pub const REALM: &str = "turnd";
pub const USER: &str = "dev";
pub const PASSWORD: &str = "devpass";
pub const SECRET: &str = "devsecret";

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

pub(crate) const COTURN_HINT: &str = "install coturn (apt-get install coturn)";
