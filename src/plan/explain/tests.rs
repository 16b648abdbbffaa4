//! The explanations `why` prints, on the example's workloads and policy
//! (`examples/`), as the operator's own planning sees them.

use std::collections::BTreeMap;

use super::*;
use crate::api::{
    APPLIED_AT_ANNOTATION, CONFIG_HASH_ANNOTATION, ROLLED_OUT_ANNOTATION,
    ROLLOUT_FAILED_ANNOTATION, ROLLOUT_FAILURE_ANNOTATION,
};
use crate::workload::{annotations_digest, deployment::Deployment, from_json};

const OPERATOR_NS: &str = "tracing-operator";

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(yaml).expect("example YAML parses")
}

/// The example's Deployment `name`, as the operator's watch projects it.
fn example(name: &str) -> Workload {
    let doc = documents(include_str!("../../../examples/workloads.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .expect("the example has this Deployment");
    from_json::<Deployment>(doc).expect("projects")
}

fn example_namespace(name: &str) -> NamespaceView {
    let doc = documents(include_str!("../../../examples/namespaces.yaml"))
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .expect("the example has this namespace");
    let mut labels: BTreeMap<String, String> =
        serde_json::from_value(doc["metadata"]["labels"].clone()).unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    NamespaceView {
        name: name.into(),
        labels,
    }
}

fn example_policy() -> PolicyView {
    let doc: serde_json::Value =
        serde_saphyr::from_str(include_str!("../../../examples/policy.yaml")).expect("parses");
    PolicyView {
        name: "caas-production".into(),
        spec: serde_json::from_value(doc["spec"].clone()).expect("the example spec reads"),
        created_unix: 1_750_000_000,
        deleting: false,
    }
}

fn policy(name: &str, priority: i32, created: i64, spec: serde_json::Value) -> PolicyView {
    let mut base = serde_json::json!({
        "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger.observability.svc:4317"}],
        "collector": {"enabled": false},
        "priority": priority,
    });
    if let (Some(b), Some(s)) = (base.as_object_mut(), spec.as_object()) {
        b.extend(s.clone());
    }
    PolicyView {
        name: name.into(),
        spec: serde_json::from_value(base).expect("spec reads"),
        created_unix: created,
        deleting: false,
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_760_000_000).unwrap()
}

struct Case {
    policies: Vec<PolicyView>,
    statuses: BTreeMap<String, TracingPolicyStatus>,
    namespace: Option<NamespaceView>,
    workload: Workload,
    manifest_env: BTreeMap<String, BTreeMap<String, String>>,
}

impl Case {
    fn new(policies: Vec<PolicyView>, namespace: &str, workload: Workload) -> Case {
        Case {
            policies,
            statuses: BTreeMap::new(),
            namespace: Some(example_namespace(namespace)),
            workload,
            manifest_env: BTreeMap::new(),
        }
    }

    fn explain(&self) -> Explanation {
        explain(&Input {
            operator_namespace: OPERATOR_NS,
            policies: &self.policies,
            statuses: &self.statuses,
            namespace: self.namespace.as_ref(),
            workload: &self.workload,
            manifest_env: &self.manifest_env,
            injection: Injection::Admission,
            now: now(),
        })
    }

    /// The workload as the operator leaves it after applying `policy`'s plan
    /// (admission injection), `applied_at` seconds before [`now`].
    fn applied(&mut self, applied_ago: i64, rolled_out: bool) {
        let plan = self.explain().plan.expect("a plan");
        let w = &mut self.workload;
        let owner = self.policies[0].name.clone();
        w.annotations.insert(POLICY_ANNOTATION.into(), owner);
        w.annotations
            .insert(CONFIG_HASH_ANNOTATION.into(), plan.config_hash.clone());
        let at = Timestamp::from_second(now().as_second() - applied_ago).unwrap();
        w.annotations
            .insert(APPLIED_AT_ANNOTATION.into(), rollout::format_applied_at(at));
        if rolled_out {
            w.annotations
                .insert(ROLLED_OUT_ANNOTATION.into(), plan.config_hash.clone());
        }
        let planned = injection::template_annotations(&plan);
        w.template.ours = annotations_digest(planned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        w.rollout.generation = 2;
        w.rollout.observed_generation = 2;
    }

    fn pods(&mut self, desired: i32, updated: i32, available: i32, old: i32) {
        let r = &mut self.workload.rollout;
        r.desired = desired;
        r.updated = updated;
        r.available = available;
        r.old = old;
    }
}

fn variable<'e>(e: &'e Explanation, name: &str) -> &'e Variable {
    e.variables
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{name} is planned: {:?}", e.variables))
}

fn attribute<'e>(e: &'e Explanation, key: &str) -> &'e Attribute {
    e.attributes
        .iter()
        .find(|a| a.key == key)
        .unwrap_or_else(|| panic!("{key} is planned: {:?}", e.attributes))
}

#[test]
fn the_gateway_is_traced_with_every_variable_sourced_and_its_own_service_name_kept() {
    let mut case = Case::new(vec![example_policy()], "caas-gateway", example("gateway"));
    case.manifest_env.insert(
        "gateway".into(),
        BTreeMap::from([("SERVICE_NAME".to_string(), "api-gateway".to_string())]),
    );
    case.pods(2, 2, 2, 0);
    case.applied(600, true);
    let e = case.explain();
    assert_eq!(e.verdict, Verdict::Traced, "{e:#?}");
    assert_eq!(e.verdict.exit_code(), 0);
    assert_eq!(e.summary, "traced by TracingPolicy caas-production");
    let owner = e.owner.as_ref().expect("an owner");
    assert_eq!(owner.policy, "caas-production");
    assert_eq!(owner.reason, "the only Enforce policy that selects it");
    assert_eq!(e.containers, ["gateway"]);

    let name = variable(&e, "OTEL_SERVICE_NAME");
    assert_eq!(name.value, "api-gateway");
    assert_eq!(
        name.source,
        "label app.kubernetes.io/name on the pod template"
    );
    let endpoint = variable(&e, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    assert_eq!(
        endpoint.value,
        "http://caas-production-collector.observability.svc:4318/v1/traces"
    );
    assert_eq!(
        endpoint.source,
        "the policy's collector caas-production-collector in namespace observability (spec.collector, Central)"
    );
    assert_eq!(
        variable(&e, "OTEL_TRACES_SAMPLER").value,
        "parentbased_always_on"
    );
    assert_eq!(
        variable(&e, "OTEL_TRACES_SAMPLER").source,
        "spec.sampling.tail: the collector decides, so the SDK records every trace"
    );
    assert_eq!(variable(&e, "OTEL_PROPAGATORS").source, "spec.propagators");
    let version = attribute(&e, "service.version");
    assert_eq!(version.value, "2.4.1");
    assert_eq!(
        version.source,
        "label app.kubernetes.io/version on the pod template"
    );
    assert_eq!(
        attribute(&e, "deployment.environment.name").source,
        "spec.service.environment"
    );
    assert_eq!(
        attribute(&e, "team").source,
        "spec.service.resourceAttributes"
    );
    let tenant = attribute(&e, "k8s.namespace.label.caas.io/tenant");
    assert_eq!(tenant.value, "caas-public");
    assert_eq!(
        tenant.source,
        "namespace label caas.io/tenant (spec.service.namespaceLabels)"
    );
    assert_eq!(attribute(&e, "k8s.deployment.name").value, "gateway");
    assert_eq!(attribute(&e, "k8s.container.name").value, "gateway");

    // The user's SERVICE_NAME wins; APP_VERSION comes from the policy's env template.
    let kept = variable(&e, "SERVICE_NAME");
    assert_eq!(kept.kept_in, ["gateway"]);
    assert_eq!(kept.source, "spec.env[0] \"{service.name}\"");
    assert_eq!(
        e.user_overrides,
        [UserOverride {
            container: "gateway".into(),
            variable: "SERVICE_NAME".into(),
            value: "api-gateway".into(),
            planned: "api-gateway".into(),
        }]
    );
    assert_eq!(variable(&e, "APP_VERSION").value, "2.4.1");
    assert!(variable(&e, "APP_VERSION").kept_in.is_empty());
    assert_eq!(e.rollout.as_ref().map(|r| r.state), Some("UpToDate"));
    assert!(wants_pod_check(&e));
}

#[test]
fn billing_in_legacy_is_not_selected_because_of_its_namespace_labels() {
    let case = Case::new(vec![example_policy()], "legacy", example("billing"));
    let e = case.explain();
    assert_eq!(e.verdict, Verdict::NotSelected);
    assert_eq!(e.verdict.exit_code(), 1);
    assert_eq!(
        e.summary,
        "not selected by any TracingPolicy (spec.selector.namespaces)"
    );
    let excluded = e.policies[0].excluded_by.as_ref().expect("excluded");
    assert_eq!(excluded.term, "spec.selector.namespaces");
    assert_eq!(
        excluded.message,
        "namespace legacy (labels: none) does not match spec.selector.namespaces (tracing.caas.io/enabled=true)"
    );
    assert!(e.variables.is_empty() && e.rollout.is_none());
}

#[test]
fn every_selector_term_that_leaves_a_workload_out_is_named() {
    let on =
        serde_json::json!({"namespaces": {"matchLabels": {"tracing.caas.io/enabled": "true"}}});
    let with = |extra: serde_json::Value| {
        let mut selector = on.clone();
        if let (Some(s), Some(e)) = (selector.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        policy("p", 0, 1, serde_json::json!({"selector": selector}))
    };
    let cases = [
        (
            with(serde_json::json!({"excludeNamespaces": ["caas-gateway"]})),
            "caas-gateway",
            "spec.selector.excludeNamespaces",
            "namespace caas-gateway is listed in spec.selector.excludeNamespaces",
        ),
        (
            with(serde_json::json!({"kinds": ["StatefulSet"]})),
            "caas-gateway",
            "spec.selector.kinds",
            "kind Deployment is not in spec.selector.kinds (StatefulSet)",
        ),
        (
            with(serde_json::json!({"workloads": {"matchLabels": {"tier": "edge"}}})),
            "caas-gateway",
            "spec.selector.workloads",
            "its labels (app.kubernetes.io/name=api-gateway, app.kubernetes.io/part-of=caas) do not match spec.selector.workloads (tier=edge)",
        ),
        (
            with(serde_json::json!({"containers": ["app", "web"]})),
            "caas-gateway",
            "spec.selector.containers",
            "none of its containers (gateway) is listed in spec.selector.containers (app, web)",
        ),
    ];
    for (p, ns, term, message) in cases {
        let case = Case::new(vec![p], ns, example("gateway"));
        let e = case.explain();
        assert_eq!(e.verdict, Verdict::NotSelected, "{term}: {e:#?}");
        let excluded = e.policies[0].excluded_by.as_ref().expect("excluded");
        assert_eq!((excluded.term, excluded.message.as_str()), (term, message));
    }
    // The operator's own namespace and the system namespaces, whatever the selector says.
    let everything = policy("all", 0, 1, serde_json::json!({}));
    let mut w = example("gateway");
    w.id = crate::plan::WorkloadId::new(OPERATOR_NS, w.id.kind, &w.id.name);
    let case = Case {
        namespace: Some(NamespaceView {
            name: OPERATOR_NS.into(),
            labels: BTreeMap::new(),
        }),
        ..Case::new(vec![everything], "caas-gateway", w)
    };
    let e = case.explain();
    assert_eq!(
        e.policies[0]
            .excluded_by
            .as_ref()
            .map(|x| x.message.as_str()),
        Some("namespace tracing-operator is the operator's own namespace, never instrumented")
    );
}

#[test]
fn the_owner_is_named_with_the_reason_it_wins() {
    let selector = serde_json::json!({"selector": {"namespaces": {"matchLabels": {"tracing.caas.io/enabled": "true"}}}});
    let high = policy("team", 10, 2_000, selector.clone());
    let low = policy("platform", 0, 1_000, selector.clone());
    let e = Case::new(vec![low.clone(), high], "caas-auth", example("auth")).explain();
    let owner = e.owner.as_ref().expect("owner");
    assert_eq!(owner.policy, "team");
    assert_eq!(
        owner.reason,
        "priority 10 is higher than TracingPolicy platform (0)"
    );
    let roles: Vec<(&str, &str)> = e
        .policies
        .iter()
        .map(|p| (p.name.as_str(), p.role))
        .collect();
    assert_eq!(roles, [("team", "owner"), ("platform", "beaten")]);
    assert_eq!(
        e.policies[1].note,
        "selects it, but TracingPolicy team wins (status Conflicted)"
    );

    let newer = policy("newer", 0, 5_000, selector.clone());
    let e = Case::new(vec![newer, low.clone()], "caas-auth", example("auth")).explain();
    let owner = e.owner.as_ref().expect("owner");
    assert_eq!(owner.policy, "platform");
    assert!(
        owner.reason.starts_with(
            "same priority 0 as TracingPolicy newer, and older (created 1970-01-01T00:16:40Z"
        ),
        "{}",
        owner.reason
    );

    // A DryRun policy never owns; it is explained as what it would do.
    let mut dry = policy("preview", 99, 1, selector);
    dry.spec.mode = Mode::DryRun;
    let e = Case::new(vec![dry], "caas-auth", example("auth")).explain();
    assert!(e.owner.is_none());
    assert_eq!(e.verdict, Verdict::NotYetTraced);
    assert_eq!(e.rollout.as_ref().map(|r| r.state), Some("DryRun"));
    assert_eq!(variable(&e, "OTEL_SERVICE_NAME").value, "auth");
    assert_eq!(
        variable(&e, "OTEL_SERVICE_NAME").source,
        "annotation resource.opentelemetry.io/service.name on the pod template"
    );
}

#[test]
fn rollout_states_come_from_the_workload_and_the_owners_status() {
    let progressive = |max: i32, on_failure: &str| {
        let mut p = example_policy();
        p.spec.rollout = serde_json::from_value(serde_json::json!({
            "strategy": "Progressive", "maxConcurrent": max,
            "progressDeadline": "10m", "onFailure": on_failure,
        }))
        .unwrap();
        p
    };
    let state = |case: &Case| {
        let e = case.explain();
        let r = e.rollout.clone().expect("a rollout");
        (e.verdict, r.state, r.message)
    };

    // Applied two minutes ago, one of two pods on the new template.
    let mut case = Case::new(
        vec![progressive(5, "Rollback")],
        "caas-gateway",
        example("gateway"),
    );
    case.pods(2, 1, 1, 1);
    case.applied(120, false);
    let (verdict, s, message) = state(&case);
    assert_eq!((verdict, s), (Verdict::NotYetTraced, "RollingOut"));
    assert!(
        message.starts_with("rolling since 2025-10-09T08:51:20Z (fails at 2025-10-09T09:01:20Z"),
        "{message}"
    );

    // Past its deadline: kept (Pause) or rolled back (Rollback).
    let mut case = Case::new(
        vec![progressive(5, "Pause")],
        "caas-gateway",
        example("gateway"),
    );
    case.pods(2, 2, 0, 0);
    case.applied(700, false);
    let (verdict, s, message) = state(&case);
    assert_eq!((verdict, s), (Verdict::NotYetTraced, "Failed"));
    assert!(message.starts_with("failed: PodsNotReady: "), "{message}");
    let mut case = Case::new(
        vec![progressive(5, "Rollback")],
        "caas-gateway",
        example("gateway"),
    );
    case.pods(2, 2, 0, 0);
    case.applied(700, false);
    assert_eq!(state(&case).1, "RollingBack");

    // Rolled back earlier: the config is not tried again.
    let mut case = Case::new(
        vec![progressive(5, "Rollback")],
        "caas-gateway",
        example("gateway"),
    );
    case.pods(2, 2, 2, 0);
    let hash = case.explain().plan.expect("plan").config_hash;
    let a = &mut case.workload.annotations;
    a.insert(POLICY_ANNOTATION.into(), "caas-production".into());
    a.insert(ROLLOUT_FAILED_ANNOTATION.into(), hash);
    a.insert(
        ROLLOUT_FAILURE_ANNOTATION.into(),
        "PodsNotReady: 0/2 replicas available".into(),
    );
    let (verdict, s, message) = state(&case);
    assert_eq!((verdict, s), (Verdict::NotYetTraced, "RolledBack"));
    assert!(
        message.starts_with("rolled back: PodsNotReady: 0/2 replicas available"),
        "{message}"
    );

    // Paused by its owner before the operator started.
    let mut case = Case::new(
        vec![progressive(5, "Rollback")],
        "caas-gateway",
        example("gateway"),
    );
    case.pods(2, 2, 2, 0);
    case.workload.rollout.paused = true;
    assert_eq!(state(&case).1, "PausedByOwner");

    // Not applied while every slot is taken.
    let mut case = Case::new(
        vec![progressive(1, "Rollback")],
        "caas-gateway",
        example("gateway"),
    );
    case.pods(2, 2, 2, 0);
    let mut status = TracingPolicyStatus::default();
    status.workloads.rolling_out = 1;
    status.workloads.waiting = 3;
    case.statuses.insert("caas-production".into(), status);
    let (verdict, s, message) = state(&case);
    assert_eq!((verdict, s), (Verdict::NotYetTraced, "WaitingForSlot"));
    assert_eq!(
        message,
        "waiting for a slot: 1 of maxConcurrent 1 rolling out, 3 waiting"
    );
}

#[test]
fn a_pod_without_the_planned_variables_is_not_traced() {
    let mut case = Case::new(vec![example_policy()], "caas-gateway", example("gateway"));
    case.pods(2, 2, 2, 0);
    case.applied(600, true);
    let e = case.explain();
    assert!(wants_pod_check(&e));
    let ok = with_pod_check(e.clone(), Some(("gateway-1".into(), "ok".into())));
    assert_eq!(ok.verdict, Verdict::Traced);
    assert_eq!(
        ok.pod.as_ref().map(|p| p.message.as_str()),
        Some("pod gateway-1 carries every planned variable")
    );
    let missed = with_pod_check(
        e,
        Some((
            "gateway-1".into(),
            "missing OTEL_SERVICE_NAME in pod gateway-1 (container gateway)".into(),
        )),
    );
    assert_eq!(missed.verdict, Verdict::NotYetTraced);
    assert_eq!(missed.verdict.exit_code(), 2);
    assert!(
        missed
            .summary
            .ends_with("but its pods lack the variables (InjectionNotApplied)"),
        "{}",
        missed.summary
    );
}

#[test]
fn the_json_form_names_the_facts() {
    let case = Case::new(vec![example_policy()], "legacy", example("billing"));
    let json = serde_json::to_value(case.explain()).unwrap();
    assert_eq!(json["verdict"], "NotSelected");
    assert_eq!(
        json["policies"][0]["excludedBy"]["term"],
        "spec.selector.namespaces"
    );
    assert!(json.get("plan").is_none());
}

/// The example's gateway with the one label the example policy maps to Node.js,
/// and `NODE_OPTIONS` of its own.
#[test]
fn a_labelled_gateway_shows_its_agent_with_the_manifests_own_flags_kept_first() {
    let mut doc = documents(include_str!("../../../examples/workloads.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "gateway")
        .expect("the example has the gateway");
    doc["metadata"]["labels"]["caas.io/runtime"] = "nodejs".into();
    doc["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .expect("the gateway has env")
        .push(serde_json::json!({"name": "NODE_OPTIONS", "value": "--max-old-space-size=512"}));
    let gateway = from_json::<Deployment>(doc).expect("projects");
    let mut case = Case::new(vec![example_policy()], "caas-gateway", gateway);
    case.manifest_env.insert(
        "gateway".into(),
        BTreeMap::from([(
            "NODE_OPTIONS".to_string(),
            "--max-old-space-size=512".to_string(),
        )]),
    );
    let e = case.explain();
    let agent = e.agent.as_ref().expect("an agent");
    assert_eq!(agent.language, "nodejs");
    assert_eq!(
        agent.source,
        "spec.instrumentation.nodejs.selector matches the workload's labels"
    );
    assert_eq!(agent.containers, ["gateway"]);
    assert!(
        agent.image.contains("autoinstrumentation-nodejs:"),
        "{}",
        agent.image
    );
    let options: Vec<(&str, &str)> = agent
        .variables
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(
        options,
        [(
            "NODE_OPTIONS",
            "--max-old-space-size=512 --require /otel-auto-instrumentation/autoinstrumentation.js"
        )]
    );
    assert!(agent.skipped.is_empty());

    // Without the label: no agent, and nothing about one in the explanation.
    let plain = Case::new(vec![example_policy()], "caas-gateway", example("gateway")).explain();
    assert_eq!(plain.agent, None);
}
