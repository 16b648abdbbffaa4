//! The reconciler: watch -> snapshot -> plan -> apply -> status.
//!
//! One reconcile handles one TracingPolicy against the cached cluster. Any
//! change to a namespace or workload triggers every policy (there are few
//! policies and planning is in memory); the controller's queue deduplicates and
//! debounces them. Deleting a policy runs the finalizer's cleanup, which removes
//! exactly what the operator added to each workload the policy owned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, future::BoxFuture, stream};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject};
use kube::api::{Patch, PatchParams};
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{
    FIELD_MANAGER, FINALIZER, Mode, POLICY_ANNOTATION, PlannedChange, TracingPolicy,
    TracingPolicyStatus,
};
use crate::plan::{self, PolicyView, Snapshot, WorkloadAction, WorkloadId, rollout};
use crate::runtime::metrics::Metrics;

pub mod apply;
pub mod cache;
pub mod collector;
pub mod status;

use cache::{Stores, Workload};
use status::{Outcome, Problem};

/// How often a converged policy is re-checked even without events (a resync that
/// must, and does, issue no writes).
const RESYNC: Duration = Duration::from_secs(300);
/// While workloads are rolling out, how often their progress is re-read.
const ROLLOUT_POLL: Duration = Duration::from_secs(5);

/// Settings of the controller, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's namespace: never instrumented; default collector namespace.
    pub operator_namespace: String,
    /// Policies reconciled at once.
    pub concurrency: u16,
    /// Workload writes in flight at once within one reconcile.
    pub write_concurrency: usize,
    /// Client-side limit on mutating API calls per second, and its burst.
    pub qps: u32,
    pub burst: u32,
    /// Identity of this replica in Events.
    pub instance: Option<String>,
    /// Where collectors may run, from which images, sending where. The default
    /// here is [`plan::guard::CollectorGuard::unrestricted`], what tests and
    /// embedders start from; `tracing-operator run` sets it from its flags, whose
    /// defaults restrict ([`plan::guard::CollectorGuard::default`]).
    pub collector_guard: plan::guard::CollectorGuard,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            operator_namespace: "tracing-operator".into(),
            concurrency: 4,
            write_concurrency: 8,
            qps: 20,
            burst: 40,
            instance: None,
            collector_guard: plan::guard::CollectorGuard::unrestricted(),
        }
    }
}

type RateLimiter = governor::DefaultDirectRateLimiter;

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub stores: Stores,
    pub policies: Store<GuardedPolicy>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub limiter: RateLimiter,
}

/// Every way a reconcile can fail, each naming what failed on which object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("caches stopped before they were ready")]
    CacheNotReady,
    #[error("writing status of TracingPolicy {policy}: {}", apply::short_message(.source))]
    StatusWrite { policy: String, source: kube::Error },
    #[error("removing tracing from {workload}: {source}")]
    Cleanup {
        workload: String,
        source: apply::ApplyError,
    },
    #[error("finalizer of TracingPolicy {policy}: {message}")]
    Finalizer { policy: String, message: String },
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::CacheNotReady => "CacheNotReady",
            Error::StatusWrite { .. } => "StatusWrite",
            Error::Cleanup { .. } => "Cleanup",
            Error::Finalizer { .. } => "Finalizer",
        }
    }
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let wc = watcher::Config::default().any_semantic();
    let (ns_store, ns_writer) = reflector::store::<Namespace>();
    let namespaces = watcher(Api::<Namespace>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(cache::trim_namespace)
        .reflect(ns_writer)
        .applied_objects()
        .predicate_filter(predicates::labels, Default::default())
        .map(|_| ());
    let (deployments, deploy_store) = workload_trigger::<Deployment>(&client, &wc);
    let (statefulsets, sts_store) = workload_trigger::<StatefulSet>(&client, &wc);
    let (daemonsets, ds_store) = workload_trigger::<DaemonSet>(&client, &wc);
    let (collector_stores, collector_objects) = collector::watch(&client);
    let stores = Stores {
        namespaces: ns_store,
        deployments: deploy_store,
        statefulsets: sts_store,
        daemonsets: ds_store,
        collectors: collector_stores,
    };

    let policies_api = Api::<GuardedPolicy>::all(client.clone());
    let controller = Controller::new(policies_api, wc).with_config(
        ControllerConfig::default()
            .concurrency(settings.concurrency)
            .debounce(Duration::from_millis(500)),
    );
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: settings.instance.clone(),
            },
        ),
        limiter: governor::RateLimiter::direct(quota(settings.qps, settings.burst)),
        client,
        stores: stores.clone(),
        policies: controller.store(),
        settings,
        metrics,
    });

    let readiness = stores.clone();
    tokio::spawn(async move {
        if readiness.wait_until_ready().await.is_ok() {
            info!("caches synced");
            ready();
        }
    });

    let triggers = stream::select_all([
        namespaces.boxed(),
        deployments,
        statefulsets,
        daemonsets,
        collector_objects.boxed(),
    ]);
    controller
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                // A policy deleted while queued: nothing left to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                    tracing::debug!(%object, "policy gone before its reconcile");
                }
                Err(error) => warn!(%error, "reconcile failed"),
                Ok(_) => {}
            }
        })
        .await;
}

fn quota(qps: u32, burst: u32) -> governor::Quota {
    let qps = std::num::NonZeroU32::new(qps.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::Quota::per_second(qps).allow_burst(burst)
}

/// A trimmed, reflected watch of one workload kind, emitting `()` whenever a
/// workload changes in a way planning or rollout tracking can see.
fn workload_trigger<W>(
    client: &Client,
    wc: &watcher::Config,
) -> (futures::stream::BoxStream<'static, ()>, Store<W>)
where
    W: Workload + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let (store, writer) = reflector::store::<W>();
    let stream = watcher(Api::<W>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(cache::trim_workload::<W>)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(cache::content_hash::<W>, Default::default())
        .map(|_| ())
        .boxed();
    (stream, store)
}

/// A watched policy: the typed object, or one that does not deserialize (stored
/// under an older or looser schema). The guard keeps one such object from
/// stopping the watch, and so the reconciliation of every other policy.
type GuardedPolicy = DeserializeGuard<TracingPolicy>;

fn error_policy(policy: Arc<GuardedPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), %error, "reconcile failed; retrying");
    ctx.metrics.reconcile_error(error.metric_reason());
    Action::requeue(Duration::from_secs(10))
}

#[tracing::instrument(skip_all, err, fields(policy = %guarded.name_any()))]
async fn reconcile(guarded: Arc<GuardedPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    match &guarded.0 {
        Ok(policy) => reconcile_valid(Arc::new(policy.clone()), ctx).await,
        Err(invalid) => reconcile_invalid(invalid, &ctx).await,
    }
}

/// A policy the operator cannot read is reported (log, metric, Event) and left
/// alone; if it is being deleted, the settings it had added are still removed by
/// name, so a deletion never hangs on it.
async fn reconcile_invalid(invalid: &InvalidObject, ctx: &Arc<Context>) -> Result<Action, Error> {
    let meta = &invalid.metadata;
    let name = meta.name.clone().unwrap_or_default();
    warn!(policy = %name, error = %invalid.error, "cannot read TracingPolicy; it is ignored until it is fixed");
    ctx.metrics.reconcile_error("InvalidObject");
    let reference = ObjectReference {
        api_version: Some(format!("{}/{}", crate::api::GROUP, "v1alpha1")),
        kind: Some("TracingPolicy".into()),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        ..Default::default()
    };
    let ours = meta
        .finalizers
        .as_ref()
        .and_then(|f| f.iter().position(|f| f == FINALIZER));
    if let (Some(_), Some(index)) = (meta.deletion_timestamp.as_ref(), ours) {
        ctx.stores
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNotReady)?;
        remove_all_of(ctx, &name).await?;
        // Test-and-remove, so only our own finalizer entry goes.
        let patch = json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")}
        ]);
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(|e| Error::Finalizer {
                policy: name.clone(),
                message: e.to_string(),
            })?;
        let api: Api<DynamicObject> = Api::all_with(
            ctx.client.clone(),
            &ApiResource::erase::<TracingPolicy>(&()),
        );
        ctx.limiter.until_ready().await;
        ctx.metrics.api_write("patch", "TracingPolicy");
        api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map_err(|e| Error::Finalizer {
                policy: name.clone(),
                message: e.to_string(),
            })?;
        return Ok(Action::await_change());
    }
    let note = format!(
        "cannot read this TracingPolicy, so it is not enforced: {}",
        invalid.error
    );
    publish_event(ctx, &reference, EventType::Warning, "InvalidSpec", note).await;
    Ok(Action::await_change())
}

async fn reconcile_valid(policy: Arc<TracingPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.stores
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheNotReady)?;
    let api = Api::<TracingPolicy>::all(ctx.client.clone());
    let name = policy.name_any();
    // kube's finalizer helper patches the policy to add the finalizer (a live
    // policy without it) or to drop it (a deleted policy with it); count that write.
    let has_finalizer = policy.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = policy.metadata.deletion_timestamp.is_some();
    if has_finalizer == deleting {
        ctx.metrics.api_write("patch", "TracingPolicy");
    }
    let result = finalizer(
        &api,
        FINALIZER,
        policy,
        |event| -> BoxFuture<'static, Result<Action, Error>> {
            match event {
                Finalizer::Apply(p) => Box::pin(reconcile_policy(p, ctx.clone())),
                Finalizer::Cleanup(p) => Box::pin(cleanup(p, ctx.clone())),
            }
        },
    )
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer {
            policy: name,
            message: other.to_string(),
        },
    });
    if result.is_ok() {
        ctx.metrics.reconcile_ok(started.elapsed());
    }
    result
}

fn policy_views(ctx: &Context) -> Vec<PolicyView> {
    ctx.policies
        .state()
        .iter()
        .filter_map(|p| p.0.as_ref().ok())
        .map(|p| PolicyView {
            name: p.name_any(),
            spec: p.spec.clone(),
            created_unix: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(i64::MAX, |t| t.0.as_second()),
            deleting: p.metadata.deletion_timestamp.is_some(),
        })
        .collect()
}

fn policy_view(policy: &TracingPolicy) -> PolicyView {
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

async fn reconcile_policy(policy: Arc<TracingPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let me = policy_view(&policy);
    let namespaces = ctx.stores.namespace_views();
    let workloads = ctx.stores.workload_views();
    let mut policies = policy_views(&ctx);
    // The cache may lag the object this reconcile was handed.
    policies.retain(|p| p.name != me.name);
    policies.push(me.clone());
    let snapshot = Snapshot {
        operator_namespace: &ctx.settings.operator_namespace,
        namespaces: &namespaces,
        workloads: &workloads,
        policies: &policies,
    };

    let plan = match plan::plan_policy(&me, &snapshot) {
        Ok(plan) => plan,
        Err(error) => {
            // Nothing is written to any workload while the policy cannot be planned.
            let problems = [Problem {
                reason: "InvalidSelector",
                message: error.to_string(),
            }];
            write_status(
                &ctx,
                &policy,
                policy.status.as_ref(),
                &Default::default(),
                &[],
                &problems,
                None,
            )
            .await?;
            return Ok(Action::requeue(RESYNC));
        }
    };

    // A policy outside the operator's collector settings gets no collector and
    // touches no workload (plan::guard); it reports why, naming each field.
    if let Some(problem) = collector::not_allowed(&policy.spec, &ctx.settings) {
        let status = write_status(
            &ctx,
            &policy,
            policy.status.as_ref(),
            &plan,
            &[],
            &[problem],
            None,
        )
        .await?;
        announce(&ctx, &policy, policy.status.as_ref(), &status).await;
        return Ok(Action::requeue(RESYNC));
    }

    let mut problems = Vec::new();
    if plan.selected_namespaces.is_empty() {
        problems.push(Problem {
            reason: "NoNamespaceMatched",
            message: "spec.selector matches no namespace: no workload is instrumented".into(),
        });
    }
    // Collectors first; workloads whose collector cannot serve them are left as they are.
    let collectors = collector::reconcile(&ctx, &policy, &plan).await;
    problems.extend(collectors.problems.iter().cloned());
    // Status still counts the held workloads as selected; only enforcement skips them.
    let held: Vec<WorkloadId> = plan
        .workloads
        .iter()
        .filter(|d| {
            matches!(d.action, WorkloadAction::Apply(_))
                && !collectors.serving.contains(&d.id.namespace)
        })
        .map(|d| d.id.clone())
        .collect();
    let enforceable = plan::PolicyPlan {
        workloads: plan
            .workloads
            .iter()
            .filter(|d| !held.contains(&d.id))
            .cloned()
            .collect(),
        ..plan.clone()
    };

    let live: HashMap<&WorkloadId, &plan::WorkloadView> =
        workloads.iter().map(|w| (&w.id, w)).collect();
    let now = Timestamp::now();
    let mut rollout = None;
    let mut current = policy.status.clone();
    let mut outcomes: Vec<(WorkloadId, Outcome)> = match policy.spec.mode {
        Mode::DryRun => enforceable
            .workloads
            .iter()
            .map(|d| (d.id.clone(), dry_run_outcome(&me.name, d, &live)))
            .collect(),
        Mode::Enforce => match plan_rollout(&ctx, &me.name, &policy, &enforceable, &live, now) {
            Ok(steps) => {
                // A new generation gets its status before the writes start: with
                // many workloads they take a while at the client-side rate limit.
                let new_generation = policy.status.as_ref().and_then(|s| s.observed_generation)
                    != policy.metadata.generation;
                let writes = steps.steps.iter().any(|s| {
                    s.step.applies_plan() || matches!(s.step, rollout::RolloutStep::RollBack { .. })
                });
                if new_generation && writes {
                    let preview = preview_outcomes(&enforceable, &steps, &held);
                    let written = write_status(
                        &ctx,
                        &policy,
                        current.as_ref(),
                        &plan,
                        &preview,
                        &problems,
                        collectors.status.clone(),
                    )
                    .await?;
                    current = Some(written);
                }
                let outcomes = enforce_all(&ctx, &policy, &enforceable, &steps, &live, now).await;
                rollout = Some(steps);
                outcomes
            }
            Err(error) => {
                // Nothing is written to any workload while the rollout cannot be paced.
                problems.push(Problem {
                    reason: "InvalidRollout",
                    message: error.to_string(),
                });
                Vec::new()
            }
        },
    };
    outcomes.extend(held.iter().map(|id| (id.clone(), held_outcome(id))));
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));

    let new_status = write_status(
        &ctx,
        &policy,
        current.as_ref(),
        &plan,
        &outcomes,
        &problems,
        collectors.status.clone(),
    )
    .await?;
    announce(&ctx, &policy, policy.status.as_ref(), &new_status).await;
    ctx.metrics
        .set_workloads(&me.name, &count_states(&outcomes));
    // Workload and collector changes arrive through the watches; the requeue only
    // covers what no watch reports: a progress deadline passing, or a lost event.
    let mut next = RESYNC;
    if let Some(rollout) = &rollout {
        if rollout.counts.rolling_out > 0 || rollout.counts.waiting > 0 {
            next = next.min(ROLLOUT_POLL);
        }
        if let Some(at) = rollout.requeue_after(now) {
            next = next.min(at.max(Duration::from_secs(1)));
        }
    }
    Ok(Action::requeue(
        collectors.requeue_after().map_or(next, |r| r.min(next)),
    ))
}

/// The outcomes the planned steps will have if their writes succeed (removals
/// aside), for the status written before a new generation's writes start.
fn preview_outcomes(
    plan: &plan::PolicyPlan,
    rollout: &rollout::RolloutPlan,
    held: &[WorkloadId],
) -> Vec<(WorkloadId, Outcome)> {
    let paused_by = rollout.paused_by.as_ref().map(ToString::to_string);
    let mut outcomes: Vec<(WorkloadId, Outcome)> = rollout
        .steps
        .iter()
        .map(|s| (s.id.clone(), step_outcome(&s.step, paused_by.clone())))
        .collect();
    outcomes.extend(plan.workloads.iter().filter_map(|d| match &d.action {
        WorkloadAction::Conflicted { winner } => Some((
            d.id.clone(),
            Outcome::Conflicted {
                winner: winner.clone(),
            },
        )),
        _ => None,
    }));
    outcomes.extend(held.iter().map(|id| (id.clone(), held_outcome(id))));
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    outcomes
}

fn held_outcome(id: &WorkloadId) -> Outcome {
    Outcome::Held {
        reason: format!(
            "its collector in namespace {} cannot start (see the Degraded condition)",
            id.namespace
        ),
    }
}

/// The rollout step of every workload this policy applies to, from cluster state.
fn plan_rollout(
    ctx: &Context,
    policy_name: &str,
    policy: &TracingPolicy,
    plan: &plan::PolicyPlan,
    live: &HashMap<&WorkloadId, &plan::WorkloadView>,
    now: Timestamp,
) -> Result<rollout::RolloutPlan, rollout::RolloutError> {
    let candidates: Vec<rollout::WorkloadRollout> = plan
        .workloads
        .iter()
        .filter_map(|d| match &d.action {
            WorkloadAction::Apply(p) => Some(rollout::WorkloadRollout::observe(
                policy_name,
                &d.id,
                p,
                live.get(&d.id).copied(),
                ctx.stores.rollout_status(&d.id),
            )),
            _ => None,
        })
        .collect();
    rollout::plan_rollout(&policy.spec.rollout, now, &candidates)
}

/// Carries out the plan: rollout steps for the workloads the policy applies to,
/// removal for those that left it, nothing for the conflicted ones.
async fn enforce_all(
    ctx: &Arc<Context>,
    policy: &TracingPolicy,
    plan: &plan::PolicyPlan,
    rollout: &rollout::RolloutPlan,
    live: &HashMap<&WorkloadId, &plan::WorkloadView>,
    now: Timestamp,
) -> Vec<(WorkloadId, Outcome)> {
    let steps: HashMap<&WorkloadId, &rollout::RolloutStep> =
        rollout.steps.iter().map(|s| (&s.id, &s.step)).collect();
    let paused_by = rollout.paused_by.as_ref().map(ToString::to_string);
    stream::iter(plan.workloads.iter())
        .map(|decision| {
            let step = steps.get(&decision.id).copied();
            let paused_by = paused_by.clone();
            async move {
                match (&decision.action, step) {
                    (WorkloadAction::Apply(p), Some(step)) => {
                        Some(enforce(ctx, policy, &decision.id, p, step, paused_by, now).await)
                    }
                    (WorkloadAction::Apply(_), None) => None,
                    (WorkloadAction::Conflicted { winner }, _) => Some((
                        decision.id.clone(),
                        Outcome::Conflicted {
                            winner: winner.clone(),
                        },
                    )),
                    (WorkloadAction::Remove, _) => {
                        remove_if_needed(ctx, policy, &decision.id, live.get(&decision.id).copied())
                            .await
                    }
                }
            }
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        // Boxed so the Send check sees concrete lifetimes (rust-lang/rust#110338).
        .boxed()
        .filter_map(|o| async move { o })
        .collect()
        .await
}

fn count_states(outcomes: &[(WorkloadId, Outcome)]) -> crate::runtime::metrics::WorkloadStates {
    let mut s = crate::runtime::metrics::WorkloadStates::default();
    for (_, o) in outcomes {
        match o {
            Outcome::UpToDate => s.up_to_date += 1,
            Outcome::RollingOut => s.rolling_out += 1,
            Outcome::Queued | Outcome::Paused { .. } | Outcome::Held { .. } => s.waiting += 1,
            Outcome::Failed { .. } => s.failed += 1,
            Outcome::Conflicted { .. } => s.conflicted += 1,
            Outcome::WouldChange(_) | Outcome::Unchanged => {}
        }
    }
    s
}

fn dry_run_outcome(
    policy: &str,
    decision: &plan::WorkloadDecision,
    live: &std::collections::HashMap<&WorkloadId, &plan::WorkloadView>,
) -> Outcome {
    let id = &decision.id;
    let change = |action: &str, containers: Vec<String>| {
        Outcome::WouldChange(PlannedChange {
            kind: id.kind.to_string(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            action: action.into(),
            containers,
        })
    };
    match (&decision.action, live.get(id)) {
        (WorkloadAction::Apply(p), Some(w)) if plan::is_applied(policy, p, w) => Outcome::UpToDate,
        (WorkloadAction::Apply(p), _) => change(
            "Apply",
            p.containers
                .iter()
                .map(|c| {
                    let vars: Vec<String> = c
                        .env
                        .iter()
                        .map(|e| {
                            format!(
                                "{}={}",
                                e.name,
                                e.value.as_deref().unwrap_or("(from field)")
                            )
                        })
                        .collect();
                    format!("{}: {}", c.name, vars.join(", "))
                })
                .collect(),
        ),
        (WorkloadAction::Remove, Some(w)) if !plan::is_clean(w) => change("Remove", Vec::new()),
        (WorkloadAction::Remove, _) => Outcome::Unchanged,
        (WorkloadAction::Conflicted { winner }, _) => Outcome::Conflicted {
            winner: winner.clone(),
        },
    }
}

/// What a rollout step amounts to in status, once its write (if any) succeeded.
fn step_outcome(step: &rollout::RolloutStep, paused_by: Option<String>) -> Outcome {
    use rollout::RolloutStep as Step;
    match step {
        Step::UpToDate => Outcome::UpToDate,
        Step::RollingOut { .. } | Step::Start { .. } | Step::Restamp => Outcome::RollingOut,
        Step::Queued => Outcome::Queued,
        Step::Paused => Outcome::Paused {
            by: paused_by.unwrap_or_else(|| "a workload".to_string()),
        },
        Step::Failed { reason, message } | Step::RolledBack { reason, message } => {
            Outcome::Failed {
                reason: (*reason).to_string(),
                message: message.clone(),
            }
        }
        Step::RollBack { reason, message } => Outcome::Failed {
            reason: (*reason).to_string(),
            message: rollout::rolled_back_message(message),
        },
    }
}

/// Carries out one workload's rollout step.
async fn enforce(
    ctx: &Arc<Context>,
    policy: &TracingPolicy,
    id: &WorkloadId,
    p: &plan::WorkloadPlan,
    step: &rollout::RolloutStep,
    paused_by: Option<String>,
    now: Timestamp,
) -> (WorkloadId, Outcome) {
    use rollout::RolloutStep as Step;
    let policy_name = policy.name_any();
    let done = step_outcome(step, paused_by);
    let outcome = match step {
        Step::Start { .. } | Step::Restamp => {
            let annotations = rollout::applied_annotations(&policy_name, &p.config_hash, now);
            let body = apply::apply_body(id, p, &annotations);
            match apply::apply(ctx, id, &body).await {
                Ok(()) => {
                    if matches!(step, Step::Start { .. }) {
                        info!(workload = %id, policy = %policy_name, hash = %p.config_hash, "applied tracing settings");
                        publish(
                            ctx,
                            id,
                            EventType::Normal,
                            "TracingApplied",
                            format!(
                                "TracingPolicy {policy_name} set OpenTelemetry settings (service {}, config {})",
                                p.service_name, p.config_hash
                            ),
                        )
                        .await;
                    }
                    done
                }
                Err(error) => {
                    warn!(workload = %id, policy = %policy_name, "apply rejected: {error}");
                    Outcome::Failed {
                        reason: rollout::REASON_APPLY_REJECTED.to_string(),
                        message: format!("apply rejected: {error}"),
                    }
                }
            }
        }
        Step::RollBack { reason, message } => {
            let annotations =
                rollout::rollback_annotations(&policy_name, &p.config_hash, reason, message, now);
            let body = apply::rollback_body(id, &annotations);
            match apply::apply(ctx, id, &body).await {
                // The RolloutFailed Event follows from the status change (`announce`).
                Ok(()) => {
                    warn!(workload = %id, policy = %policy_name, %reason, "rollout failed; removed the tracing settings again");
                    done
                }
                Err(error) => Outcome::Failed {
                    reason: (*reason).to_string(),
                    message: format!("{message}; the rollback was rejected: {error}"),
                },
            }
        }
        _ => done,
    };
    (id.clone(), outcome)
}

/// Removes the operator's settings from a workload that left the selection.
async fn remove_if_needed(
    ctx: &Arc<Context>,
    policy: &TracingPolicy,
    id: &WorkloadId,
    live: Option<&plan::WorkloadView>,
) -> Option<(WorkloadId, Outcome)> {
    if live.is_some_and(|w| !plan::is_clean(w))
        && let Err(error) = remove(ctx, id, &policy.name_any()).await
    {
        return Some((
            id.clone(),
            Outcome::Failed {
                reason: "RemoveRejected".into(),
                message: error.to_string(),
            },
        ));
    }
    None
}

async fn remove(
    ctx: &Arc<Context>,
    id: &WorkloadId,
    policy: &str,
) -> Result<(), apply::ApplyError> {
    apply::apply(ctx, id, &apply::removal_body(id)).await?;
    info!(workload = %id, %policy, "removed tracing settings");
    publish(
        ctx,
        id,
        EventType::Normal,
        "TracingRemoved",
        format!("TracingPolicy {policy} removed the OpenTelemetry settings it had added"),
    )
    .await;
    Ok(())
}

/// Runs before a policy is deleted: removes this policy's settings from every
/// workload that carries them.
async fn cleanup(policy: Arc<TracingPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = policy.name_any();
    let removed = remove_all_of(&ctx, &name).await?;
    ctx.metrics.forget_policy(&name);
    info!(policy = %name, workloads = removed, "policy deleted; its settings are removed");
    Ok(Action::await_change())
}

/// Removes the settings of policy `name` from every workload that carries them;
/// returns how many there were.
async fn remove_all_of(ctx: &Arc<Context>, name: &str) -> Result<usize, Error> {
    let owned: Vec<WorkloadId> = ctx
        .stores
        .workload_views()
        .into_iter()
        .filter(|w| w.annotations.get(POLICY_ANNOTATION).map(String::as_str) == Some(name))
        .map(|w| w.id)
        .collect();
    let results: Vec<Result<(), Error>> = stream::iter(owned.iter())
        .map(|id| async move {
            remove(ctx, id, name)
                .await
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
    Ok(owned.len())
}

/// Writes the status computed from this reconcile unless it equals `previous`
/// (what the policy carries: its stored status, or the one this reconcile wrote
/// before its writes); returns the status the policy now carries.
async fn write_status(
    ctx: &Context,
    policy: &TracingPolicy,
    previous: Option<&TracingPolicyStatus>,
    plan: &plan::PolicyPlan,
    outcomes: &[(WorkloadId, Outcome)],
    problems: &[Problem],
    collector: Option<crate::api::CollectorStatus>,
) -> Result<TracingPolicyStatus, Error> {
    let name = policy.name_any();
    let new = status::compute(&status::StatusInput {
        generation: policy.metadata.generation,
        spec: &policy.spec,
        previous,
        plan,
        outcomes,
        problems,
        collector,
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    });
    if previous == Some(&new) {
        return Ok(new);
    }
    ctx.limiter.until_ready().await;
    ctx.metrics.api_write("patch", "TracingPolicy");
    let api = Api::<TracingPolicy>::all(ctx.client.clone());
    let patch =
        json!({ "apiVersion": "tracing.caas.io/v1alpha1", "kind": "TracingPolicy", "status": new });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::StatusWrite {
        policy: name.clone(),
        source,
    })?;
    Ok(new)
}

/// Events for what changed since the previous status, so they are published once
/// per change and never on a converged resync: on the policy when it becomes
/// Ready or Degraded, and `RolloutFailed` on the policy and on each workload
/// whose failure is new.
async fn announce(
    ctx: &Context,
    policy: &TracingPolicy,
    previous: Option<&TracingPolicyStatus>,
    new: &TracingPolicyStatus,
) {
    let condition = |s: Option<&TracingPolicyStatus>, type_: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let name = policy.name_any();
    for (type_, event_type) in [
        ("Ready", EventType::Normal),
        ("Degraded", EventType::Warning),
    ] {
        let before = condition(previous, type_);
        if let Some((status, reason, message)) = condition(Some(new), type_)
            && status == "True"
            && before.as_ref().map(|b| b.0.as_str()) != Some("True")
        {
            publish_on_policy(ctx, policy, event_type, &reason, message).await;
        }
    }
    let known = |f: &crate::api::WorkloadIssue| {
        previous.is_some_and(|p| {
            p.failures.iter().any(|g| {
                (&g.kind, &g.namespace, &g.name, &g.reason)
                    == (&f.kind, &f.namespace, &f.name, &f.reason)
            })
        })
    };
    for failure in new.failures.iter().filter(|f| !known(f)) {
        let Ok(kind) = serde_json::from_value(json!(failure.kind)) else {
            continue;
        };
        let id = WorkloadId {
            namespace: failure.namespace.clone(),
            kind,
            name: failure.name.clone(),
        };
        let note = format!(
            "TracingPolicy {name}: {}: {}",
            failure.reason, failure.message
        );
        publish(ctx, &id, EventType::Warning, "RolloutFailed", note.clone()).await;
        publish_on_policy(
            ctx,
            policy,
            EventType::Warning,
            "RolloutFailed",
            format!("{id}: {}: {}", failure.reason, failure.message),
        )
        .await;
    }
}

async fn publish_on_policy(
    ctx: &Context,
    policy: &TracingPolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_event(ctx, &policy_reference(policy), type_, reason, note).await;
}

async fn publish(ctx: &Context, id: &WorkloadId, type_: EventType, reason: &str, note: String) {
    let reference = ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(id.kind.to_string()),
        namespace: Some(id.namespace.clone()),
        name: Some(id.name.clone()),
        ..Default::default()
    };
    publish_event(ctx, &reference, type_, reason, note).await;
}

/// Publishes an Event; a failure to publish is logged, never fails the reconcile.
async fn publish_event(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are writes too: they share the client-side rate limit.
    ctx.limiter.until_ready().await;
    ctx.metrics.api_write("create", "Event");
    if let Err(error) = ctx.recorder.publish(&event, reference).await {
        warn!(object = ?reference.name, kind = ?reference.kind, %error, "could not publish event");
    }
}

/// The reference Events about a policy point at.
pub fn policy_reference(policy: &TracingPolicy) -> ObjectReference {
    policy.object_ref(&())
}
