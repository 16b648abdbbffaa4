//! Pure planning: from a policy, the namespaces and the workloads (a snapshot of
//! the cluster), compute what every selected workload's containers should carry,
//! which policy owns which workload, and what the status should say.
//!
//! Nothing here does I/O, reads a clock or draws random numbers: every function
//! is a value-in, value-out transformation, and that is where the tests are.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::EnvVar;

use crate::api::{Placement, Protocol, TracingPolicySpec, WorkloadKind};

pub mod collector;
pub mod env;
pub mod precedence;
pub mod rollout;
pub mod sampling;
pub mod selection;

/// A namespace as planning sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Identity of a workload; orders by namespace, kind, name (the rollout order).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
}

impl std::fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A workload as planning sees it: the trimmed cache entry of a Deployment,
/// StatefulSet or DaemonSet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadView {
    pub id: WorkloadId,
    /// `metadata.labels` of the workload.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations` of the workload.
    pub annotations: BTreeMap<String, String>,
    /// `spec.template.metadata.labels`.
    pub template_labels: BTreeMap<String, String>,
    /// `spec.template.metadata.annotations`.
    pub template_annotations: BTreeMap<String, String>,
    /// `spec.template.spec.containers`, in pod order (init containers are never instrumented).
    pub containers: Vec<ContainerView>,
}

impl Default for WorkloadId {
    fn default() -> Self {
        WorkloadId {
            namespace: String::new(),
            kind: WorkloadKind::Deployment,
            name: String::new(),
        }
    }
}

/// One container of a workload's pod template.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: Option<String>,
    /// The container's whole `env` list as it is live.
    pub env: Vec<EnvVar>,
    /// Names of the `env` entries that field manager `tracing-operator` owns
    /// (read from `managedFields`). Every other entry belongs to the user.
    pub operator_owned_env: BTreeSet<String>,
}

/// A policy as precedence sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyView {
    pub name: String,
    pub spec: TracingPolicySpec,
    /// `metadata.creationTimestamp` as Unix seconds; older wins ties.
    pub created_unix: i64,
    /// The policy has a deletion timestamp: it owns nothing any more.
    pub deleting: bool,
}

/// The snapshot a policy is planned against.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// The operator's namespace: never instrumented, and the default collector namespace.
    pub operator_namespace: &'a str,
    pub namespaces: &'a BTreeMap<String, NamespaceView>,
    /// Every Deployment, StatefulSet and DaemonSet the operator watches.
    pub workloads: &'a [WorkloadView],
    /// Every TracingPolicy, including the one being planned.
    pub policies: &'a [PolicyView],
}

/// The env one container should carry from the operator.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    /// The entries the operator applies, in order: downward-API helpers first so
    /// that `$(VAR)` references in later entries resolve.
    pub env: Vec<EnvVar>,
    /// Variables the policy would set but the container sets itself (the user wins).
    pub user_overrides: Vec<String>,
}

/// What the operator writes into one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadPlan {
    pub service_name: String,
    /// Only the instrumented containers, in pod order.
    pub containers: Vec<ContainerPlan>,
    /// Short hash of everything applied; written as `tracing.caas.io/config-hash`.
    pub config_hash: String,
}

/// What a policy does with one workload.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkloadAction {
    /// Selected and owned by this policy: it should carry this plan.
    Apply(WorkloadPlan),
    /// Carries this policy's settings (annotation `tracing.caas.io/policy`) but is no
    /// longer selected: remove exactly what the operator added.
    Remove,
    /// Selected, but a policy with higher precedence owns it.
    Conflicted { winner: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadDecision {
    pub id: WorkloadId,
    pub action: WorkloadAction,
}

/// The whole plan of one policy.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PolicyPlan {
    /// Sorted by `WorkloadId` (namespace, kind, name).
    pub workloads: Vec<WorkloadDecision>,
    /// Namespaces the policy selects, sorted.
    pub selected_namespaces: Vec<String>,
    /// `sampling.services[].name` entries that match no selected workload's service.
    pub unmatched_service_overrides: Vec<String>,
}

/// Input the policy's spec cannot express and the cluster cannot fix by itself.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("spec.selector.{field}: {message}")]
    InvalidSelector {
        field: &'static str,
        message: String,
    },
}

/// Name of the collector objects (ConfigMap, Deployment, Service) of a policy.
pub fn collector_name(policy: &str) -> String {
    format!("{policy}-collector")
}

/// Namespace of the collector that serves workloads in `workload_namespace`.
pub fn collector_namespace(
    spec: &TracingPolicySpec,
    operator_namespace: &str,
    workload_namespace: &str,
) -> String {
    match spec.collector.placement {
        Placement::Central => spec.collector.namespace.as_ref().map_or_else(
            || operator_namespace.to_string(),
            |ns| ns.as_str().to_string(),
        ),
        Placement::PerNamespace => workload_namespace.to_string(),
    }
}

/// Where a workload's SDK sends spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportTarget {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`.
    pub protocol: &'static str,
}

/// OTLP/HTTP port of the collector Service; what workloads send to.
pub const COLLECTOR_OTLP_HTTP_PORT: u16 = 4318;
/// OTLP/gRPC port of the collector Service.
pub const COLLECTOR_OTLP_GRPC_PORT: u16 = 4317;

/// The export target of a workload in `workload_namespace`. With the collector on,
/// workloads send OTLP over HTTP/protobuf (the protocol every SDK supports and
/// defaults to) to their collector; with it off, straight to the single backend.
pub fn export_target(
    policy: &str,
    spec: &TracingPolicySpec,
    operator_namespace: &str,
    workload_namespace: &str,
) -> ExportTarget {
    if spec.collector.enabled {
        let ns = collector_namespace(spec, operator_namespace, workload_namespace);
        ExportTarget {
            endpoint: format!(
                "http://{}.{ns}.svc:{COLLECTOR_OTLP_HTTP_PORT}",
                collector_name(policy)
            ),
            protocol: Protocol::Http.otel_env_value(),
        }
    } else {
        // The CRD admits exactly one backend when the collector is off.
        match spec.backends.first() {
            Some(backend) => ExportTarget {
                endpoint: backend.endpoint.clone(),
                protocol: backend.protocol.otel_env_value(),
            },
            None => ExportTarget {
                endpoint: String::new(),
                protocol: Protocol::Grpc.otel_env_value(),
            },
        }
    }
}

/// Plans one policy against a snapshot; see [`plan_policy_with`].
pub fn plan_policy(policy: &PolicyView, snapshot: &Snapshot<'_>) -> Result<PolicyPlan, PlanError> {
    let ownership = precedence::Ownership::new(
        snapshot.policies,
        snapshot.namespaces,
        snapshot.operator_namespace,
    );
    plan_policy_with(policy, snapshot, &ownership)
}

/// Plans one policy, with the ownership index built once for the snapshot (a
/// controller planning several policies against one snapshot can share it).
///
/// Per workload, sorted by [`WorkloadId`]:
/// - selected, and no Enforce policy with higher precedence selects it:
///   `Apply` (in DryRun: what Enforce would apply);
/// - selected, but such a policy does: `Conflicted { winner }`;
/// - not selected but carrying this policy's annotation: `Remove`, unless another
///   Enforce policy owns it now. Then nothing is planned for it here: the winner's
///   apply replaces these settings in one write (all applies share one field
///   manager, so a `Remove` from this policy would also strip the winner's
///   entries if it landed after the winner's apply);
/// - a selected workload carrying this policy's annotation that another policy
///   now wins is `Conflicted` (not `Remove`), for the same reason;
/// - anything else: no decision.
///
/// A policy being deleted plans `Remove` for every workload carrying its
/// annotation, even one another policy now owns: the finalizer must leave no
/// setting of a deleted policy behind, and the winner re-applies on its next
/// reconcile. Its selector is not even compiled, so an invalid selector never
/// blocks a deletion.
///
/// `selected_namespaces` are the namespaces the selector matches (empty while
/// deleting); `unmatched_service_overrides` are the `sampling.services[]` names,
/// in spec order, that no `Apply` decision's service name equals.
pub fn plan_policy_with(
    policy: &PolicyView,
    snapshot: &Snapshot<'_>,
    ownership: &precedence::Ownership<'_>,
) -> Result<PolicyPlan, PlanError> {
    let carries_ours =
        |w: &WorkloadView| w.annotations.get(crate::api::POLICY_ANNOTATION) == Some(&policy.name);
    let mut workloads = Vec::new();

    if policy.deleting {
        workloads.extend(
            snapshot
                .workloads
                .iter()
                .filter(|w| carries_ours(w))
                .map(|w| WorkloadDecision {
                    id: w.id.clone(),
                    action: WorkloadAction::Remove,
                }),
        );
        workloads.sort_by(|a, b| a.id.cmp(&b.id));
        return Ok(PolicyPlan {
            workloads,
            selected_namespaces: Vec::new(),
            unmatched_service_overrides: Vec::new(),
        });
    }

    let selection = selection::Selection::new(&policy.spec, snapshot.operator_namespace)?;
    let selected = selection.selected_namespaces(snapshot.namespaces);
    let mut services = BTreeSet::new();
    for w in snapshot.workloads {
        let action = if selection.selects_workload(w, &selected) {
            match ownership.beaten_by(policy, w) {
                Some(winner) => WorkloadAction::Conflicted {
                    winner: winner.name.clone(),
                },
                None => {
                    let plan = env::plan_workload(
                        policy,
                        snapshot.operator_namespace,
                        snapshot.namespaces.get(&w.id.namespace),
                        w,
                        selection.containers(w),
                    );
                    services.insert(plan.service_name.clone());
                    WorkloadAction::Apply(plan)
                }
            }
        } else if carries_ours(w) && ownership.owner_other_than(&policy.name, w).is_none() {
            WorkloadAction::Remove
        } else {
            continue;
        };
        workloads.push(WorkloadDecision {
            id: w.id.clone(),
            action,
        });
    }
    workloads.sort_by(|a, b| a.id.cmp(&b.id));

    let mut unmatched_service_overrides: Vec<String> = Vec::new();
    for s in &policy.spec.sampling.services {
        if !services.contains(&s.name) && !unmatched_service_overrides.contains(&s.name) {
            unmatched_service_overrides.push(s.name.clone());
        }
    }
    Ok(PolicyPlan {
        workloads,
        selected_namespaces: selected.into_iter().map(str::to_string).collect(),
        unmatched_service_overrides,
    })
}

/// An env entry as the API server stores it: an empty `value` is dropped
/// (`omitempty`) and `fieldRef.apiVersion` defaults to `v1`.
fn stored_form(
    e: &EnvVar,
) -> (
    Option<&str>,
    Option<k8s_openapi::api::core::v1::EnvVarSource>,
) {
    let value = e.value.as_deref().filter(|v| !v.is_empty());
    let from = e.value_from.clone().map(|mut from| {
        if let Some(f) = from.field_ref.as_mut() {
            f.api_version.get_or_insert_with(|| "v1".to_string());
        }
        from
    });
    (value, from)
}

/// The live workload carries exactly `plan` from `policy_name`: both annotations
/// match, every planned entry is in its container, owned by the operator and equal
/// in its stored form, and the operator owns no other entry in any container.
/// Entries the user owns are ignored. The controller writes nothing when this
/// holds, so a converged cluster sees zero writes.
pub fn is_applied(policy_name: &str, plan: &WorkloadPlan, live: &WorkloadView) -> bool {
    let annotation = |key: &str| live.annotations.get(key).map(String::as_str);
    if annotation(crate::api::POLICY_ANNOTATION) != Some(policy_name)
        || annotation(crate::api::CONFIG_HASH_ANNOTATION) != Some(plan.config_hash.as_str())
    {
        return false;
    }
    let planned_complete = plan.containers.iter().all(|planned| {
        live.containers
            .iter()
            .find(|c| c.name == planned.name)
            .is_some_and(|c| {
                planned.env.iter().all(|want| {
                    c.operator_owned_env.contains(&want.name)
                        && c.env
                            .iter()
                            .find(|have| have.name == want.name)
                            .is_some_and(|have| stored_form(have) == stored_form(want))
                })
            })
    });
    let nothing_stale = live.containers.iter().all(|c| {
        let planned = plan.containers.iter().find(|p| p.name == c.name);
        c.operator_owned_env
            .iter()
            .all(|owned| planned.is_some_and(|p| p.env.iter().any(|e| &e.name == owned)))
    });
    planned_complete && nothing_stale
}

/// No operator-owned env entry in any container and neither operator annotation:
/// nothing left to remove.
pub fn is_clean(live: &WorkloadView) -> bool {
    live.containers
        .iter()
        .all(|c| c.operator_owned_env.is_empty())
        && !live.annotations.contains_key(crate::api::POLICY_ANNOTATION)
        && !live
            .annotations
            .contains_key(crate::api::CONFIG_HASH_ANNOTATION)
}

#[cfg(test)]
mod tests;
