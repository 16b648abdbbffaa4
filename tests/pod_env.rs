//! The kubelet's environment rules as `support::pod` implements them: `$(VAR)`
//! expansion, downward-API fields, the local rewrites, and that a started
//! process gets nothing else of the test's environment. Pure, except the last
//! test, which runs `env`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use support::pod::{
    BASIC_ENV, PodError, PodProcess, Rewrites, container_env, expand, kubelet_env,
    replace_path_prefix,
};

fn vars() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("VAR_A", "A"),
        ("VAR_B", "B"),
        ("VAR_C", "C"),
        ("VAR_REF", "$(VAR_A)"),
        ("VAR_EMPTY", ""),
        ("VAR_SPACES", "  "),
    ])
}

fn ex(input: &str) -> String {
    let vars = vars();
    expand(input, |name| vars.get(name).map(|v| v.to_string()))
}

#[test]
fn expansion_replaces_defined_references() {
    assert_eq!(ex("$(VAR_A)"), "A");
    assert_eq!(ex("___$(VAR_B)___"), "___B___");
    assert_eq!(ex("$(VAR_A)-$(VAR_A)"), "A-A");
    assert_eq!(ex("$(VAR_A)$(VAR_B)$(VAR_C)"), "ABC");
    assert_eq!(ex("x$(VAR_EMPTY)y"), "xy");
    assert_eq!(ex("$(VAR_SPACES)"), "  ");
    // A value is not expanded again: what VAR_REF holds is used as written.
    assert_eq!(ex("$(VAR_REF)"), "$(VAR_A)");
}

#[test]
fn expansion_leaves_undefined_and_malformed_references_as_written() {
    assert_eq!(ex("$(VAR_DNE)"), "$(VAR_DNE)");
    assert_eq!(ex("$(VAR_A)$(VAR_DNE)"), "A$(VAR_DNE)");
    assert_eq!(ex("$()"), "$()");
    assert_eq!(ex("$(VAR_A"), "$(VAR_A");
    assert_eq!(ex("$(VAR_A)$(VAR_B"), "A$(VAR_B");
    assert_eq!(ex("$VAR_A"), "$VAR_A");
    assert_eq!(ex("${VAR_A}"), "${VAR_A}");
    assert_eq!(ex("$"), "$");
    assert_eq!(ex("$(VAR_A)$"), "A$");
    assert_eq!(ex("100$ and $€"), "100$ and $€");
    // A name runs to the first `)`: references do not nest.
    assert_eq!(ex("$(VAR_$(VAR_A))"), "$(VAR_$(VAR_A))");
}

#[test]
fn expansion_unescapes_double_dollars() {
    assert_eq!(ex("$$"), "$");
    assert_eq!(ex("$$(VAR_A)"), "$(VAR_A)");
    assert_eq!(ex("$$$(VAR_A)"), "$A");
    assert_eq!(ex("$$$$(VAR_A)"), "$$(VAR_A)");
    assert_eq!(ex("$$$$$$(VAR_A)"), "$$$(VAR_A)");
    assert_eq!(ex("$$$"), "$$");
    assert_eq!(ex("f00-$$VAR_A"), "f00-$VAR_A");
    assert_eq!(ex("$$(VAR_DNE)"), "$(VAR_DNE)");
}

fn pod(env: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-5c6d7f9b8-k4m2p",
            "namespace": "shop",
            "uid": "0b7c9f3e-3a52-4f51-9d0a-2d8c4c1f6e11",
            "labels": {"app.kubernetes.io/name": "web", "app.kubernetes.io/version": "1.2.3"},
            "annotations": {"team": "platform"}
        },
        "spec": {
            "nodeName": "kwok-node-1",
            "serviceAccountName": "web",
            "volumes": [{"name": "otel-auto-instrumentation", "emptyDir": {}}],
            "containers": [{
                "name": "web",
                "image": "registry.example/web:1.2.3",
                "env": env,
                "volumeMounts": [{
                    "name": "otel-auto-instrumentation",
                    "mountPath": "/otel-auto-instrumentation",
                    "readOnly": true
                }]
            }]
        }
    }))
    .expect("test pod")
}

fn field(name: &str, path: &str) -> serde_json::Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn value(name: &str, value: &str) -> serde_json::Value {
    json!({"name": name, "value": value})
}

fn env_of(pod: &Pod) -> Vec<(String, String)> {
    kubelet_env(pod, "web").expect("kubelet env")
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn env_is_expanded_in_list_order_against_earlier_entries_only() {
    let p = pod(json!([
        value("LATER_REF", "$(FIRST)-$(SECOND)"),
        value("FIRST", "one"),
        value("SECOND", "$(FIRST)+two"),
        value("ESCAPED", "$$(FIRST)"),
        value("SELF", "$(SELF)x"),
        value("FIRST", "$(FIRST)-again"),
        value("AFTER", "$(FIRST)"),
        json!({"name": "NO_VALUE"}),
    ]));
    assert_eq!(
        env_of(&p),
        pairs(&[
            // FIRST and SECOND come later in the list: left as written.
            ("LATER_REF", "$(FIRST)-$(SECOND)"),
            // Listed twice: first position, last value, which saw the first value.
            ("FIRST", "one-again"),
            ("SECOND", "one+two"),
            ("ESCAPED", "$(FIRST)"),
            ("SELF", "$(SELF)x"),
            ("AFTER", "one-again"),
            ("NO_VALUE", ""),
        ])
    );
}

#[test]
fn downward_api_fields_come_from_the_pod() {
    let p = pod(json!([
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_UID", "metadata.uid"),
        field("APP", "metadata.labels['app.kubernetes.io/name']"),
        field("NO_SUCH_LABEL", "metadata.labels['missing']"),
        field("TEAM", "metadata.annotations['team']"),
        field("NODE", "spec.nodeName"),
        field("SA", "spec.serviceAccountName"),
        field("POD_IP", "status.podIP"),
        field("HOST_IP", "status.hostIP"),
        value(
            "OTEL_RESOURCE_ATTRIBUTES",
            "k8s.pod.name=$(POD_NAME),k8s.node.name=$(NODE),k8s.pod.uid=$(POD_UID),k8s.pod.ip=$(POD_IP)",
        ),
    ]));
    assert_eq!(
        env_of(&p),
        pairs(&[
            ("POD_NAME", "web-5c6d7f9b8-k4m2p"),
            ("POD_NAMESPACE", "shop"),
            ("POD_UID", "0b7c9f3e-3a52-4f51-9d0a-2d8c4c1f6e11"),
            ("APP", "web"),
            ("NO_SUCH_LABEL", ""),
            ("TEAM", "platform"),
            ("NODE", "kwok-node-1"),
            ("SA", "web"),
            ("POD_IP", "127.0.0.1"),
            ("HOST_IP", "127.0.0.1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=web-5c6d7f9b8-k4m2p,k8s.node.name=kwok-node-1,k8s.pod.uid=0b7c9f3e-3a52-4f51-9d0a-2d8c4c1f6e11,k8s.pod.ip=127.0.0.1"
            ),
        ])
    );
}

#[test]
fn sources_it_cannot_emulate_are_errors_naming_the_variable() {
    let secret = pod(json!([
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    ]));
    let err = kubelet_env(&secret, "web").expect_err("secretKeyRef");
    assert!(
        matches!(&err, PodError::UnsupportedSource { var, source_kind: "secretKeyRef", .. } if var == "TOKEN"),
        "{err}"
    );
    let unknown = pod(json!([field("X", "spec.hostname")]));
    let err = kubelet_env(&unknown, "web").expect_err("unknown field");
    assert!(
        matches!(&err, PodError::UnsupportedField { path, .. } if path == "spec.hostname"),
        "{err}"
    );
    let mut unscheduled = pod(json!([field("NODE", "spec.nodeName")]));
    if let Some(spec) = unscheduled.spec.as_mut() {
        spec.node_name = None;
    }
    let err = kubelet_env(&unscheduled, "web").expect_err("no node");
    assert!(
        matches!(&err, PodError::MissingField { field, .. } if field == "spec.nodeName"),
        "{err}"
    );
    let err = kubelet_env(&pod(json!([])), "sidecar").expect_err("no such container");
    assert!(matches!(err, PodError::NoContainer { .. }), "{err}");
    let mut env_from = pod(json!([]));
    if let Some(spec) = env_from.spec.as_mut() {
        spec.containers[0].env_from = Some(vec![
            serde_json::from_value(json!({"configMapRef": {"name": "c"}})).expect("envFrom"),
        ]);
    }
    let err = kubelet_env(&env_from, "web").expect_err("envFrom");
    assert!(matches!(err, PodError::EnvFrom { .. }), "{err}");
}

fn rewrites() -> Rewrites {
    Rewrites {
        otlp_endpoints: BTreeMap::from([(
            "http://caas-production-collector.observability.svc:4318".to_string(),
            "http://127.0.0.1:43180".to_string(),
        )]),
        paths: BTreeMap::from([(
            "/otel-auto-instrumentation".to_string(),
            PathBuf::from("/cache/agents/nodejs"),
        )]),
    }
}

#[test]
fn endpoints_and_mount_paths_are_rewritten_to_local_ones() {
    let p = pod(json!([
        value(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://caas-production-collector.observability.svc:4318"
        ),
        value(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://caas-production-collector.observability.svc:4318/v1/traces"
        ),
        value("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        value(
            "NODE_OPTIONS",
            "--max-old-space-size=256 --require /otel-auto-instrumentation/autoinstrumentation.js"
        ),
        value(
            "JAVA_TOOL_OPTIONS",
            "-Xmx256m -javaagent:/otel-auto-instrumentation/javaagent.jar"
        ),
        value(
            "PYTHONPATH",
            "/otel-auto-instrumentation/opentelemetry/instrumentation/auto_instrumentation:/app/lib:/otel-auto-instrumentation"
        ),
        value(
            "NOT_THE_MOUNT",
            "/opt/otel-auto-instrumentation:/otel-auto-instrumentation-v2/x"
        ),
    ]));
    let env = container_env(&p, "web", &rewrites()).expect("env");
    assert_eq!(
        env,
        pairs(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:43180"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:43180/v1/traces"
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            (
                "NODE_OPTIONS",
                "--max-old-space-size=256 --require /cache/agents/nodejs/autoinstrumentation.js"
            ),
            (
                "JAVA_TOOL_OPTIONS",
                "-Xmx256m -javaagent:/cache/agents/nodejs/javaagent.jar"
            ),
            (
                "PYTHONPATH",
                "/cache/agents/nodejs/opentelemetry/instrumentation/auto_instrumentation:/app/lib:/cache/agents/nodejs"
            ),
            (
                "NOT_THE_MOUNT",
                "/opt/otel-auto-instrumentation:/otel-auto-instrumentation-v2/x"
            ),
        ])
    );
}

#[test]
fn path_rewrites_only_touch_whole_path_components() {
    let r = |v: &str| replace_path_prefix(v, "/otel", "/L");
    assert_eq!(r("/otel"), "/L");
    assert_eq!(r("/otel/a:/otel"), "/L/a:/L");
    assert_eq!(r("x=/otel/a /otel"), "x=/L/a /L");
    assert_eq!(r("/otelx /x/otel /otel.d"), "/otelx /x/otel /otel.d");
    assert_eq!(r("/otel/otel"), "/L/otel");
}

#[test]
fn an_unknown_endpoint_or_an_unmounted_path_is_an_error() {
    let elsewhere = pod(json!([value(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://other-collector.observability.svc:4318"
    )]));
    let err = container_env(&elsewhere, "web", &rewrites()).expect_err("unmapped endpoint");
    assert!(
        matches!(&err, PodError::UnmappedEndpoint { var, .. } if var == "OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{err}"
    );
    // A longer host is not the mapped one.
    let longer = pod(json!([value(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://caas-production-collector.observability.svc:43189"
    )]));
    assert!(container_env(&longer, "web", &rewrites()).is_err());

    let mut unmounted = pod(json!([value(
        "NODE_OPTIONS",
        "--require /otel-auto-instrumentation/autoinstrumentation.js"
    )]));
    if let Some(spec) = unmounted.spec.as_mut() {
        spec.containers[0].volume_mounts = None;
    }
    let err = container_env(&unmounted, "web", &rewrites()).expect_err("unmounted");
    assert!(
        matches!(&err, PodError::Unmounted { var, path, .. } if var == "NODE_OPTIONS" && path == "/otel-auto-instrumentation"),
        "{err}"
    );
}

/// The test process has CARGO_* and more in its environment; the container gets
/// only the basics, HOSTNAME and the pod's env.
#[test]
fn the_process_gets_the_pod_env_and_nothing_else_of_the_tests() -> anyhow::Result<()> {
    assert!(
        std::env::vars().any(|(k, _)| k.starts_with("CARGO_")),
        "cargo sets CARGO_* for tests"
    );
    let scratch = support::Scratch::new("pod-env")?;
    let p = pod(json!([
        field("POD_NAME", "metadata.name"),
        value("GREETING", "hello from $(POD_NAME)"),
    ]));
    let log = scratch.path().join("env.log");
    let mut process = PodProcess::start(
        &p,
        "web",
        &["sh", "-c", "env; echo 'ARGS $(GREETING)'; echo DONE"],
        &Rewrites::default(),
        &log,
    )?;
    process.wait_for_line("DONE", Duration::from_secs(30))?;
    let (_, args) = process.wait_for_line("ARGS ", Duration::from_secs(1))?;
    assert_eq!(
        args, "hello from web-5c6d7f9b8-k4m2p",
        "$(VAR) in args is expanded"
    );
    let got: BTreeMap<String, String> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        got.get("GREETING").map(String::as_str),
        Some("hello from web-5c6d7f9b8-k4m2p")
    );
    assert_eq!(
        got.get("HOSTNAME").map(String::as_str),
        Some("web-5c6d7f9b8-k4m2p")
    );
    let allowed: BTreeSet<&str> = BASIC_ENV
        .iter()
        .copied()
        .chain(["HOSTNAME", "POD_NAME", "GREETING"])
        // What sh itself sets.
        .chain(["PWD", "SHLVL", "_", "OLDPWD"])
        .collect();
    let leaked: Vec<&String> = got
        .keys()
        .filter(|k| !allowed.contains(k.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "variables of the test leaked into the process: {leaked:?}"
    );
    Ok(())
}
