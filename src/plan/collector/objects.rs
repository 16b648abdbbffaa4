//! The objects that run one tier: ConfigMap, Deployment, Service (the
//! workloads' ClusterIP one, or the samplers' headless one),
//! PodDisruptionBudget and, with `collector.autoscaling`, a
//! HorizontalPodAutoscaler.
//!
//! Every tier spreads its pods over zones and nodes (`ScheduleAnyway`, so a
//! small cluster still schedules them) and lets a drain take one pod at a time
//! (`maxUnavailable: 1`; an unhealthy pod may always be evicted, so a broken
//! collector never blocks a drain).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CONFIG_DIR, CONFIG_FILE, CONTAINER_NAME, CollectorInput, DEFAULT_COLLECTOR_IMAGE,
    HEALTH_CHECK_PORT, HeaderEnv, METRICS_PORT, RUN_AS_USER, Tier,
};
use crate::api::{CONFIG_HASH_ANNOTATION, POLICY_ANNOTATION, TracingPolicySpec};
use crate::plan::{COLLECTOR_OTLP_GRPC_PORT, COLLECTOR_OTLP_HTTP_PORT, collector_name};

/// The objects of one tier, as [`super::CollectorPlan`] carries them.
pub struct TierObjects {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub pod_disruption_budget: PodDisruptionBudget,
    pub autoscaler: Option<HorizontalPodAutoscaler>,
}

/// Label naming the tier on the objects of a two-tier collector.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// Standard labels of every single-tier collector object; the first two select the pods.
pub fn collector_labels(policy: &str) -> BTreeMap<String, String> {
    tier_labels(policy, Tier::Single)
}

/// The immutable Deployment selector (and the Service's) of the single tier and
/// the routers: name and instance only, so that adding labels later never
/// needs a new Deployment.
pub fn collector_selector(policy: &str) -> BTreeMap<String, String> {
    tier_selector(policy, Tier::Single)
}

/// Standard labels of the objects of `tier`; the first two select its pods.
/// The tiers of a two-tier collector also carry [`COMPONENT_LABEL`]; the single
/// tier does not, so that its pods are as they were before the tiers existed.
pub fn tier_labels(policy: &str, tier: Tier) -> BTreeMap<String, String> {
    let mut labels = tier_selector(policy, tier);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "tracing-operator".into(),
    );
    labels.insert(
        "app.kubernetes.io/part-of".into(),
        "tracing-operator".into(),
    );
    labels.insert(POLICY_ANNOTATION.into(), policy.into());
    if tier != Tier::Single {
        labels.insert(COMPONENT_LABEL.into(), tier.as_str().into());
    }
    labels
}

/// The selector of `tier`'s pods: the routers keep the single tier's (one
/// Deployment either way), the samplers have their own instance.
pub fn tier_selector(policy: &str, tier: Tier) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "opentelemetry-collector".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            tier.object_name(policy),
        ),
    ])
}

pub(super) fn tier_objects(
    input: &CollectorInput<'_>,
    config_yaml: &str,
    config_hash: &str,
    header_env: &[HeaderEnv],
    drain: Option<Duration>,
) -> TierObjects {
    let meta = ObjectMeta {
        name: Some(input.tier.object_name(input.policy)),
        namespace: Some(input.namespace.to_string()),
        labels: Some(tier_labels(input.policy, input.tier)),
        owner_references: input.owner.map(|o| vec![o.clone()]),
        ..ObjectMeta::default()
    };
    let config_map = ConfigMap {
        metadata: meta.clone(),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            config_yaml.to_string(),
        )])),
        ..ConfigMap::default()
    };
    let autoscaler = match (input.tier, &input.spec.collector.autoscaling) {
        (Tier::Single | Tier::Router, Some(a)) => Some(HorizontalPodAutoscaler {
            metadata: meta.clone(),
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: collector_name(input.policy),
                },
                min_replicas: Some(input.spec.collector.replicas),
                max_replicas: a.max_replicas.max(input.spec.collector.replicas),
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(a.target_cpu_utilization),
                            ..MetricTarget::default()
                        },
                    }),
                    ..MetricSpec::default()
                }]),
                behavior: None,
            },
            status: None,
        }),
        _ => None,
    };
    let selector = LabelSelector {
        match_labels: Some(tier_selector(input.policy, input.tier)),
        match_expressions: None,
    };
    let pod_disruption_budget = PodDisruptionBudget {
        metadata: meta.clone(),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    };
    let deployment = deployment(
        input,
        meta.clone(),
        config_hash,
        header_env,
        drain,
        autoscaler.is_none(),
    );
    let service = service(input, meta);
    TierObjects {
        config_map,
        deployment,
        service,
        pod_disruption_budget,
        autoscaler,
    }
}

/// Requests and limits when `collector.resources` does not say: enough for a few
/// thousand spans per second; the memory limit is what `memory_limiter` works from.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("100m")),
            ("memory".to_string(), q("128Mi")),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), q("1")),
            ("memory".to_string(), q("512Mi")),
        ])),
        ..ResourceRequirements::default()
    }
}

/// The resources the user gave `tier`: the samplers' own, else `collector.resources`.
pub fn user_resources(spec: &TracingPolicySpec, tier: Tier) -> Option<&ResourceRequirements> {
    match tier {
        Tier::Sampler => spec
            .collector
            .sampling
            .resources
            .as_ref()
            .or(spec.collector.resources.as_ref()),
        Tier::Single | Tier::Router => spec.collector.resources.as_ref(),
    }
}

/// The user's resources over the defaults: a section (requests, limits) the user
/// sets replaces the default section whole.
pub fn resources(spec: &TracingPolicySpec, tier: Tier) -> ResourceRequirements {
    let mut out = default_resources();
    if let Some(user) = user_resources(spec, tier) {
        if user.requests.is_some() {
            out.requests = user.requests.clone();
        }
        if user.limits.is_some() {
            out.limits = user.limits.clone();
        }
        if user.claims.is_some() {
            out.claims = user.claims.clone();
        }
    }
    out
}

fn deployment(
    input: &CollectorInput<'_>,
    meta: ObjectMeta,
    config_hash: &str,
    header_env: &[HeaderEnv],
    drain: Option<Duration>,
    set_replicas: bool,
) -> Deployment {
    let spec = input.spec;
    let tier = input.tier;
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let probe = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".into()),
            port: IntOrString::Int(i32::from(HEALTH_CHECK_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let env: Vec<EnvVar> = header_env
        .iter()
        .map(|h| EnvVar {
            name: h.variable.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: h.secret.clone(),
                    key: h.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
        .collect();

    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: tier.object_name(input.policy),
            items: Some(vec![KeyToPath {
                key: CONFIG_FILE.into(),
                path: CONFIG_FILE.into(),
                ..KeyToPath::default()
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if tier.reads_secrets() {
        for (i, backend) in spec.backends.iter().enumerate() {
            let Some(ca) = backend.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) else {
                continue;
            };
            let name = format!("ca-{i}");
            volumes.push(Volume {
                name: name.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(ca.name.clone()),
                    items: Some(vec![KeyToPath {
                        key: ca.key.clone(),
                        path: super::CA_FILE.into(),
                        ..KeyToPath::default()
                    }]),
                    default_mode: Some(0o444),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name,
                mount_path: format!("{}/{}", super::CA_DIR, backend.name.as_str()),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    }

    let seccomp = || {
        Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        })
    };
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(
            spec.collector
                .image
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| DEFAULT_COLLECTOR_IMAGE.to_string()),
        ),
        args: Some(vec![format!("--config={CONFIG_DIR}/{CONFIG_FILE}")]),
        ports: Some(vec![
            port("otlp-grpc", COLLECTOR_OTLP_GRPC_PORT),
            port("otlp-http", COLLECTOR_OTLP_HTTP_PORT),
            port("health", HEALTH_CHECK_PORT),
            port("metrics", METRICS_PORT),
        ]),
        env: (!env.is_empty()).then_some(env),
        resources: Some(resources(spec, tier)),
        liveness_probe: Some(probe(10, 3)),
        readiness_probe: Some(probe(5, 2)),
        // A leaving sampler has left the headless Service (so the routers stop
        // sending it new traces) but decides the traces it holds before it stops.
        lifecycle: drain.map(|d| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: seccomp(),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let annotations =
        BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string())]);
    let selector = tier_selector(input.policy, tier);
    let spread = |key: &str| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.to_string(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            match_expressions: None,
        }),
        // Spread the pods of one ReplicaSet: a roll does not skew by the old ones.
        match_label_keys: Some(vec!["pod-template-hash".into()]),
        ..TopologySpreadConstraint::default()
    };
    let (replicas, strategy) = match tier {
        // One sampler at a time joins and leaves the ring.
        Tier::Sampler => (
            spec.collector.sampling.replicas,
            Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
        ),
        Tier::Single | Tier::Router => (spec.collector.replicas, None),
    };

    Deployment {
        metadata: meta,
        spec: DeploymentSpec {
            // With an autoscaler the replicas are its to set.
            replicas: set_replicas.then_some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            strategy,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(tier_labels(input.policy, tier)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // The collector never talks to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: drain
                        .map(|d| i64::try_from(d.as_secs() + 30).unwrap_or(i64::MAX)),
                    topology_spread_constraints: Some(vec![
                        spread("topology.kubernetes.io/zone"),
                        spread("kubernetes.io/hostname"),
                    ]),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        fs_group: Some(RUN_AS_USER),
                        seccomp_profile: seccomp(),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// The single tier's and the routers' Service, which the workloads send to; the
/// samplers' is headless: its DNS name resolves to the ready samplers' addresses,
/// which the routers' ring is built from.
fn service(input: &CollectorInput<'_>, meta: ObjectMeta) -> Service {
    let port = |name: &str, port: u16, app: &str| ServicePort {
        name: Some(name.to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".into()),
        app_protocol: Some(app.to_string()),
        ..ServicePort::default()
    };
    let selector = Some(tier_selector(input.policy, input.tier));
    let spec = match input.tier {
        Tier::Sampler => ServiceSpec {
            cluster_ip: Some("None".into()),
            selector,
            ports: Some(vec![port("otlp-grpc", COLLECTOR_OTLP_GRPC_PORT, "grpc")]),
            ..ServiceSpec::default()
        },
        Tier::Single | Tier::Router => ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector,
            ports: Some(vec![
                port("otlp-grpc", COLLECTOR_OTLP_GRPC_PORT, "grpc"),
                port("otlp-http", COLLECTOR_OTLP_HTTP_PORT, "http"),
            ]),
            ..ServiceSpec::default()
        },
    };
    Service {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}
