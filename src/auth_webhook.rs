//! `[auth] webhook`: external authorisation over HTTP(S), the I/O side of
//! `turnd_proto::auth::WebhookCache`.
//!
//! The shards never wait here. A lookup the cache cannot answer starts a question (a bounded
//! queue, `try_send`) and the engine parks the request; this module's thread (one
//! current-thread runtime) POSTs the question, bounded by `webhook_timeout`, and hands the
//! answer to the cache, where the engine's next retry (every few ms) finds it.
//!
//! The contract (README "External authorisation"): `POST <url>` with
//! `Authorization: Bearer <token>` (when `webhook_token_file` is set) and the JSON body
//! `{"username": "...", "realm": "...", "client": "ip:port", "transport": "udp"|"tcp"|"tls"}`.
//! A `200` whose JSON body is `{"allow": false}` denies; `{"password": "..."}` or
//! `{"key": "<32 hex digits: MD5(username:realm:password)>"}` (with `"allow": true` or no
//! `allow`) allows. Anything else (another status, a body over 64 KiB, bad JSON, both or
//! neither credential, a timeout, a connection error) is a failure: the user is refused and the
//! circuit breaker counts it.
//!
//! Nothing here logs the URL (it may carry a token), the token, a password or a key; failures
//! are logged at most once per 10 s, with their kind and the count since the last line.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use turnd_proto::auth::{
    long_term_key, sha256_key, Authenticator, Key, Verdict, WebhookAuth, WebhookCache,
    WebhookFetch, WebhookLimits, WebhookOutcome, WebhookQuery, WebhookStats,
};

use crate::config;

/// The largest answer body read.
const MAX_BODY: usize = 64 * 1024;
/// At most one failure line per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether `url` may be used: `https://`, or `http://` to a loopback host (`127.0.0.0/8`,
/// `::1`, `localhost`) unless `allow_http`. The message never repeats the URL.
pub fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| "is not a URL, e.g. \"https://auth.example.org/turn\"".to_string())?;
    let Some(host) = uri.host() else {
        return Err("has no host".into());
    };
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_http || is_loopback_host(host) => Ok(()),
        Some("http") => Err(
            "is http:// to a host that is not loopback: use https://, or set \
             auth.webhook_allow_http = true"
                .into(),
        ),
        _ => Err("must start with https:// (or http:// to loopback)".into()),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The running webhook client: its cache (shared with the shards' authenticator) and thread.
pub struct Webhook {
    cache: Arc<WebhookCache>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Hands questions to the thread without waiting.
struct Queue(mpsc::Sender<WebhookQuery>);

impl WebhookFetch for Queue {
    fn start(&self, q: WebhookQuery) -> bool {
        self.0.try_send(q).is_ok()
    }
}

/// What the thread needs to ask.
struct Asker {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    token: Option<String>,
    timeout: Duration,
}

impl Webhook {
    /// With `webhook` set: the cache and the thread asking it, stopped by `shutdown`.
    /// `None` when no webhook is configured.
    pub fn start(
        cfg: &config::Webhook,
        realm: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<Arc<Webhook>>> {
        let Some(url) = &cfg.url else {
            return Ok(None);
        };
        check_url(&url.0, cfg.allow_http).map_err(|m| anyhow::anyhow!("auth.webhook {m}"))?;
        let uri: Uri = url.0.parse().context("auth.webhook is not a URL")?;
        let tls = client_tls(cfg.ca_file.as_deref(), uri.scheme_str() == Some("https"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(cfg.max_inflight)
            .build(connector);
        let (tx, rx) = mpsc::channel(cfg.max_inflight.max(1));
        let limits = WebhookLimits {
            cache_ttl: cfg.cache,
            negative_ttl: cfg.negative_cache,
            max_entries: cfg.cache_entries,
            max_inflight: cfg.max_inflight,
            breaker_failures: cfg.breaker_failures,
            breaker_cooldown: cfg.breaker_cooldown,
        };
        let cache = Arc::new(WebhookCache::new(realm, limits, Arc::new(Queue(tx))));
        let asker = Arc::new(Asker {
            client,
            uri,
            token: cfg.token.as_ref().map(|t| t.0.clone()),
            timeout: cfg.timeout,
        });
        let for_thread = cache.clone();
        let thread = std::thread::Builder::new()
            .name("turnd-webhook".into())
            .spawn(move || run(asker, for_thread, rx, shutdown))
            .context("cannot start the webhook thread")?;
        tracing::info!(
            timeout = ?cfg.timeout,
            cache = ?cfg.cache,
            max_inflight = cfg.max_inflight,
            "external authorisation by webhook"
        );
        Ok(Some(Arc::new(Webhook {
            cache,
            thread: Mutex::new(Some(thread)),
        })))
    }

    /// `inner` (the configured credentials), then the webhook for names it does not know.
    pub fn wrap(&self, inner: Arc<dyn Authenticator>) -> Arc<dyn Authenticator> {
        Arc::new(WebhookAuth::new(inner, self.cache.clone()))
    }

    /// Counters, breaker state and sizes (metrics, tests).
    pub fn stats(&self) -> WebhookStats {
        self.cache.stats()
    }

    /// The thread, for the server to join at stop (once).
    pub fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.thread.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// rustls client configuration: the roots of `ca_file` when given, else the system's (an
/// `http://` webhook starts without system roots).
fn client_tls(ca_file: Option<&Path>, https: bool) -> anyhow::Result<rustls::ClientConfig> {
    use hyper_rustls::ConfigBuilderExt as _;
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
    };
    let Some(path) = ca_file else {
        return match builder()?.with_native_roots() {
            Ok(b) => Ok(b.with_no_client_auth()),
            Err(e) if https => {
                Err(e).context("auth.webhook: no system CA certificates (set webhook_ca_file)")
            }
            Err(_) => Ok(builder()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()),
        };
    };
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read auth.webhook_ca_file \"{}\"", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.context("auth.webhook_ca_file: bad PEM")?;
        roots
            .add(cert)
            .context("auth.webhook_ca_file: bad certificate")?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "auth.webhook_ca_file \"{}\" holds no certificate",
        path.display()
    );
    Ok(builder()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The thread: a current-thread runtime; each question a task, bounded by the timeout.
fn run(
    asker: Arc<Asker>,
    cache: Arc<WebhookCache>,
    mut rx: mpsc::Receiver<WebhookQuery>,
    shutdown: CancellationToken,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "webhook: cannot start its runtime; unknown users are refused");
            return;
        }
    };
    let log = Arc::new(FailureLog::default());
    rt.block_on(async move {
        loop {
            let q = tokio::select! {
                _ = shutdown.cancelled() => break,
                q = rx.recv() => match q { Some(q) => q, None => break },
            };
            let (asker, cache, log) = (asker.clone(), cache.clone(), log.clone());
            tokio::spawn(async move {
                let opened = cache.stats().breaker_opened;
                let outcome = match tokio::time::timeout(asker.timeout, ask(&asker, &q)).await {
                    Ok(Ok(v)) => WebhookOutcome::Answer(v),
                    Ok(Err(kind)) => {
                        log.failed(kind);
                        WebhookOutcome::Failed
                    }
                    Err(_) => {
                        log.failed("timeout");
                        WebhookOutcome::Failed
                    }
                };
                cache.resolved(Instant::now(), &q, outcome);
                let st = cache.stats();
                if st.breaker_opened > opened {
                    tracing::warn!(
                        failures = st.failed,
                        "webhook circuit breaker open: unknown users are refused, cached ones \
                         keep working"
                    );
                }
            });
        }
    });
}

/// The answer body.
#[derive(serde::Deserialize)]
struct Answer {
    allow: Option<bool>,
    password: Option<String>,
    key: Option<String>,
}

/// One question; `Err` names the kind of failure (for the log, never the URL).
async fn ask(asker: &Asker, q: &WebhookQuery) -> Result<Verdict, &'static str> {
    let body = serde_json::json!({
        "username": q.username,
        "realm": q.realm,
        "client": q.client.to_string(),
        "transport": q.transport,
    });
    let mut req = Request::post(asker.uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("turnd/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = &asker.token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|_| "request")?;
    let resp = asker.client.request(req).await.map_err(|_| "connection")?;
    if resp.status() != StatusCode::OK {
        return Err("status");
    }
    let bytes = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| "body")?
        .to_bytes();
    verdict(&q.username, &q.realm, &bytes).ok_or("malformed answer")
}

/// The verdict in a `200` body; `None`: malformed.
fn verdict(username: &str, realm: &str, body: &[u8]) -> Option<Verdict> {
    let a: Answer = serde_json::from_slice(body).ok()?;
    match (a.allow, a.password, a.key) {
        (Some(false), None, None) => Some(Verdict::Deny),
        (Some(true) | None, Some(p), None) => Some(Verdict::Allow {
            md5: long_term_key(username, realm, &p),
            sha256: sha256_key(username, realm, &p),
        }),
        (Some(true) | None, None, Some(k)) => {
            let mut key = [0u8; 16];
            hex::decode_to_slice(k.trim(), &mut key).ok()?;
            Some(Verdict::Allow {
                md5: Key::new(key),
                sha256: None,
            })
        }
        _ => None,
    }
}

/// Failures, logged at most once per [`LOG_EVERY`].
#[derive(Default)]
struct FailureLog {
    since_last: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl FailureLog {
    fn failed(&self, kind: &'static str) {
        let n = self.since_last.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        *last = Some(now);
        self.since_last.store(0, Ordering::Relaxed);
        tracing::warn!(
            kind,
            failures = n,
            "webhook request failed; the user is refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_https_or_loopback_http() {
        assert!(check_url("https://auth.example.org/turn", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/x", false).is_ok());
        assert!(check_url("http://[::1]:8080/x", false).is_ok());
        assert!(check_url("http://localhost/x", false).is_ok());
        let e = check_url("http://auth.example.org/x?token=s3cret", false).unwrap_err();
        assert!(
            !e.contains("s3cret") && e.contains("webhook_allow_http"),
            "{e}"
        );
        assert!(check_url("http://auth.example.org/x", true).is_ok());
        assert!(check_url("ftp://127.0.0.1/x", true).is_err());
        assert!(check_url("not a url", true).is_err());
        assert!(check_url("/relative", true).is_err());
    }

    #[test]
    fn answers_allow_deny_or_malformed() {
        let pw = verdict("u", "r", br#"{"allow": true, "password": "pw"}"#).unwrap();
        assert_eq!(
            pw,
            Verdict::Allow {
                md5: long_term_key("u", "r", "pw"),
                sha256: sha256_key("u", "r", "pw"),
            }
        );
        let key = hex::encode(long_term_key("u", "r", "pw"));
        let k = verdict("u", "r", format!(r#"{{"key": "{key}"}}"#).as_bytes()).unwrap();
        assert!(matches!(k, Verdict::Allow { sha256: None, .. }));
        assert_eq!(
            verdict("u", "r", br#"{"allow": false}"#),
            Some(Verdict::Deny)
        );
        for bad in [
            &br#"{"allow": true}"#[..],
            br#"{"allow": false, "password": "x"}"#,
            br#"{"password": "x", "key": "00"}"#,
            br#"{"key": "abc"}"#,
            br#"[]"#,
            b"",
        ] {
            assert_eq!(
                verdict("u", "r", bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
