//! The scale benchmark: what the operator costs and how fast it converges, measured
//! on a live testbed cluster with the operator running as its own process (the
//! `tracing-operator` binary of this build, `run` with its default flags).
//!
//! ```text
//! make bench                                   # testbed/testbed up, then cargo bench
//! KUBECONFIG=... cargo bench --bench scale     # against a cluster that is already up
//! cargo bench --bench scale -- --only 1,3 --workloads 200 --namespaces 10
//! ```
//!
//! Scenarios, each in namespaces of its own that are deleted afterwards:
//! 1. the CAAS example (`examples/`): `kubectl apply` of the policy to Ready;
//! 2. 1,000 Deployments in 50 namespaces under one policy (Immediate, collector
//!    off): memory idle and converged, time to Ready, writes per workload, the
//!    status writes the progress reports cost and how often `workloads.upToDate`
//!    moved (sampled from a watch on the policy);
//! 3. a Progressive rollout (maxConcurrent 20) of 200 Deployments against the
//!    time one Deployment, and 20 at once, take to roll out on this cluster;
//! 4. a converged resync (a namespace label change, then a restarted operator)
//!    after scenario 2: the writes it causes (expected none).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it returns at once:
//! the scenarios take minutes and need a cluster of their own.
//! benches/README.md has the figures and how to read them.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use support::process::OperatorProcess;
use tracing_operator::api::{CONFIG_HASH_ANNOTATION, TracingPolicy};

/// The binary under test, built by cargo in the bench's own profile (release).
#[path = "scale/big.rs"]
mod big;

const OPERATOR: &str = env!("CARGO_BIN_EXE_tracing-operator");
/// Namespaces the benchmark creates carry this label (its value names the scenario).
const SCENARIO_LABEL: &str = "bench.tracing.caas.io/scenario";
/// The namespace the operator believes it runs in.
const OPERATOR_NAMESPACE: &str = "tracing-operator";
/// The example's namespaces (scenario 1), deleted afterwards.
const EXAMPLE_NAMESPACES: [&str; 5] = [
    "caas-gateway",
    "caas-auth",
    "caas-socket",
    "legacy",
    "observability",
];
const EXAMPLE_POLICY: &str = "caas-production";
const SCALE_POLICY: &str = "bench-scale";
const ROLLOUT_POLICY: &str = "bench-rollout";
/// What to run, from the arguments after `--bench`.
#[derive(Debug)]
struct Options {
    only: Vec<u8>,
    workloads: usize,
    namespaces: usize,
    rollout_workloads: usize,
    max_concurrent: usize,
    single_samples: usize,
    /// Scenario 5: Deployments and namespaces.
    big_workloads: usize,
    big_namespaces: usize,
    /// Replicas of each of scenario 5's Deployments (0: rollouts replace no pod).
    big_replicas: i32,
    /// Extra flags for `tracing-operator run`.
    operator_args: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            // Scenario 5 (10,000 Deployments) needs a larger testbed: `--only 5`.
            only: vec![1, 2, 3, 4],
            workloads: 1000,
            namespaces: 50,
            rollout_workloads: 200,
            max_concurrent: 20,
            single_samples: 5,
            big_workloads: 10_000,
            big_namespaces: 500,
            big_replicas: 1,
            operator_args: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| support::option_value(name, it.next());
            match arg.as_str() {
                "--bench" => {}
                "--only" => {
                    o.only = value("--only")?
                        .split(',')
                        .map(|s| s.trim().parse::<u8>().ok().filter(|n| (1..=5).contains(n)))
                        .collect::<Option<Vec<_>>>()
                        .context("--only: a comma-separated list of scenarios 1..5")?;
                }
                "--workloads" => o.workloads = support::positive_option(arg, it.next())?,
                "--namespaces" => o.namespaces = support::positive_option(arg, it.next())?,
                "--rollout-workloads" => {
                    o.rollout_workloads = support::positive_option(arg, it.next())?
                }
                "--max-concurrent" => o.max_concurrent = support::positive_option(arg, it.next())?,
                "--single-samples" => o.single_samples = support::positive_option(arg, it.next())?,
                "--big-workloads" => o.big_workloads = support::positive_option(arg, it.next())?,
                "--big-namespaces" => o.big_namespaces = support::positive_option(arg, it.next())?,
                "--big-replicas" => {
                    let v = value(arg)?;
                    o.big_replicas =
                        v.parse::<i32>().ok().filter(|r| *r >= 0).with_context(|| {
                            format!("--big-replicas: {v:?} is not a number >= 0")
                        })?;
                }
                "--operator-arg" => o.operator_args.push(value(arg)?),
                other => bail!(
                    "unknown argument {other:?}; known: --only 1,2,3,4,5 --workloads N --namespaces N \
                     --rollout-workloads N --max-concurrent N --single-samples N --big-workloads N \
                     --big-namespaces N --big-replicas N --operator-arg FLAG"
                ),
            }
        }
        if o.only.contains(&4) && !o.only.contains(&2) {
            bail!("--only: scenario 4 resyncs what scenario 2 converged; list 2 as well");
        }
        Ok(o)
    }
}

fn main() {
    let Some((options, runtime)) =
        support::bench_start("scale", "run `make bench`", Options::parse)
    else {
        return;
    };
    if !runtime.block_on(run(options)) {
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------ the run

/// One line of the final summary.
struct Row {
    scenario: &'static str,
    figure: String,
    value: String,
}

#[derive(Default)]
struct Summary(Vec<Row>);

impl Summary {
    fn add(&mut self, scenario: &'static str, figure: impl Into<String>, value: impl Into<String>) {
        let row = Row {
            scenario,
            figure: figure.into(),
            value: value.into(),
        };
        println!("  {:<58} {}", row.figure, row.value);
        self.0.push(row);
    }

    fn print(&self) {
        let w = self.0.iter().map(|r| r.figure.len()).max().unwrap_or(10);
        println!("\n== summary ==");
        let mut last = "";
        for r in &self.0 {
            if r.scenario != last {
                println!("{}", r.scenario);
                last = r.scenario;
            }
            println!("  {:<w$}  {}", r.figure, r.value);
        }
    }
}

async fn run(o: Options) -> bool {
    let started = Instant::now();
    let client = support::client().await;
    let mut summary = Summary::default();
    println!(
        "scale benchmark: {} ({} cores), cluster {}, operator {}",
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        support::kubeconfig().display(),
        OPERATOR
    );
    println!("options: {o:?}");
    if let Err(e) = prepare(&client).await {
        eprintln!("scale: preparing the cluster failed: {e:#}");
        return false;
    }
    let mut ok = true;
    if o.only.contains(&1) {
        ok &= report(
            "1",
            scenario_example(&client, &o, &mut summary).await,
            cleanup(&client, &[EXAMPLE_POLICY], Cleanup::Examples).await,
        );
    }
    if o.only.contains(&2) {
        let result = scenario_scale(&client, &o, &mut summary).await;
        ok &= report(
            "2/4",
            result,
            cleanup(&client, &[SCALE_POLICY], Cleanup::Scenario("scale")).await,
        );
    }
    if o.only.contains(&3) {
        ok &= report(
            "3",
            scenario_rollout(&client, &o, &mut summary).await,
            cleanup(&client, &[ROLLOUT_POLICY], Cleanup::Scenario("rollout")).await,
        );
    }
    if o.only.contains(&5) {
        ok &= report(
            "5",
            big::scenario_big(&client, &o, &mut summary).await,
            cleanup(
                &client,
                &big::policies()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                Cleanup::Scenario("big"),
            )
            .await,
        );
    }
    summary.print();
    println!(
        "\nscale benchmark {} in {:.0}s",
        if ok { "finished" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    ok
}

fn report(scenario: &str, result: Result<()>, cleaned: Result<()>) -> bool {
    let mut ok = true;
    if let Err(e) = result {
        eprintln!("scale: scenario {scenario} failed: {e:#}");
        ok = false;
    }
    if let Err(e) = cleaned {
        eprintln!("scale: cleaning up after scenario {scenario} failed: {e:#}");
        ok = false;
    }
    ok
}

/// The CRD, the operator's namespace, and nothing left from an earlier, interrupted run.
async fn prepare(client: &Client) -> Result<()> {
    support::install_crd(client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(OPERATOR_NAMESPACE).await?.is_none() {
        namespaces
            .create(&PostParams::default(), &namespace(OPERATOR_NAMESPACE, &[]))
            .await?;
    }
    // Discovery may lag Established by a moment.
    let policies: Api<TracingPolicy> = Api::all(client.clone());
    wait_for(
        "TracingPolicies can be listed",
        Duration::from_secs(30),
        || {
            let policies = policies.clone();
            async move { Ok(policies.list(&ListParams::default()).await.ok().map(|_| ())) }
        },
    )
    .await?;
    cleanup(
        client,
        &[SCALE_POLICY, ROLLOUT_POLICY],
        Cleanup::Scenario("any"),
    )
    .await
    .context("removing what an earlier run left")
}

// ------------------------------------------------------------ scenario 1

async fn scenario_example(client: &Client, o: &Options, summary: &mut Summary) -> Result<()> {
    println!("\n== 1. the example: kubectl apply of examples/policy.yaml to Ready ==");
    let policies: Api<TracingPolicy> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if policies.get_opt(EXAMPLE_POLICY).await?.is_some()
        || namespaces.get_opt(EXAMPLE_NAMESPACES[0]).await?.is_some()
    {
        bail!(
            "the example is already applied on this cluster (make demo?); the benchmark \
             needs a cluster without it, and no other operator running: testbed/testbed down, then make bench"
        );
    }
    let operator = Operator::start("example", &o.operator_args).await?;
    let examples = support::repo().join("examples");
    let path = |f: &str| examples.join(f).to_string_lossy().into_owned();
    kubectl(&[
        "apply",
        "-f",
        &path("namespaces.yaml"),
        "-f",
        &path("workloads.yaml"),
    ])?;
    for (kind, ns, name) in [
        ("deployment", "caas-gateway", "gateway"),
        ("deployment", "caas-auth", "auth"),
        ("statefulset", "caas-socket", "socket"),
        ("daemonset", "caas-socket", "log-agent"),
        ("deployment", "legacy", "billing"),
    ] {
        kubectl(&[
            "rollout",
            "status",
            "-n",
            ns,
            &format!("{kind}/{name}"),
            "--timeout=120s",
        ])?;
    }
    let idle = operator.memory()?;
    let cpu0 = operator.cpu_seconds()?;

    let t0 = Instant::now();
    kubectl(&["apply", "-f", &path("policy.yaml")])?;
    let applied = t0.elapsed();
    let (policy, _) = wait_ready(client, EXAMPLE_POLICY, t0, Duration::from_secs(300), |_| {
        true
    })
    .await?;
    let ready = t0.elapsed();
    let cpu = operator.cpu_seconds()? - cpu0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem = operator.memory()?;
    let m = operator.metrics().await?;
    let status = policy.status.unwrap_or_default();
    println!(
        "  (kubectl apply itself took {}; workloads {}; collector {:?})",
        secs(applied),
        status.workloads.summary,
        status.collector.map(|c| c.ready_replicas)
    );
    summary.add(
        "1. example policy (4 workloads, collector on)",
        "kubectl apply -> Ready (observedGeneration current)",
        secs(ready),
    );
    summary.add(
        "1. example policy (4 workloads, collector on)",
        "operator RSS before the policy / after Ready",
        format!("{} / {}", mib(idle.rss_kib), mib(mem.rss_kib)),
    );
    summary.add(
        "1. example policy (4 workloads, collector on)",
        "operator peak RSS (VmHWM)",
        mib(mem.hwm_kib),
    );
    summary.add(
        "1. example policy (4 workloads, collector on)",
        "operator CPU until Ready; writes; reconciles",
        format!(
            "{cpu:.2}s; {} ({}); {}",
            m.writes_total(),
            m.writes_by_kind(),
            m.reconciles
        ),
    );
    operator.stop();
    Ok(())
}

// ------------------------------------------------------- scenarios 2 and 4

async fn scenario_scale(client: &Client, o: &Options, summary: &mut Summary) -> Result<()> {
    const S: &str = "2. scale: one policy over many Deployments";
    let n = o.workloads;
    println!(
        "\n== 2. {n} Deployments in {} namespaces, one policy (Immediate, collector off) ==",
        o.namespaces
    );
    let mut operator = Operator::start("scale", &o.operator_args).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = operator.memory()?;
    summary.add(
        S,
        "operator RSS idle (caches synced, no workload)",
        format!("{} (peak {})", mib(idle.rss_kib), mib(idle.hwm_kib)),
    );

    let t = Instant::now();
    create_workloads(client, "scale", o.namespaces, n).await?;
    wait_available(client, "scale", n, Duration::from_secs(900)).await?;
    println!(
        "  ({n} Deployments created and available in {})",
        secs(t.elapsed())
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let watched = operator.memory()?;
    summary.add(
        S,
        format!("operator RSS with {n} Deployments watched, no policy"),
        format!("{} (peak {})", mib(watched.rss_kib), mib(watched.hwm_kib)),
    );

    let timeline = Timeline::track(client, "scale");
    let progress = Progress::track(client, SCALE_POLICY);
    let m0 = operator.metrics().await?;
    let a0 = support::apiserver::writes()?;
    let cpu0 = operator.cpu_seconds()?;
    let t0 = Instant::now();
    apply_policy(
        client,
        SCALE_POLICY,
        "scale",
        json!({"strategy": "Immediate"}),
    )
    .await?;
    let (policy, first_status) =
        wait_ready(client, SCALE_POLICY, t0, Duration::from_secs(1800), |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.workloads.up_to_date as usize == n)
        })
        .await?;
    let ready = t0.elapsed();
    let cpu = operator.cpu_seconds()? - cpu0;
    let (_, all_done) = rollout_progress(client, "scale").await?;
    let paced = timeline.lock().stats(t0);
    drop(timeline);
    let moved = progress.lock().stats(t0, n);
    drop(progress);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let converged = operator.memory()?;
    let m1 = operator.metrics().await?;
    let a1 = support::apiserver::writes()?;
    let writes = m1.delta(&m0);
    let server = support::counter_delta(&a0, &a1);
    let applies = server.get("APPLY deployments").copied().unwrap_or(0);
    println!(
        "  (status: {}; Deployments complete on the new template: {all_done}/{n})",
        policy
            .status
            .as_ref()
            .map_or("-", |s| s.workloads.summary.as_str())
    );
    println!("  API server mutating requests during the rollout: {server:?}");
    let per_workload = (converged.rss_kib as f64 - idle.rss_kib as f64) / n as f64;
    summary.add(
        S,
        format!("policy apply -> Ready, all {n} up to date"),
        format!(
            "{} (client-side limit {} writes/s: floor {})",
            secs(ready),
            o.qps(),
            secs(Duration::from_secs_f64(n as f64 / o.qps() as f64))
        ),
    );
    summary.add(
        S,
        "  policy apply -> first status for the new generation",
        first_status.map_or("-".to_string(), secs),
    );
    summary.add(
        S,
        "  policy apply -> first / last workload patched",
        format!("{} / {}", secs(paced.first_start), secs(paced.last_start)),
    );
    summary.add(
        S,
        "  policy apply -> last workload complete on the new template",
        secs(paced.last_done),
    );
    summary.add(
        S,
        "operator RSS converged / peak (VmHWM)",
        format!("{} / {}", mib(converged.rss_kib), mib(converged.hwm_kib)),
    );
    summary.add(
        S,
        "memory per workload: (RSS converged - RSS idle) / N",
        format!("{per_workload:.1} KiB"),
    );
    summary.add(
        S,
        "  of which watching alone: (RSS watched - RSS idle) / N",
        format!(
            "{:.1} KiB",
            (watched.rss_kib as f64 - idle.rss_kib as f64) / n as f64
        ),
    );
    summary.add(
        S,
        "status writes during the rollout (patch TracingPolicy/status)",
        format!(
            "{} ({:.3} per workload)",
            writes.kind("TracingPolicy/status"),
            writes.kind("TracingPolicy/status") as f64 / n as f64
        ),
    );
    summary.add(
        S,
        "  workloads.upToDate, as a watch saw it: moves; gap median / max",
        format!(
            "{} moves from 0 to {n} in {}; {} / {}",
            moved.moves,
            secs(moved.span),
            secs(moved.median_gap),
            secs(moved.max_gap)
        ),
    );
    summary.add(
        S,
        "  status.workloads first / last moved after the policy apply",
        format!("{} / {}", secs(moved.first), secs(moved.last)),
    );
    summary.add(
        S,
        "operator writes during rollout (by verb/kind)",
        format!("{} ({})", writes.writes_total(), writes.writes_by_kind()),
    );
    summary.add(
        S,
        "mutating requests per changed workload (operator)",
        format!(
            "{:.3} all, {:.3} workload patches",
            writes.writes_total() as f64 / n as f64,
            writes.kind("Deployment") as f64 / n as f64
        ),
    );
    summary.add(
        S,
        "API server's view: APPLY deployments per workload",
        format!("{:.3} ({applies} APPLY)", applies as f64 / n as f64),
    );
    summary.add(
        S,
        "operator CPU during rollout; reconciles",
        format!("{cpu:.1}s; {}", writes.reconciles),
    );

    // Scenario 4: a converged resync. First a namespace label change (every
    // policy is reconciled again), then a freshly started operator.
    const R: &str = "4. converged resync (after 2)";
    println!("\n== 4. converged resync of {n} Deployments ==");
    let m0 = operator.metrics().await?;
    let a0 = support::apiserver::writes()?;
    let cpu0 = operator.cpu_seconds()?;
    let first_ns = format!("bench-scale-{:02}", 0);
    kubectl(&[
        "label",
        "namespace",
        &first_ns,
        &format!("bench.tracing.caas.io/touched={}", std::process::id()),
        "--overwrite",
    ])?;
    let took = settle(&operator, m0.reconciles).await?;
    let m1 = operator.metrics().await?;
    let server = support::counter_delta(&a0, &support::apiserver::writes()?);
    let writes = m1.delta(&m0);
    summary.add(
        R,
        "namespace label change: reconciles; operator writes",
        format!(
            "{}; {} ({})",
            writes.reconciles,
            writes.writes_total(),
            writes.writes_by_kind()
        ),
    );
    summary.add(
        R,
        "  API server mutating requests; operator CPU",
        format!(
            "{}; {:.2}s (settled in {})",
            fmt_map(&server),
            operator.cpu_seconds()? - cpu0,
            secs(took)
        ),
    );

    // Many resyncs in a row: memory must level off, not grow with each one.
    let rounds = 20;
    let before = operator.memory()?;
    let m0 = operator.metrics().await?;
    let a0 = support::apiserver::writes()?;
    let cpu0 = operator.cpu_seconds()?;
    for i in 0..rounds {
        kubectl(&[
            "label",
            "namespace",
            &first_ns,
            &format!("bench.tracing.caas.io/touched=round-{i}"),
            "--overwrite",
        ])?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    settle(&operator, m0.reconciles).await?;
    let after = operator.memory()?;
    let writes = operator.metrics().await?.delta(&m0);
    let server = support::counter_delta(&a0, &support::apiserver::writes()?);
    summary.add(
        R,
        format!("{rounds} more label changes: reconciles; writes (operator, API server)"),
        format!(
            "{}; {}, {}",
            writes.reconciles,
            writes.writes_total(),
            fmt_map(&server)
        ),
    );
    summary.add(
        R,
        "  RSS before -> after; CPU per reconcile",
        format!(
            "{} -> {}; {:.0} ms",
            mib(before.rss_kib),
            mib(after.rss_kib),
            (operator.cpu_seconds()? - cpu0) * 1000.0 / writes.reconciles.max(1) as f64
        ),
    );

    operator.stop();
    let a0 = support::apiserver::writes()?;
    let t = Instant::now();
    operator = Operator::start("scale-restarted", &o.operator_args).await?;
    let synced = t.elapsed();
    let took = settle(&operator, 0).await?;
    let m1 = operator.metrics().await?;
    let server = support::counter_delta(&a0, &support::apiserver::writes()?);
    let mem = operator.memory()?;
    summary.add(
        R,
        "operator restart: reconciles; operator writes",
        format!(
            "{}; {} ({})",
            m1.reconciles,
            m1.writes_total(),
            m1.writes_by_kind()
        ),
    );
    summary.add(
        R,
        "  API server mutating requests; operator CPU",
        format!(
            "{}; {:.2}s (caches synced in {}, settled {} later)",
            fmt_map(&server),
            operator.cpu_seconds()?,
            secs(synced),
            secs(took)
        ),
    );
    summary.add(
        R,
        format!("restarted operator RSS / peak with {n} converged"),
        format!("{} / {}", mib(mem.rss_kib), mib(mem.hwm_kib)),
    );
    operator.stop();
    Ok(())
}

/// Waits until the operator has run at least one reconcile after `since` and then
/// none for 5 s; returns how long that took.
async fn settle(operator: &Operator, since: u64) -> Result<Duration> {
    let t = Instant::now();
    wait_for(
        "the operator reconciled after the trigger",
        Duration::from_secs(120),
        || async { Ok((operator.metrics().await?.reconciles > since).then_some(())) },
    )
    .await?;
    let mut last = operator.metrics().await?.reconciles;
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(5) {
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "the operator kept reconciling for 300s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = operator.metrics().await?.reconciles;
        if now != last {
            last = now;
            quiet = Instant::now();
        }
    }
    Ok(t.elapsed() - Duration::from_secs(5))
}

// ------------------------------------------------------------ scenario 3

async fn scenario_rollout(client: &Client, o: &Options, summary: &mut Summary) -> Result<()> {
    const S: &str = "3. progressive rollout pacing";
    let n = o.rollout_workloads;
    let k = o.max_concurrent;
    println!("\n== 3. progressive rollout of {n} Deployments, maxConcurrent {k} ==");

    // One Deployment, no operator running: how long a template change takes to
    // roll out on this cluster (new ReplicaSet, pod scheduled and Ready, old pod gone).
    let single_ns = "bench-rollout-single";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &namespace(single_ns, &[(SCENARIO_LABEL, "rollout-single")]),
        )
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), single_ns);
    deployments
        .create(
            &PostParams::default(),
            &deployment("single", 0, "rollout-single"),
        )
        .await?;
    wait_complete(&deployments, "single", Duration::from_secs(120)).await?;
    let mut samples = Vec::new();
    for i in 0..o.single_samples {
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {"bench.tracing.caas.io/restart": i.to_string()}}}}});
        let t = Instant::now();
        deployments
            .patch("single", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        wait_complete(&deployments, "single", Duration::from_secs(120)).await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let single = samples[samples.len() / 2];
    println!(
        "  single rollouts: {}",
        samples
            .iter()
            .map(|d| secs(*d))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let operator = Operator::start("rollout", &o.operator_args).await?;
    let per_ns = 20usize;
    create_workloads(client, "rollout", n.div_ceil(per_ns), n).await?;
    wait_available(client, "rollout", n, Duration::from_secs(600)).await?;

    // maxConcurrent Deployments changed at once, no policy yet: what one batch
    // of the progressive rollout costs this cluster by itself.
    let mut batch_samples = Vec::new();
    for i in 0..3 {
        batch_samples.push(batch_rollout(client, "bench-rollout-00", k, i).await?);
    }
    batch_samples.sort();
    let batch = batch_samples[batch_samples.len() / 2];
    println!(
        "  {k} at once: {}",
        batch_samples
            .iter()
            .map(|d| secs(*d))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let timeline = Timeline::track(client, "rollout");
    let m0 = operator.metrics().await?;
    let cpu0 = operator.cpu_seconds()?;
    let t0 = Instant::now();
    apply_policy(
        client,
        ROLLOUT_POLICY,
        "rollout",
        json!({"strategy": "Progressive", "maxConcurrent": k, "progressDeadline": "10m"}),
    )
    .await?;
    let mut last_print = Instant::now();
    let wall = loop {
        let (started, done, last) = {
            let t = timeline.lock();
            (
                t.started.len(),
                t.done.len(),
                t.done.values().max().copied(),
            )
        };
        if done >= n {
            break last.map_or(t0.elapsed(), |l| l - t0);
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(1800),
            "the rollout did not finish in 1800s: {done}/{n} complete, {started} started"
        );
        if last_print.elapsed() > Duration::from_secs(15) {
            println!(
                "  ... {}: {done}/{n} complete, {} in flight",
                secs(t0.elapsed()),
                started - done
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu_rollout = operator.cpu_seconds()? - cpu0;
    wait_ready(client, ROLLOUT_POLICY, t0, Duration::from_secs(300), |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.workloads.up_to_date as usize == n)
    })
    .await?;
    let ready = t0.elapsed();
    let m1 = operator.metrics().await?.delta(&m0);
    let paced = timeline.lock().stats(t0);
    let batches = n.div_ceil(k);
    let ideal = single.mul_f64(batches as f64);
    summary.add(
        S,
        format!(
            "one Deployment's rollout on this cluster (median of {})",
            samples.len()
        ),
        secs(single),
    );
    summary.add(
        S,
        format!("policy apply -> all {n} complete on the new template"),
        secs(wall),
    );
    summary.add(
        S,
        format!(
            "ideal = ceil({n}/{k}) x single = {batches} x {}",
            secs(single)
        ),
        secs(ideal),
    );
    summary.add(
        S,
        "ratio wall / ideal",
        format!("{:.2}", wall.as_secs_f64() / ideal.as_secs_f64()),
    );
    summary.add(
        S,
        format!("{k} Deployments rolled out at once, no operator (median of 3)"),
        secs(batch),
    );
    let ideal_batch = batch.mul_f64(batches as f64);
    summary.add(
        S,
        format!(
            "batch ideal = {batches} x {}; ratio wall / batch ideal",
            secs(batch)
        ),
        format!(
            "{}; {:.2}",
            secs(ideal_batch),
            wall.as_secs_f64() / ideal_batch.as_secs_f64()
        ),
    );
    summary.add(S, "policy apply -> Ready (status caught up)", secs(ready));
    summary.add(
        S,
        format!("most rolling out at once (limit {k})"),
        paced.peak.to_string(),
    );
    summary.add(
        S,
        "  one workload's rollout under the operator (median)",
        secs(paced.rollout),
    );
    summary.add(
        S,
        "  last completion -> next start, median (max)",
        format!("{} ({})", secs(paced.gap), secs(paced.gap_max)),
    );
    summary.add(
        S,
        "  policy apply -> first workload started",
        secs(paced.first_start),
    );
    summary.add(
        S,
        "operator CPU during the rollout; reconciles; writes",
        format!(
            "{cpu_rollout:.1}s; {}; {} ({})",
            m1.reconciles,
            m1.writes_total(),
            m1.writes_by_kind()
        ),
    );
    operator.stop();
    Ok(())
}

// ------------------------------------------------------- cluster helpers

/// Runs kubectl on the bench cluster; its stdout, or an error with its stderr.
fn kubectl(args: &[&str]) -> Result<String> {
    let out = support::kubectl()
        .args(args)
        .output()
        .context("running kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
        .unwrap_or_default()
}

/// A Deployment as a service team ships it: a few labels, env vars, a port,
/// resources and a probe; one replica.
fn deployment(name: &str, index: usize, scenario: &str) -> Deployment {
    let team = format!("team-{:02}", index % 12);
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": name,
                "app.kubernetes.io/part-of": "caas",
                "app.kubernetes.io/version": "1.4.2",
                "caas.io/team": team,
                SCENARIO_LABEL: scenario,
            }
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {
                    "app": name,
                    "app.kubernetes.io/name": name,
                    "app.kubernetes.io/version": "1.4.2",
                    "caas.io/team": team,
                }},
                "spec": {"containers": [{
                    "name": "app",
                    "image": format!("registry.caas.io:5000/caas/{name}:1.4.2"),
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "info"},
                        {"name": "PORT", "value": "8080"},
                        {"name": "DATABASE_URL", "value": format!("postgres://db.caas.svc:5432/{name}")},
                        {"name": "FEATURE_FLAGS", "value": "checkout-v2,rate-limit"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    ],
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"memory": "128Mi"}
                    },
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10}
                }]}
            }
        }
    }))
    .unwrap_or_default()
}

/// Creates `count` namespaces `bench-<scenario>-NN` and `workloads` Deployments
/// spread evenly across them.
async fn create_workloads(
    client: &Client,
    scenario: &str,
    count: usize,
    workloads: usize,
) -> Result<()> {
    create_namespaces(client, scenario, count).await?;
    create_deployments(client, scenario, count, 0..workloads, 1).await
}

fn bench_namespace(scenario: &str, i: usize) -> String {
    format!("bench-{scenario}-{i:02}")
}

async fn create_namespaces(client: &Client, scenario: &str, count: usize) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for i in 0..count {
        let name = bench_namespace(scenario, i);
        let tenant = format!("tenant-{:02}", i % 5);
        let share = format!("{}", i % big::SHARES);
        namespaces
            .create(
                &PostParams::default(),
                &namespace(
                    &name,
                    &[
                        (SCENARIO_LABEL, scenario),
                        ("caas.io/tenant", &tenant),
                        (big::SHARE_LABEL, &share),
                    ],
                ),
            )
            .await
            .with_context(|| format!("creating namespace {name}"))?;
    }
    Ok(())
}

/// Creates Deployments `svc-NNNN` for `indices`, the i-th in namespace `i % count`.
async fn create_deployments(
    client: &Client,
    scenario: &str,
    count: usize,
    indices: std::ops::Range<usize>,
    replicas: i32,
) -> Result<()> {
    stream::iter(indices)
        .map(|i| {
            let api: Api<Deployment> =
                Api::namespaced(client.clone(), &bench_namespace(scenario, i % count));
            let name = format!("svc-{i:04}");
            let mut d = deployment(&name, i, scenario);
            d.spec.replicas = Some(replicas);
            async move {
                api.create(&PostParams::default(), &d)
                    .await
                    .with_context(|| format!("creating Deployment {name}"))
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// When each of a scenario's Deployments was first seen carrying the operator's
/// config hash (started) and then complete on that template (done), from a watch.
#[derive(Default)]
struct Timeline {
    started: BTreeMap<String, Instant>,
    done: BTreeMap<String, Instant>,
    peak: usize,
}

/// What the timeline says about the pacing.
struct Pacing {
    peak: usize,
    /// Median time from started to done.
    rollout: Duration,
    /// For each start after the first, the time since the latest completion
    /// before it: how long a free rollout slot stayed unused.
    gap: Duration,
    gap_max: Duration,
    first_start: Duration,
    last_start: Duration,
    last_done: Duration,
}

struct Tracked(
    std::sync::Arc<std::sync::Mutex<Timeline>>,
    tokio::task::JoinHandle<()>,
);

impl Tracked {
    fn lock(&self) -> std::sync::MutexGuard<'_, Timeline> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.abort();
    }
}

impl Timeline {
    fn track(client: &Client, scenario: &str) -> Tracked {
        use kube::runtime::{WatchStreamExt, watcher};
        let timeline = std::sync::Arc::new(std::sync::Mutex::new(Timeline::default()));
        let api: Api<Deployment> = Api::all(client.clone());
        let config = watcher::Config::default().labels(&format!("{SCENARIO_LABEL}={scenario}"));
        let t = timeline.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(d) = event else { continue };
                let now = Instant::now();
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                let name = format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any());
                if !d.annotations().contains_key(CONFIG_HASH_ANNOTATION) {
                    continue;
                }
                t.started.entry(name.clone()).or_insert(now);
                if d.rolled_out() {
                    t.done.entry(name).or_insert(now);
                }
                let in_flight = t.started.len() - t.done.len();
                t.peak = t.peak.max(in_flight);
            }
        });
        Tracked(timeline, task)
    }

    fn stats(&self, t0: Instant) -> Pacing {
        let since =
            |t: Option<&Instant>| t.map_or(Duration::ZERO, |t| t.saturating_duration_since(t0));
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let rollout = median(
            self.done
                .iter()
                .filter_map(|(name, done)| Some(*done - *self.started.get(name)?))
                .collect(),
        );
        let completions: Vec<Instant> = self.done.values().copied().collect();
        let gaps: Vec<Duration> = self
            .started
            .values()
            .filter_map(|s| {
                completions
                    .iter()
                    .filter(|c| *c <= s)
                    .max()
                    .map(|c| *s - *c)
            })
            .collect();
        Pacing {
            peak: self.peak,
            rollout,
            gap_max: gaps.iter().max().copied().unwrap_or_default(),
            gap: median(gaps),
            first_start: since(self.started.values().min()),
            last_start: since(self.started.values().max()),
            last_done: since(self.done.values().max()),
        }
    }
}

/// `status.workloads.upToDate` of one policy each time a watch sees it change.
#[derive(Default)]
struct Progress {
    seen: Vec<(Instant, i32)>,
}

/// How the count moved during a rollout.
struct Moves {
    /// Changes of the count seen, from its first value above 0 to the last.
    moves: usize,
    /// From the first change to the count reaching the total.
    span: Duration,
    /// Time between consecutive changes while the count was below the total.
    median_gap: Duration,
    max_gap: Duration,
    /// When it first and last changed, after the policy apply.
    first: Duration,
    last: Duration,
}

struct TrackedProgress(
    std::sync::Arc<std::sync::Mutex<Progress>>,
    tokio::task::JoinHandle<()>,
);

impl TrackedProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TrackedProgress {
    fn drop(&mut self) {
        self.1.abort();
    }
}

impl Progress {
    fn track(client: &Client, policy: &str) -> TrackedProgress {
        use kube::runtime::{WatchStreamExt, watcher};
        let progress = std::sync::Arc::new(std::sync::Mutex::new(Progress::default()));
        let api: Api<TracingPolicy> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={policy}"));
        let p = progress.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(tp) = event else { continue };
                let Some(status) = tp.status.as_ref() else {
                    continue;
                };
                if status.observed_generation != tp.metadata.generation {
                    continue;
                }
                let count = status.workloads.up_to_date;
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                if p.seen.last().map(|(_, c)| *c) != Some(count) {
                    p.seen.push((Instant::now(), count));
                }
            }
        });
        TrackedProgress(progress, task)
    }

    fn stats(&self, t0: Instant, total: usize) -> Moves {
        let moving: Vec<Instant> = self
            .seen
            .iter()
            .filter(|(_, c)| *c > 0)
            .map(|(t, _)| *t)
            .collect();
        let done = self
            .seen
            .iter()
            .find(|(_, c)| *c as usize >= total)
            .map(|(t, _)| *t);
        let mut gaps: Vec<Duration> = moving.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort();
        let since =
            |t: Option<&Instant>| t.map_or(Duration::ZERO, |t| t.saturating_duration_since(t0));
        Moves {
            moves: moving.len(),
            span: match (moving.first(), done) {
                (Some(a), Some(b)) => b.saturating_duration_since(*a),
                _ => Duration::ZERO,
            },
            median_gap: gaps.get(gaps.len() / 2).copied().unwrap_or_default(),
            max_gap: gaps.last().copied().unwrap_or_default(),
            first: since(moving.first()),
            last: since(moving.last()),
        }
    }
}

/// The scenario's Deployments: (carrying a config hash from the operator,
/// of those the ones whose rollout is complete).
async fn rollout_progress(client: &Client, scenario: &str) -> Result<(usize, usize)> {
    let api: Api<Deployment> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("{SCENARIO_LABEL}={scenario}")))
        .await?;
    let started: Vec<&Deployment> = list
        .items
        .iter()
        .filter(|d| d.annotations().contains_key(CONFIG_HASH_ANNOTATION))
        .collect();
    let done = started.iter().filter(|d| d.rolled_out()).count();
    Ok((started.len(), done))
}

async fn wait_available(
    client: &Client,
    scenario: &str,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let api: Api<Deployment> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{SCENARIO_LABEL}={scenario}"));
    // Listing thousands of Deployments is not free: once a second is enough here.
    wait_every(
        &format!("{n} Deployments of scenario {scenario} available"),
        timeout,
        Duration::from_secs(1),
        || {
            let (api, lp) = (api.clone(), lp.clone());
            async move {
                let list = api.list(&lp).await?;
                let done = list.items.iter().filter(|d| d.rolled_out()).count();
                Ok((done >= n).then_some(()))
            }
        },
    )
    .await
}

/// Changes the pod template of up to `k` Deployments of namespace `ns` at once and
/// returns how long until all of them are complete on the new template.
async fn batch_rollout(client: &Client, ns: &str, k: usize, round: usize) -> Result<Duration> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .take(k)
        .map(|d| d.name_any())
        .collect();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"bench.tracing.caas.io/batch": round.to_string()}}}}});
    let t = Instant::now();
    stream::iter(&names)
        .map(|name| {
            let (api, patch) = (&api, &patch);
            async move {
                api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
            }
        })
        .buffer_unordered(k)
        .try_collect::<Vec<_>>()
        .await?;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|d| names.contains(&d.name_any()) && d.rolled_out())
            .count();
        if done == names.len() {
            return Ok(t.elapsed());
        }
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "{done}/{} Deployments of {ns} rolled out in 300s",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_complete(api: &Api<Deployment>, name: &str, timeout: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        if api.get(name).await?.rolled_out() {
            return Ok(());
        }
        ensure!(
            t.elapsed() < timeout,
            "Deployment {name} did not roll out in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Server-side applies a policy selecting the scenario's namespaces.
async fn apply_policy(
    client: &Client,
    name: &str,
    scenario: &str,
    rollout: serde_json::Value,
) -> Result<()> {
    let policy: TracingPolicy = serde_json::from_value(json!({
        "apiVersion": "tracing.caas.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": name},
        "spec": {
            "selector": {
                "namespaces": {"matchLabels": {SCENARIO_LABEL: scenario}},
                "workloads": {"matchLabels": {"app.kubernetes.io/part-of": "caas"}},
            },
            "service": {
                "environment": "bench",
                "attributesFromNamespaceLabels": {"tenant.id": "caas.io/tenant"},
            },
            "sampling": {"ratio": 0.1},
            "collector": {"enabled": false},
            "backends": [{
                "name": "jaeger", "type": "jaeger",
                "endpoint": "http://jaeger-collector.observability.svc:4317",
                "protocol": "grpc", "tls": {"insecure": true}
            }],
            "env": [{"name": "SERVICE_NAME", "value": "{service.name}"}],
            "rollout": rollout,
        }
    }))
    .context("the benchmark's policy")?;
    Api::<TracingPolicy>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("scale-bench").force(),
            &Patch::Apply(&policy),
        )
        .await
        .with_context(|| format!("applying TracingPolicy {name}"))?;
    Ok(())
}

/// Waits until the policy's status describes its generation, Ready is True and `more`
/// holds. Also returns when (after `since`) a status for the current generation
/// first appeared.
async fn wait_ready(
    client: &Client,
    name: &str,
    since: Instant,
    timeout: Duration,
    more: impl Fn(&TracingPolicy) -> bool,
) -> Result<(TracingPolicy, Option<Duration>)> {
    let api: Api<TracingPolicy> = Api::all(client.clone());
    let mut last_print = Instant::now();
    let mut first_status = None;
    loop {
        let p = api.get(name).await?;
        let status = p.status.as_ref();
        let current = status.and_then(|s| s.observed_generation) == p.metadata.generation;
        if current && first_status.is_none() {
            first_status = Some(since.elapsed());
        }
        let ready = status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if current && ready && more(&p) {
            return Ok((p, first_status));
        }
        if since.elapsed() > timeout {
            bail!(
                "TracingPolicy {name} not Ready within {timeout:?}; status: {}",
                serde_json::to_string(&p.status).unwrap_or_default()
            );
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            println!(
                "  ... {}: {name}: {}",
                secs(since.elapsed()),
                match status {
                    Some(s) if current => s.workloads.summary.as_str(),
                    _ => "no status for this generation yet",
                }
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    wait_every(what, timeout, Duration::from_millis(250), probe).await
}

/// Polls `probe` every `every` until it returns `Some`, or fails naming `what`.
async fn wait_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        ensure!(t.elapsed() < timeout, "timed out after {timeout:?}: {what}");
        tokio::time::sleep(every).await;
    }
}

enum Cleanup {
    /// The example's namespaces.
    Examples,
    /// Namespaces labelled for this scenario ("any": every bench namespace).
    Scenario(&'static str),
}

/// Deletes the policies and the scenario's namespaces, waiting until they are gone.
///
/// The operator has been stopped by now: its finalizer would remove its settings
/// from every workload one apply at a time, only for the namespaces to be deleted
/// whole, so the finalizer is dropped instead.
async fn cleanup(client: &Client, policies: &[&str], what: Cleanup) -> Result<()> {
    let api: Api<TracingPolicy> = Api::all(client.clone());
    for name in policies {
        if api.get_opt(name).await?.is_some() {
            let drop_finalizers = json!({"metadata": {"finalizers": null}});
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&drop_finalizers),
            )
            .await?;
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = match what {
        Cleanup::Examples => EXAMPLE_NAMESPACES.iter().map(|s| s.to_string()).collect(),
        Cleanup::Scenario(scenario) => {
            let selector = if scenario == "any" {
                SCENARIO_LABEL.to_string()
            } else {
                format!("{SCENARIO_LABEL} in ({scenario},{scenario}-single,{scenario}-free)")
            };
            namespaces
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .iter()
                .map(|n| n.name_any())
                .collect()
        }
    };
    for name in &names {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
    let t = Instant::now();
    wait_for(
        "the benchmark's namespaces and policies are deleted",
        Duration::from_secs(600),
        || async {
            for name in policies {
                if api.get_opt(name).await?.is_some() {
                    return Ok(None);
                }
            }
            for name in &names {
                if namespaces.get_opt(name).await?.is_some() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    if !names.is_empty() {
        println!(
            "  (cleanup: {} namespaces deleted in {})",
            names.len(),
            secs(t.elapsed())
        );
    }
    Ok(())
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// --------------------------------------------------- the operator process

struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

/// The operator's counters from its /metrics.
#[derive(Default)]
struct OperatorMetrics {
    /// `verb kind` -> writes.
    writes: BTreeMap<String, u64>,
    reconciles: u64,
}

impl OperatorMetrics {
    fn parse(text: &str) -> OperatorMetrics {
        let mut m = OperatorMetrics::default();
        let value = |line: &str| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        };
        for line in text.lines() {
            if line.starts_with("tracing_operator_reconciles_total ") {
                m.reconciles = value(line);
            } else if let Some(labels) = line.strip_prefix("tracing_operator_api_writes_total{") {
                let label = |name: &str| {
                    let key = format!("{name}=\"");
                    labels
                        .find(&key)
                        .and_then(|i| labels[i + key.len()..].split('"').next())
                        .unwrap_or("?")
                        .to_string()
                };
                *m.writes
                    .entry(format!("{} {}", label("verb"), label("kind")))
                    .or_insert(0) += value(line);
            }
        }
        m
    }

    fn delta(&self, before: &OperatorMetrics) -> OperatorMetrics {
        OperatorMetrics {
            writes: support::counter_delta(&before.writes, &self.writes),
            reconciles: self.reconciles.saturating_sub(before.reconciles),
        }
    }

    fn writes_total(&self) -> u64 {
        self.writes.values().sum()
    }

    fn kind(&self, kind: &str) -> u64 {
        self.writes
            .iter()
            .filter(|(k, _)| k.ends_with(&format!(" {kind}")))
            .map(|(_, v)| v)
            .sum()
    }

    fn writes_by_kind(&self) -> String {
        fmt_map(&self.writes)
    }
}

/// `tracing-operator run` as its own process, killed when dropped.
struct Operator(OperatorProcess);

impl Operator {
    /// Starts the operator and returns once /readyz says its caches are synced.
    async fn start(name: &str, extra_args: &[String]) -> Result<Operator> {
        let dir = support::repo().join("target").join("bench-scale");
        std::fs::create_dir_all(&dir)?;
        let mut args = vec!["--namespace", OPERATOR_NAMESPACE];
        args.extend(extra_args.iter().map(String::as_str));
        let mut op = Operator(OperatorProcess::start(
            &format!("operator-{name}"),
            &dir,
            &support::kubeconfig(),
            &args,
            &[],
        ));
        let t = Instant::now();
        loop {
            if let Some(status) = op.0.exit_status() {
                bail!(
                    "the operator exited with {status} during startup; log: {}",
                    op.0.log_path().display()
                );
            }
            if matches!(op.get("/readyz").await, Ok((200, _))) {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "the operator was not ready in 120s; log: {}",
                op.0.log_path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "  (operator pid {} ready in {}; log {})",
            op.0.pid(),
            secs(t.elapsed()),
            op.0.log_path().display()
        );
        Ok(op)
    }

    /// A GET on its health server, off the async workers (the GET blocks).
    async fn get(&self, path: &str) -> Result<(u16, String)> {
        let (port, path) = (self.0.metrics_addr.port(), path.to_string());
        let (code, _head, body) =
            tokio::task::spawn_blocking(move || support::http_get(port, &path)).await??;
        Ok((code, body))
    }

    fn proc_file(&self, file: &str) -> Result<String> {
        let path = format!("/proc/{}/{file}", self.0.pid());
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {path} (did the operator die? log: {})",
                self.0.log_path().display()
            )
        })
    }

    /// VmRSS and VmHWM from /proc/PID/status.
    fn memory(&self) -> Result<Memory> {
        let status = self.proc_file("status")?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{}/status", self.0.pid()))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// User plus system CPU time so far, from /proc/PID/stat.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = self.proc_file("stat")?;
        // Fields after the command (which may hold spaces) in parentheses:
        // state is field 3, utime 14 and stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/PID/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .context("malformed /proc/PID/stat")
        };
        Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks() as f64)
    }

    async fn metrics(&self) -> Result<OperatorMetrics> {
        let (code, body) = self.get("/metrics").await?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(OperatorMetrics::parse(&body))
    }

    /// Stops it (SIGKILL: the figures are taken, nothing is left to flush).
    fn stop(self) {
        drop(self.0);
    }
}

impl Options {
    /// The client-side write limit the operator runs with.
    fn qps(&self) -> u32 {
        self.operator_args
            .iter()
            .zip(self.operator_args.iter().skip(1))
            .find(|(flag, _)| flag.as_str() == "--kube-api-qps")
            .and_then(|(_, v)| v.parse().ok())
            .or_else(|| {
                self.operator_args
                    .iter()
                    .find_map(|a| a.strip_prefix("--kube-api-qps="))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(20)
    }
}

/// Clock ticks per second, the unit of /proc/PID/stat's CPU times.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The Deployment's own controller reports it rolled out, as the operator judges it.
trait RolledOut {
    fn rolled_out(&self) -> bool;
}

impl RolledOut for Deployment {
    fn rolled_out(&self) -> bool {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| {
                tracing_operator::workload::from_json::<
                    tracing_operator::workload::deployment::Deployment,
                >(v)
                .ok()
            })
            .is_some_and(|w| {
                tracing_operator::api::WorkloadKind::Deployment
                    .info()
                    .is_complete(&w.rollout)
            })
    }
}
