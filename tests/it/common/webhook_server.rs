//! A real HTTP webhook for `[auth] webhook` tests: axum on a loopback port, on a thread of its
//! own (so a test blocking on a child process never starves it). Answers per username, counts
//! calls and the most in flight at once, and records every request body and Authorization.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The bearer token the test webhook requires.
pub const HOOK_TOKEN: &str = "hook-token-for-tests";

/// What the webhook answers for a user.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `{"allow": true, "password": ...}`
    Password(String),
    /// `{"key": "<hex>"}`
    Key(String),
    /// `{"allow": false}`
    Deny,
    /// This HTTP status, empty body.
    Status(u16),
    /// Sleep, then answer.
    Slow(Duration, Box<Reply>),
}

#[derive(Default)]
pub struct HookState {
    pub answers: Mutex<HashMap<String, Reply>>,
    /// For users not in `answers`.
    pub default: Mutex<Option<Reply>>,
    pub calls: AtomicUsize,
    pub inflight: AtomicUsize,
    pub max_inflight: AtomicUsize,
    pub bodies: Mutex<Vec<Value>>,
    pub authorizations: Mutex<Vec<Option<String>>>,
}

impl HookState {
    pub fn set(&self, user: &str, r: Reply) {
        self.answers.lock().unwrap().insert(user.into(), r);
    }
    pub fn set_default(&self, r: Option<Reply>) {
        *self.default.lock().unwrap() = r;
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn calls_for(&self, user: &str) -> usize {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["username"] == user)
            .count()
    }
}

pub struct Hook {
    pub addr: SocketAddr,
    pub state: Arc<HookState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hook {
    pub fn start() -> Hook {
        Self::start_with(None)
    }

    /// The same over HTTPS with this certificate chain and key (rustls, ring).
    pub fn start_tls(
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Hook {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Hook {
        let state = Arc::new(HookState::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = Router::new().route("/turn", post(handle)).with_state(st);
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                let Some(tls) = tls else {
                    axum::serve(l, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await
                        .unwrap();
                    return;
                };
                let accept = async move {
                    loop {
                        let Ok((tcp, _)) = l.accept().await else {
                            continue;
                        };
                        let (tls, app) = (tls.clone(), app.clone());
                        tokio::spawn(async move {
                            let Ok(stream) = tls.accept(tcp).await else {
                                return;
                            };
                            let svc = hyper_util::service::TowerToHyperService::new(app);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = rx => {}
                }
            });
            // Slow handlers still sleeping are dropped with the runtime.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        Hook {
            addr,
            state,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/turn", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}/turn", self.addr)
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Inflight<'a>(&'a HookState);
impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    State(st): State<Arc<HookState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, String) {
    st.calls.fetch_add(1, Ordering::SeqCst);
    let now = st.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_inflight.fetch_max(now, Ordering::SeqCst);
    let _guard = Inflight(&st);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    st.authorizations.lock().unwrap().push(auth.clone());
    st.bodies.lock().unwrap().push(body.clone());
    if auth.as_deref() != Some(&format!("Bearer {HOOK_TOKEN}")) {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    let user = body["username"].as_str().unwrap_or_default().to_string();
    let reply = st
        .answers
        .lock()
        .unwrap()
        .get(&user)
        .cloned()
        .or_else(|| st.default.lock().unwrap().clone())
        .unwrap_or(Reply::Deny);
    let mut reply = reply;
    loop {
        match reply {
            Reply::Slow(d, then) => {
                tokio::time::sleep(d).await;
                reply = *then;
            }
            Reply::Password(p) => {
                return (
                    StatusCode::OK,
                    json!({"allow": true, "password": p}).to_string(),
                )
            }
            Reply::Key(k) => return (StatusCode::OK, json!({ "key": k }).to_string()),
            Reply::Deny => return (StatusCode::OK, json!({"allow": false}).to_string()),
            Reply::Status(s) => return (StatusCode::from_u16(s).unwrap(), String::new()),
        }
    }
}

/// `Config::for_tests()` asking `hook` with its token.
pub fn config_with_hook(hook: &Hook) -> turnd::Config {
    let mut c = turnd::Config::for_tests();
    c.webhook.url = Some(turnd_proto::settings::Redacted(hook.url()));
    c.webhook.token = Some(turnd_proto::settings::Redacted(HOOK_TOKEN.into()));
    c
}
