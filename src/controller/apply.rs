//! Server-side apply of planned workload changes.
//!
//! The operator applies as the single field manager `tracing-operator`, so each
//! apply states the operator's whole intent for that workload: the env entries it
//! sets and its two annotations. Applying an empty intent releases every field
//! the operator owns, which removes exactly what it added and nothing the user
//! owns. Applies are never forced: a user's field is never taken over.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::Context;
use crate::api::{FIELD_MANAGER, WorkloadKind};
use crate::plan::{WorkloadId, WorkloadPlan};

/// The apply configuration carrying a workload plan and the operator's
/// annotations (policy, config hash, applied-at; see `plan::rollout`).
pub fn apply_body(
    id: &WorkloadId,
    plan: &WorkloadPlan,
    annotations: &BTreeMap<String, String>,
) -> Value {
    let containers: Vec<Value> = plan
        .containers
        .iter()
        .map(|c| json!({ "name": c.name, "env": c.env }))
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": id.kind.as_str(),
        "metadata": { "name": id.name, "namespace": id.namespace, "annotations": annotations },
        "spec": { "template": { "spec": { "containers": containers } } }
    })
}

/// The rollback apply configuration: only the operator's annotations, no env, so
/// server-side apply removes every env entry the operator added and the pod
/// template returns to what it was before the policy.
pub fn rollback_body(id: &WorkloadId, annotations: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": id.kind.as_str(),
        "metadata": { "name": id.name, "namespace": id.namespace, "annotations": annotations }
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

/// A write the API server (or the way to it) refused. Displays the server's own
/// message and code, which is what logs, status, Events and the error status of
/// the `apply` span show; the full error stays available as its source.
#[derive(Debug, thiserror::Error)]
#[error("{}", short_message(.0))]
pub struct ApplyError(#[source] pub kube::Error);

/// `message (code)` for an API error, the plain error otherwise.
pub fn short_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// Server-side applies `body` to the workload, paced by the client-side rate limit.
/// Its span names the workload; a rejected apply marks it as an error.
#[tracing::instrument(name = "apply", skip_all, err, fields(namespace = %id.namespace, kind = %id.kind, name = %id.name))]
pub async fn apply(ctx: &Arc<Context>, id: &WorkloadId, body: &Value) -> Result<(), ApplyError> {
    apply_unlabelled(ctx, id, body).await.map_err(ApplyError)
}

async fn apply_unlabelled(
    ctx: &Arc<Context>,
    id: &WorkloadId,
    body: &Value,
) -> Result<(), kube::Error> {
    ctx.limiter.until_ready().await;
    ctx.settings
        .fence
        .check()
        .map_err(|e| kube::Error::Service(Box::new(e)))?;
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
    use crate::api::{
        APPLIED_AT_ANNOTATION, CONFIG_HASH_ANNOTATION, POLICY_ANNOTATION, ROLLOUT_FAILED_ANNOTATION,
    };
    use crate::plan::ContainerPlan;
    use crate::plan::rollout::{applied_annotations, rollback_annotations};
    use k8s_openapi::api::core::v1::EnvVar;
    use k8s_openapi::jiff::Timestamp;

    fn id() -> WorkloadId {
        WorkloadId {
            namespace: "caas-auth".into(),
            kind: WorkloadKind::StatefulSet,
            name: "auth".into(),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_750_000_000).expect("valid time")
    }

    #[test]
    fn apply_body_names_only_the_operators_fields() {
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
        let body = apply_body(
            &id(),
            &plan,
            &applied_annotations("caas-production", &plan.config_hash, now()),
        );
        assert_eq!(body["kind"], "StatefulSet");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations[POLICY_ANNOTATION], "caas-production");
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], "0123456789abcdef");
        assert_eq!(annotations[APPLIED_AT_ANNOTATION], "2025-06-15T15:06:40Z");
        assert_eq!(annotations.as_object().map(|o| o.len()), Some(3));
        let container = &body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], "app");
        assert_eq!(container["env"][0]["value"], "auth");
        // Nothing else: no selector, no image, no replicas.
        assert_eq!(body["spec"].as_object().map(|o| o.len()), Some(1));
        assert_eq!(container.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn rollback_body_keeps_only_the_failure_record() {
        let annotations = rollback_annotations(
            "caas-production",
            "0123456789abcdef",
            "PodsNotReady",
            "0/1 replicas available",
            now(),
        );
        let body = rollback_body(&id(), &annotations);
        assert!(
            body.get("spec").is_none(),
            "no env: every entry the operator added goes"
        );
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations[ROLLOUT_FAILED_ANNOTATION], "0123456789abcdef");
        assert_eq!(annotations[POLICY_ANNOTATION], "caas-production");
        assert_eq!(
            annotations[crate::api::ROLLOUT_FAILURE_ANNOTATION],
            "PodsNotReady: 0/1 replicas available"
        );
        assert!(annotations.get(CONFIG_HASH_ANNOTATION).is_none());
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
