//! The sync harness: a sandbox HubSpot, a fresh store (a Postgres database of
//! its own, reached as an application role so row-level security is real, or
//! an SQLite file), a queue (Redis under a per-test namespace, or SQLite), a
//! connection, and in-process or child-process workers. `drain`-style helpers
//! wait on state, never on fixed sleeps.

use crate::support::{PORTAL, TOKEN, TestSandbox};
use crmsync::config::{QueueBackend, Settings};
use crmsync::domain::{ConnectionId, CrmObject, RecordKind, RunId, RunKind, RunStatus, TenantId};
use crmsync::jobs::{DeltaSyncJob, Deps, JobKind};
use crmsync::queue::{WorkerSpec, run_workers};
use crmsync::sandbox::hubspot::SandboxConfig;
use crmsync::secrets::EncryptionKey;
use crmsync::store::{Credentials, RunRow, Store};
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

/// A running test fleet.
pub struct Fleet {
    pub backend: Backend,
    pub settings: Settings,
    pub deps: Deps,
    pub store: Store,
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
    /// A fleet with `contacts` seeded in a fast sandbox and no workers yet.
    pub async fn start(backend: Backend, contacts: u64) -> Self {
        Self::with_sandbox(
            backend,
            SandboxConfig {
                seed_contacts: contacts,
                ..SandboxConfig::for_tests()
            },
        )
        .await
    }

    /// A fleet on a sandbox configured by the test.
    pub async fn with_sandbox(backend: Backend, config: SandboxConfig) -> Self {
        Self::on_services(backend, config, Services::shared()).await
    }

    /// A fleet on servers of the test's choosing (its own, to restart them).
    pub async fn on_services(backend: Backend, config: SandboxConfig, services: Services) -> Self {
        let sandbox = TestSandbox::with(config).await;
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
        settings.hubspot.api_base_url = sandbox.base.clone();
        settings.hubspot.client_secret = Some(SecretString::from(crate::support::SECRET));
        settings.hubspot.app_id = Some(crate::support::APP_ID);
        settings.hubspot.requests_per_10s = 1_000_000;
        settings.hubspot.search_requests_per_second = 1_000_000;
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
        let credentials = Credentials::PrivateAppToken {
            token: SecretString::from(TOKEN),
        };
        let (connection, portal) =
            crmsync::cli::connect_hubspot_token(&settings, &store, tenant, credentials, None)
                .await
                .expect("connect");
        assert_eq!(portal, PORTAL);
        Self {
            backend,
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

    /// Starts in-process workers for every job kind.
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_crmsync-worker"));
        command
            .args(["--jobs", "full_sync,delta_sync"])
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
        let job = crmsync::jobs::PushChangesJob {
            tenant: self.tenant,
            connection: self.connection,
            trigger: uuid::Uuid::now_v7().to_string(),
            attempt: 0,
            redrives: 0,
        };
        self.deps
            .queue
            .push_push_changes_after(&job, Duration::ZERO)
            .await
            .expect("enqueue push");
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

    /// Runs delta syncs in-process until one catches up; returns the summed
    /// counts of its runs.
    pub async fn delta_sync(&self) -> RunRow {
        let mut job = DeltaSyncJob {
            tenant: self.tenant,
            connection: self.connection,
            object: Some(CrmObject::Contacts),
            trigger: format!("test-{}", uuid::Uuid::now_v7()),
            attempt: 0,
            resume: None,
            redrives: 0,
        };
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
            self.sandbox
                .sandbox
                .subscribe_everything(&format!("{base}/webhooks/hubspot"))
                .expect("subscribe");
        }
        base
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
        self.sandbox
            .sandbox
            .subscribe_everything(&format!("http://127.0.0.1:{port}/webhooks/hubspot"))
            .expect("subscribe");
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

/// Asserts the platform holds exactly the sandbox's contacts, field by field.
pub async fn assert_mirrors_sandbox(fleet: &Fleet) {
    let sandbox = fleet.sandbox_contacts().await;
    let linked: std::collections::BTreeSet<String> = fleet
        .store
        .linked_crm_ids(fleet.tenant, fleet.connection, CrmObject::Contacts)
        .await
        .expect("links")
        .into_iter()
        .collect();
    let expected: std::collections::BTreeSet<String> = sandbox.keys().cloned().collect();
    assert_eq!(linked.len(), expected.len(), "one link per CRM record");
    assert!(linked == expected, "links differ from the sandbox's ids");
    let leads = fleet.leads().await;
    assert_eq!(
        leads.len(),
        sandbox.len(),
        "one platform lead per CRM contact, no more"
    );
    let by_email: std::collections::BTreeMap<String, &crmsync::domain::RecordFields> = leads
        .iter()
        .map(|f| (f.normalized_email().unwrap_or_default().to_string(), f))
        .collect();
    use crmsync::domain::CanonicalField as F;
    for props in sandbox.values() {
        let email = props["email"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_lowercase();
        let lead = by_email
            .get(&email)
            .unwrap_or_else(|| panic!("no lead for {email}"));
        for (field, property) in [
            (F::FirstName, "firstname"),
            (F::LastName, "lastname"),
            (F::JobTitle, "jobtitle"),
        ] {
            let want = props[property]
                .as_str()
                .map(str::trim)
                .filter(|s| !s.is_empty());
            assert_eq!(lead.get(field), want, "{email}: {property}");
        }
    }
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
