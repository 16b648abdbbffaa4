use super::*;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn held_by(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        acquire_time: Some(MicroTime(at(0))),
        renew_time: Some(MicroTime(at(renewed))),
        lease_duration_seconds: Some(duration),
        lease_transitions: Some(3),
        ..Default::default()
    }
}

const DEFAULT: Duration = Duration::from_secs(15);

#[test]
fn a_free_lease_is_claimed() {
    assert_eq!(decide(None, "a", at(0), DEFAULT), Decision::Claim);
    assert_eq!(
        decide(Some(&LeaseSpec::default()), "a", at(0), DEFAULT),
        Decision::Claim
    );
    let released = LeaseSpec {
        holder_identity: Some(String::new()),
        ..held_by("b", 0, 15)
    };
    assert_eq!(
        decide(Some(&released), "a", at(1), DEFAULT),
        Decision::Claim
    );
}

#[test]
fn the_holder_renews_its_own_lease_even_late() {
    assert_eq!(
        decide(Some(&held_by("a", 0, 15)), "a", at(5), DEFAULT),
        Decision::Renew
    );
    assert_eq!(
        decide(Some(&held_by("a", 0, 15)), "a", at(100), DEFAULT),
        Decision::Renew
    );
}

#[test]
fn another_holders_lease_is_respected_until_it_expires() {
    let spec = held_by("b", 10, 15);
    assert_eq!(
        decide(Some(&spec), "a", at(20), DEFAULT),
        Decision::Wait {
            holder: "b".into(),
            expires: at(25)
        }
    );
    // Expired means renewTime + leaseDurationSeconds strictly before now.
    assert_eq!(
        decide(Some(&spec), "a", at(25), DEFAULT),
        Decision::Wait {
            holder: "b".into(),
            expires: at(25)
        }
    );
    assert_eq!(decide(Some(&spec), "a", at(26), DEFAULT), Decision::Claim);
}

#[test]
fn the_lease_own_duration_wins_over_the_candidates() {
    let spec = held_by("b", 0, 60);
    assert_eq!(
        decide(Some(&spec), "a", at(30), DEFAULT),
        Decision::Wait {
            holder: "b".into(),
            expires: at(60)
        }
    );
    let no_duration = LeaseSpec {
        lease_duration_seconds: None,
        ..held_by("b", 0, 60)
    };
    assert_eq!(
        decide(Some(&no_duration), "a", at(16), DEFAULT),
        Decision::Claim
    );
    assert!(matches!(
        decide(Some(&no_duration), "a", at(14), DEFAULT),
        Decision::Wait { .. }
    ));
}

#[test]
fn a_holder_without_times_is_treated_as_expired() {
    let undated = LeaseSpec {
        holder_identity: Some("b".into()),
        lease_duration_seconds: Some(15),
        ..Default::default()
    };
    assert_eq!(decide(Some(&undated), "a", at(0), DEFAULT), Decision::Claim);
    let acquired_only = LeaseSpec {
        renew_time: None,
        ..held_by("b", 0, 15)
    };
    assert!(matches!(
        decide(Some(&acquired_only), "a", at(10), DEFAULT),
        Decision::Wait { .. }
    ));
}

#[test]
fn creating_a_lease_starts_at_zero_transitions() {
    let spec = claimed(None, "a", 15, at(7));
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.acquire_time, Some(MicroTime(at(7))));
    assert_eq!(spec.renew_time, Some(MicroTime(at(7))));
    assert_eq!(spec.lease_transitions, Some(0));
}

#[test]
fn renewing_moves_only_the_renew_time() {
    let before = held_by("a", 5, 15);
    let spec = claimed(Some(&before), "a", 15, at(10));
    assert_eq!(spec.acquire_time, before.acquire_time);
    assert_eq!(spec.lease_transitions, Some(3));
    assert_eq!(spec.renew_time, Some(MicroTime(at(10))));
}

#[test]
fn taking_over_counts_a_transition_and_keeps_unrelated_fields() {
    let before = LeaseSpec {
        preferred_holder: Some("c".into()),
        strategy: Some("OldestEmulationVersion".into()),
        ..held_by("b", 0, 15)
    };
    let spec = claimed(Some(&before), "a", 15, at(40));
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.acquire_time, Some(MicroTime(at(40))));
    assert_eq!(spec.lease_transitions, Some(4));
    assert_eq!(spec.preferred_holder.as_deref(), Some("c"));
    assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
}

#[test]
fn releasing_frees_the_lease_for_the_next_candidate() {
    let spec = released(&held_by("a", 5, 15));
    assert_eq!(spec.holder_identity, None);
    assert_eq!(spec.lease_transitions, Some(3));
    assert_eq!(decide(Some(&spec), "b", at(6), DEFAULT), Decision::Claim);
}

/// An in-memory Lease API, for the paths a real API server cannot be made to
/// take on demand (failing renewals). Updates check `resourceVersion` as the
/// real one does.
mod fake {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use k8s_openapi::api::coordination::v1::Lease;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        Serve,
        Fail,
        Forbid,
    }

    #[derive(Debug)]
    pub struct Server {
        pub lease: Option<Lease>,
        pub version: u64,
        pub mode: Mode,
    }

    pub type Shared = Arc<Mutex<Server>>;

    pub fn new() -> Shared {
        Arc::new(Mutex::new(Server {
            lease: None,
            version: 0,
            mode: Mode::Serve,
        }))
    }

    pub fn client(server: &Shared) -> kube::Client {
        let router = Router::new()
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                post(create),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(read).put(replace),
            )
            .with_state(server.clone());
        kube::Client::new(router, "default")
    }

    fn status(code: StatusCode, reason: &str) -> Response {
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "message": reason, "code": code.as_u16(),
        });
        (code, body.to_string()).into_response()
    }

    fn refused(mode: Mode) -> Option<Response> {
        match mode {
            Mode::Serve => None,
            Mode::Fail => Some(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
            )),
            Mode::Forbid => Some(status(StatusCode::FORBIDDEN, "Forbidden")),
        }
    }

    fn store(server: &mut Server, mut lease: Lease) -> String {
        server.version += 1;
        lease.metadata.resource_version = Some(server.version.to_string());
        let body = serde_json::to_string(&lease).unwrap_or_default();
        server.lease = Some(lease);
        body
    }

    async fn read(State(server): State<Shared>) -> Response {
        let server = server.lock().unwrap();
        if let Some(r) = refused(server.mode) {
            return r;
        }
        match &server.lease {
            Some(lease) => serde_json::to_string(lease)
                .unwrap_or_default()
                .into_response(),
            None => status(StatusCode::NOT_FOUND, "NotFound"),
        }
    }

    async fn create(State(server): State<Shared>, body: Bytes) -> Response {
        let mut server = server.lock().unwrap();
        if let Some(r) = refused(server.mode) {
            return r;
        }
        if server.lease.is_some() {
            return status(StatusCode::CONFLICT, "AlreadyExists");
        }
        let lease: Lease = serde_json::from_slice(&body).unwrap();
        (StatusCode::CREATED, store(&mut server, lease)).into_response()
    }

    async fn replace(State(server): State<Shared>, body: Bytes) -> Response {
        let mut server = server.lock().unwrap();
        if let Some(r) = refused(server.mode) {
            return r;
        }
        let lease: Lease = serde_json::from_slice(&body).unwrap();
        let current = server
            .lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        if current.is_none() {
            return status(StatusCode::NOT_FOUND, "NotFound");
        }
        if lease.metadata.resource_version != current {
            return status(StatusCode::CONFLICT, "Conflict");
        }
        store(&mut server, lease).into_response()
    }
}

fn holder(server: &fake::Shared) -> Option<String> {
    server
        .lock()
        .unwrap()
        .lease
        .as_ref()?
        .spec
        .as_ref()?
        .holder_identity
        .clone()
}

fn elector(client: &kube::Client, identity: &str) -> LeaderElector {
    LeaderElector::new(
        client.clone(),
        "ops",
        "tracing-operator",
        identity,
        Duration::from_secs(15),
    )
}

#[tokio::test(start_paused = true)]
async fn one_leader_at_a_time_and_release_hands_over_at_once() {
    let server = fake::new();
    let client = fake::client(&server);
    let a = elector(&client, "a");
    let b = elector(&client, "b");
    a.acquire().await.unwrap();
    assert_eq!(holder(&server).as_deref(), Some("a"));

    // While a renews, b stands by (a minute here is four lease durations).
    assert!(
        tokio::time::timeout(Duration::from_secs(60), b.acquire())
            .await
            .is_err()
    );
    assert_eq!(holder(&server).as_deref(), Some("a"));
    assert!(
        futures::FutureExt::now_or_never(a.lost()).is_none(),
        "a still leads"
    );

    a.release().await;
    assert_eq!(holder(&server), None);
    let started = Instant::now();
    b.acquire().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "b took over within a poll, not a lease duration: {:?}",
        started.elapsed()
    );
    assert_eq!(holder(&server).as_deref(), Some("b"));
    let spec = server.lock().unwrap().lease.clone().unwrap().spec.unwrap();
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test(start_paused = true)]
async fn renewals_failing_past_the_deadline_lose_leadership_before_expiry() {
    let server = fake::new();
    let client = fake::client(&server);
    let a = elector(&client, "a");
    a.acquire().await.unwrap();
    let acquired = Instant::now();
    server.lock().unwrap().mode = fake::Mode::Fail;
    a.lost().await;
    let after = acquired.elapsed();
    // Renewals are retried until two thirds of the lease duration, and leadership
    // ends before the lease could expire for a standby.
    assert!(
        after >= Duration::from_secs(10),
        "gave up too early: {after:?}"
    );
    assert!(
        after < Duration::from_secs(15),
        "led past the lease's expiry: {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_recovers_in_time_keeps_leadership() {
    let server = fake::new();
    let client = fake::client(&server);
    let a = elector(&client, "a");
    a.acquire().await.unwrap();
    server.lock().unwrap().mode = fake::Mode::Fail;
    tokio::time::sleep(Duration::from_secs(8)).await;
    server.lock().unwrap().mode = fake::Mode::Serve;
    assert!(
        tokio::time::timeout(Duration::from_secs(60), a.lost())
            .await
            .is_err(),
        "leadership kept"
    );
    assert_eq!(holder(&server).as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn another_holder_in_the_lease_ends_leadership() {
    let server = fake::new();
    let client = fake::client(&server);
    let a = elector(&client, "a");
    a.acquire().await.unwrap();
    {
        let mut s = server.lock().unwrap();
        let mut lease = s.lease.clone().unwrap();
        lease.spec = Some(claimed(
            lease.spec.as_ref(),
            "intruder",
            15,
            Timestamp::now(),
        ));
        s.version += 1;
        lease.metadata.resource_version = Some(s.version.to_string());
        s.lease = Some(lease);
    }
    let started = Instant::now();
    a.lost().await;
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "noticed at the next renewal: {:?}",
        started.elapsed()
    );
    // Losing does not hand back a Lease that is no longer ours.
    a.release().await;
    assert_eq!(holder(&server).as_deref(), Some("intruder"));
}

#[tokio::test(start_paused = true)]
async fn acquire_retries_transient_errors_and_reports_permanent_ones() {
    let server = fake::new();
    let client = fake::client(&server);
    server.lock().unwrap().mode = fake::Mode::Fail;
    let a = elector(&client, "a");
    assert!(
        tokio::time::timeout(Duration::from_secs(30), a.acquire())
            .await
            .is_err(),
        "keeps retrying while the API fails"
    );
    server.lock().unwrap().mode = fake::Mode::Serve;
    a.acquire().await.unwrap();

    server.lock().unwrap().mode = fake::Mode::Forbid;
    let b = elector(&client, "b");
    let error = b.acquire().await.unwrap_err().to_string();
    assert!(error.contains("Lease ops/tracing-operator"), "{error}");
    assert!(error.contains("Forbidden"), "{error}");
}
