use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn every_family_is_described_before_its_first_sample() {
    let text = Metrics::default().encode().unwrap();
    for (family, kind) in [
        ("tracing_operator_reconciles", "counter"),
        ("tracing_operator_reconcile_errors", "counter"),
        ("tracing_operator_reconcile_duration_seconds", "histogram"),
        ("tracing_operator_workloads", "gauge"),
        ("tracing_operator_policy_condition", "gauge"),
        ("tracing_operator_policy_problem", "gauge"),
        ("tracing_operator_collector_replicas", "gauge"),
        ("tracing_operator_collector_ready_replicas", "gauge"),
        ("tracing_operator_api_writes", "counter"),
        ("tracing_operator_api_write_qps_limit", "gauge"),
        ("tracing_operator_api_write_burst_limit", "gauge"),
        ("tracing_operator_leader", "gauge"),
        ("tracing_operator_watched_workloads", "gauge"),
        ("tracing_operator_resident_memory_bytes", "gauge"),
    ] {
        let type_line = format!("# TYPE {family} {kind}");
        assert!(text.lines().any(|l| l == type_line), "{type_line}:\n{text}");
    }
    assert!(
        !text.contains("tracing_operator_reconcile_errors_total{"),
        "no error series before the first error: {text}"
    );
}

#[test]
fn every_name_carries_the_prefix_and_a_unit_where_it_has_one() {
    let text = Metrics::default().encode().unwrap();
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(name.starts_with("tracing_operator_"), "{name}");
    }
    assert!(text.contains("# UNIT tracing_operator_reconcile_duration_seconds seconds"));
    assert!(text.contains("# UNIT tracing_operator_resident_memory_bytes bytes"));
}

#[test]
fn writes_are_counted_by_verb_and_kind_and_in_total() {
    let m = Metrics::default();
    assert_eq!(m.api_writes_total(), 0);
    m.api_write("patch", "Deployment");
    m.api_write("patch", "Deployment");
    m.api_write("create", "Event");
    assert_eq!(m.api_writes_total(), 3);
    m.set_write_limits(20, 40);
    let text = m.encode().unwrap();
    assert_eq!(
        line(
            &text,
            r#"tracing_operator_api_writes_total{verb="patch",kind="Deployment"}"#
        ),
        Some(r#"tracing_operator_api_writes_total{verb="patch",kind="Deployment"} 2"#)
    );
    assert_eq!(
        line(
            &text,
            r#"tracing_operator_api_writes_total{verb="create",kind="Event"}"#
        ),
        Some(r#"tracing_operator_api_writes_total{verb="create",kind="Event"} 1"#)
    );
    assert_eq!(
        line(&text, "tracing_operator_api_write_qps_limit "),
        Some("tracing_operator_api_write_qps_limit 20")
    );
    assert_eq!(
        line(&text, "tracing_operator_api_write_burst_limit "),
        Some("tracing_operator_api_write_burst_limit 40")
    );
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {text}"
    );
}

#[test]
fn reconciles_errors_and_durations() {
    let m = Metrics::default();
    m.reconcile_ok(Duration::from_millis(30));
    m.reconcile_error("prod", "StatusWrite");
    m.reconcile_error("prod", "StatusWrite");
    assert_eq!(m.reconciles_total(), 3);
    let text = m.encode().unwrap();
    assert_eq!(
        line(&text, "tracing_operator_reconciles_total "),
        Some("tracing_operator_reconciles_total 3")
    );
    assert_eq!(
        line(
            &text,
            r#"tracing_operator_reconcile_errors_total{policy="prod",reason="StatusWrite"}"#
        ),
        Some(r#"tracing_operator_reconcile_errors_total{policy="prod",reason="StatusWrite"} 2"#)
    );
    assert_eq!(
        line(&text, "tracing_operator_reconcile_duration_seconds_count"),
        Some("tracing_operator_reconcile_duration_seconds_count 1")
    );
    // 30 ms lands in the 40 ms bucket, not the 20 ms one.
    assert_eq!(
        line(
            &text,
            r#"tracing_operator_reconcile_duration_seconds_bucket{le="0.02"}"#
        ),
        Some(r#"tracing_operator_reconcile_duration_seconds_bucket{le="0.02"} 0"#)
    );
    assert_eq!(
        line(
            &text,
            r#"tracing_operator_reconcile_duration_seconds_bucket{le="0.04"}"#
        ),
        Some(r#"tracing_operator_reconcile_duration_seconds_bucket{le="0.04"} 1"#)
    );
}

fn report(up_to_date: i64, ready: bool, reason: &str, problems: &[&'static str]) -> PolicyReport {
    PolicyReport {
        workloads: WorkloadStates {
            up_to_date,
            rolling_out: 3,
            failed: 1,
            rolled_back: 2,
            ..WorkloadStates::default()
        },
        conditions: vec![
            ("Ready".into(), ready, reason.into()),
            ("Degraded".into(), !problems.is_empty(), "AsExpected".into()),
        ],
        problems: problems.to_vec(),
        collector: Some(CollectorReplicas {
            desired: 2,
            ready: 1,
        }),
    }
}

#[test]
fn policy_gauges_follow_the_latest_report_and_drop_reasons_that_went_away() {
    let m = Metrics::default();
    m.set_policy("prod", &report(2, false, "Degraded", &["SecretNotFound"]));
    let text = m.encode().unwrap();
    for want in [
        r#"tracing_operator_workloads{policy="prod",state="up_to_date"} 2"#,
        r#"tracing_operator_workloads{policy="prod",state="rolling_out"} 3"#,
        r#"tracing_operator_workloads{policy="prod",state="failed"} 1"#,
        r#"tracing_operator_workloads{policy="prod",state="rolled_back"} 2"#,
        r#"tracing_operator_policy_condition{policy="prod",type="Ready",reason="Degraded"} 0"#,
        r#"tracing_operator_policy_condition{policy="prod",type="Degraded",reason="AsExpected"} 1"#,
        r#"tracing_operator_policy_problem{policy="prod",reason="SecretNotFound"} 1"#,
        r#"tracing_operator_collector_replicas{policy="prod"} 2"#,
        r#"tracing_operator_collector_ready_replicas{policy="prod"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == want), "{want}:\n{text}");
    }

    m.set_policy("prod", &report(5, true, "UpToDate", &[]));
    let text = m.encode().unwrap();
    assert!(
        text.lines().any(|l| l
            == r#"tracing_operator_policy_condition{policy="prod",type="Ready",reason="UpToDate"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"reason="Degraded""#),
        "one series per policy and condition type: {text}"
    );
    assert!(
        !text.contains("SecretNotFound"),
        "a problem that went away leaves /metrics: {text}"
    );
    assert_eq!(
        line(
            &text,
            r#"tracing_operator_workloads{policy="prod",state="up_to_date"}"#
        ),
        Some(r#"tracing_operator_workloads{policy="prod",state="up_to_date"} 5"#)
    );

    let without_collector = PolicyReport {
        collector: None,
        ..report(5, true, "UpToDate", &[])
    };
    m.set_policy("prod", &without_collector);
    let text = m.encode().unwrap();
    assert!(
        !text.contains("tracing_operator_collector_replicas{"),
        "{text}"
    );

    m.set_policy("other", &report(1, true, "UpToDate", &[]));
    m.reconcile_error("prod", "Writes");
    m.forget_policy("prod");
    let text = m.encode().unwrap();
    assert!(!text.contains(r#"policy="prod""#), "{text}");
    assert!(text.contains(r#"policy="other""#), "{text}");
}

#[test]
fn leader_follows_the_fence() {
    let m = Metrics::default();
    let text = m.encode().unwrap();
    assert_eq!(
        line(&text, "tracing_operator_leader "),
        Some("tracing_operator_leader 0"),
        "a standby that has no fence yet does not lead"
    );
    m.track_leader(Fence::unfenced());
    let text = m.encode().unwrap();
    assert_eq!(
        line(&text, "tracing_operator_leader "),
        Some("tracing_operator_leader 1"),
        "without leader election the one process leads"
    );
}

#[test]
fn resident_memory_is_read_from_proc() {
    assert_eq!(
        parse_vm_rss("Name:\tx\nVmHWM:\t  2000 kB\nVmRSS:\t  1234 kB\n"),
        Some(1234 * 1024)
    );
    assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    if std::path::Path::new("/proc/self/status").exists() {
        let text = Metrics::default().encode().unwrap();
        let value: f64 = line(&text, "tracing_operator_resident_memory_bytes ")
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .expect("resident memory sample");
        assert!(value > 1_000_000.0, "{value}");
    }
}
