//! The operator's collector tiers run as real collector processes (the binary
//! `testbed/collector/build` makes) on 127.0.0.x addresses standing in for pods,
//! and the traffic sent through them: for `tests/collector_tiers.rs` and
//! `benches/collector_tiers.rs`.
//!
//! Only addresses are rewritten in a generated config ([`bind`]): where each
//! collector listens, where a sampler exports to ([`to_sink`]), and how the
//! routers find the samplers ([`Discovery`]).
//!
//! Included with `#[path]` next to `support` (it uses `crate::support`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tracing_operator::api::TracingPolicySpec;
use tracing_operator::plan::collector::metrics::{TailStats, parse};
use tracing_operator::plan::collector::{
    CollectorInput, CollectorPlan, HeaderSecretKeys, Tier, collector_tiers, plan_collector,
};

use crate::support;

pub const POLICY: &str = "caas";
pub const OPERATOR_NAMESPACE: &str = "tracing-operator";

/// Plans `tier` of `spec` (policy [`POLICY`], `Central` in [`OPERATOR_NAMESPACE`]).
/// `Tier::Single` with a `tail` spec is one collector that tail-samples alone:
/// what such a policy ran before the two tiers.
pub fn plan(spec: &TracingPolicySpec, tier: Tier) -> anyhow::Result<CollectorPlan> {
    Ok(plan_collector(&CollectorInput {
        policy: POLICY,
        spec,
        tier,
        namespace: OPERATOR_NAMESPACE,
        sampler_namespace: OPERATOR_NAMESPACE,
        header_secret_keys: &HeaderSecretKeys::new(),
        owner: None,
    })?)
}

/// The routers' and the samplers' plans of a tail-sampling `spec`, after
/// checking that the planner gives it exactly those two tiers.
pub fn plan_tiers(spec: &TracingPolicySpec) -> anyhow::Result<(CollectorPlan, CollectorPlan)> {
    let tiers: Vec<Tier> = collector_tiers(spec, OPERATOR_NAMESPACE, &[])
        .into_iter()
        .map(|t| t.tier)
        .collect();
    ensure!(
        tiers == [Tier::Router, Tier::Sampler],
        "a tail-sampling policy runs routers and samplers, not {tiers:?}"
    );
    Ok((plan(spec, Tier::Router)?, plan(spec, Tier::Sampler)?))
}

/// The ports one collector listens on, at its own address.
#[derive(Clone, Debug)]
pub struct Ports {
    pub address: &'static str,
    pub grpc: u16,
    pub http: u16,
    pub health: u16,
    pub metrics: u16,
}

impl Ports {
    pub fn new(address: &'static str) -> Ports {
        Ports::with_grpc(address, support::free_port())
    }

    /// Samplers behind one DNS name share their OTLP/gRPC port, as pods do.
    pub fn with_grpc(address: &'static str, grpc: u16) -> Ports {
        Ports {
            address,
            grpc,
            http: support::free_port(),
            health: support::free_port(),
            metrics: support::free_port(),
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("{}:{}", self.address, self.grpc)
    }
}

/// `config_yaml` (as generated) with only its listen addresses rewritten.
pub fn bind(config_yaml: &str, p: &Ports) -> anyhow::Result<Value> {
    support::collector::bound(
        config_yaml,
        &support::collector::LocalBind {
            host: p.address,
            grpc: p.grpc,
            http: p.http,
            health: p.health,
            metrics: p.metrics,
        },
    )
}

/// Points the one exporter of sampler config `c` at a local OTLP/HTTP sink on
/// 127.0.0.1:`port`, JSON-encoded and uncompressed when `json`.
pub fn to_sink(c: &mut Value, port: u16, json: bool) -> anyhow::Result<()> {
    let exporters = c["exporters"].as_object_mut().context("exporters")?;
    ensure!(
        exporters.len() == 1,
        "one backend, one exporter: {exporters:?}"
    );
    for e in exporters.values_mut() {
        e["endpoint"] = json!(format!("http://127.0.0.1:{port}"));
        e.as_object_mut()
            .context("exporter")?
            .remove("traces_endpoint");
        if json {
            e["encoding"] = json!("json");
            e["compression"] = json!("none");
        }
    }
    Ok(())
}

/// Spans a [`json_sink`] received, by trace ID (lower-case hex): their span IDs.
pub type Received = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// An OTLP/HTTP JSON receiver on 127.0.0.1, for one sampler's exports: its port
/// and what it got.
pub fn json_sink() -> anyhow::Result<(u16, Received)> {
    let received = Received::default();
    let got = received.clone();
    let port = sink(move |body| {
        let export: Value = serde_json::from_slice(body)?;
        let mut got = got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for rs in export["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let trace = span["traceId"].as_str().unwrap_or_default().to_lowercase();
                    let id = span["spanId"].as_str().unwrap_or_default().to_lowercase();
                    got.entry(trace).or_default().push(id);
                }
            }
        }
        Ok(())
    })?;
    Ok((port, received))
}

/// An OTLP/HTTP receiver on 127.0.0.1 that reads each export and throws it
/// away (costing the benchmark next to nothing): its port.
pub fn discard_sink() -> anyhow::Result<u16> {
    sink(|_| Ok(()))
}

fn sink(
    on_body: impl Fn(&[u8]) -> anyhow::Result<()> + Send + Sync + 'static,
) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let on_body = Arc::new(on_body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let on_body = on_body.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, on_body.as_ref());
            });
        }
    });
    Ok(port)
}

/// Answers HTTP/1.1 requests on one connection (the exporter keeps it alive).
fn serve(stream: TcpStream, on_body: &dyn Fn(&[u8]) -> anyhow::Result<()>) -> anyhow::Result<()> {
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
        on_body(&body)?;
        writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )?;
    }
}

/// A plain HTTP/1.0 GET at `address:port`: status and body.
fn get(address: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect((address, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {address}:{port}\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A collector process, stopped when dropped.
pub struct Collector {
    pub name: String,
    pub ports: Ports,
    child: Child,
    log: PathBuf,
    config_file: PathBuf,
}

impl Collector {
    /// Starts `otelcol` with `config` (written to `<scratch>/<name>.yaml`, its
    /// log to `<name>.log`) and returns once its health check answers. With
    /// `hosts`, in a mount namespace of its own where that file is `/etc/hosts`.
    pub fn start(
        otelcol: &Path,
        scratch: &Path,
        name: &str,
        config: &Value,
        ports: Ports,
        hosts: Option<&Path>,
    ) -> anyhow::Result<Collector> {
        let config_file = scratch.join(format!("{name}.yaml"));
        std::fs::write(&config_file, serde_saphyr::to_string(config)?)?;
        let log = scratch.join(format!("{name}.log"));
        let mut command = match hosts {
            None => Command::new(otelcol),
            Some(hosts) => {
                let mut c = Command::new("unshare");
                // `exec`: the process id stays the collector's.
                c.args([
                    "--user",
                    "--map-root-user",
                    "--mount",
                    "sh",
                    "-c",
                    r#"mount --bind "$0" /etc/hosts && exec "$1" "$2""#,
                ])
                .arg(hosts)
                .arg(otelcol);
                c
            }
        };
        let child = command
            .arg(format!("--config={}", config_file.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut collector = Collector {
            name: name.to_string(),
            ports,
            child,
            log,
            config_file,
        };
        let since = Instant::now();
        while !collector.healthy() {
            let exited = collector.child.try_wait()?;
            ensure!(
                exited.is_none() && since.elapsed() < Duration::from_secs(60),
                "{name} not healthy ({exited:?})\n{}",
                collector.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(collector)
    }

    fn healthy(&self) -> bool {
        matches!(
            get(self.ports.address, self.ports.health, "/"),
            Ok((200, _))
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its own metrics (the Prometheus endpoint of its generated config).
    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = get(self.ports.address, self.ports.metrics, "/metrics")?;
        ensure!(
            status == 200,
            "{}: GET /metrics answered {status}",
            self.name
        );
        Ok(body)
    }

    pub fn stats(&self) -> anyhow::Result<TailStats> {
        Ok(parse(&self.metrics()?))
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Rewrites its config and has it reload it (SIGHUP): the collector stops
    /// its pipelines (flushing them) and starts them anew in the same process.
    pub fn reload(&mut self, config: &Value) -> anyhow::Result<()> {
        std::fs::write(&self.config_file, serde_saphyr::to_string(config)?)?;
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()?;
        ensure!(status.success(), "kill -HUP {}: {status}", self.name);
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        support::log_tail(&self.name, &self.log)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log tails of `collectors`, to print when a test fails.
pub fn logs<'a>(collectors: impl IntoIterator<Item = &'a Collector>) -> String {
    collectors
        .into_iter()
        .map(Collector::log_tail)
        .collect::<Vec<_>>()
        .join("\n")
}

/// How the routers find the samplers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// A `static` list of the samplers' addresses (what the headless Service
    /// resolves to). Routers see a change only when they reload their config.
    Static,
    /// The generated `dns` resolver, its port the only change, resolving the
    /// headless Service's name through a hosts file that each router sees as
    /// `/etc/hosts` (a user and mount namespace of its own, `unshare`): adding
    /// a line adds a sampler live, as the Service's DNS does when a pod becomes
    /// ready, and each router notices on its own resolve timer.
    LiveDns,
}

impl Discovery {
    /// [`Discovery::LiveDns`] where an unprivileged user can bind-mount over
    /// `/etc/hosts` in a namespace of its own, else [`Discovery::Static`].
    pub fn best(scratch: &Path) -> Discovery {
        let probe = scratch.join("hosts-probe");
        if std::fs::write(&probe, "127.0.0.9 probe.invalid\n").is_err() {
            return Discovery::Static;
        }
        let mounted = Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$0" /etc/hosts && grep -q probe.invalid /etc/hosts"#,
            ])
            .arg(&probe)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            Discovery::LiveDns
        } else {
            Discovery::Static
        }
    }
}

/// Routers and samplers of one policy, as local processes.
pub struct TwoTiers {
    pub discovery: Discovery,
    pub routers: Vec<Collector>,
    pub samplers: Vec<Collector>,
    /// Indexes into `samplers` of those the routers may route to.
    announced: Vec<usize>,
    router_yaml: String,
    /// The `dns` resolver's name for the samplers (the headless Service).
    hostname: String,
    /// The samplers' shared OTLP/gRPC port.
    sampler_grpc: u16,
    hosts: PathBuf,
    otelcol: PathBuf,
    scratch: PathBuf,
}

impl TwoTiers {
    /// Nothing runs yet: add samplers with [`start_sampler`](Self::start_sampler)
    /// and [`announce`](Self::announce), then [`start_routers`](Self::start_routers).
    pub fn new(
        otelcol: &Path,
        scratch: &Path,
        router: &CollectorPlan,
        discovery: Discovery,
    ) -> anyhow::Result<TwoTiers> {
        let c: Value = serde_saphyr::from_str(&router.config_yaml)?;
        let lb = c["exporters"]
            .as_object()
            .and_then(|e| e.values().next())
            .context("router exporter")?;
        ensure!(lb["routing_key"] == "traceID", "{lb}");
        let hostname = lb["resolver"]["dns"]["hostname"]
            .as_str()
            .context("the routers' dns resolver")?
            .to_string();
        Ok(TwoTiers {
            discovery,
            routers: Vec::new(),
            samplers: Vec::new(),
            announced: Vec::new(),
            router_yaml: router.config_yaml.clone(),
            hostname,
            sampler_grpc: support::free_port(),
            hosts: scratch.join("hosts"),
            otelcol: otelcol.to_path_buf(),
            scratch: scratch.to_path_buf(),
        })
    }

    /// The ports of a sampler at `address`.
    pub fn sampler_ports(&self, address: &'static str) -> Ports {
        Ports::with_grpc(address, self.sampler_grpc)
    }

    /// Starts a sampler with `config`; the routers do not know it yet. Its index.
    pub fn start_sampler(&mut self, config: &Value, ports: Ports) -> anyhow::Result<usize> {
        let i = self.samplers.len();
        let name = format!("sampler-{i}");
        let sampler = Collector::start(&self.otelcol, &self.scratch, &name, config, ports, None)?;
        self.samplers.push(sampler);
        Ok(i)
    }

    /// Adds sampler `i` to the set the routers route to: a line in the hosts
    /// file ([`Discovery::LiveDns`], the routers pick it up within their resolve
    /// interval plus the resolver's 5 s hosts cache), or a reload of each router
    /// in turn ([`Discovery::Static`]).
    pub fn announce(&mut self, i: usize) -> anyhow::Result<()> {
        let sampler = self.samplers.get(i).context("no such sampler")?;
        let line = format!("{} {}\n", sampler.ports.address, self.hostname);
        self.announced.push(i);
        match self.discovery {
            Discovery::LiveDns => {
                // Appended in one write, so a router reads the old set or the new one.
                let mut hosts = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.hosts)?;
                hosts.write_all(line.as_bytes())?;
            }
            Discovery::Static => {
                for r in 0..self.routers.len() {
                    let config = self.router_config(&self.routers[r].ports)?;
                    self.routers[r].reload(&config)?;
                }
            }
        }
        Ok(())
    }

    fn router_config(&self, ports: &Ports) -> anyhow::Result<Value> {
        let mut c = bind(&self.router_yaml, ports)?;
        let lb = c["exporters"]
            .as_object_mut()
            .and_then(|e| e.values_mut().next())
            .context("router exporter")?;
        match self.discovery {
            Discovery::LiveDns => {
                lb["resolver"]["dns"]["port"] = json!(self.sampler_grpc.to_string());
            }
            Discovery::Static => {
                let hostnames: Vec<String> = self
                    .announced
                    .iter()
                    .map(|&i| self.samplers[i].ports.grpc_endpoint())
                    .collect();
                lb["resolver"] = json!({"static": {"hostnames": hostnames}});
            }
        }
        Ok(c)
    }

    /// Starts a router at each of `addresses`.
    pub fn start_routers(&mut self, addresses: &[&'static str]) -> anyhow::Result<()> {
        if self.discovery == Discovery::LiveDns && !self.hosts.exists() {
            std::fs::write(&self.hosts, "")?;
        }
        for address in addresses {
            let ports = Ports::new(address);
            let config = self.router_config(&ports)?;
            let name = format!("router-{}", self.routers.len());
            let hosts = (self.discovery == Discovery::LiveDns).then_some(self.hosts.as_path());
            let router =
                Collector::start(&self.otelcol, &self.scratch, &name, &config, ports, hosts)?;
            self.routers.push(router);
        }
        Ok(())
    }

    /// How many samplers each router's ring holds now
    /// (`otelcol_loadbalancer_num_backends`; `None` before it reported one).
    pub fn ring_sizes(&self) -> Vec<Option<u64>> {
        self.routers
            .iter()
            .map(|r| {
                let metrics = r.metrics().ok()?;
                metrics
                    .lines()
                    .find(|l| l.starts_with("otelcol_loadbalancer_num_backends"))?
                    .rsplit(' ')
                    .next()?
                    .parse::<f64>()
                    .ok()
                    .map(|n| n as u64)
            })
            .collect()
    }

    pub fn router_ports(&self) -> Vec<Ports> {
        self.routers.iter().map(|r| r.ports.clone()).collect()
    }

    pub fn logs(&self) -> String {
        logs(self.samplers.iter().chain(&self.routers))
    }
}

/// What a test trace is for the tail rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Neither error nor slow: kept at `sampling.ratio`.
    Plain,
    /// One span (the last) has status ERROR.
    Error,
    /// Its root span lasts 600–900 ms: slower than a `slowerThan` of 500ms.
    Slow,
}

#[derive(Clone, Debug)]
pub struct Span {
    pub id: u64,
    pub parent: Option<u64>,
    pub service: &'static str,
    pub namespace: &'static str,
    pub start_ns: u128,
    pub end_ns: u128,
    pub error: bool,
}

#[derive(Clone, Debug)]
pub struct Trace {
    pub id: u128,
    pub kind: Kind,
    pub spans: Vec<Span>,
}

impl Trace {
    pub fn hex_id(&self) -> String {
        format!("{:032x}", self.id)
    }
}

/// SplitMix64: trace and span IDs that look random to the samplers' hash,
/// the same for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (near enough for test data).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `n` traces of 3–6 spans ending now: a chain gateway (namespace team-a) →
/// auth (team-b) → gateway → ..., so every trace crosses the two namespaces.
/// Every 20th trace has an error span (5 %), every 20th from the second on is
/// slow (5 %); the root of the others lasts 20–80 ms and every child lies within it.
pub fn traces(n: usize, seed: u64) -> Vec<Trace> {
    let mut rng = Rng::new(seed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (0..n)
        .map(|t| {
            let kind = match t % 20 {
                0 => Kind::Error,
                1 => Kind::Slow,
                _ => Kind::Plain,
            };
            let root_ms = match kind {
                Kind::Slow => rng.between(600, 900),
                _ => rng.between(20, 80),
            };
            let count = rng.between(3, 6) as usize;
            let end = now - u128::from(rng.between(0, 1_000)) * 1_000_000;
            let start = end - u128::from(root_ms) * 1_000_000;
            let mut parent = None;
            let spans = (0..count)
                .map(|s| {
                    // Never 0: that is no span ID.
                    let id = rng.next() | 1;
                    let (service, namespace) = if s % 2 == 0 {
                        ("gateway", "team-a")
                    } else {
                        ("auth", "team-b")
                    };
                    let inset = s as u128 * 1_000_000;
                    let span = Span {
                        id,
                        parent,
                        service,
                        namespace,
                        start_ns: start + inset,
                        end_ns: end - inset,
                        error: kind == Kind::Error && s + 1 == count,
                    };
                    parent = Some(id);
                    span
                })
                .collect();
            Trace {
                id: u128::from(rng.next()) << 64 | u128::from(rng.next()),
                kind,
                spans,
            }
        })
        .collect()
}

/// The router span `s` of trace `t` goes through: never the one the span
/// before it went through.
pub fn router_of(t: usize, s: usize, routers: usize) -> usize {
    (t + s) % routers
}

/// An OTLP/HTTP JSON export of `spans`, one resource per service (an SDK's batch).
pub fn body<'a>(spans: impl IntoIterator<Item = (&'a Trace, &'a Span)>) -> Vec<u8> {
    let mut by_service: BTreeMap<(&str, &str), Vec<Value>> = BTreeMap::new();
    for (trace, span) in spans {
        let mut s = json!({
            "traceId": trace.hex_id(), "spanId": format!("{:016x}", span.id),
            "name": "op", "kind": 2,
            "startTimeUnixNano": span.start_ns.to_string(), "endTimeUnixNano": span.end_ns.to_string(),
        });
        if let Some(p) = span.parent {
            s["parentSpanId"] = json!(format!("{p:016x}"));
        }
        if span.error {
            s["status"] = json!({"code": 2, "message": "failed"});
        }
        by_service
            .entry((span.service, span.namespace))
            .or_default()
            .push(s);
    }
    let resource_spans: Vec<Value> = by_service
        .into_iter()
        .map(|((service, namespace), spans)| {
            json!({
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": service}},
                    {"key": "k8s.namespace.name", "value": {"stringValue": namespace}},
                ]},
                "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}],
            })
        })
        .collect();
    json!({ "resourceSpans": resource_spans })
        .to_string()
        .into_bytes()
}

/// The request bodies for `traces` sent through `routers` routers, by router:
/// `per_request` traces at a time, each span to [`router_of`] it.
pub fn bodies(traces: &[Trace], routers: usize, per_request: usize) -> Vec<Vec<Vec<u8>>> {
    let mut out = vec![Vec::new(); routers];
    for (chunk_index, chunk) in traces.chunks(per_request).enumerate() {
        for (r, bodies) in out.iter_mut().enumerate() {
            let spans = chunk.iter().enumerate().flat_map(|(i, trace)| {
                let t = chunk_index * per_request + i;
                trace
                    .spans
                    .iter()
                    .enumerate()
                    .filter(move |(s, _)| router_of(t, *s, routers) == r)
                    .map(move |(_, span)| (trace, span))
            });
            bodies.push(body(spans));
        }
    }
    out
}

/// [`bodies`] in the order to send them: each request to every router before
/// the next, so a trace's spans go out together. `(router, body)`.
pub fn interleaved(bodies: &[Vec<Vec<u8>>]) -> Vec<(usize, &[u8])> {
    let requests = bodies.first().map_or(0, Vec::len);
    (0..requests)
        .flat_map(|i| {
            bodies
                .iter()
                .enumerate()
                .map(move |(r, b)| (r, b[i].as_slice()))
        })
        .collect()
}

/// Sends all of `traces` through `routers`, 50 traces a request, [`interleaved`].
pub fn send(traces: &[Trace], routers: &[Ports]) -> anyhow::Result<()> {
    let bodies = bodies(traces, routers.len(), 50);
    for (r, body) in interleaved(&bodies) {
        post(routers[r].address, routers[r].http, body)?;
    }
    Ok(())
}

/// POSTs an OTLP/HTTP JSON export; retries (for up to 30 s) what a sender
/// would retry: no connection (a router reloading) and 429/503 (its memory
/// limiter refusing). The number of retries.
pub fn post(address: &str, port: u16, body: &[u8]) -> anyhow::Result<u32> {
    let since = Instant::now();
    let mut retries = 0;
    loop {
        let status = post_once(address, port, body);
        match &status {
            Ok(200) => return Ok(retries),
            Ok(429 | 503) | Err(_) if since.elapsed() < Duration::from_secs(30) => {
                retries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => anyhow::bail!("POST to {address}:{port}: {status:?}"),
        }
    }
}

fn post_once(address: &str, port: u16, body: &[u8]) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect((address, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /v1/traces HTTP/1.0\r\nHost: {address}:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {:?}", reply.lines().next()))
}
