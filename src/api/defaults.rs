//! Defaults of the TracingPolicy fields, shared by serde and the CRD schema.

use super::{Duration, Propagator, WorkloadKind};

pub fn default_propagators() -> Vec<Propagator> {
    vec![Propagator::Tracecontext, Propagator::Baggage]
}

pub fn default_kinds() -> Vec<WorkloadKind> {
    WorkloadKind::ALL.to_vec()
}

pub fn default_ratio() -> f64 {
    1.0
}

pub fn default_true() -> bool {
    true
}

pub fn default_replicas() -> i32 {
    2
}

pub fn default_target_cpu_utilization() -> i32 {
    80
}

pub fn default_max_concurrent() -> i32 {
    5
}

pub fn default_progress_deadline() -> Duration {
    Duration("10m".to_string())
}

/// Namespaces no policy ever instruments, besides the operator's own.
pub const ALWAYS_EXCLUDED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Sidecar proxies that are never instrumented when `selector.containers` is empty.
pub const KNOWN_PROXY_CONTAINERS: [&str; 2] = ["istio-proxy", "linkerd-proxy"];
