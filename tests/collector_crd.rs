//! The CRD refuses collector settings that would split traces or cannot work,
//! naming the field, and accepts what the two tiers need (tail sampling with
//! several routers and PerNamespace placement). Server-side dry runs against
//! the testbed's API server: nothing is stored.

#[path = "operator/harness.rs"]
mod harness;
mod support;

use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tracing_operator::api::TracingPolicy;

use harness::*;

/// The API server's answer to creating a policy with `spec` (dry run).
async fn create(client: &kube::Client, name: &str, spec: serde_json::Value) -> Result<(), String> {
    let p = policy(name, name, spec);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Api::<TracingPolicy>::all(client.clone())
        .create(&params, &p)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_rejects_what_would_split_traces_and_accepts_two_tiers() {
    let client = support::client().await;
    install_crd(&client).await;
    let name = support::unique("crd-tiers");

    // Tail sampling with several routers, per namespace: what used to be refused.
    let tiers = json!({
        "collector": {"enabled": true, "placement": "PerNamespace", "replicas": 3,
                      "autoscaling": {"maxReplicas": 6}, "sampling": {"replicas": 4}},
        "sampling": {"ratio": 0.1, "tail": {"keepErrors": true}}
    });
    create(&client, &name, tiers)
        .await
        .expect("two tiers with PerNamespace routers are accepted");

    // Services deciding their share of a trace each on their own split it.
    let split = create(
        &client,
        &name,
        json!({"sampling": {"parentBased": false, "head": {"ratio": 0.5},
                            "tail": {"keepErrors": true}},
               "collector": {"enabled": true}}),
    )
    .await
    .expect_err("parentBased false with a head ratio below 1 is refused");
    assert!(
        split.contains("spec.sampling.parentBased") && split.contains("splits traces"),
        "{split}"
    );

    // An autoscaler that could never reach its own minimum.
    let hpa = create(
        &client,
        &name,
        json!({"collector": {"enabled": true, "replicas": 4, "autoscaling": {"maxReplicas": 2}}}),
    )
    .await
    .expect_err("maxReplicas below replicas is refused");
    assert!(
        hpa.contains("spec.collector.autoscaling.maxReplicas"),
        "{hpa}"
    );
}
