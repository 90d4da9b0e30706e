//! With the cargo feature `xdp`: compile the fast path's BPF program (bpf/turnd_xdp.c) with
//! `clang -target bpf` into OUT_DIR, where src/fastpath/ includes it. Without the feature
//! this does nothing, so the default build needs no clang. `CLANG` picks another compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_XDP").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=bpf/turnd_xdp.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("turnd_xdp.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // <asm/types.h> lives under the multiarch include directory on Debian.
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args([
            "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
        ])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", "bpf/turnd_xdp.c", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("feature `xdp`: cannot run {clang} (apt-get install clang libbpf-dev): {e}")
        });
    assert!(
        status.success(),
        "feature `xdp`: {clang} -target bpf failed on bpf/turnd_xdp.c (needs libbpf-dev for \
         <bpf/bpf_helpers.h> and linux-libc-dev)"
    );
}
