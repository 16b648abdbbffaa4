//! What admission injection costs when pods are created: `--deployments`
//! Deployments (20) scaled from 0 to `--replicas` (50), 1,000 pods, on a live
//! testbed, in three phases, each in a namespace of its own:
//!
//! - `unbound`: the operator's MutatingAdmissionPolicyBinding deleted: no
//!   admission policy in force, the baseline;
//! - `bound`: the binding in place, no TracingPolicy selecting the pods: what
//!   every pod of the cluster pays (the policy's match condition only);
//! - `traced`: a TracingPolicy selects the Deployments: each pod gets the plan
//!   at admission;
//! - `agents`: the same with the Node.js agent (`spec.instrumentation`): each pod
//!   also gets the agent's volume, init container, mount and `NODE_OPTIONS`.
//!
//! Before its burst, each traced phase creates one Deployment's pod one at a
//! time (`dryRun=All`, `--serial` of each kind, interleaved): with the plan where
//! the policy applies, the very same pod in the operator's namespace (which the
//! binding leaves out), and the pod without the operator's annotations. The
//! first two differ only in the policy being bound: their difference is what
//! admission adds to a pod CREATE. Two halves of the unbound creates show how
//! far this machine's noise moves a p99 between two samples of the same create.
//!
//! The traced phase also measures two references, each bound in place of the
//! operator's binding with the same match condition and namespaces: the floor,
//! one variable added by one JSON patch (what any mutating policy costs on this
//! API server), and the constants, the very entries the operator's policy adds
//! to the pod, as constant JSON patches (what adding them costs without the
//! operator's CEL). So the operator's own share can be told from the machine's.
//!
//! The figures are the API server's own, as deltas over each phase's pod
//! creations: the MutatingAdmissionPolicy's metrics
//! (`apiserver_mutating_admission_policy_check_*`), its admission plugin's and
//! the whole mutating step's for CREATEs (`apiserver_admission_*`), the request
//! latency of pod CREATEs (`apiserver_request_duration_seconds`), and the same
//! latency exactly, per request, from the testbed's audit log. p50 and p99 of a
//! histogram are its bucket bounds (and Prometheus' interpolation within them).
//! Nothing is asserted: these are figures to read.
//!
//! Run it against a cluster of its own (no other tracing-operator; room for
//! 1,000 pods): `cargo bench --bench admission` with `KUBECONFIG` set (`testbed/testbed env`);
//! options after `--`: `--deployments N --replicas N --rounds N --serial N`. The operator's
//! logs are in `target/bench-admission/`. The API server's figures do not depend
//! on how the benchmark itself was built, so `--profile dev` saves the release build.
//! Under `cargo test --all-targets` (no `--bench` argument) it returns at once.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use support::histogram::{Histogram, counter, scrape};
use support::injection::{ADMISSION_POLICY, wait_admission};
use support::process::OperatorProcess;

/// Namespaces the benchmark creates carry this label with value [`SCENARIO`].
const SCENARIO_LABEL: &str = "bench.tracing.caas.io/scenario";
const SCENARIO: &str = "admission";
/// Which phase a namespace belongs to (the TracingPolicy selects `traced`).
const PHASE_LABEL: &str = "bench.tracing.caas.io/phase";
const POLICY: &str = "bench-admission";
const OPERATOR_NAMESPACE: &str = "tracing-operator-bench";

#[derive(Debug)]
struct Options {
    deployments: usize,
    replicas: i32,
    rounds: usize,
    /// Creates per kind in each traced phase's one-at-a-time measurement.
    serial: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            deployments: 20,
            replicas: 50,
            rounds: 1,
            serial: 1000,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut number = |name: &str| support::positive_option(name, it.next());
            match arg.as_str() {
                "--bench" => {}
                "--deployments" => o.deployments = number(arg)?,
                "--replicas" => o.replicas = i32::try_from(number(arg)?)?,
                "--rounds" => o.rounds = number(arg)?,
                "--serial" => o.serial = number(arg)?,
                other => bail!(
                    "unknown argument {other:?}; known: --deployments N --replicas N --rounds N --serial N"
                ),
            }
        }
        Ok(o)
    }
}

fn main() {
    let Some((options, runtime)) = support::bench_start(
        "admission",
        "see the doc comment of benches/admission.rs",
        Options::parse,
    ) else {
        return;
    };
    if let Err(e) = runtime.block_on(run(&options)) {
        eprintln!("admission: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Unbound,
    Bound,
    Traced,
    Agents,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Unbound => "unbound",
            Phase::Bound => "bound",
            Phase::Traced => "traced",
            Phase::Agents => "agents",
        }
    }

    /// A TracingPolicy selects this phase's Deployments.
    fn traced(self) -> bool {
        matches!(self, Phase::Traced | Phase::Agents)
    }
}

/// What one phase measured.
struct Figures {
    phase: Phase,
    pods: usize,
    injected: usize,
    creates: f64,
    seconds: f64,
    request: Histogram,
    audit: Vec<f64>,
    plugin: Histogram,
    step: Histogram,
    policy: Histogram,
    policy_errors: f64,
    serial: Option<Serial>,
    /// The same one-at-a-time creates with a [`Reference`] policy in place of the operator's.
    references: Vec<(Reference, Serial)>,
}

// One at a time, before the phase's burst, with nothing else going on: three
// kinds of `dryRun=All` create, interleaved (`--serial` each), what one pod
// CREATE pays without the contention of a 1,000-pod burst on a 2-core machine.
// Their field managers tell them apart in the audit log.

/// The pod of a phase Deployment's template, with the operator's annotations, in
/// the phase's namespace: the policy applies.
const SERIAL_BOUND: &str = "bench-serial-bound";
/// The very same pod in the operator's namespace, which the binding leaves out:
/// the policy bound or not is the only difference from [`SERIAL_BOUND`].
const SERIAL_UNBOUND: &str = "bench-serial-unbound";
/// The pod without the operator's annotations, in the phase's namespace: against
/// [`SERIAL_UNBOUND`], what the annotations themselves cost a CREATE.
const SERIAL_PLAIN: &str = "bench-serial-plain";

/// Policies the traced phase measures in place of the operator's, bound to the
/// same namespaces with the same match condition: what any MutatingAdmissionPolicy
/// costs on this API server, to tell the operator's own share from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reference {
    /// One variable ([`FLOOR_VARIABLE`]) added by one JSON patch.
    Floor,
    /// The entries the operator's policy adds to the phase's pod, as constant
    /// JSON patches: adding them without the operator's CEL.
    Constants,
}

const FLOOR_VARIABLE: &str = "BENCH_FLOOR";

impl Reference {
    fn policy(self) -> &'static str {
        match self {
            Reference::Floor => "bench-floor.tracing.caas.io",
            Reference::Constants => "bench-constants.tracing.caas.io",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Reference::Floor => "floor, one variable by one JSON patch",
            Reference::Constants => "constants, the same entries as constant JSON patches",
        }
    }
}

struct Serial {
    /// Seconds per CREATE of each kind, sorted.
    bound: Vec<f64>,
    unbound: Vec<f64>,
    plain: Vec<f64>,
    /// The unbound creates in request order, even and odd ones apart: two samples
    /// of the same create, whose p99s differ by what this machine's noise moves a p99.
    halves: (Vec<f64>, Vec<f64>),
    /// Where the latencies come from.
    measured: &'static str,
    /// The policy's own mutation over those creates.
    policy: Histogram,
}

async fn run(o: &Options) -> Result<()> {
    let client = support::client().await;
    support::install_crd(&client).await;
    remove_leftovers(&client).await?;
    ensure_unbound_namespace(&client).await?;
    let dir = support::repo().join("target").join("bench-admission");
    std::fs::create_dir_all(&dir)?;
    let pods_total = o.deployments * usize::try_from(o.replicas)?;
    println!(
        "admission: {} Deployments x {} replicas = {pods_total} pods per phase, {} round(s)",
        o.deployments, o.replicas, o.rounds
    );

    let mut all = Vec::new();
    let mut operator = start_operator(&dir, "operator-1").await?;
    for round in 1..=o.rounds {
        for phase in [Phase::Unbound, Phase::Bound, Phase::Traced, Phase::Agents] {
            if phase == Phase::Unbound {
                // The operator puts its binding in place when it starts: delete it now.
                delete_operator_binding()?;
            } else if phase == Phase::Bound {
                drop(operator);
                operator = start_operator(&dir, &format!("operator-{round}-bound")).await?;
            }
            let f = measure(&client, o, round, phase).await?;
            print_phase(&f, round);
            all.push((round, f));
        }
    }
    drop(operator);
    summary(&all);
    Ok(())
}

fn kubectl(args: &[&str]) -> Result<String> {
    let out = support::kubectl()
        .args(args)
        .output()
        .context("running kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start_operator(dir: &std::path::Path, name: &str) -> Result<OperatorProcess> {
    let mut op = OperatorProcess::start(
        name,
        dir,
        &support::kubeconfig(),
        &["--namespace", OPERATOR_NAMESPACE],
        &[],
    );
    let t = Instant::now();
    loop {
        if let Some(status) = op.exit_status() {
            bail!(
                "the operator exited with {status}; log: {}",
                op.log_path().display()
            );
        }
        let port = op.metrics_addr.port();
        let ready = tokio::task::spawn_blocking(move || support::http_get(port, "/readyz"))
            .await?
            .is_ok_and(|(code, _, _)| code == 200);
        if ready {
            return Ok(op);
        }
        ensure!(
            t.elapsed() < Duration::from_secs(120),
            "the operator was not ready in 120 s; log: {}",
            op.log_path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator's namespace, which its binding leaves out: where the one-at-a-time
/// creates meet no policy. Pods need its `default` ServiceAccount.
async fn ensure_unbound_namespace(client: &Client) -> Result<()> {
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces.get_opt(OPERATOR_NAMESPACE).await?.is_none() {
        let namespace: Namespace = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}),
        )?;
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
    }
    let accounts = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        client.clone(),
        OPERATOR_NAMESPACE,
    );
    wait(
        Duration::from_secs(60),
        "the operator namespace has its default ServiceAccount",
        || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?.is_some()) }
        },
    )
    .await
}

/// Deletes what an interrupted run left: the policy (its finalizer dropped:
/// no operator runs yet) and the benchmark's namespaces, waiting until they are gone.
async fn remove_leftovers(client: &Client) -> Result<()> {
    let _ = kubectl(&[
        "delete",
        "tracingpolicy",
        POLICY,
        "--ignore-not-found",
        "--wait=false",
    ]);
    let _ = kubectl(&[
        "patch",
        "tracingpolicy",
        POLICY,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let namespaces = Api::<Namespace>::all(client.clone());
    let selector = format!("{SCENARIO_LABEL}={SCENARIO}");
    for ns in namespaces
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let _ = namespaces
            .delete(&ns.name_any(), &DeleteParams::default())
            .await;
    }
    wait(
        Duration::from_secs(300),
        "leftover namespaces are gone",
        || {
            let namespaces = namespaces.clone();
            let selector = selector.clone();
            async move {
                Ok(namespaces
                    .list(&ListParams::default().labels(&selector))
                    .await?
                    .items
                    .is_empty())
            }
        },
    )
    .await
}

async fn wait<F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let t = Instant::now();
    loop {
        if probe().await? {
            return Ok(());
        }
        ensure!(t.elapsed() < timeout, "timed out after {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn bench_deployment(name: &str) -> Deployment {
    let env: Vec<serde_json::Value> = (1..=5)
        .map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}")}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "app.kubernetes.io/name": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.local/bench-app:1.0.0",
                    "env": env,
                    "ports": [{"containerPort": 8080}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
                }]}
            }
        }
    }))
    .expect("deployment manifest")
}

async fn measure(client: &Client, o: &Options, round: usize, phase: Phase) -> Result<Figures> {
    let ns = format!("bench-adm-{}-{}", phase.name(), support::suffix());
    let phase_value = format!("{}-{round}", phase.name());
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns, "labels": {SCENARIO_LABEL: SCENARIO, PHASE_LABEL: phase_value}}
    }))?;
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    wait_admission(client, &ns, phase != Phase::Unbound).await;

    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let names: Vec<String> = (0..o.deployments).map(|i| format!("svc-{i:02}")).collect();
    for name in &names {
        deployments
            .create(&PostParams::default(), &bench_deployment(name))
            .await?;
    }
    let policies = Api::<kube::api::DynamicObject>::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<tracing_operator::api::TracingPolicy>(&()),
    );
    if phase.traced() {
        let mut policy = json!({
            "apiVersion": "tracing.caas.io/v1alpha1",
            "kind": "TracingPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "selector": {"namespaces": {"matchLabels": {PHASE_LABEL: phase_value}}},
                "collector": {"enabled": false},
                "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger.observability.svc:4317"}],
                "rollout": {"strategy": "Immediate"}
            }
        });
        if phase == Phase::Agents {
            policy["spec"]["instrumentation"] = json!({"nodejs": {"selector": {
                "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "Exists"}]
            }}});
        }
        policies
            .patch(
                POLICY,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&policy),
            )
            .await?;
        wait(
            Duration::from_secs(180),
            "every Deployment's template carries the plan",
            || {
                let deployments = deployments.clone();
                async move {
                    let list = deployments.list(&ListParams::default()).await?.items;
                    Ok(list.len() == o.deployments
                        && list.iter().all(|d| {
                            d.spec
                                .template
                                .metadata
                                .as_ref()
                                .and_then(|m| m.annotations.as_ref())
                                .is_some_and(|a| {
                                    a.contains_key("tracing.caas.io/inject")
                                        && (phase != Phase::Agents
                                            || a.contains_key("tracing.caas.io/agent"))
                                })
                        }))
                }
            },
        )
        .await?;
    }
    // Let the Deployments' own status writes settle before the window opens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Before the burst, while the phase's Deployments are at 0 replicas: a
    // quiet cluster, as most pod creations meet it.
    let serial = if phase.traced() {
        let injected = |pod: &Pod| {
            let spec = pod.spec.as_ref();
            env_names(pod).iter().any(|n| n == "OTEL_SERVICE_NAME")
                && (phase != Phase::Agents
                    || spec
                        .is_some_and(|s| s.init_containers.as_ref().is_some_and(|i| !i.is_empty())))
        };
        Some(serial_creates(client, &ns, &names[0], o.serial, ADMISSION_POLICY, injected).await?)
    } else {
        None
    };
    let mut references = Vec::new();
    if phase == Phase::Traced {
        let constants = added_entries(client, &ns, &names[0]).await?;
        for reference in [Reference::Floor, Reference::Constants] {
            let measured =
                reference_serial(client, &ns, &names[0], o.serial, reference, &constants).await?;
            references.push((reference, measured));
        }
    }

    let before = scrape()?;
    let audit_from = Timestamp::now();
    let started = Instant::now();
    let replicas = o.replicas;
    stream::iter(names.clone())
        .map(|name| {
            let deployments = deployments.clone();
            async move {
                deployments
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                    )
                    .await
            }
        })
        .buffer_unordered(10)
        .try_collect::<Vec<_>>()
        .await?;
    let want = o.deployments * usize::try_from(o.replicas)?;
    wait(
        Duration::from_secs(600),
        "every pod is created and Ready",
        || {
            let deployments = deployments.clone();
            async move {
                let ready: i32 = deployments
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter_map(|d| d.status.as_ref()?.ready_replicas)
                    .sum();
                Ok(usize::try_from(ready).unwrap_or(0) >= want)
            }
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let after = scrape()?;

    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let injected =
        pods.iter()
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .flat_map(|c| c.env.iter().flatten())
                        .any(|e| e.name == "OTEL_SERVICE_NAME")
                        && (phase != Phase::Agents
                            || s.init_containers.iter().flatten().any(|c| {
                                c.name == tracing_operator::plan::agents::INIT_CONTAINER_NAME
                            }))
                })
            })
            .count();
    let request_labels = [
        ("verb", "POST"),
        ("resource", "pods"),
        ("subresource", ""),
        ("dry_run", ""),
    ];
    let plugin_labels = [
        ("name", "MutatingAdmissionPolicy"),
        ("operation", "CREATE"),
        ("type", "admit"),
    ];
    let step_labels = [("operation", "CREATE"), ("type", "admit")];
    let policy_labels = [("policy", ADMISSION_POLICY)];
    let created_labels = [
        ("verb", "POST"),
        ("resource", "pods"),
        ("subresource", ""),
        ("code", "201"),
    ];
    let counted = |name: &str, labels: &[(&str, &str)]| {
        counter(&after, name, labels) - counter(&before, name, labels)
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        Histogram::read(&after, name, labels).since(&Histogram::read(&before, name, labels))
    };
    let figures = Figures {
        phase,
        pods: pods.len(),
        injected,
        creates: counted("apiserver_request_total", &created_labels),
        seconds,
        request: delta("apiserver_request_duration_seconds", &request_labels),
        audit: sorted(audit_latencies(&ns, audit_from, None)?),
        plugin: delta(
            "apiserver_admission_controller_admission_duration_seconds",
            &plugin_labels,
        ),
        step: delta(
            "apiserver_admission_step_admission_duration_seconds",
            &step_labels,
        ),
        policy: delta(
            "apiserver_mutating_admission_policy_check_duration_seconds",
            &policy_labels,
        ),
        policy_errors: counted(
            "apiserver_mutating_admission_policy_check_total",
            &policy_labels,
        ) - counted(
            "apiserver_mutating_admission_policy_check_total",
            &[("policy", ADMISSION_POLICY), ("error_type", "no_error")],
        ),
        serial,
        references,
    };

    // Tear down before the next phase opens its window.
    if phase.traced() {
        policies.delete(POLICY, &DeleteParams::default()).await?;
        wait(Duration::from_secs(120), "the policy is deleted", || {
            let policies = policies.clone();
            async move { Ok(policies.get_opt(POLICY).await?.is_none()) }
        })
        .await?;
    }
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    wait(
        Duration::from_secs(300),
        "the phase's namespace is gone",
        || {
            let namespaces = namespaces.clone();
            let ns = ns.clone();
            async move { Ok(namespaces.get_opt(&ns).await?.is_none()) }
        },
    )
    .await?;
    Ok(figures)
}

/// The pod of `deployment`'s template with the operator's annotations, and the
/// same pod without them.
async fn serial_pods(client: &Client, ns: &str, deployment: &str) -> Result<(Pod, Pod)> {
    let template = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(deployment)
        .await?
        .spec
        .template;
    let mut planned: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": format!("{deployment}-serial-")},
        "spec": template.spec,
    }))?;
    let metadata = template.metadata.unwrap_or_default();
    planned.metadata.labels = metadata.labels;
    planned.metadata.annotations = metadata.annotations.clone();
    let mut plain = planned.clone();
    plain.metadata.annotations = metadata.annotations.map(|a| {
        a.into_iter()
            .filter(|(k, _)| !k.contains("tracing.caas.io"))
            .collect()
    });
    Ok((planned, plain))
}

fn env_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.env.iter().flatten())
        .map(|e| e.name.clone())
        .collect()
}

/// See [`Serial`]. `injected` tells a pod the policy in force mutated.
async fn serial_creates(
    client: &Client,
    ns: &str,
    deployment: &str,
    creates: usize,
    policy: &str,
    injected: impl Fn(&Pod) -> bool,
) -> Result<Serial> {
    let (planned, plain) = serial_pods(client, ns, deployment).await?;
    let here = Api::<Pod>::namespaced(client.clone(), ns);
    let unbound_ns = Api::<Pod>::namespaced(client.clone(), OPERATOR_NAMESPACE);
    // The field manager only names the request in the audit log (a dry-run
    // create stores nothing), so each kind's server-side latency can be told apart.
    let kinds = [
        (SERIAL_BOUND, &here, &planned),
        (SERIAL_UNBOUND, &unbound_ns, &planned),
        (SERIAL_PLAIN, &here, &plain),
    ];
    let create = |kind: usize| {
        let (manager, pods, pod) = kinds[kind];
        let params = PostParams {
            dry_run: true,
            field_manager: Some(manager.to_string()),
        };
        let (pods, pod) = (pods.clone(), pod.clone());
        async move { pods.create(&params, &pod).await }
    };
    // Warm up, and check that only the bound kind is mutated.
    let own = env_names(&planned).len();
    for _ in 0..20 {
        for (kind, (manager, _, _)) in kinds.iter().enumerate() {
            let admitted = create(kind).await?;
            let mutated = injected(&admitted) || env_names(&admitted).len() > own;
            ensure!(
                mutated == (kind == 0),
                "a dry-run {manager} pod was {}mutated under {policy}",
                if mutated { "" } else { "not " }
            );
        }
    }
    let before = scrape()?;
    let from = Timestamp::now();
    for i in 0..creates {
        // Rotating which goes first, so none always follows another.
        for k in 0..kinds.len() {
            create((i + k) % kinds.len()).await?;
        }
    }
    let after = scrape()?;
    let labels = [("policy", policy)];
    let name = "apiserver_mutating_admission_policy_check_duration_seconds";
    // The API server's own time, from the testbed's audit log (given a moment to
    // reach the file).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bound = audit_latencies(ns, from, Some(SERIAL_BOUND))?;
    let unbound = audit_latencies(OPERATOR_NAMESPACE, from, Some(SERIAL_UNBOUND))?;
    let plain = audit_latencies(ns, from, Some(SERIAL_PLAIN))?;
    ensure!(
        [&bound, &unbound, &plain]
            .iter()
            .all(|v| v.len() == creates),
        "the audit log ({}) holds {} / {} / {} of the {creates} creates of each kind",
        support::audit::log_path().display(),
        bound.len(),
        unbound.len(),
        plain.len()
    );
    let halves = (
        sorted(unbound.iter().step_by(2).copied().collect()),
        sorted(unbound.iter().skip(1).step_by(2).copied().collect()),
    );
    Ok(Serial {
        bound: sorted(bound),
        unbound: sorted(unbound),
        plain: sorted(plain),
        halves,
        measured: "API server, audit log",
        policy: Histogram::read(&after, name, &labels)
            .since(&Histogram::read(&before, name, &labels)),
    })
}

/// The env entries the operator's policy adds to the phase's pod.
async fn added_entries(client: &Client, ns: &str, deployment: &str) -> Result<Vec<EnvVar>> {
    let (planned, _) = serial_pods(client, ns, deployment).await?;
    let own = env_names(&planned);
    let admitted = support::injection::admitted(client, ns, &planned).await;
    let first = admitted
        .spec
        .and_then(|s| s.containers.into_iter().next())
        .context("the admitted pod has no container")?;
    let added: Vec<EnvVar> = first
        .env
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !own.contains(&e.name))
        .collect();
    ensure!(
        !added.is_empty(),
        "the operator's policy added nothing to {deployment}'s pod"
    );
    Ok(added)
}

/// A CEL string literal.
fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `reference`'s policy: the operator's match condition, and its mutation.
fn reference_policy(reference: Reference, constants: &[EnvVar]) -> Result<serde_json::Value> {
    let (inject, names) = ("tracing.caas.io/inject", "tracing.caas.io/env");
    let entries: Vec<String> = match reference {
        Reference::Floor => vec![format!(
            "Object.spec.containers.env{{name: '{FLOOR_VARIABLE}', value: object.metadata.annotations['{inject}']}}"
        )],
        Reference::Constants => constants
            .iter()
            .map(|e| {
                let field = e.value_from.as_ref().and_then(|f| f.field_ref.as_ref());
                match (field, &e.value) {
                    (Some(f), _) => Ok(format!(
                        "Object.spec.containers.env{{name: {}, valueFrom: Object.spec.containers.env.valueFrom{{fieldRef: Object.spec.containers.env.valueFrom.fieldRef{{fieldPath: {}}}}}}}",
                        cel_string(&e.name),
                        cel_string(&f.field_path)
                    )),
                    (None, Some(v)) => Ok(format!(
                        "Object.spec.containers.env{{name: {}, value: {}}}",
                        cel_string(&e.name),
                        cel_string(v)
                    )),
                    (None, None) => bail!("added entry {} has neither a value nor a fieldRef", e.name),
                }
            })
            .collect::<Result<_>>()?,
    };
    let appended: Vec<String> = entries
        .iter()
        .map(|e| format!("JSONPatch{{op: 'add', path: '/spec/containers/0/env/-', value: {e}}}"))
        .collect();
    Ok(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": reference.policy()},
        "spec": {
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
            }]},
            "matchConditions": [{
                "name": "carries-a-tracing-plan",
                "expression": format!("has(object.metadata.annotations) && '{inject}' in object.metadata.annotations && '{names}' in object.metadata.annotations"),
            }],
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": format!(
                "has(object.spec.containers[0].env) ? [{}] : [JSONPatch{{op: 'add', path: '/spec/containers/0/env', value: [{}]}}]",
                appended.join(", "),
                entries.join(", ")
            )}}],
        },
    }))
}

/// [`serial_creates`] with the operator's binding swapped for `reference`'s
/// policy, bound to the same namespaces. The operator's binding is put back (as
/// the operator applies it) before it returns.
async fn reference_serial(
    client: &Client,
    ns: &str,
    deployment: &str,
    creates: usize,
    reference: Reference,
    constants: &[EnvVar],
) -> Result<Serial> {
    let policy = reference_policy(reference, constants)?;
    let ours =
        tracing_operator::plan::injection::mutating_admission_policy_binding(OPERATOR_NAMESPACE);
    let mut binding = ours.clone();
    binding["metadata"] = json!({"name": reference.policy()});
    binding["spec"]["policyName"] = json!(reference.policy());
    let manifest = |objects: &[&serde_json::Value]| -> Result<std::path::PathBuf> {
        let path = support::repo()
            .join("target")
            .join("bench-admission")
            .join("reference.json");
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        std::fs::write(&path, serde_json::to_vec(&list)?)?;
        Ok(path)
    };
    // What shows the reference in force on a probe pod: its own variable for the
    // floor; for the constants, the phase pod's service name where the probe's plan says `probe`.
    let service = constants
        .iter()
        .find(|e| e.name == "OTEL_SERVICE_NAME")
        .and_then(|e| e.value.clone());
    let injected = move |pod: &Pod| {
        pod.spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.env.iter().flatten())
            .any(|e| match reference {
                Reference::Floor => e.name == FLOOR_VARIABLE,
                Reference::Constants => e.name == "OTEL_SERVICE_NAME" && e.value == service,
            })
    };
    delete_operator_binding()?;
    wait_admission(client, ns, false).await;
    let path = manifest(&[&policy, &binding])?;
    kubectl(&["apply", "--server-side", "-f", &path.to_string_lossy()])?;
    let probe = support::injection::probe_pod(&[]);
    wait(
        Duration::from_secs(60),
        &format!("the {} policy is in force", reference.policy()),
        || {
            let probe = probe.clone();
            let injected = injected.clone();
            async move {
                Ok(injected(
                    &support::injection::admitted(client, ns, &probe).await,
                ))
            }
        },
    )
    .await?;
    let measured = serial_creates(
        client,
        ns,
        deployment,
        creates,
        reference.policy(),
        injected,
    )
    .await;

    // Back to the operator's binding, exactly as the operator applies it.
    kubectl(&[
        "delete",
        "-f",
        &path.to_string_lossy(),
        "--ignore-not-found",
    ])?;
    let path = manifest(&[&ours])?;
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        &format!("--field-manager={}", tracing_operator::api::FIELD_MANAGER),
        "-f",
        &path.to_string_lossy(),
    ])?;
    wait_admission(client, ns, true).await;
    measured
}

fn delete_operator_binding() -> Result<()> {
    kubectl(&[
        "delete",
        "mutatingadmissionpolicybinding",
        ADMISSION_POLICY,
        "--ignore-not-found",
    ])
    .map(drop)
}

/// The latency of each pod CREATE in `ns` since `from` (stage `ResponseComplete`
/// minus `requestReceived`), in seconds, from the testbed's audit log (with
/// `manager`, only the requests naming that field manager), in request order;
/// empty when the cluster has no such log.
fn audit_latencies(ns: &str, from: Timestamp, manager: Option<&str>) -> Result<Vec<f64>> {
    let path = support::audit::log_path();
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut files = vec![path.clone()];
    if let Some(dir) = path.parent() {
        for entry in std::fs::read_dir(dir)? {
            let file = entry?.path();
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("audit-") && name.ends_with(".log") {
                files.push(file);
            }
        }
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let object = &e["objectRef"];
            if e["stage"] != "ResponseComplete"
                || e["verb"] != "create"
                || object["resource"] != "pods"
                || object.get("subresource").is_some()
                || object["namespace"] != ns
            {
                continue;
            }
            let at = |key: &str| e[key].as_str().and_then(|t| t.parse::<Timestamp>().ok());
            let (Some(received), Some(done)) =
                (at("requestReceivedTimestamp"), at("stageTimestamp"))
            else {
                continue;
            };
            if received < from {
                continue;
            }
            let uri = e["requestURI"].as_str().unwrap_or_default();
            if manager.is_some_and(|m| !uri.contains(&format!("fieldManager={m}"))) {
                continue;
            }
            let took = done.duration_since(received);
            out.push((received, took.as_secs_f64()));
        }
    }
    // In request order.
    out.sort_by_key(|a| a.0);
    Ok(out.into_iter().map(|(_, took)| took).collect())
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// The `q` quantile of sorted `values` (nearest rank).
fn exact_quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

fn ms(seconds: f64) -> String {
    format!("{:.3} ms", seconds * 1000.0)
}

/// `p50 0.123 ms (bucket 0-5 ms)`-style text for a histogram's quantile.
fn quantile_text(h: &Histogram, q: f64) -> String {
    match (h.quantile(q), h.quantile_bounds(q)) {
        (Some(v), Some((lo, hi))) => {
            let hi = if hi.is_infinite() {
                "+Inf".to_string()
            } else {
                ms(hi)
            };
            format!("{} (bucket {} .. {hi})", ms(v), ms(lo))
        }
        _ => "-".to_string(),
    }
}

fn histogram_text(h: &Histogram) -> String {
    format!(
        "n {}  mean {}  p50 {}  p99 {}",
        h.count,
        h.mean().map_or("-".to_string(), ms),
        quantile_text(h, 0.5),
        quantile_text(h, 0.99)
    )
}

fn print_phase(f: &Figures, round: usize) {
    println!("\n== round {round}, phase {} ==", f.phase.name());
    println!(
        "  pods {} (created by POST: {}), carrying the plan {}; scale-up to all Ready {:.1} s",
        f.pods, f.creates, f.injected, f.seconds
    );
    println!(
        "  pod CREATE request latency (apiserver_request_duration_seconds): {}",
        histogram_text(&f.request)
    );
    println!(
        "  pod CREATE request latency (audit log, exact, n {}): mean {}  p50 {}  p99 {}",
        f.audit.len(),
        if f.audit.is_empty() {
            "-".to_string()
        } else {
            ms(f.audit.iter().sum::<f64>() / f.audit.len() as f64)
        },
        exact_quantile(&f.audit, 0.5).map_or("-".to_string(), ms),
        exact_quantile(&f.audit, 0.99).map_or("-".to_string(), ms),
    );
    println!(
        "  MutatingAdmissionPolicy plugin, every CREATE: {}",
        histogram_text(&f.plugin)
    );
    println!(
        "  mutating admission step, every CREATE: {}",
        histogram_text(&f.step)
    );
    println!(
        "  the policy's own mutation ({ADMISSION_POLICY}): {}; errors {}",
        histogram_text(&f.policy),
        f.policy_errors
    );
    if let Some(s) = &f.serial {
        print_serial("one at a time (dryRun=All", "the policy's own mutation", s);
    }
    for (reference, s) in &f.references {
        print_serial(
            &format!("{} (one at a time", reference.describe()),
            "that policy's own mutation",
            s,
        );
    }
}

/// `q` of each kind, and what lies between: the policy's (bound - unbound), the
/// annotations' (unbound - plain), and two samples of one create (the halves).
struct SerialDeltas {
    policy: f64,
    annotations: f64,
    noise: f64,
}

fn deltas(s: &Serial, q: f64) -> Option<SerialDeltas> {
    let at = |v: &[f64]| exact_quantile(v, q);
    Some(SerialDeltas {
        policy: at(&s.bound)? - at(&s.unbound)?,
        annotations: at(&s.unbound)? - at(&s.plain)?,
        noise: (at(&s.halves.0)? - at(&s.halves.1)?).abs(),
    })
}

/// The share of `h`'s observations at or below `bound` (one of its bucket bounds).
fn share_within(h: &Histogram, bound: f64) -> Option<f64> {
    let (_, n) = h.buckets.iter().find(|(le, _)| *le == bound)?;
    (h.count > 0.0).then(|| n / h.count)
}

fn print_serial(what: &str, own: &str, s: &Serial) {
    let q = |v: &[f64], p: f64| exact_quantile(v, p).map_or("-".to_string(), ms);
    println!(
        "  {what}, n {} each, {}): bound p50 {} p99 {}; the same pod unbound p50 {} p99 {}; \
         without the annotations p50 {} p99 {}; {own}: {}, within 1 ms {}",
        s.bound.len(),
        s.measured,
        q(&s.bound, 0.5),
        q(&s.bound, 0.99),
        q(&s.unbound, 0.5),
        q(&s.unbound, 0.99),
        q(&s.plain, 0.5),
        q(&s.plain, 0.99),
        histogram_text(&s.policy),
        share_within(&s.policy, 0.001).map_or("-".to_string(), |x| format!("{:.1} %", x * 100.0)),
    );
}

fn summary(all: &[(usize, Figures)]) {
    println!("\n== summary: added per pod CREATE, against the unbound phase of the same round ==");
    let mut by_round: BTreeMap<usize, Vec<&Figures>> = BTreeMap::new();
    for (round, f) in all {
        by_round.entry(*round).or_default().push(f);
    }
    for (round, figures) in by_round {
        let get = |p: Phase| figures.iter().find(|f| f.phase == p).copied();
        let Some(base) = get(Phase::Unbound) else {
            continue;
        };
        for phase in [Phase::Bound, Phase::Traced, Phase::Agents] {
            let Some(f) = get(phase) else { continue };
            let per_pod = |h: &Histogram, b: &Histogram| {
                if f.pods == 0 {
                    "-".to_string()
                } else {
                    ms((h.sum - b.sum) / f.pods as f64)
                }
            };
            let audit_delta =
                |q: f64| match (exact_quantile(&f.audit, q), exact_quantile(&base.audit, q)) {
                    (Some(a), Some(b)) => ms(a - b),
                    _ => "-".to_string(),
                };
            println!(
                "  round {round} {:<8} plugin time per pod {:>10}  mutating step per pod {:>10}  \
                 pod CREATE p50 {:>10}  p99 {:>10} (audit)  policy p99 {}",
                phase.name(),
                per_pod(&f.plugin, &base.plugin),
                per_pod(&f.step, &base.step),
                audit_delta(0.5),
                audit_delta(0.99),
                match f.policy.quantile_bounds(0.99) {
                    Some((lo, hi)) if f.policy.count > 0.0 =>
                        format!("in {} .. {}", ms(lo), ms(hi)),
                    _ => "- (not invoked)".to_string(),
                }
            );
            let serials = f
                .serial
                .iter()
                .map(|s| ("", s))
                .chain(f.references.iter().map(|(r, s)| (r.describe(), s)));
            for (what, s) in serials {
                let (Some(p50), Some(p99)) = (deltas(s, 0.5), deltas(s, 0.99)) else {
                    continue;
                };
                let what = what.split(',').next().unwrap_or_default();
                println!(
                    "  round {round} {:<8} one at a time {what:<9}: added by the policy p50 {:>10}  p99 {:>10}  \
                     | the annotations p50 {:>10}  p99 {:>10}  | p99 of two halves of one create apart by {:>10}  | policy mean {}",
                    phase.name(),
                    ms(p50.policy),
                    ms(p99.policy),
                    ms(p50.annotations),
                    ms(p99.annotations),
                    ms(p99.noise),
                    s.policy.mean().map_or("-".to_string(), ms),
                );
            }
        }
    }
}
