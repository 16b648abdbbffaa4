//! Shared by the collector tests: locating (and if needed building) the real
//! binaries of the testbed, and scratch directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `testbed/<dir>/build` (a no-op when the binary is cached) and returns the
/// path it prints, so `cargo test` works on a fresh machine too.
pub fn testbed_binary(dir: &str) -> anyhow::Result<PathBuf> {
    let script = repo().join("testbed").join(dir).join("build");
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed with {}",
        script.display(),
        out.status
    );
    let path = String::from_utf8(out.stdout)?
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| anyhow::anyhow!("{} printed no path", script.display()))?;
    anyhow::ensure!(path.is_file(), "{} is not a file", path.display());
    Ok(path)
}

/// The collector built from `testbed/collector/manifest.yaml`.
pub fn otelcol() -> anyhow::Result<PathBuf> {
    testbed_binary("collector")
}

/// A fresh scratch directory under the target dir, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = repo()
            .join("target")
            .join("test-scratch")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
