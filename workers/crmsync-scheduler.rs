//! `crmsync-scheduler`: enqueues periodic jobs; safe to run several replicas.

use clap::Parser;
use std::process::ExitCode;

/// Enqueues a delta sync for every active connection at its interval. Any
/// number of replicas may run: each due tick is enqueued once.
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
