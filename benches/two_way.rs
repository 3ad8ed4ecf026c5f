//! Issue #4's benchmark: webhook ingress throughput next to `redis-benchmark`,
//! two-way latency at 200 changes/s, and CRM API calls per webhook event under
//! a burst — all in one run, against the sandbox HubSpot over real HTTP on
//! loopback, on the production shape (Postgres store + Redis queue).
//!
//! 1. **Ingress.** `redis-benchmark -t lpush -P 1` at the load generator's
//!    concurrency gives the machine's Redis request rate; then keep-alive
//!    clients POST signed (v3) 10-event HubSpot batches to a running ingress
//!    with no workers. Goal: at least half of LPUSH's rate, no non-2xx. The
//!    same requests to a handler that only answers 204 show the load
//!    generator's own ceiling on this machine, and Redis's command counts and
//!    CPU show what each ingress request costs there.
//! 2. **Latency at 200 changes/s**, workers running. CRM → platform: sandbox
//!    user edits (control API), from the webhook's arrival at ingress (the
//!    sandbox's batching and delivery delay excluded; from the edit is shown
//!    too) until the platform's record holds the value. Platform → CRM: api
//!    PATCHes until the sandbox record holds the value. Visibility is sampled
//!    every 5 ms (the figures over-state by at most that). Goal: p99 ≤ 0.5 s.
//! 3. **CRM API calls per webhook event** under a burst on 2,000 records (one
//!    bulk update, then 2,000 separate edits): the sandbox's own request
//!    counters (the control API and this benchmark's in-process reads are not
//!    counted) ÷ events delivered. Goal ≤ 0.05; a fetch-per-event design
//!    makes 1.0.
//!
//! The sandbox enforces HubSpot's private-app budget (100 requests per
//! rolling 10 s) and crmsync is configured with the same, as in production.
//!
//! Run: `cargo bench --bench two_way`. Knobs: `BENCH_INGRESS_REQUESTS`
//! (20000), `BENCH_CONCURRENCY` (50), `BENCH_RATE` (200 changes/s),
//! `BENCH_SECONDS` (20 per direction), `BENCH_BURST` (2000), `BENCH_DRAIN_SECS`
//! (20: how long a change may take before it counts as not arrived),
//! `BENCH_RATE_LIMIT_PER_10S` (100). Needs `DATABASE_URL` (admin, creates
//! `crmsync_bench_*`), `REDIS_URL` and `redis-benchmark` on the PATH.

mod common;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use common::{db_url, drop_database, postgres_database};
use crmsync::config::{QueueBackend, Settings};
use crmsync::domain::{ConnectionId, RecordKind, RunStatus, TenantId};
use crmsync::jobs::{Deps, JobKind};
use crmsync::providers::Providers;
use crmsync::queue::{Queue, WorkerSpec, run_workers};
use crmsync::ratelimit::{Budgets, Waits};
use crmsync::sandbox::hubspot::state::lock;
use crmsync::sandbox::hubspot::{Sandbox, SandboxConfig};
use crmsync::secrets::EncryptionKey;
use crmsync::store::{Credentials, RecordQuery, Store};
use hmac::{KeyInit, Mac};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::Connection;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const TOKEN: &str = "pat-na1-00000000-0000-4000-8000-000000000000";
const PORTAL: u64 = 62515;
const APP_ID: u64 = 54321;
const SECRET: &str = "sandbox-client-secret";
/// How often visibility is sampled on either side.
const POLL: Duration = Duration::from_millis(5);
const GOAL_LATENCY_S: f64 = 0.5;
const GOAL_CALLS_PER_EVENT: f64 = 0.05;
const GOAL_LPUSH_SHARE: f64 = 0.5;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

async fn redis_conn() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(redis_url())?
        .get_multiplexed_async_connection()
        .await?)
}

/// Deletes every key under a queue namespace (jobs, routes, dedupe keys).
async fn purge_namespace(ns: &str) -> anyhow::Result<u64> {
    let mut conn = redis_conn().await?;
    let mut cursor = 0u64;
    let mut removed = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(2000)
            .query_async(&mut conn)
            .await?;
        for chunk in keys.chunks(500) {
            removed += redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<u64>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// Redis's own view: commands served by name (all clients) and its CPU seconds.
async fn redis_stats() -> anyhow::Result<(BTreeMap<String, u64>, f64)> {
    let mut conn = redis_conn().await?;
    let info: String = redis::cmd("INFO").arg("all").query_async(&mut conn).await?;
    let mut commands = BTreeMap::new();
    let mut cpu = 0.0;
    for line in info.lines() {
        if let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|r| r.split_once(':'))
            && let Some(calls) = rest.split(',').find_map(|f| f.strip_prefix("calls="))
        {
            commands.insert(name.to_string(), calls.trim().parse::<u64>().unwrap_or(0));
        }
        if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            cpu += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok((commands, cpu))
}

/// CPU seconds this process has used (user + system).
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// What the benchmark shares across its parts.
struct Ctx {
    settings: Settings,
    store: Store,
    tenant: TenantId,
    connection: ConnectionId,
    sandbox: Sandbox,
    sandbox_base: String,
    /// One budget registry for every part, as one long-lived worker process has.
    budgets: Arc<Budgets>,
    namespaces: Mutex<Vec<String>>,
    http: reqwest::Client,
}

/// Ingress, queue and (optionally) workers and the api on one queue namespace.
struct Fleet {
    deps: Deps,
    ingress_url: String,
    api_url: Option<String>,
    stop: watch::Sender<bool>,
    workers: Option<tokio::task::JoinHandle<()>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

/// Webhook arrivals at ingress: (objectId, jobtitle value) → first arrival.
type Arrivals = Arc<Mutex<HashMap<(u64, String), Instant>>>;

async fn tap_arrivals(State(arrivals): State<Arrivals>, request: Request, next: Next) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if let Ok(events) = serde_json::from_slice::<Vec<Value>>(&bytes) {
        let mut map = lock(&arrivals);
        for e in &events {
            if e["propertyName"] == "jobtitle"
                && let (Some(id), Some(v)) = (e["objectId"].as_u64(), e["propertyValue"].as_str())
            {
                map.entry((id, v.to_string())).or_insert(at);
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn serve(app: axum::Router) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    serve_on(listener, app)
}

fn serve_on(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, task))
}

impl Ctx {
    async fn fleet(
        &self,
        name: &str,
        workers: bool,
        tap: Option<Arrivals>,
        api: bool,
    ) -> anyhow::Result<Fleet> {
        let mut settings = self.settings.clone();
        settings.queue.namespace = format!("{}-{name}", self.settings.queue.namespace);
        lock(&self.namespaces).push(settings.queue.namespace.clone());
        let queue = Queue::connect(&settings, &crmsync::app::store_dir(&settings)).await?;
        let providers = Providers::new(&settings, self.budgets.clone())?;
        let deps = Deps {
            store: self.store.clone(),
            providers,
            queue: queue.clone(),
            settings: Arc::new(settings.clone()),
        };
        crmsync::app::publish_routes(&settings, &self.store).await?;
        let ingress = crmsync::app::ingress(&settings, queue.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut router = ingress.router(settings.ingress.max_body_bytes, listener.local_addr()?)?;
        if let Some(arrivals) = tap {
            router = router.layer(axum::middleware::from_fn_with_state(arrivals, tap_arrivals));
        }
        let (ingress_base, ingress_task) = serve_on(listener, router)?;
        let mut servers = vec![ingress_task];
        let api_url = if api {
            // Its own pool, as its own process has in production: the api
            // at 200 writes/s must not starve the workers of connections.
            let api_store = crmsync::app::open_store(&settings, false).await?;
            let app = crmsync::app::api(&settings, api_store, queue.clone())
                .await?
                .router();
            let (base, task) = serve(app).await?;
            servers.push(task);
            Some(base)
        } else {
            None
        };
        let (stop, shutdown) = watch::channel(false);
        let workers = workers.then(|| {
            // The README's production line: delta_sync=4, process_webhook=4, others 1.
            let specs = JobKind::ALL
                .iter()
                .map(|&kind| WorkerSpec {
                    kind,
                    concurrency: match kind {
                        JobKind::DeltaSync | JobKind::ProcessWebhook => 4,
                        _ => 1,
                    },
                })
                .collect::<Vec<_>>();
            let (queue, deps) = (queue.clone(), deps.clone());
            tokio::spawn(async move { run_workers(&queue, deps, &specs, shutdown).await })
        });
        Ok(Fleet {
            deps,
            ingress_url: format!("{ingress_base}/webhooks/hubspot"),
            api_url,
            stop,
            workers,
            servers,
        })
    }

    fn subscribe(&self, fleet: &Fleet) -> anyhow::Result<()> {
        self.sandbox
            .subscribe_everything(&fleet.ingress_url)
            .map_err(|e| anyhow::anyhow!("sandbox subscription: {:?}", e.body))
    }

    /// The sandbox's CRM API counters for the account (read in-process).
    fn counters(&self) -> Snapshot {
        let c = self.sandbox.counters(PORTAL).unwrap_or_default();
        Snapshot {
            requests: c.requests.clone(),
            rate_limited: c.rate_limited.values().sum(),
            events_delivered: c.webhooks.delivered_events,
            batches_delivered: c.webhooks.delivered_batches,
            failed_attempts: c.webhooks.failed_attempts,
        }
    }

    /// Waits until the sandbox has seen no CRM API request for `quiet`.
    async fn settle(&self, quiet: Duration, cap: Duration) -> bool {
        let started = Instant::now();
        let mut last = self.counters().total();
        let mut since = Instant::now();
        while started.elapsed() < cap {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.counters().total();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return true;
            }
        }
        false
    }
}

impl Fleet {
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(w) = self.workers.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
        }
        for s in &self.servers {
            s.abort();
        }
    }
}

#[derive(Clone, Default)]
struct Snapshot {
    requests: BTreeMap<String, u64>,
    rate_limited: u64,
    events_delivered: u64,
    batches_delivered: u64,
    failed_attempts: u64,
}

impl Snapshot {
    fn total(&self) -> u64 {
        self.requests.values().sum()
    }
    fn since(&self, before: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self
                .requests
                .iter()
                .map(|(k, v)| (k.clone(), v - before.requests.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
            rate_limited: self.rate_limited - before.rate_limited,
            events_delivered: self.events_delivered - before.events_delivered,
            batches_delivered: self.batches_delivered - before.batches_delivered,
            failed_attempts: self.failed_attempts - before.failed_attempts,
        }
    }
    fn breakdown(&self) -> String {
        self.requests
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Nearest-rank percentile; `None` (never seen) sorts last.
fn percentile(samples: &[Option<f64>], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().map(|s| s.unwrap_or(f64::INFINITY)).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn secs(s: f64) -> String {
    if s < 0.001 {
        format!("{:.2} ms", s * 1000.0)
    } else if s < 0.1 {
        format!("{:.1} ms", s * 1000.0)
    } else if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn pct(samples: &[Option<f64>], q: f64, cap: Duration) -> String {
    match percentile(samples, q) {
        Some(v) if v.is_finite() => secs(v),
        Some(_) => format!("> {}", secs(cap.as_secs_f64())),
        None => "–".into(),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

// ---------------------------------------------------------------------------
// Part 1: ingress throughput next to redis-benchmark

struct RedisBench {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    command: String,
}

fn redis_target() -> (String, u16, u32) {
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, "0"));
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
    (
        host.to_string(),
        port.parse().unwrap_or(6379),
        db.parse().unwrap_or(0),
    )
}

async fn redis_benchmark(clients: u64, requests: u64) -> anyhow::Result<RedisBench> {
    let (host, port, db) = redis_target();
    let mut conn = redis_conn().await?;
    // redis-benchmark's LPUSH writes the key `mylist`; refuse to clobber one.
    let exists: u64 = redis::cmd("EXISTS")
        .arg("mylist")
        .query_async(&mut conn)
        .await?;
    anyhow::ensure!(
        exists == 0,
        "Redis db {db} already has a key `mylist`, which redis-benchmark's LPUSH would grow"
    );
    let args: Vec<String> = vec![
        "-h".into(),
        host,
        "-p".into(),
        port.to_string(),
        "--dbnum".into(),
        db.to_string(),
        "-c".into(),
        clients.to_string(),
        "-n".into(),
        requests.to_string(),
        "-P".into(),
        "1".into(),
        "-t".into(),
        "lpush".into(),
        "--csv".into(),
    ];
    let command = format!("redis-benchmark {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-benchmark")
            .args(&args)
            .output()
    })
    .await??;
    let _: u64 = redis::cmd("DEL")
        .arg("mylist")
        .query_async(&mut conn)
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "redis-benchmark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with('"'))
        .map(|l| {
            l.split(',')
                .map(|f| f.trim_matches('"').to_string())
                .collect()
        })
        .collect();
    let header = rows
        .first()
        .ok_or_else(|| anyhow::anyhow!("no CSV from redis-benchmark: {text}"))?;
    let row = rows
        .iter()
        .find(|r| r.first().is_some_and(|t| t.starts_with("LPUSH")))
        .ok_or_else(|| anyhow::anyhow!("no LPUSH row from redis-benchmark: {text}"))?;
    let field = |name: &str| -> f64 {
        header
            .iter()
            .position(|h| h == name)
            .and_then(|i| row.get(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(RedisBench {
        rps: field("rps"),
        p50_ms: field("p50_latency_ms"),
        p99_ms: field("p99_latency_ms"),
        command,
    })
}

struct IngressLoad {
    requests: u64,
    wall: Duration,
    /// Redis commands served during the load, by name (INFO itself left out).
    redis_commands: BTreeMap<String, u64>,
    redis_cpu: f64,
    own_cpu: f64,
    latencies: Vec<Option<f64>>,
    non_2xx: u64,
    errors: u64,
}

/// Signed 10-event batches, each event unique (dedupe keeps them all).
fn signed_batches(url: &str, n: u64, first_event: u64) -> Vec<(Bytes, String, String)> {
    let now = chrono::Utc::now().timestamp_millis();
    (0..n)
        .map(|k| {
            let events: Vec<Value> = (0..10)
                .map(|j| {
                    let seq = first_event + k * 10 + j;
                    json!({
                        "eventId": seq,
                        "subscriptionId": 1 + j,
                        "portalId": PORTAL,
                        "appId": APP_ID,
                        "occurredAt": now,
                        "subscriptionType": "contact.propertyChange",
                        "attemptNumber": 0,
                        "objectId": 515_001_000 + seq % 5000,
                        "propertyName": "jobtitle",
                        "propertyValue": format!("load {seq}"),
                        "changeSource": "CRM_UI",
                        "sourceId": "userId:1",
                    })
                })
                .collect();
            let body = serde_json::to_vec(&events).unwrap_or_default();
            let ts = now.to_string();
            let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes())
                .expect("HMAC takes any key");
            mac.update(b"POST");
            mac.update(url.as_bytes());
            mac.update(&body);
            mac.update(ts.as_bytes());
            use base64::Engine;
            let signature =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            (Bytes::from(body), signature, ts)
        })
        .collect()
}

async fn drive_ingress(
    url: &str,
    batches: Vec<(Bytes, String, String)>,
    concurrency: u64,
) -> anyhow::Result<IngressLoad> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency as usize)
        .tcp_nodelay(true)
        .build()?;
    let requests = batches.len() as u64;
    let mut shares: Vec<Vec<(Bytes, String, String)>> =
        (0..concurrency).map(|_| Vec::new()).collect();
    for (i, b) in batches.into_iter().enumerate() {
        shares[i % concurrency as usize].push(b);
    }
    let non_2xx = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (commands_before, redis_cpu_before) = redis_stats().await?;
    let cpu_before = own_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let (client, url) = (client.clone(), url.to_string());
            let (non_2xx, errors) = (non_2xx.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(share.len());
                for (body, signature, ts) in share {
                    let t = Instant::now();
                    let reply = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-hubspot-signature-v3", signature)
                        .header("x-hubspot-request-timestamp", ts)
                        .body(body)
                        .send()
                        .await;
                    match reply {
                        Ok(r) => {
                            let ok = r.status().is_success();
                            let _ = r.bytes().await;
                            lat.push(Some(t.elapsed().as_secs_f64()));
                            if !ok {
                                non_2xx.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            lat.push(None);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests as usize);
    for t in tasks {
        latencies.extend(t.await?);
    }
    let wall = started.elapsed();
    let cpu = own_cpu() - cpu_before;
    let (commands_after, redis_cpu_after) = redis_stats().await?;
    Ok(IngressLoad {
        requests,
        wall,
        redis_commands: commands_after
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, n)| {
                (
                    name.clone(),
                    n - commands_before.get(name).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect(),
        redis_cpu: redis_cpu_after - redis_cpu_before,
        own_cpu: cpu,
        latencies,
        non_2xx: non_2xx.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    })
}

// ---------------------------------------------------------------------------
// Part 2 and 3: changes and when they become visible

/// Changes in flight: key → (expected value, index); when each was made and seen.
struct Tracker<K> {
    pending: HashMap<K, (String, usize)>,
    sent: Vec<Option<Instant>>,
    seen: Vec<Option<Instant>>,
}

impl<K: std::hash::Hash + Eq + Clone> Tracker<K> {
    fn new(n: usize) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            pending: HashMap::new(),
            sent: vec![None; n],
            seen: vec![None; n],
        }))
    }
}

fn outstanding<K>(t: &Mutex<Tracker<K>>) -> usize {
    lock(t).pending.len()
}

/// Samples the platform's records every [`POLL`]: one indexed query for the
/// records with a change in flight, on a connection of its own.
fn watch_platform(
    db: String,
    tracker: Arc<Mutex<Tracker<uuid::Uuid>>>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut pg = sqlx::PgConnection::connect(&db_url(&db, "postgres")).await?;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tick.tick().await;
            let ids: Vec<uuid::Uuid> = lock(&tracker).pending.keys().copied().collect();
            if ids.is_empty() {
                continue;
            }
            let at = Instant::now();
            let rows: Vec<(uuid::Uuid, Option<String>)> =
                sqlx::query_as("SELECT id, fields->>'jobTitle' FROM records WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&mut pg)
                    .await?;
            let mut t = lock(&tracker);
            for (id, value) in rows {
                if let Some((want, i)) = t.pending.get(&id).cloned()
                    && value.as_deref() == Some(want.as_str())
                {
                    t.seen[i] = Some(at);
                    t.pending.remove(&id);
                }
            }
        }
        Ok(())
    })
}

/// Samples the sandbox's records every [`POLL`], in-process (no HTTP, so no
/// request counter moves).
fn watch_sandbox(
    sandbox: Sandbox,
    tracker: Arc<Mutex<Tracker<u64>>>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let account = sandbox
            .state
            .account(PORTAL)
            .ok_or_else(|| anyhow::anyhow!("no sandbox account"))?;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tick.tick().await;
            let at = Instant::now();
            let mut t = lock(&tracker);
            let mut done = Vec::new();
            {
                let data = lock(&account.data);
                for (id, (want, i)) in &t.pending {
                    let holds = data
                        .contacts
                        .objects
                        .get(id)
                        .and_then(|o| o.values.get("jobtitle"))
                        .is_some_and(|v| v == want);
                    if holds {
                        done.push((*id, *i));
                    }
                }
            }
            for (id, i) in done {
                t.seen[i] = Some(at);
                t.pending.remove(&id);
            }
        }
        Ok(())
    })
}

async fn wait_until_seen<K>(tracker: &Mutex<Tracker<K>>, cap: Duration) -> bool {
    let started = Instant::now();
    while outstanding(tracker) > 0 {
        if started.elapsed() >= cap {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// One contact of the seeded set: its CRM id and platform record id.
#[derive(Clone)]
struct Pair {
    crm: u64,
    record: uuid::Uuid,
}

struct LatencyRun {
    n: usize,
    rate: f64,
    from_start: Vec<Option<f64>>,
    from_arrival: Vec<Option<f64>>,
    failed_writes: u64,
    calls: Snapshot,
}

fn latencies(sent: &[Option<Instant>], seen: &[Option<Instant>]) -> Vec<Option<f64>> {
    sent.iter()
        .zip(seen)
        .map(|(s, v)| match (s, v) {
            (Some(s), Some(v)) => Some(v.saturating_duration_since(*s).as_secs_f64()),
            _ => None,
        })
        .collect()
}

fn achieved_rate(sent: &[Option<Instant>]) -> f64 {
    let times: Vec<Instant> = sent.iter().flatten().copied().collect();
    match (times.iter().min(), times.iter().max()) {
        (Some(a), Some(b)) if b > a => (times.len() - 1) as f64 / (*b - *a).as_secs_f64(),
        _ => 0.0,
    }
}

async fn crm_to_platform(
    ctx: &Ctx,
    db: &str,
    pairs: &[Pair],
    rate: u64,
    drain: Duration,
) -> anyhow::Result<LatencyRun> {
    let arrivals: Arrivals = Arc::default();
    let fleet = ctx
        .fleet("crm", true, Some(arrivals.clone()), false)
        .await?;
    ctx.subscribe(&fleet)?;
    let before = ctx.counters();
    let tracker = Tracker::<uuid::Uuid>::new(pairs.len());
    let (stop, stopped) = watch::channel(false);
    let watcher = watch_platform(db.to_string(), tracker.clone(), stopped);
    let failed = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut edits = Vec::with_capacity(pairs.len());
    for (i, pair) in pairs.iter().enumerate() {
        tick.tick().await;
        let value = format!("crm edit {i}");
        {
            let mut t = lock(&tracker);
            t.pending.insert(pair.record, (value.clone(), i));
            t.sent[i] = Some(Instant::now());
        }
        let url = format!(
            "{}/_sandbox/accounts/{PORTAL}/objects/contacts/{}",
            ctx.sandbox_base, pair.crm
        );
        let (http, failed) = (ctx.http.clone(), failed.clone());
        edits.push(tokio::spawn(async move {
            let ok = http
                .patch(url)
                .json(&json!({"properties": {"jobtitle": value}}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for e in edits {
        let _ = e.await;
    }
    wait_until_seen(&tracker, drain).await;
    let _ = stop.send(true);
    watcher.await??;
    let calls = ctx.counters().since(&before);
    fleet.stop().await;
    let t = lock(&tracker);
    let arrivals = lock(&arrivals);
    let arrived: Vec<Option<Instant>> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| arrivals.get(&(p.crm, format!("crm edit {i}"))).copied())
        .collect();
    Ok(LatencyRun {
        n: pairs.len(),
        rate: achieved_rate(&t.sent),
        from_start: latencies(&t.sent, &t.seen),
        from_arrival: latencies(&arrived, &t.seen),
        failed_writes: failed.load(Ordering::Relaxed),
        calls,
    })
}

async fn platform_to_crm(
    ctx: &Ctx,
    pairs: &[Pair],
    rate: u64,
    drain: Duration,
) -> anyhow::Result<LatencyRun> {
    let fleet = ctx.fleet("platform", true, None, true).await?;
    ctx.subscribe(&fleet)?;
    let api = fleet.api_url.clone().unwrap_or_default();
    let token = ctx.store.issue_token(ctx.tenant).await?;
    let before = ctx.counters();
    let tracker = Tracker::<u64>::new(pairs.len());
    let (stop, stopped) = watch::channel(false);
    let watcher = watch_sandbox(ctx.sandbox.clone(), tracker.clone(), stopped);
    let failed = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut writes = Vec::with_capacity(pairs.len());
    for (i, pair) in pairs.iter().enumerate() {
        tick.tick().await;
        let value = format!("platform edit {i}");
        {
            let mut t = lock(&tracker);
            t.pending.insert(pair.crm, (value.clone(), i));
            t.sent[i] = Some(Instant::now());
        }
        let url = format!("{api}/v1/leads/{}", pair.record);
        let (http, failed, token) = (ctx.http.clone(), failed.clone(), token.clone());
        writes.push(tokio::spawn(async move {
            let ok = http
                .patch(url)
                .bearer_auth(token)
                .json(&json!({"jobTitle": value}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in writes {
        let _ = w.await;
    }
    wait_until_seen(&tracker, drain).await;
    let _ = stop.send(true);
    watcher.await??;
    // Let the echo webhooks of the last pushes be handled before counting.
    ctx.settle(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    let calls = ctx.counters().since(&before);
    fleet.stop().await;
    let t = lock(&tracker);
    Ok(LatencyRun {
        n: pairs.len(),
        rate: achieved_rate(&t.sent),
        from_start: latencies(&t.sent, &t.seen),
        from_arrival: Vec::new(),
        failed_writes: failed.load(Ordering::Relaxed),
        calls,
    })
}

struct Burst {
    label: &'static str,
    records: usize,
    applied: usize,
    wall: Duration,
    calls: Snapshot,
}

async fn bursts(
    ctx: &Ctx,
    db: &str,
    pairs: &[Pair],
    burst: usize,
    concurrency: u64,
    drain: Duration,
) -> anyhow::Result<Vec<Burst>> {
    let fleet = ctx.fleet("burst", true, None, false).await?;
    ctx.subscribe(&fleet)?;
    let mut out = Vec::new();
    for (label, range) in [
        ("one bulk update", 0..burst),
        ("separate user edits", burst..2 * burst),
    ] {
        let chunk = &pairs[range];
        ctx.settle(Duration::from_secs(2), Duration::from_secs(20))
            .await;
        let before = ctx.counters();
        let tracker = Tracker::<uuid::Uuid>::new(chunk.len());
        let (stop, stopped) = watch::channel(false);
        let watcher = watch_platform(db.to_string(), tracker.clone(), stopped);
        let started = Instant::now();
        if label == "one bulk update" {
            {
                let mut t = lock(&tracker);
                for (i, p) in chunk.iter().enumerate() {
                    t.pending.insert(p.record, (format!("burst #{}", p.crm), i));
                    t.sent[i] = Some(started);
                }
            }
            let ids: Vec<u64> = chunk.iter().map(|p| p.crm).collect();
            let reply = ctx
                .http
                .post(format!(
                    "{}/_sandbox/accounts/{PORTAL}/objects/contacts/bulk-update",
                    ctx.sandbox_base
                ))
                .json(
                    &json!({"ids": ids, "properties": {"jobtitle": "burst"}, "suffixWithId": true}),
                )
                .send()
                .await?;
            anyhow::ensure!(
                reply.status().is_success(),
                "bulk update: {}",
                reply.text().await?
            );
        } else {
            {
                let mut t = lock(&tracker);
                for (i, p) in chunk.iter().enumerate() {
                    t.pending.insert(p.record, (format!("edit burst {i}"), i));
                    t.sent[i] = Some(started);
                }
            }
            let next = Arc::new(AtomicU64::new(0));
            let chunk: Arc<Vec<Pair>> = Arc::new(chunk.to_vec());
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (next, chunk, http) = (next.clone(), chunk.clone(), ctx.http.clone());
                    let base = ctx.sandbox_base.clone();
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                            let Some(p) = chunk.get(i) else { return };
                            let _ = http
                                .patch(format!(
                                    "{base}/_sandbox/accounts/{PORTAL}/objects/contacts/{}",
                                    p.crm
                                ))
                                .json(
                                    &json!({"properties": {"jobtitle": format!("edit burst {i}")}}),
                                )
                                .send()
                                .await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }
        wait_until_seen(&tracker, drain).await;
        let wall = started.elapsed();
        let _ = stop.send(true);
        watcher.await??;
        // Calls made after the last change landed still count.
        ctx.settle(Duration::from_secs(1), Duration::from_secs(5))
            .await;
        let calls = ctx.counters().since(&before);
        let applied = lock(&tracker).seen.iter().flatten().count();
        out.push(Burst {
            label,
            records: chunk.len(),
            applied,
            wall,
            calls,
        });
    }
    fleet.stop().await;
    Ok(out)
}

// ---------------------------------------------------------------------------

struct Report {
    environment: Vec<String>,
    cores: usize,
    redis: RedisBench,
    null: IngressLoad,
    ingress: IngressLoad,
    concurrency: u64,
    crm: LatencyRun,
    platform: LatencyRun,
    bursts: Vec<Burst>,
    drain: Duration,
    target_rate: u64,
}

fn environment_lines() -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    vec![format!("{cores} cores ({cpu})")]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn versions(db: &str) -> (String, String) {
    let redis_version = async {
        let mut conn = redis_conn().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_string())
    }
    .await
    .unwrap_or_else(|| "?".into());
    let pg_version = async {
        let mut pg = sqlx::PgConnection::connect(&db_url(db, "postgres"))
            .await
            .ok()?;
        let (v,): (String,) = sqlx::query_as("SHOW server_version")
            .fetch_one(&mut pg)
            .await
            .ok()?;
        Some(v)
    }
    .await
    .unwrap_or_else(|| "?".into());
    (redis_version, pg_version)
}

async fn run(ctx_db: &mut Option<String>, namespaces: &mut Vec<String>) -> anyhow::Result<Report> {
    let ingress_requests = knob("BENCH_INGRESS_REQUESTS", 20_000);
    let concurrency = knob("BENCH_CONCURRENCY", 50).max(1);
    let rate = knob("BENCH_RATE", 200).max(1);
    let seconds = knob("BENCH_SECONDS", 20).max(1);
    let burst = knob("BENCH_BURST", 2000).max(1) as usize;
    let drain = Duration::from_secs(knob("BENCH_DRAIN_SECS", 20));
    let per_10s = knob("BENCH_RATE_LIMIT_PER_10S", 100).max(2);
    let changes = (rate * seconds) as usize;
    let contacts = changes.max(2 * burst) as u64;
    let mut environment = environment_lines();
    environment.push(format!("load average at start {}", loadavg()));

    eprintln!("setting up: sandbox with {contacts} contacts, Postgres, Redis…");
    let sandbox = Sandbox::new(SandboxConfig {
        seed_contacts: contacts,
        per_ten_seconds: per_10s,
        ..SandboxConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let (addr, _server) = sandbox.clone().spawn("127.0.0.1:0".parse()?).await?;
    let (db, url) = postgres_database().await?;
    *ctx_db = Some(db.clone());
    let mut settings = Settings::defaults()?;
    settings.database.url = url;
    settings.redis.url = Some(redis_url());
    settings.queue.backend = Some(QueueBackend::Redis);
    settings.queue.namespace = format!("crmsync-bench-{}", uuid::Uuid::now_v7().simple());
    // `connect` publishes routes under the base namespace.
    namespaces.push(settings.queue.namespace.clone());
    settings.secrets.encryption_key = Some(EncryptionKey::generate()?);
    settings.hubspot.api_base_url = format!("http://{addr}");
    settings.hubspot.client_secret = Some(SecretString::from(SECRET));
    settings.hubspot.app_id = Some(APP_ID);
    settings.hubspot.requests_per_10s = per_10s as u32;
    settings.worker.shutdown_grace_secs = 5;
    let store = crmsync::app::open_store(&settings, false).await?;
    let tenant = store.resolve_tenant(None).await?;
    let credentials = Credentials::PrivateAppToken {
        token: SecretString::from(TOKEN),
    };
    let (connection, _) =
        crmsync::cli::connect_hubspot_token(&settings, &store, tenant, credentials, Some(PORTAL))
            .await?;
    let ctx = Ctx {
        settings,
        store,
        tenant,
        connection,
        sandbox,
        sandbox_base: format!("http://{addr}"),
        budgets: Arc::new(Budgets::local(Waits::default())),
        namespaces: Mutex::new(Vec::new()),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
    };
    let (redis_version, pg_version) = versions(&db).await;
    environment.push(format!(
        "Redis {redis_version}, PostgreSQL {pg_version}, all on loopback; sandbox budget {per_10s} requests per rolling 10 s (crmsync configured the same)"
    ));
    let result = parts(
        &ctx,
        &db,
        ingress_requests,
        concurrency,
        rate,
        changes,
        burst,
        drain,
    )
    .await;
    namespaces.extend(lock(&ctx.namespaces).drain(..));
    let (redis, null, ingress, crm, platform, bursts) = result?;
    environment.push(format!("load average at end {}", loadavg()));
    ctx.store.close().await;
    Ok(Report {
        environment,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        redis,
        null,
        ingress,
        concurrency,
        crm,
        platform,
        bursts,
        drain,
        target_rate: rate,
    })
}

type Parts = (
    RedisBench,
    IngressLoad,
    IngressLoad,
    LatencyRun,
    LatencyRun,
    Vec<Burst>,
);

#[allow(clippy::too_many_arguments)]
async fn parts(
    ctx: &Ctx,
    db: &str,
    ingress_requests: u64,
    concurrency: u64,
    rate: u64,
    changes: usize,
    burst: usize,
    drain: Duration,
) -> anyhow::Result<Parts> {
    // Part 1: ingress alone (no workers), on a namespace of its own.
    eprintln!("part 1: redis-benchmark LPUSH, then ingress with {concurrency} clients…");
    let redis = redis_benchmark(concurrency, 200_000).await?;
    // The load generator's own ceiling: the same requests to a handler that
    // only reads the body and answers 204.
    let null_app = axum::Router::new().route(
        "/webhooks/hubspot",
        axum::routing::post(|_body: Bytes| async { axum::http::StatusCode::NO_CONTENT }),
    );
    let (null_base, null_task) = serve(null_app).await?;
    let null_url = format!("{null_base}/webhooks/hubspot");
    drive_ingress(&null_url, signed_batches(&null_url, 1_000, 1), concurrency).await?;
    let null = drive_ingress(
        &null_url,
        signed_batches(&null_url, ingress_requests, 1),
        concurrency,
    )
    .await?;
    null_task.abort();
    let fleet = ctx.fleet("ingress", false, None, false).await?;
    let warm = signed_batches(&fleet.ingress_url, 1_000, 1);
    drive_ingress(&fleet.ingress_url, warm, concurrency).await?;
    let batches = signed_batches(&fleet.ingress_url, ingress_requests, 1_000_000);
    let ingress = drive_ingress(&fleet.ingress_url, batches, concurrency).await?;
    let ns = fleet.deps.settings.queue.namespace.clone();
    fleet.stop().await;
    purge_namespace(&ns).await?;

    // Set-up for parts 2 and 3: link every contact by a full sync.
    eprintln!("full sync of the sandbox's contacts…");
    let setup = ctx.fleet("setup", true, None, false).await?;
    let runs = crmsync::cli::start_full_sync(&setup.deps, ctx.tenant, ctx.connection).await?;
    for run in &runs {
        let started = Instant::now();
        loop {
            let row = ctx.store.run(ctx.tenant, run.id).await?;
            if row.status != RunStatus::Running {
                anyhow::ensure!(
                    row.status == RunStatus::Succeeded,
                    "full sync failed: {row:?}"
                );
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "full sync too slow"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    setup.stop().await;
    let views = ctx
        .store
        .list_records(
            ctx.tenant,
            RecordKind::Lead,
            &RecordQuery {
                limit: 1_000_000,
                ..RecordQuery::default()
            },
        )
        .await?;
    let mut pairs: Vec<Pair> = views
        .iter()
        .filter_map(|v| {
            let link = v.links.first()?;
            Some(Pair {
                crm: link.crm_id.parse().ok()?,
                record: v.id.0,
            })
        })
        .collect();
    pairs.sort_by_key(|p| p.crm);
    anyhow::ensure!(
        pairs.len() >= changes.max(2 * burst),
        "only {} linked records",
        pairs.len()
    );

    eprintln!(
        "part 2: CRM → platform, {changes} user edits at {rate}/s (then up to {drain:?} to drain)…"
    );
    let crm = crm_to_platform(ctx, db, &pairs[..changes], rate, drain).await?;
    eprintln!("part 2: platform → CRM, {changes} api PATCHes at {rate}/s…");
    ctx.settle(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    let platform = platform_to_crm(ctx, &pairs[..changes], rate, drain).await?;
    eprintln!("part 3: bursts of {burst} edits…");
    let bursts = bursts(ctx, db, &pairs, burst, concurrency, drain).await?;
    Ok((redis, null, ingress, crm, platform, bursts))
}

fn print_report(r: &Report) {
    let ing = &r.ingress;
    let ing_rps = ing.requests as f64 / ing.wall.as_secs_f64();
    let share = ing_rps / r.redis.rps;
    let cap = Duration::from_secs(5);
    let crm_p99 = percentile(&r.crm.from_arrival, 0.99).unwrap_or(f64::INFINITY);
    let plat_p99 = percentile(&r.platform.from_start, 0.99).unwrap_or(f64::INFINITY);
    let unseen = |v: &[Option<f64>]| v.iter().filter(|x| x.is_none()).count();
    let calls = |run: &LatencyRun| run.calls.total() as f64 / run.n as f64;
    println!();
    println!("## Two-way benchmark (`cargo bench --bench two_way`)");
    println!();
    for line in &r.environment {
        println!("- {line}");
    }
    println!(
        "- visibility sampled every {} ms on both sides (latencies over-state by at most that); a change not visible {} s after the last write counts as not arrived",
        POLL.as_millis(),
        r.drain.as_secs()
    );
    println!();
    println!("| part | workload | result | goal | met |");
    println!("|---|---|---|---|---|");
    println!(
        "| Redis LPUSH (reference) | `{}` | {} req/s; p50 {:.2} ms, p99 {:.2} ms | — | — |",
        r.redis.command,
        thousands(r.redis.rps as u64),
        r.redis.p50_ms,
        r.redis.p99_ms
    );
    let null_rps = r.null.requests as f64 / r.null.wall.as_secs_f64();
    println!(
        "| load generator alone (reference) | the requests below to an axum handler that only reads the body and answers 204 | {} req/s; p50 {}, p99 {}; this process {:.1} CPU s over {:.1} s | — | — |",
        thousands(null_rps as u64),
        pct(&r.null.latencies, 0.5, cap),
        pct(&r.null.latencies, 0.99, cap),
        r.null.own_cpu,
        r.null.wall.as_secs_f64(),
    );
    println!(
        "| ingress throughput | {} keep-alive clients, {} signed 10-event batches; Redis dedupe + queue, no workers | {} req/s ({} events/s) = **{:.2} × LPUSH** ({:.2} × the load generator alone) | ≥ {GOAL_LPUSH_SHARE} × LPUSH | {} |",
        r.concurrency,
        thousands(ing.requests),
        thousands(ing_rps as u64),
        thousands(ing_rps as u64 * 10),
        share,
        ing_rps / null_rps,
        met(share >= GOAL_LPUSH_SHARE)
    );
    println!(
        "| ingress latency | same | p50 {}, p99 {} | — | — |",
        pct(&ing.latencies, 0.5, cap),
        pct(&ing.latencies, 0.99, cap)
    );
    println!(
        "| ingress cost | same | {:.1} Redis commands per request ({}); CPU over the {:.1} s: this process (ingress + load generator) {:.1} s, redis-server {:.1} s, of {:.1} s available | — | — |",
        ing.redis_commands.values().sum::<u64>() as f64 / ing.requests as f64,
        ing.redis_commands
            .iter()
            .filter(|(_, n)| **n * 10 >= ing.requests)
            .map(|(name, n)| format!("{name} {:.1}", *n as f64 / ing.requests as f64))
            .collect::<Vec<_>>()
            .join(", "),
        ing.wall.as_secs_f64(),
        ing.own_cpu,
        ing.redis_cpu,
        ing.wall.as_secs_f64() * r.cores as f64,
    );
    println!(
        "| ingress non-2xx | same | {} non-2xx, {} transport errors | 0 | {} |",
        ing.non_2xx,
        ing.errors,
        met(ing.non_2xx + ing.errors == 0)
    );
    println!(
        "| CRM → platform latency | {} sandbox user edits at {}/s (achieved {:.1}/s), distinct records; from the webhook's arrival at ingress to the platform record holding the value | p50 {}, **p99 {}**{} | p99 ≤ {GOAL_LATENCY_S} s | {} |",
        thousands(r.crm.n as u64),
        r.target_rate,
        r.crm.rate,
        pct(&r.crm.from_arrival, 0.5, r.drain),
        pct(&r.crm.from_arrival, 0.99, r.drain),
        match unseen(&r.crm.from_arrival) {
            0 => String::new(),
            n => format!("; {n} not arrived"),
        },
        met(crm_p99 <= GOAL_LATENCY_S)
    );
    println!(
        "| CRM → platform, from the edit | same, including the sandbox's batching window and delivery queue | p50 {}, p99 {} | (sandbox delay excluded above) | — |",
        pct(&r.crm.from_start, 0.5, r.drain),
        pct(&r.crm.from_start, 0.99, r.drain),
    );
    println!(
        "| platform → CRM latency | {} api `PATCH /v1/leads/{{id}}` at {}/s (achieved {:.1}/s), distinct records; from sending the PATCH to the sandbox record holding the value | p50 {}, **p99 {}**{}{} | p99 ≤ {GOAL_LATENCY_S} s | {} |",
        thousands(r.platform.n as u64),
        r.target_rate,
        r.platform.rate,
        pct(&r.platform.from_start, 0.5, r.drain),
        pct(&r.platform.from_start, 0.99, r.drain),
        match unseen(&r.platform.from_start) {
            0 => String::new(),
            n => format!("; {n} not arrived"),
        },
        match r.platform.failed_writes {
            0 => String::new(),
            n => format!("; {n} PATCHes failed"),
        },
        met(plat_p99 <= GOAL_LATENCY_S)
    );
    println!(
        "| CRM API calls per change at {}/s | the two runs above | CRM → platform {:.3} ({} calls for {} webhook deliveries, {} 429s); platform → CRM {:.3} ({} calls; {} echo deliveries, {} 429s) | — | — |",
        r.target_rate,
        calls(&r.crm),
        r.crm.calls.total(),
        r.crm.calls.batches_delivered,
        r.crm.calls.rate_limited,
        calls(&r.platform),
        r.platform.calls.total(),
        r.platform.calls.batches_delivered,
        r.platform.calls.rate_limited,
    );
    for b in &r.bursts {
        let events = b.calls.events_delivered.max(1) as f64;
        let per_event = b.calls.total() as f64 / events;
        println!(
            "| CRM API calls per webhook event, burst | {}: {} records ({} webhook events in {} deliveries); all on the platform after {:.1} s{} | **{:.4}** ({} calls) = {:.3} × a fetch-per-event design (1.0) | ≤ {GOAL_CALLS_PER_EVENT} | {} |",
            b.label,
            thousands(b.records as u64),
            thousands(b.calls.events_delivered),
            b.calls.batches_delivered,
            b.wall.as_secs_f64(),
            if b.applied < b.records {
                format!(" ({} not applied)", b.records - b.applied)
            } else {
                String::new()
            },
            per_event,
            b.calls.total(),
            per_event,
            met(per_event <= GOAL_CALLS_PER_EVENT && b.applied == b.records)
        );
    }
    println!();
    println!("CRM API calls by endpoint:");
    println!("- CRM → platform run: {}", or_none(r.crm.calls.breakdown()));
    println!(
        "- platform → CRM run: {}",
        or_none(r.platform.calls.breakdown())
    );
    for b in &r.bursts {
        println!("- burst, {}: {}", b.label, or_none(b.calls.breakdown()));
    }
    let failed: u64 = [&r.crm.calls, &r.platform.calls]
        .into_iter()
        .chain(r.bursts.iter().map(|b| &b.calls))
        .map(|c| c.failed_attempts)
        .sum();
    if failed > 0 {
        println!(
            "- {failed} webhook delivery attempts were refused or failed (the sandbox retried them)"
        );
    }
    if r.crm.failed_writes > 0 {
        println!("- {} sandbox user edits failed", r.crm.failed_writes);
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "none".into() } else { s }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let started = Instant::now();
    let mut db = None;
    let mut namespaces = Vec::new();
    let result = run(&mut db, &mut namespaces).await;
    for ns in &namespaces {
        if let Err(e) = purge_namespace(ns).await {
            eprintln!("could not purge Redis namespace {ns}: {e}");
        }
    }
    if let Some(db) = db {
        drop_database(&db).await;
    }
    let report = result?;
    print_report(&report);
    println!();
    println!("Run wall time {:.0} s.", started.elapsed().as_secs_f64());
    Ok(())
}
