//! An operator killed in the middle of a progressive rollout and started again
//! continues where it stopped: rollout progress lives on the workloads, so no
//! workload's pod template changes more often than the one apply requires.
//!
//! The operator runs as its own process here (the real binary), so it can be
//! killed with SIGKILL like a crashed pod.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use harness::*;
use support::process::OperatorProcess;

/// The operator binary in [`OPERATOR_NAMESPACE`], logging to `<dir>/<name>.log`,
/// writing pod templates (the test reads the env it writes there).
fn start_operator(name: &str, dir: &std::path::Path) -> OperatorProcess {
    OperatorProcess::start(
        name,
        dir,
        &support::kubeconfig(),
        &[
            "--namespace",
            OPERATOR_NAMESPACE,
            "--injection",
            "pod-template",
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_continues_the_rollout_without_restarting_anything_twice() {
    let client = support::client().await;
    install_crd(&client).await;
    let name = "restart";
    let scratch = support::Scratch::new("rollout-restart").expect("scratch dir");
    let mut operator = Some(start_operator("operator-1", scratch.path()));
    clear_policies(&client, &[name]).await;
    let ns = namespace(&client, name, &[]).await;
    for i in 0..20 {
        let d = deployment(
            &format!("svc-{i:02}"),
            &[],
            &[("app", "registry.local/svc:1.0", &[])],
        );
        create_deployment(&client, &ns, &d).await;
    }
    support::wait_until("20 Deployments available", Duration::from_secs(120), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let all = deployments(&client, &ns).await;
            (all.len() == 20 && all.iter().all(rolled_out)).then_some(())
        }
    })
    .await;

    apply_policy(
        &client,
        &policy(name, name, json!({"rollout": {"strategy": "Progressive", "maxConcurrent": 2, "progressDeadline": "2m"}})),
    )
    .await;

    // Kill the operator once a few workloads carry the settings and most do not.
    let deadline = Instant::now() + Duration::from_secs(120);
    let traced_at_kill = loop {
        let traced_now = deployments(&client, &ns)
            .await
            .iter()
            .filter(|d| traced(d))
            .count();
        if traced_now >= 4 {
            if let Some(mut op) = operator.take() {
                op.sigkill();
            }
            break traced_now;
        }
        assert!(Instant::now() < deadline, "the rollout never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        traced_at_kill < 20,
        "killed mid-rollout ({traced_at_kill}/20 applied)"
    );
    // Nothing moves while no operator runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frozen = deployments(&client, &ns)
        .await
        .iter()
        .filter(|d| traced(d))
        .count();
    assert_eq!(frozen, traced_at_kill, "no operator, no changes");

    let second = start_operator("operator-2", scratch.path());
    let mut most_rolling = 0;
    loop {
        let all = deployments(&client, &ns).await;
        most_rolling = most_rolling.max(all.iter().filter(|d| rolling_because_of_us(d)).count());
        if all.iter().all(|d| traced(d) && rolled_out(d)) {
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "the restarted operator did not converge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "killed with {traced_at_kill}/20 applied; the second operator finished with at most {most_rolling} rolling at once (metrics on {})",
        second.metrics_addr
    );
    assert!(
        most_rolling <= 2,
        "{most_rolling} rolling at once after the restart; maxConcurrent is 2"
    );
    for d in deployments(&client, &ns).await {
        // The rollout record bumps a Deployment's generation, never its template.
        assert_eq!(
            d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                .map(String::as_str),
            Some("2"),
            "{:?}: exactly one template change",
            d.metadata.name
        );
    }
    wait_policy(&client, name, "Ready 20/20", |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && p.status
                .as_ref()
                .is_some_and(|s| s.workloads.up_to_date == 20)
    })
    .await;
    delete_policy(&client, name).await;
    drop(second);
}
