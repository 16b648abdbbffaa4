//! The environment the operator writes into each instrumented container: the
//! contract's table (`tracingpolicy-api.md`), computed per workload and container.
//!
//! Rules this module decides (the tests pin them):
//! - Entry order: the two downward-API helpers first, then `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, exporters, propagators, sampler, then the policy's
//!   `env` templates in spec order. Kubernetes resolves `$(VAR)` only against
//!   entries that come earlier in the list, hence the helpers first.
//! - `OTEL_RESOURCE_ATTRIBUTES` holds the identity attributes in a fixed order
//!   (`service.version`, `deployment.environment.name`, `service.namespace`,
//!   `k8s.namespace.name`, `k8s.<kind>.name`, `k8s.container.name`,
//!   `k8s.pod.name`, `k8s.node.name`), then the other attributes sorted by key.
//! - Duplicate keys: an identity attribute the operator computes cannot be
//!   overridden. `service.version` and `deployment.environment.name` are the only
//!   identity attributes the operator may have no value for (no version label and
//!   no image tag; no `service.environment`); then an attribute of the same key
//!   from the policy or a namespace label fills them. `service.name` is never
//!   taken from attributes: `OTEL_SERVICE_NAME` defines it. Among the sources
//!   of extra attributes, `service.resourceAttributes` wins over
//!   `service.attributesFromNamespaceLabels`, which wins over
//!   `service.namespaceLabels` (`k8s.namespace.label.<label>`).
//! - The `env` templates see the values that went into `OTEL_RESOURCE_ATTRIBUTES`
//!   (a filled-in version or environment included); a missing one is `""`.
//! - Values in `OTEL_RESOURCE_ATTRIBUTES` are percent-encoded (W3C baggage
//!   octets; also `%`, `=` and `$`, the last so Kubernetes never expands a `$(…)`
//!   that came from user data). Values the operator substitutes into
//!   `OTEL_SERVICE_NAME` and the `env` templates have every `$` doubled, which
//!   Kubernetes turns back into one `$`, for the same reason; the literal text
//!   of a template is left as the policy author wrote it.
//! - The user wins: an entry the container already has and the operator does not
//!   own is not set and is reported. When the user sets
//!   `OTEL_RESOURCE_ATTRIBUTES`, the helpers (which only serve it) are left out too.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use sha2::{Digest, Sha256};

use super::{
    ContainerPlan, ContainerView, NamespaceView, PolicyView, WorkloadPlan, WorkloadView,
    export_target,
};

/// Downward-API helper holding the pod name, referenced from `OTEL_RESOURCE_ATTRIBUTES`.
pub const POD_NAME_VAR: &str = "OTEL_RESOURCE_ATTRIBUTES_POD_NAME";
/// Downward-API helper holding the node name, referenced from `OTEL_RESOURCE_ATTRIBUTES`.
pub const NODE_NAME_VAR: &str = "OTEL_RESOURCE_ATTRIBUTES_NODE_NAME";
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
pub const TRACES_EXPORTER_VAR: &str = "OTEL_TRACES_EXPORTER";
/// `none`: the collector has a traces pipeline only, and SDKs that default to
/// OTLP metrics and logs (NodeSDK) would log a failed export every minute.
pub const METRICS_EXPORTER_VAR: &str = "OTEL_METRICS_EXPORTER";
pub const LOGS_EXPORTER_VAR: &str = "OTEL_LOGS_EXPORTER";
pub const PROPAGATORS_VAR: &str = "OTEL_PROPAGATORS";
pub const SAMPLER_VAR: &str = "OTEL_TRACES_SAMPLER";
pub const SAMPLER_ARG_VAR: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Annotation that names the service (OpenTelemetry's own convention).
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// Recommended Kubernetes label naming the application.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Recommended Kubernetes label with the application's version.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// The first non-empty value of `key` in the pod template's map, then the workload's.
fn template_then_workload<'w>(
    template: &'w BTreeMap<String, String>,
    workload: &'w BTreeMap<String, String>,
    key: &str,
) -> Option<&'w str> {
    [template, workload]
        .into_iter()
        .filter_map(|m| m.get(key))
        .map(String::as_str)
        .find(|v| !v.is_empty())
}

/// `service.name`: annotation `resource.opentelemetry.io/service.name` > label
/// `app.kubernetes.io/name` (pod template first, then the workload) > workload name.
pub fn service_name(workload: &WorkloadView) -> String {
    template_then_workload(
        &workload.template_annotations,
        &workload.annotations,
        SERVICE_NAME_ANNOTATION,
    )
    .or_else(|| template_then_workload(&workload.template_labels, &workload.labels, NAME_LABEL))
    .unwrap_or(&workload.id.name)
    .to_string()
}

/// `service.version` of one container: label `app.kubernetes.io/version` (pod
/// template first, then the workload) > the container's image tag.
pub fn service_version(workload: &WorkloadView, container: &ContainerView) -> Option<String> {
    template_then_workload(&workload.template_labels, &workload.labels, VERSION_LABEL)
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

fn literal(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

/// A downward-API entry. `apiVersion: v1` is what the API server defaults it to,
/// so the planned entry equals the live one and a converged workload needs no write.
fn field_ref(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_string()),
                field_path: field_path.to_string(),
            }),
            ..EnvVarSource::default()
        }),
    }
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

/// Plans one workload: the env of each of `containers` (the instrumented ones,
/// in pod order) and the config hash. `namespace` is the workload's namespace as
/// the snapshot has it (for `attributesFromNamespaceLabels`).
pub fn plan_workload<'c>(
    policy: &PolicyView,
    operator_namespace: &str,
    namespace: Option<&NamespaceView>,
    workload: &WorkloadView,
    containers: impl IntoIterator<Item = &'c ContainerView>,
) -> WorkloadPlan {
    let service = service_name(workload);
    let shared = Shared::new(policy, operator_namespace, namespace, workload, &service);
    let containers: Vec<ContainerPlan> = containers
        .into_iter()
        .map(|c| shared.plan_container(workload, c))
        .collect();
    let config_hash = config_hash(&policy.name, &containers);
    WorkloadPlan {
        service_name: service,
        containers,
        config_hash,
    }
}

/// What every container of one workload shares.
struct Shared<'a> {
    policy: &'a PolicyView,
    service: &'a str,
    namespace: &'a str,
    extra: BTreeMap<String, String>,
    fixed: Vec<EnvVar>,
}

impl<'a> Shared<'a> {
    fn new(
        policy: &'a PolicyView,
        operator_namespace: &str,
        namespace: Option<&NamespaceView>,
        workload: &'a WorkloadView,
        service: &'a str,
    ) -> Self {
        let spec = &policy.spec;
        let target = export_target(
            &policy.name,
            spec,
            operator_namespace,
            &workload.id.namespace,
        );
        let propagators: Vec<&str> = spec.propagators.iter().map(|p| p.as_str()).collect();
        let sampler = super::sampling::head_sampler(spec, service);
        // Everything after OTEL_RESOURCE_ATTRIBUTES that does not depend on the container.
        let mut fixed = vec![
            literal(ENDPOINT_VAR, traces_endpoint(&target)),
            literal(PROTOCOL_VAR, target.protocol.to_string()),
            literal(TRACES_EXPORTER_VAR, "otlp".to_string()),
            literal(METRICS_EXPORTER_VAR, "none".to_string()),
            literal(LOGS_EXPORTER_VAR, "none".to_string()),
            literal(PROPAGATORS_VAR, propagators.join(",")),
            literal(SAMPLER_VAR, sampler.sampler.to_string()),
        ];
        if let Some(ratio) = sampler.ratio {
            fixed.push(literal(SAMPLER_ARG_VAR, format_ratio(ratio)));
        }
        Shared {
            policy,
            service,
            namespace: &workload.id.namespace,
            extra: extra_attributes(policy, namespace),
            fixed,
        }
    }

    fn plan_container(&self, workload: &WorkloadView, container: &ContainerView) -> ContainerPlan {
        let spec = &self.policy.spec;
        let fill = |key: &str| self.extra.get(key).filter(|v| !v.is_empty()).cloned();
        let version = service_version(workload, container).or_else(|| fill("service.version"));
        let environment = spec
            .service
            .environment
            .clone()
            .filter(|e| !e.is_empty())
            .or_else(|| fill("deployment.environment.name"));

        // Identity attributes, in their fixed order; `None` values are left out.
        let identity: [(&str, Option<&str>); 6] = [
            ("service.version", version.as_deref()),
            ("deployment.environment.name", environment.as_deref()),
            ("service.namespace", Some(self.namespace)),
            ("k8s.namespace.name", Some(self.namespace)),
            (workload.id.kind.semconv_name_key(), Some(&workload.id.name)),
            ("k8s.container.name", Some(&container.name)),
        ];
        let mut attributes: Vec<String> = identity
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", percent_encode(v))))
            .collect();
        attributes.push(format!("k8s.pod.name=$({POD_NAME_VAR})"));
        attributes.push(format!("k8s.node.name=$({NODE_NAME_VAR})"));
        let reserved = |k: &str| {
            k == "service.name"
                || k == "k8s.pod.name"
                || k == "k8s.node.name"
                || identity.iter().any(|(key, _)| *key == k)
        };
        attributes.extend(
            self.extra
                .iter()
                .filter(|(k, _)| !reserved(k))
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))),
        );

        let mut desired = vec![
            field_ref(POD_NAME_VAR, "metadata.name"),
            field_ref(NODE_NAME_VAR, "spec.nodeName"),
            literal(SERVICE_NAME_VAR, k8s_literal(self.service)),
            literal(RESOURCE_ATTRIBUTES_VAR, attributes.join(",")),
        ];
        desired.extend(self.fixed.iter().cloned());
        let vars = TemplateVars {
            service_name: self.service,
            service_version: version.as_deref().unwrap_or_default(),
            service_namespace: self.namespace,
            environment: environment.as_deref().unwrap_or_default(),
        };
        for template in &spec.env {
            // The schema keeps names unique and away from OTEL_; a duplicate here
            // would make the apply invalid, so the first entry wins.
            if desired.iter().all(|e| e.name != template.name) {
                desired.push(literal(
                    &template.name,
                    expand_template(&template.value, &vars),
                ));
            }
        }
        user_wins(container, desired)
    }
}

/// Drops the entries the container's user sets and reports them.
fn user_wins(container: &ContainerView, desired: Vec<EnvVar>) -> ContainerPlan {
    let live: BTreeSet<&str> = container.env.iter().map(|e| e.name.as_str()).collect();
    let users = |name: &str| live.contains(name) && !container.operator_owned_env.contains(name);
    let helpers_unused = users(RESOURCE_ATTRIBUTES_VAR);
    let mut env = Vec::with_capacity(desired.len());
    let mut user_overrides = Vec::new();
    for entry in desired {
        if users(&entry.name) {
            user_overrides.push(entry.name);
        } else if helpers_unused && (entry.name == POD_NAME_VAR || entry.name == NODE_NAME_VAR) {
            // Nothing of ours references them any more.
        } else {
            env.push(entry);
        }
    }
    ContainerPlan {
        name: container.name.clone(),
        env,
        user_overrides,
    }
}

/// 16 hex digits of a sha256 over a length-prefixed serialization of the policy
/// name and each container's planned env, in plan order: stable across runs and
/// processes, and any change to a value, name, order or container changes it.
pub fn config_hash(policy: &str, containers: &[ContainerPlan]) -> String {
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
    put(&mut h, "tracing-operator/config-hash/v1");
    put(&mut h, policy);
    h.update((containers.len() as u64).to_be_bytes());
    for c in containers {
        put(&mut h, &c.name);
        h.update((c.env.len() as u64).to_be_bytes());
        for e in &c.env {
            put(&mut h, &e.name);
            put_opt(&mut h, e.value.as_deref());
            // k8s-openapi serializes struct fields in a fixed order.
            let from = e
                .value_from
                .as_ref()
                .and_then(|v| serde_json::to_string(v).ok());
            put_opt(&mut h, from.as_deref());
        }
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
