//! TracingPolicies sent through the API server's validation and admission
//! without being stored (`dryRun=All`), to see what an admission policy says.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::core::Status;
use kube::{Api, Client};
use serde_json::Value;
use serde_json::json;
use tracing_operator::api::TracingPolicy;

use super::wait_until;

/// Creates `policy` (a whole TracingPolicy as JSON) as a server-side dry run:
/// `Ok` when the API server would store it, else the status it refused it with.
pub async fn dry_run_create(client: &Client, policy: &Value) -> Result<(), Box<Status>> {
    let object: DynamicObject =
        serde_json::from_value(policy.clone()).expect("the policy is an object");
    let api =
        Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<TracingPolicy>(&()));
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status),
        Err(other) => panic!("dry-run create of a TracingPolicy: {other}"),
    }
}

/// Waits until the admission policy `admission_policy` refuses `policy` (a new
/// admission policy takes a moment to be enforced) and returns the refusal.
pub async fn wait_refused_by(client: &Client, admission_policy: &str, policy: &Value) -> Status {
    let marker = format!("ValidatingAdmissionPolicy '{admission_policy}'");
    let status = wait_until(
        &format!("{admission_policy} refuses a policy outside the collector settings"),
        Duration::from_secs(60),
        || async {
            match dry_run_create(client, policy).await {
                Err(status) if status.message.contains(&marker) => Some(status),
                _ => None,
            }
        },
    )
    .await;
    *status
}

/// What the admission policy said after `denied request: `: the violations.
pub fn denial(status: &Status) -> &str {
    status
        .message
        .split_once("denied request: ")
        .map_or(status.message.as_str(), |(_, rest)| rest)
}

/// Waits until the API server enforces the operator's MutatingAdmissionPolicy
/// (a new one takes a moment): a dry-run pod carrying a plan gets its variable.
/// Pods created before that would rightly be reported `InjectionNotApplied`.
pub async fn wait_injection_enforced(client: &kube::Client, ns: &str) {
    let probe: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "admission-probe", "annotations": {
            "tracing.caas.io/inject": "app",
            "tracing.caas.io/env": "OTEL_PROBE",
            "env.tracing.caas.io/OTEL_PROBE": "1",
        }},
        "spec": {"containers": [{"name": "app", "image": "registry.local/app:1.0"}]}
    }))
    .expect("probe pod");
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    wait_until(
        "the admission policy is enforced",
        Duration::from_secs(60),
        || {
            let (pods, probe) = (pods.clone(), probe.clone());
            async move {
                let created = pods
                    .create(
                        &PostParams {
                            dry_run: true,
                            ..PostParams::default()
                        },
                        &probe,
                    )
                    .await
                    .ok()?;
                let env = created.spec?.containers.first()?.env.clone()?;
                env.iter().any(|e| e.name == "OTEL_PROBE").then_some(())
            }
        },
    )
    .await;
}
