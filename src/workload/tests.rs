use super::*;
use serde_json::json;

fn project<K: Kind>(object: serde_json::Value) -> Workload {
    serde_json::from_value::<Projection<K>>(object)
        .expect("object projects")
        .workload
}

fn env_fields(container: &str, values: &[&str], keys_only: &[&str]) -> serde_json::Value {
    let mut env = serde_json::Map::new();
    for n in values {
        env.insert(
            format!("k:{{\"name\":\"{n}\"}}"),
            json!({".": {}, "f:name": {}, "f:value": {}}),
        );
    }
    for n in keys_only {
        env.insert(
            format!("k:{{\"name\":\"{n}\"}}"),
            json!({".": {}, "f:name": {}}),
        );
    }
    json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
        format!("k:{{\"name\":\"{container}\"}}"): {".": {}, "f:name": {}, "f:env": env}
    }}}}})
}

fn gateway() -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "gateway", "namespace": "caas-gateway", "generation": 4, "resourceVersion": "77",
            "labels": {"app.kubernetes.io/part-of": "caas"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...a whole manifest...}",
                "tracing.caas.io/policy": "caas-production",
                "resource.opentelemetry.io/service.name": "api-gateway",
                "unrelated": "x"
            },
            "managedFields": [
                {"manager": "tracing-operator", "operation": "Apply", "fieldsType": "FieldsV1",
                 "fieldsV1": env_fields("app", &["OTEL_SERVICE_NAME"], &["OTEL_TRACES_SAMPLER_ARG"])},
                {"manager": "kubectl-set", "operation": "Update", "fieldsType": "FieldsV1",
                 "fieldsV1": env_fields("app", &["OTEL_TRACES_SAMPLER_ARG"], &[])},
                {"manager": "tracing-operator", "operation": "Update", "fieldsType": "FieldsV1",
                 "fieldsV1": env_fields("app", &["NODE_ENV"], &[])}
            ]
        },
        "spec": {
            "replicas": 2, "paused": true,
            "selector": {"matchLabels": {"app": "gateway"}},
            "template": {
                "metadata": {
                    "labels": {"app": "gateway", "app.kubernetes.io/version": "2.4.1"},
                    "annotations": {"tracing.caas.io/config-hash": "abc", "env.tracing.caas.io/OTEL_SERVICE_NAME": "api-gateway", "other": "y"}
                },
                "spec": {
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                    "initContainers": [{"name": "init", "image": "busybox"}],
                    "containers": [{"name": "app", "image": "caas/gateway:2.4.1", "args": ["--big"],
                        "env": [
                            {"name": "NODE_ENV", "value": "production"},
                            {"name": "OTEL_SERVICE_NAME", "value": "api-gateway"},
                            {"name": "OTEL_TRACES_SAMPLER_ARG", "value": "1"},
                            {"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g -javaagent:/dd/agent.jar"},
                            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}
                        ]}]
                }
            }
        },
        "status": {"observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}
    })
}

#[test]
fn a_deployment_projects_to_what_planning_reads() {
    let w = project::<deployment::Deployment>(gateway());
    assert_eq!(w.id.to_string(), "Deployment caas-gateway/gateway");
    assert_eq!(
        w.labels
            .get("app.kubernetes.io/part-of")
            .map(String::as_str),
        Some("caas")
    );
    // Only the annotations the operator reads; kubectl's copy of the manifest is gone.
    let keys: Vec<&str> = w.annotations.keys().collect();
    assert_eq!(
        keys,
        [
            "resource.opentelemetry.io/service.name",
            "tracing.caas.io/policy"
        ]
    );
    assert_eq!(
        w.template.labels.get(VERSION_LABEL).map(String::as_str),
        Some("2.4.1")
    );
    assert!(!w.template.labels.contains_key("app"));
    // The operator's template annotations: a digest of all, no value kept.
    assert_ne!(w.template.ours, 0);
    assert_eq!(
        w.template.ours,
        annotations_digest([
            ("tracing.caas.io/config-hash", "abc"),
            ("env.tracing.caas.io/OTEL_SERVICE_NAME", "api-gateway"),
        ])
    );
    assert!(
        !w.template
            .annotations
            .contains_key("tracing.caas.io/config-hash")
    );
    assert!(
        !w.template
            .annotations
            .contains_key("env.tracing.caas.io/OTEL_SERVICE_NAME")
    );
    let app = &w.template.containers[0];
    assert_eq!(
        w.template.containers.len(),
        1,
        "init containers are never read"
    );
    assert_eq!(app.image.as_deref(), Some("caas/gateway:2.4.1"));
    assert!(app.java_agent);
    let owners: Vec<(&str, EnvOwner, bool, bool)> = app
        .env
        .iter()
        .map(|e| (&*e.name, e.owner, e.value_from, e.listed_by_operator))
        .collect();
    assert_eq!(
        owners,
        [
            // An Update by the operator's manager is not its apply.
            ("NODE_ENV", EnvOwner::User, false, false),
            ("OTEL_SERVICE_NAME", EnvOwner::Operator, false, true),
            // kubectl set env took the value: the operator keeps only the key, so
            // it is the user's, and the operator's apply must keep listing it.
            ("OTEL_TRACES_SAMPLER_ARG", EnvOwner::User, false, true),
            ("JAVA_TOOL_OPTIONS", EnvOwner::User, false, false),
            ("DB_PASSWORD", EnvOwner::User, true, false),
        ]
    );
    assert_eq!(
        app.entry("OTEL_SERVICE_NAME").map(|e| e.digest),
        Some(env_digest("OTEL_SERVICE_NAME", Some("api-gateway"), None))
    );
    assert_eq!(
        w.rollout,
        RolloutState {
            generation: 4,
            observed_generation: 4,
            desired: 2,
            updated: 2,
            available: 1,
            old: 0,
            paused: true,
            strategy: Strategy::RollingUpdate,
        }
    );
}

#[test]
fn strings_many_workloads_share_are_stored_once() {
    let a = project::<deployment::Deployment>(gateway());
    let mut other = gateway();
    other["metadata"]["name"] = json!("gateway-2");
    let b = project::<deployment::Deployment>(other);
    assert!(Arc::ptr_eq(&a.id.namespace, &b.id.namespace));
    assert!(Arc::ptr_eq(
        &a.template.containers[0].name,
        &b.template.containers[0].name
    ));
    assert!(Arc::ptr_eq(
        &a.template.containers[0].env[0].name,
        &b.template.containers[0].env[0].name
    ));
}

#[test]
fn a_cronjob_reads_its_template_at_its_own_path() {
    let w = project::<cronjob::CronJob>(json!({
        "metadata": {"name": "report", "namespace": "caas-batch", "generation": 3,
            "managedFields": [{"manager": "tracing-operator", "operation": "Apply", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:jobTemplate": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"job\"}": {"f:env": {"k:{\"name\":\"OTEL_SERVICE_NAME\"}": {"f:value": {}}}}}}}}}}}}]},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [
            {"name": "job", "image": "caas/report:1", "env": [{"name": "OTEL_SERVICE_NAME", "value": "report"}]}]}}}}}
    }));
    assert_eq!(w.id.kind, WorkloadKind::CronJob);
    assert_eq!(w.template.containers[0].env[0].owner, EnvOwner::Operator);
    assert!(WorkloadKind::CronJob.info().is_complete(&w.rollout));
    assert_eq!(WorkloadKind::CronJob.info().api_version(), "batch/v1");
}

fn state(desired: i32, updated: i32, available: i32, old: i32, strategy: Strategy) -> RolloutState {
    RolloutState {
        generation: 3,
        observed_generation: 3,
        desired,
        updated,
        available,
        old,
        paused: false,
        strategy,
    }
}

#[test]
fn completion_per_kind_follows_kubectl_rollout_status() {
    use Strategy::*;
    use WorkloadKind::*;
    let rows = [
        // (kind, state, complete, description)
        (
            Deployment,
            state(2, 2, 2, 0, RollingUpdate),
            true,
            "2/2 replicas available, 2/2 updated",
        ),
        (
            Deployment,
            state(2, 2, 1, 0, RollingUpdate),
            false,
            "1/2 replicas available, 2/2 updated",
        ),
        (
            Deployment,
            state(2, 1, 2, 1, RollingUpdate),
            false,
            "2/2 replicas available, 1/2 updated, 1 still on the previous template",
        ),
        (
            Deployment,
            state(0, 0, 0, 0, RollingUpdate),
            true,
            "0/0 replicas available, 0/0 updated",
        ),
        (
            StatefulSet,
            state(3, 3, 3, 0, RollingUpdate),
            true,
            "3/3 replicas ready, 3/3 updated",
        ),
        (
            StatefulSet,
            state(3, 3, 2, 0, RollingUpdate),
            false,
            "2/3 replicas ready, 3/3 updated",
        ),
        // partition 1: replicas 1 and 2 (two of them) must be updated, replica 0 keeps the old.
        (
            StatefulSet,
            state(3, 2, 3, 1, Partitioned(1)),
            true,
            "3/3 replicas ready, 2/3 updated (partition 1: replicas below it keep the previous template)",
        ),
        (
            StatefulSet,
            state(3, 1, 3, 2, Partitioned(1)),
            false,
            "3/3 replicas ready, 1/3 updated (partition 1: replicas below it keep the previous template)",
        ),
        (
            StatefulSet,
            state(3, 0, 3, 3, OnDelete),
            true,
            "3/3 replicas ready, 0/3 updated, 3 still on the previous template until deleted (updateStrategy OnDelete)",
        ),
        (
            DaemonSet,
            state(3, 3, 3, 0, RollingUpdate),
            true,
            "3/3 pods available, 3/3 updated",
        ),
        // A node left: judged on the nodes it runs on now.
        (
            DaemonSet,
            state(2, 2, 2, 0, RollingUpdate),
            true,
            "2/2 pods available, 2/2 updated",
        ),
        (
            DaemonSet,
            state(3, 2, 3, 1, RollingUpdate),
            false,
            "3/3 pods available, 2/3 updated, 1 still on the previous template",
        ),
        (
            DaemonSet,
            state(3, 0, 3, 3, OnDelete),
            true,
            "3/3 pods available, 0/3 updated, 3 still on the previous template until deleted (updateStrategy OnDelete)",
        ),
    ];
    for (kind, s, complete, text) in rows {
        assert_eq!(kind.info().is_complete(&s), complete, "{kind} {s:?}");
        assert_eq!(kind.info().describe(&s), text, "{kind}");
    }
    // Nothing is complete before the controller saw the generation.
    for kind in [Deployment, StatefulSet, DaemonSet] {
        let unseen = RolloutState {
            observed_generation: 2,
            ..state(1, 1, 1, 0, OnDelete)
        };
        assert!(!kind.info().is_complete(&unseen), "{kind}");
        assert!(
            kind.info()
                .describe(&unseen)
                .starts_with("generation 3 not yet observed")
        );
    }
}

#[test]
fn statefulset_strategy_and_revisions_are_read() {
    let w = project::<statefulset::StatefulSet>(json!({
        "metadata": {"name": "db", "namespace": "caas", "generation": 2},
        "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
                 "template": {"spec": {"containers": [{"name": "db", "image": "db:1"}]}}},
        "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "readyReplicas": 3,
                   "currentRevision": "db-1", "updateRevision": "db-2"}
    }));
    assert_eq!(w.rollout.strategy, Strategy::Partitioned(1));
    assert_eq!((w.rollout.updated, w.rollout.old), (2, 1));
    assert!(WorkloadKind::StatefulSet.info().is_complete(&w.rollout));
    // After a completed rollout updatedReplicas may read 0: the current revision says all are updated.
    let done = project::<statefulset::StatefulSet>(json!({
        "metadata": {"name": "db", "namespace": "caas", "generation": 2},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "db"}]}}},
        "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 0, "readyReplicas": 3,
                   "currentRevision": "db-2", "updateRevision": "db-2"}
    }));
    assert!(WorkloadKind::StatefulSet.info().is_complete(&done.rollout));
}
