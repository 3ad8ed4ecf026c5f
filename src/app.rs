//! Start-up wiring shared by every binary: settings → encryption key → store →
//! queue → provider clients → job dependencies.

use crate::config::Settings;
use crate::jobs::Deps;
use crate::providers::Providers;
use crate::queue::Queue;
use crate::ratelimit::{Budgets, Waits, shared::SharedStore};
use crate::secrets::{EncryptionKey, KeyRing};
use crate::store::Store;
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The folder of the embedded store (where the SQLite queue and key live),
/// or the working directory for Postgres.
pub fn store_dir(settings: &Settings) -> PathBuf {
    sqlite_path(&settings.database.url)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    Some(PathBuf::from(path))
}

/// The credentials key ring: from the environment, or — for the embedded
/// store only — a key kept in `<store>.key` beside it (created on first use,
/// mode 0600).
pub fn encryption_key(settings: &Settings, create: bool) -> anyhow::Result<Option<KeyRing>> {
    if let Some(ring) = settings.secrets.key_ring()? {
        return Ok(Some(ring));
    }
    let Some(path) = sqlite_path(&settings.database.url).map(|p| p.with_extension("key")) else {
        return Ok(None);
    };
    let file_key = if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        SecretString::from(text.trim().to_string())
    } else if create {
        let key = EncryptionKey::generate()?;
        write_private(&path, key.expose_secret())?;
        tracing::info!(path = %path.display(), "generated an encryption key for the embedded store");
        key
    } else {
        return Ok(None);
    };
    Ok(Some(KeyRing::parse(
        &file_key,
        settings.secrets.previous_encryption_keys.as_ref(),
    )?))
}

/// After a rotation, the embedded store's key file must hold the new key,
/// or the next start without the environment variable could not open a
/// thing: the old key moves to `<store>.key.old`, the new one takes its
/// place. Returns the file written, if the store keeps one.
pub fn replace_key_file(settings: &Settings) -> anyhow::Result<Option<PathBuf>> {
    let (Some(path), Some(key)) = (
        sqlite_path(&settings.database.url).map(|p| p.with_extension("key")),
        &settings.secrets.encryption_key,
    ) else {
        return Ok(None);
    };
    if !path.is_file() {
        return Ok(None);
    }
    let old = path.with_extension("key.old");
    std::fs::rename(&path, &old)
        .with_context(|| format!("failed to move {} aside", path.display()))?;
    write_private(&path, key.expose_secret())?;
    Ok(Some(path))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Opens the store, warning loudly when Postgres row-level security is
/// bypassed by the role in use.
pub async fn open_store(settings: &Settings, create_key: bool) -> anyhow::Result<Store> {
    let key = encryption_key(settings, create_key)?;
    let store = Store::open(
        &settings.database.url,
        settings.database.max_connections,
        key,
    )
    .await
    .with_context(|| {
        format!(
            "failed to open the database {}",
            crate::config::redact_url(&settings.database.url)
        )
    })?;
    if store.bypasses_row_security().await.unwrap_or(false) {
        tracing::warn!(
            "the database role bypasses row-level security (superuser, BYPASSRLS or table owner); \
             connect as a member of crmsync_app instead (see the README)"
        );
    }
    Ok(store)
}

/// Everything a worker or the CLI needs to run and enqueue jobs.
pub async fn deps(settings: &Settings, store: Store) -> anyhow::Result<Deps> {
    let queue = Queue::connect(settings, &store_dir(settings))
        .await
        .context("failed to connect to the queue")?;
    // One budget per CRM account for the whole fleet when there is a Redis;
    // this process's own otherwise (the embedded mode).
    let waits = Waits::from(&settings.budgets);
    let budgets = match redis(settings).await? {
        Some(conn) => Budgets::shared(SharedStore::new(conn, &settings.queue.namespace), waits),
        None => Budgets::local(waits),
    };
    let providers = Providers::new(settings, Arc::new(budgets))?;
    Ok(Deps {
        store,
        providers,
        queue,
        settings: Arc::new(settings.clone()),
    })
}

/// A Redis connection manager for fleet state (routes, dedupe), if configured.
pub async fn redis(settings: &Settings) -> anyhow::Result<Option<redis::aio::ConnectionManager>> {
    let Some(url) = &settings.redis.url else {
        return Ok(None);
    };
    let client = redis::Client::open(url.as_str()).context("invalid CRMSYNC__REDIS__URL")?;
    let conn = client.get_connection_manager().await.with_context(|| {
        format!(
            "failed to connect to Redis at {}",
            crate::config::redact_url(url)
        )
    })?;
    Ok(Some(conn))
}

/// Publishes connection routes to Redis when the deployment has one.
pub async fn publish_routes(settings: &Settings, store: &Store) -> anyhow::Result<Option<usize>> {
    match redis(settings).await? {
        Some(conn) => Ok(Some(
            crate::ingress::routes::publish(store, &conn, &settings.queue.namespace)
                .await
                .map_err(anyhow::Error::msg)
                .context("failed to publish webhook routes to Redis")?,
        )),
        None => Ok(None),
    }
}

/// The ingress for these settings: Redis routes and dedupe in production;
/// the embedded store and in-memory dedupe without Redis (SQLite only).
pub async fn ingress(
    settings: &Settings,
    queue: crate::queue::Queue,
) -> anyhow::Result<crate::ingress::Ingress> {
    use crate::ingress::routes::{Dedupe, Routes};
    let (routes, dedupe) = match redis(settings).await? {
        Some(conn) => (
            Routes::Redis {
                conn: conn.clone(),
                namespace: settings.queue.namespace.clone(),
            },
            Dedupe::Redis {
                conn,
                namespace: settings.queue.namespace.clone(),
            },
        ),
        None if settings.is_embedded() => (
            Routes::Store(open_store(settings, false).await?),
            Dedupe::memory(),
        ),
        None => anyhow::bail!(
            "crmsync-ingress with Postgres needs Redis (CRMSYNC__REDIS__URL): routes and dedupe live there"
        ),
    };
    let stats = webhook_stats(settings).await?;
    crate::ingress::Ingress::new(settings, routes, dedupe, stats, queue).map_err(anyhow::Error::msg)
}

/// Where webhook stats live: Redis when the deployment has it, else this
/// process's memory (the embedded mode runs ingress and api in one process).
pub async fn webhook_stats(
    settings: &Settings,
) -> anyhow::Result<crate::ingress::stats::WebhookStats> {
    Ok(match redis(settings).await? {
        Some(conn) => crate::ingress::stats::WebhookStats::Redis {
            conn,
            namespace: settings.queue.namespace.clone(),
        },
        None => crate::ingress::stats::WebhookStats::memory(),
    })
}

/// The api for these settings.
pub async fn api(
    settings: &Settings,
    store: Store,
    queue: crate::queue::Queue,
) -> anyhow::Result<crate::api::Api> {
    Ok(crate::api::Api::new(
        store,
        queue,
        Arc::new(settings.clone()),
        webhook_stats(settings).await?,
        redis(settings).await?,
    ))
}
