//! Tracing that survives a living cluster (issue 11): once a policy
//! (`progressDeadline: 20s`, `onFailure: Rollback`) has rolled out, what the
//! cluster and its users do next is theirs. A drain, a paused Deployment, an
//! `OnDelete` DaemonSet, a `kubectl set env`, unrelated churn, an image bump, a
//! scale-up that cannot schedule, the user's own broken release, a partitioned
//! StatefulSet and a Deployment scaled to zero: the operator reports each one,
//! never rolls back or restarts anything because of it, and writes nothing it
//! does not have to.
//!
//! The operator is the real binary. Most cases run it as users do, with
//! admission injection (the default: the operator writes pod-template
//! annotations, the API server adds the env to each pod); the `kubectl set env`
//! case that is about template env runs it with `--injection pod-template`. One
//! operator per mode serves every test that needs it (see [`operator`]); the two
//! never run at once, since both would reconcile every policy.
//!
//! Every operator write is counted from the API server's audit log, by its field
//! manager ([`support::operator_writes`]); every template change from the
//! workload controllers' own revision counts.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use harness::{
    OPERATOR_NAMESPACE, apply_policy, clear_policies, condition, delete_policy, install_crd,
    namespace, planned_env, policy, rolled_out, wait_deployment, wait_policy_within,
};
use support::nodes::DedicatedNode;
use support::operator_writes::{self, OperatorWrite};
use support::process::OperatorProcess;
use tracing_operator::api::TracingPolicy;

/// The issue's rollout settings.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(20);
/// How long past the progress deadline a test watches for a verdict that must not come.
const PAST_DEADLINE: Duration = Duration::from_secs(25);
/// The Deployment controller's count of pod templates it rolled out.
const REVISION: &str = "deployment.kubernetes.io/revision";
const NEVER_READY: &str = "testbed.caas.io/pods-never-ready";

// ------------------------------------------------------------ the operator

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Admission,
    PodTemplate,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Admission => "admission",
            Mode::PodTemplate => "pod-template",
        }
    }
}

#[derive(Default)]
struct Gate {
    running: Option<(Mode, OperatorProcess, support::Scratch)>,
    /// Tests holding the running operator.
    users: usize,
    /// Tests waiting for the other mode: no new test of the running mode starts
    /// meanwhile, so the switch happens as soon as the running ones finish.
    waiting: [usize; 2],
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    running: None,
    users: 0,
    waiting: [0, 0],
});
static GATE_CHANGED: Condvar = Condvar::new();

/// A test's hold on the operator of its mode; the operator stops when the last
/// holder lets go (a process of the test binary outliving it would go on
/// reconciling the next binary's policies).
struct Running {
    metrics_addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut gate = GATE.lock().unwrap_or_else(|e| e.into_inner());
        gate.users -= 1;
        if gate.users == 0 {
            gate.running = None;
        }
        GATE_CHANGED.notify_all();
    }
}

fn slot(mode: Mode) -> usize {
    match mode {
        Mode::Admission => 0,
        Mode::PodTemplate => 1,
    }
}

/// The operator binary in `mode`, started if no test holds it yet; waits while
/// tests of the other mode run.
async fn operator(mode: Mode) -> Running {
    let client = support::client().await;
    install_crd(&client).await;
    tokio::task::spawn_blocking(move || {
        let mut gate = GATE.lock().unwrap_or_else(|e| e.into_inner());
        gate.waiting[slot(mode)] += 1;
        loop {
            let same = gate.running.as_ref().is_some_and(|(m, ..)| *m == mode);
            let other_waits = gate.waiting[1 - slot(mode)] > 0;
            if gate.users == 0 || (same && !other_waits) {
                break;
            }
            gate = GATE_CHANGED.wait(gate).unwrap_or_else(|e| e.into_inner());
        }
        gate.waiting[slot(mode)] -= 1;
        if !gate.running.as_ref().is_some_and(|(m, ..)| *m == mode) {
            gate.running = None;
            let scratch = support::Scratch::new(&format!("cluster-life-{}", mode.flag()))
                .expect("scratch dir");
            let process = OperatorProcess::start(
                &format!("operator-{}", mode.flag()),
                scratch.path(),
                &support::kubeconfig(),
                &[
                    "--namespace",
                    OPERATOR_NAMESPACE,
                    "--injection",
                    mode.flag(),
                ],
                &[],
            );
            wait_ready(&process);
            gate.running = Some((mode, process, scratch));
        }
        gate.users += 1;
        let (_, process, _) = gate.running.as_ref().expect("an operator runs");
        Running {
            metrics_addr: process.metrics_addr,
        }
    })
    .await
    .expect("the operator gate")
}

fn wait_ready(process: &OperatorProcess) {
    let start = Instant::now();
    while !matches!(
        support::http_get(process.metrics_addr.port(), "/readyz"),
        Ok((200, ..))
    ) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} not ready within 120 s:\n{}",
            process.name,
            support::log_tail(&process.name, process.log_path())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Running {
    /// `tracing_operator_reconciles_total` of the running operator.
    fn reconciles(&self) -> u64 {
        let (_, _, body) =
            support::http_get(self.metrics_addr.port(), "/metrics").expect("operator /metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("tracing_operator_reconciles_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

// ------------------------------------------------------------ workloads

/// The policy of the issue: progressive, 20 s deadline, roll back on failure;
/// `spec` merged over it.
fn life_policy(name: &str, test: &str, spec: Value) -> TracingPolicy {
    let mut base = json!({"rollout": {"strategy": "Progressive", "progressDeadline": "20s", "onFailure": "Rollback"}});
    merge(&mut base, spec);
    policy(name, test, base)
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// A pod template with container `app` (image `registry.local/<name>:1.0`, the
/// user's own `LOG_LEVEL=info`), `extra` merged over its `spec`.
fn template(name: &str, extra: Value) -> Value {
    let mut spec = json!({"containers": [{
        "name": "app",
        "image": format!("registry.local/{name}:1.0"),
        "env": [{"name": "LOG_LEVEL", "value": "info"}]
    }]});
    merge(&mut spec, extra);
    json!({"metadata": {"labels": {"app": name}}, "spec": spec})
}

async fn create_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    pod_spec: Value,
) -> Deployment {
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, pod_spec)
        }
    }))
    .expect("deployment manifest");
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .expect("deployment created")
}

async fn deployment(client: &Client, ns: &str, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("deployment exists")
}

fn revision(d: &Deployment) -> Option<u32> {
    d.metadata.annotations.as_ref()?.get(REVISION)?.parse().ok()
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The highest `revision` among the ControllerRevisions `owner` (a StatefulSet or
/// DaemonSet) owns: it rises with every change of its pod template.
async fn controller_revision(client: &Client, ns: &str, owner: &str) -> i64 {
    Api::<ControllerRevision>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list controllerrevisions")
        .items
        .iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.name == owner))
        })
        .filter_map(|r| r.revision)
        .max()
        .unwrap_or(0)
}

/// What pods of a template get, whichever way the operator injects.
fn template_env(t: &PodTemplateSpec, container: &str) -> BTreeMap<String, String> {
    let as_deployment = Deployment {
        spec: k8s_openapi::api::apps::v1::DeploymentSpec {
            template: t.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    planned_env(&as_deployment, container)
}

/// The running (not terminating) pods labelled `app=<app>`.
async fn pods(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The env container `app` of a pod has (valueFrom entries as `<valueFrom>`).
fn pod_env(p: &Pod) -> BTreeMap<String, String> {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "app"))
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_else(|| "<valueFrom>".into())))
        .collect()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn status_of(p: &TracingPolicy) -> &tracing_operator::api::TracingPolicyStatus {
    p.status.as_ref().expect("the policy has a status")
}

fn message(p: &TracingPolicy, type_: &str) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| format!("{} {}: {}", c.status, c.reason, c.message))
        .unwrap_or_default()
}

fn ready_with(p: &TracingPolicy, up_to_date: i32) -> bool {
    condition(p, "Ready").as_deref() == Some("True")
        && status_of(p).workloads.up_to_date == up_to_date
}

/// How long a policy may take to get where a test waits for it. Generous: under
/// load, kube-controller-manager 1.37 fails a sync whose informer lags its own
/// write ("read version ... is not as new as written version") and backs it
/// off exponentially, so a controller can take a minute or more to observe a
/// generation.
const POLICY_WAIT: Duration = Duration::from_secs(180);

/// Waits until the policy's status describes its generation and `cond` holds;
/// on a timeout, fails with the last status seen.
async fn wait_for_policy<F>(client: &Client, name: &str, what: &str, cond: F) -> TracingPolicy
where
    F: Fn(&TracingPolicy) -> bool,
{
    let api: Api<TracingPolicy> = Api::all(client.clone());
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(p) = api.get(name).await {
            let observed = p
                .status
                .as_ref()
                .is_some_and(|s| s.observed_generation == p.metadata.generation);
            if observed && cond(&p) {
                return p;
            }
            last = Some(p);
        }
        assert!(
            start.elapsed() < POLICY_WAIT,
            "timed out after {POLICY_WAIT:?} waiting until TracingPolicy {name}: {what}; last status: {}",
            last.as_ref()
                .map(|p| serde_json::to_string_pretty(&p.status).unwrap_or_default())
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Ready with `n` of `n` workloads and nothing unavailable, waiting or failed.
async fn wait_settled(client: &Client, name: &str, n: i32) -> TracingPolicy {
    wait_for_policy(
        client,
        name,
        &format!("Ready {n}/{n}, nothing unavailable"),
        |p| {
            let s = status_of(p);
            ready_with(p, n)
                && s.workloads.selected == n
                && s.unavailable.is_empty()
                && s.waiting.is_empty()
                && s.failures.is_empty()
        },
    )
    .await
}

fn writes_to(resource: &str, ns: &str, name: &str) -> Vec<OperatorWrite> {
    operator_writes::to(resource, ns, name).expect("the audit log")
}

fn show(writes: &[OperatorWrite]) -> String {
    writes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Watches `what` for `window`, asserting `check` of the policy every second:
/// a verdict that must not come (a failure, a rollback) is looked for throughout.
async fn hold_for<F>(client: &Client, name: &str, window: Duration, what: &str, check: F)
where
    F: Fn(&TracingPolicy) -> Result<(), String>,
{
    let api: Api<TracingPolicy> = Api::all(client.clone());
    let start = Instant::now();
    while start.elapsed() < window {
        let p = api.get(name).await.expect("the policy");
        if let Err(why) = check(&p) {
            panic!(
                "after {:.0?} of {what}: {why}\nstatus: {}",
                start.elapsed(),
                serde_json::to_string_pretty(&p.status).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn no_failures(p: &TracingPolicy) -> Result<(), String> {
    let s = status_of(p);
    if !s.failures.is_empty() || s.workloads.failed > 0 {
        return Err(format!("failures: {:?}", s.failures));
    }
    Ok(())
}

fn listed<'a>(
    issues: &'a [tracing_operator::api::WorkloadIssue],
    name: &str,
) -> Option<&'a tracing_operator::api::WorkloadIssue> {
    issues.iter().find(|i| i.name == name)
}

// ------------------------------------------------------------ the cases

/// Row 1: nodes cordoned for a drain, one pod of a 2-replica Deployment deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_is_reported_unavailable_and_nothing_is_rolled_back() {
    let client = support::client().await;
    let test = "life-drain";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let node = DedicatedNode::create(&client, test).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    create_deployment(&client, &ns, "api", 2, node.pod_placement()).await;
    wait_deployment(&client, &ns, "api", "available", rolled_out).await;

    apply_policy(&client, &life_policy(test, test, json!({}))).await;
    wait_settled(&client, test, 1).await;
    let before = deployment(&client, &ns, "api").await;
    let writes_before = writes_to("deployments", &ns, "api");
    let traced = pods(&client, &ns, "api").await;
    assert_eq!(traced.len(), 2);
    assert!(
        traced
            .iter()
            .all(|p| pod_env(p).contains_key("OTEL_SERVICE_NAME"))
    );

    // The drain: no pod can be scheduled any more, and one is evicted.
    node.cordon();
    let victim = traced[0].name_any();
    support::kubectl_ok(&["delete", "pod", &victim, "-n", &ns, "--wait=false"]);
    let p = wait_for_policy(&client, test, "api reported unavailable", |p| {
        listed(&status_of(p).unavailable, "api").is_some()
    })
    .await;
    let s = status_of(&p);
    let issue = listed(&s.unavailable, "api").expect("listed");
    eprintln!(
        "drain: status.unavailable: {}: {}",
        issue.reason, issue.message
    );
    eprintln!("drain: Ready: {}", message(&p, "Ready"));
    assert_eq!(s.workloads.unavailable, 1);
    assert_eq!(
        s.workloads.up_to_date, 1,
        "still up to date: it carries the settings"
    );
    assert!(issue.message.contains("1/2"), "{}", issue.message);
    assert!(
        message(&p, "Ready").contains("unavailable for reasons of their own"),
        "{}",
        message(&p, "Ready")
    );

    // Past the progress deadline: still only reported.
    hold_for(&client, test, PAST_DEADLINE, "the drain", |p| {
        no_failures(p)?;
        if listed(&status_of(p).unavailable, "api").is_none() {
            return Err("api is no longer reported unavailable while a pod is Pending".into());
        }
        Ok(())
    })
    .await;
    let after = deployment(&client, &ns, "api").await;
    assert_eq!(revision(&after), revision(&before), "no template change");
    assert!(
        planned_env(&after, "app").contains_key("OTEL_SERVICE_NAME"),
        "tracing stays"
    );
    let writes = writes_to("deployments", &ns, "api");
    assert_eq!(
        writes.len(),
        writes_before.len(),
        "the operator wrote to api during the drain:\n  {}",
        show(&writes[writes_before.len()..])
    );
    eprintln!(
        "drain: {} operator writes to api in {PAST_DEADLINE:?} past the deadline, revision {:?} -> {:?}",
        writes.len() - writes_before.len(),
        revision(&before),
        revision(&after)
    );

    // The drain ends: the pod is scheduled and the policy is clear again.
    node.uncordon();
    wait_settled(&client, test, 1).await;
    let back = pods(&client, &ns, "api").await;
    assert!(
        back.iter()
            .all(|p| pod_env(p).contains_key("OTEL_SERVICE_NAME"))
    );
    delete_policy(&client, test).await;
}

/// Row 2: a Deployment with `spec.paused: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_waits_for_its_owner_without_holding_a_slot() {
    let client = support::client().await;
    let test = "life-paused";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    // `a-paused` comes first in the rollout order (namespace, kind, name).
    create_deployment(&client, &ns, "a-paused", 1, json!({})).await;
    create_deployment(&client, &ns, "b-ok", 1, json!({})).await;
    for name in ["a-paused", "b-ok"] {
        wait_deployment(&client, &ns, name, "available", rolled_out).await;
    }
    support::kubectl_ok(&["rollout", "pause", "deployment/a-paused", "-n", &ns]);

    let applied = Instant::now();
    apply_policy(
        &client,
        &life_policy(test, test, json!({"rollout": {"maxConcurrent": 1}})),
    )
    .await;
    let p = wait_for_policy(&client, test, "b-ok rolled out, a-paused waiting", |p| {
        let s = status_of(p);
        s.workloads.up_to_date == 1 && listed(&s.waiting, "a-paused").is_some()
    })
    .await;
    let s = status_of(&p);
    let waiting = listed(&s.waiting, "a-paused").expect("listed");
    eprintln!(
        "paused: status.waiting: {}: {}",
        waiting.reason, waiting.message
    );
    eprintln!("paused: Progressing: {}", message(&p, "Progressing"));
    assert_eq!(waiting.reason, "WaitingForOwner");
    assert!(
        waiting.message.contains("spec.paused"),
        "{}",
        waiting.message
    );
    assert_eq!((s.workloads.waiting, s.workloads.rolling_out), (1, 0));
    let b = deployment(&client, &ns, "b-ok").await;
    assert!(planned_env(&b, "app").contains_key("OTEL_SERVICE_NAME"));
    assert_eq!(
        revision(&b),
        Some(2),
        "b-ok rolled once while a-paused waited"
    );

    // Past the deadline (counted from the policy's apply): waiting, not failed.
    let left = (PROGRESS_DEADLINE + Duration::from_secs(5)).saturating_sub(applied.elapsed());
    hold_for(&client, test, left, "a-paused staying paused", |p| {
        no_failures(p)?;
        if listed(&status_of(p).waiting, "a-paused").is_none() {
            return Err("a-paused left status.waiting while still paused".into());
        }
        Ok(())
    })
    .await;
    let a = deployment(&client, &ns, "a-paused").await;
    assert!(!planned_env(&a, "app").contains_key("OTEL_SERVICE_NAME"));
    assert_eq!(revision(&a), Some(1));
    let writes = writes_to("deployments", &ns, "a-paused");
    assert!(
        writes.is_empty(),
        "wrote to a paused Deployment:\n  {}",
        show(&writes)
    );

    // Its owner resumes it: instrumented once.
    support::kubectl_ok(&["rollout", "resume", "deployment/a-paused", "-n", &ns]);
    wait_settled(&client, test, 2).await;
    let a = deployment(&client, &ns, "a-paused").await;
    assert!(planned_env(&a, "app").contains_key("OTEL_SERVICE_NAME"));
    assert_eq!(revision(&a), Some(2), "one template change for tracing");
    let a_pods = pods(&client, &ns, "a-paused").await;
    assert!(
        a_pods
            .iter()
            .all(|p| pod_env(p).contains_key("OTEL_SERVICE_NAME"))
    );
    eprintln!(
        "paused: after the resume, {} operator writes to a-paused, revision 1 -> {:?}",
        writes_to("deployments", &ns, "a-paused").len(),
        revision(&a)
    );
    delete_policy(&client, test).await;
}

/// Row 3: a DaemonSet with `updateStrategy: OnDelete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_delete_daemonset_is_complete_once_observed_and_reports_its_old_pods() {
    let client = support::client().await;
    let test = "life-ondelete";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "OnDelete"},
            "template": template("agent", json!({}))
        }
    }))
    .expect("daemonset manifest");
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &ds)
        .await
        .expect("daemonset created");
    let nodes = support::wait_until("agent runs on every node", Duration::from_secs(90), || {
        let api = api.clone();
        async move {
            let s = api.get("agent").await.ok()?.status?;
            (s.desired_number_scheduled > 0
                && s.number_available == Some(s.desired_number_scheduled))
            .then_some(s.desired_number_scheduled)
        }
    })
    .await;
    let old_pods: Vec<String> = pods(&client, &ns, "agent")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();

    let applied = Instant::now();
    apply_policy(&client, &life_policy(test, test, json!({}))).await;
    let p = wait_settled(&client, test, 1).await;
    eprintln!(
        "OnDelete: Ready after {:.1?}: {}",
        applied.elapsed(),
        message(&p, "Ready")
    );
    let agent = api.get("agent").await.expect("agent");
    let hash = annotation(&agent.metadata, "tracing.caas.io/config-hash").expect("config hash");
    assert_eq!(
        annotation(&agent.metadata, "tracing.caas.io/rolled-out"),
        Some(hash)
    );
    assert!(template_env(&agent.spec.template, "app").contains_key("OTEL_SERVICE_NAME"));
    // Its pods stay as they are until their owner deletes them, and status says so.
    let now: Vec<String> = pods(&client, &ns, "agent")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(now, old_pods, "the operator replaced no pod");
    let ready = message(&p, "Ready");
    assert!(
        ready.contains(&format!("{nodes} still on the previous template")),
        "Ready names the pods on the old template: {ready}"
    );

    let writes_before = writes_to("daemonsets", &ns, "agent");
    hold_for(
        &client,
        test,
        (PROGRESS_DEADLINE + Duration::from_secs(5)).saturating_sub(applied.elapsed()),
        "an OnDelete DaemonSet with its old pods",
        no_failures,
    )
    .await;
    let writes = writes_to("daemonsets", &ns, "agent");
    assert_eq!(writes.len(), writes_before.len(), "{}", show(&writes));
    assert_eq!(
        controller_revision(&client, &ns, "agent").await,
        2,
        "one template change"
    );

    // The owner deletes a pod: its replacement carries tracing.
    support::kubectl_ok(&["delete", "pod", &old_pods[0], "-n", &ns, "--wait=false"]);
    let fresh = support::wait_until("a new agent pod", Duration::from_secs(60), || {
        let client = client.clone();
        let ns = ns.clone();
        let old = old_pods.clone();
        async move {
            pods(&client, &ns, "agent")
                .await
                .into_iter()
                .find(|p| !old.contains(&p.name_any()))
        }
    })
    .await;
    assert!(
        pod_env(&fresh).contains_key("OTEL_SERVICE_NAME"),
        "{:?}",
        pod_env(&fresh)
    );
    delete_policy(&client, test).await;
}

/// Row 4, template env: `kubectl set env deploy/x OTEL_TRACES_SAMPLER_ARG=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_set_env_wins_over_the_template_env_and_is_not_fought() {
    let client = support::client().await;
    let test = "life-setenv";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::PodTemplate).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    for name in ["x", "y"] {
        create_deployment(&client, &ns, name, 1, json!({})).await;
    }
    for name in ["x", "y"] {
        wait_deployment(&client, &ns, name, "available", rolled_out).await;
    }
    // No tail rules: the ratio is the head sampler's argument.
    let spec = |ratio: f64, environment: &str| json!({"sampling": {"ratio": ratio}, "service": {"environment": environment}});
    apply_policy(&client, &life_policy(test, test, spec(0.1, "staging"))).await;
    wait_settled(&client, test, 2).await;
    let x = deployment(&client, &ns, "x").await;
    assert_eq!(
        planned_env(&x, "app")
            .get("OTEL_TRACES_SAMPLER_ARG")
            .map(String::as_str),
        Some("0.1")
    );

    let writes_before = writes_to("deployments", &ns, "x");
    let set_at = Instant::now();
    support::kubectl_ok(&[
        "set",
        "env",
        "deployment/x",
        "-n",
        &ns,
        "OTEL_TRACES_SAMPLER_ARG=1",
    ]);
    let p = wait_for_policy(&client, test, "the override listed and Ready 2/2", |p| {
        let s = status_of(p);
        ready_with(p, 2)
            && s.user_overrides.iter().any(|o| {
                o.name == "x" && o.container == "app" && o.variable == "OTEL_TRACES_SAMPLER_ARG"
            })
    })
    .await;
    eprintln!(
        "set env: status.userOverrides: {:?}",
        status_of(&p).user_overrides
    );
    eprintln!("set env: Ready: {}", message(&p, "Ready"));
    wait_deployment(&client, &ns, "x", "the user's rollout done", rolled_out).await;
    let handover = writes_to("deployments", &ns, "x");
    let settled = handover.len();
    eprintln!(
        "set env: operator writes to x within {:.1?} of kubectl set env: {}\n  {}",
        set_at.elapsed(),
        settled - writes_before.len(),
        show(&handover[writes_before.len()..])
    );
    assert!(
        handover.iter().all(|w| w.code.is_some_and(|c| c < 300)),
        "refused writes:\n  {}",
        show(&handover)
    );

    // Then nothing, however long: no retry loop against the user's value.
    let window = Duration::from_secs(30);
    hold_for(&client, test, window, "the user's override", |p| {
        no_failures(p)?;
        if !ready_with(p, 2) {
            return Err("not Ready 2/2".into());
        }
        Ok(())
    })
    .await;
    let writes = writes_to("deployments", &ns, "x");
    eprintln!(
        "set env: operator applies to x in the {window:?} after it settled: {}",
        writes.len() - settled
    );
    assert_eq!(writes.len(), settled, "{}", show(&writes[settled..]));
    let x = deployment(&client, &ns, "x").await;
    let env = planned_env(&x, "app");
    assert_eq!(
        env.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str),
        Some("1"),
        "the user wins"
    );
    assert!(
        env.contains_key("OTEL_SERVICE_NAME"),
        "the rest stays: {env:?}"
    );
    assert_eq!(
        revision(&x),
        Some(3),
        "created, traced, the user's set env: nothing of ours on top"
    );

    // A policy change still reaches x's other settings, never its user's value.
    apply_policy(&client, &life_policy(test, test, spec(0.5, "production"))).await;
    let p = wait_settled(&client, test, 2).await;
    assert_eq!(p.metadata.generation, Some(2));
    let x = deployment(&client, &ns, "x").await;
    let y = deployment(&client, &ns, "y").await;
    let (xe, ye) = (planned_env(&x, "app"), planned_env(&y, "app"));
    assert_eq!(
        xe.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str),
        Some("1")
    );
    assert!(
        xe.get("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.contains("production")),
        "{xe:?}"
    );
    assert_eq!(
        ye.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str),
        Some("0.5")
    );
    assert_eq!(
        revision(&x),
        Some(4),
        "one template change for the policy change"
    );
    assert_eq!(revision(&y), Some(3));
    assert_eq!(xe.get("LOG_LEVEL").map(String::as_str), Some("info"));
    delete_policy(&client, test).await;
}

/// Row 4, admission: the same `kubectl set env` on a workload whose pods get
/// tracing at admission causes no operator write at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_set_env_on_an_admission_injected_workload_causes_no_operator_write() {
    let client = support::client().await;
    let test = "life-setenv-adm";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    create_deployment(&client, &ns, "x", 2, json!({})).await;
    wait_deployment(&client, &ns, "x", "available", rolled_out).await;
    apply_policy(
        &client,
        &life_policy(test, test, json!({"sampling": {"ratio": 0.1}})),
    )
    .await;
    wait_settled(&client, test, 1).await;
    let writes_before = writes_to("deployments", &ns, "x");

    let set_at = Instant::now();
    support::kubectl_ok(&[
        "set",
        "env",
        "deployment/x",
        "-n",
        &ns,
        "OTEL_TRACES_SAMPLER_ARG=1",
    ]);
    let p = wait_for_policy(&client, test, "the override listed", |p| {
        status_of(p)
            .user_overrides
            .iter()
            .any(|o| o.name == "x" && o.variable == "OTEL_TRACES_SAMPLER_ARG")
    })
    .await;
    eprintln!(
        "set env (admission): status.userOverrides: {:?}",
        status_of(&p).user_overrides
    );
    let window = Duration::from_secs(30);
    hold_for(
        &client,
        test,
        window.saturating_sub(set_at.elapsed()),
        "the user's override",
        no_failures,
    )
    .await;
    let x = wait_deployment(&client, &ns, "x", "the user's rollout done", rolled_out).await;
    wait_settled(&client, test, 1).await;
    let writes = writes_to("deployments", &ns, "x");
    eprintln!(
        "set env (admission): operator writes to x in the {:.0?} after kubectl set env: {}",
        set_at.elapsed(),
        writes.len() - writes_before.len()
    );
    assert_eq!(
        writes.len(),
        writes_before.len(),
        "{}",
        show(&writes[writes_before.len()..])
    );
    assert_eq!(revision(&x), Some(3), "created, traced, the user's set env");
    for pod in pods(&client, &ns, "x").await {
        let env = pod_env(&pod);
        assert_eq!(
            env.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str),
            Some("1"),
            "{env:?}"
        );
        assert!(env.contains_key("OTEL_SERVICE_NAME"), "{env:?}");
    }
    delete_policy(&client, test).await;
}

/// Row 5: a policy change under continuous unrelated churn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_reaches_its_workloads_at_once_under_unrelated_churn() {
    let client = support::client().await;
    let test = "life-churn";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    let unrelated = support::fresh_namespace(&client, "life-churn-unselected", &[]).await;
    cleanup.namespaces.push(unrelated.clone());
    let names: Vec<String> = (0..5).map(|i| format!("svc-{i}")).collect();
    for name in &names {
        create_deployment(&client, &ns, name, 1, json!({})).await;
    }
    create_deployment(&client, &unrelated, "noisy", 1, json!({})).await;
    for name in &names {
        wait_deployment(&client, &ns, name, "available", rolled_out).await;
    }
    apply_policy(
        &client,
        &life_policy(test, test, json!({"sampling": {"ratio": 0.1}})),
    )
    .await;
    wait_settled(&client, test, 5).await;

    // 5 events a second on a Deployment no policy selects.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let noisy: Api<Deployment> = Api::namespaced(client.clone(), &unrelated);
    let churn = tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return n,
            }
            let patch = json!({"metadata": {"annotations": {"churn.example/tick": n.to_string()}}});
            noisy
                .patch("noisy", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("annotate the unrelated Deployment");
            n += 1;
        }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reconciles_before = operator.reconciles();

    let changed = Instant::now();
    apply_policy(
        &client,
        &life_policy(test, test, json!({"sampling": {"ratio": 0.5}})),
    )
    .await;
    let ns_ = ns.clone();
    // The liveness bound is the policy's own progress deadline (the issue saw 40 s).
    let reached = support::wait_until(
        "the new ratio is on all 5 workloads",
        PROGRESS_DEADLINE,
        || {
            let client = client.clone();
            let ns = ns_.clone();
            async move {
                let all = harness::deployments(&client, &ns).await;
                let done = all
                    .iter()
                    .filter(|d| {
                        planned_env(d, "app")
                            .get("OTEL_TRACES_SAMPLER_ARG")
                            .map(String::as_str)
                            == Some("0.5")
                    })
                    .count();
                (done == 5).then(|| changed.elapsed())
            }
        },
    )
    .await;
    let p = wait_policy_within(
        &client,
        test,
        "Ready 5/5 with the new ratio",
        PROGRESS_DEADLINE * 2,
        |p| p.metadata.generation == Some(2) && ready_with(p, 5),
    )
    .await;
    let ready_after = changed.elapsed();
    let reconciles = operator.reconciles() - reconciles_before;
    let _ = stop.send(true);
    let ticks = churn.await.expect("churn task");
    let churn_rate = ticks as f64 / (ready_after.as_secs_f64() + 5.0);
    eprintln!(
        "churn: sampling.ratio change reached 5/5 workloads in {:.2}s, policy Ready in {:.2}s, \
         under {churn_rate:.1} unrelated events/s ({ticks} annotations); {reconciles} reconciles meanwhile",
        reached.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    assert!(churn_rate >= 4.0, "the churn ran at {churn_rate:.1}/s");
    assert_eq!(status_of(&p).workloads.selected, 5);
    for d in harness::deployments(&client, &ns).await {
        assert_eq!(
            revision(&d),
            Some(3),
            "{}: traced, then the new ratio",
            d.name_any()
        );
    }
    delete_policy(&client, test).await;
}

/// Row 6: `kubectl set image` of an instrumented Deployment (admission).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_bump_is_one_rollout_and_its_pods_carry_the_new_version() {
    let client = support::client().await;
    let test = "life-image";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    create_deployment(&client, &ns, "shop", 2, json!({})).await;
    wait_deployment(&client, &ns, "shop", "available", rolled_out).await;
    apply_policy(&client, &life_policy(test, test, json!({}))).await;
    wait_settled(&client, test, 1).await;
    let version_of = |p: &Pod| {
        pod_env(p)
            .get("OTEL_RESOURCE_ATTRIBUTES")
            .and_then(|a| {
                a.split(',')
                    .find_map(|kv| kv.strip_prefix("service.version="))
            })
            .map(str::to_string)
    };
    for p in pods(&client, &ns, "shop").await {
        assert_eq!(version_of(&p).as_deref(), Some("1.0"), "{:?}", pod_env(&p));
    }
    let before = deployment(&client, &ns, "shop").await;
    assert_eq!(revision(&before), Some(2));
    let writes_before = writes_to("deployments", &ns, "shop");

    support::kubectl_ok(&[
        "set",
        "image",
        "deployment/shop",
        "-n",
        &ns,
        "app=registry.local/shop:1.1",
    ]);
    wait_deployment(&client, &ns, "shop", "the new image rolled out", |d| {
        rolled_out(d) && revision(d) == Some(3)
    })
    .await;
    let bumped = support::wait_until("only new pods left", Duration::from_secs(60), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let all = pods(&client, &ns, "shop").await;
            let new = all.iter().all(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers[0].image.as_deref() == Some("registry.local/shop:1.1")
                })
            });
            (all.len() == 2 && new).then_some(all)
        }
    })
    .await;
    for p in &bumped {
        assert_eq!(version_of(p).as_deref(), Some("1.1"), "{:?}", pod_env(p));
    }
    wait_settled(&client, test, 1).await;
    // Settled, and it stays so: no rollout of the operator's follows the user's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = deployment(&client, &ns, "shop").await;
    let writes = writes_to("deployments", &ns, "shop");
    eprintln!(
        "image bump: revision {:?} -> {:?}, {} operator writes after the bump, pods report service.version={:?}",
        revision(&before),
        revision(&after),
        writes.len() - writes_before.len(),
        bumped.iter().map(version_of).collect::<Vec<_>>()
    );
    assert_eq!(
        revision(&after),
        Some(3),
        "exactly one new template revision"
    );
    assert_eq!(
        writes.len(),
        writes_before.len(),
        "{}",
        show(&writes[writes_before.len()..])
    );
    delete_policy(&client, test).await;
}

/// A scale-up after the rollout whose new pods cannot become Ready (every node
/// it may use is cordoned, so they stay Pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_that_cannot_become_ready_is_unavailable_never_failed() {
    let client = support::client().await;
    let test = "life-scaleup";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let node = DedicatedNode::create(&client, test).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    create_deployment(&client, &ns, "web", 1, node.pod_placement()).await;
    wait_deployment(&client, &ns, "web", "available", rolled_out).await;
    apply_policy(&client, &life_policy(test, test, json!({}))).await;
    wait_settled(&client, test, 1).await;
    let before = deployment(&client, &ns, "web").await;
    let writes_before = writes_to("deployments", &ns, "web");

    node.cordon();
    support::kubectl_ok(&["scale", "deployment/web", "-n", &ns, "--replicas=3"]);
    let p = wait_for_policy(&client, test, "web reported unavailable", |p| {
        listed(&status_of(p).unavailable, "web").is_some()
    })
    .await;
    let issue = listed(&status_of(&p).unavailable, "web").expect("listed");
    eprintln!(
        "scale-up: status.unavailable: {}: {}",
        issue.reason, issue.message
    );
    assert!(issue.message.contains("1/3"), "{}", issue.message);
    hold_for(&client, test, PAST_DEADLINE, "the stuck scale-up", |p| {
        no_failures(p)?;
        if listed(&status_of(p).unavailable, "web").is_none() {
            return Err("web left status.unavailable with 2 pods Pending".into());
        }
        Ok(())
    })
    .await;
    let after = deployment(&client, &ns, "web").await;
    assert_eq!(revision(&after), revision(&before));
    assert!(planned_env(&after, "app").contains_key("OTEL_SERVICE_NAME"));
    let writes = writes_to("deployments", &ns, "web");
    assert_eq!(
        writes.len(),
        writes_before.len(),
        "{}",
        show(&writes[writes_before.len()..])
    );

    node.uncordon();
    wait_settled(&client, test, 1).await;
    let all = pods(&client, &ns, "web").await;
    assert_eq!(all.len(), 3);
    assert!(
        all.iter()
            .all(|p| pod_env(p).contains_key("OTEL_SERVICE_NAME"))
    );
    delete_policy(&client, test).await;
}

/// The user's own broken release after the operator's rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_own_broken_release_is_reported_and_not_rolled_back() {
    let client = support::client().await;
    let test = "life-release";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    create_deployment(&client, &ns, "cart", 2, json!({})).await;
    wait_deployment(&client, &ns, "cart", "available", rolled_out).await;
    apply_policy(&client, &life_policy(test, test, json!({}))).await;
    wait_settled(&client, test, 1).await;
    let writes_before = writes_to("deployments", &ns, "cart");

    // The user's release: its pods never become Ready.
    let patch = json!({"spec": {"template": {"metadata": {"labels": {NEVER_READY: "true"}}}}});
    support::kubectl_ok(&[
        "patch",
        "deployment/cart",
        "-n",
        &ns,
        "-p",
        &patch.to_string(),
    ]);
    let p = wait_for_policy(&client, test, "cart reported unavailable", |p| {
        listed(&status_of(p).unavailable, "cart").is_some()
    })
    .await;
    let issue = listed(&status_of(&p).unavailable, "cart").expect("listed");
    eprintln!(
        "broken release: status.unavailable: {}: {}",
        issue.reason, issue.message
    );
    eprintln!("broken release: Ready: {}", message(&p, "Ready"));
    hold_for(
        &client,
        test,
        PAST_DEADLINE,
        "the user's broken release",
        |p| {
            no_failures(p)?;
            if listed(&status_of(p).unavailable, "cart").is_none() {
                return Err("cart left status.unavailable".into());
            }
            Ok(())
        },
    )
    .await;
    let cart = deployment(&client, &ns, "cart").await;
    assert_eq!(
        revision(&cart),
        Some(3),
        "created, traced, the user's release"
    );
    assert!(
        planned_env(&cart, "app").contains_key("OTEL_SERVICE_NAME"),
        "no rollback"
    );
    assert!(annotation(&cart.metadata, "tracing.caas.io/rollout-failed").is_none());
    let writes = writes_to("deployments", &ns, "cart");
    assert_eq!(
        writes.len(),
        writes_before.len(),
        "{}",
        show(&writes[writes_before.len()..])
    );
    delete_policy(&client, test).await;
}

/// A StatefulSet with `updateStrategy.rollingUpdate.partition: 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_statefulset_is_complete_when_the_replicas_above_the_partition_are() {
    let client = support::client().await;
    let test = "life-partition";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db",
            "replicas": 3,
            "selector": {"matchLabels": {"app": "db"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
            "template": template("db", json!({}))
        }
    }))
    .expect("statefulset manifest");
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &sts)
        .await
        .expect("statefulset created");
    support::wait_until("db has 3 ready replicas", Duration::from_secs(90), || {
        let api = api.clone();
        async move { (api.get("db").await.ok()?.status?.ready_replicas == Some(3)).then_some(()) }
    })
    .await;

    let applied = Instant::now();
    apply_policy(&client, &life_policy(test, test, json!({}))).await;
    let p = wait_settled(&client, test, 1).await;
    eprintln!(
        "partition: Ready after {:.1?}: {}",
        applied.elapsed(),
        message(&p, "Ready")
    );
    let db = api.get("db").await.expect("db");
    let hash = annotation(&db.metadata, "tracing.caas.io/config-hash").expect("config hash");
    assert_eq!(
        annotation(&db.metadata, "tracing.caas.io/rolled-out"),
        Some(hash)
    );
    let status = db.status.clone().expect("status");
    eprintln!(
        "partition: updatedReplicas {:?}, readyReplicas {:?}, currentRevision {:?}, updateRevision {:?}",
        status.updated_replicas,
        status.ready_replicas,
        status.current_revision,
        status.update_revision
    );
    let by_name: BTreeMap<String, Pod> = pods(&client, &ns, "db")
        .await
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    for (name, traced) in [("db-0", false), ("db-1", true), ("db-2", true)] {
        let pod = by_name.get(name).unwrap_or_else(|| panic!("{name} exists"));
        assert!(pod_ready(pod), "{name} ready");
        assert_eq!(
            pod_env(pod).contains_key("OTEL_SERVICE_NAME"),
            traced,
            "{name}: replicas at or above the partition carry tracing, below it not"
        );
    }
    hold_for(
        &client,
        test,
        (PROGRESS_DEADLINE + Duration::from_secs(5)).saturating_sub(applied.elapsed()),
        "db-0 below the partition",
        no_failures,
    )
    .await;
    assert_eq!(
        controller_revision(&client, &ns, "db").await,
        2,
        "one template change"
    );
    delete_policy(&client, test).await;
}

/// A Deployment scaled to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_scaled_to_zero_is_complete_at_once() {
    let client = support::client().await;
    let test = "life-zero";
    let mut cleanup = support::Cleanup::new(&[test], &[]);
    let _operator = operator(Mode::Admission).await;
    clear_policies(&client, &[test]).await;
    let ns = namespace(&client, test, &[]).await;
    cleanup.namespaces.push(ns.clone());
    create_deployment(&client, &ns, "idle", 0, json!({})).await;
    wait_deployment(&client, &ns, "idle", "observed", |d| {
        d.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == d.metadata.generation)
    })
    .await;
    let applied = Instant::now();
    apply_policy(&client, &life_policy(test, test, json!({}))).await;
    let p = wait_settled(&client, test, 1).await;
    eprintln!(
        "scaled to 0: Ready after {:.1?}: {}",
        applied.elapsed(),
        message(&p, "Ready")
    );
    let idle = deployment(&client, &ns, "idle").await;
    let hash = annotation(&idle.metadata, "tracing.caas.io/config-hash").expect("config hash");
    assert_eq!(
        annotation(&idle.metadata, "tracing.caas.io/rolled-out"),
        Some(hash)
    );
    assert!(planned_env(&idle, "app").contains_key("OTEL_SERVICE_NAME"));
    assert_eq!(revision(&idle), Some(2));
    // Scaled up later, its pods carry tracing.
    support::kubectl_ok(&["scale", "deployment/idle", "-n", &ns, "--replicas=1"]);
    wait_deployment(&client, &ns, "idle", "scaled up", rolled_out).await;
    for pod in pods(&client, &ns, "idle").await {
        assert!(pod_env(&pod).contains_key("OTEL_SERVICE_NAME"));
    }
    assert_eq!(revision(&deployment(&client, &ns, "idle").await), Some(2));
    delete_policy(&client, test).await;
}
