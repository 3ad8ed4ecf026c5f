//! `crmsync-sandbox`: emulated CRMs over HTTP, for tests, benchmarks and demos.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use crmsync::sandbox::hubspot::{Sandbox, SandboxConfig};
use crmsync::sandbox::{Crm, parse_crm_list};

/// Serves emulated CRMs plus a control API under /_sandbox. HubSpot: CRM v3
/// contacts and leads, properties, OAuth, rate limits, signed webhooks.
///
/// Example: crmsync-sandbox --crm hubspot --seed-contacts 5000 --latency-ms 200 --webhook-target http://127.0.0.1:8081/webhooks/hubspot
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Address to serve on (the first CRM of --crm; each further CRM takes
    /// the next port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The CRMs to emulate, comma-separated. Known: hubspot.
    #[arg(long, default_value = "hubspot", value_parser = parse_crm_list)]
    crm: ::std::vec::Vec<Crm>,
    #[command(flatten)]
    hubspot: SandboxConfig,
}

/// `--listen` for the `index`-th CRM of the list (port 0 stays "any free port").
fn address_of(listen: SocketAddr, index: usize) -> anyhow::Result<SocketAddr> {
    if listen.port() == 0 {
        return Ok(listen);
    }
    let port = u16::try_from(usize::from(listen.port()) + index)
        .context("--listen's port leaves no room for every CRM of --crm")?;
    Ok(SocketAddr::new(listen.ip(), port))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let mut servers = tokio::task::JoinSet::new();
    for (index, crm) in cli.crm.iter().enumerate() {
        let listen = address_of(cli.listen, index)?;
        match crm {
            Crm::Hubspot => {
                let portal = cli.hubspot.portal_id;
                let sandbox = Sandbox::new(cli.hubspot.clone())
                    .map_err(anyhow::Error::msg)
                    .context("invalid sandbox settings")?;
                let (addr, server) = sandbox
                    .spawn(listen)
                    .await
                    .with_context(|| format!("failed to listen on {listen}"))?;
                println!(
                    "crmsync-sandbox: HubSpot emulator on http://{addr} (portal {portal}); control API at http://{addr}/_sandbox"
                );
                servers.spawn(server);
            }
        }
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = servers.join_next() => {}
    }
    Ok(())
}
