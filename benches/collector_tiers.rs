//! What the two collector tiers cost against one collector, on the same load:
//! spans per second through 2 routers + 3 samplers, and through one collector
//! running the same policy planned as a single tier (`tail_sampling` in the one
//! process: what a tail-sampling policy ran before the tiers), with each
//! process's CPU and RSS (`VmRSS`, peak `VmHWM`, from `/proc/<pid>/status`).
//!
//! The policy is the proof's (`tests/collector_tiers.rs`): `sampling: {ratio:
//! 0.1, tail: {keepErrors: true, slowerThan: 500ms}}`, `collector: {replicas:
//! 2, sampling: {replicas: 3}}`, one OTLP/HTTP backend. The configs are the
//! generated ones with their addresses rewritten (the routers get a `static`
//! list of the samplers) and one change: `decision_wait` 1 s instead of the
//! generated 10 s, in both setups, so that the time until the last trace is
//! decided measures the work and not the wait. The backend is a local receiver
//! that discards what it gets.
//!
//! The load: `--traces` traces (40,000; 3–6 spans, 5 % errors, 5 % slow, spans
//! alternating between gateway/team-a and auth/team-b), pre-encoded as OTLP/HTTP
//! JSON, 50 traces a request, each span to the router `tiers::router_of` names
//! (the single collector gets the same requests). `--senders` threads (4) post
//! them as fast as the collectors answer, retrying refusals. Throughput is the
//! spans sent divided by the time from the first request until the deciding
//! collectors have decided every trace. Nothing is asserted: these are figures.
//!
//! Run: `cargo bench --bench collector_tiers` (the collector comes from
//! `testbed/collector/build`; no cluster needed); options after `--`:
//! `--traces N --senders N --rounds N`. The sender's own cost does not depend on
//! how the benchmark is built, so `--profile dev` saves the release build.
//! Under `cargo test --all-targets` (no `--bench` argument) it returns at once.

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/support/tiers.rs"]
mod tiers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use serde_json::{Value, json};
use tracing_operator::api::TracingPolicySpec;
use tracing_operator::plan::collector::Tier;

use tiers::{Collector, Discovery, Ports, TwoTiers};

const SPEC: &str = r#"
sampling: {ratio: 0.1, tail: {keepErrors: true, slowerThan: 500ms, expectedTracesPerSecond: 20000}}
collector: {replicas: 2, sampling: {replicas: 3}}
backends: [{name: sink, type: otlp, endpoint: "http://sink.observability.svc:4318", protocol: http}]
"#;
const SINGLE: &str = "127.0.0.61";
const ROUTERS: [&str; 2] = ["127.0.0.62", "127.0.0.63"];
const SAMPLERS: [&str; 3] = ["127.0.0.64", "127.0.0.65", "127.0.0.66"];
const DECISION_WAIT: &str = "1s";

#[derive(Debug)]
struct Options {
    traces: usize,
    senders: usize,
    rounds: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            traces: 100_000,
            senders: 4,
            rounds: 1,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut number = |name: &str| support::positive_option(name, it.next());
            match arg.as_str() {
                "--bench" => {}
                "--traces" => o.traces = number(arg)?,
                "--senders" => o.senders = number(arg)?,
                "--rounds" => o.rounds = number(arg)?,
                other => {
                    bail!("unknown argument {other:?}; known: --traces N --senders N --rounds N")
                }
            }
        }
        Ok(o)
    }
}

fn main() {
    let Some(options) = support::bench_options(
        "collector_tiers",
        "(runs 6 collectors under load for a minute or more); see the doc comment of benches/collector_tiers.rs",
        Options::parse,
    ) else {
        return;
    };
    if let Err(e) = run(&options) {
        eprintln!("collector_tiers: {e:#}");
        std::process::exit(1);
    }
}

/// One setup under the load.
struct Measured {
    /// From the first request until every request was answered.
    ingest: Duration,
    /// From the first request until every trace was decided.
    decided: Duration,
    /// Requests retried (refused by a memory limiter, or no connection).
    retries: u32,
    /// Per process: name, CPU seconds over the run, VmRSS and VmHWM (KiB) at its end.
    processes: Vec<(String, f64, u64, u64)>,
    /// Spans refused to the senders (who retried them), spans lost in the
    /// collectors (failed or dropped exports), traces decided before their wait.
    refused: u64,
    lost: u64,
    dropped_early: u64,
}

fn run(o: &Options) -> Result<()> {
    let spec: TracingPolicySpec = serde_saphyr::from_str(SPEC)?;
    let otelcol = support::otelcol()?;
    let traces = tiers::traces(o.traces, 0xbe_9c4);
    let spans: usize = traces.iter().map(|t| t.spans.len()).sum();
    let by_router = tiers::bodies(&traces, ROUTERS.len(), 50);
    let requests = tiers::interleaved(&by_router);
    let bytes: usize = requests.iter().map(|(_, b)| b.len()).sum();
    println!(
        "collector_tiers: {} traces, {spans} spans in {} requests ({:.1} MiB of OTLP/JSON), {} senders, decision_wait {DECISION_WAIT} (generated 10s), {} round(s)",
        o.traces,
        requests.len(),
        bytes as f64 / 1048576.0,
        o.senders,
        o.rounds
    );

    for round in 1..=o.rounds {
        let one = single(&spec, &otelcol, &requests, o)?;
        report(round, "one collector", spans, &one);
        let two = two_tiers(&spec, &otelcol, &requests, o)?;
        report(round, "2 routers + 3 samplers", spans, &two);
        let rate = |m: &Measured| spans as f64 / m.decided.as_secs_f64();
        let cpu = |m: &Measured| m.processes.iter().map(|p| p.1).sum::<f64>();
        let rss = |m: &Measured| m.processes.iter().map(|p| p.2).sum::<u64>();
        println!(
            "round {round}: two tiers / one collector: throughput {:.2}, CPU per span {:.2}, RSS {:.2}",
            rate(&two) / rate(&one),
            cpu(&two) / cpu(&one),
            rss(&two) as f64 / rss(&one) as f64,
        );
    }
    Ok(())
}

fn report(round: usize, setup: &str, spans: usize, m: &Measured) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "round {round}: {setup}: {:.0} spans/s (all {spans} decided after {:.1?}; requests answered after {:.1?}, {:.0} spans/s); requests retried {} (spans refused {}), spans lost {}, traces decided early {}",
        spans as f64 / m.decided.as_secs_f64(),
        m.decided,
        m.ingest,
        spans as f64 / m.ingest.as_secs_f64(),
        m.retries,
        m.refused,
        m.lost,
        m.dropped_early,
    );
    let mut tiers: BTreeMap<&str, (usize, f64, u64, u64)> = BTreeMap::new();
    for (name, cpu, rss, hwm) in &m.processes {
        println!(
            "round {round}:   {name}: CPU {cpu:.1} s ({:.1} µs/span), VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            cpu * 1e6 / spans as f64,
            mib(*rss),
            mib(*hwm)
        );
        let tier = tiers
            .entry(name.split('-').next().unwrap_or(name))
            .or_default();
        *tier = (tier.0 + 1, tier.1 + cpu, tier.2 + rss, tier.3 + hwm);
    }
    for (tier, (n, cpu, rss, hwm)) in tiers {
        println!(
            "round {round}:   tier {tier} ({n}): CPU {cpu:.1} s ({:.1} µs/span), VmRSS {:.1} MiB, VmHWM {:.1} MiB (sums)",
            cpu * 1e6 / spans as f64,
            mib(rss),
            mib(hwm)
        );
    }
}

/// The generated sampler-side config (`tail_sampling` and the exporter) of
/// `yaml` at `ports`, exporting to a discarding sink, with the bench's decision wait.
fn deciding(yaml: &str, ports: &Ports) -> Result<Value> {
    let mut c = tiers::bind(yaml, ports)?;
    tiers::to_sink(&mut c, tiers::discard_sink()?, false)?;
    let tail = &mut c["processors"]["tail_sampling"];
    ensure!(tail.is_object(), "no tail_sampling in {c}");
    tail["decision_wait"] = json!(DECISION_WAIT);
    Ok(c)
}

fn single(
    spec: &TracingPolicySpec,
    otelcol: &std::path::Path,
    requests: &[(usize, &[u8])],
    o: &Options,
) -> Result<Measured> {
    let scratch = support::Scratch::new("bench-collector-single")?;
    let plan = tiers::plan(spec, Tier::Single)?;
    let ports = Ports::new(SINGLE);
    let c = deciding(&plan.config_yaml, &ports)?;
    let collector = Collector::start(otelcol, scratch.path(), "single", &c, ports, None)?;
    let target = [collector.ports.clone()];
    let all = [&collector];
    load(&all, &all, &target, requests, o)
}

fn two_tiers(
    spec: &TracingPolicySpec,
    otelcol: &std::path::Path,
    requests: &[(usize, &[u8])],
    o: &Options,
) -> Result<Measured> {
    let scratch = support::Scratch::new("bench-collector-tiers")?;
    let (router, sampler) = tiers::plan_tiers(spec)?;
    let mut two = TwoTiers::new(otelcol, scratch.path(), &router, Discovery::Static)?;
    for address in SAMPLERS {
        let ports = two.sampler_ports(address);
        let c = deciding(&sampler.config_yaml, &ports)?;
        let i = two.start_sampler(&c, ports)?;
        two.announce(i)?;
    }
    two.start_routers(&ROUTERS)?;
    let deciders: Vec<&Collector> = two.samplers.iter().collect();
    let all: Vec<&Collector> = two.routers.iter().chain(&two.samplers).collect();
    load(&deciders, &all, &two.router_ports(), requests, o)
}

/// Sends `requests` (request `(r, body)` to `targets[r % targets.len()]`) and
/// waits until `deciders` have decided every trace; `all` are measured.
fn load(
    deciders: &[&Collector],
    all: &[&Collector],
    targets: &[Ports],
    requests: &[(usize, &[u8])],
    o: &Options,
) -> Result<Measured> {
    let cpu = |c: &Collector| c.stats().map(|s| s.cpu_seconds);
    let cpu_before = all.iter().map(|c| cpu(c)).collect::<Result<Vec<f64>>>()?;
    let next = AtomicUsize::new(0);
    let retries = AtomicU32::new(0);
    let began = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..o.senders)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while let Some((r, body)) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let t = &targets[r % targets.len()];
                        retries.fetch_add(tiers::post(t.address, t.http, body)?, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
        }
        Ok(())
    })?;
    let ingest = began.elapsed();
    let want = o.traces as u64;
    let decided = loop {
        let stats = deciders
            .iter()
            .map(|c| c.stats())
            .collect::<Result<Vec<_>>>()?;
        let n: u64 = stats
            .iter()
            .map(|s| s.traces_sampled + s.traces_not_sampled)
            .sum();
        if n >= want {
            break began.elapsed();
        }
        ensure!(
            began.elapsed() < Duration::from_secs(600),
            "after 600 s {n} of {want} traces are decided\n{}",
            tiers::logs(all.iter().copied())
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut processes = Vec::new();
    let mut refused = 0;
    let mut lost = 0;
    let mut dropped_early = 0;
    for (c, before) in all.iter().zip(cpu_before) {
        let stats = c.stats()?;
        refused += stats.spans_refused;
        lost += stats.spans_send_failed + stats.spans_enqueue_failed;
        dropped_early += stats.traces_dropped_too_early;
        processes.push((
            c.name.clone(),
            stats.cpu_seconds - before,
            c.status_kib("VmRSS").unwrap_or(0),
            c.status_kib("VmHWM").unwrap_or(0),
        ));
    }
    Ok(Measured {
        ingest,
        decided,
        retries: retries.into_inner(),
        processes,
        refused,
        lost,
        dropped_early,
    })
}
