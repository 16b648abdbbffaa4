//! The controller: watches, the policy queue, and the finalizer around each
//! policy's reconcile (`reconcile`: snapshot -> plan -> apply -> status).
//!
//! A policy reconciles when it changes, when a workload it selects or owns
//! changes (`cache` routes each change to those policies only), when one of its
//! collector objects changes, and at the nearest rollout deadline or resync.
//! Deleting a policy runs its cleanup first, which removes exactly what the
//! operator added to each workload the policy owned.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{FINALIZER, TracingPolicy};
use crate::plan::index::PolicyIndex;
use crate::plan::{Injection, WorkloadId};
use crate::runtime::leader::Fence;
use crate::runtime::metrics::Metrics;

pub mod admission;
pub mod cache;
pub mod collector;
pub mod collector_losses;
mod reconcile;
mod report;
pub mod verify;
pub mod writer;

pub use admission::InjectionChoice;
use cache::Cache;
pub use reconcile::policy_view;
use writer::{WriteError, Writer};

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
    /// How settings reach pods (`--injection`).
    pub injection: InjectionChoice,
    /// Where collectors may run, from which images, sending where. The default
    /// here is [`crate::plan::guard::CollectorGuard::unrestricted`], what tests and
    /// embedders start from; `tracing-operator run` sets it from its flags, whose
    /// defaults restrict ([`crate::plan::guard::CollectorGuard::default`]).
    pub collector_guard: crate::plan::guard::CollectorGuard,
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
            injection: InjectionChoice::Auto,
            collector_guard: crate::plan::guard::CollectorGuard::unrestricted(),
        }
    }
}

/// A watched policy: the typed object, or one that does not deserialize (stored
/// under an older or looser schema). The guard keeps one such object from
/// stopping the watch, and so the reconciliation of every other policy.
pub type GuardedPolicy = DeserializeGuard<TracingPolicy>;

/// What one policy's reconciles keep between them.
#[derive(Default)]
struct PolicyState {
    index: PolicyIndex,
    /// Workloads whose last apply the API server refused for good (a conflict, an
    /// invalid object), with the config hash and the message: not tried again
    /// until the workload or its plan changes, so a refusal never becomes a loop.
    rejected: HashMap<WorkloadId, (String, String)>,
    /// When this policy's status was last written: a change that is only
    /// progress waits until [`reconcile::PROGRESS_INTERVAL`] has passed.
    status_written: Option<Instant>,
    /// What the last reconcile saw, when it wrote nothing and left nothing
    /// pending: while none of it moves, a workload change that moves no entry
    /// of the index ends the reconcile there (see `reconcile::Settled`).
    settled: Option<reconcile::Settled>,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub cache: Arc<Cache>,
    pub policies: Store<GuardedPolicy>,
    pub collectors: collector::CollectorStores,
    pub settings: Settings,
    pub injection: Injection,
    pub metrics: Arc<Metrics>,
    pub writer: Writer,
    pub collector_losses: collector_losses::CollectorLossReader,
    states: Mutex<HashMap<String, Arc<tokio::sync::Mutex<PolicyState>>>>,
    /// The policies' fingerprint the last reconcile saw; a change re-plans every policy.
    policies_seen: AtomicU64,
    /// Counts the changes of collector objects (any policy's): a reconcile
    /// reads their status, so a change ends every policy's settled state.
    collector_changes: Arc<AtomicU64>,
    /// Failed reconciles in a row, per policy, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The generation of each unreadable policy whose InvalidSpec Event was published.
    invalid_reported: Mutex<HashMap<String, Option<i64>>>,
}

impl Context {
    fn state(&self, policy: &str) -> Arc<tokio::sync::Mutex<PolicyState>> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(policy.to_string())
            .or_default()
            .clone()
    }

    fn forget(&self, policy: &str) {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        self.cache.forget_policy(policy);
        self.metrics.forget_policy(policy);
        self.collector_losses.forget(policy);
    }
}

/// Every way a reconcile can fail, each naming what failed on which object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("caches stopped before they were ready")]
    CacheNotReady,
    #[error("writing status of TracingPolicy {policy}: {source}")]
    StatusWrite { policy: String, source: WriteError },
    #[error("removing tracing from {workload}: {source}")]
    Cleanup {
        workload: String,
        source: WriteError,
    },
    #[error("finalizer of TracingPolicy {policy}: {source}")]
    Finalizer { policy: String, source: WriteError },
    #[error("workload writes of TracingPolicy {policy} failed and are retried: {message}")]
    Writes { policy: String, message: String },
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::CacheNotReady => "CacheNotReady",
            Error::StatusWrite { .. } => "StatusWrite",
            Error::Cleanup { .. } => "Cleanup",
            Error::Finalizer { .. } => "Finalizer",
            Error::Writes { .. } => "Writes",
        }
    }
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    fence: Fence,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), String> {
    let (injection, admission_version) = admission::choose(&client, settings.injection).await?;
    info!(
        injection = injection.as_str(),
        "settings reach pods by {} injection",
        injection.as_str()
    );
    metrics.track_leader(fence.clone());
    metrics.set_write_limits(settings.qps, settings.burst);
    let writer = Writer::new(
        client.clone(),
        settings.qps,
        settings.burst,
        metrics.clone(),
        fence,
        settings.instance.clone(),
    );
    if let Some(version) = admission_version {
        admission::install(&writer, version, &settings.operator_namespace)
            .await
            .map_err(|e| format!("installing the MutatingAdmissionPolicy: {e}"))?;
    }

    let policies_api = Api::<GuardedPolicy>::all(client.clone());
    let controller = Controller::new(policies_api, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency));
    let (trigger, triggers) = tokio::sync::mpsc::unbounded_channel();
    let cache = Cache::new(&settings.operator_namespace, controller.store(), trigger);
    cache.start(&client);
    let (collectors, collector_events) = collector::watch(&client);

    let ctx = Arc::new(Context {
        client,
        cache: cache.clone(),
        policies: controller.store(),
        collectors: collectors.clone(),
        settings,
        injection,
        metrics,
        writer,
        collector_losses: Default::default(),
        states: Mutex::default(),
        policies_seen: AtomicU64::new(0),
        collector_changes: Arc::default(),
        failures: Mutex::default(),
        invalid_reported: Mutex::default(),
    });

    let readiness = (cache.clone(), collectors);
    tokio::spawn(async move {
        if readiness.0.wait_until_ready().await.is_ok()
            && readiness.1.wait_until_ready().await.is_ok()
        {
            info!("caches synced");
            ready();
        }
    });

    let changes = ctx.collector_changes.clone();
    let collector_triggers = collector_events.map(move |policy| {
        changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ObjectRef::new(&policy)
    });
    let routed = futures::stream::unfold(triggers, |mut rx| async move {
        rx.recv().await.map(|t| (t, rx))
    });
    let triggers = futures::stream::select(routed.boxed(), collector_triggers.boxed());
    controller
        .reconcile_on(triggers)
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
    Ok(())
}

/// Retries a failed reconcile with an exponential backoff per policy: 1 s,
/// 2 s, 4 s, ... up to 5 minutes, reset by the next success.
fn error_policy(policy: Arc<GuardedPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = policy.name_any();
    ctx.metrics.reconcile_error(&name, error.metric_reason());
    let attempts = {
        let mut failures = ctx
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(name.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = retry_delay(attempts);
    warn!(policy = %name, %error, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The backoff after `attempts` failures in a row.
pub fn retry_delay(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(9);
    Duration::from_secs(1u64 << exponent).min(Duration::from_secs(300))
}

#[tracing::instrument(skip_all, err, fields(policy = %guarded.name_any()))]
async fn reconcile(guarded: Arc<GuardedPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.cache
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheNotReady)?;
    ctx.collectors
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheNotReady)?;
    let result = match &guarded.0 {
        Ok(policy) => reconcile_valid(policy, &ctx).await,
        Err(invalid) => reconcile_invalid(invalid, &ctx).await,
    };
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&guarded.name_any());
        ctx.metrics.reconcile_ok(started.elapsed());
    }
    result
}

/// The finalizer, then the policy's own reconcile: a live policy gets the
/// finalizer first; a deleted one has its settings removed from every workload
/// before the finalizer goes.
async fn reconcile_valid(policy: &TracingPolicy, ctx: &Arc<Context>) -> Result<Action, Error> {
    let name = policy.name_any();
    let finalizers = policy.finalizers();
    let ours = finalizers.iter().position(|f| f == FINALIZER);
    match (policy.metadata.deletion_timestamp.is_some(), ours) {
        (true, Some(index)) => {
            let removed = reconcile::remove_all_of(ctx, &name).await?;
            remove_finalizer(ctx, &name, index).await?;
            ctx.forget(&name);
            info!(policy = %name, workloads = removed, "policy deleted; its settings are removed");
            Ok(Action::await_change())
        }
        (true, None) => Ok(Action::await_change()),
        (false, None) => {
            let patch = if policy.metadata.finalizers.is_none() {
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
                ])
            } else {
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                    {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
                ])
            };
            patch_finalizers(ctx, &name, patch).await?;
            reconcile::reconcile_policy(policy, ctx).await
        }
        (false, Some(_)) => reconcile::reconcile_policy(policy, ctx).await,
    }
}

async fn patch_finalizers(
    ctx: &Context,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), Error> {
    let finalizer_error = |source| Error::Finalizer {
        policy: name.to_string(),
        source,
    };
    let patch: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| finalizer_error(WriteError::Api(kube::Error::SerdeError(e))))?;
    ctx.writer
        .patch_policy(name, patch)
        .await
        .map_err(finalizer_error)
}

/// Test-and-remove, so only our own finalizer entry goes. A policy already gone
/// (another replica, or the API server, finished first) is done.
async fn remove_finalizer(ctx: &Context, name: &str, index: usize) -> Result<(), Error> {
    match patch_finalizers(
        ctx,
        name,
        json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")}
        ]),
    )
    .await
    {
        Err(Error::Finalizer { source, .. }) if source.is_not_found() => Ok(()),
        other => other,
    }
}

/// A policy the operator cannot read is reported (log, metric, one Event per
/// generation) and left alone; if it is being deleted, the settings it had added
/// are still removed by name, so a deletion never hangs on it.
async fn reconcile_invalid(invalid: &InvalidObject, ctx: &Arc<Context>) -> Result<Action, Error> {
    let meta = &invalid.metadata;
    let name = meta.name.clone().unwrap_or_default();
    ctx.metrics.reconcile_error(&name, "InvalidObject");
    let ours = meta
        .finalizers
        .as_ref()
        .and_then(|f| f.iter().position(|f| f == FINALIZER));
    if let (Some(_), Some(index)) = (meta.deletion_timestamp.as_ref(), ours) {
        reconcile::remove_all_of(ctx, &name).await?;
        remove_finalizer(ctx, &name, index).await?;
        ctx.forget(&name);
        return Ok(Action::await_change());
    }
    let first_time = ctx
        .invalid_reported
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(name.clone(), meta.generation)
        != Some(meta.generation);
    if first_time {
        warn!(policy = %name, error = %invalid.error, "cannot read TracingPolicy; it is ignored until it is fixed");
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(TracingPolicy::api_version(&()).to_string()),
            kind: Some(TracingPolicy::kind(&()).to_string()),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            ..Default::default()
        };
        let note = format!(
            "cannot read this TracingPolicy, so it is not enforced: {}",
            invalid.error
        );
        ctx.writer
            .event(&reference, true, "InvalidSpec", note)
            .await;
    }
    Ok(Action::await_change())
}

/// The reference Events about a policy point at.
pub fn policy_reference(policy: &TracingPolicy) -> k8s_openapi::api::core::v1::ObjectReference {
    policy.object_ref(&())
}
