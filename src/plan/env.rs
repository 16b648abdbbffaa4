//! The variables the operator gives each instrumented container: the contract's
//! table (`docs/tracingpolicy.md`), planned once per workload.
//!
//! A [`WorkloadPlan`] is the same for every selected container except for three
//! things only the container knows: its name (`k8s.container.name`), its
//! version (`service.version`: the pod's `app.kubernetes.io/version` label, else
//! the container's image tag) and the variables it sets itself. So the plan keeps
//! one ordered list of [`PlannedVar`]s and `plan::injection` materializes it per
//! container: in the API server at pod creation (admission injection, which reads
//! the label and the image tag from the pod being created, so an image bump needs
//! no second rollout), or in the operator for the pod template.
//!
//! Rules this module decides (the tests pin them):
//! - Order: the two downward-API helpers first, then `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, exporters, propagators, sampler, then the policy's
//!   `env` templates in spec order. Kubernetes resolves `$(VAR)` only against
//!   entries that come earlier in the list, hence the helpers first.
//! - `OTEL_RESOURCE_ATTRIBUTES` holds `service.version` (when there is one), then
//!   the identity attributes in a fixed order (`deployment.environment.name`,
//!   `service.namespace`, `k8s.namespace.name`, `k8s.<kind>.name`, `k8s.pod.name`,
//!   `k8s.node.name`), then the other attributes sorted by key, then
//!   `k8s.container.name`.
//! - Duplicate keys: an identity attribute the operator computes cannot be
//!   overridden. `service.version` and `deployment.environment.name` may have no
//!   value (no label, no tag; no `service.environment`); then an attribute of the
//!   same key from the policy or a namespace label fills them. `service.name` is
//!   never taken from attributes: `OTEL_SERVICE_NAME` defines it. Among the
//!   sources of extra attributes, `service.resourceAttributes` wins over
//!   `service.attributesFromNamespaceLabels`, which wins over
//!   `service.namespaceLabels` (`k8s.namespace.label.<label>`).
//! - The `env` templates see the values that went into `OTEL_RESOURCE_ATTRIBUTES`;
//!   a missing one is `""`.
//! - Values in `OTEL_RESOURCE_ATTRIBUTES` are percent-encoded (W3C baggage
//!   octets; also `%`, `=` and `$`, the last so Kubernetes never expands a `$(…)`
//!   that came from user data). Values the operator substitutes into
//!   `OTEL_SERVICE_NAME` and the `env` templates have every `$` doubled, which
//!   Kubernetes turns back into one `$`, for the same reason; the literal text
//!   of a template is left as the policy author wrote it.
//! - The user wins: a variable the container sets itself (and the operator does
//!   not own) is not set and is reported. When the user sets
//!   `OTEL_RESOURCE_ATTRIBUTES`, the helpers (which only serve it) are left out too.

use crate::workload::SmallMap;
use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{
    Container, ContainerPlan, Injection, NamespaceView, PolicyView, Workload, WorkloadPlan,
    export_target,
};
pub use crate::workload::{NAME_LABEL, SERVICE_NAME_ANNOTATION, VERSION_LABEL};

/// Downward-API helper holding the pod name, referenced from `OTEL_RESOURCE_ATTRIBUTES`.
pub const POD_NAME_VAR: &str = "OTEL_RESOURCE_ATTRIBUTES_POD_NAME";
/// Downward-API helper holding the node name, referenced from `OTEL_RESOURCE_ATTRIBUTES`.
pub const NODE_NAME_VAR: &str = "OTEL_RESOURCE_ATTRIBUTES_NODE_NAME";
/// Downward-API helper holding the pod's `app.kubernetes.io/version` label (pod-template
/// injection only; admission injection reads the label when the pod is created).
pub const VERSION_VAR: &str = "OTEL_RESOURCE_ATTRIBUTES_SERVICE_VERSION";
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";
pub const RESOURCE_ATTRIBUTES_VAR: &str = "OTEL_RESOURCE_ATTRIBUTES";
// The signal-specific endpoint and protocol: the operator delivers traces only,
// so it claims only the traces variables. An application that exports its own
// metrics or logs over OTLP keeps its `OTEL_EXPORTER_OTLP_ENDPOINT` for them
// (the generic one would send them to a collector with no such pipeline), and
// such a variable does not divert the traces. Every SDK and agent reads these
// (Node, Java, Python, Go, Rust, .NET); an http endpoint must name `/v1/traces`.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `none`: the collector has a traces pipeline only, and SDKs that default to
/// OTLP metrics and logs (NodeSDK) would log a failed export every minute.
pub const METRICS_EXPORTER_VAR: &str = "OTEL_METRICS_EXPORTER";
pub const LOGS_EXPORTER_VAR: &str = "OTEL_LOGS_EXPORTER";
pub const TRACES_EXPORTER_VAR: &str = "OTEL_TRACES_EXPORTER";
pub const PROPAGATORS_VAR: &str = "OTEL_PROPAGATORS";
pub const SAMPLER_VAR: &str = "OTEL_TRACES_SAMPLER";
pub const SAMPLER_ARG_VAR: &str = "OTEL_TRACES_SAMPLER_ARG";
/// The token of an `env` template that stands for the container's version.
pub const VERSION_TOKEN: &str = "{service.version}";

/// One planned variable, in the order it is added to each container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlannedVar {
    pub name: String,
    pub value: PlannedValue,
}

/// A planned variable's value, as far as it does not depend on the container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PlannedValue {
    /// A downward-API field of the pod (`metadata.name`, `spec.nodeName`).
    Field(&'static str),
    /// A literal, escaped for Kubernetes (`$$` reads back as `$`).
    Literal(String),
    /// `OTEL_RESOURCE_ATTRIBUTES`: the container's `service.version=…` goes before
    /// these attributes and its `k8s.container.name=…` after them.
    Attributes(String),
    /// A literal in which [`VERSION_TOKEN`] is replaced by the container's version.
    Versioned(String),
}

/// Where each container's `service.version` comes from, in this order: the pod's
/// own `app.kubernetes.io/version` label; the workload's, when the template has
/// none; the container's image tag (always with admission injection; with
/// pod-template injection only when `service.versionFromImageTag` opts in); the
/// policy's `service.version` attribute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionPlan {
    /// The pod template carries `app.kubernetes.io/version`.
    pub pod_label: bool,
    /// The workload's own label, when the template has none.
    pub workload_label: Option<String>,
    /// Pod-template injection with `versionFromImageTag`: each container's tag,
    /// written into the template (so an image bump rolls the workload again).
    pub image_tags: Option<BTreeMap<String, String>>,
    /// `service.version` from the policy's attributes: the last resort.
    pub fallback: Option<String>,
}

/// The first non-empty value of `key` in the pod template's map, then the workload's.
fn template_then_workload<'w>(
    template: &'w SmallMap,
    workload: &'w SmallMap,
    key: &str,
) -> Option<&'w str> {
    [template.get(key), workload.get(key)]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .find(|v| !v.is_empty())
}

/// `service.name`: annotation `resource.opentelemetry.io/service.name` > label
/// `app.kubernetes.io/name` (pod template first, then the workload) > workload name.
pub fn service_name(workload: &Workload) -> String {
    [&workload.template.annotations, &workload.annotations]
        .into_iter()
        .filter_map(|m| m.get(SERVICE_NAME_ANNOTATION))
        .map(String::as_str)
        .find(|v| !v.is_empty())
        .or_else(|| template_then_workload(&workload.template.labels, &workload.labels, NAME_LABEL))
        .unwrap_or(&workload.id.name)
        .to_string()
}

/// The version of one container in the pod the template makes, as far as the
/// operator can tell from the template: the label, else the image tag.
pub fn service_version(workload: &Workload, container: &Container) -> Option<String> {
    template_then_workload(&workload.template.labels, &workload.labels, VERSION_LABEL)
        .or_else(|| container.image.as_deref().and_then(image_tag))
        .map(str::to_string)
}
/// The tag of an image reference, if it has one: `[registry[:port]/]path[:tag][@digest]`.
/// A `:` before the last `/` is a registry port, not a tag; a digest is not a tag.
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    let last_segment = without_digest
        .rsplit_once('/')
        .map_or(without_digest, |(_, s)| s);
    last_segment
        .rsplit_once(':')
        .map(|(_, tag)| tag)
        .filter(|tag| !tag.is_empty())
}

/// The head-sampling ratio of `service` (see [`super::sampling::head_ratio`]).
pub fn sampler_ratio(policy: &PolicyView, service: &str) -> f64 {
    super::sampling::head_ratio(&policy.spec, service)
}

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` of `target`: over http the full URL of
/// the traces path (appended unless the URL already ends in it), over gRPC as is.
pub fn traces_endpoint(target: &super::ExportTarget) -> String {
    let base = target.endpoint.trim_end_matches('/');
    if target.protocol == crate::api::Protocol::Grpc.otel_env_value()
        || base.ends_with("/v1/traces")
    {
        target.endpoint.clone()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Shortest decimal that reads back as the same ratio (`0.1`, `1`, `0.25`), never
/// in exponent form; clamped to 0..1 (the schema already is).
pub fn format_ratio(ratio: f64) -> String {
    let r = if ratio.is_nan() {
        1.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    // -0.0 would print as "-0".
    let r = if r == 0.0 { 0.0 } else { r };
    format!("{r}")
}

/// Percent-encodes a value of `OTEL_RESOURCE_ATTRIBUTES` (OpenTelemetry's
/// resource SDK spec: W3C baggage value octets). Kept as is: the baggage octets
/// other than `%` (the escape itself), `=` and `$` (a `$(…)` would be expanded
/// by Kubernetes).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        let baggage_octet =
            matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E);
        if baggage_octet && !matches!(b, b'%' | b'=' | b'$') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A literal for an env value: Kubernetes turns `$$` into `$` and expands `$(VAR)`,
/// so doubling every `$` makes it read back exactly.
fn k8s_literal(value: &str) -> String {
    value.replace('$', "$$")
}

/// Expands `{service.name}`, `{service.version}`, `{service.namespace}` and
/// `{deployment.environment.name}` in one pass (a substituted value is never
/// expanded again); any other `{…}` stays as written.
pub fn expand_template(template: &str, vars: &TemplateVars<'_>) -> String {
    let table: [(&str, &str); 4] = [
        ("{service.name}", vars.service_name),
        ("{service.version}", vars.service_version),
        ("{service.namespace}", vars.service_namespace),
        ("{deployment.environment.name}", vars.environment),
    ];
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match table.iter().find(|(token, _)| tail.starts_with(token)) {
            Some((token, value)) => {
                out.push_str(&k8s_literal(value));
                rest = &tail[token.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The values `env` templates may use; missing ones are empty strings.
#[derive(Clone, Copy, Debug)]
pub struct TemplateVars<'a> {
    pub service_name: &'a str,
    pub service_version: &'a str,
    pub service_namespace: &'a str,
    pub environment: &'a str,
}

/// The attributes from the policy (namespace labels, then `resourceAttributes`
/// on top), before the identity attributes are laid over them.
fn extra_attributes(
    policy: &PolicyView,
    namespace: Option<&NamespaceView>,
) -> BTreeMap<String, String> {
    let service = &policy.spec.service;
    let mut extra = BTreeMap::new();
    if let Some(ns) = namespace {
        for label in &service.namespace_labels {
            if let Some(value) = ns.labels.get(label.as_str()) {
                extra.insert(
                    format!("k8s.namespace.label.{}", label.as_str()),
                    value.clone(),
                );
            }
        }
        for (attribute, label) in &service.attributes_from_namespace_labels {
            if let Some(value) = ns.labels.get(label) {
                extra.insert(attribute.clone(), value.clone());
            }
        }
    }
    for (attribute, value) in &service.resource_attributes {
        extra.insert(attribute.clone(), value.clone());
    }
    extra
}

fn literal(name: &str, value: String) -> PlannedVar {
    PlannedVar {
        name: name.to_string(),
        value: PlannedValue::Literal(value),
    }
}

/// Plans one workload: the variables every one of `containers` (the
/// instrumented ones, in pod order) gets, what each container sets itself, and
/// the config hash. `namespace` is the workload's namespace as the snapshot has
/// it (for `attributesFromNamespaceLabels`). At admission the containers may also
/// name ones that left the template, where that spares a second rollout (see
/// `still_listed`).
pub fn plan_workload<'c>(
    policy: &PolicyView,
    operator_namespace: &str,
    namespace: Option<&NamespaceView>,
    workload: &Workload,
    containers: impl IntoIterator<Item = &'c Container>,
    injection: Injection,
) -> WorkloadPlan {
    let spec = &policy.spec;
    let service = service_name(workload);
    let ns: &str = &workload.id.namespace;
    let extra = extra_attributes(policy, namespace);
    let fill = |key: &str| extra.get(key).filter(|v| !v.is_empty()).cloned();
    let containers: Vec<&Container> = containers.into_iter().collect();

    let non_empty = |v: Option<&String>| v.filter(|v| !v.is_empty()).cloned();
    let pod_label = non_empty(workload.template.labels.get(VERSION_LABEL)).is_some();
    let workload_label = non_empty(workload.labels.get(VERSION_LABEL)).filter(|_| !pod_label);
    let image_tags = (injection == Injection::PodTemplate
        && spec.service.version_from_image_tag
        && !pod_label
        && workload_label.is_none())
    .then(|| {
        containers
            .iter()
            .filter_map(|c| {
                let tag = c.image.as_deref().and_then(image_tag)?;
                Some((c.name.to_string(), tag.to_string()))
            })
            .collect()
    });
    let version = VersionPlan {
        pod_label,
        workload_label,
        image_tags,
        fallback: fill("service.version"),
    };
    let environment = spec
        .service
        .environment
        .clone()
        .filter(|e| !e.is_empty())
        .or_else(|| fill("deployment.environment.name"));

    // Identity attributes, in their fixed order; `None` values are left out.
    let kind_key = workload.id.kind.info().semconv_name_key();
    let identity: [(&str, Option<&str>); 4] = [
        ("deployment.environment.name", environment.as_deref()),
        ("service.namespace", Some(ns)),
        ("k8s.namespace.name", Some(ns)),
        (kind_key, Some(&workload.id.name)),
    ];
    let mut attributes: Vec<String> = identity
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", percent_encode(v))))
        .collect();
    attributes.push(format!("k8s.pod.name=$({POD_NAME_VAR})"));
    attributes.push(format!("k8s.node.name=$({NODE_NAME_VAR})"));
    let reserved = |k: &str| {
        matches!(
            k,
            "service.name"
                | "service.version"
                | "k8s.pod.name"
                | "k8s.node.name"
                | "k8s.container.name"
        ) || identity.iter().any(|(key, _)| *key == k)
    };
    attributes.extend(
        extra
            .iter()
            .filter(|(k, _)| !reserved(k))
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))),
    );

    let target = export_target(&policy.name, spec, operator_namespace, ns);
    let propagators: Vec<&str> = spec.propagators.iter().map(|p| p.as_str()).collect();
    let sampler = super::sampling::head_sampler(spec, &service);
    let mut vars = vec![
        PlannedVar {
            name: POD_NAME_VAR.into(),
            value: PlannedValue::Field("metadata.name"),
        },
        PlannedVar {
            name: NODE_NAME_VAR.into(),
            value: PlannedValue::Field("spec.nodeName"),
        },
        literal(SERVICE_NAME_VAR, k8s_literal(&service)),
        PlannedVar {
            name: RESOURCE_ATTRIBUTES_VAR.into(),
            value: PlannedValue::Attributes(attributes.join(",")),
        },
        literal(ENDPOINT_VAR, traces_endpoint(&target)),
        literal(PROTOCOL_VAR, target.protocol.to_string()),
        literal(TRACES_EXPORTER_VAR, "otlp".to_string()),
        literal(METRICS_EXPORTER_VAR, "none".to_string()),
        literal(LOGS_EXPORTER_VAR, "none".to_string()),
        literal(PROPAGATORS_VAR, propagators.join(",")),
        literal(SAMPLER_VAR, sampler.sampler.to_string()),
    ];
    if let Some(ratio) = sampler.ratio {
        vars.push(literal(SAMPLER_ARG_VAR, format_ratio(ratio)));
    }
    let template_vars = TemplateVars {
        service_name: &service,
        // Left as the token: each container's own version replaces it.
        service_version: VERSION_TOKEN,
        service_namespace: ns,
        environment: environment.as_deref().unwrap_or_default(),
    };
    for template in &spec.env {
        // The schema keeps names unique and away from OTEL_; a duplicate here
        // would make the apply invalid, so the first entry wins.
        if vars.iter().all(|v| v.name != template.name) {
            let value = expand_template(&template.value, &template_vars);
            vars.push(PlannedVar {
                name: template.name.clone(),
                value: if value.contains(VERSION_TOKEN) {
                    PlannedValue::Versioned(value)
                } else {
                    PlannedValue::Literal(value)
                },
            });
        }
    }

    let containers: Vec<ContainerPlan> = containers
        .iter()
        .map(|c| ContainerPlan {
            name: c.name.to_string(),
            user_overrides: vars
                .iter()
                .filter(|v| c.user_sets(&v.name))
                .map(|v| v.name.clone())
                .collect(),
        })
        .collect();
    // At admission each container gets only the variables it does not set
    // itself, and the pod-template annotations do not depend on them: there,
    // what the user sets is no part of the operator's change, so a `kubectl set
    // env` must not give the workload a new hash (a rollout on top of the user's).
    let (containers, config_hash) = match injection {
        Injection::PodTemplate => {
            let hash = config_hash(&policy.name, &vars, &containers, &version);
            (containers, hash)
        }
        Injection::Admission => {
            let hash_of = |containers: &[ContainerPlan]| {
                let names: Vec<ContainerPlan> = containers
                    .iter()
                    .map(|c| ContainerPlan {
                        name: c.name.clone(),
                        user_overrides: Vec::new(),
                    })
                    .collect();
                config_hash(&policy.name, &vars, &names, &version)
            };
            let hash = hash_of(&containers);
            // Kept only where it is what the workload carries: see `still_listed`.
            match still_listed(workload, &containers, &hash)
                .map(|listed| (hash_of(&listed), listed))
            {
                Some((kept, listed)) if Some(kept.as_str()) == live_hash(workload) => {
                    (listed, kept)
                }
                _ => (containers, hash),
            }
        }
    };
    WorkloadPlan {
        service_name: service,
        vars,
        containers,
        version,
        agent: super::agents::AgentDecision::default(),
        config_hash,
    }
}

fn live_hash(workload: &Workload) -> Option<&str> {
    workload
        .annotations
        .get(crate::api::CONFIG_HASH_ANNOTATION)
        .map(String::as_str)
}

/// Admission injection: when a container the operator listed has left the
/// template (a GitOps tool removed or renamed it), the user's change already
/// rolls the workload. Dropping the name from `tracing.caas.io/inject` as well
/// would roll it a second time at once, for pods that admission injects the
/// same either way (it skips listed containers the pod lacks). So `planned`,
/// with the names that left the template put back where the live list has
/// them, when that is all that differs from the live list and `planned` is not
/// already what the workload carries. The caller keeps it only if its hash is
/// the live one: any other change rolls the workload anyway, and drops them.
fn still_listed(
    workload: &Workload,
    planned: &[ContainerPlan],
    hash: &str,
) -> Option<Vec<ContainerPlan>> {
    let listed = workload.template.listed.as_deref()?;
    if live_hash(workload) == Some(hash) {
        return None;
    }
    let in_template = |name: &str| {
        workload
            .template
            .containers
            .iter()
            .any(|c| &*c.name == name)
    };
    let present: Vec<&str> = listed.split(',').filter(|n| in_template(n)).collect();
    let planned_names: Vec<&str> = planned.iter().map(|c| c.name.as_str()).collect();
    if present != planned_names || present.len() == listed.split(',').count() {
        return None;
    }
    Some(
        listed
            .split(',')
            .map(|name| {
                planned
                    .iter()
                    .find(|c| c.name == name)
                    .cloned()
                    .unwrap_or_else(|| ContainerPlan {
                        name: name.to_string(),
                        user_overrides: Vec::new(),
                    })
            })
            .collect(),
    )
}

/// 16 hex digits of a sha256 over a length-prefixed serialization of the policy
/// name, the planned variables, the containers with what each sets itself, and
/// the version plan: stable across runs and processes, and any change to a
/// value, name, order or container changes it.
pub fn config_hash(
    policy: &str,
    vars: &[PlannedVar],
    containers: &[ContainerPlan],
    version: &VersionPlan,
) -> String {
    fn put(h: &mut Sha256, s: &str) {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    fn put_opt(h: &mut Sha256, s: Option<&str>) {
        match s {
            Some(s) => {
                h.update([1]);
                put(h, s);
            }
            None => h.update([0]),
        }
    }
    let mut h = Sha256::new();
    put(&mut h, "tracing-operator/config-hash/v2");
    put(&mut h, policy);
    h.update((vars.len() as u64).to_be_bytes());
    for v in vars {
        put(&mut h, &v.name);
        let (tag, text) = match &v.value {
            PlannedValue::Field(path) => ("field", *path),
            PlannedValue::Literal(s) => ("literal", s.as_str()),
            PlannedValue::Attributes(s) => ("attributes", s.as_str()),
            PlannedValue::Versioned(s) => ("versioned", s.as_str()),
        };
        put(&mut h, tag);
        put(&mut h, text);
    }
    h.update((containers.len() as u64).to_be_bytes());
    for c in containers {
        put(&mut h, &c.name);
        h.update((c.user_overrides.len() as u64).to_be_bytes());
        for o in &c.user_overrides {
            put(&mut h, o);
        }
    }
    h.update([u8::from(version.pod_label)]);
    put_opt(&mut h, version.workload_label.as_deref());
    put_opt(&mut h, version.fallback.as_deref());
    match &version.image_tags {
        Some(tags) => {
            h.update([1]);
            h.update((tags.len() as u64).to_be_bytes());
            for (c, t) in tags {
                put(&mut h, c);
                put(&mut h, t);
            }
        }
        None => h.update([0]),
    }
    let digest = h.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        let cases: &[(&str, Option<&str>)] = &[
            ("nginx", None),
            ("nginx:1.27", Some("1.27")),
            ("registry.example.com:5000/caas/auth", None),
            ("registry.example.com:5000/caas/auth:2.4.1", Some("2.4.1")),
            ("localhost:5000/app", None),
            ("ghcr.io/caas/gateway@sha256:0123456789abcdef", None),
            (
                "ghcr.io/caas/gateway:1.2@sha256:0123456789abcdef",
                Some("1.2"),
            ),
            ("reg:5000/app:v3@sha256:abc", Some("v3")),
            ("app:", None),
            ("", None),
        ];
        for (image, want) in cases {
            assert_eq!(image_tag(image), *want, "{image}");
        }
    }

    #[test]
    fn ratios_are_minimal_and_stable() {
        let cases = [
            (0.1, "0.1"),
            (1.0, "1"),
            (0.25, "0.25"),
            (0.0, "0"),
            (-0.0, "0"),
            (0.001, "0.001"),
            (1e-7, "0.0000001"),
            (1.5, "1"),
            (f64::NAN, "1"),
        ];
        for (ratio, want) in cases {
            assert_eq!(format_ratio(ratio), want, "{ratio}");
        }
    }

    #[test]
    fn percent_encoding_of_attribute_values() {
        let cases = [
            ("platform", "platform"),
            ("a,b", "a%2Cb"),
            ("k=v", "k%3Dv"),
            ("100%", "100%25"),
            ("two words", "two%20words"),
            ("tab\there", "tab%09here"),
            ("semi;colon", "semi%3Bcolon"),
            ("\"quoted\"", "%22quoted%22"),
            ("back\\slash", "back%5Cslash"),
            ("Zürich", "Z%C3%BCrich"),
            ("$(HOME)", "%24(HOME)"),
            ("v1.2.3-rc.1+build_7/x:y", "v1.2.3-rc.1+build_7/x:y"),
        ];
        for (raw, want) in cases {
            assert_eq!(percent_encode(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn template_expansion() {
        let vars = TemplateVars {
            service_name: "auth",
            service_version: "",
            service_namespace: "caas-auth",
            environment: "production",
        };
        let cases = [
            ("{service.name}", "auth"),
            ("{service.version}", ""),
            (
                "{service.name}@{service.namespace}/{deployment.environment.name}",
                "auth@caas-auth/production",
            ),
            ("{unknown} {service.name", "{unknown} {service.name"),
            ("{{service.name}}", "{auth}"),
            ("$(HOSTNAME)-{service.name}", "$(HOSTNAME)-auth"),
            ("", ""),
        ];
        for (template, want) in cases {
            assert_eq!(expand_template(template, &vars), want, "{template}");
        }
        // Substituted values are literals for Kubernetes, and never expanded twice.
        let tricky = TemplateVars {
            service_name: "$(SECRET)",
            service_version: "{service.name}",
            ..vars
        };
        assert_eq!(
            expand_template("{service.name}:{service.version}", &tricky),
            "$$(SECRET):{service.name}"
        );
    }
}
