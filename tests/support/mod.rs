//! Shared by the integration tests: the testbed cluster (brought up on demand),
//! a client and kubectl for it, the testbed's binaries, polling, scratch folders,
//! unique names, local ports and HTTP, and the cleanup of what a test created.
//! [`jaeger`] runs a Jaeger v2, [`process`] the operator binary.
//!
//! With `KUBECONFIG` set the tests use that cluster; otherwise they run
//! `testbed/testbed up` once (a no-op when it is already up) and use its kubeconfig.
#![allow(dead_code)]

pub mod admission;
pub mod apiserver;
pub mod audit;
pub mod collector;
pub mod histogram;
pub mod injection;
pub mod jaeger;
pub mod nodes;
pub mod operator_writes;
pub mod pod;
pub mod process;
pub mod tools;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tracing_operator::api::TracingPolicy;

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

/// Installs (or updates) the TracingPolicy CRD and waits until it is served.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = TracingPolicy::crd();
    let name = crd.metadata.name.clone().expect("crd name");
    crds.patch(
        &name,
        &PatchParams::apply("tracing-operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("CRD applies");
    wait_until(
        "the TracingPolicy CRD is established",
        Duration::from_secs(60),
        || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        },
    )
    .await;
    // Discovery may lag Established by a moment.
    wait_crd_served(client).await;
}

/// Waits until TracingPolicies can be listed (metadata only, so that a policy
/// the typed API cannot read does not count against it).
pub async fn wait_crd_served(client: &Client) {
    let policies: Api<TracingPolicy> = Api::all(client.clone());
    wait_until(
        "TracingPolicies can be listed",
        Duration::from_secs(60),
        || {
            let policies = policies.clone();
            async move {
                policies
                    .list_metadata(&Default::default())
                    .await
                    .ok()
                    .map(|_| ())
            }
        },
    )
    .await;
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

/// A suffix to tell this call's names from other calls' and other runs': process
/// id and time in hex, then a per-process counter.
pub fn suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{:x}{:x}{}",
        std::process::id() % 0xfff,
        nanos % 0xfffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `<prefix>-<suffix>`: a name of this run, so that objects an earlier, failed
/// run left behind are never mistaken for this run's.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", suffix())
}

/// Creates a namespace named `<prefix>-<unique suffix>` with `labels`; returns its name.
pub async fn fresh_namespace(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> String {
    let prefix: String = prefix.chars().take(40).collect();
    let name = unique(prefix.trim_end_matches('-'));
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

/// Removes what a test created when it ends, passed or failed, with kubectl and
/// without waiting. Declare it before the operator processes a test starts, so
/// that they are stopped first.
#[derive(Default)]
pub struct Cleanup {
    /// TracingPolicies: deleted, then their finalizers dropped, since no operator
    /// may be left to run them. (A passing test deleted them already, finalizer run.)
    pub policies: Vec<String>,
    /// Run after the policies are gone and before the namespaces, output ignored:
    /// `helm uninstall`, deletes of cluster-scoped objects.
    pub commands: Vec<Command>,
    pub namespaces: Vec<String>,
}

impl Cleanup {
    pub fn new(policies: &[&str], namespaces: &[&str]) -> Cleanup {
        Cleanup {
            policies: policies.iter().map(|p| p.to_string()).collect(),
            commands: Vec::new(),
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let kubectl = |args: &[&str]| {
            let _ = kubectl().args(args).output();
        };
        for name in &self.policies {
            kubectl(&[
                "delete",
                "tracingpolicy",
                name,
                "--ignore-not-found",
                "--wait=false",
            ]);
            kubectl(&[
                "patch",
                "tracingpolicy",
                name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        for command in &mut self.commands {
            let _ = command.output();
        }
        for ns in &self.namespaces {
            kubectl(&[
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A plain, blocking HTTP/1.0 GET on 127.0.0.1 (so the body is never chunked):
/// status, lower-cased head and body.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("GET {path}: no end of the HTTP head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {path}: no HTTP status"))?;
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

/// The last 40 lines of the log at `path`, headed by `name`, to print when a test fails.
pub fn log_tail(name: &str, path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let mut tail: Vec<&str> = log.lines().rev().take(40).collect();
    tail.reverse();
    format!(
        "--- last lines of {name} ({}):\n{}",
        path.display(),
        tail.join("\n")
    )
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

/// What each counter gained from `before` to `after`; counters that did not move
/// are left out.
pub fn counter_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A benchmark's options: none outside `cargo bench` (printing `name: skipped
/// outside \`cargo bench\` <reason>`), else what `parse` makes of the arguments
/// (exit 2 when they are bad).
pub fn bench_options<O>(
    name: &str,
    reason: &str,
    parse: impl FnOnce(&[String]) -> anyhow::Result<O>,
) -> Option<O> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("{name}: skipped outside `cargo bench` {reason}");
        return None;
    }
    match parse(&args) {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::exit(2);
        }
    }
}

/// The value after a benchmark option `name`.
pub fn option_value(name: &str, value: Option<&String>) -> anyhow::Result<String> {
    value
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
}

/// The value after a benchmark option `name`, a positive number.
pub fn positive_option(name: &str, value: Option<&String>) -> anyhow::Result<usize> {
    let v = option_value(name, value)?;
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow::anyhow!("{name}: {v:?} is not a positive number"))
}

/// How a benchmark's `main` starts: [`bench_options`] (a testbed cluster and
/// minutes are why it is skipped, with `hint`), then a 2-worker runtime (exit 1
/// when it cannot start).
pub fn bench_start<O>(
    name: &str,
    hint: &str,
    parse: impl FnOnce(&[String]) -> anyhow::Result<O>,
) -> Option<(O, tokio::runtime::Runtime)> {
    let options = bench_options(
        name,
        &format!("(needs a testbed cluster and minutes); {hint}"),
        parse,
    )?;
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => Some((options, runtime)),
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}
