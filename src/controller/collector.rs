//! The OpenTelemetry Collectors of a policy in the cluster: for every tier in
//! every namespace ([`crate::plan::collector::collector_tiers`]), check the
//! Secrets it reads, plan it ([`crate::plan::collector`]) and server-side apply
//! its ConfigMap, Service, PodDisruptionBudget, Deployment and (with
//! `collector.autoscaling`) HorizontalPodAutoscaler when (and only when) the
//! cached objects differ from the plan; delete what the policy no longer wants.
//!
//! Secrets are read one at a time by name (`get`), never listed or watched: the
//! operator only learns whether a Secret the policy names exists and which keys
//! it has. The collector objects are cached by watches restricted to the label
//! `app.kubernetes.io/managed-by=tracing-operator`, so only the operator's own
//! objects are held in memory.
//!
//! A tier that cannot start (a missing Secret or key, a header key that is not
//! a header name) is neither created nor updated, and the namespaces it would
//! serve are left out of [`CollectorOutcome::serving`]: the reconcile points no
//! workload there at it. Neither does it point one at a tier without a ready
//! replica ([`crate::plan::collector::readiness`]): while a tier comes up its
//! workloads wait; a tier that lost its pods or is stuck is a problem. In
//! DryRun nothing is written; the problems and status are still reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::ApiResource;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{info, warn};

use super::Context;
use crate::api::{
    CollectorStatus, CollectorTierStatus, FIELD_MANAGER, Mode, POLICY_ANNOTATION, TracingPolicy,
    TracingPolicySpec,
};
use crate::plan::collector::readiness::{Readiness, readiness};
use crate::plan::collector::{
    CollectorError, CollectorInput, CollectorPlan, HeaderSecretKeys, Tier, TierRef,
    collector_tiers, config_hash, plan_collector, referenced_secrets, sampler_host,
    sampler_namespace, tiers_of_namespace,
};
use crate::plan::guard::{check_policy, namespace_allowed};
use crate::plan::status::Problem;
use crate::plan::{COLLECTOR_OTLP_GRPC_PORT, export_target};
use crate::workload::MANAGED_BY_LABEL;

/// Annotation on each collector object: a hash of everything the operator applies
/// to it. A changed intent (including a field the operator stops setting) changes
/// the hash, so the comparison with the cache sees it even where the stored
/// object cannot show it.
pub const APPLIED_HASH_ANNOTATION: &str = "tracing.caas.io/applied-hash";

/// At most this many collector problems are listed in the status; the rest are counted.
pub const MAX_PROBLEMS: usize = 5;

/// How soon a policy whose collector has a problem is looked at again: Secrets
/// are not watched, so creating the missing one is noticed by this retry.
pub const RETRY: Duration = Duration::from_secs(15);

/// How long the key names of a Secret that was found are reused before it is
/// read again.
pub const SECRET_TTL: Duration = Duration::from_secs(60);

/// Reader handles of the caches of the operator's collector objects.
#[derive(Clone)]
pub struct CollectorStores {
    pub config_maps: Store<ConfigMap>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub pod_disruption_budgets: Store<PodDisruptionBudget>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    /// Key names of the Secrets collectors read.
    pub secret_keys: SecretKeys,
}

/// Key names of Secrets found in the last [`SECRET_TTL`], by namespace and name.
/// Every change of a selected workload reconciles its policy, so without it a
/// busy cluster would GET the same Secrets many times a second. A Secret that was missing is
/// never remembered: creating it is seen on the next retry.
#[derive(Clone, Default)]
pub struct SecretKeys(Arc<Mutex<HashMap<SecretId, KeysRead>>>);

/// Namespace and name of a Secret.
type SecretId = (String, String);
/// When a Secret was read, and its key names.
type KeysRead = (Instant, BTreeSet<String>);

impl SecretKeys {
    pub fn get(&self, ns: &str, name: &str, now: Instant) -> Option<BTreeSet<String>> {
        let map = self.0.lock().ok()?;
        let (read, keys) = map.get(&(ns.to_string(), name.to_string()))?;
        (now.duration_since(*read) < SECRET_TTL).then(|| keys.clone())
    }

    pub fn put(&self, ns: &str, name: &str, keys: BTreeSet<String>, now: Instant) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, (read, _)| now.duration_since(*read) < SECRET_TTL);
            map.insert((ns.to_string(), name.to_string()), (now, keys));
        }
    }

    pub fn forget(&self, ns: &str, name: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&(ns.to_string(), name.to_string()));
        }
    }
}

impl CollectorStores {
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        store_ready(&self.config_maps).await?;
        store_ready(&self.deployments).await?;
        store_ready(&self.services).await?;
        store_ready(&self.pod_disruption_budgets).await?;
        store_ready(&self.autoscalers).await
    }
}

/// How often a waiter for a store looks again (see [`store_ready`]).
const READY_RECHECK: Duration = Duration::from_millis(200);

/// `store.wait_until_ready()`, safe for concurrent waiters. kube's wakes only
/// the task that polled it last (a oneshot channel keeps one waker): with the
/// readiness probe and a reconcile waiting at once, one of them waited forever
/// (the operator never ready, or a policy never reconciled again). Waiting in
/// short rounds registers each waiter again; once ready, it returns at once.
async fn store_ready<K>(
    store: &Store<K>,
) -> Result<(), kube::runtime::reflector::store::WriterDropped>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(ready) = tokio::time::timeout(READY_RECHECK, store.wait_until_ready()).await {
            return ready;
        }
    }
}

/// What the collectors of one policy mean for the rest of the reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CollectorOutcome {
    /// Why a collector is not as planned; the policy is `Degraded` while any lasts.
    pub problems: Vec<Problem>,
    /// `status.collector`; `None` when the collector is disabled.
    pub status: Option<CollectorStatus>,
    /// Selected namespaces whose workloads may be pointed at their export target:
    /// every selected namespace when the collector is off, else those whose
    /// tiers were planned (and, in Enforce, applied and have a ready replica)
    /// without a problem.
    pub serving: BTreeSet<String>,
    /// Selected namespaces whose workloads wait for a tier that is coming up,
    /// with what they wait for; neither serving nor held by a problem.
    pub waiting: BTreeMap<String, String>,
}

impl CollectorOutcome {
    /// When to look again sooner than the resync: while a collector has a
    /// problem or is coming up (its Deployment's watch normally comes first).
    pub fn requeue_after(&self) -> Option<Duration> {
        (!self.problems.is_empty() || !self.waiting.is_empty()).then_some(RETRY)
    }
}

/// The label selector of the collector watches: only the operator's own objects.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"))
}

/// Starts the trimmed, reflected collector watches. The stream yields the
/// name of the policy (its `tracing.caas.io/policy` label) whenever one of its
/// objects changes or is deleted, so that policy reconciles (a deleted or edited
/// collector is put back; `readyReplicas` follows its pods).
pub fn watch(client: &Client) -> (CollectorStores, impl Stream<Item = String> + Send + 'static) {
    let (config_maps, cm) = reflected::<ConfigMap>(client, trim_config_map);
    let (deployments, deploy) = reflected::<Deployment>(client, trim_deployment);
    let (services, svc) = reflected::<Service>(client, trim_service);
    let (pod_disruption_budgets, pdb) =
        reflected::<PodDisruptionBudget>(client, trim_pod_disruption_budget);
    let (autoscalers, hpa) = reflected::<HorizontalPodAutoscaler>(client, trim_autoscaler);
    (
        CollectorStores {
            config_maps,
            deployments,
            services,
            pod_disruption_budgets,
            autoscalers,
            secret_keys: SecretKeys::default(),
        },
        stream::select_all([cm, deploy, svc, pdb, hpa]),
    )
}

fn reflected<K>(
    client: &Client,
    trim: fn(&mut K),
) -> (Store<K>, futures::stream::BoxStream<'static, String>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = watcher(Api::<K>::all(client.clone()), watch_config())
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .filter_map(|event| async move {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    o.labels().get(POLICY_ANNOTATION).cloned()
                }
                Ok(_) => None,
                Err(error) => {
                    warn!(%error, kind = %K::kind(&()), "collector watch error");
                    None
                }
            }
        })
        .boxed();
    (store, stream)
}

/// Keeps identity, labels, annotations, owner references and what the
/// comparison needs; drops `managedFields`, the largest part of a small object.
fn trim_meta(meta: &mut ObjectMeta) {
    let mut annotations = meta.annotations.take();
    if let Some(a) = annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: meta.labels.take(),
        annotations,
        owner_references: meta.owner_references.take(),
        resource_version: meta.resource_version.take(),
        generation: meta.generation.take(),
        ..ObjectMeta::default()
    };
}

pub fn trim_config_map(cm: &mut ConfigMap) {
    trim_meta(&mut cm.metadata);
    cm.binary_data = None;
}

/// Keeps, of the status, the counts and the Progressing condition (a tier
/// past its progress deadline is stuck).
pub fn trim_deployment(d: &mut Deployment) {
    trim_meta(&mut d.metadata);
    if let Some(status) = d.status.as_mut() {
        let progressing = status
            .conditions
            .take()
            .into_iter()
            .flatten()
            .find(|c| c.type_.as_deref() == Some("Progressing"))
            .map(|c| k8s_openapi::api::apps::v1::DeploymentCondition {
                last_transition_time: None,
                last_update_time: None,
                ..c
            });
        status.conditions = progressing.map(|c| vec![c]);
    }
}

pub fn trim_service(s: &mut Service) {
    trim_meta(&mut s.metadata);
    s.status = None;
}

pub fn trim_pod_disruption_budget(p: &mut PodDisruptionBudget) {
    trim_meta(&mut p.metadata);
    p.status = None;
}

pub fn trim_autoscaler(h: &mut HorizontalPodAutoscaler) {
    trim_meta(&mut h.metadata);
    h.status = None;
}

/// The apply configuration of one collector object: the planned object with the
/// hash of itself in [`APPLIED_HASH_ANNOTATION`].
pub fn apply_body<K: Serialize>(object: &K) -> Result<Value, serde_json::Error> {
    let mut body = serde_json::to_value(object)?;
    let hash = config_hash(&body.to_string());
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_HASH_ANNOTATION.into(), Value::String(hash));
        }
    }
    Ok(body)
}

/// The live object already carries exactly the apply configuration `desired`:
/// its [`APPLIED_HASH_ANNOTATION`] is the one `desired` carries (so the operator's
/// intent has not changed since it was applied), and every field `desired` sets
/// is in `live` with the value the API server stores for it (so nobody changed
/// one since). Fields `live` has beyond those (server defaults, other managers'
/// additions) are ignored: the operator does not own them. When this holds the
/// controller writes nothing.
pub fn is_current(desired: &Value, live: &Value) -> bool {
    let hash = |v: &Value| -> Option<String> {
        v.get("metadata")?
            .get("annotations")?
            .get(APPLIED_HASH_ANNOTATION)?
            .as_str()
            .map(str::to_string)
    };
    hash(desired).is_some()
        && hash(desired) == hash(live)
        && contains(desired, Some(live), Scope::Plain)
}

/// Where in an object a value sits, for the few places the API server stores a
/// value in another spelling.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Plain,
    /// Inside `resources`.
    Resources,
    /// Inside `resources.requests` or `resources.limits`: quantities.
    Quantities,
}

/// `live` holds `desired` in its stored form: objects field by field; lists of
/// objects element by element in any order (lists the operator applies are keyed
/// by name, and another manager may add entries); other lists exactly; quantities
/// by value. An empty value (null, "", {}, []) matches a missing field: the API
/// server drops those.
fn contains(desired: &Value, live: Option<&Value>, scope: Scope) -> bool {
    difference(desired, live, scope).is_none()
}

/// The path of the first field of `desired` that `live` does not hold, by the
/// same rules as `contains`, for the log line of an apply.
pub fn first_difference(desired: &Value, live: &Value) -> Option<String> {
    difference(desired, Some(live), Scope::Plain)
}

fn difference(desired: &Value, live: Option<&Value>, scope: Scope) -> Option<String> {
    let empty = match desired {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    let Some(live) = live else {
        return (!empty).then(String::new);
    };
    let same = match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            return want.iter().find_map(|(key, value)| {
                let inner = match (scope, key.as_str()) {
                    (Scope::Quantities, _) => Scope::Quantities,
                    (_, "resources") => Scope::Resources,
                    (Scope::Resources, "requests" | "limits") => Scope::Quantities,
                    _ => Scope::Plain,
                };
                difference(value, have.get(key), inner).map(|path| format!(".{key}{path}"))
            });
        }
        (Value::Array(want), Value::Array(have)) if want.iter().all(Value::is_object) => {
            return want.iter().enumerate().find_map(|(i, w)| {
                let found = have.iter().any(|h| contains(w, Some(h), scope));
                (!found).then(|| format!("[{i}]"))
            });
        }
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len()
                && want
                    .iter()
                    .zip(have)
                    .all(|(w, h)| contains(w, Some(h), scope))
        }
        (Value::String(want), Value::String(have)) if scope == Scope::Quantities => {
            want == have || quantity_nanos(want).is_some_and(|w| Some(w) == quantity_nanos(have))
        }
        (want, have) => want == have || (empty && have.is_null()),
    };
    (!same).then(String::new)
}

/// A resource quantity (`500m`, `0.5`, `1Gi`, `1e3`) in units of 10⁻⁹, the
/// precision the API server keeps; `None` for anything else.
pub fn quantity_nanos(s: &str) -> Option<i128> {
    let s = s.trim();
    let (negative, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let (decimal, binary): (i32, u32) = match suffix {
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "" => (0, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        exp if exp.starts_with(['e', 'E']) => (exp[1..].parse().ok()?, 0),
        _ => return None,
    };
    let fraction_len = i32::try_from(fraction.len()).ok()?;
    let exponent = 9 + decimal - fraction_len;
    let scaled = mantissa.checked_mul(1i128.checked_shl(binary)?)?;
    let nanos = if exponent >= 0 {
        scaled.checked_mul(10i128.checked_pow(u32::try_from(exponent).ok()?)?)?
    } else {
        // Below a nano the API server rounds up.
        let divisor = 10i128.checked_pow(exponent.unsigned_abs())?;
        (scaled + divisor - 1) / divisor
    };
    Some(if negative { -nanos } else { nanos })
}

/// Brings the collectors of `policy` to what `plan` needs and says which
/// namespaces they serve. Never fails: what goes wrong is a [`Problem`].
pub async fn reconcile(
    ctx: &Arc<Context>,
    policy: &TracingPolicy,
    selected_namespaces: &[String],
) -> CollectorOutcome {
    let name = policy.name_any();
    let spec = &policy.spec;
    let enforce = spec.mode == Mode::Enforce;
    let operator_ns = ctx.settings.operator_namespace.as_str();
    let wanted = collector_tiers(spec, operator_ns, selected_namespaces);

    let mut problems = Vec::new();
    if enforce {
        problems.extend(delete_unwanted(ctx, &name, spec, &wanted).await);
    }
    if !spec.collector.enabled {
        return CollectorOutcome {
            problems,
            status: None,
            serving: selected_namespaces.iter().cloned().collect(),
            waiting: BTreeMap::new(),
        };
    }

    let owner = policy.controller_owner_ref(&());
    let owner = owner.as_ref();
    let known = ctx.cache.namespace_views();
    let name = name.as_str();
    let results: Vec<(TierRef, Vec<Problem>)> = stream::iter(wanted.iter())
        .map(|tier| {
            let exists = known.contains_key(&tier.namespace);
            let allowed =
                namespace_allowed(&ctx.settings.collector_guard, operator_ns, &tier.namespace);
            async move {
                let problems = if !allowed {
                    vec![namespace_not_allowed(&ctx.settings, tier)]
                } else if exists {
                    ensure(ctx, name, spec, tier, owner, enforce).await
                } else {
                    vec![missing_namespace(spec, tier)]
                };
                (tier.clone(), problems)
            }
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        // Boxed so the Send check sees concrete lifetimes (rust-lang/rust#110338).
        .boxed()
        .collect()
        .await;

    let results: Vec<(TierRef, Vec<Problem>, Readiness)> = results
        .into_iter()
        .map(|(tier, p)| {
            let live = readiness(deployment_of(ctx, name, &tier).as_deref());
            (tier, p, live)
        })
        .collect();
    let judged = judge(
        name,
        spec,
        operator_ns,
        selected_namespaces,
        enforce,
        &results,
    );
    problems.extend(judged.problems);
    let readiness_of: BTreeMap<&TierRef, &Readiness> =
        results.iter().map(|(t, _, r)| (t, r)).collect();
    let live = |tier: &TierRef| {
        readiness_of
            .get(tier)
            .map_or(Readiness::Absent, |r| (*r).clone())
    };
    CollectorOutcome {
        problems,
        status: Some(collector_status(name, spec, operator_ns, &wanted, live)),
        serving: judged.serving,
        waiting: judged.waiting,
    }
}

/// What the tiers' problems and readiness mean for the namespaces they serve.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub problems: Vec<Problem>,
    pub serving: BTreeSet<String>,
    pub waiting: BTreeMap<String, String>,
}

/// Judges each planned tier (its planning/apply problems and the readiness of
/// its Deployment) and then each selected namespace: served when every tier
/// it sends through serves, waiting while one comes up, held otherwise. In
/// DryRun nothing is applied, so only the plan is judged.
pub fn judge(
    policy: &str,
    spec: &TracingPolicySpec,
    operator_ns: &str,
    selected_namespaces: &[String],
    enforce: bool,
    tiers: &[(TierRef, Vec<Problem>, Readiness)],
) -> Verdict {
    let mut judged: BTreeMap<&TierRef, Judged> = BTreeMap::new();
    let mut collector_problems = Vec::new();
    for (tier, p, live) in tiers {
        let state = if !p.is_empty() {
            Judged::Broken
        } else if !enforce {
            Judged::Serving
        } else {
            match live {
                Readiness::Ready { .. } => Judged::Serving,
                Readiness::Absent => Judged::Waiting(starting(tier, policy, None)),
                Readiness::Starting { replicas } => {
                    Judged::Waiting(starting(tier, policy, Some(*replicas)))
                }
                Readiness::Unavailable { replicas } => {
                    collector_problems.push(unavailable(tier, policy, *replicas));
                    Judged::Broken
                }
                Readiness::Stuck { replicas, message } => {
                    collector_problems.push(stuck(tier, policy, *replicas, message));
                    Judged::Broken
                }
            }
        };
        collector_problems.extend(p.iter().cloned());
        judged.insert(tier, state);
    }
    collector_problems.sort_by(|a, b| (a.reason, &a.message).cmp(&(b.reason, &b.message)));

    let mut serving = BTreeSet::new();
    let mut waiting = BTreeMap::new();
    for ns in selected_namespaces {
        let mut wait = None;
        let mut broken = false;
        for tier in tiers_of_namespace(spec, operator_ns, ns) {
            match judged.get(&tier) {
                Some(Judged::Serving) => {}
                Some(Judged::Waiting(message)) => {
                    wait.get_or_insert_with(|| message.clone());
                }
                Some(Judged::Broken) | None => broken = true,
            }
        }
        match (broken, wait) {
            (true, _) => {}
            (false, Some(message)) => {
                waiting.insert(ns.clone(), message);
            }
            (false, None) => {
                serving.insert(ns.clone());
            }
        }
    }
    Verdict {
        problems: bounded(collector_problems),
        serving,
        waiting,
    }
}

/// What one tier means for the workloads that send through it.
enum Judged {
    Serving,
    /// Coming up: the workloads wait, with this message.
    Waiting(String),
    /// A problem (reported): the workloads are held.
    Broken,
}

fn deployment_of(ctx: &Context, policy: &str, tier: &TierRef) -> Option<Arc<Deployment>> {
    ctx.collectors
        .deployments
        .get(&ObjectRef::new(&tier.tier.object_name(policy)).within(&tier.namespace))
}

/// Reason of a tier that had rolled out and has no ready replica now; it clears
/// by itself, so the policy is `Degraded` but not `Stalled`.
pub const REASON_UNAVAILABLE: &str = "CollectorUnavailable";
/// Reason of a tier without a ready replica past its progress deadline.
pub const REASON_STUCK: &str = "CollectorProgressDeadlineExceeded";

fn deployment_name(tier: &TierRef, policy: &str) -> String {
    format!("{}/{}", tier.namespace, tier.tier.object_name(policy))
}

fn starting(tier: &TierRef, policy: &str, replicas: Option<i32>) -> String {
    let ready = replicas.map_or_else(String::new, |r| format!(" (0/{r} ready)"));
    format!(
        "waiting for the {} (Deployment {}) to have a ready replica{ready}",
        tier.tier.describe(),
        deployment_name(tier, policy)
    )
}

fn unavailable(tier: &TierRef, policy: &str, replicas: i32) -> Problem {
    Problem {
        reason: REASON_UNAVAILABLE,
        message: format!(
            "the {} (Deployment {}) have no ready replica (0/{replicas}){}; workloads that send through them are not switched to them until one is ready",
            tier.tier.describe(),
            deployment_name(tier, policy),
            passing_on(tier.tier)
        ),
    }
}

fn stuck(tier: &TierRef, policy: &str, replicas: i32, message: &str) -> Problem {
    Problem {
        reason: REASON_STUCK,
        message: format!(
            "the {} (Deployment {}) have no ready replica (0/{replicas}) and their rollout exceeded its progress deadline ({message}){}; workloads that send through them are not switched to them",
            tier.tier.describe(),
            deployment_name(tier, policy),
            passing_on(tier.tier)
        ),
    }
}

/// What else stops with a tier.
fn passing_on(tier: Tier) -> &'static str {
    match tier {
        Tier::Sampler => ": the routers have nowhere to send traces",
        Tier::Router | Tier::Single => "",
    }
}

/// `status.collector`: the workloads' endpoint, and with tail sampling each
/// tier's replicas and ready replicas, from `live` (the readiness of a tier's
/// Deployment).
pub fn collector_status(
    policy: &str,
    spec: &TracingPolicySpec,
    operator_ns: &str,
    wanted: &BTreeSet<TierRef>,
    live: impl Fn(&TierRef) -> Readiness,
) -> CollectorStatus {
    let mut routers = CollectorTierStatus {
        endpoint: status_endpoint(policy, spec, operator_ns),
        ..CollectorTierStatus::default()
    };
    let mut samplers = CollectorTierStatus {
        endpoint: format!(
            "{}:{COLLECTOR_OTLP_GRPC_PORT}",
            sampler_host(policy, &sampler_namespace(spec, operator_ns))
        ),
        ..CollectorTierStatus::default()
    };
    for tier in wanted {
        let live = live(tier);
        let planned = match tier.tier {
            Tier::Sampler => spec.collector.sampling.replicas,
            Tier::Single | Tier::Router => spec.collector.replicas,
        };
        let replicas = match &live {
            Readiness::Absent => planned,
            Readiness::Ready { replicas, .. }
            | Readiness::Starting { replicas }
            | Readiness::Unavailable { replicas }
            | Readiness::Stuck { replicas, .. } => *replicas,
        };
        let counts = if tier.tier == Tier::Sampler {
            &mut samplers
        } else {
            &mut routers
        };
        counts.replicas += replicas;
        counts.ready_replicas += live.ready_replicas();
    }
    let tiered = crate::plan::sampling::tail_decides(spec);
    CollectorStatus {
        endpoint: routers.endpoint.clone(),
        ready_replicas: routers.ready_replicas,
        samplers: tiered.then_some(samplers),
        routers: tiered.then_some(routers),
        losses: None,
    }
}

/// `status.collector.endpoint`: the one endpoint of a central collector, or the
/// pattern of the per-namespace ones with `<namespace>` in place of the namespace.
pub fn status_endpoint(policy: &str, spec: &TracingPolicySpec, operator_namespace: &str) -> String {
    // As the workloads' OTEL_EXPORTER_OTLP_TRACES_ENDPOINT reads.
    crate::plan::env::traces_endpoint(&export_target(
        policy,
        spec,
        operator_namespace,
        "<namespace>",
    ))
}

/// Keeps the first [`MAX_PROBLEMS`] problems and counts the rest in one more.
fn bounded(mut problems: Vec<Problem>) -> Vec<Problem> {
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        let reason = problems[MAX_PROBLEMS].reason;
        problems.truncate(MAX_PROBLEMS);
        problems.push(Problem {
            reason,
            message: format!("and {more} more collector problems"),
        });
    }
    problems
}

/// Reason of a policy, or of one namespace's collector, outside the operator's
/// collector settings.
pub const REASON_NOT_ALLOWED: &str = "CollectorNotAllowed";

/// The problem of a policy that [`check_policy`] refuses, naming each field; the
/// reconcile then creates and changes nothing for it.
pub fn not_allowed(spec: &TracingPolicySpec, settings: &super::Settings) -> Option<Problem> {
    let violations = check_policy(
        spec,
        &settings.operator_namespace,
        &settings.collector_guard,
    );
    (!violations.is_empty()).then(|| Problem {
        reason: REASON_NOT_ALLOWED,
        message: format!(
            "{}; outside the operator's collector settings, so no collector is deployed or changed and no workload is touched",
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

/// A PerNamespace collector in a namespace the settings do not allow: that
/// namespace's workloads are held, as with a missing Secret.
fn namespace_not_allowed(settings: &super::Settings, tier: &TierRef) -> Problem {
    Problem {
        reason: REASON_NOT_ALLOWED,
        message: format!(
            "spec.collector.placement: PerNamespace needs a collector in namespace {}, which is not an allowed collector namespace (allowed: {}); {}",
            tier.namespace,
            settings
                .collector_guard
                .describe_namespaces(&settings.operator_namespace),
            consequence(tier)
        ),
    }
}

fn missing_namespace(spec: &TracingPolicySpec, tier: &TierRef) -> Problem {
    let field = if spec.collector.namespace.is_some() {
        "spec.collector.namespace"
    } else {
        "the operator's namespace (spec.collector.namespace is not set)"
    };
    Problem {
        reason: "CollectorNamespaceNotFound",
        message: format!(
            "{field}: namespace {} does not exist; the {} is not deployed and workloads are left as they are",
            tier.namespace,
            match tier.tier {
                Tier::Single => "collector",
                Tier::Router | Tier::Sampler => "collector tier",
            }
        ),
    }
}

/// The reason a planning error is reported under.
pub fn error_reason(error: &CollectorError) -> &'static str {
    match error {
        CollectorError::MissingHeadersSecret { .. } => "SecretNotFound",
        CollectorError::HeaderKeyCollision { .. } => "HeaderKeyCollision",
        CollectorError::InvalidHeaderKey { .. } => "InvalidHeaderKey",
        CollectorError::InvalidDuration(_) => "InvalidDuration",
        CollectorError::Render(_) => "CollectorConfigInvalid",
    }
}

/// What a tier with a problem leaves undone, appended to the problem's message.
fn consequence(tier: &TierRef) -> String {
    match tier.tier {
        Tier::Single => format!(
            "the collector in {} is not deployed or updated, and the workloads it serves are left as they are",
            tier.namespace
        ),
        Tier::Router | Tier::Sampler => format!(
            "the {} in {} are not deployed or updated, and the workloads that send through them are left as they are",
            tier.tier.describe(),
            tier.namespace
        ),
    }
}

/// Reads the Secrets the tier `tier` needs, by name (or from `cache`).
/// Returns the key names of the header Secrets, or the problems (a Secret or
/// key that is missing).
async fn read_secrets(
    client: &Client,
    cache: &SecretKeys,
    spec: &TracingPolicySpec,
    tier: &TierRef,
) -> Result<HeaderSecretKeys, Vec<Problem>> {
    let ns = tier.namespace.as_str();
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let now = Instant::now();
    let mut keys: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut headers = HeaderSecretKeys::new();
    for secret in referenced_secrets(spec) {
        if !keys.contains_key(&secret.name) {
            let cached = cache.get(ns, &secret.name, now);
            let read = match cached {
                Some(k) => Ok(Some(k)),
                None => api
                    .get_opt(&secret.name)
                    .await
                    .map(|found| found.map(|s| s.data.unwrap_or_default().into_keys().collect())),
            };
            let found: Option<BTreeSet<String>> = match read {
                Ok(found) => found,
                Err(error) => {
                    problems.push(Problem {
                        reason: "SecretUnreadable",
                        message: format!(
                            "{}: reading Secret {ns}/{}: {error}; {}",
                            secret.field,
                            secret.name,
                            consequence(tier)
                        ),
                    });
                    continue;
                }
            };
            match &found {
                Some(k) => cache.put(ns, &secret.name, k.clone(), now),
                None => cache.forget(ns, &secret.name),
            }
            keys.insert(secret.name.clone(), found);
        }
        match (keys.get(&secret.name).and_then(Option::as_ref), &secret.key) {
            (None, _) => problems.push(Problem {
                reason: "SecretNotFound",
                message: format!(
                    "{}: Secret {ns}/{} does not exist; {}",
                    secret.field,
                    secret.name,
                    consequence(tier)
                ),
            }),
            (Some(present), Some(key)) if !present.contains(key) => {
                // Read it again on the retry: the key may be added to it.
                cache.forget(ns, &secret.name);
                problems.push(Problem {
                    reason: "SecretKeyNotFound",
                    message: format!(
                        "{}: Secret {ns}/{} has no key {key:?}; {}",
                        secret.field,
                        secret.name,
                        consequence(tier)
                    ),
                });
            }
            (Some(present), None) => {
                headers.insert(secret.name.clone(), present.clone());
            }
            (Some(_), Some(_)) => {}
        }
    }
    if problems.is_empty() {
        Ok(headers)
    } else {
        Err(problems)
    }
}

/// Plans `tier` and, in Enforce, applies whichever of its objects differ from
/// the cache. An empty result means it may serve workloads once it is ready.
async fn ensure(
    ctx: &Arc<Context>,
    policy: &str,
    spec: &TracingPolicySpec,
    tier: &TierRef,
    owner: Option<&OwnerReference>,
    enforce: bool,
) -> Vec<Problem> {
    let header_secret_keys = if tier.tier.reads_secrets() {
        match read_secrets(&ctx.client, &ctx.collectors.secret_keys, spec, tier).await {
            Ok(read) => read,
            Err(problems) => return problems,
        }
    } else {
        Default::default()
    };
    let samplers = sampler_namespace(spec, &ctx.settings.operator_namespace);
    let plan = match plan_collector(&CollectorInput {
        policy,
        spec,
        tier: tier.tier,
        namespace: &tier.namespace,
        sampler_namespace: &samplers,
        header_secret_keys: &header_secret_keys,
        owner,
    }) {
        Ok(plan) => plan,
        Err(error) => {
            return vec![Problem {
                reason: error_reason(&error),
                message: format!("{error}; {}", consequence(tier)),
            }];
        }
    };
    if !enforce {
        return Vec::new();
    }
    // The ConfigMap and Service first, so the new pods find their configuration.
    let stores = &ctx.collectors;
    let mut problems = Vec::new();
    let CollectorPlan {
        config_map,
        service,
        deployment,
        pod_disruption_budget,
        autoscaler,
        ..
    } = plan;
    problems.extend(converge(ctx, &stores.config_maps, &config_map).await);
    problems.extend(converge(ctx, &stores.services, &service).await);
    problems.extend(converge(ctx, &stores.pod_disruption_budgets, &pod_disruption_budget).await);
    if problems.is_empty() {
        problems.extend(converge(ctx, &stores.deployments, &deployment).await);
    }
    if let Some(autoscaler) = autoscaler {
        problems.extend(converge(ctx, &stores.autoscalers, &autoscaler).await);
    }
    problems
}

/// Applies `desired` unless the cached object already carries it.
async fn converge<K>(ctx: &Arc<Context>, store: &Store<K>, desired: &K) -> Option<Problem>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let name = desired.name_any();
    let ns = desired.namespace().unwrap_or_default();
    let failed = |message: String| Problem {
        reason: "CollectorApplyFailed",
        message,
    };
    let body = match apply_body(desired) {
        Ok(body) => body,
        Err(error) => return Some(failed(format!("serializing {kind} {ns}/{name}: {error}"))),
    };
    let live = store
        .get(&ObjectRef::new(&name).within(&ns))
        .and_then(|l| serde_json::to_value(l.as_ref()).ok());
    if live.as_ref().is_some_and(|l| is_current(&body, l)) {
        return None;
    }
    // What differs, for the log: a missing object, a changed intent or a changed field.
    let why = match &live {
        None => "absent".to_string(),
        Some(l) => first_difference(&body, l).map_or_else(
            || APPLIED_HASH_ANNOTATION.to_string(),
            |path| format!("{path} differs"),
        ),
    };
    // Force: these objects are entirely the operator's; a field someone else
    // took over is taken back.
    match ctx
        .writer
        .apply_owned(&ApiResource::erase::<K>(&()), Some(&ns), &name, &body)
        .await
    {
        Ok(_) => {
            info!(%kind, namespace = %ns, %name, %why, "applied collector object");
            None
        }
        Err(error) => Some(failed(format!("applying {kind} {ns}/{name}: {error}"))),
    }
}

/// Deletes this policy's collector objects that no wanted tier has.
async fn delete_unwanted(
    ctx: &Arc<Context>,
    policy: &str,
    spec: &TracingPolicySpec,
    wanted: &BTreeSet<TierRef>,
) -> Vec<Problem> {
    let objects: BTreeSet<ObjectId> = wanted
        .iter()
        .map(|t| (t.namespace.clone(), t.tier.object_name(policy)))
        .collect();
    // An autoscaler only where the plan has one.
    let autoscaled: BTreeSet<ObjectId> = wanted
        .iter()
        .filter(|t| t.tier != Tier::Sampler && spec.collector.autoscaling.is_some())
        .map(|t| (t.namespace.clone(), t.tier.object_name(policy)))
        .collect();
    let stores = &ctx.collectors;
    let mut problems = Vec::new();
    for (ns, name) in unwanted(&stores.autoscalers, policy, &autoscaled) {
        problems.extend(delete::<HorizontalPodAutoscaler>(ctx, &ns, &name).await);
    }
    for (ns, name) in unwanted(&stores.config_maps, policy, &objects) {
        problems.extend(delete::<ConfigMap>(ctx, &ns, &name).await);
    }
    for (ns, name) in unwanted(&stores.services, policy, &objects) {
        problems.extend(delete::<Service>(ctx, &ns, &name).await);
    }
    for (ns, name) in unwanted(&stores.pod_disruption_budgets, policy, &objects) {
        problems.extend(delete::<PodDisruptionBudget>(ctx, &ns, &name).await);
    }
    for (ns, name) in unwanted(&stores.deployments, policy, &objects) {
        problems.extend(delete::<Deployment>(ctx, &ns, &name).await);
    }
    problems
}

/// Namespace and name of a collector object.
pub type ObjectId = (String, String);

/// Cached collector objects of `policy` (its label, and a name one of its tiers
/// has: the operator never deletes anything else) that are not `wanted`.
pub fn unwanted<K>(store: &Store<K>, policy: &str, wanted: &BTreeSet<ObjectId>) -> Vec<ObjectId>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let names = [
        Tier::Single.object_name(policy),
        Tier::Sampler.object_name(policy),
    ];
    let mut out: Vec<ObjectId> = store
        .state()
        .iter()
        .filter(|o| o.labels().get(POLICY_ANNOTATION).map(String::as_str) == Some(policy))
        .filter_map(|o| Some((o.namespace()?, o.meta().name.clone()?)))
        .filter(|(_, name)| names.contains(name))
        .filter(|id| !wanted.contains(id))
        .collect();
    out.sort();
    out
}

async fn delete<K>(ctx: &Arc<Context>, ns: &str, name: &str) -> Option<Problem>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    match ctx
        .writer
        .delete_owned(&ApiResource::erase::<K>(&()), ns, name)
        .await
    {
        Ok(()) => {
            info!(%kind, namespace = %ns, %name, "deleted collector object the policy no longer wants");
            None
        }
        Err(error) => Some(Problem {
            reason: "CollectorDeleteFailed",
            message: format!("deleting {kind} {ns}/{name}: {error}"),
        }),
    }
}

#[cfg(test)]
mod tests;
