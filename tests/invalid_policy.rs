//! One TracingPolicy the operator cannot read (stored under a looser schema, as
//! after a CRD downgrade) neither stops the others nor blocks its own deletion.
//!
//! Its own test binary: it loosens the CRD for a moment, which other tests must
//! not see.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use tracing_operator::api::TracingPolicy;

use harness::*;

/// Puts the generated CRD back, also when an assertion fails.
struct RestoreCrd;

impl Drop for RestoreCrd {
    fn drop(&mut self) {
        let crd = support::repo().join("crds").join("tracingpolicy.yaml");
        let _ = support::kubectl()
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "tracing-operator-tests",
                "-f",
            ])
            .arg(crd)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_policy_is_reported_skipped_and_still_deletable() {
    shared_operator();
    let client = support::client().await;
    clear_policies(&client, &["guard-good", "guard-bad"]).await;
    let good_ns = namespace(&client, "guard-good", &[]).await;
    let bad_ns = namespace(&client, "guard-bad", &[]).await;
    create_deployment(
        &client,
        &good_ns,
        &deployment("web", &[], &[("app", "registry.local/web:1.0", &[])]),
    )
    .await;
    create_deployment(
        &client,
        &bad_ns,
        &deployment("api", &[], &[("app", "registry.local/api:1.0", &[])]),
    )
    .await;

    apply_policy(
        &client,
        &policy(
            "guard-good",
            "guard-good",
            json!({"sampling": {"ratio": 0.5}}),
        ),
    )
    .await;
    apply_policy(&client, &policy("guard-bad", "guard-bad", json!({}))).await;
    for ns in [&good_ns, &bad_ns] {
        let name = if ns == &good_ns { "web" } else { "api" };
        wait_deployment(&client, ns, name, "traced", |d| {
            env_of(d, "app").contains_key("OTEL_SERVICE_NAME")
        })
        .await;
    }

    // Loosen the schema (no enum on spec.mode) and store a mode this operator cannot read.
    let restore = RestoreCrd;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let loosen = json!([{"op": "remove",
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/mode/enum"}]);
    crds.patch(
        "tracingpolicies.tracing.caas.io",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(loosen).expect("json patch")),
    )
    .await
    .expect("schema loosened");
    let dynamic: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<TracingPolicy>(&()));
    support::wait_until(
        "the loose schema is served",
        Duration::from_secs(30),
        || {
            let dynamic = dynamic.clone();
            async move {
                dynamic
                    .patch(
                        "guard-bad",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"mode": "Audit"}})),
                    )
                    .await
                    .ok()
            }
        },
    )
    .await;
    drop(restore);

    // The unreadable policy is reported on itself...
    support::wait_until(
        "an InvalidSpec Event on guard-bad",
        Duration::from_secs(60),
        || async {
            let out = support::kubectl_ok(&[
                "get",
                "events",
                "-A",
                "--field-selector",
                "involvedObject.name=guard-bad",
                "-o",
                "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
            ]);
            out.lines()
                .any(|l| l.starts_with("InvalidSpec:") && l.contains("Audit"))
                .then_some(())
        },
    )
    .await;
    // ...and the others are still reconciled: a change to guard-good arrives.
    apply_policy(
        &client,
        &policy(
            "guard-good",
            "guard-good",
            json!({"sampling": {"ratio": 0.25}}),
        ),
    )
    .await;
    wait_deployment(&client, &good_ns, "web", "the new ratio", |d| {
        env_of(d, "app")
            .get("OTEL_TRACES_SAMPLER_ARG")
            .map(String::as_str)
            == Some("0.25")
    })
    .await;

    // Deleting the unreadable policy completes and removes what it had added.
    delete_policy(&client, "guard-bad").await;
    let api: Deployment = Api::namespaced(client.clone(), &bad_ns)
        .get("api")
        .await
        .expect("api");
    assert!(
        env_of(&api, "app").is_empty(),
        "its settings are removed: {:?}",
        env_of(&api, "app")
    );
    assert!(
        api.metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("tracing.caas.io/"))
    );
    delete_policy(&client, "guard-good").await;
}
