//! The operator's own spans, as an on-call engineer reads them in Jaeger: the
//! real binary, started with only `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a
//! real Jaeger v2 (OTLP http/protobuf), reconciles a policy on the testbed; one
//! of its Deployments is refused by a ValidatingAdmissionPolicy. Its batch
//! span processor is told to wait 10 minutes between exports, so nothing reaches
//! Jaeger before SIGTERM; after it (the operator flushes on shutdown) Jaeger's
//! query API must hold, under the default service name `tracing-operator`:
//! - `reconcile` spans carrying the policy name;
//! - `apply` spans carrying namespace, kind and name of each Deployment, children
//!   of a `reconcile` span of the policy;
//! - for the refused Deployment, `apply` spans with error status whose
//!   description is the API server's denial.
//!
//! Other operators on the same testbed reconcile every policy too. Their spans
//! never reach this test's Jaeger, but one of them could apply a Deployment
//! before this test's operator does, leaving it nothing to apply. So this test's
//! operator acts as a user of its own (impersonation in its kubeconfig), and the
//! admission policy lets only that user add the settings to Deployment `web`.

mod support;

#[path = "operator/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use support::jaeger::{Jaeger, JaegerSpan};
use support::process::OperatorProcess;

/// The test's label key and value prefix (see `harness::test_label`).
const CASE: &str = "self-tracing";
/// The service name the operator reports when the environment names none.
const SERVICE: &str = "tracing-operator";
/// Label on the Deployment whose every traced update the admission policy refuses.
const DENY_LABEL: &str = "deny-tracing";
/// Label on the Deployment only this test's operator may add the settings to;
/// its value is that operator's user.
const APPLIER_LABEL: &str = "tracing-test.caas.io/applier";
/// In the admission policy's message, so the span's error can be traced to it.
const DENIAL: &str = "OpenTelemetry settings are refused for this Deployment";

// ---------------------------------------------------------------- the operator

/// The test cluster's kubeconfig, acting as `user` in group system:masters:
/// requests are then admitted as that user's.
fn impersonating_kubeconfig(path: &Path, user: &str) -> anyhow::Result<()> {
    let source = support::kubeconfig();
    let mut config: Value = serde_saphyr::from_str(&std::fs::read_to_string(&source)?)?;
    let users = config["users"].as_array_mut().context("kubeconfig users")?;
    ensure!(!users.is_empty(), "{} names no user", source.display());
    for u in users {
        u["user"]["as"] = json!(user);
        u["user"]["as-groups"] = json!(["system:masters"]);
    }
    std::fs::write(path, serde_saphyr::to_string(&config)?)?;
    Ok(())
}

// ---------------------------------------------------------------- the cluster

/// Refuses, in namespace `ns` only, updates of Deployments that carry
/// `OTEL_SERVICE_NAME` when the Deployment is labelled `deny-tracing=true`, or
/// when it is labelled with an applier other than the requesting user and the
/// update changes its containers (the Deployment controller's own updates pass).
async fn install_admission_policy(client: &Client, name: &str, ns: &str) {
    let traced = "object.spec.template.spec.containers.exists(c, has(c.env) && \
                  c.env.exists(e, e.name == 'OTEL_SERVICE_NAME'))";
    let label = |key: &str| {
        format!(
            "(has(object.metadata.labels) && '{key}' in object.metadata.labels ? object.metadata.labels['{key}'] : '')"
        )
    };
    let vap: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "resourceRules": [{
                    "apiGroups": ["apps"],
                    "apiVersions": ["v1"],
                    "operations": ["UPDATE"],
                    "resources": ["deployments"]
                }]
            },
            "variables": [
                {"name": "traced", "expression": traced},
                {"name": "denied", "expression": format!("{} == 'true'", label(DENY_LABEL))},
                {"name": "applier", "expression": label(APPLIER_LABEL)}
            ],
            "validations": [
                {
                    "expression": "!(variables.denied && variables.traced)",
                    "message": format!("{DENIAL} (label {DENY_LABEL}=true)")
                },
                {
                    "expression": "variables.applier == '' || !variables.traced \
                        || request.userInfo.username == variables.applier \
                        || oldObject.spec.template.spec.containers == object.spec.template.spec.containers",
                    "message": format!("only the user in label {APPLIER_LABEL} may add OpenTelemetry settings")
                }
            ]
        }
    }))
    .expect("admission policy manifest");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
            }
        }
    }))
    .expect("admission policy binding manifest");
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &vap)
        .await
        .expect("ValidatingAdmissionPolicy created");
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("ValidatingAdmissionPolicyBinding created");
}

/// A dry-run server-side apply adding `OTEL_SERVICE_NAME` to container `app`:
/// `Err` with the API server's message when admission refuses it.
async fn try_trace(client: &Client, ns: &str, name: &str) -> Result<(), String> {
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "OTEL_SERVICE_NAME", "value": "probe"}]}
        ]}}}
    });
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("self-tracing-probe").dry_run(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_reconcile_and_apply_spans_arrive_in_jaeger() -> anyhow::Result<()> {
    let client = support::client().await;
    harness::install_crd(&client).await;
    let run = support::suffix();
    let scratch = support::Scratch::new("self-tracing")?;
    let dir = scratch.path();
    // Jaeger's start filter has a resolution of whole seconds or coarser.
    let start_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros()
        - 60_000_000;
    let jaeger = Jaeger::start(dir)?;

    // Declared before the operator, so that the operator is stopped first.
    let mut cleanup = support::Cleanup::default();
    let operator_ns = support::fresh_namespace(&client, "self-tracing-operator", &[]).await;
    cleanup.namespaces.push(operator_ns.clone());
    let ns = harness::namespace(&client, CASE, &[]).await;
    cleanup.namespaces.push(ns.clone());
    let operator_user = format!("self-tracing-operator-{run}");
    let policy_name = format!("self-tracing-{run}");

    let web = harness::deployment(
        "web",
        &[(APPLIER_LABEL, operator_user.as_str())],
        &[("app", "example.com/web:1.2.3", &[])],
    );
    let denied = harness::deployment(
        "denied",
        &[(DENY_LABEL, "true")],
        &[("app", "example.com/denied:1.0.0", &[])],
    );
    harness::create_deployment(&client, &ns, &web).await;
    harness::create_deployment(&client, &ns, &denied).await;

    let admission = format!("self-tracing-{run}");
    for kind in [
        "validatingadmissionpolicybinding",
        "validatingadmissionpolicy",
    ] {
        let mut delete = support::kubectl();
        delete.args(["delete", kind, &admission, "--ignore-not-found"]);
        cleanup.commands.push(delete);
    }
    install_admission_policy(&client, &admission, &ns).await;
    // The API server loads admission policies asynchronously: wait until both
    // rules refuse this (admin) client before any operator gets a chance.
    support::wait_until(
        "the admission policy refuses tracing web and denied",
        Duration::from_secs(60),
        || async {
            let denied = try_trace(&client, &ns, "denied").await.err()?;
            let web = try_trace(&client, &ns, "web").await.err()?;
            (denied.contains(DENIAL) && web.contains(APPLIER_LABEL)).then_some(())
        },
    )
    .await;

    let kubeconfig = dir.join("operator-kubeconfig");
    impersonating_kubeconfig(&kubeconfig, &operator_user)?;
    let endpoint = format!("http://127.0.0.1:{}", jaeger.otlp_http);
    let resource = format!("selftest.run={run}");
    let mut operator = OperatorProcess::start(
        "operator",
        dir,
        &kubeconfig,
        // Pod-template injection: the refused write the test provokes is an env entry.
        &[
            &format!("--namespace={operator_ns}"),
            "--injection=pod-template",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // No service.name: the default applies.
            ("OTEL_RESOURCE_ATTRIBUTES", resource.as_str()),
            // Only the shutdown flush exports (milliseconds).
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );

    cleanup.policies.push(policy_name.clone());
    harness::apply_policy(
        &client,
        &harness::policy(
            &policy_name,
            CASE,
            json!({"service": {"environment": "test"}}),
        ),
    )
    .await;
    harness::wait_deployment(
        &client,
        &ns,
        "web",
        "the operator set OTEL_SERVICE_NAME",
        harness::traced,
    )
    .await;
    support::wait_until(
        "the operator logs that the apply of denied was rejected",
        Duration::from_secs(90),
        || {
            let log = operator.log();
            let rejected = log
                .lines()
                .any(|l| l.contains("apply rejected") && l.contains(&format!("{ns}/denied")));
            async move { rejected.then_some(()) }
        },
    )
    .await;
    assert!(
        operator
            .log()
            .contains("exporting the operator's spans over OTLP"),
        "the operator did not log that it exports spans"
    );

    // Deleted while this operator runs, so that its finalizer completes.
    harness::delete_policy(&client, &policy_name).await;
    let early = jaeger.services()?;
    assert!(
        !early.iter().any(|s| s == SERVICE),
        "spans of {SERVICE} arrived before SIGTERM despite OTEL_BSP_SCHEDULE_DELAY: {early:?}"
    );
    let exit = operator.sigterm(Duration::from_secs(60)).await;
    assert!(
        exit.success(),
        "the operator exited with {exit} after SIGTERM"
    );

    // Jaeger batches before storing: wait until the spans of interest are there
    // and their number stops changing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut spans = jaeger.spans(SERVICE, start_us)?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = jaeger.spans(SERVICE, start_us)?;
        let stable = again.len() == spans.len();
        spans = again;
        let denied_error = spans
            .iter()
            .any(|s| s.operation == "apply" && s.tag("name") == Some("denied") && s.is_error());
        if (stable && denied_error) || Instant::now() > deadline {
            break;
        }
    }

    let reconciles: Vec<&JaegerSpan> = spans
        .iter()
        .filter(|s| s.operation == "reconcile" && s.tag("policy") == Some(policy_name.as_str()))
        .collect();
    let applies = |name: &str| -> Vec<&JaegerSpan> {
        spans
            .iter()
            .filter(|s| {
                s.operation == "apply"
                    && s.tag("namespace") == Some(ns.as_str())
                    && s.tag("name") == Some(name)
            })
            .collect()
    };
    let (web_applies, denied_applies) = (applies("web"), applies("denied"));
    let mut by_operation: BTreeMap<&str, usize> = BTreeMap::new();
    for span in &spans {
        *by_operation.entry(span.operation.as_str()).or_default() += 1;
    }
    println!(
        "Jaeger holds {} spans of service {SERVICE} ({by_operation:?}): {} reconcile of policy \
         {policy_name}, apply {} on {ns}/web, {} on {ns}/denied ({} with error status)",
        spans.len(),
        reconciles.len(),
        web_applies.len(),
        denied_applies.len(),
        denied_applies.iter().filter(|s| s.is_error()).count(),
    );
    if let Some(span) = denied_applies.first() {
        println!("an apply span of {ns}/denied: {span:#?}");
    }

    // Every span comes from this process (this Jaeger is this test's), under
    // the default service name, with the resource attributes of the environment.
    for span in &spans {
        assert_eq!(span.service, SERVICE, "span {span:?}");
        assert_eq!(
            span.process_tags.get("selftest.run"),
            Some(&run),
            "resource attributes of span {}: {:?}",
            span.span_id,
            span.process_tags
        );
    }
    assert!(
        !reconciles.is_empty(),
        "no reconcile span carries policy={policy_name}"
    );
    let is_reconcile_of_policy = |s: &JaegerSpan| {
        reconciles
            .iter()
            .any(|r| r.trace_id == s.trace_id && s.parents.contains(&r.span_id))
    };
    assert!(
        !web_applies.is_empty(),
        "no apply span carries namespace={ns}, name=web"
    );
    for span in web_applies.iter().chain(&denied_applies) {
        assert_eq!(
            span.tag("kind"),
            Some("Deployment"),
            "kind of apply span {}",
            span.span_id
        );
        assert!(
            is_reconcile_of_policy(span),
            "apply span {} of {} is not a child of a reconcile span of {policy_name}",
            span.span_id,
            span.tag("name").unwrap_or_default()
        );
    }
    // The operator may add web's settings (and remove them when the policy is
    // deleted): every apply on web is admitted.
    for span in &web_applies {
        assert!(
            !span.is_error(),
            "apply of web recorded an error: {span:#?}"
        );
    }
    assert!(
        !denied_applies.is_empty(),
        "no apply span carries namespace={ns}, name=denied"
    );
    for span in &denied_applies {
        assert!(
            span.is_error(),
            "the rejected apply of denied has no error status: {span:#?}"
        );
        let description = span.tag("otel.status_description").unwrap_or_default();
        assert!(
            description.contains(DENIAL) && description.contains(&admission),
            "the error of the apply of denied does not name the denial: {description:?}"
        );
    }

    drop(jaeger);
    drop(cleanup);
    Ok(())
}
