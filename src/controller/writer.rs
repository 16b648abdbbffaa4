//! The only way the controller changes the cluster: every mutating request goes
//! through [`Writer`], which checks the leader fence, waits for the client-side
//! rate limit (`--kube-api-qps`, `--kube-api-burst`) and counts the write.
//!
//! Workloads are server-side applied as field manager `tracing-operator` and
//! never forced: a field someone else owns is never taken over (the planner
//! leaves such a variable out instead). The operator's own objects (collectors,
//! the admission policy, the policy's status) are applied with force: nobody
//! else should own a field of them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::Value;
use tracing::warn;

use crate::api::{FIELD_MANAGER, TracingPolicy};
use crate::plan::WorkloadId;
use crate::runtime::leader::Fence;
use crate::runtime::metrics::Metrics;

type RateLimiter = governor::DefaultDirectRateLimiter;

/// A write the API server (or the way to it) refused, or one the fence stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}", short_message(.0))]
    Api(#[source] kube::Error),
    #[error(transparent)]
    NotLeader(#[from] crate::runtime::leader::NotLeader),
}

impl WriteError {
    /// The server refused the change itself (a conflict with another field
    /// manager, an invalid object, a forbidden write): trying the same write
    /// again will fail again, so it waits until something changes.
    pub fn is_permanent(&self) -> bool {
        match self {
            WriteError::Api(kube::Error::Api(status)) => {
                (400..500).contains(&status.code) && ![408, 429].contains(&status.code)
            }
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, WriteError::Api(kube::Error::Api(s)) if s.code == 404)
    }
}

/// `message (code)` for an API error, the plain error otherwise.
pub fn short_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

pub struct Writer {
    client: Client,
    limiter: RateLimiter,
    metrics: Arc<Metrics>,
    fence: Fence,
    recorder: Recorder,
}

impl Writer {
    pub fn new(
        client: Client,
        qps: u32,
        burst: u32,
        metrics: Arc<Metrics>,
        fence: Fence,
        instance: Option<String>,
    ) -> Self {
        Writer {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance,
                },
            ),
            limiter: governor::RateLimiter::direct(quota(qps, burst)),
            client,
            metrics,
            fence,
        }
    }

    /// Waits for a write slot, then checks (after waiting: leadership may have
    /// been lost meanwhile) that this process may still write.
    async fn admit(&self, verb: &str, kind: &str) -> Result<(), WriteError> {
        self.fence.check()?;
        self.limiter.until_ready().await;
        self.fence.check()?;
        self.metrics.api_write(verb, kind);
        Ok(())
    }

    /// Server-side applies `body` to a workload, never forced; returns the object
    /// as the API server stored it.
    #[tracing::instrument(name = "apply", skip_all, err, fields(namespace = %id.namespace, kind = %id.kind, name = %id.name))]
    pub async fn apply_workload(
        &self,
        id: &WorkloadId,
        body: &Value,
    ) -> Result<DynamicObject, WriteError> {
        self.admit("patch", id.kind.as_str()).await?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &id.namespace,
            &id.kind.info().api_resource(),
        );
        api.patch(
            &id.name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(body),
        )
        .await
        .map_err(WriteError::Api)
    }

    /// Server-side applies one of the operator's own objects, with force.
    pub async fn apply_owned(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        body: &Value,
    ) -> Result<(), WriteError> {
        self.admit("patch", &resource.kind).await?;
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        };
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map(drop)
        .map_err(WriteError::Api)
    }

    /// Deletes one of the operator's own objects; one that is already gone is fine.
    pub async fn delete_owned(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<(), WriteError> {
        self.admit("delete", &resource.kind).await?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, resource);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(WriteError::Api(e)),
        }
    }

    /// Server-side applies a TracingPolicy's status (the operator owns all of it).
    pub async fn patch_status(&self, policy: &str, status: &Value) -> Result<(), WriteError> {
        // Counted apart from the finalizer's patches: what progress reporting costs.
        self.admit("patch", "TracingPolicy/status").await?;
        let api = Api::<TracingPolicy>::all(self.client.clone());
        let patch = serde_json::json!({
            "apiVersion": "tracing.caas.io/v1alpha1",
            "kind": "TracingPolicy",
            "status": status,
        });
        api.patch_status(
            policy,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(drop)
        .map_err(WriteError::Api)
    }

    /// A JSON patch of a TracingPolicy's metadata (its finalizer).
    pub async fn patch_policy(
        &self,
        policy: &str,
        patch: json_patch::Patch,
    ) -> Result<(), WriteError> {
        self.admit("patch", "TracingPolicy").await?;
        let api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::erase::<TracingPolicy>(&()),
        );
        api.patch(policy, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map(drop)
            .map_err(WriteError::Api)
    }

    /// Publishes an Event; a failure to publish is logged, never fails the reconcile.
    pub async fn event(
        &self,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        if let Err(error) = self.admit("create", "Event").await {
            warn!(%error, "event not published");
            return;
        }
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            warn!(object = ?reference.name, kind = ?reference.kind, %error, "could not publish event");
        }
    }
}

/// The reference Events about a workload point at.
pub fn workload_reference(id: &WorkloadId) -> ObjectReference {
    ObjectReference {
        api_version: Some(id.kind.info().api_version()),
        kind: Some(id.kind.to_string()),
        namespace: Some(id.namespace.to_string()),
        name: Some(id.name.to_string()),
        ..Default::default()
    }
}

fn quota(qps: u32, burst: u32) -> governor::Quota {
    let qps = std::num::NonZeroU32::new(qps.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::Quota::per_second(qps).allow_burst(burst)
}
