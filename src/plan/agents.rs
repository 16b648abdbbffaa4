//! Zero-code tracing: which workloads get an OpenTelemetry agent, in which of
//! their containers, and what that adds to their pods.
//!
//! Rules this module decides (the tests pin them):
//! - **Language**, first found wins: the first of `spec.instrumentation.nodejs`,
//!   `java`, `python`, `dotnet` whose `selector` matches the workload's own labels;
//!   the annotation `instrumentation.tracing.caas.io/language` (pod template, then
//!   workload); the OpenTelemetry Operator's
//!   `instrumentation.opentelemetry.io/inject-<language>` annotations (pod template,
//!   then workload; any value but `false` injects, in the same language order). A
//!   language annotation naming something else, or an OpenTelemetry Operator
//!   annotation of a language without an agent here (`go`, `apache-httpd`,
//!   `nginx`, `php`), is reported and the workload gets the SDK env only. No
//!   language: the SDK env only, as without this module.
//! - **Containers**: those the env goes to ([`super::selection::Selection::containers`]).
//!   A container is skipped, with a reason in status, when
//!   - injection is PodTemplate: agents need the admission policy (`PodTemplateInjection`);
//!   - `skipIfSdkPresent` and its own env configures OpenTelemetry already
//!     (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//!     `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, a `-javaagent` in `JAVA_TOOL_OPTIONS`;
//!     .NET also `OTEL_DOTNET_AUTO_HOME` and the `CORECLR_PROFILER*` variables):
//!     `SdkPresent`;
//!   - it sets a variable the agent appends to (`NODE_OPTIONS`, `JAVA_TOOL_OPTIONS`,
//!     `PYTHONPATH`, the .NET path lists) with `valueFrom`, which cannot be appended
//!     to: `ValueFrom`.
//!
//!   The Python agent's image carries only the OTLP/HTTP exporter, so a Python
//!   workload whose traces go out over gRPC (collector off, gRPC backend) is
//!   skipped whole (`UnsupportedProtocol`).
//! - **The pod** ([`AgentPlan`]): one `emptyDir` volume, one init container that
//!   copies the agent into it (non-root, read-only root filesystem, no
//!   capabilities, seccomp `RuntimeDefault`), the volume mounted read-only at
//!   [`MOUNT_PATH`] in each agent container, and the language's variables
//!   ([`AgentVar`]): a startup variable joined with the container's own value, or
//!   a default the container's own value overrides.
//!
//! Only an [`AgentPlan`] reaches the pod, so only it enters the config hash: a
//! workload without an agent keeps the hash it had before agents existed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::env::{PROTOCOL_VAR, SERVICE_NAME_VAR};
use super::selection::LabelMatcher;
use super::{Container, Injection, PlanError, PlannedValue, PlannedVar, Workload};
use crate::api::{
    AgentSpec, InstrumentationSpec, LANGUAGE_ANNOTATION, LIBC_ANNOTATION,
    OTEL_DOTNET_RUNTIME_ANNOTATION, OTEL_INJECT_ANNOTATION_PREFIX, OTEL_PYTHON_PLATFORM_ANNOTATION,
    TracingPolicySpec,
};

/// Where each agent container mounts the agent volume.
pub const MOUNT_PATH: &str = "/otel-auto-instrumentation";
/// The agent volume, and the init container that fills it.
pub const VOLUME_NAME: &str = "tracing-operator-agent";
pub const INIT_CONTAINER_NAME: &str = "tracing-operator-agent";
/// The init container runs as this user: the upstream images (busybox) would
/// run as root, which `runAsNonRoot` refuses.
pub const INIT_CONTAINER_USER: i64 = 65532;
/// `emptyDir.sizeLimit` when `volumeSizeLimit` is not set.
pub const DEFAULT_VOLUME_SIZE_LIMIT: &str = "200Mi";
/// The init container's resources when `resources` is not set.
pub const DEFAULT_RESOURCES: [(&str, &str); 4] = [
    ("limits.cpu", "500m"),
    ("limits.memory", "256Mi"),
    ("requests.cpu", "50m"),
    ("requests.memory", "64Mi"),
];
/// Where the upstream images are published.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/open-telemetry/opentelemetry-operator";

/// A language with an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Language {
    NodeJs,
    Java,
    Python,
    DotNet,
}

impl Language {
    /// In precedence order (a workload several selectors match gets the first).
    pub const ALL: [Language; 4] = [
        Language::NodeJs,
        Language::Java,
        Language::Python,
        Language::DotNet,
    ];

    /// The annotation value, the `spec.instrumentation` field and the
    /// OpenTelemetry Operator's `inject-<language>` suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::NodeJs => "nodejs",
            Language::Java => "java",
            Language::Python => "python",
            Language::DotNet => "dotnet",
        }
    }

    pub fn parse(value: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.as_str() == value)
    }

    /// The pinned upstream image: the newest tag published from the OpenTelemetry
    /// Operator's `autoinstrumentation/` folder (Node.js: the newest whose agent
    /// still runs on Node 20).
    pub fn default_image(self) -> String {
        let tag = match self {
            Language::NodeJs => "0.78.0",
            Language::Java => "2.31.0",
            Language::Python => "0.65b0",
            Language::DotNet => "1.16.0",
        };
        format!(
            "{IMAGE_REPOSITORY}/autoinstrumentation-{}:{tag}",
            self.as_str()
        )
    }

    fn spec(self, s: &InstrumentationSpec) -> &AgentSpec {
        match self {
            Language::NodeJs => &s.nodejs,
            Language::Java => &s.java,
            Language::Python => &s.python,
            Language::DotNet => &s.dotnet,
        }
    }

    /// What the init container runs: copy the agent from where the upstream image
    /// keeps it into the volume.
    fn copy_command(self, libc: Libc) -> Vec<String> {
        let source = match (self, libc) {
            (Language::Java, _) => {
                return [
                    "cp",
                    "/javaagent.jar",
                    &format!("{MOUNT_PATH}/javaagent.jar"),
                ]
                .map(String::from)
                .to_vec();
            }
            (Language::Python, Libc::Musl) => "/autoinstrumentation-musl/.",
            _ => "/autoinstrumentation/.",
        };
        ["cp", "-r", source, MOUNT_PATH].map(String::from).to_vec()
    }

    /// The variables that switch the agent on, in the order they are added.
    fn vars(self, libc: Libc) -> Vec<AgentVar> {
        let join = |name, separator, before: String, after: String| AgentVar {
            name,
            edit: Edit::Join {
                separator,
                before,
                after,
            },
        };
        let default = |name, value: String| AgentVar {
            name,
            edit: Edit::Default(value),
        };
        let m = MOUNT_PATH;
        match self {
            Language::NodeJs => vec![join(
                "NODE_OPTIONS",
                Separator::Space,
                String::new(),
                format!("--require {m}/autoinstrumentation.js"),
            )],
            Language::Java => vec![join(
                "JAVA_TOOL_OPTIONS",
                Separator::Space,
                String::new(),
                format!("-javaagent:{m}/javaagent.jar"),
            )],
            Language::Python => vec![
                join(
                    "PYTHONPATH",
                    Separator::Colon,
                    format!("{m}/opentelemetry/instrumentation/auto_instrumentation"),
                    m.to_string(),
                ),
                // The image carries the OTLP/HTTP exporter only.
                default("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ],
            Language::DotNet => {
                let native = match libc {
                    Libc::Glibc => "linux",
                    Libc::Musl => "linux-musl",
                };
                vec![
                    default("CORECLR_ENABLE_PROFILING", "1".into()),
                    default(
                        "CORECLR_PROFILER",
                        "{918728DD-259F-4A6A-AC2B-B85E1B658318}".into(),
                    ),
                    default(
                        "CORECLR_PROFILER_PATH",
                        format!("{m}/{native}/OpenTelemetry.AutoInstrumentation.Native.so"),
                    ),
                    join(
                        "DOTNET_STARTUP_HOOKS",
                        Separator::Colon,
                        String::new(),
                        format!("{m}/net/OpenTelemetry.AutoInstrumentation.StartupHook.dll"),
                    ),
                    join(
                        "DOTNET_ADDITIONAL_DEPS",
                        Separator::Colon,
                        String::new(),
                        format!("{m}/AdditionalDeps"),
                    ),
                    join(
                        "DOTNET_SHARED_STORE",
                        Separator::Colon,
                        String::new(),
                        format!("{m}/store"),
                    ),
                    default("OTEL_DOTNET_AUTO_HOME", m.to_string()),
                ]
            }
        }
    }

    /// Variables that, set by the container itself, mean it configures
    /// OpenTelemetry (or another profiler) already.
    fn sdk_markers(self) -> &'static [&'static str] {
        const COMMON: &[&str] = &[
            SERVICE_NAME_VAR,
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            super::env::ENDPOINT_VAR,
        ];
        const DOTNET: &[&str] = &[
            SERVICE_NAME_VAR,
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            super::env::ENDPOINT_VAR,
            "OTEL_DOTNET_AUTO_HOME",
            "CORECLR_ENABLE_PROFILING",
            "CORECLR_PROFILER",
            "CORECLR_PROFILER_PATH",
        ];
        match self {
            Language::DotNet => DOTNET,
            _ => COMMON,
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a workload's language came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `spec.instrumentation.<language>.selector`.
    PolicySelector,
    /// `instrumentation.tracing.caas.io/language`.
    LanguageAnnotation,
    /// `instrumentation.opentelemetry.io/inject-<language>`.
    OtelOperatorAnnotation,
}

/// The C library of the workload's image: the Python and .NET agents have a
/// build for each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Libc {
    #[default]
    Glibc,
    Musl,
}

impl Libc {
    pub fn as_str(self) -> &'static str {
        match self {
            Libc::Glibc => "glibc",
            Libc::Musl => "musl",
        }
    }
}

/// How the admission policy joins a startup variable with the container's own value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Separator {
    Space,
    Colon,
}

impl Separator {
    pub fn as_str(self) -> &'static str {
        match self {
            Separator::Space => "space",
            Separator::Colon => "colon",
        }
    }
}

/// What one agent variable becomes in a container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Edit {
    /// `before`, the container's own value and `after`, the empty ones left out,
    /// joined by `separator`; the variable is added when the container lacks it.
    Join {
        separator: Separator,
        before: String,
        after: String,
    },
    /// Added with this value unless the container sets the variable itself.
    Default(String),
}

impl Edit {
    /// The value for a container whose own value is `user` (`""`: none).
    pub fn apply(&self, user: &str) -> String {
        match self {
            Edit::Join {
                separator,
                before,
                after,
            } => {
                let sep = match separator {
                    Separator::Space => " ",
                    Separator::Colon => ":",
                };
                [before.as_str(), user, after.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(sep)
            }
            Edit::Default(value) if user.is_empty() => value.clone(),
            Edit::Default(_) => user.to_string(),
        }
    }
}

/// One variable the agent needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentVar {
    pub name: &'static str,
    pub edit: Edit,
}

/// What the pods of a workload with an agent get (admission adds it).
#[derive(Clone, Debug, PartialEq)]
pub struct AgentPlan {
    pub language: Language,
    pub source: Source,
    pub libc: Libc,
    pub image: String,
    /// The init container's command.
    pub command: Vec<String>,
    /// `limits.cpu` → `500m`, ...: the init container's resources, sorted.
    pub resources: Vec<(String, String)>,
    pub volume_size_limit: String,
    /// The containers that get the agent, in pod order.
    pub containers: Vec<String>,
    pub vars: Vec<AgentVar>,
}

/// Why a container with a language gets no agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Its own env configures OpenTelemetry already (through this variable).
    SdkPresent(String),
    /// It sets this startup variable with `valueFrom`.
    ValueFrom(String),
    PodTemplateInjection,
    /// The language annotation names no language with an agent.
    UnknownLanguage,
    /// The OpenTelemetry Operator annotation names a language without an agent here.
    UnsupportedLanguage,
    /// The Python agent exports OTLP/HTTP only; the policy sends gRPC.
    UnsupportedProtocol,
    /// The libc annotation is neither `glibc` nor `musl`.
    UnknownLibc(String),
    /// The policy's own `env` sets this variable, which the agent needs.
    EnvConflict(String),
}

impl SkipReason {
    /// The CamelCase reason status shows.
    pub fn reason(&self) -> &'static str {
        match self {
            SkipReason::SdkPresent(_) => "SdkPresent",
            SkipReason::ValueFrom(_) => "ValueFrom",
            SkipReason::PodTemplateInjection => "PodTemplateInjection",
            SkipReason::UnknownLanguage => "UnknownLanguage",
            SkipReason::UnsupportedLanguage => "UnsupportedLanguage",
            SkipReason::UnsupportedProtocol => "UnsupportedProtocol",
            SkipReason::UnknownLibc(_) => "UnknownLibc",
            SkipReason::EnvConflict(_) => "EnvConflict",
        }
    }

    /// What status says, for a container (or the workload) of `language`.
    pub fn message(&self, language: &str) -> String {
        match self {
            SkipReason::SdkPresent(var) if var == "JAVA_TOOL_OPTIONS" => format!(
                "its JAVA_TOOL_OPTIONS loads a -javaagent already: SDK env only, no {language} agent"
            ),
            SkipReason::SdkPresent(var) => format!(
                "it sets {var} itself, so it configures OpenTelemetry already: SDK env only, no {language} agent (instrumentation.skipIfSdkPresent)"
            ),
            SkipReason::ValueFrom(var) => format!(
                "its {var} comes from valueFrom, which the {language} agent's flags cannot be appended to"
            ),
            SkipReason::PodTemplateInjection => format!(
                "the {language} agent needs admission injection (a MutatingAdmissionPolicy); with PodTemplate injection the workload gets the SDK env only"
            ),
            SkipReason::UnknownLanguage => format!(
                "{LANGUAGE_ANNOTATION}: {language:?} is not one of nodejs, java, python, dotnet"
            ),
            SkipReason::UnsupportedLanguage => format!(
                "{OTEL_INJECT_ANNOTATION_PREFIX}{language}: no {language} agent is injected by this operator; the workload gets the SDK env only"
            ),
            SkipReason::UnsupportedProtocol => format!(
                "the {language} agent's image exports OTLP over HTTP only, and this policy's traces go out over gRPC (collector off, backend protocol grpc)"
            ),
            SkipReason::UnknownLibc(value) => {
                format!("{LIBC_ANNOTATION}: {value:?} is neither glibc nor musl")
            }
            SkipReason::EnvConflict(var) => {
                format!("spec.env sets {var}, which the {language} agent needs: SDK env only")
            }
        }
    }
}

/// A container (or, with `container: None`, the whole workload) that has a
/// language but gets no agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub container: Option<String>,
    /// The language, or what an annotation named.
    pub language: String,
    pub reason: SkipReason,
}

impl Skip {
    pub fn message(&self) -> String {
        self.reason.message(&self.language)
    }
}

/// The agent decision of one workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentDecision {
    /// Set when at least one container gets the agent (boxed: most workloads have none).
    pub plan: Option<Box<AgentPlan>>,
    pub skipped: Vec<Skip>,
}

impl AgentDecision {
    /// What status needs of it, kept in the policy's index.
    pub fn summary(&self) -> AgentSummary {
        AgentSummary {
            language: self.plan.as_ref().map(|p| p.language),
            skipped: self.skipped.clone(),
        }
    }
}

/// A workload's agent as status reports it: the language its pods get, and
/// the containers skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentSummary {
    pub language: Option<Language>,
    pub skipped: Vec<Skip>,
}

impl AgentSummary {
    pub fn is_empty(&self) -> bool {
        self.language.is_none() && self.skipped.is_empty()
    }
}

/// A policy's `spec.instrumentation`, with its selectors compiled once.
#[derive(Clone, Debug, Default)]
pub struct Languages {
    spec: InstrumentationSpec,
    selectors: Vec<(Language, LabelMatcher)>,
}

impl Languages {
    /// The only error is an invalid selector, named by its field.
    pub fn new(spec: &TracingPolicySpec) -> Result<Self, PlanError> {
        let spec = spec.instrumentation.clone().unwrap_or_default();
        let mut selectors = Vec::new();
        for language in Language::ALL {
            if let Some(selector) = &language.spec(&spec).selector {
                let matcher = LabelMatcher::compile("selector", selector).map_err(|e| {
                    PlanError::InvalidAgentSelector {
                        language: language.as_str(),
                        message: match e {
                            PlanError::InvalidSelector { message, .. } => message,
                            other => other.to_string(),
                        },
                    }
                })?;
                selectors.push((language, matcher));
            }
        }
        Ok(Languages { spec, selectors })
    }

    /// The workload's language and where it came from; `Err` when an annotation
    /// asks for something there is no agent for.
    pub fn language_of(&self, w: &Workload) -> Option<Result<(Language, Source), Skip>> {
        if let Some((language, _)) = self
            .selectors
            .iter()
            .find(|(_, m)| m.matches_small(&w.labels))
        {
            return Some(Ok((*language, Source::PolicySelector)));
        }
        let annotation = |key: &str| {
            [&w.template.annotations, &w.annotations]
                .into_iter()
                .filter_map(|a| a.get(key))
                .map(|v| v.trim())
                .find(|v| !v.is_empty())
        };
        if let Some(value) = annotation(LANGUAGE_ANNOTATION) {
            return Some(match Language::parse(&value.to_ascii_lowercase()) {
                Some(language) => Ok((language, Source::LanguageAnnotation)),
                None => Err(Skip {
                    container: None,
                    language: value.to_string(),
                    reason: SkipReason::UnknownLanguage,
                }),
            });
        }
        let injects = |suffix: &str| {
            annotation(&format!("{OTEL_INJECT_ANNOTATION_PREFIX}{suffix}"))
                .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
        };
        if let Some(language) = Language::ALL.into_iter().find(|l| injects(l.as_str())) {
            return Some(Ok((language, Source::OtelOperatorAnnotation)));
        }
        ["go", "apache-httpd", "nginx", "php"]
            .into_iter()
            .find(|s| injects(s))
            .map(|s| {
                Err(Skip {
                    container: None,
                    language: s.to_string(),
                    reason: SkipReason::UnsupportedLanguage,
                })
            })
    }

    /// The libc of the workload's image, from its annotations.
    fn libc_of(w: &Workload, language: Language) -> Result<Libc, String> {
        let annotation = |key: &str| {
            [&w.template.annotations, &w.annotations]
                .into_iter()
                .filter_map(|a| a.get(key))
                .map(|v| v.trim().to_ascii_lowercase())
                .find(|v| !v.is_empty())
        };
        let otel = match language {
            Language::Python => annotation(OTEL_PYTHON_PLATFORM_ANNOTATION),
            Language::DotNet => {
                annotation(OTEL_DOTNET_RUNTIME_ANNOTATION).map(|v| match v.as_str() {
                    "linux-musl-x64" | "linux-musl-arm64" => "musl".to_string(),
                    "linux-x64" | "linux-arm64" => "glibc".to_string(),
                    _ => v,
                })
            }
            _ => None,
        };
        match annotation(LIBC_ANNOTATION).or(otel).as_deref() {
            None | Some("glibc") => Ok(Libc::Glibc),
            Some("musl") => Ok(Libc::Musl),
            Some(other) => Err(other.to_string()),
        }
    }

    /// The agent decision for `w`, whose env goes to `containers` (in pod order)
    /// as `vars` (the workload's planned SDK env).
    pub fn decide(
        &self,
        w: &Workload,
        containers: &[&Container],
        vars: &[PlannedVar],
        injection: Injection,
    ) -> AgentDecision {
        let (language, source) = match self.language_of(w) {
            None => return AgentDecision::default(),
            Some(Err(skip)) => {
                return AgentDecision {
                    plan: None,
                    skipped: vec![skip],
                };
            }
            Some(Ok(found)) => found,
        };
        let whole = |reason| AgentDecision {
            plan: None,
            skipped: vec![Skip {
                container: None,
                language: language.as_str().to_string(),
                reason,
            }],
        };
        let libc = match Self::libc_of(w, language) {
            Ok(libc) => libc,
            Err(value) => return whole(SkipReason::UnknownLibc(value)),
        };
        let grpc = vars.iter().any(|v| {
            v.name == PROTOCOL_VAR
                && v.value
                    == PlannedValue::Literal(crate::api::Protocol::Grpc.otel_env_value().into())
        });
        if language == Language::Python && grpc {
            return whole(SkipReason::UnsupportedProtocol);
        }

        let agent_vars = language.vars(libc);
        if let Some(v) = agent_vars
            .iter()
            .find(|a| vars.iter().any(|v| v.name == a.name))
        {
            return whole(SkipReason::EnvConflict(v.name.to_string()));
        }
        let mut skipped = Vec::new();
        let mut chosen = Vec::new();
        for c in containers {
            let reason = if injection == Injection::PodTemplate {
                Some(SkipReason::PodTemplateInjection)
            } else if let Some(var) = self.sdk_present(language, c) {
                Some(SkipReason::SdkPresent(var))
            } else {
                agent_vars
                    .iter()
                    .filter(|v| matches!(v.edit, Edit::Join { .. }))
                    .find(|v| c.entry(v.name).is_some_and(|e| e.value_from))
                    .map(|v| SkipReason::ValueFrom(v.name.to_string()))
            };
            match reason {
                Some(reason) => skipped.push(Skip {
                    container: Some(c.name.to_string()),
                    language: language.as_str().to_string(),
                    reason,
                }),
                None => chosen.push(c.name.to_string()),
            }
        }
        if chosen.is_empty() {
            return AgentDecision {
                plan: None,
                skipped,
            };
        }
        let spec = language.spec(&self.spec);
        let resources = match &spec.resources {
            Some(r) => {
                let mut list = Vec::new();
                for (section, map) in [("limits", &r.limits), ("requests", &r.requests)] {
                    for (key, quantity) in map {
                        list.push((format!("{section}.{key}"), quantity.0.clone()));
                    }
                }
                list
            }
            None => DEFAULT_RESOURCES
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        AgentDecision {
            plan: Some(Box::new(AgentPlan {
                language,
                source,
                libc,
                image: spec
                    .image
                    .clone()
                    .unwrap_or_else(|| language.default_image()),
                command: language.copy_command(libc),
                resources,
                volume_size_limit: spec
                    .volume_size_limit
                    .clone()
                    .unwrap_or_else(|| DEFAULT_VOLUME_SIZE_LIMIT.to_string()),
                containers: chosen,
                vars: agent_vars,
            })),
            skipped,
        }
    }

    /// The variable through which `c` configures OpenTelemetry itself, if it
    /// does and `skipIfSdkPresent` is on.
    fn sdk_present(&self, language: Language, c: &Container) -> Option<String> {
        if !self.spec.skip_if_sdk_present {
            return None;
        }
        if c.java_agent {
            return Some("JAVA_TOOL_OPTIONS".to_string());
        }
        language
            .sdk_markers()
            .iter()
            .find(|name| c.user_sets(name))
            .map(|name| name.to_string())
    }
}

/// The config hash of a plan with `agent`: the SDK env's hash `base` and the
/// agent plan, 16 hex digits like [`super::env::config_hash`].
pub fn config_hash(base: &str, agent: &AgentPlan) -> String {
    fn put(h: &mut Sha256, s: &str) {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    let mut h = Sha256::new();
    put(&mut h, "tracing-operator/agent-hash/v1");
    put(&mut h, base);
    for (k, v) in template_fields(agent) {
        put(&mut h, &k);
        put(&mut h, &v);
    }
    let digest = h.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The agent plan as the plain strings the admission policy reads, keyed by
/// annotation (see `plan::injection`).
pub fn template_fields(agent: &AgentPlan) -> BTreeMap<String, String> {
    use super::injection::{
        AGENT_ANNOTATION, AGENT_COMMAND_ANNOTATION, AGENT_CONTAINERS_ANNOTATION,
        AGENT_ENV_ANNOTATION, AGENT_ENV_PREFIX, AGENT_IMAGE_ANNOTATION, AGENT_RESOURCES_ANNOTATION,
        AGENT_VOLUME_SIZE_ANNOTATION,
    };
    let mut out = BTreeMap::new();
    out.insert(
        AGENT_ANNOTATION.to_string(),
        agent.language.as_str().to_string(),
    );
    out.insert(AGENT_IMAGE_ANNOTATION.to_string(), agent.image.clone());
    out.insert(
        AGENT_CONTAINERS_ANNOTATION.to_string(),
        agent.containers.join(","),
    );
    out.insert(
        AGENT_COMMAND_ANNOTATION.to_string(),
        agent.command.join(" "),
    );
    out.insert(
        AGENT_RESOURCES_ANNOTATION.to_string(),
        agent
            .resources
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    out.insert(
        AGENT_VOLUME_SIZE_ANNOTATION.to_string(),
        agent.volume_size_limit.clone(),
    );
    out.insert(
        AGENT_ENV_ANNOTATION.to_string(),
        agent
            .vars
            .iter()
            .map(|v| v.name)
            .collect::<Vec<_>>()
            .join(","),
    );
    for var in &agent.vars {
        let value = match &var.edit {
            Edit::Join {
                separator,
                before,
                after,
            } => format!("{}|{before}|{after}", separator.as_str()),
            Edit::Default(value) => format!("default|{value}|"),
        };
        out.insert(format!("{AGENT_ENV_PREFIX}{}", var.name), value);
    }
    out
}

#[cfg(test)]
mod tests;
