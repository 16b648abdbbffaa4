//! The OpenTelemetry Collector a policy deploys: its configuration document and
//! the ConfigMap, Deployment and Service that run it.
//!
//! Pure like the rest of `plan`: the controller reads what only the cluster knows
//! (which Secrets exist and the *names* of their keys, never their values) and
//! passes it in; this module returns values to apply.
//!
//! # Sampling
//! What is decided where, and how the tail processor is sized, is
//! [`super::sampling`]'s; this module renders its [`TailPlan`] into
//! `tail_sampling` policies:
//! - errors: `status_code` ERROR; slow traces: `latency`;
//! - "rooted in S": an `ottl_condition` on the root span,
//!   `IsRootSpan() and resource.attributes["service.name"] == "S"`, and
//!   "rooted outside the listed services" the same with `!=`;
//! - "rootless": `not` of `IsRootSpan()` (no span of the trace is a root);
//! - a share below 1: an `and` of the match and a `probabilistic` policy.
//!
//! The probabilistic policies all hash the trace ID the same way; that is
//! harmless because the rules that carry one match disjoint sets of traces
//! (each trace has one root service, or none).
//!
//! Tail sampling needs all spans of a trace in one collector process: with
//! `replicas > 1` a Service spreads a trace's spans across replicas and the tail
//! decisions are taken on fragments. Run one replica per collector when tail
//! sampling is on (a load-balancing tier is future work).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sampling::{SamplingError, TailMatch, TailPlan, TailRule};
use super::{COLLECTOR_OTLP_GRPC_PORT, COLLECTOR_OTLP_HTTP_PORT, collector_name};
use crate::api::{Backend, CONFIG_HASH_ANNOTATION, POLICY_ANNOTATION, Protocol, TracingPolicySpec};

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

/// Names of the keys (never the values) of each `headersSecretRef` Secret that
/// exists in the collector's namespace, by Secret name. The controller reads them
/// from the cluster; a Secret missing from the map does not exist.
pub type HeaderSecretKeys = BTreeMap<String, BTreeSet<String>>;

/// What planning one collector needs.
#[derive(Clone, Copy, Debug)]
pub struct CollectorInput<'a> {
    /// Name of the policy (cluster-scoped).
    pub policy: &'a str,
    pub spec: &'a TracingPolicySpec,
    /// Namespace the collector runs in (see [`super::collector_namespace`]).
    pub namespace: &'a str,
    /// Key names of the header Secrets in `namespace`.
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

/// Every Secret the collector of `spec` mounts or reads env from.
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

/// Everything the controller applies for one collector.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectorPlan {
    /// Name of the ConfigMap, Deployment and Service.
    pub name: String,
    pub namespace: String,
    /// The configuration, typed.
    pub config: CollectorConfig,
    /// The configuration as written into the ConfigMap.
    pub config_yaml: String,
    /// Short hash of `config_yaml`; the pod-template annotation that rolls the
    /// collector when (and only when) its configuration changes.
    pub config_hash: String,
    /// Variables filled from header Secrets; the config references them by name.
    pub header_env: Vec<HeaderEnv>,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
}

/// The collector configuration document (the parts this operator sets; the
/// collector's defaults fill the rest).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CollectorConfig {
    pub extensions: Extensions,
    pub receivers: Receivers,
    pub processors: Processors,
    /// Keyed `otlp_grpc/<backend>` or `otlp_http/<backend>`.
    pub exporters: BTreeMap<String, OtlpExporter>,
    pub service: ServiceSection,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Extensions {
    pub health_check: Endpoint,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub endpoint: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Receivers {
    pub otlp: OtlpReceiver,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OtlpReceiver {
    pub protocols: OtlpProtocols,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OtlpProtocols {
    pub grpc: Endpoint,
    pub http: Endpoint,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Processors {
    pub memory_limiter: MemoryLimiter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_sampling: Option<TailSamplingConfig>,
    pub batch: Batch,
}

/// Refuses data before the container's memory limit is hit: `limit_mib` and
/// `spike_limit_mib` from the container's limit (see
/// [`super::sampling::memory_limits`]), so it works the same with or without a
/// cgroup limit the collector can detect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MemoryLimiter {
    pub check_interval: String,
    pub limit_mib: u64,
    pub spike_limit_mib: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Batch {
    pub timeout: String,
    pub send_batch_size: u32,
    pub send_batch_max_size: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TailSamplingConfig {
    pub decision_wait: String,
    pub num_traces: u64,
    pub expected_new_traces_per_sec: u64,
    pub decision_cache: DecisionCache,
    pub policies: Vec<TailPolicy>,
}

/// Decisions remembered after a trace left memory, so late spans follow them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DecisionCache {
    pub sampled_cache_size: u64,
    pub non_sampled_cache_size: u64,
}

/// One tail-sampling policy (or sub-policy of `and` / `not`); exactly one of the
/// option fields is set, matching `type`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TailPolicy {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<StatusCodePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ottl_condition: Option<OttlConditionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilistic: Option<ProbabilisticPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub and: Option<AndPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<NotPolicy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StatusCodePolicy {
    pub status_codes: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LatencyPolicy {
    pub threshold_ms: i64,
}

/// Matches a trace when any of its spans satisfies one of `span`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OttlConditionPolicy {
    /// `ignore`: a condition that cannot be evaluated on a span is false for it.
    pub error_mode: String,
    pub span: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProbabilisticPolicy {
    pub sampling_percentage: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AndPolicy {
    pub and_sub_policy: Vec<TailPolicy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NotPolicy {
    pub not_sub_policy: Box<TailPolicy>,
}

/// An `otlp_grpc` or `otlp_http` exporter (the names of `otlp`/`otlphttp` since
/// collector v0.140; the old names are deprecated aliases).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OtlpExporter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Set instead of `endpoint` when the backend URL already names the
    /// `/v1/traces` path (HTTP only), so the exporter does not append it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces_endpoint: Option<String>,
    pub tls: ExporterTls,
    /// Header name -> `${env:VAR}` reference; never a value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExporterTls {
    pub insecure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServiceSection {
    pub extensions: Vec<String>,
    pub pipelines: Pipelines,
    pub telemetry: Telemetry,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Pipelines {
    pub traces: Pipeline,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub receivers: Vec<String>,
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Telemetry {
    pub logs: TelemetryLogs,
    pub metrics: TelemetryMetrics,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TelemetryLogs {
    pub level: String,
    pub encoding: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TelemetryMetrics {
    pub level: String,
    pub readers: Vec<serde_json::Value>,
}

/// Standard labels of every collector object; the first two select the pods.
pub fn collector_labels(policy: &str) -> BTreeMap<String, String> {
    let mut labels = collector_selector(policy);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "tracing-operator".into(),
    );
    labels.insert(
        "app.kubernetes.io/part-of".into(),
        "tracing-operator".into(),
    );
    labels.insert(POLICY_ANNOTATION.into(), policy.into());
    labels
}

/// The immutable Deployment selector (and the Service's): name and instance only,
/// so that adding labels later never needs a new Deployment.
pub fn collector_selector(policy: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "opentelemetry-collector".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            collector_name(policy),
        ),
    ])
}

/// Plans the collector of `input.policy` in `input.namespace`.
pub fn plan_collector(input: &CollectorInput<'_>) -> Result<CollectorPlan, CollectorError> {
    let (config, header_env) = collector_config(input)?;
    let config_yaml = render_config(&config)?;
    let config_hash = config_hash(&config_yaml);
    let name = collector_name(input.policy);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(input.namespace.to_string()),
        labels: Some(collector_labels(input.policy)),
        owner_references: input.owner.map(|o| vec![o.clone()]),
        ..ObjectMeta::default()
    };
    let config_map = ConfigMap {
        metadata: meta.clone(),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            config_yaml.clone(),
        )])),
        ..ConfigMap::default()
    };
    let deployment = deployment(input, meta.clone(), &config_hash, &header_env);
    let service = service(input.policy, meta);
    Ok(CollectorPlan {
        name,
        namespace: input.namespace.to_string(),
        config,
        config_yaml,
        config_hash,
        header_env,
        config_map,
        deployment,
        service,
    })
}

/// The configuration document and the header variables it references.
pub fn collector_config(
    input: &CollectorInput<'_>,
) -> Result<(CollectorConfig, Vec<HeaderEnv>), CollectorError> {
    let spec = input.spec;
    let mut exporters = BTreeMap::new();
    let mut header_env = Vec::new();
    let mut variables: BTreeMap<String, (String, String)> = BTreeMap::new();
    for backend in &spec.backends {
        let headers = backend_headers(input, backend, &mut variables, &mut header_env)?;
        exporters.insert(exporter_id(backend), exporter(backend, headers));
    }

    let tail = super::sampling::tail_plan(spec)?.map(|plan| tail_sampling(&plan));
    let memory = super::sampling::memory_limits(spec);
    let mut processors = vec!["memory_limiter".to_string()];
    if tail.is_some() {
        processors.push("tail_sampling".to_string());
    }
    processors.push("batch".to_string());

    let config = CollectorConfig {
        extensions: Extensions {
            health_check: Endpoint {
                endpoint: format!("0.0.0.0:{HEALTH_CHECK_PORT}"),
            },
        },
        receivers: Receivers {
            otlp: OtlpReceiver {
                protocols: OtlpProtocols {
                    grpc: Endpoint {
                        endpoint: format!("0.0.0.0:{COLLECTOR_OTLP_GRPC_PORT}"),
                    },
                    http: Endpoint {
                        endpoint: format!("0.0.0.0:{COLLECTOR_OTLP_HTTP_PORT}"),
                    },
                },
            },
        },
        processors: Processors {
            memory_limiter: MemoryLimiter {
                check_interval: "1s".into(),
                limit_mib: memory.limit_mib,
                spike_limit_mib: memory.spike_limit_mib,
            },
            tail_sampling: tail,
            batch: Batch {
                timeout: "1s".into(),
                send_batch_size: 8192,
                send_batch_max_size: 10000,
            },
        },
        service: ServiceSection {
            extensions: vec!["health_check".into()],
            pipelines: Pipelines {
                traces: Pipeline {
                    receivers: vec!["otlp".into()],
                    processors,
                    exporters: exporters.keys().cloned().collect(),
                },
            },
            telemetry: Telemetry {
                logs: TelemetryLogs {
                    level: "info".into(),
                    encoding: "json".into(),
                },
                metrics: TelemetryMetrics {
                    level: "normal".into(),
                    readers: vec![serde_json::json!({
                        "pull": {"exporter": {"prometheus": {
                            "host": "0.0.0.0",
                            "port": METRICS_PORT,
                        }}}
                    })],
                },
            },
        },
        exporters,
    };
    Ok((config, header_env))
}

/// The YAML written into the ConfigMap.
pub fn render_config(config: &CollectorConfig) -> Result<String, CollectorError> {
    serde_saphyr::to_string(config).map_err(|e| CollectorError::Render(e.to_string()))
}

/// First 16 hex digits of the SHA-256 of the rendered configuration.
pub fn config_hash(config_yaml: &str) -> String {
    Sha256::digest(config_yaml.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `otlp_grpc/<backend>` or `otlp_http/<backend>`.
pub fn exporter_id(backend: &Backend) -> String {
    let kind = match backend.protocol {
        Protocol::Grpc => "otlp_grpc",
        Protocol::Http => "otlp_http",
    };
    format!("{kind}/{}", backend.name.as_str())
}

/// The variable that carries header `key` of `backend`'s headers Secret.
pub fn header_variable(backend: &str, key: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{HEADER_ENV_PREFIX}{}__{}", clean(backend), clean(key))
}

/// Path of the mounted CA certificate of `backend`.
pub fn ca_file(backend: &str) -> String {
    format!("{CA_DIR}/{backend}/{CA_FILE}")
}

fn exporter(backend: &Backend, headers: BTreeMap<String, String>) -> OtlpExporter {
    let tls_spec = backend.tls.clone().unwrap_or_default();
    let ca = tls_spec.ca_secret_ref.as_ref();
    // A plain http:// URL means plaintext; gRPC would otherwise try TLS on it.
    let insecure = tls_spec.insecure || (ca.is_none() && backend.endpoint.starts_with("http://"));
    let tls = ExporterTls {
        insecure,
        ca_file: ca.map(|_| ca_file(backend.name.as_str())),
    };
    let (endpoint, traces_endpoint) = match backend.protocol {
        Protocol::Http
            if backend
                .endpoint
                .trim_end_matches('/')
                .ends_with("/v1/traces") =>
        {
            (None, Some(backend.endpoint.clone()))
        }
        _ => (Some(backend.endpoint.clone()), None),
    };
    OtlpExporter {
        endpoint,
        traces_endpoint,
        tls,
        headers,
    }
}

fn backend_headers(
    input: &CollectorInput<'_>,
    backend: &Backend,
    variables: &mut BTreeMap<String, (String, String)>,
    header_env: &mut Vec<HeaderEnv>,
) -> Result<BTreeMap<String, String>, CollectorError> {
    let mut headers = BTreeMap::new();
    let Some(secret_ref) = &backend.headers_secret_ref else {
        return Ok(headers);
    };
    let b = backend.name.as_str();
    let keys = input
        .header_secret_keys
        .get(&secret_ref.name)
        .ok_or_else(|| CollectorError::MissingHeadersSecret {
            backend: b.to_string(),
            namespace: input.namespace.to_string(),
            secret: secret_ref.name.clone(),
        })?;
    for key in keys {
        if !is_header_name(key) {
            return Err(CollectorError::InvalidHeaderKey {
                backend: b.to_string(),
                secret: secret_ref.name.clone(),
                key: key.clone(),
            });
        }
        let variable = header_variable(b, key);
        if let Some((_, first)) = variables.get(&variable) {
            return Err(CollectorError::HeaderKeyCollision {
                backend: b.to_string(),
                secret: secret_ref.name.clone(),
                first: first.clone(),
                second: key.clone(),
                variable,
            });
        }
        variables.insert(variable.clone(), (b.to_string(), key.clone()));
        headers.insert(key.clone(), format!("${{env:{variable}}}"));
        header_env.push(HeaderEnv {
            backend: b.to_string(),
            header: key.clone(),
            variable,
            secret: secret_ref.name.clone(),
            key: key.clone(),
        });
    }
    Ok(headers)
}

/// An HTTP header name is a token (RFC 9110); Secret keys are a subset of that.
fn is_header_name(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

fn tail_sampling(plan: &TailPlan) -> TailSamplingConfig {
    TailSamplingConfig {
        decision_wait: format!("{}s", plan.decision_wait.as_secs().max(1)),
        num_traces: plan.num_traces,
        expected_new_traces_per_sec: plan.expected_new_traces_per_sec,
        decision_cache: DecisionCache {
            sampled_cache_size: plan.sampled_cache_size,
            non_sampled_cache_size: plan.non_sampled_cache_size,
        },
        policies: plan.rules.iter().map(tail_policy).collect(),
    }
}

fn policy(name: &str, kind: &str) -> TailPolicy {
    TailPolicy {
        name: name.to_string(),
        kind: kind.to_string(),
        status_code: None,
        latency: None,
        ottl_condition: None,
        probabilistic: None,
        and: None,
        not: None,
    }
}

/// `ottl_condition` on the spans of a trace.
fn ottl(name: &str, condition: String) -> TailPolicy {
    TailPolicy {
        ottl_condition: Some(OttlConditionPolicy {
            error_mode: "ignore".into(),
            span: vec![condition],
        }),
        ..policy(name, "ottl_condition")
    }
}

/// An OTTL string literal.
fn ottl_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn service_name_is(op: &str, service: &str) -> String {
    format!(
        "resource.attributes[\"service.name\"] {op} {}",
        ottl_string(service)
    )
}

/// The policy that matches the traces of `matches`, all of them.
fn match_policy(name: &str, matches: &TailMatch) -> TailPolicy {
    match matches {
        TailMatch::Errors => TailPolicy {
            status_code: Some(StatusCodePolicy {
                status_codes: vec!["ERROR".into()],
            }),
            ..policy(name, "status_code")
        },
        TailMatch::SlowerThan(threshold) => TailPolicy {
            latency: Some(LatencyPolicy {
                threshold_ms: i64::try_from(threshold.as_millis()).unwrap_or(i64::MAX),
            }),
            ..policy(name, "latency")
        },
        TailMatch::RootedIn(services) => {
            let names: Vec<String> = services.iter().map(|s| service_name_is("==", s)).collect();
            ottl(name, format!("IsRootSpan() and ({})", names.join(" or ")))
        }
        TailMatch::RootedOutside(services) => {
            let mut condition = "IsRootSpan()".to_string();
            for s in services {
                condition.push_str(" and ");
                condition.push_str(&service_name_is("!=", s));
            }
            ottl(name, condition)
        }
        TailMatch::Rootless => TailPolicy {
            not: Some(NotPolicy {
                not_sub_policy: Box::new(ottl(&format!("{name}/root"), "IsRootSpan()".into())),
            }),
            ..policy(name, "not")
        },
        TailMatch::Any => policy(name, "always_sample"),
    }
}

fn probabilistic(name: &str, share: f64) -> TailPolicy {
    TailPolicy {
        probabilistic: Some(ProbabilisticPolicy {
            // Rounded so that 0.1 renders as 10.0, not 10.000000000000002.
            sampling_percentage: (share * 100.0 * 1e6).round() / 1e6,
        }),
        ..policy(name, "probabilistic")
    }
}

fn tail_policy(rule: &TailRule) -> TailPolicy {
    if rule.share >= 1.0 {
        return match_policy(&rule.name, &rule.matches);
    }
    if rule.matches == TailMatch::Any {
        return probabilistic(&rule.name, rule.share);
    }
    TailPolicy {
        and: Some(AndPolicy {
            and_sub_policy: vec![
                match_policy(&format!("{}/match", rule.name), &rule.matches),
                probabilistic(&format!("{}/share", rule.name), rule.share),
            ],
        }),
        ..policy(&rule.name, "and")
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

/// `collector.resources` over the defaults: a section (requests, limits) the user
/// sets replaces the default section whole.
fn resources(spec: &TracingPolicySpec) -> ResourceRequirements {
    let mut out = default_resources();
    if let Some(user) = &spec.collector.resources {
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
) -> Deployment {
    let spec = input.spec;
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
            name: collector_name(input.policy),
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
                    path: CA_FILE.into(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o444),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: format!("{CA_DIR}/{}", backend.name.as_str()),
            read_only: Some(true),
            ..VolumeMount::default()
        });
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
        resources: Some(resources(spec)),
        liveness_probe: Some(probe(10, 3)),
        readiness_probe: Some(probe(5, 2)),
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

    Deployment {
        metadata: meta,
        spec: DeploymentSpec {
            replicas: Some(spec.collector.replicas),
            selector: LabelSelector {
                match_labels: Some(collector_selector(input.policy)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(collector_labels(input.policy)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // The collector never talks to the Kubernetes API.
                    automount_service_account_token: Some(false),
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

fn service(policy: &str, meta: ObjectMeta) -> Service {
    let port = |name: &str, port: u16, app: &str| ServicePort {
        name: Some(name.to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".into()),
        app_protocol: Some(app.to_string()),
        ..ServicePort::default()
    };
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(collector_selector(policy)),
            ports: Some(vec![
                port("otlp-grpc", COLLECTOR_OTLP_GRPC_PORT, "grpc"),
                port("otlp-http", COLLECTOR_OTLP_HTTP_PORT, "http"),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub mod metrics;

#[cfg(test)]
mod tests;
