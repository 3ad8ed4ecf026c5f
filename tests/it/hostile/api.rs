//! Hostile input: api. Every value is refused at the boundary with a 400
//! naming the field (never a 503, a panic or a stored value the CRM then
//! refuses); a tenant's settings cannot stop the scheduler for the others;
//! unknown tokens cost the database nothing and are rate-limited; every
//! refusal is problem+json.

use crate::fleet::{ApiClient, Backend, Fleet, on_both_backends};
use crate::scheduler::more_connections;
use crmsync::domain::RecordKind;
use crmsync::jobs::DeltaSyncJob;
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
        match self {
            Owner::Postgres(c) => sqlx::query(sql)
                .bind(secs)
                .bind(connection)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Owner::Sqlite(c) => sqlx::query(sql)
                .bind(secs)
                .bind(connection)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        }
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

        for (body, field) in record_refusals() {
            let (status, problem, content_type) = api.send(Method::POST, "/v1/leads", Some(body.clone())).await;
            assert_field_refused(status, &problem, &content_type, field);
        }
        // Not an object, or an object with nothing in it: no empty lead.
        for body in [json!([]), json!({}), json!({"firstName": "  ", "email": null})] {
            let (status, problem, content_type) = api.send(Method::POST, "/v1/leads", Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
            assert_eq!(content_type, "application/problem+json");
        }
        assert_eq!(leads().await, 0, "nothing refused was stored");

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
        let claimed = crmsync::scheduler::tick(&scheduler).await.expect("the tick claims despite the row");
        assert_eq!(claimed, others.len() + 1, "every due delta is claimed, the odd row's too");
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

/// Serves the fleet's api as `crmsync-api` does, telling it each peer's
/// address (or not); returns its base URL.
async fn serve_api(fleet: &Fleet, store: crmsync::store::Store, peers: bool) -> String {
    let api = crmsync::app::api(&fleet.settings, store, fleet.deps.queue.clone())
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

/// Sends a wrong token until the api answers 429 (at most 500 tries).
async fn flood(http: &reqwest::Client, base: &str) -> reqwest::Response {
    for _ in 0..500 {
        let response = http
            .get(format!("{base}/v1/leads"))
            .bearer_auth("cst_guess")
            .send()
            .await
            .expect("request");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return response;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    panic!("500 wrong tokens in a row were never rate-limited");
}

on_both_backends! {
    async fn unknown_tokens_cost_the_database_nothing_and_are_rate_limited_per_address(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let token = fleet.store.issue_token(fleet.tenant).await.expect("token");

        // A token of the wrong shape is refused without the database: with
        // the store gone, it is still a 401, while a well-shaped unknown
        // token needs the database (503).
        let own_store = crmsync::app::open_store(&fleet.settings, false).await.expect("store");
        let base = serve_api(&fleet, own_store.clone(), true).await;
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
        let base = serve_api(&fleet, fleet.store.clone(), true).await;
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
        let base = serve_api(&fleet, fleet.store.clone(), false).await;
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
        match &mut owner {
            Owner::Postgres(c) => sqlx::query(insert).bind(later).bind(fleet.tenant.0).bind(fleet.connection.0)
                .bind(sqlx::types::Json(&job_text)).bind(chrono::Utc::now()).execute(c).await.map(|_| ()),
            Owner::Sqlite(c) => sqlx::query(insert).bind(later).bind(fleet.tenant.0).bind(fleet.connection.0)
                .bind(sqlx::types::Json(&job_text)).bind(chrono::Utc::now()).execute(c).await.map(|_| ()),
        }
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
