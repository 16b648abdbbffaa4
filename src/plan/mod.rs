//! Pure planning: from a policy, the namespaces and the workloads (a snapshot of
//! the cluster), compute what every selected workload's containers should carry,
//! which policy owns which workload, and what the status should say.
//!
//! Nothing here does I/O, reads a clock or draws random numbers: every function
//! is a value-in, value-out transformation, and that is where the tests are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::{Placement, Protocol, TracingPolicySpec};

pub mod agents;
pub mod collector;
pub mod env;
pub mod explain;
pub mod guard;
pub mod index;
pub mod injection;
pub mod precedence;
pub mod rollout;
pub mod sampling;
pub mod selection;
pub mod status;

pub use crate::workload::{Container, Workload, WorkloadId, WorkloadKind};
pub use env::{PlannedValue, PlannedVar, VersionPlan};

/// How the planned settings reach pods, chosen once at start-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Injection {
    /// The operator writes its plan into pod-template annotations; the API
    /// server's MutatingAdmissionPolicy adds the variables to each new pod.
    #[default]
    Admission,
    /// The operator writes the variables into the pod template's containers
    /// (for API servers without MutatingAdmissionPolicy).
    PodTemplate,
}

impl Injection {
    pub fn as_str(self) -> &'static str {
        match self {
            Injection::Admission => "Admission",
            Injection::PodTemplate => "PodTemplate",
        }
    }
}

/// A namespace as planning sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
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
    /// The workloads to plan: every one the operator watches, or (incremental
    /// planning) only those that changed.
    pub workloads: &'a [Arc<Workload>],
    /// Every TracingPolicy, including the one being planned.
    pub policies: &'a [PolicyView],
    pub injection: Injection,
}

/// What one selected container gets beyond the workload's shared plan.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    /// Planned variables the container sets itself: the user wins, and status says so.
    pub user_overrides: Vec<String>,
}

/// What the operator gives one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadPlan {
    pub service_name: String,
    /// The variables each instrumented container gets, in order (see [`env`](mod@env)).
    pub vars: Vec<PlannedVar>,
    /// Only the instrumented containers, in pod order.
    pub containers: Vec<ContainerPlan>,
    pub version: VersionPlan,
    /// The OpenTelemetry agent its pods get, if any, and the containers skipped.
    pub agent: agents::AgentDecision,
    /// Short hash of everything planned; written as `tracing.caas.io/config-hash`.
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
    #[error("spec.instrumentation.{language}.selector: {message}")]
    InvalidAgentSelector {
        language: &'static str,
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

/// A policy's selector compiled against a snapshot's namespaces, ready to
/// decide workload by workload (see [`Planner::decide`]).
pub struct Planner<'a> {
    policy: &'a PolicyView,
    snapshot: &'a Snapshot<'a>,
    ownership: &'a precedence::Ownership<'a>,
    /// `None` while the policy is being deleted: its selector is not even
    /// compiled, so an invalid selector never blocks a deletion.
    selection: Option<selection::Selection>,
    languages: agents::Languages,
}

impl<'a> Planner<'a> {
    pub fn new(
        policy: &'a PolicyView,
        snapshot: &'a Snapshot<'a>,
        ownership: &'a precedence::Ownership<'a>,
    ) -> Result<Self, PlanError> {
        let (selection, languages) = if policy.deleting {
            (None, agents::Languages::default())
        } else {
            let selection = selection::Selection::new(&policy.spec, snapshot.operator_namespace)?;
            (Some(selection), agents::Languages::new(&policy.spec)?)
        };
        Ok(Planner {
            policy,
            snapshot,
            ownership,
            selection,
            languages,
        })
    }

    pub fn policy_name(&self) -> &str {
        &self.policy.name
    }

    /// Namespaces the selector matches, sorted (empty while deleting).
    pub fn selected_namespaces(&self) -> Vec<String> {
        self.selection
            .iter()
            .flat_map(|s| s.selected_namespaces(self.snapshot.namespaces))
            .map(str::to_string)
            .collect()
    }

    /// What this policy does with one workload:
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
    /// - anything else: `None`.
    ///
    /// A policy being deleted plans `Remove` for every workload carrying its
    /// annotation, even one another policy now owns: the finalizer must leave no
    /// setting of a deleted policy behind, and the winner re-applies on its next
    /// reconcile.
    pub fn decide(&self, w: &Workload) -> Option<WorkloadAction> {
        let carries_ours =
            w.annotations.get(crate::api::POLICY_ANNOTATION) == Some(&self.policy.name);
        let Some(selection) = &self.selection else {
            return carries_ours.then_some(WorkloadAction::Remove);
        };
        if selection.selects(self.snapshot.namespaces.get(&*w.id.namespace), w) {
            Some(match self.ownership.beaten_by(self.policy, w) {
                Some(winner) => WorkloadAction::Conflicted {
                    winner: winner.name.clone(),
                },
                None => WorkloadAction::Apply(self.plan(selection, w)),
            })
        } else if carries_ours
            && self
                .ownership
                .owner_other_than(&self.policy.name, w)
                .is_none()
        {
            Some(WorkloadAction::Remove)
        } else {
            None
        }
    }
}

impl Planner<'_> {
    /// The plan of a workload this policy selects and owns: the SDK env, then
    /// its agent, which (when one reaches the pods) enters the config hash.
    fn plan(&self, selection: &selection::Selection, w: &Workload) -> WorkloadPlan {
        let containers: Vec<&Container> = selection.containers(w).collect();
        let mut plan = env::plan_workload(
            self.policy,
            self.snapshot.operator_namespace,
            self.snapshot.namespaces.get(&*w.id.namespace),
            w,
            containers.iter().copied(),
            self.snapshot.injection,
        );
        plan.agent = self
            .languages
            .decide(w, &containers, &plan.vars, self.snapshot.injection);
        if let Some(agent) = &plan.agent.plan {
            plan.config_hash = agents::config_hash(&plan.config_hash, agent);
        }
        plan
    }
}

/// Plans one policy over every workload of the snapshot, with the ownership
/// index built once for the snapshot (a controller planning several policies
/// against one snapshot can share it). Decisions are [`Planner::decide`]'s,
/// sorted by [`WorkloadId`].
///
/// `selected_namespaces` are the namespaces the selector matches (empty while
/// deleting); `unmatched_service_overrides` are the `sampling.services[]` names,
/// in spec order, that no `Apply` decision's service name equals.
pub fn plan_policy_with(
    policy: &PolicyView,
    snapshot: &Snapshot<'_>,
    ownership: &precedence::Ownership<'_>,
) -> Result<PolicyPlan, PlanError> {
    let planner = Planner::new(policy, snapshot, ownership)?;
    let mut workloads: Vec<WorkloadDecision> = snapshot
        .workloads
        .iter()
        .filter_map(|w| {
            planner.decide(w).map(|action| WorkloadDecision {
                id: w.id.clone(),
                action,
            })
        })
        .collect();
    workloads.sort_by(|a, b| a.id.cmp(&b.id));
    let services: BTreeSet<&str> = workloads
        .iter()
        .filter_map(|d| match &d.action {
            WorkloadAction::Apply(p) => Some(p.service_name.as_str()),
            _ => None,
        })
        .collect();
    let unmatched_service_overrides = if policy.deleting {
        Vec::new()
    } else {
        unmatched_services(&policy.spec, &services)
    };
    Ok(PolicyPlan {
        selected_namespaces: planner.selected_namespaces(),
        workloads,
        unmatched_service_overrides,
    })
}

/// The `sampling.services[]` names, in spec order and once each, that are not in `services`.
pub fn unmatched_services(spec: &TracingPolicySpec, services: &BTreeSet<&str>) -> Vec<String> {
    let mut unmatched: Vec<String> = Vec::new();
    for s in &spec.sampling.services {
        if !services.contains(s.name.as_str()) && !unmatched.contains(&s.name) {
            unmatched.push(s.name.clone());
        }
    }
    unmatched
}

#[cfg(test)]
mod tests;
