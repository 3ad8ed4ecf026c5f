//! The sandbox's lead ↔ contact associations: a lead must name an existing
//! contact when created, upsert cannot create leads, the v4 batch read in
//! both directions, archived ends hidden, and seeded leads with contacts.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{PORTAL, TestSandbox, primary_contact as primary};

async fn read(sb: &TestSandbox, from: &str, to: &str, id: &str) -> (StatusCode, Value) {
    let r = sb
        .post(
            &format!("/crm/v4/associations/{from}/{to}/batch/read"),
            json!({"inputs": [{"id": id}]}),
        )
        .await;
    (r.status, r.body)
}

async fn lead_count(sb: &TestSandbox) -> usize {
    let r = sb.get("/crm/v3/objects/leads?limit=100").await;
    assert_eq!(r.status, StatusCode::OK);
    r.body["results"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_lead_created_with_its_contact_reads_back_both_ways_through_v4() {
    let sb = TestSandbox::start().await;
    let ada = sb.create_contact("ada@example.com").await;
    let lead = sb.create_lead("Ada", &ada).await;

    let (status, body) = read(&sb, "leads", "contacts", &lead).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "COMPLETE");
    assert!(body["startedAt"].is_string() && body["completedAt"].is_string());
    assert_eq!(body["results"][0]["from"]["id"], lead.as_str());
    let to = &body["results"][0]["to"];
    assert_eq!(to.as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(
        to[0]["toObjectId"],
        ada.as_str(),
        "a string, as in the spec"
    );
    let types: Vec<(i64, Value)> = to[0]["associationTypes"]
        .as_array()
        .expect("types")
        .iter()
        .map(|t| {
            assert_eq!(t["category"], "HUBSPOT_DEFINED");
            (t["typeId"].as_i64().unwrap_or(0), t["label"].clone())
        })
        .collect();
    assert_eq!(types, vec![(578, json!("Primary")), (608, Value::Null)]);

    let (status, body) = read(&sb, "contacts", "leads", &ada).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let to = &body["results"][0]["to"][0];
    assert_eq!(to["toObjectId"], lead.as_str());
    assert_eq!(to["associationTypes"][0]["typeId"], 579);
    assert_eq!(to["associationTypes"][1]["typeId"], 609);

    // The type id form of the path and batch create work too.
    let batch = sb
        .post(
            "/crm/v3/objects/leads/batch/create",
            json!({"inputs": [{"properties": {"hs_lead_name": "Ada again"}, "associations": primary(&ada)}]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::CREATED, "{}", batch.body);
    let (_, body) = read(&sb, "0-1", "0-136", &ada).await;
    assert_eq!(body["results"][0]["to"].as_array().map(Vec::len), Some(2));

    // Unknown ids are reported the way the other batch endpoints do.
    let (status, body) = read(&sb, "leads", "contacts", "999999999").await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(body["errors"][0]["context"]["ids"][0], "999999999");

    // The v4 read goes through the same auth gate.
    let anonymous = sb
        .send(
            Method::POST,
            "/crm/v4/associations/leads/contacts/batch/read",
            Some(json!({"inputs": [{"id": lead}]})),
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_lead_without_a_live_contact_is_refused_and_nothing_is_created() {
    let sb = TestSandbox::start().await;
    let bare = sb
        .post(
            "/crm/v3/objects/leads",
            json!({"properties": {"hs_lead_name": "Nobody"}}),
        )
        .await;
    assert_eq!(bare.status, StatusCode::BAD_REQUEST, "{}", bare.body);
    assert_eq!(bare.body["status"], "error");
    assert_eq!(bare.body["category"], "VALIDATION_ERROR");
    assert!(bare.body["correlationId"].is_string());

    let unknown = sb
        .post(
            "/crm/v3/objects/leads",
            json!({"properties": {"hs_lead_name": "Ghost"}, "associations": primary("999999999")}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.body);
    assert_eq!(unknown.body["category"], "VALIDATION_ERROR");

    let ada = sb.create_contact("ada@example.com").await;
    let batch = sb
        .post(
            "/crm/v3/objects/leads/batch/create",
            json!({"inputs": [
                {"properties": {"hs_lead_name": "Fine"}, "associations": primary(&ada)},
                {"properties": {"hs_lead_name": "Bare"}}
            ]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::BAD_REQUEST, "{}", batch.body);
    assert_eq!(lead_count(&sb).await, 0, "no lead was created");

    // Contacts accept inline associations without failing.
    let c = sb
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "bob@example.com"}, "associations": [{"to": {"id": "1"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279}]}]}),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
}

#[tokio::test]
async fn batch_upsert_cannot_create_a_lead_but_updates_one() {
    let sb = TestSandbox::start().await;
    let prop = sb
        .post(
            "/crm/v3/properties/leads",
            json!({"name": "crmsync_record_id", "label": "crmsync id", "type": "string", "fieldType": "text", "groupName": "lead_information", "hasUniqueValue": true}),
        )
        .await;
    assert_eq!(prop.status, StatusCode::CREATED, "{}", prop.body);
    let ada = sb.create_contact("ada@example.com").await;
    let lead = sb
        .post(
            "/crm/v3/objects/leads",
            json!({"properties": {"hs_lead_name": "Ada", "crmsync_record_id": "rec-1"}, "associations": primary(&ada)}),
        )
        .await;
    assert_eq!(lead.status, StatusCode::CREATED, "{}", lead.body);
    let upsert = |key: &str, name: &str| json!({"inputs": [{"id": key, "idProperty": "crmsync_record_id", "properties": {"hs_lead_name": name}}]});

    let create = sb
        .post("/crm/v3/objects/leads/batch/upsert", upsert("rec-2", "New"))
        .await;
    assert_eq!(create.status, StatusCode::BAD_REQUEST, "{}", create.body);
    assert_eq!(create.body["category"], "VALIDATION_ERROR");
    assert_eq!(lead_count(&sb).await, 1, "no lead was created");

    let update = sb
        .post(
            "/crm/v3/objects/leads/batch/upsert",
            upsert("rec-1", "Ada Lovelace"),
        )
        .await;
    assert_eq!(update.status, StatusCode::OK, "{}", update.body);
    assert_eq!(update.body["results"][0]["new"], false);
    assert_eq!(
        update.body["results"][0]["properties"]["hs_lead_name"],
        "Ada Lovelace"
    );
}

#[tokio::test]
async fn an_archived_contact_hides_its_edge_until_restored() {
    let sb = TestSandbox::start().await;
    let ada = sb.create_contact("ada@example.com").await;
    let lead = sb.create_lead("Ada", &ada).await;

    assert_eq!(
        sb.delete(&format!("/crm/v3/objects/contacts/{ada}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let (status, body) = read(&sb, "leads", "contacts", &lead).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(body["results"], json!([]), "the edge is hidden");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&lead))
    );
    let (status, _) = read(&sb, "contacts", "leads", &ada).await;
    assert_eq!(
        status,
        StatusCode::MULTI_STATUS,
        "an archived contact reads as missing"
    );

    // A new lead cannot be associated with the archived contact either.
    let refused = sb
        .post(
            "/crm/v3/objects/leads",
            json!({"properties": {"hs_lead_name": "Late"}, "associations": primary(&ada)}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    let restored = sb
        .control(
            Method::POST,
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{ada}/restore"),
            None,
        )
        .await;
    assert_eq!(restored.status, StatusCode::OK, "{}", restored.body);
    let (status, body) = read(&sb, "leads", "contacts", &lead).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["to"][0]["toObjectId"], ada.as_str());
}

#[tokio::test]
async fn seeded_leads_each_have_a_primary_contact() {
    for contacts in [0u64, 2] {
        let sb = TestSandbox::start().await;
        let seeded = sb
            .post_control(
                &format!("/_sandbox/accounts/{PORTAL}/seed"),
                json!({"contacts": contacts, "leads": 3}),
            )
            .await;
        assert_eq!(seeded.status, StatusCode::OK, "{}", seeded.body);
        assert_eq!(seeded.body["leads"], 3);
        // Leads go to the seeded contacts when there are any, else to their own.
        assert_eq!(seeded.body["contacts"], if contacts == 0 { 3 } else { 2 });

        let leads = sb.get("/crm/v3/objects/leads?limit=100").await;
        let ids: Vec<Value> = leads.body["results"]
            .as_array()
            .expect("leads")
            .iter()
            .map(|l| json!({"id": l["id"]}))
            .collect();
        assert_eq!(ids.len(), 3);
        let r = sb
            .post(
                "/crm/v4/associations/leads/contacts/batch/read",
                json!({"inputs": ids}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let results = r.body["results"].as_array().expect("results");
        assert_eq!(results.len(), 3);
        for result in results {
            assert_eq!(result["to"].as_array().map(Vec::len), Some(1), "{result}");
            assert_eq!(result["to"][0]["associationTypes"][0]["typeId"], 578);
        }
    }

    // Same seed, same data: two sandboxes seed the same lead names.
    let mut names = Vec::new();
    for _ in 0..2 {
        let sb = TestSandbox::start().await;
        sb.seed(0, 2).await;
        let leads = sb
            .get("/crm/v3/objects/leads?limit=100&properties=hs_lead_name")
            .await;
        names.push(leads.body["results"].clone());
    }
    let name_of = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|l| l["properties"]["hs_lead_name"].clone())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert_eq!(name_of(&names[0]), name_of(&names[1]));
}
