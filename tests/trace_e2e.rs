//! End to end with real traces, no pods: two instrumented services (this test
//! binary started twice more, as `gateway` and `auth`), configured only through
//! the environment the planner computes for their workloads (endpoint rewritten
//! to the local collector), send traces with traceparent propagation through a
//! real collector running the generated config (tail sampling) into a real
//! Jaeger v2; the test then asks Jaeger's query API what arrived.
//!
//! Everything listens on 127.0.0.1 only, and every process is stopped at the end.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use serde_json::{Value, json};
use support::http_get;
use support::jaeger::{Jaeger, JaegerTrace};
use tracing_operator::api::TracingPolicySpec;
use tracing_operator::plan::collector::{CollectorInput, HeaderSecretKeys, plan_collector};
use tracing_operator::plan::{collector_namespace, export_target};

const POLICY: &str = "caas-production";
const OPERATOR_NAMESPACE: &str = "tracing-operator";
/// Head ratio 1 so that every error and slow trace reaches the tail sampler.
const POLICY_SPEC: &str = r#"
service:
  environment: production
  resourceAttributes: {team: platform}
propagators: [tracecontext, baggage]
sampling:
  ratio: 1.0
  tail: {keepErrors: true, slowerThan: 300ms, ratio: 0.1}
collector: {placement: Central, namespace: observability}
backends:
  - {name: jaeger, type: jaeger, endpoint: "http://jaeger-collector.observability.svc:4317", protocol: grpc}
"#;
const TRACES: usize = 2000;
/// How long a slow request takes in `auth`; above `slowerThan`.
const SLOW: Duration = Duration::from_millis(400);
/// Fake downward-API values, as the kubelet would fill them.
const NODE: &str = "kwok-node-0";

/// Category of a trace, chosen by its index so the counts are exact.
fn kind_of(i: usize) -> &'static str {
    if i.is_multiple_of(20) {
        "slow"
    } else if i % 10 == 5 {
        "error"
    } else {
        "normal"
    }
}

// ---------------------------------------------------------------------------
// The environment of a workload's container.

/// A workload the policy selects.
struct Workload {
    service: &'static str,
    namespace: &'static str,
    deployment: &'static str,
    version: &'static str,
    pod: &'static str,
}

const GATEWAY: Workload = Workload {
    service: "gateway",
    namespace: "caas-gateway",
    deployment: "gateway",
    version: "2.4.1",
    pod: "gateway-7d9f8b6c4-x2x9q",
};
const AUTH: Workload = Workload {
    service: "auth",
    namespace: "caas-auth",
    deployment: "auth",
    version: "1.9.0",
    pod: "auth-5c6d7f9b8-k4m2p",
};

/// The env the operator writes into the workload's container, per the contract's
/// table, with the export target from the planner.
// TODO: switch to `tracing_operator::plan::env` once it lands (src/plan/env.rs is
// being written); only the endpoint/protocol come from the planner today.
fn planned_env(spec: &TracingPolicySpec, w: &Workload) -> Vec<EnvVar> {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_string(),
            api_version: None,
        }),
        ..EnvVarSource::default()
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    };
    let target = export_target(POLICY, spec, OPERATOR_NAMESPACE, w.namespace);
    let mut attributes = vec![
        format!("service.version={}", w.version),
        format!(
            "deployment.environment.name={}",
            spec.service.environment.clone().unwrap_or_default()
        ),
        format!("service.namespace={}", w.namespace),
        format!("k8s.namespace.name={}", w.namespace),
        format!("k8s.deployment.name={}", w.deployment),
        "k8s.pod.name=$(TRACING_OPERATOR_POD_NAME)".to_string(),
        "k8s.node.name=$(TRACING_OPERATOR_NODE_NAME)".to_string(),
    ];
    attributes.extend(
        spec.service
            .resource_attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    let propagators: Vec<&str> = spec.propagators.iter().map(|p| p.as_str()).collect();
    let sampler = if spec.sampling.parent_based {
        "parentbased_traceidratio"
    } else {
        "traceidratio"
    };
    let ratio = spec
        .sampling
        .services
        .iter()
        .find(|s| s.name == w.service)
        .map_or(spec.sampling.ratio, |s| s.ratio);
    vec![
        EnvVar {
            name: "TRACING_OPERATOR_POD_NAME".into(),
            value: None,
            value_from: Some(field("metadata.name")),
        },
        EnvVar {
            name: "TRACING_OPERATOR_NODE_NAME".into(),
            value: None,
            value_from: Some(field("spec.nodeName")),
        },
        value("OTEL_SERVICE_NAME", w.service.to_string()),
        value("OTEL_RESOURCE_ATTRIBUTES", attributes.join(",")),
        value("OTEL_EXPORTER_OTLP_ENDPOINT", target.endpoint),
        value("OTEL_EXPORTER_OTLP_PROTOCOL", target.protocol.to_string()),
        value("OTEL_TRACES_EXPORTER", "otlp".into()),
        value("OTEL_PROPAGATORS", propagators.join(",")),
        value("OTEL_TRACES_SAMPLER", sampler.into()),
        value("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()),
    ]
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
// The service processes (this binary, run with TRACE_E2E_ROLE set).

/// Runs as `gateway` or `auth` when started by the test; does nothing otherwise.
#[test]
#[ignore = "a service process of trace_e2e; the test starts it itself"]
fn service_process() -> anyhow::Result<()> {
    match std::env::var("TRACE_E2E_ROLE").as_deref() {
        Ok("auth") => service::auth(),
        Ok("gateway") => service::gateway(),
        _ => Ok(()),
    }
}

mod service {
    use super::*;
    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
    use opentelemetry::trace::{
        Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue, global};
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

    fn encode(carrier: &HashMap<String, String>) -> String {
        carrier
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\t")
    }

    fn decode(s: &str) -> HashMap<String, String> {
        s.split('\t')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A line-protocol server: `<kind>\t<carrier>` per request, `ok` back;
    /// `flush` flushes the span processor.
    pub fn auth() -> anyhow::Result<()> {
        let provider = init()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        println!("E2E listening {}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        for conn in listener.incoming() {
            let conn = conn?;
            let provider = provider.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let tracer = global::tracer("auth");
                let mut out = conn.try_clone()?;
                for line in BufReader::new(conn).lines() {
                    let line = line?;
                    if line == "flush" {
                        provider.force_flush()?;
                        writeln!(out, "ok")?;
                        continue;
                    }
                    let (kind, carrier) = line.split_once('\t').unwrap_or((line.as_str(), ""));
                    let parent = global::get_text_map_propagator(|p| p.extract(&decode(carrier)));
                    let mut span = tracer
                        .span_builder("POST /auth/verify")
                        .with_kind(SpanKind::Server)
                        .start_with_context(&tracer, &parent);
                    let tenant = parent.baggage().get("tenant").map(|v| v.to_string());
                    span.set_attribute(KeyValue::new(
                        "tenant",
                        tenant.unwrap_or_else(|| "none".into()),
                    ));
                    match kind {
                        "slow" => std::thread::sleep(SLOW),
                        "error" => span.set_status(Status::error("token rejected")),
                        _ => {}
                    }
                    span.end();
                    writeln!(out, "ok")?;
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Sends `TRACES` requests to auth from a few threads, each its own trace,
    /// prints `E2E trace <id> <kind>` for each, then flushes and exits.
    pub fn gateway() -> anyhow::Result<()> {
        let provider = init()?;
        let addr = std::env::var("TRACE_E2E_AUTH")?;
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let next = next.clone();
                let addr = addr.clone();
                std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
                    let tracer = provider_tracer();
                    let conn = TcpStream::connect(&addr)?;
                    let mut reader = BufReader::new(conn.try_clone()?);
                    let mut out = conn;
                    let mut lines = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= TRACES {
                            break;
                        }
                        let kind = kind_of(i);
                        let span = tracer
                            .span_builder("GET /login")
                            .with_kind(SpanKind::Server)
                            .start(&tracer);
                        let trace_id = span.span_context().trace_id();
                        let cx = Context::current_with_span(span)
                            .with_baggage(vec![KeyValue::new("tenant", "caas")]);
                        let mut carrier = HashMap::new();
                        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
                        writeln!(out, "{kind}\t{}", encode(&carrier))?;
                        let mut reply = String::new();
                        reader.read_line(&mut reply)?;
                        ensure!(reply.trim() == "ok", "auth replied {reply:?}");
                        cx.span().end();
                        lines.push(format!("E2E trace {trace_id} {kind}"));
                    }
                    Ok(lines)
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??);
        }
        provider.shutdown()?;
        let mut stdout = std::io::stdout().lock();
        for line in all {
            writeln!(stdout, "{line}")?;
        }
        writeln!(stdout, "E2E done")?;
        Ok(())
    }

    fn provider_tracer() -> opentelemetry::global::BoxedTracer {
        global::tracer_provider().tracer("gateway")
    }
}

// ---------------------------------------------------------------------------
// The test.

/// A child process killed (and reaped) when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        Ok(Proc { child })
    }

    /// Peak and current resident memory, from /proc.
    fn memory(&self) -> Option<(String, String)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let field = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .map(|l| l[key.len()..].trim().to_string())
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} not ready after {timeout:?}")
}

/// The lines a child prints, read on a thread so that waiting on them can time out.
fn lines_of(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The rest of the next line containing `marker`. libtest prints
/// `test service_process ... ` before the program's first line, so the marker
/// may start mid-line.
fn next_marked(
    lines: &mpsc::Receiver<String>,
    marker: &str,
    deadline: Instant,
) -> anyhow::Result<Option<String>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(at) = line.find(marker) {
                    return Ok(Some(line[at + marker.len()..].to_string()));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("no {marker:?} line in time"),
        }
    }
}

/// The collector config the operator generates, bound to 127.0.0.1 ports and
/// exporting to the local Jaeger instead of the in-cluster Service.
fn local_collector_config(
    spec: &TracingPolicySpec,
    ports: &CollectorPorts,
    jaeger_otlp: u16,
) -> anyhow::Result<String> {
    let namespace = collector_namespace(spec, OPERATOR_NAMESPACE, GATEWAY.namespace);
    let plan = plan_collector(&CollectorInput {
        policy: POLICY,
        spec,
        namespace: &namespace,
        header_secret_keys: &HeaderSecretKeys::new(),
        owner: None,
    })?;
    let mut c: Value = serde_saphyr::from_str(&plan.config_yaml)?;
    let protocols = &mut c["receivers"]["otlp"]["protocols"];
    protocols["grpc"]["endpoint"] = json!(format!("127.0.0.1:{}", ports.grpc));
    protocols["http"]["endpoint"] = json!(format!("127.0.0.1:{}", ports.http));
    c["extensions"]["health_check"]["endpoint"] = json!(format!("127.0.0.1:{}", ports.health));
    let prom =
        &mut c["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"];
    prom["host"] = json!("127.0.0.1");
    prom["port"] = json!(ports.metrics);
    let exporter = &mut c["exporters"]["otlp_grpc/jaeger"];
    ensure!(exporter.is_object(), "no otlp_grpc/jaeger exporter in {c}");
    exporter["endpoint"] = json!(format!("http://127.0.0.1:{jaeger_otlp}"));
    Ok(serde_saphyr::to_string(&c)?)
}

struct CollectorPorts {
    grpc: u16,
    http: u16,
    health: u16,
    metrics: u16,
}

/// The traces of `gateway` Jaeger holds, by trace id.
fn gateway_traces(jaeger: &Jaeger, start_us: u128) -> anyhow::Result<BTreeMap<u128, JaegerTrace>> {
    jaeger
        .traces("gateway", start_us)?
        .into_iter()
        .map(|t| Ok((u128::from_str_radix(&t.trace_id, 16)?, t)))
        .collect()
}

#[test]
fn traces_flow_through_tail_sampling_collector_into_jaeger() -> anyhow::Result<()> {
    let otelcol = support::otelcol()?;
    let scratch = support::Scratch::new("trace-e2e")?;
    let dir = scratch.path();
    let spec: TracingPolicySpec = serde_saphyr::from_str(POLICY_SPEC)?;
    let start_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros()
        - 60_000_000;

    // Jaeger v2, memory storage.
    let jaeger = Jaeger::start(dir)?;

    // The collector with the generated config.
    let ports = CollectorPorts {
        grpc: support::free_port(),
        http: support::free_port(),
        health: support::free_port(),
        metrics: support::free_port(),
    };
    let config = local_collector_config(&spec, &ports, jaeger.otlp_grpc)?;
    std::fs::write(dir.join("collector.yaml"), &config)?;
    let collector = Proc::spawn(
        "collector",
        Command::new(&otelcol)
            .arg(format!("--config={}", dir.join("collector.yaml").display()))
            .stdout(Stdio::null()),
        &dir.join("collector.log"),
    )?;
    let startup = wait_until("collector health_check", Duration::from_secs(60), || {
        http_get(ports.health, "/").is_ok_and(|(s, _, _)| s == 200)
    })
    .with_context(|| std::fs::read_to_string(dir.join("collector.log")).unwrap_or_default())?;
    eprintln!("collector ready (health_check 200) {startup:?} after start");

    // The two services, each with its workload's planned env and nothing else.
    let service_env = |w: &Workload| -> anyhow::Result<Vec<(String, String)>> {
        let mut env = kubelet_env(&planned_env(&spec, w), w.pod)?;
        for (name, value) in env.iter_mut() {
            if name == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                ensure!(
                    value.as_str() == "http://caas-production-collector.observability.svc:4318",
                    "planned endpoint {value}"
                );
                *value = format!("http://127.0.0.1:{}", ports.http);
            }
        }
        Ok(env)
    };
    let exe = std::env::current_exe()?;
    let service_cmd = |role: &str, env: Vec<(String, String)>| {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            "service_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .envs(env)
        .env("TRACE_E2E_ROLE", role)
        .stdout(Stdio::piped());
        cmd
    };
    let mut auth = Proc::spawn(
        "auth",
        &mut service_cmd("auth", service_env(&AUTH)?),
        &dir.join("auth.log"),
    )?;
    let auth_out = lines_of(auth.child.stdout.take().context("auth stdout")?);
    let auth_port: u16 = next_marked(
        &auth_out,
        "E2E listening ",
        Instant::now() + Duration::from_secs(30),
    )?
    .context("auth exited before listening")?
    .parse()?;

    let sent_at = Instant::now();
    let mut gw_cmd = service_cmd("gateway", service_env(&GATEWAY)?);
    gw_cmd.env("TRACE_E2E_AUTH", format!("127.0.0.1:{auth_port}"));
    let mut gateway = Proc::spawn("gateway", &mut gw_cmd, &dir.join("gateway.log"))?;
    let mut sent: BTreeMap<u128, &'static str> = BTreeMap::new();
    let gw_out = lines_of(gateway.child.stdout.take().context("gateway stdout")?);
    let deadline = Instant::now() + Duration::from_secs(300);
    while let Some(rest) = next_marked(&gw_out, "E2E trace ", deadline)? {
        let (id, kind) = rest.split_once(' ').context("trace line")?;
        let kind = ["slow", "error", "normal"]
            .into_iter()
            .find(|k| *k == kind)
            .context("kind")?;
        sent.insert(u128::from_str_radix(id, 16)?, kind);
    }
    let status = gateway.child.wait()?;
    ensure!(
        status.success(),
        "gateway failed: {}",
        std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
    );
    ensure!(
        sent.len() == TRACES,
        "gateway reported {} traces",
        sent.len()
    );
    eprintln!("sent {TRACES} traces in {:?}", sent_at.elapsed());
    // auth ended its spans before replying; flush them now.
    let mut ctl = TcpStream::connect(("127.0.0.1", auth_port))?;
    ctl.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(ctl, "flush")?;
    let mut reply = String::new();
    BufReader::new(ctl.try_clone()?).read_line(&mut reply)?;
    ensure!(reply.trim() == "ok", "auth flush: {reply:?}");

    let count = |k: &str| sent.values().filter(|v| **v == k).count();
    let (n_err, n_slow, n_norm) = (count("error"), count("slow"), count("normal"));

    // Tail decisions come after decision_wait (10 s); poll until stable.
    std::thread::sleep(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = gateway_traces(&jaeger, start_us)?;
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let again = gateway_traces(&jaeger, start_us)?;
        let must = sent
            .iter()
            .filter(|(_, k)| **k != "normal")
            .all(|(id, _)| again.contains_key(id));
        let stable = again.len() == got.len();
        got = again;
        if (must && stable) || Instant::now() > deadline {
            break;
        }
    }
    let memory = collector.memory();

    let kept = |k: &str| {
        sent.iter()
            .filter(|(id, kind)| **kind == k && got.contains_key(id))
            .count()
    };
    let (k_err, k_slow, k_norm) = (kept("error"), kept("slow"), kept("normal"));
    let ratio = spec
        .sampling
        .tail
        .as_ref()
        .and_then(|t| t.ratio)
        .context("tail ratio")?;
    eprintln!(
        "kept: errors {k_err}/{n_err} ({:.3}, configured 1.0), slow {k_slow}/{n_slow} ({:.3}, configured 1.0), rest {k_norm}/{n_norm} ({:.3}, configured {ratio})",
        k_err as f64 / n_err as f64,
        k_slow as f64 / n_slow as f64,
        k_norm as f64 / n_norm as f64,
    );
    if let Some((peak, now)) = &memory {
        eprintln!("collector memory: peak RSS {peak}, RSS {now}");
    }
    let unknown = got.keys().filter(|id| !sent.contains_key(id)).count();
    ensure!(
        unknown == 0,
        "{unknown} traces in Jaeger that the gateway did not send"
    );
    ensure!(k_err == n_err, "error traces kept {k_err}/{n_err}");
    ensure!(k_slow == n_slow, "slow traces kept {k_slow}/{n_slow}");
    // Binomial(n_norm, ratio): within 5 standard deviations.
    let mean = n_norm as f64 * ratio;
    let sd = (n_norm as f64 * ratio * (1.0 - ratio)).sqrt();
    ensure!(
        (k_norm as f64 - mean).abs() <= 5.0 * sd,
        "normal traces kept {k_norm}/{n_norm}, expected {mean:.0} ± {:.0}",
        5.0 * sd
    );

    // Both services in every kept trace, with the planned resource attributes.
    for (id, trace) in &got {
        ensure!(
            trace.services() == BTreeSet::from(["auth".to_string(), "gateway".to_string()]),
            "trace {id:032x} has services {:?}",
            trace.services()
        );
        // traceparent carried the gateway span into auth, baggage the tenant.
        let gateway_spans: BTreeSet<&str> = trace
            .spans
            .iter()
            .filter(|s| s.service == "gateway")
            .map(|s| s.span_id.as_str())
            .collect();
        for span in trace.spans.iter().filter(|s| s.service == "auth") {
            ensure!(
                span.parents
                    .iter()
                    .any(|p| gateway_spans.contains(p.as_str())),
                "trace {id:032x}: auth span {} is not a child of a gateway span",
                span.span_id
            );
            ensure!(
                span.tags.get("tenant").map(String::as_str) == Some("caas"),
                "trace {id:032x}: baggage tenant not propagated: {:?}",
                span.tags.get("tenant")
            );
        }
        for w in [&GATEWAY, &AUTH] {
            let tags = &trace.process_tags[w.service];
            let want = [
                ("service.version", w.version),
                ("deployment.environment.name", "production"),
                ("service.namespace", w.namespace),
                ("k8s.namespace.name", w.namespace),
                ("k8s.deployment.name", w.deployment),
                ("k8s.pod.name", w.pod),
                ("k8s.node.name", NODE),
                ("team", "platform"),
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
    // Dropping the handles stops auth, the collector and Jaeger.
    drop((auth, collector, jaeger));
    Ok(())
}
