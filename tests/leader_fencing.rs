//! A leader that can no longer renew its Lease stops writing before a standby
//! can take over, as the API server sees it.
//!
//! Two `--leader-elect` operator processes (the real binary), each with a
//! ServiceAccount of its own bound to the chart's RBAC, so that the API server's
//! audit log tells their writes apart. The leader, throttled to one write a
//! second, is frozen with SIGSTOP in the middle of a burst of Deployment writes
//! and left frozen past the lease duration; the standby takes the Lease, finishes
//! that rollout and carries out a policy change. Then the old leader is resumed
//! with its burst still pending: the audit log must show no write of its user
//! after the new leader's first write, the new leader's settings must still be
//! on every Deployment, and the old process must exit non-zero.
//!
//! The operator is cluster-wide: operators that other test binaries run on the
//! same testbed at the same time would reconcile this test's policy too (as
//! users of their own, so the audit assertions still hold).

mod support;

#[path = "operator/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use support::audit;
use support::process::OperatorProcess;

/// Deployments the policy instruments: enough that, at one write a second, the
/// old leader is frozen with most of its burst still to come.
const DEPLOYMENTS: usize = 6;
/// The operator's default --lease-duration.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The Lease the operator elects its leader on, in its --namespace.
const LEASE: &str = "tracing-operator";

fn helm() -> Command {
    let mut cmd = Command::new(support::tools_bin().join("helm"));
    cmd.env("KUBECONFIG", support::kubeconfig());
    cmd
}

/// A kubeconfig for the test cluster's API server and CA that authenticates with `token`.
fn token_kubeconfig(path: &Path, token: &str) {
    let admin = Kubeconfig::read_from(support::kubeconfig()).expect("admin kubeconfig");
    let context = admin
        .contexts
        .iter()
        .find(|c| Some(&c.name) == admin.current_context.as_ref())
        .and_then(|c| c.context.as_ref())
        .expect("admin kubeconfig has a current context");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .expect("admin kubeconfig names its cluster");
    let mut entry = json!({"server": cluster.server});
    if let Some(data) = &cluster.certificate_authority_data {
        entry["certificate-authority-data"] = json!(data);
    }
    if let Some(file) = &cluster.certificate_authority {
        entry["certificate-authority"] = json!(file);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": entry}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "testbed", "user": "operator"}}],
        "current-context": "operator"
    });
    std::fs::write(
        path,
        serde_json::to_vec_pretty(&config).expect("kubeconfig JSON"),
    )
    .expect("write the token kubeconfig");
}

/// A token for ServiceAccount `account` in `ns`, valid for an hour.
async fn token(admin: &Client, ns: &str, account: &str) -> String {
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(
            account,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("TokenRequest")
        .status
        .and_then(|s| s.token)
        .expect("TokenRequest issued a token")
}

/// The objects of kind `K` the chart's release `release` created (in `ns`, if namespaced).
async fn chart_objects<K>(api: Api<K>, release: &str) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("list the chart's objects");
    assert!(!list.items.is_empty(), "the chart creates them");
    list.items.iter().map(|o| o.name_any()).collect()
}

/// The one object of kind `K` the chart's release `release` created.
async fn chart_object<K>(api: Api<K>, release: &str) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let names = chart_objects(api, release).await;
    assert_eq!(names.len(), 1, "the chart creates one: {names:?}");
    names[0].clone()
}

async fn lease_holder(admin: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(admin.clone(), ns)
        .get_opt(LEASE)
        .await
        .expect("reading the Lease")?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

fn sampling(d: &Deployment) -> Option<String> {
    harness::env_of(d, "app").remove("OTEL_TRACES_SAMPLER_ARG")
}

/// How many of the Deployments in `ns` sample at `ratio`.
async fn sampling_at(admin: &Client, ns: &str, ratio: &str) -> usize {
    harness::deployments(admin, ns)
        .await
        .iter()
        .filter(|d| sampling(d).as_deref() == Some(ratio))
        .count()
}

fn signal(process: &OperatorProcess, signal: &str) {
    let pid = process.pid().to_string();
    let status = Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

async fn wait_logged(process: &OperatorProcess, what: &str) {
    support::wait_until(
        &format!("{} logs {what:?}", process.name),
        Duration::from_secs(60),
        || async { process.log().contains(what).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_frozen_leader_writes_nothing_after_the_new_leader_started() {
    let admin = support::client().await;
    let mut cleanup = support::Cleanup::default();
    let scratch = support::Scratch::new("leader-fencing").expect("scratch dir");
    // Fails here, before anything starts, on a cluster without the audit log.
    audit::writes().expect("the API server's audit log");

    // The chart's RBAC for two users: the chart's ServiceAccount, and a second
    // one bound to the chart's ClusterRole and leader-election Role.
    let release = support::fresh_namespace(&admin, "tracing-operator-fence", &[]).await;
    cleanup.namespaces.push(release.clone());
    let second = format!("{release}-second");
    let mut unbind = support::kubectl();
    unbind.args([
        "delete",
        "clusterrolebinding",
        &second,
        "--ignore-not-found",
    ]);
    cleanup.commands.push(unbind);
    let mut uninstall = helm();
    uninstall.args([
        "uninstall",
        &release,
        "--namespace",
        &release,
        "--ignore-not-found",
    ]);
    cleanup.commands.push(uninstall);
    let installed = helm()
        .args(["install", &release])
        .arg(support::repo().join("charts/tracing-operator"))
        .args(["--namespace", &release, "--set", "replicaCount=1"])
        // Collectors only in the release namespace: the test needs no other.
        .args(["--set-json", "collector.allowedNamespaces=[]"])
        .output()
        .expect("helm runs");
    assert!(
        installed.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    harness::wait_crd_served(&admin).await;
    let chart_account = chart_object(
        Api::<ServiceAccount>::namespaced(admin.clone(), &release),
        &release,
    )
    .await;
    let cluster_role = chart_object(Api::<ClusterRole>::all(admin.clone()), &release).await;
    // The operator's own Role, and the collector Role of its namespace.
    let roles = chart_objects(Api::<Role>::namespaced(admin.clone(), &release), &release).await;
    let subject = json!([{"kind": "ServiceAccount", "name": second, "namespace": release}]);
    Api::<ServiceAccount>::namespaced(admin.clone(), &release)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": second}})).expect("account"),
        )
        .await
        .expect("second ServiceAccount");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": second},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
                "subjects": subject,
            }))
            .expect("binding"),
        )
        .await
        .expect("second ClusterRoleBinding");
    for role in &roles {
        Api::<RoleBinding>::namespaced(admin.clone(), &release)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": format!("{second}-{role}")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                    "subjects": subject,
                }))
                .expect("binding"),
            )
            .await
            .expect("second RoleBinding");
    }
    let user_of = |account: &str| format!("system:serviceaccount:{release}:{account}");
    let (user_a, user_b) = (user_of(&chart_account), user_of(&second));
    let kubeconfig_a = scratch.path().join("a.kubeconfig");
    let kubeconfig_b = scratch.path().join("b.kubeconfig");
    token_kubeconfig(
        &kubeconfig_a,
        &token(&admin, &release, &chart_account).await,
    );
    token_kubeconfig(&kubeconfig_b, &token(&admin, &release, &second).await);

    let case = support::unique("fence");
    let workloads = harness::namespace(&admin, &case, &[]).await;
    cleanup.namespaces.push(workloads.clone());
    for i in 0..DEPLOYMENTS {
        let web = harness::deployment(
            &format!("web-{i}"),
            &[],
            &[("app", "example.com/web:1.2.3", &[])],
        );
        harness::create_deployment(&admin, &workloads, &web).await;
    }
    let policy_name = format!("fence-{case}");
    cleanup.policies.push(policy_name.clone());
    let policy =
        |ratio: f64| harness::policy(&policy_name, &case, json!({"sampling": {"ratio": ratio}}));

    // A leads, and writes at most once a second; B stands by.
    let (id_a, id_b) = (format!("{case}-a"), format!("{case}-b"));
    let mut a = OperatorProcess::start(
        &id_a,
        scratch.path(),
        &kubeconfig_a,
        &[
            &format!("--identity={id_a}"),
            "--namespace",
            &release,
            "--leader-elect",
            // The test reads the ratio from the env written into pod templates.
            "--injection=pod-template",
            "--kube-api-qps=1",
            "--kube-api-burst=1",
        ],
        &[],
    );
    support::wait_until(
        "the first process holds the Lease",
        Duration::from_secs(60),
        || async {
            (lease_holder(&admin, &release).await.as_deref() == Some(id_a.as_str())).then_some(())
        },
    )
    .await;
    wait_logged(&a, "caches synced").await;
    let mut b = OperatorProcess::start(
        &id_b,
        scratch.path(),
        &kubeconfig_b,
        &[
            &format!("--identity={id_b}"),
            "--namespace",
            &release,
            "--leader-elect",
            "--injection=pod-template",
        ],
        &[],
    );
    wait_logged(&b, "standing by").await;

    // A starts the rollout; freeze it once its first Deployment write landed.
    harness::apply_policy(&admin, &policy(0.1)).await;
    support::wait_until(
        "the leader wrote its first Deployment",
        Duration::from_secs(60),
        || async { (sampling_at(&admin, &workloads, "0.1").await > 0).then_some(()) },
    )
    .await;
    signal(&a, "-STOP");
    let frozen = Instant::now();
    let written_before_freeze = sampling_at(&admin, &workloads, "0.1").await;
    assert!(
        written_before_freeze < DEPLOYMENTS,
        "the leader was frozen mid-burst ({written_before_freeze} of {DEPLOYMENTS} written)"
    );

    // B takes over once the Lease went a lease duration without renewal, and
    // carries out the next change.
    support::wait_until(
        "the standby holds the Lease",
        LEASE_DURATION * 3,
        || async {
            (lease_holder(&admin, &release).await.as_deref() == Some(id_b.as_str())).then_some(())
        },
    )
    .await;
    let takeover = frozen.elapsed();
    wait_logged(&b, "caches synced").await;
    harness::apply_policy(&admin, &policy(0.5)).await;
    support::wait_until(
        "the new leader set ratio 0.5 on every Deployment",
        Duration::from_secs(90),
        || async { (sampling_at(&admin, &workloads, "0.5").await == DEPLOYMENTS).then_some(()) },
    )
    .await;
    harness::wait_policy(&admin, &policy_name, "Ready", |p| {
        harness::condition(p, "Ready").as_deref() == Some("True")
    })
    .await;

    // Resume A with its burst of ratio-0.1 writes pending.
    signal(&a, "-CONT");
    let status = support::wait_until("the old leader exits", Duration::from_secs(90), || {
        let status = a.exit_status();
        async move { status }
    })
    .await;
    let late_sampling: Vec<(String, Option<String>)> = harness::deployments(&admin, &workloads)
        .await
        .iter()
        .map(|d| (d.name_any(), sampling(d)))
        .collect();

    let writes = audit::writes().expect("the API server's audit log");
    let by = |user: &String| {
        let user = user.clone();
        writes.iter().filter(move |w| w.user == user)
    };
    let first_of_b = by(&user_b)
        .min_by_key(|w| w.received)
        .expect("the new leader's writes are in the audit log")
        .clone();
    assert_eq!(
        (first_of_b.verb.as_str(), first_of_b.resource.as_str()),
        ("update", "leases"),
        "the new leader's first write claims the Lease: {first_of_b}"
    );
    let earlier_of_a = by(&user_a)
        .filter(|w| w.resource == "deployments" && w.received < first_of_b.received)
        .count();
    assert!(
        earlier_of_a >= 1,
        "the audit log records the old leader's Deployment writes before the freeze"
    );
    // A renewal the freeze caught in flight may reach the server late; the
    // Lease's resourceVersion precondition rejects it (409), so it is no write.
    let late: Vec<String> = by(&user_a)
        .filter(|w| w.received >= first_of_b.received)
        .filter(|w| !(w.resource == "leases" && w.code == Some(409)))
        .map(ToString::to_string)
        .collect();
    println!(
        "leader frozen after {written_before_freeze}/{DEPLOYMENTS} Deployments; standby took over \
         {:.1}s later; old leader exited with {status}; {} writes by it after {first_of_b}",
        takeover.as_secs_f64(),
        late.len()
    );
    assert!(
        late.is_empty(),
        "no write by the old leader after the new leader's first ({first_of_b}):\n{}",
        late.join("\n")
    );
    assert!(
        late_sampling
            .iter()
            .all(|(_, ratio)| ratio.as_deref() == Some("0.5")),
        "the old leader overwrote none of the new leader's settings: {late_sampling:?}"
    );
    assert!(
        !status.success(),
        "the old leader exits non-zero: {status}\n{}",
        a.log()
    );
    // It did try: its pending writes were refused by its own fence.
    let log = a.log();
    assert!(log.contains("not the leader on Lease"), "{log}");
    assert!(log.contains("lost leadership"), "{log}");

    harness::delete_policy(&admin, &policy_name).await;
    let status = b.sigterm(Duration::from_secs(30)).await;
    assert!(status.success(), "the new leader stops cleanly: {status}");
}
