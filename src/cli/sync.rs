//! `crmsync sync CONNECTION [--full] [--detach]`: enqueue a sync and follow it
//! until it ends, saying so when no worker picks it up.

use super::find_connection;
use crate::app;
use crate::config::Settings;
use crate::domain::{ConnectionId, RunId, RunKind, RunStatus, TenantId};
use crate::jobs::{DeltaSyncJob, Deps};
use crate::store::RunRow;
use chrono::Utc;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Arguments of `crmsync sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The connection id (see `crmsync status`).
    connection: String,
    /// Re-read every record (one page per job) instead of changes since the cursor.
    #[arg(long)]
    full: bool,
    /// Enqueue and return at once instead of following progress.
    #[arg(long)]
    detach: bool,
}

/// Waiting this long with no progress means no worker runs the job kind.
const NO_WORKER_HINT_AFTER: Duration = Duration::from_secs(10);

pub(super) async fn run(settings: &Settings, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let store = app::open_store(settings, false).await?;
    let (tenant, connection) = find_connection(&store, &args.connection).await?;
    let deps = app::deps(settings, store).await?;
    let runs = if args.full {
        start_full_sync(&deps, tenant, connection).await?
    } else {
        let job = DeltaSyncJob {
            tenant,
            connection,
            object: None,
            trigger: format!("cli-{}", uuid::Uuid::now_v7()),
            attempt: 0,
            resume: None,
            redrives: 0,
        };
        if deps.store.cursors(tenant, connection).await?.is_empty() {
            eprintln!(
                "connection {connection} has had no full sync yet: run `crmsync sync {connection} --full` first"
            );
            return Ok(ExitCode::FAILURE);
        }
        let pushed_at = Utc::now();
        deps.queue.push_delta_sync(&job).await?;
        if args.detach {
            say!("delta sync of {connection} enqueued");
            return Ok(ExitCode::SUCCESS);
        }
        return follow_delta(&deps, tenant, connection, pushed_at).await;
    };
    if args.detach {
        for run in &runs {
            say!("full sync {} of {} enqueued", run.id, run.object_name());
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(
        &deps,
        tenant,
        runs.iter().map(|r| r.id).collect(),
        "full_sync",
    )
    .await
}

/// Starts a full sync of every synced object of a connection (or joins the
/// one already running) and enqueues its first page.
pub async fn start_full_sync(
    deps: &Deps,
    tenant: TenantId,
    connection: ConnectionId,
) -> anyhow::Result<Vec<RunRow>> {
    Ok(crate::jobs::full_sync::start(&deps.store, &deps.queue, tenant, connection).await?)
}

struct Progress {
    tty: bool,
    last_print: Instant,
    hinted: bool,
    started: Instant,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            last_print: Instant::now(),
            hinted: false,
            started: Instant::now(),
        }
    }

    fn show(&mut self, line: &str, job: &str, idle: bool) {
        if idle && !self.hinted && self.started.elapsed() >= NO_WORKER_HINT_AFTER {
            self.hinted = true;
            eprintln!(
                "{}no worker has picked this up yet: is `crmsync-worker --jobs {job}` (or `crmsync dev`) running against this store and queue?",
                if self.tty { "\n" } else { "" }
            );
        }
        if self.tty {
            say_inline!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if self.last_print.elapsed() >= Duration::from_secs(5) {
            say!("{line}");
            self.last_print = Instant::now();
        }
    }

    fn done(&self, line: &str) {
        if self.tty {
            say!("\r\x1b[2K{line}");
        } else {
            say!("{line}");
        }
    }
}

fn describe(run: &RunRow) -> String {
    format!(
        "{} {} {}: page {} · read {} (+{} created, {} updated, {} unchanged, {} failed)",
        run.kind,
        run.object_name(),
        run.status,
        run.pages_done,
        run.processed,
        run.created,
        run.updated,
        run.unchanged,
        run.failed
    )
}

async fn follow(
    deps: &Deps,
    tenant: TenantId,
    runs: Vec<RunId>,
    job: &str,
) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::new();
    loop {
        let mut rows = Vec::new();
        for id in &runs {
            rows.push(deps.store.run(tenant, *id).await?);
        }
        let line = rows.iter().map(describe).collect::<Vec<_>>().join(" | ");
        if rows.iter().all(|r| r.status != RunStatus::Running) {
            progress.done(&line);
            for r in rows.iter().filter(|r| r.status == RunStatus::Failed) {
                eprintln!(
                    "{} of {} failed: {}",
                    r.kind,
                    r.object_name(),
                    r.error.as_deref().unwrap_or("unknown error")
                );
            }
            let ok = rows.iter().all(|r| r.status == RunStatus::Succeeded);
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        let idle = rows.iter().all(|r| r.processed == 0 && r.pages_done == 0);
        progress.show(&line, job, idle);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn follow_delta(
    deps: &Deps,
    tenant: TenantId,
    connection: ConnectionId,
    pushed_at: chrono::DateTime<Utc>,
) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::new();
    loop {
        let latest = deps.store.latest_run(tenant, connection).await?;
        match latest.filter(|r| r.kind == RunKind::DeltaSync && r.started_at >= pushed_at) {
            Some(run) if run.status != RunStatus::Running => {
                progress.done(&describe(&run));
                if let Some(e) = &run.error {
                    eprintln!("delta sync failed: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                return Ok(ExitCode::SUCCESS);
            }
            Some(run) => progress.show(&describe(&run), "delta_sync", false),
            None => progress.show("delta sync queued…", "delta_sync", true),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
