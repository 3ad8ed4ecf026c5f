//! The sandbox's authentication: private-app tokens, OAuth codes, expiry and
//! refresh, introspection, account details, account isolation.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{APP_ID, PORTAL, TestSandbox};

async fn token_call(sb: &TestSandbox, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = sb
        .http
        .post(format!("{}{path}", sb.base))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

/// An authorization code, as if a user installed the app.
async fn new_code(sb: &TestSandbox) -> String {
    let r = sb
        .post_control(
            "/_sandbox/oauth/codes",
            json!({"redirectUri": "http://localhost/cb"}),
        )
        .await;
    r.body["code"].as_str().unwrap().to_string()
}

async fn oauth_tokens(sb: &TestSandbox) -> Value {
    let code = new_code(sb).await;
    let (status, body) = token_call(
        sb,
        "/oauth/v1/token",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "sandbox-client-id"),
            ("client_secret", "sandbox-client-secret"),
            ("redirect_uri", "http://localhost/cb"),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    body
}

#[tokio::test]
async fn missing_or_unknown_tokens_get_401_invalid_authentication() {
    let sb = TestSandbox::start().await;
    let none = sb
        .send(Method::GET, "/crm/v3/objects/contacts", None, None)
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.body["category"], "INVALID_AUTHENTICATION");
    assert_eq!(none.body["status"], "error");
    let wrong = sb
        .send(
            Method::GET,
            "/crm/v3/objects/contacts",
            None,
            Some("pat-na1-wrong"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_oauth_token_works_until_it_expires_and_a_refresh_brings_a_new_one() {
    let sb = TestSandbox::start().await;
    let tokens = oauth_tokens(&sb).await;
    assert_eq!(tokens["token_type"], "bearer");
    assert_eq!(tokens["expires_in"], 1800);
    assert_eq!(tokens["hub_id"], PORTAL);
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(sb.status_with(&access).await, StatusCode::OK);

    assert_eq!(
        sb.post_control("/_sandbox/oauth/expire", json!({"accessToken": access}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let expired = sb
        .send(Method::GET, "/crm/v3/objects/contacts", None, Some(&access))
        .await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.body["category"], "EXPIRED_AUTHENTICATION");
    assert!(
        expired.body["message"]
            .as_str()
            .unwrap()
            .starts_with("The OAuth token used to make this call expired")
    );

    let (status, renewed) = token_call(
        &sb,
        "/oauth/v3/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "sandbox-client-id"),
            ("client_secret", "sandbox-client-secret"),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let fresh = renewed["access_token"].as_str().unwrap();
    assert_ne!(fresh, access);
    assert_eq!(sb.status_with(fresh).await, StatusCode::OK);

    let (status, bad) = token_call(
        &sb,
        "/oauth/v1/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "sandbox-client-id"),
            ("client_secret", "sandbox-client-secret"),
            ("refresh_token", "nope"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad["status"], "BAD_REFRESH_TOKEN");
    let (status, bad_secret) = token_call(
        &sb,
        "/oauth/v1/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "sandbox-client-id"),
            ("client_secret", "x"),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_secret["status"], "BAD_CLIENT_SECRET");
}

#[tokio::test]
async fn access_tokens_expire_after_the_configured_lifetime() {
    let sb = TestSandbox::start().await;
    sb.put_control(
        "/_sandbox/settings",
        json!({"indexLagMs": 0, "tokenTtlSecs": 1}),
    )
    .await;
    let tokens = oauth_tokens(&sb).await;
    assert_eq!(tokens["expires_in"], 1);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(sb.status_with(access).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sb.status_with(access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_authorization_code_is_single_use_and_bound_to_its_redirect_uri() {
    let sb = TestSandbox::start().await;
    let code = new_code(&sb).await;
    let form = |uri: &'static str, code: String| {
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("client_id", "sandbox-client-id".into()),
            ("client_secret", "sandbox-client-secret".into()),
            ("redirect_uri", uri.into()),
            ("code", code),
        ]
    };
    let r = sb
        .http
        .post(format!("{}/oauth/v1/token", sb.base))
        .form(&form("http://evil/cb", code.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let code2 = new_code(&sb).await;
    assert_eq!(
        sb.http
            .post(format!("{}/oauth/v1/token", sb.base))
            .form(&form("http://localhost/cb", code2.clone()))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        sb.http
            .post(format!("{}/oauth/v1/token", sb.base))
            .form(&form("http://localhost/cb", code2))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_authorize_page_redirects_back_with_a_code() {
    let sb = TestSandbox::start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(format!("{}/oauth/authorize?client_id=sandbox-client-id&redirect_uri=http://localhost/cb&state=xyz", sb.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("http://localhost/cb?code=") && location.ends_with("&state=xyz"));
}

#[tokio::test]
async fn tokens_can_be_introspected_and_revoked() {
    let sb = TestSandbox::start().await;
    let tokens = oauth_tokens(&sb).await;
    let access = tokens["access_token"].as_str().unwrap();
    let info = sb
        .send(
            Method::GET,
            &format!("/oauth/v1/access-tokens/{access}"),
            None,
            None,
        )
        .await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.body["hub_id"], PORTAL);
    assert_eq!(info.body["app_id"], APP_ID);
    assert_eq!(info.body["token_type"], "access");
    assert!(info.body["expires_in"].as_u64().unwrap() > 1700);
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(
        sb.send(
            Method::GET,
            &format!("/oauth/v1/refresh-tokens/{refresh}"),
            None,
            None
        )
        .await
        .body["hub_id"],
        PORTAL
    );

    let creds = [
        ("client_id", "sandbox-client-id"),
        ("client_secret", "sandbox-client-secret"),
    ];
    let (_, v3) = token_call(
        &sb,
        "/oauth/v3/token/introspect",
        &[creds[0], creds[1], ("token", access)],
    )
    .await;
    assert_eq!(v3["active"], true);
    assert_eq!(v3["token_use"], "access_token");
    let (status, _) = token_call(
        &sb,
        "/oauth/v3/token/revoke",
        &[creds[0], creds[1], ("token", access)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, after) = token_call(
        &sb,
        "/oauth/v3/token/introspect",
        &[creds[0], creds[1], ("token", access)],
    )
    .await;
    assert_eq!(after, json!({"active": false}));
    assert_eq!(sb.status_with(access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn account_details_tell_a_private_app_tokens_portal() {
    let sb = TestSandbox::start().await;
    let details = sb.get("/account-info/v3/details").await;
    assert_eq!(details.status, StatusCode::OK);
    assert_eq!(details.body["portalId"], PORTAL);
    for field in [
        "accountType",
        "timeZone",
        "companyCurrency",
        "additionalCurrencies",
        "utcOffset",
        "utcOffsetMilliseconds",
        "uiDomain",
        "dataHostingLocation",
    ] {
        assert!(!details.body[field].is_null(), "{field}");
    }
}

#[tokio::test]
async fn each_account_sees_only_its_own_records() {
    let sb = TestSandbox::start().await;
    sb.create_contact("mine@example.com").await;
    let other = sb
        .post_control("/_sandbox/accounts", json!({"portalId": 999}))
        .await;
    assert_eq!(other.status, StatusCode::CREATED);
    let token = other.body["privateAppToken"].as_str().unwrap();
    let theirs = sb
        .send(Method::GET, "/crm/v3/objects/contacts", None, Some(token))
        .await;
    assert_eq!(theirs.body["results"].as_array().unwrap().len(), 0);
    assert_eq!(
        sb.send(Method::GET, "/account-info/v3/details", None, Some(token))
            .await
            .body["portalId"],
        999
    );
    assert_eq!(
        sb.get("/crm/v3/objects/contacts").await.body["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
