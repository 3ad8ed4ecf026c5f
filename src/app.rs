//! Start-up wiring shared by every binary: settings → encryption key → store →
//! queue → provider clients → job dependencies.

use crate::config::Settings;
use crate::jobs::Deps;
use crate::providers::budget::Budgets;
use crate::providers::hubspot::HubspotClient;
use crate::queue::Queue;
use crate::secrets::EncryptionKey;
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

/// The credentials key: from the environment, or — for the embedded store
/// only — kept in `<store>.key` beside it (created on first use, mode 0600).
pub fn encryption_key(settings: &Settings, create: bool) -> anyhow::Result<Option<EncryptionKey>> {
    if let Some(key) = &settings.secrets.encryption_key {
        return Ok(Some(EncryptionKey::parse(key)?));
    }
    let Some(path) = sqlite_path(&settings.database.url).map(|p| p.with_extension("key")) else {
        return Ok(None);
    };
    if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        return Ok(Some(EncryptionKey::parse(&SecretString::from(
            text.trim().to_string(),
        ))?));
    }
    if !create {
        return Ok(None);
    }
    let key = EncryptionKey::generate()?;
    write_private(&path, key.expose_secret())?;
    tracing::info!(path = %path.display(), "generated an encryption key for the embedded store");
    Ok(Some(EncryptionKey::parse(&key)?))
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
    let hubspot = HubspotClient::new(settings.hubspot.clone(), Arc::new(Budgets::default()))?;
    Ok(Deps {
        store,
        hubspot,
        queue,
        settings: Arc::new(settings.clone()),
    })
}
