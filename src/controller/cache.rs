//! The operator's view of the cluster, kept by watches, and the routing of each
//! change to the policies it concerns.
//!
//! Workloads of every kind are watched into compact projections
//! ([`crate::workload::Workload`]), namespaces into their labels. When a
//! workload changes in a way planning can see (its projection differs), the
//! change goes only to the policies that select it or own it, before or after
//! the change (their selectors, its namespace's labels and its
//! `tracing.caas.io/policy` annotation): each such policy gets the workload in
//! its dirty set and a reconcile request. An event no policy cares about costs
//! no reconcile, and there is no debounce that busy neighbours could starve.
//! A namespace whose labels change, and any policy change, re-plan every policy
//! (they change the basis of every decision; see `plan::index`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::GuardedPolicy;
use crate::api::{POLICY_ANNOTATION, WorkloadKind};
use crate::plan::NamespaceView;
use crate::plan::selection::Selection;
use crate::workload::{Workload, WorkloadId};

/// A reconcile request for one policy.
pub type Trigger = ObjectRef<GuardedPolicy>;

/// What the watches have seen, and where changes go.
pub struct Cache {
    workloads: RwLock<HashMap<WorkloadId, Arc<Workload>>>,
    /// Shared with the reconciles that read it; a change copies it first.
    namespaces: RwLock<Arc<BTreeMap<String, NamespaceView>>>,
    /// Incremented whenever a namespace appears, goes or changes its labels.
    namespace_epoch: AtomicU64,
    /// How many watches have listed everything once.
    synced: watch::Sender<usize>,
    router: Router,
}

/// The watches: every workload kind and namespaces.
const WATCHES: usize = WorkloadKind::ALL.len() + 1;

/// A policy's compiled selector, with the generation it was compiled for
/// (`None` when the selector is invalid or the policy is being deleted).
type Compiled = (Option<i64>, Option<Arc<Selection>>);

struct Router {
    operator_namespace: String,
    policies: Store<GuardedPolicy>,
    /// Compiled selectors by policy name.
    compiled: Mutex<HashMap<String, Compiled>>,
    dirty: Mutex<HashMap<String, HashSet<WorkloadId>>>,
    trigger: mpsc::UnboundedSender<Trigger>,
}

impl Cache {
    /// A cache that routes to the policies of `policies` through `trigger`.
    pub fn new(
        operator_namespace: &str,
        policies: Store<GuardedPolicy>,
        trigger: mpsc::UnboundedSender<Trigger>,
    ) -> Arc<Self> {
        Arc::new(Cache {
            workloads: RwLock::default(),
            namespaces: RwLock::default(),
            namespace_epoch: AtomicU64::new(0),
            synced: watch::Sender::new(0),
            router: Router {
                operator_namespace: operator_namespace.to_string(),
                policies,
                compiled: Mutex::default(),
                dirty: Mutex::default(),
                trigger,
            },
        })
    }

    /// Starts the watches; they run until the runtime stops.
    pub fn start(self: &Arc<Self>, client: &Client) {
        for kind in WorkloadKind::ALL {
            let cache = self.clone();
            let events = kind.info().watch(client.clone());
            tokio::spawn(async move { cache.follow_workloads(kind, events).await });
        }
        let cache = self.clone();
        let namespaces = watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .boxed();
        tokio::spawn(async move { cache.follow_namespaces(namespaces).await });
    }

    /// Waits until every watch has listed once, so planning never sees a partial cluster.
    pub async fn wait_until_ready(&self) -> Result<(), watch::error::RecvError> {
        let mut rx = self.synced.subscribe();
        rx.wait_for(|n| *n >= WATCHES).await.map(drop)
    }

    pub fn is_ready(&self) -> bool {
        *self.synced.borrow() >= WATCHES
    }

    async fn follow_workloads(
        self: Arc<Self>,
        kind: WorkloadKind,
        mut events: futures::stream::BoxStream<
            'static,
            Result<crate::workload::WatchEvent, watcher::Error>,
        >,
    ) {
        let mut relisting: Option<HashSet<WorkloadId>> = None;
        let mut synced = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => relisting = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(w)) => {
                    if let Some(seen) = relisting.as_mut() {
                        seen.insert(w.id.clone());
                    }
                    self.upsert(w);
                }
                Ok(watcher::Event::InitDone) => {
                    // A re-list after a lost watch: what it did not return is gone.
                    if let Some(seen) = relisting.take() {
                        let gone: Vec<WorkloadId> = self
                            .read_workloads()
                            .keys()
                            .filter(|id| id.kind == kind && !seen.contains(id))
                            .cloned()
                            .collect();
                        for id in gone {
                            self.remove(&id);
                        }
                    }
                    if !synced {
                        synced = true;
                        self.synced.send_modify(|n| *n += 1);
                    }
                }
                Ok(watcher::Event::Apply(w)) => self.upsert(w),
                Ok(watcher::Event::Delete(w)) => self.remove(&w.id),
                Err(error) => warn!(%kind, %error, "workload watch error; retrying"),
            }
        }
    }

    async fn follow_namespaces(
        self: Arc<Self>,
        mut events: futures::stream::BoxStream<
            'static,
            Result<watcher::Event<Namespace>, watcher::Error>,
        >,
    ) {
        let mut relisting: Option<HashSet<String>> = None;
        let mut synced = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => relisting = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(ns)) => {
                    if let Some(seen) = relisting.as_mut() {
                        seen.insert(ns.name_any());
                    }
                    self.upsert_namespace(&ns);
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(seen) = relisting.take() {
                        let gone: Vec<String> = self
                            .read_namespaces()
                            .keys()
                            .filter(|n| !seen.contains(*n))
                            .cloned()
                            .collect();
                        for name in gone {
                            self.remove_namespace(&name);
                        }
                    }
                    if !synced {
                        synced = true;
                        self.synced.send_modify(|n| *n += 1);
                    }
                }
                Ok(watcher::Event::Apply(ns)) => self.upsert_namespace(&ns),
                Ok(watcher::Event::Delete(ns)) => self.remove_namespace(&ns.name_any()),
                Err(error) => warn!(%error, "namespace watch error; retrying"),
            }
        }
    }

    fn read_workloads(&self) -> std::sync::RwLockReadGuard<'_, HashMap<WorkloadId, Arc<Workload>>> {
        // The map holds plain values: a panic elsewhere cannot leave it inconsistent.
        self.workloads
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_namespaces(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, Arc<BTreeMap<String, NamespaceView>>> {
        self.namespaces
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in a workload as a write of the operator's returned it, before its
    /// watch event arrives, so that the next reconcile never plans on the state
    /// before its own write (the change is routed like any other).
    pub fn written(&self, w: Workload) {
        self.upsert(w);
    }

    fn upsert(&self, w: Workload) {
        let (new, old) = {
            let mut all = self
                .workloads
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if all.get(&w.id).is_some_and(|old| **old == w) {
                // The same as cached (the watch's echo of the operator's own write,
                // a status change planning does not read): the cached copy stays,
                // so the policies' indexes keep sharing it rather than holding
                // one copy each of an equal workload.
                return;
            }
            let new = Arc::new(w);
            let old = all.insert(new.id.clone(), new.clone());
            (new, old)
        };
        self.router
            .route(&new.id, old.as_deref(), Some(&new), &self.read_namespaces());
    }

    fn remove(&self, id: &WorkloadId) {
        let old = self
            .workloads
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        if let Some(old) = old {
            self.router
                .route(id, Some(&old), None, &self.read_namespaces());
        }
    }

    fn upsert_namespace(&self, ns: &Namespace) {
        let view = NamespaceView {
            name: ns.name_any(),
            labels: ns.labels().clone(),
        };
        let changed = {
            let mut all = self
                .namespaces
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if all.get(&view.name) == Some(&view) {
                false
            } else {
                Arc::make_mut(&mut all).insert(view.name.clone(), view);
                true
            }
        };
        if changed {
            self.namespace_epoch.fetch_add(1, Ordering::Relaxed);
            self.router.trigger_all();
        }
    }

    fn remove_namespace(&self, name: &str) {
        let removed = {
            let mut all = self
                .namespaces
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.contains_key(name) && Arc::make_mut(&mut all).remove(name).is_some()
        };
        if removed {
            self.namespace_epoch.fetch_add(1, Ordering::Relaxed);
            self.router.trigger_all();
        }
    }

    /// The namespaces as planning sees them (shared, not copied).
    pub fn namespace_views(&self) -> Arc<BTreeMap<String, NamespaceView>> {
        self.read_namespaces().clone()
    }

    pub fn namespace_epoch(&self) -> u64 {
        self.namespace_epoch.load(Ordering::Relaxed)
    }

    pub fn get(&self, id: &WorkloadId) -> Option<Arc<Workload>> {
        self.read_workloads().get(id).cloned()
    }

    /// Every workload, in no particular order.
    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        self.read_workloads().values().cloned().collect()
    }

    /// Workloads carrying `policy`'s annotation.
    pub fn owned_by(&self, policy: &str) -> Vec<Arc<Workload>> {
        self.read_workloads()
            .values()
            .filter(|w| w.annotations.get(POLICY_ANNOTATION).map(String::as_str) == Some(policy))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read_workloads().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the workloads that changed for `policy` since the last call.
    pub fn take_dirty(&self, policy: &str) -> HashSet<WorkloadId> {
        self.router
            .dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy)
            .unwrap_or_default()
    }

    /// Asks every policy to reconcile.
    pub fn trigger_all(&self) {
        self.router.trigger_all();
    }

    /// Asks one policy to reconcile.
    pub fn trigger(&self, policy: &str) {
        let _ = self.router.trigger.send(ObjectRef::new(policy));
    }

    /// Forgets a deleted policy's routing state.
    pub fn forget_policy(&self, policy: &str) {
        self.router
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        self.take_dirty(policy);
    }
}

impl Router {
    /// Sends the change of workload `id` (from `old` to `new`) to every policy
    /// that selects or owns either.
    fn route(
        &self,
        id: &WorkloadId,
        old: Option<&Workload>,
        new: Option<&Workload>,
        namespaces: &BTreeMap<String, NamespaceView>,
    ) {
        let policies = self.policies.state();
        let mut hits: Vec<String> = Vec::new();
        for guarded in &policies {
            let name = guarded.name_any();
            let owns = |w: Option<&Workload>| {
                w.is_some_and(|w| w.annotations.get(POLICY_ANNOTATION) == Some(&name))
            };
            let selection = guarded.0.as_ref().ok().and_then(|p| self.selection(p));
            let selects = |w: Option<&Workload>| {
                let (Some(w), Some(sel)) = (w, selection.as_ref()) else {
                    return false;
                };
                sel.selects(namespaces.get(&*w.id.namespace), w)
            };
            if owns(old) || owns(new) || selects(old) || selects(new) {
                hits.push(name);
            }
        }
        if hits.is_empty() {
            return;
        }
        {
            let mut dirty = self
                .dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for name in &hits {
                dirty.entry(name.clone()).or_default().insert(id.clone());
            }
        }
        for name in hits {
            let _ = self.trigger.send(ObjectRef::new(&name));
        }
    }

    /// The policy's compiled selector (`None` when it is invalid or the policy is
    /// being deleted), compiled once per generation.
    fn selection(&self, policy: &crate::api::TracingPolicy) -> Option<Arc<Selection>> {
        let name = policy.name_any();
        let generation = policy.metadata.generation;
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((g, sel)) = compiled.get(&name)
            && *g == generation
            && policy.metadata.deletion_timestamp.is_none()
        {
            return sel.clone();
        }
        let sel = if policy.metadata.deletion_timestamp.is_some() {
            None
        } else {
            Selection::new(&policy.spec, &self.operator_namespace)
                .ok()
                .map(Arc::new)
        };
        compiled.insert(name, (generation, sel.clone()));
        sel
    }

    fn trigger_all(&self) {
        for p in self.policies.state() {
            let _ = self.trigger.send(ObjectRef::new(&p.name_any()));
        }
    }
}
