//! Server-side apply of planned workload changes.
//!
//! The operator applies as the single field manager `tracing-operator`, so each
//! apply states the operator's whole intent for that workload: the env entries it
//! sets and its two annotations. Applying an empty intent releases every field
//! the operator owns, which removes exactly what it added and nothing the user
//! owns. Applies are never forced: a user's field is never taken over.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::Context;
use crate::api::{CONFIG_HASH_ANNOTATION, FIELD_MANAGER, POLICY_ANNOTATION, WorkloadKind};
use crate::plan::{WorkloadId, WorkloadPlan};

/// The apply configuration carrying a workload plan.
pub fn apply_body(id: &WorkloadId, policy: &str, plan: &WorkloadPlan) -> Value {
    let containers: Vec<Value> = plan
        .containers
        .iter()
        .map(|c| json!({ "name": c.name, "env": c.env }))
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": id.kind.as_str(),
        "metadata": {
            "name": id.name,
            "namespace": id.namespace,
            "annotations": {
                POLICY_ANNOTATION: policy,
                CONFIG_HASH_ANNOTATION: plan.config_hash,
            }
        },
        "spec": { "template": { "spec": { "containers": containers } } }
    })
}

/// The empty apply configuration: the operator no longer wants any field of this workload.
pub fn removal_body(id: &WorkloadId) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": id.kind.as_str(),
        "metadata": { "name": id.name, "namespace": id.namespace }
    })
}

/// Server-side applies `body` to the workload, paced by the client-side rate limit.
/// Its span names the workload; a rejected apply marks it as an error.
#[tracing::instrument(name = "apply", skip_all, err, fields(namespace = %id.namespace, kind = %id.kind, name = %id.name))]
pub async fn apply(ctx: &Arc<Context>, id: &WorkloadId, body: &Value) -> Result<(), kube::Error> {
    ctx.limiter.until_ready().await;
    ctx.metrics.api_write("patch", id.kind.as_str());
    let params = PatchParams::apply(FIELD_MANAGER);
    let patch = Patch::Apply(body);
    let client = ctx.client.clone();
    match id.kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client, &id.namespace)
                .patch(&id.name, &params, &patch)
                .await?;
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client, &id.namespace)
                .patch(&id.name, &params, &patch)
                .await?;
        }
        WorkloadKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client, &id.namespace)
                .patch(&id.name, &params, &patch)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ContainerPlan;
    use k8s_openapi::api::core::v1::EnvVar;

    #[test]
    fn apply_body_names_only_the_operators_fields() {
        let id = WorkloadId {
            namespace: "caas-auth".into(),
            kind: WorkloadKind::StatefulSet,
            name: "auth".into(),
        };
        let plan = WorkloadPlan {
            service_name: "auth".into(),
            containers: vec![ContainerPlan {
                name: "app".into(),
                env: vec![EnvVar {
                    name: "OTEL_SERVICE_NAME".into(),
                    value: Some("auth".into()),
                    ..Default::default()
                }],
                user_overrides: vec![],
            }],
            config_hash: "0123456789abcdef".into(),
        };
        let body = apply_body(&id, "caas-production", &plan);
        assert_eq!(body["kind"], "StatefulSet");
        assert_eq!(
            body["metadata"]["annotations"][POLICY_ANNOTATION],
            "caas-production"
        );
        assert_eq!(
            body["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
            "0123456789abcdef"
        );
        assert_eq!(
            body["spec"]["template"]["spec"]["containers"][0]["name"],
            "app"
        );
        assert_eq!(
            body["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
            "auth"
        );
        // Nothing else: no selector, no image, no replicas.
        assert_eq!(body["spec"].as_object().map(|o| o.len()), Some(1));
        assert_eq!(
            body["spec"]["template"]["spec"]["containers"][0]
                .as_object()
                .map(|o| o.len()),
            Some(2)
        );
    }

    #[test]
    fn removal_body_claims_nothing() {
        let id = WorkloadId {
            namespace: "ns".into(),
            kind: WorkloadKind::DaemonSet,
            name: "agent".into(),
        };
        let body = removal_body(&id);
        assert_eq!(body["kind"], "DaemonSet");
        assert!(body.get("spec").is_none());
        assert!(body["metadata"].get("annotations").is_none());
    }
}
