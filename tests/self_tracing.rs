//! The operator's own spans, as an on-call engineer reads them in Jaeger: the
//! real binary, started with only `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a
//! real Jaeger v2 (OTLP http/protobuf), reconciles a policy on the testbed; one
//! of its Deployments is refused by a ValidatingAdmissionPolicy. Its batch
//! span processor is told to wait 10 minutes between exports, so nothing reaches
//! Jaeger before SIGTERM; after it (the operator flushes on shutdown) Jaeger's
//! query API must hold, under the default service name `tracing-operator`:
//! - `reconcile` spans carrying the policy name;
//! - `apply` spans carrying namespace, kind and name of each Deployment, children
//!   of a `reconcile` span of the policy;
//! - for the refused Deployment, `apply` spans with error status whose
//!   description is the API server's denial.
//!
//! Other operators on the same testbed reconcile every policy too. Their spans
//! never reach this test's Jaeger, but one of them could apply a Deployment
//! before this test's operator does, leaving it nothing to apply. So this test's
//! operator acts as a user of its own (impersonation in its kubeconfig), and the
//! admission policy lets only that user add the settings to Deployment `web`.

mod support;

#[path = "operator/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test's label key and value prefix (see `harness::test_label`).
const CASE: &str = "self-tracing";
/// The service name the operator reports when the environment names none.
const SERVICE: &str = "tracing-operator";
/// Label on the Deployment whose every traced update the admission policy refuses.
const DENY_LABEL: &str = "deny-tracing";
/// Label on the Deployment only this test's operator may add the settings to;
/// its value is that operator's user.
const APPLIER_LABEL: &str = "tracing-test.caas.io/applier";
/// In the admission policy's message, so the span's error can be traced to it.
const DENIAL: &str = "OpenTelemetry settings are refused for this Deployment";

/// A unique suffix for this run's names.
fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id() % 0xfff, nanos % 0xfffff)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (so the body is never chunked): status and body.
async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let raw = String::from_utf8(raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .context("GET timed out")?
}

fn log_tail(name: &str, path: &Path) {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    eprintln!("--- last lines of {name} ({}):", path.display());
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
}

// ---------------------------------------------------------------- Jaeger

/// Jaeger v2 with memory storage on loopback ports of its own; killed when dropped.
struct Jaeger {
    child: Child,
    log: PathBuf,
    otlp_http: u16,
    query: u16,
}

impl Jaeger {
    async fn start(dir: &Path) -> anyhow::Result<Jaeger> {
        let binary = support::testbed_binary("jaeger")?;
        let (otlp_http, query, query_grpc) = (free_port()?, free_port()?, free_port()?);
        let config = dir.join("jaeger.yaml");
        std::fs::write(&config, jaeger_config(otlp_http, query, query_grpc))?;
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
        let jaeger = Jaeger {
            child,
            log,
            otlp_http,
            query,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http_get(query, "/api/services").await, Ok((200, _))) {
            if Instant::now() > deadline {
                log_tail("jaeger", &jaeger.log);
                anyhow::bail!("Jaeger's query API did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(jaeger)
    }

    /// The services Jaeger holds spans of.
    async fn services(&self) -> anyhow::Result<Vec<String>> {
        let (status, body) = http_get(self.query, "/api/services").await?;
        ensure!(status == 200, "GET /api/services: {status} {body}");
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect())
    }

    /// Every span of `service` that started after `start_us` (µs since the epoch).
    async fn spans(&self, service: &str, start_us: u128) -> anyhow::Result<Vec<JaegerSpan>> {
        let path = format!("/api/traces?service={service}&limit=100000&start={start_us}");
        let (status, body) = http_get(self.query, &path).await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        let v: Value = serde_json::from_str(&body)?;
        let mut out = Vec::new();
        for trace in v["data"].as_array().context("data")? {
            let processes = trace["processes"].as_object().context("processes")?;
            for span in trace["spans"].as_array().context("spans")? {
                let process = &processes[span["processID"].as_str().unwrap_or_default()];
                out.push(JaegerSpan {
                    trace_id: trace["traceID"].as_str().unwrap_or_default().to_string(),
                    span_id: span["spanID"].as_str().unwrap_or_default().to_string(),
                    operation: span["operationName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    service: process["serviceName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
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
        }
        Ok(out)
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            log_tail("jaeger", &self.log);
        }
    }
}

/// Memory storage; OTLP over HTTP only, which is what the operator sends.
fn jaeger_config(otlp_http: u16, query_http: u16, query_grpc: u16) -> String {
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
      http: {{endpoint: "127.0.0.1:{otlp_http}"}}
processors:
  batch: {{}}
exporters:
  jaeger_storage_exporter: {{trace_storage: mem}}
"#
    )
}

/// A span as Jaeger's query API returns it, reduced to what the assertions need.
#[derive(Debug)]
struct JaegerSpan {
    trace_id: String,
    span_id: String,
    operation: String,
    service: String,
    /// Resource attributes.
    process_tags: BTreeMap<String, String>,
    /// `CHILD_OF` references.
    parents: Vec<String>,
    tags: BTreeMap<String, String>,
}

impl JaegerSpan {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// Jaeger's rendering of OTLP status ERROR.
    fn is_error(&self) -> bool {
        self.tag("otel.status_code") == Some("ERROR") && self.tag("error") == Some("true")
    }
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
            (tag["key"].as_str().unwrap_or_default().to_string(), value)
        })
        .collect()
}

// ---------------------------------------------------------------- the operator

/// The operator binary, killed when dropped (its log tail printed on failure).
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(kubeconfig: &Path, namespace: &str, env: &[(&str, &str)], log: PathBuf) -> Operator {
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracing-operator"));
        cmd.arg("run")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--namespace={namespace}"))
            .arg(format!("--metrics-addr={metrics_addr}"));
        // Only what this test sets may configure the operator.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("OTEL_")
                || name.starts_with("TRACING_OPERATOR_")
                || ["KUBECONFIG", "POD_NAMESPACE", "POD_NAME", "RUST_LOG"].contains(&name.as_ref())
            {
                cmd.env_remove(name.as_ref());
            }
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("operator log file"))
            .spawn()
            .expect("start tracing-operator");
        Operator { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit.
    async fn sigterm(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid}: {status}");
        support::wait_until(
            "the operator exits after SIGTERM",
            Duration::from_secs(60),
            || {
                let status = self.child.try_wait().expect("operator status");
                async move { status }
            },
        )
        .await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            log_tail("the operator", &self.log);
        }
    }
}

/// The test cluster's kubeconfig, acting as `user` in group system:masters:
/// requests are then admitted as that user's.
fn impersonating_kubeconfig(path: &Path, user: &str) -> anyhow::Result<()> {
    let source = support::kubeconfig();
    let mut config: Value = serde_saphyr::from_str(&std::fs::read_to_string(&source)?)?;
    let users = config["users"].as_array_mut().context("kubeconfig users")?;
    ensure!(!users.is_empty(), "{} names no user", source.display());
    for u in users {
        u["user"]["as"] = json!(user);
        u["user"]["as-groups"] = json!(["system:masters"]);
    }
    std::fs::write(path, serde_saphyr::to_string(&config)?)?;
    Ok(())
}

// ---------------------------------------------------------------- the cluster

/// Removes what the test created, also when it fails. Declared before the
/// [`Operator`] so that the operator is stopped first.
#[derive(Default)]
struct Cleanup {
    policy: Option<String>,
    admission: Option<String>,
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let kubectl = |args: &[&str]| {
            let _ = support::kubectl().args(args).output();
        };
        if let Some(name) = &self.policy {
            // A passing test deleted it already, with its finalizer run; otherwise
            // no operator of this test is left to run it.
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
        if let Some(name) = &self.admission {
            kubectl(&[
                "delete",
                "validatingadmissionpolicybinding",
                name,
                "--ignore-not-found",
            ]);
            kubectl(&[
                "delete",
                "validatingadmissionpolicy",
                name,
                "--ignore-not-found",
            ]);
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

/// Refuses, in namespace `ns` only, updates of Deployments that carry
/// `OTEL_SERVICE_NAME` when the Deployment is labelled `deny-tracing=true`, or
/// when it is labelled with an applier other than the requesting user and the
/// update changes its containers (the Deployment controller's own updates pass).
async fn install_admission_policy(client: &Client, name: &str, ns: &str) {
    let traced = "object.spec.template.spec.containers.exists(c, has(c.env) && \
                  c.env.exists(e, e.name == 'OTEL_SERVICE_NAME'))";
    let label = |key: &str| {
        format!(
            "(has(object.metadata.labels) && '{key}' in object.metadata.labels ? object.metadata.labels['{key}'] : '')"
        )
    };
    let vap: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "resourceRules": [{
                    "apiGroups": ["apps"],
                    "apiVersions": ["v1"],
                    "operations": ["UPDATE"],
                    "resources": ["deployments"]
                }]
            },
            "variables": [
                {"name": "traced", "expression": traced},
                {"name": "denied", "expression": format!("{} == 'true'", label(DENY_LABEL))},
                {"name": "applier", "expression": label(APPLIER_LABEL)}
            ],
            "validations": [
                {
                    "expression": "!(variables.denied && variables.traced)",
                    "message": format!("{DENIAL} (label {DENY_LABEL}=true)")
                },
                {
                    "expression": "variables.applier == '' || !variables.traced \
                        || request.userInfo.username == variables.applier \
                        || oldObject.spec.template.spec.containers == object.spec.template.spec.containers",
                    "message": format!("only the user in label {APPLIER_LABEL} may add OpenTelemetry settings")
                }
            ]
        }
    }))
    .expect("admission policy manifest");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
            }
        }
    }))
    .expect("admission policy binding manifest");
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &vap)
        .await
        .expect("ValidatingAdmissionPolicy created");
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("ValidatingAdmissionPolicyBinding created");
}

/// A dry-run server-side apply adding `OTEL_SERVICE_NAME` to container `app`:
/// `Err` with the API server's message when admission refuses it.
async fn try_trace(client: &Client, ns: &str, name: &str) -> Result<(), String> {
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "OTEL_SERVICE_NAME", "value": "probe"}]}
        ]}}}
    });
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("self-tracing-probe").dry_run(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_reconcile_and_apply_spans_arrive_in_jaeger() -> anyhow::Result<()> {
    let client = support::client().await;
    harness::install_crd(&client).await;
    let run = suffix();
    let scratch = support::Scratch::new("self-tracing")?;
    let dir = scratch.path();
    // Jaeger's start filter has a resolution of whole seconds or coarser.
    let start_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros()
        - 60_000_000;
    let jaeger = Jaeger::start(dir).await?;

    let mut cleanup = Cleanup::default();
    let operator_ns = support::fresh_namespace(&client, "self-tracing-operator", &[]).await;
    cleanup.namespaces.push(operator_ns.clone());
    let ns = harness::namespace(&client, CASE, &[]).await;
    cleanup.namespaces.push(ns.clone());
    let operator_user = format!("self-tracing-operator-{run}");
    let policy_name = format!("self-tracing-{run}");

    let web = harness::deployment(
        "web",
        &[(APPLIER_LABEL, operator_user.as_str())],
        &[("app", "example.com/web:1.2.3", &[])],
    );
    let denied = harness::deployment(
        "denied",
        &[(DENY_LABEL, "true")],
        &[("app", "example.com/denied:1.0.0", &[])],
    );
    harness::create_deployment(&client, &ns, &web).await;
    harness::create_deployment(&client, &ns, &denied).await;

    let admission = format!("self-tracing-{run}");
    cleanup.admission = Some(admission.clone());
    install_admission_policy(&client, &admission, &ns).await;
    // The API server loads admission policies asynchronously: wait until both
    // rules refuse this (admin) client before any operator gets a chance.
    support::wait_until(
        "the admission policy refuses tracing web and denied",
        Duration::from_secs(60),
        || async {
            let denied = try_trace(&client, &ns, "denied").await.err()?;
            let web = try_trace(&client, &ns, "web").await.err()?;
            (denied.contains(DENIAL) && web.contains(APPLIER_LABEL)).then_some(())
        },
    )
    .await;

    let kubeconfig = dir.join("operator-kubeconfig");
    impersonating_kubeconfig(&kubeconfig, &operator_user)?;
    let endpoint = format!("http://127.0.0.1:{}", jaeger.otlp_http);
    let resource = format!("selftest.run={run}");
    let mut operator = Operator::start(
        &kubeconfig,
        &operator_ns,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // No service.name: the default applies.
            ("OTEL_RESOURCE_ATTRIBUTES", resource.as_str()),
            // Only the shutdown flush exports (milliseconds).
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
        dir.join("operator.log"),
    );

    cleanup.policy = Some(policy_name.clone());
    harness::apply_policy(
        &client,
        &harness::policy(
            &policy_name,
            CASE,
            json!({"service": {"environment": "test"}}),
        ),
    )
    .await;
    harness::wait_deployment(
        &client,
        &ns,
        "web",
        "the operator set OTEL_SERVICE_NAME",
        harness::traced,
    )
    .await;
    support::wait_until(
        "the operator logs that the apply of denied was rejected",
        Duration::from_secs(90),
        || {
            let log = operator.log();
            let rejected = log
                .lines()
                .any(|l| l.contains("apply rejected") && l.contains(&format!("{ns}/denied")));
            async move { rejected.then_some(()) }
        },
    )
    .await;
    assert!(
        operator
            .log()
            .contains("exporting the operator's spans over OTLP"),
        "the operator did not log that it exports spans"
    );

    // Deleted while this operator runs, so that its finalizer completes.
    harness::delete_policy(&client, &policy_name).await;
    cleanup.policy = None;
    let early = jaeger.services().await?;
    assert!(
        !early.iter().any(|s| s == SERVICE),
        "spans of {SERVICE} arrived before SIGTERM despite OTEL_BSP_SCHEDULE_DELAY: {early:?}"
    );
    let exit = operator.sigterm().await;
    assert!(
        exit.success(),
        "the operator exited with {exit} after SIGTERM"
    );

    // Jaeger batches before storing: wait until the spans of interest are there
    // and their number stops changing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut spans = jaeger.spans(SERVICE, start_us).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = jaeger.spans(SERVICE, start_us).await?;
        let stable = again.len() == spans.len();
        spans = again;
        let denied_error = spans
            .iter()
            .any(|s| s.operation == "apply" && s.tag("name") == Some("denied") && s.is_error());
        if (stable && denied_error) || Instant::now() > deadline {
            break;
        }
    }

    let reconciles: Vec<&JaegerSpan> = spans
        .iter()
        .filter(|s| s.operation == "reconcile" && s.tag("policy") == Some(policy_name.as_str()))
        .collect();
    let applies = |name: &str| -> Vec<&JaegerSpan> {
        spans
            .iter()
            .filter(|s| {
                s.operation == "apply"
                    && s.tag("namespace") == Some(ns.as_str())
                    && s.tag("name") == Some(name)
            })
            .collect()
    };
    let (web_applies, denied_applies) = (applies("web"), applies("denied"));
    let mut by_operation: BTreeMap<&str, usize> = BTreeMap::new();
    for span in &spans {
        *by_operation.entry(span.operation.as_str()).or_default() += 1;
    }
    println!(
        "Jaeger holds {} spans of service {SERVICE} ({by_operation:?}): {} reconcile of policy \
         {policy_name}, apply {} on {ns}/web, {} on {ns}/denied ({} with error status)",
        spans.len(),
        reconciles.len(),
        web_applies.len(),
        denied_applies.len(),
        denied_applies.iter().filter(|s| s.is_error()).count(),
    );
    if let Some(span) = denied_applies.first() {
        println!("an apply span of {ns}/denied: {span:#?}");
    }

    // Every span comes from this process (this Jaeger is this test's), under
    // the default service name, with the resource attributes of the environment.
    for span in &spans {
        assert_eq!(span.service, SERVICE, "span {span:?}");
        assert_eq!(
            span.process_tags.get("selftest.run"),
            Some(&run),
            "resource attributes of span {}: {:?}",
            span.span_id,
            span.process_tags
        );
    }
    assert!(
        !reconciles.is_empty(),
        "no reconcile span carries policy={policy_name}"
    );
    let is_reconcile_of_policy = |s: &JaegerSpan| {
        reconciles
            .iter()
            .any(|r| r.trace_id == s.trace_id && s.parents.contains(&r.span_id))
    };
    assert!(
        !web_applies.is_empty(),
        "no apply span carries namespace={ns}, name=web"
    );
    for span in web_applies.iter().chain(&denied_applies) {
        assert_eq!(
            span.tag("kind"),
            Some("Deployment"),
            "kind of apply span {}",
            span.span_id
        );
        assert!(
            is_reconcile_of_policy(span),
            "apply span {} of {} is not a child of a reconcile span of {policy_name}",
            span.span_id,
            span.tag("name").unwrap_or_default()
        );
    }
    // The operator may add web's settings (and remove them when the policy is
    // deleted): every apply on web is admitted.
    for span in &web_applies {
        assert!(
            !span.is_error(),
            "apply of web recorded an error: {span:#?}"
        );
    }
    assert!(
        !denied_applies.is_empty(),
        "no apply span carries namespace={ns}, name=denied"
    );
    for span in &denied_applies {
        assert!(
            span.is_error(),
            "the rejected apply of denied has no error status: {span:#?}"
        );
        let description = span.tag("otel.status_description").unwrap_or_default();
        assert!(
            description.contains(DENIAL) && description.contains(&admission),
            "the error of the apply of denied does not name the denial: {description:?}"
        );
    }

    drop(jaeger);
    drop(cleanup);
    Ok(())
}
