//! What the operator process needs around the controller: metrics, the
//! health/metrics HTTP server, leader election and its own telemetry.

pub mod leader;
pub mod metrics;
pub mod server;
pub mod telemetry;
