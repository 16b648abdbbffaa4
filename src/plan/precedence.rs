//! Which policy owns a workload when several select it.
//!
//! Only policies with `mode: Enforce` that are not being deleted compete: a DryRun
//! policy writes nothing, so it cannot take a workload away from one that does.
//! Among the competitors the highest `spec.priority` wins, then the oldest policy
//! (`created_unix`), then the name in lexicographic order; names are unique, so
//! the order is total and every reconcile, of any policy, agrees on the owner.
//!
//! [`Ownership`] compiles every competitor's selector once and keeps them
//! strongest first, so finding a workload's owner walks the competitors only
//! until the first one that selects it: building it is O(N log N), a look-up is
//! O(N log namespaces) at worst (each competitor matches the workload's own
//! namespace only), and nothing is O(N x W) per workload or O(namespaces) per
//! reconcile.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::selection::Selection;
use super::{NamespaceView, PolicyView, Workload};
use crate::api::Mode;

/// Orders policies strongest first: `Less` means `a` beats `b`.
pub fn precedence_cmp(a: &PolicyView, b: &PolicyView) -> Ordering {
    b.spec
        .priority
        .cmp(&a.spec.priority)
        .then(a.created_unix.cmp(&b.created_unix))
        .then_with(|| a.name.cmp(&b.name))
}

/// The policy competes for ownership: `Enforce` and not being deleted.
pub fn competes(policy: &PolicyView) -> bool {
    policy.spec.mode == Mode::Enforce && !policy.deleting
}

/// One competing policy with its selection compiled.
#[derive(Debug)]
struct Competitor<'a> {
    policy: &'a PolicyView,
    selection: Selection,
}

/// The competing policies of a snapshot, strongest first, ready for per-workload
/// look-ups. A competitor whose selector is invalid selects nothing (its own plan
/// reports the error), so it cannot take workloads from valid policies.
#[derive(Debug)]
pub struct Ownership<'a> {
    competitors: Vec<Competitor<'a>>,
    namespaces: &'a BTreeMap<String, NamespaceView>,
}

impl<'a> Ownership<'a> {
    /// Indexes the competing policies of `policies`. Names are unique in a
    /// cluster; should a name appear twice (a cached copy next to the object a
    /// reconcile was handed), the later entry is used.
    pub fn new(
        policies: &'a [PolicyView],
        namespaces: &'a BTreeMap<String, NamespaceView>,
        operator_namespace: &'a str,
    ) -> Self {
        let mut latest: BTreeMap<&str, &'a PolicyView> = BTreeMap::new();
        for p in policies {
            latest.insert(&p.name, p);
        }
        let mut competitors: Vec<Competitor<'a>> = latest
            .into_values()
            .filter(|p| competes(p))
            .filter_map(|policy| {
                let selection = Selection::new(&policy.spec, operator_namespace).ok()?;
                Some(Competitor { policy, selection })
            })
            .collect();
        competitors.sort_by(|a, b| precedence_cmp(a.policy, b.policy));
        Ownership {
            competitors,
            namespaces,
        }
    }

    fn selects(&self, competitor: &Competitor<'_>, workload: &Workload) -> bool {
        competitor
            .selection
            .selects(self.namespaces.get(&*workload.id.namespace), workload)
    }

    /// The policy that owns `workload`: the strongest competitor that selects it.
    pub fn owner(&self, workload: &Workload) -> Option<&'a PolicyView> {
        self.owner_other_than("", workload)
    }

    /// The strongest competitor other than `policy_name` that selects `workload`:
    /// who owns it if that policy does not select it.
    pub fn owner_other_than(
        &self,
        policy_name: &str,
        workload: &Workload,
    ) -> Option<&'a PolicyView> {
        self.competitors
            .iter()
            .filter(|c| c.policy.name != policy_name)
            .find(|c| self.selects(c, workload))
            .map(|c| c.policy)
    }

    /// The strongest competitor, other than `policy` itself, that beats `policy`
    /// and selects `workload`. `None` means `policy` owns the workload if it is
    /// Enforce, or would own it if it were (DryRun): this is how a DryRun policy
    /// reports what it would do against the real ownership.
    pub fn beaten_by(&self, policy: &PolicyView, workload: &Workload) -> Option<&'a PolicyView> {
        self.competitors
            .iter()
            .take_while(|c| precedence_cmp(c.policy, policy) == Ordering::Less)
            .filter(|c| c.policy.name != policy.name)
            .find(|c| self.selects(c, workload))
            .map(|c| c.policy)
    }

    /// Names of the competing policies, strongest first.
    pub fn ranking(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.competitors.iter().map(|c| c.policy.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TracingPolicySpec;

    fn policy(name: &str, priority: i32, created: i64, mode: Mode, deleting: bool) -> PolicyView {
        let spec: TracingPolicySpec = serde_json::from_value(serde_json::json!({
            "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger:4317"}],
            "priority": priority,
            "mode": mode,
        }))
        .unwrap();
        PolicyView {
            name: name.into(),
            spec,
            created_unix: created,
            deleting,
        }
    }

    #[test]
    fn ranking_is_priority_then_age_then_name_and_only_enforce_competes() {
        let policies = vec![
            policy("b-same-age", 0, 100, Mode::Enforce, false),
            policy("a-same-age", 0, 100, Mode::Enforce, false),
            policy("older", 0, 50, Mode::Enforce, false),
            policy("high", 5, 900, Mode::Enforce, false),
            policy("dry-highest", 9, 1, Mode::DryRun, false),
            policy("deleting-highest", 9, 1, Mode::Enforce, true),
        ];
        let namespaces = BTreeMap::from([(
            "app".to_string(),
            NamespaceView {
                name: "app".into(),
                labels: BTreeMap::new(),
            },
        )]);
        let ownership = Ownership::new(&policies, &namespaces, "ops");
        let ranking: Vec<&str> = ownership.ranking().collect();
        assert_eq!(ranking, ["high", "older", "a-same-age", "b-same-age"]);

        // A name listed twice: the later (fresher) entry counts, once.
        let policies = vec![
            policy("x", 0, 1, Mode::Enforce, false),
            policy("y", 1, 1, Mode::Enforce, false),
            policy("x", 5, 1, Mode::Enforce, false),
        ];
        let ownership = Ownership::new(&policies, &namespaces, "ops");
        assert_eq!(ownership.ranking().collect::<Vec<_>>(), ["x", "y"]);
        let dry_now = vec![
            policy("x", 9, 1, Mode::Enforce, false),
            policy("x", 9, 1, Mode::DryRun, false),
        ];
        assert_eq!(
            Ownership::new(&dry_now, &namespaces, "ops")
                .ranking()
                .count(),
            0
        );
    }
}
