use super::*;
use k8s_openapi::jiff::SignedDuration;

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

fn lease(spec: LeaseSpec, resource_version: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            resource_version: Some(resource_version.into()),
            ..Default::default()
        },
        spec: Some(spec),
    }
}

const DEFAULT: Duration = Duration::from_secs(15);

/// A standby's polls of a Lease: each `(seconds after start, lease)` is decided
/// with what the previous poll observed; returns the decisions.
fn polls(me: &str, timeline: &[(u64, &Lease)]) -> Vec<Decision> {
    let start = Instant::now();
    let mut observed = None;
    timeline
        .iter()
        .map(|(seconds, lease)| {
            let now = start + Duration::from_secs(*seconds);
            let (decision, seen) = decide(Some(lease), me, observed.as_ref(), now, DEFAULT);
            observed = seen;
            decision
        })
        .collect()
}

fn is_claim(d: &Decision) -> bool {
    *d == Decision::Claim
}

#[test]
fn a_free_lease_is_claimed() {
    let now = Instant::now();
    assert_eq!(decide(None, "a", None, now, DEFAULT).0, Decision::Claim);
    let empty = Lease::default();
    assert_eq!(
        decide(Some(&empty), "a", None, now, DEFAULT).0,
        Decision::Claim
    );
    let released = lease(
        LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("b", 0, 15)
        },
        "7",
    );
    assert_eq!(
        decide(Some(&released), "a", None, now, DEFAULT).0,
        Decision::Claim
    );
}

#[test]
fn the_holder_renews_its_own_lease_even_late() {
    let mine = lease(held_by("a", -1000, 15), "7");
    let now = Instant::now();
    assert_eq!(
        decide(Some(&mine), "a", None, now, DEFAULT).0,
        Decision::Renew
    );
}

#[test]
fn another_holder_expires_a_lease_duration_after_its_record_last_changed() {
    let first = lease(held_by("b", 0, 15), "1");
    let renewed = lease(held_by("b", 5, 15), "2");
    let decisions = polls(
        "a",
        &[
            (0, &first),
            (10, &first),
            // Renewed: the clock starts again from this poll.
            (12, &renewed),
            (26, &renewed),
            (27, &renewed),
        ],
    );
    assert!(!decisions[..4].iter().any(is_claim), "{decisions:?}");
    assert_eq!(decisions[4], Decision::Claim, "{decisions:?}");
}

#[test]
fn expiry_is_reported_on_the_standbys_own_clock() {
    let start = Instant::now();
    let held = lease(held_by("b", 0, 15), "1");
    let (first, seen) = decide(Some(&held), "a", None, start, DEFAULT);
    assert_eq!(
        first,
        Decision::Wait {
            holder: "b".into(),
            expires: start + Duration::from_secs(15)
        }
    );
    let later = start + Duration::from_secs(9);
    let (second, _) = decide(Some(&held), "a", seen.as_ref(), later, DEFAULT);
    assert_eq!(
        second,
        Decision::Wait {
            holder: "b".into(),
            expires: start + Duration::from_secs(15)
        },
        "an unchanged record keeps the expiry of its first sighting"
    );
}

#[test]
fn a_holder_clock_far_in_the_past_does_not_cause_an_early_takeover() {
    // The holder's clock is a year behind ours, and it renews every 5s.
    let year = 365 * 24 * 3600;
    let renewals: Vec<Lease> = (0..6)
        .map(|i| lease(held_by("b", -year + 5 * i, 15), &i.to_string()))
        .collect();
    let timeline: Vec<(u64, &Lease)> = renewals
        .iter()
        .enumerate()
        .map(|(i, l)| (5 * i as u64, l))
        .collect();
    let decisions = polls("a", &timeline);
    assert!(!decisions.iter().any(is_claim), "{decisions:?}");
    // Once it stops renewing, the takeover still waits a full lease duration.
    let last = &renewals[5];
    let decisions = polls("a", &[(0, last), (14, last), (15, last)]);
    assert!(!decisions[..2].iter().any(is_claim), "{decisions:?}");
    assert!(is_claim(&decisions[2]), "{decisions:?}");
}

#[test]
fn a_holder_clock_far_in_the_future_does_not_hold_the_lease_forever() {
    // The holder's clock is a year ahead; it died after this renewal.
    let year = 365 * 24 * 3600;
    let dead = lease(held_by("b", year, 15), "9");
    let decisions = polls("a", &[(0, &dead), (14, &dead), (15, &dead)]);
    assert!(!decisions[..2].iter().any(is_claim), "{decisions:?}");
    assert!(is_claim(&decisions[2]), "{decisions:?}");
}

#[test]
fn times_in_the_record_are_not_read() {
    // No renewTime or acquireTime at all: still a full lease duration of no change.
    let undated = lease(
        LeaseSpec {
            holder_identity: Some("b".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        },
        "4",
    );
    let decisions = polls("a", &[(0, &undated), (14, &undated), (15, &undated)]);
    assert!(!decisions[..2].iter().any(is_claim), "{decisions:?}");
    assert!(is_claim(&decisions[2]), "{decisions:?}");
}

#[test]
fn any_write_to_the_record_counts_as_a_change() {
    let spec = held_by("b", 0, 15);
    let before = lease(spec.clone(), "1");
    // Same spec (a renewal within the same microsecond, or a clock that
    // stands still), new resourceVersion.
    let rewritten = lease(spec, "2");
    let decisions = polls(
        "a",
        &[
            (0, &before),
            (10, &rewritten),
            (20, &rewritten),
            (25, &rewritten),
        ],
    );
    assert!(!decisions[..3].iter().any(is_claim), "{decisions:?}");
    assert!(is_claim(&decisions[3]), "{decisions:?}");
}

#[test]
fn the_lease_own_duration_wins_over_the_candidates() {
    let long = lease(held_by("b", 0, 60), "1");
    let decisions = polls("a", &[(0, &long), (59, &long), (60, &long)]);
    assert!(!decisions[..2].iter().any(is_claim), "{decisions:?}");
    assert!(is_claim(&decisions[2]), "{decisions:?}");
    let no_duration = lease(
        LeaseSpec {
            lease_duration_seconds: None,
            ..held_by("b", 0, 60)
        },
        "1",
    );
    let decisions = polls(
        "a",
        &[(0, &no_duration), (14, &no_duration), (15, &no_duration)],
    );
    assert!(!decisions[..2].iter().any(is_claim), "{decisions:?}");
    assert!(is_claim(&decisions[2]), "{decisions:?}");
}

#[test]
fn the_renew_deadline_leaves_a_third_of_the_lease_to_spare() {
    assert_eq!(
        renew_deadline(Duration::from_secs(15)),
        Duration::from_secs(10)
    );
    for seconds in 3..=120 {
        let lease = Duration::from_secs(seconds);
        let deadline = renew_deadline(lease);
        assert!(deadline + lease / 3 <= lease, "{lease:?}: {deadline:?}");
        assert!(renew_period(lease) < deadline, "{lease:?}");
        assert!(retry_period(lease) < lease - deadline, "{lease:?}");
    }
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
    let freed = lease(spec, "8");
    assert_eq!(
        decide(Some(&freed), "b", None, Instant::now(), DEFAULT).0,
        Decision::Claim
    );
}

#[test]
fn an_unfenced_process_may_always_write() {
    assert!(Fence::unfenced().check().is_ok());
}

/// An in-memory Lease API, for the paths a real API server cannot be made to
/// take on demand (failing or hanging renewals). Updates check
/// `resourceVersion` as the real one does. Each client has a mode of its own on
/// top of the server's, so one candidate can be cut off while another is not.
mod fake {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use k8s_openapi::api::coordination::v1::Lease;
    use tokio::time::Instant;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        Serve,
        Fail,
        Forbid,
        /// Requests never answer.
        Hang,
        /// Writes are stored, then never answered (reads are served).
        CommitThenHang,
        /// Writes are stored at once and answered [`LATE`] later.
        Late,
    }

    /// How late writes are answered in [`Mode::Late`].
    pub const LATE: std::time::Duration = std::time::Duration::from_secs(3);

    #[derive(Debug)]
    pub struct Server {
        pub lease: Option<Lease>,
        pub version: u64,
        pub mode: Mode,
        /// When each write was stored, and the holder it wrote.
        pub writes: Vec<(Instant, Option<String>)>,
    }

    pub type Shared = Arc<Mutex<Server>>;
    pub type ClientMode = Arc<Mutex<Mode>>;

    pub fn new() -> Shared {
        Arc::new(Mutex::new(Server {
            lease: None,
            version: 0,
            mode: Mode::Serve,
            writes: Vec::new(),
        }))
    }

    #[derive(Clone)]
    struct Conn {
        server: Shared,
        mode: ClientMode,
    }

    impl Conn {
        fn mode(&self) -> Mode {
            match *self.mode.lock().unwrap() {
                Mode::Serve => self.server.lock().unwrap().mode,
                own => own,
            }
        }
    }

    pub fn client(server: &Shared) -> kube::Client {
        client_with_mode(server).0
    }

    /// A client and the mode that applies to its requests only.
    pub fn client_with_mode(server: &Shared) -> (kube::Client, ClientMode) {
        let mode = Arc::new(Mutex::new(Mode::Serve));
        let conn = Conn {
            server: server.clone(),
            mode: mode.clone(),
        };
        let router = Router::new()
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                post(create),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(read).put(replace),
            )
            .with_state(conn);
        (kube::Client::new(router, "default"), mode)
    }

    fn status(code: StatusCode, reason: &str) -> Response {
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "message": reason, "code": code.as_u16(),
        });
        (code, body.to_string()).into_response()
    }

    /// The answer a request gets before it reaches the Lease, if any; hangs in `Hang`.
    async fn refused(mode: Mode) -> Option<Response> {
        match mode {
            Mode::Serve | Mode::CommitThenHang | Mode::Late => None,
            Mode::Fail => Some(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
            )),
            Mode::Forbid => Some(status(StatusCode::FORBIDDEN, "Forbidden")),
            Mode::Hang => std::future::pending().await,
        }
    }

    /// After a write was stored: its answer, late in `Late`, never in `CommitThenHang`.
    async fn answer(mode: Mode, response: Response) -> Response {
        match mode {
            Mode::CommitThenHang => std::future::pending::<()>().await,
            Mode::Late => tokio::time::sleep(LATE).await,
            _ => {}
        }
        response
    }

    fn store(server: &mut Server, mut lease: Lease) -> String {
        server.version += 1;
        lease.metadata.resource_version = Some(server.version.to_string());
        let body = serde_json::to_string(&lease).unwrap_or_default();
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        server.writes.push((Instant::now(), holder));
        server.lease = Some(lease);
        body
    }

    async fn read(State(conn): State<Conn>) -> Response {
        if let Some(r) = refused(conn.mode()).await {
            return r;
        }
        let server = conn.server.lock().unwrap();
        match &server.lease {
            Some(lease) => serde_json::to_string(lease)
                .unwrap_or_default()
                .into_response(),
            None => status(StatusCode::NOT_FOUND, "NotFound"),
        }
    }

    async fn create(State(conn): State<Conn>, body: Bytes) -> Response {
        let mode = conn.mode();
        if let Some(r) = refused(mode).await {
            return r;
        }
        let response = {
            let mut server = conn.server.lock().unwrap();
            if server.lease.is_some() {
                return status(StatusCode::CONFLICT, "AlreadyExists");
            }
            let lease: Lease = serde_json::from_slice(&body).unwrap();
            (StatusCode::CREATED, store(&mut server, lease)).into_response()
        };
        answer(mode, response).await
    }

    async fn replace(State(conn): State<Conn>, body: Bytes) -> Response {
        let mode = conn.mode();
        if let Some(r) = refused(mode).await {
            return r;
        }
        let response = {
            let mut server = conn.server.lock().unwrap();
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
        };
        answer(mode, response).await
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
    assert!(a.fence().check().is_ok());
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
    let error = a.fence().check().unwrap_err().to_string();
    assert!(error.contains("leadership was lost"), "{error}");
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

/// Lease duration and renew deadline of [`elector`].
const LEASE: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(10);

/// `a` leads (its requests served as `before`) while `b` stands by; 24s in
/// (between two renewals), `a`'s own requests start to behave as `mode`.
/// Checks that `a`'s fence holds up to the renew deadline after the start of
/// its last answered renewal and fails from then on, and returns how long
/// after that start `b` held the Lease.
async fn cut_off_leader(before: fake::Mode, mode: fake::Mode) -> Duration {
    let server = fake::new();
    let (client_a, mode_a) = fake::client_with_mode(&server);
    *mode_a.lock().unwrap() = before;
    let client_b = fake::client(&server);
    let a = elector(&client_a, "a");
    assert!(a.fence().check().is_err(), "no writes before leading");
    a.acquire().await.unwrap();
    let fence = a.fence();
    let standby = tokio::spawn(async move {
        let b = elector(&client_b, "b");
        b.acquire().await.unwrap();
        (Instant::now(), b)
    });
    for _ in 0..240 {
        assert!(fence.check().is_ok(), "renewals keep a leading");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // In paused time a renewal's read and write take no time (only a `Late`
    // answer does): the instant the server stored a's last renewal is the
    // instant that renewal started.
    let last_renewal = {
        let server = server.lock().unwrap();
        let (at, holder) = server.writes.last().cloned().expect("a renewed");
        assert_eq!(holder.as_deref(), Some("a"));
        at
    };
    assert!(
        Instant::now() - last_renewal < Duration::from_secs(5),
        "a renews every 5s"
    );
    *mode_a.lock().unwrap() = mode;

    tokio::time::sleep_until(last_renewal + DEADLINE - Duration::from_millis(1)).await;
    assert!(
        fence.check().is_ok(),
        "{mode:?}: a may write until the renew deadline"
    );
    tokio::time::sleep_until(last_renewal + DEADLINE).await;
    let error = fence.check().unwrap_err().to_string();
    assert!(
        error.contains("not the leader on Lease ops/tracing-operator"),
        "{error}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(10), a.lost())
            .await
            .is_ok(),
        "{mode:?}: the elector reports the loss at the deadline"
    );

    let (claimed, b) = tokio::time::timeout(LEASE * 2, standby)
        .await
        .expect("b takes over")
        .expect("standby task");
    assert!(b.fence().check().is_ok(), "b leads");
    assert!(
        fence.check().is_err(),
        "{mode:?}: a stays fenced once b leads"
    );
    assert_eq!(holder(&server).as_deref(), Some("b"));
    claimed - last_renewal
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_fail_is_fenced_before_a_standby_can_claim() {
    let claimed = cut_off_leader(fake::Mode::Serve, fake::Mode::Fail).await;
    // Fenced at the renew deadline (10s); the standby waits out a full lease
    // duration from its own sighting of that renewal.
    assert!(claimed >= LEASE, "b claimed {claimed:?} after the renewal");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_hangs_does_not_extend_leadership() {
    let claimed = cut_off_leader(fake::Mode::Serve, fake::Mode::Hang).await;
    assert!(claimed >= LEASE, "b claimed {claimed:?} after the renewal");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_stored_but_never_answered_does_not_extend_leadership() {
    // The standby sees that renewal change the record and waits from there;
    // the leader, never told it succeeded, is fenced from the renewal before.
    let claimed = cut_off_leader(fake::Mode::Serve, fake::Mode::CommitThenHang).await;
    assert!(
        claimed >= LEASE + renew_period(LEASE),
        "b claimed {claimed:?} after the last answered renewal"
    );
}

#[tokio::test(start_paused = true)]
async fn the_renew_deadline_runs_from_when_a_renewal_started_not_when_it_was_answered() {
    // Every renewal is answered 3s after it was stored; the last one, started
    // at 20s, answered at 23s, fences a at 30s, not 33s.
    let claimed = cut_off_leader(fake::Mode::Late, fake::Mode::Fail).await;
    assert!(claimed >= LEASE, "b claimed {claimed:?} after the renewal");
}

#[tokio::test(start_paused = true)]
async fn the_fence_closes_when_the_lease_is_released() {
    let server = fake::new();
    let client = fake::client(&server);
    let a = elector(&client, "a");
    a.acquire().await.unwrap();
    assert!(a.fence().check().is_ok());
    let fence = a.fence();
    a.release().await;
    let error = fence.check().unwrap_err().to_string();
    assert!(error.contains("not held"), "{error}");
}

/// Writes the Lease as `holder` would, with its renewTime `skew` off our clock.
fn write_as(server: &fake::Shared, holder: &str, skew: SignedDuration) {
    let mut s = server.lock().unwrap();
    let previous = s.lease.as_ref().and_then(|l| l.spec.clone());
    let spec = claimed(previous.as_ref(), holder, 15, Timestamp::now() + skew);
    s.version += 1;
    s.lease = Some(Lease {
        metadata: ObjectMeta {
            name: Some("tracing-operator".into()),
            namespace: Some("ops".into()),
            resource_version: Some(s.version.to_string()),
            ..Default::default()
        },
        spec: Some(spec),
    });
}

#[tokio::test(start_paused = true)]
async fn a_live_holder_whose_clock_is_behind_keeps_the_lease() {
    let server = fake::new();
    let year = SignedDuration::from_hours(24 * 365);
    write_as(&server, "behind", -year);
    let renewing = tokio::spawn({
        let server = server.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                write_as(&server, "behind", -year);
            }
        }
    });
    let b = elector(&fake::client(&server), "b");
    assert!(
        tokio::time::timeout(Duration::from_secs(120), b.acquire())
            .await
            .is_err(),
        "no takeover while the holder renews"
    );
    assert_eq!(holder(&server).as_deref(), Some("behind"));

    renewing.abort();
    let stopped = Instant::now();
    b.acquire().await.unwrap();
    assert!(
        stopped.elapsed() >= LEASE - Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(holder(&server).as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn a_dead_holder_whose_clock_was_ahead_is_taken_over_after_a_lease_duration() {
    let server = fake::new();
    write_as(&server, "ahead", SignedDuration::from_hours(24 * 365));
    let b = elector(&fake::client(&server), "b");
    let started = Instant::now();
    b.acquire().await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= LEASE && took < LEASE + Duration::from_secs(1),
        "claimed {took:?} after first seeing the record"
    );
    assert_eq!(holder(&server).as_deref(), Some("b"));
}
