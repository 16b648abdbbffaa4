//! Progress you can watch: during a rollout of a few hundred Deployments,
//! `status.workloads.upToDate` climbs in steps a watcher sees (not 0, then all
//! at once), while the status writes that cost stay bounded (progress alone is
//! written at most once per 5 s; condition changes at once).
//!
//! The operator binary runs with a low write rate (10/s) so the rollout spans
//! several reconciles, as a 1,000-workload one does at the default 20/s.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use std::time::{Duration, Instant};

use kube::Api;
use serde_json::json;

use support::process::OperatorProcess;
use tracing_operator::api::TracingPolicy;

const NAMESPACES: usize = 4;
const PER_NAMESPACE: usize = 50;
/// The operator's pacing of progress-only status writes (`PROGRESS_INTERVAL`).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// `tracing_operator_api_writes_total` for status writes, from a scrape.
fn status_writes(port: u16) -> f64 {
    let body = match support::http_get(port, "/metrics") {
        Ok((200, _, body)) => body,
        other => panic!("GET /metrics: {other:?}"),
    };
    body.lines()
        .filter(|l| {
            l.starts_with("tracing_operator_api_writes_total{")
                && l.contains("kind=\"TracingPolicy/status\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_to_date_climbs_during_a_large_rollout_at_a_bounded_status_cost() {
    let client = support::client().await;
    harness::install_crd(&client).await;
    let name = "progress";
    harness::clear_policies(&client, &[name]).await;
    let mut namespaces = Vec::new();
    for _ in 0..NAMESPACES {
        namespaces.push(harness::namespace(&client, name, &[]).await);
    }
    let ns_refs: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let _cleanup = support::Cleanup::new(&[name], &ns_refs);
    for ns in &namespaces {
        for i in 0..PER_NAMESPACE {
            harness::create_deployment(
                &client,
                ns,
                &harness::deployment(
                    &format!("app-{i}"),
                    &[],
                    &[("app", "registry.local/app:1.0", &[])],
                ),
            )
            .await;
        }
    }
    let total = (NAMESPACES * PER_NAMESPACE) as i32;
    for ns in &namespaces {
        support::wait_until(
            &format!("the Deployments in {ns} are available"),
            Duration::from_secs(180),
            || {
                let client = client.clone();
                let ns = ns.clone();
                async move {
                    let all = harness::deployments(&client, &ns).await;
                    (all.len() == PER_NAMESPACE && all.iter().all(harness::rolled_out))
                        .then_some(())
                }
            },
        )
        .await;
    }

    let scratch = support::Scratch::new("progress").expect("scratch dir");
    let operator = OperatorProcess::start(
        "operator",
        scratch.path(),
        &support::kubeconfig(),
        &[
            "--namespace",
            harness::OPERATOR_NAMESPACE,
            "--kube-api-qps",
            "10",
            "--kube-api-burst",
            "10",
        ],
        &[],
    );
    let port = operator.metrics_addr.port();
    support::wait_until(
        "the operator serves /metrics",
        Duration::from_secs(60),
        || {
            let up = matches!(support::http_get(port, "/metrics"), Ok((200, _, _)));
            async move { up.then_some(()) }
        },
    )
    .await;
    let writes_before = status_writes(port);

    harness::apply_policy(&client, &harness::policy(name, name, json!({}))).await;
    let started = Instant::now();
    let api: Api<TracingPolicy> = Api::all(client.clone());
    // Every distinct upToDate a poller sees (status writes are seconds apart,
    // so polling at 200 ms misses none), with the Progressing condition then.
    let mut seen: Vec<(Duration, i32, Option<String>)> = Vec::new();
    let deadline = started + Duration::from_secs(300);
    loop {
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish in 300 s; seen: {seen:?}"
        );
        if let Ok(Some(p)) = api.get_opt(name).await
            && let Some(s) = p.status.as_ref()
            && s.observed_generation == p.metadata.generation
        {
            let count = s.workloads.up_to_date;
            if seen.last().map(|(_, c, _)| *c) != Some(count) {
                let progressing = harness::condition(&p, "Progressing");
                seen.push((started.elapsed(), count, progressing));
            }
            if count >= total && harness::condition(&p, "Ready").as_deref() == Some("True") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let writes = status_writes(port) - writes_before;
    let between: Vec<&(Duration, i32, Option<String>)> = seen
        .iter()
        .filter(|(_, c, _)| *c > 0 && *c < total)
        .collect();
    println!(
        "{total} workloads up to date in {:.1}s; upToDate seen at {} values in between; {writes} status writes; seen: {seen:?}",
        took.as_secs_f64(),
        between.len(),
    );

    // It climbs: several counts between 0 and all, while still Progressing.
    assert!(between.len() >= 2, "upToDate moved in steps: {seen:?}");
    assert!(
        between.iter().all(|(_, _, p)| p.as_deref() == Some("True")),
        "Progressing while it climbs: {seen:?}"
    );
    // Bounded: one progress write per interval, plus the few that turn a
    // condition (Progressing on, Ready on) and the first status.
    let bound = (took.as_secs_f64() / PROGRESS_INTERVAL.as_secs_f64()).ceil() + 4.0;
    assert!(
        writes <= bound,
        "{writes} status writes in {:.1}s (at most {bound})",
        took.as_secs_f64()
    );

    harness::delete_policy(&client, name).await;
    drop(operator);
}
