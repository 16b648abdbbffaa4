//! One container of a pod, run as a local process the way the kubelet would start
//! it: kwok runs no containers, so a test that needs a pod's program to really run
//! takes the Pod the API server stored and starts the container's command here.
//!
//! The environment is the kubelet's: the container's `env` in list order,
//! `$(VAR)` expanded against the entries before it ([`expand`]), downward-API
//! `fieldRef`s filled in from the Pod (`status.podIP` and `status.hostIP` are
//! 127.0.0.1). Then [`Rewrites`] make the pod's view fit this machine: OTLP
//! endpoints to the local collector, volume mount paths to local folders. Nothing
//! else of the test's environment reaches the process except [`BASIC_ENV`], and
//! `HOSTNAME` (the pod's name, as the container runtime sets it).
//!
//! Not emulated: `envFrom`, `configMapKeyRef`/`secretKeyRef`/`resourceFieldRef`/
//! `fileKeyRef` (a clear error), the Service link variables (`KUBERNETES_SERVICE_HOST`,
//! `<SVC>_PORT`...), the image's own `ENV` and `WORKDIR`, and the container's
//! `command`/`args` (the caller gives the local command).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// What a process printed so far; notified on each line and at each stream's end.
type Lines = Arc<(Mutex<Printed>, Condvar)>;

#[derive(Default)]
struct Printed {
    /// Each line with the time it arrived.
    lines: Vec<(Instant, String)>,
    /// Output streams (stdout, stderr) not yet at their end.
    open: usize,
}

/// Variables of the test's own environment that the process also gets, as an
/// image's `ENV` would give them: where programs are, and a home and locale.
pub const BASIC_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"];

/// What does not fit, named by pod, container and variable.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("the pod JSON does not parse as a Pod: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pod {pod}: {field} is not set")]
    MissingField { pod: String, field: String },
    #[error("pod {pod}: no container named {container:?}")]
    NoContainer { pod: String, container: String },
    #[error("pod {pod} container {container}: envFrom is not supported here")]
    EnvFrom { pod: String, container: String },
    #[error(
        "pod {pod} container {container}: env {var} uses {source_kind}, which is not supported here"
    )]
    UnsupportedSource {
        pod: String,
        container: String,
        var: String,
        source_kind: &'static str,
    },
    #[error("pod {pod} container {container}: env {var}: fieldRef {path:?} is not supported")]
    UnsupportedField {
        pod: String,
        container: String,
        var: String,
        path: String,
    },
    #[error(
        "pod {pod} container {container}: {var}={value:?} names an OTLP endpoint with no local rewrite"
    )]
    UnmappedEndpoint {
        pod: String,
        container: String,
        var: String,
        value: String,
    },
    #[error(
        "pod {pod} container {container}: {var} refers to {path}, where the container mounts no volume"
    )]
    Unmounted {
        pod: String,
        container: String,
        var: String,
        path: String,
    },
    #[error("pod {pod} container {container}: starting {command:?}: {source}")]
    Spawn {
        pod: String,
        container: String,
        command: String,
        source: std::io::Error,
    },
    #[error("pod {pod} container {container}: log {path}: {source}")]
    Log {
        pod: String,
        container: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How the pod's view is mapped onto this machine, applied after the kubelet's
/// expansion.
#[derive(Debug, Clone, Default)]
pub struct Rewrites {
    /// An OTLP endpoint as the pod has it (`http://<collector>.<ns>.svc:4318`) to the
    /// local collector's URL. Every `OTEL_EXPORTER_OTLP*ENDPOINT` value must be one of
    /// these or start with one followed by `/` (a signal path): a pod pointing
    /// elsewhere is an error, not silently sent nowhere.
    pub otlp_endpoints: BTreeMap<String, String>,
    /// A volume mount path in the container (`/otel-auto-instrumentation`) to the
    /// local folder holding what the volume would; replaced in every env value
    /// where it stands as a whole path component. The container must mount a
    /// volume there if a value uses it.
    pub paths: BTreeMap<String, PathBuf>,
}

/// The kubelet's `$(VAR)` expansion (Kubernetes' `third_party/forked/golang/expansion`):
/// `$(NAME)` becomes `lookup(NAME)`, or stays as written when that is `None`;
/// `$$` becomes `$`; a `$` before anything else, an unclosed `$(` and a final `$`
/// stay as they are. A name runs to the first `)`, so references do not nest.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            // How many bytes after the `$` this expression used.
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    // Incomplete: `$(` is kept and the scan goes on after it.
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                // Not an expression: the `$` is kept, the next character is copied
                // from the checkpoint (Go copies its first byte here, which
                // mangles a multi-byte character; copying it whole is what a user means).
                _ => {
                    out.push('$');
                    0
                }
            };
            cursor += 1 + advance;
            checkpoint = cursor;
        } else {
            cursor += 1;
        }
    }
    out.push_str(&input[checkpoint..]);
    out
}

/// The container's environment as the kubelet computes it, before [`Rewrites`]:
/// each `env` entry in order, a `value` expanded against the entries before it,
/// a `fieldRef` read from the pod. A name listed twice keeps its first position
/// and its last value (the kubelet keeps the last).
pub fn kubelet_env(pod: &Pod, container: &str) -> Result<Vec<(String, String)>, PodError> {
    let pod_name = pod_name(pod);
    let c = find_container(pod, container)?;
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(PodError::EnvFrom {
            pod: pod_name,
            container: container.to_string(),
        });
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for var in c.env.iter().flatten() {
        let value = env_value(pod, container, var, &env)?;
        match env.iter_mut().find(|(name, _)| *name == var.name) {
            Some(entry) => entry.1 = value,
            None => env.push((var.name.clone(), value)),
        }
    }
    Ok(env)
}

/// [`kubelet_env`] with `rewrites` applied: what the local process gets from the pod.
pub fn container_env(
    pod: &Pod,
    container: &str,
    rewrites: &Rewrites,
) -> Result<Vec<(String, String)>, PodError> {
    let c = find_container(pod, container)?;
    let mounts: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.trim_end_matches('/'))
        .collect();
    let mut env = kubelet_env(pod, container)?;
    for (name, value) in &mut env {
        if name.starts_with("OTEL_EXPORTER_OTLP") && name.ends_with("ENDPOINT") {
            *value = rewrite_endpoint(value, &rewrites.otlp_endpoints).ok_or_else(|| {
                PodError::UnmappedEndpoint {
                    pod: pod_name(pod),
                    container: container.to_string(),
                    var: name.clone(),
                    value: value.clone(),
                }
            })?;
        }
        for (mount, local) in &rewrites.paths {
            let mount = mount.trim_end_matches('/');
            let rewritten = replace_path_prefix(value, mount, &local.to_string_lossy());
            if rewritten != *value {
                if !mounts.contains(&mount) {
                    return Err(PodError::Unmounted {
                        pod: pod_name(pod),
                        container: container.to_string(),
                        var: name.clone(),
                        path: mount.to_string(),
                    });
                }
                *value = rewritten;
            }
        }
    }
    Ok(env)
}

/// `value` with `from` replaced by `to` where it stands as a whole path: not
/// inside a longer name (`/opt/otel-auto-instrumentation`, `/otel-auto-instrumentation-x`).
pub fn replace_path_prefix(value: &str, from: &str, to: &str) -> String {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || "._-~/".contains(c);
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back().or(out.chars().next_back());
        let before_ok = before.is_none_or(|c| !is_name_char(c));
        let after = &rest[at + from.len()..];
        let after_ok = after
            .chars()
            .next()
            .is_none_or(|c| c == '/' || !is_name_char(c));
        out.push_str(&rest[..at]);
        if before_ok && after_ok {
            out.push_str(to);
        } else {
            out.push_str(from);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The local URL for an OTLP endpoint value, or `None` when no rewrite covers it.
fn rewrite_endpoint(value: &str, map: &BTreeMap<String, String>) -> Option<String> {
    map.iter().find_map(|(from, to)| {
        let from = from.trim_end_matches('/');
        let to = to.trim_end_matches('/');
        let rest = value.strip_prefix(from)?;
        (rest.is_empty() || rest.starts_with('/')).then(|| format!("{to}{rest}"))
    })
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata
        .name
        .clone()
        .unwrap_or_else(|| "<unnamed>".to_string())
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Result<&'a Container, PodError> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .find(|c| c.name == name)
        .ok_or_else(|| PodError::NoContainer {
            pod: pod_name(pod),
            container: name.to_string(),
        })
}

/// One entry's value: a `value` expanded against `earlier`, or a `fieldRef` read from the pod.
fn env_value(
    pod: &Pod,
    container: &str,
    var: &EnvVar,
    earlier: &[(String, String)],
) -> Result<String, PodError> {
    let Some(source) = &var.value_from else {
        let lookup = |name: &str| {
            earlier
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        return Ok(expand(var.value.as_deref().unwrap_or_default(), lookup));
    };
    let unsupported = |source_kind| PodError::UnsupportedSource {
        pod: pod_name(pod),
        container: container.to_string(),
        var: var.name.clone(),
        source_kind,
    };
    if source.config_map_key_ref.is_some() {
        return Err(unsupported("configMapKeyRef"));
    }
    if source.secret_key_ref.is_some() {
        return Err(unsupported("secretKeyRef"));
    }
    if source.resource_field_ref.is_some() {
        return Err(unsupported("resourceFieldRef"));
    }
    let Some(field) = &source.field_ref else {
        return Err(unsupported("a source other than fieldRef"));
    };
    field_value(pod, container, &var.name, &field.field_path)
}

/// The downward API's value of `path`, as `podFieldSelectorRuntimeValue` gives it.
fn field_value(pod: &Pod, container: &str, var: &str, path: &str) -> Result<String, PodError> {
    let required = |value: Option<&String>, field: &str| {
        value.cloned().ok_or_else(|| PodError::MissingField {
            pod: pod_name(pod),
            field: field.to_string(),
        })
    };
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    // `metadata.labels['key']`: a missing key is the empty string, as in the kubelet.
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")
            .map(str::to_string)
    };
    if let Some(key) = subscript("metadata.labels") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|l| l.get(&key))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(key) = subscript("metadata.annotations") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(&key))
            .cloned()
            .unwrap_or_default());
    }
    match path {
        "metadata.name" => required(meta.name.as_ref(), path),
        "metadata.namespace" => required(meta.namespace.as_ref(), path),
        "metadata.uid" => required(meta.uid.as_ref(), path),
        "spec.nodeName" => required(spec.and_then(|s| s.node_name.as_ref()), path),
        "spec.serviceAccountName" => {
            required(spec.and_then(|s| s.service_account_name.as_ref()), path)
        }
        // Every process here shares the loopback address.
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => {
            Ok("127.0.0.1".to_string())
        }
        _ => Err(PodError::UnsupportedField {
            pod: pod_name(pod),
            container: container.to_string(),
            var: var.to_string(),
            path: path.to_string(),
        }),
    }
}

/// A container's process, killed (and reaped) when dropped. Its stdout and
/// stderr go, line by line, to its log file; the lines are also kept, with the
/// time each arrived, for [`wait_for_line`](PodProcess::wait_for_line).
pub struct PodProcess {
    /// `<pod>/<container>`, for messages.
    pub name: String,
    /// The environment it was started with.
    pub env: Vec<(String, String)>,
    /// Just before the spawn.
    pub started: Instant,
    log: PathBuf,
    lines: Lines,
    child: Child,
}

impl PodProcess {
    /// Starts `command` (program and arguments; `$(VAR)` in the arguments expanded
    /// against the container's env, as the kubelet does for `args`) with the
    /// container's env from [`container_env`], logging to `log`.
    pub fn start(
        pod: &Pod,
        container: &str,
        command: &[impl AsRef<OsStr>],
        rewrites: &Rewrites,
        log: &Path,
    ) -> Result<PodProcess, PodError> {
        let env = container_env(pod, container, rewrites)?;
        let name = format!("{}/{container}", pod_name(pod));
        let lookup = |var: &str| env.iter().find(|(n, _)| n == var).map(|(_, v)| v.clone());
        let mut argv = command.iter().map(|a| {
            a.as_ref()
                .to_str()
                .map_or_else(|| a.as_ref().to_os_string(), |s| expand(s, lookup).into())
        });
        let program = argv.next().unwrap_or_default();
        let mut cmd = Command::new(&program);
        cmd.args(argv).env_clear();
        for var in BASIC_ENV {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| pod_name(pod));
        cmd.env("HOSTNAME", hostname)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let log_error = |source| PodError::Log {
            pod: pod_name(pod),
            container: container.to_string(),
            path: log.to_path_buf(),
            source,
        };
        let file = Arc::new(Mutex::new(File::create(log).map_err(log_error)?));
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| PodError::Spawn {
            pod: pod_name(pod),
            container: container.to_string(),
            command: program.to_string_lossy().into_owned(),
            source,
        })?;
        let lines: Lines = Arc::new((
            Mutex::new(Printed {
                lines: Vec::new(),
                open: usize::from(child.stdout.is_some()) + usize::from(child.stderr.is_some()),
            }),
            Condvar::new(),
        ));
        if let Some(out) = child.stdout.take() {
            copy_lines(Output::Stdout(out), file.clone(), lines.clone());
        }
        if let Some(err) = child.stderr.take() {
            copy_lines(Output::Stderr(err), file, lines.clone());
        }
        Ok(PodProcess {
            name,
            env,
            started,
            log: log.to_path_buf(),
            lines,
            child,
        })
    }

    /// Waits until the process prints a line starting with `prefix` and returns the
    /// rest of it with the time it arrived. Fails at once, with the log's tail, if
    /// the process exits first or `timeout` passes.
    pub fn wait_for_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, arrived) = &*self.lines;
        let mut printed = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("a log reader of {} panicked", self.name))?;
        let mut exited = None;
        loop {
            if let Some((at, line)) = printed.lines.iter().find(|(_, l)| l.starts_with(prefix)) {
                return Ok((*at, line[prefix.len()..].to_string()));
            }
            let now = Instant::now();
            if exited.is_none() {
                exited = self.child.try_wait()?.map(|status| (status, now));
            }
            // An exit is judged only once both streams are read to their end (or
            // a grandchild that keeps a pipe open has had a second): the last
            // lines may still be in the pipe when the process is gone.
            if let Some((status, at)) = exited
                && (printed.open == 0 || now >= at + Duration::from_secs(1))
            {
                drop(printed);
                anyhow::bail!(
                    "{} exited ({status}) before printing {prefix:?}\n{}",
                    self.name,
                    super::log_tail(&self.name, &self.log)
                );
            }
            if now >= deadline {
                drop(printed);
                anyhow::bail!(
                    "{} printed no {prefix:?} line within {timeout:?}\n{}",
                    self.name,
                    super::log_tail(&self.name, &self.log)
                );
            }
            // Woken by each new line and each stream's end; the cap notices an
            // exit without output.
            let wait = (deadline - now).min(Duration::from_millis(100));
            printed = arrived
                .wait_timeout(printed, wait)
                .map_err(|_| anyhow::anyhow!("a log reader of {} panicked", self.name))?
                .0;
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, as the kubelet does to stop a container.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid}: {status}");
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} still runs {timeout:?} later\n{}",
                    self.name,
                    super::log_tail(&self.name, &self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", super::log_tail(&self.name, &self.log));
        }
    }
}

enum Output {
    Stdout(ChildStdout),
    Stderr(ChildStderr),
}

/// Copies the lines of `out` to `file` and into `lines`, on a thread of its own.
fn copy_lines(out: Output, file: Arc<Mutex<File>>, lines: Lines) {
    std::thread::spawn(move || {
        let reader: Box<dyn std::io::Read + Send> = match out {
            Output::Stdout(o) => Box::new(o),
            Output::Stderr(e) => Box::new(e),
        };
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let at = Instant::now();
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{line}");
            }
            let (lock, arrived) = &*lines;
            if let Ok(mut printed) = lock.lock() {
                printed.lines.push((at, line));
                arrived.notify_all();
            }
        }
        let (lock, arrived) = &*lines;
        if let Ok(mut printed) = lock.lock() {
            printed.open = printed.open.saturating_sub(1);
            arrived.notify_all();
        }
    });
}

/// Parses the JSON of a Pod (`kubectl get pod -o json`).
pub fn pod_from_json(json: &str) -> Result<Pod, PodError> {
    Ok(serde_json::from_str(json)?)
}
