//! A real Jaeger v2 for the tests that look at what arrived: memory storage,
//! OTLP over gRPC and over HTTP, and the query API, each on a loopback port of
//! its own.
//!
//! Blocking (std only), so that the sync and the async tests share it; the async
//! ones call it while nothing else of theirs needs their runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use super::{free_port, http_get, log_tail};

/// Jaeger v2 as a child process, killed when dropped (its log tail printed on failure).
pub struct Jaeger {
    child: Child,
    log: PathBuf,
    /// OTLP/gRPC receiver.
    pub otlp_grpc: u16,
    /// OTLP/HTTP receiver.
    pub otlp_http: u16,
    /// The query API (HTTP).
    pub query: u16,
}

impl Jaeger {
    /// Starts the testbed's Jaeger with its config and log in `dir`, and returns
    /// once its query API answers.
    pub fn start(dir: &Path) -> anyhow::Result<Jaeger> {
        let binary = super::testbed_binary("jaeger")?;
        let (otlp_grpc, otlp_http, query, query_grpc) =
            (free_port(), free_port(), free_port(), free_port());
        let config = dir.join("jaeger.yaml");
        std::fs::write(
            &config,
            jaeger_config(otlp_grpc, otlp_http, query, query_grpc),
        )?;
        let log = dir.join("jaeger.log");
        let child = Command::new(binary)
            .arg(format!("--config={}", config.display()))
            // Jaeger's own SDK would otherwise export to localhost:4317.
            .env("OTEL_SDK_DISABLED", "true")
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting jaeger")?;
        let mut jaeger = Jaeger {
            child,
            log,
            otlp_grpc,
            otlp_http,
            query,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http_get(query, "/api/services"), Ok((200, _, _))) {
            if let Some(status) = jaeger.child.try_wait()? {
                anyhow::bail!(
                    "Jaeger exited with {status}\n{}",
                    log_tail("jaeger", &jaeger.log)
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "Jaeger's query API did not answer within 60 s\n{}",
                    log_tail("jaeger", &jaeger.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(jaeger)
    }

    /// The services Jaeger holds spans of.
    pub fn services(&self) -> anyhow::Result<Vec<String>> {
        let (status, _, body) = http_get(self.query, "/api/services")?;
        ensure!(status == 200, "GET /api/services: {status} {body}");
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect())
    }

    /// Every trace with a span of `service` that started after `start_us` (µs
    /// since the epoch; Jaeger's filter has a resolution of whole seconds or coarser).
    pub fn traces(&self, service: &str, start_us: u128) -> anyhow::Result<Vec<JaegerTrace>> {
        let path = format!("/api/traces?service={service}&limit=100000&start={start_us}");
        let (status, _, body) = http_get(self.query, &path)?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        let v: Value = serde_json::from_str(&body)?;
        let mut out = Vec::new();
        for trace in v["data"].as_array().context("data")? {
            let trace_id = trace["traceID"].as_str().context("traceID")?.to_string();
            let processes = trace["processes"].as_object().context("processes")?;
            let mut process_tags = BTreeMap::new();
            for process in processes.values() {
                process_tags.insert(str_of(&process["serviceName"]), tag_map(&process["tags"]));
            }
            let mut spans = Vec::new();
            for span in trace["spans"].as_array().context("spans")? {
                let process_id = span["processID"].as_str().unwrap_or_default();
                let process = processes
                    .get(process_id)
                    .with_context(|| format!("trace {trace_id}: no process {process_id:?}"))?;
                spans.push(JaegerSpan {
                    trace_id: trace_id.clone(),
                    span_id: str_of(&span["spanID"]),
                    operation: str_of(&span["operationName"]),
                    service: str_of(&process["serviceName"]),
                    process_tags: tag_map(&process["tags"]),
                    parents: span["references"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["refType"] == "CHILD_OF")
                        .filter_map(|r| r["spanID"].as_str().map(str::to_string))
                        .collect(),
                    tags: tag_map(&span["tags"]),
                });
            }
            out.push(JaegerTrace {
                trace_id,
                spans,
                process_tags,
            });
        }
        Ok(out)
    }

    /// Every span of the [`traces`](Jaeger::traces) of `service` since `start_us`.
    pub fn spans(&self, service: &str, start_us: u128) -> anyhow::Result<Vec<JaegerSpan>> {
        Ok(self
            .traces(service, start_us)?
            .into_iter()
            .flat_map(|t| t.spans)
            .collect())
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", log_tail("jaeger", &self.log));
        }
    }
}

/// Memory storage; OTLP over gRPC and over HTTP.
fn jaeger_config(otlp_grpc: u16, otlp_http: u16, query_http: u16, query_grpc: u16) -> String {
    format!(
        r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {{level: none}}
    logs: {{level: warn}}
extensions:
  jaeger_storage:
    backends:
      mem: {{memory: {{max_traces: 100000}}}}
  jaeger_query:
    storage: {{traces: mem}}
    enable_tracing: false
    http: {{endpoint: "127.0.0.1:{query_http}"}}
    grpc: {{endpoint: "127.0.0.1:{query_grpc}"}}
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{otlp_grpc}"}}
      http: {{endpoint: "127.0.0.1:{otlp_http}"}}
processors:
  batch: {{}}
exporters:
  jaeger_storage_exporter: {{trace_storage: mem}}
"#
    )
}

/// A trace as Jaeger's query API returns it, reduced to what the assertions need.
#[derive(Debug)]
pub struct JaegerTrace {
    pub trace_id: String,
    pub spans: Vec<JaegerSpan>,
    /// The process tags (resource attributes) of each service in the trace.
    pub process_tags: BTreeMap<String, BTreeMap<String, String>>,
}

impl JaegerTrace {
    /// The services with spans in the trace.
    pub fn services(&self) -> BTreeSet<String> {
        self.process_tags.keys().cloned().collect()
    }
}

/// A span as Jaeger's query API returns it, reduced to what the assertions need.
#[derive(Debug)]
pub struct JaegerSpan {
    pub trace_id: String,
    pub span_id: String,
    pub operation: String,
    pub service: String,
    /// Resource attributes.
    pub process_tags: BTreeMap<String, String>,
    /// `CHILD_OF` references.
    pub parents: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

impl JaegerSpan {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// Jaeger's rendering of OTLP status ERROR.
    pub fn is_error(&self) -> bool {
        self.tag("otel.status_code") == Some("ERROR") && self.tag("error") == Some("true")
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn tag_map(tags: &Value) -> BTreeMap<String, String> {
    tags.as_array()
        .into_iter()
        .flatten()
        .map(|tag| {
            let value = match &tag["value"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (str_of(&tag["key"]), value)
        })
        .collect()
}
