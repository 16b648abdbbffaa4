//! What a platform team reads in status when its collector cannot hold the load:
//! the operator reads each collector pod's own metrics and names the loss and
//! the field to change in `Ready`'s message.
//!
//! kwok runs no containers, so the real tail sampler runs here with the config
//! the operator wrote into the sampler tier's ConfigMap, listening on a loopback
//! address that the test gives the kwok pod as its IP (the address the operator
//! reads, as it would read a real pod's). The router tier's pod keeps kwok's
//! unreachable IP, so status counts it as unreachable.

mod support;

#[path = "operator/harness.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use harness::*;
use support::jaeger::Jaeger;
use tracing_operator::api::{CollectorLosses, TracingPolicy};

/// Traces the collector is sized for per second: the smallest, so that a
/// burst of distinct traces overflows it (num_traces = 2 × rate × decision wait).
const SIZED_FOR: u32 = 1;
/// Distinct traces sent at once: many more than the 20 it holds.
const BURST: usize = 400;

fn losses(p: &TracingPolicy) -> Option<&CollectorLosses> {
    p.status.as_ref()?.collector.as_ref()?.losses.as_ref()
}

/// A loopback address of its own per run: the pod's "IP", where the
/// collector serves its metrics on the port the operator reads.
fn loopback_address() -> String {
    let n = std::process::id();
    format!(
        "127.{}.{}.{}",
        100 + (n >> 16) % 100,
        (n >> 8) % 250,
        1 + n % 250
    )
}

/// `count` one-span traces, each with its own trace ID, as OTLP/JSON.
fn traces(count: usize) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let spans: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "traceId": format!("{:032x}", (now << 20) + i as u128),
                "spanId": format!("{:016x}", i + 1),
                "name": "GET /burst",
                "kind": 2,
                "startTimeUnixNano": now.to_string(),
                "endTimeUnixNano": (now + 1_000_000).to_string(),
            })
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "gateway"}}]},
        "scopeSpans": [{"scope": {"name": "burst"}, "spans": spans}]
    }]})
    .to_string()
}

async fn sampler_pod(client: &Client, ns: &str, policy: &str) -> Pod {
    let selector = format!("app.kubernetes.io/instance={policy}-sampler");
    support::wait_until(
        &format!("the sampler pod of {policy} is Running in {ns}"),
        Duration::from_secs(90),
        || {
            let (api, selector) = (Api::<Pod>::namespaced(client.clone(), ns), selector.clone());
            async move {
                let pods = api
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                pods.items
                    .into_iter()
                    .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_tail_sampler_is_named_in_status_with_the_field_to_raise()
-> anyhow::Result<()> {
    let _operator = shared_operator();
    let client = support::client().await;
    let test = support::unique("coll-losses");
    let apps = namespace(&client, &test, &[]).await;
    let obs = support::fresh_namespace(&client, "coll-losses-obs", &[]).await;
    let _cleanup = support::Cleanup::new(&[&test], &[&apps, &obs]);
    create_deployment(
        &client,
        &apps,
        &deployment("gateway", &[], &[("gateway", "caas/gateway:2.4.1", &[])]),
    )
    .await;
    apply_policy(
        &client,
        &policy(
            &test,
            &test,
            json!({
                "collector": {"enabled": true, "placement": "Central", "namespace": obs, "replicas": 1, "sampling": {"replicas": 1}},
                "sampling": {"ratio": 0.1, "tail": {"keepErrors": true, "expectedTracesPerSecond": SIZED_FOR}}
            }),
        ),
    )
    .await;

    // The tail sampler the operator deployed, run here with its own config.
    let pod = sampler_pod(&client, &obs, &test).await;
    let pod_name = pod.metadata.name.clone().context("pod name")?;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &obs)
        .get(&format!("{test}-sampler"))
        .await?;
    let config_yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("collector.yaml"))
        .context("collector.yaml in the ConfigMap")?;
    let scratch = support::Scratch::new("collector-losses")?;
    let jaeger = Jaeger::start(scratch.path())?;
    let ip = loopback_address();
    let (http, grpc) = (support::free_port(), support::free_port());
    let config = scratch.path().join("collector.yaml");
    // The metrics port stays the one the operator reads; only the host is the pod's.
    let bind = support::collector::LocalBind {
        host: &ip,
        grpc,
        http,
        health: support::free_port(),
        metrics: tracing_operator::plan::collector::METRICS_PORT,
    };
    std::fs::write(
        &config,
        support::collector::local_config(config_yaml, &bind, jaeger.otlp_grpc)?,
    )?;
    let log = scratch.path().join("collector.log");
    let mut collector = Command::new(support::otelcol()?)
        .arg(format!("--config={}", config.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the collector")?;
    let _stop = KillOnDrop(&mut collector);

    // The kwok pod gets the address the collector listens on, as a kubelet would report it.
    Api::<Pod>::namespaced(client.clone(), &obs)
        .patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})),
        )
        .await?;

    // A burst of distinct traces, far more than it is sized to hold for its decision wait.
    let http_client = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{ip}:{http}/v1/traces");
    support::wait_until("the collector takes OTLP", Duration::from_secs(30), || {
        let (http_client, url) = (http_client.clone(), url.clone());
        async move {
            let response = http_client
                .post(&url)
                .header("content-type", "application/json")
                .body(traces(BURST))
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await;

    // Status names the loss and the field to raise; Ready stays True (advisory).
    let p = wait_policy_within(
        &client,
        &test,
        "status.collector.losses reports traces decided early",
        Duration::from_secs(150),
        |p| losses(p).is_some_and(|l| l.pods_read == 1 && l.traces_decided_early > 0),
    )
    .await;
    let l = losses(&p).context("losses")?;
    eprintln!(
        "[figures] {BURST} traces at a collector sized for {SIZED_FOR}/s: status.collector.losses = {l:?}"
    );
    // The router's pod has kwok's IP, where nothing answers.
    ensure!(l.pods_unreachable == 1, "{l:?}");
    ensure!(
        l.traces_decided_early <= BURST as u64,
        "more traces decided early than were sent: {l:?}"
    );
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .context("Ready")?;
    ensure!(ready.status == "True", "{ready:?}");
    ensure!(
        ready.message.contains(&format!(
            "the collector decided {} traces before their decision wait",
            l.traces_decided_early
        )) && ready
            .message
            .contains("raise spec.sampling.tail.expectedTracesPerSecond"),
        "{}\n{}",
        ready.message,
        support::log_tail("collector", &log)
    );

    delete_policy(&client, &test).await;
    Ok(())
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
