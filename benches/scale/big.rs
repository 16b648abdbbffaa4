//! Scenario 5: 10,000 Deployments (1 replica) in 500 namespaces, ten policies over
//! disjoint shares of them and one overlapping two of those, the operator at
//! `--kube-api-qps 200`. What a platform team of that size asks: memory per
//! workload, CPU per event that concerns no policy and per event on one selected
//! workload, how close the rollout's write rate comes to a bare client's at the
//! same limit, writes per changed workload, and what a resync and a restart cost.
//!
//! Needs a testbed with room for the pods: `testbed/testbed up --nodes 12`.

use super::*;

/// Namespace label that splits the scenario's namespaces into disjoint shares.
pub const SHARE_LABEL: &str = "bench.tracing.caas.io/share";
/// Shares, one policy each.
pub const SHARES: usize = 10;
/// The write limit of the scenario, for the operator and the bare client alike.
const QPS: u32 = 200;
/// Writes in flight at once, for both.
const CONCURRENCY: usize = 8;
/// Events per CPU measurement.
const EVENTS: usize = 1000;
/// Deployments in a namespace no policy selects, for the unrelated events.
const UNRELATED: usize = 20;

fn share_policy(i: usize) -> String {
    format!("bench-big-{i}")
}

const OVERLAP_POLICY: &str = "bench-big-overlap";

/// Every policy the scenario applies.
pub fn policies() -> Vec<String> {
    let mut names: Vec<String> = (0..SHARES).map(share_policy).collect();
    names.push(OVERLAP_POLICY.to_string());
    names
}

async fn apply(client: &Client, name: &str, shares: &[usize], priority: i32) -> Result<()> {
    let values: Vec<String> = shares.iter().map(ToString::to_string).collect();
    let policy: TracingPolicy = serde_json::from_value(json!({
        "apiVersion": "tracing.caas.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": name},
        "spec": {
            "priority": priority,
            "selector": {
                "namespaces": {"matchExpressions": [
                    {"key": SCENARIO_LABEL, "operator": "In", "values": ["big"]},
                    {"key": SHARE_LABEL, "operator": "In", "values": values},
                ]},
                "workloads": {"matchLabels": {"app.kubernetes.io/part-of": "caas"}},
            },
            "service": {"environment": "bench"},
            "sampling": {"ratio": 0.1},
            "collector": {"enabled": false},
            "backends": [{
                "name": "jaeger", "type": "jaeger",
                "endpoint": "http://jaeger-collector.observability.svc:4317",
                "protocol": "grpc", "tls": {"insecure": true}
            }],
            "rollout": {"strategy": "Immediate"},
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

/// `count` label changes on `targets` in turn, as fast as the API server takes them;
/// returns the operator CPU they cost once it settled.
async fn events(
    client: &Client,
    operator: &Operator,
    targets: &[(String, String)],
    count: usize,
    tag: &str,
) -> Result<f64> {
    let m0 = operator.metrics().await?;
    let cpu0 = operator.cpu_seconds()?;
    stream::iter(0..count)
        .map(|i| {
            let (ns, name) = &targets[i % targets.len()];
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let patch = json!({"metadata": {"labels": {"bench.tracing.caas.io/tick": format!("{tag}-{i}")}}});
            let name = name.clone();
            async move {
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("labelling {name}"))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    // Unrelated events cause no reconcile, so wait a fixed while instead of settling.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if operator.metrics().await?.reconciles > m0.reconciles {
        settle(operator, m0.reconciles).await?;
    }
    Ok(operator.cpu_seconds()? - cpu0)
}

/// A bare client doing what the rollout's writes do, at the same limit and
/// concurrency: one server-side apply per Deployment (an annotation on the
/// Deployment, so nothing rolls). Returns how long the `n` applies took.
async fn bare_client(client: &Client, targets: &[(String, String)]) -> Result<Duration> {
    let limiter = governor::RateLimiter::direct(
        governor::Quota::per_second(std::num::NonZeroU32::new(QPS).context("qps")?)
            .allow_burst(std::num::NonZeroU32::new(QPS).context("burst")?),
    );
    let t = Instant::now();
    stream::iter(targets.iter())
        .map(|(ns, name)| {
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let limiter = &limiter;
            async move {
                limiter.until_ready().await;
                let body = json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": ns,
                                 "annotations": {"bench.tracing.caas.io/bare": "1"}},
                });
                api.patch(
                    name,
                    &PatchParams::apply("bench-bare"),
                    &Patch::Apply(&body),
                )
                .await
                .with_context(|| format!("applying to {name}"))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(t.elapsed())
}

async fn selected(client: &Client) -> Result<Vec<(String, String)>> {
    let list = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{SCENARIO_LABEL}=big")))
        .await?;
    let mut out: Vec<(String, String)> = list
        .items
        .iter()
        .map(|d| (d.namespace().unwrap_or_default(), d.name_any()))
        .collect();
    out.sort();
    Ok(out)
}

pub async fn scenario_big(client: &Client, o: &Options, summary: &mut Summary) -> Result<()> {
    const S: &str = "5. 10,000 workloads: ten policies over disjoint shares, one overlapping";
    let n = o.big_workloads;
    let first = (n / 10).max(1);
    println!(
        "\n== 5. {n} Deployments in {} namespaces, {SHARES} + 1 policies, --kube-api-qps {QPS} ==",
        o.big_namespaces
    );
    let mut args: Vec<String> = vec![
        format!("--kube-api-qps={QPS}"),
        format!("--kube-api-burst={QPS}"),
        format!("--write-concurrency={CONCURRENCY}"),
    ];
    args.extend(o.operator_args.iter().cloned());
    let mut operator = Operator::start("big", &args).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = operator.memory()?;
    summary.add(S, "operator RSS idle (no workload)", mib(idle.rss_kib));

    // A tenth first, to see how memory grows from 1,000 to 10,000.
    let t = Instant::now();
    create_namespaces(client, "big", o.big_namespaces).await?;
    create_deployments(client, "big", o.big_namespaces, 0..first, o.big_replicas).await?;
    wait_available(client, "big", first, Duration::from_secs(1800)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at_first = operator.memory()?;
    create_deployments(client, "big", o.big_namespaces, first..n, o.big_replicas).await?;
    println!("  ({n} Deployments created in {})", secs(t.elapsed()));
    // The unrelated namespace: no policy selects it.
    let free = "bench-big-free";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &namespace(free, &[(SCENARIO_LABEL, "big-free")]),
        )
        .await
        .context("creating the unrelated namespace")?;
    let mut unrelated = Vec::new();
    for i in 0..UNRELATED {
        let name = format!("free-{i:02}");
        Api::<Deployment>::namespaced(client.clone(), free)
            .create(&PostParams::default(), &deployment(&name, i, "big-free"))
            .await
            .with_context(|| format!("creating {name}"))?;
        unrelated.push((free.to_string(), name));
    }
    wait_available(client, "big", n, Duration::from_secs(3600)).await?;
    println!("  (... and available in {})", secs(t.elapsed()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let watched = operator.memory()?;
    summary.add(
        S,
        format!("operator RSS with {n} watched, no policy"),
        format!("{} (peak {})", mib(watched.rss_kib), mib(watched.hwm_kib)),
    );
    summary.add(
        S,
        format!("watch-cache slope from {first} to {n} Deployments"),
        format!(
            "{:.2} KiB per workload ({} -> {})",
            (watched.rss_kib as f64 - at_first.rss_kib as f64) / (n - first).max(1) as f64,
            mib(at_first.rss_kib),
            mib(watched.rss_kib)
        ),
    );

    // The policies: ten disjoint shares, one overlapping shares 0 and 1 at lower
    // priority (it wins nothing and reports Conflicted).
    let targets = selected(client).await?;
    let timeline = Timeline::track(client, "big");
    let m0 = operator.metrics().await?;
    let cpu0 = operator.cpu_seconds()?;
    let t0 = Instant::now();
    for i in 0..SHARES {
        apply(client, &share_policy(i), &[i], 0).await?;
    }
    apply(client, OVERLAP_POLICY, &[0, 1], -1).await?;
    wait_every(
        "every workload patched",
        Duration::from_secs(3600),
        Duration::from_secs(1),
        || async { Ok((timeline.lock().started.len() >= n).then_some(())) },
    )
    .await?;
    let first_patched = timeline.lock().stats(t0).first_start;
    let patched = t0.elapsed();
    for i in 0..SHARES {
        wait_ready(
            client,
            &share_policy(i),
            t0,
            Duration::from_secs(3600),
            |_| true,
        )
        .await?;
    }
    let ready = t0.elapsed();
    let cpu = operator.cpu_seconds()? - cpu0;
    drop(timeline);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let converged = operator.memory()?;
    let writes = operator.metrics().await?.delta(&m0);
    summary.add(
        S,
        format!("policies applied -> all {n} patched / all Ready"),
        format!("{} / {}", secs(patched), secs(ready)),
    );
    summary.add(
        S,
        "operator RSS converged / peak",
        format!("{} / {}", mib(converged.rss_kib), mib(converged.hwm_kib)),
    );
    summary.add(
        S,
        "memory per workload: (converged - idle) / N (goal <= 4 KiB)",
        format!(
            "{:.2} KiB; watching alone {:.2} KiB",
            (converged.rss_kib as f64 - idle.rss_kib as f64) / n as f64,
            (watched.rss_kib as f64 - idle.rss_kib as f64) / n as f64
        ),
    );
    summary.add(
        S,
        "mutating requests per changed workload (operator, Events included)",
        format!(
            "{:.3} ({})",
            writes.writes_total() as f64 / n as f64,
            writes.writes_by_kind()
        ),
    );
    summary.add(
        S,
        "operator CPU for the rollout; reconciles",
        format!("{cpu:.1}s; {}", writes.reconciles),
    );

    // The bare client, same limit and concurrency, the same number of applies.
    let bare = bare_client(client, &targets).await?;
    let operator_writes = patched.saturating_sub(first_patched);
    summary.add(
        S,
        format!("{n} applies: bare client / operator (first to last patched)"),
        format!(
            "{} / {} (ratio {:.2}, goal >= 0.9)",
            secs(bare),
            secs(operator_writes),
            bare.as_secs_f64() / operator_writes.as_secs_f64().max(1e-9)
        ),
    );

    // CPU per event: events no policy cares about, then events on one selected
    // workload of a 1,000-workload policy (a label change: re-planned, nothing written).
    let cpu_unrelated = events(client, &operator, &unrelated, EVENTS, "u").await?;
    let one = vec![targets[0].clone()];
    let m0 = operator.metrics().await?;
    let cpu_selected = events(client, &operator, &one, EVENTS, "s").await?;
    let after = operator.metrics().await?.delta(&m0);
    summary.add(
        S,
        format!("CPU per unrelated workload event ({EVENTS} events, goal < 1 ms)"),
        format!("{:.3} ms", cpu_unrelated * 1000.0 / EVENTS as f64),
    );
    summary.add(
        S,
        format!("CPU per event on one selected workload ({EVENTS} events, goal < 1 ms)"),
        format!(
            "{:.3} ms ({} reconciles, {} writes)",
            cpu_selected * 1000.0 / EVENTS as f64,
            after.reconciles,
            after.writes_total()
        ),
    );

    // Resync and restart at 10,000 converged.
    let m0 = operator.metrics().await?;
    let a0 = support::apiserver::writes()?;
    let cpu0 = operator.cpu_seconds()?;
    kubectl(&[
        "label",
        "namespace",
        "bench-big-00",
        &format!("bench.tracing.caas.io/touched={}", std::process::id()),
        "--overwrite",
    ])?;
    let took = settle(&operator, m0.reconciles).await?;
    let writes = operator.metrics().await?.delta(&m0);
    let server = support::counter_delta(&a0, &support::apiserver::writes()?);
    summary.add(
        S,
        "resync (namespace label change): operator writes; CPU",
        format!(
            "{} ({}); {:.2}s in {} reconciles (settled in {})",
            writes.writes_total(),
            fmt_map(&server),
            operator.cpu_seconds()? - cpu0,
            writes.reconciles,
            secs(took)
        ),
    );
    operator.stop();
    let a0 = support::apiserver::writes()?;
    operator = Operator::start("big-restarted", &args).await?;
    settle(&operator, 0).await?;
    let m1 = operator.metrics().await?;
    let server = support::counter_delta(&a0, &support::apiserver::writes()?);
    summary.add(
        S,
        "operator restart at 10,000 converged: writes; CPU",
        format!(
            "{} ({}); {:.2}s",
            m1.writes_total(),
            fmt_map(&server),
            operator.cpu_seconds()?
        ),
    );
    let mem = operator.memory()?;
    summary.add(
        S,
        "restarted operator RSS / peak",
        format!("{} / {}", mib(mem.rss_kib), mib(mem.hwm_kib)),
    );
    operator.stop();
    Ok(())
}
