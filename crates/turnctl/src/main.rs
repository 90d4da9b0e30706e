//! turnctl: operator tool for TURN servers (turnd, coturn, any RFC 8656 server).
//!
//! - `probe`: does the server work over udp/tcp/tls with these credentials? (health check)
//! - `creds`: TURN REST credentials, or an RTCConfiguration, from a shared secret.
//! - `load`: a bounded load generator with its own echo peers, for benchmarks.
//!
//! Modules: `server` (URLs, durations), `client` (connections, framing, transactions),
//! `wire` (data-path encodings), `tls` (client TLS), `creds`, `probe`, `load` (orchestration
//! and report), `worker` (one load thread), `flow` (one allocation's data path), `echo`
//! (echo peers), `mmsg` (batched UDP syscalls), `stats` (RTT histogram, own CPU use),
//! `dtls_load` (`load --dtls`: pre-encrypted DTLS records, open loop).
//!
//! Exit codes: 0 success, 1 a check or run failed, 2 bad usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod creds;
mod dtls_load;
mod echo;
mod flow;
mod load;
mod mmsg;
mod probe;
mod server;
mod stats;
mod tls;
mod wire;
mod worker;

#[derive(Parser, Debug)]
#[command(
    name = "turnctl",
    version,
    about = "Probe, credentials and load generation for TURN servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a server step by step: Binding, Allocate, CreatePermission, relay round trips
    /// (Send and ChannelData), Refresh(0). Exit 0 only when all passed.
    Probe(probe::ProbeArgs),
    /// Print TURN REST credentials (username, password) from a shared secret.
    Creds(creds::CredsArgs),
    /// Generate load: N allocations relaying to local echo peers; bounded in time.
    Load(load::LoadArgs),
}

/// clap value parser for server URLs.
pub(crate) fn parse_url(s: &str) -> Result<server::ServerUrl, String> {
    s.parse().map_err(|e: anyhow::Error| format!("{e:#}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Probe(a) => probe::run(a),
        Command::Creds(a) => creds::run(a).map(|()| true),
        Command::Load(a) => load::run(a),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("turnctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};
    use turnd_proto::engine::Transport;

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn duration_flags_parse_with_humantime() {
        let ttl = |v: &str| {
            Cli::try_parse_from(["turnctl", "creds", "--ttl", v]).map(|c| match c.command {
                Command::Creds(a) => a.auth.ttl,
                other => panic!("parsed as {other:?}"),
            })
        };
        assert_eq!(ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(ttl("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(ttl("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(ttl("10x").is_err());
        assert!(ttl("10").is_err(), "a duration needs its unit");
        let load = Cli::try_parse_from(["turnctl", "load", "-s", "turn:127.0.0.1:9"]).unwrap();
        let Command::Load(a) = load.command else {
            panic!("not load")
        };
        assert_eq!(
            (a.duration, a.timeout),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
    }

    #[test]
    fn transport_flag_takes_the_proto_crates_transports() {
        let transport = |v: &str| {
            let argv = [
                "turnctl",
                "load",
                "-s",
                "turn:127.0.0.1:9",
                "--transport",
                v,
            ];
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Load(a) => a.transport,
                other => panic!("parsed as {other:?}"),
            })
        };
        for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
            assert_eq!(transport(t.as_str()).unwrap(), Some(t));
        }
        assert!(transport("sctp").is_err());
    }
}
