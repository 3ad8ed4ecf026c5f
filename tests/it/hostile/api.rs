//! Hostile input: api. Every value is refused at the boundary with a 400
//! naming the field (never a 503, a panic or a stored value the CRM then
//! refuses); a tenant's settings cannot stop the scheduler for the others;
//! unknown tokens cost the database nothing and are rate-limited; every
//! refusal is problem+json.

use super::wire::{assert_capped_at_two, drip_body, drip_headers};
use crate::fleet::{ApiClient, Backend, Fleet, on_both_backends};
use crate::scheduler::more_connections;
use crmsync::config::Settings;
use crmsync::domain::RecordKind;
use crmsync::jobs::{DeltaSyncJob, JobKind};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use std::net::SocketAddr;

/// Asserts a problem+json 400 whose `errors` name `field`.
fn assert_field_refused(status: StatusCode, problem: &Value, content_type: &str, field: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {problem}");
    assert_eq!(content_type, "application/problem+json", "{problem}");
    assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains(field)),
        "{problem}"
    );
}

/// Runs one statement with its binds as the fleet's owner, on either
/// backend (each needs its own typed query).
macro_rules! owner_query {
    ($owner:expr, $sql:expr $(, $bind:expr)* $(,)?) => {
        match $owner {
            Owner::Postgres(c) => sqlx::query($sql)$(.bind($bind))*.execute(c).await.map(|r| r.rows_affected()),
            Owner::Sqlite(c) => sqlx::query($sql)$(.bind($bind))*.execute(c).await.map(|r| r.rows_affected()),
        }
    };
}

/// The fleet's database as its owner sees it, past the api and row-level
/// security: what a restored backup or a manual fix could hold.
enum Owner {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Owner {
    async fn connect(fleet: &Fleet) -> Self {
        match fleet.backend {
            Backend::Postgres => Owner::Postgres(
                sqlx::PgConnection::connect(&fleet.owner_database_url().expect("owner url"))
                    .await
                    .expect("owner connection"),
            ),
            Backend::Sqlite => Owner::Sqlite(
                sqlx::SqliteConnection::connect(&fleet.settings.database.url)
                    .await
                    .expect("sqlite connection"),
            ),
        }
    }

    async fn execute(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Owner::Postgres(c) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Owner::Sqlite(c) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    /// Sets a connection's delta interval, as the owner.
    async fn set_interval(
        &mut self,
        connection: uuid::Uuid,
        secs: i64,
    ) -> Result<u64, sqlx::Error> {
        let sql =
            "UPDATE connections SET delta_interval_secs = $1, next_delta_at = NULL WHERE id = $2";
        owner_query!(self, sql, secs, connection)
    }
}

/// A body that is refused, the field it must name.
fn record_refusals() -> Vec<(Value, &'static str)> {
    vec![
        // HubSpot refuses it; the HTML rule does too.
        (json!({"email": "a@@b"}), "email"),
        (json!({"email": "a b@c.d"}), "email"),
        // Postgres cannot hold it (a 503 before).
        (json!({"firstName": "A\u{0000}B"}), "firstName"),
        (json!({"company": "Acme\u{1b}[31m"}), "company"),
        // 501 characters (1,002 bytes): characters count, not bytes.
        (json!({"company": "é".repeat(501)}), "company"),
        (json!({"status": "hot"}), "status"),
        (json!({"email": 5}), "email"),
        (json!({"shoeSize": 9}), "shoeSize"),
    ]
}

on_both_backends! {
    async fn record_values_are_refused_with_the_field_named_and_nothing_is_stored(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        let leads = || async { fleet.store.records(fleet.tenant, RecordKind::Lead).await.expect("records").len() };

        for path in ["/v1/leads", "/v1/contacts"] {
            for (body, field) in record_refusals() {
                let (status, problem, content_type) = api.send(Method::POST, path, Some(body.clone())).await;
                assert_field_refused(status, &problem, &content_type, field);
            }
            // Not an object, or an object with nothing in it: no empty record.
            for body in [json!([]), json!({}), json!({"firstName": "  ", "email": null})] {
                let (status, problem, content_type) = api.send(Method::POST, path, Some(body.clone())).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {problem}");
                assert_eq!(content_type, "application/problem+json");
            }
        }
        assert_eq!(leads().await, 0, "nothing refused was stored");
        let contacts = fleet.store.records(fleet.tenant, RecordKind::Contact).await.expect("records");
        assert!(contacts.is_empty(), "no contact either: {contacts:?}");

        // At the limits: 500 characters of two bytes each, a phone number as
        // free text, tab and line breaks as text.
        let (status, lead, _) = api.send(Method::POST, "/v1/leads", Some(json!({
            "email": "First.Last+tag@Sub.Example.com",
            "company": "é".repeat(500),
            "phone": "+1 (555) 010-9999 ext. 7 / ask for Ada",
            "jobTitle": "Head of\tThings\nEurope",
        }))).await;
        assert_eq!(status, StatusCode::CREATED, "{lead}");
        assert_eq!(lead["email"], "first.last+tag@sub.example.com");
        let id = lead["id"].as_str().expect("id").to_string();

        // A PATCH is held to the same rules and changes nothing when refused.
        for (body, field) in record_refusals() {
            let (status, problem, content_type) = api.send(Method::PATCH, &format!("/v1/leads/{id}"), Some(body)).await;
            assert_field_refused(status, &problem, &content_type, field);
        }
        let (status, problem, _) = api.send(Method::PATCH, &format!("/v1/leads/{id}"), Some(json!([]))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        let (_, same, _) = api.send(Method::GET, &format!("/v1/leads/{id}"), None).await;
        assert_eq!(same["email"], "first.last+tag@sub.example.com", "{same}");
        assert_eq!(same["updatedAt"], lead["updatedAt"], "{same}");

        // Filters are held to the same rules (a NUL was a 503).
        let (status, problem, content_type) = api.send(Method::GET, "/v1/leads?status=%00", None).await;
        assert_field_refused(status, &problem, &content_type, "status");

        // History: an id that is no lead of the tenant is a 404, not [].
        let (status, history, _) = api.send(Method::GET, &format!("/v1/leads/{id}/history"), None).await;
        assert_eq!(status, StatusCode::OK, "{history}");
        for path in [
            format!("/v1/leads/{}/history", uuid::Uuid::now_v7()),
            format!("/v1/contacts/{id}/history"),
            "/v1/leads/not-an-id/history".to_string(),
        ] {
            let (status, problem, content_type) = api.send(Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {problem}");
            assert_eq!(content_type, "application/problem+json");
        }
        fleet.finish().await;
    }
}

/// Values no number setting accepts.
fn extreme_numbers() -> Vec<Value> {
    vec![
        json!(0),
        json!(4),
        json!(86_401),
        json!(u64::MAX),
        json!(9_223_372_036_854_775_808u64),
        json!(-1),
        json!(1.5),
        json!("60"),
        Value::Null,
    ]
}

on_both_backends! {
    async fn no_tenant_setting_stops_the_scheduler_for_the_others(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        let path = format!("/v1/connections/{}", fleet.connection);
        let (_, before, _) = api.send(Method::GET, &path, None).await;
        assert_eq!(before["deltaIntervalSecs"], 3600, "{before}");

        for value in extreme_numbers() {
            let (status, problem, content_type) = api.send(Method::PATCH, &path, Some(json!({"deltaIntervalSecs": value}))).await;
            assert_field_refused(status, &problem, &content_type, "deltaIntervalSecs");
            let create = json!({"provider": "hubspot", "privateAppToken": crate::support::TOKEN, "deltaIntervalSecs": value});
            let (status, problem, content_type) = api.send(Method::POST, "/v1/connections", Some(create)).await;
            assert_field_refused(status, &problem, &content_type, "deltaIntervalSecs");
            // Not the token's portal (62515), or no portal id at all.
            let create = json!({"provider": "hubspot", "privateAppToken": crate::support::TOKEN, "portalId": value});
            let (status, problem, content_type) = api.send(Method::POST, "/v1/connections", Some(create)).await;
            assert_field_refused(status, &problem, &content_type, "portalId");
        }
        for list in ["/v1/leads", "/v1/contacts", "/v1/sync-runs", "/v1/conflicts", "/v1/dead-letters"] {
            for limit in ["0", "201", "-1", "1.5", "abc", "99999999999999999999", ""] {
                let (status, problem, content_type) = api.send(Method::GET, &format!("{list}?limit={limit}"), None).await;
                assert_field_refused(status, &problem, &content_type, "limit");
            }
        }
        // Nothing was stored: the interval is the same, no connection is new.
        let (_, after, _) = api.send(Method::GET, &path, None).await;
        assert_eq!(after["deltaIntervalSecs"], 3600, "{after}");
        let (_, all, _) = api.send(Method::GET, "/v1/connections", None).await;
        assert_eq!(all["data"].as_array().map(Vec::len), Some(1), "{all}");
        // The bounds themselves are fine.
        for secs in [5, 86_400] {
            let (status, body, _) = api.send(Method::PATCH, &path, Some(json!({"deltaIntervalSecs": secs}))).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["deltaIntervalSecs"], secs);
        }

        // Past the api, the database refuses such a row as well...
        let mut owner = Owner::connect(&fleet).await;
        let connection = fleet.connection.0;
        assert!(owner.set_interval(connection, i64::MAX).await.is_err(), "the database holds the range");
        // ...but one written before the check existed (dropped here to make
        // one) is scheduled at the nearest bound, and the other tenants'
        // deltas are claimed with it.
        match backend {
            Backend::Postgres => owner.execute("ALTER TABLE connections DROP CONSTRAINT connections_delta_interval_range").await,
            Backend::Sqlite => owner.execute("DROP TRIGGER connections_delta_interval_range_update").await,
        }
        .expect("drop the check");
        assert_eq!(owner.set_interval(connection, i64::MAX).await.expect("legacy row"), 1);
        let others = more_connections(&fleet, 3).await;
        let scheduler = crate::scheduler::replica(&fleet).await;
        let metrics = crmsync::telemetry::metrics().expect("a metrics recorder");
        let (claimed, logged) = logged(crmsync::scheduler::tick(&scheduler)).await;
        let claimed = claimed.expect("the tick claims despite the row");
        assert_eq!(claimed, others.len() + 1, "every due delta is claimed, the odd row's too");
        // Reported: a warning naming the connection, and the metric.
        assert!(
            logged.contains("delta interval out of range") && logged.contains(&fleet.connection.to_string()),
            "{logged}"
        );
        assert!(
            metrics.render().contains(r#"crmsync_scheduler_bad_rows_total{reason="delta_interval_out_of_range"} 1"#),
            "{}",
            metrics.render()
        );
        assert_eq!(crmsync::scheduler::tick(&scheduler).await.expect("tick"), 0, "each is due again only after its interval");
        crate::scheduler::close(scheduler).await;
        fleet.finish().await;
    }
}

/// Sends raw bytes over HTTP/1.1 and reads the answer to its end: status,
/// content type and JSON body.
async fn raw_http(base: &str, request: &[u8]) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((headers, body)) = text.split_once("\r\n\r\n")
                && let Some(length) = headers.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                && body.len() >= length.trim().parse::<usize>().expect("length")
            {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), read)
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&answer).to_string();
    let (headers, body) = text.split_once("\r\n\r\n").expect("headers");
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let content_type = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (
        status,
        content_type,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Serves the fleet's api as `crmsync-api` does with `settings`, telling it
/// each peer's address (or not); returns its base URL.
async fn serve_api(
    fleet: &Fleet,
    settings: &Settings,
    store: crmsync::store::Store,
    peers: bool,
) -> String {
    let api = crmsync::app::api(settings, store, fleet.deps.queue.clone())
        .await
        .expect("api");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = api.router();
    if peers {
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .ok()
        });
    } else {
        tokio::spawn(async move { axum::serve(listener, router).await.ok() });
    }
    format!("http://{addr}")
}

/// A client whose requests come from `source` (any 127/8 address is this
/// host's).
fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .build()
        .expect("client")
}

/// A wrong token sent once, `X-Forwarded-For` set to `forwarded` if given.
async fn guess(http: &reqwest::Client, base: &str, forwarded: Option<&str>) -> reqwest::Response {
    let mut request = http
        .get(format!("{base}/v1/leads"))
        .bearer_auth("cst_guess");
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.expect("request")
}

/// Sends wrong tokens until the api answers 429 (at most 500 tries);
/// returns that answer and how many 401s came before it.
async fn flood_as(
    http: &reqwest::Client,
    base: &str,
    forwarded: Option<&str>,
) -> (reqwest::Response, u32) {
    for refused in 0..500 {
        let response = guess(http, base, forwarded).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return (response, refused);
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    panic!("500 wrong tokens in a row were never rate-limited");
}

/// [`flood_as`] without a forwarded address.
async fn flood(http: &reqwest::Client, base: &str) -> reqwest::Response {
    flood_as(http, base, None).await.0
}

on_both_backends! {
    async fn unknown_tokens_cost_the_database_nothing_and_are_rate_limited_per_address(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let token = fleet.store.issue_token(fleet.tenant).await.expect("token");

        // A token of the wrong shape is refused without the database: with
        // the store gone, it is still a 401, while a well-shaped unknown
        // token needs the database (503).
        let own_store = crmsync::app::open_store(&fleet.settings, false).await.expect("store");
        let base = serve_api(&fleet, &fleet.settings, own_store.clone(), true).await;
        let lower = ApiClient { base: base.clone(), token: token.clone(), http: reqwest::Client::new() };
        let (status, body, _) = lower.send(Method::GET, "/v1/leads", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // RFC 9110: the scheme is case-insensitive.
        for scheme in ["bearer", "BEARER"] {
            let response = reqwest::Client::new()
                .get(format!("{base}/v1/leads"))
                .header("authorization", format!("{scheme} {token}"))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::OK, "{scheme}");
        }
        own_store.close().await;
        let wrong_shape = ApiClient { base: base.clone(), token: "cst_not-a-token".into(), http: reqwest::Client::new() };
        let (status, problem, content_type) = wrong_shape.send(Method::GET, "/v1/leads", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
        assert_eq!(content_type, "application/problem+json");
        let well_shaped = ApiClient { base, token: format!("cst_{}", "A".repeat(43)), http: reqwest::Client::new() };
        let (status, problem, _) = well_shaped.send(Method::GET, "/v1/leads", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the lookup needed the database: {problem}");

        // Guessing from one address is slowed down for that address only; a
        // token verified before keeps working from it.
        let base = serve_api(&fleet, &fleet.settings, fleet.store.clone(), true).await;
        let attacker = client_from([127, 0, 0, 1]);
        let known = ApiClient { base: base.clone(), token: token.clone(), http: attacker.clone() };
        assert_eq!(known.send(Method::GET, "/v1/leads", None).await.0, StatusCode::OK);
        let limited = flood(&attacker, &base).await;
        assert_eq!(limited.headers()["content-type"], "application/problem+json");
        let retry_after: u64 = limited.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
        assert!(retry_after >= 1, "{retry_after}");
        let problem: Value = limited.json().await.expect("json");
        assert_eq!(problem["status"], 429, "{problem}");
        assert_eq!(known.send(Method::GET, "/v1/leads", None).await.0, StatusCode::OK, "a verified token is not slowed");
        let neighbour = client_from([127, 0, 0, 2]);
        let response = neighbour.get(format!("{base}/v1/leads")).bearer_auth("cst_guess").send().await.expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "another address has its own budget");

        // The lookup goes through a unique index on the token's hash: two
        // tenants can never hold one token.
        let other = fleet.store.create_tenant("other").await.expect("tenant");
        let mut owner = Owner::connect(&fleet).await;
        let copy = "UPDATE tenants SET api_token_hash = (SELECT api_token_hash FROM tenants WHERE name = 'default') WHERE name = 'other'";
        assert!(owner.execute(copy).await.is_err(), "a second tenant took the default tenant's token hash");
        assert_eq!(fleet.store.find_tenant("other").await.expect("lookup"), Some(other.id));

        // A server that does not say who the peer is: one shared budget.
        let base = serve_api(&fleet, &fleet.settings, fleet.store.clone(), false).await;
        let limited = flood(&reqwest::Client::new(), &base).await;
        assert!(limited.headers().contains_key("retry-after"));
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn every_refusal_is_problem_json(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        let http = reqwest::Client::new();

        // 10 MB declared: refused before it is read. Over the limit without
        // a declared length (chunked): refused once the limit is read. Both
        // as problem+json. (Raw HTTP: the client stops where the server
        // answers, so the answer is always read.)
        let head = |length: &str| format!(
            "POST /v1/leads HTTP/1.1\r\nhost: api\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n{length}\r\n\r\n",
            api.token
        );
        let over = crmsync::api::MAX_BODY_BYTES + 1;
        for request in [
            head("content-length: 10485760").into_bytes(),
            [head("transfer-encoding: chunked").into_bytes(), format!("{over:x}\r\n").into_bytes(), vec![b' '; over]].concat(),
        ] {
            let (status, content_type, problem) = raw_http(&api.base, &request).await;
            assert_eq!(status, 413, "{problem}");
            assert_eq!(content_type, "application/problem+json");
            assert_eq!(problem["status"], 413, "{problem}");
        }

        let (status, problem, content_type) = api.send(Method::GET, "/v1/nope", None).await;
        assert_eq!((status, content_type.as_str()), (StatusCode::NOT_FOUND, "application/problem+json"), "{problem}");
        assert_eq!(problem["status"], 404);

        let response = http.put(format!("{}/v1/leads", api.base)).bearer_auth(&api.token).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let allow = response.headers()["allow"].to_str().expect("allow").to_string();
        assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_bulk_replay_replays_what_was_open_when_asked_and_not_its_own_failures(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        let job = |trigger: &str| {
            serde_json::to_value(DeltaSyncJob {
                tenant: fleet.tenant,
                connection: fleet.connection,
                object: None,
                trigger: trigger.into(),
                attempt: 0,
                resume: None,
                redrives: 0,
            })
            .expect("job")
        };
        for n in 0..3 {
            fleet.store
                .record_dead_letter(fleet.tenant, fleet.connection, "delta_sync", &job(&format!("open-{n}")), "failed", 1)
                .await
                .expect("dead letter");
        }
        // A dead letter made while the replay runs (a replayed job failing
        // again) has a later id than any open when the request came: one
        // dated an hour ahead stands for it.
        let later = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(chrono::Utc::now().timestamp()).expect("after 1970") + 3600,
            0,
        ));
        let mut owner = Owner::connect(&fleet).await;
        let insert = "INSERT INTO dead_letters (id, tenant_id, connection_id, job_kind, job, error, attempts, failed_at, redrives)
                      VALUES ($1, $2, $3, 'delta_sync', $4, 'failed again', 1, $5, 0)";
        let job_text = job("failed-again");
        owner_query!(&mut owner, insert, later, fleet.tenant.0, fleet.connection.0, sqlx::types::Json(&job_text), chrono::Utc::now())
            .expect("a later dead letter");

        let (status, body, _) = api.send(Method::POST, "/v1/dead-letters/replay", None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["replayed"], 3, "{body}");
        let (_, open, _) = api.send(Method::GET, "/v1/dead-letters", None).await;
        let open = open["data"].as_array().expect("data").clone();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0]["id"], json!(later), "{open:?}");
        fleet.finish().await;
    }
}

/// Runs `work` with this thread's logs (warnings and up) captured; returns
/// its output and the log text. The work is polled on this thread, so what
/// it logs is caught.
async fn logged<T>(work: impl std::future::Future<Output = T>) -> (T, String) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut lines) = self.0.lock() {
                lines.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let output = {
        let _guard = tracing::subscriber::set_default(subscriber);
        work.await
    };
    let text = lines
        .0
        .lock()
        .map(|l| String::from_utf8_lossy(&l).to_string())
        .unwrap_or_default();
    (output, text)
}

on_both_backends! {
    async fn valid_tokens_never_spend_the_budget_that_failed_checks_do(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let base = serve_api(&fleet, &fleet.settings, fleet.store.clone(), true).await;
        let http = client_from([127, 0, 0, 1]);
        // Behind one address (a load balancer, say): more tenants' first
        // requests than the burst of failed checks allows, all served.
        let burst = crmsync::api::AUTH_CHECKS_BURST.get();
        for i in 0..burst + 10 {
            let tenant = fleet.store.create_tenant(&format!("tenant-{i}")).await.expect("tenant");
            let response = http.get(format!("{base}/v1/leads")).bearer_auth(&tenant.token).send().await.expect("request");
            assert_eq!(response.status(), StatusCode::OK, "tenant {i}'s first request");
        }
        // The address's budget is whole: a guesser gets the full burst of 401s.
        let (limited, refused) = flood_as(&http, &base, None).await;
        assert!(refused >= burst, "only {refused} guesses before the 429");
        assert!(limited.headers().contains_key("retry-after"));
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn behind_a_trusted_proxy_failed_checks_are_charged_to_the_forwarded_client(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let mut settings = fleet.settings.clone();
        settings.api.trusted_proxies = vec!["127.0.0.1".into()];
        let base = serve_api(&fleet, &settings, fleet.store.clone(), true).await;
        let proxy = client_from([127, 0, 0, 1]);
        let burst = crmsync::api::AUTH_CHECKS_BURST.get();
        // The budget each forwarded client gets: a full burst of 401s, then
        // 429s; charged to another, a client gets (next to) none.
        let full = |refused: u32| refused >= burst;
        let spent = |refused: u32| refused < burst / 2;
        // One client behind the proxy guesses until it is limited; prepending
        // an address to what the proxy appends escapes nothing…
        assert!(full(flood_as(&proxy, &base, Some("203.0.113.7")).await.1));
        assert!(spent(flood_as(&proxy, &base, Some("198.51.100.1, 203.0.113.7")).await.1));
        // …while another client behind the same proxy has its own budget.
        assert!(full(flood_as(&proxy, &base, Some("203.0.113.7, 203.0.113.8")).await.1));
        // A peer that is no trusted proxy is charged itself, whatever it forwards.
        let direct = client_from([127, 0, 0, 2]);
        assert!(full(flood_as(&direct, &base, Some("203.0.113.20")).await.1));
        assert!(spent(flood_as(&direct, &base, Some("203.0.113.21")).await.1), "its X-Forwarded-For is ignored");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_conflict_resolved_with_a_value_is_held_to_its_fields_rule(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        let (status, lead, _) = api
            .send(Method::POST, "/v1/leads", Some(json!({"email": "kept@example.com", "status": "new", "firstName": "Kept"})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{lead}");
        let record: uuid::Uuid = lead["id"].as_str().and_then(|id| id.parse().ok()).expect("id");
        let mut owner = Owner::connect(&fleet).await;
        let insert = "INSERT INTO conflicts (id, tenant_id, connection_id, record_id, crm_object, crm_id, field, platform_value, crm_value, status, created_at, updated_at)
                      VALUES ($1, $2, $3, $4, 'contacts', '1', $5, NULL, NULL, 'open', $6, $6)";
        for (field, refused, chosen) in [
            ("email", "a@@b", "chosen@example.com"),
            ("status", "hot", "qualified"),
            ("firstName", "A\u{0}B", "Ada"),
        ] {
            let conflict = uuid::Uuid::now_v7();
            owner_query!(&mut owner, insert, conflict, fleet.tenant.0, fleet.connection.0, record, field, chrono::Utc::now())
                .expect("an open conflict");
            let path = format!("/v1/conflicts/{conflict}/resolve");
            let (status, problem, content_type) = api
                .send(Method::POST, &path, Some(json!({"resolution": "value", "value": refused})))
                .await;
            assert_field_refused(status, &problem, &content_type, "value");
            assert!(problem["detail"].as_str().is_some_and(|d| d.contains(field)), "{problem}");
            let (_, open, _) = api.send(Method::GET, "/v1/conflicts", None).await;
            assert!(open["data"].as_array().is_some_and(|d| d.iter().any(|c| c["id"] == json!(conflict))), "still open: {open}");
            let (status, resolved, _) = api
                .send(Method::POST, &path, Some(json!({"resolution": "value", "value": chosen})))
                .await;
            assert_eq!(status, StatusCode::OK, "{resolved}");
            assert_eq!(resolved["resolvedValue"], chosen, "{resolved}");
        }
        let (_, lead, _) = api.send(Method::GET, &format!("/v1/leads/{record}"), None).await;
        assert_eq!((&lead["email"], &lead["status"], &lead["firstName"]), (&json!("chosen@example.com"), &json!("qualified"), &json!("Ada")), "{lead}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn one_unreadable_connection_row_stops_no_fleet_wide_work(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let others = more_connections(&fleet, 2).await;
        let job = |tenant: crmsync::domain::TenantId, connection: crmsync::domain::ConnectionId| {
            serde_json::to_value(DeltaSyncJob { tenant, connection, object: None, trigger: "failed".into(), attempt: 0, resume: None, redrives: 0 })
                .expect("job")
        };
        for (tenant, connection) in &others {
            fleet.store.record_dead_letter(*tenant, *connection, "delta_sync", &job(*tenant, *connection), "HubSpot was down", 8)
                .await
                .expect("a failed job");
        }
        // A row no version of crmsync reads (a manual edit, a newer
        // version's settings): the fleet's own connection.
        let mut owner = Owner::connect(&fleet).await;
        let broken = owner_query!(&mut owner, "UPDATE connections SET settings = '{\"objects\": 5}' WHERE id = $1", fleet.connection.0)
            .expect("a broken row");
        assert_eq!(broken, 1);
        let metrics = crmsync::telemetry::metrics().expect("a metrics recorder");

        // The periodic jobs of every other connection are enqueued…
        let scheduler = crate::scheduler::replica(&fleet).await;
        let ((), logged) = logged(async {
            let start = crmsync::jobs::periodic::period_start(chrono::Utc::now(), 3600);
            for kind in [JobKind::HealthCheck, JobKind::DetectConflicts] {
                let pushed = crmsync::scheduler::enqueue_period(&scheduler, kind, start).await.expect("enqueued despite the row");
                assert_eq!(pushed, others.len(), "{kind:?}");
            }
        })
        .await;
        assert!(logged.contains("cannot be read") && logged.contains(&fleet.connection.to_string()), "{logged}");
        // …their failed jobs re-driven…
        let redriven = crmsync::jobs::replay::retry_failed_by_connection(&scheduler).await.expect("re-driven despite the row");
        assert_eq!(redriven.len(), others.len(), "{redriven:?}");
        // …and their webhooks routed.
        match backend {
            Backend::Postgres => {
                let published = crmsync::app::publish_routes(&fleet.settings, &fleet.store).await.expect("published despite the row");
                assert_eq!(published, Some(others.len()));
            }
            Backend::Sqlite => {
                let routes = crmsync::ingress::routes::Routes::Store(fleet.store.clone());
                let found = routes.lookup("hubspot", &crate::support::PORTAL.to_string()).await.expect("looked up despite the row");
                assert_eq!(found.len(), others.len(), "{found:?}");
            }
        }
        // The owner's own list skips it too (and the api does not fail).
        let api = fleet.start_api_client().await;
        let (status, list, _) = api.send(Method::GET, "/v1/connections", None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert!(
            metrics.render().contains(r#"crmsync_store_bad_rows_total{table="connections"}"#),
            "{}",
            metrics.render()
        );
        crate::scheduler::close(scheduler).await;
        fleet.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_own_server_cuts_off_slow_clients_and_caps_its_connections() {
    let mut fleet = Fleet::start(Backend::Sqlite, 0).await;
    fleet.settings.api.header_read_timeout_secs = 1;
    fleet.settings.api.body_read_timeout_secs = 1;
    fleet.settings.api.max_connections = 2;
    let api = fleet.start_api_client().await;
    let addr = api
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("api address");
    // Headers dripped past the header timeout: closed unanswered.
    drip_headers(
        addr,
        "GET /v1/leads HTTP/1.1\r\nhost: api\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
    )
    .await;
    // A body dripped past the body timeout: a 408 problem, then closed.
    let head = format!(
        "POST /v1/leads HTTP/1.1\r\nhost: api\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        api.token
    );
    let answer = drip_body(addr, &head).await;
    assert_eq!(answer.status, 408, "{}\n{}", answer.head, answer.body);
    assert!(answer.is_problem(), "{}\n{}", answer.head, answer.body);
    // Two connections held: a third is turned away, a freed slot served.
    let _holding = assert_capped_at_two(addr).await;
    let (status, body, _) = api.send(Method::GET, "/v1/leads", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fleet.finish().await;
}

on_both_backends! {
    async fn a_replay_whose_job_cannot_be_queued_leaves_its_dead_letter_open(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        // A dead letter whose job no version reads: queueing it fails for good
        // (after the letter was marked replayed, which is undone).
        let job = json!({"tenant": fleet.tenant, "connection": fleet.connection});
        let id = fleet
            .store
            .record_dead_letter(fleet.tenant, fleet.connection, "delta_sync", &job, "failed", 1)
            .await
            .expect("a dead letter");
        let (status, problem, content_type) = api.send(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(content_type, "application/problem+json");
        let (_, open, _) = api.send(Method::GET, "/v1/dead-letters", None).await;
        let listed = open["data"].as_array().and_then(|d| d.iter().find(|l| l["id"] == json!(id)).cloned());
        let listed = listed.unwrap_or_else(|| panic!("the dead letter is still open: {open}"));
        assert!(listed["replayedAt"].is_null() && listed["replayedBy"].is_null(), "{listed}");
        fleet.finish().await;
    }
}
