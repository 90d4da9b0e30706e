//! The `turnctl` binary for the tests that run it. It belongs to another package of the
//! workspace (`crates/turnctl`), so cargo sets no `CARGO_BIN_EXE_turnctl` here: it is built
//! (or found up to date) once per test process with escargot, in this run's profile, and the
//! build failing fails the test loudly.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Variables cargo sets for a running test (not the user's cargo configuration): passed on,
/// they would look like a changed environment to the nested build and rebuild dependencies
/// (ring's build script watches `CARGO_MANIFEST_DIR`).
fn set_by_cargo_for_this_test(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_EXE_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
        )
}

pub fn turnctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut build = escargot::CargoBuild::new()
            .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .package("turnctl")
            .bin("turnctl")
            .current_release();
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(set_by_cargo_for_this_test) {
                build = build.env_remove(key);
            }
        }
        let built = build
            .run()
            .unwrap_or_else(|e| panic!("cargo build -p turnctl: {e}"));
        built.path().to_path_buf()
    })
}
