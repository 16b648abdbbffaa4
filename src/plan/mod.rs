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
