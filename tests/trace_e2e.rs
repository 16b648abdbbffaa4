//! End to end with real traces, no pods: does the collector keep what the policy
//! promises? Four services, configured only through the environment the planner
//! computes for their workloads (the endpoint rewritten to the local collector),
//! send traces through a real collector running the generated config into a
//! real Jaeger v2; the test then asks Jaeger's query API what arrived.
//!
//! ```text
//!   test ──▶ gateway ─┐                      gateway, scheduler, auth: NodeSDK 0.223
//!                     ├──▶ auth ──▶ worker    (testbed/node-sdk, HTTP instrumentation)
//!   test ──▶ scheduler┘                      worker: this binary, the Rust SDK
//! ```
//!
//! Only gateway and scheduler start traces; scheduler is listed in
//! `sampling.services` with ratio 1.0 (auth too, which never starts a trace, so
//! its entry must change nothing). Of 3,000 requests 20 % enter through the
//! scheduler, 5 % fail in the worker (below the root, which answers 200) and
//! 5 % are slow in the worker. The test sends `baggage: tenant=caas`, which the
//! SDKs carry down to the worker.
//!
//! The same traffic runs twice: with the policy's default head (every trace
//! recorded) the assertions are the policy's promises; with `head.ratio: 0.1`
//! they are what that costs. Both print the collector's load.
//!
//! Everything listens on 127.0.0.1 only, and every process is stopped at the end.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::EnvVar;
use serde_json::Value;
use support::http_get;
use support::jaeger::{Jaeger, JaegerTrace};
use tracing_operator::api::{TracingPolicySpec, WorkloadKind};
use tracing_operator::plan::collector::{
    CollectorInput, HeaderSecretKeys, Tier, metrics, plan_collector,
};
use tracing_operator::plan::{
    Container, Injection, NamespaceView, PolicyView, WorkloadId, collector_namespace, env,
    injection,
};

const POLICY: &str = "caas-production";
const OPERATOR_NAMESPACE: &str = "tracing-operator";
/// The example policy's sampling: every error and slow trace, every trace the
/// scheduler starts, 10 % of the rest.
const POLICY_SPEC: &str = r#"
service:
  environment: production
  resourceAttributes: {team: platform}
  namespaceLabels: [caas.io/tenant]
propagators: [tracecontext, baggage]
sampling:
  ratio: 0.1
  services: [{name: scheduler, ratio: 1.0}, {name: auth, ratio: 1.0}]
  tail: {keepErrors: true, slowerThan: 300ms}
collector: {placement: Central, namespace: observability}
backends:
  - {name: jaeger, type: jaeger, endpoint: "http://jaeger-collector.observability.svc:4317", protocol: grpc}
"#;
const TRACES: usize = 3000;
/// How long a slow request takes in the worker; above `slowerThan`.
const SLOW: Duration = Duration::from_millis(400);
/// Fake downward-API values, as the kubelet would fill them.
const NODE: &str = "kwok-node-0";
const GATEWAY_ENDPOINT: &str = "http://caas-production-collector.observability.svc:4318/v1/traces";

/// Which service request `i` enters through, and what happens to it; by index,
/// so the counts are exact: every 5th enters through the scheduler, and of each
/// 100 consecutive requests 5 fail and 5 are slow, spread over both entries.
fn request(i: usize) -> (&'static str, &'static str) {
    let entry = if i.is_multiple_of(5) {
        "scheduler"
    } else {
        "gateway"
    };
    let kind = match (i / 5) % 20 {
        1 => "error",
        2 => "slow",
        _ => "normal",
    };
    (entry, kind)
}

// ---------------------------------------------------------------------------
// The environment of a workload's container, from the planner.

/// A workload the policy selects: one Deployment with one container.
struct Workload {
    service: &'static str,
    namespace: &'static str,
    image: &'static str,
    version: &'static str,
    pod: &'static str,
}

const GATEWAY: Workload = Workload {
    service: "gateway",
    namespace: "caas-gateway",
    image: "registry.local:5000/caas/gateway:2.4.1",
    version: "2.4.1",
    pod: "gateway-7d9f8b6c4-x2x9q",
};
const SCHEDULER: Workload = Workload {
    service: "scheduler",
    namespace: "caas-gateway",
    image: "registry.local:5000/caas/scheduler:0.8.0",
    version: "0.8.0",
    pod: "scheduler-6b8c9d7f5-q7w2e",
};
const AUTH: Workload = Workload {
    service: "auth",
    namespace: "caas-auth",
    image: "registry.local:5000/caas/auth:1.9.0",
    version: "1.9.0",
    pod: "auth-5c6d7f9b8-k4m2p",
};
const WORKER: Workload = Workload {
    service: "worker",
    namespace: "caas-auth",
    image: "registry.local:5000/caas/worker:3.1.4",
    version: "3.1.4",
    pod: "worker-58f9c6d4b-n8v3r",
};

/// The env the operator writes into the workload's container (pod-template
/// injection, with the image tag as the version as admission would read it).
fn planned_env(spec: &TracingPolicySpec, w: &Workload) -> Vec<EnvVar> {
    let mut spec = spec.clone();
    spec.service.version_from_image_tag = true;
    let policy = PolicyView {
        name: POLICY.into(),
        spec,
        created_unix: 0,
        deleting: false,
    };
    let namespace = NamespaceView {
        name: w.namespace.into(),
        labels: BTreeMap::from([("caas.io/tenant".to_string(), "caas".to_string())]),
    };
    let container = Container {
        name: "app".into(),
        image: Some(w.image.into()),
        ..Container::default()
    };
    let workload = tracing_operator::workload::Workload {
        id: WorkloadId::new(w.namespace, WorkloadKind::Deployment, w.service),
        labels: Default::default(),
        annotations: Default::default(),
        template: tracing_operator::workload::Template {
            containers: vec![container.clone()],
            ..Default::default()
        },
        rollout: Default::default(),
    };
    let plan = env::plan_workload(
        &policy,
        OPERATOR_NAMESPACE,
        Some(&namespace),
        &workload,
        [&container],
        Injection::PodTemplate,
    );
    injection::container_env(&plan, &container)
}

/// What the kubelet makes of an env list: downward-API fields filled in, then
/// `$(VAR)` references to earlier entries expanded, in order.
fn kubelet_env(env: &[EnvVar], pod: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in env {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => {
                let mut v = v.clone();
                for (name, val) in &out {
                    v = v.replace(&format!("$({name})"), val);
                }
                v
            }
            (None, Some(src)) => match src.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod.to_string(),
                Some("spec.nodeName") => NODE.to_string(),
                other => bail!("{}: unsupported source {other:?}", e.name),
            },
            (None, None) => String::new(),
        };
        out.push((e.name.clone(), value));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The worker (this binary, run with TRACE_E2E_ROLE=worker).

/// Runs as the worker when started by the test; does nothing otherwise.
#[test]
#[ignore = "the worker process of trace_e2e; the test starts it itself"]
fn service_process() -> anyhow::Result<()> {
    match std::env::var("TRACE_E2E_ROLE").as_deref() {
        Ok("worker") => worker::run(),
        _ => Ok(()),
    }
}

mod worker {
    use super::*;
    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
    use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
    use opentelemetry::{KeyValue, global};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// The SDK set up from the environment only: endpoint, protocol, service
    /// name, resource attributes and sampler are read by the SDK itself; the
    /// propagators from `OTEL_PROPAGATORS` here (the Rust SDK does not read it).
    fn init() -> anyhow::Result<SdkTracerProvider> {
        ensure!(
            std::env::var("OTEL_TRACES_EXPORTER").as_deref() == Ok("otlp"),
            "OTEL_TRACES_EXPORTER must be otlp"
        );
        let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
        for name in std::env::var("OTEL_PROPAGATORS")?.split(',') {
            match name.trim() {
                "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
                "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
                other => bail!("propagator {other} is not wired into this test program"),
            }
        }
        global::set_text_map_propagator(TextMapCompositePropagator::new(propagators));
        let exporter = opentelemetry_otlp::SpanExporter::builder().build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().build())
            .build();
        global::set_tracer_provider(provider.clone());
        Ok(provider)
    }

    /// An HTTP/1.1 server, one request per connection: `GET /work?kind=K`
    /// answers 500 for `error` (span status ERROR) and sleeps for `slow`;
    /// `GET /flush` flushes the span processor.
    pub fn run() -> anyhow::Result<()> {
        let provider = init()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        println!("E2E listening {}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        for conn in listener.incoming() {
            let conn = conn?;
            let provider = provider.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut reader = BufReader::new(conn.try_clone()?);
                let mut request_line = String::new();
                reader.read_line(&mut request_line)?;
                let mut headers = HashMap::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/");
                let status = if path == "/flush" {
                    provider.force_flush()?;
                    200
                } else {
                    let kind = path.split("kind=").nth(1).unwrap_or("normal");
                    let parent = global::get_text_map_propagator(|p| p.extract(&headers));
                    let tracer = global::tracer("worker");
                    let mut span = tracer
                        .span_builder("GET /work")
                        .with_kind(SpanKind::Server)
                        .start_with_context(&tracer, &parent);
                    let tenant = parent.baggage().get("tenant").map(|v| v.to_string());
                    span.set_attribute(KeyValue::new(
                        "tenant",
                        tenant.unwrap_or_else(|| "none".into()),
                    ));
                    let status = match kind {
                        "slow" => {
                            std::thread::sleep(SLOW);
                            200
                        }
                        "error" => {
                            span.set_status(Status::error("work failed"));
                            500
                        }
                        _ => 200,
                    };
                    span.end();
                    status
                };
                let mut out = conn;
                write!(
                    out,
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                )?;
                Ok(())
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Processes.

/// A child process killed (and reaped) when dropped; its log printed if the
/// test is failing.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", support::log_tail(self.name, &self.log));
        }
    }
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let err = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// Peak resident memory, from /proc.
    fn peak_rss(&self) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .map(|v| v.trim().to_string())
    }

    /// SIGTERM, then wait for the exit: a Node service flushes its SDK first.
    fn terminate(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(kill.success(), "kill -TERM {pid}: {kill}");
        let start = Instant::now();
        while self.child.try_wait()?.is_none() {
            ensure!(
                start.elapsed() < timeout,
                "{} did not exit within {timeout:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// The lines a child prints, read on a thread so that waiting on them can time
/// out; the lines are also copied into `log`.
fn lines_of(out: ChildStdout, log: PathBuf) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut copy = std::fs::File::create(log).ok();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(f) = copy.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The port a service prints in its `E2E listening <port>` line. libtest
/// prints `test service_process ... ` before the worker's first line, so the
/// marker may start mid-line.
fn listening_port(lines: &mpsc::Receiver<String>, name: &str) -> anyhow::Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .with_context(|| format!("{name} printed no `E2E listening` line"))?;
        if let Some(at) = line.find("E2E listening ") {
            return Ok(line[at + "E2E listening ".len()..].trim().parse()?);
        }
    }
}

/// A plain HTTP/1.0 GET with a header; status and body.
fn get(port: u16, path: &str, header: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{header}\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("no end of the HTTP head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_string()))
}

/// The collector config the operator generates, bound to 127.0.0.1 ports and
/// exporting to the local Jaeger instead of the in-cluster Service.
fn local_collector_config(
    spec: &TracingPolicySpec,
    ports: &CollectorPorts,
    jaeger_otlp: u16,
) -> anyhow::Result<String> {
    let namespace = collector_namespace(spec, OPERATOR_NAMESPACE, GATEWAY.namespace);
    // One process stands in for the collector: with tail sampling, a sampler
    // (the tier that decides and exports; the routers only pass traces on).
    let tier = if tracing_operator::plan::sampling::tail_decides(spec) {
        Tier::Sampler
    } else {
        Tier::Single
    };
    let plan = plan_collector(&CollectorInput {
        policy: POLICY,
        spec,
        tier,
        namespace: &namespace,
        sampler_namespace: &namespace,
        header_secret_keys: &HeaderSecretKeys::new(),
        owner: None,
    })?;
    let bind = support::collector::LocalBind {
        host: "127.0.0.1",
        grpc: ports.grpc,
        http: ports.http,
        health: ports.health,
        metrics: ports.metrics,
    };
    support::collector::local_config(&plan.config_yaml, &bind, jaeger_otlp)
}

struct CollectorPorts {
    grpc: u16,
    http: u16,
    health: u16,
    metrics: u16,
}

fn collector_stats(ports: &CollectorPorts) -> anyhow::Result<metrics::TailStats> {
    let (status, _, body) = http_get(ports.metrics, "/metrics")?;
    ensure!(status == 200, "GET /metrics: {status}");
    Ok(metrics::parse(&body))
}

/// The traces Jaeger holds that an entry service took part in, by trace id.
fn entry_traces(jaeger: &Jaeger, start_us: u128) -> anyhow::Result<BTreeMap<u128, JaegerTrace>> {
    let mut out = BTreeMap::new();
    for service in ["gateway", "scheduler"] {
        for t in jaeger.traces(service, start_us)? {
            out.insert(u128::from_str_radix(&t.trace_id, 16)?, t);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// One run of the traffic.

/// A request the test sent: its entry service and what happened to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Sent {
    entry: &'static str,
    kind: &'static str,
}

struct Run {
    sent: BTreeMap<u128, Sent>,
    kept: BTreeMap<u128, JaegerTrace>,
    /// Spans the collector received, and over how long they were sent.
    spans_received: u64,
    sending: Duration,
    /// Collector CPU seconds over the run, and its peak RSS.
    collector_cpu: f64,
    collector_peak_rss: String,
    collector: metrics::TailStats,
    /// What the Node services printed (stdout and stderr), by service.
    node_logs: BTreeMap<&'static str, String>,
}

impl Run {
    fn count(&self, entry: Option<&str>, kind: &str, kept: bool) -> usize {
        self.sent
            .iter()
            .filter(|(id, s)| {
                entry.is_none_or(|e| s.entry == e)
                    && s.kind == kind
                    && (!kept || self.kept.contains_key(id))
            })
            .count()
    }

    /// `kept/sent` of a group, and the share.
    fn share(&self, entry: Option<&str>, kind: &str) -> (usize, usize, f64) {
        let (k, n) = (
            self.count(entry, kind, true),
            self.count(entry, kind, false),
        );
        (k, n, k as f64 / n.max(1) as f64)
    }

    fn print(&self, label: &str) {
        let secs = self.sending.as_secs_f64();
        eprintln!(
            "[{label}] collector: {} spans received in {secs:.1} s = {:.0} spans/s; CPU {:.2} s ({:.0} % of one core); peak RSS {}; refused {}, dropped too early {}, send failed {}",
            self.spans_received,
            self.spans_received as f64 / secs,
            self.collector_cpu,
            100.0 * self.collector_cpu / secs,
            self.collector_peak_rss,
            self.collector.spans_refused,
            self.collector.traces_dropped_too_early,
            self.collector.spans_send_failed,
        );
        for (entry, kind) in [
            (None, "error"),
            (None, "slow"),
            (Some("scheduler"), "normal"),
            (Some("gateway"), "normal"),
            (Some("gateway"), "error"),
            (Some("scheduler"), "error"),
        ] {
            let (k, n, share) = self.share(entry, kind);
            eprintln!(
                "[{label}] kept {kind:>6} traces rooted in {:<9}: {k:>4}/{n:<4} = {share:.3}",
                entry.unwrap_or("either")
            );
        }
    }
}

/// Starts Jaeger, the collector and the four services for `spec`, sends the
/// traffic, flushes, waits for the tail decisions and reads what Jaeger kept.
fn run(spec: &TracingPolicySpec, dir: &Path) -> anyhow::Result<Run> {
    let otelcol = support::otelcol()?;
    let node_modules = support::testbed_binary("node-sdk")?;
    let node_sdk = support::repo().join("testbed").join("node-sdk");
    let start_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros()
        - 60_000_000;

    let jaeger = Jaeger::start(dir)?;
    let ports = CollectorPorts {
        grpc: support::free_port(),
        http: support::free_port(),
        health: support::free_port(),
        metrics: support::free_port(),
    };
    std::fs::write(
        dir.join("collector.yaml"),
        local_collector_config(spec, &ports, jaeger.otlp_grpc)?,
    )?;
    let collector = Proc::spawn(
        "collector",
        Command::new(&otelcol)
            .arg(format!("--config={}", dir.join("collector.yaml").display()))
            .stdout(Stdio::null()),
        &dir.join("collector.log"),
    )?;
    let start = Instant::now();
    while !http_get(ports.health, "/").is_ok_and(|(s, _, _)| s == 200) {
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "collector not healthy\n{}",
            support::log_tail("collector", &dir.join("collector.log"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Each service gets its workload's planned env and nothing else of ours.
    let service_env = |w: &Workload| -> anyhow::Result<Vec<(String, String)>> {
        let mut env = kubelet_env(&planned_env(spec, w), w.pod)?;
        for (name, value) in env.iter_mut() {
            if name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" {
                ensure!(
                    value.as_str() == GATEWAY_ENDPOINT,
                    "planned endpoint {value}"
                );
                *value = format!("http://127.0.0.1:{}/v1/traces", ports.http);
            }
        }
        Ok(env)
    };
    // Tools' own variables (not OTEL_*): where node is, where the SDK is.
    let path = std::env::var("PATH").unwrap_or_default();
    let node = |role: &str, w: &Workload, next: u16| -> anyhow::Result<Command> {
        let mut cmd = Command::new("node");
        cmd.arg("--require")
            .arg(node_sdk.join("register.js"))
            .arg(node_sdk.join("service.js"))
            .arg(role)
            .env_clear()
            .envs(service_env(w)?)
            .env("PATH", &path)
            .env("NODE_PATH", &node_modules)
            .env("E2E_NEXT", format!("127.0.0.1:{next}"))
            .stdout(Stdio::piped());
        Ok(cmd)
    };

    let mut worker_cmd = Command::new(std::env::current_exe()?);
    worker_cmd
        .args([
            "--exact",
            "service_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .envs(service_env(&WORKER)?)
        .env("TRACE_E2E_ROLE", "worker")
        .stdout(Stdio::piped());
    let mut worker = Proc::spawn("worker", &mut worker_cmd, &dir.join("worker.log"))?;
    let worker_port = listening_port(
        &lines_of(
            worker.child.stdout.take().context("worker stdout")?,
            dir.join("worker.out"),
        ),
        "worker",
    )?;
    let mut node_procs: Vec<(&'static str, Proc)> = Vec::new();
    let mut start_node = |name: &'static str, role: &str, w: &Workload, next: u16| {
        let mut proc = Proc::spawn(
            name,
            &mut node(role, w, next)?,
            &dir.join(format!("{name}.err")),
        )?;
        let out = proc.child.stdout.take().context("stdout")?;
        let port = listening_port(&lines_of(out, dir.join(format!("{name}.out"))), name)?;
        node_procs.push((name, proc));
        anyhow::Ok(port)
    };
    let auth_port = start_node("auth", "auth", &AUTH, worker_port)?;
    let gateway_port = start_node("gateway", "entry", &GATEWAY, auth_port)?;
    let scheduler_port = start_node("scheduler", "entry", &SCHEDULER, auth_port)?;
    let before = collector_stats(&ports)?;

    // The traffic: 8 clients, each request its own trace, started by its entry.
    let sent_at = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<(u128, Sent)>> {
                let mut sent = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= TRACES {
                        return Ok(sent);
                    }
                    let (entry, kind) = request(i);
                    let port = if entry == "gateway" {
                        gateway_port
                    } else {
                        scheduler_port
                    };
                    let (status, body) =
                        get(port, &format!("/?kind={kind}"), "baggage: tenant=caas")?;
                    ensure!(status == 200, "{entry} answered {status}: {body}");
                    let reply: Value = serde_json::from_str(&body)?;
                    let id = reply["trace"].as_str().context("no trace id")?;
                    sent.push((u128::from_str_radix(id, 16)?, Sent { entry, kind }));
                }
            })
        })
        .collect();
    let mut sent = BTreeMap::new();
    for c in clients {
        sent.extend(c.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    ensure!(sent.len() == TRACES, "{} distinct traces", sent.len());
    // Flush: the Node services on SIGTERM (as in a pod), the worker on request.
    for (_, proc) in node_procs.iter_mut() {
        proc.terminate(Duration::from_secs(30))?;
    }
    let (status, _) = get(worker_port, "/flush", "x-flush: 1")?;
    ensure!(status == 200, "worker flush: {status}");
    let sending = sent_at.elapsed();

    // Tail decisions come after decision_wait (10 s); poll Jaeger until stable.
    std::thread::sleep(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(90);
    // What must arrive before the count is final: the scheduler's traces, and
    // with every trace recorded the errors and slow ones too.
    let head_all = spec.sampling.head.is_none();
    let must_keep = |s: &Sent| s.entry == "scheduler" || (head_all && s.kind != "normal");
    let mut kept = entry_traces(&jaeger, start_us)?;
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let again = entry_traces(&jaeger, start_us)?;
        let must = sent
            .iter()
            .filter(|(_, s)| must_keep(s))
            .all(|(id, _)| again.contains_key(id));
        let stable = again.len() == kept.len();
        kept = again;
        if (must && stable) || Instant::now() > deadline {
            break;
        }
    }
    let after = collector_stats(&ports)?;
    let node_logs = node_procs
        .iter()
        .map(|(name, _)| {
            let read = |ext: &str| {
                std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap_or_default()
            };
            (*name, format!("{}{}", read("out"), read("err")))
        })
        .collect();
    let run = Run {
        sent,
        kept,
        spans_received: after.spans_accepted - before.spans_accepted,
        sending,
        collector_cpu: after.cpu_seconds - before.cpu_seconds,
        collector_peak_rss: collector.peak_rss().unwrap_or_default(),
        collector: after,
        node_logs,
    };
    drop((node_procs, worker, collector, jaeger));
    Ok(run)
}

/// `k` of `n` is within 3 standard deviations of `n × p`.
fn within_3_sd(k: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 3.0 * sd
}

/// Every kept trace holds the whole request: one root span, in its entry
/// service, auth below it and the worker below auth (5 spans with the two
/// HTTP client spans), the planned resource attributes, and the baggage.
fn assert_complete(run: &Run) -> anyhow::Result<()> {
    for (id, trace) in &run.kept {
        let sent = run
            .sent
            .get(id)
            .with_context(|| format!("trace {id:032x} in Jaeger was not sent by the test"))?;
        let services = trace.services();
        let want: BTreeSet<String> = [sent.entry, "auth", "worker"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        ensure!(
            services == want && trace.spans.len() == 5,
            "trace {id:032x} ({sent:?}) is incomplete: services {services:?}, {} spans",
            trace.spans.len()
        );
        let roots: Vec<_> = trace
            .spans
            .iter()
            .filter(|s| s.parents.is_empty())
            .collect();
        ensure!(
            roots.len() == 1 && roots[0].service == sent.entry && !roots[0].is_error(),
            "trace {id:032x}: roots {:?}",
            roots.iter().map(|s| &s.service).collect::<Vec<_>>()
        );
        let auth_spans: BTreeSet<&str> = trace
            .spans
            .iter()
            .filter(|s| s.service == "auth")
            .map(|s| s.span_id.as_str())
            .collect();
        let work = trace
            .spans
            .iter()
            .find(|s| s.service == "worker")
            .context("worker span")?;
        ensure!(
            work.parents.iter().any(|p| auth_spans.contains(p.as_str())),
            "trace {id:032x}: the worker span is not a child of an auth span"
        );
        ensure!(
            work.tag("tenant") == Some("caas"),
            "trace {id:032x}: baggage tenant not propagated: {:?}",
            work.tag("tenant")
        );
        ensure!(
            work.is_error() == (sent.kind == "error"),
            "trace {id:032x} ({sent:?}): worker span error {}",
            work.is_error()
        );
        for w in [&GATEWAY, &SCHEDULER, &AUTH, &WORKER]
            .into_iter()
            .filter(|w| services.contains(w.service))
        {
            let tags = &trace.process_tags[w.service];
            let want = [
                ("service.version", w.version),
                ("deployment.environment.name", "production"),
                ("service.namespace", w.namespace),
                ("k8s.namespace.name", w.namespace),
                ("k8s.deployment.name", w.service),
                ("k8s.pod.name", w.pod),
                ("k8s.node.name", NODE),
                ("team", "platform"),
                ("k8s.namespace.label.caas.io/tenant", "caas"),
            ];
            for (key, value) in want {
                ensure!(
                    tags.get(key).map(String::as_str) == Some(value),
                    "trace {id:032x} {}: {key}={:?}, want {value}",
                    w.service,
                    tags.get(key)
                );
            }
        }
    }
    Ok(())
}

/// What an SDK logs when an export fails (NodeSDK: `metrics export failed
/// (OTLPExporterError: Not Found)` with the default OTLP metrics exporter).
fn assert_no_sdk_export_error(run: &Run) -> anyhow::Result<()> {
    for (name, log) in &run.node_logs {
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("failed") || l.contains("not found")
            })
            .collect();
        ensure!(bad.is_empty(), "{name} logged:\n{}", bad.join("\n"));
    }
    Ok(())
}

#[test]
fn tail_sampling_keeps_what_the_policy_promises() -> anyhow::Result<()> {
    let scratch = support::Scratch::new("trace-e2e")?;
    let spec: TracingPolicySpec = serde_saphyr::from_str(POLICY_SPEC)?;
    let ratio = spec.sampling.ratio;

    // The policy as written: every trace recorded, the collector decides.
    let dir = scratch.path().join("head-1");
    std::fs::create_dir_all(&dir)?;
    let full = run(&spec, &dir)?;
    full.print("head 1.0");
    assert_no_sdk_export_error(&full)?;
    assert_complete(&full)?;
    let (k, n, _) = full.share(None, "error");
    ensure!(k == n, "error traces kept {k}/{n}");
    let (k, n, _) = full.share(None, "slow");
    ensure!(k == n, "slow traces kept {k}/{n}");
    // Listed with 1.0: every trace the scheduler starts (3 sd of 1.0 is exact).
    let (k, n, _) = full.share(Some("scheduler"), "normal");
    ensure!(k == n, "scheduler-rooted traces kept {k}/{n}, want all");
    // The rest: sampling.ratio, although every one of them went through auth,
    // which is listed with 1.0 too.
    let (k, n, share) = full.share(Some("gateway"), "normal");
    ensure!(
        within_3_sd(k, n, ratio),
        "gateway-rooted traces kept {k}/{n} = {share:.3}, want {ratio} within 3 sd"
    );
    ensure!(
        full.collector.spans_lost() == 0 && full.collector.traces_dropped_too_early == 0,
        "the collector lost data: {:?}",
        full.collector
    );

    // The cost control: SDKs record 10 %; errors outside that are lost.
    let mut cheap_spec = spec.clone();
    cheap_spec.sampling.head = Some(tracing_operator::api::HeadSampling { ratio: 0.1 });
    let dir = scratch.path().join("head-0.1");
    std::fs::create_dir_all(&dir)?;
    let cheap = run(&cheap_spec, &dir)?;
    cheap.print("head 0.1");
    assert_no_sdk_export_error(&cheap)?;
    assert_complete(&cheap)?;
    for kind in ["error", "slow", "normal"] {
        // The scheduler is listed with 1.0: its SDK still records all it starts.
        let (k, n, _) = cheap.share(Some("scheduler"), kind);
        ensure!(k == n, "head 0.1: scheduler {kind} traces kept {k}/{n}");
        let (k, n, share) = cheap.share(Some("gateway"), kind);
        ensure!(
            within_3_sd(k, n, 0.1),
            "head 0.1: gateway {kind} traces kept {k}/{n} = {share:.3}, want 0.1 within 3 sd"
        );
    }
    eprintln!(
        "[figures] spans/s at the collector: head 1.0 {:.0}, head 0.1 {:.0}; error traces kept: {:.3} and {:.3}",
        full.spans_received as f64 / full.sending.as_secs_f64(),
        cheap.spans_received as f64 / cheap.sending.as_secs_f64(),
        full.share(None, "error").2,
        cheap.share(None, "error").2,
    );
    Ok(())
}
