//! Reads the policy's collector pods' own metrics (`:8888/metrics`) so status
//! can say what they lost: spans refused to the SDKs or not delivered, and
//! traces the tail sampler had to decide before their decision wait.
//!
//! Each pod is read directly by its IP, not through the Service, which would
//! answer from one replica at a time. A policy's pods are read at most once per
//! [`READ_EVERY`], in the background; reconciles use the last reading. A pod that
//! does not answer is counted as unreachable and never fails or slows the
//! reconcile: the figures are advisory.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client};
use tracing::debug;

use super::cache::Cache;
use crate::api::CollectorLosses;
use crate::plan::collector::objects::tier_selector;
use crate::plan::collector::{METRICS_PORT, TierRef, metrics};

/// How often a policy's collector pods are read, and so how often a policy
/// with a collector is reconciled when nothing else happens.
pub const READ_EVERY: Duration = Duration::from_secs(60);

/// How long one pod may take to answer.
const POD_TIMEOUT: Duration = Duration::from_secs(3);

/// The last reading per policy.
#[derive(Default)]
struct Reading {
    losses: Option<CollectorLosses>,
    read_at: Option<Instant>,
    in_flight: bool,
}

type Readings = Arc<Mutex<HashMap<String, Reading>>>;

/// Reads in the background: a reconcile never waits for a pod to answer.
pub struct CollectorLossReader {
    http: Option<reqwest::Client>,
    readings: Readings,
}

impl Default for CollectorLossReader {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(POD_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|error| {
                tracing::warn!(%error, "no HTTP client: collector losses are not read");
            })
            .ok();
        CollectorLossReader {
            http,
            readings: Readings::default(),
        }
    }
}

impl CollectorLossReader {
    /// The last reading of what the collectors of `policy` in `tiers`
    /// lost (`None` until a pod answered). When it is older than [`READ_EVERY`], a
    /// new one starts in the background, and a reading that differs from the
    /// last triggers `policy` through `cache`, so status shows it.
    pub fn losses(
        &self,
        client: &Client,
        cache: &Arc<Cache>,
        policy: &str,
        tiers: BTreeSet<TierRef>,
    ) -> Option<CollectorLosses> {
        let now = Instant::now();
        let mut readings = locked(&self.readings);
        let reading = readings.entry(policy.to_string()).or_default();
        let stale = reading
            .read_at
            .is_none_or(|at| now.duration_since(at) >= READ_EVERY);
        if stale
            && !reading.in_flight
            && let Some(http) = self.http.clone()
        {
            reading.in_flight = true;
            // Staleness counts from the start of a read, so the next one starts
            // on the requeue READ_EVERY later, however long this one takes.
            reading.read_at = Some(now);
            let (client, cache, readings) = (client.clone(), cache.clone(), self.readings.clone());
            let policy = policy.to_string();
            tokio::spawn(async move {
                let losses = read(&http, &client, &policy, &tiers).await;
                let changed = {
                    let mut readings = locked(&readings);
                    // A policy forgotten meanwhile stays forgotten.
                    let Some(reading) = readings.get_mut(&policy) else {
                        return;
                    };
                    reading.in_flight = false;
                    let changed = reading.losses != losses;
                    reading.losses = losses;
                    changed
                };
                if changed {
                    cache.trigger(&policy);
                }
            });
        }
        reading.losses.clone()
    }

    /// Drops the reading of a deleted policy.
    pub fn forget(&self, policy: &str) {
        locked(&self.readings).remove(policy);
    }
}

fn locked(readings: &Readings) -> std::sync::MutexGuard<'_, HashMap<String, Reading>> {
    readings
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One reading of every running collector pod of `policy`; `None` when the
/// pods cannot be listed or none answered.
async fn read(
    http: &reqwest::Client,
    client: &Client,
    policy: &str,
    tiers: &BTreeSet<TierRef>,
) -> Option<CollectorLosses> {
    let mut addresses = Vec::new();
    for tier in tiers {
        let selector: Selector = tier_selector(policy, tier.tier).into_iter().collect();
        let params = ListParams::default().labels_from(&selector);
        let api = Api::<Pod>::namespaced(client.clone(), &tier.namespace);
        let pods = match api.list(&params).await {
            Ok(pods) => pods,
            Err(error) => {
                debug!(%policy, namespace = %tier.namespace, %error, "cannot list the collector pods");
                return None;
            }
        };
        addresses.extend(pods.items.iter().filter_map(metrics_address));
    }
    if addresses.is_empty() {
        return None;
    }
    let readings = join_all(addresses.iter().map(|addr| scrape(http, *addr))).await;
    let unreachable = readings.iter().filter(|r| r.is_none()).count();
    let read: Vec<_> = readings.into_iter().flatten().collect();
    if read.is_empty() {
        // Nothing learnt: status keeps no figure rather than a count of
        // unreachable pods that would say nothing about what was lost.
        debug!(%policy, unreachable, "no collector pod answered");
        return None;
    }
    Some(metrics::losses(&read, unreachable))
}

/// Where a running collector pod serves its metrics.
fn metrics_address(pod: &Pod) -> Option<SocketAddr> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(ip, METRICS_PORT))
}

async fn scrape(http: &reqwest::Client, addr: SocketAddr) -> Option<metrics::TailStats> {
    let url = format!("http://{addr}/metrics");
    let response = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    match response {
        Ok(response) => match response.text().await {
            Ok(text) => Some(metrics::parse(&text)),
            Err(error) => {
                debug!(%url, %error, "collector metrics unreadable");
                None
            }
        },
        Err(error) => {
            debug!(%url, %error, "collector metrics unreachable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c"},
            "status": {"phase": phase, "podIP": ip},
        }))
        .expect("pod parses")
    }

    #[test]
    fn only_running_pods_with_an_ip_are_read() {
        assert_eq!(
            metrics_address(&pod("Running", Some("10.64.0.7"))),
            Some(SocketAddr::from(([10, 64, 0, 7], METRICS_PORT)))
        );
        assert_eq!(
            metrics_address(&pod("Running", Some("fd00::7"))).map(|a| a.to_string()),
            Some(format!("[fd00::7]:{METRICS_PORT}"))
        );
        assert_eq!(metrics_address(&pod("Pending", Some("10.64.0.7"))), None);
        assert_eq!(metrics_address(&pod("Running", None)), None);
        assert_eq!(metrics_address(&pod("Running", Some("not-an-ip"))), None);
    }
}
