//! DaemonSets: `apps/v1`, pod template at `spec.template`.
//!
//! Complete as `kubectl rollout status` says, judged on the nodes the DaemonSet
//! runs on now (its node set may change while it rolls): the controller
//! observed the generation, and `updatedNumberScheduled` and `numberAvailable`
//! reach `desiredNumberScheduled`. With `OnDelete`, complete once the controller
//! observed the new template; the pods still on the old one are reported.

use serde::Deserialize;

use super::{Kind, RolloutState, Strategy, TemplateWire, WorkloadKind};

pub struct DaemonSet;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    update_strategy: UpdateStrategy,
    #[serde(default)]
    template: TemplateWire,
}

#[derive(Deserialize, Default)]
struct UpdateStrategy {
    #[serde(default, rename = "type")]
    type_: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    observed_generation: i64,
    #[serde(default)]
    desired_number_scheduled: i32,
    #[serde(default)]
    current_number_scheduled: i32,
    #[serde(default)]
    updated_number_scheduled: i32,
    #[serde(default)]
    number_available: i32,
}

impl Kind for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    const GROUP: &'static str = "apps";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "daemonsets";
    const TEMPLATE_PATH: &'static [&'static str] = &["spec", "template"];
    const SEMCONV_NAME_KEY: &'static str = "k8s.daemonset.name";
    type Spec = Spec;
    type Status = Status;

    fn template(spec: &Spec) -> Option<&TemplateWire> {
        Some(&spec.template)
    }

    fn rollout(generation: i64, spec: &Spec, status: &Status) -> RolloutState {
        RolloutState {
            generation,
            observed_generation: status.observed_generation,
            desired: status.desired_number_scheduled,
            updated: status.updated_number_scheduled,
            available: status.number_available,
            old: (status.current_number_scheduled - status.updated_number_scheduled).max(0),
            paused: false,
            strategy: if spec.update_strategy.type_.as_deref() == Some("OnDelete") {
                Strategy::OnDelete
            } else {
                Strategy::RollingUpdate
            },
        }
    }

    fn is_complete(s: &RolloutState) -> bool {
        s.observed()
            && (s.strategy == Strategy::OnDelete
                || (s.updated >= s.desired && s.available >= s.desired))
    }

    fn describe(s: &RolloutState) -> String {
        super::describe_pods(s, "DaemonSet", "pods", "available")
    }
}
