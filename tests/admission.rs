//! Admission injection (the default where the API server serves
//! MutatingAdmissionPolicy) on the testbed, with the real operator binary
//! (`--injection auto`): the operator writes only pod-template annotations and
//! the API server's MutatingAdmissionPolicy adds the env when each pod is
//! created. kwok pods are real API objects, so admission runs for real.
//!
//! Every test runs its own operator process, one at a time ([`SERIAL`]): two
//! operators would both reconcile every policy.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::MutexGuard;

use harness::{condition, delete_policy, wait_deployment, wait_policy};
use support::injection::{
    ADMISSION_POLICY, container, env_names, env_value, otel_names, pods, process_env,
    references_resolve, resource_attributes, wait_admission,
};
use support::process::OperatorProcess;
use support::tools::{argocd_health, helm4, kstatus};
use support::{Cleanup, Scratch};
use tracing_operator::api::{
    CONFIG_HASH_ANNOTATION, ENV_NAMES_ANNOTATION, ENV_VALUE_PREFIX, INJECT_ANNOTATION,
    INJECTION_ANNOTATION, ROLLED_OUT_ANNOTATION, TracingPolicy,
};

/// Held by every test for its whole run (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The namespace the operator processes believe they run in (never instrumented).
const OPERATOR_NAMESPACE: &str = "tracing-operator-admission";

/// One test's operator process, its namespaces and policies. Fields drop in
/// order: the operator is stopped first, then what the test created is
/// removed, then the next test may start.
struct Case {
    client: Client,
    /// The label value of this test's namespaces (see `harness::test_label`).
    test: String,
    operator: Option<OperatorProcess>,
    cleanup: Cleanup,
    scratch: Scratch,
    _serial: MutexGuard<'static, ()>,
}

impl Case {
    /// Takes the turn, installs the CRD, starts the operator with `args` (after
    /// `--namespace`) and waits until it is ready.
    async fn start(test: &str, args: &[&str]) -> Case {
        let serial = SERIAL.lock().await;
        let client = support::client().await;
        harness::install_crd(&client).await;
        let scratch = Scratch::new(&format!("admission-{test}")).expect("scratch dir");
        let mut case = Case {
            client,
            test: test.to_string(),
            operator: None,
            cleanup: Cleanup::default(),
            scratch,
            _serial: serial,
        };
        case.restart_operator("operator", args).await;
        case
    }

    /// Stops the running operator (if any) and starts a new one named `name` with `args`.
    async fn restart_operator(&mut self, name: &str, args: &[&str]) {
        drop(self.operator.take());
        let mut all = vec!["--namespace", OPERATOR_NAMESPACE];
        all.extend_from_slice(args);
        let operator =
            OperatorProcess::start(name, self.scratch.path(), &support::kubeconfig(), &all, &[]);
        let port = operator.metrics_addr.port();
        support::wait_until(
            &format!("{name} is ready"),
            Duration::from_secs(90),
            || async move {
                matches!(support::http_get(port, "/readyz"), Ok((200, _, _))).then_some(())
            },
        )
        .await;
        self.operator = Some(operator);
        // A new admission policy takes a moment to be enforced; pods created
        // before it would rightly miss their variables.
        if !args.iter().any(|a| a.contains("pod-template")) {
            support::admission::wait_injection_enforced(&self.client, "default").await;
        }
    }

    fn operator(&self) -> &OperatorProcess {
        self.operator.as_ref().expect("an operator runs")
    }

    /// A namespace labelled for this test (removed afterwards).
    async fn namespace(&mut self) -> String {
        let ns = harness::namespace(&self.client, &self.test, &[]).await;
        self.cleanup.namespaces.push(ns.clone());
        ns
    }

    /// Applies a policy named `<name>-<suffix>` selecting this test's namespaces,
    /// with `spec` merged over the harness defaults (collector off, Immediate).
    async fn policy(&mut self, name: &str, spec: Value) -> String {
        let name = support::unique(name);
        harness::apply_policy(&self.client, &harness::policy(&name, &self.test, spec)).await;
        self.cleanup.policies.push(name.clone());
        name
    }

    /// `tracing_operator_reconciles_total` of the running operator.
    fn reconciles(&self) -> u64 {
        let (_, _, body) = support::http_get(self.operator().metrics_addr.port(), "/metrics")
            .expect("operator /metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("tracing_operator_reconciles_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// Makes the operator reconcile every policy (a namespace label change does)
    /// and waits until it has, plus a moment for what it would write: `after`
    /// names the change it looked at.
    async fn wait_reconciled(&self, ns: &str, after: &str) {
        let seen = self.reconciles();
        support::kubectl_ok(&["label", "namespace", ns, "poke=1", "--overwrite"]);
        support::wait_until(
            &format!("the operator reconciles after {after}"),
            Duration::from_secs(30),
            || async { (self.reconciles() > seen).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Runs `cmd` (shown as `$ shown`, with `stdin` piped in when given), prints the
/// command and what it printed, and returns its output.
fn shown(cmd: &mut Command, shown: &str, stdin: Option<&str>) -> Output {
    println!("$ {shown}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("command runs");
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("  {line}");
    }
    println!("  (exit {})", out.status.code().unwrap_or(-1));
    out
}

fn create<K>(client: &Client, ns: &str, manifest: Value) -> impl std::future::Future<Output = K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    async move {
        let object: K = serde_json::from_value(manifest).expect("manifest");
        api.create(&PostParams::default(), &object)
            .await
            .expect("object created")
    }
}

/// A Deployment of `replicas` pods labelled `app: <name>` with `template_labels`,
/// `containers` (JSON) and `extra` merged into its pod spec.
fn deployment(name: &str, replicas: i32, containers: Value, pod_labels: Value) -> Value {
    let mut labels = json!({"app": name});
    if let (Some(l), Some(extra)) = (labels.as_object_mut(), pod_labels.as_object()) {
        l.extend(extra.clone());
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": containers}
            }
        }
    })
}

fn annotation<'a>(map: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.and_then(|a| a.get(key)).map(String::as_str)
}

fn template_annotations(d: &Deployment) -> Option<&BTreeMap<String, String>> {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
}

fn container_names(d: &Deployment) -> Vec<String> {
    d.spec
        .template
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// The template carries a plan for `containers`, the Deployment rolled out and
/// the operator recorded that rollout (after checking a pod, see `controller::verify`).
fn instrumented_for(d: &Deployment, containers: &str) -> bool {
    let meta = d.metadata.annotations.as_ref();
    annotation(template_annotations(d), INJECT_ANNOTATION) == Some(containers)
        && harness::rolled_out(d)
        && annotation(meta, CONFIG_HASH_ANNOTATION).is_some()
        && annotation(meta, ROLLED_OUT_ANNOTATION) == annotation(meta, CONFIG_HASH_ANNOTATION)
}

async fn wait_instrumented(client: &Client, ns: &str, name: &str, containers: &str) -> Deployment {
    wait_deployment(
        client,
        ns,
        name,
        &format!("instrumented for {containers}, rolled out and recorded"),
        |d| instrumented_for(d, containers),
    )
    .await
}

/// The pods of the Deployment's current revision, once there are as many as
/// it wants and none of an older revision is left.
async fn current_pods(client: &Client, ns: &str, name: &str) -> Vec<Pod> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), ns);
    support::wait_until(
        &format!("the pods of {ns}/{name}'s current revision"),
        Duration::from_secs(90),
        || {
            let (deployments, sets) = (deployments.clone(), sets.clone());
            async move {
                let d = deployments.get(name).await.ok()?;
                let revision = d.annotations().get("deployment.kubernetes.io/revision")?;
                let want = usize::try_from(d.spec.replicas.unwrap_or(1)).ok()?;
                let rs = sets
                    .list(&ListParams::default().labels(&format!("app={name}")))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|rs| {
                        rs.annotations().get("deployment.kubernetes.io/revision") == Some(revision)
                    })?;
                let hash = rs.labels().get("pod-template-hash")?.clone();
                let all = pods(client, ns, &format!("app={name}")).await;
                let current: Vec<Pod> = all
                    .iter()
                    .filter(|p| p.labels().get("pod-template-hash") == Some(&hash))
                    .cloned()
                    .collect();
                (current.len() == want && all.len() == want).then_some(current)
            }
        },
    )
    .await
}

/// The planned variable names of the pod's plan, in order (`tracing.caas.io/env`).
fn planned_names(pod: &Pod) -> Vec<String> {
    annotation(pod.metadata.annotations.as_ref(), ENV_NAMES_ANNOTATION)
        .unwrap_or_else(|| panic!("pod {} carries no {ENV_NAMES_ANNOTATION}", pod.name_any()))
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Checks one selected container of `pod`: its own entries `own` first and
/// unchanged, then every planned variable it does not set itself, in the
/// planned order, each `$(VAR)` resolving; the literal values as the plan's
/// annotations carry them; the resource attributes naming this pod, its node,
/// the container and `version`.
fn assert_injected(pod: &Pod, name: &str, own: &[(&str, &str)], version: &str) {
    let c = container(pod, name);
    let planned = planned_names(pod);
    let mut want: Vec<String> = own.iter().map(|(n, _)| n.to_string()).collect();
    want.extend(
        planned
            .iter()
            .filter(|p| !own.iter().any(|(n, _)| n == p))
            .cloned(),
    );
    assert_eq!(
        env_names(c),
        want,
        "pod {} container {name}: its own entries, then the planned ones in order",
        pod.name_any()
    );
    if let Err(e) = references_resolve(c) {
        panic!("pod {}: {e}", pod.name_any());
    }
    for (n, v) in own {
        assert_eq!(
            env_value(c, n),
            Some(*v),
            "the user's own {n} in {name} is kept"
        );
    }
    let annotations = pod.metadata.annotations.as_ref();
    for var in planned.iter().filter(|p| !own.iter().any(|(n, _)| n == *p)) {
        if var.starts_with("OTEL_RESOURCE_ATTRIBUTES") {
            continue;
        }
        let planned = annotation(annotations, &format!("{ENV_VALUE_PREFIX}{var}"))
            .unwrap_or_else(|| panic!("no value annotation for {var}"))
            .replace("{service.version}", version);
        assert_eq!(
            env_value(c, var),
            Some(planned.as_str()),
            "{name}: {var} as planned"
        );
    }
    let attributes = resource_attributes(pod, name);
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("the pod is scheduled");
    let expected = [
        ("service.version", version.to_string()),
        ("k8s.container.name", name.to_string()),
        ("k8s.pod.name", pod.name_any()),
        ("k8s.node.name", node),
    ];
    for (key, value) in expected {
        assert_eq!(
            attributes.get(key),
            Some(&value),
            "pod {} container {name}: {key} in {attributes:?}",
            pod.name_any()
        );
    }
    assert!(
        !process_env(pod, name).values().any(|v| v.contains("$(")),
        "every reference is expanded for the process"
    );
}

const DIGEST: &str = "sha256:0f3b5e3c4a1d8e7f6b2a9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_the_planned_env_in_order_in_the_selected_containers_only() {
    let mut case = Case::start("inject", &[]).await;
    let client = case.client.clone();
    let ns = case.namespace().await;
    wait_admission(&client, &ns, true).await;

    // No version label: each container's image tag (a registry port and a
    // digest must not be taken for it).
    let mut shop = deployment(
        "shop",
        2,
        json!([
            {"name": "app", "image": "registry.local/shop:2.3.1",
             "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "OTEL_PROPAGATORS", "value": "b3"}]},
            {"name": "worker", "image": format!("registry.local:5000/shop/worker:2.4.0-rc.1@{DIGEST}")},
            {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0",
             "env": [{"name": "ISTIO_META_MESH_ID", "value": "mesh"}]}
        ]),
        json!({}),
    );
    shop["spec"]["template"]["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "registry.local/shop-migrate:2.3.1"}]);
    let _: Deployment = create(&client, &ns, shop).await;
    // The pod's version label wins over the image tag.
    let _: Deployment = create(
        &client,
        &ns,
        deployment(
            "ledger",
            1,
            json!([{"name": "app", "image": "registry.local/ledger:6.9.0"}]),
            json!({"app.kubernetes.io/version": "7.0.0"}),
        ),
    )
    .await;
    let policy = case.policy("adm-inject", json!({})).await;

    wait_instrumented(&client, &ns, "shop", "app,worker").await;
    wait_instrumented(&client, &ns, "ledger", "app").await;
    let shop_pods = current_pods(&client, &ns, "shop").await;
    assert_eq!(shop_pods.len(), 2);
    for pod in &shop_pods {
        assert_injected(
            pod,
            "app",
            &[("LOG_LEVEL", "info"), ("OTEL_PROPAGATORS", "b3")],
            "2.3.1",
        );
        assert_injected(pod, "worker", &[], "2.4.0-rc.1");
        assert_eq!(
            process_env(pod, "app").get("OTEL_SERVICE_NAME"),
            Some(&"shop".to_string()),
            "the service is named after the workload"
        );
        let proxy = container(pod, "istio-proxy");
        assert_eq!(
            env_names(proxy),
            ["ISTIO_META_MESH_ID"],
            "istio-proxy gets nothing"
        );
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|i| i.iter().find(|c| c.name == "migrate"))
            .expect("the init container");
        assert!(
            otel_names(init).is_empty(),
            "init containers get nothing: {:?}",
            env_names(init)
        );
    }
    for pod in &current_pods(&client, &ns, "ledger").await {
        assert_injected(pod, "app", &[], "7.0.0");
    }

    let p = wait_policy(&client, &policy, "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let status = p.status.expect("status");
    assert_eq!(status.injection.as_deref(), Some("Admission"));
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("shop")
        .await
        .expect("shop");
    assert_eq!(
        annotation(d.metadata.annotations.as_ref(), INJECTION_ANNOTATION),
        Some("ok"),
        "the operator checked a pod and found the plan"
    );
    let template_env: Vec<(String, Vec<String>)> = d
        .spec
        .template
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.clone(), env_names(c)))
                .collect()
        })
        .unwrap_or_default();
    let owned = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        template_env,
        [
            ("app".to_string(), owned(&["LOG_LEVEL", "OTEL_PROPAGATORS"])),
            ("worker".to_string(), owned(&[])),
            ("istio-proxy".to_string(), owned(&["ISTIO_META_MESH_ID"])),
        ],
        "the pod template keeps the user's env only: admission adds the plan to pods"
    );
}

/// The Deployment `web` as a GitOps repository holds it: `containers` as `(name, image)`.
fn gitops_manifest(ns: &str, containers: &[(&str, &str)]) -> String {
    let containers: Vec<Value> = containers
        .iter()
        .map(|(name, image)| json!({"name": name, "image": image}))
        .collect();
    let mut d = deployment("web", 1, json!(containers), json!({}));
    d["metadata"]["namespace"] = json!(ns);
    serde_json::to_string_pretty(&d).expect("manifest")
}

/// `kubectl apply --server-side --field-manager=gitops --force-conflicts` of
/// `manifest`, as Flux applies; printed with its output.
fn gitops_apply(manifest: &str, what: &str) -> Output {
    shown(
        support::kubectl().args([
            "apply",
            "--server-side",
            "--field-manager=gitops",
            "--force-conflicts",
            "-f",
            "-",
        ]),
        &format!(
            "kubectl apply --server-side --field-manager=gitops --force-conflicts -f -   # {what}"
        ),
        Some(manifest),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_gitops_removes_and_renames_containers_of_an_instrumented_workload() {
    let mut case = Case::start("gitops", &[]).await;
    let client = case.client.clone();
    let ns = case.namespace().await;

    let both = gitops_manifest(
        &ns,
        &[
            ("app", "registry.local/web:1.0.0"),
            ("sidecar", "registry.local/log-shipper:3.2.0"),
        ],
    );
    let out = gitops_apply(&both, "containers app and sidecar");
    assert!(out.status.success(), "the first apply succeeds");
    case.policy("adm-gitops", json!({})).await;
    wait_instrumented(&client, &ns, "web", "app,sidecar").await;
    for pod in &current_pods(&client, &ns, "web").await {
        assert_injected(pod, "sidecar", &[], "3.2.0");
    }

    let before = wait_deployment(&client, &ns, "web", "rolled out", harness::rolled_out).await;
    let revision_before = revision(&before);
    let without_sidecar = gitops_manifest(&ns, &[("app", "registry.local/web:1.0.0")]);
    let out = gitops_apply(&without_sidecar, "sidecar removed");
    assert!(
        out.status.success(),
        "re-applying without the sidecar succeeds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The removal rolls the workload once: the operator keeps `sidecar` listed
    // (admission skips a listed container the pod lacks) rather than roll it again.
    case.wait_reconciled(&ns, "the removal").await;
    let d = wait_instrumented(&client, &ns, "web", "app,sidecar").await;
    assert_eq!(container_names(&d), ["app"], "the sidecar is gone");
    assert_eq!(
        revision(&d),
        revision_before + 1,
        "one new template revision for one container removed"
    );
    for pod in &current_pods(&client, &ns, "web").await {
        let names: Vec<&str> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["app"]);
        assert_injected(pod, "app", &[], "1.0.0");
    }

    let renamed = gitops_manifest(&ns, &[("server", "registry.local/web:1.0.0")]);
    let out = gitops_apply(&renamed, "app renamed to server");
    assert!(
        out.status.success(),
        "renaming a container succeeds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = wait_instrumented(&client, &ns, "web", "server").await;
    assert_eq!(container_names(&d), ["server"]);
    for pod in &current_pods(&client, &ns, "web").await {
        assert_injected(pod, "server", &[], "1.0.0");
    }
    shown(
        support::kubectl().args([
            "get",
            "deployment",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}",
        ]),
        &format!(
            "kubectl get deployment web -n {ns} -o jsonpath='{{.spec.template.spec.containers[*].name}}'"
        ),
        None,
    );
}

fn revision(d: &Deployment) -> u64 {
    d.annotations()
        .get("deployment.kubernetes.io/revision")
        .and_then(|r| r.parse().ok())
        .expect("the Deployment has a revision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_bump_rolls_out_once_and_the_new_pods_report_the_new_version() {
    let mut case = Case::start("image", &[]).await;
    let client = case.client.clone();
    let ns = case.namespace().await;
    let _: Deployment = create(
        &client,
        &ns,
        deployment(
            "api",
            2,
            json!([{"name": "app", "image": "registry.local/api:1.0.0"}]),
            json!({}),
        ),
    )
    .await;
    let policy = case.policy("adm-image", json!({})).await;
    let before = wait_instrumented(&client, &ns, "api", "app").await;
    wait_policy(&client, &policy, "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    for pod in &current_pods(&client, &ns, "api").await {
        assert_injected(pod, "app", &[], "1.0.0");
    }
    let revision_before = revision(&before);
    let generation_before = before.metadata.generation.unwrap_or_default();

    let out = shown(
        support::kubectl().args([
            "set",
            "image",
            "deployment/api",
            "app=registry.local/api:1.1.0",
            "-n",
            &ns,
        ]),
        &format!("kubectl set image deployment/api app=registry.local/api:1.1.0 -n {ns}"),
        None,
    );
    assert!(out.status.success());
    wait_deployment(&client, &ns, "api", "rolled out on 1.1.0", |d| {
        harness::rolled_out(d)
            && d.spec.template.spec.as_ref().is_some_and(|s| {
                s.containers[0].image.as_deref() == Some("registry.local/api:1.1.0")
            })
    })
    .await;
    // The operator has looked at the bumped workload (a namespace change makes
    // it reconcile every policy) and left it as it is.
    case.wait_reconciled(&ns, "the bump").await;
    wait_policy(&client, &policy, "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let after = wait_deployment(&client, &ns, "api", "rolled out", harness::rolled_out).await;
    println!(
        "revision {revision_before} -> {}, generation {generation_before} -> {}",
        revision(&after),
        after.metadata.generation.unwrap_or_default()
    );
    assert_eq!(
        revision(&after),
        revision_before + 1,
        "one new template revision for one image bump"
    );
    assert_eq!(
        annotation(template_annotations(&after), CONFIG_HASH_ANNOTATION),
        annotation(template_annotations(&before), CONFIG_HASH_ANNOTATION),
        "the operator's plan does not change with the image"
    );
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("app=api"))
        .await
        .expect("replica sets");
    let newer: Vec<String> = sets
        .items
        .iter()
        .filter(|rs| {
            rs.annotations()
                .get("deployment.kubernetes.io/revision")
                .and_then(|r| r.parse::<u64>().ok())
                .is_some_and(|r| r > revision_before)
        })
        .map(|rs| rs.name_any())
        .collect();
    assert_eq!(
        newer.len(),
        1,
        "one ReplicaSet since the bump, nothing in between: {newer:?}"
    );
    for pod in &current_pods(&client, &ns, "api").await {
        assert_injected(pod, "app", &[], "1.1.0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_policy_restores_the_template_byte_for_byte_and_new_pods_carry_no_otel_variable()
 {
    let mut case = Case::start("delete", &[]).await;
    let client = case.client.clone();
    let ns = case.namespace().await;
    let _: Deployment = create(
        &client,
        &ns,
        deployment(
            "cart",
            2,
            json!([
                {"name": "app", "image": "registry.local/cart:4.2.0",
                 "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "OTEL_SERVICE_NAME", "value": "basket"}]},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0"}
            ]),
            json!({"tier": "web"}),
        ),
    )
    .await;
    let original = wait_deployment(&client, &ns, "cart", "rolled out", harness::rolled_out).await;
    let template_before = serde_json::to_string(&original.spec.template).expect("json");
    let policy = case.policy("adm-delete", json!({})).await;
    let instrumented = wait_instrumented(&client, &ns, "cart", "app").await;
    assert_ne!(
        serde_json::to_string(&instrumented.spec.template).expect("json"),
        template_before
    );
    for pod in &current_pods(&client, &ns, "cart").await {
        assert_injected(
            pod,
            "app",
            &[("LOG_LEVEL", "debug"), ("OTEL_SERVICE_NAME", "basket")],
            "4.2.0",
        );
    }

    delete_policy(&client, &policy).await;
    let restored = wait_deployment(&client, &ns, "cart", "rolled out", harness::rolled_out).await;
    let template_after = serde_json::to_string(&restored.spec.template).expect("json");
    assert_eq!(
        template_after, template_before,
        "the pod template is byte-identical to before the policy"
    );
    assert!(
        !restored
            .annotations()
            .keys()
            .any(|k| k.starts_with("tracing.caas.io/")),
        "no operator annotation is left on the Deployment: {:?}",
        restored.annotations()
    );
    for pod in &current_pods(&client, &ns, "cart").await {
        for c in pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
        {
            let otel = otel_names(c);
            let own: Vec<&str> = if c.name == "app" {
                vec!["OTEL_SERVICE_NAME"]
            } else {
                vec![]
            };
            assert_eq!(
                otel,
                own,
                "pod {} container {}: no OTEL_ variable but the user's own",
                pod.name_any(),
                c.name
            );
        }
        assert!(
            !pod.annotations()
                .keys()
                .any(|k| k.contains("tracing.caas.io")),
            "the new pods carry no plan: {:?}",
            pod.annotations()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_job_of_a_selected_cronjob_is_traced() {
    let mut case = Case::start("cronjob", &[]).await;
    let client = case.client.clone();
    let ns = case.namespace().await;
    let _: CronJob = create(
        &client,
        &ns,
        json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "report"},
            "spec": {
                // Never due while the test runs: the Job is created by hand.
                "schedule": "0 0 1 1 *",
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "report", "image": "registry.local/report:1.4.2"}]
                }}}}
            }
        }),
    )
    .await;
    case.policy("adm-cronjob", json!({})).await;
    let cronjobs = Api::<CronJob>::namespaced(client.clone(), &ns);
    support::wait_until(
        "the CronJob's job template carries the plan",
        Duration::from_secs(90),
        || async {
            let c = cronjobs.get("report").await.ok()?;
            let template = c.spec.job_template.spec?.template.metadata?.annotations?;
            (template.get(INJECT_ANNOTATION).map(String::as_str) == Some("report")).then_some(())
        },
    )
    .await;

    let out = shown(
        support::kubectl().args([
            "create",
            "job",
            "report-manual",
            "--from=cronjob/report",
            "-n",
            &ns,
        ]),
        &format!("kubectl create job report-manual --from=cronjob/report -n {ns}"),
        None,
    );
    assert!(out.status.success());
    let pod = support::wait_until(
        "the Job's pod is scheduled",
        Duration::from_secs(60),
        || async {
            pods(&client, &ns, "job-name=report-manual")
                .await
                .into_iter()
                .find(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        },
    )
    .await;
    assert_injected(&pod, "report", &[], "1.4.2");
    let attributes = resource_attributes(&pod, "report");
    assert_eq!(
        attributes.get("k8s.cronjob.name").map(String::as_str),
        Some("report")
    );
    assert_eq!(
        process_env(&pod, "report")
            .get("OTEL_SERVICE_NAME")
            .map(String::as_str),
        Some("report")
    );
}

/// `apiserver_mutating_admission_policy_check_total` of the operator's policy
/// with `error_type`.
fn admission_checks(error_type: &str) -> f64 {
    let metrics = support::histogram::scrape().expect("API server metrics");
    support::histogram::counter(
        &metrics,
        "apiserver_mutating_admission_policy_check_total",
        &[("policy", ADMISSION_POLICY), ("error_type", error_type)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_admission_never_blocks_a_pod_and_the_policy_names_the_pod_it_missed() {
    let mut case = Case::start("failopen", &[]).await;
    let client = case.client.clone();
    let ns = case.namespace().await;
    wait_admission(&client, &ns, true).await;

    // 1. A plan naming a variable without a value: the policy's expression
    // fails, and the pod is created anyway (failurePolicy: Ignore).
    let errors_before = admission_checks("invalid_error");
    let broken = support::injection::probe_pod(&[(
        "tracing.caas.io/env",
        "OTEL_SERVICE_NAME,OTEL_TRACES_SAMPLER",
    )]);
    let created = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &broken)
        .await
        .expect("a pod with a broken plan is still created");
    assert!(
        otel_names(container(&created, "app")).is_empty(),
        "nothing of a broken plan is injected: {:?}",
        env_names(container(&created, "app"))
    );
    let errors_after = admission_checks("invalid_error");
    println!(
        "MutatingAdmissionPolicy errors (error_type=invalid_error): {errors_before} -> {errors_after}"
    );
    assert!(
        errors_after > errors_before,
        "the API server counted the policy's failed evaluation"
    );

    // 2. The same on a workload, by hand with another field manager: the
    // operator owns its annotations and puts the value back at once.
    let _: Deployment = create(
        &client,
        &ns,
        deployment(
            "billing",
            1,
            json!([{"name": "app", "image": "registry.local/billing:3.0.0"}]),
            json!({}),
        ),
    )
    .await;
    let policy = case.policy("adm-failopen", json!({})).await;
    wait_instrumented(&client, &ns, "billing", "app").await;
    let key = format!("{ENV_VALUE_PREFIX}OTEL_SERVICE_NAME").replace('/', "~1");
    let out = shown(
        support::kubectl().args([
            "patch",
            "deployment",
            "billing",
            "-n",
            &ns,
            "--field-manager=someone",
            "--type=json",
            "-p",
            &format!(r#"[{{"op":"remove","path":"/spec/template/metadata/annotations/{key}"}}]"#),
        ]),
        &format!(
            "kubectl patch deployment billing -n {ns} --field-manager=someone --type=json -p '[{{\"op\":\"remove\",\"path\":\"/spec/template/metadata/annotations/{key}\"}}]'"
        ),
        None,
    );
    assert!(out.status.success());
    let d = wait_deployment(
        &client,
        &ns,
        "billing",
        "the operator restored its annotation and rolled out",
        |d| {
            annotation(
                template_annotations(d),
                &format!("{ENV_VALUE_PREFIX}OTEL_SERVICE_NAME"),
            )
            .is_some()
                && instrumented_for(d, "app")
        },
    )
    .await;
    assert_eq!(
        annotation(d.metadata.annotations.as_ref(), INJECTION_ANNOTATION),
        Some("ok")
    );
    for pod in &current_pods(&client, &ns, "billing").await {
        assert_injected(pod, "app", &[], "3.0.0");
    }
    println!(
        "MutatingAdmissionPolicy errors after the hand edit was undone: {} (pods created from the edited template in between)",
        admission_checks("invalid_error") - errors_after
    );

    // 3. What really fails open: the binding is gone (deleted by hand, by a
    // cleanup job, by a partial uninstall) while workloads roll out.
    let out = shown(
        support::kubectl().args(["delete", "mutatingadmissionpolicybinding", ADMISSION_POLICY]),
        &format!("kubectl delete mutatingadmissionpolicybinding {ADMISSION_POLICY}"),
        None,
    );
    assert!(out.status.success());
    wait_admission(&client, &ns, false).await;
    let _: Deployment = create(
        &client,
        &ns,
        deployment(
            "orders",
            2,
            json!([{"name": "app", "image": "registry.local/orders:5.0.0"}]),
            json!({}),
        ),
    )
    .await;
    let p = wait_policy(&client, &policy, "Degraded: InjectionNotApplied", |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Degraded" && c.status == "True" && c.reason == "InjectionNotApplied"
            })
        })
    })
    .await;
    let degraded = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .expect("Degraded")
        .message
        .clone();
    println!("Degraded InjectionNotApplied: {degraded}");
    let orders = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("orders")
        .await
        .expect("orders");
    let verdict = annotation(orders.metadata.annotations.as_ref(), INJECTION_ANNOTATION)
        .expect("a verdict recorded on the workload")
        .to_string();
    let missed = current_pods(&client, &ns, "orders").await;
    let first = planned_names(&missed[0])[0].clone();
    assert!(
        missed
            .iter()
            .any(|pod| verdict
                == format!("missing {first} in pod {} (container app)", pod.name_any())),
        "the verdict names a pod of orders and the first planned variable ({first}): {verdict}"
    );
    assert!(
        degraded.contains(&format!("Deployment {ns}/orders"))
            || degraded.contains(&format!("{ns}/orders")),
        "the condition names the workload: {degraded}"
    );
    assert!(degraded.contains(&verdict), "and the pod: {degraded}");
    for pod in &missed {
        assert!(otel_names(container(pod, "app")).is_empty());
    }
    assert_eq!(
        condition(&p, "Ready").as_deref(),
        Some("False"),
        "a policy whose pods lack the plan is not Ready"
    );

    // Recovery: a restarted operator puts its binding back; new pods get the plan.
    case.restart_operator("operator-2", &[]).await;
    wait_admission(&client, &ns, true).await;
    let out = shown(
        support::kubectl().args(["rollout", "restart", "deployment/orders", "-n", &ns]),
        &format!("kubectl rollout restart deployment/orders -n {ns}"),
        None,
    );
    assert!(out.status.success());
    wait_deployment(&client, &ns, "orders", "restarted and rolled out", |d| {
        harness::rolled_out(d)
            && annotation(template_annotations(d), "kubectl.kubernetes.io/restartedAt").is_some()
    })
    .await;
    for pod in &current_pods(&client, &ns, "orders").await {
        assert_injected(pod, "app", &[], "5.0.0");
    }
    wait_policy(&client, &policy, "Ready again", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
}

/// kstatus' and Argo CD's verdicts on the policy `name` as it is now.
async fn verdicts(client: &Client, name: &str) -> ((String, String), (String, String)) {
    let p = Api::<TracingPolicy>::all(client.clone())
        .get(name)
        .await
        .expect("policy");
    let object = serde_json::to_value(&p).expect("policy json");
    let flux = kstatus(&object).expect("kstatus runs");
    let argo = argocd_health(&object).expect("the Argo CD health check runs");
    println!("{name}: kstatus {flux:?}, Argo CD {argo:?}");
    (flux, argo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_and_argocd_read_live_policies_ready_rolling_and_stuck() {
    let mut case = Case::start("health", &[]).await;
    let client = case.client.clone();
    let (label, _) = harness::test_label(&case.test);

    // Ready.
    let ready_ns = case.namespace().await;
    support::kubectl_ok(&["label", "namespace", &ready_ns, "health=ready"]);
    let _: Deployment = create(
        &client,
        &ready_ns,
        deployment(
            "steady",
            1,
            json!([{"name": "app", "image": "registry.local/steady:1.0.0"}]),
            json!({}),
        ),
    )
    .await;
    let ready = case
        .policy(
            "adm-ready",
            json!({"selector": {"namespaces": {"matchLabels": {"health": "ready"}}}}),
        )
        .await;
    wait_policy(&client, &ready, "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let ((flux, _), (argo, argo_message)) = verdicts(&client, &ready).await;
    assert_eq!((flux.as_str(), argo.as_str()), ("Current", "Healthy"));
    assert!(
        argo_message.contains("1/1 workloads rolled out"),
        "{argo_message}"
    );

    // Rolling: its pods never become Ready once traced, within the deadline.
    let rolling_ns = case.namespace().await;
    support::kubectl_ok(&["label", "namespace", &rolling_ns, "health=rolling"]);
    let _: Deployment = create(
        &client,
        &rolling_ns,
        deployment(
            "fragile",
            1,
            json!([{"name": "app", "image": "registry.local/fragile:1.0.0"}]),
            json!({"testbed.caas.io/breaks-when-traced": "true"}),
        ),
    )
    .await;
    wait_deployment(
        &client,
        &rolling_ns,
        "fragile",
        "available",
        harness::rolled_out,
    )
    .await;
    let rolling = case
        .policy(
            "adm-rolling",
            json!({
                "selector": {"namespaces": {"matchLabels": {"health": "rolling"}}},
                "rollout": {"strategy": "Progressive", "maxConcurrent": 1, "progressDeadline": "10m", "onFailure": "Pause"}
            }),
        )
        .await;
    wait_policy(&client, &rolling, "Progressing", |p| {
        condition(p, "Progressing").as_deref() == Some("True")
    })
    .await;
    let ((flux, flux_message), (argo, argo_message)) = verdicts(&client, &rolling).await;
    assert_eq!(
        (flux.as_str(), argo.as_str()),
        ("InProgress", "Progressing")
    );
    for message in [&flux_message, &argo_message] {
        assert!(message.contains("1 rolling out"), "{message}");
    }

    // Stuck: the same rollout past a short deadline, held by onFailure: Pause.
    harness::apply_policy(
        &client,
        &harness::policy(
            &rolling,
            &case.test,
            json!({
                "selector": {"namespaces": {"matchLabels": {"health": "rolling"}}},
                "rollout": {"strategy": "Progressive", "maxConcurrent": 1, "progressDeadline": "5s", "onFailure": "Pause"}
            }),
        ),
    )
    .await;
    wait_policy(&client, &rolling, "Stalled", |p| {
        condition(p, "Stalled").as_deref() == Some("True")
    })
    .await;
    let ((flux, flux_message), (argo, argo_message)) = verdicts(&client, &rolling).await;
    assert_eq!((flux.as_str(), argo.as_str()), ("Failed", "Degraded"));
    for message in [&flux_message, &argo_message] {
        assert!(message.contains("1 of 1 workloads failed"), "{message}");
    }

    // Stuck: the selector matches no namespace.
    let nothing = case
        .policy(
            "adm-nothing",
            json!({"selector": {"namespaces": {"matchLabels": {label.as_str(): "no-such-namespace"}}}}),
        )
        .await;
    wait_policy(&client, &nothing, "Degraded", |p| {
        condition(p, "Degraded").as_deref() == Some("True")
    })
    .await;
    let ((flux, flux_message), (argo, argo_message)) = verdicts(&client, &nothing).await;
    assert_eq!((flux.as_str(), argo.as_str()), ("Failed", "Degraded"));
    for message in [&flux_message, &argo_message] {
        assert!(message.contains("matches no namespace"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_upgrade_drops_a_container_of_an_instrumented_release() {
    let mut case = Case::start("helm4", &[]).await;
    let client = case.client.clone();
    let ns = case.namespace().await;
    let helm_home = case.scratch.path().join("helm");
    let chart = support::repo().join("tests/fixtures/two-containers");
    let helm = |args: &[&str]| {
        let mut cmd = Command::new(helm4());
        cmd.args(args)
            .env("KUBECONFIG", support::kubeconfig())
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"))
            .env("HELM_DATA_HOME", helm_home.join("data"));
        let line = format!("helm4 {}", args.join(" "));
        shown(&mut cmd, &line, None)
    };
    let chart_path = chart.to_string_lossy().into_owned();
    let out = helm(&["install", "shop", &chart_path, "-n", &ns, "--wait"]);
    assert!(out.status.success(), "helm4 install");
    case.policy("adm-helm4", json!({})).await;
    let before = wait_instrumented(&client, &ns, "shop", "app,sidecar").await;

    let out = helm(&[
        "upgrade",
        "shop",
        &chart_path,
        "-n",
        &ns,
        "--set",
        "sidecar.enabled=false",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "the upgrade that drops the sidecar succeeds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `sidecar` stays listed: dropping it would roll the release a second time.
    let d = wait_instrumented(&client, &ns, "shop", "app,sidecar").await;
    assert_eq!(container_names(&d), ["app"], "one container left");
    assert_eq!(
        revision(&d),
        revision(&before) + 1,
        "one new template revision for the upgrade"
    );
    for pod in &current_pods(&client, &ns, "shop").await {
        assert_injected(pod, "app", &[("LOG_LEVEL", "info")], "1.0.0");
    }
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            format!(
                "{} {}",
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default()
            )
        })
        .collect();
    println!("managers of {ns}/shop: {managers:?}");
    assert!(
        managers.iter().any(|m| m == "helm Apply"),
        "helm 4 applied server-side: {managers:?}"
    );
    helm(&["uninstall", "shop", "-n", &ns]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_pod_template_injection_when_asked_and_admission_by_default() {
    let mut case = Case::start("modes", &["--injection", "pod-template"]).await;
    let client = case.client.clone();
    let ns = case.namespace().await;
    let _: Deployment = create(
        &client,
        &ns,
        deployment(
            "catalog",
            1,
            json!([{"name": "app", "image": "registry.local/catalog:2.0.0"}]),
            json!({}),
        ),
    )
    .await;
    let policy = case.policy("adm-modes", json!({})).await;
    let p = wait_policy(&client, &policy, "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        p.status.and_then(|s| s.injection).as_deref(),
        Some("PodTemplate")
    );
    let d = wait_deployment(&client, &ns, "catalog", "rolled out", harness::rolled_out).await;
    assert!(
        harness::traced(&d),
        "PodTemplate: the env is in the template"
    );
    assert!(annotation(template_annotations(&d), INJECT_ANNOTATION).is_none());

    // The default binary on this API server: admission, and the workload moves over.
    case.restart_operator("operator-auto", &[]).await;
    let p = wait_policy(&client, &policy, "Ready with Admission", |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && p.status.as_ref().and_then(|s| s.injection.as_deref()) == Some("Admission")
    })
    .await;
    assert_eq!(
        p.status.and_then(|s| s.injection).as_deref(),
        Some("Admission")
    );
    assert!(
        case.operator()
            .log()
            .contains("settings reach pods by Admission injection"),
        "the log says so"
    );
    let d = wait_instrumented(&client, &ns, "catalog", "app").await;
    assert!(
        d.spec
            .template
            .spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().all(|c| otel_names(c).is_empty())),
        "the operator's env entries left the template"
    );
    for pod in &current_pods(&client, &ns, "catalog").await {
        assert_injected(pod, "app", &[], "2.0.0");
    }
}

/// benches/admission.rs reads its figures with `support::histogram`: two scrapes
/// of a labelled histogram, their difference and its quantiles as Prometheus'
/// `histogram_quantile` computes them.
#[test]
fn histogram_deltas_and_quantiles_read_as_prometheus_reads_them() {
    use support::histogram::{Histogram, counter};
    let scrape = |le5: u32, le25: u32, all: u32, sum: f64| {
        format!(
            r#"# TYPE x_seconds histogram
x_seconds_bucket{{op="CREATE",name="a,b",le="0.005"}} {le5}
x_seconds_bucket{{op="CREATE",name="a,b",le="0.025"}} {le25}
x_seconds_bucket{{op="CREATE",name="a,b",le="+Inf"}} {all}
x_seconds_sum{{op="CREATE",name="a,b"}} {sum}
x_seconds_count{{op="CREATE",name="a,b"}} {all}
x_seconds_bucket{{op="UPDATE",name="a,b",le="0.005"}} 7
x_seconds_bucket{{op="UPDATE",name="a,b",le="+Inf"}} 7
x_seconds_sum{{op="UPDATE",name="a,b"}} 0.01
x_seconds_count{{op="UPDATE",name="a,b"}} 7
c_total{{code="201",verb="POST"}} 3
c_total{{code="409",verb="POST"}} 2
"#
        )
    };
    let before = scrape(10, 10, 10, 0.02);
    let after = scrape(100, 109, 110, 0.52);
    let create = [("op", "CREATE"), ("name", "a,b")];
    let h = Histogram::read(&after, "x_seconds", &create).since(&Histogram::read(
        &before,
        "x_seconds",
        &create,
    ));
    assert_eq!(h.count, 100.0);
    assert_eq!(
        h.buckets,
        vec![(0.005, 90.0), (0.025, 99.0), (f64::INFINITY, 100.0)]
    );
    assert_eq!(h.mean(), Some(0.005));
    assert_eq!(h.quantile_bounds(0.5), Some((0.0, 0.005)));
    assert_eq!(h.quantile_bounds(0.99), Some((0.005, 0.025)));
    let p50 = h.quantile(0.5).expect("p50");
    assert!((p50 - 0.005 * 50.0 / 90.0).abs() < 1e-12, "{p50}");
    let p99 = h.quantile(0.99).expect("p99");
    assert!((p99 - 0.025).abs() < 1e-12, "{p99}");
    assert_eq!(counter(&after, "c_total", &[("verb", "POST")]), 5.0);
    assert_eq!(counter(&after, "c_total", &[("code", "409")]), 2.0);
}
