//! TracingPolicies sent through the API server's validation and admission
//! without being stored (`dryRun=All`), to see what an admission policy says.

use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::core::Status;
use kube::{Api, Client};
use serde_json::Value;
use tracing_operator::api::TracingPolicy;

use super::wait_until;

/// Creates `policy` (a whole TracingPolicy as JSON) as a server-side dry run:
/// `Ok` when the API server would store it, else the status it refused it with.
pub async fn dry_run_create(client: &Client, policy: &Value) -> Result<(), Box<Status>> {
    let object: DynamicObject =
        serde_json::from_value(policy.clone()).expect("the policy is an object");
    let api =
        Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<TracingPolicy>(&()));
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status),
        Err(other) => panic!("dry-run create of a TracingPolicy: {other}"),
    }
}

/// Waits until the admission policy `admission_policy` refuses `policy` (a new
/// admission policy takes a moment to be enforced) and returns the refusal.
pub async fn wait_refused_by(client: &Client, admission_policy: &str, policy: &Value) -> Status {
    let marker = format!("ValidatingAdmissionPolicy '{admission_policy}'");
    let status = wait_until(
        &format!("{admission_policy} refuses a policy outside the collector settings"),
        Duration::from_secs(60),
        || async {
            match dry_run_create(client, policy).await {
                Err(status) if status.message.contains(&marker) => Some(status),
                _ => None,
            }
        },
    )
    .await;
    *status
}

/// What the admission policy said after `denied request: `: the violations.
pub fn denial(status: &Status) -> &str {
    status
        .message
        .split_once("denied request: ")
        .map_or(status.message.as_str(), |(_, rest)| rest)
}
