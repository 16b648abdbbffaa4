use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::plan::env::VersionPlan;
use crate::plan::{ContainerPlan, PlannedVar};
use crate::workload::{EnvEntry, EnvOwner, RolloutState, Template, WorkloadKind};

fn var(name: &str, value: PlannedValue) -> PlannedVar {
    PlannedVar {
        name: name.into(),
        value,
    }
}

fn plan(version: VersionPlan, overrides: &[&str]) -> WorkloadPlan {
    WorkloadPlan {
        service_name: "auth".into(),
        vars: vec![
            var(POD_NAME_VAR, PlannedValue::Field("metadata.name")),
            var(NODE_NAME_VAR, PlannedValue::Field("spec.nodeName")),
            var("OTEL_SERVICE_NAME", PlannedValue::Literal("auth".into())),
            var(
                RESOURCE_ATTRIBUTES_VAR,
                PlannedValue::Attributes("k8s.namespace.name=caas".into()),
            ),
            var(
                "APP_VERSION",
                PlannedValue::Versioned(format!("v={VERSION_TOKEN}")),
            ),
        ],
        containers: vec![ContainerPlan {
            name: "app".into(),
            user_overrides: overrides.iter().map(|s| s.to_string()).collect(),
        }],
        version,
        agent: Default::default(),
        config_hash: "0123456789abcdef".into(),
    }
}

fn container(name: &str, image: &str) -> Container {
    Container {
        name: name.into(),
        image: Some(image.into()),
        env: vec![],
        java_agent: false,
    }
}

fn workload(kind: WorkloadKind, containers: Vec<Container>) -> Workload {
    Workload {
        id: WorkloadId::new("caas", kind, "auth"),
        labels: Default::default(),
        annotations: Default::default(),
        template: Template {
            containers,
            ..Template::default()
        },
        rollout: RolloutState::default(),
    }
}

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

#[test]
fn admission_annotations_are_plain_strings_cel_can_split() {
    let p = plan(
        VersionPlan {
            workload_label: Some("3.0".into()),
            fallback: Some("0.0.1".into()),
            ..VersionPlan::default()
        },
        &[],
    );
    let a = template_annotations(&p);
    let want: BTreeMap<String, String> = [
        ("tracing.caas.io/config-hash", "0123456789abcdef"),
        ("tracing.caas.io/inject", "app"),
        (
            "tracing.caas.io/env",
            "OTEL_RESOURCE_ATTRIBUTES_POD_NAME,OTEL_RESOURCE_ATTRIBUTES_NODE_NAME,OTEL_SERVICE_NAME,OTEL_RESOURCE_ATTRIBUTES,APP_VERSION",
        ),
        ("env.tracing.caas.io/OTEL_SERVICE_NAME", "auth"),
        ("env.tracing.caas.io/OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=caas"),
        ("env.tracing.caas.io/APP_VERSION", "v={service.version}"),
        ("tracing.caas.io/version", "3.0"),
        ("tracing.caas.io/default-version", "0.0.1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(a, want);
}

#[test]
fn pod_template_env_reads_the_version_from_the_pod_label() {
    let p = plan(
        VersionPlan {
            pod_label: true,
            ..VersionPlan::default()
        },
        &[],
    );
    let env = container_env(&p, &container("app", "caas/auth:9"));
    assert_eq!(
        render(&env),
        [
            "OTEL_RESOURCE_ATTRIBUTES_SERVICE_VERSION<-metadata.labels['app.kubernetes.io/version']",
            "OTEL_RESOURCE_ATTRIBUTES_POD_NAME<-metadata.name",
            "OTEL_RESOURCE_ATTRIBUTES_NODE_NAME<-spec.nodeName",
            "OTEL_SERVICE_NAME=auth",
            "OTEL_RESOURCE_ATTRIBUTES=service.version=$(OTEL_RESOURCE_ATTRIBUTES_SERVICE_VERSION),k8s.namespace.name=caas,k8s.container.name=app",
            "APP_VERSION=v=$(OTEL_RESOURCE_ATTRIBUTES_SERVICE_VERSION)",
        ]
    );
    // A container that is not instrumented gets nothing.
    assert!(container_env(&p, &container("sidecar", "x:1")).is_empty());
}

#[test]
fn pod_template_env_takes_the_image_tag_only_when_asked() {
    let no_tag = plan(VersionPlan::default(), &[]);
    let env = render(&container_env(&no_tag, &container("app", "caas/auth:9")));
    assert!(env.contains(
        &"OTEL_RESOURCE_ATTRIBUTES=k8s.namespace.name=caas,k8s.container.name=app".to_string()
    ));
    assert!(env.contains(&"APP_VERSION=v=".to_string()));
    let tags = plan(
        VersionPlan {
            image_tags: Some(BTreeMap::from([("app".into(), "9".into())])),
            ..VersionPlan::default()
        },
        &[],
    );
    let env = render(&container_env(&tags, &container("app", "caas/auth:9")));
    assert!(env.contains(&"OTEL_RESOURCE_ATTRIBUTES=service.version=9,k8s.namespace.name=caas,k8s.container.name=app".to_string()));
}

#[test]
fn the_users_variables_are_left_out_and_with_attributes_the_helpers_too() {
    let p = plan(
        VersionPlan::default(),
        &[RESOURCE_ATTRIBUTES_VAR, "OTEL_SERVICE_NAME"],
    );
    let env = render(&container_env(&p, &container("app", "a:1")));
    assert_eq!(env, ["APP_VERSION=v="]);
}

#[test]
fn an_entry_whose_value_the_user_took_stays_in_the_apply_by_name_only() {
    // `kubectl set env` took OTEL_SERVICE_NAME's value from the operator; the
    // user's manifest sets APP_VERSION itself.
    let p = plan(
        VersionPlan::default(),
        &["OTEL_SERVICE_NAME", "APP_VERSION"],
    );
    let mut app = container("app", "a:1");
    for (name, listed) in [("OTEL_SERVICE_NAME", true), ("APP_VERSION", false)] {
        app.env.push(EnvEntry {
            name: name.into(),
            digest: 1,
            value_from: false,
            owner: EnvOwner::User,
            listed_by_operator: listed,
        });
    }
    let w = workload(WorkloadKind::Deployment, vec![app]);
    let body = apply_body(
        Injection::PodTemplate,
        &w.id,
        &p,
        Some(&w),
        &BTreeMap::new(),
    );
    let env = body
        .pointer("/spec/template/spec/containers/0/env")
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            POD_NAME_VAR,
            NODE_NAME_VAR,
            "OTEL_SERVICE_NAME",
            RESOURCE_ATTRIBUTES_VAR
        ],
        "in planned order, and never an entry the operator did not add"
    );
    assert_eq!(
        env[2],
        json!({"name": "OTEL_SERVICE_NAME"}),
        "no value claimed"
    );
    // What the operator materializes (and checks for convergence) is unchanged.
    let materialized = render(&container_env(&p, &w.template.containers[0]));
    assert!(
        !materialized
            .iter()
            .any(|e| e.starts_with("OTEL_SERVICE_NAME"))
    );
}

#[test]
fn bodies_name_only_the_operators_fields_at_each_kinds_template() {
    let p = plan(VersionPlan::default(), &[]);
    let annotations = BTreeMap::from([("tracing.caas.io/policy".to_string(), "x".to_string())]);
    for (kind, path) in [
        (
            WorkloadKind::Deployment,
            "/spec/template/metadata/annotations",
        ),
        (
            WorkloadKind::CronJob,
            "/spec/jobTemplate/spec/template/metadata/annotations",
        ),
    ] {
        let w = workload(kind, vec![container("app", "a:1")]);
        let body = apply_body(Injection::Admission, &w.id, &p, Some(&w), &annotations);
        assert_eq!(body["kind"], kind.as_str());
        assert_eq!(
            body["metadata"]["annotations"]["tracing.caas.io/policy"],
            "x"
        );
        assert_eq!(
            body.pointer(path)
                .and_then(|a| a.get("tracing.caas.io/inject")),
            Some(&json!("app")),
            "{kind}"
        );
        // Admission owns no container, so a GitOps tool may remove or rename one.
        assert!(
            body.pointer(&path.replace("metadata/annotations", "spec"))
                .is_none()
        );
    }
    let w = workload(
        WorkloadKind::Deployment,
        vec![container("app", "a:1"), container("sidecar", "s:1")],
    );
    let body = apply_body(Injection::PodTemplate, &w.id, &p, Some(&w), &annotations);
    let containers = body
        .pointer("/spec/template/spec/containers")
        .and_then(|c| c.as_array())
        .expect("containers");
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0]["name"], "app");
    assert_eq!(containers[0].as_object().map(|o| o.len()), Some(2));
    let removal = removal_body(&w.id);
    assert!(removal.get("spec").is_none());
    assert!(removal["metadata"].get("annotations").is_none());
    assert!(annotations_body(&w.id, &annotations).get("spec").is_none());
}

#[test]
fn admission_converges_and_a_left_over_env_entry_is_not_converged() {
    let p = plan(VersionPlan::default(), &[]);
    let mut w = workload(WorkloadKind::Deployment, vec![container("app", "a:1")]);
    w.annotations.insert(POLICY_ANNOTATION.into(), "pol".into());
    w.annotations
        .insert(CONFIG_HASH_ANNOTATION.into(), p.config_hash.clone());
    let planned = template_annotations(&p);
    w.template.ours = annotations_digest(planned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert!(is_applied(Injection::Admission, "pol", &p, &w));
    assert!(!is_applied(Injection::Admission, "other", &p, &w));
    let mut left = w.clone();
    left.template.containers[0].env.push(EnvEntry {
        name: "OTEL_SERVICE_NAME".into(),
        digest: 1,
        value_from: false,
        owner: EnvOwner::Operator,
        listed_by_operator: true,
    });
    assert!(!is_applied(Injection::Admission, "pol", &p, &left));
    // The user's own entries do not matter.
    let mut user = w.clone();
    user.template.containers[0].env.push(EnvEntry {
        owner: EnvOwner::User,
        listed_by_operator: false,
        ..left.template.containers[0].env[0].clone()
    });
    assert!(is_applied(Injection::Admission, "pol", &p, &user));
    let mut edited = w;
    edited.template.ours ^= 1;
    assert!(!is_applied(Injection::Admission, "pol", &p, &edited));
}

#[test]
fn the_admission_policy_touches_only_pods_that_carry_a_plan_and_fails_open() {
    let policy = mutating_admission_policy("9.9.9");
    assert_eq!(policy["spec"]["failurePolicy"], "Ignore");
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"],
        json!(["CREATE"])
    );
    let condition = policy["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap_or_default();
    assert!(condition.contains("'tracing.caas.io/inject' in object.metadata.annotations"));
    assert_eq!(policy["spec"]["mutations"][0]["patchType"], "JSONPatch");
    assert_eq!(
        policy["metadata"]["annotations"][ADMISSION_POLICY_VERSION_ANNOTATION],
        "9.9.9"
    );
    let binding = mutating_admission_policy_binding("tracing-system");
    let excluded =
        &binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"];
    assert!(
        excluded.as_array().is_some_and(
            |v| v.contains(&json!("kube-system")) && v.contains(&json!("tracing-system"))
        )
    );
}
