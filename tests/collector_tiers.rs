//! The two collector tiers as the operator generates them, run as real
//! collector processes (the binary `testbed/collector/build` makes, the
//! default image's release and components) on 127.0.0.x addresses standing in
//! for pods: 2 routers and 3 samplers. Only addresses are rewritten: the
//! routers' `dns` resolver becomes a `static` list of the samplers' addresses
//! (what the headless Service resolves to), and each sampler exports to its
//! own OTLP/HTTP sink in this test, so what each sampler decided is seen
//! separately.
//!
//! Every span of a trace is sent through a different router than the one
//! before it, from services in two namespaces; every trace must come out of
//! exactly one sampler, whole.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tracing_operator::api::TracingPolicySpec;
use tracing_operator::plan::collector::{
    CollectorInput, HeaderSecretKeys, Tier, TierRef, collector_tiers, plan_collector,
};

const POLICY: &str = "caas";
const OPERATOR_NAMESPACE: &str = "tracing-operator";
/// Keep every trace, so that every span sent must come out of a sampler.
const SPEC: &str = r#"
sampling: {ratio: 1, tail: {keepErrors: true}}
collector: {replicas: 2, sampling: {replicas: 3}}
backends: [{name: sink, type: otlp, endpoint: "http://sink.observability.svc:4318", protocol: http}]
"#;
const ROUTERS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
const SAMPLERS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
const TRACES: usize = 300;

/// Spans each sink received, by trace ID: (span ID, service).
type Received = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// An OTLP/HTTP JSON receiver for one sampler's exports.
fn sink(listener: TcpListener, received: Received) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let received = received.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &received);
        });
    }
}

/// Answers HTTP/1.1 requests on one connection (the exporter keeps it alive).
fn serve(stream: TcpStream, received: &Received) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let export: Value = serde_json::from_slice(&body)?;
        let mut got = received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for rs in export["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let trace = span["traceId"].as_str().unwrap_or_default().to_lowercase();
                    let id = span["spanId"].as_str().unwrap_or_default().to_lowercase();
                    got.entry(trace).or_default().push(id);
                }
            }
        }
        drop(got);
        writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )?;
    }
}

/// A collector process, stopped when dropped.
struct Collector {
    name: String,
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ports one collector listens on, at its own address.
struct Ports {
    address: &'static str,
    grpc: u16,
    http: u16,
    health: u16,
    metrics: u16,
}

fn ports(address: &'static str) -> Ports {
    Ports {
        address,
        grpc: support::free_port(),
        http: support::free_port(),
        health: support::free_port(),
        metrics: support::free_port(),
    }
}

/// The generated config of `tier` with only its listen addresses rewritten.
fn bind(config_yaml: &str, p: &Ports) -> anyhow::Result<Value> {
    let mut c: Value = serde_saphyr::from_str(config_yaml)?;
    let a = p.address;
    c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = json!(format!("{a}:{}", p.grpc));
    c["receivers"]["otlp"]["protocols"]["http"]["endpoint"] = json!(format!("{a}:{}", p.http));
    c["extensions"]["health_check"]["endpoint"] = json!(format!("{a}:{}", p.health));
    let prom =
        &mut c["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"];
    prom["host"] = json!(a);
    prom["port"] = json!(p.metrics);
    Ok(c)
}

fn healthy(address: &str, port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((address, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

fn start(
    otelcol: &std::path::Path,
    scratch: &std::path::Path,
    name: &str,
    config: &Value,
    p: &Ports,
) -> anyhow::Result<Collector> {
    let file = scratch.join(format!("{name}.yaml"));
    std::fs::write(&file, serde_saphyr::to_string(config)?)?;
    let log = scratch.join(format!("{name}.log"));
    let child = Command::new(otelcol)
        .arg(format!("--config={}", file.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let collector = Collector {
        name: name.to_string(),
        child,
        log,
    };
    let since = Instant::now();
    while !healthy(p.address, p.health) {
        ensure!(
            since.elapsed() < Duration::from_secs(60),
            "{name} not healthy\n{}",
            support::log_tail(name, &collector.log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(collector)
}

/// One span of `service` in namespace `ns`, OTLP/JSON.
fn span(service: &str, ns: &str, trace: &str, id: &str, parent: Option<&str>) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut s = json!({
        "traceId": trace, "spanId": id, "name": "op", "kind": 2,
        "startTimeUnixNano": (now - 5_000_000).to_string(), "endTimeUnixNano": now.to_string(),
    });
    if let Some(p) = parent {
        s["parentSpanId"] = json!(p);
    }
    json!({
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "k8s.namespace.name", "value": {"stringValue": ns}},
        ]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [s]}],
    })
}

fn post(address: &str, port: u16, spans: Vec<Value>) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&json!({"resourceSpans": spans}))?;
    let mut stream = TcpStream::connect((address, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /v1/traces HTTP/1.0\r\nHost: {address}:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    ensure!(
        reply.split_whitespace().nth(1) == Some("200"),
        "router {address}:{port} answered {:?}",
        reply.lines().next()
    );
    Ok(())
}

#[test]
fn every_span_of_a_trace_reaches_one_sampler_whichever_router_it_entered_by() -> anyhow::Result<()>
{
    let spec: TracingPolicySpec = serde_saphyr::from_str(SPEC)?;
    let tiers = collector_tiers(&spec, OPERATOR_NAMESPACE, &[]);
    let plan = |tier: &TierRef| {
        plan_collector(&CollectorInput {
            policy: POLICY,
            spec: &spec,
            tier: tier.tier,
            namespace: &tier.namespace,
            sampler_namespace: OPERATOR_NAMESPACE,
            header_secret_keys: &HeaderSecretKeys::new(),
            owner: None,
        })
    };
    let router = tiers
        .iter()
        .find(|t| t.tier == Tier::Router)
        .context("a router tier with tail sampling")?;
    let sampler = tiers
        .iter()
        .find(|t| t.tier == Tier::Sampler)
        .context("a sampler tier with tail sampling")?;
    let (router, sampler) = (plan(router)?, plan(sampler)?);
    ensure!(router.deployment.spec.replicas == Some(2));
    ensure!(sampler.deployment.spec.replicas == Some(3));

    let otelcol = support::otelcol()?;
    let scratch = support::Scratch::new("collector-tiers")?;
    let mut running = Vec::new();

    // Samplers: each exports to its own sink.
    let mut sampler_ports = Vec::new();
    let mut received: Vec<Received> = Vec::new();
    for (i, address) in SAMPLERS.iter().enumerate() {
        let p = ports(address);
        let mut c = bind(&sampler.config_yaml, &p)?;
        // Only to keep the test short; every other setting is the generated one.
        c["processors"]["tail_sampling"]["decision_wait"] = json!("2s");
        let exporters = c["exporters"]
            .as_object_mut()
            .context("sampler exporters")?;
        ensure!(
            exporters.len() == 1,
            "one backend, one exporter: {exporters:?}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let sink_port = listener.local_addr()?.port();
        let got = Received::default();
        let for_sink = got.clone();
        std::thread::spawn(move || sink(listener, for_sink));
        received.push(got);
        for (_, e) in exporters.iter_mut() {
            e["endpoint"] = json!(format!("http://127.0.0.1:{sink_port}"));
            e.as_object_mut()
                .context("exporter")?
                .remove("traces_endpoint");
            e["encoding"] = json!("json");
            e["compression"] = json!("none");
        }
        running.push(start(
            &otelcol,
            scratch.path(),
            &format!("sampler-{i}"),
            &c,
            &p,
        )?);
        sampler_ports.push(p);
    }

    // Routers: the headless Service's addresses in place of its DNS name.
    let mut router_ports = Vec::new();
    for (i, address) in ROUTERS.iter().enumerate() {
        let p = ports(address);
        let mut c = bind(&router.config_yaml, &p)?;
        let lb = c["exporters"]
            .as_object_mut()
            .and_then(|e| e.values_mut().next())
            .context("router exporter")?;
        ensure!(lb["routing_key"] == "traceID", "{lb}");
        ensure!(lb["resolver"]["dns"]["hostname"] == "caas-sampler.tracing-operator.svc");
        lb["resolver"] = json!({"static": {"hostnames": sampler_ports
            .iter()
            .map(|s| format!("{}:{}", s.address, s.grpc))
            .collect::<Vec<_>>()}});
        running.push(start(
            &otelcol,
            scratch.path(),
            &format!("router-{i}"),
            &c,
            &p,
        )?);
        router_ports.push(p);
    }

    // Each trace: 3 to 6 spans, alternating routers and namespaces.
    let mut sent: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut batches: Vec<Vec<Value>> = vec![Vec::new(); ROUTERS.len()];
    for t in 0..TRACES {
        let trace = format!("{:032x}", 0x5eed_0000_0000_u64 + t as u64 * 7919);
        let spans = 3 + t % 4;
        let mut parent: Option<String> = None;
        for s in 0..spans {
            // Never all zeros: that is no span ID.
            let id = format!("{:012x}{s:04x}", t + 1);
            let (service, ns) = if s % 2 == 0 {
                ("gateway", "team-a")
            } else {
                ("auth", "team-b")
            };
            batches[(t + s) % ROUTERS.len()].push(span(
                service,
                ns,
                &trace,
                &id,
                parent.as_deref(),
            ));
            sent.entry(trace.clone()).or_default().insert(id.clone());
            parent = Some(id);
        }
    }
    let total: usize = sent.values().map(BTreeSet::len).sum();
    for (batch, p) in batches.into_iter().zip(&router_ports) {
        for chunk in batch.chunks(100) {
            post(p.address, p.http, chunk.to_vec())?;
        }
    }

    let count = || -> usize {
        received
            .iter()
            .map(|r| r.lock().map_or(0, |g| g.values().map(Vec::len).sum()))
            .sum()
    };
    let since = Instant::now();
    while count() < total && since.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = || {
        running
            .iter()
            .map(|c| support::log_tail(&c.name, &c.log))
            .collect::<Vec<_>>()
            .join("\n")
    };
    ensure!(
        count() == total,
        "the samplers exported {} of {total} spans\n{}",
        count(),
        logs()
    );

    let by_sampler: Vec<BTreeMap<String, Vec<String>>> = received
        .iter()
        .map(|r| r.lock().map(|g| g.clone()).unwrap_or_default())
        .collect();
    let mut split = 0;
    let mut incomplete = 0;
    for (trace, ids) in &sent {
        let holders: Vec<&BTreeMap<String, Vec<String>>> = by_sampler
            .iter()
            .filter(|s| s.contains_key(trace))
            .collect();
        if holders.len() != 1 {
            split += 1;
            continue;
        }
        let got: BTreeSet<String> = holders[0][trace].iter().cloned().collect();
        if &got != ids {
            eprintln!(
                "trace {trace}: sent {ids:?}, the sampler exported {:?}",
                holders[0][trace]
            );
            incomplete += 1;
        }
    }
    let per_sampler: Vec<usize> = by_sampler.iter().map(BTreeMap::len).collect();
    eprintln!(
        "{TRACES} traces, {total} spans through {} routers: traces per sampler {per_sampler:?}, split {split}, incomplete {incomplete}",
        ROUTERS.len()
    );
    ensure!(
        split == 0,
        "{split} of {TRACES} traces reached more than one sampler"
    );
    ensure!(
        incomplete == 0,
        "{incomplete} traces arrived with missing or extra spans"
    );
    // The ring spreads traces over every sampler.
    ensure!(
        per_sampler.iter().all(|&n| n > 0),
        "a sampler got no trace: {per_sampler:?}"
    );
    Ok(())
}
