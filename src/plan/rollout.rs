//! The progressive rollout: which workloads get the policy's settings now, which
//! wait for a slot, which are done and which failed.
//!
//! Any change to a pod template restarts pods, so the operator paces its changes:
//! at most `rollout.maxConcurrent` workloads roll out at once (`Progressive`), in
//! the order namespace, kind, name, and each must be reported rolled out and
//! available by its own controller within `rollout.progressDeadline`.
//!
//! Restart safety: every input of [`plan_rollout`] is cluster state. The operator
//! keeps its rollout state on the workloads themselves, as annotations it writes
//! with the same server-side apply that changes the template:
//! - `tracing.caas.io/config-hash`: the settings the template carries;
//! - `tracing.caas.io/applied-at`: when the operator last changed the template
//!   (the progress deadline counts from it);
//! - `tracing.caas.io/rollout-failed`: the config hash whose rollout failed and
//!   was rolled back (the rollback apply carries only this, the policy annotation
//!   and a new applied-at, so server-side apply drops the operator's env and
//!   config hash in the same write).
//!
//! Progress is then read back from those annotations and the workloads' status, and
//! an operator restarted mid-rollout computes the same steps the old one would
//! have: a workload that already carries the plan is tracked, never started again.
//!
//! Pure: no I/O, no clock (`now` is an input), no randomness.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::{WorkloadId, WorkloadPlan, WorkloadView};
use crate::api::{
    APPLIED_AT_ANNOTATION, CONFIG_HASH_ANNOTATION, OnFailure, POLICY_ANNOTATION,
    ROLLOUT_FAILED_ANNOTATION, ROLLOUT_FAILURE_ANNOTATION, RolloutSpec, RolloutStrategy,
    WorkloadKind,
};

/// Failure reason: the workload's controller runs the new template, but not every
/// pod became available (ready, for a StatefulSet) by the deadline.
pub const REASON_PODS_NOT_READY: &str = "PodsNotReady";
/// Failure reason: the new template was not rolled out by the deadline.
pub const REASON_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// Failure reason: the API server refused the operator's apply (set by the controller).
pub const REASON_APPLY_REJECTED: &str = "ApplyRejected";
/// Failure reason: this config's rollout failed earlier and was rolled back.
pub const REASON_ROLLED_BACK: &str = "RolledBack";

/// The rollout-relevant fields of a workload, read from its metadata and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutStatus {
    pub generation: i64,
    pub observed_generation: i64,
    /// Replicas (Deployment, StatefulSet) or desired scheduled pods (DaemonSet).
    pub desired: i32,
    /// Pods on the current template.
    pub updated: i32,
    /// Pods available (Deployment, DaemonSet) or ready (StatefulSet).
    pub available: i32,
    /// Pods still on an older template.
    pub old: i32,
}

impl RolloutStatus {
    /// The workload's own controller reports the current template rolled out and available.
    pub fn is_complete(&self) -> bool {
        self.observed_generation >= self.generation
            && self.updated >= self.desired
            && self.available >= self.desired
            && self.old == 0
    }

    /// What is missing, in the words of the workload's kind, for example
    /// `1/2 replicas available, 0/2 updated, 2 still on the previous template`.
    pub fn describe(&self, kind: WorkloadKind) -> String {
        let (unit, ready_word) = match kind {
            WorkloadKind::Deployment => ("replicas", "available"),
            WorkloadKind::StatefulSet => ("replicas", "ready"),
            WorkloadKind::DaemonSet => ("pods", "available"),
        };
        let mut text = String::new();
        if self.observed_generation < self.generation {
            text.push_str(&format!(
                "generation {} not yet observed by the {kind} controller (observed {}), ",
                self.generation, self.observed_generation
            ));
        }
        text.push_str(&format!(
            "{}/{} {unit} {ready_word}, {}/{} updated",
            self.available, self.desired, self.updated, self.desired
        ));
        if self.old > 0 {
            text.push_str(&format!(", {} still on the previous template", self.old));
        }
        text
    }

    /// Why a rollout that missed its deadline failed: the controller took the new
    /// template but pods did not come up, or it did not even get that far.
    fn failure_reason(&self) -> &'static str {
        if self.observed_generation >= self.generation && self.available < self.desired {
            REASON_PODS_NOT_READY
        } else {
            REASON_DEADLINE_EXCEEDED
        }
    }
}

/// One workload the policy plans to `Apply`, as the cluster shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadRollout {
    pub id: WorkloadId,
    /// The config hash the plan wants on the workload.
    pub planned_hash: String,
    /// The live workload carries the plan exactly ([`super::is_applied`]).
    pub applied: bool,
    /// `tracing.caas.io/config-hash`, when the workload carries this policy's annotation.
    pub live_hash: Option<String>,
    /// `tracing.caas.io/applied-at` as written, unparsed, when this policy's.
    pub applied_at: Option<String>,
    /// `tracing.caas.io/rollout-failed`, when this policy's.
    pub rollout_failed: Option<String>,
    /// `tracing.caas.io/rollout-failure`: `Reason: message` of that failure.
    pub rollout_failure: Option<String>,
    /// What the workload's controller reports; `None` when it is not known.
    pub status: Option<RolloutStatus>,
}

impl WorkloadRollout {
    /// Reads the rollout state of one workload: whether it carries `plan`, and the
    /// rollout annotations, which count only while the workload carries this
    /// policy's `tracing.caas.io/policy` annotation (another policy's are not ours).
    pub fn observe(
        policy: &str,
        id: &WorkloadId,
        plan: &WorkloadPlan,
        live: Option<&WorkloadView>,
        status: Option<RolloutStatus>,
    ) -> Self {
        let ours = live
            .filter(|w| w.annotations.get(POLICY_ANNOTATION).map(String::as_str) == Some(policy));
        let annotation = |key: &str| ours.and_then(|w| w.annotations.get(key)).cloned();
        WorkloadRollout {
            id: id.clone(),
            planned_hash: plan.config_hash.clone(),
            applied: live.is_some_and(|w| super::is_applied(policy, plan, w)),
            live_hash: annotation(CONFIG_HASH_ANNOTATION),
            applied_at: annotation(APPLIED_AT_ANNOTATION),
            rollout_failed: annotation(ROLLOUT_FAILED_ANNOTATION),
            rollout_failure: annotation(ROLLOUT_FAILURE_ANNOTATION),
            status,
        }
    }
}

/// What to do with one workload now, and how it counts in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutStep {
    /// Carries the plan and its controller reports it rolled out and available.
    /// Nothing to write. Counts as up to date.
    UpToDate,
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
    /// Missed its deadline; kept as it is (`onFailure` `Pause` or `Continue`).
    /// Counts as failed and frees its slot. Becomes `UpToDate` if it recovers.
    Failed {
        reason: &'static str,
        message: String,
    },
    /// Missed its deadline with `onFailure: Rollback`: apply the rollback now
    /// ([`rollback_annotations`] at `now` and no env), which returns the workload
    /// to its template before the operator's change. Counts as failed. Restoring
    /// the previous pods is a rollout too: the workload keeps its slot until its
    /// controller reports it complete, or for at most one more progress deadline.
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
            RolloutStep::Failed { reason, message } | RolloutStep::RollBack { reason, message } => {
                Some((*reason, message.as_str()))
            }
            RolloutStep::RolledBack { reason, message } => Some((*reason, message.as_str())),
            _ => None,
        }
    }

    /// The controller applies the plan (with a fresh `applied-at`) in this step.
    pub fn applies_plan(&self) -> bool {
        matches!(self, RolloutStep::Start { .. } | RolloutStep::Restamp)
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
    /// `UpToDate`.
    pub up_to_date: i32,
    /// `RollingOut`, `Restamp` and `Start`.
    pub rolling_out: i32,
    /// `Failed`, `RollBack` and `RolledBack`.
    pub failed: i32,
    /// `Queued` and `Paused`.
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
    Rolling {
        since: Timestamp,
        deadline: Timestamp,
    },
    Restamp,
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
/// - carries the plan and complete: `UpToDate`;
/// - carries the plan, not complete: `RollingOut` until `applied-at` plus
///   `progressDeadline`, then failed: `RollBack` (`onFailure: Rollback`) or
///   `Failed` (`Pause`, `Continue`); `Restamp` when `applied-at` is unusable;
/// - `rollout-failed` equals the planned hash: `RolledBack`;
/// - otherwise it needs an apply (a `drifted` one if it carried the planned hash):
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
/// replacing pods. A workload failed and kept (`Pause`, `Continue`) frees its slot.
pub fn plan_rollout(
    spec: &RolloutSpec,
    now: Timestamp,
    workloads: &[WorkloadRollout],
) -> Result<RolloutPlan, RolloutError> {
    let deadline = spec
        .progress_deadline
        .to_std()
        .map_err(RolloutError::ProgressDeadline)?;
    let stamped = stamp_time(now);
    let after_deadline = |t: Timestamp| t.checked_add(deadline).unwrap_or(Timestamp::MAX);

    let mut ordered: Vec<&WorkloadRollout> = workloads.iter().collect();
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
            Class::Done => false,
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
            Class::Rolling { since, deadline } => {
                earliest(deadline);
                RolloutStep::RollingOut { since, deadline }
            }
            Class::Restamp => {
                earliest(after_deadline(stamped));
                RolloutStep::Restamp
            }
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
            RolloutStep::UpToDate => counts.up_to_date += 1,
            RolloutStep::RollingOut { .. } | RolloutStep::Restamp | RolloutStep::Start { .. } => {
                counts.rolling_out += 1
            }
            RolloutStep::Queued | RolloutStep::Paused => counts.waiting += 1,
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
    let complete = w.status.as_ref().is_some_and(RolloutStatus::is_complete);
    let since = w
        .applied_at
        .as_deref()
        .and_then(parse_applied_at)
        .filter(|t| *t <= now);
    if w.applied {
        if complete {
            return Class::Done;
        }
        let Some(since) = since else {
            return Class::Restamp;
        };
        let deadline = after_deadline(since);
        if now < deadline {
            return Class::Rolling { since, deadline };
        }
        let (reason, progress) = match &w.status {
            Some(s) => (s.failure_reason(), s.describe(w.id.kind)),
            None => (
                REASON_DEADLINE_EXCEEDED,
                format!("no rollout status reported by the {}", w.id.kind),
            ),
        };
        return Class::Failed {
            reason,
            message: format!(
                "{progress} after {deadline_text} (config {}, applied {})",
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

/// `now` to the whole second, as `applied-at` records it.
fn stamp_time(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// The `applied-at` value for `now`: RFC 3339 in UTC, whole seconds, for example
/// `2025-03-01T12:00:00Z`.
pub fn format_applied_at(now: Timestamp) -> String {
    stamp_time(now).to_string()
}

/// Reads an `applied-at` value; `None` for anything that is not an RFC 3339 time
/// with an offset.
pub fn parse_applied_at(value: &str) -> Option<Timestamp> {
    value.trim().parse().ok()
}

/// The operator's annotations on a workload that carries `config_hash`, stamped
/// at `now`: what an apply of the plan writes (`Start`, `Restamp`).
pub fn applied_annotations(
    policy: &str,
    config_hash: &str,
    now: Timestamp,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (POLICY_ANNOTATION.to_string(), policy.to_string()),
        (CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string()),
        (APPLIED_AT_ANNOTATION.to_string(), format_applied_at(now)),
    ])
}

/// The operator's annotations on a workload whose rollout of `failed_hash` is
/// rolled back at `now` because of `reason`/`message` (from the `RollBack` step):
/// what the rollback apply writes, with no env. The policy annotation stays so
/// the workload is still this policy's (deleting the policy cleans it up);
/// applied-at times the rollback's own rollout; the failure is recorded so status
/// keeps its cause.
pub fn rollback_annotations(
    policy: &str,
    failed_hash: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (POLICY_ANNOTATION.to_string(), policy.to_string()),
        (
            ROLLOUT_FAILED_ANNOTATION.to_string(),
            failed_hash.to_string(),
        ),
        (
            ROLLOUT_FAILURE_ANNOTATION.to_string(),
            format!("{reason}: {message}"),
        ),
        (APPLIED_AT_ANNOTATION.to_string(), format_applied_at(now)),
    ])
}

/// The status message of a rolled-back workload, the same in the reconcile that
/// rolls it back and in every later one (so status does not change between them).
pub fn rolled_back_message(message: &str) -> String {
    format!("{message}; rolled back, and applied again only when this workload's settings change")
}

/// The reason and message a rollback recorded; a missing or unknown record reads
/// as `RolledBack` with a message naming the config.
fn recorded_failure(note: Option<&str>, hash: &str) -> (&'static str, String) {
    let known = [REASON_PODS_NOT_READY, REASON_DEADLINE_EXCEEDED];
    if let Some((reason, message)) = note.and_then(|n| n.split_once(": "))
        && let Some(reason) = known.into_iter().find(|k| *k == reason)
    {
        return (reason, message.to_string());
    }
    (
        REASON_ROLLED_BACK,
        format!("config {hash} did not roll out within the progress deadline"),
    )
}

/// `N/M workloads rolled out`.
pub fn rolled_out_summary(up_to_date: i32, total: i32) -> String {
    format!("{up_to_date}/{total} workloads rolled out")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::EnvVar;
    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::api::Duration;
    use crate::plan::{ContainerPlan, ContainerView};

    const POLICY: &str = "caas-production";

    fn at_secs(seconds: i64) -> Timestamp {
        let t0: Timestamp = "2025-03-01T12:00:00Z".parse().unwrap();
        t0.checked_add(SignedDuration::from_secs(seconds)).unwrap()
    }

    fn at(minutes: i64) -> Timestamp {
        at_secs(minutes * 60)
    }

    fn spec(
        strategy: RolloutStrategy,
        max_concurrent: i32,
        deadline: &str,
        on_failure: OnFailure,
    ) -> RolloutSpec {
        RolloutSpec {
            strategy,
            max_concurrent,
            progress_deadline: Duration(deadline.into()),
            on_failure,
        }
    }

    fn progressive(max_concurrent: i32, on_failure: OnFailure) -> RolloutSpec {
        spec(
            RolloutStrategy::Progressive,
            max_concurrent,
            "10m",
            on_failure,
        )
    }

    fn id(namespace: &str, kind: WorkloadKind, name: &str) -> WorkloadId {
        WorkloadId {
            namespace: namespace.into(),
            kind,
            name: name.into(),
        }
    }

    fn deployment(name: &str) -> WorkloadId {
        id("caas", WorkloadKind::Deployment, name)
    }

    fn complete(desired: i32) -> RolloutStatus {
        RolloutStatus {
            generation: 2,
            observed_generation: 2,
            desired,
            updated: desired,
            available: desired,
            old: 0,
        }
    }

    /// Observed by its controller, no new pod ready: the shape of a crash-looping rollout.
    fn stuck() -> RolloutStatus {
        RolloutStatus {
            generation: 2,
            observed_generation: 2,
            desired: 2,
            updated: 0,
            available: 1,
            old: 2,
        }
    }

    /// A workload that carries its plan since `applied_at`.
    fn carrying(
        id: WorkloadId,
        applied_at: Option<&str>,
        status: RolloutStatus,
    ) -> WorkloadRollout {
        let hash = format!("h1-{}", id.name);
        WorkloadRollout {
            id,
            planned_hash: hash.clone(),
            applied: true,
            live_hash: Some(hash),
            applied_at: applied_at.map(str::to_string),
            rollout_failed: None,
            rollout_failure: None,
            status: Some(status),
        }
    }

    /// A workload that never carried this policy's settings.
    fn fresh(id: WorkloadId) -> WorkloadRollout {
        WorkloadRollout {
            planned_hash: format!("h1-{}", id.name),
            id,
            applied: false,
            live_hash: None,
            applied_at: None,
            rollout_failed: None,
            rollout_failure: None,
            status: Some(complete(2)),
        }
    }

    fn step_of<'a>(plan: &'a RolloutPlan, id: &WorkloadId) -> &'a RolloutStep {
        &plan.steps.iter().find(|s| &s.id == id).unwrap().step
    }

    // ---- a small simulated cluster: workloads with their own controllers ----

    #[derive(Clone)]
    struct SimWorkload {
        view: WorkloadView,
        status: RolloutStatus,
        /// Minutes until pods carrying the operator's env become available; `None`: never.
        ready_after: Option<i64>,
        changed_at: Timestamp,
        /// Pod template changes, each of which restarts pods.
        template_changes: u32,
    }

    #[derive(Clone)]
    struct Cluster {
        workloads: Vec<SimWorkload>,
        /// Part of every planned hash and env value: changing it changes the policy's settings.
        settings: &'static str,
    }

    fn plan_of(view: &WorkloadView, settings: &str) -> WorkloadPlan {
        let var = |name: &str, value: String| EnvVar {
            name: name.into(),
            value: Some(value),
            ..Default::default()
        };
        WorkloadPlan {
            service_name: view.id.name.clone(),
            containers: vec![ContainerPlan {
                name: "app".into(),
                env: vec![
                    var("OTEL_SERVICE_NAME", view.id.name.clone()),
                    var("OTEL_TRACES_SAMPLER_ARG", settings.into()),
                ],
                user_overrides: vec![],
            }],
            config_hash: format!("{settings}-{}", view.id.name),
        }
    }

    impl SimWorkload {
        fn new(id: WorkloadId, replicas: i32, ready_after: Option<i64>) -> Self {
            SimWorkload {
                view: WorkloadView {
                    id,
                    containers: vec![ContainerView {
                        name: "app".into(),
                        image: Some("caas/app:1.0.0".into()),
                        env: vec![EnvVar {
                            name: "NODE_ENV".into(),
                            ..Default::default()
                        }],
                        operator_owned_env: Default::default(),
                    }],
                    ..Default::default()
                },
                status: RolloutStatus {
                    generation: 1,
                    observed_generation: 1,
                    ..complete(replicas)
                },
                ready_after,
                changed_at: at(-60),
                template_changes: 0,
            }
        }

        /// Server-side apply as the operator's field manager: the body is its whole
        /// intent, so annotations and env entries it no longer names are dropped.
        fn operator_apply(
            &mut self,
            annotations: BTreeMap<String, String>,
            env: &[EnvVar],
            now: Timestamp,
        ) {
            for key in [
                POLICY_ANNOTATION,
                CONFIG_HASH_ANNOTATION,
                APPLIED_AT_ANNOTATION,
                ROLLOUT_FAILED_ANNOTATION,
            ] {
                self.view.annotations.remove(key);
            }
            self.view.annotations.extend(annotations);
            let app = &mut self.view.containers[0];
            let before = app.env.clone();
            app.env
                .retain(|e| !app.operator_owned_env.contains(&e.name));
            app.env.extend(env.iter().cloned());
            app.operator_owned_env = env.iter().map(|e| e.name.clone()).collect();
            if app.env != before {
                self.status.generation += 1;
                self.changed_at = now;
                self.template_changes += 1;
            }
        }

        fn carries_operator_env(&self) -> bool {
            !self.view.containers[0].operator_owned_env.is_empty()
        }

        /// The workload's own controller, one tick later.
        fn tick(&mut self, now: Timestamp) {
            // Pods on the previous template are healthy; so are pods without our env.
            let ready_after = if self.carries_operator_env() {
                self.ready_after
            } else {
                Some(1)
            };
            let minutes = now.duration_since(self.changed_at).as_secs() / 60;
            let s = &mut self.status;
            if s.observed_generation == s.generation && s.updated == s.desired && s.old == 0 {
                return;
            }
            s.observed_generation = s.generation;
            if ready_after.is_some_and(|r| minutes >= r) {
                s.updated = s.desired;
                s.available = s.desired;
                s.old = 0;
            } else {
                s.updated = s.desired / 2;
                s.old = s.desired - s.updated;
                s.available = s.old;
            }
        }
    }

    impl Cluster {
        fn observe(&self) -> Vec<WorkloadRollout> {
            self.workloads
                .iter()
                .map(|w| {
                    let plan = plan_of(&w.view, self.settings);
                    WorkloadRollout::observe(
                        POLICY,
                        &w.view.id,
                        &plan,
                        Some(&w.view),
                        Some(w.status.clone()),
                    )
                })
                .collect()
        }

        /// Performs the steps the way the controller does: one apply per write step.
        fn enforce(&mut self, plan: &RolloutPlan, now: Timestamp) {
            for step in &plan.steps {
                let settings = self.settings;
                let w = self
                    .workloads
                    .iter_mut()
                    .find(|w| w.view.id == step.id)
                    .unwrap();
                let planned = plan_of(&w.view, settings);
                match &step.step {
                    RolloutStep::Start { .. } | RolloutStep::Restamp => w.operator_apply(
                        applied_annotations(POLICY, &planned.config_hash, now),
                        &planned.containers[0].env,
                        now,
                    ),
                    RolloutStep::RollBack { reason, message } => w.operator_apply(
                        rollback_annotations(POLICY, &planned.config_hash, reason, message, now),
                        &[],
                        now,
                    ),
                    _ => {}
                }
            }
        }

        fn tick(&mut self, now: Timestamp) {
            for w in &mut self.workloads {
                w.tick(now);
            }
        }

        /// Workloads whose pods are being replaced right now, by the cluster's account.
        fn restarting(&self) -> usize {
            self.workloads
                .iter()
                .filter(|w| !w.status.is_complete())
                .count()
        }
    }

    /// 30 workloads in 3 namespaces, all three kinds, needing 1 to 4 minutes each.
    fn thirty() -> Cluster {
        let kinds = WorkloadKind::ALL;
        let mut workloads = Vec::new();
        for i in 0..30 {
            let ns = format!("caas-{}", ["gateway", "auth", "socket"][i % 3]);
            let w = id(&ns, kinds[i % 3], &format!("svc-{i:02}"));
            workloads.push(SimWorkload::new(w, 2, Some((i as i64 * 7) % 4 + 1)));
        }
        // Listed in reverse: the planner orders them itself.
        workloads.reverse();
        Cluster {
            workloads,
            settings: "h1",
        }
    }

    fn plan_at(cluster: &Cluster, spec: &RolloutSpec, now: Timestamp) -> RolloutPlan {
        plan_rollout(spec, now, &cluster.observe()).unwrap()
    }

    #[test]
    fn thirty_workloads_five_at_a_time_converge_each_restarted_once() {
        let spec = progressive(5, OnFailure::Rollback);
        let mut cluster = thirty();
        let mut started: Vec<WorkloadId> = Vec::new();
        let mut most_restarting = 0;
        let mut converged_at = None;
        for minute in 0..60 {
            let now = at(minute);
            cluster.tick(now);
            let plan = plan_at(&cluster, &spec, now);

            // The planner never has more than 5 rolling, nor the cluster.
            assert!(
                plan.counts.rolling_out <= 5,
                "minute {minute}: {:?}",
                plan.counts
            );
            assert_eq!(plan.counts.total, 30);
            // An operator restarted now, knowing nothing but the cluster, decides the same.
            let restarted = cluster.clone();
            assert_eq!(plan_at(&restarted, &spec, now), plan, "minute {minute}");

            started.extend(
                plan.steps
                    .iter()
                    .filter(|s| matches!(s.step, RolloutStep::Start { .. }))
                    .map(|s| s.id.clone()),
            );
            cluster.enforce(&plan, now);
            most_restarting = most_restarting.max(cluster.restarting());
            assert!(
                cluster.restarting() <= 5,
                "minute {minute}: {} restarting",
                cluster.restarting()
            );

            if plan.counts.up_to_date == 30 {
                assert_eq!(plan.summary(), "30/30 workloads rolled out");
                assert_eq!(plan.requeue_at, None);
                converged_at = Some(minute);
                break;
            }
        }
        assert!(
            converged_at.is_some(),
            "the rollout did not converge in an hour"
        );
        assert_eq!(most_restarting, 5, "the rollout used its 5 slots");
        // Every workload started exactly once, in namespace, kind, name order.
        let mut sorted = started.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(started, sorted);
        assert_eq!(started.len(), 30);
        assert!(cluster.workloads.iter().all(|w| w.template_changes == 1));
    }

    #[test]
    fn a_policy_change_mid_rollout_keeps_at_most_five_replacing_pods() {
        let spec = progressive(5, OnFailure::Rollback);
        let mut cluster = thirty();
        // The first two in rollout order crash with the first settings.
        let mut ids: Vec<WorkloadId> = cluster
            .workloads
            .iter()
            .map(|w| w.view.id.clone())
            .collect();
        ids.sort();
        for w in &mut cluster.workloads {
            if ids[..2].contains(&w.view.id) {
                w.ready_after = None;
            }
        }
        let mut minute = 0;
        let mut switched = false;
        loop {
            let now = at(minute);
            cluster.tick(now);
            let plan = plan_at(&cluster, &spec, now);
            assert!(
                plan.counts.rolling_out <= 5,
                "minute {minute}: {:?}",
                plan.counts
            );
            cluster.enforce(&plan, now);
            assert!(
                cluster.restarting() <= 5,
                "minute {minute}: {} restarting",
                cluster.restarting()
            );
            if switched && plan.counts.up_to_date == 30 {
                break;
            }
            // Once both crashing workloads are rolled back, while 5 others roll out,
            // the platform team fixes the settings, and they work everywhere.
            if !switched && plan.counts.failed == 2 && cluster.restarting() == 5 {
                cluster.settings = "h2";
                for w in &mut cluster.workloads {
                    w.ready_after = Some(2);
                }
                switched = true;
            }
            minute += 1;
            assert!(minute < 120, "no convergence: {:?}", plan.counts);
        }
        assert!(
            cluster
                .workloads
                .iter()
                .all(|w| w.view.annotations.get(CONFIG_HASH_ANNOTATION)
                    == Some(&format!("h2-{}", w.view.id.name)))
        );
    }

    #[test]
    fn a_restarted_operator_tracks_applied_workloads_and_never_starts_them_again() {
        let spec = progressive(5, OnFailure::Rollback);
        let mut cluster = thirty();
        cluster.tick(at(0));
        let first = plan_at(&cluster, &spec, at(0));
        cluster.enforce(&first, at(0));
        let first_started: Vec<&WorkloadId> = first
            .steps
            .iter()
            .filter(|s| matches!(s.step, RolloutStep::Start { .. }))
            .map(|s| &s.id)
            .collect();
        assert_eq!(first_started.len(), 5);

        // The operator restarts before any watch event arrives: same cluster, later clock.
        for seconds in [0, 30, 599] {
            let plan = plan_at(&cluster, &spec, at_secs(seconds));
            for id in &first_started {
                assert_eq!(
                    step_of(&plan, id),
                    &RolloutStep::RollingOut {
                        since: at(0),
                        deadline: at(10)
                    }
                );
            }
            assert_eq!(plan.counts.rolling_out, 5);
            assert_eq!(plan.counts.waiting, 25);
            assert_eq!(plan.requeue_at, Some(at(10)));
        }
        assert!(cluster.workloads.iter().all(|w| w.template_changes <= 1));
    }

    #[test]
    fn steps_come_in_namespace_kind_name_order_whatever_the_input_order() {
        let spec = progressive(2, OnFailure::Rollback);
        let ids = [
            id("b", WorkloadKind::Deployment, "a"),
            id("a", WorkloadKind::DaemonSet, "a"),
            id("a", WorkloadKind::Deployment, "z"),
            id("a", WorkloadKind::StatefulSet, "a"),
        ];
        let inputs: Vec<WorkloadRollout> = ids.iter().cloned().map(fresh).collect();
        let mut reversed = inputs.clone();
        reversed.reverse();
        let plan = plan_rollout(&spec, at(0), &inputs).unwrap();
        assert_eq!(plan, plan_rollout(&spec, at(0), &reversed).unwrap());
        let order: Vec<String> = plan.steps.iter().map(|s| s.id.to_string()).collect();
        assert_eq!(
            order,
            [
                "Deployment a/z",
                "StatefulSet a/a",
                "DaemonSet a/a",
                "Deployment b/a"
            ]
        );
        let started: Vec<bool> = plan.steps.iter().map(|s| s.step.applies_plan()).collect();
        assert_eq!(started, [true, true, false, false]);
    }

    #[test]
    fn a_missed_deadline_fails_and_on_failure_decides_what_follows() {
        let a = deployment("a-gateway");
        let b = deployment("b-auth");
        let inputs = [
            carrying(a.clone(), Some("2025-03-01T12:00:00Z"), stuck()),
            fresh(b.clone()),
        ];
        let message = "1/2 replicas available, 0/2 updated, 2 still on the previous template \
                       after 10m (config h1-a-gateway, applied 2025-03-01T12:00:00Z)";
        let failed = || (REASON_PODS_NOT_READY, message.to_string());
        struct Row {
            on_failure: OnFailure,
            now: Timestamp,
            a: RolloutStep,
            b: RolloutStep,
            paused: bool,
        }
        let rolling = RolloutStep::RollingOut {
            since: at(0),
            deadline: at(10),
        };
        let rows = [
            Row {
                on_failure: OnFailure::Rollback,
                now: at_secs(599),
                a: rolling.clone(),
                b: RolloutStep::Queued,
                paused: false,
            },
            Row {
                on_failure: OnFailure::Pause,
                now: at_secs(599),
                a: rolling.clone(),
                b: RolloutStep::Queued,
                paused: false,
            },
            Row {
                on_failure: OnFailure::Continue,
                now: at_secs(599),
                a: rolling.clone(),
                b: RolloutStep::Queued,
                paused: false,
            },
            Row {
                on_failure: OnFailure::Rollback,
                now: at(10),
                a: RolloutStep::RollBack {
                    reason: failed().0,
                    message: failed().1,
                },
                // Restoring a's previous pods is a rollout too: b waits for it.
                b: RolloutStep::Queued,
                paused: false,
            },
            Row {
                on_failure: OnFailure::Pause,
                now: at(10),
                a: RolloutStep::Failed {
                    reason: failed().0,
                    message: failed().1,
                },
                b: RolloutStep::Paused,
                paused: true,
            },
            Row {
                on_failure: OnFailure::Continue,
                now: at(30),
                a: RolloutStep::Failed {
                    reason: failed().0,
                    message: failed().1,
                },
                b: RolloutStep::Start { drifted: false },
                paused: false,
            },
        ];
        for row in rows {
            let plan = plan_rollout(&progressive(1, row.on_failure), row.now, &inputs).unwrap();
            let what = format!("{:?} at {}", row.on_failure, row.now);
            assert_eq!(step_of(&plan, &a), &row.a, "{what}");
            assert_eq!(step_of(&plan, &b), &row.b, "{what}");
            assert_eq!(plan.paused_by.is_some(), row.paused, "{what}");
            if row.a == rolling {
                assert_eq!(plan.requeue_at, Some(at(10)), "{what}");
                assert_eq!(plan.counts.failed, 0, "{what}");
            } else {
                assert_eq!(plan.counts.failed, 1, "{what}");
                assert_eq!(
                    plan.steps[0].step.failure(),
                    Some((REASON_PODS_NOT_READY, message))
                );
            }
        }
    }

    #[test]
    fn a_failed_workload_that_recovers_is_up_to_date_and_lifts_the_pause() {
        let a = deployment("a");
        let b = deployment("b");
        let spec = progressive(1, OnFailure::Pause);
        let stuck_a = carrying(a.clone(), Some("2025-03-01T12:00:00Z"), stuck());
        let plan = plan_rollout(&spec, at(20), &[stuck_a.clone(), fresh(b.clone())]).unwrap();
        assert_eq!(plan.paused_by, Some(a.clone()));
        assert_eq!(step_of(&plan, &b), &RolloutStep::Paused);

        let recovered = WorkloadRollout {
            status: Some(complete(2)),
            ..stuck_a
        };
        let plan = plan_rollout(&spec, at(21), &[recovered, fresh(b.clone())]).unwrap();
        assert_eq!(plan.paused_by, None);
        assert_eq!(step_of(&plan, &a), &RolloutStep::UpToDate);
        assert_eq!(step_of(&plan, &b), &RolloutStep::Start { drifted: false });
    }

    #[test]
    fn pause_is_lifted_when_the_policys_settings_change() {
        let spec = progressive(1, OnFailure::Pause);
        let mut cluster = Cluster {
            workloads: vec![
                SimWorkload::new(deployment("a"), 2, None),
                SimWorkload::new(deployment("b"), 2, Some(1)),
            ],
            settings: "h1",
        };
        let (a, b) = (deployment("a"), deployment("b"));
        for minute in 0..=15 {
            cluster.tick(at(minute));
            let plan = plan_at(&cluster, &spec, at(minute));
            cluster.enforce(&plan, at(minute));
        }
        let plan = plan_at(&cluster, &spec, at(16));
        assert_eq!(plan.paused_by, Some(a.clone()));
        assert!(matches!(step_of(&plan, &a), RolloutStep::Failed { .. }));
        assert_eq!(step_of(&plan, &b), &RolloutStep::Paused);
        assert_eq!(
            cluster.workloads[1].template_changes, 0,
            "b never started while paused"
        );

        // The platform team fixes the settings: every planned hash changes.
        cluster.settings = "h2";
        let plan = plan_at(&cluster, &spec, at(17));
        assert_eq!(plan.paused_by, None);
        assert_eq!(step_of(&plan, &a), &RolloutStep::Start { drifted: false });
        assert_eq!(step_of(&plan, &b), &RolloutStep::Queued);
    }

    #[test]
    fn rollback_removes_the_change_once_and_the_rollout_goes_on() {
        let spec = progressive(1, OnFailure::Rollback);
        let mut cluster = Cluster {
            workloads: vec![
                SimWorkload::new(deployment("a"), 2, None),
                SimWorkload::new(deployment("b"), 2, Some(2)),
                SimWorkload::new(deployment("c"), 2, Some(1)),
            ],
            settings: "h1",
        };
        let mut rollbacks = Vec::new();
        let mut b_started = Vec::new();
        let mut last = None;
        for minute in 0..40 {
            cluster.tick(at(minute));
            let plan = plan_at(&cluster, &spec, at(minute));
            for s in &plan.steps {
                match s.step {
                    RolloutStep::RollBack { .. } => rollbacks.push((s.id.name.clone(), minute)),
                    RolloutStep::Start { .. } if s.id.name == "b" => b_started.push(minute),
                    _ => {}
                }
            }
            cluster.enforce(&plan, at(minute));
            assert!(cluster.restarting() <= 1, "minute {minute}");
            last = Some(plan);
        }
        let plan = last.unwrap();
        // At the deadline; the rollback holds the slot until a's old pods are back.
        assert_eq!(rollbacks, [("a".to_string(), 10)]);
        assert_eq!(b_started, [11]);
        assert_eq!(
            plan.counts,
            RolloutCounts {
                total: 3,
                up_to_date: 2,
                rolling_out: 0,
                failed: 1,
                waiting: 0
            }
        );
        let a = &cluster.workloads[0];
        assert!(matches!(
            step_of(&plan, &a.view.id),
            RolloutStep::RolledBack { .. }
        ));
        // Status keeps the cause the rollback recorded on the workload.
        assert_eq!(
            step_of(&plan, &a.view.id).failure().map(|f| f.0),
            Some(REASON_PODS_NOT_READY)
        );
        // Applied once, rolled back once, never applied again; its template is the user's again.
        assert_eq!(a.template_changes, 2);
        assert!(!a.carries_operator_env());
        assert_eq!(a.view.containers[0].env.len(), 1);
        assert!(a.status.is_complete());
        assert_eq!(
            a.view
                .annotations
                .get(ROLLOUT_FAILED_ANNOTATION)
                .map(String::as_str),
            Some("h1-a")
        );
        assert!(!a.view.annotations.contains_key(CONFIG_HASH_ANNOTATION));
        assert_eq!(
            a.view
                .annotations
                .get(APPLIED_AT_ANNOTATION)
                .map(String::as_str),
            Some("2025-03-01T12:10:00Z")
        );
        assert_eq!(
            a.view
                .annotations
                .get(POLICY_ANNOTATION)
                .map(String::as_str),
            Some(POLICY)
        );

        // New settings: the rolled-back workload is tried again, first in order.
        cluster.settings = "h2";
        let plan = plan_at(&cluster, &spec, at(41));
        assert_eq!(
            step_of(&plan, &deployment("a")),
            &RolloutStep::Start { drifted: false }
        );
    }

    #[test]
    fn pause_holds_for_a_rolled_back_workload_of_the_current_settings() {
        let a = deployment("a");
        let rolled_back = WorkloadRollout {
            applied: false,
            live_hash: None,
            applied_at: None,
            rollout_failed: Some("h1-a".into()),
            ..carrying(a.clone(), None, complete(2))
        };
        let inputs = [rolled_back, fresh(deployment("b"))];
        let plan = plan_rollout(&progressive(5, OnFailure::Pause), at(0), &inputs).unwrap();
        assert_eq!(plan.paused_by, Some(a));
        assert_eq!(plan.steps[1].step, RolloutStep::Paused);
        let plan = plan_rollout(&progressive(5, OnFailure::Continue), at(0), &inputs).unwrap();
        assert_eq!(plan.steps[1].step, RolloutStep::Start { drifted: false });
    }

    #[test]
    fn immediate_starts_everything_at_once() {
        let spec = spec(RolloutStrategy::Immediate, 1, "10m", OnFailure::Rollback);
        let mut cluster = thirty();
        cluster.tick(at(0));
        let plan = plan_at(&cluster, &spec, at(0));
        assert!(
            plan.steps
                .iter()
                .all(|s| s.step == RolloutStep::Start { drifted: false })
        );
        assert_eq!(plan.counts.rolling_out, 30);
        assert_eq!(plan.requeue_at, Some(at(10)));
        cluster.enforce(&plan, at(0));
        assert_eq!(cluster.restarting(), 30);
        for minute in 1..=5 {
            cluster.tick(at(minute));
        }
        let plan = plan_at(&cluster, &spec, at(5));
        assert_eq!(plan.counts.up_to_date, 30);
    }

    #[test]
    fn a_drifted_workload_is_applied_again_and_waits_for_a_slot() {
        let spec = progressive(1, OnFailure::Rollback);
        let mut cluster = Cluster {
            workloads: vec![
                SimWorkload::new(deployment("a"), 2, Some(1)),
                SimWorkload::new(deployment("b"), 2, Some(3)),
            ],
            settings: "h1",
        };
        for minute in 0..10 {
            cluster.tick(at(minute));
            let plan = plan_at(&cluster, &spec, at(minute));
            cluster.enforce(&plan, at(minute));
        }
        assert_eq!(plan_at(&cluster, &spec, at(10)).counts.up_to_date, 2);

        // Someone removes a variable from b by hand (kubectl edit): pods restart.
        let b = &mut cluster.workloads[1];
        let app = &mut b.view.containers[0];
        app.env.retain(|e| e.name != "OTEL_TRACES_SAMPLER_ARG");
        app.operator_owned_env.remove("OTEL_TRACES_SAMPLER_ARG");
        let b_id = b.view.id.clone();
        let plan = plan_at(&cluster, &spec, at(11));
        assert_eq!(step_of(&plan, &b_id), &RolloutStep::Start { drifted: true });
        cluster.enforce(&plan, at(11));
        assert_eq!(cluster.workloads[1].template_changes, 2);

        // With the slot taken, a drifted workload queues like any other.
        let a_id = deployment("a");
        let app = &mut cluster.workloads[0].view.containers[0];
        app.env.retain(|e| e.name != "OTEL_SERVICE_NAME");
        app.operator_owned_env.remove("OTEL_SERVICE_NAME");
        cluster.tick(at(12));
        let plan = plan_at(&cluster, &spec, at(12));
        assert_eq!(step_of(&plan, &a_id), &RolloutStep::Queued);
        assert!(matches!(
            step_of(&plan, &b_id),
            RolloutStep::RollingOut { .. }
        ));
    }

    #[test]
    fn completeness_follows_each_kinds_controller() {
        let status = |generation, observed, desired, updated, available, old| RolloutStatus {
            generation,
            observed_generation: observed,
            desired,
            updated,
            available,
            old,
        };
        // (kind, status, up to date, reason and message when the deadline has passed)
        let rows = [
            (
                WorkloadKind::StatefulSet,
                status(3, 3, 3, 3, 3, 0),
                true,
                "",
            ),
            (
                WorkloadKind::StatefulSet,
                status(3, 3, 3, 2, 3, 1),
                false,
                "ProgressDeadlineExceeded: 3/3 replicas ready, 2/3 updated, 1 still on the previous template",
            ),
            (
                WorkloadKind::StatefulSet,
                status(3, 3, 3, 3, 2, 0),
                false,
                "PodsNotReady: 2/3 replicas ready, 3/3 updated",
            ),
            (WorkloadKind::DaemonSet, status(5, 5, 4, 4, 4, 0), true, ""),
            (WorkloadKind::DaemonSet, status(5, 5, 0, 0, 0, 0), true, ""),
            (
                WorkloadKind::DaemonSet,
                status(5, 5, 4, 3, 3, 1),
                false,
                "PodsNotReady: 3/4 pods available, 3/4 updated, 1 still on the previous template",
            ),
            (
                WorkloadKind::Deployment,
                status(3, 2, 2, 2, 2, 0),
                false,
                "ProgressDeadlineExceeded: generation 3 not yet observed by the Deployment \
                 controller (observed 2), 2/2 replicas available, 2/2 updated",
            ),
        ];
        for (kind, status, up_to_date, failure) in rows {
            let w = carrying(
                id("caas", kind, "w"),
                Some("2025-03-01T12:00:00Z"),
                status.clone(),
            );
            let spec = progressive(5, OnFailure::Continue);
            let early = plan_rollout(&spec, at(1), std::slice::from_ref(&w)).unwrap();
            let late = plan_rollout(&spec, at(10), &[w]).unwrap();
            if up_to_date {
                assert_eq!(
                    early.steps[0].step,
                    RolloutStep::UpToDate,
                    "{kind} {status:?}"
                );
                assert_eq!(
                    late.steps[0].step,
                    RolloutStep::UpToDate,
                    "{kind} {status:?}"
                );
            } else {
                assert!(
                    matches!(early.steps[0].step, RolloutStep::RollingOut { .. }),
                    "{kind} {status:?}"
                );
                let (reason, message) = late.steps[0].step.failure().unwrap();
                let got = format!("{reason}: {message}");
                assert!(got.starts_with(&format!("{failure} after 10m")), "{got}");
            }
        }
    }

    #[test]
    fn an_unusable_applied_at_never_fails_a_workload_and_is_stamped_again() {
        let a = deployment("a");
        let b = deployment("b");
        let spec = progressive(1, OnFailure::Rollback);
        let now = at(24 * 60);
        for applied_at in [
            None,
            Some(""),
            Some("yesterday"),
            Some("2025-13-45T00:00:00Z"),
            Some("1740830400"),
            Some("2999-01-01T00:00:00Z"),
        ] {
            let inputs = [carrying(a.clone(), applied_at, stuck()), fresh(b.clone())];
            let plan = plan_rollout(&spec, now, &inputs).unwrap();
            assert_eq!(plan.steps[0].step, RolloutStep::Restamp, "{applied_at:?}");
            // It is rolling, so it holds the only slot.
            assert_eq!(plan.steps[1].step, RolloutStep::Queued, "{applied_at:?}");
            assert_eq!(plan.counts.rolling_out, 1);
            assert_eq!(plan.requeue_at, Some(at(24 * 60 + 10)));

            let done = [carrying(a.clone(), applied_at, complete(2))];
            let plan = plan_rollout(&spec, now, &done).unwrap();
            assert_eq!(plan.steps[0].step, RolloutStep::UpToDate, "{applied_at:?}");
        }
    }

    #[test]
    fn restamping_rewrites_only_annotations_and_restarts_the_deadline() {
        let spec = progressive(5, OnFailure::Rollback);
        let mut cluster = Cluster {
            workloads: vec![SimWorkload::new(deployment("a"), 2, Some(30))],
            settings: "h1",
        };
        cluster.tick(at(0));
        let plan = plan_at(&cluster, &spec, at(0));
        cluster.enforce(&plan, at(0));
        cluster.workloads[0]
            .view
            .annotations
            .insert(APPLIED_AT_ANNOTATION.into(), "garbled".into());
        cluster.tick(at(12));
        let plan = plan_at(&cluster, &spec, at(12));
        assert_eq!(plan.steps[0].step, RolloutStep::Restamp);
        cluster.enforce(&plan, at(12));
        assert_eq!(cluster.workloads[0].template_changes, 1, "no pod restart");
        let plan = plan_at(&cluster, &spec, at(13));
        assert_eq!(
            plan.steps[0].step,
            RolloutStep::RollingOut {
                since: at(12),
                deadline: at(22)
            }
        );
    }

    #[test]
    fn observe_reads_only_this_policys_annotations() {
        let mut w = SimWorkload::new(deployment("a"), 1, Some(1));
        let plan = plan_of(&w.view, "h1");
        w.operator_apply(
            applied_annotations("other-policy", &plan.config_hash, at(0)),
            &plan.containers[0].env,
            at(0),
        );
        w.view
            .annotations
            .insert(ROLLOUT_FAILED_ANNOTATION.into(), plan.config_hash.clone());
        let seen = WorkloadRollout::observe(POLICY, &w.view.id, &plan, Some(&w.view), None);
        assert!(!seen.applied);
        assert_eq!(
            (seen.live_hash, seen.applied_at, seen.rollout_failed),
            (None, None, None)
        );

        w.operator_apply(
            applied_annotations(POLICY, &plan.config_hash, at(0)),
            &plan.containers[0].env,
            at(0),
        );
        let seen = WorkloadRollout::observe(POLICY, &w.view.id, &plan, Some(&w.view), None);
        assert!(seen.applied);
        assert_eq!(seen.live_hash.as_deref(), Some("h1-a"));
        assert_eq!(seen.applied_at.as_deref(), Some("2025-03-01T12:00:00Z"));

        let missing = WorkloadRollout::observe(POLICY, &w.view.id, &plan, None, None);
        assert!(!missing.applied && missing.live_hash.is_none());
    }

    #[test]
    fn an_applied_workload_without_status_is_not_taken_as_done() {
        let w = WorkloadRollout {
            status: None,
            ..carrying(deployment("a"), Some("2025-03-01T12:00:00Z"), complete(1))
        };
        let plan = plan_rollout(&progressive(5, OnFailure::Continue), at(10), &[w]).unwrap();
        assert_eq!(
            plan.steps[0].step.failure(),
            Some((
                REASON_DEADLINE_EXCEEDED,
                "no rollout status reported by the Deployment after 10m \
                 (config h1-a, applied 2025-03-01T12:00:00Z)"
            ))
        );
    }

    #[test]
    fn annotation_values_round_trip() {
        let now = at_secs(90)
            .checked_add(SignedDuration::from_millis(700))
            .unwrap();
        assert_eq!(format_applied_at(now), "2025-03-01T12:01:30Z");
        assert_eq!(parse_applied_at(&format_applied_at(now)), Some(at_secs(90)));
        assert_eq!(
            parse_applied_at("2025-03-01T14:01:30+02:00"),
            Some(at_secs(90))
        );
        assert_eq!(parse_applied_at("2025-03-01 12:01:30"), None);

        let applied = applied_annotations(POLICY, "abc", now);
        assert_eq!(
            applied.get(POLICY_ANNOTATION).map(String::as_str),
            Some(POLICY)
        );
        assert_eq!(
            applied.get(CONFIG_HASH_ANNOTATION).map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            applied.get(APPLIED_AT_ANNOTATION).map(String::as_str),
            Some("2025-03-01T12:01:30Z")
        );
        assert_eq!(applied.len(), 3);
        // No config hash: the rollback apply releases it along with the env.
        let rollback = rollback_annotations(POLICY, "abc", REASON_PODS_NOT_READY, "0/2 ready", now);
        let keys: Vec<&str> = rollback.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                APPLIED_AT_ANNOTATION,
                POLICY_ANNOTATION,
                ROLLOUT_FAILED_ANNOTATION,
                ROLLOUT_FAILURE_ANNOTATION
            ]
        );
        // The recorded cause is what status reports after the rollback.
        let recorded = recorded_failure(
            rollback.get(ROLLOUT_FAILURE_ANNOTATION).map(String::as_str),
            "abc",
        );
        assert_eq!(recorded, (REASON_PODS_NOT_READY, "0/2 ready".to_string()));
        let unknown = recorded_failure(Some("garbage"), "abc");
        assert_eq!(unknown.0, REASON_ROLLED_BACK);
        assert!(unknown.1.contains("abc"));
        assert_eq!(
            rollback.get(ROLLOUT_FAILED_ANNOTATION).map(String::as_str),
            Some("abc")
        );

        assert_eq!(rolled_out_summary(3, 30), "3/30 workloads rolled out");
    }

    #[test]
    fn requeue_comes_at_the_nearest_deadline() {
        let inputs = [
            carrying(deployment("a"), Some("2025-03-01T12:03:00Z"), stuck()),
            carrying(deployment("b"), Some("2025-03-01T12:01:00Z"), stuck()),
            carrying(deployment("c"), Some("2025-03-01T12:00:00Z"), complete(1)),
        ];
        let plan = plan_rollout(&progressive(5, OnFailure::Rollback), at(5), &inputs).unwrap();
        assert_eq!(plan.requeue_at, Some(at(11)));
        assert_eq!(
            plan.requeue_after(at(5)),
            Some(std::time::Duration::from_secs(360))
        );
        assert_eq!(plan.requeue_after(at(12)), Some(std::time::Duration::ZERO));
        assert_eq!(plan.summary(), "1/3 workloads rolled out");
    }

    #[test]
    fn a_bad_progress_deadline_names_the_field() {
        let spec = spec(
            RolloutStrategy::Progressive,
            5,
            "10 minutes",
            OnFailure::Rollback,
        );
        let error = plan_rollout(&spec, at(0), &[fresh(deployment("a"))]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("spec.rollout.progressDeadline: invalid duration")
        );
    }

    #[test]
    fn complete_only_when_observed_updated_and_available() {
        let done = complete(2);
        assert!(done.is_complete());
        assert!(
            !RolloutStatus {
                observed_generation: 1,
                ..done.clone()
            }
            .is_complete()
        );
        assert!(
            !RolloutStatus {
                updated: 1,
                ..done.clone()
            }
            .is_complete()
        );
        assert!(
            !RolloutStatus {
                available: 1,
                ..done.clone()
            }
            .is_complete()
        );
        assert!(
            !RolloutStatus {
                old: 1,
                ..done.clone()
            }
            .is_complete()
        );
        let scaled_to_zero = RolloutStatus {
            generation: 3,
            observed_generation: 3,
            ..Default::default()
        };
        assert!(scaled_to_zero.is_complete());
    }
}
