//! Which namespaces, workloads and containers a policy selects.
//!
//! Label selectors are compiled once per policy (not once per workload) and
//! validated the way the API server validates them, so a selector the API server
//! would reject for a built-in object (`In` without values, `Exists` with values,
//! an unknown operator) is reported as [`PlanError::InvalidSelector`] naming the
//! field instead of silently matching everything or nothing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use super::{Container, NamespaceView, PlanError, Workload};
use crate::api::{
    ALWAYS_EXCLUDED_NAMESPACES, KNOWN_PROXY_CONTAINERS, PolicySelector, TracingPolicySpec,
    WorkloadKind,
};
use crate::workload::SmallMap;

/// A validated `metav1.LabelSelector`, matched by kube's [`Selector`]. The empty
/// selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelMatcher {
    selector: Selector,
    /// The keys the selector reads: a workload's labels are matched through a
    /// map of only these, since the cache keeps them in a [`SmallMap`].
    keys: Vec<String>,
}

impl LabelMatcher {
    /// Validates `selector` the way the API server validates one on a built-in
    /// object (kube's conversion accepts `In` without values and `Exists` with
    /// values); `field` names it in errors (`namespaces`, `workloads`).
    pub fn compile(field: &'static str, selector: &LabelSelector) -> Result<Self, PlanError> {
        let invalid = |message: String| PlanError::InvalidSelector { field, message };
        if selector
            .match_labels
            .iter()
            .flatten()
            .any(|(k, _)| k.is_empty())
        {
            return Err(invalid("matchLabels: a key must not be empty".into()));
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let at = format!("matchExpressions[{i}]");
            if expr.key.is_empty() {
                return Err(invalid(format!("{at}.key must not be empty")));
            }
            let empty = expr.values.as_ref().is_none_or(Vec::is_empty);
            match expr.operator.as_str() {
                "In" | "NotIn" if empty => {
                    return Err(invalid(format!(
                        "{at}.values must not be empty for operator {}",
                        expr.operator
                    )));
                }
                "Exists" | "DoesNotExist" if !empty => {
                    return Err(invalid(format!(
                        "{at}.values must be empty for operator {}",
                        expr.operator
                    )));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(invalid(format!(
                        "{at}.operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                    )));
                }
            }
        }
        let mut keys: Vec<String> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .chain(
                selector
                    .match_expressions
                    .iter()
                    .flatten()
                    .map(|e| e.key.clone()),
            )
            .collect();
        keys.sort_unstable();
        keys.dedup();
        Selector::try_from(selector.clone())
            .map(|selector| LabelMatcher { selector, keys })
            .map_err(|e| invalid(e.to_string()))
    }

    /// All requirements hold (logical AND, as in Kubernetes).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.matches(labels)
    }

    /// [`Self::matches`] on a workload's labels.
    pub fn matches_small(&self, labels: &SmallMap) -> bool {
        let read: BTreeMap<String, String> = self
            .keys
            .iter()
            .filter_map(|k| labels.get(k.as_str()).map(|v| (k.clone(), v.clone())))
            .collect();
        self.selector.matches(&read)
    }
}

/// The term of a policy's selector that leaves a workload out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    /// kube-system, kube-public or kube-node-lease: never instrumented.
    SystemNamespace,
    /// The operator's own namespace: never instrumented.
    OperatorNamespace,
    /// Listed in `selector.excludeNamespaces`.
    ExcludedNamespace,
    /// The namespace is not known (not in the snapshot).
    NamespaceUnknown,
    /// The namespace's labels do not match `selector.namespaces`.
    NamespaceLabels,
    /// The workload's kind is not in `selector.kinds`.
    Kind,
    /// The workload's own labels do not match `selector.workloads`.
    WorkloadLabels,
    /// None of its containers is to be instrumented (`selector.containers`, or
    /// only known sidecar proxies).
    Containers,
}

/// A policy's `spec.selector`, compiled once and then evaluated per namespace,
/// workload and container.
#[derive(Clone, Debug)]
pub struct Selection {
    operator_namespace: String,
    exclude: PolicySelector,
    namespaces: Option<LabelMatcher>,
    workloads: Option<LabelMatcher>,
    kinds: BTreeSet<WorkloadKind>,
}

impl Selection {
    /// Compiles the selector; the only error is an invalid label selector.
    pub fn new(spec: &TracingPolicySpec, operator_namespace: &str) -> Result<Self, PlanError> {
        let sel = &spec.selector;
        let namespaces = sel
            .namespaces
            .as_ref()
            .map(|s| LabelMatcher::compile("namespaces", s))
            .transpose()?;
        let workloads = sel
            .workloads
            .as_ref()
            .map(|s| LabelMatcher::compile("workloads", s))
            .transpose()?;
        Ok(Selection {
            operator_namespace: operator_namespace.to_string(),
            exclude: sel.clone(),
            namespaces,
            workloads,
            // The schema requires at least one kind; an empty list only comes from
            // `PolicySelector::default()` (selector omitted), which means the default.
            kinds: if sel.kinds.is_empty() {
                WorkloadKind::ALL.into_iter().collect()
            } else {
                sel.kinds.iter().copied().collect()
            },
        })
    }

    /// Never instrumented, whatever the selector says: the Kubernetes system
    /// namespaces, the operator's own namespace and `selector.excludeNamespaces`.
    pub fn is_excluded(&self, namespace: &str) -> bool {
        ALWAYS_EXCLUDED_NAMESPACES.contains(&namespace)
            || namespace == self.operator_namespace
            || self
                .exclude
                .exclude_namespaces
                .iter()
                .any(|n| n.as_str() == namespace)
    }

    /// Not excluded, and its labels match `selector.namespaces` (absent: every namespace).
    pub fn selects_namespace(&self, namespace: &NamespaceView) -> bool {
        !self.is_excluded(&namespace.name)
            && self
                .namespaces
                .as_ref()
                .is_none_or(|m| m.matches(&namespace.labels))
    }

    /// The selected namespaces of `namespaces`.
    pub fn selected_namespaces<'n>(
        &self,
        namespaces: &'n BTreeMap<String, NamespaceView>,
    ) -> BTreeSet<&'n str> {
        namespaces
            .values()
            .filter(|ns| self.selects_namespace(ns))
            .map(|ns| ns.name.as_str())
            .collect()
    }

    /// The workload's kind is listed, its namespace (given directly; `None`: not
    /// known, so not selected) is selected, and its own `metadata.labels` match
    /// `selector.workloads` (absent: every workload).
    pub fn selects(&self, namespace: Option<&NamespaceView>, workload: &Workload) -> bool {
        namespace.is_some_and(|ns| ns.name == *workload.id.namespace && self.selects_namespace(ns))
            && self.kinds.contains(&workload.id.kind)
            && self
                .workloads
                .as_ref()
                .is_none_or(|m| m.matches_small(&workload.labels))
    }

    /// The first term of the selector that leaves `workload` out, in the order
    /// the selector is read (namespace, kind, workload labels, containers), or
    /// `None` when it is selected with at least one container to instrument.
    /// `namespace` is the workload's namespace (`None`: not known).
    pub fn exclusion(
        &self,
        namespace: Option<&NamespaceView>,
        workload: &Workload,
    ) -> Option<Exclusion> {
        let ns: &str = &workload.id.namespace;
        if ALWAYS_EXCLUDED_NAMESPACES.contains(&ns) {
            return Some(Exclusion::SystemNamespace);
        }
        if ns == self.operator_namespace {
            return Some(Exclusion::OperatorNamespace);
        }
        if self.is_excluded(ns) {
            return Some(Exclusion::ExcludedNamespace);
        }
        let Some(namespace) = namespace.filter(|n| n.name == ns) else {
            return Some(Exclusion::NamespaceUnknown);
        };
        if !self.selects_namespace(namespace) {
            return Some(Exclusion::NamespaceLabels);
        }
        if !self.kinds.contains(&workload.id.kind) {
            return Some(Exclusion::Kind);
        }
        if self
            .workloads
            .as_ref()
            .is_some_and(|m| !m.matches_small(&workload.labels))
        {
            return Some(Exclusion::WorkloadLabels);
        }
        if self.containers(workload).next().is_none() {
            return Some(Exclusion::Containers);
        }
        None
    }

    /// The containers to instrument, in pod order: only the names in
    /// `selector.containers` when it is non-empty, otherwise every container
    /// except the known sidecar proxies.
    pub fn containers<'w>(
        &self,
        workload: &'w Workload,
    ) -> impl Iterator<Item = &'w Container> + use<'w, '_> {
        let only = &self.exclude.containers;
        workload.template.containers.iter().filter(move |c| {
            if only.is_empty() {
                !KNOWN_PROXY_CONTAINERS.contains(&&*c.name)
            } else {
                only.iter().any(|n| n.as_str() == &*c.name)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn label_selector_operators() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("tier", "api")])),
            match_expressions: Some(vec![
                expr("app.kubernetes.io/part-of", "In", Some(&["caas", "edge"])),
                expr("canary", "NotIn", Some(&["true"])),
                expr("team", "Exists", None),
                expr("legacy", "DoesNotExist", Some(&[])),
            ]),
        };
        let m = LabelMatcher::compile("workloads", &selector).unwrap();
        let base = [
            ("tier", "api"),
            ("app.kubernetes.io/part-of", "caas"),
            ("team", "a"),
        ];
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&base, true),
            (
                &[
                    ("tier", "api"),
                    ("app.kubernetes.io/part-of", "edge"),
                    ("team", "a"),
                    ("canary", "false"),
                ],
                true,
            ),
            (
                &[
                    ("tier", "web"),
                    ("app.kubernetes.io/part-of", "caas"),
                    ("team", "a"),
                ],
                false,
            ),
            (
                &[
                    ("tier", "api"),
                    ("app.kubernetes.io/part-of", "other"),
                    ("team", "a"),
                ],
                false,
            ),
            (&[("tier", "api"), ("team", "a")], false),
            (
                &[
                    ("tier", "api"),
                    ("app.kubernetes.io/part-of", "caas"),
                    ("team", "a"),
                    ("canary", "true"),
                ],
                false,
            ),
            (
                &[("tier", "api"), ("app.kubernetes.io/part-of", "caas")],
                false,
            ),
            (
                &[
                    ("tier", "api"),
                    ("app.kubernetes.io/part-of", "caas"),
                    ("team", "a"),
                    ("legacy", ""),
                ],
                false,
            ),
        ];
        for (i, (l, want)) in cases.iter().enumerate() {
            assert_eq!(m.matches(&labels(l)), *want, "case {i}: {l:?}");
            // A workload's labels (a SmallMap) carry keys the selector never
            // reads; they must not change the answer.
            let small: SmallMap = l
                .iter()
                .copied()
                .chain([("pod-template-hash", "x"), ("zzz", "1")])
                .map(|(k, v)| (k, v.to_string()))
                .collect();
            assert_eq!(
                m.matches_small(&small),
                *want,
                "case {i} as SmallMap: {l:?}"
            );
        }
        assert!(
            LabelMatcher::compile("namespaces", &LabelSelector::default())
                .unwrap()
                .matches(&labels(&[]))
        );
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let cases = [
            (
                expr("a", "In", None),
                "matchExpressions[0].values must not be empty for operator In",
            ),
            (
                expr("a", "NotIn", Some(&[])),
                "matchExpressions[0].values must not be empty for operator NotIn",
            ),
            (
                expr("a", "Exists", Some(&["x"])),
                "matchExpressions[0].values must be empty for operator Exists",
            ),
            (
                expr("a", "Equals", Some(&["x"])),
                "matchExpressions[0].operator \"Equals\" is not one of In, NotIn, Exists, DoesNotExist",
            ),
            (
                expr("", "Exists", None),
                "matchExpressions[0].key must not be empty",
            ),
        ];
        for (requirement, message) in cases {
            let selector = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![requirement]),
            };
            let err = LabelMatcher::compile("namespaces", &selector).unwrap_err();
            assert_eq!(
                err,
                PlanError::InvalidSelector {
                    field: "namespaces",
                    message: message.into()
                }
            );
            assert_eq!(
                err.to_string(),
                format!("spec.selector.namespaces: {message}")
            );
        }
    }

    #[test]
    fn the_first_term_that_leaves_a_workload_out_is_named() {
        use crate::plan::{Container, WorkloadId};
        let spec: TracingPolicySpec = serde_json::from_value(serde_json::json!({
            "selector": {
                "namespaces": {"matchLabels": {"tracing": "on"}},
                "workloads": {"matchLabels": {"tier": "api"}},
                "kinds": ["Deployment", "StatefulSet"],
                "excludeNamespaces": ["sandbox"],
                "containers": ["app"],
            },
            "backends": [{"name": "j", "type": "jaeger", "endpoint": "http://j:4317"}],
        }))
        .unwrap();
        let selection = Selection::new(&spec, "ops").unwrap();
        let ns = |name: &str, on: bool| NamespaceView {
            name: name.into(),
            labels: if on {
                labels(&[("tracing", "on")])
            } else {
                BTreeMap::new()
            },
        };
        let workload = |ns: &str, kind, tier: &str, container: &str| Workload {
            id: WorkloadId::new(ns, kind, "w"),
            labels: labels(&[("tier", tier)]).into(),
            annotations: Default::default(),
            template: crate::workload::Template {
                containers: vec![Container {
                    name: container.into(),
                    ..Container::default()
                }],
                ..Default::default()
            },
            rollout: Default::default(),
        };
        let d = WorkloadKind::Deployment;
        let cases = [
            (
                ns("kube-system", true),
                workload("kube-system", d, "api", "app"),
                Some(Exclusion::SystemNamespace),
            ),
            (
                ns("ops", true),
                workload("ops", d, "api", "app"),
                Some(Exclusion::OperatorNamespace),
            ),
            (
                ns("sandbox", true),
                workload("sandbox", d, "api", "app"),
                Some(Exclusion::ExcludedNamespace),
            ),
            (
                ns("legacy", false),
                workload("legacy", d, "api", "app"),
                Some(Exclusion::NamespaceLabels),
            ),
            (
                ns("shop", true),
                workload("shop", WorkloadKind::DaemonSet, "api", "app"),
                Some(Exclusion::Kind),
            ),
            (
                ns("shop", true),
                workload("shop", d, "batch", "app"),
                Some(Exclusion::WorkloadLabels),
            ),
            (
                ns("shop", true),
                workload("shop", d, "api", "worker"),
                Some(Exclusion::Containers),
            ),
            (ns("shop", true), workload("shop", d, "api", "app"), None),
        ];
        for (namespace, w, want) in cases {
            assert_eq!(selection.exclusion(Some(&namespace), &w), want, "{}", w.id);
            // Only the container term is the explanation's own: the others are
            // exactly what leaves a workload unselected.
            assert_eq!(
                selection.selects(Some(&namespace), &w),
                matches!(want, None | Some(Exclusion::Containers)),
                "{}",
                w.id
            );
        }
        let w = workload("gone", d, "api", "app");
        assert_eq!(
            selection.exclusion(None, &w),
            Some(Exclusion::NamespaceUnknown)
        );
    }
}
