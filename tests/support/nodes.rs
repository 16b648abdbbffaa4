//! A kwok node of one test's own, so that the test can cordon it (a drain, a
//! full cluster) without touching the nodes every other test schedules on.
//!
//! The node carries a taint that only pods with [`DedicatedNode::pod_placement`]
//! tolerate, and a label those pods select: nothing else lands on it, and the
//! test's pods land nowhere else.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};

use super::{kubectl_ok, unique, wait_until};

/// The label and taint key of dedicated nodes; the value names the node.
pub const DEDICATED: &str = "tracing-test.caas.io/dedicated";

/// A kwok-managed node, deleted when dropped.
pub struct DedicatedNode {
    pub name: String,
}

impl DedicatedNode {
    /// Creates the node and waits until it is Ready and schedulable (kwok reports
    /// it Ready; the node-lifecycle controller then lifts its not-ready taint).
    pub async fn create(client: &Client, prefix: &str) -> DedicatedNode {
        let name = unique(prefix);
        // A pod CIDR of its own, outside the testbed's 10.64.0.0/10 node ranges.
        let n = name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        let cidr = format!("10.{}.{}.0/24", 200 + (n % 50), (n / 50) % 256);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {DEDICATED: name, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
            },
            "spec": {
                "podCIDR": cidr,
                "podCIDRs": [cidr],
                "taints": [{"key": DEDICATED, "value": name, "effect": "NoSchedule"}]
            },
            "status": {
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"}
            }
        }))
        .expect("node manifest");
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("dedicated node created");
        wait_until(
            &format!("node {name} is Ready and schedulable"),
            Duration::from_secs(90),
            || {
                let nodes = nodes.clone();
                let name = name.clone();
                async move {
                    let node = nodes.get(&name).await.ok()?;
                    let ready = node
                        .status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    let only_ours = node
                        .spec
                        .as_ref()?
                        .taints
                        .as_ref()
                        .is_none_or(|t| t.iter().all(|t| t.key == DEDICATED));
                    (ready && only_ours).then_some(())
                }
            },
        )
        .await;
        DedicatedNode { name }
    }

    /// `spec.template.spec` fields that put a pod on this node and nowhere else.
    pub fn pod_placement(&self) -> Value {
        json!({
            "nodeSelector": {DEDICATED: self.name},
            "tolerations": [{"key": DEDICATED, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}]
        })
    }

    /// `kubectl cordon`: no new pod is scheduled here; running pods stay.
    pub fn cordon(&self) {
        kubectl_ok(&["cordon", &self.name]);
    }

    /// `kubectl uncordon`.
    pub fn uncordon(&self) {
        kubectl_ok(&["uncordon", &self.name]);
    }
}

impl Drop for DedicatedNode {
    fn drop(&mut self) {
        // kubectl, not the client: drop may run while a test panics, outside its runtime.
        let _ = super::kubectl()
            .args([
                "delete",
                "node",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}
