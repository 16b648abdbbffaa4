//! Trimmed reflector caches of the objects planning reads, and their conversion
//! into the planning views.
//!
//! Every cached workload keeps only what planning and rollout tracking need:
//! identity, labels, annotations, generation, the pod template's labels,
//! annotations and containers (name, image, env), status, and the operator's own
//! `managedFields` entry. Env entries the user owns keep only their name: the
//! operator never needs their values, and they can be large.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, EnvVar, Namespace, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::runtime::reflector::Store;

use crate::api::{FIELD_MANAGER, WorkloadKind};
use crate::plan::rollout::RolloutStatus;
use crate::plan::{ContainerView, NamespaceView, WorkloadId, WorkloadView};

/// Label on objects the operator creates itself (collectors); they are never instrumented.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// The workload kinds as one trait, so trimming and conversion are written once.
pub trait Workload: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static {
    const KIND: WorkloadKind;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec>;
    /// Drops the spec fields planning never reads (volumes, strategy details, ...).
    fn trim_spec(&mut self);
    /// What the workload's own controller reports about its rollout.
    fn rollout_status(&self) -> RolloutStatus;
}

macro_rules! workload_impl {
    ($ty:ty, $kind:expr, $rollout:expr) => {
        impl Workload for $ty {
            const KIND: WorkloadKind = $kind;
            fn template(&self) -> Option<&PodTemplateSpec> {
                Some(&self.spec.template)
            }
            fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
                Some(&mut self.spec.template)
            }
            fn trim_spec(&mut self) {
                self.spec.selector = Default::default();
                self.spec.revision_history_limit = None;
                self.spec.min_ready_seconds = None;
            }
            fn rollout_status(&self) -> RolloutStatus {
                let f: fn(&Self) -> RolloutStatus = $rollout;
                f(self)
            }
        }
    };
}

workload_impl!(Deployment, WorkloadKind::Deployment, |d| {
    let status = d.status.clone().unwrap_or_default();
    let desired = d.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    RolloutStatus {
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        desired,
        updated,
        available: status.available_replicas.unwrap_or(0),
        old: (status.replicas.unwrap_or(0) - updated).max(0),
    }
});
workload_impl!(StatefulSet, WorkloadKind::StatefulSet, |s| {
    let status = s.status.clone().unwrap_or_default();
    let desired = s.spec.replicas.unwrap_or(1);
    let on_current_revision =
        status.update_revision.is_none() || status.update_revision == status.current_revision;
    let updated = status.updated_replicas.unwrap_or(0);
    RolloutStatus {
        generation: s.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        desired,
        updated: if on_current_revision {
            status.replicas.max(updated)
        } else {
            updated
        },
        available: status.ready_replicas.unwrap_or(0),
        old: if on_current_revision {
            0
        } else {
            (status.replicas - updated).max(0)
        },
    }
});
workload_impl!(DaemonSet, WorkloadKind::DaemonSet, |d| {
    let status = d.status.clone().unwrap_or_default();
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    RolloutStatus {
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        desired,
        updated,
        available: status.number_available.unwrap_or(0),
        old: (status.current_number_scheduled - updated).max(0),
    }
});

/// Reader handles of the caches.
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    pub daemonsets: Store<DaemonSet>,
    /// The operator's own collector objects.
    pub collectors: super::collector::CollectorStores,
}

impl Stores {
    /// Waits until every cache has listed once, so planning never sees a partial cluster.
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        self.namespaces.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.statefulsets.wait_until_ready().await?;
        self.daemonsets.wait_until_ready().await?;
        self.collectors.wait_until_ready().await
    }

    pub fn namespace_views(&self) -> BTreeMap<String, NamespaceView> {
        self.namespaces
            .state()
            .iter()
            .filter_map(|ns| {
                let name = ns.metadata.name.clone()?;
                Some((
                    name.clone(),
                    NamespaceView {
                        name,
                        labels: ns.metadata.labels.clone().unwrap_or_default(),
                    },
                ))
            })
            .collect()
    }

    /// Every workload of the three kinds except the operator's own collectors, sorted.
    pub fn workload_views(&self) -> Vec<WorkloadView> {
        let mut views: Vec<WorkloadView> = Vec::new();
        views.extend(
            self.deployments
                .state()
                .iter()
                .filter_map(|w| workload_view(w.as_ref())),
        );
        views.extend(
            self.statefulsets
                .state()
                .iter()
                .filter_map(|w| workload_view(w.as_ref())),
        );
        views.extend(
            self.daemonsets
                .state()
                .iter()
                .filter_map(|w| workload_view(w.as_ref())),
        );
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }
}

impl Stores {
    /// The rollout status of a cached workload.
    pub fn rollout_status(&self, id: &WorkloadId) -> Option<RolloutStatus> {
        use kube::runtime::reflector::ObjectRef;
        match id.kind {
            WorkloadKind::Deployment => self
                .deployments
                .get(&ObjectRef::new(&id.name).within(&id.namespace))
                .map(|w| w.rollout_status()),
            WorkloadKind::StatefulSet => self
                .statefulsets
                .get(&ObjectRef::new(&id.name).within(&id.namespace))
                .map(|w| w.rollout_status()),
            WorkloadKind::DaemonSet => self
                .daemonsets
                .get(&ObjectRef::new(&id.name).within(&id.namespace))
                .map(|w| w.rollout_status()),
        }
    }
}

/// A hash of everything a trimmed workload carries except its resourceVersion and
/// the timestamps in managedFields: the watch triggers reconciles only when
/// something planning or rollout tracking reads has changed.
pub fn content_hash<W: Workload + serde::Serialize>(w: &W) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut value = serde_json::to_value(w).ok()?;
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
        if let Some(entries) = meta.get_mut("managedFields").and_then(|m| m.as_array_mut()) {
            for entry in entries.iter_mut().filter_map(|e| e.as_object_mut()) {
                entry.remove("time");
            }
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    Some(hasher.finish())
}

/// Strips a namespace down to its name and labels.
pub fn trim_namespace(ns: &mut Namespace) {
    ns.metadata = ObjectMeta {
        name: ns.metadata.name.take(),
        labels: ns.metadata.labels.take(),
        resource_version: ns.metadata.resource_version.take(),
        ..Default::default()
    };
    ns.spec = None;
    ns.status = None;
}

/// Strips a workload down to what planning and rollout tracking read.
pub fn trim_workload<W: Workload>(w: &mut W) {
    let meta = w.meta_mut();
    let ours: Vec<ManagedFieldsEntry> = meta
        .managed_fields
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(is_operator_entry)
        .collect();
    let owned = operator_owned_env(&ours);
    meta.managed_fields = if ours.is_empty() { None } else { Some(ours) };
    meta.owner_references = None;
    meta.finalizers = None;
    // kubectl's last-applied annotation holds a copy of the whole manifest.
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    w.trim_spec();
    if let Some(template) = w.template_mut()
        && let Some(spec) = template.spec.as_mut()
    {
        let containers = std::mem::take(&mut spec.containers);
        *spec = Default::default();
        spec.containers = containers
            .into_iter()
            .map(|c| trim_container(c, &owned))
            .collect();
    }
}

fn trim_container(c: Container, owned: &BTreeMap<String, BTreeSet<String>>) -> Container {
    let mine = owned.get(&c.name);
    let env = c.env.map(|env| {
        env.into_iter()
            .map(|e| {
                if mine.is_some_and(|m| m.contains(&e.name)) {
                    e
                } else {
                    EnvVar {
                        name: e.name,
                        ..Default::default()
                    }
                }
            })
            .collect()
    });
    Container {
        name: c.name,
        image: c.image,
        env,
        ..Default::default()
    }
}

fn is_operator_entry(m: &ManagedFieldsEntry) -> bool {
    m.manager.as_deref() == Some(FIELD_MANAGER)
        && m.operation.as_deref() == Some("Apply")
        && m.subresource.as_deref().unwrap_or_default().is_empty()
}

/// Env names per container that the operator's field manager owns, read from
/// `managedFields` (`f:spec.f:template.f:spec.f:containers.k:{"name":..}.f:env.k:{"name":..}`).
pub fn operator_owned_env(entries: &[ManagedFieldsEntry]) -> BTreeMap<String, BTreeSet<String>> {
    let mut owned: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in entries.iter().filter(|m| is_operator_entry(m)) {
        let Some(fields) = entry.fields_v1.as_ref() else {
            continue;
        };
        let containers = fields
            .0
            .get("f:spec")
            .and_then(|v| v.get("f:template"))
            .and_then(|v| v.get("f:spec"))
            .and_then(|v| v.get("f:containers"))
            .and_then(|v| v.as_object());
        for (key, container) in containers.into_iter().flatten() {
            let Some(container_name) = list_map_key_name(key) else {
                continue;
            };
            let env = container.get("f:env").and_then(|v| v.as_object());
            let names = env
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| list_map_key_name(k));
            owned.entry(container_name).or_default().extend(names);
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

/// The planning view of a cached workload; `None` for the operator's own collectors.
pub fn workload_view<W: Workload>(w: &W) -> Option<WorkloadView> {
    let meta = w.meta();
    let labels = meta.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(FIELD_MANAGER) {
        return None;
    }
    let owned = operator_owned_env(meta.managed_fields.as_deref().unwrap_or_default());
    let template = w.template();
    let template_meta = template.and_then(|t| t.metadata.as_ref());
    let containers = template
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| ContainerView {
            name: c.name.clone(),
            image: c.image.clone(),
            env: c.env.clone().unwrap_or_default(),
            operator_owned_env: owned.get(&c.name).cloned().unwrap_or_default(),
        })
        .collect();
    Some(WorkloadView {
        id: WorkloadId {
            namespace: meta.namespace.clone()?,
            kind: W::KIND,
            name: meta.name.clone()?,
        },
        labels,
        annotations: meta.annotations.clone().unwrap_or_default(),
        template_labels: template_meta
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        template_annotations: template_meta
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default(),
        containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;

    fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    fn env_fields(container: &str, names: &[&str]) -> serde_json::Value {
        let env: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|n| {
                (
                    format!("k:{{\"name\":\"{n}\"}}"),
                    serde_json::json!({".": {}, "f:name": {}, "f:value": {}}),
                )
            })
            .collect();
        serde_json::json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
            format!("k:{{\"name\":\"{container}\"}}"): {".": {}, "f:name": {}, "f:env": env}
        }}}}})
    }

    #[test]
    fn owned_env_comes_only_from_the_operators_apply_entry() {
        let entries = vec![
            entry(
                FIELD_MANAGER,
                "Apply",
                env_fields("app", &["OTEL_SERVICE_NAME", "OTEL_PROPAGATORS"]),
            ),
            entry(
                "kubectl-client-side-apply",
                "Update",
                env_fields("app", &["NODE_ENV"]),
            ),
            entry(
                FIELD_MANAGER,
                "Update",
                env_fields("app", &["SHOULD_NOT_COUNT"]),
            ),
        ];
        let owned = operator_owned_env(&entries);
        let app: Vec<&str> = owned["app"].iter().map(String::as_str).collect();
        assert_eq!(app, ["OTEL_PROPAGATORS", "OTEL_SERVICE_NAME"]);
    }

    #[test]
    fn trimming_keeps_operator_values_and_only_names_of_user_entries() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "gateway", "namespace": "caas-gateway",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"},
                "managedFields": [
                    {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
                     "fieldsV1": env_fields("app", &["OTEL_SERVICE_NAME"])},
                    {"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {}}
                ]
            },
            "spec": {
                "selector": {"matchLabels": {"app": "gateway"}},
                "template": {"metadata": {"labels": {"app": "gateway"}}, "spec": {
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                    "containers": [{"name": "app", "image": "gateway:1.2.3", "args": ["--big"],
                        "env": [{"name": "NODE_ENV", "value": "production"},
                                {"name": "OTEL_SERVICE_NAME", "value": "gateway"}]}]
                }}
            }
        }))
        .expect("deployment parses");
        trim_workload(&mut d);
        assert_eq!(d.metadata.managed_fields.as_ref().map(Vec::len), Some(1));
        let annotations = d.metadata.annotations.clone().unwrap_or_default();
        assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));

        let view = workload_view(&d).expect("a view");
        assert_eq!(view.id.name, "gateway");
        assert_eq!(
            view.template_labels.get("app").map(String::as_str),
            Some("gateway")
        );
        let app = &view.containers[0];
        assert_eq!(app.image.as_deref(), Some("gateway:1.2.3"));
        assert_eq!(
            app.env[0],
            EnvVar {
                name: "NODE_ENV".into(),
                ..Default::default()
            }
        );
        assert_eq!(app.env[1].value.as_deref(), Some("gateway"));
        assert!(app.operator_owned_env.contains("OTEL_SERVICE_NAME"));
        assert!(!app.operator_owned_env.contains("NODE_ENV"));
        let spec = d.spec.template.spec.expect("pod spec kept");
        assert!(spec.volumes.is_none());
        assert!(spec.containers[0].args.is_none());
    }

    #[test]
    fn the_operators_own_collectors_are_not_workloads() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-collector", "namespace": "observability",
                         "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "otelcol"}]}}}
        }))
        .expect("deployment parses");
        assert!(workload_view(&d).is_none());
    }
}
