//! turnd-proto: the sans-IO half of turnd, a STUN/TURN relay server.
//!
//! - [`engine`]: the TURN state machine and the wire code (parse, build, sign).
//! - [`frames`]: ChannelData, Send/Data indications and stream framing, built and read in
//!   place from either end (turnctl's data path uses them).
//! - [`auth`]: long-term credentials, TURN REST secrets, stateless nonces, failure budgets.
//! - [`policy`]: which peers a relay may talk to.
//! - [`settings`]: the plain-data settings those three take (the daemon's config parses into
//!   them).
//! - [`redact`]: how client addresses and usernames appear in log lines.
//!
//! No tokio, no sockets, no clock, no HTTP or TLS: the daemon (`turnd`) does the I/O.
//! See ARCHITECTURE.md for the crates and the data flow.

#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod engine;
pub mod frames;
pub mod policy;
pub mod redact;
pub mod settings;
