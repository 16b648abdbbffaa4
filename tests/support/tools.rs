//! The real client tools users run against the operator's objects, each built by
//! its cached testbed build script on first use:
//! - [`kstatus`]: sigs.k8s.io/cli-utils' kstatus (what Flux's health checks compute);
//! - [`argocd_health`]: the chart's Argo CD health check, run the way Argo CD runs it;
//! - [`helm4`], [`promtool`], [`prometheus`]: binaries from `testbed/tools/build`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::Deserialize;

use super::{repo, testbed_binary};

/// The status a tool computed for one object: `(status, message)`.
#[derive(Deserialize)]
struct Verdict {
    status: String,
    message: String,
}

/// kstatus' status for `object` (`Current`, `InProgress`, `Failed`, `Terminating`,
/// ...) and its message, from `status.Compute` of cli-utils.
pub fn kstatus(object: &serde_json::Value) -> anyhow::Result<(String, String)> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = built(&BIN, "kstatus")?;
    run_on(Command::new(bin), object)
}

/// Argo CD's health for `object` (`Healthy`, `Progressing`, `Degraded`, ...) and its
/// message, from `charts/tracing-operator/argocd/health.lua` run with the standard
/// libraries an `argocd-cm` health customization gets.
pub fn argocd_health(object: &serde_json::Value) -> anyhow::Result<(String, String)> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = built(&BIN, "argocd-lua")?;
    let mut cmd = Command::new(bin);
    cmd.arg("--script").arg(health_lua());
    run_on(cmd, object)
}

/// The chart's Argo CD health check.
pub fn health_lua() -> PathBuf {
    repo().join("charts/tracing-operator/argocd/health.lua")
}

/// Helm 4 (`helm4 version` is v4.3.1), beside the Helm 3 the chart tests use.
pub fn helm4() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| tool("helm4").join("helm4")).clone()
}

/// promtool of the pinned Prometheus release.
pub fn promtool() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| tool("prometheus").join("promtool"))
        .clone()
}

/// The Prometheus server of the pinned release (its web UI is not embedded; the API works).
pub fn prometheus() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| tool("prometheus").join("prometheus"))
        .clone()
}

/// Builds one tool of `testbed/tools/build` (a no-op when cached) and returns its bin folder.
fn tool(name: &str) -> PathBuf {
    let script = repo().join("testbed/tools/build");
    let out = Command::new(&script)
        .arg(name)
        .stderr(Stdio::inherit())
        .output()
        .expect("testbed/tools/build runs");
    assert!(
        out.status.success(),
        "testbed/tools/build {name} failed with {}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = stdout
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .expect("testbed/tools/build prints its bin folder");
    assert!(bin.is_dir(), "{} is not a folder", bin.display());
    bin
}

/// The binary of `testbed/<dir>/build`, built once per test process.
fn built(cell: &OnceLock<Result<PathBuf, String>>, dir: &str) -> anyhow::Result<PathBuf> {
    cell.get_or_init(|| testbed_binary(dir).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("building testbed/{dir}: {e}"))
}

/// Runs `cmd` with `object` as JSON on stdin and reads its one-line verdict.
fn run_on(mut cmd: Command, object: &serde_json::Value) -> anyhow::Result<(String, String)> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {program}: {e}"))?;
    let input = serde_json::to_vec(object)?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("{program} has no stdin"))?
        .write_all(&input)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let verdict: Verdict = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "{program} printed {:?}, not {{\"status\",\"message\"}}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok((verdict.status, verdict.message))
}
