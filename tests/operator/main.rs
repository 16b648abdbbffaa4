//! The reconcile core against the real testbed: what a platform team checks
//! after applying a TracingPolicy.

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod validation;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use harness::*;

const OTEL_VARS: [&str; 10] = [
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_PROPAGATORS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

fn spec_of(d: &Deployment) -> serde_json::Value {
    serde_json::to_value(&d.spec).expect("spec serializes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_workloads_get_the_planned_env_and_everything_is_removed_on_delete() {
    shared_operator();
    let client = support::client().await;
    clear_policies(&client, &["lifecycle"]).await;
    let test = "lifecycle";
    let traced = namespace(&client, test, &[("tenant", "blue")]).await;
    let ignored = support::fresh_namespace(&client, "lifecycle-ignored", &[]).await;

    let gateway = deployment(
        "gateway",
        &[("app.kubernetes.io/name", "api-gateway")],
        &[
            (
                "gateway",
                "registry.local:5000/caas/gateway:2.4.1",
                &[("NODE_ENV", "production"), ("SERVICE_NAME", "mine")],
            ),
            (
                "worker",
                "registry.local:5000/caas/worker@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                &[],
            ),
            ("istio-proxy", "istio/proxyv2:1.22.0", &[]),
        ],
    );
    create_deployment(&client, &traced, &gateway).await;
    let legacy = deployment("billing", &[], &[("billing", "billing:0.3.0", &[])]);
    create_deployment(&client, &ignored, &legacy).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &traced);
    let before = spec_of(&deployments.get("gateway").await.expect("gateway exists"));

    let name = "lifecycle";
    apply_policy(
        &client,
        &policy(name, test, json!({
            // Pod-template injection writes the image tag only when asked to.
            "service": {"environment": "production", "resourceAttributes": {"team": "platform"},
                        "attributesFromNamespaceLabels": {"tenant.id": "tenant"},
                        "versionFromImageTag": true},
            "sampling": {"ratio": 0.1, "services": [{"name": "nothing-matches", "ratio": 1.0}]},
            "env": [{"name": "SERVICE_NAME", "value": "{service.name}"}, {"name": "APP_VERSION", "value": "{service.version}"}]
        })),
    )
    .await;

    // `kubectl wait` is what users and CD pipelines run.
    let out = support::kubectl()
        .args([
            "wait",
            "--for=condition=Ready",
            &format!("tp/{name}"),
            "--timeout=90s",
        ])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let d = deployments.get("gateway").await.expect("gateway exists");
    let env = env_of(&d, "gateway");
    assert_eq!(env["OTEL_SERVICE_NAME"], "api-gateway");
    assert_eq!(
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"],
        "http://jaeger.observability.svc:4317"
    );
    assert_eq!(env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"], "grpc");
    assert_eq!(env["OTEL_TRACES_EXPORTER"], "otlp");
    assert_eq!(env["OTEL_PROPAGATORS"], "tracecontext,baggage");
    assert_eq!(env["OTEL_TRACES_SAMPLER"], "parentbased_traceidratio");
    assert_eq!(env["OTEL_TRACES_SAMPLER_ARG"], "0.1");
    assert_eq!(env["APP_VERSION"], "2.4.1");
    // The user's own values are kept.
    assert_eq!(env["NODE_ENV"], "production");
    assert_eq!(env["SERVICE_NAME"], "mine");
    let attrs = &env["OTEL_RESOURCE_ATTRIBUTES"];
    for expected in [
        "service.version=2.4.1",
        "deployment.environment.name=production",
        &format!("k8s.namespace.name={traced}"),
        "k8s.deployment.name=gateway",
        "k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME)",
        "k8s.node.name=$(OTEL_RESOURCE_ATTRIBUTES_NODE_NAME)",
        "tenant.id=blue",
        "team=platform",
    ] {
        assert!(
            attrs.split(',').any(|a| a == expected),
            "{expected} missing from OTEL_RESOURCE_ATTRIBUTES={attrs}"
        );
    }
    assert_eq!(
        env["OTEL_RESOURCE_ATTRIBUTES_POD_NAME"],
        "<fieldRef:metadata.name>"
    );
    // The digest-only image has no version; the proxy is left alone.
    let worker = env_of(&d, "worker");
    assert_eq!(worker["OTEL_SERVICE_NAME"], "api-gateway");
    assert!(!worker["OTEL_RESOURCE_ATTRIBUTES"].contains("service.version="));
    assert!(
        env_of(&d, "istio-proxy").is_empty(),
        "istio-proxy must not be instrumented"
    );
    let annotations = d.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("tracing.caas.io/policy")
            .map(String::as_str),
        Some(name)
    );
    assert!(annotations.contains_key("tracing.caas.io/config-hash"));

    // The unselected namespace is untouched.
    let billing = Api::<Deployment>::namespaced(client.clone(), &ignored)
        .get("billing")
        .await
        .expect("billing");
    assert!(env_of(&billing, "billing").is_empty());
    assert!(
        billing
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("tracing.caas.io/"))
    );

    // Status reports the user's override and the override that matched nothing.
    let p = wait_policy(&client, name, "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let status = p.status.expect("status");
    assert_eq!(status.workloads.selected, 1);
    assert_eq!(status.workloads.summary, "1/1");
    assert!(
        status
            .user_overrides
            .iter()
            .any(|o| o.variable == "SERVICE_NAME" && o.container == "gateway")
    );

    // One Event on the policy per batch of writes names the workloads it changed
    // (an Event per workload would cost as many writes as the changes).
    let events = support::kubectl()
        .args([
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!("involvedObject.name={name},reason=TracingApplied"),
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .output()
        .expect("kubectl runs");
    let notes = String::from_utf8_lossy(&events.stdout);
    assert!(
        notes.contains(&format!("Deployment {traced}/gateway")),
        "TracingApplied names the workload: {notes}"
    );

    // Deleting the policy removes exactly what it added.
    delete_policy(&client, name).await;
    let after = deployments.get("gateway").await.expect("gateway exists");
    assert_eq!(
        spec_of(&after),
        before,
        "the workload's spec must be byte-identical to before the policy"
    );
    assert!(
        after
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("tracing.caas.io/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_the_policy_and_to_namespaces_are_followed() {
    shared_operator();
    let client = support::client().await;
    clear_policies(&client, &["follow"]).await;
    let test = "follow";
    let a = namespace(&client, test, &[]).await;
    let b = namespace(&client, test, &[]).await;
    for ns in [&a, &b] {
        create_deployment(
            &client,
            ns,
            &deployment("svc", &[], &[("app", "svc:1.0.0", &[])]),
        )
        .await;
    }
    let name = "follow";
    apply_policy(
        &client,
        &policy(name, test, json!({"sampling": {"ratio": 0.5}})),
    )
    .await;
    for ns in [&a, &b] {
        wait_deployment(&client, ns, "svc", "sampler arg 0.5", |d| {
            env_of(d, "app")
                .get("OTEL_TRACES_SAMPLER_ARG")
                .map(String::as_str)
                == Some("0.5")
        })
        .await;
    }

    // Changing the ratio reaches every workload.
    apply_policy(
        &client,
        &policy(name, test, json!({"sampling": {"ratio": 0.25}})),
    )
    .await;
    for ns in [&a, &b] {
        wait_deployment(&client, ns, "svc", "sampler arg 0.25", |d| {
            env_of(d, "app")
                .get("OTEL_TRACES_SAMPLER_ARG")
                .map(String::as_str)
                == Some("0.25")
        })
        .await;
    }

    // Someone deletes an injected variable by hand: it comes back.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &a);
    let d = deployments.get("svc").await.expect("svc");
    let idx = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].env.as_ref())
        .and_then(|env| env.iter().position(|e| e.name == "OTEL_PROPAGATORS"))
        .expect("OTEL_PROPAGATORS injected");
    let patch =
        json!([{"op": "remove", "path": format!("/spec/template/spec/containers/0/env/{idx}")}]);
    deployments
        .patch(
            "svc",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(patch).expect("json patch")),
        )
        .await
        .expect("manual edit");
    wait_deployment(&client, &a, "svc", "OTEL_PROPAGATORS re-added", |d| {
        env_of(d, "app").contains_key("OTEL_PROPAGATORS")
    })
    .await;

    // Removing the label from namespace b cleans b and leaves a alone.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let (k, _) = test_label(test);
    let unlabel = json!({"metadata": {"labels": {k: null}}});
    namespaces
        .patch(&b, &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .expect("unlabel namespace");
    wait_deployment(&client, &b, "svc", "tracing removed", |d| {
        env_of(d, "app").is_empty()
            && d.metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .keys()
                .all(|k| !k.starts_with("tracing.caas.io/"))
    })
    .await;
    let still = deployments.get("svc").await.expect("svc in a");
    assert!(
        OTEL_VARS
            .iter()
            .all(|v| env_of(&still, "app").contains_key(*v))
    );
    wait_policy(&client, name, "one workload selected", |p| {
        p.status.as_ref().is_some_and(|s| s.workloads.selected == 1)
    })
    .await;
    delete_policy(&client, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_policies_resolve_by_priority_and_the_loser_is_conflicted() {
    shared_operator();
    let client = support::client().await;
    clear_policies(&client, &["overlap-high", "overlap-low"]).await;
    let test = "overlap";
    let ns = namespace(&client, test, &[]).await;
    create_deployment(
        &client,
        &ns,
        &deployment("api", &[], &[("app", "api:2.0", &[])]),
    )
    .await;

    apply_policy(
        &client,
        &policy(
            "overlap-low",
            test,
            json!({"priority": 1, "sampling": {"ratio": 0.2}}),
        ),
    )
    .await;
    wait_deployment(&client, &ns, "api", "low-priority settings", |d| {
        env_of(d, "app")
            .get("OTEL_TRACES_SAMPLER_ARG")
            .map(String::as_str)
            == Some("0.2")
    })
    .await;
    apply_policy(
        &client,
        &policy(
            "overlap-high",
            test,
            json!({"priority": 10, "sampling": {"ratio": 0.9}}),
        ),
    )
    .await;
    let d = wait_deployment(&client, &ns, "api", "high-priority settings", |d| {
        env_of(d, "app")
            .get("OTEL_TRACES_SAMPLER_ARG")
            .map(String::as_str)
            == Some("0.9")
    })
    .await;
    assert_eq!(
        d.metadata
            .annotations
            .unwrap_or_default()
            .get("tracing.caas.io/policy")
            .map(String::as_str),
        Some("overlap-high")
    );
    let low = wait_policy(&client, "overlap-low", "Conflicted", |p| {
        condition(p, "Conflicted").as_deref() == Some("True")
    })
    .await;
    assert_eq!(low.status.as_ref().map(|s| s.workloads.conflicted), Some(1));
    let high = wait_policy(&client, "overlap-high", "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(condition(&high, "Conflicted").as_deref(), Some("False"));

    // When the winner goes, the other policy takes the workload over.
    delete_policy(&client, "overlap-high").await;
    wait_deployment(&client, &ns, "api", "low-priority settings again", |d| {
        env_of(d, "app")
            .get("OTEL_TRACES_SAMPLER_ARG")
            .map(String::as_str)
            == Some("0.2")
    })
    .await;
    delete_policy(&client, "overlap-low").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_the_plan_and_writes_nothing() {
    shared_operator();
    let client = support::client().await;
    clear_policies(&client, &["dryrun"]).await;
    let test = "dryrun";
    let ns = namespace(&client, test, &[]).await;
    create_deployment(
        &client,
        &ns,
        &deployment("web", &[], &[("web", "web:1.0", &[])]),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let before = deployments.get("web").await.expect("web");

    apply_policy(&client, &policy("dryrun", test, json!({"mode": "DryRun"}))).await;
    let p = wait_policy(&client, "dryrun", "plan reported", |p| {
        p.status.as_ref().is_some_and(|s| !s.plan.is_empty())
    })
    .await;
    let plan = &p.status.expect("status").plan;
    assert_eq!(plan[0].name, "web");
    assert_eq!(plan[0].action, "Apply");
    assert!(plan[0].containers[0].contains("OTEL_SERVICE_NAME=web"));
    let after = deployments.get("web").await.expect("web");
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert!(env_of(&after, "web").is_empty());
    delete_policy(&client, "dryrun").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_matches_no_namespace_degrades_and_touches_nothing() {
    shared_operator();
    let client = support::client().await;
    clear_policies(&client, &["nomatch"]).await;
    apply_policy(
        &client,
        &policy("nomatch", "nomatch-no-such-namespace", json!({})),
    )
    .await;
    let p = wait_policy(&client, "nomatch", "Degraded", |p| {
        condition(p, "Degraded").as_deref() == Some("True")
    })
    .await;
    let degraded = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .expect("Degraded");
    assert_eq!(degraded.reason, "NoNamespaceMatched");
    assert!(degraded.message.contains("spec.selector"));
    delete_policy(&client, "nomatch").await;
}
