//! Bad input is rejected by the API server at apply time, naming the field.
//! No operator is involved: this is the CRD's schema and CEL rules at work.

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use tracing_operator::api::TracingPolicy;

use crate::harness::install_crd;
use crate::support;

fn valid_spec() -> Value {
    json!({
        "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger.observability.svc:4317"}]
    })
}

fn with(path: &[&str], value: Value) -> Value {
    let mut spec = valid_spec();
    let mut cursor = &mut spec;
    for (i, key) in path.iter().enumerate() {
        if i + 1 == path.len() {
            cursor[*key] = value.clone();
        } else {
            if cursor.get(*key).is_none() {
                cursor[*key] = json!({});
            }
            cursor = &mut cursor[*key];
        }
    }
    spec
}

/// Submits the policy both ways users do, as a server-side dry run: a create
/// (`kubectl create`, or client-side `kubectl apply` of a new object) and a
/// server-side apply (`kubectl apply --server-side`, GitOps tools). `Err` carries
/// the messages of the rejections; a policy only one path rejects is reported too.
async fn apply(client: &Client, name: &str, spec: Value) -> Result<(), String> {
    let resource = ApiResource::erase::<TracingPolicy>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let body = json!({"apiVersion": "tracing.caas.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name}, "spec": spec});
    let object: DynamicObject = serde_json::from_value(body.clone()).map_err(|e| e.to_string())?;
    let created = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &object,
        )
        .await;
    let applied = api
        .patch(
            name,
            &PatchParams::apply("kubectl").dry_run(),
            &Patch::Apply(&body),
        )
        .await;
    match (created, applied) {
        (Ok(_), Ok(_)) => Ok(()),
        (Err(c), Err(a)) => Err(format!("create: {c}\nserver-side apply: {a}")),
        (Ok(_), Err(a)) => Err(format!(
            "ACCEPTED by create, rejected by server-side apply: {a}"
        )),
        (Err(c), Ok(_)) => Err(format!(
            "rejected by create: {c}, ACCEPTED by server-side apply"
        )),
    }
}

/// Both paths rejected the policy and every message names `field`.
fn names_field(message: &str, field: &str) -> bool {
    !message.contains("ACCEPTED") && message.lines().all(|line| line.contains(field))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_rejected_naming_the_field() {
    let client = support::client().await;
    install_crd(&client).await;

    // The baseline is accepted, so each rejection below is due to its one change.
    apply(&client, "valid", valid_spec())
        .await
        .expect("the baseline policy is valid");

    let backend = |extra: Value| {
        let mut b = json!({"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger:4317"});
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                b.insert(k.clone(), v.clone());
            }
        }
        json!([b])
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "ratio above 1",
            with(&["sampling", "ratio"], json!(1.5)),
            "spec.sampling.ratio",
        ),
        (
            "negative ratio",
            with(&["sampling", "ratio"], json!(-0.1)),
            "spec.sampling.ratio",
        ),
        (
            "service ratio above 1",
            with(
                &["sampling", "services"],
                json!([{"name": "auth", "ratio": 2}]),
            ),
            "spec.sampling.services[0].ratio",
        ),
        (
            "tail ratio above 1",
            with(&["sampling", "tail"], json!({"ratio": 1.01})),
            "spec.sampling.tail.ratio",
        ),
        (
            "duplicate service overrides",
            with(
                &["sampling", "services"],
                json!([{"name": "auth", "ratio": 1}, {"name": "auth", "ratio": 0.5}]),
            ),
            "spec.sampling.services",
        ),
        ("unknown mode", with(&["mode"], json!("Audit")), "spec.mode"),
        (
            "unknown propagator",
            with(&["propagators"], json!(["tracecontext", "zipkin"])),
            "spec.propagators[1]",
        ),
        (
            "none with another propagator",
            with(&["propagators"], json!(["none", "b3"])),
            "spec.propagators",
        ),
        (
            "unknown kind",
            with(&["selector", "kinds"], json!(["Job"])),
            "spec.selector.kinds[0]",
        ),
        (
            "empty backends",
            with(&["backends"], json!([])),
            "spec.backends",
        ),
        ("no backends", json!({}), "spec.backends"),
        (
            "unknown backend type",
            json!({"backends": [{"name": "z", "type": "zipkin", "endpoint": "http://z:9411"}]}),
            "spec.backends[0].type",
        ),
        (
            "malformed endpoint",
            json!({"backends": backend(json!({"endpoint": "jaeger:4317"}))}),
            "spec.backends[0].endpoint",
        ),
        (
            "endpoint with a bad scheme",
            json!({"backends": backend(json!({"endpoint": "ftp://jaeger:4317"}))}),
            "spec.backends[0].endpoint",
        ),
        (
            "unknown protocol",
            json!({"backends": backend(json!({"protocol": "thrift"}))}),
            "spec.backends[0].protocol",
        ),
        (
            "duplicate backend names",
            json!({"backends": [
            {"name": "a", "type": "otlp", "endpoint": "http://a:4317"},
            {"name": "a", "type": "otlp", "endpoint": "http://b:4317"}]}),
            "spec.backends",
        ),
        (
            "insecure with a CA",
            json!({"backends": backend(json!({"tls": {"insecure": true, "caSecretRef": {"name": "ca", "key": "ca.crt"}}}))}),
            "spec.backends[0].tls",
        ),
        (
            "maxConcurrent 0",
            with(&["rollout", "maxConcurrent"], json!(0)),
            "spec.rollout.maxConcurrent",
        ),
        (
            "unknown rollout strategy",
            with(&["rollout", "strategy"], json!("BlueGreen")),
            "spec.rollout.strategy",
        ),
        (
            "unknown onFailure",
            with(&["rollout", "onFailure"], json!("Retry")),
            "spec.rollout.onFailure",
        ),
        (
            "malformed progressDeadline",
            with(&["rollout", "progressDeadline"], json!("ten minutes")),
            "spec.rollout.progressDeadline",
        ),
        (
            "malformed slowerThan",
            with(&["sampling", "tail"], json!({"slowerThan": "500"})),
            "spec.sampling.tail.slowerThan",
        ),
        (
            "tail rule with the collector off",
            json!({"collector": {"enabled": false}, "sampling": {"tail": {"keepErrors": true}},
            "backends": backend(json!({}))}),
            "spec.sampling.tail",
        ),
        (
            "collector off with two backends",
            json!({"collector": {"enabled": false}, "backends": [
            {"name": "a", "type": "otlp", "endpoint": "http://a:4317"},
            {"name": "b", "type": "otlp", "endpoint": "http://b:4317"}]}),
            "spec.backends",
        ),
        (
            "unknown placement",
            with(&["collector", "placement"], json!("Sidecar")),
            "spec.collector.placement",
        ),
        (
            "zero collector replicas",
            with(&["collector", "replicas"], json!(0)),
            "spec.collector.replicas",
        ),
        (
            "env name the operator owns",
            with(
                &["env"],
                json!([{"name": "OTEL_SERVICE_NAME", "value": "x"}]),
            ),
            "spec.env[0].name",
        ),
        (
            "invalid env name",
            with(&["env"], json!([{"name": "1BAD NAME", "value": "x"}])),
            "spec.env[0].name",
        ),
        (
            "invalid excluded namespace",
            with(
                &["selector", "excludeNamespaces"],
                json!(["Not_A_Namespace"]),
            ),
            "spec.selector.excludeNamespaces[0]",
        ),
        (
            "tail with no rule",
            with(&["sampling", "tail"], json!({"keepErrors": false})),
            "spec.sampling.tail",
        ),
    ];
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (i, (what, spec, field)) in cases.into_iter().enumerate() {
        match apply(&client, &format!("invalid-{i}"), spec).await {
            Ok(()) => failures.push(format!(
                "{what}: accepted, should be rejected naming {field}"
            )),
            Err(message) if !names_field(&message, field) => failures.push(format!(
                "{what}: rejected, but the message does not name {field}: {message}"
            )),
            Err(_) => {}
        }
    }
    // A name that cannot name the collector objects.
    match apply(&client, "caas.production", valid_spec()).await {
        Ok(()) => failures.push("an invalid policy name was accepted".into()),
        Err(message) if !names_field(&message, "metadata.name") => {
            failures.push(format!("bad name: {message}"))
        }
        Err(_) => {}
    }
    assert!(
        failures.is_empty(),
        "{} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
