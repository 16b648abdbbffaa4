//! The Helm chart and the manifests rendered from it, checked without a cluster:
//! `helm lint --strict`, deploy/ against a fresh render, the chart's copy of the
//! CRD, and the fields of the rendered objects that users rely on (replicas,
//! leader election, security context, probes, least-privilege RBAC, labels, the
//! collector settings in the operator's flags, its RBAC and its admission policy).
//!
//! helm is the testbed's pinned build (`testbed/tools/build`, built on first use).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;

const RELEASE: &str = "tracing-operator";
const NAMESPACE: &str = "tracing-operator";
/// The testbed's Kubernetes release; offline `helm template` assumes an old one otherwise.
const KUBE_VERSION: &str = "1.37.2";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("charts/tracing-operator")
}

/// The pinned helm binary.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(repo().join("testbed/tools/build"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run testbed/tools/build");
        assert!(out.status.success(), "testbed/tools/build failed");
        let bin = String::from_utf8(out.stdout).expect("tools/build prints a path");
        let helm = PathBuf::from(bin.trim()).join("helm");
        assert!(
            helm.is_file(),
            "testbed/tools/build did not produce {}",
            helm.display()
        );
        helm
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `helm template` of the chart as release `tracing-operator` in namespace
/// `tracing-operator` with `--set` values; `Err` carries helm's stderr.
fn try_render(set: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm());
    cmd.arg("template").arg(RELEASE).arg(chart());
    cmd.args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = run(&mut cmd);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let yaml = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    Ok(parse_documents(&yaml))
}

fn render(set: &[&str]) -> Vec<Value> {
    try_render(set).unwrap_or_else(|e| panic!("helm template {set:?} failed:\n{e}"))
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("rendered YAML parses");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kinds(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default())
        .collect()
}

/// The object of `kind` named `name` in `namespace` (`None`: cluster-scoped).
fn named<T: DeserializeOwned>(
    objects: &[Value],
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> T {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"].as_str() == namespace
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name} in {namespace:?}, rendered kinds: {:?}",
        kinds(objects)
    );
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("{kind} {name} does not parse: {e}"))
}

/// The namespaces of the rendered objects of `kind` named `name`, sorted.
fn namespaces_of(objects: &[Value], kind: &str, name: &str) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .map(|o| {
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    out.sort();
    out
}

/// The only object of `kind`, as its typed struct.
fn one<T: DeserializeOwned>(objects: &[Value], kind: &str) -> T {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, rendered kinds: {:?}",
        kinds(objects)
    );
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("{kind} does not parse: {e}"))
}

fn operator_container(deployment: &Deployment) -> Container {
    let pod = deployment.spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.containers.len(), 1, "one container");
    pod.containers[0].clone()
}

/// Chart.yaml's field, e.g. `appVersion`.
fn chart_field(field: &str) -> String {
    let text = std::fs::read_to_string(chart().join("Chart.yaml")).expect("read Chart.yaml");
    let chart: Value = serde_saphyr::from_str(&text).expect("Chart.yaml parses");
    chart[field]
        .as_str()
        .unwrap_or_else(|| panic!("Chart.yaml has no {field}"))
        .to_string()
}

/// A directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tracing-operator-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn yaml_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        })
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (name, text)
        })
        .collect()
}

fn lint(set: &[&str]) {
    let mut cmd = Command::new(helm());
    cmd.args(["lint", "--strict", "--kube-version", KUBE_VERSION])
        .arg(chart());
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = run(&mut cmd);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "helm lint --strict {set:?} failed:\n{report}"
    );
    assert!(
        !report.contains("[WARNING]") && !report.contains("[ERROR]"),
        "helm lint --strict {set:?} is not clean:\n{report}"
    );
}

#[test]
fn helm_lint_is_clean_with_default_and_optional_objects() {
    lint(&[]);
    lint(&[
        "metrics.serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
        "telemetry.otlpEndpoint=http://otel-collector.observability:4317",
        "metrics.prometheusRule.enabled=true",
        "metrics.collectorPodMonitor.enabled=true",
        "metrics.dashboards.enabled=true",
    ]);
    lint(&[
        "collector.allowedNamespaces={*}",
        "collector.allowExternalBackends=true",
        "admissionPolicy.enabled=false",
    ]);
}

/// `kubectl apply -f deploy/` must install what the chart installs.
#[test]
fn deploy_manifests_match_a_fresh_render() {
    let fresh = TempDir::new("deploy-render");
    let out = run(Command::new(repo().join("deploy/render"))
        .arg(&fresh.0)
        .env("HELM", helm()));
    assert!(
        out.status.success(),
        "deploy/render failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let expected = yaml_files(&fresh.0);
    let checked_in = yaml_files(&repo().join("deploy"));
    assert!(!expected.is_empty(), "deploy/render wrote no manifests");
    assert_eq!(
        checked_in.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "deploy/ holds other files than deploy/render writes (kubectl apply -f deploy/ would apply them): run deploy/render"
    );
    for (name, text) in &expected {
        assert!(
            &checked_in[name] == text,
            "deploy/{name} is stale: run deploy/render"
        );
    }

    // The Namespace comes first (kubectl applies files in name order) and every
    // namespaced object lives in it.
    let first = expected.keys().next().expect("a file");
    let namespace = parse_documents(&expected[first]);
    assert_eq!(
        kinds(&namespace),
        ["Namespace"],
        "{first} holds the Namespace alone"
    );
    assert_eq!(namespace[0]["metadata"]["name"], NAMESPACE);
    assert_eq!(
        namespace[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let all: Vec<Value> = expected.values().flat_map(|t| parse_documents(t)).collect();
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    // The collector Role and its binding live in each allowed collector
    // namespace (by default this one and observability); the rest lives here.
    let collectors = format!("{RELEASE}-collectors");
    for object in all
        .iter()
        .filter(|o| !cluster_scoped.contains(&o["kind"].as_str().unwrap_or_default()))
        .filter(|o| o["metadata"]["name"] != collectors.as_str())
    {
        assert_eq!(
            object["metadata"]["namespace"], NAMESPACE,
            "namespace of {} {}",
            object["kind"], object["metadata"]["name"]
        );
    }
    for kind in ["Role", "RoleBinding"] {
        assert_eq!(
            namespaces_of(&all, kind, &collectors),
            ["observability", NAMESPACE],
            "deploy/ holds the collector {kind} in the default allowed namespaces"
        );
    }
    assert_eq!(
        kinds(&all)
            .iter()
            .filter(|k| **k == "CustomResourceDefinition")
            .count(),
        1,
        "deploy/ installs the CRD"
    );
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let copy = std::fs::read_to_string(chart().join("crds/tracingpolicy.yaml"))
        .expect("read the chart's CRD");
    let generated = tracing_operator::api::crd_yaml().expect("CRD serializes");
    assert!(
        copy == generated,
        "charts/tracing-operator/crds/tracingpolicy.yaml is stale: run `cargo run -- crd > crds/tracingpolicy.yaml`, \
         copy it to charts/tracing-operator/crds/ and run deploy/render"
    );
    let top = std::fs::read_to_string(repo().join("crds/tracingpolicy.yaml"))
        .expect("read crds/tracingpolicy.yaml");
    assert!(
        copy == top,
        "charts/tracing-operator/crds/tracingpolicy.yaml differs from crds/tracingpolicy.yaml"
    );
}

#[test]
fn default_install_runs_two_leader_elected_hardened_replicas() {
    let objects = render(&[]);
    let deployment: Deployment = one(&objects, "Deployment");
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().expect("pod spec");
    let c = operator_container(&deployment);

    // Image: the chart's appVersion, which is the crate's version.
    assert_eq!(
        chart_field("appVersion"),
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion follows Cargo.toml"
    );
    assert_eq!(
        c.image.as_deref(),
        Some(
            format!(
                "ghcr.io/caas/tracing-operator:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));

    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert!(
        args.iter().any(|a| a == "--leader-elect"),
        "leader election on by default: {args:?}"
    );

    // Namespace and identity from the downward API.
    let env: BTreeMap<String, String> = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value_from?.field_ref?.field_path)))
        .collect();
    assert_eq!(
        env.get("POD_NAMESPACE").map(String::as_str),
        Some("metadata.namespace")
    );
    assert_eq!(
        env.get("POD_NAME").map(String::as_str),
        Some("metadata.name")
    );

    // Pod Security Standard `restricted`, plus a read-only root filesystem.
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, None, "never privileged");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(caps.add, None);
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_ne!(pod.host_network, Some(true));

    // Probes on the metrics server, which --metrics-addr puts on the named port.
    let port = c
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("metrics port");
    assert!(
        args.contains(&format!("--metrics-addr=0.0.0.0:{}", port.container_port)),
        "{args:?}"
    );
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("metrics".into()));
    }

    let resources = c.resources.as_ref().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(
            resources
                .requests
                .as_ref()
                .is_some_and(|r| r.contains_key(key)),
            "{key} request"
        );
    }
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory")),
        "memory limit"
    );

    // Replicas prefer different nodes.
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .expect("podAntiAffinity");
    let preferred = anti
        .preferred_during_scheduling_ignored_during_execution
        .as_deref()
        .unwrap_or_default();
    assert!(
        preferred
            .iter()
            .any(|t| t.pod_affinity_term.topology_key == "kubernetes.io/hostname")
    );
    assert_eq!(
        anti.required_during_scheduling_ignored_during_execution, None,
        "a small cluster can still run both"
    );

    // A node drain keeps a standby.
    let pdb: PodDisruptionBudget = one(&objects, "PodDisruptionBudget");
    let pdb_spec = pdb.spec.expect("pdb spec");
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)));
    assert_eq!(pdb_spec.selector, Some(spec.selector.clone()));
}

/// The arguments the chart passes are accepted by the binary this crate builds
/// (with default values and with other collector settings): it gets past
/// argument parsing and the collector settings and stops at the (missing) kubeconfig.
#[test]
fn operator_binary_accepts_the_charts_arguments() {
    for set in [
        &["telemetry.otlpEndpoint=http://127.0.0.1:1"][..],
        &[
            "collector.allowedNamespaces={team-a,team-b}",
            "collector.allowedImages={registry.corp.example/otel/,otel/opentelemetry-collector-contrib}",
            "collector.allowExternalBackends=true",
        ][..],
        &["collector.allowedNamespaces={*}"][..],
    ] {
        binary_accepts_the_arguments_of(set);
    }
}

fn binary_accepts_the_arguments_of(set: &[&str]) {
    let deployment: Deployment = one(&render(set), "Deployment");
    let c = operator_container(&deployment);
    let home = TempDir::new("chart-args-home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracing-operator"))
        .args(c.args.unwrap_or_default())
        .env_clear()
        .env("HOME", &home.0)
        .env("KUBECONFIG", home.0.join("no-such-kubeconfig"))
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_NAME", "tracing-operator-0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracing-operator");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tracing-operator kept running without a kubeconfig");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // clap exits with 2 on a bad argument.
    assert_ne!(
        out.status.code(),
        Some(2),
        "the chart passes arguments the binary rejects:\n{stderr}"
    );
    assert!(
        stderr.contains("kubeconfig"),
        "{set:?}: expected to stop at the missing kubeconfig, got {:?}:\n{stderr}",
        out.status
    );
}

/// The operator's arguments in a render.
fn operator_args(objects: &[Value]) -> Vec<String> {
    let deployment: Deployment = one(objects, "Deployment");
    operator_container(&deployment).args.unwrap_or_default()
}

/// The CEL text of the admission policy's variable `name`.
fn admission_variable(policy: &Value, name: &str) -> String {
    policy["spec"]["variables"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["expression"].as_str())
        .unwrap_or_else(|| panic!("admission policy variable {name}"))
        .to_string()
}

/// The chart's collector values become the operator's flags, the namespaces of
/// its collector Roles and the admission policy's settings, all the same.
#[test]
fn collector_settings_reach_the_flags_the_rbac_and_the_admission_policy() {
    let guard = format!("{RELEASE}-collector-guard");
    let collectors = format!("{RELEASE}-collectors");

    // Defaults: the release namespace and observability, the pinned image's
    // repository, in-cluster backends.
    let objects = render(&[]);
    let args = operator_args(&objects);
    for flag in [
        "--allowed-collector-namespaces=tracing-operator,observability",
        "--allowed-collector-images=otel/opentelemetry-collector-contrib",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    assert!(!args.iter().any(|a| a == "--allow-external-backends"));
    assert_eq!(
        tracing_operator::plan::guard::image_repository(
            tracing_operator::plan::collector::DEFAULT_COLLECTOR_IMAGE
        ),
        "otel/opentelemetry-collector-contrib",
        "the default prefix admits the default image"
    );
    let policy: Value = named(&objects, "ValidatingAdmissionPolicy", &guard, None);
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let rule = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rule["apiGroups"], serde_json::json!(["tracing.caas.io"]));
    assert_eq!(rule["resources"], serde_json::json!(["tracingpolicies"]));
    assert_eq!(rule["operations"], serde_json::json!(["CREATE", "UPDATE"]));
    for (variable, cel) in [
        ("operatorNamespace", r#""tracing-operator""#),
        ("anyNamespace", "false"),
        (
            "allowedNamespaces",
            r#"["tracing-operator","observability"]"#,
        ),
        (
            "allowedImages",
            r#"["otel/opentelemetry-collector-contrib"]"#,
        ),
        ("externalBackends", "false"),
    ] {
        assert_eq!(admission_variable(&policy, variable), cel, "{variable}");
    }
    assert!(
        admission_variable(&policy, "image").contains(&format!(
            "{:?}",
            tracing_operator::plan::collector::DEFAULT_COLLECTOR_IMAGE
        )),
        "a policy without an image is judged by the operator's default image"
    );
    let binding: Value = named(&objects, "ValidatingAdmissionPolicyBinding", &guard, None);
    assert_eq!(binding["spec"]["policyName"], guard.as_str());
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );

    // Listed namespaces and images, external backends.
    let objects = render(&[
        "collector.allowedNamespaces={team-a,team-b,tracing-operator}",
        "collector.allowedImages={registry.corp.example/otel/}",
        "collector.allowExternalBackends=true",
    ]);
    let args = operator_args(&objects);
    for flag in [
        "--allowed-collector-namespaces=tracing-operator,team-a,team-b",
        "--allowed-collector-images=registry.corp.example/otel",
        "--allow-external-backends",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    for kind in ["Role", "RoleBinding"] {
        assert_eq!(
            namespaces_of(&objects, kind, &collectors),
            ["team-a", "team-b", NAMESPACE],
            "{kind}s only where collectors may run"
        );
    }
    let policy: Value = named(&objects, "ValidatingAdmissionPolicy", &guard, None);
    for (variable, cel) in [
        (
            "allowedNamespaces",
            r#"["tracing-operator","team-a","team-b"]"#,
        ),
        ("allowedImages", r#"["registry.corp.example/otel"]"#),
        ("externalBackends", "true"),
    ] {
        assert_eq!(admission_variable(&policy, variable), cel, "{variable}");
    }

    // Any namespace: the collector permissions become cluster-wide.
    let objects = render(&["collector.allowedNamespaces={*}"]);
    let args = operator_args(&objects);
    assert!(
        args.iter().any(|a| a == "--allowed-collector-namespaces=*"),
        "{args:?}"
    );
    assert!(namespaces_of(&objects, "Role", &collectors).is_empty());
    let role: ClusterRole = named(&objects, "ClusterRole", &collectors, None);
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        collector_grants()
    );
    let binding: ClusterRoleBinding = named(&objects, "ClusterRoleBinding", &collectors, None);
    assert_eq!(binding.role_ref.name, collectors);
    let policy: Value = named(&objects, "ValidatingAdmissionPolicy", &guard, None);
    assert_eq!(admission_variable(&policy, "anyNamespace"), "true");

    // The admission policy can be left out; the operator's own check stays.
    let objects = render(&["admissionPolicy.enabled=false"]);
    assert!(
        !kinds(&objects)
            .iter()
            .any(|k| k.starts_with("ValidatingAdmissionPolicy")),
        "{:?}",
        kinds(&objects)
    );
    assert!(
        operator_args(&objects)
            .iter()
            .any(|a| a.starts_with("--allowed-collector-namespaces="))
    );

    // Without rbac.create, no Role or ClusterRole at all.
    let objects = render(&[
        "rbac.create=false",
        "leaderElection.enabled=false",
        "replicaCount=1",
    ]);
    for kind in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"] {
        assert!(
            !kinds(&objects).contains(&kind),
            "no {kind} without rbac.create"
        );
    }
}

fn grants(rules: &[PolicyRule]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    let names = rule
                        .resource_names
                        .as_deref()
                        .map(|n| format!(" {}", n.join(",")))
                        .unwrap_or_default();
                    let group = if group.is_empty() { "core" } else { group };
                    out.insert(format!("{group}/{resource} {verb}{names}"));
                }
            }
        }
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs: {rule:?}"
        );
    }
    out
}

/// What the operator may do in an allowed collector namespace.
fn collector_grants() -> BTreeSet<String> {
    [
        "apps/deployments create",
        "apps/deployments delete",
        "core/configmaps create",
        "core/configmaps patch",
        "core/configmaps delete",
        "core/services create",
        "core/services patch",
        "core/services delete",
        "core/secrets get",
        // Each collector tier's PodDisruptionBudget and the routers' autoscaler.
        "policy/poddisruptionbudgets create",
        "policy/poddisruptionbudgets patch",
        "policy/poddisruptionbudgets delete",
        "autoscaling/horizontalpodautoscalers create",
        "autoscaling/horizontalpodautoscalers patch",
        "autoscaling/horizontalpodautoscalers delete",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses() {
    let objects = render(&[]);
    let role: ClusterRole = one(&objects, "ClusterRole");
    let rules = role.rules.clone().unwrap_or_default();
    let granted = grants(&rules);

    for rule in &rules {
        let wildcard = |v: &[String]| v.iter().any(|x| x == "*");
        assert!(
            !wildcard(&rule.verbs)
                && !wildcard(rule.api_groups.as_deref().unwrap_or_default())
                && !wildcard(rule.resources.as_deref().unwrap_or_default()),
            "no wildcards: {rule:?}"
        );
    }
    // Cluster-wide: no Secrets at all, and nothing created but Events and the
    // operator's own admission policy, by name. Both are granted only in the
    // allowed collector namespaces (below).
    assert!(
        !granted.iter().any(|g| g.starts_with("core/secrets ")),
        "no Secrets cluster-wide: {granted:#?}"
    );
    let creates: Vec<&String> = granted.iter().filter(|g| g.contains(" create")).collect();
    assert_eq!(
        creates,
        [
            "admissionregistration.k8s.io/mutatingadmissionpolicies create tracing-operator.tracing.caas.io",
            "admissionregistration.k8s.io/mutatingadmissionpolicybindings create tracing-operator.tracing.caas.io",
            "events.k8s.io/events create",
        ],
        "cluster-wide the operator creates Events and its admission policy only"
    );
    // On pods only list (the injection check; no exec, attach, port-forward,
    // eviction) and no Lease outside the operator's namespace.
    let pods: Vec<&String> = granted
        .iter()
        .filter(|g| g.starts_with("core/pods"))
        .collect();
    assert_eq!(pods, ["core/pods list"], "only listing pods: {granted:#?}");
    assert!(
        !granted.iter().any(|g| g.contains("leases")),
        "Leases only through the namespaced Role"
    );

    let expected: BTreeSet<String> = [
        "tracing.caas.io/tracingpolicies get",
        "tracing.caas.io/tracingpolicies list",
        "tracing.caas.io/tracingpolicies watch",
        "tracing.caas.io/tracingpolicies patch",
        "tracing.caas.io/tracingpolicies/status patch",
        "tracing.caas.io/tracingpolicies/finalizers update",
        "core/namespaces list",
        "core/namespaces watch",
        "apps/deployments get",
        "apps/deployments list",
        "apps/deployments watch",
        "apps/deployments patch",
        "apps/statefulsets get",
        "apps/statefulsets list",
        "apps/statefulsets watch",
        "apps/statefulsets patch",
        "apps/daemonsets get",
        "apps/daemonsets list",
        "apps/daemonsets watch",
        "apps/daemonsets patch",
        "batch/cronjobs get",
        "batch/cronjobs list",
        "batch/cronjobs watch",
        "batch/cronjobs patch",
        "core/pods list",
        "admissionregistration.k8s.io/mutatingadmissionpolicies get tracing-operator.tracing.caas.io",
        "admissionregistration.k8s.io/mutatingadmissionpolicies create tracing-operator.tracing.caas.io",
        "admissionregistration.k8s.io/mutatingadmissionpolicies patch tracing-operator.tracing.caas.io",
        "admissionregistration.k8s.io/mutatingadmissionpolicybindings get tracing-operator.tracing.caas.io",
        "admissionregistration.k8s.io/mutatingadmissionpolicybindings create tracing-operator.tracing.caas.io",
        "admissionregistration.k8s.io/mutatingadmissionpolicybindings patch tracing-operator.tracing.caas.io",
        "core/configmaps list",
        "core/configmaps watch",
        "core/services list",
        "core/services watch",
        "policy/poddisruptionbudgets list",
        "policy/poddisruptionbudgets watch",
        "autoscaling/horizontalpodautoscalers list",
        "autoscaling/horizontalpodautoscalers watch",
        "events.k8s.io/events create",
        "events.k8s.io/events patch",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        granted, expected,
        "ClusterRole grants: change the expected set only with the operator's code"
    );

    // Every rule carries a comment saying why (the issue asks for it).
    let template = std::fs::read_to_string(chart().join("templates/clusterrole.yaml"))
        .expect("read clusterrole.yaml");
    let lines: Vec<&str> = template.lines().collect();
    for (i, _) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- apiGroups:"))
    {
        assert!(
            i > 0 && lines[i - 1].trim_start().starts_with('#'),
            "rule at clusterrole.yaml:{} has no comment",
            i + 1
        );
    }

    // Leases: only the operator's own, in its namespace.
    let lease_role: Role = named(
        &objects,
        "Role",
        &format!("{RELEASE}-leader-election"),
        Some(NAMESPACE),
    );
    assert_eq!(lease_role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let lease_grants = grants(lease_role.rules.as_deref().unwrap_or_default());
    let expected_lease: BTreeSet<String> = [
        "coordination.k8s.io/leases create",
        "coordination.k8s.io/leases get tracing-operator",
        "coordination.k8s.io/leases update tracing-operator",
        "coordination.k8s.io/leases patch tracing-operator",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(lease_grants, expected_lease);

    // Both bindings give these to the ServiceAccount the pods run as.
    let deployment: Deployment = one(&objects, "Deployment");
    let sa = deployment
        .spec
        .template
        .spec
        .and_then(|p| p.service_account_name)
        .expect("serviceAccountName");
    assert!(kinds(&objects).contains(&"ServiceAccount"));
    let crb: ClusterRoleBinding = one(&objects, "ClusterRoleBinding");
    assert_eq!(
        (crb.role_ref.kind.as_str(), crb.role_ref.name.as_str()),
        (
            "ClusterRole",
            role.metadata.name.as_deref().unwrap_or_default()
        )
    );
    let rb: RoleBinding = named(
        &objects,
        "RoleBinding",
        &format!("{RELEASE}-leader-election"),
        Some(NAMESPACE),
    );
    assert_eq!(
        (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
        (
            "Role",
            lease_role.metadata.name.as_deref().unwrap_or_default()
        )
    );
    let mut subjects_of_bindings = vec![crb.subjects, rb.subjects];

    // Running collectors: a Role in each allowed collector namespace (the release
    // namespace and, by default, observability), and nowhere else.
    let collectors = format!("{RELEASE}-collectors");
    assert_eq!(
        namespaces_of(&objects, "Role", &collectors),
        ["observability", NAMESPACE]
    );
    for ns in [NAMESPACE, "observability"] {
        let role: Role = named(&objects, "Role", &collectors, Some(ns));
        assert_eq!(
            grants(role.rules.as_deref().unwrap_or_default()),
            collector_grants(),
            "collector Role in {ns}"
        );
        let binding: RoleBinding = named(&objects, "RoleBinding", &collectors, Some(ns));
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("Role", collectors.as_str())
        );
        subjects_of_bindings.push(binding.subjects);
    }
    for subjects in subjects_of_bindings {
        let subjects = subjects.unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa);
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    }
}

#[test]
fn every_object_has_the_standard_labels() {
    let objects = render(&[
        "metrics.serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "metrics.collectorPodMonitor.enabled=true",
        "metrics.dashboards.enabled=true",
    ]);
    let version = chart_field("appVersion");
    for object in &objects {
        let labels = &object["metadata"]["labels"];
        let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
        assert_eq!(
            labels["app.kubernetes.io/name"], "tracing-operator",
            "{what}"
        );
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{what}");
        assert_eq!(
            labels["app.kubernetes.io/version"],
            version.as_str(),
            "{what}"
        );
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{what}");
        assert_eq!(
            labels["app.kubernetes.io/part-of"], "tracing-operator",
            "{what}"
        );
        assert_eq!(
            labels["helm.sh/chart"],
            format!("tracing-operator-{}", chart_field("version")).as_str(),
            "{what}"
        );
    }
}

#[test]
fn metrics_service_and_service_monitor_reach_the_metrics_port() {
    let objects = render(&[]);
    assert!(
        !kinds(&objects).contains(&"ServiceMonitor"),
        "ServiceMonitor is off by default"
    );
    assert!(
        !kinds(&objects).contains(&"NetworkPolicy"),
        "NetworkPolicy is off by default"
    );

    let objects = render(&["metrics.serviceMonitor.enabled=true"]);
    let deployment: Deployment = one(&objects, "Deployment");
    let pod_labels = deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let service: Service = one(&objects, "Service");
    let spec = service.spec.as_ref().expect("service spec");
    for (k, v) in spec.selector.as_ref().expect("selector") {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "Service selector {k} matches the pods"
        );
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("metrics"));
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("metrics".into()))
    );

    let monitor = objects
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .expect("ServiceMonitor when enabled");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], NAMESPACE);
    let service_labels = service.metadata.labels.clone().unwrap_or_default();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            service_labels.get(k).map(String::as_str),
            v.as_str(),
            "ServiceMonitor selector {k} matches the Service"
        );
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}

#[test]
fn network_policy_admits_only_the_metrics_port() {
    let objects = render(&[
        "networkPolicy.enabled=true",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
    ]);
    let deployment: Deployment = one(&objects, "Deployment");
    let policy: NetworkPolicy = one(&objects, "NetworkPolicy");
    let spec = policy.spec.expect("spec");
    assert_eq!(
        spec.pod_selector,
        Some(deployment.spec.selector),
        "the NetworkPolicy selects the operator's pods"
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..]),
        "egress (API server) stays open"
    );
    let ingress = spec.ingress.unwrap_or_default();
    assert_eq!(ingress.len(), 1);
    let ports = ingress[0].ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::String("metrics".into())));
    let from = ingress[0].from.clone().unwrap_or_default();
    assert_eq!(from.len(), 1);
    let selector = from[0]
        .namespace_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .expect("namespaceSelector");
    assert_eq!(
        selector
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("monitoring")
    );
}

#[test]
fn single_replica_without_leader_election() {
    let objects = render(&["replicaCount=1", "leaderElection.enabled=false"]);
    let deployment: Deployment = one(&objects, "Deployment");
    assert_eq!(deployment.spec.replicas, Some(1));
    let args = operator_container(&deployment).args.unwrap_or_default();
    assert!(
        !args.iter().any(|a| a.starts_with("--leader-elect")),
        "{args:?}"
    );
    let present = kinds(&objects);
    let lease_rbac = format!("{RELEASE}-leader-election");
    assert!(
        namespaces_of(&objects, "Role", &lease_rbac).is_empty()
            && namespaces_of(&objects, "RoleBinding", &lease_rbac).is_empty(),
        "no Lease permissions without leader election"
    );
    assert!(
        !present.contains(&"PodDisruptionBudget"),
        "a PDB for one replica would block node drains"
    );
}

#[test]
fn bad_values_are_refused_with_the_field_named() {
    let cases = [
        (
            &["leaderElection.enabled=false"][..],
            "leaderElection.enabled",
        ),
        (&["replicas=3"][..], "replicas"),
        (&["operator.logFormat=xml"][..], "logFormat"),
        (&["operator.concurrency=0"][..], "concurrency"),
        (
            &["collector.allowedNamespaces={*,team-a}"][..],
            "collector.allowedNamespaces",
        ),
        (
            &["collector.allowedNamespaces={Team_A}"][..],
            "allowedNamespaces",
        ),
        (
            &["collector.allowedImages={/}"][..],
            "collector.allowedImages",
        ),
        (
            &["collector.allowedImages={otel/collector@sha256:00}"][..],
            "allowedImages",
        ),
        (
            &[
                "metrics.serviceMonitor.enabled=true",
                "metrics.service.enabled=false",
            ][..],
            "metrics.service.enabled",
        ),
    ];
    for (set, field) in cases {
        match try_render(set) {
            Ok(_) => panic!("helm template {set:?} should fail"),
            Err(e) => assert!(
                e.contains(field),
                "error for {set:?} should name {field}:\n{e}"
            ),
        }
    }
}

/// The alerts, the collectors' PodMonitor and the dashboard: off by default;
/// when on, labelled for the Prometheus and Grafana that pick them up, and the
/// PodMonitor selects the collector pods the operator creates. (What the rules
/// and queries say is tested with promtool and Prometheus in tests/monitoring.rs.)
#[test]
fn monitoring_objects_render_when_enabled_for_who_picks_them_up() {
    let defaults = kinds(&render(&[])).join(",");
    for kind in ["PrometheusRule", "PodMonitor"] {
        assert!(!defaults.contains(kind), "{kind} is off by default");
    }
    let objects = render(&[
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=prom",
        "metrics.collectorPodMonitor.enabled=true",
        "metrics.dashboards.enabled=true",
        "metrics.dashboards.namespace=grafana",
    ]);
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let groups: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(groups, ["tracing-operator", "tracing-operator-collectors"]);
    let without = render(&[
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.collectorAlerts=false",
    ]);
    let rule = without
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["spec"]["groups"].as_array().map(Vec::len), Some(1));

    let dashboard = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["namespace"], "grafana");
    let json: Value = serde_json::from_str(
        dashboard["data"]["tracing-operator.json"]
            .as_str()
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    assert_eq!(json["uid"], "tracing-operator");

    let monitor = objects
        .iter()
        .find(|o| o["kind"] == "PodMonitor")
        .expect("the collectors' PodMonitor");
    let collector_pods = tracing_operator::plan::collector::collector_labels("shop");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            collector_pods.get(k).map(String::as_str),
            v.as_str(),
            "the PodMonitor's {k} selects the collector pods"
        );
    }
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    let policy_label = tracing_operator::api::POLICY_ANNOTATION.replace(['.', '/'], "_");
    assert_eq!(
        endpoint["relabelings"][0]["sourceLabels"][0],
        format!("__meta_kubernetes_pod_label_{policy_label}").as_str()
    );
    assert_eq!(
        collector_pods
            .get(tracing_operator::api::POLICY_ANNOTATION)
            .map(String::as_str),
        Some("shop")
    );
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "policy");
}
