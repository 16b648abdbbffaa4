//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Only kube-lease-manager supports kube 5, and it does not report a leader
//! whose renewals keep failing (its watch loop retries forever with the
//! leadership flag still set), so this is a small loop of its own, after
//! client-go's `leaderelection`:
//! - a candidate reads the Lease (creating it if absent) and claims it when
//!   nobody holds it or the holder's `renewTime + leaseDurationSeconds` has
//!   passed; the claim is an update carrying the `resourceVersion` it read, so of
//!   two candidates only one can succeed;
//! - the leader renews every third of the lease duration and gives up once it has
//!   not renewed for two thirds of it, a third before a standby may take over;
//! - on graceful shutdown the leader clears `holderIdentity` so a standby takes
//!   over at its next poll instead of waiting for the lease to expire.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// A failure of leader election that retrying will not fix.
#[derive(Debug, thiserror::Error)]
#[error("Lease {namespace}/{name}: {source}")]
pub struct Error {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

/// What a candidate does with the Lease as it finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This candidate holds the Lease: renew it.
    Renew,
    /// Nobody holds it, or the holder let it expire: claim it.
    Claim,
    /// Another candidate holds it until `expires`.
    Wait { holder: String, expires: Timestamp },
}

/// Decides what `me` does with a Lease whose spec is `spec`, at `now`.
/// `default_duration` stands in for a missing `leaseDurationSeconds`.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Claim;
    };
    let holder = match spec.holder_identity.as_deref() {
        None | Some("") => return Decision::Claim,
        Some(holder) if holder == me => return Decision::Renew,
        Some(holder) => holder,
    };
    // Without a renew time the holder's claim cannot be dated: treat it as expired.
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Decision::Claim;
    };
    let seconds = match spec.lease_duration_seconds {
        Some(s) if s > 0 => i64::from(s),
        _ => i64::try_from(default_duration.as_secs()).unwrap_or(i64::MAX),
    };
    match renewed.0.checked_add(SignedDuration::from_secs(seconds)) {
        Ok(expires) if expires < now => Decision::Claim,
        Ok(expires) => Decision::Wait {
            holder: holder.to_string(),
            expires,
        },
        // Expiry past the end of time: held for good.
        Err(_) => Decision::Wait {
            holder: holder.to_string(),
            expires: Timestamp::MAX,
        },
    }
}

/// The spec `me` writes to claim or renew a Lease found as `previous`.
pub fn claimed(
    previous: Option<&LeaseSpec>,
    me: &str,
    duration_seconds: i32,
    now: Timestamp,
) -> LeaseSpec {
    let previous = previous.cloned().unwrap_or_default();
    let renewing = previous.holder_identity.as_deref() == Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration_seconds),
        renew_time: Some(MicroTime(now)),
        acquire_time: if renewing {
            previous.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        lease_transitions: match (renewing, previous.lease_transitions) {
            (true, transitions) => transitions,
            (false, Some(n)) => Some(n.saturating_add(1)),
            (false, None) => Some(0),
        },
        ..previous
    }
}

/// The spec that hands a Lease back: no holder, so any candidate claims it at once.
pub fn released(previous: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        acquire_time: None,
        renew_time: None,
        ..previous.clone()
    }
}

/// What one attempt to claim or renew found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Held,
    HeldBy(String),
    /// Someone else wrote the Lease between our read and our write.
    Raced,
}

#[derive(Clone)]
struct Lock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
}

impl Lock {
    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// Reads the Lease and claims or renews it if this candidate may.
    async fn attempt(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(claimed(None, &self.identity, self.duration_seconds(), now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(e) if is_conflict(&e) => Ok(Attempt::Raced),
                Err(e) => Err(e),
            };
        };
        match decide(lease.spec.as_ref(), &self.identity, now, self.duration) {
            Decision::Wait { holder, .. } => Ok(Attempt::HeldBy(holder)),
            Decision::Renew | Decision::Claim => {
                let mut updated = lease.clone();
                updated.spec = Some(claimed(
                    lease.spec.as_ref(),
                    &self.identity,
                    self.duration_seconds(),
                    now,
                ));
                // `updated` carries the resourceVersion read above: the update fails
                // with a conflict if anyone wrote the Lease since.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &updated)
                    .await
                {
                    Ok(_) => Ok(Attempt::Held),
                    Err(e) if is_conflict(&e) => Ok(Attempt::Raced),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Clears `holderIdentity` if this candidate still holds the Lease.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease
            .spec
            .as_ref()
            .filter(|s| s.holder_identity.as_deref() == Some(self.identity.as_str()))
        else {
            return Ok(());
        };
        let mut updated = lease.clone();
        updated.spec = Some(released(spec));
        self.api
            .replace(&self.name, &PostParams::default(), &updated)
            .await?;
        Ok(())
    }

    /// Keeps the Lease renewed until renewing fails for too long or someone else holds it.
    async fn keep_renewed(self, mut last_renewed: Instant, lost: CancellationToken) {
        let renew_period = self.duration / 3;
        let renew_deadline = self.duration * 2 / 3;
        let retry_period = retry_period(self.duration);
        let mut wait = renew_period;
        loop {
            tokio::time::sleep(wait).await;
            let left = renew_deadline.saturating_sub(last_renewed.elapsed());
            let started = Instant::now();
            // A request that hangs must not keep us leading past the deadline.
            match tokio::time::timeout(left, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => {
                    last_renewed = started;
                    wait = renew_period;
                    continue;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    error!(lease = %self.name, %holder, "another candidate holds the Lease");
                    break;
                }
                Ok(Ok(Attempt::Raced)) => {
                    debug!(lease = %self.name, "Lease changed while renewing; retrying")
                }
                Ok(Err(error)) => {
                    warn!(lease = %self.name, %error, "renewing the Lease failed; retrying")
                }
                Err(_) => {}
            }
            if last_renewed.elapsed() >= renew_deadline {
                error!(lease = %self.name, deadline = ?renew_deadline, "could not renew the Lease in time");
                break;
            }
            wait = retry_period.min(renew_deadline.saturating_sub(last_renewed.elapsed()));
        }
        lost.cancel();
    }
}

/// How often a standby polls the Lease, and a failed renewal is retried.
fn retry_period(duration: Duration) -> Duration {
    (duration / 8).max(Duration::from_millis(100))
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Client errors that retrying cannot fix (missing RBAC, namespace, invalid Lease).
fn is_permanent(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if (400..500).contains(&status.code) && ![408, 409, 429].contains(&status.code))
}

/// Leader election for one process on one Lease.
pub struct LeaderElector {
    lock: Lock,
    lost: CancellationToken,
    renewer: Mutex<Option<JoinHandle<()>>>,
}

impl LeaderElector {
    /// An elector for Lease `lease_name` in `namespace`, as `identity`, holding the
    /// Lease for `lease_duration` after each renewal.
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        LeaderElector {
            lock: Lock {
                api: Api::namespaced(client, namespace),
                namespace: namespace.to_string(),
                name: lease_name.to_string(),
                identity: identity.to_string(),
                duration: lease_duration.max(Duration::from_secs(1)),
            },
            lost: CancellationToken::new(),
            renewer: Mutex::new(None),
        }
    }

    /// Returns once this process holds the Lease, and keeps renewing it in the
    /// background. Errors only when retrying cannot help.
    pub async fn acquire(&self) -> Result<(), Error> {
        let lock = &self.lock;
        let mut last_holder = None;
        loop {
            let started = Instant::now();
            match lock.attempt().await {
                Ok(Attempt::Held) => {
                    let renewer =
                        tokio::spawn(lock.clone().keep_renewed(started, self.lost.clone()));
                    if let Some(previous) = self.renewer().replace(renewer) {
                        previous.abort();
                    }
                    return Ok(());
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(lease = %lock.name, %holder, "Lease held by another candidate; standing by");
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Raced) => {
                    debug!(lease = %lock.name, "another candidate wrote the Lease first")
                }
                Err(source) if is_permanent(&source) => {
                    return Err(Error {
                        namespace: lock.namespace.clone(),
                        name: lock.name.clone(),
                        source,
                    });
                }
                Err(error) => {
                    warn!(lease = %lock.name, %error, "reading or claiming the Lease failed; retrying")
                }
            }
            tokio::time::sleep(retry_period(lock.duration)).await;
        }
    }

    /// Resolves once leadership is lost: renewing failed past the deadline, or
    /// another candidate holds the Lease.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        self.lost.clone().cancelled_owned()
    }

    /// Whether leadership was lost (see [`LeaderElector::lost`]).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops renewing and, if this process still holds the Lease, hands it back
    /// so a standby takes over without waiting for it to expire.
    pub async fn release(&self) {
        let renewer = self.renewer().take();
        if let Some(renewer) = renewer {
            renewer.abort();
            let _ = renewer.await;
        }
        if self.lost.is_cancelled() {
            return;
        }
        match self.lock.release().await {
            Ok(()) => info!(lease = %self.lock.name, "released the Lease"),
            Err(error) => {
                warn!(lease = %self.lock.name, %error, "could not release the Lease; it expires on its own")
            }
        }
    }

    fn renewer(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        // The guarded value is a plain handle: a panic elsewhere cannot leave it inconsistent.
        self.renewer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for LeaderElector {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer().take() {
            renewer.abort();
        }
    }
}

/// A cheap, cloneable handle: may this process still write as leader?
#[derive(Clone)]
pub struct Fence {
    lost: Option<CancellationToken>,
}

/// This process may no longer write as leader.
#[derive(Debug, thiserror::Error)]
#[error("not the leader any more: {0}")]
pub struct NotLeader(String);

impl Fence {
    /// A fence for a process without leader election: always passes.
    pub fn unfenced() -> Fence {
        Fence { lost: None }
    }

    /// Ok while this process holds the Lease.
    pub fn check(&self) -> Result<(), NotLeader> {
        match &self.lost {
            Some(lost) if lost.is_cancelled() => Err(NotLeader("leadership lost".into())),
            _ => Ok(()),
        }
    }
}

impl LeaderElector {
    /// The fence the controller checks before each write burst.
    pub fn fence(&self) -> Fence {
        Fence {
            lost: Some(self.lost.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
