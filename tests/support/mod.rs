//! Shared by the integration tests: the testbed cluster (brought up on demand),
//! a client and kubectl for it, the testbed's binaries, polling, scratch folders.
//!
//! With `KUBECONFIG` set the tests use that cluster; otherwise they run
//! `testbed/testbed up` once (a no-op when it is already up) and use its kubeconfig.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `testbed/<dir>/build` (a no-op when the binaries are cached) and returns
/// the last line it prints: the binary or bin folder it built.
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
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    Ok(path)
}

/// The collector built from `testbed/collector/manifest.yaml`.
pub fn otelcol() -> anyhow::Result<PathBuf> {
    testbed_binary("collector")
}

/// The control plane's bin folder (kube-apiserver, etcd, kubectl, ...).
pub fn controlplane_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| testbed_binary("controlplane").expect("testbed/controlplane/build"))
        .clone()
}

/// The tools' bin folder (kwok, helm).
pub fn tools_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| testbed_binary("tools").expect("testbed/tools/build"))
        .clone()
}

/// The kubeconfig the tests use: `$KUBECONFIG`, or the testbed's after `up`.
pub fn kubeconfig() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        let script = repo().join("testbed").join("testbed");
        let status = Command::new(&script)
            .arg("up")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("testbed/testbed runs");
        assert!(
            status.success(),
            "testbed/testbed up failed ({status}); see target/testbed/logs/"
        );
        repo().join("target").join("testbed").join("kubeconfig")
    })
    .clone()
}

/// A client for the test cluster.
pub async fn client() -> Client {
    let path = kubeconfig();
    let kc = Kubeconfig::read_from(&path).expect("kubeconfig readable");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    Client::try_from(config).expect("client")
}

/// `kubectl` of the testbed's release, pointed at the test cluster.
pub fn kubectl() -> Command {
    let mut cmd = Command::new(controlplane_bin().join("kubectl"));
    cmd.env("KUBECONFIG", kubeconfig());
    cmd
}

/// Runs kubectl with `args`, panicking with its stderr unless it succeeds; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl().args(args).output().expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `probe` every 250 ms until it returns `Some`, or panics naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a namespace named `<prefix>-<unique suffix>` with `labels`; returns its name.
pub async fn fresh_namespace(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let suffix = format!(
        "{:x}{:x}{}",
        std::process::id() % 0xfff,
        nanos % 0xfffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let prefix: String = prefix.chars().take(40).collect();
    let name = format!("{}-{suffix}", prefix.trim_end_matches('-'));
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()
        }
    }))
    .expect("namespace manifest");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
    name
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
