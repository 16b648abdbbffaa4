//! Leader election on a `coordination.k8s.io/v1` Lease, with a fence the
//! controller checks before it writes.
//!
//! The protocol is client-go's `leaderelection`:
//! - a candidate reads the Lease (creating it if absent) and claims it when
//!   nobody holds it, or when the record it holds has not changed for
//!   `leaseDurationSeconds` on the candidate's own monotonic clock, counted from
//!   when the candidate first saw that record ([`decide`]). The holder's
//!   `renewTime` is never compared with the local clock, so a holder whose clock
//!   is skewed neither loses the Lease early nor keeps it forever once it dies.
//!   The claim is an update carrying the `resourceVersion` read, so of two
//!   candidates only one succeeds;
//! - the leader renews every third of the lease duration and stops leading once
//!   its last successful renewal *started* a renew deadline ago (two thirds of
//!   the lease duration). [`Fence::check`] fails from that instant on, and the
//!   controller checks it before each write, so a leader that cannot renew
//!   (partitioned, throttled, or frozen and resumed) writes nothing once a
//!   standby may have taken over (see [`Fence`] for why the margin holds);
//! - on graceful shutdown the leader clears `holderIdentity` so a standby takes
//!   over at its next poll instead of waiting for the lease to expire.
//!
//! With the default 15s lease duration the renew deadline is 10s and the retry
//! period (a standby's poll, a failed renewal's retry) about 1.9s, close to
//! client-go's 15s/10s/2s.
//!
//! No crate does both: kube-lease-manager (kube 5) and kube-leader-election
//! (kube 0.96) compare `renewTime` with the local clock, kube-coordinate has no
//! release for kube 5, and k8s-controller's `LeaderElection` (kube 5, expiry
//! from observation as here) only drops the future it guards once its renewal
//! loop notices, with nothing to check at the point of writing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
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

/// How long after the start of its last successful renewal a leader still
/// writes: two thirds of the lease duration (10s of 15s). See [`Fence`].
pub fn renew_deadline(lease_duration: Duration) -> Duration {
    lease_duration * 2 / 3
}

/// How often the leader renews: a third of the lease duration, so one failed
/// renewal is retried before the renew deadline.
fn renew_period(lease_duration: Duration) -> Duration {
    lease_duration / 3
}

/// How often a standby polls the Lease, and a failed renewal is retried.
fn retry_period(lease_duration: Duration) -> Duration {
    (lease_duration / 8).max(Duration::from_millis(100))
}

/// A Lease record as a candidate saw it, and when it first saw it (its own
/// monotonic clock).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub spec: LeaseSpec,
    pub resource_version: Option<String>,
    pub since: Instant,
}

impl Observed {
    /// Whether a Lease read as `spec` and `resource_version` is still the record
    /// observed: any write to the Lease (a renewal above all) changes its
    /// `resourceVersion`, and the spec is compared too for servers without one.
    fn is_same_record(&self, spec: &LeaseSpec, resource_version: Option<&str>) -> bool {
        self.resource_version.as_deref() == resource_version && &self.spec == spec
    }
}

/// What a candidate does with the Lease as it finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This candidate holds the Lease: renew it.
    Renew,
    /// Nobody holds it, or the holder's record has not changed for a lease duration: claim it.
    Claim,
    /// Another candidate holds it until `expires` (our monotonic clock) unless it renews.
    Wait { holder: String, expires: Instant },
}

/// Decides what `me` does with `lease`, read at `now`, having last observed
/// `observed`; returns the decision and the observation to remember for the
/// next poll. `default_duration` stands in for a missing `leaseDurationSeconds`.
///
/// The holder's lease has expired once its record has stayed the same for
/// its `leaseDurationSeconds` since we first saw it; the times in the record
/// are not read.
pub fn decide(
    lease: Option<&Lease>,
    me: &str,
    observed: Option<&Observed>,
    now: Instant,
    default_duration: Duration,
) -> (Decision, Option<Observed>) {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return (Decision::Claim, None);
    };
    let holder = match spec.holder_identity.as_deref() {
        None | Some("") => return (Decision::Claim, None),
        Some(holder) if holder == me => return (Decision::Renew, None),
        Some(holder) => holder,
    };
    let resource_version = lease.and_then(|l| l.metadata.resource_version.as_deref());
    let observed = match observed {
        Some(o) if o.is_same_record(spec, resource_version) => o.clone(),
        _ => Observed {
            spec: spec.clone(),
            resource_version: resource_version.map(str::to_string),
            since: now,
        },
    };
    let duration = match spec.lease_duration_seconds {
        Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs().into()),
        _ => default_duration,
    };
    let holder = holder.to_string();
    let Some(expires) = observed.since.checked_add(duration) else {
        // Expiry past the end of the clock: held while the record stands; poll as usual.
        let expires = now + default_duration;
        return (Decision::Wait { holder, expires }, Some(observed));
    };
    if now >= expires {
        (Decision::Claim, None)
    } else {
        (Decision::Wait { holder, expires }, Some(observed))
    }
}

/// A cheap, cloneable handle: may this process still write as leader?
///
/// Why a standby cannot take over while the check passes: the leader's
/// deadline runs from the instant its last successful renewal *started*,
/// before the request was sent. That renewal's record was written to the
/// Lease after that instant, and a standby can only have seen it after it was
/// written, so the standby's clock for it starts later still; the standby then
/// waits a full lease duration of no change. Even when the standby observed the
/// record at the very instant the renewal wrote it, it claims no earlier than
/// `start + lease duration`, while the check fails from `start + renew
/// deadline`: a third of the lease duration earlier (5s of 15s), which covers
/// the difference in rate of the two monotonic clocks and a write's way to the
/// API server. A renewal that commits but whose answer is lost or late does not
/// count, so it cannot extend leadership either. What no check on the client
/// can prevent is a write sent after the check and held up on the way (a
/// process frozen between the two) for longer than that third.
#[derive(Clone)]
pub struct Fence {
    state: Option<Arc<FenceState>>,
}

struct FenceState {
    lease: String,
    deadline: Duration,
    lost: CancellationToken,
    /// When the last successful claim or renewal started; `None` before the
    /// Lease was acquired and after it was released.
    renewed: Mutex<Option<Instant>>,
}

impl FenceState {
    fn renewed(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // The guarded value is a plain instant: a panic elsewhere cannot leave it inconsistent.
        self.renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Fence {
    /// A fence for a process without leader election: always passes.
    pub fn unfenced() -> Fence {
        Fence { state: None }
    }

    /// Ok while this process holds the Lease and its last successful renewal
    /// *started* less than the renew deadline ago (monotonic clock); Err once
    /// that has passed or leadership was lost.
    pub fn check(&self) -> Result<(), NotLeader> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let not_leader = |why| NotLeader {
            lease: state.lease.clone(),
            why,
        };
        if state.lost.is_cancelled() {
            return Err(not_leader(Why::Lost));
        }
        let Some(renewed) = *state.renewed() else {
            return Err(not_leader(Why::NotHeld));
        };
        let since = renewed.elapsed();
        if since >= state.deadline {
            return Err(not_leader(Why::Overdue {
                since,
                deadline: state.deadline,
            }));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            None => f.write_str("Fence(unfenced)"),
            Some(state) => write!(f, "Fence(Lease {})", state.lease),
        }
    }
}

/// Why [`Fence::check`] failed: this process may no longer write as leader.
#[derive(Debug, thiserror::Error)]
#[error("not the leader on Lease {lease}: {why}")]
pub struct NotLeader {
    lease: String,
    why: Why,
}

#[derive(Debug, PartialEq, Eq)]
enum Why {
    NotHeld,
    Lost,
    Overdue { since: Duration, deadline: Duration },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::NotHeld => f.write_str("the Lease is not held (not yet acquired, or released)"),
            Why::Lost => f.write_str("leadership was lost"),
            Why::Overdue { since, deadline } => write!(
                f,
                "the last successful renewal started {since:.1?} ago, past the renew deadline of {deadline:?}"
            ),
        }
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
    /// Another candidate holds it; unless its record changes, it expires at `expires`.
    HeldBy {
        holder: String,
        expires: Instant,
    },
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

    /// Reads the Lease and claims or renews it if this candidate may;
    /// `observed` carries what this candidate saw of it between attempts.
    async fn attempt(&self, observed: &mut Option<Observed>) -> Result<Attempt, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(claimed(
                    None,
                    &self.identity,
                    self.duration_seconds(),
                    Timestamp::now(),
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(e) if is_conflict(&e) => Ok(Attempt::Raced),
                Err(e) => Err(e),
            };
        };
        let (decision, seen) = decide(
            Some(&lease),
            &self.identity,
            observed.as_ref(),
            Instant::now(),
            self.duration,
        );
        *observed = seen;
        match decision {
            Decision::Wait { holder, expires } => Ok(Attempt::HeldBy { holder, expires }),
            Decision::Renew | Decision::Claim => {
                let mut updated = lease.clone();
                // The renewTime written is informational (kubectl, humans): no
                // candidate reads it to decide anything.
                updated.spec = Some(claimed(
                    lease.spec.as_ref(),
                    &self.identity,
                    self.duration_seconds(),
                    Timestamp::now(),
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

    /// Keeps the Lease renewed until renewing fails for too long or someone
    /// else holds it, moving `fence` on with each successful renewal.
    async fn keep_renewed(self, fence: Arc<FenceState>) {
        let renew_period = renew_period(self.duration);
        let renew_deadline = renew_deadline(self.duration);
        let retry_period = retry_period(self.duration);
        let last_renewed = || {
            let renewed = *fence.renewed();
            renewed.map_or(renew_deadline, |at| at.elapsed())
        };
        // Renewals are paced from when the previous one started, so that slow
        // answers do not eat into the time left before the deadline.
        let mut wait = renew_period.saturating_sub(last_renewed());
        loop {
            tokio::time::sleep(wait).await;
            let left = renew_deadline.saturating_sub(last_renewed());
            let started = Instant::now();
            // A request that hangs must not keep us leading past the deadline,
            // and a renewal is only counted once it answered within it.
            match tokio::time::timeout(left, self.attempt(&mut None)).await {
                Ok(Ok(Attempt::Held)) => {
                    *fence.renewed() = Some(started);
                    wait = renew_period.saturating_sub(started.elapsed());
                    continue;
                }
                Ok(Ok(Attempt::HeldBy { holder, .. })) => {
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
            let since = last_renewed();
            if since >= renew_deadline {
                error!(lease = %self.name, deadline = ?renew_deadline, "could not renew the Lease in time");
                break;
            }
            wait = retry_period.min(renew_deadline - since);
        }
        fence.lost.cancel();
    }
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
    fence: Arc<FenceState>,
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
        let duration = lease_duration.max(Duration::from_secs(1));
        LeaderElector {
            lock: Lock {
                api: Api::namespaced(client, namespace),
                namespace: namespace.to_string(),
                name: lease_name.to_string(),
                identity: identity.to_string(),
                duration,
            },
            fence: Arc::new(FenceState {
                lease: format!("{namespace}/{lease_name}"),
                deadline: renew_deadline(duration),
                lost: CancellationToken::new(),
                renewed: Mutex::new(None),
            }),
            renewer: Mutex::new(None),
        }
    }

    /// The fence the controller checks before it writes: passes only while
    /// this elector leads, within the renew deadline.
    pub fn fence(&self) -> Fence {
        Fence {
            state: Some(self.fence.clone()),
        }
    }

    /// Returns once this process holds the Lease, and keeps renewing it in the
    /// background. Errors only when retrying cannot help.
    pub async fn acquire(&self) -> Result<(), Error> {
        let lock = &self.lock;
        let retry = retry_period(lock.duration);
        let mut observed = None;
        let mut last_holder = None;
        loop {
            let started = Instant::now();
            let mut wait = retry;
            match lock.attempt(&mut observed).await {
                Ok(Attempt::Held) => {
                    *self.fence.renewed() = Some(started);
                    let renewer = tokio::spawn(lock.clone().keep_renewed(self.fence.clone()));
                    if let Some(previous) = self.renewer().replace(renewer) {
                        previous.abort();
                    }
                    return Ok(());
                }
                Ok(Attempt::HeldBy { holder, expires }) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(lease = %lock.name, %holder, "Lease held by another candidate; standing by");
                        last_holder = Some(holder);
                    }
                    // Poll again when it would expire, if that comes first.
                    wait = retry.min(expires.saturating_duration_since(Instant::now()));
                }
                Ok(Attempt::Raced) => {
                    // Someone else just wrote it: read it again at once, so the
                    // holder is known (and logged) without a retry period's delay.
                    debug!(lease = %lock.name, "another candidate wrote the Lease first");
                    wait = Duration::ZERO;
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
            tokio::time::sleep(wait).await;
        }
    }

    /// Resolves once leadership is lost: renewing failed past the deadline, or
    /// another candidate holds the Lease.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        self.fence.lost.clone().cancelled_owned()
    }

    /// Whether leadership was lost (see [`LeaderElector::lost`]).
    pub fn is_lost(&self) -> bool {
        self.fence.lost.is_cancelled()
    }

    /// Stops renewing and, if this process still holds the Lease, hands it back
    /// so a standby takes over without waiting for it to expire. The fence
    /// fails from here on.
    pub async fn release(&self) {
        let renewer = self.renewer().take();
        if let Some(renewer) = renewer {
            renewer.abort();
            let _ = renewer.await;
        }
        *self.fence.renewed() = None;
        if self.fence.lost.is_cancelled() {
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

#[cfg(test)]
mod tests;
