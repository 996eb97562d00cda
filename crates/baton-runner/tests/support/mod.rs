//! Shared by the runner tests that start a real `baton` (exec server, ssh, S3 mounts).

pub mod sshd;

use std::path::{Path, PathBuf};

/// The workspace's `baton` binary: `$BATON_BIN`, else `debug/baton` in the target directory
/// (`CARGO_TARGET_DIR` or the workspace's `target/`); `cargo test --workspace` builds it.
pub fn baton_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BATON_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let p = target.join("debug/baton");
    assert!(
        p.is_file(),
        "{p:?} is missing: build it first (`cargo build -p baton-cli`) or set BATON_BIN"
    );
    p
}
