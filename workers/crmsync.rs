//! `crmsync`: the operator CLI (`dev`, `migrate`, `tenant`, `connect`, `sync`, `status`).

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = crmsync::cli::Cli::parse();
    match crmsync::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
