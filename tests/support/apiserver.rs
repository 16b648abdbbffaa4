//! What the API server itself counts, read from its `/metrics`: the independent
//! witness of how many writes the operator made.

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};

/// Resources the operator writes; the API server's mutating requests on them are
/// counted (the workload controllers' status writes show as `PUT <resource>/status`).
pub const OPERATOR_RESOURCES: [&str; 6] = [
    "deployments",
    "statefulsets",
    "daemonsets",
    "tracingpolicies",
    "configmaps",
    "services",
];
const MUTATING: [&str; 5] = ["APPLY", "PATCH", "POST", "PUT", "DELETE"];

/// Mutating requests (dry runs excepted) the API server has served on
/// [`OPERATOR_RESOURCES`], by `VERB resource` or `VERB resource/subresource`.
pub fn writes() -> anyhow::Result<BTreeMap<String, u64>> {
    let out = super::kubectl()
        .args(["get", "--raw", "/metrics"])
        .output()
        .context("running kubectl get --raw /metrics")?;
    ensure!(
        out.status.success(),
        "kubectl get --raw /metrics: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(writes_in(&String::from_utf8_lossy(&out.stdout)))
}

fn writes_in(metrics: &str) -> BTreeMap<String, u64> {
    let mut writes = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        // Anchored on `{` or `,` so that `resource` does not match `subresource`.
        let label = |name: &str| {
            let key = format!("{name}=\"");
            line.find(&format!(",{key}"))
                .or_else(|| line.find(&format!("{{{key}")))
                .map(|i| i + 1 + key.len())
                .and_then(|start| line[start..].split('"').next())
        };
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
            continue;
        };
        if !MUTATING.contains(&verb)
            || !OPERATOR_RESOURCES.contains(&resource)
            || label("dry_run").is_some_and(|d| !d.is_empty())
        {
            continue;
        }
        let key = match label("subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        *writes.entry(key).or_insert(0) += value as u64;
    }
    writes
}
