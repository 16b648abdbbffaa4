//! The policy's status, computed from the plan and what applying it did.
//!
//! Pure apart from the `now` it is handed: the same inputs give the same status,
//! and a condition keeps its `lastTransitionTime` while its status stays the same,
//! so a converged policy computes a status equal to the stored one and the
//! controller writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    Mode, PlannedChange, TracingPolicySpec, TracingPolicyStatus, UserOverride, WorkloadCounts,
    WorkloadIssue,
};
use crate::plan::{PolicyPlan, WorkloadAction, WorkloadId};

/// Longest lists kept in status; counts stay exact.
pub const MAX_LISTED: usize = 20;
/// Longest DryRun plan kept in status.
pub const MAX_PLANNED: usize = 50;

/// What happened to one workload in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Carries the plan and its controller reports the template rolled out.
    UpToDate,
    /// Carries the plan; its pods are being replaced.
    RollingOut,
    /// Waits for a rollout slot (`rollout.maxConcurrent`).
    Queued,
    /// Waits because `onFailure: Pause` holds the rollout after `by` failed.
    Paused { by: String },
    /// Left as it is: the collector it would send to cannot start.
    Held { reason: String },
    /// Applying or removing failed, or the rollout missed its deadline.
    Failed { reason: String, message: String },
    /// Another policy owns it.
    Conflicted { winner: String },
    /// DryRun: this change would be made.
    WouldChange(PlannedChange),
    /// DryRun: already as planned, or removed: nothing to report.
    Unchanged,
}

/// A problem only the cluster can reveal; the policy is `Degraded` while it lasts.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub spec: &'a TracingPolicySpec,
    pub previous: Option<&'a TracingPolicyStatus>,
    pub plan: &'a PolicyPlan,
    pub outcomes: &'a [(WorkloadId, Outcome)],
    pub problems: &'a [Problem],
    pub collector: Option<crate::api::CollectorStatus>,
    pub now: Time,
}

pub fn compute(input: &StatusInput<'_>) -> TracingPolicyStatus {
    let mut counts = WorkloadCounts::default();
    let mut failures = Vec::new();
    let mut conflicts = Vec::new();
    let mut planned = Vec::new();
    let mut queued = 0;
    let mut paused_by: Option<String> = None;
    for (id, outcome) in input.outcomes {
        match outcome {
            Outcome::UpToDate => counts.up_to_date += 1,
            Outcome::RollingOut => counts.rolling_out += 1,
            Outcome::Queued => queued += 1,
            Outcome::Paused { by } => paused_by = Some(by.clone()),
            Outcome::Held { .. } => {}
            Outcome::Failed { reason, message } => {
                counts.failed += 1;
                failures.push(issue(id, reason, message));
            }
            Outcome::Conflicted { winner } => {
                counts.conflicted += 1;
                conflicts.push(issue(
                    id,
                    "Conflicted",
                    &format!("owned by TracingPolicy {winner}"),
                ));
            }
            Outcome::WouldChange(change) => planned.push(change.clone()),
            Outcome::Unchanged => {}
        }
    }
    let mut user_overrides = Vec::new();
    for decision in &input.plan.workloads {
        if let WorkloadAction::Apply(plan) = &decision.action {
            counts.selected += 1;
            for container in &plan.containers {
                for variable in &container.user_overrides {
                    counts.user_overrides += 1;
                    user_overrides.push(UserOverride {
                        kind: decision.id.kind.to_string(),
                        namespace: decision.id.namespace.clone(),
                        name: decision.id.name.clone(),
                        container: container.name.clone(),
                        variable: variable.clone(),
                    });
                }
            }
        }
    }
    counts.summary = format!("{}/{}", counts.up_to_date, counts.selected);
    let dry_run = input.spec.mode == Mode::DryRun;

    let mut problems: Vec<Problem> = input.problems.to_vec();
    if counts.failed > 0 {
        problems.push(Problem {
            reason: "WorkloadsFailed",
            message: format!(
                "{} of {} workloads failed; see status.failures",
                counts.failed, counts.selected
            ),
        });
    }
    let degraded = !problems.is_empty();
    let rolled = crate::plan::rollout::rolled_out_summary(counts.up_to_date, counts.selected);
    let progressing = counts.rolling_out > 0 || queued > 0;
    let progress = format!(
        "{rolled} ({} rolling out, {queued} waiting for a slot)",
        counts.rolling_out
    );
    let paused = paused_by.as_ref().map(|by| {
        format!(
            "{rolled}; rollout paused: {by} failed (onFailure: Pause); change the policy to resume"
        )
    });

    let mut conditions = Vec::new();
    let mut ready = if dry_run {
        (
            true,
            "DryRun",
            format!(
                "DryRun: {} workloads selected, {} changes planned; nothing written to workloads",
                counts.selected,
                planned.len()
            ),
        )
    } else if degraded {
        (false, "Degraded", join_messages(&problems))
    } else if progressing {
        (false, "RollingOut", progress.clone())
    } else if let Some(paused) = &paused {
        (false, "RolloutPaused", paused.clone())
    } else {
        (
            true,
            "UpToDate",
            format!("{rolled}; {}", summarize_overrides(counts.user_overrides)),
        )
    };
    let notes = crate::plan::sampling::ready_notes(input.spec);
    if ready.0 && !notes.is_empty() {
        ready.2 = format!("{}; {}", ready.2, notes.join("; "));
    }
    conditions.push(condition(input, "Ready", ready.0, ready.1, ready.2));
    conditions.push(if progressing {
        condition(input, "Progressing", true, "RollingOut", progress)
    } else if let Some(paused) = paused {
        condition(input, "Progressing", false, "RolloutPaused", paused)
    } else {
        condition(input, "Progressing", false, "Settled", rolled.clone())
    });
    conditions.push(if degraded {
        let reason = problems.first().map_or("Degraded", |p| p.reason);
        condition(input, "Degraded", true, reason, join_messages(&problems))
    } else {
        condition(
            input,
            "Degraded",
            false,
            "AsExpected",
            "no problems".to_string(),
        )
    });
    conditions.push(if counts.conflicted > 0 {
        let winners: std::collections::BTreeSet<&str> = input
            .outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Conflicted { winner } => Some(winner.as_str()),
                _ => None,
            })
            .collect();
        let winners: Vec<&str> = winners.into_iter().collect();
        condition(
            input,
            "Conflicted",
            true,
            "LostPrecedence",
            format!(
                "{} selected workloads are owned by TracingPolicy {} (higher priority, or older at equal priority)",
                counts.conflicted,
                winners.join(", ")
            ),
        )
    } else {
        condition(input, "Conflicted", false, "NoConflicts", "no other policy owns a selected workload".to_string())
    });

    failures.truncate(MAX_LISTED);
    conflicts.truncate(MAX_LISTED);
    user_overrides.truncate(MAX_LISTED);
    planned.truncate(MAX_PLANNED);
    TracingPolicyStatus {
        observed_generation: input.generation,
        conditions,
        workloads: counts,
        failures,
        user_overrides,
        conflicts,
        collector: input.collector.clone(),
        sampling: Some(sampling_summary(input.spec)),
        backends: Some(
            input
                .spec
                .backends
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        plan: planned,
    }
}

fn issue(id: &WorkloadId, reason: &str, message: &str) -> WorkloadIssue {
    WorkloadIssue {
        kind: id.kind.to_string(),
        namespace: id.namespace.clone(),
        name: id.name.clone(),
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

fn join_messages(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

fn summarize_overrides(n: i32) -> String {
    match n {
        0 => "no user overrides".to_string(),
        1 => "1 variable kept as the workload sets it (status.userOverrides)".to_string(),
        n => format!("{n} variables kept as the workloads set them (status.userOverrides)"),
    }
}

/// What `kubectl get tp` shows under SAMPLING (see [`crate::plan::sampling::summary`]).
pub fn sampling_summary(spec: &TracingPolicySpec) -> String {
    crate::plan::sampling::summary(spec)
}

/// A condition that keeps its previous `lastTransitionTime` while its status is unchanged.
fn condition(
    input: &StatusInput<'_>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(prev) if prev.status == status => prev.last_transition_time.clone(),
        _ => input.now.clone(),
    };
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: input.generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WorkloadKind;
    use crate::plan::{ContainerPlan, WorkloadDecision, WorkloadPlan};

    fn spec() -> TracingPolicySpec {
        serde_json::from_value(serde_json::json!({
            "sampling": {"ratio": 0.1, "tail": {"keepErrors": true, "slowerThan": "500ms", "ratio": 0.1}},
            "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger:4317"}]
        }))
        .expect("spec parses")
    }

    fn id(name: &str) -> WorkloadId {
        WorkloadId {
            namespace: "caas".into(),
            kind: WorkloadKind::Deployment,
            name: name.into(),
        }
    }

    fn apply(name: &str, overrides: &[&str]) -> WorkloadDecision {
        WorkloadDecision {
            id: id(name),
            action: WorkloadAction::Apply(WorkloadPlan {
                service_name: name.into(),
                containers: vec![ContainerPlan {
                    name: "app".into(),
                    env: vec![],
                    user_overrides: overrides.iter().map(|s| s.to_string()).collect(),
                }],
                config_hash: "h".into(),
            }),
        }
    }

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("valid time"))
    }

    fn get<'a>(s: &'a TracingPolicyStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn converged_policy_is_ready_and_recomputes_identically() {
        let spec = spec();
        let plan = PolicyPlan {
            workloads: vec![apply("gateway", &["SERVICE_NAME"]), apply("auth", &[])],
            ..Default::default()
        };
        let outcomes = vec![
            (id("gateway"), Outcome::UpToDate),
            (id("auth"), Outcome::UpToDate),
        ];
        let first = compute(&StatusInput {
            generation: Some(3),
            spec: &spec,
            previous: None,
            plan: &plan,
            outcomes: &outcomes,
            problems: &[],
            collector: None,
            now: time(100),
        });
        assert_eq!(get(&first, "Ready").status, "True");
        assert_eq!(get(&first, "Degraded").status, "False");
        assert_eq!(first.workloads.summary, "2/2");
        assert_eq!(first.workloads.user_overrides, 1);
        assert_eq!(first.user_overrides[0].variable, "SERVICE_NAME");
        // The fixture uses the deprecated tail.ratio: 0.1 × 0.1 of ordinary traces.
        assert_eq!(first.sampling.as_deref(), Some("errors,>500ms,rest 1%"));
        assert!(
            get(&first, "Ready")
                .message
                .ends_with("; spec.sampling.tail.ratio is deprecated: the collector keeps sampling.ratio × tail.ratio = 0.1 × 0.1 = 1 % of ordinary traces; write sampling.ratio: 0.01 and remove tail.ratio"),
            "{}",
            get(&first, "Ready").message
        );
        assert_eq!(first.backends.as_deref(), Some("jaeger"));
        // A later reconcile with nothing changed computes the very same status: no write.
        let again = compute(&StatusInput {
            generation: Some(3),
            spec: &spec,
            previous: Some(&first),
            plan: &plan,
            outcomes: &outcomes,
            problems: &[],
            collector: None,
            now: time(999),
        });
        assert_eq!(again, first);
    }

    #[test]
    fn failures_degrade_and_rolling_out_progresses() {
        let spec = spec();
        let plan = PolicyPlan {
            workloads: vec![apply("a", &[]), apply("b", &[]), apply("c", &[])],
            ..Default::default()
        };
        let outcomes = vec![
            (id("a"), Outcome::RollingOut),
            (
                id("b"),
                Outcome::Failed {
                    reason: "ApplyRejected".into(),
                    message: "422".into(),
                },
            ),
            (
                id("c"),
                Outcome::Conflicted {
                    winner: "other".into(),
                },
            ),
        ];
        let s = compute(&StatusInput {
            generation: Some(1),
            spec: &spec,
            previous: None,
            plan: &plan,
            outcomes: &outcomes,
            problems: &[],
            collector: None,
            now: time(1),
        });
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Degraded").status, "True");
        assert_eq!(get(&s, "Degraded").reason, "WorkloadsFailed");
        assert_eq!(get(&s, "Progressing").status, "True");
        assert_eq!(get(&s, "Conflicted").status, "True");
        assert!(get(&s, "Conflicted").message.contains("other"));
        assert_eq!(s.failures[0].reason, "ApplyRejected");
        assert_eq!(
            (
                s.workloads.rolling_out,
                s.workloads.failed,
                s.workloads.conflicted
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let spec = spec();
        let plan = PolicyPlan {
            workloads: vec![apply("a", &[])],
            ..Default::default()
        };
        let rolling = vec![(id("a"), Outcome::RollingOut)];
        let done = vec![(id("a"), Outcome::UpToDate)];
        let input = |previous, outcomes, now| StatusInput {
            generation: Some(1),
            spec: &spec,
            previous,
            plan: &plan,
            outcomes,
            problems: &[],
            collector: None,
            now,
        };
        let s1 = compute(&input(None, &rolling, time(10)));
        let s2 = compute(&input(Some(&s1), &done, time(20)));
        assert_eq!(get(&s2, "Ready").last_transition_time, time(20));
        assert_eq!(get(&s2, "Degraded").last_transition_time, time(10));
    }
}
