use std::collections::BTreeMap;

use k8s_openapi::jiff::SignedDuration;

use super::*;
use crate::api::{Duration, WorkloadKind};
use crate::workload::Template;

const POLICY: &str = "caas-production";

fn at_secs(seconds: i64) -> Timestamp {
    let t0: Timestamp = "2025-03-01T12:00:00Z".parse().unwrap();
    t0.checked_add(SignedDuration::from_secs(seconds)).unwrap()
}

fn at(minutes: i64) -> Timestamp {
    at_secs(minutes * 60)
}

fn spec(
    strategy: RolloutStrategy,
    max_concurrent: i32,
    deadline: &str,
    on_failure: OnFailure,
) -> RolloutSpec {
    RolloutSpec {
        strategy,
        max_concurrent,
        progress_deadline: Duration(deadline.into()),
        on_failure,
    }
}

fn progressive(max_concurrent: i32, on_failure: OnFailure) -> RolloutSpec {
    spec(
        RolloutStrategy::Progressive,
        max_concurrent,
        "10m",
        on_failure,
    )
}

fn id(namespace: &str, kind: WorkloadKind, name: &str) -> WorkloadId {
    WorkloadId::new(namespace, kind, name)
}

fn deployment(name: &str) -> WorkloadId {
    id("caas", WorkloadKind::Deployment, name)
}

fn complete(desired: i32) -> RolloutState {
    RolloutState {
        generation: 2,
        observed_generation: 2,
        desired,
        updated: desired,
        available: desired,
        old: 0,
        ..RolloutState::default()
    }
}

/// Observed by its controller, its new pod never ready: the shape of a
/// crash-looping rollout (one surge pod, the old ones still serving).
fn stuck() -> RolloutState {
    RolloutState {
        generation: 2,
        observed_generation: 2,
        desired: 2,
        updated: 1,
        available: 1,
        old: 2,
        ..RolloutState::default()
    }
}

/// A workload that carries its plan since `applied_at`, not yet recorded as rolled out.
fn carrying(id: WorkloadId, applied_at: Option<&str>, status: RolloutState) -> WorkloadRollout {
    let hash = format!("h1-{}", id.name);
    WorkloadRollout {
        id,
        planned_hash: hash.clone(),
        applied: true,
        live_hash: Some(hash),
        applied_at: applied_at.map(str::to_string),
        rollout_failed: None,
        rollout_failure: None,
        rolled_out: None,
        status: Some(status),
    }
}

/// A workload that carries its plan and rolled it out earlier.
fn rolled_out(id: WorkloadId, status: RolloutState) -> WorkloadRollout {
    let carried = carrying(id, Some("2025-03-01T12:00:00Z"), status);
    WorkloadRollout {
        rolled_out: Some(carried.planned_hash.clone()),
        ..carried
    }
}

/// A workload that never carried this policy's settings.
fn fresh(id: WorkloadId) -> WorkloadRollout {
    WorkloadRollout {
        planned_hash: format!("h1-{}", id.name),
        id,
        applied: false,
        live_hash: None,
        applied_at: None,
        rollout_failed: None,
        rollout_failure: None,
        rolled_out: None,
        status: Some(complete(2)),
    }
}

fn step_of<'a>(plan: &'a RolloutPlan, id: &WorkloadId) -> &'a RolloutStep {
    &plan.steps.iter().find(|s| &s.id == id).unwrap().step
}

// ---- a small simulated cluster: workloads with their own controllers ----

#[derive(Clone)]
struct SimWorkload {
    id: WorkloadId,
    annotations: BTreeMap<String, String>,
    /// The variables the operator's apply put into the template, name and value.
    operator_env: Vec<(String, String)>,
    status: RolloutState,
    /// Minutes until pods carrying the operator's env become available; `None`: never.
    ready_after: Option<i64>,
    changed_at: Timestamp,
    /// Pod template changes, each of which restarts pods.
    template_changes: u32,
}

#[derive(Clone)]
struct Cluster {
    workloads: Vec<SimWorkload>,
    /// Part of every planned hash and env value: changing it changes the policy's settings.
    settings: &'static str,
}

/// The settings planned for `id`: a hash and the env it stands for.
fn plan_of(id: &WorkloadId, settings: &str) -> (String, Vec<(String, String)>) {
    (
        format!("{settings}-{}", id.name),
        vec![
            ("OTEL_SERVICE_NAME".into(), id.name.to_string()),
            ("OTEL_TRACES_SAMPLER_ARG".into(), settings.into()),
        ],
    )
}

impl SimWorkload {
    fn new(id: WorkloadId, replicas: i32, ready_after: Option<i64>) -> Self {
        SimWorkload {
            id,
            annotations: BTreeMap::new(),
            operator_env: Vec::new(),
            status: RolloutState {
                generation: 1,
                observed_generation: 1,
                ..complete(replicas)
            },
            ready_after,
            changed_at: at(-60),
            template_changes: 0,
        }
    }

    fn view(&self) -> Workload {
        Workload {
            id: self.id.clone(),
            labels: Default::default(),
            annotations: self.annotations.clone().into(),
            template: Template::default(),
            rollout: self.status.clone(),
        }
    }

    /// Server-side apply as the operator's field manager: the body is its whole
    /// intent, so annotations and env entries it no longer names are dropped.
    fn operator_apply(
        &mut self,
        annotations: BTreeMap<String, String>,
        env: &[(String, String)],
        now: Timestamp,
    ) {
        self.annotations
            .retain(|k, _| !k.starts_with("tracing.caas.io/"));
        self.annotations.extend(annotations);
        if self.operator_env != env {
            self.operator_env = env.to_vec();
            self.status.generation += 1;
            self.changed_at = now;
            self.template_changes += 1;
        }
    }

    fn carries_operator_env(&self) -> bool {
        !self.operator_env.is_empty()
    }

    /// The workload's own controller, one tick later.
    fn tick(&mut self, now: Timestamp) {
        // Pods on the previous template are healthy; so are pods without our env.
        let ready_after = if self.carries_operator_env() {
            self.ready_after
        } else {
            Some(1)
        };
        let minutes = now.duration_since(self.changed_at).as_secs() / 60;
        let s = &mut self.status;
        if s.observed_generation == s.generation && s.updated == s.desired && s.old == 0 {
            return;
        }
        s.observed_generation = s.generation;
        if ready_after.is_some_and(|r| minutes >= r) {
            s.updated = s.desired;
            s.available = s.desired;
            s.old = 0;
        } else {
            s.updated = s.desired / 2;
            s.old = s.desired - s.updated;
            s.available = s.old;
        }
    }

    fn applied(&self, settings: &str) -> bool {
        let (hash, env) = plan_of(&self.id, settings);
        self.annotations.get(POLICY_ANNOTATION).map(String::as_str) == Some(POLICY)
            && self.annotations.get(CONFIG_HASH_ANNOTATION) == Some(&hash)
            && self.operator_env == env
    }
}

impl Cluster {
    fn observe(&self) -> Vec<WorkloadRollout> {
        self.workloads
            .iter()
            .map(|w| {
                let (hash, _) = plan_of(&w.id, self.settings);
                WorkloadRollout::observe(
                    POLICY,
                    &w.id,
                    &hash,
                    w.applied(self.settings),
                    Some(&w.view()),
                )
            })
            .collect()
    }

    /// Performs the steps the way the controller does: one apply per write step.
    fn enforce(&mut self, plan: &RolloutPlan, now: Timestamp) {
        for step in &plan.steps {
            let settings = self.settings;
            let w = self.workloads.iter_mut().find(|w| w.id == step.id).unwrap();
            let (hash, env) = plan_of(&w.id, settings);
            match &step.step {
                RolloutStep::Start { .. } | RolloutStep::Restamp => {
                    w.operator_apply(applied_annotations(POLICY, &hash, now), &env, now)
                }
                RolloutStep::Record => {
                    let applied_at = w.annotations.get(APPLIED_AT_ANNOTATION).cloned();
                    w.operator_apply(
                        recorded_annotations(POLICY, &hash, applied_at.as_deref(), None),
                        &env,
                        now,
                    )
                }
                RolloutStep::OwnerPaused { release: true } => {
                    w.operator_apply(released_annotations(POLICY, &hash), &env, now)
                }
                RolloutStep::RollBack { reason, message } => w.operator_apply(
                    rollback_annotations(POLICY, &hash, reason, message, now),
                    &[],
                    now,
                ),
                _ => {}
            }
        }
    }

    fn tick(&mut self, now: Timestamp) {
        for w in &mut self.workloads {
            w.tick(now);
        }
    }

    /// Workloads whose pods are being replaced right now, by the cluster's account.
    fn restarting(&self) -> usize {
        self.workloads
            .iter()
            .filter(|w| !w.id.kind.info().is_complete(&w.status))
            .count()
    }
}

/// 30 workloads in 3 namespaces, all three kinds, needing 1 to 4 minutes each.
fn thirty() -> Cluster {
    let kinds = WorkloadKind::ALL;
    let mut workloads = Vec::new();
    for i in 0..30 {
        let ns = format!("caas-{}", ["gateway", "auth", "socket"][i % 3]);
        let w = id(&ns, kinds[i % 3], &format!("svc-{i:02}"));
        workloads.push(SimWorkload::new(w, 2, Some((i as i64 * 7) % 4 + 1)));
    }
    // Listed in reverse: the planner orders them itself.
    workloads.reverse();
    Cluster {
        workloads,
        settings: "h1",
    }
}

fn plan_at(cluster: &Cluster, spec: &RolloutSpec, now: Timestamp) -> RolloutPlan {
    plan_rollout(spec, now, &cluster.observe()).unwrap()
}

#[test]
fn thirty_workloads_five_at_a_time_converge_each_restarted_once() {
    let spec = progressive(5, OnFailure::Rollback);
    let mut cluster = thirty();
    let mut started: Vec<WorkloadId> = Vec::new();
    let mut most_restarting = 0;
    let mut converged_at = None;
    for minute in 0..60 {
        let now = at(minute);
        cluster.tick(now);
        let plan = plan_at(&cluster, &spec, now);

        // The planner never has more than 5 rolling, nor the cluster.
        assert!(
            plan.counts.rolling_out <= 5,
            "minute {minute}: {:?}",
            plan.counts
        );
        assert_eq!(plan.counts.total, 30);
        // An operator restarted now, knowing nothing but the cluster, decides the same.
        let restarted = cluster.clone();
        assert_eq!(plan_at(&restarted, &spec, now), plan, "minute {minute}");

        started.extend(
            plan.steps
                .iter()
                .filter(|s| matches!(s.step, RolloutStep::Start { .. }))
                .map(|s| s.id.clone()),
        );
        cluster.enforce(&plan, now);
        most_restarting = most_restarting.max(cluster.restarting());
        assert!(
            cluster.restarting() <= 5,
            "minute {minute}: {} restarting",
            cluster.restarting()
        );

        if plan.counts.up_to_date == 30 {
            assert_eq!(plan.summary(), "30/30 workloads rolled out");
            assert_eq!(plan.requeue_at, None);
            converged_at = Some(minute);
            break;
        }
    }
    assert!(
        converged_at.is_some(),
        "the rollout did not converge in an hour"
    );
    assert_eq!(most_restarting, 5, "the rollout used its 5 slots");
    // Every workload started exactly once, in namespace, kind, name order.
    let mut sorted = started.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(started, sorted);
    assert_eq!(started.len(), 30);
    assert!(cluster.workloads.iter().all(|w| w.template_changes == 1));
}

#[test]
fn a_policy_change_mid_rollout_keeps_at_most_five_replacing_pods() {
    let spec = progressive(5, OnFailure::Rollback);
    let mut cluster = thirty();
    // The first two in rollout order crash with the first settings.
    let mut ids: Vec<WorkloadId> = cluster.workloads.iter().map(|w| w.id.clone()).collect();
    ids.sort();
    for w in &mut cluster.workloads {
        if ids[..2].contains(&w.id) {
            w.ready_after = None;
        }
    }
    let mut minute = 0;
    let mut switched = false;
    loop {
        let now = at(minute);
        cluster.tick(now);
        let plan = plan_at(&cluster, &spec, now);
        assert!(
            plan.counts.rolling_out <= 5,
            "minute {minute}: {:?}",
            plan.counts
        );
        cluster.enforce(&plan, now);
        assert!(
            cluster.restarting() <= 5,
            "minute {minute}: {} restarting",
            cluster.restarting()
        );
        if switched && plan.counts.up_to_date == 30 {
            break;
        }
        // Once both crashing workloads are rolled back, while 5 others roll out,
        // the platform team fixes the settings, and they work everywhere.
        if !switched && plan.counts.failed == 2 && cluster.restarting() == 5 {
            cluster.settings = "h2";
            for w in &mut cluster.workloads {
                w.ready_after = Some(2);
            }
            switched = true;
        }
        minute += 1;
        assert!(minute < 120, "no convergence: {:?}", plan.counts);
    }
    assert!(
        cluster.workloads.iter().all(
            |w| w.annotations.get(CONFIG_HASH_ANNOTATION) == Some(&format!("h2-{}", w.id.name))
        )
    );
}

#[test]
fn a_restarted_operator_tracks_applied_workloads_and_never_starts_them_again() {
    let spec = progressive(5, OnFailure::Rollback);
    let mut cluster = thirty();
    cluster.tick(at(0));
    let first = plan_at(&cluster, &spec, at(0));
    cluster.enforce(&first, at(0));
    let first_started: Vec<&WorkloadId> = first
        .steps
        .iter()
        .filter(|s| matches!(s.step, RolloutStep::Start { .. }))
        .map(|s| &s.id)
        .collect();
    assert_eq!(first_started.len(), 5);

    // The operator restarts before any watch event arrives: same cluster, later clock.
    for seconds in [0, 30, 599] {
        let plan = plan_at(&cluster, &spec, at_secs(seconds));
        for id in &first_started {
            assert_eq!(
                step_of(&plan, id),
                &RolloutStep::RollingOut {
                    since: at(0),
                    deadline: at(10)
                }
            );
        }
        assert_eq!(plan.counts.rolling_out, 5);
        assert_eq!(plan.counts.waiting, 25);
        assert_eq!(plan.requeue_at, Some(at(10)));
    }
    assert!(cluster.workloads.iter().all(|w| w.template_changes <= 1));
}

#[test]
fn steps_come_in_namespace_kind_name_order_whatever_the_input_order() {
    let spec = progressive(2, OnFailure::Rollback);
    let ids = [
        id("b", WorkloadKind::Deployment, "a"),
        id("a", WorkloadKind::DaemonSet, "a"),
        id("a", WorkloadKind::Deployment, "z"),
        id("a", WorkloadKind::StatefulSet, "a"),
    ];
    let inputs: Vec<WorkloadRollout> = ids.iter().cloned().map(fresh).collect();
    let mut reversed = inputs.clone();
    reversed.reverse();
    let plan = plan_rollout(&spec, at(0), &inputs).unwrap();
    assert_eq!(plan, plan_rollout(&spec, at(0), &reversed).unwrap());
    let order: Vec<String> = plan.steps.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(
        order,
        [
            "Deployment a/z",
            "StatefulSet a/a",
            "DaemonSet a/a",
            "Deployment b/a"
        ]
    );
    let started: Vec<bool> = plan.steps.iter().map(|s| s.step.applies_plan()).collect();
    assert_eq!(started, [true, true, false, false]);
}

#[test]
fn a_missed_deadline_fails_and_on_failure_decides_what_follows() {
    let a = deployment("a-gateway");
    let b = deployment("b-auth");
    let inputs = [
        carrying(a.clone(), Some("2025-03-01T12:00:00Z"), stuck()),
        fresh(b.clone()),
    ];
    let message = "1/2 replicas available, 1/2 updated, 2 still on the previous template \
                   after 10m (config h1-a-gateway, applied 2025-03-01T12:00:00Z)";
    let failed = || (REASON_PODS_NOT_READY, message.to_string());
    struct Row {
        on_failure: OnFailure,
        now: Timestamp,
        a: RolloutStep,
        b: RolloutStep,
        paused: bool,
    }
    let rolling = RolloutStep::RollingOut {
        since: at(0),
        deadline: at(10),
    };
    let rows = [
        Row {
            on_failure: OnFailure::Rollback,
            now: at_secs(599),
            a: rolling.clone(),
            b: RolloutStep::Queued,
            paused: false,
        },
        Row {
            on_failure: OnFailure::Pause,
            now: at_secs(599),
            a: rolling.clone(),
            b: RolloutStep::Queued,
            paused: false,
        },
        Row {
            on_failure: OnFailure::Continue,
            now: at_secs(599),
            a: rolling.clone(),
            b: RolloutStep::Queued,
            paused: false,
        },
        Row {
            on_failure: OnFailure::Rollback,
            now: at(10),
            a: RolloutStep::RollBack {
                reason: failed().0,
                message: failed().1,
            },
            // Restoring a's previous pods is a rollout too: b waits for it.
            b: RolloutStep::Queued,
            paused: false,
        },
        Row {
            on_failure: OnFailure::Pause,
            now: at(10),
            a: RolloutStep::Failed {
                reason: failed().0,
                message: failed().1,
            },
            b: RolloutStep::Paused,
            paused: true,
        },
        Row {
            on_failure: OnFailure::Continue,
            now: at(30),
            a: RolloutStep::Failed {
                reason: failed().0,
                message: failed().1,
            },
            b: RolloutStep::Start { drifted: false },
            paused: false,
        },
    ];
    for row in rows {
        let plan = plan_rollout(&progressive(1, row.on_failure), row.now, &inputs).unwrap();
        let what = format!("{:?} at {}", row.on_failure, row.now);
        assert_eq!(step_of(&plan, &a), &row.a, "{what}");
        assert_eq!(step_of(&plan, &b), &row.b, "{what}");
        assert_eq!(plan.paused_by.is_some(), row.paused, "{what}");
        if row.a == rolling {
            assert_eq!(plan.requeue_at, Some(at(10)), "{what}");
            assert_eq!(plan.counts.failed, 0, "{what}");
        } else {
            assert_eq!(plan.counts.failed, 1, "{what}");
            assert_eq!(
                plan.steps[0].step.failure(),
                Some((REASON_PODS_NOT_READY, message))
            );
        }
    }
}

#[test]
fn a_failed_workload_that_recovers_is_up_to_date_and_lifts_the_pause() {
    let a = deployment("a");
    let b = deployment("b");
    let spec = progressive(1, OnFailure::Pause);
    let stuck_a = carrying(a.clone(), Some("2025-03-01T12:00:00Z"), stuck());
    let plan = plan_rollout(&spec, at(20), &[stuck_a.clone(), fresh(b.clone())]).unwrap();
    assert_eq!(plan.paused_by, Some(a.clone()));
    assert_eq!(step_of(&plan, &b), &RolloutStep::Paused);

    let recovered = WorkloadRollout {
        status: Some(complete(2)),
        ..stuck_a
    };
    let plan = plan_rollout(&spec, at(21), &[recovered, fresh(b.clone())]).unwrap();
    assert_eq!(plan.paused_by, None);
    assert_eq!(step_of(&plan, &a), &RolloutStep::Record);
    assert_eq!(step_of(&plan, &b), &RolloutStep::Start { drifted: false });
}

#[test]
fn pause_is_lifted_when_the_policys_settings_change() {
    let spec = progressive(1, OnFailure::Pause);
    let mut cluster = Cluster {
        workloads: vec![
            SimWorkload::new(deployment("a"), 2, None),
            SimWorkload::new(deployment("b"), 2, Some(1)),
        ],
        settings: "h1",
    };
    let (a, b) = (deployment("a"), deployment("b"));
    for minute in 0..=15 {
        cluster.tick(at(minute));
        let plan = plan_at(&cluster, &spec, at(minute));
        cluster.enforce(&plan, at(minute));
    }
    let plan = plan_at(&cluster, &spec, at(16));
    assert_eq!(plan.paused_by, Some(a.clone()));
    assert!(matches!(step_of(&plan, &a), RolloutStep::Failed { .. }));
    assert_eq!(step_of(&plan, &b), &RolloutStep::Paused);
    assert_eq!(
        cluster.workloads[1].template_changes, 0,
        "b never started while paused"
    );

    // The platform team fixes the settings: every planned hash changes.
    cluster.settings = "h2";
    let plan = plan_at(&cluster, &spec, at(17));
    assert_eq!(plan.paused_by, None);
    assert_eq!(step_of(&plan, &a), &RolloutStep::Start { drifted: false });
    assert_eq!(step_of(&plan, &b), &RolloutStep::Queued);
}

#[test]
fn rollback_removes_the_change_once_and_the_rollout_goes_on() {
    let spec = progressive(1, OnFailure::Rollback);
    let mut cluster = Cluster {
        workloads: vec![
            SimWorkload::new(deployment("a"), 2, None),
            SimWorkload::new(deployment("b"), 2, Some(2)),
            SimWorkload::new(deployment("c"), 2, Some(1)),
        ],
        settings: "h1",
    };
    let mut rollbacks = Vec::new();
    let mut b_started = Vec::new();
    let mut last = None;
    for minute in 0..40 {
        cluster.tick(at(minute));
        let plan = plan_at(&cluster, &spec, at(minute));
        for s in &plan.steps {
            match s.step {
                RolloutStep::RollBack { .. } => rollbacks.push((s.id.name.to_string(), minute)),
                RolloutStep::Start { .. } if &*s.id.name == "b" => b_started.push(minute),
                _ => {}
            }
        }
        cluster.enforce(&plan, at(minute));
        assert!(cluster.restarting() <= 1, "minute {minute}");
        last = Some(plan);
    }
    let plan = last.unwrap();
    // At the deadline; the rollback holds the slot until a's old pods are back.
    assert_eq!(rollbacks, [("a".to_string(), 10)]);
    assert_eq!(b_started, [11]);
    assert_eq!(
        plan.counts,
        RolloutCounts {
            total: 3,
            up_to_date: 2,
            unavailable: 0,
            rolling_out: 0,
            failed: 1,
            waiting: 0
        }
    );
    let a = &cluster.workloads[0];
    assert!(matches!(
        step_of(&plan, &a.id),
        RolloutStep::RolledBack { .. }
    ));
    // Status keeps the cause the rollback recorded on the workload.
    assert_eq!(
        step_of(&plan, &a.id).failure().map(|f| f.0),
        Some(REASON_PODS_NOT_READY)
    );
    // Applied once, rolled back once, never applied again; its template is the user's again.
    assert_eq!(a.template_changes, 2);
    assert!(!a.carries_operator_env());
    assert!(a.id.kind.info().is_complete(&a.status));
    assert_eq!(
        a.annotations
            .get(ROLLOUT_FAILED_ANNOTATION)
            .map(String::as_str),
        Some("h1-a")
    );
    assert!(!a.annotations.contains_key(CONFIG_HASH_ANNOTATION));
    assert_eq!(
        a.annotations.get(APPLIED_AT_ANNOTATION).map(String::as_str),
        Some("2025-03-01T12:10:00Z")
    );
    assert_eq!(
        a.annotations.get(POLICY_ANNOTATION).map(String::as_str),
        Some(POLICY)
    );

    // New settings: the rolled-back workload is tried again, first in order.
    cluster.settings = "h2";
    let plan = plan_at(&cluster, &spec, at(41));
    assert_eq!(
        step_of(&plan, &deployment("a")),
        &RolloutStep::Start { drifted: false }
    );
}

#[test]
fn pause_holds_for_a_rolled_back_workload_of_the_current_settings() {
    let a = deployment("a");
    let rolled_back = WorkloadRollout {
        applied: false,
        live_hash: None,
        applied_at: None,
        rollout_failed: Some("h1-a".into()),
        ..carrying(a.clone(), None, complete(2))
    };
    let inputs = [rolled_back, fresh(deployment("b"))];
    let plan = plan_rollout(&progressive(5, OnFailure::Pause), at(0), &inputs).unwrap();
    assert_eq!(plan.paused_by, Some(a));
    assert_eq!(plan.steps[1].step, RolloutStep::Paused);
    let plan = plan_rollout(&progressive(5, OnFailure::Continue), at(0), &inputs).unwrap();
    assert_eq!(plan.steps[1].step, RolloutStep::Start { drifted: false });
}

#[test]
fn immediate_starts_everything_at_once() {
    let spec = spec(RolloutStrategy::Immediate, 1, "10m", OnFailure::Rollback);
    let mut cluster = thirty();
    cluster.tick(at(0));
    let plan = plan_at(&cluster, &spec, at(0));
    assert!(
        plan.steps
            .iter()
            .all(|s| s.step == RolloutStep::Start { drifted: false })
    );
    assert_eq!(plan.counts.rolling_out, 30);
    assert_eq!(plan.requeue_at, Some(at(10)));
    cluster.enforce(&plan, at(0));
    assert_eq!(cluster.restarting(), 30);
    for minute in 1..=5 {
        cluster.tick(at(minute));
    }
    let plan = plan_at(&cluster, &spec, at(5));
    assert_eq!(plan.counts.up_to_date, 30);
}

#[test]
fn a_drifted_workload_is_applied_again_and_waits_for_a_slot() {
    let spec = progressive(1, OnFailure::Rollback);
    let mut cluster = Cluster {
        workloads: vec![
            SimWorkload::new(deployment("a"), 2, Some(1)),
            SimWorkload::new(deployment("b"), 2, Some(3)),
        ],
        settings: "h1",
    };
    for minute in 0..10 {
        cluster.tick(at(minute));
        let plan = plan_at(&cluster, &spec, at(minute));
        cluster.enforce(&plan, at(minute));
    }
    assert_eq!(plan_at(&cluster, &spec, at(10)).counts.up_to_date, 2);

    // Someone removes a variable from b by hand (kubectl edit): pods restart.
    let b = &mut cluster.workloads[1];
    b.operator_env
        .retain(|(name, _)| name != "OTEL_TRACES_SAMPLER_ARG");
    let b_id = b.id.clone();
    let plan = plan_at(&cluster, &spec, at(11));
    assert_eq!(step_of(&plan, &b_id), &RolloutStep::Start { drifted: true });
    cluster.enforce(&plan, at(11));
    assert_eq!(cluster.workloads[1].template_changes, 2);

    // With the slot taken, a drifted workload queues like any other.
    let a_id = deployment("a");
    cluster.workloads[0]
        .operator_env
        .retain(|(name, _)| name != "OTEL_SERVICE_NAME");
    cluster.tick(at(12));
    let plan = plan_at(&cluster, &spec, at(12));
    assert_eq!(step_of(&plan, &a_id), &RolloutStep::Queued);
    assert!(matches!(
        step_of(&plan, &b_id),
        RolloutStep::RollingOut { .. }
    ));
}

#[test]
fn completeness_follows_each_kinds_controller() {
    let status = |generation, observed, desired, updated, available, old| RolloutState {
        generation,
        observed_generation: observed,
        desired,
        updated,
        available,
        old,
        ..RolloutState::default()
    };
    // (kind, status, up to date, reason and message when the deadline has passed)
    let rows = [
        (
            WorkloadKind::StatefulSet,
            status(3, 3, 3, 3, 3, 0),
            true,
            "",
        ),
        (
            WorkloadKind::StatefulSet,
            status(3, 3, 3, 2, 3, 1),
            false,
            "ProgressDeadlineExceeded: 3/3 replicas ready, 2/3 updated, 1 still on the previous template",
        ),
        (
            WorkloadKind::StatefulSet,
            status(3, 3, 3, 3, 2, 0),
            false,
            "PodsNotReady: 2/3 replicas ready, 3/3 updated",
        ),
        (WorkloadKind::DaemonSet, status(5, 5, 4, 4, 4, 0), true, ""),
        (WorkloadKind::DaemonSet, status(5, 5, 0, 0, 0, 0), true, ""),
        (
            WorkloadKind::DaemonSet,
            status(5, 5, 4, 3, 3, 1),
            false,
            "PodsNotReady: 3/4 pods available, 3/4 updated, 1 still on the previous template",
        ),
    ];
    for (kind, status, up_to_date, failure) in rows {
        let w = carrying(
            id("caas", kind, "w"),
            Some("2025-03-01T12:00:00Z"),
            status.clone(),
        );
        let spec = progressive(5, OnFailure::Continue);
        let early = plan_rollout(&spec, at(1), std::slice::from_ref(&w)).unwrap();
        let late = plan_rollout(&spec, at(10), &[w]).unwrap();
        if up_to_date {
            // Complete, not yet recorded: the record is the next write.
            assert_eq!(
                early.steps[0].step,
                RolloutStep::Record,
                "{kind} {status:?}"
            );
            assert_eq!(late.steps[0].step, RolloutStep::Record, "{kind} {status:?}");
        } else {
            assert!(
                matches!(early.steps[0].step, RolloutStep::RollingOut { .. }),
                "{kind} {status:?}"
            );
            let (reason, message) = late.steps[0].step.failure().unwrap();
            let got = format!("{reason}: {message}");
            assert!(got.starts_with(&format!("{failure} after 10m")), "{got}");
        }
    }
}

#[test]
fn an_unusable_applied_at_never_fails_a_workload_and_is_stamped_again() {
    let a = deployment("a");
    let b = deployment("b");
    let spec = progressive(1, OnFailure::Rollback);
    let now = at(24 * 60);
    for applied_at in [
        None,
        Some(""),
        Some("yesterday"),
        Some("2025-13-45T00:00:00Z"),
        Some("1740830400"),
        Some("2999-01-01T00:00:00Z"),
    ] {
        let inputs = [carrying(a.clone(), applied_at, stuck()), fresh(b.clone())];
        let plan = plan_rollout(&spec, now, &inputs).unwrap();
        assert_eq!(plan.steps[0].step, RolloutStep::Restamp, "{applied_at:?}");
        // It is rolling, so it holds the only slot.
        assert_eq!(plan.steps[1].step, RolloutStep::Queued, "{applied_at:?}");
        assert_eq!(plan.counts.rolling_out, 1);
        assert_eq!(plan.requeue_at, Some(at(24 * 60 + 10)));

        let done = [carrying(a.clone(), applied_at, complete(2))];
        let plan = plan_rollout(&spec, now, &done).unwrap();
        assert_eq!(plan.steps[0].step, RolloutStep::Record, "{applied_at:?}");
    }
}

#[test]
fn restamping_rewrites_only_annotations_and_restarts_the_deadline() {
    let spec = progressive(5, OnFailure::Rollback);
    let mut cluster = Cluster {
        workloads: vec![SimWorkload::new(deployment("a"), 2, Some(30))],
        settings: "h1",
    };
    cluster.tick(at(0));
    let plan = plan_at(&cluster, &spec, at(0));
    cluster.enforce(&plan, at(0));
    cluster.workloads[0]
        .annotations
        .insert(APPLIED_AT_ANNOTATION.into(), "garbled".into());
    cluster.tick(at(12));
    let plan = plan_at(&cluster, &spec, at(12));
    assert_eq!(plan.steps[0].step, RolloutStep::Restamp);
    cluster.enforce(&plan, at(12));
    assert_eq!(cluster.workloads[0].template_changes, 1, "no pod restart");
    let plan = plan_at(&cluster, &spec, at(13));
    assert_eq!(
        plan.steps[0].step,
        RolloutStep::RollingOut {
            since: at(12),
            deadline: at(22)
        }
    );
}

#[test]
fn observe_reads_only_this_policys_annotations() {
    let mut w = SimWorkload::new(deployment("a"), 1, Some(1));
    let (hash, env) = plan_of(&w.id, "h1");
    w.operator_apply(
        applied_annotations("other-policy", &hash, at(0)),
        &env,
        at(0),
    );
    w.annotations
        .insert(ROLLOUT_FAILED_ANNOTATION.into(), hash.clone());
    let seen = WorkloadRollout::observe(POLICY, &w.id, &hash, w.applied("h1"), Some(&w.view()));
    assert!(!seen.applied);
    assert_eq!(
        (seen.live_hash, seen.applied_at, seen.rollout_failed),
        (None, None, None)
    );

    w.operator_apply(applied_annotations(POLICY, &hash, at(0)), &env, at(0));
    let seen = WorkloadRollout::observe(POLICY, &w.id, &hash, w.applied("h1"), Some(&w.view()));
    assert!(seen.applied);
    assert_eq!(seen.live_hash.as_deref(), Some("h1-a"));
    assert_eq!(seen.applied_at.as_deref(), Some("2025-03-01T12:00:00Z"));

    let missing = WorkloadRollout::observe(POLICY, &w.id, &hash, true, None);
    assert!(!missing.applied && missing.live_hash.is_none());
}

#[test]
fn an_applied_workload_without_status_is_not_taken_as_done() {
    let w = WorkloadRollout {
        status: None,
        ..carrying(deployment("a"), Some("2025-03-01T12:00:00Z"), complete(1))
    };
    let plan = plan_rollout(&progressive(5, OnFailure::Continue), at(10), &[w]).unwrap();
    assert_eq!(
        plan.steps[0].step.failure(),
        Some((
            REASON_DEADLINE_EXCEEDED,
            "no rollout status reported by the Deployment after 10m \
             (config h1-a, applied 2025-03-01T12:00:00Z)"
        ))
    );
}

#[test]
fn annotation_values_round_trip() {
    let now = at_secs(90)
        .checked_add(SignedDuration::from_millis(700))
        .unwrap();
    assert_eq!(format_applied_at(now), "2025-03-01T12:01:30Z");
    assert_eq!(parse_applied_at(&format_applied_at(now)), Some(at_secs(90)));
    assert_eq!(
        parse_applied_at("2025-03-01T14:01:30+02:00"),
        Some(at_secs(90))
    );
    assert_eq!(parse_applied_at("2025-03-01 12:01:30"), None);

    let applied = applied_annotations(POLICY, "abc", now);
    assert_eq!(
        applied.get(POLICY_ANNOTATION).map(String::as_str),
        Some(POLICY)
    );
    assert_eq!(
        applied.get(CONFIG_HASH_ANNOTATION).map(String::as_str),
        Some("abc")
    );
    assert_eq!(
        applied.get(APPLIED_AT_ANNOTATION).map(String::as_str),
        Some("2025-03-01T12:01:30Z")
    );
    assert_eq!(applied.len(), 3);
    // No config hash: the rollback apply releases it along with the env.
    let rollback = rollback_annotations(POLICY, "abc", REASON_PODS_NOT_READY, "0/2 ready", now);
    let keys: Vec<&str> = rollback.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            APPLIED_AT_ANNOTATION,
            POLICY_ANNOTATION,
            ROLLOUT_FAILED_ANNOTATION,
            ROLLOUT_FAILURE_ANNOTATION
        ]
    );
    // The recorded cause is what status reports after the rollback.
    let recorded = recorded_failure(
        rollback.get(ROLLOUT_FAILURE_ANNOTATION).map(String::as_str),
        "abc",
    );
    assert_eq!(recorded, (REASON_PODS_NOT_READY, "0/2 ready".to_string()));
    let unknown = recorded_failure(Some("garbage"), "abc");
    assert_eq!(unknown.0, REASON_ROLLED_BACK);
    assert!(unknown.1.contains("abc"));
    assert_eq!(
        rollback.get(ROLLOUT_FAILED_ANNOTATION).map(String::as_str),
        Some("abc")
    );

    assert_eq!(rolled_out_summary(3, 30), "3/30 workloads rolled out");
}

#[test]
fn requeue_comes_at_the_nearest_deadline() {
    let inputs = [
        carrying(deployment("a"), Some("2025-03-01T12:03:00Z"), stuck()),
        carrying(deployment("b"), Some("2025-03-01T12:01:00Z"), stuck()),
        carrying(deployment("c"), Some("2025-03-01T12:00:00Z"), complete(1)),
    ];
    let plan = plan_rollout(&progressive(5, OnFailure::Rollback), at(5), &inputs).unwrap();
    assert_eq!(plan.requeue_at, Some(at(11)));
    assert_eq!(
        plan.requeue_after(at(5)),
        Some(std::time::Duration::from_secs(360))
    );
    assert_eq!(plan.requeue_after(at(12)), Some(std::time::Duration::ZERO));
    assert_eq!(plan.summary(), "1/3 workloads rolled out");
}

#[test]
fn a_bad_progress_deadline_names_the_field() {
    let spec = spec(
        RolloutStrategy::Progressive,
        5,
        "10 minutes",
        OnFailure::Rollback,
    );
    let error = plan_rollout(&spec, at(0), &[fresh(deployment("a"))]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("spec.rollout.progressDeadline: invalid duration")
    );
}

#[test]
fn complete_only_when_observed_updated_and_available() {
    let is_done = |s: &RolloutState| WorkloadKind::Deployment.info().is_complete(s);
    let done = complete(2);
    assert!(is_done(&done));
    for not_yet in [
        RolloutState {
            observed_generation: 1,
            ..done.clone()
        },
        RolloutState {
            updated: 1,
            ..done.clone()
        },
        RolloutState {
            available: 1,
            ..done.clone()
        },
        RolloutState {
            old: 1,
            ..done.clone()
        },
    ] {
        assert!(!is_done(&not_yet), "{not_yet:?}");
    }
    let scaled_to_zero = RolloutState {
        generation: 3,
        observed_generation: 3,
        ..Default::default()
    };
    assert!(is_done(&scaled_to_zero));
}

#[test]
fn after_its_rollout_a_workloads_unavailability_is_its_own() {
    // A drain, a crash, an HPA scale-up or the user's own release, long after the
    // operator's rollout completed: reported, never failed, rolled back or given a slot.
    let a = deployment("a");
    let drained = RolloutState {
        available: 1,
        ..complete(2)
    };
    let scaled_up = RolloutState {
        desired: 5,
        updated: 5,
        available: 2,
        ..complete(2)
    };
    let own_release = RolloutState {
        generation: 3,
        updated: 1,
        old: 2,
        ..complete(2)
    };
    for status in [drained, scaled_up, own_release] {
        let inputs = [
            rolled_out(a.clone(), status.clone()),
            fresh(deployment("b")),
        ];
        for on_failure in [OnFailure::Rollback, OnFailure::Pause, OnFailure::Continue] {
            let plan = plan_rollout(&progressive(1, on_failure), at(60 * 24), &inputs).unwrap();
            assert!(
                matches!(plan.steps[0].step, RolloutStep::Unavailable { .. }),
                "{status:?}: {:?}",
                plan.steps[0].step
            );
            assert_eq!(
                plan.steps[1].step,
                RolloutStep::Start { drifted: false },
                "no slot held"
            );
            assert_eq!(plan.counts.up_to_date, 1);
            assert_eq!(plan.counts.unavailable, 1);
            assert_eq!(plan.counts.failed, 0);
            assert_eq!(plan.paused_by, None);
        }
    }
    let back = plan_rollout(
        &progressive(1, OnFailure::Rollback),
        at(0),
        &[rolled_out(a, complete(2))],
    )
    .unwrap();
    assert_eq!(back.steps[0].step, RolloutStep::UpToDate);
}

#[test]
fn the_operators_own_rollout_is_recorded_once_complete() {
    let spec = progressive(5, OnFailure::Rollback);
    let mut cluster = Cluster {
        workloads: vec![SimWorkload::new(deployment("a"), 2, Some(1))],
        settings: "h1",
    };
    let mut steps = Vec::new();
    for minute in 0..4 {
        cluster.tick(at(minute));
        let plan = plan_at(&cluster, &spec, at(minute));
        steps.push(plan.steps[0].step.clone());
        cluster.enforce(&plan, at(minute));
    }
    assert!(matches!(steps[0], RolloutStep::Start { .. }));
    assert!(matches!(steps[1], RolloutStep::Record), "{steps:?}");
    assert_eq!(steps[2..], [RolloutStep::UpToDate, RolloutStep::UpToDate]);
    let w = &cluster.workloads[0];
    assert_eq!(
        w.annotations.get(ROLLED_OUT_ANNOTATION).map(String::as_str),
        Some("h1-a")
    );
    assert_eq!(w.template_changes, 1, "the record changes no template");
    // Then a pod dies: not ours.
    cluster.workloads[0].status.available = 1;
    let plan = plan_at(&cluster, &spec, at(60));
    assert!(matches!(
        plan.steps[0].step,
        RolloutStep::Unavailable { .. }
    ));
}

#[test]
fn a_paused_deployment_waits_for_its_owner_and_holds_no_slot() {
    let paused = RolloutState {
        paused: true,
        ..complete(2)
    };
    // Never instrumented: nothing is applied while it is paused.
    let waiting = WorkloadRollout {
        status: Some(paused.clone()),
        ..fresh(deployment("a"))
    };
    let plan = plan_rollout(
        &progressive(1, OnFailure::Rollback),
        at(30),
        &[waiting, fresh(deployment("b"))],
    )
    .unwrap();
    assert_eq!(
        plan.steps[0].step,
        RolloutStep::OwnerPaused { release: false }
    );
    assert_eq!(plan.steps[1].step, RolloutStep::Start { drifted: false });
    assert_eq!(plan.counts.waiting, 1);
    // Paused mid-rollout of ours, long past the deadline: not failed; applied-at is
    // dropped once, so the deadline counts from the resume.
    let mid = carrying(
        deployment("c"),
        Some("2025-03-01T12:00:00Z"),
        RolloutState {
            paused: true,
            ..stuck()
        },
    );
    let plan = plan_rollout(
        &progressive(1, OnFailure::Rollback),
        at(30),
        std::slice::from_ref(&mid),
    )
    .unwrap();
    assert_eq!(
        plan.steps[0].step,
        RolloutStep::OwnerPaused { release: true }
    );
    let released = WorkloadRollout {
        applied_at: None,
        ..mid.clone()
    };
    let plan = plan_rollout(
        &progressive(1, OnFailure::Rollback),
        at(31),
        std::slice::from_ref(&released),
    )
    .unwrap();
    assert_eq!(
        plan.steps[0].step,
        RolloutStep::OwnerPaused { release: false }
    );
    // Resumed: restamped, then judged from then on.
    let resumed = WorkloadRollout {
        status: Some(stuck()),
        ..released
    };
    let plan = plan_rollout(&progressive(1, OnFailure::Rollback), at(40), &[resumed]).unwrap();
    assert_eq!(plan.steps[0].step, RolloutStep::Restamp);
}

#[test]
fn nothing_starts_on_top_of_a_workloads_own_rollout() {
    let busy = WorkloadRollout {
        status: Some(RolloutState {
            generation: 3,
            updated: 1,
            old: 1,
            ..complete(2)
        }),
        ..fresh(deployment("a"))
    };
    let plan = plan_rollout(
        &progressive(1, OnFailure::Rollback),
        at(0),
        &[busy, fresh(deployment("b"))],
    )
    .unwrap();
    let RolloutStep::WaitingForWorkload { message } = &plan.steps[0].step else {
        panic!("{:?}", plan.steps[0].step);
    };
    assert!(
        message.contains("tracing starts once the Deployment is rolled out"),
        "{message}"
    );
    assert_eq!(
        plan.steps[1].step,
        RolloutStep::Start { drifted: false },
        "it holds no slot"
    );
}

#[test]
fn per_kind_completion_decides_on_delete_partition_and_scaled_to_zero() {
    let on_delete = RolloutState {
        updated: 0,
        old: 3,
        desired: 3,
        strategy: crate::workload::Strategy::OnDelete,
        ..complete(3)
    };
    let partitioned = RolloutState {
        updated: 2,
        old: 1,
        desired: 3,
        strategy: crate::workload::Strategy::Partitioned(1),
        ..complete(3)
    };
    let zero = complete(0);
    for (kind, state) in [
        (WorkloadKind::DaemonSet, on_delete.clone()),
        (WorkloadKind::StatefulSet, on_delete),
        (WorkloadKind::StatefulSet, partitioned),
        (WorkloadKind::Deployment, zero),
    ] {
        let w = carrying(id("caas", kind, "w"), Some("2025-03-01T12:00:00Z"), state);
        let plan = plan_rollout(&progressive(1, OnFailure::Rollback), at(60), &[w]).unwrap();
        assert_eq!(plan.steps[0].step, RolloutStep::Record, "{kind}");
    }
}

#[test]
fn pods_left_on_the_previous_template_by_the_update_strategy_are_described() {
    let on_delete = RolloutState {
        updated: 0,
        old: 3,
        desired: 3,
        strategy: crate::workload::Strategy::OnDelete,
        ..complete(3)
    };
    let ds = id("caas", WorkloadKind::DaemonSet, "agent");
    let message = pods_left_behind(&ds, &on_delete).expect("described");
    assert!(
        message.contains("3 still on the previous template until deleted"),
        "{message}"
    );
    let all_replaced = RolloutState {
        updated: 3,
        old: 0,
        ..on_delete.clone()
    };
    assert_eq!(pods_left_behind(&ds, &all_replaced), None);
    // A rolling update's old pods are its controller's to replace: not listed.
    let rolling = RolloutState {
        old: 1,
        ..complete(3)
    };
    assert_eq!(pods_left_behind(&deployment("a"), &rolling), None);
    let partitioned = RolloutState {
        updated: 2,
        old: 1,
        strategy: crate::workload::Strategy::Partitioned(1),
        ..complete(3)
    };
    let sts = id("caas", WorkloadKind::StatefulSet, "db");
    assert!(
        pods_left_behind(&sts, &partitioned).is_some_and(|m| m.contains("partition 1")),
        "{:?}",
        pods_left_behind(&sts, &partitioned)
    );
}

/// A controller that has not observed the operator's change by the deadline
/// (kube-controller-manager overloaded or down) is not the change failing:
/// the workload keeps rolling and its slot, with `onFailure: Rollback` too,
/// until the controller catches up; then it is judged as usual.
#[test]
fn a_change_its_controller_has_not_seen_yet_never_fails_at_the_deadline() {
    let unobserved = RolloutState {
        generation: 3,
        observed_generation: 2,
        desired: 2,
        updated: 2,
        available: 2,
        ..RolloutState::default()
    };
    let w = carrying(
        id("caas", WorkloadKind::DaemonSet, "agent"),
        Some("2025-03-01T12:00:00Z"),
        unobserved.clone(),
    );
    let spec = progressive(1, OnFailure::Rollback);
    let late = plan_rollout(&spec, at(60), std::slice::from_ref(&w)).unwrap();
    assert!(
        matches!(late.steps[0].step, RolloutStep::RollingOut { .. }),
        "{:?}",
        late.steps[0].step
    );
    assert_eq!(late.counts.rolling_out, 1);
    assert_eq!(late.counts.failed, 0);
    // Looked at again a deadline later, not in a loop.
    assert_eq!(late.requeue_at, Some(at(70)));

    // Observed, and its pods did not come up: now it fails, and is rolled back.
    let observed_unready = RolloutState {
        observed_generation: 3,
        available: 1,
        ..unobserved
    };
    let w = carrying(
        id("caas", WorkloadKind::DaemonSet, "agent"),
        Some("2025-03-01T12:00:00Z"),
        observed_unready,
    );
    let judged = plan_rollout(&spec, at(60), &[w]).unwrap();
    assert!(
        matches!(judged.steps[0].step, RolloutStep::RollBack { .. }),
        "{:?}",
        judged.steps[0].step
    );
}
