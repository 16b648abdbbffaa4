//! Faults in the middle of a rollout: the operator SIGKILLed again and again,
//! the API server restarted, etcd restarted. Each time the operator (the real
//! binary, admission injection as users run it) gets back on its feet by
//! itself and finishes the rollout, and no workload's pod template changes
//! more than the once that tracing needs.
//!
//! These restart the testbed's own components (`testbed/testbed restart`), so
//! they need the testbed, not a cluster of `$KUBECONFIG`'s, and run one at a time.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use harness::{
    OPERATOR_NAMESPACE, apply_policy, clear_policies, condition, delete_policy, deployments,
    install_crd, namespace, planned_env, policy, rolled_out, wait_policy_within,
};
use support::process::OperatorProcess;

/// The faults restart the cluster's components: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const REVISION: &str = "deployment.kubernetes.io/revision";
const CONFIG_HASH: &str = "tracing.caas.io/config-hash";
const ROLLED_OUT: &str = "tracing.caas.io/rolled-out";
/// The user's own variables on every workload; no fault may touch them.
const USER_ENV: [(&str, &str); 2] = [("LOG_LEVEL", "info"), ("FEATURE_FLAGS", "checkout-v2")];

fn annotation<'a>(d: &'a Deployment, key: &str) -> Option<&'a str> {
    d.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn revision(d: &Deployment) -> Option<u32> {
    annotation(d, REVISION)?.parse().ok()
}

/// The operator has applied its settings (it carries a config hash).
fn applied(d: &Deployment) -> bool {
    annotation(d, CONFIG_HASH).is_some()
}

/// Replacing pods because of the operator: applied, its controller not done,
/// and the operator has not recorded the rollout complete.
fn rolling_because_of_us(d: &Deployment) -> bool {
    applied(d) && !rolled_out(d) && annotation(d, ROLLED_OUT) != annotation(d, CONFIG_HASH)
}

fn template_env(d: &Deployment) -> Vec<(String, String)> {
    harness::env_of(d, "app").into_iter().collect()
}

fn user_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = USER_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.sort();
    env
}

/// `n` Deployments `svc-00..`, each with the user's env, available.
async fn workloads(client: &Client, ns: &str, n: usize) {
    for i in 0..n {
        let name = format!("svc-{i:02}");
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{
                        "name": "app",
                        "image": format!("registry.local/{name}:1.0"),
                        "env": USER_ENV.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>()
                    }]}
                }
            }
        }))
        .expect("deployment manifest");
        harness::create_deployment(client, ns, &d).await;
    }
    let ns = ns.to_string();
    support::wait_until(
        &format!("{n} Deployments available"),
        Duration::from_secs(180),
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let all = deployments(&client, &ns).await;
                (all.len() == n && all.iter().all(rolled_out)).then_some(())
            }
        },
    )
    .await;
}

fn start_operator(name: &str, dir: &std::path::Path) -> OperatorProcess {
    OperatorProcess::start(
        name,
        dir,
        &support::kubeconfig(),
        &[
            "--namespace",
            OPERATOR_NAMESPACE,
            "--injection",
            "admission",
        ],
        &[("RUST_LOG", "info,tracing_operator=debug,kube_runtime=debug")],
    )
}

/// The fault tests act on the testbed itself.
fn require_testbed() {
    let testbed = support::repo()
        .join("target")
        .join("testbed")
        .join("kubeconfig");
    assert_eq!(
        support::kubeconfig(),
        testbed,
        "these tests restart the testbed's components: run them against the testbed (unset KUBECONFIG)"
    );
}

fn testbed_restart(component: &str) -> Duration {
    let started = Instant::now();
    let out = std::process::Command::new(support::repo().join("testbed").join("testbed"))
        .args(["restart", component])
        .output()
        .expect("testbed/testbed runs");
    assert!(
        out.status.success(),
        "testbed/testbed restart {component}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// Ready with every one of `n` workloads rolled out, within `timeout`.
async fn wait_ready(client: &Client, name: &str, n: i32, timeout: Duration) {
    wait_policy_within(client, name, &format!("Ready {n}/{n}"), timeout, |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && p.status.as_ref().is_some_and(|s| {
                s.workloads.up_to_date == n && s.workloads.selected == n && s.failures.is_empty()
            })
    })
    .await;
}

/// What every test asserts at the end: each of the `n` workloads carries the
/// policy's settings (its plan in the template, in its pods), changed its pod
/// template exactly once, and still has exactly the user's env.
async fn assert_converged(client: &Client, ns: &str, n: usize) {
    let all = deployments(client, ns).await;
    assert_eq!(all.len(), n);
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items;
    for d in &all {
        let name = d.name_any();
        assert_eq!(revision(d), Some(2), "{name}: exactly one template change");
        assert_eq!(
            annotation(d, ROLLED_OUT),
            annotation(d, CONFIG_HASH),
            "{name}: its rollout recorded"
        );
        let planned = planned_env(d, "app");
        assert_eq!(
            planned.get("OTEL_SERVICE_NAME"),
            Some(&name),
            "{name}: {planned:?}"
        );
        assert_eq!(
            planned.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str),
            Some("0.25"),
            "{name}: the policy's ratio"
        );
        assert_eq!(
            template_env(d),
            user_env(),
            "{name}: the user's env unchanged"
        );
        let own: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none() && p.labels().get("app") == Some(&name)
            })
            .collect();
        assert!(!own.is_empty(), "{name} has pods");
        for pod in own {
            let env: BTreeMap<String, String> = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.env.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.name, e.value.unwrap_or_default()))
                .collect();
            assert_eq!(
                env.get("OTEL_SERVICE_NAME"),
                Some(&name),
                "{}",
                pod.name_any()
            );
            for (k, v) in USER_ENV {
                assert_eq!(
                    env.get(k).map(String::as_str),
                    Some(v),
                    "{}",
                    pod.name_any()
                );
            }
        }
    }
}

fn the_policy(name: &str, max_concurrent: i32) -> tracing_operator::api::TracingPolicy {
    policy(
        name,
        name,
        json!({
            "sampling": {"ratio": 0.25},
            "rollout": {"strategy": "Progressive", "maxConcurrent": max_concurrent,
                        "progressDeadline": "3m", "onFailure": "Rollback"}
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_killed_at_ten_points_of_a_rollout_converges_and_restarts_nothing_twice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let client = support::client().await;
    install_crd(&client).await;
    let name = "faults-kill";
    let mut cleanup = support::Cleanup::new(&[name], &[]);
    clear_policies(&client, &[name]).await;
    let ns = namespace(&client, name, &[]).await;
    cleanup.namespaces.push(ns.clone());
    const N: usize = 50;
    const MAX_CONCURRENT: usize = 5;
    workloads(&client, &ns, N).await;

    let scratch = support::Scratch::new("faults-kill").expect("scratch dir");
    let mut operator = start_operator("operator-0", scratch.path());
    let started = Instant::now();
    apply_policy(&client, &the_policy(name, MAX_CONCURRENT as i32)).await;

    // Kill points: after k workloads were applied, k spread over the rollout.
    // Each operator is killed only once it has made progress of its own (a
    // workload applied or recorded since the last kill): that progress is what
    // shows the kill before it was survived; convergence shows it for the last.
    let points: Vec<usize> = (0..10).map(|i| 1 + i * N / 10).collect();
    let progress = |all: &[Deployment]| {
        let applied_n = all.iter().filter(|d| applied(d)).count();
        let recorded = all
            .iter()
            .filter(|d| applied(d) && annotation(d, ROLLED_OUT) == annotation(d, CONFIG_HASH))
            .count();
        (applied_n, recorded)
    };
    let mut most_rolling = 0;
    let mut survived = 0;
    let mut last_kill: Option<(usize, usize)> = None;
    let mut kills: Vec<String> = Vec::new();
    for (i, &k) in points.iter().enumerate() {
        let at = loop {
            let all = deployments(&client, &ns).await;
            most_rolling =
                most_rolling.max(all.iter().filter(|d| rolling_because_of_us(d)).count());
            let now = progress(&all);
            let moved = last_kill.is_none_or(|before| now.0 + now.1 > before.0 + before.1);
            if now.0 >= k && moved {
                break now;
            }
            assert!(
                operator.exit_status().is_none(),
                "operator-{i} exited by itself (kills survived: {survived}/10):\n{}",
                support::log_tail(&operator.name, operator.log_path())
            );
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "operator-{i} made no progress to {k} applied: {now:?} (kills survived: {survived}/10)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if last_kill.is_some() {
            survived += 1;
        }
        operator.sigkill();
        last_kill = Some(at);
        kills.push(format!("{}/{N} applied, {} recorded", at.0, at.1));
        operator = start_operator(&format!("operator-{}", i + 1), scratch.path());
    }
    wait_ready(&client, name, N as i32, Duration::from_secs(300)).await;
    survived += 1;
    let took = started.elapsed();
    eprintln!("kills at: {}", kills.join("; "));
    eprintln!(
        "kills survived: {survived}/10; {N} workloads converged {:.1}s after the policy, at most {most_rolling} rolling at once (maxConcurrent {MAX_CONCURRENT})",
        took.as_secs_f64()
    );
    assert_eq!(survived, 10);
    assert!(
        most_rolling <= MAX_CONCURRENT,
        "{most_rolling} rolling at once across the restarts"
    );
    assert_converged(&client, &ns, N).await;
    delete_policy(&client, name).await;
    drop(operator);
}

/// Restarts `component` once `at_least` of `n` workloads are applied; the
/// operator, never restarted, must finish the rollout by itself.
async fn restart_mid_rollout(component: &str, name: &str) {
    require_testbed();
    let _one = ONE_AT_A_TIME.lock().await;
    let client = support::client().await;
    install_crd(&client).await;
    let mut cleanup = support::Cleanup::new(&[name], &[]);
    clear_policies(&client, &[name]).await;
    let ns = namespace(&client, name, &[]).await;
    cleanup.namespaces.push(ns.clone());
    const N: usize = 20;
    workloads(&client, &ns, N).await;
    let scratch = support::Scratch::new(name).expect("scratch dir");
    let mut operator = start_operator("operator", scratch.path());
    apply_policy(&client, &the_policy(name, 2)).await;

    let at = support::wait_until("4 workloads applied", Duration::from_secs(120), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let count = deployments(&client, &ns)
                .await
                .iter()
                .filter(|d| applied(d))
                .count();
            (count >= 4).then_some(count)
        }
    })
    .await;
    let down = testbed_restart(component);
    let back = Instant::now();
    eprintln!("{component} restarted with {at}/{N} applied; it was away for {down:.1?}");
    // Workload controllers and the scheduler reconnect too: give the rollout time.
    wait_ready(&client, name, N as i32, Duration::from_secs(240)).await;
    eprintln!(
        "{component}: the operator converged {:.1}s after the restart",
        back.elapsed().as_secs_f64()
    );
    assert!(
        operator.exit_status().is_none(),
        "the operator exited:\n{}",
        support::log_tail(&operator.name, operator.log_path())
    );
    assert_converged(&client, &ns, N).await;
    let log = operator.log();
    eprintln!(
        "{component}: operator log lines mentioning errors: {}",
        log.lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .count()
    );
    delete_policy(&client, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_rides_out_an_api_server_restart_mid_rollout() {
    restart_mid_rollout("kube-apiserver", "faults-apiserver").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_rides_out_an_etcd_restart_mid_rollout() {
    restart_mid_rollout("etcd", "faults-etcd").await;
}
