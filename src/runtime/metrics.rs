//! The operator's Prometheus metrics, served as OpenMetrics text on `/metrics`.
//!
//! Named by convention: every metric is prefixed `tracing_operator_`, carries its
//! unit in its name, and its labels are bounded: policy names, condition types
//! and reasons, workload states, verbs and kinds; never a workload's or a
//! namespace's name, so a cluster of 10,000 workloads costs as many series as
//! one of ten.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `reconciles_total` | counter | | reconciles finished, successful or not |
//! | `reconcile_errors_total` | counter | `policy`, `reason` | failed reconciles by error kind |
//! | `reconcile_duration_seconds` | histogram | | how long successful reconciles took |
//! | `workloads` | gauge | `policy`, `state` | a policy's workloads: `up_to_date`, `rolling_out`, `waiting`, `failed` (kept), `rolled_back`, `conflicted` |
//! | `policy_condition` | gauge | `policy`, `type`, `reason` | 1 while the condition is True, 0 while False; one series per policy and type |
//! | `policy_problem` | gauge | `policy`, `reason` | 1 for each problem that makes the policy Degraded (`SecretNotFound`, `InjectionNotApplied`, `WorkloadsFailed`, ...) |
//! | `collector_replicas` | gauge | `policy` | collector replicas the policy's collector Deployments ask for |
//! | `collector_ready_replicas` | gauge | `policy` | of those, the ready ones |
//! | `api_writes_total` | counter | `verb`, `kind` | mutating requests to the Kubernetes API (`kind` `TracingPolicy/status` for status writes) |
//! | `api_write_qps_limit` | gauge | | the client-side limit on mutating requests per second (`--kube-api-qps`) |
//! | `api_write_burst_limit` | gauge | | the burst above it (`--kube-api-burst`) |
//! | `leader` | gauge | | 1 while this process may write (it holds the Lease, or runs without leader election), else 0 |
//! | `watched_workloads` | gauge | | workloads in the operator's cache |
//! | `resident_memory_bytes` | gauge | | the process's resident memory (Linux `/proc/self/status` VmRSS) |

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::leader::Fence;

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How many of one policy's workloads are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStates {
    pub up_to_date: i64,
    pub rolling_out: i64,
    /// Waiting for a rollout slot, held by `onFailure: Pause`, by their owner,
    /// or by a collector that cannot start.
    pub waiting: i64,
    /// Failed and kept as they are (`onFailure: Pause` or `Continue`, or a refused apply).
    pub failed: i64,
    /// Failed and rolled back (`onFailure: Rollback`).
    pub rolled_back: i64,
    pub conflicted: i64,
}

impl WorkloadStates {
    fn by_state(&self) -> [(&'static str, i64); 6] {
        [
            ("up_to_date", self.up_to_date),
            ("rolling_out", self.rolling_out),
            ("waiting", self.waiting),
            ("failed", self.failed),
            ("rolled_back", self.rolled_back),
            ("conflicted", self.conflicted),
        ]
    }
}

/// The replicas of a policy's collectors, summed over their namespaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectorReplicas {
    pub desired: i64,
    pub ready: i64,
}

/// One policy as its latest reconcile computed it: what the per-policy gauges show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyReport {
    pub workloads: WorkloadStates,
    /// Each status condition: `(type, status is True, reason)`.
    pub conditions: Vec<(String, bool, String)>,
    /// The reasons of the problems that make the policy Degraded.
    pub problems: Vec<&'static str>,
    /// `None` while the policy runs no collector.
    pub collector: Option<CollectorReplicas>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    policy: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    policy: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    policy: String,
    r#type: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    policy: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
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

/// `leader`: read from the fence at each scrape, so it turns 0 the moment this
/// process may no longer write, not at its next reconcile.
#[derive(Debug, Default)]
struct LeaderGauge(Mutex<Option<Fence>>);

impl EncodeMetric for LeaderGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let leading = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|f| f.check().is_ok());
        encoder.encode_gauge(&i64::from(leading))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// `resident_memory_bytes`, read at each scrape; left out where `/proc` is not.
#[derive(Debug, Default)]
struct ResidentMemory;

impl EncodeMetric for ResidentMemory {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match resident_memory_bytes() {
            Some(bytes) => encoder.encode_gauge(&i64::try_from(bytes).unwrap_or(i64::MAX)),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// VmRSS of `/proc/self/status`, in bytes.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The series last set for one policy, so that a reason that went away also
/// goes from `/metrics` (a stale `reason` series would alert forever).
#[derive(Debug, Default)]
struct PolicySeries {
    conditions: Vec<ConditionLabels>,
    problems: Vec<ProblemLabels>,
    collector: bool,
    errors: Vec<&'static str>,
}

/// The operator's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    workloads: Family<WorkloadLabels, Gauge>,
    conditions: Family<ConditionLabels, Gauge>,
    problems: Family<ProblemLabels, Gauge>,
    collector_replicas: Family<PolicyLabels, Gauge>,
    collector_ready: Family<PolicyLabels, Gauge>,
    api_writes: Family<WriteLabels, Counter>,
    qps_limit: Gauge,
    burst_limit: Gauge,
    watched: Gauge,
    leader: std::sync::Arc<LeaderGauge>,
    series: Mutex<HashMap<String, PolicySeries>>,
    // A Family cannot be summed, so the total is kept beside it.
    api_writes_total: AtomicU64,
}

/// Lets the registry and [`Metrics`] share the leader gauge.
#[derive(Debug)]
struct SharedLeader(std::sync::Arc<LeaderGauge>);

impl EncodeMetric for SharedLeader {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
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
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by policy and error kind",
            Described(reconcile_errors.clone()),
        );
        // 10 ms .. ~41 s: a converged policy takes milliseconds, a large first apply seconds.
        let reconcile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 13));
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of successful reconciles",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let workloads = Family::<WorkloadLabels, Gauge>::default();
        registry.register(
            "workloads",
            "Workloads a TracingPolicy instruments, by state",
            Described(workloads.clone()),
        );
        let conditions = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "policy_condition",
            "A TracingPolicy's status conditions: 1 while True, 0 while False, labelled with the reason",
            Described(conditions.clone()),
        );
        let problems = Family::<ProblemLabels, Gauge>::default();
        registry.register(
            "policy_problem",
            "1 for each problem that makes a TracingPolicy Degraded, by reason",
            Described(problems.clone()),
        );
        let collector_replicas = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "collector_replicas",
            "Replicas a TracingPolicy's collector Deployments ask for, over their namespaces",
            Described(collector_replicas.clone()),
        );
        let collector_ready = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "collector_ready_replicas",
            "Ready replicas of a TracingPolicy's collectors, over their namespaces",
            Described(collector_ready.clone()),
        );
        let api_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Mutating requests to the Kubernetes API, by verb and kind (TracingPolicy/status for status writes)",
            Described(api_writes.clone()),
        );
        let qps_limit = Gauge::default();
        registry.register(
            "api_write_qps_limit",
            "Client-side limit on mutating requests per second (--kube-api-qps)",
            qps_limit.clone(),
        );
        let burst_limit = Gauge::default();
        registry.register(
            "api_write_burst_limit",
            "Mutating requests allowed at once above the QPS limit (--kube-api-burst)",
            burst_limit.clone(),
        );
        let leader = std::sync::Arc::new(LeaderGauge::default());
        registry.register(
            "leader",
            "1 while this process may write: it holds the leader Lease, or runs without leader election",
            SharedLeader(leader.clone()),
        );
        let watched = Gauge::default();
        registry.register(
            "watched_workloads",
            "Workloads (Deployments, StatefulSets, DaemonSets, CronJobs) in the operator's cache",
            watched.clone(),
        );
        registry.register_with_unit(
            "resident_memory",
            "Resident memory of the operator process",
            Unit::Bytes,
            ResidentMemory,
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            workloads,
            conditions,
            problems,
            collector_replicas,
            collector_ready,
            api_writes,
            qps_limit,
            burst_limit,
            watched,
            leader,
            series: Mutex::default(),
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

    /// Records a failed reconcile of `policy`; `reason` is a short, bounded label.
    pub fn reconcile_error(&self, policy: &str, reason: &'static str) {
        self.reconciles.inc();
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                policy: policy.to_string(),
                reason,
            })
            .inc();
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let errors = &mut series.entry(policy.to_string()).or_default().errors;
        if !errors.contains(&reason) {
            errors.push(reason);
        }
    }

    /// Sets every per-policy gauge of `policy` from its latest reconcile, and
    /// drops the series of reasons it no longer has.
    pub fn set_policy(&self, policy: &str, report: &PolicyReport) {
        for (state, count) in report.workloads.by_state() {
            self.workloads
                .get_or_create(&WorkloadLabels {
                    policy: policy.to_string(),
                    state,
                })
                .set(count);
        }
        let conditions: Vec<ConditionLabels> = report
            .conditions
            .iter()
            .map(|(type_, _, reason)| ConditionLabels {
                policy: policy.to_string(),
                r#type: type_.clone(),
                reason: reason.clone(),
            })
            .collect();
        let problems: Vec<ProblemLabels> = report
            .problems
            .iter()
            .map(|reason| ProblemLabels {
                policy: policy.to_string(),
                reason,
            })
            .collect();
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = series.entry(policy.to_string()).or_default();
        for stale in last.conditions.iter().filter(|c| !conditions.contains(c)) {
            self.conditions.remove(stale);
        }
        for stale in last.problems.iter().filter(|p| !problems.contains(p)) {
            self.problems.remove(stale);
        }
        for (labels, (_, status, _)) in conditions.iter().zip(&report.conditions) {
            self.conditions
                .get_or_create(labels)
                .set(i64::from(*status));
        }
        for labels in &problems {
            self.problems.get_or_create(labels).set(1);
        }
        let labels = PolicyLabels {
            policy: policy.to_string(),
        };
        match report.collector {
            Some(c) => {
                self.collector_replicas
                    .get_or_create(&labels)
                    .set(c.desired);
                self.collector_ready.get_or_create(&labels).set(c.ready);
            }
            None if last.collector => {
                self.collector_replicas.remove(&labels);
                self.collector_ready.remove(&labels);
            }
            None => {}
        }
        last.conditions = conditions;
        last.problems = problems;
        last.collector = report.collector.is_some();
    }

    /// Drops every per-policy series of a policy that no longer exists.
    pub fn forget_policy(&self, policy: &str) {
        for (state, _) in WorkloadStates::default().by_state() {
            self.workloads.remove(&WorkloadLabels {
                policy: policy.to_string(),
                state,
            });
        }
        let last = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy)
            .unwrap_or_default();
        for c in &last.conditions {
            self.conditions.remove(c);
        }
        for p in &last.problems {
            self.problems.remove(p);
        }
        for reason in last.errors {
            self.reconcile_errors.remove(&ErrorLabels {
                policy: policy.to_string(),
                reason,
            });
        }
        let labels = PolicyLabels {
            policy: policy.to_string(),
        };
        self.collector_replicas.remove(&labels);
        self.collector_ready.remove(&labels);
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

    /// The client-side write limits, shown beside the write rate.
    pub fn set_write_limits(&self, qps: u32, burst: u32) {
        self.qps_limit.set(i64::from(qps));
        self.burst_limit.set(i64::from(burst));
    }

    /// From now on `leader` shows whether `fence` lets this process write.
    pub fn track_leader(&self, fence: Fence) {
        *self
            .leader
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fence);
    }

    pub fn set_watched_workloads(&self, count: usize) {
        self.watched.set(i64::try_from(count).unwrap_or(i64::MAX));
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
mod tests;
