//! The operator's Prometheus metrics, served as OpenMetrics text on `/metrics`.
//!
//! Every metric is prefixed `tracing_operator_`:
//! - `reconciles_total`: reconciles finished, successful or not;
//! - `reconcile_errors_total{reason}`: failed reconciles by error kind;
//! - `reconcile_duration_seconds`: how long successful reconciles took;
//! - `workloads{policy,state}`: a policy's workloads by state (`up_to_date`,
//!   `rolling_out`, `waiting`, `failed`, `conflicted`);
//! - `api_writes_total{verb,kind}`: mutating requests to the Kubernetes API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How many of one policy's workloads are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStates {
    pub up_to_date: i64,
    pub rolling_out: i64,
    /// Waiting for a rollout slot, held by `onFailure: Pause`, or by a collector that cannot start.
    pub waiting: i64,
    pub failed: i64,
    pub conflicted: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    policy: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    verb: String,
    kind: String,
}

/// A labelled family that is described on `/metrics` (HELP and TYPE) from the
/// start. prometheus-client leaves out a family with no series yet, so before
/// the first error or write the errors, workloads and writes families would be
/// missing, and dashboards and alerts could not tell "none yet" from "not
/// exported by this version".
#[derive(Debug)]
struct Described<M>(M);

impl<M: EncodeMetric> EncodeMetric for Described<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// The operator's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ReasonLabels, Counter>,
    reconcile_duration: Histogram,
    workloads: Family<WorkloadLabels, Gauge>,
    api_writes: Family<WriteLabels, Counter>,
    // A Family cannot be summed, so the total is kept beside it.
    api_writes_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tracing_operator");
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles of TracingPolicies finished, successful or not",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by error kind",
            Described(reconcile_errors.clone()),
        );
        // 10 ms .. ~41 s: a converged policy takes milliseconds, a large first apply seconds.
        let reconcile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 13));
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of successful reconciles",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        let workloads = Family::<WorkloadLabels, Gauge>::default();
        registry.register(
            "workloads",
            "Workloads a TracingPolicy instruments, by state",
            Described(workloads.clone()),
        );
        let api_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Mutating requests to the Kubernetes API, by verb and kind",
            Described(api_writes.clone()),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            workloads,
            api_writes,
            api_writes_total: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Records a successful reconcile and how long it took.
    pub fn reconcile_ok(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Records a failed reconcile; `reason` is a short, bounded label.
    pub fn reconcile_error(&self, reason: &'static str) {
        self.reconciles.inc();
        self.reconcile_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Sets the per-state workload counts of `policy`.
    pub fn set_workloads(&self, policy: &str, states: &WorkloadStates) {
        for (state, count) in [
            ("up_to_date", states.up_to_date),
            ("rolling_out", states.rolling_out),
            ("waiting", states.waiting),
            ("failed", states.failed),
            ("conflicted", states.conflicted),
        ] {
            self.workloads
                .get_or_create(&WorkloadLabels {
                    policy: policy.to_string(),
                    state,
                })
                .set(count);
        }
    }

    /// Drops the workload gauges of a policy that no longer exists.
    pub fn forget_policy(&self, policy: &str) {
        for state in [
            "up_to_date",
            "rolling_out",
            "waiting",
            "failed",
            "conflicted",
        ] {
            self.workloads.remove(&WorkloadLabels {
                policy: policy.to_string(),
                state,
            });
        }
    }

    /// Records one mutating API request (`verb` as in RBAC: create, patch, ...).
    pub fn api_write(&self, verb: &str, kind: &str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                verb: verb.to_string(),
                kind: kind.to_string(),
            })
            .inc();
        self.api_writes_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Mutating API requests made so far, over every verb and kind.
    pub fn api_writes_total(&self) -> u64 {
        self.api_writes_total.load(Ordering::Relaxed)
    }

    /// Reconciles finished so far, successful or not.
    pub fn reconciles_total(&self) -> u64 {
        self.reconciles.get()
    }

    /// The metrics as OpenMetrics text (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
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
            ("tracing_operator_api_writes", "counter"),
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
    fn writes_are_counted_by_verb_and_kind_and_in_total() {
        let m = Metrics::default();
        assert_eq!(m.api_writes_total(), 0);
        m.api_write("patch", "Deployment");
        m.api_write("patch", "Deployment");
        m.api_write("create", "Event");
        assert_eq!(m.api_writes_total(), 3);
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
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF: {text}"
        );
    }

    #[test]
    fn reconciles_errors_and_durations() {
        let m = Metrics::default();
        m.reconcile_ok(Duration::from_millis(30));
        m.reconcile_error("StatusWrite");
        m.reconcile_error("StatusWrite");
        assert_eq!(m.reconciles_total(), 3);
        let text = m.encode().unwrap();
        assert_eq!(
            line(&text, "tracing_operator_reconciles_total "),
            Some("tracing_operator_reconciles_total 3")
        );
        assert_eq!(
            line(
                &text,
                r#"tracing_operator_reconcile_errors_total{reason="StatusWrite"}"#
            ),
            Some(r#"tracing_operator_reconcile_errors_total{reason="StatusWrite"} 2"#)
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

    #[test]
    fn workload_gauges_follow_the_latest_counts_and_go_with_the_policy() {
        let m = Metrics::default();
        m.set_workloads(
            "prod",
            &WorkloadStates {
                up_to_date: 2,
                rolling_out: 3,
                waiting: 0,
                failed: 1,
                conflicted: 0,
            },
        );
        m.set_workloads(
            "prod",
            &WorkloadStates {
                up_to_date: 5,
                rolling_out: 0,
                waiting: 0,
                failed: 1,
                conflicted: 0,
            },
        );
        let text = m.encode().unwrap();
        assert_eq!(
            line(
                &text,
                r#"tracing_operator_workloads{policy="prod",state="up_to_date"}"#
            ),
            Some(r#"tracing_operator_workloads{policy="prod",state="up_to_date"} 5"#)
        );
        assert_eq!(
            line(
                &text,
                r#"tracing_operator_workloads{policy="prod",state="rolling_out"}"#
            ),
            Some(r#"tracing_operator_workloads{policy="prod",state="rolling_out"} 0"#)
        );
        m.forget_policy("prod");
        let text = m.encode().unwrap();
        assert!(!text.contains(r#"policy="prod""#), "{text}");
    }
}
