//! CronJobs: `batch/v1`, pod template at `spec.jobTemplate.spec.template`.
//!
//! A CronJob has no pods of its own to replace: a changed template is used by
//! the next Job it creates, so it needs no restart and its rollout is complete
//! as soon as it is written. Jobs it created keep the template they started with.

use serde::Deserialize;

use super::{Kind, RolloutState, Strategy, TemplateWire, WorkloadKind};

pub struct CronJob;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    job_template: JobTemplate,
}

#[derive(Deserialize, Default)]
struct JobTemplate {
    #[serde(default)]
    spec: JobSpec,
}

#[derive(Deserialize, Default)]
struct JobSpec {
    #[serde(default)]
    template: TemplateWire,
}

#[derive(Deserialize, Default)]
pub struct Status {}

impl Kind for CronJob {
    const KIND: WorkloadKind = WorkloadKind::CronJob;
    const GROUP: &'static str = "batch";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "cronjobs";
    const TEMPLATE_PATH: &'static [&'static str] = &["spec", "jobTemplate", "spec", "template"];
    const SEMCONV_NAME_KEY: &'static str = "k8s.cronjob.name";
    type Spec = Spec;
    type Status = Status;

    fn template(spec: &Spec) -> Option<&TemplateWire> {
        Some(&spec.job_template.spec.template)
    }

    fn rollout(generation: i64, _: &Spec, _: &Status) -> RolloutState {
        RolloutState {
            generation,
            observed_generation: generation,
            strategy: Strategy::NextRun,
            ..RolloutState::default()
        }
    }

    fn is_complete(_: &RolloutState) -> bool {
        true
    }

    fn describe(_: &RolloutState) -> String {
        "the next Job uses the new template".to_string()
    }
}
