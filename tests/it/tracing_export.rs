//! Spans over OTLP: a webhook travels from a `crmsync-ingress` process to a
//! `crmsync-worker` process, and the worker's job span continues the
//! ingress request's trace (same trace id, the request span as parent), as
//! received by a collector speaking OTLP/HTTP JSON.

use crate::fleet::{Backend, Fleet, Killed, wait_for};
use crate::support::PORTAL;
use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

/// One exported span: (service, name, trace id, span id, parent span id).
type Exported = (String, String, String, String, String);

/// A collector on a free port; returns its traces URL and what it received.
async fn collector() -> (String, Arc<Mutex<Vec<Exported>>>) {
    let spans: Arc<Mutex<Vec<Exported>>> = Arc::default();
    let sink = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let export: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut found = Vec::new();
                for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                    let service = resource["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or("")
                        .to_string();
                    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                        for span in scope["spans"].as_array().into_iter().flatten() {
                            let text = |k: &str| span[k].as_str().unwrap_or("").to_string();
                            found.push((
                                service.clone(),
                                text("name"),
                                text("traceId"),
                                text("spanId"),
                                text("parentSpanId"),
                            ));
                        }
                    }
                }
                sink.lock().map(|mut s| s.extend(found)).ok();
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, spans)
}

fn spawn(binary: &str, fleet: &Fleet, extra: &[(String, String)], args: &[&str]) -> Killed {
    let mut command = fleet.command(binary);
    command.envs(extra.iter().map(|(k, v)| (k, v)));
    Killed(
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_job_span_continues_the_trace_of_the_ingress_request_that_queued_it() {
    let mut fleet = Fleet::start(Backend::Postgres, 3).await;
    fleet.start_workers();
    fleet.full_sync().await;
    fleet.stop_workers().await;
    let (traces_url, spans) = collector().await;
    let (port, mut telemetry) = fleet.ingress_process_env().await;
    telemetry.extend([
        ("CRMSYNC__TELEMETRY__OTLP_ENDPOINT".to_string(), traces_url),
        (
            "CRMSYNC__TELEMETRY__OTLP_PROTOCOL".to_string(),
            "http/json".to_string(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ]);
    let _ingress = spawn(
        env!("CARGO_BIN_EXE_crmsync-ingress"),
        &fleet,
        &telemetry,
        &[],
    );
    let _worker = spawn(
        env!("CARGO_BIN_EXE_crmsync-worker"),
        &fleet,
        &telemetry,
        &["--jobs", "process_webhook"],
    );
    fleet.deliver_webhooks_to(port).await;

    let crm_id = fleet
        .sandbox_contacts()
        .await
        .into_keys()
        .next()
        .expect("a contact");
    let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}");
    let reply = fleet
        .sandbox
        .control(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"properties": {"jobtitle": "Traced"}})),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);

    wait_for("the job span under the request span", || async {
        let spans = spans.lock().map(|s| s.clone()).unwrap_or_default();
        spans.iter().any(|(service, name, trace, _, parent)| {
            service == "crmsync-worker"
                && name == "job"
                && spans.iter().any(|(s, n, t, id, _)| {
                    s == "crmsync-ingress" && n == "webhook.request" && t == trace && id == parent
                })
        })
    })
    .await;
    let spans = spans.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        spans
            .iter()
            .all(|(_, _, trace, id, _)| trace.len() == 32 && id.len() == 16),
        "W3C ids: {spans:?}"
    );
    fleet.finish().await;
}
