//! TOML text -> validated [`Config`], with every error naming file, line and dotted key:
//! `/etc/turnd/turnd.toml:12: relay.ports: "6000-5000": the range's start is above its end`.
//!
//! Three stages, each reporting through the same [`ConfigError`]:
//! 1. syntax (`toml_edit` parses the text and keeps the span of every key and value);
//! 2. shape (serde into `raw`, `deny_unknown_fields`; a serde error's span names its key);
//! 3. meaning (`apply` onto [`Config::secure_default`], then [`Config::validate`]; each problem
//!    names its key, whose line is looked up in the parsed document).
//!
//! Secret values (`auth.users`, `auth.secrets`, `auth.user[].key`/`password`, the contents of
//! `auth.secret_file`) are never repeated in a message: see [`is_secret_key`].

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use toml_edit::ImDocument;
use turnd_proto::auth::{PasswordAlgorithm, RestHmac};

use super::locate::{guess_path, line_at, path_at, span_of};
use super::raw::{MintMode, RawAuth, RawConfig, RawUser};
use super::validate::Problem;
use super::{Config, Credential, Mint, Profile, Redacted, StaticUser, TlsFiles};

/// One problem and where it is: `file:line: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file as given, or a description such as `built-in development profile`.
    pub origin: String,
    /// 1-based; `None` when the key is not in the file (a missing key, a command-line value).
    pub line: Option<usize>,
    /// Dotted key such as `auth.user[1].key`; empty for a problem with the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything wrong with a configuration, one [`Located`] problem per line of `Display`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Located>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(origin: &str, line: Option<usize>, key: &str, message: impl Into<String>) -> Self {
        let p = Located {
            origin: origin.into(),
            line,
            key: key.into(),
            message: message.into(),
        };
        ConfigError { problems: vec![p] }
    }

    /// Problems of a config built without a file text (development profile, command-line
    /// overrides): no lines.
    pub fn unlocated(origin: &str, problems: Vec<Problem>) -> Self {
        let problems = problems
            .into_iter()
            .map(|p| Located {
                origin: origin.into(),
                line: None,
                key: p.key,
                message: p.message,
            })
            .collect();
        ConfigError { problems }
    }
}

/// Read and load a config file. See [`load_str`].
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load_file_with(path, |_| Ok(Vec::new()))
}

/// Load a config from `text`, which came from `source` (for messages, and as the base of
/// relative paths in it): the secure defaults, then every key present, then validation.
pub fn load_str(text: &str, source: &Path) -> Result<Config, ConfigError> {
    load_str_with(text, source, |_| Ok(Vec::new()))
}

/// [`load_file`] with `adjust` (the command-line overrides) run between applying the file and
/// validating. See [`load_str_with`].
pub fn load_file_with<F>(path: &Path, adjust: F) -> Result<Config, ConfigError>
where
    F: FnOnce(&mut Config) -> Result<Vec<&'static str>, ConfigError>,
{
    let text = std::fs::read_to_string(path).map_err(|e| {
        let message = format!("cannot read the config file: {e}");
        ConfigError::one(&path.display().to_string(), None, "", message)
    })?;
    load_str_with(&text, path, adjust)
}

/// [`load_str`] with `adjust` run between applying the file and validating, so that
/// validation sees the merged result. `adjust` returns the keys it replaced: a problem about
/// one of them (or its parent table) gets no line, since the file is not where the value came
/// from, and says so.
pub fn load_str_with<F>(text: &str, source: &Path, adjust: F) -> Result<Config, ConfigError>
where
    F: FnOnce(&mut Config) -> Result<Vec<&'static str>, ConfigError>,
{
    let origin = source.display().to_string();
    let doc = ImDocument::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let key = guess_path(text, offset);
        let message = scrub_if_secret(&key, &format!("invalid TOML: {}", e.message().trim()));
        ConfigError::one(&origin, Some(line_at(text, offset)), &key, message)
    })?;
    let raw: RawConfig = toml::from_str(text).map_err(|e| shape_error(&origin, text, &doc, &e))?;

    let mut config = Config::secure_default();
    config.profile = Profile::Production;
    config.source = Some(source.to_path_buf());
    let base = source.parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    apply(raw, &mut config, base, &mut problems);
    let mut overridden = Vec::new();
    if problems.is_empty() {
        overridden = adjust(&mut config)?;
        if let Err(p) = config.validate() {
            problems = p;
        }
    }
    if problems.is_empty() {
        return Ok(config);
    }
    let problems = problems
        .into_iter()
        .map(|p| {
            if overridden.iter().any(|k| related(k, &p.key)) {
                let message = format!("{} (after command-line overrides)", p.message);
                return Located {
                    origin: origin.clone(),
                    line: None,
                    key: p.key,
                    message,
                };
            }
            Located {
                origin: origin.clone(),
                line: span_of(&doc, &p.key).map(|s| line_at(text, s.start)),
                key: p.key,
                message: p.message,
            }
        })
        .collect();
    Err(ConfigError { problems })
}

/// Whether one dotted key is the other or contains it (`listen` and `listen.udp`).
fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
    };
    within(a, b) || within(b, a)
}

/// A serde error: find its key from its span and say what is wrong in our words.
fn shape_error(
    origin: &str,
    text: &str,
    doc: &ImDocument<&str>,
    e: &toml::de::Error,
) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start);
    let mut key = path_at(doc, offset).unwrap_or_else(|| guess_path(text, offset));
    let msg = e.message().trim();
    let message = if let Some(rest) = msg.strip_prefix("unknown field `") {
        // "unknown field `udpp`, expected one of `udp`, `tcp`, `tls`": the span is the key's.
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.replace('`', ""));
        let mut m = match expected {
            Some(e) => match e.strip_prefix("one of ") {
                Some(list) => format!("unknown key (expected one of: {list})"),
                None => format!("unknown key (expected: {e})"),
            },
            None => "unknown key (this table takes no keys)".to_string(),
        };
        let name = rest.split('`').next().unwrap_or_default();
        if key.contains('.') && ROOT_KEYS.contains(&name) {
            m.push_str(&format!(
                "; `{name}` is a top-level key: in TOML every key below a [table] header \
                 belongs to that table, so move it above the first [table]"
            ));
        }
        m
    } else if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        // The span is the table's: name the missing key itself.
        key = if key.is_empty() {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
        "is required".to_string()
    } else {
        scrub_if_secret(&key, msg)
    };
    ConfigError::one(origin, Some(line_at(text, offset)), &key, message)
}

/// The keys of the top level that are not tables.
const ROOT_KEYS: [&str; 3] = ["realm", "workers", "software"];

/// Keys whose values are secret, with array indices removed (`auth.user[2].key` ->
/// `auth.user.key`). Their sub-keys are secret too. Add `admin.token` with `[admin]`.
const SECRET_KEYS: [&str; 6] = [
    "admin.token",
    "auth.users",
    "auth.secrets",
    "auth.secret.value",
    "auth.user.key",
    "auth.user.password",
];

/// Whether a message about `key` must not repeat the value. `auth` and `auth.user` as a whole
/// count as secret (a type error on them would print the table's contents).
pub fn is_secret_key(key: &str) -> bool {
    let mut plain = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => plain.push(c),
            _ => {}
        }
    }
    plain == "auth"
        || plain == "auth.user"
        || plain == "auth.secret"
        || SECRET_KEYS.iter().any(|s| {
            plain
                .strip_prefix(s)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
}

/// Replace every quoted (`"..."`, `` `...` ``) part of a message about a secret key.
fn scrub_if_secret(key: &str, message: &str) -> String {
    if !is_secret_key(key) {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len());
    let mut closing = None;
    for c in message.chars() {
        match closing {
            Some(end) if c == end => closing = None,
            Some(_) => {}
            None if c == '"' || c == '`' => {
                closing = Some(c);
                out.push_str("(value not shown)");
            }
            None => out.push(c),
        }
    }
    out
}

/// Apply every key present in `raw` onto `c`; `base` resolves relative paths.
fn apply(raw: RawConfig, c: &mut Config, base: &Path, problems: &mut Vec<Problem>) {
    if let Some(v) = raw.realm {
        c.realm = v;
    }
    if let Some(v) = raw.workers {
        c.workers = v;
    }
    if raw.software.is_some() {
        c.software = raw.software;
    }
    if let Some(l) = raw.listen {
        let addrs = |v: Vec<super::raw::Addr>| v.into_iter().map(|a| a.0).collect();
        if let Some(v) = l.udp {
            c.listen.udp = addrs(v);
        }
        if let Some(v) = l.tcp {
            c.listen.tcp = addrs(v);
        }
        if let Some(v) = l.tls {
            c.listen.tls = addrs(v);
        }
        if let Some(v) = l.dtls {
            c.listen.dtls = addrs(v);
        }
    }
    if let Some(t) = raw.tls {
        match (t.cert, t.key, t.acme) {
            (Some(cert), Some(key), None) => {
                c.tls = Some(TlsFiles {
                    cert: base.join(cert),
                    key: base.join(key),
                })
            }
            (None, None, Some(a)) => {
                c.acme = Some(super::Acme {
                    domains: a.domains,
                    contact: a.contact,
                    directory: a.directory,
                    state_dir: base.join(
                        a.state_dir
                            .unwrap_or_else(|| super::Acme::DEFAULT_STATE_DIR.into()),
                    ),
                    directory_ca: a.directory_ca.map(|p| base.join(p)),
                    renew_before: a
                        .renew_before
                        .map_or(super::Acme::DEFAULT_RENEW_BEFORE, |d| d.0),
                })
            }
            (_, _, Some(_)) => problems.push(Problem::new(
                "tls.acme".to_string(),
                "set either tls.cert and tls.key or tls.acme, not both",
            )),
            (Some(_), None, None) => {
                problems.push(Problem::new("tls.key".to_string(), "is required"))
            }
            (None, Some(_), None) => {
                problems.push(Problem::new("tls.cert".to_string(), "is required"))
            }
            (None, None, None) => problems.push(Problem::new(
                "tls".to_string(),
                "needs cert and key, or acme",
            )),
        }
    }
    if let Some(r) = raw.relay {
        if let Some(v) = r.ipv4 {
            c.relay.ipv4 = v.0 .0;
        }
        if let Some(v) = r.ipv6 {
            c.relay.ipv6 = v.0 .0;
        }
        if let Some(v) = r.ports {
            c.relay.ports = v.0;
        }
        if let Some(v) = r.external {
            c.relay.external = v.into_iter().map(|m| m.0).collect();
        }
        if let Some(v) = r.socket_buffer {
            if (4096..=256 << 20).contains(&v) {
                c.relay.socket_buffer = v;
            } else {
                problems.push(Problem::new(
                    "relay.socket_buffer".to_string(),
                    "must be between 4096 and 268435456 bytes",
                ));
            }
        }
        if let Some(v) = r.gso {
            c.relay.gso = v;
        }
        if let Some(v) = r.coalesce {
            if v.0 <= super::MAX_COALESCE {
                c.relay.coalesce = v.0;
            } else {
                problems.push(Problem::new(
                    "relay.coalesce".to_string(),
                    "must be between 0s (off) and 1ms",
                ));
            }
        }
        if let Some(v) = r.tcp {
            c.relay.tcp = v;
        }
        if let Some(v) = r.tcp_max_connections {
            if (1..=1024).contains(&v) {
                c.relay.tcp_max_connections = v;
            } else {
                problems.push(Problem::new(
                    "relay.tcp_max_connections".to_string(),
                    "must be between 1 and 1024",
                ));
            }
        }
    }
    if let Some(a) = raw.auth {
        apply_auth(a, c, base, problems);
    }
    if let Some(p) = raw.policy {
        let nets = |v: Vec<super::raw::Net>| v.into_iter().map(|n| n.0).collect();
        if let Some(v) = p.allow_peers {
            c.policy.allow_peers = nets(v);
        }
        if let Some(v) = p.deny_peers {
            c.policy.deny_peers = nets(v);
        }
        let pol = &mut c.policy;
        set(&mut pol.max_allocations, p.max_allocations);
        set(
            &mut pol.max_allocations_per_user,
            p.max_allocations_per_user,
        );
        set(
            &mut pol.max_permissions_per_allocation,
            p.max_permissions_per_allocation,
        );
        set(
            &mut pol.max_channels_per_allocation,
            p.max_channels_per_allocation,
        );
        set(
            &mut pol.max_reservations_per_user,
            p.max_reservations_per_user,
        );
        set(&mut pol.max_bps_per_allocation, p.max_bps_per_allocation);
    }
    if let Some(l) = raw.lifetimes {
        let lt = &mut c.lifetimes;
        set(
            &mut lt.allocation_default,
            l.allocation_default.map(|d| d.0),
        );
        set(&mut lt.allocation_max, l.allocation_max.map(|d| d.0));
        set(&mut lt.permission, l.permission.map(|d| d.0));
        set(&mut lt.channel, l.channel.map(|d| d.0));
        set(&mut lt.reservation, l.reservation.map(|d| d.0));
    }
    if let Some(s) = raw.streams {
        let st = &mut c.streams;
        set(&mut st.handshake_timeout, s.handshake_timeout.map(|d| d.0));
        set(
            &mut st.first_frame_timeout,
            s.first_frame_timeout.map(|d| d.0),
        );
        set(&mut st.idle_timeout, s.idle_timeout.map(|d| d.0));
        set(&mut st.max_connections, s.max_connections);
        set(&mut st.max_connections_per_ip, s.max_connections_per_ip);
        set(&mut st.write_queue_bytes, s.write_queue_bytes);
        set(&mut st.write_timeout, s.write_timeout.map(|d| d.0));
    }
    if let Some(d) = raw.dtls {
        let dt = &mut c.dtls;
        set(&mut dt.handshake_timeout, d.handshake_timeout.map(|d| d.0));
        set(&mut dt.idle_timeout, d.idle_timeout.map(|d| d.0));
        set(&mut dt.max_sessions, d.max_sessions);
        set(&mut dt.max_sessions_per_ip, d.max_sessions_per_ip);
    }
    if let Some(sg) = raw.signaling {
        let c = &mut c.signaling;
        set(&mut c.listen, sg.listen.map(|l| l.0 .0));
        set(&mut c.tls, sg.tls);
        if sg.public_host.is_some() {
            c.public_host = sg.public_host;
        }
        set(&mut c.credential_ttl, sg.credential_ttl.map(|d| d.0));
        set(&mut c.allowed_origins, sg.allowed_origins);
        set(&mut c.max_connections_per_ip, sg.max_connections_per_ip);
        set(&mut c.max_message_bytes, sg.max_message_bytes);
        set(&mut c.ice_requests_per_minute, sg.ice_requests_per_minute);
        set(
            &mut c.mint,
            sg.mint.map(|m| match m {
                MintMode::Open => Mint::Open,
                MintMode::Token => Mint::Token,
                MintMode::Off => Mint::Off,
            }),
        );
        for (key, file, slot) in [
            (
                "signaling.mint_token_file",
                sg.mint_token_file,
                &mut c.mint_token,
            ),
            (
                "signaling.mint_secret_file",
                sg.mint_secret_file,
                &mut c.mint_secret,
            ),
        ] {
            let Some(f) = file else { continue };
            match read_secret_file(&base.join(f)) {
                Ok(mut lines) if lines.len() == 1 => *slot = lines.pop().map(Redacted),
                Ok(_) => problems.push(Problem::new(key, "must hold exactly one line")),
                Err(m) => problems.push(Problem::new(key, m)),
            }
        }
        match sg.mint_hmac.as_deref().map(RestHmac::from_name) {
            None => {}
            Some(Some(h)) => c.mint_hmac = h,
            Some(None) => problems.push(Problem::new(
                "signaling.mint_hmac",
                "must be \"sha1\" or \"sha256\"",
            )),
        }
        set(&mut c.mint_per_minute, sg.mint_per_minute);
        set(
            &mut c.mint_allocations_per_client,
            sg.mint_allocations_per_client,
        );
        set(&mut c.mint_allocations, sg.mint_allocations);
        set(&mut c.max_websockets, sg.max_websockets);
        set(&mut c.max_http_connections, sg.max_http_connections);
        set(
            &mut c.max_http_connections_per_ip,
            sg.max_http_connections_per_ip,
        );
        set(&mut c.header_timeout, sg.header_timeout.map(|d| d.0));
        set(&mut c.idle_timeout, sg.idle_timeout.map(|d| d.0));
        set(&mut c.fd_reserve, sg.fd_reserve);
    }
    if let Some(a) = raw.admin {
        set(&mut c.admin.listen, a.listen.map(|l| l.0 .0));
        set(&mut c.admin.ready_probe, a.ready_probe);
        set(
            &mut c.admin.ready_probe_interval,
            a.ready_probe_interval.map(|d| d.0),
        );
        match (a.token, a.token_file) {
            (Some(_), Some(_)) => problems.push(Problem::new(
                "admin.token_file".to_string(),
                "set either admin.token or admin.token_file, not both",
            )),
            (Some(t), None) => c.admin.token = Some(t),
            (None, Some(f)) => match read_secret_file(&base.join(f)) {
                Ok(mut lines) if lines.len() == 1 => c.admin.token = lines.pop(),
                Ok(_) => problems.push(Problem::new(
                    "admin.token_file".to_string(),
                    "must hold exactly one line, the token",
                )),
                Err(m) => problems.push(Problem::new("admin.token_file".to_string(), m)),
            },
            (None, None) => {}
        }
    }
    if let Some(sv) = raw.server {
        set(&mut c.server.drain_timeout, sv.drain_timeout.map(|d| d.0));
    }
    if let Some(cl) = raw.cluster {
        apply_cluster(cl, c, base, problems);
    }
    if let Some(f) = raw.fastpath {
        set(&mut c.fastpath.xdp, f.xdp);
        set(&mut c.fastpath.xdp_mode, f.xdp_mode.map(|v| v.0));
    }
    if let Some(l) = raw.log {
        set(&mut c.log.level, l.level.map(|v| v.0));
        set(&mut c.log.format, l.format.map(|v| v.0));
        set(&mut c.log.redact, l.redact);
    }
}

/// `[cluster]`: `redis` is required; the URL is never repeated in a message (it may hold a
/// password).
fn apply_cluster(
    cl: super::raw::RawCluster,
    c: &mut Config,
    base: &Path,
    problems: &mut Vec<Problem>,
) {
    let Some(redis) = cl.redis else {
        problems.push(Problem::new(
            "cluster.redis".to_string(),
            "required in [cluster], e.g. \"redis://127.0.0.1:6379/0\"",
        ));
        return;
    };
    if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
        problems.push(Problem::new(
            "cluster.redis".to_string(),
            "must be a redis:// or rediss:// URL",
        ));
    }
    let password = match cl.password_file {
        None => None,
        Some(f) => match read_secret_file(&base.join(f)) {
            Ok(mut lines) if lines.len() == 1 => lines.pop().map(Redacted),
            Ok(_) => {
                problems.push(Problem::new(
                    "cluster.password_file".to_string(),
                    "must hold exactly one line, the password",
                ));
                None
            }
            Err(m) => {
                problems.push(Problem::new("cluster.password_file".to_string(), m));
                None
            }
        },
    };
    let ca_pem = cl.ca_file.and_then(|f| {
        let path = base.join(f);
        let problem = match std::fs::read(&path) {
            Err(e) => format!("cannot read \"{}\": {e}", path.display()),
            Ok(pem) => match rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>() {
                Ok(certs) if !certs.is_empty() => return Some(pem),
                _ => format!("\"{}\" holds no PEM certificate", path.display()),
            },
        };
        problems.push(Problem::new("cluster.ca_file".to_string(), problem));
        None
    });
    if ca_pem.is_some() && !redis.starts_with("rediss://") {
        problems.push(Problem::new(
            "cluster.ca_file".to_string(),
            "needs a rediss:// (TLS) URL in cluster.redis",
        ));
    }
    let mut cluster = super::Cluster {
        redis: Redacted(redis),
        password,
        ca_pem,
        node_id: cl.node_id.unwrap_or_else(crate::cluster::hostname),
        heartbeat: Duration::from_secs(1),
        lease: Duration::from_secs(3),
        timeout: Duration::from_millis(500),
        quota_fail: cl.quota_fail.unwrap_or(super::QuotaFail::Local),
        redirect_above: cl.redirect_above.unwrap_or(0),
        drain_min_allocations: cl.drain_min_allocations.unwrap_or(0),
        usage_interval: cl.usage_interval.map_or(Duration::from_secs(3600), |d| d.0),
        public: [
            cl.public_udp.map(|a| a.0),
            cl.public_tcp.map(|a| a.0),
            cl.public_tls.map(|a| a.0),
        ],
        public_tls_domain: cl.public_tls_domain,
    };
    if cluster
        .public
        .iter()
        .flatten()
        .any(|a| a.ip().is_unspecified() || a.port() == 0)
    {
        problems.push(Problem::new(
            "cluster.public_udp".to_string(),
            "public addresses need a specific IP and port",
        ));
    }
    set(&mut cluster.heartbeat, cl.heartbeat.map(|d| d.0));
    set(&mut cluster.lease, cl.lease.map(|d| d.0));
    set(&mut cluster.timeout, cl.timeout.map(|d| d.0));
    if cluster.node_id.is_empty() || cluster.node_id.len() > 64 {
        problems.push(Problem::new(
            "cluster.node_id".to_string(),
            "must be 1 to 64 characters",
        ));
    }
    if cluster.heartbeat.is_zero() || cluster.lease < cluster.heartbeat * 2 {
        problems.push(Problem::new(
            "cluster.lease".to_string(),
            "must be at least twice cluster.heartbeat (and heartbeat above 0)",
        ));
    }
    if cluster.timeout.is_zero() || cluster.timeout > cluster.heartbeat {
        problems.push(Problem::new(
            "cluster.timeout".to_string(),
            "must be above 0 and at most cluster.heartbeat",
        ));
    }
    c.cluster = Some(cluster);
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn apply_auth(a: RawAuth, c: &mut Config, base: &Path, problems: &mut Vec<Problem>) {
    let auth = &mut c.auth;
    if a.users.is_some() || a.user.is_some() {
        auth.users.clear();
    }
    // Where each user name was first defined, to name both places of a duplicate.
    let mut defined: HashMap<String, String> = HashMap::new();
    let mut add = |key: String, user: StaticUser, problems: &mut Vec<Problem>| {
        if let Some(first) = defined.get(&user.name) {
            let name = user.name.escape_debug();
            problems.push(Problem::new(
                key,
                format!("user \"{name}\" is already defined at {first}"),
            ));
        } else {
            defined.insert(user.name.clone(), key);
            auth.users.push(user);
        }
    };
    for (i, s) in a.users.unwrap_or_default().iter().enumerate() {
        let key = format!("auth.users[{i}]");
        match super::parse::user(s) {
            Ok(u) => add(key, u, problems),
            Err(m) => problems.push(Problem::new(key, m)),
        }
    }
    for (i, u) in a.user.unwrap_or_default().into_iter().enumerate() {
        let key = format!("auth.user[{i}]");
        match user_table(u, &key) {
            Ok(u) => add(key, u, problems),
            Err(p) => problems.push(p),
        }
    }
    let mut secrets = Vec::new();
    if let Some(list) = a.secrets {
        for (i, s) in list.into_iter().enumerate() {
            if s.is_empty() {
                problems.push(Problem::new(format!("auth.secrets[{i}]"), "is empty"));
            }
            secrets.push(s);
        }
    }
    if let Some(path) = a.secret_file {
        match read_secret_file(&base.join(path)) {
            Ok(more) => secrets.extend(more),
            Err(m) => problems.push(Problem::new("auth.secret_file", m)),
        }
    }
    let mut secrets_sha256 = Vec::new();
    for (i, t) in a.secret.into_iter().flatten().enumerate() {
        if t.value.is_empty() {
            problems.push(Problem::new(format!("auth.secret[{i}].value"), "is empty"));
        }
        match t.hmac.as_deref().map(RestHmac::from_name) {
            None | Some(Some(RestHmac::Sha1)) => secrets.push(t.value),
            Some(Some(RestHmac::Sha256)) => secrets_sha256.push(t.value),
            Some(None) => problems.push(Problem::new(
                format!("auth.secret[{i}].hmac"),
                "must be \"sha1\" or \"sha256\"",
            )),
        }
    }
    if !secrets.is_empty() || !secrets_sha256.is_empty() {
        c.auth.secrets = secrets;
        c.auth.secrets_sha256 = secrets_sha256;
    }
    set(&mut c.auth.rest_separator, a.rest_separator.map(|v| v.0));
    set(&mut c.auth.rest_max_skew, a.rest_max_skew.map(|v| v.0));
    set(&mut c.auth.nonce_lifetime, a.nonce_lifetime.map(|v| v.0));
    set(
        &mut c.auth.challenge_budget_per_sec,
        a.challenge_budget_per_sec,
    );
    set(&mut c.auth.failure_budget_per_sec, a.failure_budget_per_sec);
    if let Some(list) = a.password_algorithms {
        let mut algs = Vec::new();
        for (i, name) in list.iter().enumerate() {
            match PasswordAlgorithm::from_name(name) {
                Some(alg) if !algs.contains(&alg) => algs.push(alg),
                Some(_) => problems.push(Problem::new(
                    format!("auth.password_algorithms[{i}]"),
                    "is listed twice",
                )),
                None => problems.push(Problem::new(
                    format!("auth.password_algorithms[{i}]"),
                    format!("\"{}\" is not \"sha256\" or \"md5\"", name.escape_debug()),
                )),
            }
        }
        c.auth.password_algorithms = algs;
    }
    set(&mut c.auth.userhash, a.userhash);
    if let Some(p) = a.revocations_file {
        c.auth.revocations_file = Some(base.join(p));
    }
    let w = &mut c.webhook;
    if let Some(url) = a.webhook {
        w.url = Some(Redacted(url));
    }
    if let Some(path) = a.webhook_token_file {
        match read_secret_file(&base.join(path)) {
            Ok(lines) if lines.len() == 1 => w.token = lines.into_iter().next().map(Redacted),
            Ok(_) => problems.push(Problem::new(
                "auth.webhook_token_file",
                "must hold one line: the token",
            )),
            Err(m) => problems.push(Problem::new("auth.webhook_token_file", m)),
        }
    }
    set(&mut w.allow_http, a.webhook_allow_http);
    if let Some(p) = a.webhook_ca_file {
        w.ca_file = Some(base.join(p));
    }
    set(&mut w.timeout, a.webhook_timeout.map(|d| d.0));
    set(&mut w.cache, a.webhook_cache.map(|d| d.0));
    set(&mut w.negative_cache, a.webhook_negative_cache.map(|d| d.0));
    set(&mut w.cache_entries, a.webhook_cache_entries);
    set(&mut w.max_inflight, a.webhook_max_inflight);
    set(&mut w.breaker_failures, a.webhook_breaker_failures);
    set(
        &mut w.breaker_cooldown,
        a.webhook_breaker_cooldown.map(|d| d.0),
    );
}

/// `[[auth.user]]`: a name and exactly one of `key` or `password`.
fn user_table(u: RawUser, key: &str) -> Result<StaticUser, Problem> {
    let name =
        super::parse::user_name(&u.name).map_err(|m| Problem::new(format!("{key}.name"), m))?;
    let credential = match (u.key, u.password) {
        (Some(_), Some(_)) => {
            return Err(Problem::new(
                key,
                "has both key and password: give one of them",
            ));
        }
        (None, None) => return Err(Problem::new(key, "needs a key or a password")),
        (Some(k), None) => Credential::Key(
            super::parse::md5_key(&k).map_err(|m| Problem::new(format!("{key}.key"), m))?,
        ),
        (None, Some(p)) if p.is_empty() => {
            return Err(Problem::new(format!("{key}.password"), "is empty"));
        }
        (None, Some(p)) => Credential::Password(p),
    };
    Ok(StaticUser { name, credential })
}

/// The TURN REST secrets in `path`, one per line (surrounding spaces and empty lines ignored).
/// The message never contains the file's contents.
pub fn read_secret_file(path: &Path) -> Result<Vec<String>, String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read \"{shown}\": {e}"))?;
    let secrets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if secrets.is_empty() {
        return Err(format!("\"{shown}\" holds no secrets (one per line)"));
    }
    Ok(secrets)
}
