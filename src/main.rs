//! `tracing-operator run` reconciles TracingPolicies; `tracing-operator crd`
//! prints the CustomResourceDefinition; `tracing-operator why` explains one
//! workload. Installed (or linked) as `kubectl-tracing`, the binary is the
//! kubectl plugin: `kubectl tracing why deploy/gateway -n caas-gateway`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use tracing_operator::cli::why::{self, WhyArgs};
use tracing_operator::controller::{self, Settings};
use tracing_operator::plan;
use tracing_operator::runtime::{leader, metrics::Metrics, server, telemetry};

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "tracing-operator",
    version,
    about = "Rolls OpenTelemetry tracing out across a Kubernetes cluster from TracingPolicies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator against the cluster.
    Run(RunArgs),
    /// Print the TracingPolicy CustomResourceDefinition as YAML.
    Crd,
    /// Explain why a workload is traced or not: the policies that select it and
    /// the one that owns it, the planned variables and their sources, what its
    /// manifest keeps, its rollout. Exit code 0 traced, 1 not selected, 2
    /// selected but not (yet) traced, 3 could not tell.
    Why(WhyArgs),
}

/// The kubectl plugin: the binary called `kubectl-tracing` (kubectl runs it for
/// `kubectl tracing ...`).
#[derive(Parser, Debug)]
#[command(
    name = "kubectl tracing",
    bin_name = "kubectl tracing",
    version,
    about = "Explains how tracing-operator traces your workloads"
)]
struct PluginCli {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Explain why a workload is traced or not. Exit code 0 traced, 1 not
    /// selected, 2 selected but not (yet) traced, 3 could not tell.
    Why(WhyArgs),
}

/// The exit code of `why` when it cannot explain (a usage error, an unreadable
/// cluster, no such workload); 0 to 2 are its answers.
const WHY_FAILED: u8 = 3;

/// The name kubectl finds plugins by.
const PLUGIN_NAME: &str = "kubectl-tracing";

fn invoked_as_plugin(argv0: Option<&std::ffi::OsString>) -> bool {
    argv0
        .and_then(|a| std::path::Path::new(a).file_stem().map(|s| s.to_owned()))
        .is_some_and(|stem| stem == PLUGIN_NAME)
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The operator's namespace: never instrumented, and the default collector namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tracing-operator")]
    namespace: String,
    /// TracingPolicies reconciled at once.
    #[arg(long, env = "TRACING_OPERATOR_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Workload writes in flight at once within one policy's reconcile.
    #[arg(long, env = "TRACING_OPERATOR_WRITE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    write_concurrency: u32,
    /// Client-side limit on mutating API requests per second.
    #[arg(long, env = "TRACING_OPERATOR_KUBE_API_QPS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    kube_api_qps: u32,
    /// Burst above the QPS limit.
    #[arg(long, env = "TRACING_OPERATOR_KUBE_API_BURST", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    kube_api_burst: u32,
    /// Log format.
    #[arg(long, env = "TRACING_OPERATOR_LOG_FORMAT", value_enum, default_value_t = telemetry::LogFormat::Text)]
    log_format: telemetry::LogFormat,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(
        long,
        env = "TRACING_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Reconcile only while holding the Lease `tracing-operator` in --namespace.
    #[arg(long, env = "TRACING_OPERATOR_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// How long the Lease holds after each renewal (whole seconds, at least 3s): a
    /// standby takes over once it has seen no renewal for this long. The leader
    /// stops writing two thirds of it after its last successful renewal started.
    #[arg(long, env = "TRACING_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    lease_duration: Duration,
    /// Identity in the Lease and in Events; defaults to $POD_NAME or the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How settings reach pods: `admission` (the API server's MutatingAdmissionPolicy
    /// adds them to each new pod), `pod-template` (the operator writes them into each
    /// workload's pod template), or `auto`: admission where the API server serves it.
    #[arg(long, env = "TRACING_OPERATOR_INJECTION", value_enum, default_value_t = controller::InjectionChoice::Auto)]
    injection: controller::InjectionChoice,
    /// Namespaces where policies may run collectors, comma-separated, besides
    /// --namespace (always allowed); `*` for any namespace. The collector reads
    /// its Secrets in its own namespace, so this also bounds which Secrets a
    /// policy can have it read.
    #[arg(
        long,
        env = "TRACING_OPERATOR_ALLOWED_COLLECTOR_NAMESPACES",
        value_delimiter = ',',
        default_value = plan::guard::DEFAULT_ALLOWED_NAMESPACE
    )]
    allowed_collector_namespaces: Vec<String>,
    /// Image repository prefixes a collector image must come from, comma-separated,
    /// matched on whole path segments (`registry.example/otel` admits
    /// `registry.example/otel/collector:1`, not `registry.example/otel-evil:1`).
    #[arg(
        long,
        env = "TRACING_OPERATOR_ALLOWED_COLLECTOR_IMAGES",
        value_delimiter = ',',
        default_value = DEFAULT_COLLECTOR_REPOSITORY
    )]
    allowed_collector_images: Vec<String>,
    /// Let backends point outside the cluster; without it every backend host must
    /// be an in-cluster Service name (single label, `*.svc` or `*.svc.cluster.local`).
    #[arg(
        long,
        env = "TRACING_OPERATOR_ALLOW_EXTERNAL_BACKENDS",
        default_value_t = false
    )]
    allow_external_backends: bool,
}

/// The repository of the default collector image, the default of --allowed-collector-images.
const DEFAULT_COLLECTOR_REPOSITORY: &str = "otel/opentelemetry-collector-contrib";

impl RunArgs {
    /// The collector settings from the three flags, or what is wrong with them.
    fn collector_guard(&self) -> Result<plan::guard::CollectorGuard, String> {
        Ok(plan::guard::CollectorGuard {
            namespaces: plan::guard::parse_namespaces(&self.allowed_collector_namespaces)
                .map_err(|e| format!("--allowed-collector-namespaces: {e}"))?,
            image_prefixes: plan::guard::parse_image_prefixes(&self.allowed_collector_images)
                .map_err(|e| format!("--allowed-collector-images: {e}"))?,
            external_backends: self.allow_external_backends,
        })
    }
}

/// The Lease records whole seconds, and the leader renews every third of the
/// duration: a fraction would be dropped, and under 3s renewals could not keep up.
fn parse_lease_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}"))?;
    if duration.subsec_nanos() != 0 {
        return Err(format!("{value:?}: must be whole seconds"));
    }
    if duration < Duration::from_secs(3) {
        return Err(format!("{value:?}: must be at least 3s"));
    }
    Ok(duration)
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if invoked_as_plugin(argv.first()) {
        return match PluginCli::try_parse_from(&argv) {
            Ok(PluginCli {
                command: PluginCommand::Why(args),
            }) => run_why(&args),
            Err(e) => usage(&e, WHY_FAILED),
        };
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let why = argv.get(1).is_some_and(|a| a == "why");
            return usage(&e, if why { WHY_FAILED } else { 2 });
        }
    };
    match cli.command {
        Command::Why(args) => run_why(&args),
        Command::Crd => match tracing_operator::api::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot serialize the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let telemetry = match telemetry::init(args.log_format) {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("error: initializing logging: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
            // Ends the remaining tasks (and their spans) before the exporter flushes.
            drop(runtime);
            drop(telemetry);
            code
        }
    }
}

/// Prints a parse error (or `--help`, `--version`) and returns its exit code:
/// `failed` for an error, 0 for help.
fn usage(e: &clap::Error, failed: u8) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(failed)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_why(args: &WhyArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(WHY_FAILED);
        }
    };
    match runtime.block_on(why::explain(args)) {
        Ok(explanation) => {
            match args.output {
                why::Output::Table => print!("{}", why::render(&explanation)),
                why::Output::Json => match serde_json::to_string_pretty(&explanation) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("error: cannot serialize the explanation: {e}");
                        return ExitCode::from(WHY_FAILED);
                    }
                },
            }
            ExitCode::from(explanation.verdict.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(WHY_FAILED)
        }
    }
}

async fn client(args: &RunArgs) -> Result<kube::Client, String> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("loading kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no kubeconfig and not in a cluster: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("creating the Kubernetes client: {e}"))
}

async fn run(args: RunArgs) -> Result<(), String> {
    let collector_guard = args.collector_guard()?;
    let client = client(&args).await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("tracing-operator-{}", std::process::id()))
    });
    let metrics = Arc::new(Metrics::default());
    let shutdown = server::Shutdown::new();
    let readiness = server::Readiness::default();
    let server = tokio::spawn(server::serve(
        args.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down: finishing in-flight reconciles");
        signal_shutdown.trigger();
    });

    let (lease, fence) = if args.leader_elect {
        let elector = leader::LeaderElector::new(
            client.clone(),
            &args.namespace,
            "tracing-operator",
            &identity,
            args.lease_duration,
        );
        // A standby is ready: it must count for rolling updates and the
        // PodDisruptionBudget, or the leader it would replace could never go.
        readiness.set_ready();
        info!(%identity, "waiting for leadership");
        tokio::select! {
            acquired = elector.acquire() => acquired.map_err(|e| format!("leader election: {e}"))?,
            () = shutdown.wait() => return Ok(()),
        }
        info!(%identity, "became leader");
        // As leader, ready again once the caches have synced.
        readiness.set_not_ready();
        let fence = elector.fence();
        (Some(elector), fence)
    } else {
        (None, leader::Fence::unfenced())
    };

    let settings = Settings {
        operator_namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        write_concurrency: usize::try_from(args.write_concurrency).unwrap_or(8),
        qps: args.kube_api_qps,
        burst: args.kube_api_burst,
        instance: Some(identity),
        injection: args.injection,
        collector_guard,
    };
    let stop = shutdown.clone();
    let lost = lease.as_ref().map(|l| l.lost());
    let stopping = CancellationToken::new();
    let stop_requested = stopping.clone();
    let controller_shutdown = async move {
        match lost {
            Some(lost) => tokio::select! {
                () = stop.wait() => {},
                () = lost => error!("lost leadership; stopping"),
            },
            None => stop.wait().await,
        }
        stop_requested.cancel();
    };
    let ready = readiness.clone();
    let synced = CancellationToken::new();
    let caches_synced = synced.clone();
    let controller = controller::run(
        client,
        settings,
        metrics,
        fence,
        move || {
            caches_synced.cancel();
            ready.set_ready();
        },
        controller_shutdown,
    );
    let mut failed = None;
    tokio::select! {
        result = controller => failed = result.err(),
        () = abandon_controller(&stopping, &synced) => {},
    }
    let lost = lease.as_ref().is_some_and(|l| l.is_lost());
    if let Some(lease) = lease {
        lease.release().await;
    }
    shutdown.trigger();
    if let Some(error) = failed {
        return Err(error);
    }
    if lost {
        // Exit non-zero so the restart (which stands by again) shows why.
        return Err("lost the leader Lease".into());
    }
    if let Ok(Err(e)) = server.await {
        return Err(format!("metrics server: {e}"));
    }
    info!("stopped");
    Ok(())
}

/// How long in-flight reconciles may run on after a stop was requested: within
/// the chart's default terminationGracePeriodSeconds (30), with time left to
/// hand the Lease back.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Resolves when the controller is to be dropped rather than awaited: at once
/// when the stop came before the caches synced, else [`SHUTDOWN_GRACE`] after it.
///
/// kube-runtime's graceful shutdown waits for the policy cache before it ends,
/// so with an API server that never answered it would wait forever, although
/// nothing can be half done: every reconcile waits for the caches before it
/// writes anything.
async fn abandon_controller(stopping: &CancellationToken, synced: &CancellationToken) {
    stopping.cancelled().await;
    if !synced.is_cancelled() {
        warn!("stopping before the caches synced; nothing was written");
        return;
    }
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    warn!(grace = ?SHUTDOWN_GRACE, "in-flight reconciles did not finish in time; stopping anyway");
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_duration_is_whole_seconds_of_at_least_three() {
        assert_eq!(parse_lease_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_lease_duration("1m"), Ok(Duration::from_secs(60)));
        let fraction = parse_lease_duration("3500ms").unwrap_err();
        assert!(fraction.contains("whole seconds"), "{fraction}");
        let short = parse_lease_duration("2s").unwrap_err();
        assert!(short.contains("at least 3s"), "{short}");
        assert!(parse_lease_duration("soon").is_err());
    }

    #[test]
    fn the_plugin_is_the_binary_called_kubectl_tracing() {
        let plugin = |a: &str| invoked_as_plugin(Some(&std::ffi::OsString::from(a)));
        assert!(plugin("/usr/local/bin/kubectl-tracing"));
        assert!(plugin("kubectl-tracing"));
        assert!(!plugin("/usr/local/bin/tracing-operator"));
        assert!(!plugin("kubectl-tracing-old/tracing-operator"));
        let parsed = PluginCli::try_parse_from([
            "kubectl-tracing",
            "why",
            "deploy/gateway",
            "-n",
            "caas-gateway",
            "-o",
            "json",
        ])
        .unwrap();
        let PluginCommand::Why(args) = parsed.command;
        assert_eq!(args.workload, "deploy/gateway");
        assert_eq!(args.namespace.as_deref(), Some("caas-gateway"));
        assert_eq!(args.output, why::Output::Json);
        let direct =
            Cli::try_parse_from(["tracing-operator", "why", "sts/socket", "--namespace", "s"])
                .unwrap();
        assert!(matches!(direct.command, Command::Why(a) if a.workload == "sts/socket"));
    }

    #[test]
    fn the_lease_duration_defaults_to_15s() {
        let cli = Cli::try_parse_from(["tracing-operator", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run parses as Run");
        };
        assert_eq!(args.lease_duration, Duration::from_secs(15));
    }

    fn run_args(argv: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["tracing-operator", "run"].iter().chain(argv))?;
        let Command::Run(args) = cli.command else {
            panic!("run parses as Run");
        };
        Ok(args)
    }

    #[test]
    fn collector_settings_default_to_observability_the_pinned_repository_and_in_cluster() {
        let guard = run_args(&[]).unwrap().collector_guard().unwrap();
        assert_eq!(guard, plan::guard::CollectorGuard::default());
        assert_eq!(
            plan::guard::image_repository(
                tracing_operator::plan::collector::DEFAULT_COLLECTOR_IMAGE
            ),
            DEFAULT_COLLECTOR_REPOSITORY,
            "the default prefix is the default image's repository"
        );
    }

    #[test]
    fn collector_settings_come_from_the_flags() {
        let guard = run_args(&[
            "--allowed-collector-namespaces=observability,team-a",
            "--allowed-collector-images=registry.corp.example/otel/,otel/opentelemetry-collector-contrib",
            "--allow-external-backends",
        ])
        .unwrap()
        .collector_guard()
        .unwrap();
        assert_eq!(
            guard.namespaces,
            plan::guard::Namespaces::List(vec!["observability".into(), "team-a".into()])
        );
        assert_eq!(
            guard.image_prefixes,
            [
                "registry.corp.example/otel",
                "otel/opentelemetry-collector-contrib"
            ]
        );
        assert!(guard.external_backends);

        let any = run_args(&["--allowed-collector-namespaces=*"]).unwrap();
        assert_eq!(
            any.collector_guard().unwrap().namespaces,
            plan::guard::Namespaces::Any
        );
        let own_only = run_args(&["--allowed-collector-namespaces="]).unwrap();
        assert_eq!(
            own_only.collector_guard().unwrap().namespaces,
            plan::guard::Namespaces::List(vec![]),
            "an empty list leaves only the operator's namespace"
        );
    }

    #[test]
    fn bad_collector_settings_name_the_flag() {
        let bad = run_args(&["--allowed-collector-namespaces=*,kube-system"]).unwrap();
        let error = bad.collector_guard().unwrap_err();
        assert!(
            error.starts_with("--allowed-collector-namespaces:"),
            "{error}"
        );
        let bad = run_args(&["--allowed-collector-images="]).unwrap();
        let error = bad.collector_guard().unwrap_err();
        assert!(error.starts_with("--allowed-collector-images:"), "{error}");
    }
}
