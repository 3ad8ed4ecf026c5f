//! `HealthCheck`: is each active connection's token accepted and its CRM
//! reachable? One budgeted call per connection (HubSpot's account details,
//! which must name the connection's portal), recorded as history. An expired
//! OAuth token is refreshed on the way (single-flight); a refused one marks
//! the connection `needs_reauth` with the reason, as any job would.

use super::{Deps, JobError, Session};
use crate::domain::ConnectionStatus;
use crate::store::{ConnectionRow, HealthCheck};
use chrono::Utc;

/// Checks one connection and records the outcome (paused or broken
/// connections are not checked: nothing runs for them).
pub async fn check(
    deps: &Deps,
    connection: ConnectionRow,
) -> Result<Option<HealthCheck>, JobError> {
    if connection.status != ConnectionStatus::Active {
        return Ok(None);
    }
    let (tenant, id) = (connection.tenant, connection.id);
    let started = std::time::Instant::now();
    let outcome = async {
        let mut session = Session::open(deps, connection).await?;
        let account = session.account().to_string();
        let found = session.identify(deps).await?;
        if found == account {
            Ok(())
        } else {
            Err(JobError::Permanent(format!(
                "the token belongs to account {found}, not {account}"
            )))
        }
    }
    .await;
    let result = HealthCheck {
        checked_at: Utc::now(),
        ok: outcome.is_ok(),
        latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        error: outcome.err().map(|e| e.to_string()),
    };
    deps.store.record_health(tenant, id, &result).await?;
    metrics::counter!("crmsync_health_checks_total", "outcome" => if result.ok { "ok" } else { "failed" })
        .increment(1);
    Ok(Some(result))
}

/// Checks every connection of the fleet, one after another; returns how
/// many were checked.
pub async fn check_all(deps: &Deps) -> Result<usize, JobError> {
    let mut checked = 0;
    for tenant in deps.store.connected_tenants().await? {
        for connection in deps.store.list_connections(tenant).await? {
            if check(deps, connection).await?.is_some() {
                checked += 1;
            }
        }
    }
    Ok(checked)
}
