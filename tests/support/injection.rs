//! What admission injection put into pods, read the way the kubelet and the
//! application see it, and the operator's MutatingAdmissionPolicy probed with
//! server-side dry runs (admission runs, nothing is stored).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::pod::kubelet_env;
use super::wait_until;

/// The name of the operator's MutatingAdmissionPolicy and of its binding.
pub const ADMISSION_POLICY: &str = "tracing-operator.tracing.caas.io";

/// The pods in `ns` matching the label selector `selector`, without those being deleted.
pub async fn pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Container `name` of `pod` (not an init container).
pub fn container<'p>(pod: &'p Pod, name: &str) -> &'p Container {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("pod {} has no container {name}", pod.name_any()))
}

/// The names of `c`'s env entries, in order.
pub fn env_names(c: &Container) -> Vec<String> {
    c.env.iter().flatten().map(|e| e.name.clone()).collect()
}

/// The value (not `valueFrom`) of `c`'s entry `name`.
pub fn env_value<'c>(c: &'c Container, name: &str) -> Option<&'c str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// `c`'s env entries whose name starts with `OTEL_`.
pub fn otel_names(c: &Container) -> Vec<String> {
    env_names(c)
        .into_iter()
        .filter(|n| n.starts_with("OTEL_"))
        .collect()
}

/// The `$(NAME)` references in `value`, as the kubelet reads them (`$$` is an
/// escaped `$`, a reference runs to the first `)`).
pub fn references(value: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            rest = stripped;
        } else if let Some(open) = after.strip_prefix('(') {
            match open.find(')') {
                Some(close) => {
                    found.push(&open[..close]);
                    rest = &open[close + 1..];
                }
                None => break,
            }
        } else {
            rest = after;
        }
    }
    found
}

/// Every `$(VAR)` in `c`'s env names an entry listed before it (the kubelet
/// expands a reference only against earlier entries and leaves any other as
/// written); `Err` names the first entry that breaks this.
pub fn references_resolve(c: &Container) -> Result<(), String> {
    let mut earlier: Vec<&str> = Vec::new();
    for e in c.env.iter().flatten() {
        for r in references(e.value.as_deref().unwrap_or_default()) {
            if !earlier.contains(&r) {
                return Err(format!(
                    "container {}: {} refers to $({r}), which is not an earlier entry (order: {:?})",
                    c.name,
                    e.name,
                    env_names(c)
                ));
            }
        }
        earlier.push(&e.name);
    }
    Ok(())
}

/// The container's environment as its process gets it (the kubelet's expansion
/// and downward API; see [`super::pod::kubelet_env`]).
pub fn process_env(pod: &Pod, container: &str) -> BTreeMap<String, String> {
    kubelet_env(pod, container)
        .unwrap_or_else(|e| panic!("env of {}/{container}: {e}", pod.name_any()))
        .into_iter()
        .collect()
}

/// `OTEL_RESOURCE_ATTRIBUTES` as the process gets it, as `key -> value`.
pub fn resource_attributes(pod: &Pod, container: &str) -> BTreeMap<String, String> {
    let env = process_env(pod, container);
    let raw = env.get("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_else(|| {
        panic!(
            "{}/{container} has no OTEL_RESOURCE_ATTRIBUTES",
            pod.name_any()
        )
    });
    raw.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What admission makes of `pod` in `ns`: a server-side dry-run create (every
/// admission plugin runs, nothing is stored).
pub async fn admitted(client: &Client, ns: &str, pod: &Pod) -> Pod {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&params, pod)
        .await
        .expect("dry-run create of a pod")
}

/// A bare pod with one container `app` carrying a one-variable plan in the
/// annotations the operator writes (`OTEL_SERVICE_NAME=probe`), plus `extra`.
pub fn probe_pod(extra: &[(&str, &str)]) -> Pod {
    let mut annotations = BTreeMap::from([
        ("tracing.caas.io/inject".to_string(), "app".to_string()),
        (
            "tracing.caas.io/env".to_string(),
            "OTEL_SERVICE_NAME".to_string(),
        ),
        (
            "env.tracing.caas.io/OTEL_SERVICE_NAME".to_string(),
            "probe".to_string(),
        ),
    ]);
    for (k, v) in extra {
        annotations.insert(k.to_string(), v.to_string());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "admission-probe-", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.local/probe:1"}]}
    }))
    .expect("probe pod manifest")
}

/// Waits until the operator's admission policy is (`true`) or is not (`false`)
/// in force in `ns`: a dry-run [`probe_pod`] comes back with, or without, its
/// variable. A new or deleted binding takes a moment to reach the API server's
/// admission plugin.
pub async fn wait_admission(client: &Client, ns: &str, in_force: bool) {
    let probe = probe_pod(&[]);
    wait_until(
        &format!(
            "the MutatingAdmissionPolicy {ADMISSION_POLICY} is {}in force in {ns}",
            if in_force { "" } else { "no longer " }
        ),
        Duration::from_secs(60),
        || async {
            let pod = admitted(client, ns, &probe).await;
            let injected = env_value(container(&pod, "app"), "OTEL_SERVICE_NAME") == Some("probe");
            (injected == in_force).then_some(())
        },
    )
    .await;
}
