//! `crmsync-api`: the platform API (leads and contacts, bearer token per tenant).

use clap::Parser;
use std::process::ExitCode;

/// Serves /v1/leads and /v1/contacts (the unified, deduplicated view of
/// platform- and CRM-originated records) and /openapi.json. Writes are
/// pushed to the tenant's connected CRMs.
///
/// Example: crmsync-api --listen 0.0.0.0:8080, then
///   curl -H "authorization: Bearer $TOKEN" localhost:8080/v1/leads
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// host:port to listen on (default 127.0.0.1:8080; also CRMSYNC__API__LISTEN).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match crmsync::cli::serve_api(cli.listen).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
