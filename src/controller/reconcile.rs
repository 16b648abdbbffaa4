//! One policy's reconcile, as one pipeline:
//!
//! 1. **snapshot**: the policies, namespaces and the workloads that changed
//!    since the last reconcile (all of them when the basis changed);
//! 2. **plan** (pure, `crate::plan`): decisions per workload, kept in the
//!    policy's index; the collectors (with the Secrets they read); the rollout
//!    step of every workload. When the last reconcile settled ([`Settled`]) and
//!    the changed workloads moved no entry of the index, the reconcile ends
//!    here: nothing it would do differs from what the last one did;
//! 3. **apply**: the writes the steps call for, through the one rate-limited
//!    writer, at most [`WRITE_BUDGET`] of them per reconcile (the rest follow
//!    at once in the next one, so status shows progress while a large rollout runs);
//! 4. **status** (pure, `plan::status`): one status write when it changed, and
//!    the Events that announce what changed. A change that is only progress
//!    (counts and messages, no condition turning) is written at most once per
//!    [`PROGRESS_INTERVAL`], so a rollout of thousands of workloads shows its
//!    count climbing at a bounded cost; the metrics follow every reconcile.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::writer::{WriteError, workload_reference};
use super::{Context, Error, PolicyState, collector, policy_reference, report, verify};
use crate::api::{INJECTION_ANNOTATION, Mode, PlannedChange, TracingPolicy, TracingPolicyStatus};
use crate::plan::index::{Basis, Indexed};
use crate::plan::rollout::{self, RolloutStep};
use crate::plan::status::{self, Outcome, Overrides, PlannedEvent, Problem};
use crate::plan::{
    Injection, PlannedValue, Planner, PolicyView, Snapshot, WorkloadId, injection, precedence,
};

/// How often a converged policy is re-checked even without events (a resync that
/// must, and does, issue no writes).
const RESYNC: Duration = Duration::from_secs(300);
/// While workloads roll out, how often their progress is re-read even if no
/// watch event arrives (watch events normally come first).
const ROLLOUT_POLL: Duration = Duration::from_secs(30);
/// A policy whose collector reads Secrets looks again this often: Secrets are
/// not watched, and a rotated one must reach the collector.
const SECRETS_POLL: Duration = Duration::from_secs(60);
/// How long one reconcile keeps issuing workload writes before it writes status
/// and hands over to the next reconcile.
pub const WRITE_BUDGET: Duration = Duration::from_secs(5);
/// At most one status write per this interval when only the progress changed
/// (`status.workloads` counts, condition messages); any other change is
/// written at once.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// The policy as planning sees it.
pub fn policy_view(policy: &TracingPolicy) -> PolicyView {
    PolicyView {
        name: policy.name_any(),
        spec: policy.spec.clone(),
        created_unix: policy
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |t| t.0.as_second()),
        deleting: policy.metadata.deletion_timestamp.is_some(),
    }
}

/// Every readable policy, with `me` (the object this reconcile was handed,
/// which the cache may lag) in place of its cached copy.
fn policy_views(ctx: &Context, me: &PolicyView) -> Vec<PolicyView> {
    let mut views: Vec<PolicyView> = ctx
        .policies
        .state()
        .iter()
        .filter_map(|p| p.0.as_ref().ok())
        .map(policy_view)
        .filter(|p| p.name != me.name)
        .collect();
    views.push(me.clone());
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

/// What precedence depends on, over every policy: a change re-plans them all.
fn fingerprint(policies: &[PolicyView], generations: &BTreeMap<String, i64>) -> u64 {
    let mut h = DefaultHasher::new();
    for p in policies {
        (&p.name, generations.get(&p.name), p.deleting).hash(&mut h);
    }
    h.finish()
}

pub(super) async fn reconcile_policy(
    policy: &TracingPolicy,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let name = policy.name_any();

    // ---- 1. snapshot
    let me = policy_view(policy);
    let policies = policy_views(ctx, &me);
    let mut generations: BTreeMap<String, i64> = ctx
        .policies
        .state()
        .iter()
        .map(|p| (p.name_any(), p.meta().generation.unwrap_or(0)))
        .collect();
    generations.insert(name.clone(), policy.metadata.generation.unwrap_or(0));
    let policies_print = fingerprint(&policies, &generations);
    if ctx.policies_seen.swap(policies_print, Ordering::Relaxed) != policies_print {
        // Precedence may have moved for every policy.
        ctx.cache.trigger_all();
    }
    let namespaces = ctx.cache.namespace_views();
    let basis = Basis {
        generation: policy.metadata.generation.unwrap_or(0),
        policies: policies_print,
        namespaces: ctx.cache.namespace_epoch(),
        injection: ctx.injection,
    };
    let snapshot = Snapshot {
        operator_namespace: &ctx.settings.operator_namespace,
        namespaces: &namespaces,
        workloads: &[],
        policies: &policies,
        injection: ctx.injection,
    };
    let ownership = precedence::Ownership::new(&policies, &namespaces, snapshot.operator_namespace);
    let planner = match Planner::new(&me, &snapshot, &ownership) {
        Ok(planner) => planner,
        Err(error) => {
            // Nothing is written to any workload while the policy cannot be planned.
            let problems = [Problem {
                reason: "InvalidSelector",
                message: error.to_string(),
            }];
            let status = write_status(
                ctx,
                policy,
                policy.status.as_ref(),
                0,
                &[],
                &[],
                &[],
                &problems,
                None,
            )
            .await?;
            let report = report::policy_report(&status, &problems, None, None);
            ctx.metrics.set_policy(&name, &report);
            return Ok(Action::requeue(RESYNC));
        }
    };

    // A policy outside the operator's collector settings gets no collector and
    // touches no workload (plan::guard); it reports why, naming each field.
    if let Some(problem) = collector::not_allowed(&policy.spec, &ctx.settings) {
        let status = write_status(
            ctx,
            policy,
            policy.status.as_ref(),
            0,
            &[],
            &[],
            &[],
            std::slice::from_ref(&problem),
            None,
        )
        .await?;
        let events = status::status_events(&name, policy.status.as_ref(), &status);
        publish(ctx, policy, events).await;
        let report = report::policy_report(&status, &[problem], None, None);
        ctx.metrics.set_policy(&name, &report);
        return Ok(Action::requeue(RESYNC));
    }

    // ---- 2. plan
    let state = ctx.state(&name);
    let mut state = state.lock().await;
    let writes_before = ctx.metrics.api_writes_total();
    let seen = Seen {
        resource_version: policy.metadata.resource_version.clone(),
        basis: basis.clone(),
        collector_changes: ctx.collector_changes.load(Ordering::Relaxed),
    };
    let settled = state
        .settled
        .take()
        .filter(|s| s.seen == seen && Instant::now() < s.due);
    let dirty = ctx.cache.take_dirty(&name);
    let changed: Vec<(WorkloadId, Option<Arc<crate::workload::Workload>>)> = dirty
        .into_iter()
        .map(|id| {
            let live = ctx.cache.get(&id);
            (id, live)
        })
        .collect();
    let mut retry = false;
    for (id, _) in &changed {
        // A refused workload that changed is tried again.
        retry |= state.rejected.remove(id).is_some();
    }
    let updated = state
        .index
        .update(&planner, basis, changed, || ctx.cache.workloads());
    tracing::debug!(policy = %name, full = updated.full, planned = updated.planned, moved = updated.moved, "planned");
    if let Some(settled) = settled
        && !updated.full
        && updated.moved == 0
        && !retry
    {
        // Nothing the last reconcile read has moved, so what it did (no write)
        // and what it wrote to status stand; its requeue is kept.
        let due = settled.due;
        state.settled = Some(settled);
        ctx.metrics.set_watched_workloads(ctx.cache.len());
        return Ok(Action::requeue(
            due.saturating_duration_since(Instant::now()),
        ));
    }

    let selected_namespaces = planner.selected_namespaces();
    let mut problems = Vec::new();
    if selected_namespaces.is_empty() {
        problems.push(Problem {
            reason: "NoNamespaceMatched",
            message: "spec.selector matches no namespace: no workload is instrumented".into(),
        });
    }
    // Collectors first; workloads whose collector cannot serve them are left as they are.
    let mut collectors = collector::reconcile(ctx, policy, &selected_namespaces).await;
    if let Some(status) = collectors.status.as_mut() {
        let tiers = crate::plan::collector::collector_tiers(
            &policy.spec,
            &ctx.settings.operator_namespace,
            &selected_namespaces,
        );
        status.losses = ctx
            .collector_losses
            .losses(&ctx.client, &ctx.cache, &name, tiers);
    }
    problems.extend(collectors.problems.iter().cloned());
    problems.extend(injection_problems(&state));

    let now = Timestamp::now();
    let held = |id: &WorkloadId| !collectors.serving.contains(&*id.namespace);
    let held_as = |id: &WorkloadId| match collectors.waiting.get(&*id.namespace) {
        Some(message) => Outcome::WaitingForCollector {
            message: message.clone(),
        },
        None => held_outcome(id),
    };
    let rollout = match rollout::plan_rollout(
        &policy.spec.rollout,
        now,
        state.index.rollouts().filter(|r| !held(&r.id)),
    ) {
        Ok(plan) => Some(plan),
        Err(error) => {
            // Nothing is written to any workload while the rollout cannot be paced.
            problems.push(Problem {
                reason: "InvalidRollout",
                message: error.to_string(),
            });
            None
        }
    };

    // ---- 3. apply
    let applied = match (policy.spec.mode, &rollout) {
        (Mode::DryRun, _) => dry_run(&state, &planner),
        (Mode::Enforce, Some(rollout)) => {
            enforce(ctx, &name, &planner, &mut state, rollout, now, started).await
        }
        (Mode::Enforce, None) => Applied::default(),
    };

    // ---- 4. status
    let mut outcomes = applied.outcomes;
    let mut selected = 0;
    let mut overrides = Vec::new();
    let mut agents = Vec::new();
    for (id, entry) in state.index.entries() {
        if let Indexed::Apply {
            overrides: o,
            agent,
            ..
        } = &entry.decision
        {
            selected += 1;
            overrides.extend(o.iter().map(|(container, variables)| Overrides {
                id,
                container,
                variables,
            }));
            if !agent.is_empty() {
                agents.push((id, agent));
            }
            if held(id) {
                outcomes.push((id.clone(), held_as(id)));
            }
        }
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    let computed = compute_status(
        ctx,
        policy,
        selected,
        &overrides,
        &agents,
        &outcomes,
        &problems,
        collectors.status.clone(),
    );
    let mut written = state.status_written;
    let (new_status, progress_due) =
        write_paced_status(ctx, policy, computed, &mut written).await?;
    state.status_written = written;
    let mut events = status::status_events(&name, policy.status.as_ref(), &new_status);
    events.extend(status::deprecation_events(
        &policy.spec,
        policy.metadata.generation,
        policy.status.as_ref(),
    ));
    events.extend(status::batch_event(
        "TracingApplied",
        "set",
        &applied.started,
    ));
    events.extend(status::batch_event(
        "TracingRemoved",
        "removed",
        &applied.removed,
    ));
    publish(ctx, policy, events).await;
    let replicas = report::collector_replicas(ctx, policy, &selected_namespaces);
    let report = report::policy_report(&new_status, &problems, rollout.as_ref(), replicas);
    ctx.metrics.set_policy(&name, &report);
    ctx.metrics.set_watched_workloads(ctx.cache.len());

    if let Some(message) = applied.transient_failure {
        return Err(Error::Writes {
            policy: name,
            message,
        });
    }
    // Workload and collector changes arrive through the watches; the requeue only
    // covers what no watch reports: a deadline passing, a Secret, a lost event.
    let mut next = RESYNC;
    if applied.more {
        next = Duration::from_millis(100);
    }
    if let Some(due) = progress_due {
        next = next.min(due);
    }
    if let Some(rollout) = &rollout {
        if rollout.counts.rolling_out > 0 || rollout.counts.waiting > 0 {
            next = next.min(ROLLOUT_POLL);
        }
        if let Some(at) = rollout.requeue_after(now) {
            next = next.min(at.max(Duration::from_secs(1)));
        }
    }
    if policy.spec.collector.enabled {
        // What the collectors lost is read from their pods; no watch reports it.
        next = next.min(crate::controller::collector_losses::READ_EVERY);
    }
    if !collector_secrets(policy).is_empty() {
        next = next.min(SECRETS_POLL);
    }
    let next = collectors.requeue_after().map_or(next, |r| r.min(next));
    // Settled: nothing was written (by any reconcile meanwhile, to be safe), no
    // write or status is pending.
    let quiet =
        ctx.metrics.api_writes_total() == writes_before && !applied.more && progress_due.is_none();
    state.settled = quiet.then(|| Settled {
        seen,
        due: Instant::now() + next,
    });
    Ok(Action::requeue(next))
}

/// What a reconcile reads besides the workloads and the clock.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Seen {
    /// The policy object's (spec, metadata and status alike).
    resource_version: Option<String>,
    /// Its spec's generation, every policy's precedence, namespace labels.
    basis: Basis,
    /// [`super::Context::collector_changes`].
    collector_changes: u64,
}

/// A reconcile that wrote nothing and left nothing pending, and when it asked
/// to come back (the nearest deadline, poll or resync). Until then, while what
/// it [`Seen`] is unchanged, a reconcile whose changed workloads move no entry
/// of the index (a label no selector reads, say) would do what it did: nothing.
/// So it ends once those workloads are re-planned, at a cost that does not grow
/// with the policy's size.
#[derive(Clone, Debug)]
pub(super) struct Settled {
    seen: Seen,
    due: Instant,
}

fn collector_secrets(policy: &TracingPolicy) -> Vec<crate::plan::collector::ReferencedSecret> {
    if policy.spec.collector.enabled {
        crate::plan::collector::referenced_secrets(&policy.spec)
    } else {
        Vec::new()
    }
}

/// Workloads rolled out without the planned variables in their pods
/// (admission injection failed open), from the verdicts recorded on them.
fn injection_problems(state: &PolicyState) -> Vec<Problem> {
    let mut found = Vec::new();
    for (id, entry) in state.index.entries() {
        if let Indexed::Apply { rollout, .. } = &entry.decision
            && rollout.rolled_out.as_deref() == Some(rollout.planned_hash.as_str())
            && let Some(verdict) = entry.workload.annotations.get(INJECTION_ANNOTATION)
            && verdict != verify::VERIFIED
        {
            found.push(format!("{id}: {verdict}"));
        }
    }
    if found.is_empty() {
        return Vec::new();
    }
    let count = found.len();
    found.truncate(collector::MAX_PROBLEMS);
    let mut message = format!(
        "admission did not add the planned variables to {count} workload(s); the MutatingAdmissionPolicy {} failed open: {}",
        injection::ADMISSION_POLICY_NAME,
        found.join("; ")
    );
    if count > collector::MAX_PROBLEMS {
        message.push_str(&format!(" and {} more", count - collector::MAX_PROBLEMS));
    }
    vec![Problem {
        reason: "InjectionNotApplied",
        message,
    }]
}

fn held_outcome(id: &WorkloadId) -> Outcome {
    Outcome::Held {
        reason: format!(
            "a collector the workloads in namespace {} send through cannot serve (see the Degraded condition)",
            id.namespace
        ),
    }
}

/// What the apply phase did.
#[derive(Default)]
struct Applied {
    outcomes: Vec<(WorkloadId, Outcome)>,
    /// Workloads that got the settings in this reconcile (for one Event).
    started: Vec<WorkloadId>,
    /// Workloads whose settings were removed.
    removed: Vec<WorkloadId>,
    /// The write budget ran out: the next reconcile goes on at once.
    more: bool,
    /// A write failed in a way that retrying may fix.
    transient_failure: Option<String>,
}

/// DryRun: what Enforce would change, writing nothing.
fn dry_run(state: &PolicyState, planner: &Planner<'_>) -> Applied {
    let mut outcomes = Vec::new();
    for (id, entry) in state.index.entries() {
        let change = |action: &str, containers: Vec<String>| {
            Outcome::WouldChange(PlannedChange {
                kind: id.kind.to_string(),
                namespace: id.namespace.to_string(),
                name: id.name.to_string(),
                action: action.into(),
                containers,
            })
        };
        let outcome = match &entry.decision {
            Indexed::Apply { rollout, .. } if rollout.applied => Outcome::UpToDate,
            Indexed::Apply { .. } => {
                let containers = state
                    .index
                    .plan_of(planner, id)
                    .map(|p| {
                        p.containers
                            .iter()
                            .map(|c| {
                                let vars: Vec<String> = p
                                    .vars
                                    .iter()
                                    .filter(|v| !c.user_overrides.contains(&v.name))
                                    .map(|v| match &v.value {
                                        PlannedValue::Field(_) => {
                                            format!("{}=(from field)", v.name)
                                        }
                                        PlannedValue::Literal(s)
                                        | PlannedValue::Attributes(s)
                                        | PlannedValue::Versioned(s) => format!("{}={s}", v.name),
                                    })
                                    .collect();
                                let agent = p
                                    .agent
                                    .plan
                                    .as_ref()
                                    .filter(|a| a.containers.contains(&c.name))
                                    .map(|a| format!("; {} agent", a.language))
                                    .unwrap_or_default();
                                format!("{}: {}{agent}", c.name, vars.join(", "))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                change("Apply", containers)
            }
            Indexed::Remove if !injection::is_clean(&entry.workload) => {
                change("Remove", Vec::new())
            }
            Indexed::Remove => Outcome::Unchanged,
            Indexed::Conflicted { winner } => Outcome::Conflicted {
                winner: winner.clone(),
            },
        };
        outcomes.push((id.clone(), outcome));
    }
    Applied {
        outcomes,
        ..Applied::default()
    }
}

/// One write the rollout calls for.
enum Write {
    Plan {
        id: WorkloadId,
        annotations: BTreeMap<String, String>,
        /// The step starts the settings (for the TracingApplied Event).
        starts: bool,
        /// Check a pod first and record the verdict (admission `Record`).
        verify: bool,
    },
    Rollback {
        id: WorkloadId,
        annotations: BTreeMap<String, String>,
    },
    Remove {
        id: WorkloadId,
    },
    /// Check a pod again of a rolled-out workload recorded as missing the plan,
    /// and record the verdict only if it changed: once admission is restored
    /// and the workload restarted, its pods carry the plan and the policy must
    /// not stay `Degraded` on a verdict about a pod that is gone.
    Recheck {
        id: WorkloadId,
        annotations: BTreeMap<String, String>,
        recorded: String,
    },
}

/// Carries out the rollout: the writes its steps call for (within the write
/// budget), removals for workloads that left the policy, nothing for the
/// conflicted ones; and the outcome of every workload for status.
async fn enforce(
    ctx: &Arc<Context>,
    policy: &str,
    planner: &Planner<'_>,
    state: &mut PolicyState,
    rollout: &rollout::RolloutPlan,
    now: Timestamp,
    started: Instant,
) -> Applied {
    let paused_by = rollout.paused_by.as_ref().map(ToString::to_string);
    let mut applied = Applied::default();
    let mut writes: Vec<(Write, Outcome)> = Vec::new();
    for s in &rollout.steps {
        let Some(entry) = state.index.get(&s.id) else {
            continue;
        };
        let hash = match &entry.decision {
            Indexed::Apply { rollout, .. } => rollout.planned_hash.clone(),
            _ => continue,
        };
        if let Some((rejected_hash, message)) = state.rejected.get(&s.id)
            && *rejected_hash == hash
            && s.step.writes()
        {
            applied.outcomes.push((
                s.id.clone(),
                Outcome::Failed {
                    reason: rollout::REASON_APPLY_REJECTED.into(),
                    message: message.clone(),
                    rolled_back: false,
                },
            ));
            continue;
        }
        let outcome = match step_outcome(&s.step, paused_by.clone()) {
            Outcome::UpToDate => rollout::pods_left_behind(&s.id, &entry.workload.rollout)
                .map_or(Outcome::UpToDate, |message| Outcome::PodsLeftBehind {
                    message,
                }),
            other => other,
        };
        let live_applied_at = entry
            .workload
            .annotations
            .get(crate::api::APPLIED_AT_ANNOTATION)
            .cloned();
        let write = match &s.step {
            RolloutStep::Start { .. } | RolloutStep::Restamp => Some(Write::Plan {
                id: s.id.clone(),
                annotations: rollout::applied_annotations(policy, &hash, now),
                starts: matches!(s.step, RolloutStep::Start { .. }),
                verify: false,
            }),
            RolloutStep::Record => Some(Write::Plan {
                id: s.id.clone(),
                annotations: rollout::recorded_annotations(
                    policy,
                    &hash,
                    live_applied_at.as_deref(),
                    None,
                ),
                starts: false,
                verify: ctx.injection == Injection::Admission,
            }),
            RolloutStep::OwnerPaused { release: true } => Some(Write::Plan {
                id: s.id.clone(),
                annotations: rollout::released_annotations(policy, &hash),
                starts: false,
                verify: false,
            }),
            RolloutStep::UpToDate if ctx.injection == Injection::Admission => entry
                .workload
                .annotations
                .get(INJECTION_ANNOTATION)
                .filter(|verdict| *verdict != verify::VERIFIED)
                .map(|recorded| Write::Recheck {
                    id: s.id.clone(),
                    annotations: rollout::recorded_annotations(
                        policy,
                        &hash,
                        live_applied_at.as_deref(),
                        None,
                    ),
                    recorded: recorded.clone(),
                }),
            RolloutStep::RollBack { reason, message } => Some(Write::Rollback {
                id: s.id.clone(),
                annotations: rollout::rollback_annotations(policy, &hash, reason, message, now),
            }),
            _ => None,
        };
        match write {
            Some(w) => writes.push((w, outcome)),
            None => applied.outcomes.push((s.id.clone(), outcome)),
        }
    }
    for (id, entry) in state.index.entries() {
        match &entry.decision {
            Indexed::Remove if !injection::is_clean(&entry.workload) => {
                writes.push((Write::Remove { id: id.clone() }, Outcome::Unchanged))
            }
            Indexed::Conflicted { winner } => applied.outcomes.push((
                id.clone(),
                Outcome::Conflicted {
                    winner: winner.clone(),
                },
            )),
            _ => {}
        }
    }

    let index = &state.index;
    let results: Vec<(WorkloadId, Outcome, Option<WriteResult>)> = stream::iter(writes)
        .map(|(write, outcome)| async move {
            if started.elapsed() >= WRITE_BUDGET {
                return skipped(write, outcome);
            }
            perform(ctx, policy, planner, index, write, outcome).await
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        // Boxed so the Send check sees concrete lifetimes (rust-lang/rust#110338).
        .boxed()
        .collect()
        .await;
    for (id, outcome, result) in results {
        match result {
            Some(WriteResult::Started) => applied.started.push(id.clone()),
            Some(WriteResult::Removed) => applied.removed.push(id.clone()),
            Some(WriteResult::Skipped) => applied.more = true,
            Some(WriteResult::Rejected { hash, message }) => {
                state.rejected.insert(id.clone(), (hash, message));
            }
            Some(WriteResult::Transient(message)) => {
                applied.transient_failure.get_or_insert(message);
            }
            Some(WriteResult::Done) | None => {}
        }
        if !matches!(outcome, Outcome::Unchanged) {
            applied.outcomes.push((id, outcome));
        }
    }
    applied.started.sort();
    applied.removed.sort();
    applied
}

enum WriteResult {
    Done,
    Started,
    Removed,
    /// Not attempted: the write budget ran out.
    Skipped,
    Rejected {
        hash: String,
        message: String,
    },
    Transient(String),
}

/// A pod of `wid` could not be read to check admission: the write waits for a retry.
fn pod_check_failed(wid: &WorkloadId, error: &kube::Error) -> WriteResult {
    WriteResult::Transient(format!("checking a pod of {wid}: {error}"))
}

fn write_id(write: &Write) -> &WorkloadId {
    match write {
        Write::Plan { id, .. }
        | Write::Rollback { id, .. }
        | Write::Remove { id }
        | Write::Recheck { id, .. } => id,
    }
}

/// A write left for the next reconcile: a start that did not happen yet is queued.
fn skipped(write: Write, outcome: Outcome) -> (WorkloadId, Outcome, Option<WriteResult>) {
    let outcome = match (&write, outcome) {
        (Write::Plan { starts: true, .. }, _) => Outcome::Queued,
        (_, o) => o,
    };
    (
        write_id(&write).clone(),
        outcome,
        Some(WriteResult::Skipped),
    )
}

async fn perform(
    ctx: &Arc<Context>,
    policy: &str,
    planner: &Planner<'_>,
    index: &crate::plan::index::PolicyIndex,
    write: Write,
    outcome: Outcome,
) -> (WorkloadId, Outcome, Option<WriteResult>) {
    let id = write_id(&write).clone();
    let live = index.get(&id).map(|e| e.workload.clone());
    let (body, hash, result_ok) = match write {
        Write::Plan {
            id: ref wid,
            mut annotations,
            starts,
            verify,
        } => {
            let Some(plan) = index.plan_of(planner, wid) else {
                return (id, outcome, None);
            };
            if verify {
                match verify::check(&ctx.client, wid, &plan).await {
                    Ok(Some(verdict)) => {
                        if verdict != verify::VERIFIED {
                            warn!(workload = %wid, %policy, %verdict, "admission did not inject the planned variables");
                        }
                        annotations.insert(INJECTION_ANNOTATION.to_string(), verdict);
                    }
                    Ok(None) => {}
                    Err(error) => return (id, outcome, Some(pod_check_failed(wid, &error))),
                }
            }
            let body =
                injection::apply_body(ctx.injection, wid, &plan, live.as_deref(), &annotations);
            let ok = if starts {
                WriteResult::Started
            } else {
                WriteResult::Done
            };
            (body, plan.config_hash, ok)
        }
        Write::Rollback {
            id: ref wid,
            ref annotations,
        } => {
            let hash = annotations
                .get(crate::api::ROLLOUT_FAILED_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            (
                injection::annotations_body(wid, annotations),
                hash,
                WriteResult::Done,
            )
        }
        Write::Remove { id: ref wid } => (
            injection::removal_body(wid),
            String::new(),
            WriteResult::Removed,
        ),
        Write::Recheck {
            id: ref wid,
            mut annotations,
            recorded,
        } => {
            let Some(plan) = index.plan_of(planner, wid) else {
                return (id, outcome, None);
            };
            match verify::check(&ctx.client, wid, &plan).await {
                Ok(Some(verdict)) if verdict != recorded => {
                    info!(workload = %wid, %policy, %verdict, "checked a pod again");
                    annotations.insert(INJECTION_ANNOTATION.to_string(), verdict);
                }
                Ok(_) => return (id, outcome, Some(WriteResult::Done)),
                Err(error) => return (id, outcome, Some(pod_check_failed(wid, &error))),
            }
            let body =
                injection::apply_body(ctx.injection, wid, &plan, live.as_deref(), &annotations);
            (body, plan.config_hash, WriteResult::Done)
        }
    };
    match ctx.writer.apply_workload(&id, &body).await {
        Ok(stored) => {
            match serde_json::to_value(&stored).map(|v| id.kind.info().project(v)) {
                Ok(Ok(w)) => ctx.cache.written(w),
                Ok(Err(e)) | Err(e) => {
                    warn!(workload = %id, error = %e, "cannot read the stored workload back; the watch will bring it")
                }
            }
            if matches!(result_ok, WriteResult::Started) {
                info!(workload = %id, %policy, %hash, "applied tracing settings");
            }
            (id, outcome, Some(result_ok))
        }
        Err(error) if error.is_not_found() => (id, outcome, Some(WriteResult::Done)),
        Err(error) if error.is_permanent() => {
            warn!(workload = %id, %policy, "apply rejected: {error}");
            let message = format!("apply rejected: {error}");
            let reason = if hash.is_empty() {
                "RemoveRejected"
            } else {
                rollout::REASON_APPLY_REJECTED
            };
            (
                id,
                Outcome::Failed {
                    reason: reason.into(),
                    message: message.clone(),
                    rolled_back: false,
                },
                Some(WriteResult::Rejected { hash, message }),
            )
        }
        Err(error) => {
            let message = format!("writing {id}: {error}");
            (id, outcome, Some(WriteResult::Transient(message)))
        }
    }
}

/// What a rollout step amounts to in status, once its write (if any) succeeded.
fn step_outcome(step: &RolloutStep, paused_by: Option<String>) -> Outcome {
    match step {
        RolloutStep::UpToDate | RolloutStep::Record => Outcome::UpToDate,
        RolloutStep::Unavailable { message } => Outcome::Unavailable {
            message: message.clone(),
        },
        RolloutStep::RollingOut { .. } | RolloutStep::Start { .. } | RolloutStep::Restamp => {
            Outcome::RollingOut
        }
        RolloutStep::Queued => Outcome::Queued,
        RolloutStep::Paused => Outcome::Paused {
            by: paused_by.unwrap_or_else(|| "a workload".to_string()),
        },
        RolloutStep::OwnerPaused { .. } => Outcome::WaitingForOwner {
            message: "paused by its owner (spec.paused); tracing continues once it is resumed"
                .into(),
        },
        RolloutStep::WaitingForWorkload { message } => Outcome::WaitingForOwner {
            message: message.clone(),
        },
        RolloutStep::Failed { reason, message } => Outcome::Failed {
            reason: (*reason).to_string(),
            message: message.clone(),
            rolled_back: false,
        },
        RolloutStep::RolledBack { reason, message } => Outcome::Failed {
            reason: (*reason).to_string(),
            message: message.clone(),
            rolled_back: true,
        },
        RolloutStep::RollBack { reason, message } => Outcome::Failed {
            reason: (*reason).to_string(),
            message: rollout::rolled_back_message(message),
            rolled_back: true,
        },
    }
}

/// The status of this reconcile (pure: `plan::status::compute`).
#[allow(clippy::too_many_arguments)]
fn compute_status(
    ctx: &Context,
    policy: &TracingPolicy,
    selected: i32,
    overrides: &[Overrides<'_>],
    agents: &[(&WorkloadId, &crate::plan::agents::AgentSummary)],
    outcomes: &[(WorkloadId, Outcome)],
    problems: &[Problem],
    collector: Option<crate::api::CollectorStatus>,
) -> TracingPolicyStatus {
    status::compute(&status::StatusInput {
        generation: policy.metadata.generation,
        spec: &policy.spec,
        previous: policy.status.as_ref(),
        selected,
        overrides,
        agents,
        outcomes,
        problems,
        collector,
        injection: ctx.injection,
        now: Time(Timestamp::now()),
    })
}

/// Writes `new` unless the stored status equals it, or differs only in
/// progress and the last write was less than [`PROGRESS_INTERVAL`] ago: then
/// it returns how long until the write is due (the reconcile comes back by
/// then, so the latest progress is never left unwritten). Returns the status
/// as this reconcile computed it either way.
async fn write_paced_status(
    ctx: &Context,
    policy: &TracingPolicy,
    new: TracingPolicyStatus,
    written: &mut Option<Instant>,
) -> Result<(TracingPolicyStatus, Option<Duration>), Error> {
    let previous = policy.status.as_ref();
    if previous == Some(&new) {
        return Ok((new, None));
    }
    let since = written.map(|t| t.elapsed());
    if let (Some(previous), Some(since)) = (previous, since)
        && since < PROGRESS_INTERVAL
        && status::only_progress(previous, &new)
    {
        return Ok((new, Some(PROGRESS_INTERVAL - since)));
    }
    store_status(ctx, policy, &new).await?;
    *written = Some(Instant::now());
    Ok((new, None))
}

/// Writes the status computed from this reconcile unless it equals `previous`;
/// returns the status the policy now carries.
#[allow(clippy::too_many_arguments)]
async fn write_status(
    ctx: &Context,
    policy: &TracingPolicy,
    previous: Option<&TracingPolicyStatus>,
    selected: i32,
    overrides: &[Overrides<'_>],
    agents: &[(&WorkloadId, &crate::plan::agents::AgentSummary)],
    outcomes: &[(WorkloadId, Outcome)],
    problems: &[Problem],
    collector: Option<crate::api::CollectorStatus>,
) -> Result<TracingPolicyStatus, Error> {
    let new = status::compute(&status::StatusInput {
        generation: policy.metadata.generation,
        spec: &policy.spec,
        previous,
        selected,
        overrides,
        agents,
        outcomes,
        problems,
        collector,
        injection: ctx.injection,
        now: Time(Timestamp::now()),
    });
    if previous == Some(&new) {
        return Ok(new);
    }
    store_status(ctx, policy, &new).await?;
    Ok(new)
}

async fn store_status(
    ctx: &Context,
    policy: &TracingPolicy,
    new: &TracingPolicyStatus,
) -> Result<(), Error> {
    let name = policy.name_any();
    let body = serde_json::to_value(new).map_err(|e| Error::StatusWrite {
        policy: name.clone(),
        source: WriteError::Api(kube::Error::SerdeError(e)),
    })?;
    ctx.writer
        .patch_status(&name, &body)
        .await
        .map_err(|source| Error::StatusWrite {
            policy: name.clone(),
            source,
        })
}

async fn publish(ctx: &Context, policy: &TracingPolicy, events: Vec<PlannedEvent>) {
    let on_policy = policy_reference(policy);
    for e in events {
        let reference = match &e.workload {
            Some(id) => workload_reference(id),
            None => on_policy.clone(),
        };
        ctx.writer
            .event(&reference, e.warning, e.reason, e.note)
            .await;
    }
}

/// Removes the settings of policy `name` from every workload that carries them
/// (the policy is being deleted); returns how many there were.
pub(super) async fn remove_all_of(ctx: &Arc<Context>, name: &str) -> Result<usize, Error> {
    let owned: Vec<WorkloadId> = ctx
        .cache
        .owned_by(name)
        .iter()
        .map(|w| w.id.clone())
        .collect();
    let results: Vec<Result<(), Error>> = stream::iter(owned.iter())
        .map(|id| async move {
            ctx.writer
                .apply_workload(id, &injection::removal_body(id))
                .await
                .map(drop)
                .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
                .map_err(|source| Error::Cleanup {
                    workload: id.to_string(),
                    source,
                })
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        .boxed()
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    if let Some(event) = status::batch_event("TracingRemoved", "removed", &owned) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("tracing.caas.io/v1alpha1".into()),
            kind: Some("TracingPolicy".into()),
            name: Some(name.to_string()),
            ..Default::default()
        };
        ctx.writer
            .event(&reference, false, event.reason, event.note)
            .await;
    }
    Ok(owned.len())
}
