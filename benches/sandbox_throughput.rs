//! How fast the HubSpot sandbox serves the calls a sync makes, so it is never
//! the bottleneck of a benchmark. Prints a table: median requests/s over
//! three rounds per call, records/s, median latency, and the ratio to the
//! budget HubSpot grants (100 requests / 10 s; search 5 / s).
//!
//! Run: `cargo bench --bench sandbox_throughput` (client and server share
//! this machine's cores, so the figures are a floor).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crmsync::sandbox::hubspot::{Sandbox, SandboxConfig};
use crmsync::sandbox::rng::SplitMix64;
use serde_json::{Value, json};

const CONTACTS: u64 = 100_000;
const CLIENTS: usize = 16;
const ROUND: Duration = Duration::from_secs(3);
const TOKEN: &str = "pat-na1-00000000-0000-4000-8000-000000000000";

#[derive(Clone, Copy)]
enum Call {
    BatchRead,
    Search,
    List,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::BatchRead => "batch read (100 ids)",
            Call::Search => "search (200/page, sorted)",
            Call::List => "list (100/page)",
        }
    }
    fn records(self) -> u64 {
        match self {
            Call::BatchRead | Call::List => 100,
            Call::Search => 200,
        }
    }
    /// HubSpot's own ceiling for this call, requests per second.
    fn hubspot_budget(self) -> f64 {
        match self {
            Call::Search => 5.0,
            _ => 10.0,
        }
    }
}

async fn one(
    client: &reqwest::Client,
    base: &str,
    call: Call,
    rng: &mut SplitMix64,
    first_id: u64,
) -> bool {
    let request = match call {
        Call::BatchRead => {
            let inputs: Vec<Value> = (0..100)
                .map(
                    |_| json!({"id": (first_id + rng.below(CONTACTS as usize) as u64).to_string()}),
                )
                .collect();
            client
                .post(format!("{base}/crm/v3/objects/contacts/batch/read"))
                .json(&json!({"inputs": inputs, "properties": ["email", "firstname", "lastname"]}))
        }
        Call::Search => {
            let after = (rng.below(49) * 200).to_string();
            client.post(format!("{base}/crm/v3/objects/contacts/search")).json(&json!({
                "filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": "0"}]}],
                "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "properties": ["email", "lastmodifieddate"], "limit": 200, "after": after}))
        }
        Call::List => {
            let after = first_id + rng.below(CONTACTS as usize - 100) as u64;
            client.get(format!(
                "{base}/crm/v3/objects/contacts?limit=100&after={after}&properties=email"
            ))
        }
    };
    match request.bearer_auth(TOKEN).send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

async fn round(base: &str, call: Call, first_id: u64) -> (f64, Duration) {
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, base, stop) = (client.clone(), base.to_string(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(c as u64);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert!(
                    one(&client, &base, call, &mut rng, first_id).await,
                    "request failed"
                );
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / elapsed, all[all.len() / 2])
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = SandboxConfig { seed_contacts: CONTACTS, ..SandboxConfig::for_tests() };
        let seeding = Instant::now();
        let sandbox = Sandbox::new(config).expect("sandbox");
        let seeded = seeding.elapsed();
        let (addr, _server) = sandbox.spawn("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let base = format!("http://{addr}");
        let first_id = 1000 + (62515 % 1000) * 1_000_000;
        println!("HubSpot sandbox throughput: {CONTACTS} contacts (seeded in {:.1} s), {CLIENTS} concurrent clients, 3 rounds of {} s, {} cores shared by client and server", seeded.as_secs_f64(), ROUND.as_secs(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        println!();
        println!("| call | median req/s | records/s | median latency | HubSpot budget req/s | sandbox ÷ budget |");
        println!("|---|---:|---:|---:|---:|---:|");
        for call in [Call::BatchRead, Call::Search, Call::List] {
            let mut rounds = Vec::new();
            for _ in 0..3 {
                rounds.push(round(&base, call, first_id).await);
            }
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (rps, latency) = rounds[1];
            println!(
                "| {} | {:.0} | {:.0} | {:.1} ms | {} | {:.0}× |",
                call.name(),
                rps,
                rps * call.records() as f64,
                latency.as_secs_f64() * 1000.0,
                call.hubspot_budget(),
                rps / call.hubspot_budget()
            );
        }
    });
}
