//! Runs the real controller in this test process against the testbed, and the
//! small helpers the operator tests share.
//!
//! The controller runs on its own thread and runtime, so it outlives any one
//! test and dies with the test process. Each test works in namespaces of its
//! own, selected by a label unique to that test, so tests run in parallel
//! without seeing each other's policies.
// Shared by several test binaries; each uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use tracing_operator::api::TracingPolicy;
use tracing_operator::controller::{self, Settings};
use tracing_operator::runtime::metrics::Metrics;

use crate::support;

/// Namespace the in-process operator believes it runs in.
pub const OPERATOR_NAMESPACE: &str = "tracing-operator-test";

/// A controller running in this process.
pub struct Operator {
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Operator {
    /// Starts a controller and returns once its caches are synced.
    pub fn start() -> Operator {
        let metrics = Arc::new(Metrics::default());
        let (stop, mut stopped) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let m = metrics.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("operator runtime");
            rt.block_on(async move {
                let client = support::client().await;
                install_crd(&client).await;
                // Today's suite checks the env the operator writes into pod templates,
                // so it runs the PodTemplate fallback; tests/admission.rs covers the default.
                let settings = Settings {
                    operator_namespace: OPERATOR_NAMESPACE.into(),
                    injection: controller::InjectionChoice::PodTemplate,
                    ..Settings::default()
                };
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                let run = controller::run(
                    client,
                    settings,
                    m,
                    tracing_operator::runtime::leader::Fence::unfenced(),
                    move || {
                        let _ = ready_tx.send(());
                    },
                    shutdown,
                );
                if let Err(error) = run.await {
                    panic!("the operator stopped: {error}");
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("operator caches synced within 120 s");
        Operator {
            metrics,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the controller, letting in-flight reconciles finish.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One controller shared by every test of this binary.
pub fn shared_operator() -> &'static Operator {
    static OPERATOR: OnceLock<Operator> = OnceLock::new();
    OPERATOR.get_or_init(Operator::start)
}

#[allow(unused_imports)] // not every test binary uses both
pub use crate::support::{install_crd, wait_crd_served};

/// A label that only this test's namespaces carry.
///
/// The value carries this run's id, so namespaces left behind by an earlier,
/// failed run are never selected by this run's policies.
pub fn test_label(test: &str) -> (String, String) {
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(support::suffix);
    (
        "tracing-test.caas.io/case".to_string(),
        format!("{test}-{run}"),
    )
}

/// Deletes policies of these names left by an earlier run (their status would
/// otherwise satisfy this run's waits), waiting until each is gone.
pub async fn clear_policies(client: &Client, names: &[&str]) {
    for name in names {
        delete_policy(client, name).await;
    }
}

/// Creates a namespace labelled for `test` (plus `extra`) and returns its name.
pub async fn namespace(client: &Client, test: &str, extra: &[(&str, &str)]) -> String {
    let (k, v) = test_label(test);
    let mut labels: Vec<(&str, &str)> = vec![(k.as_str(), v.as_str())];
    labels.extend_from_slice(extra);
    support::fresh_namespace(client, test, &labels).await
}

/// A container as `(name, image, env)`.
pub type ContainerSpec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A Deployment with the given containers.
pub fn deployment(
    name: &str,
    labels: &[(&str, &str)],
    containers: &[ContainerSpec<'_>],
) -> Deployment {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let containers: Vec<Container> = containers
        .iter()
        .map(|(name, image, env)| Container {
            name: name.to_string(),
            image: Some(image.to_string()),
            env: (!env.is_empty()).then(|| {
                env.iter()
                    .map(|(k, v)| EnvVar {
                        name: k.to_string(),
                        value: Some(v.to_string()),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}
        }
    }))
    .expect("deployment manifest")
}

/// Creates `d` in `ns` the way a user's tooling would (a plain create).
pub async fn create_deployment(client: &Client, ns: &str, d: &Deployment) -> Deployment {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), d)
        .await
        .expect("deployment created")
}

/// A policy selecting the namespaces labelled for `test`, with `spec` merged over it.
pub fn policy(name: &str, test: &str, spec: serde_json::Value) -> TracingPolicy {
    let (k, v) = test_label(test);
    let mut base = json!({
        "selector": {"namespaces": {"matchLabels": {k: v}}},
        "collector": {"enabled": false},
        "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger.observability.svc:4317"}],
        "rollout": {"strategy": "Immediate"}
    });
    merge(&mut base, spec);
    serde_json::from_value(json!({
        "apiVersion": "tracing.caas.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": name},
        "spec": base
    }))
    .expect("policy manifest")
}

fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// Server-side applies a policy as a user would with `kubectl apply --server-side`.
pub async fn apply_policy(client: &Client, p: &TracingPolicy) {
    let api: Api<TracingPolicy> = Api::all(client.clone());
    let name = p.metadata.name.clone().expect("policy name");
    api.patch(
        &name,
        &PatchParams::apply("kubectl").force(),
        &Patch::Apply(p),
    )
    .await
    .expect("policy applies");
}

/// Deletes a policy and waits until it is gone (its finalizer ran).
pub async fn delete_policy(client: &Client, name: &str) {
    let api: Api<TracingPolicy> = Api::all(client.clone());
    let _ = api.delete(name, &Default::default()).await;
    support::wait_until(
        &format!("TracingPolicy {name} is deleted"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move { matches!(api.get_opt(name).await, Ok(None)).then_some(()) }
        },
    )
    .await;
}

/// Waits until the policy's status describes its current generation and `cond` holds.
pub async fn wait_policy<F>(client: &Client, name: &str, what: &str, cond: F) -> TracingPolicy
where
    F: Fn(&TracingPolicy) -> bool,
{
    wait_policy_within(client, name, what, Duration::from_secs(90), cond).await
}

/// [`wait_policy`] with a timeout of the caller's.
pub async fn wait_policy_within<F>(
    client: &Client,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: F,
) -> TracingPolicy
where
    F: Fn(&TracingPolicy) -> bool,
{
    let api: Api<TracingPolicy> = Api::all(client.clone());
    let cond = &cond;
    support::wait_until(&format!("TracingPolicy {name}: {what}"), timeout, || {
        let api = api.clone();
        async move {
            let p = api.get(name).await.ok()?;
            let observed = p.status.as_ref()?.observed_generation == p.metadata.generation;
            (observed && cond(&p)).then_some(p)
        }
    })
    .await
}

/// The status of condition `type_` (`True`/`False`), if present.
pub fn condition(p: &TracingPolicy, type_: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// The env of container `container` in a Deployment, as `name -> value`
/// (`valueFrom` entries as `<fieldRef:PATH>`).
/// The variables pods of `d` get in `container`, whichever way the operator
/// injects: the template's own env, plus (admission injection) the planned
/// variables its annotations carry for that container, where the container
/// does not set them itself (values as planned, before admission adds the
/// container's version and name).
pub fn planned_env(d: &Deployment, container: &str) -> BTreeMap<String, String> {
    let mut env = env_of(d, container);
    let annotations = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let listed = annotations
        .get("tracing.caas.io/inject")
        .is_some_and(|c| c.split(',').any(|c| c == container));
    if listed {
        for name in annotations
            .get("tracing.caas.io/env")
            .map(|n| n.split(',').collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let value = annotations
                .get(&format!("env.tracing.caas.io/{name}"))
                .cloned()
                .unwrap_or_else(|| "<fieldRef>".to_string());
            env.entry(name.to_string()).or_insert(value);
        }
    }
    env
}

pub fn env_of(d: &Deployment, container: &str) -> BTreeMap<String, String> {
    let containers = d
        .spec
        .template
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let c = containers
        .iter()
        .find(|c| c.name == container)
        .cloned()
        .unwrap_or_default();
    c.env
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let v = match (e.value, e.value_from.and_then(|f| f.field_ref)) {
                (Some(v), _) => v,
                (None, Some(f)) => format!("<fieldRef:{}>", f.field_path),
                (None, None) => String::new(),
            };
            (e.name, v)
        })
        .collect()
}

/// Polls a Deployment until `cond` holds.
pub async fn wait_deployment<F>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    cond: F,
) -> Deployment
where
    F: Fn(&Deployment) -> bool,
{
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let cond = &cond;
    support::wait_until(
        &format!("Deployment {ns}/{name}: {what}"),
        Duration::from_secs(90),
        || {
            let api = api.clone();
            async move {
                let d = api.get(name).await.ok()?;
                cond(&d).then_some(d)
            }
        },
    )
    .await
}

/// Carries the operator's settings in container `app`, whatever its rollout state.
pub fn traced(d: &Deployment) -> bool {
    env_of(d, "app").contains_key("OTEL_SERVICE_NAME")
}

/// Its controller reports the current template rolled out and available.
pub fn rolled_out(d: &Deployment) -> bool {
    let want = d.spec.replicas.unwrap_or(1);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.available_replicas == Some(want)
            && s.replicas == Some(want)
    })
}

/// Replacing pods because of the operator: it carries the settings, its
/// controller does not report it done, and the operator has not recorded its
/// rollout as complete (that record bumps the generation, which rolls nothing).
pub fn rolling_because_of_us(d: &Deployment) -> bool {
    let annotation = |key: &str| d.metadata.annotations.as_ref().and_then(|a| a.get(key));
    let recorded = annotation("tracing.caas.io/rolled-out").is_some()
        && annotation("tracing.caas.io/rolled-out") == annotation("tracing.caas.io/config-hash");
    traced(d) && !rolled_out(d) && !recorded
}

/// Every Deployment in `ns`.
pub async fn deployments(client: &Client, ns: &str) -> Vec<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("list deployments")
        .items
}
