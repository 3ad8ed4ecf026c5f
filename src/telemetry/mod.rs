//! Logs (tracing, text or JSON), spans (OTLP, [`traces`]), Prometheus
//! metrics and the `/metrics` + `/health` endpoint every long-running
//! process serves. Metric names follow `crmsync_<what>_<unit>[_total]` with
//! bounded labels (never a connection id).

mod traces;

pub use traces::{TelemetryGuard, continue_trace, current_traceparent, init};

use crate::config::TelemetrySettings;
use crate::http_server::ServerLimits;
use crate::queue::Settled;
use crate::store::RunUpdate;
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs logs only (CLI commands): no span export.
pub fn init_logs(settings: &TelemetrySettings) {
    let settings = TelemetrySettings {
        otlp_endpoint: None,
        ..settings.clone()
    };
    drop(init(&settings, "crmsync"));
}

/// Installs the Prometheus recorder once and returns its handle.
pub fn metrics() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// What the metrics endpoint lets one client hold. Production binds it to
/// `0.0.0.0:9100`, so whoever reaches the pod reaches it: a scrape takes
/// milliseconds, so short read timeouts and a few connections suffice, and
/// a slow-drip client cannot hold it open.
pub const LIMITS: ServerLimits = ServerLimits {
    header_read_timeout: Duration::from_secs(10),
    body_read_timeout: Duration::from_secs(10),
    max_connections: 64,
};

/// Serves `GET /metrics` and `GET /health` on `listen` in the background
/// under [`LIMITS`]; returns the bound address (port 0 picks one).
pub async fn serve(listen: &str, process: &'static str) -> std::io::Result<SocketAddr> {
    serve_with(listen, process, LIMITS).await
}

/// [`serve`] under other limits (tests use short ones).
pub async fn serve_with(
    listen: &str,
    process: &'static str,
    limits: ServerLimits,
) -> std::io::Result<SocketAddr> {
    let handle = metrics().cloned();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.map(|h| h.render()).unwrap_or_default() }
            }),
        )
        .route(
            "/health",
            get(move || async move { format!("{{\"status\":\"ok\",\"process\":\"{process}\"}}") }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    crate::http_server::spawn(listener, app, limits);
    Ok(addr)
}

/// Counts one job attempt by kind and outcome, with its duration.
pub fn record_job(job: &'static str, settled: Settled, elapsed: Duration) {
    let outcome = match settled {
        Settled::Done => "done",
        Settled::Retry(_) => "retry",
        Settled::Defer(_) => "deferred",
        Settled::GiveUp => "failed",
    };
    metrics::counter!("crmsync_jobs_total", "job" => job, "outcome" => outcome).increment(1);
    metrics::histogram!("crmsync_job_duration_seconds", "job" => job).record(elapsed.as_secs_f64());
}

/// Counts our own writes recognised when they came back (never applied).
pub fn record_echoes(provider: crate::domain::ProviderKind, n: usize) {
    if n > 0 {
        metrics::counter!("crmsync_echo_skipped_total", "provider" => provider.as_str())
            .increment(n as u64);
    }
}

/// Counts the records one applied page touched (`None`: a duplicate page).
pub fn record_page(job: &'static str, counts: Option<RunUpdate>) {
    let Some(c) = counts else {
        metrics::counter!("crmsync_pages_total", "job" => job, "outcome" => "duplicate")
            .increment(1);
        return;
    };
    metrics::counter!("crmsync_pages_total", "job" => job, "outcome" => "applied").increment(1);
    for (outcome, n) in [
        ("created", c.created),
        ("updated", c.updated),
        ("unchanged", c.unchanged),
        ("failed", c.failed),
    ] {
        if n > 0 {
            metrics::counter!("crmsync_records_total", "job" => job, "outcome" => outcome)
                .increment(n.unsigned_abs());
        }
    }
}
