//! Proof that the testbed is a real control plane: the controllers, the scheduler,
//! kwok's simulated nodes and server-side apply all do what they do in a cluster.
//! Plus the testbed script's own promises (idempotent `up`, clear failures, a
//! clean `down`), checked on a second testbed on other ports.

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

fn deployment(name: &str, replicas: i32, version: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": format!("registry.local/{name}:{version}")}]}
            }
        }
    }))
    .expect("deployment manifest")
}

async fn available(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    image: &str,
) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    support::wait_until(
        &format!("{ns}/{name} rolled out with {image}"),
        Duration::from_secs(90),
        || {
            let api = api.clone();
            async move {
                let d = api.get(name).await.ok()?;
                let s = d.status.clone()?;
                let current_image = d.spec.template.spec.as_ref()?.containers[0].image.clone();
                let done = s.observed_generation == d.metadata.generation
                    && s.updated_replicas == Some(replicas)
                    && s.available_replicas == Some(replicas)
                    && s.replicas == Some(replicas)
                    && current_image.as_deref() == Some(image);
                done.then_some(d)
            }
        },
    )
    .await
}

async fn running_pods(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("pods list");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_reports_the_pinned_release() {
    let client = support::client().await;
    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(version.git_version, "v1.37.2");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "37")
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let kwok = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .expect("nodes");
    assert!(
        kwok.items.len() >= 3,
        "at least 3 kwok nodes, got {}",
        kwok.items.len()
    );
    for node in &kwok.items {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "node {:?} is Ready", node.metadata.name);
        assert!(
            node.spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_ref())
                .is_some(),
            "node has its own pod CIDR"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_become_available_roll_out_and_go_with_their_namespace() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "testbed-deploy", &[]).await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &deployment("web", 2, "1.0"))
        .await
        .expect("create");

    // Deployment controller -> ReplicaSet controller -> scheduler -> kwok.
    available(&client, &ns, "web", 2, "registry.local/web:1.0").await;
    let pods = running_pods(&client, &ns, "web").await;
    assert_eq!(pods.len(), 2, "two Running pods");
    for pod in &pods {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .expect("pod is scheduled");
        assert!(
            node.starts_with("kwok-node-"),
            "scheduled on a kwok node, got {node}"
        );
        assert!(
            pod.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some(),
            "kwok gave the pod an IP"
        );
    }

    // A template change rolls out: a new ReplicaSet takes over, the old one scales to 0.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.local/web:2.0"}]}}}});
    api.patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patch image");
    available(&client, &ns, "web", 2, "registry.local/web:2.0").await;
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    support::wait_until(
        "the old ReplicaSet is scaled to zero",
        Duration::from_secs(60),
        || {
            let replicasets = replicasets.clone();
            async move {
                let list = replicasets.list(&ListParams::default()).await.ok()?;
                let sizes: BTreeMap<String, i32> = list
                    .items
                    .iter()
                    .map(|rs| {
                        let image = rs
                            .spec
                            .template
                            .as_ref()
                            .and_then(|t| t.spec.as_ref())
                            .and_then(|s| s.containers[0].image.clone())
                            .unwrap_or_default();
                        (image, rs.status.as_ref().map_or(0, |s| s.replicas))
                    })
                    .collect();
                (sizes.len() == 2
                    && sizes.get("registry.local/web:1.0") == Some(&0)
                    && sizes.get("registry.local/web:2.0") == Some(&2))
                .then_some(())
            }
        },
    )
    .await;

    // Deleting the namespace removes it and everything in it (namespace and GC controllers).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    support::wait_until(
        &format!("namespace {ns} is gone"),
        Duration::from_secs(120),
        || {
            let namespaces = namespaces.clone();
            let ns = ns.clone();
            async move { matches!(namespaces.get_opt(&ns).await, Ok(None)).then_some(()) }
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    assert!(
        pods.list(&ListParams::default())
            .await
            .expect("list pods")
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_rejects_a_conflicting_manager() {
    let client = support::client().await;
    let ns = support::fresh_namespace(&client, "testbed-ssa", &[]).await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &deployment("api", 1, "1.0"))
        .await
        .expect("create");

    let env = |value: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "MODE", "value": value}]}]}}}
        })
    };
    api.patch(
        "api",
        &PatchParams::apply("manager-a"),
        &Patch::Apply(&env("a")),
    )
    .await
    .expect("first apply");
    let conflict = api
        .patch(
            "api",
            &PatchParams::apply("manager-b"),
            &Patch::Apply(&env("b")),
        )
        .await;
    match conflict {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409, "conflict status: {status:?}");
            assert!(
                status.message.contains("manager-a"),
                "names the owner: {}",
                status.message
            );
        }
        other => panic!("a conflicting apply must be rejected, got {other:?}"),
    }
    let d = api.get("api").await.expect("get");
    let value = d
        .spec
        .template
        .spec
        .and_then(|s| s.containers[0].env.clone())
        .expect("env")[0]
        .value
        .clone();
    assert_eq!(
        value.as_deref(),
        Some("a"),
        "the first manager's value stands"
    );
    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await;
}

// ---------------------------------------------------------------- the script itself

fn script() -> PathBuf {
    support::repo().join("testbed").join("testbed")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("testbed/testbed runs")
}

/// A second testbed in its own folder on its own ports, so the shared one is untouched.
fn second_testbed(dir: &str) -> Command {
    let mut cmd = Command::new(script());
    cmd.env("TESTBED_DIR", support::repo().join("target").join(dir))
        .env("TESTBED_ETCD_PORT", "23379")
        .env("TESTBED_ETCD_PEER_PORT", "23380")
        .env("TESTBED_APISERVER_PORT", "27443")
        .env("TESTBED_CONTROLLER_MANAGER_PORT", "21257")
        .env("TESTBED_SCHEDULER_PORT", "21259")
        .env("TESTBED_KWOK_PORT", "21247")
        .env_remove("TESTBED_KUBE_APISERVER_ARGS");
    cmd
}

fn listening(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

#[test]
fn up_is_idempotent_and_status_reports_a_usable_cluster() {
    if std::env::var_os("KUBECONFIG").is_some() {
        return; // the tests run against a cluster the testbed did not start
    }
    support::kubeconfig(); // brings the shared testbed up
    let again = run(Command::new(script()).arg("up"));
    assert!(
        again.status.success(),
        "second up: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));
    let status = run(Command::new(script()).arg("status"));
    assert!(
        status.status.success(),
        "status: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    let env = run(Command::new(script()).arg("env"));
    let env = String::from_utf8_lossy(&env.stdout);
    assert!(
        env.lines().any(
            |l| l.starts_with("export KUBECONFIG=") && l.ends_with("target/testbed/kubeconfig")
        ),
        "{env}"
    );
}

#[test]
fn faults_are_reported_and_down_cleans_up() {
    // A taken port: `up` fails at once, naming it.
    let blocker = TcpListener::bind("127.0.0.1:27443").expect("bind the apiserver port");
    let started = std::time::Instant::now();
    let out = run(second_testbed("testbed-faults").arg("up"));
    drop(blocker);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("port 27443") && stderr.contains("kube-apiserver"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "fails at once, not after a timeout"
    );

    // A component that exits during `up`: `up` fails and shows that component's log.
    let out = run(second_testbed("testbed-faults")
        .arg("up")
        .env("TESTBED_KUBE_APISERVER_ARGS", "--no-such-flag"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kube-apiserver exited during startup"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown flag: --no-such-flag"),
        "the log tail is printed: {stderr}"
    );

    // `up` cleaned up after itself: etcd, started before the apiserver, is gone too.
    for port in [23379, 23380, 27443] {
        assert!(!listening(port), "port {port} is free after the failed up");
    }

    // A component that crashes after `up`: status says so, and `down` still stops
    // the rest and leaves nothing listening.
    let out = run(second_testbed("testbed-faults").args(["up", "--nodes", "1"]));
    assert!(
        out.status.success(),
        "up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid_file = support::repo().join("target/testbed-faults/run/kube-scheduler.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let pid = pid.split_whitespace().next().expect("pid");
    assert!(
        Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .expect("kill")
            .success()
    );
    std::thread::sleep(Duration::from_millis(500));
    let status = run(second_testbed("testbed-faults").arg("status"));
    assert!(
        !status.status.success(),
        "status fails with a component down"
    );
    assert!(String::from_utf8_lossy(&status.stdout).contains("kube-scheduler           stopped"));
    let out = run(second_testbed("testbed-faults").arg("down"));
    assert!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for port in [23379, 23380, 27443, 21257, 21259, 21247] {
        assert!(!listening(port), "port {port} is free after down");
    }
    assert!(
        !support::repo().join("target/testbed-faults/etcd").exists(),
        "state removed"
    );
}
