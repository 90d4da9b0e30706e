//! The `turnd` binary: parse flags, resolve the configuration, set up logging, start the
//! server, then serve signals until asked to stop. Everything else lives in the library.
//!
//! - SIGHUP: read the configuration again and apply users, secrets, policy, quotas, log level
//!   and certificates; an invalid file is logged and the old configuration stays.
//! - SIGTERM / SIGINT: refuse new allocations, wait up to `[server] drain_timeout` for the
//!   live ones to end, then stop and exit 0.
//! - systemd: READY=1 once every listener is bound, STOPPING=1, watchdog pings.
//! - A shard thread or listener task that ends unexpectedly: log, stop, exit 70
//!   ([`turnd::net::EXIT_SHARD_GONE`]) so that systemd (`Restart=on-failure`) restarts us.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use turnd::cli::{self, Cli};
use turnd::config::Profile;
use turnd::systemd;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("turnd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = cli::resolve(cli)?;
    if cli.check_config {
        for w in cli::warnings(&config) {
            eprintln!("turnd: warning: {w}");
        }
        println!("config OK: {}", cli::origin(&config));
        return Ok(ExitCode::SUCCESS);
    }
    turnd::telemetry::init(&config.log)?;
    for w in cli::warnings(&config) {
        tracing::warn!("{w}");
    }
    if config.profile == Profile::Development {
        for line in cli::development_banner(&config) {
            tracing::warn!("{line}");
        }
    }
    let drain_timeout = config.server.drain_timeout;
    // [cluster]: the calls left to the drain timeout once this few remain (0: none).
    let drain_min = config
        .cluster
        .as_ref()
        .map_or(0, |c| c.drain_min_allocations);
    // Watch the signals before starting, so that one arriving during start-up is not lost.
    let mut signals = Signals::install()?;
    // `start` returns once every listener is bound; it logs each address.
    let running = turnd::start(config).context("cannot start")?;
    notify("READY=1\nSTATUS=serving");
    let Some(signal) = signals.serve(cli, &running) else {
        // A shard is gone: the server is not whole, and a restart is the repair.
        let gone = running.control.health().gone();
        tracing::error!(
            ?gone,
            "a shard is gone; exiting so that the service is restarted"
        );
        notify("STOPPING=1\nSTATUS=a shard is gone");
        running.stop();
        return Ok(ExitCode::from(turnd::net::EXIT_SHARD_GONE));
    };
    tracing::info!(signal, "shutting down");
    notify("STOPPING=1");
    drain(&running, drain_timeout, drain_min);
    running.stop();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn notify(state: &str) {
    if let Err(e) = systemd::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Refuse new allocations and wait up to `timeout` for the live ones to end (all but `min`).
fn drain(running: &turnd::Running, timeout: Duration, min: usize) {
    if timeout.is_zero() {
        return;
    }
    running.control.drain();
    let end = Instant::now() + timeout;
    loop {
        let left = running.stats().allocations;
        if left == 0 {
            tracing::info!("drained: no allocations left");
            return;
        }
        if left <= min {
            tracing::info!(allocations = left, "drained: drain_min_allocations reached");
            return;
        }
        if Instant::now() >= end {
            tracing::warn!(allocations = left, "drain timeout reached; ending the rest");
            return;
        }
        notify(&format!("STATUS=draining, {left} allocations left"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Apply the configuration as it is now on disk (SIGHUP).
fn reload(cli: &Cli, running: &turnd::Running) {
    let new = match cli::resolve(cli) {
        Ok(c) => c,
        Err(e) => {
            let error = format!("{e:#}");
            tracing::error!(
                error,
                "SIGHUP: the configuration is invalid; keeping the old one"
            );
            return;
        }
    };
    let level = new.log.level.clone();
    match running.control.reload(new) {
        Ok(report) => {
            if let Err(e) = turnd::telemetry::set_level(&level) {
                tracing::warn!(error = %e, "SIGHUP: log level unchanged");
            }
            tracing::info!("SIGHUP: configuration reloaded");
            for key in report.needs_restart {
                tracing::warn!(key, "SIGHUP: this setting changed but needs a restart");
            }
        }
        Err(e) => {
            let error = format!("{e:#}");
            tracing::error!(
                error,
                "SIGHUP: reload failed; keeping the old configuration"
            );
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, watched on a small current-thread runtime of their own.
struct Signals {
    rt: tokio::runtime::Runtime,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the signal runtime")?;
        let _guard = rt.enter();
        let int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        Ok(Signals { rt, int, term, hup })
    }

    /// Serve SIGHUP (reload) and watchdog pings until SIGINT or SIGTERM (its name) or until
    /// a shard is gone (`None`).
    fn serve(&mut self, cli: &Cli, running: &turnd::Running) -> Option<&'static str> {
        let watchdog = systemd::watchdog_interval();
        let health = running.control.health().clone();
        self.rt.block_on(async {
            let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
            let failed = health.failed();
            tokio::pin!(failed);
            loop {
                tokio::select! {
                    _ = self.int.recv() => return Some("SIGINT"),
                    _ = self.term.recv() => return Some("SIGTERM"),
                    _ = self.hup.recv() => reload(cli, running),
                    _ = &mut failed => return None,
                    // No watchdog ping once a shard is gone: systemd may restart us too.
                    _ = ping.tick(), if watchdog.is_some() && health.is_whole() => notify("WATCHDOG=1"),
                }
            }
        })
    }
}
