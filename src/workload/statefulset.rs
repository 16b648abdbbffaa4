//! StatefulSets: `apps/v1`, pod template at `spec.template`.
//!
//! Complete as `kubectl rollout status` and the StatefulSet controller say:
//! - `RollingUpdate`: the controller observed the generation, the update
//!   revision is current and every replica is ready;
//! - with `rollingUpdate.partition: P`: the replicas at or above P run the new
//!   template (those below it change only when the partition is lowered);
//! - `OnDelete`: the controller observed the new template; pods change when their
//!   owner deletes them, and the rest still run the old one (reported, not waited for).

use serde::Deserialize;

use super::{Kind, RolloutState, Strategy, TemplateWire, WorkloadKind};

pub struct StatefulSet;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    replicas: Option<i32>,
    #[serde(default)]
    update_strategy: UpdateStrategy,
    #[serde(default)]
    template: TemplateWire,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateStrategy {
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    rolling_update: Option<RollingUpdate>,
}

#[derive(Deserialize, Default)]
struct RollingUpdate {
    #[serde(default)]
    partition: Option<i32>,
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
    ready_replicas: i32,
    #[serde(default)]
    current_revision: Option<String>,
    #[serde(default)]
    update_revision: Option<String>,
}

impl Kind for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    const GROUP: &'static str = "apps";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "statefulsets";
    const TEMPLATE_PATH: &'static [&'static str] = &["spec", "template"];
    const SEMCONV_NAME_KEY: &'static str = "k8s.statefulset.name";
    type Spec = Spec;
    type Status = Status;

    fn template(spec: &Spec) -> Option<&TemplateWire> {
        Some(&spec.template)
    }

    fn rollout(generation: i64, spec: &Spec, status: &Status) -> RolloutState {
        let desired = spec.replicas.unwrap_or(1);
        // Once the update revision is the current one, every pod runs it (the
        // controller may leave updatedReplicas at 0 after a completed rollout).
        let on_current =
            status.update_revision.is_none() || status.update_revision == status.current_revision;
        let updated = if on_current {
            status.replicas.max(status.updated_replicas)
        } else {
            status.updated_replicas
        };
        let strategy = match (
            spec.update_strategy.type_.as_deref(),
            spec.update_strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.partition),
        ) {
            (Some("OnDelete"), _) => Strategy::OnDelete,
            (_, Some(p)) if p > 0 => Strategy::Partitioned(p),
            _ => Strategy::RollingUpdate,
        };
        RolloutState {
            generation,
            observed_generation: status.observed_generation,
            desired,
            updated,
            available: status.ready_replicas,
            old: (status.replicas - updated).max(0),
            paused: false,
            strategy,
        }
    }

    fn is_complete(s: &RolloutState) -> bool {
        if !s.observed() {
            return false;
        }
        match s.strategy {
            Strategy::OnDelete | Strategy::NextRun => true,
            Strategy::Partitioned(p) => s.updated >= (s.desired - p).max(0),
            Strategy::RollingUpdate => {
                s.old == 0 && s.updated >= s.desired && s.available >= s.desired
            }
        }
    }

    fn describe(s: &RolloutState) -> String {
        super::describe_pods(s, "StatefulSet", "replicas", "ready")
    }
}
