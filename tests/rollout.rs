//! The progressive rollout on the testbed: pacing, health gates and what happens
//! to a workload whose pods never become ready (kwok keeps pods labelled
//! labelled `testbed.caas.io/breaks-when-traced=true` Running but never Ready once
//! they carry tracing settings).

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};
use serde_json::json;

use harness::*;

/// Pods with this label never become Ready once they carry tracing settings: the
/// operator's own change is what breaks them.
const BREAKS_WHEN_TRACED: &str = "testbed.caas.io/breaks-when-traced";

fn workload(name: &str, replicas: i32, never_ready: bool) -> Deployment {
    let mut template_labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    if never_ready {
        template_labels.insert(BREAKS_WHEN_TRACED.to_string(), "true".to_string());
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": template_labels},
                "spec": {"containers": [{"name": "app", "image": format!("registry.local/{name}:1.0")}]}
            }
        }
    }))
    .expect("deployment manifest")
}

/// The Deployment controller's count of pod templates it rolled out.
const REVISION: &str = "deployment.kubernetes.io/revision";

fn annotation<'a>(d: &'a Deployment, key: &str) -> Option<&'a str> {
    d.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_deployments_roll_out_at_most_five_at_a_time() {
    shared_operator();
    let client = support::client().await;
    let name = "paced";
    clear_policies(&client, &[name]).await;
    let ns = namespace(&client, name, &[]).await;
    for i in 0..30 {
        create_deployment(&client, &ns, &workload(&format!("svc-{i:02}"), 2, false)).await;
    }
    // Every Deployment available before the policy exists, so only its changes roll.
    support::wait_until("30 Deployments available", Duration::from_secs(120), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let all = deployments(&client, &ns).await;
            (all.len() == 30 && all.iter().all(rolled_out)).then_some(())
        }
    })
    .await;

    let started = Instant::now();
    apply_policy(
        &client,
        &policy(name, name, json!({"rollout": {"strategy": "Progressive", "maxConcurrent": 5, "progressDeadline": "2m"}})),
    )
    .await;

    // Sample the cluster throughout: a workload is rolling out from the moment it
    // carries the settings until its controller reports it done.
    let mut most_rolling = 0;
    let mut samples = 0;
    let mut order: Vec<String> = Vec::new();
    loop {
        let all = deployments(&client, &ns).await;
        samples += 1;
        let rolling = all.iter().filter(|d| rolling_because_of_us(d)).count();
        most_rolling = most_rolling.max(rolling);
        for d in all.iter().filter(|d| traced(d)) {
            let n = d.metadata.name.clone().unwrap_or_default();
            if !order.contains(&n) {
                order.push(n);
            }
        }
        if all.iter().all(|d| traced(d) && rolled_out(d)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "rollout of 30 did not converge in 240 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "30 Deployments rolled out in {:.1}s; at most {most_rolling} rolling at once over {samples} samples",
        started.elapsed().as_secs_f64()
    );
    assert!(
        most_rolling <= 5,
        "{most_rolling} workloads rolled out at once; maxConcurrent is 5"
    );
    assert!(
        most_rolling >= 2,
        "the rollout should use its slots, saw at most {most_rolling}"
    );
    // Deterministic order: namespace, kind, name. Within one sample several may
    // appear together, so compare batches of 5 rather than exact positions.
    let first_batch: Vec<&str> = order.iter().take(5).map(String::as_str).collect();
    assert!(
        first_batch
            .iter()
            .all(|n| ["svc-00", "svc-01", "svc-02", "svc-03", "svc-04"].contains(n)),
        "the first five to roll are svc-00..04, got {first_batch:?}"
    );

    let p = wait_policy(&client, name, "Ready with 30/30", |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && p.status
                .as_ref()
                .is_some_and(|s| s.workloads.up_to_date == 30)
    })
    .await;
    let status = p.status.expect("status");
    assert_eq!(
        (status.workloads.selected, status.workloads.failed),
        (30, 0)
    );
    // Exactly one template change per Deployment (the rollout record is an
    // annotation: it bumps a Deployment's generation, never its template).
    for d in deployments(&client, &ns).await {
        assert_eq!(
            annotation(&d, REVISION),
            Some("2"),
            "{:?} changed once",
            d.metadata.name
        );
    }
    delete_policy(&client, name).await;
}

/// Deploys `a-broken` (pods never ready) and `b-ok`, `c-ok` with maxConcurrent 1,
/// so the broken one is first and the others wait behind it.
async fn broken_first(client: &Client, test: &str, on_failure: &str) -> String {
    clear_policies(client, &[test]).await;
    let ns = namespace(client, test, &[]).await;
    create_deployment(client, &ns, &workload("a-broken", 1, true)).await;
    create_deployment(client, &ns, &workload("b-ok", 1, false)).await;
    create_deployment(client, &ns, &workload("c-ok", 1, false)).await;
    // Available before the policy exists: the operator never starts on a
    // workload that is still rolling out on its own.
    support::wait_until(
        "the three Deployments available",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let all = deployments(&client, &ns).await;
                (all.len() == 3 && all.iter().all(rolled_out)).then_some(())
            }
        },
    )
    .await;
    apply_policy(
        client,
        &policy(
            test,
            test,
            json!({"rollout": {"strategy": "Progressive", "maxConcurrent": 1,
            "progressDeadline": "8s", "onFailure": on_failure}}),
        ),
    )
    .await;
    ns
}

fn failure_of<'a>(
    p: &'a tracing_operator::api::TracingPolicy,
    name: &str,
) -> Option<&'a tracing_operator::api::WorkloadIssue> {
    p.status.as_ref()?.failures.iter().find(|f| f.name == name)
}

/// Waits until `a-broken` is listed as failed and the two others are up to date.
async fn wait_broken_failed_and_rest_done(
    client: &Client,
    test: &str,
) -> tracing_operator::api::TracingPolicy {
    wait_policy(
        client,
        test,
        "a-broken failed and the others rolled out",
        |p| {
            failure_of(p, "a-broken").is_some()
                && p.status
                    .as_ref()
                    .is_some_and(|s| s.workloads.up_to_date == 2)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_never_becomes_ready_is_rolled_back_and_the_rest_proceed() {
    shared_operator();
    let client = support::client().await;
    let test = "rollback";
    let ns = broken_first(&client, test, "Rollback").await;

    let p = wait_broken_failed_and_rest_done(&client, test).await;
    let failure = failure_of(&p, "a-broken").expect("failure listed");
    assert_eq!(failure.reason, "PodsNotReady", "{failure:?}");
    assert!(
        failure.message.contains("1 still on the previous template")
            && failure.message.contains("rolled back"),
        "{}",
        failure.message
    );
    assert_eq!(condition(&p, "Degraded").as_deref(), Some("True"));
    assert_eq!(p.status.as_ref().map(|s| s.workloads.failed), Some(1));

    // The operator's env is gone from the broken workload and the failed config is recorded.
    let broken = wait_deployment(&client, &ns, "a-broken", "env removed", |d| !traced(d)).await;
    assert!(annotation(&broken, "tracing.caas.io/rollout-failed").is_some());
    assert!(annotation(&broken, "tracing.caas.io/config-hash").is_none());
    for ok in ["b-ok", "c-ok"] {
        let d = wait_deployment(&client, &ns, ok, "traced and rolled out", |d| {
            traced(d) && rolled_out(d)
        })
        .await;
        assert_eq!(annotation(&d, REVISION), Some("2"));
    }
    // Events say why, on the workload.
    let reasons = support::kubectl_ok(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        "involvedObject.name=a-broken",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        reasons
            .lines()
            .any(|l| l.starts_with("RolloutFailed:") && l.contains("PodsNotReady")),
        "{reasons}"
    );

    // Rolled back once, and not re-applied on later reconciles: template revision
    // 1 -> 2 -> 3 (the first template again) and stays.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("a-broken")
        .await
        .expect("a-broken");
    assert_eq!(
        annotation(&later, REVISION),
        Some("3"),
        "apply + rollback, nothing more"
    );
    delete_policy(&client, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_pause_holds_the_rest_until_the_policy_changes() {
    shared_operator();
    let client = support::client().await;
    let test = "pause";
    let ns = broken_first(&client, test, "Pause").await;

    let p = wait_policy(&client, test, "paused after a-broken failed", |p| {
        failure_of(p, "a-broken").is_some()
            && p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Progressing" && c.reason == "RolloutPaused")
            })
    })
    .await;
    assert_eq!(
        failure_of(&p, "a-broken").map(|f| f.reason.as_str()),
        Some("PodsNotReady")
    );
    // The failed workload keeps the settings (no rollback); nothing new starts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(traced(&api.get("a-broken").await.expect("a-broken")));
    for ok in ["b-ok", "c-ok"] {
        assert!(
            !traced(&api.get(ok).await.expect("ok")),
            "{ok} must wait while paused"
        );
    }

    // Changing the policy resumes: the broken workload is excluded by a selector
    // on its labels, so the others roll out.
    apply_policy(
        &client,
        &policy(test, test, json!({
            "selector": {"workloads": {"matchExpressions": [{"key": "broken", "operator": "DoesNotExist"}]}},
            "rollout": {"strategy": "Progressive", "maxConcurrent": 1, "progressDeadline": "8s", "onFailure": "Pause"}})),
    )
    .await;
    // a-broken has no `broken` label on the Deployment itself, so label it first.
    support::kubectl_ok(&["label", "deployment", "a-broken", "-n", &ns, "broken=true"]);
    for ok in ["b-ok", "c-ok"] {
        wait_deployment(&client, &ns, ok, "traced after the policy changed", |d| {
            traced(d) && rolled_out(d)
        })
        .await;
    }
    wait_deployment(
        &client,
        &ns,
        "a-broken",
        "settings removed once it left the selection",
        |d| !traced(d),
    )
    .await;
    delete_policy(&client, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_continue_keeps_the_settings_and_goes_on() {
    shared_operator();
    let client = support::client().await;
    let test = "continue";
    let ns = broken_first(&client, test, "Continue").await;
    let p = wait_broken_failed_and_rest_done(&client, test).await;
    assert_eq!(
        failure_of(&p, "a-broken").map(|f| f.reason.as_str()),
        Some("PodsNotReady")
    );
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(
        traced(&api.get("a-broken").await.expect("a-broken")),
        "Continue leaves the settings in place"
    );
    delete_policy(&client, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_reports_progress_before_its_writes_are_done() {
    shared_operator();
    let client = support::client().await;
    let name = "early-status";
    clear_policies(&client, &[name]).await;
    let ns = namespace(&client, name, &[]).await;
    for i in 0..100 {
        create_deployment(&client, &ns, &workload(&format!("svc-{i:03}"), 1, false)).await;
    }
    // Immediate: one reconcile writes to all 100, paced by the client-side rate
    // limit (20/s after a burst of 40, an apply and an Event each): several seconds.
    apply_policy(
        &client,
        &policy(name, name, json!({"rollout": {"strategy": "Immediate"}})),
    )
    .await;
    let p = wait_policy(&client, name, "a status for generation 1", |_| true).await;
    let traced_then = deployments(&client, &ns)
        .await
        .iter()
        .filter(|d| traced(d))
        .count();
    assert_eq!(condition(&p, "Progressing").as_deref(), Some("True"));
    assert_eq!(p.status.as_ref().map(|s| s.workloads.selected), Some(100));
    assert!(
        traced_then < 100,
        "status came only after all {traced_then} writes"
    );
    println!("first status for the new generation with {traced_then}/100 workloads written");
    wait_policy(&client, name, "Ready 100/100", |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && p.status
                .as_ref()
                .is_some_and(|s| s.workloads.up_to_date == 100)
    })
    .await;
    delete_policy(&client, name).await;
}
