//! The `TracingPolicy` custom resource (`tracing.caas.io/v1alpha1`).
//!
//! Doc comments on these types become the CRD's descriptions, which is what
//! `kubectl explain tracingpolicy.spec...` prints: keep them written for users.
//! Validation lives in the schema (ranges, enums, patterns, list-map keys) and in
//! CEL rules, so the API server rejects bad input at `kubectl apply` time and
//! names the field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod defaults;
mod instrumentation;
pub use defaults::*;
pub use instrumentation::*;

/// API group of every kind this operator defines.
pub const GROUP: &str = "tracing.caas.io";
/// Prefix of the annotations and labels the operator puts on objects it touches.
pub const ANNOTATION_PREFIX: &str = "tracing.caas.io/";
/// Annotation naming the policy that owns a workload's tracing settings.
pub const POLICY_ANNOTATION: &str = "tracing.caas.io/policy";
/// Annotation with the hash of the tracing settings applied to a workload.
pub const CONFIG_HASH_ANNOTATION: &str = "tracing.caas.io/config-hash";
/// Annotation with the time (RFC 3339, UTC) the operator last changed a workload's
/// pod template; the rollout's progress deadline counts from it.
pub const APPLIED_AT_ANNOTATION: &str = "tracing.caas.io/applied-at";
/// Annotation with the config hash whose rollout failed on a workload and was rolled
/// back; that hash is not applied to the workload again.
pub const ROLLOUT_FAILED_ANNOTATION: &str = "tracing.caas.io/rollout-failed";
/// Annotation with why that rollout failed (`Reason: message`), so status keeps
/// reporting the cause after the rollback, across operator restarts.
pub const ROLLOUT_FAILURE_ANNOTATION: &str = "tracing.caas.io/rollout-failure";
/// Annotation with the config hash whose rollout the operator saw complete on a
/// workload. From then on the workload's unavailability (a drain, a crash, a
/// scale-up, the user's own release) is reported, never taken for a failure of
/// the operator's change.
pub const ROLLED_OUT_ANNOTATION: &str = "tracing.caas.io/rolled-out";
/// Annotation with what the operator found when it checked a pod of a rolled-out
/// workload (admission injection): `ok`, or `missing <VAR> in pod <name>`.
pub const INJECTION_ANNOTATION: &str = "tracing.caas.io/injection";
/// Pod-template annotation (admission injection): the containers to instrument,
/// comma-separated, in pod order.
pub const INJECT_ANNOTATION: &str = "tracing.caas.io/inject";
/// Pod-template annotation (admission injection): the planned variable names,
/// comma-separated, in the order they are added to each container.
pub const ENV_NAMES_ANNOTATION: &str = "tracing.caas.io/env";
/// Prefix of the pod-template annotations (admission injection) that carry the
/// value of each planned variable: `env.tracing.caas.io/<NAME>`.
pub const ENV_VALUE_PREFIX: &str = "env.tracing.caas.io/";
/// Server-side apply field manager, and the finalizer's prefix.
pub const FIELD_MANAGER: &str = "tracing-operator";
/// Finalizer that lets the operator remove what it added before a policy goes away.
pub const FINALIZER: &str = "tracing.caas.io/cleanup";

/// A TracingPolicy rolls OpenTelemetry tracing out to every selected Deployment,
/// StatefulSet and DaemonSet across namespaces: it sets the OpenTelemetry SDK
/// environment (service name, resource attributes, exporter endpoint, propagators,
/// sampler) on their pod templates, deploys the OpenTelemetry Collector that does
/// tail sampling, and removes exactly what it added when deleted.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tracing.caas.io",
    version = "v1alpha1",
    kind = "TracingPolicy",
    plural = "tracingpolicies",
    shortname = "tp",
    category = "tracing",
    status = "TracingPolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Workloads","type":"string","description":"Workloads up to date / selected","jsonPath":".status.workloads.summary"}"#,
    printcolumn = r#"{"name":"Sampling","type":"string","description":"What is kept: the head ratio, or the tail rules and shares","jsonPath":".status.sampling"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".status.backends"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 48 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (lower case letters, digits and '-', starting with a letter) of at most 48 characters: it names the policy's collector objects"),
)]
#[x_kube(validation = Rule::new("!has(self.sampling.tail) || self.collector.enabled").message("sampling.tail needs collector.enabled: tail sampling runs in the collector").field_path(".sampling.tail"))]
#[x_kube(validation = Rule::new("self.collector.enabled || size(self.backends) == 1").message("with collector.enabled false, workloads export straight to a single backend: list exactly one").field_path(".backends"))]
#[x_kube(validation = Rule::new("self.collector.enabled || self.backends.all(b, !has(b.headersSecretRef) && (!has(b.tls) || !has(b.tls.caSecretRef)))").message("with collector.enabled false, backends cannot use headersSecretRef or tls.caSecretRef: only the collector reads Secrets").field_path(".backends"))]
#[serde(rename_all = "camelCase")]
pub struct TracingPolicySpec {
    /// Which namespaces, workloads, kinds and containers get tracing.
    #[serde(default)]
    pub selector: PolicySelector,

    /// When several policies select the same workload, the highest priority wins,
    /// then the oldest policy, then the name. The losers report `Conflicted`.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,

    /// `Enforce` writes the settings into workloads. `DryRun` computes the plan and
    /// reports it in status without writing anything to workloads.
    #[serde(default)]
    pub mode: Mode,

    /// Resource attributes that describe the services.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Trace-context propagators, in order (`OTEL_PROPAGATORS`). `none` must stand alone.
    #[serde(default = "default_propagators")]
    #[x_kube(validation = Rule::new("!('none' in self) || size(self) == 1").message("propagator none cannot be combined with others"))]
    #[schemars(length(min = 1, max = 8))]
    pub propagators: Vec<Propagator>,

    /// Which traces are kept: head sampling in the SDKs, and with `tail` the
    /// collector's rules and shares.
    #[serde(default)]
    pub sampling: SamplingSpec,

    /// The OpenTelemetry Collector the operator deploys between workloads and backends.
    #[serde(default)]
    pub collector: CollectorSpec,

    /// Where traces go. At least one; names are unique.
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub backends: Vec<Backend>,

    /// Extra variables for applications that read their own names. Values may use
    /// `{service.name}`, `{service.version}`, `{service.namespace}` and
    /// `{deployment.environment.name}`.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvTemplate>,

    /// How changes reach running pods.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// Zero-code tracing: the OpenTelemetry agent of each workload's language,
    /// injected into its pods at admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrumentation: Option<InstrumentationSpec>,
}

/// Selection of the workloads a policy applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySelector {
    /// Namespaces whose labels match. Omitted: every namespace that is not excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,

    /// Workloads whose own labels (`metadata.labels`) match. Omitted: every workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<LabelSelector>,

    /// Workload kinds to instrument. Default: all four (Deployment, StatefulSet,
    /// DaemonSet, CronJob). A CronJob needs no restart: its next Job's pods are traced.
    #[serde(default = "default_kinds")]
    #[schemars(length(min = 1, max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub kinds: Vec<WorkloadKind>,

    /// Namespaces never instrumented, in addition to kube-system, kube-public,
    /// kube-node-lease and the operator's own namespace.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub exclude_namespaces: Vec<DnsLabel>,

    /// Names of the containers to instrument. Empty: every container except known
    /// proxies (istio-proxy, linkerd-proxy). Init containers are never instrumented.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub containers: Vec<DnsLabel>,
}

// Not derived: an omitted `selector` must default `kinds` to all of them, as an
// omitted `kinds` does (the CRD's default for `selector` is this value).
impl Default for PolicySelector {
    fn default() -> Self {
        PolicySelector {
            namespaces: None,
            workloads: None,
            kinds: default_kinds(),
            exclude_namespaces: Vec::new(),
            containers: Vec::new(),
        }
    }
}

/// A Kubernetes name that must be a DNS-1123 label.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(transparent)]
pub struct DnsLabel(
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub String,
);

impl DnsLabel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for DnsLabel {
    fn from(s: &str) -> Self {
        DnsLabel(s.to_string())
    }
}

/// Workload kinds the operator can instrument.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
}

impl WorkloadKind {
    /// Every kind, in the rollout order of kinds within a namespace.
    pub const ALL: [WorkloadKind; 4] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::CronJob,
    ];

    /// The `kind` of the API object; what each kind module says about the
    /// object (API version, pod template, rollout) is in `crate::workload`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::CronJob => "CronJob",
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the policy writes to workloads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    /// Write the settings into the selected workloads.
    #[default]
    Enforce,
    /// Compute and report the plan; write nothing to workloads.
    DryRun,
}

/// Resource attributes describing the services.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `deployment.environment.name`, for example `production`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub environment: Option<String>,

    /// Extra resource attributes added to every service, for example `team: platform`.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9_.-]+$') && k.size() <= 128)").message("resource attribute keys use only letters, digits, '_', '.' and '-', at most 128 characters"))]
    pub resource_attributes: BTreeMap<String, String>,

    /// With PodTemplate injection only (see `status.injection`): take `service.version`
    /// from the container's image tag when the pod template has no
    /// `app.kubernetes.io/version` label. The operator then writes the tag into the
    /// template, so every image bump rolls the workload a second time. Admission
    /// injection (the default) reads the tag when each pod is created and needs no opt-in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub version_from_image_tag: bool,

    /// Namespace labels copied into each workload's resource attributes under the
    /// semantic-convention name `k8s.namespace.label.<label>`, for example
    /// `caas.io/tenant` becomes `k8s.namespace.label.caas.io/tenant`; names that no
    /// application's own span attribute uses. A namespace without the label adds nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub namespace_labels: Vec<LabelKey>,

    /// Resource attributes taken from each workload's namespace labels under a name
    /// of your choice: the key is the attribute, the value the label name. Pick a
    /// name no span attribute of your services uses (or use `namespaceLabels`). A
    /// namespace without the label adds nothing.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 16))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9_.-]+$') && k.size() <= 128)").message("resource attribute keys use only letters, digits, '_', '.' and '-', at most 128 characters"))]
    pub attributes_from_namespace_labels: BTreeMap<String, String>,
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of
/// at most 63 letters, digits, `-`, `_` and `.`.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(transparent)]
pub struct LabelKey(
    #[schemars(
        length(min = 1, max = 317),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
        )
    )]
    pub String,
);

impl LabelKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Trace-context propagators understood by the OpenTelemetry SDKs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Propagator {
    Tracecontext,
    Baggage,
    B3,
    B3multi,
    Jaeger,
    Xray,
    Ottrace,
    None,
}

impl Propagator {
    pub fn as_str(self) -> &'static str {
        match self {
            Propagator::Tracecontext => "tracecontext",
            Propagator::Baggage => "baggage",
            Propagator::B3 => "b3",
            Propagator::B3multi => "b3multi",
            Propagator::Jaeger => "jaeger",
            Propagator::Xray => "xray",
            Propagator::Ottrace => "ottrace",
            Propagator::None => "none",
        }
    }
}

/// Which traces are kept, and where that is decided: in each application's SDK
/// (head sampling, before anything is known about a trace) or, with `tail`, in
/// the collector once a trace is complete.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.head) || has(self.tail)").message("sampling.head needs sampling.tail: without tail rules, sampling.ratio and sampling.services are the head ratios").field_path(".head"))]
#[x_kube(validation = Rule::new("!has(self.head) || !has(self.head.ratio) || self.head.ratio >= 1.0 || !has(self.parentBased) || self.parentBased").message("sampling.parentBased false with sampling.head.ratio below 1 splits traces: each service would record its own share of every trace (SDKs of different languages pick different traces for the same ratio), and the collector would decide on parts of traces; keep parentBased true").field_path(".parentBased"))]
pub struct SamplingSpec {
    /// Share of ordinary traces kept end to end, 0 to 1. Ordinary: not kept by a
    /// tail rule (error, slow) and not started by a service listed in `services`.
    /// With `tail`, the collector applies it; without, each application's SDK
    /// samples this share of the traces it starts.
    #[serde(default = "default_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: f64,

    /// Follow the caller's sampling decision when there is one (`parentbased_*`
    /// samplers); false makes every service decide for itself.
    #[serde(default = "default_true")]
    pub parent_based: bool,

    /// Shares per service, matched by its `service.name`. With `tail`: the share of
    /// the traces that service starts (whose root span it emits) that the collector
    /// keeps; a service that only serves calls gains nothing from an entry. Without
    /// `tail`: the service's head ratio, which likewise acts only on the traces it
    /// starts, since a called service follows its caller's decision.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<ServiceSampling>,

    /// Head sampling when `tail` is set: how many traces the applications record
    /// and send to the collector at all. Default: every trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadSampling>,

    /// Tail sampling, evaluated in the collector once a trace is complete. With it,
    /// `ratio` and `services` are applied in the collector too, so every error and
    /// slow trace can be kept. Changing its rules, `ratio` or `services` restarts
    /// collector pods only; adding or removing it (or changing `head`) changes the
    /// SDKs' sampler and so restarts application pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<TailSampling>,
}

impl Default for SamplingSpec {
    fn default() -> Self {
        SamplingSpec {
            ratio: default_ratio(),
            parent_based: true,
            services: Vec::new(),
            head: None,
            tail: None,
        }
    }
}

/// A share for one service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct ServiceSampling {
    /// The service's `service.name`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Share of the traces this service starts that are kept, 0 to 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: f64,
}

/// The SDKs' share of new traces when the collector samples by tail rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct HeadSampling {
    /// Share of new traces each application records and sends, 0 to 1 (default 1).
    /// Below 1 it cuts the spans the collector receives, and errors and slow
    /// traces outside that share are lost. A service listed in
    /// `sampling.services` records at least its own ratio.
    #[serde(default = "default_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: f64,
}

/// Tail-sampling rules run by the collector. A trace is kept when any rule keeps
/// it: an error, a slow trace, its root service's share from `sampling.services`,
/// or else `sampling.ratio`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.keepErrors || has(self.slowerThan) || has(self.ratio)").message("tail needs keepErrors or slowerThan (sampling.ratio and sampling.services apply in the collector once tail is set)"))]
pub struct TailSampling {
    /// Keep every trace that has a span with status ERROR.
    #[serde(default = "default_true")]
    pub keep_errors: bool,

    /// Keep every trace longer than this duration, for example `500ms` or `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slower_than: Option<Duration>,

    /// Deprecated: write the share of ordinary traces into `sampling.ratio`. When
    /// set, the collector keeps `sampling.ratio × tail.ratio` of ordinary traces,
    /// what such a policy kept before, and the policy's status says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: Option<f64>,

    /// New traces per second the collector should be ready for, summed over all
    /// services, before sampling. It sizes the traces held while their spans
    /// arrive (`num_traces`: twice this rate times the decision wait) and the
    /// decisions remembered for late spans (this rate times 120 s). Traces beyond
    /// it are decided early, on the spans that have arrived.
    #[serde(default = "default_expected_traces_per_second")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub expected_traces_per_second: u32,
}

/// What the collector is sized for when `expectedTracesPerSecond` is not set.
pub fn default_expected_traces_per_second() -> u32 {
    1000
}

/// A duration in Go notation: a sequence of numbers with units ns, us, ms, s, m, h,
/// for example `500ms`, `10m` or `1h30m`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Duration(
    #[schemars(
        length(min = 2, max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
    )]
    pub String,
);

impl Duration {
    /// Parses the Go-style duration. The schema pattern already guarantees the form.
    pub fn to_std(&self) -> Result<std::time::Duration, String> {
        parse_go_duration(&self.0)
    }
}

/// Where and how the collector runs. With `sampling.tail` it runs as two tiers:
/// routers (`replicas`, behind the Service the workloads send to; with
/// `PerNamespace` in each selected namespace) and one tier of samplers
/// (`sampling.replicas`, in `namespace`), so that every span of a trace is
/// decided by one sampler. Without `sampling.tail`, one tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || self.autoscaling.maxReplicas >= self.replicas").message("collector.autoscaling.maxReplicas must be at least collector.replicas, the least the autoscaler keeps").field_path(".autoscaling.maxReplicas"))]
pub struct CollectorSpec {
    /// Deploy a collector. False: workloads export straight to the single backend,
    /// and tail sampling is not available.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// `Central`: one collector in `namespace`. `PerNamespace`: one in each selected namespace.
    #[serde(default)]
    pub placement: Placement,

    /// Namespace of the central collector. Default: the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<DnsLabel>,

    /// Collector replicas (per namespace with `PerNamespace`). With
    /// `sampling.tail` these are the routers, which take the workloads' spans and
    /// pass each trace on to one sampler by its trace ID; they hold no trace, so
    /// any number works. Default 2, so that one pod going away loses no spans.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,

    /// A HorizontalPodAutoscaler for the collector (the routers with
    /// `sampling.tail`) between `replicas` and `maxReplicas` by CPU. The
    /// samplers are never autoscaled: every change of their number re-routes
    /// about 1/N of the traces in flight (see `sampling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<CollectorAutoscaling>,

    /// The sampler tier, run only with `sampling.tail`: the collectors that hold
    /// each trace until its decision. Every span of a trace reaches the same
    /// sampler, whichever router or namespace it entered by.
    #[serde(default)]
    pub sampling: SamplerSpec,

    /// Collector image. Default: a pinned otel/opentelemetry-collector-contrib release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,

    /// Compute resources of the collector container (the routers with
    /// `sampling.tail`, and the samplers unless `sampling.resources` is set).
    /// Its memory limit sizes the collector's `memory_limiter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for CollectorSpec {
    fn default() -> Self {
        CollectorSpec {
            enabled: true,
            placement: Placement::default(),
            namespace: None,
            replicas: default_replicas(),
            autoscaling: None,
            sampling: SamplerSpec::default(),
            image: None,
            resources: None,
        }
    }
}

/// Autoscaling of the collector (the routers with tail sampling) by CPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorAutoscaling {
    /// Most replicas (per namespace with `PerNamespace`); at least `collector.replicas`,
    /// which is the least.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU use the autoscaler keeps, in percent of the CPU request.
    #[serde(default = "default_target_cpu_utilization")]
    #[schemars(range(min = 10, max = 100))]
    pub target_cpu_utilization: i32,
}

/// The samplers: the collectors that take the tail-sampling decisions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SamplerSpec {
    /// Sampler replicas, in the collector's namespace (`collector.namespace`)
    /// whatever the placement. Changing it re-routes about 1/N of the traces in
    /// flight to another sampler, which decides on the part it gets; nothing
    /// else restarts. Default 2.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,

    /// Compute resources of each sampler. Default: `collector.resources`. Its
    /// memory limit sizes the samplers' `memory_limiter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for SamplerSpec {
    fn default() -> Self {
        SamplerSpec {
            replicas: default_replicas(),
            resources: None,
        }
    }
}

/// Collector placement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Placement {
    /// One collector in `collector.namespace`.
    #[default]
    Central,
    /// One collector in each selected namespace.
    PerNamespace,
}

/// A trace backend. Jaeger and Tempo both take OTLP.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Name of the backend, unique in the policy.
    pub name: DnsLabel,

    /// `jaeger`, `tempo` or `otlp`.
    #[serde(rename = "type")]
    pub kind: BackendType,

    /// OTLP endpoint, for example `http://jaeger-collector.observability.svc:4317`.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("endpoint must be an http:// or https:// URL with a host, for example http://jaeger-collector.observability.svc:4317"))]
    pub endpoint: String,

    /// OTLP transport: `grpc` or `http` (protobuf over HTTP).
    #[serde(default)]
    pub protocol: Protocol,

    /// TLS towards the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// A Secret in the collector's namespace whose keys become request headers
    /// (for example an API key). Its values are never written into a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretRef>,
}

/// Kind of trace backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    Jaeger,
    Tempo,
    Otlp,
}

/// OTLP transport.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Grpc,
    Http,
}

impl Protocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn otel_env_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http/protobuf",
        }
    }
}

/// TLS settings towards a backend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.insecure && has(self.caSecretRef))").message("tls.insecure and tls.caSecretRef exclude each other"))]
pub struct TlsSpec {
    /// Send without TLS (plain text).
    #[serde(default)]
    pub insecure: bool,
    /// A CA certificate in a Secret in the collector's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the collector's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret in the collector's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An extra environment variable set on every instrumented container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("!self.name.startsWith('OTEL_') && !self.name.startsWith('TRACING_OPERATOR_')").message("env names starting with OTEL_ or TRACING_OPERATOR_ are set by the operator itself").field_path(".name"))]
pub struct EnvTemplate {
    /// Variable name: letters, digits, '-', '.' and '_', starting and ending with a
    /// letter or digit, at most 63 characters (it also names a pod annotation).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z0-9]([-._a-zA-Z0-9]*[a-zA-Z0-9])?$")
    )]
    pub name: String,
    /// Value; `{service.name}`, `{service.version}`, `{service.namespace}` and
    /// `{deployment.environment.name}` are replaced per service.
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// How changes reach running pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// `Progressive`: a few workloads at a time, each waiting until healthy.
    /// `Immediate`: every workload at once.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// Workloads rolling out at once, at least 1.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent: i32,

    /// A workload not rolled out and available by then has failed, for example `10m`.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,

    /// What to do with a workload that failed: `Rollback` removes this policy's
    /// settings from it, `Pause` starts no new workload until the policy changes,
    /// `Continue` goes on.
    #[serde(default)]
    pub on_failure: OnFailure,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            strategy: RolloutStrategy::default(),
            max_concurrent: default_max_concurrent(),
            progress_deadline: default_progress_deadline(),
            on_failure: OnFailure::default(),
        }
    }
}

/// Rollout pacing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    #[default]
    Progressive,
    Immediate,
}

/// What happens to a workload whose rollout failed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnFailure {
    #[default]
    Rollback,
    Pause,
    Continue,
}

/// What the operator observed and did. Conditions are standard `metav1.Condition`s,
/// so `kubectl wait --for=condition=Ready` and kstatus-based tools work.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing`, `Degraded`, `Conflicted`, and kstatus's `Reconciling`
    /// (True while the operator is rolling out) and `Stalled` (True when it cannot
    /// make progress until something changes), which Flux and Argo CD read.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Workload counts.
    #[serde(default)]
    pub workloads: WorkloadCounts,

    /// Workloads that failed, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<WorkloadIssue>,

    /// Variables a workload sets itself and the operator therefore left alone, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_overrides: Vec<UserOverride>,

    /// Containers that have an agent language but get no agent, with the reason, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents_skipped: Vec<AgentSkip>,

    /// Workloads that carry this policy's settings, rolled out, but are unavailable
    /// for reasons of their own (a drain, a crash, a scale-up, their own release);
    /// the operator reports them and never rolls back because of them. At most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<WorkloadIssue>,

    /// Workloads waiting on their owner before the settings can start: paused, or
    /// in the middle of a rollout of their own. At most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<WorkloadIssue>,

    /// How the settings reach pods: `Admission` (the API server's
    /// MutatingAdmissionPolicy adds them to each new pod) or `PodTemplate` (the
    /// operator writes them into each workload's pod template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<String>,

    /// Workloads selected by this policy but owned by another, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<WorkloadIssue>,

    /// The collector workloads send to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorStatus>,

    /// What is kept (the head ratio, or the tail rules and the shares the collector
    /// applies), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<String>,

    /// Backend names, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<String>,

    /// In DryRun: what Enforce would change, at most 50 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedChange>,
}

/// Workload counts of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCounts {
    /// Workloads this policy selects and owns.
    pub selected: i32,
    /// Workloads whose pod template carries the current settings and has rolled out.
    pub up_to_date: i32,
    /// Workloads whose new template is rolling out.
    pub rolling_out: i32,
    /// Workloads that failed to take the settings.
    pub failed: i32,
    /// Workloads selected but owned by a policy that wins precedence.
    pub conflicted: i32,
    /// Up-to-date workloads that are unavailable for reasons of their own.
    #[serde(default)]
    pub unavailable: i32,
    /// Workloads waiting for a rollout slot or for their owner.
    #[serde(default)]
    pub waiting: i32,
    /// Variables kept because the workload sets them itself.
    pub user_overrides: i32,
    /// Workloads per agent language, and those with a language that get no agent
    /// in some container.
    #[serde(default, skip_serializing_if = "AgentCounts::is_zero")]
    pub agents: AgentCounts,
    /// `upToDate/selected`, for `kubectl get`.
    #[serde(default)]
    pub summary: String,
}

/// A workload that needs attention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct WorkloadIssue {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// A CamelCase reason, for example `ProgressDeadlineExceeded` or `ApplyRejected`.
    pub reason: String,
    pub message: String,
}

/// A variable a workload sets itself, kept instead of the policy's value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct UserOverride {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub container: String,
    pub variable: String,
}

/// The collector as workloads see it, and each of its tiers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorStatus {
    /// OTLP endpoint the workloads export to.
    pub endpoint: String,
    /// Ready replicas of the collector the workloads export to (the routers with
    /// tail sampling), summed over namespaces with PerNamespace.
    pub ready_replicas: i32,
    /// With tail sampling: the routers the workloads export to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routers: Option<CollectorTierStatus>,
    /// With tail sampling: the samplers the routers pass each trace to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samplers: Option<CollectorTierStatus>,
    /// What the collectors' own metrics (`:8888/metrics`) say they lost since
    /// they started, summed over the pods of every tier that answered. Read about once a
    /// minute; absent until a collector pod answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub losses: Option<CollectorLosses>,
}

/// One tier of the collector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorTierStatus {
    /// Where the tier takes spans: the routers' OTLP endpoint (the workloads'),
    /// or the samplers' headless Service, which the routers resolve to the
    /// ready samplers' addresses.
    pub endpoint: String,
    /// Replicas the tier runs (summed over namespaces).
    pub replicas: i32,
    /// Ready replicas (summed over namespaces).
    pub ready_replicas: i32,
}

/// Spans and traces the collectors lost, counted since each collector started.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorLosses {
    /// Collector pods whose metrics were read.
    pub pods_read: i32,
    /// Collector pods that did not answer (they are not counted).
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub pods_unreachable: i32,
    /// Spans the receivers refused to the SDKs, the memory limiter's refusals
    /// among them (`otelcol_receiver_refused_spans`).
    pub spans_refused: u64,
    /// Spans the exporters failed to deliver or could not queue
    /// (`otelcol_exporter_send_failed_spans` + `otelcol_exporter_enqueue_failed_spans`).
    pub spans_export_failed: u64,
    /// Traces the tail sampler decided before `decisionWait` because it held as many
    /// as it is sized for (`..._sampling_trace_dropped_too_early`): raise
    /// `sampling.tail.expectedTracesPerSecond`.
    pub traces_decided_early: u64,
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

/// One change DryRun would make.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct PlannedChange {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `Apply` (set or update the settings) or `Remove`.
    pub action: String,
    /// Variables per container, as `container: NAME=..., NAME=...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
}

/// The CRD as YAML, exactly what `tracing-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(&TracingPolicy::crd())
}

/// Parses a Go-style duration such as `500ms`, `10m` or `1h30m`.
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: use numbers with units ns, us, ms, s, m, h, for example 500ms or 10m"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests;
