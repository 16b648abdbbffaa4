//! The annotations that keep the rollout's state on each workload, written with
//! the same server-side apply that changes its template:
//! - `tracing.caas.io/config-hash`: the settings the template carries;
//! - `tracing.caas.io/applied-at`: when the operator last changed the template
//!   (the progress deadline counts from it);
//! - `tracing.caas.io/rolled-out`: the config hash whose rollout the workload's
//!   controller reported complete (from then on the workload's availability is
//!   its own business);
//! - `tracing.caas.io/injection`: what the operator found on a pod once it rolled
//!   out (admission injection);
//! - `tracing.caas.io/rollout-failed` and `tracing.caas.io/rollout-failure`: the
//!   config hash whose rollout failed and was rolled back, and why (the rollback
//!   apply carries only these, the policy annotation and a new applied-at, so
//!   server-side apply drops the operator's settings and config hash in the same
//!   write).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::{REASON_DEADLINE_EXCEEDED, REASON_PODS_NOT_READY, REASON_ROLLED_BACK, stamp_time};
use crate::api::{
    APPLIED_AT_ANNOTATION, CONFIG_HASH_ANNOTATION, INJECTION_ANNOTATION, POLICY_ANNOTATION,
    ROLLED_OUT_ANNOTATION, ROLLOUT_FAILED_ANNOTATION, ROLLOUT_FAILURE_ANNOTATION,
};

/// The `applied-at` value for `now`: RFC 3339 in UTC, whole seconds, for example
/// `2025-03-01T12:00:00Z`.
pub fn format_applied_at(now: Timestamp) -> String {
    stamp_time(now).to_string()
}

/// Reads an `applied-at` value; `None` for anything that is not an RFC 3339 time
/// with an offset.
pub fn parse_applied_at(value: &str) -> Option<Timestamp> {
    value.trim().parse().ok()
}

/// The policy and config-hash annotations every apply of a plan carries.
fn carrying(policy: &str, config_hash: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (POLICY_ANNOTATION.to_string(), policy.to_string()),
        (CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string()),
    ])
}

/// The operator's annotations on a workload that carries `config_hash`, stamped
/// at `now`: what an apply of the plan writes (`Start`, `Restamp`).
pub fn applied_annotations(
    policy: &str,
    config_hash: &str,
    now: Timestamp,
) -> BTreeMap<String, String> {
    let mut a = carrying(policy, config_hash);
    a.insert(APPLIED_AT_ANNOTATION.to_string(), format_applied_at(now));
    a
}

/// The annotations that record a completed rollout of `config_hash` (`Record`):
/// the live `applied-at` is kept as it is, and `injection` is what a check of a
/// pod found (`None` where nothing was checked).
pub fn recorded_annotations(
    policy: &str,
    config_hash: &str,
    applied_at: Option<&str>,
    injection: Option<&str>,
) -> BTreeMap<String, String> {
    let mut a = carrying(policy, config_hash);
    if let Some(at) = applied_at {
        a.insert(APPLIED_AT_ANNOTATION.to_string(), at.to_string());
    }
    a.insert(ROLLED_OUT_ANNOTATION.to_string(), config_hash.to_string());
    if let Some(found) = injection {
        a.insert(INJECTION_ANNOTATION.to_string(), found.to_string());
    }
    a
}

/// The annotations of a workload its owner paused mid-rollout (`OwnerPaused {
/// release: true }`): the plan stays, `applied-at` goes, so the deadline counts
/// again from the resume.
pub fn released_annotations(policy: &str, config_hash: &str) -> BTreeMap<String, String> {
    carrying(policy, config_hash)
}

/// The operator's annotations on a workload whose rollout of `failed_hash` is
/// rolled back at `now` because of `reason`/`message` (from the `RollBack` step):
/// what the rollback apply writes, with no template settings. The policy
/// annotation stays so the workload is still this policy's (deleting the policy
/// cleans it up); applied-at times the rollback's own rollout; the failure is
/// recorded so status keeps its cause.
pub fn rollback_annotations(
    policy: &str,
    failed_hash: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (POLICY_ANNOTATION.to_string(), policy.to_string()),
        (
            ROLLOUT_FAILED_ANNOTATION.to_string(),
            failed_hash.to_string(),
        ),
        (
            ROLLOUT_FAILURE_ANNOTATION.to_string(),
            format!("{reason}: {message}"),
        ),
        (APPLIED_AT_ANNOTATION.to_string(), format_applied_at(now)),
    ])
}

/// The status message of a rolled-back workload, the same in the reconcile that
/// rolls it back and in every later one (so status does not change between them).
pub fn rolled_back_message(message: &str) -> String {
    format!("{message}; rolled back, and applied again only when this workload's settings change")
}

/// The reason and message a rollback recorded; a missing or unknown record reads
/// as `RolledBack` with a message naming the config.
pub(super) fn recorded_failure(note: Option<&str>, hash: &str) -> (&'static str, String) {
    let known = [REASON_PODS_NOT_READY, REASON_DEADLINE_EXCEEDED];
    if let Some((reason, message)) = note.and_then(|n| n.split_once(": "))
        && let Some(reason) = known.into_iter().find(|k| *k == reason)
    {
        return (reason, message.to_string());
    }
    (
        REASON_ROLLED_BACK,
        format!("config {hash} did not roll out within the progress deadline"),
    )
}
