//! `crmsync status`: per connection its records, last run and counts, cursors
//! and lag — a table for people, `--json` for scripts (field names are a
//! contract: id, provider, status, records, parkedRecords, lastRun, cursors,
//! lagSeconds).

use crate::app;
use crate::config::Settings;
use crate::domain::{ConnectionId, ProviderKind, TenantId};
use crate::store::{RunRow, Store};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// One connection's state as `status --json` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionReport {
    /// Connection id.
    pub id: ConnectionId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// CRM.
    pub provider: ProviderKind,
    /// The CRM account (HubSpot portal id).
    pub external_account_id: String,
    /// `active`, `paused` or `needs_reauth`.
    pub status: String,
    /// Why it is not active.
    pub status_reason: Option<String>,
    /// Platform records linked to it.
    pub records: i64,
    /// Records parked (refused by the CRM or the platform) and not yet
    /// fixed or replayed: `GET /v1/dead-letters` lists them.
    pub parked_records: i64,
    /// The most recent sync run (`kind`, `object`, `status`, `startedAt`,
    /// `finishedAt`, `pagesDone`, `processed`, `created`, `updated`,
    /// `unchanged`, `failed`, `error`).
    pub last_run: Option<RunRow>,
    /// Delta cursor per CRM object.
    pub cursors: BTreeMap<String, CursorReport>,
    /// Now minus the oldest cursor time, in seconds.
    pub lag_seconds: Option<i64>,
}

/// A cursor as reported.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CursorReport {
    /// The CRM modified time the cursor stands at.
    pub modified_at: DateTime<Utc>,
    /// The CRM id at that time.
    pub crm_id: String,
}

/// Reports every connection.
pub async fn collect(store: &Store) -> anyhow::Result<Vec<ConnectionReport>> {
    let now = Utc::now();
    let mut reports = Vec::new();
    let mut parked: BTreeMap<(TenantId, ConnectionId), i64> = BTreeMap::new();
    for (tenant, id) in store.connection_directory().await? {
        if !parked.keys().any(|(t, _)| *t == tenant) {
            for (connection, n) in store.parked_counts(tenant).await? {
                parked.insert((tenant, connection), n);
            }
        }
        let connection = store.connection(tenant, id).await?;
        let cursors = store.cursors(tenant, id).await?;
        let lag_seconds = cursors
            .iter()
            .map(|(_, c)| c.modified_at)
            .min()
            .map(|oldest| (now - oldest).num_seconds());
        reports.push(ConnectionReport {
            id,
            tenant,
            provider: connection.provider,
            external_account_id: connection.external_account_id,
            status: connection.status.to_string(),
            status_reason: connection.status_reason,
            records: store.linked_records(tenant, id).await?,
            parked_records: parked.get(&(tenant, id)).copied().unwrap_or(0),
            last_run: store.latest_run(tenant, id).await?,
            cursors: cursors
                .into_iter()
                .map(|(o, c)| {
                    (
                        o.to_string(),
                        CursorReport {
                            modified_at: c.modified_at,
                            crm_id: c.crm_id.0,
                        },
                    )
                })
                .collect(),
            lag_seconds,
        });
    }
    Ok(reports)
}

/// One line per connection for people.
pub fn one_line(r: &ConnectionReport) -> String {
    let run = match &r.last_run {
        Some(run) => format!(
            "last {} {} {} (read {}, +{} ~{} ={} !{})",
            run.kind,
            run.object_name(),
            run.status,
            run.processed,
            run.created,
            run.updated,
            run.unchanged,
            run.failed
        ),
        None => "never synced".into(),
    };
    let lag = r
        .lag_seconds
        .map_or_else(|| "-".into(), |s| format!("{s}s"));
    let parked = if r.parked_records > 0 {
        format!("  parked {}", r.parked_records)
    } else {
        String::new()
    };
    format!(
        "{}  {} {}  {}  records {}{parked}  {}  lag {}",
        r.id, r.provider, r.external_account_id, r.status, r.records, run, lag
    )
}

pub(super) async fn run(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let store = app::open_store(settings, false).await?;
    let reports = collect(&store).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&reports)?);
    } else if reports.is_empty() {
        say!("no connections yet: `crmsync connect hubspot --private-app-token …` creates one");
    } else {
        for r in &reports {
            say!("{}", one_line(r));
            if let Some(reason) = &r.status_reason {
                say!("    {reason}");
            }
            if let Some(error) = r.last_run.as_ref().and_then(|run| run.error.as_ref()) {
                say!("    last error: {error}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
