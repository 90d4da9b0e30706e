//! Automatic certificates (`[tls] acme`): obtain and renew the TLS listeners' certificate
//! from an ACME CA (RFC 8555, with `instant-acme`), answering the TLS-ALPN-01 challenge
//! (RFC 8737) on the TLS listeners themselves.
//!
//! State lives in `state_dir` (created 0700): `account.json` (the ACME account key, 0600),
//! `cert.pem` (chain) and `key.pem` (0600). At start a stored certificate that covers the
//! configured domains is served at once; otherwise a self-signed placeholder is served until
//! the first certificate arrives. A thread then keeps the certificate renewed: it orders a
//! new one when less than `renew_before` is left, writes the files (atomically, by rename)
//! and swaps the certificate in for new handshakes; established connections are untouched.
//! Failures are logged (one line per attempt) and retried with backoff (1 min to 1 h).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;

use crate::config::Acme;
use crate::tls::{self, ReloadableCert};

const ACCOUNT_FILE: &str = "account.json";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const FIRST_RETRY: Duration = Duration::from_secs(60);
const LAST_RETRY: Duration = Duration::from_secs(3600);
/// Even with a long-lived certificate, look again this often.
const RECHECK: Duration = Duration::from_secs(12 * 3600);

/// The certificate to serve at start: the stored one if it covers `cfg.domains`, else a
/// self-signed placeholder for them. `true` when the stored one was loaded.
pub fn initial_certificate(cfg: &Acme) -> anyhow::Result<(Arc<ReloadableCert>, bool)> {
    prepare_state_dir(&cfg.state_dir)?;
    let (cert, key) = (cfg.state_dir.join(CERT_FILE), cfg.state_dir.join(KEY_FILE));
    if cert.exists() && key.exists() {
        match tls::load_pem(&cert, &key) {
            Ok(k) if covers(&k.cert, &cfg.domains) => {
                return Ok((ReloadableCert::with_acme(k), true));
            }
            Ok(_) => tracing::info!(
                dir = %cfg.state_dir.display(),
                "the stored ACME certificate does not cover tls.acme.domains; ordering a new one"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot load the stored ACME certificate"),
        }
    }
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(cfg.domains.clone())
            .context("cannot generate a placeholder certificate")?;
    let der = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der())
        .map_err(|e| anyhow!("placeholder key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| anyhow!("placeholder key: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing);
    tracing::warn!(
        domains = ?cfg.domains,
        "serving a self-signed placeholder until the ACME certificate is issued"
    );
    Ok((ReloadableCert::with_acme(ck), false))
}

/// Do the end-entity certificate's DNS names include every one of `domains`?
fn covers(chain: &[rustls::pki_types::CertificateDer<'_>], domains: &[String]) -> bool {
    let Some(der) = chain.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    domains
        .iter()
        .all(|d| names.contains(&d.to_ascii_lowercase()))
}

fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the ACME state directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Write `bytes` to `dir/name` with `mode`, atomically (a temporary file renamed over it).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
        .with_context(|| format!("cannot replace {}", dir.join(name).display()))?;
    Ok(())
}

/// Start the renewal thread; it ends when `shutdown` is cancelled.
pub fn spawn(
    cfg: Acme,
    cert: Arc<ReloadableCert>,
    have_stored: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("turnd-acme".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = renew_loop(&cfg, &cert, have_stored) => {}
                }
            });
        })
        .context("cannot start the ACME thread")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How long until the served certificate is due for renewal (zero: now).
fn due_in(cert: &ReloadableCert, renew_before: Duration) -> Duration {
    let Some(leaf) = cert.expiry().into_iter().find(|e| e.index == 0) else {
        return Duration::ZERO;
    };
    let renew_at = leaf.not_after.saturating_sub(renew_before.as_secs() as i64);
    Duration::from_secs(u64::try_from(renew_at.saturating_sub(unix_now())).unwrap_or(0))
}

async fn renew_loop(cfg: &Acme, cert: &ReloadableCert, have_stored: bool) {
    let mut issued = have_stored;
    let mut retry = FIRST_RETRY;
    loop {
        let wait = if issued {
            due_in(cert, cfg.renew_before)
        } else {
            Duration::ZERO
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(RECHECK)).await;
            continue;
        }
        match obtain(cfg, cert).await {
            Ok(()) => {
                issued = true;
                retry = FIRST_RETRY;
            }
            Err(e) => {
                cert.clear_challenges();
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_secs = retry.as_secs(),
                    "ACME: could not obtain a certificate"
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LAST_RETRY);
            }
        }
    }
}

async fn account(cfg: &Acme) -> anyhow::Result<Account> {
    let builder = || match &cfg.directory_ca {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("tls.acme.directory_ca {}", ca.display())),
        None => Account::builder().context("ACME HTTPS client"),
    };
    let path = cfg.state_dir.join(ACCOUNT_FILE);
    if let Ok(json) = std::fs::read(&path) {
        let creds: AccountCredentials = serde_json::from_slice(&json)
            .with_context(|| format!("{} is not an ACME account", path.display()))?;
        return builder()?
            .from_credentials(creds)
            .await
            .context("ACME account");
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .context("creating the ACME account")?;
    let json = serde_json::to_vec(&creds)?;
    write_atomic(&cfg.state_dir, ACCOUNT_FILE, &json, 0o600)?;
    tracing::info!(directory = %cfg.directory, "ACME account created");
    Ok(account)
}

/// One order: challenges answered on the TLS listener, then the certificate stored and
/// swapped in.
async fn obtain(cfg: &Acme, cert: &ReloadableCert) -> anyhow::Result<()> {
    let account = account(cfg).await?;
    let ids: Vec<Identifier> = cfg
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .context("new order")?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization is {other:?}"),
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| anyhow!("the CA offers no tls-alpn-01 challenge"))?;
        let domain = challenge.identifier().to_string();
        let digest = challenge.key_authorization().digest();
        cert.add_challenge(&domain, digest.as_ref())?;
        challenge.set_ready().await.context("challenge ready")?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retries).await.context("order")?;
    if status != OrderStatus::Ready {
        bail!("the order is {status:?}, not ready (validation failed?)");
    }
    let key_pem = order.finalize().await.context("finalize")?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .context("certificate")?;
    cert.clear_challenges();
    let dir = &cfg.state_dir;
    let key = tls::parse_pem(
        chain_pem.as_bytes(),
        key_pem.as_bytes(),
        &dir.join(CERT_FILE),
        &dir.join(KEY_FILE),
    )?;
    // Key first: a crash between the two leaves a new key with the old chain, which fails
    // keys_match at the next start and is ordered again.
    write_atomic(dir, KEY_FILE, key_pem.as_bytes(), 0o600)?;
    write_atomic(dir, CERT_FILE, chain_pem.as_bytes(), 0o644)?;
    cert.set(key);
    let not_after = cert.expiry().first().map_or(0, |e| e.not_after);
    tracing::info!(domains = ?cfg.domains, not_after, "ACME certificate issued and served");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_checks_every_configured_name() {
        let rcgen::CertifiedKey { cert, .. } =
            rcgen::generate_simple_self_signed(vec!["a.test".into(), "B.test".into()]).unwrap();
        let chain = vec![cert.der().clone()];
        assert!(covers(&chain, &["a.test".into()]));
        assert!(covers(&chain, &["b.TEST".into(), "a.test".into()]));
        assert!(!covers(&chain, &["c.test".into()]));
        assert!(!covers(&[], &["a.test".into()]));
    }

    #[test]
    fn state_files_are_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("acme");
        prepare_state_dir(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        write_atomic(&state, "key.pem", b"one", 0o600).unwrap();
        write_atomic(&state, "key.pem", b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(state.join("key.pem")).unwrap(), b"two");
        assert_eq!(mode(&state.join("key.pem")), 0o600);
        assert!(!state.join(".key.pem.tmp").exists());
    }
}
