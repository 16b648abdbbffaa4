//! An operator killed in the middle of a progressive rollout and started again
//! continues where it stopped: rollout progress lives on the workloads, so no
//! workload's pod template changes more often than the one apply requires.
//!
//! The operator runs as its own process here (the real binary), so it can be
//! killed with SIGKILL like a crashed pod.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use harness::*;

/// The operator binary as a child process, killed when dropped.
struct OperatorProcess {
    child: Child,
    metrics_port: u16,
}

impl OperatorProcess {
    fn start(log: &std::path::Path) -> OperatorProcess {
        let metrics_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tracing-operator"))
            .args(["run", "--namespace", OPERATOR_NAMESPACE, "--metrics-addr"])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--kubeconfig")
            .arg(support::kubeconfig())
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("operator starts");
        OperatorProcess {
            child,
            metrics_port,
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_continues_the_rollout_without_restarting_anything_twice() {
    let client = support::client().await;
    install_crd(&client).await;
    let name = "restart";
    let scratch = support::Scratch::new("rollout-restart").expect("scratch dir");
    let mut operator = Some(OperatorProcess::start(
        &scratch.path().join("operator-1.log"),
    ));
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
            if let Some(op) = operator.take() {
                op.kill();
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

    let second = OperatorProcess::start(&scratch.path().join("operator-2.log"));
    let mut most_rolling = 0;
    loop {
        let all = deployments(&client, &ns).await;
        most_rolling = most_rolling.max(all.iter().filter(|d| traced(d) && !rolled_out(d)).count());
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
        "killed with {traced_at_kill}/20 applied; the second operator finished with at most {most_rolling} rolling at once (metrics on port {})",
        second.metrics_port
    );
    assert!(
        most_rolling <= 2,
        "{most_rolling} rolling at once after the restart; maxConcurrent is 2"
    );
    for d in deployments(&client, &ns).await {
        assert_eq!(
            d.metadata.generation,
            Some(2),
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
