//! tracing-operator: rolls OpenTelemetry tracing out across a Kubernetes cluster
//! from one `TracingPolicy`.
//!
//! The data path is watch -> snapshot -> [`plan`] (pure) -> apply -> status.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod plan;
pub mod runtime;
pub mod workload;
