//! `crmsync-sandbox`: emulated CRMs over HTTP, for tests, benchmarks and demos.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use crmsync::sandbox::hubspot::{Sandbox, SandboxConfig};

/// Serves an emulated HubSpot (CRM v3 contacts and leads, properties, OAuth,
/// rate limits, signed webhooks) plus a control API under /_sandbox.
///
/// Example: crmsync-sandbox --seed-contacts 5000 --webhook-target http://127.0.0.1:8081/webhooks/hubspot
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    #[command(flatten)]
    hubspot: SandboxConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let portal = cli.hubspot.portal_id;
    let sandbox = Sandbox::new(cli.hubspot)
        .map_err(anyhow::Error::msg)
        .context("invalid sandbox settings")?;
    let (addr, server) = sandbox
        .spawn(cli.listen)
        .await
        .with_context(|| format!("failed to listen on {}", cli.listen))?;
    println!(
        "crmsync-sandbox: HubSpot emulator on http://{addr} (portal {portal}); control API at http://{addr}/_sandbox"
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = server => {}
    }
    Ok(())
}
