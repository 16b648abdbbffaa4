//! The collector's own metrics, as its Prometheus endpoint (`:8888/metrics`)
//! serves them, reduced to what says whether it holds the load: spans refused or
//! lost, and traces the tail sampler had to decide before their decision wait.
//!
//! Pure: the controller scrapes, this parses. The names are those of collector
//! 0.161.0 (`fixtures/metrics-0.161.0-overloaded.txt` is a real scrape of it);
//! counters carry no `_total` suffix there, and a `_total` one (older releases,
//! or a Prometheus exporter adding it) is read the same. A metric appears only
//! once something recorded it, so a missing one counts as 0, and lines that do
//! not parse are skipped: status is advisory, it must not fail on a format detail.

use crate::api::CollectorLosses;

/// What one scrape of a collector says, summed over every label set (receiver,
/// exporter, transport, ...). Counters count since the collector started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TailStats {
    /// Spans the receivers accepted (`otelcol_receiver_accepted_spans`).
    pub spans_accepted: u64,
    /// Spans the receivers refused to their senders, who may retry
    /// (`otelcol_receiver_refused_spans`); the memory limiter's refusals are among them.
    pub spans_refused: u64,
    /// Spans the memory limiter refused (`otelcol_processor_memory_limiter_refused_spans`).
    pub spans_refused_by_memory_limiter: u64,
    /// Spans the exporters failed to deliver after their retries
    /// (`otelcol_exporter_send_failed_spans`).
    pub spans_send_failed: u64,
    /// Spans dropped because an exporter's queue was full
    /// (`otelcol_exporter_enqueue_failed_spans`).
    pub spans_enqueue_failed: u64,
    /// Spans the exporters delivered (`otelcol_exporter_sent_spans`).
    pub spans_sent: u64,
    /// Traces the tail sampler saw begin (`otelcol_processor_tail_sampling_new_trace_id_received`).
    pub traces_received: u64,
    /// Traces it kept (`otelcol_processor_tail_sampling_global_count_traces_sampled{sampled="true"}`).
    pub traces_sampled: u64,
    /// Traces it did not keep (the same metric, `sampled="false"`).
    pub traces_not_sampled: u64,
    /// Traces evicted before their decision wait because `num_traces` was full
    /// (`otelcol_processor_tail_sampling_sampling_trace_dropped_too_early`): the
    /// sign that `expectedTracesPerSecond` is too low.
    pub traces_dropped_too_early: u64,
    /// Traces dropped for their size (`otelcol_processor_tail_sampling_traces_dropped_too_large`).
    pub traces_dropped_too_large: u64,
    /// Traces waiting for a decision now (`otelcol_processor_tail_sampling_sampling_traces_on_memory`).
    pub traces_on_memory: u64,
    /// Spans that arrived after their trace was decided and were kept through
    /// the decision cache (`otelcol_processor_tail_sampling_early_releases_from_cache_decision{sampled="true"}`).
    pub late_spans_kept: u64,
    /// The same, for traces that were not kept (`sampled="false"`).
    pub late_spans_dropped: u64,
    /// Tail-sampling policies that failed to evaluate
    /// (`otelcol_processor_tail_sampling_sampling_policy_evaluation_error`).
    pub policy_evaluation_errors: u64,
    /// CPU seconds the collector used (`otelcol_process_cpu_seconds`).
    pub cpu_seconds: f64,
    /// Its resident memory in bytes (`otelcol_process_memory_rss`).
    pub memory_rss_bytes: u64,
}

impl TailStats {
    /// Spans lost in the collector or refused to the SDKs: what status should
    /// call out when it is not 0.
    pub fn spans_lost(&self) -> u64 {
        self.spans_refused
            .saturating_add(self.spans_send_failed)
            .saturating_add(self.spans_enqueue_failed)
    }
}

/// One sample line: `name{label="value",...} value [timestamp]`.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The stats in a scrape of the collector's Prometheus endpoint.
pub fn parse(text: &str) -> TailStats {
    let mut stats = TailStats::default();
    for sample in text.lines().filter_map(sample) {
        let name = sample.name.strip_suffix("_total").unwrap_or(sample.name);
        let count = counter(sample.value);
        let sampled = sample.label("sampled");
        let slot = match name {
            "otelcol_receiver_accepted_spans" => &mut stats.spans_accepted,
            "otelcol_receiver_refused_spans" => &mut stats.spans_refused,
            "otelcol_processor_memory_limiter_refused_spans" => {
                &mut stats.spans_refused_by_memory_limiter
            }
            "otelcol_exporter_send_failed_spans" => &mut stats.spans_send_failed,
            "otelcol_exporter_enqueue_failed_spans" => &mut stats.spans_enqueue_failed,
            "otelcol_exporter_sent_spans" => &mut stats.spans_sent,
            "otelcol_processor_tail_sampling_new_trace_id_received" => &mut stats.traces_received,
            "otelcol_processor_tail_sampling_global_count_traces_sampled" => match sampled {
                Some("true") => &mut stats.traces_sampled,
                Some("false") => &mut stats.traces_not_sampled,
                _ => continue,
            },
            "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early" => {
                &mut stats.traces_dropped_too_early
            }
            "otelcol_processor_tail_sampling_traces_dropped_too_large" => {
                &mut stats.traces_dropped_too_large
            }
            "otelcol_processor_tail_sampling_sampling_traces_on_memory" => {
                &mut stats.traces_on_memory
            }
            "otelcol_processor_tail_sampling_early_releases_from_cache_decision" => match sampled {
                Some("true") => &mut stats.late_spans_kept,
                Some("false") => &mut stats.late_spans_dropped,
                _ => continue,
            },
            "otelcol_processor_tail_sampling_sampling_policy_evaluation_error" => {
                &mut stats.policy_evaluation_errors
            }
            "otelcol_process_memory_rss" => &mut stats.memory_rss_bytes,
            "otelcol_process_cpu_seconds" => {
                if sample.value.is_finite() && sample.value >= 0.0 {
                    stats.cpu_seconds += sample.value;
                }
                continue;
            }
            _ => continue,
        };
        *slot = slot.saturating_add(count);
    }
    stats
}

/// A count from a sample value; NaN, infinities and negatives count as 0.
fn counter(value: f64) -> u64 {
    if value.is_finite() && value >= 0.0 {
        // Saturates at u64::MAX; counters are integers, gauges like RSS floats.
        value.round() as u64
    } else {
        0
    }
}

/// Parses one line of the text format; `None` for comments, blank and bad lines.
fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = label_set(after)?;
        labels = parsed;
        rest = tail;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `key="value",...}` up to and including the closing brace; values may hold
/// `\\`, `\"` and `\n` escapes (and so a `}` or `,` of their own).
fn label_set(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(tail) = s.strip_prefix('}') {
            return Some((labels, tail));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

/// Sums the scrapes of a policy's collector pods into what status shows.
pub fn losses(scrapes: &[TailStats], unreachable: usize) -> CollectorLosses {
    let sum = |f: fn(&TailStats) -> u64| scrapes.iter().map(f).fold(0u64, u64::saturating_add);
    CollectorLosses {
        pods_read: i32::try_from(scrapes.len()).unwrap_or(i32::MAX),
        pods_unreachable: i32::try_from(unreachable).unwrap_or(i32::MAX),
        spans_refused: sum(|s| s.spans_refused),
        spans_export_failed: sum(|s| s.spans_send_failed.saturating_add(s.spans_enqueue_failed)),
        traces_decided_early: sum(|s| s.traces_dropped_too_early),
    }
}

/// What `Ready`'s message adds when the collectors lost something, with what
/// to change; nothing when they lost nothing.
pub fn loss_notes(losses: &CollectorLosses) -> Vec<String> {
    let mut notes = Vec::new();
    if losses.traces_decided_early > 0 {
        notes.push(format!(
            "the collector decided {} traces before their decision wait because it held as many as it is sized for, so their later spans (errors, slow ends) were judged without them: raise spec.sampling.tail.expectedTracesPerSecond",
            losses.traces_decided_early
        ));
    }
    if losses.spans_refused > 0 {
        notes.push(format!(
            "the collector refused {} spans to the SDKs (memory limit reached): raise spec.collector.resources.limits.memory",
            losses.spans_refused
        ));
    }
    if losses.spans_export_failed > 0 {
        notes.push(format!(
            "the collector could not deliver {} spans to spec.backends",
            losses.spans_export_failed
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVERLOADED: &str = include_str!("fixtures/metrics-0.161.0-overloaded.txt");

    #[test]
    fn a_real_scrape_of_an_overloaded_collector() {
        assert_eq!(
            parse(OVERLOADED),
            TailStats {
                spans_accepted: 261_000,
                spans_refused: 27_000,
                spans_refused_by_memory_limiter: 27_000,
                spans_send_failed: 8443,
                spans_enqueue_failed: 701,
                spans_sent: 0,
                traces_received: 174_000,
                traces_sampled: 5469,
                traces_not_sampled: 8531,
                traces_dropped_too_early: 160_000,
                traces_dropped_too_large: 0,
                traces_on_memory: 0,
                late_spans_kept: 380,
                late_spans_dropped: 1620,
                policy_evaluation_errors: 0,
                cpu_seconds: 2.36,
                memory_rss_bytes: 66_170_880,
            }
        );
        assert_eq!(parse(OVERLOADED).spans_lost(), 27_000 + 8443 + 701);
    }

    #[test]
    fn nothing_recorded_yet_is_all_zero() {
        assert_eq!(parse(""), TailStats::default());
        assert_eq!(
            parse(
                "# HELP otelcol_receiver_refused_spans x\n# TYPE otelcol_receiver_refused_spans counter\n"
            ),
            TailStats::default()
        );
    }

    #[test]
    fn label_sets_are_summed_and_total_suffixes_read_the_same() {
        let text = "\
otelcol_receiver_refused_spans{receiver=\"otlp\",transport=\"http\"} 5
otelcol_receiver_refused_spans_total{receiver=\"otlp\",transport=\"grpc\"} 7 1700000000000
otelcol_processor_tail_sampling_traces_dropped_too_large 3
otelcol_exporter_send_failed_spans{exporter=\"otlp_grpc/a\"} 1e3
";
        let stats = parse(text);
        assert_eq!(stats.spans_refused, 12);
        assert_eq!(stats.traces_dropped_too_large, 3);
        assert_eq!(stats.spans_send_failed, 1000);
    }

    #[test]
    fn escaped_label_values_and_bad_lines() {
        let text = "\
otelcol_processor_tail_sampling_global_count_traces_sampled{policy=\"a \\\"}\\\", b\",sampled=\"true\"} 4
otelcol_processor_tail_sampling_global_count_traces_sampled{sampled=\"false\",decision=\"dropped\"} 2
otelcol_processor_tail_sampling_global_count_traces_sampled{decision=\"sampled\"} 99
otelcol_receiver_accepted_spans{receiver=\"otlp\" 10
otelcol_receiver_accepted_spans{receiver=\"otlp\"} not-a-number
otelcol_receiver_accepted_spans{receiver=\"otlp\"} NaN
otelcol_receiver_accepted_spans{receiver=\"otlp\"} 8
";
        let stats = parse(text);
        assert_eq!(stats.traces_sampled, 4);
        assert_eq!(stats.traces_not_sampled, 2);
        assert_eq!(stats.spans_accepted, 8);
    }

    #[test]
    fn losses_sum_the_pods_and_name_what_to_change() {
        let overloaded = parse(OVERLOADED);
        let quiet = TailStats::default();
        let losses = losses(&[overloaded.clone(), quiet.clone()], 1);
        assert_eq!(
            losses,
            CollectorLosses {
                pods_read: 2,
                pods_unreachable: 1,
                spans_refused: 27_000,
                spans_export_failed: 8443 + 701,
                traces_decided_early: 160_000,
            }
        );
        let notes = loss_notes(&losses);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].starts_with("the collector decided 160000 traces before their decision wait")
        );
        assert!(notes[0].ends_with("raise spec.sampling.tail.expectedTracesPerSecond"));
        assert!(notes[1].contains("refused 27000 spans"));
        assert!(notes[2].contains("could not deliver 9144 spans"));
    }

    #[test]
    fn a_collector_that_lost_nothing_adds_no_note() {
        let healthy = super::losses(&[TailStats::default()], 0);
        assert_eq!(healthy.pods_read, 1);
        assert!(loss_notes(&healthy).is_empty());
    }
}
