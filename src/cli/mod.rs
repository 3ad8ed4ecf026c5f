//! The `crmsync` operator CLI. Every command reads the same layered settings
//! as the services; with no configuration at all it uses the embedded store
//! in the current directory, so `crmsync status` next to `crmsync dev` works.

#[macro_use]
mod output;

mod dev;
mod status;
mod sync;
mod webhooks;

pub use sync::start_full_sync;

use crate::app;
use crate::config::Settings;
use crate::domain::{ConnectionId, ProviderKind, TenantId};
use crate::providers::hubspot::HubspotClient;
use crate::store::{Credentials, NewConnection, Store};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;

/// crmsync — keep your platform's leads in sync with your customers' CRMs.
///
/// Start here: `crmsync dev` runs everything in one process on an embedded
/// SQLite store against an emulated HubSpot, with no Postgres or Redis.
///
/// Configuration: config/default.toml documents every key; set them as
/// CRMSYNC__SECTION__KEY environment variables (e.g. CRMSYNC__DATABASE__URL,
/// CRMSYNC__REDIS__URL, CRMSYNC__SECRETS__ENCRYPTION_KEY), or in
/// config/$CRMSYNC_ENV.toml.
#[derive(Debug, Parser)]
#[command(name = "crmsync", version, about, long_about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  crmsync dev                                   # the whole fleet, embedded, with a sandbox HubSpot
  crmsync migrate                               # create or upgrade the schema (as the table owner)
  crmsync tenant create acme --json             # a tenant and its API token
  crmsync connect hubspot --private-app-token pat-na1-… --tenant acme
  crmsync sync 0192…                            # a delta sync, followed until it ends
  crmsync sync 0192… --full --detach            # start a full sync and return
  crmsync status --json                         # per connection: records, last run, cursors, lag
  crmsync webhooks register --target-url https://sync.example.com/webhooks/hubspot
  crmsync secrets rotate                        # re-encrypt credentials under a new key

Processes: crmsync-worker runs jobs by kind (--jobs, default all): full_sync,
delta_sync, process_webhook, push_changes, detect_conflicts, retry_failed,
cleanup_logs, health_check. crmsync-scheduler enqueues delta syncs and the
periodic jobs (detect_conflicts, health_check per connection; retry_failed,
cleanup_logs fleet-wide) once per period.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: embedded SQLite store and queue, an
    /// in-process sandbox HubSpot with seeded data and a trickle of user edits,
    /// workers and scheduler; shows the first full sync, then a live summary.
    Dev(dev::DevArgs),
    /// Create or upgrade the database schema. On Postgres run it as the table
    /// owner (CRMSYNC__DATABASE__MIGRATION_URL, else CRMSYNC__DATABASE__URL).
    Migrate,
    /// Manage tenants (the platform's customers).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Connect a CRM account to a tenant; prints the connection id.
    Connect {
        #[command(subcommand)]
        provider: ConnectCommand,
    },
    /// Enqueue a sync of a connection and follow its progress until it ends.
    Sync(sync::SyncArgs),
    /// Show every connection: records, last sync run and counts, cursors, lag.
    Status {
        /// Print JSON (an array of connections) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage HubSpot webhooks.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Manage the key that encrypts CRM credentials at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Print a fresh random key (32 bytes, base64) for
    /// CRMSYNC__SECRETS__ENCRYPTION_KEY.
    NewKey,
    /// Re-encrypt every credential and webhook secret under the current key
    /// (CRMSYNC__SECRETS__ENCRYPTION_KEY), opening old ones with
    /// CRMSYNC__SECRETS__PREVIOUS_ENCRYPTION_KEYS; then re-publish the
    /// webhook routes. Safe to re-run and to run while the fleet works.
    /// Exits 1 if some value opens with no key of the ring.
    #[command(after_help = ROTATE_STEPS)]
    Rotate {
        /// Print the totals as JSON.
        #[arg(long)]
        json: bool,
    },
}

const ROTATE_STEPS: &str = "Rotating the key, with no process ever unable to decrypt:
  1. NEW=$(crmsync secrets new-key)
  2. everywhere: PREVIOUS_ENCRYPTION_KEYS=$NEW (old key still current); roll out
  3. everywhere: ENCRYPTION_KEY=$NEW, PREVIOUS_ENCRYPTION_KEYS=$OLD; roll out
  4. crmsync secrets rotate        (with the step-3 environment)
  5. everywhere: drop PREVIOUS_ENCRYPTION_KEYS; roll out
(the variables are CRMSYNC__SECRETS__ENCRYPTION_KEY and CRMSYNC__SECRETS__PREVIOUS_ENCRYPTION_KEYS)";

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// Point the public app's webhooks at ingress and subscribe to every
    /// event the sync needs (Webhooks v3 API; needs CRMSYNC__HUBSPOT__APP_ID
    /// and CRMSYNC__HUBSPOT__DEVELOPER_API_KEY). Safe to re-run. For
    /// private-app connections, prints what to set up in HubSpot's UI.
    Register(webhooks::RegisterArgs),
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints `tenant <id>` and `token <api-token>` (the
    /// token is shown once and stored only as a hash).
    Create {
        /// A unique name.
        name: String,
        /// Print `{"id","name","token"}` instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConnectCommand {
    /// Connect a HubSpot account with a private-app token or OAuth tokens.
    /// The portal id is read from HubSpot's account details unless given.
    Hubspot(HubspotConnectArgs),
}

#[derive(Debug, clap::Args)]
struct HubspotConnectArgs {
    /// A private-app access token (`pat-…`).
    #[arg(long, env = "CRMSYNC_HUBSPOT_PRIVATE_APP_TOKEN", hide_env_values = true, conflicts_with_all = ["access_token", "refresh_token"])]
    private_app_token: Option<String>,
    /// An OAuth access token (with --refresh-token; needs the app's
    /// CRMSYNC__HUBSPOT__CLIENT_ID and CLIENT_SECRET to refresh).
    #[arg(long, requires = "refresh_token", hide_env_values = true)]
    access_token: Option<String>,
    /// An OAuth refresh token.
    #[arg(long, requires = "access_token", hide_env_values = true)]
    refresh_token: Option<String>,
    /// Seconds until the OAuth access token expires (HubSpot: 1800; 1 to
    /// 86,400).
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    expires_in: u64,
    /// The HubSpot portal (account) id, a positive integer; read from the
    /// account details API when left out.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    portal_id: Option<u64>,
    /// The tenant, by name or id (default: the tenant named `default`).
    #[arg(long)]
    tenant: Option<String>,
    /// Print `{"id","tenant","portalId"}` instead of the bare id.
    #[arg(long)]
    json: bool,
}

/// Runs the CLI; errors are printed by the binary.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load()?;
    if !matches!(cli.command, Command::Dev(_)) {
        crate::telemetry::init_logs(&quiet(&settings));
    }
    match cli.command {
        Command::Dev(args) => dev::run(settings, args).await,
        Command::Migrate => migrate(&settings).await,
        Command::Tenant {
            command: TenantCommand::Create { name, json },
        } => {
            let store = app::open_store(&settings, true).await?;
            let tenant = store.create_tenant(&name).await?;
            if json {
                say!(
                    "{}",
                    serde_json::json!({"id": tenant.id, "name": tenant.name, "token": tenant.token})
                );
            } else {
                say!("tenant {}", tenant.id);
                say!("token {}", tenant.token);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Connect {
            provider: ConnectCommand::Hubspot(args),
        } => {
            let store = app::open_store(&settings, true).await?;
            let tenant = store.resolve_tenant(args.tenant.as_deref()).await?;
            let (id, portal) = connect_hubspot(&settings, &store, tenant, &args).await?;
            app::publish_routes(&settings, &store).await?;
            if args.json {
                say!(
                    "{}",
                    serde_json::json!({"id": id, "tenant": tenant, "portalId": portal})
                );
            } else {
                say!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync(args) => sync::run(&settings, args).await,
        Command::Status { json } => status::run(&settings, json).await,
        Command::Webhooks {
            command: WebhooksCommand::Register(args),
        } => webhooks::register(&settings, args).await,
        Command::Secrets {
            command: SecretsCommand::NewKey,
        } => {
            let key = crate::secrets::EncryptionKey::generate()?;
            say!("{}", secrecy::ExposeSecret::expose_secret(&key));
            Ok(ExitCode::SUCCESS)
        }
        Command::Secrets {
            command: SecretsCommand::Rotate { json },
        } => rotate_secrets(&settings, json).await,
    }
}

async fn rotate_secrets(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    if settings.secrets.encryption_key.is_none() && settings.is_embedded() {
        bail!(
            "set CRMSYNC__SECRETS__ENCRYPTION_KEY to the new key (and the key in the store's .key file as CRMSYNC__SECRETS__PREVIOUS_ENCRYPTION_KEYS); see `crmsync secrets rotate --help`"
        );
    }
    let store = app::open_store(settings, false).await?;
    let rotation = store
        .rotate_sealed(|so_far| {
            if !json {
                eprint!(
                    "\r{} connections, {} re-encrypted",
                    so_far.connections, so_far.resealed
                );
            }
        })
        .await?;
    // Ingress opens the published secrets: publish them as sealed now.
    app::publish_routes(settings, &store).await?;
    if rotation.undecryptable.is_empty()
        && let Some(file) = app::replace_key_file(settings)?
    {
        eprintln!(
            "{} now holds the new key (the old one is in {}.old)",
            file.display(),
            file.display()
        );
    }
    if json {
        say!("{}", serde_json::to_string(&rotation)?);
    } else {
        eprintln!();
        say!(
            "{} connections: {} values re-encrypted under the current key, {} already under it",
            rotation.connections,
            rotation.resealed,
            rotation.current
        );
        if !rotation.undecryptable.is_empty() {
            let ids: Vec<String> = rotation
                .undecryptable
                .iter()
                .map(|c| c.to_string())
                .collect();
            say!(
                "{} connections hold values no configured key opens: {} — keep every old key until they are found",
                ids.len(),
                ids.join(", ")
            );
        }
    }
    store.close().await;
    Ok(if rotation.undecryptable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// CLI commands log warnings only, unless RUST_LOG says otherwise.
fn quiet(settings: &Settings) -> crate::config::TelemetrySettings {
    let mut t = settings.telemetry.clone();
    t.log_level = "warn".into();
    t
}

async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let url = settings
        .database
        .migration_url
        .as_deref()
        .unwrap_or(&settings.database.url);
    Store::migrate(url)
        .await
        .with_context(|| format!("failed to migrate {}", crate::config::redact_url(url)))?;
    say!("database {} is up to date", crate::config::redact_url(url));
    Ok(ExitCode::SUCCESS)
}

/// Creates (or re-authorises) a HubSpot connection; returns its id and portal.
pub async fn connect_hubspot_token(
    settings: &Settings,
    store: &Store,
    tenant: TenantId,
    credentials: Credentials,
    portal_id: Option<u64>,
) -> anyhow::Result<(ConnectionId, u64)> {
    let token = credentials
        .bearer()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("HubSpot is connected with a token or OAuth"))?;
    let portal = match portal_id {
        Some(p) => p,
        None => HubspotClient::new(settings.hubspot.clone(), Arc::default())?
            .portal_id(&token)
            .await
            .context("failed to read the portal id from HubSpot's account details (pass --portal-id to skip)")?,
    };
    let id = store
        .upsert_connection(NewConnection {
            tenant,
            provider: ProviderKind::Hubspot,
            external_account_id: portal.to_string(),
            credentials,
            settings: crate::providers::default_settings(ProviderKind::Hubspot),
            delta_interval_secs: settings.sync.delta_interval_secs,
        })
        .await?;
    Ok((id, portal))
}

async fn connect_hubspot(
    settings: &Settings,
    store: &Store,
    tenant: TenantId,
    args: &HubspotConnectArgs,
) -> anyhow::Result<(ConnectionId, u64)> {
    let credentials = match (
        &args.private_app_token,
        &args.access_token,
        &args.refresh_token,
    ) {
        (Some(pat), None, None) => Credentials::PrivateAppToken {
            token: SecretString::from(pat.clone()),
        },
        (None, Some(access), Some(refresh)) => Credentials::OAuth {
            access_token: SecretString::from(access.clone()),
            refresh_token: SecretString::from(refresh.clone()),
            expires_at: chrono::TimeDelta::try_seconds(i64::try_from(args.expires_in)?)
                .and_then(|valid| chrono::Utc::now().checked_add_signed(valid))
                .context("--expires-in is out of range")?,
        },
        _ => bail!("give --private-app-token, or --access-token with --refresh-token"),
    };
    connect_hubspot_token(settings, store, tenant, credentials, args.portal_id).await
}

/// A shutdown flag that turns true on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    let sender = tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = sender.send(true);
    });
    (tx, rx)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
}

/// Finds a connection by id across tenants (an operator command).
pub async fn find_connection(store: &Store, id: &str) -> anyhow::Result<(TenantId, ConnectionId)> {
    let wanted: ConnectionId = id
        .parse()
        .with_context(|| format!("{id:?} is not a connection id (see `crmsync status`)"))?;
    store
        .connection_directory()
        .await?
        .into_iter()
        .find(|(_, c)| *c == wanted)
        .with_context(|| format!("no connection {id} (see `crmsync status`)"))
}

/// The `crmsync-worker` process: workers for `specs` until SIGTERM, then a
/// graceful drain within `worker.shutdown_grace_secs`.
pub async fn serve_workers(specs: &[crate::queue::WorkerSpec]) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = crate::telemetry::init(&settings.telemetry, "crmsync-worker");
    let store = app::open_store(&settings, false).await?;
    let deps = app::deps(&settings, store).await?;
    let addr = crate::telemetry::serve(&settings.telemetry.listen, "worker").await?;
    let kinds: Vec<String> = specs
        .iter()
        .map(|s| format!("{}×{}", s.kind.stem(), s.concurrency))
        .collect();
    tracing::info!(metrics = %addr, jobs = %kinds.join(","), "crmsync-worker started");
    let (_stop, shutdown) = shutdown_signal();
    let grace = std::time::Duration::from_secs(settings.worker.shutdown_grace_secs);
    let mut watch = shutdown.clone();
    let run = crate::queue::run_workers(&deps.queue, deps.clone(), specs, shutdown);
    tokio::pin!(run);
    tokio::select! {
        _ = &mut run => {}
        _ = stopped(&mut watch) => {
            if tokio::time::timeout(grace, &mut run).await.is_err() {
                tracing::warn!("shutdown grace period over; unfinished jobs will run again elsewhere");
            }
        }
    }
    deps.queue.close().await;
    Ok(())
}

/// The `crmsync-scheduler` process.
pub async fn serve_scheduler() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = crate::telemetry::init(&settings.telemetry, "crmsync-scheduler");
    let store = app::open_store(&settings, false).await?;
    let deps = app::deps(&settings, store).await?;
    let addr = crate::telemetry::serve(&settings.telemetry.listen, "scheduler").await?;
    tracing::info!(metrics = %addr, "crmsync-scheduler started");
    let (_stop, shutdown) = shutdown_signal();
    crate::scheduler::run(deps.clone(), shutdown).await;
    deps.queue.close().await;
    Ok(())
}

/// The `crmsync-ingress` process.
pub async fn serve_ingress(listen: Option<String>) -> anyhow::Result<()> {
    let mut settings = Settings::load()?;
    if let Some(listen) = listen {
        settings.ingress.listen = listen;
    }
    let _telemetry = crate::telemetry::init(&settings.telemetry, "crmsync-ingress");
    let listener = tokio::net::TcpListener::bind(&settings.ingress.listen)
        .await
        .with_context(|| format!("failed to listen on {}", settings.ingress.listen))?;
    let bound = listener.local_addr()?;
    // Before anything else: without a public URL off loopback, no genuine
    // signature could ever verify.
    crate::ingress::signed_base(settings.ingress.public_url.as_deref(), bound)?;
    let queue = crate::queue::Queue::connect(&settings, &app::store_dir(&settings)).await?;
    let ingress = app::ingress(&settings, queue.clone()).await?;
    let router = ingress.router(settings.ingress.max_body_bytes, bound)?;
    let metrics = crate::telemetry::serve(&settings.telemetry.listen, "ingress").await?;
    tracing::info!(listen = %bound, metrics = %metrics, "crmsync-ingress started");
    let (_stop, mut shutdown) = shutdown_signal();
    crate::http_server::serve(
        listener,
        router,
        crate::http_server::ServerLimits::ingress(&settings.ingress),
        async move { stopped(&mut shutdown).await },
    )
    .await?;
    queue.close().await;
    Ok(())
}

/// The `crmsync-api` process.
pub async fn serve_api(listen: Option<String>) -> anyhow::Result<()> {
    let mut settings = Settings::load()?;
    if let Some(listen) = listen {
        settings.api.listen = listen;
    }
    let _telemetry = crate::telemetry::init(&settings.telemetry, "crmsync-api");
    let store = app::open_store(&settings, false).await?;
    let queue = crate::queue::Queue::connect(&settings, &app::store_dir(&settings)).await?;
    let metrics = crate::telemetry::serve(&settings.telemetry.listen, "api").await?;
    let listener = tokio::net::TcpListener::bind(&settings.api.listen)
        .await
        .with_context(|| format!("failed to listen on {}", settings.api.listen))?;
    tracing::info!(listen = %listener.local_addr()?, metrics = %metrics, "crmsync-api started");
    let (_stop, mut shutdown) = shutdown_signal();
    let api = app::api(&settings, store, queue.clone()).await?;
    crate::http_server::serve(
        listener,
        api.router(),
        crate::http_server::ServerLimits::api(&settings.api),
        async move { stopped(&mut shutdown).await },
    )
    .await?;
    queue.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_help_names_every_job_kind() {
        let help = Cli::command().render_long_help().to_string();
        for kind in crate::jobs::JobKind::ALL {
            assert!(
                help.contains(kind.stem()),
                "{} missing: {help}",
                kind.stem()
            );
        }
    }
}
