use super::*;

use kube::runtime::watcher::Event;

/// The objects as a real kube-apiserver (the testbed's v1.37) stores them after
/// `kubectl apply --server-side --field-manager=tracing-operator` of the apply
/// bodies of [`fixture_plan`]: server defaults added, quantities canonicalized
/// (`0.1` -> `100m`, `0.5Gi` -> `512Mi`), managedFields present.
const STORED_CONFIG_MAP: &str = include_str!("fixtures/cm.json");
const STORED_SERVICE: &str = include_str!("fixtures/svc.json");
const STORED_DEPLOYMENT: &str = include_str!("fixtures/deploy.json");

/// The owner the fixtures were applied with.
const FIXTURE_OWNER_UID: &str = "fb811490-7404-41c5-9fd5-5c27031ac007";

const FIXTURE_SPEC: &str = r#"
sampling: {ratio: 0.1, tail: {keepErrors: true, slowerThan: 500ms, ratio: 0.1}}
collector:
  resources: {requests: {cpu: "0.1", memory: 128Mi}, limits: {cpu: "1000m", memory: "0.5Gi"}}
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

fn plan_of(spec: &TracingPolicySpec, header_keys: &[&str]) -> CollectorPlan {
    let keys = HeaderSecretKeys::from([(
        "vendor".to_string(),
        header_keys.iter().map(|k| k.to_string()).collect(),
    )]);
    let owner = owner();
    plan_collector(&CollectorInput {
        policy: "fixture",
        spec,
        namespace: "collector-fixture",
        header_secret_keys: &keys,
        owner: Some(&owner),
    })
    .expect("fixture plans")
}

fn fixture_plan() -> CollectorPlan {
    plan_of(&spec(FIXTURE_SPEC), &["x-api-key"])
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
    assert!(is_current(&body(&plan.config_map), &cm));
    assert!(is_current(&body(&plan.service), &svc));
    assert!(is_current(&body(&plan.deployment), &deploy));
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
    svc["spec"]["ports"][1]["port"] = 14318.into();
    assert!(!is_current(&body(&plan.service), &svc));
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
    live["spec"]["replicas"] = 2.into();
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
    more.spec.replicas = Some(2);
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
    let trimmed = cached::<Deployment>(STORED_DEPLOYMENT, trim_deployment);
    assert!(trimmed["metadata"].get("managedFields").is_none());
    assert!(trimmed["metadata"].get("uid").is_none());
    assert!(trimmed["status"].get("conditions").is_none());
    assert_eq!(trimmed["status"]["readyReplicas"], 1);
    assert_eq!(
        trimmed["metadata"]["ownerReferences"][0]["uid"],
        FIXTURE_OWNER_UID
    );
    let svc = cached::<Service>(STORED_SERVICE, trim_service);
    assert!(svc.get("status").is_none());
}

#[test]
fn collector_namespaces_follow_placement() {
    let selected = vec!["caas-auth".to_string(), "caas-gateway".to_string()];
    let base = r#"
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#;
    let central = spec(base);
    assert_eq!(
        collector_namespaces(&central, "tracing-operator", &selected),
        BTreeSet::from(["tracing-operator".to_string()])
    );
    let mut named = central.clone();
    named.collector.namespace =
        Some(serde_json::from_value("observability".into()).expect("dns label"));
    assert_eq!(
        collector_namespaces(&named, "tracing-operator", &selected),
        BTreeSet::from(["observability".to_string()])
    );
    let mut per_ns = central.clone();
    per_ns.collector.placement = Placement::PerNamespace;
    assert_eq!(
        collector_namespaces(&per_ns, "tracing-operator", &selected),
        selected.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(collector_namespaces(&per_ns, "tracing-operator", &[]).is_empty());
    let mut off = central.clone();
    off.collector.enabled = false;
    assert!(collector_namespaces(&off, "tracing-operator", &selected).is_empty());

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
fn only_this_policys_collectors_outside_the_wanted_namespaces_are_unwanted() {
    let (store, mut writer) = reflector::store::<ConfigMap>();
    for cm in [
        stored("a", "p-collector", "p"),
        stored("b", "p-collector", "p"),
        stored("c", "p-collector", "p"),
        stored("c", "q-collector", "q"),
        // Named like ours but labelled for another policy: not ours to delete.
        stored("d", "p-collector", "q"),
    ] {
        writer.apply_watcher_event(&Event::Apply(cm));
    }
    let wanted = BTreeSet::from(["a".to_string()]);
    assert_eq!(unwanted(&store, "p", &wanted), ["b", "c"]);
    assert!(
        unwanted(
            &store,
            "p",
            &BTreeSet::from(["a".into(), "b".into(), "c".into()])
        )
        .is_empty()
    );
    assert_eq!(unwanted(&store, "q", &BTreeSet::new()), ["c"]);
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
    let error = plan_collector(&CollectorInput {
        policy: "p",
        spec: &s,
        namespace: "ns",
        header_secret_keys: &keys,
        owner: None,
    })
    .expect_err("a space is not a header name");
    assert_eq!(error_reason(&error), "InvalidHeaderKey");
    assert!(
        error
            .to_string()
            .contains("spec.backends[vendor].headersSecretRef")
    );
    let missing = plan_collector(&CollectorInput {
        policy: "p",
        spec: &s,
        namespace: "ns",
        header_secret_keys: &HeaderSecretKeys::new(),
        owner: None,
    })
    .expect_err("no such Secret");
    assert_eq!(error_reason(&missing), "SecretNotFound");
}

#[test]
fn secret_key_names_are_reused_for_a_while_and_then_read_again() {
    let cache = SecretKeys::default();
    let t0 = Instant::now();
    let keys = BTreeSet::from(["x-api-key".to_string()]);
    assert_eq!(cache.get("obs", "vendor", t0), None);
    cache.put("obs", "vendor", keys.clone(), t0);
    assert_eq!(
        cache.get("obs", "vendor", t0 + Duration::from_secs(59)),
        Some(keys.clone())
    );
    assert_eq!(cache.get("other", "vendor", t0), None);
    assert_eq!(cache.get("obs", "vendor", t0 + SECRET_TTL), None);
    cache.put("obs", "vendor", keys, t0);
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
    let stores = CollectorStores {
        config_maps: config_maps.as_reader(),
        deployments: deployments.as_reader(),
        services: services.as_reader(),
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
    for waiter in waiters {
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiter saw the caches ready")
            .expect("the waiter did not panic")
            .expect("the stores' writers are alive");
    }
}
