//! Helpers shared by the in-process and binary tests, a module per tool:
//!
//! - [`Daemon`]: the built `turnd` binary as a child process, its JSON log on a channel.
//! - [`turnctl_bin`]: the workspace's `turnctl`, built once per test process (escargot).
//! - [`http_get`]: a one-shot HTTP/1.1 request; [`tls_connector`]: a TLS client.

pub mod browser;
mod daemon;
mod http;
mod tls;
mod turnctl_bin;
pub mod webhook_server;

pub use daemon::*;
pub use http::*;
pub use tls::*;
pub use turnctl_bin::*;
