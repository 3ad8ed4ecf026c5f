//! `crmsync dev`: the whole fleet in one process on an embedded SQLite store
//! and SQLite queue, against an in-process sandbox HubSpot with seeded data
//! and a trickle of user edits. The newcomer's first command.

use super::{connect_hubspot_token, shutdown_signal, status, sync::start_full_sync};
use crate::app;
use crate::config::{QueueBackend, Settings};
use crate::domain::{CrmObject, RunStatus};
use crate::jobs::JobKind;
use crate::queue::{WorkerSpec, run_workers};
use crate::sandbox::hubspot::{Sandbox, SandboxConfig};
use crate::store::Credentials;
use anyhow::Context;
use secrecy::SecretString;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `crmsync dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Contacts seeded in the sandbox HubSpot (they become platform leads;
    /// at most 1,000,000).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    contacts: u64,
    /// Leads seeded in the sandbox HubSpot (not synced by default; at most
    /// 1,000,000).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    leads: u64,
    /// Sandbox user edits per minute (0: none; at most 6,000).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=6_000))]
    edits_per_minute: u32,
    /// Seconds between delta syncs (5 to 86,400, as the api allows).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(5..=86_400))]
    delta_interval: u64,
    /// Where the sandbox listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    sandbox_listen: SocketAddr,
    /// Where the platform API listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    api_listen: SocketAddr,
    /// Where the webhook ingress listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    ingress_listen: SocketAddr,
    /// Stop after this many seconds (0: run until Ctrl-C; at most 604,800,
    /// a week); for scripts and CI.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=604_800))]
    exit_after: u64,
}

pub(super) async fn run(mut settings: Settings, args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut quiet = settings.telemetry.clone();
    if std::env::var_os("RUST_LOG").is_none() {
        quiet.log_level = "warn,crmsync::cli=info".into();
    }
    let _telemetry = crate::telemetry::init(&quiet, "crmsync-dev");
    if settings.redis.url.is_none() {
        settings.queue.backend = Some(QueueBackend::Sqlite);
    }
    let sandbox_config = SandboxConfig {
        seed_contacts: args.contacts,
        seed_leads: args.leads,
        ..SandboxConfig::default()
    };
    let portal = sandbox_config.portal_id;
    let pat = sandbox_config.private_app_token.clone();
    // The sandbox signs its webhooks with its app's client secret.
    settings.hubspot.client_secret = Some(SecretString::from(sandbox_config.client_secret.clone()));
    settings.hubspot.app_id = Some(sandbox_config.app_id);
    let sandbox = Sandbox::new(sandbox_config)
        .map_err(anyhow::Error::msg)
        .context("invalid sandbox settings")?;
    let (sandbox_addr, _server) = sandbox
        .clone()
        .spawn(args.sandbox_listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.sandbox_listen))?;
    settings.hubspot.api_base_url = format!("http://{sandbox_addr}");
    settings.sync.delta_interval_secs = args.delta_interval;

    let store = app::open_store(&settings, true).await?;
    let tenant = store.resolve_tenant(None).await?;
    let credentials = Credentials::PrivateAppToken {
        token: SecretString::from(pat),
    };
    let (connection, _) =
        connect_hubspot_token(&settings, &store, tenant, credentials, None).await?;
    let deps = app::deps(&settings, store.clone()).await?;
    let metrics = crate::telemetry::serve(&settings.telemetry.listen, "dev")
        .await
        .ok();
    // Ingress, with the sandbox delivering every contact event to it.
    app::publish_routes(&settings, &store).await?;
    let ingress = app::ingress(&settings, deps.queue.clone()).await?;
    let listener = tokio::net::TcpListener::bind(args.ingress_listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.ingress_listen))?;
    let ingress_addr = listener.local_addr()?;
    let ingress_app = ingress.router(settings.ingress.max_body_bytes, ingress_addr)?;
    let _ingress_server = crate::http_server::spawn(
        listener,
        ingress_app,
        crate::http_server::ServerLimits::ingress(&settings.ingress),
    );
    sandbox
        .subscribe_everything(&format!("http://{ingress_addr}/webhooks/hubspot"))
        .map_err(|e| anyhow::anyhow!("sandbox webhook subscription failed: {e:?}"))?;
    // The platform API, with a fresh token for the default tenant.
    let api_token = store.issue_token(tenant).await?;
    let api_listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.api_listen))?;
    let api_addr = api_listener.local_addr()?;
    let api_app = app::api(&settings, store.clone(), deps.queue.clone())
        .await?
        .router();
    let _api_server = crate::http_server::spawn(
        api_listener,
        api_app,
        crate::http_server::ServerLimits::api(&settings.api),
    );

    say!("crmsync dev");
    say!(
        "  store      {}",
        crate::config::redact_url(&settings.database.url)
    );
    say!("  queue      {}", settings.queue.sqlite_path);
    say!(
        "  sandbox    http://{sandbox_addr} (HubSpot portal {portal}, {} contacts, {} leads)",
        args.contacts,
        args.leads
    );
    say!("  connection {connection} (tenant default)");
    say!(
        "  ingress    http://{ingress_addr}/webhooks/hubspot (the sandbox delivers its webhooks here)"
    );
    say!("  api        http://{api_addr}/v1/leads   (token {api_token})");
    say!(
        "  try        curl -H 'authorization: Bearer {api_token}' -H 'content-type: application/json' -d '{{\"email\":\"ada@example.com\",\"firstName\":\"Ada\"}}' http://{api_addr}/v1/leads"
    );
    if let Some(addr) = metrics {
        say!("  metrics    http://{addr}/metrics");
    }
    say!("  try        crmsync status   (in this folder, from another terminal)");

    let (stop, shutdown) = shutdown_signal();
    let specs = [
        WorkerSpec {
            kind: JobKind::FullSync,
            concurrency: JobKind::FullSync.default_concurrency(),
        },
        WorkerSpec {
            kind: JobKind::DeltaSync,
            concurrency: 2,
        },
        WorkerSpec {
            kind: JobKind::ProcessWebhook,
            concurrency: 2,
        },
        WorkerSpec {
            kind: JobKind::PushChanges,
            concurrency: 1,
        },
        // The periodic jobs the scheduler enqueues.
        WorkerSpec {
            kind: JobKind::DetectConflicts,
            concurrency: 1,
        },
        WorkerSpec {
            kind: JobKind::RetryFailed,
            concurrency: 1,
        },
        WorkerSpec {
            kind: JobKind::CleanupLogs,
            concurrency: 1,
        },
        WorkerSpec {
            kind: JobKind::HealthCheck,
            concurrency: 1,
        },
    ];
    let workers = {
        let (queue, deps, shutdown) = (deps.queue.clone(), deps.clone(), shutdown.clone());
        tokio::spawn(async move { run_workers(&queue, deps, &specs, shutdown).await })
    };
    let scheduler = tokio::spawn(crate::scheduler::run(deps.clone(), shutdown.clone()));
    if args.exit_after > 0 {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(args.exit_after)).await;
            let _ = stop.send(true);
        });
    }

    let runs = start_full_sync(&deps, tenant, connection).await?;
    let tty = std::io::stdout().is_terminal();
    let mut shutdown_watch = shutdown.clone();
    // Phase 1: the first full sync, with progress.
    loop {
        let mut done = true;
        let mut line = String::new();
        for run in &runs {
            let row = store.run(tenant, run.id).await?;
            done &= row.status != RunStatus::Running;
            line.push_str(&format!(
                "full sync {}: {} · {} records read (+{} created, {} updated, {} unchanged)",
                row.object_name(),
                row.status,
                row.processed,
                row.created,
                row.updated,
                row.unchanged
            ));
        }
        if tty {
            say_inline!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        }
        if done {
            say!("{}{line}", if tty { "\r\x1b[2K" } else { "" });
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown_watch.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
    }

    // Phase 2: user edits in the sandbox, and a live summary.
    let editor = (args.edits_per_minute > 0).then(|| {
        let ids = store.clone();
        let base = settings.hubspot.api_base_url.clone();
        let shutdown = shutdown.clone();
        let per_minute = args.edits_per_minute;
        tokio::spawn(async move {
            let crm_ids = ids
                .linked_crm_ids(tenant, connection, CrmObject::Contacts)
                .await
                .unwrap_or_default();
            user_edits(&base, portal, crm_ids, per_minute, shutdown).await;
        })
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while !*shutdown.borrow() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown_watch.changed() => {}
        }
        let reports = status::collect(&store).await?;
        if let Some(report) = reports.iter().find(|r| r.id == connection) {
            let line = status::one_line(report);
            if tty {
                say_inline!("\r\x1b[2K{line}");
                let _ = std::io::stdout().flush();
            } else {
                say!("{line}");
            }
        }
    }
    say!("\nstopping: letting in-flight jobs finish…");
    let grace = Duration::from_secs(settings.worker.shutdown_grace_secs);
    let _ = tokio::time::timeout(grace, async {
        let _ = workers.await;
        let _ = scheduler.await;
    })
    .await;
    if let Some(editor) = editor {
        editor.abort();
    }
    deps.queue.close().await;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Acts as a CRM user editing random contacts through the sandbox's control
/// API, so deltas have something to bring over.
async fn user_edits(
    base: &str,
    portal: u64,
    ids: Vec<String>,
    per_minute: u32,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if ids.is_empty() {
        return;
    }
    let client = reqwest::Client::new();
    let titles = [
        "Engineer", "Director", "VP Sales", "Founder", "Analyst", "Buyer",
    ];
    let mut n: usize = 0;
    let pause = Duration::from_secs_f64(60.0 / f64::from(per_minute.max(1)));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
        n += 1;
        let id = &ids[(n * 7919) % ids.len()];
        let body = serde_json::json!({"properties": {"jobtitle": titles[n % titles.len()]}});
        let url = format!("{base}/_sandbox/accounts/{portal}/objects/contacts/{id}");
        if let Err(e) = client.patch(url).json(&body).send().await {
            tracing::debug!(error = %e, "sandbox edit failed");
        }
    }
}
