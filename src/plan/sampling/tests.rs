use std::time::Duration;

use super::*;
use crate::api::TracingPolicySpec;

fn spec(sampling: &str) -> TracingPolicySpec {
    serde_saphyr::from_str(&format!(
        "sampling: {sampling}\nbackends: [{{name: b, type: otlp, endpoint: \"http://b:4317\"}}]\n"
    ))
    .expect("test spec parses")
}

fn with_collector_off(mut s: TracingPolicySpec) -> TracingPolicySpec {
    s.collector.enabled = false;
    s
}

fn sampler(sampler: &'static str, ratio: Option<f64>) -> HeadSampler {
    HeadSampler { sampler, ratio }
}

/// `(name, match, share)` of each rule, to compare whole plans at a glance.
fn rules(s: &TracingPolicySpec) -> Vec<(String, TailMatch, f64)> {
    tail_plan(s)
        .expect("plans")
        .expect("the collector decides")
        .rules
        .into_iter()
        .map(|r| (r.name, r.matches, r.share))
        .collect()
}

fn r(name: &str, matches: TailMatch, share: f64) -> (String, TailMatch, f64) {
    (name.to_string(), matches, share)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const EXAMPLE: &str = "{ratio: 0.1, services: [{name: auth, ratio: 1.0}], tail: {keepErrors: true, slowerThan: 500ms}}";

#[test]
fn without_tail_rules_the_ratios_are_head_ratios_as_before() {
    let s = spec("{ratio: 0.1, services: [{name: auth, ratio: 1.0}, {name: muted, ratio: 0}]}");
    assert!(!tail_decides(&s));
    assert_eq!(
        head_sampler(&s, "gateway"),
        sampler("parentbased_traceidratio", Some(0.1))
    );
    assert_eq!(
        head_sampler(&s, "auth"),
        sampler("parentbased_traceidratio", Some(1.0))
    );
    assert_eq!(
        head_sampler(&s, "muted"),
        sampler("parentbased_traceidratio", Some(0.0))
    );
    assert_eq!(tail_plan(&s), Ok(None));
    let own = spec("{ratio: 0.25, parentBased: false}");
    assert_eq!(
        head_sampler(&own, "gateway"),
        sampler("traceidratio", Some(0.25))
    );
    // Ratio 1 keeps its argument: the env of such workloads does not change.
    assert_eq!(
        head_sampler(&spec("{}"), "gateway"),
        sampler("parentbased_traceidratio", Some(1.0))
    );
}

#[test]
fn with_tail_rules_every_sdk_records_every_trace_by_default() {
    let s = spec(EXAMPLE);
    assert!(tail_decides(&s));
    for service in ["gateway", "auth", "socket"] {
        assert_eq!(
            head_sampler(&s, service),
            sampler("parentbased_always_on", None),
            "{service}"
        );
    }
    let own = spec("{ratio: 0.1, parentBased: false, tail: {keepErrors: true}}");
    assert_eq!(head_sampler(&own, "gateway"), sampler("always_on", None));
}

#[test]
fn an_explicit_head_ratio_applies_to_unlisted_services_and_listed_ones_record_their_share() {
    let s = spec(
        "{ratio: 0.05, head: {ratio: 0.1}, services: [{name: auth, ratio: 1.0}, {name: batch, ratio: 0.02}], tail: {keepErrors: true}}",
    );
    assert_eq!(
        head_sampler(&s, "gateway"),
        sampler("parentbased_traceidratio", Some(0.1))
    );
    // Listed at 1.0: its SDK records every trace it starts, or its promise breaks.
    assert_eq!(
        head_sampler(&s, "auth"),
        sampler("parentbased_always_on", None)
    );
    // Listed below the head ratio: the head ratio, the collector thins the rest.
    assert_eq!(
        head_sampler(&s, "batch"),
        sampler("parentbased_traceidratio", Some(0.1))
    );
    assert_eq!(
        rules(&s),
        [
            r("keep-errors", TailMatch::Errors, 1.0),
            r("rooted-in/auth", TailMatch::RootedIn(names(&["auth"])), 1.0),
            // 0.02 end to end of the 0.1 that reach the collector.
            r(
                "rooted-in/batch",
                TailMatch::RootedIn(names(&["batch"])),
                0.2
            ),
            r(
                "rest",
                TailMatch::RootedOutside(names(&["auth", "batch"])),
                0.5
            ),
            r("rootless", TailMatch::Rootless, 0.5),
        ]
    );
}

#[test]
fn with_the_collector_off_tail_rules_cannot_apply_and_the_head_decides() {
    // The CRD refuses this policy; planning still does the safe thing with it.
    let s = with_collector_off(spec(EXAMPLE));
    assert!(!tail_decides(&s));
    assert_eq!(
        head_sampler(&s, "gateway"),
        sampler("parentbased_traceidratio", Some(0.1))
    );
    assert_eq!(
        head_sampler(&s, "auth"),
        sampler("parentbased_traceidratio", Some(1.0))
    );
    assert_eq!(tail_plan(&s), Ok(None));
    assert_eq!(summary(&s), "10%");
}

#[test]
fn the_example_keeps_errors_slow_traces_auth_rooted_traces_and_a_tenth_of_the_rest() {
    assert_eq!(
        rules(&spec(EXAMPLE)),
        [
            r("keep-errors", TailMatch::Errors, 1.0),
            r(
                "slower-than",
                TailMatch::SlowerThan(Duration::from_millis(500)),
                1.0
            ),
            r("rooted-in/auth", TailMatch::RootedIn(names(&["auth"])), 1.0),
            r("rest", TailMatch::RootedOutside(names(&["auth"])), 0.1),
            r("rootless", TailMatch::Rootless, 0.1),
        ]
    );
}

#[test]
fn services_at_zero_are_excluded_from_the_rest_and_keep_nothing_of_their_own() {
    assert_eq!(
        rules(&spec(
            "{ratio: 0.2, services: [{name: healthz, ratio: 0}], tail: {keepErrors: true}}"
        )),
        [
            r("keep-errors", TailMatch::Errors, 1.0),
            r("rest", TailMatch::RootedOutside(names(&["healthz"])), 0.2),
            r("rootless", TailMatch::Rootless, 0.2),
        ]
    );
}

#[test]
fn ratio_zero_keeps_only_what_the_rules_keep_and_no_rule_at_all_keeps_nothing() {
    assert_eq!(
        rules(&spec("{ratio: 0, tail: {keepErrors: true}}")),
        [r("keep-errors", TailMatch::Errors, 1.0)]
    );
    assert_eq!(
        rules(&spec("{ratio: 0.3, tail: {keepErrors: false, ratio: 0}}")),
        [r("keep-nothing", TailMatch::Any, 0.0)]
    );
}

#[test]
fn the_deprecated_tail_ratio_multiplies_into_the_ordinary_share() {
    // What the old e2e policy wrote: all traces at the head, 10 % kept at the tail.
    let old = spec("{ratio: 1, tail: {keepErrors: true, ratio: 0.1}}");
    assert_eq!(ordinary_ratio(&old), 0.1);
    assert_eq!(
        rules(&old)[1..],
        [
            r("rest", TailMatch::RootedOutside(vec![]), 0.1),
            r("rootless", TailMatch::Rootless, 0.1),
        ]
    );
    // The contract's old example: 10 % at the head, 10 % of those at the tail.
    let both = spec("{ratio: 0.1, tail: {keepErrors: true, ratio: 0.1}}");
    assert!((ordinary_ratio(&both) - 0.01).abs() < 1e-12);
    assert_eq!(
        deprecations(&both),
        [Deprecation {
            reason: "DeprecatedField",
            field: "spec.sampling.tail.ratio",
            message: "spec.sampling.tail.ratio is deprecated: the collector keeps sampling.ratio × tail.ratio = 0.1 × 0.1 = 1 % of ordinary traces; write sampling.ratio: 0.01 and remove tail.ratio".into(),
        }]
    );
    assert_eq!(
        ready_notes(&both),
        deprecations(&both)
            .into_iter()
            .map(|d| d.message)
            .collect::<Vec<_>>()
    );
    assert_eq!(summary(&both), "errors,rest 1%");
    assert!(deprecations(&spec(EXAMPLE)).is_empty());
}

#[test]
fn a_head_below_one_says_what_it_loses() {
    let s = spec("{ratio: 0.1, head: {ratio: 0.25}, tail: {keepErrors: true}}");
    assert_eq!(
        ready_notes(&s),
        ["errors outside the head sample are lost: 75 % (sampling.head.ratio 0.25)"]
    );
    let slow = spec("{ratio: 0.1, head: {ratio: 0.1}, tail: {keepErrors: true, slowerThan: 1s}}");
    assert_eq!(
        ready_notes(&slow),
        ["errors and slow traces outside the head sample are lost: 90 % (sampling.head.ratio 0.1)"]
    );
    let short = spec("{ratio: 0.5, head: {ratio: 0.1}, tail: {keepErrors: false, slowerThan: 1s}}");
    assert_eq!(
        ready_notes(&short),
        [
            "slow traces outside the head sample are lost: 90 % (sampling.head.ratio 0.1)",
            "sampling.ratio 0.5 is above sampling.head.ratio 0.1: only 10 % of ordinary traces reach the collector",
        ]
    );
    assert_eq!(rules(&short)[1].2, 1.0, "the rest: all that arrives");
    assert!(ready_notes(&spec(EXAMPLE)).is_empty());
    assert!(ready_notes(&spec("{ratio: 0.1}")).is_empty());
}

#[test]
fn sizing_follows_the_expected_rate_and_the_decision_wait() {
    let plan = |sampling: &str| {
        tail_plan(&spec(sampling))
            .expect("plans")
            .expect("tail plan")
    };
    let default = plan("{tail: {keepErrors: true}}");
    assert_eq!(
        (
            default.decision_wait,
            default.num_traces,
            default.expected_new_traces_per_sec,
            default.sampled_cache_size,
            default.non_sampled_cache_size,
        ),
        (Duration::from_secs(10), 20_000, 1000, 120_000, 120_000)
    );
    let busy = plan("{tail: {keepErrors: true, expectedTracesPerSecond: 20000, slowerThan: 30s}}");
    assert_eq!(busy.decision_wait, Duration::from_secs(60));
    assert_eq!(busy.num_traces, 20_000 * 60 * 2);
    assert_eq!(busy.expected_new_traces_per_sec, 20_000);
    assert_eq!(busy.sampled_cache_size, 20_000 * 120);
    assert_eq!(
        plan("{tail: {slowerThan: 1h}}").decision_wait,
        MAX_DECISION_WAIT
    );
    assert_eq!(
        plan("{tail: {slowerThan: 500ms}}").decision_wait,
        MIN_DECISION_WAIT
    );
}

#[test]
fn an_unreadable_duration_is_an_error_naming_the_field() {
    let mut s = spec("{tail: {slowerThan: 2s}}");
    if let Some(t) = s.sampling.tail.as_mut() {
        t.slower_than = Some(crate::api::Duration("2 parsecs".into()));
    }
    let err = tail_plan(&s).expect_err("bad duration");
    assert!(
        err.to_string()
            .starts_with("spec.sampling.tail.slowerThan: "),
        "{err}"
    );
}

#[test]
fn memory_limiter_follows_the_container_limit() {
    let limits = |collector: &str| {
        let s: TracingPolicySpec = serde_saphyr::from_str(&format!(
            "collector: {collector}\nbackends: [{{name: b, type: otlp, endpoint: \"http://b:4317\"}}]\n"
        ))
        .expect("spec parses");
        memory_limits(&s)
    };
    let ml = |limit_mib, spike_limit_mib| MemoryLimits {
        limit_mib,
        spike_limit_mib,
    };
    assert_eq!(limits("{}"), ml(409, 128));
    assert_eq!(
        limits("{resources: {limits: {memory: 2Gi}}}"),
        ml(1638, 512)
    );
    // 1G is 953 MiB.
    assert_eq!(limits("{resources: {limits: {memory: 1G}}}"), ml(762, 238));
    // Limits without memory: the container has none, the limiter assumes the default.
    assert_eq!(limits("{resources: {limits: {cpu: 2}}}"), ml(409, 128));
    assert_eq!(
        limits("{resources: {requests: {memory: 4Gi}}}"),
        ml(409, 128)
    );
}

#[test]
fn quantities() {
    let cases: &[(&str, Option<u64>)] = &[
        ("512Mi", Some(512 << 20)),
        ("0.5Gi", Some(512 << 20)),
        ("2Gi", Some(2 << 30)),
        ("1G", Some(1_000_000_000)),
        ("1500M", Some(1_500_000_000)),
        ("128974848", Some(128_974_848)),
        ("1e9", Some(1_000_000_000)),
        ("129e6", Some(129_000_000)),
        ("100k", Some(100_000)),
        ("64Ki", Some(65_536)),
        ("1000m", Some(1)),
        ("", None),
        ("Mi", None),
        ("12 Mi", None),
        ("1Zi", None),
        ("-1Gi", None),
    ];
    for (q, want) in cases {
        assert_eq!(quantity_bytes(q), *want, "{q}");
    }
}

#[test]
fn summaries_for_kubectl_get() {
    assert_eq!(summary(&spec("{ratio: 0.1}")), "10%");
    assert_eq!(summary(&spec(EXAMPLE)), "errors,>500ms,auth 100%,rest 10%");
    assert_eq!(
        summary(&spec(
            "{ratio: 0.05, head: {ratio: 0.5}, tail: {keepErrors: false, slowerThan: 2s}}"
        )),
        "head 50%: >2s,rest 5%"
    );
    assert_eq!(
        summary(&spec(
            "{services: [{name: a, ratio: 1}, {name: b, ratio: 1}, {name: c, ratio: 1}, {name: d, ratio: 1}], tail: {keepErrors: true}}"
        )),
        "errors,4 services,rest 100%"
    );
}
