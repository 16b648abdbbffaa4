//! The two collector tiers as the operator generates them, run as real
//! collector processes (the binary `testbed/collector/build` makes, the
//! default image's release and components) on 127.0.0.x addresses standing in
//! for pods: 2 routers and 3 samplers. Only addresses are rewritten
//! (`support/tiers.rs`): where each collector listens, where the samplers
//! export to, and how the routers find the samplers.
//!
//! Every span of a trace is sent through a different router than the one
//! before it, from services in two namespaces (gateway in team-a, auth in
//! team-b).

mod support;
#[path = "support/tiers.rs"]
mod tiers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tracing_operator::api::TracingPolicySpec;
use tracing_operator::plan::collector::metrics::TailStats;
use tracing_operator::plan::sampling::{head_ratio, ordinary_ratio};

use support::collector::{LocalBind, local_config};
use support::jaeger::Jaeger;
use tiers::{Collector, Discovery, Kind, Received, Trace, TwoTiers};

/// Keep every trace, so that every span sent must come out of a sampler.
const KEEP_ALL: &str = r#"
sampling: {ratio: 1, tail: {keepErrors: true}}
collector: {replicas: 2, sampling: {replicas: 3}}
backends: [{name: sink, type: otlp, endpoint: "http://sink.observability.svc:4318", protocol: http}]
"#;

/// Where each sampler's spans went, and how whole the traces arrived.
struct Arrivals {
    /// Traces each sampler exported spans of.
    per_sampler: Vec<usize>,
    /// Traces with spans in more than one sampler.
    split: usize,
    /// Traces whose spans, over all samplers, are not exactly those sent.
    incomplete: usize,
    /// Spans exported, over all samplers (a span exported twice counts twice).
    spans: usize,
}

fn arrivals(traces: &[Trace], received: &[Received]) -> Arrivals {
    let by_sampler: Vec<BTreeMap<String, Vec<String>>> = received
        .iter()
        .map(|r| r.lock().map(|g| g.clone()).unwrap_or_default())
        .collect();
    let mut split = 0;
    let mut incomplete = 0;
    for trace in traces {
        let id = trace.hex_id();
        let parts: Vec<&Vec<String>> = by_sampler.iter().filter_map(|s| s.get(&id)).collect();
        if parts.len() > 1 {
            split += 1;
        }
        let got: Vec<&String> = parts.iter().flat_map(|p| p.iter()).collect();
        let sent: BTreeSet<String> = trace
            .spans
            .iter()
            .map(|s| format!("{:016x}", s.id))
            .collect();
        if got.len() != sent.len() || got.iter().any(|s| !sent.contains(*s)) {
            if incomplete < 5 {
                eprintln!("trace {id}: sent {sent:?}, the samplers exported {got:?}");
            }
            incomplete += 1;
        }
    }
    Arrivals {
        per_sampler: by_sampler.iter().map(BTreeMap::len).collect(),
        split,
        incomplete,
        spans: by_sampler
            .iter()
            .flat_map(|s| s.values())
            .map(Vec::len)
            .sum(),
    }
}

/// Waits (up to `timeout`) until the sinks hold `total` spans.
fn await_spans(received: &[Received], total: usize, timeout: Duration) -> usize {
    let count = || -> usize {
        received
            .iter()
            .map(|r| r.lock().map_or(0, |g| g.values().map(Vec::len).sum()))
            .sum()
    };
    let since = Instant::now();
    while count() < total && since.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(200));
    }
    count()
}

/// A sampler config that exports to a JSON sink of its own; the sink's spans.
fn sampler_to_sink(config_yaml: &str, ports: &tiers::Ports) -> anyhow::Result<(Value, Received)> {
    let mut c = tiers::bind(config_yaml, ports)?;
    let (port, received) = tiers::json_sink()?;
    tiers::to_sink(&mut c, port, true)?;
    Ok((c, received))
}

/// The routers' `dns` resolver becomes a `static` list of the samplers'
/// addresses (what the headless Service resolves to), and each sampler exports
/// to its own OTLP/HTTP sink, so what each sampler decided is seen separately:
/// every trace must come out of exactly one sampler, whole.
#[test]
fn every_span_of_a_trace_reaches_one_sampler_whichever_router_it_entered_by() -> anyhow::Result<()>
{
    const ROUTERS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
    const SAMPLERS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    const TRACES: usize = 300;
    let spec: TracingPolicySpec = serde_saphyr::from_str(KEEP_ALL)?;
    let (router, sampler) = tiers::plan_tiers(&spec)?;
    ensure!(router.deployment.spec.replicas == Some(2));
    ensure!(sampler.deployment.spec.replicas == Some(3));

    let otelcol = support::otelcol()?;
    let scratch = support::Scratch::new("collector-tiers")?;
    let mut two = TwoTiers::new(&otelcol, scratch.path(), &router, Discovery::Static)?;
    ensure!(
        router
            .config_yaml
            .contains("caas-sampler.tracing-operator.svc"),
        "the routers resolve the samplers' headless Service"
    );
    let mut received = Vec::new();
    for address in SAMPLERS {
        let ports = two.sampler_ports(address);
        let (mut c, got) = sampler_to_sink(&sampler.config_yaml, &ports)?;
        // Only to keep the test short; every other setting is the generated one.
        c["processors"]["tail_sampling"]["decision_wait"] = json!("2s");
        let i = two.start_sampler(&c, ports)?;
        two.announce(i)?;
        received.push(got);
    }
    two.start_routers(&ROUTERS)?;

    let traces = tiers::traces(TRACES, 0x5eed);
    let total: usize = traces.iter().map(|t| t.spans.len()).sum();
    tiers::send(&traces, &two.router_ports())?;
    let exported = await_spans(&received, total, Duration::from_secs(60));
    ensure!(
        exported == total,
        "the samplers exported {exported} of {total} spans\n{}",
        two.logs()
    );

    let a = arrivals(&traces, &received);
    eprintln!(
        "{TRACES} traces, {total} spans through {} routers: traces per sampler {:?}, split {}, incomplete {}",
        ROUTERS.len(),
        a.per_sampler,
        a.split,
        a.incomplete
    );
    ensure!(
        a.split == 0,
        "{} of {TRACES} traces reached more than one sampler",
        a.split
    );
    ensure!(
        a.incomplete == 0,
        "{} traces arrived with missing or extra spans",
        a.incomplete
    );
    // The ring spreads traces over every sampler.
    ensure!(
        a.per_sampler.iter().all(|&n| n > 0),
        "a sampler got no trace: {:?}",
        a.per_sampler
    );
    Ok(())
}

const SAMPLED: &str = r#"
sampling: {ratio: 0.1, tail: {keepErrors: true, slowerThan: 500ms}}
collector: {replicas: 2, sampling: {replicas: 3}}
backends: [{name: jaeger, type: jaeger, endpoint: "http://jaeger.observability.svc:4317"}]
"#;

/// Issue 14's proof: the policy `sampling: {ratio: 0.1, tail: {keepErrors:
/// true, slowerThan: 500ms}}` with 2 routers and 3 samplers, the samplers
/// exporting to a real Jaeger v2, 5,000 traces of 3–6 spans (5 % with an error
/// span, 5 % with a root span of 600–900 ms). In Jaeger: every kept trace is
/// complete, every error and every slow trace is kept, and the kept share of the
/// rest is the configured ratio within 3 binomial standard deviations.
///
/// Where the ratio applies: with `sampling.tail` the SDKs record every trace
/// (`parentbased_always_on`, no head ratio; docs/tracingpolicy.md, Sampling)
/// and `sampling.ratio` is the samplers' `rest`/`rootless` probabilistic
/// share. So this test sends every trace, as those SDKs would, and expects
/// `ratio` of the ordinary ones (checked against the planner:
/// `head_ratio` 1, `ordinary_ratio` 0.1).
///
/// The routers keep the generated `dns` resolver and its name for the headless
/// Service, resolved through a hosts file of their own (`Discovery::LiveDns`;
/// a `static` list where user namespaces are not available). Nothing else is
/// changed: the samplers decide after the generated `decision_wait` (10 s).
#[test]
fn samplers_keep_every_error_and_slow_trace_whole_and_the_ratio_of_the_rest() -> anyhow::Result<()>
{
    const ROUTERS: [&str; 2] = ["127.0.0.21", "127.0.0.22"];
    const SAMPLERS: [&str; 3] = ["127.0.0.24", "127.0.0.25", "127.0.0.26"];
    const TRACES: usize = 5_000;
    let spec: TracingPolicySpec = serde_saphyr::from_str(SAMPLED)?;
    ensure!(
        head_ratio(&spec, "gateway") == 1.0,
        "with tail rules the SDKs record every trace"
    );
    let ratio = ordinary_ratio(&spec);
    ensure!(
        ratio == 0.1,
        "the collector keeps 10 % of the rest: {ratio}"
    );
    let (router, sampler) = tiers::plan_tiers(&spec)?;
    ensure!(router.deployment.spec.replicas == Some(2));
    ensure!(sampler.deployment.spec.replicas == Some(3));

    let otelcol = support::otelcol()?;
    let scratch = support::Scratch::new("collector-tiers-sampled")?;
    let jaeger = Jaeger::start(scratch.path())?;
    let discovery = Discovery::best(scratch.path());
    let mut two = TwoTiers::new(&otelcol, scratch.path(), &router, discovery)?;
    for address in SAMPLERS {
        let p = two.sampler_ports(address);
        let bind = LocalBind {
            host: p.address,
            grpc: p.grpc,
            http: p.http,
            health: p.health,
            metrics: p.metrics,
        };
        let c: Value = serde_saphyr::from_str(&local_config(
            &sampler.config_yaml,
            &bind,
            jaeger.otlp_grpc,
        )?)?;
        ensure!(c["processors"]["tail_sampling"]["decision_wait"] == "10s");
        let i = two.start_sampler(&c, p)?;
        two.announce(i)?;
    }
    two.start_routers(&ROUTERS)?;

    let traces = tiers::traces(TRACES, 0x0dd5_eed5);
    let total: usize = traces.iter().map(|t| t.spans.len()).sum();
    let start_us = traces
        .iter()
        .flat_map(|t| &t.spans)
        .map(|s| s.start_ns / 1_000)
        .min()
        .context("no spans")?
        - 1_000_000;
    let sending = Instant::now();
    tiers::send(&traces, &two.router_ports())?;
    let sent_in = sending.elapsed();

    // Done when every trace is decided, the samplers have stopped exporting
    // and Jaeger holds every span they exported.
    let since = Instant::now();
    let mut exported_before = None;
    let (kept, samplers) = loop {
        let stats: Vec<TailStats> = two
            .samplers
            .iter()
            .map(Collector::stats)
            .collect::<anyhow::Result<_>>()?;
        let decided: u64 = stats
            .iter()
            .map(|s| s.traces_sampled + s.traces_not_sampled)
            .sum();
        let exported: u64 = stats.iter().map(|s| s.spans_sent).sum();
        if decided >= TRACES as u64 && exported_before == Some(exported) {
            let kept = jaeger.traces("gateway", start_us)?;
            let stored: usize = kept.iter().map(|t| t.spans.len()).sum();
            if stored as u64 == exported {
                break (kept, stats);
            }
        }
        exported_before = Some(exported);
        ensure!(
            since.elapsed() < Duration::from_secs(90),
            "after 90 s the samplers decided {decided} of {TRACES} traces and exported {exported} spans\n{}",
            two.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    };

    let by_id: BTreeMap<u128, &Trace> = traces.iter().map(|t| (t.id, t)).collect();
    let mut kept_by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut complete = 0;
    let mut unknown = 0;
    for jt in &kept {
        let Some(trace) = by_id.get(&u128::from_str_radix(&jt.trace_id, 16)?) else {
            unknown += 1;
            continue;
        };
        *kept_by_kind.entry(trace.kind).or_default() += 1;
        let got = jt
            .spans
            .iter()
            .map(|s| u64::from_str_radix(&s.span_id, 16))
            .collect::<Result<Vec<u64>, _>>()?;
        let sent: BTreeSet<u64> = trace.spans.iter().map(|s| s.id).collect();
        if got.len() == sent.len() && got.iter().all(|id| sent.contains(id)) {
            complete += 1;
        } else if kept_by_kind.values().sum::<usize>() - complete <= 5 {
            eprintln!(
                "trace {}: sent {sent:x?}, Jaeger holds {got:x?}",
                jt.trace_id
            );
        }
    }
    let sent_of = |kind| traces.iter().filter(|t| t.kind == kind).count();
    let kept_of = |kind| kept_by_kind.get(&kind).copied().unwrap_or(0);
    let (errors, slow, plain) = (
        sent_of(Kind::Error),
        sent_of(Kind::Slow),
        sent_of(Kind::Plain),
    );
    let kept_plain = kept_of(Kind::Plain);
    let n = plain as f64;
    let sd = (n * ratio * (1.0 - ratio)).sqrt();
    let deviation = (kept_plain as f64 - n * ratio) / sd;
    let lost: u64 = samplers.iter().map(TailStats::spans_lost).sum();
    eprintln!(
        "{TRACES} traces, {total} spans sent in {sent_in:.1?} through {} routers ({discovery:?}) to {} samplers; \
         decisions per sampler {:?}; kept {} traces, complete {complete}; errors kept {}/{errors}, slow kept {}/{slow}; \
         rest kept {kept_plain}/{plain} = {:.4} vs ratio {ratio} (expected {:.1} ± {sd:.1} sd, {deviation:+.2} sd); spans lost {lost}",
        ROUTERS.len(),
        SAMPLERS.len(),
        samplers
            .iter()
            .map(|s| s.traces_sampled + s.traces_not_sampled)
            .collect::<Vec<_>>(),
        kept.len(),
        kept_of(Kind::Error),
        kept_of(Kind::Slow),
        kept_plain as f64 / n,
        n * ratio,
    );
    ensure!(unknown == 0, "Jaeger holds {unknown} traces never sent");
    ensure!(
        complete == kept.len(),
        "{} of {} kept traces are incomplete",
        kept.len() - complete,
        kept.len()
    );
    ensure!(
        kept_of(Kind::Error) == errors,
        "kept {} of {errors} error traces",
        kept_of(Kind::Error)
    );
    ensure!(
        kept_of(Kind::Slow) == slow,
        "kept {} of {slow} slow traces",
        kept_of(Kind::Slow)
    );
    ensure!(
        deviation.abs() <= 3.0,
        "kept {kept_plain} of {plain} ordinary traces, {deviation:+.2} sd from the ratio {ratio}"
    );
    ensure!(
        samplers.iter().all(|s| s.traces_sampled > 0),
        "a sampler kept no trace"
    );
    Ok(())
}

/// Issue 14's scaling figure: while 5,000 traces are sent over 20 s (each
/// trace's spans 200 ms apart, so a trace is in flight for up to a second), a
/// fourth sampler joins, as one does when `collector.sampling.replicas` goes
/// from 3 to 4. Each sampler exports to a sink of its own, and the policy keeps
/// every trace, so each sink shows exactly what reached that sampler.
///
/// The routers learn of the new sampler live, the way they do in a cluster: the
/// generated `dns` resolver re-resolves the headless Service's name every 5 s,
/// here through a hosts file that gains the new sampler's address
/// (`Discovery::LiveDns`). Where user namespaces are not available the routers
/// use a `static` list and reload it (SIGHUP) one after the other instead.
/// A trace whose ID moved to the new sampler while its spans were being sent,
/// or while one router had the new ring and the other not yet, arrives split.
/// The share is a figure (printed); the test asserts only that no span is lost,
/// that the new sampler really took traces over, and that the split share is
/// far from "everything split".
#[test]
fn a_sampler_joining_mid_run_is_routed_to_live_and_splits_few_traces() -> anyhow::Result<()> {
    const ROUTERS: [&str; 2] = ["127.0.0.31", "127.0.0.32"];
    const SAMPLERS: [&str; 4] = ["127.0.0.34", "127.0.0.35", "127.0.0.36", "127.0.0.37"];
    const TRACES: usize = 5_000;
    const RUN: Duration = Duration::from_secs(20);
    const TICK: Duration = Duration::from_millis(100);
    const SPAN_GAP: Duration = Duration::from_millis(200);
    const JOIN_AT: Duration = Duration::from_secs(6);
    let spec: TracingPolicySpec = serde_saphyr::from_str(KEEP_ALL)?;
    let (router, sampler) = tiers::plan_tiers(&spec)?;

    let otelcol = support::otelcol()?;
    let scratch = support::Scratch::new("collector-tiers-scale")?;
    let discovery = Discovery::best(scratch.path());
    let mut two = TwoTiers::new(&otelcol, scratch.path(), &router, discovery)?;
    let mut received = Vec::new();
    for (i, address) in SAMPLERS.iter().enumerate() {
        let ports = two.sampler_ports(address);
        let (c, got) = sampler_to_sink(&sampler.config_yaml, &ports)?;
        // The fourth is running, not yet in the Service (a pod not yet ready).
        two.start_sampler(&c, ports)?;
        if i < 3 {
            two.announce(i)?;
        }
        received.push(got);
    }
    two.start_routers(&ROUTERS)?;
    let routers = two.router_ports();

    // Which spans go out at each tick, through which router.
    let traces = tiers::traces(TRACES, 0x5ca1_e5ee);
    let total: usize = traces.iter().map(|t| t.spans.len()).sum();
    let ticks = RUN.as_millis() / TICK.as_millis();
    let starts_over = RUN - SPAN_GAP * 6;
    let mut schedule = vec![vec![Vec::new(); ROUTERS.len()]; ticks as usize];
    for (t, trace) in traces.iter().enumerate() {
        let start = starts_over.as_millis() * t as u128 / TRACES as u128;
        for (s, span) in trace.spans.iter().enumerate() {
            let at = (start + SPAN_GAP.as_millis() * s as u128) / TICK.as_millis();
            schedule[at as usize][tiers::router_of(t, s, ROUTERS.len())].push((trace, span));
        }
    }

    let began = Instant::now();
    let mut joined = None;
    let mut seen_four: Vec<Option<Duration>> = vec![None; ROUTERS.len()];
    for (k, tick) in schedule.into_iter().enumerate() {
        let due = TICK * k as u32;
        if let Some(wait) = due.checked_sub(began.elapsed()) {
            std::thread::sleep(wait);
        }
        if joined.is_none() && due >= JOIN_AT {
            two.announce(3)?;
            joined = Some(Instant::now());
        }
        for (r, spans) in tick.into_iter().enumerate() {
            if !spans.is_empty() {
                tiers::post(routers[r].address, routers[r].http, &tiers::body(spans))?;
            }
        }
        if let Some(joined) = joined
            && k % 5 == 0
            && seen_four.iter().any(Option::is_none)
        {
            for (seen, size) in seen_four.iter_mut().zip(two.ring_sizes()) {
                if seen.is_none() && size == Some(4) {
                    *seen = Some(joined.elapsed());
                }
            }
        }
    }
    let sent_in = began.elapsed();
    let rings = two.ring_sizes();

    let exported = await_spans(&received, total, Duration::from_secs(60));
    let a = arrivals(&traces, &received);
    let split_share = a.split as f64 / TRACES as f64;
    eprintln!(
        "{TRACES} traces, {total} spans sent over {sent_in:.1?} through {} routers ({discovery:?}); a 4th sampler joined at {JOIN_AT:?}, \
         the routers routed to 4 samplers {seen_four:.1?} after it (rings now {rings:?}); traces per sampler {:?}; \
         split {} = {:.2} %; spans exported {exported} of {total}, traces incomplete {}",
        ROUTERS.len(),
        a.per_sampler,
        a.split,
        split_share * 100.0,
        a.incomplete,
    );
    ensure!(
        exported == total && a.spans == total && a.incomplete == 0,
        "spans were lost or duplicated on the way\n{}",
        two.logs()
    );
    ensure!(
        rings.iter().all(|&n| n == Some(4)),
        "the routers' rings hold {rings:?} samplers, not 4\n{}",
        two.logs()
    );
    ensure!(
        a.per_sampler[3] > 0,
        "the new sampler got no trace: {:?}",
        a.per_sampler
    );
    ensure!(
        split_share < 0.5,
        "{} of {TRACES} traces arrived split",
        a.split
    );
    Ok(())
}
