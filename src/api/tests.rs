use super::*;

#[test]
fn go_durations_parse() {
    assert_eq!(
        parse_go_duration("500ms"),
        Ok(std::time::Duration::from_millis(500))
    );
    assert_eq!(
        parse_go_duration("10m"),
        Ok(std::time::Duration::from_secs(600))
    );
    assert_eq!(
        parse_go_duration("1h30m"),
        Ok(std::time::Duration::from_secs(5400))
    );
    assert_eq!(
        parse_go_duration("1.5s"),
        Ok(std::time::Duration::from_millis(1500))
    );
    for bad in ["", "10", "ms", "10x", "-1s", "1m-"] {
        assert!(
            parse_go_duration(bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn minimal_policy_gets_documented_defaults() {
    let spec: TracingPolicySpec = serde_json::from_value(serde_json::json!({
        "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger:4317"}]
    }))
    .expect("minimal spec parses");
    assert_eq!(spec.selector.kinds, WorkloadKind::ALL.to_vec());
    assert_eq!(
        spec.propagators,
        vec![Propagator::Tracecontext, Propagator::Baggage]
    );
    assert_eq!(spec.mode, Mode::Enforce);
    assert_eq!(spec.sampling.ratio, 1.0);
    assert!(spec.sampling.parent_based);
    assert!(spec.collector.enabled);
    assert_eq!(spec.collector.placement, Placement::Central);
    assert_eq!(spec.rollout.strategy, RolloutStrategy::Progressive);
    assert_eq!(spec.rollout.max_concurrent, 5);
    assert_eq!(
        spec.rollout.progress_deadline.to_std(),
        Ok(std::time::Duration::from_secs(600))
    );
    assert_eq!(spec.rollout.on_failure, OnFailure::Rollback);
    assert_eq!(spec.backends[0].protocol, Protocol::Grpc);
}

#[test]
fn crd_names_match_the_contract() {
    let crd = TracingPolicy::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("tracingpolicies.tracing.caas.io")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["tp".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["tracing".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Workloads", "Sampling", "Backend", "Age"]
    );
}

/// `crds/tracingpolicy.yaml` is generated; regenerate with
/// `cargo run -- crd > crds/tracingpolicy.yaml` when this fails.
#[test]
fn checked_in_crd_is_current() {
    let generated = crd_yaml().expect("CRD serializes");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/tracingpolicy.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "crds/tracingpolicy.yaml is stale: run `cargo run -- crd > crds/tracingpolicy.yaml`"
    );
}
