//! `crmsync-scheduler`: enqueues periodic jobs; safe to run several replicas.

use clap::Parser;
use std::process::ExitCode;

/// Enqueues a delta sync for every active connection at its interval, and the
/// periodic jobs once per period: detect_conflicts and health_check per
/// active connection, retry_failed and cleanup_logs fleet-wide (intervals:
/// sync.*_interval_secs). Any number of replicas may run: each due tick and
/// each period is enqueued once; crmsync-worker runs the jobs.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = Cli::parse();
    match crmsync::cli::serve_scheduler().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
