//! The operator api over HTTP: a connection made with a private-app token
//! syncs at once; paused, its webhooks are counted and dropped; resumed, a
//! delta catches up; deleted, its credentials are gone and its links stay as
//! history. Also: sync runs, on-demand syncs, webhook stats, per-connection
//! webhook secrets, and a platform delete archiving the CRM record.

use crate::fleet::{ApiClient, Fleet, on_both_backends, wait_for};
use crate::support::{PORTAL, SECRET, TOKEN};
use crmsync::domain::{CrmObject, RecordKind};
use crmsync::providers::hubspot::webhook::sign_v3;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

async fn first_name_of(
    fleet: &Fleet,
    tenant: crmsync::domain::TenantId,
    email: &str,
) -> Option<String> {
    fleet
        .store
        .records(tenant, RecordKind::Lead)
        .await
        .expect("records")
        .into_iter()
        .find(|(_, f)| f.normalized_email() == Some(email))
        .and_then(|(_, f)| {
            f.get(crmsync::domain::CanonicalField::FirstName)
                .map(str::to_string)
        })
}

async fn edit_in_crm(fleet: &Fleet, crm_id: &str, first_name: &str) {
    let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}");
    let edited = fleet
        .sandbox
        .control(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"firstname": first_name}})),
        )
        .await;
    assert!(edited.status.is_success(), "{:?}", edited.body);
}

async fn stats(api: &ApiClient, connection: &str) -> Value {
    let (status, body, _) = api
        .send(Method::GET, &format!("/v1/connections/{connection}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["webhookStats"].clone()
}

on_both_backends! {
    async fn a_connection_is_made_paused_resumed_and_deleted_through_the_api(backend) {
        let mut fleet = Fleet::start(backend, 4).await;
        fleet.start_workers();
        // The fleet's own connection (default tenant) keeps running: its
        // updates tell when a webhook has been processed.
        fleet.full_sync().await;
        fleet.start_ingress(true).await;
        let base = fleet.start_api().await;
        let ops = fleet.store.create_tenant("ops").await.expect("tenant");
        let api = ApiClient { base: base.clone(), token: ops.token.clone(), http: reqwest::Client::new() };

        // Bad input is refused with a reason.
        for (body, why) in [
            (json!({"provider": "hubspot"}), "privateAppToken"),
            (json!({"provider": "salesforce", "privateAppToken": TOKEN}), "salesforce"),
            (json!({"provider": "hubspot", "privateAppToken": "pat-wrong"}), "refused"),
            (json!({"provider": "hubspot", "privateAppToken": TOKEN, "portalId": 1}), "62515"),
            (json!({"provider": "hubspot", "privateAppToken": TOKEN, "strategy": "latest"}), "latest"),
            (json!({"provider": "hubspot", "privateAppToken": TOKEN, "surprise": 1}), "surprise"),
            // One person would become two platform leads.
            (json!({"provider": "hubspot", "privateAppToken": TOKEN, "objects": [
                {"crmObject": "contacts", "recordKind": "lead"}, {"crmObject": "leads", "recordKind": "lead"}]}), "two CRM objects"),
        ] {
            let (status, problem, content_type) = api.send(Method::POST, "/v1/connections", Some(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
            assert_eq!(content_type, "application/problem+json");
            assert!(problem["detail"].as_str().unwrap_or("").contains(why), "{problem}");
        }

        let (status, made, _) = api
            .send(Method::POST, "/v1/connections", Some(json!({"provider": "hubspot", "privateAppToken": TOKEN, "strategy": "crm_wins"})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{made}");
        assert_eq!(made["portalId"], PORTAL.to_string());
        assert_eq!(made["status"], "active");
        assert_eq!(made["strategy"], "crm_wins");
        assert!(made.get("credentials").is_none() && !made.to_string().contains(TOKEN), "{made}");
        let id = made["id"].as_str().expect("id").to_string();
        // Its first full sync runs by itself.
        wait_for("the new connection's full sync", || async {
            let (_, runs, _) = api.send(Method::GET, &format!("/v1/sync-runs?connectionId={id}"), None).await;
            runs["data"].as_array().is_some_and(|r| r.iter().any(|r| r["kind"] == "full_sync" && r["status"] == "succeeded"))
        })
        .await;
        assert_eq!(fleet.store.records(ops.id, RecordKind::Lead).await.expect("records").len(), 4);
        // Routes are published by the api: webhooks reach the new connection.
        let (_, list, _) = api.send(Method::GET, "/v1/leads?limit=1", None).await;
        let email = list["data"][0]["email"].as_str().expect("email").to_string();
        let crm_id = list["data"][0]["links"][0]["crmId"].as_str().expect("crm id").to_string();
        edit_in_crm(&fleet, &crm_id, "Live").await;
        wait_for("the webhook edit", || async { first_name_of(&fleet, ops.id, &email).await.as_deref() == Some("Live") }).await;
        assert!(stats(&api, &id).await["received"].as_u64().unwrap_or(0) >= 1);

        // Paused: the webhook is counted and dropped; the other tenant's
        // connection still gets it.
        let (status, paused, _) = api.send(Method::POST, &format!("/v1/connections/{id}/pause"), None).await;
        assert_eq!(status, StatusCode::OK, "{paused}");
        assert_eq!(paused["status"], "paused");
        let (status, refused, _) = api.send(Method::POST, &format!("/v1/connections/{id}/sync"), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{refused}");
        // Ingress trusts a route it looked up for a second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        edit_in_crm(&fleet, &crm_id, "While paused").await;
        wait_for("the active connection's update", || async {
            first_name_of(&fleet, fleet.tenant, &email).await.as_deref() == Some("While paused")
        })
        .await;
        wait_for("the paused connection's drop count", || async {
            stats(&api, &id).await["droppedPaused"].as_u64().unwrap_or(0) >= 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(first_name_of(&fleet, ops.id, &email).await.as_deref(), Some("Live"));
        // A platform edit while paused waits in the outbox for the resume.
        let lead_id = list["data"][0]["id"].as_str().expect("lead id").to_string();
        let (status, _, _) = api.send(Method::PATCH, &format!("/v1/leads/{lead_id}"), Some(json!({"jobTitle": "Edited while paused"}))).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let crm_title = || async {
            fleet.sandbox.get(&format!("/crm/v3/objects/contacts/{crm_id}?properties=jobtitle")).await.body["properties"]["jobtitle"].clone()
        };
        assert_ne!(crm_title().await, json!("Edited while paused"), "nothing is pushed while paused");

        // Resumed: a delta brings what was missed.
        let (status, resumed, _) = api.send(Method::POST, &format!("/v1/connections/{id}/resume"), None).await;
        assert_eq!(status, StatusCode::OK, "{resumed}");
        assert_eq!(resumed["status"], "active");
        wait_for("the catch-up delta", || async { first_name_of(&fleet, ops.id, &email).await.as_deref() == Some("While paused") }).await;
        wait_for("the paused edit pushed", || async { crm_title().await == json!("Edited while paused") }).await;
        let (status, queued, _) = api.send(Method::POST, &format!("/v1/connections/{id}/sync"), Some(json!({"full": true}))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
        assert_eq!(queued["kind"], "full_sync");

        // Another tenant sees none of it.
        let default_token = fleet.store.issue_token(fleet.tenant).await.expect("token");
        let other = ApiClient { base: base.clone(), token: default_token, http: reqwest::Client::new() };
        let (status, _, _) = other.send(Method::GET, &format!("/v1/connections/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, theirs, _) = other.send(Method::GET, "/v1/connections", None).await;
        assert!(!theirs.to_string().contains(&id), "{theirs}");

        // Deleted: gone from the api, credentials erased, links kept as history.
        let (status, _, _) = api.send(Method::DELETE, &format!("/v1/connections/{id}"), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _, _) = api.send(Method::GET, &format!("/v1/connections/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, list, _) = api.send(Method::GET, "/v1/connections", None).await;
        assert_eq!(list["data"], json!([]));
        let row = fleet.store.connection(ops.id, id.parse().expect("id")).await.expect("row kept");
        assert!(fleet.store.credentials(&row).is_err(), "credentials must be erased");
        let (_, lead, _) = api.send(Method::GET, &format!("/v1/leads/{}", list_first_id(&api).await), None).await;
        assert_eq!(lead["links"][0]["syncStatus"], "unlinked", "{lead}");
        fleet.finish().await;
    }
}

async fn list_first_id(api: &ApiClient) -> String {
    let (_, list, _) = api.send(Method::GET, "/v1/leads?limit=1", None).await;
    list["data"][0]["id"].as_str().expect("a lead").to_string()
}

fn signed_headers(secret: &str, url: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = chrono::Utc::now().timestamp_millis().to_string();
    vec![
        (
            "x-hubspot-signature-v3",
            sign_v3(secret.as_bytes(), "POST", url, body, &ts),
        ),
        ("x-hubspot-request-timestamp", ts),
        ("content-type", "application/json".into()),
    ]
}

async fn deliver(url: &str, body: &[u8], headers: Vec<(&'static str, String)>) -> StatusCode {
    let mut request = reqwest::Client::new().post(url).body(body.to_vec());
    for (k, v) in headers {
        request = request.header(k, v);
    }
    request.send().await.expect("send").status()
}

on_both_backends! {
    async fn webhook_stats_count_and_a_connections_own_secret_verifies_its_deliveries(backend) {
        let mut fleet = Fleet::start(backend, 2).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let ingress = fleet.start_ingress(false).await;
        let url = format!("{ingress}/webhooks/hubspot");
        let api = fleet.start_api_client().await;
        let connection = fleet.connection.to_string();
        let ids = fleet.store.linked_crm_ids(fleet.tenant, fleet.connection, CrmObject::Contacts).await.expect("ids");
        let now = chrono::Utc::now().timestamp_millis();
        let batch = |first_event: u64| -> Vec<u8> {
            serde_json::to_vec(&json!([0, 1].iter().map(|i| json!({
                "eventId": first_event + i, "subscriptionId": 1, "portalId": PORTAL, "appId": 54321, "occurredAt": now,
                "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
                "objectId": ids[0].parse::<u64>().unwrap_or(0), "propertyName": "firstname", "propertyValue": "X", "changeSource": "CRM_UI"
            })).collect::<Vec<_>>())).expect("json")
        };

        let body = batch(100);
        assert_eq!(deliver(&url, &body, signed_headers("forged", &url, &body)).await, StatusCode::UNAUTHORIZED);
        assert_eq!(deliver(&url, &body, signed_headers(SECRET, &url, &body)).await, StatusCode::NO_CONTENT);
        assert_eq!(deliver(&url, &body, signed_headers(SECRET, &url, &body)).await, StatusCode::NO_CONTENT);
        let counted = stats(&api, &connection).await;
        assert_eq!(counted["received"], 2, "{counted}");
        assert_eq!(counted["duplicates"], 2, "{counted}");
        assert_eq!(counted["rejected"], 1, "{counted}");
        assert!(counted["lastReceivedAt"].is_string(), "{counted}");

        // The connection gets its own (private-app) secret: its deliveries
        // verify with it, and the app secret no longer reaches it.
        let (status, patched, _) = api
            .send(Method::PATCH, &format!("/v1/connections/{connection}"), Some(json!({"webhookSecret": "private-app-secret"})))
            .await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        assert_eq!(patched["hasWebhookSecret"], true);
        assert!(!patched.to_string().contains("private-app-secret"));
        if fleet.backend == crate::fleet::Backend::Postgres {
            // Production ingress reads routes from Redis: publish them (the
            // api does when it runs with Redis, as here).
            crmsync::app::publish_routes(&fleet.settings, &fleet.store).await.expect("publish");
        }
        let body = batch(200);
        assert_eq!(deliver(&url, &body, signed_headers("private-app-secret", &url, &body)).await, StatusCode::NO_CONTENT);
        assert_eq!(stats(&api, &connection).await["received"], 4);
        let body = batch(300);
        // Signed by the app: verified, but this connection is not the app's.
        assert_eq!(deliver(&url, &body, signed_headers(SECRET, &url, &body)).await, StatusCode::NO_CONTENT);
        assert_eq!(stats(&api, &connection).await["received"], 4);
        assert_eq!(deliver(&url, &body, signed_headers("another-secret", &url, &body)).await, StatusCode::UNAUTHORIZED);
        assert_eq!(stats(&api, &connection).await["rejected"], 2);
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_connections_own_webhook_route_takes_only_what_its_credential_signs(backend) {
        let mut fleet = Fleet::start(backend, 2).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let ingress = fleet.start_ingress(false).await;
        let api = fleet.start_api_client().await;
        let connection = fleet.connection.to_string();
        let own = format!("{ingress}/webhooks/hubspot/{connection}");
        let ids = fleet.store.linked_crm_ids(fleet.tenant, fleet.connection, CrmObject::Contacts).await.expect("ids");
        let contact = ids[0].parse::<u64>().unwrap_or(0);
        let now = chrono::Utc::now().timestamp_millis();
        let batch = |first_event: u64, portal: u64| -> Vec<u8> {
            serde_json::to_vec(&json!([0, 1].iter().map(|i| json!({
                "eventId": first_event + i, "subscriptionId": 1, "portalId": portal, "appId": 54321, "occurredAt": now,
                "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
                "objectId": contact, "propertyName": "firstname", "propertyValue": "X", "changeSource": "CRM_UI"
            })).collect::<Vec<_>>())).expect("json")
        };

        // Without a secret of its own, the app's secret verifies its route;
        // a signature made for the app-wide URL does not.
        let body = batch(100, PORTAL);
        assert_eq!(deliver(&own, &body, signed_headers(SECRET, &own, &body)).await, StatusCode::NO_CONTENT);
        let app_wide = format!("{ingress}/webhooks/hubspot");
        let body = batch(110, PORTAL);
        assert_eq!(deliver(&own, &body, signed_headers(SECRET, &app_wide, &body)).await, StatusCode::UNAUTHORIZED);
        let counted = stats(&api, &connection).await;
        assert_eq!((counted["received"].as_u64(), counted["rejected"].as_u64()), (Some(2), Some(1)), "{counted}");

        // With its own secret, that secret alone verifies it, and what it
        // signs is read from the CRM.
        let (status, patched, _) = api
            .send(Method::PATCH, &format!("/v1/connections/{connection}"), Some(json!({"webhookSecret": "private-app-secret"})))
            .await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        if fleet.backend == crate::fleet::Backend::Postgres {
            crmsync::app::publish_routes(&fleet.settings, &fleet.store).await.expect("publish");
        }
        let email = fleet.sandbox_contacts().await[&ids[0]]["email"].as_str().expect("email").to_string();
        edit_in_crm(&fleet, &ids[0], "Via-own-route").await;
        let body = batch(200, PORTAL);
        assert_eq!(deliver(&own, &body, signed_headers("private-app-secret", &own, &body)).await, StatusCode::NO_CONTENT);
        wait_for("the edit read after the connection's own delivery", || async {
            first_name_of(&fleet, fleet.tenant, &email).await.as_deref() == Some("Via-own-route")
        })
        .await;
        let body = batch(300, PORTAL);
        assert_eq!(deliver(&own, &body, signed_headers(SECRET, &own, &body)).await, StatusCode::UNAUTHORIZED);
        // Events for another portal are left out.
        let body = batch(400, PORTAL + 1);
        assert_eq!(deliver(&own, &body, signed_headers("private-app-secret", &own, &body)).await, StatusCode::NO_CONTENT);
        let counted = stats(&api, &connection).await;
        assert_eq!((counted["received"].as_u64(), counted["rejected"].as_u64()), (Some(4), Some(2)), "{counted}");

        // Unknown or unreadable connections get 204 (a CRM bans webhooks
        // that keep failing); an unknown CRM is a 404; only POST delivers.
        let unknown = format!("{ingress}/webhooks/hubspot/{}", crmsync::domain::ConnectionId::new());
        assert_eq!(deliver(&unknown, &body, signed_headers(SECRET, &unknown, &body)).await, StatusCode::NO_CONTENT);
        let garbage = format!("{ingress}/webhooks/hubspot/not-a-connection");
        assert_eq!(deliver(&garbage, b"[]", vec![]).await, StatusCode::NO_CONTENT);
        let other_crm = format!("{ingress}/webhooks/acme-crm/{connection}");
        assert_eq!(deliver(&other_crm, b"[]", vec![]).await, StatusCode::NOT_FOUND);
        let got = reqwest::get(&own).await.expect("get").status();
        assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED);
        let counted = stats(&api, &connection).await;
        assert_eq!(counted["received"].as_u64(), Some(4), "{counted}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_lead_deleted_through_the_api_is_archived_in_hubspot(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let api = fleet.start_api_client().await;
        let (_, list, _) = api.send(Method::GET, "/v1/leads?limit=1", None).await;
        let lead = list["data"][0]["id"].as_str().expect("lead").to_string();
        let crm_id = list["data"][0]["links"][0]["crmId"].as_str().expect("crm id").to_string();
        let (status, _, _) = api.send(Method::DELETE, &format!("/v1/leads/{lead}"), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        wait_for("the archive in HubSpot", || async {
            fleet.sandbox.get(&format!("/crm/v3/objects/contacts/{crm_id}")).await.status == StatusCode::NOT_FOUND
        })
        .await;
        assert_eq!(fleet.sandbox_contacts().await.len(), 2);
        let (status, _, _) = api.send(Method::GET, &format!("/v1/leads/{lead}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // A full sync does not bring it back.
        fleet.full_sync().await;
        assert_eq!(fleet.leads().await.len(), 2);
        fleet.finish().await;
    }
}
