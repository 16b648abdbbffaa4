//! A policy's plan kept between reconciles, so that work is proportional to what
//! changed: an event on one selected workload re-plans that workload only.
//!
//! The index holds, per workload the policy selects or owns, the decision
//! ([`Indexed`]) and, for an `Apply`, the workload's rollout observation, built
//! when the workload or the plan changed and reused by every later reconcile
//! (the rollout's slot accounting is a cheap pass over them). A change of
//! anything every decision depends on (the policy's spec, any policy's
//! precedence, namespace labels, the injection mode) is a new [`Basis`]: the
//! next update re-plans the whole selection.
//!
//! Pure: the controller hands in the workloads and the [`Planner`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::rollout::WorkloadRollout;
use super::{Injection, Planner, Workload, WorkloadAction, WorkloadId, WorkloadPlan, injection};

/// What every decision of a policy depends on besides its own workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Basis {
    /// The policy's `metadata.generation` (its spec).
    pub generation: i64,
    /// A fingerprint of every policy's name, generation and deletion: precedence.
    pub policies: u64,
    /// Incremented by the cache whenever a namespace's labels change.
    pub namespaces: u64,
    pub injection: Injection,
}

/// One workload's decision, kept compact: the full plan is computed again only
/// for a workload the operator writes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Indexed {
    Apply {
        service: String,
        /// The live workload's rollout state against this plan.
        rollout: Box<WorkloadRollout>,
        /// Per container, the planned variables it sets itself.
        overrides: Vec<(String, Vec<String>)>,
        /// The agent its pods get, and the containers skipped.
        agent: super::agents::AgentSummary,
    },
    Remove,
    Conflicted {
        winner: String,
    },
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub workload: Arc<Workload>,
    pub decision: Indexed,
}

impl Entry {
    /// Whether a reconcile would do the same with `after` as with `before`:
    /// the same decision, on a workload that differs at most in its labels and
    /// so in nothing the rollout, the writes or status read (labels feed the
    /// plan only, and the plan is in the decision: its hash, overrides, agent).
    pub fn same_for_rollout(before: Option<&Entry>, after: Option<&Entry>) -> bool {
        match (before, after) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.decision == b.decision
                    && (Arc::ptr_eq(&a.workload, &b.workload) || {
                        let (a, b) = (&*a.workload, &*b.workload);
                        a.id == b.id
                            && a.annotations == b.annotations
                            && a.template == b.template
                            && a.rollout == b.rollout
                    })
            }
            _ => false,
        }
    }
}

/// The index of one policy.
#[derive(Clone, Debug, Default)]
pub struct PolicyIndex {
    basis: Option<Basis>,
    entries: BTreeMap<WorkloadId, Entry>,
}

/// How an update went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Updated {
    /// The basis changed (or the index was empty): everything was re-planned.
    pub full: bool,
    /// Workloads planned in this update.
    pub planned: usize,
    /// Of those (in an incremental update), how many now differ from their
    /// previous entry in anything the rollout and status read: the decision, the
    /// operator's annotations, the template, the rollout state. A label change
    /// that leaves the decision as it was is not one.
    pub moved: usize,
}

impl PolicyIndex {
    /// Whether an update with `basis` re-plans everything.
    pub fn needs_full(&self, basis: &Basis) -> bool {
        self.basis.as_ref() != Some(basis)
    }

    /// Brings the index up to date: with a new `basis`, re-plans every workload of
    /// `all()`; otherwise only `changed` (a workload that is gone is `None`).
    pub fn update(
        &mut self,
        planner: &Planner<'_>,
        basis: Basis,
        changed: impl IntoIterator<Item = (WorkloadId, Option<Arc<Workload>>)>,
        all: impl FnOnce() -> Vec<Arc<Workload>>,
    ) -> Updated {
        if self.needs_full(&basis) {
            self.entries.clear();
            let workloads = all();
            let planned = workloads.len();
            for w in workloads {
                self.plan_one(planner, basis.injection, w);
            }
            self.basis = Some(basis);
            return Updated {
                full: true,
                planned,
                moved: planned,
            };
        }
        let mut planned = 0;
        let mut moved = 0;
        for (id, live) in changed {
            planned += 1;
            let before = self.entries.remove(&id);
            if let Some(w) = live {
                self.plan_one(planner, basis.injection, w);
            }
            if !Entry::same_for_rollout(before.as_ref(), self.entries.get(&id)) {
                moved += 1;
            }
        }
        Updated {
            full: false,
            planned,
            moved,
        }
    }

    fn plan_one(&mut self, planner: &Planner<'_>, mode: Injection, w: Arc<Workload>) {
        let Some(action) = planner.decide(&w) else {
            return;
        };
        let decision = match action {
            WorkloadAction::Apply(plan) => Indexed::Apply {
                rollout: Box::new(WorkloadRollout::observe(
                    planner.policy_name(),
                    &w.id,
                    &plan.config_hash,
                    injection::is_applied(mode, planner.policy_name(), &plan, &w),
                    Some(&w),
                )),
                overrides: plan
                    .containers
                    .iter()
                    .filter(|c| !c.user_overrides.is_empty())
                    .map(|c| (c.name.clone(), c.user_overrides.clone()))
                    .collect(),
                agent: plan.agent.summary(),
                service: plan.service_name,
            },
            WorkloadAction::Remove => Indexed::Remove,
            WorkloadAction::Conflicted { winner } => Indexed::Conflicted { winner },
        };
        self.entries.insert(
            w.id.clone(),
            Entry {
                workload: w,
                decision,
            },
        );
    }

    /// Every entry, sorted by [`WorkloadId`].
    pub fn entries(&self) -> impl Iterator<Item = (&WorkloadId, &Entry)> {
        self.entries.iter()
    }

    pub fn get(&self, id: &WorkloadId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The rollout observations of the `Apply` entries, sorted.
    pub fn rollouts(&self) -> impl Iterator<Item = &WorkloadRollout> {
        self.entries.values().filter_map(|e| match &e.decision {
            Indexed::Apply { rollout, .. } => Some(&**rollout),
            _ => None,
        })
    }

    /// The full plan of one `Apply` entry, computed again (for a write).
    pub fn plan_of(&self, planner: &Planner<'_>, id: &WorkloadId) -> Option<WorkloadPlan> {
        let entry = self.entries.get(id)?;
        match planner.decide(&entry.workload)? {
            WorkloadAction::Apply(plan) => Some(plan),
            _ => None,
        }
    }

    /// Forgets everything: the next update re-plans the whole selection.
    pub fn invalidate(&mut self) {
        self.basis = None;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
