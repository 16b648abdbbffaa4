//! The collector configuration document of each tier.
//!
//! # Sampling
//! What is decided where, and how the tail processor is sized, is
//! [`crate::plan::sampling`]'s; this module renders its [`TailPlan`] into
//! `tail_sampling` policies (single tier and samplers):
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
//! # Tiers
//! - single tier and samplers: `otlp` receiver, `memory_limiter`, (the
//!   samplers and a tail-sampling single tier) `tail_sampling`, `batch`, one
//!   exporter per backend;
//! - routers: `otlp` receiver, `memory_limiter`, `batch`, `load_balancing` by
//!   trace ID to the samplers' headless Service. They read no Secret.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    CA_DIR, CA_FILE, CollectorError, CollectorInput, HEADER_ENV_PREFIX, HEALTH_CHECK_PORT,
    HeaderEnv, METRICS_PORT, RESOLVE_INTERVAL, Tier, sampler_host,
};
use crate::api::{Backend, Protocol};
use crate::plan::sampling::{self, TailMatch, TailPlan, TailRule};
use crate::plan::{COLLECTOR_OTLP_GRPC_PORT, COLLECTOR_OTLP_HTTP_PORT};

/// The collector configuration document (the parts this operator sets; the
/// collector's defaults fill the rest).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CollectorConfig {
    pub extensions: Extensions,
    pub receivers: Receivers,
    pub processors: Processors,
    /// Keyed `otlp_grpc/<backend>` or `otlp_http/<backend>`, or `load_balancing`
    /// for the routers.
    pub exporters: BTreeMap<String, Exporter>,
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
/// [`crate::plan::sampling::memory_limits_for`]), so it works the same with or without a
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

/// An exporter of the generated configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Exporter {
    LoadBalancing(LoadBalancingExporter),
    Otlp(OtlpExporter),
}

/// The routers' `load_balancing` exporter: each span to the sampler its trace
/// ID hashes to, over OTLP/gRPC, the samplers found by DNS (see the module docs
/// of [`super`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LoadBalancingExporter {
    pub routing_key: String,
    pub protocol: LoadBalancingProtocol,
    pub resolver: Resolver,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LoadBalancingProtocol {
    /// The exporter to each sampler (its endpoint is the resolved address); its
    /// default in-memory queue and retries carry spans over a sampler's short
    /// unavailability.
    pub otlp: SamplerExporter,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SamplerExporter {
    pub tls: ExporterTls,
    pub timeout: String,
}

/// Exactly one resolver is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Resolver {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsResolver>,
    /// Not generated; lets a test put fixed addresses in place of DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#static: Option<StaticResolver>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DnsResolver {
    pub hostname: String,
    pub port: String,
    pub interval: String,
    pub timeout: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StaticResolver {
    pub hostnames: Vec<String>,
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

/// The configuration document of `input.tier` and the header variables it references.
pub fn collector_config(
    input: &CollectorInput<'_>,
) -> Result<(CollectorConfig, Vec<HeaderEnv>), CollectorError> {
    let spec = input.spec;
    let mut exporters = BTreeMap::new();
    let mut header_env = Vec::new();
    let mut tail = None;
    if input.tier == Tier::Router {
        exporters.insert(
            LOAD_BALANCING.to_string(),
            Exporter::LoadBalancing(load_balancing(input)),
        );
    } else {
        let mut variables: BTreeMap<String, (String, String)> = BTreeMap::new();
        for backend in &spec.backends {
            let headers = backend_headers(input, backend, &mut variables, &mut header_env)?;
            exporters.insert(
                exporter_id(backend),
                Exporter::Otlp(exporter(backend, headers)),
            );
        }
        tail = sampling::tail_plan(spec)?.map(|plan| tail_sampling(&plan));
    }
    let memory = sampling::memory_limits_for(super::objects::user_resources(spec, input.tier));
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

/// The routers' exporter name.
pub const LOAD_BALANCING: &str = "load_balancing";

fn load_balancing(input: &CollectorInput<'_>) -> LoadBalancingExporter {
    LoadBalancingExporter {
        routing_key: "traceID".into(),
        protocol: LoadBalancingProtocol {
            // Inside the cluster, as the workloads' OTLP to the routers.
            otlp: SamplerExporter {
                tls: ExporterTls {
                    insecure: true,
                    ca_file: None,
                },
                timeout: "5s".into(),
            },
        },
        resolver: Resolver {
            dns: Some(DnsResolver {
                hostname: sampler_host(input.policy, input.sampler_namespace),
                port: COLLECTOR_OTLP_GRPC_PORT.to_string(),
                interval: format!("{}s", RESOLVE_INTERVAL.as_secs()),
                timeout: "1s".into(),
            }),
            r#static: None,
        },
    }
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
