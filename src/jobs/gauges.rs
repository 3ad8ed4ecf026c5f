//! Fleet-wide gauges the scheduler refreshes (every 15 s): jobs waiting per
//! kind, conflicts waiting for a decision, and the sync lag — what an
//! operator alerts on, which no single job can count.

use super::{Deps, JobError, JobKind};
use crate::domain::ConnectionStatus;
use chrono::Utc;

/// One refresh's readings (also returned, for tests and logs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetGauges {
    /// Jobs waiting to run, per kind.
    pub queue_depth: Vec<(&'static str, u64)>,
    /// Conflicts open across tenants.
    pub conflicts_open: i64,
    /// Seconds behind the CRM of the active connection furthest behind
    /// (now minus its oldest delta cursor); 0 without any.
    pub max_sync_lag_seconds: i64,
}

/// Reads the gauges and publishes them as `crmsync_queue_depth{job}`,
/// `crmsync_conflicts_open` and `crmsync_sync_lag_seconds`.
pub async fn refresh(deps: &Deps) -> Result<FleetGauges, JobError> {
    let mut gauges = FleetGauges::default();
    for kind in JobKind::ALL {
        let depth = deps.queue.depth(*kind).await?;
        metrics::gauge!("crmsync_queue_depth", "job" => kind.stem()).set(depth as f64);
        gauges.queue_depth.push((kind.stem(), depth));
    }
    let now = Utc::now();
    for tenant in deps.store.connected_tenants().await? {
        gauges.conflicts_open += deps.store.count_open_conflicts(tenant).await?;
        for connection in deps.store.list_connections(tenant).await? {
            if connection.status != ConnectionStatus::Active {
                continue;
            }
            let oldest = deps
                .store
                .cursors(tenant, connection.id)
                .await?
                .into_iter()
                .map(|(_, c)| c.modified_at)
                .min();
            if let Some(oldest) = oldest {
                gauges.max_sync_lag_seconds = gauges
                    .max_sync_lag_seconds
                    .max((now - oldest).num_seconds());
            }
        }
    }
    metrics::gauge!("crmsync_conflicts_open").set(gauges.conflicts_open as f64);
    metrics::gauge!("crmsync_sync_lag_seconds").set(gauges.max_sync_lag_seconds as f64);
    Ok(gauges)
}
