//! The HTTP endpoint of a process without a status page: `lazybarn worker
//! --http` serves the worker's and the vfs's metrics at `/metrics`, `/healthz`
//! (the process answers) for liveness probes, and `/readyz` (registered,
//! runner ready, not draining; 503 with the reason otherwise) for readiness
//! probes.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use lazybarn_worker::Health;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// Serves the endpoints until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    health: Arc<Health>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move { readiness(&health) }
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

/// 200 "ready", or 503 with why not.
fn readiness(health: &Health) -> (StatusCode, String) {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
