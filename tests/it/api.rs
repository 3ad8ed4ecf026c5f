//! The platform API over HTTP: a lead created there reaches HubSpot once and
//! shows its link; the unified list pages and filters; tenants are isolated;
//! bad input gets a problem+json answer.

use crate::fleet::{ApiClient as Client, Fleet, on_both_backends};
use crate::support::TOKEN;
use crmsync::domain::{CrmObject, RecordKind};
use crmsync::store::Credentials;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

on_both_backends! {
    async fn a_lead_created_through_the_api_reaches_hubspot_once_and_tenants_stay_apart(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers();
        // The api's tenant, with its own connection to the sandbox portal.
        let acme = fleet.store.create_tenant("acme").await.expect("tenant");
        let credentials = Credentials::PrivateAppToken { token: SecretString::from(TOKEN) };
        let (connection, _) = crmsync::cli::connect_hubspot_token(&fleet.settings, &fleet.store, acme.id, credentials, None).await.expect("connect");
        let base = fleet.start_api().await;
        let api = Client { base: base.clone(), token: acme.token.clone(), http: reqwest::Client::new() };

        let (status, lead, _) = api.send(reqwest::Method::POST, "/v1/leads", Some(json!({
            "email": "Ada@Example.com", "firstName": "Ada", "lastName": "Lovelace", "status": "qualified"
        }))).await;
        assert_eq!(status, StatusCode::CREATED, "{lead}");
        assert_eq!(lead["email"], "ada@example.com");
        assert_eq!(lead["fullName"], "Ada Lovelace");
        assert_eq!(lead["origin"], "platform");
        let id = lead["id"].as_str().expect("id").to_string();

        // The push lands in HubSpot and the link shows up.
        let started = Instant::now();
        let linked = loop {
            let (_, lead, _) = api.send(reqwest::Method::GET, &format!("/v1/leads/{id}"), None).await;
            if lead["links"].as_array().is_some_and(|l| !l.is_empty()) {
                break lead;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "never linked: {lead}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert_eq!(linked["links"][0]["connectionId"], connection.to_string());
        assert_eq!(linked["links"][0]["syncStatus"], "synced");
        assert_eq!(linked["links"][0]["provider"], "hubspot");
        // Filtered by CRM: linked records only; an unknown CRM is named.
        let (_, by_crm, _) = api.send(reqwest::Method::GET, "/v1/leads?provider=hubspot", None).await;
        assert_eq!(by_crm["data"].as_array().map(|d| d.iter().any(|l| l["id"] == id.as_str())), Some(true), "{by_crm}");
        let (status, problem, _) = api.send(reqwest::Method::GET, "/v1/leads?provider=acme-crm", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert!(problem["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("hubspot")), "{problem}");
        let crm_ids = fleet.store.linked_crm_ids(acme.id, connection, CrmObject::Contacts).await.expect("links");
        assert_eq!(crm_ids.len(), 1, "exactly one CRM record for the lead");
        let in_hubspot = fleet.sandbox_contacts().await;
        assert_eq!(in_hubspot.len(), 4, "three seeded and ours");
        assert!(in_hubspot.values().any(|p| p["email"] == "ada@example.com" && p["lastname"] == "Lovelace"));

        // The same email again is a conflict, not a duplicate.
        let (status, problem, content_type) = api.send(reqwest::Method::POST, "/v1/leads", Some(json!({"email": "ada@example.com"}))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(content_type, "application/problem+json");
        // Bad input.
        let (status, problem, _) = api.send(reqwest::Method::POST, "/v1/leads", Some(json!({"email": "nope", "shoeSize": 9}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        let (status, _, _) = api.send(reqwest::Method::POST, "/v1/leads", Some(json!({"status": "hot"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // PATCH changes one field, null clears another.
        let (status, patched, _) = api.send(reqwest::Method::PATCH, &format!("/v1/leads/{id}"), Some(json!({"company": "Analytical Engines", "lastName": null}))).await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        assert_eq!(patched["company"], "Analytical Engines");
        assert_eq!(patched["lastName"], Value::Null);

        // The unified list: paging with a cursor, filters, platform-only.
        for n in 0..3 {
            let (status, _, _) = api.send(reqwest::Method::POST, "/v1/leads", Some(json!({"email": format!("p{n}@example.com"), "status": "new"}))).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (_, page1, _) = api.send(reqwest::Method::GET, "/v1/leads?limit=2", None).await;
        assert_eq!(page1["data"].as_array().map(Vec::len), Some(2));
        let cursor = page1["nextCursor"].as_str().expect("a next page").to_string();
        let (_, page2, _) = api.send(reqwest::Method::GET, &format!("/v1/leads?limit=2&cursor={cursor}"), None).await;
        assert_eq!(page2["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(page2["nextCursor"], Value::Null);
        let (_, new_only, _) = api.send(reqwest::Method::GET, "/v1/leads?status=new", None).await;
        assert_eq!(new_only["data"].as_array().map(Vec::len), Some(3));
        let (status, problem, _) = api.send(reqwest::Method::GET, "/v1/leads?limit=500", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        // Sorted by last change: the lead edited last comes first, and paging
        // by that order sees every lead once.
        let (_, first, _) = api.send(reqwest::Method::GET, "/v1/leads?limit=1", None).await;
        let oldest = first["data"][0]["id"].as_str().expect("id").to_string();
        let (status, _, _) = api.send(reqwest::Method::PATCH, &format!("/v1/leads/{oldest}"), Some(json!({"jobTitle": "Edited last"}))).await;
        assert_eq!(status, StatusCode::OK);
        let (_, newest, _) = api.send(reqwest::Method::GET, "/v1/leads?sort=-updatedAt&limit=1", None).await;
        assert_eq!(newest["data"][0]["id"], json!(oldest), "{newest}");
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/leads?sort=updatedAt&limit=3&cursor={c}"),
                None => "/v1/leads?sort=updatedAt&limit=3".to_string(),
            };
            let (status, page, _) = api.send(reqwest::Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            seen.extend(page["data"].as_array().expect("data").iter().map(|l| l["id"].clone()));
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen.last(), Some(&json!(oldest)));
        let (status, problem, _) = api.send(reqwest::Method::GET, &format!("/v1/leads?sort=createdAt&cursor={}", newest["nextCursor"].as_str().expect("cursor")), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "a cursor of another sort order is refused: {problem}");

        // Another tenant sees none of it; no token is 401.
        let default_token_client = Client { base: base.clone(), token: "cst_not-a-token".into(), http: reqwest::Client::new() };
        let (status, _, _) = default_token_client.send(reqwest::Method::GET, "/v1/leads", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let other = fleet.store.create_tenant("globex").await.expect("tenant");
        let globex = Client { base, token: other.token, http: reqwest::Client::new() };
        let (status, _, _) = globex.send(reqwest::Method::GET, &format!("/v1/leads/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, theirs, _) = globex.send(reqwest::Method::GET, "/v1/leads", None).await;
        assert_eq!(theirs["data"].as_array().map(Vec::len), Some(0));

        // DELETE removes it from the platform view.
        let (status, _, _) = api.send(reqwest::Method::DELETE, &format!("/v1/leads/{id}"), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _, _) = api.send(reqwest::Method::GET, &format!("/v1/leads/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(fleet.store.records(acme.id, RecordKind::Lead).await.expect("records").iter().all(|(r, _)| r.to_string() != id));
        fleet.finish().await;
    }
}
