//! The sandbox's CRM objects API: CRUD, list paging, batch, upsert, merge,
//! properties, history.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{APP_ID, PORTAL, TestSandbox};

#[tokio::test]
async fn a_contact_lives_through_create_read_update_archive_and_restore() {
    let sb = TestSandbox::start().await;
    let created = sb
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "ann@example.com", "firstname": "Ann"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["properties"]["hs_object_id"], id.as_str());
    assert_eq!(created.body["archived"], false);
    assert_eq!(
        created.body["properties"]["createdate"],
        created.body["createdAt"]
    );

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let updated = sb
        .patch(
            &format!("/crm/v3/objects/contacts/{id}"),
            json!({"properties": {"firstname": "Anna"}}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["properties"]["firstname"], "Anna");
    assert!(
        updated.body["updatedAt"].as_str() > created.body["updatedAt"].as_str(),
        "updatedAt moves on an update"
    );
    assert_eq!(
        updated.body["properties"]["lastmodifieddate"],
        updated.body["updatedAt"]
    );

    let read = sb
        .get(&format!(
            "/crm/v3/objects/contacts/{id}?properties=firstname,email"
        ))
        .await;
    assert_eq!(read.body["properties"]["firstname"], "Anna");

    assert_eq!(
        sb.delete(&format!("/crm/v3/objects/contacts/{id}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let gone = sb.get(&format!("/crm/v3/objects/contacts/{id}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["category"], "OBJECT_NOT_FOUND");
    let archived = sb.get("/crm/v3/objects/contacts?archived=True").await;
    assert_eq!(archived.body["results"][0]["id"], id.as_str());
    assert_eq!(archived.body["results"][0]["archived"], true);
    assert!(archived.body["results"][0]["archivedAt"].is_string());

    let restored = sb
        .control(
            Method::POST,
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}/restore"),
            None,
        )
        .await;
    assert_eq!(restored.status, StatusCode::OK);
    assert_eq!(
        sb.get(&format!("/crm/v3/objects/contacts/{id}"))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn listing_pages_to_the_end_without_gaps_or_repeats() {
    let sb = TestSandbox::start().await;
    sb.seed(250, 0).await;
    let (mut ids, mut after, mut pages) = (HashSet::new(), String::new(), 0);
    loop {
        let page = sb
            .get(&format!("/crm/v3/objects/contacts?limit=100&after={after}"))
            .await;
        assert_eq!(page.status, StatusCode::OK);
        pages += 1;
        for r in page.body["results"].as_array().unwrap() {
            assert!(
                ids.insert(r["id"].as_str().unwrap().to_string()),
                "no repeats"
            );
        }
        match page.body["paging"]["next"]["after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!((ids.len(), pages), (250, 3));
    assert_eq!(
        sb.get("/crm/v3/objects/contacts?limit=101").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_contact_is_found_by_email_as_id_property() {
    let sb = TestSandbox::start().await;
    let id = sb.create_contact("Bob@Example.com").await;
    let read = sb
        .get("/crm/v3/objects/contacts/bob@example.com?idProperty=email")
        .await;
    assert_eq!(read.body["id"], id.as_str());
    let bad = sb
        .get("/crm/v3/objects/contacts/x?idProperty=firstname")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn creating_a_second_contact_with_the_same_email_is_a_409_naming_the_first() {
    let sb = TestSandbox::start().await;
    let id = sb.create_contact("dup@example.com").await;
    let again = sb
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "DUP@example.com"}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["category"], "CONFLICT");
    assert_eq!(
        again.body["message"],
        format!("Contact already exists. Existing ID: {id}")
    );
}

#[tokio::test]
async fn bad_writes_get_hubspots_400_bodies() {
    let sb = TestSandbox::start().await;
    let unknown = sb
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"favourite_colour": "red"}}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body["category"], "VALIDATION_ERROR");
    assert_eq!(unknown.body["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");
    assert!(unknown.body["correlationId"].is_string());

    let read_only = sb
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"hs_object_id": "1"}}),
        )
        .await;
    assert_eq!(read_only.body["errors"][0]["code"], "READ_ONLY_VALUE");

    let missing = sb
        .post("/crm/v3/objects/contacts", json!({"nothing": 1}))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);

    let garbage = sb
        .http
        .post(format!("{}/crm/v3/objects/contacts", sb.base))
        .bearer_auth(&sb.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = garbage.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input JSON on line 1")
    );
}

#[tokio::test]
async fn batch_read_returns_207_for_missing_ids_and_refuses_more_than_100_inputs() {
    let sb = TestSandbox::start().await;
    let a = sb.create_contact("a@example.com").await;
    let read = sb
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": [{"id": a}, {"id": "999"}], "properties": ["email"]}),
        )
        .await;
    assert_eq!(read.status, StatusCode::MULTI_STATUS);
    assert_eq!(read.body["status"], "COMPLETE");
    assert_eq!(read.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(read.body["numErrors"], 1);
    assert_eq!(read.body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(read.body["errors"][0]["context"]["ids"][0], "999");

    let ok = sb
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": [{"id": a}], "properties": []}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.body["startedAt"].is_string() && ok.body["completedAt"].is_string());

    let inputs: Vec<_> = (0..101).map(|i| json!({"id": i.to_string()})).collect();
    let too_many = sb
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": inputs, "properties": []}),
        )
        .await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_many.body["category"], "VALIDATION_ERROR");
}

#[tokio::test]
async fn batch_create_update_and_archive_work_on_up_to_100_records() {
    let sb = TestSandbox::start().await;
    let inputs: Vec<_> = (0..100)
        .map(|i| json!({"properties": {"email": format!("b{i}@example.com")}}))
        .collect();
    let created = sb
        .post(
            "/crm/v3/objects/contacts/batch/create",
            json!({"inputs": inputs}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let ids: Vec<String> = created.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 100);

    let updates: Vec<_> = ids
        .iter()
        .take(3)
        .map(|id| json!({"id": id, "properties": {"jobtitle": "CTO"}}))
        .chain([json!({"id": "424242", "properties": {"jobtitle": "x"}})])
        .collect();
    let updated = sb
        .post(
            "/crm/v3/objects/contacts/batch/update",
            json!({"inputs": updates}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::MULTI_STATUS);
    assert_eq!(updated.body["results"].as_array().unwrap().len(), 3);
    assert_eq!(updated.body["results"][0]["properties"]["jobtitle"], "CTO");

    let archive: Vec<_> = ids.iter().map(|id| json!({"id": id})).collect();
    assert_eq!(
        sb.post(
            "/crm/v3/objects/contacts/batch/archive",
            json!({"inputs": archive})
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    let left = sb.get("/crm/v3/objects/contacts").await;
    assert_eq!(left.body["results"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn upsert_by_a_unique_property_creates_once_then_updates_the_same_record() {
    let sb = TestSandbox::start().await;
    let prop = json!({"name": "crmsync_record_id", "label": "crmsync record id", "type": "string", "fieldType": "text", "groupName": "contactinformation", "hasUniqueValue": true});
    let created = sb.post("/crm/v3/properties/contacts", prop.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["hasUniqueValue"], true);
    let again = sb.post("/crm/v3/properties/contacts", prop).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["category"], "OBJECT_ALREADY_EXISTS");

    let upsert = |first: &str| json!({"inputs": [{"id": "rec-1", "idProperty": "crmsync_record_id", "properties": {"email": "u@example.com", "firstname": first}}]});
    let first = sb
        .post("/crm/v3/objects/contacts/batch/upsert", upsert("One"))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["results"][0]["new"], true);
    let second = sb
        .post("/crm/v3/objects/contacts/batch/upsert", upsert("Two"))
        .await;
    assert_eq!(second.body["results"][0]["new"], false);
    assert_eq!(
        second.body["results"][0]["id"],
        first.body["results"][0]["id"]
    );
    let all = sb
        .get("/crm/v3/objects/contacts?properties=firstname,crmsync_record_id")
        .await;
    assert_eq!(
        all.body["results"].as_array().unwrap().len(),
        1,
        "a retried upsert never duplicates"
    );
    assert_eq!(all.body["results"][0]["properties"]["firstname"], "Two");
    assert_eq!(
        all.body["results"][0]["properties"]["crmsync_record_id"],
        "rec-1"
    );

    // Uniqueness holds for ordinary writes too.
    let clash = sb
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "v@example.com", "crmsync_record_id": "rec-1"}}),
        )
        .await;
    assert_eq!(clash.status, StatusCode::CONFLICT);
    let by_key = sb
        .get("/crm/v3/objects/contacts/rec-1?idProperty=crmsync_record_id")
        .await;
    assert_eq!(by_key.body["id"], first.body["results"][0]["id"]);
    let not_unique = sb
        .post(
            "/crm/v3/objects/contacts/batch/upsert",
            json!({"inputs": [{"id": "x", "idProperty": "firstname", "properties": {}}]}),
        )
        .await;
    assert_eq!(not_unique.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn properties_are_listed_and_read_by_name() {
    let sb = TestSandbox::start().await;
    let all = sb.get("/crm/v3/properties/contacts").await;
    let names: Vec<&str> = all.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in [
        "email",
        "firstname",
        "lastname",
        "lastmodifieddate",
        "hs_object_id",
        "hs_lead_status",
    ] {
        assert!(names.contains(&expected), "{expected} listed");
    }
    let status = sb.get("/crm/v3/properties/contacts/hs_lead_status").await;
    assert_eq!(status.body["type"], "enumeration");
    assert!(
        status.body["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["value"] == "OPEN_DEAL")
    );
    assert_eq!(
        sb.get("/crm/v3/properties/contacts/nope").await.status,
        StatusCode::NOT_FOUND
    );
    let leads = sb.get("/crm/v3/properties/leads/hs_lastmodifieddate").await;
    assert_eq!(leads.body["type"], "datetime");
    let missing_fields = sb
        .post("/crm/v3/properties/contacts", json!({"name": "x"}))
        .await;
    assert_eq!(missing_fields.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn history_records_who_changed_each_property() {
    let sb = TestSandbox::start().await;
    let id = sb.create_contact("h@example.com").await;
    let edit = sb
        .control(
            Method::PATCH,
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}?userId=77"),
            Some(json!({"properties": {"firstname": "Hal"}})),
        )
        .await;
    assert_eq!(edit.status, StatusCode::OK);
    let read = sb
        .get(&format!(
            "/crm/v3/objects/contacts/{id}?propertiesWithHistory=firstname"
        ))
        .await;
    let history = read.body["propertiesWithHistory"]["firstname"]
        .as_array()
        .unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["value"], "Hal");
    assert_eq!(history[0]["sourceType"], "CRM_UI");
    assert_eq!(history[0]["sourceId"], "userId:77");
    assert_eq!(history[0]["updatedByUserId"], 77);
    assert_eq!(history[1]["sourceType"], "INTEGRATION");
    assert_eq!(history[1]["sourceId"], APP_ID.to_string());
    assert!(history[0]["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn merging_keeps_the_primary_and_resolves_the_absorbed_id_to_it() {
    let sb = TestSandbox::start().await;
    let keep = sb.create_contact("keep@example.com").await;
    let absorbed = sb
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "gone@example.com", "phone": "+1 555 0100"}}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let merged = sb
        .post(
            "/crm/v3/objects/contacts/merge",
            json!({"primaryObjectId": keep, "objectIdToMerge": absorbed}),
        )
        .await;
    assert_eq!(merged.status, StatusCode::OK);
    assert_eq!(merged.body["id"], keep.as_str());
    let via_old = sb
        .get(&format!(
            "/crm/v3/objects/contacts/{absorbed}?properties=phone,hs_merged_object_ids"
        ))
        .await;
    assert_eq!(via_old.body["id"], keep.as_str());
    assert_eq!(via_old.body["properties"]["phone"], "+1 555 0100");
    assert_eq!(
        via_old.body["properties"]["hs_merged_object_ids"],
        absorbed.as_str()
    );
    let list = sb.get("/crm/v3/objects/contacts").await;
    assert_eq!(list.body["results"].as_array().unwrap().len(), 1);
    let twice = sb
        .post(
            "/crm/v3/objects/contacts/merge",
            json!({"primaryObjectId": keep, "objectIdToMerge": absorbed}),
        )
        .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn gdpr_delete_erases_for_good() {
    let sb = TestSandbox::start().await;
    let id = sb.create_contact("gdpr@example.com").await;
    let erased = sb
        .post(
            "/crm/v3/objects/contacts/gdpr-delete",
            json!({"objectId": "gdpr@example.com", "idProperty": "email"}),
        )
        .await;
    assert_eq!(erased.status, StatusCode::NO_CONTENT);
    assert_eq!(
        sb.get(&format!("/crm/v3/objects/contacts/{id}?archived=true"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        sb.get(&format!("/crm/v3/objects/contacts/{id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn leads_have_their_own_store_and_modified_property() {
    let sb = TestSandbox::start().await;
    let person = sb.create_contact("big-deal@example.com").await;
    let lead = sb
        .post(
            "/crm/v3/objects/leads",
            json!({"properties": {"hs_lead_name": "Big deal"}, "associations": crate::support::primary_contact(&person)}),
        )
        .await;
    assert_eq!(lead.status, StatusCode::CREATED);
    assert!(lead.body["properties"]["hs_lastmodifieddate"].is_string());
    let id = lead.body["id"].as_str().unwrap();
    assert_eq!(
        sb.get(&format!("/crm/v3/objects/leads/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        sb.get(&format!("/crm/v3/objects/contacts/{id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        sb.get("/crm/v3/objects/widgets").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_batch_naming_one_record_twice_is_refused() {
    let sb = TestSandbox::start().await;
    let id = sb.create_contact("twice@example.com").await;
    let r = sb.post("/crm/v3/objects/contacts/batch/update", json!({"inputs": [{"id": id, "properties": {"firstname": "A"}}, {"id": id, "properties": {"firstname": "B"}}]})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["message"],
        format!("Duplicate IDs found in batch input: [{id}]. IDs must be unique")
    );
    assert_eq!(
        sb.get(&format!(
            "/crm/v3/objects/contacts/{id}?properties=firstname"
        ))
        .await
        .body["properties"]["firstname"],
        "Test",
        "nothing applied"
    );
}

#[tokio::test]
async fn batch_reads_with_history_are_capped_at_50_inputs() {
    let sb = TestSandbox::start().await;
    let inputs: Vec<_> = (0..51).map(|i| json!({"id": i.to_string()})).collect();
    let r = sb
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": inputs, "properties": [], "propertiesWithHistory": ["email"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}
