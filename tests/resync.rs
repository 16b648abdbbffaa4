//! A converged cluster costs the API server nothing: after a policy is Ready, a
//! forced resync (every policy reconciled again, by a freshly started operator and
//! by an unrelated namespace change) issues zero mutating requests. Counted two
//! ways: the API server's own `apiserver_request_total` and the operator's
//! `tracing_operator_api_writes_total`.
//!
//! Its own test binary, so no other test writes to the cluster meanwhile.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use harness::*;
use support::apiserver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_cluster_sees_zero_writes_across_a_forced_resync() {
    let client = support::client().await;
    install_crd(&client).await;
    let name = "resync";
    let first = Operator::start();
    clear_policies(&client, &[name]).await;

    // One workload of each kind, and a collector, so every write path is converged.
    let ns = namespace(&client, name, &[]).await;
    create_deployment(
        &client,
        &ns,
        &deployment(
            "api",
            &[],
            &[("app", "registry.local/api:1.0", &[("LOG", "info")])],
        ),
    )
    .await;
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "store"},
        "spec": {"serviceName": "store", "replicas": 1, "selector": {"matchLabels": {"app": "store"}},
                 "template": {"metadata": {"labels": {"app": "store"}}, "spec": {"containers": [{"name": "db", "image": "registry.local/store:3"}]}}}
    }))
    .expect("statefulset");
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sts)
        .await
        .expect("statefulset created");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "agent", "image": "registry.local/agent:0.1"}]}}}
    }))
    .expect("daemonset");
    Api::<DaemonSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ds)
        .await
        .expect("daemonset created");

    let before_apply = apiserver::writes().expect("the API server's request counts");
    apply_policy(
        &client,
        &policy(name, name, json!({
            "collector": {"enabled": true, "namespace": ns},
            "sampling": {"ratio": 0.2, "tail": {"keepErrors": true, "slowerThan": "500ms", "ratio": 0.1}},
            "rollout": {"strategy": "Progressive", "maxConcurrent": 2}
        })),
    )
    .await;
    wait_policy(&client, name, "Ready with 3/3 and a ready collector", |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && p.status.as_ref().is_some_and(|s| {
                s.workloads.up_to_date == 3
                    && s.collector.as_ref().is_some_and(|c| c.ready_replicas >= 1)
            })
    })
    .await;
    // Let the last status write and the watches settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rollout_writes = support::counter_delta(
        &before_apply,
        &apiserver::writes().expect("the API server's request counts"),
    );
    // The operator's writes are the APPLYs and its finalizer PATCH; the PUTs are the
    // workload controllers' status updates. Two of the Deployment applies are the
    // collector's: its routers and, since the policy tail-samples, its samplers.
    let workload_applies: u64 = ["deployments", "statefulsets", "daemonsets"]
        .iter()
        .map(|r| {
            // Applies to a subresource count as applies to the workload.
            let (whole, sub) = (format!("APPLY {r}"), format!("APPLY {r}/"));
            rollout_writes
                .iter()
                .filter(|(k, _)| **k == whole || k.starts_with(&sub))
                .map(|(_, n)| n)
                .sum::<u64>()
        })
        .sum::<u64>()
        - 2;
    println!("rolling the policy out to 3 workloads took these writes: {rollout_writes:?}");
    println!(
        "workload applies per changed workload (change + rollout record): {:.2}",
        workload_applies as f64 / 3.0
    );
    // Per workload: the apply that changes its template, and the annotation-only
    // apply that records the completed rollout (no pod restarts).
    assert_eq!(
        workload_applies, 6,
        "two applies per workload: {rollout_writes:?}"
    );

    // Resync 1: a brand-new operator lists everything and reconciles every policy.
    first.stop();
    let before = apiserver::writes().expect("the API server's request counts");
    let second = Operator::start();
    let reconciled = support::wait_until(
        "the new operator reconciled the policy",
        Duration::from_secs(60),
        || async {
            let n = second.metrics.reconciles_total();
            (n >= 1).then_some(n)
        },
    )
    .await;
    // Resync 2: a namespace change that selects nothing new triggers every policy again.
    support::kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        "unrelated=touched",
        "--overwrite",
    ]);
    support::wait_until(
        "the namespace change was reconciled",
        Duration::from_secs(60),
        || async { (second.metrics.reconciles_total() > reconciled).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let server_side = support::counter_delta(
        &before,
        &apiserver::writes().expect("the API server's request counts"),
    );
    let operator_side = second.metrics.api_writes_total();
    println!(
        "forced resync: {} reconciles, API server writes {server_side:?}, operator writes {operator_side}",
        second.metrics.reconciles_total()
    );
    // The operator writes with server-side apply and patches (and creates only
    // Events); other writes in this window are the cluster's own (the namespace
    // and garbage collectors cleaning up after earlier tests).
    let operator_kinds: BTreeMap<&String, &u64> = server_side
        .iter()
        .filter(|(k, _)| {
            k.starts_with("APPLY") || k.starts_with("PATCH") || k.as_str() == "POST events"
        })
        .collect();
    assert!(
        operator_kinds.is_empty(),
        "the API server saw the operator's kinds of writes during the resync: {server_side:?}"
    );
    assert_eq!(
        operator_side, 0,
        "the operator counted its own writes during the resync"
    );

    delete_policy(&client, name).await;
    second.stop();
}
