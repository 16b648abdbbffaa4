//! The chart's alerts and dashboard (`metrics.prometheusRule.enabled`,
//! `metrics.dashboards.enabled`), checked with the real Prometheus tools:
//! - every rule and every dashboard query parses (`promtool check rules`), and
//!   every alert links a section of docs/runbook.md;
//! - each alert fires where it should and not where it should not
//!   (`promtool test rules` with tests/prometheus/alerts.test.yaml);
//! - a real Prometheus server scraping the operator binary shows
//!   TracingPolicyNotReady pending, then firing, for a policy whose collector
//!   lacks a Secret, and resolved once the Secret exists; and every metric the
//!   rules and the dashboard name is one the operator exports (its live
//!   `/metrics`), or, for the collector alerts, one a real collector 0.161.0
//!   exports (`src/plan/collector/fixtures/metrics-0.161.0-overloaded.txt`).

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use support::process::OperatorProcess;
use support::tools::{prometheus, promtool};

/// `helm template` of the chart with its monitoring objects on, plus `set`.
fn render(set: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(support::tools_bin().join("helm"));
    cmd.args(["template", "tracing-operator"])
        .arg(support::repo().join("charts/tracing-operator"))
        .args([
            "--namespace",
            "tracing-operator",
            "--kube-version",
            "1.37.2",
        ])
        .args(["--set", "metrics.prometheusRule.enabled=true"])
        .args(["--set", "metrics.dashboards.enabled=true"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
        .expect("rendered YAML parses");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

/// The PrometheusRule's groups as a plain Prometheus rule file (JSON is YAML).
fn rule_file(objects: &[Value]) -> Value {
    json!({"groups": only(objects, "PrometheusRule")["spec"]["groups"]})
}

/// Every alert rule of a rule file.
fn alerts(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r["alert"].is_string())
        .collect()
}

/// The dashboard of the rendered ConfigMap.
fn dashboard(objects: &[Value]) -> Value {
    let cm = only(objects, "ConfigMap");
    let text = cm["data"]["tracing-operator.json"]
        .as_str()
        .expect("the dashboard JSON");
    serde_json::from_str(text).expect("the dashboard is JSON")
}

/// Every `expr` of the dashboard's panels, with Grafana's variables replaced by
/// what Prometheus itself accepts.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(
                    expr.replace("$__rate_interval", "5m")
                        .replace("$policy", ".*"),
                );
            }
        }
    }
    out
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).expect("JSON")).expect("write file");
}

fn promtool_ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

#[test]
fn every_rule_and_dashboard_query_parses_and_every_alert_has_a_runbook_section() {
    let scratch = support::Scratch::new("monitoring-parse").expect("scratch dir");
    let objects = render(&[]);
    let rules = rule_file(&objects);
    write_json(&scratch.path().join("rules.json"), &rules);
    let said = promtool_ok(scratch.path(), &["check", "rules", "rules.json"]);
    let names: Vec<&str> = alerts(&rules)
        .iter()
        .filter_map(|a| a["alert"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "TracingPolicyNotReady",
            "TracingPolicyWorkloadsFailed",
            "TracingInjectionNotApplied",
            "TracingCollectorReplicasUnavailable",
            "TracingOperatorReconcileErrors",
            "TracingOperatorNoLeader",
            "TracingCollectorTracesEvicted",
            "TracingCollectorRefusingSpans",
        ]
    );
    assert!(said.contains("SUCCESS: 8 rules found"), "{said}");

    let queries = dashboard_queries(&dashboard(&objects));
    assert!(queries.len() >= 10, "{queries:?}");
    let recording: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"record": format!("dashboard:query_{i}"), "expr": q}))
        .collect();
    write_json(
        &scratch.path().join("dashboard.json"),
        &json!({"groups": [{"name": "dashboard", "rules": recording}]}),
    );
    let said = promtool_ok(scratch.path(), &["check", "rules", "dashboard.json"]);
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{said}"
    );

    let runbook =
        std::fs::read_to_string(support::repo().join("docs/runbook.md")).expect("docs/runbook.md");
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for alert in alerts(&rules) {
        let url = alert["annotations"]["runbook_url"]
            .as_str()
            .expect("every alert has a runbook_url");
        let (page, anchor) = url.split_once('#').expect("a section anchor");
        assert!(page.ends_with("/docs/runbook.md"), "{url}");
        assert_eq!(
            anchor,
            alert["alert"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .unwrap_or_default()
        );
        assert!(
            sections.contains(anchor),
            "docs/runbook.md has no ## {anchor}"
        );
    }

    // Off by default: a plain install renders none of it.
    let mut cmd = Command::new(support::tools_bin().join("helm"));
    let out = cmd
        .args(["template", "tracing-operator"])
        .arg(support::repo().join("charts/tracing-operator"))
        .args(["--kube-version", "1.37.2"])
        .output()
        .expect("helm runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("kind: PrometheusRule") && !text.contains("grafana_dashboard"));
}

#[test]
fn each_alert_fires_where_it_should_and_nowhere_else() {
    let scratch = support::Scratch::new("monitoring-unit").expect("scratch dir");
    write_json(&scratch.path().join("rules.yaml"), &rule_file(&render(&[])));
    std::fs::copy(
        support::repo().join("tests/prometheus/alerts.test.yaml"),
        scratch.path().join("alerts.test.yaml"),
    )
    .expect("copy the rule tests");
    let said = promtool_ok(scratch.path(), &["test", "rules", "alerts.test.yaml"]);
    assert!(said.contains("SUCCESS"), "{said}");
    // One test (at least) per alert: the file names them all.
    let tests = std::fs::read_to_string(scratch.path().join("alerts.test.yaml")).expect("read");
    for alert in alerts(&rule_file(&render(&[]))) {
        let name = alert["alert"].as_str().unwrap_or_default();
        assert!(
            tests.contains(&format!("alertname: {name}\n        exp_alerts: []"))
                && tests.contains(&format!("alertname: {name}\n        exp_alerts:\n")),
            "{name} is tested firing and not firing"
        );
    }
}

/// A Prometheus server of the pinned release, killed when dropped.
struct Prometheus {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, scrape: &str, rules: &Value) -> Prometheus {
        write_json(&dir.join("rules.json"), rules);
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.json"],
            "scrape_configs": [{
                "job_name": "tracing-operator",
                "static_configs": [{"targets": [scrape]}],
            }],
        });
        write_json(&dir.join("prometheus.json"), &config);
        let port = support::free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new(prometheus())
            .current_dir(dir)
            .arg("--config.file=prometheus.json")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect("start prometheus");
        Prometheus { port, child, log }
    }

    fn get(&self, path: &str) -> Option<Value> {
        match support::http_get(self.port, path) {
            Ok((200, _, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// The state of alert `name` for `policy` (`pending`, `firing`), if active.
    fn alert_state(&self, name: &str, policy: &str) -> Option<String> {
        let alerts = self.get("/api/v1/alerts")?;
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name && a["labels"]["policy"] == policy)
            .and_then(|a| a["state"].as_str().map(str::to_string))
    }

    /// The metric names `query` selects, from Prometheus' own parser.
    fn metric_names(&self, query: &str) -> BTreeSet<String> {
        let parsed = self
            .get(&format!("/api/v1/parse_query?query={}", encode(query)))
            .unwrap_or_else(|| panic!("Prometheus parses {query}"));
        assert_eq!(parsed["status"], "success", "{query}: {parsed}");
        let mut names = BTreeSet::new();
        selectors(&parsed["data"], &mut names);
        assert!(!names.is_empty(), "{query} selects a metric");
        names
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", support::log_tail("prometheus", &self.log));
        }
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The metric names of every vector and matrix selector in a parsed query.
fn selectors(node: &Value, out: &mut BTreeSet<String>) {
    match node {
        Value::Object(map) => {
            let selector = matches!(
                map.get("type").and_then(Value::as_str),
                Some("vectorSelector" | "matrixSelector")
            );
            if selector && let Some(name) = map.get("name").and_then(Value::as_str) {
                out.insert(name.to_string());
            }
            for v in map.values() {
                selectors(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| selectors(v, out)),
        _ => {}
    }
}

/// The sample names a scrape exports: those of its samples, and those its
/// families' types give them (`# TYPE x counter` exports `x_total`, a histogram
/// `x_bucket`, `x_sum` and `x_count`), so a family with no sample yet counts.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let mut parts = family.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["", "_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_alerts_on_a_policy_with_a_missing_secret_until_it_exists() {
    let client = support::client().await;
    harness::install_crd(&client).await;
    let name = "alerting";
    harness::clear_policies(&client, &[name]).await;
    let apps = harness::namespace(&client, name, &[]).await;
    let operator_ns = support::fresh_namespace(&client, "alerting-operator", &[]).await;
    let _cleanup = support::Cleanup::new(&[name], &[&apps, &operator_ns]);
    let scratch = support::Scratch::new("monitoring-live").expect("scratch dir");
    let operator = OperatorProcess::start(
        "operator",
        scratch.path(),
        &support::kubeconfig(),
        &["--namespace", &operator_ns],
        &[],
    );
    harness::create_deployment(
        &client,
        &apps,
        &harness::deployment("shop", &[], &[("app", "registry.local/shop:1.0", &[])]),
    )
    .await;

    // The rules as the chart renders them, with a short wait before firing.
    let rules = rule_file(&render(&["metrics.prometheusRule.policyNotReadyFor=20s"]));
    let prometheus = Prometheus::start(scratch.path(), &operator.metrics_addr.to_string(), &rules);
    support::wait_until("Prometheus is ready", Duration::from_secs(60), || {
        let up = matches!(
            support::http_get(prometheus.port, "/-/ready"),
            Ok((200, _, _))
        );
        async move { up.then_some(()) }
    })
    .await;

    let secret = "alerting-headers";
    harness::apply_policy(
        &client,
        &harness::policy(
            name,
            name,
            json!({
                "collector": {"enabled": true},
                "backends": [{
                    "name": "jaeger", "type": "jaeger",
                    "endpoint": "http://jaeger.observability.svc:4317",
                    "headersSecretRef": {"name": secret},
                }],
            }),
        ),
    )
    .await;
    harness::wait_policy(&client, name, "Degraded: SecretNotFound", |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Degraded" && c.status == "True" && c.reason == "SecretNotFound"
            })
        })
    })
    .await;

    let pending = support::wait_until(
        "TracingPolicyNotReady is pending",
        Duration::from_secs(30),
        || {
            let state = prometheus.alert_state("TracingPolicyNotReady", name);
            async move { state.filter(|s| s == "pending") }
        },
    )
    .await;
    let started = std::time::Instant::now();
    support::wait_until(
        "TracingPolicyNotReady fires",
        Duration::from_secs(60),
        || {
            let state = prometheus.alert_state("TracingPolicyNotReady", name);
            async move { state.filter(|s| s == "firing") }
        },
    )
    .await;
    println!(
        "TracingPolicyNotReady {pending}, then firing {:.0}s later (for: 20s)",
        started.elapsed().as_secs_f64()
    );

    // Every metric the rules and the dashboard name, against what is exported.
    let scrape = match support::http_get(operator.metrics_addr.port(), "/metrics") {
        Ok((200, _, body)) => body,
        other => panic!("GET /metrics: {other:?}"),
    };
    let operator_names = exported_names(&scrape);
    let collector_names = exported_names(
        &std::fs::read_to_string(
            support::repo().join("src/plan/collector/fixtures/metrics-0.161.0-overloaded.txt"),
        )
        .expect("the collector scrape"),
    );
    let objects = render(&[]);
    let mut queries: Vec<(String, String)> = Vec::new();
    for alert in alerts(&rule_file(&objects)) {
        queries.push((
            alert["alert"].as_str().unwrap_or_default().to_string(),
            alert["expr"].as_str().unwrap_or_default().to_string(),
        ));
    }
    for (i, q) in dashboard_queries(&dashboard(&objects))
        .into_iter()
        .enumerate()
    {
        queries.push((format!("dashboard query {i}"), q));
    }
    let mut checked = BTreeSet::new();
    for (what, query) in &queries {
        for metric in prometheus.metric_names(query) {
            let collector = what.starts_with("TracingCollector") && metric.starts_with("otelcol_");
            let exported = if collector {
                &collector_names
            } else {
                &operator_names
            };
            assert!(
                exported.contains(&metric),
                "{what} names {metric}, which the {} does not export",
                if collector { "collector" } else { "operator" }
            );
            checked.insert(metric);
        }
    }
    println!(
        "{} queries name {} metrics, all exported: {checked:?}",
        queries.len(),
        checked.len()
    );

    // The Secret appears: the policy recovers and the alert resolves.
    let created: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret},
        "stringData": {"authorization": "Bearer test"},
    }))
    .expect("secret manifest");
    Api::<Secret>::namespaced(client.clone(), &operator_ns)
        .create(&PostParams::default(), &created)
        .await
        .expect("secret created");
    harness::wait_policy_within(&client, name, "Ready", Duration::from_secs(180), |p| {
        harness::condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    support::wait_until(
        "TracingPolicyNotReady resolves",
        Duration::from_secs(30),
        || {
            let state = prometheus.alert_state("TracingPolicyNotReady", name);
            async move { state.is_none().then_some(()) }
        },
    )
    .await;
    harness::delete_policy(&client, name).await;
    drop(operator);
}
