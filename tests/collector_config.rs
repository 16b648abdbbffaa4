//! Every collector configuration the planner generates for a table of policies
//! passes the real collector's `validate` (the binary built from
//! `testbed/collector/manifest.yaml`, the same components and release as the
//! default image).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use tracing_operator::api::TracingPolicySpec;
use tracing_operator::plan::collector::{
    CollectorInput, CollectorPlan, HeaderSecretKeys, Tier, plan_collector, sampler_namespace,
};
use tracing_operator::plan::{collector_namespace, sampling};

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
  tail: {keepErrors: true, slowerThan: 500ms}
collector: {placement: Central, namespace: observability, replicas: 1}
backends:
  - {name: jaeger, type: jaeger, endpoint: "http://jaeger-collector.observability.svc:4317", protocol: grpc, tls: {insecure: true}}
"#,
        secrets: &[],
        workload_namespace: "caas-gateway",
    },
    Case {
        name: "deprecated-tail-ratio",
        spec: r#"
sampling:
  ratio: 0.1
  services: [{name: auth, ratio: 1.0}]
  tail: {keepErrors: true, slowerThan: 500ms, ratio: 0.1}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#,
        secrets: &[],
        workload_namespace: "caas-gateway",
    },
    Case {
        name: "head-ratio-service-shares-odd-names-sized",
        spec: r#"
sampling:
  ratio: 0.05
  head: {ratio: 0.25}
  services: [{name: auth, ratio: 1.0}, {name: batch, ratio: 0.1}, {name: muted, ratio: 0}, {name: 'we"ird\name', ratio: 0.5}]
  tail: {keepErrors: true, slowerThan: 90s, expectedTracesPerSecond: 25000}
collector: {resources: {limits: {memory: 3Gi}}}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
"#,
        secrets: &[],
        workload_namespace: "caas-gateway",
    },
    Case {
        name: "tail-keeps-nothing-but-the-processor-is-valid",
        spec: r#"
sampling: {ratio: 0, tail: {keepErrors: false, ratio: 0.5}}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger:4317"}]
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

/// The plan of every tier of the case: the single tier, or the routers and the samplers.
fn plan_case(case: &Case) -> anyhow::Result<Vec<CollectorPlan>> {
    let spec: TracingPolicySpec = serde_saphyr::from_str(case.spec)?;
    let namespace = collector_namespace(&spec, "tracing-operator", case.workload_namespace);
    let samplers = sampler_namespace(&spec, "tracing-operator");
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
    let tiers: &[(Tier, &str)] = if sampling::tail_decides(&spec) {
        &[(Tier::Router, &namespace), (Tier::Sampler, &samplers)]
    } else {
        &[(Tier::Single, &namespace)]
    };
    let mut plans = Vec::new();
    for (tier, ns) in tiers {
        plans.push(plan_collector(&CollectorInput {
            policy: "caas-production",
            spec: &spec,
            tier: *tier,
            namespace: ns,
            sampler_namespace: &samplers,
            header_secret_keys: &keys,
            owner: None,
        })?);
    }
    Ok(plans)
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
        for plan in plan_case(case)? {
            let name = format!("{}-{}", case.name, plan.tier.as_str());
            // The env the Deployment fills from Secrets is exactly what the config references.
            let referenced = env_references(&plan.config_yaml);
            let provided: BTreeSet<String> =
                plan.header_env.iter().map(|h| h.variable.clone()).collect();
            assert_eq!(referenced, provided, "{name}: env references");
            // Only the tier that exports to the backends reads their Secrets.
            let expected_headers: usize = match plan.tier {
                Tier::Router => 0,
                Tier::Single | Tier::Sampler => case.secrets.iter().map(|(_, k)| k.len()).sum(),
            };
            assert_eq!(provided.len(), expected_headers, "{name}");

            let file = scratch.path().join(format!("{name}.yaml"));
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
            eprintln!("validate {name:<60} {verdict}");
            if !out.status.success() {
                failures.push(format!(
                    "{name}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    plan.config_yaml
                ));
            }
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
    // The samplers of a tail-sampling case: the tier with both edits' targets.
    let plan = plan_case(&CASES[4])?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no plan"))?;
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

/// An OTLP/JSON POST to the collector's HTTP receiver; the status it answers.
fn post_traces(port: u16, body: &serde_json::Value) -> anyhow::Result<u16> {
    use std::io::{Read as _, Write as _};
    let body = serde_json::to_vec(body)?;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /v1/traces HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status in {reply:?}"))
}

/// One span of `service` in OTLP/JSON; a root span when `parent` is `None`.
fn span(
    service: &str,
    trace: &str,
    id: &str,
    parent: Option<&str>,
    error: bool,
) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let mut s = serde_json::json!({
        "traceId": trace, "spanId": id, "name": "op", "kind": 2,
        "startTimeUnixNano": (now - 5_000_000).to_string(), "endTimeUnixNano": now.to_string(),
    });
    if let Some(p) = parent {
        s["parentSpanId"] = p.into();
    }
    if error {
        s["status"] = serde_json::json!({"code": 2});
    }
    serde_json::json!({
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [s]}],
    })
}

/// The rules as the real collector applies them, with shares of 0 and 1 so the
/// outcome is exact. Each kind of trace comes in a distinct power-of-two count,
/// so the number the collector keeps names exactly which kinds it kept. Then
/// spans sent after the decision follow it through the decision cache.
#[test]
fn the_real_collector_keeps_by_root_service_errors_and_not_by_participation() -> anyhow::Result<()>
{
    use tracing_operator::plan::collector::metrics;
    let otelcol = support::otelcol()?;
    let scratch = support::Scratch::new("collector-rules")?;
    // Nothing ordinary is kept; every trace rooted in `entry` is; errors are.
    let spec: TracingPolicySpec = serde_saphyr::from_str(
        r#"
sampling:
  ratio: 0
  services: [{name: entry, ratio: 1.0}, {name: auth, ratio: 1.0}]
  tail: {keepErrors: true}
backends: [{name: sink, type: otlp, endpoint: "http://127.0.0.1:9", protocol: http}]
"#,
    )?;
    // The samplers: the tier that decides.
    let plan = plan_collector(&CollectorInput {
        policy: "rules",
        spec: &spec,
        tier: Tier::Sampler,
        namespace: "observability",
        sampler_namespace: "observability",
        header_secret_keys: &HeaderSecretKeys::new(),
        owner: None,
    })?;
    let (http, grpc, health, metrics_port) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let mut c: serde_json::Value = serde_saphyr::from_str(&plan.config_yaml)?;
    c["receivers"]["otlp"]["protocols"]["http"]["endpoint"] = format!("127.0.0.1:{http}").into();
    c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = format!("127.0.0.1:{grpc}").into();
    c["extensions"]["health_check"]["endpoint"] = format!("127.0.0.1:{health}").into();
    let prom =
        &mut c["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"];
    prom["host"] = "127.0.0.1".into();
    prom["port"] = metrics_port.into();
    // Only to keep the test short; every other setting is the generated one.
    c["processors"]["tail_sampling"]["decision_wait"] = "2s".into();
    let config = scratch.path().join("collector.yaml");
    std::fs::write(&config, serde_saphyr::to_string(&c)?)?;
    let log = scratch.path().join("collector.log");
    let mut collector = std::process::Command::new(&otelcol)
        .arg(format!("--config={}", config.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        while !support::http_get(health, "/").is_ok_and(|(s, _, _)| s == 200) {
            anyhow::ensure!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "collector not healthy\n{}",
                support::log_tail("collector", &log)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut n = 0u64;
        let mut ids = |prefix: &str| {
            n += 1;
            (
                format!("{prefix}{n:030x}"),
                format!("{n:015x}a"),
                format!("{n:015x}b"),
            )
        };
        // (kind, count, kept)
        let kinds: [(&str, usize, bool); 6] = [
            ("rooted in a listed service", 1, true),
            ("rooted elsewhere", 2, false),
            ("rooted elsewhere, calling the listed services", 4, false),
            ("rooted elsewhere, an error below the root", 8, true),
            ("rootless, listed services only", 16, false),
            ("rootless, an error", 32, true),
        ];
        let mut batch = Vec::new();
        let mut late = Vec::new();
        for (kind, count, _) in kinds {
            for _ in 0..count {
                let (t, root, child) = ids("ab");
                let spans = match kind {
                    "rooted in a listed service" => vec![span("entry", &t, &root, None, false)],
                    "rooted elsewhere" => vec![span("gateway", &t, &root, None, false)],
                    "rooted elsewhere, calling the listed services" => vec![
                        span("gateway", &t, &root, None, false),
                        span("auth", &t, &child, Some(&root), false),
                        span("entry", &t, &format!("{child}0")[1..], Some(&child), false),
                    ],
                    "rooted elsewhere, an error below the root" => vec![
                        span("gateway", &t, &root, None, false),
                        span("worker", &t, &child, Some(&root), true),
                    ],
                    "rootless, listed services only" => {
                        vec![span("auth", &t, &child, Some(&root), false)]
                    }
                    _ => vec![span("worker", &t, &child, Some(&root), true)],
                };
                batch.extend(spans);
                late.push((kind, t, root));
            }
        }
        let status = post_traces(http, &serde_json::json!({"resourceSpans": batch}))?;
        anyhow::ensure!(status == 200, "collector answered {status}");

        let stats = || -> anyhow::Result<metrics::TailStats> {
            let (status, _, body) = support::http_get(metrics_port, "/metrics")?;
            anyhow::ensure!(status == 200, "GET /metrics: {status}");
            Ok(metrics::parse(&body))
        };
        let start = std::time::Instant::now();
        let mut s = stats()?;
        while s.traces_sampled + s.traces_not_sampled < 63 {
            anyhow::ensure!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "no decisions in time: {s:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
            s = stats()?;
        }
        let want: u64 = kinds
            .iter()
            .filter(|(_, _, kept)| *kept)
            .map(|(_, count, _)| *count as u64)
            .sum();
        eprintln!(
            "kept {} of 63 traces (want {want}: {}), dropped too early {}",
            s.traces_sampled,
            kinds
                .iter()
                .filter(|(_, _, kept)| *kept)
                .map(|(k, _, _)| *k)
                .collect::<Vec<_>>()
                .join(", "),
            s.traces_dropped_too_early
        );
        anyhow::ensure!(
            s.traces_sampled == want,
            "kept {} traces, want {want}: the sum names the kinds that were kept",
            s.traces_sampled
        );
        anyhow::ensure!(s.traces_not_sampled == 63 - want);
        anyhow::ensure!(s.traces_dropped_too_early == 0 && s.policy_evaluation_errors == 0);

        // A span arriving after the decision: a late child of every trace.
        let batch: Vec<serde_json::Value> = late
            .iter()
            .map(|(_, t, root)| span("late", t, "00000000000000ff", Some(root), false))
            .collect();
        let status = post_traces(http, &serde_json::json!({"resourceSpans": batch}))?;
        anyhow::ensure!(status == 200, "collector answered {status}");
        let start = std::time::Instant::now();
        let mut s = stats()?;
        while s.late_spans_kept + s.late_spans_dropped < 63 {
            anyhow::ensure!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "late spans not seen: {s:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
            s = stats()?;
        }
        eprintln!(
            "late spans: {} followed a keep decision, {} a drop decision",
            s.late_spans_kept, s.late_spans_dropped
        );
        anyhow::ensure!(s.late_spans_kept == want && s.late_spans_dropped == 63 - want);
        anyhow::ensure!(
            s.traces_received == 63,
            "the late spans made new traces: {s:?}"
        );
        Ok(())
    })();
    let _ = collector.kill();
    let _ = collector.wait();
    result.map_err(|e| anyhow::anyhow!("{e}\n{}", support::log_tail("collector", &log)))
}
