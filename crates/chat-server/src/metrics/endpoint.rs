//! The `/metrics` endpoint: plain HTTP/1.1 on the `--metrics-addr` port, unauthenticated
//! (keep the port inside the cluster), serving the Prometheus text format.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often histogram samples are folded in between scrapes, so memory stays bounded
/// when nothing scrapes.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, stop: CancellationToken) {
    let scrape_handle = handle.clone();
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = scrape_handle.clone();
            async move { scrape(&handle) }
        }),
    );
    let upkeep = tokio::spawn(upkeep(handle, stop.clone()));
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(%error, "the metrics endpoint failed");
    }
    upkeep.abort();
}

/// The scrape's answer: the recorded metrics and the process metrics, as text.
fn scrape(handle: &PrometheusHandle) -> ([(http::HeaderName, &'static str); 1], String) {
    handle.run_upkeep();
    let mut text = handle.render();
    super::process::render_into(&mut text);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn upkeep(handle: PrometheusHandle, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
        }
    }
}

/// Binds the metrics port.
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}
