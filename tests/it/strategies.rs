//! Concurrent edits of one field on both sides, settled by each conflict
//! strategy: the platform edits through the api and a sandbox user edits the
//! same contact while no worker runs, so the webhook job and the push job
//! both wait in the queue and either may run first. Whatever the order, the
//! strategy decides, both sides end equal, an edit of another field is never
//! lost, and the audit names the rule.

use crate::fleet::{ApiClient, Fleet, on_both_backends, wait_for};
use crate::support::PORTAL;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// Which side edits the contested field last.
#[derive(Clone, Copy, PartialEq)]
enum Last {
    Platform,
    Crm,
}

struct Case {
    fleet: Fleet,
    api: ApiClient,
    lead: String,
    crm_id: String,
}

impl Case {
    /// A synced fleet with ingress and api running, the connection set to
    /// `strategy`, and workers stopped.
    async fn start(backend: crate::fleet::Backend, strategy: &str) -> Self {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers();
        fleet.full_sync().await;
        fleet.start_ingress(true).await;
        let api = fleet.start_api_client().await;
        let (status, body, _) = api
            .send(
                Method::PATCH,
                &format!("/v1/connections/{}", fleet.connection),
                Some(json!({"strategy": strategy})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["strategy"], strategy);
        let (status, list, _) = api.send(Method::GET, "/v1/leads?limit=1", None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let lead = list["data"][0]["id"].as_str().expect("a lead").to_string();
        let crm_id = list["data"][0]["links"][0]["crmId"]
            .as_str()
            .expect("a link")
            .to_string();
        fleet.stop_workers().await;
        Self {
            fleet,
            api,
            lead,
            crm_id,
        }
    }

    async fn crm_edit(&self, properties: Value) {
        let path = format!(
            "/_sandbox/accounts/{PORTAL}/objects/contacts/{}",
            self.crm_id
        );
        let edited = self
            .fleet
            .sandbox
            .control(
                Method::PATCH,
                &path,
                Some(json!({"properties": properties})),
            )
            .await;
        assert!(edited.status.is_success(), "{:?}", edited.body);
    }

    async fn platform_edit(&self, body: Value) {
        let (status, reply, _) = self
            .api
            .send(
                Method::PATCH,
                &format!("/v1/leads/{}", self.lead),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }

    /// Both sides edit `firstname`; the CRM also edits `jobtitle`.
    async fn edit_both(&self, last: Last) {
        let platform = || self.platform_edit(json!({"firstName": "Platform"}));
        let crm = || self.crm_edit(json!({"firstname": "Crm", "jobtitle": "CRM title"}));
        match last {
            Last::Platform => {
                crm().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                platform().await;
            }
            Last::Crm => {
                platform().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                crm().await;
            }
        }
        // The CRM edit's webhook is in the queue before anything runs.
        wait_for("the webhook to reach ingress", || async {
            let (_, c, _) = self
                .api
                .send(
                    Method::GET,
                    &format!("/v1/connections/{}", self.fleet.connection),
                    None,
                )
                .await;
            c["webhookStats"]["received"].as_u64().unwrap_or(0) >= 1
        })
        .await;
    }

    async fn platform_field(&self, field: &str) -> Value {
        let (_, lead, _) = self
            .api
            .send(Method::GET, &format!("/v1/leads/{}", self.lead), None)
            .await;
        lead[field].clone()
    }

    async fn crm_property(&self, property: &str) -> Value {
        let reply = self
            .fleet
            .sandbox
            .get(&format!(
                "/crm/v3/objects/contacts/{}?properties={property}",
                self.crm_id
            ))
            .await;
        reply.body["properties"][property].clone()
    }

    /// Waits until both sides hold `first_name`, then checks the CRM-only
    /// edit survived on both sides and the audit names `rule`.
    async fn converges_to(&self, first_name: &str, rule: &str) {
        let started = std::time::Instant::now();
        loop {
            let (platform, crm) = (
                self.platform_field("firstName").await,
                self.crm_property("firstname").await,
            );
            if platform == json!(first_name) && crm == json!(first_name) {
                break;
            }
            if started.elapsed() > Duration::from_secs(15) {
                let (_, history, _) = self
                    .api
                    .send(
                        Method::GET,
                        &format!("/v1/leads/{}/history", self.lead),
                        None,
                    )
                    .await;
                let (_, runs, _) = self
                    .api
                    .send(Method::GET, "/v1/sync-runs?limit=10", None)
                    .await;
                panic!(
                    "both sides never held {first_name}: platform {platform}, CRM {crm}\nhistory {history}\nruns {runs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        wait_for("the CRM-only edit on the platform", || async {
            self.platform_field("jobTitle").await == json!("CRM title")
        })
        .await;
        assert_eq!(
            self.crm_property("jobtitle").await,
            json!("CRM title"),
            "a push overwrote a CRM edit"
        );
        let (_, history, _) = self
            .api
            .send(
                Method::GET,
                &format!("/v1/leads/{}/history", self.lead),
                None,
            )
            .await;
        let rules: Vec<&str> = history["data"]
            .as_array()
            .expect("history")
            .iter()
            .filter(|c| c["field"] == "firstName")
            .filter_map(|c| c["rule"].as_str())
            .collect();
        assert!(
            rules.contains(&rule),
            "firstName decided by {rules:?}, expected {rule}"
        );
    }
}

on_both_backends! {
    async fn platform_wins_keeps_the_platforms_value_on_both_sides(backend) {
        let mut case = Case::start(backend, "platform_wins").await;
        case.edit_both(Last::Crm).await;
        case.fleet.start_workers();
        case.converges_to("Platform", "platform_wins").await;
        case.fleet.finish().await;
    }
}

on_both_backends! {
    async fn crm_wins_takes_the_crms_value_on_both_sides(backend) {
        let mut case = Case::start(backend, "crm_wins").await;
        case.edit_both(Last::Platform).await;
        case.fleet.start_workers();
        case.converges_to("Crm", "crm_wins").await;
        case.fleet.finish().await;
    }
}

on_both_backends! {
    async fn newest_wins_takes_the_field_changed_last_either_way(backend) {
        let mut case = Case::start(backend, "newest_wins").await;
        case.edit_both(Last::Platform).await;
        case.fleet.start_workers();
        case.converges_to("Platform", "newest_wins").await;

        // Now the CRM edits last (the job-title edit is the same value again).
        case.fleet.stop_workers().await;
        case.platform_edit(json!({"firstName": "Platform 2"})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        case.crm_edit(json!({"firstname": "Crm 2"})).await;
        let (_, c, _) = case.api.send(Method::GET, &format!("/v1/connections/{}", case.fleet.connection), None).await;
        let seen = c["webhookStats"]["received"].as_u64().unwrap_or(0);
        wait_for("the second webhook", || async {
            let (_, c, _) = case.api.send(Method::GET, &format!("/v1/connections/{}", case.fleet.connection), None).await;
            c["webhookStats"]["received"].as_u64().unwrap_or(0) > seen
        })
        .await;
        case.fleet.start_workers();
        case.converges_to("Crm 2", "newest_wins").await;
        case.fleet.finish().await;
    }
}

on_both_backends! {
    async fn newest_wins_on_push_compares_the_fields_own_times_not_the_records(backend) {
        // The CRM changes firstname, then the platform changes it, then the
        // CRM changes another field: the CRM record is modified after the
        // platform's edit, but its firstname is older. The push reads the
        // CRM first and must let the platform's newer firstname win.
        let mut case = Case::start(backend, "newest_wins").await;
        case.crm_edit(json!({"firstname": "Crm"})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        case.platform_edit(json!({"firstName": "Platform"})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        case.crm_edit(json!({"jobtitle": "CRM title"})).await;
        // Only the push runs: it meets the CRM edits before any webhook job.
        case.fleet.start_workers_for(&[crmsync::jobs::JobKind::PushChanges]);
        wait_for("the push", || async {
            case.crm_property("firstname").await == json!("Platform")
        })
        .await;
        case.fleet.stop_workers().await;
        case.fleet.start_workers();
        case.converges_to("Platform", "newest_wins").await;
        case.fleet.finish().await;
    }
}

on_both_backends! {
    async fn manual_holds_the_conflict_until_an_operator_resolves_it(backend) {
        let mut case = Case::start(backend, "manual").await;
        case.edit_both(Last::Crm).await;
        case.fleet.start_workers();
        let conflict = {
            let mut found = Value::Null;
            for _ in 0..300 {
                let (_, list, _) = case.api.send(Method::GET, "/v1/conflicts", None).await;
                if let Some(c) = list["data"].as_array().and_then(|d| d.first()) {
                    found = c.clone();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            found
        };
        assert_eq!(conflict["field"], "firstName", "{conflict}");
        assert_eq!(conflict["platformValue"], "Platform");
        assert_eq!(conflict["crmValue"], "Crm");
        assert_eq!(conflict["recordId"], json!(case.lead));
        let gauges = crmsync::jobs::gauges::refresh(&case.fleet.deps).await.expect("gauges");
        assert_eq!(gauges.conflicts_open, 1, "the open conflict is on the gauge");
        // The rest of the record still syncs …
        wait_for("the CRM-only edit on the platform", || async {
            case.platform_field("jobTitle").await == json!("CRM title")
        })
        .await;
        // … and let the queue settle: neither side's firstName is overwritten.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(case.platform_field("firstName").await, json!("Platform"));
        assert_eq!(case.crm_property("firstname").await, json!("Crm"));
        // A second look finds the same conflict, not a new one.
        let (_, list, _) = case.api.send(Method::GET, "/v1/conflicts", None).await;
        assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");

        let id = conflict["id"].as_str().expect("id");
        let (status, problem, _) = case.api.send(Method::POST, &format!("/v1/conflicts/{id}/resolve"), Some(json!({"resolution": "value"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        let (status, resolved, _) = case.api.send(Method::POST, &format!("/v1/conflicts/{id}/resolve"), Some(json!({"resolution": "value", "value": "Chosen"}))).await;
        assert_eq!(status, StatusCode::OK, "{resolved}");
        assert_eq!(resolved["status"], "resolved");
        case.converges_to("Chosen", "manual").await;
        let (_, open, _) = case.api.send(Method::GET, "/v1/conflicts", None).await;
        assert_eq!(open["data"], json!([]), "{open}");
        let gauges = crmsync::jobs::gauges::refresh(&case.fleet.deps).await.expect("gauges");
        assert_eq!(gauges.conflicts_open, 0);
        let (status, again, _) = case.api.send(Method::POST, &format!("/v1/conflicts/{id}/resolve"), Some(json!({"resolution": "crm"}))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{again}");
        case.fleet.finish().await;
    }
}
