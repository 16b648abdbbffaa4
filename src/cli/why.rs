//! `tracing-operator why <kind>/<name> -n <namespace>` (and `kubectl tracing
//! why ...`): reads the cluster with the user's kubeconfig (the policies, the
//! workload, its namespace and, for admission injection, one current pod) and
//! prints what `plan::explain` makes of them, as a table or as JSON.
//!
//! Read-only: it never writes to the cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Selector;
use kube::{Api, Client, ResourceExt};

use crate::api::{CONFIG_HASH_ANNOTATION, TracingPolicy, TracingPolicyStatus, WorkloadKind};
use crate::controller::{GuardedPolicy, policy_view, verify};
use crate::plan::agents::{INIT_CONTAINER_NAME, MOUNT_PATH};
use crate::plan::env::RESOURCE_ATTRIBUTES_VAR;
use crate::plan::explain::{self, Explanation};
use crate::plan::{Injection, NamespaceView, WorkloadPlan};

/// The arguments of `why`.
#[derive(clap::Args, Debug, Clone)]
pub struct WhyArgs {
    /// The workload, as `<kind>/<name>`; kinds as kubectl writes them
    /// (deploy, deployment, sts, statefulset, ds, daemonset, cj, cronjob).
    pub workload: String,
    /// Its namespace; by default the kubeconfig context's namespace, else `default`.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long)]
    pub context: Option<String>,
    /// The operator's namespace (never instrumented; the default collector namespace).
    #[arg(long, default_value = "tracing-operator")]
    pub operator_namespace: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Why `why` could not explain the workload (exit code 3).
#[derive(Debug, thiserror::Error)]
pub enum WhyError {
    #[error(
        "{0:?} is not <kind>/<name> with a kind the operator instruments (deployment, statefulset, daemonset, cronjob)"
    )]
    Workload(String),
    #[error("loading the kubeconfig: {0}")]
    Config(String),
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("reading {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `deploy/gateway` -> (Deployment, gateway). Kinds as kubectl accepts them:
/// short names, singular and plural, with or without the API group.
pub fn parse_workload(text: &str) -> Result<(WorkloadKind, String), WhyError> {
    let bad = || WhyError::Workload(text.to_string());
    let (kind, name) = text.split_once('/').ok_or_else(bad)?;
    let kind = kind.to_ascii_lowercase();
    let kind = kind
        .strip_suffix(".apps")
        .or_else(|| kind.strip_suffix(".batch"))
        .unwrap_or(&kind);
    let kind = match kind {
        "deploy" | "deployment" | "deployments" => WorkloadKind::Deployment,
        "sts" | "statefulset" | "statefulsets" => WorkloadKind::StatefulSet,
        "ds" | "daemonset" | "daemonsets" => WorkloadKind::DaemonSet,
        "cj" | "cronjob" | "cronjobs" => WorkloadKind::CronJob,
        _ => return Err(bad()),
    };
    if name.is_empty() || name.contains('/') {
        return Err(bad());
    }
    Ok((kind, name.to_string()))
}

/// A client for the user's cluster, and the namespace their context names.
async fn connect(args: &WhyArgs) -> Result<(Client, String), WhyError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let failed = |e: &dyn std::fmt::Display| WhyError::Config(e.to_string());
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| WhyError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| failed(&e))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| failed(&e))?,
        (None, None) => kube::Config::infer().await.map_err(|e| failed(&e))?,
    };
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| WhyError::Config(e.to_string()))?;
    Ok((client, namespace))
}

fn read(what: impl Into<String>) -> impl FnOnce(kube::Error) -> WhyError {
    let what = what.into();
    move |source| WhyError::Read { what, source }
}

/// Reads what the explanation needs and explains the workload.
pub async fn explain(args: &WhyArgs) -> Result<Explanation, WhyError> {
    let (kind, name) = parse_workload(&args.workload)?;
    let (client, context_namespace) = connect(args).await?;
    let ns = args.namespace.clone().unwrap_or(context_namespace);
    let what = format!("{kind} {ns}/{name}");

    let object =
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &kind.info().api_resource())
            .get_opt(&name)
            .await
            .map_err(read(what.clone()))?
            .ok_or_else(|| WhyError::NotFound(what.clone()))?;
    let json = serde_json::to_value(&object).map_err(|source| WhyError::Decode {
        what: what.clone(),
        source,
    })?;
    let workload = kind
        .info()
        .project(json.clone())
        .map_err(|source| WhyError::Decode {
            what: what.clone(),
            source,
        })?;
    let namespace = Api::<Namespace>::all(client.clone())
        .get_opt(&ns)
        .await
        .map_err(read(format!("namespace {ns}")))?
        .map(|n| NamespaceView {
            name: n.name_any(),
            labels: n.labels().clone(),
        });
    let listed = Api::<GuardedPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(read("TracingPolicies"))?;
    let readable: Vec<&TracingPolicy> = listed
        .items
        .iter()
        .filter_map(|p| p.0.as_ref().ok())
        .collect();
    let policies: Vec<_> = readable.iter().map(|p| policy_view(p)).collect();
    let statuses: BTreeMap<String, TracingPolicyStatus> = readable
        .iter()
        .filter_map(|p| Some((p.name_any(), p.status.clone()?)))
        .collect();
    let injection = injection_of(&policies, &statuses, &workload);
    let manifest_env = manifest_env(&json, kind);
    let mut e = explain::explain(&explain::Input {
        operator_namespace: &args.operator_namespace,
        policies: &policies,
        statuses: &statuses,
        namespace: namespace.as_ref(),
        workload: &workload,
        manifest_env: &manifest_env,
        injection,
        now: Timestamp::now(),
    });
    for unreadable in listed.items.iter().filter(|p| p.0.is_err()) {
        e.notes.push(format!(
            "TracingPolicy {} cannot be read (stored under an older schema) and is left out",
            unreadable.name_any()
        ));
    }
    if explain::wants_pod_check(&e)
        && let Some(plan) = e.plan.clone()
    {
        let pod = current_pod(&client, &ns, &json, &plan).await?;
        e = explain::with_pod_check(e, pod);
    }
    Ok(e)
}

/// How settings reach this workload's pods: as the status of the policy that
/// owns (or would own) it reports.
fn injection_of(
    policies: &[crate::plan::PolicyView],
    statuses: &BTreeMap<String, TracingPolicyStatus>,
    workload: &crate::plan::Workload,
) -> Injection {
    let owner = workload
        .annotations
        .get(crate::api::POLICY_ANNOTATION)
        .cloned()
        .or_else(|| policies.first().map(|p| p.name.clone()));
    match owner
        .and_then(|o| statuses.get(&o))
        .and_then(|s| s.injection.as_deref())
    {
        Some("PodTemplate") => Injection::PodTemplate,
        _ => Injection::Admission,
    }
}

/// Each container's own env, as its manifest writes it (`valueFrom` entries in words).
fn manifest_env(
    object: &serde_json::Value,
    kind: WorkloadKind,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut template = object;
    for step in kind.info().template_path() {
        template = &template[*step];
    }
    let mut out = BTreeMap::new();
    for c in template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let env = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let value = match (e["value"].as_str(), e.get("valueFrom")) {
                    (Some(v), _) => v.to_string(),
                    (None, Some(from)) => format!("valueFrom {from}"),
                    (None, None) => String::new(),
                };
                (e["name"].as_str().unwrap_or_default().to_string(), value)
            })
            .collect();
        out.insert(name, env);
    }
    out
}

/// A running pod of the workload that carries `plan`'s config hash, and what
/// it lacks of the plan (`controller::verify`'s verdict).
async fn current_pod(
    client: &Client,
    ns: &str,
    object: &serde_json::Value,
    plan: &WorkloadPlan,
) -> Result<Option<(String, String)>, WhyError> {
    let Some(selector) =
        serde_json::from_value::<LabelSelector>(object["spec"]["selector"].clone())
            .ok()
            .and_then(|s| Selector::try_from(s).ok())
    else {
        return Ok(None);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(read(format!("the pods in namespace {ns}")))?;
    Ok(pods
        .items
        .iter()
        .find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.annotations().get(CONFIG_HASH_ANNOTATION) == Some(&plan.config_hash)
        })
        .map(|pod| (pod.name_any(), verify::verdict(pod, plan))))
}

/// A table whose columns are as wide as their widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The explanation for people.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {}/{}: {}", e.kind, e.namespace, e.name, e.summary);

    if !e.policies.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = e
            .policies
            .iter()
            .map(|p| {
                let why = match (&p.excluded_by, p.role) {
                    (Some(x), "owner") => format!("owner, but {}", x.message),
                    (Some(x), _) => x.message.clone(),
                    (None, "owner") => format!(
                        "owner: {}",
                        e.owner.as_ref().map_or("", |o| o.reason.as_str())
                    ),
                    (None, _) => p.note.clone(),
                };
                vec![
                    p.name.clone(),
                    p.mode.to_string(),
                    p.priority.to_string(),
                    p.created.clone(),
                    if p.selects { "yes" } else { "no" }.to_string(),
                    why,
                ]
            })
            .collect();
        table(
            &mut out,
            &["POLICY", "MODE", "PRIORITY", "CREATED", "SELECTS", "WHY"],
            &rows,
        );
    }

    if !e.variables.is_empty() {
        let _ = writeln!(
            out,
            "\nPlanned variables ({} injection; container{} {})",
            e.injection,
            if e.containers.len() == 1 { "" } else { "s" },
            e.containers.join(", ")
        );
        let rows: Vec<Vec<String>> = e
            .variables
            .iter()
            .map(|v| {
                let value = if v.name == RESOURCE_ATTRIBUTES_VAR {
                    format!("({} attributes, below)", e.attributes.len())
                } else if v.kept_in.len() == e.containers.len() {
                    let own = e
                        .user_overrides
                        .iter()
                        .find(|o| o.variable == v.name)
                        .map_or(String::new(), |o| o.value.clone());
                    format!("{own} (the manifest's own value, kept)")
                } else {
                    v.value.clone()
                };
                let source = if v.name == RESOURCE_ATTRIBUTES_VAR {
                    "the policy, the workload and its namespace".to_string()
                } else {
                    v.source.clone()
                };
                vec![v.name.clone(), value, source]
            })
            .collect();
        table(&mut out, &["VARIABLE", "VALUE", "SOURCE"], &rows);
    }
    if !e.attributes.is_empty() {
        out.push_str("\nOTEL_RESOURCE_ATTRIBUTES\n");
        let rows: Vec<Vec<String>> = e
            .attributes
            .iter()
            .map(|a| vec![a.key.clone(), a.value.clone(), a.source.clone()])
            .collect();
        table(&mut out, &["ATTRIBUTE", "VALUE", "SOURCE"], &rows);
    }
    if let Some(a) = &e.agent {
        if !a.language.is_empty() {
            let _ = writeln!(
                out,
                "\nAgent: {} ({})\n  {} copied by the init container {INIT_CONTAINER_NAME}, mounted read-only at {MOUNT_PATH} in {}",
                a.language,
                a.source,
                a.image,
                a.containers.join(", ")
            );
            let rows: Vec<Vec<String>> = a
                .variables
                .iter()
                .map(|v| vec![v.name.clone(), v.value.clone()])
                .collect();
            table(&mut out, &["VARIABLE", "VALUE"], &rows);
        }
        for s in &a.skipped {
            let what = if s.container.is_empty() {
                "the workload".to_string()
            } else {
                format!("container {}", s.container)
            };
            let _ = writeln!(
                out,
                "No {} agent for {what} ({}): {}",
                s.language, s.reason, s.message
            );
        }
    }
    if !e.user_overrides.is_empty() {
        out.push_str("\nSet by the manifest (the user's value wins)\n");
        let rows: Vec<Vec<String>> = e
            .user_overrides
            .iter()
            .map(|o| {
                vec![
                    o.container.clone(),
                    o.variable.clone(),
                    o.value.clone(),
                    o.planned.clone(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["CONTAINER", "VARIABLE", "MANIFEST", "THE POLICY WOULD SET"],
            &rows,
        );
    }
    if let Some(r) = &e.rollout {
        let _ = write!(out, "\nRollout: {}", r.message);
        if !r.message.contains(&r.config_hash) {
            let _ = write!(out, " (config {})", r.config_hash);
        }
        out.push('\n');
    }
    if let Some(p) = &e.pod {
        let _ = writeln!(out, "Pods: {}", p.message);
    }
    for note in &e.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_named_as_kubectl_names_them() {
        for (text, kind) in [
            ("deploy/gateway", WorkloadKind::Deployment),
            ("deployment/gateway", WorkloadKind::Deployment),
            ("deployments.apps/gateway", WorkloadKind::Deployment),
            ("sts/gateway", WorkloadKind::StatefulSet),
            ("StatefulSet/gateway", WorkloadKind::StatefulSet),
            ("ds/gateway", WorkloadKind::DaemonSet),
            ("cronjobs.batch/gateway", WorkloadKind::CronJob),
        ] {
            assert_eq!(
                parse_workload(text).unwrap(),
                (kind, "gateway".to_string()),
                "{text}"
            );
        }
        for bad in ["gateway", "pod/gateway", "deploy/", "deploy/a/b"] {
            let error = parse_workload(bad).unwrap_err();
            assert!(
                error.to_string().contains("<kind>/<name>"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn tables_align_their_columns() {
        let mut out = String::new();
        table(
            &mut out,
            &["A", "BB"],
            &[
                vec!["long value".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(out, "A           BB\nlong value  x\ny           z\n");
    }
}
