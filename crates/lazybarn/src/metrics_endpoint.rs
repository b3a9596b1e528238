//! `/metrics` for a process without a status page: `lazybarn worker`
//! exports the worker's and the vfs's metrics here.

use std::future::Future;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// Serves `GET /metrics` (Prometheus text format) until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}
