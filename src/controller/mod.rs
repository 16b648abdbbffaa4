//! The reconciler: watch -> snapshot -> plan -> apply -> status.
//!
//! One reconcile handles one TracingPolicy against the cached cluster. Any
//! change to a namespace or workload triggers every policy (there are few
//! policies and planning is in memory); the controller's queue deduplicates and
//! debounces them. Deleting a policy runs the finalizer's cleanup, which removes
//! exactly what the operator added to each workload the policy owned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, future::BoxFuture, stream};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{FIELD_MANAGER, FINALIZER, Mode, POLICY_ANNOTATION, PlannedChange, TracingPolicy};
use crate::plan::{self, PolicyView, Snapshot, WorkloadAction, WorkloadId};
use crate::runtime::metrics::Metrics;

pub mod apply;
pub mod cache;
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
        }
    }
}

type RateLimiter = governor::DefaultDirectRateLimiter;

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub stores: Stores,
    pub policies: Store<TracingPolicy>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub limiter: RateLimiter,
}

/// Every way a reconcile can fail, each naming what failed on which object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("caches stopped before they were ready")]
    CacheNotReady,
    #[error("writing status of TracingPolicy {policy}: {source}")]
    StatusWrite { policy: String, source: kube::Error },
    #[error("removing tracing from {workload}: {source}")]
    Cleanup {
        workload: String,
        source: kube::Error,
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
    let stores = Stores {
        namespaces: ns_store,
        deployments: deploy_store,
        statefulsets: sts_store,
        daemonsets: ds_store,
    };

    let policies_api = Api::<TracingPolicy>::all(client.clone());
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

    let triggers = stream::select_all([namespaces.boxed(), deployments, statefulsets, daemonsets]);
    controller
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
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

fn error_policy(policy: Arc<TracingPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), %error, "reconcile failed; retrying");
    ctx.metrics.reconcile_error(error.metric_reason());
    Action::requeue(Duration::from_secs(10))
}

#[tracing::instrument(skip_all, fields(policy = %policy.name_any()))]
async fn reconcile(policy: Arc<TracingPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.stores
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheNotReady)?;
    let api = Api::<TracingPolicy>::all(ctx.client.clone());
    let name = policy.name_any();
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
            write_status(&ctx, &policy, &Default::default(), &[], &problems).await?;
            return Ok(Action::requeue(RESYNC));
        }
    };

    let mut problems = Vec::new();
    if plan.selected_namespaces.is_empty() {
        problems.push(Problem {
            reason: "NoNamespaceMatched",
            message: "spec.selector matches no namespace: no workload is instrumented".into(),
        });
    }

    let live: std::collections::HashMap<&WorkloadId, &plan::WorkloadView> =
        workloads.iter().map(|w| (&w.id, w)).collect();
    let outcomes: Vec<(WorkloadId, Outcome)> = match policy.spec.mode {
        Mode::DryRun => plan
            .workloads
            .iter()
            .map(|d| (d.id.clone(), dry_run_outcome(&me.name, d, &live)))
            .collect(),
        Mode::Enforce => {
            stream::iter(plan.workloads.iter())
                .map(|decision| enforce(&ctx, &policy, decision, live.get(&decision.id).copied()))
                .buffer_unordered(ctx.settings.write_concurrency.max(1))
                // Boxed so the Send check sees concrete lifetimes (rust-lang/rust#110338).
                .boxed()
                .filter_map(|o| async move { o })
                .collect()
                .await
        }
    };
    let mut outcomes = outcomes;
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));

    write_status(&ctx, &policy, &plan, &outcomes, &problems).await?;
    ctx.metrics
        .set_workloads(&me.name, &count_states(&outcomes));
    let rolling = outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::RollingOut));
    Ok(Action::requeue(if rolling { ROLLOUT_POLL } else { RESYNC }))
}

fn count_states(outcomes: &[(WorkloadId, Outcome)]) -> crate::runtime::metrics::WorkloadStates {
    let mut s = crate::runtime::metrics::WorkloadStates::default();
    for (_, o) in outcomes {
        match o {
            Outcome::UpToDate => s.up_to_date += 1,
            Outcome::RollingOut => s.rolling_out += 1,
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

/// Brings one workload to its planned state; `None` when there is nothing to report.
async fn enforce(
    ctx: &Arc<Context>,
    policy: &TracingPolicy,
    decision: &plan::WorkloadDecision,
    live: Option<&plan::WorkloadView>,
) -> Option<(WorkloadId, Outcome)> {
    let id = &decision.id;
    let policy_name = policy.name_any();
    let outcome = match &decision.action {
        WorkloadAction::Conflicted { winner } => Outcome::Conflicted {
            winner: winner.clone(),
        },
        WorkloadAction::Apply(p) => {
            let applied = live.is_some_and(|w| plan::is_applied(&policy_name, p, w));
            if !applied {
                let body = apply::apply_body(id, &policy_name, p);
                if let Err(error) = apply::apply(ctx, id, &body).await {
                    let outcome = Outcome::Failed {
                        reason: "ApplyRejected".into(),
                        message: error.to_string(),
                    };
                    publish(
                        ctx,
                        id,
                        EventType::Warning,
                        "RolloutFailed",
                        format!("TracingPolicy {policy_name}: apply rejected: {error}"),
                    )
                    .await;
                    return Some((id.clone(), outcome));
                }
                info!(workload = %id, policy = %policy_name, hash = %p.config_hash, "applied tracing settings");
                publish(ctx, id, EventType::Normal, "TracingApplied", format!(
                    "TracingPolicy {policy_name} set OpenTelemetry settings (service {}, config {})",
                    p.service_name, p.config_hash
                ))
                .await;
                // The watch brings the new generation; until then it is rolling out.
                Outcome::RollingOut
            } else if ctx
                .stores
                .rollout_status(id)
                .is_some_and(|r| r.is_complete())
            {
                Outcome::UpToDate
            } else {
                Outcome::RollingOut
            }
        }
        WorkloadAction::Remove => {
            if live.is_some_and(|w| !plan::is_clean(w))
                && let Err(error) = remove(ctx, id, &policy_name).await
            {
                let outcome = Outcome::Failed {
                    reason: "RemoveRejected".into(),
                    message: error.to_string(),
                };
                return Some((id.clone(), outcome));
            }
            return None;
        }
    };
    Some((id.clone(), outcome))
}

async fn remove(ctx: &Arc<Context>, id: &WorkloadId, policy: &str) -> Result<(), kube::Error> {
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
    let owned: Vec<WorkloadId> = ctx
        .stores
        .workload_views()
        .into_iter()
        .filter(|w| w.annotations.get(POLICY_ANNOTATION) == Some(&name))
        .map(|w| w.id)
        .collect();
    let results: Vec<Result<(), Error>> = stream::iter(owned.iter())
        .map(|id| {
            let ctx = ctx.clone();
            let name = name.clone();
            async move {
                remove(&ctx, id, &name)
                    .await
                    .map_err(|source| Error::Cleanup {
                        workload: id.to_string(),
                        source,
                    })
            }
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        .boxed()
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    ctx.metrics.forget_policy(&name);
    info!(policy = %name, workloads = owned.len(), "policy deleted; its settings are removed");
    Ok(Action::await_change())
}

async fn write_status(
    ctx: &Context,
    policy: &TracingPolicy,
    plan: &plan::PolicyPlan,
    outcomes: &[(WorkloadId, Outcome)],
    problems: &[Problem],
) -> Result<(), Error> {
    let name = policy.name_any();
    let new = status::compute(&status::StatusInput {
        generation: policy.metadata.generation,
        spec: &policy.spec,
        previous: policy.status.as_ref(),
        plan,
        outcomes,
        problems,
        collector: None,
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    });
    if policy.status.as_ref() == Some(&new) {
        return Ok(());
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
    Ok(())
}

async fn publish(ctx: &Context, id: &WorkloadId, type_: EventType, reason: &str, note: String) {
    let reference = ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(id.kind.to_string()),
        namespace: Some(id.namespace.clone()),
        name: Some(id.name.clone()),
        ..Default::default()
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.metrics.api_write("create", "Event");
    if let Err(error) = ctx.recorder.publish(&event, &reference).await {
        warn!(workload = %id, %error, "could not publish event");
    }
}

/// The reference Events about a policy point at.
pub fn policy_reference(policy: &TracingPolicy) -> ObjectReference {
    policy.object_ref(&())
}
