//! The HTTP server for `/metrics`, `/healthz` and `/readyz`, and the shutdown
//! signal the whole process stops on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::metrics::{CONTENT_TYPE, Metrics};

/// A process-wide stop signal: triggered once, awaited by many.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything waiting on this signal to stop; idempotent.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Resolves once [`Shutdown::trigger`] was called (at once if it already was).
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// What `/readyz` answers: ready once the caches have synced (and, under leader
/// election, while standing by).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn set_not_ready(&self) {
        self.0.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The routes, apart from the listener (so tests can call them directly).
pub fn router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, readiness })
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.readiness.is_ready() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet").into_response()
    }
}

/// Serves until `shutdown` is triggered, then finishes open requests and returns.
///
/// If the address cannot be bound, this triggers `shutdown` too: an operator whose
/// probes cannot be answered would only be restarted by its kubelet later.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: Shutdown,
) -> Result<(), std::io::Error> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            error!(%addr, error = %e, "cannot listen for /metrics, /healthz and /readyz");
            shutdown.trigger();
            return Err(std::io::Error::new(
                e.kind(),
                format!("listening on {addr}: {e}"),
            ));
        }
    };
    info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz and /readyz");
    let stop = shutdown.clone();
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(async move { stop.wait().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    fn free_addr() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn probes_and_metrics_over_http_then_graceful_stop() {
        let addr = free_addr();
        let metrics = Arc::new(Metrics::default());
        metrics.api_write("patch", "Deployment");
        let readiness = Readiness::default();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(serve(
            addr,
            metrics.clone(),
            readiness.clone(),
            shutdown.clone(),
        ));
        // Wait until the listener is up.
        let mut health = String::new();
        for _ in 0..100 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                s.shutdown().await.ok();
                health = get(addr, "/healthz").await;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");

        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        readiness.set_ready();
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

        let scraped = get(addr, "/metrics").await;
        assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
        assert!(
            scraped
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{scraped}"
        );
        assert!(
            scraped
                .contains(r#"tracing_operator_api_writes_total{verb="patch",kind="Deployment"} 1"#),
            "{scraped}"
        );

        shutdown.trigger();
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "server stops cleanly on shutdown: {stopped:?}"
        );
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
    }

    #[tokio::test]
    async fn a_taken_address_fails_and_stops_the_process() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let result = serve(
            addr,
            Arc::new(Metrics::default()),
            Readiness::default(),
            shutdown.clone(),
        )
        .await;
        let err = result.unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(shutdown.is_triggered());
    }
}
