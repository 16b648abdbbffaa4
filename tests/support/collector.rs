//! The operator's collector config, run here as a local process: bound to a
//! local address instead of the pod's, exporting to a local Jaeger.

use anyhow::ensure;
use serde_json::{Value, json};

/// Where a local collector listens.
pub struct LocalBind<'a> {
    /// The address it listens on: 127.0.0.1, or a loopback address that stands
    /// in for its pod's IP.
    pub host: &'a str,
    pub grpc: u16,
    pub http: u16,
    pub health: u16,
    /// Its own metrics (`:8888` in the operator's config).
    pub metrics: u16,
}

/// `config_yaml` (as the operator generated it) with the OTLP receivers, the
/// health check and the metrics bound to `bind`, and nothing else changed.
pub fn bound(config_yaml: &str, bind: &LocalBind<'_>) -> anyhow::Result<Value> {
    let host = bind.host;
    let mut c: Value = serde_saphyr::from_str(config_yaml)?;
    let protocols = &mut c["receivers"]["otlp"]["protocols"];
    protocols["grpc"]["endpoint"] = json!(format!("{host}:{}", bind.grpc));
    protocols["http"]["endpoint"] = json!(format!("{host}:{}", bind.http));
    c["extensions"]["health_check"]["endpoint"] = json!(format!("{host}:{}", bind.health));
    let prom =
        &mut c["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"];
    ensure!(prom.is_object(), "no Prometheus reader in {c}");
    prom["host"] = json!(host);
    prom["port"] = json!(bind.metrics);
    Ok(c)
}

/// [`bound`], with the `jaeger` backend's exporter sending to the local
/// Jaeger's OTLP/gRPC port.
pub fn local_config(
    config_yaml: &str,
    bind: &LocalBind<'_>,
    jaeger_otlp_grpc: u16,
) -> anyhow::Result<String> {
    let mut c = bound(config_yaml, bind)?;
    let exporter = &mut c["exporters"]["otlp_grpc/jaeger"];
    ensure!(exporter.is_object(), "no otlp_grpc/jaeger exporter in {c}");
    exporter["endpoint"] = json!(format!("http://127.0.0.1:{jaeger_otlp_grpc}"));
    Ok(serde_saphyr::to_string(&c)?)
}
