//! Every collector configuration the planner generates for a table of policies
//! passes the real collector's `validate` (the binary built from
//! `testbed/collector/manifest.yaml`, the same components and release as the
//! default image).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use tracing_operator::api::TracingPolicySpec;
use tracing_operator::plan::collector::{
    CollectorInput, CollectorPlan, HeaderSecretKeys, plan_collector,
};
use tracing_operator::plan::collector_namespace;

struct Case {
    name: &'static str,
    spec: &'static str,
    /// Key names of the header Secrets in the collector's namespace.
    secrets: &'static [(&'static str, &'static [&'static str])],
    /// Namespace of a workload, for PerNamespace placement.
    workload_namespace: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "jaeger-grpc-no-tail",
        spec: r#"
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger-collector.observability.svc:4317"}]
"#,
        secrets: &[],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "tail-keep-errors-only",
        spec: r#"
sampling: {tail: {keepErrors: true}}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#,
        secrets: &[],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "tail-slower-than-only",
        spec: r#"
sampling: {tail: {keepErrors: false, slowerThan: 1500ms}}
backends: [{name: tempo, type: tempo, endpoint: "http://tempo:4317"}]
"#,
        secrets: &[],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "tail-ratio-only",
        spec: r#"
sampling: {tail: {keepErrors: false, ratio: 0.05}}
backends: [{name: tempo, type: tempo, endpoint: "http://tempo:4317"}]
"#,
        secrets: &[],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "contract-example-all-tail-rules-and-service-ratios",
        spec: r#"
sampling:
  ratio: 0.1
  services: [{name: auth, ratio: 1.0}]
  tail: {keepErrors: true, slowerThan: 500ms, ratio: 0.1}
collector: {placement: Central, namespace: observability, replicas: 1}
backends:
  - {name: jaeger, type: jaeger, endpoint: "http://jaeger-collector.observability.svc:4317", protocol: grpc, tls: {insecure: true}}
"#,
        secrets: &[],
        workload_namespace: "caas-gateway",
    },
    Case {
        name: "tempo-http",
        spec: r#"
backends: [{name: tempo, type: tempo, endpoint: "http://tempo-distributor.tempo.svc:4318", protocol: http}]
"#,
        secrets: &[],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "otlp-http-full-traces-path",
        spec: r#"
backends: [{name: vendor, type: otlp, endpoint: "https://otlp.vendor.example/v1/traces", protocol: http}]
"#,
        secrets: &[],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "tls-ca-grpc",
        spec: r#"
backends:
  - {name: tempo, type: tempo, endpoint: "https://tempo.tempo.svc:4317", tls: {caSecretRef: {name: tempo-ca, key: ca.crt}}}
"#,
        secrets: &[],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "headers-secret-http",
        spec: r#"
backends:
  - {name: vendor, type: otlp, endpoint: "https://otlp.vendor.example:4318", protocol: http, headersSecretRef: {name: vendor-auth}}
"#,
        secrets: &[("vendor-auth", &["x-api-key", "X-Scope-OrgID"])],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "multiple-backends-mixed",
        spec: r#"
sampling: {ratio: 1, tail: {keepErrors: true, ratio: 0.1}}
backends:
  - {name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}
  - {name: tempo, type: tempo, endpoint: "https://tempo:4318", protocol: http, tls: {caSecretRef: {name: tempo-ca, key: root.pem}}, headersSecretRef: {name: tempo-tenant}}
  - {name: vendor, type: otlp, endpoint: "https://otlp.vendor.example:4317", headersSecretRef: {name: vendor-auth}}
"#,
        secrets: &[
            ("tempo-tenant", &["X-Scope-OrgID"]),
            ("vendor-auth", &["api-key"]),
        ],
        workload_namespace: "caas-auth",
    },
    Case {
        name: "per-namespace-placement",
        spec: r#"
sampling: {tail: {slowerThan: 2s, ratio: 0.5}}
collector: {placement: PerNamespace, replicas: 2, resources: {limits: {memory: 1Gi}}}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger.observability.svc:4317", headersSecretRef: {name: jaeger-token}}]
"#,
        secrets: &[("jaeger-token", &["authorization"])],
        workload_namespace: "caas-socket",
    },
];

fn plan_case(case: &Case) -> anyhow::Result<CollectorPlan> {
    let spec: TracingPolicySpec = serde_saphyr::from_str(case.spec)?;
    let namespace = collector_namespace(&spec, "tracing-operator", case.workload_namespace);
    let keys: HeaderSecretKeys = case
        .secrets
        .iter()
        .map(|(name, keys)| {
            (
                name.to_string(),
                keys.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>(),
            )
        })
        .collect();
    Ok(plan_collector(&CollectorInput {
        policy: "caas-production",
        spec: &spec,
        namespace: &namespace,
        header_secret_keys: &keys,
        owner: None,
    })?)
}

/// The `${env:NAME}` references in a rendered config.
fn env_references(yaml: &str) -> BTreeSet<String> {
    yaml.split("${env:")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
        .collect()
}

#[test]
fn every_generated_config_passes_collector_validate() -> anyhow::Result<()> {
    assert!(CASES.len() >= 8);
    let otelcol = support::otelcol()?;
    let scratch = support::Scratch::new("collector-config")?;
    let mut failures = Vec::new();
    for case in CASES {
        let plan = plan_case(case)?;
        // The env the Deployment fills from Secrets is exactly what the config references.
        let referenced = env_references(&plan.config_yaml);
        let provided: BTreeSet<String> =
            plan.header_env.iter().map(|h| h.variable.clone()).collect();
        assert_eq!(referenced, provided, "{}: env references", case.name);
        let expected_headers: usize = case.secrets.iter().map(|(_, k)| k.len()).sum();
        assert_eq!(provided.len(), expected_headers, "{}", case.name);

        let file = scratch.path().join(format!("{}.yaml", case.name));
        std::fs::write(&file, &plan.config_yaml)?;
        // Stand-ins for the Secret values, as the kubelet would set them.
        let env: BTreeMap<String, String> = plan
            .header_env
            .iter()
            .map(|h| (h.variable.clone(), format!("value-of-{}", h.key)))
            .collect();
        let out = Command::new(&otelcol)
            .arg("validate")
            .arg(format!("--config={}", file.display()))
            .envs(&env)
            .output()?;
        let verdict = if out.status.success() { "ok" } else { "FAILED" };
        eprintln!("validate {:<52} {verdict}", case.name);
        if !out.status.success() {
            failures.push(format!(
                "{}: {}\n{}",
                case.name,
                String::from_utf8_lossy(&out.stderr),
                plan.config_yaml
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    Ok(())
}

/// The validator is not a rubber stamp: a config with a misspelt tail-sampling
/// field or an exporter that is not built in is refused.
#[test]
fn collector_validate_rejects_broken_configs() -> anyhow::Result<()> {
    let otelcol = support::otelcol()?;
    let scratch = support::Scratch::new("collector-config-broken")?;
    let plan = plan_case(&CASES[4])?;
    let broken = [
        (
            "misspelt-field",
            plan.config_yaml.replace("threshold_ms", "threshold_msec"),
        ),
        (
            "unknown-exporter",
            plan.config_yaml
                .replace("otlp_grpc/jaeger", "zipkin/jaeger"),
        ),
    ];
    for (name, yaml) in broken {
        assert_ne!(yaml, plan.config_yaml, "{name}: the edit applied");
        let file = scratch.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml)?;
        let out = Command::new(&otelcol)
            .arg("validate")
            .arg(format!("--config={}", file.display()))
            .output()?;
        assert!(!out.status.success(), "{name} passed validate");
    }
    Ok(())
}
