//! The OpenTelemetry Collectors a policy deploys: which tiers run where
//! ([`collector_tiers`]), the configuration document of each
//! ([`config`]) and the objects that run it ([`objects`]).
//!
//! Pure like the rest of `plan`: the controller reads what only the cluster knows
//! (which Secrets exist and the *names* of their keys, never their values) and passes it in; this module returns values to apply.
//!
//! # Tiers
//! Without tail sampling one tier, [`Tier::Single`]: a Deployment behind the
//! Service the workloads send to, in the collector namespace (`Central`) or in
//! each selected namespace (`PerNamespace`). It holds no trace, so any number of
//! replicas works.
//!
//! Tail sampling needs every span of a trace in one process, so with
//! `sampling.tail` the collector runs as two tiers:
//! - [`Tier::Router`]: the same Deployment and Service (so the workloads' endpoint
//!   does not move), `collector.replicas` of them (or an HPA), in the same
//!   namespaces as the single tier. Their `load_balancing` exporter sends each
//!   span to the sampler its trace ID hashes to, on a consistent-hash ring of the
//!   samplers' addresses. Every router resolves the same addresses and builds the
//!   same ring, so a trace is decided once whichever router or namespace its
//!   spans entered by: with `PerNamespace` the routers run in each selected
//!   namespace and the samplers once, centrally.
//! - [`Tier::Sampler`]: `collector.sampling.replicas` collectors in the
//!   collector namespace, each with `tail_sampling` (sized for the policy's whole
//!   rate, so the sampler config does not change with their number), the
//!   `memory_limiter` of its own container and the exporters to the backends,
//!   behind a headless Service.
//!
//! ## How routers find the samplers: the `dns` resolver
//! The routers resolve the headless Service `<policy>-sampler.<namespace>.svc`
//! every [`RESOLVE_INTERVAL`]; its A records are the addresses of the *ready*
//! samplers, so the ring holds exactly the samplers that can take spans. Chosen
//! over the `k8s` resolver (which watches EndpointSlices and sees a change
//! sooner) because it needs no Kubernetes API access: the collector pods keep
//! running without a ServiceAccount token, and the operator needs no permission
//! to grant EndpointSlice reads, whose absence stops the collector at start-up
//! (opentelemetry-collector-contrib#44494, #33804). The pod IPs are the ring's
//! identities, so the samplers are a plain Deployment: a StatefulSet's stable
//! names would matter only with per-pod DNS names in a `static` list, which keeps
//! sending to a sampler while it is down instead of moving its traces.
//!
//! ## What a change of the samplers costs
//! A sampler joining or leaving moves about 1/N of the trace IDs to another
//! sampler. A trace in flight when its ID moves arrives split: the old sampler
//! decides on the spans it had, the new one on the rest, and a kept trace may
//! miss spans. A leaving sampler (scale-down, roll, drain) keeps running for its
//! decision wait after it left the Service (a `preStop` sleep), so every trace
//! it holds is still decided whole; the samplers roll one at a time (`maxSurge`
//! 1, `maxUnavailable` 0). Changing the tail rules changes only the samplers'
//! configuration: it rolls the samplers, never a router or an application.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::sampling::SamplingError;
use super::{collector_name, sampling};
use crate::api::{Placement, TracingPolicySpec};

pub mod config;
pub mod metrics;
pub mod objects;
pub mod readiness;

pub use config::{
    CollectorConfig, ca_file, collector_config, config_hash, exporter_id, header_variable,
    render_config,
};
pub use objects::{collector_labels, collector_selector, default_resources};

/// Collector release of the default image. `testbed/collector/manifest.yaml`
/// builds the test collector from the same release, so what the tests validate
/// is what the default image runs. (v0.162+ contrib cannot be built from the
/// module proxy: its `pkg/ottl/contexts/xprofile` module is not served.)
pub const COLLECTOR_VERSION: &str = "0.161.0";
/// Default collector image: a pinned contrib release that carries every component
/// the generated configuration uses.
pub const DEFAULT_COLLECTOR_IMAGE: &str = "otel/opentelemetry-collector-contrib:0.161.0";

/// Key of the configuration in the ConfigMap, and its file name in the pod.
pub const CONFIG_FILE: &str = "collector.yaml";
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/conf";
/// Where `tls.caSecretRef` Secrets are mounted, one directory per backend.
pub const CA_DIR: &str = "/tls";
/// File name of a mounted CA certificate.
pub const CA_FILE: &str = "ca.crt";
/// Port of the `health_check` extension (liveness and readiness).
pub const HEALTH_CHECK_PORT: u16 = 13133;
/// Port of the collector's own Prometheus metrics.
pub const METRICS_PORT: u16 = 8888;
/// Name of the collector container.
pub const CONTAINER_NAME: &str = "otel-collector";
/// Non-root user (and group) the collector runs as; the contrib image's own user.
pub const RUN_AS_USER: i64 = 10001;
/// Prefix of the variables that carry backend headers from Secrets.
pub const HEADER_ENV_PREFIX: &str = "TRACING_OPERATOR_HEADER_";
/// How often the routers resolve the samplers' headless Service.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// Names of the keys (never the values) of each `headersSecretRef` Secret that
/// exists in the collector's namespace, by Secret name. The controller reads them
/// from the cluster; a Secret missing from the map does not exist.
pub type HeaderSecretKeys = BTreeMap<String, BTreeSet<String>>;

/// A collector tier; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// The one tier without tail sampling.
    Single,
    /// With tail sampling: takes the workloads' spans, passes each trace to one sampler.
    Router,
    /// With tail sampling: decides each trace and exports the kept ones.
    Sampler,
}

impl Tier {
    /// `single`, `router`, `sampler`: in messages and the component label.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Single => "single",
            Tier::Router => "router",
            Tier::Sampler => "sampler",
        }
    }

    /// Name of the tier's objects: the routers keep the single tier's name, so
    /// the Service the workloads send to is the same with and without tail rules.
    pub fn object_name(self, policy: &str) -> String {
        match self {
            Tier::Single | Tier::Router => collector_name(policy),
            Tier::Sampler => sampler_name(policy),
        }
    }

    /// Whether the tier exports to the backends, and so reads their Secrets.
    pub fn reads_secrets(self) -> bool {
        self != Tier::Router
    }

    /// The tier as the status messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            Tier::Single => "collector",
            Tier::Router => "collector routers",
            Tier::Sampler => "collector samplers",
        }
    }
}

/// Name of a policy's sampler objects (ConfigMap, Deployment, headless Service, PDB).
pub fn sampler_name(policy: &str) -> String {
    format!("{policy}-sampler")
}

/// Namespace of the samplers (and of the central single tier or routers):
/// `collector.namespace`, default the operator's.
pub fn sampler_namespace(spec: &TracingPolicySpec, operator_namespace: &str) -> String {
    spec.collector.namespace.as_ref().map_or_else(
        || operator_namespace.to_string(),
        |n| n.as_str().to_string(),
    )
}

/// The headless Service name the routers resolve, with the namespace's `.svc`
/// (the pods' DNS search path completes it whatever the cluster domain).
pub fn sampler_host(policy: &str, sampler_namespace: &str) -> String {
    format!("{}.{sampler_namespace}.svc", sampler_name(policy))
}

/// One tier in one namespace: what the controller plans and applies as a unit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TierRef {
    pub namespace: String,
    pub tier: Tier,
}

/// Every tier the policy runs, in which namespace; none with the collector off.
pub fn collector_tiers(
    spec: &TracingPolicySpec,
    operator_namespace: &str,
    selected: &[String],
) -> BTreeSet<TierRef> {
    let mut out = BTreeSet::new();
    if !spec.collector.enabled {
        return out;
    }
    let central = sampler_namespace(spec, operator_namespace);
    let front = if sampling::tail_decides(spec) {
        out.insert(TierRef {
            namespace: central.clone(),
            tier: Tier::Sampler,
        });
        Tier::Router
    } else {
        Tier::Single
    };
    match spec.collector.placement {
        Placement::Central => {
            out.insert(TierRef {
                namespace: central,
                tier: front,
            });
        }
        Placement::PerNamespace => out.extend(selected.iter().map(|ns| TierRef {
            namespace: ns.clone(),
            tier: front,
        })),
    }
    out
}

/// The tiers a workload in `workload_namespace` sends through: its collector
/// (the single tier or the routers), and with tail sampling the samplers.
pub fn tiers_of_namespace(
    spec: &TracingPolicySpec,
    operator_namespace: &str,
    workload_namespace: &str,
) -> Vec<TierRef> {
    let front = super::collector_namespace(spec, operator_namespace, workload_namespace);
    if sampling::tail_decides(spec) {
        vec![
            TierRef {
                namespace: front,
                tier: Tier::Router,
            },
            TierRef {
                namespace: sampler_namespace(spec, operator_namespace),
                tier: Tier::Sampler,
            },
        ]
    } else {
        vec![TierRef {
            namespace: front,
            tier: Tier::Single,
        }]
    }
}

/// What planning one tier in one namespace needs.
#[derive(Clone, Copy, Debug)]
pub struct CollectorInput<'a> {
    /// Name of the policy (cluster-scoped).
    pub policy: &'a str,
    pub spec: &'a TracingPolicySpec,
    pub tier: Tier,
    /// Namespace the tier runs in (see [`collector_tiers`]).
    pub namespace: &'a str,
    /// Namespace of the samplers, which the routers resolve (see [`sampler_namespace`]).
    pub sampler_namespace: &'a str,
    /// Key names of the header Secrets in `namespace` (tiers that read Secrets).
    pub header_secret_keys: &'a HeaderSecretKeys,
    /// Owner reference to the policy, set on every object so that deleting the
    /// policy deletes them. The controller builds it from the live object
    /// (`controller_owner_ref`); `None` leaves the objects unowned (tests).
    pub owner: Option<&'a OwnerReference>,
}

/// Why a collector cannot be planned. Each names what the user must fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CollectorError {
    #[error(
        "spec.backends[{backend}].headersSecretRef: Secret {namespace}/{secret} does not exist"
    )]
    MissingHeadersSecret {
        backend: String,
        namespace: String,
        secret: String,
    },
    #[error(
        "spec.backends[{backend}].headersSecretRef: keys {first:?} and {second:?} of Secret {secret} both map to variable {variable}; rename one"
    )]
    HeaderKeyCollision {
        backend: String,
        secret: String,
        first: String,
        second: String,
        variable: String,
    },
    #[error(
        "spec.backends[{backend}].headersSecretRef: key {key:?} of Secret {secret} is not a valid header name"
    )]
    InvalidHeaderKey {
        backend: String,
        secret: String,
        key: String,
    },
    #[error("spec.sampling.tail.slowerThan: {0}")]
    InvalidDuration(String),
    #[error("rendering the collector configuration: {0}")]
    Render(String),
}

impl From<SamplingError> for CollectorError {
    fn from(error: SamplingError) -> Self {
        match error {
            SamplingError::InvalidDuration(message) => CollectorError::InvalidDuration(message),
        }
    }
}

/// A Secret the collector of a policy reads, so the controller can check that it
/// exists (and report `Degraded` naming it) before pointing workloads at the collector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReferencedSecret {
    /// Secret name, in the collector's namespace.
    pub name: String,
    /// The key the collector needs, or `None` for a headers Secret (every key).
    pub key: Option<String>,
    /// The spec field that names it, for the condition message.
    pub field: String,
}

/// Every Secret the collector of `spec` (the single tier or the samplers)
/// mounts or reads env from.
pub fn referenced_secrets(spec: &TracingPolicySpec) -> Vec<ReferencedSecret> {
    let mut out = Vec::new();
    for backend in &spec.backends {
        let b = backend.name.as_str();
        if let Some(ca) = backend.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
            out.push(ReferencedSecret {
                name: ca.name.clone(),
                key: Some(ca.key.clone()),
                field: format!("spec.backends[{b}].tls.caSecretRef"),
            });
        }
        if let Some(h) = &backend.headers_secret_ref {
            out.push(ReferencedSecret {
                name: h.name.clone(),
                key: None,
                field: format!("spec.backends[{b}].headersSecretRef"),
            });
        }
    }
    out
}

/// One backend header whose value the Deployment takes from a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderEnv {
    /// Backend the header is sent to.
    pub backend: String,
    /// Header name (the Secret key).
    pub header: String,
    /// Environment variable the config references as `${env:NAME}`.
    pub variable: String,
    pub secret: String,
    pub key: String,
}

/// Everything the controller applies for one tier in one namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectorPlan {
    pub tier: Tier,
    /// Name of every object of the tier.
    pub name: String,
    pub namespace: String,
    /// The configuration, typed.
    pub config: CollectorConfig,
    /// The configuration as written into the ConfigMap.
    pub config_yaml: String,
    /// Short hash of `config_yaml`; the pod-template annotation that rolls the
    /// tier when (and only when) its configuration changes.
    pub config_hash: String,
    /// Variables filled from header Secrets; the config references them by name.
    pub header_env: Vec<HeaderEnv>,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    /// The Service the workloads send to, or the samplers' headless one.
    pub service: Service,
    pub pod_disruption_budget: PodDisruptionBudget,
    /// With `collector.autoscaling`, for the single tier or the routers.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
}

/// Plans the tier `input.tier` of `input.policy` in `input.namespace`.
pub fn plan_collector(input: &CollectorInput<'_>) -> Result<CollectorPlan, CollectorError> {
    let (config, header_env) = collector_config(input)?;
    let config_yaml = render_config(&config)?;
    let config_hash = config_hash(&config_yaml);
    let drain = match input.tier {
        // A leaving sampler decides what it holds before it stops.
        Tier::Sampler => sampling::tail_plan(input.spec)?.map(|p| {
            p.decision_wait
                .saturating_add(RESOLVE_INTERVAL.saturating_mul(2))
        }),
        Tier::Single | Tier::Router => None,
    };
    let objects = objects::tier_objects(input, &config_yaml, &config_hash, &header_env, drain);
    Ok(CollectorPlan {
        tier: input.tier,
        name: input.tier.object_name(input.policy),
        namespace: input.namespace.to_string(),
        config,
        config_yaml,
        config_hash,
        header_env,
        config_map: objects.config_map,
        deployment: objects.deployment,
        service: objects.service,
        pod_disruption_budget: objects.pod_disruption_budget,
        autoscaler: objects.autoscaler,
    })
}

#[cfg(test)]
mod tests;
