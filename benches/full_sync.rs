//! Full-sync throughput against HubSpot's rate budget, with the worker's peak
//! memory, for 10,000 and 100,000 contacts side by side, at no CRM latency
//! and at 200 ms per call (what a real CRM takes for a list call).
//!
//! A full sync lists contacts in id ranges through HubSpot's search (four
//! partitions side by side, 200 records a page), which the sandbox limits
//! as HubSpot does: five search requests per second per account. No sync
//! can beat the floor `records ÷ (5 × 200) s`; the goal is to come within
//! 10 % of it whatever the latency (one page at a time, a 200 ms answer
//! alone would double the time), with no 429s, while a `crmsync-worker`
//! child process stays under 64 MB peak RSS, flat in the number of records.
//!
//! Then the fleet-wide budget: three `crmsync-worker` processes sharing one
//! HubSpot account, each running the full sync of its own connection (three
//! tenants connected to the same portal), all at once. Together they may
//! not beat the one account's floor (`3 × records ÷ 1,000 s`): the budget
//! is shared through Redis, not tripled — and tripled pacing would draw
//! 429s from the sandbox.
//!
//! Run: `cargo bench --bench full_sync` (Postgres + Redis on loopback, as in
//! production). `BENCH_BACKENDS=postgres,sqlite` adds the embedded shape;
//! `BENCH_SIZES=10000` runs a quick subset; `BENCH_SHARED_SIZES` sets the
//! contacts of the three-worker run (default 10,000; `0` skips it);
//! `BENCH_LATENCIES` the sandbox's per-call latency in ms (default `0,200`).

mod common;

use common::{drop_database, postgres_database};
use crmsync::config::{QueueBackend, Settings};
use crmsync::domain::RunStatus;
use crmsync::sandbox::hubspot::{Sandbox, SandboxConfig};
use crmsync::secrets::EncryptionKey;
use crmsync::store::Credentials;
use secrecy::{ExposeSecret, SecretString};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "pat-na1-00000000-0000-4000-8000-000000000000";
const PORTAL: u64 = 62515;
/// HubSpot's search limit per account per second (the sandbox's default).
const SEARCH_PER_SEC: u64 = 5;
/// Records per search page (HubSpot's maximum, crmsync's default).
const PAGE: u64 = 200;

struct Row {
    backend: &'static str,
    latency_ms: u64,
    workers: usize,
    records: u64,
    wall: Duration,
    floor: Duration,
    rate_limited: u64,
    peak_rss_mb: f64,
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A full sync of `records` contacts by each of `workers` worker processes
/// (one connection each, all to the one portal).
async fn run_one(
    backend: &'static str,
    records: u64,
    workers: usize,
    latency_ms: u64,
) -> anyhow::Result<Row> {
    let sandbox = Sandbox::new(SandboxConfig {
        seed_contacts: records,
        index_lag_ms: 0,
        latency_ms,
        ..SandboxConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let (addr, server) = sandbox.spawn("127.0.0.1:0".parse()?).await?;
    let dir = std::env::temp_dir().join(format!("crmsync-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let mut settings = Settings::defaults()?;
    let mut database = None;
    if backend == "postgres" {
        let (name, url) = postgres_database().await?;
        database = Some(name);
        settings.database.url = url;
        settings.redis.url =
            Some(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()));
        settings.queue.backend = Some(QueueBackend::Redis);
    } else {
        settings.database.url = format!("sqlite://{}", dir.join("crmsync.db").display());
        settings.queue.backend = Some(QueueBackend::Sqlite);
    }
    settings.queue.namespace = format!("crmsync-bench-{}", uuid::Uuid::now_v7().simple());
    settings.secrets.encryption_key = Some(EncryptionKey::generate()?);
    settings.hubspot.api_base_url = format!("http://{addr}");
    let store = crmsync::app::open_store(&settings, false).await?;
    let deps = crmsync::app::deps(&settings, store.clone()).await?;
    let mut connections = Vec::new();
    for n in 0..workers {
        let tenant = if n == 0 {
            store.resolve_tenant(None).await?
        } else {
            store.create_tenant(&format!("tenant-{n}")).await?.id
        };
        let credentials = Credentials::PrivateAppToken {
            token: SecretString::from(TOKEN),
        };
        let (connection, _) = crmsync::cli::connect_hubspot_token(
            &settings,
            &store,
            tenant,
            credentials,
            Some(PORTAL),
        )
        .await?;
        connections.push((tenant, connection));
    }
    let http = reqwest::Client::new();
    let mut children = Vec::new();
    for _ in 0..workers {
        children.push(spawn_worker(&settings, backend, &dir, &http).await?);
    }

    let started = Instant::now();
    let mut runs = Vec::new();
    for (tenant, connection) in &connections {
        let started_runs = crmsync::cli::start_full_sync(&deps, *tenant, *connection).await?;
        let run = started_runs
            .first()
            .ok_or_else(|| anyhow::anyhow!("no run"))?
            .id;
        runs.push((*tenant, run));
    }
    let mut last_report = Instant::now();
    let mut finished = Vec::new();
    while finished.len() < runs.len() {
        finished.clear();
        let mut processed = 0;
        for (tenant, run) in &runs {
            let row = store.run(*tenant, *run).await?;
            processed += row.processed;
            if row.status != RunStatus::Running {
                finished.push(row);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  {backend} {records} × {workers}: {processed} records after {:.0?}",
                started.elapsed()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed();
    let mut peak: f64 = 0.0;
    for (mut child, _) in children {
        peak = peak.max(peak_rss_mb(child.id()));
        let _ = child.kill();
        let _ = child.wait();
    }
    for done in &finished {
        anyhow::ensure!(
            done.status == RunStatus::Succeeded && done.created as u64 == records,
            "run ended badly: {done:?}"
        );
    }
    let counters: serde_json::Value = http
        .get(format!("http://{addr}/_sandbox/accounts/{PORTAL}/counters"))
        .send()
        .await?
        .json()
        .await?;
    let rate_limited = counters["rateLimited"].as_object().map_or(0, |m| {
        m.values().filter_map(serde_json::Value::as_u64).sum()
    });
    deps.queue.close().await;
    store.close().await;
    server.abort();
    if let Some(db) = database {
        drop_database(&db).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let total = records * workers as u64;
    let floor = Duration::from_secs_f64(total as f64 / (SEARCH_PER_SEC * PAGE) as f64);
    Ok(Row {
        backend,
        latency_ms,
        workers,
        records: total,
        wall,
        floor,
        rate_limited,
        peak_rss_mb: peak,
    })
}

/// Starts a `crmsync-worker` child for full-sync pages and waits for its
/// health endpoint; returns it with that port.
async fn spawn_worker(
    settings: &Settings,
    backend: &str,
    dir: &std::path::Path,
    http: &reqwest::Client,
) -> anyhow::Result<(std::process::Child, u16)> {
    let health = free_port()?;
    let mut worker = Command::new(env!("CARGO_BIN_EXE_crmsync-worker"));
    worker
        .args(["--jobs", "full_sync"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env_remove("RUST_LOG")
        .env("CRMSYNC__DATABASE__URL", &settings.database.url)
        .env("CRMSYNC__QUEUE__NAMESPACE", &settings.queue.namespace)
        .env("CRMSYNC__QUEUE__BACKEND", backend_queue(backend))
        .env(
            "CRMSYNC__HUBSPOT__API_BASE_URL",
            &settings.hubspot.api_base_url,
        )
        .env("CRMSYNC__TELEMETRY__LISTEN", format!("127.0.0.1:{health}"))
        .env("CRMSYNC__TELEMETRY__LOG_LEVEL", "warn");
    if let Some(key) = &settings.secrets.encryption_key {
        worker.env("CRMSYNC__SECRETS__ENCRYPTION_KEY", key.expose_secret());
    }
    if let Some(redis) = &settings.redis.url {
        worker.env("CRMSYNC__REDIS__URL", redis);
    }
    let child = worker.spawn()?;
    let ready = Instant::now();
    while http
        .get(format!("http://127.0.0.1:{health}/health"))
        .send()
        .await
        .is_err()
    {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(30),
            "worker did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, health))
}

fn backend_queue(backend: &str) -> &'static str {
    if backend == "postgres" {
        "redis"
    } else {
        "sqlite"
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backends: Vec<&'static str> = std::env::var("BENCH_BACKENDS")
        .unwrap_or_else(|_| "postgres".into())
        .split(',')
        .map(|b| {
            if b.trim() == "sqlite" {
                "sqlite"
            } else {
                "postgres"
            }
        })
        .collect();
    let sizes: Vec<u64> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let latencies: Vec<u64> = std::env::var("BENCH_LATENCIES")
        .unwrap_or_else(|_| "0,200".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let shared: Vec<u64> = std::env::var("BENCH_SHARED_SIZES")
        .unwrap_or_else(|_| "10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let mut rows = Vec::new();
    for latency in &latencies {
        for backend in &backends {
            for size in &sizes {
                eprintln!("full sync of {size} contacts on {backend}, {latency} ms per call…");
                rows.push(run_one(backend, *size, 1, *latency).await?);
            }
        }
        for size in &shared {
            eprintln!(
                "three workers, three full syncs of {size} contacts of one account, {latency} ms per call…"
            );
            rows.push(run_one("postgres", *size, 3, *latency).await?);
        }
    }
    println!();
    println!(
        "| CRM latency | store + queue | workers | records | wall | floor | wall ÷ floor | records/s | budget records/s | 429s | worker peak RSS |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let budget = (SEARCH_PER_SEC * PAGE) as f64;
        println!(
            "| {} ms | {} | {} | {} | {:.1} s | {:.1} s | {:.3} | {:.0} | {:.0} | {} | {:.1} MB |",
            r.latency_ms,
            if r.backend == "postgres" {
                "Postgres + Redis"
            } else {
                "SQLite + SQLite"
            },
            r.workers,
            r.records,
            r.wall.as_secs_f64(),
            r.floor.as_secs_f64(),
            r.wall.as_secs_f64() / r.floor.as_secs_f64(),
            r.records as f64 / r.wall.as_secs_f64(),
            budget,
            r.rate_limited,
            r.peak_rss_mb
        );
    }
    println!();
    println!(
        "Goals: wall within 10 % of the floor at any latency (ratio ≤ 1.1: ≥ 90 % of the budget used), no 429s, worker peak RSS ≤ 64 MB and flat from 10k to 100k; with three workers sharing the account, the same ratio against the one account's floor (the budget shared, not tripled)."
    );
    Ok(())
}
