//! The integration tests, in one binary: one link of the crate instead of one per file (the
//! layout hickory-dns uses). One module per former `tests/<name>.rs`; a new test file is a
//! file here plus one `mod` line below.
//!
//! Shared helpers: [`common`] (a module per tool: `daemon` (the built `turnd`), `http`,
//! `tls`, `turnctl_bin`) and [`raw`] (a raw STUN/TURN client). The interop tier with
//! coturn's uclient and aioice is the other binary, `tests/interop/main.rs`: its clients count
//! stream reads, so it must not share the CPU with the floods and browsers here.
//!
//! Nothing here changes process-wide state, so every module shares this one process: the
//! IPv6 /64 test re-runs this binary (filtered to `stream_inprocess::netns_per_64_cap`) inside
//! its network namespace, `policy_netns` moves only its own thread into one (`setns`), and
//! rlimits, signals and environment variables are applied to spawned `turnd` processes only.

mod common;
mod raw;

mod admin_api;
mod advisories_inprocess;
mod amplification;
mod browser_firefox;
mod browser_pages;
mod check_config_warnings;
mod config_files;
mod containment;
mod contrib;
mod dockerfile;
mod dtls;
mod fastpath;
#[cfg(feature = "xdp")]
mod fastpath_clients;
mod fleet;
mod http_limits;
mod http_mint;
mod http_signaling;
mod k8s;
mod ops_acme;
mod ops_binary;
mod ops_config;
mod ops_ready;
mod policy_netns;
mod reload_policy;
mod reservations;
mod revocation;
mod stream_inprocess;
mod turnctl;
mod udp_inprocess;
mod udp_loop;
mod webhook;
