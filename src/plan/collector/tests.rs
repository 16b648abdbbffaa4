use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::*;
use crate::api::TracingPolicySpec;

fn spec(yaml: &str) -> TracingPolicySpec {
    serde_saphyr::from_str(yaml).expect("test spec parses")
}

const BASIC: &str = r#"
backends:
  - name: jaeger
    type: jaeger
    endpoint: http://jaeger-collector.observability.svc:4317
"#;

/// The input of `tier` in `namespace`, the samplers in observability.
fn input<'a>(
    spec: &'a TracingPolicySpec,
    tier: Tier,
    namespace: &'a str,
    keys: &'a HeaderSecretKeys,
) -> CollectorInput<'a> {
    CollectorInput {
        policy: "caas-production",
        spec,
        tier,
        namespace,
        sampler_namespace: "observability",
        header_secret_keys: keys,
        owner: None,
    }
}

/// The tier that exports to the backends: the samplers with tail sampling,
/// else the single tier.
fn exporting_tier(spec: &TracingPolicySpec) -> Tier {
    if crate::plan::sampling::tail_decides(spec) {
        Tier::Sampler
    } else {
        Tier::Single
    }
}

fn plan_tier(spec: &TracingPolicySpec, tier: Tier) -> CollectorPlan {
    let keys = HeaderSecretKeys::from([(
        "jaeger-token".to_string(),
        BTreeSet::from(["authorization".to_string()]),
    )]);
    plan_collector(&input(spec, tier, "observability", &keys)).expect("plan")
}

fn plan_with(spec: &TracingPolicySpec, keys: &HeaderSecretKeys) -> CollectorPlan {
    plan_collector(&input(spec, exporting_tier(spec), "observability", keys)).expect("plan")
}

fn plan(spec: &TracingPolicySpec) -> CollectorPlan {
    plan_with(spec, &HeaderSecretKeys::new())
}

/// The config as the collector reads it: the rendered YAML parsed back.
fn parsed(plan: &CollectorPlan) -> Value {
    serde_saphyr::from_str(&plan.config_yaml).expect("rendered YAML parses")
}

#[test]
fn basic_config_has_receivers_processors_extension_and_pipeline() {
    let p = plan(&spec(BASIC));
    let c = parsed(&p);
    assert_eq!(
        c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    assert_eq!(
        c["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        "0.0.0.0:4318"
    );
    // 80 % and 25 % of the default 512Mi container limit.
    assert_eq!(
        c["processors"]["memory_limiter"],
        json!({"check_interval": "1s", "limit_mib": 409, "spike_limit_mib": 128})
    );
    assert!(c["processors"]["batch"].is_object());
    assert!(c["processors"].get("tail_sampling").is_none());
    assert_eq!(c["extensions"]["health_check"]["endpoint"], "0.0.0.0:13133");
    assert_eq!(c["service"]["extensions"], json!(["health_check"]));
    assert_eq!(
        c["service"]["pipelines"]["traces"],
        json!({
            "receivers": ["otlp"],
            "processors": ["memory_limiter", "batch"],
            "exporters": ["otlp_grpc/jaeger"],
        })
    );
    assert_eq!(c["service"]["telemetry"]["logs"]["level"], "info");
    // The typed config and the rendered YAML say the same thing.
    assert_eq!(c, serde_json::to_value(&p.config).expect("to_value"));
}

#[test]
fn tail_sampling_present_only_when_tail_is_set() {
    // The old e2e policy: every trace at the head, 10 % of the rest (deprecated tail.ratio).
    let with = spec(
        r#"
sampling:
  ratio: 1
  tail: {keepErrors: true, slowerThan: 500ms, ratio: 0.1}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#,
    );
    let c = parsed(&plan(&with));
    let tail = &c["processors"]["tail_sampling"];
    assert_eq!(tail["decision_wait"], "10s");
    assert_eq!(tail["num_traces"], 20000);
    assert_eq!(tail["expected_new_traces_per_sec"], 1000);
    assert_eq!(
        tail["decision_cache"],
        json!({"sampled_cache_size": 120000, "non_sampled_cache_size": 120000})
    );
    assert_eq!(
        tail["policies"],
        json!([
            {"name": "keep-errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "slower-than", "type": "latency", "latency": {"threshold_ms": 500}},
            {"name": "rest", "type": "and", "and": {"and_sub_policy": [
                {"name": "rest/match", "type": "ottl_condition",
                 "ottl_condition": {"error_mode": "ignore", "span": ["IsRootSpan()"]}},
                {"name": "rest/share", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10.0}},
            ]}},
            {"name": "rootless", "type": "and", "and": {"and_sub_policy": [
                {"name": "rootless/match", "type": "not", "not": {"not_sub_policy":
                    {"name": "rootless/match/root", "type": "ottl_condition",
                     "ottl_condition": {"error_mode": "ignore", "span": ["IsRootSpan()"]}}}},
                {"name": "rootless/share", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10.0}},
            ]}},
        ])
    );
    assert_eq!(
        c["service"]["pipelines"]["traces"]["processors"],
        json!(["memory_limiter", "tail_sampling", "batch"])
    );
    let without = parsed(&plan(&spec(BASIC)));
    assert!(without["processors"].get("tail_sampling").is_none());
}

fn policy_names(c: &Value) -> Vec<String> {
    c["processors"]["tail_sampling"]["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_string())
        .collect()
}

fn tail_of(sampling: &str) -> Value {
    parsed(&plan(&spec(&format!(
        "sampling: {sampling}\nbackends: [{{name: b, type: otlp, endpoint: \"http://b:4317\"}}]\n"
    ))))
}

#[test]
fn each_tail_rule_alone() {
    assert_eq!(
        policy_names(&tail_of("{ratio: 0, tail: {keepErrors: true}}")),
        ["keep-errors"]
    );
    let slow = tail_of("{ratio: 0, tail: {keepErrors: false, slowerThan: 2s}}");
    assert_eq!(policy_names(&slow), ["slower-than"]);
    assert_eq!(
        slow["processors"]["tail_sampling"]["policies"][0]["latency"]["threshold_ms"],
        2000
    );
    // sampling.ratio alone: the rest and the rootless traces, at its share.
    let ratio = tail_of("{ratio: 0.25, tail: {keepErrors: false, ratio: 1}}");
    assert_eq!(policy_names(&ratio), ["rest", "rootless"]);
    for p in ratio["processors"]["tail_sampling"]["policies"]
        .as_array()
        .expect("policies")
    {
        assert_eq!(
            p["and"]["and_sub_policy"][1]["probabilistic"]["sampling_percentage"],
            25.0
        );
    }
    // Nothing left to keep: an explicit 0 % keeps the processor valid.
    assert_eq!(
        tail_of("{ratio: 0, tail: {keepErrors: false, ratio: 0.5}}")["processors"]["tail_sampling"]
            ["policies"],
        json!([{"name": "keep-nothing", "type": "probabilistic", "probabilistic": {"sampling_percentage": 0.0}}])
    );
}

#[test]
fn decision_wait_grows_with_slower_than_and_is_capped() {
    let wait = |slower: &str| {
        let c = tail_of(&format!("{{tail: {{slowerThan: {slower}}}}}"));
        c["processors"]["tail_sampling"]["decision_wait"]
            .as_str()
            .expect("wait")
            .to_string()
    };
    assert_eq!(wait("500ms"), "10s");
    assert_eq!(wait("30s"), "60s");
    assert_eq!(wait("1h"), "300s");
}

#[test]
fn service_shares_apply_to_the_traces_rooted_in_them() {
    let c = tail_of(
        r#"{ratio: 0.1, services: [{name: auth, ratio: 1.0}, {name: socket, ratio: 0.5}, {name: muted, ratio: 0}, {name: 'we"ird\', ratio: 1}], tail: {keepErrors: true}}"#,
    );
    assert_eq!(
        policy_names(&c),
        [
            "keep-errors",
            "rooted-in/auth",
            "rooted-in/socket",
            "rooted-in/we\"ird\\",
            "rest",
            "rootless"
        ]
    );
    let policies = &c["processors"]["tail_sampling"]["policies"];
    // A share of 1: the match alone.
    assert_eq!(
        policies[1],
        json!({"name": "rooted-in/auth", "type": "ottl_condition", "ottl_condition": {"error_mode": "ignore",
               "span": ["IsRootSpan() and (resource.attributes[\"service.name\"] == \"auth\")"]}})
    );
    assert_eq!(
        policies[2]["and"]["and_sub_policy"],
        json!([
            {"name": "rooted-in/socket/match", "type": "ottl_condition", "ottl_condition": {"error_mode": "ignore",
             "span": ["IsRootSpan() and (resource.attributes[\"service.name\"] == \"socket\")"]}},
            {"name": "rooted-in/socket/share", "type": "probabilistic", "probabilistic": {"sampling_percentage": 50.0}},
        ])
    );
    // Quotes and backslashes in a service name are escaped for OTTL.
    assert_eq!(
        policies[3]["ottl_condition"]["span"][0],
        "IsRootSpan() and (resource.attributes[\"service.name\"] == \"we\\\"ird\\\\\")"
    );
    // The rest: rooted in any service not listed; one listed at 0 is not "the rest".
    assert_eq!(
        policies[4]["and"]["and_sub_policy"][0]["ottl_condition"]["span"][0],
        "IsRootSpan() and resource.attributes[\"service.name\"] != \"auth\" and resource.attributes[\"service.name\"] != \"muted\" and resource.attributes[\"service.name\"] != \"socket\" and resource.attributes[\"service.name\"] != \"we\\\"ird\\\\\""
    );
}

#[test]
fn tail_sizing_and_memory_limiter_follow_the_policy() {
    let c = parsed(&plan(&spec(
        r#"
sampling: {tail: {keepErrors: true, expectedTracesPerSecond: 250}}
collector: {resources: {limits: {memory: 2Gi}}}
backends: [{name: b, type: otlp, endpoint: "http://b:4317"}]
"#,
    )));
    let tail = &c["processors"]["tail_sampling"];
    assert_eq!(tail["num_traces"], 250 * 10 * 2);
    assert_eq!(tail["expected_new_traces_per_sec"], 250);
    assert_eq!(tail["decision_cache"]["sampled_cache_size"], 250 * 120);
    assert_eq!(c["processors"]["memory_limiter"]["limit_mib"], 1638);
    assert_eq!(c["processors"]["memory_limiter"]["spike_limit_mib"], 512);
    // memory_limiter comes first: it refuses data before anything holds it.
    assert_eq!(
        c["service"]["pipelines"]["traces"]["processors"][0],
        "memory_limiter"
    );
}

#[test]
fn exporter_kind_follows_protocol_for_every_backend_type() {
    let c = parsed(&plan(&spec(
        r#"
backends:
  - {name: jaeger, type: jaeger, endpoint: "http://jaeger:4317", protocol: grpc}
  - {name: tempo, type: tempo, endpoint: "http://tempo:4318", protocol: http}
  - {name: vendor, type: otlp, endpoint: "https://otlp.example.com/v1/traces", protocol: http}
  - {name: other, type: otlp, endpoint: "https://otlp.example.com:4317"}
"#,
    )));
    let exporters = c["exporters"].as_object().expect("exporters");
    let ids: Vec<&String> = exporters.keys().collect();
    assert_eq!(
        ids,
        [
            "otlp_grpc/jaeger",
            "otlp_grpc/other",
            "otlp_http/tempo",
            "otlp_http/vendor"
        ]
    );
    assert_eq!(
        exporters["otlp_grpc/jaeger"]["endpoint"],
        "http://jaeger:4317"
    );
    assert_eq!(
        exporters["otlp_http/tempo"]["endpoint"],
        "http://tempo:4318"
    );
    // A URL that already names /v1/traces is used as is.
    assert!(exporters["otlp_http/vendor"].get("endpoint").is_none());
    assert_eq!(
        exporters["otlp_http/vendor"]["traces_endpoint"],
        "https://otlp.example.com/v1/traces"
    );
    assert_eq!(c["service"]["pipelines"]["traces"]["exporters"], json!(ids));
}

#[test]
fn tls_insecure_plain_http_system_roots_and_ca_file() {
    let p = plan(&spec(
        r#"
backends:
  - {name: plain, type: jaeger, endpoint: "http://jaeger:4317"}
  - {name: forced, type: otlp, endpoint: "https://x:4317", tls: {insecure: true}}
  - {name: public, type: otlp, endpoint: "https://x:4317"}
  - {name: private, type: tempo, endpoint: "https://tempo:4317", tls: {caSecretRef: {name: tempo-ca, key: root.pem}}}
"#,
    ));
    let c = parsed(&p);
    let tls = |id: &str| c["exporters"][id]["tls"].clone();
    assert_eq!(tls("otlp_grpc/plain"), json!({"insecure": true}));
    assert_eq!(tls("otlp_grpc/forced"), json!({"insecure": true}));
    assert_eq!(tls("otlp_grpc/public"), json!({"insecure": false}));
    assert_eq!(
        tls("otlp_grpc/private"),
        json!({"insecure": false, "ca_file": "/tls/private/ca.crt"})
    );
    // The CA Secret is mounted where ca_file points, with only the named key.
    let pod = p.deployment.spec.template.spec.as_ref().expect("pod");
    let vol = pod
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.secret.is_some())
        .expect("ca volume");
    let secret = vol.secret.as_ref().expect("secret");
    assert_eq!(secret.secret_name.as_deref(), Some("tempo-ca"));
    let items = secret.items.as_ref().expect("items");
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("root.pem", "ca.crt")
    );
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.name == vol.name)
        .expect("ca mount");
    assert_eq!(mount.mount_path, "/tls/private");
    assert_eq!(mount.read_only, Some(true));
}

const HEADERS: &str = r#"
backends:
  - name: vendor
    type: otlp
    endpoint: https://otlp.example.com:4317
    headersSecretRef: {name: vendor-auth}
"#;

fn vendor_keys() -> HeaderSecretKeys {
    BTreeMap::from([(
        "vendor-auth".to_string(),
        BTreeSet::from(["x-api-key".to_string(), "X-Tenant.Id".to_string()]),
    )])
}

#[test]
fn headers_are_env_references_filled_from_the_secret() {
    let p = plan_with(&spec(HEADERS), &vendor_keys());
    let c = parsed(&p);
    assert_eq!(
        c["exporters"]["otlp_grpc/vendor"]["headers"],
        json!({
            "X-Tenant.Id": "${env:TRACING_OPERATOR_HEADER_VENDOR__X_TENANT_ID}",
            "x-api-key": "${env:TRACING_OPERATOR_HEADER_VENDOR__X_API_KEY}",
        })
    );
    let env = p
        .deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0]
        .env
        .clone()
        .expect("env");
    let refs: Vec<(String, String, String)> = env
        .iter()
        .map(|e| {
            assert!(e.value.is_none(), "no literal values: {e:?}");
            let s = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .expect("secretKeyRef");
            (e.name.clone(), s.name.clone(), s.key.clone())
        })
        .collect();
    assert_eq!(
        refs,
        [
            (
                "TRACING_OPERATOR_HEADER_VENDOR__X_TENANT_ID".to_string(),
                "vendor-auth".to_string(),
                "X-Tenant.Id".to_string()
            ),
            (
                "TRACING_OPERATOR_HEADER_VENDOR__X_API_KEY".to_string(),
                "vendor-auth".to_string(),
                "x-api-key".to_string()
            ),
        ]
    );
    assert_eq!(p.header_env.len(), 2);
}

#[test]
fn header_secret_values_never_reach_the_config_map() {
    // The planner cannot see values: it only gets key names. Whatever the
    // Secret holds, the ConfigMap carries references only.
    let p = plan_with(&spec(HEADERS), &vendor_keys());
    let data = p.config_map.data.as_ref().expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["collector.yaml"]);
    let yaml = &data["collector.yaml"];
    assert_eq!(yaml, &p.config_yaml);
    for value in parsed(&p)["exporters"]["otlp_grpc/vendor"]["headers"]
        .as_object()
        .expect("headers")
        .values()
    {
        let v = value.as_str().expect("string");
        assert!(v.starts_with("${env:TRACING_OPERATOR_HEADER_") && v.ends_with('}'));
    }
}

#[test]
fn missing_header_secret_is_an_error_naming_it() {
    let (s, keys) = (spec(HEADERS), HeaderSecretKeys::new());
    let err = plan_collector(&input(&s, Tier::Single, "observability", &keys))
        .expect_err("missing secret");
    assert_eq!(
        err.to_string(),
        "spec.backends[vendor].headersSecretRef: Secret observability/vendor-auth does not exist"
    );
}

#[test]
fn colliding_header_keys_are_reported() {
    let keys = BTreeMap::from([(
        "vendor-auth".to_string(),
        BTreeSet::from(["x-key".to_string(), "x_key".to_string()]),
    )]);
    let s = spec(HEADERS);
    let err = plan_collector(&input(&s, Tier::Single, "ns", &keys)).expect_err("collision");
    assert!(
        matches!(err, CollectorError::HeaderKeyCollision { .. }),
        "{err}"
    );
}

#[test]
fn referenced_secrets_lists_ca_and_header_secrets() {
    let s = spec(
        r#"
backends:
  - {name: a, type: otlp, endpoint: "https://a:4317", tls: {caSecretRef: {name: ca, key: ca.pem}}, headersSecretRef: {name: hdr}}
  - {name: b, type: otlp, endpoint: "http://b:4317"}
"#,
    );
    assert_eq!(
        referenced_secrets(&s),
        [
            ReferencedSecret {
                name: "ca".into(),
                key: Some("ca.pem".into()),
                field: "spec.backends[a].tls.caSecretRef".into()
            },
            ReferencedSecret {
                name: "hdr".into(),
                key: None,
                field: "spec.backends[a].headersSecretRef".into()
            },
        ]
    );
}

fn template_hash(p: &CollectorPlan) -> String {
    p.deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("tracing.caas.io/config-hash"))
        .expect("config-hash annotation")
        .clone()
}

#[test]
fn config_hash_changes_iff_config_changes() {
    let base = spec(
        "sampling: {ratio: 0.2, tail: {ratio: 0.1}}\nbackends: [{name: b, type: otlp, endpoint: \"http://b:4317\"}]\n",
    );
    let h0 = template_hash(&plan(&base));
    assert_eq!(h0, plan(&base).config_hash);
    assert_eq!(h0.len(), 16);

    // Not part of the collector config: replicas, image, requests.
    let mut same = base.clone();
    same.collector.replicas = 3;
    same.collector.image = Some("registry.local/otelcol:1".into());
    assert_eq!(template_hash(&plan(&same)), h0);

    // Part of it: the ratios (the collector applies them), a backend endpoint.
    let mut ratio = base.clone();
    ratio.sampling.ratio = 0.7;
    assert_ne!(template_hash(&plan(&ratio)), h0);
    let mut tail = base.clone();
    if let Some(t) = tail.sampling.tail.as_mut() {
        t.ratio = Some(0.2);
    }
    assert_ne!(template_hash(&plan(&tail)), h0);
    let mut endpoint = base.clone();
    endpoint.backends[0].endpoint = "http://c:4317".into();
    assert_ne!(template_hash(&plan(&endpoint)), h0);
}

#[test]
fn deployment_is_hardened_and_probed() {
    let p = plan(&spec(BASIC));
    let d = &p.deployment;
    assert_eq!(
        d.metadata.name.as_deref(),
        Some("caas-production-collector")
    );
    assert_eq!(d.metadata.namespace.as_deref(), Some("observability"));
    assert_eq!(d.spec.replicas, Some(2));
    let pod = d.spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.automount_service_account_token, Some(false));
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(10001));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(DEFAULT_COLLECTOR_IMAGE));
    assert_eq!(
        c.args.as_deref(),
        Some(&["--config=/conf/collector.yaml".to_string()][..])
    );
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(10001));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet");
        assert_eq!(get.port, IntOrString::Int(13133));
    }
    let ports: Vec<(Option<&str>, i32)> = c
        .ports
        .as_ref()
        .expect("ports")
        .iter()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert!(ports.contains(&(Some("otlp-grpc"), 4317)));
    assert!(ports.contains(&(Some("otlp-http"), 4318)));
    let res = c.resources.as_ref().expect("resources");
    assert!(
        res.requests
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    assert!(
        res.limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    // The config volume is the ConfigMap, mounted read-only where --config points.
    let config = pod
        .volumes
        .as_ref()
        .and_then(|v| v.iter().find(|v| v.name == "config"))
        .and_then(|v| v.config_map.as_ref())
        .expect("config volume");
    assert_eq!(config.name, "caas-production-collector");
    assert!(c.volume_mounts.as_ref().is_some_and(|m| {
        m.iter()
            .any(|m| m.mount_path == "/conf" && m.read_only == Some(true))
    }));
}

#[test]
fn user_image_and_resources_override_defaults() {
    let p = plan(&spec(
        r#"
collector:
  replicas: 2
  image: registry.local/otelcol-contrib:0.161.0
  resources: {limits: {memory: 2Gi}}
backends: [{name: b, type: otlp, endpoint: "http://b:4317"}]
"#,
    ));
    let c = &p
        .deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    assert_eq!(p.deployment.spec.replicas, Some(2));
    assert_eq!(
        c.image.as_deref(),
        Some("registry.local/otelcol-contrib:0.161.0")
    );
    let res = c.resources.as_ref().expect("resources");
    assert_eq!(
        res.limits
            .as_ref()
            .map(|l| l.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["memory".to_string()])
    );
    assert_eq!(
        res.limits.as_ref().map(|l| l["memory"].0.as_str()),
        Some("2Gi")
    );
    // Requests were not given: the defaults stay.
    assert_eq!(res.requests, default_resources().requests);
}

#[test]
fn labels_selector_service_and_owner() {
    let owner = OwnerReference {
        api_version: "tracing.caas.io/v1alpha1".into(),
        kind: "TracingPolicy".into(),
        name: "caas-production".into(),
        uid: "1234".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let (s, keys) = (spec(BASIC), HeaderSecretKeys::new());
    let p = plan_collector(&CollectorInput {
        owner: Some(&owner),
        ..input(&s, Tier::Single, "caas-auth", &keys)
    })
    .expect("plan");
    let want = BTreeMap::from([
        ("app.kubernetes.io/name", "opentelemetry-collector"),
        ("app.kubernetes.io/instance", "caas-production-collector"),
        ("app.kubernetes.io/managed-by", "tracing-operator"),
        ("app.kubernetes.io/part-of", "tracing-operator"),
        ("tracing.caas.io/policy", "caas-production"),
    ])
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect::<BTreeMap<_, _>>();
    assert!(p.autoscaler.is_none());
    for meta in [
        &p.config_map.metadata,
        &p.deployment.metadata,
        &p.service.metadata,
        &p.pod_disruption_budget.metadata,
    ] {
        assert_eq!(meta.labels.as_ref(), Some(&want));
        assert_eq!(meta.owner_references.as_deref(), Some(&[owner.clone()][..]));
        assert_eq!(meta.namespace.as_deref(), Some("caas-auth"));
    }
    let template_labels = p
        .deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    assert_eq!(template_labels, Some(&want));
    let selector = p
        .deployment
        .spec
        .selector
        .match_labels
        .as_ref()
        .expect("selector");
    assert!(selector.iter().all(|(k, v)| want.get(k) == Some(v)));
    let svc = p.service.spec.as_ref().expect("service spec");
    assert_eq!(svc.selector.as_ref(), Some(selector));
    let ports: Vec<(Option<&str>, i32)> = svc
        .ports
        .as_ref()
        .expect("ports")
        .iter()
        .map(|p| (p.name.as_deref(), p.port))
        .collect();
    assert_eq!(
        ports,
        [(Some("otlp-grpc"), 4317), (Some("otlp-http"), 4318)]
    );
}

#[test]
fn yaml_quotes_env_references_and_addresses_as_strings() {
    let p = plan_with(&spec(HEADERS), &vendor_keys());
    // Parsing back gives strings, not maps or numbers.
    let c = parsed(&p);
    assert!(c["exporters"]["otlp_grpc/vendor"]["headers"]["x-api-key"].is_string());
    assert!(c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].is_string());
}

// ---------------------------------------------------------------------------
// Two tiers with tail sampling.

const TAIL: &str = r#"
sampling: {ratio: 0.1, tail: {keepErrors: true, slowerThan: 500ms}}
collector: {namespace: observability}
backends:
  - {name: jaeger, type: jaeger, endpoint: "http://jaeger:4317", headersSecretRef: {name: jaeger-token}}
"#;

fn tier(ns: &str, tier: Tier) -> TierRef {
    TierRef {
        namespace: ns.to_string(),
        tier,
    }
}

#[test]
fn tail_sampling_runs_routers_where_the_collector_was_and_samplers_once_centrally() {
    let selected = vec!["caas-auth".to_string(), "caas-gateway".to_string()];
    let single = spec(BASIC);
    assert_eq!(
        collector_tiers(&single, "tracing-operator", &selected),
        BTreeSet::from([tier("tracing-operator", Tier::Single)])
    );
    let tail = spec(TAIL);
    assert_eq!(
        collector_tiers(&tail, "tracing-operator", &selected),
        BTreeSet::from([
            tier("observability", Tier::Router),
            tier("observability", Tier::Sampler)
        ])
    );
    let mut per_ns = tail.clone();
    per_ns.collector.placement = crate::api::Placement::PerNamespace;
    assert_eq!(
        collector_tiers(&per_ns, "tracing-operator", &selected),
        BTreeSet::from([
            tier("caas-auth", Tier::Router),
            tier("caas-gateway", Tier::Router),
            tier("observability", Tier::Sampler),
        ])
    );
    // A cross-namespace trace is decided by the one sampler tier.
    assert_eq!(
        tiers_of_namespace(&per_ns, "tracing-operator", "caas-auth"),
        [
            tier("caas-auth", Tier::Router),
            tier("observability", Tier::Sampler)
        ]
    );
    assert_eq!(
        tiers_of_namespace(&single, "tracing-operator", "caas-auth"),
        [tier("tracing-operator", Tier::Single)]
    );
    let mut off = tail.clone();
    off.collector.enabled = false;
    assert!(collector_tiers(&off, "tracing-operator", &selected).is_empty());
}

#[test]
fn routers_pass_each_trace_by_its_id_to_the_samplers_headless_service() {
    let s = spec(TAIL);
    let router = plan_tier(&s, Tier::Router);
    assert_eq!(router.name, "caas-production-collector");
    let c = parsed(&router);
    assert_eq!(
        c["exporters"],
        json!({"load_balancing": {
            "routing_key": "traceID",
            "protocol": {"otlp": {"tls": {"insecure": true}, "timeout": "5s"}},
            "resolver": {"dns": {
                "hostname": "caas-production-sampler.observability.svc",
                "port": "4317", "interval": "5s", "timeout": "1s"}},
        }})
    );
    assert_eq!(
        c["service"]["pipelines"]["traces"],
        json!({"receivers": ["otlp"], "processors": ["memory_limiter", "batch"], "exporters": ["load_balancing"]})
    );
    assert!(c["processors"].get("tail_sampling").is_none());
    // The routers read no Secret: no header variables, no CA volume.
    assert!(router.header_env.is_empty());
    let pod = router.deployment.spec.template.spec.as_ref().expect("pod");
    assert!(pod.containers[0].env.is_none());
    // The Service the workloads send to, as without tail sampling.
    let svc = router.service.spec.as_ref().expect("service spec");
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(svc.selector, Some(collector_selector("caas-production")));
    assert_eq!(router.deployment.spec.replicas, Some(2));
    // The typed config and the rendered YAML say the same thing.
    assert_eq!(c, serde_json::to_value(&router.config).expect("to_value"));
}

#[test]
fn samplers_decide_behind_a_headless_service_and_drain_before_they_stop() {
    let s = spec(
        r#"
sampling: {ratio: 0.1, tail: {keepErrors: true, slowerThan: 30s}}
collector:
  replicas: 3
  resources: {limits: {memory: 1Gi}}
  sampling: {replicas: 4, resources: {limits: {memory: 2Gi}}}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#,
    );
    let sampler = plan_tier(&s, Tier::Sampler);
    assert_eq!(sampler.name, "caas-production-sampler");
    let c = parsed(&sampler);
    assert_eq!(c["processors"]["tail_sampling"]["decision_wait"], "60s");
    assert_eq!(
        c["service"]["pipelines"]["traces"]["processors"],
        json!(["memory_limiter", "tail_sampling", "batch"])
    );
    assert_eq!(
        c["exporters"]
            .as_object()
            .map(|e| e.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["otlp_grpc/jaeger".to_string()])
    );
    // Its own container's memory limit, 2Gi: 80 % and 25 %.
    assert_eq!(c["processors"]["memory_limiter"]["limit_mib"], 1638);
    let router = parsed(&plan_tier(&s, Tier::Router));
    assert_eq!(router["processors"]["memory_limiter"]["limit_mib"], 819);

    let svc = sampler.service.spec.as_ref().expect("service spec");
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(
        svc.selector
            .as_ref()
            .map(|s| s["app.kubernetes.io/instance"].as_str()),
        Some("caas-production-sampler")
    );
    let ports: Vec<i32> = svc.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [4317]);

    let d = &sampler.deployment.spec;
    assert_eq!(d.replicas, Some(4));
    let rolling = d
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .expect("rolling update");
    assert_eq!(
        (rolling.max_surge.clone(), rolling.max_unavailable.clone()),
        (Some(IntOrString::Int(1)), Some(IntOrString::Int(0)))
    );
    let pod = d.template.spec.as_ref().expect("pod");
    // Decision wait 60 s plus two resolver intervals, then 30 s to exit.
    let sleep = pod.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| s.seconds);
    assert_eq!(sleep, Some(70));
    assert_eq!(pod.termination_grace_period_seconds, Some(100));
    let labels = d
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("sampler")
    );
    // The single tier and the routers have no preStop sleep.
    assert!(
        plan_tier(&s, Tier::Router)
            .deployment
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.containers[0].lifecycle.clone())
            .is_none()
    );
}

#[test]
fn changing_tail_rules_rolls_only_the_samplers_and_scaling_them_rolls_nothing() {
    let base = spec(TAIL);
    let router = plan_tier(&base, Tier::Router);
    let sampler = plan_tier(&base, Tier::Sampler);

    let mut rules = base.clone();
    if let Some(t) = rules.sampling.tail.as_mut() {
        t.slower_than = Some(crate::api::Duration("2s".into()));
    }
    rules.sampling.ratio = 0.25;
    assert_eq!(
        plan_tier(&rules, Tier::Router).deployment,
        router.deployment,
        "the routers' pods do not change with the tail rules"
    );
    assert_ne!(
        template_hash(&plan_tier(&rules, Tier::Sampler)),
        template_hash(&sampler)
    );

    // More samplers: the same pods, only more of them (no roll of anything).
    let mut scaled = base.clone();
    scaled.collector.sampling.replicas = 5;
    let more = plan_tier(&scaled, Tier::Sampler);
    assert_eq!(more.deployment.spec.replicas, Some(5));
    assert_eq!(
        more.deployment.spec.template,
        sampler.deployment.spec.template
    );
    assert_eq!(more.config_yaml, sampler.config_yaml);
    assert_eq!(
        plan_tier(&scaled, Tier::Router).deployment,
        router.deployment
    );

    // PerNamespace: every namespace's routers run the same configuration.
    let keys = HeaderSecretKeys::new();
    // The routers need no Secret at all.
    let a = plan_collector(&input(&base, Tier::Router, "caas-a", &keys)).expect("plan a");
    let b = plan_collector(&input(&base, Tier::Router, "caas-b", &keys)).expect("plan b");
    assert_eq!(a.config_yaml, b.config_yaml);
}

#[test]
fn every_tier_gets_a_disruption_budget_and_topology_spread() {
    let s = spec(TAIL);
    for t in [Tier::Router, Tier::Sampler] {
        let p = plan_tier(&s, t);
        let pdb = p.pod_disruption_budget.spec.as_ref().expect("pdb spec");
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)), "{t:?}");
        assert_eq!(
            pdb.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
        assert_eq!(
            pdb.selector.as_ref().and_then(|s| s.match_labels.clone()),
            p.deployment.spec.selector.match_labels,
            "{t:?}: the budget covers the tier's own pods"
        );
        let spread = p
            .deployment
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.clone())
            .expect("spread");
        let keys: Vec<&str> = spread.iter().map(|c| c.topology_key.as_str()).collect();
        assert_eq!(
            keys,
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        );
        for c in &spread {
            assert_eq!(c.when_unsatisfiable, "ScheduleAnyway");
            assert_eq!(
                c.label_selector
                    .as_ref()
                    .and_then(|l| l.match_labels.clone()),
                p.deployment.spec.selector.match_labels
            );
        }
    }
}

#[test]
fn autoscaling_covers_the_routers_and_never_the_samplers() {
    let s = spec(
        r#"
sampling: {tail: {keepErrors: true}}
collector: {replicas: 3, autoscaling: {maxReplicas: 12}}
backends: [{name: b, type: otlp, endpoint: "http://b:4317"}]
"#,
    );
    let router = plan_tier(&s, Tier::Router);
    let hpa = router.autoscaler.as_ref().expect("autoscaler");
    assert_eq!(
        hpa.metadata.name.as_deref(),
        Some("caas-production-collector")
    );
    assert_eq!(hpa.spec.scale_target_ref.kind, "Deployment");
    assert_eq!(hpa.spec.scale_target_ref.name, "caas-production-collector");
    assert_eq!(
        (hpa.spec.min_replicas, hpa.spec.max_replicas),
        (Some(3), 12)
    );
    let target = hpa
        .spec
        .metrics
        .as_ref()
        .and_then(|m| m[0].resource.as_ref());
    assert_eq!(target.map(|r| r.name.as_str()), Some("cpu"));
    assert_eq!(target.and_then(|r| r.target.average_utilization), Some(80));
    // The autoscaler sets the routers' replicas; the operator leaves them alone.
    assert_eq!(router.deployment.spec.replicas, None);
    let sampler = plan_tier(&s, Tier::Sampler);
    assert!(sampler.autoscaler.is_none());
    assert_eq!(sampler.deployment.spec.replicas, Some(2));
}
