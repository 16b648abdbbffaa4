//! The per-policy metrics (`runtime::metrics`), derived from what a reconcile
//! computed: its status, its problems, its rollout and the collectors' state
//! in the cache. Nothing here reads the API server or changes status.

use kube::runtime::reflector::ObjectRef;

use super::Context;
use crate::api::{Mode, TracingPolicy, TracingPolicyStatus};
use crate::plan::rollout::{RolloutPlan, RolloutStep};
use crate::plan::status::Problem;
use crate::runtime::metrics::{CollectorReplicas, PolicyReport, WorkloadStates};

/// The reason `plan::status` gives the problem of failed workloads.
const WORKLOADS_FAILED: &str = "WorkloadsFailed";

/// What the metrics show for a policy whose latest reconcile computed `status`.
pub(super) fn policy_report(
    status: &TracingPolicyStatus,
    problems: &[Problem],
    rollout: Option<&RolloutPlan>,
    collector: Option<CollectorReplicas>,
) -> PolicyReport {
    let counts = &status.workloads;
    let rolled_back = rollout.map_or(0, |r| {
        r.steps
            .iter()
            .filter(|s| {
                matches!(
                    s.step,
                    RolloutStep::RollBack { .. } | RolloutStep::RolledBack { .. }
                )
            })
            .count()
    });
    let rolled_back = i64::try_from(rolled_back)
        .unwrap_or(i64::MAX)
        .min(i64::from(counts.failed));
    let mut reasons: Vec<&'static str> = problems.iter().map(|p| p.reason).collect();
    if counts.failed > 0 {
        reasons.push(WORKLOADS_FAILED);
    }
    reasons.sort_unstable();
    reasons.dedup();
    PolicyReport {
        workloads: WorkloadStates {
            up_to_date: i64::from(counts.up_to_date),
            rolling_out: i64::from(counts.rolling_out),
            waiting: i64::from(counts.waiting),
            failed: i64::from(counts.failed) - rolled_back,
            rolled_back,
            conflicted: i64::from(counts.conflicted),
        },
        conditions: status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status == "True", c.reason.clone()))
            .collect(),
        problems: reasons,
        collector,
    }
}

/// The replicas of the policy's collectors as the cache has them: each
/// collector namespace's Deployment asks for its `spec.replicas` (the policy's
/// `collector.replicas` where it does not exist yet); `None` when the policy
/// runs no collector (disabled, or DryRun).
pub(super) fn collector_replicas(
    ctx: &Context,
    policy: &TracingPolicy,
    selected_namespaces: &[String],
) -> Option<CollectorReplicas> {
    let spec = &policy.spec;
    if !spec.collector.enabled || spec.mode == Mode::DryRun {
        return None;
    }
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut replicas = CollectorReplicas::default();
    // The tier the workloads export to: the single collector, or the routers.
    for tier in crate::plan::collector::collector_tiers(
        spec,
        &ctx.settings.operator_namespace,
        selected_namespaces,
    )
    .into_iter()
    .filter(|t| t.tier != crate::plan::collector::Tier::Sampler)
    {
        let deployment = ctx
            .collectors
            .deployments
            .get(&ObjectRef::new(&tier.tier.object_name(&name)).within(&tier.namespace));
        let desired = deployment
            .as_ref()
            .and_then(|d| d.spec.replicas)
            .unwrap_or(spec.collector.replicas);
        let ready = deployment
            .as_ref()
            .and_then(|d| d.status.as_ref()?.ready_replicas)
            .unwrap_or(0);
        replicas.desired += i64::from(desired);
        replicas.ready += i64::from(ready);
    }
    Some(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::WorkloadId;
    use crate::plan::rollout::WorkloadStep;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn condition(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn metrics_follow_the_computed_status_with_rollbacks_apart() {
        let mut status = TracingPolicyStatus {
            conditions: vec![
                condition("Ready", "False", "Degraded"),
                condition("Degraded", "True", "SecretNotFound"),
            ],
            ..Default::default()
        };
        status.workloads.up_to_date = 4;
        status.workloads.failed = 3;
        status.workloads.waiting = 2;
        let step = |name: &str, step| WorkloadStep {
            id: WorkloadId::new("ns", crate::api::WorkloadKind::Deployment, name),
            step,
        };
        let rollout = RolloutPlan {
            steps: vec![
                step("a", RolloutStep::UpToDate),
                step(
                    "b",
                    RolloutStep::RollBack {
                        reason: "PodsNotReady",
                        message: String::new(),
                    },
                ),
                step(
                    "c",
                    RolloutStep::RolledBack {
                        reason: "PodsNotReady",
                        message: String::new(),
                    },
                ),
                step(
                    "d",
                    RolloutStep::Failed {
                        reason: "PodsNotReady",
                        message: String::new(),
                    },
                ),
            ],
            counts: Default::default(),
            paused_by: None,
            requeue_at: None,
        };
        let problems = [Problem {
            reason: "SecretNotFound",
            message: "missing".into(),
        }];
        let report = policy_report(&status, &problems, Some(&rollout), None);
        assert_eq!(
            report.workloads,
            WorkloadStates {
                up_to_date: 4,
                waiting: 2,
                failed: 1,
                rolled_back: 2,
                ..WorkloadStates::default()
            }
        );
        assert_eq!(report.problems, ["SecretNotFound", "WorkloadsFailed"]);
        assert_eq!(
            report.conditions,
            [
                ("Ready".to_string(), false, "Degraded".to_string()),
                ("Degraded".to_string(), true, "SecretNotFound".to_string()),
            ]
        );
    }
}
