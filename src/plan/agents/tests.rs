//! The agent decisions, planned from Deployments as the API server returns them
//! (projected the way the watch projects them) through the policy's planner.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::plan::injection::template_annotations;
use crate::plan::{NamespaceView, PolicyView, Snapshot, WorkloadAction, WorkloadPlan, plan_policy};
use crate::workload::deployment::Deployment;

const NS: &str = "caas-gateway";

fn policy(spec: Value) -> PolicyView {
    let mut base = json!({
        "backends": [{"name": "jaeger", "type": "jaeger",
                      "endpoint": "http://jaeger-collector.observability.svc:4317"}],
    });
    if let (Some(b), Some(s)) = (base.as_object_mut(), spec.as_object()) {
        b.extend(s.clone());
    }
    PolicyView {
        name: "caas-production".into(),
        spec: serde_json::from_value(base).expect("spec parses"),
        created_unix: 0,
        deleting: false,
    }
}

/// A Deployment `name` with workload `labels` and `annotations`, template
/// `template_annotations`, and `containers` given as JSON.
fn deployment(
    name: &str,
    labels: Value,
    annotations: Value,
    template_annotations: Value,
    containers: Value,
) -> Arc<Workload> {
    let object = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": labels, "annotations": annotations},
        "spec": {"template": {
            "metadata": {"labels": {"app.kubernetes.io/name": name}, "annotations": template_annotations},
            "spec": {"containers": containers},
        }},
    });
    Arc::new(crate::workload::from_json::<Deployment>(object).expect("deployment projects"))
}

fn app(env: Value) -> Value {
    json!([{"name": "app", "image": "registry.example/caas/gateway:2.4.1", "env": env}])
}

fn plain(name: &str) -> Arc<Workload> {
    deployment(name, json!({}), json!({}), json!({}), app(json!([])))
}

fn plan_in(p: &PolicyView, w: &Arc<Workload>, injection: Injection) -> WorkloadPlan {
    let namespaces = BTreeMap::from([(
        NS.to_string(),
        NamespaceView {
            name: NS.into(),
            labels: BTreeMap::new(),
        },
    )]);
    let workloads = [w.clone()];
    let policies = [p.clone()];
    let snapshot = Snapshot {
        operator_namespace: "tracing-operator",
        namespaces: &namespaces,
        workloads: &workloads,
        policies: &policies,
        injection,
    };
    let plan = plan_policy(p, &snapshot).expect("policy plans");
    match plan.workloads.into_iter().next().map(|d| d.action) {
        Some(WorkloadAction::Apply(plan)) => plan,
        other => panic!("expected an Apply decision, got {other:?}"),
    }
}

fn plan_of(p: &PolicyView, w: &Arc<Workload>) -> WorkloadPlan {
    plan_in(p, w, Injection::Admission)
}

fn language(plan: &WorkloadPlan) -> Option<(Language, Source)> {
    plan.agent.plan.as_ref().map(|a| (a.language, a.source))
}

fn reasons(plan: &WorkloadPlan) -> Vec<(Option<&str>, &'static str)> {
    plan.agent
        .skipped
        .iter()
        .map(|s| (s.container.as_deref(), s.reason.reason()))
        .collect()
}

fn nodejs_selector() -> Value {
    json!({"instrumentation": {
        "nodejs": {"selector": {"matchLabels": {"caas.io/runtime": "nodejs"}}},
        "java": {"selector": {"matchLabels": {"caas.io/team": "payments"}}},
    }})
}

#[test]
fn the_policy_selector_wins_over_annotations_and_ours_over_the_otel_operators() {
    let p = policy(nodejs_selector());
    let selected = deployment(
        "gateway",
        json!({"caas.io/runtime": "nodejs", "caas.io/team": "payments"}),
        json!({"instrumentation.tracing.caas.io/language": "python"}),
        json!({"instrumentation.opentelemetry.io/inject-java": "true"}),
        app(json!([])),
    );
    // Both selectors match: the first language in order wins.
    assert_eq!(
        language(&plan_of(&p, &selected)),
        Some((Language::NodeJs, Source::PolicySelector))
    );

    let annotated = deployment(
        "auth",
        json!({}),
        json!({"instrumentation.tracing.caas.io/language": "python"}),
        json!({"instrumentation.tracing.caas.io/language": "java",
               "instrumentation.opentelemetry.io/inject-nodejs": "true"}),
        app(json!([])),
    );
    // The pod template's annotation before the workload's, ours before the OTel Operator's.
    assert_eq!(
        language(&plan_of(&p, &annotated)),
        Some((Language::Java, Source::LanguageAnnotation))
    );

    let migrated = deployment(
        "worker",
        json!({}),
        json!({"instrumentation.opentelemetry.io/inject-python": "true"}),
        json!({"instrumentation.opentelemetry.io/inject-nodejs": "false",
               "instrumentation.opentelemetry.io/inject-dotnet": "observability/my-instrumentation"}),
        app(json!([])),
    );
    // `false` is no; an Instrumentation's name is yes; nodejs, java, python, dotnet in order.
    assert_eq!(
        language(&plan_of(&p, &migrated)),
        Some((Language::Python, Source::OtelOperatorAnnotation))
    );
}

#[test]
fn a_workload_without_a_language_keeps_the_plan_and_hash_it_had_without_agents() {
    let with = policy(nodejs_selector());
    let without = policy(json!({}));
    let w = deployment(
        "gateway",
        json!({"caas.io/runtime": "go"}),
        json!({}),
        json!({"instrumentation.opentelemetry.io/inject-sdk": "true"}),
        app(json!([])),
    );
    let a = plan_of(&with, &w);
    let b = plan_of(&without, &w);
    assert_eq!(a.agent, AgentDecision::default());
    assert_eq!(a.config_hash, b.config_hash);
    assert_eq!(template_annotations(&a), template_annotations(&b));
}

#[test]
fn an_agent_enters_the_hash_and_the_template_annotations() {
    let p = policy(nodejs_selector());
    let traced = deployment(
        "gateway",
        json!({"caas.io/runtime": "nodejs"}),
        json!({}),
        json!({}),
        app(json!([])),
    );
    let untraced = plain("gateway");
    let with = plan_of(&p, &traced);
    let without = plan_of(&p, &untraced);
    assert_eq!(with.vars, without.vars, "the SDK env is the same");
    assert_ne!(with.config_hash, without.config_hash);

    let a = template_annotations(&with);
    let agent: BTreeMap<&str, &str> = a
        .iter()
        .filter(|(k, _)| k.starts_with("tracing.caas.io/agent") || k.starts_with("agent."))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        agent,
        BTreeMap::from([
            ("tracing.caas.io/agent", "nodejs"),
            (
                "tracing.caas.io/agent-image",
                "ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-nodejs:0.78.0"
            ),
            (
                "tracing.caas.io/agent-command",
                "cp -r /autoinstrumentation/. /otel-auto-instrumentation"
            ),
            ("tracing.caas.io/agent-containers", "app"),
            (
                "tracing.caas.io/agent-resources",
                "limits.cpu=500m,limits.memory=256Mi,requests.cpu=50m,requests.memory=64Mi"
            ),
            ("tracing.caas.io/agent-volume-size", "200Mi"),
            ("tracing.caas.io/agent-env", "NODE_OPTIONS"),
            (
                "agent.tracing.caas.io/NODE_OPTIONS",
                "space||--require /otel-auto-instrumentation/autoinstrumentation.js"
            ),
        ])
    );

    // Every setting of the language reaches the pods, so each moves the hash.
    let custom = policy(json!({"instrumentation": {"nodejs": {
        "selector": {"matchLabels": {"caas.io/runtime": "nodejs"}},
        "image": "registry.example/otel/nodejs:0.81.2",
        "resources": {"limits": {"memory": "128Mi"}},
        "volumeSizeLimit": "300Mi",
    }}}));
    let c = plan_of(&custom, &traced);
    let agent = c.agent.plan.as_ref().expect("an agent");
    assert_eq!(agent.image, "registry.example/otel/nodejs:0.81.2");
    assert_eq!(
        agent.resources,
        vec![("limits.memory".to_string(), "128Mi".to_string())]
    );
    assert_eq!(agent.volume_size_limit, "300Mi");
    assert_ne!(c.config_hash, with.config_hash);
}

#[test]
fn each_language_switches_its_agent_on_from_the_mount() {
    let cases = [
        (
            "nodejs",
            "",
            vec![(
                "NODE_OPTIONS",
                "--require /otel-auto-instrumentation/autoinstrumentation.js",
            )],
            "cp -r /autoinstrumentation/. /otel-auto-instrumentation",
        ),
        (
            "java",
            "",
            vec![(
                "JAVA_TOOL_OPTIONS",
                "-javaagent:/otel-auto-instrumentation/javaagent.jar",
            )],
            "cp /javaagent.jar /otel-auto-instrumentation/javaagent.jar",
        ),
        (
            "python",
            "",
            vec![
                (
                    "PYTHONPATH",
                    "/otel-auto-instrumentation/opentelemetry/instrumentation/auto_instrumentation:/otel-auto-instrumentation",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
            "cp -r /autoinstrumentation/. /otel-auto-instrumentation",
        ),
        (
            "python",
            "musl",
            vec![
                (
                    "PYTHONPATH",
                    "/otel-auto-instrumentation/opentelemetry/instrumentation/auto_instrumentation:/otel-auto-instrumentation",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
            "cp -r /autoinstrumentation-musl/. /otel-auto-instrumentation",
        ),
        (
            "dotnet",
            "",
            vec![
                ("CORECLR_ENABLE_PROFILING", "1"),
                ("CORECLR_PROFILER", "{918728DD-259F-4A6A-AC2B-B85E1B658318}"),
                (
                    "CORECLR_PROFILER_PATH",
                    "/otel-auto-instrumentation/linux/OpenTelemetry.AutoInstrumentation.Native.so",
                ),
                (
                    "DOTNET_STARTUP_HOOKS",
                    "/otel-auto-instrumentation/net/OpenTelemetry.AutoInstrumentation.StartupHook.dll",
                ),
                (
                    "DOTNET_ADDITIONAL_DEPS",
                    "/otel-auto-instrumentation/AdditionalDeps",
                ),
                ("DOTNET_SHARED_STORE", "/otel-auto-instrumentation/store"),
                ("OTEL_DOTNET_AUTO_HOME", "/otel-auto-instrumentation"),
            ],
            "cp -r /autoinstrumentation/. /otel-auto-instrumentation",
        ),
        (
            "dotnet",
            "musl",
            vec![
                ("CORECLR_ENABLE_PROFILING", "1"),
                ("CORECLR_PROFILER", "{918728DD-259F-4A6A-AC2B-B85E1B658318}"),
                (
                    "CORECLR_PROFILER_PATH",
                    "/otel-auto-instrumentation/linux-musl/OpenTelemetry.AutoInstrumentation.Native.so",
                ),
                (
                    "DOTNET_STARTUP_HOOKS",
                    "/otel-auto-instrumentation/net/OpenTelemetry.AutoInstrumentation.StartupHook.dll",
                ),
                (
                    "DOTNET_ADDITIONAL_DEPS",
                    "/otel-auto-instrumentation/AdditionalDeps",
                ),
                ("DOTNET_SHARED_STORE", "/otel-auto-instrumentation/store"),
                ("OTEL_DOTNET_AUTO_HOME", "/otel-auto-instrumentation"),
            ],
            "cp -r /autoinstrumentation/. /otel-auto-instrumentation",
        ),
    ];
    let p = policy(json!({}));
    for (lang, libc, want, command) in cases {
        let mut template = json!({"instrumentation.tracing.caas.io/language": lang});
        if !libc.is_empty() {
            template["instrumentation.tracing.caas.io/libc"] = json!(libc);
        }
        let w = deployment("svc", json!({}), json!({}), template, app(json!([])));
        let plan = plan_of(&p, &w);
        let agent = plan.agent.plan.as_ref().expect("an agent");
        let got: Vec<(&str, String)> = agent
            .vars
            .iter()
            .map(|v| (v.name, v.edit.apply("")))
            .collect();
        let want: Vec<(&str, String)> = want.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        assert_eq!(got, want, "{lang} {libc}");
        assert_eq!(agent.command.join(" "), command, "{lang} {libc}");
        assert_eq!(
            agent.image,
            Language::parse(lang).expect("a language").default_image()
        );
    }
}

#[test]
fn the_otel_operators_libc_annotations_choose_musl_too() {
    let p = policy(json!({}));
    for (lang, key, value) in [
        (
            "python",
            "instrumentation.opentelemetry.io/otel-python-platform",
            "musl",
        ),
        (
            "dotnet",
            "instrumentation.opentelemetry.io/otel-dotnet-auto-runtime",
            "linux-musl-x64",
        ),
    ] {
        let w = deployment(
            "svc",
            json!({}),
            json!({}),
            json!({"instrumentation.tracing.caas.io/language": lang, key: value}),
            app(json!([])),
        );
        let plan = plan_of(&p, &w);
        assert_eq!(
            plan.agent.plan.as_ref().map(|a| a.libc),
            Some(Libc::Musl),
            "{lang}"
        );
    }
    let bad = deployment(
        "svc",
        json!({}),
        json!({}),
        json!({"instrumentation.tracing.caas.io/language": "python",
               "instrumentation.tracing.caas.io/libc": "uclibc"}),
        app(json!([])),
    );
    let plan = plan_of(&p, &bad);
    assert!(plan.agent.plan.is_none());
    assert_eq!(reasons(&plan), [(None, "UnknownLibc")]);
}

#[test]
fn the_users_value_is_joined_never_replaced() {
    let node = Language::NodeJs.vars(Libc::Glibc);
    assert_eq!(
        node[0].edit.apply("--max-http-header-size=16384"),
        "--max-http-header-size=16384 --require /otel-auto-instrumentation/autoinstrumentation.js"
    );
    let python = Language::Python.vars(Libc::Glibc);
    assert_eq!(
        python[0].edit.apply("/app/lib"),
        "/otel-auto-instrumentation/opentelemetry/instrumentation/auto_instrumentation:/app/lib:/otel-auto-instrumentation"
    );
    // A default yields to the user's own value.
    assert_eq!(python[1].edit.apply("grpc"), "grpc");
    let dotnet = Language::DotNet.vars(Libc::Glibc);
    let hooks = dotnet
        .iter()
        .find(|v| v.name == "DOTNET_STARTUP_HOOKS")
        .expect("hooks");
    assert_eq!(
        hooks.edit.apply("/app/Hook.dll"),
        "/app/Hook.dll:/otel-auto-instrumentation/net/OpenTelemetry.AutoInstrumentation.StartupHook.dll"
    );
}

#[test]
fn containers_that_configure_opentelemetry_or_use_value_from_get_the_sdk_env_only() {
    let containers = json!([
        {"name": "app", "image": "caas/gateway:1", "env": [{"name": "NODE_OPTIONS", "value": "--x"}]},
        {"name": "own-sdk", "image": "caas/gateway:1", "env": [{"name": "OTEL_SERVICE_NAME", "value": "mine"}]},
        {"name": "own-endpoint", "image": "caas/gateway:1", "env": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://x:4318"}]},
        {"name": "java-agent", "image": "caas/gateway:1", "env": [{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g -javaagent:/dd/dd-java-agent.jar"}]},
        {"name": "from-config", "image": "caas/gateway:1", "env": [{"name": "NODE_OPTIONS", "valueFrom": {"configMapKeyRef": {"name": "opts", "key": "node"}}}]},
        {"name": "istio-proxy", "image": "istio/proxyv2:1"},
    ]);
    let w = deployment(
        "gateway",
        json!({}),
        json!({}),
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        containers.clone(),
    );
    let plan = plan_of(&policy(json!({})), &w);
    let agent = plan.agent.plan.as_ref().expect("an agent");
    assert_eq!(agent.containers, ["app"]);
    assert_eq!(
        reasons(&plan),
        [
            (Some("own-sdk"), "SdkPresent"),
            (Some("own-endpoint"), "SdkPresent"),
            (Some("java-agent"), "SdkPresent"),
            (Some("from-config"), "ValueFrom"),
        ]
    );
    // Every container with a language still gets the SDK env.
    let sdk: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        sdk,
        [
            "app",
            "own-sdk",
            "own-endpoint",
            "java-agent",
            "from-config"
        ]
    );
    assert!(
        plan.agent.skipped[3]
            .message()
            .contains("NODE_OPTIONS comes from valueFrom")
    );

    // skipIfSdkPresent: false: a second agent is the user's call; valueFrom still cannot be joined.
    let anyway = policy(json!({"instrumentation": {"skipIfSdkPresent": false}}));
    let plan = plan_of(&anyway, &w);
    let agent = plan.agent.plan.as_ref().expect("an agent");
    assert_eq!(
        agent.containers,
        ["app", "own-sdk", "own-endpoint", "java-agent"]
    );
    assert_eq!(reasons(&plan), [(Some("from-config"), "ValueFrom")]);

    // selector.containers narrows both.
    let narrow = policy(json!({"selector": {"containers": ["own-sdk"]}}));
    let plan = plan_of(&narrow, &w);
    assert!(plan.agent.plan.is_none());
    assert_eq!(reasons(&plan), [(Some("own-sdk"), "SdkPresent")]);
}

#[test]
fn a_dotnet_container_with_another_profiler_is_skipped() {
    let w = deployment(
        "orders",
        json!({}),
        json!({}),
        json!({"instrumentation.tracing.caas.io/language": "dotnet"}),
        app(
            json!([{"name": "CORECLR_PROFILER", "value": "{846F5F1C-F9AE-4B07-969E-05C26BC060D8}"}]),
        ),
    );
    let plan = plan_of(&policy(json!({})), &w);
    assert!(plan.agent.plan.is_none());
    assert_eq!(reasons(&plan), [(Some("app"), "SdkPresent")]);
}

#[test]
fn pod_template_injection_reports_agents_as_skipped_and_writes_the_env_only() {
    let w = deployment(
        "gateway",
        json!({"caas.io/runtime": "nodejs"}),
        json!({}),
        json!({}),
        app(json!([])),
    );
    let p = policy(nodejs_selector());
    let plan = plan_in(&p, &w, Injection::PodTemplate);
    assert!(plan.agent.plan.is_none());
    assert_eq!(reasons(&plan), [(Some("app"), "PodTemplateInjection")]);
    let env_only = plan_in(&policy(json!({})), &w, Injection::PodTemplate);
    assert_eq!(plan.config_hash, env_only.config_hash);
    assert!(
        plan.agent.skipped[0]
            .message()
            .contains("needs admission injection")
    );
}

#[test]
fn what_has_no_agent_here_is_reported() {
    let p = policy(json!({}));
    let cases = [
        (
            json!({"instrumentation.tracing.caas.io/language": "ruby"}),
            "ruby",
            "UnknownLanguage",
        ),
        (
            json!({"instrumentation.opentelemetry.io/inject-go": "true"}),
            "go",
            "UnsupportedLanguage",
        ),
    ];
    for (annotations, language, reason) in cases {
        let w = deployment("svc", json!({}), json!({}), annotations, app(json!([])));
        let plan = plan_of(&p, &w);
        assert!(plan.agent.plan.is_none());
        assert_eq!(plan.agent.skipped.len(), 1);
        assert_eq!(plan.agent.skipped[0].language, language);
        assert_eq!(plan.agent.skipped[0].reason.reason(), reason);
    }
}

#[test]
fn the_python_agent_is_not_injected_when_traces_go_out_over_grpc() {
    let p = policy(json!({
        "collector": {"enabled": false},
        "backends": [{"name": "tempo", "type": "tempo", "endpoint": "http://tempo.observability.svc:4317", "protocol": "grpc"}],
    }));
    let w = deployment(
        "worker",
        json!({}),
        json!({}),
        json!({"instrumentation.tracing.caas.io/language": "python"}),
        app(json!([])),
    );
    let plan = plan_of(&p, &w);
    assert!(plan.agent.plan.is_none());
    assert_eq!(reasons(&plan), [(None, "UnsupportedProtocol")]);
    // Node.js exports gRPC as well.
    let node = deployment(
        "gateway",
        json!({}),
        json!({}),
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        app(json!([])),
    );
    assert!(plan_of(&p, &node).agent.plan.is_some());
}

#[test]
fn a_policy_env_entry_the_agent_needs_keeps_the_agent_out() {
    let p = policy(json!({"env": [{"name": "NODE_OPTIONS", "value": "--enable-source-maps"}]}));
    let w = deployment(
        "gateway",
        json!({}),
        json!({}),
        json!({"instrumentation.tracing.caas.io/language": "nodejs"}),
        app(json!([])),
    );
    let plan = plan_of(&p, &w);
    assert!(plan.agent.plan.is_none());
    assert_eq!(reasons(&plan), [(None, "EnvConflict")]);
}

#[test]
fn an_invalid_language_selector_is_refused_naming_its_field() {
    let p = policy(json!({"instrumentation": {"java": {"selector": {
        "matchExpressions": [{"key": "caas.io/team", "operator": "In", "values": []}]}}}}));
    let error = Languages::new(&p.spec).expect_err("refused");
    assert_eq!(
        error.to_string(),
        "spec.instrumentation.java.selector: matchExpressions[0].values must not be empty for operator In"
    );
}
