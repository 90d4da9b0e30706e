//! Tools and child processes: install hints, [`ChildGuard`], [`ScratchDir`].

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;

/// Panics with an install hint unless `name` is an executable on `PATH`.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(name)))
    });
    if !found {
        let hint = match name {
            "turnutils_uclient" | "turnutils_peer" | "turnserver" => COTURN_HINT,
            "python3" => "install python3 (apt-get install python3)",
            "chromium" | "chromedriver" => {
                "install chromium (apt-get install chromium chromium-driver)"
            }
            _ => "install it (scripts/test installs every tool the tests need)",
        };
        panic!("required tool `{name}` is not on PATH: {hint}");
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Panics with an install hint unless python3 can import `module`.
pub fn require_python_module(module: &str, pip_spec: &str) {
    require_tool("python3");
    let mut child = ChildGuard::spawn(
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "python3",
    );
    match child.wait_timeout(Duration::from_secs(20)) {
        Some(status) if status.success() => {}
        _ => panic!("python module `{module}` is missing: install it (pip install '{pip_spec}')"),
    }
}

/// A child process killed (SIGKILL, by PID) and reaped on drop, so a failing test leaks nothing.
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command, what: &str) -> ChildGuard {
        match cmd.spawn() {
            Ok(child) => ChildGuard {
                child,
                what: what.to_string(),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {
                require_tool(what);
                panic!("cannot start {what}: {e}");
            }
            Err(e) => panic!("cannot start {what}: {e}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit until `timeout`; `None` means still running at the deadline.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for {} (pid {}): {e}", self.what, self.pid()),
            }
        }
    }

    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill(); // by PID; ignore "already exited"
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private scratch directory under the system temp dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "turnd-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A file in this directory for a child's stdout and stderr (both, interleaved).
    pub fn output_file(&self, name: &str) -> (PathBuf, Stdio, Stdio) {
        let path = self.0.join(name);
        let file = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let err = file.try_clone().expect("clone output file handle");
        (path, Stdio::from(file), Stdio::from(err))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}
