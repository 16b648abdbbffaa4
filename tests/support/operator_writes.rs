//! The operator's writes to one object, from the API server's audit log (see
//! [`super::audit`]): told apart from every other client's by the field manager
//! in the request URI (`fieldManager=tracing-operator`), so they count the same
//! whichever process or user sends them, and a test's own writes, `kubectl`'s
//! (`kubectl-set`, `kubectl-patch`, ...) and the workload controllers' never do.

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// One request with the operator's field manager, as the API server answered it.
#[derive(Clone, Debug)]
pub struct OperatorWrite {
    pub verb: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: String,
    pub name: String,
    pub code: Option<u16>,
    /// When the request reached the API server (its clock).
    pub received: Timestamp,
}

impl std::fmt::Display for OperatorWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}{} {}/{} -> {}",
            self.received,
            self.verb,
            self.resource,
            self.subresource
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            self.namespace,
            self.name,
            self.code.map_or("?".to_string(), |c| c.to_string())
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    stage: String,
    verb: String,
    #[serde(rename = "requestURI")]
    request_uri: String,
    object_ref: Option<ObjectRef>,
    response_status: Option<Status>,
    request_received_timestamp: String,
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

/// The operator's requests so far on `resource` (`deployments`, ...) object
/// `namespace/name`, subresources included, in the order the server received them.
pub fn to(resource: &str, namespace: &str, name: &str) -> anyhow::Result<Vec<OperatorWrite>> {
    let mut found: Vec<OperatorWrite> = all()?
        .into_iter()
        .filter(|w| w.resource == resource && w.namespace == namespace && w.name == name)
        .collect();
    found.sort_by_key(|w| w.received);
    Ok(found)
}

/// The operator's requests so far on objects of `resource` in `namespace`.
pub fn in_namespace(resource: &str, namespace: &str) -> anyhow::Result<Vec<OperatorWrite>> {
    let mut found: Vec<OperatorWrite> = all()?
        .into_iter()
        .filter(|w| w.resource == resource && w.namespace == namespace)
        .collect();
    found.sort_by_key(|w| w.received);
    Ok(found)
}

/// Every request with the operator's field manager in the audit log and the
/// backups it rotated out.
pub fn all() -> anyhow::Result<Vec<OperatorWrite>> {
    Ok(super::audit::log_texts()?
        .iter()
        .flat_map(|t| parse(t))
        .collect())
}

fn by_operator(uri: &str) -> bool {
    uri.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|p| p == format!("fieldManager={}", tracing_operator::api::FIELD_MANAGER))
    })
}

fn parse(log: &str) -> Vec<OperatorWrite> {
    log.lines()
        // A line being written as we read may be cut short: skip what does not parse.
        .filter_map(|line| serde_json::from_str::<Event>(line).ok())
        .filter(|e| e.stage == "ResponseComplete" && by_operator(&e.request_uri))
        .filter_map(|e| {
            let object = e.object_ref?;
            Some(OperatorWrite {
                verb: e.verb,
                resource: object.resource.unwrap_or_default(),
                subresource: object.subresource,
                namespace: object.namespace.unwrap_or_default(),
                name: object.name.unwrap_or_default(),
                code: e.response_status.and_then(|s| s.code),
                received: e.request_received_timestamp.parse().ok()?,
            })
        })
        .collect()
}
