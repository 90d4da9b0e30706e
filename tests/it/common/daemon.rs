//! [`Daemon`]: the built `turnd` binary as a child process with JSON logs on stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// `turnd --config FILE` as a child process, killed (by PID) and reaped on drop. The config
/// must log JSON: its log lines arrive on a channel; every stderr line, JSON or not, is kept in
/// [`Daemon::raw`]. Started once the UDP and admin listeners are logged.
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    /// Every JSON log line received so far (see [`Daemon::drain_lines`]).
    pub seen: Vec<serde_json::Value>,
    /// Every stderr line, as text.
    pub raw: Arc<Mutex<Vec<String>>>,
    pub udp: SocketAddr,
    pub admin: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// `turnd --config config` with stderr piped and `RUST_LOG` removed, to adjust (env,
    /// rlimits) before [`Daemon::spawn`].
    pub fn command(config: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnd"));
        cmd.arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        cmd
    }

    pub fn start(config: &Path) -> Daemon {
        Self::spawn(&mut Self::command(config))
    }

    pub fn spawn(cmd: &mut Command) -> Daemon {
        let mut child = cmd.spawn().expect("turnd runs");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let raw2 = raw.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                raw2.lock().unwrap().push(line.clone());
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut d = Daemon {
            child,
            lines,
            seen: vec![],
            raw,
            udp: ([0, 0, 0, 0], 0).into(),
            admin: ([0, 0, 0, 0], 0).into(),
        };
        d.udp = d.logged_addr("listening udp", |v| {
            v["message"] == "listening" && v["transport"] == "udp"
        });
        d.admin = d.logged_addr("admin listening", |v| v["message"] == "admin API listening");
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `addr` of the first log line matching `f` (see [`Daemon::wait_for`]).
    pub fn logged_addr(
        &mut self,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> SocketAddr {
        let l = self.wait_for(what, f);
        l["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Moves the log lines received so far into [`Daemon::seen`].
    pub fn drain_lines(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
    }

    /// Wait (up to 10 s) for a log line matching `f`, remembering every line seen.
    pub fn wait_for(
        &mut self,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(v) = self.seen.iter().find(|v| f(v)) {
            return v.clone();
        }
        let end = Instant::now() + Duration::from_secs(10);
        while let Ok(v) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v.clone());
            if f(&v) {
                return v;
            }
        }
        panic!("no log line: {what}; saw {:#?}", self.seen);
    }

    /// Sends signal `sig` (e.g. "HUP") to the daemon, by PID.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait for the process to exit within `within`; its exit code.
    pub fn exit_within(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}
