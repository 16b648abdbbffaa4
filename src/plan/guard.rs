//! What a policy author may make the operator do: the operator's collector
//! settings (`--allowed-collector-namespaces`, `--allowed-collector-images`,
//! `--allow-external-backends`, the chart's `collector.*` values) checked
//! against a policy.
//!
//! The operator runs collectors with its own permissions, so whoever may create a
//! TracingPolicy chooses which image runs in which namespace, which Secrets of
//! that namespace it reads, and where it sends them. These settings bound that:
//! - a collector runs only in an allowed namespace. The operator's own namespace
//!   (the default `collector.namespace`) is always allowed; the Secrets a
//!   collector reads (`headersSecretRef`, `tls.caSecretRef`) are read in its own
//!   namespace only, so the namespace bound is also the Secret bound;
//! - its image comes from an allowed repository prefix, matched on whole path
//!   segments of the image's repository (tag and digest aside), so
//!   `otel/opentelemetry-collector-contrib` admits
//!   `otel/opentelemetry-collector-contrib:0.161.0` and `...@sha256:...` but not
//!   `otel/opentelemetry-collector-contrib-evil:1`. The image a policy leaves
//!   unset (the default image) is checked like any other;
//! - unless external backends are allowed, every backend host is in-cluster
//!   (see [`host_in_cluster`]).
//!
//! [`check_policy`] covers the policy itself (the central namespace, where a
//! `Central` collector and, with tail sampling, the samplers run; image,
//! backends); with `PerNamespace` placement each selected namespace is checked
//! when the controller plans its collector ([`namespace_allowed`]), since the
//! selection changes with namespace labels. The chart's ValidatingAdmissionPolicy
//! (`charts/tracing-operator/templates/admissionpolicy.yaml`) implements the same
//! rules in CEL, so such a policy is refused at `kubectl apply`; this check is
//! what holds when that admission policy is not installed.

use std::net::IpAddr;

use crate::api::{Placement, TracingPolicySpec};
use crate::plan::collector::DEFAULT_COLLECTOR_IMAGE;

/// The cluster DNS domain whose `*.svc.<domain>` names count as in-cluster. A
/// cluster with another domain reaches its Services as `<service>.<namespace>.svc`,
/// which the pods' DNS search path completes.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Namespace allowed by default besides the operator's own.
pub const DEFAULT_ALLOWED_NAMESPACE: &str = "observability";

/// Where collectors may run, besides the operator's own namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// These namespaces (`--allowed-collector-namespaces=a,b`).
    List(Vec<String>),
    /// Any namespace (`--allowed-collector-namespaces='*'`).
    Any,
}

/// The operator's collector settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorGuard {
    /// Namespaces collectors may run in, besides the operator's own.
    pub namespaces: Namespaces,
    /// Repository prefixes a collector image must come from (no trailing `/`).
    /// An empty prefix admits every image: only [`CollectorGuard::unrestricted`]
    /// has one, the flag refuses it.
    pub image_prefixes: Vec<String>,
    /// Whether backends may point outside the cluster.
    pub external_backends: bool,
}

/// The operator's defaults: the operator's namespace and `observability`, the
/// default image's repository, in-cluster backends only.
impl Default for CollectorGuard {
    fn default() -> Self {
        CollectorGuard {
            namespaces: Namespaces::List(vec![DEFAULT_ALLOWED_NAMESPACE.to_string()]),
            image_prefixes: vec![image_repository(DEFAULT_COLLECTOR_IMAGE).to_string()],
            external_backends: false,
        }
    }
}

impl CollectorGuard {
    /// Allows every namespace, image and backend: the operator as it was before
    /// these settings existed, for tests and embedders that judge policies
    /// themselves. The flags cannot say this for images (they need a prefix).
    pub fn unrestricted() -> Self {
        CollectorGuard {
            namespaces: Namespaces::Any,
            image_prefixes: vec![String::new()],
            external_backends: true,
        }
    }

    /// The allowed namespaces for a message: `tracing-operator, observability`, or
    /// `any namespace`.
    pub fn describe_namespaces(&self, operator_namespace: &str) -> String {
        match &self.namespaces {
            Namespaces::Any => "any namespace".to_string(),
            Namespaces::List(list) => {
                let mut all = vec![operator_namespace];
                all.extend(
                    list.iter()
                        .map(String::as_str)
                        .filter(|n| *n != operator_namespace),
                );
                all.join(", ")
            }
        }
    }
}

/// One thing a policy asks for that the settings do not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The spec field, for example `spec.collector.namespace`.
    pub field: String,
    /// What is not allowed and what is.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Everything in `spec` the settings do not allow, in field order; empty when the
/// policy is allowed. `PerNamespace` namespaces are not judged here (see the module docs).
pub fn check_policy(
    spec: &TracingPolicySpec,
    operator_namespace: &str,
    guard: &CollectorGuard,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let collector = &spec.collector;
    if collector.enabled {
        // A Central collector, and with tail sampling the samplers whatever
        // the placement, run in collector.namespace.
        if collector.placement == Placement::Central || spec.sampling.tail.is_some() {
            let namespace = collector
                .namespace
                .as_ref()
                .map_or(operator_namespace, |n| n.as_str());
            if !namespace_allowed(guard, operator_namespace, namespace) {
                violations.push(Violation {
                    field: "spec.collector.namespace".into(),
                    message: format!(
                        "namespace {namespace} is not an allowed collector namespace (allowed: {})",
                        guard.describe_namespaces(operator_namespace)
                    ),
                });
            }
        }
        let image = collector
            .image
            .as_deref()
            .unwrap_or(DEFAULT_COLLECTOR_IMAGE);
        if !image_allowed(guard, image) {
            violations.push(Violation {
                field: "spec.collector.image".into(),
                message: format!(
                    "image {image} is not from an allowed repository (allowed: {})",
                    guard.image_prefixes.join(", ")
                ),
            });
        }
    }
    if !guard.external_backends {
        for backend in &spec.backends {
            let host = endpoint_host(&backend.endpoint);
            if !host.as_deref().is_some_and(host_in_cluster) {
                violations.push(Violation {
                    field: format!("spec.backends[{}].endpoint", backend.name.as_str()),
                    message: format!(
                        "host {} is outside the cluster; only in-cluster Services are allowed \
                         (a single-label name, *.svc or *.svc.{CLUSTER_DOMAIN})",
                        host.as_deref().unwrap_or(backend.endpoint.as_str())
                    ),
                });
            }
        }
    }
    violations
}

/// Whether a collector may run in `namespace`: the operator's own namespace
/// always, any other when the settings list it or allow any.
pub fn namespace_allowed(
    guard: &CollectorGuard,
    operator_namespace: &str,
    namespace: &str,
) -> bool {
    namespace == operator_namespace
        || match &guard.namespaces {
            Namespaces::Any => true,
            Namespaces::List(list) => list.iter().any(|n| n == namespace),
        }
}

/// Whether `image`'s repository is one of the allowed prefixes or lies under one
/// (whole path segments: the prefix followed by `/`).
pub fn image_allowed(guard: &CollectorGuard, image: &str) -> bool {
    let repository = image_repository(image);
    guard.image_prefixes.iter().any(|prefix| {
        prefix.is_empty()
            || repository == prefix
            || repository
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The repository of an image reference: without `@digest` and without a `:tag`
/// (a `:` after the last `/`; one before it is a registry port).
pub fn image_repository(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    match (name.rfind(':'), name.rfind('/')) {
        (Some(colon), Some(slash)) if colon > slash => &name[..colon],
        (Some(colon), None) => &name[..colon],
        _ => name,
    }
}

/// The host of an `http(s)://` endpoint as the collector (Go's `net/url`) reads
/// it, lower-cased: after any `user@`, without the port, an IPv6 literal without
/// its brackets. `None` when there is no host.
pub fn endpoint_host(endpoint: &str) -> Option<String> {
    let (_, rest) = endpoint.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or(bracketed)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether `host` names a Service inside the cluster by its form:
/// - a single DNS label starting with a letter (a Service in the collector's own
///   namespace, or for workloads exporting straight to a backend, their own);
/// - DNS labels ending in `.svc` or `.svc.cluster.local`.
///
/// IP literals are outside, as is every other name. This judges the name, not
/// where DNS sends it: a name no Service has falls through the pods' DNS search
/// path like any other (an egress NetworkPolicy is the network-level bound).
pub fn host_in_cluster(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return false;
    }
    if !host.contains('.') {
        return host.starts_with(|c: char| c.is_ascii_lowercase()) && is_dns_label(host);
    }
    let cluster_suffix = format!(".svc.{CLUSTER_DOMAIN}");
    let Some(name) = host
        .strip_suffix(cluster_suffix.as_str())
        .or_else(|| host.strip_suffix(".svc"))
    else {
        return false;
    };
    name.split('.').all(is_dns_label)
}

/// A DNS-1123 label: 1 to 63 lower-case letters, digits and `-`, starting and
/// ending with a letter or digit.
fn is_dns_label(label: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&label.len())
        && label.chars().all(|c| alnum(c) || c == '-')
        && label.starts_with(alnum)
        && label.ends_with(alnum)
}

/// `--allowed-collector-namespaces`: namespace names, or `*` alone for any.
/// Empty entries are ignored, so an empty value allows only the operator's namespace.
pub fn parse_namespaces(values: &[String]) -> Result<Namespaces, String> {
    let names: Vec<&str> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect();
    if names.contains(&"*") {
        return if names.len() == 1 {
            Ok(Namespaces::Any)
        } else {
            Err("'*' (any namespace) cannot be combined with namespace names".into())
        };
    }
    if let Some(bad) = names.iter().find(|n| !is_dns_label(n)) {
        return Err(format!(
            "{bad:?} is not a namespace name (a DNS-1123 label)"
        ));
    }
    Ok(Namespaces::List(
        names.iter().map(|n| n.to_string()).collect(),
    ))
}

/// `--allowed-collector-images`: repository prefixes, at least one; a trailing
/// `/` is dropped (it is implied: prefixes match whole path segments).
pub fn parse_image_prefixes(values: &[String]) -> Result<Vec<String>, String> {
    let prefixes: Vec<String> = values
        .iter()
        .map(|v| v.trim().trim_end_matches('/').to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if prefixes.is_empty() {
        return Err("at least one image repository prefix is needed".into());
    }
    if let Some(bad) = prefixes
        .iter()
        .find(|p| p.contains('@') || p.contains(char::is_whitespace))
    {
        return Err(format!(
            "{bad:?} is not a repository prefix (no digest, no spaces)"
        ));
    }
    Ok(prefixes)
}

#[cfg(test)]
mod tests;
