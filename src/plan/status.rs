//! The policy's status, computed from the plan and what applying it did, and
//! the Events that announce what changed.
//!
//! Pure apart from the `now` it is handed: the same inputs give the same status,
//! and a condition keeps its `lastTransitionTime` while its status stays the same,
//! so a converged policy computes a status equal to the stored one and the
//! controller writes nothing.
//!
//! The conditions: `Ready`, `Progressing`, `Degraded`, `Conflicted`, and the two
//! kstatus reads (Flux, and Argo CD's health check in the chart):
//! - `Reconciling` True while the operator is rolling out or workloads wait for a
//!   slot or their owner (kstatus: `InProgress`);
//! - `Stalled` True when the operator cannot make progress until something
//!   changes: a problem (missing Secret, no namespace matched, ...), a rollout
//!   paused on failure, or workloads failed with nothing left rolling (kstatus:
//!   `Failed`). Otherwise, with `observedGeneration` current, kstatus says `Current`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    AgentSkip, Mode, PlannedChange, TracingPolicySpec, TracingPolicyStatus, UserOverride,
    WorkloadCounts, WorkloadIssue,
};
use crate::plan::agents::{AgentSummary, Language};
use crate::plan::{Injection, WorkloadId};

/// Longest lists kept in status; counts stay exact.
pub const MAX_LISTED: usize = 20;
/// Longest DryRun plan kept in status.
pub const MAX_PLANNED: usize = 50;
/// Workloads with pods left on the previous template named in the Ready message.
pub const MAX_NAMED_LEFT_BEHIND: usize = 5;

/// What happened to one workload in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Carries the plan and its controller reports the template rolled out.
    UpToDate,
    /// Up to date, but by its own update strategy (`OnDelete`, a StatefulSet
    /// partition) some pods keep the previous template until their owner
    /// replaces them; `message` says how many. Named in the Ready message.
    PodsLeftBehind { message: String },
    /// Carries the plan and rolled out, but is unavailable for reasons of its own.
    Unavailable { message: String },
    /// Carries the plan; its pods are being replaced.
    RollingOut,
    /// Waits for a rollout slot (`rollout.maxConcurrent`).
    Queued,
    /// Waits because `onFailure: Pause` holds the rollout after `by` failed.
    Paused { by: String },
    /// Waits for its owner: paused, or rolling out or unavailable on its own.
    WaitingForOwner { message: String },
    /// Left as it is: the collector it would send to cannot start.
    Held { reason: String },
    /// Left as it is until the collector it would send to has a ready replica.
    WaitingForCollector { message: String },
    /// Applying or removing failed, or the rollout missed its deadline;
    /// `rolled_back`: the operator took its change out again (`onFailure: Rollback`).
    Failed {
        reason: String,
        message: String,
        rolled_back: bool,
    },
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

/// Reasons of problems that clear by themselves (nothing needs to change): the
/// policy is `Degraded` while they last, but not `Stalled`.
pub const TRANSIENT_REASONS: [&str; 1] = ["CollectorUnavailable"];

/// One selected workload's variables that it sets itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Overrides<'a> {
    pub id: &'a WorkloadId,
    pub container: &'a str,
    pub variables: &'a [String],
}

pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub spec: &'a TracingPolicySpec,
    pub previous: Option<&'a TracingPolicyStatus>,
    /// Workloads this policy selects and owns (its `Apply` decisions).
    pub selected: i32,
    /// Variables the selected workloads set themselves, in workload order.
    pub overrides: &'a [Overrides<'a>],
    /// The agents of the selected workloads that have a language, in workload order.
    pub agents: &'a [(&'a WorkloadId, &'a AgentSummary)],
    pub outcomes: &'a [(WorkloadId, Outcome)],
    pub problems: &'a [Problem],
    pub collector: Option<crate::api::CollectorStatus>,
    pub injection: Injection,
    pub now: Time,
}

pub fn compute(input: &StatusInput<'_>) -> TracingPolicyStatus {
    let mut counts = WorkloadCounts::default();
    let mut failures = Vec::new();
    let mut conflicts = Vec::new();
    let mut planned = Vec::new();
    let mut unavailable = Vec::new();
    let mut waiting = Vec::new();
    let mut left_behind = Vec::new();
    let mut queued = 0;
    let mut paused_by: Option<String> = None;
    for (id, outcome) in input.outcomes {
        match outcome {
            Outcome::UpToDate => counts.up_to_date += 1,
            Outcome::PodsLeftBehind { message } => {
                counts.up_to_date += 1;
                left_behind.push(format!("{id}: {message}"));
            }
            Outcome::Unavailable { message } => {
                counts.up_to_date += 1;
                counts.unavailable += 1;
                unavailable.push(issue(id, "Unavailable", message));
            }
            Outcome::RollingOut => counts.rolling_out += 1,
            Outcome::Queued => queued += 1,
            Outcome::Paused { by } => {
                counts.waiting += 1;
                paused_by = Some(by.clone());
            }
            Outcome::WaitingForOwner { message } => {
                counts.waiting += 1;
                waiting.push(issue(id, "WaitingForOwner", message));
            }
            Outcome::WaitingForCollector { message } => {
                counts.waiting += 1;
                waiting.push(issue(id, "WaitingForCollector", message));
            }
            Outcome::Held { .. } => {}
            Outcome::Failed {
                reason, message, ..
            } => {
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
    counts.waiting += queued;
    let mut user_overrides = Vec::new();
    counts.selected = input.selected;
    for o in input.overrides {
        for variable in o.variables {
            counts.user_overrides += 1;
            if user_overrides.len() < MAX_LISTED {
                user_overrides.push(UserOverride {
                    kind: o.id.kind.to_string(),
                    namespace: o.id.namespace.to_string(),
                    name: o.id.name.to_string(),
                    container: o.container.to_string(),
                    variable: variable.clone(),
                });
            }
        }
    }
    let mut agents_skipped = Vec::new();
    // A workload whose change was rolled back runs without its agent.
    let rolled_back: std::collections::BTreeSet<&WorkloadId> = input
        .outcomes
        .iter()
        .filter(|(_, o)| {
            matches!(
                o,
                Outcome::Failed {
                    rolled_back: true,
                    ..
                }
            )
        })
        .map(|(id, _)| id)
        .collect();
    for (id, agent) in input.agents {
        let counter = match agent.language {
            _ if rolled_back.contains(id) => None,
            Some(Language::NodeJs) => Some(&mut counts.agents.nodejs),
            Some(Language::Java) => Some(&mut counts.agents.java),
            Some(Language::Python) => Some(&mut counts.agents.python),
            Some(Language::DotNet) => Some(&mut counts.agents.dotnet),
            None => None,
        };
        if let Some(n) = counter {
            *n += 1;
        }
        if !agent.skipped.is_empty() {
            counts.agents.skipped += 1;
        }
        for skip in &agent.skipped {
            if agents_skipped.len() < MAX_LISTED {
                agents_skipped.push(AgentSkip {
                    kind: id.kind.to_string(),
                    namespace: id.namespace.to_string(),
                    name: id.name.to_string(),
                    container: skip.container.clone().unwrap_or_default(),
                    language: skip.language.clone(),
                    reason: skip.reason.reason().to_string(),
                    message: skip.message(),
                });
            }
        }
    }
    // A failed workload with an agent: say that its rollback takes the agent
    // out of this workload only.
    for failure in &mut failures {
        let language = input.agents.iter().find_map(|(id, a)| {
            (id.kind.as_str() == failure.kind
                && *id.namespace == *failure.namespace
                && *id.name == *failure.name)
                .then_some(a.language)
                .flatten()
        });
        if let Some(language) = language {
            failure.message.push_str(&agent_failure_note(
                language,
                input.spec.rollout.on_failure,
                &failure.reason,
            ));
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
    let owners = waiting.len();
    let for_collector = waiting
        .iter()
        .filter(|w| w.reason == "WaitingForCollector")
        .count();
    let progressing = counts.rolling_out > 0 || queued > 0 || owners > 0;
    let mut progress = format!(
        "{rolled} ({} rolling out, {queued} waiting for a slot",
        counts.rolling_out
    );
    if owners > for_collector {
        progress.push_str(&format!(
            ", {} waiting for their owner",
            owners - for_collector
        ));
    }
    if for_collector > 0 {
        progress.push_str(&format!(
            ", {for_collector} waiting for their collector to be ready"
        ));
    }
    if owners > 0 {
        progress.push_str("; see status.waiting");
    }
    progress.push(')');
    let paused = paused_by.as_ref().map(|by| {
        format!(
            "{rolled}; rollout paused: {by} failed (onFailure: Pause); change the policy to resume"
        )
    });
    // Only while nothing of the operator's own is still moving: a failure with
    // the rest still rolling out is not stuck yet.
    let reconciling = !dry_run && (counts.rolling_out > 0 || queued > 0 || owners > 0);
    let stuck_problem = problems
        .iter()
        .find(|p| !TRANSIENT_REASONS.contains(&p.reason));
    let stalled = if dry_run || reconciling {
        None
    } else if let Some(p) = stuck_problem {
        Some((p.reason, join_messages(&problems)))
    } else {
        paused.as_ref().map(|p| ("RolloutPaused", p.clone()))
    };

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
        let mut message = format!("{rolled}; {}", summarize_overrides(counts.user_overrides));
        if counts.unavailable > 0 {
            message.push_str(&format!(
                "; {} unavailable for reasons of their own (not the tracing settings): see status.unavailable",
                counts.unavailable
            ));
        }
        if !left_behind.is_empty() {
            let more = left_behind.len().saturating_sub(MAX_NAMED_LEFT_BEHIND);
            left_behind.truncate(MAX_NAMED_LEFT_BEHIND);
            message.push_str(&format!(
                "; pods keep the previous template until their owner replaces them (their update strategy): {}",
                left_behind.join("; ")
            ));
            if more > 0 {
                message.push_str(&format!(" and {more} more"));
            }
        }
        (true, "UpToDate", message)
    };
    let mut notes = crate::plan::sampling::ready_notes(input.spec);
    if let Some(losses) = input.collector.as_ref().and_then(|c| c.losses.as_ref()) {
        notes.extend(crate::plan::collector::metrics::loss_notes(losses));
    }
    if ready.0 && !notes.is_empty() {
        ready.2 = format!("{}; {}", ready.2, notes.join("; "));
    }
    conditions.push(condition(input, "Ready", ready.0, ready.1, ready.2));
    conditions.push(if progressing {
        condition(input, "Progressing", true, "RollingOut", progress.clone())
    } else if let Some(paused) = &paused {
        condition(input, "Progressing", false, "RolloutPaused", paused.clone())
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
    conditions.push(if reconciling {
        condition(input, "Reconciling", true, "RollingOut", progress)
    } else {
        condition(input, "Reconciling", false, "Settled", rolled.clone())
    });
    conditions.push(match stalled {
        Some((reason, message)) => condition(input, "Stalled", true, reason, message),
        None => condition(
            input,
            "Stalled",
            false,
            "Progressing",
            "nothing blocks the operator".to_string(),
        ),
    });

    failures.truncate(MAX_LISTED);
    conflicts.truncate(MAX_LISTED);
    unavailable.truncate(MAX_LISTED);
    waiting.truncate(MAX_LISTED);
    planned.truncate(MAX_PLANNED);
    TracingPolicyStatus {
        observed_generation: input.generation,
        conditions,
        workloads: counts,
        failures,
        user_overrides,
        agents_skipped,
        unavailable,
        waiting,
        injection: Some(input.injection.as_str().to_string()),
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

/// `new` differs from `previous` only in how far the rollout got: the same
/// generation, every condition with the same status and reason, the same
/// failures, collector and settings; counts, messages and the lists of
/// waiting and unavailable workloads may differ. Such a change announces
/// nothing (no Event depends on it), so the controller may write it later.
pub fn only_progress(previous: &TracingPolicyStatus, new: &TracingPolicyStatus) -> bool {
    let turns = |s: &TracingPolicyStatus| {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect::<Vec<_>>()
    };
    previous.observed_generation == new.observed_generation
        && turns(previous) == turns(new)
        && previous.failures == new.failures
        && previous.collector == new.collector
        && previous.injection == new.injection
        && previous.sampling == new.sampling
        && previous.backends == new.backends
}

/// What a failure of a workload with the `language` agent adds to its message.
fn agent_failure_note(
    language: Language,
    on_failure: crate::api::OnFailure,
    reason: &str,
) -> String {
    if reason == crate::plan::rollout::REASON_APPLY_REJECTED {
        return format!(" (the workload's pods would get the {language} agent)");
    }
    match on_failure {
        crate::api::OnFailure::Rollback => format!(
            "; the {language} agent is removed from this workload only (its pods go back to their template without it; other workloads keep theirs)"
        ),
        _ => format!(
            "; its pods carry the {language} agent, which may keep them from becoming available"
        ),
    }
}

fn issue(id: &WorkloadId, reason: &str, message: &str) -> WorkloadIssue {
    WorkloadIssue {
        kind: id.kind.to_string(),
        namespace: id.namespace.to_string(),
        name: id.name.to_string(),
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

/// An Event the controller publishes.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedEvent {
    /// `None`: on the policy; else on this workload.
    pub workload: Option<WorkloadId>,
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// At most this many workloads are named in one aggregated Event.
pub const MAX_NAMED_IN_EVENT: usize = 5;

/// Events for what changed since the previous status, so they are published once
/// per change and never on a converged resync: on the policy when it becomes
/// Ready or Degraded, and `RolloutFailed` on the policy and on each workload
/// whose failure is new.
pub fn status_events(
    policy: &str,
    previous: Option<&TracingPolicyStatus>,
    new: &TracingPolicyStatus,
) -> Vec<PlannedEvent> {
    let condition = |s: Option<&TracingPolicyStatus>, type_: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let mut events = Vec::new();
    for (type_, warning, reason) in [("Ready", false, "Ready"), ("Degraded", true, "Degraded")] {
        let before = condition(previous, type_);
        if let Some((status, why, message)) = condition(Some(new), type_)
            && status == "True"
            && before.as_ref().map(|b| b.0.as_str()) != Some("True")
        {
            events.push(PlannedEvent {
                workload: None,
                warning,
                reason,
                note: format!("{why}: {message}"),
            });
        }
    }
    let known = |f: &WorkloadIssue| {
        previous.is_some_and(|p| {
            p.failures.iter().any(|g| {
                (&g.kind, &g.namespace, &g.name, &g.reason)
                    == (&f.kind, &f.namespace, &f.name, &f.reason)
            })
        })
    };
    for failure in new.failures.iter().filter(|f| !known(f)) {
        let Some(kind) = crate::api::WorkloadKind::ALL
            .into_iter()
            .find(|k| k.as_str() == failure.kind)
        else {
            continue;
        };
        let id = WorkloadId::new(&failure.namespace, kind, &failure.name);
        events.push(PlannedEvent {
            workload: Some(id.clone()),
            warning: true,
            reason: "RolloutFailed",
            note: format!(
                "TracingPolicy {policy}: {}: {}",
                failure.reason, failure.message
            ),
        });
        events.push(PlannedEvent {
            workload: None,
            warning: true,
            reason: "RolloutFailed",
            note: format!("{id}: {}: {}", failure.reason, failure.message),
        });
    }
    events
}

/// A `Warning` Event per deprecated field the spec uses, once per generation:
/// only when the stored status was written for another generation (or none),
/// so neither a resync nor an operator restart repeats it.
pub fn deprecation_events(
    spec: &TracingPolicySpec,
    generation: Option<i64>,
    previous: Option<&TracingPolicyStatus>,
) -> Vec<PlannedEvent> {
    if previous.is_some_and(|p| p.observed_generation == generation) {
        return Vec::new();
    }
    crate::plan::sampling::deprecations(spec)
        .into_iter()
        .map(|d| PlannedEvent {
            workload: None,
            warning: true,
            reason: d.reason,
            note: d.message,
        })
        .collect()
}

/// One Event on the policy for the workloads it changed in one batch of writes
/// (`TracingApplied`, `TracingRemoved`), naming the first few: an Event per
/// workload would cost as many writes as the changes themselves.
pub fn batch_event(reason: &'static str, verb: &str, ids: &[WorkloadId]) -> Option<PlannedEvent> {
    if ids.is_empty() {
        return None;
    }
    let named: Vec<String> = ids
        .iter()
        .take(MAX_NAMED_IN_EVENT)
        .map(ToString::to_string)
        .collect();
    let more = ids.len().saturating_sub(MAX_NAMED_IN_EVENT);
    let mut note = format!(
        "{verb} the OpenTelemetry settings of {} workload{}: {}",
        ids.len(),
        if ids.len() == 1 { "" } else { "s" },
        named.join(", ")
    );
    if more > 0 {
        note.push_str(&format!(" and {more} more"));
    }
    Some(PlannedEvent {
        workload: None,
        warning: false,
        reason,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WorkloadKind;

    fn spec() -> TracingPolicySpec {
        serde_json::from_value(serde_json::json!({
            "sampling": {"ratio": 0.1, "tail": {"keepErrors": true, "slowerThan": "500ms", "ratio": 0.1}},
            "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger:4317"}]
        }))
        .expect("spec parses")
    }

    fn id(name: &str) -> WorkloadId {
        WorkloadId::new("caas", WorkloadKind::Deployment, name)
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

    /// The status of `outcomes` (one selected workload each) with `problems`.
    fn status_of(
        spec: &TracingPolicySpec,
        previous: Option<&TracingPolicyStatus>,
        outcomes: &[(WorkloadId, Outcome)],
        problems: &[Problem],
        now: i64,
    ) -> TracingPolicyStatus {
        compute(&StatusInput {
            generation: Some(3),
            spec,
            previous,
            selected: outcomes
                .iter()
                .filter(|(_, o)| !matches!(o, Outcome::Conflicted { .. }))
                .count() as i32,
            overrides: &[],
            agents: &[],
            outcomes,
            problems,
            collector: None,
            injection: Injection::Admission,
            now: time(now),
        })
    }

    fn kstatus_conditions(s: &TracingPolicyStatus) -> (String, String) {
        (
            get(s, "Reconciling").status.clone(),
            get(s, "Stalled").status.clone(),
        )
    }

    #[test]
    fn pods_left_on_the_previous_template_are_up_to_date_and_named_in_ready() {
        let spec = spec();
        let outcomes = vec![
            (
                id("agent"),
                Outcome::PodsLeftBehind {
                    message: "3/3 pods available, 0/3 updated, 3 still on the previous template until deleted (updateStrategy OnDelete)".into(),
                },
            ),
            (id("auth"), Outcome::UpToDate),
        ];
        let s = status_of(&spec, None, &outcomes, &[], 1);
        assert_eq!(s.workloads.up_to_date, 2);
        assert_eq!(get(&s, "Ready").status, "True");
        let ready = &get(&s, "Ready").message;
        assert!(
            ready.contains("until their owner replaces them")
                && ready.contains(
                    "agent: 3/3 pods available, 0/3 updated, 3 still on the previous template"
                ),
            "{ready}"
        );
        assert!(s.unavailable.is_empty() && s.waiting.is_empty());
    }

    #[test]
    fn converged_policy_is_ready_and_recomputes_identically() {
        let spec = spec();
        let gateway = id("gateway");
        let variables = vec!["SERVICE_NAME".to_string()];
        let overrides = [Overrides {
            id: &gateway,
            container: "app",
            variables: &variables,
        }];
        let outcomes = vec![
            (id("gateway"), Outcome::UpToDate),
            (id("auth"), Outcome::UpToDate),
        ];
        let input = |previous, now| StatusInput {
            generation: Some(3),
            spec: &spec,
            previous,
            selected: 2,
            overrides: &overrides,
            agents: &[],
            outcomes: &outcomes,
            problems: &[],
            collector: None,
            injection: Injection::Admission,
            now: time(now),
        };
        let first = compute(&input(None, 100));
        assert_eq!(get(&first, "Ready").status, "True");
        assert_eq!(get(&first, "Degraded").status, "False");
        assert_eq!(kstatus_conditions(&first), ("False".into(), "False".into()));
        assert_eq!(first.workloads.summary, "2/2");
        assert_eq!(first.workloads.user_overrides, 1);
        assert_eq!(first.user_overrides[0].variable, "SERVICE_NAME");
        assert_eq!(first.injection.as_deref(), Some("Admission"));
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
        let again = compute(&input(Some(&first), 999));
        assert_eq!(again, first);
        assert!(status_events("p", Some(&first), &again).is_empty());
    }

    #[test]
    fn failures_degrade_and_rolling_out_progresses() {
        let spec = spec();
        let outcomes = vec![
            (id("a"), Outcome::RollingOut),
            (
                id("b"),
                Outcome::Failed {
                    reason: "ApplyRejected".into(),
                    message: "422".into(),
                    rolled_back: false,
                },
            ),
            (
                id("c"),
                Outcome::Conflicted {
                    winner: "other".into(),
                },
            ),
        ];
        let s = status_of(&spec, None, &outcomes, &[], 1);
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Degraded").status, "True");
        assert_eq!(get(&s, "Degraded").reason, "WorkloadsFailed");
        assert_eq!(get(&s, "Progressing").status, "True");
        assert_eq!(get(&s, "Conflicted").status, "True");
        assert!(get(&s, "Conflicted").message.contains("other"));
        // Still rolling out: not stuck yet.
        assert_eq!(kstatus_conditions(&s), ("True".into(), "False".into()));
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
    fn stalled_when_nothing_moves_until_something_changes() {
        let spec = spec();
        let failed = (
            id("b"),
            Outcome::Failed {
                reason: "PodsNotReady".into(),
                message: "0/1 available".into(),
                rolled_back: false,
            },
        );
        // Failed with nothing left rolling out.
        let s = status_of(&spec, None, std::slice::from_ref(&failed), &[], 1);
        assert_eq!(kstatus_conditions(&s), ("False".into(), "True".into()));
        assert_eq!(get(&s, "Stalled").reason, "WorkloadsFailed");
        // A problem that needs a change.
        let missing = Problem {
            reason: "SecretNotFound",
            message: "spec.backends[x].headersSecretRef: Secret o/k does not exist".into(),
        };
        let s = status_of(
            &spec,
            None,
            &[(id("a"), Outcome::UpToDate)],
            std::slice::from_ref(&missing),
            1,
        );
        assert_eq!(get(&s, "Stalled").status, "True");
        assert_eq!(get(&s, "Stalled").reason, "SecretNotFound");
        assert_eq!(get(&s, "Ready").status, "False");
        // A problem that clears by itself degrades but does not stall.
        let passing = Problem {
            reason: "CollectorUnavailable",
            message: "no ready collector".into(),
        };
        let s = status_of(&spec, None, &[(id("a"), Outcome::UpToDate)], &[passing], 1);
        assert_eq!(get(&s, "Degraded").status, "True");
        assert_eq!(get(&s, "Stalled").status, "False");
        // Paused on failure: stalled until the policy changes.
        let s = status_of(
            &spec,
            None,
            &[
                failed,
                (
                    id("c"),
                    Outcome::Paused {
                        by: "Deployment caas/b".into(),
                    },
                ),
            ],
            &[],
            1,
        );
        assert_eq!(get(&s, "Stalled").status, "True");
        assert_eq!(get(&s, "Progressing").reason, "RolloutPaused");
    }

    #[test]
    fn unavailable_workloads_are_reported_and_keep_the_policy_ready() {
        let spec = spec();
        let outcomes = vec![
            (id("a"), Outcome::UpToDate),
            (
                id("b"),
                Outcome::Unavailable {
                    message: "1/2 replicas available, 2/2 updated".into(),
                },
            ),
        ];
        let s = status_of(&spec, None, &outcomes, &[], 1);
        assert_eq!(get(&s, "Ready").status, "True");
        assert!(
            get(&s, "Ready").message.contains("1 unavailable"),
            "{}",
            get(&s, "Ready").message
        );
        assert_eq!(get(&s, "Degraded").status, "False");
        assert_eq!(s.workloads.summary, "2/2");
        assert_eq!(s.workloads.unavailable, 1);
        assert_eq!(s.unavailable[0].name, "b");
        assert_eq!(kstatus_conditions(&s), ("False".into(), "False".into()));
    }

    #[test]
    fn workloads_waiting_for_their_owner_keep_it_progressing_without_failing() {
        let spec = spec();
        let outcomes = vec![
            (id("a"), Outcome::UpToDate),
            (
                id("b"),
                Outcome::WaitingForOwner {
                    message: "paused by its owner".into(),
                },
            ),
        ];
        let s = status_of(&spec, None, &outcomes, &[], 1);
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Degraded").status, "False");
        assert!(
            get(&s, "Progressing")
                .message
                .contains("1 waiting for their owner")
        );
        assert_eq!(s.waiting[0].name, "b");
        assert_eq!(s.workloads.waiting, 1);
        assert_eq!(kstatus_conditions(&s), ("True".into(), "False".into()));
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let spec = spec();
        let rolling = vec![(id("a"), Outcome::RollingOut)];
        let done = vec![(id("a"), Outcome::UpToDate)];
        let s1 = status_of(&spec, None, &rolling, &[], 10);
        let s2 = status_of(&spec, Some(&s1), &done, &[], 20);
        assert_eq!(get(&s2, "Ready").last_transition_time, time(20));
        assert_eq!(get(&s2, "Degraded").last_transition_time, time(10));
    }

    #[test]
    fn workloads_waiting_for_their_collector_progress_without_degrading() {
        let spec = spec();
        let outcomes = vec![(
            id("a"),
            Outcome::WaitingForCollector {
                message: "waiting for the collector samplers to have a ready replica".into(),
            },
        )];
        let s = status_of(&spec, None, &outcomes, &[], 1);
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Degraded").status, "False");
        assert_eq!(get(&s, "Progressing").status, "True");
        assert_eq!(s.waiting[0].reason, "WaitingForCollector");
        assert_eq!(s.workloads.waiting, 1);
        assert_eq!(kstatus_conditions(&s), ("True".into(), "False".into()));
    }

    #[test]
    fn events_announce_changes_once() {
        let spec = spec();
        let failed = vec![(
            id("b"),
            Outcome::Failed {
                reason: "PodsNotReady".into(),
                message: "0/1 available".into(),
                rolled_back: false,
            },
        )];
        let s1 = status_of(&spec, None, &failed, &[], 1);
        let events = status_events("p", None, &s1);
        let reasons: Vec<(&str, bool)> = events
            .iter()
            .map(|e| (e.reason, e.workload.is_some()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("Degraded", false),
                ("RolloutFailed", true),
                ("RolloutFailed", false)
            ]
        );
        assert!(status_events("p", Some(&s1), &s1).is_empty());

        let ids: Vec<WorkloadId> = (0..7).map(|i| id(&format!("w{i}"))).collect();
        let event = batch_event("TracingApplied", "set", &ids).expect("an event");
        assert_eq!(
            event.note,
            "set the OpenTelemetry settings of 7 workloads: Deployment caas/w0, \
             Deployment caas/w1, Deployment caas/w2, Deployment caas/w3, Deployment caas/w4 and 2 more"
        );
        assert!(batch_event("TracingApplied", "set", &[]).is_none());
    }

    #[test]
    fn collector_losses_are_named_in_ready_with_what_to_change() {
        let spec = spec();
        let outcomes = vec![(id("gateway"), Outcome::UpToDate)];
        let collector = |losses| crate::api::CollectorStatus {
            endpoint: "http://c:4318/v1/traces".into(),
            ready_replicas: 1,
            routers: None,
            samplers: None,
            losses,
        };
        let status = |collector| {
            compute(&StatusInput {
                generation: Some(3),
                spec: &spec,
                previous: None,
                selected: 1,
                overrides: &[],
                agents: &[],
                outcomes: &outcomes,
                problems: &[],
                collector,
                injection: Injection::Admission,
                now: time(100),
            })
        };
        let lost = collector(Some(crate::api::CollectorLosses {
            pods_read: 1,
            traces_decided_early: 42,
            ..Default::default()
        }));
        let overloaded = status(Some(lost.clone()));
        let ready = get(&overloaded, "Ready");
        assert_eq!(
            ready.status, "True",
            "losses are advisory: {}",
            ready.message
        );
        assert!(
            ready.message.ends_with("the collector decided 42 traces before their decision wait because it held as many as it is sized for, so their later spans (errors, slow ends) were judged without them: raise spec.sampling.tail.expectedTracesPerSecond"),
            "{}",
            ready.message
        );
        assert_eq!(overloaded.collector.as_ref(), Some(&lost));
        let none_lost = status(Some(collector(Some(crate::api::CollectorLosses {
            pods_read: 1,
            ..Default::default()
        }))));
        assert_eq!(
            get(&none_lost, "Ready").message,
            get(&status(None), "Ready").message
        );
    }

    #[test]
    fn a_deprecated_field_is_warned_about_once_per_generation() {
        // The fixture uses the deprecated tail.ratio.
        let spec = spec();
        let first = deprecation_events(&spec, Some(3), None);
        assert_eq!(first.len(), 1);
        assert!(first[0].warning);
        assert_eq!(first[0].reason, "DeprecatedField");
        assert!(
            first[0]
                .note
                .starts_with("spec.sampling.tail.ratio is deprecated")
        );
        let written = status_of(&spec, None, &[(id("a"), Outcome::UpToDate)], &[], 100);
        assert_eq!(written.observed_generation, Some(3));
        assert!(deprecation_events(&spec, Some(3), Some(&written)).is_empty());
        assert_eq!(deprecation_events(&spec, Some(4), Some(&written)).len(), 1);
        let mut current = spec.clone();
        if let Some(tail) = current.sampling.tail.as_mut() {
            tail.ratio = None;
        }
        assert!(deprecation_events(&current, Some(4), Some(&written)).is_empty());
    }

    #[test]
    fn progress_alone_is_told_apart_from_a_change_that_announces_something() {
        let spec = spec();
        let rolling: Vec<(WorkloadId, Outcome)> = (0..4)
            .map(|i| (id(&format!("w{i}")), Outcome::RollingOut))
            .collect();
        let before = status_of(&spec, None, &rolling, &[], 100);
        // Two of four done: counts and messages move, no condition turns.
        let mut halfway = rolling.clone();
        halfway[0].1 = Outcome::UpToDate;
        halfway[1].1 = Outcome::UpToDate;
        let moved = status_of(&spec, Some(&before), &halfway, &[], 105);
        assert_ne!(moved, before);
        assert_eq!(moved.workloads.up_to_date, 2);
        assert!(only_progress(&before, &moved));
        assert!(status_events("p", Some(&before), &moved).is_empty());

        // Every one done: Ready turns True, which is announced at once.
        let done: Vec<(WorkloadId, Outcome)> = rolling
            .iter()
            .map(|(i, _)| (i.clone(), Outcome::UpToDate))
            .collect();
        let ready = status_of(&spec, Some(&moved), &done, &[], 110);
        assert!(!only_progress(&moved, &ready));

        // A new failure is announced at once too.
        let mut failing = halfway.clone();
        failing[2].1 = Outcome::Failed {
            reason: "PodsNotReady".into(),
            message: "0/1 available".into(),
            rolled_back: false,
        };
        let failed = status_of(&spec, Some(&moved), &failing, &[], 110);
        assert!(!only_progress(&moved, &failed));

        // So is a problem, and a new generation.
        let problem = [Problem {
            reason: "SecretNotFound",
            message: "Secret observability/x not found".into(),
        }];
        let degraded = status_of(&spec, Some(&moved), &halfway, &problem, 110);
        assert!(!only_progress(&moved, &degraded));
        let mut next_generation = moved.clone();
        next_generation.observed_generation = Some(4);
        assert!(!only_progress(&moved, &next_generation));
    }

    #[test]
    fn agents_are_counted_skips_listed_and_a_failed_agent_workload_says_what_rollback_removes() {
        use crate::plan::agents::{Skip, SkipReason};
        let spec = spec();
        let (gateway, auth, legacy) = (id("gateway"), id("auth"), id("legacy"));
        let node = AgentSummary {
            language: Some(Language::NodeJs),
            skipped: vec![],
        };
        let java = AgentSummary {
            language: Some(Language::Java),
            skipped: vec![],
        };
        let own_sdk = AgentSummary {
            language: None,
            skipped: vec![Skip {
                container: Some("app".into()),
                language: "nodejs".into(),
                reason: SkipReason::SdkPresent("OTEL_SERVICE_NAME".into()),
            }],
        };
        let agents = [(&gateway, &node), (&auth, &java), (&legacy, &own_sdk)];
        let outcomes = vec![
            (gateway.clone(), Outcome::UpToDate),
            (
                auth.clone(),
                Outcome::Failed {
                    reason: "PodsNotReady".into(),
                    message: "0/1 pods ready after 10m".into(),
                    rolled_back: false,
                },
            ),
            (legacy.clone(), Outcome::UpToDate),
        ];
        let input = StatusInput {
            generation: Some(3),
            spec: &spec,
            previous: None,
            selected: 3,
            overrides: &[],
            agents: &agents,
            outcomes: &outcomes,
            problems: &[],
            collector: None,
            injection: Injection::Admission,
            now: time(1),
        };
        let s = compute(&input);
        let a = &s.workloads.agents;
        assert_eq!(
            (a.nodejs, a.java, a.python, a.dotnet, a.skipped),
            (1, 1, 0, 0, 1)
        );
        assert_eq!(s.agents_skipped.len(), 1);
        let skip = &s.agents_skipped[0];
        assert_eq!(
            (
                skip.name.as_str(),
                skip.container.as_str(),
                skip.reason.as_str()
            ),
            ("legacy", "app", "SdkPresent")
        );
        assert!(
            skip.message.contains("OTEL_SERVICE_NAME"),
            "{}",
            skip.message
        );
        let failure = &s.failures[0];
        assert_eq!(failure.name, "auth");
        assert!(
            failure.message.starts_with(
                "0/1 pods ready after 10m; the java agent is removed from this workload only"
            ),
            "{}",
            failure.message
        );
        // Once rolled back, auth's pods run without the agent: not counted.
        let mut rolled = outcomes.clone();
        rolled[1].1 = Outcome::Failed {
            reason: "PodsNotReady".into(),
            message: "0/1 pods ready after 10m; rolled back".into(),
            rolled_back: true,
        };
        let s = compute(&StatusInput {
            outcomes: &rolled,
            ..input
        });
        assert_eq!((s.workloads.agents.nodejs, s.workloads.agents.java), (1, 0));
        // Without agents nothing is added to status.
        let plain = status_of(&spec, None, &outcomes, &[], 1);
        assert!(plain.workloads.agents.is_zero());
        assert!(plain.agents_skipped.is_empty());
        assert_eq!(plain.failures[0].message, "0/1 pods ready after 10m");
    }
}
