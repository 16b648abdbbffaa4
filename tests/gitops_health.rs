//! What GitOps tools make of a TracingPolicy's status, computed by the real tools
//! (no cluster): Flux's health checks (kstatus from sigs.k8s.io/cli-utils) and the
//! chart's Argo CD health check (`charts/tracing-operator/argocd/health.lua`, run
//! the way Argo CD runs an `argocd-cm` customization). Plus promtool, which the
//! alert rules will be checked with.

mod support;

use serde_json::{Value, json};

use support::tools::{argocd_health, kstatus, promtool};

/// Conditions as the operator writes them (metav1.Conditions for `generation`),
/// from `(type, status, reason, message)`.
fn conditions(generation: i64, list: &[(&str, bool, &str, &str)]) -> Vec<Value> {
    list.iter()
        .map(|(type_, status, reason, message)| {
            json!({
                "type": type_,
                "status": if *status { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": "2026-11-20T10:00:00Z",
            })
        })
        .collect()
}

/// A TracingPolicy at `generation` whose status the operator wrote for
/// `observed` with `conditions`.
fn policy(generation: i64, observed: i64, conditions: Vec<Value>) -> Value {
    let mut object = policy_without_status(generation);
    object["status"] = json!({
        "observedGeneration": observed,
        "conditions": conditions,
        "workloads": {"selected": 3, "upToDate": 3, "rollingOut": 0, "failed": 0,
                      "conflicted": 0, "userOverrides": 0, "summary": "3/3"},
        "sampling": "10%",
        "backends": "jaeger",
    });
    object
}

fn policy_without_status(generation: i64) -> Value {
    json!({
        "apiVersion": "tracing.caas.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {
            "name": "caas-production",
            "uid": "6f1c2a7e-0d4b-4c1e-9a57-2f0e8d3b1c42",
            "generation": generation,
            "resourceVersion": "4711",
            "creationTimestamp": "2026-11-20T09:59:00Z",
        },
        "spec": {
            "mode": "Enforce",
            "selector": {"namespaces": {"matchLabels": {"tracing": "enabled"}}},
            "backends": [{"name": "jaeger", "endpoint": "http://jaeger.tracing:4317"}],
        },
    })
}

fn both(object: &Value) -> ((String, String), (String, String)) {
    let flux = kstatus(object).expect("kstatus computes a status");
    let argo = argocd_health(object).expect("the Argo CD health check runs");
    (flux, argo)
}

const NO_CONFLICTS: &str = "no other policy owns a selected workload";
const SETTLED: &str = "3/3 workloads rolled out";
const READY: &str = "3/3 workloads rolled out; no user overrides";
const ROLLING: &str = "1/3 workloads rolled out (2 rolling out, 0 waiting for a slot)";
const FAILED: &str = "2 of 3 workloads failed; see status.failures";
const STALLED: &str =
    "rollout stopped: 2 of 3 workloads failed (onFailure: Pause); change the policy to resume";

#[test]
fn ready_policy_is_current_for_flux_and_healthy_for_argocd() {
    let object = policy(
        3,
        3,
        conditions(
            3,
            &[
                ("Ready", true, "UpToDate", READY),
                ("Progressing", false, "Settled", SETTLED),
                ("Degraded", false, "AsExpected", "no problems"),
                ("Conflicted", false, "NoConflicts", NO_CONFLICTS),
                ("Reconciling", false, "Settled", SETTLED),
                ("Stalled", false, "AsExpected", "no problems"),
            ],
        ),
    );
    let ((flux, flux_message), (argo, argo_message)) = both(&object);
    assert_eq!(
        (flux.as_str(), flux_message.as_str()),
        ("Current", "Resource is Ready")
    );
    assert_eq!((argo.as_str(), argo_message.as_str()), ("Healthy", READY));
}

#[test]
fn rolling_out_policy_is_in_progress_for_flux_and_progressing_for_argocd() {
    let object = policy(
        3,
        3,
        conditions(
            3,
            &[
                ("Ready", false, "RollingOut", ROLLING),
                ("Progressing", true, "RollingOut", ROLLING),
                ("Degraded", false, "AsExpected", "no problems"),
                ("Conflicted", false, "NoConflicts", NO_CONFLICTS),
                ("Reconciling", true, "RollingOut", ROLLING),
                ("Stalled", false, "AsExpected", "no problems"),
            ],
        ),
    );
    let ((flux, flux_message), (argo, argo_message)) = both(&object);
    assert_eq!(
        (flux.as_str(), flux_message.as_str()),
        ("InProgress", ROLLING)
    );
    assert_eq!(
        (argo.as_str(), argo_message.as_str()),
        ("Progressing", ROLLING)
    );
}

#[test]
fn stuck_policy_is_failed_for_flux_and_degraded_for_argocd() {
    let object = policy(
        3,
        3,
        conditions(
            3,
            &[
                ("Ready", false, "Degraded", FAILED),
                ("Progressing", false, "RolloutPaused", STALLED),
                ("Degraded", true, "WorkloadsFailed", FAILED),
                ("Conflicted", false, "NoConflicts", NO_CONFLICTS),
                ("Reconciling", false, "RolloutPaused", STALLED),
                ("Stalled", true, "RolloutPaused", STALLED),
            ],
        ),
    );
    let ((flux, flux_message), (argo, argo_message)) = both(&object);
    assert_eq!((flux.as_str(), flux_message.as_str()), ("Failed", STALLED));
    assert_eq!(
        (argo.as_str(), argo_message.as_str()),
        ("Degraded", STALLED)
    );
}

#[test]
fn status_of_an_older_generation_is_in_progress_for_flux_and_progressing_for_argocd() {
    // The user just changed the spec (generation 4); the conditions still say Ready
    // for generation 3, and neither tool may believe them.
    let object = policy(
        4,
        3,
        conditions(
            3,
            &[
                ("Ready", true, "UpToDate", READY),
                ("Progressing", false, "Settled", SETTLED),
                ("Degraded", false, "AsExpected", "no problems"),
                ("Conflicted", false, "NoConflicts", NO_CONFLICTS),
                ("Reconciling", false, "Settled", SETTLED),
                ("Stalled", false, "AsExpected", "no problems"),
            ],
        ),
    );
    let ((flux, flux_message), (argo, argo_message)) = both(&object);
    assert_eq!(
        (flux.as_str(), flux_message.as_str()),
        (
            "InProgress",
            "TracingPolicy generation is 4, but latest observed generation is 3"
        )
    );
    assert_eq!(
        (argo.as_str(), argo_message.as_str()),
        (
            "Progressing",
            "waiting for the operator to observe generation 4"
        )
    );
}

#[test]
fn policy_without_status_is_progressing_for_argocd_but_current_for_flux() {
    let object = policy_without_status(1);
    let ((flux, flux_message), (argo, argo_message)) = both(&object);
    assert_eq!(
        (argo.as_str(), argo_message.as_str()),
        (
            "Progressing",
            "waiting for the operator to observe generation 1"
        )
    );
    // kstatus has no observedGeneration to compare and no condition to read, and
    // then falls back to Current for any custom resource (cli-utils'
    // status.Compute; fluxcd/kustomize-controller#387). So Flux counts a policy
    // the operator has not written yet as healthy: the operator has to write its
    // first status before Flux's health check looks.
    assert_eq!(
        (flux.as_str(), flux_message.as_str()),
        ("Current", "Resource is current")
    );
}

#[test]
fn degraded_without_stalled_keeps_flux_waiting_while_argocd_reports_degraded() {
    // Today's status shape (no Reconciling or Stalled): one backend's Secret is
    // missing, nothing is rolling out. kstatus ignores Degraded and reads Ready
    // False as still in progress, so Flux waits for its timeout instead of failing.
    let missing = "backend jaeger: Secret tracing/jaeger-headers not found";
    let object = policy(
        2,
        2,
        conditions(
            2,
            &[
                ("Ready", false, "Degraded", missing),
                ("Progressing", false, "Settled", SETTLED),
                ("Degraded", true, "SecretMissing", missing),
                ("Conflicted", false, "NoConflicts", NO_CONFLICTS),
            ],
        ),
    );
    let ((flux, flux_message), (argo, argo_message)) = both(&object);
    assert_eq!(
        (flux.as_str(), flux_message.as_str()),
        ("InProgress", missing)
    );
    assert_eq!(
        (argo.as_str(), argo_message.as_str()),
        ("Degraded", missing)
    );
}

#[test]
fn promtool_accepts_valid_rules_and_rejects_broken_ones() {
    let scratch = support::Scratch::new("promtool-rules").expect("scratch dir");
    let good = scratch.path().join("good.yaml");
    let bad = scratch.path().join("bad.yaml");
    std::fs::write(
        &good,
        r#"groups:
  - name: tracing-operator
    rules:
      - alert: TracingPolicyDegraded
        expr: max by (policy) (tracing_operator_policy_degraded) > 0
        for: 10m
        labels: {severity: warning}
        annotations: {summary: "TracingPolicy {{ $labels.policy }} is degraded"}
"#,
    )
    .expect("write good rules");
    std::fs::write(
        &bad,
        r#"groups:
  - name: tracing-operator
    rules:
      - alert: TracingPolicyDegraded
        expr: max by (policy) (tracing_operator_policy_degraded > 0
"#,
    )
    .expect("write bad rules");

    let check = |file: &std::path::Path| {
        std::process::Command::new(promtool())
            .args(["check", "rules"])
            .arg(file)
            .output()
            .expect("promtool runs")
    };
    let ok = check(&good);
    assert!(
        ok.status.success(),
        "promtool rejected valid rules: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("SUCCESS: 1 rules found"));

    let broken = check(&bad);
    assert!(
        !broken.status.success(),
        "promtool accepted a broken expression"
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&broken.stdout),
        String::from_utf8_lossy(&broken.stderr)
    );
    assert!(said.contains("FAILED"), "promtool said: {said}");
}
