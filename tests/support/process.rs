//! The real operator binary as a child process of a test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{free_port, log_tail, wait_until};

/// `tracing-operator run`, killed when dropped (its log tail printed if the test
/// is failing).
pub struct OperatorProcess {
    /// Names its log file and the process in messages.
    pub name: String,
    /// Where it serves /healthz, /readyz and /metrics.
    pub metrics_addr: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl OperatorProcess {
    /// Starts `tracing-operator run --kubeconfig=<kubeconfig>
    /// --metrics-addr=<a free loopback port> <args>` with `RUST_LOG=info` and
    /// `env`; nothing else of the test's environment configures it (`KUBECONFIG`,
    /// `POD_NAMESPACE`, `POD_NAME`, `RUST_LOG`, `OTEL_*` and `TRACING_OPERATOR_*`
    /// are removed). Its log goes to `<dir>/<name>.log`.
    pub fn start(
        name: &str,
        dir: &Path,
        kubeconfig: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> OperatorProcess {
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracing-operator"));
        cmd.arg("run")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--metrics-addr={metrics_addr}"))
            .args(args);
        for (var, _) in std::env::vars_os() {
            let var = var.to_string_lossy();
            if var.starts_with("OTEL_")
                || var.starts_with("TRACING_OPERATOR_")
                || ["KUBECONFIG", "POD_NAMESPACE", "POD_NAME", "RUST_LOG"].contains(&var.as_ref())
            {
                cmd.env_remove(var.as_ref());
            }
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("operator log file"))
            .spawn()
            .expect("start tracing-operator");
        OperatorProcess {
            name: name.to_string(),
            metrics_addr,
            log,
            child,
        }
    }

    /// Where its log goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its process id, for reading `/proc/<pid>/...`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it without a chance to clean up, like a crashed pod.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL the operator");
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit.
    pub async fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(kill.success(), "kill -TERM {pid}: {kill}");
        wait_until(
            &format!("{} exits after SIGTERM", self.name),
            timeout,
            || {
                let status = self.child.try_wait().expect("operator status");
                async move { status }
            },
        )
        .await
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", log_tail(&self.name, &self.log));
        }
    }
}
