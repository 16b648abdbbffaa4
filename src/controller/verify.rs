//! Admission injection fails open (`failurePolicy: Ignore`), so the operator
//! checks what admission did: once a workload has rolled out a config of the
//! policy, one of its current pods (those carrying that config hash) must carry
//! every planned variable that its containers do not set themselves. The
//! verdict is recorded on the workload (`tracing.caas.io/injection`) and a
//! missing variable makes the policy `Degraded` (`InjectionNotApplied`), naming
//! the pod and the variable. With an agent planned, the pod must also carry the
//! agent's init container, and each agent container its mount and the agent's
//! flag in its startup variable.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DynamicObject, ListParams};
use kube::core::Selector;
use kube::{Api, Client, ResourceExt};

use crate::api::CONFIG_HASH_ANNOTATION;
use crate::plan::agents::{AgentPlan, Edit, INIT_CONTAINER_NAME, MOUNT_PATH, VOLUME_NAME};
use crate::plan::env::{NODE_NAME_VAR, POD_NAME_VAR, RESOURCE_ATTRIBUTES_VAR};
use crate::plan::{WorkloadId, WorkloadPlan};

/// The verdict recorded for a workload whose pods were checked and carry the plan.
pub const VERIFIED: &str = "ok";

/// How many pods are listed to find one of the current config.
const PODS_LISTED: u32 = 10;

/// Checks a current pod of `id` against `plan`: `Some("ok")`, `Some("missing
/// <VAR> in pod <name> (container <c>)")`, or `None` when there is no pod to
/// check (scaled to zero, or a CronJob whose next Job has not run).
pub async fn check(
    client: &Client,
    id: &WorkloadId,
    plan: &WorkloadPlan,
) -> Result<Option<String>, kube::Error> {
    if id.kind == crate::api::WorkloadKind::CronJob {
        return Ok(None);
    }
    let info = id.kind.info();
    let object =
        Api::<DynamicObject>::namespaced_with(client.clone(), &id.namespace, &info.api_resource())
            .get(&id.name)
            .await?;
    let Some(selector) = object
        .data
        .get("spec")
        .and_then(|s| s.get("selector"))
        .and_then(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok())
        .and_then(|s| Selector::try_from(s).ok())
    else {
        return Ok(None);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), &id.namespace)
        .list(
            &ListParams::default()
                .labels_from(&selector)
                .limit(PODS_LISTED),
        )
        .await?;
    let current = pods.items.iter().find(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.annotations().get(CONFIG_HASH_ANNOTATION) == Some(&plan.config_hash)
    });
    Ok(current.map(|pod| verdict(pod, plan)))
}

/// What `pod` lacks of `plan`, as the annotation records it.
pub fn verdict(pod: &Pod, plan: &WorkloadPlan) -> String {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    for planned in &plan.containers {
        let Some(c) = containers.iter().find(|c| c.name == planned.name) else {
            continue;
        };
        let has = |name: &str| c.env.iter().flatten().any(|e| e.name == name);
        let skipped = |name: &str| {
            planned.user_overrides.iter().any(|o| o == name)
                || ((name == POD_NAME_VAR || name == NODE_NAME_VAR)
                    && planned
                        .user_overrides
                        .iter()
                        .any(|o| o == RESOURCE_ATTRIBUTES_VAR))
        };
        if let Some(missing) = plan
            .vars
            .iter()
            .find(|v| !skipped(&v.name) && !has(&v.name))
        {
            return format!(
                "missing {} in pod {} (container {})",
                missing.name,
                pod.name_any(),
                planned.name
            );
        }
    }
    if let Some(agent) = &plan.agent.plan
        && let Some(missing) = agent_missing(pod, agent)
    {
        return format!("missing {missing} in pod {}", pod.name_any());
    }
    VERIFIED.to_string()
}

/// What `pod` lacks of the agent plan, if anything.
fn agent_missing(pod: &Pod, agent: &AgentPlan) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == INIT_CONTAINER_NAME);
    if !init {
        return Some(format!(
            "the {} agent's init container {INIT_CONTAINER_NAME}",
            agent.language
        ));
    }
    // The first joined variable is the one that starts the agent.
    let startup = agent.vars.iter().find_map(|v| match &v.edit {
        Edit::Join { before, after, .. } => {
            Some((v.name, if after.is_empty() { before } else { after }))
        }
        Edit::Default(_) => None,
    });
    for name in &agent.containers {
        let Some(c) = spec.containers.iter().find(|c| c.name == *name) else {
            continue;
        };
        let mounted = c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == VOLUME_NAME && m.mount_path == MOUNT_PATH);
        if !mounted {
            return Some(format!(
                "the {} agent's volume mount at {MOUNT_PATH} (container {name})",
                agent.language
            ));
        }
        if let Some((var, flag)) = startup {
            let value = c
                .env
                .iter()
                .flatten()
                .find(|e| e.name == var)
                .and_then(|e| e.value.as_deref())
                .unwrap_or_default();
            if !value.contains(flag.as_str()) {
                return Some(format!("{flag} in {var} (container {name})"));
            }
        }
    }
    None
}
