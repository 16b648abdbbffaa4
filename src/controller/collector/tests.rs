use super::*;

use kube::runtime::watcher::Event;

/// The objects of both tiers as a real kube-apiserver (the testbed's v1.37)
/// stores them after `kubectl apply --server-side --field-manager=tracing-operator`
/// of the apply bodies of [`fixture_plan`] and [`router_plan`]
/// ([`write_fixture_bodies`]): server defaults added, quantities canonicalized
/// (`0.1` -> `100m`, `0.5Gi` -> `512Mi`), managedFields present, the
/// Deployments rolled out (their status as kwok's pods made it).
const STORED_CONFIG_MAP: &str = include_str!("fixtures/cm.json");
const STORED_SERVICE: &str = include_str!("fixtures/svc.json");
const STORED_DEPLOYMENT: &str = include_str!("fixtures/deploy.json");
const STORED_PDB: &str = include_str!("fixtures/pdb.json");
const STORED_ROUTER_CONFIG_MAP: &str = include_str!("fixtures/router-cm.json");
const STORED_ROUTER_SERVICE: &str = include_str!("fixtures/router-svc.json");
const STORED_ROUTER_DEPLOYMENT: &str = include_str!("fixtures/router-deploy.json");
const STORED_ROUTER_PDB: &str = include_str!("fixtures/router-pdb.json");
const STORED_ROUTER_HPA: &str = include_str!("fixtures/router-hpa.json");

/// The owner the fixtures were applied with.
const FIXTURE_OWNER_UID: &str = "d2e98d4d-233e-4ead-9d11-9a7eacda9d17";

const FIXTURE_SPEC: &str = r#"
sampling: {ratio: 0.1, tail: {keepErrors: true, slowerThan: 500ms, ratio: 0.1}}
collector:
  resources: {requests: {cpu: "0.1", memory: 128Mi}, limits: {cpu: "1000m", memory: "0.5Gi"}}
  autoscaling: {maxReplicas: 4}
backends:
  - name: jaeger
    type: jaeger
    endpoint: http://jaeger-collector.observability.svc:4317
    tls: {caSecretRef: {name: jaeger-ca, key: ca.crt}}
    headersSecretRef: {name: vendor}
"#;

fn spec(yaml: &str) -> TracingPolicySpec {
    serde_saphyr::from_str(yaml).expect("test spec parses")
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: FIXTURE_OWNER_UID.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn plan_tier(spec: &TracingPolicySpec, tier: Tier, header_keys: &[&str]) -> CollectorPlan {
    let keys = HeaderSecretKeys::from([(
        "vendor".to_string(),
        header_keys.iter().map(|k| k.to_string()).collect(),
    )]);
    let owner = owner();
    plan_collector(&CollectorInput {
        policy: "fixture",
        spec,
        tier,
        namespace: "collector-fixture",
        sampler_namespace: "collector-fixture",
        header_secret_keys: &keys,
        owner: Some(&owner),
    })
    .expect("fixture plans")
}

fn plan_of(spec: &TracingPolicySpec, header_keys: &[&str]) -> CollectorPlan {
    plan_tier(spec, Tier::Sampler, header_keys)
}

/// The samplers of the fixture: every kind of field the operator sets
/// (Secrets as env and volumes, resources, a preStop sleep, a strategy).
fn fixture_plan() -> CollectorPlan {
    plan_of(&spec(FIXTURE_SPEC), &["x-api-key"])
}

fn router_plan() -> CollectorPlan {
    plan_tier(&spec(FIXTURE_SPEC), Tier::Router, &["x-api-key"])
}

/// A stored object as the cache holds it: parsed into its type and trimmed.
fn cached<K: DeserializeOwned + Serialize>(json: &str, trim: fn(&mut K)) -> Value {
    let mut object: K = serde_json::from_str(json).expect("fixture parses");
    trim(&mut object);
    serde_json::to_value(&object).expect("serializes")
}

fn body<K: Serialize>(object: &K) -> Value {
    apply_body(object).expect("apply body")
}

#[test]
fn what_the_api_server_stored_is_current() {
    let plan = fixture_plan();
    let cm = cached::<ConfigMap>(STORED_CONFIG_MAP, trim_config_map);
    let svc = cached::<Service>(STORED_SERVICE, trim_service);
    let deploy = cached::<Deployment>(STORED_DEPLOYMENT, trim_deployment);
    let pdb = cached::<PodDisruptionBudget>(STORED_PDB, trim_pod_disruption_budget);
    assert!(is_current(&body(&plan.config_map), &cm));
    assert!(is_current(&body(&plan.service), &svc));
    assert!(is_current(&body(&plan.deployment), &deploy));
    assert!(is_current(&body(&plan.pod_disruption_budget), &pdb));

    let router = router_plan();
    let cm = cached::<ConfigMap>(STORED_ROUTER_CONFIG_MAP, trim_config_map);
    let svc = cached::<Service>(STORED_ROUTER_SERVICE, trim_service);
    let deploy = cached::<Deployment>(STORED_ROUTER_DEPLOYMENT, trim_deployment);
    let pdb = cached::<PodDisruptionBudget>(STORED_ROUTER_PDB, trim_pod_disruption_budget);
    let hpa = cached::<HorizontalPodAutoscaler>(STORED_ROUTER_HPA, trim_autoscaler);
    assert!(is_current(&body(&router.config_map), &cm));
    assert!(is_current(&body(&router.service), &svc));
    assert!(is_current(&body(&router.deployment), &deploy));
    assert!(is_current(&body(&router.pod_disruption_budget), &pdb));
    let autoscaler = router.autoscaler.as_ref().expect("the fixture autoscales");
    assert!(is_current(&body(autoscaler), &hpa));
    // The autoscaler owns the routers' replicas: the operator's body leaves them out.
    assert!(body(&router.deployment)["spec"].get("replicas").is_none());
}

#[test]
fn planning_twice_gives_the_same_body() {
    assert_eq!(
        body(&fixture_plan().deployment),
        body(&fixture_plan().deployment)
    );
}

/// Applies `edit` to the cached Deployment and says whether it is still current.
fn deployment_current_after(edit: impl FnOnce(&mut Value)) -> bool {
    let mut live = cached::<Deployment>(STORED_DEPLOYMENT, trim_deployment);
    edit(&mut live);
    is_current(&body(&fixture_plan().deployment), &live)
}

fn container(live: &mut Value) -> &mut Value {
    &mut live["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn a_changed_applied_field_is_seen() {
    assert!(!deployment_current_after(
        |d| d["spec"]["replicas"] = 3.into()
    ));
    assert!(!deployment_current_after(
        |d| container(d)["image"] = "otel/opentelemetry-collector-contrib:0.150.0".into()
    ));
    assert!(!deployment_current_after(|d| {
        d["spec"]["template"]["metadata"]["annotations"]["tracing.caas.io/config-hash"] =
            "0000000000000000".into()
    }));
    assert!(!deployment_current_after(
        |d| container(d)["resources"]["limits"]["memory"] = "1Gi".into()
    ));
    assert!(!deployment_current_after(|d| {
        container(d)["env"].as_array_mut().expect("env").clear()
    }));
    assert!(!deployment_current_after(|d| {
        container(d)["args"] = serde_json::json!(["--config=/elsewhere.yaml"])
    }));
    assert!(!deployment_current_after(|d| {
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "someone-else".into()
    }));
    assert!(!deployment_current_after(|d| {
        d["metadata"]["ownerReferences"][0]["uid"] = "another-uid".into()
    }));
    assert!(!deployment_current_after(|d| {
        container(d)["securityContext"]["readOnlyRootFilesystem"] = false.into()
    }));

    let plan = fixture_plan();
    let mut cm = cached::<ConfigMap>(STORED_CONFIG_MAP, trim_config_map);
    cm["data"][crate::plan::collector::CONFIG_FILE] = "receivers: {}\n".into();
    assert!(!is_current(&body(&plan.config_map), &cm));
    let mut svc = cached::<Service>(STORED_SERVICE, trim_service);
    svc["spec"]["ports"][0]["port"] = 14317.into();
    assert!(!is_current(&body(&plan.service), &svc));
    let mut pdb = cached::<PodDisruptionBudget>(STORED_PDB, trim_pod_disruption_budget);
    pdb["spec"]["maxUnavailable"] = 2.into();
    assert!(!is_current(&body(&plan.pod_disruption_budget), &pdb));
    assert!(!deployment_current_after(|d| {
        container(d)["lifecycle"]["preStop"]["sleep"]["seconds"] = 1.into()
    }));
}

#[test]
fn a_changed_intent_is_seen_even_where_the_stored_fields_still_match() {
    // Without the header Secret's key the plan sets fewer fields (no header env,
    // no `headers` in the config). The config changes here too, but the applied
    // hash alone must be enough: the stored object contains every field of the
    // smaller body except the changed ones, so compare with the hash restored.
    let smaller = plan_of(&spec(FIXTURE_SPEC), &[]);
    let live = cached::<Deployment>(STORED_DEPLOYMENT, trim_deployment);
    let want = body(&smaller.deployment);
    assert!(!is_current(&want, &live));
    let mut same_hash = want.clone();
    same_hash["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] =
        live["metadata"]["annotations"][APPLIED_HASH_ANNOTATION].clone();
    same_hash["spec"]["template"]["metadata"]["annotations"]["tracing.caas.io/config-hash"] =
        live["spec"]["template"]["metadata"]["annotations"]["tracing.caas.io/config-hash"].clone();
    assert!(
        contains(&same_hash, Some(&live), Scope::Plain),
        "the smaller intent is a subset of what is stored"
    );
    assert!(
        is_current(&same_hash, &live),
        "so only the hash can tell them apart"
    );
    assert_ne!(
        want["metadata"]["annotations"][APPLIED_HASH_ANNOTATION],
        live["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    );
}

#[test]
fn the_first_difference_is_named_for_the_log() {
    let want = body(&fixture_plan().deployment);
    let mut live = cached::<Deployment>(STORED_DEPLOYMENT, trim_deployment);
    assert_eq!(first_difference(&want, &live), None);
    container(&mut live)["resources"]["limits"]["cpu"] = "2".into();
    assert_eq!(
        first_difference(&want, &live).as_deref(),
        Some(".spec.template.spec.containers[0]")
    );
    live["spec"]["replicas"] = 5.into();
    assert_eq!(
        first_difference(&want, &live).as_deref(),
        Some(".spec.replicas")
    );
}

#[test]
fn what_others_add_is_ignored() {
    assert!(deployment_current_after(|d| {
        d["metadata"]["labels"]["team"] = "platform".into();
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "7".into();
        container(d)["env"]
            .as_array_mut()
            .expect("env")
            .push(serde_json::json!({"name": "GOMEMLIMIT", "value": "400MiB"}));
        d["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(serde_json::json!({"name": "sidecar", "image": "sidecar:1"}));
        d["status"]["readyReplicas"] = 0.into();
    }));
}

#[test]
fn a_missing_object_or_hash_is_not_current() {
    let want = body(&fixture_plan().config_map);
    let mut live = cached::<ConfigMap>(STORED_CONFIG_MAP, trim_config_map);
    assert!(is_current(&want, &live));
    live["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations")
        .remove(APPLIED_HASH_ANNOTATION);
    assert!(!is_current(&want, &live));
    assert!(!is_current(&want, &Value::Null));
    // A body without the hash (never produced by apply_body) is never current.
    let mut unhashed = want.clone();
    unhashed["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations")
        .remove(APPLIED_HASH_ANNOTATION);
    assert!(!is_current(&unhashed, &live));
}

#[test]
fn apply_body_hashes_the_whole_intent() {
    let plan = fixture_plan();
    let b = body(&plan.deployment);
    assert_eq!(b["apiVersion"], "apps/v1");
    assert_eq!(b["kind"], "Deployment");
    let hash = b["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
        .as_str()
        .expect("hash")
        .to_string();
    assert_eq!(hash.len(), 16);
    // Any planned field changes it, not only the collector configuration.
    let mut more = plan.deployment.clone();
    more.spec.replicas = Some(7);
    assert_ne!(
        body(&more)["metadata"]["annotations"][APPLIED_HASH_ANNOTATION],
        hash.as_str()
    );
}

#[test]
fn empty_desired_values_match_missing_fields() {
    let live = serde_json::json!({"a": {"b": 1}});
    for empty in [
        Value::Null,
        "".into(),
        serde_json::json!({}),
        serde_json::json!([]),
    ] {
        let want = serde_json::json!({"a": {"b": 1, "c": empty}});
        assert!(contains(&want, Some(&live), Scope::Plain), "{want}");
    }
    let want = serde_json::json!({"a": {"c": 0}});
    assert!(!contains(&want, Some(&live), Scope::Plain));
    // Lists of scalars are atomic: order and length matter.
    assert!(!contains(
        &serde_json::json!({"drop": ["ALL"]}),
        Some(&serde_json::json!({"drop": ["ALL", "NET_RAW"]})),
        Scope::Plain
    ));
}

#[test]
fn quantities_compare_by_value() {
    let q = |s: &str| quantity_nanos(s).unwrap_or_else(|| panic!("{s} parses"));
    assert_eq!(q("100m"), q("0.1"));
    assert_eq!(q("1"), q("1000m"));
    assert_eq!(q("1Gi"), q("1024Mi"));
    assert_eq!(q("512Mi"), q("0.5Gi"));
    assert_eq!(q("1k"), q("1e3"));
    assert_eq!(q("1E"), q("1e18"));
    assert_eq!(q("1n"), 1);
    assert_eq!(q("-2"), -2_000_000_000);
    assert_ne!(q("1"), q("1.001"));
    assert_ne!(q("1Ki"), q("1k"));
    for bad in ["", "abc", "1Xi", "1.2.3", "m", "1e"] {
        assert_eq!(quantity_nanos(bad), None, "{bad:?}");
    }
    let want = serde_json::json!({"resources": {"limits": {"cpu": "0.5"}}, "cpu": "0.5"});
    let live = serde_json::json!({"resources": {"limits": {"cpu": "500m"}}, "cpu": "500m"});
    assert!(contains(
        &serde_json::json!({"resources": want["resources"].clone()}),
        Some(&live),
        Scope::Plain
    ));
    // Outside resources a string is compared as a string.
    assert!(!contains(&want, Some(&live), Scope::Plain));
}

#[test]
fn trimming_drops_managed_fields_and_keeps_what_is_compared() {
    let raw: Value = serde_json::from_str(STORED_DEPLOYMENT).expect("fixture parses");
    assert!(raw["metadata"]["managedFields"].is_array());
    assert!(
        raw["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    );
    let trimmed = cached::<Deployment>(STORED_DEPLOYMENT, trim_deployment);
    assert!(trimmed["metadata"].get("managedFields").is_none());
    assert!(trimmed["metadata"].get("uid").is_none());
    // Of the conditions only Progressing stays (a stuck tier is told by it),
    // without its ever-moving times.
    let conditions = trimmed["status"]["conditions"]
        .as_array()
        .expect("conditions");
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["type"], "Progressing");
    assert!(conditions[0].get("lastUpdateTime").is_none());
    assert_eq!(trimmed["status"]["readyReplicas"], 2);
    assert_eq!(
        trimmed["metadata"]["ownerReferences"][0]["uid"],
        FIXTURE_OWNER_UID
    );
    let svc = cached::<Service>(STORED_SERVICE, trim_service);
    assert!(svc.get("status").is_none());
    let hpa = cached::<HorizontalPodAutoscaler>(STORED_ROUTER_HPA, trim_autoscaler);
    assert!(hpa.get("status").is_none());
}

#[test]
fn status_endpoints_follow_placement() {
    let base = r#"
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#;
    let mut named = spec(base);
    named.collector.namespace =
        Some(serde_json::from_value("observability".into()).expect("dns label"));
    let mut per_ns = named.clone();
    per_ns.collector.placement = crate::api::Placement::PerNamespace;
    assert_eq!(
        status_endpoint("caas", &named, "tracing-operator"),
        "http://caas-collector.observability.svc:4318/v1/traces"
    );
    assert_eq!(
        status_endpoint("caas", &per_ns, "tracing-operator"),
        "http://caas-collector.<namespace>.svc:4318/v1/traces"
    );
}

fn stored(ns: &str, name: &str, policy: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns, "labels": {POLICY_ANNOTATION: policy}}
    }))
    .expect("config map")
}

#[test]
fn only_this_policys_collectors_outside_the_wanted_tiers_are_unwanted() {
    let (store, mut writer) = reflector::store::<ConfigMap>();
    for cm in [
        stored("a", "p-collector", "p"),
        stored("a", "p-sampler", "p"),
        stored("b", "p-collector", "p"),
        stored("c", "p-collector", "p"),
        stored("c", "q-collector", "q"),
        // Named like ours but labelled for another policy: not ours to delete.
        stored("d", "p-collector", "q"),
        // Labelled for the policy but no tier's name: never deleted.
        stored("e", "p-something-else", "p"),
    ] {
        writer.apply_watcher_event(&Event::Apply(cm));
    }
    let id = |ns: &str, name: &str| (ns.to_string(), name.to_string());
    // Tail sampling turned off: the samplers go, the single tier stays.
    let wanted = BTreeSet::from([id("a", "p-collector")]);
    assert_eq!(
        unwanted(&store, "p", &wanted),
        [
            id("a", "p-sampler"),
            id("b", "p-collector"),
            id("c", "p-collector")
        ]
    );
    let all = BTreeSet::from([
        id("a", "p-collector"),
        id("a", "p-sampler"),
        id("b", "p-collector"),
        id("c", "p-collector"),
    ]);
    assert!(unwanted(&store, "p", &all).is_empty());
    assert_eq!(
        unwanted(&store, "q", &BTreeSet::new()),
        [id("c", "q-collector")]
    );
}

#[test]
fn problems_are_bounded_and_retried() {
    let many: Vec<Problem> = (0..8)
        .map(|i| Problem {
            reason: "SecretNotFound",
            message: format!("ns-{i}"),
        })
        .collect();
    let kept = bounded(many);
    assert_eq!(kept.len(), MAX_PROBLEMS + 1);
    assert_eq!(kept[MAX_PROBLEMS].message, "and 3 more collector problems");
    let outcome = CollectorOutcome {
        problems: kept,
        ..Default::default()
    };
    assert_eq!(outcome.requeue_after(), Some(RETRY));
    assert_eq!(CollectorOutcome::default().requeue_after(), None);
}

#[test]
fn planning_errors_have_reasons_and_name_the_field() {
    let s = spec(
        r#"
backends:
  - {name: vendor, type: otlp, endpoint: "https://otlp.vendor.example:4317", headersSecretRef: {name: vendor}}
"#,
    );
    let keys = HeaderSecretKeys::from([(
        "vendor".to_string(),
        BTreeSet::from(["bad key".to_string()]),
    )]);
    let input = |keys| CollectorInput {
        policy: "p",
        spec: &s,
        tier: Tier::Single,
        namespace: "ns",
        sampler_namespace: "ns",
        header_secret_keys: keys,
        owner: None,
    };
    let error = plan_collector(&input(&keys)).expect_err("a space is not a header name");
    assert_eq!(error_reason(&error), "InvalidHeaderKey");
    assert!(
        error
            .to_string()
            .contains("spec.backends[vendor].headersSecretRef")
    );
    let none = HeaderSecretKeys::new();
    let missing = plan_collector(&input(&none)).expect_err("no such Secret");
    assert_eq!(error_reason(&missing), "SecretNotFound");
}

#[test]
fn secret_key_names_are_reused_for_a_while_and_then_read_again() {
    let cache = SecretKeys::default();
    let t0 = Instant::now();
    let read = BTreeSet::from(["x-api-key".to_string()]);
    assert_eq!(cache.get("obs", "vendor", t0), None);
    cache.put("obs", "vendor", read.clone(), t0);
    assert_eq!(
        cache.get("obs", "vendor", t0 + Duration::from_secs(59)),
        Some(read.clone())
    );
    assert_eq!(cache.get("other", "vendor", t0), None);
    assert_eq!(cache.get("obs", "vendor", t0 + SECRET_TTL), None);
    cache.put("obs", "vendor", read, t0);
    cache.forget("obs", "vendor");
    assert_eq!(cache.get("obs", "vendor", t0), None);
}

/// The readiness probe and a reconcile wait for the collector caches at the
/// same time: both must go on once the caches have synced (kube's own
/// `Store::wait_until_ready` wakes only the last of them).
#[tokio::test]
async fn every_concurrent_waiter_sees_the_collector_caches_ready() {
    use kube::runtime::reflector::store::Writer;
    let mut config_maps = Writer::<ConfigMap>::new(());
    let mut deployments = Writer::<Deployment>::new(());
    let mut services = Writer::<Service>::new(());
    let mut budgets = Writer::<PodDisruptionBudget>::new(());
    let mut autoscalers = Writer::<HorizontalPodAutoscaler>::new(());
    let stores = CollectorStores {
        config_maps: config_maps.as_reader(),
        deployments: deployments.as_reader(),
        services: services.as_reader(),
        pod_disruption_budgets: budgets.as_reader(),
        autoscalers: autoscalers.as_reader(),
        secret_keys: SecretKeys::default(),
    };
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let stores = stores.clone();
            tokio::spawn(async move { stores.wait_until_ready().await })
        })
        .collect();
    // Both waiters are parked on the first store before it is ready.
    tokio::time::sleep(Duration::from_millis(50)).await;
    config_maps.apply_watcher_event(&Event::InitDone);
    deployments.apply_watcher_event(&Event::InitDone);
    services.apply_watcher_event(&Event::InitDone);
    budgets.apply_watcher_event(&Event::InitDone);
    autoscalers.apply_watcher_event(&Event::InitDone);
    for waiter in waiters {
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiter saw the caches ready")
            .expect("the waiter did not panic")
            .expect("the stores' writers are alive");
    }
}

/// Writes the apply bodies the fixtures are made from (see the constants at
/// the top) into `$FIXTURE_BODIES`; run with `--ignored` when the plan changes,
/// apply them to the testbed and store what it returns.
#[test]
#[ignore = "writes the fixtures' apply bodies; not a test"]
fn write_fixture_bodies() {
    let Some(dir) = std::env::var_os("FIXTURE_BODIES") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let sampler = fixture_plan();
    let router = router_plan();
    let mut bodies = vec![
        ("cm", body(&sampler.config_map)),
        ("svc", body(&sampler.service)),
        ("deploy", body(&sampler.deployment)),
        ("pdb", body(&sampler.pod_disruption_budget)),
        ("router-cm", body(&router.config_map)),
        ("router-svc", body(&router.service)),
        ("router-deploy", body(&router.deployment)),
        ("router-pdb", body(&router.pod_disruption_budget)),
    ];
    if let Some(hpa) = &router.autoscaler {
        bodies.push(("router-hpa", body(hpa)));
    }
    for (name, b) in bodies {
        std::fs::write(dir.join(format!("{name}.json")), b.to_string()).expect("write body");
    }
}

const TAIL_PER_NAMESPACE: &str = r#"
sampling: {tail: {keepErrors: true}}
collector: {placement: PerNamespace, namespace: observability, replicas: 2, sampling: {replicas: 3}}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#;

fn tier_ref(ns: &str, tier: Tier) -> TierRef {
    TierRef {
        namespace: ns.into(),
        tier,
    }
}

fn ready(ready: i32, replicas: i32) -> Readiness {
    Readiness::Ready { ready, replicas }
}

/// Routers in team-a and team-b, samplers in observability, with these states.
fn judged(routers_a: Readiness, routers_b: Readiness, samplers: Readiness) -> Verdict {
    let spec = spec(TAIL_PER_NAMESPACE);
    let tiers = vec![
        (tier_ref("team-a", Tier::Router), vec![], routers_a),
        (tier_ref("team-b", Tier::Router), vec![], routers_b),
        (tier_ref("observability", Tier::Sampler), vec![], samplers),
    ];
    let selected = ["team-a".to_string(), "team-b".to_string()];
    judge("caas", &spec, "tracing-operator", &selected, true, &tiers)
}

#[test]
fn a_namespace_is_served_only_when_its_routers_and_the_samplers_are_ready() {
    let all = judged(ready(2, 2), ready(1, 2), ready(3, 3));
    assert!(all.problems.is_empty(), "{:?}", all.problems);
    assert_eq!(
        all.serving,
        BTreeSet::from(["team-a".to_string(), "team-b".to_string()])
    );

    // Samplers that lost every pod after their rollout: nobody is switched,
    // and the policy is Degraded naming the samplers.
    let down = judged(
        ready(2, 2),
        ready(2, 2),
        Readiness::Unavailable { replicas: 3 },
    );
    assert!(down.serving.is_empty() && down.waiting.is_empty());
    assert_eq!(down.problems.len(), 1);
    assert_eq!(down.problems[0].reason, REASON_UNAVAILABLE);
    assert!(
        down.problems[0].message.contains(
            "collector samplers (Deployment observability/caas-sampler) have no ready replica (0/3)"
        ),
        "{}",
        down.problems[0].message
    );

    // One namespace's routers stuck past their deadline: only that namespace is held.
    let stuck = judged(
        ready(2, 2),
        Readiness::Stuck {
            replicas: 2,
            message: "timed out".into(),
        },
        ready(3, 3),
    );
    assert_eq!(stuck.serving, BTreeSet::from(["team-a".to_string()]));
    assert_eq!(stuck.problems[0].reason, REASON_STUCK);
    assert!(stuck.problems[0].message.contains("team-b/caas-collector"));

    // Samplers still coming up: the workloads wait, nothing is Degraded.
    let starting = judged(
        ready(2, 2),
        ready(2, 2),
        Readiness::Starting { replicas: 3 },
    );
    assert!(starting.problems.is_empty());
    assert!(starting.serving.is_empty());
    assert_eq!(starting.waiting.len(), 2);
    assert!(
        starting.waiting["team-a"].contains("samplers"),
        "{:?}",
        starting.waiting
    );
}

#[test]
fn a_tier_with_a_problem_holds_its_namespaces_and_dry_run_judges_the_plan() {
    let spec = spec(TAIL_PER_NAMESPACE);
    let missing = Problem {
        reason: "SecretNotFound",
        message:
            "spec.backends[jaeger].headersSecretRef: Secret observability/vendor does not exist"
                .into(),
    };
    let tiers = vec![
        (tier_ref("team-a", Tier::Router), vec![], Readiness::Absent),
        (
            tier_ref("observability", Tier::Sampler),
            vec![missing.clone()],
            Readiness::Absent,
        ),
    ];
    let selected = ["team-a".to_string()];
    for enforce in [true, false] {
        let v = judge(
            "caas",
            &spec,
            "tracing-operator",
            &selected,
            enforce,
            &tiers,
        );
        assert_eq!(v.problems, vec![missing.clone()]);
        assert!(v.serving.is_empty() && v.waiting.is_empty());
    }
    // DryRun applies nothing, so absent Deployments do not hold a good plan.
    let fine = vec![
        (tier_ref("team-a", Tier::Router), vec![], Readiness::Absent),
        (
            tier_ref("observability", Tier::Sampler),
            vec![],
            Readiness::Absent,
        ),
    ];
    let dry = judge("caas", &spec, "tracing-operator", &selected, false, &fine);
    assert_eq!(dry.serving, BTreeSet::from(["team-a".to_string()]));
}

#[test]
fn status_counts_each_tiers_ready_replicas() {
    let spec = spec(TAIL_PER_NAMESPACE);
    let wanted = collector_tiers(
        &spec,
        "tracing-operator",
        &["team-a".to_string(), "team-b".to_string()],
    );
    let status = collector_status("caas", &spec, "tracing-operator", &wanted, |t| {
        match (t.namespace.as_str(), t.tier) {
            ("team-a", Tier::Router) => ready(2, 2),
            ("team-b", Tier::Router) => Readiness::Starting { replicas: 2 },
            ("observability", Tier::Sampler) => ready(1, 3),
            other => panic!("unexpected tier {other:?}"),
        }
    });
    let routers = status.routers.expect("routers with tail sampling");
    let samplers = status.samplers.expect("samplers with tail sampling");
    assert_eq!((routers.replicas, routers.ready_replicas), (4, 2));
    assert_eq!((samplers.replicas, samplers.ready_replicas), (3, 1));
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(
        routers.endpoint,
        "http://caas-collector.<namespace>.svc:4318/v1/traces"
    );
    assert_eq!(samplers.endpoint, "caas-sampler.observability.svc:4317");

    // Without tail sampling, one tier: no per-tier sections; the planned
    // replicas count while the Deployment is absent.
    let single = spec_without_tail();
    let wanted = collector_tiers(&single, "tracing-operator", &[]);
    let status = collector_status("caas", &single, "tracing-operator", &wanted, |_| {
        Readiness::Absent
    });
    assert_eq!(status.routers, None);
    assert_eq!(status.samplers, None);
    assert_eq!(status.ready_replicas, 0);
}

fn spec_without_tail() -> TracingPolicySpec {
    spec(
        r#"
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#,
    )
}
