//! The sync harness: a CRM's sandbox (HubSpot's unless the test picks
//! another provider), a fresh store (a Postgres database of its own, reached
//! as an application role so row-level security is real, or an SQLite
//! file), a queue (Redis under a per-test namespace, or SQLite), a
//! connection to the CRM, and in-process or child-process workers.
//! `drain`-style helpers wait on state, never on fixed sleeps.

use crate::support::{PORTAL, TOKEN, TestSandbox};
use crmsync::config::{QueueBackend, Settings};
use crmsync::domain::{
    ConnectionId, CrmObject, ProviderKind, RecordKind, RunId, RunKind, RunStatus, TenantId,
};
use crmsync::jobs::{DeltaSyncJob, Deps, JobKind};
use crmsync::queue::{WorkerSpec, run_workers};
use crmsync::sandbox::hubspot::SandboxConfig;
use crmsync::secrets::EncryptionKey;
use crmsync::store::{Credentials, DeadLetter, RunRow, Store};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::Connection;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Which production shape a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Postgres store + Redis queue.
    Postgres,
    /// SQLite store + SQLite queue (the embedded mode).
    Sqlite,
}

/// Generates one test per backend from one async body taking a `Backend`.
macro_rules! on_both_backends {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body($backend: $crate::fleet::Backend) $body

            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres_and_redis() {
                body($crate::fleet::Backend::Postgres).await
            }

            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                body($crate::fleet::Backend::Sqlite).await
            }
        }
    };
}
pub(crate) use on_both_backends;

pub const APP_ROLE: &str = "crmsync_it_app";

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub(crate) fn with_database(url: &str, db: &str, user: Option<&str>) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (auth_host, _) = rest.split_once('/').unwrap_or((rest, ""));
    let host = auth_host.rsplit_once('@').map_or(auth_host, |(_, h)| h);
    let auth = match user {
        Some(u) => format!("{u}@"),
        None => auth_host
            .rsplit_once('@')
            .map_or(String::new(), |(a, _)| format!("{a}@")),
    };
    format!("{scheme}://{auth}{host}/{db}")
}

/// A fresh Postgres database, migrated as the owner; the returned URL logs
/// in as the application role.
/// The server is the one `admin` (a superuser URL) reaches.
pub async fn fresh_postgres_on(admin: &str) -> (String, String) {
    let admin_url = admin.to_string();
    let name = format!("crmsync_it_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("admin connection (DATABASE_URL)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    let owner_url = with_database(&admin_url, &name, None);
    Store::migrate(&owner_url).await.expect("migrate");
    // The login role: member of crmsync_app, neither owner nor RLS-exempt.
    let create = format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
             CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE crmsync_app;
           END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$"
    );
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut admin)
        .await
        .expect("app role");
    admin.close().await.ok();
    (
        name.clone(),
        with_database(&admin_url, &name, Some(APP_ROLE)),
    )
}

/// Drops a test database (best effort).
async fn drop_postgres_on(admin: &str, name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

/// The Redis and Postgres servers a fleet uses.
#[derive(Debug, Clone)]
pub struct Services {
    /// The Redis queue's URL.
    pub redis_url: String,
    /// A superuser URL of the Postgres server (databases are made there).
    pub admin_url: String,
}

impl Services {
    /// The servers every test shares (`REDIS_URL`, `DATABASE_URL`).
    pub fn shared() -> Self {
        Self {
            redis_url: redis_url(),
            admin_url: admin_url(),
        }
    }
}

/// The CRM a fleet syncs with: its provider and how its sandbox starts.
/// A new provider adds a variant carrying its sandbox's configuration, and
/// an arm in each `match` on it or on the provider here (starting its
/// sandbox, pointing the settings at it, connecting, subscribing ingress to
/// its webhooks): the compiler lists them.
#[derive(Debug, Clone)]
pub enum CrmSetup {
    /// HubSpot's sandbox, configured by the test.
    Hubspot(SandboxConfig),
}

impl CrmSetup {
    /// `provider`'s sandbox with limits too high to matter, no index lag,
    /// and `people` seeded.
    pub fn seeded(provider: ProviderKind, people: u64) -> Self {
        match provider {
            ProviderKind::Hubspot => Self::Hubspot(SandboxConfig {
                seed_contacts: people,
                ..SandboxConfig::for_tests()
            }),
        }
    }

    /// The provider this sets up.
    pub fn provider(&self) -> ProviderKind {
        match self {
            Self::Hubspot(_) => ProviderKind::Hubspot,
        }
    }
}

/// HubSpot tests configure its sandbox directly.
impl From<SandboxConfig> for CrmSetup {
    fn from(config: SandboxConfig) -> Self {
        Self::Hubspot(config)
    }
}

/// Connects the fleet's tenant to the account its CRM's sandbox opened at
/// start-up; answers the connection.
async fn connect(
    provider: ProviderKind,
    settings: &Settings,
    store: &Store,
    tenant: TenantId,
) -> ConnectionId {
    match provider {
        ProviderKind::Hubspot => {
            let credentials = Credentials::PrivateAppToken {
                token: SecretString::from(TOKEN),
            };
            let (connection, portal) =
                crmsync::cli::connect_hubspot_token(settings, store, tenant, credentials, None)
                    .await
                    .expect("connect");
            assert_eq!(portal, PORTAL);
            connection
        }
    }
}

/// A running test fleet.
pub struct Fleet {
    pub backend: Backend,
    /// The CRM the fleet's connection syncs with.
    pub provider: ProviderKind,
    pub settings: Settings,
    pub deps: Deps,
    pub store: Store,
    /// HubSpot's sandbox: the CRM of every fleet until a second provider's
    /// sandbox joins the harness (as a variant of [`CrmSetup`] and a field
    /// of its own here).
    pub sandbox: TestSandbox,
    pub tenant: TenantId,
    pub connection: ConnectionId,
    dir: PathBuf,
    database: Option<String>,
    services: Services,
    stop: Option<watch::Sender<bool>>,
    workers: Option<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// A fleet on HubSpot with `contacts` seeded in a fast sandbox and no
    /// workers yet.
    pub async fn start(backend: Backend, contacts: u64) -> Self {
        Self::start_crm(ProviderKind::Hubspot, backend, contacts).await
    }

    /// A fleet on `provider` with `people` seeded in its fast sandbox and
    /// no workers yet.
    pub async fn start_crm(provider: ProviderKind, backend: Backend, people: u64) -> Self {
        Self::with_sandbox(backend, CrmSetup::seeded(provider, people)).await
    }

    /// A fleet on a sandbox configured by the test.
    pub async fn with_sandbox(backend: Backend, crm: impl Into<CrmSetup>) -> Self {
        Self::on_services(backend, crm, Services::shared()).await
    }

    /// A fleet on servers of the test's choosing (its own, to restart them).
    pub async fn on_services(
        backend: Backend,
        crm: impl Into<CrmSetup>,
        services: Services,
    ) -> Self {
        let crm = crm.into();
        let provider = crm.provider();
        let sandbox = match crm {
            CrmSetup::Hubspot(config) => TestSandbox::with(config).await,
        };
        let dir =
            std::env::temp_dir().join(format!("crmsync-it-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut settings = Settings::defaults().expect("defaults");
        let mut database = None;
        match backend {
            Backend::Postgres => {
                let (name, url) = fresh_postgres_on(&services.admin_url).await;
                database = Some(name);
                settings.database.url = url;
                settings.redis.url = Some(services.redis_url.clone());
                settings.queue.backend = Some(QueueBackend::Redis);
            }
            Backend::Sqlite => {
                settings.database.url = format!("sqlite://{}", dir.join("crmsync.db").display());
                settings.queue.backend = Some(QueueBackend::Sqlite);
            }
        }
        settings.queue.namespace = format!("crmsync-it-{}", uuid::Uuid::now_v7().simple());
        // The SQLite queue polls at the shipped default (25 ms): each of
        // the workers' polls is a write to one SQLite file, and at 10 ms
        // they kept its writer busy enough to hold a queued push back for
        // 0.3–1 s now and then (the sparse-push test measures what users
        // get; at 25 ms its p99 is ~50 ms and its worst ~60 ms).
        settings.queue.poll_interval_ms = if backend == Backend::Sqlite { 25 } else { 10 };
        settings.queue.heartbeat_secs = 1;
        settings.queue.missed_heartbeats = 5;
        settings.worker.job_timeout_secs = 4;
        settings.worker.shutdown_grace_secs = 2;
        settings.secrets.encryption_key = Some(EncryptionKey::generate().expect("key"));
        match provider {
            ProviderKind::Hubspot => {
                settings.hubspot.api_base_url = sandbox.base.clone();
                settings.hubspot.client_secret = Some(SecretString::from(crate::support::SECRET));
                settings.hubspot.app_id = Some(crate::support::APP_ID);
                settings.hubspot.requests_per_10s = 1_000_000;
                settings.hubspot.search_requests_per_second = 1_000_000;
            }
        }
        settings.sync.delta_interval_secs = 3600;
        settings.sync.guard_secs = 0;
        let store = crmsync::app::open_store(&settings, false)
            .await
            .expect("store");
        if backend == Backend::Postgres {
            assert!(
                !store.bypasses_row_security().await.expect("probe"),
                "tests must not bypass RLS"
            );
        }
        let deps = crmsync::app::deps(&settings, store.clone())
            .await
            .expect("deps");
        let tenant = store.resolve_tenant(None).await.expect("tenant");
        let connection = connect(provider, &settings, &store, tenant).await;
        Self {
            backend,
            provider,
            settings,
            deps,
            store,
            sandbox,
            tenant,
            connection,
            dir,
            database,
            services,
            stop: None,
            workers: None,
        }
    }

    /// Rebuilds the fleet's settings and dependencies (before workers start).
    pub async fn rewire(&mut self, change: impl FnOnce(&mut Settings)) {
        let mut settings = self.settings.clone();
        change(&mut settings);
        let deps = crmsync::app::deps(&settings, self.store.clone())
            .await
            .expect("deps");
        let old = std::mem::replace(&mut self.deps, deps);
        old.queue.close().await;
        self.settings = settings;
    }

    /// Starts in-process workers for every job kind.
    pub fn start_workers(&mut self) {
        self.start_workers_for(JobKind::ALL);
    }

    /// Starts in-process workers for some job kinds only (to make one job
    /// run before another).
    pub fn start_workers_for(&mut self, kinds: &[JobKind]) {
        let (tx, rx) = watch::channel(false);
        let specs = kinds
            .iter()
            .map(|&kind| WorkerSpec {
                kind,
                concurrency: 2,
            })
            .collect::<Vec<_>>();
        let (queue, deps) = (self.deps.queue.clone(), self.deps.clone());
        self.workers = Some(tokio::spawn(async move {
            run_workers(&queue, deps, &specs, rx).await
        }));
        self.stop = Some(tx);
    }

    /// Stops in-process workers gracefully.
    pub async fn stop_workers(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(workers) = self.workers.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
        }
    }

    /// Environment for a child `crmsync-*` process on this fleet.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        let mut env = vec![
            ("CRMSYNC__DATABASE__URL".into(), s.database.url.clone()),
            (
                "CRMSYNC__QUEUE__NAMESPACE".into(),
                s.queue.namespace.clone(),
            ),
            (
                "CRMSYNC__QUEUE__POLL_INTERVAL_MS".into(),
                s.queue.poll_interval_ms.to_string(),
            ),
            (
                "CRMSYNC__QUEUE__HEARTBEAT_SECS".into(),
                s.queue.heartbeat_secs.to_string(),
            ),
            (
                "CRMSYNC__QUEUE__MISSED_HEARTBEATS".into(),
                s.queue.missed_heartbeats.to_string(),
            ),
            (
                "CRMSYNC__QUEUE__SQLITE_PATH".into(),
                s.queue.sqlite_path.clone(),
            ),
            (
                "CRMSYNC__WORKER__JOB_TIMEOUT_SECS".into(),
                s.worker.job_timeout_secs.to_string(),
            ),
            (
                "CRMSYNC__WORKER__SHUTDOWN_GRACE_SECS".into(),
                s.worker.shutdown_grace_secs.to_string(),
            ),
            (
                "CRMSYNC__HUBSPOT__API_BASE_URL".into(),
                s.hubspot.api_base_url.clone(),
            ),
            (
                "CRMSYNC__HUBSPOT__REQUESTS_PER_10S".into(),
                s.hubspot.requests_per_10s.to_string(),
            ),
            (
                "CRMSYNC__HUBSPOT__SEARCH_REQUESTS_PER_SECOND".into(),
                s.hubspot.search_requests_per_second.to_string(),
            ),
            ("CRMSYNC__TELEMETRY__LISTEN".into(), "127.0.0.1:0".into()),
            ("CRMSYNC__TELEMETRY__LOG_LEVEL".into(), "warn".into()),
        ];
        // Our app's id: how a worker knows its own writes in HubSpot's
        // property history and webhooks.
        if let Some(app_id) = s.hubspot.app_id {
            env.push(("CRMSYNC__HUBSPOT__APP_ID".into(), app_id.to_string()));
        }
        if let Some(key) = &s.secrets.encryption_key {
            env.push((
                "CRMSYNC__SECRETS__ENCRYPTION_KEY".into(),
                key.expose_secret().to_string(),
            ));
        }
        match self.backend {
            Backend::Postgres => {
                env.push((
                    "CRMSYNC__REDIS__URL".into(),
                    self.services.redis_url.clone(),
                ));
                env.push(("CRMSYNC__QUEUE__BACKEND".into(), "redis".into()));
            }
            Backend::Sqlite => env.push(("CRMSYNC__QUEUE__BACKEND".into(), "sqlite".into())),
        }
        env
    }

    /// A command for a `crmsync-*` binary on this fleet: the test's own
    /// crmsync configuration and `RUST_LOG` removed, the fleet's set.
    pub fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CRMSYNC") {
                command.env_remove(key);
            }
        }
        command.env_remove("RUST_LOG");
        command.current_dir(&self.dir);
        command.envs(self.child_env());
        command
    }

    /// Spawns a `crmsync-worker` child process for full syncs.
    pub fn spawn_worker_process(&self) -> Child {
        self.spawn_worker_process_for("full_sync,delta_sync")
    }

    /// Spawns a `crmsync-worker` child process for the job kinds `jobs`
    /// (its `--jobs`), to be killed with SIGKILL mid-job.
    pub fn spawn_worker_process_for(&self, jobs: &str) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_crmsync-worker"));
        command
            .args(["--jobs", jobs])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in self.child_env() {
            command.env(k, v);
        }
        command.env_remove("RUST_LOG");
        command.spawn().expect("spawn crmsync-worker")
    }

    /// Spawns a `crmsync-worker` child for full and delta syncs whose logs,
    /// at `level`, go to the file `log`.
    pub fn spawn_logging_worker(&self, log: &std::path::Path, level: &str) -> Child {
        let file = std::fs::File::create(log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_crmsync-worker"));
        command
            .args(["--jobs", "full_sync,delta_sync"])
            .current_dir(&self.dir)
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        for (k, v) in self.child_env() {
            command.env(k, v);
        }
        command.env("CRMSYNC__TELEMETRY__LOG_LEVEL", level);
        command.env_remove("RUST_LOG");
        command.spawn().expect("spawn crmsync-worker")
    }

    /// The fleet's database as its owner reaches it (Postgres only), for a
    /// dump that row-level security does not filter.
    pub fn owner_database_url(&self) -> Option<String> {
        self.database
            .as_ref()
            .map(|db| with_database(&self.services.admin_url, db, None))
    }

    /// Enqueues a push of the connection's pending platform changes.
    pub async fn enqueue_push(&self) {
        self.deps
            .queue
            .push_push_changes_after(&self.push_job(), Duration::ZERO)
            .await
            .expect("enqueue push");
    }

    /// A push of the connection with a trigger of its own (never a
    /// duplicate of another).
    fn push_job(&self) -> crmsync::jobs::PushChangesJob {
        crmsync::jobs::PushChangesJob {
            tenant: self.tenant,
            connection: self.connection,
            trigger: uuid::Uuid::now_v7().to_string(),
            attempt: 0,
            redrives: 0,
        }
    }

    /// Runs one push of the connection's pending platform changes
    /// in-process, now; answers the records it wrote. A record the CRM
    /// refuses is parked and does not fail the push.
    pub async fn push_now(&self) -> usize {
        crmsync::jobs::push_changes::run(&self.push_job(), &self.deps)
            .await
            .expect("a push with a refused record still succeeds")
    }

    /// The tenant's records parked now (open dead letters of one record,
    /// either direction).
    pub async fn parked(&self) -> Vec<DeadLetter> {
        self.store
            .list_dead_letters(self.tenant, false, None, None, 100)
            .await
            .expect("dead letters")
            .into_iter()
            .filter(|d| d.job_kind == "pull_record" || d.job_kind == "push_record")
            .collect()
    }

    /// Starts a full sync of the connection and returns its run.
    pub async fn start_full_sync(&self) -> RunRow {
        let runs = crmsync::cli::start_full_sync(&self.deps, self.tenant, self.connection)
            .await
            .expect("start full sync");
        runs.into_iter().next().expect("one object")
    }

    /// Waits (on state) until a run ends; fails the test after `limit`.
    pub async fn wait_run(&self, run: RunId, limit: Duration) -> RunRow {
        let started = Instant::now();
        loop {
            let row = self.store.run(self.tenant, run).await.expect("run");
            if row.status != RunStatus::Running {
                return row;
            }
            assert!(
                started.elapsed() < limit,
                "run {run} still running after {limit:?}: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a full sync through the queue and workers to its end.
    pub async fn full_sync(&self) -> RunRow {
        let run = self.start_full_sync().await;
        let row = self.wait_run(run.id, Duration::from_secs(240)).await;
        assert_eq!(row.status, RunStatus::Succeeded, "{row:?}");
        row
    }

    /// A delta sync of the connection's `object` (every object with
    /// `None`) with a trigger of its own.
    fn delta_job(&self, object: Option<CrmObject>) -> DeltaSyncJob {
        DeltaSyncJob {
            tenant: self.tenant,
            connection: self.connection,
            object,
            trigger: format!("test-{}", uuid::Uuid::now_v7()),
            attempt: 0,
            resume: None,
            redrives: 0,
        }
    }

    /// Enqueues a delta sync of every object of the connection, for the
    /// workers to run (and retry).
    pub async fn enqueue_delta(&self) {
        self.deps
            .queue
            .push_delta_sync(&self.delta_job(None))
            .await
            .expect("enqueue delta");
    }

    /// Runs delta syncs in-process until one catches up; returns the summed
    /// counts of its runs.
    pub async fn delta_sync(&self) -> RunRow {
        let mut job = self.delta_job(Some(CrmObject::Contacts));
        let mut total: Option<RunRow> = None;
        for _ in 0..50 {
            let outcome = crmsync::jobs::delta_sync::run(
                &job,
                &self.deps,
                &mut crmsync::jobs::DeltaProgress::default(),
            )
            .await
            .expect("delta sync");
            for id in &outcome.runs {
                let row = self.store.run(self.tenant, *id).await.expect("run");
                assert_eq!(row.kind, RunKind::DeltaSync);
                assert_eq!(row.status, RunStatus::Succeeded, "{row:?}");
                total = Some(match total {
                    None => row,
                    Some(mut t) => {
                        t.processed += row.processed;
                        t.created += row.created;
                        t.updated += row.updated;
                        t.unchanged += row.unchanged;
                        t.failed += row.failed;
                        t
                    }
                });
            }
            match outcome.resume {
                None => return total.expect("a delta run"),
                Some(resume) => job = job.follow_up(resume),
            }
        }
        panic!("delta sync did not catch up in 50 job runs");
    }

    /// The platform's leads as (email, firstname, jobtitle) sorted by email.
    pub async fn leads(&self) -> Vec<crmsync::domain::RecordFields> {
        self.store
            .records(self.tenant, RecordKind::Lead)
            .await
            .expect("records")
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    /// The current tenant's lead with `email` (any case), with its id.
    pub async fn lead_by_email(
        &self,
        email: &str,
    ) -> Option<(crmsync::domain::RecordId, crmsync::domain::RecordFields)> {
        let email = email.to_lowercase();
        self.store
            .records(self.tenant, RecordKind::Lead)
            .await
            .expect("records")
            .into_iter()
            .find(|(_, f)| f.normalized_email() == Some(email.as_str()))
    }

    /// The fields of the current tenant's lead with `email`; fails the
    /// test if there is none.
    pub async fn lead(&self, email: &str) -> crmsync::domain::RecordFields {
        let (_, fields) = self
            .lead_by_email(email)
            .await
            .unwrap_or_else(|| panic!("no platform lead {email}"));
        fields
    }

    /// The sandbox's contacts as the API lists them: id → properties.
    pub async fn sandbox_contacts(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let mut all = std::collections::BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = "/crm/v3/objects/contacts?limit=100&properties=email,firstname,lastname,jobtitle,company,phone".to_string();
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let reply = self.sandbox.get(&path).await;
            assert!(reply.status.is_success(), "{:?}", reply.body);
            for r in reply.body["results"].as_array().expect("results") {
                all.insert(
                    r["id"].as_str().expect("id").to_string(),
                    r["properties"].clone(),
                );
            }
            match reply.body["paging"]["next"]["after"].as_str() {
                Some(a) => after = Some(a.to_string()),
                None => return all,
            }
        }
    }

    /// Serves ingress for the fleet on a free port (routes published);
    /// with `subscribe`, the sandbox delivers every contact event to it.
    /// Returns its base URL.
    pub async fn start_ingress(&self, subscribe: bool) -> String {
        crmsync::app::publish_routes(&self.settings, &self.store)
            .await
            .expect("publish routes");
        let ingress = crmsync::app::ingress(&self.settings, self.deps.queue.clone())
            .await
            .expect("ingress");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let bound = listener.local_addr().expect("addr");
        let base = format!("http://{bound}");
        let app = ingress
            .router(self.settings.ingress.max_body_bytes, bound)
            .expect("ingress router");
        crmsync::http_server::spawn(
            listener,
            app,
            crmsync::http_server::ServerLimits::ingress(&self.settings.ingress),
        );
        if subscribe {
            self.subscribe(&base);
        }
        base
    }

    /// Has the CRM's sandbox deliver every event of the synced objects to
    /// the ingress at `base` (the app-wide route of the fleet's provider).
    fn subscribe(&self, base: &str) {
        let target = format!("{base}/webhooks/{}", self.provider);
        match self.provider {
            ProviderKind::Hubspot => self
                .sandbox
                .sandbox
                .subscribe_everything(&target)
                .expect("subscribe"),
        }
    }

    /// Readies a `crmsync-ingress` child process: publishes the routes and
    /// picks its port; returns the port and the environment it needs on
    /// top of [`Self::child_env`] (the app's secret and id, the listen
    /// address).
    pub async fn ingress_process_env(&self) -> (u16, Vec<(String, String)>) {
        crmsync::app::publish_routes(&self.settings, &self.store)
            .await
            .expect("publish routes");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let env = vec![
            (
                "CRMSYNC__HUBSPOT__CLIENT_SECRET".to_string(),
                crate::support::SECRET.to_string(),
            ),
            (
                "CRMSYNC__HUBSPOT__APP_ID".to_string(),
                crate::support::APP_ID.to_string(),
            ),
            (
                "CRMSYNC__INGRESS__LISTEN".to_string(),
                format!("127.0.0.1:{port}"),
            ),
        ];
        (port, env)
    }

    /// Waits for the ingress child on `port`, then has the sandbox deliver
    /// every event to it.
    pub async fn deliver_webhooks_to(&self, port: u16) {
        wait_for("ingress to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        self.subscribe(&format!("http://127.0.0.1:{port}"));
    }

    /// Ends the fleet and removes its database and files.
    pub async fn finish(mut self) {
        self.stop_workers().await;
        self.deps.queue.close().await;
        self.store.close().await;
        if let Some(db) = self.database.take() {
            drop_postgres_on(&self.services.admin_url, &db).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed (SIGKILL) when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asserts the platform holds exactly HubSpot's contacts, field by field:
/// the conformance suite's check, for tests of HubSpot alone.
pub async fn assert_mirrors_sandbox(fleet: &Fleet) {
    use crate::conformance::{assert_mirrors, crm::Crm};
    assert_mirrors(Crm::Hubspot, fleet).await;
}

/// Waits (on state) until `check` holds; fails the test after 15 s.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A tenant's client of a running api.
pub struct ApiClient {
    /// The api's base URL.
    pub base: String,
    /// The tenant's bearer token.
    pub token: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl ApiClient {
    /// Creates a lead; answers its id.
    pub async fn create_lead(&self, email: &str, first_name: &str) -> String {
        let (status, body, _) = self
            .send(
                reqwest::Method::POST,
                "/v1/leads",
                Some(serde_json::json!({"email": email, "firstName": first_name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_string()
    }

    /// Edits a lead's `fields` (the api's JSON names); it must succeed.
    pub async fn edit_lead(&self, lead: &str, fields: Value) {
        let path = format!("/v1/leads/{lead}");
        let (status, body, _) = self.send(reqwest::Method::PATCH, &path, Some(fields)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// The api's view of `connection` (its status, parked records, ...).
    pub async fn connection_view(&self, connection: ConnectionId) -> Value {
        let path = format!("/v1/connections/{connection}");
        let (status, view, _) = self.send(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        view
    }

    /// Sends a request; returns status, JSON body (or null) and content type.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("api request");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            content_type,
        )
    }
}

impl Fleet {
    /// Serves the api for this fleet on a free port; returns its base URL.
    pub async fn start_api(&self) -> String {
        let api = crmsync::app::api(&self.settings, self.store.clone(), self.deps.queue.clone())
            .await
            .expect("api");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        crmsync::http_server::spawn(
            listener,
            api.router(),
            crmsync::http_server::ServerLimits::api(&self.settings.api),
        );
        format!("http://{addr}")
    }

    /// Starts the api and a client for it with a token of the fleet's tenant.
    pub async fn start_api_client(&self) -> ApiClient {
        let base = self.start_api().await;
        let token = self.store.issue_token(self.tenant).await.expect("token");
        ApiClient {
            base,
            token,
            http: reqwest::Client::new(),
        }
    }
}
