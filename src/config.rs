//! Layered settings: embedded `config/default.toml` → `config/{CRMSYNC_ENV}.toml`
//! → `CRMSYNC__SECTION__KEY` environment variables, validated once at start-up
//! so a wrong key or value stops the process with a message naming it.

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded defaults; the same file documents every key for operators.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The longest interval a periodic job may have (7 days). A period's
/// idempotency key must outlive the period, and Redis keeps keys for 7 days
/// (`queue::IDEMPOTENCY_TTL`); bounding it also keeps period arithmetic far
/// from overflowing a timestamp.
pub const MAX_PERIOD_SECS: u64 = 7 * 24 * 3600;

/// Keys that hold secrets: accepted only from the environment, never from a
/// file that may be committed or baked into an image.
const SECRET_KEYS: &[(&str, &str)] = &[
    ("secrets", "encryption_key"),
    ("secrets", "previous_encryption_keys"),
    ("hubspot", "client_secret"),
    ("hubspot", "developer_api_key"),
];

/// Keys that were moved: a file or variable that still sets one stops the
/// process with a message naming the key that replaced it (the new key's
/// meaning and default are the old one's).
const MOVED_KEYS: &[(&str, &str)] = &[
    ("hubspot.budget_share", "budgets.share"),
    ("hubspot.budget_max_wait_secs", "budgets.max_wait_secs"),
];

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown, mistyped or malformed (figment names key and source).
    #[error("configuration error: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("configuration error: {key}: {message}")]
    Value {
        /// The environment-variable form of the key.
        key: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The overlay picked by `CRMSYNC_ENV` does not exist.
    #[error("configuration error: CRMSYNC_ENV={env} but {path} does not exist")]
    MissingOverlay {
        /// The value of `CRMSYNC_ENV`.
        env: String,
        /// The overlay file that was looked for.
        path: String,
    },
    /// A key that was moved is still set.
    #[error(
        "configuration error: {key} ({env}, set by {source_name}) was removed: set {new_key} ({new_env}) instead"
    )]
    Moved {
        /// The old dotted key.
        key: String,
        /// Its environment-variable form.
        env: String,
        /// Where it was set (a file or the environment).
        source_name: String,
        /// The key that replaced it.
        new_key: String,
        /// The new key's environment-variable form.
        new_env: String,
    },
    /// A secret was found in a file.
    #[error("configuration error: {key} must come from the environment ({env}), not from {file}")]
    SecretInFile {
        /// The dotted key.
        key: String,
        /// The environment variable to use instead.
        env: String,
        /// The file that held it.
        file: String,
    },
}

/// All settings of every process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where state lives.
    pub database: DatabaseSettings,
    /// The production queue and shared fleet state.
    pub redis: RedisSettings,
    /// Which queue backend and how it polls.
    pub queue: QueueSettings,
    /// Keys for data at rest.
    pub secrets: SecretsSettings,
    /// HubSpot endpoints, app credentials and rate limits.
    pub hubspot: HubspotSettings,
    /// How the fleet uses every CRM's rate budgets.
    pub budgets: BudgetSettings,
    /// Delta and full sync tuning.
    pub sync: SyncSettings,
    /// Webhook ingress.
    pub ingress: IngressSettings,
    /// The platform API.
    pub api: ApiSettings,
    /// Worker timeouts and shutdown.
    pub worker: WorkerSettings,
    /// Logs, metrics and health.
    pub telemetry: TelemetrySettings,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…` (production) or `sqlite://path` (embedded).
    pub url: String,
    /// The owner's URL for `crmsync migrate`; defaults to `url`.
    pub migration_url: Option<String>,
    /// Pool size per process.
    pub max_connections: u32,
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`; empty means no Redis.
    pub url: Option<String>,
}

/// The two queue backends behind [`crate::queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// apalis-redis: production.
    Redis,
    /// apalis-sqlite in its own file: the embedded mode.
    Sqlite,
}

/// `[queue]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// `redis` or `sqlite`; unset means redis when `redis.url` is set.
    pub backend: Option<QueueBackend>,
    /// The SQLite queue file (a separate file from the store).
    pub sqlite_path: String,
    /// Prefix of every queue name, so several deployments can share a Redis.
    pub namespace: String,
    /// How often an idle worker looks for work, in milliseconds.
    pub poll_interval_ms: u64,
    /// Worker heartbeat period, in seconds.
    pub heartbeat_secs: u64,
    /// Missed heartbeats after which a worker's jobs are re-run elsewhere.
    pub missed_heartbeats: u32,
    /// Hours a finished job's payload stays in the queue before the daily
    /// cleanup purges it (the durable history is in the database).
    pub finished_job_retention_hours: u64,
}

/// `[secrets]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    /// 32 random bytes, standard base64 (environment only).
    pub encryption_key: Option<SecretString>,
    /// Keys that still decrypt but no longer encrypt, separated by commas
    /// (environment only): what a key rotation needs until `crmsync secrets
    /// rotate` has re-encrypted everything.
    pub previous_encryption_keys: Option<SecretString>,
}

impl SecretsSettings {
    /// The configured key ring (`None` without a current key).
    pub fn key_ring(&self) -> Result<Option<crate::secrets::KeyRing>, ConfigError> {
        let Some(current) = &self.encryption_key else {
            return Ok(None);
        };
        crate::secrets::EncryptionKey::parse(current)
            .map_err(|e| value("CRMSYNC__SECRETS__ENCRYPTION_KEY", e.to_string()))?;
        crate::secrets::KeyRing::parse(current, self.previous_encryption_keys.as_ref())
            .map(Some)
            .map_err(|e| value("CRMSYNC__SECRETS__PREVIOUS_ENCRYPTION_KEYS", e.to_string()))
    }
}

/// `[hubspot]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotSettings {
    /// API base URL; the sandbox in tests and `dev`.
    pub api_base_url: String,
    /// Where OAuth connect sends the user to consent (HubSpot's install
    /// page, `https://app.hubspot.com/oauth/authorize`; the sandbox's
    /// `/oauth/authorize` in tests).
    pub authorize_url: String,
    /// Our public app's id (echo markers, webhooks).
    pub app_id: Option<u64>,
    /// Our public app's OAuth client id.
    pub client_id: Option<String>,
    /// Our public app's OAuth client secret (environment only); it also
    /// signs the app's webhooks.
    pub client_secret: Option<SecretString>,
    /// The developer account's API key (`hapikey`, environment only), for
    /// `crmsync webhooks register`.
    #[serde(default)]
    pub developer_api_key: Option<SecretString>,
    /// The account's burst budget: requests per rolling 10 s.
    pub requests_per_10s: u32,
    /// The search endpoints' budget: requests per second.
    pub search_requests_per_second: u32,
    /// The account's daily budget: requests per UTC day (0: none, as for
    /// public OAuth apps).
    pub requests_per_day: u32,
    /// Per-request timeout, in seconds.
    pub request_timeout_secs: u64,
}

/// `[budgets]`: fleet-level knobs of every CRM's rate budgets
/// ([`crate::ratelimit`]); each CRM's own limits stay in its section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSettings {
    /// Share of each budget crmsync may use, in (0, 1] (the rest is the
    /// customer's).
    pub share: f64,
    /// The longest a job waits for a budget slot before it is rescheduled,
    /// in seconds.
    pub max_wait_secs: u64,
}

/// `[sync]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// Default delta interval of a new connection, in seconds.
    pub delta_interval_secs: u64,
    /// How far behind the cursor a delta re-reads, for search-index lag.
    pub overlap_secs: u64,
    /// How far behind now a delta stops, so the cursor never passes records
    /// the search index does not show yet.
    pub guard_secs: u64,
    /// Records per full-sync page: a partition listed by id range reads up
    /// to this many (HubSpot search: at most 200); a whole list up to what
    /// the CRM lists per page (HubSpot: 100).
    pub full_page_size: u32,
    /// Most partitions a full sync of one object is split into, each a
    /// chain of pages of its own, so this many pages can be in flight at
    /// once (1: one page at a time).
    pub full_sync_partitions: u32,
    /// Records per delta search page (HubSpot search: at most 200).
    pub delta_page_size: u32,
    /// The search result cap after which a delta narrows its window.
    pub search_result_cap: u32,
    /// Days sync history is kept (runs, the field-change audit, pushed
    /// outbox rows, resolved conflicts, replayed dead letters).
    pub history_retention_days: u32,
    /// Seconds between `retry_failed` jobs (each re-drives open dead
    /// letters of active connections).
    pub retry_failed_interval_secs: u64,
    /// Seconds between `detect_conflicts` jobs of each active connection.
    pub detect_conflicts_interval_secs: u64,
    /// The most of an account's request budget a `detect_conflicts` sweep
    /// may use (0 < x ≤ 1): drift is rare, so the sweep must never crowd
    /// out webhooks, pushes and deltas, even when a CRM has many records.
    pub detect_conflicts_budget_share: f64,
    /// Seconds between `cleanup_logs` jobs (history and finished jobs past
    /// their retention).
    pub cleanup_interval_secs: u64,
    /// Seconds between `health_check` jobs of each active connection.
    pub health_check_interval_secs: u64,
    /// Re-drives per chain of failures; then the dead letter waits for an
    /// operator.
    pub retry_failed_max_redrives: u32,
}

/// `[ingress]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    /// Where `crmsync-ingress` listens.
    pub listen: String,
    /// The public URL HubSpot calls: the only source of the URL its v3
    /// signature covers; required unless ingress listens on loopback.
    pub public_url: Option<String>,
    /// Largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Whether v1/v2 signatures are accepted besides v3.
    pub allow_legacy_signatures: bool,
    /// Seconds a client has to send a request's headers (and the longest an
    /// idle kept-alive connection stays open).
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a request's body once its headers are in.
    pub body_read_timeout_secs: u64,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Where `crmsync-api` listens.
    pub listen: String,
    /// Seconds a client has to send a request's headers (and the longest an
    /// idle kept-alive connection stays open).
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a request's body once its headers are in.
    pub body_read_timeout_secs: u64,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// The api's public URL (`https://api.example.com`, no query): the
    /// base of its OAuth callback, `{public_url}/oauth/{provider}/callback`,
    /// which the CRM redirects to. OAuth connect is refused without it.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Where OAuth connect may send users back to: a `redirectUri` must be
    /// under one of these URLs (same scheme, host and port; path at or
    /// below the entry's). Empty: any absolute http(s) URL.
    #[serde(default)]
    pub oauth_redirect_allow: Vec<String>,
    /// Addresses or CIDR blocks of the proxies in front of the api (a load
    /// balancer): only for a peer among them is `X-Forwarded-For` read, and
    /// its last address not among them is the client's, whose budget of
    /// failed token checks a request spends. Empty: the peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// The longest header or body read timeout accepted, in seconds: a client
/// must not be able to hold a connection for hours.
pub const MAX_READ_TIMEOUT_SECS: u64 = 3600;

/// The most connections one api or ingress process may be told to serve.
pub const MAX_SERVER_CONNECTIONS: usize = 1_000_000;

/// What `ingress.max_body_bytes` may be: at least one event's worth (a
/// smaller limit would refuse every delivery), at most 64 MiB (each
/// connection may hold that much while its body is read).
pub const INGRESS_BODY_BYTES: std::ops::RangeInclusive<usize> = 1024..=64 * 1024 * 1024;

/// `[worker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// A job running longer fails and is retried.
    pub job_timeout_secs: u64,
    /// On SIGTERM, in-flight jobs get this long to finish.
    pub shutdown_grace_secs: u64,
    /// Attempts before a job is given up (dead-lettered).
    pub max_attempts: u32,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Address of `/metrics` and `/health`; port 0 disables them.
    pub listen: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive such as `info,crmsync=debug`.
    pub log_level: String,
    /// Where spans go over OTLP/HTTP (a collector's `/v1/traces` URL);
    /// unset: no export.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`.
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
}

/// The OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Binary protobuf, what collectors expect by default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON.
    #[serde(rename = "http/json")]
    HttpJson,
}

impl Settings {
    /// Loads the layers from the process environment and the working directory.
    pub fn load() -> Result<Self, ConfigError> {
        let env_name = std::env::var("CRMSYNC_ENV").ok().filter(|s| !s.is_empty());
        let dir = std::env::var("CRMSYNC_CONFIG_DIR").unwrap_or_else(|_| "config".into());
        Self::load_from(
            Path::new(&dir),
            env_name.as_deref(),
            Env::prefixed("CRMSYNC__"),
        )
    }

    /// The embedded defaults alone (tests and tools that build settings in code).
    pub fn defaults() -> Result<Self, ConfigError> {
        let mut settings: Settings = Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .map_err(Box::new)?;
        settings.normalise();
        settings.validate()?;
        Ok(settings)
    }

    /// Loads from an explicit overlay directory and environment provider (tests).
    pub fn load_from(dir: &Path, env_name: Option<&str>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(name) = env_name {
            let path: PathBuf = dir.join(format!("{name}.toml"));
            if !path.is_file() {
                return Err(ConfigError::MissingOverlay {
                    env: name.to_string(),
                    path: path.display().to_string(),
                });
            }
            let overlay = Figment::from(Toml::file(&path));
            for (section, key) in SECRET_KEYS {
                if overlay.find_value(&format!("{section}.{key}")).is_ok() {
                    return Err(ConfigError::SecretInFile {
                        key: format!("{section}.{key}"),
                        env: env_var(section, key),
                        file: path.display().to_string(),
                    });
                }
            }
            figment = figment.merge(Toml::file(path));
        }
        // `CRMSYNC__DATABASE__URL` → `database.url`. Empty values mean unset.
        let env = env
            .split("__")
            .filter_map(|k| Some(k.as_str().to_lowercase().into()));
        let figment = figment.merge(env);
        moved_keys(&figment)?;
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        settings.normalise();
        settings.validate()?;
        Ok(settings)
    }

    fn normalise(&mut self) {
        let blank = |s: &Option<String>| s.as_deref().is_some_and(|v| v.trim().is_empty());
        if blank(&self.redis.url) {
            self.redis.url = None;
        }
        if blank(&self.database.migration_url) {
            self.database.migration_url = None;
        }
        if blank(&self.hubspot.client_id) {
            self.hubspot.client_id = None;
        }
        if blank(&self.ingress.public_url) {
            self.ingress.public_url = None;
        }
        if blank(&self.api.public_url) {
            self.api.public_url = None;
        }
        self.api
            .oauth_redirect_allow
            .retain(|entry| !entry.trim().is_empty());
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            return Err(value(
                "CRMSYNC__DATABASE__URL",
                format!(
                    "expected postgres://… or sqlite://…, got {:?}",
                    redact_url(url)
                ),
            ));
        }
        if let Some(redis) = &self.redis.url
            && !(redis.starts_with("redis://") || redis.starts_with("rediss://"))
        {
            return Err(value(
                "CRMSYNC__REDIS__URL",
                format!("expected redis://…, got {:?}", redact_url(redis)),
            ));
        }
        if self.queue_backend() == QueueBackend::Redis && self.redis.url.is_none() {
            return Err(value(
                "CRMSYNC__QUEUE__BACKEND",
                "is redis but CRMSYNC__REDIS__URL is not set".into(),
            ));
        }
        for (key, url) in [
            ("CRMSYNC__HUBSPOT__API_BASE_URL", &self.hubspot.api_base_url),
            (
                "CRMSYNC__HUBSPOT__AUTHORIZE_URL",
                &self.hubspot.authorize_url,
            ),
        ] {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(value(key, format!("expected an http(s) URL, got {url:?}")));
            }
        }
        let positive: [(&'static str, u64); 9] = [
            (
                "CRMSYNC__QUEUE__POLL_INTERVAL_MS",
                self.queue.poll_interval_ms,
            ),
            ("CRMSYNC__QUEUE__HEARTBEAT_SECS", self.queue.heartbeat_secs),
            (
                "CRMSYNC__HUBSPOT__REQUESTS_PER_10S",
                self.hubspot.requests_per_10s.into(),
            ),
            (
                "CRMSYNC__HUBSPOT__SEARCH_REQUESTS_PER_SECOND",
                self.hubspot.search_requests_per_second.into(),
            ),
            (
                "CRMSYNC__SYNC__DELTA_INTERVAL_SECS",
                self.sync.delta_interval_secs,
            ),
            (
                "CRMSYNC__WORKER__JOB_TIMEOUT_SECS",
                self.worker.job_timeout_secs,
            ),
            (
                "CRMSYNC__WORKER__MAX_ATTEMPTS",
                self.worker.max_attempts.into(),
            ),
            (
                "CRMSYNC__HUBSPOT__REQUEST_TIMEOUT_SECS",
                self.hubspot.request_timeout_secs,
            ),
            (
                "CRMSYNC__BUDGETS__MAX_WAIT_SECS",
                self.budgets.max_wait_secs,
            ),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(value(key, "must be greater than 0".into()));
            }
        }
        let delta = crate::domain::validate::DELTA_INTERVAL_SECS;
        if !delta.contains(&self.sync.delta_interval_secs) {
            return Err(value(
                "CRMSYNC__SYNC__DELTA_INTERVAL_SECS",
                format!(
                    "must be between {} and {} seconds, got {}: it becomes each new connection's \
                     interval, which the api holds to that range",
                    delta.start(),
                    delta.end(),
                    self.sync.delta_interval_secs
                ),
            ));
        }
        for (key, secs) in self.periodic_intervals() {
            if !(1..=MAX_PERIOD_SECS).contains(&secs) {
                return Err(value(
                    key,
                    format!(
                        "must be between 1 and {MAX_PERIOD_SECS} seconds (7 days), got {secs}: the \
                         scheduler enqueues each period's job once by a key derived from the period"
                    ),
                ));
            }
        }
        if !(self.budgets.share > 0.0 && self.budgets.share <= 1.0) {
            return Err(value(
                "CRMSYNC__BUDGETS__SHARE",
                format!("must be in (0, 1], got {}", self.budgets.share),
            ));
        }
        let share = self.sync.detect_conflicts_budget_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(value(
                "CRMSYNC__SYNC__DETECT_CONFLICTS_BUDGET_SHARE",
                format!("must be in (0, 1], got {share}"),
            ));
        }
        if !(1..=200).contains(&self.sync.full_page_size) {
            return Err(value(
                "CRMSYNC__SYNC__FULL_PAGE_SIZE",
                "HubSpot searches at most 200 per page: use 1..=200".into(),
            ));
        }
        if !(1..=64).contains(&self.sync.full_sync_partitions) {
            return Err(value(
                "CRMSYNC__SYNC__FULL_SYNC_PARTITIONS",
                format!("use 1..=64, got {}", self.sync.full_sync_partitions),
            ));
        }
        if !(1..=200).contains(&self.sync.delta_page_size) {
            return Err(value(
                "CRMSYNC__SYNC__DELTA_PAGE_SIZE",
                "HubSpot searches at most 200 per page: use 1..=200".into(),
            ));
        }
        if self.sync.search_result_cap < self.sync.delta_page_size * 2 {
            return Err(value(
                "CRMSYNC__SYNC__SEARCH_RESULT_CAP",
                "must hold at least two delta pages".into(),
            ));
        }
        // A job must finish (or time out) before its worker counts as dead,
        // or a slow job would run twice at once.
        if self.orphan_window() <= Duration::from_secs(self.worker.job_timeout_secs) {
            return Err(value(
                "CRMSYNC__QUEUE__MISSED_HEARTBEATS",
                format!(
                    "heartbeat_secs × missed_heartbeats ({} s) must exceed worker.job_timeout_secs ({} s)",
                    self.orphan_window().as_secs(),
                    self.worker.job_timeout_secs
                ),
            ));
        }
        if self.worker.shutdown_grace_secs >= self.orphan_window().as_secs() {
            return Err(value(
                "CRMSYNC__WORKER__SHUTDOWN_GRACE_SECS",
                "must be shorter than heartbeat_secs × missed_heartbeats".into(),
            ));
        }
        self.validate_servers()?;
        self.secrets.key_ring()?;
        if self
            .telemetry
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(value(
                "CRMSYNC__TELEMETRY__LISTEN",
                format!("expected host:port, got {:?}", self.telemetry.listen),
            ));
        }
        Ok(())
    }

    /// The api's and ingress's server limits, and ingress's public URL.
    fn validate_servers(&self) -> Result<(), ConfigError> {
        let timeouts = [
            (
                "CRMSYNC__API__HEADER_READ_TIMEOUT_SECS",
                self.api.header_read_timeout_secs,
            ),
            (
                "CRMSYNC__API__BODY_READ_TIMEOUT_SECS",
                self.api.body_read_timeout_secs,
            ),
            (
                "CRMSYNC__INGRESS__HEADER_READ_TIMEOUT_SECS",
                self.ingress.header_read_timeout_secs,
            ),
            (
                "CRMSYNC__INGRESS__BODY_READ_TIMEOUT_SECS",
                self.ingress.body_read_timeout_secs,
            ),
        ];
        for (key, secs) in timeouts {
            if !(1..=MAX_READ_TIMEOUT_SECS).contains(&secs) {
                return Err(value(
                    key,
                    format!("must be between 1 and {MAX_READ_TIMEOUT_SECS} seconds, got {secs}"),
                ));
            }
        }
        for (key, n) in [
            ("CRMSYNC__API__MAX_CONNECTIONS", self.api.max_connections),
            (
                "CRMSYNC__INGRESS__MAX_CONNECTIONS",
                self.ingress.max_connections,
            ),
        ] {
            if !(1..=MAX_SERVER_CONNECTIONS).contains(&n) {
                return Err(value(
                    key,
                    format!("must be between 1 and {MAX_SERVER_CONNECTIONS}, got {n}"),
                ));
            }
        }
        if !INGRESS_BODY_BYTES.contains(&self.ingress.max_body_bytes) {
            return Err(value(
                "CRMSYNC__INGRESS__MAX_BODY_BYTES",
                format!(
                    "must be between {} and {} bytes (1 KiB to 64 MiB), got {}",
                    INGRESS_BODY_BYTES.start(),
                    INGRESS_BODY_BYTES.end(),
                    self.ingress.max_body_bytes
                ),
            ));
        }
        let public_urls = [
            (
                "CRMSYNC__INGRESS__PUBLIC_URL",
                &self.ingress.public_url,
                "HubSpot calls",
                "https://hooks.example.com",
            ),
            (
                "CRMSYNC__API__PUBLIC_URL",
                &self.api.public_url,
                "users and CRMs reach the api at",
                "https://api.example.com",
            ),
        ];
        for (key, url, what, example) in public_urls {
            if let Some(url) = url
                && !is_base_url(url)
            {
                return Err(value(
                    key,
                    format!(
                        "expected the http(s) URL {what}, without query or fragment \
                         (e.g. {example}), got {url:?}"
                    ),
                ));
            }
        }
        for entry in &self.api.trusted_proxies {
            if let Err(why) = entry.parse::<crate::http_server::IpRange>() {
                return Err(value(
                    "CRMSYNC__API__TRUSTED_PROXIES",
                    format!("each entry must be an address or CIDR block (e.g. 10.0.0.0/8): {why}"),
                ));
            }
        }
        for entry in &self.api.oauth_redirect_allow {
            if !is_base_url(entry) {
                return Err(value(
                    "CRMSYNC__API__OAUTH_REDIRECT_ALLOW",
                    format!(
                        "each entry must be an http(s) URL without query or fragment \
                         (e.g. https://app.example.com/settings), got {entry:?}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The queue backend in effect: explicit, else Redis when a URL is set.
    pub fn queue_backend(&self) -> QueueBackend {
        self.queue.backend.unwrap_or(if self.redis.url.is_some() {
            QueueBackend::Redis
        } else {
            QueueBackend::Sqlite
        })
    }

    /// The periodic jobs' intervals in seconds, by the key that sets them.
    pub fn periodic_intervals(&self) -> [(&'static str, u64); 4] {
        [
            (
                "CRMSYNC__SYNC__DETECT_CONFLICTS_INTERVAL_SECS",
                self.sync.detect_conflicts_interval_secs,
            ),
            (
                "CRMSYNC__SYNC__RETRY_FAILED_INTERVAL_SECS",
                self.sync.retry_failed_interval_secs,
            ),
            (
                "CRMSYNC__SYNC__CLEANUP_INTERVAL_SECS",
                self.sync.cleanup_interval_secs,
            ),
            (
                "CRMSYNC__SYNC__HEALTH_CHECK_INTERVAL_SECS",
                self.sync.health_check_interval_secs,
            ),
        ]
    }

    /// After this long without a heartbeat a worker's jobs run elsewhere.
    pub fn orphan_window(&self) -> Duration {
        Duration::from_secs(self.queue.heartbeat_secs * u64::from(self.queue.missed_heartbeats))
    }

    /// Whether the store is the embedded SQLite file.
    pub fn is_embedded(&self) -> bool {
        self.database.url.starts_with("sqlite:")
    }
}

/// An absolute http(s) URL with a host and no query or fragment.
fn is_base_url(url: &str) -> bool {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", ""));
    matches!(scheme, "http" | "https")
        && !rest.trim_end_matches('/').is_empty()
        && !rest.contains(['?', '#'])
        && !url.chars().any(char::is_whitespace)
}

/// Refuses a configuration that still sets a moved key ([`MOVED_KEYS`]).
fn moved_keys(figment: &Figment) -> Result<(), ConfigError> {
    for (old, new) in MOVED_KEYS {
        if figment.find_value(old).is_err() {
            continue;
        }
        let source_name = figment.find_metadata(old).map_or_else(
            || "the configuration".to_string(),
            |m| match &m.source {
                Some(source) => source.to_string(),
                None => m.name.to_string(),
            },
        );
        let dotted = |key: &str| {
            let (section, name) = key.split_once('.').unwrap_or((key, ""));
            env_var(section, name)
        };
        return Err(ConfigError::Moved {
            key: (*old).to_string(),
            env: dotted(old),
            source_name,
            new_key: (*new).to_string(),
            new_env: dotted(new),
        });
    }
    Ok(())
}

fn value(key: &'static str, message: String) -> ConfigError {
    ConfigError::Value { key, message }
}

fn env_var(section: &str, key: &str) -> String {
    format!(
        "CRMSYNC__{}__{}",
        section.to_uppercase(),
        key.to_uppercase()
    )
}

/// A URL with any password replaced, safe to print.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    fn load(jail: &Jail, env: Option<&str>) -> Result<Settings, String> {
        Settings::load_from(jail.directory(), env, Env::prefixed("CRMSYNC__"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_embedded_store_and_sqlite_queue() {
        Jail::expect_with(|jail| {
            let s = load(jail, None)?;
            assert!(s.is_embedded());
            assert_eq!(s.queue_backend(), QueueBackend::Sqlite);
            assert_eq!(s.sync.delta_interval_secs, 60);
            // A SIGKILLed worker's job runs again within a minute: the
            // window plus the heartbeat at which another worker notices.
            let rerun = s.orphan_window() + Duration::from_secs(s.queue.heartbeat_secs);
            assert!(rerun <= Duration::from_secs(60), "{rerun:?}");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_and_redis_url_selects_the_redis_queue() {
        Jail::expect_with(|jail| {
            jail.set_env("CRMSYNC__REDIS__URL", "redis://127.0.0.1:6379/0");
            jail.set_env("CRMSYNC__DATABASE__URL", "postgres://app@localhost/crm");
            let s = load(jail, None)?;
            assert_eq!(s.queue_backend(), QueueBackend::Redis);
            assert!(!s.is_embedded());
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("CRMSYNC__DATABASE__URLL", "x");
            let err = load(jail, None).err().unwrap_or_default();
            assert!(err.contains("urll"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_value_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("CRMSYNC__DATABASE__URL", "mysql://x");
            let err = load(jail, None).err().unwrap_or_default();
            assert!(err.contains("CRMSYNC__DATABASE__URL"), "{err}");
            jail.set_env("CRMSYNC__DATABASE__URL", "sqlite://a.db");
            jail.set_env("CRMSYNC__SYNC__FULL_PAGE_SIZE", "500");
            let err = load(jail, None).err().unwrap_or_default();
            assert!(err.contains("FULL_PAGE_SIZE"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn periodic_intervals_default_and_refuse_zero_or_absurd_values() {
        Jail::expect_with(|jail| {
            let s = load(jail, None)?;
            assert_eq!(s.sync.detect_conflicts_interval_secs, 3600);
            assert_eq!(s.sync.detect_conflicts_budget_share, 0.2);
            assert_eq!(s.sync.retry_failed_interval_secs, 3600);
            assert_eq!(s.sync.cleanup_interval_secs, 86400);
            assert_eq!(s.sync.health_check_interval_secs, 300);
            for (var, bad) in [
                ("CRMSYNC__SYNC__HEALTH_CHECK_INTERVAL_SECS", "0"),
                (
                    "CRMSYNC__SYNC__CLEANUP_INTERVAL_SECS",
                    "18446744073709551615",
                ),
                ("CRMSYNC__SYNC__DETECT_CONFLICTS_INTERVAL_SECS", "604801"),
                ("CRMSYNC__SYNC__RETRY_FAILED_INTERVAL_SECS", "0"),
            ] {
                jail.set_env(var, bad);
                let err = load(jail, None).err().unwrap_or_default();
                assert!(err.contains(var) && err.contains("between 1 and"), "{err}");
                jail.set_env(var, "60");
            }
            Ok(())
        });
    }

    #[test]
    fn the_sweeps_budget_share_must_be_above_0_and_at_most_1() {
        Jail::expect_with(|jail| {
            let var = "CRMSYNC__SYNC__DETECT_CONFLICTS_BUDGET_SHARE";
            for bad in ["0", "-0.1", "1.5"] {
                jail.set_env(var, bad);
                let err = load(jail, None).err().unwrap_or_default();
                assert!(err.contains(var) && err.contains("(0, 1]"), "{bad}: {err}");
            }
            jail.set_env(var, "1");
            assert_eq!(load(jail, None)?.sync.detect_conflicts_budget_share, 1.0);
            Ok(())
        });
    }

    #[test]
    fn budgets_default_and_refuse_a_share_outside_0_to_1_or_a_zero_wait() {
        Jail::expect_with(|jail| {
            let s = load(jail, None)?;
            assert_eq!((s.budgets.share, s.budgets.max_wait_secs), (1.0, 5));
            jail.set_env("CRMSYNC__BUDGETS__SHARE", "0.5");
            jail.set_env("CRMSYNC__BUDGETS__MAX_WAIT_SECS", "7");
            let s = load(jail, None)?;
            assert_eq!((s.budgets.share, s.budgets.max_wait_secs), (0.5, 7));
            for (var, bad, good) in [
                ("CRMSYNC__BUDGETS__SHARE", "0", "1"),
                ("CRMSYNC__BUDGETS__SHARE", "1.01", "1"),
                ("CRMSYNC__BUDGETS__MAX_WAIT_SECS", "0", "5"),
            ] {
                jail.set_env(var, bad);
                let err = load(jail, None).err().unwrap_or_default();
                assert!(err.contains(var), "{var}={bad}: {err}");
                jail.set_env(var, good);
            }
            Ok(())
        });
    }

    #[test]
    fn a_moved_budget_key_in_the_environment_stops_naming_its_new_key() {
        for (old, value, new) in [
            (
                "CRMSYNC__HUBSPOT__BUDGET_SHARE",
                "0.5",
                "budgets.share (CRMSYNC__BUDGETS__SHARE)",
            ),
            (
                "CRMSYNC__HUBSPOT__BUDGET_MAX_WAIT_SECS",
                "5",
                "budgets.max_wait_secs (CRMSYNC__BUDGETS__MAX_WAIT_SECS)",
            ),
        ] {
            Jail::expect_with(|jail| {
                jail.set_env(old, value);
                let err = load(jail, None).err().unwrap_or_default();
                assert!(err.contains(old), "{err}");
                assert!(err.contains(&format!("set {new} instead")), "{err}");
                assert!(err.contains("environment"), "names where: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn a_moved_budget_key_in_a_file_stops_naming_the_file_and_its_new_key() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "old.toml",
                "[hubspot]\nrequests_per_10s = 190\nbudget_max_wait_secs = 10\n",
            )?;
            let err = load(jail, Some("old")).err().unwrap_or_default();
            assert!(err.contains("hubspot.budget_max_wait_secs"), "{err}");
            assert!(err.contains("old.toml"), "{err}");
            assert!(
                err.contains("set budgets.max_wait_secs (CRMSYNC__BUDGETS__MAX_WAIT_SECS) instead"),
                "{err}"
            );
            jail.create_file("new.toml", "[budgets]\nmax_wait_secs = 10\n")?;
            assert_eq!(load(jail, Some("new"))?.budgets.max_wait_secs, 10);
            Ok(())
        });
    }

    #[test]
    fn overlay_applies_and_may_not_hold_secrets() {
        Jail::expect_with(|jail| {
            jail.create_file("staging.toml", "[sync]\ndelta_interval_secs = 15\n")?;
            assert_eq!(load(jail, Some("staging"))?.sync.delta_interval_secs, 15);
            jail.create_file("leaky.toml", "[secrets]\nencryption_key = \"abc\"\n")?;
            let err = load(jail, Some("leaky")).err().unwrap_or_default();
            assert!(err.contains("CRMSYNC__SECRETS__ENCRYPTION_KEY"), "{err}");
            let err = load(jail, Some("missing")).err().unwrap_or_default();
            assert!(err.contains("missing.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn server_limits_default_and_refuse_zero_absurd_or_malformed_values() {
        Jail::expect_with(|jail| {
            let s = load(jail, None)?;
            for (header, body, connections) in [
                (
                    s.api.header_read_timeout_secs,
                    s.api.body_read_timeout_secs,
                    s.api.max_connections,
                ),
                (
                    s.ingress.header_read_timeout_secs,
                    s.ingress.body_read_timeout_secs,
                    s.ingress.max_connections,
                ),
            ] {
                assert_eq!((header, body, connections), (10, 30, 10_000));
            }
            for (var, bad, good) in [
                ("CRMSYNC__API__HEADER_READ_TIMEOUT_SECS", "0", "10"),
                ("CRMSYNC__INGRESS__BODY_READ_TIMEOUT_SECS", "3601", "30"),
                ("CRMSYNC__API__MAX_CONNECTIONS", "0", "10"),
                ("CRMSYNC__INGRESS__MAX_BODY_BYTES", "0", "1048576"),
                ("CRMSYNC__INGRESS__MAX_BODY_BYTES", "67108865", "1024"),
                ("CRMSYNC__API__TRUSTED_PROXIES", "[\"10.0.0.0/33\"]", "[]"),
                (
                    "CRMSYNC__API__TRUSTED_PROXIES",
                    "[\"proxy.internal\"]",
                    "[]",
                ),
                ("CRMSYNC__INGRESS__PUBLIC_URL", "hooks.example.com", ""),
                (
                    "CRMSYNC__INGRESS__PUBLIC_URL",
                    "https://hooks.example.com/?a=1",
                    "",
                ),
            ] {
                jail.set_env(var, bad);
                let err = load(jail, None).err().unwrap_or_default();
                assert!(err.contains(var), "{var}={bad}: {err}");
                jail.set_env(var, good);
            }
            jail.set_env("CRMSYNC__INGRESS__PUBLIC_URL", "https://hooks.example.com/");
            assert!(load(jail, None)?.ingress.public_url.is_some());
            jail.set_env(
                "CRMSYNC__API__TRUSTED_PROXIES",
                "[\"10.0.0.0/8\", \"fd00::1\"]",
            );
            assert_eq!(load(jail, None)?.api.trusted_proxies.len(), 2);
            Ok(())
        });
    }

    #[test]
    fn oauth_connect_keys_default_off_and_refuse_urls_with_a_query_or_no_scheme() {
        Jail::expect_with(|jail| {
            let s = load(jail, None)?;
            assert_eq!(s.api.public_url, None);
            assert!(s.api.oauth_redirect_allow.is_empty());
            assert_eq!(
                s.hubspot.authorize_url,
                "https://app.hubspot.com/oauth/authorize"
            );
            for (var, bad, good) in [
                ("CRMSYNC__API__PUBLIC_URL", "api.example.com", ""),
                ("CRMSYNC__API__PUBLIC_URL", "https://api.example.com/#x", ""),
                (
                    "CRMSYNC__API__OAUTH_REDIRECT_ALLOW",
                    "[\"https://app.example.com/?tab=1\"]",
                    "[]",
                ),
                (
                    "CRMSYNC__HUBSPOT__AUTHORIZE_URL",
                    "app.hubspot.com",
                    "https://x",
                ),
            ] {
                jail.set_env(var, bad);
                let err = load(jail, None).err().unwrap_or_default();
                assert!(err.contains(var), "{var}={bad}: {err}");
                jail.set_env(var, good);
            }
            jail.set_env("CRMSYNC__API__PUBLIC_URL", "https://api.example.com");
            jail.set_env(
                "CRMSYNC__API__OAUTH_REDIRECT_ALLOW",
                "[\"https://app.example.com/settings\", \"http://localhost:3000\"]",
            );
            let s = load(jail, None)?;
            assert_eq!(s.api.public_url.as_deref(), Some("https://api.example.com"));
            assert_eq!(s.api.oauth_redirect_allow.len(), 2);
            Ok(())
        });
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db/crm"),
            "postgres://app:***@db/crm"
        );
        assert_eq!(redact_url("sqlite://crmsync.db"), "sqlite://crmsync.db");
    }
}
