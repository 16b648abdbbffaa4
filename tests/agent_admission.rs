//! Zero-code tracing on the real API server.
//!
//! Most tests here check the operator's MutatingAdmissionPolicy, agent part:
//! pods carrying the annotations the planner writes for a workload with an
//! OpenTelemetry agent are created with `dryRun=All`, and the test reads what
//! admission made of them. The policy under test is the operator's own
//! ([`mutating_admission_policy`]) under another name, with `failurePolicy:
//! Fail` so that a CEL error fails the create with its message instead of
//! silently injecting nothing, bound to this test's namespaces only.
//!
//! The last one runs the whole way: the controller in this process (admission
//! injection) and a TracingPolicy with `instrumentation`; the pods the API
//! server stores for the Deployments are run as local processes with the real
//! agents (`support::pod`), and their spans are read back from Jaeger.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use tracing_operator::api::TracingPolicySpec;
use tracing_operator::plan::agents::{INIT_CONTAINER_NAME, MOUNT_PATH, VOLUME_NAME};
use tracing_operator::plan::injection::{mutating_admission_policy, template_annotations};
use tracing_operator::plan::{
    Injection, NamespaceView, PolicyView, Snapshot, WorkloadAction, plan_policy,
};
use tracing_operator::workload::{deployment::Deployment, from_json};

const POLICY: &str = "tracing-operator-agent-test.tracing.caas.io";
const NAMESPACE_LABEL: &str = "tracing-test.caas.io/agent-admission";

struct Setup {
    /// A client of the calling test's runtime (each test has its own).
    client: Client,
    /// A namespace without Pod Security enforcement.
    plain: String,
    /// A namespace enforcing the `restricted` Pod Security Standard.
    restricted: String,
}

/// The policy under test and its namespaces, set up once per test binary, and
/// a client for the calling test.
async fn setup() -> Setup {
    static SETUP: OnceCell<(String, String)> = OnceCell::const_new();
    let (plain, restricted) = SETUP
        .get_or_init(|| async {
            let client = support::client().await;
            let run = support::suffix();
            let plain =
                support::fresh_namespace(&client, "agents", &[(NAMESPACE_LABEL, &run)]).await;
            let restricted = support::fresh_namespace(
                &client,
                "agents-restricted",
                &[
                    (NAMESPACE_LABEL, &run),
                    ("pod-security.kubernetes.io/enforce", "restricted"),
                ],
            )
            .await;
            let mut policy = mutating_admission_policy("test");
            policy["metadata"]["name"] = json!(POLICY);
            policy["spec"]["failurePolicy"] = json!("Fail");
            let binding = json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingAdmissionPolicyBinding",
                "metadata": {"name": POLICY},
                "spec": {
                    "policyName": POLICY,
                    "matchResources": {"namespaceSelector": {"matchExpressions": [
                        {"key": NAMESPACE_LABEL, "operator": "Exists"}]}},
                },
            });
            for (object, plural) in [
                (&policy, "mutatingadmissionpolicies"),
                (&binding, "mutatingadmissionpolicybindings"),
            ] {
                let object: DynamicObject =
                    serde_json::from_value(object.clone()).expect("an object");
                let resource = kube::api::ApiResource {
                    group: "admissionregistration.k8s.io".into(),
                    version: "v1".into(),
                    api_version: "admissionregistration.k8s.io/v1".into(),
                    kind: object
                        .types
                        .as_ref()
                        .map(|t| t.kind.clone())
                        .unwrap_or_default(),
                    plural: plural.into(),
                };
                Api::<DynamicObject>::all_with(client.clone(), &resource)
                    .patch(
                        POLICY,
                        &PatchParams::apply("tracing-operator-tests").force(),
                        &Patch::Apply(&object),
                    )
                    .await
                    .expect("the admission policy under test applies");
            }
            let setup = Setup {
                client,
                plain,
                restricted,
            };
            // A new admission policy takes a moment to be enforced.
            support::wait_until(
                "the admission policy under test injects",
                Duration::from_secs(60),
                || async {
                    let pod = admit(
                        &setup,
                        &setup.plain,
                        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
                        json!([{"name": "app", "image": "caas/gateway:1"}]),
                        json!({}),
                    )
                    .await
                    .ok()?;
                    has_init(&pod).then_some(())
                },
            )
            .await;
            (setup.plain, setup.restricted)
        })
        .await
        .clone();
    Setup {
        client: support::client().await,
        plain,
        restricted,
    }
}

fn has_init(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .any(|c| c.name == INIT_CONTAINER_NAME)
}

/// The pod of a Deployment whose template has `annotations` and `containers`
/// (and `spec` merged into the pod spec), with the annotations the operator
/// plans for it under a policy with `instrumentation` (admission injection),
/// as admission returns it from a dry-run create in `namespace`.
async fn admit(
    setup: &Setup,
    namespace: &str,
    annotations: Value,
    containers: Value,
    spec: Value,
) -> Result<Pod, kube::Error> {
    admit_with(setup, namespace, annotations, containers, spec, json!({})).await
}

async fn admit_with(
    setup: &Setup,
    namespace: &str,
    annotations: Value,
    containers: Value,
    spec: Value,
    instrumentation: Value,
) -> Result<Pod, kube::Error> {
    let mut pod_spec = json!({"containers": containers});
    if let (Some(p), Some(extra)) = (pod_spec.as_object_mut(), spec.as_object()) {
        p.extend(extra.clone());
    }
    let template = json!({
        "metadata": {"labels": {"app.kubernetes.io/name": "svc", "app.kubernetes.io/version": "1.0.0"},
                     "annotations": annotations},
        "spec": pod_spec,
    });
    let workload = from_json::<Deployment>(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "svc", "namespace": namespace},
        "spec": {"template": template},
    }))
    .expect("the deployment projects");
    let policy_spec: TracingPolicySpec = serde_json::from_value(json!({
        "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger.observability.svc:4317"}],
        "instrumentation": instrumentation,
    }))
    .expect("a policy spec");
    let policy = PolicyView {
        name: "caas-production".into(),
        spec: policy_spec,
        created_unix: 0,
        deleting: false,
    };
    let namespaces = BTreeMap::from([(
        namespace.to_string(),
        NamespaceView {
            name: namespace.into(),
            labels: BTreeMap::new(),
        },
    )]);
    let workloads = [Arc::new(workload)];
    let policies = [policy.clone()];
    let snapshot = Snapshot {
        operator_namespace: "tracing-operator",
        namespaces: &namespaces,
        workloads: &workloads,
        policies: &policies,
        injection: Injection::Admission,
    };
    let decision = plan_policy(&policy, &snapshot)
        .expect("the policy plans")
        .workloads
        .into_iter()
        .next()
        .map(|d| d.action);
    let Some(WorkloadAction::Apply(plan)) = decision else {
        panic!("the workload is not planned: {decision:?}");
    };
    let mut pod = template;
    let merged = pod["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations");
    for (k, v) in template_annotations(&plan) {
        merged.insert(k, json!(v));
    }
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!(support::unique("svc"));
    let pod: Pod = serde_json::from_value(pod).expect("a pod");
    Api::<Pod>::namespaced(setup.client.clone(), namespace)
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod,
        )
        .await
}

fn container<'p>(pod: &'p Pod, name: &str) -> &'p Container {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container's env as `NAME=value` (`NAME<-field` for a downward-API entry).
fn env(c: &Container) -> Vec<String> {
    c.env
        .iter()
        .flatten()
        .map(|e| match (&e.value, &e.value_from) {
            (_, Some(from)) => format!(
                "{}<-{}",
                e.name,
                from.field_ref
                    .as_ref()
                    .map_or("other", |f| f.field_path.as_str())
            ),
            (v, None) => format!("{}={}", e.name, v.as_deref().unwrap_or("")),
        })
        .collect()
}

fn value<'c>(c: &'c Container, name: &str) -> Option<&'c str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn mounts(c: &Container) -> Vec<(String, String, bool)> {
    c.volume_mounts
        .iter()
        .flatten()
        .filter(|m| !m.mount_path.starts_with("/var/run/secrets/"))
        .map(|m| {
            (
                m.name.clone(),
                m.mount_path.clone(),
                m.read_only == Some(true),
            )
        })
        .collect()
}

fn init_containers(pod: &Pod) -> Vec<&Container> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .collect()
}

fn agent_init(pod: &Pod) -> &Container {
    init_containers(pod)
        .into_iter()
        .find(|c| c.name == INIT_CONTAINER_NAME)
        .expect("the agent's init container")
}

#[tokio::test]
async fn a_nodejs_pod_gets_the_volume_the_init_container_the_mount_and_its_flag_after_the_users() {
    let s = &setup().await;
    let pod = admit(
        s,
        &s.plain,
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        json!([
            {"name": "app", "image": "caas/gateway:2.4.1",
             "env": [{"name": "PORT", "value": "8080"},
                     {"name": "NODE_OPTIONS", "value": "--max-http-header-size=16384"}]},
            {"name": "istio-proxy", "image": "istio/proxyv2:1.27"},
        ]),
        json!({}),
    )
    .await
    .expect("admitted");

    let app = container(&pod, "app");
    let names: Vec<String> = env(app);
    // The user's entry keeps its place and gets the flag after its own value;
    // the SDK env follows as before.
    assert_eq!(names[0], "PORT=8080");
    assert_eq!(
        names[1],
        format!(
            "NODE_OPTIONS=--max-http-header-size=16384 --require {MOUNT_PATH}/autoinstrumentation.js"
        )
    );
    assert_eq!(names[2], "OTEL_RESOURCE_ATTRIBUTES_POD_NAME<-metadata.name");
    assert_eq!(value(app, "OTEL_SERVICE_NAME"), Some("svc"));
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("NODE_OPTIONS"))
            .count(),
        1
    );
    assert_eq!(
        mounts(app),
        [(VOLUME_NAME.to_string(), MOUNT_PATH.to_string(), true)]
    );
    // The proxy gets nothing.
    let proxy = container(&pod, "istio-proxy");
    assert!(env(proxy).is_empty(), "{:?}", env(proxy));
    assert!(mounts(proxy).is_empty());

    let init = agent_init(&pod);
    assert_eq!(
        init.image.as_deref(),
        Some("ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-nodejs:0.78.0")
    );
    assert_eq!(
        init.command.as_deref().unwrap_or_default(),
        ["cp", "-r", "/autoinstrumentation/.", MOUNT_PATH]
    );
    assert!(init.env.is_none(), "the init container gets no SDK env");
    assert_eq!(
        mounts(init),
        [(VOLUME_NAME.to_string(), MOUNT_PATH.to_string(), false)]
    );
    let sc = init.security_context.as_ref().expect("a security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let resources = serde_json::to_value(&init.resources).expect("resources");
    assert_eq!(
        resources,
        json!({"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}})
    );
    let volume = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .find(|v| v.name == VOLUME_NAME)
        .expect("the agent volume");
    assert_eq!(
        serde_json::to_value(&volume.empty_dir).expect("emptyDir"),
        json!({"sizeLimit": "200Mi"})
    );
}

#[tokio::test]
async fn a_container_without_env_gets_the_sdk_env_and_then_the_agents_variable() {
    let s = &setup().await;
    let pod = admit(
        s,
        &s.plain,
        json!({"instrumentation.tracing.caas.io/language": "java"}),
        json!([{"name": "auth", "image": "caas/auth:1.9.0"}]),
        json!({}),
    )
    .await
    .expect("admitted");
    let auth = container(&pod, "auth");
    let names = env(auth);
    assert_eq!(
        names.last().map(String::as_str),
        Some(format!("JAVA_TOOL_OPTIONS=-javaagent:{MOUNT_PATH}/javaagent.jar").as_str())
    );
    assert_eq!(names[0], "OTEL_RESOURCE_ATTRIBUTES_POD_NAME<-metadata.name");
    assert_eq!(
        agent_init(&pod).command.as_deref().unwrap_or_default(),
        [
            "cp",
            "/javaagent.jar",
            &format!("{MOUNT_PATH}/javaagent.jar")
        ]
    );
}

#[tokio::test]
async fn python_gets_its_paths_around_the_users_and_keeps_the_users_protocol() {
    let s = &setup().await;
    let pod = admit(
        s,
        &s.plain,
        json!({"instrumentation.opentelemetry.io/inject-python": "true",
               "instrumentation.opentelemetry.io/otel-python-platform": "musl"}),
        json!([
            {"name": "worker", "image": "caas/worker:0.3.2",
             "env": [{"name": "PYTHONPATH", "value": "/app/lib"}]},
            {"name": "beat", "image": "caas/worker:0.3.2",
             "env": [{"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "grpc"}]},
        ]),
        json!({}),
    )
    .await
    .expect("admitted");
    let worker = container(&pod, "worker");
    assert_eq!(
        value(worker, "PYTHONPATH"),
        Some(
            format!("{MOUNT_PATH}/opentelemetry/instrumentation/auto_instrumentation:/app/lib:{MOUNT_PATH}")
                .as_str()
        )
    );
    assert_eq!(
        value(worker, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        Some("http/protobuf")
    );
    let beat = container(&pod, "beat");
    assert_eq!(
        value(beat, "PYTHONPATH"),
        Some(
            format!("{MOUNT_PATH}/opentelemetry/instrumentation/auto_instrumentation:{MOUNT_PATH}")
                .as_str()
        )
    );
    assert_eq!(value(beat, "OTEL_EXPORTER_OTLP_PROTOCOL"), Some("grpc"));
    assert_eq!(
        env(beat)
            .iter()
            .filter(|e| e.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .count(),
        1
    );
    assert_eq!(
        agent_init(&pod).command.as_deref().unwrap_or_default(),
        ["cp", "-r", "/autoinstrumentation-musl/.", MOUNT_PATH]
    );
}

#[tokio::test]
async fn dotnet_pod_spec_with_the_users_startup_hook_kept_first() {
    let s = &setup().await;
    let pod = admit(
        s,
        &s.plain,
        json!({"instrumentation.tracing.caas.io/language": "dotnet"}),
        json!([{"name": "orders", "image": "caas/orders:5.0.0",
                "env": [{"name": "DOTNET_STARTUP_HOOKS", "value": "/app/Hooks.dll"}]}]),
        json!({}),
    )
    .await
    .expect("admitted");
    let orders = container(&pod, "orders");
    let m = MOUNT_PATH;
    for (name, want) in [
        (
            "DOTNET_STARTUP_HOOKS",
            format!("/app/Hooks.dll:{m}/net/OpenTelemetry.AutoInstrumentation.StartupHook.dll"),
        ),
        ("CORECLR_ENABLE_PROFILING", "1".to_string()),
        (
            "CORECLR_PROFILER",
            "{918728DD-259F-4A6A-AC2B-B85E1B658318}".to_string(),
        ),
        (
            "CORECLR_PROFILER_PATH",
            format!("{m}/linux/OpenTelemetry.AutoInstrumentation.Native.so"),
        ),
        ("DOTNET_ADDITIONAL_DEPS", format!("{m}/AdditionalDeps")),
        ("DOTNET_SHARED_STORE", format!("{m}/store")),
        ("OTEL_DOTNET_AUTO_HOME", m.to_string()),
    ] {
        assert_eq!(value(orders, name), Some(want.as_str()), "{name}");
    }
    assert_eq!(
        agent_init(&pod).image.as_deref(),
        Some("ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-dotnet:1.16.0")
    );
}

#[tokio::test]
async fn existing_init_containers_and_volumes_are_kept_and_the_agents_appended() {
    let s = &setup().await;
    let pod = admit_with(
        s,
        &s.plain,
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        json!([{"name": "app", "image": "caas/gateway:1",
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}]),
        json!({
            "initContainers": [{"name": "migrate", "image": "caas/migrate:1"}],
            "volumes": [{"name": "cache", "emptyDir": {}}],
        }),
        json!({"nodejs": {"resources": {"limits": {"memory": "128Mi", "ephemeral-storage": "300Mi"}},
                          "volumeSizeLimit": "300Mi",
                          "image": "registry.example/otel/nodejs:0.81.2"}}),
    )
    .await
    .expect("admitted");
    let inits: Vec<&str> = init_containers(&pod)
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, ["migrate", INIT_CONTAINER_NAME]);
    let init = agent_init(&pod);
    assert_eq!(
        serde_json::to_value(&init.resources).expect("resources")["limits"],
        json!({"memory": "128Mi", "ephemeral-storage": "300Mi"})
    );
    assert_eq!(
        init.image.as_deref(),
        Some("registry.example/otel/nodejs:0.81.2")
    );
    let app = container(&pod, "app");
    assert_eq!(
        mounts(app),
        [
            ("cache".to_string(), "/cache".to_string(), false),
            (VOLUME_NAME.to_string(), MOUNT_PATH.to_string(), true)
        ]
    );
    let volumes: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| v.name.as_str())
        .filter(|n| !n.starts_with("kube-api-access"))
        .collect();
    assert_eq!(volumes, ["cache", VOLUME_NAME]);
}

#[tokio::test]
async fn a_pod_that_already_carries_an_agent_layout_gets_no_second_one() {
    let s = &setup().await;
    // What a second admission, or another injector before this one, left.
    let pod = admit_with(
        s,
        &s.plain,
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        json!([{"name": "app", "image": "caas/gateway:1",
                "env": [{"name": "NODE_OPTIONS", "value": format!("--require {MOUNT_PATH}/autoinstrumentation.js")}]}]),
        json!({}),
        json!({"skipIfSdkPresent": false}),
    )
    .await
    .expect("admitted");
    let app = container(&pod, "app");
    assert_eq!(
        value(app, "NODE_OPTIONS"),
        Some(format!("--require {MOUNT_PATH}/autoinstrumentation.js").as_str())
    );
    assert!(!has_init(&pod), "a second init container");
    assert!(mounts(app).is_empty());
    // The SDK env is still added.
    assert_eq!(value(app, "OTEL_SERVICE_NAME"), Some("svc"));
}

#[tokio::test]
async fn the_init_container_passes_the_restricted_pod_security_standard() {
    let s = &setup().await;
    let restricted_container = json!({
        "name": "app", "image": "caas/gateway:1",
        "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    });
    let pod = admit(
        s,
        &s.restricted,
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        json!([restricted_container]),
        json!({}),
    )
    .await
    .expect("a restricted pod with the agent is admitted");
    assert!(has_init(&pod));
    // The namespace does enforce: a pod that breaks the standard is refused.
    let refused = admit(
        s,
        &s.restricted,
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        json!([{"name": "app", "image": "caas/gateway:1"}]),
        json!({}),
    )
    .await
    .expect_err("a pod that breaks the restricted standard is refused");
    assert!(
        refused.to_string().contains("restricted"),
        "refused for another reason: {refused}"
    );
}

#[tokio::test]
async fn without_an_agent_the_pod_gets_exactly_the_env_it_got_before() {
    let s = &setup().await;
    let pod = admit(
        s,
        &s.plain,
        json!({}),
        json!([{"name": "app", "image": "caas/gateway:2.4.1",
                "env": [{"name": "NODE_OPTIONS", "value": "--max-http-header-size=16384"}]}]),
        json!({}),
    )
    .await
    .expect("admitted");
    assert!(!has_init(&pod));
    let app = container(&pod, "app");
    assert!(mounts(app).is_empty());
    assert_eq!(
        env(app),
        [
            "NODE_OPTIONS=--max-http-header-size=16384",
            "OTEL_RESOURCE_ATTRIBUTES_POD_NAME<-metadata.name",
            "OTEL_RESOURCE_ATTRIBUTES_NODE_NAME<-spec.nodeName",
            "OTEL_SERVICE_NAME=svc",
            &format!(
                "OTEL_RESOURCE_ATTRIBUTES=service.version=1.0.0,service.namespace={ns},k8s.namespace.name={ns},k8s.deployment.name=svc,k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME),k8s.node.name=$(OTEL_RESOURCE_ATTRIBUTES_NODE_NAME),k8s.container.name=app",
                ns = s.plain
            ),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://caas-production-collector.tracing-operator.svc:4318/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf",
            "OTEL_TRACES_EXPORTER=otlp",
            "OTEL_METRICS_EXPORTER=none",
            "OTEL_LOGS_EXPORTER=none",
            "OTEL_PROPAGATORS=tracecontext,baggage",
            "OTEL_TRACES_SAMPLER=parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG=1",
        ]
    );
}

#[tokio::test]
async fn a_startup_variable_from_value_from_is_left_alone_even_if_the_plan_lists_the_container() {
    let s = &setup().await;
    // The planner skips such a container; the admission policy checks again, as
    // the pod (a template edited between plan and pod) is what counts.
    let mut pod = admit(
        s,
        &s.plain,
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        json!([{"name": "app", "image": "caas/gateway:1"}]),
        json!({}),
    )
    .await
    .expect("admitted");
    // Re-create the same pod with the annotations it was given, its container
    // now reading NODE_OPTIONS from a ConfigMap.
    let annotations = pod.annotations().clone();
    let spec = pod.spec.as_mut().expect("spec");
    spec.init_containers = None;
    spec.volumes = None;
    let app = spec.containers.first_mut().expect("app");
    app.volume_mounts = None;
    app.env = Some(vec![
        serde_json::from_value(json!({
            "name": "NODE_OPTIONS",
            "valueFrom": {"configMapKeyRef": {"name": "opts", "key": "node"}}
        }))
        .expect("an env var"),
    ]);
    let fresh: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": support::unique("svc"), "annotations": annotations},
        "spec": {"containers": [serde_json::to_value(&*app).expect("container")]},
    }))
    .expect("a pod");
    let admitted = Api::<Pod>::namespaced(s.client.clone(), &s.plain)
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &fresh,
        )
        .await
        .expect("admitted");
    assert!(!has_init(&admitted));
    let app = container(&admitted, "app");
    assert!(mounts(app).is_empty());
    assert!(
        app.env
            .iter()
            .flatten()
            .any(|e| e.name == "NODE_OPTIONS" && e.value.is_none() && e.value_from.is_some())
    );
    assert_eq!(value(app, "OTEL_SERVICE_NAME"), Some("svc"));
}

// ---------------------------------------------------------------------------
// End to end, with the operator and the real agents.

/// The controller in this process, injecting by admission (the harness's runs
/// the PodTemplate fallback). It installs the operator's own admission policy.
fn admission_operator() -> &'static () {
    static OPERATOR: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    OPERATOR.get_or_init(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("operator runtime");
            rt.block_on(async move {
                let client = support::client().await;
                harness::install_crd(&client).await;
                let settings = tracing_operator::controller::Settings {
                    operator_namespace: harness::OPERATOR_NAMESPACE.into(),
                    injection: tracing_operator::controller::InjectionChoice::Admission,
                    ..Default::default()
                };
                let metrics = Arc::new(tracing_operator::runtime::metrics::Metrics::default());
                let run = tracing_operator::controller::run(
                    client,
                    settings,
                    metrics,
                    tracing_operator::runtime::leader::Fence::unfenced(),
                    move || {
                        let _ = ready_tx.send(());
                    },
                    std::future::pending::<()>(),
                );
                if let Err(error) = run.await {
                    panic!("the operator stopped: {error}");
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("operator caches synced within 120 s");
    })
}

/// Where the policy's backend is, as the pods see it; rewritten to Jaeger's
/// local OTLP/HTTP receiver.
const BACKEND: &str = "http://otlp.observability.svc:4318";
/// The Java agent alone takes several seconds to start here (2 shared cores).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A service of `tests/zero_code/` (no OpenTelemetry code) as a Deployment.
struct Service {
    name: &'static str,
    /// The folder of `testbed/agents/build` its agent volume holds.
    agent: &'static str,
    /// The container's own env, as the user's Deployment has it.
    env: Vec<(&'static str, String)>,
    template_annotations: Value,
}

impl Service {
    fn deployment(&self) -> Value {
        let env: Vec<Value> = self
            .env
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        let labels =
            json!({"app.kubernetes.io/name": self.name, "app.kubernetes.io/version": "1.0.0"});
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/component": self.name}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": self.name}},
                "template": {
                    "metadata": {"labels": labels, "annotations": self.template_annotations},
                    "spec": {"containers": [{
                        "name": self.name,
                        "image": format!("registry.example/caas/{}:1.0.0", self.name),
                        "env": env,
                    }]},
                },
            },
        })
    }

    /// The container's own env in the pod: what the Deployment says, in order.
    fn own_env(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// The pod of Deployment `name`, once it has exactly one live pod and that
/// pod satisfies `wanted` (`what` says how, for the timeout message).
async fn stored_pod(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    wanted: impl Fn(&Pod) -> bool,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let wanted = &wanted;
    support::wait_until(
        &format!("{ns}/{name}: one pod, {what}"),
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let params = kube::api::ListParams::default()
                    .labels(&format!("app.kubernetes.io/name={name}"));
                let live: Vec<Pod> = pods
                    .list(&params)
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                match live.as_slice() {
                    [pod] if wanted(pod) => Some(pod.clone()),
                    _ => None,
                }
            }
        },
    )
    .await
}

/// The pod carries a plan of the operator's (its config hash).
fn planned(pod: &Pod) -> bool {
    pod.annotations()
        .contains_key(tracing_operator::api::CONFIG_HASH_ANNOTATION)
}

/// The built agents and services, and how to start each service locally.
struct Local {
    agents: std::path::PathBuf,
    apps: std::path::PathBuf,
}

impl Local {
    fn build() -> Local {
        let agents = support::testbed_binary("agents").expect("testbed/agents/build");
        let out = std::process::Command::new(support::repo().join("tests/zero_code/build"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("tests/zero_code/build runs");
        assert!(
            out.status.success(),
            "tests/zero_code/build: {}",
            out.status
        );
        let apps = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| std::path::PathBuf::from(l.trim()))
            .expect("tests/zero_code/build prints its folder");
        Local { agents, apps }
    }

    fn command(&self, svc: &Service) -> Vec<std::ffi::OsString> {
        let src = support::repo().join("tests/zero_code");
        match svc.name {
            "gateway" => vec!["node".into(), src.join("gateway/gateway.js").into()],
            "auth" => vec![
                "java".into(),
                "-cp".into(),
                self.apps.join("auth-classes").into(),
                "Auth".into(),
            ],
            _ => vec![
                self.apps.join("worker-venv/bin/python").into(),
                src.join("worker/worker.py").into(),
            ],
        }
    }

    /// Starts the service's container from the stored `pod`, with only the
    /// backend's URL and the agent volume's path mapped onto this machine.
    fn run(
        &self,
        svc: &Service,
        pod: &Pod,
        otlp: &str,
        dir: &std::path::Path,
        tag: &str,
    ) -> support::pod::PodProcess {
        let rewrites = support::pod::Rewrites {
            otlp_endpoints: BTreeMap::from([(BACKEND.to_string(), otlp.to_string())]),
            paths: BTreeMap::from([(MOUNT_PATH.to_string(), self.agents.join(svc.agent))]),
        };
        let mut process = support::pod::PodProcess::start(
            pod,
            svc.name,
            &self.command(svc),
            &rewrites,
            &dir.join(format!("{}-{tag}.log", svc.name)),
        )
        .unwrap_or_else(|e| panic!("{} starts from its stored pod: {e}", svc.name));
        let (at, _) = process
            .wait_for_line("READY ", READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{} ({tag}) is ready: {e}", svc.name));
        eprintln!(
            "{tag} {}: READY {:.2} s after start",
            svc.name,
            (at - process.started).as_secs_f64()
        );
        process
    }
}

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

/// Sends `/work?n=<n>` (with `fail=1`: the worker fails) to the gateway and
/// checks the answer.
fn request(gateway: u16, n: usize, fail: bool) {
    let path = if fail {
        format!("/work?n={n}&fail=1")
    } else {
        format!("/work?n={n}")
    };
    let (status, _, body) = support::http_get(gateway, &path).expect("the gateway answers");
    let want = if fail { 502 } else { 200 };
    assert_eq!(status, want, "GET {path}: {body:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn real_agents_trace_the_pods_the_api_server_stored_and_leave_with_the_policy() {
    const NAME: &str = "agents-e2e";
    const TEST: &str = "agents-e2e";
    admission_operator();
    let client = support::client().await;
    harness::clear_policies(&client, &[NAME]).await;
    let ns = harness::namespace(&client, TEST, &[]).await;
    let _cleanup = support::Cleanup::new(&[NAME], &[ns.as_str()]);
    let local = Local::build();
    let scratch = support::Scratch::new("agent-admission").expect("scratch dir");
    let dir = scratch.path();
    let jaeger = support::jaeger::Jaeger::start(dir).expect("Jaeger");
    let otlp = format!("http://127.0.0.1:{}", jaeger.otlp_http);

    let (gateway_port, auth_port, worker_port) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let services = [
        // The language from our annotation; the user's own flags stay first.
        Service {
            name: "gateway",
            agent: "nodejs",
            env: vec![
                ("PORT", gateway_port.to_string()),
                ("NEXT_URL", url(auth_port)),
                ("NODE_OPTIONS", "--max-http-header-size=16384".into()),
            ],
            template_annotations: json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        },
        // The language from the policy's selector.
        Service {
            name: "auth",
            agent: "java",
            env: vec![
                ("PORT", auth_port.to_string()),
                ("NEXT_URL", url(worker_port)),
                ("JAVA_TOOL_OPTIONS", "-Xmx256m".into()),
            ],
            template_annotations: json!({}),
        },
        // The language from the OpenTelemetry Operator's annotation.
        Service {
            name: "worker",
            agent: "python",
            env: vec![
                ("PORT", worker_port.to_string()),
                ("PYTHONPATH", "/app/lib".into()),
            ],
            template_annotations: json!({"instrumentation.opentelemetry.io/inject-python": "true"}),
        },
    ];
    // Configures OpenTelemetry itself: skipIfSdkPresent keeps the agent out.
    let own_sdk = Service {
        name: "legacy",
        agent: "nodejs",
        env: vec![("OTEL_SERVICE_NAME", "legacy-own".into())],
        template_annotations: json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
    };
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
    );
    for svc in services.iter().chain([&own_sdk]) {
        let object: DynamicObject = serde_json::from_value(svc.deployment()).expect("a deployment");
        deployments
            .create(&PostParams::default(), &object)
            .await
            .expect("deployment created");
    }
    // The operator's admission policy, installed at its start, takes a moment to
    // be enforced; pods created before would miss it (the operator would report
    // them `InjectionNotApplied`).
    let probe = Setup {
        client: client.clone(),
        plain: ns.clone(),
        restricted: ns.clone(),
    };
    support::wait_until(
        "the operator's admission policy injects",
        Duration::from_secs(60),
        || async {
            let pod = admit(
                &probe,
                &ns,
                json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
                json!([{"name": "app", "image": "caas/gateway:1"}]),
                json!({}),
            )
            .await
            .ok()?;
            has_init(&pod).then_some(())
        },
    )
    .await;
    let policy = harness::policy(
        NAME,
        TEST,
        json!({
            "backends": [{"name": "local", "type": "otlp", "endpoint": BACKEND, "protocol": "http"}],
            "service": {"environment": "production"},
            "instrumentation": {"java": {"selector": {"matchLabels": {"app.kubernetes.io/component": "auth"}}}},
        }),
    );
    harness::apply_policy(&client, &policy).await;
    let status = harness::wait_policy_within(
        &client,
        NAME,
        "every workload rolled out, agents counted",
        Duration::from_secs(180),
        |p| {
            p.status.as_ref().is_some_and(|s| {
                s.workloads.selected == 4
                    && s.workloads.up_to_date == 4
                    && s.workloads.agents.skipped == 1
            })
        },
    )
    .await
    .status
    .expect("status");
    let agents = &status.workloads.agents;
    assert_eq!(
        (
            agents.nodejs,
            agents.java,
            agents.python,
            agents.dotnet,
            agents.skipped
        ),
        (1, 1, 1, 0, 1),
        "status.workloads.agents"
    );
    let skipped: Vec<(&str, &str, &str)> = status
        .agents_skipped
        .iter()
        .map(|s| (s.name.as_str(), s.container.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped, [("legacy", "legacy", "SdkPresent")]);

    // The operator checked a pod of each against its plan, agent included.
    for name in ["gateway", "auth", "worker", "legacy"] {
        harness::wait_deployment(&client, &ns, name, "its pods verified", |d| {
            d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(tracing_operator::api::INJECTION_ANNOTATION))
                .is_some_and(|v| v == "ok")
        })
        .await;
    }

    // skipIfSdkPresent: the SDK env, no agent.
    let legacy = stored_pod(&client, &ns, "legacy", "with the SDK env", planned).await;
    assert!(!has_init(&legacy), "legacy got the agent");
    let c = container(&legacy, "legacy");
    assert!(mounts(c).is_empty());
    assert_eq!(value(c, "OTEL_SERVICE_NAME"), Some("legacy-own"));
    assert!(
        value(c, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some(),
        "{:?}",
        env(c)
    );
    assert!(value(c, "NODE_OPTIONS").is_none());

    // The stored pods, run with the real agents.
    let mut traced_pods = Vec::new();
    for svc in &services {
        let pod = stored_pod(&client, &ns, svc.name, "with the agent", |p| {
            planned(p) && has_init(p)
        })
        .await;
        traced_pods.push(pod);
    }
    let since_us = now_us();
    let processes: Vec<_> = services
        .iter()
        .zip(&traced_pods)
        .rev()
        .map(|(svc, pod)| local.run(svc, pod, &otlp, dir, "agent"))
        .collect();
    request(gateway_port, 1, false);
    request(gateway_port, 2, true);
    let traces = support::wait_until(
        "both requests' traces hold all three services",
        Duration::from_secs(90),
        || {
            let traces = jaeger.traces("gateway", since_us).unwrap_or_default();
            let whole = traces.iter().filter(|t| t.services().len() == 3).count();
            async move { (whole >= 2).then_some(traces) }
        },
    )
    .await;
    for trace in traces.iter().filter(|t| t.services().len() == 3) {
        for (service, tags) in &trace.process_tags {
            assert_eq!(
                tags.get("k8s.namespace.name"),
                Some(&ns),
                "{service}: {tags:?}"
            );
            assert_eq!(
                tags.get("deployment.environment.name").map(String::as_str),
                Some("production"),
                "{service}"
            );
            assert!(
                tags.get("k8s.pod.name")
                    .is_some_and(|p| p.starts_with(&format!("{service}-"))),
                "{service}: {tags:?}"
            );
        }
        let services: Vec<&String> = trace.process_tags.keys().collect();
        assert_eq!(services, ["auth", "gateway", "worker"]);
    }
    let failed = traces
        .iter()
        .filter(|t| t.services().len() == 3)
        .filter(|t| {
            t.spans
                .iter()
                .any(|s| s.service == "worker" && s.is_error())
        })
        .count();
    assert_eq!(failed, 1, "one trace with the worker's error span");
    drop(processes);

    // Deleting the policy takes the agent out of the next pods, and each
    // container's own variables are back as they were.
    harness::delete_policy(&client, NAME).await;
    let mut plain_pods = Vec::new();
    for svc in &services {
        let pod = stored_pod(&client, &ns, svc.name, "without the operator's plan", |p| {
            !planned(p) && !has_init(p)
        })
        .await;
        let c = container(&pod, svc.name);
        assert_eq!(env(c), svc.own_env(), "{}: the env after removal", svc.name);
        assert!(mounts(c).is_empty(), "{}: {:?}", svc.name, mounts(c));
        assert!(
            pod.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .all(|v| v.name != VOLUME_NAME),
            "{}: the agent volume is still there",
            svc.name
        );
        plain_pods.push(pod);
    }
    let plain_since = now_us();
    let plain: Vec<_> = services
        .iter()
        .zip(&plain_pods)
        .rev()
        .map(|(svc, pod)| local.run(svc, pod, &otlp, dir, "removed"))
        .collect();
    request(gateway_port, 3, false);
    request(gateway_port, 4, true);
    // Longer than an SDK holds a span (the 5 s default batch delay).
    tokio::time::sleep(Duration::from_secs(7)).await;
    for svc in &services {
        let late = jaeger.spans(svc.name, plain_since).expect("Jaeger spans");
        assert!(
            late.is_empty(),
            "{} sent {} spans after removal",
            svc.name,
            late.len()
        );
    }
    drop(plain);
}

/// An agent that keeps a workload from becoming available is the operator's own
/// change failing: the rollout's health gate catches it and `onFailure:
/// Rollback` takes the plan, agent included, out of that workload only. kwok
/// keeps pods labelled `testbed.caas.io/breaks-with-agent=true` that have the
/// agent's init container Running but never Ready (a broken agent image would
/// do that); the same workload without the agent is healthy.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_breaks_its_workload_is_rolled_back_from_that_workload_only() {
    const NAME: &str = "agent-rollback";
    const TEST: &str = "agent-rollback";
    admission_operator();
    let client = support::client().await;
    harness::clear_policies(&client, &[NAME]).await;
    let ns = harness::namespace(&client, TEST, &[]).await;
    let _cleanup = support::Cleanup::new(&[NAME], &[ns.as_str()]);
    support::admission::wait_injection_enforced(&client, &ns).await;

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    for (name, breaks) in [("broken", true), ("fine", false)] {
        let mut labels = json!({"app.kubernetes.io/name": name});
        if breaks {
            labels["testbed.caas.io/breaks-with-agent"] = json!("true");
        }
        let d = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "template": {
                    "metadata": {"labels": labels, "annotations": {"instrumentation.tracing.caas.io/language": "nodejs"}},
                    "spec": {"containers": [{"name": name, "image": format!("registry.local/{name}:1.0")}]},
                },
            },
        }))
        .expect("deployment manifest");
        deployments
            .create(&PostParams::default(), &d)
            .await
            .expect("deployment created");
    }
    // Both available on their own first: before the agent, `broken` is healthy.
    support::wait_until(
        "both Deployments available before the policy",
        Duration::from_secs(120),
        || {
            let deployments = deployments.clone();
            async move {
                let all = deployments.list(&Default::default()).await.ok()?.items;
                (all.len() == 2 && all.iter().all(harness::rolled_out)).then_some(())
            }
        },
    )
    .await;

    harness::apply_policy(
        &client,
        &harness::policy(
            NAME,
            TEST,
            json!({"rollout": {"strategy": "Progressive", "maxConcurrent": 2,
                "progressDeadline": "10s", "onFailure": "Rollback"}}),
        ),
    )
    .await;
    let p = harness::wait_policy_within(
        &client,
        NAME,
        "broken failed and fine rolled out with its agent",
        Duration::from_secs(180),
        |p| {
            p.status.as_ref().is_some_and(|s| {
                s.failures.iter().any(|f| f.name == "broken") && s.workloads.up_to_date == 1
            })
        },
    )
    .await;
    let status = p.status.as_ref().expect("status");
    let failure = status
        .failures
        .iter()
        .find(|f| f.name == "broken")
        .expect("broken listed in status.failures");
    assert_eq!(failure.reason, "PodsNotReady", "{failure:?}");
    assert!(
        failure.message.contains("rolled back"),
        "{}",
        failure.message
    );
    assert_eq!(
        status.workloads.agents.nodejs, 1,
        "only fine keeps its agent"
    );

    // broken: the plan and the agent are out of its template, and its next pod
    // is the user's own again, and Ready.
    let broken = harness::wait_deployment(&client, &ns, "broken", "plan removed", |d| {
        let template = d
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref());
        !template.is_some_and(|a| a.keys().any(|k| k.starts_with("tracing.caas.io/")))
            && harness::rolled_out(d)
    })
    .await;
    assert!(
        broken
            .annotations()
            .contains_key("tracing.caas.io/rollout-failed"),
        "the failed plan is recorded, so it is not applied again"
    );
    let pod = stored_pod(&client, &ns, "broken", "without the agent", |p| {
        !planned(p) && !has_init(p)
    })
    .await;
    assert!(
        container(&pod, "broken").env.is_none(),
        "no variable of the operator's is left: {:?}",
        container(&pod, "broken").env
    );
    // fine: its pod keeps the agent.
    let pod = stored_pod(&client, &ns, "fine", "with the agent", has_init).await;
    assert_eq!(
        value(container(&pod, "fine"), "NODE_OPTIONS"),
        Some("--require /otel-auto-instrumentation/autoinstrumentation.js")
    );
    // The Event on the policy or the workload says why.
    let events = support::kubectl_ok(&[
        "get",
        "events",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events
            .lines()
            .any(|l| l.starts_with("RolloutFailed:") && l.contains("broken")),
        "{events}"
    );
    harness::delete_policy(&client, NAME).await;
}

/// `spec.instrumentation` through the API server's validation (the CRD's
/// schema and CEL rules), as a dry-run create: each bad value is refused
/// naming its field, and a good one is accepted.
#[tokio::test]
async fn the_api_server_refuses_bad_instrumentation_naming_the_field() {
    let client = support::client().await;
    harness::install_crd(&client).await;
    let policy = |instrumentation: Value| {
        json!({
            "apiVersion": "tracing.caas.io/v1alpha1",
            "kind": "TracingPolicy",
            "metadata": {"name": support::unique("agents-validation")},
            "spec": {
                "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger.observability.svc:4317"}],
                "instrumentation": instrumentation,
            },
        })
    };
    let good = json!({
        "skipIfSdkPresent": false,
        "java": {"selector": {"matchLabels": {"lang": "java"}},
                 "image": "registry.example/otel/java:2.33.1",
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
                 "volumeSizeLimit": "300Mi"},
    });
    support::admission::dry_run_create(&client, &policy(good))
        .await
        .unwrap_or_else(|s| panic!("a good instrumentation is refused: {}", s.message));
    for (bad, field, words) in [
        (
            json!({"nodejs": {"volumeSizeLimit": "lots"}}),
            "spec.instrumentation.nodejs.volumeSizeLimit",
            "positive quantity",
        ),
        (
            json!({"nodejs": {"volumeSizeLimit": "0"}}),
            "spec.instrumentation.nodejs.volumeSizeLimit",
            "positive quantity",
        ),
        (
            json!({"java": {"resources": {"requests": {"memory": "512Mi"}, "limits": {"memory": "256Mi"}}}}),
            "spec.instrumentation.java.resources.requests",
            "must not exceed",
        ),
        (
            json!({"python": {"resources": {"limits": {"cpu": "a lot"}}}}),
            "spec.instrumentation.python.resources.limits",
            "quantity",
        ),
        (
            json!({"dotnet": {"image": "registry.example/otel dotnet:1"}}),
            "spec.instrumentation.dotnet.image",
            "",
        ),
    ] {
        let status = support::admission::dry_run_create(&client, &policy(bad.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} is accepted"));
        assert!(
            status.message.contains(field) && status.message.contains(words),
            "{bad}: refused without naming {field} ({words:?}): {}",
            status.message
        );
    }
}
