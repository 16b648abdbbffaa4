//! The operator's own logs and traces.
//!
//! Logs go to stderr as text or JSON, filtered by `RUST_LOG` (default `info`).
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, the operator's spans are also exported over OTLP http/protobuf; the SDK
//! reads the rest of its settings (headers, timeout, sampler, resource
//! attributes) from the standard `OTEL_*` variables. `service.name` defaults to
//! `tracing-operator`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RUST_LOG: {0}")]
    Filter(#[from] tracing_subscriber::filter::FromEnvError),
    #[error("OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the span exporter alive; dropping it flushes the spans not yet sent.
#[must_use = "dropping the guard shuts the span exporter down"]
#[derive(Debug)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing the operator's spans failed");
        }
    }
}

/// Whether the environment asks for OTLP export of the operator's spans.
pub fn otlp_requested(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Whether the environment already names the service (else it is `tracing-operator`).
fn service_name_set(env: impl Fn(&str) -> Option<String>) -> bool {
    env("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        })
}

/// Installs the global subscriber: logs in `format`, plus OTLP span export when
/// the environment asks for it. Keep the returned guard until the process ends.
pub fn init(format: LogFormat) -> Result<Guard, Error> {
    let env = |name: &str| std::env::var(name).ok();
    let filter = match env(EnvFilter::DEFAULT_ENV) {
        Some(directives) if !directives.trim().is_empty() => EnvFilter::try_from_default_env()?,
        _ => EnvFilter::new("info"),
    };
    // Colours only on a terminal: container logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && env("NO_COLOR").is_none();
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = if otlp_requested(env) {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()?;
        let mut resource = Resource::builder();
        if !service_name_set(env) {
            resource = resource.with_service_name("tracing-operator");
        }
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        )
    } else {
        None
    };
    let spans = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tracing-operator")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init()?;
    if provider.is_some() {
        tracing::info!("exporting the operator's spans over OTLP");
    }
    Ok(Guard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn otlp_export_only_when_an_endpoint_is_set_and_the_sdk_is_not_disabled() {
        assert!(!otlp_requested(env(&[])));
        assert!(!otlp_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(otlp_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(otlp_requested(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])));
        assert!(!otlp_requested(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE")
        ])));
    }

    #[test]
    fn the_service_name_defaults_unless_the_environment_names_it() {
        assert!(!service_name_set(env(&[])));
        assert!(service_name_set(env(&[("OTEL_SERVICE_NAME", "ops")])));
        assert!(service_name_set(env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "team=caas, service.name=ops"
        )])));
        assert!(!service_name_set(env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.namespace=caas"
        )])));
    }
}
