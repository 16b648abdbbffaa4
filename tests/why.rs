//! `tracing-operator why` against the testbed, with the operator binary running
//! (admission injection, the default): one workload per answer the command
//! gives, each checked on the facts it prints and on its exit code (0 traced,
//! 1 not selected, 2 selected but not yet traced), and once through kubectl's
//! own plugin mechanism (`kubectl tracing why`).

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use harness::{OPERATOR_NAMESPACE, apply_policy, condition, install_crd, policy, test_label};
use support::process::OperatorProcess;

const BREAKS_WHEN_TRACED: &str = "testbed.caas.io/breaks-when-traced";

/// `tracing-operator why <workload> -n <ns> [-o json]`: (exit code, stdout).
fn why(workload: &str, ns: &str, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracing-operator"));
    cmd.args(["why", workload, "-n", ns])
        .arg(format!("--kubeconfig={}", support::kubeconfig().display()))
        .args(["--operator-namespace", OPERATOR_NAMESPACE]);
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.env_remove("KUBECONFIG").output().expect("why runs");
    assert!(
        out.stderr.is_empty(),
        "why {workload} -n {ns} wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().expect("an exit code"),
        String::from_utf8(out.stdout).expect("UTF-8"),
    )
}

fn why_json(workload: &str, ns: &str) -> (i32, Value) {
    let (code, out) = why(workload, ns, true);
    let value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (code, value)
}

/// Polls `why` until `done` holds for its JSON; returns the last answer.
async fn why_until(
    what: &str,
    workload: &str,
    ns: &str,
    timeout: Duration,
    done: impl Fn(i32, &Value) -> bool,
) -> (i32, Value) {
    support::wait_until(what, timeout, || {
        let (code, v) = why_json(workload, ns);
        let hit = done(code, &v).then_some((code, v));
        async move { hit }
    })
    .await
}

fn variable<'v>(e: &'v Value, name: &str) -> &'v Value {
    e["variables"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("{name} planned: {e:#}"))
}

fn attribute<'v>(e: &'v Value, key: &str) -> &'v Value {
    e["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["key"] == key))
        .unwrap_or_else(|| panic!("{key} planned: {e:#}"))
}

fn rollout_state(e: &Value) -> &str {
    e["rollout"]["state"].as_str().unwrap_or("-")
}

/// A Deployment with one container, `labels` on itself and `pod_labels` on its pods.
fn deployment(
    name: &str,
    container: &str,
    labels: Value,
    pod_labels: Value,
    env: Value,
    paused: bool,
) -> Deployment {
    let mut pod = json!({"app": name});
    if let (Some(p), Some(extra)) = (pod.as_object_mut(), pod_labels.as_object()) {
        p.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "paused": paused,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod},
                "spec": {"containers": [{"name": container, "image": "registry.local/app:1.0", "env": env}]}
            }
        }
    }))
    .expect("deployment manifest")
}

async fn create(client: &kube::Client, ns: &str, d: &Deployment) {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), d)
        .await
        .expect("deployment created");
}

fn caas() -> Value {
    json!({"app.kubernetes.io/part-of": "caas", "app.kubernetes.io/name": "api-gateway"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_explains_each_outcome_with_its_exit_code() {
    let client = support::client().await;
    install_crd(&client).await;
    let names = ["why-main", "why-low", "why-rollback", "why-continue"];
    harness::clear_policies(&client, &names).await;

    // Namespaces: `main` is selected by why-main (priority 10) and why-low; the
    // others are each one policy's, or nobody's.
    let main = harness::namespace(&client, "why-main", &[]).await;
    let legacy = support::fresh_namespace(&client, "why-legacy", &[]).await;
    let excluded = harness::namespace(&client, "why-main", &[]).await;
    let rollback = harness::namespace(&client, "why-rollback", &[]).await;
    let kept = harness::namespace(&client, "why-continue", &[]).await;
    let _cleanup = support::Cleanup::new(&names, &[&main, &legacy, &excluded, &rollback, &kept]);
    let scratch = support::Scratch::new("why").expect("scratch dir");
    let _operator = OperatorProcess::start(
        "operator",
        scratch.path(),
        &support::kubeconfig(),
        &["--namespace", OPERATOR_NAMESPACE],
        &[],
    );

    support::admission::wait_injection_enforced(&client, &main).await;

    let gateway_env = json!([{"name": "SERVICE_NAME", "value": "api-gateway"}]);
    let mut pod_labels =
        json!({"app.kubernetes.io/name": "api-gateway", "app.kubernetes.io/version": "2.4.1"});
    create(
        &client,
        &main,
        &deployment(
            "gateway",
            "app",
            caas(),
            pod_labels.clone(),
            gateway_env,
            false,
        ),
    )
    .await;
    create(
        &client,
        &main,
        &deployment("unlabelled", "app", json!({}), json!({}), json!([]), false),
    )
    .await;
    create(
        &client,
        &main,
        &deployment("worker", "worker", caas(), json!({}), json!([]), false),
    )
    .await;
    create(
        &client,
        &legacy,
        &deployment("billing", "app", caas(), json!({}), json!([]), false),
    )
    .await;
    create(
        &client,
        &excluded,
        &deployment("sandbox", "app", caas(), json!({}), json!([]), false),
    )
    .await;
    let daemonset: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "labels": caas()},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "app", "image": "registry.local/agent:1.0"}]}}
        }
    }))
    .expect("daemonset manifest");
    Api::<DaemonSet>::namespaced(client.clone(), &main)
        .create(&PostParams::default(), &daemonset)
        .await
        .expect("daemonset created");
    if let Some(p) = pod_labels.as_object_mut() {
        p.insert(BREAKS_WHEN_TRACED.into(), json!("true"));
    }
    create(
        &client,
        &rollback,
        &deployment(
            "a-broken",
            "app",
            caas(),
            pod_labels.clone(),
            json!([]),
            false,
        ),
    )
    .await;
    create(
        &client,
        &rollback,
        &deployment("b-waiting", "app", caas(), json!({}), json!([]), false),
    )
    .await;
    create(
        &client,
        &kept,
        &deployment("c-broken", "app", caas(), pod_labels, json!([]), false),
    )
    .await;
    create(
        &client,
        &kept,
        &deployment("held", "app", caas(), json!({}), json!([]), true),
    )
    .await;
    for ns in [&main, &rollback, &kept] {
        support::wait_until(
            &format!("the Deployments in {ns} are available"),
            Duration::from_secs(120),
            || {
                let client = client.clone();
                let ns = ns.to_string();
                async move {
                    let all = harness::deployments(&client, &ns).await;
                    all.iter()
                        .filter(|d| d.spec.paused != Some(true))
                        .all(harness::rolled_out)
                        .then_some(())
                }
            },
        )
        .await;
    }

    let selector = json!({
        "workloads": {"matchLabels": {"app.kubernetes.io/part-of": "caas"}},
        "kinds": ["Deployment", "StatefulSet"],
        "containers": ["app"],
    });
    let mut main_selector = selector.clone();
    main_selector["excludeNamespaces"] = json!([excluded]);
    apply_policy(
        &client,
        &policy(
            "why-main",
            "why-main",
            json!({
                "priority": 10,
                "selector": main_selector,
                "env": [{"name": "SERVICE_NAME", "value": "{service.name}"}],
            }),
        ),
    )
    .await;
    apply_policy(
        &client,
        &policy(
            "why-low",
            "why-main",
            json!({"selector": main_selector.clone()}),
        ),
    )
    .await;
    let progressive = |on_failure: &str| {
        json!({
            "selector": selector.clone(),
            "rollout": {"strategy": "Progressive", "maxConcurrent": 1, "progressDeadline": "25s", "onFailure": on_failure},
        })
    };
    apply_policy(
        &client,
        &policy("why-rollback", "why-rollback", progressive("Rollback")),
    )
    .await;
    apply_policy(
        &client,
        &policy("why-continue", "why-continue", progressive("Continue")),
    )
    .await;

    // Rolling since T, and a workload waiting for the slot it holds.
    let (code, e) = why_until(
        "a-broken rolls out",
        "deploy/a-broken",
        &rollback,
        Duration::from_secs(60),
        |_, e| rollout_state(e) == "RollingOut",
    )
    .await;
    assert_eq!(code, 2, "{e:#}");
    assert_eq!(e["verdict"], "NotYetTraced");
    assert!(e["rollout"]["since"].is_string(), "{e:#}");
    assert!(
        e["rollout"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rolling since ")),
        "{e:#}"
    );
    let (code, e) = why_until(
        "b-waiting waits for the slot",
        "deploy/b-waiting",
        &rollback,
        Duration::from_secs(20),
        |_, e| rollout_state(e) == "WaitingForSlot",
    )
    .await;
    assert_eq!(code, 2, "{e:#}");
    assert_eq!(
        e["rollout"]["message"],
        "waiting for a slot: 1 of maxConcurrent 1 rolling out, 1 waiting"
    );

    // Traced: the owner and why, every variable's source, the user's own value kept.
    harness::wait_policy(&client, "why-main", "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let (code, e) = why_until(
        "a pod of gateway is checked",
        "deploy/gateway",
        &main,
        Duration::from_secs(60),
        |_, e| e["pod"]["pod"].is_string(),
    )
    .await;
    assert_eq!(code, 0, "{e:#}");
    assert_eq!(e["verdict"], "Traced");
    assert_eq!(e["owner"]["policy"], "why-main");
    assert_eq!(
        e["owner"]["reason"],
        "priority 10 is higher than TracingPolicy why-low (0)"
    );
    assert_eq!(e["injection"], "Admission");
    assert_eq!(e["pod"]["carriesPlan"], true, "{e:#}");
    let roles: Vec<(&str, &str)> = e["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter(|p| p["name"] == "why-main" || p["name"] == "why-low")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["role"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(roles, [("why-main", "owner"), ("why-low", "beaten")]);
    // Conflicted, as why-low sees it: the same answer as its own status gives.
    let low = e["policies"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "why-low"))
        .expect("why-low listed");
    assert_eq!(
        low["note"],
        "selects it, but TracingPolicy why-main wins (status Conflicted)"
    );
    harness::wait_policy(
        &client,
        "why-low",
        "gateway and the others Conflicted",
        |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.workloads.conflicted >= 1)
        },
    )
    .await;
    let name = variable(&e, "OTEL_SERVICE_NAME");
    assert_eq!(name["value"], "api-gateway");
    assert_eq!(
        name["source"],
        "label app.kubernetes.io/name on the pod template"
    );
    assert_eq!(
        variable(&e, "OTEL_TRACES_SAMPLER_ARG")["source"],
        "spec.sampling.ratio (head sampling)"
    );
    assert_eq!(
        variable(&e, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")["source"],
        "spec.backends[0] (jaeger), the collector being disabled"
    );
    assert_eq!(attribute(&e, "service.version")["value"], "2.4.1");
    assert_eq!(
        attribute(&e, "service.version")["source"],
        "label app.kubernetes.io/version on the pod template"
    );
    assert_eq!(attribute(&e, "k8s.namespace.name")["value"], main.as_str());
    assert_eq!(
        e["userOverrides"],
        json!([{"container": "app", "variable": "SERVICE_NAME", "value": "api-gateway", "planned": "api-gateway"}])
    );
    assert_eq!(variable(&e, "SERVICE_NAME")["keptIn"], json!(["app"]));
    // The same facts in the table.
    let (code, table) = why("deploy/gateway", &main, false);
    assert_eq!(code, 0);
    for line in [
        format!("Deployment {main}/gateway: traced by TracingPolicy why-main"),
        "owner: priority 10 is higher than TracingPolicy why-low (0)".to_string(),
        "label app.kubernetes.io/name on the pod template".to_string(),
        "api-gateway (the manifest's own value, kept)".to_string(),
        "Set by the manifest (the user's value wins)".to_string(),
        "carries every planned variable".to_string(),
    ] {
        assert!(table.contains(&line), "{line:?} in:\n{table}");
    }
    println!("{table}");

    // Not selected, one selector term each.
    for (workload, ns, term) in [
        (
            "deploy/billing",
            legacy.as_str(),
            "spec.selector.namespaces",
        ),
        (
            "deploy/unlabelled",
            main.as_str(),
            "spec.selector.workloads",
        ),
        ("ds/agent", main.as_str(), "spec.selector.kinds"),
        (
            "deploy/sandbox",
            excluded.as_str(),
            "spec.selector.excludeNamespaces",
        ),
        ("deploy/worker", main.as_str(), "spec.selector.containers"),
    ] {
        let (code, e) = why_json(workload, ns);
        assert_eq!(
            (code, e["verdict"].as_str()),
            (1, Some("NotSelected")),
            "{workload}: {e:#}"
        );
        let terms: Vec<&str> = e["policies"]
            .as_array()
            .expect("policies")
            .iter()
            .filter(|p| p["name"] == "why-main")
            .filter_map(|p| p["excludedBy"]["term"].as_str())
            .collect();
        assert_eq!(terms, [term], "{workload}: {e:#}");
    }
    let (_, e) = why_json("deploy/billing", &legacy);
    let message = e["policies"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "why-main"))
        .map(|p| p["excludedBy"]["message"].clone());
    let (k, v) = test_label("why-main");
    assert_eq!(
        message,
        Some(json!(format!(
            "namespace {legacy} (labels: none) does not match spec.selector.namespaces ({k}={v})"
        )))
    );

    // Paused by its owner.
    let (code, e) = why_json("deploy/held", &kept);
    assert_eq!((code, rollout_state(&e)), (2, "PausedByOwner"), "{e:#}");

    // Failed and kept (onFailure: Continue), then rolled back (onFailure: Rollback).
    let (code, e) = why_until(
        "c-broken fails",
        "deploy/c-broken",
        &kept,
        Duration::from_secs(90),
        |_, e| rollout_state(e) == "Failed",
    )
    .await;
    assert_eq!(code, 2);
    assert_eq!(e["rollout"]["reason"], "PodsNotReady", "{e:#}");
    let (code, e) = why_until(
        "a-broken is rolled back",
        "deploy/a-broken",
        &rollback,
        Duration::from_secs(90),
        |_, e| rollout_state(e) == "RolledBack",
    )
    .await;
    assert_eq!(code, 2);
    assert_eq!(e["rollout"]["reason"], "PodsNotReady", "{e:#}");
    assert!(
        e["rollout"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rolled back: PodsNotReady: ")),
        "{e:#}"
    );

    // kubectl's plugin mechanism: the binary found on PATH as kubectl-tracing.
    let plugins = scratch.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(
        env!("CARGO_BIN_EXE_tracing-operator"),
        plugins.join("kubectl-tracing"),
    )
    .expect("install the plugin");
    let out = kubectl_with_plugins(&plugins)
        .args(["tracing", "why", "deploy/billing", "-n", &legacy])
        .args(["--operator-namespace", OPERATOR_NAMESPACE])
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!(
            "Deployment {legacy}/billing: not selected by any TracingPolicy"
        )),
        "{stdout}"
    );
    println!("{stdout}");

    // A workload that does not exist: exit code 3, the reason on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_tracing-operator"))
        .args(["why", "deploy/nothing-here", "-n", &legacy])
        .arg(format!("--kubeconfig={}", support::kubeconfig().display()))
        .output()
        .expect("why runs");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("error: Deployment {legacy}/nothing-here not found")
    );

    for name in names {
        harness::delete_policy(&client, name).await;
    }
}

/// kubectl with `dir` first on its PATH, where it looks for plugins.
fn kubectl_with_plugins(dir: &Path) -> Command {
    let mut cmd = support::kubectl();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).expect("PATH joins"));
    cmd
}
