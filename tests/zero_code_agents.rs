//! Zero-code tracing with the real OpenTelemetry agents, as far as it goes
//! without the operator. Three services with no OpenTelemetry code
//! (`tests/zero_code/`: a Node.js gateway calls a Java auth, which calls a Python
//! worker) run from Pods laid out the way the operator's admission policy will lay
//! them out: the agent copied by an init container into the `emptyDir`
//! `otel-auto-instrumentation`, mounted at `/otel-auto-instrumentation`, and
//! switched on by `NODE_OPTIONS`, `JAVA_TOOL_OPTIONS` or `PYTHONPATH`, next to the
//! SDK env the operator already writes. kwok runs no containers, so each container
//! runs here as a local process with exactly the env the kubelet would give it
//! (`support::pod`), the mount path mapped to the agents `testbed/agents/build`
//! laid out, the collector's Service URL mapped to a real local collector, which
//! exports to a real Jaeger v2.
//!
//! Everything listens on 127.0.0.1 and every process is stopped at the end.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use support::jaeger::{Jaeger, JaegerSpan, JaegerTrace};
use support::pod::{PodProcess, Rewrites};
use support::{free_port, http_get, log_tail};

/// Where the operator mounts the agent volume.
const MOUNT: &str = "/otel-auto-instrumentation";
const VOLUME: &str = "otel-auto-instrumentation";
/// The collector Service the operator points every SDK at.
const COLLECTOR_ENDPOINT: &str = "http://caas-production-collector.observability.svc:4318";
const NODE: &str = "kwok-node-0";
/// The Java agent alone takes several seconds to start here (2 shared cores).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const TRACES_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the worker sleeps for a slow request.
const SLOW_MS: u64 = 300;

/// The two tests take turns: start-up times measured while the other test runs
/// its processes would be noise.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Node,
    Java,
    Python,
}

impl Language {
    /// The folder of `testbed/agents/build` the volume holds for this language.
    fn agent_folder(self) -> &'static str {
        match self {
            Language::Node => "nodejs",
            Language::Java => "java",
            Language::Python => "python",
        }
    }

    fn image(self) -> &'static str {
        match self {
            Language::Node => {
                "ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-nodejs:0.81.2"
            }
            Language::Java => {
                "ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-java:2.33.1"
            }
            Language::Python => {
                "ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-python:0.66b1"
            }
        }
    }
}

/// A workload of the chain.
struct Service {
    name: &'static str,
    language: Language,
    namespace: &'static str,
    version: &'static str,
    pod: &'static str,
}

const GATEWAY: Service = Service {
    name: "gateway",
    language: Language::Node,
    namespace: "caas-gateway",
    version: "2.4.1",
    pod: "gateway-7d9f8b6c4-x2x9q",
};
const AUTH: Service = Service {
    name: "auth",
    language: Language::Java,
    namespace: "caas-auth",
    version: "1.9.0",
    pod: "auth-5c6d7f9b8-k4m2p",
};
const WORKER: Service = Service {
    name: "worker",
    language: Language::Python,
    namespace: "caas-worker",
    version: "0.3.2",
    pod: "worker-6b8c9d7f5-p7r2s",
};
const SERVICES: [&Service; 3] = [&GATEWAY, &AUTH, &WORKER];

// ===========================================================================
// LEAD: the hand-written pods start here. They stand in for what the API server
// stores once the MutatingAdmissionPolicy has run. Replace `hand_written_pod` by
// `kubectl get pod -n <namespace> -l app.kubernetes.io/name=<service> -o json`
// of Deployments whose own container env is `user_env` below (PORT, NEXT_URL and
// the user's own NODE_OPTIONS / JAVA_TOOL_OPTIONS / PYTHONPATH), with
// `Layout::Agent` for a selected workload and `Layout::Plain` for one that is not.
// Everything after this block only takes a `Pod`; `check_agent_layout` then checks
// the operator's real output against the layout.
// ===========================================================================

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The agent injected: volume, init container, mount and env additions.
    Agent,
    /// The same workload without the agent: only the SDK env the operator
    /// already writes today.
    Plain,
}

/// The container's own env, as the user's Deployment has it.
fn user_env(svc: &Service, port: u16, next_url: Option<&str>) -> Vec<Value> {
    let mut env = vec![json!({"name": "PORT", "value": port.to_string()})];
    if let Some(url) = next_url {
        env.push(json!({"name": "NEXT_URL", "value": url}));
    }
    // Flags of the user's own, which the agent's must join, not replace.
    env.push(match svc.language {
        Language::Node => json!({"name": "NODE_OPTIONS", "value": "--max-http-header-size=16384"}),
        Language::Java => json!({"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx256m"}),
        Language::Python => json!({"name": "PYTHONPATH", "value": "/app/lib"}),
    });
    env
}

/// The SDK env the operator writes today (`docs/tracingpolicy.md`), in its order.
fn operator_env(svc: &Service) -> Vec<Value> {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let attributes = [
        format!("service.version={}", svc.version),
        "deployment.environment.name=production".to_string(),
        format!("service.namespace={}", svc.namespace),
        format!("k8s.namespace.name={}", svc.namespace),
        format!("k8s.deployment.name={}", svc.name),
        format!("k8s.container.name={}", svc.name),
        "k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME)".to_string(),
        "k8s.node.name=$(OTEL_RESOURCE_ATTRIBUTES_NODE_NAME)".to_string(),
    ]
    .join(",");
    vec![
        field("OTEL_RESOURCE_ATTRIBUTES_POD_NAME", "metadata.name"),
        field("OTEL_RESOURCE_ATTRIBUTES_NODE_NAME", "spec.nodeName"),
        value("OTEL_SERVICE_NAME", svc.name),
        value("OTEL_RESOURCE_ATTRIBUTES", &attributes),
        value("OTEL_EXPORTER_OTLP_ENDPOINT", COLLECTOR_ENDPOINT),
        value("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        value("OTEL_TRACES_EXPORTER", "otlp"),
        value("OTEL_PROPAGATORS", "tracecontext,baggage"),
        value("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        value("OTEL_TRACES_SAMPLER_ARG", "1"),
    ]
}

/// What the agent layout changes in the env: the user's own value joined with
/// the agent's, or the variable added.
fn inject_agent_env(svc: &Service, env: &mut Vec<Value>) {
    // Moves `name` to the end of the list with `join(<user's value>)`.
    fn set(env: &mut Vec<Value>, name: &str, join: impl Fn(Option<&str>) -> String) {
        let old = env
            .iter()
            .position(|e| e["name"] == name)
            .map(|i| env.remove(i));
        let value = join(old.as_ref().and_then(|e| e["value"].as_str()));
        env.push(json!({"name": name, "value": value}));
    }
    let flags = |user: Option<&str>, agent: String| match user {
        Some(u) if !u.is_empty() => format!("{u} {agent}"),
        _ => agent,
    };
    match svc.language {
        Language::Node => set(env, "NODE_OPTIONS", |u| {
            flags(u, format!("--require {MOUNT}/autoinstrumentation.js"))
        }),
        Language::Java => set(env, "JAVA_TOOL_OPTIONS", |u| {
            flags(u, format!("-javaagent:{MOUNT}/javaagent.jar"))
        }),
        Language::Python => {
            set(env, "PYTHONPATH", |u| {
                let user = u
                    .filter(|u| !u.is_empty())
                    .map(|u| format!("{u}:"))
                    .unwrap_or_default();
                format!("{MOUNT}/opentelemetry/instrumentation/auto_instrumentation:{user}{MOUNT}")
            });
            if !env
                .iter()
                .any(|e| e["name"] == "OTEL_EXPORTER_OTLP_PROTOCOL")
            {
                set(env, "OTEL_EXPORTER_OTLP_PROTOCOL", |_| {
                    "http/protobuf".into()
                });
            }
            set(env, "OTEL_TRACES_EXPORTER", |_| "otlp".into());
            set(env, "OTEL_METRICS_EXPORTER", |_| "none".into());
            set(env, "OTEL_LOGS_EXPORTER", |_| "none".into());
        }
    }
}

/// The Pod of `svc` as the API server would store it, listening on `port` and
/// calling `next_url`.
fn hand_written_pod(svc: &Service, layout: Layout, port: u16, next_url: Option<&str>) -> Pod {
    let mut env = user_env(svc, port, next_url);
    env.extend(operator_env(svc));
    let mut container = json!({
        "name": svc.name,
        "image": format!("registry.example/caas/{}:{}", svc.name, svc.version),
        "ports": [{"containerPort": port, "protocol": "TCP"}],
    });
    let mut spec = json!({
        "nodeName": NODE,
        "serviceAccountName": "default",
        "restartPolicy": "Always",
    });
    if layout == Layout::Agent {
        inject_agent_env(svc, &mut env);
        container["volumeMounts"] = json!([{"name": VOLUME, "mountPath": MOUNT, "readOnly": true}]);
        spec["volumes"] = json!([{"name": VOLUME, "emptyDir": {}}]);
        spec["initContainers"] = json!([{
            "name": "otel-agent",
            "image": svc.language.image(),
            "command": ["cp", "-r", "/autoinstrumentation/.", MOUNT],
            "volumeMounts": [{"name": VOLUME, "mountPath": MOUNT}],
        }]);
    }
    container["env"] = Value::Array(env);
    spec["containers"] = json!([container]);
    let name = match layout {
        Layout::Agent => svc.pod.to_string(),
        Layout::Plain => format!("{}-plain", svc.pod),
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": svc.namespace,
            "uid": format!("00000000-0000-4000-8000-{:012x}", port),
            "labels": {
                "app.kubernetes.io/name": svc.name,
                "app.kubernetes.io/version": svc.version,
            },
        },
        "spec": spec,
        "status": {"phase": "Pending"},
    }))
    .expect("hand-written pod")
}

// LEAD: the hand-written pods end here.
// ===========================================================================

/// The agent layout, checked on the pod itself: the container mounts the
/// `emptyDir` volume read-only at the mount path, an init container from the
/// language's autoinstrumentation image fills that volume, and the env switches
/// the agent on from the mount path.
fn check_agent_layout(pod: &Pod, svc: &Service) -> anyhow::Result<()> {
    let spec = pod.spec.as_ref().context("pod has no spec")?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == VOLUME)
        .with_context(|| format!("no volume {VOLUME}"))?;
    ensure!(
        volume.empty_dir.is_some(),
        "volume {VOLUME} is not an emptyDir"
    );
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == svc.name)
        .with_context(|| format!("no container {}", svc.name))?;
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == VOLUME)
        .with_context(|| format!("container {} does not mount {VOLUME}", svc.name))?;
    ensure!(mount.mount_path == MOUNT, "mounted at {}", mount.mount_path);
    ensure!(
        mount.read_only == Some(true),
        "{VOLUME} is not mounted read-only"
    );
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.volume_mounts.iter().flatten().any(|m| m.name == VOLUME))
        .context("no init container fills the agent volume")?;
    let image = init.image.as_deref().unwrap_or_default();
    let want = svc.language.image().split(':').next().unwrap_or_default();
    ensure!(
        image.starts_with(want),
        "init container image {image}, want {want}:<tag>"
    );
    let env: BTreeMap<&str, &str> = container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
        .collect();
    let (var, needle) = match svc.language {
        Language::Node => (
            "NODE_OPTIONS",
            format!("--require {MOUNT}/autoinstrumentation.js"),
        ),
        Language::Java => (
            "JAVA_TOOL_OPTIONS",
            format!("-javaagent:{MOUNT}/javaagent.jar"),
        ),
        Language::Python => (
            "PYTHONPATH",
            format!("{MOUNT}/opentelemetry/instrumentation/auto_instrumentation:"),
        ),
    };
    let value = env.get(var).with_context(|| format!("no {var}"))?;
    ensure!(value.contains(&needle), "{var}={value:?} lacks {needle:?}");
    if svc.language == Language::Python {
        ensure!(
            value.ends_with(&format!(":{MOUNT}")),
            "PYTHONPATH={value:?} does not end with the mount"
        );
        for (k, v) in [
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ] {
            ensure!(env.get(k) == Some(&v), "{k}={:?}, want {v}", env.get(k));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// What runs locally.

/// The built agents and services.
struct Local {
    /// `testbed/agents/build`'s folder: nodejs/, java/, python/.
    agents: PathBuf,
    /// `tests/zero_code/build`'s folder: worker-venv/, auth-classes/.
    apps: PathBuf,
}

impl Local {
    fn build() -> Local {
        let agents = support::testbed_binary("agents").expect("testbed/agents/build");
        let script = support::repo().join("tests/zero_code/build");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("tests/zero_code/build runs");
        assert!(
            out.status.success(),
            "tests/zero_code/build failed: {}",
            out.status
        );
        let apps = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .expect("tests/zero_code/build prints its folder");
        Local { agents, apps }
    }

    /// The local command of the container (the image's entrypoint).
    fn command(&self, svc: &Service) -> Vec<OsString> {
        let src = support::repo().join("tests/zero_code");
        match svc.language {
            Language::Node => vec!["node".into(), src.join("gateway/gateway.js").into()],
            Language::Java => vec![
                "java".into(),
                "-cp".into(),
                self.apps.join("auth-classes").into(),
                "Auth".into(),
            ],
            Language::Python => vec![
                self.apps.join("worker-venv/bin/python").into(),
                src.join("worker/worker.py").into(),
            ],
        }
    }

    /// The pod's view mapped onto this machine: the collector Service to
    /// `otlp_url`, the agent volume to this language's built agent.
    fn rewrites(&self, svc: &Service, otlp_url: &str) -> Rewrites {
        Rewrites {
            otlp_endpoints: BTreeMap::from([(
                COLLECTOR_ENDPOINT.to_string(),
                otlp_url.to_string(),
            )]),
            paths: BTreeMap::from([(
                MOUNT.to_string(),
                self.agents.join(svc.language.agent_folder()),
            )]),
        }
    }

    /// Starts the container of `svc` from `pod` and waits for its `READY` line.
    fn run(
        &self,
        svc: &Service,
        pod: &Pod,
        otlp_url: &str,
        dir: &Path,
        tag: &str,
    ) -> anyhow::Result<(PodProcess, Duration)> {
        let log = dir.join(format!("{}-{tag}.log", svc.name));
        let mut process = PodProcess::start(
            pod,
            svc.name,
            &self.command(svc),
            &self.rewrites(svc, otlp_url),
            &log,
        )?;
        let (at, _) = process.wait_for_line("READY ", READY_TIMEOUT)?;
        let ready = at - process.started;
        Ok((process, ready))
    }
}

/// A collector with one traces pipeline into Jaeger, killed when dropped.
struct Collector {
    child: Child,
    log: PathBuf,
    /// OTLP/HTTP receiver.
    http: u16,
}

impl Collector {
    fn start(dir: &Path, jaeger_otlp_grpc: u16) -> anyhow::Result<Collector> {
        let (http, health) = (free_port(), free_port());
        let config = format!(
            r#"receivers:
  otlp:
    protocols:
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
  batch: {{timeout: 200ms}}
exporters:
  otlp_grpc/jaeger:
    endpoint: "127.0.0.1:{jaeger_otlp_grpc}"
    tls: {{insecure: true}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  extensions: [health_check]
  telemetry:
    metrics: {{level: none}}
    logs: {{level: warn}}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp_grpc/jaeger]
"#
        );
        let path = dir.join("collector.yaml");
        std::fs::write(&path, config)?;
        let log = dir.join("collector.log");
        let child = Command::new(support::otelcol()?)
            .arg(format!("--config={}", path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the collector")?;
        let mut collector = Collector { child, log, http };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http_get(health, "/"), Ok((200, _, _))) {
            if let Some(status) = collector.child.try_wait()? {
                bail!(
                    "collector exited with {status}\n{}",
                    log_tail("collector", &collector.log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "collector not healthy within 60 s\n{}",
                    log_tail("collector", &collector.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(collector)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", log_tail("collector", &self.log));
        }
    }
}

/// The three services of one layout, each listening on a port of its own.
struct Chain {
    /// Kept running until the chain is dropped.
    _processes: Vec<PodProcess>,
    gateway_port: u16,
}

fn start_chain(local: &Local, layout: Layout, otlp_url: &str, dir: &Path) -> anyhow::Result<Chain> {
    let tag = match layout {
        Layout::Agent => "agent",
        Layout::Plain => "plain",
    };
    let (gateway_port, auth_port, worker_port) = (free_port(), free_port(), free_port());
    let pods = [
        (
            &WORKER,
            hand_written_pod(&WORKER, layout, worker_port, None),
        ),
        (
            &AUTH,
            hand_written_pod(
                &AUTH,
                layout,
                auth_port,
                Some(&format!("http://127.0.0.1:{worker_port}")),
            ),
        ),
        (
            &GATEWAY,
            hand_written_pod(
                &GATEWAY,
                layout,
                gateway_port,
                Some(&format!("http://127.0.0.1:{auth_port}")),
            ),
        ),
    ];
    let mut processes = Vec::new();
    for (svc, pod) in &pods {
        if layout == Layout::Agent {
            check_agent_layout(pod, svc)
                .with_context(|| format!("agent layout of {}", svc.name))?;
        }
        let (process, ready) = local.run(svc, pod, otlp_url, dir, tag)?;
        eprintln!(
            "{tag} {}: READY {:.2} s after start",
            svc.name,
            ready.as_secs_f64()
        );
        processes.push(process);
    }
    Ok(Chain {
        _processes: processes,
        gateway_port,
    })
}

/// One request through the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Fail,
    Slow,
}

impl Kind {
    fn query(self, n: usize) -> String {
        match self {
            Kind::Ok => format!("n={n}"),
            Kind::Fail => format!("n={n}&fail=1"),
            Kind::Slow => format!("n={n}&slow={SLOW_MS}"),
        }
    }
}

/// Sends each request (numbered from `first`) to the gateway and checks what
/// comes back: a failure in the worker is a failed request at the gateway.
fn drive(chain: &Chain, first: usize, kinds: &[Kind]) -> anyhow::Result<BTreeMap<usize, Kind>> {
    let mut sent = BTreeMap::new();
    for (i, kind) in kinds.iter().enumerate() {
        let n = first + i;
        let path = format!("/work?{}", kind.query(n));
        let start = Instant::now();
        let (status, _, body) = http_get(chain.gateway_port, &path)?;
        let took = start.elapsed();
        match kind {
            Kind::Fail => ensure!(status == 502, "GET {path}: {status} {body:?}, want 502"),
            _ => ensure!(
                status == 200 && body == "worked\n",
                "GET {path}: {status} {body:?}"
            ),
        }
        if *kind == Kind::Slow {
            ensure!(
                took >= Duration::from_millis(SLOW_MS),
                "GET {path} took {took:?}"
            );
        }
        sent.insert(n, *kind);
    }
    Ok(sent)
}

/// The request number a trace carries in its URLs (`?n=<n>`), if any.
fn request_number(trace: &JaegerTrace) -> Option<usize> {
    trace
        .spans
        .iter()
        .flat_map(|s| s.tags.values())
        .find_map(|v| {
            v.match_indices("n=").find_map(|(at, _)| {
                let starts = at == 0 || matches!(v.as_bytes()[at - 1], b'?' | b'&');
                let digits: String = v[at + 2..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                starts.then(|| digits.parse().ok()).flatten()
            })
        })
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

fn span_kind(span: &JaegerSpan) -> &str {
    span.tag("span.kind").unwrap_or_default()
}

/// The spans of `service` in `trace` of the given kind (`server`, `client`).
fn spans_of<'a>(trace: &'a JaegerTrace, service: &str, kind: &str) -> Vec<&'a JaegerSpan> {
    trace
        .spans
        .iter()
        .filter(|s| s.service == service && span_kind(s) == kind)
        .collect()
}

/// Checks one trace of a request through the agent chain.
fn check_trace(n: usize, kind: Kind, trace: &JaegerTrace) -> anyhow::Result<()> {
    let id = &trace.trace_id;
    let services: BTreeSet<String> = SERVICES.iter().map(|s| s.name.to_string()).collect();
    ensure!(
        trace.services() == services,
        "request {n} (trace {id}): services {:?}",
        trace.services()
    );

    // One root: the gateway's server span; each hop the child of the one before.
    let roots: Vec<&JaegerSpan> = trace
        .spans
        .iter()
        .filter(|s| s.parents.is_empty())
        .collect();
    ensure!(
        roots.len() == 1 && roots[0].service == "gateway" && span_kind(roots[0]) == "server",
        "request {n} (trace {id}): roots {:?}",
        roots
            .iter()
            .map(|s| (&s.service, &s.operation))
            .collect::<Vec<_>>()
    );
    for (child, parent) in [("auth", "gateway"), ("worker", "auth")] {
        let parent_ids: BTreeSet<&str> = trace
            .spans
            .iter()
            .filter(|s| s.service == parent)
            .map(|s| s.span_id.as_str())
            .collect();
        let servers = spans_of(trace, child, "server");
        ensure!(
            !servers.is_empty(),
            "request {n} (trace {id}): no {child} server span"
        );
        for span in servers {
            ensure!(
                span.parents.iter().any(|p| parent_ids.contains(p.as_str())),
                "request {n} (trace {id}): {child} server span {} is not a child of a {parent} span",
                span.span_id
            );
        }
    }

    // Each service reports the identity its pod's env gives it.
    for svc in SERVICES {
        let tags = &trace.process_tags[svc.name];
        for (key, want) in [
            ("service.name", svc.name),
            ("k8s.namespace.name", svc.namespace),
            ("k8s.pod.name", svc.pod),
            ("k8s.node.name", NODE),
            ("service.version", svc.version),
        ] {
            // Jaeger holds service.name as the process's service name, not a tag.
            let got = if key == "service.name" {
                Some(svc.name)
            } else {
                tags.get(key).map(String::as_str)
            };
            ensure!(
                got == Some(want),
                "request {n} (trace {id}) {}: {key}={got:?}, want {want}",
                svc.name
            );
        }
    }

    // An error in the worker: its span, and the failed requests up the chain.
    let error_of = |service: &str| {
        spans_of(trace, service, "server")
            .iter()
            .any(|s| s.is_error())
    };
    match kind {
        Kind::Fail => {
            for service in ["worker", "auth", "gateway"] {
                ensure!(
                    error_of(service),
                    "request {n} (trace {id}): no error on the {service} server span"
                );
            }
        }
        Kind::Ok | Kind::Slow => {
            let errors: Vec<_> = trace
                .spans
                .iter()
                .filter(|s| s.is_error())
                .map(|s| &s.service)
                .collect();
            ensure!(
                errors.is_empty(),
                "request {n} (trace {id}): error spans in {errors:?}"
            );
        }
    }
    Ok(())
}

/// The gateway's traces by request number, once every request in `sent` has a
/// trace with at least one server and one client span per hop (spans of the
/// three services arrive separately).
fn complete_traces(
    jaeger: &Jaeger,
    since_us: u128,
    sent: &BTreeMap<usize, Kind>,
) -> anyhow::Result<BTreeMap<usize, JaegerTrace>> {
    let deadline = Instant::now() + TRACES_TIMEOUT;
    loop {
        let mut by_number = BTreeMap::new();
        for trace in jaeger.traces("gateway", since_us)? {
            if let Some(n) = request_number(&trace) {
                by_number.insert(n, trace);
            }
        }
        let complete = |t: &JaegerTrace| {
            ["gateway", "auth"].iter().all(|s| {
                !spans_of(t, s, "server").is_empty() && !spans_of(t, s, "client").is_empty()
            }) && !spans_of(t, "worker", "server").is_empty()
        };
        let missing: Vec<usize> = sent
            .keys()
            .filter(|n| !by_number.get(n).is_some_and(complete))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(by_number);
        }
        if Instant::now() > deadline {
            bail!(
                "after {TRACES_TIMEOUT:?}, Jaeger has no complete trace for requests {missing:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn real_agents_trace_the_chain_from_the_pod_layout_alone() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let local = Local::build();
    let scratch = support::Scratch::new("zero-code-agents").expect("scratch dir");
    let dir = scratch.path();
    let since_us = now_us() - 60_000_000;
    let jaeger = Jaeger::start(dir).expect("Jaeger");
    let collector = Collector::start(dir, jaeger.otlp_grpc).expect("collector");

    // Without the agent: the same services, the same SDK env, wired to the same
    // collector. They work, errors included, and (checked at the end) send nothing.
    let plain = start_chain(&local, Layout::Plain, &collector.url(), dir).expect("plain chain");
    let plain_sent =
        drive(&plain, 1000, &[Kind::Ok, Kind::Fail, Kind::Slow, Kind::Ok]).expect("plain requests");
    let plain_done = Instant::now();

    // With the agent.
    let traced = start_chain(&local, Layout::Agent, &collector.url(), dir).expect("agent chain");
    let kinds = [
        Kind::Ok,
        Kind::Ok,
        Kind::Fail,
        Kind::Ok,
        Kind::Slow,
        Kind::Fail,
        Kind::Ok,
    ];
    let sent = drive(&traced, 0, &kinds).expect("requests through the agent chain");
    let traces = complete_traces(&jaeger, since_us, &sent).expect("traces in Jaeger");
    for (n, kind) in &sent {
        check_trace(*n, *kind, &traces[n]).expect("trace of a request");
    }
    eprintln!(
        "{} requests, {} traces in Jaeger, each with spans of gateway (Node.js), auth (Java) and worker (Python); {} with error spans",
        sent.len(),
        traces.len(),
        sent.values().filter(|k| **k == Kind::Fail).count()
    );

    // Nothing from the processes without the agent. The agent chain's spans,
    // sent after theirs through the same collector, have all arrived; the wait
    // covers the longest an SDK would hold a span (the 5 s default batch delay).
    while plain_done.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let all: BTreeMap<String, JaegerTrace> = SERVICES
        .iter()
        .flat_map(|s| jaeger.traces(s.name, since_us).expect("Jaeger traces"))
        .map(|t| (t.trace_id.clone(), t))
        .collect();
    let plain_numbers: Vec<usize> = all
        .values()
        .filter_map(request_number)
        .filter(|n| plain_sent.contains_key(n))
        .collect();
    assert!(
        plain_numbers.is_empty(),
        "requests {plain_numbers:?} through the chain without agent were traced"
    );
    let plain_pods: Vec<&String> = all
        .values()
        .flat_map(|t| t.process_tags.values())
        .filter_map(|tags| tags.get("k8s.pod.name"))
        .filter(|p| p.ends_with("-plain"))
        .collect();
    assert!(
        plain_pods.is_empty(),
        "pods without agent sent spans: {plain_pods:?}"
    );
    let extra: Vec<&String> = all
        .keys()
        .filter(|id| !traces.values().any(|t| &t.trace_id == *id))
        .collect();
    assert!(
        extra.is_empty(),
        "traces that no request of the agent chain made: {extra:?}"
    );
    let mut services = jaeger.services().expect("Jaeger services");
    services.sort();
    assert_eq!(
        services,
        ["auth", "gateway", "worker"],
        "services in Jaeger"
    );

    drop((plain, traced, collector, jaeger));
}

// ---------------------------------------------------------------------------
// Start-up cost.

/// An OTLP/HTTP endpoint that notes when each trace export arrives, and answers
/// `GET /work` for the services it stands in front of.
struct OtlpRecorder {
    port: u16,
    posts: Arc<Mutex<Vec<Instant>>>,
    _runtime: tokio::runtime::Runtime,
}

impl OtlpRecorder {
    fn start() -> anyhow::Result<OtlpRecorder> {
        use axum::routing::{get, post};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let noted = posts.clone();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(move || {
                    if let Ok(mut p) = noted.lock() {
                        p.push(Instant::now());
                    }
                    // An empty ExportTraceServiceResponse.
                    async {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    }
                }),
            )
            .route("/work", get(|| async { "worked\n" }));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(OtlpRecorder {
            port,
            posts,
            _runtime: runtime,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The first trace export after `since`.
    fn first_after(&self, since: Instant) -> Option<Instant> {
        self.posts.lock().ok()?.iter().copied().find(|t| *t > since)
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Seconds, two decimals.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// For each language, 5 starts without the agent (start to `READY`) and 5 with
/// it (start to `READY`, and to the first span exported after one request). The
/// pods with the agent get `OTEL_BSP_SCHEDULE_DELAY=50` of the user's own, so
/// that the SDK's 5 s batch delay does not hide the start-up.
#[test]
fn agent_start_up_cost() {
    const RUNS: usize = 5;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let local = Local::build();
    let scratch = support::Scratch::new("zero-code-start-up").expect("scratch dir");
    let dir = scratch.path();
    let recorder = OtlpRecorder::start().expect("OTLP recorder");
    let mut rows = Vec::new();
    for svc in SERVICES {
        let next = (svc.language != Language::Python).then(|| recorder.url());
        let mut plain_ready = Vec::new();
        let mut agent_ready = Vec::new();
        let mut agent_span = Vec::new();
        for run in 0..RUNS {
            let port = free_port();
            let pod = hand_written_pod(svc, Layout::Plain, port, next.as_deref());
            let (process, ready) = local
                .run(svc, &pod, &recorder.url(), dir, &format!("plain-{run}"))
                .expect("service without agent");
            plain_ready.push(ready);
            drop(process);

            let port = free_port();
            let mut pod = hand_written_pod(svc, Layout::Agent, port, next.as_deref());
            if let Some(c) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
                c.env.get_or_insert_with(Vec::new).insert(
                    0,
                    serde_json::from_value(
                        json!({"name": "OTEL_BSP_SCHEDULE_DELAY", "value": "50"}),
                    )
                    .expect("env var"),
                );
            }
            let (process, ready) = local
                .run(svc, &pod, &recorder.url(), dir, &format!("agent-{run}"))
                .expect("service with agent");
            let (status, _, body) = http_get(port, "/work").expect("GET /work");
            assert_eq!(status, 200, "{} with agent: GET /work: {body}", svc.name);
            let deadline = Instant::now() + TRACES_TIMEOUT;
            let exported = loop {
                if let Some(at) = recorder.first_after(process.started) {
                    break at;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} with agent exported no span within {TRACES_TIMEOUT:?}\n{}",
                    svc.name,
                    log_tail(svc.name, process.log_path())
                );
                std::thread::sleep(Duration::from_millis(5));
            };
            agent_ready.push(ready);
            agent_span.push(exported - process.started);
            drop(process);
        }
        let (plain, ready, span) = (median(plain_ready), median(agent_ready), median(agent_span));
        rows.push(format!(
            "{:<8} {:<21} {:<18} {:<21} +{}",
            format!("{:?}", svc.language),
            secs(plain),
            secs(ready),
            secs(span),
            secs(span.saturating_sub(plain))
        ));
    }
    eprintln!(
        "zero-code start-up, median of {RUNS} (process start to READY without the agent; with it, to READY and to the first span exported):\n{:<8} {:<21} {:<18} {:<21} added\n{}",
        "language",
        "READY without agent",
        "READY with agent",
        "first span exported",
        rows.join("\n")
    );
}

/// The kubelet stops a container with SIGTERM. The Node.js entry flushes the
/// spans still in the SDK's batch, then lets the signal end the process, as it
/// would end without the agent (an entry that only shuts the SDK down keeps a
/// plain app alive until SIGKILL, and one that exits at once loses the batch).
#[test]
fn on_sigterm_the_node_agent_flushes_then_the_signal_ends_the_process() {
    use std::os::unix::process::ExitStatusExt as _;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let local = Local::build();
    let scratch = support::Scratch::new("zero-code-sigterm").expect("scratch dir");
    let recorder = OtlpRecorder::start().expect("OTLP recorder");
    let port = free_port();
    let pod = hand_written_pod(&GATEWAY, Layout::Agent, port, Some(&recorder.url()));
    let (mut gateway, _) = local
        .run(&GATEWAY, &pod, &recorder.url(), scratch.path(), "sigterm")
        .expect("gateway with agent");
    let (status, _, body) = http_get(port, "/work?n=1").expect("GET /work");
    assert_eq!(status, 200, "GET /work: {body}");
    // The request's spans wait in the batch (5 s by default): stop it now.
    let asked = Instant::now();
    gateway.terminate().expect("SIGTERM");
    let exit = gateway
        .wait_exit(Duration::from_secs(30))
        .expect("the gateway exits after SIGTERM");
    let exited = Instant::now();
    assert_eq!(exit.signal(), Some(15), "not ended by SIGTERM: {exit:?}");
    let flushed = recorder.first_after(asked);
    assert!(
        flushed.is_some_and(|at| at <= exited),
        "the last request's spans were not exported before the exit"
    );
    eprintln!(
        "gateway: spans flushed and process ended {:.2} s after SIGTERM",
        (exited - asked).as_secs_f64()
    );
}
