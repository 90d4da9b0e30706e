//! turnd: a STUN/TURN relay server.
//!
//! The binary (`src/main.rs`) is a thin wrapper around this library so that tests can start a
//! real server at port 0 with [`start`] and get the bound addresses back from [`Running`].
//! See ARCHITECTURE.md for the module map.

pub mod acme;
pub mod admin;
pub mod auth_webhook;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fastpath;
pub mod http;
pub mod net;
pub mod probe;
pub mod server;
pub mod systemd;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use server::{start, Running};

// Panic containment in the shards (ARCHITECTURE.md) catches unwinding panics.
#[cfg(panic = "abort")]
compile_error!("turnd needs panic = \"unwind\": shards contain panics with catch_unwind");
