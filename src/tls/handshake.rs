//! Failed TLS handshakes: why (the `reason` label of `turnd_tls_handshake_failures_total`)
//! and their rate-limited logging.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Why a TLS handshake failed: the `reason` label of `turnd_tls_handshake_failures_total`
/// and of the (rate-limited) log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within `streams.handshake_timeout`.
    Timeout,
    /// The client closed or reset the connection during the handshake.
    Closed,
    /// Not TLS or malformed TLS (e.g. plain STUN on the TLS port).
    Protocol,
    /// No common protocol version, cipher suite, group or signature scheme.
    Incompatible,
    /// The client sent an alert (e.g. it does not trust the certificate).
    Alert,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    pub const COUNT: usize = 6;
    pub const ALL: [HandshakeFailure; Self::COUNT] = [
        Self::Timeout,
        Self::Closed,
        Self::Protocol,
        Self::Incompatible,
        Self::Alert,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Protocol => "protocol",
            Self::Incompatible => "incompatible",
            Self::Alert => "alert",
            Self::Other => "other",
        }
    }

    /// The position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The reason of a failed `TlsAcceptor::accept` (tokio-rustls wraps rustls errors in
    /// `io::Error`).
    pub fn of(e: &std::io::Error) -> Self {
        use rustls::Error as E;
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
            return match tls {
                E::InvalidMessage(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::PeerMisbehaved(_)
                | E::PeerSentOversizedRecord
                | E::DecryptError => Self::Protocol,
                E::PeerIncompatible(_) | E::NoApplicationProtocol => Self::Incompatible,
                E::AlertReceived(_) => Self::Alert,
                _ => Self::Other,
            };
        }
        use std::io::ErrorKind as K;
        match e.kind() {
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                Self::Closed
            }
            _ => Self::Other,
        }
    }
}

/// How often a line is logged per handshake failure reason, at most.
pub const HANDSHAKE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// At most one log line per reason per interval (process-wide, like the log itself): a
/// client that fails handshakes in a loop costs a counter increment, not a line each.
pub struct LogLimiter {
    interval_ms: u64,
    /// Per reason: the earliest time (ms since `epoch`) of the next line, and how many
    /// events were not logged since the last line.
    slots: [(AtomicU64, AtomicU64); HandshakeFailure::COUNT],
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        LogLimiter {
            interval_ms: interval.as_millis() as u64,
            slots: [const { (AtomicU64::new(0), AtomicU64::new(0)) }; HandshakeFailure::COUNT],
        }
    }

    /// Whether to log an event of `reason` happening `now_ms` after a fixed epoch: `Some`
    /// with the number of events of that reason not logged since the previous line, or
    /// `None` (counted as suppressed).
    pub fn admit(&self, reason: HandshakeFailure, now_ms: u64) -> Option<u64> {
        let (next, suppressed) = &self.slots[reason.index()];
        let due = next.load(Ordering::Relaxed);
        if now_ms >= due
            && next
                .compare_exchange(
                    due,
                    now_ms.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(suppressed.swap(0, Ordering::Relaxed));
        }
        suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

static HANDSHAKE_LOG: LogLimiter = LogLimiter::new(HANDSHAKE_LOG_INTERVAL);
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Log a failed handshake, unless one of the same reason was logged within
/// [`HANDSHAKE_LOG_INTERVAL`]; the line says how many were left out since the last one.
/// (Counting is the caller's.)
pub fn log_handshake_failure(
    reason: HandshakeFailure,
    client: &dyn std::fmt::Display,
    error: Option<&std::io::Error>,
) {
    let epoch = *EPOCH.get_or_init(Instant::now);
    let now_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Some(suppressed) = HANDSHAKE_LOG.admit(reason, now_ms) {
        tracing::info!(
            %client,
            reason = reason.as_str(),
            error = %error.map_or(String::new(), |e| e.to_string()),
            suppressed,
            interval_secs = HANDSHAKE_LOG_INTERVAL.as_secs(),
            "TLS handshake failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_admits_one_event_per_reason_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let (p, c) = (HandshakeFailure::Protocol, HandshakeFailure::Closed);
        assert_eq!(l.admit(p, 5), Some(0), "the first is logged");
        assert_eq!(l.admit(c, 6), Some(0), "reasons are independent");
        for t in 0..500 {
            assert_eq!(l.admit(p, 6 + t), None);
        }
        assert_eq!(
            l.admit(p, 10_004),
            None,
            "not yet: 10 s after the first line"
        );
        assert_eq!(
            l.admit(p, 10_005),
            Some(501),
            "then with the count left out"
        );
        assert_eq!(l.admit(p, 10_006), None);
        assert_eq!(l.admit(c, 10_006), Some(0));
        assert_eq!(l.admit(p, u64::MAX), Some(1), "no overflow");
    }

    #[test]
    fn handshake_failure_reasons() {
        use std::io::{Error, ErrorKind};
        let wrap = |e: rustls::Error| Error::new(ErrorKind::InvalidData, e);
        let of = HandshakeFailure::of;
        assert_eq!(
            of(&wrap(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            HandshakeFailure::Protocol
        );
        assert_eq!(
            of(&wrap(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoCipherSuitesInCommon
            ))),
            HandshakeFailure::Incompatible
        );
        assert_eq!(
            of(&wrap(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            ))),
            HandshakeFailure::Alert
        );
        assert_eq!(
            of(&Error::new(ErrorKind::UnexpectedEof, "tls handshake eof")),
            HandshakeFailure::Closed
        );
        assert_eq!(
            of(&ErrorKind::ConnectionReset.into()),
            HandshakeFailure::Closed
        );
        assert_eq!(of(&ErrorKind::OutOfMemory.into()), HandshakeFailure::Other);
        let names: std::collections::HashSet<_> =
            HandshakeFailure::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), HandshakeFailure::COUNT);
        for (i, r) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
