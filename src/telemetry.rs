//! Tracing setup ([`init`]) and log redaction ([`Redactor`]).
//!
//! Logs go to stderr, human-readable or one JSON object per line (`log.format`). The filter is
//! `RUST_LOG` when set, else `log.level`.
//!
//! Client addresses and usernames are personal data, and usernames are bytes an attacker
//! chose. Log them only through [`Redactor`] (or [`redact_addr`] / [`redact_user`]): with
//! `log.redact = true` each becomes a short keyed hash, stable within one process (so one
//! client's lines can be followed) but not across restarts and not reversible by hashing
//! guesses; without it, usernames are still escaped so they cannot forge log lines.

use std::sync::OnceLock;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};
pub use turnd_proto::redact::{redact_addr, redact_user, Redactor};

/// Install the global tracing subscriber. Fails on an invalid `RUST_LOG` or when a subscriber
/// is already installed.
pub fn init(log: &Log) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .with_context(|| format!("invalid RUST_LOG {directives:?}"))?,
        _ => EnvFilter::try_new(&log.level)
            .with_context(|| format!("invalid log.level {:?}", log.level))?,
    };
    let from_env = std::env::var("RUST_LOG").is_ok_and(|d| !d.trim().is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Human => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            b.try_init()
        }
        LogFormat::Json => {
            let b = builder.json().flatten_event(true).with_filter_reloading();
            let handle = b.reload_handle();
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            b.try_init()
        }
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    let _ = REDACT.set(log.redact);
    let _ = LEVEL_FROM_ENV.set(from_env);
    Ok(())
}

type Reloader = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static RELOAD: OnceLock<Reloader> = OnceLock::new();
static LEVEL_FROM_ENV: OnceLock<bool> = OnceLock::new();

/// Apply a new `log.level` (reload). `RUST_LOG`, when set, keeps precedence.
pub fn set_level(level: &str) -> anyhow::Result<()> {
    if LEVEL_FROM_ENV.get().copied().unwrap_or(false) {
        return Ok(());
    }
    let filter =
        EnvFilter::try_new(level).with_context(|| format!("invalid log.level {level:?}"))?;
    match RELOAD.get() {
        Some(reload) => {
            reload(filter).map_err(|e| anyhow::anyhow!("cannot change the log level: {e}"))
        }
        None => Ok(()),
    }
}

/// `log.redact` as given to [`init`]; off until then.
static REDACT: OnceLock<bool> = OnceLock::new();

/// The redactor for `log.redact` as given to [`init`] (off before [`init`]).
pub fn redactor() -> Redactor {
    Redactor::new(REDACT.get().copied().unwrap_or(false))
}
