//! Deployments: `apps/v1`, pod template at `spec.template`.
//!
//! Complete as `kubectl rollout status` says: the controller observed the
//! generation, every replica runs the new template, none runs an old one, and
//! the updated ones are available. A paused Deployment does not roll out until
//! its owner resumes it; `replicas: 0` is complete at once.

use serde::Deserialize;

use super::{Kind, RolloutState, Strategy, TemplateWire, WorkloadKind};

pub struct Deployment;

#[derive(Deserialize, Default)]
pub struct Spec {
    #[serde(default)]
    replicas: Option<i32>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    template: TemplateWire,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    observed_generation: i64,
    #[serde(default)]
    replicas: i32,
    #[serde(default)]
    updated_replicas: i32,
    #[serde(default)]
    available_replicas: i32,
}

impl Kind for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    const GROUP: &'static str = "apps";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "deployments";
    const TEMPLATE_PATH: &'static [&'static str] = &["spec", "template"];
    const SEMCONV_NAME_KEY: &'static str = "k8s.deployment.name";
    type Spec = Spec;
    type Status = Status;

    fn template(spec: &Spec) -> Option<&TemplateWire> {
        Some(&spec.template)
    }

    fn rollout(generation: i64, spec: &Spec, status: &Status) -> RolloutState {
        RolloutState {
            generation,
            observed_generation: status.observed_generation,
            desired: spec.replicas.unwrap_or(1),
            updated: status.updated_replicas,
            available: status.available_replicas,
            old: (status.replicas - status.updated_replicas).max(0),
            paused: spec.paused,
            strategy: Strategy::RollingUpdate,
        }
    }

    fn is_complete(s: &RolloutState) -> bool {
        s.observed() && s.updated >= s.desired && s.old == 0 && s.available >= s.updated
    }

    fn describe(s: &RolloutState) -> String {
        super::describe_pods(s, "Deployment", "replicas", "available")
    }
}
