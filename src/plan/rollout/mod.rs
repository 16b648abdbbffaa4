//! The progressive rollout: which workloads get the policy's settings now, which
//! wait, which are done and which failed — judging only the operator's own change.
//!
//! Any change to a pod template restarts pods, so the operator paces its changes:
//! at most `rollout.maxConcurrent` workloads roll out at once (`Progressive`), in
//! the order namespace, kind, name, and each must be reported complete by its own
//! controller (per kind, see `crate::workload`) within `rollout.progressDeadline`.
//!
//! The operator acts only on what it caused:
//! - once a workload completed the rollout of a config hash, that is recorded on
//!   it (`tracing.caas.io/rolled-out`); from then on, a drain, a crash, a
//!   scale-up or the user's own broken release is reported as `Unavailable`,
//!   never failed, rolled back or given a slot;
//! - a workload paused by its owner, or in the middle of a rollout of its own (or
//!   unavailable on its own) before the operator starts, is waited for: nothing
//!   is applied on top of it, and it holds no slot;
//! - only the operator's own rollout that misses its deadline counts as failed.
//!
//! Restart safety: every input of [`plan_rollout`] is cluster state. The operator
//! keeps its rollout state on the workloads themselves, as annotations it writes
//! with the same server-side apply that changes the template (see
//! [`annotations`]), and reads progress back from them and the workloads'
//! status, so an operator restarted mid-rollout computes the same steps the old
//! one would have: a workload that already carries the plan is tracked, never
//! started again.
//!
//! Pure: no I/O, no clock (`now` is an input), no randomness.

use k8s_openapi::jiff::Timestamp;

use super::{Workload, WorkloadId};
use crate::api::{
    APPLIED_AT_ANNOTATION, CONFIG_HASH_ANNOTATION, OnFailure, POLICY_ANNOTATION,
    ROLLED_OUT_ANNOTATION, ROLLOUT_FAILED_ANNOTATION, ROLLOUT_FAILURE_ANNOTATION, RolloutSpec,
    RolloutStrategy,
};
use crate::workload::RolloutState;

pub mod annotations;
pub use annotations::*;

/// Failure reason: the workload's controller runs the new template, but not every
/// pod became available (ready, for a StatefulSet) by the deadline.
pub const REASON_PODS_NOT_READY: &str = "PodsNotReady";
/// Failure reason: the new template was not rolled out by the deadline.
pub const REASON_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// Failure reason: the API server refused the operator's apply (set by the controller).
pub const REASON_APPLY_REJECTED: &str = "ApplyRejected";
/// Failure reason: this config's rollout failed earlier and was rolled back.
pub const REASON_ROLLED_BACK: &str = "RolledBack";

/// One workload the policy plans to `Apply`, as the cluster shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadRollout {
    pub id: WorkloadId,
    /// The config hash the plan wants on the workload.
    pub planned_hash: String,
    /// The live workload carries the plan exactly (`plan::injection::is_applied`).
    pub applied: bool,
    /// `tracing.caas.io/config-hash`, when the workload carries this policy's annotation.
    pub live_hash: Option<String>,
    /// `tracing.caas.io/applied-at` as written, unparsed, when this policy's.
    pub applied_at: Option<String>,
    /// `tracing.caas.io/rollout-failed`, when this policy's.
    pub rollout_failed: Option<String>,
    /// `tracing.caas.io/rollout-failure`: `Reason: message` of that failure.
    pub rollout_failure: Option<String>,
    /// `tracing.caas.io/rolled-out`: the hash whose rollout completed, when this policy's.
    pub rolled_out: Option<String>,
    /// What the workload's controller reports; `None` when it is not known.
    pub status: Option<RolloutState>,
}

impl WorkloadRollout {
    /// Reads the rollout state of one workload. The rollout annotations count only
    /// while the workload carries this policy's `tracing.caas.io/policy`
    /// annotation (another policy's are not ours).
    pub fn observe(
        policy: &str,
        id: &WorkloadId,
        planned_hash: &str,
        applied: bool,
        live: Option<&Workload>,
    ) -> Self {
        let ours = live
            .filter(|w| w.annotations.get(POLICY_ANNOTATION).map(String::as_str) == Some(policy));
        let annotation = |key: &str| ours.and_then(|w| w.annotations.get(key)).cloned();
        WorkloadRollout {
            id: id.clone(),
            planned_hash: planned_hash.to_string(),
            applied: applied && live.is_some(),
            live_hash: annotation(CONFIG_HASH_ANNOTATION),
            applied_at: annotation(APPLIED_AT_ANNOTATION),
            rollout_failed: annotation(ROLLOUT_FAILED_ANNOTATION),
            rollout_failure: annotation(ROLLOUT_FAILURE_ANNOTATION),
            rolled_out: annotation(ROLLED_OUT_ANNOTATION),
            status: live.map(|w| w.rollout.clone()),
        }
    }

    fn complete(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| self.id.kind.info().is_complete(s))
    }

    /// Complete but for the generation: its pods are all on the template and available.
    fn pods_complete(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            let seen = RolloutState {
                observed_generation: s.generation,
                ..s.clone()
            };
            self.id.kind.info().is_complete(&seen)
        })
    }

    fn paused(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.paused)
    }

    fn describe(&self) -> String {
        match &self.status {
            Some(s) => self.id.kind.info().describe(s),
            None => format!("no rollout status reported by the {}", self.id.kind),
        }
    }
}

/// What to do with one workload now, and how it counts in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutStep {
    /// Carries the plan, rolled out. Nothing to write. Counts as up to date.
    UpToDate,
    /// Carries the plan and its controller now reports the operator's rollout of
    /// it complete: record that (`tracing.caas.io/rolled-out`, an annotation-only
    /// write: no pod restarts). Counts as up to date.
    Record,
    /// Carries the plan and rolled out earlier, but is unavailable now for reasons
    /// of its own (a drain, a crash, a scale-up, the user's own release). Reported,
    /// never judged: no write, no slot. Counts as up to date and as unavailable.
    Unavailable { message: String },
    /// Carries the plan; its pods are being replaced. Fails at `deadline`.
    /// Nothing to write. Counts as rolling out and holds a slot.
    RollingOut {
        since: Timestamp,
        deadline: Timestamp,
    },
    /// Carries the plan and is rolling out, but its `applied-at` is missing,
    /// unreadable or in the future. Apply the same plan again with
    /// [`applied_annotations`] at `now`: the pod template does not change, so no
    /// pod restarts, and the deadline counts from now. Counts as rolling out.
    ///
    /// Treating such a workload as just started is safe: it can only put a
    /// failure verdict later, never earlier, so a bad annotation never fails or
    /// rolls back a healthy workload; and a workload whose controller reports
    /// it rolled out is up to date whatever the annotation says.
    Restamp,
    /// Apply the plan now, with [`applied_annotations`] at `now`. `drifted`: the
    /// workload carried this config hash but no longer carries the plan (for
    /// example a variable was removed by hand), so this re-applies it.
    /// Counts as rolling out.
    Start { drifted: bool },
    /// Needs the plan but every slot is taken. Counts as waiting.
    Queued,
    /// Needs the plan, but `onFailure: Pause` and a workload failed with the
    /// current settings. Counts as waiting.
    Paused,
    /// Its owner paused it (`spec.paused`): nothing starts on it and nothing is
    /// judged until it is resumed. `release`: it carries the plan mid-rollout, so
    /// apply the plan again without `applied-at` (no pod restarts); the deadline
    /// then counts from the resume ([`RolloutStep::Restamp`]). Counts as waiting,
    /// holds no slot.
    OwnerPaused { release: bool },
    /// Needs the plan, but the workload is in the middle of a rollout of its own
    /// or unavailable on its own: the settings start once its controller reports
    /// it complete, so the operator never stacks its change on someone else's.
    /// Counts as waiting, holds no slot.
    WaitingForWorkload { message: String },
    /// The operator's rollout missed its deadline; kept as it is (`onFailure`
    /// `Pause` or `Continue`). Counts as failed and frees its slot. Becomes
    /// `Record` if it recovers.
    Failed {
        reason: &'static str,
        message: String,
    },
    /// The operator's rollout missed its deadline with `onFailure: Rollback`:
    /// apply the rollback now ([`rollback_annotations`] at `now` and no template
    /// settings), which returns the workload to its template before the
    /// operator's change. Counts as failed. Restoring the previous pods is a
    /// rollout too: the workload keeps its slot until its controller reports it
    /// complete, or for at most one more progress deadline.
    RollBack {
        reason: &'static str,
        message: String,
    },
    /// This config hash was rolled back on this workload earlier; it is not
    /// applied again until the planned hash changes. Counts as failed; holds a
    /// slot while the rollback is still replacing pods (see `RollBack`).
    RolledBack {
        reason: &'static str,
        message: String,
    },
}

impl RolloutStep {
    /// The failure reason and message, for status and the `RolloutFailed` Event.
    pub fn failure(&self) -> Option<(&'static str, &str)> {
        match self {
            RolloutStep::Failed { reason, message }
            | RolloutStep::RollBack { reason, message }
            | RolloutStep::RolledBack { reason, message } => Some((*reason, message.as_str())),
            _ => None,
        }
    }

    /// The controller applies the plan with a fresh `applied-at` in this step.
    pub fn applies_plan(&self) -> bool {
        matches!(self, RolloutStep::Start { .. } | RolloutStep::Restamp)
    }

    /// The controller writes to the workload in this step.
    pub fn writes(&self) -> bool {
        self.applies_plan()
            || matches!(
                self,
                RolloutStep::Record
                    | RolloutStep::RollBack { .. }
                    | RolloutStep::OwnerPaused { release: true }
            )
    }
}

/// One workload's step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadStep {
    pub id: WorkloadId,
    pub step: RolloutStep,
}

/// Workload counts of a rollout, for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    /// Every workload planned.
    pub total: i32,
    /// `UpToDate`, `Record` and `Unavailable`.
    pub up_to_date: i32,
    /// `Unavailable`.
    pub unavailable: i32,
    /// `RollingOut`, `Restamp` and `Start`.
    pub rolling_out: i32,
    /// `Failed`, `RollBack` and `RolledBack`.
    pub failed: i32,
    /// `Queued`, `Paused`, `OwnerPaused` and `WaitingForWorkload`.
    pub waiting: i32,
}

/// The rollout step of a whole policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutPlan {
    /// One step per input workload, sorted by [`WorkloadId`].
    pub steps: Vec<WorkloadStep>,
    pub counts: RolloutCounts,
    /// `onFailure: Pause` holds the rollout because of this failed workload
    /// (the first in order); nothing new starts while it is set.
    pub paused_by: Option<WorkloadId>,
    /// The earliest moment a step changes without the cluster changing (the
    /// nearest progress deadline): requeue then. `None`: only cluster changes matter.
    pub requeue_at: Option<Timestamp>,
}

impl RolloutPlan {
    /// `N/M workloads rolled out`, the `Progressing` condition's message.
    pub fn summary(&self) -> String {
        rolled_out_summary(self.counts.up_to_date, self.counts.total)
    }

    /// How long from `now` until [`RolloutPlan::requeue_at`]; zero if it has passed.
    pub fn requeue_after(&self, now: Timestamp) -> Option<std::time::Duration> {
        self.requeue_at
            .map(|at| std::time::Duration::try_from(at.duration_since(now)).unwrap_or_default())
    }
}

/// The rollout settings cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("spec.rollout.progressDeadline: {0}")]
    ProgressDeadline(String),
}

/// What a workload is, before slots and the pause are handed out.
enum Class {
    Done,
    Record,
    Unavailable(String),
    Rolling {
        since: Timestamp,
        deadline: Timestamp,
    },
    Restamp,
    OwnerPaused {
        release: bool,
    },
    WaitingForWorkload(String),
    /// `holds_slot_until`: see [`holds_slot_until`].
    NeedsApply {
        drifted: bool,
        holds_slot_until: Option<Timestamp>,
    },
    Failed {
        reason: &'static str,
        message: String,
    },
    RolledBack {
        reason: &'static str,
        message: String,
        holds_slot_until: Option<Timestamp>,
    },
}

/// Plans the rollout step of one policy at `now` over `workloads` (those with an
/// `Apply` decision; any order, the steps come out sorted by [`WorkloadId`]).
///
/// Per workload:
/// - carries the plan and recorded as rolled out: `UpToDate`, or `Unavailable`
///   while its controller does not report it complete;
/// - carries the plan, not yet recorded: `Record` once complete; while it is
///   not, `OwnerPaused` if paused, else `RollingOut` until `applied-at` plus
///   `progressDeadline`, then failed: `RollBack` (`onFailure: Rollback`) or
///   `Failed` (`Pause`, `Continue`); `Restamp` when `applied-at` is unusable;
/// - `rollout-failed` equals the planned hash: `RolledBack`;
/// - otherwise it needs an apply (a `drifted` one if it carried the planned hash):
///   `OwnerPaused` if paused, `WaitingForWorkload` if its own rollout is not
///   complete (and no change of the operator's is still rolling on it), else
///   `Start` while slots last, then `Queued`; `Paused` instead when
///   `onFailure: Pause` and any workload is `Failed` or `RolledBack`.
///
/// Slots: `maxConcurrent` minus the workloads replacing pods because of the
/// operator; unlimited with `strategy: Immediate`. Those are the `RollingOut`,
/// `Restamp` and `RollBack` ones, and any other whose controller does not report
/// complete within the deadline of its `applied-at` (a rollback being restored,
/// or earlier settings still rolling out when the policy changed: such a
/// workload starts the new settings in the slot it holds). So a rollback or a
/// policy change mid-rollout never has more than `maxConcurrent` workloads
/// replacing pods. A workload failed and kept (`Pause`, `Continue`) frees its
/// slot, and so does every workload waiting on its owner.
pub fn plan_rollout<'w>(
    spec: &RolloutSpec,
    now: Timestamp,
    workloads: impl IntoIterator<Item = &'w WorkloadRollout>,
) -> Result<RolloutPlan, RolloutError> {
    let deadline = spec
        .progress_deadline
        .to_std()
        .map_err(RolloutError::ProgressDeadline)?;
    let stamped = stamp_time(now);
    let after_deadline = |t: Timestamp| t.checked_add(deadline).unwrap_or(Timestamp::MAX);

    let mut ordered: Vec<&WorkloadRollout> = workloads.into_iter().collect();
    ordered.sort_by(|a, b| a.id.cmp(&b.id));
    let classes: Vec<Class> = ordered
        .iter()
        .map(|w| classify(w, now, &spec.progress_deadline.0, after_deadline))
        .collect();

    let paused_by = if spec.on_failure == OnFailure::Pause {
        ordered
            .iter()
            .zip(&classes)
            .find(|(_, c)| matches!(c, Class::Failed { .. } | Class::RolledBack { .. }))
            .map(|(w, _)| w.id.clone())
    } else {
        None
    };
    let rolling = classes
        .iter()
        .filter(|c| match c {
            Class::Rolling { .. } | Class::Restamp => true,
            Class::Failed { .. } => spec.on_failure == OnFailure::Rollback,
            Class::NeedsApply {
                holds_slot_until, ..
            }
            | Class::RolledBack {
                holds_slot_until, ..
            } => holds_slot_until.is_some(),
            Class::Done
            | Class::Record
            | Class::Unavailable(_)
            | Class::OwnerPaused { .. }
            | Class::WaitingForWorkload(_) => false,
        })
        .count();
    let mut slots = match spec.strategy {
        RolloutStrategy::Immediate => usize::MAX,
        RolloutStrategy::Progressive => usize::try_from(spec.max_concurrent.max(1))
            .unwrap_or(1)
            .saturating_sub(rolling),
    };

    let mut counts = RolloutCounts::default();
    let mut requeue_at: Option<Timestamp> = None;
    let mut earliest = |t: Timestamp| {
        if t < Timestamp::MAX {
            requeue_at = Some(requeue_at.map_or(t, |r| r.min(t)));
        }
    };
    let mut steps = Vec::with_capacity(ordered.len());
    for (w, class) in ordered.iter().zip(classes) {
        let step = match class {
            Class::Done => RolloutStep::UpToDate,
            Class::Record => RolloutStep::Record,
            Class::Unavailable(message) => RolloutStep::Unavailable { message },
            Class::Rolling { since, deadline } => {
                earliest(deadline);
                RolloutStep::RollingOut { since, deadline }
            }
            Class::Restamp => {
                earliest(after_deadline(stamped));
                RolloutStep::Restamp
            }
            Class::OwnerPaused { release } => RolloutStep::OwnerPaused { release },
            Class::WaitingForWorkload(message) => RolloutStep::WaitingForWorkload { message },
            Class::NeedsApply {
                holds_slot_until, ..
            } if paused_by.is_some() => {
                // A slot it holds frees at its deadline; nothing else changes by time.
                if let Some(t) = holds_slot_until {
                    earliest(t);
                }
                RolloutStep::Paused
            }
            Class::NeedsApply {
                drifted,
                holds_slot_until,
            } if holds_slot_until.is_some() || slots > 0 => {
                if holds_slot_until.is_none() {
                    slots -= 1;
                }
                earliest(after_deadline(stamped));
                RolloutStep::Start { drifted }
            }
            Class::NeedsApply { .. } => RolloutStep::Queued,
            Class::Failed { reason, message } => match spec.on_failure {
                OnFailure::Rollback => {
                    earliest(after_deadline(stamped));
                    RolloutStep::RollBack { reason, message }
                }
                OnFailure::Pause | OnFailure::Continue => RolloutStep::Failed { reason, message },
            },
            Class::RolledBack {
                reason,
                message,
                holds_slot_until,
            } => {
                if let Some(t) = holds_slot_until {
                    earliest(t);
                }
                RolloutStep::RolledBack { reason, message }
            }
        };
        counts.total += 1;
        match step {
            RolloutStep::UpToDate | RolloutStep::Record => counts.up_to_date += 1,
            RolloutStep::Unavailable { .. } => {
                counts.up_to_date += 1;
                counts.unavailable += 1;
            }
            RolloutStep::RollingOut { .. } | RolloutStep::Restamp | RolloutStep::Start { .. } => {
                counts.rolling_out += 1
            }
            RolloutStep::Queued
            | RolloutStep::Paused
            | RolloutStep::OwnerPaused { .. }
            | RolloutStep::WaitingForWorkload { .. } => counts.waiting += 1,
            RolloutStep::Failed { .. }
            | RolloutStep::RollBack { .. }
            | RolloutStep::RolledBack { .. } => counts.failed += 1,
        }
        steps.push(WorkloadStep {
            id: w.id.clone(),
            step,
        });
    }
    Ok(RolloutPlan {
        steps,
        counts,
        paused_by,
        requeue_at,
    })
}

fn classify(
    w: &WorkloadRollout,
    now: Timestamp,
    deadline_text: &str,
    after_deadline: impl Fn(Timestamp) -> Timestamp,
) -> Class {
    let complete = w.complete();
    let since = w
        .applied_at
        .as_deref()
        .and_then(parse_applied_at)
        .filter(|t| *t <= now);
    if w.applied {
        if w.rolled_out.as_deref() == Some(w.planned_hash.as_str()) {
            // Only its pods matter now: a generation its controller has yet to see
            // (the operator's own record bumps a Deployment's) is not unavailability.
            return if complete || w.pods_complete() {
                Class::Done
            } else {
                Class::Unavailable(w.describe())
            };
        }
        if complete {
            return Class::Record;
        }
        if w.paused() {
            return Class::OwnerPaused {
                release: w.applied_at.is_some(),
            };
        }
        let Some(since) = since else {
            return Class::Restamp;
        };
        let deadline = after_deadline(since);
        if now < deadline {
            return Class::Rolling { since, deadline };
        }
        // Its controller has not even seen the change yet (a busy or stopped
        // controller-manager): nothing of ours failed. It keeps its slot, and is
        // judged once the controller has caught up; look again a deadline later.
        if w.status.as_ref().is_some_and(|s| !s.observed()) {
            return Class::Rolling {
                since,
                deadline: after_deadline(now),
            };
        }
        // Pods of the new template exist but not all pods are available: they did
        // not come up. Otherwise the new template never got that far.
        let reason = match &w.status {
            Some(s) if s.observed() && s.updated > 0 && s.available < s.updated + s.old => {
                REASON_PODS_NOT_READY
            }
            _ => REASON_DEADLINE_EXCEEDED,
        };
        return Class::Failed {
            reason,
            message: format!(
                "{} after {deadline_text} (config {}, applied {})",
                w.describe(),
                w.planned_hash,
                format_applied_at(since)
            ),
        };
    }
    let holds_slot_until = holds_slot_until(complete, since, now, after_deadline);
    if w.rollout_failed.as_deref() == Some(w.planned_hash.as_str()) {
        let (reason, message) = recorded_failure(w.rollout_failure.as_deref(), &w.planned_hash);
        return Class::RolledBack {
            reason,
            message: rolled_back_message(&message),
            holds_slot_until,
        };
    }
    if w.paused() {
        return Class::OwnerPaused { release: false };
    }
    // Our own earlier settings that never completed (kept after a failure, or
    // replaced by a policy change) are ours to fix, not a rollout of the owner's.
    let ours_unfinished = w.live_hash.is_some() && w.rolled_out != w.live_hash;
    if holds_slot_until.is_none() && !ours_unfinished && w.status.is_some() && !complete {
        return Class::WaitingForWorkload(format!(
            "{}; tracing starts once the {} is rolled out and available",
            w.describe(),
            w.id.kind
        ));
    }
    Class::NeedsApply {
        drifted: w.live_hash.as_deref() == Some(w.planned_hash.as_str()),
        holds_slot_until,
    }
}

/// For a workload that does not carry the plan: until when it keeps a rollout
/// slot. `applied-at` is only ever this policy's own stamp of its last template
/// change (earlier settings, or a rollback), so while the workload's controller
/// does not report complete and that change is within its progress deadline,
/// its pods are still being replaced because of the operator.
fn holds_slot_until(
    complete: bool,
    since: Option<Timestamp>,
    now: Timestamp,
    after_deadline: impl Fn(Timestamp) -> Timestamp,
) -> Option<Timestamp> {
    let until = after_deadline(since?);
    (!complete && now < until).then_some(until)
}

/// For a rolled-out workload whose update strategy leaves pods on the previous
/// template until their owner replaces them (`OnDelete`, a StatefulSet
/// partition): what its pods are at, for status. `None` when none is left.
pub fn pods_left_behind(id: &WorkloadId, state: &RolloutState) -> Option<String> {
    let by_strategy = matches!(
        state.strategy,
        crate::workload::Strategy::OnDelete | crate::workload::Strategy::Partitioned(_)
    );
    (by_strategy && state.old > 0).then(|| id.kind.info().describe(state))
}

/// `now` to the whole second, as `applied-at` records it.
fn stamp_time(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// `N/M workloads rolled out`.
pub fn rolled_out_summary(up_to_date: i32, total: i32) -> String {
    format!("{up_to_date}/{total} workloads rolled out")
}

#[cfg(test)]
mod tests;
