//! The Python tools some tests run for real (schemathesis, the MCP SDK): a virtual environment
//! that scripts/test.sh creates under the target directory from
//! tests/support/python/requirements.txt (pinned), never the system's site-packages.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;

/// `{target dir}/test-venv`: the target directory is the parent of `CARGO_TARGET_TMPDIR`, so a
/// `CARGO_TARGET_DIR` elsewhere is honoured (scripts/test.sh uses the same place).
pub fn venv() -> PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .join("test-venv")
}

/// A program of the virtual environment (`python`, `schemathesis`); fails the test, never skips
/// it, when scripts/test.sh has not installed it.
pub fn program(name: &str) -> PathBuf {
    let path = venv().join("bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh, which installs tests/support/python/requirements.txt \
         into {}",
        path.display(),
        venv().display()
    );
    path
}
