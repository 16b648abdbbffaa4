//! Value tests of the planning core: policies, namespaces and workloads in,
//! decisions and env out. The CAAS platform of the contract is the fixture.

use std::collections::BTreeMap;
use std::ops::Deref;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use serde_json::{Value, json};

use super::injection::{container_env, is_applied, is_clean, stored_digest};
use super::*;
use crate::api::{CONFIG_HASH_ANNOTATION, POLICY_ANNOTATION, WorkloadKind};
use crate::workload::{EnvEntry, EnvOwner, RolloutState, Template, env_digest};

const OPERATOR_NS: &str = "tracing-system";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A policy from a spec written as JSON on top of a minimal valid one.
fn policy_with(name: &str, created_unix: i64, spec: Value) -> PolicyView {
    let mut base = json!({
        "backends": [{"name": "jaeger", "type": "jaeger",
                      "endpoint": "http://jaeger-collector.observability.svc:4317"}],
    });
    if let (Some(b), Some(s)) = (base.as_object_mut(), spec.as_object()) {
        b.extend(s.clone());
    }
    let mut spec: TracingPolicySpec = serde_json::from_value(base).unwrap();
    // These tests read versions from the pod-template env the operator writes.
    spec.service.version_from_image_tag = true;
    PolicyView {
        name: name.into(),
        spec,
        created_unix,
        deleting: false,
    }
}

/// The contract's example policy (the parts planning reads).
fn caas_production() -> PolicyView {
    policy_with(
        "caas-production",
        1_000,
        json!({
            "selector": {
                "namespaces": {"matchLabels": {"tracing.caas.io/enabled": "true"}},
                "workloads": {"matchExpressions": [
                    {"key": "app.kubernetes.io/part-of", "operator": "In", "values": ["caas"]}]},
            },
            "service": {
                "environment": "production",
                "resourceAttributes": {"team": "platform"},
                "attributesFromNamespaceLabels": {"tenant.id": "caas.io/tenant"},
            },
            "propagators": ["tracecontext", "baggage"],
            "sampling": {"ratio": 0.1, "parentBased": true, "services": [{"name": "auth", "ratio": 1.0}]},
            "collector": {"namespace": "observability"},
            "env": [{"name": "SERVICE_NAME", "value": "{service.name}"},
                    {"name": "APP_VERSION", "value": "{service.version}"}],
        }),
    )
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> (String, NamespaceView) {
    (
        name.to_string(),
        NamespaceView {
            name: name.into(),
            labels: map(labels),
        },
    )
}

/// caas-gateway, caas-auth, caas-socket labelled for tracing; legacy not; plus
/// the system namespaces and the operator's own, all labelled (they must still
/// be excluded).
fn caas_namespaces() -> BTreeMap<String, NamespaceView> {
    let on = ("tracing.caas.io/enabled", "true");
    BTreeMap::from([
        namespace("caas-gateway", &[on, ("caas.io/tenant", "caas")]),
        namespace("caas-auth", &[on, ("caas.io/tenant", "caas")]),
        namespace("caas-socket", &[on]),
        namespace("legacy", &[]),
        namespace("kube-system", &[on]),
        namespace("kube-public", &[on]),
        namespace("kube-node-lease", &[on]),
        namespace(OPERATOR_NS, &[on]),
    ])
}

fn container(name: &str, image: &str) -> Container {
    Container {
        name: name.into(),
        image: Some(image.into()),
        env: Vec::new(),
        java_agent: false,
    }
}

/// An env entry the user's manifest sets.
fn user_env(c: &mut Container, name: &str, value: &str) {
    c.env.push(EnvEntry {
        name: name.into(),
        digest: env_digest(name, Some(value), None),
        value_from: false,
        owner: EnvOwner::User,
        listed_by_operator: false,
    });
}

/// An env entry the operator's earlier apply set.
fn operator_env(c: &mut Container, e: &EnvVar) {
    c.env.retain(|x| *x.name != e.name);
    c.env.push(EnvEntry {
        name: e.name.as_str().into(),
        digest: stored_digest(e),
        value_from: e.value_from.is_some(),
        owner: EnvOwner::Operator,
        listed_by_operator: true,
    });
}

fn workload(ns: &str, kind: WorkloadKind, name: &str, containers: Vec<Container>) -> Workload {
    Workload {
        id: WorkloadId::new(ns, kind, name),
        labels: map(&[("app.kubernetes.io/part-of", "caas")]).into(),
        annotations: Default::default(),
        template: Template {
            labels: map(&[("app.kubernetes.io/name", name)]).into(),
            containers,
            ..Template::default()
        },
        rollout: RolloutState::default(),
    }
}

fn gateway() -> Workload {
    workload(
        "caas-gateway",
        WorkloadKind::Deployment,
        "gateway",
        vec![
            container("app", "registry.caas.io:5000/caas/gateway:2.4.1"),
            container(
                "worker",
                "ghcr.io/caas/gateway-worker@sha256:9f86d081884c7d65",
            ),
            container("istio-proxy", "docker.io/istio/proxyv2:1.24.0"),
        ],
    )
}

fn auth() -> Workload {
    workload(
        "caas-auth",
        WorkloadKind::Deployment,
        "auth",
        vec![container("auth", "registry.caas.io:5000/caas/auth")],
    )
}

fn socket() -> Workload {
    workload(
        "caas-socket",
        WorkloadKind::StatefulSet,
        "socket",
        vec![container("socket", "caas/socket:1.2@sha256:0123abcd")],
    )
}

fn legacy() -> Workload {
    workload(
        "legacy",
        WorkloadKind::Deployment,
        "billing",
        vec![container("app", "billing:7")],
    )
}

/// A policy's plan with the workloads it was made from, so that each
/// container's env can be materialized (pod-template injection).
struct TestPlan {
    plan: PolicyPlan,
    live: Vec<Workload>,
}

impl Deref for TestPlan {
    type Target = PolicyPlan;
    fn deref(&self) -> &PolicyPlan {
        &self.plan
    }
}

fn plan_of(policy: &PolicyView, workloads: &[Workload], policies: &[PolicyView]) -> TestPlan {
    plan_ns(policy, &caas_namespaces(), workloads, policies)
}

fn plan_ns(
    policy: &PolicyView,
    namespaces: &BTreeMap<String, NamespaceView>,
    workloads: &[Workload],
    policies: &[PolicyView],
) -> TestPlan {
    let shared: Vec<Arc<Workload>> = workloads.iter().cloned().map(Arc::new).collect();
    let snapshot = Snapshot {
        operator_namespace: OPERATOR_NS,
        namespaces,
        workloads: &shared,
        policies,
        injection: Injection::PodTemplate,
    };
    TestPlan {
        plan: plan_policy(policy, &snapshot).unwrap(),
        live: workloads.to_vec(),
    }
}

/// `NAME=value`, or `NAME<-fieldPath` for a downward-API entry.
fn render(env: &[EnvVar]) -> Vec<String> {
    env.iter()
        .map(|e| match &e.value_from {
            Some(from) => format!(
                "{}<-{}",
                e.name,
                from.field_ref
                    .as_ref()
                    .map_or("?", |f| f.field_path.as_str())
            ),
            None => format!("{}={}", e.name, e.value.as_deref().unwrap_or("")),
        })
        .collect()
}

/// One instrumented container: what the operator writes into it.
#[derive(Clone, Debug)]
struct ContainerEnv {
    name: String,
    env: Vec<EnvVar>,
    user_overrides: Vec<String>,
}

/// A workload's plan, with each container's env materialized.
#[derive(Clone, Debug)]
struct Applied {
    plan: WorkloadPlan,
    live: Workload,
    service_name: String,
    config_hash: String,
    containers: Vec<ContainerEnv>,
}

fn applied(plan: &TestPlan, name: &str) -> Applied {
    let (id, wp) = plan
        .plan
        .workloads
        .iter()
        .find_map(|d| match &d.action {
            WorkloadAction::Apply(p) if &*d.id.name == name => Some((&d.id, p)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Apply for {name} in {:#?}", plan.plan.workloads));
    let live = plan
        .live
        .iter()
        .find(|w| &w.id == id)
        .expect("the workload planned")
        .clone();
    let containers = wp
        .containers
        .iter()
        .map(|c| {
            let container = live
                .template
                .containers
                .iter()
                .find(|x| *x.name == c.name)
                .expect("planned container exists");
            ContainerEnv {
                name: c.name.clone(),
                env: container_env(wp, container),
                user_overrides: c.user_overrides.clone(),
            }
        })
        .collect();
    Applied {
        service_name: wp.service_name.clone(),
        config_hash: wp.config_hash.clone(),
        plan: wp.clone(),
        live,
        containers,
    }
}

fn var<'c>(c: &'c ContainerEnv, name: &str) -> Option<&'c str> {
    c.env
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// (name, action) per decision, for compact assertions.
fn actions(plan: &PolicyPlan) -> Vec<(String, String)> {
    plan.workloads
        .iter()
        .map(|d| {
            let action = match &d.action {
                WorkloadAction::Apply(_) => "Apply".to_string(),
                WorkloadAction::Remove => "Remove".to_string(),
                WorkloadAction::Conflicted { winner } => format!("Conflicted({winner})"),
            };
            (d.id.name.to_string(), action)
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn two_app_containers_and_an_istio_proxy_get_the_contracts_table() {
    let p = caas_production();
    let plan = plan_of(&p, &[gateway()], std::slice::from_ref(&p));
    let wp = applied(&plan, "gateway");
    assert_eq!(wp.service_name, "gateway");
    let names: Vec<&str> = wp.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["app", "worker"],
        "istio-proxy is never instrumented by default"
    );

    let attributes = |container: &str, version: &str| {
        format!(
            "{version}deployment.environment.name=production,service.namespace=caas-gateway,\
             k8s.namespace.name=caas-gateway,k8s.deployment.name=gateway,\
             k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME),k8s.node.name=$(OTEL_RESOURCE_ATTRIBUTES_NODE_NAME),\
             team=platform,tenant.id=caas,k8s.container.name={container}"
        )
    };
    let expected = |container: &str, version: &str| {
        vec![
            "OTEL_RESOURCE_ATTRIBUTES_POD_NAME<-metadata.name".to_string(),
            "OTEL_RESOURCE_ATTRIBUTES_NODE_NAME<-spec.nodeName".to_string(),
            "OTEL_SERVICE_NAME=gateway".to_string(),
            format!(
                "OTEL_RESOURCE_ATTRIBUTES={}",
                attributes(
                    container,
                    &if version.is_empty() {
                        String::new()
                    } else {
                        format!("service.version={version},")
                    }
                )
            ),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://caas-production-collector.observability.svc:4318/v1/traces"
                .to_string(),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf".to_string(),
            "OTEL_TRACES_EXPORTER=otlp".to_string(),
            "OTEL_METRICS_EXPORTER=none".to_string(),
            "OTEL_LOGS_EXPORTER=none".to_string(),
            "OTEL_PROPAGATORS=tracecontext,baggage".to_string(),
            "OTEL_TRACES_SAMPLER=parentbased_traceidratio".to_string(),
            "OTEL_TRACES_SAMPLER_ARG=0.1".to_string(),
            "SERVICE_NAME=gateway".to_string(),
            format!("APP_VERSION={version}"),
        ]
    };
    // Registry with a port and a tag: the tag is the version.
    assert_eq!(render(&wp.containers[0].env), expected("app", "2.4.1"));
    // Digest only: no version at all, and the template expands to "".
    assert_eq!(render(&wp.containers[1].env), expected("worker", ""));
    assert!(wp.containers.iter().all(|c| c.user_overrides.is_empty()));
    // The helpers are plain downward-API field refs with the defaulted apiVersion.
    assert_eq!(
        wp.containers[0].env[0].value_from,
        Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: "metadata.name".into()
            }),
            ..Default::default()
        })
    );
    assert_eq!(wp.config_hash.len(), 16);
    assert!(wp.config_hash.chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn service_version_from_image_references() {
    let p = policy_with("p", 1, json!({}));
    let images = [
        ("registry.caas.io:5000/caas/app", None),
        ("registry.caas.io:5000/caas/app:3.1.0", Some("3.1.0")),
        ("caas/app@sha256:0123456789abcdef", None),
        ("caas/app:1.2@sha256:0123456789abcdef", Some("1.2")),
        ("caas/app", None),
        ("localhost:5000/app:v2", Some("v2")),
    ];
    for (image, version) in images {
        let mut w = workload(
            "caas-gateway",
            WorkloadKind::Deployment,
            "app",
            vec![container("app", image)],
        );
        w.template.labels.clear();
        let plan = plan_of(&p, &[w.clone()], std::slice::from_ref(&p));
        let a = applied(&plan, "app");
        let attrs = var(&a.containers[0], "OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
        let want = version.map_or("service.namespace=".to_string(), |v| {
            format!("service.version={v},service.namespace=")
        });
        assert!(attrs.starts_with(&want), "{image}: {attrs}");

        // The version label wins over any tag.
        w.labels
            .insert("app.kubernetes.io/version".into(), "9.9.9".into());
        let plan = plan_of(&p, &[w], std::slice::from_ref(&p));
        let a = applied(&plan, "app");
        let attrs = var(&a.containers[0], "OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
        assert!(
            attrs.starts_with("service.version=9.9.9,service.namespace="),
            "{image}: {attrs}"
        );
    }
}

#[test]
fn service_name_precedence() {
    let p = policy_with("p", 1, json!({}));
    type Setup = fn(&mut Workload);
    let cases: [(&str, Setup, &str); 6] = [
        ("workload name", |_| {}, "orders"),
        (
            "workload label",
            |w| {
                w.labels
                    .insert("app.kubernetes.io/name".into(), "wl-label".into());
            },
            "wl-label",
        ),
        (
            "template label first",
            |w| {
                w.labels
                    .insert("app.kubernetes.io/name".into(), "wl-label".into());
                w.template
                    .labels
                    .insert("app.kubernetes.io/name".into(), "tpl-label".into());
            },
            "tpl-label",
        ),
        (
            "workload annotation over labels",
            |w| {
                w.template
                    .labels
                    .insert("app.kubernetes.io/name".into(), "tpl-label".into());
                w.annotations.insert(
                    "resource.opentelemetry.io/service.name".into(),
                    "wl-ann".into(),
                );
            },
            "wl-ann",
        ),
        (
            "template annotation first",
            |w| {
                w.annotations.insert(
                    "resource.opentelemetry.io/service.name".into(),
                    "wl-ann".into(),
                );
                w.template.annotations.insert(
                    "resource.opentelemetry.io/service.name".into(),
                    "tpl-ann".into(),
                );
            },
            "tpl-ann",
        ),
        (
            "empty values are absent",
            |w| {
                w.template.annotations.insert(
                    "resource.opentelemetry.io/service.name".into(),
                    String::new(),
                );
                w.template
                    .labels
                    .insert("app.kubernetes.io/name".into(), String::new());
            },
            "orders",
        ),
    ];
    for (case, setup, want) in cases {
        let mut w = workload(
            "caas-gateway",
            WorkloadKind::Deployment,
            "orders",
            vec![container("a", "a:1"), container("b", "b:2")],
        );
        w.template.labels.clear();
        setup(&mut w);
        let plan = plan_of(&p, &[w], std::slice::from_ref(&p));
        let wp = applied(&plan, "orders");
        assert_eq!(wp.service_name, want, "{case}");
        // Every container of a workload shares the service name.
        for c in &wp.containers {
            assert_eq!(var(c, "OTEL_SERVICE_NAME"), Some(want), "{case}");
        }
    }
}

#[test]
fn a_variable_the_manifest_sets_wins_and_is_reported() {
    let p = caas_production();
    let mut w = gateway();
    let app = &mut w.template.containers[0];
    for (name, value) in [
        ("NODE_ENV", "production"),
        ("OTEL_SERVICE_NAME", "edge-gateway"),
        ("SERVICE_NAME", "edge"),
    ] {
        user_env(app, name, value);
    }
    // The operator's own earlier value is the operator's to update.
    operator_env(
        &mut w.template.containers[1],
        &EnvVar {
            name: "OTEL_SERVICE_NAME".into(),
            value: Some("old".into()),
            value_from: None,
        },
    );

    let plan = plan_of(&p, &[w], std::slice::from_ref(&p));
    let wp = applied(&plan, "gateway");
    let (app, worker) = (&wp.containers[0], &wp.containers[1]);
    assert_eq!(app.user_overrides, ["OTEL_SERVICE_NAME", "SERVICE_NAME"]);
    assert_eq!(var(app, "OTEL_SERVICE_NAME"), None);
    assert_eq!(var(app, "SERVICE_NAME"), None);
    assert_eq!(
        var(app, "NODE_ENV"),
        None,
        "the operator never plans the user's other variables"
    );
    assert_eq!(app.env.len(), 12);
    assert!(worker.user_overrides.is_empty());
    assert_eq!(var(worker, "OTEL_SERVICE_NAME"), Some("gateway"));
}

#[test]
fn a_user_resource_attributes_variable_drops_the_helpers_too() {
    let p = caas_production();
    let mut w = gateway();
    user_env(
        &mut w.template.containers[0],
        "OTEL_RESOURCE_ATTRIBUTES",
        "team=edge",
    );
    let plan = plan_of(&p, &[w], std::slice::from_ref(&p));
    let app = &applied(&plan, "gateway").containers[0];
    assert_eq!(app.user_overrides, ["OTEL_RESOURCE_ATTRIBUTES"]);
    assert_eq!(
        render(&app.env)[..2],
        [
            "OTEL_SERVICE_NAME=gateway".to_string(),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://caas-production-collector.observability.svc:4318/v1/traces"
                .to_string()
        ]
    );
}

#[test]
fn helper_variables_precede_every_reference() {
    let p = caas_production();
    let workloads = [gateway(), auth(), socket()];
    let plan = plan_of(&p, &workloads, std::slice::from_ref(&p));
    let mut checked = 0;
    for d in &plan.plan.workloads {
        let WorkloadAction::Apply(_) = &d.action else {
            continue;
        };
        for c in &applied(&plan, &d.id.name).containers {
            let pos = |n: &str| c.env.iter().position(|e| e.name == n);
            let attrs = pos("OTEL_RESOURCE_ATTRIBUTES").unwrap();
            assert!(pos("OTEL_RESOURCE_ATTRIBUTES_POD_NAME").unwrap() < attrs);
            assert!(pos("OTEL_RESOURCE_ATTRIBUTES_NODE_NAME").unwrap() < attrs);
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

#[test]
fn namespace_selection_and_exclusions() {
    let p = caas_production();
    let everything = [gateway(), auth(), socket(), legacy()];
    let plan = plan_of(&p, &everything, std::slice::from_ref(&p));
    assert_eq!(
        plan.selected_namespaces,
        ["caas-auth", "caas-gateway", "caas-socket"]
    );
    assert_eq!(
        actions(&plan),
        pairs(&[("auth", "Apply"), ("gateway", "Apply"), ("socket", "Apply")])
    );

    // No namespace selector: every namespace except the always-excluded ones, the
    // operator's own and excludeNamespaces.
    let all = policy_with(
        "all",
        1,
        json!({"selector": {"excludeNamespaces": ["caas-socket"]}}),
    );
    let in_system = workload(
        "kube-system",
        WorkloadKind::DaemonSet,
        "agent",
        vec![container("a", "a:1")],
    );
    let in_operator = workload(
        OPERATOR_NS,
        WorkloadKind::Deployment,
        "tracing-operator",
        vec![container("a", "a:1")],
    );
    let workloads = [gateway(), socket(), legacy(), in_system, in_operator];
    let plan = plan_of(&all, &workloads, std::slice::from_ref(&all));
    assert_eq!(
        plan.selected_namespaces,
        ["caas-auth", "caas-gateway", "legacy"]
    );
    assert_eq!(
        actions(&plan),
        pairs(&[("gateway", "Apply"), ("billing", "Apply")])
    );
}

#[test]
fn a_namespace_without_the_label_adds_no_attribute() {
    let p = policy_with(
        "tenants",
        1,
        json!({"service": {"attributesFromNamespaceLabels": {"tenant.id": "caas.io/tenant"}}}),
    );
    let plan = plan_of(
        &p,
        &[gateway(), socket(), legacy()],
        std::slice::from_ref(&p),
    );
    let attrs = |name: &str| {
        var(
            &applied(&plan, name).containers[0],
            "OTEL_RESOURCE_ATTRIBUTES",
        )
        .unwrap_or_default()
        .to_string()
    };
    assert!(
        attrs("gateway").ends_with(",tenant.id=caas,k8s.container.name=app"),
        "{}",
        attrs("gateway")
    );
    for name in ["socket", "billing"] {
        assert!(
            !attrs(name).contains("tenant.id"),
            "{name}: {}",
            attrs(name)
        );
        assert!(
            attrs(name).contains(
                "k8s.node.name=$(OTEL_RESOURCE_ATTRIBUTES_NODE_NAME),k8s.container.name="
            ),
            "{}",
            attrs(name)
        );
    }
}

#[test]
fn namespace_labels_become_semantic_convention_attributes() {
    let p = policy_with(
        "tenants",
        1,
        json!({"service": {
            "namespaceLabels": ["caas.io/tenant", "tracing.caas.io/enabled", "absent"],
            // A name the user chose wins over the convention's for the same key.
            "attributesFromNamespaceLabels": {"k8s.namespace.label.tracing.caas.io/enabled": "caas.io/tenant"},
        }}),
    );
    let plan = plan_of(&p, &[gateway(), legacy()], std::slice::from_ref(&p));
    let attrs = |name: &str| {
        var(
            &applied(&plan, name).containers[0],
            "OTEL_RESOURCE_ATTRIBUTES",
        )
        .unwrap_or_default()
        .to_string()
    };
    assert!(
        attrs("gateway").ends_with(
            ",k8s.namespace.label.caas.io/tenant=caas,k8s.namespace.label.tracing.caas.io/enabled=caas,k8s.container.name=app"
        ),
        "{}",
        attrs("gateway")
    );
    assert!(!attrs("gateway").contains("absent"));
    // legacy's namespace has neither label.
    assert!(
        !attrs("billing").contains("k8s.namespace.label."),
        "{}",
        attrs("billing")
    );
}

#[test]
fn duplicate_attribute_keys_and_percent_encoding() {
    let p = policy_with(
        "dups",
        1,
        json!({"service": {
            "resourceAttributes": {
                "k8s.namespace.name": "hijack", "service.name": "hijack", "k8s.pod.name": "hijack",
                "tenant.id": "from-policy", "owner": "Team A, Zürich; \"ops\"\\100%=ok",
                "k8s.cluster.name": "prod-eu"},
            "attributesFromNamespaceLabels": {"tenant.id": "caas.io/tenant", "deployment.environment.name": "env",
                                              "service.version": "release"},
        }}),
    );
    let mut namespaces = caas_namespaces();
    namespaces.extend([namespace(
        "caas-gateway",
        &[
            ("caas.io/tenant", "caas"),
            ("env", "staging"),
            ("release", "r7"),
        ],
    )]);
    let plan = plan_ns(&p, &namespaces, &[gateway()], std::slice::from_ref(&p));
    let app = &applied(&plan, "gateway").containers[0];
    assert_eq!(
        var(app, "OTEL_RESOURCE_ATTRIBUTES"),
        Some(
            "service.version=2.4.1,deployment.environment.name=staging,service.namespace=caas-gateway,\
             k8s.namespace.name=caas-gateway,k8s.deployment.name=gateway,\
             k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME),k8s.node.name=$(OTEL_RESOURCE_ATTRIBUTES_NODE_NAME),\
             k8s.cluster.name=prod-eu,owner=Team%20A%2C%20Z%C3%BCrich%3B%20%22ops%22%5C100%25%3Dok,tenant.id=from-policy,\
             k8s.container.name=app"
        )
    );
    // Without a tag the namespace label fills service.version.
    let worker = &applied(&plan, "gateway").containers[1];
    assert!(
        var(worker, "OTEL_RESOURCE_ATTRIBUTES")
            .unwrap_or_default()
            .starts_with("service.version=r7,deployment.environment.name=staging,")
    );

    // spec.service.environment beats the namespace label.
    let mut with_env = p.clone();
    with_env.spec.service.environment = Some("production".into());
    let plan = plan_ns(
        &with_env,
        &namespaces,
        &[gateway()],
        std::slice::from_ref(&with_env),
    );
    let attrs = var(
        &applied(&plan, "gateway").containers[0],
        "OTEL_RESOURCE_ATTRIBUTES",
    )
    .unwrap_or_default()
    .to_string();
    assert!(
        attrs.contains(",deployment.environment.name=production,"),
        "{attrs}"
    );
    assert!(!attrs.contains("staging"), "{attrs}");
}

#[test]
fn dollar_signs_from_user_data_are_never_expanded() {
    let p = policy_with(
        "p",
        1,
        json!({
            "service": {"resourceAttributes": {"note": "$(SECRET)"}},
            "env": [{"name": "SVC", "value": "$(HOSTNAME)/{service.name}"}],
        }),
    );
    let mut w = gateway();
    w.template.annotations.insert(
        "resource.opentelemetry.io/service.name".into(),
        "gw$(X)".into(),
    );
    let plan = plan_of(&p, &[w], std::slice::from_ref(&p));
    let app = &applied(&plan, "gateway").containers[0];
    assert_eq!(var(app, "OTEL_SERVICE_NAME"), Some("gw$$(X)"));
    assert!(
        var(app, "OTEL_RESOURCE_ATTRIBUTES")
            .unwrap_or_default()
            .ends_with(",note=%24(SECRET),k8s.container.name=app")
    );
    assert_eq!(var(app, "SVC"), Some("$(HOSTNAME)/gw$$(X)"));
}

#[test]
fn sampling_per_service_and_unmatched_overrides() {
    let p = policy_with(
        "s",
        1,
        json!({"sampling": {"ratio": 0.25, "services": [
        {"name": "auth", "ratio": 1.0}, {"name": "payments", "ratio": 0.5}, {"name": "gateway", "ratio": 0.05}]}}),
    );
    let plan = plan_of(&p, &[gateway(), auth(), socket()], std::slice::from_ref(&p));
    let arg = |name: &str| {
        var(
            &applied(&plan, name).containers[0],
            "OTEL_TRACES_SAMPLER_ARG",
        )
        .map(str::to_string)
    };
    assert_eq!(arg("auth").as_deref(), Some("1"));
    assert_eq!(arg("gateway").as_deref(), Some("0.05"));
    assert_eq!(arg("socket").as_deref(), Some("0.25"));
    assert_eq!(plan.unmatched_service_overrides, ["payments"]);
    assert_eq!(
        var(&applied(&plan, "auth").containers[0], "OTEL_TRACES_SAMPLER"),
        Some("parentbased_traceidratio")
    );

    let not_parent = policy_with(
        "n",
        1,
        json!({"sampling": {"ratio": 0.1, "parentBased": false}}),
    );
    let plan = plan_of(&not_parent, &[auth()], std::slice::from_ref(&not_parent));
    let c = &applied(&plan, "auth").containers[0];
    assert_eq!(var(c, "OTEL_TRACES_SAMPLER"), Some("traceidratio"));
    assert_eq!(var(c, "OTEL_TRACES_SAMPLER_ARG"), Some("0.1"));
    assert!(plan.unmatched_service_overrides.is_empty());
}

#[test]
fn collector_off_exports_to_the_backend_and_propagators_join() {
    let p = policy_with(
        "direct",
        1,
        json!({
            "collector": {"enabled": false},
            "propagators": ["b3multi", "tracecontext"],
            "backends": [{"name": "tempo", "type": "tempo", "endpoint": "https://tempo.example:4317", "protocol": "grpc"}],
        }),
    );
    let plan = plan_of(&p, &[auth()], std::slice::from_ref(&p));
    let c = &applied(&plan, "auth").containers[0];
    // gRPC has no path: the endpoint as written.
    assert_eq!(
        var(c, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        Some("https://tempo.example:4317")
    );
    assert_eq!(var(c, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), Some("grpc"));
    assert_eq!(var(c, "OTEL_PROPAGATORS"), Some("b3multi,tracecontext"));
    assert_eq!(var(c, "OTEL_EXPORTER_OTLP_ENDPOINT"), None);

    // Over http the signal-specific endpoint names the traces path, once.
    let http = |endpoint: &str| {
        let p = policy_with(
            "direct",
            1,
            json!({
                "collector": {"enabled": false},
                "backends": [{"name": "vendor", "type": "otlp", "endpoint": endpoint, "protocol": "http"}],
            }),
        );
        let plan = plan_of(&p, &[auth()], std::slice::from_ref(&p));
        var(
            &applied(&plan, "auth").containers[0],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        )
        .map(str::to_string)
    };
    assert_eq!(
        http("https://otlp.example.com:4318").as_deref(),
        Some("https://otlp.example.com:4318/v1/traces")
    );
    assert_eq!(
        http("https://otlp.example.com/otlp/").as_deref(),
        Some("https://otlp.example.com/otlp/v1/traces")
    );
    assert_eq!(
        http("https://otlp.example.com/v1/traces").as_deref(),
        Some("https://otlp.example.com/v1/traces")
    );
}

/// `(service, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG)` of each planned workload.
fn samplers(sampling: Value, collector: Value) -> Vec<(String, String, Option<String>)> {
    let p = policy_with(
        "s",
        1,
        json!({"sampling": sampling, "collector": collector}),
    );
    let plan = plan_of(&p, &[gateway(), auth(), socket()], std::slice::from_ref(&p));
    ["auth", "gateway", "socket"]
        .iter()
        .map(|name| {
            let c = &applied(&plan, name).containers[0];
            (
                name.to_string(),
                var(c, "OTEL_TRACES_SAMPLER")
                    .unwrap_or_default()
                    .to_string(),
                var(c, "OTEL_TRACES_SAMPLER_ARG").map(str::to_string),
            )
        })
        .collect()
}

fn sampler_row(
    service: &str,
    sampler: &str,
    arg: Option<&str>,
) -> (String, String, Option<String>) {
    (service.into(), sampler.into(), arg.map(str::to_string))
}

#[test]
fn which_sampler_each_workload_gets() {
    let services = json!([{"name": "auth", "ratio": 1.0}, {"name": "socket", "ratio": 0.02}]);
    let tail = json!({"keepErrors": true, "slowerThan": "500ms"});
    // Head only: the ratios are head ratios, as before.
    assert_eq!(
        samplers(json!({"ratio": 0.1, "services": services}), json!({})),
        [
            sampler_row("auth", "parentbased_traceidratio", Some("1")),
            sampler_row("gateway", "parentbased_traceidratio", Some("0.1")),
            sampler_row("socket", "parentbased_traceidratio", Some("0.02")),
        ]
    );
    // Tail rules: every SDK records every trace; the collector applies the ratios.
    assert_eq!(
        samplers(
            json!({"ratio": 0.1, "services": services, "tail": tail}),
            json!({})
        ),
        [
            sampler_row("auth", "parentbased_always_on", None),
            sampler_row("gateway", "parentbased_always_on", None),
            sampler_row("socket", "parentbased_always_on", None),
        ]
    );
    // Tail rules and a head ratio: unlisted services and those listed below it
    // record the head ratio, a service listed above it its own ratio.
    assert_eq!(
        samplers(
            json!({"ratio": 0.1, "services": services, "head": {"ratio": 0.25}, "tail": tail}),
            json!({})
        ),
        [
            sampler_row("auth", "parentbased_always_on", None),
            sampler_row("gateway", "parentbased_traceidratio", Some("0.25")),
            sampler_row("socket", "parentbased_traceidratio", Some("0.25")),
        ]
    );
    assert_eq!(
        samplers(
            json!({"ratio": 0.1, "parentBased": false, "head": {"ratio": 0.5}, "tail": tail}),
            json!({})
        )[1],
        sampler_row("gateway", "traceidratio", Some("0.5"))
    );
    // Collector off (the CRD refuses tail rules then): head ratios as without them.
    assert_eq!(
        samplers(
            json!({"ratio": 0.1, "services": services}),
            json!({"enabled": false})
        ),
        [
            sampler_row("auth", "parentbased_traceidratio", Some("1")),
            sampler_row("gateway", "parentbased_traceidratio", Some("0.1")),
            sampler_row("socket", "parentbased_traceidratio", Some("0.02")),
        ]
    );
}

#[test]
fn kinds_and_container_names_narrow_the_selection() {
    let p = policy_with(
        "narrow",
        1,
        json!({"selector": {"kinds": ["StatefulSet"], "containers": ["socket", "istio-proxy"]}}),
    );
    let mut s = socket();
    s.template
        .containers
        .push(container("istio-proxy", "istio/proxyv2:1.24.0"));
    s.template.containers.push(container("sidecar", "log:1"));
    let plan = plan_of(&p, &[gateway(), s], std::slice::from_ref(&p));
    assert_eq!(actions(&plan), pairs(&[("socket", "Apply")]));
    let wp = applied(&plan, "socket");
    let names: Vec<&str> = wp.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["socket", "istio-proxy"],
        "named containers only, proxies included when named"
    );
    let attrs = var(&wp.containers[0], "OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    assert!(
        attrs.contains(",k8s.statefulset.name=socket,")
            && attrs.ends_with(",k8s.container.name=socket"),
        "{attrs}"
    );
    assert!(
        attrs.starts_with("service.version=1.2,"),
        "tag before a digest: {attrs}"
    );
}

#[test]
fn precedence_between_policies() {
    let spec =
        json!({"selector": {"namespaces": {"matchLabels": {"tracing.caas.io/enabled": "true"}}}});
    let p = |name: &str, priority: i32, created: i64, mode: &str| {
        let mut s = spec.clone();
        s["priority"] = json!(priority);
        s["mode"] = json!(mode);
        policy_with(name, created, s)
    };
    struct Case {
        what: &'static str,
        policies: Vec<PolicyView>,
        /// (policy, expected action on auth)
        expect: Vec<(&'static str, &'static str)>,
    }
    let cases = [
        Case {
            what: "equal priority: the older wins",
            policies: vec![p("zeta", 0, 100, "Enforce"), p("alpha", 0, 200, "Enforce")],
            expect: vec![("zeta", "Apply"), ("alpha", "Conflicted(zeta)")],
        },
        Case {
            what: "equal priority and age: the name decides",
            policies: vec![p("zeta", 0, 100, "Enforce"), p("alpha", 0, 100, "Enforce")],
            expect: vec![("zeta", "Conflicted(alpha)"), ("alpha", "Apply")],
        },
        Case {
            what: "higher priority wins over age",
            policies: vec![p("old", 0, 1, "Enforce"), p("new", 10, 999, "Enforce")],
            expect: vec![("old", "Conflicted(new)"), ("new", "Apply")],
        },
        Case {
            what: "DryRun never wins over Enforce, but reports what it would do",
            policies: vec![p("dry", 10, 1, "DryRun"), p("enforce", 0, 999, "Enforce")],
            expect: vec![("dry", "Apply"), ("enforce", "Apply")],
        },
        Case {
            what: "DryRun below an Enforce policy is Conflicted",
            policies: vec![p("dry", -5, 1, "DryRun"), p("enforce", 0, 999, "Enforce")],
            expect: vec![("dry", "Conflicted(enforce)"), ("enforce", "Apply")],
        },
        Case {
            what: "three policies: the strongest wins, each loser names it",
            policies: vec![
                p("a", 1, 5, "Enforce"),
                p("b", 3, 5, "Enforce"),
                p("c", 2, 5, "Enforce"),
            ],
            expect: vec![
                ("a", "Conflicted(b)"),
                ("b", "Apply"),
                ("c", "Conflicted(b)"),
            ],
        },
    ];
    for case in cases {
        for (name, want) in &case.expect {
            let me = case.policies.iter().find(|x| x.name == *name).unwrap();
            let plan = plan_of(me, &[auth()], &case.policies);
            assert_eq!(
                actions(&plan),
                pairs(&[("auth", want)]),
                "{}: {name}",
                case.what
            );
        }
    }
}

#[test]
fn a_deleting_policy_loses_everything_and_removes_what_it_wrote() {
    let mut dying = policy_with(
        "dying",
        1,
        json!({"priority": 100, "selector": {"namespaces": {"matchExpressions": [
        {"key": "x", "operator": "In"}]}}}),
    );
    dying.deleting = true;
    let other = policy_with("other", 500, json!({}));
    let policies = [dying.clone(), other.clone()];
    let mut gw = gateway();
    gw.annotations
        .insert(POLICY_ANNOTATION.into(), "dying".into());
    let mut au = auth();
    au.annotations
        .insert(POLICY_ANNOTATION.into(), "dying".into());
    let mut so = socket();
    so.annotations
        .insert(POLICY_ANNOTATION.into(), "other".into());
    let workloads = [so, au, gw, legacy()];

    // Its selector is invalid, yet deleting it still plans: Remove wherever its annotation is.
    let plan = plan_of(&dying, &workloads, &policies);
    assert_eq!(
        actions(&plan),
        pairs(&[("auth", "Remove"), ("gateway", "Remove")])
    );
    assert!(plan.selected_namespaces.is_empty());

    // The other policy owns everything it selects, despite the lower priority.
    let plan = plan_of(&other, &workloads, &policies);
    assert_eq!(
        actions(&plan),
        pairs(&[
            ("auth", "Apply"),
            ("gateway", "Apply"),
            ("socket", "Apply"),
            ("billing", "Apply")
        ])
    );
}

#[test]
fn remove_when_a_workload_leaves_the_selection_and_handover_between_policies() {
    let p = caas_production();
    let mark = |mut w: Workload, policy: &str| {
        w.annotations
            .insert(POLICY_ANNOTATION.into(), policy.into());
        w.annotations
            .insert(CONFIG_HASH_ANNOTATION.into(), "0123456789abcdef".into());
        w
    };
    // Left the selection: its part-of label changed; another is in a namespace
    // whose label was removed; a third carries another policy's annotation.
    let mut relabelled = mark(gateway(), "caas-production");
    relabelled
        .labels
        .insert("app.kubernetes.io/part-of".into(), "other".into());
    let moved_out = mark(legacy(), "caas-production");
    let foreign = mark(
        workload("legacy", WorkloadKind::DaemonSet, "agent", vec![]),
        "someone-else",
    );
    let workloads = [
        relabelled.clone(),
        moved_out.clone(),
        foreign.clone(),
        mark(auth(), "caas-production"),
    ];
    let plan = plan_of(&p, &workloads, std::slice::from_ref(&p));
    assert_eq!(
        actions(&plan),
        pairs(&[
            ("auth", "Apply"),
            ("gateway", "Remove"),
            ("billing", "Remove")
        ])
    );

    // Another Enforce policy now wins: the still-selected one is Conflicted, the
    // no-longer-selected one is left to the winner's apply (no Remove racing it).
    let winner = policy_with("winner", 5_000, json!({"priority": 7}));
    let policies = [p.clone(), winner.clone()];
    let plan_loser = plan_of(&p, &workloads, &policies);
    assert_eq!(
        actions(&plan_loser),
        pairs(&[("auth", "Conflicted(winner)")])
    );
    let plan_winner = plan_of(&winner, &workloads, &policies);
    assert_eq!(
        actions(&plan_winner),
        pairs(&[
            ("auth", "Apply"),
            ("gateway", "Apply"),
            ("billing", "Apply"),
            ("agent", "Apply")
        ])
    );

    // A DryRun policy does not take workloads over: the loser still removes.
    let mut dry = winner.clone();
    dry.spec.mode = crate::api::Mode::DryRun;
    let policies = [p.clone(), dry];
    let plan = plan_of(&p, &workloads, &policies);
    assert_eq!(
        actions(&plan),
        pairs(&[
            ("auth", "Apply"),
            ("gateway", "Remove"),
            ("billing", "Remove")
        ])
    );
}

#[test]
fn decisions_are_sorted_by_namespace_kind_name() {
    let p = policy_with("all", 1, json!({}));
    let workloads = [
        workload("legacy", WorkloadKind::Deployment, "b", vec![]),
        workload("caas-socket", WorkloadKind::StatefulSet, "socket", vec![]),
        workload("legacy", WorkloadKind::DaemonSet, "a", vec![]),
        workload("caas-auth", WorkloadKind::Deployment, "z", vec![]),
        workload("legacy", WorkloadKind::Deployment, "a", vec![]),
    ];
    let plan = plan_of(&p, &workloads, std::slice::from_ref(&p));
    let ids: Vec<String> = plan.workloads.iter().map(|d| d.id.to_string()).collect();
    assert_eq!(
        ids,
        [
            "Deployment caas-auth/z",
            "StatefulSet caas-socket/socket",
            "Deployment legacy/a",
            "Deployment legacy/b",
            "DaemonSet legacy/a",
        ]
    );
}

#[test]
fn an_invalid_selector_is_an_error_naming_the_field() {
    let cases = [
        (
            json!({"selector": {"namespaces": {"matchExpressions": [{"key": "team", "operator": "In"}]}}}),
            "spec.selector.namespaces: matchExpressions[0].values must not be empty for operator In",
        ),
        (
            json!({"selector": {"workloads": {"matchExpressions": [
                {"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists", "values": ["x"]}]}}}),
            "spec.selector.workloads: matchExpressions[1].values must be empty for operator Exists",
        ),
    ];
    let namespaces = caas_namespaces();
    for (spec, message) in cases {
        let p = policy_with("bad", 1, spec);
        let snapshot = Snapshot {
            operator_namespace: OPERATOR_NS,
            namespaces: &namespaces,
            workloads: &[],
            policies: std::slice::from_ref(&p),
            injection: Injection::PodTemplate,
        };
        let err = plan_policy(&p, &snapshot).unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    // A competitor with an invalid selector owns nothing.
    let bad = policy_with(
        "bad",
        1,
        json!({"priority": 9, "selector": {"workloads": {"matchExpressions": [
        {"key": "a", "operator": "Near", "values": ["x"]}]}}}),
    );
    let good = policy_with("good", 2, json!({}));
    let plan = plan_of(&good, &[auth()], &[bad, good.clone()]);
    assert_eq!(actions(&plan), pairs(&[("auth", "Apply")]));
}

/// The live workload as the API server stores it after applying `a`'s plan
/// (pod-template injection): every planned entry owned by the operator.
fn live_after_apply(a: &Applied, policy: &str) -> Workload {
    let mut w = a.live.clone();
    w.annotations
        .insert(POLICY_ANNOTATION.into(), policy.into());
    w.annotations
        .insert(CONFIG_HASH_ANNOTATION.into(), a.config_hash.clone());
    for planned in &a.containers {
        let c = w
            .template
            .containers
            .iter_mut()
            .find(|c| *c.name == planned.name)
            .unwrap();
        for e in &planned.env {
            operator_env(c, e);
        }
    }
    w
}

fn entry_mut<'w>(w: &'w mut Workload, container: usize, name: &str) -> &'w mut EnvEntry {
    w.template.containers[container]
        .env
        .iter_mut()
        .find(|e| &*e.name == name)
        .expect("entry present")
}

#[test]
fn is_applied_is_exact() {
    let p = caas_production();
    let mut gw = gateway();
    user_env(&mut gw.template.containers[0], "NODE_ENV", "production");
    let plan = plan_of(&p, &[gw.clone()], std::slice::from_ref(&p));
    let a = applied(&plan, "gateway");
    let wp = &a.plan;
    let live = live_after_apply(&a, "caas-production");
    let mode = Injection::PodTemplate;
    assert!(
        is_applied(mode, "caas-production", wp, &live),
        "converged, with the user's NODE_ENV ignored"
    );
    assert!(!is_applied(
        Injection::Admission,
        "caas-production",
        wp,
        &live
    ));
    assert!(!is_clean(&live));

    type Edit = fn(&mut Workload);
    let cases: [(&str, Edit, bool); 11] = [
        ("unchanged", |_| {}, true),
        (
            "the user adds a variable of their own",
            |w| user_env(&mut w.template.containers[2], "ISTIO_META", "x"),
            true,
        ),
        (
            "the API server left fieldRef.apiVersion empty",
            |w| {
                let e = entry_mut(w, 0, "OTEL_RESOURCE_ATTRIBUTES_POD_NAME");
                e.digest = env_digest(
                    "OTEL_RESOURCE_ATTRIBUTES_POD_NAME",
                    None,
                    Some(&json!({"fieldRef": {"fieldPath": "metadata.name"}})),
                );
            },
            true,
        ),
        (
            "a value changed",
            |w| {
                entry_mut(w, 0, "OTEL_TRACES_SAMPLER_ARG").digest =
                    env_digest("OTEL_TRACES_SAMPLER_ARG", Some("0.5"), None);
            },
            false,
        ),
        (
            "an entry deleted by hand",
            |w| {
                w.template.containers[1]
                    .env
                    .retain(|e| &*e.name != "OTEL_PROPAGATORS");
            },
            false,
        ),
        (
            "an extra stale owned entry",
            |w| {
                operator_env(
                    &mut w.template.containers[0],
                    &EnvVar {
                        name: "OLD_VAR".into(),
                        value: Some("x".into()),
                        value_from: None,
                    },
                )
            },
            false,
        ),
        (
            "a stale owned entry in a container no longer instrumented",
            |w| {
                operator_env(
                    &mut w.template.containers[2],
                    &EnvVar {
                        name: "OTEL_SERVICE_NAME".into(),
                        value: Some("gateway".into()),
                        value_from: None,
                    },
                )
            },
            false,
        ),
        (
            "another config hash",
            |w| {
                w.annotations
                    .insert(CONFIG_HASH_ANNOTATION.into(), "ffffffffffffffff".into());
            },
            false,
        ),
        (
            "another policy's annotation",
            |w| {
                w.annotations
                    .insert(POLICY_ANNOTATION.into(), "other".into());
            },
            false,
        ),
        (
            // kubectl set env took the value over: the operator no longer owns it.
            "planned entry present but its value owned by someone else",
            |w| entry_mut(w, 0, "OTEL_TRACES_EXPORTER").owner = EnvOwner::User,
            false,
        ),
        (
            "an admission annotation left behind",
            |w| w.template.ours = 42,
            false,
        ),
    ];
    for (what, edit, want) in cases {
        let mut l = live.clone();
        edit(&mut l);
        assert_eq!(is_applied(mode, "caas-production", wp, &l), want, "{what}");
    }
    assert!(
        !is_applied(mode, "caas-production", wp, &gw),
        "never applied"
    );

    // After a removal the workload is clean, user entries notwithstanding.
    assert!(is_clean(&gw));
    let mut only_annotation = gw.clone();
    only_annotation
        .annotations
        .insert(CONFIG_HASH_ANNOTATION.into(), "x".into());
    assert!(!is_clean(&only_annotation));
}

#[test]
fn config_hash_is_stable_and_covers_policy_and_values() {
    let p = caas_production();
    let first = applied(
        &plan_of(&p, &[gateway()], std::slice::from_ref(&p)),
        "gateway",
    )
    .clone();
    let again = applied(
        &plan_of(&p, &[gateway()], std::slice::from_ref(&p)),
        "gateway",
    )
    .clone();
    assert_eq!(first.config_hash, again.config_hash);
    // Pinned: the same plan hashes the same in every process and release.
    let plan = &first.plan;
    assert_eq!(
        first.config_hash,
        env::config_hash(
            "caas-production",
            &plan.vars,
            &plan.containers,
            &plan.version
        )
    );
    assert_eq!(
        env::config_hash("p", &[], &[], &VersionPlan::default()),
        PINNED_EMPTY_HASH
    );
    let small_vars = [
        PlannedVar {
            name: "A".into(),
            value: PlannedValue::Literal("1".into()),
        },
        PlannedVar {
            name: "B".into(),
            value: PlannedValue::Field("metadata.name"),
        },
    ];
    let small_containers = [ContainerPlan {
        name: "app".into(),
        user_overrides: vec!["B".into()],
    }];
    let version = VersionPlan::default();
    assert_eq!(
        env::config_hash("p", &small_vars, &small_containers, &version),
        PINNED_SMALL_HASH
    );
    // Moving a byte between name and value changes it (length-prefixed fields).
    let mut shifted = small_vars.clone();
    shifted[0] = PlannedVar {
        name: "A1".into(),
        value: PlannedValue::Literal(String::new()),
    };
    assert_ne!(
        env::config_hash("p", &shifted, &small_containers, &version),
        PINNED_SMALL_HASH
    );
    // So does the kind of value, and the version plan.
    let mut kind = small_vars.clone();
    kind[0].value = PlannedValue::Attributes("1".into());
    assert_ne!(
        env::config_hash("p", &kind, &small_containers, &version),
        PINNED_SMALL_HASH
    );
    let labelled = VersionPlan {
        pod_label: true,
        ..VersionPlan::default()
    };
    assert_ne!(
        env::config_hash("p", &small_vars, &small_containers, &labelled),
        PINNED_SMALL_HASH
    );

    let mut renamed = p.clone();
    renamed.name = "caas-staging".into();
    let other = applied(
        &plan_of(&renamed, &[gateway()], std::slice::from_ref(&renamed)),
        "gateway",
    )
    .clone();
    assert_ne!(first.config_hash, other.config_hash);

    let mut ratio = p.clone();
    ratio.spec.sampling.ratio = 0.2;
    let other = applied(
        &plan_of(&ratio, &[gateway()], std::slice::from_ref(&ratio)),
        "gateway",
    )
    .clone();
    assert_ne!(first.config_hash, other.config_hash);

    // A user override changes what is applied, so the hash too.
    let mut gw = gateway();
    user_env(&mut gw.template.containers[0], "SERVICE_NAME", "edge");
    let other = applied(
        &plan_of(&p, &[gw.clone()], std::slice::from_ref(&p)),
        "gateway",
    )
    .clone();
    assert_ne!(first.config_hash, other.config_hash);

    // At admission it changes nothing the operator writes: nor the hash.
    let (plain, overridden) = (admission_plan(&p, &gateway()), admission_plan(&p, &gw));
    assert_eq!(plain.config_hash, overridden.config_hash);
    assert_eq!(
        overridden.containers[0].user_overrides,
        ["SERVICE_NAME"],
        "still reported"
    );
}

/// The plan `p` gives `w`, alone in the caas namespaces, under admission injection.
fn admission_plan(p: &PolicyView, w: &Workload) -> WorkloadPlan {
    let shared = [Arc::new(w.clone())];
    let snapshot = Snapshot {
        operator_namespace: OPERATOR_NS,
        namespaces: &caas_namespaces(),
        workloads: &shared,
        policies: std::slice::from_ref(p),
        injection: Injection::Admission,
    };
    plan_policy(p, &snapshot)
        .unwrap()
        .workloads
        .iter()
        .find_map(|d| match &d.action {
            WorkloadAction::Apply(wp) => Some(wp.clone()),
            _ => None,
        })
        .expect("an Apply")
}

const PINNED_SMALL_HASH: &str = "84727333f39437fc";
const PINNED_EMPTY_HASH: &str = "5aabf8ecf4d341e2";

/// The index tells a change the rollout must act on from one it need not: a
/// label no selector reads leaves every decision as it was, while a label that
/// deselects, a rollout status and a template change each move the entry.
#[test]
fn the_index_counts_only_changes_the_rollout_reads() {
    use super::index::{Basis, PolicyIndex};
    let p = caas_production();
    let namespaces = caas_namespaces();
    let policies = [p.clone()];
    let snapshot = Snapshot {
        operator_namespace: OPERATOR_NS,
        namespaces: &namespaces,
        workloads: &[],
        policies: &policies,
        injection: Injection::Admission,
    };
    let ownership = precedence::Ownership::new(&policies, &namespaces, OPERATOR_NS);
    let planner = Planner::new(&p, &snapshot, &ownership).unwrap();
    let basis = Basis {
        generation: 1,
        injection: Injection::Admission,
        ..Basis::default()
    };
    let mut index = PolicyIndex::default();
    let all = vec![Arc::new(gateway()), Arc::new(auth())];
    let first = index.update(&planner, basis.clone(), Vec::new(), || all.clone());
    assert!(first.full);
    assert_eq!(index.len(), 2);

    let mut update = |w: Workload| {
        let id = w.id.clone();
        index.update(&planner, basis.clone(), [(id, Some(Arc::new(w)))], Vec::new)
    };
    let mut ticked = gateway();
    ticked.labels.insert("bench/tick".into(), "1".into());
    let same = update(ticked);
    assert_eq!((same.full, same.planned, same.moved), (false, 1, 0));

    let mut scaled = gateway();
    scaled.rollout.desired = 3;
    assert_eq!(update(scaled).moved, 1, "a rollout status change moves");

    let mut bumped = gateway();
    bumped.template.containers[0].image = Some("registry.caas.io:5000/caas/gateway:2.5.0".into());
    assert_eq!(update(bumped).moved, 1, "an image change moves");

    let mut deselected = gateway();
    deselected
        .labels
        .insert("app.kubernetes.io/part-of".into(), "other".into());
    assert_eq!(update(deselected).moved, 1, "leaving the selection moves");

    // Gone, then a workload the policy never selected: only the first moves.
    let gone = index.update(&planner, basis.clone(), [(auth().id, None)], Vec::new);
    assert_eq!(gone.moved, 1);
    let unrelated = legacy();
    let id = unrelated.id.clone();
    let untouched = index.update(&planner, basis, [(id, Some(Arc::new(unrelated)))], Vec::new);
    assert_eq!(untouched.moved, 0);
}

/// A GitOps tool removing an instrumented container already rolls the workload:
/// at admission the operator keeps the gone name listed rather than roll it a
/// second time, as long as nothing else changed; a rename, or any other change
/// of the plan, gives the fresh list.
#[test]
fn a_removed_container_stays_listed_rather_than_roll_the_workload_twice() {
    let p = caas_production();
    let decide = |w: &Workload| admission_plan(&p, w);
    // What the operator's apply left on the live workload for `plan`.
    let carrying = |mut w: Workload, plan: &WorkloadPlan| {
        let annotations = injection::template_annotations(plan);
        w.template.ours = crate::workload::annotations_digest(
            annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        w.template.listed = annotations
            .get(crate::api::INJECT_ANNOTATION)
            .map(|v| v.as_str().into());
        w.annotations
            .insert(POLICY_ANNOTATION.into(), p.name.clone());
        w.annotations
            .insert(CONFIG_HASH_ANNOTATION.into(), plan.config_hash.clone());
        w
    };
    let names = |plan: &WorkloadPlan| -> Vec<String> {
        plan.containers.iter().map(|c| c.name.clone()).collect()
    };
    let first = decide(&gateway());
    assert_eq!(names(&first), ["app", "worker"]);
    let live = carrying(gateway(), &first);
    assert!(is_applied(Injection::Admission, &p.name, &first, &live));

    // `worker` removed: the same plan, nothing to write.
    let mut removed = live.clone();
    removed.template.containers.retain(|c| &*c.name != "worker");
    let kept = decide(&removed);
    assert_eq!(names(&kept), ["app", "worker"]);
    assert_eq!(kept.config_hash, first.config_hash);
    assert!(is_applied(Injection::Admission, &p.name, &kept, &removed));

    // `worker` renamed: the new name must be listed, so the list is fresh.
    let mut renamed = removed.clone();
    renamed
        .template
        .containers
        .push(container("jobs", "ghcr.io/caas/gateway-worker:2.4.1"));
    assert_eq!(names(&decide(&renamed)), ["app", "jobs"]);

    // Any other change of the plan rolls the workload anyway: the gone name goes.
    let mut relabeled = removed.clone();
    relabeled
        .template
        .labels
        .insert("app.kubernetes.io/name".into(), "edge".into());
    let fresh = decide(&relabeled);
    assert_eq!(names(&fresh), ["app"]);
    assert_ne!(fresh.config_hash, first.config_hash);
}
