//! Why a workload is (or is not) traced: what `tracing-operator why` prints.
//!
//! Pure, like the rest of `plan`: the CLI reads the policies, the workload, its
//! namespace and (admission injection) one current pod, and this module
//! explains them with the operator's own planning code, so the explanation
//! cannot drift from what the operator does:
//! - which policies select the workload, and for each that does not, the first
//!   term of its selector that leaves it out ([`super::selection::Exclusion`]);
//! - which one owns it, and why ([`super::precedence`]: priority, then age,
//!   then name);
//! - the variables the owner plans ([`super::env`]) and where each comes from,
//!   the attributes of `OTEL_RESOURCE_ATTRIBUTES` one by one, and the variables
//!   the workload's own manifest sets (the user wins);
//! - its rollout step ([`super::rollout`]), refined with the owner's status for
//!   what one workload alone cannot tell (a free slot, a paused rollout);
//! - for admission injection, whether a current pod carries the plan.
//!
//! [`Verdict`] is the command's exit code: 0 traced, 1 not selected, 2
//! selected but not (yet) traced.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::env::{
    self, ENDPOINT_VAR, LOGS_EXPORTER_VAR, METRICS_EXPORTER_VAR, NAME_LABEL, NODE_NAME_VAR,
    POD_NAME_VAR, PROPAGATORS_VAR, PROTOCOL_VAR, RESOURCE_ATTRIBUTES_VAR, SAMPLER_ARG_VAR,
    SAMPLER_VAR, SERVICE_NAME_ANNOTATION, SERVICE_NAME_VAR, TRACES_EXPORTER_VAR, VERSION_LABEL,
    VERSION_TOKEN,
};
use super::precedence::{Ownership, competes, precedence_cmp};
use super::rollout::{self, RolloutStep, WorkloadRollout};
use super::selection::{Exclusion, Selection};
use super::{
    Container, Injection, NamespaceView, PlanError, PlannedValue, Planner, PolicyView, Snapshot,
    Workload, WorkloadAction, WorkloadPlan, injection,
};
use crate::api::{
    ALWAYS_EXCLUDED_NAMESPACES, INJECTION_ANNOTATION, KNOWN_PROXY_CONTAINERS, Mode,
    POLICY_ANNOTATION, Placement, RolloutStrategy, TracingPolicySpec, TracingPolicyStatus,
};

/// What the cluster shows about one workload, as the CLI read it.
pub struct Input<'a> {
    /// The operator's namespace (never instrumented; the default collector namespace).
    pub operator_namespace: &'a str,
    /// Every TracingPolicy.
    pub policies: &'a [PolicyView],
    /// Their status, by name (what one workload cannot tell: slots, a pause).
    pub statuses: &'a BTreeMap<String, TracingPolicyStatus>,
    /// The workload's namespace; `None` when it does not exist.
    pub namespace: Option<&'a NamespaceView>,
    pub workload: &'a Workload,
    /// What each container's manifest sets, by container and variable, for the
    /// variables the user keeps (`valueFrom` entries described as such).
    pub manifest_env: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// How settings reach pods (the owner's `status.injection`).
    pub injection: Injection,
    pub now: Timestamp,
}

/// The command's outcome, and its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Owned by a policy, carrying its plan, rolled out (and, with admission
    /// injection, a current pod carries the variables).
    Traced,
    /// No policy selects it.
    NotSelected,
    /// Selected, but not (yet) traced: rolling out, waiting, failed, rolled
    /// back, paused, only a DryRun policy selects it, or admission failed.
    NotYetTraced,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Traced => 0,
            Verdict::NotSelected => 1,
            Verdict::NotYetTraced => 2,
        }
    }
}

/// The explanation of one workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub verdict: Verdict,
    /// One line saying why.
    pub summary: String,
    /// Every policy, strongest first.
    pub policies: Vec<PolicyVerdict>,
    /// The policy that owns it (the one whose plan is explained below).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// `Admission` or `PodTemplate`.
    pub injection: &'static str,
    /// The containers that get the variables, in pod order.
    pub containers: Vec<String>,
    pub variables: Vec<Variable>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, attribute by attribute (first container).
    pub attributes: Vec<Attribute>,
    /// Planned variables the manifest sets itself: its value is kept.
    pub user_overrides: Vec<UserOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// The OpenTelemetry agent its pods get (`spec.instrumentation`), if it has a language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Agent>,
    /// Admission injection: what a current pod carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodCheck>,
    /// Notes that change nothing above (a leftover annotation, the owner's problems).
    pub notes: Vec<String>,
    /// The owner's plan, for the pod check.
    #[serde(skip)]
    pub plan: Option<WorkloadPlan>,
}

/// The agent admission adds to the workload's pods, and the containers it skips.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// `nodejs`, `java`, `python` or `dotnet`; empty when every container is skipped.
    pub language: String,
    /// Where the language comes from.
    pub source: String,
    pub image: String,
    /// The containers that get it, in pod order.
    pub containers: Vec<String>,
    /// Its variables, as the first of those containers gets them.
    pub variables: Vec<AgentVariable>,
    pub skipped: Vec<AgentSkipped>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentVariable {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSkipped {
    /// Empty: the whole workload.
    pub container: String,
    pub language: String,
    pub reason: &'static str,
    pub message: String,
}

/// One policy's view of the workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVerdict {
    pub name: String,
    pub mode: &'static str,
    pub priority: i32,
    /// `metadata.creationTimestamp`, RFC 3339.
    pub created: String,
    pub deleting: bool,
    pub selects: bool,
    /// The selector term that leaves the workload out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded_by: Option<Excluded>,
    /// `owner`, `beaten`, `dry-run`, `deleting`, `not selecting`, `invalid selector`.
    pub role: &'static str,
    /// What that means here, in words.
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Excluded {
    /// The field of the selector (`spec.selector.namespaces`, ...).
    pub term: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub policy: String,
    /// Why it and no other policy: priority, age, name.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Variable {
    pub name: String,
    /// As the application reads it (first instrumented container).
    pub value: String,
    pub source: String,
    /// The containers whose manifest sets it themselves (their value is kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_in: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    pub key: String,
    pub value: String,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserOverride {
    pub container: String,
    pub variable: String,
    /// The manifest's value (kept).
    pub value: String,
    /// What the policy would have set.
    pub planned: String,
}

/// Where the rollout of the owner's settings is, for this workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// `UpToDate`, `Unavailable`, `RollingOut`, `WaitingForSlot`, `NotYetApplied`,
    /// `Paused`, `PausedByOwner`, `WaitingForWorkload`, `Failed`, `RollingBack`,
    /// `RolledBack`, `DryRun`.
    pub state: &'static str,
    pub message: String,
    /// The planned `tracing.caas.io/config-hash`.
    pub config_hash: String,
    /// When the operator's change started (`tracing.caas.io/applied-at`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// When it fails unless rolled out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Rollout {
    fn traced(&self) -> bool {
        matches!(self.state, "UpToDate" | "Unavailable")
    }
}

/// What a current pod (one carrying the planned config hash) carries.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCheck {
    /// The pod checked; `None` when no current pod exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Every planned variable its containers do not set themselves is there.
    pub carries_plan: bool,
    pub message: String,
}

/// Explains the workload of `input`.
pub fn explain(input: &Input<'_>) -> Explanation {
    let w = input.workload;
    let namespaces: BTreeMap<String, NamespaceView> = input
        .namespace
        .iter()
        .map(|n| (n.name.clone(), (*n).clone()))
        .collect();
    let snapshot = Snapshot {
        operator_namespace: input.operator_namespace,
        namespaces: &namespaces,
        workloads: &[],
        policies: input.policies,
        injection: input.injection,
    };
    let ownership = Ownership::new(input.policies, &namespaces, input.operator_namespace);
    let owner = ownership.owner(w);

    let mut ordered: Vec<&PolicyView> = input.policies.iter().collect();
    ordered.sort_by(|a, b| precedence_cmp(a, b));
    let selections: Vec<(&PolicyView, Result<Option<Exclusion>, PlanError>)> = ordered
        .iter()
        .map(|p| {
            let exclusion = Selection::new(&p.spec, input.operator_namespace)
                .map(|s| s.exclusion(input.namespace, w));
            (*p, exclusion)
        })
        .collect();
    let rivals: Vec<&PolicyView> = selections
        .iter()
        .filter(|(p, e)| competes(p) && matches!(e, Ok(None) | Ok(Some(Exclusion::Containers))))
        .map(|(p, _)| *p)
        .collect();
    let owner_reason = owner.map(|o| owner_reason(o, &rivals));

    let policies = selections
        .iter()
        .map(|(p, exclusion)| policy_verdict(p, exclusion, owner, input))
        .collect();

    let mut e = Explanation {
        kind: w.id.kind.to_string(),
        namespace: w.id.namespace.to_string(),
        name: w.id.name.to_string(),
        verdict: Verdict::NotSelected,
        summary: String::new(),
        policies,
        owner: owner.zip(owner_reason).map(|(o, reason)| Owner {
            policy: o.name.clone(),
            reason,
        }),
        injection: input.injection.as_str(),
        containers: Vec::new(),
        variables: Vec::new(),
        attributes: Vec::new(),
        user_overrides: Vec::new(),
        rollout: None,
        agent: None,
        pod: None,
        notes: Vec::new(),
        plan: None,
    };
    if let Some(other) = w.annotations.get(POLICY_ANNOTATION)
        && owner.is_none_or(|o| &o.name != other)
    {
        e.notes.push(format!(
            "it carries the settings of TracingPolicy {other}, which no longer owns it: they are removed on that policy's next reconcile"
        ));
    }

    // The policy whose plan is explained: the owner, else a DryRun policy that
    // selects it (it writes nothing, but shows what it would do).
    let dry_run = selections
        .iter()
        .find(|(p, ex)| p.spec.mode == Mode::DryRun && !p.deleting && matches!(ex, Ok(None)))
        .map(|(p, _)| *p);
    let Some(planned_by) = owner.or(dry_run) else {
        e.summary = if input.policies.is_empty() {
            "not selected: there is no TracingPolicy".into()
        } else {
            let why: Vec<&str> = e
                .policies
                .iter()
                .map(|p| match (&p.excluded_by, p.role) {
                    (Some(x), _) => x.term,
                    (None, role) => role,
                })
                .collect();
            format!(
                "not selected by any TracingPolicy ({})",
                dedup(why).join(", ")
            )
        };
        return e;
    };
    let exclusion = selections
        .iter()
        .find(|(p, _)| p.name == planned_by.name)
        .and_then(|(_, ex)| ex.as_ref().ok().copied().flatten());
    if exclusion == Some(Exclusion::Containers) {
        e.summary = format!(
            "not selected: TracingPolicy {} selects it but instruments none of its containers",
            planned_by.name
        );
        return e;
    }
    let Ok(planner) = Planner::new(planned_by, &snapshot, &ownership) else {
        e.summary = format!(
            "not selected: TracingPolicy {}'s selector is invalid",
            planned_by.name
        );
        return e;
    };
    let plan = match planner.decide(w) {
        Some(WorkloadAction::Apply(plan)) => plan,
        // Ownership says it selects it; anything else is a planner change this
        // module has not caught up with, reported as such rather than guessed.
        other => {
            e.verdict = Verdict::NotYetTraced;
            e.summary = format!("TracingPolicy {} plans {other:?} for it", planned_by.name);
            return e;
        }
    };
    describe_plan(&mut e, input, planned_by, &plan);
    let status = input.statuses.get(&planned_by.name);
    let rollout = if planned_by.spec.mode == Mode::DryRun {
        Rollout {
            state: "DryRun",
            message: format!(
                "only TracingPolicy {} (DryRun) selects it: it computes this plan and writes nothing",
                planned_by.name
            ),
            config_hash: plan.config_hash.clone(),
            since: None,
            deadline: None,
            reason: None,
        }
    } else {
        rollout_state(input, planned_by, status, &plan)
    };
    if let Some(degraded) = status.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
    }) && !rollout.traced()
    {
        e.notes.push(format!(
            "TracingPolicy {} is Degraded ({}): {}",
            planned_by.name, degraded.reason, degraded.message
        ));
    }
    e.verdict = if rollout.traced() {
        Verdict::Traced
    } else {
        Verdict::NotYetTraced
    };
    e.summary = match (&e.verdict, owner) {
        (Verdict::Traced, Some(o)) => format!("traced by TracingPolicy {}", o.name),
        (_, Some(o)) => format!(
            "selected by TracingPolicy {}, not traced yet: {}",
            o.name, rollout.message
        ),
        (_, None) => rollout.message.clone(),
    };
    if let Some(recorded) = w.annotations.get(INJECTION_ANNOTATION)
        && input.injection == Injection::Admission
        && recorded != "ok"
    {
        e.notes.push(format!(
            "the operator recorded on it: {INJECTION_ANNOTATION}={recorded}"
        ));
    }
    e.rollout = Some(rollout);
    e.plan = Some(plan);
    e
}

/// Whether to look at a pod: admission injection of a plan that rolled out.
pub fn wants_pod_check(e: &Explanation) -> bool {
    e.injection == Injection::Admission.as_str()
        && e.owner.is_some()
        && e.rollout.as_ref().is_some_and(Rollout::traced)
}

/// Adds what a current pod carries (`verdict`: `plan`'s check of the pod, as
/// `controller::verify` records it; `None`: no current pod to check). A pod
/// without the planned variables means admission failed open: not traced.
pub fn with_pod_check(mut e: Explanation, pod: Option<(String, String)>) -> Explanation {
    let check = match pod {
        Some((name, verdict)) if verdict == "ok" => PodCheck {
            message: format!("pod {name} carries every planned variable"),
            pod: Some(name),
            carries_plan: true,
        },
        Some((name, verdict)) => PodCheck {
            message: format!(
                "{verdict}: the MutatingAdmissionPolicy {} did not add the plan (it fails open)",
                injection::ADMISSION_POLICY_NAME
            ),
            pod: Some(name),
            carries_plan: false,
        },
        None => PodCheck {
            pod: None,
            carries_plan: true,
            message: "no running pod of the current config to check (scaled to zero?)".into(),
        },
    };
    if !check.carries_plan {
        e.verdict = Verdict::NotYetTraced;
        if let Some(o) = &e.owner {
            e.summary = format!(
                "selected by TracingPolicy {}, but its pods lack the variables (InjectionNotApplied)",
                o.policy
            );
        }
    }
    e.pod = Some(check);
    e
}

fn dedup(mut v: Vec<&str>) -> Vec<&str> {
    let mut seen = Vec::new();
    v.retain(|t| {
        let new = !seen.contains(t);
        seen.push(*t);
        new
    });
    v
}

fn created(p: &PolicyView) -> String {
    Timestamp::from_second(p.created_unix).map_or_else(|_| "-".into(), |t| t.to_string())
}

/// Why `owner` wins over the other Enforce policies that select the workload.
fn owner_reason(owner: &PolicyView, rivals: &[&PolicyView]) -> String {
    let Some(runner_up) = rivals.iter().find(|p| p.name != owner.name) else {
        return "the only Enforce policy that selects it".into();
    };
    let others = rivals.len() - 1;
    let against = if others == 1 {
        format!("TracingPolicy {}", runner_up.name)
    } else {
        format!(
            "the {others} other selecting policies (next: {})",
            runner_up.name
        )
    };
    if owner.spec.priority != runner_up.spec.priority {
        format!(
            "priority {} is higher than {against} ({})",
            owner.spec.priority, runner_up.spec.priority
        )
    } else if owner.created_unix != runner_up.created_unix {
        format!(
            "same priority {} as {against}, and older (created {}, {} created {})",
            owner.spec.priority,
            created(owner),
            runner_up.name,
            created(runner_up)
        )
    } else {
        format!("same priority and age as {against}; its name sorts first",)
    }
}

fn policy_verdict(
    p: &PolicyView,
    exclusion: &Result<Option<Exclusion>, PlanError>,
    owner: Option<&PolicyView>,
    input: &Input<'_>,
) -> PolicyVerdict {
    let excluded_by = match exclusion {
        Ok(Some(x)) => Some(excluded(*x, p, input)),
        _ => None,
    };
    let selects = matches!(exclusion, Ok(None));
    let (role, note) = match exclusion {
        Err(error) => ("invalid selector", error.to_string()),
        _ if p.deleting => (
            "deleting",
            "being deleted: it owns nothing, its settings are being removed".into(),
        ),
        Ok(Some(Exclusion::Containers)) if owner.is_some_and(|o| o.name == p.name) => (
            "owner",
            "owns it, but instruments none of its containers".into(),
        ),
        Ok(Some(_)) => ("not selecting", String::new()),
        Ok(None) if p.spec.mode == Mode::DryRun => (
            "dry-run",
            match owner {
                Some(o) => format!("DryRun; would lose to TracingPolicy {}", o.name),
                None => "DryRun: shows the plan below, writes nothing".into(),
            },
        ),
        Ok(None) => match owner {
            Some(o) if o.name == p.name => ("owner", "owns it".into()),
            Some(o) => (
                "beaten",
                format!(
                    "selects it, but TracingPolicy {} wins (status Conflicted)",
                    o.name
                ),
            ),
            None => ("not selecting", String::new()),
        },
    };
    PolicyVerdict {
        name: p.name.clone(),
        mode: match p.spec.mode {
            Mode::Enforce => "Enforce",
            Mode::DryRun => "DryRun",
        },
        priority: p.spec.priority,
        created: created(p),
        deleting: p.deleting,
        selects,
        excluded_by,
        role,
        note,
    }
}

/// `a=b, c In (x, y), !d`: a label selector as `kubectl get -l` writes it.
pub fn selector_text(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(", ");
        terms.push(match e.operator.as_str() {
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => format!("{} {op} ({values})", e.key),
        });
    }
    if terms.is_empty() {
        "everything".into()
    } else {
        terms.join(", ")
    }
}

fn labels_text<'a, K: AsRef<str> + 'a>(
    labels: impl IntoIterator<Item = (K, &'a String)>,
) -> String {
    let text: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{}={v}", k.as_ref()))
        .collect();
    if text.is_empty() {
        return "none".into();
    }
    text.join(", ")
}

fn excluded(x: Exclusion, p: &PolicyView, input: &Input<'_>) -> Excluded {
    let w = input.workload;
    let ns = &*w.id.namespace;
    let sel = &p.spec.selector;
    let (term, message) = match x {
        Exclusion::SystemNamespace => (
            "namespace",
            format!(
                "namespace {ns} is a Kubernetes system namespace ({}), never instrumented",
                ALWAYS_EXCLUDED_NAMESPACES.join(", ")
            ),
        ),
        Exclusion::OperatorNamespace => (
            "namespace",
            format!("namespace {ns} is the operator's own namespace, never instrumented"),
        ),
        Exclusion::ExcludedNamespace => (
            "spec.selector.excludeNamespaces",
            format!("namespace {ns} is listed in spec.selector.excludeNamespaces"),
        ),
        Exclusion::NamespaceUnknown => ("namespace", format!("namespace {ns} does not exist")),
        Exclusion::NamespaceLabels => {
            // Without the label every namespace carries, which says nothing here.
            let labels: BTreeMap<String, String> = input
                .namespace
                .map(|n| n.labels.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k != "kubernetes.io/metadata.name")
                .collect();
            (
                "spec.selector.namespaces",
                format!(
                    "namespace {ns} (labels: {}) does not match spec.selector.namespaces ({})",
                    labels_text(&labels),
                    sel.namespaces
                        .as_ref()
                        .map_or_else(String::new, selector_text)
                ),
            )
        }
        Exclusion::Kind => (
            "spec.selector.kinds",
            format!(
                "kind {} is not in spec.selector.kinds ({})",
                w.id.kind,
                sel.kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Exclusion::WorkloadLabels => (
            "spec.selector.workloads",
            format!(
                "its labels ({}) do not match spec.selector.workloads ({})",
                labels_text(&w.labels),
                sel.workloads
                    .as_ref()
                    .map_or_else(String::new, selector_text)
            ),
        ),
        Exclusion::Containers => {
            let have: Vec<&str> = w.template.containers.iter().map(|c| &*c.name).collect();
            let message = if sel.containers.is_empty() {
                format!(
                    "its containers ({}) are all sidecar proxies ({}), never instrumented",
                    have.join(", "),
                    KNOWN_PROXY_CONTAINERS.join(", ")
                )
            } else {
                format!(
                    "none of its containers ({}) is listed in spec.selector.containers ({})",
                    have.join(", "),
                    sel.containers
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            ("spec.selector.containers", message)
        }
    };
    Excluded { term, message }
}

/// A literal as the application reads it (Kubernetes turns `$$` into `$`).
fn unescape(value: &str) -> String {
    value.replace("$$", "$")
}

/// The version a container reports and where it comes from, as the injection reads it.
fn container_version(
    plan: &WorkloadPlan,
    injection: Injection,
    w: &Workload,
    c: &Container,
) -> Option<(String, String)> {
    if plan.version.pod_label {
        let v = w
            .template
            .labels
            .get(VERSION_LABEL)
            .cloned()
            .unwrap_or_default();
        return Some((v, format!("label {VERSION_LABEL} on the pod template")));
    }
    if let Some(v) = &plan.version.workload_label {
        return Some((v.clone(), format!("label {VERSION_LABEL} on the workload")));
    }
    let tag = match injection {
        Injection::Admission => c.image.as_deref().and_then(env::image_tag),
        Injection::PodTemplate => plan
            .version
            .image_tags
            .as_ref()
            .and_then(|t| t.get(&*c.name))
            .map(String::as_str),
    };
    if let Some(tag) = tag {
        return Some((
            tag.to_string(),
            format!("the image tag of container {}", c.name),
        ));
    }
    plan.version.fallback.clone().map(|v| {
        (
            v,
            "spec.service.resourceAttributes service.version (no label, no image tag)".into(),
        )
    })
}

fn service_name_source(w: &Workload) -> String {
    let set = |v: Option<&String>| v.is_some_and(|v| !v.is_empty());
    if set(w.template.annotations.get(SERVICE_NAME_ANNOTATION)) {
        format!("annotation {SERVICE_NAME_ANNOTATION} on the pod template")
    } else if set(w.annotations.get(SERVICE_NAME_ANNOTATION)) {
        format!("annotation {SERVICE_NAME_ANNOTATION} on the workload")
    } else if set(w.template.labels.get(NAME_LABEL)) {
        format!("label {NAME_LABEL} on the pod template")
    } else if set(w.labels.get(NAME_LABEL)) {
        format!("label {NAME_LABEL} on the workload")
    } else {
        "the workload's name (no annotation or label names the service)".into()
    }
}

fn endpoint_source(p: &PolicyView, operator_namespace: &str, ns: &str) -> String {
    let spec = &p.spec;
    if spec.collector.enabled {
        let at = super::collector_namespace(spec, operator_namespace, ns);
        match spec.collector.placement {
            Placement::Central => format!(
                "the policy's collector {} in namespace {at} (spec.collector, Central)",
                super::collector_name(&p.name)
            ),
            Placement::PerNamespace => format!(
                "the policy's collector {} in the workload's namespace (spec.collector, PerNamespace)",
                super::collector_name(&p.name)
            ),
        }
    } else {
        match spec.backends.first() {
            Some(b) => format!(
                "spec.backends[0] ({}), the collector being disabled",
                b.name.as_str()
            ),
            None => "no backend".into(),
        }
    }
}

fn sampler_source(spec: &TracingPolicySpec, service: &str) -> String {
    let listed = spec.sampling.services.iter().any(|s| s.name == service);
    if super::sampling::tail_decides(spec) {
        let head = spec.sampling.head.is_some();
        match (listed, head) {
            (true, _) => format!(
                "spec.sampling.tail: the collector decides; spec.sampling.services[{service}] sets this service's head ratio"
            ),
            (false, true) => {
                "spec.sampling.tail: the collector decides, after spec.sampling.head.ratio".into()
            }
            (false, false) => {
                "spec.sampling.tail: the collector decides, so the SDK records every trace".into()
            }
        }
    } else if listed {
        format!("spec.sampling.services[{service}].ratio (head sampling)")
    } else {
        "spec.sampling.ratio (head sampling)".into()
    }
}

fn var_source(name: &str, p: &PolicyView, plan: &WorkloadPlan, input: &Input<'_>) -> String {
    let spec = &p.spec;
    let ns = &*input.workload.id.namespace;
    match name {
        POD_NAME_VAR => "downward API metadata.name, for k8s.pod.name below".into(),
        NODE_NAME_VAR => "downward API spec.nodeName, for k8s.node.name below".into(),
        SERVICE_NAME_VAR => service_name_source(input.workload),
        RESOURCE_ATTRIBUTES_VAR => "the attributes below".into(),
        ENDPOINT_VAR => endpoint_source(p, input.operator_namespace, ns),
        PROTOCOL_VAR if spec.collector.enabled => {
            "http/protobuf to the collector (every SDK supports it)".into()
        }
        PROTOCOL_VAR => "spec.backends[0].protocol".into(),
        TRACES_EXPORTER_VAR => "always otlp".into(),
        METRICS_EXPORTER_VAR | LOGS_EXPORTER_VAR => {
            "always none: the collector has a traces pipeline only".into()
        }
        PROPAGATORS_VAR => "spec.propagators".into(),
        SAMPLER_VAR | SAMPLER_ARG_VAR => {
            let mut s = sampler_source(spec, &plan.service_name);
            if !spec.sampling.parent_based {
                s.push_str("; spec.sampling.parentBased: false");
            }
            s
        }
        other => match spec.env.iter().position(|e| e.name == other) {
            Some(i) => format!("spec.env[{i}] {:?}", spec.env[i].value),
            None => "the operator".into(),
        },
    }
}

fn attribute_source(
    key: &str,
    p: &PolicyView,
    version_source: Option<&str>,
    kind_key: &str,
) -> String {
    let service = &p.spec.service;
    match key {
        "service.version" => version_source.unwrap_or("-").to_string(),
        "deployment.environment.name"
            if service
                .environment
                .as_deref()
                .is_some_and(|e| !e.is_empty()) =>
        {
            "spec.service.environment".into()
        }
        "service.namespace" | "k8s.namespace.name" => "the workload's namespace".into(),
        "k8s.pod.name" => format!("the pod's name ({POD_NAME_VAR})"),
        "k8s.node.name" => format!("the node's name ({NODE_NAME_VAR})"),
        "k8s.container.name" => "the container's name".into(),
        k if k == kind_key => "the workload's name".into(),
        k if service.resource_attributes.contains_key(k) => {
            "spec.service.resourceAttributes".into()
        }
        k if service.attributes_from_namespace_labels.contains_key(k) => format!(
            "namespace label {} (spec.service.attributesFromNamespaceLabels)",
            service.attributes_from_namespace_labels[k]
        ),
        k => match k.strip_prefix("k8s.namespace.label.") {
            Some(label) => format!("namespace label {label} (spec.service.namespaceLabels)"),
            None => "the policy".into(),
        },
    }
}

fn describe_plan(e: &mut Explanation, input: &Input<'_>, p: &PolicyView, plan: &WorkloadPlan) {
    let w = input.workload;
    // A listed container may have left the template (see `env::plan_workload`):
    // only those the pods have are described.
    let present: Vec<&Container> = plan
        .containers
        .iter()
        .filter_map(|cp| w.template.containers.iter().find(|c| *c.name == cp.name))
        .collect();
    e.containers = present.iter().map(|c| c.name.to_string()).collect();
    e.agent = describe_agent(input, plan);
    let first = present.first().copied();
    let version = first.and_then(|c| container_version(plan, input.injection, w, c));
    let version_value = version.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();
    let container_name = first.map(|c| c.name.to_string()).unwrap_or_default();
    let kind_key = w.id.kind.info().semconv_name_key();

    for var in &plan.vars {
        let value = match &var.value {
            PlannedValue::Field(path) => format!("(downward API {path})"),
            PlannedValue::Literal(s) => unescape(s),
            PlannedValue::Attributes(base) => {
                let mut v = String::new();
                if !version_value.is_empty() {
                    v.push_str(&format!(
                        "service.version={},",
                        env::percent_encode(&version_value)
                    ));
                }
                v.push_str(&unescape(base));
                v.push_str(&format!(",k8s.container.name={container_name}"));
                v
            }
            PlannedValue::Versioned(s) => unescape(&s.replace(VERSION_TOKEN, &version_value)),
        };
        let kept_in: Vec<String> = plan
            .containers
            .iter()
            .filter(|c| c.user_overrides.contains(&var.name))
            .map(|c| c.name.clone())
            .collect();
        for container in &kept_in {
            e.user_overrides.push(UserOverride {
                container: container.clone(),
                variable: var.name.clone(),
                value: input
                    .manifest_env
                    .get(container)
                    .and_then(|env| env.get(&var.name))
                    .cloned()
                    .unwrap_or_default(),
                planned: value.clone(),
            });
        }
        if var.name == RESOURCE_ATTRIBUTES_VAR {
            for pair in value.split(',') {
                let (key, v) = pair.split_once('=').unwrap_or((pair, ""));
                e.attributes.push(Attribute {
                    key: key.to_string(),
                    value: v.to_string(),
                    source: attribute_source(
                        key,
                        p,
                        version.as_ref().map(|(_, s)| s.as_str()),
                        kind_key,
                    ),
                });
            }
        }
        e.variables.push(Variable {
            name: var.name.clone(),
            source: var_source(&var.name, p, plan, input),
            value,
            kept_in,
        });
    }
}

/// The agent part of `plan`: the language and where it comes from, the
/// variables with the first agent container's own values joined in, and the
/// containers skipped.
fn describe_agent(input: &Input<'_>, plan: &WorkloadPlan) -> Option<Agent> {
    use super::agents::Source;
    use crate::api::{LANGUAGE_ANNOTATION, OTEL_INJECT_ANNOTATION_PREFIX};
    let decision = &plan.agent;
    if decision.plan.is_none() && decision.skipped.is_empty() {
        return None;
    }
    let skipped = decision
        .skipped
        .iter()
        .map(|s| AgentSkipped {
            container: s.container.clone().unwrap_or_default(),
            language: s.language.clone(),
            reason: s.reason.reason(),
            message: s.message(),
        })
        .collect();
    let Some(a) = decision.plan.as_deref() else {
        return Some(Agent {
            language: String::new(),
            source: String::new(),
            image: String::new(),
            containers: Vec::new(),
            variables: Vec::new(),
            skipped,
        });
    };
    let language = a.language.as_str();
    let source = match a.source {
        Source::PolicySelector => {
            format!("spec.instrumentation.{language}.selector matches the workload's labels")
        }
        Source::LanguageAnnotation => format!("annotation {LANGUAGE_ANNOTATION}"),
        Source::OtelOperatorAnnotation => {
            format!("annotation {OTEL_INJECT_ANNOTATION_PREFIX}{language}")
        }
    };
    let own = a.containers.first().and_then(|c| input.manifest_env.get(c));
    let variables = a
        .vars
        .iter()
        .map(|v| AgentVariable {
            name: v.name.to_string(),
            value: v.edit.apply(
                own.and_then(|env| env.get(v.name))
                    .map_or("", String::as_str),
            ),
        })
        .collect();
    Some(Agent {
        language: language.to_string(),
        source,
        image: a.image.clone(),
        containers: a.containers.clone(),
        variables,
        skipped,
    })
}

fn rollout_state(
    input: &Input<'_>,
    owner: &PolicyView,
    status: Option<&TracingPolicyStatus>,
    plan: &WorkloadPlan,
) -> Rollout {
    let w = input.workload;
    let applied = injection::is_applied(input.injection, &owner.name, plan, w);
    let observed =
        WorkloadRollout::observe(&owner.name, &w.id, &plan.config_hash, applied, Some(w));
    let spec = &owner.spec.rollout;
    let step = rollout::plan_rollout(spec, input.now, [&observed])
        .ok()
        .and_then(|r| r.steps.into_iter().next())
        .map(|s| s.step);
    let since = observed.applied_at.clone();
    let rollout = |state, message: String| Rollout {
        state,
        message,
        config_hash: plan.config_hash.clone(),
        since: since.clone(),
        deadline: None,
        reason: None,
    };
    let failed = |state, reason: &str, message: String| Rollout {
        reason: Some(reason.to_string()),
        ..rollout(state, message)
    };
    // What only the policy's status knows: an apply the API server refused.
    let listed_failure = status.and_then(|s| {
        s.failures.iter().find(|f| {
            f.kind == w.id.kind.as_str() && f.namespace == *w.id.namespace && f.name == *w.id.name
        })
    });
    let Some(step) = step else {
        return rollout(
            "NotYetApplied",
            "spec.rollout.progressDeadline cannot be read: the operator starts nothing".into(),
        );
    };
    match step {
        RolloutStep::UpToDate | RolloutStep::Record => rollout(
            "UpToDate",
            format!("up to date: config {} rolled out", plan.config_hash),
        ),
        RolloutStep::Unavailable { message } => rollout(
            "Unavailable",
            format!(
                "up to date, but unavailable for reasons of its own (not the tracing settings): {message}"
            ),
        ),
        RolloutStep::RollingOut { since, deadline } => Rollout {
            deadline: Some(deadline.to_string()),
            ..rollout(
                "RollingOut",
                format!(
                    "rolling since {since} (fails at {deadline} unless rolled out): {}",
                    w.id.kind.info().describe(&w.rollout)
                ),
            )
        },
        RolloutStep::Restamp => rollout(
            "RollingOut",
            "rolling out; the operator restarts its deadline from now".into(),
        ),
        RolloutStep::Start { .. } | RolloutStep::Queued | RolloutStep::Paused => {
            if let Some(f) = listed_failure {
                return failed(
                    "Failed",
                    &f.reason,
                    format!("failed: {}: {}", f.reason, f.message),
                );
            }
            let progressing =
                status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Progressing"));
            if progressing.is_some_and(|c| c.reason == "RolloutPaused")
                || step == RolloutStep::Paused
            {
                return rollout(
                    "Paused",
                    "waiting: the rollout is paused (onFailure: Pause) since a workload failed; change the policy to resume".into(),
                );
            }
            let counts = status.map(|s| &s.workloads);
            let rolling = counts.map_or(0, |c| c.rolling_out);
            let waiting = counts.map_or(0, |c| c.waiting);
            match spec.strategy {
                RolloutStrategy::Progressive if rolling >= spec.max_concurrent || waiting > 0 => {
                    rollout(
                        "WaitingForSlot",
                        format!(
                            "waiting for a slot: {rolling} of maxConcurrent {} rolling out, {waiting} waiting",
                            spec.max_concurrent
                        ),
                    )
                }
                RolloutStrategy::Immediate if waiting > 0 => rollout(
                    "WaitingForSlot",
                    format!("queued: {waiting} workloads wait for the operator's write budget"),
                ),
                _ => rollout(
                    "NotYetApplied",
                    format!(
                        "not applied yet: the operator applies config {} on its next reconcile (is it running?)",
                        plan.config_hash
                    ),
                ),
            }
        }
        RolloutStep::OwnerPaused { .. } => rollout(
            "PausedByOwner",
            format!(
                "paused by its owner (spec.paused): tracing continues once the {} is resumed",
                w.id.kind
            ),
        ),
        RolloutStep::WaitingForWorkload { message } => rollout(
            "WaitingForWorkload",
            format!("waiting for its own rollout: {message}"),
        ),
        RolloutStep::Failed { reason, message } => failed(
            "Failed",
            reason,
            format!(
                "failed: {reason}: {message}; kept as it is (onFailure: {:?})",
                spec.on_failure
            ),
        ),
        RolloutStep::RollBack { reason, message } => failed(
            "RollingBack",
            reason,
            format!("failed: {reason}: {message}; being rolled back"),
        ),
        RolloutStep::RolledBack { reason, message } => failed(
            "RolledBack",
            reason,
            format!("rolled back: {reason}: {message}"),
        ),
    }
}

#[cfg(test)]
mod tests;
