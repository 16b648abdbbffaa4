//! The workloads the operator instruments, as planning and rollout read them.
//!
//! Each kind has a module of its own (`deployment`, `statefulset`, `daemonset`,
//! `cronjob`) implementing [`Kind`]: its API group and version, where its pod
//! template sits, its semantic-convention name key, and when its rollout is
//! complete, as `kubectl rollout status` and the kind's own controller define
//! it. Adding a kind is a module here, a variant of [`WorkloadKind`], an arm in
//! [`info`], and the RBAC to read and patch it.
//!
//! The watches deserialize each object straight into a [`Workload`]: a compact
//! projection holding only what planning and rollout read (labels, the
//! annotations the operator reads, container names and images, the names of
//! the variables each container sets and a digest of each value, and the rollout
//! status fields). No full `k8s-openapi` object is ever built or kept, and the
//! strings many workloads share (namespaces, container and variable names,
//! images) are interned, so the cache costs little per workload.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ApiResource;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

pub use crate::api::WorkloadKind;
use crate::api::{ANNOTATION_PREFIX, ENV_VALUE_PREFIX, FIELD_MANAGER};
use crate::plan::injection::AGENT_ENV_PREFIX;

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
mod small_map;
pub mod statefulset;

pub use small_map::SmallMap;

/// Label on objects the operator creates itself (collectors); they are never instrumented.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/name`: a service name when no annotation gives one.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/version`: the service version.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";
/// The OpenTelemetry annotation that names a service.
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";

/// What one kind of workload is, statically: its API and how to read it.
pub trait Kind: Send + Sync + 'static {
    const KIND: WorkloadKind;
    /// API group (`apps`, `batch`) and version.
    const GROUP: &'static str;
    const VERSION: &'static str;
    const PLURAL: &'static str;
    /// Where the pod template sits in the object, for example `["spec", "template"]`.
    const TEMPLATE_PATH: &'static [&'static str];
    /// The `k8s.<kind>.name` resource attribute of the OpenTelemetry semantic conventions.
    const SEMCONV_NAME_KEY: &'static str;
    /// The object's `spec` and `status`, only as far as planning and rollout read them.
    type Spec: DeserializeOwned + Default;
    type Status: DeserializeOwned + Default;

    fn template(spec: &Self::Spec) -> Option<&TemplateWire>;
    fn rollout(generation: i64, spec: &Self::Spec, status: &Self::Status) -> RolloutState;
    /// The kind's controller reports the current template rolled out as far as
    /// the operator can ask of it.
    fn is_complete(state: &RolloutState) -> bool;
    /// What the rollout is at, in the kind's words, for status messages.
    fn describe(state: &RolloutState) -> String;
}

/// What the rest of the operator asks of a kind at run time.
pub trait KindInfo: Sync {
    fn kind(&self) -> WorkloadKind;
    /// `apps/v1`, `batch/v1`.
    fn api_version(&self) -> String;
    fn template_path(&self) -> &'static [&'static str];
    fn semconv_name_key(&self) -> &'static str;
    fn is_complete(&self, state: &RolloutState) -> bool;
    fn describe(&self, state: &RolloutState) -> String;
    /// For writes and reads through the dynamic API.
    fn api_resource(&self) -> ApiResource;
    /// Projects an object of this kind given as JSON (an API response).
    fn project(&self, object: serde_json::Value) -> Result<Workload, serde_json::Error>;
    /// A watch of every object of this kind (the operator's own collectors left
    /// out by label), each event already projected into a [`Workload`].
    fn watch(&self, client: Client) -> BoxStream<'static, Result<WatchEvent, watcher::Error>>;
}

/// A watch event of one kind, projected.
pub type WatchEvent = watcher::Event<Workload>;

struct Registered<K>(PhantomData<K>);

/// The run-time description of `kind`.
pub fn info(kind: WorkloadKind) -> &'static dyn KindInfo {
    match kind {
        WorkloadKind::Deployment => &Registered::<deployment::Deployment>(PhantomData),
        WorkloadKind::StatefulSet => &Registered::<statefulset::StatefulSet>(PhantomData),
        WorkloadKind::DaemonSet => &Registered::<daemonset::DaemonSet>(PhantomData),
        WorkloadKind::CronJob => &Registered::<cronjob::CronJob>(PhantomData),
    }
}

impl<K: Kind> KindInfo for Registered<K> {
    fn kind(&self) -> WorkloadKind {
        K::KIND
    }
    fn api_version(&self) -> String {
        format!("{}/{}", K::GROUP, K::VERSION)
    }
    fn template_path(&self) -> &'static [&'static str] {
        K::TEMPLATE_PATH
    }
    fn semconv_name_key(&self) -> &'static str {
        K::SEMCONV_NAME_KEY
    }
    fn is_complete(&self, state: &RolloutState) -> bool {
        K::is_complete(state)
    }
    fn describe(&self, state: &RolloutState) -> String {
        K::describe(state)
    }
    fn api_resource(&self) -> ApiResource {
        api_resource::<K>()
    }
    fn project(&self, object: serde_json::Value) -> Result<Workload, serde_json::Error> {
        from_json::<K>(object)
    }
    fn watch(&self, client: Client) -> BoxStream<'static, Result<WatchEvent, watcher::Error>> {
        let config = watcher::Config::default()
            .any_semantic()
            .labels(&format!("{MANAGED_BY_LABEL}!={FIELD_MANAGER}"));
        watcher(Api::<Projection<K>>::all(client), config)
            .default_backoff()
            .map(|event| {
                event.map(|e| match e {
                    watcher::Event::Apply(p) => watcher::Event::Apply(p.workload),
                    watcher::Event::Delete(p) => watcher::Event::Delete(p.workload),
                    watcher::Event::Init => watcher::Event::Init,
                    watcher::Event::InitApply(p) => watcher::Event::InitApply(p.workload),
                    watcher::Event::InitDone => watcher::Event::InitDone,
                })
            })
            .boxed()
    }
}

fn api_resource<K: Kind>() -> ApiResource {
    ApiResource {
        group: K::GROUP.to_string(),
        version: K::VERSION.to_string(),
        api_version: format!("{}/{}", K::GROUP, K::VERSION),
        kind: K::KIND.as_str().to_string(),
        plural: K::PLURAL.to_string(),
    }
}

impl WorkloadKind {
    /// The run-time description of this kind; see [`info`].
    pub fn info(self) -> &'static dyn KindInfo {
        info(self)
    }
}

// ------------------------------------------------------------------ the projection

/// Identity of a workload; orders by namespace, kind, name (the rollout order).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    pub namespace: Arc<str>,
    pub kind: WorkloadKind,
    pub name: Arc<str>,
}

impl WorkloadId {
    pub fn new(namespace: &str, kind: WorkloadKind, name: &str) -> Self {
        WorkloadId {
            namespace: intern(namespace),
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A workload as planning and rollout see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub id: WorkloadId,
    /// `metadata.labels`: what `selector.workloads` matches.
    pub labels: SmallMap,
    /// The annotations of `metadata.annotations` the operator reads (see
    /// [`reads_annotation`]); every other one is dropped while deserializing.
    pub annotations: SmallMap,
    pub template: Template,
    pub rollout: RolloutState,
}

/// The pod template, as far as planning reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Template {
    /// Only `app.kubernetes.io/name` and `app.kubernetes.io/version`.
    pub labels: SmallMap,
    /// The annotations the operator reads (see [`reads_annotation`]), except its
    /// own: those it compares through `ours` only.
    pub annotations: SmallMap,
    /// A digest of the operator's own template annotations (`tracing.caas.io/*`,
    /// `env.tracing.caas.io/*`), 0 when there are none: admission injection
    /// compares it with the plan's without keeping every value.
    pub ours: u64,
    /// The operator's live `tracing.caas.io/inject` value: the containers it
    /// last listed (see [`crate::plan::env::plan_workload`]).
    pub listed: Option<Box<str>>,
    /// `containers`, in pod order (init containers are never instrumented).
    pub containers: Vec<Container>,
}

/// One container of the pod template.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Container {
    pub name: Arc<str>,
    pub image: Option<Arc<str>>,
    /// `env`, in order: names, who owns each value, and a digest of the value.
    pub env: Vec<EnvEntry>,
    /// `JAVA_TOOL_OPTIONS` loads a Java agent (`-javaagent`) already.
    pub java_agent: bool,
}

impl Container {
    pub fn entry(&self, name: &str) -> Option<&EnvEntry> {
        self.env.iter().find(|e| &*e.name == name)
    }

    /// The user (not the operator) sets this variable.
    pub fn user_sets(&self, name: &str) -> bool {
        self.entry(name).is_some_and(|e| e.owner == EnvOwner::User)
    }

    /// Names of the entries whose value the operator owns.
    pub fn operator_env(&self) -> impl Iterator<Item = &EnvEntry> {
        self.env.iter().filter(|e| e.owner == EnvOwner::Operator)
    }
}

/// One `env` entry of a container.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvEntry {
    pub name: Arc<str>,
    /// [`env_digest`] of the value as the API server stores it.
    pub digest: u64,
    /// The value comes from `valueFrom` (a Secret, ConfigMap or field), so it
    /// cannot be appended to.
    pub value_from: bool,
    pub owner: EnvOwner,
    /// The operator's server-side apply lists this entry (it added it), whoever
    /// owns the value now. Server-side apply deletes an entry its applier stops
    /// listing even when another manager owns the value, so once the user took
    /// the value (`kubectl set env`) the operator must go on listing the entry,
    /// by name only, or its next apply deletes the user's value.
    pub listed_by_operator: bool,
}

/// Who owns an env entry's value, read from `managedFields`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvOwner {
    /// Anyone but the operator: the manifest, `kubectl set env`, `kubectl edit`,
    /// a forced server-side apply. The user's value always wins.
    User,
    /// The operator's server-side apply owns `f:value` or `f:valueFrom`.
    Operator,
}

/// The rollout-relevant status of a workload, read by its kind module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutState {
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
    /// `spec.paused` of a Deployment, `spec.suspend` of a CronJob.
    pub paused: bool,
    pub strategy: Strategy,
}

impl RolloutState {
    /// The workload's controller has seen the current template.
    pub fn observed(&self) -> bool {
        self.observed_generation >= self.generation
    }
}

/// How a workload's pods move to a new template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// The controller replaces pods by itself.
    #[default]
    RollingUpdate,
    /// A StatefulSet with `rollingUpdate.partition`: only the replicas at or above
    /// the partition are updated.
    Partitioned(i32),
    /// Pods change only when their owner deletes them (`OnDelete`).
    OnDelete,
    /// No pods of its own (a CronJob): the next Job uses the new template.
    NextRun,
}

/// What a rollout of pods is at, for example `1/2 replicas available, 2/2 updated`
/// (the words `unit` and `ready` are the kind's own).
fn describe_pods(s: &RolloutState, kind: &str, unit: &str, ready: &str) -> String {
    let mut text = String::new();
    if !s.observed() {
        text.push_str(&format!(
            "generation {} not yet observed by the {kind} controller (observed {}), ",
            s.generation, s.observed_generation
        ));
    }
    text.push_str(&format!(
        "{}/{} {unit} {ready}, {}/{} updated",
        s.available, s.desired, s.updated, s.desired
    ));
    match s.strategy {
        Strategy::OnDelete if s.old > 0 => text.push_str(&format!(
            ", {} still on the previous template until deleted (updateStrategy OnDelete)",
            s.old
        )),
        Strategy::Partitioned(p) => text.push_str(&format!(
            " (partition {p}: replicas below it keep the previous template)"
        )),
        _ if s.old > 0 => text.push_str(&format!(", {} still on the previous template", s.old)),
        _ => {}
    }
    text
}

// ------------------------------------------------------------------ deserializing

/// A watched object of kind `K`: its projection, plus the resourceVersion the watch
/// needs. Deserializing it is the projection: nothing else is kept.
pub struct Projection<K> {
    meta: ObjectMeta,
    pub workload: Workload,
    kind: PhantomData<K>,
}

// Not derived: the kind marker `K` itself need not be `Clone` or `Debug`.
impl<K> Clone for Projection<K> {
    fn clone(&self) -> Self {
        Projection {
            meta: self.meta.clone(),
            workload: self.workload.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Projection<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("workload", &self.workload)
            .finish()
    }
}

impl<K: Kind> kube::Resource for Projection<K> {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        K::KIND.as_str().into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        K::GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        K::VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        K::PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

#[derive(Deserialize)]
#[serde(bound = "")]
struct Wire<K: Kind> {
    metadata: MetaWire,
    #[serde(default)]
    spec: K::Spec,
    #[serde(default)]
    status: K::Status,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetaWire {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    generation: i64,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    labels: SmallMap,
    #[serde(default)]
    annotations: ReadAnnotations,
    #[serde(default)]
    managed_fields: Vec<ManagedFieldsWire>,
}

#[derive(Deserialize)]
struct ManagedFieldsWire {
    #[serde(default)]
    manager: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    subresource: String,
    #[serde(default, rename = "fieldsV1")]
    fields: Option<Box<serde_json::value::RawValue>>,
}

impl<'de, K: Kind> Deserialize<'de> for Projection<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::<K>::deserialize(deserializer)?;
        let meta = ObjectMeta {
            name: Some(wire.metadata.name.clone()),
            namespace: Some(wire.metadata.namespace.clone()),
            resource_version: wire.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        };
        Ok(Projection {
            meta,
            workload: project::<K>(wire),
            kind: PhantomData,
        })
    }
}

/// Projects an object of kind `K` given as JSON (for tools and benchmarks that
/// hold full objects).
pub fn from_json<K: Kind>(object: serde_json::Value) -> Result<Workload, serde_json::Error> {
    serde_json::from_value::<Projection<K>>(object).map(|p| p.workload)
}

fn project<K: Kind>(wire: Wire<K>) -> Workload {
    let owned = operator_owned_values(&wire.metadata.managed_fields, K::TEMPLATE_PATH);
    let template = K::template(&wire.spec).map_or_else(Template::default, |t| {
        let containers = t
            .spec
            .containers
            .iter()
            .map(|c| c.project(owned.get(c.name.as_str())))
            .collect();
        Template {
            labels: t.metadata.labels.0.clone(),
            // The operator's own values are read only through `ours`.
            annotations: t
                .metadata
                .annotations
                .kept
                .iter()
                .filter(|(k, _)| !is_operator_template_annotation(k))
                .map(|(k, v)| (k, v.clone()))
                .collect(),
            ours: t.metadata.annotations.ours,
            listed: t
                .metadata
                .annotations
                .kept
                .get(crate::api::INJECT_ANNOTATION)
                .map(|v| v.as_str().into()),
            containers,
        }
    });
    Workload {
        id: WorkloadId::new(&wire.metadata.namespace, K::KIND, &wire.metadata.name),
        labels: wire.metadata.labels,
        annotations: wire.metadata.annotations.kept,
        rollout: K::rollout(wire.metadata.generation, &wire.spec, &wire.status),
        template,
    }
}

/// The annotations the operator reads; every other one (for example kubectl's
/// `last-applied-configuration`, a copy of the whole manifest) is skipped.
pub fn reads_annotation(key: &str) -> bool {
    key.starts_with(ANNOTATION_PREFIX)
        || key.starts_with("resource.opentelemetry.io/")
        || key.starts_with("instrumentation.tracing.caas.io/")
        || key.starts_with("instrumentation.opentelemetry.io/")
}

/// The operator's own pod-template annotations (admission injection).
pub fn is_operator_template_annotation(key: &str) -> bool {
    key.starts_with(ANNOTATION_PREFIX)
        || key.starts_with(ENV_VALUE_PREFIX)
        || key.starts_with(AGENT_ENV_PREFIX)
}

/// The order-independent digest of a set of annotations, as [`Template::ours`] holds it.
pub fn annotations_digest<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut sorted: Vec<(&str, &str)> = pairs.into_iter().collect();
    if sorted.is_empty() {
        return 0;
    }
    sorted.sort_unstable();
    let mut h = DefaultHasher::new();
    sorted.hash(&mut h);
    h.finish().max(1)
}

/// `metadata.annotations`, reduced while deserializing to the keys the operator reads.
#[derive(Default)]
struct ReadAnnotations {
    kept: SmallMap,
    /// [`annotations_digest`] of the operator's own keys.
    ours: u64,
}

impl<'de> Deserialize<'de> for ReadAnnotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReadAnnotations;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(ReadAnnotations::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = SmallMap::new();
                let mut ours: Vec<(String, String)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let theirs = !is_operator_template_annotation(&key);
                    if reads_annotation(&key) || !theirs {
                        let value: String = map.next_value()?;
                        if !theirs {
                            ours.push((key.clone(), value.clone()));
                        }
                        // Of the operator's own values, keep only what planning reads directly.
                        if theirs
                            || !(key.starts_with(ENV_VALUE_PREFIX)
                                || key.starts_with(AGENT_ENV_PREFIX))
                        {
                            kept.insert(key, value);
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                let ours = annotations_digest(ours.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                Ok(ReadAnnotations { kept, ours })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Pod-template labels, reduced to the two planning reads.
#[derive(Default)]
struct TemplateLabels(SmallMap);

impl<'de> Deserialize<'de> for TemplateLabels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let all = Option::<BTreeMap<String, String>>::deserialize(deserializer)?;
        Ok(TemplateLabels(
            all.unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k == NAME_LABEL || k == VERSION_LABEL)
                .collect(),
        ))
    }
}

/// A pod template, as far as planning reads it. Each kind's `Spec` holds one at
/// its own path.
#[derive(Deserialize, Default)]
pub struct TemplateWire {
    #[serde(default)]
    metadata: TemplateMetaWire,
    #[serde(default)]
    spec: PodSpecWire,
}

#[derive(Deserialize, Default)]
struct TemplateMetaWire {
    #[serde(default)]
    labels: TemplateLabels,
    #[serde(default)]
    annotations: ReadAnnotations,
}

#[derive(Deserialize, Default)]
struct PodSpecWire {
    #[serde(default)]
    containers: Vec<ContainerWire>,
}

#[derive(Deserialize)]
struct ContainerWire {
    name: String,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    env: Vec<EnvWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvWire {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_from: Option<serde_json::Value>,
}

impl ContainerWire {
    fn project(&self, operator: Option<&OperatorEnv>) -> Container {
        let env = self
            .env
            .iter()
            .map(|e| EnvEntry {
                name: intern(&e.name),
                digest: env_digest(&e.name, e.value.as_deref(), e.value_from.as_ref()),
                value_from: e.value_from.is_some(),
                owner: if operator.is_some_and(|o| o.values.contains(&e.name)) {
                    EnvOwner::Operator
                } else {
                    EnvOwner::User
                },
                listed_by_operator: operator.is_some_and(|o| o.listed.contains(&e.name)),
            })
            .collect();
        let java_agent = self.env.iter().any(|e| {
            e.name == "JAVA_TOOL_OPTIONS"
                && e.value.as_deref().is_some_and(|v| v.contains("-javaagent"))
        });
        Container {
            name: intern(&self.name),
            image: self.image.as_deref().map(intern),
            env,
            java_agent,
        }
    }
}

/// A digest of an env entry as the API server stores it: an empty `value` is the
/// same as none (`omitempty`), and `fieldRef.apiVersion` defaults to `v1`. The
/// planner digests its entries the same way to compare them with the live ones.
pub fn env_digest(name: &str, value: Option<&str>, value_from: Option<&serde_json::Value>) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    value.filter(|v| !v.is_empty()).hash(&mut h);
    match value_from {
        Some(from) => {
            let mut from = from.clone();
            if let Some(field_ref) = from.get_mut("fieldRef").and_then(|f| f.as_object_mut()) {
                field_ref
                    .entry("apiVersion")
                    .or_insert_with(|| serde_json::Value::String("v1".into()));
            }
            hash_json(&from, &mut h);
        }
        None => 0u8.hash(&mut h),
    }
    h.finish()
}

/// Hashes a JSON value with object keys in sorted order, whatever map type serde_json uses.
fn hash_json(value: &serde_json::Value, h: &mut DefaultHasher) {
    use serde_json::Value;
    match value {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.to_string()).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(items) => {
            (4u8, items.len()).hash(h);
            for item in items {
                hash_json(item, h);
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            (5u8, keys.len()).hash(h);
            for key in keys {
                key.hash(h);
                hash_json(&map[key], h);
            }
        }
    }
}

/// One container's env entries in the operator's server-side apply.
#[derive(Default)]
struct OperatorEnv {
    /// Names whose value (`f:value` or `f:valueFrom`) it owns.
    values: BTreeSet<String>,
    /// Names it lists at all, value or not.
    listed: BTreeSet<String>,
}

/// Per container, the env entries the operator's server-side apply lists, and
/// those whose value (`f:value` or `f:valueFrom`) it owns. Owning only an
/// entry's key (`.`, `f:name`) is not owning it: once another manager takes the
/// value, the variable is the user's.
fn operator_owned_values(
    entries: &[ManagedFieldsWire],
    template_path: &[&str],
) -> BTreeMap<String, OperatorEnv> {
    let mut owned: BTreeMap<String, OperatorEnv> = BTreeMap::new();
    let ours = entries.iter().filter(|m| {
        m.manager == FIELD_MANAGER && m.operation == "Apply" && m.subresource.is_empty()
    });
    for entry in ours {
        let Some(fields) = entry
            .fields
            .as_ref()
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
        else {
            continue;
        };
        let mut at = &fields;
        let mut found = true;
        for step in template_path.iter().chain(&["spec", "containers"]) {
            match at.get(format!("f:{step}")) {
                Some(next) => at = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        let containers = at.as_object().filter(|_| found);
        for (key, container) in containers.into_iter().flatten() {
            let Some(container_name) = list_map_key_name(key) else {
                continue;
            };
            let env = container.get("f:env").and_then(|v| v.as_object());
            let mine = owned.entry(container_name).or_default();
            for (k, item) in env.into_iter().flatten() {
                let Some(name) = list_map_key_name(k) else {
                    continue;
                };
                if item.get("f:value").is_some() || item.get("f:valueFrom").is_some() {
                    mine.values.insert(name.clone());
                }
                mine.listed.insert(name);
            }
        }
    }
    owned
}

/// `k:{"name":"app"}` -> `app`.
fn list_map_key_name(key: &str) -> Option<String> {
    let json = key.strip_prefix("k:")?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value.get("name")?.as_str().map(str::to_string)
}

// ------------------------------------------------------------------ interning

/// The shared copy of `s`: namespaces, container names, variable names and
/// images repeat across thousands of workloads and are stored once.
pub fn intern(s: &str) -> Arc<str> {
    static STRINGS: OnceLock<Mutex<Interned>> = OnceLock::new();
    let strings = STRINGS.get_or_init(|| Mutex::new(Interned::default()));
    // The set holds plain strings: a panic elsewhere cannot leave it inconsistent.
    let mut strings = strings
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    strings.get(s)
}

#[derive(Default)]
struct Interned {
    set: HashSet<Arc<str>>,
    /// Size after the last sweep: strings no workload uses any more are dropped
    /// whenever the set has doubled since, so it stays proportional to the cache.
    swept: usize,
}

impl Interned {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.set.get(s) {
            return found.clone();
        }
        if self.set.len() >= 2 * self.swept.max(1024) {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.swept = self.set.len();
        }
        let new: Arc<str> = Arc::from(s);
        self.set.insert(new.clone());
        new
    }
}

#[cfg(test)]
mod tests;
