//! `spec.instrumentation`: zero-code tracing, the OpenTelemetry agent of a
//! workload's language injected into its pods at admission, and what status
//! reports about it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_true;

/// Pod-template or workload annotation naming the language of a workload's agent:
/// `nodejs`, `java`, `python` or `dotnet`.
pub const LANGUAGE_ANNOTATION: &str = "instrumentation.tracing.caas.io/language";
/// Pod-template or workload annotation: `musl` for images built on musl libc
/// (Alpine); the Python and .NET agents then use their musl builds. Default `glibc`.
pub const LIBC_ANNOTATION: &str = "instrumentation.tracing.caas.io/libc";
/// The OpenTelemetry Operator's annotations, `instrumentation.opentelemetry.io/inject-<language>`,
/// honoured so workloads move over without edits.
pub const OTEL_INJECT_ANNOTATION_PREFIX: &str = "instrumentation.opentelemetry.io/inject-";
/// The OpenTelemetry Operator's Python libc choice (`musl` or `glibc`).
pub const OTEL_PYTHON_PLATFORM_ANNOTATION: &str =
    "instrumentation.opentelemetry.io/otel-python-platform";
/// The OpenTelemetry Operator's .NET runtime choice (`linux-musl-x64` or `linux-x64`).
pub const OTEL_DOTNET_RUNTIME_ANNOTATION: &str =
    "instrumentation.opentelemetry.io/otel-dotnet-auto-runtime";

/// Zero-code tracing: the OpenTelemetry agent of each workload's language,
/// copied into its pods by an init container and switched on by the
/// language's startup variable, next to the SDK env. Needs admission injection
/// (`status.injection: Admission`). A workload's language comes from, in this
/// order: the first language below whose `selector` matches the workload, its
/// annotation `instrumentation.tracing.caas.io/language`, or the OpenTelemetry
/// Operator's `instrumentation.opentelemetry.io/inject-<language>` annotations.
/// A workload without a language gets the SDK env only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstrumentationSpec {
    /// A container whose own env already configures OpenTelemetry (it sets
    /// `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or loads a `-javaagent`) gets the SDK
    /// env only, never a second agent; status counts it as skipped. False injects
    /// the agent anyway.
    #[serde(default = "default_true")]
    pub skip_if_sdk_present: bool,

    /// The Node.js agent (`@opentelemetry/auto-instrumentations-node`), switched on
    /// by ` --require <mount>/autoinstrumentation.js` appended to `NODE_OPTIONS`.
    #[serde(default)]
    pub nodejs: AgentSpec,

    /// The Java agent (`opentelemetry-javaagent`), switched on by
    /// ` -javaagent:<mount>/javaagent.jar` appended to `JAVA_TOOL_OPTIONS`.
    #[serde(default)]
    pub java: AgentSpec,

    /// The Python agent (`opentelemetry-distro` and its instrumentations), switched
    /// on by `PYTHONPATH`. Its image carries the OTLP/HTTP exporter only.
    #[serde(default)]
    pub python: AgentSpec,

    /// The .NET agent (`opentelemetry-dotnet-instrumentation`), switched on by the
    /// `CORECLR_*`, `DOTNET_STARTUP_HOOKS`, `DOTNET_ADDITIONAL_DEPS`,
    /// `DOTNET_SHARED_STORE` and `OTEL_DOTNET_AUTO_HOME` variables.
    #[serde(default)]
    pub dotnet: AgentSpec,
}

impl Default for InstrumentationSpec {
    fn default() -> Self {
        InstrumentationSpec {
            skip_if_sdk_present: true,
            nodejs: AgentSpec::default(),
            java: AgentSpec::default(),
            python: AgentSpec::default(),
            dotnet: AgentSpec::default(),
        }
    }
}

/// One language's agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Workloads whose own labels (`metadata.labels`) match get this language's
    /// agent, whatever their annotations say. When several languages' selectors
    /// match, the first of nodejs, java, python, dotnet wins. Omitted: the language
    /// comes from the workload's annotations only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// The image the init container copies the agent from, laid out as the upstream
    /// `ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-<language>`
    /// images are (`/autoinstrumentation/`; Java: `/javaagent.jar`). Default: a pinned
    /// upstream release (see docs/tracingpolicy.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^\S+$"))]
    pub image: Option<String>,

    /// Compute resources of the init container. Default: requests cpu 50m,
    /// memory 64Mi; limits cpu 500m, memory 256Mi. Set, it replaces the default
    /// whole (`{}`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<AgentResources>,

    /// Size limit of the `emptyDir` volume the agent is copied into, for example
    /// `200Mi` (the default). A pod whose agent outgrows it is evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("volumeSizeLimit must be a positive quantity, for example 200Mi"))]
    pub volume_size_limit: Option<String>,
}

/// Compute resources of an agent's init container, as in a container's
/// `resources` (`cpu`, `memory`, `ephemeral-storage`, ...).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || !isQuantity(self.requests[k]) || !isQuantity(self.limits[k]) || quantity(self.requests[k]).compareTo(quantity(self.limits[k])) <= 0)").message("resources.requests must not exceed resources.limits").field_path(".requests"))]
pub struct AgentResources {
    /// Most the init container may use, for example `{cpu: 500m, memory: 256Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8))]
    #[x_kube(validation = Rule::new("self.all(k, isQuantity(self[k]))").message("resources.limits: every value must be a quantity, for example 500m or 256Mi"))]
    pub limits: BTreeMap<String, QuantityText>,
    /// What the scheduler reserves for it, for example `{cpu: 50m, memory: 64Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8))]
    #[x_kube(validation = Rule::new("self.all(k, isQuantity(self[k]))").message("resources.requests: every value must be a quantity, for example 50m or 64Mi"))]
    pub requests: BTreeMap<String, QuantityText>,
}

/// A resource quantity written as a string, for example `500m` or `256Mi`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(transparent)]
pub struct QuantityText(#[schemars(length(min = 1, max = 32))] pub String);

/// Agent counts of a policy's selected workloads (a workload whose rollout was
/// rolled back runs without its agent and is not counted).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
pub struct AgentCounts {
    /// Workloads whose pods get the Node.js agent.
    pub nodejs: i32,
    /// Workloads whose pods get the Java agent.
    pub java: i32,
    /// Workloads whose pods get the Python agent.
    pub python: i32,
    /// Workloads whose pods get the .NET agent.
    pub dotnet: i32,
    /// Workloads with a language of which at least one selected container gets no
    /// agent (see `status.agentsSkipped`).
    pub skipped: i32,
}

impl AgentCounts {
    pub fn is_zero(&self) -> bool {
        *self == AgentCounts::default()
    }
}

/// A container that has a language but gets no agent, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct AgentSkip {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The container; empty when the whole workload is skipped.
    pub container: String,
    /// `nodejs`, `java`, `python`, `dotnet`, or what the annotation named.
    pub language: String,
    /// A CamelCase reason: `SdkPresent`, `ValueFrom`, `PodTemplateInjection`,
    /// `UnknownLanguage`, `UnsupportedLanguage`, `UnsupportedProtocol`,
    /// `UnknownLibc`, `EnvConflict`.
    pub reason: String,
    pub message: String,
}
