//! Where each sampling decision is made, with which share, and how the collector
//! is sized to make it.
//!
//! # Without tail rules (or with the collector off): head sampling only
//! Each SDK decides when a trace starts: `sampling.ratio`, or the service's own
//! `sampling.services[]` ratio, as `parentbased_traceidratio` (`traceidratio`
//! with `parentBased: false`). A called service follows its caller, so a
//! per-service ratio acts only on the traces that service starts.
//!
//! # With tail rules: the collector decides
//! A head sampler decides before anything is known about errors, latency or the
//! services a trace touches, so with `sampling.tail` the SDKs record every trace
//! (`parentbased_always_on`) unless `sampling.head.ratio` asks for less, and the
//! collector's `tail_sampling` keeps a trace when any rule keeps it:
//! - `keepErrors`: every trace with an ERROR span;
//! - `slowerThan`: every trace longer than that;
//! - each `sampling.services[]` entry: its ratio of the traces **rooted** in that
//!   service (the root span's resource `service.name`), never of every trace the
//!   service takes part in;
//! - the traces rooted anywhere else: the ordinary ratio, `sampling.ratio`
//!   (× the deprecated `tail.ratio` when set, which is what such a policy kept
//!   before, so a policy's storage cost does not jump);
//! - a trace without a root span when it is decided (the root is late because the
//!   trace outlasted the decision wait, or it lives outside the collector, e.g. a
//!   caller that sent a `traceparent` from outside): it cannot be attributed to a
//!   service, so it is kept with the ordinary ratio. Its later spans, the root
//!   included, follow that decision through the decision cache.
//!
//! With a head ratio `h` below 1, the collector sees only that share, so the
//! tail shares are divided by it (`ratio / h`, at most 1) and the end-to-end
//! shares stay what the policy says as long as they are not above `h`. A listed
//! service records at least its own ratio (`max(h, ratio)`), so its promise
//! holds; errors and slow traces outside the head sample are lost, and the
//! policy's Ready condition says how many.
//!
//! # Sizing
//! From one rate, `tail.expectedTracesPerSecond` (R, default 1000):
//! - `decision_wait` (D): 10 s, or twice `slowerThan` when that is longer, at most
//!   300 s. Every SDK's batch processor exports every 5 s
//!   (`OTEL_BSP_SCHEDULE_DELAY`), so the spans of one trace reach the collector
//!   up to 5 s apart from different services, plus the trace's own duration;
//! - `num_traces`: 2 × R × D, the traces held while their spans arrive, twice the
//!   steady state for bursts. Beyond it the oldest are decided early
//!   (`otelcol_processor_tail_sampling_sampling_trace_dropped_too_early`);
//! - `expected_new_traces_per_sec`: R;
//! - `decision_cache`: R × 120 s decisions of each kind, so spans that arrive up
//!   to two minutes after their trace was decided (queue consumers, retries)
//!   follow the decision instead of forming a fragment (about 130 bytes each);
//! - `memory_limiter`: 80 % of the collector container's memory limit, with a
//!   spike allowance of 25 % (refusing data from 55 %), from
//!   `collector.resources.limits.memory` (the samplers':
//!   `collector.sampling.resources`, else that), else the default limit of 512Mi.
//!
//! Each sampler of a two-tier collector is sized for the whole rate: its
//! configuration then does not change with their number (scaling them rolls
//! nothing), one sampler left can still hold every trace, and the caps cost
//! nothing until used; `memory_limiter` bounds what they actually hold.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::api::{HeadSampling, TracingPolicySpec};

/// Shortest tail-sampling `decision_wait`; longer when `slowerThan` asks for it.
pub const MIN_DECISION_WAIT: Duration = Duration::from_secs(10);
/// Longest `decision_wait`, to bound the memory of traces waiting for a decision.
pub const MAX_DECISION_WAIT: Duration = Duration::from_secs(300);
/// How long, at the expected rate, the collector remembers its decisions.
pub const DECISION_MEMORY: Duration = Duration::from_secs(120);
/// The collector's memory limit when `collector.resources.limits.memory` is unset.
pub const DEFAULT_COLLECTOR_MEMORY: &str = "512Mi";
/// `memory_limiter.limit_mib` as a share of the memory limit, in percent.
pub const MEMORY_LIMIT_PERCENT: u64 = 80;
/// `memory_limiter.spike_limit_mib` as a share of the memory limit, in percent.
pub const MEMORY_SPIKE_PERCENT: u64 = 25;

/// The sampler an SDK is configured with (`OTEL_TRACES_SAMPLER`, `_ARG`).
#[derive(Clone, Debug, PartialEq)]
pub struct HeadSampler {
    pub sampler: &'static str,
    /// `OTEL_TRACES_SAMPLER_ARG`; `None` for the `always_on` samplers.
    pub ratio: Option<f64>,
}

/// The collector takes the sampling decisions: tail rules are set and the
/// collector runs (the CRD admits tail rules only with the collector on).
pub fn tail_decides(spec: &TracingPolicySpec) -> bool {
    spec.sampling.tail.is_some() && spec.collector.enabled
}

/// The share of ordinary traces kept end to end: `sampling.ratio`, times the
/// deprecated `tail.ratio` when the collector decides and it is set.
pub fn ordinary_ratio(spec: &TracingPolicySpec) -> f64 {
    let ratio = clamp(spec.sampling.ratio);
    match (&spec.sampling.tail, tail_decides(spec)) {
        (Some(tail), true) => ratio * clamp(tail.ratio.unwrap_or(1.0)),
        _ => ratio,
    }
}

/// The head ratio of services not listed in `sampling.services` when the
/// collector decides (`sampling.head.ratio`, default 1).
pub fn default_head_ratio(spec: &TracingPolicySpec) -> f64 {
    clamp(
        spec.sampling
            .head
            .as_ref()
            .map_or(1.0, |h: &HeadSampling| h.ratio),
    )
}

/// The share of the traces `service` starts that its SDK records.
pub fn head_ratio(spec: &TracingPolicySpec, service: &str) -> f64 {
    let own = spec
        .sampling
        .services
        .iter()
        .find(|s| s.name == service)
        .map(|s| clamp(s.ratio));
    if tail_decides(spec) {
        let head = default_head_ratio(spec);
        own.map_or(head, |r| r.max(head))
    } else {
        own.unwrap_or_else(|| clamp(spec.sampling.ratio))
    }
}

/// The sampler of `service`'s SDK. Without tail rules the ratio is always
/// written, as it always was; with them, a head that records everything is
/// `parentbased_always_on` (or `always_on`) with no argument.
pub fn head_sampler(spec: &TracingPolicySpec, service: &str) -> HeadSampler {
    let ratio = head_ratio(spec, service);
    let parent_based = spec.sampling.parent_based;
    if tail_decides(spec) && ratio >= 1.0 {
        HeadSampler {
            sampler: if parent_based {
                "parentbased_always_on"
            } else {
                "always_on"
            },
            ratio: None,
        }
    } else {
        HeadSampler {
            sampler: if parent_based {
                "parentbased_traceidratio"
            } else {
                "traceidratio"
            },
            ratio: Some(ratio),
        }
    }
}

/// Which traces a tail rule looks at.
#[derive(Clone, Debug, PartialEq)]
pub enum TailMatch {
    /// A span has status ERROR.
    Errors,
    /// The trace lasts longer than this.
    SlowerThan(Duration),
    /// A root span of the trace has one of these `service.name`s.
    RootedIn(Vec<String>),
    /// A root span of the trace has none of these `service.name`s (every root, when empty).
    RootedOutside(Vec<String>),
    /// No span of the trace is a root span.
    Rootless,
    /// Every trace.
    Any,
}

/// One tail-sampling rule: the traces it matches and the share of them it keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct TailRule {
    /// The policy's name in the collector config and in its metrics.
    pub name: String,
    pub matches: TailMatch,
    /// 0 to 1; rules that would keep nothing are left out.
    pub share: f64,
}

/// Everything the collector's `tail_sampling` processor is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct TailPlan {
    pub decision_wait: Duration,
    pub num_traces: u64,
    pub expected_new_traces_per_sec: u64,
    pub sampled_cache_size: u64,
    pub non_sampled_cache_size: u64,
    pub rules: Vec<TailRule>,
}

/// Why a tail plan cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("spec.sampling.tail.slowerThan: {0}")]
    InvalidDuration(String),
}

/// The tail-sampling plan of `spec`, `None` when the collector does not decide.
pub fn tail_plan(spec: &TracingPolicySpec) -> Result<Option<TailPlan>, SamplingError> {
    let Some(tail) = spec.sampling.tail.as_ref().filter(|_| tail_decides(spec)) else {
        return Ok(None);
    };
    let mut rules = Vec::new();
    if tail.keep_errors {
        rules.push(rule("keep-errors", TailMatch::Errors, 1.0));
    }
    let mut decision_wait = MIN_DECISION_WAIT;
    if let Some(slower) = &tail.slower_than {
        let threshold = slower.to_std().map_err(SamplingError::InvalidDuration)?;
        // A slow trace's root span arrives about `threshold` after its first spans.
        decision_wait = decision_wait.max(threshold.saturating_mul(2));
        rules.push(rule("slower-than", TailMatch::SlowerThan(threshold), 1.0));
    }
    let decision_wait = decision_wait.min(MAX_DECISION_WAIT);

    let head = default_head_ratio(spec);
    // What reaches the collector is the head's share; keep ratio / head of it.
    let after_head = |ratio: f64, head: f64| {
        if head <= 0.0 {
            0.0
        } else {
            (ratio / head).min(1.0)
        }
    };
    let mut listed = BTreeSet::new();
    for s in &spec.sampling.services {
        if !listed.insert(s.name.clone()) {
            continue;
        }
        let ratio = clamp(s.ratio);
        rules.push(rule(
            &format!("rooted-in/{}", s.name),
            TailMatch::RootedIn(vec![s.name.clone()]),
            after_head(ratio, ratio.max(head)),
        ));
    }
    let rest = after_head(ordinary_ratio(spec), head);
    rules.push(rule(
        "rest",
        TailMatch::RootedOutside(listed.into_iter().collect()),
        rest,
    ));
    rules.push(rule("rootless", TailMatch::Rootless, rest));
    rules.retain(|r| r.share > 0.0);
    if rules.is_empty() {
        // The processor needs a policy; this one says what happens: nothing is kept.
        rules.push(rule("keep-nothing", TailMatch::Any, 0.0));
    }

    let rate = u64::from(tail.expected_traces_per_second.max(1));
    let wait_secs = decision_wait.as_secs().max(1);
    let cache = rate.saturating_mul(DECISION_MEMORY.as_secs());
    Ok(Some(TailPlan {
        decision_wait,
        num_traces: rate.saturating_mul(wait_secs).saturating_mul(2),
        expected_new_traces_per_sec: rate,
        sampled_cache_size: cache,
        non_sampled_cache_size: cache,
        rules,
    }))
}

fn rule(name: &str, matches: TailMatch, share: f64) -> TailRule {
    TailRule {
        name: name.to_string(),
        matches,
        // Rounded so that 0.02 / 0.1 is 0.2, and the rendered config stable.
        share: (clamp(share) * 1e9).round() / 1e9,
    }
}

fn clamp(ratio: f64) -> f64 {
    if ratio.is_nan() {
        1.0
    } else {
        ratio.clamp(0.0, 1.0)
    }
}

/// `memory_limiter`'s `limit_mib` and `spike_limit_mib`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    pub limit_mib: u64,
    pub spike_limit_mib: u64,
}

/// The memory limiter of the collector of `spec`, from the container's memory
/// limit (`collector.resources.limits.memory`, else [`DEFAULT_COLLECTOR_MEMORY`]).
/// A quantity that does not parse counts as unset: the API server only stores
/// valid quantities.
pub fn memory_limits(spec: &TracingPolicySpec) -> MemoryLimits {
    memory_limits_for(spec.collector.resources.as_ref())
}

/// The memory limiter of a collector container with the user's `resources`
/// (the samplers' own, with tail sampling); see [`memory_limits`].
pub fn memory_limits_for(resources: Option<&ResourceRequirements>) -> MemoryLimits {
    let bytes = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| quantity_bytes(&q.0))
        .or_else(|| quantity_bytes(DEFAULT_COLLECTOR_MEMORY))
        .unwrap_or(512 << 20);
    let mib = bytes >> 20;
    MemoryLimits {
        limit_mib: (mib * MEMORY_LIMIT_PERCENT / 100).max(2),
        spike_limit_mib: (mib * MEMORY_SPIKE_PERCENT / 100).max(1),
    }
}

/// The bytes of a Kubernetes quantity (`512Mi`, `2Gi`, `1G`, `1e9`, `0.5Gi`),
/// rounded down; `None` for anything that is not a non-negative quantity.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = number * factor;
    (bytes.is_finite() && bytes >= 0.0).then(|| bytes.floor().min(u64::MAX as f64) as u64)
}

/// `12.5 %`, `90 %`, `0.1 %`: a share as the status messages write it.
fn percent(share: f64) -> String {
    format!("{} %", (share * 1000.0).round() / 10.0)
}

/// `12.5%`: the same, compact, for the SAMPLING column.
fn pct(share: f64) -> String {
    format!("{}%", (share * 1000.0).round() / 10.0)
}

/// What `kubectl get tp` shows under SAMPLING: the head ratio (`10%`) without
/// tail rules; with them what the collector keeps
/// (`errors,>500ms,auth 100%,rest 10%`), prefixed by `head 50%: ` when the
/// SDKs record less than every trace.
pub fn summary(spec: &TracingPolicySpec) -> String {
    let Some(tail) = spec.sampling.tail.as_ref().filter(|_| tail_decides(spec)) else {
        return pct(clamp(spec.sampling.ratio));
    };
    let mut parts = Vec::new();
    if tail.keep_errors {
        parts.push("errors".to_string());
    }
    if let Some(d) = &tail.slower_than {
        parts.push(format!(">{}", d.0));
    }
    let services = &spec.sampling.services;
    if services.len() <= 3 {
        parts.extend(
            services
                .iter()
                .map(|s| format!("{} {}", s.name, pct(clamp(s.ratio)))),
        );
    } else {
        parts.push(format!("{} services", services.len()));
    }
    parts.push(format!("rest {}", pct(ordinary_ratio(spec))));
    let head = default_head_ratio(spec);
    let prefix = if head < 1.0 {
        format!("head {}: ", pct(head))
    } else {
        String::new()
    };
    format!("{prefix}{}", parts.join(","))
}

/// A field the policy should stop using, for a `Warning` Event with this reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deprecation {
    pub reason: &'static str,
    pub field: &'static str,
    pub message: String,
}

/// The deprecated sampling fields `spec` uses, with what to write instead.
pub fn deprecations(spec: &TracingPolicySpec) -> Vec<Deprecation> {
    let Some(tail_ratio) = spec.sampling.tail.as_ref().and_then(|t| t.ratio) else {
        return Vec::new();
    };
    let ratio = clamp(spec.sampling.ratio);
    let effective = ratio * clamp(tail_ratio);
    vec![Deprecation {
        reason: "DeprecatedField",
        field: "spec.sampling.tail.ratio",
        message: format!(
            "spec.sampling.tail.ratio is deprecated: the collector keeps sampling.ratio × tail.ratio = {} × {} = {} of ordinary traces; write sampling.ratio: {} and remove tail.ratio",
            fmt_ratio(ratio),
            fmt_ratio(clamp(tail_ratio)),
            percent(effective),
            fmt_ratio(effective),
        ),
    }]
}

/// What the Ready condition's message adds about sampling: deprecated fields,
/// what a head ratio below 1 loses, and a share the head makes impossible.
pub fn ready_notes(spec: &TracingPolicySpec) -> Vec<String> {
    let mut notes: Vec<String> = deprecations(spec).into_iter().map(|d| d.message).collect();
    let Some(tail) = spec.sampling.tail.as_ref().filter(|_| tail_decides(spec)) else {
        return notes;
    };
    let head = default_head_ratio(spec);
    if head < 1.0 {
        let what = match (tail.keep_errors, tail.slower_than.is_some()) {
            (true, true) => Some("errors and slow traces"),
            (true, false) => Some("errors"),
            (false, true) => Some("slow traces"),
            (false, false) => None,
        };
        if let Some(what) = what {
            notes.push(format!(
                "{what} outside the head sample are lost: {} (sampling.head.ratio {})",
                percent(1.0 - head),
                fmt_ratio(head)
            ));
        }
        let ordinary = ordinary_ratio(spec);
        if ordinary > head {
            notes.push(format!(
                "sampling.ratio {} is above sampling.head.ratio {}: only {} of ordinary traces reach the collector",
                fmt_ratio(ordinary),
                fmt_ratio(head),
                percent(head)
            ));
        }
    }
    notes
}

fn fmt_ratio(ratio: f64) -> String {
    // Rounded so that 0.1 × 0.1 reads 0.01, not 0.010000000000000002.
    super::env::format_ratio((ratio * 1e9).round() / 1e9)
}

#[cfg(test)]
mod tests;
