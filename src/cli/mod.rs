//! Commands for the people who run the operator, beside `run` and `crd`:
//! [`why`] explains one workload (also as the kubectl plugin `kubectl-tracing`).

pub mod why;
