//! Health checks: each active connection's token and CRM, checked and kept
//! as history that operators read on the connection.

use crate::fleet::{Fleet, on_both_backends};
use crmsync::domain::ConnectionStatus;
use reqwest::{Method, StatusCode};
use serde_json::json;

on_both_backends! {
    async fn health_checks_record_a_reachable_crm_and_then_an_unreachable_one(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        let id = fleet.connection;
        let (_, before, _) = api.send(Method::GET, &format!("/v1/connections/{id}"), None).await;
        assert!(before["health"].is_null(), "no check yet: {before}");

        assert_eq!(crmsync::jobs::health::check_all(&fleet.deps).await.expect("checks"), 1);
        let (status, view, _) = api.send(Method::GET, &format!("/v1/connections/{id}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(view["health"]["ok"], true, "{view}");
        assert!(view["health"]["error"].is_null(), "{view}");

        // The CRM answers only errors now.
        let faults = fleet.sandbox.put_control("/_sandbox/faults", json!({"errorRate": 1.0})).await;
        assert!(faults.status.is_success(), "{:?}", faults.body);
        assert_eq!(crmsync::jobs::health::check_all(&fleet.deps).await.expect("checks"), 1);
        let faults = fleet.sandbox.put_control("/_sandbox/faults", json!({})).await;
        assert!(faults.status.is_success(), "{:?}", faults.body);
        let (status, history, _) = api.send(Method::GET, &format!("/v1/connections/{id}/health"), None).await;
        assert_eq!(status, StatusCode::OK, "{history}");
        let checks = history["data"].as_array().expect("checks");
        assert_eq!(checks.len(), 2, "{history}");
        assert_eq!(checks[0]["ok"], false, "newest first: {history}");
        assert!(checks[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{history}");
        assert_eq!(checks[1]["ok"], true);
        // Unreachable is not refused: the connection stays active.
        let row = fleet.store.connection(fleet.tenant, id).await.expect("connection");
        assert_eq!(row.status, ConnectionStatus::Active);
        // Paused connections are not checked.
        fleet.store.set_connection_status(fleet.tenant, id, ConnectionStatus::Paused, None).await.expect("pause");
        assert_eq!(crmsync::jobs::health::check_all(&fleet.deps).await.expect("checks"), 0);
        fleet.finish().await;
    }
}
