//! The chart and the operator binary on the testbed, as an installer and an
//! on-call engineer rely on them:
//! - the chart's rendered manifests are accepted by a real API server;
//! - installed with `helm install`, the chart's ServiceAccount and RBAC are
//!   enough for the real binary to reconcile a policy and the example policy
//!   (collector, progressive rollout), and no more than that
//!   (SelfSubjectAccessReview with the ServiceAccount's own token): in
//!   particular no Secret and no creating Deployments outside the allowed
//!   collector namespaces, and the installed admission policy refuses a
//!   policy outside them;
//! - of two `--leader-elect` processes only the Lease holder reconciles, a
//!   standby takes over within the lease duration when the leader is killed, and
//!   SIGTERM exits cleanly and hands the Lease back;
//! - /healthz, /readyz (not before the caches synced), /metrics and JSON logs.
//!
//! The operator is cluster-wide: any running instance reconciles every policy.
//! The tests that run operator processes therefore take [`OPERATORS`] so that
//! one test's operators never reconcile another test's policy; each test still
//! works in namespaces, policies, ports and identities of its own. (Operators
//! that other test binaries run on the same testbed at the same time do see
//! these policies; the assertions on who reconciled read this process's own
//! metrics, Events and log.)

mod support;

#[path = "operator/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::{Value, json};
use tracing_operator::api::TracingPolicy;

use support::process::OperatorProcess;

/// The testbed's Kubernetes release; offline `helm template` assumes an old one otherwise.
const KUBE_VERSION: &str = "1.37.2";
/// The Lease the operator elects its leader on, in its --namespace.
const LEASE: &str = "tracing-operator";
/// The operator's default --lease-duration.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// Slack on top of the lease duration for a takeover: the standby's poll period
/// (an eighth of the duration) plus the API round trips of a loaded 2-core machine.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(5);

/// Held by every test that runs operator processes (see the module docs).
static OPERATORS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn chart() -> PathBuf {
    support::repo().join("charts/tracing-operator")
}

fn helm() -> Command {
    let mut cmd = Command::new(support::tools_bin().join("helm"));
    cmd.env("KUBECONFIG", support::kubeconfig());
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A policy without a collector, rolled out at once, selecting the
/// namespaces labelled for `case`, with head sampling `ratio`.
fn policy(name: &str, case: &str, ratio: f64) -> TracingPolicy {
    harness::policy(name, case, json!({"sampling": {"ratio": ratio}}))
}

fn policy_ready(p: &TracingPolicy) -> bool {
    harness::condition(p, "Ready").as_deref() == Some("True")
}

async fn wait_policy_ready(client: &Client, name: &str) {
    harness::wait_policy(client, name, "Ready", policy_ready).await;
}

/// Creates a namespace labelled for `case` holding Deployment `web`.
async fn workload_namespace(client: &Client, case: &str, cleanup: &mut support::Cleanup) -> String {
    let ns = harness::namespace(client, case, &[]).await;
    cleanup.namespaces.push(ns.clone());
    let web = harness::deployment("web", &[], &[("app", "example.com/web:1.2.3", &[])]);
    harness::create_deployment(client, &ns, &web).await;
    ns
}

/// Waits until Deployment `web` in `ns` has `OTEL_TRACES_SAMPLER_ARG` = `ratio`
/// (`None`: no OTEL_ variable at all) and returns its env.
async fn wait_web_sampling(
    client: &Client,
    ns: &str,
    ratio: Option<&str>,
) -> BTreeMap<String, String> {
    let web = harness::wait_deployment(
        client,
        ns,
        "web",
        &format!("OTEL_TRACES_SAMPLER_ARG={ratio:?}"),
        |d| {
            let env = harness::planned_env(d, "app");
            match ratio {
                Some(r) => env.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str) == Some(r),
                None => !env.keys().any(|k| k.starts_with("OTEL_")),
            }
        },
    )
    .await;
    harness::planned_env(&web, "app")
}

async fn lease(client: &Client, ns: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(LEASE)
        .await
        .expect("reading the Lease")
}

fn holder(lease: &Option<Lease>) -> Option<String> {
    lease
        .as_ref()?
        .spec
        .as_ref()?
        .holder_identity
        .clone()
        .filter(|h| !h.is_empty())
}

/// The value of the sample `series` (name plus labels, exactly as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// `tracing-operator run --identity=<identity> <args>`, logging to `<dir>/<identity>.log`.
fn start_operator(identity: &str, dir: &Path, kubeconfig: &Path, args: &[&str]) -> OperatorProcess {
    let identity_arg = format!("--identity={identity}");
    let args: Vec<&str> = [identity_arg.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    OperatorProcess::start(identity, dir, kubeconfig, &args, &[])
}

/// The operator's health server, as the kubelet and Prometheus see it; `name`
/// is the process's --identity.
impl OperatorProcess {
    /// A GET on the health server: (status, lower-cased head, body).
    fn get(&self, path: &str) -> Option<(u16, String, String)> {
        support::http_get(self.metrics_addr.port(), path).ok()
    }

    fn metrics(&self) -> String {
        match self.get("/metrics") {
            Some((200, _, body)) => body,
            other => panic!("{}: GET /metrics answered {other:?}", self.name),
        }
    }

    fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics(), series).unwrap_or(0.0)
    }

    async fn wait_ready(&self) {
        support::wait_until(
            &format!("{} answers /readyz 200", self.name),
            Duration::from_secs(60),
            || async { matches!(self.get("/readyz"), Some((200, _, _))).then_some(()) },
        )
        .await;
    }

    /// Waits until the log says the caches synced and /readyz answers 200.
    /// (A --leader-elect standby answers 200 too; as leader it answers 503
    /// until its caches synced.)
    async fn wait_synced(&self) {
        support::wait_until(
            &format!("{} logged that its caches synced", self.name),
            Duration::from_secs(60),
            || async { self.log().contains("caches synced").then_some(()) },
        )
        .await;
        self.wait_ready().await;
    }

    /// Waits until the health server answers, so /metrics can be read.
    async fn wait_serving(&self) {
        support::wait_until(
            &format!("{} answers /healthz", self.name),
            Duration::from_secs(30),
            || async { self.get("/healthz").map(|_| ()) },
        )
        .await;
    }
}

/// What a test of operator processes without `helm install` starts from: the
/// chart's CRD, a namespace for the operators' Lease (`home`), the case's name
/// `<prefix>-<unique>`, a workload namespace labelled for it with Deployment
/// `web`, and the name `install-<case>` of the policy that will select it; all
/// removed by `cleanup`.
struct Case {
    home: String,
    case: String,
    workloads: String,
    policy: String,
}

async fn new_case(admin: &Client, prefix: &str, cleanup: &mut support::Cleanup) -> Case {
    crd_installed(admin).await;
    let home = support::fresh_namespace(admin, &format!("tracing-operator-{prefix}"), &[]).await;
    cleanup.namespaces.push(home.clone());
    let case = support::unique(prefix);
    let workloads = workload_namespace(admin, &case, cleanup).await;
    let policy = format!("install-{case}");
    cleanup.policies.push(policy.clone());
    Case {
        home,
        case,
        workloads,
        policy,
    }
}

// ------------------------------------------------------------------ the chart

/// `helm template` of the chart, with defaults and with the optional
/// NetworkPolicy, is accepted object by object by the API server's
/// validation and admission (server-side dry run), and nothing is created.
#[tokio::test]
async fn rendered_chart_passes_a_server_side_dry_run_apply() {
    let client = support::client().await;
    let mut cleanup = support::Cleanup::default();
    let ns = support::fresh_namespace(&client, "tracing-operator-dryrun", &[]).await;
    cleanup.namespaces.push(ns.clone());
    // Stands in for observability, which the testbed does not have: the collector
    // Role goes into each allowed namespace, which must exist.
    let collectors = support::fresh_namespace(&client, "dryrun-collectors", &[]).await;
    cleanup.namespaces.push(collectors.clone());
    let allowed = format!("collector.allowedNamespaces={{{collectors}}}");
    let scratch = support::Scratch::new("install-dryrun").expect("scratch dir");

    for (variant, sets) in [
        ("defaults", &[allowed.as_str()][..]),
        (
            "networkpolicy",
            &[
                "networkPolicy.enabled=true",
                "replicaCount=3",
                allowed.as_str(),
            ][..],
        ),
        ("any-namespace", &["collector.allowedNamespaces={*}"][..]),
    ] {
        let manifest = scratch.path().join(format!("{variant}.yaml"));
        let rendered = run_ok(
            helm()
                .args(["template", "tracing-operator"])
                .arg(chart())
                .args([
                    "--namespace",
                    &ns,
                    "--kube-version",
                    KUBE_VERSION,
                    "--include-crds",
                ])
                .args(sets.iter().flat_map(|s| ["--set", s])),
        );
        std::fs::write(&manifest, &rendered).expect("write the rendered chart");
        let documents = rendered
            .split("\n---")
            .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
            .count();

        // --force-conflicts: the CRD may already be on the testbed, applied by
        // other tests under another field manager; what counts here is that the
        // server validates and admits every object, not who owns which field.
        let applied = run_ok(
            support::kubectl()
                .args([
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--dry-run=server",
                    "-f",
                ])
                .arg(&manifest),
        );
        let accepted = applied
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        assert_eq!(
            accepted, documents,
            "{variant}: every rendered object is accepted by the server:\n{applied}"
        );
        for kind in [
            "customresourcedefinition.apiextensions.k8s.io/tracingpolicies.tracing.caas.io",
            "serviceaccount/",
            "clusterrole.rbac.authorization.k8s.io/",
            "clusterrolebinding.rbac.authorization.k8s.io/",
            "role.rbac.authorization.k8s.io/",
            "rolebinding.rbac.authorization.k8s.io/",
            "service/",
            "deployment.apps/",
            "poddisruptionbudget.policy/",
            "validatingadmissionpolicy.admissionregistration.k8s.io/",
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/",
        ] {
            assert!(
                applied.contains(kind),
                "{variant}: {kind} applied:\n{applied}"
            );
        }
        if variant == "networkpolicy" {
            assert!(
                applied.contains("networkpolicy.networking.k8s.io/"),
                "{applied}"
            );
        }
        let collector_roles = applied
            .lines()
            .filter(|l| {
                l.starts_with("role.rbac.authorization.k8s.io/") && l.contains("-collectors")
            })
            .count();
        assert_eq!(
            collector_roles,
            if variant == "any-namespace" { 0 } else { 2 },
            "{variant}: a collector Role in the release namespace and {collectors}, or none with *:\n{applied}"
        );
    }
    let left = support::kubectl_ok(&["get", "all,serviceaccounts,roles", "-n", &ns, "-o", "name"]);
    assert!(
        !left.lines().any(|l| l.contains("tracing-operator")),
        "a dry run creates nothing: {left}"
    );
}

// ------------------------------------------------------------- RBAC for real

/// A kubeconfig for the testbed's API server and CA that authenticates with `token`.
fn token_kubeconfig(path: &Path, token: &str) {
    token_kubeconfig_for(path, token, None);
}

/// Like [`token_kubeconfig`], with another server address if `server` is given.
fn token_kubeconfig_for(path: &Path, token: &str, server: Option<&str>) {
    let admin = Kubeconfig::read_from(support::kubeconfig()).expect("admin kubeconfig");
    let context = admin
        .contexts
        .iter()
        .find(|c| Some(&c.name) == admin.current_context.as_ref())
        .and_then(|c| c.context.as_ref())
        .expect("admin kubeconfig has a current context");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .expect("admin kubeconfig names its cluster");
    let mut entry =
        json!({"server": server.map(str::to_string).or_else(|| cluster.server.clone())});
    if let Some(data) = &cluster.certificate_authority_data {
        entry["certificate-authority-data"] = json!(data);
    }
    if let Some(file) = &cluster.certificate_authority {
        entry["certificate-authority"] = json!(file);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": entry}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "testbed", "user": "operator"}}],
        "current-context": "operator"
    });
    std::fs::write(
        path,
        serde_json::to_vec_pretty(&config).expect("kubeconfig JSON"),
    )
    .expect("write the token kubeconfig");
}

async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("token kubeconfig readable");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("token kubeconfig valid");
    Client::try_from(config).expect("client from the token kubeconfig")
}

/// A request as RBAC sees it: verb, API group, resource, subresource,
/// namespace (`None`: cluster-wide) and object name.
type Access<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// Whether the client's user may `verb` `resource` (`group/resource/subresource`
/// style parts), optionally named and in a namespace.
async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: subresource.map(Into::into),
                namespace: namespace.map(Into::into),
                name: name.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview");
    answer.status.expect("review status").allowed
}

/// `helm install` of the chart, then the real binary with a token of the chart's
/// ServiceAccount: it elects itself, reconciles a policy (its own Events prove
/// it was this process) and the example policy, cleans both up, and its log has
/// no forbidden errors; the same token is denied everything the operator must
/// not do.
#[tokio::test]
async fn the_charts_service_account_reconciles_and_can_do_nothing_else() {
    let _operators = OPERATORS.lock().await;
    let admin = support::client().await;
    let mut cleanup = support::Cleanup::default();
    let scratch = support::Scratch::new("install-rbac").expect("scratch dir");

    let release_ns = support::fresh_namespace(&admin, "tracing-operator-rbac", &[]).await;
    cleanup.namespaces.push(release_ns.clone());
    // The one collector namespace allowed besides the release namespace; the
    // example policy's central collector runs there.
    let collector_ns = support::fresh_namespace(&admin, "example-observability", &[]).await;
    cleanup.namespaces.push(collector_ns.clone());
    // The release's name is the namespace's: its ClusterRole and binding are
    // cluster-scoped and must not collide with another install.
    let release = release_ns.clone();
    let mut uninstall = helm();
    uninstall.args([
        "uninstall",
        &release,
        "--namespace",
        &release_ns,
        "--ignore-not-found",
    ]);
    cleanup.commands.push(uninstall);
    run_ok(
        helm()
            .args(["install", &release])
            .arg(chart())
            .args(["--namespace", &release_ns])
            .args([
                "--set",
                &format!("collector.allowedNamespaces={{{collector_ns}}}"),
            ]),
    );
    harness::wait_crd_served(&admin).await;
    // The operator process below gets the collector settings the chart gave its
    // Deployment, flag for flag.
    let installed = Api::<Deployment>::namespaced(admin.clone(), &release_ns)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("list the chart's Deployment");
    let collector_flags: Vec<String> = installed
        .items
        .iter()
        .flat_map(|d| d.spec.template.spec.as_ref())
        .flat_map(|p| p.containers.iter())
        .flat_map(|c| c.args.clone().unwrap_or_default())
        .filter(|a| a.starts_with("--allowed-collector-") || a == "--allow-external-backends")
        .collect();
    assert_eq!(
        collector_flags,
        [
            format!("--allowed-collector-namespaces={release_ns},{collector_ns}"),
            "--allowed-collector-images=otel/opentelemetry-collector-contrib".to_string(),
        ],
        "the chart passes its collector settings"
    );

    // The chart's ServiceAccount, whatever the chart names it.
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), &release_ns)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("list ServiceAccounts");
    assert_eq!(
        accounts.items.len(),
        1,
        "the chart creates one ServiceAccount"
    );
    let account = accounts.items[0]
        .metadata
        .name
        .clone()
        .expect("ServiceAccount name");
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), &release_ns)
        .create_token_request(
            &account,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("TokenRequest for the chart's ServiceAccount")
        .status
        .expect("TokenRequest status")
        .token
        .expect("TokenRequest issued a token");
    let kubeconfig = scratch.path().join("operator.kubeconfig");
    token_kubeconfig(&kubeconfig, &token);
    let operator_client = client_from(&kubeconfig).await;

    let me = Api::<SelfSubjectReview>::all(operator_client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview");
    assert_eq!(
        me.status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .as_deref(),
        Some(format!("system:serviceaccount:{release_ns}:{account}").as_str()),
        "the token authenticates as the chart's ServiceAccount"
    );

    let case = support::unique("rbac");
    let workloads = workload_namespace(&admin, &case, &mut cleanup).await;
    let policy_name = format!("install-{case}");
    cleanup.policies.push(policy_name.clone());

    let identity = support::unique("rbac");
    let mut args = vec!["--namespace", release_ns.as_str(), "--leader-elect"];
    args.extend(collector_flags.iter().map(String::as_str));
    let mut operator = start_operator(&identity, scratch.path(), &kubeconfig, &args);
    support::wait_until(
        "the operator holds the Lease in the release namespace",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            let ns = release_ns.clone();
            let identity = identity.clone();
            async move { (holder(&lease(&admin, &ns).await) == Some(identity)).then_some(()) }
        },
    )
    .await;
    operator.wait_synced().await;

    harness::apply_policy(&admin, &policy(&policy_name, &case, 0.1)).await;
    let env = wait_web_sampling(&admin, &workloads, Some("0.1")).await;
    assert_eq!(
        env.get("OTEL_SERVICE_NAME").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        env.get("OTEL_TRACES_EXPORTER").map(String::as_str),
        Some("otlp")
    );
    assert_eq!(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(String::as_str),
        Some("http://jaeger.observability.svc:4317")
    );
    wait_policy_ready(&admin, &policy_name).await;

    // This process did the writing: its metrics count the patch, and the Event
    // on the Deployment names it as the reporting instance.
    assert!(
        operator.metric(r#"tracing_operator_api_writes_total{verb="patch",kind="Deployment"}"#)
            >= 1.0,
        "{}",
        operator.metrics()
    );
    // Events go on the policy (one per batch of writes, naming the workloads),
    // and name this process as the reporting instance.
    let events = support::wait_until(
        "an Event from this operator instance on the policy",
        Duration::from_secs(30),
        || {
            let api = Api::<Event>::all(admin.clone());
            let identity = identity.clone();
            async move {
                let events = api.list(&ListParams::default()).await.ok()?.items;
                let mine: Vec<Event> = events
                    .into_iter()
                    .filter(|e| e.reporting_instance.as_deref() == Some(identity.as_str()))
                    .collect();
                (!mine.is_empty()).then_some(mine)
            }
        },
    )
    .await;
    assert!(
        events.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(policy_name.as_str())
                && e.reason.as_deref() == Some("TracingApplied")
                && e.note.as_deref().is_some_and(|n| n.contains("/web"))
        }),
        "{events:?}"
    );

    // What the ServiceAccount may and may not do. Cluster-wide it patches
    // workloads; it creates Deployments, ConfigMaps and Services and reads
    // Secrets only in the allowed collector namespaces.
    let c = &operator_client;
    let other_ns = workloads.as_str();
    let home = Some(release_ns.as_str());
    let collectors = Some(collector_ns.as_str());
    let outside = [Some(other_ns), Some("kube-system"), Some("default")];
    let mut denied: Vec<Access> = vec![
        ("list", "", "secrets", None, None, None),
        ("list", "", "secrets", None, Some(other_ns), None),
        ("watch", "", "secrets", None, None, None),
        ("watch", "", "secrets", None, Some(other_ns), None),
        ("list", "", "secrets", None, collectors, None),
        ("get", "", "secrets", None, None, Some("tls")),
        ("create", "apps", "deployments", None, None, None),
        ("create", "", "pods", None, collectors, None),
        ("create", "", "pods", Some("exec"), Some(other_ns), None),
        ("get", "", "pods", Some("exec"), Some(other_ns), None),
        ("patch", "batch", "jobs", None, Some(other_ns), None),
        ("create", "batch", "jobs", None, collectors, None),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            None,
            None,
        ),
        (
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            None,
            collectors,
            None,
        ),
        ("delete", "", "namespaces", None, None, Some(other_ns)),
        ("update", "", "nodes", None, None, None),
        (
            "create",
            "coordination.k8s.io",
            "leases",
            None,
            Some(other_ns),
            None,
        ),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            None,
            home,
            Some("someone-elses"),
        ),
    ];
    for ns in outside {
        denied.extend([
            ("get", "", "secrets", None, ns, Some("tls")),
            ("create", "apps", "deployments", None, ns, None),
            ("delete", "apps", "deployments", None, ns, Some("web")),
            ("create", "", "configmaps", None, ns, None),
            ("patch", "", "configmaps", None, ns, Some("kube-proxy")),
            ("create", "", "services", None, ns, None),
            ("delete", "", "services", None, ns, Some("web")),
            ("create", "policy", "poddisruptionbudgets", None, ns, None),
            (
                "delete",
                "policy",
                "poddisruptionbudgets",
                None,
                ns,
                Some("web"),
            ),
            (
                "create",
                "autoscaling",
                "horizontalpodautoscalers",
                None,
                ns,
                None,
            ),
            (
                "patch",
                "autoscaling",
                "horizontalpodautoscalers",
                None,
                ns,
                Some("web"),
            ),
        ]);
    }
    for (verb, group, resource, sub, ns, name) in denied {
        assert!(
            !can(c, verb, group, resource, sub, ns, name).await,
            "the operator's ServiceAccount must not {verb} {group}/{resource}/{sub:?} in {ns:?} (name {name:?})"
        );
    }
    let mut allowed: Vec<Access> = vec![
        (
            "patch",
            "apps",
            "deployments",
            None,
            Some(other_ns),
            Some("web"),
        ),
        (
            "patch",
            "apps",
            "deployments",
            None,
            Some("kube-system"),
            None,
        ),
        (
            "patch",
            "tracing.caas.io",
            "tracingpolicies",
            Some("status"),
            None,
            Some(policy_name.as_str()),
        ),
        ("create", "coordination.k8s.io", "leases", None, home, None),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            None,
            home,
            Some(LEASE),
        ),
        (
            "create",
            "events.k8s.io",
            "events",
            None,
            Some(other_ns),
            None,
        ),
    ];
    for ns in [home, collectors] {
        allowed.extend([
            ("get", "", "secrets", None, ns, Some("tls")),
            ("create", "apps", "deployments", None, ns, None),
            (
                "delete",
                "apps",
                "deployments",
                None,
                ns,
                Some("x-collector"),
            ),
            ("create", "", "configmaps", None, ns, None),
            ("patch", "", "configmaps", None, ns, Some("x-collector")),
            ("create", "", "services", None, ns, None),
            ("delete", "", "services", None, ns, Some("x-collector")),
            ("create", "policy", "poddisruptionbudgets", None, ns, None),
            (
                "patch",
                "policy",
                "poddisruptionbudgets",
                None,
                ns,
                Some("x-collector"),
            ),
            (
                "delete",
                "policy",
                "poddisruptionbudgets",
                None,
                ns,
                Some("x-collector"),
            ),
            (
                "create",
                "autoscaling",
                "horizontalpodautoscalers",
                None,
                ns,
                None,
            ),
            (
                "patch",
                "autoscaling",
                "horizontalpodautoscalers",
                None,
                ns,
                Some("x-collector"),
            ),
            (
                "delete",
                "autoscaling",
                "horizontalpodautoscalers",
                None,
                ns,
                Some("x-collector"),
            ),
        ]);
    }
    for (verb, group, resource, sub, ns, name) in allowed {
        assert!(
            can(c, verb, group, resource, sub, ns, name).await,
            "the operator's ServiceAccount needs to {verb} {group}/{resource}/{sub:?} in {ns:?} (name {name:?})"
        );
    }

    // On the real API server: patch on Deployments is not enough to create one
    // with a server-side apply. The token may patch Deployments in the workload
    // namespace (the table above) and still cannot start one there.
    let intruder = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "intruder", "namespace": other_ns},
        "spec": {
            "selector": {"matchLabels": {"app": "intruder"}},
            "template": {"metadata": {"labels": {"app": "intruder"}},
                         "spec": {"containers": [{"name": "c", "image": "evil.example/miner:1"}]}}
        }
    });
    let refused = Api::<Deployment>::namespaced(operator_client.clone(), other_ns)
        .patch(
            "intruder",
            &PatchParams::apply("tracing-operator").force(),
            &Patch::Apply(&intruder),
        )
        .await;
    match refused {
        Err(kube::Error::Api(status)) => assert!(
            status.code == 403 && status.message.contains("cannot create resource"),
            "a server-side apply that would create a Deployment needs create: {status:?}"
        ),
        other => panic!("the operator's token created a Deployment in {other_ns}: {other:?}"),
    }
    assert!(
        Api::<Deployment>::namespaced(admin.clone(), other_ns)
            .get_opt("intruder")
            .await
            .expect("read Deployment intruder")
            .is_none()
    );

    // The chart's admission policy is live: a policy whose collector would run
    // outside the allowed namespaces is refused at create, naming the field.
    let outside_policy = json!({
        "apiVersion": "tracing.caas.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": format!("install-outside-{case}")},
        "spec": {
            "collector": {"namespace": other_ns},
            "backends": [{"name": "jaeger", "type": "jaeger", "endpoint": "http://jaeger.observability.svc:4317"}]
        }
    });
    let refusal = support::admission::wait_refused_by(
        &admin,
        &format!("{release}-collector-guard"),
        &outside_policy,
    )
    .await;
    assert_eq!(
        support::admission::denial(&refusal),
        format!(
            "spec.collector.namespace: namespace {other_ns} is not an allowed collector namespace (allowed: {release_ns}, {collector_ns})"
        )
    );

    // Deleting the policy runs the operator's cleanup with the same token.
    harness::delete_policy(&admin, &policy_name).await;
    wait_web_sampling(&admin, &workloads, None).await;

    // The example policy (central collector, progressive rollout) with the
    // example workloads, moved into this test's namespaces.
    example_policy_reconciles(&admin, &collector_ns, &mut cleanup).await;

    let status = operator.sigterm(Duration::from_secs(30)).await;
    let log = operator.log();
    assert!(
        status.success(),
        "graceful exit after SIGTERM: {status}\n{log}"
    );
    assert!(log.contains("became leader"), "{log}");
    let forbidden: Vec<&str> = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the chart's RBAC covers everything the operator does:\n{}",
        forbidden.join("\n")
    );
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// examples/policy.yaml and examples/workloads.yaml with the policy renamed,
/// selecting a namespace of this test's that holds the example workloads, and
/// its central collector in `collector_ns` (an allowed collector namespace): the
/// operator (running with the chart's ServiceAccount) deploys the collector,
/// rolls tracing out progressively to Ready, and removes both when the policy is
/// deleted.
async fn example_policy_reconciles(
    admin: &Client,
    collector_ns: &str,
    cleanup: &mut support::Cleanup,
) {
    let examples = support::repo().join("examples");
    let case = support::unique("example");
    let services = harness::namespace(admin, &case, &[]).await;
    cleanup.namespaces.push(services.clone());

    for mut workload in yaml_documents(&examples.join("workloads.yaml")) {
        workload["metadata"]["namespace"] = json!(services);
        let ar = match workload["kind"].as_str() {
            Some("Deployment") => ApiResource::erase::<Deployment>(&()),
            Some("StatefulSet") => {
                ApiResource::erase::<k8s_openapi::api::apps::v1::StatefulSet>(&())
            }
            Some("DaemonSet") => ApiResource::erase::<k8s_openapi::api::apps::v1::DaemonSet>(&()),
            other => panic!("unexpected kind {other:?} in examples/workloads.yaml"),
        };
        let object: DynamicObject = serde_json::from_value(workload).expect("example workload");
        Api::<DynamicObject>::namespaced_with(admin.clone(), &services, &ar)
            .create(&PostParams::default(), &object)
            .await
            .expect("example workload created");
    }

    let mut policy = yaml_documents(&examples.join("policy.yaml"))
        .pop()
        .expect("examples/policy.yaml holds a policy");
    assert_eq!(policy["spec"]["collector"]["enabled"], json!(true));
    assert_eq!(policy["spec"]["rollout"]["strategy"], json!("Progressive"));
    let name = format!("install-{case}");
    cleanup.policies.push(name.clone());
    policy["metadata"]["name"] = json!(name);
    let (key, value) = harness::test_label(&case);
    policy["spec"]["selector"]["namespaces"] = json!({"matchLabels": {key: value}});
    policy["spec"]["collector"]["namespace"] = json!(collector_ns);
    // Applied untyped, as the file reads, the way `kubectl apply --server-side` would.
    Api::<DynamicObject>::all_with(admin.clone(), &ApiResource::erase::<TracingPolicy>(&()))
        .patch(
            &name,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&policy),
        )
        .await
        .unwrap_or_else(|e| panic!("applying TracingPolicy {name}: {e}"));

    harness::wait_policy_within(
        admin,
        &name,
        "the example is Ready",
        Duration::from_secs(180),
        policy_ready,
    )
    .await;
    let gateway = Api::<Deployment>::namespaced(admin.clone(), &services)
        .get("gateway")
        .await
        .expect("gateway");
    let env = harness::planned_env(&gateway, "gateway");
    assert_eq!(
        env.get("OTEL_SERVICE_NAME").map(String::as_str),
        Some("api-gateway")
    );
    assert_eq!(env.get("NODE_ENV").map(String::as_str), Some("production"));
    let endpoint = env
        .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .cloned()
        .unwrap_or_default();
    assert!(
        endpoint.contains(collector_ns),
        "the services send to the collector in {collector_ns}: {env:?}"
    );
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=tracing-operator");
    let collector_objects = || async {
        let deployments = Api::<Deployment>::namespaced(admin.clone(), collector_ns)
            .list(&managed)
            .await
            .expect("list collector Deployments")
            .items
            .len();
        let configmaps =
            Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), collector_ns)
                .list(&managed)
                .await
                .expect("list collector ConfigMaps")
                .items
                .len();
        let services =
            Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), collector_ns)
                .list(&managed)
                .await
                .expect("list collector Services")
                .items
                .len();
        (deployments, configmaps, services)
    };
    let (d, c, s) = collector_objects().await;
    assert!(
        d >= 1 && c >= 1 && s >= 1,
        "collector Deployment, ConfigMap, Service: {d}, {c}, {s}"
    );

    harness::delete_policy(admin, &name).await;
    support::wait_until(
        "the collector's Deployment, ConfigMap and Service go with the policy",
        Duration::from_secs(60),
        || async { (collector_objects().await == (0, 0, 0)).then_some(()) },
    )
    .await;
    let gateway = Api::<Deployment>::namespaced(admin.clone(), &services)
        .get("gateway")
        .await
        .expect("gateway");
    let env = harness::planned_env(&gateway, "gateway");
    assert!(
        !env.keys().any(|k| k.starts_with("OTEL_")) && env.contains_key("NODE_ENV"),
        "tracing removed, the gateway's own env kept: {env:?}"
    );
}

// ----------------------------------------------------------- leader election

/// Two `--leader-elect` processes: one holds the Lease and only it reconciles;
/// SIGKILLed, its standby takes over within the lease duration and reconciles
/// the next change; SIGTERMed, the new leader exits 0 and clears the holder.
#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_within_the_lease() {
    let _operators = OPERATORS.lock().await;
    let admin = support::client().await;
    let mut cleanup = support::Cleanup::default();
    let scratch = support::Scratch::new("install-leader").expect("scratch dir");
    let Case {
        home,
        case,
        workloads,
        policy: policy_name,
    } = new_case(&admin, "le", &mut cleanup).await;

    let kubeconfig = support::kubeconfig();
    let args = ["--namespace", home.as_str(), "--leader-elect"];
    let a = start_operator(&format!("{case}-a"), scratch.path(), &kubeconfig, &args);
    let b = start_operator(&format!("{case}-b"), scratch.path(), &kubeconfig, &args);
    let leader_id = support::wait_until(
        "one of the two processes holds the Lease",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            let home = home.clone();
            async move { holder(&lease(&admin, &home).await) }
        },
    )
    .await;
    let (mut leader, mut standby) = match leader_id {
        id if id == a.name => (a, b),
        id if id == b.name => (b, a),
        id => panic!("the Lease is held by {id}, neither of the two processes"),
    };
    let held = lease(&admin, &home)
        .await
        .and_then(|l| l.spec)
        .expect("Lease spec");
    assert_eq!(
        held.lease_duration_seconds,
        Some(LEASE_DURATION.as_secs() as i32)
    );
    leader.wait_synced().await;
    // By design a standby is ready too, so a rolling upgrade can replace the leader.
    standby.wait_ready().await;

    harness::apply_policy(&admin, &policy(&policy_name, &case, 0.1)).await;
    wait_web_sampling(&admin, &workloads, Some("0.1")).await;
    wait_policy_ready(&admin, &policy_name).await;
    let reconciled = leader.metric("tracing_operator_reconciles_total");
    assert!(reconciled >= 1.0, "the leader reconciled the new policy");

    harness::apply_policy(&admin, &policy(&policy_name, &case, 0.25)).await;
    wait_web_sampling(&admin, &workloads, Some("0.25")).await;
    wait_policy_ready(&admin, &policy_name).await;
    let leader_metrics = leader.metrics();
    assert!(
        sample(&leader_metrics, "tracing_operator_reconciles_total").unwrap_or(0.0) > reconciled,
        "the leader reconciled the change:\n{leader_metrics}"
    );
    let standby_metrics = standby.metrics();
    assert_eq!(
        sample(&standby_metrics, "tracing_operator_reconciles_total"),
        Some(0.0),
        "the standby reconciles nothing:\n{standby_metrics}"
    );
    assert!(
        !standby_metrics.contains("tracing_operator_api_writes_total{"),
        "the standby writes nothing:\n{standby_metrics}"
    );
    assert_eq!(
        holder(&lease(&admin, &home).await),
        Some(leader.name.clone())
    );
    assert!(standby.log().contains("standing by"), "{}", standby.log());

    // Kill the leader without a chance to hand the Lease back.
    leader.sigkill();
    let killed = Instant::now();
    let killed_at = k8s_openapi::jiff::Timestamp::now();
    // The dead leader's last renewal: the Lease expires a lease duration later.
    let last_renewal = lease(&admin, &home)
        .await
        .and_then(|l| l.spec)
        .and_then(|s| s.renew_time)
        .expect("the Lease has a renewTime");
    let expires_after =
        last_renewal.0.duration_since(killed_at).as_secs_f64() + LEASE_DURATION.as_secs_f64();
    let mut takeover = None;
    let mut last_seen = None;
    while killed.elapsed() < LEASE_DURATION + TAKEOVER_MARGIN {
        last_seen = lease(&admin, &home).await;
        if holder(&last_seen).as_deref() == Some(standby.name.as_str()) {
            takeover = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(takeover) = takeover else {
        panic!(
            "the standby did not take the Lease within {:?} of the leader's death \
             (it expired {expires_after:.2}s after the kill): {:?}",
            LEASE_DURATION + TAKEOVER_MARGIN,
            last_seen.and_then(|l| l.spec)
        );
    };
    standby.wait_synced().await;
    println!(
        "leader SIGKILLed: its Lease expired {expires_after:.2}s later, the standby held it after \
         {:.2}s and was ready after {:.2}s (lease duration {}s)",
        takeover.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
        LEASE_DURATION.as_secs()
    );

    let before = standby.metric("tracing_operator_reconciles_total");
    harness::apply_policy(&admin, &policy(&policy_name, &case, 0.5)).await;
    wait_web_sampling(&admin, &workloads, Some("0.5")).await;
    wait_policy_ready(&admin, &policy_name).await;
    let new_leader = standby.metrics();
    assert!(
        sample(&new_leader, "tracing_operator_reconciles_total").unwrap_or(0.0) > before
            && sample(
                &new_leader,
                r#"tracing_operator_api_writes_total{verb="patch",kind="Deployment"}"#
            )
            .unwrap_or(0.0)
                >= 1.0,
        "the new leader reconciled the change and patched the Deployment:\n{new_leader}"
    );

    harness::delete_policy(&admin, &policy_name).await;
    wait_web_sampling(&admin, &workloads, None).await;

    let status = standby.sigterm(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "SIGTERM exits 0: {status}\n{}",
        standby.log()
    );
    let released = lease(&admin, &home).await.and_then(|l| l.spec);
    assert_eq!(
        released
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty()),
        None,
        "a gracefully stopped leader clears holderIdentity: {released:?}"
    );
    assert!(
        standby.log().contains("released the Lease"),
        "{}",
        standby.log()
    );
}

/// The CRD from the chart, for tests that do not `helm install` (helm leaves an
/// existing CRD alone, and so does this).
async fn crd_installed(client: &Client) {
    let crd = chart().join("crds/tracingpolicy.yaml");
    let out = support::kubectl()
        .args(["create", "-f"])
        .arg(&crd)
        .output()
        .expect("kubectl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("AlreadyExists"),
        "creating the CRD: {stderr}"
    );
    harness::wait_crd_served(client).await;
}

// ------------------------------------------------------------------ endpoints

/// /healthz, /readyz after the caches synced (and 503 from an operator whose
/// caches cannot sync, which still stops on SIGTERM), the metric families on
/// /metrics (with the samples a reconciled policy produces), --lease-duration,
/// and JSON logs with one object per line.
#[tokio::test]
async fn health_readiness_metrics_and_json_logs() {
    let _operators = OPERATORS.lock().await;
    let admin = support::client().await;
    let mut cleanup = support::Cleanup::default();
    let scratch = support::Scratch::new("install-endpoints").expect("scratch dir");
    let Case {
        home,
        case,
        workloads,
        policy: policy_name,
    } = new_case(&admin, "ep", &mut cleanup).await;

    let mut operator = start_operator(
        &case,
        scratch.path(),
        &support::kubeconfig(),
        &[
            "--namespace",
            &home,
            "--leader-elect",
            "--lease-duration=7s",
            "--log-format=json",
        ],
    );
    operator.wait_serving().await;
    let health = operator.get("/healthz");
    assert!(matches!(health, Some((200, _, _))), "{health:?}");
    support::wait_until(
        "the operator holds its Lease",
        Duration::from_secs(60),
        || async {
            (holder(&lease(&admin, &home).await).as_deref() == Some(operator.name.as_str()))
                .then_some(())
        },
    )
    .await;
    operator.wait_synced().await;
    let held = lease(&admin, &home)
        .await
        .and_then(|l| l.spec)
        .expect("Lease spec");
    assert_eq!(held.lease_duration_seconds, Some(7), "--lease-duration");

    // An operator whose caches cannot sync (its API server does not answer) is
    // alive but not ready, and still stops cleanly on SIGTERM.
    let unreachable = scratch.path().join("unreachable.kubeconfig");
    token_kubeconfig_for(
        &unreachable,
        "no-token",
        Some(&format!(
            "https://{}",
            SocketAddr::from(([127, 0, 0, 1], support::free_port()))
        )),
    );
    let mut stuck = start_operator(
        &format!("{case}-stuck"),
        scratch.path(),
        &unreachable,
        &["--namespace", &home, "--log-format=json"],
    );
    stuck.wait_serving().await;
    for _ in 0..8 {
        let health = stuck.get("/healthz");
        assert!(matches!(health, Some((200, _, _))), "{health:?}");
        let ready = stuck.get("/readyz");
        assert!(
            matches!(ready, Some((503, _, _))),
            "not ready before sync: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = stuck.sigterm(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "SIGTERM exits 0: {status}\n{}",
        stuck.log()
    );

    harness::apply_policy(&admin, &policy(&policy_name, &case, 0.1)).await;
    wait_web_sampling(&admin, &workloads, Some("0.1")).await;
    wait_policy_ready(&admin, &policy_name).await;

    let (status, head, body) = operator.get("/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    for (family, kind) in [
        ("tracing_operator_reconciles", "counter"),
        ("tracing_operator_reconcile_errors", "counter"),
        ("tracing_operator_reconcile_duration_seconds", "histogram"),
        ("tracing_operator_workloads", "gauge"),
        ("tracing_operator_api_writes", "counter"),
    ] {
        assert!(
            body.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "{family} ({kind}) on /metrics:\n{body}"
        );
    }
    let reconciles = sample(&body, "tracing_operator_reconciles_total").unwrap_or(0.0);
    assert!(reconciles >= 1.0, "{body}");
    let durations = sample(&body, "tracing_operator_reconcile_duration_seconds_count");
    assert!(durations.unwrap_or(0.0) >= 1.0, "{body}");
    assert!(
        sample(
            &body,
            r#"tracing_operator_reconcile_duration_seconds_bucket{le="+Inf"}"#
        ) >= Some(1.0),
        "{body}"
    );
    // The gauge follows the latest reconcile: the workload counts as up to date
    // once its rollout finished, which the operator re-reads while it is rolling out.
    let up_to_date =
        format!(r#"tracing_operator_workloads{{policy="{policy_name}",state="up_to_date"}}"#);
    support::wait_until(
        "the workloads gauge counts Deployment web as up to date",
        Duration::from_secs(60),
        || async { (operator.metric(&up_to_date) == 1.0).then_some(()) },
    )
    .await;
    assert!(
        sample(
            &body,
            r#"tracing_operator_api_writes_total{verb="patch",kind="Deployment"}"#
        ) >= Some(1.0),
        "{body}"
    );

    harness::delete_policy(&admin, &policy_name).await;
    let status = operator.sigterm(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM exits 0: {status}");

    let log = operator.log();
    let mut messages = Vec::new();
    for line in log.lines() {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(object.is_object(), "{line}");
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["level"].is_string(), "{line}");
        if let Some(message) = object["fields"]["message"].as_str() {
            messages.push(message.to_string());
        }
    }
    for expected in [
        "became leader",
        "caches synced",
        "released the Lease",
        "stopped",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "{expected:?} logged: {messages:?}"
        );
    }
}
