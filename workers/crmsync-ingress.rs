//! `crmsync-ingress`: takes CRM webhooks, verifies and enqueues them.

use clap::Parser;
use std::process::ExitCode;

/// Verifies HubSpot's webhooks (X-HubSpot-Signature-v3 with the app's client
/// secret), drops duplicates, routes events to connections by portalId and
/// enqueues them; answers 204 within milliseconds. Needs Redis in production.
///
/// Example: CRMSYNC__HUBSPOT__CLIENT_SECRET=… crmsync-ingress --listen 0.0.0.0:8081
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// host:port to listen on (default 127.0.0.1:8081; also CRMSYNC__INGRESS__LISTEN).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match crmsync::cli::serve_ingress(cli.listen).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
