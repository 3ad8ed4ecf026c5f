//! `crmsync-worker`: runs the job kinds named on its command line.

use clap::Parser;
use crmsync::jobs::JobKind;
use crmsync::queue::WorkerSpec;
use std::process::ExitCode;

/// Pulls jobs from the queue and runs them, each kind with its own concurrency.
///
/// Job kinds: full_sync, delta_sync, process_webhook, push_changes, and the
/// periodic ones crmsync-scheduler enqueues: detect_conflicts, health_check
/// (per connection), retry_failed, cleanup_logs (fleet-wide).
///
/// Example: crmsync-worker --jobs full_sync,delta_sync --concurrency delta_sync=4
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Job kinds to run, by stem (full_sync, delta_sync, process_webhook,
    /// push_changes, detect_conflicts, retry_failed, cleanup_logs,
    /// health_check); default: all.
    #[arg(long, value_delimiter = ',')]
    jobs: Vec<String>,
    /// Per-kind concurrency as STEM=N (repeat or comma-separate); default 4
    /// for full_sync (its pages mostly wait on the CRM, and a run's
    /// partitions page side by side), 1 for the rest.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<String>,
}

fn specs(cli: &Cli) -> Result<Vec<WorkerSpec>, String> {
    let kinds: Vec<JobKind> = if cli.jobs.is_empty() {
        JobKind::ALL.to_vec()
    } else {
        cli.jobs
            .iter()
            .map(|s| JobKind::from_stem(s.trim()))
            .collect::<Result<_, _>>()?
    };
    let mut specs: Vec<WorkerSpec> = kinds
        .into_iter()
        .map(|kind| WorkerSpec {
            kind,
            concurrency: kind.default_concurrency(),
        })
        .collect();
    for item in &cli.concurrency {
        let (stem, n) = item
            .split_once('=')
            .ok_or_else(|| format!("--concurrency {item:?}: expected STEM=N"))?;
        let kind = JobKind::from_stem(stem.trim())?;
        let n: usize = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--concurrency {item:?}: N must be a positive number"))?;
        let spec = specs
            .iter_mut()
            .find(|s| s.kind == kind)
            .ok_or_else(|| format!("--concurrency {stem}: not in --jobs"))?;
        spec.concurrency = n;
    }
    Ok(specs)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let specs = match specs(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match crmsync::cli::serve_workers(&specs).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
