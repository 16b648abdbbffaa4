//! How a [`WorkloadPlan`] reaches pods, and what the operator writes for it.
//!
//! # Admission injection (the default)
//! The operator writes only pod-template annotations (as field manager
//! `tracing-operator`); the MutatingAdmissionPolicy of
//! [`mutating_admission_policy`] copies them into each new pod's containers:
//!
//! | annotation | value |
//! |---|---|
//! | `tracing.caas.io/inject` | the containers to instrument, comma-separated (may name one that left the template: see [`super::env::plan_workload`]) |
//! | `tracing.caas.io/env` | the variable names, comma-separated, in order |
//! | `env.tracing.caas.io/<NAME>` | each variable's value (not for the two downward-API helpers) |
//! | `tracing.caas.io/version` | the workload's `app.kubernetes.io/version` when the template has none |
//! | `tracing.caas.io/default-version` | the policy's `service.version` attribute, the last resort |
//! | `tracing.caas.io/config-hash` | the plan's hash |
//!
//! With an OpenTelemetry agent ([`super::agents`]), also:
//!
//! | annotation | value |
//! |---|---|
//! | `tracing.caas.io/agent` | the language: `nodejs`, `java`, `python`, `dotnet` |
//! | `tracing.caas.io/agent-image` | the image the init container copies the agent from |
//! | `tracing.caas.io/agent-command` | the init container's command, space-separated |
//! | `tracing.caas.io/agent-containers` | the containers that get the agent, comma-separated |
//! | `tracing.caas.io/agent-resources` | the init container's resources: `limits.cpu=500m,requests.memory=64Mi,...` |
//! | `tracing.caas.io/agent-volume-size` | the volume's `sizeLimit` |
//! | `tracing.caas.io/agent-env` | the agent's variable names, comma-separated |
//! | `agent.tracing.caas.io/<NAME>` | `<how>\|<before>\|<after>`: `space` or `colon` joins `before`, the container's own value and `after` (empty parts left out); `default` sets `before` unless the container sets the variable |
//!
//! Plain strings and comma lists, so CEL reads them with `split` and map
//! look-ups, no JSON parser. Owning annotations never co-owns a container: a
//! GitOps tool can remove or rename a container of an instrumented workload.
//! At admission, each listed container gets, in the listed order, every variable
//! it does not set itself (the two downward-API helpers come first, so the
//! `$(VAR)` references after them resolve; they are left out when the container
//! sets `OTEL_RESOURCE_ATTRIBUTES` itself); `OTEL_RESOURCE_ATTRIBUTES` gets
//! `service.version=` (the pod's version label, else the workload's, else the
//! container's image tag) before and `k8s.container.name=` after the planned
//! attributes; `{service.version}` in an `env` template value becomes the version.
//! Computing the version at admission is what lets an image bump roll a workload
//! once, not twice.
//!
//! # Pod-template injection (API servers without MutatingAdmissionPolicy)
//! The operator writes the variables into each container's `env` itself, with
//! server-side apply. [`container_env`] materializes the plan per container; the
//! version comes from a downward-API `fieldRef` on the pod's label, so an image
//! bump needs no second rollout unless `service.versionFromImageTag` asks for the tag.
//!
//! In both modes the workload also carries `tracing.caas.io/policy` and
//! `tracing.caas.io/config-hash` (and the rollout annotations, see
//! [`super::rollout`]), and one apply states the operator's whole intent, so
//! applying less removes exactly what it no longer wants.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use serde_json::{Value, json};

use super::agents::{INIT_CONTAINER_NAME, INIT_CONTAINER_USER, MOUNT_PATH, VOLUME_NAME};
use super::env::{
    NODE_NAME_VAR, POD_NAME_VAR, RESOURCE_ATTRIBUTES_VAR, VERSION_TOKEN, VERSION_VAR,
};
use super::{Container, Injection, PlannedValue, Workload, WorkloadId, WorkloadPlan};
use crate::api::{
    CONFIG_HASH_ANNOTATION, ENV_NAMES_ANNOTATION, ENV_VALUE_PREFIX, INJECT_ANNOTATION,
    POLICY_ANNOTATION,
};
use crate::workload::{VERSION_LABEL, annotations_digest, env_digest};

/// Pod-template annotation: the workload's version label when the template has none.
pub const VERSION_ANNOTATION: &str = "tracing.caas.io/version";
/// Pod-template annotation: the policy's `service.version` attribute.
pub const DEFAULT_VERSION_ANNOTATION: &str = "tracing.caas.io/default-version";

/// Pod-template annotations of an agent plan (see the module documentation).
pub const AGENT_ANNOTATION: &str = "tracing.caas.io/agent";
pub const AGENT_IMAGE_ANNOTATION: &str = "tracing.caas.io/agent-image";
pub const AGENT_COMMAND_ANNOTATION: &str = "tracing.caas.io/agent-command";
pub const AGENT_CONTAINERS_ANNOTATION: &str = "tracing.caas.io/agent-containers";
pub const AGENT_RESOURCES_ANNOTATION: &str = "tracing.caas.io/agent-resources";
pub const AGENT_VOLUME_SIZE_ANNOTATION: &str = "tracing.caas.io/agent-volume-size";
pub const AGENT_ENV_ANNOTATION: &str = "tracing.caas.io/agent-env";
/// Prefix of the annotations with how each agent variable is written.
pub const AGENT_ENV_PREFIX: &str = "agent.tracing.caas.io/";

/// Name of the MutatingAdmissionPolicy and of its binding.
pub const ADMISSION_POLICY_NAME: &str = "tracing-operator.tracing.caas.io";
/// Annotation on the admission policy: the operator release that wrote it.
pub const ADMISSION_POLICY_VERSION_ANNOTATION: &str = "tracing.caas.io/operator-version";

/// The pod-template annotations that carry `plan` (admission injection).
pub fn template_annotations(plan: &WorkloadPlan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(CONFIG_HASH_ANNOTATION.to_string(), plan.config_hash.clone());
    let containers: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
    out.insert(INJECT_ANNOTATION.to_string(), containers.join(","));
    let names: Vec<&str> = plan.vars.iter().map(|v| v.name.as_str()).collect();
    out.insert(ENV_NAMES_ANNOTATION.to_string(), names.join(","));
    for var in &plan.vars {
        let value = match &var.value {
            PlannedValue::Field(_) => continue,
            PlannedValue::Literal(s) | PlannedValue::Attributes(s) | PlannedValue::Versioned(s) => {
                s
            }
        };
        out.insert(format!("{ENV_VALUE_PREFIX}{}", var.name), value.clone());
    }
    if let Some(v) = &plan.version.workload_label {
        out.insert(VERSION_ANNOTATION.to_string(), v.clone());
    }
    if let Some(v) = &plan.version.fallback {
        out.insert(DEFAULT_VERSION_ANNOTATION.to_string(), v.clone());
    }
    if let Some(agent) = &plan.agent.plan {
        out.extend(super::agents::template_fields(agent));
    }
    out
}

/// How a container's version is written into its env (pod-template injection).
enum PodTemplateVersion {
    /// `$(OTEL_RESOURCE_ATTRIBUTES_SERVICE_VERSION)`, a `fieldRef` on the pod's label.
    FromLabel,
    Literal(String),
}

/// The env entries one container gets from `plan` (pod-template injection): the
/// planned variables it does not set itself, in order, materialized for it.
pub fn container_env(plan: &WorkloadPlan, container: &Container) -> Vec<EnvVar> {
    let Some(cp) = plan.containers.iter().find(|c| *c.name == *container.name) else {
        return Vec::new();
    };
    let user = |name: &str| cp.user_overrides.iter().any(|o| o == name);
    let helpers_unused = user(RESOURCE_ATTRIBUTES_VAR);
    let version = if plan.version.pod_label {
        Some(PodTemplateVersion::FromLabel)
    } else {
        plan.version
            .workload_label
            .clone()
            .or_else(|| {
                plan.version
                    .image_tags
                    .as_ref()
                    .and_then(|t| t.get(&*container.name).cloned())
            })
            .or_else(|| plan.version.fallback.clone())
            .map(PodTemplateVersion::Literal)
    };
    let version_text = match &version {
        Some(PodTemplateVersion::FromLabel) => format!("$({VERSION_VAR})"),
        Some(PodTemplateVersion::Literal(v)) => v.replace('$', "$$"),
        None => String::new(),
    };
    let mut env = Vec::with_capacity(plan.vars.len() + 1);
    let uses_version = plan.vars.iter().any(|v| {
        !user(&v.name)
            && matches!(
                &v.value,
                PlannedValue::Attributes(_) | PlannedValue::Versioned(_)
            )
    });
    if matches!(version, Some(PodTemplateVersion::FromLabel)) && uses_version && !user(VERSION_VAR)
    {
        env.push(field_ref(
            VERSION_VAR,
            &format!("metadata.labels['{VERSION_LABEL}']"),
        ));
    }
    for var in &plan.vars {
        if user(&var.name) {
            continue;
        }
        let value = match &var.value {
            PlannedValue::Field(path) => {
                if helpers_unused {
                    continue;
                }
                env.push(field_ref(&var.name, path));
                continue;
            }
            PlannedValue::Literal(s) => s.clone(),
            PlannedValue::Attributes(base) => {
                let mut attributes = String::new();
                if !version_text.is_empty() {
                    attributes.push_str(&format!("service.version={version_text},"));
                }
                attributes.push_str(base);
                attributes.push_str(&format!(",k8s.container.name={}", container.name));
                attributes
            }
            PlannedValue::Versioned(s) => s.replace(VERSION_TOKEN, &version_text),
        };
        env.push(EnvVar {
            name: var.name.clone(),
            value: Some(value),
            value_from: None,
        });
    }
    env
}

/// The env entries the operator's apply lists for `container`: [`container_env`],
/// plus, by name only and in planned order, each entry it added whose value the
/// user has taken since (`kubectl set env`). Server-side apply deletes an entry
/// its applier stops listing even when another manager owns the value, so
/// leaving it out would delete the user's value; a name alone claims no value.
fn applied_env(plan: &WorkloadPlan, container: &Container) -> Vec<EnvVar> {
    let mut env = container_env(plan, container);
    let Some(cp) = plan.containers.iter().find(|c| *c.name == *container.name) else {
        return env;
    };
    let planned_at = |name: &str| plan.vars.iter().position(|v| v.name == name);
    for (i, var) in plan.vars.iter().enumerate() {
        let kept = cp.user_overrides.contains(&var.name)
            && container
                .entry(&var.name)
                .is_some_and(|e| e.listed_by_operator);
        if !kept {
            continue;
        }
        let at = env
            .iter()
            .position(|e| planned_at(&e.name).is_some_and(|j| j > i))
            .unwrap_or(env.len());
        env.insert(
            at,
            EnvVar {
                name: var.name.clone(),
                value: None,
                value_from: None,
            },
        );
    }
    env
}

/// A downward-API entry. `apiVersion: v1` is what the API server defaults it to,
/// so the planned entry equals the live one and a converged workload needs no write.
fn field_ref(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_string()),
                field_path: field_path.to_string(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The digest of a planned entry in the form the API server stores it (see
/// [`env_digest`]), to compare with a live entry.
pub fn stored_digest(e: &EnvVar) -> u64 {
    let from = e
        .value_from
        .as_ref()
        .and_then(|f| serde_json::to_value(f).ok());
    env_digest(&e.name, e.value.as_deref(), from.as_ref())
}

/// The live workload carries exactly `plan` from `policy_name` in `injection`'s
/// form: both workload annotations match, and
/// - admission: the operator's pod-template annotations are exactly
///   [`template_annotations`] and it owns no env entry (none left from
///   pod-template injection);
/// - pod template: every container carries exactly [`container_env`], owned by
///   the operator and equal in its stored form, the operator owns no other
///   entry, and no admission annotation of the operator's is left.
///
/// Entries the user owns are ignored. The controller writes nothing when this
/// holds, so a converged cluster sees zero writes.
pub fn is_applied(
    injection: Injection,
    policy_name: &str,
    plan: &WorkloadPlan,
    live: &Workload,
) -> bool {
    let annotation = |key: &str| live.annotations.get(key).map(String::as_str);
    if annotation(POLICY_ANNOTATION) != Some(policy_name)
        || annotation(CONFIG_HASH_ANNOTATION) != Some(plan.config_hash.as_str())
    {
        return false;
    }
    match injection {
        Injection::Admission => {
            let planned = template_annotations(plan);
            live.template.ours
                == annotations_digest(planned.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                && live
                    .template
                    .containers
                    .iter()
                    .all(|c| c.operator_env().next().is_none())
        }
        Injection::PodTemplate => {
            live.template.ours == 0
                && live.template.containers.iter().all(|c| {
                    let want = container_env(plan, c);
                    let owned = c.operator_env().count();
                    owned == want.len()
                        && want.iter().all(|w| {
                            c.entry(&w.name).is_some_and(|have| {
                                have.owner == crate::workload::EnvOwner::Operator
                                    && have.digest == stored_digest(w)
                            })
                        })
                })
        }
    }
}

/// No operator-owned env entry, no operator template annotation and neither
/// operator workload annotation: nothing left to remove.
pub fn is_clean(live: &Workload) -> bool {
    live.template
        .containers
        .iter()
        .all(|c| c.operator_env().next().is_none())
        && live.template.ours == 0
        && !live.annotations.contains_key(POLICY_ANNOTATION)
        && !live.annotations.contains_key(CONFIG_HASH_ANNOTATION)
}

/// `{"spec": {"template": leaf}}` for a Deployment, the deeper path for a CronJob.
fn at_template(id: &WorkloadId, leaf: Value) -> Value {
    id.kind
        .info()
        .template_path()
        .iter()
        .rev()
        .fold(leaf, |inner, step| json!({ *step: inner }))
}

fn head(id: &WorkloadId, annotations: Option<&BTreeMap<String, String>>) -> Value {
    let mut metadata = json!({ "name": &*id.name, "namespace": &*id.namespace });
    if let (Some(a), Some(m)) = (annotations, metadata.as_object_mut()) {
        m.insert("annotations".into(), json!(a));
    }
    json!({
        "apiVersion": id.kind.info().api_version(),
        "kind": id.kind.as_str(),
        "metadata": metadata,
    })
}

/// The apply configuration carrying `plan` and the operator's workload
/// annotations (policy, config hash, applied-at, ...; see `plan::rollout`).
pub fn apply_body(
    injection: Injection,
    id: &WorkloadId,
    plan: &WorkloadPlan,
    live: Option<&Workload>,
    annotations: &BTreeMap<String, String>,
) -> Value {
    let template = match injection {
        Injection::Admission => {
            json!({ "metadata": { "annotations": template_annotations(plan) } })
        }
        Injection::PodTemplate => {
            let containers: Vec<Value> = live
                .map(|w| w.template.containers.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|c| plan.containers.iter().any(|p| *p.name == *c.name))
                .map(|c| json!({ "name": &*c.name, "env": applied_env(plan, c) }))
                .collect();
            json!({ "spec": { "containers": containers } })
        }
    };
    let mut body = head(id, Some(annotations));
    if let (Some(b), Some(spec)) = (
        body.as_object_mut(),
        at_template(id, template).get("spec").cloned(),
    ) {
        b.insert("spec".into(), spec);
    }
    body
}

/// An apply configuration with the operator's workload annotations only, no
/// template: server-side apply drops every env entry and template annotation the
/// operator added, so the pod template returns to what it was before (the
/// rollback), or keeps the operator's record without changing the template.
pub fn annotations_body(id: &WorkloadId, annotations: &BTreeMap<String, String>) -> Value {
    head(id, Some(annotations))
}

/// The empty apply configuration: the operator no longer wants any field of this workload.
pub fn removal_body(id: &WorkloadId) -> Value {
    head(id, None)
}

/// The operator's MutatingAdmissionPolicy: at pod CREATE, for pods that carry
/// the operator's annotations only, it adds the planned variables to each
/// listed container (see the module documentation), and with an agent plan the
/// agent's volume, init container, mounts and variables. `failurePolicy:
/// Ignore`: tracing never blocks a pod; the operator checks a pod of each
/// rolled-out workload instead and reports `InjectionNotApplied`.
pub fn mutating_admission_policy(operator_version: &str) -> Value {
    // A JSON patch, not an apply configuration: `valueFrom.fieldRef` is an atomic
    // struct, which an apply configuration may not set. `C` is the container at
    // index `i`; what is computed once per container (the names it sets itself,
    // its version) is a variable indexed by `i`, not text repeated per variable.
    let c = "object.spec.containers[i]";
    let own = "variables.own[i]";
    let version = "variables.versions[i]";
    let value = format!(
        "n == '{RESOURCE_ATTRIBUTES_VAR}' ? ({version} != '' ? 'service.version=' + {version} + ',' : '') + variables.ann['{ENV_VALUE_PREFIX}' + n] + ',k8s.container.name=' + {c}.name : variables.ann['{ENV_VALUE_PREFIX}' + n].replace('{VERSION_TOKEN}', {version})"
    );
    let field = |path: &str| {
        format!(
            "Object.spec.containers.env{{name: n, valueFrom: Object.spec.containers.env.valueFrom{{fieldRef: Object.spec.containers.env.valueFrom.fieldRef{{fieldPath: '{path}'}}}}}}"
        )
    };
    let entry = format!(
        "n == '{POD_NAME_VAR}' ? {} : (n == '{NODE_NAME_VAR}' ? {} : Object.spec.containers.env{{name: n, value: {value}}})",
        field("metadata.name"),
        field("spec.nodeName"),
    );
    let wanted = format!(
        "!(n in {own}) && !((n == '{POD_NAME_VAR}' || n == '{NODE_NAME_VAR}') && '{RESOURCE_ATTRIBUTES_VAR}' in {own})"
    );
    let sdk_entries = format!("variables.names.filter(n, {wanted}).map(n, {entry})");

    // The agent, per container `i` among `variables.agentTargets`. Its variables
    // are indexed by `k` (`variables.agentNames[k]`, `variables.agentEdits[k]` =
    // [how, before, after]); `user` is the container's own value.
    let edit = |k: &str, user: &str| {
        format!(
            "(variables.agentEdits[{k}][0] == 'default' ? string(variables.agentEdits[{k}][1]) : [string(variables.agentEdits[{k}][1]), {user}, string(variables.agentEdits[{k}][2])].filter(x, x != '').join(variables.agentEdits[{k}][0] == 'space' ? ' ' : ':'))"
        )
    };
    let targeted = "(i in variables.agentTargets)";
    // Variables the container lacks: added after the SDK's.
    let agent_entries = format!(
        "({targeted} ? variables.agentIdx.filter(k, !(variables.agentNames[k] in {own})).map(k, Object.spec.containers.env{{name: variables.agentNames[k], value: {}}}) : [])",
        edit("k", "''")
    );
    let entries = format!("({sdk_entries} + {agent_entries})");
    let path = "'/spec/containers/' + string(i) + '/env'";
    // Appended one by one, in order, to an env list the container has (a
    // `replace` of the whole list cannot mix the container's own entries with
    // constructed ones: the API server cannot marshal that list); set whole where
    // it has none.
    let env_patches = format!(
        "(has({c}.env) ? {entries}.map(e, JSONPatch{{op: 'add', path: {path} + '/-', value: e}}) : (size({entries}) > 0 ? [JSONPatch{{op: 'add', path: {path}, value: {entries}}}] : []))"
    );
    // Variables the container sets itself and the agent joins: their value, in place.
    let at = format!("{own}.indexOf(variables.agentNames[k])");
    // `string()`: CEL types a list literal mixing these as `dyn` otherwise.
    let user = format!("(has({c}.env[{at}].value) ? string({c}.env[{at}].value) : '')");
    let joined = format!(
        "({targeted} ? variables.agentIdx.filter(k, variables.agentEdits[k][0] != 'default' && variables.agentNames[k] in {own}).map(k, JSONPatch{{op: 'add', path: {path} + '/' + string({at}) + '/value', value: {}}}) : [])",
        edit("k", &user)
    );
    let mount = format!(
        "Object.spec.containers.volumeMounts{{name: '{VOLUME_NAME}', mountPath: '{MOUNT_PATH}', readOnly: true}}"
    );
    let mounts = format!(
        "({targeted} ? [has({c}.volumeMounts) ? JSONPatch{{op: 'add', path: '/spec/containers/' + string(i) + '/volumeMounts/-', value: {mount}}} : JSONPatch{{op: 'add', path: '/spec/containers/' + string(i) + '/volumeMounts', value: [{mount}]}}] : [])"
    );
    let per_container = format!(
        "variables.targets.map(t, object.spec.containers.map(x, x.name).indexOf(t)).map(i, {env_patches} + {joined} + {mounts}).flatten()"
    );

    // Once per pod with an agent: the volume, the init container, its resources.
    let volume = format!(
        "Object.spec.volumes{{name: '{VOLUME_NAME}', emptyDir: Object.spec.volumes.emptyDir{{sizeLimit: variables.ann['{AGENT_VOLUME_SIZE_ANNOTATION}']}}}}"
    );
    let init = format!(
        "Object.spec.initContainers{{name: '{INIT_CONTAINER_NAME}', image: variables.ann['{AGENT_IMAGE_ANNOTATION}'], imagePullPolicy: 'IfNotPresent', command: variables.ann['{AGENT_COMMAND_ANNOTATION}'].split(' '), \
volumeMounts: [Object.spec.initContainers.volumeMounts{{name: '{VOLUME_NAME}', mountPath: '{MOUNT_PATH}'}}], \
resources: Object.spec.initContainers.resources{{}}, \
securityContext: Object.spec.initContainers.securityContext{{runAsNonRoot: true, runAsUser: {INIT_CONTAINER_USER}, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, \
capabilities: Object.spec.initContainers.securityContext.capabilities{{drop: ['ALL']}}, \
seccompProfile: Object.spec.initContainers.securityContext.seccompProfile{{type: 'RuntimeDefault'}}}}}}"
    );
    let init_at = "'/spec/initContainers/' + string(has(object.spec.initContainers) ? size(object.spec.initContainers) : 0)";
    let sections = format!(
        "['limits', 'requests'].filter(s, variables.agentResources.exists(r, r[0] == s)).map(s, JSONPatch{{op: 'add', path: {init_at} + '/resources/' + s, value: {{}}}})"
    );
    let quantities = format!(
        "variables.agentResources.map(r, JSONPatch{{op: 'add', path: {init_at} + '/resources/' + string(r[0]) + '/' + jsonpatch.escapeKey(string(r[1])), value: string(r[2])}})"
    );
    let pod = format!(
        "(size(variables.agentTargets) == 0 ? [] : [\
has(object.spec.volumes) ? JSONPatch{{op: 'add', path: '/spec/volumes/-', value: {volume}}} : JSONPatch{{op: 'add', path: '/spec/volumes', value: [{volume}]}}, \
has(object.spec.initContainers) ? JSONPatch{{op: 'add', path: '/spec/initContainers/-', value: {init}}} : JSONPatch{{op: 'add', path: '/spec/initContainers', value: [{init}]}}\
] + {sections} + {quantities})"
    );
    let expression = format!("{per_container} + {pod}");

    // The containers that get the agent: listed, and neither mounting something
    // at the agent's path nor setting a joined variable with `valueFrom` or
    // already carrying the agent's flag (a second admission, another injector).
    let ci = "object.spec.containers[i]";
    let agent_fit = format!(
        "!(has({ci}.volumeMounts) && {ci}.volumeMounts.exists(m, m.mountPath == '{MOUNT_PATH}')) && \
!(has({ci}.env) && variables.agentIdx.exists(k, variables.agentEdits[k][0] != 'default' && {ci}.env.exists(e, e.name == variables.agentNames[k] && \
(has(e.valueFrom) || (has(e.value) && ((variables.agentEdits[k][1] != '' && e.value.contains(variables.agentEdits[k][1])) || (variables.agentEdits[k][2] != '' && e.value.contains(variables.agentEdits[k][2]))))))))"
    );
    let agent_off = format!(
        "variables.agent == '' || (has(object.spec.volumes) && object.spec.volumes.exists(v, v.name == '{VOLUME_NAME}')) || object.spec.containers.exists(x, x.name == '{INIT_CONTAINER_NAME}') || (has(object.spec.initContainers) && object.spec.initContainers.exists(x, x.name == '{INIT_CONTAINER_NAME}'))"
    );
    let agent_variables = [
        json!({ "name": "agent", "expression": format!(
            "'{AGENT_ANNOTATION}' in variables.ann && '{AGENT_CONTAINERS_ANNOTATION}' in variables.ann && '{AGENT_ENV_ANNOTATION}' in variables.ann && '{AGENT_IMAGE_ANNOTATION}' in variables.ann && '{AGENT_COMMAND_ANNOTATION}' in variables.ann && '{AGENT_VOLUME_SIZE_ANNOTATION}' in variables.ann ? variables.ann['{AGENT_ANNOTATION}'] : ''"
        ) }),
        json!({ "name": "agentNames", "expression": format!(
            "variables.agent == '' ? [] : variables.ann['{AGENT_ENV_ANNOTATION}'].split(',').filter(n, n != '' && '{AGENT_ENV_PREFIX}' + n in variables.ann)"
        ) }),
        json!({ "name": "agentIdx", "expression": "variables.agentNames.map(n, variables.agentNames.indexOf(n))" }),
        json!({ "name": "agentEdits", "expression": format!(
            "variables.agentNames.map(n, (variables.ann['{AGENT_ENV_PREFIX}' + n] + '||').split('|'))"
        ) }),
        json!({ "name": "agentResources", "expression": format!(
            "variables.agent == '' || !('{AGENT_RESOURCES_ANNOTATION}' in variables.ann) ? [] : variables.ann['{AGENT_RESOURCES_ANNOTATION}'].split(',').filter(r, r.contains('.') && r.contains('=')).map(r, [r.split('.', 2)[0], r.split('.', 2)[1].split('=', 2)[0], r.split('=', 2)[1]]).filter(r, r[0] == 'limits' || r[0] == 'requests')"
        ) }),
        json!({ "name": "agentTargets", "expression": format!(
            "{agent_off} ? [] : variables.targets.filter(t, t in variables.ann['{AGENT_CONTAINERS_ANNOTATION}'].split(',')).map(t, object.spec.containers.map(x, x.name).indexOf(t)).filter(i, {agent_fit})"
        ) }),
    ];
    let reference = "(has(c.image) ? c.image.split('@')[0] : '')";
    let tag = format!(
        "({reference}.lastIndexOf(':') > {reference}.lastIndexOf('/') ? {reference}.substring({reference}.lastIndexOf(':') + 1) : '')"
    );
    let mut variables = vec![
        json!({ "name": "ann", "expression": "object.metadata.annotations" }),
        json!({ "name": "containers", "expression": format!("variables.ann['{INJECT_ANNOTATION}'].split(',')") }),
        json!({ "name": "names", "expression": format!("variables.ann['{ENV_NAMES_ANNOTATION}'].split(',')") }),
        json!({ "name": "targets", "expression": "object.spec.containers.map(c, c.name).filter(n, n in variables.containers)" }),
        json!({ "name": "podVersion", "expression": format!(
            "has(object.metadata.labels) && '{VERSION_LABEL}' in object.metadata.labels ? object.metadata.labels['{VERSION_LABEL}'] : ('{VERSION_ANNOTATION}' in variables.ann ? variables.ann['{VERSION_ANNOTATION}'] : '')"
        ) }),
        json!({ "name": "defaultVersion", "expression": format!(
            "'{DEFAULT_VERSION_ANNOTATION}' in variables.ann ? variables.ann['{DEFAULT_VERSION_ANNOTATION}'] : ''"
        ) }),
        // Per container, by index: the names it sets itself, and its version (the
        // pod's, else its image tag, else the policy's).
        json!({ "name": "own", "expression": "object.spec.containers.map(c, has(c.env) ? c.env.map(e, e.name) : [])" }),
        json!({ "name": "versions", "expression": format!(
            "object.spec.containers.map(c, variables.podVersion != '' ? variables.podVersion : ({tag} != '' ? {tag} : variables.defaultVersion))"
        ) }),
    ];
    variables.extend(agent_variables);
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {
            "name": ADMISSION_POLICY_NAME,
            "labels": { crate::workload::MANAGED_BY_LABEL: crate::api::FIELD_MANAGER },
            "annotations": { ADMISSION_POLICY_VERSION_ANNOTATION: operator_version },
        },
        "spec": {
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods"],
                }],
            },
            "matchConditions": [{
                "name": "carries-a-tracing-plan",
                "expression": format!(
                    "has(object.metadata.annotations) && '{INJECT_ANNOTATION}' in object.metadata.annotations && '{ENV_NAMES_ANNOTATION}' in object.metadata.annotations"
                ),
            }],
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "variables": variables,
            "mutations": [{
                "patchType": "JSONPatch",
                "jsonPatch": { "expression": expression },
            }],
        },
    })
}

/// The binding that puts [`mutating_admission_policy`] in force in every
/// namespace the operator may instrument (the system namespaces and its own are left out).
pub fn mutating_admission_policy_binding(operator_namespace: &str) -> Value {
    let mut excluded: Vec<&str> = crate::api::ALWAYS_EXCLUDED_NAMESPACES.to_vec();
    excluded.push(operator_namespace);
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {
            "name": ADMISSION_POLICY_NAME,
            "labels": { crate::workload::MANAGED_BY_LABEL: crate::api::FIELD_MANAGER },
        },
        "spec": {
            "policyName": ADMISSION_POLICY_NAME,
            "matchResources": {
                "namespaceSelector": {
                    "matchExpressions": [{
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": excluded,
                    }],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests;
