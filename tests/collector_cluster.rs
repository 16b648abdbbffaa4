//! The policy's OpenTelemetry Collector on the real testbed: what a platform
//! team checks after turning the collector on. The controller runs in this
//! process (tests/operator/harness.rs); kwok makes the collector pods Ready.
//!
//! The tests take turns (one lock): the converged-cluster check counts the
//! operator's writes, which the other tests would add to.

mod support;

#[path = "operator/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

use harness::*;
use tracing_operator::api::TracingPolicy;

static TURN: Mutex<()> = Mutex::const_new(());

const CONFIG_HASH: &str = "tracing.caas.io/config-hash";
const BACKEND: &str = "http://jaeger.observability.svc:4317";

fn collector(policy: &str) -> String {
    format!("{policy}-collector")
}

fn endpoint(policy: &str, ns: &str) -> String {
    format!("http://{policy}-collector.{ns}.svc:4318/v1/traces")
}

fn sampler(policy: &str) -> String {
    format!("{policy}-sampler")
}

/// The three collector objects of `policy` in `ns`, once all exist.
async fn collector_objects(
    client: &Client,
    policy: &str,
    ns: &str,
) -> (ConfigMap, Deployment, Service) {
    objects_named(client, &collector(policy), ns).await
}

/// The ConfigMap, Deployment and Service called `name` in `ns`, once all exist.
async fn objects_named(client: &Client, name: &str, ns: &str) -> (ConfigMap, Deployment, Service) {
    let name = name.to_string();
    support::wait_until(
        &format!("the collector objects {name} exist in {ns}"),
        Duration::from_secs(90),
        || {
            let (client, name) = (client.clone(), name.clone());
            async move {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
                    .get_opt(&name)
                    .await
                    .ok()??;
                let d = Api::<Deployment>::namespaced(client.clone(), ns)
                    .get_opt(&name)
                    .await
                    .ok()??;
                let s = Api::<Service>::namespaced(client, ns)
                    .get_opt(&name)
                    .await
                    .ok()??;
                Some((cm, d, s))
            }
        },
    )
    .await
}

/// Waits until none of the collector objects of `policy` is left in `ns`.
async fn collector_gone(client: &Client, policy: &str, ns: &str, why: &str) {
    gone_named(client, &collector(policy), ns, why).await
}

/// Waits until none of the objects called `name` is left in `ns`.
async fn gone_named(client: &Client, name: &str, ns: &str, why: &str) {
    let name = name.to_string();
    support::wait_until(
        &format!("the collector objects {name} in {ns} are deleted ({why})"),
        Duration::from_secs(90),
        || {
            let (client, name) = (client.clone(), name.clone());
            async move {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
                    .get_opt(&name)
                    .await
                    .ok()?;
                let d = Api::<Deployment>::namespaced(client.clone(), ns)
                    .get_opt(&name)
                    .await
                    .ok()?;
                let s = Api::<Service>::namespaced(client, ns)
                    .get_opt(&name)
                    .await
                    .ok()?;
                (cm.is_none() && d.is_none() && s.is_none()).then_some(())
            }
        },
    )
    .await
}

fn assert_owned_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    policy: &TracingPolicy,
) {
    let refs = meta.owner_references.clone().unwrap_or_default();
    let owner = refs
        .iter()
        .find(|r| r.kind == "TracingPolicy")
        .unwrap_or_else(|| panic!("{:?} has no TracingPolicy owner: {refs:?}", meta.name));
    assert_eq!(owner.api_version, "tracing.caas.io/v1alpha1");
    assert_eq!(owner.name, policy.name_any());
    assert_eq!(Some(&owner.uid), policy.meta().uid.as_ref());
    assert_eq!(owner.controller, Some(true));
}

fn template_hash(d: &Deployment) -> String {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH))
        .cloned()
        .expect("collector pod template carries the config hash")
}

fn config_text(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("collector.yaml"))
        .cloned()
        .expect("collector.yaml in the ConfigMap")
}

fn collector_status(p: &TracingPolicy) -> Option<(String, i32)> {
    let c = p.status.as_ref()?.collector.as_ref()?;
    Some((c.endpoint.clone(), c.ready_replicas))
}

/// `status.collector.samplers`: (replicas, readyReplicas).
fn sampler_status(p: &TracingPolicy) -> Option<(i32, i32)> {
    let c = p.status.as_ref()?.collector.as_ref()?.samplers.as_ref()?;
    Some((c.replicas, c.ready_replicas))
}

fn degraded(p: &TracingPolicy) -> Option<(String, String, String)> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Writes of ConfigMaps and Services so far: only collectors make them.
fn collector_writes(operator: &Operator) -> u64 {
    let text = operator.metrics.encode().expect("metrics encode");
    text.lines()
        .filter(|l| l.starts_with("tracing_operator_api_writes_total{"))
        .filter(|l| l.contains("kind=\"ConfigMap\"") || l.contains("kind=\"Service\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn generation(client: &Client, ns: &str, name: &str) -> i64 {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("deployment exists");
    d.metadata.generation.expect("generation")
}

/// A test's name for this run (its policy's and its namespaces' label), the
/// namespace its policy selects and one for its collector: all deleted when the
/// test ends, passed or not, so a failed run leaves nothing for the next one (or
/// another test binary) to trip over.
struct Case {
    test: String,
    apps: String,
    obs: String,
    _cleanup: support::Cleanup,
}

async fn case(client: &Client, base: &str) -> Case {
    let test = support::unique(base);
    let apps = namespace(client, &test, &[]).await;
    let obs = support::fresh_namespace(client, &format!("{base}-obs"), &[]).await;
    Case {
        _cleanup: support::Cleanup::new(&[&test], &[&apps, &obs]),
        test,
        apps,
        obs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_collector_is_deployed_owned_and_rolled_by_its_config_alone() {
    let _turn = TURN.lock().await;
    let operator = shared_operator();
    let client = support::client().await;
    let Case {
        test,
        apps,
        obs,
        _cleanup,
    } = case(&client, "coll-central").await;
    create_deployment(
        &client,
        &apps,
        &deployment("gateway", &[], &[("gateway", "caas/gateway:2.4.1", &[])]),
    )
    .await;

    // Tail sampling: routers (1) behind the workloads' Service, samplers (2).
    let spec = |tail_ratio: f64| {
        json!({
            "collector": {"enabled": true, "placement": "Central", "namespace": obs, "replicas": 1,
                          "sampling": {"replicas": 2}},
            "sampling": {"ratio": 1.0, "tail": {"keepErrors": true, "ratio": tail_ratio}}
        })
    };
    apply_policy(&client, &policy(&test, &test, spec(0.1))).await;

    // Both tiers' objects exist in the collector namespace, owned by the policy.
    let (cm, d, svc) = collector_objects(&client, &test, &obs).await;
    let (sampler_cm, sampler_d, sampler_svc) = objects_named(&client, &sampler(&test), &obs).await;
    let p = Api::<TracingPolicy>::all(client.clone())
        .get(&test)
        .await
        .expect("policy exists");
    for meta in [
        &cm.metadata,
        &d.metadata,
        &svc.metadata,
        &sampler_cm.metadata,
        &sampler_d.metadata,
        &sampler_svc.metadata,
    ] {
        assert_owned_by(meta, &p);
    }
    let ports: BTreeMap<String, i32> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("otlp-grpc".into(), 4317), ("otlp-http".into(), 4318)])
    );
    // The samplers' Service is headless: its name resolves to the ready samplers.
    assert_eq!(
        sampler_svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
    // The routers pass each trace by its ID to the samplers, which decide.
    let router_config = config_text(&cm);
    assert!(
        router_config.contains("routing_key: traceID")
            && router_config.contains(&format!("hostname: {}.{obs}.svc", sampler(&test)))
            && !router_config.contains("tail_sampling"),
        "{router_config}"
    );
    assert!(
        config_text(&sampler_cm).contains("sampling_percentage: 10"),
        "{}",
        config_text(&sampler_cm)
    );

    // The workload exports to the routers, and the status says where and how
    // many of each tier are ready.
    let want = endpoint(&test, &obs);
    wait_deployment(&client, &apps, "gateway", "exports to the collector", |d| {
        env_of(d, "gateway").get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == Some(&want)
    })
    .await;
    let p = wait_policy(
        &client,
        &test,
        "Ready with one ready router and two ready samplers",
        |p| {
            collector_status(p) == Some((want.clone(), 1))
                && sampler_status(p) == Some((2, 2))
                && condition(p, "Ready").as_deref() == Some("True")
        },
    )
    .await;
    assert_eq!(degraded(&p).map(|d| d.0).as_deref(), Some("False"));

    // Converged: reconciling again writes no collector object. Only ConfigMap and
    // Service writes are counted (collectors alone make them), and a few windows
    // are tried: this in-process controller also reconciles the policies other
    // test binaries have on the shared testbed, some with collectors. A policy
    // that wrote on every reconcile would write in every window.
    let mut windows = Vec::new();
    for round in 0..3 {
        let writes = collector_writes(operator);
        let reconciles = operator.metrics.reconciles_total();
        Api::<TracingPolicy>::all(client.clone())
            .patch(
                &test,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"touched": round.to_string()}}})),
            )
            .await
            .expect("policy annotated");
        support::wait_until(
            "the touched policy is reconciled",
            Duration::from_secs(30),
            || async { (operator.metrics.reconciles_total() > reconciles).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        windows.push(collector_writes(operator) - writes);
        if windows.last() == Some(&0) {
            break;
        }
    }
    assert_eq!(
        windows.last(),
        Some(&0),
        "every reconcile of a converged policy wrote ConfigMaps or Services: {windows:?}"
    );

    // A tail-sampling change rolls only the samplers: not the routers, not the application.
    let app_generation = generation(&client, &apps, "gateway").await;
    let router_generation = generation(&client, &obs, &collector(&test)).await;
    let old_hash = template_hash(&sampler_d);
    apply_policy(&client, &policy(&test, &test, spec(0.5))).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &obs);
    support::wait_until(
        "the sampler config carries the new tail ratio",
        Duration::from_secs(60),
        || {
            let (cms, name) = (cms.clone(), sampler(&test));
            async move {
                config_text(&cms.get(&name).await.ok()?)
                    .contains("sampling_percentage: 50")
                    .then_some(())
            }
        },
    )
    .await;
    let rolled = wait_deployment(
        &client,
        &obs,
        &sampler(&test),
        "rolled to the new config",
        |d| template_hash(d) != old_hash,
    )
    .await;
    let new_hash = template_hash(&rolled);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &obs);
    let selector = format!("app.kubernetes.io/instance={}", sampler(&test));
    support::wait_until(
        "a new sampler ReplicaSet runs the new config",
        Duration::from_secs(60),
        || {
            let (replica_sets, selector, new_hash) =
                (replica_sets.clone(), selector.clone(), new_hash.clone());
            async move {
                let list = replica_sets
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                let hashes: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|rs| {
                        rs.spec
                            .template
                            .as_ref()?
                            .metadata
                            .as_ref()?
                            .annotations
                            .as_ref()?
                            .get(CONFIG_HASH)
                            .cloned()
                    })
                    .collect();
                (list.items.len() >= 2 && hashes.contains(&new_hash)).then_some(())
            }
        },
    )
    .await;
    wait_policy(&client, &test, "Ready after the tail change", |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && collector_status(p).is_some_and(|c| c.1 == 1)
            && sampler_status(p) == Some((2, 2))
    })
    .await;
    assert_eq!(
        generation(&client, &apps, "gateway").await,
        app_generation,
        "changing tail sampling must not touch the application's Deployment"
    );
    assert_eq!(
        generation(&client, &obs, &collector(&test)).await,
        router_generation,
        "changing tail sampling must not touch the routers"
    );

    // Deleting the policy deletes both tiers (owner references).
    delete_policy(&client, &test).await;
    collector_gone(&client, &test, &obs, "the policy was deleted").await;
    gone_named(&client, &sampler(&test), &obs, "the policy was deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_placement_runs_one_collector_in_each_selected_namespace() {
    let _turn = TURN.lock().await;
    shared_operator();
    let client = support::client().await;
    let test = support::unique("coll-perns");
    let a = namespace(&client, &test, &[]).await;
    let b = namespace(&client, &test, &[]).await;
    let _cleanup = support::Cleanup::new(&[&test], &[&a, &b]);
    for ns in [&a, &b] {
        create_deployment(
            &client,
            ns,
            &deployment("auth", &[], &[("auth", "caas/auth:1.0.0", &[])]),
        )
        .await;
    }
    apply_policy(
        &client,
        &policy(
            &test,
            &test,
            json!({"collector": {"enabled": true, "placement": "PerNamespace", "replicas": 1}}),
        ),
    )
    .await;

    for ns in [&a, &b] {
        collector_objects(&client, &test, ns).await;
        let want = endpoint(&test, ns);
        wait_deployment(
            &client,
            ns,
            "auth",
            "exports to its namespace's collector",
            |d| env_of(d, "auth").get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == Some(&want),
        )
        .await;
    }
    let pattern = format!("http://{test}-collector.<namespace>.svc:4318/v1/traces");
    wait_policy(&client, &test, "both collectors ready", |p| {
        collector_status(p) == Some((pattern.clone(), 2))
    })
    .await;

    // A namespace that leaves the selection loses its collector.
    let (key, _) = test_label(&test);
    Api::<Namespace>::all(client.clone())
        .patch(
            &b,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: null}}})),
        )
        .await
        .expect("namespace relabelled");
    collector_gone(&client, &test, &b, "its namespace left the selection").await;
    wait_policy(&client, &test, "one collector left", |p| {
        collector_status(p) == Some((pattern.clone(), 1))
    })
    .await;
    collector_objects(&client, &test, &a).await;

    delete_policy(&client, &test).await;
    collector_gone(&client, &test, &a, "the policy was deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_headers_secret_degrades_and_touches_no_workload_until_it_exists() {
    let _turn = TURN.lock().await;
    let operator = shared_operator();
    let client = support::client().await;
    let Case {
        test,
        apps,
        obs,
        _cleanup,
    } = case(&client, "coll-secret").await;
    let secret = "vendor-headers";
    apply_policy(
        &client,
        &policy(
            &test,
            &test,
            json!({
                "collector": {"enabled": true, "namespace": obs},
                "backends": [{"name": "vendor", "type": "otlp", "endpoint": "https://otlp.vendor.example:4317",
                              "headersSecretRef": {"name": secret}}]
            }),
        ),
    )
    .await;

    let p = wait_policy(&client, &test, "Degraded naming the missing Secret", |p| {
        degraded(p)
            .is_some_and(|(status, reason, _)| status == "True" && reason == "SecretNotFound")
    })
    .await;
    let (_, _, message) = degraded(&p).expect("Degraded condition");
    assert!(message.contains(&format!("{obs}/{secret}")), "{message}");
    assert!(
        message.contains("spec.backends[vendor].headersSecretRef"),
        "{message}"
    );
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));

    // A workload created now is reconciled but not pointed at a collector that cannot start.
    let reconciles = operator.metrics.reconciles_total();
    create_deployment(
        &client,
        &apps,
        &deployment("socket", &[], &[("socket", "caas/socket:3.1.0", &[])]),
    )
    .await;
    // Two reconciles finished after the create (the first may have started before it).
    support::wait_until(
        "the new workload is reconciled",
        Duration::from_secs(60),
        || async { (operator.metrics.reconciles_total() >= reconciles + 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = Api::<Deployment>::namespaced(client.clone(), &apps)
        .get("socket")
        .await
        .expect("socket exists");
    assert!(
        env_of(&d, "socket").is_empty(),
        "a workload got env while its collector cannot start: {:?}",
        env_of(&d, "socket")
    );
    assert!(d.annotations().get("tracing.caas.io/policy").is_none());
    let none = Api::<Deployment>::namespaced(client.clone(), &obs)
        .get_opt(&collector(&test))
        .await
        .expect("get");
    assert!(none.is_none(), "a collector that cannot start was created");

    // Creating the Secret heals it: the collector reads the header from it.
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": secret},
        "stringData": {"x-api-key": "not-a-real-key"}
    }))
    .expect("secret manifest");
    Api::<Secret>::namespaced(client.clone(), &obs)
        .create(&PostParams::default(), &s)
        .await
        .expect("secret created");
    let (cm, d, _) = collector_objects(&client, &test, &obs).await;
    assert!(
        !config_text(&cm).contains("not-a-real-key"),
        "a header value reached the ConfigMap"
    );
    let env = d
        .spec
        .template
        .spec
        .as_ref()
        .map(|s| s.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    let from_secret: Vec<(String, String)> = env
        .iter()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((r.name.clone(), r.key.clone()))
        })
        .collect();
    assert_eq!(from_secret, [(secret.to_string(), "x-api-key".to_string())]);
    let want = endpoint(&test, &obs);
    wait_deployment(&client, &apps, "socket", "exports to the collector", |d| {
        env_of(d, "socket").get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == Some(&want)
    })
    .await;
    wait_policy(&client, &test, "no longer Degraded", |p| {
        degraded(p).is_some_and(|d| d.0 == "False")
    })
    .await;

    delete_policy(&client, &test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_the_collector_off_deletes_it_and_workloads_export_to_the_backend() {
    let _turn = TURN.lock().await;
    shared_operator();
    let client = support::client().await;
    let Case {
        test,
        apps,
        obs,
        _cleanup,
    } = case(&client, "coll-off").await;
    create_deployment(
        &client,
        &apps,
        &deployment("gateway", &[], &[("gateway", "caas/gateway:2.4.1", &[])]),
    )
    .await;
    apply_policy(
        &client,
        &policy(
            &test,
            &test,
            json!({"collector": {"enabled": true, "namespace": obs},
                                     "sampling": {"tail": {"keepErrors": true}}}),
        ),
    )
    .await;
    collector_objects(&client, &test, &obs).await;
    objects_named(&client, &sampler(&test), &obs).await;
    let to_collector = endpoint(&test, &obs);
    wait_deployment(&client, &apps, "gateway", "exports to the collector", |d| {
        env_of(d, "gateway").get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == Some(&to_collector)
    })
    .await;

    // The harness's base spec has the collector off; tail sampling goes with it.
    apply_policy(&client, &policy(&test, &test, json!({}))).await;
    collector_gone(&client, &test, &obs, "the collector was turned off").await;
    gone_named(
        &client,
        &sampler(&test),
        &obs,
        "the collector was turned off",
    )
    .await;
    let d = wait_deployment(
        &client,
        &apps,
        "gateway",
        "exports straight to the backend",
        |d| {
            env_of(d, "gateway")
                .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .map(String::as_str)
                == Some(BACKEND)
        },
    )
    .await;
    assert_eq!(
        env_of(&d, "gateway")
            .get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(String::as_str),
        Some("grpc")
    );
    wait_policy(&client, &test, "no collector in status", |p| {
        collector_status(p).is_none()
    })
    .await;

    delete_policy(&client, &test).await;
}
