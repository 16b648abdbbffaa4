//! The API server's audit log of writes, as `testbed/testbed up` configures it
//! (write verbs at Metadata level, in `audit.log` beside the kubeconfig): the
//! record of who wrote what and when, independent of any client's own account.

use std::path::PathBuf;

use anyhow::{Context as _, ensure};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// One write request as the API server recorded it once it answered (the
/// testbed logs in blocking mode: the line is written before the answer).
#[derive(Clone, Debug)]
pub struct Write {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The HTTP status the server answered with.
    pub code: Option<u16>,
    /// When the request reached the server (the server's clock).
    pub received: Timestamp,
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        };
        write!(
            f,
            "{} {} {} {}/{} -> {} (by {})",
            self.received,
            self.verb,
            resource,
            self.namespace.as_deref().unwrap_or("-"),
            self.name.as_deref().unwrap_or("-"),
            self.code.map_or("?".to_string(), |c| c.to_string()),
            self.user
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    stage: String,
    verb: String,
    user: User,
    object_ref: Option<ObjectRef>,
    response_status: Option<Status>,
    request_received_timestamp: String,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    resource: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    code: Option<u16>,
}

/// Where the testbed's API server writes its audit log.
pub fn log_path() -> PathBuf {
    let kubeconfig = super::kubeconfig();
    kubeconfig
        .parent()
        .map(|dir| dir.join("audit.log"))
        .unwrap_or_else(|| PathBuf::from("audit.log"))
}

/// Every write the API server has recorded so far, from the log and the
/// backups it rotated out, so that a rotation during a test hides nothing.
pub fn writes() -> anyhow::Result<Vec<Write>> {
    Ok(log_texts()?.iter().flat_map(|t| writes_in(t)).collect())
}

/// The text of the audit log and of the backups it rotated out
/// (`audit-<time>.log`).
pub fn log_texts() -> anyhow::Result<Vec<String>> {
    let path = log_path();
    ensure!(
        path.exists(),
        "no audit log at {}: this test needs the testbed's API server with its audit \
         log (restart the testbed with `testbed/testbed down && testbed/testbed up`)",
        path.display()
    );
    let mut files = vec![path.clone()];
    if let Some(dir) = path.parent() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let file = entry?.path();
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("audit-") && name.ends_with(".log") {
                files.push(file);
            }
        }
    }
    files
        .iter()
        .map(|file| {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
        })
        .collect()
}

fn writes_in(log: &str) -> Vec<Write> {
    log.lines()
        // A line being written as we read may be cut short: skip what does not parse.
        .filter_map(|line| serde_json::from_str::<Event>(line).ok())
        .filter(|e| e.stage == "ResponseComplete")
        .filter_map(|e| {
            let received = e.request_received_timestamp.parse().ok()?;
            let object = e.object_ref.unwrap_or(ObjectRef {
                resource: None,
                subresource: None,
                namespace: None,
                name: None,
            });
            Some(Write {
                user: e.user.username,
                verb: e.verb,
                resource: object.resource.unwrap_or_default(),
                subresource: object.subresource,
                namespace: object.namespace,
                name: object.name,
                code: e.response_status.and_then(|s| s.code),
                received,
            })
        })
        .collect()
}
