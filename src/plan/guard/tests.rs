use serde::Deserialize;

use super::*;

fn spec(yaml: &str) -> TracingPolicySpec {
    serde_saphyr::from_str(yaml).expect("test spec parses")
}

fn fields(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.field.as_str()).collect()
}

fn guard(namespaces: &[&str], images: &[&str], external: bool) -> CollectorGuard {
    CollectorGuard {
        namespaces: Namespaces::List(namespaces.iter().map(|n| n.to_string()).collect()),
        image_prefixes: images.iter().map(|i| i.to_string()).collect(),
        external_backends: external,
    }
}

const OPERATOR_NS: &str = "tracing-operator";

/// The shared table (see cases.yaml), which the chart's admission policy is held to as well.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Table {
    operator_namespace: String,
    settings: Settings,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    allowed_namespaces: Vec<String>,
    allowed_images: Vec<String>,
    allow_external_backends: bool,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    spec: TracingPolicySpec,
    violations: Vec<String>,
}

#[test]
fn the_shared_table_of_policies_is_judged_as_written() {
    let table: Table = serde_saphyr::from_str(include_str!("cases.yaml")).expect("cases.yaml");
    let guard = CollectorGuard {
        namespaces: parse_namespaces(&table.settings.allowed_namespaces).expect("namespaces"),
        image_prefixes: parse_image_prefixes(&table.settings.allowed_images).expect("images"),
        external_backends: table.settings.allow_external_backends,
    };
    assert!(table.cases.len() >= 10, "the table has its cases");
    for case in &table.cases {
        let violations = check_policy(&case.spec, &table.operator_namespace, &guard);
        assert_eq!(
            fields(&violations),
            case.violations,
            "case {}: {violations:#?}",
            case.name
        );
    }
}

#[test]
fn the_defaults_are_the_operator_namespace_observability_and_the_pinned_image() {
    let guard = CollectorGuard::default();
    assert_eq!(
        guard.namespaces,
        Namespaces::List(vec!["observability".into()])
    );
    assert_eq!(
        guard.image_prefixes,
        ["otel/opentelemetry-collector-contrib"]
    );
    assert!(!guard.external_backends);
    assert!(namespace_allowed(&guard, OPERATOR_NS, OPERATOR_NS));
    assert!(namespace_allowed(&guard, OPERATOR_NS, "observability"));
    assert!(!namespace_allowed(&guard, OPERATOR_NS, "kube-system"));
    assert!(!namespace_allowed(&guard, OPERATOR_NS, "default"));
    // What a policy gets without naming an image is allowed by default.
    assert!(image_allowed(&guard, DEFAULT_COLLECTOR_IMAGE));
}

#[test]
fn the_testbed_escalation_is_refused_on_every_field() {
    let escalation = spec(
        r#"
collector: {namespace: kube-system, image: "evil.example/miner:1"}
backends:
  - {name: attacker, type: otlp, endpoint: "http://attacker.example.com:4317", headersSecretRef: {name: admin-token}}
"#,
    );
    let violations = check_policy(&escalation, OPERATOR_NS, &CollectorGuard::default());
    let messages: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "spec.collector.namespace: namespace kube-system is not an allowed collector namespace (allowed: tracing-operator, observability)",
            "spec.collector.image: image evil.example/miner:1 is not from an allowed repository (allowed: otel/opentelemetry-collector-contrib)",
            "spec.backends[attacker].endpoint: host attacker.example.com is outside the cluster; only in-cluster Services are allowed (a single-label name, *.svc or *.svc.cluster.local)",
        ]
    );
}

#[test]
fn the_central_collector_defaults_to_the_operator_namespace_which_is_always_allowed() {
    let s = spec("backends: [{name: j, type: jaeger, endpoint: 'http://jaeger:4317'}]");
    // Even a list that names no namespace at all.
    let only_own = guard(&[], &["otel/opentelemetry-collector-contrib"], false);
    assert!(check_policy(&s, OPERATOR_NS, &only_own).is_empty());
    let s = spec(
        "{collector: {namespace: observability}, backends: [{name: j, type: jaeger, endpoint: 'http://jaeger:4317'}]}",
    );
    assert_eq!(
        fields(&check_policy(&s, OPERATOR_NS, &only_own)),
        ["spec.collector.namespace"]
    );
    assert_eq!(
        only_own.describe_namespaces(OPERATOR_NS),
        "tracing-operator",
        "the message lists what is allowed"
    );
}

#[test]
fn any_namespace_allows_every_namespace_and_says_so() {
    let any = CollectorGuard {
        namespaces: Namespaces::Any,
        ..CollectorGuard::default()
    };
    assert!(namespace_allowed(&any, OPERATOR_NS, "kube-system"));
    assert!(namespace_allowed(&any, OPERATOR_NS, "team-z"));
    assert_eq!(any.describe_namespaces(OPERATOR_NS), "any namespace");
    // The image and backends are still judged.
    let s = spec(
        "{collector: {namespace: kube-system, image: 'evil.example/miner:1'}, backends: [{name: j, type: jaeger, endpoint: 'http://jaeger:4317'}]}",
    );
    assert_eq!(
        fields(&check_policy(&s, OPERATOR_NS, &any)),
        ["spec.collector.image"]
    );
}

#[test]
fn per_namespace_namespaces_are_judged_one_by_one_by_namespace_allowed() {
    let s = spec(
        "{collector: {placement: PerNamespace}, backends: [{name: j, type: jaeger, endpoint: 'http://jaeger:4317'}]}",
    );
    let g = guard(
        &["team-a"],
        &["otel/opentelemetry-collector-contrib"],
        false,
    );
    // check_policy cannot know which namespaces the selector will select.
    assert!(check_policy(&s, OPERATOR_NS, &g).is_empty());
    assert!(namespace_allowed(&g, OPERATOR_NS, "team-a"));
    assert!(!namespace_allowed(&g, OPERATOR_NS, "team-b"));
    assert!(!namespace_allowed(&g, OPERATOR_NS, "team-a-evil"));
}

#[test]
fn image_prefixes_match_whole_path_segments_of_the_repository() {
    let g = guard(
        &[],
        &[
            "otel/opentelemetry-collector-contrib",
            "registry.corp.example/otel",
        ],
        false,
    );
    for allowed in [
        "otel/opentelemetry-collector-contrib",
        "otel/opentelemetry-collector-contrib:0.161.0",
        "otel/opentelemetry-collector-contrib@sha256:0123",
        "otel/opentelemetry-collector-contrib:0.161.0@sha256:0123",
        "registry.corp.example/otel/collector:1",
        "registry.corp.example/otel/team/collector:1",
    ] {
        assert!(image_allowed(&g, allowed), "{allowed} is allowed");
    }
    for refused in [
        "otel/opentelemetry-collector-contrib-evil:1",
        "otel/opentelemetry-collector-contrib-evil",
        "otel/opentelemetry-collector:0.161.0",
        "otel:1",
        "docker.io/otel/opentelemetry-collector-contrib:0.161.0",
        "registry.corp.example/otelx/collector:1",
        "registry.corp.example:5000/otel/collector:1",
        "registry.corp.example.evil.example/otel/collector:1",
        "evil.example/registry.corp.example/otel/collector:1",
        "",
    ] {
        assert!(!image_allowed(&g, refused), "{refused:?} is refused");
    }
}

#[test]
fn the_repository_of_an_image_drops_tag_and_digest_but_not_a_registry_port() {
    assert_eq!(image_repository("nginx"), "nginx");
    assert_eq!(image_repository("nginx:1.27"), "nginx");
    assert_eq!(image_repository("a/b:1@sha256:ff"), "a/b");
    assert_eq!(image_repository("a/b@sha256:ff"), "a/b");
    assert_eq!(
        image_repository("registry:5000/a/b"),
        "registry:5000/a/b",
        "a colon before the last / is a port"
    );
    assert_eq!(image_repository("registry:5000/a/b:2"), "registry:5000/a/b");
}

#[test]
fn endpoint_hosts_are_read_as_the_collector_reads_them() {
    let host = |e: &str| endpoint_host(e);
    assert_eq!(
        host("http://jaeger.observability.svc:4317").as_deref(),
        Some("jaeger.observability.svc")
    );
    assert_eq!(
        host("https://Tempo.SVC/v1/traces").as_deref(),
        Some("tempo.svc")
    );
    assert_eq!(host("http://jaeger").as_deref(), Some("jaeger"));
    assert_eq!(
        host("http://in.svc@attacker.example.com:4317").as_deref(),
        Some("attacker.example.com"),
        "what comes before @ is a user name"
    );
    assert_eq!(host("http://[fd00::1]:4317").as_deref(), Some("fd00::1"));
    assert_eq!(
        host("http://a.svc:1?x=@evil.example").as_deref(),
        Some("a.svc"),
        "the authority ends at the query"
    );
    assert_eq!(host("no-scheme"), None);
    assert_eq!(host("http://:4317"), None);
}

#[test]
fn in_cluster_hosts_are_service_names_by_their_form() {
    for inside in [
        "jaeger",
        "localhost",
        "jaeger.observability.svc",
        "jaeger.observability.svc.cluster.local",
        "pod-0.jaeger-headless.observability.svc",
        "a.svc",
        "svc",
    ] {
        assert!(host_in_cluster(inside), "{inside} is in-cluster");
    }
    for outside in [
        "attacker.example.com",
        "10.0.0.7",
        "127.0.0.1",
        "fd00::1",
        "::1",
        "2130706433",
        "0x7f000001",
        "jaeger.observability.svc.cluster.local.evil.example",
        "jaeger.observability.svc.evil.example",
        "evil.svc.example.com",
        ".svc",
        "a..svc",
        "-a.svc",
        "a-.svc",
        "jaeger.observability.svc.",
        "a_b.svc",
        "jaeger.observability.svc.other.local",
        &format!("{}.svc", "a".repeat(64)),
        "",
    ] {
        assert!(!host_in_cluster(outside), "{outside:?} is outside");
    }
}

#[test]
fn external_backends_are_allowed_when_the_setting_says_so() {
    let s = spec(
        "{collector: {enabled: false}, backends: [{name: vendor, type: otlp, endpoint: 'https://otlp.vendor.example:4317'}]}",
    );
    let closed = CollectorGuard::default();
    assert_eq!(
        fields(&check_policy(&s, OPERATOR_NS, &closed)),
        ["spec.backends[vendor].endpoint"],
        "with the collector off the workloads would send there themselves"
    );
    let open = CollectorGuard {
        external_backends: true,
        ..CollectorGuard::default()
    };
    assert!(check_policy(&s, OPERATOR_NS, &open).is_empty());
}

#[test]
fn a_disabled_collector_is_not_judged_by_namespace_or_image() {
    let s = spec(
        "{collector: {enabled: false, namespace: kube-system, image: 'evil.example/miner:1'}, backends: [{name: j, type: jaeger, endpoint: 'http://jaeger:4317'}]}",
    );
    assert!(check_policy(&s, OPERATOR_NS, &CollectorGuard::default()).is_empty());
}

#[test]
fn unrestricted_allows_everything() {
    let s = spec(
        r#"
collector: {namespace: kube-system, image: "evil.example/miner:1"}
backends: [{name: attacker, type: otlp, endpoint: "http://attacker.example.com:4317"}]
"#,
    );
    assert!(check_policy(&s, OPERATOR_NS, &CollectorGuard::unrestricted()).is_empty());
}

#[test]
fn namespace_settings_parse_names_or_a_lone_star() {
    let parse = |v: &[&str]| parse_namespaces(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(parse(&["*"]), Ok(Namespaces::Any));
    assert_eq!(
        parse(&["observability", " team-a "]),
        Ok(Namespaces::List(vec![
            "observability".into(),
            "team-a".into()
        ]))
    );
    assert_eq!(
        parse(&[""]),
        Ok(Namespaces::List(vec![])),
        "empty: only the operator's own"
    );
    assert!(parse(&["*", "team-a"]).unwrap_err().contains("'*'"));
    assert!(parse(&["Team_A"]).unwrap_err().contains("Team_A"));
}

#[test]
fn image_settings_need_a_prefix_and_drop_a_trailing_slash() {
    let parse =
        |v: &[&str]| parse_image_prefixes(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        parse(&[
            "registry.corp.example/otel/",
            "otel/opentelemetry-collector-contrib"
        ]),
        Ok(vec![
            "registry.corp.example/otel".to_string(),
            "otel/opentelemetry-collector-contrib".to_string()
        ])
    );
    assert!(parse(&[]).is_err());
    assert!(
        parse(&["", " "]).is_err(),
        "an empty prefix would admit every image"
    );
    assert!(parse(&["/"]).is_err(), "so would a lone slash");
    assert!(
        parse(&["otel/collector@sha256:00"])
            .unwrap_err()
            .contains("digest")
    );
}
