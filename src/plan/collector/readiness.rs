//! Whether a tier can take spans, from its Deployment as the cluster reports it.
//!
//! A tier without a ready replica cannot serve: the workloads that depend on it
//! are not switched to it. While the Deployment is still rolling out within its
//! progress deadline (a new collector coming up) they wait for it; a tier whose
//! rollout had completed and that lost every ready pod is unavailable (the
//! policy is `Degraded`, and it clears by itself); one past its progress
//! deadline is stuck (`Degraded` and `Stalled`: something must change).

use k8s_openapi::api::apps::v1::Deployment;

/// What the Deployment of a tier says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// At least one replica is ready.
    Ready { ready: i32, replicas: i32 },
    /// No Deployment yet (it is being created).
    Absent,
    /// No ready replica yet; the rollout is within its progress deadline.
    Starting { replicas: i32 },
    /// No ready replica although the rollout had completed: its pods went away.
    Unavailable { replicas: i32 },
    /// No ready replica, and the rollout exceeded its progress deadline.
    Stuck { replicas: i32, message: String },
}

impl Readiness {
    /// Whether the tier can take spans now.
    pub fn serves(&self) -> bool {
        matches!(self, Readiness::Ready { .. })
    }

    /// Ready replicas, 0 unless ready.
    pub fn ready_replicas(&self) -> i32 {
        match self {
            Readiness::Ready { ready, .. } => *ready,
            _ => 0,
        }
    }
}

/// The Deployment controller's reason once a rollout is complete.
const ROLLOUT_COMPLETE: &str = "NewReplicaSetAvailable";
/// Its reason when a rollout made no progress within `progressDeadlineSeconds`.
const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// The readiness of a tier from its live Deployment (`None`: not created yet).
pub fn readiness(deployment: Option<&Deployment>) -> Readiness {
    let Some(d) = deployment else {
        return Readiness::Absent;
    };
    let status = d.status.as_ref();
    let replicas = d
        .spec
        .replicas
        .or_else(|| status.and_then(|s| s.replicas))
        .unwrap_or(1);
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    if ready > 0 {
        return Readiness::Ready { ready, replicas };
    }
    let progressing = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_.as_deref() == Some("Progressing")));
    let observed = status.and_then(|s| s.observed_generation);
    let current = observed.is_some() && observed >= d.metadata.generation;
    match progressing {
        Some(c)
            if c.status.as_deref() == Some("False")
                && c.reason.as_deref() == Some(DEADLINE_EXCEEDED) =>
        {
            Readiness::Stuck {
                replicas,
                message: c.message.clone().unwrap_or_default(),
            }
        }
        Some(c) if current && c.reason.as_deref() == Some(ROLLOUT_COMPLETE) => {
            Readiness::Unavailable { replicas }
        }
        _ => Readiness::Starting { replicas },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(
        generation: i64,
        observed: i64,
        ready: i32,
        progressing: Option<(&str, &str)>,
    ) -> Deployment {
        let mut status = serde_json::json!({"observedGeneration": observed, "replicas": 2, "readyReplicas": ready});
        if let Some((s, reason)) = progressing {
            status["conditions"] = serde_json::json!([
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                {"type": "Progressing", "status": s, "reason": reason, "message": "ReplicaSet \"x-1\" has timed out progressing."},
            ]);
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "generation": generation},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .expect("deployment")
    }

    #[test]
    fn ready_starting_unavailable_and_stuck() {
        assert_eq!(readiness(None), Readiness::Absent);
        assert_eq!(
            readiness(Some(&deployment(1, 1, 1, Some(("True", ROLLOUT_COMPLETE))))),
            Readiness::Ready {
                ready: 1,
                replicas: 2
            }
        );
        // Just created: no status conditions yet, or the new ReplicaSet coming up.
        assert_eq!(
            readiness(Some(&deployment(1, 0, 0, None))),
            Readiness::Starting { replicas: 2 }
        );
        assert_eq!(
            readiness(Some(&deployment(
                1,
                1,
                0,
                Some(("True", "NewReplicaSetCreated"))
            ))),
            Readiness::Starting { replicas: 2 }
        );
        // Rolled out, then every pod went: unavailable, not starting.
        assert_eq!(
            readiness(Some(&deployment(1, 1, 0, Some(("True", ROLLOUT_COMPLETE))))),
            Readiness::Unavailable { replicas: 2 }
        );
        // A new generation the controller has not looked at yet is starting.
        assert_eq!(
            readiness(Some(&deployment(2, 1, 0, Some(("True", ROLLOUT_COMPLETE))))),
            Readiness::Starting { replicas: 2 }
        );
        let stuck = readiness(Some(&deployment(
            1,
            1,
            0,
            Some(("False", DEADLINE_EXCEEDED)),
        )));
        assert!(
            matches!(&stuck, Readiness::Stuck { message, .. } if message.contains("timed out")),
            "{stuck:?}"
        );
        assert!(!stuck.serves());
        // Past the deadline with old pods still ready: it serves.
        assert!(
            readiness(Some(&deployment(
                2,
                2,
                1,
                Some(("False", DEADLINE_EXCEEDED))
            )))
            .serves()
        );
    }
}
