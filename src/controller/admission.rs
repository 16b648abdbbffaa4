//! Choosing how settings reach pods, once at start-up, and keeping the
//! operator's MutatingAdmissionPolicy and its binding in place.
//!
//! `--injection auto` (the default) uses admission injection where the API
//! server serves `admissionregistration.k8s.io/v1` MutatingAdmissionPolicy
//! (Kubernetes 1.36 and later; v1beta1 where an older server enables it), and
//! falls back to writing the pod template elsewhere. The policy objects are
//! applied by the leader with server-side apply, versioned with the binary.

use kube::Client;
use kube::api::ApiResource;
use tracing::{info, warn};

use super::writer::{WriteError, Writer};
use crate::plan::Injection;
use crate::plan::injection::{
    ADMISSION_POLICY_NAME, mutating_admission_policy, mutating_admission_policy_binding,
};

/// `--injection`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InjectionChoice {
    /// Admission where the API server serves MutatingAdmissionPolicy, else PodTemplate.
    #[default]
    Auto,
    Admission,
    #[value(name = "pod-template")]
    PodTemplate,
}

/// The MutatingAdmissionPolicy API version the server serves, if any.
pub async fn served_version(client: &Client) -> Option<&'static str> {
    for version in [
        "admissionregistration.k8s.io/v1",
        "admissionregistration.k8s.io/v1beta1",
    ] {
        if let Ok(list) = client.list_api_group_resources(version).await
            && list
                .resources
                .iter()
                .any(|r| r.name == "mutatingadmissionpolicies")
        {
            return Some(version);
        }
    }
    None
}

/// Resolves `--injection`; `Err` when admission is forced but not served.
pub async fn choose(
    client: &Client,
    choice: InjectionChoice,
) -> Result<(Injection, Option<&'static str>), String> {
    let served = served_version(client).await;
    match (choice, served) {
        (InjectionChoice::PodTemplate, _) => Ok((Injection::PodTemplate, None)),
        (InjectionChoice::Admission | InjectionChoice::Auto, Some(v)) => {
            Ok((Injection::Admission, Some(v)))
        }
        (InjectionChoice::Admission, None) => Err(
            "--injection admission: the API server does not serve MutatingAdmissionPolicy (admissionregistration.k8s.io/v1 or v1beta1)".into(),
        ),
        (InjectionChoice::Auto, None) => {
            warn!("the API server does not serve MutatingAdmissionPolicy: writing settings into pod templates (injection PodTemplate)");
            Ok((Injection::PodTemplate, None))
        }
    }
}

fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        plural: plural.to_string(),
    }
}

/// Applies the admission policy and its binding at `api_version`.
pub async fn install(
    writer: &Writer,
    api_version: &str,
    operator_namespace: &str,
) -> Result<(), WriteError> {
    let mut policy = mutating_admission_policy(env!("CARGO_PKG_VERSION"));
    let mut binding = mutating_admission_policy_binding(operator_namespace);
    policy["apiVersion"] = api_version.into();
    binding["apiVersion"] = api_version.into();
    writer
        .apply_owned(
            &resource(
                api_version,
                "MutatingAdmissionPolicy",
                "mutatingadmissionpolicies",
            ),
            None,
            ADMISSION_POLICY_NAME,
            &policy,
        )
        .await?;
    writer
        .apply_owned(
            &resource(
                api_version,
                "MutatingAdmissionPolicyBinding",
                "mutatingadmissionpolicybindings",
            ),
            None,
            ADMISSION_POLICY_NAME,
            &binding,
        )
        .await?;
    info!(policy = ADMISSION_POLICY_NAME, %api_version, "admission policy in place");
    Ok(())
}
